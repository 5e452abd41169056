//! Crash safety of the real binary: SIGKILL in the middle of 50 concurrent pushes, restart on
//! the same root, and check that every acknowledged blob and manifest is intact, that nothing
//! partial is visible, and that the server takes new pushes.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    Dataplane, client, get, image_manifest, pseudo_random, push_blob_chunked, push_blob_monolithic,
    put_manifest, sha256,
};

const PUSHES: usize = 50;
/// Acknowledgements per push: chunked layer, small layer, shared config, manifest.
const ACKS_PER_PUSH: usize = 4;
/// The server is killed once this many manifests were acknowledged.
const KILL_AFTER_MANIFESTS: usize = 10;
const CHUNK: usize = 256 * 1024;

/// What one push sends.
struct Push {
    repo: String,
    layer: Vec<u8>,
    small: Vec<u8>,
    manifest: Vec<u8>,
}

/// The config blob every push shares: concurrent publishes of the same content.
fn shared_config() -> Vec<u8> {
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec()
}

fn push_plan(i: usize) -> Push {
    // Sizes from 256 KiB to 2.5 MiB (1 to 10 chunks), so pushes finish at different times.
    let layer = pseudo_random(1000 + i as u64, CHUNK * (1 + i % 10) + i * 7919);
    let small = pseudo_random(5000 + i as u64, 64 * 1024 + i);
    let config = shared_config();
    let manifest = image_manifest(
        (&sha256(&config), config.len()),
        &[
            (&sha256(&layer), layer.len()),
            (&sha256(&small), small.len()),
        ],
    );
    // Half the pushes share repositories, so links and tags race too.
    Push {
        repo: format!("crash/r{}", i % 25),
        layer,
        small,
        manifest,
    }
}

#[derive(Debug, Clone)]
enum Ack {
    Blob {
        repo: String,
        digest: String,
        len: usize,
    },
    Manifest {
        repo: String,
        tag: String,
        bytes: Vec<u8>,
    },
}

async fn run_push(
    client: reqwest::Client,
    base: String,
    i: usize,
    acks: Arc<Mutex<Vec<Ack>>>,
    manifests: Arc<AtomicUsize>,
) {
    let push = push_plan(i);
    let ack = |a: Ack| {
        if matches!(a, Ack::Manifest { .. }) {
            manifests.fetch_add(1, Ordering::SeqCst);
        }
        acks.lock().unwrap().push(a);
    };
    let Ok(status) = push_blob_chunked(&client, &base, &push.repo, &push.layer, CHUNK).await else {
        return;
    };
    if status != 201 {
        return;
    }
    ack(Ack::Blob {
        repo: push.repo.clone(),
        digest: sha256(&push.layer),
        len: push.layer.len(),
    });
    for blob in [push.small.clone(), shared_config()] {
        let Ok(status) = push_blob_monolithic(&client, &base, &push.repo, &blob).await else {
            return;
        };
        if status != 201 {
            return;
        }
        ack(Ack::Blob {
            repo: push.repo.clone(),
            digest: sha256(&blob),
            len: blob.len(),
        });
    }
    let tag = format!("t{i}");
    let Ok(status) = put_manifest(&client, &base, &push.repo, &tag, &push.manifest).await else {
        return;
    };
    if status == 201 {
        ack(Ack::Manifest {
            repo: push.repo.clone(),
            tag,
            bytes: push.manifest.clone(),
        });
    }
}

/// Every stored blob file hashes to its name, and no temporary leftovers are visible as
/// blobs.
fn assert_every_stored_blob_is_whole(root: &Path) -> usize {
    let mut checked = 0;
    let blobs = root.join("blobs/sha256");
    let Ok(fanouts) = std::fs::read_dir(&blobs) else {
        return 0;
    };
    for fanout in fanouts {
        let fanout = fanout.unwrap();
        for entry in std::fs::read_dir(fanout.path()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path()).unwrap();
            assert_eq!(
                sha256(&bytes),
                format!("sha256:{name}"),
                "stored blob {} does not hash to its name",
                entry.path().display()
            );
            checked += 1;
        }
    }
    checked
}

