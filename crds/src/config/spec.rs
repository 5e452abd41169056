//! The operator-owned part of the document: what the region serves and to whom. A reload
//! replaces it whole; it may come from one document or from an index and its shards.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{HumanDuration, Timestamp};

/// Region name used when a standalone document names none.
pub const DEFAULT_REGION: &str = "local";

/// The operator-owned part of a region's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSpec {
    /// The region this data plane serves.
    pub region: String,
    /// Revision of the document, increased by its writer on every change and reported by
    /// the data plane (`/readyz`, metrics). Standalone files may leave it at 0.
    pub revision: u64,
    /// Registry namespaces (the first component of repository names) and their settings.
    pub namespaces: Vec<NamespaceConfig>,
    /// Access credentials, stored as hashes.
    pub credentials: Vec<CredentialConfig>,
    /// Workload-identity federations: OIDC issuers whose tokens are exchanged for access.
    pub federations: Vec<FederationConfig>,
    /// Keys that sign the registry's access tokens.
    pub tokens: TokensConfig,
    /// Retention rules, resolved per namespace. Parsed and validated; not applied yet (the
    /// retention release applies them).
    pub retention: Vec<RetentionRule>,
    /// Shard documents that complete this one.
    pub shards: Vec<ShardRef>,
}

impl Default for RegionSpec {
    fn default() -> Self {
        Self {
            region: DEFAULT_REGION.to_owned(),
            revision: 0,
            namespaces: Vec::new(),
            credentials: Vec::new(),
            federations: Vec::new(),
            tokens: TokensConfig::default(),
            retention: Vec::new(),
            shards: Vec::new(),
        }
    }
}

impl RegionSpec {
    /// The namespace with this name, if declared.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceConfig> {
        self.namespaces.iter().find(|ns| ns.name == name)
    }

    /// Whether the document configures access control (any namespace, credential,
    /// federation or token-signing key). Without it the data plane is an open development
    /// registry: every caller may do everything, which is only allowed on a loopback address.
    /// The operator always writes signing keys, so a region it runs never becomes open, not
    /// even when its last namespace is deleted.
    pub fn access_control_enabled(&self) -> bool {
        !(self.namespaces.is_empty()
            && self.credentials.is_empty()
            && self.federations.is_empty()
            && self.tokens.keys.is_empty())
    }

    /// The `service` name of the token service.
    pub fn token_service(&self) -> &str {
        self.tokens.service.as_deref().unwrap_or(&self.region)
    }
}

/// A registry namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceConfig {
    /// The namespace: the first component of its repositories' names.
    pub name: String,
    /// Who may pull without credentials.
    #[serde(default)]
    pub visibility: Visibility,
    /// Tag patterns that cannot be moved once pushed: pushing another manifest under a
    /// matching tag is denied, pushing the same digest again is allowed. `*` matches any run
    /// of characters, `?` one character (`v*`, `release-?.*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub immutable_tags: Vec<String>,
}

/// Whether anonymous clients may pull from a namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Anyone may pull.
    Public,
    /// Only holders of a credential for the namespace may pull.
    #[default]
    Private,
}

/// What a credential or federation grants on its namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Scope {
    /// Push and pull.
    #[serde(rename = "containerRegistry")]
    ContainerRegistry,
    /// Push and pull (explicit form).
    #[serde(rename = "containerRegistry:all")]
    ContainerRegistryAll,
    /// Pull only.
    #[serde(rename = "containerRegistry:pull")]
    ContainerRegistryPull,
}

impl Scope {
    /// Whether the scope allows pushing.
    pub fn allows_push(self) -> bool {
        !matches!(self, Scope::ContainerRegistryPull)
    }
}

/// An access credential: the secret is stored only as a hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialConfig {
    /// Credential id (the user name clients present).
    pub id: String,
    /// Hash of the secret (PHC string format).
    pub secret_hash: String,
    /// What the credential grants.
    pub scope: Scope,
    /// Namespaces the scope applies to (each declared in `namespaces`).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Not valid before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// Not valid from this time on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Secrets replaced by a rotation that still work until their own expiry, so that
    /// clients holding the old secret keep working while the new one is rolled out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets: Vec<PreviousSecret>,
}

