//! Planning and running against a registry (in memory): what was pushed is read back with
//! its times, a run deletes exactly what was planned and is still selected, and what stays
//! pulls.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use crds::retention::{KeepLast, RetentionRules, RetentionScope};

use super::run::{apply, plan};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::registry::test_support::upload as blob;
use crate::registry::{PutTarget, Registry};
use crate::storage::memory::MemoryStorage;

fn registry() -> Registry {
    Registry::new(Arc::new(MemoryStorage::new()))
}

fn repo(name: &str) -> RepoName {
    name.parse().unwrap()
}

/// Pushes an image (its own config, a shared base layer and a layer of its own) under `tags`.
async fn push_image(registry: &Registry, repo: &RepoName, label: &str, tags: &[&str]) -> Digest {
    let config = blob(registry, repo, format!("config {label}").as_bytes()).await;
    let base = blob(registry, repo, b"shared base layer").await;
    let own = blob(registry, repo, format!("layer {label}").as_bytes()).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{}}},
        "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{base}","size":17}},
                  {{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{own}","size":{}}}]}}"#,
        format!("config {label}").len(),
        format!("layer {label}").len(),
    );
    let target = PutTarget {
        digest: None,
        tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
        immutable_tags: vec![],
    };
    registry
        .manifest_put(
            repo,
            &target,
            Some("application/vnd.oci.image.manifest.v1+json"),
            Bytes::from(manifest),
        )
        .await
        .unwrap()
        .digest
}

fn keep_last(count: u32) -> RetentionRules {
    RetentionRules {
        keep_last: vec![KeepLast {
            tags: "*".into(),
            count,
        }],
        ..Default::default()
    }
}

fn scope(namespace: &str) -> RetentionScope {
    RetentionScope {
        namespaces: vec![namespace.into()],
        repositories: vec![],
    }
}

async fn tags(registry: &Registry, repo: &RepoName) -> Vec<String> {
    let tags = registry.storage().tags(repo).await.unwrap();
    tags.iter().map(|t| t.as_str().to_owned()).collect()
}

#[tokio::test]
async fn a_run_deletes_the_planned_tags_and_images_and_the_rest_pulls() {
    let registry = registry();
    let app = repo("acme/app");
    let mut digests = Vec::new();
    for i in 0..8 {
        digests.push(push_image(&registry, &app, &format!("build-{i}"), &[&format!("b{i}")]).await);
        // Push times are the storage's clock: keep them apart.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Another namespace with the same tags is out of scope.
    let other = repo("other/app");
    push_image(&registry, &other, "elsewhere", &["b0"]).await;

    let rules = keep_last(3);
    let none = BTreeSet::new();
    let planned = plan(&registry, &scope("acme"), &rules, &none, SystemTime::now())
        .await
        .unwrap();
    assert!(planned.skipped.is_empty());
    let summary = planned.plan.summary();
    assert_eq!(
        (summary.repositories, summary.tags, summary.manifests),
        (1, 5, 5)
    );
    let planned_tags: Vec<&str> = planned
        .plan
        .items
        .iter()
        .filter_map(|i| i.tag.as_deref())
        .collect();
    assert_eq!(planned_tags, ["b0", "b1", "b2", "b3", "b4"]);
    // Each image's config and own layer; the shared base layer stays referenced.
    let own_bytes: u64 = (0..5)
        .map(|i| format!("config build-{i}").len() + format!("layer build-{i}").len())
        .sum::<usize>() as u64;
    assert!(planned.plan.bytes > own_bytes, "manifests are counted too");

    // Planning deleted nothing.
    assert_eq!(tags(&registry, &app).await.len(), 8);

    let ran = apply(
        &registry,
        &scope("acme"),
        &rules,
        &none,
        SystemTime::now(),
        &planned.plan.items,
    )
    .await
    .unwrap();
    assert_eq!(ran.plan.items, planned.plan.items);
    assert_eq!(ran.plan.bytes, planned.plan.bytes);
    assert_eq!(tags(&registry, &app).await, ["b5", "b6", "b7"]);
    for (i, digest) in digests.iter().enumerate() {
        let got = registry
            .manifest_get(&app, &Reference::Digest(digest.clone()), true)
            .await;
        assert_eq!(got.is_ok(), i >= 5, "image {i}");
    }
    assert_eq!(tags(&registry, &other).await, ["b0"]);
}

#[tokio::test]
async fn a_run_spares_what_changed_since_the_plan() {
    let registry = registry();
    let app = repo("acme/app");
    for i in 0..4 {
        push_image(&registry, &app, &format!("img-{i}"), &[&format!("t{i}")]).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let rules = keep_last(1);
    let none = BTreeSet::new();
    let planned = plan(&registry, &scope("acme"), &rules, &none, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(planned.plan.summary().tags, 3);

    // Since the plan: t0 moved to a new image (the newest now), and t2's image is now running.
    let moved = push_image(&registry, &app, "img-new", &["t0"]).await;
    let t1_image = registry
        .storage()
        .tag_get(&app, &"t1".parse::<Tag>().unwrap())
        .await
        .unwrap()
        .unwrap();
    let t2_image = registry
        .storage()
        .tag_get(&app, &"t2".parse::<Tag>().unwrap())
        .await
        .unwrap()
        .unwrap();
    let running: BTreeSet<String> = [t2_image.to_string()].into();

    let ran = apply(
        &registry,
        &scope("acme"),
        &rules,
        &running,
        SystemTime::now(),
        &planned.plan.items,
    )
    .await
    .unwrap();
    // t0 was moved (its planned digest is gone from it), t2 runs: only t1 and its image go.
    // t3, no longer the newest, is selected now but was not planned, so it stays for the next
    // plan to show.
    let deleted: Vec<(Option<&str>, &str)> = ran
        .plan
        .items
        .iter()
        .map(|i| (i.tag.as_deref(), i.digest.as_str()))
        .collect();
    let t1_digest = t1_image.to_string();
    assert!(
        deleted.contains(&(Some("t1"), t1_digest.as_str())),
        "{deleted:?}"
    );
    assert!(deleted.contains(&(None, t1_digest.as_str())), "{deleted:?}");
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    assert_eq!(tags(&registry, &app).await, ["t0", "t2", "t3"]);
    assert!(
        registry
            .manifest_get(&app, &Reference::Digest(moved), false)
            .await
            .is_ok()
    );
}
