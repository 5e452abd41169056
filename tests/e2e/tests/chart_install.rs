//! A region installed with `helm install` on a harness cluster with a real node (kubelet,
//! containerd, runc), from the images `images/build` makes, served by the registry itself:
//!
//! 1. **Bootstrap.** A standalone data plane on the host's loopback receives the operator and
//!    data-plane images (`images/build --push`); the node's containerd pulls them from there.
//! 2. **Filesystem region.** `helm install` with storage on a PersistentVolume: the operator
//!    and data-plane pods run those images (their `imageID`s are the pushed digests) and
//!    become Ready. A `RegistryNamespace` and two `RegistryCredential`s applied with kubectl
//!    let skopeo push through the data plane's Service (`kubectl port-forward svc/...`), and
//!    a Pod using the pull-only credential's delivered Secret runs the image it pulled from
//!    the region; without a Secret the node may not pull it. `helm uninstall` keeps the CRDs,
//!    the tenants' objects and the claim with the images, as the chart's README says.
//! 3. **S3 region, scaled.** `helm install` on S3 (MinIO on the node's pod-bridge address)
//!    with one replica, then `helm upgrade` to three replicas with a new data-plane image and
//!    another organisation, while pulls run without pause. There is no kube-proxy on a
//!    harness node, so the pulls go where kube-proxy would send a Service's traffic: to the
//!    endpoints the Service's EndpointSlices list as ready, at that moment. None may fail,
//!    and afterwards every replica serves a pull itself.
//!
//! Needs root, the harness (`tests/harness/install`), the workspace's debug `dataplane` (the
//! bootstrap registry) and the static release binaries that `images/build` packs (`tests/run`
//! builds both first).
//!
//! **Without a node.** When the node cannot start (or `REGISTRY_E2E_WITHOUT_NODE` is set),
//! the test says so, with the node script's reason, at its start and at its end, and runs the
//! release's containers as processes against the same apiserver instead (see
//! `ChartProcesses`): install, configuration, push and pull are checked, and the banner names
//! what is not (the node's pulls, the Pod, the S3 rollout).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use testkit::clients::{Client, Credentials, pull_image, push_image};
use testkit::cluster::{Cluster, pull_pod, push_sandbox_image};
use testkit::process::{self, ChildGuard, Output, Readiness, run_unchecked};
use testkit::s3::S3Server;
use testkit::tools::{bin, cache_dir, repo_root, workspace_bin};

/// The Helm release name (so objects are `registry-operator`, `registry-dataplane`).
const RELEASE: &str = "registry";
/// The organisation whose projects use the registry.
const ORGANISATION: &str = "acme";
/// What the workload image prints when it runs (the harness's sandbox image prints its
/// arguments and exits).
const MESSAGE: &str = "pulled-from-the-region";
/// Longest a helm or kubectl command may take (`helm install --wait` included).
const COMMAND_LIMIT: Duration = Duration::from_secs(360);
/// How long objects get to converge.
const CONVERGE: Duration = Duration::from_secs(120);

/// The registry the images are served from before any region exists: our own data plane,
/// standalone on loopback with filesystem storage and no access control (the embedded
/// default). The node's containerd pulls from loopback over plain HTTP.
struct Bootstrap {
    host: String,
    _server: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Bootstrap {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = format!("127.0.0.1:{}", process::free_port());
        let mut command = Command::new(workspace_bin("dataplane"));
        command
            .args(["serve", "--listen", &host, "--root"])
            .arg(dir.path());
        let mut server = ChildGuard::spawn("bootstrap-registry", command).expect("spawn");
        server
            .wait_ready(
                &Readiness::Http(format!("http://{host}/readyz")),
                process::READY_TIMEOUT,
            )
            .expect("the bootstrap registry is ready");
        Self {
            host,
            _server: server,
            _dir: dir,
        }
    }
}

/// An image pushed by `images/build`: repository and digest, as the chart's values take them.
#[derive(Debug, Clone)]
struct Image {
    repository: String,
    digest: String,
}

impl Image {
    fn values(&self) -> Value {
        json!({ "repository": self.repository, "digest": self.digest })
    }
}

