//! Process concerns: listening, graceful shutdown, health and metrics endpoints, and the
//! background tasks of a running data plane.
//!
//! Layer rule: this module composes the layers below it into one process and owns what no
//! request does (the listener, signals, periodic tasks). It calls [`crate::http::build_app`]
//! for the API and adds the operational endpoints around it:
//!
//! - `GET /healthz`: liveness, 200 whenever the process serves requests.
//! - `GET /readyz`: readiness, 200 when a configuration is in force, storage answers
//!   [`Storage::check`] and the process is not shutting down, 503 otherwise. The body names
//!   the revision in force (`ready revision=7`).
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text), see [`crate::telemetry`].
//!
//! Shutdown ([`Server::serve`]): when the shutdown future completes, readiness turns 503 at
//! once; after the optional drain delay (time for load balancers to notice) the listener
//! closes, in-flight requests (uploads included) run to completion, and `serve` returns. If
//! they take longer than the shutdown timeout they are abandoned (upload sessions stay in
//! storage and can be resumed).
//!
//! Connections ([`connections`]): HTTP/1.1, or HTTP/2 where TLS negotiated it, with the
//! header and idle timeouts of the `connections` settings against slow clients.
//!
//! TLS ([`Server::with_tls`]): the same server behind rustls, with handshakes completed off
//! the accept loop and the certificate reloaded when its files change (see [`crate::tls`]).
//!
//! Configuration ([`crate::live`]): the first document (a file or the defaults) is applied
//! before anything is accepted, and a file source is then followed
//! ([`Server::with_reloader`]). A server following a Kubernetes Secret
//! ([`Server::following_secret`]) starts with nothing in force: `/readyz` answers 503 and
//! every request is denied until the first document from the Secret is applied.
//!
//! Exposure: a server whose listener is reachable from other hosts (not loopback) refuses to
//! start when its first document declares no access control ([`check_exposure`]). A server
//! following a Secret starts closed instead, and a document without access control applied
//! later on such a listener denies everything (see [`crate::auth::Mode::Closed`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::{AuthService, Transport};
use crate::caches::CacheMemory;
use crate::config::{Config, ConfigReloader, Loaded, ProcessSettings, SecretSource, StorageConfig};
use crate::http::{AppState, build_app};
use crate::live::{Applier, ApplyError, LiveConfig, Source};
use crate::registry::gc::GcMetrics;
use crate::registry::{Registry, jobs};
use crate::storage::fs::FsStorage;
use crate::storage::s3::{S3Settings, S3Storage};
use crate::storage::{Storage, StorageError};
use crate::telemetry::{self, Metrics, RouteClass};
use crate::tls::{ReloadingCertificate, TlsError, TlsFiles, TlsListener};

pub mod connections;

/// How long a readiness storage check may take before the process counts as not ready.
const READINESS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration selects no storage backend.
    #[error("the configuration selects no storage backend")]
    NoBackend,
    /// Storage could not be opened.
    #[error("cannot open storage: {0}")]
    Storage(#[from] StorageError),
    /// The listener failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    /// The listener is reachable from other hosts and the configuration has no access control.
    #[error(
        "refusing to serve on {addr} without access control: declare namespaces and \
         credentials in the configuration (--config), or listen on a loopback address"
    )]
    OpenAccess {
        /// The listening address.
        addr: SocketAddr,
    },
    /// The TLS certificate or key did not load.
    #[error("cannot load the TLS certificate: {0}")]
    Tls(TlsError),
    /// The first configuration document was refused.
    #[error("{0}")]
    Config(#[from] ApplyError),
}

/// Whether `addr` is reachable only from this host.
pub fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Refuses ([`ServeError::OpenAccess`]) to serve on an address reachable from other hosts when
/// `config` declares no access control: everyone could then push and delete.
pub fn check_exposure(config: &Config, addr: SocketAddr) -> Result<(), ServeError> {
    if is_loopback(addr) || config.spec.access_control_enabled() {
        Ok(())
    } else {
        Err(ServeError::OpenAccess { addr })
    }
}

