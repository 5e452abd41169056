//! Pull-Secret sync, the writes: copies of a credential's pull Secret in the namespaces its
//! sync targets reach, in this cluster and in remote ones ([`super::clusters`]), the
//! `imagePullSecrets` of their ServiceAccounts, and the removal of copies that no target
//! wants any more. The decisions are in [`crate::sync`].
//!
//! A remote cluster that does not answer, or refuses the writes, makes its target
//! `Unreachable` and the credential `Degraded`; the other targets are synced all the same,
//! and its copies stay as they are until it answers again (its watches recovering wake the
//! credential).

use std::collections::{BTreeMap, BTreeSet};

use crds::v1alpha1::{RegistryCredential, RemoteCluster, SyncTarget, SyncTargetStatus, reasons};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt as _};

use std::time::Duration;

use super::Context;
use super::clusters::{ClusterKey, LOCAL, TargetCluster};
use crate::resolve::Key;
use crate::secrets::{CredentialState, docker_config_json};
use crate::sync::{self, NamespaceView, Tenant};
use crate::{
    CONTENT_HASH_ANNOTATION, CREDENTIAL_UID_LABEL, DOCKER_CONFIG_JSON, FIELD_MANAGER, MANAGED_BY,
    REGION_LABEL, Result,
};

/// Annotation naming the credential (`namespace/name`) a Secret was written for.
pub const CREDENTIAL_ANNOTATION: &str = "registry.thalassa.cloud/credential";
/// Attempts of a read-merge-write of a ServiceAccount that keeps meeting newer versions.
const SERVICE_ACCOUNT_ATTEMPTS: usize = 5;

/// What syncing a credential came to.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One entry per target (and per remote cluster whose copies still wait for removal).
    pub targets: Vec<SyncTargetStatus>,
    /// A refusal for the `Ready` condition (`NotPermitted`, `SecretConflict`, `InvalidSpec`),
    /// naming the target and the namespace or object.
    pub refused: Option<(&'static str, String)>,
    /// A remote cluster that could not be synced, named, with why: `Degraded`.
    pub degraded: Option<String>,
}

/// The (namespace, Secret name) pairs some target wants in a cluster.
type Wanted = BTreeSet<(String, String)>;

/// Why a remote cluster cannot be used now.
enum Unavailable {
    /// The kubeconfig Secret is not the credential's own.
    NotPermitted(String),
    /// The kubeconfig is missing its key or is refused.
    Invalid(String),
    /// It does not answer, or its kubeconfig Secret is not there (yet).
    Unreachable(String),
}

