//! In-process tests of the HTTP API: requests go through [`super::build_app`] with
//! `tower::ServiceExt::oneshot`, over the in-memory backend (and the filesystem backend where
//! durability matters).

mod authz;
mod blobs;
mod immutable;
mod internal;
mod listing;
mod manifests;
mod names;
mod token;
mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::{AppState, build_app};
use crate::oci::{Digest, RepoName};
use crate::registry::Registry;
use crate::storage::Storage;
use crate::storage::memory::MemoryStorage;

/// An app over a fresh in-memory storage.
struct TestApp {
    router: Router,
    storage: Arc<dyn Storage>,
}

/// A response, fully read.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The OCI error code of an error response.
    fn error_code(&self) -> String {
        let json = self.json();
        json["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an OCI error body: {json}"))
            .to_owned()
    }

    /// Asserts an OCI error with `status` and `code`.
    #[track_caller]
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {:?}", self.body);
        assert_eq!(self.error_code(), code);
        assert!(self.json()["errors"][0]["message"].is_string());
    }
}

impl TestApp {
    fn new() -> Self {
        Self::over(Arc::new(MemoryStorage::new()))
    }

    fn over(storage: Arc<dyn Storage>) -> Self {
        let registry = Arc::new(Registry::new(Arc::clone(&storage)));
        Self {
            router: build_app(AppState::open(registry)),
            storage,
        }
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(req).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(
            headers
                .get("docker-distribution-api-version")
                .and_then(|v| v.to_str().ok()),
            Some("registry/2.0"),
            "every /v2 response carries the API version"
        );
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A request without headers.
    async fn call(&self, method: Method, uri: &str, body: impl Into<Body>) -> Reply {
        self.send(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(body.into())
                .unwrap(),
        )
        .await
    }

    /// A request with headers.
    async fn call_with(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(body.into()).unwrap()).await
    }

    /// Pushes a blob monolithically; returns its digest.
    async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let digest = Digest::sha256_of(data);
        let r = self
            .call(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                Bytes::copy_from_slice(data),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        digest
    }

    /// Pushes a manifest; returns the reply.
    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &str,
    ) -> Reply {
        self.call_with(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            body.to_owned(),
        )
        .await
    }

    /// Pushes a config and a layer, then an image manifest referencing them; returns the
    /// manifest's bytes and digest.
    async fn push_image(&self, repo: &str, tag: &str, seed: &str) -> (String, Digest) {
        let config = self
            .push_blob(repo, format!("{{\"seed\":\"{seed}\"}}").as_bytes())
            .await;
        let layer = self
            .push_blob(repo, format!("layer {seed}").as_bytes())
            .await;
        let body = image_manifest(&config, &layer, "");
        let r = self.put_manifest(repo, tag, OCI_MANIFEST, &body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let digest = Digest::sha256_of(body.as_bytes());
        assert_eq!(
            r.header("docker-content-digest"),
            Some(digest.to_string().as_str())
        );
        (body, digest)
    }

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An OCI image manifest with one layer; `extra` is spliced in as more top-level fields.
fn image_manifest(config: &Digest, layer: &Digest, extra: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":10}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":7}}]{extra}}}"#
    )
}

/// An index (OCI or Docker list) of the given manifests.
fn index(media_type: &str, child_type: &str, children: &[&Digest]) -> String {
    let entries: Vec<String> = children
        .iter()
        .map(|d| {
            format!(
                r#"{{"mediaType":"{child_type}","digest":"{d}","size":100,"platform":{{"architecture":"amd64","os":"linux"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{media_type}","manifests":[{}]}}"#,
        entries.join(",")
    )
}
