//! `RetentionPolicy`: which tags and manifests of registry namespaces are deleted, when, and
//! the plan that shows it before it happens.

// Repeated `printcolumn(type_ = ...)` and `validation` entries are distinct items of the
// kube derive, not duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::conditions::{Condition, conditions_schema};
use crate::retention::{KeepLast, PlanSummary};

/// Deletes old tags and artifacts of registry namespaces on a schedule, after showing what
/// goes.
///
/// Rules, in the order they are evaluated:
///
/// 1. Only tags matching `tags.include` (all when empty) are considered. Tags of signatures,
///    SBOMs and attestations are not: those go with the image they refer to.
/// 2. A considered tag is selected for deletion when any delete rule holds: it is beyond the
///    `count` most recently pushed tags of a `keepLast` pattern it matches, it was pushed
///    before `deleteOlderThan`, or it was neither pushed nor pulled within
///    `deleteNotPulledWithin`.
/// 3. Keep rules win: a tag matching `tags.protect`, a tag among the `count` most recent of any
///    `keepLast` pattern it matches (ties at the last place included), and a tag of an image
///    that a Pod of the region's cluster runs stay. Status counts what they spared, per reason.
/// 4. A manifest goes when all its tags go, or, untagged, when it was pushed before
///    `deleteUntaggedOlderThan`; never while still tagged, in use, or held by an index that
///    stays. Its signatures and SBOMs go with it. Layers no manifest references any more are
///    collected after the garbage-collection grace period.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "registry.thalassa.cloud",
    version = "v1alpha1",
    kind = "RetentionPolicy",
    namespaced,
    status = "RetentionPolicyStatus",
    shortname = "rpol",
    category = "registry",
    doc = "Deletes old tags and artifacts of registry namespaces on a schedule. The plan of the next run (counts, bytes, the first items and why) is in status before it happens; images that Pods run are never deleted.",
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Dry-Run", type_ = "boolean", json_path = ".spec.dryRun"),
    printcolumn(name = "Next-Run", type_ = "string", json_path = ".status.nextRun"),
    printcolumn(
        name = "Planned-Tags",
        type_ = "integer",
        json_path = ".status.plan.tags"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.rules.deleteOlderThan) || has(self.rules.deleteNotPulledWithin)) || (has(self.rules.keepLast) && size(self.rules.keepLast) > 0) || (has(self.tags) && has(self.tags.protect) && size(self.tags.protect) > 0)")
        .message("an age rule without a keep rule can delete every tag: add rules.keepLast (for example {tags: '*', count: 5}) or tags.protect"),
    validation = Rule::new("!(has(self.tags) && has(self.tags.protect) && self.tags.protect.exists(p, p.matches('^[*]+$'))) || !((has(self.rules.keepLast) && size(self.rules.keepLast) > 0) || has(self.rules.deleteOlderThan) || has(self.rules.deleteNotPulledWithin))")
        .message("tags.protect '*' protects every tag, so the tag rules can delete nothing: remove it or the tag rules"),
)]
pub struct RetentionPolicySpec {
    /// The region whose registry namespaces the policy applies to (for example `nl-01`).
    /// Cannot change.
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self) <= 63")
            .message("must be a region name: 1-63 lowercase letters, digits and '-' (for example nl-01)"),
        validation = Rule::new("self == oldSelf").message("spec.region cannot change: create a policy in the other region instead"),
    )]
    #[schemars(length(max = 63))]
    pub region: String,
    /// Registry namespace names (as in image references). Each must be a `RegistryNamespace`
    /// of the region in this Kubernetes namespace: a policy never reaches another project's.
    #[x_kube(validation = Rule::new("self.all(n, n.matches('^[a-z0-9]+((\\\\.|_|__|-+)[a-z0-9]+)*$') && size(n) <= 63)")
        .message("each entry must be a registry namespace name: 1-63 lowercase letters and digits separated by '.', '_', '__' or dashes"))]
    #[schemars(length(min = 1, max = 64), inner(length(max = 63)))]
    pub namespaces: Vec<String>,
    /// Repositories of those namespaces, by name below the namespace (`ci/*`, `app`; `*` any
    /// run of characters including `/`, `?` one character). Empty: every repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[a-z0-9._/*?-]{1,255}$'))")
        .message("each pattern is 1-255 repository name characters (a-z 0-9 . _ - /) and the wildcards * and ?"))]
    #[schemars(length(max = 64), inner(length(max = 255)))]
    pub repositories: Vec<String>,
    /// Which tags the rules consider, and which they never delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagSelector>,
    /// What is deleted.
    pub rules: RetentionRulesSpec,
    /// When runs happen: a cron schedule in UTC (five fields, `minute hour day month
    /// weekday`, for example `0 3 * * *`), or `@hourly`, `@daily`, `@weekly`, `@monthly`.
    #[x_kube(validation = Rule::new("self.matches('^(@(hourly|daily|weekly|monthly|yearly|annually)|[0-9*/,?LW#A-Za-z-]+( +[0-9*/,?LW#A-Za-z-]+){4})$')")
        .message("must be a cron schedule of five fields (for example '0 3 * * *') or @hourly, @daily, @weekly, @monthly"))]
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// Only plan: status shows what each run would delete, and nothing is deleted.
    #[serde(default)]
    pub dry_run: bool,
}

