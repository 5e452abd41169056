//! The GitOps example (`examples/gitops`) applied the way a GitOps tool applies it, and the
//! health rules its README documents.
//!
//! The test applies the real example directory with `kubectl apply -k`, through an overlay in a
//! temporary directory that only replaces `spec.region` with the test region's name (the one
//! change a per-region overlay makes). It checks:
//! - every object becomes Ready, and kstatus (the library Flux uses, `tests/harness/build/
//!   kstatus.sh`) and the Argo CD health check (`argocd/health.lua`, run as Argo CD runs it)
//!   say Current and Healthy; before the operator has seen an object, the health check says
//!   Progressing while kstatus, which cannot tell such an object from a finished one, says
//!   Current;
//! - the operator writes no field of `spec`: in `managedFields` only `kubectl apply` owns
//!   `spec`, a second `kubectl apply -k` reports every object `unchanged`, and a server-side
//!   apply (`--dry-run=server`) returns the live objects unchanged;
//! - a changed spec that the operator has not observed yet (the operator stopped) is InProgress
//!   and Progressing, and Current again once it has;
//! - a registry namespace claimed a second time (a Conflict) is Failed and Degraded;
//! - the Argo CD ConfigMap snippet holds `health.lua` unchanged for both kinds, and the Helm
//!   values of the region render with the chart into operator settings of the objects' region
//!   whose organisation has the registry.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crds::v1alpha1::{RegistryCredential, RegistryNamespace};
use kube::Api;
use serde::Deserialize as _;

use common::{Region, cluster, ready};

const CONVERGE: Duration = Duration::from_secs(60);

/// The objects of the example, as kstatus names them (`<kind>/<namespace>/<name>`).
const OBJECTS: [&str; 8] = [
    "Namespace//team-platform",
    "Namespace//team-web",
    "RegistryNamespace/team-platform/acme-platform",
    "RegistryNamespace/team-web/acme-web",
    "RegistryCredential/team-platform/build",
    "RegistryCredential/team-platform/deploy",
    "RegistryCredential/team-web/build",
    "RegistryCredential/team-web/deploy",
];

/// The Kubernetes namespaces of the example (the projects).
const PROJECTS: [&str; 2] = ["team-platform", "team-web"];

/// A Kubernetes version the chart is rendered for (the harness's).
const KUBE_VERSION: &str = "1.34.12";

fn example() -> PathBuf {
    testkit::tools::repo_root().join("examples/gitops")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// A kustomization in a temporary directory whose only resource is the example directory and
/// that sets `spec.region` of the registry objects to `region`, plus `extra` patches (YAML list
/// items). Kustomize takes resource directories only by relative path.
fn overlay(region: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path().canonicalize().unwrap();
    let up = "../".repeat(here.components().count() - 1);
    let base = example().canonicalize().unwrap();
    let relative = format!("{up}{}", path_str(&base).trim_start_matches('/'));
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - {relative}\npatches:\n\
             \x20 - target: {{group: registry.thalassa.cloud}}\n\
             \x20   patch: |\n\
             \x20     - op: replace\n\
             \x20       path: /spec/region\n\
             \x20       value: {region}\n{extra}"
        ),
    )
    .unwrap();
    dir
}

