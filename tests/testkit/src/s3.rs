//! A throwaway S3 server (MinIO built by `tests/harness/install`) on an ephemeral loopback
//! port, with a fresh data directory and one bucket.
//!
//! MinIO honours conditional writes (`If-None-Match: *` and `If-Match` on `PutObject`),
//! which the registry's S3 backend relies on.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use tempfile::TempDir;

use crate::process::{self, ChildGuard, Readiness};
use crate::tools;

/// Access key of every test S3 server.
pub const ACCESS_KEY: &str = "harness";
/// Secret key of every test S3 server.
pub const SECRET_KEY: &str = "harness-secret-key";
/// Region every test S3 server reports and signs with.
pub const REGION: &str = "us-east-1";
/// Bucket created at start.
pub const BUCKET: &str = "registry";

/// A running S3 server; stopped, and its data deleted, on drop.
#[derive(Debug)]
pub struct S3Server {
    endpoint: String,
    address: IpAddr,
    port: u16,
    console: u16,
    // Field order matters: the server stops before its data directory is removed.
    _server: ChildGuard,
    _data: TempDir,
}

impl S3Server {
    /// Starts a server and creates [`BUCKET`].
    ///
    /// # Panics
    /// If MinIO is not installed or does not start (the message includes its log).
    pub fn start() -> Self {
        Self::try_start().expect("starting the test S3 server")
    }

    /// Starts a server and creates [`BUCKET`], reporting failures as errors.
    pub fn try_start() -> Result<Self> {
        Self::try_start_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Starts a server listening on `address` (for example a node's pod-bridge address from
    /// [`crate::cluster::Cluster::node_gateway`], so that pods reach it) and creates
    /// [`BUCKET`].
    pub fn try_start_on(address: IpAddr) -> Result<Self> {
        let minio = tools::bin("minio");
        let mut last_err = None;
        // The free port can be taken between probing and binding: retry a few times.
        for _ in 0..3 {
            let data = tempfile::Builder::new().prefix("harness-s3-").tempdir()?;
            let port = process::free_port();
            let console = process::free_port();
            let endpoint = format!("http://{}", std::net::SocketAddr::new(address, port));
            match spawn_minio(&minio, data.path(), address, port, console) {
                Ok(server) => {
                    let s3 = Self {
                        endpoint,
                        address,
                        port,
                        console,
                        _server: server,
                        _data: data,
                    };
                    s3.create_bucket(BUCKET)?;
                    return Ok(s3);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// SIGKILLs the server's process group and reaps it, keeping its port and data directory
    /// for [`S3Server::restart`]. Requests to the endpoint fail until then.
    pub fn kill(&mut self) {
        if !self._server.is_running() {
            return;
        }
        let group = nix::unistd::Pid::from_raw(self._server.pid() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        self._server.stop();
    }

    /// Starts the server again on the same port and data directory (after [`S3Server::kill`],
    /// or stopping a running one first) and waits until it is ready; the bucket and its
    /// objects are those on disk.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let minio = tools::bin("minio");
        // The old listener is gone, but give a lingering socket a few chances to be released.
        let mut attempt = 0;
        loop {
            match spawn_minio(
                &minio,
                self._data.path(),
                self.address,
                self.port,
                self.console,
            ) {
                Ok(server) => {
                    self._server = server;
                    return Ok(());
                }
                Err(err) if attempt < 2 => {
                    eprintln!("S3 server did not restart, retrying: {err:#}");
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(err) => return Err(err.context("restarting the test S3 server")),
            }
        }
    }

    /// Endpoint URL, e.g. `http://127.0.0.1:40123` (path-style addressing).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// Access key id.
    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    /// Secret access key.
    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// Region.
    pub fn region(&self) -> &str {
        REGION
    }

    /// The server's data directory (deleted on drop).
    pub fn data_dir(&self) -> &std::path::Path {
        self._data.path()
    }

    /// The standard AWS environment variables (plus `S3_BUCKET`) pointing at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("S3_BUCKET", BUCKET.to_owned()),
        ]
    }

    /// Creates another bucket.
    ///
    /// MinIO can answer 503 for a moment after it reports ready (its object layer is still
    /// initialising), so the creation is retried for a few seconds.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = process::run(
                Command::new(tools::bin("curl"))
                    .args(["-fsS", "-o", "/dev/null", "-X", "PUT"])
                    .args(["--aws-sigv4", &format!("aws:amz:{REGION}:s3")])
                    .args(["-u", &format!("{ACCESS_KEY}:{SECRET_KEY}")])
                    .arg(format!("{}/{name}", self.endpoint)),
            );
            match attempt {
                Ok(_) => return Ok(()),
                Err(err) if std::time::Instant::now() < deadline => {
                    eprintln!("bucket {name} not accepted yet, retrying: {err:#}");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(err) => return Err(err.context(format!("creating bucket {name}"))),
            }
        }
    }
}

/// Starts MinIO on `address:port` (console on loopback `console`) serving `data`, and waits
/// until it is ready.
fn spawn_minio(
    minio: &std::path::Path,
    data: &std::path::Path,
    address: IpAddr,
    port: u16,
    console: u16,
) -> Result<ChildGuard> {
    let listen = std::net::SocketAddr::new(address, port);
    let mut cmd = Command::new(minio);
    cmd.arg("server")
        .arg(data)
        .args(["--quiet", "--address", &listen.to_string()])
        .args(["--console-address", &format!("127.0.0.1:{console}")])
        .env("MINIO_ROOT_USER", ACCESS_KEY)
        .env("MINIO_ROOT_PASSWORD", SECRET_KEY)
        .env("MINIO_REGION", REGION)
        .env("MINIO_BROWSER", "off")
        .env("MINIO_UPDATE", "off");
    let mut server = ChildGuard::spawn("minio", cmd)?;
    let ready = Readiness::Http(format!("http://{listen}/minio/health/ready"));
    server.wait_ready(&ready, Duration::from_secs(60))?;
    Ok(server)
}
