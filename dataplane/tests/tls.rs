//! HTTPS of the real binary: serving with a certificate from PEM files, reloading it when the
//! files change (through a symlink swap, as Kubernetes updates mounted Secrets), keeping the old
//! one when the new files are broken, draining an upload over TLS on SIGTERM, and refusing to
//! serve a non-loopback address without access control.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    Dataplane, SlowUpload, get, pseudo_random, push_blob_chunked, push_blob_monolithic, sha256,
    turns_not_ready, wait_listener_closed,
};
use nix::sys::signal::Signal;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a certificate change may take to reach new connections (the server polls every
/// second).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// A test certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1`: the PEM chain (leaf, then this
    /// CA) and the PEM PKCS#8 key.
    fn server_pair(&self) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (format!("{}{}", cert.pem(), self.pem), key.serialize_pem())
    }

    /// An HTTPS client trusting only this CA, opening a new connection for every request.
    fn client(&self) -> reqwest::Client {
        self.client_builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    }

    fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(60))
    }
}

/// Certificate files laid out like a mounted Kubernetes Secret: `tls.crt` and `tls.key` are
/// symlinks into `..data`, itself a symlink to the current generation's directory, replaced
/// atomically by a rename.
struct CertDir {
    dir: TempDir,
    generation: u32,
}

impl CertDir {
    fn new(cert: &str, key: &str) -> Self {
        let mut this = Self {
            dir: tempfile::Builder::new().prefix("tls-").tempdir().unwrap(),
            generation: 0,
        };
        this.install(cert, key);
        symlink("..data/tls.crt", this.cert()).unwrap();
        symlink("..data/tls.key", this.key()).unwrap();
        this
    }

    /// Writes a new generation and switches `..data` to it with one rename.
    fn install(&mut self, cert: &str, key: &str) {
        self.generation += 1;
        let name = format!("..gen-{}", self.generation);
        let generation = self.dir.path().join(&name);
        std::fs::create_dir(&generation).unwrap();
        std::fs::write(generation.join("tls.crt"), cert).unwrap();
        std::fs::write(generation.join("tls.key"), key).unwrap();
        let next = self.dir.path().join("..data_tmp");
        symlink(&name, &next).unwrap();
        std::fs::rename(&next, self.dir.path().join("..data")).unwrap();
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// `--tls-cert CERT --tls-key KEY`.
    fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_owned(),
            self.cert().display().to_string(),
            "--tls-key".to_owned(),
            self.key().display().to_string(),
        ]
    }
}

/// Starts `dataplane serve` over TLS on 127.0.0.1 with these files.
fn start_tls(root: &Path, certs: &CertDir, extra: &[&str]) -> Dataplane {
    let mut args: Vec<String> = certs.args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Dataplane::start(root, &args)
}

fn https(server: &Dataplane) -> String {
    format!("https://{}", server.addr)
}

/// Whether a new connection from `client` gets `200` for `GET /v2/`.
async fn accepted(client: &reqwest::Client, server: &Dataplane) -> bool {
    match client.get(format!("{}/v2/", https(server))).send().await {
        Ok(response) => response.status() == 200,
        Err(_) => false,
    }
}

