//! The configuration file source: a document file, the shard files it names, and their
//! reload when any of them changes.
//!
//! [`ConfigReloader`] re-reads the index file (polling, by default every second) and the
//! shard files it names (`shards: [{name, revision}]`: files named exactly `<name>` in the
//! index file's directory). When the content of any of them changed since the last check, it
//! produces the complete document ([`super::assemble`]) or why there is none: a shard that is
//! missing or at another revision than the index names means the document is incomplete,
//! and the running one stays. A content that was examined once is not examined again, so a
//! refused document is reported once, not every second. What is done with a document
//! (applying or refusing it) is up to the caller ([`crate::live`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::{Config, ConfigError, LoadError, Loaded, Problem, assemble};

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

    /// Loads the complete document once (the defaults when there is no file): the index file
    /// and its shard files, with the overrides.
    pub fn load(&self) -> Result<Loaded, LoadError> {
        match &self.path {
            None => Ok(self.apply_overrides(Loaded::stating_all(Config::default()))),
            Some(path) => self.document(path, read_files(path, None).0),
        }
    }

    /// The complete document of the files read in `snapshot`, with the overrides.
    fn document(&self, path: &Path, snapshot: Snapshot) -> Result<Loaded, LoadError> {
        let index = snapshot.index.map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let dir = shard_dir(path);
        let mut shards = snapshot.shards;
        let loaded = assemble(&index, |name| match shards.remove(name) {
            // Named by the index, but not read: an invalid name, or the index changed between
            // the two reads (the next check sees the new one).
            None => Err(shard_path(&dir, name).err().unwrap_or_else(|| {
                LoadError::Config(ConfigError::ShardMissing {
                    name: name.to_owned(),
                })
            })),
            Some(Ok(text)) => Ok(text.into_iter().collect()),
            Some(Err(source)) => Err(read_error(name, dir.join(name), source)),
        })?;
        Ok(self.apply_overrides(loaded))
    }

    fn apply_overrides(&self, mut loaded: Loaded) -> Loaded {
        if let Some(root) = &self.root_override {
            loaded.config = loaded.config.with_filesystem_root(root.clone());
        }
        loaded
    }
}

/// The directory shard files live in: the index file's.
fn shard_dir(index: &Path) -> PathBuf {
    index
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The file of shard `name`: exactly `<dir>/<name>`. A name that is not a plain file name is
/// refused before any file is read.
fn shard_path(dir: &Path, name: &str) -> Result<PathBuf, LoadError> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && Path::new(name).file_name() == Some(std::ffi::OsStr::new(name));
    if plain {
        Ok(dir.join(name))
    } else {
        Err(LoadError::Shard {
            name: name.to_owned(),
            source: ConfigError::Invalid(vec![Problem {
                path: "shards".into(),
                message: format!("{name:?} is not a valid shard name"),
            }]),
        })
    }
}

fn read_error(name: &str, path: PathBuf, source: std::io::Error) -> LoadError {
    LoadError::Shard {
        name: name.to_owned(),
        source: ConfigError::Read { path, source },
    }
}

/// What one reload check found.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// Neither the index nor any shard it names changed since the last check.
    Unchanged,
    /// A changed, complete document.
    Changed(Box<Loaded>),
    /// The files changed, but hold no complete document (the running one should stay).
    Rejected(LoadError),
}

/// Re-reads a configuration file and its shard files, producing each changed document.
#[derive(Debug)]
pub struct ConfigReloader {
    source: ConfigSource,
    path: PathBuf,
    /// Hash of the index file as last read, and the shards it names.
    index: Option<IndexNames>,
    /// Fingerprint of everything examined by the last check that found a change.
    examined: Option<[u8; 32]>,
}

