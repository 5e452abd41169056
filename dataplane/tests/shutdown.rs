//! Graceful shutdown of the real binary: an upload in flight when SIGTERM arrives still
//! completes, readiness is 503 during the drain, new connections are refused once the listener
//! closed, and the process exits 0.

mod common;

use std::time::{Duration, Instant};

use common::{Dataplane, SlowUpload, client, get, sha256, turns_not_ready, wait_listener_closed};
use nix::sys::signal::Signal;

const DRAIN_DELAY: &str = "1500ms";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_upload_in_flight_then_exits_zero() {
    let root = tempfile::tempdir().unwrap();
    let mut server = Dataplane::start(
        root.path(),
        &["--drain-delay", DRAIN_DELAY, "--shutdown-timeout", "30s"],
    );
    let base = server.url();
    let client = client();
    // The final PUT streams its body slowly: about four seconds in all.
    let SlowUpload {
        digest,
        put: upload,
        ..
    } = SlowUpload::start(&client, &base, "drain/blob").await;
    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);

    // Readiness turns 503 at once, while the listener still accepts during the drain delay.
    assert!(
        turns_not_ready(&client, &base, signalled).await,
        "readiness never turned 503 during the drain"
    );
    assert_eq!(get(&client, &format!("{base}/healthz")).await.0, 200);

    // Then the listener closes: new connections are refused while the upload still runs.
    wait_listener_closed(server.addr).await;
    assert!(
        !upload.is_finished(),
        "the upload finished before the listener closed; the test proves nothing"
    );
    assert!(
        client.get(format!("{base}/v2/")).send().await.is_err(),
        "a request after the listener closed must be refused"
    );

    // The upload in flight completes.
    let status = upload
        .await
        .unwrap()
        .expect("the upload must not be cut off");
    assert_eq!(status, 201, "{}", server.log());

    let exit = tokio::task::spawn_blocking(move || {
        let status = server.wait(Duration::from_secs(20));
        (status, server)
    })
    .await
    .unwrap();
    let (status, server) = exit;
    let status = status.expect("the server exits after the drain");
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let log = server.log();
    assert!(
        log.contains("received SIGTERM") && log.contains("shut down"),
        "{log}"
    );
    drop(server);

    // The blob is durable: a new server on the same root serves it whole.
    let server = Dataplane::start(root.path(), &[]);
    let (status, header, body) = get(
        &client,
        &format!("{}/v2/drain/blob/blobs/{digest}", server.url()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header.as_deref(), Some(digest.as_str()));
    assert_eq!(sha256(&body), digest);
}

#[tokio::test]
async fn sigint_on_an_idle_server_exits_zero_quickly() {
    let root = tempfile::tempdir().unwrap();
    let mut server = Dataplane::start(root.path(), &[]);
    let started = Instant::now();
    server.signal(Signal::SIGINT);
    let status = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
}
