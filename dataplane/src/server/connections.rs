//! Accepting and serving client connections: HTTP/1.1, or HTTP/2 where a TLS handshake chose
//! it (ALPN `h2`), with limits against slow clients and graceful shutdown.
//!
//! What a connection may hold the server for ([`ConnectionsConfig`]):
//! - a request's headers must arrive within `headerTimeout`, counted from when the connection
//!   opens or goes idle after a response, so a kept-alive connection with no next request is
//!   closed after that time too;
//! - a request body must not stall for `idleTimeout` between two reads, nor a response wait
//!   that long for the client to take a byte.
//!
//! Each request carries its peer address as [`ConnectInfo`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_io_timeout::TimeoutStream;
use tower::ServiceExt as _;
use tower_http::timeout::TimeoutBody;

use crate::config::ConnectionsConfig;

/// What a connection's handshake chose to speak.
pub trait Negotiated {
    /// Whether the connection speaks HTTP/2 (ALPN `h2`) rather than HTTP/1.1.
    fn http2(&self) -> bool;
}

impl Negotiated for TcpStream {
    /// Plain TCP speaks HTTP/1.1 only: guessing the version from the first bytes would let a
    /// client that sends one byte and stops hold the connection before any timeout runs.
    fn http2(&self) -> bool {
        false
    }
}

impl Negotiated for tokio_rustls::server::TlsStream<TcpStream> {
    fn http2(&self) -> bool {
        self.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets requests
/// in flight finish, closes idle connections, and returns once every connection has closed.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: ConnectionsConfig,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener<Addr = SocketAddr>,
    L::Io: Negotiated + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        serve_connection(io, peer, app.clone(), &limits, &graceful);
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Spawns the task serving one accepted connection.
fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    limits: &ConnectionsConfig,
    graceful: &GracefulShutdown,
) where
    I: Negotiated + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = limits.idle_timeout.0;
    let mut builder = if io.http2() {
        Builder::new(TokioExecutor::new()).http2_only()
    } else {
        Builder::new(TokioExecutor::new()).http1_only()
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout.0);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(idle)
        .keep_alive_timeout(limits.header_timeout.0);

    // A response the client stops taking fails its write after `idle`. (Reads are bounded
    // per request body instead: between requests the header timeout applies, and while a
    // handler works nothing is expected from the client.)
    let mut stream = TimeoutStream::new(io);
    stream.set_write_timeout(Some(idle));
    let io = TokioIo::new(Box::pin(stream));

    let service = app.map_request(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.map(|body| Body::new(TimeoutBody::new(idle, body)))
    });
    let connection = builder
        .serve_connection(io, TowerToHyperService::new(service))
        .into_owned();
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%peer, error = %err, "connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests;
