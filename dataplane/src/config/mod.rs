//! The data-plane configuration document and where a running process reads it from.
//!
//! The schema (the document's types, parsing and validation) lives in [`crds::config`],
//! shared with the operator that renders it, and is re-exported here. This module adds the
//! sources a data plane reads documents from:
//!
//! - [`watch`]: a file (standalone), with its shard files next to it, re-read when any of
//!   them changes;
//! - [`secret`]: a Kubernetes Secret and its shard Secrets, watched through the API.
//!
//! Both produce the same thing, a complete document ([`Loaded`], shards merged and the whole
//! validated) or why there is none ([`LoadError`]), through [`assemble`]. What a document
//! becomes in the process (the access index, the swap, refusals) is [`crate::live`]'s.
//!
//! Layer rule: vocabulary plus reading documents; this module never builds what requests
//! need, starts servers or touches registry storage.

pub mod secret;
pub mod watch;

pub use crds::config::*;

pub use secret::{SecretRef, SecretSource};
pub use watch::{ConfigReloader, ConfigSource, ReloadOutcome};

/// A complete document read from a source: the index with its shards merged and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The document.
    pub config: Config,
    /// Which process settings the document states itself (rather than leaving them at their
    /// defaults by omission): only stated settings can conflict with the running ones.
    pub stated: StatedSettings,
}

impl Loaded {
    /// A document that states all of its settings (one built in memory, the first document of
    /// a process).
    pub fn stating_all(config: Config) -> Self {
        Self {
            config,
            stated: StatedSettings {
                storage: true,
                uploads: true,
                connections: true,
                logins: true,
            },
        }
    }
}

/// Which process settings a document states at its top level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatedSettings {
    /// The document has a `storage` section.
    pub storage: bool,
    /// The document has an `uploads` section.
    pub uploads: bool,
    /// The document has a `connections` section.
    pub connections: bool,
    /// The document has a `logins` section.
    pub logins: bool,
}

impl StatedSettings {
    /// The settings a document text states (none when it is not a YAML mapping).
    pub fn of(text: &str) -> Self {
        let Ok(serde_norway::Value::Mapping(map)) = serde_norway::from_str(text) else {
            return Self::default();
        };
        let has = |key: &str| map.contains_key(serde_norway::Value::String(key.to_owned()));
        Self {
            storage: has("storage"),
            uploads: has("uploads"),
            connections: has("connections"),
            logins: has("logins"),
        }
    }
}

/// Why a source could not produce a complete document.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The index document (or the whole once merged) is unreadable, does not parse, breaks a
    /// rule, or its shards are not all there at the revisions it names.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A shard document is unreadable or does not parse.
    #[error("shard {name:?}: {source}")]
    Shard {
        /// The shard.
        name: String,
        /// What is wrong with it.
        #[source]
        source: ConfigError,
    },
    /// A Secret (the index, or a shard named by it) does not exist.
    #[error("Secret {namespace}/{name} does not exist")]
    SecretMissing {
        /// Its Kubernetes namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The index Secret was deleted; the running document stays in force.
    #[error("Secret {namespace}/{name} was deleted; the running configuration stays in force")]
    SecretDeleted {
        /// Its Kubernetes namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A Secret has no `config.yaml` data key, or its value is not UTF-8 text.
    #[error("Secret {namespace}/{name}: {problem}")]
    SecretData {
        /// Its Kubernetes namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong (`no data key "config.yaml"`, ...).
        problem: String,
    },
}

impl LoadError {
    /// Whether the document is incomplete rather than wrong: a shard is missing or at another
    /// revision than the index names (a writer is between two steps).
    pub fn is_incomplete(&self) -> bool {
        matches!(
            self,
            Self::Config(
                ConfigError::ShardMissing { .. }
                    | ConfigError::ShardRevision { .. }
                    | ConfigError::ShardUnknown { .. }
            )
        )
    }

    /// Whether the source has no document to offer at all (a file or Secret is missing,
    /// unreadable, or holds no document).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Config(ConfigError::Read { .. })
                | Self::SecretMissing { .. }
                | Self::SecretDeleted { .. }
                | Self::SecretData { .. }
        )
    }
}

/// Builds a complete document from the text of an index document and, when it names shards,
/// the texts of each shard (`shard(name)`: the versions the source holds, newest first; none
/// when there is no such shard).
///
/// The index is parsed, and for each named shard the version at the revision the index names
/// is taken (a source that keeps the version before the newest can thus complete an index
/// while the next revision's shards are being written). The shards are merged
/// ([`Config::merge_shards`]) and the whole is validated. A shard that is missing or at
/// another revision is an error ([`LoadError::is_incomplete`]): never is a mix of old and new
/// shards produced.
pub fn assemble(
    index: &str,
    mut shard: impl FnMut(&str) -> Result<Vec<String>, LoadError>,
) -> Result<Loaded, LoadError> {
    let stated = StatedSettings::of(index);
    let mut config = Config::parse_unvalidated(index)?;
    if config.spec.shards.is_empty() {
        config.validate()?;
        return Ok(Loaded { config, stated });
    }
    let mut shards = Vec::with_capacity(config.spec.shards.len());
    for wanted in &config.spec.shards {
        let mut newest = None;
        for text in shard(&wanted.name)? {
            let parsed = ConfigShard::from_yaml_str(&text).map_err(|source| LoadError::Shard {
                name: wanted.name.clone(),
                source,
            })?;
            if parsed.revision == wanted.revision {
                newest = Some(parsed);
                break;
            }
            // Not the named revision: reported as such unless an older version is.
            newest.get_or_insert(parsed);
        }
        if let Some(parsed) = newest {
            shards.push((wanted.name.clone(), parsed));
        }
    }
    config.merge_shards(shards)?;
    Ok(Loaded { config, stated })
}

#[cfg(test)]
mod tests;
