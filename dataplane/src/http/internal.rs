//! The operator's endpoints, under `/internal/v1/`: retention plans and runs, and usage.
//!
//! - `POST /internal/v1/retention/plan`: plans a policy ([`RetentionRequest`]) over the
//!   repositories' present state, keeps the whole plan in storage (any replica can run it)
//!   and answers its summary ([`RetentionResponse`]).
//! - `POST /internal/v1/retention/run`: re-plans and deletes what the kept plan and the fresh
//!   one agree on; answers what was deleted. `409` when no plan was made with these rules.
//! - `GET /internal/v1/usage`: every namespace's metered usage ([`crds::usage::UsageResponse`]),
//!   from the books in storage.
//!
//! Callers present a registry access token (`Authorization: Bearer`) whose subject is
//! [`OPERATOR_SUBJECT`] and whose access lists `internal:retention:*` (retention) or
//! `internal:usage:*` (usage), signed with the
//! region's keys: the token service never issues such a token, only the operator, which
//! holds the keys, can. With no access control configured (a development registry on
//! loopback) every caller may.

use std::collections::BTreeSet;
use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use crds::retention::{
    PlanItem, RetentionRequest, RetentionResponse, RetentionRules, RetentionScope,
};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::auth::Mode;
use crate::registry::RegistryError;
use crate::retention;
use crate::storage::RecordKey;

/// The subject of the operator's tokens.
pub const OPERATOR_SUBJECT: &str = "system:operator";
/// The resource kind of the internal endpoints in a token's access list.
pub const INTERNAL_KIND: &str = "internal";
/// The resource name of the retention endpoints.
pub const RETENTION_RESOURCE: &str = "retention";
/// The resource name of the usage endpoint.
pub const USAGE_RESOURCE: &str = "usage";

/// A plan kept between planning and the run that follows it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeptPlan {
    scope: RetentionScope,
    rules: RetentionRules,
    items: Vec<PlanItem>,
}

/// A failure of an internal endpoint: a status and a message for the operator's logs and
/// the policy's status.
#[derive(Debug)]
pub struct InternalError {
    status: StatusCode,
    message: String,
}

impl InternalError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<RegistryError> for InternalError {
    fn from(err: RegistryError) -> Self {
        tracing::warn!(error = %err, "retention failed in storage");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage failed: {err}"),
        )
    }
}

impl IntoResponse for InternalError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "message": self.message })),
        )
            .into_response()
    }
}

/// Succeeds when the caller is the operator with access to `resource` (or access control is
/// off).
fn authorize(state: &AppState, headers: &HeaderMap, resource: &str) -> Result<(), InternalError> {
    let index = state.live().current();
    match index.mode() {
        Mode::Open => return Ok(()),
        Mode::Closed => {
            return Err(InternalError::new(
                StatusCode::FORBIDDEN,
                "access control is not configured on a public listener",
            ));
        }
        Mode::Enforced => {}
    }
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            InternalError::new(StatusCode::UNAUTHORIZED, "a bearer token is required")
        })?;
    let claims = index
        .verify_access_token(token)
        .map_err(|_| InternalError::new(StatusCode::UNAUTHORIZED, "invalid token"))?;
    if claims.sub == OPERATOR_SUBJECT && claims.grants(INTERNAL_KIND, resource, "*") {
        Ok(())
    } else {
        Err(InternalError::new(
            StatusCode::FORBIDDEN,
            format!("the token does not grant the {resource} endpoints"),
        ))
    }
}

/// Where a policy's plan is kept.
fn plan_key(policy: &str) -> Result<RecordKey, InternalError> {
    let valid = policy.split('/').count() == 2;
    format!("retention/{policy}/plan")
        .parse()
        .ok()
        .filter(|_| valid)
        .ok_or_else(|| {
            InternalError::new(
                StatusCode::BAD_REQUEST,
                format!("policy {policy:?} is not <kubernetes namespace>/<name>"),
            )
        })
}

/// Checks the caller and the request; returns where the policy's plan is kept and the set of
/// manifests in use.
fn admit(
    state: &AppState,
    headers: &HeaderMap,
    request: &RetentionRequest,
) -> Result<(RecordKey, BTreeSet<String>), InternalError> {
    authorize(state, headers, RETENTION_RESOURCE)?;
    let problems = request.rules.check();
    if !problems.is_empty() {
        let text: Vec<String> = problems.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        return Err(InternalError::new(StatusCode::BAD_REQUEST, text.join("; ")));
    }
    let key = plan_key(&request.policy)?;
    Ok((key, request.in_use.iter().cloned().collect()))
}

/// `POST /internal/v1/retention/plan`.
pub async fn plan(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<RetentionRequest>,
) -> Result<Json<RetentionResponse>, InternalError> {
    let (key, in_use) = admit(&state, &headers, &request)?;
    let outcome = retention::plan(
        state.registry(),
        &request.scope,
        &request.rules,
        &in_use,
        SystemTime::now(),
    )
    .await?;
    let kept = KeptPlan {
        scope: request.scope,
        rules: request.rules,
        items: outcome.plan.items.clone(),
    };
    let record = serde_json::to_vec(&kept).expect("a plan serializes");
    state
        .registry()
        .storage()
        .record_put(&key, Bytes::from(record))
        .await
        .map_err(RegistryError::from)?;
    tracing::info!(policy = %request.policy, tags = outcome.plan.summary().tags,
        manifests = outcome.plan.summary().manifests, "retention planned");
    Ok(Json(RetentionResponse {
        summary: outcome.plan.summary(),
        skipped: outcome.skipped,
    }))
}

/// `POST /internal/v1/retention/run`.
pub async fn run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<RetentionRequest>,
) -> Result<Json<RetentionResponse>, InternalError> {
    let (key, in_use) = admit(&state, &headers, &request)?;
    let storage = state.registry().storage();
    let Some(record) = storage
        .record_get(&key)
        .await
        .map_err(RegistryError::from)?
    else {
        return Err(InternalError::new(
            StatusCode::CONFLICT,
            "no plan of this policy to run: plan first",
        ));
    };
    let kept: KeptPlan = serde_json::from_slice(&record).map_err(|e| {
        InternalError::new(
            StatusCode::CONFLICT,
            format!("the kept plan cannot be read ({e}): plan again"),
        )
    })?;
    if kept.rules != request.rules || kept.scope != request.scope {
        return Err(InternalError::new(
            StatusCode::CONFLICT,
            "the policy changed since its plan was made: plan again",
        ));
    }
    let outcome = retention::apply(
        state.registry(),
        &request.scope,
        &request.rules,
        &in_use,
        SystemTime::now(),
        &kept.items,
    )
    .await?;
    let summary = outcome.plan.summary();
    tracing::info!(policy = %request.policy, tags = summary.tags, manifests = summary.manifests,
        bytes = summary.bytes, "retention ran");
    Ok(Json(RetentionResponse {
        summary,
        skipped: outcome.skipped,
    }))
}

/// `GET /internal/v1/usage`: every namespace's metered usage.
pub async fn usage(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<crds::usage::UsageResponse>, InternalError> {
    authorize(&state, &headers, USAGE_RESOURCE)?;
    let usage = crate::registry::metering::usage(&**state.registry().storage())
        .await
        .map_err(RegistryError::from)?;
    Ok(Json(usage))
}
