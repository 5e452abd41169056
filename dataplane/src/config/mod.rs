//! The data-plane configuration document.
//!
//! One typed, versioned YAML document per region. In a cluster the operator renders it into a
//! Secret; standalone, `dataplane serve --config FILE` reads it from a file and reloads it when
//! the file changes ([`watch`]). Both sources share this schema.
//!
//! ```yaml
//! apiVersion: registry.thalassa.cloud/v1alpha1
//! kind: DataPlaneConfig
//! region: nl-01
//! storage:
//!   filesystem: {root: ./registry-data}
//! uploads: {sessionTimeout: 24h}
//! namespaces:
//!   - {name: acme-platform, visibility: private}
//! credentials: []
//! federations: []
//! tokens: {}
//! retention: []
//! shards: []
//! ```
//!
//! Layer rule: this module is pure vocabulary plus parsing ([`Config::from_yaml_str`]) and
//! loading ([`Config::load`]); it never starts servers or touches storage. Every struct rejects
//! unknown fields, so a misspelled field is an error naming it (with its path, line and
//! column), never silently ignored. Later features only add fields.
//!
//! Parsing happens in two steps: the syntax and types (serde), then the semantics
//! ([`Config::validate`]: one storage backend, valid and unique namespace names, references to
//! declared namespaces and keys, ...). Both fail with a [`ConfigError`].

pub mod watch;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::oci::RepoName;

pub use watch::{ConfigHandle, ConfigReloader, ConfigSource, ReloadOutcome};

/// The only `apiVersion` accepted by this release.
pub const API_VERSION: &str = "registry.thalassa.cloud/v1alpha1";
/// The `kind` of the document.
pub const KIND: &str = "DataPlaneConfig";
/// Region name used when a standalone document names none.
pub const DEFAULT_REGION: &str = "local";
/// Filesystem root used when no storage is configured.
pub const DEFAULT_ROOT: &str = "./registry-data";
/// How long an upload session may stay idle before it is removed, by default.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a configuration document was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The document is not valid YAML, or does not fit the schema (unknown or misspelled
    /// field, wrong type, unknown enum value).
    #[error("{}", syntax_message(.message, *.line, *.column))]
    Syntax {
        /// What is wrong, starting with the path of the field when known
        /// (`namespaces[0]: unknown field ...`).
        message: String,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// 1-based column of the problem, when known.
        column: Option<usize>,
    },
    /// The document has another `apiVersion` than the one this release reads.
    #[error("unsupported apiVersion {found:?}: this data plane reads {API_VERSION:?} only")]
    UnsupportedVersion {
        /// The version found (empty when missing).
        found: String,
    },
    /// The document is of another `kind`.
    #[error("unsupported kind {found:?}: expected {KIND:?}")]
    WrongKind {
        /// The kind found (empty when missing).
        found: String,
    },
    /// The document parsed but breaks one or more rules.
    #[error("invalid configuration:{}", problems_list(.0))]
    Invalid(Vec<Problem>),
}

fn syntax_message(message: &str, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("invalid configuration at line {l} column {c}: {message}"),
        _ => format!("invalid configuration: {message}"),
    }
}

fn problems_list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

/// One semantic problem of a document: the path of the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path of the offending field, e.g. `namespaces[1].name`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The data-plane configuration document of one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Schema version; only [`API_VERSION`].
    pub api_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// The region this data plane serves.
    #[serde(default = "default_region")]
    pub region: String,
    /// Where blobs, manifests, tags and upload sessions live. Cannot change without a restart.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Upload session settings.
    #[serde(default)]
    pub uploads: UploadsConfig,
    /// Registry namespaces (the first component of repository names) and their visibility.
    #[serde(default)]
    pub namespaces: Vec<NamespaceConfig>,
    /// Access credentials, stored as hashes.
    #[serde(default)]
    pub credentials: Vec<CredentialConfig>,
    /// Workload-identity federations: OIDC issuers whose tokens are exchanged for access.
    #[serde(default)]
    pub federations: Vec<FederationConfig>,
    /// Keys that sign the registry's access tokens.
    #[serde(default)]
    pub tokens: TokensConfig,
    /// Retention rules, resolved per namespace.
    #[serde(default)]
    pub retention: Vec<RetentionRule>,
    /// Further shard documents merged into this one, for regions that outgrow one document.
    #[serde(default)]
    pub shards: Vec<ShardRef>,
}

