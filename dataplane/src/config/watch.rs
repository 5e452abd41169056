//! The running configuration and its live reload.
//!
//! [`ConfigHandle`] is what the rest of the process reads: a cheap, cloneable view of the
//! current [`Config`], swapped atomically. [`ConfigReloader`] owns the other end: it re-reads
//! the source file (polling its content hash, by default every second) and swaps a new
//! document in when it parses and validates. An invalid document is logged and ignored (the
//! old one stays); storage settings cannot change while running, so a changed `storage`
//! section is logged as needing a restart and the running storage settings are kept.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::{Config, ConfigError};

/// Where the configuration comes from: a file (or the defaults), plus command-line overrides.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    path: Option<PathBuf>,
    root_override: Option<PathBuf>,
}

impl ConfigSource {
    /// A source reading `path` (or the defaults when `None`), with the filesystem root replaced
    /// by `root_override` when given.
    pub fn new(path: Option<PathBuf>, root_override: Option<PathBuf>) -> Self {
        Self {
            path,
            root_override,
        }
    }

    /// The configuration file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Parses a document text and applies the overrides.
    pub fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        let config = Config::from_yaml_str(text)?;
        Ok(self.apply_overrides(config))
    }

    /// Loads the configuration once (defaults when there is no file), with the overrides.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let config = match &self.path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        Ok(self.apply_overrides(config))
    }

    fn apply_overrides(&self, config: Config) -> Config {
        match &self.root_override {
            Some(root) => config.with_filesystem_root(root.clone()),
            None => config,
        }
    }
}

/// A read-only view of the running configuration, swapped atomically on reload.
#[derive(Debug, Clone)]
pub struct ConfigHandle {
    rx: watch::Receiver<Arc<Config>>,
}

impl ConfigHandle {
    /// A handle on a configuration that never changes.
    pub fn fixed(config: Config) -> Self {
        let (_tx, rx) = watch::channel(Arc::new(config));
        Self { rx }
    }

    /// The current configuration. Cheap: a reference count increment.
    pub fn current(&self) -> Arc<Config> {
        self.rx.borrow().clone()
    }

    /// A receiver notified on every swap.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.rx.clone()
    }
}

/// What one reload check did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file content did not change.
    Unchanged,
    /// A new document was swapped in.
    Applied {
        /// Whether the storage section changed (and was kept as it was, pending a restart).
        storage_change_pending: bool,
    },
    /// The new document was refused; the old one stays.
    Rejected(ConfigError),
}

/// Re-reads a configuration file and swaps valid new documents into the [`ConfigHandle`].
#[derive(Debug)]
pub struct ConfigReloader {
    source: ConfigSource,
    path: PathBuf,
    tx: watch::Sender<Arc<Config>>,
    last_hash: Option<[u8; 32]>,
}

