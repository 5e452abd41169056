//! The storage conformance suite: one set of cases that every [`Storage`] backend must pass.
//!
//! Each case is a public async function taking the backend under test as `Arc<dyn Storage>`
//! and panicking on a broken guarantee. [`storage_conformance_tests!`](crate::storage_conformance_tests)
//! instantiates every case as a `#[tokio::test]` for one backend:
//!
//! ```ignore
//! dataplane::storage_conformance_tests!(conformance, async {
//!     let dir = tempfile::tempdir().unwrap();
//!     (FsStorage::open(dir.path()).await.unwrap(), dir) // the guard lives as long as the test
//! });
//! ```
//!
//! The constructor expression is evaluated inside the generated module, which imports `super::*`.
//! Each test gets a fresh backend; cases use their own repository names all the same.

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;

use super::{ByteStream, ManifestMeta, PullTarget, RecordKey, Storage, StorageError, UploadId};
use crate::oci::{Digest, DigestAlgorithm, RepoName, Tag};

/// Instantiates the storage conformance suite as one `#[tokio::test]` per case, in a module
/// named `$module`, for the backend returned by `$make`: an expression of a future resolving to
/// `(backend, guard)`, where `guard` is kept alive for the duration of the test (e.g. a
/// temporary directory).
#[macro_export]
macro_rules! storage_conformance_tests {
    ($module:ident, $make:expr) => {
        $crate::storage_conformance_tests!(@cases $module, $make, [
            blob_put_read_size,
            blob_put_existing_keeps_content,
            blob_read_ranges,
            blob_empty,
            blob_large_streams_whole,
            blob_sha512,
            blob_delete,
            links_are_per_repository,
            blobs_and_links_are_listed,
            touches_keep_blobs_from_collection,
            collection_after_concurrent_touches_keeps_what_touch_reported,
            record_swap_is_compare_and_swap,
            concurrent_record_swaps_admit_one,
            upload_lifecycle,
            upload_offset_mismatch,
            upload_body_failure_keeps_session,
            upload_abandoned_append_keeps_session,
            upload_foreign_repository_is_not_found,
            upload_unknown_is_not_found,
            upload_delete,
            upload_commit_existing_digest,
            upload_large_chunked,
            uploads_listing,
            concurrent_appends_same_offset,
            concurrent_commits_same_digest,
            concurrent_tag_set,
            tag_create_only_once,
            concurrent_tag_create,
            concurrent_blob_put,
            manifest_link_meta_unlink,
            tags_sorted_and_deleted,
            tags_deleted_only_where_they_still_name_the_digest,
            tags_per_repository,
            records_carry_push_and_pull_times,
            system_records_replace_whole,
            tag_pages_and_tags_of_a_digest,
            referrers_add_list_remove,
            repositories_listing,
            check_succeeds,
        ]);
    };
    (@cases $module:ident, $make:expr, [$($case:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let (storage, _guard) = $make.await;
                    let storage: ::std::sync::Arc<dyn $crate::storage::Storage> =
                        ::std::sync::Arc::new(storage);
                    $crate::storage::conformance::$case(storage).await;
                }
            )*
        }
    };
}

pub use crate::storage_conformance_tests;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The backend under test.
pub type Backend = Arc<dyn Storage>;

fn repo(name: &str) -> RepoName {
    name.parse().expect("valid repository name")
}

fn tag(name: &str) -> Tag {
    name.parse().expect("valid tag")
}

/// A stream yielding `chunks`, one at a time, yielding to the scheduler between them.
pub fn stream_of(chunks: Vec<Vec<u8>>) -> ByteStream {
    Box::pin(futures_util::stream::iter(chunks).then(|chunk| async move {
        tokio::task::yield_now().await;
        Ok(Bytes::from(chunk))
    }))
}

/// A stream yielding `chunks`, then failing as a client's body that ends early would.
pub fn failing_stream(chunks: Vec<Vec<u8>>) -> ByteStream {
    let failure = futures_util::stream::once(async {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "body ended early",
        ))
    });
    Box::pin(stream_of(chunks).chain(failure))
}

/// A stream yielding `chunks`, then never finishing.
pub fn stalled_stream(chunks: Vec<Vec<u8>>) -> ByteStream {
    Box::pin(stream_of(chunks).chain(futures_util::stream::pending()))
}

/// Collects a stream into memory.
pub async fn collect(mut stream: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("stream chunk"));
    }
    out
}

/// Deterministic test content of `len` bytes, different for each `seed`.
pub fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

async fn read_all(s: &Backend, digest: &Digest) -> Vec<u8> {
    collect(s.blob_read(digest, None).await.expect("blob_read")).await
}

async fn put(s: &Backend, data: &[u8]) -> Digest {
    let digest = Digest::sha256_of(data);
    s.blob_put(&digest, Bytes::copy_from_slice(data))
        .await
        .expect("blob_put");
    digest
}