/// Tunables of a running server, apart from the configuration document.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest wait for in-flight requests after the listener closed.
    pub shutdown_timeout: Duration,
    /// Time between readiness turning 503 and the listener closing.
    pub drain_delay: Duration,
    /// How often the configuration and TLS files are checked for changes.
    pub reload_interval: Duration,
    /// The memory the in-memory caches share (see [`crate::caches`]).
    pub cache_memory: CacheMemory,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            reload_interval: Duration::from_secs(1),
            cache_memory: CacheMemory::DEFAULT,
        }
    }
}

/// Opens the storage backend the settings select, its cache taking its share of `caches`.
pub async fn open_storage(
    storage: &StorageConfig,
    caches: CacheMemory,
) -> Result<Arc<dyn Storage>, ServeError> {
    match (&storage.filesystem, &storage.s3) {
        (Some(fs), _) => Ok(Arc::new(
            FsStorage::open_with_cache_memory(fs.root.clone(), caches).await?,
        )),
        (None, Some(s3)) => Ok(Arc::new(
            S3Storage::connect(S3Settings {
                bucket: s3.bucket.clone(),
                region: s3.region.clone().unwrap_or_default(),
                endpoint: s3.endpoint.clone(),
                prefix: s3.prefix.clone(),
                force_path_style: s3.force_path_style,
                redirect_ttl: s3.redirect.as_ref().map(|r| r.ttl.0),
                cache_memory: caches,
            })
            .await?,
        )),
        (None, None) => Err(ServeError::NoBackend),
    }
}

/// A data plane ready to serve: configuration, storage, and options.
#[derive(Debug)]
pub struct Server {
    settings: ProcessSettings,
    first: Option<Config>,
    reloader: Option<ConfigReloader>,
    secret: Option<SecretSource>,
    storage: Option<Arc<dyn Storage>>,
    tls: Option<TlsFiles>,
    options: ServeOptions,
}

impl Server {
    /// A server for this first configuration document (its settings are the process's), with
    /// default options, opening the configured storage.
    pub fn new(config: Config) -> Self {
        Self {
            settings: config.settings.clone(),
            first: Some(config),
            reloader: None,
            secret: None,
            storage: None,
            tls: None,
            options: ServeOptions::default(),
        }
    }

    /// A server with these process settings that follows the configuration Secrets of
    /// `source`: nothing is in force (readiness 503, every request denied) until the first
    /// document from the Secret is applied.
    pub fn following_secret(settings: ProcessSettings, source: SecretSource) -> Self {
        Self {
            settings,
            first: None,
            reloader: None,
            secret: Some(source),
            storage: None,
            tls: None,
            options: ServeOptions::default(),
        }
    }

    /// Applies every changed document of `reloader`'s files while serving.
    pub fn with_reloader(mut self, reloader: Option<ConfigReloader>) -> Self {
        self.reloader = reloader;
        self
    }

