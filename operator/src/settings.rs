//! The operator's settings: which region it runs and for whom. Read from a YAML file (the
//! chart renders it from its values), never from the objects it reconciles.
//!
//! ```yaml
//! region: nl-01
//! registryHost: registry.nl-01.example.com    # the host in image references
//! namespace: registry-system                  # where the operator keeps its own Secrets
//! configSecret: registry-config               # the rendered document (and its shards)
//! organisations:                              # feature gates per organisation
//!   acme: {containerRegistry: true}
//! tokens: {ttl: 5m, keyRotation: 720h}
//! remoteGiveUp: 15m                           # unreachable remote clusters, on removal
//! usageInterval: 5m                           # RegistryNamespace status.usage refreshes
//! dataplaneUrl: http://registry-dataplane:5000 # the data plane's internal endpoints
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crds::config::{HumanDuration, check_region_name};
use serde::Deserialize;

/// Everything the operator is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// The region this operator serves; objects of other regions are left untouched.
    pub region: String,
    /// The registry host clients use (`registry.nl-01.example.com`, or `host:port`).
    pub registry_host: String,
    /// The Kubernetes namespace of the operator's own Secrets (the configuration document,
    /// signing keys, credential state) and its Lease.
    pub namespace: String,
    /// Name of the Secret holding the configuration document (shards are named after it).
    #[serde(default = "default_config_secret")]
    pub config_secret: String,
    /// Feature gates per organisation (the `registry.thalassa.cloud/organisation` label of a
    /// Kubernetes namespace). An organisation not listed has every gate off.
    #[serde(default)]
    pub organisations: BTreeMap<String, FeatureGates>,
    /// Access-token settings written into the document.
    #[serde(default)]
    pub tokens: TokenSettings,
    /// A shard is started when a document would pass this many bytes.
    #[serde(default = "default_shard_bytes")]
    pub shard_bytes: usize,
    /// The operator's state of a credential that no longer exists (deleted with its
    /// finalizer removed by hand) is deleted once it is older than this.
    #[serde(default = "default_orphan_grace")]
    pub orphan_grace: HumanDuration,
    /// How long the copies of a deleted credential (or of a sync target removed from its
    /// spec) are retried in a remote cluster that does not answer, before they are given up
    /// with a `GaveUp` Event.
    #[serde(default = "default_remote_give_up")]
    pub remote_give_up: HumanDuration,
    /// Where the operator reaches the data plane's internal endpoints (retention plans and
    /// runs): a base URL such as `http://registry-dataplane.registry-system.svc:5000`.
    /// Default: `https://<registryHost>`.
    #[serde(default)]
    pub dataplane_url: Option<String>,
    /// How often each `RegistryNamespace`'s `status.usage` is refreshed from the data plane's
    /// metering (default 5m).
    #[serde(default = "default_usage_interval")]
    pub usage_interval: HumanDuration,
}

impl Settings {
    /// The base URL of the data plane's internal endpoints, without a trailing `/`.
    pub fn dataplane_url(&self) -> String {
        match &self.dataplane_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("https://{}", self.registry_host),
        }
    }
}

/// Feature gates of one organisation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeatureGates {
    /// The container registry is available to the organisation.
    #[serde(default)]
    pub container_registry: bool,
}

/// Token-signing settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSettings {
    /// Lifetime of access tokens (30s to 1h).
    #[serde(default = "default_ttl")]
    pub ttl: HumanDuration,
    /// A new signing key is made this often; the previous one keeps verifying until the
    /// tokens it signed have expired.
    #[serde(default = "default_key_rotation")]
    pub key_rotation: HumanDuration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            key_rotation: default_key_rotation(),
        }
    }
}

fn default_config_secret() -> String {
    "registry-config".to_owned()
}
fn default_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_key_rotation() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 24 * 3600))
}
fn default_orphan_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_usage_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}

fn default_remote_give_up() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}
/// About half of a Secret's 1 MiB limit, leaving room for base64 and metadata.
fn default_shard_bytes() -> usize {
    512 * 1024
}

/// Why the settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read settings file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for the schema.
    #[error("invalid settings: {0}")]
    Syntax(#[from] serde_norway::Error),
    /// A value breaks a rule.
    #[error("invalid settings: {0}")]
    Invalid(String),
}

impl Settings {
    /// Parses and checks settings.
    pub fn from_yaml_str(text: &str) -> Result<Self, SettingsError> {
        let settings: Self = serde_norway::from_str(text)?;
        check_region_name(&settings.region).map_err(SettingsError::Invalid)?;
        if settings.registry_host.is_empty() || settings.registry_host.contains('/') {
            return Err(SettingsError::Invalid(format!(
                "registryHost {:?} must be a host name or host:port, without a scheme or path",
                settings.registry_host
            )));
        }
        if let Some(url) = &settings.dataplane_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(SettingsError::Invalid(format!(
                "dataplaneUrl {url:?} must be an http:// or https:// URL"
            )));
        }
        if settings.namespace.is_empty() || settings.config_secret.is_empty() {
            return Err(SettingsError::Invalid(
                "namespace and configSecret must not be empty".into(),
            ));
        }
        let ttl = settings.tokens.ttl.0;
        if ttl < Duration::from_secs(30) || ttl > Duration::from_secs(3600) {
            return Err(SettingsError::Invalid(
                "tokens.ttl must be between 30s and 1h".into(),
            ));
        }
        if settings.tokens.key_rotation.0 < Duration::from_secs(3600) {
            return Err(SettingsError::Invalid(
                "tokens.keyRotation must be at least 1h".into(),
            ));
        }
        if settings.usage_interval.0 < Duration::from_secs(1) {
            return Err(SettingsError::Invalid(
                "usageInterval must be at least 1s".into(),
            ));
        }
        if settings.shard_bytes < 16 * 1024 {
            return Err(SettingsError::Invalid(
                "shardBytes must be at least 16384".into(),
            ));
        }
        Ok(settings)
    }

    /// Reads settings from a file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// Whether an organisation has the container registry.
    pub fn registry_enabled(&self, organisation: &str) -> bool {
        self.organisations
            .get(organisation)
            .is_some_and(|gates| gates.container_registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults() {
        let s = Settings::from_yaml_str(
            "region: nl-01\nregistryHost: registry.example.com\nnamespace: reg\n\
             organisations: {acme: {containerRegistry: true}, beta: {}}\n",
        )
        .unwrap();
        assert_eq!(s.config_secret, "registry-config");
        assert!(s.registry_enabled("acme"));
        assert!(!s.registry_enabled("beta"));
        assert!(!s.registry_enabled("other"));
        assert_eq!(s.tokens.ttl.0, Duration::from_secs(300));
        assert_eq!(s.usage_interval.0, Duration::from_secs(300));
    }

    #[test]
    fn refuses_bad_values() {
        let base = "registryHost: h\nnamespace: reg\n";
        for (text, needle) in [
            (format!("region: NL\n{base}"), "region name"),
            (
                "region: r\nregistryHost: https://h\nnamespace: reg\n".to_owned(),
                "without a scheme",
            ),
            (
                format!("region: r\n{base}tokens: {{ttl: 2h}}\n"),
                "tokens.ttl",
            ),
            (
                format!("region: r\n{base}usageInterval: 0s\n"),
                "usageInterval must be at least 1s",
            ),
            (
                format!("region: r\n{base}bogus: 1\n"),
                "unknown field `bogus`",
            ),
        ] {
            let err = Settings::from_yaml_str(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
