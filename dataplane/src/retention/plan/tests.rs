//! Table tests of the plan: each rule alone, then their combinations and the manifest graph
//! (several tags on one digest, moved tags, indexes, referrers, things in use).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crds::config::HumanDuration;
use crds::retention::{DeleteReason as D, KeepLast, RetentionRules, SpareReason as S};

use super::*;
use crate::oci::Digest;

const HOUR: u64 = 3600;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000 * HOUR)
}

fn ago(hours: u64) -> SystemTime {
    now() - Duration::from_secs(hours * HOUR)
}

/// A digest for a label, so that tests speak of manifests by name.
fn d(label: &str) -> String {
    Digest::sha256_of(label.as_bytes()).to_string()
}

fn hours(h: u64) -> Option<HumanDuration> {
    Some(HumanDuration(Duration::from_secs(h * HOUR)))
}

fn keep(tags: &str, count: u32) -> KeepLast {
    KeepLast {
        tags: tags.into(),
        count,
    }
}

/// Builds a repository: manifests by label, tags pointing at them.
#[derive(Default)]
struct Repo(RepositoryState);

impl Repo {
    fn new() -> Self {
        Self(RepositoryState {
            name: "acme/app".into(),
            ..Default::default()
        })
    }

    /// An image manifest pushed `pushed` hours ago with one config and one layer of its own.
    fn image(mut self, label: &str, pushed: u64) -> Self {
        self.0.manifests.push(ManifestState {
            digest: d(label),
            pushed_at: ago(pushed),
            pulled_at: None,
            size: 500,
            children: vec![],
            subject: None,
            blobs: vec![
                (d(&format!("{label}-config")), 1_000),
                (d(&format!("{label}-layer")), 100_000),
            ],
        });
        self
    }

    /// An image sharing the layer of `shared` (its config is its own).
    fn image_sharing(mut self, label: &str, pushed: u64, shared: &str) -> Self {
        self = self.image(label, pushed);
        let m = self.0.manifests.last_mut().unwrap();
        m.blobs[1] = (d(&format!("{shared}-layer")), 100_000);
        self
    }

    fn index(mut self, label: &str, pushed: u64, children: &[&str]) -> Self {
        self.0.manifests.push(ManifestState {
            digest: d(label),
            pushed_at: ago(pushed),
            pulled_at: None,
            size: 300,
            children: children.iter().map(|c| d(c)).collect(),
            subject: None,
            blobs: vec![],
        });
        self
    }

    /// A signature (an artifact whose `subject` is `subject`).
    fn referrer(mut self, label: &str, pushed: u64, subject: &str) -> Self {
        self = self.image(label, pushed);
        self.0.manifests.last_mut().unwrap().subject = Some(d(subject));
        self
    }

    fn pulled(mut self, label: &str, hours_ago: u64) -> Self {
        let m = self
            .0
            .manifests
            .iter_mut()
            .find(|m| m.digest == d(label))
            .unwrap();
        m.pulled_at = Some(ago(hours_ago));
        self
    }

    fn tag(mut self, name: &str, label: &str, pushed: u64) -> Self {
        self.0.tags.push(TagState {
            name: name.into(),
            digest: d(label),
            pushed_at: ago(pushed),
            pulled_at: None,
        });
        self
    }

    fn tag_pulled(mut self, name: &str, hours_ago: u64) -> Self {
        let t = self.0.tags.iter_mut().find(|t| t.name == name).unwrap();
        t.pulled_at = Some(ago(hours_ago));
        self
    }

    /// `n` tags `<prefix>1..=n` on their own images, tag i pushed `n - i + 1` hours ago (the
    /// highest number is the newest).
    fn series(mut self, prefix: &str, n: u64) -> Self {
        for i in 1..=n {
            let label = format!("{prefix}{i}");
            self = self
                .image(&label, 1000 + n - i)
                .tag(&label, &label, n - i + 1);
        }
        self
    }
}

