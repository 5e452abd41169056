//! The number of bucket requests each registry operation costs on S3, pinned: real
//! `dataplane serve` replicas on one bucket of the harness's S3 server, counted by the data
//! plane's own `dataplane_storage_s3_requests_total` metric. A change that adds a request to a
//! hot path fails here. Also: what the caches may not do, that is hide a moved or deleted tag
//! from another replica.

mod common;
mod s3_common;

use std::collections::BTreeMap;

use common::{S3Dataplane, client, image_manifest, push_blob_monolithic, put_manifest, sha256};
use reqwest::StatusCode;
use s3_common::{raw_client, shared_server, unique_prefix};
use testkit::s3::S3Server;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// The pseudo-operation under which [`requests_of`] reports the `PutObject`s of pull records
/// (written once per item, hour and replica, after the response), apart from the hot path.
const PULL_RECORDS: &str = "PullRecord";

/// Requests sent to the bucket so far, by S3 operation, from the replica's metrics, once the
/// replica has no pull record left to write; `PutObject` counts pull records apart, as
/// [`PULL_RECORDS`].
async fn bucket_requests(http: &reqwest::Client, base: &str) -> BTreeMap<String, u64> {
    let value = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    let mut settled = None;
    for _ in 0..500 {
        let text = common::metrics_text(http, base).await;
        if value(&text, "dataplane_pull_records_pending") == 0 {
            settled = Some(text);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let text = settled.expect("pull records still being written after 10 s");
    let mut requests: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|line| line.strip_prefix("dataplane_storage_s3_requests_total{operation=\""))
        .filter_map(|rest| {
            let (operation, value) = rest.split_once("\"} ")?;
            Some((operation.to_owned(), value.trim().parse().ok()?))
        })
        .collect();
    let pull_records = value(&text, "dataplane_pull_records_written_total");
    if let Some(puts) = requests.get_mut("PutObject") {
        *puts -= pull_records;
    }
    requests.insert(PULL_RECORDS.to_owned(), pull_records);
    requests
}

/// The requests `operation` sent to the bucket through the replica at `base`, by S3 operation
/// (operations with none left out), pull records apart (see [`bucket_requests`]).
async fn requests_of<F, Fut>(http: &reqwest::Client, base: &str, operation: F) -> Vec<(String, u64)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = bucket_requests(http, base).await;
    operation().await;
    let after = bucket_requests(http, base).await;
    after
        .into_iter()
        .filter_map(|(op, n)| {
            let delta = n - before.get(&op).copied().unwrap_or(0);
            (delta > 0).then_some((op, delta))
        })
        .collect()
}

/// `asked` without its pull records: what the request path itself cost.
fn hot_path(asked: Vec<(String, u64)>) -> Vec<(String, u64)> {
    asked
        .into_iter()
        .filter(|(op, _)| op != PULL_RECORDS)
        .collect()
}

fn expect(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(op, n)| ((*op).to_owned(), *n)).collect()
}

/// `GET` (or `HEAD`) of `url`, asserting the status; returns the `Docker-Content-Digest`.
async fn fetch(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    status: StatusCode,
) -> Option<String> {
    let response = http
        .request(method, url)
        .header("accept", MANIFEST_TYPE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), status, "{url}");
    let digest = response
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap().to_owned());
    response.bytes().await.unwrap();
    digest
}

/// Two replicas on one fresh prefix of the binary's S3 server.
fn two_replicas(s3: &S3Server, label: &str) -> (S3Dataplane, S3Dataplane) {
    let prefix = unique_prefix(label);
    (
        S3Dataplane::start(s3, &prefix, s3.endpoint()),
        S3Dataplane::start(s3, &prefix, s3.endpoint()),
    )
}

/// Pushes `blob` monolithically through `base`, asserting it was created.
async fn push(http: &reqwest::Client, base: &str, repo: &str, blob: &[u8]) {
    let status = push_blob_monolithic(http, base, repo, blob).await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
}

