use std::path::Path;
use std::time::Duration;

use super::*;

const FULL: &str = r#"
apiVersion: registry.thalassa.cloud/v1alpha1
kind: DataPlaneConfig
region: nl-01
storage:
  filesystem: {root: /var/lib/registry}
uploads: {sessionTimeout: 1h 30m}
gc: {grace: 2h, interval: 10m}
namespaces:
  - {name: acme-platform, visibility: public}
  - name: acme-dev
credentials:
  - id: ci-bot
    secretHash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"
    scope: "containerRegistry:pull"
    namespaces: [acme-platform]
    notBefore: 2026-01-01T00:00:00Z
    expiresAt: 2027-01-01T00:00:00Z
federations:
  - issuer: https://token.actions.example.com
    audience: registry
    claimRules: [{claim: repository, values: [acme/api]}]
    scope: containerRegistry
    namespaces: [acme-dev]
tokens:
  active: k1
  keys: [{id: k1, algorithm: ES256, privateKey: "-----BEGIN PRIVATE KEY-----"}]
retention:
  - {namespace: acme-dev, keepLastTags: 10, maxAge: 30d, protectTags: ["v*"]}
shards: [{name: region-config-2}]
"#;

#[test]
fn parses_a_full_document() {
    let c = Config::from_yaml_str(FULL).unwrap();
    assert_eq!(c.spec.region, "nl-01");
    assert_eq!(c.filesystem_root(), Some(Path::new("/var/lib/registry")));
    assert_eq!(
        c.settings.uploads.session_timeout.0,
        Duration::from_secs(5400)
    );
    assert_eq!(c.settings.gc.grace.0, Duration::from_secs(7200));
    assert_eq!(c.settings.gc.interval.0, Duration::from_secs(600));
    assert!(c.settings.gc.enabled);
    assert_eq!(c.spec.namespaces[0].visibility, Visibility::Public);
    assert_eq!(c.spec.namespaces[1].visibility, Visibility::Private);
    assert_eq!(c.spec.credentials[0].scope, Scope::ContainerRegistryPull);
    assert!(!c.spec.credentials[0].scope.allows_push());
    assert!(c.spec.credentials[0].not_before.unwrap() < c.spec.credentials[0].expires_at.unwrap());
    assert_eq!(c.spec.federations[0].scope, Scope::ContainerRegistry);
    assert_eq!(c.spec.tokens.keys[0].algorithm, SigningAlgorithm::ES256);
    assert_eq!(c.spec.retention[0].keep_last_tags, Some(10));
    assert_eq!(c.spec.shards[0].name, "region-config-2");
    assert!(!format!("{c:?}").contains("BEGIN PRIVATE KEY"));
    assert!(!format!("{c:?}").contains("argon2id"));
}

#[test]
fn minimal_document_gets_defaults() {
    let c = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n",
    )
    .unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.spec.region, "local");
    assert_eq!(c.filesystem_root(), Some(Path::new("./registry-data")));
    assert_eq!(
        c.settings.uploads.session_timeout.0,
        DEFAULT_SESSION_TIMEOUT
    );
    assert_eq!(c.settings.gc.grace.0, DEFAULT_GC_GRACE);
    assert_eq!(c.settings.gc.interval.0, DEFAULT_GC_INTERVAL);
    assert!(c.settings.gc.enabled);
}

#[test]
fn gc_times_below_a_second_are_refused() {
    let p = invalid(
        "gc: {grace: 0s, interval: 500ms, enabled: false}
",
    );
    let err = ConfigError::Invalid(p).to_string();
    assert!(
        err.contains("gc.grace: must be at least 1s") && err.contains("gc.interval"),
        "{err}"
    );
}

#[test]
fn round_trips_through_yaml() {
    let c = Config::from_yaml_str(FULL).unwrap();
    let text = serde_norway::to_string(&c).unwrap();
    assert_eq!(Config::from_yaml_str(&text).unwrap(), c);
    let d = Config::default();
    assert_eq!(
        Config::from_yaml_str(&serde_norway::to_string(&d).unwrap()).unwrap(),
        d
    );
}

#[test]
fn misspelled_field_is_named_with_path_and_location() {
    let text = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
                namespaces:\n  - name: acme\n    visbility: public\n";
    let err = Config::from_yaml_str(text).unwrap_err();
    let ConfigError::Syntax {
        message,
        line,
        column,
    } = &err
    else {
        panic!("expected a syntax error, got {err:?}");
    };
    assert!(message.contains("namespaces[0]"), "{message}");
    assert!(message.contains("unknown field `visbility`"), "{message}");
    assert!(message.contains("`visibility`"), "{message}");
    assert_eq!(*line, Some(5));
    assert_eq!(*column, Some(5));
    assert!(err.to_string().contains("line 5 column 5"), "{err}");
}

