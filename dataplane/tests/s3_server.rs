//! The data plane on S3 storage, as a region runs it: real `dataplane serve` processes sharing
//! one bucket of the harness's S3 server. The OCI conformance suite and real clients run
//! against it, and several replicas serve one upload and one tag between them.

mod common;

use common::{
    S3Dataplane, absolute, client, image_manifest, pseudo_random, push_blob_monolithic, sha256,
    with_query,
};
use reqwest::StatusCode;
use testkit::s3::S3Server;

fn replica(s3: &S3Server, prefix: &str) -> S3Dataplane {
    S3Dataplane::start(s3, prefix, s3.endpoint())
}

#[test]
fn oci_conformance_suite_passes_on_s3() {
    let s3 = S3Server::start();
    let server = replica(&s3, "conformance");
    let report =
        testkit::conformance::run(&server.host(), &testkit::conformance::Options::default());
    eprintln!("{}", report.summary());
    report.assert_all_passed();
    assert!(
        report.unexercised_categories().is_empty(),
        "{:?}",
        report.unexercised_categories()
    );
}

#[test]
fn real_clients_round_trip_on_s3() {
    let s3 = S3Server::start();
    let server = replica(&s3, "clients");
    let failures = round_trips(
        &server.host(),
        &[
            ("skopeo", testkit::clients::skopeo_roundtrip),
            ("crane", testkit::clients::crane_roundtrip),
            ("oras", testkit::clients::oras_roundtrip),
            ("podman", testkit::clients::podman_roundtrip),
            ("ctr", testkit::clients::ctr_roundtrip),
            ("helm", testkit::clients::helm_roundtrip),
        ],
    );
    assert!(
        failures.is_empty(),
        "client round trips failed on S3:\n{}\nserver log:\n{}",
        failures.join("\n"),
        server.log()
    );
}

/// A client round trip (`testkit::clients::*_roundtrip`), anonymous here.
type RoundTrip = fn(&str, Option<&testkit::clients::Credentials>) -> anyhow::Result<()>;

/// Runs each named round trip against `host`; returns the failures, one line each.
fn round_trips(host: &str, clients: &[(&str, RoundTrip)]) -> Vec<String> {
    clients
        .iter()
        .filter_map(|(name, roundtrip)| {
            roundtrip(host, None)
                .err()
                .map(|err| format!("{name}: {err:#}"))
        })
        .collect()
}

