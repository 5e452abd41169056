//! Kubernetes clusters for end-to-end tests.
//!
//! [`Cluster::start`] runs `tests/harness/cluster up` with a unique name: a real etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler on free loopback ports, with
//! a generated PKI and an admin kubeconfig. Dropping the [`Cluster`] runs
//! `tests/harness/cluster down`, which stops every process and deletes the state. If the
//! test process dies without dropping it, a watchdog started by `up` tears it down.
//!
//! The apiserver is its own service-account OIDC issuer ([`Cluster::server`]); its
//! discovery document and JWKS are readable without credentials, e.g. with
//! [`Cluster::anonymous_http`].
//!
//! [`Cluster::add_node`] joins a kubelet with its own containerd (root only), so pods
//! really run. Pods reach the apiserver with in-cluster configuration (the `kubernetes`
//! Service's ClusterIP, the mounted token and CA). [`go_image`] packs a small Go program
//! as an image and [`Cluster::import_image`] loads an image archive onto the node.
//!
//! [`TestNamespace`] gives each test a fresh namespace that is deleted afterwards.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::tools::{cache_dir, repo_root};

/// Binaries `tests/harness/cluster up` needs from the harness cache.
const CONTROL_PLANE_BINARIES: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// Errors from starting or using a harness cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A binary the cluster needs is not in the harness cache.
    #[error("{binary} not found at {path}: run `tests/harness/install` first")]
    MissingBinary {
        /// The binary's name.
        binary: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A harness script or kubectl could not be run at all.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The program.
        command: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A harness script or kubectl ran and failed.
    #[error("`{command}` failed ({status}):\n{stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `cluster up` did not print the expected environment.
    #[error("`cluster up` printed no {0}")]
    MissingEnv(&'static str),
    /// Building a Kubernetes client failed.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// An HTTP client could not be built or the CA could not be read.
    #[error("http client: {0}")]
    Http(String),
    /// A harness script printed something other than what it promises.
    #[error("unexpected output: {0}")]
    Unexpected(String),
    /// A condition did not hold in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// Result alias for this module.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// A running harness cluster, torn down (`cluster down`) on drop.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    ca: PathBuf,
}

/// The harness `cluster` script.
pub fn cluster_script() -> PathBuf {
    repo_root().join("tests/harness/cluster")
}

/// The harness `node` script.
pub fn node_script() -> PathBuf {
    repo_root().join("tests/harness/node")
}

/// Builds the static Go program in `dir` (a `main` package using only the standard
/// library) into a one-layer image tagged `tag`, with `/<basename of dir>` as its
/// entrypoint (`tests/harness/node go-image`), and returns the path of its docker
/// archive. The archive is cached by source hash under the harness cache, so only the
/// first call builds. Needs Go.
pub fn go_image(dir: &Path, tag: &str) -> Result<PathBuf> {
    let mut command = Command::new("bash");
    command
        .arg(node_script())
        .arg("go-image")
        .arg(dir)
        .arg(tag)
        .env("REGISTRY_HARNESS_CACHE", cache_dir())
        .stdin(Stdio::null());
    let line = format!("tests/harness/node go-image {} {tag}", dir.display());
    let output = check(line, run(command)?)?;
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    ))
}

/// The kubectl binary in the harness cache.
pub fn kubectl_bin() -> Result<PathBuf> {
    cached_bin("kubectl")
}

fn cached_bin(name: &str) -> Result<PathBuf> {
    let path = cache_dir().join("bin").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ClusterError::MissingBinary {
            binary: name.to_owned(),
            path,
        })
    }
}

/// A cluster name unique to this process and call: `<prefix>-<pid>-<n>-<time>`.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let prefix: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos & 0xfffff)
}

/// Selects rustls' ring provider for the whole process, once. kube and reqwest need a
/// process-wide default, and rustls cannot choose one itself when several providers are
/// compiled in (the AWS SDK brings aws-lc-rs). Harmless if one is already installed.
fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn run(mut command: Command) -> Result<Output> {
    let line = format!("{command:?}");
    command.output().map_err(|source| ClusterError::Spawn {
        command: line,
        source,
    })
}

