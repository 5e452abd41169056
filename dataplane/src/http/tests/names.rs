//! Routing, repository names, digests and the error boundary.

use axum::http::{Method, StatusCode};

use super::TestApp;

#[tokio::test]
async fn base_endpoint_answers_empty_json() {
    let app = TestApp::new();
    for uri in ["/v2/", "/v2"] {
        let r = app.call(Method::GET, uri, "").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json(), serde_json::json!({}));
    }
    assert_eq!(
        app.call(Method::HEAD, "/v2/", "").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn invalid_repository_names_are_refused() {
    let app = TestApp::new();
    let long = "a".repeat(256);
    let cases = [
        "Upper/case".to_owned(),
        "a/../b".to_owned(),
        "..".to_owned(),
        "a//b".to_owned(),
        "/a".to_owned(),
        "a/".to_owned(),
        long,
        "%2e%2e".to_owned(),
        "a/%2e%2e/b".to_owned(),
        "a%2fb".to_owned(),
        "a%2Fb".to_owned(),
        "a%252fb".to_owned(),
        "a%00b".to_owned(),
    ];
    for name in cases {
        for (method, uri) in [
            (Method::GET, format!("/v2/{name}/manifests/latest")),
            (
                Method::HEAD,
                format!("/v2/{name}/blobs/sha256:{}", "0".repeat(64)),
            ),
            (Method::POST, format!("/v2/{name}/blobs/uploads/")),
            (Method::GET, format!("/v2/{name}/tags/list")),
        ] {
            let r = app.call(method.clone(), &uri, "").await;
            if method == Method::HEAD {
                assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
            } else {
                r.assert_error(StatusCode::BAD_REQUEST, "NAME_INVALID");
            }
        }
    }
    // Nothing was created for any of them.
    assert!(app.storage.repositories().await.unwrap().is_empty());
    assert!(app.storage.uploads().await.unwrap().is_empty());
    // The longest valid name is fine.
    let ok = "a".repeat(255);
    let r = app
        .call(Method::POST, &format!("/v2/{ok}/blobs/uploads/"), "")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_oci_errors() {
    let app = TestApp::new();
    for uri in [
        "/v2/a",
        "/v2/a/b",
        "/v2/a/tags",
        "/v2/a/blobs/",
        "/v2/manifests/x",
    ] {
        app.call(Method::GET, uri, "")
            .await
            .assert_error(StatusCode::NOT_FOUND, "UNSUPPORTED");
    }
    for (method, uri) in [
        (Method::POST, "/v2/a/manifests/latest"),
        (Method::PUT, "/v2/a/blobs/uploads/"),
        (Method::PATCH, "/v2/a/tags/list"),
        (Method::DELETE, "/v2/_catalog"),
        (Method::POST, "/v2/"),
    ] {
        app.call(method, uri, "")
            .await
            .assert_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED");
    }
}

#[tokio::test]
async fn invalid_and_unsupported_digests_are_refused() {
    let app = TestApp::new();
    for digest in [
        "sha256:zz".to_owned(),
        format!("sha256:{}", "A".repeat(64)),
        format!("sha256:{}", "0".repeat(63)),
        "md5:d41d8cd98f00b204e9800998ecf8427e".to_owned(),
        format!("sha384:{}", "0".repeat(96)),
        "nocolon".to_owned(),
        format!("sha256%3A{}", "0".repeat(64)),
    ] {
        app.call(Method::GET, &format!("/v2/a/blobs/{digest}"), "")
            .await
            .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
        app.call(
            Method::POST,
            &format!("/v2/a/blobs/uploads/?digest={digest}"),
            "data",
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
        app.call(Method::GET, &format!("/v2/a/referrers/{digest}"), "")
            .await
            .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    }
    // A manifest reference containing ':' is a digest, and must be a valid one.
    app.call(Method::GET, "/v2/a/manifests/sha256:abc", "")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    assert!(app.storage.uploads().await.unwrap().is_empty());
}