/// Pushes `data` as a monolithic blob through `base` and returns its digest.
async fn push_blob(http: &reqwest::Client, base: &str, repo: &str, data: &[u8]) -> String {
    let status = push_blob_monolithic(http, base, repo, data).await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    sha256(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_uploads_tags_and_blobs() {
    let s3 = S3Server::start();
    let replicas = [
        replica(&s3, "shared"),
        replica(&s3, "shared"),
        replica(&s3, "shared"),
    ];
    let urls: Vec<String> = replicas.iter().map(|r| r.url()).collect();
    let http = client();
    let repo = "team/app";

    // One upload, each chunk through a different replica, finished on a third.
    let data = pseudo_random(7, 3 * 1024 * 1024 + 17);
    let chunks: Vec<&[u8]> = data.chunks(1024 * 1024 + 5).collect();
    let response = http
        .post(format!("{}/v2/{repo}/blobs/uploads/", urls[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let mut location = response.headers()["location"].to_str().unwrap().to_owned();
    let mut offset = 0usize;
    for (i, chunk) in chunks.iter().enumerate() {
        let base = &urls[(i + 1) % 3];
        let response = http
            .patch(absolute(base, &location))
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("{}-{}", offset, offset + chunk.len() - 1),
            )
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "chunk {i}");
        offset += chunk.len();
        assert_eq!(
            response.headers()["range"].to_str().unwrap(),
            format!("0-{}", offset - 1)
        );
        location = response.headers()["location"].to_str().unwrap().to_owned();
    }
    let digest = sha256(&data);
    let response = http
        .put(with_query(
            &absolute(&urls[2], &location),
            "digest",
            &digest,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    // Pulled through every replica at once, byte for byte.
    for base in &urls {
        let body = http
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(body.status(), StatusCode::OK);
        assert_eq!(sha256(&body.bytes().await.unwrap()), digest);
    }

    // The same tag pushed from all three replicas at once: one winner, seen by everyone.
    let config = push_blob(&http, &urls[0], repo, b"{}").await;
    let mut manifests = Vec::new();
    for (i, base) in urls.iter().enumerate() {
        let layer = push_blob(&http, base, repo, format!("layer {i}").as_bytes()).await;
        let manifest = image_manifest((&config, 2), &[(&layer, 7)]);
        manifests.push((sha256(&manifest), manifest));
    }
    let pushes = manifests.iter().zip(&urls).map(|((_, manifest), base)| {
        let http = http.clone();
        let url = format!("{base}/v2/{repo}/manifests/latest");
        let manifest = manifest.clone();
        async move {
            http.put(url)
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(manifest)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    for status in futures_util::future::join_all(pushes).await {
        assert_eq!(status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    for base in &urls {
        let response = http
            .get(format!("{base}/v2/{repo}/manifests/latest"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let header = response.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.bytes().await.unwrap();
        assert_eq!(sha256(&body), header, "tag body and digest disagree");
        seen.push(header);
    }
    assert!(
        seen.iter().all(|d| d == &seen[0]),
        "replicas disagree: {seen:?}"
    );
    assert!(manifests.iter().any(|(d, _)| d == &seen[0]));
}

#[tokio::test]
async fn readiness_fails_while_the_bucket_is_unreachable() {
    let s3 = S3Server::start();
    // A port nobody listens on: the replica starts, but is not ready.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = S3Dataplane::start(&s3, "unreachable", &endpoint);
    let response = client()
        .get(format!("{}/readyz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health = client()
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    // The same configuration on the real endpoint is ready.
    let ready = replica(&s3, "reachable");
    let response = client()
        .get(format!("{}/readyz", ready.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A replica that answers blob downloads with redirects to presigned URLs valid for 5 minutes.
fn redirecting_replica(s3: &S3Server, prefix: &str) -> S3Dataplane {
    S3Dataplane::start_with(s3, prefix, s3.endpoint(), &["redirect: {ttl: 5m}"])
}

#[tokio::test]
async fn blob_downloads_redirect_to_presigned_urls_when_configured() {
    let s3 = S3Server::start();
    let server = redirecting_replica(&s3, "redirect");
    let base = server.url();
    let http = client();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let data = pseudo_random(7, 3 * 1024 * 1024 + 17);
    let digest = push_blob(&http, &base, "team/app", &data).await;
    let blob_url = format!("{base}/v2/team/app/blobs/{digest}");

    let response = no_redirects.get(&blob_url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        response.headers()["docker-content-digest"]
            .to_str()
            .unwrap(),
        digest
    );
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(s3.endpoint())
            && location.contains("X-Amz-Signature=")
            && location.contains("X-Amz-Expires=300"),
        "{location}"
    );

    // The bucket serves the bytes, and ranges, to anyone holding the URL.
    let whole = no_redirects.get(&location).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.bytes().await.unwrap(), data);
    let part = no_redirects
        .get(&location)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap(), data[1000..2000]);
    // A client following redirects sees an ordinary download.
    let followed = http
        .get(&blob_url)
        .header("Range", "bytes=5-9")
        .send()
        .await
        .unwrap();
    assert_eq!(followed.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(followed.bytes().await.unwrap(), data[5..10]);
    // A tampered URL is refused by the bucket.
    let tampered = location.replace("X-Amz-Expires=300", "X-Amz-Expires=600");
    let refused = no_redirects.get(&tampered).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // HEAD is answered by the replica; nothing is redirected before the blob is known to be
    // in the repository.
    let head = no_redirects.head(&blob_url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        data.len().to_string()
    );
    for url in [
        format!("{base}/v2/other/repo/blobs/{digest}"),
        format!("{base}/v2/team/app/blobs/{}", sha256(b"never pushed")),
    ] {
        let response = no_redirects.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{url}");
        assert!(response.headers().get("location").is_none());
        let body = response.text().await.unwrap();
        assert!(body.contains("BLOB_UNKNOWN"), "{body}");
    }
}

#[test]
fn real_clients_pull_through_redirects() {
    let s3 = S3Server::start();
    let server = redirecting_replica(&s3, "redirect-clients");
    let failures = round_trips(
        &server.host(),
        &[
            ("skopeo", testkit::clients::skopeo_roundtrip),
            ("crane", testkit::clients::crane_roundtrip),
            ("oras", testkit::clients::oras_roundtrip),
            ("ctr", testkit::clients::ctr_roundtrip),
        ],
    );
    assert!(
        failures.is_empty(),
        "client round trips failed through redirects:\n{}\nserver log:\n{}",
        failures.join("\n"),
        server.log()
    );
    // The layers did come from the bucket.
    let metrics = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let response = client()
            .get(format!("{}/metrics", server.url()))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    });
    let redirects: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                r#"dataplane_http_requests_total{route="blob",method="GET",status="307"}"#,
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        redirects >= 4,
        "{redirects} redirected blob downloads\n{metrics}"
    );
}