/// The plan's items, readable: `tag t1 BeyondKeepLast` or `manifest <label> TagsDeleted`.
fn items(plan: &Plan, repo: &RepositoryState) -> Vec<String> {
    let label_of = |digest: &str| {
        // Labels are recovered from the tags or the test's names; fall back to the digest.
        repo.tags
            .iter()
            .find(|t| t.digest == digest)
            .map(|t| format!("@{}", t.name))
            .unwrap_or_else(|| digest.to_owned())
    };
    plan.items
        .iter()
        .map(|i| match &i.tag {
            Some(tag) => format!("tag {tag} {:?}", i.reason),
            None => format!("manifest {} {:?}", label_of(&i.digest), i.reason),
        })
        .collect()
}

fn run(repo: &Repo, rules: &RetentionRules, in_use: &[&str]) -> (Plan, Vec<String>) {
    let in_use: BTreeSet<String> = in_use.iter().map(|l| d(l)).collect();
    let plan = plan_repository(&repo.0, rules, &in_use, now());
    let items = items(&plan, &repo.0);
    (plan, items)
}

fn tags_deleted(plan: &Plan) -> Vec<&str> {
    plan.items.iter().filter_map(|i| i.tag.as_deref()).collect()
}

fn manifests_deleted(plan: &Plan) -> BTreeSet<String> {
    plan.items
        .iter()
        .filter(|i| i.tag.is_none())
        .map(|i| i.digest.clone())
        .collect()
}

/// Why the plan deletes the manifest with this label.
fn manifest_reason(plan: &Plan, label: &str) -> D {
    let item = plan
        .items
        .iter()
        .find(|i| i.tag.is_none() && i.digest == d(label));
    item.expect("the manifest is planned").reason
}

fn labels(labels: &[&str]) -> BTreeSet<String> {
    labels.iter().map(|l| d(l)).collect()
}

fn spared(pairs: &[(S, u64)]) -> BTreeMap<S, u64> {
    pairs.iter().copied().collect()
}

