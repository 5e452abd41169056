//! Test support for the S3 backend: a test S3 server shared by the tests of one binary that
//! run at the same time, a fresh key prefix per test, and direct bucket inspection.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use dataplane::caches::CacheMemory;
use dataplane::storage::s3::{S3Credentials, S3Settings, S3Storage};
use testkit::s3::S3Server;

/// A running test S3 server, shared: it stops when the last test holding it finishes.
pub fn shared_server() -> Arc<S3Server> {
    static SERVER: Mutex<Weak<S3Server>> = Mutex::new(Weak::new());
    let mut slot = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = slot.upgrade() {
        return server;
    }
    // Starting blocks (process spawn and readiness polling); tests run on a multi-thread runtime.
    let server = Arc::new(tokio::task::block_in_place(start_server));
    *slot = Arc::downgrade(&server);
    server
}

/// Starts a server, trying again when it comes up but refuses its first request (a loaded
/// machine can make the bucket creation fail with 503 right after readiness).
pub fn start_server() -> S3Server {
    let mut last = None;
    for _ in 0..3 {
        match S3Server::try_start() {
            Ok(server) => return server,
            Err(e) => last = Some(e),
        }
    }
    panic!(
        "starting the test S3 server: {:?}",
        last.expect("an attempt")
    );
}

/// A key prefix no other test of this process uses.
pub fn unique_prefix(label: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{}-{label}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Settings for `server`'s bucket under `prefix`.
pub fn settings(server: &S3Server, prefix: &str) -> S3Settings {
    S3Settings {
        bucket: server.bucket().to_owned(),
        region: server.region().to_owned(),
        endpoint: Some(server.endpoint().to_owned()),
        prefix: prefix.to_owned(),
        force_path_style: true,
        redirect_ttl: None,
        cache_memory: CacheMemory::DEFAULT,
    }
}

/// The server's credentials.
pub fn credentials(server: &S3Server) -> S3Credentials {
    S3Credentials {
        access_key_id: server.access_key().to_owned(),
        secret_access_key: server.secret_key().to_owned(),
    }
}

/// A backend instance (a "replica") on `server`'s bucket under `prefix`.
pub async fn replica(server: &S3Server, prefix: &str) -> S3Storage {
    S3Storage::connect_with_credentials(settings(server, prefix), credentials(server))
        .await
        .expect("connecting to the test S3 server")
}

/// A fresh backend for one test, with the server it needs kept alive by the guard.
pub async fn fresh(label: &str) -> (S3Storage, Arc<S3Server>) {
    let server = shared_server();
    let storage = replica(&server, &unique_prefix(label)).await;
    (storage, server)
}

/// A plain SDK client on the server, to look at the bucket directly.
pub fn raw_client(server: &S3Server) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(server.region().to_owned()))
        .endpoint_url(server.endpoint())
        .credentials_provider(Credentials::new(
            server.access_key(),
            server.secret_key(),
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .build();
    Client::from_conf(config)
}

/// Every object key under `prefix`.
pub async fn keys_under(server: &S3Server, prefix: &str) -> Vec<String> {
    let client = raw_client(server);
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let out = client
            .list_objects_v2()
            .bucket(server.bucket())
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .expect("ListObjectsV2");
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key())
                .map(str::to_owned),
        );
        token = out.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return keys;
        }
    }
}

/// Keys of the multipart uploads pending under `prefix`.
pub async fn pending_multipart_uploads(server: &S3Server, prefix: &str) -> Vec<String> {
    let out = raw_client(server)
        .list_multipart_uploads()
        .bucket(server.bucket())
        .prefix(prefix)
        .send()
        .await
        .expect("ListMultipartUploads");
    out.uploads()
        .iter()
        .filter_map(|u| u.key())
        .map(str::to_owned)
        .collect()
}
