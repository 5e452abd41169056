//! Round trips with real registry clients against any registry reachable over plain HTTP on
//! loopback: push content, pull it back, and require identical digests (and bytes where the
//! client exposes them).
//!
//! Every function isolates the client's configuration (auth files, storage, caches) in a
//! temporary directory, uses a fresh repository name, builds its content locally (no network
//! besides the registry), and returns an error that names the failing command and includes
//! its stderr.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::process::{self, ChildGuard, run};
use crate::tools;

/// Basic-auth credentials for a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl Credentials {
    /// Builds credentials from a user name and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    fn colon_joined(&self) -> String {
        format!("{}:{}", self.username, self.password)
    }
}

/// `sha256:<hex>` of `bytes`, the OCI digest form.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A fresh repository name, unique within this machine for this process.
pub fn unique_repo(client: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "harness/{client}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Unique file content, so that no two runs push identical blobs.
fn unique_content(client: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{client} round trip {} {nanos}\n", std::process::id())
}

fn workspace(client: &str) -> Result<TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("harness-{client}-"))
        .tempdir()?)
}

fn ensure_same(what: &str, pushed: &str, pulled: &str) -> Result<()> {
    ensure!(
        pushed == pulled,
        "{what}: pushed {pushed} but pulled back {pulled}"
    );
    Ok(())
}

fn ensure_digest(what: &str, value: &str) -> Result<()> {
    ensure!(
        value.starts_with("sha256:") && value.len() == 71,
        "{what}: not a sha256 digest: {value:?}"
    );
    Ok(())
}

/// Builds a one-layer OCI image layout at `layout` with tag `tag` using umoci, and returns the
/// manifest digest.
pub fn build_oci_image(layout: &Path, tag: &str, content: &str) -> Result<String> {
    let umoci = tools::bin("umoci");
    let bundle = layout.with_extension("bundle");
    let image = format!("{}:{tag}", layout.display());
    run(Command::new(&umoci).args(["init", "--layout"]).arg(layout))?;
    run(Command::new(&umoci).args(["new", "--image", &image]))?;
    let mut unpack = Command::new(&umoci);
    unpack.args(["unpack", "--image", &image]);
    if !nix::unistd::geteuid().is_root() {
        unpack.arg("--rootless");
    }
    run(unpack.arg(&bundle))?;
    fs::write(bundle.join("rootfs/hello.txt"), content)?;
    run(Command::new(&umoci)
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    let _ = fs::remove_dir_all(&bundle);
    layout_manifest_digest(layout, tag)
}

/// The digest of the manifest tagged `tag` in an OCI image layout's `index.json`.
pub fn layout_manifest_digest(layout: &Path, tag: &str) -> Result<String> {
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let manifests = index["manifests"]
        .as_array()
        .ok_or_else(|| anyhow!("index.json of {} has no manifests", layout.display()))?;
    let with_tag = manifests
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag);
    let manifest = match (with_tag, manifests.as_slice()) {
        (Some(m), _) => m,
        (None, [only]) => only,
        _ => bail!("no manifest tagged {tag} in {}", layout.display()),
    };
    manifest["digest"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("manifest without digest in {}", layout.display()))
}

