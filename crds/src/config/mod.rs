//! The data-plane configuration document, shared by the operator (which writes it) and the
//! data plane (which follows it).
//!
//! One typed, versioned YAML document per region. In a cluster the operator renders it into a
//! Secret (split into an index and shards when large); standalone, `dataplane serve --config
//! FILE` reads it from a file. Both sources share this schema and its validation.
//!
//! ```yaml
//! apiVersion: registry.thalassa.cloud/v1alpha1
//! kind: DataPlaneConfig
//! region: nl-01
//! revision: 7
//! storage:
//!   filesystem: {root: ./registry-data}
//! uploads: {sessionTimeout: 24h}
//! gc: {grace: 24h, interval: 1h}
//! metering: {interval: 5m}
//! namespaces:
//!   - {name: acme-platform, visibility: private, immutableTags: ["v*"]}
//! credentials: []
//! federations: []
//! tokens: {}
//! retention: []
//! shards: []
//! ```
//!
//! The document has two parts with different owners ([`Config::settings`] and
//! [`Config::spec`]): the process settings (storage, uploads, connections, logins, gc, metering), fixed
//! for the life of a process, and the operator-owned region spec (region, revision, namespaces, credentials,
//! federations, tokens, retention, shards), which a reload replaces.
//!
//! Layer rule: this module is pure vocabulary plus parsing ([`Config::from_yaml_str`]) and
//! validation ([`Config::validate`]); it never does I/O beyond reading a file when asked
//! ([`Config::load`]). Every struct rejects unknown fields, so a misspelled field is an error
//! naming it (with its path, line and column), never silently ignored.

mod names;
mod settings;
mod spec;
mod validate;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use names::{
    MAX_NAMESPACE_LEN, check_namespace_name, check_region_name, check_tag_pattern,
    tag_pattern_matches,
};
pub use settings::*;
pub use spec::*;
pub use validate::{check_issuer, is_loopback_http};
pub use values::{HumanDuration, Timestamp};

/// The only `apiVersion` accepted by this release.
pub const API_VERSION: &str = "registry.thalassa.cloud/v1alpha1";
/// The `kind` of the document.
pub const KIND: &str = "DataPlaneConfig";
/// The `kind` of a shard document.
pub const SHARD_KIND: &str = "DataPlaneConfigShard";

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
    #[error("unsupported kind {found:?}: expected {expected:?}")]
    WrongKind {
        /// The kind found (empty when missing).
        found: String,
        /// The kind expected.
        expected: &'static str,
    },
    /// The document parsed but breaks one or more rules.
    #[error("invalid configuration:{}", problems_list(.0))]
    Invalid(Vec<Problem>),
    /// The index names a shard that is not there (yet).
    #[error("shard {name:?} named in `shards` is missing")]
    ShardMissing {
        /// The shard.
        name: String,
    },
    /// A shard is at another revision than the index names (it is being updated).
    #[error("shard {name:?} is at revision {found}, the index names revision {wanted}")]
    ShardRevision {
        /// The shard.
        name: String,
        /// The revision the index names.
        wanted: u64,
        /// The revision found.
        found: u64,
    },
    /// A shard was supplied that the index does not name.
    #[error("shard {name:?} is not named in `shards`")]
    ShardUnknown {
        /// The shard.
        name: String,
    },
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
///
/// In YAML both parts are written side by side at the top level (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "Document", into = "Document")]
pub struct Config {
    /// The process settings: kept by a running data plane when a new document arrives.
    pub settings: ProcessSettings,
    /// The operator-owned part.
    pub spec: RegionSpec,
}

/// The document as written: both parts at the top level.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    api_version: String,
    kind: String,
    #[serde(default = "default_region")]
    region: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    storage: Option<StorageConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uploads: Option<UploadsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connections: Option<ConnectionsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    logins: Option<LoginLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gc: Option<GcConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metering: Option<MeteringConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    namespaces: Vec<NamespaceConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    credentials: Vec<CredentialConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    federations: Vec<FederationConfig>,
    #[serde(default)]
    tokens: TokensConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retention: Vec<RetentionRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    shards: Vec<ShardRef>,
}

fn default_region() -> String {
    DEFAULT_REGION.to_owned()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<Document> for Config {
    fn from(d: Document) -> Self {
        Self {
            settings: ProcessSettings {
                storage: d.storage.unwrap_or_default(),
                uploads: d.uploads.unwrap_or_default(),
                connections: d.connections.unwrap_or_default(),
                logins: d.logins.unwrap_or_default(),
                gc: d.gc.unwrap_or_default(),
                metering: d.metering.unwrap_or_default(),
            },
            spec: RegionSpec {
                region: d.region,
                revision: d.revision,
                namespaces: d.namespaces,
                credentials: d.credentials,
                federations: d.federations,
                tokens: d.tokens,
                retention: d.retention,
                shards: d.shards,
            },
        }
    }
}

impl From<Config> for Document {
    fn from(c: Config) -> Self {
        let mut document = Self::from(c.spec);
        document.storage = Some(c.settings.storage);
        document.uploads = Some(c.settings.uploads);
        document.connections = Some(c.settings.connections);
        document.logins = Some(c.settings.logins);
        document.gc = Some(c.settings.gc);
        document.metering = Some(c.settings.metering);
        document
    }
}

impl From<RegionSpec> for Document {
    fn from(c: RegionSpec) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            region: c.region,
            revision: c.revision,
            storage: None,
            uploads: None,
            connections: None,
            logins: None,
            gc: None,
            metering: None,
            namespaces: c.namespaces,
            credentials: c.credentials,
            federations: c.federations,
            tokens: c.tokens,
            retention: c.retention,
            shards: c.shards,
        }
    }
}

