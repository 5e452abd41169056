//! Shared by the operator's end-to-end tests: one harness cluster per test binary (with the
//! CRDs installed), and per test a region of its own (its own region name, operator
//! namespace, operator process and data plane), so tests run in parallel without seeing
//! each other's objects.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};
use testkit::cluster::{Cluster, TestNamespace};
use testkit::process::{ChildGuard, Readiness, free_port};

/// The data plane's process settings in the tests (see `spawn_dataplane`).
const DATAPLANE_SETTINGS: &str = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
    logins: {perSource: {failures: 1000000, per: 1s}, perCredential: {failures: 1000000, per: 1s}}\n";

/// The cluster of this test binary, started on first use; stopped by the harness watchdog
/// when the test process exits.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::start("operator").expect("a harness cluster");
        let crds = testkit::tools::repo_root().join("crds/yaml");
        cluster
            .kubectl_ok(["apply", "--server-side", "-f", crds.to_str().unwrap()])
            .expect("the CRDs apply");
        for crd in [
            "registrynamespaces",
            "registrycredentials",
            "retentionpolicies",
        ] {
            cluster
                .wait_crd_established(
                    &format!("{crd}.registry.thalassa.cloud"),
                    Duration::from_secs(30),
                )
                .expect("the CRDs are established");
        }
        cluster
    })
}

/// The binary of a workspace package, built next to this test's operator binary.
pub fn workspace_bin(name: &str) -> PathBuf {
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_operator"));
    let path = operator.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (tests/run does)",
        path.display()
    );
    path
}

/// A region name unique to this process and call.
fn unique_region() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "r{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running operator process.
pub struct Operator {
    /// The process.
    pub child: ChildGuard,
    /// Its metrics port.
    pub metrics: u16,
}

impl Operator {
    /// Whether it reports holding the leader Lease.
    pub async fn leading(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics);
        let Ok(response) = reqwest::get(&url).await else {
            return false;
        };
        let body = response.text().await.unwrap_or_default();
        body.lines()
            .any(|l| l.trim() == "registry_operator_leader 1")
    }

    /// SIGKILLs it (no cleanup, no Lease release).
    pub fn kill(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.child.stop();
    }
}

/// One region: an operator and a data plane following its configuration Secret.
pub struct Region {
    /// The region's name.
    pub name: String,
    /// The registry host (`127.0.0.1:PORT`).
    pub host: String,
    /// The operator's namespace.
    pub system: TestNamespace,
    /// The settings file.
    pub settings: PathBuf,
    /// Organisations with the gate on.
    pub organisations: Vec<String>,
    dir: tempfile::TempDir,
    /// The operator.
    pub operator: Option<Operator>,
    /// The data plane.
    pub dataplane: Option<ChildGuard>,
}

impl Region {
    /// Starts a region (operator and data plane) whose listed organisations have the
    /// container registry.
    pub async fn start(organisations: &[&str]) -> Self {
        Self::start_with(organisations, "", true).await
    }

    /// Starts a region whose data plane gets more process settings (top-level YAML sections,
    /// e.g. `"gc: {grace: 5s}\n"`).
    pub async fn start_with_dataplane_settings(organisations: &[&str], settings: &str) -> Self {
        Self::start_with_both_settings(organisations, "", settings).await
    }

    /// Starts a region with more operator settings (YAML lines) and more data-plane process
    /// settings (top-level YAML sections).
    pub async fn start_with_both_settings(
        organisations: &[&str],
        operator: &str,
        settings: &str,
    ) -> Self {
        let mut region = Self::start_with(organisations, operator, false).await;
        let port = region.port();
        region.dataplane = Some(region.spawn_dataplane_with(port, settings));
        region
    }

    /// The data plane's port.
    fn port(&self) -> u16 {
        self.host
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("host is 127.0.0.1:PORT")
    }

    /// Starts a region with more operator settings (YAML lines).
    pub async fn start_with_settings(organisations: &[&str], settings: &str) -> Self {
        Self::start_with(organisations, settings, true).await
    }