/// Pushes a umoci-built image with skopeo, inspects it remotely, copies it back into a new
/// OCI layout, and requires the same manifest digest everywhere (`--preserve-digests`).
pub fn skopeo_roundtrip(host: &str, credentials: Option<&Credentials>) -> Result<()> {
    let ws = workspace("skopeo")?;
    let layout = ws.path().join("image");
    let pushed = build_oci_image(&layout, "v1", &unique_content("skopeo"))?;
    let remote = format!("docker://{host}/{}:v1", unique_repo("skopeo"));
    let skopeo = || {
        let mut cmd = Command::new(tools::bin("skopeo"));
        cmd.env("REGISTRY_AUTH_FILE", ws.path().join("auth.json"))
            .arg("--insecure-policy");
        cmd
    };
    let creds = credentials.map(Credentials::colon_joined);

    let mut copy_in = skopeo();
    copy_in.args(["copy", "--preserve-digests", "--dest-tls-verify=false"]);
    if let Some(c) = &creds {
        copy_in.args(["--dest-creds", c]);
    }
    run(copy_in
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(&remote))
    .context("skopeo push")?;

    let inspect = |extra: &[&str]| -> Result<String> {
        let mut cmd = skopeo();
        cmd.args(["inspect", "--tls-verify=false"]).args(extra);
        if let Some(c) = &creds {
            cmd.args(["--creds", c]);
        }
        run(cmd.arg(&remote)).context("skopeo inspect")
    };
    let raw = inspect(&["--raw"])?;
    ensure_same("manifest bytes", &pushed, &sha256_digest(raw.as_bytes()))?;
    let digest = inspect(&["--format", "{{.Digest}}"])?;
    ensure_same("skopeo inspect digest", &pushed, digest.trim())?;

    let out = ws.path().join("pulled");
    let mut copy_out = skopeo();
    copy_out.args(["copy", "--preserve-digests", "--src-tls-verify=false"]);
    if let Some(c) = &creds {
        copy_out.args(["--src-creds", c]);
    }
    run(copy_out
        .arg(&remote)
        .arg(format!("oci:{}:v1", out.display())))
    .context("skopeo pull")?;
    ensure_same(
        "pulled layout",
        &pushed,
        &layout_manifest_digest(&out, "v1")?,
    )
}

/// Builds an image with `crane append` (one tar layer), then checks `crane digest`,
/// `crane manifest` bytes, a layer blob's bytes, and a pull + push copy to another
/// repository, all against the digest reported by the push.
pub fn crane_roundtrip(host: &str, credentials: Option<&Credentials>) -> Result<()> {
    let ws = workspace("crane")?;
    let crane = || {
        let mut cmd = Command::new(tools::bin("crane"));
        cmd.env("DOCKER_CONFIG", ws.path().join("docker"));
        cmd
    };
    if let Some(c) = credentials {
        run(crane().args(["auth", "login", host, "-u", &c.username, "-p", &c.password]))
            .context("crane auth login")?;
    }
    let layer_dir = ws.path().join("layer");
    fs::create_dir_all(&layer_dir)?;
    fs::write(layer_dir.join("hello.txt"), unique_content("crane"))?;
    let layer_tar = ws.path().join("layer.tar");
    run(Command::new(tools::bin("tar"))
        .arg("-C")
        .arg(&layer_dir)
        .arg("-cf")
        .arg(&layer_tar)
        .arg("."))?;

    let repo = format!("{host}/{}", unique_repo("crane"));
    let reference = format!("{repo}:v1");
    let appended = run(crane()
        .args(["append", "--insecure", "-f"])
        .arg(&layer_tar)
        .args(["-t", &reference]))
    .context("crane append (push)")?;
    let pushed = appended
        .trim()
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .ok_or_else(|| anyhow!("crane append printed no digest: {appended:?}"))?;
    ensure_digest("crane append", &pushed)?;

    let digest = run(crane().args(["digest", "--insecure", &reference]))?;
    ensure_same("crane digest", &pushed, digest.trim())?;
    let manifest = run(crane().args(["manifest", "--insecure", &reference]))?;
    ensure_same(
        "manifest bytes",
        &pushed,
        &sha256_digest(manifest.as_bytes()),
    )?;
    let manifest: serde_json::Value = serde_json::from_str(&manifest)?;
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .ok_or_else(|| anyhow!("manifest without layers: {manifest}"))?;
    // The blob is binary (gzip): write it to a file and hash the raw bytes.
    let blob_file = ws.path().join("layer.blob");
    process::run_to_file(
        crane().args(["blob", "--insecure", &format!("{repo}@{layer}")]),
        &blob_file,
    )
    .context("crane blob")?;
    ensure_same("layer blob", layer, &sha256_digest(&fs::read(&blob_file)?))?;

    let pulled = ws.path().join("pulled");
    run(crane()
        .args(["pull", "--insecure", "--format", "oci", &reference])
        .arg(&pulled))
    .context("crane pull")?;
    ensure_same(
        "pulled layout",
        &pushed,
        &layout_manifest_digest(&pulled, "v1")?,
    )?;
    let copy = format!("{host}/{}:v1", unique_repo("crane-copy"));
    run(crane().args(["push", "--insecure"]).arg(&pulled).arg(&copy))
        .context("crane push of the pulled layout")?;
    let copied = run(crane().args(["digest", "--insecure", &copy]))?;
    ensure_same("re-pushed copy", &pushed, copied.trim())
}

