//! Listing endpoints: tags list, catalog and referrers, with `n`/`last` pagination.

use axum::Json;
use axum::http::header::{CONTENT_TYPE, LINK};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::blobs::parse_digest;
use super::error::{ApiError, ErrorCode};
use super::{Ctx, OCI_FILTERS_APPLIED_HEADER, set_header};
use crate::auth::Action;
use crate::oci::RepoName;
use crate::registry::{Listing, Page};

/// The `n`/`last` query parameters.
fn page(ctx: &Ctx) -> Result<Page, ApiError> {
    let n = match ctx.query("n") {
        None => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            ApiError::new(ErrorCode::Unsupported, "n must be a non-negative integer")
                .with_status(axum::http::StatusCode::BAD_REQUEST)
        })?),
    };
    let last = ctx.query("last").map(str::to_owned);
    Ok(Page { n, last })
}

/// Adds `Link: <path?n=N&last=X>; rel="next"` when entries remain after this page.
fn link_next<T: AsRef<str>>(r: &mut Response, path: &str, page: &Page, listing: &Listing<T>) {
    if !listing.more {
        return;
    }
    let Some(last) = listing.items.last() else {
        return;
    };
    let n = page.n.unwrap_or(listing.items.len());
    set_header(
        r,
        LINK,
        format!("<{path}?n={n}&last={}>; rel=\"next\"", last.as_ref()),
    );
}

/// `GET /v2/<name>/tags/list`.
pub(super) async fn tags(ctx: &Ctx, name: &RepoName) -> Result<Response, ApiError> {
    ctx.access.require(name, Action::Pull)?;
    let page = page(ctx)?;
    let listing = ctx.registry.tags(name, &page).await?;
    let tags: Vec<&str> = listing.items.iter().map(|t| t.as_str()).collect();
    let mut r = Json(json!({ "name": name.as_str(), "tags": tags })).into_response();
    let names: Listing<&str> = Listing {
        items: tags,
        more: listing.more,
    };
    link_next(&mut r, &format!("/v2/{name}/tags/list"), &page, &names);
    Ok(r)
}

/// `GET /v2/_catalog`: the repositories the caller may pull from.
pub(super) async fn catalog(ctx: &Ctx) -> Result<Response, ApiError> {
    ctx.access.require_catalog()?;
    let page = page(ctx)?;
    let listing = ctx
        .registry
        .catalog(&page, |repo| ctx.access.lists(repo))
        .await?;
    let repos: Vec<&str> = listing.items.iter().map(RepoName::as_str).collect();
    let mut r = Json(json!({ "repositories": repos })).into_response();
    let names: Listing<&str> = Listing {
        items: repos,
        more: listing.more,
    };
    link_next(&mut r, "/v2/_catalog", &page, &names);
    Ok(r)
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=]`: an image index of the referrers.
pub(super) async fn referrers(
    ctx: &Ctx,
    name: &RepoName,
    digest: &str,
) -> Result<Response, ApiError> {
    ctx.access.require(name, Action::Pull)?;
    let subject = parse_digest(digest)?;
    let artifact_type = ctx.query("artifactType");
    let manifests = ctx
        .registry
        .referrers(name, &subject, artifact_type)
        .await?;
    let media_type = "application/vnd.oci.image.index.v1+json";
    let mut r = Json(json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    }))
    .into_response();
    set_header(&mut r, CONTENT_TYPE, media_type);
    if artifact_type.is_some() {
        set_header(&mut r, OCI_FILTERS_APPLIED_HEADER, "artifactType");
    }
    Ok(r)
}