/// Syncs every target of `c` with the current secret in `state`, and removes copies no
/// target wants.
pub async fn apply(
    c: &RegistryCredential,
    ctx: &Context,
    state: &CredentialState,
) -> Result<Outcome> {
    // Most credentials have no targets and never had one (their status lists none): nothing
    // to write or remove, and no cache to scan on every reconcile. (The copies of a target
    // removed from the spec are found through the status that listed it, and every copy is
    // removed when the credential is deleted, status or not.)
    let previous: &[SyncTargetStatus] = c.status.as_ref().map_or(&[], |s| &s.sync);
    if c.spec.sync.is_empty() && previous.is_empty() {
        return Ok(Outcome::default());
    }
    let own_namespace = c.metadata.namespace.clone().unwrap_or_default();
    let organisations = ctx.stores.organisations();
    let tenant = Tenant {
        namespace: &own_namespace,
        organisation: organisations.get(&own_namespace).map(String::as_str),
    };
    let content = Content::of(c, ctx, state);
    let mut outcome = Outcome::default();
    // The clusters to remove unwanted copies from, with every (namespace, Secret name) some
    // target wants there. A cluster that failed is left out: its copies stay until it answers.
    let local = ctx.local_cluster();
    let mut clusters: BTreeMap<Option<ClusterKey>, (TargetCluster, Wanted)> =
        BTreeMap::from([(None, (local.clone(), BTreeSet::new()))]);
    let mut failed: BTreeSet<ClusterKey> = BTreeSet::new();
    for target in &c.spec.sync {
        let secret_name = target
            .secret_name
            .clone()
            .unwrap_or_else(|| c.secret_name().to_owned());
        let mut status = SyncTargetStatus {
            cluster: target
                .cluster
                .as_ref()
                .map_or(LOCAL.to_owned(), |r| r.name.clone()),
            secret_name: secret_name.clone(),
            kubeconfig_secret: target.cluster.as_ref().map(|r| r.kubeconfig_secret.clone()),
            ..SyncTargetStatus::default()
        };
        let cluster = match &target.cluster {
            None => local.clone(),
            Some(remote) => match connect(c, ctx, remote, false).await? {
                Ok(cluster) => cluster,
                Err(unavailable) => {
                    if let Some(remote) = &target.cluster {
                        failed.insert(ClusterKey::of(&own_namespace, &remote.kubeconfig_secret));
                    }
                    unavailable.report(&mut status, &mut outcome);
                    outcome.targets.push(status);
                    continue;
                }
            },
        };
        let key = cluster.key.clone();
        let wanted = &mut clusters
            .entry(key.clone())
            .or_insert_with(|| (cluster.clone(), BTreeSet::new()))
            .1;
        match sync_target(
            c,
            ctx,
            &cluster,
            target,
            tenant,
            &content,
            &mut status,
            wanted,
        )
        .await
        {
            Ok(Some(refusal)) => {
                outcome.refused.get_or_insert(refusal);
            }
            Ok(None) => {}
            Err(e) if key.is_some() => {
                Unavailable::Unreachable(format!(
                    "remote cluster {:?} did not accept the writes: {}",
                    cluster.name,
                    describe(&e)
                ))
                .report(&mut status, &mut outcome);
                failed.extend(key);
            }
            Err(e) => return Err(e),
        }
        outcome.targets.push(status);
    }
    // Remote clusters only the status remembers (their targets left the spec): every copy
    // there goes.
    let in_spec: BTreeSet<ClusterKey> = c
        .spec
        .sync
        .iter()
        .filter_map(|t| t.cluster.as_ref())
        .map(|r| ClusterKey::of(&own_namespace, &r.kubeconfig_secret))
        .collect();
    for entry in previous {
        let Some(reference) = &entry.kubeconfig_secret else {
            continue;
        };
        let key = ClusterKey::of(&own_namespace, reference);
        if in_spec.contains(&key) || clusters.contains_key(&Some(key.clone())) {
            continue;
        }
        let remote = RemoteCluster {
            name: entry.cluster.clone(),
            kubeconfig_secret: reference.clone(),
        };
        match connect(c, ctx, &remote, true).await? {
            Ok(cluster) => {
                clusters.insert(Some(key), (cluster, BTreeSet::new()));
            }
            Err(unavailable) => {
                let mut status = removing(entry);
                if give_up(c, ctx, &remote, &unavailable).await {
                    continue;
                }
                unavailable.report(&mut status, &mut outcome);
                outcome.targets.push(status);
            }
        }
    }
    for (key, (cluster, wanted)) in &clusters {
        if key.as_ref().is_some_and(|k| failed.contains(k)) {
            continue;
        }
        match remove_unwanted(c, cluster, wanted).await {
            Ok(()) => {}
            Err(e) if key.is_some() => {
                let message = format!(
                    "remote cluster {:?}: copies not removed yet: {}",
                    cluster.name,
                    describe(&e)
                );
                if !outcome.targets.iter().any(|t| t.cluster == cluster.name)
                    && let Some(entry) = previous.iter().find(|t| t.cluster == cluster.name)
                {
                    outcome.targets.push(removing(entry));
                }
                outcome.degraded.get_or_insert(message);
            }
            Err(e) => return Err(e),
        }
    }
    outcome.targets.truncate(crds::v1alpha1::MAX_SYNC_TARGETS);
    Ok(outcome)
}

/// The status entry of a remote cluster whose copies wait for removal.
fn removing(entry: &SyncTargetStatus) -> SyncTargetStatus {
    SyncTargetStatus {
        cluster: entry.cluster.clone(),
        secret_name: entry.secret_name.clone(),
        namespaces: 0,
        synced: 0,
        state: "Unreachable".into(),
        message: Some(format!(
            "remote cluster {:?} no longer a target: removing its copies",
            entry.cluster
        )),
        kubeconfig_secret: entry.kubeconfig_secret.clone(),
    }
}