impl ConfigReloader {
    /// Loads the source's file and returns the handle plus its reloader. Fails when the first
    /// document is invalid. Sources without a file get a fixed handle and no reloader.
    pub fn start(source: ConfigSource) -> Result<(ConfigHandle, Option<Self>), ConfigError> {
        let Some(path) = source.path().map(Path::to_path_buf) else {
            return Ok((ConfigHandle::fixed(source.load()?), None));
        };
        let text = std::fs::read(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config = source.parse(&String::from_utf8_lossy(&text))?;
        let (tx, rx) = watch::channel(Arc::new(config));
        let reloader = Self {
            source,
            path,
            tx,
            last_hash: Some(Sha256::digest(&text).into()),
        };
        Ok((ConfigHandle { rx }, Some(reloader)))
    }

    /// Checks the file once and swaps in a changed, valid document.
    pub async fn poll(&mut self) -> ReloadOutcome {
        let text = match tokio::fs::read(&self.path).await {
            Ok(text) => text,
            Err(source) => {
                // A missing file is often a rename in progress (editors, Secret volumes):
                // forget the hash so the next successful read is examined.
                self.last_hash = None;
                return ReloadOutcome::Rejected(ConfigError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let hash: [u8; 32] = Sha256::digest(&text).into();
        if self.last_hash == Some(hash) {
            return ReloadOutcome::Unchanged;
        }
        self.last_hash = Some(hash);
        let mut config = match self.source.parse(&String::from_utf8_lossy(&text)) {
            Ok(config) => config,
            Err(err) => return ReloadOutcome::Rejected(err),
        };
        let running = self.tx.borrow().clone();
        let storage_change_pending = config.settings.storage != running.settings.storage;
        if storage_change_pending {
            config.settings.storage = running.settings.storage.clone();
        }
        self.tx.send_replace(Arc::new(config));
        ReloadOutcome::Applied {
            storage_change_pending,
        }
    }

    /// Polls every `interval` until `shutdown` completes, logging what each change did.
    pub async fn run(mut self, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticker.tick() => {}
            }
            match self.poll().await {
                ReloadOutcome::Unchanged => {}
                ReloadOutcome::Applied {
                    storage_change_pending,
                } => {
                    tracing::info!(path = %self.path.display(), "configuration reloaded");
                    if storage_change_pending {
                        tracing::warn!(
                            path = %self.path.display(),
                            "storage settings changed: they take effect after a restart; \
                             the running storage settings are kept until then"
                        );
                    }
                }
                ReloadOutcome::Rejected(err) => {
                    tracing::error!(
                        path = %self.path.display(),
                        error = %err,
                        "new configuration refused; the running configuration stays"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n";

    fn write(path: &Path, body: &str) {
        std::fs::write(path, format!("{HEAD}{body}")).unwrap();
    }

    #[tokio::test]
    async fn swaps_valid_documents_and_ignores_invalid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, "region: one\n");
        let source = ConfigSource::new(Some(path.clone()), None);
        let (handle, reloader) = ConfigReloader::start(source).unwrap();
        let mut reloader = reloader.unwrap();
        let mut changes = handle.subscribe();
        assert_eq!(handle.current().spec.region, "one");
        assert!(matches!(reloader.poll().await, ReloadOutcome::Unchanged));

        write(&path, "region: two\n");
        assert!(matches!(
            reloader.poll().await,
            ReloadOutcome::Applied {
                storage_change_pending: false
            }
        ));
        assert!(changes.has_changed().unwrap());
        assert_eq!(changes.borrow_and_update().spec.region, "two");

        write(&path, "region: three\nbogus: 1\n");
        match reloader.poll().await {
            ReloadOutcome::Rejected(err) => assert!(err.to_string().contains("bogus")),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(handle.current().spec.region, "two");
        assert!(!changes.has_changed().unwrap());
        // The same invalid content is not re-examined.
        assert!(matches!(reloader.poll().await, ReloadOutcome::Unchanged));
    }

    #[tokio::test]
    async fn storage_changes_wait_for_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, "storage: {filesystem: {root: /a}}\n");
        let (handle, reloader) =
            ConfigReloader::start(ConfigSource::new(Some(path.clone()), None)).unwrap();
        let mut reloader = reloader.unwrap();
        write(&path, "region: moved\nstorage: {filesystem: {root: /b}}\n");
        assert!(matches!(
            reloader.poll().await,
            ReloadOutcome::Applied {
                storage_change_pending: true
            }
        ));
        let current = handle.current();
        assert_eq!(current.spec.region, "moved");
        assert_eq!(current.filesystem_root(), Some(Path::new("/a")));
    }

    #[tokio::test]
    async fn overrides_apply_to_reloaded_documents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, "");
        let source = ConfigSource::new(Some(path.clone()), Some("/override".into()));
        let (handle, reloader) = ConfigReloader::start(source).unwrap();
        let mut reloader = reloader.unwrap();
        assert_eq!(
            handle.current().filesystem_root(),
            Some(Path::new("/override"))
        );
        write(&path, "region: r2\nstorage: {filesystem: {root: /other}}\n");
        assert!(matches!(
            reloader.poll().await,
            ReloadOutcome::Applied {
                storage_change_pending: false
            }
        ));
        assert_eq!(
            handle.current().filesystem_root(),
            Some(Path::new("/override"))
        );
    }

    #[tokio::test]
    async fn run_picks_up_changes_within_its_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, "region: one\n");
        let (handle, reloader) =
            ConfigReloader::start(ConfigSource::new(Some(path.clone()), None)).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(reloader.unwrap().run(Duration::from_millis(20), async {
            let _ = stop_rx.await;
        }));
        let mut changes = handle.subscribe();
        write(&path, "region: two\n");
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("reload within 5s")
            .unwrap();
        assert_eq!(handle.current().spec.region, "two");
        stop_tx.send(()).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn sources_without_a_file_use_the_defaults() {
        let (handle, reloader) =
            ConfigReloader::start(ConfigSource::new(None, Some("/data".into()))).unwrap();
        assert!(reloader.is_none());
        assert_eq!(handle.current().filesystem_root(), Some(Path::new("/data")));
        assert_eq!(handle.current().spec.region, "local");
    }

    #[test]
    fn an_invalid_first_document_fails_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, "storag: {}\n");
        let err = ConfigReloader::start(ConfigSource::new(Some(path), None)).unwrap_err();
        assert!(err.to_string().contains("unknown field `storag`"), "{err}");
    }
}