#[test]
fn unknown_top_level_field_is_refused() {
    let err = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\nregon: x\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown field `regon`"), "{err}");
    assert!(err.to_string().contains("`region`"), "{err}");
}

#[test]
fn wrong_enum_value_lists_the_alternatives() {
    let err = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
         namespaces: [{name: a, visibility: secret}]\n",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("namespaces[0].visibility"), "{msg}");
    assert!(
        msg.contains("`public`") && msg.contains("`private`"),
        "{msg}"
    );
}

#[test]
fn other_versions_and_kinds_are_refused_by_name() {
    let err = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v2\nkind: DataPlaneConfig\nnewField: 1\n",
    )
    .unwrap_err();
    assert!(
        matches!(err, ConfigError::UnsupportedVersion { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(API_VERSION), "{err}");
    let err = Config::from_yaml_str("kind: DataPlaneConfig\n").unwrap_err();
    assert!(matches!(err, ConfigError::UnsupportedVersion { ref found } if found.is_empty()));
    let err = Config::from_yaml_str("apiVersion: registry.thalassa.cloud/v1alpha1\nkind: Pod\n")
        .unwrap_err();
    assert!(matches!(err, ConfigError::WrongKind { .. }), "{err:?}");
}

#[test]
fn malformed_yaml_reports_a_location() {
    let err = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\nstorage: [\n",
    )
    .unwrap_err();
    assert!(
        matches!(err, ConfigError::Syntax { line: Some(_), .. }),
        "{err:?}"
    );
}

#[test]
fn bad_durations_and_timestamps_explain_the_format() {
    let err = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
         uploads: {sessionTimeout: forever}\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("uploads"), "{err}");
    assert!(err.to_string().contains("\"forever\""), "{err}");
    assert!(err.to_string().contains("24h"), "{err}");
    let err = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
         namespaces: [{name: a}]\n\
         credentials: [{id: c, secretHash: h, scope: containerRegistry, expiresAt: tomorrow}]\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("RFC 3339"), "{err}");
}

fn invalid(text: &str) -> Vec<Problem> {
    let doc =
        format!("apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n{text}");
    match Config::from_yaml_str(&doc) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected semantic problems, got {other:?}"),
    }
}

#[test]
fn storage_backends_are_mutually_exclusive() {
    let p = invalid("storage: {filesystem: {root: /a}, s3: {bucket: b}}\n");
    assert_eq!(p[0].path, "storage");
    assert!(p[0].message.contains("mutually exclusive"));
    let p = invalid("storage: {}\n");
    assert!(p[0].message.contains("exactly one"));
    let p = invalid("storage: {s3: {bucket: b, endpoint: \"minio:9000\"}}\n");
    assert_eq!(p[0].path, "storage.s3.endpoint");
}

#[test]
fn s3_storage_parses() {
    let c = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
         storage: {s3: {bucket: reg, region: eu-1, endpoint: \"http://127.0.0.1:9000\", \
         prefix: nl-01, forcePathStyle: true}}\n",
    )
    .unwrap();
    let s3 = c.settings.storage.s3.unwrap();
    assert!(s3.force_path_style);
    assert_eq!(s3.prefix, "nl-01");
    assert_eq!(
        s3.redirect, None,
        "downloads stream through the server by default"
    );
    assert!(c.settings.storage.filesystem.is_none());
}

#[test]
fn s3_download_redirects_have_a_bounded_lifetime() {
    let c = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
         storage: {s3: {bucket: reg, redirect: {}}}\n",
    )
    .unwrap();
    let redirect = c.settings.storage.s3.unwrap().redirect.unwrap();
    assert_eq!(redirect.ttl.0, DEFAULT_REDIRECT_TTL);
    for ttl in ["30s", "8d"] {
        let p = invalid(&format!(
            "storage: {{s3: {{bucket: b, redirect: {{ttl: {ttl}}}}}}}\n"
        ));
        assert_eq!(p[0].path, "storage.s3.redirect.ttl", "{ttl}");
    }
    let err = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
         storage: {s3: {bucket: b, redirect: {expires: 5m}}}\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown field `expires`"), "{err}");
}

