//! Tags list, catalog and referrers.

use serde_json::Value;

use super::{Registry, RegistryError, Result};
use crate::oci::{Digest, RepoName, Tag};

/// Largest page served; a larger `n` is clamped to it.
pub const MAX_PAGE_SIZE: usize = 10_000;

/// A page request: at most `n` entries, lexically after `last` (exclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Page size (`None`: everything after `last`).
    pub n: Option<usize>,
    /// Exclusive lower bound.
    pub last: Option<String>,
}

/// One page of a sorted listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<T> {
    /// The entries, sorted lexically.
    pub items: Vec<T>,
    /// Whether entries remain after this page (the caller links to the next one).
    pub more: bool,
}

fn paginate<T>(sorted: Vec<T>, page: &Page, key: impl Fn(&T) -> &str) -> Listing<T> {
    let n = page.n.map_or(usize::MAX, |n| n.min(MAX_PAGE_SIZE));
    let mut items: Vec<T> = sorted
        .into_iter()
        .filter(|item| page.last.as_deref().is_none_or(|last| key(item) > last))
        .collect();
    let more = n > 0 && items.len() > n;
    items.truncate(n);
    Listing { items, more }
}

impl Registry {
    /// A page of `repo`'s tags; [`RegistryError::NameUnknown`] for an unknown repository.
    pub async fn tags(&self, repo: &RepoName, page: &Page) -> Result<Listing<Tag>> {
        let n = page.n.map_or(usize::MAX, |n| n.min(MAX_PAGE_SIZE));
        // One more than the page tells whether another page follows.
        let mut tags = self
            .storage
            .tags_after(repo, page.last.as_deref(), n.saturating_add(1))
            .await?;
        if tags.is_empty()
            && (page.last.is_none() || self.storage.tags_after(repo, None, 1).await?.is_empty())
            && !self.storage.repositories().await?.contains(repo)
        {
            return Err(RegistryError::NameUnknown);
        }
        // Backends answer pages sorted (the storage conformance suite checks it).
        let more = n > 0 && tags.len() > n;
        tags.truncate(n);
        Ok(Listing { items: tags, more })
    }

    /// A page of the repositories for which `visible` holds.
    pub async fn catalog(
        &self,
        page: &Page,
        visible: impl Fn(&RepoName) -> bool,
    ) -> Result<Listing<RepoName>> {
        let mut repos = self.storage.repositories().await?;
        repos.retain(|r| visible(r));
        repos.sort();
        Ok(paginate(repos, page, RepoName::as_str))
    }

    /// Descriptors of the manifests in `repo` whose subject is `subject`, optionally only those
    /// of one artifact type. An unknown subject or repository has no referrers.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for raw in self.storage.referrers(repo, subject).await? {
            let descriptor: Value = match serde_json::from_slice(&raw) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(repository = %repo, %subject, error = %e, "skipping an unreadable referrer record");
                    continue;
                }
            };
            let matches = artifact_type.is_none_or(|wanted| {
                descriptor.get("artifactType").and_then(Value::as_str) == Some(wanted)
            });
            if matches {
                out.push(descriptor);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i:02}")).collect()
    }

    #[test]
    fn pages_are_exclusive_of_last_and_flag_more() {
        let page = |n, last: Option<&str>| Page {
            n,
            last: last.map(str::to_owned),
        };
        let l = paginate(words(5), &page(Some(2), None), String::as_str);
        assert_eq!(l.items, ["t00", "t01"]);
        assert!(l.more);
        let l = paginate(words(5), &page(Some(2), Some("t03")), String::as_str);
        assert_eq!(l.items, ["t04"]);
        assert!(!l.more);
        let l = paginate(words(5), &page(Some(0), None), String::as_str);
        assert!(l.items.is_empty());
        assert!(!l.more);
        let l = paginate(words(5), &page(None, Some("t01")), String::as_str);
        assert_eq!(l.items.len(), 3);
        assert!(!l.more);
    }
}
