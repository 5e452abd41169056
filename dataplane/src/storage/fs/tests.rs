//! The filesystem backend: the shared conformance suite, its layout on disk, and what only
//! a filesystem has (temporary area, durability, several processes on one root).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use super::*;
use crate::oci::{Digest, RepoName, Tag};
use crate::storage::conformance::{collect, content, failing_stream, stream_of};
use crate::storage::{ManifestMeta, Storage, StorageError};

crate::storage_conformance_tests!(conformance, async {
    let dir = tempfile::tempdir().expect("temporary directory");
    let storage = FsStorage::open(dir.path()).await.expect("open");
    (storage, dir)
});

fn repo(name: &str) -> RepoName {
    name.parse().unwrap()
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                walk(base, &entry.path(), out);
            } else {
                out.push(entry.path().strip_prefix(base).unwrap().to_owned());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

#[tokio::test]
async fn layout_matches_the_documented_tree() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStorage::open(dir.path()).await.unwrap();
    let r = repo("acme/app");
    let digest = Digest::sha256_of(b"manifest");
    s.blob_put(&digest, Bytes::from_static(b"manifest"))
        .await
        .unwrap();
    s.link_blob(&r, &digest).await.unwrap();
    s.manifest_link(
        &r,
        &digest,
        &ManifestMeta {
            media_type: "x".into(),
            size: 8,
        },
    )
    .await
    .unwrap();
    s.tag_set(&r, &"v1".parse().unwrap(), &digest)
        .await
        .unwrap();
    s.referrer_add(&r, &digest, &digest, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let id = s.upload_create(&r).await.unwrap().id;
    let hex = digest.hex();
    let mut expected = vec![
        format!("blobs/sha256/{}/{hex}", &hex[..2]),
        format!("repositories/acme/app/_layers/sha256/{hex}"),
        format!("repositories/acme/app/_manifests/sha256/{hex}"),
        "repositories/acme/app/_tags/v1".to_owned(),
        format!("repositories/acme/app/_referrers/sha256/{hex}/sha256/{hex}"),
        format!("uploads/{id}/data"),
        format!("uploads/{id}/info"),
    ];
    expected.sort();
    let found: Vec<String> = files_under(dir.path())
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.starts_with("_tmp/"))
        .collect();
    assert_eq!(found, expected);
    assert_eq!(
        fs::read_to_string(dir.path().join("repositories/acme/app/_tags/v1")).unwrap(),
        digest.to_string()
    );
}

#[tokio::test]
async fn sessions_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let r = repo("restart/repo");
    let data = content(1, 10_000);
    let info = {
        let s = FsStorage::open(dir.path()).await.unwrap();
        let info = s.upload_create(&r).await.unwrap();
        s.upload_append(&r, &info.id, 0, stream_of(vec![data[..4000].to_vec()]))
            .await
            .unwrap();
        info
    };
    let s = FsStorage::open(dir.path()).await.unwrap();
    let resumed = s.upload_info(&r, &info.id).await.unwrap();
    assert_eq!(resumed.size, 4000);
    assert_eq!(resumed.started_at, info.started_at);
    assert_eq!(s.uploads().await.unwrap().len(), 1);
    assert_eq!(
        collect(s.upload_read(&r, &info.id).await.unwrap()).await,
        &data[..4000]
    );
    s.upload_append(&r, &info.id, 4000, stream_of(vec![data[4000..].to_vec()]))
        .await
        .unwrap();
    let digest = Digest::sha256_of(&data);
    s.upload_commit(&r, &info.id, &digest).await.unwrap();
    assert_eq!(
        collect(s.blob_read(&digest, None).await.unwrap()).await,
        data
    );
}

