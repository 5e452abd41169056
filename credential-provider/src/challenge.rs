//! The registry's token endpoint, from its `WWW-Authenticate: Bearer realm=...,service=...`
//! challenge.

use crate::ProviderError;

/// Where and for which service tokens are issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The token endpoint URL.
    pub realm: String,
    /// The service name tokens are issued for.
    pub service: String,
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value of `host`. The realm must be on the same host (the
    /// ServiceAccount token is sent there), and `https://` unless `plain_http`.
    pub fn parse(host: &str, header: &str, plain_http: bool) -> Result<Self, ProviderError> {
        let refused = |why: String| ProviderError::Challenge(host.to_owned(), why);
        let params = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| refused(format!("not a Bearer challenge: {header:?}")))?;
        let mut realm = None;
        let mut service = None;
        for (key, value) in parameters(params) {
            match key.as_str() {
                "realm" => realm = Some(value),
                "service" => service = Some(value),
                _ => {}
            }
        }
        let realm = realm.ok_or_else(|| refused("the challenge names no realm".into()))?;
        let (scheme, rest) = realm
            .split_once("://")
            .ok_or_else(|| refused(format!("realm {realm:?} is not a URL")))?;
        let realm_host = rest.split(['/', '?']).next().unwrap_or_default();
        if realm_host != host {
            return Err(refused(format!(
                "realm {realm:?} is not on the registry's host: the ServiceAccount token is \
                 only sent to {host}"
            )));
        }
        match scheme {
            "https" => {}
            "http" if plain_http => {}
            _ => {
                return Err(refused(format!(
                    "realm {realm:?} is not https:// (--plain-http allows http://)"
                )));
            }
        }
        Ok(Self {
            realm,
            service: service.unwrap_or_else(|| host.to_owned()),
        })
    }
}

/// `key="value"` pairs separated by commas (values may hold commas inside quotes).
fn parameters(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.push((key, value.to_owned()));
        rest = after.trim_start_matches(',').trim();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_realm_and_service_come_from_the_challenge() {
        let c = Challenge::parse(
            "registry.example.com",
            r#"Bearer realm="https://registry.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
            false,
        )
        .unwrap();
        assert_eq!(c.realm, "https://registry.example.com/token");
        assert_eq!(c.service, "registry.example.com");
    }

    #[test]
    fn a_token_is_only_sent_to_the_registry_host_over_https() {
        for (header, plain, needle) in [
            (r#"Basic realm="registry""#, false, "not a Bearer"),
            (r#"Bearer service="x""#, false, "no realm"),
            (
                r#"Bearer realm="https://evil.example.com/token",service="x""#,
                false,
                "not on the registry's host",
            ),
            (
                r#"Bearer realm="http://127.0.0.1:5000/token",service="x""#,
                false,
                "not https://",
            ),
        ] {
            let host = if header.contains("127.0.0.1") {
                "127.0.0.1:5000"
            } else {
                "registry.example.com"
            };
            let err = Challenge::parse(host, header, plain)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{header}: {err}");
        }
        let c = Challenge::parse(
            "127.0.0.1:5000",
            r#"Bearer realm="http://127.0.0.1:5000/token""#,
            true,
        )
        .unwrap();
        assert_eq!(c.service, "127.0.0.1:5000");
    }
}
