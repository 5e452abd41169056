//! Metering over a filesystem root, with the clock advanced by hand: stored bytes per
//! namespace, gigabyte-hours by the arithmetic, transfer, and a restart in between.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;

use super::*;
use crate::registry::test_support::upload;
use crate::registry::{ByteRange, PutTarget};
use crate::storage::fs::FsStorage;

async fn open(root: &std::path::Path) -> Arc<Registry> {
    let storage = FsStorage::open(root).await.unwrap();
    Arc::new(Registry::new(Arc::new(storage)))
}

/// Pushes an image of one config and `layer` into `repo`; returns the manifest's size.
async fn push(registry: &Registry, repo: &RepoName, config: &[u8], layer: &[u8]) -> u64 {
    let config_digest = upload(registry, repo, config).await;
    let layer_digest = upload(registry, repo, layer).await;
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let size = body.len() as u64;
    registry
        .manifest_put(
            repo,
            &PutTarget::default(),
            Some("application/vnd.oci.image.manifest.v1+json"),
            bytes::Bytes::from(body),
        )
        .await
        .unwrap();
    size
}

#[tokio::test]
async fn gigabyte_hours_and_transfer_match_the_arithmetic_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path()).await;
    let (app, tools, other) = (
        "acme/app".parse::<RepoName>().unwrap(),
        "acme/tools".parse::<RepoName>().unwrap(),
        "globex/app".parse::<RepoName>().unwrap(),
    );
    let shared = vec![7u8; 1_000_000];
    let config = b"{}";
    let m1 = push(&registry, &app, config, &shared).await;
    // The same layer in another repository of the namespace counts once; the config too.
    let m2 = push(&registry, &tools, config, &shared).await;
    // Another namespace pays for its own copy of the layer.
    let m3 = push(&registry, &other, config, &shared).await;
    assert_eq!(m1, m2);
    let acme = 2 + 1_000_000 + m1;
    let globex = 2 + 1_000_000 + m3;
    let stored = stored_bytes(&**registry.storage()).await.unwrap();
    assert_eq!(stored["acme"], acme);
    assert_eq!(stored["globex"], globex);

    // Pull the layer whole once and 1000 bytes of it once, through acme/app.
    let layer = Digest::sha256_of(&shared);
    let read = registry.blob_open(&app, &layer, None).await.unwrap();
    assert_eq!(read.stream.count().await, 1);
    let range = ByteRange::FromTo(0, 999);
    registry.blob_open(&app, &layer, Some(range)).await.unwrap();
    registry
        .transfers()
        .flush(&**registry.storage())
        .await
        .unwrap();

    let t0 = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let mut meter = Meter::new(Arc::clone(&registry));
    meter.sample_at(t0).await.unwrap().expect("holds the lease");
    meter
        .sample_at(t0 + Duration::from_secs(2 * 3600))
        .await
        .unwrap()
        .unwrap();
    meter.release().await;

    // A restart: new processes over the same root; an hour and a half later, one more sample.
    drop((meter, registry));
    let registry = open(dir.path()).await;
    let mut meter = Meter::new(Arc::clone(&registry));
    meter
        .sample_at(t0 + Duration::from_secs(2 * 3600 + 5400))
        .await
        .unwrap()
        .unwrap();

    let usage = usage(&**registry.storage()).await.unwrap();
    let hours = |bytes: u64, seconds: u64| {
        crds::usage::gigabyte_hours(u128::from(bytes) * u128::from(seconds))
    };
    let acme_usage = &usage.namespaces["acme"];
    assert_eq!(acme_usage.stored_bytes, acme);
    assert_eq!(acme_usage.gigabyte_hours, hours(acme, 2 * 3600 + 5400));
    // Pushed: every blob upload and manifest body, per repository (the shared layer twice).
    assert_eq!(acme_usage.pushed_bytes, 2 * (2 + 1_000_000 + m1));
    assert_eq!(acme_usage.pulled_bytes, 1_000_000 + 1000);
    let globex_usage = &usage.namespaces["globex"];
    assert_eq!(globex_usage.gigabyte_hours, hours(globex, 2 * 3600 + 5400));
    assert_eq!(
        (globex_usage.pulled_bytes, globex_usage.pushed_bytes),
        (0, globex)
    );
    assert_eq!(
        acme_usage.sampled_at.as_deref(),
        Some(
            humantime::format_rfc3339_seconds(t0 + Duration::from_secs(2 * 3600 + 5400))
                .to_string()
                .as_str()
        )
    );
}

#[tokio::test]
async fn one_process_samples_at_a_time_and_transfer_from_all_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (open(dir.path()).await, open(dir.path()).await);
    let repo: RepoName = "acme/app".parse().unwrap();
    upload(&a, &repo, b"through a").await;
    upload(&b, &repo, b"through b!").await;
    let (mut meter_a, mut meter_b) = (Meter::new(Arc::clone(&a)), Meter::new(Arc::clone(&b)));
    let now = SystemTime::now();
    assert!(meter_a.sample_at(now).await.unwrap().is_some());
    assert!(
        meter_b.sample_at(now).await.unwrap().is_none(),
        "a holds the lease"
    );
    let (storage_a, storage_b) = (Arc::clone(a.storage()), Arc::clone(b.storage()));
    let (ta, tb) = (a.transfers(), b.transfers());
    let (ra, rb) = tokio::join!(ta.flush(&*storage_a), tb.flush(&*storage_b));
    ra.unwrap();
    rb.unwrap();
    let usage = usage(&*storage_a).await.unwrap();
    assert_eq!(usage.namespaces["acme"].pushed_bytes, 19);
}