impl Unavailable {
    /// Puts it into the target's status and the outcome.
    fn report(self, status: &mut SyncTargetStatus, outcome: &mut Outcome) {
        let (state, message) = match self {
            Self::NotPermitted(message) => {
                outcome
                    .refused
                    .get_or_insert((reasons::NOT_PERMITTED, message.clone()));
                ("NotPermitted", message)
            }
            Self::Invalid(message) => {
                outcome
                    .refused
                    .get_or_insert((reasons::INVALID_SPEC, message.clone()));
                ("Invalid", message)
            }
            Self::Unreachable(message) => {
                outcome.degraded.get_or_insert(message.clone());
                ("Unreachable", message)
            }
        };
        status.state = state.into();
        status.message = Some(message);
    }

    fn message(&self) -> &str {
        match self {
            Self::NotPermitted(m) | Self::Invalid(m) | Self::Unreachable(m) => m,
        }
    }
}

/// A short description of a failed write to a remote cluster.
fn describe(error: &crate::Error) -> String {
    match error {
        crate::Error::Kube(kube::Error::Api(status)) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    }
}

/// How long a reconcile waits for a remote cluster's first lists.
const FIRST_LIST: Duration = Duration::from_secs(3);

/// The remote cluster of a target, connected through its kubeconfig Secret. With
/// `for_removal`, the client last used is taken when the Secret is gone.
async fn connect(
    c: &RegistryCredential,
    ctx: &Context,
    remote: &RemoteCluster,
    for_removal: bool,
) -> Result<Result<TargetCluster, Unavailable>> {
    let own_namespace = c.metadata.namespace.as_deref().unwrap_or_default();
    let reference = &remote.kubeconfig_secret;
    let namespace = reference.namespace.as_deref().unwrap_or(own_namespace);
    if namespace != own_namespace {
        return Ok(Err(Unavailable::NotPermitted(format!(
            "sync target {:?}: the kubeconfig Secret {namespace}/{} is not in the credential's \
             namespace {own_namespace:?}; only a kubeconfig of the credential's own namespace \
             may be used",
            remote.name, reference.name
        ))));
    }
    let key = ClusterKey::of(own_namespace, reference);
    // From the cache of a cluster connected before, else from the API.
    let kubeconfig = match ctx.remotes.cached_kubeconfig(&key).await {
        Some(cached) => cached,
        None => Api::<Secret>::namespaced(ctx.client.clone(), own_namespace)
            .get_opt(&reference.name)
            .await?
            .and_then(|secret| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&reference.key))
                    .map(|b| b.0.clone())
            }),
    };
    let remote_cluster = match kubeconfig {
        Some(bytes) => match ctx.remotes.connect(&key, &remote.name, &bytes).await {
            Ok(cluster) => cluster,
            Err(e) => {
                return Ok(Err(Unavailable::Invalid(format!(
                    "sync target {:?}: kubeconfig Secret {own_namespace}/{}: {e}",
                    remote.name, reference.name
                ))));
            }
        },
        None => match ctx.remotes.last(&key).await {
            Some(last) if for_removal => last,
            _ => {
                return Ok(Err(Unavailable::Unreachable(format!(
                    "sync target {:?}: kubeconfig Secret {own_namespace}/{} does not exist or \
                     has no key {:?}",
                    remote.name, reference.name, reference.key
                ))));
            }
        },
    };
    if !remote_cluster.ready(FIRST_LIST).await {
        let why = remote_cluster
            .failing()
            .map_or_else(|| format!("no answer within {FIRST_LIST:?}"), |(e, _)| e);
        return Ok(Err(Unavailable::Unreachable(format!(
            "remote cluster {:?} is unreachable: {why}",
            remote.name
        ))));
    }
    let mut cluster = remote_cluster.cluster.clone();
    cluster.name = remote.name.clone();
    Ok(Ok(cluster))
}

/// Whether the copies in an unavailable remote cluster are given up (an Event says so): when
/// its watches have failed for longer than the settings' `remoteGiveUp`, or when nothing can
/// reach it any more (no kubeconfig Secret, and no client from before).
async fn give_up(
    c: &RegistryCredential,
    ctx: &Context,
    remote: &RemoteCluster,
    unavailable: &Unavailable,
) -> bool {
    let key = ClusterKey::of(
        c.metadata.namespace.as_deref().unwrap_or_default(),
        &remote.kubeconfig_secret,
    );
    let limit = ctx.settings.remote_give_up.0;
    let given_up = match ctx.remotes.last(&key).await {
        Some(last) => last.failing().is_some_and(|(_, since)| since >= limit),
        None => true,
    };
    if given_up {
        let note = format!(
            "gave up removing the copies in remote cluster {:?}: {}",
            remote.name,
            unavailable.message()
        );
        tracing::warn!(credential = %Key::of(c), cluster = %remote.name, "{note}");
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: reasons::GAVE_UP.into(),
            note: Some(note),
            action: "RemoveCopies".into(),
            secondary: None,
        };
        if let Err(error) = ctx
            .recorder
            .publish(&event, &kube::Resource::object_ref(c, &()))
            .await
        {
            tracing::warn!(%error, "could not publish an Event");
        }
    }
    given_up
}

