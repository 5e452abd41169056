//! Logs and Prometheus metrics.
//!
//! Logs: [`init_logging`] installs a `tracing` subscriber writing to stderr, filtered by
//! `RUST_LOG` (default `info`), as text or as one JSON object per line.
//!
//! Access log: [`AccessLog`], one line per request (successful reads at `debug`).
//!
//! Metrics: [`Metrics`] holds the process's Prometheus registry and the HTTP metrics;
//! [`track`] is the middleware that feeds them. Requests are labelled by [`RouteClass`] (never
//! by raw path, so the label set stays small and no repository name leaks into metrics),
//! method and status. Exposed families (OpenMetrics text, see [`Metrics::encode`]):
//!
//! - `dataplane_http_requests_total{route,method,status}`
//! - `dataplane_http_request_duration_seconds{route,method}` (time to response headers)
//! - `dataplane_http_request_bytes_total{route}`, `dataplane_http_response_bytes_total{route}`
//!   (body bytes actually received and sent)
//! - `dataplane_uploads_in_flight` (`POST`/`PATCH`/`PUT` requests on upload routes being
//!   served)
//!
//! Configuration ([`ConfigMetrics`], fed by [`crate::live`]):
//!
//! - `dataplane_config_revision`: the revision of the document in force (0 until one is)
//! - `dataplane_config_applied_total{source}`: documents put in force
//! - `dataplane_config_refusals_total{source,reason}`: documents refused (the running one
//!   stayed in force); `reason` is `invalid`, `incomplete` (shards missing or at another
//!   revision), `unavailable` (no document to read), `keys` or `federations` (valid, but
//!   cannot be built)
//! - `dataplane_config_source_errors_total{source}`: failures reading the source itself
//!   (the Kubernetes API watch), retried with backoff

use std::io::IsTerminal;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::Method;
use http_body::Frame;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::http::route::{Endpoint, shape};

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (fields `timestamp`, `level`, `fields.message`, `target`,
    /// `span`, ...).
    Json,
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` does not parse.
    #[error("invalid RUST_LOG filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber was already installed.
    #[error("a log subscriber is already installed")]
    AlreadyInstalled,
}

/// Log target of the `listening on ADDR` line, which scripts and tests wait for: it is logged
/// at `info` whatever `RUST_LOG` says (unless `RUST_LOG` names this target itself).
pub const LISTENING_TARGET: &str = "dataplane::listening";

/// The log filter for a `RUST_LOG` value: `info` when unset, and the listening line always.
pub fn log_filter(spec: Option<&str>) -> Result<EnvFilter, TelemetryError> {
    let spec = spec
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    if spec.contains(LISTENING_TARGET) {
        Ok(EnvFilter::try_new(spec)?)
    } else {
        Ok(EnvFilter::try_new(format!(
            "{spec},{LISTENING_TARGET}=info"
        ))?)
    }
}

/// Installs the global log subscriber: stderr, `RUST_LOG` filter (default `info`).
pub fn init_logging(format: LogFormat) -> Result<(), TelemetryError> {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)
}

/// The kind of endpoint a request path addresses: the only path-derived metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/<name>/blobs/<digest>`.
    Blob,
    /// `/v2/<name>/blobs/uploads/[<id>]`.
    BlobUpload,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest,
    /// `/v2/<name>/tags/list`.
    Tags,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/referrers/<digest>`.
    Referrers,
    /// `/healthz`, `/readyz`.
    Health,
    /// `/metrics`.
    Metrics,
    /// `/token`: the token service.
    Token,
    /// Anything else.
    Other,
}

impl RouteClass {
    /// Every class, in label order.
    pub const ALL: [RouteClass; 11] = [
        RouteClass::Base,
        RouteClass::Blob,
        RouteClass::BlobUpload,
        RouteClass::Manifest,
        RouteClass::Tags,
        RouteClass::Catalog,
        RouteClass::Referrers,
        RouteClass::Health,
        RouteClass::Metrics,
        RouteClass::Token,
        RouteClass::Other,
    ];

    /// Classifies a request path with the router's own grammar ([`crate::http::route::shape`]).
    pub fn of(path: &str) -> Self {
        match path {
            "/healthz" | "/readyz" => return RouteClass::Health,
            "/metrics" => return RouteClass::Metrics,
            "/token" => return RouteClass::Token,
            "/v2" => return RouteClass::Base,
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return RouteClass::Other;
        };
        match shape(rest).map(|s| s.endpoint) {
            Some(Endpoint::Base) => RouteClass::Base,
            Some(Endpoint::Catalog) => RouteClass::Catalog,
            Some(Endpoint::Tags) => RouteClass::Tags,
            Some(Endpoint::Manifest) => RouteClass::Manifest,
            Some(Endpoint::Blob) => RouteClass::Blob,
            Some(Endpoint::UploadStart | Endpoint::Upload) => RouteClass::BlobUpload,
            Some(Endpoint::Referrers) => RouteClass::Referrers,
            None => RouteClass::Other,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Base => "base",
            RouteClass::Blob => "blob",
            RouteClass::BlobUpload => "blob_upload",
            RouteClass::Manifest => "manifest",
            RouteClass::Tags => "tags",
            RouteClass::Catalog => "catalog",
            RouteClass::Referrers => "referrers",
            RouteClass::Health => "health",
            RouteClass::Metrics => "metrics",
            RouteClass::Token => "token",
            RouteClass::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The method label: standard methods by name, anything else as `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route: &'static str,
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

type HistogramFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    source: &'static str,
    reason: &'static str,
}

