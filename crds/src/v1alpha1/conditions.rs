//! Status conditions, kstatus-compatible.
//!
//! Every object gets a `Ready` condition, `False` on the first pass and with the generation it
//! describes in `observedGeneration`. While an object converges `Reconciling=True` is set too;
//! when it cannot converge without a change by its owner (a conflict, a grant that is not
//! permitted, a disabled feature gate, an invalid spec) `Stalled=True` is set, which kstatus
//! (Flux, `kubectl wait`, Argo CD's health rules) reads as failed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Stable `reason` values of conditions and Events (tests and alerts may rely on them).
pub mod reasons {
    /// The object is served.
    pub const READY: &str = "Ready";
    /// The object has been seen and is being worked on.
    pub const RECONCILING: &str = "Reconciling";
    /// Another object already claims the same registry namespace in the region.
    pub const CONFLICT: &str = "Conflict";
    /// A credential names a registry namespace that its project may not be granted.
    pub const NOT_PERMITTED: &str = "NotPermitted";
    /// The organisation does not have the `containerRegistry` feature gate.
    pub const FEATURE_GATE_DISABLED: &str = "FeatureGateDisabled";
    /// The spec breaks a rule that admission could not check.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A named registry namespace does not exist (yet) in the region.
    pub const NAMESPACE_NOT_FOUND: &str = "NamespaceNotFound";
    /// The credential is past its `expiresAt`.
    pub const EXPIRED: &str = "Expired";
    /// A Secret the operator would write exists and was not created by it.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// A sync target cluster cannot be reached (or refuses the writes); the others are
    /// synced, and it catches up when it answers again.
    pub const DEGRADED: &str = "Degraded";
    /// Copies in a remote cluster that stayed unreachable were not removed (Event only).
    pub const GAVE_UP: &str = "GaveUp";
}

/// The status of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

/// One aspect of an object's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The aspect: `Ready`, `Reconciling` or `Stalled`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// A CamelCase word saying why (stable; see the API docs for the values).
    pub reason: String,
    /// What happened, for people: what to fix when something is wrong.
    pub message: String,
    /// The `metadata.generation` this condition describes.
    pub observed_generation: i64,
    /// When `status` last changed.
    pub last_transition_time: Time,
}

impl Condition {
    /// A condition, transitioning now unless `previous` had the same status (then its time
    /// is kept, so repeated reconciles do not move it).
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        generation: i64,
        previous: &[Condition],
        now: Time,
    ) -> Self {
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(now);
        Self {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time,
        }
    }
}

/// The schema of a `conditions` list: a list-map keyed by `type`, so server-side apply merges
/// conditions one by one.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}