/// Pushes an artifact with an `artifactType`, attaches a referrer with `oras attach`,
/// requires `oras discover` to list it, and pulls both back byte for byte.
pub fn oras_roundtrip(host: &str, credentials: Option<&Credentials>) -> Result<()> {
    const ARTIFACT_TYPE: &str = "application/vnd.registry-harness.test.v1";
    const REFERRER_TYPE: &str = "application/vnd.registry-harness.signature.v1";
    let ws = workspace("oras")?;
    let files = ws.path().join("files");
    fs::create_dir_all(&files)?;
    let artifact = unique_content("oras artifact");
    let signature = unique_content("oras signature");
    fs::write(files.join("artifact.txt"), &artifact)?;
    fs::write(files.join("signature.txt"), &signature)?;
    let oras = || {
        let mut cmd = Command::new(tools::bin("oras"));
        cmd.current_dir(&files)
            .env("DOCKER_CONFIG", ws.path().join("docker"));
        cmd
    };
    let auth: Vec<String> = credentials
        .map(|c| {
            vec![
                "-u".into(),
                c.username.clone(),
                "-p".into(),
                c.password.clone(),
            ]
        })
        .unwrap_or_default();
    let reference = format!("{host}/{}:v1", unique_repo("oras"));

    let out = run(oras()
        .args(["push", "--plain-http", "--format", "json"])
        .args(&auth)
        .args(["--artifact-type", ARTIFACT_TYPE, &reference])
        .arg("artifact.txt:text/plain"))
    .context("oras push")?;
    let pushed = json_field(&out, "digest")?;
    ensure_digest("oras push", &pushed)?;

    let out = run(oras()
        .args(["attach", "--plain-http", "--format", "json"])
        .args(&auth)
        .args(["--artifact-type", REFERRER_TYPE, &reference])
        .arg("signature.txt:text/plain"))
    .context("oras attach")?;
    let referrer = json_field(&out, "digest")?;
    ensure_digest("oras attach", &referrer)?;

    let out = run(oras()
        .args(["discover", "--plain-http", "--format", "json"])
        .args(&auth)
        .arg(&reference))
    .context("oras discover")?;
    let discovered: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("oras discover output: {out}"))?;
    ensure!(
        contains_descriptor(&discovered, &referrer, REFERRER_TYPE),
        "oras discover does not list referrer {referrer} ({REFERRER_TYPE}): {out}"
    );

    let manifest_file = ws.path().join("manifest.json");
    run(oras()
        .args(["manifest", "fetch", "--plain-http"])
        .args(&auth)
        .arg("--output")
        .arg(&manifest_file)
        .arg(&reference))
    .context("oras manifest fetch")?;
    let manifest = fs::read(&manifest_file)?;
    ensure_same("manifest bytes", &pushed, &sha256_digest(&manifest))?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)?;
    ensure!(
        manifest["artifactType"] == ARTIFACT_TYPE,
        "artifactType lost: {manifest}"
    );

    let pulled = ws.path().join("pulled");
    run(oras()
        .args(["pull", "--plain-http"])
        .args(&auth)
        .arg(&reference)
        .arg("-o")
        .arg(&pulled))
    .context("oras pull")?;
    ensure!(
        fs::read_to_string(pulled.join("artifact.txt"))? == artifact,
        "pulled artifact differs from the pushed one"
    );
    let pulled_ref = ws.path().join("pulled-referrer");
    let by_digest = format!("{}@{referrer}", reference.trim_end_matches(":v1"));
    run(oras()
        .args(["pull", "--plain-http"])
        .args(&auth)
        .arg(&by_digest)
        .arg("-o")
        .arg(&pulled_ref))
    .context("oras pull of the referrer")?;
    ensure!(
        fs::read_to_string(pulled_ref.join("signature.txt"))? == signature,
        "pulled referrer differs from the attached one"
    );
    Ok(())
}