fn default_region() -> String {
    DEFAULT_REGION.to_owned()
}

impl Default for Config {
    /// A standalone configuration: region `local`, filesystem storage under `./registry-data`,
    /// no namespaces or credentials.
    fn default() -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            region: default_region(),
            storage: StorageConfig::default(),
            uploads: UploadsConfig::default(),
            namespaces: Vec::new(),
            credentials: Vec::new(),
            federations: Vec::new(),
            tokens: TokensConfig::default(),
            retention: Vec::new(),
            shards: Vec::new(),
        }
    }
}

/// Only the header, read first so that a document of another version fails with a version
/// error rather than with errors about fields that version may have.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<serde_norway::Value>,
    #[serde(default)]
    kind: Option<serde_norway::Value>,
}

fn value_text(value: Option<serde_norway::Value>) -> String {
    match value {
        None => String::new(),
        Some(serde_norway::Value::String(s)) => s,
        Some(other) => serde_norway::to_string(&other)
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_default(),
    }
}

impl Config {
    /// Parses and validates a document.
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let header: Header = serde_norway::from_str(text).map_err(syntax_error)?;
        let api_version = value_text(header.api_version);
        if api_version != API_VERSION {
            return Err(ConfigError::UnsupportedVersion { found: api_version });
        }
        let kind = value_text(header.kind);
        if kind != KIND {
            return Err(ConfigError::WrongKind { found: kind });
        }
        let config: Config = serde_norway::from_str(text).map_err(syntax_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a document from a file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// Checks the rules the schema alone cannot express; reports every problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| problems.push(Problem { path, message });

        if self.api_version != API_VERSION {
            problem(
                "apiVersion".into(),
                format!("must be {API_VERSION:?}, found {:?}", self.api_version),
            );
        }
        if self.kind != KIND {
            problem("kind".into(), format!("must be {KIND:?}"));
        }
        if let Err(message) = check_dns_label(&self.region) {
            problem("region".into(), message);
        }

        match (&self.storage.filesystem, &self.storage.s3) {
            (None, None) => problem(
                "storage".into(),
                "exactly one backend is required: `filesystem` or `s3`".into(),
            ),
            (Some(_), Some(_)) => problem(
                "storage".into(),
                "`filesystem` and `s3` are mutually exclusive: configure exactly one".into(),
            ),
            (Some(fs), None) => {
                if fs.root.as_os_str().is_empty() {
                    problem("storage.filesystem.root".into(), "must not be empty".into());
                }
            }
            (None, Some(s3)) => {
                if s3.bucket.is_empty() {
                    problem("storage.s3.bucket".into(), "must not be empty".into());
                }
                if let Some(endpoint) = &s3.endpoint
                    && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
                {
                    problem(
                        "storage.s3.endpoint".into(),
                        format!("must be an http:// or https:// URL, found {endpoint:?}"),
                    );
                }
                if s3.prefix.starts_with('/') || s3.prefix.contains("//") {
                    problem(
                        "storage.s3.prefix".into(),
                        "must be a relative key prefix without empty components".into(),
                    );
                }
                if let Some(redirect) = &s3.redirect
                    && (redirect.ttl.0 < Duration::from_secs(60)
                        || redirect.ttl.0 > Duration::from_secs(7 * 24 * 3600))
                {
                    problem(
                        "storage.s3.redirect.ttl".into(),
                        "must be between 1m and 7d (the longest a presigned URL may live)".into(),
                    );
                }
            }
        }

        if self.uploads.session_timeout.0.is_zero() {
            problem(
                "uploads.sessionTimeout".into(),
                "must be longer than zero".into(),
            );
        }

        let mut declared = BTreeSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let path = format!("namespaces[{i}].name");
            if let Err(message) = check_namespace_name(&ns.name) {
                problem(path, message);
            } else if !declared.insert(ns.name.as_str()) {
                problem(path, format!("duplicate namespace {:?}", ns.name));
            }
        }
        let mut check_refs = |base: String, namespaces: &[String]| {
            for (j, name) in namespaces.iter().enumerate() {
                if !declared.contains(name.as_str()) {
                    problems.push(Problem {
                        path: format!("{base}.namespaces[{j}]"),
                        message: format!("namespace {name:?} is not declared in `namespaces`"),
                    });
                }
            }
        };
        for (i, c) in self.credentials.iter().enumerate() {
            check_refs(format!("credentials[{i}]"), &c.namespaces);
        }
        for (i, f) in self.federations.iter().enumerate() {
            check_refs(format!("federations[{i}]"), &f.namespaces);
        }
        for (i, r) in self.retention.iter().enumerate() {
            check_refs(
                format!("retention[{i}]"),
                std::slice::from_ref(&r.namespace),
            );
        }
        let mut problem = |path: String, message: String| problems.push(Problem { path, message });

