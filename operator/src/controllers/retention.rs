//! The `RetentionPolicy` controller.
//!
//! A policy of this region is checked (rules, schedule, and registry namespaces of its own
//! Kubernetes namespace only: a policy never reaches another project's images), then planned
//! by the data plane over the repositories' present state and the images Pods run
//! ([`super::in_use`]). The plan (counts, bytes, the first items with their reasons, what was
//! spared and why) is written to status with the time of the next run, and an Event says it
//! when it changes. At each scheduled time, unless `dryRun`, the data plane runs the plan it
//! kept: it re-plans and deletes only what both plans agree on. The plan is refreshed when the
//! policy or the running images change, after a run, and every [`PLAN_REFRESH`].

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash as _, Hasher as _};
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crds::retention::{PlanSummary, RetentionRequest, RetentionScope};
use crds::v1alpha1::{RetentionPolicy, RetentionPolicyStatus, RetentionRun, reasons};
use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{Timestamp, tz::TimeZone};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource as _};
use tokio_stream::wrappers::WatchStream;
use tracing::Instrument as _;

use super::clusters::{ClusterKey, LOCAL};
use super::in_use::PodImages;
use super::status::{Phase, apply_status, now, ready_reason, same_conditions};
use super::{Context, backoff};
use crate::dataplane::{RetentionAnswer, RetentionCall};
use crate::keys::{KEYS_DATA_KEY, KeyRing};
use crate::resolve::{Key, Verdict};
use crate::{Error, Result};

const CONTROLLER: &str = "retention";
/// How long the controller waits at start for the first list of this cluster's Pods.
const LOCAL_PODS_WAIT: Duration = Duration::from_secs(30);
/// How often a plan is refreshed while nothing it depends on changes.
pub const PLAN_REFRESH: Duration = Duration::from_secs(300);
/// How soon a policy waiting for something that may appear (a registry namespace, the
/// region's keys, the data plane) is looked at again.
const RETRY: Duration = Duration::from_secs(15);

/// The last plan made of each policy: what it was made from, and when.
#[derive(Debug, Default)]
pub struct Plans {
    made: Mutex<HashMap<ObjectRef<RetentionPolicy>, MadePlan>>,
}

#[derive(Debug, Clone, Copy)]
struct MadePlan {
    /// Fingerprint of the rules and repositories (what the data plane keeps the plan for).
    policy: u64,
    /// Fingerprint of the images in use.
    in_use: u64,
    at: Instant,
}

impl Plans {
    fn get(&self, policy: &RetentionPolicy) -> Option<MadePlan> {
        self.lock().get(&ObjectRef::from_obj(policy)).copied()
    }