/// The configuration metrics: what is in force, what was applied and refused. Clones share
/// the same series.
#[derive(Debug, Clone, Default)]
pub struct ConfigMetrics {
    revision: Gauge,
    applied: Family<SourceLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    source_errors: Family<SourceLabels, Counter>,
}

impl ConfigMetrics {
    /// Metrics registered in `registry` (`config_revision`, `config_applied`,
    /// `config_refusals`, `config_source_errors` under its prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "config_revision",
            "Revision of the configuration document in force",
            metrics.revision.clone(),
        );
        registry.register(
            "config_applied",
            "Configuration documents put in force, by source",
            metrics.applied.clone(),
        );
        registry.register(
            "config_refusals",
            "Configuration documents refused (the running one stayed in force), by source and reason",
            metrics.refusals.clone(),
        );
        registry.register(
            "config_source_errors",
            "Failures reading a configuration source (retried), by source",
            metrics.source_errors.clone(),
        );
        metrics
    }

    /// Records that a document of `revision` from `source` was put in force.
    pub fn applied(&self, source: &'static str, revision: u64) {
        self.revision
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
        self.applied.get_or_create(&SourceLabels { source }).inc();
    }

    /// Records a refusal of a document from `source`.
    pub fn refused(&self, source: &'static str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels { source, reason })
            .inc();
    }

    /// Records a failure of `source` itself.
    pub fn source_error(&self, source: &'static str) {
        self.source_errors
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    /// Refusals counted so far for `source`, all reasons together.
    pub fn refusals(&self, source: &'static str) -> u64 {
        [
            "invalid",
            "incomplete",
            "unavailable",
            "keys",
            "federations",
        ]
        .into_iter()
        .map(|reason| {
            self.refusals
                .get_or_create(&RefusalLabels { source, reason })
                .get()
        })
        .sum()
    }

    /// The revision gauge.
    pub fn revision(&self) -> i64 {
        self.revision.get()
    }
}

