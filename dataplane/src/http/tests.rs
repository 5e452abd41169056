//! In-process tests of the HTTP API.
