//! Fetching and caching issuers' key sets: OIDC discovery, then the JWKS it names.
//!
//! One cache entry per issuer and trust configuration (CA bundle). Each entry is guarded
//! by an async mutex held across the fetch, so concurrent verifications wait for one fetch
//! instead of each starting their own, and find its result when they get the lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::Deserialize;

use super::keys::KeySet;
use super::{OidcError, OidcSettings};

/// Path of the discovery document below the issuer (OpenID Connect Discovery 1.0, §4).
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Media types of a JWKS document (RFC 7517 §8.5 registers the first).
const JWKS_ACCEPT: &str = "application/jwk-set+json, application/json";

/// Which issuer, trusted how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct IssuerKey {
    issuer: String,
    ca_bundle: Option<String>,
}

/// What is known of one issuer's keys.
#[derive(Debug, Default)]
struct IssuerState {
    /// The last key set fetched successfully.
    keys: Option<Arc<KeySet>>,
    /// When `keys` was fetched.
    fetched_at: Option<Instant>,
    /// When a token with an unknown key last caused a fetch.
    last_unknown_key_fetch: Option<Instant>,
    /// The last failed fetch, if no fetch succeeded since.
    last_failure: Option<(Instant, OidcError)>,
}

/// Why the key set is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// Any current key set will do.
    Current,
    /// The cached set lacked the token's key: refetch, unless that happened recently.
    UnknownKey,
}

/// HTTP clients and the per-issuer key-set cache.
#[derive(Debug)]
pub(super) struct KeyFetcher {
    settings: OidcSettings,
    /// One client per distinct CA bundle (`None`: system roots only).
    clients: Mutex<HashMap<Option<String>, reqwest::Client>>,
    issuers: Mutex<HashMap<IssuerKey, Arc<tokio::sync::Mutex<IssuerState>>>>,
    /// Fetches started (discovery and JWKS together count once), for tests.
    #[cfg(test)]
    pub(super) fetches: std::sync::atomic::AtomicUsize,
}

