//! Manifest endpoints: `GET`/`HEAD`/`PUT`/`DELETE` of `/v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, LOCATION};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

use super::auth::Action;
use super::blobs::parse_digest;
use super::body::{self, BodyError};
use super::error::{ApiError, ErrorCode};
use super::{
    CONTENT_DIGEST_HEADER, Ctx, OCI_SUBJECT_HEADER, OCI_TAG_HEADER, empty, headers, route,
    set_header,
};
use crate::oci::{NameError, Reference, RepoName, Tag};
use crate::registry::{MAX_MANIFEST_SIZE, PutTarget, RegistryError};

/// Parses a reference; `unknown_tag` decides how an invalid tag is answered (a tag that cannot
/// exist is unknown when reading, invalid when writing).
fn parse_reference(s: &str, writing: bool) -> Result<Reference, ApiError> {
    route::reference(s).map_err(|e| match e {
        NameError::InvalidDigest(d) => ApiError::new(ErrorCode::DigestInvalid, d.to_string()),
        other if writing => ApiError::new(ErrorCode::ManifestInvalid, other.to_string()),
        _ => ApiError::from(RegistryError::ManifestUnknown),
    })
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`: the stored bytes, unchanged, when the
/// client accepts their media type.
pub(super) async fn get(
    ctx: &Ctx,
    name: &RepoName,
    reference: &str,
    with_body: bool,
) -> Result<Response, ApiError> {
    ctx.access.require(name, Action::Pull)?;
    let reference = parse_reference(reference, false)?;
    let manifest = ctx
        .registry
        .manifest_get(name, &reference, with_body)
        .await?;
    if !headers::accepts(&ctx.headers, &manifest.media_type) {
        return Err(ApiError::new(
            ErrorCode::ManifestUnknown,
            format!(
                "the manifest is stored as {}, which the Accept header does not include",
                manifest.media_type
            ),
        ));
    }
    let mut r = Response::new(manifest.body.map_or_else(Body::empty, Body::from));
    let digest = manifest.digest.to_string();
    set_header(&mut r, CONTENT_TYPE, &manifest.media_type);
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(manifest.size));
    set_header(&mut r, ETAG, format!("\"{digest}\""));
    set_header(&mut r, CONTENT_DIGEST_HEADER, digest);
    Ok(r)
}

/// `PUT /v2/<name>/manifests/<reference>`: validates and stores a manifest (at most 4 MiB).
pub(super) async fn put(
    ctx: &Ctx,
    name: &RepoName,
    reference: &str,
    body: Body,
) -> Result<Response, ApiError> {
    ctx.access.require(name, Action::Push)?;
    let reference = parse_reference(reference, true)?;
    let buf = body::read_whole(body, &ctx.headers, MAX_MANIFEST_SIZE)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { .. } => ApiError::from(RegistryError::ManifestTooLarge {
                limit: MAX_MANIFEST_SIZE,
            }),
            BodyError::BadLength => ApiError::new(ErrorCode::SizeInvalid, e.to_string()),
            BodyError::Failed(_) => ApiError::new(ErrorCode::ManifestInvalid, e.to_string()),
        })?;
    let content_type = ctx.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let target = put_target(ctx, name, &reference)?;
    let put = ctx
        .registry
        .manifest_put(name, &target, content_type, buf)
        .await?;
    let mut r = empty(StatusCode::CREATED);
    set_header(
        &mut r,
        LOCATION,
        format!("/v2/{name}/manifests/{}", put.digest),
    );
    set_header(&mut r, CONTENT_DIGEST_HEADER, put.digest.to_string());
    if let Some(subject) = &put.subject {
        set_header(&mut r, OCI_SUBJECT_HEADER, subject.to_string());
    }
    if matches!(reference, Reference::Digest(_)) {
        for tag in &target.tags {
            if let Ok(v) = HeaderValue::from_str(tag.as_str()) {
                r.headers_mut().append(OCI_TAG_HEADER, v);
            }
        }
    }
    Ok(r)
}

/// The push target: the path reference plus the `tag` parameters (extra tags for a push by
/// digest), the `digest` parameter (the digest, and so the algorithm, of a push by tag), and
/// the immutable tag patterns of the repository's namespace.
fn put_target(ctx: &Ctx, name: &RepoName, reference: &Reference) -> Result<PutTarget, ApiError> {
    let mut target = PutTarget::from_reference(reference);
    target.immutable_tags = ctx.access.immutable_tags(name).to_vec();
    for (key, value) in &ctx.query {
        match key.as_str() {
            "tag" => {
                let tag: Tag = value.parse().map_err(|e: NameError| {
                    ApiError::new(ErrorCode::ManifestInvalid, e.to_string())
                })?;
                if !target.tags.contains(&tag) {
                    target.tags.push(tag);
                }
            }
            "digest" => {
                let digest = parse_digest(value)?;
                match &target.digest {
                    Some(d) if *d != digest => {
                        return Err(ApiError::new(
                            ErrorCode::DigestInvalid,
                            "the digest parameter disagrees with the digest in the path",
                        ));
                    }
                    _ => target.digest = Some(digest),
                }
            }
            _ => {}
        }
    }
    Ok(target)
}

/// `DELETE /v2/<name>/manifests/<reference>`: a tag, or a manifest with its tags.
pub(super) async fn delete(
    ctx: &Ctx,
    name: &RepoName,
    reference: &str,
) -> Result<Response, ApiError> {
    ctx.access.require(name, Action::Delete)?;
    let reference = parse_reference(reference, false)?;
    ctx.registry.manifest_delete(name, &reference).await?;
    Ok(empty(StatusCode::ACCEPTED))
}
