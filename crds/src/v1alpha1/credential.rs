//! `RegistryCredential`: access to registry namespaces, by a generated secret or by workload
//! identity.

// Repeated `printcolumn(type_ = ...)` and `validation` entries are distinct items of the
// kube derive, not duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::conditions::{Condition, conditions_schema};
use crate::config::Scope;

/// The scope a credential grants (`containerRegistry`, `containerRegistry:all`: push and
/// pull; `containerRegistry:pull`: pull only).
pub type CredentialScope = Scope;

/// An access credential for registry namespaces of one region.
///
/// With `secretName` (or by default) the operator generates a random secret, stores only its
/// argon2id hash in the region's configuration and delivers the user name and secret into a
/// Secret of this Kubernetes namespace. With `workloadIdentity` no secret exists: OIDC tokens
/// of the issuer whose claims match the rules are exchanged for registry access.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "registry.thalassa.cloud",
    version = "v1alpha1",
    kind = "RegistryCredential",
    namespaced,
    status = "RegistryCredentialStatus",
    shortname = "rcred",
    shortname = "regcred",
    category = "registry",
    doc = "Access to registry namespaces of one region: a generated secret delivered into a Secret, or a workload-identity federation (OIDC tokens, no secret).",
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Scope", type_ = "string", json_path = ".spec.scope"),
    printcolumn(name = "Username", type_ = "string", json_path = ".status.username"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expiresAt",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.workloadIdentity) && has(self.secretName))")
        .message("a workloadIdentity credential has no secret: remove spec.secretName"),
    validation = Rule::new("!(has(self.workloadIdentity) && has(self.rotationPeriod))")
        .message("a workloadIdentity credential has no secret to rotate: remove spec.rotationPeriod"),
    validation = Rule::new("!has(self.workloadIdentity) || !has(self.sync) || size(self.sync) == 0")
        .message("a workloadIdentity credential has no secret to sync: remove spec.sync"),
    validation = Rule::new("!has(self.rotationOverlap) || !has(self.rotationPeriod) || duration(self.rotationOverlap) < duration(self.rotationPeriod)")
        .message("spec.rotationOverlap must be shorter than spec.rotationPeriod"),
)]
pub struct RegistryCredentialSpec {
    /// The region whose registry the credential is for (for example `nl-01`). Cannot change.
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self) <= 63")
            .message("must be a region name: 1-63 lowercase letters, digits and '-' (for example nl-01)"),
        validation = Rule::new("self == oldSelf").message("spec.region cannot change: create a credential in the other region instead"),
    )]
    #[schemars(length(max = 63))]
    pub region: String,
    /// What the credential grants on its namespaces: `containerRegistry` or
    /// `containerRegistry:all` (push and pull) or `containerRegistry:pull` (pull only).
    pub scope: Scope,
    /// Registry namespace names the scope applies to (as in image references). Each must be a
    /// `RegistryNamespace` of the region in this Kubernetes namespace, or an
    /// organisation-scoped one of this project's organisation.
    #[x_kube(validation = Rule::new("self.all(n, n.matches('^[a-z0-9]+((\\\\.|_|__|-+)[a-z0-9]+)*$') && size(n) <= 63)")
        .message("each entry must be a registry namespace name: 1-63 lowercase letters and digits separated by '.', '_', '__' or dashes"))]
    #[schemars(length(min = 1, max = 256), inner(length(max = 63)))]
    pub namespaces: Vec<String>,
    /// When the credential stops working (RFC 3339). Unset: it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Issue a new secret this often (a duration such as `720h`, at least `1h`); the previous
    /// secret keeps working for `rotationOverlap`. Unset: the secret is rotated only on
    /// request (the `registry.thalassa.cloud/rotate` annotation set to a new value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(h|m|s))+$') && duration(self) >= duration('1h')")
        .message("must be a duration of at least 1h, written like 720h or 90m"))]
    #[schemars(length(max = 32))]
    pub rotation_period: Option<String>,
    /// How long the previous secret keeps working after a rotation (a duration such as `1h`,
    /// between `10s` and `168h`), so that every copy can be updated before it stops. Default
    /// `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(h|m|s))+$') && duration(self) >= duration('10s') && duration(self) <= duration('168h')")
        .message("must be a duration between 10s and 168h, written like 1h or 90s"))]
    #[schemars(length(max = 32))]
    pub rotation_overlap: Option<String>,
    /// The Secret (in this Kubernetes namespace) that receives `username` and `password`.
    /// Defaults to `metadata.name`. The operator never takes over a Secret it did not create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$') && size(self) <= 253")
        .message("must be a Kubernetes object name: lowercase letters, digits, '-' and '.'"))]
    #[schemars(length(max = 253))]
    pub secret_name: Option<String>,
    /// Instead of a secret: accept OIDC tokens of an issuer (a CI system, a Kubernetes
    /// cluster's service accounts) whose claims match the rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentity>,
    /// Where copies of the pull Secret go: Kubernetes namespaces (of this cluster or of
    /// remote ones) that receive a `kubernetes.io/dockerconfigjson` Secret for the region's
    /// host, and optionally their ServiceAccounts' `imagePullSecrets`. In this cluster only
    /// this Kubernetes namespace and namespaces of the same organisation labelled
    /// `registry.thalassa.cloud/pull-secrets: accept` are permitted: a target naming another
    /// namespace, or a selector asking for another organisation, is `NotPermitted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, (has(u.cluster) ? u.cluster.name : '') == (has(t.cluster) ? t.cluster.name : '') && (has(u.secretName) ? u.secretName : '') == (has(t.secretName) ? t.secretName : '')))")
        .message("two sync targets name the same cluster and secretName: merge them into one target"))]
    #[schemars(length(max = 16))]
    pub sync: Vec<SyncTarget>,
}

