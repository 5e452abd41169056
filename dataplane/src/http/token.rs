//! The token service at `/token`, as Docker-compatible clients use it.
//!
//! - `GET /token?service=...&scope=...` with optional Basic authentication (an access
//!   credential, or an OIDC token as the password of user [`OIDC_USERNAME`]); without it, an
//!   anonymous token (pull on public namespaces only). `offline_token=true` adds a refresh
//!   token for credentials.
//! - `POST /token` with a form (OAuth 2.0): `grant_type=password` (`username`, `password`),
//!   `grant_type=refresh_token` (`refresh_token`), or
//!   `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (`subject_token`, an OIDC
//!   token); `scope` holds space-separated scopes; `access_type=offline` adds a refresh token
//!   (for a workload identity: pull only, for an hour at most and never past its OIDC token).
//! - A refresh token is also accepted as the password of user [`TOKEN_USERNAME`] (`<token>`,
//!   Docker's convention for identity tokens), wherever a password is.
//!
//! A token grants the intersection of what was asked and what the identity may do; asking
//! for more is not an error (the registry then refuses the request the token does not
//! cover). Failures to authenticate are `401` with a message that says what to fix.
//!
//! [`OIDC_USERNAME`]: crate::auth::OIDC_USERNAME
//! [`TOKEN_USERNAME`]: crate::auth::TOKEN_USERNAME

use std::time::SystemTime;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONNECTION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::auth::{Peer, basic_credentials};
use super::body::{self, BodyError};
use super::error::{ApiError, ErrorCode};
use crate::auth::{
    AccessIndex, AuthError, Identity, IssuedToken, ScopeRequest, audit, retry_after_secs,
};

/// The OAuth grant type of a token exchange.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn scopes(params: &[(String, String)]) -> Vec<ScopeRequest> {
    ScopeRequest::parse_all(
        params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    )
}

/// `GET /token`.
pub async fn get(
    State(state): State<AppState>,
    Peer(source): Peer,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = query else {
        return bad_request("malformed query string");
    };
    let auth = state.auth();
    let index = state.live().current();
    let now = SystemTime::now();
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let (username, identity) = match authorization {
        None => (String::new(), Ok(Identity::anonymous())),
        Some(value) => match basic_credentials(value) {
            Some((user, password)) => {
                let identity = auth
                    .authenticate_password(&index, &user, &password, source, now)
                    .await;
                (user, identity)
            }
            None => return unauthorized("the token endpoint takes Basic authentication"),
        },
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(e) => return failed(&username, "password", &e),
    };
    let offline = param(&params, "offline_token") == Some("true");
    respond(
        &state,
        &index,
        &identity,
        &scopes(&params),
        offline,
        now,
        &params,
    )
}

/// `POST /token` (OAuth 2.0 form).
pub async fn post(
    State(state): State<AppState>,
    Peer(source): Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match body::read_whole(body, &headers, body::SMALL_BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => {
            let status = match e {
                BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            let mut r = oauth_error(status, "invalid_request", &e.to_string());
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    let Ok(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "malformed form");
    };
    let auth = state.auth();
    let index = state.live().current();
    let now = SystemTime::now();
    let grant_type = param(&params, "grant_type").unwrap_or_default();
    let username = param(&params, "username").unwrap_or_default().to_owned();
    let identity = match grant_type {
        "password" => {
            let password = param(&params, "password").unwrap_or_default();
            auth.authenticate_password(&index, &username, password, source, now)
                .await
        }
        "refresh_token" => {
            let token = param(&params, "refresh_token").unwrap_or_default();
            auth.authenticate_refresh_token(&index, token, now)
        }
        TOKEN_EXCHANGE_GRANT => {
            let token = param(&params, "subject_token").unwrap_or_default();
            auth.authenticate_oidc(&index, token, now).await
        }
        other => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!(
                    "grant_type {other:?} is not supported: use password, refresh_token or \
                     {TOKEN_EXCHANGE_GRANT}"
                ),
            );
        }
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(AuthError::Throttled(t)) => {
            audit::login_throttled(&username, grant_type, t.limit.as_str(), t.retry_after);
            let mut r = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "slow_down",
                &AuthError::Throttled(t).to_string(),
            );
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(t.retry_after)),
            );
            return r;
        }
        Err(e) => {
            audit::authentication_failed(&username, grant_type, &e.to_string());
            if e.is_transient() {
                return oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    &e.to_string(),
                );
            }
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant", &e.to_string());
        }
    };
    // A refresh token for a credential's password, or for a workload identity's OIDC token
    // (pull only, never past that token's expiry): what kubelet credential providers return.
    let offline = param(&params, "access_type") == Some("offline")
        && (grant_type == "password" || grant_type == TOKEN_EXCHANGE_GRANT);
    respond(
        &state,
        &index,
        &identity,
        &scopes(&params),
        offline,
        now,
        &params,
    )
}

