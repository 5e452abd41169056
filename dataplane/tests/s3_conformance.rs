//! The storage conformance suite against the S3 backend on the test S3 server, one key prefix
//! per test.

mod s3_common;

dataplane::storage_conformance_tests!(s3, s3_common::fresh("conformance"));

/// Checkpoints live in the session record, so any replica can continue a session's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_keeps_upload_checkpoints() {
    let (storage, _server) = s3_common::fresh("checkpoints").await;
    dataplane::storage::conformance::upload_checkpoints(std::sync::Arc::new(storage)).await;
}