    /// Starts only the operator of a region, with more settings (YAML lines).
    pub async fn start_with_operator_settings(organisations: &[&str], settings: &str) -> Self {
        Self::start_with(organisations, settings, false).await
    }

    /// Starts only the operator of a region.
    pub async fn operator_only(organisations: &[&str]) -> Self {
        Self::start_with(organisations, "", false).await
    }

    async fn start_with(organisations: &[&str], extra: &str, with_dataplane: bool) -> Self {
        let cluster = cluster();
        let client = cluster.client().await.unwrap();
        let system = TestNamespace::create(&client).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let name = unique_region();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let orgs: String = organisations
            .iter()
            .map(|o| format!("  {o}: {{containerRegistry: true}}\n"))
            .collect();
        let settings = dir.path().join("settings.yaml");
        std::fs::write(
            &settings,
            format!(
                "region: {name}\nregistryHost: \"{host}\"\ndataplaneUrl: \"http://{host}\"\nnamespace: {}\n{extra}organisations:\n{orgs}",
                system.name()
            ),
        )
        .unwrap();
        let mut region = Self {
            name,
            host,
            system,
            settings,
            organisations: organisations.iter().map(|s| s.to_string()).collect(),
            dir,
            operator: None,
            dataplane: None,
        };
        region.operator = Some(region.spawn_operator("operator"));
        if with_dataplane {
            region.dataplane = Some(region.spawn_dataplane(port));
        }
        region
    }

    /// Starts another operator process of this region (for leader election tests).
    pub fn spawn_operator(&self, identity: &str) -> Operator {
        let metrics = free_port();
        let mut cmd = Command::new(workspace_bin("operator"));
        cmd.args(["run", "--settings"])
            .arg(&self.settings)
            .args(["--listen", &format!("127.0.0.1:{metrics}")])
            .args(["--identity", identity])
            .env("KUBECONFIG", cluster().kubeconfig_path())
            .env("RUST_LOG", "info,operator=debug");
        let mut child = ChildGuard::spawn(identity, cmd).unwrap();
        child
            .wait_ready(
                &Readiness::Http(format!("http://127.0.0.1:{metrics}/healthz")),
                Duration::from_secs(30),
            )
            .unwrap();
        Operator { child, metrics }
    }

    fn spawn_dataplane(&self, port: u16) -> ChildGuard {
        self.spawn_dataplane_with(port, "")
    }

    fn spawn_dataplane_with(&self, port: u16, extra_settings: &str) -> ChildGuard {
        let root = self.dir.path().join("data");
        // The process settings. The tests poll pushes and logins with credentials the data
        // plane does not serve yet (or any more), far faster than any client would: the limits
        // on failed logins would refuse those polls, so they are lifted here.
        let settings = self.dir.path().join("dataplane.yaml");
        std::fs::write(&settings, format!("{DATAPLANE_SETTINGS}{extra_settings}")).unwrap();
        let mut cmd = Command::new(workspace_bin("dataplane"));
        cmd.args(["serve", "--listen", &self.host, "--config"])
            .arg(&settings)
            .arg("--root")
            .arg(&root)
            .args([
                "--config-secret",
                &format!("{}/registry-config", self.system.name()),
            ])
            .env("KUBECONFIG", cluster().kubeconfig_path());
        let mut child = ChildGuard::spawn("dataplane", cmd).unwrap();
        child
            .wait_ready(
                &Readiness::Tcp(format!("127.0.0.1:{port}").parse().unwrap()),
                Duration::from_secs(30),
            )
            .unwrap();
        child
    }

