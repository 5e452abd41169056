//! TLS termination: the serving certificate from PEM files, reloaded when they change, and a
//! listener that completes handshakes away from the accept loop.
//!
//! Layer rule: this module belongs to the process layer ([`crate::server`]); it knows nothing
//! of HTTP or the registry. [`ReloadingCertificate`] reads a certificate chain and private key
//! (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC) and serves them to new handshakes; [`Self::watch`]
//! re-reads the files periodically and swaps in a changed pair, so renewals (for example
//! cert-manager rewriting a mounted Secret through a symlink swap) take effect without a
//! restart. Existing connections keep the certificate they were opened with (as do clients
//! resuming a TLS session from before the change: resumption presents no certificate). A
//! changed pair that does not load is logged at error level and the previous certificate stays
//! in use.
//!
//! [`TlsListener`] accepts TCP connections and runs each handshake in its own task (bounded in
//! time and in number), handing only finished TLS streams to `axum::serve`. The crypto
//! provider is always `ring`, selected explicitly.
//!
//! [`Self::watch`]: ReloadingCertificate::watch

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, crypto::ring};
use sha2::{Digest as _, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Application protocols offered in ALPN, preferred first.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Longest time a client gets to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// The files holding the serving certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, end-entity certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
}

/// Why a certificate and key could not be loaded. Each message names the file and the cause.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: io::Error,
    },
    /// A file is not valid PEM.
    #[error("{}: invalid PEM: {cause}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{}: no certificate found (expected PEM `CERTIFICATE` blocks)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key.
    #[error(
        "{}: no private key found (expected a PEM PKCS#8, RSA or EC private key)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key cannot be used, or does not belong to the certificate.
    #[error("{} and {}: {cause}", cert.display(), key.display())]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The cause (unsupported key type, key not matching the certificate, ...).
        cause: rustls::Error,
    },
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The `ring` crypto provider, the only one this process uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Digest of the contents a certificate was built from, to notice changes cheaply without
/// keeping the key bytes around.
type Fingerprint = [u8; 32];

fn fingerprint(cert: &[u8], key: &[u8]) -> Fingerprint {
    let mut hasher = Sha256::new();
    hasher.update((cert.len() as u64).to_be_bytes());
    hasher.update(cert);
    hasher.update(key);
    hasher.finalize().into()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|cause| TlsError::Read {
        path: path.to_owned(),
        cause,
    })
}

/// Builds the certified key from PEM contents; `files` only names them in errors.
fn certified_key(
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| TlsError::Pem {
            path: files.cert.clone(),
            cause,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: files.key.clone(),
            });
        }
        Err(cause) => {
            return Err(TlsError::Pem {
                path: files.key.clone(),
                cause,
            });
        }
    };
    CertifiedKey::from_der(chain, key, provider).map_err(|cause| TlsError::Key {
        cert: files.cert.clone(),
        key: files.key.clone(),
        cause,
    })
}

/// What the reload watcher last saw, so that each change is acted on (and logged) once.
#[derive(Debug)]
struct WatchState {
    /// The contents last examined, loaded or rejected.
    examined: Fingerprint,
    /// The last read error, while the files cannot be read.
    read_error: Option<String>,
}

/// What one [`ReloadingCertificate::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files are as last examined (or unreadable, as last time): nothing changed.
    Unchanged,
    /// The files changed and the new pair is now served.
    Reloaded,
    /// The files changed (or became unreadable) and the new pair was rejected; the previous
    /// certificate stays in use.
    Rejected,
}

/// The serving certificate, read from [`TlsFiles`] and replaced when they change; resolves the
/// certificate of every new handshake.
#[derive(Debug)]
pub struct ReloadingCertificate {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    state: Mutex<WatchState>,
}