    /// Serves this storage instead of opening the configured one (tests, embedding).
    pub fn with_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Serves TLS with the certificate and key of these files (reloaded when they change, every
    /// [`ServeOptions::reload_interval`]) instead of plain HTTP.
    pub fn with_tls(mut self, tls: Option<TlsFiles>) -> Self {
        self.tls = tls;
        self
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: ServeOptions) -> Self {
        self.options = options;
        self
    }

    /// Serves on `listener` until `shutdown` completes and in-flight requests are done (or the
    /// shutdown timeout passed). Logs `listening on <addr>` once storage is open and requests
    /// are accepted.
    ///
    /// Fails before accepting anything when the listener is not loopback and the first
    /// configuration has no access control ([`check_exposure`]), when the first configuration
    /// is refused ([`crate::live::Applier::apply`]), when the TLS files do not load, or when
    /// storage does not open.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = listener.local_addr()?;
        if let Some(first) = &self.first {
            check_exposure(first, addr)?;
        }
        let certificate = match self.tls {
            Some(files) => {
                let certificate =
                    tokio::task::spawn_blocking(move || ReloadingCertificate::load(files))
                        .await
                        .map_err(std::io::Error::other)?
                        .map_err(ServeError::Tls)?;
                let tls_config = certificate.server_config().map_err(ServeError::Tls)?;
                Some((certificate, tls_config))
            }
            None => None,
        };
        let transport = Transport {
            tls: certificate.is_some(),
            public: !is_loopback(addr),
        };
        let mut metrics = Metrics::new();
        let auth = AuthService::with_login_limits(transport, self.settings.logins.clone());
        let (applier, live) = Applier::new(
            Arc::clone(&auth),
            self.settings.clone(),
            metrics.config().clone(),
        );
        if let Some(first) = self.first {
            applier.apply(Source::Startup, Loaded::stating_all(first))?;
        }
        let storage = match self.storage {
            Some(storage) => storage,
            None => open_storage(&self.settings.storage, self.options.cache_memory).await?,
        };
        storage.register_metrics(metrics.registry_mut());
        let registry = Registry::with_cache_memory(storage.clone(), self.options.cache_memory);
        registry.register_metrics(metrics.registry_mut());
        let job_metrics = jobs::JobMetrics::register(metrics.registry_mut());
        let gc_metrics = GcMetrics::register(metrics.registry_mut());
        let registry = Arc::new(registry);
        let metrics = Arc::new(metrics);
        let shutting_down = Arc::new(AtomicBool::new(false));
        let app = router(
            AppState::new(Arc::clone(&registry), auth, live.clone()),
            OpsState {
                storage: storage.clone(),
                metrics,
                live: live.clone(),
                shutting_down: shutting_down.clone(),
            },
        );

        // Background tasks stop when `stop` flips.
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let applier = Arc::new(applier);
        if let Some(reloader) = self.reloader {
            let applier = Arc::clone(&applier);
            tasks.push(tokio::spawn(reloader.run(
                self.options.reload_interval,
                stopped(stop_rx.clone()),
                move |document| {
                    let _ = applier.offer(Source::File, document);
                },
            )));
        }
        if let Some(source) = self.secret {
            tracing::info!(secret = %source.secret(), "following the configuration Secret");
            let (sink, on_error) = (Arc::clone(&applier), Arc::clone(&applier));
            tasks.push(tokio::spawn(source.run(
                stopped(stop_rx.clone()),
                move |document| {
                    let _ = sink.offer(Source::Secret, document);
                },
                move |_| on_error.source_failed(Source::Secret),
            )));
        }
        tasks.extend(jobs::spawn(
            &registry,
            &self.settings,
            job_metrics,
            gc_metrics,
            || stopped(stop_rx.clone()),
        ));
        let tls = certificate.is_some();
        let tls_config = certificate.map(|(certificate, tls_config)| {
            tasks.push(tokio::spawn(
                certificate.watch(self.options.reload_interval, stopped(stop_rx.clone())),
            ));
            tls_config
        });

        let (closed_tx, mut closed_rx) = watch::channel(false);
        let drain_delay = self.options.drain_delay;
        let signal = async move {
            shutdown.await;
            shutting_down.store(true, Ordering::SeqCst);
            tracing::info!("shutdown requested: readiness is now 503");
            if !drain_delay.is_zero() {
                tokio::time::sleep(drain_delay).await;
            }
            tracing::info!("listener closed; waiting for in-flight requests");
            let _ = closed_tx.send(true);
        };
        let limits = self.settings.connections.clone();
        let server: Pin<Box<dyn Future<Output = ()> + Send>> = match tls_config {
            Some(tls_config) => Box::pin(connections::serve(
                TlsListener::new(listener, tls_config),
                app,
                limits,
                signal,
            )),
            None => {
                let listener = listener.tap_io(|tcp| {
                    // Small responses (manifests, status codes) must not wait for Nagle's
                    // algorithm.
                    let _ = tcp.set_nodelay(true);
                });
                Box::pin(connections::serve(listener, app, limits, signal))
            }
        };

        {
            let index = live.current();
            tracing::info!(
                target: telemetry::LISTENING_TARGET,
                region = %index.config().spec.region,
                revision = ?index.revision(),
                storage_root = ?index.config().filesystem_root(),
                tls,
                "listening on {addr}"
            );
        }
        let timeout = self.options.shutdown_timeout;
        let result = tokio::select! {
            () = server => Ok(()),
            _ = async {
                let _ = closed_rx.wait_for(|closed| *closed).await;
                tokio::time::sleep(timeout).await;
            } => {
                tracing::warn!(
                    ?timeout,
                    "shutdown timeout reached with requests still in flight; abandoning them \
                     (their upload sessions stay resumable)"
                );
                Ok(())
            }
        };

        let _ = stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
        if result.is_ok() {
            tracing::info!("shut down");
        }
        result
    }
}