/// Waits until `client` is accepted on new connections, at most [`RELOAD_TIMEOUT`].
async fn wait_accepted(client: &reqwest::Client, server: &Dataplane) -> bool {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    while Instant::now() < deadline {
        if accepted(client, server).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Waits until the server's log contains `text`, at most [`RELOAD_TIMEOUT`].
async fn wait_log(server: &Dataplane, text: &str) -> bool {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    while Instant::now() < deadline {
        if server.log().contains(text) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn serves_https_to_clients_trusting_the_ca() {
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server_pair();
    let certs = CertDir::new(&cert, &key);
    let root = tempfile::tempdir().unwrap();
    let server = start_tls(root.path(), &certs, &[]);
    let base = https(&server);
    assert!(server.log().contains("tls=true"), "{}", server.log());

    // Connections that never complete a handshake hold up nobody.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }

    // HTTP/2 through ALPN, and HTTP/1.1 for clients that only speak it; by IP and by name.
    let client = ca.client();
    let response = client.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let http1 = ca
        .client_builder()
        .http1_only()
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    let response = http1
        .get(format!("https://localhost:{}/v2/", server.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);

    // Blob round trips over both protocols.
    for (client, repo, seed) in [(&client, "tls/h2", 1), (&http1, "tls/h1", 2)] {
        let base = if seed == 1 {
            base.clone()
        } else {
            format!("https://localhost:{}", server.addr.port())
        };
        let small = pseudo_random(seed, 100_000);
        assert_eq!(
            push_blob_monolithic(client, &base, repo, &small)
                .await
                .unwrap(),
            201
        );
        let large = pseudo_random(seed + 10, 3_000_000);
        assert_eq!(
            push_blob_chunked(client, &base, repo, &large, 1_000_000)
                .await
                .unwrap(),
            201
        );
        for data in [&small, &large] {
            let digest = sha256(data);
            let (status, header, body) =
                get(client, &format!("{base}/v2/{repo}/blobs/{digest}")).await;
            assert_eq!(status, 200);
            assert_eq!(header.as_deref(), Some(digest.as_str()));
            assert!(body == *data, "blob {digest} differs after the round trip");
        }
    }

    // A client that does not trust the CA fails the handshake.
    let stranger = Ca::new("another CA").client();
    let err = stranger
        .get(format!("{base}/v2/"))
        .send()
        .await
        .expect_err("a client not trusting the CA must fail");
    assert!(err.is_connect(), "{err:?}");
    let default_roots = reqwest::Client::builder().build().unwrap();
    assert!(
        default_roots
            .get(format!("{base}/v2/"))
            .send()
            .await
            .is_err()
    );

    // Plain HTTP to the TLS port gets no HTTP response.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /v2/ HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    assert!(
        !reply.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP response: {:?}",
        String::from_utf8_lossy(&reply)
    );
    assert!(
        common::client()
            .get(format!("http://{}/v2/", server.addr))
            .send()
            .await
            .is_err()
    );

    // The server still serves TLS afterwards.
    assert!(accepted(&client, &server).await);
}

#[tokio::test]
async fn a_replaced_certificate_reaches_new_connections() {
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let (cert, key) = old_ca.server_pair();
    let mut certs = CertDir::new(&cert, &key);
    let root = tempfile::tempdir().unwrap();
    let server = start_tls(root.path(), &certs, &[]);

    let old_client = old_ca.client();
    let new_client = new_ca.client();
    // A pooled HTTP/2 connection opened before the change.
    let pooled = old_ca.client_builder().build().unwrap();
    assert!(accepted(&old_client, &server).await);
    assert!(accepted(&pooled, &server).await);
    assert!(!accepted(&new_client, &server).await);

    let (cert, key) = new_ca.server_pair();
    certs.install(&cert, &key);
    let started = Instant::now();
    assert!(
        wait_accepted(&new_client, &server).await,
        "new connections never got the new certificate:\n{}",
        server.log()
    );
    eprintln!("new certificate served after {:?}", started.elapsed());
    assert!(server.log().contains("TLS certificate reloaded"));
    // A client without a TLS session to resume gets only the new certificate. (`old_client`
    // may still resume its session from before the change, which presents no certificate.)
    assert!(
        !accepted(&old_ca.client(), &server).await,
        "new handshakes must not get the old certificate"
    );
    drop(old_client);
    // The connection opened before the change is unaffected.
    assert!(accepted(&pooled, &server).await);
    let data = pseudo_random(3, 50_000);
    assert_eq!(
        push_blob_monolithic(&new_client, &https(&server), "tls/reload", &data)
            .await
            .unwrap(),
        201
    );
}

#[tokio::test]
async fn a_broken_replacement_keeps_the_current_certificate() {
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server_pair();
    let mut certs = CertDir::new(&cert, &key);
    let root = tempfile::tempdir().unwrap();
    // The files through the environment this time.
    let args = [
        "serve".to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--root".to_owned(),
        root.path().display().to_string(),
    ];
    let cert_path = certs.cert().display().to_string();
    let key_path = certs.key().display().to_string();
    let server = Dataplane::start_args_env(
        &args,
        &[
            ("DATAPLANE_TLS_CERT", cert_path.as_str()),
            ("DATAPLANE_TLS_KEY", key_path.as_str()),
        ],
    )
    .unwrap_or_else(|log| panic!("dataplane did not start:\n{log}"));
    let client = ca.client();
    assert!(accepted(&client, &server).await);

    // Garbage PEM: logged as an error, the current certificate stays.
    certs.install("-----BEGIN CERTIFICATE-----\nnot base64 at all\n", &key);
    assert!(
        wait_log(&server, "do not load").await,
        "the broken files were never reported:\n{}",
        server.log()
    );
    let log = server.log();
    let line = log.lines().find(|l| l.contains("do not load")).unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(accepted(&client, &server).await, "{}", server.log());

    // A key that does not match the certificate: the same.
    let (_, other_key) = ca.server_pair();
    certs.install(&cert, &other_key);
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    while server.log().matches("do not load").count() < 2 {
        assert!(Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted(&client, &server).await, "{}", server.log());
    assert!(!server.log().contains("TLS certificate reloaded"));

    // A good pair again is taken up.
    let new_ca = Ca::new("new CA");
    let (cert, key) = new_ca.server_pair();
    certs.install(&cert, &key);
    assert!(wait_accepted(&new_ca.client(), &server).await);
}

#[tokio::test]
async fn tls_arguments_must_load() {
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().display().to_string();
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server_pair();
    let certs = CertDir::new(&cert, &key);

    // Both or neither.
    let output = std::process::Command::new(common::binary())
        .args(["serve", "--root", &root_arg, "--tls-cert"])
        .arg(certs.cert())
        .env_remove("DATAPLANE_TLS_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tls-key"));

    // Files that do not load stop the start with a message naming them.
    let garbage = root.path().join("garbage.pem");
    std::fs::write(&garbage, "garbage\n").unwrap();
    for (cert, key, expected) in [
        (
            root.path().join("missing.crt"),
            certs.key(),
            "missing.crt".to_owned(),
        ),
        (
            garbage.clone(),
            certs.key(),
            "no certificate found".to_owned(),
        ),
        (
            certs.cert(),
            garbage.clone(),
            "no private key found".to_owned(),
        ),
        (certs.key(), certs.cert(), "no certificate found".to_owned()),
    ] {
        let log = Dataplane::start_args(&[
            "serve".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--root".to_owned(),
            root_arg.clone(),
            "--tls-cert".to_owned(),
            cert.display().to_string(),
            "--tls-key".to_owned(),
            key.display().to_string(),
        ])
        .expect_err("the server must not start");
        assert!(
            log.contains("exit status: 1")
                && log.contains("cannot load the TLS certificate")
                && log.contains(&expected),
            "{log}"
        );
    }
}

#[tokio::test]
async fn refuses_open_access_on_a_public_address() {
    let root = tempfile::tempdir().unwrap();
    let args = |extra: &[&str]| {
        let mut args: Vec<String> = ["serve", "--listen", "0.0.0.0:0", "--root"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(root.path().display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let log = Dataplane::start_args(&args(&[])).expect_err("must refuse");
    assert!(
        log.contains("exit status: 1")
            && log.contains(
                "refusing to serve on 0.0.0.0:0 without access control: declare namespaces and \
                 credentials in the configuration (--config), or listen on a loopback address"
            ),
        "{log}"
    );

    // With access control configured it starts; connect only through loopback.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: registry.thalassa.cloud/v1alpha1\n\
         kind: DataPlaneConfig\n\
         region: test\n\
         namespaces:\n  - {name: public, visibility: public}\n",
    )
    .unwrap();
    let server = Dataplane::start_args(&args(&["--config", &config.display().to_string()]))
        .unwrap_or_else(|log| panic!("did not start with access control:\n{log}"));
    assert!(server.addr.ip().is_unspecified(), "{}", server.addr);
    let local = format!("http://127.0.0.1:{}", server.addr.port());
    assert_eq!(
        get(&common::client(), &format!("{local}/healthz")).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_upload_in_flight_over_tls() {
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server_pair();
    let certs = CertDir::new(&cert, &key);
    let root = tempfile::tempdir().unwrap();
    let mut server = start_tls(
        root.path(),
        &certs,
        &["--drain-delay", "1500ms", "--shutdown-timeout", "30s"],
    );
    let base = https(&server);
    let client = ca.client();
    // The final PUT streams its body slowly: about four seconds in all.
    let SlowUpload {
        digest,
        put: upload,
        ..
    } = SlowUpload::start(&client, &base, "drain/tls").await;
    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);

    // Readiness turns 503 at once, over TLS, while the listener still accepts.
    assert!(
        turns_not_ready(&client, &base, signalled).await,
        "readiness never turned 503 during the drain"
    );

    // Then the listener closes while the upload still runs.
    wait_listener_closed(server.addr).await;
    assert!(
        !upload.is_finished(),
        "the upload finished before the listener closed; the test proves nothing"
    );

    let status = upload
        .await
        .unwrap()
        .expect("the upload must not be cut off");
    assert_eq!(status, 201, "{}", server.log());
    let (status, server) = tokio::task::spawn_blocking(move || {
        let status = server.wait(Duration::from_secs(20));
        (status, server)
    })
    .await
    .unwrap();
    assert_eq!(
        status.expect("the server exits after the drain").code(),
        Some(0),
        "{}",
        server.log()
    );
    drop(server);

    let server = start_tls(root.path(), &certs, &[]);
    let (status, _, body) = get(
        &client,
        &format!("{}/v2/drain/tls/blobs/{digest}", https(&server)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), digest);
}
