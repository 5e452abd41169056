//! Reads of small records on the hot path, sent around the SDK's request pipeline.
//!
//! A manifest `GET` by tag is one `GetObject` of a record of a few dozen bytes. Through the
//! SDK's orchestrator (interceptors, endpoint rules, identity resolution, retry partitions,
//! body wrappers) such a call cost about 200 µs of CPU here, more than the rest of the request.
//! This client sends the same request itself: the URL built once per bucket, signed with
//! Signature Version 4 by `aws-sigv4` (the SDK's own signer), sent over a pooled `reqwest`
//! connection, with the SDK's timeouts and a bounded retry of transient failures. Credentials
//! come from the same provider chain as the SDK's and are cached until shortly before they
//! expire.
//!
//! It is used when the bucket's URL is unambiguous: an explicit endpoint (path-style or
//! virtual-hosted), or AWS S3 in a standard region with a bucket name that is a valid host
//! label. Anything else keeps the SDK for every call.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use tokio::sync::Mutex;

use super::bucket::{CallResult, Failure, Object, encode_key};
use super::requests::RequestCounts;
use crate::storage::StorageError;

/// Credentials are refreshed this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// `x-amz-meta-` header prefix of user metadata.
const META_PREFIX: &str = "x-amz-meta-";

/// Where the bucket is and how to reach it; decided once per backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BucketUrl {
    /// `scheme://host[:port]/[bucket]`, to which a key is appended.
    base: String,
    /// The bucket name, for messages.
    bucket: String,
}

impl BucketUrl {
    /// The bucket's URL, when it is unambiguous (see the module docs); `None` to keep the SDK.
    pub(super) fn new(
        endpoint: Option<&str>,
        bucket: &str,
        region: &str,
        path_style: bool,
    ) -> Option<Self> {
        let host_label = !bucket.is_empty()
            && bucket.len() <= 63
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let base = match endpoint {
            Some(endpoint) => {
                let url = url::Url::parse(endpoint).ok()?;
                if !matches!(url.scheme(), "http" | "https")
                    || url.query().is_some()
                    || !url.path().trim_matches('/').is_empty()
                {
                    return None;
                }
                let origin = endpoint.trim_end_matches('/');
                if path_style {
                    format!("{origin}/{bucket}")
                } else {
                    if !host_label {
                        return None;
                    }
                    let host = url.host_str()?;
                    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                    format!("{}://{bucket}.{host}{port}", url.scheme())
                }
            }
            None => {
                let standard = !region.is_empty()
                    && region
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !region.starts_with("cn-")
                    && !region.starts_with("us-gov-")
                    && !region.starts_with("us-iso");
                if !standard || !host_label || path_style {
                    return None;
                }
                format!("https://{bucket}.s3.{region}.amazonaws.com")
            }
        };
        Some(Self {
            base,
            bucket: bucket.to_owned(),
        })
    }

    fn object(&self, key: &str) -> String {
        format!("{}/{}", self.base, encode_key(key))
    }
}

/// Signed `GET`s and `HEAD`s of small objects, outside the SDK.
#[derive(Debug)]
pub(super) struct DirectReads {
    http: reqwest::Client,
    url: BucketUrl,
    region: String,
    provider: SharedCredentialsProvider,
    cached: std::sync::RwLock<Option<Credentials>>,
    refresh: Mutex<()>,
    attempts: u32,
    counts: RequestCounts,
}

