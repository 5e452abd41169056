//! Fetching and caching issuers' key sets: OIDC discovery, then the JWKS it names.
//!
//! One cache entry per issuer and trust configuration (CA bundle). Fetches of one entry
//! are serialised by an async lock: concurrent verifications that need keys wait for one
//! fetch instead of each starting their own, and find its result when they get the lock.
//! A routine refresh of a key set that is merely old does not make anyone wait: while one
//! task refreshes, the others keep using the old set.

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

/// The cache entry of one issuer.
#[derive(Debug, Default)]
struct IssuerEntry {
    /// What is known; locked only briefly, never across a fetch.
    state: Mutex<IssuerState>,
    /// Held for the duration of a fetch.
    fetching: tokio::sync::Mutex<()>,
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

/// What to do with the cache as it is.
#[derive(Debug)]
enum Decision {
    /// Use this set.
    Use(Arc<KeySet>),
    /// There is no set, and fetching is backing off after this failure.
    Fail(OidcError),
    /// Fetch; the current set, if any, may serve meanwhile.
    Fetch(Option<Arc<KeySet>>),
}

impl IssuerState {
    fn decide(
        &self,
        settings: &OidcSettings,
        need: Need,
        has_key: &impl Fn(&KeySet) -> bool,
    ) -> Decision {
        let now = Instant::now();
        let backing_off = self
            .last_failure
            .as_ref()
            .is_some_and(|(at, _)| now.duration_since(*at) < settings.failure_backoff);
        let fresh = self
            .fetched_at
            .is_some_and(|at| now.duration_since(at) < settings.jwks_ttl);
        let Some(keys) = &self.keys else {
            return match &self.last_failure {
                Some((_, error)) if backing_off => Decision::Fail(error.clone()),
                _ => Decision::Fetch(None),
            };
        };
        let refetch = match need {
            _ if !fresh => true,
            Need::Current => false,
            Need::UnknownKey => {
                !has_key(keys)
                    && self.last_unknown_key_fetch.is_none_or(|at| {
                        now.duration_since(at) >= settings.unknown_key_refetch_interval
                    })
            }
        };
        if refetch && !backing_off {
            Decision::Fetch(Some(keys.clone()))
        } else {
            Decision::Use(keys.clone())
        }
    }
}

/// HTTP clients and the per-issuer key-set cache.
#[derive(Debug)]
pub(super) struct KeyFetcher {
    settings: OidcSettings,
    /// One client per distinct CA bundle (`None`: system roots only).
    clients: Mutex<HashMap<Option<String>, reqwest::Client>>,
    issuers: Mutex<HashMap<IssuerKey, Arc<IssuerEntry>>>,
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
    /// fresh, and whether it was fetched during this call.
    ///
    /// Without a cached set, the first caller fetches and the others wait for its result.
    /// A set older than [`OidcSettings::jwks_ttl`] is refreshed by one caller while the
    /// others use it as it is; when the refresh fails the old set stays in use. After a
    /// failure no fetch starts for [`OidcSettings::failure_backoff`]. With
    /// [`Need::UnknownKey`] and a set for which `has_key` is false, the set is refetched
    /// (callers wait for it), at most once per
    /// [`OidcSettings::unknown_key_refetch_interval`].
    pub(super) async fn keys(
        &self,
        issuer: &str,
        ca_bundle: Option<&str>,
        need: Need,
        has_key: impl Fn(&KeySet) -> bool,
    ) -> Result<(Arc<KeySet>, bool), OidcError> {
        let started = Instant::now();
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
        let lock_state = || entry.state.lock().unwrap_or_else(PoisonError::into_inner);
        let fetched_since_start =
            |state: &IssuerState| state.fetched_at.is_some_and(|at| at >= started);

        let current = match lock_state().decide(&self.settings, need, &has_key) {
            Decision::Use(keys) => return Ok((keys, false)),
            Decision::Fail(error) => return Err(error),
            Decision::Fetch(current) => current,
        };
        let _fetching = match (current, need) {
            // A routine refresh: whoever is already at it will finish it.
            (Some(current), Need::Current) => match entry.fetching.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok((current, false)),
            },
            _ => entry.fetching.lock().await,
        };

        // Decide again: the fetch this call waited for may have settled the matter.
        {
            let mut state = lock_state();
            match state.decide(&self.settings, need, &has_key) {
                Decision::Use(keys) => return Ok((keys, fetched_since_start(&state))),
                Decision::Fail(error) => return Err(error),
                Decision::Fetch(current) => {
                    if need == Need::UnknownKey && current.is_some() {
                        state.last_unknown_key_fetch = Some(Instant::now());
                    }
                }
            }
        }
        let result = self.fetch(issuer, ca_bundle).await;
        let mut state = lock_state();
        match result {
            Ok(keys) => {
                tracing::debug!(issuer, keys = keys.len(), "fetched OIDC issuer keys");
                let keys = Arc::new(keys);
                state.keys = Some(keys.clone());
                state.fetched_at = Some(Instant::now());
                state.last_failure = None;
                Ok((keys, true))
            }
            Err(error) => {
                tracing::warn!(issuer, error = ?error, stale_keys = state.keys.is_some(),
                    "fetching OIDC issuer keys failed");
                state.last_failure = Some((Instant::now(), error.clone()));
                match &state.keys {
                    Some(keys) => Ok((keys.clone(), false)),
                    None => Err(error),
                }
            }
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
        // Plain HTTP only where the document allows it: a loopback issuer whose keys are on
        // loopback too.
        let plain_allowed =
            crds::config::is_loopback_http(issuer) && crds::config::is_loopback_http(&jwks_uri);
        if !secure && !plain_allowed {
            return Err(discovery_error(format!(
                "jwks_uri {jwks_uri:?} is not an https:// URL (plain http:// only from a \
                 loopback issuer to a loopback address)"
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
    pub(super) fn client(
        &self,
        issuer: &str,
        ca_bundle: Option<&str>,
    ) -> Result<reqwest::Client, OidcError> {
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