/// The most entries `spec.sync` and `status.sync` hold.
pub const MAX_SYNC_TARGETS: usize = 16;

/// Label a Kubernetes namespace carries, with the value `accept`, to receive pull Secrets
/// synced from other projects of its organisation.
pub const PULL_SECRETS_LABEL: &str = "registry.thalassa.cloud/pull-secrets";

/// One place the pull Secret is synced to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.namespaces) != has(self.namespaceSelector)")
        .message("set exactly one of namespaces (names) and namespaceSelector (labels)"),
)]
pub struct SyncTarget {
    /// The cluster: unset for this cluster, or a remote cluster reached through a kubeconfig
    /// Secret of this Kubernetes namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<RemoteCluster>,
    /// Kubernetes namespaces by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.all(n, n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(n) <= 63)")
        .message("each entry must be a Kubernetes namespace name: 1-63 lowercase letters, digits and '-'"))]
    #[schemars(length(min = 1, max = 256), inner(length(max = 63)))]
    pub namespaces: Option<Vec<String>>,
    /// Kubernetes namespaces by label (`matchLabels`, `matchExpressions`), matched among the
    /// namespaces the credential may reach (namespaces of other organisations never match);
    /// `{}` selects all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// The Secret's name in each target namespace. Defaults to the credential's Secret name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$') && size(self) <= 253")
        .message("must be a Kubernetes object name: lowercase letters, digits, '-' and '.'"))]
    #[schemars(length(max = 253))]
    pub secret_name: Option<String>,
    /// ServiceAccounts of each target namespace whose `imagePullSecrets` list the Secret:
    /// names, or `*` alone for every ServiceAccount. Other entries of the list are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(n, n == '*' || (n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$') && size(n) <= 253)) && (!self.exists(n, n == '*') || size(self) == 1)")
        .message("each entry must be a ServiceAccount name, or '*' alone for all of them"))]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub service_accounts: Vec<String>,
}