/// Every blob link of every repository points at a stored blob; returns the number of links.
fn assert_every_link_has_its_blob(root: &Path) -> usize {
    fn walk(dir: &Path, root: &Path, links: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|n| n == "_layers") {
                for link in std::fs::read_dir(path.join("sha256")).into_iter().flatten() {
                    let hex = link.unwrap().file_name().to_string_lossy().into_owned();
                    let blob = root.join("blobs/sha256").join(&hex[..2]).join(&hex);
                    assert!(blob.is_file(), "link to sha256:{hex} without its blob");
                    *links += 1;
                }
            } else {
                walk(&path, root, links);
            }
        }
    }
    let mut links = 0;
    walk(&root.join("repositories"), root, &mut links);
    links
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_pushes_loses_nothing_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let mut server = Dataplane::start(root.path(), &[]);
    let base = server.url();
    let http = client();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let manifests_acked = Arc::new(AtomicUsize::new(0));

    let tasks: Vec<_> = (0..PUSHES)
        .map(|i| {
            tokio::spawn(run_push(
                http.clone(),
                base.clone(),
                i,
                acks.clone(),
                manifests_acked.clone(),
            ))
        })
        .collect();

    // Kill as soon as some manifests were acknowledged.
    while manifests_acked.load(Ordering::SeqCst) < KILL_AFTER_MANIFESTS {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill();
    let acked_at_kill = acks.lock().unwrap().len();
    for task in tasks {
        task.await.unwrap();
    }
    let acks = acks.lock().unwrap().clone();
    // Acknowledgements whose response was already in flight may land after the kill; none can
    // arrive once the process is gone, and the kill left pushes unfinished.
    let manifests_acked = manifests_acked.load(Ordering::SeqCst);
    assert!(manifests_acked >= KILL_AFTER_MANIFESTS);
    assert!(
        manifests_acked < PUSHES && acks.len() < PUSHES * ACKS_PER_PUSH,
        "every push finished before the kill"
    );
    eprintln!(
        "killed after {acked_at_kill} acknowledgements, {} in all, of {} possible",
        acks.len(),
        PUSHES * ACKS_PER_PUSH
    );
    drop(server);

    // Nothing partial on disk under a blob name.
    let stored = assert_every_stored_blob_is_whole(root.path());
    assert!(stored > 0);
    let links = assert_every_link_has_its_blob(root.path());
    assert!(links > 0);

    let server = Dataplane::start(root.path(), &[]);
    let base = server.url();
    let http = client();

    // Every acknowledged blob and manifest is intact, and tags point at them.
    let mut manifests = 0;
    for ack in &acks {
        match ack {
            Ack::Blob { repo, digest, len } => {
                let (status, header, body) =
                    get(&http, &format!("{base}/v2/{repo}/blobs/{digest}")).await;
                assert_eq!(status, 200, "acknowledged blob {repo}@{digest} missing");
                assert_eq!(body.len(), *len);
                assert_eq!(&sha256(&body), digest);
                assert_eq!(header.as_deref(), Some(digest.as_str()));
            }
            Ack::Manifest { repo, tag, bytes } => {
                manifests += 1;
                let (status, header, body) =
                    get(&http, &format!("{base}/v2/{repo}/manifests/{tag}")).await;
                assert_eq!(status, 200, "acknowledged manifest {repo}:{tag} missing");
                assert_eq!(&body, bytes);
                assert_eq!(header.as_deref(), Some(sha256(bytes).as_str()));
                let (status, _, body) = get(
                    &http,
                    &format!("{base}/v2/{repo}/manifests/{}", sha256(bytes)),
                )
                .await;
                assert_eq!(status, 200);
                assert_eq!(&body, bytes);
            }
        }
    }

    // Every push, acknowledged or not, is either absent or whole through the API.
    for i in 0..PUSHES {
        let push = push_plan(i);
        for blob in [&push.layer, &push.small, &shared_config()] {
            let digest = sha256(blob);
            let (status, _, body) =
                get(&http, &format!("{base}/v2/{}/blobs/{digest}", push.repo)).await;
            match status {
                200 => assert_eq!(&body, blob, "partial blob {digest} visible"),
                404 => {}
                other => panic!("unexpected status {other} for {digest}"),
            }
        }
        let (status, _, body) =
            get(&http, &format!("{base}/v2/{}/manifests/t{i}", push.repo)).await;
        match status {
            200 => assert_eq!(body, push.manifest, "tag t{i} points at something else"),
            404 => {}
            other => panic!("unexpected status {other} for tag t{i}"),
        }
    }

    // The restarted server takes new pushes.
    let fresh = pseudo_random(99, 300_000);
    assert_eq!(
        push_blob_chunked(&http, &base, "crash/after", &fresh, 100_000)
            .await
            .unwrap(),
        201
    );
    let config = shared_config();
    assert_eq!(
        push_blob_monolithic(&http, &base, "crash/after", &config)
            .await
            .unwrap(),
        201
    );
    let manifest = image_manifest(
        (&sha256(&config), config.len()),
        &[(&sha256(&fresh), fresh.len())],
    );
    assert_eq!(
        put_manifest(&http, &base, "crash/after", "latest", &manifest)
            .await
            .unwrap(),
        201
    );
    let (status, _, body) = get(&http, &format!("{base}/v2/crash/after/manifests/latest")).await;
    assert_eq!(status, 200);
    assert_eq!(body, manifest);
    eprintln!(
        "{} acknowledgements checked ({manifests} manifests), {stored} stored blobs and {links} \
         links verified",
        acks.len()
    );
}
