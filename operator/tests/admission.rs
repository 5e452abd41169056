//! Invalid objects are refused at admission by the CRDs' schema and CEL rules, each with a
//! message that says what to fix.

mod common;

use common::cluster;

const NS: &str = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RegistryNamespace\n";
const CRED: &str = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RegistryCredential\n";
const POLICY: &str = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RetentionPolicy\n";

/// Applies each `(what, manifest, message)`; returns what was accepted or refused with
/// another message.
fn refusals(cases: &[(&str, String, &str)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (what, manifest, message) in cases {
        match cluster().apply(manifest) {
            Ok(out) => failures.push(format!("{what}: accepted ({out})")),
            Err(err) if err.to_string().contains(message) => {}
            Err(err) => failures.push(format!(
                "{what}: refused, but the message lacks {message:?}:\n{err}"
            )),
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_objects_are_refused_with_what_to_fix() {
    let cluster = cluster();
    let project = cluster.test_namespace().await.unwrap();
    let p = project.name();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown scope",
            format!(
                "{CRED}metadata: {{name: c1, namespace: {p}}}\nspec: {{region: nl-01, scope: 'containerRegistry:admin', namespaces: [app]}}"
            ),
            r#"spec.scope: Unsupported value: "containerRegistry:admin": supported values: "containerRegistry", "containerRegistry:all", "containerRegistry:pull""#,
        ),
        (
            "bad registry namespace name",
            format!(
                "{NS}metadata: {{name: n1, namespace: {p}}}\nspec: {{region: nl-01, name: Bad_Name}}"
            ),
            "spec.name: Invalid value: \"string\": must be 1-63 lowercase letters and digits separated by '.', '_', '__' or dashes (for example acme-platform)",
        ),
        (
            "metadata.name that is no registry namespace name, without spec.name",
            format!("{NS}metadata: {{name: a..b, namespace: {p}}}\nspec: {{region: nl-01}}"),
            "metadata.name is not a valid registry namespace name: set spec.name",
        ),
        (
            "malformed region",
            format!("{NS}metadata: {{name: n2, namespace: {p}}}\nspec: {{region: NL_01}}"),
            "spec.region: Invalid value: \"string\": must be a region name: 1-63 lowercase letters, digits and '-' (for example nl-01)",
        ),
        (
            "missing region",
            format!("{NS}metadata: {{name: n3, namespace: {p}}}\nspec: {{visibility: public}}"),
            "spec.region: Required value",
        ),
        (
            "unknown visibility",
            format!(
                "{NS}metadata: {{name: n4, namespace: {p}}}\nspec: {{region: nl-01, visibility: internal}}"
            ),
            r#"spec.visibility: Unsupported value: "internal": supported values: "public", "private""#,
        ),
        (
            "bad tag pattern",
            format!(
                "{NS}metadata: {{name: n5, namespace: {p}}}\nspec: {{region: nl-01, immutableTags: ['v/1']}}"
            ),
            "spec.immutableTags: Invalid value: \"array\": each pattern is 1-128 tag characters (A-Z a-z 0-9 _ . -) and the wildcards * and ?",
        ),
        (
            "bad namespace in a credential",
            format!(
                "{CRED}metadata: {{name: c2, namespace: {p}}}\nspec: {{region: nl-01, scope: containerRegistry, namespaces: ['A/B']}}"
            ),
            "spec.namespaces: Invalid value: \"array\": each entry must be a registry namespace name",
        ),
        (
            "credential without namespaces",
            format!(
                "{CRED}metadata: {{name: c3, namespace: {p}}}\nspec: {{region: nl-01, scope: containerRegistry, namespaces: []}}"
            ),
            "spec.namespaces: Invalid value: 0: spec.namespaces in body should have at least 1 items",
        ),
        (
            "too short a rotation",
            format!(
                "{CRED}metadata: {{name: c4, namespace: {p}}}\nspec: {{region: nl-01, scope: containerRegistry, namespaces: [app], rotationPeriod: 5m}}"
            ),
            "spec.rotationPeriod: Invalid value: \"string\": must be a duration of at least 1h, written like 720h or 90m",
        ),
        (
            "too short a rotation overlap",
            format!(
                "{CRED}metadata: {{name: c4o, namespace: {p}}}\nspec: {{region: nl-01, scope: containerRegistry, namespaces: [app], rotationOverlap: 5s}}"
            ),
            "spec.rotationOverlap: Invalid value: \"string\": must be a duration between 10s and 168h, written like 1h or 90s",
        ),
        (
            "a rotation overlap as long as the period",
            format!(
                "{CRED}metadata: {{name: c4p, namespace: {p}}}\nspec: {{region: nl-01, scope: containerRegistry, namespaces: [app], rotationPeriod: 2h, rotationOverlap: 2h}}"
            ),
            "spec: Invalid value: \"object\": spec.rotationOverlap must be shorter than spec.rotationPeriod",
        ),
        (
            "expiry that is no time",
            format!(
                "{CRED}metadata: {{name: c5, namespace: {p}}}\nspec: {{region: nl-01, scope: containerRegistry, namespaces: [app], expiresAt: tomorrow}}"
            ),
            "spec.expiresAt: Invalid value: \"tomorrow\": spec.expiresAt in body must be of type date-time",
        ),
        (
            "workload identity with a secret",
            format!(
                "{CRED}metadata: {{name: c6, namespace: {p}}}\nspec: {{region: nl-01, scope: containerRegistry, namespaces: [app], secretName: x, workloadIdentity: {{issuer: 'https://issuer.example.com', audience: r}}}}"
            ),
            "a workloadIdentity credential has no secret: remove spec.secretName",
        ),
        (
            "plain-http issuer",
            format!(
                "{CRED}metadata: {{name: c7, namespace: {p}}}\nspec: {{region: nl-01, scope: containerRegistry, namespaces: [app], workloadIdentity: {{issuer: 'http://issuer.example.com', audience: r}}}}"
            ),
            "spec.workloadIdentity.issuer: Invalid value: \"string\": must be an https:// URL (plain http:// only for loopback issuers)",
        ),
        (
            "bad Secret name",
            format!(
                "{CRED}metadata: {{name: c8, namespace: {p}}}\nspec: {{region: nl-01, scope: containerRegistry, namespaces: [app], secretName: 'Not A Name'}}"
            ),
            "spec.secretName: Invalid value: \"string\": must be a Kubernetes object name: lowercase letters, digits, '-' and '.'",
        ),
    ];
    let failures = refusals(&cases);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // Valid objects are accepted, with every default written by the schema, so that a
    // second apply of the same manifest changes nothing.
    let ns = format!("{NS}metadata: {{name: app, namespace: {p}}}\nspec: {{region: nl-01}}");
    cluster.apply(&ns).unwrap();
    let spec = cluster
        .kubectl_ok(["get", "rns", "-n", p, "app", "-o", "jsonpath={.spec}"])
        .unwrap();
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(
        spec,
        serde_json::json!({"region": "nl-01", "visibility": "private", "scope": "project", "immutableTags": []})
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &ns).unwrap();
    let diff = cluster
        .kubectl(["diff", "-f", file.path().to_str().unwrap()])
        .unwrap();
    assert!(
        diff.status.success(),
        "kubectl diff after apply is not empty:\n{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    let again = cluster.apply(&ns).unwrap();
    assert!(again.contains("unchanged"), "{again}");

    // Immutable fields.
    for (patch, message) in [
        (
            r#"{"spec":{"name":"other"}}"#,
            "spec.name cannot be added, removed or changed: create a new RegistryNamespace instead",
        ),
        (
            r#"{"spec":{"region":"de-01"}}"#,
            "spec.region cannot change: create the namespace in the other region instead",
        ),
    ] {
        let out = cluster
            .kubectl([
                "patch", "rns", "-n", p, "app", "--type", "merge", "-p", patch,
            ])
            .unwrap();
        assert!(!out.status.success(), "{patch} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{patch}: {stderr}");
    }
    project.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_or_contradictory_retention_policies_are_refused_with_what_to_fix() {
    let cluster = cluster();
    let project = cluster.test_namespace().await.unwrap();
    let p = project.name();
    let policy = |name: &str, spec: &str| {
        format!("{POLICY}metadata: {{name: {name}, namespace: {p}}}\nspec: {spec}")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no rule",
            policy(
                "p1",
                "{region: nl-01, namespaces: [app], schedule: '@daily', rules: {}}",
            ),
            "deletes nothing: set keepLast, deleteOlderThan, deleteNotPulledWithin or deleteUntaggedOlderThan",
        ),
        (
            "an age rule and no keep rule",
            policy(
                "p2",
                "{region: nl-01, namespaces: [app], schedule: '@daily', rules: {deleteOlderThan: 720h}}",
            ),
            "an age rule without a keep rule can delete every tag: add rules.keepLast",
        ),
        (
            "keep none",
            policy(
                "p3",
                "{region: nl-01, namespaces: [app], schedule: '@daily', rules: {keepLast: [{tags: '*', count: 0}]}}",
            ),
            "spec.rules.keepLast[0].count: Invalid value: \"integer\": must be at least 1: a count of 0 would delete every matching tag",
        ),
        (
            "protect everything while deleting tags",
            policy(
                "p4",
                "{region: nl-01, namespaces: [app], schedule: '@daily', tags: {protect: ['*']}, rules: {keepLast: [{tags: '*', count: 3}]}}",
            ),
            "tags.protect '*' protects every tag, so the tag rules can delete nothing",
        ),
        (
            "pull window shorter than the pull record",
            policy(
                "p5",
                "{region: nl-01, namespaces: [app], schedule: '@daily', tags: {protect: [latest]}, rules: {deleteNotPulledWithin: 30m}}",
            ),
            "spec.rules.deleteNotPulledWithin: Invalid value: \"string\": must be a duration of at least 1h (pull times are recorded to the hour)",
        ),
        (
            "schedule that is no cron",
            policy(
                "p6",
                "{region: nl-01, namespaces: [app], schedule: 'every night', rules: {keepLast: [{tags: '*', count: 3}]}}",
            ),
            "spec.schedule: Invalid value: \"string\": must be a cron schedule of five fields",
        ),
        (
            "bad repository pattern",
            policy(
                "p7",
                "{region: nl-01, namespaces: [app], repositories: ['CI/*'], schedule: '@daily', rules: {keepLast: [{tags: '*', count: 3}]}}",
            ),
            "each pattern is 1-255 repository name characters",
        ),
        (
            "no namespace",
            policy(
                "p8",
                "{region: nl-01, namespaces: [], schedule: '@daily', rules: {keepLast: [{tags: '*', count: 3}]}}",
            ),
            "spec.namespaces in body should have at least 1 items",
        ),
        (
            "no schedule",
            policy(
                "p9",
                "{region: nl-01, namespaces: [app], rules: {keepLast: [{tags: '*', count: 3}]}}",
            ),
            "spec.schedule: Required value",
        ),
    ];
    let failures = refusals(&cases);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // A sound policy is accepted as written; its region cannot change.
    let sound = policy(
        "nightly",
        "{region: nl-01, namespaces: [app], repositories: ['ci/*'], schedule: '0 3 * * *', dryRun: true, tags: {protect: ['v*']}, rules: {keepLast: [{tags: '*', count: 10}], deleteOlderThan: 720h, deleteUntaggedOlderThan: 24h}}",
    );
    cluster.apply(&sound).unwrap();
    let out = cluster
        .kubectl([
            "patch",
            "retentionpolicy",
            "-n",
            p,
            "nightly",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"region":"de-01"}}"#,
        ])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("spec.region cannot change: create a policy in the other region instead")
    );
    project.cleanup().await.unwrap();
}