/// A remote cluster, reached with a kubeconfig kept in a Secret of the credential's own
/// Kubernetes namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteCluster {
    /// A name for the cluster in status and events.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("must be 1-63 lowercase letters, digits and '-'"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The Secret (in this Kubernetes namespace) holding the kubeconfig.
    pub kubeconfig_secret: KubeconfigSecretRef,
}

/// A key of a Secret in the credential's own Kubernetes namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigSecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The Secret's Kubernetes namespace: only the credential's own is permitted (any other is
    /// refused with `NotPermitted`, and nothing is synced through it). Default: the
    /// credential's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// The key holding the kubeconfig. Default `kubeconfig`.
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".to_owned()
}

/// A workload-identity federation: OIDC tokens from `issuer` for `audience` whose claims match
/// every rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentity {
    /// The issuer URL (`https://`; plain `http://` only on loopback addresses). Its discovery
    /// document and JWKS are fetched from there.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.matches('^http://(127\\\\.[0-9.]+|localhost|\\\\[::1\\\\])(:[0-9]+)?(/.*)?$')")
        .message("must be an https:// URL (plain http:// only for loopback issuers)"))]
    #[schemars(length(max = 1024))]
    pub issuer: String,
    /// The audience the tokens must be issued for (`aud`).
    #[schemars(length(min = 1, max = 1024))]
    pub audience: String,
    /// Claim rules; every rule must match. A value ending in `*` is a prefix.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub claim_rules: Vec<ClaimRule>,
    /// PEM certificates trusted for the issuer's HTTPS endpoints, besides the system roots
    /// (for example a cluster's CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.contains('-----BEGIN CERTIFICATE-----')")
        .message("must hold PEM certificates (-----BEGIN CERTIFICATE-----)"))]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,
}

/// A top-level claim must hold one of the listed values: a string exactly (or by prefix), a
/// number or boolean by its JSON text (`42`, `true`), an array when any element matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRule {
    /// The claim, for example `sub` or `project_path`.
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
    /// Accepted values (a value ending in `*` is a prefix).
    #[schemars(length(min = 1, max = 64), inner(length(max = 256)))]
    pub values: Vec<String>,
}

/// What the operator observed of a `RegistryCredential`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCredentialStatus {
    /// `Ready`, and `Reconciling` or `Stalled` while it is not.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The user name to log in with (`<kubernetes namespace>.<name>`); `oidc` for
    /// workload identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The Secret holding `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub secret_name: Option<String>,
    /// When the credential stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the current secret was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated: Option<Time>,
    /// When the previous secret stops working (the end of the last rotation's overlap), while
    /// it still works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_expires_at: Option<Time>,
    /// Progress of each sync target: one entry per target cluster and Secret name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub sync: Vec<SyncTargetStatus>,
}

/// How far one sync target got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncTargetStatus {
    /// The cluster's name (`local` for this cluster).
    pub cluster: String,
    /// The Secret name written in each namespace.
    pub secret_name: String,
    /// Namespaces the target selects and the credential may reach.
    pub namespaces: i32,
    /// Of those, namespaces holding the current Secret (and ServiceAccounts patched).
    pub synced: i32,
    /// `Synced`, `Progressing`, `NotPermitted`, `Conflict`, `Invalid`, `Unreachable` or
    /// `GivenUp`.
    pub state: String,
    /// What is wrong, naming the namespace or object, when not `Synced`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The kubeconfig Secret of a remote cluster, remembered so that copies there are removed
    /// when the target leaves the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret: Option<KubeconfigSecretRef>,
}

impl RegistryCredential {
    /// The credential id in the region's configuration and the user name clients log in
    /// with: `<kubernetes namespace>.<name>` (unique in a cluster; a Kubernetes namespace name
    /// has no dot, so the first dot separates the two).
    pub fn username(&self) -> String {
        format!(
            "{}.{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// The Secret that receives the secret: `spec.secretName`, else `metadata.name`.
    pub fn secret_name(&self) -> &str {
        self.spec
            .secret_name
            .as_deref()
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }
}
