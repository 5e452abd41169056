//! The one place where errors become OCI error responses.

use axum::Json;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::registry::RegistryError;
use crate::storage::StorageError;

/// OCI Distribution error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Blob unknown to the repository.
    BlobUnknown,
    /// Blob upload invalid.
    BlobUploadInvalid,
    /// Blob upload session unknown.
    BlobUploadUnknown,
    /// Provided digest did not match the content, or is invalid.
    DigestInvalid,
    /// Manifest references a blob or manifest unknown to the repository.
    ManifestBlobUnknown,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known to the registry.
    NameUnknown,
    /// Provided length did not match the content length.
    SizeInvalid,
    /// Authentication required.
    Unauthorized,
    /// Requested access to the resource is denied.
    Denied,
    /// The operation is unsupported.
    Unsupported,
    /// Too many requests.
    #[serde(rename = "TOOMANYREQUESTS")]
    TooManyRequests,
    /// The registry cannot serve the request now (its storage is unreachable); retry later.
    Unavailable,
    /// An internal failure (details are logged, never sent).
    Unknown,
}

impl ErrorCode {
    /// The status this code is answered with unless a handler says otherwise.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BlobUnknown
            | Self::BlobUploadUnknown
            | Self::ManifestUnknown
            | Self::NameUnknown => StatusCode::NOT_FOUND,
            Self::BlobUploadInvalid
            | Self::DigestInvalid
            | Self::ManifestBlobUnknown
            | Self::ManifestInvalid
            | Self::NameInvalid
            | Self::SizeInvalid => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    errors: [ErrorEntry; 1],
}

#[derive(Debug, Serialize)]
struct ErrorEntry {
    code: ErrorCode,
    message: String,
    detail: serde_json::Value,
}

/// An HTTP API failure, rendered as `{"errors":[{"code","message","detail"}]}`.
///
/// Client errors carry a message safe to show; internal errors carry a generic message, their
/// cause having been logged once when the `ApiError` was built.
#[derive(Debug)]
pub struct ApiError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    detail: serde_json::Value,
    headers: HeaderMap,
}

impl ApiError {
    /// An error with `code`, its default status and a message for the client.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            status: code.status(),
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
            headers: HeaderMap::new(),
        }))
    }

    /// Overrides the status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.0.status = status;
        self
    }

    /// Adds structured detail for the client.
    pub fn with_detail(mut self, detail: impl Serialize) -> Self {
        self.0.detail = serde_json::to_value(detail).unwrap_or_default();
        self
    }

    /// Adds a response header (values that are not valid header text are dropped).
    pub fn with_header(mut self, name: HeaderName, value: impl AsRef<str>) -> Self {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.0.headers.insert(name, v);
        }
        self
    }

    /// A failure of ours: logs `cause` once and answers 500 with a generic message.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %cause, source = ?cause.source(), "internal error");
        Self(Box::new(Inner {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: ErrorCode::Unknown,
            message: "internal server error".into(),
            detail: serde_json::Value::Null,
            headers: HeaderMap::new(),
        }))
    }

    /// Storage is unreachable: logs `cause` once and answers 503 `UNAVAILABLE`, telling the
    /// client to retry (the request changed nothing it could observe).
    pub fn unavailable(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::warn!(error = %cause, "storage unavailable");
        Self(Box::new(Inner {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::Unavailable,
            message: "the registry's storage is temporarily unavailable; retry later".into(),
            detail: serde_json::Value::Null,
            headers: HeaderMap::new(),
        }))
        .with_header(axum::http::header::RETRY_AFTER, "1")
    }

    /// The status that will be answered.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The OCI code.
    pub fn code(&self) -> ErrorCode {
        self.0.code
    }

    /// The 404 for paths that are not part of the API.
    pub fn not_found() -> Self {
        Self::new(ErrorCode::Unsupported, "no such API endpoint").with_status(StatusCode::NOT_FOUND)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        use ErrorCode as C;
        match e {
            RegistryError::BlobUnknown => Self::new(C::BlobUnknown, "blob unknown to registry"),
            RegistryError::UploadUnknown => {
                Self::new(C::BlobUploadUnknown, "blob upload unknown to registry")
            }
            RegistryError::UploadOutOfOrder { current } => Self::new(
                C::BlobUploadInvalid,
                format!("chunk out of order: the upload holds {current} bytes"),
            )
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            .with_header(
                axum::http::header::RANGE,
                format!("0-{}", current.saturating_sub(1)),
            ),
            RegistryError::UploadInvalid(msg) => Self::new(C::BlobUploadInvalid, msg),
            e @ RegistryError::DigestMismatch { .. } => Self::new(C::DigestInvalid, e.to_string()),
            e @ RegistryError::ManifestInvalid(_) => Self::new(C::ManifestInvalid, e.to_string()),
            e @ RegistryError::ManifestTooLarge { .. } => {
                Self::new(C::SizeInvalid, e.to_string()).with_status(StatusCode::PAYLOAD_TOO_LARGE)
            }
            RegistryError::ManifestBlobUnknown(digest) => Self::new(
                C::ManifestBlobUnknown,
                format!("manifest references {digest}, which is unknown to the repository"),
            )
            .with_detail(serde_json::json!({ "digest": digest.to_string() })),
            RegistryError::ManifestUnknown => {
                Self::new(C::ManifestUnknown, "manifest unknown to registry")
            }
            RegistryError::TagImmutable { tag, pattern } => {
                let detail = serde_json::json!({"tag": tag, "pattern": pattern});
                let message = RegistryError::TagImmutable { tag, pattern }.to_string();
                Self::new(C::Denied, message).with_detail(detail)
            }
            RegistryError::NameUnknown => {
                Self::new(C::NameUnknown, "repository name not known to registry")
            }
            RegistryError::RangeNotSatisfiable { size } => {
                Self::new(C::BlobUnknown, "requested range not satisfiable")
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .with_header(axum::http::header::CONTENT_RANGE, format!("bytes */{size}"))
            }
            RegistryError::Storage(e) => Self::from(e),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        use std::io::ErrorKind as K;
        let unavailable = match &e {
            StorageError::Unavailable(_) => true,
            StorageError::Io(io) => matches!(
                io.kind(),
                K::TimedOut
                    | K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::HostUnreachable
                    | K::NetworkUnreachable
            ),
            _ => false,
        };
        if unavailable {
            Self::unavailable(&e)
        } else {
            Self::internal(&e)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let Inner {
            status,
            code,
            message,
            detail,
            headers,
        } = *self.0;
        let body = ErrorBody {
            errors: [ErrorEntry {
                code,
                message,
                detail,
            }],
        };
        let mut response = (status, Json(body)).into_response();
        response.headers_mut().extend(headers);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn rendered(e: StorageError) -> (StatusCode, HeaderMap, serde_json::Value) {
        let response = ApiError::from(e).into_response();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 16).await.unwrap();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn unreachable_storage_is_503_unavailable_without_details() {
        let (status, headers, body) = rendered(StorageError::Unavailable(
            "S3 PutObject of s3://secret-bucket/x failed".into(),
        ))
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[axum::http::header::RETRY_AFTER], "1");
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
        assert!(!body.to_string().contains("secret-bucket"), "{body}");

        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let (status, _, body) = rendered(StorageError::Io(refused)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    }

    #[tokio::test]
    async fn other_storage_failures_are_500_without_details() {
        let (status, _, body) =
            rendered(StorageError::Backend("corrupt record /var/lib/x".into())).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["errors"][0]["code"], "UNKNOWN");
        assert!(!body.to_string().contains("/var/lib"), "{body}");
    }
}
