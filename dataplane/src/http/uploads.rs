//! Upload endpoints under `/v2/<name>/blobs/uploads/`: start (also monolithic and mount),
//! chunk, finish, status and cancel.

use axum::body::{Body, HttpBody};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_RANGE, LOCATION, RANGE};
use axum::response::Response;

use super::auth::Action;
use super::blobs::parse_digest;
use super::error::{ApiError, ErrorCode};
use super::{
    Ctx, UPLOAD_UUID_HEADER, blob_created, body_stream, empty, headers, route, set_header,
};
use crate::oci::RepoName;
use crate::registry::{ChunkSpec, MountOutcome, RegistryError};
use crate::storage::{UploadId, UploadInfo};

fn location(name: &RepoName, id: &UploadId) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// The `Range` value for a session holding `size` bytes (`0-0` when empty).
fn range_value(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// A response describing a session: `Location`, `Range`, `Docker-Upload-UUID`.
fn session_response(status: StatusCode, name: &RepoName, id: &UploadId, size: u64) -> Response {
    let mut r = empty(status);
    set_header(&mut r, LOCATION, location(name, id));
    set_header(&mut r, RANGE, range_value(size));
    set_header(&mut r, UPLOAD_UUID_HEADER, id.as_str());
    r
}

fn parse_id(id: &str) -> Result<UploadId, ApiError> {
    route::upload_id(id).ok_or_else(|| ApiError::from(RegistryError::UploadUnknown))
}

/// Adds the session's `Location` and id to an error about it (e.g. the 416 of an
/// out-of-order chunk, which already carries the current `Range`).
fn with_session(err: RegistryError, name: &RepoName, id: &UploadId) -> ApiError {
    let out_of_order = matches!(err, RegistryError::UploadOutOfOrder { .. });
    let api = ApiError::from(err);
    if out_of_order {
        api.with_header(LOCATION, location(name, id))
            .with_header(UPLOAD_UUID_HEADER, id.as_str())
    } else {
        api
    }
}

/// What a chunk request says about its body: where it starts and how long it is.
fn chunk_spec(ctx: &Ctx) -> Result<ChunkSpec, ApiError> {
    let length = headers::content_length(&ctx.headers)
        .map_err(|()| ApiError::new(ErrorCode::SizeInvalid, "Content-Length is not a number"))?;
    let Some(range) = ctx.headers.get(CONTENT_RANGE) else {
        return Ok(ChunkSpec {
            offset: None,
            length,
        });
    };
    let (start, range_len) = range
        .to_str()
        .ok()
        .and_then(headers::upload_content_range)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::BlobUploadInvalid,
                "Content-Range must be <start>-<end>",
            )
        })?;
    if let Some(length) = length
        && length != range_len
    {
        return Err(ApiError::new(
            ErrorCode::SizeInvalid,
            format!("Content-Length {length} disagrees with Content-Range ({range_len} bytes)"),
        ));
    }
    Ok(ChunkSpec {
        offset: Some(start),
        length: Some(range_len),
    })
}

/// `POST /v2/<name>/blobs/uploads/`: opens a session; with `?digest=` uploads the body as the
/// whole blob; with `?mount=&from=` links a blob from another repository, falling back to a
/// session when that is impossible.
pub(super) async fn start(ctx: &Ctx, name: &RepoName, body: Body) -> Result<Response, ApiError> {
    ctx.access.require(name, Action::Push)?;
    if let Some(mount) = ctx.query("mount") {
        let digest = parse_digest(mount)?;
        let from: Option<RepoName> = ctx.query("from").and_then(|f| f.parse().ok());
        // Mounting needs pull access to the source repository.
        let readable = match &from {
            Some(f) => ctx.access.mount_source_readable(name, f)?,
            None => false,
        };
        return match ctx
            .registry
            .mount(name, &digest, from.as_ref(), readable)
            .await?
        {
            MountOutcome::Mounted(_) => Ok(blob_created(name, &digest)),
            MountOutcome::Session(info) => Ok(new_session(name, &info)),
        };
    }
    if let Some(digest) = ctx.query("digest") {
        let digest = parse_digest(digest)?;
        let spec = chunk_spec(ctx)?;
        ctx.registry
            .upload_monolithic(name, &digest, spec.length, body_stream(body))
            .await?;
        return Ok(blob_created(name, &digest));
    }
    let info = ctx.registry.upload_start(name).await?;
    Ok(new_session(name, &info))
}

fn new_session(name: &RepoName, info: &UploadInfo) -> Response {
    session_response(StatusCode::ACCEPTED, name, &info.id, info.size)
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: appends a chunk.
pub(super) async fn patch(
    ctx: &Ctx,
    name: &RepoName,
    id: &str,
    body: Body,
) -> Result<Response, ApiError> {
    ctx.access.require(name, Action::Push)?;
    let id = parse_id(id)?;
    let spec = chunk_spec(ctx)?;
    let size = ctx
        .registry
        .upload_append(name, &id, spec, body_stream(body))
        .await
        .map_err(|e| with_session(e, name, &id))?;
    Ok(session_response(StatusCode::ACCEPTED, name, &id, size))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=`: appends an optional last chunk, verifies the
/// digest and publishes the blob.
pub(super) async fn put(
    ctx: &Ctx,
    name: &RepoName,
    id: &str,
    body: Body,
) -> Result<Response, ApiError> {
    ctx.access.require(name, Action::Push)?;
    let id = parse_id(id)?;
    let digest = ctx.query("digest").ok_or_else(|| {
        ApiError::new(
            ErrorCode::DigestInvalid,
            "the digest query parameter is required",
        )
    })?;
    let digest = parse_digest(digest)?;
    let spec = chunk_spec(ctx)?;
    let has_body = match spec.length {
        Some(n) => n > 0,
        None => body.size_hint().exact() != Some(0),
    };
    if has_body {
        ctx.registry
            .upload_append(name, &id, spec, body_stream(body))
            .await
            .map_err(|e| with_session(e, name, &id))?;
    }
    ctx.registry.upload_finish(name, &id, &digest).await?;
    Ok(blob_created(name, &digest))
}

/// `GET /v2/<name>/blobs/uploads/<id>`: how much the session holds.
pub(super) async fn status(ctx: &Ctx, name: &RepoName, id: &str) -> Result<Response, ApiError> {
    ctx.access.require(name, Action::Push)?;
    let id = parse_id(id)?;
    let info = ctx.registry.upload_status(name, &id).await?;
    Ok(session_response(
        StatusCode::NO_CONTENT,
        name,
        &id,
        info.size,
    ))
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`: cancels the session.
pub(super) async fn cancel(ctx: &Ctx, name: &RepoName, id: &str) -> Result<Response, ApiError> {
    ctx.access.require(name, Action::Push)?;
    let id = parse_id(id)?;
    ctx.registry.upload_cancel(name, &id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}
