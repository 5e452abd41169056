//! Pulls by tag from memory: the tag and its revision record, kept briefly.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Instant;

use super::{TAG_CACHE_ENTRIES, TAG_CACHE_TTL};
use crate::oci::{Digest, RepoName, Tag};
use crate::storage::ManifestMeta;

/// Tags found recently, with the revision record of the manifest they point at.
///
/// Every invalidation bumps `generation`; a resolution read from disk is remembered only if no
/// invalidation happened since the read started, so a read racing with a write through this
/// instance cannot bring the old value back.
#[derive(Debug, Default)]
pub(super) struct TagCache {
    inner: RwLock<TagCacheInner>,
}

#[derive(Debug, Default)]
pub(super) struct TagCacheInner {
    repos: HashMap<RepoName, HashMap<Tag, CachedTag>>,
    entries: usize,
    generation: u64,
}

#[derive(Debug, Clone)]
pub(super) struct CachedTag {
    digest: Digest,
    meta: ManifestMeta,
    read_at: Instant,
}

impl TagCache {
    /// The remembered resolution of `tag`, if read less than [`TAG_CACHE_TTL`] ago.
    pub(super) fn get(&self, repo: &RepoName, tag: &Tag) -> Option<(Digest, ManifestMeta)> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let cached = inner.repos.get(repo)?.get(tag)?;
        (cached.read_at.elapsed() < TAG_CACHE_TTL)
            .then(|| (cached.digest.clone(), cached.meta.clone()))
    }

    /// The generation to pass to [`TagCache::insert`] for a read starting now.
    pub(super) fn generation(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// Remembers a resolution read from disk (started at `generation`, at `read_at`), unless
    /// something was invalidated since.
    pub(super) fn insert(
        &self,
        repo: &RepoName,
        tag: &Tag,
        resolved: &(Digest, ManifestMeta),
        generation: u64,
        read_at: Instant,
    ) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if inner.generation != generation {
            return;
        }
        if inner.entries >= TAG_CACHE_ENTRIES {
            inner.repos.clear();
            inner.entries = 0;
        }
        let cached = CachedTag {
            digest: resolved.0.clone(),
            meta: resolved.1.clone(),
            read_at,
        };
        if inner
            .repos
            .entry(repo.clone())
            .or_default()
            .insert(tag.clone(), cached)
            .is_none()
        {
            inner.entries += 1;
        }
    }

    /// Forgets one tag of `repo`, or every tag of `repo` (its revision records changed).
    pub(super) fn invalidate(&self, repo: &RepoName, tag: Option<&Tag>) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.generation += 1;
        let removed = match (tag, inner.repos.get_mut(repo)) {
            (_, None) => 0,
            (Some(tag), Some(tags)) => usize::from(tags.remove(tag).is_some()),
            (None, Some(_)) => inner.repos.remove(repo).map_or(0, |tags| tags.len()),
        };
        inner.entries -= removed;
    }
}
