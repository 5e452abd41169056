//! The HTTP API: OCI Distribution v1.1 at `/v2/`, the token service at `/token`, and the
//! operator's endpoints at `/internal/v1/` ([`internal`]).
//!
//! Layer rule: handlers extract and parse (the path once, from the right, on the raw path;
//! headers; query), authorize through [`auth::Access`], call [`crate::registry`], and map the
//! outcome to a response. They hold no registry logic and never touch storage. Errors become
//! OCI error bodies in one place, [`error::ApiError`]. Process concerns (metrics, health,
//! listening) belong to [`crate::server`].

pub mod auth;
mod blobs;
pub mod body;
pub mod error;
pub(crate) mod headers;
pub mod internal;
mod listing;
mod manifests;
pub mod route;
pub mod token;
mod uploads;

#[cfg(test)]
mod tests;

use std::any::Any;
use std::io;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header::{CONTENT_LENGTH, LOCATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures_util::TryStreamExt;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use self::auth::Access;
use self::error::{ApiError, ErrorCode};
use self::route::{Route, RouteError};
use crate::auth::{AuthService, Transport};
use crate::config::{Config, Loaded};
use crate::live::{Applier, ApplyError, LiveConfig, Source};
use crate::registry::Registry;
use crate::storage::ByteStream;
use crate::telemetry::ConfigMetrics;

/// `Docker-Distribution-API-Version`, set on every `/v2` response.
pub const API_VERSION_HEADER: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
/// `Docker-Content-Digest`.
pub const CONTENT_DIGEST_HEADER: HeaderName = HeaderName::from_static("docker-content-digest");
/// `Docker-Upload-UUID`.
pub const UPLOAD_UUID_HEADER: HeaderName = HeaderName::from_static("docker-upload-uuid");
/// `OCI-Subject`.
pub const OCI_SUBJECT_HEADER: HeaderName = HeaderName::from_static("oci-subject");
/// `OCI-Tag`, one per tag set by a push by digest with `tag` parameters.
pub const OCI_TAG_HEADER: HeaderName = HeaderName::from_static("oci-tag");
/// `OCI-Filters-Applied`.
pub const OCI_FILTERS_APPLIED_HEADER: HeaderName = HeaderName::from_static("oci-filters-applied");

/// State shared by the API handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    registry: Arc<Registry>,
    auth: Arc<AuthService>,
    live: LiveConfig,
}

impl AppState {
    /// State serving `registry` with the access control of `auth` under the configuration
    /// in force in `live`.
    pub fn new(registry: Arc<Registry>, auth: Arc<AuthService>, live: LiveConfig) -> Self {
        Self {
            registry,
            auth,
            live,
        }
    }

    /// State serving `registry` under one fixed configuration, applied as a process applies
    /// its first document (tests, embedding). Fails when the document is refused.
    pub fn with_config(
        registry: Arc<Registry>,
        config: Config,
        transport: Transport,
    ) -> Result<Self, ApplyError> {
        let auth = AuthService::with_login_limits(transport, config.settings.logins.clone());
        let (applier, live) = Applier::new(
            Arc::clone(&auth),
            config.settings.clone(),
            ConfigMetrics::default(),
        );
        applier.apply(Source::Startup, Loaded::stating_all(config))?;
        Ok(Self::new(registry, auth, live))
    }

    /// State serving `registry` openly, with the default configuration (tests).
    pub fn open(registry: Arc<Registry>) -> Self {
        Self::with_config(registry, Config::default(), Transport::default())
            .expect("the default configuration applies")
    }

    /// Access control.
    pub fn auth(&self) -> &Arc<AuthService> {
        &self.auth
    }

    /// The configuration in force.
    pub fn live(&self) -> &LiveConfig {
        &self.live
    }

    /// The registry served.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

/// The `/v2/` API and the token endpoint as a router, with its panic and API-version layers.
/// Request ids, the request's span and the access log are the server's
/// ([`crate::server`]): one of each per request, for the API and the operational endpoints.
pub fn build_app(state: AppState) -> Router {
    let layers = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(SetResponseHeaderLayer::overriding(
            API_VERSION_HEADER,
            HeaderValue::from_static("registry/2.0"),
        ));
    Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .route("/token", get(token::get).post(token::post))
        .route("/internal/v1/retention/plan", post(internal::plan))
        .route("/internal/v1/retention/run", post(internal::run))
        .route("/internal/v1/usage", get(internal::usage))
        .with_state(state)
        .layer(layers)
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    let err = io::Error::other(format!("handler panicked: {what}"));
    ApiError::internal(&err).into_response()
}

/// Everything a handler needs from a request.
#[derive(Debug)]
struct Ctx {
    registry: Arc<Registry>,
    access: Access,
    headers: HeaderMap,
    query: Vec<(String, String)>,
}

impl Ctx {
    /// The first value of a query parameter.
    fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Turns a request body into the byte stream storage consumes, without buffering it.
fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(io::Error::other))
}