fn meta(size: u64) -> ManifestMeta {
    ManifestMeta {
        media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        size,
    }
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StorageError>, what: &str) {
    assert!(
        matches!(result, Err(StorageError::NotFound)),
        "{what}: expected NotFound, got {result:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Blobs.

/// A stored blob has its size and bytes; an absent one has neither.
pub async fn blob_put_read_size(s: Backend) {
    let data = content(1, 1000);
    let digest = put(&s, &data).await;
    assert_eq!(s.blob_size(&digest).await.unwrap(), Some(1000));
    assert_eq!(read_all(&s, &digest).await, data);

    let absent = Digest::sha256_of(b"absent");
    assert_eq!(s.blob_size(&absent).await.unwrap(), None);
    assert_not_found(s.blob_read(&absent, None).await.map(|_| ()), "blob_read");
}

/// Publishing content that exists is fine and leaves it intact.
pub async fn blob_put_existing_keeps_content(s: Backend) {
    let data = content(2, 300);
    let digest = put(&s, &data).await;
    put(&s, &data).await;
    assert_eq!(read_all(&s, &digest).await, data);
}

/// Ranges stream exactly the requested bytes; ranges that do not fit are refused.
pub async fn blob_read_ranges(s: Backend) {
    let data = content(3, 100);
    let digest = put(&s, &data).await;
    for (start, end) in [(0, 100), (0, 1), (10, 20), (99, 100), (50, 50)] {
        let got = collect(s.blob_read(&digest, Some(start..end)).await.unwrap()).await;
        assert_eq!(
            got,
            &data[start as usize..end as usize],
            "range {start}..{end}"
        );
    }
    #[allow(clippy::reversed_empty_ranges)]
    for range in [100..100, 100..101, 0..101, 200..300, 20..10] {
        let result = s.blob_read(&digest, Some(range.clone())).await;
        assert!(
            matches!(result, Err(StorageError::RangeNotSatisfiable { size: 100 })),
            "range {range:?} should not be satisfiable"
        );
    }
}

/// An empty blob exists with size 0, reads as nothing, and has no satisfiable range.
pub async fn blob_empty(s: Backend) {
    let digest = put(&s, b"").await;
    assert_eq!(s.blob_size(&digest).await.unwrap(), Some(0));
    assert!(read_all(&s, &digest).await.is_empty());
    let result = s.blob_read(&digest, Some(0..0)).await;
    assert!(matches!(
        result,
        Err(StorageError::RangeNotSatisfiable { size: 0 })
    ));
}

/// Blobs larger than one read chunk stream whole and in ranges across chunk boundaries.
pub async fn blob_large_streams_whole(s: Backend) {
    let data = content(4, 3 * 1024 * 1024 + 12345);
    let digest = put(&s, &data).await;
    assert_eq!(read_all(&s, &digest).await, data);
    let (start, end) = (1024 * 1024 - 7, 2 * 1024 * 1024 + 9);
    let got = collect(s.blob_read(&digest, Some(start..end)).await.unwrap()).await;
    assert_eq!(got, &data[start as usize..end as usize]);
}

/// SHA-512 digests address blobs as well as SHA-256 ones.
pub async fn blob_sha512(s: Backend) {
    let data = content(5, 64);
    let digest = Digest::of(DigestAlgorithm::Sha512, &data);
    s.blob_put(&digest, Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(s.blob_size(&digest).await.unwrap(), Some(64));
    assert_eq!(read_all(&s, &digest).await, data);
    let r = repo("sha512/repo");
    s.link_blob(&r, &digest).await.unwrap();
    assert!(s.blob_linked(&r, &digest).await.unwrap());
}

/// Deleting a blob removes its bytes, not its links; deleting an absent blob is fine.
pub async fn blob_delete(s: Backend) {
    let digest = put(&s, b"to delete").await;
    let r = repo("delete/blob");
    s.link_blob(&r, &digest).await.unwrap();
    s.blob_delete(&digest).await.unwrap();
    assert_eq!(s.blob_size(&digest).await.unwrap(), None);
    assert_not_found(s.blob_read(&digest, None).await.map(|_| ()), "blob_read");
    assert!(s.blob_linked(&r, &digest).await.unwrap());
    s.blob_delete(&digest).await.unwrap();
}

/// A blob linked into one repository is invisible from another.
pub async fn links_are_per_repository(s: Backend) {
    let digest = put(&s, b"linked").await;
    let (a, b) = (repo("a/x"), repo("b/y"));
    assert!(!s.blob_linked(&a, &digest).await.unwrap());
    s.link_blob(&a, &digest).await.unwrap();
    s.link_blob(&a, &digest).await.unwrap();
    assert!(s.blob_linked(&a, &digest).await.unwrap());
    assert!(!s.blob_linked(&b, &digest).await.unwrap());
    assert!(!s.blob_linked(&repo("a"), &digest).await.unwrap());
    assert!(!s.blob_linked(&repo("a/x/y"), &digest).await.unwrap());
    assert!(s.unlink_blob(&a, &digest).await.unwrap());
    assert!(!s.unlink_blob(&a, &digest).await.unwrap());
    assert!(!s.unlink_blob(&b, &digest).await.unwrap());
    assert!(!s.blob_linked(&a, &digest).await.unwrap());
}

/// Every blob is listed with its size, whether put whole or committed from an upload, and
/// gone once deleted; each repository lists its own links, and not those of its children.
pub async fn blobs_and_links_are_listed(s: Backend) {
    assert!(s.blobs().await.unwrap().is_empty());
    let small = put(&s, b"listed").await;
    let empty = put(&s, b"").await;
    let r = repo("listed/repo");
    let uploaded_bytes = content(7, 70_000);
    let info = s.upload_create(&r).await.unwrap();
    s.upload_append(&r, &info.id, 0, stream_of(vec![uploaded_bytes.clone()]))
        .await
        .unwrap();
    let uploaded = Digest::sha256_of(&uploaded_bytes);
    s.upload_commit(&r, &info.id, &uploaded).await.unwrap();
    let mut expected = vec![
        (small.clone(), 6),
        (empty.clone(), 0),
        (uploaded.clone(), 70_000),
    ];
    expected.sort();
    let listed: Vec<(Digest, u64)> = s
        .blobs()
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.digest, b.size))
        .collect();
    assert_eq!(listed, expected);

    let nested = repo("listed/repo/nested");
    assert!(s.blob_links(&r).await.unwrap().is_empty());
    for d in [&uploaded, &small] {
        s.link_blob(&r, d).await.unwrap();
    }
    s.link_blob(&nested, &empty).await.unwrap();
    let mut linked = vec![small.clone(), uploaded.clone()];
    linked.sort();
    assert_eq!(s.blob_links(&r).await.unwrap(), linked);
    assert_eq!(s.blob_links(&nested).await.unwrap(), [empty]);

    s.blob_delete(&small).await.unwrap();
    assert!(!s.blobs().await.unwrap().iter().any(|b| b.digest == small));
    // Links are the repository's own: deleting the bytes leaves them (fsck finds those).
    assert_eq!(s.blob_links(&r).await.unwrap(), linked);

    // Manifest digests list what the records list.
    let meta = ManifestMeta {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: 6,
    };
    s.manifest_link(&r, &uploaded, &meta).await.unwrap();
    let records: Vec<Digest> = s
        .manifest_records(&r)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.digest)
        .collect();
    assert_eq!(s.manifest_digests(&r).await.unwrap(), records);
    assert_eq!(records, std::slice::from_ref(&uploaded));
    assert!(s.manifest_digests(&nested).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Garbage collection: touches, fenced collection, compare-and-swap records.

/// A blob is collected only when neither written nor touched since the cutoff; a touch reports
/// whether the blob exists; collecting an absent blob frees nothing. (Backends may keep times
/// to the second and count a time within a second of the cutoff as after it, so the times here
/// are seconds apart.)
pub async fn touches_keep_blobs_from_collection(s: Backend) {
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    let kept = put(&s, b"touched later").await;
    let dropped = put(&s, b"never touched").await;
    let fresh = put(&s, b"written just now").await;

    assert_eq!(s.blob_collect(&fresh, long_ago).await.unwrap(), None);
    assert_eq!(s.blob_size(&fresh).await.unwrap(), Some(16));

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before_touch = SystemTime::now();
    assert!(s.blob_touch(&kept).await.unwrap());
    let listed = s.blobs().await.unwrap();
    let touched = |d: &Digest| listed.iter().find(|b| b.digest == *d).unwrap().touched;
    assert!(
        touched(&kept) + Duration::from_secs(1) >= before_touch,
        "a touch moves the blob's time forward"
    );
    assert!(touched(&dropped) < before_touch);

    let cutoff = before_touch - Duration::from_millis(500);
    assert_eq!(s.blob_collect(&kept, cutoff).await.unwrap(), None);
    assert_eq!(s.blob_size(&kept).await.unwrap(), Some(13));
    assert_eq!(s.blob_collect(&dropped, cutoff).await.unwrap(), Some(13));
    assert_eq!(s.blob_size(&dropped).await.unwrap(), None);
    assert!(
        !s.blob_touch(&dropped).await.unwrap(),
        "a touch finds it gone"
    );
    assert_eq!(s.blob_collect(&dropped, in_an_hour).await.unwrap(), None);
    assert!(!s.blobs().await.unwrap().iter().any(|b| b.digest == dropped));

    assert_eq!(s.blob_collect(&kept, in_an_hour).await.unwrap(), Some(13));
    assert_eq!(s.blob_collect_recover().await.unwrap(), 0);
    assert_eq!(s.blob_size(&kept).await.unwrap(), None);
}

/// Touches racing collections: every touch that answered `true` left its blob in place, and
/// every blob no touch reached was collected.
pub async fn collection_after_concurrent_touches_keeps_what_touch_reported(s: Backend) {
    let blobs: Vec<Digest> = futures_util::future::join_all((0..24).map(|i| {
        let s = Arc::clone(&s);
        async move { put(&s, format!("raced blob {i}").as_bytes()).await }
    }))
    .await;
    // Written well before the cutoff; every touch comes after it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let cutoff = SystemTime::now() - Duration::from_millis(500);
    let touches = blobs.iter().map(|d| {
        let (s, d) = (Arc::clone(&s), d.clone());
        tokio::spawn(async move { (d.clone(), s.blob_touch(&d).await.unwrap()) })
    });
    let collections = blobs.iter().map(|d| {
        let (s, d) = (Arc::clone(&s), d.clone());
        tokio::spawn(async move { s.blob_collect(&d, cutoff).await.unwrap() })
    });
    let collections: Vec<_> = collections.collect();
    let touches: Vec<_> = touches.collect();
    let mut freed = 0;
    for collection in collections {
        freed += usize::from(collection.await.unwrap().is_some());
    }
    assert!(freed <= blobs.len());
    for touch in touches {
        let (digest, exists) = touch.await.unwrap();
        if exists {
            assert!(
                s.blob_size(&digest).await.unwrap().is_some(),
                "{digest} was reported present by a touch, then collected"
            );
        }
    }
}

/// `record_swap` writes only over the version it was given (or only when absent), and
/// `record_read` returns the version of what is stored.
pub async fn record_swap_is_compare_and_swap(s: Backend) {
    let key: RecordKey = "gc/swap-test".parse().unwrap();
    assert_eq!(s.record_read(&key).await.unwrap(), None);
    let first = s
        .record_swap(&key, None, Bytes::from_static(b"one"))
        .await
        .unwrap()
        .expect("created when absent");
    assert_eq!(
        s.record_swap(&key, None, Bytes::from_static(b"again"))
            .await
            .unwrap(),
        None,
        "not created twice"
    );
    let read = s.record_read(&key).await.unwrap().unwrap();
    assert_eq!((&read.data[..], &read.version), (&b"one"[..], &first));
    let second = s
        .record_swap(&key, Some(&first), Bytes::from_static(b"two"))
        .await
        .unwrap()
        .expect("written over the version read");
    assert_ne!(first, second);
    assert_eq!(
        s.record_swap(&key, Some(&first), Bytes::from_static(b"stale"))
            .await
            .unwrap(),
        None,
        "a stale version writes nothing"
    );
    let read = s.record_read(&key).await.unwrap().unwrap();
    assert_eq!((&read.data[..], &read.version), (&b"two"[..], &second));
    assert_eq!(s.record_get(&key).await.unwrap().unwrap(), "two");
}

/// Of concurrent swaps over the same version, exactly one writes.
pub async fn concurrent_record_swaps_admit_one(s: Backend) {
    let key: RecordKey = "gc/swap-race".parse().unwrap();
    let base = s
        .record_swap(&key, None, Bytes::from_static(b"base"))
        .await
        .unwrap()
        .unwrap();
    let swaps = (0..8).map(|i| {
        let (s, key, base) = (Arc::clone(&s), key.clone(), base.clone());
        tokio::spawn(async move {
            s.record_swap(&key, Some(&base), Bytes::from(format!("writer {i}")))
                .await
                .unwrap()
        })
    });
    let swaps: Vec<_> = swaps.collect();
    let mut won = 0;
    for swap in swaps {
        won += usize::from(swap.await.unwrap().is_some());
    }
    assert_eq!(won, 1);
}

// ---------------------------------------------------------------------------------------------
// Upload sessions.

/// Create, append in chunks, read back, commit: the blob appears and the session is gone.
pub async fn upload_lifecycle(s: Backend) {
    let r = repo("upload/lifecycle");
    let info = s.upload_create(&r).await.unwrap();
    assert_eq!(info.size, 0);
    assert_eq!(info.repository, "upload/lifecycle");
    let fetched = s.upload_info(&r, &info.id).await.unwrap();
    assert_eq!(fetched.id, info.id);
    assert_eq!(fetched.size, 0);
    assert_eq!(fetched.started_at, info.started_at);

    let data = content(6, 5000);
    let size = s
        .upload_append(&r, &info.id, 0, stream_of(vec![data[..1000].to_vec()]))
        .await
        .unwrap();
    assert_eq!(size, 1000);
    let size = s
        .upload_append(
            &r,
            &info.id,
            1000,
            stream_of(vec![data[1000..3000].to_vec(), data[3000..].to_vec()]),
        )
        .await
        .unwrap();
    assert_eq!(size, 5000);
    // An empty body changes nothing.
    let size = s
        .upload_append(&r, &info.id, 5000, stream_of(vec![]))
        .await
        .unwrap();
    assert_eq!(size, 5000);
    assert_eq!(s.upload_info(&r, &info.id).await.unwrap().size, 5000);
    assert_eq!(
        collect(s.upload_read(&r, &info.id).await.unwrap()).await,
        data
    );

    let digest = Digest::sha256_of(&data);
    assert_eq!(s.upload_commit(&r, &info.id, &digest).await.unwrap(), 5000);
    assert_eq!(read_all(&s, &digest).await, data);
    assert_not_found(
        s.upload_info(&r, &info.id).await,
        "upload_info after commit",
    );
    assert_not_found(
        s.upload_commit(&r, &info.id, &digest).await,
        "second commit",
    );
    // Committing does not link.
    assert!(!s.blob_linked(&r, &digest).await.unwrap());
    assert!(s.uploads().await.unwrap().is_empty());
}

/// An append must start at the session's size.
pub async fn upload_offset_mismatch(s: Backend) {
    let r = repo("upload/offset");
    let id = s.upload_create(&r).await.unwrap().id;
    let result = s.upload_append(&r, &id, 5, stream_of(vec![vec![1]])).await;
    assert!(matches!(
        result,
        Err(StorageError::OffsetMismatch {
            requested: 5,
            current: 0
        })
    ));
    s.upload_append(&r, &id, 0, stream_of(vec![vec![1, 2, 3]]))
        .await
        .unwrap();
    for offset in [0, 2, 4] {
        let result = s
            .upload_append(&r, &id, offset, stream_of(vec![vec![9]]))
            .await;
        assert!(
            matches!(result, Err(StorageError::OffsetMismatch { current: 3, .. })),
            "offset {offset}: {result:?}"
        );
    }
    assert_eq!(
        collect(s.upload_read(&r, &id).await.unwrap()).await,
        [1, 2, 3]
    );
}

/// A body that fails is a `Body` error and leaves the session exactly as it was.
pub async fn upload_body_failure_keeps_session(s: Backend) {
    let r = repo("upload/failure");
    let id = s.upload_create(&r).await.unwrap().id;
    let first = content(7, 2000);
    s.upload_append(&r, &id, 0, stream_of(vec![first.clone()]))
        .await
        .unwrap();
    // Enough bytes before the failure that some reach storage.
    let big = content(8, 3 * 1024 * 1024);
    let result = s
        .upload_append(
            &r,
            &id,
            2000,
            failing_stream(vec![
                big[..1024 * 1024].to_vec(),
                big[1024 * 1024..].to_vec(),
            ]),
        )
        .await;
    match result {
        Err(StorageError::Body(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
        other => panic!("expected a Body error, got {other:?}"),
    }
    assert_eq!(s.upload_info(&r, &id).await.unwrap().size, 2000);
    assert_eq!(collect(s.upload_read(&r, &id).await.unwrap()).await, first);
    // The session continues normally.
    let size = s
        .upload_append(&r, &id, 2000, stream_of(vec![vec![42; 10]]))
        .await
        .unwrap();
    assert_eq!(size, 2010);
    let digest = Digest::sha256_of(b"never published");
    assert_eq!(s.blob_size(&digest).await.unwrap(), None);
}

/// For backends shared by several processes (not part of the common suite: a backend may keep
/// no checkpoints): a checkpoint recorded with an append is the session's until the next
/// append, which replaces or clears it; a failed append leaves it and never asks for its own.
pub async fn upload_checkpoints(s: Backend) {
    let r = repo("upload/checkpoint");
    let id = s.upload_create(&r).await.unwrap().id;
    assert_eq!(s.upload_info(&r, &id).await.unwrap().checkpoint, None);
    let size = s
        .upload_append_checkpointed(
            &r,
            &id,
            0,
            stream_of(vec![content(9, 3000)]),
            Box::new(|| "after-3000".to_owned()),
        )
        .await
        .unwrap();
    assert_eq!(size, 3000);
    let info = s.upload_info(&r, &id).await.unwrap();
    assert_eq!(
        (info.size, info.checkpoint.as_deref()),
        (3000, Some("after-3000"))
    );

    let failed = s
        .upload_append_checkpointed(
            &r,
            &id,
            3000,
            failing_stream(vec![content(10, 1000)]),
            Box::new(|| panic!("a failed append must not ask for a checkpoint")),
        )
        .await;
    assert!(matches!(failed, Err(StorageError::Body(_))), "{failed:?}");
    let out_of_order = s
        .upload_append_checkpointed(
            &r,
            &id,
            10,
            stream_of(vec![content(10, 1000)]),
            Box::new(|| panic!("a refused append must not ask for a checkpoint")),
        )
        .await;
    assert!(matches!(
        out_of_order,
        Err(StorageError::OffsetMismatch { .. })
    ));
    let info = s.upload_info(&r, &id).await.unwrap();
    assert_eq!(
        (info.size, info.checkpoint.as_deref()),
        (3000, Some("after-3000"))
    );

    s.upload_append(&r, &id, 3000, stream_of(vec![content(11, 10)]))
        .await
        .unwrap();
    let info = s.upload_info(&r, &id).await.unwrap();
    assert_eq!(
        (info.size, info.checkpoint),
        (3010, None),
        "a plain append clears it"
    );
}

/// An append abandoned midway (its future dropped, as when a client disconnects) leaves the
/// session as it was.
pub async fn upload_abandoned_append_keeps_session(s: Backend) {
    let r = repo("upload/abandoned");
    let id = s.upload_create(&r).await.unwrap().id;
    s.upload_append(&r, &id, 0, stream_of(vec![vec![1; 100]]))
        .await
        .unwrap();
    let append = s.upload_append(
        &r,
        &id,
        100,
        stalled_stream(vec![vec![2; 2 * 1024 * 1024], vec![3; 1024]]),
    );
    let outcome = tokio::time::timeout(std::time::Duration::from_millis(300), append).await;
    assert!(outcome.is_err(), "a stalled append must not complete");
    assert_eq!(s.upload_info(&r, &id).await.unwrap().size, 100);
    assert_eq!(
        collect(s.upload_read(&r, &id).await.unwrap()).await,
        vec![1; 100]
    );
    let size = s
        .upload_append(&r, &id, 100, stream_of(vec![vec![4; 5]]))
        .await
        .unwrap();
    assert_eq!(size, 105);
}

/// A session is invisible from any other repository.
pub async fn upload_foreign_repository_is_not_found(s: Backend) {
    let (mine, other) = (repo("upload/mine"), repo("upload/other"));
    let id = s.upload_create(&mine).await.unwrap().id;
    s.upload_append(&mine, &id, 0, stream_of(vec![vec![1, 2]]))
        .await
        .unwrap();
    let digest = Digest::sha256_of(&[1, 2]);
    assert_not_found(s.upload_info(&other, &id).await, "upload_info");
    assert_not_found(
        s.upload_append(&other, &id, 2, stream_of(vec![vec![3]]))
            .await,
        "upload_append",
    );
    assert_not_found(s.upload_read(&other, &id).await.map(|_| ()), "upload_read");
    assert_not_found(s.upload_commit(&other, &id, &digest).await, "upload_commit");
    assert_not_found(s.upload_delete(&other, &id).await, "upload_delete");
    // Untouched for its owner.
    assert_eq!(s.upload_info(&mine, &id).await.unwrap().size, 2);
    assert_eq!(s.blob_size(&digest).await.unwrap(), None);
}

/// Operations on a session that never existed are `NotFound`.
pub async fn upload_unknown_is_not_found(s: Backend) {
    let r = repo("upload/unknown");
    let id = UploadId::generate();
    let digest = Digest::sha256_of(b"");
    assert_not_found(s.upload_info(&r, &id).await, "upload_info");
    assert_not_found(
        s.upload_append(&r, &id, 0, stream_of(vec![vec![1]])).await,
        "upload_append",
    );
    assert_not_found(s.upload_read(&r, &id).await.map(|_| ()), "upload_read");
    assert_not_found(s.upload_commit(&r, &id, &digest).await, "upload_commit");
    assert_not_found(s.upload_delete(&r, &id).await, "upload_delete");
}

/// Cancelling removes the session and its bytes, once.
pub async fn upload_delete(s: Backend) {
    let r = repo("upload/delete");
    let id = s.upload_create(&r).await.unwrap().id;
    s.upload_append(&r, &id, 0, stream_of(vec![vec![5; 10]]))
        .await
        .unwrap();
    s.upload_delete(&r, &id).await.unwrap();
    assert_not_found(s.upload_info(&r, &id).await, "upload_info after delete");
    assert_not_found(s.upload_read(&r, &id).await.map(|_| ()), "upload_read");
    assert_not_found(s.upload_delete(&r, &id).await, "second delete");
    assert!(s.uploads().await.unwrap().is_empty());
}

/// Committing content whose blob exists keeps the blob and removes the session.
pub async fn upload_commit_existing_digest(s: Backend) {
    let r = repo("upload/existing");
    let data = content(9, 777);
    let digest = put(&s, &data).await;
    let id = s.upload_create(&r).await.unwrap().id;
    s.upload_append(&r, &id, 0, stream_of(vec![data.clone()]))
        .await
        .unwrap();
    assert_eq!(s.upload_commit(&r, &id, &digest).await.unwrap(), 777);
    assert_eq!(read_all(&s, &digest).await, data);
    assert_not_found(s.upload_info(&r, &id).await, "upload_info after commit");
}

/// Many chunks of odd sizes add up to a large blob, byte for byte.
pub async fn upload_large_chunked(s: Backend) {
    let r = repo("upload/large");
    let data = content(10, 5 * 1024 * 1024 + 3);
    let id = s.upload_create(&r).await.unwrap().id;
    let mut offset = 0;
    for part in data.chunks(2 * 1024 * 1024 + 1) {
        // Each append delivers its part in small pieces, as a network body does.
        let pieces = part.chunks(64 * 1024 - 1).map(<[u8]>::to_vec).collect();
        offset = s
            .upload_append(&r, &id, offset, stream_of(pieces))
            .await
            .unwrap();
    }
    assert_eq!(offset, data.len() as u64);
    assert_eq!(collect(s.upload_read(&r, &id).await.unwrap()).await, data);
    let digest = Digest::sha256_of(&data);
    assert_eq!(
        s.upload_commit(&r, &id, &digest).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(read_all(&s, &digest).await, data);
}

/// `uploads` lists the sessions of every repository with their sizes.
pub async fn uploads_listing(s: Backend) {
    assert!(s.uploads().await.unwrap().is_empty());
    let (a, b) = (repo("list/a"), repo("list/b/c"));
    let ia = s.upload_create(&a).await.unwrap().id;
    let ib = s.upload_create(&b).await.unwrap().id;
    s.upload_append(&b, &ib, 0, stream_of(vec![vec![0; 42]]))
        .await
        .unwrap();
    let listed = s.uploads().await.unwrap();
    assert_eq!(listed.len(), 2);
    let find = |id: &UploadId| listed.iter().find(|u| &u.id == id).expect("listed");
    assert_eq!(find(&ia).repository, "list/a");
    assert_eq!(find(&ia).size, 0);
    assert_eq!(find(&ib).repository, "list/b/c");
    assert_eq!(find(&ib).size, 42);
    s.upload_delete(&a, &ia).await.unwrap();
    let listed = s.uploads().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, ib);
}

// ---------------------------------------------------------------------------------------------
// Concurrency.

/// Of many appends racing at the same offset, exactly one wins; the others see the mismatch.
pub async fn concurrent_appends_same_offset(s: Backend) {
    let r = repo("race/append");
    let id = s.upload_create(&r).await.unwrap().id;
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let (s, r, id) = (Arc::clone(&s), r.clone(), id.clone());
            // Several chunks each, so the appends interleave if nothing serializes them.
            let chunks = (0..4).map(|_| vec![i; 64 * 1024]).collect();
            tokio::spawn(async move { (i, s.upload_append(&r, &id, 0, stream_of(chunks)).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (i, Ok(size)) => {
                assert_eq!(size, 256 * 1024);
                winners.push(i);
            }
            (
                _,
                Err(StorageError::OffsetMismatch {
                    requested: 0,
                    current,
                }),
            ) => {
                assert_eq!(current, 256 * 1024);
            }
            (_, Err(e)) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one append wins");
    let stored = collect(s.upload_read(&r, &id).await.unwrap()).await;
    assert_eq!(stored, vec![winners[0]; 256 * 1024]);
}

/// Many sessions committing the same content at once all succeed, leaving one intact blob.
pub async fn concurrent_commits_same_digest(s: Backend) {
    let r = repo("race/commit");
    let data = content(11, 100_000);
    let digest = Digest::sha256_of(&data);
    let mut ids = Vec::new();
    for _ in 0..8 {
        let id = s.upload_create(&r).await.unwrap().id;
        s.upload_append(&r, &id, 0, stream_of(vec![data.clone()]))
            .await
            .unwrap();
        ids.push(id);
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (s, r, id, digest) = (Arc::clone(&s), r.clone(), id.clone(), digest.clone());
            tokio::spawn(async move { s.upload_commit(&r, &id, &digest).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 100_000);
    }
    assert_eq!(read_all(&s, &digest).await, data);
    for id in &ids {
        assert_not_found(s.upload_info(&r, id).await, "upload_info after commit");
    }
    assert!(s.uploads().await.unwrap().is_empty());
}

/// Many writers of one tag leave it pointing at one of the written digests.
pub async fn concurrent_tag_set(s: Backend) {
    let r = repo("race/tag");
    let t = tag("latest");
    let digests: Vec<Digest> = (0..16u8).map(|i| Digest::sha256_of(&[i])).collect();
    let tasks: Vec<_> = digests
        .iter()
        .map(|d| {
            let (s, r, t, d) = (Arc::clone(&s), r.clone(), t.clone(), d.clone());
            tokio::spawn(async move {
                for _ in 0..4 {
                    s.tag_set(&r, &t, &d).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let value = s.tag_get(&r, &t).await.unwrap().expect("tag is set");
    assert!(digests.contains(&value));
    assert_eq!(s.tags(&r).await.unwrap(), vec![t]);
}

/// `tag_create` creates a missing tag and leaves an existing one as it is, reporting it.
pub async fn tag_create_only_once(s: Backend) {
    let r = repo("create/tag");
    let t = tag("v1");
    let (d1, d2) = (Digest::sha256_of(b"first"), Digest::sha256_of(b"second"));
    assert_eq!(s.tag_create(&r, &t, &d1).await.unwrap(), None, "created");
    assert_eq!(s.tag_get(&r, &t).await.unwrap(), Some(d1.clone()));
    assert_eq!(
        s.tag_create(&r, &t, &d2).await.unwrap(),
        Some(d1.clone()),
        "an existing tag is reported, not moved"
    );
    assert_eq!(s.tag_create(&r, &t, &d1).await.unwrap(), Some(d1.clone()));
    assert_eq!(s.tag_get(&r, &t).await.unwrap(), Some(d1.clone()));
    assert_eq!(s.tags(&r).await.unwrap(), vec![t.clone()]);
    // Once deleted, the tag can be created again.
    assert!(s.tag_delete(&r, &t).await.unwrap());
    assert_eq!(s.tag_create(&r, &t, &d2).await.unwrap(), None);
    assert_eq!(s.tag_get(&r, &t).await.unwrap(), Some(d2));
}

/// Of concurrent `tag_create`s of one tag with different digests exactly one creates it; all
/// others see the winner's digest, which the tag keeps.
pub async fn concurrent_tag_create(s: Backend) {
    let r = repo("race/create");
    let t = tag("release");
    let digests: Vec<Digest> = (0..16u8).map(|i| Digest::sha256_of(&[i, 7])).collect();
    let tasks: Vec<_> = digests
        .iter()
        .map(|d| {
            let (s, r, t, d) = (Arc::clone(&s), r.clone(), t.clone(), d.clone());
            tokio::spawn(async move { (d.clone(), s.tag_create(&r, &t, &d).await.unwrap()) })
        })
        .collect();
    let mut winners = Vec::new();
    let mut seen = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (d, None) => winners.push(d),
            (_, Some(existing)) => seen.push(existing),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one creation wins: {winners:?}");
    let winner = &winners[0];
    assert!(
        seen.iter().all(|d| d == winner),
        "the others see the winner"
    );
    assert_eq!(s.tag_get(&r, &t).await.unwrap().as_ref(), Some(winner));
}

/// Concurrent publishes of the same small blob leave it intact.
pub async fn concurrent_blob_put(s: Backend) {
    let data = content(12, 4096);
    let digest = Digest::sha256_of(&data);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (s, d, data) = (Arc::clone(&s), digest.clone(), Bytes::from(data.clone()));
            tokio::spawn(async move { s.blob_put(&d, data).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(read_all(&s, &digest).await, data);
}

// ---------------------------------------------------------------------------------------------
// Manifests, tags, referrers, repositories.

/// A manifest revision is recorded per repository, with its metadata, until unlinked.
pub async fn manifest_link_meta_unlink(s: Backend) {
    let (r, other) = (repo("manifests/repo"), repo("manifests/other"));
    let digest = put(&s, b"{\"schemaVersion\":2}").await;
    assert_eq!(s.manifest_meta(&r, &digest).await.unwrap(), None);
    s.manifest_link(&r, &digest, &meta(19)).await.unwrap();
    s.manifest_link(&r, &digest, &meta(19)).await.unwrap();
    assert_eq!(s.manifest_meta(&r, &digest).await.unwrap(), Some(meta(19)));
    assert_eq!(s.manifest_meta(&other, &digest).await.unwrap(), None);
    let index = ManifestMeta {
        media_type: "application/vnd.oci.image.index.v1+json".to_owned(),
        size: 19,
    };
    s.manifest_link(&r, &digest, &index).await.unwrap();
    assert_eq!(s.manifest_meta(&r, &digest).await.unwrap(), Some(index));
    assert!(s.manifest_unlink(&r, &digest).await.unwrap());
    assert!(!s.manifest_unlink(&r, &digest).await.unwrap());
    assert_eq!(s.manifest_meta(&r, &digest).await.unwrap(), None);
    // The bytes are a blob and stay.
    assert_eq!(s.blob_size(&digest).await.unwrap(), Some(19));
}

/// Tags are listed sorted lexically, are replaced by `tag_set` and removed by `tag_delete`.
pub async fn tags_sorted_and_deleted(s: Backend) {
    let r = repo("tags/repo");
    assert!(s.tags(&r).await.unwrap().is_empty());
    let (d1, d2) = (Digest::sha256_of(b"1"), Digest::sha256_of(b"2"));
    for name in ["v2", "latest", "V1", "_x", "a.b-c", "v10", "v1"] {
        s.tag_set(&r, &tag(name), &d1).await.unwrap();
    }
    let listed: Vec<String> = s
        .tags(&r)
        .await
        .unwrap()
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    assert_eq!(listed, ["V1", "_x", "a.b-c", "latest", "v1", "v10", "v2"]);
    assert_eq!(s.tag_get(&r, &tag("v1")).await.unwrap(), Some(d1.clone()));
    s.tag_set(&r, &tag("v1"), &d2).await.unwrap();
    assert_eq!(s.tag_get(&r, &tag("v1")).await.unwrap(), Some(d2));
    assert_eq!(s.tag_get(&r, &tag("V1")).await.unwrap(), Some(d1));
    assert!(s.tag_delete(&r, &tag("v1")).await.unwrap());
    assert!(!s.tag_delete(&r, &tag("v1")).await.unwrap());
    assert!(!s.tag_delete(&r, &tag("never")).await.unwrap());
    assert_eq!(s.tag_get(&r, &tag("v1")).await.unwrap(), None);
    assert_eq!(s.tags(&r).await.unwrap().len(), 6);
}

/// A conditional tag deletion removes the tags that still name the digest given with them
/// and leaves a moved tag as it is, with its time.
pub async fn tags_deleted_only_where_they_still_name_the_digest(s: Backend) {
    let r = repo("tags/conditional");
    let (d1, d2) = (Digest::sha256_of(b"1"), Digest::sha256_of(b"2"));
    for (name, digest) in [("a", &d1), ("moved", &d2), ("c", &d1)] {
        s.tag_set(&r, &tag(name), digest).await.unwrap();
    }
    let records = s.tag_records(&r).await.unwrap();
    let moved_at = records
        .iter()
        .find(|t| t.tag.as_str() == "moved")
        .unwrap()
        .set_at;
    let asked = [
        (tag("a"), d1.clone()),
        (tag("moved"), d1.clone()),
        (tag("never"), d1.clone()),
        (tag("c"), d1.clone()),
    ];
    assert_eq!(
        s.tags_delete_if(&r, &asked).await.unwrap(),
        [true, false, false, true]
    );
    let left = s.tag_records(&r).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].tag.as_str(), &left[0].digest), ("moved", &d2));
    assert_eq!(left[0].set_at, moved_at);
    assert_eq!(s.tag_get(&r, &tag("a")).await.unwrap(), None);
    assert!(s.tags_delete_if(&r, &[]).await.unwrap().is_empty());
}

/// A conditional tag deletion racing a push of the same tag to another digest never removes
/// the pushed tag: whichever comes first, the tag ends up naming the pushed digest. (A read
/// followed by an unconditional removal removes it when the push lands in between.) Not part
/// of the suite every backend runs: on S3 it holds only where the store honours `If-Match` on
/// `DeleteObject`, which MinIO ignores.
pub async fn conditional_tag_deletion_never_removes_a_tag_pushed_meanwhile(s: Backend) {
    let r = repo("tags/race");
    let (old, new) = (Digest::sha256_of(b"old"), Digest::sha256_of(b"new"));
    let mut removed = 0;
    for round in 0..100 {
        let t = tag(&format!("t{round}"));
        s.tag_set(&r, &t, &old).await.unwrap();
        let (pusher, deleter) = (Arc::clone(&s), Arc::clone(&s));
        let (push_repo, push_tag, push_digest) = (r.clone(), t.clone(), new.clone());
        let push =
            tokio::spawn(async move { pusher.tag_set(&push_repo, &push_tag, &push_digest).await });
        let (delete_repo, asked) = (r.clone(), [(t.clone(), old.clone())]);
        let delete =
            tokio::spawn(async move { deleter.tags_delete_if(&delete_repo, &asked).await });
        push.await.unwrap().unwrap();
        removed += usize::from(delete.await.unwrap().unwrap()[0]);
        assert_eq!(s.tag_get(&r, &t).await.unwrap(), Some(new.clone()), "{t}");
    }
    eprintln!("the deletion came first in {removed} of 100 rounds");
}

/// Whether `t` is within `slack` of the span `from..=to` (backends keep times to the second,
/// and a bucket's clock is not the test's).
fn about_within(t: SystemTime, from: SystemTime, to: SystemTime) -> bool {
    let slack = Duration::from_secs(2);
    t + slack >= from && t <= to + slack
}

/// Tags and manifest revisions are listed with the time they were last set or linked (a
/// second link of the same revision counts as a push), and pull records with their time;
/// each repository sees only its own.
pub async fn records_carry_push_and_pull_times(s: Backend) {
    let (r, nested) = (repo("records/repo"), repo("records/repo/nested"));
    assert!(s.tag_records(&r).await.unwrap().is_empty());
    assert!(s.manifest_records(&r).await.unwrap().is_empty());
    assert!(s.pull_records(&r).await.unwrap().is_empty());

    let start = SystemTime::now();
    let d = put(&s, b"{\"schemaVersion\":2,\"records\":1}").await;
    s.manifest_link(&r, &d, &meta(29)).await.unwrap();
    for name in ["b", "a"] {
        s.tag_set(&r, &tag(name), &d).await.unwrap();
    }
    s.tag_set(&nested, &tag("n"), &d).await.unwrap();
    s.pull_record(&r, &PullTarget::Tag(tag("a"))).await.unwrap();
    s.pull_record(&r, &PullTarget::Manifest(d.clone()))
        .await
        .unwrap();
    s.pull_record(&nested, &PullTarget::Tag(tag("n")))
        .await
        .unwrap();
    let end = SystemTime::now();

    let tags = s.tag_records(&r).await.unwrap();
    let names: Vec<&str> = tags.iter().map(|t| t.tag.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    for t in &tags {
        assert_eq!(t.digest, d);
        assert!(about_within(t.set_at, start, end), "{t:?}");
    }
    let manifests = s.manifest_records(&r).await.unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!((&manifests[0].digest, &manifests[0].meta), (&d, &meta(29)));
    assert!(about_within(manifests[0].linked_at, start, end));
    let pulls = s.pull_records(&r).await.unwrap();
    let targets: Vec<&PullTarget> = pulls.iter().map(|(t, _)| t).collect();
    assert_eq!(
        targets,
        [&PullTarget::Tag(tag("a")), &PullTarget::Manifest(d.clone())]
    );
    assert!(pulls.iter().all(|(_, at)| about_within(*at, start, end)));
    assert_eq!(s.tag_records(&nested).await.unwrap().len(), 1);
    assert_eq!(s.pull_records(&nested).await.unwrap().len(), 1);

    // Later writes move the times: a revision pushed again, a tag moved, another pull.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before_second = SystemTime::now();
    s.manifest_link(&r, &d, &meta(29)).await.unwrap();
    s.tag_set(&r, &tag("a"), &Digest::sha256_of(b"other"))
        .await
        .unwrap();
    s.pull_record(&r, &PullTarget::Tag(tag("a"))).await.unwrap();
    let relinked = &s.manifest_records(&r).await.unwrap()[0];
    assert!(relinked.linked_at > manifests[0].linked_at, "{relinked:?}");
    assert!(about_within(
        relinked.linked_at,
        before_second,
        SystemTime::now()
    ));
    let moved = &s.tag_records(&r).await.unwrap()[0];
    assert_eq!(moved.digest, Digest::sha256_of(b"other"));
    assert!(moved.set_at > tags[0].set_at);
    let pulled = s.pull_records(&r).await.unwrap();
    assert!(pulled[0].1 > pulls[0].1);
}

/// System records are absent until written, replaced whole, and kept apart by key; they
/// are not repositories.
pub async fn system_records_replace_whole(s: Backend) {
    let key: RecordKey = "retention/acme-ns/nightly/plan".parse().unwrap();
    let other: RecordKey = "retention/acme-ns/nightly/run".parse().unwrap();
    assert_eq!(s.record_get(&key).await.unwrap(), None);
    s.record_put(&key, Bytes::from_static(b"first"))
        .await
        .unwrap();
    s.record_put(&key, Bytes::from_static(b"second, longer"))
        .await
        .unwrap();
    s.record_put(&other, Bytes::new()).await.unwrap();
    assert_eq!(
        s.record_get(&key).await.unwrap().as_deref(),
        Some(&b"second, longer"[..])
    );
    assert_eq!(
        s.record_get(&other).await.unwrap().as_deref(),
        Some(&b""[..])
    );
    assert!(s.repositories().await.unwrap().is_empty());
    for bad in ["", "a//b", "../x", "a/./b", "UPPER", "a b", "x/"] {
        assert!(bad.parse::<RecordKey>().is_err(), "{bad:?}");
    }
}

/// Tags of one repository are not seen from another, even a nested one.
pub async fn tags_per_repository(s: Backend) {
    let (a, nested) = (repo("tagsrepo"), repo("tagsrepo/nested"));
    let d = Digest::sha256_of(b"t");
    s.tag_set(&a, &tag("one"), &d).await.unwrap();
    s.tag_set(&nested, &tag("two"), &d).await.unwrap();
    assert_eq!(s.tags(&a).await.unwrap(), vec![tag("one")]);
    assert_eq!(s.tags(&nested).await.unwrap(), vec![tag("two")]);
    assert_eq!(s.tag_get(&a, &tag("two")).await.unwrap(), None);
    assert!(s.tags(&repo("tagsrepo/none")).await.unwrap().is_empty());
}

/// `tags_after` answers pages in lexical order, from after any name (present or not), never
/// longer than asked; `tags_of` finds exactly the tags that point at a digest.
pub async fn tag_pages_and_tags_of_a_digest(s: Backend) {
    let (r, other) = (repo("pages/repo"), repo("pages/repo/nested"));
    let (d1, d2) = (Digest::sha256_of(b"p1"), Digest::sha256_of(b"p2"));
    let names = ["v2", "latest", "V1", "_x", "a.b-c", "v10", "v1", "z"];
    for name in names {
        let d = if name.starts_with('v') { &d1 } else { &d2 };
        s.tag_set(&r, &tag(name), d).await.unwrap();
    }
    s.tag_set(&other, &tag("v3"), &d1).await.unwrap();
    let page = |after: Option<&'static str>, limit: usize| {
        let (s, r) = (Arc::clone(&s), r.clone());
        async move {
            s.tags_after(&r, after, limit)
                .await
                .unwrap()
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None, 3).await, ["V1", "_x", "a.b-c"]);
    assert_eq!(page(Some("a.b-c"), 3).await, ["latest", "v1", "v10"]);
    assert_eq!(page(Some("v10"), 3).await, ["v2", "z"]);
    assert_eq!(page(Some("z"), 3).await, Vec::<String>::new());
    assert_eq!(
        page(Some("m"), 2).await,
        ["v1", "v10"],
        "after a name that is no tag"
    );
    assert_eq!(page(None, usize::MAX).await.len(), names.len());
    assert!(page(None, 0).await.is_empty());
    assert!(
        s.tags_after(&repo("pages/none"), None, 5)
            .await
            .unwrap()
            .is_empty()
    );

    let of = |d: Digest| {
        let (s, r) = (Arc::clone(&s), r.clone());
        async move { s.tags_of(&r, &d).await.unwrap() }
    };
    assert_eq!(
        of(d1.clone()).await,
        [tag("v1"), tag("v10"), tag("v2")],
        "not the nested repo's v3"
    );
    assert_eq!(
        of(d2).await,
        [tag("V1"), tag("_x"), tag("a.b-c"), tag("latest"), tag("z")]
    );
    assert!(of(Digest::sha256_of(b"none")).await.is_empty());
}

/// Referrers are recorded per subject and repository, listed by referrer digest.
pub async fn referrers_add_list_remove(s: Backend) {
    let (r, other) = (repo("referrers/repo"), repo("referrers/other"));
    let subject = Digest::sha256_of(b"subject");
    assert!(s.referrers(&r, &subject).await.unwrap().is_empty());
    let mut referrers: Vec<Digest> = (0..5u8).map(|i| Digest::sha256_of(&[i, 1])).collect();
    referrers.push(Digest::of(DigestAlgorithm::Sha512, b"sha512 referrer"));
    let descriptor = |d: &Digest| Bytes::from(format!("{{\"digest\":\"{d}\"}}"));
    for d in referrers.iter().rev() {
        s.referrer_add(&r, &subject, d, descriptor(d))
            .await
            .unwrap();
    }
    // Adding again replaces, not duplicates.
    s.referrer_add(&r, &subject, &referrers[0], descriptor(&referrers[0]))
        .await
        .unwrap();
    let mut sorted = referrers.clone();
    sorted.sort();
    let expected: Vec<Bytes> = sorted.iter().map(descriptor).collect();
    assert_eq!(s.referrers(&r, &subject).await.unwrap(), expected);
    assert!(s.referrers(&other, &subject).await.unwrap().is_empty());
    assert!(
        s.referrers(&r, &Digest::sha256_of(b"other subject"))
            .await
            .unwrap()
            .is_empty()
    );

    s.referrer_remove(&r, &subject, &sorted[2]).await.unwrap();
    s.referrer_remove(&r, &subject, &sorted[2]).await.unwrap();
    s.referrer_remove(&other, &subject, &sorted[0])
        .await
        .unwrap();
    let remaining: Vec<Bytes> = sorted
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, d)| descriptor(d))
        .collect();
    assert_eq!(s.referrers(&r, &subject).await.unwrap(), remaining);
}

/// Repositories with at least one manifest are listed, nested names included, sorted.
pub async fn repositories_listing(s: Backend) {
    assert!(s.repositories().await.unwrap().is_empty());
    let digest = put(&s, b"{}").await;
    let names = ["b", "a/b/c", "a", "a-b", "a/b", "z/y/x/w"];
    for name in names {
        s.manifest_link(&repo(name), &digest, &meta(2))
            .await
            .unwrap();
    }
    // Blob links, tags, referrers and uploads alone do not make a repository.
    s.link_blob(&repo("only/blobs"), &digest).await.unwrap();
    s.tag_set(&repo("only/tags"), &tag("t"), &digest)
        .await
        .unwrap();
    s.referrer_add(
        &repo("only/referrers"),
        &digest,
        &digest,
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap();
    s.upload_create(&repo("only/uploads")).await.unwrap();

    let listed: Vec<String> = s
        .repositories()
        .await
        .unwrap()
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    assert_eq!(listed, ["a", "a-b", "a/b", "a/b/c", "b", "z/y/x/w"]);

    // A repository whose last manifest is unlinked is no longer listed.
    assert!(s.manifest_unlink(&repo("a/b"), &digest).await.unwrap());
    let listed: HashSet<String> = s
        .repositories()
        .await
        .unwrap()
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    assert!(!listed.contains("a/b"));
    assert!(listed.contains("a/b/c"));
    assert_eq!(listed.len(), 5);
}

/// A working backend reports ready.
pub async fn check_succeeds(s: Backend) {
    s.check().await.unwrap();
    s.check().await.unwrap();
}
