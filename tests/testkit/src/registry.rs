//! Peer registries: CNCF Distribution v3 (the reference implementation, built by the harness)
//! and Debian's `docker-registry` (Distribution 2.8, a second peer for benchmarks).
//!
//! Both serve plain HTTP on an ephemeral loopback port with deletes enabled (needed by the
//! conformance suite's content-management tests); without authentication by default, or with
//! HTTP basic authentication for one user ([`Distribution::start_with_auth`]).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::clients::Credentials;
use crate::process::{self, ChildGuard, READY_TIMEOUT, Readiness};
use crate::s3::S3Server;
use crate::tools;

/// Where a peer registry stores its content.
#[derive(Debug, Clone, Copy)]
pub enum Storage<'a> {
    /// A temporary directory, deleted on drop.
    Filesystem,
    /// The bucket of a running [`S3Server`] (redirects disabled, path-style requests).
    S3(&'a S3Server),
}

/// A running registry on loopback; stopped and its temporary storage deleted on drop.
#[derive(Debug)]
pub struct PeerRegistry {
    host: String,
    // Field order matters: the server stops before its directory is removed.
    _server: ChildGuard,
    _dir: TempDir,
}

impl PeerRegistry {
    /// `127.0.0.1:PORT`, the form registry clients expect in references.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    fn start(
        name: &str,
        binary: &Path,
        storage: Storage<'_>,
        user: Option<&Credentials>,
    ) -> Result<Self> {
        let mut last_err = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("harness-{name}-"))
                .tempdir()?;
            let port = process::free_port();
            let host = format!("127.0.0.1:{port}");
            let htpasswd = match user {
                Some(user) => {
                    let path = dir.path().join("htpasswd");
                    // Cost 4, the minimum: this only guards a throwaway test registry.
                    let hash = bcrypt::hash(&user.password, 4)?;
                    std::fs::write(&path, format!("{}:{hash}\n", user.username))?;
                    Some(path)
                }
                None => None,
            };
            let config = dir.path().join("config.yml");
            let data = dir.path().join("data");
            let yaml = render_config(&host, &data, storage, htpasswd.as_deref());
            std::fs::write(&config, yaml).context("writing registry config")?;
            let mut cmd = Command::new(binary);
            cmd.arg("serve")
                .arg(&config)
                // The default OpenTelemetry exporter would try https://localhost:4318.
                .env("OTEL_TRACES_EXPORTER", "none");
            let mut server = ChildGuard::spawn(name, cmd)?;
            // With authentication, /v2/ answers 401; the TCP port is the best signal then.
            let ready = match user {
                None => Readiness::Http(format!("http://{host}/v2/")),
                Some(_) => Readiness::Tcp(([127, 0, 0, 1], port).into()),
            };
            match server.wait_ready(&ready, READY_TIMEOUT) {
                Ok(()) => {
                    return Ok(Self {
                        host,
                        _server: server,
                        _dir: dir,
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }
}

fn render_config(host: &str, root: &Path, storage: Storage<'_>, htpasswd: Option<&Path>) -> String {
    let mut yaml = String::new();
    let _ = writeln!(yaml, "version: 0.1");
    let _ = writeln!(
        yaml,
        "log:\n  level: warn\n  accesslog:\n    disabled: true"
    );
    let _ = writeln!(yaml, "http:\n  addr: {host}");
    let _ = writeln!(yaml, "health:\n  storagedriver:\n    enabled: false");
    if let Some(path) = htpasswd {
        let _ = writeln!(
            yaml,
            "auth:\n  htpasswd:\n    realm: harness\n    path: {}",
            path.display()
        );
    }
    let _ = writeln!(yaml, "storage:");
    let _ = writeln!(yaml, "  delete:\n    enabled: true");
    let _ = writeln!(yaml, "  redirect:\n    disable: true");
    match storage {
        Storage::Filesystem => {
            let _ = writeln!(yaml, "  filesystem:\n    rootdirectory: {}", root.display());
        }
        Storage::S3(s3) => {
            let _ = writeln!(yaml, "  s3:");
            for (key, value) in [
                ("region", s3.region()),
                ("regionendpoint", s3.endpoint()),
                ("bucket", s3.bucket()),
                ("accesskey", s3.access_key()),
                ("secretkey", s3.secret_key()),
            ] {
                let _ = writeln!(yaml, "    {key}: \"{value}\"");
            }
            let _ = writeln!(
                yaml,
                "    forcepathstyle: true\n    secure: false\n    v4auth: true\n    rootdirectory: /peer"
            );
        }
    }
    yaml
}

/// CNCF Distribution v3 (`registry`, built by the harness).
#[derive(Debug)]
pub struct Distribution(PeerRegistry);

impl Distribution {
    /// Starts Distribution v3 with filesystem storage in a temporary directory.
    ///
    /// # Panics
    /// If the binary is missing or the server does not become ready (with its log).
    pub fn start() -> Self {
        Self::start_with(Storage::Filesystem).expect("starting Distribution v3")
    }

    /// Starts Distribution v3 with the given storage.
    pub fn start_with(storage: Storage<'_>) -> Result<Self> {
        PeerRegistry::start("distribution", &tools::bin("registry"), storage, None).map(Self)
    }

    /// Starts Distribution v3 (filesystem storage) that requires HTTP basic authentication
    /// as `user` (htpasswd, bcrypt) for every request.
    pub fn start_with_auth(user: &Credentials) -> Result<Self> {
        PeerRegistry::start(
            "distribution",
            &tools::bin("registry"),
            Storage::Filesystem,
            Some(user),
        )
        .map(Self)
    }
}

impl std::ops::Deref for Distribution {
    type Target = PeerRegistry;
    fn deref(&self) -> &PeerRegistry {
        &self.0
    }
}

/// Debian's `docker-registry` (Distribution 2.8).
#[derive(Debug)]
pub struct DockerRegistry28(PeerRegistry);

impl DockerRegistry28 {
    /// Starts Distribution 2.8 with filesystem storage in a temporary directory.
    ///
    /// # Panics
    /// If the binary is missing or the server does not become ready (with its log).
    pub fn start() -> Self {
        Self::start_with(Storage::Filesystem).expect("starting docker-registry 2.8")
    }

    /// Starts Distribution 2.8 with the given storage.
    pub fn start_with(storage: Storage<'_>) -> Result<Self> {
        PeerRegistry::start(
            "docker-registry",
            &tools::bin("docker-registry"),
            storage,
            None,
        )
        .map(Self)
    }
}

impl std::ops::Deref for DockerRegistry28 {
    type Target = PeerRegistry;
    fn deref(&self) -> &PeerRegistry {
        &self.0
    }
}
