//! The retention plan as a pure function: repository state, rules, the set of manifests in
//! use and the clock in; the tags and manifests that go, with a reason each, out. No I/O, so
//! the same inputs always give the same plan (the run re-plans on fresh state and deletes
//! only what both plans agree on).
//!
//! The rules and their order are documented in [`crds::retention`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crds::config::tag_pattern_matches;
use crds::retention::{
    DeleteReason, MAX_REPORTED_ITEMS, MIN_AGE, PlanItem, PlanSummary, RetentionRules, SpareReason,
    SparedCount,
};

/// Pull times are recorded as the start of their hour; the pull may have happened up to an
/// hour later.
const PULL_RECORD_RESOLUTION: Duration = Duration::from_secs(3600);

/// A tag as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagState {
    /// The tag.
    pub name: String,
    /// The manifest digest it points at.
    pub digest: String,
    /// When the tag was last set (pushed or moved).
    pub pushed_at: SystemTime,
    /// Start of the hour of the last pull by this tag, if any was recorded.
    pub pulled_at: Option<SystemTime>,
}

/// A manifest revision as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestState {
    /// Its digest.
    pub digest: String,
    /// When it was first pushed to the repository.
    pub pushed_at: SystemTime,
    /// Start of the hour of the last pull (by tag or digest), if any was recorded.
    pub pulled_at: Option<SystemTime>,
    /// Size of the manifest bytes.
    pub size: u64,
    /// Manifests an index holds (empty for an image manifest).
    pub children: Vec<String>,
    /// The manifest this one refers to (`subject`: signatures, SBOMs, attestations).
    pub subject: Option<String>,
    /// Config and layer blobs, with their sizes.
    pub blobs: Vec<(String, u64)>,
}

/// A repository as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepositoryState {
    /// The repository, with its namespace (`acme/app`).
    pub name: String,
    /// Its tags.
    pub tags: Vec<TagState>,
    /// Its manifest revisions.
    pub manifests: Vec<ManifestState>,
}

/// What one run deletes from one or more repositories: every item, sorted, and what was
/// spared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Repositories evaluated.
    pub repositories: u64,
    /// Every item that goes, sorted by repository, tag and digest (manifests before tags of a
    /// repository); after [`Plan::add`], in the order added until sorted.
    pub items: Vec<PlanItem>,
    /// Items a delete rule selected but a keep rule spared, per reason.
    pub spared: BTreeMap<SpareReason, u64>,
    /// Bytes the repositories stop referencing.
    pub bytes: u64,
}

impl Plan {
    /// Adds one repository's plan (repositories are independent). The items are appended:
    /// whoever adds many plans sorts once at the end.
    pub fn add(&mut self, other: Plan) {
        self.repositories += other.repositories;
        self.items.extend(other.items);
        for (reason, count) in other.spared {
            *self.spared.entry(reason).or_default() += count;
        }
        self.bytes += other.bytes;
    }

    /// Counts, bytes and the first items (tags, then manifests), for status and Events.
    pub fn summary(&self) -> PlanSummary {
        PlanSummary {
            repositories: self.repositories,
            tags: self.items.iter().filter(|i| i.tag.is_some()).count() as u64,
            manifests: self.items.iter().filter(|i| i.tag.is_none()).count() as u64,
            bytes: self.bytes,
            spared: self
                .spared
                .iter()
                .map(|(&reason, &count)| SparedCount { reason, count })
                .collect(),
            // Tags first: they are what people recognise.
            items: self
                .items
                .iter()
                .filter(|i| i.tag.is_some())
                .chain(self.items.iter().filter(|i| i.tag.is_none()))
                .take(MAX_REPORTED_ITEMS)
                .cloned()
                .collect(),
        }
    }
}