fn check(command: String, output: Output) -> Result<Output> {
    if output.status.success() {
        Ok(output)
    } else {
        Err(ClusterError::CommandFailed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

impl Cluster {
    /// Starts a new cluster named `<prefix>-<unique suffix>` and waits until it is ready
    /// (`/readyz` ok, ServiceAccount `default/default` present). Blocks for several
    /// seconds.
    ///
    /// Fails with [`ClusterError::MissingBinary`] (naming `tests/harness/install`) when a
    /// binary is not built.
    pub fn start(prefix: &str) -> Result<Cluster> {
        for binary in CONTROL_PLANE_BINARIES {
            cached_bin(binary)?;
        }
        let name = unique_name(prefix);
        let mut command = Command::new("bash");
        command
            .arg(cluster_script())
            .args(["up", &name])
            .env(
                "REGISTRY_HARNESS_CLUSTER_OWNER",
                std::process::id().to_string(),
            )
            .env("REGISTRY_HARNESS_CACHE", cache_dir())
            .stdin(Stdio::null());
        let line = format!("tests/harness/cluster up {name}");
        let output = check(line, run(command)?)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let var = |key: &'static str| -> Result<String> {
            stdout
                .lines()
                .filter_map(|l| l.strip_prefix("export "))
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_owned())
                .ok_or(ClusterError::MissingEnv(key))
        };
        Ok(Cluster {
            kubeconfig: var("KUBECONFIG")?.into(),
            dir: var("REGISTRY_HARNESS_CLUSTER_DIR")?.into(),
            server: var("REGISTRY_HARNESS_CLUSTER_SERVER")?,
            ca: var("REGISTRY_HARNESS_CLUSTER_CA")?.into(),
            name,
        })
    }

    /// The cluster's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's state directory (PKI, kubeconfigs, logs).
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver URL, `https://127.0.0.1:<port>`; also the service-account issuer.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The cluster CA certificate (PEM file) that signed the apiserver's certificate.
    pub fn ca_path(&self) -> &Path {
        &self.ca
    }

    /// A Kubernetes client authenticated as the cluster admin.
    pub async fn client(&self) -> Result<Client> {
        ensure_crypto_provider();
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// An HTTPS client without credentials that trusts the cluster CA, for the endpoints
    /// the apiserver serves anonymously (OIDC discovery, JWKS, `/readyz`).
    pub fn anonymous_http(&self) -> Result<reqwest::Client> {
        ensure_crypto_provider();
        let pem = std::fs::read(&self.ca).map_err(|e| ClusterError::Http(e.to_string()))?;
        let ca =
            reqwest::Certificate::from_pem(&pem).map_err(|e| ClusterError::Http(e.to_string()))?;
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClusterError::Http(e.to_string()))
    }

    /// A `kubectl` command bound to this cluster's admin kubeconfig, ready to run.
    pub fn kubectl_command<I, S>(&self, args: I) -> Result<Command>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(kubectl_bin()?);
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(Stdio::null());
        Ok(command)
    }

    /// Runs `kubectl ARGS` against this cluster and returns its output, whatever its exit
    /// status.
    pub fn kubectl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.kubectl_command(args)?)
    }

    /// Runs `kubectl ARGS` and returns its stdout; a non-zero exit is an error carrying
    /// stderr.
    pub fn kubectl_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let command = self.kubectl_command(args)?;
        let line = format!("{command:?}");
        let output = check(line, run(command)?)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Waits until the CustomResourceDefinition `name` is `Established`, polling its status
    /// (`kubectl wait --for=condition=Established` right after the create can fail instead of
    /// waiting, while the CRD has no conditions yet).
    pub fn wait_crd_established(&self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let crd = format!("crd/{name}");
        loop {
            let status = self.kubectl_ok([
                "get",
                crd.as_str(),
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#,
            ]);
            if matches!(&status, Ok(s) if s.trim() == "True") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(timeout, format!("{crd} established")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A ten-minute token of ServiceAccount `account` in `namespace` for `audience`, from the
    /// TokenRequest API (`kubectl create token`).
    pub fn service_account_token(
        &self,
        namespace: &str,
        account: &str,
        audience: &str,
    ) -> Result<String> {
        let out = self.kubectl_ok([
            "create",
            "token",
            account,
            "--namespace",
            namespace,
            "--audience",
            audience,
            "--duration",
            "10m",
        ])?;
        Ok(out.trim().to_owned())
    }

    /// `kubectl apply -f -` with `manifest` (YAML or JSON) on stdin; returns stdout.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        let mut command = self.kubectl_command(["apply", "-f", "-"])?;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let line = format!("{command:?}");
        let spawn_err = |source| ClusterError::Spawn {
            command: line.clone(),
            source,
        };
        let mut child = command.spawn().map_err(spawn_err)?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(manifest.as_bytes())
            .map_err(spawn_err)?;
        let output = child.wait_with_output().map_err(spawn_err)?;
        let output = check(line, output)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Creates a fresh namespace, deleted (with `kubectl`, without waiting) on drop.
    pub async fn test_namespace(&self) -> Result<TestNamespace> {
        let mut ns = TestNamespace::create(&self.client().await?).await?;
        ns.kubeconfig = Some(self.kubeconfig.clone());
        Ok(ns)
    }

    /// Joins a worker node (`tests/harness/node up`: kubelet with a private containerd
    /// and runc, needs root) and waits until it is Ready. Returns the node's name. The
    /// node goes away with the cluster. Its pods reach the apiserver at the `kubernetes`
    /// Service's ClusterIP (in-cluster configuration works unmodified).
    pub fn add_node(&self) -> Result<String> {
        self.add_node_with(None)
    }

    /// [`Cluster::add_node`], with the kubelet running an image credential provider:
    /// `(config, bin_dir)` are its `--image-credential-provider-config` and
    /// `--image-credential-provider-bin-dir`.
    pub fn add_node_with(&self, credential_provider: Option<(&Path, &Path)>) -> Result<String> {
        cached_bin("kubelet")?;
        let mut command = Command::new("bash");
        command
            .arg(node_script())
            .args(["up", &self.name])
            .env("REGISTRY_HARNESS_CACHE", cache_dir())
            .stdin(Stdio::null());
        if let Some((config, bin_dir)) = credential_provider {
            command
                .env("REGISTRY_HARNESS_NODE_CREDENTIAL_PROVIDER_CONFIG", config)
                .env("REGISTRY_HARNESS_NODE_CREDENTIAL_PROVIDER_BIN_DIR", bin_dir);
        }
        let line = format!("tests/harness/node up {}", self.name);
        let output = check(line, run(command)?)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Imports an image archive (docker or OCI, e.g. from [`go_image`]) into the node's
    /// containerd (`tests/harness/node import`), so pods use it without a pull
    /// (`imagePullPolicy: Never` or `IfNotPresent`). Needs [`Cluster::add_node`] first.
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        let mut command = Command::new("bash");
        command
            .arg(node_script())
            .args(["import", &self.name])
            .arg(archive)
            .env("REGISTRY_HARNESS_CACHE", cache_dir())
            .stdin(Stdio::null());
        let line = format!(
            "tests/harness/node import {} {}",
            self.name,
            archive.display()
        );
        check(line, run(command)?).map(drop)
    }

    /// The host's address on the node's pod bridge (`tests/harness/node gateway`). Pods have
    /// no default route: a server the host runs for them (an S3 server, say) listens here.
    /// Needs [`Cluster::add_node`] first.
    pub fn node_gateway(&self) -> Result<std::net::IpAddr> {
        let mut command = Command::new("bash");
        command
            .arg(node_script())
            .args(["gateway", &self.name])
            .stdin(Stdio::null());
        let output = check(
            format!("tests/harness/node gateway {}", self.name),
            run(command)?,
        )?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim()
            .parse()
            .map_err(|_| ClusterError::Unexpected(format!("node gateway printed {text:?}")))
    }

    /// The admin kubeconfig with every file embedded (`*-data`), as it would be stored in a
    /// Secret for a program that cannot read this machine's files.
    pub fn embedded_kubeconfig(&self) -> Result<String> {
        use base64::Engine as _;
        let read = |path: &str| -> Result<String> {
            let bytes = std::fs::read(path).map_err(|e| {
                ClusterError::Unexpected(format!("cannot read {path} of the kubeconfig: {e}"))
            })?;
            Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
        };
        let mut kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        for cluster in kubeconfig
            .clusters
            .iter_mut()
            .filter_map(|c| c.cluster.as_mut())
        {
            if let Some(path) = cluster.certificate_authority.take() {
                cluster.certificate_authority_data = Some(read(&path)?);
            }
        }
        for user in kubeconfig
            .auth_infos
            .iter_mut()
            .filter_map(|a| a.auth_info.as_mut())
        {
            if let Some(path) = user.client_certificate.take() {
                user.client_certificate_data = Some(read(&path)?);
            }
            if let Some(path) = user.client_key.take() {
                user.client_key_data = Some(read(&path)?.into());
            }
        }
        // JSON is YAML, and keeps the secret fields (serde serializes them exposed here).
        serde_json::to_string(&kubeconfig).map_err(|e| ClusterError::Unexpected(e.to_string()))
    }

    /// Stops only the cluster's kube-apiserver (`tests/harness/cluster apiserver-stop`): the
    /// cluster stops answering, and keeps its state for [`Cluster::start_apiserver`].
    pub fn stop_apiserver(&self) -> Result<()> {
        self.apiserver("apiserver-stop")
    }

    /// Starts the kube-apiserver stopped by [`Cluster::stop_apiserver`] again, on the same
    /// address, and waits until it is ready.
    pub fn start_apiserver(&self) -> Result<()> {
        self.apiserver("apiserver-start")
    }

    fn apiserver(&self, subcommand: &str) -> Result<()> {
        let mut command = Command::new("bash");
        command
            .arg(cluster_script())
            .args([subcommand, &self.name])
            .env("REGISTRY_HARNESS_CACHE", cache_dir())
            .stdin(Stdio::null());
        check(
            format!("tests/harness/cluster {subcommand} {}", self.name),
            run(command)?,
        )
        .map(drop)
    }

    /// Stops the cluster now (as drop does), reporting failure.
    pub fn stop(mut self) -> Result<()> {
        let result = self.down();
        self.name.clear();
        result
    }

    fn down(&self) -> Result<()> {
        let mut command = Command::new("bash");
        command
            .arg(cluster_script())
            .args(["down", &self.name])
            .stdin(Stdio::null());
        check(
            format!("tests/harness/cluster down {}", self.name),
            run(command)?,
        )
        .map(drop)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        if let Err(e) = self.down() {
            eprintln!("warning: stopping cluster {}: {e}", self.name);
        }
    }
}

/// A Pod manifest (JSON) that runs `image` once with `args`, always pulling it, with
/// `pull_secret` as its only `imagePullSecrets` entry (or none), no ServiceAccount token and a
/// one-second grace period: the workload of the node tests.
pub fn pull_pod(
    namespace: &str,
    name: &str,
    image: &str,
    pull_secret: Option<&str>,
    args: &[&str],
) -> String {
    let secrets: Vec<_> = pull_secret
        .iter()
        .map(|s| serde_json::json!({ "name": s }))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "imagePullSecrets": secrets,
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": "Always",
                "args": args,
            }],
        },
    })
    .to_string()
}