fn json_field(json: &str, field: &str) -> Result<String> {
    let value: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("not JSON: {json}"))?;
    value[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no {field} in {json}"))
}

/// Whether any object in `value` (at any depth) is a descriptor with this digest and
/// artifact type.
fn contains_descriptor(value: &serde_json::Value, digest: &str, artifact_type: &str) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            (map.get("digest").is_some_and(|d| d == digest)
                && map.get("artifactType").is_some_and(|t| t == artifact_type))
                || map
                    .values()
                    .any(|v| contains_descriptor(v, digest, artifact_type))
        }
        serde_json::Value::Array(items) => items
            .iter()
            .any(|v| contains_descriptor(v, digest, artifact_type)),
        _ => false,
    }
}

/// Builds an image with `podman build` (`FROM scratch` + `COPY`, vfs storage in a temporary
/// root), pushes it, removes every local image, pulls it back, and requires the digest
/// reported by the push.
pub fn podman_roundtrip(host: &str, credentials: Option<&Credentials>) -> Result<()> {
    let ws = workspace("podman")?;
    let context_dir = ws.path().join("context");
    fs::create_dir_all(&context_dir)?;
    fs::write(context_dir.join("hello.txt"), unique_content("podman"))?;
    fs::write(
        context_dir.join("Containerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\n",
    )?;
    // podman refuses a REGISTRY_AUTH_FILE that does not exist.
    fs::write(ws.path().join("auth.json"), "{\"auths\":{}}\n")?;
    let podman = || {
        let mut cmd = Command::new(tools::bin("podman"));
        cmd.env("REGISTRY_AUTH_FILE", ws.path().join("auth.json"))
            .env("TMPDIR", ws.path())
            .arg("--root")
            .arg(ws.path().join("storage"))
            .arg("--runroot")
            .arg(ws.path().join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ]);
        cmd
    };
    let creds: Vec<String> = credentials
        .map(|c| vec!["--creds".into(), c.colon_joined()])
        .unwrap_or_default();
    let local = "localhost/harness-podman:v1";
    let remote = format!("{host}/{}:v1", unique_repo("podman"));

    run(podman()
        .args(["build", "--isolation", "chroot", "-t", local])
        .arg(&context_dir))
    .context("podman build")?;
    let digest_file = ws.path().join("digest");
    run(podman()
        .args(["push", "--tls-verify=false", "--digestfile"])
        .arg(&digest_file)
        .args(&creds)
        .args([local, &format!("docker://{remote}")]))
    .context("podman push")?;
    let pushed = fs::read_to_string(&digest_file)?.trim().to_owned();
    ensure_digest("podman push", &pushed)?;

    run(podman().args(["rmi", "--all", "--force"])).context("podman rmi")?;
    let left = run(podman().args(["images", "--quiet"]))?;
    ensure!(left.trim().is_empty(), "images left after rmi: {left}");

    run(podman()
        .args(["pull", "--tls-verify=false"])
        .args(&creds)
        .arg(&remote))
    .context("podman pull")?;
    let pulled = run(podman().args(["image", "inspect", "--format", "{{.Digest}}", &remote]))?;
    ensure_same("podman pull", &pushed, pulled.trim())
}

