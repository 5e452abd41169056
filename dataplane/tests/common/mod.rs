//! Shared helpers of the end-to-end tests: the real `dataplane` binary on an ephemeral
//! loopback port, in its own process group, killed (with the group) on drop.
#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// How long the server gets to log its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `dataplane serve`.
pub struct Dataplane {
    child: Child,
    /// The bound address, read from the `listening on ADDR` log line.
    pub addr: SocketAddr,
    log_path: PathBuf,
    _log_dir: TempDir,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("pid", &self.child.id())
            .field("addr", &self.addr)
            .finish()
    }
}

/// The `dataplane` binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dataplane")
}

impl Dataplane {
    /// Starts `dataplane serve --listen 127.0.0.1:0 --root ROOT EXTRA...` and waits for its
    /// address.
    pub fn start(root: &Path, extra: &[&str]) -> Self {
        let mut args = vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--root".to_owned(),
            root.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_args(&args).unwrap_or_else(|log| panic!("dataplane did not start:\n{log}"))
    }

    /// Starts the binary with exactly these arguments; `Err(log)` if it exits before logging
    /// its address.
    pub fn start_args(args: &[String]) -> Result<Self, String> {
        Self::start_args_env(args, &[])
    }

    /// Like [`Dataplane::start_args`], with extra environment variables (`RUST_LOG` is unset
    /// unless given here).
    pub fn start_args_env(args: &[String], env: &[(&str, &str)]) -> Result<Self, String> {
        let log_dir = tempfile::Builder::new()
            .prefix("dataplane-log-")
            .tempdir()
            .unwrap();
        let log_path = log_dir.path().join("stderr.log");
        let log = File::create(&log_path).unwrap();
        let mut child = Command::new(binary())
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("starting the dataplane binary");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(addr) = listening_addr(&text) {
                return Ok(Self {
                    child,
                    addr,
                    log_path,
                    _log_dir: log_dir,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}; log:\n{text}"));
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                return Err(format!(
                    "no `listening on` line after {START_TIMEOUT:?}:\n{text}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal)
            .expect("signalling the server");
    }

    /// SIGKILLs the server and reaps it.
    pub fn kill(&mut self) {
        kill_group(&mut self.child);
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- dataplane log ----\n{}\n---- end ----", self.log());
        }
        kill_group(&mut self.child);
    }
}

fn kill_group(child: &mut Child) {
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
}

/// The address of the `listening on ADDR` log line (text or JSON logs).
pub fn listening_addr(log: &str) -> Option<SocketAddr> {
    let at = log.find("listening on ")? + "listening on ".len();
    let rest = &log[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Deterministic pseudo-random bytes (xorshift), different for each seed.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A plain HTTP client that never pools connections across a server restart.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Resolves an upload `Location` header against the server URL.
pub fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

/// Appends `key=value` to a URL that may already have a query.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// Pushes a blob in one `POST ?digest=`; returns the status.
pub async fn push_blob_monolithic(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    data: &[u8],
) -> reqwest::Result<reqwest::StatusCode> {
    let digest = sha256(data);
    let response = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await?;
    Ok(response.status())
}

/// Pushes a blob with `POST`, one `PATCH` per chunk (with `Content-Range`) and a final
/// `PUT ?digest=`; returns the status of the `PUT` (or of the first failing step).
pub async fn push_blob_chunked(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    data: &[u8],
    chunk: usize,
) -> reqwest::Result<reqwest::StatusCode> {
    let response = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        return Ok(response.status());
    }
    let mut location = absolute(base, location_of(&response));
    let mut offset = 0;
    for piece in data.chunks(chunk) {
        let end = offset + piece.len() - 1;
        let response = client
            .patch(&location)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{offset}-{end}"))
            .body(piece.to_vec())
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::ACCEPTED {
            return Ok(response.status());
        }
        location = absolute(base, location_of(&response));
        offset += piece.len();
    }
    let response = client
        .put(with_query(&location, "digest", &sha256(data)))
        .send()
        .await?;
    Ok(response.status())
}

fn location_of(response: &reqwest::Response) -> &str {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("upload responses carry a Location")
}

/// An OCI image manifest referencing `config` and `layers` (as `(digest, size)`).
pub fn image_manifest(config: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(digest, size)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest,
                "size": size,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.0,
            "size": config.1,
        },
        "layers": layers,
    }))
    .unwrap()
}