/// Plans one repository.
pub fn plan_repository(
    repo: &RepositoryState,
    rules: &RetentionRules,
    in_use: &BTreeSet<String>,
    now: SystemTime,
) -> Plan {
    let graph = Graph::new(repo, in_use);
    let mut plan = Plan {
        repositories: 1,
        ..Plan::default()
    };
    let mut spare = |reason: SpareReason| *plan.spared.entry(reason).or_default() += 1;

    // Tags: delete rules mark, keep rules win.
    let candidates: Vec<&TagState> = repo
        .tags
        .iter()
        .filter(|t| included(rules, &t.name) && !graph.is_referrer(&t.digest))
        .collect();
    let ranks = KeepLastRanks::new(rules, &candidates);
    let mut deleted_tags: BTreeMap<&str, DeleteReason> = BTreeMap::new();
    for tag in &candidates {
        let Some(delete) = tag_delete_reason(rules, &ranks, &graph, tag, now) else {
            continue;
        };
        match tag_keep_reason(rules, &ranks, &graph, tag) {
            Some(keep) => spare(keep),
            None => {
                deleted_tags.insert(&tag.name, delete);
            }
        }
    }

    // Manifests: what lost every tag, old untagged ones, and what hangs on those.
    let mut remaining_tags: HashMap<&str, usize> = HashMap::new();
    let mut had_tags: HashSet<&str> = HashSet::new();
    for tag in &repo.tags {
        had_tags.insert(&tag.digest);
        if !deleted_tags.contains_key(tag.name.as_str()) {
            *remaining_tags.entry(&tag.digest).or_default() += 1;
        }
    }
    let tags = ManifestTags {
        had: had_tags,
        remaining: remaining_tags,
    };
    let mut deleted: BTreeMap<&str, DeleteReason> = BTreeMap::new();
    // Deleting only makes more manifests deletable (children, referrers), so this converges
    // within the depth of the manifest graph.
    loop {
        let mut changed = false;
        for m in &repo.manifests {
            if deleted.contains_key(m.digest.as_str()) {
                continue;
            }
            if let Verdict::Delete(reason) =
                manifest_verdict(rules, &graph, &tags, &deleted, m, now)
            {
                deleted.insert(&m.digest, reason);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for m in &repo.manifests {
        if !deleted.contains_key(m.digest.as_str())
            && let Verdict::Spare(reason) = manifest_verdict(rules, &graph, &tags, &deleted, m, now)
        {
            spare(reason);
        }
    }

    // Tags of a referrer that goes go with it.
    for tag in &repo.tags {
        if deleted.get(tag.digest.as_str()) == Some(&DeleteReason::SubjectDeleted) {
            deleted_tags.insert(&tag.name, DeleteReason::SubjectDeleted);
        }
    }

    plan.bytes = freed_bytes(repo, |digest| deleted.contains_key(digest));
    let tag_digest: HashMap<&str, &str> = repo
        .tags
        .iter()
        .map(|t| (t.name.as_str(), t.digest.as_str()))
        .collect();
    plan.items = deleted_tags
        .into_iter()
        .map(|(tag, reason)| PlanItem {
            repository: repo.name.clone(),
            tag: Some(tag.to_owned()),
            digest: tag_digest[tag].to_owned(),
            reason,
        })
        .chain(deleted.into_iter().map(|(digest, reason)| PlanItem {
            repository: repo.name.clone(),
            tag: None,
            digest: digest.to_owned(),
            reason,
        }))
        .collect();
    plan.items.sort();
    plan
}

/// The manifest graph of one repository: index parents, referrers, and what is in use.
struct Graph<'a> {
    manifests: HashMap<&'a str, &'a ManifestState>,
    /// Child digest to the indexes holding it.
    parents: HashMap<&'a str, Vec<&'a str>>,
    /// Manifests in use, and every index holding one (transitively).
    in_use: HashSet<&'a str>,
    /// Referrers by the tag schema (`sha256-<hex>.sig`, `.att`, `.sbom`) to their subject,
    /// for signatures pushed by clients that do not set `subject`.
    tag_subjects: HashMap<&'a str, String>,
}

impl<'a> Graph<'a> {
    fn new(repo: &'a RepositoryState, in_use: &BTreeSet<String>) -> Self {
        let manifests: HashMap<&str, &ManifestState> = repo
            .manifests
            .iter()
            .map(|m| (m.digest.as_str(), m))
            .collect();
        let mut parents: HashMap<&str, Vec<&str>> = HashMap::new();
        for m in &repo.manifests {
            for child in &m.children {
                if manifests.contains_key(child.as_str()) {
                    parents.entry(child).or_default().push(&m.digest);
                }
            }
        }
        let mut used: HashSet<&str> = HashSet::new();
        let mut queue: Vec<&str> = repo
            .manifests
            .iter()
            .filter(|m| in_use.contains(&m.digest))
            .map(|m| m.digest.as_str())
            .collect();
        while let Some(digest) = queue.pop() {
            if used.insert(digest) {
                queue.extend(parents.get(digest).into_iter().flatten().copied());
            }
        }
        let tag_subjects = repo
            .tags
            .iter()
            .filter_map(|t| Some((t.digest.as_str(), tag_schema_subject(&t.name)?)))
            .collect();
        Self {
            manifests,
            parents,
            in_use: used,
            tag_subjects,
        }
    }

    /// The subject this manifest refers to, when that subject is in the repository.
    fn subject_of(&self, digest: &str) -> Option<&str> {
        let m = self.manifests.get(digest)?;
        let subject = m
            .subject
            .as_deref()
            .or_else(|| self.tag_subjects.get(digest).map(String::as_str))?;
        (subject != digest && self.manifests.contains_key(subject)).then_some(subject)
    }

    fn is_referrer(&self, digest: &str) -> bool {
        self.subject_of(digest).is_some()
    }

    fn parents(&self, digest: &str) -> &[&'a str] {
        self.parents.get(digest).map_or(&[], Vec::as_slice)
    }
}

/// The subject digest a tag names by the tag schema of referrers (`sha256-<hex>.sig`).
fn tag_schema_subject(tag: &str) -> Option<String> {
    let rest = tag.strip_prefix("sha256-")?;
    let (hex, suffix) = rest.split_once('.')?;
    let is_hex = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex && matches!(suffix, "sig" | "att" | "sbom")).then(|| format!("sha256:{hex}"))
}

fn included(rules: &RetentionRules, tag: &str) -> bool {
    rules.include_tags.is_empty()
        || rules
            .include_tags
            .iter()
            .any(|p| tag_pattern_matches(p, tag))
}

/// Per `keepLast` entry, the push time of the last tag it keeps (`None`: it keeps them all).
struct KeepLastRanks<'r> {
    entries: Vec<(&'r str, Option<SystemTime>)>,
}

impl<'r> KeepLastRanks<'r> {
    fn new(rules: &'r RetentionRules, candidates: &[&TagState]) -> Self {
        let entries = rules
            .keep_last
            .iter()
            .map(|k| {
                let mut times: Vec<SystemTime> = candidates
                    .iter()
                    .filter(|t| tag_pattern_matches(&k.tags, &t.name))
                    .map(|t| t.pushed_at)
                    .collect();
                times.sort_unstable_by(|a, b| b.cmp(a));
                let cutoff = times.get(k.count.max(1) as usize - 1).copied();
                let keeps_all = times.len() <= k.count as usize;
                (k.tags.as_str(), if keeps_all { None } else { cutoff })
            })
            .collect();
        Self { entries }
    }

    /// Whether an entry keeps the tag, and whether an entry matching it does not.
    fn verdict(&self, tag: &TagState) -> RankVerdict {
        let mut verdict = RankVerdict::default();
        for &(pattern, cutoff) in &self.entries {
            if tag_pattern_matches(pattern, &tag.name) {
                // Tags pushed at the same instant as the last one kept are kept too.
                if cutoff.is_none_or(|cutoff| tag.pushed_at >= cutoff) {
                    verdict.kept = true;
                } else {
                    verdict.beyond = true;
                }
            }
        }
        verdict
    }
}

/// What the `keepLast` entries say of one tag.
#[derive(Default)]
struct RankVerdict {
    /// An entry keeps it.
    kept: bool,
    /// An entry matches it but keeps newer tags.
    beyond: bool,
}

fn older_than(time: SystemTime, age: Duration, now: SystemTime) -> bool {
    now.checked_sub(age).is_some_and(|limit| time < limit)
}

fn tag_delete_reason(
    rules: &RetentionRules,
    ranks: &KeepLastRanks<'_>,
    graph: &Graph<'_>,
    tag: &TagState,
    now: SystemTime,
) -> Option<DeleteReason> {
    if ranks.verdict(tag).beyond {
        return Some(DeleteReason::BeyondKeepLast);
    }
    if let Some(age) = rules.delete_older_than
        && older_than(tag.pushed_at, age.0, now)
    {
        return Some(DeleteReason::OlderThan);
    }
    if let Some(age) = rules.delete_not_pulled_within {
        let manifest_pull = graph
            .manifests
            .get(tag.digest.as_str())
            .and_then(|m| m.pulled_at);
        let last_active = [tag.pulled_at, manifest_pull]
            .into_iter()
            .flatten()
            .map(|hour| hour + PULL_RECORD_RESOLUTION)
            .chain([tag.pushed_at])
            .max()
            .unwrap_or(tag.pushed_at);
        if older_than(last_active, age.0, now) {
            return Some(DeleteReason::NotPulledWithin);
        }
    }
    None
}

fn tag_keep_reason(
    rules: &RetentionRules,
    ranks: &KeepLastRanks<'_>,
    graph: &Graph<'_>,
    tag: &TagState,
) -> Option<SpareReason> {
    if graph.in_use.contains(tag.digest.as_str()) {
        Some(SpareReason::InUse)
    } else if rules
        .protect_tags
        .iter()
        .any(|p| tag_pattern_matches(p, &tag.name))
    {
        Some(SpareReason::Protected)
    } else if ranks.verdict(tag).kept {
        Some(SpareReason::KeepLast)
    } else {
        None
    }
}

/// Which manifests had tags, and how many of them stay.
struct ManifestTags<'a> {
    had: HashSet<&'a str>,
    remaining: HashMap<&'a str, usize>,
}

