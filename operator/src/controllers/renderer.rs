//! The renderer: the one writer of the region's configuration document.
//!
//! It keeps caches of every input, and on every change (debounced), on key rotations and
//! periodically, it decides every object ([`crate::resolve`]), renders the document
//! ([`crate::render`]) and, when its content changed, writes it with the next revision:
//! shards first, then the index naming them, then stale shards are deleted. Objects of other
//! regions are never read into the document.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::store;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use crds::config::{
    ClaimRule, CredentialConfig, FederationConfig, PreviousSecret, Timestamp as DocTime,
};
use crds::v1alpha1::{RegistryCredential, RegistryNamespace, reasons};

use super::clusters::{self, SyncTrigger, Watch};
use super::credential::state_secret_name;
use super::{Context, Published, Stores};
use crate::keys::{KEYS_DATA_KEY, KeyRing};
use crate::render::render;
use crate::resolve::{self, Key, Verdict};
use crate::secrets::CredentialState;
use crate::settings::Settings;
use crate::telemetry::{ConditionLabels, Metrics};
use crate::{CONTENT_HASH_ANNOTATION, FIELD_MANAGER, MANAGED_BY, REGION_LABEL, Result};

/// The data key of the configuration Secrets (index and shards).
pub const CONFIG_DATA_KEY: &str = "config.yaml";
/// Annotation with the revision of a configuration Secret.
pub const REVISION_ANNOTATION: &str = "registry.thalassa.cloud/revision";
/// Label on configuration shards naming the index Secret they belong to.
pub const SHARD_OF_LABEL: &str = "registry.thalassa.cloud/config-shard-of";
/// Debounce: changes arriving within this time are rendered together.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Shard Secrets written at once.
const SHARD_WRITES: usize = 4;
/// Rendered even without a change, to catch anything missed.
const RESYNC: Duration = Duration::from_secs(60);

fn managed_selector() -> String {
    format!("app.kubernetes.io/managed-by={MANAGED_BY}")
}