#[test]
fn keep_last_keeps_the_most_recent_per_pattern_and_deletes_the_older() {
    let repo = Repo::new().series("ci-", 5);
    let rules = RetentionRules {
        keep_last: vec![keep("ci-*", 2)],
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    assert_eq!(tags_deleted(&plan), ["ci-1", "ci-2", "ci-3"]);
    assert_eq!(manifests_deleted(&plan), labels(&["ci-1", "ci-2", "ci-3"]));
    assert!(plan.items.iter().all(|i| i.reason
        == if i.tag.is_some() {
            D::BeyondKeepLast
        } else {
            D::TagsDeleted
        }));
    // Tags kept by their rank are not "spared": no delete rule selected them.
    assert_eq!(plan.spared, spared(&[]));
}

#[test]
fn keep_last_leaves_tags_of_other_patterns_alone() {
    let repo = Repo::new().series("ci-", 3).series("v", 3);
    let rules = RetentionRules {
        keep_last: vec![keep("ci-*", 1)],
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    assert_eq!(tags_deleted(&plan), ["ci-1", "ci-2"]);
}

#[test]
fn a_count_larger_than_the_tags_keeps_them_all() {
    let repo = Repo::new().series("ci-", 3);
    let rules = RetentionRules {
        keep_last: vec![keep("*", 10)],
        ..Default::default()
    };
    assert!(run(&repo, &rules, &[]).0.items.is_empty());
}

#[test]
fn ties_in_push_time_at_the_cutoff_are_all_kept() {
    // Four tags: one new, three pushed at the same instant, then an older one.
    let repo = Repo::new()
        .image("m", 100)
        .tag("new", "m", 1)
        .tag("tie-a", "m", 5)
        .tag("tie-b", "m", 5)
        .tag("tie-c", "m", 5)
        .tag("old", "m", 9);
    let rules = RetentionRules {
        keep_last: vec![keep("*", 2)],
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    // Rank 2 falls inside the tie: the whole tie stays, whichever order they were listed in.
    assert_eq!(tags_deleted(&plan), ["old"]);
    // The manifest keeps other tags, so it stays.
    assert!(manifests_deleted(&plan).is_empty());

    let mut reversed = repo;
    reversed.0.tags.reverse();
    assert_eq!(tags_deleted(&run(&reversed, &rules, &[]).0), ["old"]);
}

#[test]
fn overlapping_keep_last_entries_keep_what_either_keeps() {
    // `*` keeps the 4 newest; `ci-*` keeps only 1: ci-4 and ci-3 are beyond the second entry
    // but within the first, and keeping wins.
    let repo = Repo::new().series("ci-", 4).series("v", 2);
    let rules = RetentionRules {
        keep_last: vec![keep("*", 4), keep("ci-*", 1)],
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    // Newest first: v2 (1h), ci-4 (1h), v1 (2h), ci-3 (2h), ci-2 (3h), ci-1 (4h).
    assert_eq!(tags_deleted(&plan), ["ci-1", "ci-2"]);
    assert_eq!(plan.spared, spared(&[(S::KeepLast, 1)]));
}

#[test]
fn older_than_deletes_tags_pushed_before_the_age_unless_a_keep_rule_holds() {
    let repo = Repo::new().series("b", 5);
    // b1..b5 pushed 5..1 hours ago.
    let rules = RetentionRules {
        keep_last: vec![keep("*", 1)],
        delete_older_than: hours(3),
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    // keepLast 1 also deletes b1..b4 by rank; the age alone would take b1, b2 (4h, 5h old;
    // b3 is exactly 3h old and not older).
    assert_eq!(tags_deleted(&plan), ["b1", "b2", "b3", "b4"]);
    let reasons: BTreeSet<D> = plan.items.iter().map(|i| i.reason).collect();
    assert!(reasons.contains(&D::BeyondKeepLast));

    let rules = RetentionRules {
        protect_tags: vec!["b2".into()],
        delete_older_than: hours(3),
        ..Default::default()
    };
    let (plan, items) = run(&repo, &rules, &[]);
    assert_eq!(items, ["manifest @b1 TagsDeleted", "tag b1 OlderThan"]);
    assert_eq!(plan.spared, spared(&[(S::Protected, 1)]));
}

#[test]
fn not_pulled_within_counts_push_tag_pulls_and_manifest_pulls_to_the_end_of_their_hour() {
    let repo = Repo::new()
        .image("a", 500)
        .tag("never-pulled-old", "a", 100)
        .image("b", 500)
        .tag("never-pulled-new", "b", 10)
        .image("c", 500)
        .tag("pulled-by-tag", "c", 100)
        .tag_pulled("pulled-by-tag", 24)
        .image("e", 500)
        .tag("pulled-by-digest", "e", 100)
        .pulled("e", 24)
        .image("f", 500)
        .tag("pulled-in-the-edge-hour", "f", 100)
        .tag_pulled("pulled-in-the-edge-hour", 25)
        .image("g", 500)
        .tag("pulled-long-ago", "g", 100)
        .tag_pulled("pulled-long-ago", 27);
    let rules = RetentionRules {
        protect_tags: vec!["latest".into()],
        delete_not_pulled_within: hours(25),
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    // A pull recorded in the hour starting 25h ago may have happened 24h01m ago: it counts
    // as within 25h. The hour starting 27h ago ended 26h ago: not within.
    assert_eq!(tags_deleted(&plan), ["never-pulled-old", "pulled-long-ago"]);
    assert!(
        plan.items
            .iter()
            .filter(|i| i.tag.is_some())
            .all(|i| i.reason == D::NotPulledWithin)
    );
}

#[test]
fn include_limits_the_tags_any_rule_considers() {
    let repo = Repo::new().series("ci-", 3).series("rel-", 3);
    let rules = RetentionRules {
        include_tags: vec!["ci-*".into()],
        keep_last: vec![keep("*", 1)],
        delete_older_than: hours(1),
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    // `*` ranks only the included tags: ci-3 is the newest of them.
    assert_eq!(tags_deleted(&plan), ["ci-1", "ci-2"]);
}

#[test]
fn protected_tags_win_over_every_delete_rule() {
    let repo = Repo::new().series("v", 4);
    let rules = RetentionRules {
        protect_tags: vec!["v1".into(), "v?".into()],
        keep_last: vec![keep("*", 1)],
        delete_older_than: hours(1),
        delete_not_pulled_within: hours(1),
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    assert!(plan.items.is_empty());
    assert_eq!(plan.spared, spared(&[(S::Protected, 3)]));
}

#[test]
fn a_manifest_in_use_keeps_its_tags_and_every_index_holding_it() {
    let repo = Repo::new()
        .image("amd64", 100)
        .image("arm64", 100)
        .index("multi", 100, &["amd64", "arm64"])
        .tag("old-multi", "multi", 100)
        .image("single", 100)
        .tag("old-single", "single", 100)
        .image("unused", 100)
        .tag("old-unused", "unused", 100)
        .image("fresh", 1)
        .tag("latest", "fresh", 1);
    let rules = RetentionRules {
        keep_last: vec![keep("*", 1)],
        ..Default::default()
    };
    // A Pod runs the arm64 child of the index, another runs `single` (pulled by digest).
    let (plan, items) = run(&repo, &rules, &["arm64", "single"]);
    assert_eq!(tags_deleted(&plan), ["old-unused"], "{items:?}");
    assert_eq!(manifests_deleted(&plan), labels(&["unused"]));
    assert_eq!(plan.spared, spared(&[(S::InUse, 2)]));
}

#[test]
fn in_use_reaches_through_nested_indexes() {
    let repo = Repo::new()
        .image("leaf", 100)
        .index("inner", 100, &["leaf"])
        .index("outer", 100, &["inner"])
        .tag("outer-tag", "outer", 100)
        .image("new", 1)
        .tag("new", "new", 1);
    let rules = RetentionRules {
        keep_last: vec![keep("*", 1)],
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &["leaf"]);
    assert!(plan.items.is_empty());
    assert_eq!(plan.spared, spared(&[(S::InUse, 1)]));
    // Without the Pod, the outer index, the inner one and the leaf all go.
    let (plan, _) = run(&repo, &rules, &[]);
    assert_eq!(
        manifests_deleted(&plan),
        labels(&["leaf", "inner", "outer"])
    );
}

#[test]
fn of_several_tags_on_one_digest_only_those_selected_go() {
    let repo = Repo::new()
        .image("shared", 100)
        .tag("ci-1", "shared", 50)
        .tag("release-1", "shared", 50)
        .image("both-old", 100)
        .tag("ci-0", "both-old", 60)
        .tag("ci-00", "both-old", 60)
        .image("new", 1)
        .tag("ci-2", "new", 1);
    let rules = RetentionRules {
        keep_last: vec![keep("ci-*", 1)],
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    // ci-1 goes but its manifest stays, tagged release-1; both tags of both-old go, and so
    // does the manifest.
    assert_eq!(tags_deleted(&plan), ["ci-0", "ci-00", "ci-1"]);
    assert_eq!(manifests_deleted(&plan), labels(&["both-old"]));
}

#[test]
fn a_moved_tag_is_as_old_as_its_move_and_leaves_its_old_manifest_untagged() {
    // `latest` was pushed 200h ago on `old`, moved 2h ago onto `new`.
    let repo = Repo::new()
        .image("old", 200)
        .image("new", 2)
        .tag("latest", "new", 2)
        .image("older", 300)
        .tag("stale", "older", 300);
    let rules = RetentionRules {
        protect_tags: vec!["keep-me".into()],
        delete_older_than: hours(100),
        delete_untagged_older_than: hours(48),
        ..Default::default()
    };
    let (plan, items) = run(&repo, &rules, &[]);
    assert_eq!(tags_deleted(&plan), ["stale"], "{items:?}");
    assert_eq!(manifests_deleted(&plan), labels(&["old", "older"]));
    assert_eq!(manifest_reason(&plan, "old"), D::Untagged);
    assert_eq!(manifest_reason(&plan, "older"), D::TagsDeleted);
}

#[test]
fn untagged_manifests_go_only_when_old_and_not_held_by_an_index() {
    let repo = Repo::new()
        .image("old-untagged", 100)
        .image("young-untagged", 1)
        .image("child", 100)
        .index("idx", 100, &["child"])
        .tag("idx", "idx", 100);
    let rules = RetentionRules {
        delete_untagged_older_than: hours(24),
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    assert_eq!(manifests_deleted(&plan), labels(&["old-untagged"]));
    assert!(tags_deleted(&plan).is_empty());
    // Without the rule, untagged manifests stay.
    let rules = RetentionRules {
        keep_last: vec![keep("*", 5)],
        ..Default::default()
    };
    assert!(run(&repo, &rules, &[]).0.items.is_empty());
}

#[test]
fn children_of_a_kept_index_are_kept() {
    let repo = Repo::new()
        .image("c1", 100)
        .image("c2", 100)
        .tag("c1-tag", "c1", 100)
        .index("idx", 100, &["c1", "c2"])
        .tag("release", "idx", 100);
    let rules = RetentionRules {
        include_tags: vec!["c1-*".into()],
        keep_last: vec![keep("nothing-matches", 1)],
        delete_older_than: hours(1),
        delete_untagged_older_than: hours(1),
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    // The child's own tag goes; the child stays, held by the index.
    assert_eq!(tags_deleted(&plan), ["c1-tag"]);
    assert!(manifests_deleted(&plan).is_empty());
    assert_eq!(plan.spared, spared(&[(S::ReferencedByIndex, 1)]));
}

#[test]
fn children_of_a_deleted_index_go_unless_something_else_holds_them() {
    let repo = Repo::new()
        .image("only-child", 100)
        .image("shared-child", 100)
        .image("tagged-child", 100)
        .tag("tagged-child", "tagged-child", 100)
        .image("young-child", 0)
        .index(
            "old-idx",
            100,
            &["only-child", "shared-child", "tagged-child", "young-child"],
        )
        .tag("ci-1", "old-idx", 100)
        .index("new-idx", 1, &["shared-child"])
        .tag("ci-2", "new-idx", 1);
    let rules = RetentionRules {
        include_tags: vec!["ci-*".into()],
        keep_last: vec![keep("ci-*", 1)],
        ..Default::default()
    };
    let (plan, items) = run(&repo, &rules, &[]);
    assert_eq!(tags_deleted(&plan), ["ci-1"], "{items:?}");
    assert_eq!(manifests_deleted(&plan), labels(&["old-idx", "only-child"]));
    assert_eq!(manifest_reason(&plan, "old-idx"), D::TagsDeleted);
    assert_eq!(manifest_reason(&plan, "only-child"), D::IndexDeleted);
    assert_eq!(
        plan.spared,
        spared(&[
            (S::Tagged, 1),
            (S::ReferencedByIndex, 1),
            (S::RecentlyPushed, 1),
        ])
    );
}

#[test]
fn referrers_go_with_their_subject_and_never_alone() {
    let repo = Repo::new()
        .image("img-old", 100)
        .tag("ci-1", "img-old", 100)
        .referrer("sig-old", 100, "img-old")
        .referrer("sbom-old", 100, "img-old")
        // A signature of a signature goes with the chain.
        .referrer("sig-of-sig", 100, "sig-old")
        .image("img-new", 1)
        .tag("ci-2", "img-new", 1)
        // An old referrer of a kept subject, with an old tag of its own: it stays.
        .referrer("sig-new", 100, "img-new")
        .tag("ci-sig", "sig-new", 100);
    let rules = RetentionRules {
        keep_last: vec![keep("ci-*", 1)],
        delete_untagged_older_than: hours(1),
        ..Default::default()
    };
    let (plan, items) = run(&repo, &rules, &[]);
    assert_eq!(tags_deleted(&plan), ["ci-1"], "{items:?}");
    assert_eq!(
        manifests_deleted(&plan),
        labels(&["img-old", "sig-old", "sbom-old", "sig-of-sig"])
    );
    assert!(
        plan.items
            .iter()
            .filter(|i| i.tag.is_none() && i.digest != d("img-old"))
            .all(|i| i.reason == D::SubjectDeleted)
    );
}

#[test]
fn signatures_found_by_the_tag_schema_follow_their_subject_with_their_tag() {
    let subject = d("img-old");
    let sig_tag = format!("{}.sig", subject.replace(':', "-"));
    let repo = Repo::new()
        .image("img-old", 100)
        .tag("ci-1", "img-old", 100)
        .image("cosign-sig", 100)
        .tag(&sig_tag, "cosign-sig", 100)
        .image("img-new", 1)
        .tag("ci-2", "img-new", 1);
    let rules = RetentionRules {
        keep_last: vec![keep("*", 1)],
        ..Default::default()
    };
    let (plan, items) = run(&repo, &rules, &[]);
    // The signature tag is not ranked with the images' tags (ci-2 is the newest of those),
    // and it goes with its subject.
    let mut expected = vec!["ci-1".to_owned(), sig_tag.clone()];
    expected.sort();
    assert_eq!(tags_deleted(&plan), expected, "{items:?}");
    assert_eq!(manifests_deleted(&plan), labels(&["img-old", "cosign-sig"]));
    let sig_item = plan.items.iter().find(|i| i.tag.as_ref() == Some(&sig_tag));
    assert_eq!(sig_item.unwrap().reason, D::SubjectDeleted);
}

#[test]
fn bytes_count_only_what_no_remaining_manifest_references() {
    let repo = Repo::new()
        .image("base", 100)
        .tag("ci-1", "base", 100)
        .image_sharing("derived", 100, "base")
        .tag("ci-2", "derived", 100)
        .image("new", 1)
        .tag("ci-3", "new", 1);
    let rules = RetentionRules {
        keep_last: vec![keep("*", 2)],
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    // ci-3 is the newest; ci-1 and ci-2 tie for second place, and ties at the cutoff stay.
    assert!(plan.items.is_empty());

    let rules = RetentionRules {
        keep_last: vec![keep("*", 1)],
        ..Default::default()
    };
    let (plan, _) = run(&repo, &rules, &[]);
    // Both old images go: two manifests (500 each), two configs (1000 each), one layer
    // (100000, shared by the two of them).
    assert_eq!(manifests_deleted(&plan), labels(&["base", "derived"]));
    assert_eq!(plan.bytes, 2 * 500 + 2 * 1_000 + 100_000);

    // Only `base` goes: its layer is still referenced by `derived`.
    let repo = Repo::new()
        .image("base", 100)
        .tag("ci-1", "base", 100)
        .image_sharing("derived", 50, "base")
        .tag("ci-2", "derived", 50);
    let (plan, _) = run(&repo, &rules, &[]);
    assert_eq!(manifests_deleted(&plan), labels(&["base"]));
    assert_eq!(plan.bytes, 500 + 1_000);
}

#[test]
fn every_rule_together_in_one_repository() {
    let repo = Repo::new()
        .series("ci-", 6) // ci-1 (6h) .. ci-6 (1h)
        .image("rel", 2000)
        .tag("v1.0", "rel", 2000)
        .image("running", 2000)
        .tag("ci-running", "running", 2000)
        .image("pulled", 2000)
        .tag("ci-pulled", "pulled", 2000)
        .tag_pulled("ci-pulled", 1)
        .image("dangling", 500);
    let rules = RetentionRules {
        include_tags: vec!["ci-*".into(), "v*".into()],
        protect_tags: vec!["v*".into()],
        keep_last: vec![keep("ci-*", 3)],
        delete_older_than: hours(1000),
        delete_not_pulled_within: hours(48),
        delete_untagged_older_than: hours(24),
    };
    let (plan, items) = run(&repo, &rules, &["running"]);
    // Ranked newest first among ci-*: ci-6, ci-5, ci-4 are kept; ci-3..ci-1 and the two old
    // ci- tags are beyond. ci-running is in use; ci-pulled was pulled an hour ago but is
    // beyond the rank; v1.0 is older than 1000h but protected.
    let expected: BTreeSet<String> = [
        format!("manifest {} Untagged", d("dangling")),
        "manifest @ci-1 TagsDeleted".into(),
        "manifest @ci-2 TagsDeleted".into(),
        "manifest @ci-3 TagsDeleted".into(),
        "manifest @ci-pulled TagsDeleted".into(),
        "tag ci-1 BeyondKeepLast".into(),
        "tag ci-2 BeyondKeepLast".into(),
        "tag ci-3 BeyondKeepLast".into(),
        "tag ci-pulled BeyondKeepLast".into(),
    ]
    .into_iter()
    .collect();
    assert_eq!(items.len(), expected.len(), "{items:?}");
    assert_eq!(items.into_iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(plan.spared, spared(&[(S::InUse, 1), (S::Protected, 1)]));
}

#[test]
fn the_plan_does_not_depend_on_the_order_of_the_listing() {
    let repo = Repo::new()
        .series("ci-", 8)
        .image("a", 100)
        .image("b", 100)
        .index("i", 100, &["a", "b"])
        .tag("ci-idx", "i", 100)
        .referrer("s", 100, "i");
    let rules = RetentionRules {
        keep_last: vec![keep("*", 3)],
        delete_untagged_older_than: hours(1),
        ..Default::default()
    };
    let (expected, _) = run(&repo, &rules, &[]);
    assert!(!expected.items.is_empty());
    let mut shuffled = Repo(repo.0.clone());
    shuffled.0.tags.reverse();
    shuffled.0.manifests.reverse();
    shuffled.0.tags.rotate_left(3);
    shuffled.0.manifests.rotate_left(2);
    assert_eq!(run(&shuffled, &rules, &[]).0, expected);
}

#[test]
fn ages_longer_than_the_clock_delete_nothing() {
    let repo = Repo::new().series("ci-", 2);
    let rules = RetentionRules {
        protect_tags: vec!["x".into()],
        delete_older_than: Some(HumanDuration(Duration::from_secs(u64::MAX / 4))),
        ..Default::default()
    };
    assert!(run(&repo, &rules, &[]).0.items.is_empty());
}

#[test]
fn plans_of_repositories_add_up_and_the_summary_lists_the_first_items() {
    let rules = RetentionRules {
        keep_last: vec![keep("*", 1)],
        ..Default::default()
    };
    let mut total = Plan::default();
    for name in ["acme/b", "acme/a"] {
        let mut repo = Repo::new().series("t", 15);
        repo.0.name = name.into();
        total.add(run(&repo, &rules, &["t1"]).0);
    }
    // `add` appends; the caller combining plans sorts once.
    assert_eq!(total.items[0].repository, "acme/b");
    total.items.sort();
    let summary = total.summary();
    assert_eq!(summary.repositories, 2);
    assert_eq!(summary.tags, 2 * 13);
    assert_eq!(summary.manifests, 2 * 13);
    assert_eq!(summary.spared.len(), 1);
    assert_eq!(summary.spared[0].count, 2);
    assert_eq!(summary.items.len(), crds::retention::MAX_REPORTED_ITEMS);
    // Tags first (26 of them, so only tags are listed), sorted by repository and tag.
    assert_eq!(summary.items[0].repository, "acme/a");
    assert!(summary.items.iter().all(|i| i.tag.is_some()));
    let mut sorted = summary.items.clone();
    sorted.sort();
    assert_eq!(summary.items, sorted);
    assert_eq!(summary.bytes, 2 * 13 * (500 + 1_000 + 100_000));
}