/// A private containerd (own root, state and socket in a temporary directory), stopped with
/// its process group on drop.
#[derive(Debug)]
pub struct Containerd {
    socket: PathBuf,
    // Field order matters: the daemon stops before its directory is removed.
    _daemon: ChildGuard,
    _dir: TempDir,
}

impl Containerd {
    /// Starts containerd with the CRI plugin disabled and waits until `ctr version` answers.
    pub fn start() -> Result<Self> {
        // Short path: unix socket paths are limited to about 108 bytes.
        let dir = tempfile::Builder::new().prefix("ctd-").tempdir_in("/tmp")?;
        let socket = dir.path().join("c.sock");
        let config = dir.path().join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{root}\"\n\
                 state = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{socket}\"\n\
                 [ttrpc]\n  address = \"{socket}.ttrpc\"\n\
                 [metrics]\n  address = \"\"\n",
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                socket = socket.display(),
            ),
        )?;
        let mut cmd = Command::new(tools::bin("containerd"));
        cmd.arg("--config").arg(&config);
        let mut daemon = ChildGuard::spawn("containerd", cmd)?;
        let deadline = Instant::now() + process::READY_TIMEOUT;
        loop {
            ensure!(
                daemon.is_running(),
                "containerd exited during startup; log:\n{}",
                daemon.log()
            );
            if socket.exists() {
                let probe = process::run_unchecked(
                    Command::new(tools::bin("ctr"))
                        .arg("--address")
                        .arg(&socket)
                        .arg("version"),
                    Duration::from_secs(10),
                )?;
                if probe.status.success() {
                    break;
                }
            }
            ensure!(
                Instant::now() < deadline,
                "containerd not ready; log:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            socket,
            _daemon: daemon,
            _dir: dir,
        })
    }

    /// A `ctr` command bound to this daemon and namespace `test`.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new(tools::bin("ctr"));
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "test"]);
        cmd
    }

    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// Imports a umoci-built image into a private containerd, pushes it with `ctr`, deletes
/// every local image and blob, pulls it back with `ctr images pull`, and requires the same
/// manifest digest and intact content.
pub fn ctr_roundtrip(host: &str, credentials: Option<&Credentials>) -> Result<()> {
    let ws = workspace("ctr")?;
    let layout = ws.path().join("image");
    let pushed = build_oci_image(&layout, "v1", &unique_content("ctr"))?;
    let archive = ws.path().join("image.tar");
    run(Command::new(tools::bin("tar"))
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."))?;

    let containerd = Containerd::start()?;
    let reference = format!("{host}/{}:v1", unique_repo("ctr"));
    let user: Vec<String> = credentials
        .map(|c| vec!["--user".into(), c.colon_joined()])
        .unwrap_or_default();

    run(containerd
        .ctr()
        .args(["images", "import", "--no-unpack", "--digests"])
        .arg(&archive))
    .context("ctr images import")?;
    let imported = image_digests(&containerd)?;
    let source = imported
        .iter()
        .find(|(_, digest)| *digest == pushed)
        .map(|(name, _)| name.clone())
        .ok_or_else(|| anyhow!("imported images {imported:?} lack manifest {pushed}"))?;
    run(containerd
        .ctr()
        .args(["images", "tag", &source, &reference]))
    .context("ctr tag")?;
    run(containerd
        .ctr()
        .args(["images", "push", "--plain-http"])
        .args(&user)
        .arg(&reference))
    .context("ctr images push")?;

    // Forget everything so the pull below has to fetch from the registry.
    let names: Vec<String> = image_digests(&containerd)?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    run(containerd.ctr().args(["images", "rm"]).args(&names)).context("ctr images rm")?;
    let blobs = run(containerd.ctr().args(["content", "ls", "--quiet"]))?;
    let blobs: Vec<&str> = blobs.split_whitespace().collect();
    if !blobs.is_empty() {
        run(containerd.ctr().args(["content", "rm"]).args(&blobs)).context("ctr content rm")?;
    }
    let left = run(containerd.ctr().args(["content", "ls", "--quiet"]))?;
    ensure!(left.trim().is_empty(), "content left after rm: {left}");

    run(containerd
        .ctr()
        .args(["images", "pull", "--plain-http", "--snapshotter", "native"])
        .args(&user)
        .arg(&reference))
    .context("ctr images pull")?;
    let pulled = image_digests(&containerd)?;
    let digest = pulled
        .iter()
        .find(|(name, _)| *name == reference)
        .map(|(_, d)| d.clone())
        .ok_or_else(|| anyhow!("pulled image {reference} not listed: {pulled:?}"))?;
    ensure_same("ctr pull", &pushed, &digest)?;
    let check = run(containerd.ctr().args(["images", "check"]))?;
    ensure!(
        check
            .lines()
            .any(|l| l.starts_with(&reference) && l.contains("complete")),
        "pulled image is incomplete:\n{check}"
    );
    Ok(())
}

/// `(name, target digest)` of every image in the `test` namespace.
fn image_digests(containerd: &Containerd) -> Result<Vec<(String, String)>> {
    let listing = run(containerd.ctr().args(["images", "ls"]))?;
    Ok(listing
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let name = cols.next()?;
            let digest = cols.find(|c| c.starts_with("sha256:"))?;
            Some((name.to_owned(), digest.to_owned()))
        })
        .collect())
}

