//! fsck over a store pushed through the registry (in memory, and on the filesystem), then
//! broken on purpose underneath it.

use std::sync::Arc;

use bytes::Bytes;

use super::{Problem, Unreferenced, check, repair};
use crate::oci::{Digest, RepoName, Tag};
use crate::registry::test_support::upload as blob;
use crate::registry::{PutTarget, Registry};
use crate::storage::Storage;
use crate::storage::fs::FsStorage;
use crate::storage::memory::MemoryStorage;

const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn repo(name: &str) -> RepoName {
    name.parse().unwrap()
}

fn tag(name: &str) -> Tag {
    name.parse().unwrap()
}

async fn put(
    registry: &Registry,
    repo: &RepoName,
    media_type: &str,
    body: String,
    tags: &[&str],
) -> Digest {
    let target = PutTarget {
        digest: None,
        tags: tags.iter().map(|t| tag(t)).collect(),
        immutable_tags: vec![],
    };
    registry
        .manifest_put(repo, &target, Some(media_type), Bytes::from(body))
        .await
        .unwrap()
        .digest
}

/// An image with its own config and layer (returned with the manifest digest).
async fn image(
    registry: &Registry,
    repo: &RepoName,
    label: &str,
    tags: &[&str],
) -> (Digest, Digest, Digest) {
    let config_bytes = format!("config {label}");
    let layer_bytes = format!("layer {label}");
    let config = blob(registry, repo, config_bytes.as_bytes()).await;
    let layer = blob(registry, repo, layer_bytes.as_bytes()).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{IMAGE}",
        "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{}}},
        "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{}}}]}}"#,
        config_bytes.len(),
        layer_bytes.len(),
    );
    let digest = put(registry, repo, IMAGE, manifest, tags).await;
    (digest, config, layer)
}

async fn index_of(
    registry: &Registry,
    repo: &RepoName,
    children: &[&Digest],
    tags: &[&str],
) -> Digest {
    let entries: Vec<String> = children
        .iter()
        .map(|d| format!(r#"{{"mediaType":"{IMAGE}","digest":"{d}","size":1}}"#))
        .collect();
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{}]}}"#,
        entries.join(",")
    );
    put(registry, repo, INDEX, body, tags).await
}

async fn healthy_then_broken(storage: Arc<dyn Storage>) {
    let registry = Registry::new(Arc::clone(&storage));
    let app = repo("acme/app");
    let (one, _, one_layer) = image(&registry, &app, "one", &["v1"]).await;
    let (two, _, _) = image(&registry, &app, "two", &["v2"]).await;
    let index = index_of(&registry, &app, &[&one, &two], &["multi"]).await;
    // A blob of a push in progress: linked, referenced by no manifest yet.
    let pending = blob(&registry, &app, b"pending layer").await;

    let report = check(&*storage).await.unwrap();
    assert_eq!(report.problems, []);
    assert_eq!(
        (report.repositories, report.manifests, report.tags),
        (1, 3, 3)
    );
    // Two images (manifest, config, layer) and the index, and the pending blob.
    assert_eq!(report.blobs, 8);
    assert_eq!(
        report.unreferenced,
        [Unreferenced {
            digest: pending.to_string(),
            size: 13,
            linked_in: 1,
        }]
    );
    assert_eq!(report.unreferenced_bytes(), 13);

    // Broken underneath: a layer lost, an image of the index unlinked, a tag naming a
    // manifest the repository never held, a link to a blob that is not stored.
    storage.blob_delete(&one_layer).await.unwrap();
    storage.manifest_unlink(&app, &two).await.unwrap();
    let never = Digest::sha256_of(b"never pushed");
    storage.tag_set(&app, &tag("ghost"), &never).await.unwrap();
    let absent = Digest::sha256_of(b"absent blob");
    storage.link_blob(&app, &absent).await.unwrap();

    let mut report = check(&*storage).await.unwrap();
    let repository = "acme/app".to_owned();
    let mut expected = vec![
        Problem::MissingBlob {
            repository: repository.clone(),
            manifest: one.to_string(),
            blob: one_layer.to_string(),
        },
        Problem::MissingChild {
            repository: repository.clone(),
            index: index.to_string(),
            child: two.to_string(),
        },
        // v2 still names the unlinked image.
        Problem::DanglingTag {
            repository: repository.clone(),
            tag: "ghost".into(),
            manifest: never.to_string(),
        },
        Problem::DanglingTag {
            repository: repository.clone(),
            tag: "v2".into(),
            manifest: two.to_string(),
        },
        Problem::DanglingLink {
            repository: repository.clone(),
            blob: absent.to_string(),
        },
        // The lost layer's link leads nowhere now too.
        Problem::DanglingLink {
            repository: repository.clone(),
            blob: one_layer.to_string(),
        },
    ];
    let key = |p: &Problem| format!("{p:?}");
    report.problems.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(report.problems, expected);

    // Repair: v2 is moved to a held manifest meanwhile, so it stays; the other dangling tag
    // and the link go; missing blobs and children cannot be repaired.
    storage.tag_set(&app, &tag("v2"), &one).await.unwrap();
    repair(&*storage, &mut report).await.unwrap();
    let mut repaired = report.repaired.clone();
    repaired.sort_by_key(key);
    let v2_moved = |p: &Problem| matches!(p, Problem::DanglingTag { tag, .. } if tag == "v2");
    let repairable: Vec<Problem> = expected
        .iter()
        .filter(|p| p.repairable() && !v2_moved(p))
        .cloned()
        .collect();
    assert_eq!(repaired, repairable);
    assert_eq!(repaired.len(), 3);
    assert!(
        report
            .problems
            .iter()
            .all(|p| !p.repairable() || v2_moved(p))
    );
    assert_eq!(storage.tag_get(&app, &tag("ghost")).await.unwrap(), None);
    assert!(!storage.blob_linked(&app, &absent).await.unwrap());
    assert_eq!(
        storage.tag_get(&app, &tag("v2")).await.unwrap(),
        Some(one.clone())
    );

    let again = check(&*storage).await.unwrap();
    assert!(
        again.problems.iter().all(|p| !p.repairable()),
        "{:?}",
        again.problems
    );
    assert_eq!(again.problems.len(), 2, "{:?}", again.problems);
    // The unlinked image's blobs are no longer referenced by anything.
    assert_eq!(again.unreferenced.len(), 4, "{:?}", again.unreferenced);
}

#[tokio::test]
async fn in_memory() {
    healthy_then_broken(Arc::new(MemoryStorage::new())).await;
}

#[tokio::test]
async fn on_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path()).await.unwrap();
    healthy_then_broken(Arc::new(storage)).await;
}

#[tokio::test]
async fn an_unreadable_manifest_is_reported_not_fatal() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let registry = Registry::new(Arc::clone(&storage));
    let app = repo("acme/app");
    image(&registry, &app, "fine", &["v1"]).await;
    let junk = Bytes::from_static(b"not a manifest");
    let digest = Digest::sha256_of(&junk);
    storage.blob_put(&digest, junk).await.unwrap();
    let meta = crate::storage::ManifestMeta {
        media_type: IMAGE.into(),
        size: 14,
    };
    storage.manifest_link(&app, &digest, &meta).await.unwrap();
    let report = check(&*storage).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        matches!(&report.problems[0], Problem::UnreadableManifest { manifest, .. } if *manifest == digest.to_string())
    );
    assert_eq!(report.manifests, 2);
}
