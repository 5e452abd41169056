//! Planning a policy over the repositories it applies to, and carrying out a plan: a run
//! re-plans each repository on its state at that moment and deletes only the items that the
//! plan shown before and the fresh plan agree on.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use futures_util::StreamExt;

use crds::retention::{PlanItem, RetentionRules, RetentionScope};

use super::plan::{Plan, RepositoryState, freed_bytes, plan_repository};
use super::state::{StateError, read_repository};
use crate::oci::{Digest, RepoName, Tag};
use crate::registry::{Registry, RegistryError};

/// Repositories read at once while planning.
const REPOSITORIES_AT_ONCE: usize = 8;
/// Tags of one repository deleted in one storage call.
const TAG_BATCH: usize = 256;

/// What planning or a run produced, and the repositories it had to leave alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The plan (for a run: what it deleted).
    pub plan: Plan,
    /// Repositories skipped, each with why (a manifest that cannot be read).
    pub skipped: Vec<String>,
}

/// Plans `rules` over every repository in `scope`.
pub async fn plan(
    registry: &Registry,
    scope: &RetentionScope,
    rules: &RetentionRules,
    in_use: &BTreeSet<String>,
    now: SystemTime,
) -> Result<Outcome, RegistryError> {
    let mut outcome = Outcome::default();
    let mut read = futures_util::stream::iter(repositories(registry, scope).await?)
        .map(|repo| async move { read_repository(registry, &repo).await })
        .buffered(REPOSITORIES_AT_ONCE);
    while let Some(state) = read.next().await {
        match state {
            Ok(state) => outcome
                .plan
                .add(plan_repository(&state, rules, in_use, now)),
            Err(StateError::Registry(e)) => return Err(e),
            Err(skipped) => outcome.skipped.push(skipped.to_string()),
        }
    }
    outcome.plan.items.sort();
    Ok(outcome)
}

/// Deletes the items of `planned` that a plan of the repositories' present state still
/// selects (with the in-use set and clock of now); returns what it deleted. Tags go first,
/// then manifests, an index before its children and a referrer before its subject, so that
/// nothing left ever points at something gone; a manifest tagged since is kept.
pub async fn apply(
    registry: &Registry,
    scope: &RetentionScope,
    rules: &RetentionRules,
    in_use: &BTreeSet<String>,
    now: SystemTime,
    planned: &[PlanItem],
) -> Result<Outcome, RegistryError> {
    let mut by_repo: BTreeMap<String, HashSet<(Option<String>, String)>> = BTreeMap::new();
    for item in planned {
        by_repo
            .entry(item.repository.clone())
            .or_default()
            .insert((item.tag.clone(), item.digest.clone()));
    }
    // Repositories are independent of each other: a few are run at once.
    let mut runs = futures_util::stream::iter(by_repo)
        .map(|(name, items)| async move {
            let Ok(repo) = name.parse::<RepoName>() else {
                return Ok(None);
            };
            if !scope.contains(repo.as_str()) {
                return Ok(None);
            }
            let state = match read_repository(registry, &repo).await {
                Ok(state) => state,
                Err(StateError::Registry(e)) => return Err(e),
                Err(skipped) => return Ok(Some(Err(skipped.to_string()))),
            };
            let fresh = plan_repository(&state, rules, in_use, now);
            let agreed: Vec<PlanItem> = fresh
                .items
                .into_iter()
                .filter(|i| items.contains(&(i.tag.clone(), i.digest.clone())))
                .collect();
            Ok(Some(Ok(delete(registry, &repo, &state, agreed).await?)))
        })
        .buffered(REPOSITORIES_AT_ONCE / 2);
    let mut outcome = Outcome::default();
    while let Some(run) = runs.next().await {
        match run? {
            Some(Ok(deleted)) => outcome.plan.add(deleted),
            Some(Err(skipped)) => outcome.skipped.push(skipped),
            None => {}
        }
    }
    outcome.plan.items.sort();
    Ok(outcome)
}

