//! Test support for the end-to-end tests.
//!
//! Every component here is real: binaries built or installed by `tests/harness/install`,
//! started on ephemeral loopback ports, and stopped (with their process groups) on drop.
//! A missing component fails the test with a message naming `tests/harness/install`;
//! nothing is ever skipped silently.
//!
//! Modules:
//! - [`tools`]: locating harness binaries and the repository root.
//! - [`process`]: child processes in their own process group, with logs and readiness checks.
//! - [`s3`]: a throwaway S3 server (MinIO).
//! - [`registry`]: peer registries (CNCF Distribution v3, Debian's Distribution 2.8).
//! - [`clients`]: push/pull round trips with real registry clients.
//! - [`conformance`]: the OCI distribution-spec conformance suite and its parsed report.
//! - [`cluster`]: Kubernetes clusters for end-to-end tests.
//!
//! The API is blocking, so it works from plain `#[test]` functions and from
//! `#[tokio::test]` ones alike (call it from `spawn_blocking` in a single-threaded runtime
//! if the blocking matters).

pub mod clients;
pub mod cluster;
pub mod conformance;
pub mod process;
pub mod registry;
pub mod s3;
pub mod tools;
