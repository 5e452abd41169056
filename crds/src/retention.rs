//! Retention vocabulary shared by the operator and the data plane: the rules of a policy in
//! their resolved form, and the plan that says what a run deletes and what it spares.
//!
//! The rules, in the order they are evaluated (the data plane's planner implements them; the
//! `RetentionPolicy` API docs state them for users):
//!
//! 1. **Scope.** Only tags matching an `include_tags` pattern (all tags when empty) are
//!    candidates. Tags on referrers (signatures, SBOMs, attestations) are never candidates:
//!    a referrer follows its subject.
//! 2. **Delete rules** mark a candidate tag when any of them holds: it is beyond the `count`
//!    most recently pushed tags of a `keep_last` pattern it matches; it was pushed before
//!    `delete_older_than`; it was neither pushed nor pulled within `delete_not_pulled_within`.
//! 3. **Keep rules win** over every delete rule: a tag matching `protect_tags`, a tag among
//!    the most recent `count` of any `keep_last` pattern it matches (tags pushed at the same
//!    instant as the last kept one are kept too), and a tag whose manifest is in use (running
//!    in a Pod, or an index holding a running manifest) stay.
//! 4. **Manifests** go when every tag they had goes, or, untagged, when they were pushed
//!    before `delete_untagged_older_than`. A manifest still tagged, in use, or a child of an
//!    index that stays, stays. Children of an index that goes, untagged and held by no other
//!    index, go with it. Referrers go with their subject and never outlive it.

use std::time::Duration;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{HumanDuration, check_tag_pattern};

/// The shortest `delete_not_pulled_within`: pull times are recorded to the hour.
pub const MIN_NOT_PULLED_WITHIN: Duration = Duration::from_secs(3600);
/// The shortest `delete_older_than` and `delete_untagged_older_than`: an image is pushed as
/// several manifests (children before their index), so a younger untagged manifest may be
/// part of a push in progress.
pub const MIN_AGE: Duration = Duration::from_secs(3600);
/// How many items a plan report lists by name; the counts cover all of them.
pub const MAX_REPORTED_ITEMS: usize = 20;

/// Keep the `count` most recently pushed tags matching `tags`; delete the older ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeepLast {
    /// Tag pattern (`*` any run of characters, `?` one character).
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_.*?-]{1,128}$')")
        .message("must be a tag pattern: 1-128 tag characters (A-Z a-z 0-9 _ . -) and the wildcards * and ?"))]
    #[schemars(length(min = 1, max = 128))]
    pub tags: String,
    /// How many of the matching tags are kept (at least 1).
    #[x_kube(validation = Rule::new("self >= 1")
        .message("must be at least 1: a count of 0 would delete every matching tag"))]
    #[schemars(range(max = 100000))]
    pub count: u32,
}

/// The rules of one retention policy, resolved (durations parsed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionRules {
    /// Tags the policy considers (patterns); empty: all tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_tags: Vec<String>,
    /// Tags never deleted (patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protect_tags: Vec<String>,
    /// Per tag pattern, how many of the most recently pushed matching tags are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_last: Vec<KeepLast>,
    /// Delete tags pushed longer ago than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_older_than: Option<HumanDuration>,
    /// Delete tags neither pushed nor pulled within this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_not_pulled_within: Option<HumanDuration>,
    /// Delete untagged manifests pushed longer ago than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_untagged_older_than: Option<HumanDuration>,
}

impl RetentionRules {
    /// Whether any rule deletes tags.
    pub fn deletes_tags(&self) -> bool {
        !self.keep_last.is_empty()
            || self.delete_older_than.is_some()
            || self.delete_not_pulled_within.is_some()
    }

