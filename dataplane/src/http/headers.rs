//! Parsing of the request headers the API depends on. Pure functions over header values.

use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_LENGTH, RANGE};

use crate::registry::ByteRange;

/// The `Content-Length` header: `Ok(None)` when absent, `Err` when malformed.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    match headers.get(CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or(()),
    }
}

/// A blob `Range` request header (`bytes=a-b`, `bytes=a-`, `bytes=-n`). Headers this
/// registry does not serve as a range (absent, malformed, several ranges, other units) are
/// `None`, and the whole blob is sent, as RFC 9110 allows.
pub fn blob_range(headers: &HeaderMap) -> Option<ByteRange> {
    let spec = headers.get(RANGE)?.to_str().ok()?.trim();
    let spec = spec.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let num = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => Some(ByteRange::Suffix(num(last)?)),
        (false, true) => Some(ByteRange::From(num(first)?)),
        (false, false) => Some(ByteRange::FromTo(num(first)?, num(last)?)),
        (true, true) => None,
    }
}

/// An upload chunk's `Content-Range` (`<start>-<end>`, inclusive; an optional `bytes ` or
/// `bytes=` prefix and a `/<total>` suffix are tolerated). Returns `(start, length)`.
pub fn upload_content_range(value: &str) -> Option<(u64, u64)> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes=")
        .or_else(|| v.strip_prefix("bytes "))
        .unwrap_or(v);
    let v = v.split('/').next()?.trim();
    let (start, end) = v.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    // `0-18446744073709551615` would be 2^64 bytes long: not a length, so not a range.
    let length = end.checked_sub(start)?.checked_add(1)?;
    Some((start, length))
}

/// Whether a manifest stored with `media_type` may be served to a client sending these
/// `Accept` headers: yes when there are none, when one of them is a wildcard (`*/*`,
/// `type/*`), or when one names the media type (parameters ignored; `q=0` excludes).
pub fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for value in headers.get_all(ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let range = parts.next().unwrap_or_default().trim();
            if range.is_empty() {
                continue;
            }
            any = true;
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            let matches = range == "*/*"
                || range.eq_ignore_ascii_case(media_type)
                || range.strip_suffix("/*").is_some_and(|top| {
                    media_type
                        .split_once('/')
                        .is_some_and(|(t, _)| t.eq_ignore_ascii_case(top))
                });
            if matches {
                return true;
            }
        }
    }
    !any
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: axum::http::HeaderName, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn blob_ranges() {
        let r = |v: &str| blob_range(&with(RANGE, &[v]));
        assert_eq!(r("bytes=0-9"), Some(ByteRange::FromTo(0, 9)));
        assert_eq!(r("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(r("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(r("bytes=0-1,4-5"), None);
        assert_eq!(r("items=0-1"), None);
        assert_eq!(r("bytes=x-1"), None);
        assert_eq!(blob_range(&HeaderMap::new()), None);
    }

    #[test]
    fn upload_content_ranges() {
        assert_eq!(upload_content_range("0-99"), Some((0, 100)));
        assert_eq!(upload_content_range("bytes 100-199/*"), Some((100, 100)));
        assert_eq!(upload_content_range("5-4"), None);
        assert_eq!(upload_content_range("junk"), None);
        // A range spanning every u64 offset has no u64 length (found by the `ranges` fuzz target).
        assert_eq!(upload_content_range("0-18446744073709551615"), None);
        assert_eq!(
            upload_content_range("1-18446744073709551615"),
            Some((1, u64::MAX))
        );
    }

    #[test]
    fn accept_negotiation() {
        let oci = "application/vnd.oci.image.manifest.v1+json";
        let docker = "application/vnd.docker.distribution.manifest.v2+json";
        assert!(accepts(&HeaderMap::new(), oci));
        assert!(accepts(&with(ACCEPT, &[oci]), oci));
        assert!(!accepts(&with(ACCEPT, &[docker]), oci));
        assert!(accepts(&with(ACCEPT, &[docker, oci]), oci));
        assert!(accepts(
            &with(ACCEPT, &[&format!("{docker}, {oci};q=0.5")]),
            oci
        ));
        assert!(!accepts(
            &with(ACCEPT, &[&format!("{docker}, {oci};q=0")]),
            oci
        ));
        assert!(accepts(&with(ACCEPT, &[docker, "*/*"]), oci));
        assert!(accepts(&with(ACCEPT, &["application/*"]), oci));
        assert!(!accepts(&with(ACCEPT, &["text/*"]), oci));
    }
}