/// Which tags the rules consider, and which they never delete. Patterns: `*` any run of
/// characters, `?` one character.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TagSelector {
    /// Tags the rules consider. Empty: every tag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[A-Za-z0-9_.*?-]{1,128}$'))")
        .message("each pattern is 1-128 tag characters (A-Z a-z 0-9 _ . -) and the wildcards * and ?"))]
    #[schemars(length(max = 64), inner(length(max = 128)))]
    pub include: Vec<String>,
    /// Tags never deleted, whatever the rules say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[A-Za-z0-9_.*?-]{1,128}$'))")
        .message("each pattern is 1-128 tag characters (A-Z a-z 0-9 _ . -) and the wildcards * and ?"))]
    #[schemars(length(max = 64), inner(length(max = 128)))]
    pub protect: Vec<String>,
}

/// The delete rules and the `keepLast` rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.keepLast) && size(self.keepLast) > 0) || has(self.deleteOlderThan) || has(self.deleteNotPulledWithin) || has(self.deleteUntaggedOlderThan)")
        .message("deletes nothing: set keepLast, deleteOlderThan, deleteNotPulledWithin or deleteUntaggedOlderThan"),
)]
pub struct RetentionRulesSpec {
    /// Per tag pattern, keep the `count` most recently pushed matching tags and delete the
    /// older ones (tags pushed at the same instant as the last one kept are kept too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub keep_last: Vec<KeepLast>,
    /// Delete tags pushed longer ago than this (a duration such as `720h`, at least `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(h|m|s))+$') && duration(self) >= duration('1h')")
        .message("must be a duration of at least 1h, written like 720h or 90m"))]
    #[schemars(length(max = 32))]
    pub delete_older_than: Option<String>,
    /// Delete tags neither pushed nor pulled within this long (at least `1h`: pull times are
    /// recorded to the hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(h|m|s))+$') && duration(self) >= duration('1h')")
        .message("must be a duration of at least 1h (pull times are recorded to the hour), written like 168h"))]
    #[schemars(length(max = 32))]
    pub delete_not_pulled_within: Option<String>,
    /// Delete untagged manifests pushed longer ago than this (at least `1h`, so that a
    /// multi-platform push in progress is never cut short).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(h|m|s))+$') && duration(self) >= duration('1h')")
        .message("must be a duration of at least 1h, written like 24h"))]
    #[schemars(length(max = 32))]
    pub delete_untagged_older_than: Option<String>,
}

/// What the operator observed of a `RetentionPolicy`, and what its runs do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicyStatus {
    /// `Ready`, and `Reconciling` or `Stalled` while it is not.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the next run happens (deleting nothing when `dryRun`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Time>,
    /// When `plan` was computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_at: Option<Time>,
    /// What the next run would delete if it ran now: counts, bytes, the first items by name
    /// with the reason for each, and what keep rules and running Pods spared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanSummary>,
    /// The last run that deleted (not a dry run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RetentionRun>,
}

/// One run that deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionRun {
    /// When it ran.
    pub time: Time,
    /// What it deleted: only items of the plan shown before it that were still selected when
    /// it ran.
    pub deleted: PlanSummary,
}

impl RetentionPolicySpec {
    /// The rules in their resolved form, or every problem found as `(field, message)`.
    pub fn resolve(&self) -> Result<crate::retention::RetentionRules, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut duration = |field: &str, text: &Option<String>| {
            let text = text.as_deref()?;
            match humantime::parse_duration(text) {
                Ok(d) => Some(crate::config::HumanDuration(d)),
                Err(_) => {
                    problems.push((
                        format!("rules.{field}"),
                        format!("{text:?} is not a duration like 720h or 90m"),
                    ));
                    None
                }
            }
        };
        let rules = crate::retention::RetentionRules {
            include_tags: self.tags.clone().unwrap_or_default().include,
            protect_tags: self.tags.clone().unwrap_or_default().protect,
            keep_last: self.rules.keep_last.clone(),
            delete_older_than: duration("deleteOlderThan", &self.rules.delete_older_than),
            delete_not_pulled_within: duration(
                "deleteNotPulledWithin",
                &self.rules.delete_not_pulled_within,
            ),
            delete_untagged_older_than: duration(
                "deleteUntaggedOlderThan",
                &self.rules.delete_untagged_older_than,
            ),
        };
        problems.extend(rules.check());
        if problems.is_empty() {
            Ok(rules)
        } else {
            Err(problems)
        }
    }
}
