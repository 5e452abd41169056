//! Tags list, catalog and referrers, with pagination and filters.

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::{OCI_MANIFEST, TestApp};
use crate::oci::Digest;

#[tokio::test]
async fn tags_list_paginates_with_link() {
    let app = TestApp::new();
    let (body, _) = app.push_image("tagged", "t0", "x").await;
    for i in 1..5 {
        let r = app
            .put_manifest("tagged", &format!("t{i}"), OCI_MANIFEST, &body)
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = app.call(Method::GET, "/v2/tagged/tags/list", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"name": "tagged", "tags": ["t0", "t1", "t2", "t3", "t4"]})
    );
    assert!(r.header("link").is_none());
    let r = app.call(Method::GET, "/v2/tagged/tags/list?n=2", "").await;
    assert_eq!(r.json()["tags"], json!(["t0", "t1"]));
    assert_eq!(
        r.header("link"),
        Some(r#"</v2/tagged/tags/list?n=2&last=t1>; rel="next""#)
    );
    let r = app
        .call(Method::GET, "/v2/tagged/tags/list?n=2&last=t1", "")
        .await;
    assert_eq!(r.json()["tags"], json!(["t2", "t3"]));
    let r = app
        .call(Method::GET, "/v2/tagged/tags/list?n=2&last=t3", "")
        .await;
    assert_eq!(r.json()["tags"], json!(["t4"]));
    assert!(r.header("link").is_none());
    let r = app.call(Method::GET, "/v2/tagged/tags/list?n=0", "").await;
    assert_eq!(r.json()["tags"], json!([]));
    let r = app
        .call(Method::GET, "/v2/tagged/tags/list?last=t2", "")
        .await;
    assert_eq!(r.json()["tags"], json!(["t3", "t4"]));
    for bad in ["-1", "x", "1.5"] {
        let r = app
            .call(Method::GET, &format!("/v2/tagged/tags/list?n={bad}"), "")
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    app.call(Method::GET, "/v2/unknown/tags/list", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
}

#[tokio::test]
async fn catalog_paginates() {
    let app = TestApp::new();
    for repo in ["c/one", "a/two", "b/three"] {
        app.push_image(repo, "latest", repo).await;
    }
    // A repository holding only blobs is not listed.
    app.push_blob("d/blobs-only", b"x").await;
    let r = app.call(Method::GET, "/v2/_catalog", "").await;
    assert_eq!(
        r.json(),
        json!({"repositories": ["a/two", "b/three", "c/one"]})
    );
    let r = app.call(Method::GET, "/v2/_catalog?n=1", "").await;
    assert_eq!(r.json()["repositories"], json!(["a/two"]));
    assert_eq!(
        r.header("link"),
        Some(r#"</v2/_catalog?n=1&last=a/two>; rel="next""#)
    );
    let r = app
        .call(Method::GET, "/v2/_catalog?n=1&last=a/two", "")
        .await;
    assert_eq!(r.json()["repositories"], json!(["b/three"]));
    let r = app
        .call(Method::GET, "/v2/_catalog?n=5&last=b/three", "")
        .await;
    assert_eq!(r.json()["repositories"], json!(["c/one"]));
    assert!(r.header("link").is_none());
}

#[tokio::test]
async fn referrers_with_and_without_filter() {
    let app = TestApp::new();
    let (_, subject) = app.push_image("ref", "v1", "s").await;
    let empty = Digest::sha256_of(b"{}");
    let mut pushed = Vec::new();
    for (i, artifact_type) in [
        "application/x-sbom",
        "application/x-sig",
        "application/x-sbom",
    ]
    .iter()
    .enumerate()
    {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":1}},"annotations":{{"n":"{i}"}}}}"#
        );
        let r = app
            .put_manifest("ref", &format!("a{i}"), OCI_MANIFEST, &body)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        assert_eq!(r.header("oci-subject"), Some(subject.to_string().as_str()));
        pushed.push(Digest::sha256_of(body.as_bytes()).to_string());
    }
    let r = app
        .call(Method::GET, &format!("/v2/ref/referrers/{subject}"), "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    assert!(r.header("oci-filters-applied").is_none());
    let index = r.json();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let mut digests: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    digests.sort();
    pushed.sort();
    assert_eq!(digests, pushed);
    let r = app
        .call(
            Method::GET,
            &format!("/v2/ref/referrers/{subject}?artifactType=application/x-sbom"),
            "",
        )
        .await;
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let manifests = r.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(manifests.len(), 2);
    assert!(
        manifests
            .iter()
            .all(|m| m["artifactType"] == "application/x-sbom")
    );
    // An unknown subject, or another repository, has no referrers.
    let unknown = Digest::sha256_of(b"unknown");
    for uri in [
        format!("/v2/ref/referrers/{unknown}"),
        format!("/v2/elsewhere/referrers/{subject}"),
    ] {
        let r = app.call(Method::GET, &uri, "").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["manifests"], json!([]));
    }
}
