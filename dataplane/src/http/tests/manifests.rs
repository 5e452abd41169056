//! Manifests: every media type, validation, negotiation, subjects and deletes.

use axum::http::{Method, StatusCode};

use super::{
    DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, TestApp, image_manifest, index,
};
use crate::oci::{Digest, DigestAlgorithm};
use crate::registry::MAX_MANIFEST_SIZE;

#[tokio::test]
async fn image_manifest_round_trip_by_tag_and_digest() {
    let app = TestApp::new();
    let (body, digest) = app.push_image("img", "v1", "a").await;
    for reference in ["v1".to_owned(), digest.to_string()] {
        let uri = format!("/v2/img/manifests/{reference}");
        let r = app.call(Method::GET, &uri, "").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(
            r.header("docker-content-digest"),
            Some(digest.to_string().as_str())
        );
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(&r.body[..], body.as_bytes());
        let r = app.call(Method::HEAD, &uri, "").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert!(r.body.is_empty());
    }
    app.call(Method::GET, "/v2/img/manifests/v2", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    // Pushing by digest works and yields the same digest.
    let r = app
        .put_manifest("img", &digest.to_string(), OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/img/manifests/{digest}").as_str())
    );
    // Another repository cannot see it.
    let r = app
        .call(Method::HEAD, &format!("/v2/other/manifests/{digest}"), "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_manifest_media_type_is_stored_unchanged() {
    let app = TestApp::new();
    let config = app.push_blob("types", b"{\"c\":1}").await;
    let layer = app.push_blob("types", b"layer").await;
    // Docker schema 2 manifest.
    let docker = image_manifest(&config, &layer, "").replace(OCI_MANIFEST, DOCKER_MANIFEST);
    let r = app
        .put_manifest("types", "docker", DOCKER_MANIFEST, &docker)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let docker_digest = Digest::sha256_of(docker.as_bytes());
    // OCI manifest, pretty-printed with unknown fields: bytes are kept as pushed.
    let oci = image_manifest(&config, &layer, r#",  "x-unknown": {"kept": true}"#);
    let r = app.put_manifest("types", "oci", OCI_MANIFEST, &oci).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let oci_digest = Digest::sha256_of(oci.as_bytes());
    // OCI index and Docker manifest list over them.
    let oci_index = index(OCI_INDEX, OCI_MANIFEST, &[&oci_digest]);
    let r = app
        .put_manifest("types", "index", OCI_INDEX, &oci_index)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let list = index(DOCKER_LIST, DOCKER_MANIFEST, &[&docker_digest]);
    let r = app.put_manifest("types", "list", DOCKER_LIST, &list).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    for (tag, media_type, body) in [
        ("docker", DOCKER_MANIFEST, &docker),
        ("oci", OCI_MANIFEST, &oci),
        ("index", OCI_INDEX, &oci_index),
        ("list", DOCKER_LIST, &list),
    ] {
        let r = app
            .call(Method::GET, &format!("/v2/types/manifests/{tag}"), "")
            .await;
        assert_eq!(r.status, StatusCode::OK, "{tag}");
        assert_eq!(r.header("content-type"), Some(media_type), "{tag}");
        assert_eq!(&r.body[..], body.as_bytes(), "{tag}");
    }
}

#[tokio::test]
async fn manifests_referencing_missing_content_are_refused() {
    let app = TestApp::new();
    let config = app.push_blob("miss", b"{}cfg").await;
    let missing = Digest::sha256_of(b"never pushed");
    let body = image_manifest(&config, &missing, "");
    let r = app.put_manifest("miss", "v1", OCI_MANIFEST, &body).await;
    r.assert_error(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(
        r.json()["errors"][0]["detail"]["digest"],
        missing.to_string()
    );
    let body = index(OCI_INDEX, OCI_MANIFEST, &[&missing]);
    let r = app.put_manifest("miss", "idx", OCI_INDEX, &body).await;
    r.assert_error(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN");
    // Nothing was recorded.
    app.call(Method::GET, "/v2/miss/manifests/v1", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    assert!(
        app.storage
            .tags(&TestApp::repo("miss"))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn malformed_and_mistyped_manifests_are_refused() {
    let app = TestApp::new();
    let config = app.push_blob("bad", b"cfg").await;
    let layer = app.push_blob("bad", b"lyr").await;
    let good = image_manifest(&config, &layer, "");
    let cases = [
        (OCI_MANIFEST, "{not json".to_owned()),
        (OCI_MANIFEST, "[1,2]".to_owned()),
        (OCI_MANIFEST, good.replace("\"schemaVersion\":2", "\"schemaVersion\":3")),
        (OCI_MANIFEST, good.replace("\"config\"", "\"konfig\"")),
        (OCI_INDEX, good.clone()),
        (DOCKER_MANIFEST, good.clone()),
        ("text/plain", good.clone()),
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            r#"{"schemaVersion":1,"name":"bad","tag":"v1","architecture":"amd64","fsLayers":[],"history":[],"signatures":[]}"#
                .to_owned(),
        ),
        (
            "application/vnd.docker.distribution.manifest.v1+json",
            r#"{"schemaVersion":1,"name":"bad","tag":"v1","fsLayers":[]}"#.to_owned(),
        ),
        (OCI_MANIFEST, good.replace("\"size\":7", "\"size\":-7")),
        (OCI_MANIFEST, good.replace(&layer.to_string(), "sha256:1234")),
    ];
    for (ct, body) in cases {
        let r = app.put_manifest("bad", "v1", ct, &body).await;
        r.assert_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID");
    }
    // Invalid tag on push.
    app.put_manifest("bad", "-tag", OCI_MANIFEST, &good)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID");
    // Push by a digest the content does not hash to.
    let wrong = Digest::sha256_of(b"other");
    app.put_manifest("bad", &wrong.to_string(), OCI_MANIFEST, &good)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    assert!(app.storage.repositories().await.unwrap().is_empty());
    // A sha512 digest reference is verified with sha512.
    let d512 = Digest::of(DigestAlgorithm::Sha512, good.as_bytes());
    let r = app
        .put_manifest("bad", &d512.to_string(), OCI_MANIFEST, &good)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d512.to_string().as_str())
    );
}

#[tokio::test]
async fn oversized_manifests_get_413() {
    let app = TestApp::new();
    let config = app.push_blob("big", b"cfg").await;
    let layer = app.push_blob("big", b"lyr").await;
    let padding = "x".repeat(MAX_MANIFEST_SIZE);
    let body = image_manifest(
        &config,
        &layer,
        &format!(r#","annotations":{{"pad":"{padding}"}}"#),
    );
    let r = app.put_manifest("big", "v1", OCI_MANIFEST, &body).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.json()["errors"][0]["code"].is_string());
    // Announced by Content-Length: refused before reading.
    let len = (MAX_MANIFEST_SIZE + 1).to_string();
    let r = app
        .call_with(
            Method::PUT,
            "/v2/big/manifests/v1",
            &[("content-type", OCI_MANIFEST), ("content-length", &len)],
            "{}",
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    app.call(Method::GET, "/v2/big/manifests/v1", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn content_negotiation_by_accept() {
    let app = TestApp::new();
    app.push_image("neg", "v1", "n").await;
    let uri = "/v2/neg/manifests/v1";
    let r = app
        .call_with(Method::GET, uri, &[("accept", DOCKER_MANIFEST)], "")
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    assert!(
        r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(OCI_MANIFEST)
    );
    for accept in [
        vec![OCI_MANIFEST],
        vec![DOCKER_MANIFEST, OCI_MANIFEST],
        vec![
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json;q=0.9",
        ],
        vec![DOCKER_MANIFEST, "*/*"],
    ] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let r = app.call_with(Method::GET, uri, &headers, "").await;
        assert_eq!(r.status, StatusCode::OK, "{accept:?}");
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
    }
}

#[tokio::test]
async fn artifact_manifests_with_subject_and_empty_config() {
    let app = TestApp::new();
    let (_, subject) = app.push_image("art", "v1", "s").await;
    let blob = app.push_blob("art", b"signature").await;
    let empty = Digest::sha256_of(b"{}");
    // The empty config was never pushed: the registry knows its content.
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.example.sig","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/octet-stream","digest":"{blob}","size":9}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":100}},"annotations":{{"org.example":"yes"}}}}"#
    );
    let digest = Digest::sha256_of(body.as_bytes());
    let r = app
        .put_manifest("art", &digest.to_string(), OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.header("oci-subject"), Some(subject.to_string().as_str()));
    let r = app
        .call(Method::GET, &format!("/v2/art/blobs/{empty}"), "")
        .await;
    assert_eq!(&r.body[..], b"{}");
    let r = app
        .call(Method::GET, &format!("/v2/art/referrers/{subject}"), "")
        .await;
    let manifests = r.json()["manifests"].clone();
    assert_eq!(manifests.as_array().unwrap().len(), 1);
    assert_eq!(manifests[0]["digest"], digest.to_string());
    assert_eq!(manifests[0]["artifactType"], "application/vnd.example.sig");
    assert_eq!(manifests[0]["annotations"]["org.example"], "yes");
    assert_eq!(manifests[0]["size"], body.len());
    assert_eq!(manifests[0]["mediaType"], OCI_MANIFEST);
}

#[tokio::test]
async fn delete_by_tag_and_by_digest() {
    let app = TestApp::new();
    let (body, digest) = app.push_image("del", "v1", "d").await;
    app.put_manifest("del", "v2", OCI_MANIFEST, &body).await;
    app.put_manifest("del", "keep", OCI_MANIFEST, &body).await;
    // By tag: only the tag goes.
    let r = app.call(Method::DELETE, "/v2/del/manifests/v1", "").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    app.call(Method::GET, "/v2/del/manifests/v1", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    let r = app
        .call(Method::GET, &format!("/v2/del/manifests/{digest}"), "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // A referrer, to be removed with its manifest.
    let empty = Digest::sha256_of(b"{}");
    let referrer = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/x-note","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":1}}}}"#
    );
    let referrer_digest = Digest::sha256_of(referrer.as_bytes());
    let r = app
        .put_manifest("del", "note", OCI_MANIFEST, &referrer)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app
        .call(
            Method::DELETE,
            &format!("/v2/del/manifests/{referrer_digest}"),
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = app
        .call(Method::GET, &format!("/v2/del/referrers/{digest}"), "")
        .await;
    assert_eq!(r.json()["manifests"], serde_json::json!([]));
    app.call(Method::GET, "/v2/del/manifests/note", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    // By digest: the manifest and every tag pointing at it go.
    let r = app
        .call(Method::DELETE, &format!("/v2/del/manifests/{digest}"), "")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    for reference in ["v2".to_owned(), "keep".to_owned(), digest.to_string()] {
        app.call(Method::GET, &format!("/v2/del/manifests/{reference}"), "")
            .await
            .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    }
    // Unknown references.
    for reference in ["nope".to_owned(), digest.to_string()] {
        app.call(
            Method::DELETE,
            &format!("/v2/del/manifests/{reference}"),
            "",
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    }
}

#[tokio::test]
async fn tag_and_digest_parameters_on_push() {
    let app = TestApp::new();
    let config = app.push_blob("params", b"cfg").await;
    let layer = app.push_blob("params", b"lyr").await;
    let body = image_manifest(&config, &layer, "");
    // By digest, with tags.
    let digest = Digest::sha256_of(body.as_bytes());
    let r = app
        .call_with(
            Method::PUT,
            &format!("/v2/params/manifests/{digest}?tag=one&tag=two"),
            &[("content-type", OCI_MANIFEST)],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let tags: Vec<&str> = r
        .headers
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["one", "two"]);
    for tag in ["one", "two"] {
        let r = app
            .call(Method::HEAD, &format!("/v2/params/manifests/{tag}"), "")
            .await;
        assert_eq!(
            r.header("docker-content-digest"),
            Some(digest.to_string().as_str())
        );
    }
    // By tag, with the digest (and so the algorithm) to use.
    let d512 = Digest::of(DigestAlgorithm::Sha512, body.as_bytes());
    let r = app
        .call_with(
            Method::PUT,
            &format!("/v2/params/manifests/five12?digest={d512}"),
            &[("content-type", OCI_MANIFEST)],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d512.to_string().as_str())
    );
    let r = app
        .call(Method::GET, "/v2/params/manifests/five12", "")
        .await;
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d512.to_string().as_str())
    );
    // Invalid tag parameters are refused, and nothing is tagged.
    app.call_with(
        Method::PUT,
        &format!("/v2/params/manifests/{digest}?tag=ok&tag=.bad"),
        &[("content-type", OCI_MANIFEST)],
        body,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID");
    app.call(Method::GET, "/v2/params/manifests/ok", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
}
