//! The audit trail: one structured `tracing` event (target `audit`) per authorization
//! decision that matters — who, with which credential, in which namespace, what, and whether
//! it was allowed.
//!
//! Denials and authentication failures are logged at `warn`, writes and token issuance at
//! `info`, allowed reads at `debug` (they are the bulk of the traffic; enable them with
//! `RUST_LOG=audit=debug`). Secrets and tokens never appear in these events.

use std::time::Duration;

use super::{Action, Principal};
use crate::oci::RepoName;

/// A request on a repository was allowed or denied.
pub fn repository_access(principal: &Principal, repo: &RepoName, action: Action, allowed: bool) {
    // Fields are formatted only when the event is enabled: allowed pulls cost nothing at the
    // default level.
    let namespace = repo.namespace();
    let action = action.as_str();
    if !allowed {
        tracing::warn!(target: "audit", principal = %principal, namespace, repository = %repo, action, outcome = "denied", "access denied");
    } else if action == "pull" {
        tracing::debug!(target: "audit", principal = %principal, namespace, repository = %repo, action, outcome = "allowed", "access allowed");
    } else {
        tracing::info!(target: "audit", principal = %principal, namespace, repository = %repo, action, outcome = "allowed", "access allowed");
    }
}

/// The token endpoint issued a token.
pub fn token_issued(principal: &Principal, granted: &str, requested: &str) {
    tracing::info!(target: "audit", principal = %principal, granted, requested, outcome = "issued", "token issued");
}

/// Authentication failed (bad password, refused OIDC token, invalid bearer token).
pub fn authentication_failed(username: &str, method: &str, reason: &str) {
    tracing::warn!(target: "audit", username, method, reason, outcome = "denied", "authentication failed");
}

/// A login was refused by the limits on failed logins, before any secret was checked.
pub fn login_throttled(username: &str, method: &str, limit: &str, retry_after: Duration) {
    tracing::warn!(target: "audit", username, method, limit, retry_after_secs = retry_after.as_secs_f64(), outcome = "throttled", "login refused: too many failed logins");
}

/// The catalog was listed, filtered to what the caller may see.
pub fn catalog_listed(principal: &Principal) {
    tracing::debug!(target: "audit", principal = %principal, action = "catalog", outcome = "allowed", "catalog listed");
}