/// Packages a generated chart, `helm push`es it to `oci://host/...`, `helm pull`s it back,
/// and requires the same digest and identical chart archive bytes.
pub fn helm_roundtrip(host: &str, credentials: Option<&Credentials>) -> Result<()> {
    let ws = workspace("helm")?;
    let chart = ws.path().join("chart/harness-chart");
    fs::create_dir_all(chart.join("templates"))?;
    fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: harness-chart\nversion: 0.1.0\ndescription: round trip test chart\n",
    )?;
    fs::write(
        chart.join("templates/configmap.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: harness\ndata:\n  marker: {:?}\n",
            unique_content("helm").trim()
        ),
    )?;
    let helm = || {
        let mut cmd = Command::new(tools::bin("helm"));
        for (var, dir) in [
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ] {
            cmd.env(var, ws.path().join(dir));
        }
        cmd.env("HELM_REGISTRY_CONFIG", ws.path().join("registry.json"));
        cmd
    };
    if let Some(c) = credentials {
        run(helm()
            .args(["registry", "login", host, "--insecure", "--plain-http"])
            .args(["--username", &c.username, "--password", &c.password]))
        .context("helm registry login")?;
    }
    let packaged_dir = ws.path().join("packaged");
    run(helm()
        .arg("package")
        .arg(&chart)
        .arg("-d")
        .arg(&packaged_dir))
    .context("helm package")?;
    let packaged = packaged_dir.join("harness-chart-0.1.0.tgz");
    let namespace = format!("oci://{host}/{}", unique_repo("helm"));

    let push = process::run_unchecked(
        helm()
            .arg("push")
            .arg(&packaged)
            .args([&namespace, "--plain-http"]),
        process::COMMAND_TIMEOUT,
    )?;
    ensure!(
        push.status.success(),
        "helm push failed ({}): {}",
        push.status,
        push.stderr
    );
    let pushed = digest_line(&format!("{}{}", push.stdout, push.stderr)).ok_or_else(|| {
        anyhow!(
            "helm push printed no digest: {}{}",
            push.stdout,
            push.stderr
        )
    })?;

    let pulled_dir = ws.path().join("pulled");
    fs::create_dir_all(&pulled_dir)?;
    let pull = process::run_unchecked(
        helm()
            .args(["pull", &format!("{namespace}/harness-chart")])
            .args(["--version", "0.1.0", "--plain-http", "-d"])
            .arg(&pulled_dir),
        process::COMMAND_TIMEOUT,
    )?;
    ensure!(
        pull.status.success(),
        "helm pull failed ({}): {}",
        pull.status,
        pull.stderr
    );
    let pulled = digest_line(&format!("{}{}", pull.stdout, pull.stderr)).ok_or_else(|| {
        anyhow!(
            "helm pull printed no digest: {}{}",
            pull.stdout,
            pull.stderr
        )
    })?;
    ensure_same("helm manifest digest", &pushed, &pulled)?;
    ensure_same(
        "chart archive",
        &sha256_digest(&fs::read(&packaged)?),
        &sha256_digest(&fs::read(pulled_dir.join("harness-chart-0.1.0.tgz"))?),
    )
}