#[tokio::test]
async fn open_removes_stale_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join(TMP_DIR);
    let live = FsStorage::open(dir.path()).await.unwrap();
    // Leftovers of a process that is gone: an area whose lock is free, an area without a
    // lock file, and loose files.
    fs::create_dir_all(tmp.join("dead/sub")).unwrap();
    fs::write(tmp.join("dead/sub/partial"), b"partial").unwrap();
    fs::write(tmp.join("dead.lock"), b"").unwrap();
    fs::create_dir_all(tmp.join("orphan")).unwrap();
    fs::write(tmp.join("orphan/0"), b"x").unwrap();
    fs::write(tmp.join("loose"), b"x").unwrap();
    fs::write(live.temp_dir().join("in-use"), b"x").unwrap();

    let second = FsStorage::open(dir.path()).await.unwrap();
    let mut names: Vec<String> = fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let area = |s: &FsStorage| {
        s.temp_dir()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    let mut expected = vec![
        area(&live),
        format!("{}{LOCK_SUFFIX}", area(&live)),
        area(&second),
        format!("{}{LOCK_SUFFIX}", area(&second)),
    ];
    expected.sort();
    assert_eq!(names, expected, "only the live instances' areas remain");
    assert!(live.temp_dir().join("in-use").exists());

    // Dropping an instance removes its area; the next open cleans nothing else up.
    drop(live);
    drop(second);
    let _third = FsStorage::open(dir.path()).await.unwrap();
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 2);
}

#[tokio::test]
async fn operations_leave_nothing_in_the_temporary_area() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStorage::open(dir.path()).await.unwrap();
    let r = repo("tmp/clean");
    let digest = Digest::sha256_of(b"abc");
    s.blob_put(&digest, Bytes::from_static(b"abc"))
        .await
        .unwrap();
    s.blob_put(&digest, Bytes::from_static(b"abc"))
        .await
        .unwrap();
    s.link_blob(&r, &digest).await.unwrap();
    s.tag_set(&r, &"t".parse().unwrap(), &digest).await.unwrap();
    // Conditional tag deletions, one kept (named another digest) and one removed.
    for (t, asked) in [("t", Digest::sha256_of(b"other")), ("gone", digest.clone())] {
        let t: Tag = t.parse().unwrap();
        s.tag_set(&r, &t, &digest).await.unwrap();
        s.tags_delete_if(&r, &[(t, asked)]).await.unwrap();
    }
    s.manifest_link(
        &r,
        &digest,
        &ManifestMeta {
            media_type: "x".into(),
            size: 3,
        },
    )
    .await
    .unwrap();
    s.referrer_add(&r, &digest, &digest, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    s.check().await.unwrap();
    let committed = s.upload_create(&r).await.unwrap().id;
    s.upload_append(&r, &committed, 0, stream_of(vec![b"abc".to_vec()]))
        .await
        .unwrap();
    s.upload_commit(&r, &committed, &digest).await.unwrap();
    let deleted = s.upload_create(&r).await.unwrap().id;
    let _ = s
        .upload_append(&r, &deleted, 0, failing_stream(vec![vec![1; 10]]))
        .await;
    s.upload_delete(&r, &deleted).await.unwrap();
    assert_eq!(files_under(s.temp_dir()), Vec::<PathBuf>::new());
    assert_eq!(
        files_under(&dir.path().join(UPLOADS_DIR)),
        Vec::<PathBuf>::new()
    );
}

#[tokio::test]
async fn a_failed_body_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStorage::open(dir.path()).await.unwrap();
    let r = repo("failed/body");
    let id = s.upload_create(&r).await.unwrap().id;
    let big = content(2, 3 * 1024 * 1024);
    let result = s
        .upload_append(
            &r,
            &id,
            0,
            failing_stream(vec![big[..2 << 20].to_vec(), big[2 << 20..].to_vec()]),
        )
        .await;
    assert!(matches!(result, Err(StorageError::Body(_))));
    let data = dir
        .path()
        .join(UPLOADS_DIR)
        .join(id.as_str())
        .join(UPLOAD_DATA);
    assert_eq!(fs::metadata(data).unwrap().len(), 0);
    assert_eq!(
        files_under(&dir.path().join(BLOBS_DIR)),
        Vec::<PathBuf>::new()
    );
}