/// `PUT`s a manifest under `reference`; returns the status.
pub async fn put_manifest(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    manifest: &[u8],
) -> reqwest::Result<reqwest::StatusCode> {
    let response = client
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_vec())
        .send()
        .await?;
    Ok(response.status())
}

/// The server's `/metrics` text.
pub async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("reading /metrics")
}

/// `GET`s a URL; returns the status, the `Docker-Content-Digest` header and the body.
pub async fn get(client: &reqwest::Client, url: &str) -> (u16, Option<String>, Vec<u8>) {
    let response = client.get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    let digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.expect("reading a body").to_vec();
    (status, digest, body)
}

/// A `dataplane serve` started with a configuration document, written to a temporary file,
/// and storage under a temporary root; both live as long as the server.
pub struct ConfiguredDataplane {
    /// The running server.
    pub server: Dataplane,
    _config_dir: TempDir,
    _root: TempDir,
}

impl std::ops::Deref for ConfiguredDataplane {
    type Target = Dataplane;
    fn deref(&self) -> &Dataplane {
        &self.server
    }
}

impl ConfiguredDataplane {
    /// Starts the binary with `config` (`--config FILE --root DIR`).
    pub fn start(config: &dataplane::config::Config) -> Self {
        let config_dir = tempfile::tempdir().unwrap();
        let path = config_dir.path().join("config.yaml");
        std::fs::write(&path, serde_norway::to_string(config).unwrap()).unwrap();
        let root = tempfile::tempdir().unwrap();
        let server = Dataplane::start(root.path(), &["--config", path.to_str().unwrap()]);
        Self {
            server,
            _config_dir: config_dir,
            _root: root,
        }
    }
}

/// A `dataplane serve` on S3 storage: the server plus the directory holding its configuration.
pub struct S3Dataplane {
    /// The running server.
    pub server: Dataplane,
    _config_dir: TempDir,
}

impl std::ops::Deref for S3Dataplane {
    type Target = Dataplane;
    fn deref(&self) -> &Dataplane {
        &self.server
    }
}

impl std::ops::DerefMut for S3Dataplane {
    fn deref_mut(&mut self) -> &mut Dataplane {
        &mut self.server
    }
}

impl S3Dataplane {
    /// Starts a replica on `s3`'s bucket under `prefix`, reaching S3 at `endpoint` (normally
    /// `s3.endpoint()`), with the server's credentials in the process environment.
    pub fn start(s3: &testkit::s3::S3Server, prefix: &str, endpoint: &str) -> Self {
        Self::start_with(s3, prefix, endpoint, &[])
    }

    /// [`S3Dataplane::start`] with more settings of the `storage.s3` section, one YAML line
    /// each (e.g. `"redirect: {ttl: 5m}"`).
    pub fn start_with(
        s3: &testkit::s3::S3Server,
        prefix: &str,
        endpoint: &str,
        settings: &[&str],
    ) -> Self {
        Self::start_with_args(s3, prefix, endpoint, settings, &[])
    }

    /// [`S3Dataplane::start_with`], with more arguments to `dataplane serve`.
    pub fn start_with_args(
        s3: &testkit::s3::S3Server,
        prefix: &str,
        endpoint: &str,
        settings: &[&str],
        extra_args: &[&str],
    ) -> Self {
        Self::start_with_document(s3, prefix, endpoint, settings, "", extra_args)
    }