/// Packs the release binaries into images (`images/build --no-build`) and pushes them to
/// `registry/bootstrap`. `epoch` (SOURCE_DATE_EPOCH) changes every timestamp and so the
/// digests: the same binaries as a new image. Returns the images by name (`operator`,
/// `dataplane`).
fn build_images(registry: &str, epoch: Option<u64>, only: &str) -> Vec<(String, Image)> {
    let out = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(repo_root().join("images/build"));
    command
        .args(["--no-build", "--insecure", "--only", only, "--out"])
        .arg(out.path())
        .args(["--push", &format!("{registry}/bootstrap")])
        .env("PATH", path_with_harness());
    if let Some(epoch) = epoch {
        command.env("SOURCE_DATE_EPOCH", epoch.to_string());
    }
    let output = run_unchecked(&mut command, COMMAND_LIMIT).expect("images/build runs");
    assert!(
        output.status.success(),
        "images/build failed (the release binaries come from `images/build`, which \
         tests/run runs first):\n{}\n{}",
        output.stdout,
        output.stderr
    );
    // Lines: `registry-<name> <digest> <layout> <reference>`.
    output
        .stdout
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [image, digest, _layout, reference] = fields[..] else {
                return None;
            };
            let name = image.strip_prefix("registry-")?;
            let repository = reference.rsplit_once(':')?.0;
            Some((
                name.to_owned(),
                Image {
                    repository: repository.to_owned(),
                    digest: digest.to_owned(),
                },
            ))
        })
        .collect()
}

/// `PATH` with the harness binaries first (crane for `images/build --push`).
fn path_with_harness() -> String {
    let harness = cache_dir().join("bin");
    format!(
        "{}:{}",
        harness.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs the harness's `helm` against `cluster`; returns its output whatever its status.
fn helm(cluster: &Cluster, args: &[&str]) -> Output {
    let mut command = Command::new(bin("helm"));
    command
        .args(args)
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .env("HELM_CACHE_HOME", cluster.state_dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", cluster.state_dir().join("helm/config"))
        .env("HELM_DATA_HOME", cluster.state_dir().join("helm/data"));
    run_unchecked(&mut command, COMMAND_LIMIT).expect("helm runs")
}

/// `helm install` or `helm upgrade` (`verb`) of the chart with `values`, waiting until
/// every Deployment is rolled out; panics with the output and the pods' state otherwise.
fn helm_apply(cluster: &Cluster, verb: &str, namespace: &str, values: &Value) -> String {
    helm_apply_with(cluster, verb, namespace, values, true)
}

/// [`helm_apply`], waiting for the rollout only when `wait` (without a node no pod runs).
fn helm_apply_with(
    cluster: &Cluster,
    verb: &str,
    namespace: &str,
    values: &Value,
    wait: bool,
) -> String {
    let file = tempfile::NamedTempFile::new().expect("values file");
    std::fs::write(file.path(), values.to_string()).expect("write values");
    let chart = repo_root().join("charts/registry");
    let mut args = vec![
        verb,
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--values",
        file.path().to_str().unwrap(),
    ];
    if wait {
        args.extend(["--wait", "--timeout", "5m"]);
    }
    let output = helm(cluster, &args);
    assert!(
        output.status.success(),
        "helm {verb} failed:\n{}\n{}\n{}",
        output.stdout,
        output.stderr,
        cluster.describe_pods(namespace)
    );
    output.stdout
}

/// The values every install shares: region, host, organisations, images.
fn base_values(region: &str, host: &str, operator: &Image, dataplane: &Image) -> Value {
    json!({
        "region": region,
        "registryHost": host,
        "organisations": { ORGANISATION: { "containerRegistry": true } },
        "image": { "operator": operator.values(), "dataplane": dataplane.values() },
        // Small requests: several replicas and a surge pod share the node's two cores.
        "operator": { "resources": { "requests": { "cpu": "50m", "memory": "64Mi" } } },
        "dataplane": { "resources": { "requests": { "cpu": "50m", "memory": "64Mi" } } },
    })
}

/// Creates the release namespace and returns the data plane's port on loopback, the registry
/// host, and the values of a release with `storage`.
fn release(
    cluster: &Cluster,
    namespace: &str,
    region: &str,
    (operator, dataplane): (&Image, &Image),
    storage: Value,
) -> (u16, String, Value) {
    cluster
        .kubectl_ok(["create", "namespace", namespace])
        .expect("release namespace");
    let port = process::free_port();
    let host = format!("127.0.0.1:{port}");
    let mut values = base_values(region, &host, operator, dataplane);
    merge(&mut values, json!({ "storage": storage }));
    (port, host, values)
}

/// Merges `overlay` into `base` (objects key by key, everything else replaced).
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, overlay) => *base = overlay,
    }
}

