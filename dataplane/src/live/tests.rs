use std::path::Path;

use super::*;
use crate::auth::Transport;
use crate::auth::token::generate_key;
use crate::config::{ConfigError, StatedSettings};

const HEAD: &str = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n";
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";

fn document(body: &str) -> Loaded {
    let text = format!("{HEAD}{body}");
    Loaded {
        config: Config::from_yaml_str(&text).expect("a valid document"),
        stated: StatedSettings::of(&text),
    }
}

/// A document at `revision` with one namespace, one credential and the signing key `key`.
fn keyed(revision: u64, key_pem: &str) -> Loaded {
    let pem: String = key_pem.lines().map(|l| format!("      {l}\n")).collect();
    document(&format!(
        "revision: {revision}\nnamespaces: [{{name: acme}}]\n\
         credentials: [{{id: ci, secretHash: '{HASH}', scope: containerRegistry, namespaces: [acme]}}]\n\
         tokens:\n  active: k1\n  keys:\n  - id: k1\n    algorithm: ES256\n    privateKey: |\n{pem}"
    ))
}

fn applier() -> (Applier, LiveConfig) {
    Applier::new(
        AuthService::new(Transport::default()),
        ProcessSettings::default(),
        ConfigMetrics::default(),
    )
}

#[test]
fn nothing_is_in_force_before_the_first_document() {
    let (_applier, live) = applier();
    assert_eq!(live.revision(), None);
    let index = live.current();
    assert!(!index.in_force());
    assert_eq!(index.mode(), Mode::Closed, "nothing is allowed meanwhile");
}

#[test]
fn a_document_is_built_and_swapped_in_with_its_revision() {
    let (applier, live) = applier();
    let changes = live.subscribe();
    let key = generate_key("k1");
    let applied = applier
        .apply(Source::File, keyed(7, &key.private_key))
        .unwrap();
    assert_eq!(
        applied,
        Applied {
            revision: 7,
            previous: None,
            settings_kept: false
        }
    );
    assert!(changes.has_changed().unwrap());
    assert_eq!(live.revision(), Some(7));
    assert_eq!(live.current().mode(), Mode::Enforced);
    assert_eq!(applier.metrics().revision(), 7);
    assert_eq!(applier.metrics().refusals("file"), 0);
    let next = applier
        .apply(Source::File, keyed(8, &key.private_key))
        .unwrap();
    assert_eq!(next.previous, Some(7));
}

#[test]
fn a_broken_active_key_is_refused_and_the_previous_revision_stays() {
    let auth = AuthService::new(Transport::default());
    let (applier, live) = Applier::new(
        Arc::clone(&auth),
        ProcessSettings::default(),
        ConfigMetrics::default(),
    );
    let key = generate_key("k1");
    applier
        .apply(Source::Secret, keyed(1, &key.private_key))
        .unwrap();
    let before = live.current();
    let token = auth
        .issue_access_token(
            &before,
            &crate::auth::Identity::anonymous(),
            &[],
            std::time::SystemTime::now(),
        )
        .unwrap()
        .token;

    // A key whose PEM is damaged: the document is valid, but cannot be applied.
    let broken = key.private_key.replace("MIG", "XXX");
    let err = applier
        .apply(Source::Secret, keyed(2, &broken))
        .expect_err("a broken key is refused");
    assert_eq!(err.reason(), "keys");
    let message = err.to_string();
    assert!(message.contains("tokens.keys[0].privateKey"), "{message}");
    assert!(message.contains("\"k1\""), "{message}");

    assert_eq!(
        live.revision(),
        Some(1),
        "the previous revision stays in force"
    );
    assert!(Arc::ptr_eq(&before, &live.current()));
    assert!(live.current().verify_access_token(&token).is_ok());
    assert_eq!(applier.metrics().refusals("secret"), 1);
    assert_eq!(applier.metrics().revision(), 1);
}

#[test]
fn refusals_are_counted_by_reason() {
    let (applier, live) = applier();
    applier
        .apply(Source::File, document("revision: 1\n"))
        .unwrap();
    let invalid = ConfigError::Invalid(vec![crate::config::Problem {
        path: "region".into(),
        message: "bad".into(),
    }]);
    let err = applier
        .offer(Source::File, Err(LoadError::Config(invalid)))
        .unwrap_err();
    assert_eq!(err.reason(), "invalid");
    let incomplete = LoadError::Config(ConfigError::ShardMissing {
        name: "shard-a".into(),
    });
    let err = applier.offer(Source::File, Err(incomplete)).unwrap_err();
    assert_eq!(err.reason(), "incomplete");
    let err = applier
        .offer(
            Source::Secret,
            Err(LoadError::SecretMissing {
                namespace: "registry".into(),
                name: "config".into(),
            }),
        )
        .unwrap_err();
    assert_eq!(err.reason(), "unavailable");
    assert_eq!(applier.metrics().refusals("file"), 2);
    assert_eq!(applier.metrics().refusals("secret"), 1);
    assert_eq!(live.revision(), Some(1));

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ConfigMetrics::register(&mut registry);
    metrics.refused("secret", "keys");
    metrics.applied("secret", 9);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"config_refusals_total{source="secret",reason="keys"} 1"#),
        "{text}"
    );
    assert!(text.contains("config_revision 9"), "{text}");
}

#[test]
fn a_federation_whose_ca_bundle_does_not_load_is_refused() {
    let (applier, live) = applier();
    // PEM armour around bytes that are no certificate: passes validation, cannot be trusted.
    let bundle =
        r"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    let err = applier
        .apply(
            Source::File,
            document(&format!(
                "namespaces: [{{name: acme}}]\n\
                 federations: [{{name: ci, issuer: 'https://issuer.example', audience: registry, \
                 scope: containerRegistry, namespaces: [acme], caBundle: \"{bundle}\"}}]\n"
            )),
        )
        .unwrap_err();
    assert_eq!(err.reason(), "federations");
    assert!(err.to_string().contains("federations[0].caBundle"), "{err}");
    assert_eq!(live.revision(), None);
}

#[test]
fn process_settings_stay_the_running_ones() {
    let settings = ProcessSettings {
        storage: crate::config::StorageConfig {
            filesystem: Some(crate::config::FilesystemStorage {
                root: "/running".into(),
            }),
            s3: None,
        },
        ..ProcessSettings::default()
    };
    let (applier, live) = Applier::new(
        AuthService::new(Transport::default()),
        settings,
        ConfigMetrics::default(),
    );
    // A document stating other storage: applied, with the running storage.
    let applied = applier
        .apply(
            Source::File,
            document("revision: 2\nstorage: {filesystem: {root: /elsewhere}}\n"),
        )
        .unwrap();
    assert!(applied.settings_kept);
    assert_eq!(live.revision(), Some(2));
    assert_eq!(
        live.current().config().filesystem_root(),
        Some(Path::new("/running"))
    );
    // A document that states no settings (as the operator's Secret): nothing to keep.
    let applied = applier
        .apply(Source::Secret, document("revision: 3\n"))
        .unwrap();
    assert!(!applied.settings_kept);
    assert_eq!(
        live.current().config().filesystem_root(),
        Some(Path::new("/running"))
    );
}