        let mut ids = BTreeSet::new();
        for (i, c) in self.credentials.iter().enumerate() {
            if c.id.is_empty() {
                problem(format!("credentials[{i}].id"), "must not be empty".into());
            } else if !ids.insert(c.id.as_str()) {
                problem(
                    format!("credentials[{i}].id"),
                    format!("duplicate credential id {:?}", c.id),
                );
            }
            if let Err(message) = check_secret_hash(&c.secret_hash) {
                problem(format!("credentials[{i}].secretHash"), message);
            }
            if let (Some(nb), Some(exp)) = (&c.not_before, &c.expires_at)
                && exp.0 <= nb.0
            {
                problem(
                    format!("credentials[{i}].expiresAt"),
                    "must be later than notBefore".into(),
                );
            }
            for (j, old) in c.previous_secrets.iter().enumerate() {
                if let Err(message) = check_secret_hash(&old.secret_hash) {
                    problem(
                        format!("credentials[{i}].previousSecrets[{j}].secretHash"),
                        message,
                    );
                }
            }
        }

        for (i, f) in self.federations.iter().enumerate() {
            if !f.issuer.starts_with("https://") && !f.issuer.starts_with("http://") {
                problem(
                    format!("federations[{i}].issuer"),
                    format!("must be an https:// URL, found {:?}", f.issuer),
                );
            }
            if f.audience.is_empty() {
                problem(
                    format!("federations[{i}].audience"),
                    "must not be empty".into(),
                );
            }
            if let Some(bundle) = &f.ca_bundle
                && !bundle.contains("-----BEGIN CERTIFICATE-----")
            {
                problem(
                    format!("federations[{i}].caBundle"),
                    "must hold PEM certificates (-----BEGIN CERTIFICATE-----)".into(),
                );
            }
            for (j, rule) in f.claim_rules.iter().enumerate() {
                if rule.claim.is_empty() {
                    problem(
                        format!("federations[{i}].claimRules[{j}].claim"),
                        "must not be empty".into(),
                    );
                }
                if rule.values.is_empty() {
                    problem(
                        format!("federations[{i}].claimRules[{j}].values"),
                        "must list at least one accepted value".into(),
                    );
                }
            }
        }

        let mut key_ids = BTreeSet::new();
        for (i, key) in self.tokens.keys.iter().enumerate() {
            if key.id.is_empty() {
                problem(format!("tokens.keys[{i}].id"), "must not be empty".into());
            } else if !key_ids.insert(key.id.as_str()) {
                problem(
                    format!("tokens.keys[{i}].id"),
                    format!("duplicate key id {:?}", key.id),
                );
            }
            if key.private_key.is_empty() {
                problem(
                    format!("tokens.keys[{i}].privateKey"),
                    "must not be empty".into(),
                );
            }
        }
        if let Some(realm) = &self.tokens.realm
            && !(realm.starts_with("https://") || realm.starts_with("http://"))
        {
            problem(
                "tokens.realm".into(),
                format!("must be an absolute http:// or https:// URL, found {realm:?}"),
            );
        }
        if self.tokens.ttl.0 < Duration::from_secs(30)
            || self.tokens.ttl.0 > Duration::from_secs(3600)
        {
            problem(
                "tokens.ttl".into(),
                "must be between 30s and 1h: access tokens are short-lived".into(),
            );
        }
        match &self.tokens.active {
            Some(active) if !key_ids.contains(active.as_str()) => problem(
                "tokens.active".into(),
                format!("names key {active:?}, which is not in tokens.keys"),
            ),
            None if !self.tokens.keys.is_empty() => problem(
                "tokens.active".into(),
                "must name the key that signs new tokens".into(),
            ),
            _ => {}
        }