impl ReloadingCertificate {
    /// Loads the certificate chain and key; fails if either does not load or they do not match.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let key = certified_key(&files, &cert_pem, &key_pem, &provider)?;
        Ok(Arc::new(Self {
            state: Mutex::new(WatchState {
                examined: fingerprint(&cert_pem, &key_pem),
                read_error: None,
            }),
            files,
            provider,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// The files read.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the files once; swaps in a changed pair that loads, logs (once per change) a
    /// pair that does not.
    pub fn poll(&self) -> ReloadOutcome {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let contents = read(&self.files.cert).and_then(|cert| Ok((cert, read(&self.files.key)?)));
        let (cert_pem, key_pem) = match contents {
            Ok(contents) => contents,
            Err(err) => {
                let message = err.to_string();
                if state.read_error.as_deref() == Some(message.as_str()) {
                    return ReloadOutcome::Unchanged;
                }
                tracing::error!(error = %err, "cannot read the TLS certificate files; keeping the current certificate");
                state.read_error = Some(message);
                return ReloadOutcome::Rejected;
            }
        };
        state.read_error = None;
        let seen = fingerprint(&cert_pem, &key_pem);
        if seen == state.examined {
            return ReloadOutcome::Unchanged;
        }
        state.examined = seen;
        match certified_key(&self.files, &cert_pem, &key_pem, &self.provider) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                tracing::info!(
                    cert = %self.files.cert.display(),
                    key = %self.files.key.display(),
                    "TLS certificate reloaded; new connections use it"
                );
                ReloadOutcome::Reloaded
            }
            Err(err) => {
                tracing::error!(
                    error = %err,
                    "the changed TLS certificate files do not load; keeping the previous certificate"
                );
                ReloadOutcome::Rejected
            }
        }
    }

    /// Polls the files every `interval` until `stop` completes.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let this = self.clone();
            // File reads and key parsing are blocking work.
            if let Err(err) = tokio::task::spawn_blocking(move || this.poll()).await {
                tracing::error!(error = %err, "checking the TLS certificate files failed");
            }
        }
    }

    /// A TLS server configuration serving this certificate, offering [`ALPN_PROTOCOLS`].
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A finished handshake, or `None` when it failed or timed out.
type Handshake = Option<(TlsStream<TcpStream>, SocketAddr)>;