/// Every repository of the region in `scope`.
async fn repositories(
    registry: &Registry,
    scope: &RetentionScope,
) -> Result<Vec<RepoName>, RegistryError> {
    let mut all = registry.storage().repositories().await?;
    all.retain(|r| scope.contains(r.as_str()));
    Ok(all)
}

/// Deletes `items` of one repository in a safe order; returns what was deleted.
async fn delete(
    registry: &Registry,
    repo: &RepoName,
    state: &RepositoryState,
    items: Vec<PlanItem>,
) -> Result<Plan, RegistryError> {
    let storage = registry.storage();
    let mut deleted = Plan {
        repositories: 1,
        ..Plan::default()
    };
    let (tags, manifests): (Vec<PlanItem>, Vec<PlanItem>) =
        items.into_iter().partition(|i| i.tag.is_some());
    // Tags go in batches, each removed only if it still names the planned manifest (one
    // moved since stays).
    let parsed: Vec<((Tag, Digest), PlanItem)> = tags
        .into_iter()
        .filter_map(|item| {
            let tag = item.tag.as_deref()?.parse::<Tag>().ok()?;
            let digest = item.digest.parse::<Digest>().ok()?;
            Some(((tag, digest), item))
        })
        .collect();
    for batch in parsed.chunks(TAG_BATCH) {
        let pairs: Vec<(Tag, Digest)> = batch.iter().map(|(pair, _)| pair.clone()).collect();
        let gone = storage.tags_delete_if(repo, &pairs).await?;
        deleted.items.extend(
            batch
                .iter()
                .zip(gone)
                .filter(|(_, gone)| *gone)
                .map(|((_, item), _)| item.clone()),
        );
    }
    let mut removed = HashSet::new();
    for item in deletion_order(state, manifests) {
        let Ok(digest) = item.digest.parse::<Digest>() else {
            continue;
        };
        if registry.manifest_remove_untagged(repo, &digest).await? {
            removed.insert(item.digest.clone());
            deleted.items.push(item);
        }
    }
    deleted.items.sort();
    deleted.bytes = freed_bytes(state, |d| removed.contains(d));
    Ok(deleted)
}

/// Orders manifest deletions so that an index goes before the manifests it holds and a
/// referrer before its subject.
fn deletion_order(state: &RepositoryState, manifests: Vec<PlanItem>) -> Vec<PlanItem> {
    let pending: HashSet<&str> = manifests.iter().map(|i| i.digest.as_str()).collect();
    // How many pending manifests point at each one (as index child or as subject).
    let mut pointers: HashMap<&str, usize> = HashMap::new();
    let mut points_at: HashMap<&str, Vec<&str>> = HashMap::new();
    for m in state
        .manifests
        .iter()
        .filter(|m| pending.contains(m.digest.as_str()))
    {
        for target in m.children.iter().chain(&m.subject) {
            if pending.contains(target.as_str()) {
                *pointers.entry(target).or_default() += 1;
                points_at.entry(&m.digest).or_default().push(target);
            }
        }
    }
    let mut by_digest: BTreeMap<String, PlanItem> = manifests
        .into_iter()
        .map(|i| (i.digest.clone(), i))
        .collect();
    let mut ready: Vec<String> = by_digest
        .keys()
        .filter(|d| !pointers.contains_key(d.as_str()))
        .cloned()
        .collect();
    let mut order = Vec::with_capacity(by_digest.len());
    while let Some(digest) = ready.pop() {
        for target in points_at.get(digest.as_str()).into_iter().flatten() {
            let count = pointers.get_mut(target).expect("counted above");
            *count -= 1;
            if *count == 0 {
                ready.push((*target).to_owned());
            }
        }
        if let Some(item) = by_digest.remove(&digest) {
            order.push(item);
        }
    }
    // A cycle cannot be pushed (digests), but a corrupt store could hold one: the rest last.
    order.extend(by_digest.into_values());
    order
}