/// The pods of one component (`operator`, `dataplane`) of the release.
async fn component_pods(cluster: &Cluster, namespace: &str, component: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(cluster.client().await.unwrap(), namespace);
    let selector =
        format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}");
    pods.list(&ListParams::default().labels(&selector))
        .await
        .expect("list pods")
        .items
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The image digests (`sha256:...`) the pod's containers run, from `status.containerStatuses`.
fn running_digests(pod: &Pod) -> Vec<String> {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.image_id.rsplit_once('@').map(|(_, d)| d.to_owned()))
        .collect()
}

/// Asserts that the component runs `replicas` Ready pods, all from `image`.
async fn assert_runs(cluster: &Cluster, namespace: &str, component: &str, image: &Image, n: usize) {
    let pods: Vec<Pod> = component_pods(cluster, namespace, component)
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(pods.len(), n, "{component} pods: {pods:#?}");
    for pod in &pods {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        assert!(is_ready(pod), "{component} pod {name} is not Ready");
        let digests = running_digests(pod);
        assert!(
            !digests.is_empty() && digests.iter().all(|d| image.digest == *d),
            "{component} pod {name} runs {digests:?}, not the pushed {}",
            image.digest
        );
    }
}

/// A project: a Kubernetes namespace of the organisation, with a registry namespace, a
/// push credential `ci` and a pull-only credential `deploy`; waits until all are Ready.
fn create_project(cluster: &Cluster, project: &str, region: &str, registry_namespace: &str) {
    cluster
        .kubectl_ok(["create", "namespace", project])
        .expect("create project namespace");
    cluster
        .kubectl_ok([
            "label",
            "namespace",
            project,
            &format!("registry.thalassa.cloud/organisation={ORGANISATION}"),
        ])
        .expect("label project namespace");
    cluster
        .apply(&format!(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RegistryNamespace\n\
             metadata: {{name: {registry_namespace}, namespace: {project}}}\n\
             spec: {{region: {region}, visibility: private}}\n---\n\
             apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RegistryCredential\n\
             metadata: {{name: ci, namespace: {project}}}\n\
             spec: {{region: {region}, scope: containerRegistry, namespaces: [{registry_namespace}]}}\n---\n\
             apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RegistryCredential\n\
             metadata: {{name: deploy, namespace: {project}}}\n\
             spec: {{region: {region}, scope: \"containerRegistry:pull\", namespaces: [{registry_namespace}]}}\n"
        ))
        .expect("apply the project's registry objects");
    let wait = cluster
        .kubectl([
            "-n",
            project,
            "wait",
            "--for=condition=Ready",
            &format!("registrynamespace/{registry_namespace}"),
            "registrycredential/ci",
            "registrycredential/deploy",
            "--timeout=120s",
        ])
        .expect("kubectl wait");
    assert!(
        wait.status.success(),
        "the project's objects did not become Ready: {}\n{}",
        String::from_utf8_lossy(&wait.stderr),
        cluster
            .kubectl_ok(["-n", project, "get", "rns,rcred", "-o", "yaml"])
            .unwrap_or_default()
    );
}

/// The user name and secret the operator delivered into a credential's Secret.
async fn delivered(cluster: &Cluster, project: &str, secret: &str) -> Credentials {
    let secrets: Api<Secret> = Api::namespaced(cluster.client().await.unwrap(), project);
    let secret = secrets.get(secret).await.expect("the delivered Secret");
    let data = secret.data.unwrap_or_default();
    let field = |key: &str| {
        let value = data
            .get(key)
            .unwrap_or_else(|| panic!("the Secret has no {key}"));
        String::from_utf8(value.0.clone()).expect("utf-8")
    };
    Credentials::new(field("username"), field("password"))
}

/// `kubectl port-forward` from `127.0.0.1:port` to the release's data-plane Service.
fn port_forward(cluster: &Cluster, namespace: &str, port: u16) -> ChildGuard {
    let mut command = cluster
        .kubectl_command([
            "-n",
            namespace,
            "port-forward",
            "--address",
            "127.0.0.1",
            &format!("svc/{RELEASE}-dataplane"),
            &format!("{port}:5000"),
        ])
        .expect("kubectl");
    command.stdin(std::process::Stdio::null());
    let mut forward = ChildGuard::spawn("port-forward", command).expect("port-forward");
    forward
        .wait_ready(
            &Readiness::Http(format!("http://127.0.0.1:{port}/readyz")),
            process::READY_TIMEOUT,
        )
        .expect("the data plane answers through the port-forward");
    forward
}

/// Copies the harness's sandbox image (it prints its arguments and exits) to `reference`
/// with skopeo, as `credentials` (or anonymously); returns skopeo's output.
fn skopeo_push(reference: &str, credentials: Option<&Credentials>) -> Output {
    push_sandbox_image(
        reference,
        credentials.map(|c| (c.username.as_str(), c.password.as_str())),
    )
    .expect("skopeo runs")
}

/// Waits until the pod finished; returns its phase.
async fn finished(cluster: &Cluster, namespace: &str, name: &str) -> String {
    cluster
        .pod_finished(namespace, name, CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until the pod's container cannot pull its image; returns the kubelet's message.
async fn pull_refused(cluster: &Cluster, namespace: &str, name: &str) -> String {
    cluster
        .pod_pull_refused(namespace, name, CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A hostPath PersistentVolume without a storage class for the filesystem region's claim
/// (the harness cluster has no provisioner), owned by the data plane's user.
fn host_volume(cluster: &Cluster, name: &str, dir: &Path) {
    let chown = Command::new("chown")
        .arg("65532:65532")
        .arg(dir)
        .status()
        .expect("chown");
    assert!(chown.success(), "chown {}", dir.display());
    cluster
        .apply(
            &json!({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": { "name": name },
                "spec": {
                    "capacity": { "storage": "2Gi" },
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": { "path": dir.to_str().unwrap(), "type": "Directory" },
                },
            })
            .to_string(),
        )
        .expect("create the PersistentVolume");
}

/// Pulls that follow the Service's ready endpoints, as kube-proxy routes, until stopped.
struct PullLoad {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<PullReport>,
}

/// What [`PullLoad`] saw: successful pulls by endpoint, and every failure.
#[derive(Debug, Default)]
struct PullReport {
    pulls: usize,
    endpoints: BTreeSet<String>,
    failures: Vec<String>,
}

impl PullLoad {
    fn start(
        client: kube::Client,
        namespace: &str,
        path: String,
        credentials: Credentials,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let namespace = namespace.to_owned();
        let task = tokio::spawn(async move {
            let slices: Api<EndpointSlice> = Api::namespaced(client, &namespace);
            let selector = format!("kubernetes.io/service-name={RELEASE}-dataplane");
            let mut report = PullReport::default();
            let mut turn = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let list = match slices.list(&ListParams::default().labels(&selector)).await {
                    Ok(list) => list,
                    Err(e) => {
                        report.failures.push(format!("listing EndpointSlices: {e}"));
                        continue;
                    }
                };
                let ready: Vec<String> = list
                    .items
                    .iter()
                    .flat_map(|s| s.endpoints.iter())
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .flat_map(|e| e.addresses.iter().cloned())
                    .collect();
                if ready.is_empty() {
                    report.failures.push("no ready endpoint".to_owned());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                turn += 1;
                let endpoint = ready[turn % ready.len()].clone();
                let reference = format!("{endpoint}:5000/{path}");
                let credentials = credentials.clone();
                let pulled = tokio::task::spawn_blocking(move || {
                    pull_image(Client::Crane, &reference, Some(&credentials))
                })
                .await
                .unwrap();
                match pulled {
                    Ok(t) if t.succeeded() => {
                        report.pulls += 1;
                        report.endpoints.insert(endpoint);
                    }
                    Ok(t) => report
                        .failures
                        .push(format!("pull from {endpoint}: {}", t.output.stderr.trim())),
                    Err(e) => report.failures.push(format!("pull from {endpoint}: {e:#}")),
                }
            }
            report
        });
        Self { stop, task }
    }

    async fn finish(self) -> PullReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the pull loop")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_installs_serves_its_pods_and_scales_on_s3() {
    let bootstrap = Bootstrap::start();
    let images = build_images(&bootstrap.host, None, "operator,dataplane");
    let image = |name: &str| {
        images
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| i.clone())
            .unwrap_or_else(|| panic!("images/build pushed no {name} image: {images:?}"))
    };
    let (operator, dataplane) = (image("operator"), image("dataplane"));

    let cluster = Cluster::start("install").expect("a harness cluster");
    let node = match std::env::var_os(WITHOUT_NODE) {
        Some(_) => Err(format!("{WITHOUT_NODE} is set")),
        None => cluster.add_node().map_err(|e| e.to_string()),
    };
    match node {
        Ok(_) => {
            filesystem_region(&cluster, &operator, &dataplane).await;
            s3_region(&cluster, &bootstrap, &operator, &dataplane).await;
        }
        Err(why) => {
            let banner = format!(
                "\n*** chart_install: NO NODE: {why}\n\
                 *** The chart's containers run as processes on this host instead, from the \
                 Deployments the apiserver holds.\n\
                 *** NOT checked without a node: the node pulling the images, a Pod using the \
                 delivered Secret, the S3 rollout.\n"
            );
            eprintln!("{banner}");
            without_node(&cluster, &operator, &dataplane).await;
            eprintln!("{banner}");
        }
    }
}

/// Set (to anything) to take the path a machine without a node takes, on one with a node.
const WITHOUT_NODE: &str = "REGISTRY_E2E_WITHOUT_NODE";

/// Where no node can run: the release is installed (its objects exist in the apiserver, the
/// pods stay Pending), and the containers of its Deployments run as processes (see
/// [`ChartProcesses`]). Checks what does not need a node: the operator renders the
/// configuration, the data plane follows it and becomes ready, a push with the delivered
/// credential is accepted and an anonymous one refused, and the pull-only credential pulls.
async fn without_node(cluster: &Cluster, operator: &Image, dataplane: &Image) {
    let namespace = "registry-proc";
    let (port, host, values) = release(
        cluster,
        namespace,
        "proc-01",
        (operator, dataplane),
        json!({ "type": "filesystem", "filesystem": { "size": "1Gi" } }),
    );
    let region = "proc-01";
    helm_apply_with(cluster, "install", namespace, &values, false);
    let processes = ChartProcesses::start(cluster, namespace, port).await;
    assert_eq!(processes.components(), ["dataplane", "operator"]);

    let project = "team-proc";
    create_project(cluster, project, region, "apps");
    let ci = delivered(cluster, project, "ci").await;
    let deploy = delivered(cluster, project, "deploy").await;
    let reference = format!("{host}/apps/hello:1");
    let anonymous = push_image(Client::Skopeo, &reference, None).expect("skopeo runs");
    assert!(!anonymous.succeeded(), "an anonymous push must be refused");
    let pushed = push_image(Client::Skopeo, &reference, Some(&ci)).expect("skopeo runs");
    let digest = pushed.digest_or_error("push with ci").unwrap();
    let pulled = pull_image(Client::Crane, &reference, Some(&deploy)).expect("crane runs");
    assert_eq!(pulled.digest_or_error("pull with deploy").unwrap(), digest);
    let anonymous = pull_image(Client::Crane, &reference, None).expect("crane runs");
    assert!(!anonymous.succeeded(), "apps is private");
    drop(processes);
    let out = helm(
        cluster,
        &["uninstall", RELEASE, "--namespace", namespace, "--wait"],
    );
    assert!(out.status.success(), "helm uninstall: {}", out.stderr);
}

/// The containers of the release's Deployments, run as processes of this host: the static
/// binary the image holds (`target/<arch>-unknown-linux-gnu/release/<name>`), with the
/// container's arguments and environment. Volumes become directories (ConfigMaps and Secrets
/// written out, emptyDirs and claims empty), and their mount paths are rewritten in the
/// arguments and in the mounted files; `$(VAR)` is expanded as the kubelet does; listeners
/// on `0.0.0.0` move to loopback (the data plane to the port given); and the in-cluster
/// configuration becomes a kubeconfig holding a token of the pod's ServiceAccount, so RBAC
/// applies as in a pod.
struct ChartProcesses {
    running: Vec<(String, ChildGuard)>,
    _dirs: Vec<tempfile::TempDir>,
}

impl ChartProcesses {
    async fn start(cluster: &Cluster, namespace: &str, dataplane_port: u16) -> Self {
        let client = cluster.client().await.unwrap();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let selector = format!("app.kubernetes.io/instance={RELEASE}");
        let mut running = Vec::new();
        let mut dirs = Vec::new();
        let mut list = deployments
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("list Deployments")
            .items;
        // The operator first: the data plane waits for the configuration it writes.
        list.sort_by_key(|d| {
            d.metadata
                .name
                .clone()
                .unwrap_or_default()
                .contains("dataplane")
        });
        for deployment in list {
            let name = deployment.metadata.name.clone().unwrap_or_default();
            let labels = deployment.metadata.labels.clone().unwrap_or_default();
            let component = labels
                .get("app.kubernetes.io/component")
                .cloned()
                .unwrap_or_default();
            let pod = deployment
                .spec
                .and_then(|s| s.template.spec)
                .expect("a pod template");
            let container = pod.containers.first().expect("a container").clone();
            let dir = tempfile::tempdir().expect("tempdir");
            let mut paths: Vec<(String, String)> = Vec::new();
            for mount in container.volume_mounts.iter().flatten() {
                let volume = pod
                    .volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == mount.name)
                    .unwrap_or_else(|| panic!("{name}: no volume {}", mount.name));
                let local = dir.path().join(&mount.name);
                std::fs::create_dir_all(&local).unwrap();
                if let Some(config_map) = &volume.config_map {
                    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                    let map = maps.get(&config_map.name).await.expect("the ConfigMap");
                    for (key, value) in map.data.unwrap_or_default() {
                        std::fs::write(local.join(key), value).unwrap();
                    }
                } else if volume.empty_dir.is_none() && volume.persistent_volume_claim.is_none() {
                    panic!(
                        "{name}: volume {} has a kind this test does not run",
                        mount.name
                    );
                }
                paths.push((mount.mount_path.clone(), local.display().to_string()));
            }
            // Longest mount path first, so nested mounts rewrite before their parents.
            paths.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
            let rewrite = |text: &str| {
                paths.iter().fold(text.to_owned(), |t, (from, to)| {
                    t.replace(from.as_str(), to)
                })
            };
            for (_, local) in &paths {
                for entry in std::fs::read_dir(local).unwrap() {
                    let file = entry.unwrap().path();
                    let text = std::fs::read_to_string(&file).unwrap();
                    std::fs::write(&file, rewrite(&text)).unwrap();
                }
            }

            let mut env = Vec::new();
            for var in container.env.iter().flatten() {
                let value = match (&var.value, &var.value_from) {
                    (Some(value), _) => rewrite(value),
                    (None, Some(from)) => match &from.field_ref {
                        Some(field) if field.field_path == "metadata.name" => {
                            format!("{name}-process")
                        }
                        Some(field) if field.field_path == "metadata.namespace" => {
                            namespace.to_owned()
                        }
                        _ => panic!(
                            "{name}: env {} has a source this test does not run",
                            var.name
                        ),
                    },
                    (None, None) => String::new(),
                };
                env.push((var.name.clone(), value));
            }
            let expand = |arg: &str| {
                env.iter()
                    .fold(arg.to_owned(), |a, (k, v)| a.replace(&format!("$({k})"), v))
            };
            let port = if component == "dataplane" {
                dataplane_port
            } else {
                process::free_port()
            };
            let args: Vec<String> = container
                .args
                .iter()
                .flatten()
                .map(|a| rewrite(&expand(a)).replace("0.0.0.0:", "127.0.0.1:"))
                .map(|a| match a.strip_prefix("127.0.0.1:") {
                    Some(_) => format!("127.0.0.1:{port}"),
                    None => a,
                })
                .collect();
            let entrypoint = container.command.clone().unwrap_or_default();
            let binary_name = Path::new(entrypoint.first().expect("a command"))
                .file_name()
                .unwrap()
                .to_owned();
            let binary = repo_root()
                .join("target")
                .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
                .join("release")
                .join(binary_name);
            assert!(
                binary.is_file(),
                "{} (images/build makes it)",
                binary.display()
            );

            let account = pod.service_account_name.clone().unwrap_or("default".into());
            let token = cluster
                .kubectl_ok([
                    "-n",
                    namespace,
                    "create",
                    "token",
                    &account,
                    "--duration=2h",
                ])
                .expect("a ServiceAccount token");
            let kubeconfig = dir.path().join("kubeconfig");
            std::fs::write(
                &kubeconfig,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\", \
                     certificate-authority: \"{}\"}}}}]\nusers: [{{name: u, user: {{token: \"{}\"}}}}]\n\
                     contexts: [{{name: c, context: {{cluster: c, user: u, namespace: {namespace}}}}}]\n\
                     current-context: c\n",
                    cluster.server(),
                    cluster.ca_path().display(),
                    token.trim()
                ),
            )
            .unwrap();

            let mut command = Command::new(binary);
            command
                .args(&args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("KUBECONFIG", &kubeconfig)
                .current_dir(dir.path());
            let mut child = ChildGuard::spawn(&component, command).expect("spawn");
            let readiness = Readiness::Http(format!("http://127.0.0.1:{port}/readyz"));
            child
                .wait_ready(&readiness, process::READY_TIMEOUT)
                .unwrap_or_else(|e| panic!("{component} as a process: {e:#}"));
            running.push((component, child));
            dirs.push(dir);
        }
        Self {
            running,
            _dirs: dirs,
        }
    }

    /// The components running, sorted.
    fn components(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.running.iter().map(|(c, _)| c.as_str()).collect();
        names.sort();
        names
    }
}

/// Part 2 of the module documentation.
async fn filesystem_region(cluster: &Cluster, operator: &Image, dataplane: &Image) {
    let namespace = "registry-fs";
    let region = "fs-01";
    let data = tempfile::tempdir().expect("data dir");
    host_volume(cluster, "registry-fs-data", data.path());
    let (port, host, values) = release(
        cluster,
        namespace,
        region,
        (operator, dataplane),
        json!({ "type": "filesystem", "filesystem": { "size": "1Gi", "storageClass": "-" } }),
    );
    let notes = helm_apply(cluster, "install", namespace, &values);
    assert!(notes.contains(&format!("Region {region}")), "{notes}");
    assert_runs(cluster, namespace, "operator", operator, 1).await;
    assert_runs(cluster, namespace, "dataplane", dataplane, 1).await;

    let project = "team-fs";
    create_project(cluster, project, region, "apps");
    let ci = delivered(cluster, project, "ci").await;
    let _forward = port_forward(cluster, namespace, port);

    // skopeo through the Service: refused anonymously, accepted with the push credential.
    let image = format!("{host}/apps/hello:1");
    let anonymous = skopeo_push(&image, None);
    assert!(
        !anonymous.status.success(),
        "an anonymous push must be refused"
    );
    let pushed = skopeo_push(&image, Some(&ci));
    assert!(pushed.status.success(), "skopeo push: {}", pushed.stderr);

    // The node pulls it with the pull-only credential's delivered Secret, and only so.
    cluster
        .apply(&pull_pod(
            project,
            "with-secret",
            &image,
            Some("deploy"),
            &[MESSAGE],
        ))
        .expect("pod");
    cluster
        .apply(&pull_pod(
            project,
            "without-secret",
            &image,
            None,
            &[MESSAGE],
        ))
        .expect("pod");
    assert_eq!(finished(cluster, project, "with-secret").await, "Succeeded");
    let logs = cluster
        .kubectl_ok(["-n", project, "logs", "with-secret"])
        .expect("logs");
    assert_eq!(logs.trim(), MESSAGE);
    let refused = pull_refused(cluster, project, "without-secret").await;
    // The anonymous token grants nothing in a private namespace; the answer does not say
    // whether the repository exists.
    assert!(
        refused.contains("pull access denied") && refused.contains("insufficient_scope"),
        "{refused}"
    );

    // Uninstall: the CRDs, the tenants' objects and the claim holding the images stay.
    let out = helm(
        cluster,
        &["uninstall", RELEASE, "--namespace", namespace, "--wait"],
    );
    assert!(out.status.success(), "helm uninstall: {}", out.stderr);
    for crd in [
        "registrynamespaces.registry.thalassa.cloud",
        "registrycredentials.registry.thalassa.cloud",
    ] {
        cluster
            .kubectl_ok(["get", "crd", crd])
            .expect("the CRD stays");
    }
    cluster
        .kubectl_ok([
            "-n",
            project,
            "get",
            "registrynamespace/apps",
            "registrycredential/ci",
        ])
        .expect("the tenants' objects stay");
    let claim = cluster
        .kubectl_ok(["-n", namespace, "get", "pvc", "-o", "name"])
        .expect("claims");
    assert_eq!(
        claim.trim(),
        format!("persistentvolumeclaim/{RELEASE}-dataplane")
    );
    let remaining = component_pods(cluster, namespace, "dataplane").await;
    assert!(
        remaining
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some()),
        "{remaining:#?}"
    );
}

/// Part 3 of the module documentation.
async fn s3_region(cluster: &Cluster, bootstrap: &Bootstrap, operator: &Image, dataplane: &Image) {
    let namespace = "registry-s3";
    let region = "s3-01";
    let gateway = cluster.node_gateway().expect("the node's bridge address");
    let s3 = S3Server::try_start_on(gateway).expect("MinIO on the pod bridge");
    cluster
        .kubectl_ok(["create", "namespace", namespace])
        .expect("release namespace");
    cluster
        .kubectl_ok([
            "-n",
            namespace,
            "create",
            "secret",
            "generic",
            "registry-s3",
            &format!("--from-literal=AWS_ACCESS_KEY_ID={}", s3.access_key()),
            &format!("--from-literal=AWS_SECRET_ACCESS_KEY={}", s3.secret_key()),
        ])
        .expect("the S3 credentials Secret");

    let port = process::free_port();
    let host = format!("127.0.0.1:{port}");
    let mut values = base_values(region, &host, operator, dataplane);
    merge(
        &mut values,
        json!({
            "storage": {
                "type": "s3",
                "s3": {
                    "bucket": s3.bucket(),
                    "region": s3.region(),
                    "endpoint": s3.endpoint(),
                    "forcePathStyle": true,
                    "credentials": { "source": "secret", "secret": { "name": "registry-s3" } },
                },
            },
        }),
    );
    helm_apply(cluster, "install", namespace, &values);
    assert_runs(cluster, namespace, "dataplane", dataplane, 1).await;

    let project = "team-s3";
    create_project(cluster, project, region, "shop");
    let ci = delivered(cluster, project, "ci").await;
    let deploy = delivered(cluster, project, "deploy").await;
    let forward = port_forward(cluster, namespace, port);
    let pushed = skopeo_push(&format!("{host}/shop/hello:1"), Some(&ci));
    assert!(pushed.status.success(), "skopeo push: {}", pushed.stderr);
    drop(forward);

    // A new data-plane image (the same binary packed with other timestamps), three
    // replicas, and one more organisation: a rolling update of the data plane.
    let rebuilt = build_images(&bootstrap.host, Some(1_700_000_000), "dataplane");
    let new_dataplane = rebuilt
        .into_iter()
        .find(|(n, _)| n == "dataplane")
        .map(|(_, i)| i)
        .expect("the rebuilt data-plane image");
    assert_ne!(new_dataplane.digest, dataplane.digest);
    let before: Vec<String> = component_pods(cluster, namespace, "dataplane")
        .await
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    let client = cluster.client().await.expect("client");
    let load = PullLoad::start(client, namespace, "shop/hello:1".to_owned(), deploy.clone());
    // Let a few pulls land before the rollout starts.
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    merge(
        &mut values,
        json!({
            "image": { "dataplane": new_dataplane.values() },
            "organisations": { "globex": { "containerRegistry": true } },
            "dataplane": { "replicas": 3 },
        }),
    );
    helm_apply(cluster, "upgrade", namespace, &values);
    // And a few after it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.finish().await;
    eprintln!(
        "{} pulls in {:?} during the rollout, from {:?}",
        report.pulls,
        started.elapsed(),
        report.endpoints
    );
    assert!(
        report.failures.is_empty(),
        "pulls failed during the rollout: {:#?}",
        report.failures
    );
    assert!(
        report.pulls >= 5,
        "too few pulls ran during the rollout: {report:?}"
    );
    assert!(
        before.iter().any(|ip| report.endpoints.contains(ip)),
        "no pull reached the replica that ran before the upgrade ({before:?}): {report:?}"
    );

    // Every replica runs the new image and serves a pull itself.
    assert_runs(cluster, namespace, "dataplane", &new_dataplane, 3).await;
    let after: Vec<String> = component_pods(cluster, namespace, "dataplane")
        .await
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(
        after.iter().any(|ip| report.endpoints.contains(ip)),
        "no pull during the rollout reached a new replica ({after:?}): {report:?}"
    );
    for ip in after {
        let pulled = pull_image(
            Client::Crane,
            &format!("{ip}:5000/shop/hello:1"),
            Some(&deploy),
        )
        .expect("crane runs");
        assert!(pulled.succeeded(), "replica {ip}: {}", pulled.output.stderr);
    }
    let out = helm(
        cluster,
        &["uninstall", RELEASE, "--namespace", namespace, "--wait"],
    );
    assert!(out.status.success(), "helm uninstall: {}", out.stderr);
}
