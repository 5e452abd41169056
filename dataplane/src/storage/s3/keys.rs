//! The key layout of [`crate::storage`], as object keys under a configurable prefix.

use crate::oci::{Digest, RepoName, Tag};
use crate::storage::{PullTarget, RecordKey, UploadId};

/// The digest a key ends with, as the layout writes it (`<alg>/<hex>`), given the key's rest
/// after its listing prefix.
pub(super) fn digest_in_key(rest: &str) -> Result<Digest, <Digest as std::str::FromStr>::Err> {
    rest.replacen('/', ":", 1).parse()
}

/// Builds every object key the backend uses, so the layout lives in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Keys {
    /// `""` or a prefix ending in `/`.
    prefix: String,
}

pub(super) const REPOSITORIES: &str = "repositories/";
pub(super) const UPLOADS: &str = "uploads/";
pub(super) const MANIFESTS_DIR: &str = "_manifests/";

impl Keys {
    /// A layout under `prefix`; leading and trailing slashes are ignored, so `"a/b"`, `"/a/b/"`
    /// and `"a/b/"` all put keys under `a/b/`.
    pub(super) fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_matches('/');
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        };
        Self { prefix }
    }

    /// The prefix every key starts with (`""` or ending in `/`).
    #[cfg(test)]
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `blobs/<alg>/<hex[0..2]>/<hex>`.
    pub(super) fn blob(&self, digest: &Digest) -> String {
        let hex = digest.hex();
        format!(
            "{}blobs/{}/{}/{hex}",
            self.prefix,
            digest.algorithm(),
            &hex[..2]
        )
    }

    /// `blobs/` (the root of every blob).
    pub(super) fn blobs_root(&self) -> String {
        format!("{}blobs/", self.prefix)
    }

    /// `repositories/<name...>/_layers/` (every blob link of a repository).
    pub(super) fn layer_links(&self, repo: &RepoName) -> String {
        format!("{}_layers/", self.repository(repo))
    }

    /// `repositories/<name...>/`.
    pub(super) fn repository(&self, repo: &RepoName) -> String {
        format!("{}{REPOSITORIES}{}/", self.prefix, repo.as_str())
    }

    /// `repositories/` (the root of every repository).
    pub(super) fn repositories_root(&self) -> String {
        format!("{}{REPOSITORIES}", self.prefix)
    }

    /// `repositories/<name...>/_layers/<alg>/<hex>`.
    pub(super) fn layer_link(&self, repo: &RepoName, digest: &Digest) -> String {
        format!(
            "{}_layers/{}/{}",
            self.repository(repo),
            digest.algorithm(),
            digest.hex()
        )
    }

    /// `repositories/<name...>/_manifests/<alg>/<hex>`.
    pub(super) fn manifest_link(&self, repo: &RepoName, digest: &Digest) -> String {
        format!(
            "{}{MANIFESTS_DIR}{}/{}",
            self.repository(repo),
            digest.algorithm(),
            digest.hex()
        )
    }

    /// `repositories/<name...>/_tags/` (all tags of a repository).
    pub(super) fn tags(&self, repo: &RepoName) -> String {
        format!("{}_tags/", self.repository(repo))
    }

    /// `repositories/<name...>/_tags/<tag>`.
    pub(super) fn tag(&self, repo: &RepoName, tag: &Tag) -> String {
        format!("{}{}", self.tags(repo), tag.as_str())
    }

    /// `repositories/<name...>/_manifests/` (every revision of a repository).
    pub(super) fn manifest_links(&self, repo: &RepoName) -> String {
        format!("{}{MANIFESTS_DIR}", self.repository(repo))
    }

    /// `repositories/<name...>/_pulls/` (every pull record of a repository).
    pub(super) fn pulls(&self, repo: &RepoName) -> String {
        format!("{}_pulls/", self.repository(repo))
    }

    /// `repositories/<name...>/_pulls/tags/<tag>` or `.../_pulls/manifests/<alg>/<hex>`.
    pub(super) fn pull(&self, repo: &RepoName, target: &PullTarget) -> String {
        match target {
            PullTarget::Tag(tag) => format!("{}tags/{}", self.pulls(repo), tag.as_str()),
            PullTarget::Manifest(digest) => format!(
                "{}manifests/{}/{}",
                self.pulls(repo),
                digest.algorithm(),
                digest.hex()
            ),
        }
    }

    /// `repositories/<name...>/_referrers/<alg>/<hex>/` (all referrers of a subject).
    pub(super) fn referrers(&self, repo: &RepoName, subject: &Digest) -> String {
        format!(
            "{}_referrers/{}/{}/",
            self.repository(repo),
            subject.algorithm(),
            subject.hex()
        )
    }

    /// `repositories/<name...>/_referrers/<alg>/<hex>/<alg>/<hex>`.
    pub(super) fn referrer(&self, repo: &RepoName, subject: &Digest, referrer: &Digest) -> String {
        format!(
            "{}{}/{}",
            self.referrers(repo, subject),
            referrer.algorithm(),
            referrer.hex()
        )
    }

    /// `_system/<key>`.
    pub(super) fn record(&self, key: &RecordKey) -> String {
        format!("{}_system/{}", self.prefix, key.as_str())
    }

    /// `_system/gc/touch/<alg>/<hex>`: when a blob was last relied upon.
    pub(super) fn touch(&self, digest: &Digest) -> String {
        format!(
            "{}{}/{}",
            self.touches_root(),
            digest.algorithm(),
            digest.hex()
        )
    }

    /// `_system/gc/touch/` (every touch marker).
    pub(super) fn touches_root(&self) -> String {
        format!("{}_system/gc/touch/", self.prefix)
    }

    /// `_system/gc/trash/<alg>/<hex>`: a blob set aside while it is being collected.
    pub(super) fn trash(&self, digest: &Digest) -> String {
        format!(
            "{}{}/{}",
            self.trash_root(),
            digest.algorithm(),
            digest.hex()
        )
    }

    /// `_system/gc/trash/` (every blob set aside).
    pub(super) fn trash_root(&self) -> String {
        format!("{}_system/gc/trash/", self.prefix)
    }

    /// `uploads/` (every session).
    pub(super) fn uploads_root(&self) -> String {
        format!("{}{UPLOADS}", self.prefix)
    }

    /// `uploads/<id>/` (everything a session owns).
    pub(super) fn upload(&self, id: &UploadId) -> String {
        format!("{}{UPLOADS}{}/", self.prefix, id.as_str())
    }

    /// `uploads/<id>/info`: the session record.
    pub(super) fn upload_info(&self, id: &UploadId) -> String {
        format!("{}info", self.upload(id))
    }

    /// `uploads/<id>/data/<segment>`: one segment of the session bytes.
    pub(super) fn upload_segment(&self, id: &UploadId, segment: &str) -> String {
        format!("{}data/{segment}", self.upload(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::sha256_of(b"x")
    }

    #[test]
    fn prefix_is_normalized() {
        assert_eq!(Keys::new("").prefix(), "");
        assert_eq!(Keys::new("/").prefix(), "");
        assert_eq!(Keys::new("a/b").prefix(), "a/b/");
        assert_eq!(Keys::new("/a/b/").prefix(), "a/b/");
    }

    #[test]
    fn layout_matches_the_documented_tree() {
        let keys = Keys::new("region");
        let d = digest();
        let hex = d.hex().to_owned();
        let repo: RepoName = "team/app".parse().unwrap();
        let tag: Tag = "v1".parse().unwrap();
        let id = UploadId::generate();
        assert_eq!(
            keys.blob(&d),
            format!("region/blobs/sha256/{}/{hex}", &hex[..2])
        );
        assert_eq!(
            keys.layer_link(&repo, &d),
            format!("region/repositories/team/app/_layers/sha256/{hex}")
        );
        assert_eq!(
            keys.manifest_link(&repo, &d),
            format!("region/repositories/team/app/_manifests/sha256/{hex}")
        );
        assert_eq!(
            keys.tag(&repo, &tag),
            "region/repositories/team/app/_tags/v1"
        );
        assert_eq!(
            keys.referrer(&repo, &d, &d),
            format!("region/repositories/team/app/_referrers/sha256/{hex}/sha256/{hex}")
        );
        assert_eq!(keys.upload_info(&id), format!("region/uploads/{id}/info"));
        assert_eq!(
            keys.upload_segment(&id, "s"),
            format!("region/uploads/{id}/data/s")
        );
    }
}