    /// Checks what the types cannot say; returns every problem as `(field, message)`, with
    /// messages that say what to fix. The CRD's admission rules state the same.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| problems.push((field.to_owned(), message));
        for (field, patterns) in [
            ("includeTags", &self.include_tags),
            ("protectTags", &self.protect_tags),
        ] {
            for (i, p) in patterns.iter().enumerate() {
                if let Err(message) = check_tag_pattern(p) {
                    problem(&format!("{field}[{i}]"), message);
                }
            }
        }
        for (i, k) in self.keep_last.iter().enumerate() {
            if let Err(message) = check_tag_pattern(&k.tags) {
                problem(&format!("keepLast[{i}].tags"), message);
            }
            if k.count == 0 {
                problem(
                    &format!("keepLast[{i}].count"),
                    "must be at least 1: a count of 0 would delete every matching tag".into(),
                );
            }
        }
        if !self.deletes_tags() && self.delete_untagged_older_than.is_none() {
            problem(
                "rules",
                "deletes nothing: set keepLast, deleteOlderThan, deleteNotPulledWithin or \
                 deleteUntaggedOlderThan"
                    .into(),
            );
        }
        let age_rules = self.delete_older_than.is_some() || self.delete_not_pulled_within.is_some();
        if age_rules && self.keep_last.is_empty() && self.protect_tags.is_empty() {
            problem(
                "rules",
                "an age rule without a keep rule can delete every tag: add keepLast (for example \
                 {tags: \"*\", count: 5}) or protectTags"
                    .into(),
            );
        }
        if self
            .protect_tags
            .iter()
            .any(|p| p.chars().all(|c| c == '*'))
            && self.deletes_tags()
        {
            problem(
                "protectTags",
                "\"*\" protects every tag, so the tag rules can delete nothing: remove it or the \
                 tag rules"
                    .into(),
            );
        }
        for (field, value, min) in [
            ("deleteOlderThan", self.delete_older_than, MIN_AGE),
            (
                "deleteNotPulledWithin",
                self.delete_not_pulled_within,
                MIN_NOT_PULLED_WITHIN,
            ),
            (
                "deleteUntaggedOlderThan",
                self.delete_untagged_older_than,
                MIN_AGE,
            ),
        ] {
            if let Some(HumanDuration(d)) = value
                && d < min
            {
                problem(
                    field,
                    format!("must be at least {}", humantime::format_duration(min)),
                );
            }
        }
        problems
    }
}

/// Why a plan deletes an item.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum DeleteReason {
    /// The tag is beyond the most recent `count` of a `keepLast` pattern.
    BeyondKeepLast,
    /// The tag was pushed before `deleteOlderThan`.
    OlderThan,
    /// The tag was neither pushed nor pulled within `deleteNotPulledWithin`.
    NotPulledWithin,
    /// Every tag of the manifest goes.
    TagsDeleted,
    /// The manifest is untagged and was pushed before `deleteUntaggedOlderThan`.
    Untagged,
    /// The manifest is a child of an index that goes, and nothing else holds it.
    IndexDeleted,
    /// The manifest (a signature, SBOM or attestation) refers to a manifest that goes.
    SubjectDeleted,
}

/// Why a plan keeps an item that a delete rule selected.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum SpareReason {
    /// A Pod runs the manifest, or a manifest of the index.
    InUse,
    /// The tag matches `protectTags`.
    Protected,
    /// The tag is among the most recent `count` of a `keepLast` pattern.
    KeepLast,
    /// Another tag that stays points at the manifest.
    Tagged,
    /// An index that stays holds the manifest.
    ReferencedByIndex,
    /// Pushed too recently to be part of a finished push (children of a deleted index).
    RecentlyPushed,
}

/// One item a plan deletes: a tag (with the digest it pointed at when planned) or a manifest.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct PlanItem {
    /// The repository, with its namespace (`acme/app`).
    pub repository: String,
    /// The tag, when the item is a tag; absent for a manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The manifest digest (a tag's target when planned).
    pub digest: String,
    /// Why it goes.
    pub reason: DeleteReason,
}

/// How many items one reason spared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SparedCount {
    /// The reason.
    pub reason: SpareReason,
    /// Tags and manifests it spared.
    pub count: u64,
}

/// What a retention run deletes, or deleted: counts, bytes, the first items by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanSummary {
    /// Repositories evaluated.
    pub repositories: u64,
    /// Tags deleted.
    pub tags: u64,
    /// Manifests deleted.
    pub manifests: u64,
    /// Bytes of manifests and layers that the repositories stop referencing (collected once
    /// no other repository links them).
    pub bytes: u64,
    /// Items a delete rule selected but a keep rule spared, per reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spared: Vec<SparedCount>,
    /// The first items with the reason for each: tags (by repository and tag), then
    /// manifests (by repository and digest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<PlanItem>,
}

/// The repositories a policy applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionScope {
    /// Registry namespaces.
    pub namespaces: Vec<String>,
    /// Repository patterns below the namespace (`ci/*`; `*` matches `/` too); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
}

impl RetentionScope {
    /// Whether the repository `name` (with its namespace, `acme/ci/app`) is in scope.
    pub fn contains(&self, name: &str) -> bool {
        let (namespace, below) = name.split_once('/').unwrap_or((name, ""));
        self.namespaces.iter().any(|n| n == namespace)
            && (self.repositories.is_empty()
                || self
                    .repositories
                    .iter()
                    .any(|p| crate::config::tag_pattern_matches(p, below)))
    }
}