#[test]
fn namespace_names_are_checked_and_unique() {
    let p = invalid("namespaces: [{name: Acme}, {name: a/b}, {name: ok}, {name: ok}]\n");
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "namespaces[0].name",
            "namespaces[1].name",
            "namespaces[3].name"
        ]
    );
    assert!(p[2].message.contains("duplicate"));
}

#[test]
fn references_must_name_declared_things() {
    let p = invalid(
        "namespaces: [{name: a}]\n\
         credentials: [{id: c, secretHash: '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', scope: containerRegistry, namespaces: [a, b]}]\n\
         tokens: {active: k2, keys: [{id: k1, algorithm: EdDSA, privateKey: x}]}\n",
    );
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["credentials[0].namespaces[1]", "tokens.active"]);
}

#[test]
fn credential_rules() {
    let p = invalid(
        "credentials:\n\
         - {id: c, secretHash: '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', scope: containerRegistry, \
            notBefore: 2027-01-01T00:00:00Z, expiresAt: 2026-01-01T00:00:00Z}\n\
         - {id: c, secretHash: \"\", scope: \"containerRegistry:all\"}\n\
         - {id: d, secretHash: hunter2, scope: containerRegistry}\n",
    );
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "credentials[0].expiresAt",
            "credentials[1].id",
            "credentials[1].secretHash",
            "credentials[2].secretHash"
        ]
    );
    assert!(p[3].message.contains("dataplane hash-secret"), "{}", p[3]);
    let err = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
         credentials: [{id: c, secretHash: h, scope: admin}]\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("containerRegistry:pull"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let p =
        invalid("region: NL_01\nuploads: {sessionTimeout: 0s}\nshards: [{name: a}, {name: a}]\n");
    assert_eq!(p.len(), 3, "{p:?}");
    let err = ConfigError::Invalid(p).to_string();
    assert!(
        err.contains("region")
            && err.contains("uploads.sessionTimeout")
            && err.contains("shards[1].name")
    );
}

#[test]
fn root_override_replaces_the_backend() {
    let c = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
         storage: {s3: {bucket: b}}\n",
    )
    .unwrap()
    .with_filesystem_root("/tmp/x");
    assert_eq!(c.filesystem_root(), Some(Path::new("/tmp/x")));
    assert!(c.settings.storage.s3.is_none());
    c.validate().unwrap();
}

const HEAD: &str = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n";

#[test]
fn shards_merge_only_at_the_named_revisions() {
    let index = format!(
        "{HEAD}region: r\nrevision: 4\nnamespaces: [{{name: a}}]\n\
         shards: [{{name: s-0, revision: 11}}, {{name: s-1, revision: 12}}]\n"
    );
    let shard = |revision: u64, ns: &str, id: &str| {
        ConfigShard::from_yaml_str(&format!(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfigShard\n\
             revision: {revision}\nnamespaces: [{{name: {ns}}}]\ncredentials:\n\
             - {{id: {id}, secretHash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA\", \
             scope: containerRegistry, namespaces: [a, {ns}]}}\n"
        ))
        .unwrap()
    };
    let base = Config::parse_unvalidated(&index).unwrap();

    let mut complete = base.clone();
    complete
        .merge_shards(vec![
            ("s-1".into(), shard(12, "c", "two")),
            ("s-0".into(), shard(11, "b", "one")),
        ])
        .unwrap();
    let names: Vec<&str> = complete
        .spec
        .namespaces
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["a", "b", "c"],
        "in the order the index names the shards"
    );
    assert_eq!(complete.spec.credentials.len(), 2);
    assert_eq!(complete.spec.revision, 4);

    let mut missing = base.clone();
    let err = missing
        .merge_shards(vec![("s-0".into(), shard(11, "b", "one"))])
        .unwrap_err();
    assert!(
        matches!(err, ConfigError::ShardMissing { ref name } if name == "s-1"),
        "{err}"
    );

    let mut stale = base.clone();
    let err = stale
        .merge_shards(vec![
            ("s-0".into(), shard(10, "b", "one")),
            ("s-1".into(), shard(12, "c", "two")),
        ])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "shard \"s-0\" is at revision 10, the index names revision 11"
    );

    let mut unknown = base.clone();
    let err = unknown
        .merge_shards(vec![
            ("s-0".into(), shard(11, "b", "one")),
            ("s-1".into(), shard(12, "c", "two")),
            ("s-9".into(), shard(1, "d", "three")),
        ])
        .unwrap_err();
    assert!(matches!(err, ConfigError::ShardUnknown { .. }), "{err}");

    // The merged whole is validated: a duplicate across shards is refused.
    let mut duplicate = base;
    let err = duplicate
        .merge_shards(vec![
            ("s-0".into(), shard(11, "b", "same")),
            ("s-1".into(), shard(12, "c", "same")),
        ])
        .unwrap_err();
    assert!(
        err.to_string().contains("duplicate credential id \"same\""),
        "{err}"
    );
}