/// A rotated-out secret of a credential, accepted until `expiresAt`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviousSecret {
    /// Hash of the old secret (PHC string format).
    pub secret_hash: String,
    /// The old secret stops working at this time.
    pub expires_at: Timestamp,
}

impl fmt::Debug for PreviousSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreviousSecret")
            .field("secret_hash", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl fmt::Debug for CredentialConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialConfig")
            .field("id", &self.id)
            .field("secret_hash", &"<redacted>")
            .field("scope", &self.scope)
            .field("namespaces", &self.namespaces)
            .field("not_before", &self.not_before)
            .field("expires_at", &self.expires_at)
            .field("previous_secrets", &self.previous_secrets)
            .finish()
    }
}

/// A workload-identity federation: OIDC tokens from `issuer` for `audience` whose claims match
/// every rule are granted `scope` on `namespaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FederationConfig {
    /// Name of the federation (for logs and metrics).
    #[serde(default)]
    pub name: String,
    /// OIDC issuer URL.
    pub issuer: String,
    /// Required audience.
    pub audience: String,
    /// Claim rules; all must match.
    #[serde(default)]
    pub claim_rules: Vec<ClaimRule>,
    /// What a matching token grants.
    pub scope: Scope,
    /// Namespaces the scope applies to.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// PEM certificates trusted for the issuer's HTTPS endpoints, in addition to the system
    /// roots (for example a cluster's CA when the issuer is a Kubernetes apiserver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// A claim must hold one of the listed values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimRule {
    /// Claim name, e.g. `sub`.
    pub claim: String,
    /// Accepted values.
    pub values: Vec<String>,
}

/// The token service: signing keys and the names clients see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokensConfig {
    /// Id of the key that signs new tokens (the others still verify, for rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// The keys. With none, each process signs with a key of its own made at start (fine for
    /// one replica; replicas behind one Service need shared keys here).
    #[serde(default)]
    pub keys: Vec<SigningKey>,
    /// The `service` of the `WWW-Authenticate` challenge and the audience of access tokens
    /// (default: the region name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Absolute URL of the token endpoint announced in challenges (default:
    /// `<scheme>://<Host of the request>/token`); set it when a proxy rewrites the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Lifetime of access tokens.
    #[serde(default = "default_token_ttl")]
    pub ttl: HumanDuration,
}

/// Lifetime of access tokens unless configured.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

fn default_token_ttl() -> HumanDuration {
    HumanDuration(DEFAULT_TOKEN_TTL)
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            active: None,
            keys: Vec::new(),
            service: None,
            realm: None,
            ttl: default_token_ttl(),
        }
    }
}

/// A token-signing key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SigningKey {
    /// Key id (the JWT `kid`).
    pub id: String,
    /// Signature algorithm.
    pub algorithm: SigningAlgorithm,
    /// The private key, PEM (PKCS#8).
    pub private_key: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// JWT signature algorithms for access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
}

/// A retention rule of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionRule {
    /// Name of the rule (for reports).
    #[serde(default)]
    pub name: String,
    /// The namespace it applies to.
    pub namespace: String,
    /// Repositories it applies to (glob patterns; empty: all of the namespace).
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Keep only the newest N tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last_tags: Option<u32>,
    /// Delete tags older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// Tags the rule considers (glob patterns; empty: all).
    #[serde(default)]
    pub include_tags: Vec<String>,
    /// Tags never deleted (glob patterns).
    #[serde(default)]
    pub protect_tags: Vec<String>,
    /// Also delete untagged manifests.
    #[serde(default)]
    pub untagged: bool,
}

/// A shard document that completes this one, at an exact revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardRef {
    /// Name of the shard: a Secret name (in the index Secret's Kubernetes namespace) in a
    /// cluster, a file name next to the index document standalone.
    pub name: String,
    /// The revision the shard must have; a shard at any other revision is not merged, and the
    /// whole document waits until it is (no mix of old and new shards is ever applied).
    #[serde(default)]
    pub revision: u64,
}
