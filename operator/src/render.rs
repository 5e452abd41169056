//! Sans-IO rendering of a region's configuration document.
//!
//! The document lists the served namespaces, the credentials (hashes only) and federations,
//! and the token keys. When it would pass [`Settings::shard_bytes`] it is split: the index
//! keeps the region and the tokens and names the shards, and every namespace, credential and
//! federation goes to the shard its name hashes to, so that a change to one credential
//! changes one shard. A shard's revision is derived from its content, so the data plane can
//! tell a shard that is being updated from the one the index names.

use crds::config::{
    Config, ConfigShard, CredentialConfig, FederationConfig, NamespaceConfig, RegionSpec, ShardRef,
    TokensConfig,
};
use sha2::{Digest as _, Sha256};

use crate::resolve::NamespaceIndex;
use crate::settings::Settings;

/// A rendered document: the index, and its shards when it was split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The index (the whole document when there are no shards).
    pub index: Config,
    /// Shards by name, in the order the index names them.
    pub shards: Vec<(String, ConfigShard)>,
}

impl Rendered {
    /// The whole document with its shards merged, as the data plane sees it.
    pub fn merged(&self) -> Result<Config, crds::config::ConfigError> {
        let mut config = self.index.clone();
        config.merge_shards(self.shards.clone())?;
        Ok(config)
    }

    /// A digest of the content, revision excluded: equal digests mean nothing changed.
    pub fn content_digest(&self) -> String {
        let mut index = self.index.clone();
        index.spec.revision = 0;
        let mut hasher = Sha256::new();
        hasher.update(index.spec_to_yaml());
        for (name, shard) in &self.shards {
            hasher.update(name);
            hasher.update(serde_norway::to_string(shard).unwrap_or_default());
        }
        hex::encode(hasher.finalize())
    }
}

/// The name of shard `i` of a document kept in Secret `base`.
pub fn shard_name(base: &str, i: usize) -> String {
    format!("{base}-shard-{i}")
}

/// Renders the document of the region.
pub fn render(
    settings: &Settings,
    namespaces: &NamespaceIndex,
    mut credentials: Vec<CredentialConfig>,
    mut federations: Vec<FederationConfig>,
    tokens: TokensConfig,
    revision: u64,
) -> Rendered {
    let namespaces: Vec<NamespaceConfig> = namespaces
        .served()
        .iter()
        .map(|(name, ns)| NamespaceConfig {
            name: name.clone(),
            visibility: ns.visibility,
            immutable_tags: ns.immutable_tags.clone(),
        })
        .collect();
    credentials.sort_by(|a, b| a.id.cmp(&b.id));
    federations.sort_by(|a, b| a.name.cmp(&b.name));

    let total: usize = namespaces.iter().map(entry_size).sum::<usize>()
        + credentials.iter().map(entry_size).sum::<usize>()
        + federations.iter().map(entry_size).sum::<usize>();

    let mut spec = RegionSpec {
        region: settings.region.clone(),
        revision,
        tokens,
        ..RegionSpec::default()
    };
    if total <= settings.shard_bytes {
        spec.namespaces = namespaces;
        spec.credentials = credentials;
        spec.federations = federations;
        return Rendered {
            index: Config {
                spec,
                ..Config::default()
            },
            shards: Vec::new(),
        };
    }

    // Fill shards to about three quarters, so that growth rarely changes their number.
    let count = total.div_ceil(settings.shard_bytes * 3 / 4).max(2);
    let mut shards: Vec<ConfigShard> = (0..count).map(|_| ConfigShard::new(0)).collect();
    for ns in namespaces {
        shards[bucket(&ns.name, count)].namespaces.push(ns);
    }
    for c in credentials {
        shards[bucket(&c.id, count)].credentials.push(c);
    }
    for f in federations {
        shards[bucket(&f.name, count)].federations.push(f);
    }
    let mut named = Vec::with_capacity(count);
    for (i, mut shard) in shards.into_iter().enumerate() {
        shard.revision = content_revision(&shard);
        let name = shard_name(&settings.config_secret, i);
        spec.shards.push(ShardRef {
            name: name.clone(),
            revision: shard.revision,
        });
        named.push((name, shard));
    }
    Rendered {
        index: Config {
            spec,
            ..Config::default()
        },
        shards: named,
    }
}

/// The shard a name belongs to: stable across renders for the same shard count.
fn bucket(name: &str, count: usize) -> usize {
    let digest = Sha256::digest(name.as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (n % count as u64) as usize
}

/// A revision derived from a shard's content (53 bits, exact in every JSON number).
fn content_revision(shard: &ConfigShard) -> u64 {
    let digest = Sha256::digest(serde_norway::to_string(shard).unwrap_or_default());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) & ((1 << 53) - 1)
}

/// About how many bytes an entry takes in the document.
fn entry_size<T: serde::Serialize>(entry: &T) -> usize {
    serde_json::to_vec(entry).map(|v| v.len()).unwrap_or(0) + 16
}

#[cfg(test)]
mod tests;
