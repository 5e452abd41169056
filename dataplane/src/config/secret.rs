//! The Kubernetes source: the configuration document in a Secret, followed through the API.
//!
//! The format is the operator's: the index Secret (`--config-secret NAMESPACE/NAME`) holds a
//! `DataPlaneConfig` document under the data key [`DOCUMENT_KEY`] (`config.yaml`); each shard
//! it names (`shards: [{name, revision}]`) is a Secret of that name in the same Kubernetes
//! namespace holding a `DataPlaneConfigShard` document under the same key.
//!
//! [`SecretSource::run`] watches the Secrets of the namespace with a kube-runtime watcher (a
//! list, then a watch resumed from the last resource version, with backoff after failures;
//! no polling) and hands a complete document, or why there is none, to its sink whenever the
//! index or a shard it names changed. The Secrets' `config.yaml` values are kept in memory
//! (only those), so a shard written before the index that names it is there when the index
//! arrives; and the value before the newest is kept too, so that while the operator writes
//! the shards of the next revision (before the index that names them), the index in place
//! is still complete. A document is complete only when every shard is present at the
//! revision the index names ([`super::assemble`]); until then the running one stays.
//!
//! Every state of the Secrets is examined once: a refused document is reported once, not on
//! every unrelated Secret event. A deleted index Secret is reported as
//! [`LoadError::SecretDeleted`] (the running document stays in force).
//!
//! The process needs `list` and `watch` on Secrets in that namespace.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use sha2::{Digest as _, Sha256};

use super::{LoadError, Loaded, assemble};

/// The data key of the document in the index and shard Secrets.
pub const DOCUMENT_KEY: &str = "config.yaml";