        for (i, r) in self.retention.iter().enumerate() {
            if r.keep_last_tags.is_none() && r.max_age.is_none() && !r.untagged {
                problem(
                    format!("retention[{i}]"),
                    "selects nothing: set keepLastTags, maxAge or untagged".into(),
                );
            }
        }

        let mut shard_names = BTreeSet::new();
        for (i, s) in self.shards.iter().enumerate() {
            if s.name.is_empty() {
                problem(format!("shards[{i}].name"), "must not be empty".into());
            } else if !shard_names.insert(s.name.as_str()) {
                problem(
                    format!("shards[{i}].name"),
                    format!("duplicate shard {:?}", s.name),
                );
            }
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The filesystem root, when storage is on the filesystem.
    pub fn filesystem_root(&self) -> Option<&Path> {
        self.storage.filesystem.as_ref().map(|fs| fs.root.as_path())
    }

    /// Replaces the storage with the filesystem backend under `root` (the `--root` flag).
    pub fn with_filesystem_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.storage = StorageConfig {
            filesystem: Some(FilesystemStorage { root: root.into() }),
            s3: None,
        };
        self
    }

    /// The namespace with this name, if declared.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceConfig> {
        self.namespaces.iter().find(|ns| ns.name == name)
    }

    /// Whether the document configures access control (any namespace, credential or
    /// federation). Without it the data plane is an open development registry: every caller
    /// may do everything, which is only allowed on a loopback address.
    pub fn access_control_enabled(&self) -> bool {
        !(self.namespaces.is_empty() && self.credentials.is_empty() && self.federations.is_empty())
    }

    /// The `service` name of the token service.
    pub fn token_service(&self) -> &str {
        self.tokens.service.as_deref().unwrap_or(&self.region)
    }
}

fn syntax_error(err: serde_norway::Error) -> ConfigError {
    let location = err.location();
    let mut message = err.to_string();
    // The YAML error ends with " at line L column C"; the location is reported separately.
    if let Some(loc) = &location {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_owned();
        }
    }
    ConfigError::Syntax {
        message,
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
    }
}

/// A secret hash is an argon2 PHC string; anything else (a plaintext secret pasted by
/// mistake, another algorithm) is refused.
fn check_secret_hash(hash: &str) -> Result<(), String> {
    let algorithm_ok = ["$argon2id$", "$argon2i$", "$argon2d$"]
        .iter()
        .any(|prefix| hash.starts_with(prefix));
    if algorithm_ok && hash.split('$').count() >= 5 {
        Ok(())
    } else {
        Err(
            "must be an argon2 hash in PHC format ($argon2id$v=19$...), as printed by \
             `dataplane hash-secret`; secrets are never stored in plain text"
                .into(),
        )
    }
}

fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid region name (1-63 lowercase letters, digits and '-', \
             not starting or ending with '-')"
        ))
    }
}

/// A registry namespace is one component of a repository name.
fn check_namespace_name(name: &str) -> Result<(), String> {
    if name.contains('/') {
        return Err(format!(
            "{name:?} is not a valid namespace name: a namespace is a single path component (no '/')"
        ));
    }
    name.parse::<RepoName>()
        .map(|_| ())
        .map_err(|e| format!("{name:?} is not a valid namespace name: {e}"))
}

/// Storage backend settings: exactly one of the fields is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageConfig {
    /// Local filesystem (the standalone default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemStorage>,
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            filesystem: Some(FilesystemStorage::default()),
            s3: None,
        }
    }
}

/// Filesystem storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesystemStorage {
    /// Directory holding all of the region's data (created if missing).
    pub root: PathBuf,
}

impl Default for FilesystemStorage {
    fn default() -> Self {
        Self {
            root: PathBuf::from(DEFAULT_ROOT),
        }
    }
}