/// The digest on a `Digest: sha256:...` line of helm's output.
fn digest_line(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Digest:"))
        .map(|d| d.trim().to_owned())
}

/// The client of a one-way transfer ([`push_image`], [`pull_image`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// go-containerregistry's `crane` (`crane auth login` with the credentials).
    Crane,
    /// `skopeo copy` (`--dest-creds` / `--src-creds`).
    Skopeo,
}

impl Client {
    /// The client's name, as in its command.
    pub fn name(self) -> &'static str {
        match self {
            Self::Crane => "crane",
            Self::Skopeo => "skopeo",
        }
    }
}

/// The outcome of a push or pull that the registry may refuse: what the client said, and the
/// manifest digest involved.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The client command's exit status, stdout and stderr.
    pub output: process::Output,
    /// For a push: the digest of the image offered (known whether or not the push succeeded).
    /// For a pull: the digest of the image received, if it succeeded.
    pub digest: Option<String>,
}

impl Transfer {
    /// Whether the client reported success.
    pub fn succeeded(&self) -> bool {
        self.output.status.success()
    }

    /// The digest of a successful transfer; otherwise an error with the client's stderr.
    pub fn digest_or_error(&self, what: &str) -> Result<String> {
        ensure!(
            self.succeeded(),
            "{what} failed ({}): {}",
            self.output.status,
            self.output.stderr.trim()
        );
        self.digest
            .clone()
            .ok_or_else(|| anyhow!("{what} succeeded but no digest is known"))
    }
}

/// Builds a fresh one-layer image with umoci and pushes it to `reference`
/// (`host/repository:tag`) with `client`, as `credentials` or anonymously. A refused push is
/// not an error: see [`Transfer::succeeded`]; errors are failures to build or run anything.
/// The manifest digest is preserved by both clients, so [`Transfer::digest`] is what a pull
/// returns.
pub fn push_image(
    client: Client,
    reference: &str,
    credentials: Option<&Credentials>,
) -> Result<Transfer> {
    let ws = workspace(&format!("{}-push", client.name()))?;
    let layout = ws.path().join("image");
    let tag = "v1";
    let digest = build_oci_image(&layout, tag, &unique_content(client.name()))?;
    let source = format!("{}:{tag}", layout.display());
    let output = match client {
        Client::Crane => {
            let mut cmd = crane_in(&ws, reference, credentials)?;
            cmd.args(["push", "--insecure"]).arg(&layout).arg(reference);
            process::run_unchecked(&mut cmd, process::COMMAND_TIMEOUT)?
        }
        Client::Skopeo => {
            let mut cmd = skopeo_in(&ws);
            cmd.args(["copy", "--preserve-digests", "--dest-tls-verify=false"]);
            if let Some(c) = credentials {
                cmd.args(["--dest-creds", &c.colon_joined()]);
            }
            cmd.arg(format!("oci:{source}"))
                .arg(format!("docker://{reference}"));
            process::run_unchecked(&mut cmd, process::COMMAND_TIMEOUT)?
        }
    };
    Ok(Transfer {
        output,
        digest: Some(digest),
    })
}

