//! Version `v1alpha1` of the `registry.thalassa.cloud` API.
//!
//! - [`RegistryNamespace`]: a registry namespace of one region (`<host>/<namespace>/...`).
//! - [`RegistryCredential`]: an access credential (a generated secret delivered into a
//!   Secret) or a workload-identity federation (OIDC tokens, no secret), granting a scope on
//!   registry namespaces.
//! - [`RetentionPolicy`]: which tags and manifests of registry namespaces are deleted, on a
//!   schedule, with the plan shown before each run.
//!
//! Field docs are the `kubectl explain` descriptions. Rules the schema can state (formats,
//! enums, CEL) are enforced at admission with messages that say what to fix; rules that need
//! other objects (conflicts, tenancy, feature gates) are reported in `status.conditions`.

mod conditions;
mod credential;
mod namespace;
mod retention;

pub use conditions::{Condition, ConditionStatus, reasons};
pub use credential::{
    ClaimRule, CredentialScope, KubeconfigSecretRef, MAX_SYNC_TARGETS, PULL_SECRETS_LABEL,
    RegistryCredential, RegistryCredentialSpec, RegistryCredentialStatus, RemoteCluster,
    SyncTarget, SyncTargetStatus, WorkloadIdentity,
};
pub use namespace::{
    NamespaceScope, RegistryNamespace, RegistryNamespaceSpec, RegistryNamespaceStatus,
};
pub use retention::{
    RetentionPolicy, RetentionPolicySpec, RetentionPolicyStatus, RetentionRulesSpec, RetentionRun,
    TagSelector,
};
