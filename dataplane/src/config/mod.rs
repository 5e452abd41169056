//! The data-plane configuration document and how a running process follows it.
//!
//! The schema (the document's types, parsing and validation) lives in [`crds::config`],
//! shared with the operator that renders it, and is re-exported here. This module adds what
//! only a running data plane needs: the live handle on the document in force and its reload
//! from a file ([`watch`]).
//!
//! Layer rule: like the schema, this module is vocabulary plus the watcher; it never starts
//! servers or touches storage.

pub mod watch;

pub use crds::config::*;

pub use watch::{ConfigHandle, ConfigReloader, ConfigSource, ReloadOutcome};