/// An empty response with `status` and `Content-Length: 0`.
fn empty(status: StatusCode) -> Response {
    let mut r = status.into_response();
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

/// Sets a header from text, skipping values that are not valid header text.
fn set_header(r: &mut Response, name: HeaderName, value: impl AsRef<str>) {
    if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
        r.headers_mut().insert(name, v);
    }
}

/// `201 Created` for a blob now present in a repository.
fn blob_created(name: &crate::oci::RepoName, digest: &crate::oci::Digest) -> Response {
    let mut r = empty(StatusCode::CREATED);
    set_header(&mut r, LOCATION, format!("/v2/{name}/blobs/{digest}"));
    set_header(&mut r, CONTENT_DIGEST_HEADER, digest.to_string());
    r
}

async fn dispatch(
    State(state): State<AppState>,
    access: Access,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path();
    let rest = path
        .strip_prefix("/v2/")
        .or_else(|| (path == "/v2").then_some(""))
        .unwrap_or(path);
    let route = match route::parse(rest) {
        Ok(route) => route,
        Err(RouteError::NotFound) => return ApiError::not_found().into_response(),
        Err(RouteError::Name(e)) => {
            return ApiError::new(ErrorCode::NameInvalid, e.to_string()).into_response();
        }
    };
    let query = match Query::<Vec<(String, String)>>::try_from_uri(&uri) {
        Ok(Query(q)) => q,
        Err(_) => {
            return ApiError::new(ErrorCode::Unsupported, "malformed query string")
                .with_status(StatusCode::BAD_REQUEST)
                .into_response();
        }
    };
    // Uploads stream their bodies into storage and a manifest has its own limit; any other
    // body is small, and read (so that the connection can be reused) before the request is
    // handled.
    let streams_body = matches!(
        (&route, &method),
        (Route::UploadStart(_), &Method::POST)
            | (Route::Upload(..), &Method::PATCH | &Method::PUT)
            | (Route::Manifest(..), &Method::PUT)
    );
    let body = if streams_body {
        body
    } else {
        match body::read_whole(body, &headers, body::SMALL_BODY_LIMIT).await {
            Ok(_) => Body::empty(),
            Err(e) => return closing(body_error(e)).into_response(),
        }
    };
    let ctx = Ctx {
        registry: Arc::clone(&state.registry),
        access,
        headers,
        query,
    };
    let result = match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => ctx.access.require_login().map(|()| base()),
        (Route::Catalog, Method::GET) => listing::catalog(&ctx).await,
        (Route::Tags(name), Method::GET) => listing::tags(&ctx, &name).await,
        (Route::Referrers(name, d), Method::GET) => listing::referrers(&ctx, &name, &d).await,
        (Route::Manifest(name, r), Method::GET) => manifests::get(&ctx, &name, &r, true).await,
        (Route::Manifest(name, r), Method::HEAD) => manifests::get(&ctx, &name, &r, false).await,
        (Route::Manifest(name, r), Method::PUT) => manifests::put(&ctx, &name, &r, body).await,
        (Route::Manifest(name, r), Method::DELETE) => manifests::delete(&ctx, &name, &r).await,
        (Route::Blob(name, d), Method::GET) => blobs::get(&ctx, &name, &d, true).await,
        (Route::Blob(name, d), Method::HEAD) => blobs::get(&ctx, &name, &d, false).await,
        (Route::Blob(name, d), Method::DELETE) => blobs::delete(&ctx, &name, &d).await,
        (Route::UploadStart(name), Method::POST) => uploads::start(&ctx, &name, body).await,
        (Route::Upload(name, id), Method::GET) => uploads::status(&ctx, &name, &id).await,
        (Route::Upload(name, id), Method::PATCH) => uploads::patch(&ctx, &name, &id, body).await,
        (Route::Upload(name, id), Method::PUT) => uploads::put(&ctx, &name, &id, body).await,
        (Route::Upload(name, id), Method::DELETE) => uploads::cancel(&ctx, &name, &id).await,
        (_, method) => Err(ApiError::new(
            ErrorCode::Unsupported,
            format!("method {method} is not supported on this endpoint"),
        )),
    };
    match result {
        Ok(response) => response,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => closing(e).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The error for a body that could not be read whole.
fn body_error(e: body::BodyError) -> ApiError {
    match e {
        body::BodyError::TooLarge { .. } => ApiError::new(ErrorCode::SizeInvalid, e.to_string())
            .with_status(StatusCode::PAYLOAD_TOO_LARGE),
        body::BodyError::BadLength | body::BodyError::Failed(_) => {
            ApiError::new(ErrorCode::SizeInvalid, e.to_string())
        }
    }
}

/// `e`, answered with `Connection: close`: after a refused body the connection is not reused
/// (what is left of the body may still be on its way).
fn closing(e: ApiError) -> ApiError {
    e.with_header(axum::http::header::CONNECTION, "close")
}

/// `GET /v2/`: the API version check.
fn base() -> Response {
    let mut r = (StatusCode::OK, "{}").into_response();
    set_header(&mut r, axum::http::header::CONTENT_TYPE, "application/json");
    r
}