/// Syncs one target in its cluster; returns a refusal for the `Ready` condition, if any.
#[allow(clippy::too_many_arguments)]
async fn sync_target(
    c: &RegistryCredential,
    ctx: &Context,
    cluster: &TargetCluster,
    target: &SyncTarget,
    tenant: Tenant<'_>,
    content: &Content,
    status: &mut SyncTargetStatus,
    wanted: &mut BTreeSet<(String, String)>,
) -> Result<Option<(&'static str, String)>> {
    let name = &cluster.name;
    let secret_name = status.secret_name.clone();
    let namespaces: Vec<std::sync::Arc<Namespace>> = cluster
        .namespaces
        .state()
        .into_iter()
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .collect();
    let empty = BTreeMap::new();
    let views = namespaces.iter().map(|ns| NamespaceView {
        name: ns.metadata.name.as_deref().unwrap_or_default(),
        labels: ns.metadata.labels.as_ref().unwrap_or(&empty),
    });
    let selection = match sync::select(target, tenant, cluster.reach(), views) {
        Ok(selection) => selection,
        Err(e) => {
            let message = format!("sync target {name:?}: {e}");
            status.state = "Invalid".into();
            status.message = Some(message.clone());
            return Ok(Some((reasons::INVALID_SPEC, message)));
        }
    };
    status.namespaces = i32::try_from(selection.permitted.len()).unwrap_or(i32::MAX);
    let mut conflicts = Vec::new();
    for namespace in &selection.permitted {
        wanted.insert((namespace.clone(), secret_name.clone()));
        match write_copy(c, ctx, cluster, namespace, &secret_name, content).await? {
            Written::Ok => {
                merge_service_accounts(cluster, target, namespace, &secret_name).await?;
                status.synced += 1;
            }
            Written::Conflict(why) => conflicts.push(why),
        }
    }
    if !selection.not_permitted.is_empty() {
        let (namespace, why) = &selection.not_permitted[0];
        let more = selection.not_permitted.len() - 1;
        let message = format!(
            "sync target {name:?}: nothing written to namespace {namespace:?}: {why}{}",
            if more > 0 {
                format!(" (and {more} more namespaces)")
            } else {
                String::new()
            }
        );
        status.state = "NotPermitted".into();
        status.message = Some(message.clone());
        return Ok(Some((reasons::NOT_PERMITTED, message)));
    }
    if let Some(why) = conflicts.first() {
        let message = format!("sync target {name:?}: {why}");
        status.state = "Conflict".into();
        status.message = Some(message.clone());
        return Ok(Some((reasons::SECRET_CONFLICT, message)));
    }
    if !selection.missing.is_empty() {
        status.state = "Progressing".into();
        status.message = Some(format!(
            "namespace {:?} does not exist (yet)",
            selection.missing[0]
        ));
    } else {
        status.state = "Synced".into();
        if let Some(first) = selection.skipped.first() {
            status.message = Some(format!(
                "{} matching namespaces of the organisation do not accept synced pull \
                 Secrets (label {} = {}), for example {first:?}",
                selection.skipped.len(),
                crds::v1alpha1::PULL_SECRETS_LABEL,
                sync::ACCEPT
            ));
        }
    }
    Ok(None)
}

/// Removes every copy of `c` and every `imagePullSecrets` entry it added, in every cluster
/// (the credential is going away). Its own delivered Secret is left to the credential's
/// cleanup. A remote cluster that does not answer is retried (an error) until it has failed
/// for the settings' `remoteGiveUp`, then given up with an Event.
pub async fn cleanup(c: &RegistryCredential, ctx: &Context) -> Result<()> {
    remove_unwanted(c, &ctx.local_cluster(), &BTreeSet::new()).await?;
    let remotes = remote_clusters(c);
    for remote in remotes.values() {
        let unavailable = match connect(c, ctx, remote, true).await? {
            Ok(cluster) => match remove_unwanted(c, &cluster, &BTreeSet::new()).await {
                Ok(()) => continue,
                Err(e) => Unavailable::Unreachable(describe(&e)),
            },
            // Never connected through a kubeconfig of another namespace: nothing was written.
            Err(Unavailable::NotPermitted(_)) => continue,
            Err(unavailable) => unavailable,
        };
        if !give_up(c, ctx, remote, &unavailable).await {
            return Err(crate::Error::Remote {
                cluster: remote.name.clone(),
                message: unavailable.message().to_owned(),
            });
        }
    }
    Ok(())
}

