//! Request bodies of the routes that are not blob uploads: read whole, within a limit.
//!
//! A body over its limit is answered `413` only after the rest of it has been read and thrown
//! away, up to [`DRAIN_LIMIT`] bytes and for at most [`DRAIN_TIME`]: a client that sends the
//! whole body before it reads the response (Python's `http.client`, `curl --data`) would
//! otherwise see a reset connection instead of the error. The connection is closed after the
//! `413` (`Connection: close`). A client that asked `Expect: 100-continue` is answered at once
//! and never sends the body.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::http::header::EXPECT;
use bytes::BytesMut;
use futures_util::StreamExt;

use super::headers;

/// The most a refused body is read to be thrown away before the connection is closed anyway.
pub const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;
/// The longest a refused body is read to be thrown away.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);
/// The limit of bodies of routes that expect none or a small one: token requests, `GET`,
/// `HEAD`, `DELETE`.
pub const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// `Content-Length` is not a number.
    #[error("Content-Length is not a number")]
    BadLength,
    /// The body (declared or sent) is larger than the limit.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body failed while it was read (the client went away or stalled).
    #[error("request body failed: {0}")]
    Failed(String),
}

/// Reads a whole body of at most `limit` bytes; a larger one is drained (see the module docs)
/// and refused with [`BodyError::TooLarge`].
pub async fn read_whole(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, BodyError> {
    let declared = headers::content_length(headers).map_err(|()| BodyError::BadLength)?;
    let too_large = BodyError::TooLarge { limit };
    if let Some(n) = declared
        && n > limit as u64
    {
        if !expects_continue(headers) && n <= DRAIN_LIMIT {
            drain(body, 0).await;
        }
        return Err(too_large);
    }
    let capacity = declared.map_or(0, |n| n as usize);
    let mut buf = BytesMut::with_capacity(capacity);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Failed(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            let read = (buf.len() + chunk.len()) as u64;
            drop(buf);
            drain(Body::from_stream(stream), read).await;
            return Err(too_large);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads and discards what is left of `body` (of which `already` bytes were read), up to
/// [`DRAIN_LIMIT`] bytes in all and for at most [`DRAIN_TIME`].
async fn drain(body: Body, already: u64) {
    let mut stream = body.into_data_stream();
    let mut read = already;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while read <= DRAIN_LIMIT {
            match stream.next().await {
                Some(Ok(chunk)) => read += chunk.len() as u64,
                Some(Err(_)) | None => break,
            }
        }
    })
    .await;
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use axum::http::header::CONTENT_LENGTH;

    use super::*;

    fn with_length(n: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from(n));
        h
    }

    #[tokio::test]
    async fn bodies_within_the_limit_are_read_whole() {
        let body = Body::from(vec![7u8; 1000]);
        let bytes = read_whole(body, &with_length(1000), 1000).await.unwrap();
        assert_eq!(bytes.len(), 1000);
        let chunks = futures_util::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from_static(b"ab")),
            Ok(Bytes::from_static(b"cd")),
        ]);
        let bytes = read_whole(Body::from_stream(chunks), &HeaderMap::new(), 4)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"abcd");
    }

    #[tokio::test]
    async fn larger_bodies_are_refused_whether_declared_or_streamed() {
        let err = read_whole(Body::from(vec![0u8; 11]), &with_length(11), 10)
            .await
            .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }), "{err}");
        let chunks = futures_util::stream::iter(
            (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 4]))),
        );
        let err = read_whole(Body::from_stream(chunks), &HeaderMap::new(), 10)
            .await
            .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }), "{err}");
        let mut bad = HeaderMap::new();
        bad.insert(CONTENT_LENGTH, HeaderValue::from_static("ten"));
        let err = read_whole(Body::empty(), &bad, 10).await.unwrap_err();
        assert!(matches!(err, BodyError::BadLength), "{err}");
    }
}