impl ConfigReloader {
    /// Loads the source's document and returns it plus a reloader for its files. Fails when
    /// the first document is not complete and valid. Sources without a file get the defaults
    /// and no reloader.
    pub fn start(source: ConfigSource) -> Result<(Loaded, Option<Self>), LoadError> {
        let Some(path) = source.path().map(Path::to_path_buf) else {
            return Ok((source.load()?, None));
        };
        let (snapshot, index) = read_files(&path, None);
        let examined = Some(snapshot.fingerprint);
        let first = source.document(&path, snapshot)?;
        let reloader = Self {
            source,
            path,
            index,
            examined,
        };
        Ok((first, Some(reloader)))
    }

    /// The index file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the files once: a changed complete document, why the changed files hold none,
    /// or no change.
    pub async fn poll(&mut self) -> ReloadOutcome {
        let snapshot = self.read_async().await;
        if self.examined == Some(snapshot.fingerprint) {
            return ReloadOutcome::Unchanged;
        }
        self.examined = Some(snapshot.fingerprint);
        match self.source.document(&self.path, snapshot) {
            Ok(loaded) => ReloadOutcome::Changed(Box::new(loaded)),
            Err(err) => ReloadOutcome::Rejected(err),
        }
    }

    /// Polls every `interval` until `shutdown` completes, handing every change to `sink`.
    pub async fn run(
        mut self,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
        mut sink: impl FnMut(Result<Loaded, LoadError>),
    ) {
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
                ReloadOutcome::Changed(loaded) => sink(Ok(*loaded)),
                ReloadOutcome::Rejected(err) => sink(Err(err)),
            }
        }
    }

    async fn read_async(&mut self) -> Snapshot {
        let path = self.path.clone();
        let index = self.index.clone();
        let (snapshot, index) = tokio::task::spawn_blocking(move || read_files(&path, index))
            .await
            .unwrap_or_else(|e| {
                let error = std::io::Error::other(format!("reading the files failed: {e}"));
                (Snapshot::unreadable(error), None)
            });
        self.index = index;
        snapshot
    }
}

/// The hash of an index file's content and the shard names it holds.
type IndexNames = ([u8; 32], Vec<String>);

/// The files of one check: the index text, each named shard's text (`None`: no such file),
/// and a fingerprint of all of it.
struct Snapshot {
    index: std::io::Result<String>,
    shards: BTreeMap<String, std::io::Result<Option<String>>>,
    fingerprint: [u8; 32],
}

impl Snapshot {
    fn unreadable(error: std::io::Error) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"unreadable index\0");
        hash.update(format!("{:?}", error.kind()).as_bytes());
        Self {
            index: Err(error),
            shards: BTreeMap::new(),
            fingerprint: hash.finalize().into(),
        }
    }
}