/// S3 storage. Credentials come from the environment (the usual AWS variables), never from
/// this document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Storage {
    /// Bucket name; the bucket must exist.
    pub bucket: String,
    /// Region the requests are signed for.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible service (default: AWS).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Key prefix under which all objects live.
    #[serde(default)]
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most non-AWS services.
    #[serde(default)]
    pub force_path_style: bool,
    /// When set, blob downloads are answered with a `307` redirect to a presigned URL of the
    /// object, so the bytes flow from the bucket straight to the client (who must be able to
    /// reach the endpoint). Unset: every replica streams blobs itself.
    #[serde(default)]
    pub redirect: Option<S3Redirect>,
}

/// Redirecting blob downloads to presigned URLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Redirect {
    /// How long a presigned URL stays valid (between 1m and 7 days; default 15m). A client
    /// must start its download within this time.
    #[serde(default = "default_redirect_ttl")]
    pub ttl: HumanDuration,
}

/// Default lifetime of a presigned download URL.
pub const DEFAULT_REDIRECT_TTL: Duration = Duration::from_secs(15 * 60);

fn default_redirect_ttl() -> HumanDuration {
    HumanDuration(DEFAULT_REDIRECT_TTL)
}

/// Upload session settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UploadsConfig {
    /// How long a session may live before it is removed as abandoned (e.g. `24h`, `30m`).
    #[serde(default = "default_session_timeout")]
    pub session_timeout: HumanDuration,
}

fn default_session_timeout() -> HumanDuration {
    HumanDuration(DEFAULT_SESSION_TIMEOUT)
}

impl Default for UploadsConfig {
    fn default() -> Self {
        Self {
            session_timeout: default_session_timeout(),
        }
    }
}

/// A duration written the humane way: `90s`, `15m`, `24h`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); write e.g. 90s, 15m or 24h"
                ))
            })
    }
}

/// A point in time, written in RFC 3339 (`2026-01-31T12:00:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map(Timestamp).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid timestamp {text:?} ({e}); write RFC 3339 in UTC, e.g. 2026-01-31T12:00:00Z"
            ))
        })
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
}

/// Whether anonymous clients may pull from a namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Anyone may pull.
    Public,
    /// Only holders of a credential for the namespace may pull.
    #[default]
    Private,
}

/// What a credential or federation grants on its namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// A further shard document merged into this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardRef {
    /// Name of the shard (a Secret name in a cluster, a file next to this one standalone).
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
apiVersion: registry.thalassa.cloud/v1alpha1
kind: DataPlaneConfig
region: nl-01
storage:
  filesystem: {root: /var/lib/registry}
uploads: {sessionTimeout: 1h 30m}
namespaces:
  - {name: acme-platform, visibility: public}
  - name: acme-dev
credentials:
  - id: ci-bot
    secretHash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"
    scope: "containerRegistry:pull"
    namespaces: [acme-platform]
    notBefore: 2026-01-01T00:00:00Z
    expiresAt: 2027-01-01T00:00:00Z
federations:
  - issuer: https://token.actions.example.com
    audience: registry
    claimRules: [{claim: repository, values: [acme/api]}]
    scope: containerRegistry
    namespaces: [acme-dev]
tokens:
  active: k1
  keys: [{id: k1, algorithm: ES256, privateKey: "-----BEGIN PRIVATE KEY-----"}]
retention:
  - {namespace: acme-dev, keepLastTags: 10, maxAge: 30d, protectTags: ["v*"]}
