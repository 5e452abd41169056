//! Blob reads, ranges, deletes, mounts and repository isolation.

use axum::http::{Method, StatusCode};
use bytes::Bytes;

use super::TestApp;
use crate::oci::{Digest, DigestAlgorithm};

#[tokio::test]
async fn blob_get_and_head_serve_content_and_headers() {
    let app = TestApp::new();
    let data = b"hello, registry";
    let digest = app.push_blob("a/x", data).await;
    for method in [Method::GET, Method::HEAD] {
        let r = app
            .call(method.clone(), &format!("/v2/a/x/blobs/{digest}"), "")
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-length"), Some("15"));
        assert_eq!(
            r.header("docker-content-digest"),
            Some(digest.to_string().as_str())
        );
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        let expected: &[u8] = if method == Method::GET { data } else { b"" };
        assert_eq!(&r.body[..], expected);
    }
    let absent = Digest::sha256_of(b"absent");
    app.call(Method::GET, &format!("/v2/a/x/blobs/{absent}"), "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    let r = app
        .call(Method::HEAD, &format!("/v2/a/x/blobs/{absent}"), "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn range_requests() {
    let app = TestApp::new();
    let data: Vec<u8> = (0..100u8).collect();
    let digest = app.push_blob("r", &data).await;
    let uri = format!("/v2/r/blobs/{digest}");
    for (range, expected, content_range) in [
        ("bytes=10-19", &data[10..20], "bytes 10-19/100"),
        ("bytes=90-", &data[90..], "bytes 90-99/100"),
        ("bytes=-5", &data[95..], "bytes 95-99/100"),
        ("bytes=95-200", &data[95..], "bytes 95-99/100"),
    ] {
        let r = app
            .call_with(Method::GET, &uri, &[("range", range)], "")
            .await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(&r.body[..], expected, "{range}");
        assert_eq!(r.header("content-range"), Some(content_range));
        assert_eq!(
            r.header("content-length"),
            Some(expected.len().to_string().as_str())
        );
    }
    for range in ["bytes=100-", "bytes=200-300", "bytes=-0"] {
        let r = app
            .call_with(Method::GET, &uri, &[("range", range)], "")
            .await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */100"));
    }
    // A multi-range request is answered with the whole blob.
    let r = app
        .call_with(Method::GET, &uri, &[("range", "bytes=0-1,5-6")], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 100);
}

#[tokio::test]
async fn sha512_blobs() {
    let app = TestApp::new();
    let data = b"sha512 content";
    let digest = Digest::of(DigestAlgorithm::Sha512, data);
    // Monolithic.
    let r = app
        .call(
            Method::POST,
            &format!("/v2/s/blobs/uploads/?digest={digest}"),
            &data[..],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    let r = app
        .call(Method::GET, &format!("/v2/s/blobs/{digest}"), "")
        .await;
    assert_eq!(&r.body[..], data);
    // Through a session, finishing with a sha512 digest.
    let data2 = b"another sha512 blob";
    let digest2 = Digest::of(DigestAlgorithm::Sha512, data2);
    let r = app.call(Method::POST, "/v2/s/blobs/uploads/", "").await;
    let location = r.header("location").unwrap().to_owned();
    let r = app.call(Method::PATCH, &location, &data2[..]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = app
        .call(Method::PUT, &format!("{location}?digest={digest2}"), "")
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app
        .call(Method::HEAD, &format!("/v2/s/blobs/{digest2}"), "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn blobs_are_isolated_between_repositories() {
    let app = TestApp::new();
    let digest = app.push_blob("a/x", b"secret layer").await;
    for method in [Method::HEAD, Method::GET] {
        let r = app
            .call(method, &format!("/v2/b/y/blobs/{digest}"), "")
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    // Mounting from a repository that never received the blob falls back to a session.
    let r = app
        .call(
            Method::POST,
            &format!("/v2/c/z/blobs/uploads/?mount={digest}&from=b/y"),
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("/v2/c/z/blobs/uploads/")
    );
    // And nothing became visible in either.
    for repo in ["b/y", "c/z"] {
        let r = app
            .call(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"), "")
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{repo}");
    }
    // A manifest referencing it from another repository is refused.
    let r = app
        .put_manifest(
            "b/y",
            "v1",
            super::OCI_MANIFEST,
            &super::image_manifest(&digest, &digest, ""),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN");
}

#[tokio::test]
async fn cross_repository_mount() {
    let app = TestApp::new();
    let digest = app.push_blob("src/repo", b"shared layer").await;
    let r = app
        .call(
            Method::POST,
            &format!("/v2/dst/repo/blobs/uploads/?mount={digest}&from=src/repo"),
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/dst/repo/blobs/{digest}").as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    let r = app
        .call(Method::GET, &format!("/v2/dst/repo/blobs/{digest}"), "")
        .await;
    assert_eq!(&r.body[..], b"shared layer");
    // Fallbacks: unknown blob, invalid or missing `from`.
    let other = Digest::sha256_of(b"nope");
    for query in [
        format!("mount={other}&from=src/repo"),
        format!("mount={digest}&from=Bad//Name"),
        format!("mount={digest}"),
    ] {
        let r = app
            .call(
                Method::POST,
                &format!("/v2/third/blobs/uploads/?{query}"),
                "",
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{query}");
        assert!(r.header("docker-upload-uuid").is_some());
    }
    let r = app
        .call(Method::HEAD, &format!("/v2/third/blobs/{digest}"), "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn blob_delete_unlinks_from_the_repository_only() {
    let app = TestApp::new();
    let digest = app.push_blob("one", b"payload").await;
    app.push_blob("two", b"payload").await;
    let r = app
        .call(Method::DELETE, &format!("/v2/one/blobs/{digest}"), "")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = app
        .call(Method::HEAD, &format!("/v2/one/blobs/{digest}"), "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .call(Method::GET, &format!("/v2/two/blobs/{digest}"), "")
        .await;
    assert_eq!(r.body, Bytes::from_static(b"payload"));
    app.call(Method::DELETE, &format!("/v2/one/blobs/{digest}"), "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
}