/// Every remote cluster `c` syncs into or may still have copies in: those of its spec's
/// targets, then those only its status remembers (targets that left the spec), once each by
/// kubeconfig Secret.
pub fn remote_clusters(c: &RegistryCredential) -> BTreeMap<ClusterKey, RemoteCluster> {
    let own_namespace = c.metadata.namespace.as_deref().unwrap_or_default();
    let mut remotes = BTreeMap::new();
    for remote in c.spec.sync.iter().filter_map(|t| t.cluster.as_ref()) {
        remotes
            .entry(ClusterKey::of(own_namespace, &remote.kubeconfig_secret))
            .or_insert_with(|| remote.clone());
    }
    for entry in c.status.iter().flat_map(|s| &s.sync) {
        if let Some(reference) = &entry.kubeconfig_secret {
            remotes
                .entry(ClusterKey::of(own_namespace, reference))
                .or_insert_with(|| RemoteCluster {
                    name: entry.cluster.clone(),
                    kubeconfig_secret: reference.clone(),
                });
        }
    }
    remotes
}

/// What every copy of a credential's Secret holds, and the hash that says so.
struct Content {
    data: BTreeMap<String, ByteString>,
    hash: String,
}

impl Content {
    fn of(c: &RegistryCredential, ctx: &Context, state: &CredentialState) -> Self {
        let host = &ctx.settings.registry_host;
        let username = c.username();
        let hash = super::credential::content_hash(host, &username, &state.secret);
        let data = BTreeMap::from([(
            ".dockerconfigjson".to_owned(),
            ByteString(docker_config_json(host, &username, &state.secret).into_bytes()),
        )]);
        Self { data, hash }
    }
}

enum Written {
    Ok,
    /// A Secret of that name exists and is not a copy of this credential.
    Conflict(String),
}

/// Whether `secret` is the credential's own delivered Secret (written by the credential
/// controller, with an owner reference).
fn is_delivered(c: &RegistryCredential, namespace: &str, secret: &str) -> bool {
    c.metadata.namespace.as_deref() == Some(namespace) && c.secret_name() == secret
}

fn uid(c: &RegistryCredential) -> &str {
    c.metadata.uid.as_deref().unwrap_or_default()
}