    /// [`S3Dataplane::start_with_args`], with more top-level sections of the document
    /// (YAML, e.g. `"gc: {grace: 1s}\n"`).
    pub fn start_with_document(
        s3: &testkit::s3::S3Server,
        prefix: &str,
        endpoint: &str,
        settings: &[&str],
        document: &str,
        extra_args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let yaml = format!(
            "apiVersion: registry.thalassa.cloud/v1alpha1\n\
             kind: DataPlaneConfig\n\
             region: test\n\
             storage:\n  \
               s3:\n    \
                 bucket: {bucket}\n    \
                 region: {region}\n    \
                 endpoint: {endpoint}\n    \
                 prefix: {prefix}\n    \
                 forcePathStyle: true\n",
            bucket = s3.bucket(),
            region = s3.region(),
        );
        let yaml = settings
            .iter()
            .fold(yaml, |yaml, line| format!("{yaml}    {line}\n"));
        std::fs::write(&path, format!("{yaml}{document}")).unwrap();
        let mut args = vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--config".to_owned(),
            path.display().to_string(),
        ];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        let server = Dataplane::start_args_env(
            &args,
            &[
                ("AWS_ACCESS_KEY_ID", s3.access_key()),
                ("AWS_SECRET_ACCESS_KEY", s3.secret_key()),
            ],
        )
        .unwrap_or_else(|log| panic!("dataplane on S3 did not start:\n{log}"));
        Self {
            server,
            _config_dir: dir,
        }
    }
}

/// Chunk size of [`SlowUpload`] bodies.
pub const SLOW_CHUNK: usize = 64 * 1024;
/// Chunks of a [`SlowUpload`] body.
pub const SLOW_CHUNKS: usize = 40;
/// Pause between two chunks of a [`SlowUpload`] body (about four seconds in all).
pub const SLOW_CHUNK_PAUSE: Duration = Duration::from_millis(100);

/// A blob upload whose final `PUT` streams its body slowly, for shutdown tests: started with
/// [`SlowUpload::start`], which returns once the first chunk is on the wire.
#[allow(dead_code)]
pub struct SlowUpload {
    /// The blob's bytes.
    pub data: bytes::Bytes,
    /// The blob's digest.
    pub digest: String,
    /// The `PUT`, resolving to its status.
    pub put: tokio::task::JoinHandle<reqwest::Result<u16>>,
}

#[allow(dead_code)]
impl SlowUpload {
    /// Opens a session in `repo` on `base` and starts the slow final `PUT` of
    /// `SLOW_CHUNK * SLOW_CHUNKS` pseudo-random bytes.
    pub async fn start(client: &reqwest::Client, base: &str, repo: &str) -> Self {
        let data = bytes::Bytes::from(pseudo_random(7, SLOW_CHUNK * SLOW_CHUNKS));
        let digest = sha256(&data);
        let response = client
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let location = absolute(base, response.headers()["location"].to_str().unwrap());

        let (first_sent_tx, first_sent_rx) = tokio::sync::oneshot::channel();
        let body_data = data.clone();
        let body =
            futures_util::stream::unfold((0usize, Some(first_sent_tx)), move |(i, mut first)| {
                let data = body_data.clone();
                async move {
                    if i == SLOW_CHUNKS {
                        return None;
                    }
                    if i > 0 {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(());
                        }
                        tokio::time::sleep(SLOW_CHUNK_PAUSE).await;
                    }
                    let piece = data.slice(i * SLOW_CHUNK..(i + 1) * SLOW_CHUNK);
                    Some((Ok::<_, std::io::Error>(piece), (i + 1, first)))
                }
            });
        let upload_client = client.clone();
        let put_url = with_query(&location, "digest", &digest);
        let put = tokio::spawn(async move {
            upload_client
                .put(put_url)
                .header("content-type", "application/octet-stream")
                .header("content-length", (SLOW_CHUNK * SLOW_CHUNKS).to_string())
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
        first_sent_rx.await.unwrap();
        Self { data, digest, put }
    }
}

/// Polls `base/readyz` for up to a second after `since`; true once it answered 503.
#[allow(dead_code)]
pub async fn turns_not_ready(client: &reqwest::Client, base: &str, since: Instant) -> bool {
    while since.elapsed() < Duration::from_millis(1000) {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status() == 503
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Waits (up to 10 s, else panics) until `addr` refuses new connections.
#[allow(dead_code)]
pub async fn wait_listener_closed(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the listener never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