impl KeyFetcher {
    pub(super) fn new(settings: OidcSettings) -> Self {
        Self {
            settings,
            clients: Mutex::default(),
            issuers: Mutex::default(),
            #[cfg(test)]
            fetches: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The key set of `issuer` fetched with trust in `ca_bundle`, from the cache when it is
    /// fresh. A stale set is refreshed; when the refresh fails the stale set is still used
    /// (and the refresh retried after the failure backoff). With [`Need::UnknownKey`] and a
    /// set lacking `kid`, the set is refetched at most once per
    /// [`OidcSettings::unknown_key_refetch_interval`]. The flag tells whether this call
    /// fetched the set.
    pub(super) async fn keys(
        &self,
        issuer: &str,
        ca_bundle: Option<&str>,
        need: Need,
        has_key: impl Fn(&KeySet) -> bool,
    ) -> Result<(Arc<KeySet>, bool), OidcError> {
        let entry = {
            let mut issuers = self.issuers.lock().unwrap_or_else(PoisonError::into_inner);
            issuers
                .entry(IssuerKey {
                    issuer: issuer.to_owned(),
                    ca_bundle: ca_bundle.map(str::to_owned),
                })
                .or_default()
                .clone()
        };
        let mut state = entry.lock().await;
        let now = Instant::now();
        let backing_off = state
            .last_failure
            .as_ref()
            .is_some_and(|(at, _)| now.duration_since(*at) < self.settings.failure_backoff);
        let fresh = state
            .fetched_at
            .is_some_and(|at| now.duration_since(at) < self.settings.jwks_ttl);

        let fetch = match (&state.keys, need) {
            (None, _) => true,
            (Some(_), _) if !fresh => true,
            (Some(keys), Need::UnknownKey) => {
                !has_key(keys)
                    && state.last_unknown_key_fetch.is_none_or(|at| {
                        now.duration_since(at) >= self.settings.unknown_key_refetch_interval
                    })
            }
            (Some(_), Need::Current) => false,
        };
        let fetch = fetch && !backing_off;
        if fetch {
            if need == Need::UnknownKey && state.keys.is_some() {
                state.last_unknown_key_fetch = Some(now);
            }
            match self.fetch(issuer, ca_bundle).await {
                Ok(keys) => {
                    tracing::debug!(issuer, keys = keys.len(), "fetched OIDC issuer keys");
                    state.keys = Some(Arc::new(keys));
                    state.fetched_at = Some(Instant::now());
                    state.last_failure = None;
                }
                Err(error) => {
                    tracing::warn!(issuer, error = ?error, stale_keys = state.keys.is_some(),
                        "fetching OIDC issuer keys failed");
                    state.last_failure = Some((Instant::now(), error));
                }
            }
        }
        match (&state.keys, &state.last_failure) {
            (Some(keys), _) => Ok((keys.clone(), fetch)),
            (None, Some((_, error))) => Err(error.clone()),
            (None, None) => Err(OidcError::IssuerUnavailable {
                issuer: issuer.to_owned(),
                detail: "no key set fetched yet".to_owned(),
            }),
        }
    }

    /// Discovery, then the JWKS.
    async fn fetch(&self, issuer: &str, ca_bundle: Option<&str>) -> Result<KeySet, OidcError> {
        #[cfg(test)]
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let client = self.client(issuer, ca_bundle)?;
        let unavailable = |detail: String| OidcError::IssuerUnavailable {
            issuer: issuer.to_owned(),
            detail,
        };
        let discovery_error = |detail: String| OidcError::Discovery {
            issuer: issuer.to_owned(),
            detail,
        };

        let discovery_url = discovery_url(issuer);
        let body = self
            .get(&client, &discovery_url, "application/json")
            .await
            .map_err(unavailable)?;
        let discovery: Discovery = serde_json::from_slice(&body).map_err(|e| {
            discovery_error(format!("{discovery_url}: not a discovery document: {e}"))
        })?;
        if discovery.issuer != issuer {
            return Err(discovery_error(format!(
                "{discovery_url} names issuer {:?}",
                discovery.issuer
            )));
        }
        let jwks_uri = discovery.jwks_uri;
        let secure = jwks_uri.starts_with("https://");
        let plain_allowed = issuer.starts_with("http://") && jwks_uri.starts_with("http://");
        if !secure && !plain_allowed {
            return Err(discovery_error(format!(
                "jwks_uri {jwks_uri:?} is not an https:// URL"
            )));
        }
        // Kubernetes answers 406 to a JWKS request that accepts only `application/json`.
        let body = self
            .get(&client, &jwks_uri, JWKS_ACCEPT)
            .await
            .map_err(unavailable)?;
        KeySet::parse(&body).map_err(|e| discovery_error(format!("{jwks_uri}: {e}")))
    }

    /// GET `url` asking for `accept`, refusing error statuses and bodies over the size cap.
    async fn get(
        &self,
        client: &reqwest::Client,
        url: &str,
        accept: &str,
    ) -> Result<Vec<u8>, String> {
        let cap = self.settings.max_document_bytes;
        let mut response = client
            .get(url)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: status {status}"));
        }
        if response
            .content_length()
            .is_some_and(|len| len > cap as u64)
        {
            return Err(format!("GET {url}: response larger than {cap} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > cap {
                return Err(format!("GET {url}: response larger than {cap} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The client for `ca_bundle`, built on first use.
    fn client(&self, issuer: &str, ca_bundle: Option<&str>) -> Result<reqwest::Client, OidcError> {
        let key = ca_bundle.map(str::to_owned);
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let bundle_error = |detail: String| OidcError::CaBundle {
            issuer: issuer.to_owned(),
            detail,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(self.settings.http_timeout)
            .connect_timeout(self.settings.http_timeout)
            .redirect(redirect_policy())
            .user_agent(concat!("registry-dataplane/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_bundle {
            let certificates = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| bundle_error(error_chain(&e)))?;
            if certificates.is_empty() {
                return Err(bundle_error("no PEM certificate in the bundle".to_owned()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(|e| bundle_error(error_chain(&e)))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Follows at most three redirects, and none from `https://` to anything else.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() != "https"
            && attempt.previous().iter().any(|url| url.scheme() == "https");
        if downgrade {
            attempt.error("redirect from https:// to another scheme")
        } else if attempt.previous().len() > 3 {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

/// The fields of the discovery document this verifier uses.
#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// `{issuer}/.well-known/openid-configuration`, with a trailing `/` of the issuer removed
/// first (Discovery §4.1), so `https://a/` and `https://a/tenant/` both work.
fn discovery_url(issuer: &str) -> String {
    format!(
        "{}{DISCOVERY_PATH}",
        issuer.strip_suffix('/').unwrap_or(issuer)
    )
}

/// An error with its sources, for logs (reqwest's own message omits the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_url_drops_one_trailing_slash_of_the_issuer() {
        assert_eq!(
            discovery_url("https://issuer.example"),
            "https://issuer.example/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://issuer.example/tenant/"),
            "https://issuer.example/tenant/.well-known/openid-configuration"
        );
    }

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        let fetcher = KeyFetcher::new(OidcSettings::default());
        let err = fetcher
            .client("https://issuer.example", Some("not pem"))
            .expect_err("no certificate");
        assert!(matches!(err, OidcError::CaBundle { .. }), "{err:?}");
        assert!(fetcher.client("https://issuer.example", None).is_ok());
    }
}
