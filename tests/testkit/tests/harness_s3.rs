//! Acceptance test of the harness S3 server: the operations and the conditional-write
//! semantics the registry's S3 backend depends on, exercised with aws-sdk-s3.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use testkit::process::http_get_status;
use testkit::s3::S3Server;

fn client(s3: &S3Server) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(s3.region().to_owned()))
        .endpoint_url(s3.endpoint())
        .credentials_provider(Credentials::new(
            s3.access_key(),
            s3.secret_key(),
            None,
            None,
            "harness",
        ))
        .force_path_style(true)
        .build();
    Client::from_conf(config)
}

/// HTTP status of a failed request (panics on success or on a transport error).
fn status<E: std::fmt::Debug, R: std::fmt::Debug>(result: Result<R, SdkError<E>>) -> u16 {
    match result {
        Ok(ok) => panic!("expected an HTTP error, got success: {ok:?}"),
        Err(SdkError::ServiceError(e)) => e.raw().status().as_u16(),
        Err(other) => panic!("expected an HTTP error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_supports_what_the_registry_needs() {
    let s3 = S3Server::start();
    let c = client(&s3);
    let bucket = s3.bucket();

    // Put, get, ranged get.
    let body = b"0123456789abcdef".repeat(64);
    c.put_object()
        .bucket(bucket)
        .key("blobs/a")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .unwrap();
    let got = c
        .get_object()
        .bucket(bucket)
        .key("blobs/a")
        .send()
        .await
        .unwrap();
    assert_eq!(got.body.collect().await.unwrap().into_bytes(), body);
    let ranged = c
        .get_object()
        .bucket(bucket)
        .key("blobs/a")
        .range("bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.content_range(), Some("bytes 10-19/1024"));
    assert_eq!(
        ranged.body.collect().await.unwrap().into_bytes(),
        &body[10..20]
    );
    let missing = c
        .get_object()
        .bucket(bucket)
        .key("blobs/missing")
        .send()
        .await;
    assert_eq!(status(missing), 404);

    // Multipart upload: two parts (the first at the 5 MiB minimum), completed in order.
    let part1 = vec![b'x'; 5 * 1024 * 1024];
    let part2 = b"tail".to_vec();
    let upload = c
        .create_multipart_upload()
        .bucket(bucket)
        .key("blobs/big")
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    let mut parts = Vec::new();
    for (number, data) in [(1, &part1), (2, &part2)] {
        let part = c
            .upload_part()
            .bucket(bucket)
            .key("blobs/big")
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(part.e_tag().unwrap())
                .build(),
        );
    }
    c.complete_multipart_upload()
        .bucket(bucket)
        .key("blobs/big")
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let big = c
        .get_object()
        .bucket(bucket)
        .key("blobs/big")
        .send()
        .await
        .unwrap();
    assert_eq!(
        big.content_length(),
        Some((part1.len() + part2.len()) as i64)
    );
    let bytes = big.body.collect().await.unwrap().into_bytes();
    assert!(bytes.starts_with(&part1) && bytes.ends_with(&part2));

    // List with a prefix.
    let listed = c
        .list_objects_v2()
        .bucket(bucket)
        .prefix("blobs/")
        .send()
        .await
        .unwrap();
    let mut keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    keys.sort();
    assert_eq!(keys, ["blobs/a", "blobs/big"]);

    // Conditional writes: create-only and compare-and-swap.
    let first = c
        .put_object()
        .bucket(bucket)
        .key("tags/latest")
        .if_none_match("*")
        .body(ByteStream::from_static(b"v1"))
        .send()
        .await
        .unwrap();
    let again = c
        .put_object()
        .bucket(bucket)
        .key("tags/latest")
        .if_none_match("*")
        .body(ByteStream::from_static(b"v2"))
        .send()
        .await;
    assert_eq!(status(again), 412, "If-None-Match: * on an existing key");
    let stale = c
        .put_object()
        .bucket(bucket)
        .key("tags/latest")
        .if_match("\"00000000000000000000000000000000\"")
        .body(ByteStream::from_static(b"v2"))
        .send()
        .await;
    assert_eq!(status(stale), 412, "If-Match with a stale ETag");
    c.put_object()
        .bucket(bucket)
        .key("tags/latest")
        .if_match(first.e_tag().unwrap())
        .body(ByteStream::from_static(b"v2"))
        .send()
        .await
        .unwrap();
    let current = c
        .get_object()
        .bucket(bucket)
        .key("tags/latest")
        .send()
        .await
        .unwrap();
    assert_eq!(
        &current.body.collect().await.unwrap().into_bytes()[..],
        b"v2"
    );

    // Racing create-only writers: exactly one wins each key, the loser gets 412.
    for round in 0..10 {
        let key = format!("race/{round}");
        let racer = |value: &'static [u8]| {
            c.put_object()
                .bucket(bucket)
                .key(&key)
                .if_none_match("*")
                .body(ByteStream::from_static(value))
                .send()
        };
        let (a, b) = tokio::join!(racer(b"a"), racer(b"b"));
        let (winner, loser) = match (a, b) {
            (Ok(_), Err(e)) => (&b"a"[..], Err::<(), _>(e)),
            (Err(e), Ok(_)) => (&b"b"[..], Err(e)),
            (a, b) => panic!("round {round}: expected exactly one winner, got {a:?} / {b:?}"),
        };
        assert_eq!(status(loser), 412, "round {round}: the losing writer");
        let stored = c
            .get_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            &stored.body.collect().await.unwrap().into_bytes()[..],
            winner
        );
    }
}

#[test]
fn s3_server_stops_and_deletes_its_data_on_drop() {
    let s3 = S3Server::start();
    let health = format!("{}/minio/health/live", s3.endpoint());
    assert_eq!(http_get_status(&health).unwrap(), 200);
    let data = s3.data_dir().to_path_buf();
    assert!(data.is_dir());
    drop(s3);
    assert!(http_get_status(&health).is_err(), "server still answers");
    assert!(!data.exists(), "data directory left behind");
}

#[test]
fn s3_script_starts_and_stops_a_server() {
    let runtime = tempfile::tempdir().unwrap();
    let script = testkit::tools::repo_root().join("tests/harness/s3");
    let s3 = |action: &str| {
        let mut cmd = std::process::Command::new(&script);
        cmd.arg(action).env("XDG_RUNTIME_DIR", runtime.path());
        testkit::process::run(&mut cmd).unwrap()
    };
    let exports = s3("up");
    let env: std::collections::HashMap<&str, &str> = exports
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .collect();
    for key in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "S3_BUCKET",
    ] {
        assert!(env.contains_key(key), "{key} missing from:\n{exports}");
    }
    let endpoint = env["AWS_ENDPOINT_URL"];
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    assert_eq!(s3("env"), exports);
    let health = format!("{endpoint}/minio/health/live");
    assert_eq!(http_get_status(&health).unwrap(), 200);
    let pid = std::fs::read_to_string(runtime.path().join("registry-harness/s3/pid")).unwrap();
    s3("down");
    assert!(http_get_status(&health).is_err(), "server still answers");
    // Gone, or a zombie waiting for a reaper: either way no longer running.
    let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .map(|stat| stat.rsplit(')').next().unwrap_or("").trim().to_owned())
        .unwrap_or_default();
    assert!(
        state.is_empty() || state.starts_with('Z'),
        "server process {} left behind ({state})",
        pid.trim()
    );
    assert!(!runtime.path().join("registry-harness/s3").exists());
}
