//! Blob endpoints: `GET`/`HEAD` (with ranges) and `DELETE` of `/v2/<name>/blobs/<digest>`.

use axum::body::Body;
use axum::http::StatusCode;
use axum::http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use axum::response::Response;

use super::auth::Action;
use super::error::{ApiError, ErrorCode};
use super::{CONTENT_DIGEST_HEADER, Ctx, empty, headers, route, set_header};
use crate::oci::{Digest, RepoName};

/// Parses a digest from a path or query, as the client's error.
pub(super) fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    route::digest(s).map_err(|e| ApiError::new(ErrorCode::DigestInvalid, e.to_string()))
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`.
pub(super) async fn get(
    ctx: &Ctx,
    name: &RepoName,
    digest: &str,
    with_body: bool,
) -> Result<Response, ApiError> {
    ctx.access.require(name, Action::Pull)?;
    let digest = parse_digest(digest)?;
    if with_body && let Some(url) = ctx.registry.blob_download_url(name, &digest).await? {
        // The client fetches the bytes (and any range) from the bucket itself.
        let mut r = empty(StatusCode::TEMPORARY_REDIRECT);
        set_header(&mut r, LOCATION, url);
        set_header(&mut r, CONTENT_DIGEST_HEADER, digest.to_string());
        return Ok(r);
    }
    let mut r = if with_body {
        let range = headers::blob_range(&ctx.headers);
        let read = ctx.registry.blob_open(name, &digest, range).await?;
        let (status, length) = match &read.range {
            Some(range) => (StatusCode::PARTIAL_CONTENT, range.end - range.start),
            None => (StatusCode::OK, read.size),
        };
        let mut r = Response::new(Body::from_stream(read.stream));
        *r.status_mut() = status;
        if let Some(range) = &read.range {
            set_header(
                &mut r,
                CONTENT_RANGE,
                format!("bytes {}-{}/{}", range.start, range.end - 1, read.size),
            );
        }
        set_header(&mut r, CONTENT_LENGTH, length.to_string());
        r
    } else {
        let size = ctx.registry.blob_stat(name, &digest).await?;
        let mut r = Response::new(Body::empty());
        set_header(&mut r, CONTENT_LENGTH, size.to_string());
        r
    };
    set_header(&mut r, CONTENT_TYPE, "application/octet-stream");
    set_header(&mut r, ACCEPT_RANGES, "bytes");
    set_header(&mut r, CONTENT_DIGEST_HEADER, digest.to_string());
    Ok(r)
}

/// `DELETE /v2/<name>/blobs/<digest>`: unlinks the blob from the repository.
pub(super) async fn delete(ctx: &Ctx, name: &RepoName, digest: &str) -> Result<Response, ApiError> {
    ctx.access.require(name, Action::Delete)?;
    let digest = parse_digest(digest)?;
    ctx.registry.blob_delete(name, &digest).await?;
    Ok(empty(StatusCode::ACCEPTED))
}
