//! Guarantees specific to the S3 backend, on the test S3 server: several replicas (backend
//! instances) sharing one bucket, cleanup of cancelled and failed uploads, large blobs, and
//! readiness while the bucket is unreachable.

mod s3_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dataplane::oci::{Digest, RepoName, Tag};
use dataplane::storage::conformance::{
    collect, content, failing_stream, stalled_stream, stream_of,
};
use dataplane::storage::s3::{S3Settings, S3Storage};
use dataplane::storage::{Storage, StorageError};
use futures_util::StreamExt;
use s3_common::{
    credentials, keys_under, pending_multipart_uploads, replica, settings, shared_server,
    unique_prefix,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const MIB: usize = 1024 * 1024;

fn repo(name: &str) -> RepoName {
    name.parse().unwrap()
}

/// `pieces` of at most `piece` bytes, as a network body delivers them.
fn pieces(data: &[u8], piece: usize) -> Vec<Vec<u8>> {
    data.chunks(piece).map(<[u8]>::to_vec).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_upload_across_three_replicas() {
    let server = shared_server();
    let prefix = unique_prefix("replicas");
    let replicas = [
        replica(&server, &prefix).await,
        replica(&server, &prefix).await,
        replica(&server, &prefix).await,
    ];
    let r = repo("replicas/chunked");
    // Small chunks (short tails carried over), chunks over one part, and an odd remainder.
    let sizes = [MIB, 3 * MIB, 9 * MIB + 17, 100 * 1024, 6 * MIB, 2 * MIB + 5];
    let data = content(21, sizes.iter().sum());
    let id = replicas[0].upload_create(&r).await.unwrap().id;

    let mut offset = 0usize;
    for (i, size) in sizes.iter().enumerate() {
        let (writer, reader) = (&replicas[i % 3], &replicas[(i + 1) % 3]);
        let chunk = &data[offset..offset + size];
        let new_size = writer
            .upload_append(&r, &id, offset as u64, stream_of(pieces(chunk, 64 * 1024)))
            .await
            .unwrap();
        offset += size;
        assert_eq!(new_size, offset as u64, "chunk {i}");
        assert_eq!(
            reader.upload_info(&r, &id).await.unwrap().size,
            offset as u64
        );
    }
    // Any replica sees the bytes received so far, and refuses a stale offset.
    assert_eq!(
        collect(replicas[1].upload_read(&r, &id).await.unwrap()).await,
        data
    );
    let stale = replicas[2]
        .upload_append(&r, &id, MIB as u64, stream_of(vec![vec![0; 10]]))
        .await;
    assert!(matches!(
        stale,
        Err(StorageError::OffsetMismatch { current, .. }) if current == data.len() as u64
    ));

    let digest = Digest::sha256_of(&data);
    let committed = replicas[2].upload_commit(&r, &id, &digest).await.unwrap();
    assert_eq!(committed, data.len() as u64);
    // Pulled through another replica at once.
    let pulled = collect(replicas[0].blob_read(&digest, None).await.unwrap()).await;
    assert_eq!(Digest::sha256_of(&pulled), digest);
    assert_eq!(
        replicas[1].blob_size(&digest).await.unwrap(),
        Some(data.len() as u64)
    );
    assert!(replicas[1].uploads().await.unwrap().is_empty());
    let uploads = format!("{prefix}/uploads/");
    assert_eq!(keys_under(&server, &uploads).await, Vec::<String>::new());
    assert!(
        pending_multipart_uploads(&server, &uploads)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tag_writes_from_three_replicas_end_consistent() {
    let server = shared_server();
    let prefix = unique_prefix("tags");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Arc::new(replica(&server, &prefix).await));
    }
    let r = repo("replicas/tags");
    let t: Tag = "latest".parse().unwrap();
    let digests: Vec<Digest> = (0..12u8).map(|i| Digest::sha256_of(&[i])).collect();
    let mut tasks = JoinSet::new();
    for (i, digest) in digests.iter().enumerate() {
        let (storage, r, t, d) = (
            Arc::clone(&replicas[i % 3]),
            r.clone(),
            t.clone(),
            digest.clone(),
        );
        tasks.spawn(async move {
            for _ in 0..5 {
                storage.tag_set(&r, &t, &d).await.unwrap();
                // Every read sees a whole value.
                let seen = storage.tag_get(&r, &t).await.unwrap().expect("tag set");
                assert!(seen.to_string().starts_with("sha256:"));
            }
        });
    }
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }
    let mut values = Vec::new();
    for storage in &replicas {
        values.push(storage.tag_get(&r, &t).await.unwrap().expect("tag set"));
        assert_eq!(storage.tags(&r).await.unwrap(), vec![t.clone()]);
    }
    assert!(digests.contains(&values[0]));
    assert!(
        values.iter().all(|v| v == &values[0]),
        "replicas disagree: {values:?}"
    );

    // A later write from any replica is seen by all.
    replicas[1].tag_set(&r, &t, &digests[3]).await.unwrap();
    for storage in &replicas {
        assert_eq!(
            storage.tag_get(&r, &t).await.unwrap(),
            Some(digests[3].clone())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_and_failed_uploads_leave_nothing() {
    let server = shared_server();
    let prefix = unique_prefix("cancel");
    let storage = replica(&server, &prefix).await;
    let r = repo("replicas/cancel");
    let id = storage.upload_create(&r).await.unwrap().id;
    let session = format!("{prefix}/uploads/{id}/");
    storage
        .upload_append(&r, &id, 0, stream_of(vec![vec![1; MIB]]))
        .await
        .unwrap();

    // A body failing after several parts: its multipart upload is aborted before the error
    // returns, and only the session's own objects remain.
    let big = content(22, 20 * MIB);
    let failed = storage
        .upload_append(&r, &id, MIB as u64, failing_stream(pieces(&big, MIB)))
        .await;
    assert!(matches!(failed, Err(StorageError::Body(_))), "{failed:?}");
    assert!(
        pending_multipart_uploads(&server, &session)
            .await
            .is_empty()
    );
    assert_eq!(
        keys_under(&server, &session).await.len(),
        2,
        "info and one segment"
    );
    assert_eq!(storage.upload_info(&r, &id).await.unwrap().size, MIB as u64);

    // An append abandoned midway (parts already sent), then the session is cancelled.
    let abandoned = storage.upload_append(&r, &id, MIB as u64, stalled_stream(pieces(&big, MIB)));
    assert!(
        tokio::time::timeout(Duration::from_secs(3), abandoned)
            .await
            .is_err()
    );
    storage.upload_delete(&r, &id).await.unwrap();
    assert_eq!(keys_under(&server, &session).await, Vec::<String>::new());
    assert!(
        pending_multipart_uploads(&server, &session)
            .await
            .is_empty()
    );
    assert!(matches!(
        storage.upload_info(&r, &id).await,
        Err(StorageError::NotFound)
    ));
    // Nothing was published.
    assert_eq!(
        keys_under(&server, &format!("{prefix}/blobs/")).await.len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_blob_in_small_chunks_and_in_one_stream() {
    let server = shared_server();
    let prefix = unique_prefix("large");
    let storage = replica(&server, &prefix).await;
    let r = repo("replicas/large");

    // 64 MiB in 1 MiB appends.
    let chunked = content(23, 64 * MIB);
    let id = storage.upload_create(&r).await.unwrap().id;
    let mut offset = 0u64;
    for chunk in chunked.chunks(MIB) {
        offset = storage
            .upload_append(&r, &id, offset, stream_of(pieces(chunk, 256 * 1024)))
            .await
            .unwrap();
    }
    let digest = Digest::sha256_of(&chunked);
    let session = collect(storage.upload_read(&r, &id).await.unwrap()).await;
    assert_eq!(Digest::sha256_of(&session), digest);
    drop(session);
    assert_eq!(
        storage.upload_commit(&r, &id, &digest).await.unwrap(),
        chunked.len() as u64
    );
    let read = collect(storage.blob_read(&digest, None).await.unwrap()).await;
    assert_eq!(Digest::sha256_of(&read), digest);

    // 64 MiB in one append, as one long body.
    let streamed = content(24, 64 * MIB);
    let id = storage.upload_create(&r).await.unwrap().id;
    let size = storage
        .upload_append(&r, &id, 0, stream_of(pieces(&streamed, 256 * 1024)))
        .await
        .unwrap();
    assert_eq!(size, streamed.len() as u64);
    let digest = Digest::sha256_of(&streamed);
    storage.upload_commit(&r, &id, &digest).await.unwrap();
    let read = collect(storage.blob_read(&digest, None).await.unwrap()).await;
    assert_eq!(Digest::sha256_of(&read), digest);
    // A range across part boundaries.
    let (start, end) = (8 * MIB - 3, 24 * MIB + 5);
    let range = collect(
        storage
            .blob_read(&digest, Some(start as u64..end as u64))
            .await
            .unwrap(),
    )
    .await;
    assert!(range == streamed[start..end]);
}

/// A TCP forwarder on loopback, to make the S3 endpoint unreachable and reachable again on
/// the same address.
struct Forwarder {
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(listen: SocketAddr, target: SocketAddr) -> (Self, SocketAddr) {
        let listener = TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        (Self { task }, addr)
    }

    /// Closes the listener and every forwarded connection.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn endpoint_addr(endpoint: &str) -> SocketAddr {
    endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("loopback endpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_fails_fast_while_unreachable_and_recovers() {
    let server = shared_server();

    // Nothing listens: a clear error, quickly.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let unreachable = S3Storage::connect_with_credentials(
        S3Settings {
            endpoint: Some(format!("http://{closed}")),
            ..settings(&server, "closed")
        },
        credentials(&server),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let error = unreachable.check().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let message = error.to_string();
    assert!(
        matches!(error, StorageError::Unavailable(_)) && message.contains("HeadBucket"),
        "{message}"
    );
    // Data calls fail the same way, after the SDK's retries, without hanging.
    let started = Instant::now();
    let blob = unreachable
        .blob_put(&Digest::sha256_of(b"x"), Bytes::from_static(b"x"))
        .await;
    assert!(
        matches!(blob, Err(StorageError::Unavailable(_))),
        "{blob:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // Through a forwarder that goes away and comes back on the same address.
    let target = endpoint_addr(server.endpoint());
    let (forwarder, addr) = Forwarder::start("127.0.0.1:0".parse().unwrap(), target).await;
    let storage = S3Storage::connect_with_credentials(
        S3Settings {
            endpoint: Some(format!("http://{addr}")),
            ..settings(&server, &unique_prefix("ready"))
        },
        credentials(&server),
    )
    .await
    .unwrap();
    storage.check().await.unwrap();
    forwarder.stop().await;
    let started = Instant::now();
    assert!(storage.check().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (forwarder, _) = Forwarder::start(addr, target).await;
    // Readiness is probed periodically: it must succeed again within a few probes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = storage.check().await {
        assert!(Instant::now() < deadline, "readiness did not recover: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_killed_mid_append_gives_a_clean_error() {
    // A server of its own, since this test stops it.
    let server = tokio::task::block_in_place(s3_common::start_server);
    let storage = replica(&server, &unique_prefix("killed")).await;
    let r = repo("replicas/killed");
    let id = storage.upload_create(&r).await.unwrap().id;

    // A long body that reports when 20 MiB (several parts) have been handed over.
    let (sent_enough, enough) = tokio::sync::oneshot::channel::<()>();
    let mut sent_enough = Some(sent_enough);
    let chunk = Bytes::from(content(25, MIB));
    let body = futures_util::stream::iter(0..512).then(move |i| {
        if i == 20
            && let Some(tx) = sent_enough.take()
        {
            let _ = tx.send(());
        }
        let chunk = chunk.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, std::io::Error>(chunk)
        }
    });
    let append = tokio::spawn(async move {
        let started = Instant::now();
        let result = storage.upload_append(&r, &id, 0, Box::pin(body)).await;
        (result, started.elapsed())
    });
    enough.await.unwrap();
    tokio::task::block_in_place(|| drop(server));
    let (result, elapsed) = append.await.unwrap();
    match result {
        Err(StorageError::Unavailable(message) | StorageError::Backend(message)) => {
            assert!(message.contains("S3"), "{message}")
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
}

/// A collection that died between copying a blob aside and deciding leaves it in the trash:
/// the next collector (another replica) copies it back, and a collection of it on another
/// replica frees it again, touch marker included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs_left_in_the_trash_are_put_back_by_another_replica() {
    let server = shared_server();
    let prefix = unique_prefix("trash");
    let (a, b) = (
        replica(&server, &prefix).await,
        replica(&server, &prefix).await,
    );
    let data = b"set aside by a collector that died".to_vec();
    let digest = Digest::sha256_of(&data);
    a.blob_put(&digest, Bytes::from(data.clone()))
        .await
        .unwrap();
    assert!(a.blob_touch(&digest).await.unwrap());
    let hex = digest.hex();
    let blob_key = format!("{prefix}/blobs/sha256/{}/{hex}", &hex[..2]);
    let trash_key = format!("{prefix}/_system/gc/trash/sha256/{hex}");
    let raw = s3_common::raw_client(&server);
    raw.copy_object()
        .bucket(server.bucket())
        .key(&trash_key)
        .copy_source(format!("{}/{blob_key}", server.bucket()))
        .send()
        .await
        .unwrap();
    raw.delete_object()
        .bucket(server.bucket())
        .key(&blob_key)
        .send()
        .await
        .unwrap();
    assert_eq!(b.blob_size(&digest).await.unwrap(), None);

    assert_eq!(b.blob_collect_recover().await.unwrap(), 1);
    assert_eq!(
        collect(a.blob_read(&digest, None).await.unwrap()).await,
        data
    );
    assert!(
        keys_under(&server, &format!("{prefix}/_system/gc/trash/"))
            .await
            .is_empty()
    );

    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(
        b.blob_collect(&digest, later).await.unwrap(),
        Some(data.len() as u64)
    );
    assert!(
        keys_under(&server, &format!("{prefix}/_system/gc/"))
            .await
            .is_empty()
    );
    assert!(!a.blob_touch(&digest).await.unwrap());
}
