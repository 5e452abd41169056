//! The Helm chart in `charts/registry` installs as shipped:
//!
//! - `helm lint --strict` is clean with every example values file in `charts/registry/ci/`;
//! - each of them renders, and the settings files it renders are accepted by the operator's
//!   and the data plane's own parsers, wired to each other (same configuration Secret);
//! - a real API server accepts every rendered object (`kubectl apply --dry-run=server`, no
//!   `Warning:`), once the chart's CRDs (and a ServiceMonitor CRD) are installed;
//! - the RBAC the chart grants allows the operator's and the data plane's API calls and
//!   refuses the neighbouring ones (SubjectAccessReviews as their ServiceAccounts);
//! - every values file in `tests/e2e/bad-values/` is refused by `helm template`, with the
//!   message its `# expected:` line names.
//!
//! The cluster steps share one harness cluster per test binary; each uses a Kubernetes
//! namespace of its own, deleted afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize as _;
use serde_yaml::Value;
use testkit::cluster::Cluster;
use testkit::process::{Output, run_unchecked};
use testkit::tools::{bin, repo_root};

/// The example values files every test renders (Helm's `ci/` convention).
const CI_VALUES: [&str; 3] = ["default-values.yaml", "s3-values.yaml", "full-values.yaml"];
/// The release name used for rendering.
const RELEASE: &str = "reg";
/// Longest a single helm or kubectl command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// A stand-in for the Prometheus Operator's ServiceMonitor CRD (group, kind and version
/// only), so that the ServiceMonitors of the full values can be dry-run.
const SERVICE_MONITOR_CRD: &str = "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

fn chart_dir() -> PathBuf {
    repo_root().join("charts/registry")
}

fn ci_values(file: &str) -> PathBuf {
    chart_dir().join("ci").join(file)
}

/// The Kubernetes version of the harness cluster (`KUBERNETES_VERSION` in
/// `tests/harness/versions.env`): `helm template` checks the chart's `kubeVersion` against
/// it instead of Helm's built-in default.
fn kube_version() -> String {
    let path = repo_root().join("tests/harness/versions.env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .find_map(|line| line.strip_prefix("KUBERNETES_VERSION="))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("{} has no KUBERNETES_VERSION", path.display()))
}

/// Runs the harness's `helm` and returns its output, whatever its exit status.
fn helm(args: &[&str]) -> Output {
    let mut command = Command::new(bin("helm"));
    command.args(args);
    run_unchecked(&mut command, COMMAND_LIMIT).expect("helm runs")
}

/// `helm template` of the chart into `namespace` with one values file.
fn template(values: &Path, namespace: &str) -> Output {
    let chart = chart_dir();
    let version = kube_version();
    helm(&[
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--kube-version",
        &version,
        "--values",
        values.to_str().unwrap(),
    ])
}

/// The rendered manifests of a values file that must render.
fn render(values: &Path, namespace: &str) -> String {
    let out = template(values, namespace);
    assert!(
        out.status.success(),
        "helm template with {} failed ({}):\n{}",
        values.display(),
        out.status,
        out.stderr
    );
    out.stdout
}

/// The YAML documents of a rendered stream (empty documents left out).
fn documents(rendered: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(rendered)
        .map(|document| Value::deserialize(document).expect("helm renders valid YAML"))
        .filter(|document| !document.is_null())
        .collect()
}

/// The string at `path` (keys from the root), or `""` when there is none.
fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(value, |v, key| v.get(*key))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The one object of `kind` of the component (`app.kubernetes.io/component` label).
fn object<'a>(documents: &'a [Value], kind: &str, component: &str) -> &'a Value {
    let found: Vec<&Value> = documents
        .iter()
        .filter(|d| text(d, &["kind"]) == kind)
        .filter(|d| text(d, &["metadata", "labels", "app.kubernetes.io/component"]) == component)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} of the {component}, found {}",
        found.len()
    );
    found[0]
}

/// The values a values file sets, for comparing with what was rendered.
fn values_of(file: &str) -> Value {
    let path = ci_values(file);
    serde_yaml::from_str(&std::fs::read_to_string(&path).expect("values file readable"))
        .expect("values file is YAML")
}