/// Pulls `reference` (`host/repository:tag` or `host/repository@digest`) with `client` into a
/// temporary OCI layout, as `credentials` or anonymously. A refused pull is not an error: see
/// [`Transfer::succeeded`]; on success [`Transfer::digest`] is the received manifest's digest.
pub fn pull_image(
    client: Client,
    reference: &str,
    credentials: Option<&Credentials>,
) -> Result<Transfer> {
    let ws = workspace(&format!("{}-pull", client.name()))?;
    let pulled = ws.path().join("pulled");
    let tag = "pulled";
    let output = match client {
        Client::Crane => {
            let mut cmd = crane_in(&ws, reference, credentials)?;
            cmd.args(["pull", "--insecure", "--format", "oci", reference])
                .arg(&pulled);
            process::run_unchecked(&mut cmd, process::COMMAND_TIMEOUT)?
        }
        Client::Skopeo => {
            let mut cmd = skopeo_in(&ws);
            cmd.args(["copy", "--preserve-digests", "--src-tls-verify=false"]);
            if let Some(c) = credentials {
                cmd.args(["--src-creds", &c.colon_joined()]);
            }
            cmd.arg(format!("docker://{reference}"))
                .arg(format!("oci:{}:{tag}", pulled.display()));
            process::run_unchecked(&mut cmd, process::COMMAND_TIMEOUT)?
        }
    };
    let digest = if output.status.success() {
        Some(layout_manifest_digest(&pulled, tag)?)
    } else {
        None
    };
    Ok(Transfer { output, digest })
}

/// A `crane` command with its configuration in `ws`, logged in to `reference`'s registry
/// when `credentials` are given.
fn crane_in(ws: &TempDir, reference: &str, credentials: Option<&Credentials>) -> Result<Command> {
    let crane = || {
        let mut cmd = Command::new(tools::bin("crane"));
        cmd.env("DOCKER_CONFIG", ws.path().join("docker"));
        cmd
    };
    if let Some(c) = credentials {
        let host = reference
            .split_once('/')
            .map(|(host, _)| host)
            .ok_or_else(|| anyhow!("reference without a registry host: {reference}"))?;
        run(crane().args(["auth", "login", host, "-u", &c.username, "-p", &c.password]))
            .context("crane auth login")?;
    }
    Ok(crane())
}

/// A fresh repository name in `namespace` (like [`unique_repo`], which uses `harness`).
pub fn unique_repo_in(namespace: &str, client: &str) -> String {
    let repo = unique_repo(client);
    let name = repo.strip_prefix("harness/").unwrap_or(&repo);
    format!("{namespace}/{name}")
}

/// A `skopeo` command with its auth file in `ws` and no signature policy.
fn skopeo_in(ws: &TempDir) -> Command {
    let mut cmd = Command::new(tools::bin("skopeo"));
    cmd.env("REGISTRY_AUTH_FILE", ws.path().join("auth.json"))
        .arg("--insecure-policy");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_of_the_bytes() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn repositories_are_unique() {
        assert_ne!(unique_repo("x"), unique_repo("x"));
    }

    #[test]
    fn finds_nested_referrers() {
        let v = serde_json::json!({"digest": "sha256:a", "referrers": [
            {"digest": "sha256:b", "artifactType": "t"}]});
        assert!(contains_descriptor(&v, "sha256:b", "t"));
        assert!(!contains_descriptor(&v, "sha256:b", "other"));
        assert!(!contains_descriptor(&v, "sha256:c", "t"));
    }

    #[test]
    fn reads_helm_digest_lines() {
        let out = "Pushed: x/harness-chart:0.1.0\nDigest: sha256:abc\n";
        assert_eq!(digest_line(out).as_deref(), Some("sha256:abc"));
        assert_eq!(digest_line("nothing"), None);
    }
}
