//! Upload sessions: chunked, streamed, monolithic, resumable, and refused bad input.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use bytes::Bytes;
use futures_util::stream;

use super::TestApp;
use crate::oci::Digest;
use crate::storage::fs::FsStorage;

/// Opens a session in `repo`; returns its `Location`.
async fn open(app: &TestApp, repo: &str) -> String {
    let r = app
        .call(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), "")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), Some("0-0"));
    assert_eq!(r.header("content-length"), Some("0"));
    let location = r.header("location").unwrap().to_owned();
    let id = r.header("docker-upload-uuid").unwrap();
    assert_eq!(location, format!("/v2/{repo}/blobs/uploads/{id}"));
    location
}

async fn patch(app: &TestApp, location: &str, range: &str, data: &'static [u8]) -> super::Reply {
    let len = data.len().to_string();
    app.call_with(
        Method::PATCH,
        location,
        &[("content-range", range), ("content-length", &len)],
        data,
    )
    .await
}

async fn status_range(app: &TestApp, location: &str) -> String {
    let r = app.call(Method::GET, location, "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("location"), Some(location));
    assert!(r.header("docker-upload-uuid").is_some());
    r.header("range").unwrap().to_owned()
}

#[tokio::test]
async fn chunked_upload_with_out_of_order_chunk() {
    let app = TestApp::new();
    let location = open(&app, "chunks").await;
    let r = patch(&app, &location, "0-4", b"01234").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), Some("0-4"));
    assert_eq!(r.header("location"), Some(location.as_str()));
    assert!(r.header("docker-upload-uuid").is_some());
    // A chunk that skips ahead is refused with the current range.
    let r = patch(&app, &location, "10-14", b"abcde").await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("range"), Some("0-4"));
    assert_eq!(r.header("location"), Some(location.as_str()));
    assert_eq!(r.error_code(), "BLOB_UPLOAD_INVALID");
    // So is one that overlaps.
    let r = patch(&app, &location, "3-7", b"34567").await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let r = patch(&app, &location, "5-9", b"56789").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(status_range(&app, &location).await, "0-9");
    // The last chunk comes with the PUT.
    let digest = Digest::sha256_of(b"0123456789ABC");
    let r = app
        .call_with(
            Method::PUT,
            &format!("{location}?digest={digest}"),
            &[("content-range", "10-12"), ("content-length", "3")],
            "ABC",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/chunks/blobs/{digest}").as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    let r = app
        .call(Method::GET, &format!("/v2/chunks/blobs/{digest}"), "")
        .await;
    assert_eq!(&r.body[..], b"0123456789ABC");
    // The session is gone.
    app.call(Method::GET, &location, "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn streamed_patch_without_length_headers() {
    let app = TestApp::new();
    let location = open(&app, "stream").await;
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..8)
        .map(|i| Ok(Bytes::from(vec![b'a' + i; 1000])))
        .collect();
    let r = app
        .call(
            Method::PATCH,
            &location,
            Body::from_stream(stream::iter(chunks)),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), Some("0-7999"));
    let expected: Vec<u8> = (0..8).flat_map(|i| vec![b'a' + i; 1000]).collect();
    let digest = Digest::sha256_of(&expected);
    let r = app
        .call(Method::PUT, &format!("{location}?digest={digest}"), "")
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app
        .call(Method::GET, &format!("/v2/stream/blobs/{digest}"), "")
        .await;
    assert_eq!(r.body.len(), 8000);
    assert_eq!(&r.body[..], &expected[..]);
}