    fn set(&self, policy: &RetentionPolicy, made: MadePlan) {
        self.lock().insert(ObjectRef::from_obj(policy), made);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<RetentionPolicy>, MadePlan>> {
        self.made.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the controller until `shutdown`.
pub async fn controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // What this cluster's Pods run is known within a moment of the start; waiting for it
    // spares every policy a Degraded flicker. A cluster whose Pods cannot be listed shows up
    // as Degraded policies after this wait instead.
    let shutdown = futures::FutureExt::shared(shutdown);
    let mut local = ctx.in_use.clone();
    tokio::select! {
        _ = tokio::time::timeout(LOCAL_PODS_WAIT, local.wait_for(Option::is_some)) => {}
        () = shutdown.clone() => return,
    }
    let api = Api::<RetentionPolicy>::all(ctx.client.clone());
    // Running images (here and in remote clusters) and namespace decisions change plans:
    // every policy is looked at again.
    let woken = futures::stream::select_all([
        WatchStream::from_changes(ctx.in_use.clone())
            .map(|_| ())
            .boxed(),
        WatchStream::from_changes(ctx.remotes.pods_changed())
            .map(|_| ())
            .boxed(),
        WatchStream::from_changes(ctx.decisions.clone())
            .map(|_| ())
            .boxed(),
    ]);
    Controller::new(api, watcher::Config::default().any_semantic())
        .reconcile_all_on(woken)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::clone(&ctx))
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn reconcile(policy: Arc<RetentionPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let key = Key::of(policy.as_ref());
    if policy.spec.region != ctx.settings.region || policy.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let span = tracing::info_span!("reconcile", kind = "RetentionPolicy", object = %key);
    let result = apply(&policy, &ctx).instrument(span).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    result
}

fn error_policy(policy: Arc<RetentionPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error);
    tracing::warn!(object = %Key::of(policy.as_ref()), %error, "reconcile failed");
    if error.is_transient() {
        Action::requeue(backoff(2))
    } else {
        Action::requeue(Duration::from_secs(300))
    }
}

/// What a reconcile decided, before it is written.
struct Outcome {
    phase: Phase,
    plan: Option<(PlanSummary, Time)>,
    last_run: Option<RetentionRun>,
    next_run: Option<Time>,
    requeue: Duration,
}

fn refused(reason: &'static str, message: String, stalled: bool) -> Phase {
    Phase::Refused(Verdict::Refused {
        reason,
        message,
        stalled,
    })
}

async fn apply(policy: &RetentionPolicy, ctx: &Context) -> Result<Action> {
    let previous = policy.status.clone().unwrap_or_default();
    let outcome = match decide(policy, ctx, &previous).await {
        Ok(outcome) => outcome,
        Err(Error::DataPlane(message)) => Outcome {
            phase: refused(
                reasons::DEGRADED,
                format!("the data plane cannot plan or run the policy: {message}"),
                false,
            ),
            plan: None,
            last_run: None,
            next_run: None,
            requeue: RETRY,
        },
        Err(other) => return Err(other),
    };
    write_status(policy, ctx, &previous, &outcome).await?;
    Ok(Action::requeue(outcome.requeue))
}

/// Checks the policy, runs it when due, and plans it.
async fn decide(
    policy: &RetentionPolicy,
    ctx: &Context,
    previous: &RetentionPolicyStatus,
) -> Result<Outcome> {
    let key = Key::of(policy);
    let waiting = |phase| Outcome {
        phase,
        plan: None,
        last_run: None,
        next_run: None,
        requeue: RETRY,
    };
    let rules = match policy.spec.resolve() {
        Ok(rules) => rules,
        Err(problems) => {
            let text: Vec<String> = problems
                .iter()
                .map(|(field, message)| format!("spec.{field}: {message}"))
                .collect();
            return Ok(waiting(refused(
                reasons::INVALID_SPEC,
                text.join("; "),
                true,
            )));
        }
    };
    let schedule = match croner::Cron::from_str(&policy.spec.schedule) {
        Ok(schedule) => schedule,
        Err(e) => {
            let message = format!("spec.schedule {:?}: {e}", policy.spec.schedule);
            return Ok(waiting(refused(reasons::INVALID_SPEC, message, true)));
        }
    };
    let index = ctx.stores.namespace_index(&ctx.settings);
    for name in &policy.spec.namespaces {
        // The same answer whether the namespace exists elsewhere or not at all.
        if index
            .served()
            .get(name)
            .is_none_or(|s| s.key.namespace != key.namespace)
        {
            let message = format!(
                "registry namespace {name:?} is not served by a RegistryNamespace of region {:?} \
                 in Kubernetes namespace {:?}",
                ctx.settings.region, key.namespace
            );
            return Ok(waiting(refused(
                reasons::NAMESPACE_NOT_FOUND,
                message,
                false,
            )));
        }
    }
    let Some(signing_key) = active_key(ctx) else {
        return Ok(waiting(Phase::Converging(
            "waiting for the region's token keys".into(),
        )));
    };
    let in_use = images_in_use(&key.namespace, ctx).await;
    let request = RetentionRequest {
        policy: format!("{}/{}", key.namespace, key.name),
        scope: RetentionScope {
            namespaces: policy.spec.namespaces.clone(),
            repositories: policy.spec.repositories.clone(),
        },
        rules,
        in_use: in_use.digests.iter().cloned().collect(),
    };
    let fingerprint = MadePlan {
        policy: fingerprint(&(&request.policy, &request.scope, &request.rules)),
        in_use: fingerprint(&in_use.digests),
        at: Instant::now(),
    };
    let now_ts = Timestamp::now();
    let token = ctx.dataplane.token(&signing_key, now_ts, "retention")?;
    let due = previous
        .next_run
        .as_ref()
        .is_some_and(|next| next.0 <= now_ts);
    let made = ctx.plans.get(policy);
    let plan_kept = made.is_some_and(|m| m.policy == fingerprint.policy);

    // A run needs to know every image in use: while a cluster's Pods are unknown, it waits.
    let blind = (!in_use.unknown.is_empty()).then(|| {
        format!(
            "the images Pods run in {} are unknown (their Pods cannot be listed yet)",
            in_use.unknown.join(", ")
        )
    });
    let mut last_run = previous.last_run.clone();
    let mut ran = false;
    if let Some(blind) = &blind
        && due
        && !policy.spec.dry_run
    {
        let note = format!("{blind}; the run waits until they are known");
        event(ctx, policy, EventType::Warning, "RunSkipped", note).await;
    }
    if due && !policy.spec.dry_run && plan_kept && blind.is_none() {
        match ctx
            .dataplane
            .retention(RetentionCall::Run, &token, &request)
            .await?
        {
            RetentionAnswer::Done(answer) => {
                let deleted = &answer.summary;
                let note = format!(
                    "deleted {} tags and {} manifests ({} bytes no longer referenced){}",
                    deleted.tags,
                    deleted.manifests,
                    deleted.bytes,
                    skipped_note(&answer.skipped)
                );
                tracing::info!(policy = %key, %note, "retention ran");
                event(ctx, policy, EventType::Normal, "Deleted", note).await;
                last_run = Some(RetentionRun {
                    time: Time(now_ts),
                    deleted: answer.summary,
                });
                ran = true;
            }
            RetentionAnswer::Refused(message) => {
                // The kept plan is gone or stale: plan now, run at the next time.
                event(ctx, policy, EventType::Warning, "RunSkipped", message).await;
            }
        }
    }

    let fresh_enough = made.is_some_and(|m| {
        m.policy == fingerprint.policy
            && m.in_use == fingerprint.in_use
            && m.at.elapsed() < PLAN_REFRESH
    });
    let mut plan = previous.plan.clone().zip(previous.planned_at.clone());
    if ran || !fresh_enough || plan.is_none() {
        match ctx
            .dataplane
            .retention(RetentionCall::Plan, &token, &request)
            .await?
        {
            RetentionAnswer::Done(answer) => {
                ctx.plans.set(policy, fingerprint);
                let changed = previous.plan.as_ref() != Some(&answer.summary);
                if changed {
                    let note = plan_note(&answer.summary, &answer.skipped, policy.spec.dry_run);
                    event(ctx, policy, EventType::Normal, "Planned", note).await;
                }
                plan = Some((answer.summary, Time(now_ts)));
            }
            RetentionAnswer::Refused(message) => {
                return Ok(waiting(refused(reasons::INVALID_SPEC, message, true)));
            }
        }
    }

    // The next run: kept while it is ahead, else the schedule's next time after now. A due
    // run that could not happen yet (no plan was kept) is tried again right after planning.
    let next_run = match &previous.next_run {
        Some(next)
            if next.0 > now_ts && previous.observed_generation == policy.metadata.generation =>
        {
            next.0
        }
        Some(next) if due && !ran && !policy.spec.dry_run && (!plan_kept || blind.is_some()) => {
            next.0
        }
        _ => next_after(&schedule, now_ts)?,
    };
    let until_next = Duration::try_from(next_run.duration_since(now_ts)).unwrap_or_default();
    let requeue = until_next.clamp(Duration::from_secs(1), PLAN_REFRESH);
    let summary = plan.as_ref().map(|(p, _)| p.clone()).unwrap_or_default();
    let message = if policy.spec.dry_run {
        format!(
            "dry run: a run at {next_run} would delete {} tags and {} manifests{}",
            summary.tags,
            summary.manifests,
            spared_note(&summary)
        )
    } else {
        format!(
            "the run at {next_run} deletes {} tags and {} manifests{}",
            summary.tags,
            summary.manifests,
            spared_note(&summary)
        )
    };
    let (phase, requeue) = match blind {
        None => (Phase::Ready(message), requeue),
        Some(blind) => (
            refused(
                reasons::DEGRADED,
                format!("{blind}: runs wait until they are known; {message}"),
                false,
            ),
            requeue.min(RETRY),
        ),
    };
    Ok(Outcome {
        phase,
        plan,
        last_run,
        next_run: Some(Time(next_run)),
        requeue,
    })
}

/// The images Pods run in the clusters of a policy's tenant, and the clusters where that is
/// unknown.
struct InUse {
    digests: BTreeSet<String>,
    /// Names of the clusters whose Pods cannot be seen (yet).
    unknown: Vec<String>,
}

/// The images Pods run in this cluster and in every remote cluster that credentials of
/// Kubernetes namespace `namespace` sync to (through its kubeconfig Secrets: a tenant's
/// clusters protect the tenant's images, and tell nothing to another tenant's policies).
async fn images_in_use(namespace: &str, ctx: &Context) -> InUse {
    let mut in_use = InUse {
        digests: BTreeSet::new(),
        unknown: Vec::new(),
    };
    let mut add = |name: &str, images: PodImages| match images {
        Some(digests) => in_use.digests.extend(digests.iter().cloned()),
        None => in_use.unknown.push(format!("cluster {name:?}")),
    };
    add(LOCAL, ctx.in_use.borrow().clone());
    let mut remotes = BTreeMap::new();
    for credential in ctx.stores.credentials.state() {
        if credential.metadata.namespace.as_deref() != Some(namespace)
            || credential.spec.region != ctx.settings.region
        {
            continue;
        }
        for remote in credential
            .spec
            .sync
            .iter()
            .filter_map(|t| t.cluster.as_ref())
        {
            // A kubeconfig of another namespace is refused: nothing is synced through it.
            let reference = &remote.kubeconfig_secret;
            if reference
                .namespace
                .as_deref()
                .is_none_or(|n| n == namespace)
            {
                remotes
                    .entry(ClusterKey::of(namespace, reference))
                    .or_insert_with(|| remote.name.clone());
            }
        }
    }
    for (key, name) in remotes {
        let images = match ctx.remotes.last(&key).await {
            Some(remote) => remote.pods.borrow().clone(),
            None => None,
        };
        add(&name, images);
    }
    in_use
}

/// The region's signing key, from the keys Secret the renderer keeps.
pub(super) fn active_key(ctx: &Context) -> Option<crds::config::SigningKey> {
    let name = format!("{}-keys", ctx.settings.config_secret);
    let secret = ctx.stores.own_secret(&ctx.settings.namespace, &name)?;
    let bytes = secret.data.as_ref()?.get(KEYS_DATA_KEY)?;
    let ring = KeyRing::from_yaml(&String::from_utf8_lossy(&bytes.0)).ok()?;
    let tokens = ring.tokens_config(Timestamp::now(), ctx.settings.tokens.ttl.0);
    let active = tokens.active?;
    tokens.keys.into_iter().find(|k| k.id == active)
}

/// The schedule's first time after `now` (UTC).
fn next_after(schedule: &croner::Cron, now: Timestamp) -> Result<Timestamp> {
    let zoned = now.to_zoned(TimeZone::UTC);
    schedule
        .find_next_occurrence(&zoned, false)
        .map(|z| z.timestamp())
        .map_err(|e| Error::DataPlane(format!("the schedule has no next time: {e}")))
}

fn fingerprint<T: serde::Serialize + ?Sized>(value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    serde_json::to_string(value)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

fn spared_note(summary: &PlanSummary) -> String {
    if summary.spared.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = summary
        .spared
        .iter()
        .map(|s| format!("{} {:?}", s.count, s.reason))
        .collect();
    format!("; spared: {}", parts.join(", "))
}

fn skipped_note(skipped: &[String]) -> String {
    if skipped.is_empty() {
        String::new()
    } else {
        format!("; skipped: {}", skipped.join("; "))
    }
}

fn plan_note(summary: &PlanSummary, skipped: &[String], dry_run: bool) -> String {
    format!(
        "{} {} tags and {} manifests ({} bytes){}{}",
        if dry_run {
            "a run would delete"
        } else {
            "the next run deletes"
        },
        summary.tags,
        summary.manifests,
        summary.bytes,
        spared_note(summary),
        skipped_note(skipped)
    )
}

async fn event(
    ctx: &Context,
    policy: &RetentionPolicy,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Retention".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        tracing::warn!(%error, "could not publish an Event");
    }
}

async fn write_status(
    policy: &RetentionPolicy,
    ctx: &Context,
    previous: &RetentionPolicyStatus,
    outcome: &Outcome,
) -> Result<()> {
    let generation = policy.metadata.generation.unwrap_or_default();
    let (plan, planned_at) = match &outcome.plan {
        Some((plan, at)) => (Some(plan.clone()), Some(at.clone())),
        None => (previous.plan.clone(), previous.planned_at.clone()),
    };
    let status = RetentionPolicyStatus {
        conditions: outcome
            .phase
            .conditions(generation, &previous.conditions, &now()),
        observed_generation: Some(generation),
        next_run: outcome.next_run.clone().or(previous.next_run.clone()),
        planned_at,
        plan,
        last_run: outcome.last_run.clone().or(previous.last_run.clone()),
    };
    let unchanged = same_conditions(&status.conditions, &previous.conditions)
        && status.observed_generation == previous.observed_generation
        && status.next_run == previous.next_run
        && status.plan == previous.plan
        && status.last_run == previous.last_run;
    if unchanged {
        return Ok(());
    }
    let api = Api::<RetentionPolicy>::namespaced(
        ctx.client.clone(),
        policy.metadata.namespace.as_deref().unwrap_or_default(),
    );
    apply_status(&api, policy, &status).await?;
    if ready_reason(&previous.conditions) != Some(outcome.phase.reason())
        && let Phase::Refused(Verdict::Refused {
            reason, message, ..
        }) = &outcome.phase
    {
        event(ctx, policy, EventType::Warning, reason, message.clone()).await;
    }
    Ok(())
}