#[tokio::test]
async fn tag_manifest_reads_the_tag_and_its_revision() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStorage::open(dir.path()).await.unwrap();
    let r = repo("resolve/tag");
    let t: Tag = "v1".parse().unwrap();
    let digest = Digest::sha256_of(b"m");
    let meta = ManifestMeta {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: 1,
    };
    assert_eq!(s.tag_manifest(&r, &t).await.unwrap(), None, "no tag");
    s.tag_set(&r, &t, &digest).await.unwrap();
    assert_eq!(s.tag_manifest(&r, &t).await.unwrap(), None, "no revision");
    s.manifest_link(&r, &digest, &meta).await.unwrap();
    assert_eq!(
        s.tag_manifest(&r, &t).await.unwrap(),
        Some((digest.clone(), meta.clone()))
    );
    // Writes through this instance are seen at once, though the tag is remembered.
    let other = Digest::sha256_of(b"n");
    s.manifest_link(&r, &other, &meta).await.unwrap();
    s.tag_set(&r, &t, &other).await.unwrap();
    assert_eq!(
        s.tag_manifest(&r, &t).await.unwrap(),
        Some((other.clone(), meta.clone()))
    );
    s.manifest_unlink(&r, &other).await.unwrap();
    assert_eq!(s.tag_manifest(&r, &t).await.unwrap(), None, "unlinked");
    s.manifest_link(&r, &other, &meta).await.unwrap();
    assert!(s.tag_manifest(&r, &t).await.unwrap().is_some());
    let relabelled = ManifestMeta {
        media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
        size: 1,
    };
    s.manifest_link(&r, &other, &relabelled).await.unwrap();
    assert_eq!(
        s.tag_manifest(&r, &t).await.unwrap(),
        Some((other.clone(), relabelled))
    );
    s.tag_delete(&r, &t).await.unwrap();
    assert_eq!(s.tag_manifest(&r, &t).await.unwrap(), None, "tag deleted");
    // Another process sharing the root: its tag moves are seen within the cache lifetime.
    s.tag_set(&r, &t, &digest).await.unwrap();
    let second = FsStorage::open(dir.path()).await.unwrap();
    assert_eq!(
        second.tag_manifest(&r, &t).await.unwrap().map(|(d, _)| d),
        Some(digest.clone())
    );
    s.tag_set(&r, &t, &other).await.unwrap();
    tokio::time::sleep(TAG_CACHE_TTL + Duration::from_millis(50)).await;
    assert_eq!(
        second.tag_manifest(&r, &t).await.unwrap().map(|(d, _)| d),
        Some(other.clone())
    );
    s.tag_delete(&r, &t).await.unwrap();
    fs::create_dir_all(dir.path().join("repositories/resolve/tag/_tags")).unwrap();
    fs::write(
        dir.path().join("repositories/resolve/tag/_tags/v1"),
        b"junk",
    )
    .unwrap();
    assert!(matches!(
        s.tag_manifest(&r, &t).await,
        Err(StorageError::Backend(_))
    ));
}