enum Verdict {
    /// Nothing selects it.
    Stay,
    /// A rule selects it and nothing keeps it.
    Delete(DeleteReason),
    /// A rule selects it and this keeps it.
    Spare(SpareReason),
}

fn manifest_verdict(
    rules: &RetentionRules,
    graph: &Graph<'_>,
    tags: &ManifestTags<'_>,
    deleted: &BTreeMap<&str, DeleteReason>,
    m: &ManifestState,
    now: SystemTime,
) -> Verdict {
    let digest = m.digest.as_str();
    let in_use = graph.in_use.contains(digest);
    // A referrer follows its subject, whatever its own tags say.
    if let Some(subject) = graph.subject_of(digest) {
        return match (deleted.contains_key(subject), in_use) {
            (false, _) => Verdict::Stay,
            (true, true) => Verdict::Spare(SpareReason::InUse),
            (true, false) => Verdict::Delete(DeleteReason::SubjectDeleted),
        };
    }
    let parents = graph.parents(digest);
    let some_parent_goes = parents.iter().any(|p| deleted.contains_key(p));
    let all_parents_go = some_parent_goes && parents.iter().all(|p| deleted.contains_key(p));
    let tagged = tags.remaining.get(digest).is_some_and(|&n| n > 0);
    let reason = if tagged {
        return if some_parent_goes {
            Verdict::Spare(SpareReason::Tagged)
        } else {
            Verdict::Stay
        };
    } else if tags.had.contains(digest) {
        DeleteReason::TagsDeleted
    } else if some_parent_goes {
        DeleteReason::IndexDeleted
    } else if parents.is_empty()
        && rules
            .delete_untagged_older_than
            .is_some_and(|age| older_than(m.pushed_at, age.0, now))
    {
        DeleteReason::Untagged
    } else {
        return Verdict::Stay;
    };
    if in_use {
        Verdict::Spare(SpareReason::InUse)
    } else if !parents.is_empty() && !all_parents_go {
        Verdict::Spare(SpareReason::ReferencedByIndex)
    } else if reason == DeleteReason::IndexDeleted && !older_than(m.pushed_at, MIN_AGE, now) {
        // Children are pushed before their index: a young one may belong to a push that is
        // still going on.
        Verdict::Spare(SpareReason::RecentlyPushed)
    } else {
        Verdict::Delete(reason)
    }
}

/// Bytes of the deleted manifests (those `deleted` says yes to) and their blobs that no
/// remaining manifest references.
pub fn freed_bytes(repo: &RepositoryState, deleted: impl Fn(&str) -> bool) -> u64 {
    let mut kept: HashSet<&str> = HashSet::new();
    let mut gone: HashMap<&str, u64> = HashMap::new();
    for m in &repo.manifests {
        let refs = std::iter::once((m.digest.as_str(), m.size))
            .chain(m.blobs.iter().map(|(d, s)| (d.as_str(), *s)));
        if deleted(&m.digest) {
            gone.extend(refs);
        } else {
            kept.extend(refs.map(|(d, _)| d));
        }
    }
    gone.into_iter()
        .filter(|(d, _)| !kept.contains(d))
        .map(|(_, size)| size)
        .sum()
}

#[cfg(test)]
mod tests;