    /// A project (Kubernetes namespace) of `organisation`.
    pub async fn project(&self, organisation: Option<&str>) -> TestNamespace {
        let client = cluster().client().await.unwrap();
        let ns = TestNamespace::create(&client).await.unwrap();
        if let Some(org) = organisation {
            let api = Api::<Namespace>::all(client);
            let patch = serde_json::json!({
                "metadata": {"labels": {crds::ORGANISATION_LABEL: org}}
            });
            api.patch(ns.name(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
        ns
    }

    /// A new project of `organisation` that accepts synced pull Secrets, holding the Secret
    /// `registry-pull`: a copy of the pull-only credential `name` of `project` for
    /// `registry_namespaces`, applied here and waited for. Returns the new project.
    pub async fn project_with_pull_secret(
        &self,
        organisation: &str,
        project: &str,
        name: &str,
        registry_namespaces: &[&str],
    ) -> TestNamespace {
        let target = self.project(Some(organisation)).await;
        cluster()
            .kubectl_ok([
                "label",
                "namespace",
                target.name(),
                "registry.thalassa.cloud/pull-secrets=accept",
            ])
            .unwrap();
        let sync = format!(
            "  sync:\n  - namespaces: [{}]\n    secretName: registry-pull\n",
            target.name()
        );
        self.apply(&self.credential_manifest(
            project,
            name,
            "containerRegistry:pull",
            registry_namespaces,
            &sync,
        ))
        .unwrap();
        let client = cluster().client().await.unwrap();
        wait_object(
            &Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client, target.name()),
            "registry-pull",
            Duration::from_secs(30),
            |_| Some(()),
        )
        .await;
        target
    }

    /// `kubectl apply -f -` of a manifest; the error is kubectl's message.
    pub fn apply(&self, manifest: &str) -> Result<String, String> {
        cluster().apply(manifest).map_err(|e| e.to_string())
    }

    /// A `RegistryNamespace` manifest of this region.
    pub fn namespace_manifest(&self, project: &str, name: &str, extra: &str) -> String {
        format!(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RegistryNamespace\n\
             metadata: {{name: {name}, namespace: {project}}}\nspec:\n  region: {}\n{extra}",
            self.name
        )
    }

    /// A `RegistryCredential` manifest of this region.
    pub fn credential_manifest(
        &self,
        project: &str,
        name: &str,
        scope: &str,
        namespaces: &[&str],
        extra: &str,
    ) -> String {
        format!(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RegistryCredential\n\
             metadata: {{name: {name}, namespace: {project}}}\nspec:\n  region: {}\n  \
             scope: \"{scope}\"\n  namespaces: [{}]\n{extra}",
            self.name,
            namespaces.join(", ")
        )
    }
}

/// Polls an object until `check` returns `Some`, or panics after `timeout` with the last
/// object seen.
pub async fn wait_object<K, T>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    mut check: impl FnMut(&K) -> Option<T>,
) -> T
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(Some(obj)) = api.get_opt(name).await {
            if let Some(value) = check(&obj) {
                return value;
            }
            last = Some(obj);
        }
        if std::time::Instant::now() >= deadline {
            panic!("{name}: condition not reached within {timeout:?}; last seen: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `Ready` condition's status and reason, when it describes the current generation.
pub fn ready<K: kube::Resource>(
    obj: &K,
    conditions: &[crds::v1alpha1::Condition],
) -> Option<(String, String)> {
    let generation = obj.meta().generation?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready")?;
    (ready.observed_generation == generation)
        .then(|| (format!("{:?}", ready.status), ready.reason.clone()))
}

/// The user name and secret a credential's delivered Secret holds.
pub fn credentials_of(
    secret: &k8s_openapi::api::core::v1::Secret,
) -> testkit::clients::Credentials {
    let data = secret.data.as_ref().expect("the Secret has data");
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    testkit::clients::Credentials::new(text("username"), text("password"))
}

/// The names in a ServiceAccount's `imagePullSecrets`, in order.
pub fn image_pull_secrets(sa: &k8s_openapi::api::core::v1::ServiceAccount) -> Vec<String> {
    sa.image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

/// skopeo reads an image's manifest with `dockerconfigjson` (a pull Secret's
/// `.dockerconfigjson`) as its auth file.
pub fn skopeo_inspect(dockerconfigjson: &[u8], reference: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.json");
    std::fs::write(&auth, dockerconfigjson).unwrap();
    Command::new(testkit::tools::bin("skopeo"))
        .args(["inspect", "--raw", "--tls-verify=false", "--authfile"])
        .arg(&auth)
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap()
}

/// Creates a ServiceAccount `name` in `namespace` whose `imagePullSecrets` list `pull_secrets`.
pub async fn create_service_account(
    client: kube::Client,
    namespace: &str,
    name: &str,
    pull_secrets: &[&str],
) {
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "imagePullSecrets": pull_secrets
                .iter()
                .map(|n| serde_json::json!({ "name": n }))
                .collect::<Vec<_>>(),
        }))
        .unwrap();
    Api::namespaced(client, namespace)
        .create(&kube::api::PostParams::default(), &sa)
        .await
        .unwrap();
}

/// Pushes a blob with the registry API and Basic credentials; returns its digest.
pub async fn push_blob(
    http: &reqwest::Client,
    host: &str,
    repo: &str,
    auth: &str,
    data: Vec<u8>,
) -> String {
    let digest = testkit::clients::sha256_digest(&data);
    let response = http
        .post(format!(
            "http://{host}/v2/{repo}/blobs/uploads/?digest={digest}"
        ))
        .header("authorization", auth)
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        201,
        "blob push: {:?}",
        response.text().await
    );
    digest
}