/// Serves `config` on `listener` until `shutdown`, with default options (see [`Server`]).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    Server::new(config).serve(listener, shutdown).await
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// State of the operational endpoints.
#[derive(Debug, Clone)]
struct OpsState {
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    live: LiveConfig,
    shutting_down: Arc<AtomicBool>,
}

/// The whole HTTP surface: the API plus health and metrics, with metrics and access logs.
fn router(api: AppState, ops: OpsState) -> Router {
    let metrics = ops.metrics.clone();
    let operational = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(ops);
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<Body>| {
                    let request_id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "http",
                        method = telemetry::method_label(req.method()),
                        route = RouteClass::of(req.uri().path()).as_str(),
                        request_id,
                    )
                })
                .on_request(())
                .on_response(telemetry::AccessLog),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            telemetry::track,
        ));
    build_app(api).merge(operational).layer(layers)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ops): State<OpsState>) -> (StatusCode, String) {
    let unavailable = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    if ops.shutting_down.load(Ordering::SeqCst) {
        return unavailable("shutting down");
    }
    let Some(revision) = ops.live.revision() else {
        return unavailable("no configuration in force yet");
    };
    match tokio::time::timeout(READINESS_CHECK_TIMEOUT, ops.storage.check()).await {
        Ok(Ok(())) => (StatusCode::OK, format!("ready revision={revision}\n")),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness: storage check failed");
            unavailable("storage unavailable")
        }
        Err(_) => {
            tracing::warn!(timeout = ?READINESS_CHECK_TIMEOUT, "readiness: storage check timed out");
            unavailable("storage unavailable")
        }
    }
}