/// A request of the operator to the data plane's retention endpoints (plan, run): the
/// policy, its repositories and rules, and the manifests Pods run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionRequest {
    /// The policy: `<kubernetes namespace>/<name>` (the data plane keeps its plan by it).
    pub policy: String,
    /// Its repositories.
    pub scope: RetentionScope,
    /// Its rules.
    pub rules: RetentionRules,
    /// Digests of the manifests that Pods run (in the region's cluster).
    #[serde(default)]
    pub in_use: Vec<String>,
}

/// The data plane's answer: the plan (or, for a run, what it deleted), and repositories it
/// left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionResponse {
    /// Counts, bytes, the first items and what was spared.
    pub summary: PlanSummary,
    /// Repositories skipped, each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(h: u64) -> Option<HumanDuration> {
        Some(HumanDuration(Duration::from_secs(h * 3600)))
    }

    fn keep(tags: &str, count: u32) -> KeepLast {
        KeepLast {
            tags: tags.into(),
            count,
        }
    }

    fn fields(rules: &RetentionRules) -> Vec<String> {
        rules.check().into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn sound_rules_pass() {
        for rules in [
            RetentionRules {
                keep_last: vec![keep("*", 10)],
                ..Default::default()
            },
            RetentionRules {
                keep_last: vec![keep("ci-*", 3)],
                delete_older_than: hours(720),
                ..Default::default()
            },
            RetentionRules {
                protect_tags: vec!["v*".into()],
                delete_not_pulled_within: hours(24),
                ..Default::default()
            },
            RetentionRules {
                delete_untagged_older_than: hours(1),
                ..Default::default()
            },
        ] {
            assert_eq!(rules.check(), vec![], "{rules:?}");
        }
    }

    #[test]
    fn unsafe_or_contradictory_rules_are_refused_naming_the_field() {
        let cases = [
            (RetentionRules::default(), vec!["rules"]),
            (
                RetentionRules {
                    delete_older_than: hours(24),
                    ..Default::default()
                },
                vec!["rules"],
            ),
            (
                RetentionRules {
                    keep_last: vec![keep("*", 0)],
                    ..Default::default()
                },
                vec!["keepLast[0].count"],
            ),
            (
                RetentionRules {
                    keep_last: vec![keep("*", 1)],
                    protect_tags: vec!["*".into()],
                    ..Default::default()
                },
                vec!["protectTags"],
            ),
            (
                RetentionRules {
                    keep_last: vec![keep("*", 1)],
                    delete_not_pulled_within: Some(HumanDuration(Duration::from_secs(600))),
                    ..Default::default()
                },
                vec!["deleteNotPulledWithin"],
            ),
            (
                RetentionRules {
                    include_tags: vec!["a/b".into()],
                    keep_last: vec![keep("x y", 1)],
                    ..Default::default()
                },
                vec!["includeTags[0]", "keepLast[0].tags"],
            ),
        ];
        for (rules, expected) in cases {
            assert_eq!(fields(&rules), expected, "{rules:?}");
            for (_, message) in rules.check() {
                assert!(!message.is_empty());
            }
        }
    }

    #[test]
    fn scope_matches_namespaces_and_repository_patterns() {
        let scope = RetentionScope {
            namespaces: vec!["acme".into()],
            repositories: vec!["ci/*".into(), "app".into()],
        };
        for (name, inside) in [
            ("acme/app", true),
            ("acme/ci/x", true),
            ("acme/ci/x/y", true),
            ("acme/cd/x", false),
            ("acme/apps", false),
            ("other/app", false),
            ("acmeish/app", false),
        ] {
            assert_eq!(scope.contains(name), inside, "{name}");
        }
        let everything = RetentionScope {
            namespaces: vec!["acme".into()],
            repositories: vec![],
        };
        assert!(everything.contains("acme/anything/at/all"));
    }

    #[test]
    fn rules_round_trip_with_humane_durations() {
        let rules = RetentionRules {
            keep_last: vec![keep("*", 5)],
            delete_older_than: hours(720),
            ..Default::default()
        };
        let json = serde_json::to_value(&rules).unwrap();
        assert_eq!(json["deleteOlderThan"], "30days");
        let back: RetentionRules = serde_json::from_value(json).unwrap();
        assert_eq!(back, rules);
    }
}