/// Pushes one image (a shared base layer, its own layer, its own config) under `tag`; returns
/// the manifest digest.
pub async fn push(http: &reqwest::Client, host: &str, repo: &str, tag: &str, auth: &str) -> String {
    let blob = |data: Vec<u8>| push_blob(http, host, repo, auth, data);
    let base = blob(b"shared base layer".to_vec()).await;
    let own = blob(format!("layer of {tag}").into_bytes()).await;
    let config_bytes = format!("{{\"tag\":\"{tag}\"}}").into_bytes();
    let config_size = config_bytes.len();
    let config = blob(config_bytes).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": base, "size": 17},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": own, "size": format!("layer of {tag}").len()},
        ],
    })
    .to_string();
    let response = http
        .put(format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .header("authorization", auth)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        201,
        "manifest push: {:?}",
        response.text().await
    );
    testkit::clients::sha256_digest(manifest.as_bytes())
}

/// The tags of `repo`, sorted.
pub async fn tags(http: &reqwest::Client, host: &str, repo: &str, auth: &str) -> Vec<String> {
    let response = http
        .get(format!("http://{host}/v2/{repo}/tags/list"))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    let mut tags: Vec<String> = body["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    tags.sort();
    tags
}

/// The `Authorization` value of Basic credentials.
pub fn basic(c: &testkit::clients::Credentials) -> String {
    let pair = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pair)
    )
}

/// Waits until the data plane at `host` accepts `auth` (the document holding the credential
/// is in force); panics after 30 s.
pub async fn served(http: &reqwest::Client, host: &str, auth: &str) {
    for _ in 0..150 {
        let r = http
            .get(format!("http://{host}/v2/"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the data plane at {host} never accepted the credential");
}

/// Creates Pod `name` running `image` in the namespace of `pods`, with the status a kubelet
/// reports once it runs (`imageID` = `image_id`): the harness cluster has no node for it, so
/// nothing else writes its container statuses.
pub async fn running_pod(
    pods: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    image: &str,
    image_id: &str,
) {
    let pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": image}]}
    }))
    .unwrap();
    pods.create(&kube::api::PostParams::default(), &pod)
        .await
        .unwrap();
    let running = serde_json::json!({"status": {"phase": "Running", "containerStatuses": [{
        "name": "app", "image": image, "imageID": image_id,
        "ready": true, "restartCount": 0, "started": true,
        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    }]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&running))
        .await
        .unwrap();
}