#[tokio::test]
async fn corrupt_records_are_backend_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStorage::open(dir.path()).await.unwrap();
    let r = repo("corrupt/repo");
    let t: Tag = "bad".parse().unwrap();
    let digest = Digest::sha256_of(b"x");
    s.tag_set(&r, &t, &digest).await.unwrap();
    s.manifest_link(
        &r,
        &digest,
        &ManifestMeta {
            media_type: "x".into(),
            size: 1,
        },
    )
    .await
    .unwrap();
    let repo_dir = dir.path().join("repositories/corrupt/repo");
    fs::write(repo_dir.join("_tags/bad"), b"not a digest").unwrap();
    fs::write(
        repo_dir.join(format!("_manifests/sha256/{}", digest.hex())),
        b"{broken",
    )
    .unwrap();
    assert!(matches!(
        s.tag_get(&r, &t).await,
        Err(StorageError::Backend(_))
    ));
    assert!(matches!(
        s.manifest_meta(&r, &digest).await,
        Err(StorageError::Backend(_))
    ));
    let id = s.upload_create(&r).await.unwrap().id;
    fs::write(
        dir.path()
            .join(UPLOADS_DIR)
            .join(id.as_str())
            .join(UPLOAD_INFO),
        b"[",
    )
    .unwrap();
    assert!(matches!(
        s.upload_info(&r, &id).await,
        Err(StorageError::Backend(_))
    ));
    // Listing skips what it cannot read instead of failing.
    assert!(s.uploads().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_interrupted_commit_can_be_completed_but_not_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStorage::open(dir.path()).await.unwrap();
    let r = repo("interrupted/commit");
    let id = s.upload_create(&r).await.unwrap().id;
    s.upload_append(&r, &id, 0, stream_of(vec![b"abc".to_vec()]))
        .await
        .unwrap();
    let digest = Digest::sha256_of(b"abc");
    // The state a crash between publishing and removing the session leaves behind.
    let data = dir
        .path()
        .join(UPLOADS_DIR)
        .join(id.as_str())
        .join(UPLOAD_DATA);
    let blob = s.inner.blob_path(&digest);
    fs::create_dir_all(blob.parent().unwrap()).unwrap();
    fs::hard_link(&data, &blob).unwrap();

    let result = s
        .upload_append(&r, &id, 3, stream_of(vec![b"def".to_vec()]))
        .await;
    assert!(matches!(result, Err(StorageError::NotFound)), "{result:?}");
    assert_eq!(s.upload_commit(&r, &id, &digest).await.unwrap(), 3);
    assert_eq!(
        collect(s.blob_read(&digest, None).await.unwrap()).await,
        b"abc"
    );
    assert!(matches!(
        s.upload_info(&r, &id).await,
        Err(StorageError::NotFound)
    ));
}

/// Streaming throughput of the backend, alone and with SHA-256 hashing in the body stream
/// as the registry does it. A measurement, not a test:
/// `STORAGE_BENCH_DIR=/dev/shm cargo test --release -p dataplane --lib storage::fs::tests::throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn throughput() {
    use crate::oci::{DigestAlgorithm, Hasher};
    use std::time::Instant;

    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 1 << 30;
    let base = std::env::var_os("STORAGE_BENCH_DIR").map(PathBuf::from);
    let dir = match &base {
        Some(base) => tempfile::tempdir_in(base).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let s = FsStorage::open(dir.path()).await.unwrap();
    let r = repo("bench/throughput");
    let chunk = Bytes::from(content(3, CHUNK));
    let body = || {
        let chunk = chunk.clone();
        futures_util::stream::iter((0..TOTAL / CHUNK).map(move |_| Ok(chunk.clone())))
    };
    let gib = |secs: f64| TOTAL as f64 / secs / f64::from(1u32 << 30);

    let start = Instant::now();
    let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
    for _ in 0..TOTAL / CHUNK {
        hasher.update(&chunk);
    }
    let digest = hasher.finish();
    let hash_secs = start.elapsed().as_secs_f64();

    let id = s.upload_create(&r).await.unwrap().id;
    let start = Instant::now();
    s.upload_append(&r, &id, 0, Box::pin(body())).await.unwrap();
    let append_secs = start.elapsed().as_secs_f64();
    s.upload_delete(&r, &id).await.unwrap();

    let id = s.upload_create(&r).await.unwrap().id;
    let start = Instant::now();
    let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
    let hashed = body().map(move |c: io::Result<Bytes>| {
        if let Ok(c) = &c {
            hasher.update(c);
        }
        c
    });
    s.upload_append(&r, &id, 0, Box::pin(hashed)).await.unwrap();
    s.upload_commit(&r, &id, &digest).await.unwrap();
    let hashed_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut stream = s.blob_read(&digest, None).await.unwrap();
    let mut read = 0;
    while let Some(c) = stream.next().await {
        read += c.unwrap().len();
    }
    assert_eq!(read, TOTAL);
    let read_secs = start.elapsed().as_secs_f64();

    println!("dir: {}", dir.path().display());
    println!("sha256 alone:          {:.2} GiB/s", gib(hash_secs));
    println!("append alone:          {:.2} GiB/s", gib(append_secs));
    println!(
        "append+sha256+commit:  {:.2} GiB/s ({:.0} % of sha256 alone)",
        gib(hashed_secs),
        100.0 * hash_secs / hashed_secs
    );
    println!("blob_read:             {:.2} GiB/s", gib(read_secs));
}