async fn metrics_text(State(ops): State<OpsState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        ops.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::RepoName;
    use crate::storage::memory::MemoryStorage;
    use tower::ServiceExt;

    fn test_router(storage: Arc<dyn Storage>) -> (Router, Arc<AtomicBool>) {
        let shutting_down = Arc::new(AtomicBool::new(false));
        let api = AppState::open(Arc::new(Registry::new(storage.clone())));
        let live = api.live().clone();
        let app = router(
            api,
            OpsState {
                storage,
                metrics: Arc::new(Metrics::new()),
                live,
                shutting_down: shutting_down.clone(),
            },
        );
        (app, shutting_down)
    }

    async fn get_text(app: &Router, path: &str) -> (StatusCode, String) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let (app, shutting_down) = test_router(Arc::new(MemoryStorage::new()));
        assert_eq!(get_text(&app, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get_text(&app, "/readyz").await.0, StatusCode::OK);
        assert_eq!(get_text(&app, "/v2/").await.0, StatusCode::OK);
        let (status, text) = get_text(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains(
                r#"dataplane_http_requests_total{route="base",method="GET",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"dataplane_http_requests_total{route="health",method="GET",status="200"} 2"#
            ),
            "{text}"
        );
        shutting_down.store(true, Ordering::SeqCst);
        assert_eq!(
            get_text(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get_text(&app, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn readiness_waits_for_a_configuration_and_names_its_revision() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let metrics = Arc::new(Metrics::new());
        let auth = AuthService::new(Transport::default());
        let (applier, live) = Applier::new(
            Arc::clone(&auth),
            ProcessSettings::default(),
            metrics.config().clone(),
        );
        let app = router(
            AppState::new(Arc::new(Registry::new(storage.clone())), auth, live.clone()),
            OpsState {
                storage,
                metrics,
                live,
                shutting_down: Arc::new(AtomicBool::new(false)),
            },
        );
        let (status, body) = get_text(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "no configuration in force yet\n");
        // Nothing is allowed meanwhile, not even on loopback.
        assert_eq!(get_text(&app, "/v2/").await.0, StatusCode::FORBIDDEN);

        let mut config = Config::default();
        config.spec.revision = 42;
        applier
            .apply(Source::Secret, Loaded::stating_all(config))
            .unwrap();
        let (status, body) = get_text(&app, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ready revision=42\n");
        assert_eq!(get_text(&app, "/v2/").await.0, StatusCode::OK);
        let (_, text) = get_text(&app, "/metrics").await;
        assert!(text.contains("dataplane_config_revision 42"), "{text}");
        assert!(
            text.contains(r#"dataplane_config_applied_total{source="secret"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn api_responses_carry_a_request_id() {
        let (app, _) = test_router(Arc::new(MemoryStorage::new()));
        let response = app
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(response.headers().contains_key("x-request-id"));
    }

    #[test]
    fn open_access_is_refused_only_off_loopback() {
        let open = Config::default();
        assert!(!open.spec.access_control_enabled());
        for local in [
            "127.0.0.1:5000",
            "127.0.0.2:0",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            let addr: SocketAddr = local.parse().unwrap();
            assert!(check_exposure(&open, addr).is_ok(), "{addr}");
        }
        for public in ["0.0.0.0:5000", "10.1.2.3:443", "[::]:5000"] {
            let addr: SocketAddr = public.parse().unwrap();
            let err = check_exposure(&open, addr).unwrap_err();
            assert!(
                matches!(err, ServeError::OpenAccess { addr: a } if a == addr)
                    && err.to_string().starts_with(&format!(
                        "refusing to serve on {addr} without access control"
                    )),
                "{err}"
            );
        }
        let closed = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
             region: test\nstorage: {filesystem: {root: /tmp/x}}\n\
             namespaces: [{name: acme}]\n",
        )
        .unwrap();
        assert!(closed.spec.access_control_enabled());
        assert!(check_exposure(&closed, "0.0.0.0:5000".parse().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn serve_drains_and_returns_after_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = Server::new(Config::default()).with_storage(Arc::new(MemoryStorage::new()));
        let task = tokio::spawn(server.serve(listener, async {
            let _ = rx.await;
        }));
        let mut stream = None;
        for _ in 0..100 {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                stream = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(stream.expect("server accepts connections"));
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve returns")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn shutdown_timeout_abandons_requests_that_never_finish() {
        use tokio::io::AsyncWriteExt;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let storage = Arc::new(MemoryStorage::new());
        let repo: RepoName = "slow/upload".parse().unwrap();
        let session = storage.upload_create(&repo).await.unwrap();
        let server = Server::new(Config::default())
            .with_storage(storage)
            .with_options(ServeOptions {
                shutdown_timeout: Duration::from_millis(300),
                ..ServeOptions::default()
            });
        let task = tokio::spawn(server.serve(listener, async {
            let _ = rx.await;
        }));
        let mut stream = loop {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // A chunk whose body never arrives in full.
        stream
            .write_all(
                format!(
                    "PATCH /v2/slow/upload/blobs/uploads/{} HTTP/1.1\r\nhost: x\r\n\
                     content-type: application/octet-stream\r\ncontent-length: 1000000\r\n\r\n",
                    session.id
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        stream.write_all(&[0u8; 1000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve returns after the shutdown timeout")
            .unwrap()
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(stream);
    }
}