shards: [{name: region-config-2}]
"#;

    #[test]
    fn parses_a_full_document() {
        let c = Config::from_yaml_str(FULL).unwrap();
        assert_eq!(c.region, "nl-01");
        assert_eq!(c.filesystem_root(), Some(Path::new("/var/lib/registry")));
        assert_eq!(c.uploads.session_timeout.0, Duration::from_secs(5400));
        assert_eq!(c.namespaces[0].visibility, Visibility::Public);
        assert_eq!(c.namespaces[1].visibility, Visibility::Private);
        assert_eq!(c.credentials[0].scope, Scope::ContainerRegistryPull);
        assert!(!c.credentials[0].scope.allows_push());
        assert!(c.credentials[0].not_before.unwrap() < c.credentials[0].expires_at.unwrap());
        assert_eq!(c.federations[0].scope, Scope::ContainerRegistry);
        assert_eq!(c.tokens.keys[0].algorithm, SigningAlgorithm::ES256);
        assert_eq!(c.retention[0].keep_last_tags, Some(10));
        assert_eq!(c.shards[0].name, "region-config-2");
        assert!(!format!("{c:?}").contains("BEGIN PRIVATE KEY"));
        assert!(!format!("{c:?}").contains("argon2id"));
    }

    #[test]
    fn minimal_document_gets_defaults() {
        let c = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n",
        )
        .unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.region, "local");
        assert_eq!(c.filesystem_root(), Some(Path::new("./registry-data")));
        assert_eq!(c.uploads.session_timeout.0, DEFAULT_SESSION_TIMEOUT);
    }

    #[test]
    fn round_trips_through_yaml() {
        let c = Config::from_yaml_str(FULL).unwrap();
        let text = serde_norway::to_string(&c).unwrap();
        assert_eq!(Config::from_yaml_str(&text).unwrap(), c);
        let d = Config::default();
        assert_eq!(
            Config::from_yaml_str(&serde_norway::to_string(&d).unwrap()).unwrap(),
            d
        );
    }

    #[test]
    fn misspelled_field_is_named_with_path_and_location() {
        let text = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
                    namespaces:\n  - name: acme\n    visbility: public\n";
        let err = Config::from_yaml_str(text).unwrap_err();
        let ConfigError::Syntax {
            message,
            line,
            column,
        } = &err
        else {
            panic!("expected a syntax error, got {err:?}");
        };
        assert!(message.contains("namespaces[0]"), "{message}");
        assert!(message.contains("unknown field `visbility`"), "{message}");
        assert!(message.contains("`visibility`"), "{message}");
        assert_eq!(*line, Some(5));
        assert_eq!(*column, Some(5));
        assert!(err.to_string().contains("line 5 column 5"), "{err}");
    }

    #[test]
    fn unknown_top_level_field_is_refused() {
        let err = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\nregon: x\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `regon`"), "{err}");
        assert!(err.to_string().contains("`region`"), "{err}");
    }

    #[test]
    fn wrong_enum_value_lists_the_alternatives() {
        let err = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
             namespaces: [{name: a, visibility: secret}]\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("namespaces[0].visibility"), "{msg}");
        assert!(
            msg.contains("`public`") && msg.contains("`private`"),
            "{msg}"
        );
    }

    #[test]
    fn other_versions_and_kinds_are_refused_by_name() {
        let err = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v2\nkind: DataPlaneConfig\nnewField: 1\n",
        )
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::UnsupportedVersion { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(API_VERSION), "{err}");
        let err = Config::from_yaml_str("kind: DataPlaneConfig\n").unwrap_err();
        assert!(matches!(err, ConfigError::UnsupportedVersion { ref found } if found.is_empty()));
        let err =
            Config::from_yaml_str("apiVersion: registry.thalassa.cloud/v1alpha1\nkind: Pod\n")
                .unwrap_err();
        assert!(matches!(err, ConfigError::WrongKind { .. }), "{err:?}");
    }

    #[test]
    fn malformed_yaml_reports_a_location() {
        let err = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\nstorage: [\n",
        )
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::Syntax { line: Some(_), .. }),
            "{err:?}"
        );
    }

    #[test]
    fn bad_durations_and_timestamps_explain_the_format() {
        let err = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
             uploads: {sessionTimeout: forever}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("uploads"), "{err}");
        assert!(err.to_string().contains("\"forever\""), "{err}");
        assert!(err.to_string().contains("24h"), "{err}");
        let err = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
             namespaces: [{name: a}]\n\
             credentials: [{id: c, secretHash: h, scope: containerRegistry, expiresAt: tomorrow}]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }

    fn invalid(text: &str) -> Vec<Problem> {
        let doc =
            format!("apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n{text}");
        match Config::from_yaml_str(&doc) {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected semantic problems, got {other:?}"),
        }
    }

    #[test]
    fn storage_backends_are_mutually_exclusive() {
        let p = invalid("storage: {filesystem: {root: /a}, s3: {bucket: b}}\n");
        assert_eq!(p[0].path, "storage");
        assert!(p[0].message.contains("mutually exclusive"));
        let p = invalid("storage: {}\n");
        assert!(p[0].message.contains("exactly one"));
        let p = invalid("storage: {s3: {bucket: b, endpoint: \"minio:9000\"}}\n");
        assert_eq!(p[0].path, "storage.s3.endpoint");
    }

    #[test]
    fn s3_storage_parses() {
        let c = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
             storage: {s3: {bucket: reg, region: eu-1, endpoint: \"http://127.0.0.1:9000\", \
             prefix: nl-01, forcePathStyle: true}}\n",
        )
        .unwrap();
        let s3 = c.storage.s3.unwrap();
        assert!(s3.force_path_style);
        assert_eq!(s3.prefix, "nl-01");
        assert_eq!(
            s3.redirect, None,
            "downloads stream through the server by default"
        );
        assert!(c.storage.filesystem.is_none());
    }

    #[test]
    fn s3_download_redirects_have_a_bounded_lifetime() {
        let c = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
             storage: {s3: {bucket: reg, redirect: {}}}\n",
        )
        .unwrap();
        let redirect = c.storage.s3.unwrap().redirect.unwrap();
        assert_eq!(redirect.ttl.0, DEFAULT_REDIRECT_TTL);
        for ttl in ["30s", "8d"] {
            let p = invalid(&format!(
                "storage: {{s3: {{bucket: b, redirect: {{ttl: {ttl}}}}}}}\n"
            ));
            assert_eq!(p[0].path, "storage.s3.redirect.ttl", "{ttl}");
        }
        let err = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
             storage: {s3: {bucket: b, redirect: {expires: 5m}}}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `expires`"), "{err}");
    }

    #[test]
    fn namespace_names_are_checked_and_unique() {
        let p = invalid("namespaces: [{name: Acme}, {name: a/b}, {name: ok}, {name: ok}]\n");
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "namespaces[0].name",
                "namespaces[1].name",
                "namespaces[3].name"
            ]
        );
        assert!(p[2].message.contains("duplicate"));
    }

    #[test]
    fn references_must_name_declared_things() {
        let p = invalid(
            "namespaces: [{name: a}]\n\
             credentials: [{id: c, secretHash: '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', scope: containerRegistry, namespaces: [a, b]}]\n\
             tokens: {active: k2, keys: [{id: k1, algorithm: EdDSA, privateKey: x}]}\n",
        );
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["credentials[0].namespaces[1]", "tokens.active"]);
    }

    #[test]
    fn credential_rules() {
        let p = invalid(
            "credentials:\n\
             - {id: c, secretHash: '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', scope: containerRegistry, \
                notBefore: 2027-01-01T00:00:00Z, expiresAt: 2026-01-01T00:00:00Z}\n\
             - {id: c, secretHash: \"\", scope: \"containerRegistry:all\"}\n\
             - {id: d, secretHash: hunter2, scope: containerRegistry}\n",
        );
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "credentials[0].expiresAt",
                "credentials[1].id",
                "credentials[1].secretHash",
                "credentials[2].secretHash"
            ]
        );
        assert!(p[3].message.contains("dataplane hash-secret"), "{}", p[3]);
        let err = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
             credentials: [{id: c, secretHash: h, scope: admin}]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("containerRegistry:pull"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let p = invalid(
            "region: NL_01\nuploads: {sessionTimeout: 0s}\nshards: [{name: a}, {name: a}]\n",
        );
        assert_eq!(p.len(), 3, "{p:?}");
        let err = ConfigError::Invalid(p).to_string();
        assert!(
            err.contains("region")
                && err.contains("uploads.sessionTimeout")
                && err.contains("shards[1].name")
        );
    }

    #[test]
    fn root_override_replaces_the_backend() {
        let c = Config::from_yaml_str(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
             storage: {s3: {bucket: b}}\n",
        )
        .unwrap()
        .with_filesystem_root("/tmp/x");
        assert_eq!(c.filesystem_root(), Some(Path::new("/tmp/x")));
        assert!(c.storage.s3.is_none());
        c.validate().unwrap();
    }
}