/// Starts one reflector per input; every change wakes the renderer, and changes that may
/// concern a credential's sync are sent to the receiver returned.
pub fn start_reflectors(
    client: &Client,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    render: Arc<Notify>,
) -> (
    Stores,
    JoinSet<()>,
    mpsc::UnboundedSender<SyncTrigger>,
    mpsc::UnboundedReceiver<SyncTrigger>,
) {
    let mut tasks = JoinSet::new();
    let (triggers, triggered) = mpsc::unbounded_channel();
    let any = || watcher::Config::default().any_semantic();
    // Every change wakes the renderer (once the cache holds it, for the inputs of the
    // document), and `trigger` turns it into a sync trigger where it may concern a
    // credential's sync; a re-list of a sync input triggers every syncing credential.
    fn spawn<K>(
        tasks: &mut JoinSet<()>,
        api: Api<K>,
        config: watcher::Config,
        watch: Watch,
        render: Option<Arc<Notify>>,
        trigger: impl Fn(&K) -> Option<SyncTrigger> + Send + Sync + 'static,
        triggers: &mpsc::UnboundedSender<SyncTrigger>,
    ) -> store::Store<K>
    where
        K: clusters::Cached,
    {
        let triggers = triggers.clone();
        clusters::reflect_with(tasks, api, config, watch, move |event| {
            if let watcher::Event::Apply(obj) | watcher::Event::Delete(obj) = event
                && let Some(sent) = trigger(obj)
            {
                let _ = triggers.send(sent);
            }
            if let Some(render) = &render {
                render.notify_one();
            }
        })
    }
    fn none<K>(_: &K) -> Option<SyncTrigger> {
        None
    }
    let stores = Stores {
        namespaces: spawn(
            &mut tasks,
            Api::<RegistryNamespace>::all(client.clone()),
            any(),
            Watch::local("registrynamespaces", metrics, None),
            Some(Arc::clone(&render)),
            none,
            &triggers,
        ),
        credentials: spawn(
            &mut tasks,
            Api::<RegistryCredential>::all(client.clone()),
            any(),
            Watch::local("registrycredentials", metrics, None),
            Some(Arc::clone(&render)),
            none,
            &triggers,
        ),
        projects: spawn(
            &mut tasks,
            Api::<Namespace>::all(client.clone()),
            any(),
            Watch::local("namespaces", metrics, Some(&triggers)),
            Some(Arc::clone(&render)),
            |ns: &Namespace| {
                Some(SyncTrigger::Namespace {
                    cluster: None,
                    name: ns.metadata.name.clone()?,
                })
            },
            &triggers,
        ),
        own_secrets: spawn(
            &mut tasks,
            Api::<Secret>::namespaced(client.clone(), &settings.namespace),
            any().labels(&managed_selector()),
            Watch::local("secrets", metrics, None),
            Some(Arc::clone(&render)),
            none,
            &triggers,
        ),
        delivered: spawn(
            &mut tasks,
            Api::<Secret>::all(client.clone()),
            any().labels(&format!(
                "{},{}",
                managed_selector(),
                crate::CREDENTIAL_UID_LABEL
            )),
            Watch::local("secrets", metrics, Some(&triggers)),
            Some(render),
            // Delivered Secrets and synced copies (not the credentials' state, which only the
            // credential's own reconcile writes).
            |secret: &Secret| {
                (secret.type_.as_deref() == Some(crate::DOCKER_CONFIG_JSON))
                    .then(|| super::credential::credential_of(secret))
                    .flatten()
                    .map(|credential| SyncTrigger::Credential {
                        cluster: None,
                        credential,
                    })
            },
            &triggers,
        ),
        // ServiceAccounts matter to the credential controller only, not to the document.
        service_accounts: spawn(
            &mut tasks,
            Api::<ServiceAccount>::all(client.clone()),
            any(),
            Watch::local("serviceaccounts", metrics, Some(&triggers)),
            None,
            |sa: &ServiceAccount| {
                Some(SyncTrigger::ServiceAccount {
                    cluster: None,
                    namespace: sa.metadata.namespace.clone()?,
                    name: sa.metadata.name.clone()?,
                })
            },
            &triggers,
        ),
    };
    (stores, tasks, triggers, triggered)
}

/// Renders and writes until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    published: watch::Sender<Arc<Published>>,
    decisions: watch::Sender<u64>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut writer = Writer::new(&ctx);
    let mut failures = 0u32;
    let mut last_pass = Duration::ZERO;
    loop {
        let wait = writer.next_wake().unwrap_or(RESYNC);
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ctx.render.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        // Changes arriving meanwhile are rendered together; a large region, whose passes take
        // longer, waits as long as its last pass took, so rendering never takes more than
        // about half of a core however fast objects change.
        tokio::time::sleep(DEBOUNCE.max(last_pass)).await;
        let started = std::time::Instant::now();
        match writer.render_once(&ctx).await {
            Ok((summary, decided)) => {
                last_pass = started.elapsed();
                ctx.metrics.reconciled("render", last_pass);
                decisions
                    .send_if_modified(|current| std::mem::replace(current, decided) != decided);
                failures = 0;
                published.send_if_modified(|current| {
                    if **current == summary {
                        false
                    } else {
                        *current = Arc::new(summary);
                        true
                    }
                });
            }
            Err(error) => {
                ctx.metrics.failed("render", &error);
                tracing::error!(%error, "rendering the configuration failed");
                failures += 1;
                tokio::time::sleep(super::backoff(failures)).await;
                ctx.render.notify_one();
            }
        }
    }
}

/// The renderer's memory between passes.
struct Writer {
    client: Client,
    settings: Arc<Settings>,
    /// Revision last written (so a stale cache never makes it go back).
    revision: u64,
    /// Digest of the content last written.
    digest: Option<String>,
    /// When the key ring next needs attention.
    key_wake: Option<Timestamp>,
}

impl Writer {
    fn new(ctx: &Context) -> Self {
        Self {
            client: ctx.client.clone(),
            settings: Arc::clone(&ctx.settings),
            revision: 0,
            digest: None,
            key_wake: None,
        }
    }

