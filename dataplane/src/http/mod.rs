//! The HTTP API: OCI Distribution `/v2/`.