#[tokio::test]
async fn single_put_upload_and_empty_blob() {
    let app = TestApp::new();
    let location = open(&app, "mono").await;
    let digest = Digest::sha256_of(b"whole blob");
    let r = app
        .call(
            Method::PUT,
            &format!("{location}?digest={digest}"),
            "whole blob",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let empty = Digest::sha256_of(b"");
    let r = app
        .call(
            Method::POST,
            &format!("/v2/mono/blobs/uploads/?digest={empty}"),
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = app
        .call(Method::HEAD, &format!("/v2/mono/blobs/{empty}"), "")
        .await;
    assert_eq!(r.header("content-length"), Some("0"));
}

#[tokio::test]
async fn digest_mismatch_stores_nothing() {
    let app = TestApp::new();
    let declared = Digest::sha256_of(b"what the client claims");
    let actual = Digest::sha256_of(b"what it sends");
    // Monolithic.
    app.call(
        Method::POST,
        &format!("/v2/m/blobs/uploads/?digest={declared}"),
        "what it sends",
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    // Session.
    let location = open(&app, "m").await;
    assert_eq!(
        patch(&app, &location, "0-12", b"what it sends")
            .await
            .status,
        StatusCode::ACCEPTED
    );
    app.call(Method::PUT, &format!("{location}?digest={declared}"), "")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    for d in [&declared, &actual] {
        assert_eq!(app.storage.blob_size(d).await.unwrap(), None, "{d}");
        let r = app
            .call(Method::HEAD, &format!("/v2/m/blobs/{d}"), "")
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    // The rejected session and the monolithic one are gone.
    assert!(app.storage.uploads().await.unwrap().is_empty());
}

#[tokio::test]
async fn missing_or_invalid_digest_on_finish() {
    let app = TestApp::new();
    let location = open(&app, "d").await;
    app.call(Method::PUT, &location, "")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    app.call(Method::PUT, &format!("{location}?digest=sha256:123"), "")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    // The session is still usable.
    assert_eq!(status_range(&app, &location).await, "0-0");
}

#[tokio::test]
async fn unknown_upload_sessions() {
    let app = TestApp::new();
    let foreign = open(&app, "owner").await;
    let foreign_id = foreign.rsplit('/').next().unwrap();
    for id in [
        uuid::Uuid::new_v4().to_string(),
        "not-a-uuid".to_owned(),
        "..".to_owned(),
        foreign_id.to_uppercase(),
        foreign_id.to_owned(), // exists, but in another repository
    ] {
        let uri = format!("/v2/intruder/blobs/uploads/{id}");
        for method in [Method::GET, Method::PATCH, Method::PUT, Method::DELETE] {
            let uri = if method == Method::PUT {
                format!("{uri}?digest={}", Digest::sha256_of(b""))
            } else {
                uri.clone()
            };
            app.call(method.clone(), &uri, "")
                .await
                .assert_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
        }
    }
    // The owner's session is untouched.
    assert_eq!(status_range(&app, &foreign).await, "0-0");
}

#[tokio::test]
async fn cancel_removes_the_session() {
    let app = TestApp::new();
    let location = open(&app, "c").await;
    patch(&app, &location, "0-2", b"abc").await;
    let r = app.call(Method::DELETE, &location, "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.call(Method::GET, &location, "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn bodies_ending_early_leave_the_session_unchanged() {
    let app = TestApp::new();
    let location = open(&app, "short").await;
    assert_eq!(
        patch(&app, &location, "0-3", b"good").await.status,
        StatusCode::ACCEPTED
    );
    // Content-Length announces more than the body holds.
    let r = app
        .call_with(
            Method::PATCH,
            &location,
            &[("content-length", "100")],
            "only ten b",
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID");
    assert_eq!(status_range(&app, &location).await, "0-3");
    // Content-Range announces more than the body holds.
    let r = app
        .call_with(
            Method::PATCH,
            &location,
            &[("content-range", "4-99")],
            "short",
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID");
    assert_eq!(status_range(&app, &location).await, "0-3");
    // The body stream fails midway.
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"partial")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ];
    let r = app
        .call(
            Method::PATCH,
            &location,
            Body::from_stream(stream::iter(chunks)),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID");
    assert_eq!(status_range(&app, &location).await, "0-3");
    // Content-Length disagreeing with Content-Range.
    let r = app
        .call_with(
            Method::PATCH,
            &location,
            &[("content-range", "4-7"), ("content-length", "3")],
            "abc",
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "SIZE_INVALID");
    // A monolithic push whose body ends early stores nothing.
    let digest = Digest::sha256_of(b"complete body");
    let r = app
        .call_with(
            Method::POST,
            &format!("/v2/short/blobs/uploads/?digest={digest}"),
            &[("content-length", "13")],
            "complete",
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID");
    assert_eq!(app.storage.blob_size(&digest).await.unwrap(), None);
    // The session still completes correctly with the rest of its data.
    assert_eq!(
        patch(&app, &location, "4-7", b"data").await.status,
        StatusCode::ACCEPTED
    );
    let digest = Digest::sha256_of(b"gooddata");
    let r = app
        .call(Method::PUT, &format!("{location}?digest={digest}"), "")
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

#[tokio::test]
async fn sessions_resume_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let location = {
        let storage = FsStorage::open(dir.path()).await.unwrap();
        let app = TestApp::over(Arc::new(storage));
        let location = open(&app, "resume/me").await;
        assert_eq!(
            patch(&app, &location, "0-5", b"before").await.status,
            StatusCode::ACCEPTED
        );
        location
    };
    // A new process: new storage handle, new registry, nothing in memory.
    let storage = FsStorage::open(dir.path()).await.unwrap();
    let app = TestApp::over(Arc::new(storage));
    assert_eq!(status_range(&app, &location).await, "0-5");
    let r = patch(&app, &location, "6-10", b"after").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), Some("0-10"));
    let digest = Digest::sha256_of(b"beforeafter");
    let r = app
        .call(Method::PUT, &format!("{location}?digest={digest}"), "")
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app
        .call(Method::GET, &format!("/v2/resume/me/blobs/{digest}"), "")
        .await;
    assert_eq!(&r.body[..], b"beforeafter");
}

#[tokio::test]
async fn concurrent_pushes_of_the_same_blob() {
    let app = Arc::new(TestApp::new());
    let data: &'static [u8] = b"the same layer, pushed by many clients";
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                let repo = format!("team/r{}", i % 4);
                app.push_blob(&repo, data).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let digest = Digest::sha256_of(data);
    for i in 0..4 {
        let r = app
            .call(Method::GET, &format!("/v2/team/r{i}/blobs/{digest}"), "")
            .await;
        assert_eq!(&r.body[..], data);
    }
}