#[test]
fn immutable_tag_patterns_and_shard_names_are_checked() {
    let problems = invalid(
        "namespaces: [{name: a, immutableTags: [\"v*\", \"bad/tag\", \"\"]}]\n\
         shards: [{name: ../etc}]\n",
    );
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "namespaces[0].immutableTags[1]",
            "namespaces[0].immutableTags[2]",
            "shards[0].name"
        ]
    );
}

#[test]
fn the_operator_part_alone_carries_no_process_settings() {
    let c = Config::from_yaml_str(&format!(
        "{HEAD}region: r\nrevision: 3\nnamespaces: [{{name: a}}]\n"
    ))
    .unwrap();
    let text = c.spec_to_yaml();
    assert!(
        !text.contains("storage") && !text.contains("uploads"),
        "{text}"
    );
    let back = Config::from_yaml_str(&text).unwrap();
    assert_eq!(back.spec, c.spec);
}

#[test]
fn federation_issuers_are_https_or_loopback_http() {
    let federation = |issuer: &str| {
        format!(
            "federations:\n- {{issuer: \"{issuer}\", audience: registry, scope: containerRegistry}}\n"
        )
    };
    for good in [
        "https://token.actions.example.com",
        "https://issuer.example.com:8443/tenant/7",
        "http://127.0.0.1:8080",
        "http://127.1.2.3",
        "http://localhost:9000/issuer",
        "http://[::1]:5556",
    ] {
        let doc = format!(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n{}",
            federation(good)
        );
        Config::from_yaml_str(&doc).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for (bad, says) in [
        ("http://issuer.example.com", "loopback"),
        ("http://10.0.0.1:8080", "loopback"),
        ("http://127.0.0.1.example.com", "loopback"),
        ("http://localhost.example.com", "loopback"),
        ("ftp://issuer.example.com", "\"ftp\""),
        ("issuer.example.com", "absolute"),
        ("https://user:pw@issuer.example.com", "credentials"),
        ("https://issuer.example.com/?tenant=1", "query"),
        ("https://issuer.example.com/#x", "fragment"),
    ] {
        let p = invalid(&federation(bad));
        assert_eq!(p[0].path, "federations[0].issuer", "{bad}");
        assert!(p[0].message.contains(says), "{bad}: {}", p[0]);
    }
}

#[test]
fn connection_limits_have_defaults_and_bounds() {
    let c = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n",
    )
    .unwrap();
    assert_eq!(
        c.settings.connections.header_timeout.0,
        DEFAULT_HEADER_TIMEOUT
    );
    assert_eq!(c.settings.connections.idle_timeout.0, DEFAULT_IDLE_TIMEOUT);
    let c = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
         connections: {headerTimeout: 5s, idleTimeout: 2m}\n",
    )
    .unwrap();
    assert_eq!(
        c.settings.connections.header_timeout.0,
        Duration::from_secs(5)
    );
    assert_eq!(
        c.settings.connections.idle_timeout.0,
        Duration::from_secs(120)
    );
    let p = invalid("connections: {headerTimeout: 0s, idleTimeout: 2h}\n");
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["connections.headerTimeout", "connections.idleTimeout"]
    );
    assert!(p[1].message.contains("1h"), "{}", p[1]);
}

#[test]
fn login_limits_have_defaults_and_bounds() {
    let c = Config::from_yaml_str(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
         logins: {perSource: {failures: 5, per: 10m}}\n",
    )
    .unwrap();
    assert_eq!(c.settings.logins.per_source.failures, 5);
    assert_eq!(c.settings.logins.per_source.per.0, Duration::from_secs(600));
    assert_eq!(
        c.settings.logins.per_credential,
        LoginLimits::default().per_credential
    );
    let p = invalid(
        "logins: {perSource: {failures: 0, per: 1m}, perCredential: {failures: 3, per: 2d}}\n",
    );
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["logins.perSource.failures", "logins.perCredential.per"]
    );
}
