//! Tag immutability on push: `namespaces[].immutableTags` patterns keep matching tags from
//! moving to another manifest, in-process, over the in-memory and filesystem backends.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use tower::ServiceExt;

use super::{OCI_MANIFEST, Reply, TestApp, image_manifest};
use crate::auth::Transport;
use crate::auth::secret::hash_secret;
use crate::config::Config;
use crate::http::{AppState, build_app};
use crate::oci::Digest;
use crate::registry::Registry;
use crate::storage::Storage;
use crate::storage::memory::MemoryStorage;

/// Namespace `acme` keeps `v*` and `release-?` tags; `scratch` keeps nothing. The credential
/// `ci` may push to both.
fn app_over(storage: Arc<dyn Storage>) -> TestApp {
    let yaml = format!(
        r#"
apiVersion: registry.thalassa.cloud/v1alpha1
kind: DataPlaneConfig
namespaces:
  - {{name: acme, immutableTags: ["v*", "release-?"]}}
  - {{name: scratch}}
credentials:
  - {{id: ci, secretHash: "{}", scope: containerRegistry, namespaces: [acme, scratch]}}
"#,
        hash_secret("ci-secret").unwrap()
    );
    let config = Config::from_yaml_str(&yaml).unwrap();
    let registry = Arc::new(Registry::new(Arc::clone(&storage)));
    let state = AppState::with_config(registry, config, Transport::default()).expect("applies");
    TestApp {
        router: build_app(state),
        storage,
    }
}

fn app() -> TestApp {
    app_over(Arc::new(MemoryStorage::new()))
}

fn ci() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ci:ci-secret")
    )
}

/// Pushes the blobs of an image seeded with `seed` and returns its manifest (not pushed).
async fn image(app: &TestApp, repo: &str, seed: &str) -> (String, Digest) {
    let auth = ci();
    let mut digests = Vec::new();
    for data in [format!("{{\"seed\":\"{seed}\"}}"), format!("layer {seed}")] {
        let digest = Digest::sha256_of(data.as_bytes());
        let r = app
            .call_with(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                &[("authorization", &auth)],
                data,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        digests.push(digest);
    }
    let body = image_manifest(&digests[0], &digests[1], "");
    let digest = Digest::sha256_of(body.as_bytes());
    (body, digest)
}

async fn put(app: &TestApp, repo: &str, reference: &str, body: &str) -> Reply {
    app.call_with(
        Method::PUT,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("authorization", &ci()), ("content-type", OCI_MANIFEST)],
        body.to_owned(),
    )
    .await
}

async fn tag_digest(app: &TestApp, repo: &str, tag: &str) -> Option<String> {
    let r = app
        .call_with(
            Method::HEAD,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("authorization", &ci()), ("accept", OCI_MANIFEST)],
            "",
        )
        .await;
    (r.status == StatusCode::OK).then(|| r.header("docker-content-digest").unwrap().to_owned())
}

#[track_caller]
fn assert_denied(r: &Reply, tag: &str, pattern: &str) {
    r.assert_error(StatusCode::FORBIDDEN, "DENIED");
    let message = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains(&format!("\"{tag}\"")), "{message}");
    assert!(message.contains(&format!("\"{pattern}\"")), "{message}");
    assert_eq!(r.json()["errors"][0]["detail"]["pattern"], pattern);
}

async fn moves_are_denied_and_the_same_digest_is_allowed(app: TestApp) {
    let (first, first_digest) = image(&app, "acme/app", "one").await;
    let (second, second_digest) = image(&app, "acme/app", "two").await;

    // Creating a protected tag is allowed, and so is pushing the same manifest again.
    assert_eq!(
        put(&app, "acme/app", "v1.0", &first).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        put(&app, "acme/app", "v1.0", &first).await.status,
        StatusCode::CREATED
    );

    // Moving it is denied, naming the tag and the pattern; the tag stays.
    let r = put(&app, "acme/app", "v1.0", &second).await;
    assert_denied(&r, "v1.0", "v*");
    assert_eq!(
        tag_digest(&app, "acme/app", "v1.0").await,
        Some(first_digest.to_string())
    );

    // A push by digest that names the tag is a move too; new tags beside it are fine.
    let r = app
        .call_with(
            Method::PUT,
            &format!("/v2/acme/app/manifests/{second_digest}?tag=v1.0"),
            &[("authorization", &ci()), ("content-type", OCI_MANIFEST)],
            second.clone(),
        )
        .await;
    assert_denied(&r, "v1.0", "v*");
    let r = app
        .call_with(
            Method::PUT,
            &format!("/v2/acme/app/manifests/{second_digest}?tag=v2.0&tag=release-2"),
            &[("authorization", &ci()), ("content-type", OCI_MANIFEST)],
            second.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = put(&app, "acme/app", "release-2", &first).await;
    assert_denied(&r, "release-2", "release-?");

    // Tags that match no pattern move freely: `?` is one character, and other namespaces
    // have their own patterns.
    for tag in ["latest", "release-10"] {
        assert_eq!(
            put(&app, "acme/app", tag, &first).await.status,
            StatusCode::CREATED
        );
        assert_eq!(
            put(&app, "acme/app", tag, &second).await.status,
            StatusCode::CREATED
        );
        assert_eq!(
            tag_digest(&app, "acme/app", tag).await,
            Some(second_digest.to_string())
        );
    }
    let (other, _) = image(&app, "scratch/app", "one").await;
    let (other2, other2_digest) = image(&app, "scratch/app", "two").await;
    assert_eq!(
        put(&app, "scratch/app", "v1.0", &other).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        put(&app, "scratch/app", "v1.0", &other2).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        tag_digest(&app, "scratch/app", "v1.0").await,
        Some(other2_digest.to_string())
    );
}

#[tokio::test]
async fn protected_tags_do_not_move_in_memory() {
    moves_are_denied_and_the_same_digest_is_allowed(app()).await;
}

#[tokio::test]
async fn protected_tags_do_not_move_on_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::storage::fs::FsStorage::open(dir.path())
        .await
        .unwrap();
    moves_are_denied_and_the_same_digest_is_allowed(app_over(Arc::new(storage))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_first_pushes_of_a_protected_tag_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::storage::fs::FsStorage::open(dir.path())
        .await
        .unwrap();
    let app = app_over(Arc::new(storage));
    let mut images = Vec::new();
    for i in 0..8 {
        images.push(image(&app, "acme/race", &format!("seed-{i}")).await);
    }
    let tasks: Vec<_> = images
        .iter()
        .map(|(body, digest)| {
            let router = app.router.clone();
            let request = Request::builder()
                .method(Method::PUT)
                .uri("/v2/acme/race/manifests/v1")
                .header("authorization", ci())
                .header("content-type", OCI_MANIFEST)
                .body(Body::from(body.clone()))
                .unwrap();
            let digest = digest.clone();
            tokio::spawn(async move { (digest, router.oneshot(request).await.unwrap().status()) })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (digest, status) = task.await.unwrap();
        match status {
            StatusCode::CREATED => winners.push(digest),
            StatusCode::FORBIDDEN => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one first push wins: {winners:?}");
    assert_eq!(
        tag_digest(&app, "acme/race", "v1").await,
        Some(winners[0].to_string())
    );
}