/// Accepts TCP connections, completes their TLS handshakes in spawned tasks, and yields the
/// established streams ([`axum::serve::Listener`]). Dropping it closes the socket and abandons
/// handshakes in progress.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Handshake>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("tcp", &self.tcp)
            .field("handshakes", &self.handshakes.len())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Serves TLS with `config` on `tcp`; accepted sockets get `TCP_NODELAY`.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }

    /// Replaces the handshake timeout ([`HANDSHAKE_TIMEOUT`] by default).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    fn start_handshake(&mut self, tcp: TcpStream, peer: SocketAddr) {
        // Small responses (manifests, status codes) must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let accept = self.acceptor.accept(tcp);
        let timeout = self.handshake_timeout;
        self.handshakes.spawn(async move {
            match tokio::time::timeout(timeout, accept).await {
                Ok(Ok(stream)) => Some((stream, peer)),
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
                    None
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let can_accept = self.handshakes.len() < MAX_PENDING_HANDSHAKES;
            let pending = !self.handshakes.is_empty();
            tokio::select! {
                accepted = self.tcp.accept(), if can_accept => match accepted {
                    Ok((tcp, peer)) => self.start_handshake(tcp, peer),
                    Err(err) => accept_error(err).await,
                },
                Some(done) = self.handshakes.join_next(), if pending => {
                    if let Ok(Some(established)) = done {
                        return established;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Errors of `accept` that concern one connection are skipped; others (such as running out of
/// file descriptors) are logged and retried after a pause, as `axum::serve` does.
async fn accept_error(err: io::Error) {
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "accepting a connection failed; retrying in 1s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write_files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    /// A CA certificate (DER) and a server certificate and key (PEM) for `localhost` it signed.
    fn ca_signed_pair() -> (CertificateDer<'static>, String, String) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (ca_cert.der().clone(), cert.pem(), key.serialize_pem())
    }

    #[tokio::test]
    async fn handshakes_run_beside_each_other_and_time_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = ca_signed_pair();
        let certificate = ReloadingCertificate::load(write_files(dir.path(), &cert, &key)).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = TlsListener::new(tcp, certificate.server_config().unwrap())
            .with_handshake_timeout(Duration::from_secs(3));
        let server = tokio::spawn(async move {
            let (mut stream, _) = axum::serve::Listener::accept(&mut listener).await;
            assert!(stream.get_ref().0.nodelay().unwrap());
            stream.write_all(b"hello").await.unwrap();
            stream.shutdown().await.unwrap();
            listener
        });

        // A client that connects and never says hello...
        let stalled = TcpStream::connect(addr).await.unwrap();
        // ...does not hold up the next one.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = connector
            .connect(name, TcpStream::connect(addr).await.unwrap())
            .await
            .unwrap();
        assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut greeting = Vec::new();
        client.read_to_end(&mut greeting).await.unwrap();
        assert_eq!(greeting, b"hello");
        let _listener = server.await.unwrap();
        let mut buf = [0u8; 16];
        assert!(
            matches!(stalled.try_read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "the stalled handshake was given up before the other one finished"
        );

        // The stalled handshake is abandoned after the timeout: the server closes it.
        let mut stalled = stalled;
        let read = tokio::time::timeout(Duration::from_secs(20), stalled.read(&mut buf))
            .await
            .expect("the server closes a connection that never completes its handshake");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[test]
    fn loads_a_pair_and_rejects_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(&["localhost"]);
        let files = write_files(dir.path(), &cert, &key);
        let loaded = ReloadingCertificate::load(files.clone()).unwrap();
        assert_eq!(loaded.current().cert.len(), 1);
        assert!(loaded.server_config().is_ok());

        let (_, other_key) = pair(&["localhost"]);
        std::fs::write(&files.key, &other_key).unwrap();
        let err = ReloadingCertificate::load(files.clone()).unwrap_err();
        assert!(matches!(err, TlsError::Key { .. }), "{err}");

        std::fs::write(&files.key, "not a key\n").unwrap();
        let err = ReloadingCertificate::load(files.clone()).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");

        std::fs::write(&files.key, &key).unwrap();
        std::fs::write(&files.cert, &key).unwrap();
        let err = ReloadingCertificate::load(files.clone()).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");

        let missing = TlsFiles {
            cert: dir.path().join("missing.crt"),
            key: files.key.clone(),
        };
        let err = ReloadingCertificate::load(missing).unwrap_err();
        assert!(
            matches!(err, TlsError::Read { .. }) && err.to_string().contains("missing.crt"),
            "{err}"
        );
    }

    #[test]
    fn poll_swaps_changed_pairs_and_keeps_the_old_one_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(&["localhost"]);
        let files = write_files(dir.path(), &cert, &key);
        let loaded = ReloadingCertificate::load(files.clone()).unwrap();
        let first = loaded.current();
        assert_eq!(loaded.poll(), ReloadOutcome::Unchanged);

        let (cert2, key2) = pair(&["localhost"]);
        write_files(dir.path(), &cert2, &key2);
        assert_eq!(loaded.poll(), ReloadOutcome::Reloaded);
        let second = loaded.current();
        assert_ne!(first.cert, second.cert);
        assert_eq!(loaded.poll(), ReloadOutcome::Unchanged);

        // Garbage: rejected once, then unchanged; the second certificate stays.
        std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
        assert_eq!(loaded.poll(), ReloadOutcome::Rejected);
        assert_eq!(loaded.poll(), ReloadOutcome::Unchanged);
        assert_eq!(loaded.current().cert, second.cert);

        // Unreadable: rejected once as well.
        std::fs::remove_file(&files.cert).unwrap();
        assert_eq!(loaded.poll(), ReloadOutcome::Rejected);
        assert_eq!(loaded.poll(), ReloadOutcome::Unchanged);
        assert_eq!(loaded.current().cert, second.cert);

        // Fixed: the first pair again.
        write_files(dir.path(), &cert, &key);
        assert_eq!(loaded.poll(), ReloadOutcome::Reloaded);
        assert_eq!(loaded.current().cert, first.cert);
    }
}
