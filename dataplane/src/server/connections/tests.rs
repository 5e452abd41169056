//! The connection limits against real sockets: raw TCP clients that stall where slow-loris
//! clients do, and one that keeps moving slowly and must not be cut.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::routing::{get, post};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::serve;
use crate::config::{ConnectionsConfig, HumanDuration};

/// Long enough that a test failing to see a connection closed is not a slow machine.
const PATIENCE: Duration = Duration::from_secs(10);

fn limits() -> ConnectionsConfig {
    ConnectionsConfig {
        header_timeout: HumanDuration(Duration::from_secs(1)),
        idle_timeout: HumanDuration(Duration::from_secs(1)),
    }
}

/// Counts the bytes of a request body; `408` when the body fails.
async fn count(body: Body) -> Result<String, StatusCode> {
    let mut stream = body.into_data_stream();
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        n += chunk.map_err(|_| StatusCode::REQUEST_TIMEOUT)?.len();
    }
    Ok(n.to_string())
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(500)).await;
    "done"
}

struct Running {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn start() -> Running {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/count", post(count))
        .route("/slow", get(slow))
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(serve(listener, app, limits(), async {
        let _ = rx.await;
    }));
    Running {
        addr,
        shutdown: Some(tx),
        task,
    }
}

/// Reads until the server closes the connection (or resets it); `None` if it is still open
/// after [`PATIENCE`].
async fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&seen).into_owned())
}

/// Reads one response with a `Content-Length` body, leaving the connection open.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")?
                        .parse()
                        .ok()
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {text}");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_disconnected() {
    let server = start().await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    assert!(read_until_closed(&mut client).await.is_some());
}

#[tokio::test]
async fn headers_that_never_finish_are_cut_off() {
    let server = start().await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: registry\r\nX-Slow: ")
        .await
        .unwrap();
    // A byte now and then does not keep it alive: the headers have a deadline.
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if client.write_all(b"a").await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(PATIENCE, trickle).await.unwrap();
    let seen = read_until_closed(&mut client).await.expect("closed");
    assert!(!seen.contains("200 OK"), "{seen}");
}

#[tokio::test]
async fn a_kept_alive_connection_with_no_next_request_is_closed() {
    let server = start().await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: registry\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(read_until_closed(&mut client).await.is_some());
}

#[tokio::test]
async fn a_stalled_body_ends_the_request() {
    let server = start().await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client
        .write_all(
            b"POST /count HTTP/1.1\r\nHost: registry\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let seen = read_until_closed(&mut client).await.expect("closed");
    assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
}

#[tokio::test]
async fn a_body_that_keeps_moving_is_never_cut() {
    let server = start().await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client
        .write_all(b"POST /count HTTP/1.1\r\nHost: registry\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    // Ten bytes every 300 ms: three seconds in all, three times the idle timeout.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.write_all(b"0123456789").await.unwrap();
    }
    let response = read_response(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\n100"), "{response}");
}

#[tokio::test]
async fn requests_carry_the_peer_address() {
    let server = start().await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let local = client.local_addr().unwrap();
    client
        .write_all(b"GET /peer HTTP/1.1\r\nHost: registry\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut client).await;
    assert!(
        response.ends_with(&format!("\r\n\r\n{local}")),
        "{response}"
    );
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_then_returns() {
    let mut server = start().await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: registry\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = server.shutdown.take().unwrap().send(());
    let response = read_response(&mut client).await;
    assert!(response.ends_with("\r\n\r\ndone"), "{response}");
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("serve returns once the connection closed")
        .unwrap();
    assert!(TcpStream::connect(server.addr).await.is_err());
}
