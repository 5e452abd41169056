//! The configuration in force: one apply step for every source, and the live handle that
//! requests read.
//!
//! Every document, whatever its source (the file, the Kubernetes Secret, the first document
//! of a process, `dataplane check-config`), goes through [`Applier::apply`]:
//!
//! 1. The process settings (storage, uploads, connections, logins) are the running ones: a
//!    document that states other settings is applied with the running ones, and a warning
//!    says they take effect only after a restart.
//! 2. Everything requests need is built in full ([`AuthService::build_index`]): namespace and
//!    credential indexes, the token keys (every key must load, sign and verify), the
//!    federations (issuer URLs, CA bundles).
//! 3. Only then is the new [`AccessIndex`] swapped in, atomically; the next request uses it.
//!    The swap is logged with the revision, which `/readyz` and `dataplane_config_revision`
//!    report.
//!
//! A document that cannot be fully applied is refused: the last good one stays in force, the
//! refusal is logged (error, with the reason) and counted
//! (`dataplane_config_refusals_total{source,reason}`). Sources report documents they cannot
//! even produce (a missing shard or Secret, a syntax error) through [`Applier::offer`], which
//! refuses them the same way.
//!
//! Layer rule: this module turns documents ([`crate::config`]) into what authorization needs
//! ([`crate::auth`]) and publishes it; the HTTP and server layers read [`LiveConfig`]. It does
//! no I/O of its own.

use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::{AccessIndex, AuthService, IndexError, Mode};
use crate::config::{Config, LoadError, Loaded, ProcessSettings};
use crate::telemetry::ConfigMetrics;

/// Where a document came from (the `source` label of the configuration metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The first document of a process, given at start (`--config FILE` or the defaults).
    Startup,
    /// A reload of the configuration file.
    File,
    /// The Kubernetes Secret (`--config-secret`).
    Secret,
    /// `dataplane check-config`.
    Check,
}

impl Source {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Startup => "startup",
            Source::File => "file",
            Source::Secret => "secret",
            Source::Check => "check",
        }
    }
}

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The source holds no complete, valid document.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The document is valid, but what it names cannot be built (a token key, a federation).
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl ApplyError {
    /// The `reason` label: `invalid`, `incomplete`, `unavailable`, `keys` or `federations`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::Load(e) if e.is_incomplete() => "incomplete",
            ApplyError::Load(e) if e.is_unavailable() => "unavailable",
            ApplyError::Load(_) => "invalid",
            ApplyError::Index(e) if e.concerns_keys() => "keys",
            ApplyError::Index(_) => "federations",
        }
    }
}

/// What a successful apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The revision now in force.
    pub revision: u64,
    /// The revision in force before, if any.
    pub previous: Option<u64>,
    /// Whether the document stated other process settings than the running ones (which were
    /// kept).
    pub settings_kept: bool,
}

/// A read-only view of the configuration in force, swapped atomically by the [`Applier`].
/// Cheap to clone and to read (a reference count increment under a read lock).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    rx: watch::Receiver<Arc<AccessIndex>>,
}

impl LiveConfig {
    /// The access index of the document in force (a closed one while there is none).
    pub fn current(&self) -> Arc<AccessIndex> {
        self.rx.borrow().clone()
    }

    /// The revision in force, `None` until a first document is.
    pub fn revision(&self) -> Option<u64> {
        self.rx.borrow().revision()
    }

    /// A receiver notified on every swap.
    pub fn subscribe(&self) -> watch::Receiver<Arc<AccessIndex>> {
        self.rx.clone()
    }
}

/// The apply step: builds what requests need from a document and swaps it in, or refuses it.
#[derive(Debug)]
pub struct Applier {
    auth: Arc<AuthService>,
    settings: ProcessSettings,
    tx: watch::Sender<Arc<AccessIndex>>,
    metrics: ConfigMetrics,
}

impl Applier {
    /// An applier for a process with these settings, and the live handle it feeds. Nothing is
    /// in force until the first [`Applier::apply`]: meanwhile nothing is allowed.
    pub fn new(
        auth: Arc<AuthService>,
        settings: ProcessSettings,
        metrics: ConfigMetrics,
    ) -> (Self, LiveConfig) {
        let waiting = Config {
            settings: settings.clone(),
            ..Config::default()
        };
        let (tx, rx) = watch::channel(Arc::new(auth.waiting_index(Arc::new(waiting))));
        (
            Self {
                auth,
                settings,
                tx,
                metrics,
            },
            LiveConfig { rx },
        )
    }

