//! `dataplane fsck` through the real binary, on a store written by `dataplane serve`: a
//! healthy store passes; one whose layer file was lost reports the missing blob and the link
//! that leads nowhere, `--repair` removes the link, and the missing blob stays a problem.

mod common;

use std::path::Path;
use std::process::Command;

use common::{
    Dataplane, binary, client, image_manifest, push_blob_monolithic, put_manifest, sha256,
};
use reqwest::StatusCode;

fn fsck(root: &Path, extra: &[&str]) -> (i32, String) {
    let output = Command::new(binary())
        .arg("fsck")
        .arg("--root")
        .arg(root)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code().expect("fsck exited by a signal");
    assert!(code < 2, "fsck failed: {stderr}");
    (code, String::from_utf8(output.stdout).unwrap())
}

/// Pushes a one-layer image tagged v1 into `repo` through a data plane on `root`; returns
/// the layer's digest.
async fn push_image(root: &Path, repo: &str) -> String {
    let server = Dataplane::start(root, &[]);
    let (base, http) = (server.url(), client());
    let (config, layer) = (b"{}".to_vec(), b"layer that goes missing".to_vec());
    for blob in [&config, &layer] {
        let status = push_blob_monolithic(&http, &base, repo, blob)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED);
    }
    let manifest = image_manifest(
        (&sha256(&config), config.len()),
        &[(&sha256(&layer), layer.len())],
    );
    let status = put_manifest(&http, &base, repo, "v1", &manifest)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED);
    sha256(&layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_reports_and_repairs_a_store_written_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let layer = push_image(root, "team/app").await;

    let (code, text) = fsck(root, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("1 repositories, 1 manifests, 1 tags, 3 blobs"),
        "{text}"
    );
    assert!(text.contains("0 problems, 0 repaired"), "{text}");

    // The layer's file is lost (a disk fault, a hand-made cleanup).
    let hex = layer.strip_prefix("sha256:").unwrap();
    std::fs::remove_file(root.join("blobs/sha256").join(&hex[..2]).join(hex)).unwrap();

    let (code, json) = fsck(root, &["--json"]);
    assert_eq!(code, 1, "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["danglingLink", "missingBlob"], "{json}");
    assert!(
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["repository"] == "team/app" && p.to_string().contains(&layer))
    );

    let (code, text) = fsck(root, &["--repair"]);
    assert_eq!(code, 1, "the missing blob cannot be repaired: {text}");
    assert!(
        text.contains(&format!("repaired: team/app: link to blob {layer}")),
        "{text}"
    );
    assert!(text.contains("1 problems, 1 repaired"), "{text}");
    let (code, text) = fsck(root, &[]);
    assert_eq!(code, 1);
    assert!(text.contains("1 problems, 0 repaired"), "{text}");
    assert!(text.contains("is missing"), "{text}");
}