#[tokio::test]
async fn storages_sharing_a_root_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        FsStorage::open(dir.path()).await.unwrap(),
        FsStorage::open(dir.path()).await.unwrap(),
    );
    let r = repo("shared/root");
    let id = a.upload_create(&r).await.unwrap().id;
    a.upload_append(&r, &id, 0, stream_of(vec![vec![7; 10]]))
        .await
        .unwrap();
    assert_eq!(b.upload_info(&r, &id).await.unwrap().size, 10);
    let result = b.upload_append(&r, &id, 0, stream_of(vec![vec![8]])).await;
    assert!(matches!(
        result,
        Err(StorageError::OffsetMismatch { current: 10, .. })
    ));
    let digest = Digest::sha256_of(&[7; 10]);
    b.upload_commit(&r, &id, &digest).await.unwrap();
    assert_eq!(a.blob_size(&digest).await.unwrap(), Some(10));
    assert!(matches!(
        a.upload_info(&r, &id).await,
        Err(StorageError::NotFound)
    ));
}

/// Appends racing from two instances (as from two processes) are serialized by the file
/// lock: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_from_two_instances_are_serialized() {
    let dir = tempfile::tempdir().unwrap();
    let instances = [
        Arc::new(FsStorage::open(dir.path()).await.unwrap()),
        Arc::new(FsStorage::open(dir.path()).await.unwrap()),
    ];
    let r = repo("shared/race");
    let id = instances[0].upload_create(&r).await.unwrap().id;
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let s = Arc::clone(&instances[usize::from(i % 2)]);
            let (r, id) = (r.clone(), id.clone());
            let chunks = (0..4).map(|_| vec![i; 64 * 1024]).collect();
            tokio::spawn(async move { (i, s.upload_append(&r, &id, 0, stream_of(chunks)).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (i, Ok(_)) => winners.push(i),
            (_, Err(StorageError::OffsetMismatch { current, .. })) => {
                assert_eq!(current, 256 * 1024)
            }
            (_, Err(e)) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1);
    let stored = collect(instances[1].upload_read(&r, &id).await.unwrap()).await;
    assert_eq!(stored, vec![winners[0]; 256 * 1024]);
}

/// A collection that died between setting a blob aside and deciding leaves it in the trash;
/// the next collector puts it back where it was, bytes intact.
#[tokio::test]
async fn blobs_left_in_the_trash_are_put_back() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path()).await.unwrap();
    let data = b"set aside by a collector that died";
    let digest = Digest::sha256_of(data);
    storage
        .blob_put(&digest, Bytes::from_static(data))
        .await
        .unwrap();
    let blob = dir
        .path()
        .join("blobs/sha256")
        .join(&digest.hex()[..2])
        .join(digest.hex());
    let trash = dir.path().join("_system/gc/trash/sha256");
    fs::create_dir_all(&trash).unwrap();
    fs::rename(&blob, trash.join(digest.hex())).unwrap();
    assert_eq!(storage.blob_size(&digest).await.unwrap(), None);

    assert_eq!(storage.blob_collect_recover().await.unwrap(), 1);
    assert_eq!(fs::read(&blob).unwrap(), data);
    assert!(files_under(&trash).is_empty());
    assert_eq!(storage.blob_collect_recover().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conditional_tag_deletion_never_removes_a_tag_pushed_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FsStorage::open(dir.path()).await.unwrap());
    crate::storage::conformance::conditional_tag_deletion_never_removes_a_tag_pushed_meanwhile(
        storage,
    )
    .await;
}