/// Reads the index and the shards it names. `index` is the hash and shard names of the index
/// as last read, reused while its content is the same (the index is parsed for its shard
/// names only when it changed).
fn read_files(path: &Path, index: Option<IndexNames>) -> (Snapshot, Option<IndexNames>) {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        // A missing file is often a rename in progress (editors, Secret volumes); the next
        // successful read is examined, whatever it holds.
        Err(error) => return (Snapshot::unreadable(error), None),
    };
    let index_hash: [u8; 32] = Sha256::digest(&bytes).into();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let names = match index {
        Some((hash, names)) if hash == index_hash => names,
        _ => Config::parse_unvalidated(&text)
            .map(|c| c.spec.shards.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default(),
    };
    let dir = shard_dir(path);
    let mut fingerprint = Sha256::new();
    fingerprint.update(index_hash);
    let mut shards = BTreeMap::new();
    for name in &names {
        fingerprint.update(name.as_bytes());
        let Ok(file) = shard_path(&dir, name) else {
            fingerprint.update(b"\0invalid\0");
            continue;
        };
        let read = match std::fs::read(&file) {
            Ok(bytes) => {
                fingerprint.update(b"\0present\0");
                fingerprint.update(Sha256::digest(&bytes));
                Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fingerprint.update(b"\0missing\0");
                Ok(None)
            }
            Err(e) => {
                fingerprint.update(b"\0unreadable\0");
                fingerprint.update(format!("{:?}", e.kind()).as_bytes());
                Err(e)
            }
        };
        shards.insert(name.clone(), read);
    }
    (
        Snapshot {
            index: Ok(text),
            shards,
            fingerprint: fingerprint.finalize().into(),
        },
        Some((index_hash, names)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n";
    const SHARD_HEAD: &str =
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfigShard\n";

    fn write(path: &Path, body: &str) {
        std::fs::write(path, format!("{HEAD}{body}")).unwrap();
    }

    fn write_shard(path: &Path, body: &str) {
        std::fs::write(path, format!("{SHARD_HEAD}{body}")).unwrap();
    }

    fn changed(outcome: ReloadOutcome) -> Loaded {
        match outcome {
            ReloadOutcome::Changed(loaded) => *loaded,
            other => panic!("expected a changed document, got {other:?}"),
        }
    }

    fn rejected(outcome: ReloadOutcome) -> LoadError {
        match outcome {
            ReloadOutcome::Rejected(err) => err,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn reports_changed_documents_and_why_invalid_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, "region: one\n");
        let source = ConfigSource::new(Some(path.clone()), None);
        let (first, reloader) = ConfigReloader::start(source).unwrap();
        let mut reloader = reloader.unwrap();
        assert_eq!(first.config.spec.region, "one");
        assert!(matches!(reloader.poll().await, ReloadOutcome::Unchanged));

        write(&path, "region: two\n");
        assert_eq!(changed(reloader.poll().await).config.spec.region, "two");
        assert!(matches!(reloader.poll().await, ReloadOutcome::Unchanged));

        write(&path, "region: three\nbogus: 1\n");
        let err = rejected(reloader.poll().await);
        assert!(err.to_string().contains("bogus"), "{err}");
        // The same invalid content is not re-examined.
        assert!(matches!(reloader.poll().await, ReloadOutcome::Unchanged));
    }

    #[tokio::test]
    async fn a_missing_file_is_reported_once_and_its_return_examined() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, "region: one\n");
        let (_, reloader) =
            ConfigReloader::start(ConfigSource::new(Some(path.clone()), None)).unwrap();
        let mut reloader = reloader.unwrap();
        std::fs::remove_file(&path).unwrap();
        let err = rejected(reloader.poll().await);
        assert!(err.is_unavailable(), "{err}");
        assert!(matches!(reloader.poll().await, ReloadOutcome::Unchanged));
        // The same content as before the removal is examined again.
        write(&path, "region: one\n");
        assert_eq!(changed(reloader.poll().await).config.spec.region, "one");
    }

    #[tokio::test]
    async fn documents_say_which_settings_they_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, "storage: {filesystem: {root: /a}}\n");
        let (first, reloader) =
            ConfigReloader::start(ConfigSource::new(Some(path.clone()), None)).unwrap();
        assert!(first.stated.storage && !first.stated.uploads);
        let mut reloader = reloader.unwrap();
        write(&path, "region: moved\n");
        let loaded = changed(reloader.poll().await);
        assert_eq!(loaded.stated, Default::default());
        assert_eq!(loaded.config.spec.region, "moved");
    }

    #[tokio::test]
    async fn overrides_apply_to_reloaded_documents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, "");
        let source = ConfigSource::new(Some(path.clone()), Some("/override".into()));
        let (first, reloader) = ConfigReloader::start(source).unwrap();
        let mut reloader = reloader.unwrap();
        assert_eq!(first.config.filesystem_root(), Some(Path::new("/override")));
        write(&path, "region: r2\nstorage: {filesystem: {root: /other}}\n");
        assert_eq!(
            changed(reloader.poll().await).config.filesystem_root(),
            Some(Path::new("/override"))
        );
    }

    #[tokio::test]
    async fn run_hands_changes_to_its_sink_within_its_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, "region: one\n");
        let (_, reloader) =
            ConfigReloader::start(ConfigSource::new(Some(path.clone()), None)).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (doc_tx, mut doc_rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(reloader.unwrap().run(
            Duration::from_millis(20),
            async {
                let _ = stop_rx.await;
            },
            move |document| {
                let _ = doc_tx.send(document);
            },
        ));
        write(&path, "region: two\n");
        let document = tokio::time::timeout(Duration::from_secs(5), doc_rx.recv())
            .await
            .expect("a change within 5s")
            .unwrap()
            .unwrap();
        assert_eq!(document.config.spec.region, "two");
        stop_tx.send(()).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn sources_without_a_file_use_the_defaults() {
        let (first, reloader) =
            ConfigReloader::start(ConfigSource::new(None, Some("/data".into()))).unwrap();
        assert!(reloader.is_none());
        assert_eq!(first.config.filesystem_root(), Some(Path::new("/data")));
        assert_eq!(first.config.spec.region, "local");
    }

    #[test]
    fn an_invalid_first_document_fails_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, "storag: {}\n");
        let err = ConfigReloader::start(ConfigSource::new(Some(path), None)).unwrap_err();
        assert!(err.to_string().contains("unknown field `storag`"), "{err}");
    }

    const INDEX: &str = "region: sharded\nrevision: 2\nshards: [{name: shard-a, revision: 2}]\n\
                         credentials: [{id: ci, secretHash: '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', \
                         scope: containerRegistry, namespaces: [acme]}]\n";

    #[test]
    fn shard_files_complete_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, INDEX);
        write_shard(
            &dir.path().join("shard-a"),
            "revision: 2\nnamespaces: [{name: acme}]\n",
        );
        let (first, _) =
            ConfigReloader::start(ConfigSource::new(Some(path.clone()), None)).unwrap();
        let spec = &first.config.spec;
        assert_eq!(spec.revision, 2);
        assert_eq!(spec.namespaces[0].name, "acme", "merged from the shard");
        assert_eq!(spec.credentials[0].namespaces, ["acme"]);
    }

    #[tokio::test]
    async fn shards_missing_or_at_another_revision_keep_the_document_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let shard = dir.path().join("shard-a");
        write(&path, "region: plain\n");
        let (_, reloader) =
            ConfigReloader::start(ConfigSource::new(Some(path.clone()), None)).unwrap();
        let mut reloader = reloader.unwrap();

        // The index names a shard that is not there yet.
        write(&path, INDEX);
        let err = rejected(reloader.poll().await);
        assert!(err.is_incomplete(), "{err}");
        assert!(err.to_string().contains("shard-a"), "{err}");
        assert!(matches!(reloader.poll().await, ReloadOutcome::Unchanged));

        // The shard arrives at an older revision: still waiting.
        write_shard(&shard, "revision: 1\nnamespaces: [{name: acme}]\n");
        let err = rejected(reloader.poll().await);
        assert!(err.is_incomplete(), "{err}");
        assert!(err.to_string().contains("revision 1"), "{err}");

        // At the named revision: complete.
        write_shard(&shard, "revision: 2\nnamespaces: [{name: acme}]\n");
        let loaded = changed(reloader.poll().await);
        assert_eq!(loaded.config.spec.namespaces[0].name, "acme");
        assert!(matches!(reloader.poll().await, ReloadOutcome::Unchanged));

        // A shard that does not parse is named.
        write_shard(&shard, "revision: 2\nnamespaces: [{nme: acme}]\n");
        let err = rejected(reloader.poll().await);
        assert!(
            matches!(&err, LoadError::Shard { name, .. } if name == "shard-a"),
            "{err}"
        );

        // A shard that is removed makes the document incomplete again.
        std::fs::remove_file(&shard).unwrap();
        assert!(rejected(reloader.poll().await).is_incomplete());
    }

    #[test]
    fn shard_names_cannot_leave_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        write(&path, "shards: [{name: ../secret}]\n");
        let err = ConfigReloader::start(ConfigSource::new(Some(path), None)).unwrap_err();
        assert!(err.to_string().contains("not a valid shard name"), "{err}");
    }
}
