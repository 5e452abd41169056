//! Conditions from verdicts, and writing them by server-side apply.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crds::v1alpha1::{Condition, ConditionStatus, reasons};

use super::Context;
use crate::resolve::Verdict;
use crate::{FIELD_MANAGER, Result};

/// Where an object stands, as the conditions will say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Served by the data plane.
    Ready(String),
    /// Accepted, not served yet (first pass, or waiting for the document to be written).
    Converging(String),
    /// Not served: see the verdict.
    Refused(Verdict),
}

impl Phase {
    /// The phase of an object the resolver refused, or that is served once `in_document`.
    pub fn of(verdict: Verdict, in_document: bool, served_message: String) -> Self {
        match verdict {
            Verdict::Served if in_document => Self::Ready(served_message),
            Verdict::Served => {
                Self::Converging("waiting for the configuration to be written".into())
            }
            refused => Self::Refused(refused),
        }
    }

    /// The `Ready` reason.
    pub fn reason(&self) -> &str {
        match self {
            Self::Ready(_) => reasons::READY,
            Self::Converging(_) => reasons::RECONCILING,
            Self::Refused(Verdict::Refused { reason, .. }) => reason,
            Self::Refused(Verdict::Served) => reasons::READY,
        }
    }

    /// kstatus conditions: `Ready`, plus `Reconciling` or `Stalled` when not ready.
    pub fn conditions(
        &self,
        generation: i64,
        previous: &[Condition],
        now: &Time,
    ) -> Vec<Condition> {
        let cond = |type_: &str, status, reason: &str, message: &str| {
            Condition::new(
                type_,
                status,
                reason,
                message,
                generation,
                previous,
                now.clone(),
            )
        };
        match self {
            Self::Ready(message) => vec![cond(
                "Ready",
                ConditionStatus::True,
                reasons::READY,
                message,
            )],
            Self::Converging(message) => vec![
                cond(
                    "Ready",
                    ConditionStatus::False,
                    reasons::RECONCILING,
                    message,
                ),
                cond(
                    "Reconciling",
                    ConditionStatus::True,
                    reasons::RECONCILING,
                    message,
                ),
            ],
            Self::Refused(Verdict::Refused {
                reason,
                message,
                stalled,
            }) => {
                let second = if *stalled { "Stalled" } else { "Reconciling" };
                vec![
                    cond("Ready", ConditionStatus::False, reason, message),
                    cond(second, ConditionStatus::True, reason, message),
                ]
            }
            Self::Refused(Verdict::Served) => Vec::new(),
        }
    }
}

/// Conditions with their transition times ignored, to tell whether a write is needed.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status,
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    a.len() == b.len() && a.iter().map(key).eq(b.iter().map(key))
}

/// Writes `status` of `obj` by server-side apply with the operator's field manager.
pub async fn apply_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Publishes an Event when the `Ready` reason changed (the recorder deduplicates repeats).
pub async fn event_on_change<K>(ctx: &Context, obj: &K, before: Option<&str>, phase: &Phase)
where
    K: Resource<DynamicType = ()>,
{
    let reason = phase.reason();
    if before == Some(reason) {
        return;
    }
    let (type_, note) = match phase {
        Phase::Ready(message) | Phase::Converging(message) => (EventType::Normal, message.clone()),
        Phase::Refused(Verdict::Refused { message, .. }) => (EventType::Warning, message.clone()),
        Phase::Refused(Verdict::Served) => return,
    };
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(%error, "could not publish an Event");
    }
}

/// Now, as a Kubernetes time.
pub fn now() -> Time {
    Time(Timestamp::now())
}

/// The `Ready` reason of existing conditions.
pub fn ready_reason(conditions: &[Condition]) -> Option<&str> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str())
}
