//! The `/v2/` path grammar, parsed from the right on the RAW (still percent-encoded) path so
//! that an encoded `/` or `.` can never smuggle itself into a repository name.

use crate::oci::{Digest, DigestError, NameError, Reference, RepoName};
use crate::storage::UploadId;

/// An API endpoint with its path parameters, still unvalidated except for the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, String),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, String),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, String),
}

/// Why a path is not an API endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Not an endpoint of the API.
    NotFound,
    /// The endpoint is right, the repository name is not.
    Name(NameError),
}

/// Parses the part of the path after `/v2/`.
pub fn parse(rest: &str) -> Result<Route, RouteError> {
    match rest {
        "" => return Ok(Route::Base),
        "_catalog" => return Ok(Route::Catalog),
        _ => {}
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    let name_of = |k: usize| -> Result<RepoName, RouteError> {
        if n <= k {
            return Err(RouteError::NotFound);
        }
        segments[..n - k]
            .join("/")
            .parse()
            .map_err(RouteError::Name)
    };
    let tail = |k: usize| -> &[&str] { &segments[n.saturating_sub(k)..] };
    match (tail(3), tail(2)) {
        ([_, "blobs", "uploads"], _) => Ok(Route::UploadStart(name_of(2)?)),
        (["blobs", "uploads", ""], _) => Ok(Route::UploadStart(name_of(3)?)),
        (["blobs", "uploads", id], _) => Ok(Route::Upload(name_of(3)?, (*id).to_owned())),
        (_, ["tags", "list"]) => Ok(Route::Tags(name_of(2)?)),
        (_, ["manifests", r]) if !r.is_empty() => Ok(Route::Manifest(name_of(2)?, (*r).to_owned())),
        (_, ["blobs", d]) if !d.is_empty() => Ok(Route::Blob(name_of(2)?, (*d).to_owned())),
        (_, ["referrers", d]) if !d.is_empty() => {
            Ok(Route::Referrers(name_of(2)?, (*d).to_owned()))
        }
        _ => Err(RouteError::NotFound),
    }
}

/// Parses a digest path or query parameter.
pub fn digest(s: &str) -> Result<Digest, DigestError> {
    s.parse()
}

/// Parses a manifest reference path parameter.
pub fn reference(s: &str) -> Result<Reference, NameError> {
    s.parse()
}

/// Parses an upload session id path parameter.
pub fn upload_id(s: &str) -> Option<UploadId> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(parse(""), Ok(Route::Base));
        assert_eq!(parse("_catalog"), Ok(Route::Catalog));
        assert_eq!(parse("a/b/tags/list"), Ok(Route::Tags(name("a/b"))));
        assert_eq!(
            parse("a/manifests/latest"),
            Ok(Route::Manifest(name("a"), "latest".into()))
        );
        assert_eq!(
            parse("a/b/c/blobs/sha256:00"),
            Ok(Route::Blob(name("a/b/c"), "sha256:00".into()))
        );
        assert_eq!(parse("a/blobs/uploads/"), Ok(Route::UploadStart(name("a"))));
        assert_eq!(parse("a/blobs/uploads"), Ok(Route::UploadStart(name("a"))));
        assert_eq!(
            parse("a/blobs/uploads/xyz"),
            Ok(Route::Upload(name("a"), "xyz".into()))
        );
        assert_eq!(
            parse("a/referrers/sha256:00"),
            Ok(Route::Referrers(name("a"), "sha256:00".into()))
        );
        // Names may contain words that are also endpoint words.
        assert_eq!(
            parse("blobs/manifests/manifests/v1"),
            Ok(Route::Manifest(name("blobs/manifests"), "v1".into()))
        );
    }

    #[test]
    fn rejects_bad_names_and_unknown_paths() {
        for bad in [
            "A/manifests/x",
            "../manifests/x",
            "a/../b/manifests/x",
            "a//b/manifests/x",
            "/a/manifests/x",
            "a//manifests/x",
            "%2e%2e/manifests/x",
            "a%2fb/manifests/x",
            "a%2Fb/blobs/uploads/",
        ] {
            assert!(
                matches!(parse(bad), Err(RouteError::Name(_))),
                "{bad} should be an invalid name"
            );
        }
        let long = format!("{}/tags/list", "a".repeat(256));
        assert!(matches!(parse(&long), Err(RouteError::Name(_))));
        for unknown in [
            "a",
            "a/b",
            "manifests/x",
            "a/manifests/",
            "a/tags",
            "a/blobs/",
        ] {
            assert_eq!(parse(unknown), Err(RouteError::NotFound), "{unknown}");
        }
    }
}