    fn next_wake(&self) -> Option<Duration> {
        let at = self.key_wake?;
        let left = Timestamp::now().duration_until(at);
        Some(Duration::try_from(left).unwrap_or_default().min(RESYNC))
    }

    /// One pass; returns what the document contains and a digest of the decisions other
    /// objects depend on.
    async fn render_once(&mut self, ctx: &Context) -> Result<(Published, u64)> {
        let settings = Arc::clone(&self.settings);
        let settings = settings.as_ref();
        let now = Timestamp::now();
        let orgs = ctx.stores.organisations();
        let namespaces = ctx.stores.namespace_index(settings);
        let decided = decisions_digest(&namespaces, &orgs);

        let mut counts: HashMap<(&'static str, String), i64> = HashMap::new();
        for ns in ctx.stores.namespaces.state() {
            if let Some(verdict) = namespaces.verdict(&Key::of(ns.as_ref())) {
                *counts
                    .entry(("RegistryNamespace", reason_of(verdict)))
                    .or_default() += 1;
            }
        }

        let mut credentials = Vec::new();
        let mut federations = Vec::new();
        let mut hashes = HashMap::new();
        for c in ctx.stores.credentials.state() {
            if c.spec.region != settings.region || c.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let grant = match resolve::credential(settings, &orgs, &namespaces, &c, now) {
                Ok(grant) => grant,
                Err(verdict) => {
                    *counts
                        .entry(("RegistryCredential", reason_of(&verdict)))
                        .or_default() += 1;
                    continue;
                }
            };
            let id = c.username();
            let expires_at = grant.expires_at.map(doc_time);
            if let Some(wi) = &c.spec.workload_identity {
                federations.push(FederationConfig {
                    name: id.clone(),
                    issuer: wi.issuer.clone(),
                    audience: wi.audience.clone(),
                    claim_rules: wi
                        .claim_rules
                        .iter()
                        .map(|r| ClaimRule {
                            claim: r.claim.clone(),
                            values: r.values.clone(),
                        })
                        .collect(),
                    scope: grant.scope,
                    namespaces: grant.namespaces,
                    ca_bundle: wi.ca_bundle.clone(),
                });
                hashes.insert(id, String::new());
            } else {
                let uid = c.metadata.uid.as_deref().unwrap_or_default();
                let Some(state) = ctx
                    .stores
                    .own_secret(&settings.namespace, &state_secret_name(uid))
                    .and_then(|s| CredentialState::from_data(uid, s.data.as_ref()?).ok())
                else {
                    // Not issued yet: the credential controller issues it.
                    *counts
                        .entry(("RegistryCredential", reasons::RECONCILING.into()))
                        .or_default() += 1;
                    continue;
                };
                hashes.insert(id.clone(), state.secret_hash.clone());
                credentials.push(CredentialConfig {
                    id,
                    secret_hash: state.secret_hash,
                    scope: grant.scope,
                    namespaces: grant.namespaces,
                    not_before: None,
                    expires_at,
                    previous_secrets: state
                        .previous
                        .iter()
                        .filter(|p| p.expires_at > now)
                        .map(|p| PreviousSecret {
                            secret_hash: p.secret_hash.clone(),
                            expires_at: doc_time(p.expires_at),
                        })
                        .collect(),
                });
            }
            *counts
                .entry(("RegistryCredential", reasons::READY.into()))
                .or_default() += 1;
        }
        ctx.metrics.objects.clear();
        for ((kind, reason), n) in counts {
            ctx.metrics
                .objects
                .get_or_create(&ConditionLabels {
                    kind: kind.to_owned(),
                    reason,
                })
                .set(n);
        }

        let tokens = self.keys(now).await?;
        let mut rendered = render(settings, &namespaces, credentials, federations, tokens, 0);
        let digest = rendered.content_digest();
        let own = Api::<Secret>::namespaced(self.client.clone(), &settings.namespace);
        let index = ctx
            .stores
            .own_secret(&settings.namespace, &settings.config_secret);
        let stored_revision = index
            .as_ref()
            .and_then(|s| {
                s.metadata
                    .annotations
                    .as_ref()?
                    .get(REVISION_ANNOTATION)?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        let stored_digest = index.as_ref().and_then(|s| {
            s.metadata
                .annotations
                .as_ref()?
                .get(CONTENT_HASH_ANNOTATION)
                .cloned()
        });
        self.revision = self.revision.max(stored_revision);
        let unchanged = self.digest.as_ref() == Some(&digest)
            || (self.digest.is_none() && stored_digest.as_ref() == Some(&digest));
        if !unchanged {
            self.revision += 1;
            rendered.index.spec.revision = self.revision;
            // Refuse to write what the data plane would refuse.
            rendered.merged()?;
            let mut bytes = 0;
            let mut writes = Vec::new();
            for (name, shard) in &rendered.shards {
                let text = serde_norway::to_string(shard).expect("shards serialize");
                bytes += text.len();
                // A shard's revision is its content: one already stored at it is left alone.
                let stored = ctx
                    .stores
                    .own_secret(&settings.namespace, name)
                    .and_then(|s| {
                        s.metadata
                            .annotations
                            .as_ref()?
                            .get(REVISION_ANNOTATION)
                            .cloned()
                    });
                if stored == Some(shard.revision.to_string()) {
                    continue;
                }
                let mut labels = self.labels();
                labels.insert(SHARD_OF_LABEL.into(), settings.config_secret.clone());
                writes.push((name.clone(), text, labels, shard.revision.to_string()));
            }
            // Shards are independent of each other: a few are written at once.
            let this = &*self;
            futures::stream::iter(writes.into_iter().map(|(name, text, labels, revision)| {
                let (own, digest) = (&own, &digest);
                async move {
                    this.write(own, &name, text, labels, &revision, digest)
                        .await
                }
            }))
            .buffer_unordered(SHARD_WRITES)
            .try_collect::<Vec<()>>()
            .await?;
            let text = rendered.index.spec_to_yaml();
            bytes += text.len();
            let revision = self.revision.to_string();
            self.write(
                &own,
                &settings.config_secret,
                text,
                self.labels(),
                &revision,
                &digest,
            )
            .await?;
            // Shards no longer named go last, once the index no longer needs them.
            let names: HashSet<&str> = rendered.shards.iter().map(|(n, _)| n.as_str()).collect();
            let selector = format!("{SHARD_OF_LABEL}={}", settings.config_secret);
            for stale in own
                .list_metadata(&ListParams::default().labels(&selector))
                .await?
            {
                let name = stale.metadata.name.unwrap_or_default();
                if !names.contains(name.as_str()) {
                    let _ = own.delete(&name, &DeleteParams::default()).await;
                }
            }
            self.digest = Some(digest);
            ctx.metrics.revision.set(self.revision as i64);
            ctx.metrics.document_bytes.set(bytes as i64);
            ctx.metrics.shards.set(rendered.shards.len() as i64);
            tracing::info!(
                revision = self.revision,
                bytes,
                shards = rendered.shards.len(),
                credentials = hashes.len(),
                "configuration written"
            );
        } else {
            self.digest = Some(digest);
            self.revision = self.revision.max(stored_revision);
        }
        self.sweep_orphans(ctx, now).await?;
        let summary = Published {
            revision: self.revision,
            namespaces: namespaces.served().keys().cloned().collect(),
            credentials: hashes,
        };
        Ok((summary, decided))
    }

    /// Deletes state Secrets whose credential no longer exists (it was deleted while its
    /// finalizer was bypassed). Only Secrets older than the settings' `orphanGrace` are
    /// considered, so a cache that has not seen a new credential yet never costs it its secret.
    async fn sweep_orphans(&self, ctx: &Context, now: Timestamp) -> Result<()> {
        let uids: HashSet<String> = ctx
            .stores
            .credentials
            .state()
            .iter()
            .filter_map(|c| c.metadata.uid.clone())
            .collect();
        let own = Api::<Secret>::namespaced(self.client.clone(), &self.settings.namespace);
        let grace = k8s_openapi::jiff::SignedDuration::try_from(self.settings.orphan_grace.0)
            .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
        for secret in ctx.stores.own_secrets.state() {
            let Some(uid) = secret
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::CREDENTIAL_UID_LABEL))
            else {
                continue;
            };
            let old = secret
                .metadata
                .creation_timestamp
                .as_ref()
                .is_some_and(|t| now.duration_since(t.0) > grace);
            if old && !uids.contains(uid) {
                let name = secret.metadata.name.clone().unwrap_or_default();
                tracing::info!(secret = %name, credential_uid = %uid, "deleting the state of a credential that no longer exists");
                match own.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/managed-by".to_owned(),
                MANAGED_BY.to_owned(),
            ),
            (REGION_LABEL.to_owned(), self.settings.region.clone()),
        ])
    }