/// Pushes the blobs of a one-layer image (config `{}` and `layer`) through `base`; returns the
/// image manifest, not yet pushed.
async fn push_image_blobs(http: &reqwest::Client, base: &str, repo: &str, layer: &[u8]) -> Vec<u8> {
    let config = b"{}";
    for blob in [&config[..], layer] {
        push(http, base, repo, blob).await;
    }
    image_manifest(
        (&sha256(config), config.len()),
        &[(&sha256(layer), layer.len())],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_cache_memory_every_read_asks_the_bucket() {
    let s3 = shared_server();
    let prefix = unique_prefix("uncached");
    let replica =
        S3Dataplane::start_with_args(&s3, &prefix, s3.endpoint(), &[], &["--cache-memory", "0"]);
    let base = replica.url();
    let http = client();
    let repo = "team/app";
    let layer = b"uncached layer".to_vec();
    let manifest = push_image_blobs(&http, &base, repo, &layer).await;
    let status = put_manifest(&http, &base, repo, "v1", &manifest)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED);

    // By digest: the revision record and the bytes, every time (cached, it would be none);
    // the first pull also writes the manifest's pull record, after the response.
    let by_digest = format!("{base}/v2/{repo}/manifests/{}", sha256(&manifest));
    for round in 0..2 {
        let asked = requests_of(&http, &base, || async {
            fetch(&http, reqwest::Method::GET, &by_digest, StatusCode::OK).await;
        })
        .await;
        if round == 0 {
            assert!(asked.contains(&(PULL_RECORDS.to_owned(), 1)), "{asked:?}");
        }
        assert_eq!(hot_path(asked), expect(&[("GetObject", 2)]));
    }
    // A blob's HEAD: its link and its size, every time.
    let blob = format!("{base}/v2/{repo}/blobs/{}", sha256(&layer));
    for _ in 0..2 {
        let asked = requests_of(&http, &base, || async {
            fetch(&http, reqwest::Method::HEAD, &blob, StatusCode::OK).await;
        })
        .await;
        assert_eq!(asked, expect(&[("HeadObject", 2)]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_costs_a_pinned_number_of_bucket_requests() {
    let s3 = shared_server();
    let replicas = two_replicas(&s3, "pinned");
    let (a, b) = (replicas.0.url(), replicas.1.url());
    let http = client();
    let repo = "team/app";
    let get = reqwest::Method::GET;
    let head = reqwest::Method::HEAD;

    let layer = b"layer bytes".to_vec();
    let manifest = push_image_blobs(&http, &a, repo, &layer).await;
    let digest = sha256(&manifest);

    // The push: manifest bytes, revision record, and the tag's compare-and-swap (read, write);
    // the blob links it checks were just written through this replica. For garbage
    // collection, a touch of each blob it names and of its own bytes: a marker write and an
    // existence check each (config, layer, manifest).
    let pushed = requests_of(&http, &a, || async {
        let status = put_manifest(&http, &a, repo, "v1", &manifest)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED);
    })
    .await;
    assert_eq!(
        pushed,
        expect(&[("GetObject", 1), ("HeadObject", 3), ("PutObject", 3 + 3)])
    );

    // The replica that pushed serves the manifest by digest from memory; only the pull
    // record is written (once an hour per item and replica, after the response).
    let by_digest = format!("{a}/v2/{repo}/manifests/{digest}");
    let served = requests_of(&http, &a, || async {
        fetch(&http, get.clone(), &by_digest, StatusCode::OK).await;
        fetch(&http, head.clone(), &by_digest, StatusCode::OK).await;
    })
    .await;
    assert!(
        served.iter().any(|(op, n)| op == PULL_RECORDS && *n >= 1),
        "{served:?}"
    );
    assert_eq!(hot_path(served), expect(&[]));

    // Another replica: by tag, the first GET reads the tag record and the manifest bytes;
    // after that, one request (the tag record, which carries the revision record).
    let by_tag = format!("{b}/v2/{repo}/manifests/v1");
    let first = requests_of(&http, &b, || async {
        let seen = fetch(&http, get.clone(), &by_tag, StatusCode::OK).await;
        assert_eq!(seen.as_deref(), Some(digest.as_str()));
    })
    .await;
    // Pull records for the tag and the manifest, this replica's first pull of both.
    assert_eq!(first, expect(&[("GetObject", 2), (PULL_RECORDS, 2)]));
    for method in [get.clone(), head.clone()] {
        let again = requests_of(&http, &b, || async {
            fetch(&http, method.clone(), &by_tag, StatusCode::OK).await;
        })
        .await;
        assert_eq!(
            hot_path(again),
            expect(&[("GetObject", 1)]),
            "{method} by tag"
        );
    }

    // By digest: the revision record once, then nothing.
    let by_digest = format!("{b}/v2/{repo}/manifests/{digest}");
    let first = requests_of(&http, &b, || async {
        fetch(&http, get.clone(), &by_digest, StatusCode::OK).await;
    })
    .await;
    assert_eq!(hot_path(first), expect(&[("GetObject", 1)]));
    let again = requests_of(&http, &b, || async {
        fetch(&http, get.clone(), &by_digest, StatusCode::OK).await;
        fetch(&http, head.clone(), &by_digest, StatusCode::OK).await;
    })
    .await;
    assert_eq!(hot_path(again), expect(&[]));

    // A blob: its link and size once, then a HEAD costs nothing and a GET one read.
    let blob = format!("{b}/v2/{repo}/blobs/{}", sha256(&layer));
    let first = requests_of(&http, &b, || async {
        fetch(&http, head.clone(), &blob, StatusCode::OK).await;
    })
    .await;
    assert_eq!(first, expect(&[("HeadObject", 2)]));
    let again = requests_of(&http, &b, || async {
        fetch(&http, head.clone(), &blob, StatusCode::OK).await;
    })
    .await;
    assert_eq!(again, expect(&[]));
    let download = requests_of(&http, &b, || async {
        fetch(&http, get.clone(), &blob, StatusCode::OK).await;
    })
    .await;
    assert_eq!(download, expect(&[("GetObject", 1)]));

    // Absent things are asked for every time (nothing negative is cached).
    let missing = format!("{b}/v2/{repo}/manifests/absent");
    for _ in 0..2 {
        let asked = requests_of(&http, &b, || async {
            fetch(&http, get.clone(), &missing, StatusCode::NOT_FOUND).await;
        })
        .await;
        assert_eq!(asked, expect(&[("GetObject", 1)]));
    }

    // The tag list is one listing.
    let listed = requests_of(&http, &b, || async {
        let response = http
            .get(format!("{b}/v2/{repo}/tags/list"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    })
    .await;
    assert_eq!(listed, expect(&[("ListObjectsV2", 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_moved_or_deleted_on_one_replica_is_seen_at_once_by_another() {
    let s3 = shared_server();
    let replicas = two_replicas(&s3, "moves");
    let (a, b) = (replicas.0.url(), replicas.1.url());
    let http = client();
    let repo = "team/app";
    let config = b"{}".to_vec();
    push(&http, &a, repo, &config).await;
    let mut digests = Vec::new();
    for i in 0..2 {
        let layer = format!("layer {i}").into_bytes();
        push(&http, &a, repo, &layer).await;
        let manifest = image_manifest(
            (&sha256(&config), config.len()),
            &[(&sha256(&layer), layer.len())],
        );
        let status = put_manifest(&http, &a, repo, "latest", &manifest)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED);
        digests.push(sha256(&manifest));
        // Replica B reads the tag each time; it must never serve the earlier target.
        let seen = fetch(
            &http,
            reqwest::Method::GET,
            &format!("{b}/v2/{repo}/manifests/latest"),
            StatusCode::OK,
        )
        .await;
        assert_eq!(seen.as_deref(), Some(digests[i].as_str()), "after push {i}");
    }

    // Deleting the tag through A: B answers 404 by tag at once.
    let response = http
        .delete(format!("{a}/v2/{repo}/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    fetch(
        &http,
        reqwest::Method::GET,
        &format!("{b}/v2/{repo}/manifests/latest"),
        StatusCode::NOT_FOUND,
    )
    .await;

    // Deleting a manifest by digest through A: A answers 404 by digest at once (its cache
    // entry is dropped with the record).
    let response = http
        .delete(format!("{a}/v2/{repo}/manifests/{}", digests[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    fetch(
        &http,
        reqwest::Method::GET,
        &format!("{a}/v2/{repo}/manifests/{}", digests[0]),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_records_written_without_the_revision_record_still_resolve() {
    let s3 = shared_server();
    let prefix = unique_prefix("legacy");
    let server = S3Dataplane::start(&s3, &prefix, s3.endpoint());
    let base = server.url();
    let http = client();
    let repo = "team/app";
    let config = b"{}".to_vec();
    push(&http, &base, repo, &config).await;
    let manifest = image_manifest((&sha256(&config), config.len()), &[]);
    let digest = sha256(&manifest);
    let status = put_manifest(&http, &base, repo, &digest, &manifest)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED);

    // A tag record as earlier versions wrote it: the digest as text, no metadata.
    let bucket = raw_client(&s3);
    bucket
        .put_object()
        .bucket(s3.bucket())
        .key(format!(
            "{}/repositories/{repo}/_tags/old",
            prefix.trim_end_matches('/')
        ))
        .body(digest.clone().into_bytes().into())
        .send()
        .await
        .unwrap();
    let seen = fetch(
        &http,
        reqwest::Method::GET,
        &format!("{base}/v2/{repo}/manifests/old"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(seen.as_deref(), Some(digest.as_str()));
}