    /// A live handle on what this applier swaps in.
    pub fn live(&self) -> LiveConfig {
        LiveConfig {
            rx: self.tx.subscribe(),
        }
    }

    /// The process settings every applied document runs with.
    pub fn settings(&self) -> &ProcessSettings {
        &self.settings
    }

    /// Applies a complete document from `source`: keeps the running process settings, builds
    /// everything requests need, and swaps it in; or refuses the document (logged, counted)
    /// and leaves the running one in force.
    pub fn apply(&self, source: Source, document: Loaded) -> Result<Applied, ApplyError> {
        let Loaded { mut config, stated } = document;
        let running = &self.settings;
        let kept: Vec<&str> = [
            (
                stated.storage && config.settings.storage != running.storage,
                "storage",
            ),
            (
                stated.uploads && config.settings.uploads != running.uploads,
                "uploads",
            ),
            (
                stated.connections && config.settings.connections != running.connections,
                "connections",
            ),
            (
                stated.logins && config.settings.logins != running.logins,
                "logins",
            ),
        ]
        .into_iter()
        .filter_map(|(differs, name)| differs.then_some(name))
        .collect();
        config.settings = self.settings.clone();
        let revision = config.spec.revision;
        let index = match self.auth.build_index(Arc::new(config)) {
            Ok(index) => index,
            Err(err) => return Err(self.refuse(source, err.into())),
        };
        let mode = index.mode();
        let summary = (
            index.config().spec.namespaces.len(),
            index.config().spec.credentials.len(),
            index.config().spec.federations.len(),
        );
        let previous = self.tx.send_replace(Arc::new(index)).revision();
        self.metrics.applied(source.as_str(), revision);
        let what = match source {
            Source::File | Source::Secret => "configuration reloaded",
            Source::Startup | Source::Check => "configuration loaded",
        };
        tracing::info!(
            source = source.as_str(),
            revision,
            previous_revision = ?previous,
            namespaces = summary.0,
            credentials = summary.1,
            federations = summary.2,
            "{what}: revision {revision} in force"
        );
        if !kept.is_empty() {
            let which = kept.join(", ");
            tracing::warn!(
                source = source.as_str(),
                revision,
                "the document's process settings ({which}) differ from the running ones: \
                 process settings take effect after a restart; the running ones are kept until \
                 then"
            );
        }
        if mode == Mode::Closed {
            tracing::warn!(
                source = source.as_str(),
                revision,
                "the configuration declares no access control and the listener is public: \
                 every request is denied"
            );
        }
        Ok(Applied {
            revision,
            previous,
            settings_kept: !kept.is_empty(),
        })
    }

    /// Refuses a document from `source`: logs why (an index Secret that was deleted as a
    /// warning, anything else as an error), counts it, and returns the error. The running
    /// document stays in force.
    pub fn refuse(&self, source: Source, error: ApplyError) -> ApplyError {
        let reason = error.reason();
        self.metrics.refused(source.as_str(), reason);
        let running = self.tx.borrow().revision();
        if matches!(error, ApplyError::Load(LoadError::SecretDeleted { .. })) {
            tracing::warn!(
                source = source.as_str(),
                reason,
                running_revision = ?running,
                error = %error,
                "configuration source removed; the running configuration stays in force"
            );
        } else {
            tracing::error!(
                source = source.as_str(),
                reason,
                running_revision = ?running,
                error = %error,
                "new configuration refused; the running configuration stays in force"
            );
        }
        error
    }

    /// Applies what a source produced: a complete document, or why it has none (refused).
    pub fn offer(
        &self,
        source: Source,
        document: Result<Loaded, LoadError>,
    ) -> Result<Applied, ApplyError> {
        match document {
            Ok(document) => self.apply(source, document),
            Err(err) => Err(self.refuse(source, err.into())),
        }
    }

    /// Records a failure of `source` itself (not of a document).
    pub fn source_failed(&self, source: Source) {
        self.metrics.source_error(source.as_str());
    }

    /// The configuration metrics this applier feeds.
    pub fn metrics(&self) -> &ConfigMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests;