#[test]
fn lint_is_clean_with_every_ci_values_file() {
    let chart = chart_dir();
    for file in CI_VALUES {
        let values = ci_values(file);
        let out = helm(&[
            "lint",
            "--strict",
            chart.to_str().unwrap(),
            "--values",
            values.to_str().unwrap(),
        ]);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(
            out.status.success(),
            "helm lint --strict with {file} failed ({}):\n{all}",
            out.status
        );
        assert!(
            !all.contains("[WARNING]") && !all.contains("[ERROR]"),
            "helm lint --strict with {file} reported problems:\n{all}"
        );
        assert!(
            out.stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint --strict with {file} did not lint the chart:\n{all}"
        );
    }
}

#[test]
fn ci_directory_holds_the_example_values() {
    let mut found: Vec<String> = std::fs::read_dir(chart_dir().join("ci"))
        .expect("charts/registry/ci exists")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut expected: Vec<String> = CI_VALUES.iter().map(|f| f.to_string()).collect();
    expected.sort();
    assert_eq!(
        found, expected,
        "every ci/ values file is linted and dry-run here: add new ones to CI_VALUES"
    );
}

#[test]
fn rendered_settings_are_accepted_by_operator_and_data_plane() {
    let namespace = "registry-system";
    for file in CI_VALUES {
        let values = values_of(file);
        let docs = documents(&render(&ci_values(file), namespace));

        let operator_map = object(&docs, "ConfigMap", "operator");
        let settings = operator::settings::Settings::from_yaml_str(text(
            operator_map,
            &["data", "settings.yaml"],
        ))
        .unwrap_or_else(|e| panic!("{file}: the operator refuses its settings: {e}"));
        assert_eq!(settings.region, text(&values, &["region"]), "{file}");
        assert_eq!(
            settings.registry_host,
            text(&values, &["registryHost"]),
            "{file}"
        );
        assert_eq!(settings.namespace, namespace, "{file}");

        let dataplane_map = object(&docs, "ConfigMap", "dataplane");
        let document = text(dataplane_map, &["data", "settings.yaml"]);
        let config = crds::config::Config::from_yaml_str(document)
            .unwrap_or_else(|e| panic!("{file}: the data plane refuses its settings: {e}"));
        assert_eq!(
            config.spec,
            crds::config::RegionSpec::default(),
            "{file}: with --config-secret the settings file may hold process settings only:\n{document}"
        );
        let s3 = text(&values, &["storage", "type"]) == "s3";
        assert_eq!(config.settings.storage.s3.is_some(), s3, "{file}");
        assert_eq!(config.settings.storage.filesystem.is_some(), !s3, "{file}");

        // The data plane follows the Secret the operator writes.
        let deployment = object(&docs, "Deployment", "dataplane");
        let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .expect("the data plane has args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let followed = args
            .windows(2)
            .find(|pair| pair[0] == "--config-secret")
            .map(|pair| pair[1]);
        assert_eq!(
            followed,
            Some(format!("{namespace}/{}", settings.config_secret).as_str()),
            "{file}: data plane args {args:?}"
        );
    }
}

#[test]
fn bad_values_are_refused_with_their_message() {
    let dir = repo_root().join("tests/e2e/bad-values");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/e2e/bad-values exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "expected at least five bad values files in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for path in &files {
        let content = std::fs::read_to_string(path).expect("readable");
        let expected = content
            .lines()
            .find_map(|line| line.strip_prefix("# expected: "))
            .unwrap_or_else(|| panic!("{} has no `# expected: ` line", path.display()));
        let out = template(path, "registry-system");
        let name = path.file_name().unwrap().to_string_lossy();
        if out.status.success() {
            failures.push(format!("{name}: rendered, should have been refused"));
        } else if !out.stderr.contains(expected) {
            failures.push(format!(
                "{name}: refused, but stderr lacks {expected:?}:\n{}",
                out.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The cluster of this test binary with the chart's CRDs and a ServiceMonitor CRD
/// installed, started on first use; the harness watchdog stops it when the process exits.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::start("chart").expect("a harness cluster");
        let crds = chart_dir().join("crds");
        cluster
            .kubectl_ok(["apply", "--server-side", "-f", crds.to_str().unwrap()])
            .expect("the chart's CRDs apply");
        cluster
            .apply(SERVICE_MONITOR_CRD)
            .expect("the ServiceMonitor CRD applies");
        for crd in [
            "registrynamespaces.registry.thalassa.cloud",
            "registrycredentials.registry.thalassa.cloud",
            "servicemonitors.monitoring.coreos.com",
        ] {
            cluster
                .wait_crd_established(crd, Duration::from_secs(30))
                .expect("the CRDs are established");
        }
        cluster
    })
}

/// Runs `kubectl` against `cluster` and returns its output, whatever its exit status.
fn kubectl(cluster: &Cluster, args: &[&str]) -> Output {
    let mut command = cluster.kubectl_command(args).expect("kubectl is installed");
    run_unchecked(&mut command, COMMAND_LIMIT).expect("kubectl runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rendered_object_passes_a_server_side_dry_run() {
    let cluster = cluster();
    let namespace = cluster.test_namespace().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for file in CI_VALUES {
        let rendered = render(&ci_values(file), namespace.name());
        let objects = documents(&rendered).len();
        let manifest = dir.path().join(file);
        std::fs::write(&manifest, &rendered).unwrap();
        let out = kubectl(
            cluster,
            &[
                "apply",
                "--dry-run=server",
                "-f",
                manifest.to_str().unwrap(),
            ],
        );
        let accepted = out
            .stdout
            .lines()
            .filter(|line| line.ends_with("(server dry run)"))
            .count();
        if !out.status.success() {
            failures.push(format!("{file}: refused ({}):\n{}", out.status, out.stderr));
        } else if out.stderr.contains("Warning:") {
            failures.push(format!("{file}: accepted with warnings:\n{}", out.stderr));
        } else if accepted != objects {
            failures.push(format!(
                "{file}: {objects} objects rendered, {accepted} accepted:\n{}",
                out.stdout
            ));
        }
    }
    namespace.cleanup().await.unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Deletes the cluster-scoped objects of a release on drop (the namespace takes the rest).
struct ClusterScoped<'a> {
    cluster: &'a Cluster,
    objects: Vec<String>,
}

impl Drop for ClusterScoped<'_> {
    fn drop(&mut self) {
        if self.objects.is_empty() {
            return;
        }
        let mut args = vec!["delete", "--ignore-not-found", "--wait=false"];
        args.extend(self.objects.iter().map(String::as_str));
        let out = kubectl(self.cluster, &args);
        if !out.status.success() {
            eprintln!("warning: deleting {:?}: {}", self.objects, out.stderr);
        }
    }
}

/// One SubjectAccessReview: may `subject` do `verb` on `resource` (`-n NS`, or
/// `--all-namespaces` when `namespace` is `None`)?
fn can(
    cluster: &Cluster,
    subject: &str,
    verb: &str,
    resource: &str,
    subresource: Option<&str>,
    namespace: Option<&str>,
) -> bool {
    let subject = format!("--as={subject}");
    let mut args = vec!["auth", "can-i", verb, resource, subject.as_str()];
    if let Some(subresource) = subresource {
        args.extend(["--subresource", subresource]);
    }
    match namespace {
        Some(namespace) => args.extend(["--namespace", namespace]),
        None => args.push("--all-namespaces"),
    }
    let out = kubectl(cluster, &args);
    match (out.status.code(), out.stdout.trim()) {
        (Some(0), "yes") => true,
        (Some(1), "no") => false,
        _ => panic!(
            "kubectl {} gave no answer ({}):\n{}{}",
            args.join(" "),
            out.status,
            out.stdout,
            out.stderr
        ),
    }
}

/// One expected SubjectAccessReview answer: subject, verb, resource, subresource,
/// namespace (`None`: all namespaces), and whether it is allowed.
type AccessCheck<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    bool,
);

#[tokio::test(flavor = "multi_thread")]
async fn rbac_allows_each_components_calls_and_refuses_neighbours() {
    let cluster = cluster();
    let namespace = cluster.test_namespace().await.unwrap();
    let ns = namespace.name().to_owned();
    let rendered = render(&ci_values("default-values.yaml"), &ns);
    let docs = documents(&rendered);
    let cluster_scoped = ClusterScoped {
        cluster,
        objects: docs
            .iter()
            .filter(|d| matches!(text(d, &["kind"]), "ClusterRole" | "ClusterRoleBinding"))
            .map(|d| format!("{}/{}", text(d, &["kind"]), text(d, &["metadata", "name"])))
            .collect(),
    };
    assert_eq!(
        cluster_scoped.objects.len(),
        2,
        "{:?}",
        cluster_scoped.objects
    );
    cluster
        .apply(&rendered)
        .expect("the default rendering applies");

    let account = |component: &str| {
        let sa = object(&docs, "ServiceAccount", component);
        format!(
            "system:serviceaccount:{ns}:{}",
            text(sa, &["metadata", "name"])
        )
    };
    let operator = account("operator");
    let dataplane = account("dataplane");
    let own = Some(ns.as_str());
    let tenant = Some("tenant-a");
    let all = None;
    const NS: &str = "registrynamespaces.registry.thalassa.cloud";
    const CRED: &str = "registrycredentials.registry.thalassa.cloud";
    const LEASE: &str = "leases.coordination.k8s.io";
    const EVENTS: &str = "events.events.k8s.io";
    let our_lease = format!("{LEASE}/registry-operator");
    let other_lease = format!("{LEASE}/another-lease");
    #[rustfmt::skip]
    let checks: Vec<AccessCheck> = vec![
        // The operator: caches of the region's objects, projects and delivered Secrets.
        (&operator, "list", NS, None, all, true),
        (&operator, "watch", NS, None, all, true),
        (&operator, "list", CRED, None, all, true),
        (&operator, "watch", CRED, None, all, true),
        (&operator, "patch", CRED, None, tenant, true),
        (&operator, "patch", NS, Some("status"), tenant, true),
        (&operator, "patch", CRED, Some("status"), tenant, true),
        (&operator, "list", "namespaces", None, all, true),
        (&operator, "watch", "namespaces", None, all, true),
        (&operator, "list", "secrets", None, all, true),
        (&operator, "watch", "secrets", None, all, true),
        (&operator, "get", "secrets", None, tenant, true),
        (&operator, "create", "secrets", None, tenant, true),
        (&operator, "patch", "secrets", None, tenant, true),
        (&operator, "delete", "secrets", None, tenant, true),
        (&operator, "update", "secrets", None, own, true),
        (&operator, "create", EVENTS, None, tenant, true),
        (&operator, "patch", EVENTS, None, tenant, true),
        (&operator, "create", LEASE, None, own, true),
        (&operator, "get", &our_lease, None, own, true),
        (&operator, "patch", &our_lease, None, own, true),
        (&operator, "list", "serviceaccounts", None, all, true),
        (&operator, "watch", "serviceaccounts", None, all, true),
        (&operator, "get", "serviceaccounts", None, tenant, true),
        (&operator, "update", "serviceaccounts", None, tenant, true),
        // ... and nothing next to it.
        (&operator, "update", "secrets", None, tenant, false),
        (&operator, "patch", "serviceaccounts", None, tenant, false),
        (&operator, "delete", "serviceaccounts", None, tenant, false),
        (&operator, "create", "serviceaccounts", None, tenant, false),
        (&operator, "deletecollection", "secrets", None, tenant, false),
        (&operator, "get", &other_lease, None, own, false),
        (&operator, "patch", &our_lease, None, tenant, false),
        (&operator, "delete", &our_lease, None, own, false),
        (&operator, "create", CRED, None, tenant, false),
        (&operator, "delete", CRED, None, tenant, false),
        (&operator, "update", CRED, None, tenant, false),
        (&operator, "patch", NS, None, tenant, false),
        (&operator, "update", CRED, Some("status"), tenant, false),
        (&operator, "create", "namespaces", None, all, false),
        (&operator, "patch", "namespaces", None, all, false),
        (&operator, "create", "events", None, tenant, false),
        (&operator, "get", "configmaps", None, own, false),
        (&operator, "create", "pods", None, own, false),
        (&operator, "create", "clusterroles.rbac.authorization.k8s.io", None, all, false),
        // The data plane: one watch on the Secrets of the release namespace, read only.
        (&dataplane, "list", "secrets", None, own, true),
        (&dataplane, "watch", "secrets", None, own, true),
        (&dataplane, "get", "secrets", None, own, false),
        (&dataplane, "list", "secrets", None, tenant, false),
        (&dataplane, "list", "secrets", None, all, false),
        (&dataplane, "create", "secrets", None, own, false),
        (&dataplane, "update", "secrets", None, own, false),
        (&dataplane, "patch", "secrets", None, own, false),
        (&dataplane, "delete", "secrets", None, own, false),
        (&dataplane, "list", "configmaps", None, own, false),
        (&dataplane, "list", CRED, None, all, false),
    ];
    let mut failures = Vec::new();
    for (subject, verb, resource, subresource, namespace, expected) in &checks {
        let allowed = can(cluster, subject, verb, resource, *subresource, *namespace);
        if allowed != *expected {
            failures.push(format!(
                "{subject} {verb} {resource}{} in {}: {} (expected {})",
                subresource.map(|s| format!("/{s}")).unwrap_or_default(),
                namespace.unwrap_or("all namespaces"),
                if allowed { "allowed" } else { "refused" },
                if *expected { "allowed" } else { "refused" },
            ));
        }
    }
    drop(cluster_scoped);
    namespace.cleanup().await.unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
