//! The regional OCI registry data plane.
//!
//! Layers, from the outside in (each may call only the ones below it):
//!
//! - [`server`]: process concerns — listening, graceful shutdown, health, metrics, logs.
//! - [`tls`]: TLS termination for [`server`], with certificates reloaded when they change.
//! - [`http`]: the HTTP API; parses requests into [`oci`] values, authorizes, calls [`registry`],
//!   maps results and errors to OCI responses.
//! - [`live`]: the configuration in force: the one apply step every document goes through
//!   and the live handle [`http`] and [`server`] read.
//! - [`registry`]: registry semantics — uploads with streaming digest verification, manifest
//!   validation, tags, referrers, catalog.
//! - [`retention`]: which tags and manifests a retention policy deletes (a pure plan).
//! - [`fsck`]: checks the storage for missing blobs and dangling tags and links, and
//!   repairs what is safe (`dataplane fsck`).
//! - [`storage`]: the storage trait and its backends.
//! - [`auth`]: access control (credentials, tokens, workload identity, the authorization
//!   rule), used by [`live`] and [`http`]; pure policy over [`config`].
//! - [`oci`] and [`config`]: vocabulary and the configuration document (with its sources: the
//!   file and the Kubernetes Secret), used by every layer.
//! - [`caches`]: the memory budget every in-memory cache takes its share of.
//! - [`fuzzing`]: fuzz targets over the parsers of untrusted input, for `cargo fuzz`
//!   (`dataplane/fuzz/`) and the property tests.

pub mod auth;
pub mod caches;
pub mod config;
pub mod fsck;
pub mod fuzzing;
pub mod http;
pub mod live;
pub mod oci;
pub mod registry;
pub mod retention;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod tls;