/// A shard of a region's document: more namespaces, credentials, federations and retention
/// rules, merged into the index document that names it ([`Config::merge_shards`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigShard {
    /// Schema version; only [`API_VERSION`].
    pub api_version: String,
    /// Always [`SHARD_KIND`].
    pub kind: String,
    /// The shard's own revision, matched against the index's [`ShardRef::revision`].
    #[serde(default)]
    pub revision: u64,
    /// More namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceConfig>,
    /// More credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialConfig>,
    /// More federations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federations: Vec<FederationConfig>,
    /// More retention rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retention: Vec<RetentionRule>,
}

impl ConfigShard {
    /// An empty shard at `revision`.
    pub fn new(revision: u64) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: SHARD_KIND.to_owned(),
            revision,
            namespaces: Vec::new(),
            credentials: Vec::new(),
            federations: Vec::new(),
            retention: Vec::new(),
        }
    }

    /// Parses a shard document (syntax only; the merged document is validated as a whole).
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        check_header(text, SHARD_KIND)?;
        serde_norway::from_str(text).map_err(syntax_error)
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

fn check_header(text: &str, expected_kind: &'static str) -> Result<(), ConfigError> {
    let header: Header = serde_norway::from_str(text).map_err(syntax_error)?;
    let api_version = value_text(header.api_version);
    if api_version != API_VERSION {
        return Err(ConfigError::UnsupportedVersion { found: api_version });
    }
    let kind = value_text(header.kind);
    if kind != expected_kind {
        return Err(ConfigError::WrongKind {
            found: kind,
            expected: expected_kind,
        });
    }
    Ok(())
}

impl Config {
    /// Parses and validates a document. A document naming shards parses, but is complete
    /// only once they are merged ([`Config::merge_shards`]).
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let config = Self::parse_unvalidated(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a document without the semantic checks (for an index whose shards are merged
    /// before [`Config::validate`] runs on the whole).
    pub fn parse_unvalidated(text: &str) -> Result<Self, ConfigError> {
        check_header(text, KIND)?;
        serde_norway::from_str::<Document>(text)
            .map(Config::from)
            .map_err(syntax_error)
    }

    /// Reads, parses and validates a document from a file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::from_yaml_str(&read_file(path.as_ref())?)
    }

    /// The document as YAML.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("the configuration serializes")
    }

    /// Only the operator-owned part as a document (no `storage` or `uploads`): what the
    /// operator writes, since process settings are not its to set.
    pub fn spec_to_yaml(&self) -> String {
        serde_norway::to_string(&Document::from(self.spec.clone()))
            .expect("the configuration serializes")
    }

    /// Merges the shards this document names, each required at the revision the index
    /// names, then validates the whole. `shards` may come in any order; one that is missing,
    /// at another revision or not named is an error, and nothing is merged.
    pub fn merge_shards(&mut self, shards: Vec<(String, ConfigShard)>) -> Result<(), ConfigError> {
        let mut by_name: std::collections::BTreeMap<String, ConfigShard> =
            shards.into_iter().collect();
        let mut ordered = Vec::with_capacity(self.spec.shards.len());
        for wanted in &self.spec.shards {
            match by_name.remove(&wanted.name) {
                None => {
                    return Err(ConfigError::ShardMissing {
                        name: wanted.name.clone(),
                    });
                }
                Some(shard) if shard.revision != wanted.revision => {
                    return Err(ConfigError::ShardRevision {
                        name: wanted.name.clone(),
                        wanted: wanted.revision,
                        found: shard.revision,
                    });
                }
                Some(shard) => ordered.push(shard),
            }
        }
        if let Some(name) = by_name.into_keys().next() {
            return Err(ConfigError::ShardUnknown { name });
        }
        for shard in ordered {
            self.spec.namespaces.extend(shard.namespaces);
            self.spec.credentials.extend(shard.credentials);
            self.spec.federations.extend(shard.federations);
            self.spec.retention.extend(shard.retention);
        }
        self.validate()
    }

    /// The filesystem root, when storage is on the filesystem.
    pub fn filesystem_root(&self) -> Option<&Path> {
        self.settings
            .storage
            .filesystem
            .as_ref()
            .map(|fs| fs.root.as_path())
    }

    /// Replaces the storage with the filesystem backend under `root` (the `--root` flag).
    pub fn with_filesystem_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.settings.storage = StorageConfig {
            filesystem: Some(FilesystemStorage { root: root.into() }),
            s3: None,
        };
        self
    }
}

/// Reads a document file.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
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

#[cfg(test)]
mod tests;