/// Which Secret holds the index document: `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// The Kubernetes namespace (shards are looked up there too).
    pub namespace: String,
    /// The index Secret's name.
    pub name: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The text is not `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not NAMESPACE/NAME (two Kubernetes object names separated by '/')")]
pub struct InvalidSecretRef(String);

impl FromStr for SecretRef {
    type Err = InvalidSecretRef;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 253
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        match s.split_once('/') {
            Some((namespace, name)) if valid(namespace) && valid(name) => Ok(Self {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            _ => Err(InvalidSecretRef(s.to_owned())),
        }
    }
}

/// Follows the configuration Secrets of one index Secret through the Kubernetes API.
#[derive(Clone)]
pub struct SecretSource {
    client: Client,
    secret: SecretRef,
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSource")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl SecretSource {
    /// A source reading `secret` with the client configured the standard way: in-cluster
    /// (service account), or from `KUBECONFIG` / `~/.kube/config`.
    pub async fn connect(secret: SecretRef) -> Result<Self, kube::Error> {
        Ok(Self::new(Client::try_default().await?, secret))
    }

    /// A source reading `secret` with `client`.
    pub fn new(client: Client, secret: SecretRef) -> Self {
        Self { client, secret }
    }

    /// The index Secret.
    pub fn secret(&self) -> &SecretRef {
        &self.secret
    }

    /// Watches the Secrets until `shutdown` completes, handing every changed document (or why
    /// there is none) to `sink` and every failure of the watch itself (retried with backoff)
    /// to `on_error`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        mut sink: impl FnMut(Result<Loaded, LoadError>),
        mut on_error: impl FnMut(&watcher::Error),
    ) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.secret.namespace);
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        tokio::pin!(stream);
        tokio::pin!(shutdown);
        let mut documents = SecretDocuments::new(self.secret.clone());
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => return,
                event = stream.next() => event,
            };
            match event {
                None => return,
                Some(Err(error)) => {
                    tracing::warn!(
                        secret = %self.secret,
                        %error,
                        "watching the configuration Secrets failed; retrying"
                    );
                    on_error(&error);
                }
                Some(Ok(event)) => {
                    if let Some(document) = documents.event(event) {
                        sink(document);
                    }
                }
            }
        }
    }
}

/// What a Secret holds for this source: its `config.yaml` value, or what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    /// The text of `config.yaml`.
    Text(String),
    /// No `config.yaml` key, or a value that is not UTF-8.
    Unusable(String),
}

impl Data {
    fn of(secret: &Secret) -> Self {
        let value = secret
            .data
            .as_ref()
            .and_then(|data| data.get(DOCUMENT_KEY))
            .map(|bytes| bytes.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|data| data.get(DOCUMENT_KEY))
                    .map(|text| text.clone().into_bytes())
            });
        match value {
            None => Self::Unusable(format!("no data key {DOCUMENT_KEY:?}")),
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Self::Text(text),
                Err(_) => Self::Unusable(format!("the value of {DOCUMENT_KEY:?} is not UTF-8")),
            },
        }
    }
}

/// The Secrets of the namespace as seen by the watcher, and the document they make.
#[derive(Debug)]
struct SecretDocuments {
    index: SecretRef,
    secrets: BTreeMap<String, Data>,
    /// The text each Secret held before its current one (by name).
    previous: BTreeMap<String, String>,
    /// Secrets listed since the last `Init` (a relist), swapped in at `InitDone`.
    relisting: Option<BTreeMap<String, Data>>,
    /// Whether the first list is complete (nothing is examined before).
    listed: bool,
    /// Whether the index Secret was seen since the source started.
    index_seen: bool,
    /// Fingerprint of the state last examined.
    examined: Option<[u8; 32]>,
    /// Hash of the index text last parsed for its shard names, and those names.
    shard_names: Option<([u8; 32], Vec<String>)>,
    /// Hash of the index text of the last complete document handed out: the shards it names
    /// are content-addressed, so the same index completes to the same document.
    completed: Option<[u8; 32]>,
}

impl SecretDocuments {
    fn new(index: SecretRef) -> Self {
        Self {
            index,
            secrets: BTreeMap::new(),
            previous: BTreeMap::new(),
            relisting: None,
            listed: false,
            index_seen: false,
            examined: None,
            shard_names: None,
            completed: None,
        }
    }

    /// Takes in one watcher event; returns the document (or why there is none) when the
    /// Secrets that make it changed.
    fn event(&mut self, event: watcher::Event<Secret>) -> Option<Result<Loaded, LoadError>> {
        let name_of = |secret: &Secret| secret.metadata.name.clone().unwrap_or_default();
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                None
            }
            watcher::Event::InitApply(secret) => {
                let data = Data::of(&secret);
                self.relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name_of(&secret), data);
                None
            }
            watcher::Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                self.secrets.retain(|name, _| listed.contains_key(name));
                self.previous.retain(|name, _| listed.contains_key(name));
                for (name, data) in listed {
                    self.replace(name, data);
                }
                self.listed = true;
                self.examine()
            }
            watcher::Event::Apply(secret) => {
                self.replace(name_of(&secret), Data::of(&secret));
                self.examine()
            }
            watcher::Event::Delete(secret) => {
                let name = name_of(&secret);
                self.secrets.remove(&name);
                self.previous.remove(&name);
                self.examine()
            }
        }
    }

    /// Records the current data of a Secret, keeping the text it replaces.
    fn replace(&mut self, name: String, data: Data) {
        if let Some(Data::Text(old)) = self.secrets.get(&name)
            && !matches!(&data, Data::Text(new) if new == old)
        {
            self.previous.insert(name.clone(), old.clone());
        }
        self.secrets.insert(name, data);
    }

    /// The document of the current Secrets, unless this state was examined already.
    fn examine(&mut self) -> Option<Result<Loaded, LoadError>> {
        if !self.listed {
            return None;
        }
        let fingerprint = self.fingerprint();
        if self.examined == Some(fingerprint) {
            return None;
        }
        self.examined = Some(fingerprint);
        let document = self.document();
        if document.is_ok() {
            let index = self.shard_names.as_ref().map(|(hash, _)| *hash);
            if index.is_some() && index == self.completed {
                // Only the next revision's shards arrived: the document is the same.
                return None;
            }
            self.completed = index;
        }
        Some(document)
    }

    /// A hash of the index Secret's data and of the data of every shard it names.
    fn fingerprint(&mut self) -> [u8; 32] {
        let names = match self.secrets.get(&self.index.name) {
            Some(Data::Text(text)) => {
                let text_hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
                match &self.shard_names {
                    Some((hash, names)) if *hash == text_hash => names.clone(),
                    _ => {
                        let names = shard_names(text);
                        self.shard_names = Some((text_hash, names.clone()));
                        names
                    }
                }
            }
            _ => Vec::new(),
        };
        let mut hash = Sha256::new();
        let mut add = |name: &str, data: Option<&Data>| {
            hash.update(name.as_bytes());
            match data {
                None => hash.update(b"\0missing\0"),
                Some(Data::Unusable(why)) => {
                    hash.update(b"\0unusable\0");
                    hash.update(why.as_bytes());
                }
                Some(Data::Text(text)) => {
                    hash.update(b"\0text\0");
                    hash.update(Sha256::digest(text.as_bytes()));
                }
            }
        };
        add(&self.index.name, self.secrets.get(&self.index.name));
        for name in &names {
            add(name, self.secrets.get(name));
        }
        hash.finalize().into()
    }

    fn document(&mut self) -> Result<Loaded, LoadError> {
        let namespace = self.index.namespace.clone();
        let text = match self.secrets.get(&self.index.name) {
            Some(Data::Text(text)) => text,
            Some(Data::Unusable(problem)) => {
                self.index_seen = true;
                return Err(LoadError::SecretData {
                    namespace,
                    name: self.index.name.clone(),
                    problem: problem.clone(),
                });
            }
            None if self.index_seen => {
                return Err(LoadError::SecretDeleted {
                    namespace,
                    name: self.index.name.clone(),
                });
            }
            None => {
                return Err(LoadError::SecretMissing {
                    namespace,
                    name: self.index.name.clone(),
                });
            }
        };
        self.index_seen = true;
        let (secrets, previous) = (&self.secrets, &self.previous);
        assemble(text, |name| match secrets.get(name) {
            Some(Data::Text(text)) => Ok(std::iter::once(text)
                .chain(previous.get(name))
                .cloned()
                .collect()),
            Some(Data::Unusable(problem)) => Err(LoadError::SecretData {
                namespace: namespace.clone(),
                name: name.to_owned(),
                problem: problem.clone(),
            }),
            None => Ok(Vec::new()),
        })
    }
}

/// The shard names an index document text names (none when it does not parse).
fn shard_names(text: &str) -> Vec<String> {
    super::Config::parse_unvalidated(text)
        .map(|c| c.spec.shards.into_iter().map(|s| s.name).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatedSettings;
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    const HEAD: &str = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n";
    const SHARD_HEAD: &str =
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfigShard\n";

    fn secret(name: &str, document: Option<&str>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("registry".to_owned()),
                ..ObjectMeta::default()
            },
            data: document.map(|text| {
                [(
                    DOCUMENT_KEY.to_owned(),
                    ByteString(text.as_bytes().to_vec()),
                )]
                .into()
            }),
            ..Secret::default()
        }
    }

    fn documents() -> SecretDocuments {
        SecretDocuments::new("registry/region-config".parse().unwrap())
    }

    fn listed(
        docs: &mut SecretDocuments,
        secrets: Vec<Secret>,
    ) -> Option<Result<Loaded, LoadError>> {
        assert!(docs.event(watcher::Event::Init).is_none());
        for s in secrets {
            assert!(
                docs.event(watcher::Event::InitApply(s)).is_none(),
                "buffered"
            );
        }
        docs.event(watcher::Event::InitDone)
    }

    #[test]
    fn secret_refs_are_namespace_slash_name() {
        let r: SecretRef = "registry/region-config".parse().unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str()),
            ("registry", "region-config")
        );
        assert_eq!(r.to_string(), "registry/region-config");
        for bad in ["region-config", "/x", "x/", "a/b/c", "A/b", "a/-b"] {
            assert!(bad.parse::<SecretRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_first_list_decides_and_unrelated_changes_are_not_reexamined() {
        let mut docs = documents();
        let index = format!("{HEAD}revision: 3\nnamespaces: [{{name: acme}}]\n");
        let first = listed(
            &mut docs,
            vec![secret("region-config", Some(&index)), secret("other", None)],
        )
        .expect("examined at the end of the list")
        .unwrap();
        assert_eq!(first.config.spec.revision, 3);
        assert_eq!(
            first.stated,
            StatedSettings::default(),
            "no settings in the Secret"
        );
        // Another Secret of the namespace changes: nothing to examine.
        assert!(
            docs.event(watcher::Event::Apply(secret("other", Some("x"))))
                .is_none()
        );
        // A relist with the same content: nothing new either.
        assert!(listed(&mut docs, vec![secret("region-config", Some(&index))]).is_none());
        let updated = format!("{HEAD}revision: 4\nnamespaces: [{{name: acme}}]\n");
        let next = docs
            .event(watcher::Event::Apply(secret(
                "region-config",
                Some(&updated),
            )))
            .unwrap()
            .unwrap();
        assert_eq!(next.config.spec.revision, 4);
    }

    #[test]
    fn missing_unusable_and_deleted_index_secrets() {
        let mut docs = documents();
        let err = listed(&mut docs, vec![]).unwrap().unwrap_err();
        assert!(matches!(err, LoadError::SecretMissing { .. }), "{err}");
        assert!(err.to_string().contains("registry/region-config"), "{err}");
        let err = docs
            .event(watcher::Event::Apply(secret("region-config", None)))
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("no data key \"config.yaml\""),
            "{err}"
        );
        let err = docs
            .event(watcher::Event::Apply(secret(
                "region-config",
                Some("kind: [\n"),
            )))
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, LoadError::Config(_)), "{err}");
        let ok = format!("{HEAD}revision: 1\n");
        docs.event(watcher::Event::Apply(secret("region-config", Some(&ok))))
            .unwrap()
            .unwrap();
        let err = docs
            .event(watcher::Event::Delete(secret("region-config", Some(&ok))))
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, LoadError::SecretDeleted { .. }), "{err}");
        assert!(err.is_unavailable());
    }

    #[test]
    fn shard_secrets_complete_the_index_at_the_named_revision() {
        let mut docs = documents();
        let index = format!(
            "{HEAD}revision: 5\nshards: [{{name: region-config-1, revision: 5}}]\n\
             credentials: [{{id: ci, secretHash: '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', \
             scope: containerRegistry, namespaces: [acme]}}]\n"
        );
        let shard = |revision: u64| {
            format!("{SHARD_HEAD}revision: {revision}\nnamespaces: [{{name: acme}}]\n")
        };
        // The index arrives first: incomplete.
        let err = listed(&mut docs, vec![secret("region-config", Some(&index))])
            .unwrap()
            .unwrap_err();
        assert!(err.is_incomplete(), "{err}");
        // An old shard: still incomplete.
        let err = docs
            .event(watcher::Event::Apply(secret(
                "region-config-1",
                Some(&shard(4)),
            )))
            .unwrap()
            .unwrap_err();
        assert!(err.is_incomplete(), "{err}");
        // The shard at the named revision completes it.
        let loaded = docs
            .event(watcher::Event::Apply(secret(
                "region-config-1",
                Some(&shard(5)),
            )))
            .unwrap()
            .unwrap();
        assert_eq!(loaded.config.spec.namespaces[0].name, "acme");
        // A shard without the data key is named.
        let err = docs
            .event(watcher::Event::Apply(secret("region-config-1", None)))
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("region-config-1"), "{err}");
    }

    #[test]
    fn the_index_in_place_stays_complete_while_the_next_shards_are_written() {
        let mut docs = documents();
        let index = |revision: u64, shard: u64| {
            format!(
                "{HEAD}revision: {revision}\nshards: [{{name: region-config-1, revision: {shard}}}]\n\
                 credentials: [{{id: ci, secretHash: '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', \
                 scope: containerRegistry, namespaces: [acme]}}]\n"
            )
        };
        let shard = |revision: u64, namespace: &str| {
            format!("{SHARD_HEAD}revision: {revision}\nnamespaces: [{{name: {namespace}}}]\n")
        };
        let loaded = listed(
            &mut docs,
            vec![
                secret("region-config", Some(&index(1, 10))),
                secret("region-config-1", Some(&shard(10, "acme"))),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(loaded.config.spec.revision, 1);
        // The shard of the next revision is written first: the index in place still completes
        // with the shard it names, so nothing is refused and nothing new is handed out.
        assert!(
            docs.event(watcher::Event::Apply(secret(
                "region-config-1",
                Some(&shard(20, "acme")),
            )))
            .is_none()
        );
        // Then the index naming it: the new document.
        let loaded = docs
            .event(watcher::Event::Apply(secret(
                "region-config",
                Some(&index(2, 20)),
            )))
            .unwrap()
            .unwrap();
        assert_eq!(loaded.config.spec.revision, 2);
        // Two shard revisions ahead of the index is more than is kept: incomplete, and the
        // running document stays (the source reports why).
        assert!(
            docs.event(watcher::Event::Apply(secret(
                "region-config-1",
                Some(&shard(30, "acme")),
            )))
            .is_none()
        );
        let err = docs
            .event(watcher::Event::Apply(secret(
                "region-config-1",
                Some(&shard(40, "acme")),
            )))
            .unwrap()
            .unwrap_err();
        assert!(err.is_incomplete(), "{err}");
        // A relist keeps what it can: the index naming the newest shard completes.
        let loaded = listed(
            &mut docs,
            vec![
                secret("region-config", Some(&index(3, 40))),
                secret("region-config-1", Some(&shard(40, "acme"))),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(loaded.config.spec.revision, 3);
    }
}
