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

/// The kind of endpoint a `/v2/` path addresses, known from its shape alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags,
    /// `/v2/<name>/manifests/<reference>`
    Manifest,
    /// `/v2/<name>/blobs/<digest>`
    Blob,
    /// `/v2/<name>/blobs/uploads/`
    UploadStart,
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload,
    /// `/v2/<name>/referrers/<digest>`
    Referrers,
}

/// A path taken apart by the grammar, the repository name not yet parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape<'a> {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Everything before the endpoint's own segments (empty for `Base` and `Catalog`).
    pub name: &'a str,
    /// The last segment when it is a parameter (reference, digest, upload id), else empty.
    pub param: &'a str,
}

/// The one `/v2/` grammar, applied to the part of the path after `/v2/`: which endpoint it
/// addresses, read from the right (names contain `/`, and may contain endpoint words such as
/// `blobs`). `None` when the path is no endpoint. The router ([`parse`]) and the metric
/// labels ([`crate::telemetry::RouteClass`]) both use it.
pub fn shape(rest: &str) -> Option<Shape<'_>> {
    let bare = |endpoint| Shape {
        endpoint,
        name: "",
        param: "",
    };
    match rest {
        "" => return Some(bare(Endpoint::Base)),
        "_catalog" => return Some(bare(Endpoint::Catalog)),
        _ => {}
    }
    let mut from_right = rest.rsplitn(4, '/');
    let s0 = from_right.next().unwrap_or_default();
    let (s1, s2, s3) = (from_right.next(), from_right.next(), from_right.next());
    // The name before the last `k` segments, if there are more than `k` segments.
    let name = |k: usize| -> Option<&str> {
        let more = [s1, s2, s3].get(k - 1).copied().flatten().is_some();
        let tail: usize = [Some(s0), s1, s2][..k]
            .iter()
            .map(|s| s.map_or(0, str::len) + 1)
            .sum();
        more.then(|| &rest[..rest.len() - tail])
    };
    let with = |endpoint, k, param| {
        name(k).map(|name| Shape {
            endpoint,
            name,
            param,
        })
    };
    match (s2, s1, s0) {
        (_, Some("blobs"), "uploads") => with(Endpoint::UploadStart, 2, ""),
        (Some("blobs"), Some("uploads"), "") => with(Endpoint::UploadStart, 3, ""),
        (Some("blobs"), Some("uploads"), id) => with(Endpoint::Upload, 3, id),
        (_, Some("tags"), "list") => with(Endpoint::Tags, 2, ""),
        (_, Some("manifests"), r) if !r.is_empty() => with(Endpoint::Manifest, 2, r),
        (_, Some("blobs"), d) if !d.is_empty() => with(Endpoint::Blob, 2, d),
        (_, Some("referrers"), d) if !d.is_empty() => with(Endpoint::Referrers, 2, d),
        _ => None,
    }
}

/// Parses the part of the path after `/v2/`.
pub fn parse(rest: &str) -> Result<Route, RouteError> {
    let shape = shape(rest).ok_or(RouteError::NotFound)?;
    let name = || shape.name.parse::<RepoName>().map_err(RouteError::Name);
    let param = shape.param.to_owned();
    Ok(match shape.endpoint {
        Endpoint::Base => Route::Base,
        Endpoint::Catalog => Route::Catalog,
        Endpoint::Tags => Route::Tags(name()?),
        Endpoint::Manifest => Route::Manifest(name()?, param),
        Endpoint::Blob => Route::Blob(name()?, param),
        Endpoint::UploadStart => Route::UploadStart(name()?),
        Endpoint::Upload => Route::Upload(name()?, param),
        Endpoint::Referrers => Route::Referrers(name()?, param),
    })
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