fn respond(
    state: &AppState,
    index: &AccessIndex,
    identity: &Identity,
    requested: &[ScopeRequest],
    offline: bool,
    now: SystemTime,
    params: &[(String, String)],
) -> Response {
    let auth = state.auth();
    let issued = match auth.issue_access_token(index, identity, requested, now) {
        Ok(issued) => issued,
        Err(e) => return ApiError::internal(&e).into_response(),
    };
    let refresh = if offline {
        match auth.issue_refresh_token(index, identity, now) {
            Ok(token) => token,
            Err(e) => return ApiError::internal(&e).into_response(),
        }
    } else {
        None
    };
    let granted = granted_summary(&issued);
    audit::token_issued(
        &identity.principal,
        &granted,
        &params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    let mut body = json!({
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in.as_secs(),
        "issued_at": humantime::format_rfc3339_seconds(issued.issued_at).to_string(),
        "scope": granted,
    });
    if let Some(refresh) = refresh {
        body["refresh_token"] = refresh.into();
    }
    let mut r = Json(body).into_response();
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The granted scopes, space-separated, in scope syntax.
fn granted_summary(issued: &IssuedToken) -> String {
    issued
        .claims
        .access
        .iter()
        .filter(|a| !a.actions.is_empty())
        .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn failed(username: &str, method: &str, e: &AuthError) -> Response {
    if let AuthError::Throttled(t) = e {
        return throttled(username, method, e, t);
    }
    audit::authentication_failed(username, method, &e.to_string());
    if e.is_transient() {
        return unavailable(e);
    }
    unauthorized(&e.to_string())
}

/// `429 TOOMANYREQUESTS` with `Retry-After`, for a login refused by the failure limits
/// (audited).
pub(super) fn throttled(
    username: &str,
    method: &str,
    e: &AuthError,
    t: &crate::auth::throttle::Throttled,
) -> Response {
    audit::login_throttled(username, method, t.limit.as_str(), t.retry_after);
    ApiError::new(ErrorCode::TooManyRequests, e.to_string())
        .with_header(
            axum::http::header::RETRY_AFTER,
            retry_after_secs(t.retry_after).to_string(),
        )
        .into_response()
}

/// `503 UNAVAILABLE` with `Retry-After`, for failures the client should retry.
pub(super) fn unavailable(e: &AuthError) -> Response {
    ApiError::new(ErrorCode::Unavailable, e.to_string())
        .with_header(axum::http::header::RETRY_AFTER, "5")
        .into_response()
}

fn unauthorized(message: &str) -> Response {
    ApiError::new(ErrorCode::Unauthorized, message)
        .with_header(WWW_AUTHENTICATE, "Basic realm=\"registry\"")
        .into_response()
}

fn bad_request(message: &str) -> Response {
    ApiError::new(ErrorCode::Unsupported, message)
        .with_status(StatusCode::BAD_REQUEST)
        .into_response()
}

/// An OAuth 2.0 error response (RFC 6749 section 5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}