/// Writes the copy in `namespace`, unless it is current already or the name is taken.
async fn write_copy(
    c: &RegistryCredential,
    ctx: &Context,
    cluster: &TargetCluster,
    namespace: &str,
    name: &str,
    content: &Content,
) -> Result<Written> {
    if cluster.key.is_none() && is_delivered(c, namespace, name) {
        // The credential's own Secret, written by its controller.
        return Ok(Written::Ok);
    }
    let ours = |s: &Secret| {
        s.labels().get(CREDENTIAL_UID_LABEL).map(String::as_str) == Some(uid(c))
            && s.type_.as_deref() == Some(DOCKER_CONFIG_JSON)
    };
    let cached = cluster.copies.get(&ObjectRef::new(name).within(namespace));
    if let Some(cached) = &cached
        && ours(cached)
        && cached.annotations().get(CONTENT_HASH_ANNOTATION) == Some(&content.hash)
        && cached.data.as_ref() == Some(&content.data)
    {
        return Ok(Written::Ok);
    }
    let api = Api::<Secret>::namespaced(cluster.client.clone(), namespace);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    MANAGED_BY.to_owned(),
                ),
                (REGION_LABEL.to_owned(), ctx.settings.region.clone()),
                (CREDENTIAL_UID_LABEL.to_owned(), uid(c).to_owned()),
            ])),
            annotations: Some(BTreeMap::from([
                (CONTENT_HASH_ANNOTATION.to_owned(), content.hash.clone()),
                (CREDENTIAL_ANNOTATION.to_owned(), Key::of(c).to_string()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some(DOCKER_CONFIG_JSON.into()),
        data: Some(content.data.clone()),
        ..Secret::default()
    };
    // Not cached as ours (the cache holds only the operator's Secrets): created, and a Secret
    // of that name is looked at only when there is one, so a new copy costs one request.
    if cached.is_none_or(|s| !ours(&s)) {
        let create = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match api.create(&create, &secret).await {
            Ok(_) => return Ok(Written::Ok),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(existing) = api.get_opt(name).await?
            && !ours(&existing)
        {
            return Ok(Written::Conflict(format!(
                "Secret {namespace}/{name} exists and is not a copy of this credential (type \
                 {:?}); the operator does not take it over: delete it or set the target's \
                 secretName",
                existing.type_.as_deref().unwrap_or("Opaque")
            )));
        }
    }
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await?;
    Ok(Written::Ok)
}

/// Adds `secret` to the `imagePullSecrets` of the ServiceAccounts of `namespace` the target
/// wants, keeping every other entry.
async fn merge_service_accounts(
    cluster: &TargetCluster,
    target: &SyncTarget,
    namespace: &str,
    secret: &str,
) -> Result<()> {
    if target.service_accounts.is_empty() {
        return Ok(());
    }
    let accounts: Vec<_> = cluster
        .service_accounts
        .state()
        .into_iter()
        .filter(|sa| sa.metadata.namespace.as_deref() == Some(namespace))
        .filter(|sa| sync::wants_service_account(target, &sa.name_any()))
        .collect();
    for sa in accounts {
        if sync::with_pull_secret(&sa, secret).is_some() {
            update_service_account(cluster, namespace, &sa.name_any(), |sa| {
                sync::with_pull_secret(sa, secret)
            })
            .await?;
        }
    }
    Ok(())
}

/// Read, change, write with the `resourceVersion` read; again on a conflict (409).
async fn update_service_account(
    cluster: &TargetCluster,
    namespace: &str,
    name: &str,
    change: impl Fn(&ServiceAccount) -> Option<ServiceAccount>,
) -> Result<()> {
    let api = Api::<ServiceAccount>::namespaced(cluster.client.clone(), namespace);
    for attempt in 1..=SERVICE_ACCOUNT_ATTEMPTS {
        let Some(current) = api.get_opt(name).await? else {
            return Ok(());
        };
        let Some(next) = change(&current) else {
            return Ok(());
        };
        // `next` carries the resourceVersion read: a concurrent write makes this a 409.
        match api.replace(name, &PostParams::default(), &next).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < SERVICE_ACCOUNT_ATTEMPTS => {
                tracing::debug!(%namespace, %name, "ServiceAccount changed meanwhile; merging again");
            }
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Deletes the copies of `c` in `cluster` that are not in `wanted`, and takes their entries
/// out of the ServiceAccounts of those namespaces.
async fn remove_unwanted(
    c: &RegistryCredential,
    cluster: &TargetCluster,
    wanted: &BTreeSet<(String, String)>,
) -> Result<()> {
    let copies: Vec<(String, String)> = cluster
        .copies
        .state()
        .iter()
        // Copies and the delivered Secret; the credential's state (Opaque, in the operator's
        // namespace) carries the same label and is never one of them.
        .filter(|s| s.labels().get(CREDENTIAL_UID_LABEL).map(String::as_str) == Some(uid(c)))
        .filter(|s| s.type_.as_deref() == Some(DOCKER_CONFIG_JSON))
        .filter_map(|s| Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?)))
        .filter(|(ns, name)| !wanted.contains(&(ns.clone(), name.clone())))
        .collect();
    for (namespace, name) in copies {
        // The credential's own Secret stays (its controller owns it); only the entries a
        // target added for it go.
        let accounts: Vec<_> = cluster
            .service_accounts
            .state()
            .into_iter()
            .filter(|sa| sa.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .filter(|sa| sync::added_by_us(sa).contains(&name))
            .collect();
        for sa in accounts {
            update_service_account(cluster, &namespace, &sa.name_any(), |sa| {
                sync::without_pull_secret(sa, &name)
            })
            .await?;
        }
        if cluster.key.is_none() && is_delivered(c, &namespace, &name) {
            continue;
        }
        let api = Api::<Secret>::namespaced(cluster.client.clone(), &namespace);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(credential = %Key::of(c), cluster = %cluster.name, %namespace, secret = %name, "copy removed")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
