//! Usage vocabulary shared by the operator and the data plane: what a registry namespace
//! stores and transfers, as the data plane meters it and the operator publishes it in the
//! `RegistryNamespace` status.
//!
//! How it is counted:
//!
//! - **Stored bytes**: the blobs and manifests the namespace's repositories hold. A blob is
//!   counted once per namespace that links it, however many of its repositories do: two
//!   namespaces sharing a base layer each pay for it, two repositories of one namespace pay
//!   once.
//! - **Gigabyte-hours**: stored bytes integrated over time (10^9 bytes held for one hour is one
//!   gigabyte-hour), sampled on an interval: each sample adds the previous sample's stored
//!   bytes times the time since it.
//! - **Transfer**: bytes served to clients (blob and manifest bodies pulled) and received from
//!   them (blob and manifest bodies pushed).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Bytes per gigabyte (decimal, as billed).
pub const GIGABYTE: u128 = 1_000_000_000;

/// One namespace's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceUsage {
    /// Bytes stored at the last sample: each blob counted once per namespace that links it.
    pub stored_bytes: u64,
    /// Stored bytes integrated over time, in gigabyte-hours (10^9 bytes for one hour), as a
    /// decimal with six places (e.g. `"12.500000"`).
    pub gigabyte_hours: String,
    /// Bytes served to clients pulling (blob and manifest bodies).
    pub pulled_bytes: u64,
    /// Bytes received from clients pushing (blob and manifest bodies).
    pub pushed_bytes: u64,
    /// When the stored bytes were last sampled (RFC 3339); unset before the first sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_at: Option<String>,
}

/// The answer of the data plane's usage endpoint: every namespace with any usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageResponse {
    /// Usage by registry namespace.
    pub namespaces: BTreeMap<String, NamespaceUsage>,
}

/// Byte-seconds as gigabyte-hours with six decimal places (rounded down).
pub fn gigabyte_hours(byte_seconds: u128) -> String {
    let micro = byte_seconds * 1_000_000 / (GIGABYTE * 3600);
    format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gigabyte_hours_are_decimal_with_six_places() {
        assert_eq!(gigabyte_hours(0), "0.000000");
        assert_eq!(gigabyte_hours(GIGABYTE * 3600), "1.000000");
        assert_eq!(gigabyte_hours(GIGABYTE * 1800), "0.500000");
        assert_eq!(gigabyte_hours(3_600_000), "0.000001");
        assert_eq!(gigabyte_hours(3_599_999), "0.000000");
        // A petabyte for ten years stays exact.
        let decade = 10 * 365 * 24 * 3600u128;
        assert_eq!(
            gigabyte_hours(1_000_000 * GIGABYTE * decade),
            format!("{}.000000", 1_000_000u128 * 10 * 365 * 24)
        );
    }
}