/// `kubectl ARGS`, whose stdout is returned; panics with stderr when it fails.
fn kubectl(args: &[&str]) -> String {
    cluster()
        .kubectl_ok(args)
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

/// The live objects of a kustomization, as YAML.
fn live(dir: &Path) -> String {
    kubectl(&["get", "-k", path_str(dir), "-o", "yaml"])
}

/// Runs the kstatus command on `objects`, with the Argo CD health check instead of kstatus
/// when `argocd` is set: object → (status, message).
fn health(objects: &str, argocd: bool) -> BTreeMap<String, (String, String)> {
    let mut cmd = Command::new(testkit::tools::bin("kstatus"));
    if argocd {
        cmd.arg("-argocd-health")
            .arg(example().join("argocd/health.lua"));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(objects.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "kstatus: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let (object, rest) = line.split_once(' ').unwrap();
            let (status, message) = rest.split_once(' ').unwrap_or((rest, ""));
            (object.to_owned(), (status.to_owned(), message.to_owned()))
        })
        .collect()
}

/// Prints what kstatus and the Argo CD check say of `objects` (shown with `--nocapture`).
fn show(stage: &str, objects: &str) {
    println!("-- {stage}");
    for (argocd, tool) in [(false, "kstatus"), (true, "argocd")] {
        for (object, (status, message)) in health(objects, argocd) {
            if !argocd || object.starts_with("Registry") {
                println!("{tool:8} {object} {status} {message}");
            }
        }
    }
}

/// Only the statuses.
fn statuses(objects: &str, argocd: bool) -> BTreeMap<String, String> {
    health(objects, argocd)
        .into_iter()
        .map(|(object, (status, _))| (object, status))
        .collect()
}

/// Every example object with `status`.
fn all(status: &str) -> BTreeMap<String, String> {
    OBJECTS
        .iter()
        .map(|o| (o.to_string(), status.to_owned()))
        .collect()
}

/// The Argo CD health of the registry objects (the check is configured for their kinds only).
fn argocd_statuses(objects: &str) -> BTreeMap<String, String> {
    statuses(objects, true)
        .into_iter()
        .filter(|(object, _)| object.starts_with("Registry"))
        .collect()
}

/// Waits until kstatus says Current for every object of `dir` and the Argo CD check Healthy
/// for every registry object.
async fn wait_current(dir: &Path) {
    let deadline = Instant::now() + CONVERGE;
    let healthy: BTreeMap<String, String> = OBJECTS
        .iter()
        .filter(|o| o.starts_with("Registry"))
        .map(|o| (o.to_string(), "Healthy".to_owned()))
        .collect();
    loop {
        let objects = live(dir);
        let (kstatus, argocd) = (statuses(&objects, false), argocd_statuses(&objects));
        if kstatus == all("Current") && argocd == healthy {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not Current within {CONVERGE:?}: kstatus {kstatus:?}, Argo CD {argocd:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Objects printed by kubectl as JSON (one object, a List, or several), sorted, without
/// `managedFields` and kubectl's last-applied-configuration annotation.
fn comparable(json: &str) -> Vec<serde_json::Value> {
    let mut objects = Vec::new();
    for value in serde_json::Deserializer::from_str(json).into_iter::<serde_json::Value>() {
        let value = value.unwrap();
        match value["items"].as_array() {
            Some(items) if value["kind"] == "List" => objects.extend(items.iter().cloned()),
            _ => objects.push(value),
        }
    }
    for object in &mut objects {
        let metadata = object["metadata"].as_object_mut().unwrap();
        metadata.remove("managedFields");
        if let Some(annotations) = metadata
            .get_mut("annotations")
            .and_then(|a| a.as_object_mut())
        {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
            if annotations.is_empty() {
                metadata.remove("annotations");
            }
        }
    }
    let key = |o: &serde_json::Value| {
        let m = &o["metadata"];
        format!("{}/{}/{}", o["kind"], m["namespace"], m["name"])
    };
    objects.sort_by_key(key);
    objects
}

/// Lines of `kubectl apply` output, each checked to end with `verb`.
fn assert_every_line(output: &str, verb: &str) {
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), OBJECTS.len(), "{output}");
    for line in &lines {
        assert!(line.ends_with(&format!(" {verb}")), "{output}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gitops_example_converges_reapplies_unchanged_and_reports_health() {
    let mut region = Region::operator_only(&["acme"]).await;
    let base = overlay(&region.name, "");
    let dir = base.path();

    // Applied before the region's operator runs.
    let mut operator = region.operator.take().expect("the region's operator");
    operator.child.stop();
    drop(operator);
    let applied = kubectl(&["apply", "-k", path_str(dir)]);
    println!("-- kubectl apply -k, before the operator runs\n{applied}");
    assert_every_line(&applied, "created");
    let objects = live(dir);
    show("before the operator runs", &objects);
    assert_eq!(statuses(&objects, false), all("Current"), "{objects}");
    let argocd = health(&objects, true);
    for object in OBJECTS.iter().filter(|o| o.starts_with("Registry")) {
        assert_eq!(
            argocd[*object],
            (
                "Progressing".to_owned(),
                "Waiting for the region's operator".to_owned()
            ),
            "{object}"
        );
    }

    // The operator converges them: Ready, Current, Healthy.
    region.operator = Some(region.spawn_operator("operator"));
    wait_current(dir).await;
    let client = cluster().client().await.unwrap();
    for project in PROJECTS {
        let namespaces = Api::<RegistryNamespace>::namespaced(client.clone(), project);
        for ns in namespaces.list(&Default::default()).await.unwrap() {
            let status = ns.status.as_ref().expect("a status");
            assert_eq!(
                ready(&ns, &status.conditions),
                Some(("True".into(), "Ready".into()))
            );
        }
        let credentials = Api::<RegistryCredential>::namespaced(client.clone(), project);
        for cred in credentials.list(&Default::default()).await.unwrap() {
            let status = cred.status.as_ref().expect("a status");
            assert_eq!(
                ready(&cred, &status.conditions),
                Some(("True".into(), "Ready".into()))
            );
        }
    }
    let objects = live(dir);
    show("converged", &objects);
    let argocd = health(&objects, true);
    assert_eq!(
        argocd["RegistryNamespace/team-platform/acme-platform"],
        (
            "Healthy".to_owned(),
            format!("Ready: served by region {:?}", region.name)
        )
    );

    // No field the operator writes is in spec.
    let listed: serde_json::Value = serde_json::from_str(&kubectl(&[
        "get",
        "-k",
        path_str(dir),
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    let mut operator_entries = 0;
    for item in listed["items"].as_array().unwrap() {
        for entry in item["metadata"]["managedFields"].as_array().unwrap() {
            let manager = entry["manager"].as_str().unwrap();
            let fields = &entry["fieldsV1"];
            if manager == operator::FIELD_MANAGER {
                operator_entries += 1;
            }
            assert!(
                fields.get("f:spec").is_none() || manager == "kubectl-client-side-apply",
                "{manager} owns fields of spec: {item:#}"
            );
        }
    }
    assert!(operator_entries >= 6, "{listed:#}");

    // A second apply changes nothing, and neither would a server-side apply.
    let reapplied = kubectl(&["apply", "-k", path_str(dir)]);
    println!("-- kubectl apply -k, again\n{reapplied}");
    assert_every_line(&reapplied, "unchanged");
    // The server-side dry run returns the live objects unchanged. (kubectl rewrites its record
    // of the last client-side apply, the last-applied-configuration annotation, in another
    // form on a server-side apply, so `kubectl diff --server-side` shows that annotation and
    // nothing else; it is kubectl's bookkeeping, not a field of the object.)
    let dry_run = kubectl(&[
        "apply",
        "-k",
        path_str(dir),
        "--server-side",
        "--dry-run=server",
        "-o",
        "json",
        "--show-managed-fields=false",
    ]);
    let live_now = kubectl(&["get", "-k", path_str(dir), "-o", "json"]);
    let (dry_run, live_now) = (comparable(&dry_run), comparable(&live_now));
    assert_eq!(dry_run.len(), OBJECTS.len());
    assert_eq!(dry_run, live_now);

    // A change the operator has not observed yet: InProgress, then Current once it has.
    let changed = overlay(
        &region.name,
        "  - target: {kind: RegistryNamespace, name: acme-web}\n\
         \x20   patch: |\n\
         \x20     - op: add\n\
         \x20       path: /spec/description\n\
         \x20       value: Images of the web team.\n",
    );
    let mut operator = region.operator.take().expect("the region's operator");
    operator.child.stop();
    drop(operator);
    let applied = kubectl(&["apply", "-k", path_str(changed.path())]);
    assert!(
        applied.contains("registrynamespace.registry.thalassa.cloud/acme-web configured"),
        "{applied}"
    );
    println!("-- kubectl apply -k, a changed description, the operator stopped\n{applied}");
    let objects = live(changed.path());
    show("a change not observed yet", &objects);
    let kstatus = health(&objects, false);
    let argocd = health(&objects, true);
    let web = "RegistryNamespace/team-web/acme-web";
    assert_eq!(
        kstatus[web],
        (
            "InProgress".to_owned(),
            "RegistryNamespace generation is 2, but latest observed generation is 1".to_owned()
        )
    );
    assert_eq!(
        argocd[web],
        (
            "Progressing".to_owned(),
            "Waiting for the operator to observe generation 2".to_owned()
        )
    );
    let mut rest = all("Current");
    rest.insert(web.to_owned(), "InProgress".to_owned());
    assert_eq!(statuses(&objects, false), rest);
    region.operator = Some(region.spawn_operator("operator"));
    wait_current(changed.path()).await;
    // Back to what Git holds.
    let reverted = kubectl(&["apply", "-k", path_str(dir)]);
    assert!(
        reverted.contains("registrynamespace.registry.thalassa.cloud/acme-web configured"),
        "{reverted}"
    );
    wait_current(dir).await;

    // A Conflict: the platform team's registry namespace claimed again from team-web.
    region
        .apply(&region.namespace_manifest("team-web", "platform-copy", "  name: acme-platform\n"))
        .unwrap();
    let deadline = Instant::now() + CONVERGE;
    let copy = "RegistryNamespace/team-web/platform-copy";
    let (kstatus, argocd) = loop {
        let objects = kubectl(&[
            "get",
            "rns",
            "-n",
            "team-web",
            "platform-copy",
            "-o",
            "yaml",
        ]);
        let kstatus = health(&objects, false);
        if kstatus[copy].0 == "Failed" {
            show("a conflict", &objects);
            break (kstatus, health(&objects, true));
        }
        assert!(Instant::now() < deadline, "not Failed: {kstatus:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(kstatus[copy].1.contains("already claimed"), "{kstatus:?}");
    assert_eq!(argocd[copy].0, "Degraded", "{argocd:?}");
    assert!(
        argocd[copy].1.starts_with("Conflict: ") && argocd[copy].1.contains("already claimed"),
        "{argocd:?}"
    );
    // The first claim is untouched.
    assert_eq!(statuses(&live(dir), false), all("Current"));
    kubectl(&["delete", "rns", "-n", "team-web", "platform-copy"]);

    // Clean up: the namespaces, and with them every object (the operator removes the
    // credentials' finalizers).
    kubectl(&["delete", "-k", path_str(dir), "--timeout=120s"]);
    for project in PROJECTS {
        let left = cluster()
            .kubectl([
                "get",
                "namespace",
                project,
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .unwrap();
        assert!(left.stdout.is_empty(), "{project} is still there");
    }
}

#[test]
fn the_argocd_snippet_holds_the_health_check_for_both_kinds() {
    let lua = std::fs::read_to_string(example().join("argocd/health.lua")).unwrap();
    let text = std::fs::read_to_string(example().join("argocd/argocd-cm.yaml")).unwrap();
    let cm: serde_json::Value = serde_norway::from_str(&text).unwrap();
    for kind in ["RegistryNamespace", "RegistryCredential"] {
        let key = format!("resource.customizations.health.registry.thalassa.cloud_{kind}");
        assert_eq!(cm["data"][&key].as_str(), Some(lua.as_str()), "{key}");
    }
}

#[test]
fn the_region_values_render_for_the_region_of_the_objects() {
    let values = example().join("regions/nl-01/values.yaml");
    let chart = testkit::tools::repo_root().join("charts/registry");
    let rendered = Command::new(testkit::tools::bin("helm"))
        .args(["template", "nl-01", path_str(&chart), "--namespace"])
        .args(["registry-system", "--kube-version", KUBE_VERSION, "-f"])
        .arg(&values)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let rendered = String::from_utf8(rendered.stdout).unwrap();
    let lint = Command::new(testkit::tools::bin("helm"))
        .args(["lint", "--strict", path_str(&chart)])
        .args(["--kube-version", KUBE_VERSION, "-f"])
        .arg(&values)
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );

    // The operator's settings, as the chart renders them and the operator reads them.
    let settings = serde_norway::Deserializer::from_str(&rendered)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap())
        .find(|doc| {
            doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == "nl-01-registry-operator"
        })
        .expect("the operator's ConfigMap");
    let settings = operator::settings::Settings::from_yaml_str(
        settings["data"]["settings.yaml"].as_str().unwrap(),
    )
    .unwrap();

    // The objects of the example, without the test's overlay.
    let objects = Command::new(testkit::cluster::kubectl_bin().unwrap())
        .args(["kustomize", path_str(&example())])
        .output()
        .unwrap();
    assert!(objects.status.success());
    let objects: Vec<serde_json::Value> =
        serde_norway::Deserializer::from_str(std::str::from_utf8(&objects.stdout).unwrap())
            .map(|doc| serde_json::Value::deserialize(doc).unwrap())
            .collect();
    assert_eq!(objects.len(), OBJECTS.len());
    for object in &objects {
        if object["kind"] == "Namespace" {
            let organisation = object["metadata"]["labels"][crds::ORGANISATION_LABEL]
                .as_str()
                .expect("the organisation label");
            assert!(settings.registry_enabled(organisation), "{organisation}");
        } else {
            assert_eq!(
                object["spec"]["region"].as_str(),
                Some(settings.region.as_str()),
                "{object:#}"
            );
        }
    }
}
