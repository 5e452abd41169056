//! Pulls by tag from memory: the tag and its revision record, kept briefly.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Instant;

use super::TAG_CACHE_TTL;
use crate::oci::{Digest, RepoName, Tag};
use crate::storage::ManifestMeta;

/// Tags found recently, with the revision record of the manifest they point at.
///
/// Every invalidation bumps `generation`; a resolution read from disk is remembered only if no
/// invalidation happened since the read started, so a read racing with a write through this
/// instance cannot bring the old value back. Above `capacity` entries the memory starts over.
#[derive(Debug)]
pub(super) struct TagCache {
    inner: RwLock<TagCacheInner>,
    capacity: usize,
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
    /// A cache of at most `capacity` tags (zero remembers nothing).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            inner: RwLock::default(),
            capacity,
        }
    }

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
        if inner.entries >= self.capacity {
            inner.repos.clear();
            inner.entries = 0;
            if self.capacity == 0 {
                return;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn resolution(i: usize) -> (Digest, ManifestMeta) {
        let meta = ManifestMeta {
            media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
            size: 2,
        };
        (Digest::sha256_of(i.to_string().as_bytes()), meta)
    }

    #[test]
    fn holds_at_most_its_capacity() {
        let cache = TagCache::new(100);
        let repo: RepoName = "acme/app".parse().unwrap();
        for i in 0..1_000 {
            let tag: Tag = format!("v{i}").parse().unwrap();
            cache.insert(
                &repo,
                &tag,
                &resolution(i),
                cache.generation(),
                Instant::now(),
            );
            assert_eq!(cache.get(&repo, &tag), Some(resolution(i)));
            let inner = cache.inner.read().unwrap();
            let held: usize = inner.repos.values().map(HashMap::len).sum();
            assert_eq!(held, inner.entries);
            assert!(held <= 100, "{held} tags held");
        }
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let cache = TagCache::new(0);
        let repo: RepoName = "acme/app".parse().unwrap();
        let tag: Tag = "v1".parse().unwrap();
        cache.insert(
            &repo,
            &tag,
            &resolution(1),
            cache.generation(),
            Instant::now(),
        );
        assert_eq!(cache.get(&repo, &tag), None);
    }

    #[test]
    fn a_read_racing_an_invalidation_is_not_remembered() {
        let cache = TagCache::new(10);
        let repo: RepoName = "acme/app".parse().unwrap();
        let tag: Tag = "v1".parse().unwrap();
        let started = cache.generation();
        cache.invalidate(&repo, Some(&tag));
        cache.insert(&repo, &tag, &resolution(1), started, Instant::now());
        assert_eq!(cache.get(&repo, &tag), None);
    }
}