/// Polls `probe` every 200 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout(timeout, what.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace with a unique generated name (`test-xxxxx`) for one test.
///
/// Call [`TestNamespace::cleanup`] to delete it and wait until it is gone. Otherwise drop
/// deletes it without waiting: with `kubectl` when it came from
/// [`Cluster::test_namespace`], else by a task spawned on the current Tokio runtime (best
/// effort: it is lost if the runtime shuts down first).
pub struct TestNamespace {
    name: String,
    client: Client,
    kubeconfig: Option<PathBuf>,
    deleted: bool,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .field("deleted", &self.deleted)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// Creates a namespace named `test-<random>`.
    pub async fn create(client: &Client) -> Result<TestNamespace> {
        let api: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some("test-".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = api.create(&PostParams::default(), &namespace).await?;
        let name = created
            .metadata
            .name
            .expect("the apiserver names generated namespaces");
        Ok(TestNamespace {
            name,
            client: client.clone(),
            kubeconfig: None,
            deleted: false,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the namespace and waits (up to two minutes) until it is gone.
    pub async fn cleanup(self) -> Result<()> {
        self.cleanup_within(Duration::from_secs(120)).await
    }

    /// Deletes the namespace and waits up to `timeout` until it is gone (for namespaces
    /// holding hundreds of objects whose finalizers take their turn).
    pub async fn cleanup_within(mut self, timeout: Duration) -> Result<()> {
        self.deleted = true;
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let name = self.name.clone();
        wait_for(&format!("namespace {name} to be deleted"), timeout, || {
            let api = api.clone();
            let name = name.clone();
            async move {
                match api.get_opt(&name).await {
                    Ok(None) => Some(()),
                    _ => None,
                }
            }
        })
        .await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        if let Some(kubeconfig) = &self.kubeconfig {
            if let Ok(kubectl) = kubectl_bin() {
                let _ = Command::new(kubectl)
                    .env("KUBECONFIG", kubeconfig)
                    .args(["delete", "namespace", &self.name, "--wait=false"])
                    .args(["--ignore-not-found", "--request-timeout=10s"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let api: Api<Namespace> = Api::all(self.client.clone());
            let name = std::mem::take(&mut self.name);
            handle.spawn(async move {
                let _ = api.delete(&name, &DeleteParams::default()).await;
            });
        }
    }
}

/// Copies the harness's sandbox image (a static program that prints its arguments and
/// exits; built by `node up`) to `reference` with skopeo, as `credentials` (`user:password`)
/// or anonymously; returns skopeo's output.
pub fn push_sandbox_image(
    reference: &str,
    credentials: Option<(&str, &str)>,
) -> Result<crate::process::Output> {
    let archive = cache_dir().join("pause-image/pause.tar");
    if !archive.is_file() {
        return Err(ClusterError::Unexpected(format!(
            "{} is built by `tests/harness/node up`",
            archive.display()
        )));
    }
    let auth = tempfile::tempdir().map_err(|e| ClusterError::Unexpected(e.to_string()))?;
    let mut command = Command::new(crate::tools::bin("skopeo"));
    command
        .env("REGISTRY_AUTH_FILE", auth.path().join("auth.json"))
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"]);
    if let Some((user, password)) = credentials {
        command.args(["--dest-creds", &format!("{user}:{password}")]);
    }
    command
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("docker://{reference}"));
    crate::process::run_unchecked(&mut command, Duration::from_secs(360))
        .map_err(|e| ClusterError::Unexpected(e.to_string()))
}

impl Cluster {
    /// `kubectl describe pods` of a namespace, for failure messages.
    pub fn describe_pods(&self, namespace: &str) -> String {
        self.kubectl(["-n", namespace, "describe", "pods"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the pod has finished; returns its phase (`Succeeded` or `Failed`).
    pub async fn pod_finished(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<String> {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client().await?, namespace);
        wait_for(&format!("pod {name} to finish"), timeout, || async {
            let phase = pods.get(name).await.ok()?.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        })
        .await
        .map_err(|e| ClusterError::Unexpected(format!("{e}\n{}", self.describe_pods(namespace))))
    }

    /// Waits until the pod's first container cannot pull its image; returns the kubelet's
    /// reason and message.
    pub async fn pod_pull_refused(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<String> {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client().await?, namespace);
        wait_for(&format!("pod {name} to fail pulling"), timeout, || async {
            let waiting = pods
                .get(name)
                .await
                .ok()?
                .status?
                .container_statuses?
                .into_iter()
                .next()?
                .state?
                .waiting?;
            let reason = waiting.reason?;
            matches!(reason.as_str(), "ErrImagePull" | "ImagePullBackOff")
                .then(|| format!("{reason}: {}", waiting.message.unwrap_or_default()))
        })
        .await
        .map_err(|e| ClusterError::Unexpected(format!("{e}\n{}", self.describe_pods(namespace))))
    }
}
