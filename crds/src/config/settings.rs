//! Process settings: what a data-plane process is started with and keeps until it restarts
//! (storage, uploads, connection and login limits). A reload never changes them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// Filesystem root used when no storage is configured.
pub const DEFAULT_ROOT: &str = "./registry-data";
/// How long an upload session may stay idle before it is removed, by default.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The settings of one data-plane process, as opposed to the operator-owned
/// [`RegionSpec`](super::RegionSpec): a reload keeps the running ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessSettings {
    /// Where blobs, manifests, tags and upload sessions live.
    pub storage: StorageConfig,
    /// Upload session settings.
    pub uploads: UploadsConfig,
    /// Limits on slow or idle client connections.
    pub connections: ConnectionsConfig,
    /// Limits on failed logins.
    pub logins: LoginLimits,
    /// Online garbage collection of unreferenced blobs.
    pub gc: GcConfig,
    /// Metering of storage and transfer per namespace.
    pub metering: MeteringConfig,
}

/// Storage backend settings: exactly one of the fields is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageConfig {
    /// Local filesystem (the standalone default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemStorage>,
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            filesystem: Some(FilesystemStorage::default()),
            s3: None,
        }
    }
}

/// Filesystem storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesystemStorage {
    /// Directory holding all of the region's data (created if missing).
    pub root: PathBuf,
}

impl Default for FilesystemStorage {
    fn default() -> Self {
        Self {
            root: PathBuf::from(DEFAULT_ROOT),
        }
    }
}

/// S3 storage. Credentials come from the environment (the usual AWS variables), never from
/// this document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Storage {
    /// Bucket name; the bucket must exist.
    pub bucket: String,
    /// Region the requests are signed for.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible service (default: AWS).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Key prefix under which all objects live.
    #[serde(default)]
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most non-AWS services.
    #[serde(default)]
    pub force_path_style: bool,
    /// When set, blob downloads are answered with a `307` redirect to a presigned URL of the
    /// object, so the bytes flow from the bucket straight to the client (who must be able to
    /// reach the endpoint). Unset: every replica streams blobs itself.
    #[serde(default)]
    pub redirect: Option<S3Redirect>,
}

/// Redirecting blob downloads to presigned URLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Redirect {
    /// How long a presigned URL stays valid (between 1m and 7 days; default 15m). A client
    /// must start its download within this time.
    #[serde(default = "default_redirect_ttl")]
    pub ttl: HumanDuration,
}

/// Default lifetime of a presigned download URL.
pub const DEFAULT_REDIRECT_TTL: Duration = Duration::from_secs(15 * 60);

fn default_redirect_ttl() -> HumanDuration {
    HumanDuration(DEFAULT_REDIRECT_TTL)
}

/// Upload session settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UploadsConfig {
    /// How long a session may live before it is removed as abandoned (e.g. `24h`, `30m`).
    #[serde(default = "default_session_timeout")]
    pub session_timeout: HumanDuration,
}

fn default_session_timeout() -> HumanDuration {
    HumanDuration(DEFAULT_SESSION_TIMEOUT)
}

impl Default for UploadsConfig {
    fn default() -> Self {
        Self {
            session_timeout: default_session_timeout(),
        }
    }
}

/// How long a blob must stay unreferenced and untouched before it is collected, by default.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(24 * 60 * 60);
/// How often the collector runs, by default.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Online garbage collection: blobs that no manifest references are removed once they have
/// been neither written nor relied upon (linked, mounted, named by a pushed manifest) for the
/// whole grace period, while pushes and pulls go on. One replica collects at a time (a lease
/// kept in storage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GcConfig {
    /// Whether this process takes part in collecting (default true). Every process touches
    /// the blobs it relies on either way.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long an unreferenced blob is kept after it was last written or relied upon (default
    /// 24h; at least 1s). It is the time a client has between uploading a layer and pushing
    /// the manifest that names it. The clocks of the replicas and of an S3 service must agree
    /// within a small fraction of it.
    #[serde(default = "default_gc_grace")]
    pub grace: HumanDuration,
    /// Time between two collections (default 1h; at least 1s).
    #[serde(default = "default_gc_interval")]
    pub interval: HumanDuration,
}

fn default_true() -> bool {
    true
}

fn default_gc_grace() -> HumanDuration {
    HumanDuration(DEFAULT_GC_GRACE)
}

fn default_gc_interval() -> HumanDuration {
    HumanDuration(DEFAULT_GC_INTERVAL)
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            grace: default_gc_grace(),
            interval: default_gc_interval(),
        }
    }
}

/// How often stored bytes are sampled, by default.
pub const DEFAULT_METERING_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Metering per registry namespace: stored bytes sampled and integrated into gigabyte-hours by
/// one process at a time (a lease kept in storage), and the bytes every process transfers,
/// all kept in storage (see [`crate::usage`] for how they are counted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeteringConfig {
    /// Time between two samples of the stored bytes, and between two writes of the transfer
    /// counted meanwhile (default 5m; between 1s and 1h). Each sample walks every repository's
    /// links.
    #[serde(default = "default_metering_interval")]
    pub interval: HumanDuration,
}

fn default_metering_interval() -> HumanDuration {
    HumanDuration(DEFAULT_METERING_INTERVAL)
}

impl Default for MeteringConfig {
    fn default() -> Self {
        Self {
            interval: default_metering_interval(),
        }
    }
}

/// How long a request's headers may take to arrive, by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request body or a response may go without moving a byte, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Limits on what one client connection may hold the server for (against slow-loris style
/// clients that open connections and then send, or read, nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Time for a request's headers to arrive in full, counted from when the connection opens
    /// or goes idle after a response: a kept-alive connection with no next request is closed
    /// after it too (default 30s; at most 10m).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: HumanDuration,
    /// Time a request body may go without a byte arriving, or a response without the client
    /// taking a byte, before the connection is closed (default 60s; at most 1h). An upload
    /// that keeps moving is never cut, however long it runs.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
}

fn default_header_timeout() -> HumanDuration {
    HumanDuration(DEFAULT_HEADER_TIMEOUT)
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration(DEFAULT_IDLE_TIMEOUT)
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// Limits on failed logins (wrong secrets, unknown ids), counted per source address (IPv6 per
/// /64) and per credential id. A source over its limit is refused at once, before any secret
/// is checked: `429 TOO_MANY_REQUESTS` with `Retry-After`. A credential over its limit is
/// refused only to sources that failed recently themselves, so a flood cannot lock its honest
/// clients out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginLimits {
    /// Failures allowed per source address (default 10 per 1m).
    #[serde(default = "default_per_source")]
    pub per_source: LoginRate,
    /// Failures allowed per credential id (default 30 per 1m).
    #[serde(default = "default_per_credential")]
    pub per_credential: LoginRate,
}

/// A number of failures and the time in which they are forgiven: a bucket of `failures`
/// that refills steadily over `per`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginRate {
    /// Failures allowed in a burst (1 to 1000000).
    pub failures: u32,
    /// The time in which that many are forgiven (1s to 24h).
    pub per: HumanDuration,
}

fn default_per_source() -> LoginRate {
    LoginRate {
        failures: 10,
        per: HumanDuration(Duration::from_secs(60)),
    }
}

fn default_per_credential() -> LoginRate {
    LoginRate {
        failures: 30,
        per: HumanDuration(Duration::from_secs(60)),
    }
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_source: default_per_source(),
            per_credential: default_per_credential(),
        }
    }
}