/// The process's Prometheus registry and HTTP metrics. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    /// Per route class, indexed by `RouteClass::index`: no map lookup on the hot path.
    bytes_in: Vec<Counter>,
    bytes_out: Vec<Counter>,
    uploads_in_flight: Gauge,
    config: ConfigMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding the HTTP metrics, prefixed `dataplane_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dataplane");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by route class, method and status",
            requests.clone(),
        );
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response headers, by route class and method",
            latency.clone(),
        );
        let bytes_in_family = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_request_bytes",
            "Request body bytes received, by route class",
            bytes_in_family.clone(),
        );
        let bytes_out_family = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_response_bytes",
            "Response body bytes sent, by route class",
            bytes_out_family.clone(),
        );
        let uploads_in_flight = Gauge::default();
        registry.register(
            "uploads_in_flight",
            "Upload requests (POST, PATCH, PUT on upload routes) being served",
            uploads_in_flight.clone(),
        );
        let config = ConfigMetrics::register(&mut registry);
        let per_route = |family: &Family<RouteLabels, Counter>| {
            RouteClass::ALL
                .iter()
                .map(|route| {
                    family
                        .get_or_create(&RouteLabels {
                            route: route.as_str(),
                        })
                        .clone()
                })
                .collect()
        };
        Self {
            bytes_in: per_route(&bytes_in_family),
            bytes_out: per_route(&bytes_out_family),
            registry,
            requests,
            latency,
            uploads_in_flight,
            config,
        }
    }

    /// The configuration metrics, for [`crate::live::Applier`].
    pub fn config(&self) -> &ConfigMetrics {
        &self.config
    }

    /// The registry, for other layers to register their own metrics before serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// All metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Upload requests currently being served.
    pub fn uploads_in_flight(&self) -> i64 {
        self.uploads_in_flight.get()
    }
}

/// Marks the response to a read request (`GET`, `HEAD`) for [`AccessLog`]; set by [`track`].
#[derive(Debug, Clone, Copy)]
struct ReadRequest;

/// The access log: one `request served` line per request, with its status and latency, once
/// the response headers are ready (a [`tower_http::trace::OnResponse`] for the `TraceLayer`
/// placed outside [`track`], which marks read requests).
///
/// Successful reads (`GET`/`HEAD` answered below 400: pulls, the bulk of the traffic) are
/// logged at `debug`; writes, other methods and every error at `info`. The metrics count every
/// request whatever its log level.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLog;

impl AccessLog {
    /// Whether the access-log line of a response is logged at `debug` rather than `info`.
    pub fn is_quiet<B>(response: &http::Response<B>) -> bool {
        response.status().as_u16() < 400 && response.extensions().get::<ReadRequest>().is_some()
    }
}

impl<B> tower_http::trace::OnResponse<B> for AccessLog {
    fn on_response(self, response: &http::Response<B>, latency: Duration, _span: &tracing::Span) {
        let status = response.status().as_u16();
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if Self::is_quiet(response) {
            tracing::debug!(status, latency_us, "request served");
        } else {
            tracing::info!(status, latency_us, "request served");
        }
    }
}

/// Decrements the uploads-in-flight gauge when the request ends, however it ends.
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware recording the HTTP metrics of every request.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = RouteClass::of(request.uri().path());
    let method = method_label(request.method());
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    let _in_flight = (route == RouteClass::BlobUpload
        && matches!(
            *request.method(),
            Method::POST | Method::PATCH | Method::PUT
        ))
    .then(|| {
        metrics.uploads_in_flight.inc();
        InFlight(metrics.uploads_in_flight.clone())
    });
    let start = Instant::now();
    let counter = metrics.bytes_in[route.index()].clone();
    let request = request.map(|body| Body::new(CountingBody::new(body, counter)));

    let response = next.run(request).await;

    metrics
        .latency
        .get_or_create(&LatencyLabels {
            route: route.as_str(),
            method,
        })
        .observe(start.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.as_str(),
            method,
            status: response.status().as_u16(),
        })
        .inc();
    let counter = metrics.bytes_out[route.index()].clone();
    let mut response = response.map(|body| Body::new(CountingBody::new(body, counter)));
    if read {
        response.extensions_mut().insert(ReadRequest);
    }
    response
}

pin_project_lite::pin_project! {
    /// A body that counts the data bytes passing through it.
    struct CountingBody<B> {
        #[pin]
        inner: B,
        counter: Counter,
    }
}

impl<B> CountingBody<B> {
    fn new(inner: B, counter: Counter) -> Self {
        Self { inner, counter }
    }
}

impl<B> http_body::Body for CountingBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.counter.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths_from_the_right() {
        let cases = [
            ("/v2/", RouteClass::Base),
            ("/v2", RouteClass::Base),
            ("/v2/_catalog", RouteClass::Catalog),
            ("/v2/a/b/tags/list", RouteClass::Tags),
            ("/v2/a/blobs/uploads/", RouteClass::BlobUpload),
            ("/v2/a/blobs/uploads", RouteClass::BlobUpload),
            (
                "/v2/a/blobs/uploads/6f1c0a4e-0000-4000-8000-000000000000",
                RouteClass::BlobUpload,
            ),
            ("/v2/a/blobs/sha256:abc", RouteClass::Blob),
            ("/v2/blobs/blobs/sha256:abc", RouteClass::Blob),
            ("/v2/x/blobs/y/manifests/latest", RouteClass::Manifest),
            ("/v2/a/manifests/sha256:abc", RouteClass::Manifest),
            ("/v2/a/referrers/sha256:abc", RouteClass::Referrers),
            ("/v2/manifests/latest", RouteClass::Other),
            ("/v2/tags/list", RouteClass::Other),
            ("/v2/blobs/uploads/", RouteClass::Other),
            ("/v2/a/unknown/x", RouteClass::Other),
            ("/healthz", RouteClass::Health),
            ("/readyz", RouteClass::Health),
            ("/metrics", RouteClass::Metrics),
            ("/", RouteClass::Other),
            ("/v2x", RouteClass::Other),
        ];
        for (path, class) in cases {
            assert_eq!(RouteClass::of(path), class, "{path}");
        }
        for (i, class) in RouteClass::ALL.iter().enumerate() {
            assert_eq!(class.index(), i);
        }
    }

    #[tokio::test]
    async fn successful_reads_are_quiet_in_the_access_log() {
        use axum::Router;
        use axum::http::StatusCode;
        use axum::routing::get;
        use tower::ServiceExt;

        let metrics = Arc::new(Metrics::new());
        let app = Router::new()
            .route(
                "/v2/a/manifests/{r}",
                get(|| async { "m" }).put(|| async { StatusCode::CREATED }),
            )
            .route("/v2/a/blobs/{d}", get(|| async { StatusCode::NOT_FOUND }))
            .layer(axum::middleware::from_fn_with_state(metrics, track));
        let quiet = |method: &str, uri: &str| {
            let app = app.clone();
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap();
            async move { AccessLog::is_quiet(&app.oneshot(request).await.unwrap()) }
        };
        assert!(quiet("GET", "/v2/a/manifests/latest").await);
        assert!(quiet("HEAD", "/v2/a/manifests/latest").await);
        assert!(!quiet("PUT", "/v2/a/manifests/latest").await, "writes");
        assert!(!quiet("GET", "/v2/a/blobs/sha256:0").await, "errors");
        assert!(!quiet("DELETE", "/v2/a/manifests/latest").await, "405");
    }

    #[test]
    fn methods_outside_the_api_share_one_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }

    #[tokio::test]
    async fn middleware_counts_requests_bytes_and_uploads() {
        use axum::Router;
        use axum::routing::{get, post};
        use tower::ServiceExt;

        let metrics = Arc::new(Metrics::new());
        let probe = metrics.clone();
        let app = Router::new()
            .route("/v2/{*rest}", get(|| async { "hello" }))
            .route(
                "/v2/a/blobs/uploads/",
                post(move |body: Bytes| {
                    let probe = probe.clone();
                    async move {
                        assert_eq!(probe.uploads_in_flight(), 1);
                        format!("{}", body.len())
                    }
                }),
            )
            .layer(axum::middleware::from_fn_with_state(metrics.clone(), track));

        let response = app
            .clone()
            .oneshot(
                Request::post("/v2/a/blobs/uploads/")
                    .body(Body::from(vec![0u8; 1000]))
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&body[..], b"1000");
        assert_eq!(metrics.uploads_in_flight(), 0);

        let response = app
            .oneshot(Request::get("/v2/a/tags/list").body(Body::empty()).unwrap())
            .await
            .unwrap();
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();

        let text = metrics.encode();
        assert!(
            text.contains(
                r#"dataplane_http_requests_total{route="blob_upload",method="POST",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"dataplane_http_requests_total{route="tags",method="GET",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"dataplane_http_request_bytes_total{route="blob_upload"} 1000"#),
            "{text}"
        );
        assert!(
            text.contains(r#"dataplane_http_response_bytes_total{route="tags"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"dataplane_http_request_duration_seconds_count{route="tags",method="GET"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("dataplane_uploads_in_flight 0"), "{text}");
    }
}
