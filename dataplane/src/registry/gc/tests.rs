//! The collector over the in-memory backend: what it keeps, what it removes, the lease.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::oci::Reference;
use crate::registry::PutTarget;
use crate::registry::test_support::upload;
use crate::storage::Storage;
use crate::storage::memory::MemoryStorage;

const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

fn image(config: &Digest, config_size: usize, layers: &[(&Digest, usize)]) -> Bytes {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, size)| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{size}}}"#
            )
        })
        .collect();
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"{CONFIG_TYPE}","digest":"{config}","size":{config_size}}},"layers":[{}]}}"#,
        layers.join(",")
    ))
}

fn fixture() -> (Arc<MemoryStorage>, Arc<Registry>) {
    let storage = Arc::new(MemoryStorage::new());
    let registry = Arc::new(Registry::new(storage.clone() as Arc<dyn Storage>));
    (storage, registry)
}

/// Pushes an image of `layers` tagged `tag`; returns the manifest's digest and size.
async fn push_image(
    registry: &Registry,
    repo: &RepoName,
    tag: &str,
    layers: &[&[u8]],
) -> (Digest, u64) {
    let config = upload(registry, repo, b"{}").await;
    let mut digests = Vec::new();
    for layer in layers {
        digests.push((upload(registry, repo, layer).await, layer.len()));
    }
    let refs: Vec<(&Digest, usize)> = digests.iter().map(|(d, n)| (d, *n)).collect();
    let body = image(&config, 2, &refs);
    let size = body.len() as u64;
    let put = registry
        .manifest_put(
            repo,
            &PutTarget {
                tags: vec![tag.parse().unwrap()],
                ..PutTarget::default()
            },
            Some("application/vnd.oci.image.manifest.v1+json"),
            body,
        )
        .await
        .unwrap();
    (put.digest, size)
}

fn collector(registry: &Arc<Registry>, grace: Duration) -> Collector {
    Collector::new(Arc::clone(registry), grace, GcMetrics::default())
}

#[tokio::test]
async fn collects_only_unreferenced_blobs_past_the_grace_period() {
    let (storage, registry) = fixture();
    let repo: RepoName = "team/app".parse().unwrap();
    let other: RepoName = "team/other".parse().unwrap();
    let (v1, v1_size) = push_image(&registry, &repo, "v1", &[b"shared", b"only in v1"]).await;
    push_image(&registry, &repo, "v2", &[b"shared", b"only in v2"]).await;
    push_image(&registry, &other, "x", &[b"in another repository"]).await;
    let orphan = upload(&registry, &repo, b"uploaded, never named").await;

    // Within the grace period nothing goes, not even the orphan.
    let mut patient = collector(&registry, Duration::from_secs(3600));
    let report = patient.run_once().await.unwrap().unwrap();
    patient.release().await;
    assert_eq!(
        (report.collected, report.within_grace),
        (0, 1),
        "{report:?}"
    );
    assert_eq!(report.manifests, 3);

    // v1 deleted: its unshared layer and its manifest bytes become garbage, with the orphan.
    registry
        .manifest_delete(&repo, &Reference::Digest(v1.clone()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let report = collector(&registry, Duration::from_millis(10))
        .run_once()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.collected, 3, "{report:?}");
    let expected = (b"only in v1".len() + b"uploaded, never named".len()) as u64 + v1_size;
    assert_eq!(report.freed_bytes, expected);
    for gone in [&orphan, &v1, &Digest::sha256_of(b"only in v1")] {
        assert_eq!(storage.blob_size(gone).await.unwrap(), None, "{gone}");
    }
    for kept in [
        &b"shared"[..],
        b"only in v2",
        b"in another repository",
        b"{}",
    ] {
        assert!(
            storage
                .blob_size(&Digest::sha256_of(kept))
                .await
                .unwrap()
                .is_some()
        );
    }
    assert!(
        registry
            .manifest_get(&repo, &Reference::Tag("v2".parse().unwrap()), true)
            .await
            .is_ok()
    );
    assert_eq!(last_report(&registry).await.unwrap(), Some(report));
}

#[tokio::test]
async fn a_push_naming_a_collected_blob_is_refused() {
    let (_storage, registry) = fixture();
    let repo: RepoName = "team/app".parse().unwrap();
    let config = upload(&registry, &repo, b"{}").await;
    let layer = upload(&registry, &repo, b"collected before its manifest came").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let report = collector(&registry, Duration::from_millis(10))
        .run_once()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.collected, 2);
    // The repository still links the layer, but the push's touch finds it gone.
    let body = image(&config, 2, &[(&layer, 34)]);
    let err = registry
        .manifest_put(
            &repo,
            &PutTarget::default(),
            Some("application/vnd.oci.image.manifest.v1+json"),
            body,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::registry::RegistryError::ManifestBlobUnknown(_)),
        "{err:?}"
    );
    // A mount from the repository is not possible either: the client is told to upload.
    let mounted = registry
        .mount(&"team/b".parse().unwrap(), &layer, Some(&repo), true)
        .await
        .unwrap();
    assert!(matches!(mounted, crate::registry::MountOutcome::Session(_)));
}

#[tokio::test]
async fn one_process_collects_at_a_time() {
    let (_storage, registry) = fixture();
    let mut first = collector(&registry, Duration::from_secs(1));
    let mut second = collector(&registry, Duration::from_secs(1));
    assert!(first.run_once().await.unwrap().is_some());
    assert!(
        second.run_once().await.unwrap().is_none(),
        "the lease is held"
    );
    assert!(
        first.run_once().await.unwrap().is_some(),
        "the holder goes on"
    );
    first.release().await;
    assert!(
        second.run_once().await.unwrap().is_some(),
        "released: taken over"
    );
}

#[test]
fn a_job_holds_its_lease_past_its_next_run() {
    let hour = Duration::from_secs(3600);
    assert_eq!(
        lease_for(hour, LEASE_DURATION),
        2 * hour + Duration::from_secs(30)
    );
    assert_eq!(
        lease_for(Duration::from_secs(1), LEASE_DURATION),
        LEASE_DURATION
    );
}
