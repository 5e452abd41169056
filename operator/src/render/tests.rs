use std::collections::HashMap;

use crds::config::{Config, CredentialConfig, Scope, TokensConfig};
use crds::v1alpha1::{NamespaceScope, RegistryNamespace, RegistryNamespaceSpec};

use super::*;
use crate::resolve::NamespaceIndex;

fn settings(shard_bytes: usize) -> Settings {
    Settings::from_yaml_str(&format!(
        "region: nl-01\nregistryHost: r.example.com\nnamespace: reg\nconfigSecret: cfg\n\
         shardBytes: {shard_bytes}\norganisations: {{acme: {{containerRegistry: true}}}}\n"
    ))
    .unwrap()
}

fn index(names: &[&str]) -> NamespaceIndex {
    let objects: Vec<RegistryNamespace> = names
        .iter()
        .map(|n| {
            let mut o = RegistryNamespace::new(
                n,
                RegistryNamespaceSpec {
                    name: None,
                    region: "nl-01".into(),
                    visibility: Default::default(),
                    scope: NamespaceScope::Project,
                    immutable_tags: vec!["v*".into()],
                    description: None,
                },
            );
            o.metadata.namespace = Some("acme-a".into());
            o
        })
        .collect();
    let orgs = HashMap::from([("acme-a".to_string(), "acme".to_string())]);
    NamespaceIndex::build(&settings(1 << 20), &orgs, objects.iter())
}

fn credentials(n: usize) -> Vec<CredentialConfig> {
    (0..n)
        .map(|i| CredentialConfig {
            id: format!("acme-a.cred-{i:05}"),
            secret_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ${i:043}"),
            scope: Scope::ContainerRegistryPull,
            namespaces: vec!["app".into()],
            not_before: None,
            expires_at: None,
            previous_secrets: Vec::new(),
        })
        .collect()
}

#[test]
fn a_small_region_is_one_document_that_validates() {
    let s = settings(512 * 1024);
    let r = render(
        &s,
        &index(&["app"]),
        credentials(3),
        Vec::new(),
        TokensConfig::default(),
        7,
    );
    assert!(r.shards.is_empty());
    let text = r.index.spec_to_yaml();
    let parsed = Config::from_yaml_str(&text).unwrap();
    assert_eq!(parsed.spec.revision, 7);
    assert_eq!(parsed.spec.region, "nl-01");
    assert_eq!(
        parsed.spec.namespaces[0].immutable_tags,
        vec!["v*".to_string()]
    );
    assert_eq!(parsed.spec.credentials.len(), 3);
    assert!(
        !text.contains("storage"),
        "process settings are not the operator's:\n{text}"
    );
}

#[test]
fn a_large_region_is_split_into_shards_that_merge_back() {
    let s = settings(16 * 1024);
    let r = render(
        &s,
        &index(&["app"]),
        credentials(2000),
        Vec::new(),
        TokensConfig::default(),
        3,
    );
    assert!(r.shards.len() >= 2, "{} shards", r.shards.len());
    assert!(r.index.spec.credentials.is_empty());
    for (name, shard) in &r.shards {
        assert!(name.starts_with("cfg-shard-"));
        let text = serde_norway::to_string(shard).unwrap();
        assert!(
            text.len() <= s.shard_bytes * 2,
            "shard {name} is {} bytes",
            text.len()
        );
        assert_eq!(
            crds::config::ConfigShard::from_yaml_str(&text).unwrap(),
            *shard
        );
    }
    let merged = r.merged().unwrap();
    assert_eq!(merged.spec.credentials.len(), 2000);
    assert_eq!(merged.spec.namespaces.len(), 1);
}

#[test]
fn one_changed_credential_changes_one_shard() {
    let s = settings(16 * 1024);
    let before = render(
        &s,
        &index(&["app"]),
        credentials(2000),
        Vec::new(),
        TokensConfig::default(),
        1,
    );
    let mut changed = credentials(2000);
    changed[1234].scope = Scope::ContainerRegistry;
    let after = render(
        &s,
        &index(&["app"]),
        changed,
        Vec::new(),
        TokensConfig::default(),
        2,
    );
    assert_eq!(before.shards.len(), after.shards.len());
    let differing = before
        .shards
        .iter()
        .zip(&after.shards)
        .filter(|(a, b)| a.1.revision != b.1.revision)
        .count();
    assert_eq!(differing, 1);
    assert_ne!(before.content_digest(), after.content_digest());
}

#[test]
fn the_digest_ignores_the_revision_only() {
    let s = settings(512 * 1024);
    let a = render(
        &s,
        &index(&["app"]),
        credentials(2),
        Vec::new(),
        TokensConfig::default(),
        1,
    );
    let b = render(
        &s,
        &index(&["app"]),
        credentials(2),
        Vec::new(),
        TokensConfig::default(),
        9,
    );
    assert_eq!(a.content_digest(), b.content_digest());
    let c = render(
        &s,
        &index(&["app", "other"]),
        credentials(2),
        Vec::new(),
        TokensConfig::default(),
        1,
    );
    assert_ne!(a.content_digest(), c.content_digest());
}