    async fn write(
        &self,
        api: &Api<Secret>,
        name: &str,
        text: String,
        labels: BTreeMap<String, String>,
        revision: &str,
        digest: &str,
    ) -> Result<()> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(self.settings.namespace.clone()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([
                    (REVISION_ANNOTATION.to_owned(), revision.to_owned()),
                    (CONTENT_HASH_ANNOTATION.to_owned(), digest.to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                CONFIG_DATA_KEY.to_owned(),
                ByteString(text.into_bytes()),
            )])),
            ..Secret::default()
        };
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
        Ok(())
    }

    /// The token keys, rotated when due (the keys Secret is written first).
    async fn keys(&mut self, now: Timestamp) -> Result<crds::config::TokensConfig> {
        let settings = Arc::clone(&self.settings);
        let name = format!("{}-keys", settings.config_secret);
        let own = Api::<Secret>::namespaced(self.client.clone(), &settings.namespace);
        // Read from the API: a key ring must never be made twice from a stale cache.
        let existing = own.get_opt(&name).await?;
        let mut ring = match existing
            .as_ref()
            .and_then(|s| s.data.as_ref()?.get(KEYS_DATA_KEY).cloned())
        {
            Some(bytes) => KeyRing::from_yaml(&String::from_utf8_lossy(&bytes.0))?,
            None => KeyRing::default(),
        };
        let ttl = settings.tokens.ttl.0;
        let rotation = settings.tokens.key_rotation.0;
        if ring.rotate(now, rotation, ttl)? {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(settings.namespace.clone()),
                    labels: Some(self.labels()),
                    resource_version: existing.and_then(|s| s.metadata.resource_version),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".into()),
                data: Some(BTreeMap::from([(
                    KEYS_DATA_KEY.to_owned(),
                    ByteString(ring.to_yaml().into_bytes()),
                )])),
                ..Secret::default()
            };
            if secret.metadata.resource_version.is_some() {
                own.replace(&name, &Default::default(), &secret).await?;
            } else {
                own.create(&Default::default(), &secret).await?;
            }
            tracing::info!(keys = ring.keys.len(), "token keys rotated");
        }
        self.key_wake = ring.next_change(now, rotation);
        Ok(ring.tokens_config(now, ttl))
    }
}

/// A digest of which object serves which registry namespace, every namespace verdict, and
/// the organisations: what credentials and namespaces are decided from besides themselves.
fn decisions_digest(
    namespaces: &crate::resolve::NamespaceIndex,
    orgs: &crate::resolve::Organisations,
) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}", namespaces).hash(&mut hasher);
    let mut orgs: Vec<_> = orgs.iter().collect();
    orgs.sort();
    orgs.hash(&mut hasher);
    hasher.finish()
}

fn reason_of(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Served => reasons::READY.to_owned(),
        Verdict::Refused { reason, .. } => (*reason).to_owned(),
    }
}

fn doc_time(t: Timestamp) -> DocTime {
    let secs = t.as_second().max(0) as u64;
    DocTime(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}