impl DirectReads {
    /// A client for `url`, signing for `region` with credentials from `provider`.
    pub(super) fn new(
        url: BucketUrl,
        region: String,
        provider: SharedCredentialsProvider,
        connect_timeout: Duration,
        timeout: Duration,
        attempts: u32,
        counts: RequestCounts,
    ) -> Result<Self, StorageError> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| StorageError::Backend(format!("cannot build the S3 HTTP client: {e}")))?;
        Ok(Self {
            http,
            url,
            region,
            provider,
            cached: std::sync::RwLock::new(None),
            refresh: Mutex::new(()),
            attempts: attempts.max(1),
            counts,
        })
    }

    /// Reads a small object whole, with its ETag and user metadata.
    pub(super) async fn get(&self, key: &str) -> CallResult<Object> {
        self.call(reqwest::Method::GET, "GetObject", key)
            .await
            .map(|r| r.object)
    }

    /// The size of an object, or `None` when it does not exist.
    pub(super) async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self.call(reqwest::Method::HEAD, "HeadObject", key).await {
            Ok(response) => Ok(Some(response.length)),
            Err(Failure::NotFound) => Ok(None),
            Err(other) => Err(other.into()),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        op: &'static str,
        key: &str,
    ) -> CallResult<Reply> {
        let url = self.url.object(key);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.counts.count(op);
            let outcome = self.send(&method, &url).await;
            let retry = match &outcome {
                Err(Sent::Transport(e)) => Some(format!("cannot reach the S3 endpoint: {e}")),
                Err(Sent::Status { status, .. })
                    if matches!(status, 429 | 500 | 502 | 503 | 504) =>
                {
                    Some(format!("HTTP {status}"))
                }
                _ => None,
            };
            match (outcome, retry) {
                (Ok(reply), _) => return Ok(reply),
                (Err(_), Some(_)) if attempt < self.attempts => {
                    let pause = Duration::from_millis(100 << (attempt - 1).min(4));
                    tokio::time::sleep(pause.min(Duration::from_secs(2))).await;
                }
                (Err(Sent::Status { status: 404, .. }), _) => return Err(Failure::NotFound),
                (Err(Sent::Status { status: 412, .. }), _) => return Err(Failure::Precondition),
                (Err(sent), retry) => {
                    let message = format!(
                        "S3 {op} of s3://{}/{key} failed: {}",
                        self.url.bucket,
                        sent.describe()
                    );
                    return Err(Failure::Other(if retry.is_some() {
                        StorageError::Unavailable(message)
                    } else {
                        StorageError::Backend(message)
                    }));
                }
            }
        }
    }

    async fn send(&self, method: &reqwest::Method, url: &str) -> Result<Reply, Sent> {
        let credentials = self.credentials().await.map_err(Sent::Credentials)?;
        let identity: Identity = credentials.into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| Sent::Signing(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            method.as_str(),
            url,
            std::iter::empty(),
            SignableBody::Bytes(&[]),
        )
        .map_err(|e| Sent::Signing(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Sent::Signing(e.to_string()))?
            .into_parts();
        let mut request = self.http.request(method.clone(), url);
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(Sent::Transport)?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header("etag");
        let declared_length = header("content-length").and_then(|v| v.parse().ok());
        let metadata: HashMap<String, String> = headers
            .iter()
            .filter_map(|(name, value)| {
                let name = name.as_str().strip_prefix(META_PREFIX)?;
                Some((name.to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        let data = response.bytes().await.map_err(Sent::Transport)?;
        if !(200..300).contains(&status) {
            return Err(Sent::Status { status, body: data });
        }
        let length = if *method == reqwest::Method::HEAD {
            declared_length.unwrap_or(0)
        } else {
            data.len() as u64
        };
        Ok(Reply {
            object: Object {
                data,
                etag: etag.unwrap_or_default(),
                metadata,
            },
            length,
        })
    }

    /// Current credentials, fetched from the provider when none are cached or they expire
    /// soon (one fetch at a time).
    async fn credentials(&self) -> Result<Credentials, String> {
        let fresh = |c: &Credentials| {
            c.expiry().is_none_or(|at| {
                at.duration_since(SystemTime::now())
                    .is_ok_and(|left| left > REFRESH_BEFORE_EXPIRY)
            })
        };
        let cached = || {
            self.cached
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .filter(fresh)
        };
        if let Some(c) = cached() {
            return Ok(c);
        }
        let _one = self.refresh.lock().await;
        if let Some(c) = cached() {
            return Ok(c);
        }
        let c = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| format!("cannot load S3 credentials: {e}"))?;
        *self
            .cached
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c.clone());
        Ok(c)
    }
}

/// A successful answer.
struct Reply {
    object: Object,
    /// `Content-Length` (for `HEAD`: the object's size).
    length: u64,
}

/// Why a request did not succeed.
enum Sent {
    Credentials(String),
    Signing(String),
    Transport(reqwest::Error),
    Status { status: u16, body: Bytes },
}

impl Sent {
    fn describe(&self) -> String {
        match self {
            Sent::Credentials(e) => e.clone(),
            Sent::Signing(e) => format!("cannot sign the request: {e}"),
            Sent::Transport(e) if e.is_timeout() => "timed out".to_owned(),
            Sent::Transport(e) => format!("cannot reach the S3 endpoint: {e}"),
            Sent::Status { status, body } => {
                let text = String::from_utf8_lossy(body);
                let field = |tag: &str| {
                    let open = format!("<{tag}>");
                    let start = text.find(&open)? + open.len();
                    let end = text[start..].find(&format!("</{tag}>"))? + start;
                    Some(text[start..end].to_owned())
                };
                format!(
                    "HTTP {status} {}: {}",
                    field("Code").unwrap_or_else(|| "(no code)".to_owned()),
                    field("Message").unwrap_or_else(|| "(no message)".to_owned())
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls() {
        let url = |e, b, r, p| BucketUrl::new(e, b, r, p).map(|u| u.object("a/b c"));
        assert_eq!(
            url(Some("http://127.0.0.1:9000"), "registry", "us-east-1", true).as_deref(),
            Some("http://127.0.0.1:9000/registry/a/b%20c")
        );
        assert_eq!(
            url(Some("https://s3.example.net/"), "registry", "", false).as_deref(),
            Some("https://registry.s3.example.net/a/b%20c")
        );
        assert_eq!(
            url(None, "registry", "eu-west-1", false).as_deref(),
            Some("https://registry.s3.eu-west-1.amazonaws.com/a/b%20c")
        );
        // Ambiguous or special: the SDK resolves these.
        assert_eq!(url(None, "my.bucket", "eu-west-1", false), None);
        assert_eq!(url(None, "registry", "cn-north-1", false), None);
        assert_eq!(url(None, "registry", "", false), None);
        assert_eq!(
            url(Some("https://s3.example.net/base"), "r", "", true),
            None
        );
        assert_eq!(url(Some("https://s3.example.net"), "a.b", "", false), None);
    }
}
