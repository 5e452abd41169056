//! Workload identity: verification of OIDC tokens from federated issuers.
//!
//! A token is accepted for a federation when its issuer is the federation's issuer, its
//! signature verifies with a key the issuer publishes (discovery document, then JWKS), it
//! is within its validity period, its audience contains the federation's audience and its
//! claims satisfy every claim rule of the federation.
//!
//! - [`jwt`]: splitting tokens and checking claims, without I/O.
//! - [`keys`]: the usable public keys of a JWKS document.
//! - [`fetch`]: discovery and JWKS fetching, one HTTP client per CA bundle, and the
//!   per-issuer key-set cache with its refresh and rate limits.
//!
//! Tokens never appear in logs or errors: errors name the check that failed, in words safe
//! to show the client; issuer-side details are kept in fields for logs.

mod fetch;
pub(crate) mod jwt;
mod keys;

#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

use crate::config::{FederationConfig, Problem};
use fetch::{KeyFetcher, Need};
use keys::Selection;

/// A workload identity proved by an OIDC token: one federation whose issuer, audience and
/// claim rules the token satisfies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedIdentity {
    /// Index of the federation in the configuration's `federations`.
    pub federation: usize,
    /// Name of the federation (for logs).
    pub name: String,
    /// The token's issuer.
    pub issuer: String,
    /// The token's subject (`sub`).
    pub subject: String,
    /// When the token expires (`exp`).
    pub expires: Option<SystemTime>,
}

/// Why an OIDC token was not accepted. The messages are safe to show clients; the
/// `issuer`/`detail` fields are for logs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OidcError {
    /// The token is not a well-formed JWT.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// The token is signed with an algorithm that is not accepted (`none`, HMAC, ...).
    #[error("token signing algorithm not accepted")]
    UnsupportedAlgorithm,
    /// A required claim is missing.
    #[error("token lacks the {0:?} claim")]
    MissingClaim(&'static str),
    /// No federation trusts the token's issuer.
    #[error("token issuer not accepted")]
    UnknownIssuer,
    /// The issuer's discovery document or key set could not be fetched.
    #[error("the token issuer could not be reached")]
    IssuerUnavailable {
        /// The issuer.
        issuer: String,
        /// What failed.
        detail: String,
    },
    /// The issuer's discovery document or key set is not acceptable (for example it names
    /// another issuer).
    #[error("the token issuer's discovery document is not acceptable")]
    Discovery {
        /// The issuer.
        issuer: String,
        /// What is wrong.
        detail: String,
    },
    /// The CA bundle configured for the issuer holds no usable certificate.
    #[error("the token issuer's CA bundle is not valid")]
    CaBundle {
        /// The issuer.
        issuer: String,
        /// What is wrong.
        detail: String,
    },
    /// The issuer publishes no key that fits the token's `kid` and algorithm.
    #[error("token signing key not found at the issuer")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    InvalidSignature,
    /// The token has expired.
    #[error("token has expired")]
    Expired,
    /// The token is not valid yet (`nbf` or `iat` in the future).
    #[error("token is not valid yet")]
    NotYetValid,
    /// No federation of the issuer accepts the token's audience.
    #[error("token audience not accepted")]
    AudienceMismatch,
    /// The audience is accepted, but the claims match no federation's rules.
    #[error("token claims do not match any federation")]
    ClaimsMismatch,
}

impl OidcError {
    /// Whether the failure is on the issuer's side and may pass (answer 503 rather than
    /// 401): the issuer could not be reached.
    pub fn is_transient(&self) -> bool {
        matches!(self, OidcError::IssuerUnavailable { .. })
    }

    /// How far verification got before this error: of several failures (federations of one
    /// issuer trusted through different CA bundles), the furthest is reported.
    fn progress(&self) -> u8 {
        match self {
            OidcError::Malformed
            | OidcError::UnsupportedAlgorithm
            | OidcError::MissingClaim(_)
            | OidcError::UnknownIssuer => 0,
            OidcError::IssuerUnavailable { .. }
            | OidcError::Discovery { .. }
            | OidcError::CaBundle { .. } => 1,
            OidcError::UnknownKey | OidcError::InvalidSignature => 2,
            OidcError::Expired | OidcError::NotYetValid => 3,
            OidcError::AudienceMismatch => 4,
            OidcError::ClaimsMismatch => 5,
        }
    }
}

/// A federation and its index in the configuration.
type Candidate<'a> = (usize, &'a FederationConfig);

/// Federations of one issuer trusted through the same CA bundle: one key set serves them.
#[derive(Debug)]
struct TrustGroup<'a> {
    ca_bundle: Option<&'a str>,
    members: Vec<Candidate<'a>>,
}

impl<'a> TrustGroup<'a> {
    /// Groups federations of one issuer by CA bundle, in configuration order. They normally
    /// share one; when they do not, each bundle is its own trust decision with its own key
    /// set.
    fn split(candidates: Vec<Candidate<'a>>) -> Vec<TrustGroup<'a>> {
        let mut groups: Vec<TrustGroup<'a>> = Vec::new();
        for (index, federation) in candidates {
            let ca_bundle = federation.ca_bundle.as_deref();
            match groups.iter_mut().find(|g| g.ca_bundle == ca_bundle) {
                Some(group) => group.members.push((index, federation)),
                None => groups.push(TrustGroup {
                    ca_bundle,
                    members: vec![(index, federation)],
                }),
            }
        }
        groups
    }
}

/// Timeouts, limits and cache lifetimes of an [`OidcVerifier`].
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// Timeout of each HTTP request to an issuer (connect and whole response).
    pub http_timeout: Duration,
    /// Largest discovery or JWKS document accepted.
    pub max_document_bytes: usize,
    /// How long a fetched key set is used before it is refreshed.
    pub jwks_ttl: Duration,
    /// A token whose key is not in the cached set causes a refetch at most this often per
    /// issuer, so unknown `kid`s cannot make the verifier hammer the issuer.
    pub unknown_key_refetch_interval: Duration,
    /// After a failed fetch, no new fetch for this long; requests fail at once meanwhile
    /// (or use the previous key set, if there is one).
    pub failure_backoff: Duration,
    /// Clock skew tolerated for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

impl Default for OidcSettings {
    /// 5 s timeouts, 1 MiB documents, key sets kept 10 minutes, unknown-key refetches at
    /// most every 30 s, 5 s backoff after failures, 30 s leeway.
    fn default() -> Self {
        Self {
            http_timeout: Duration::from_secs(5),
            max_document_bytes: 1024 * 1024,
            jwks_ttl: Duration::from_secs(600),
            unknown_key_refetch_interval: Duration::from_secs(30),
            failure_backoff: Duration::from_secs(5),
            leeway: Duration::from_secs(30),
        }
    }
}

/// Verifies OIDC tokens against the configured federations, caching discovery documents and
/// key sets per issuer. Shared by all requests of a process.
#[derive(Debug)]
pub struct OidcVerifier {
    settings: OidcSettings,
    fetcher: KeyFetcher,
}

impl Default for OidcVerifier {
    fn default() -> Self {
        Self::with_settings(OidcSettings::default())
    }
}

impl OidcVerifier {
    /// A verifier with empty caches and default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// A verifier with empty caches and these settings.
    pub fn with_settings(settings: OidcSettings) -> Self {
        Self {
            fetcher: KeyFetcher::new(settings.clone()),
            settings,
        }
    }

    /// Checks that every federation can be used as configured, before a configuration naming
    /// them is put in force: the issuer is an absolute `http(s)` URL with a host, and the CA
    /// bundle holds certificates that an HTTP client accepts as roots (the client is built
    /// now and kept for the issuer's first fetch). Returns every problem found.
    pub fn prepare(&self, federations: &[FederationConfig]) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (i, federation) in federations.iter().enumerate() {
            match reqwest::Url::parse(&federation.issuer) {
                Ok(url) if matches!(url.scheme(), "https" | "http") && url.has_host() => {}
                Ok(_) => problems.push(Problem {
                    path: format!("federations[{i}].issuer"),
                    message: "must be an absolute https:// URL with a host".into(),
                }),
                Err(e) => problems.push(Problem {
                    path: format!("federations[{i}].issuer"),
                    message: format!("is not a URL: {e}"),
                }),
            }
            if let Err(error) = self
                .fetcher
                .client(&federation.issuer, federation.ca_bundle.as_deref())
            {
                let detail = match error {
                    OidcError::CaBundle { detail, .. } => detail,
                    other => other.to_string(),
                };
                problems.push(Problem {
                    path: format!("federations[{i}].caBundle"),
                    message: format!("cannot be used as trusted roots: {detail}"),
                });
            }
        }
        problems
    }

    /// Verifies `token` and returns every federation it satisfies (at least one, in
    /// configuration order), or why none. `now` is the time the token's validity period is
    /// checked against.
    pub async fn verify(
        &self,
        token: &str,
        federations: &[FederationConfig],
        now: SystemTime,
    ) -> Result<Vec<FederatedIdentity>, OidcError> {
        let token = jwt::parse(token)?;
        let candidates: Vec<Candidate<'_>> = federations
            .iter()
            .enumerate()
            .filter(|(_, f)| f.issuer == token.issuer)
            .collect();
        if candidates.is_empty() {
            return Err(OidcError::UnknownIssuer);
        }

        let mut identities = Vec::new();
        let mut failure: Option<OidcError> = None;
        for group in TrustGroup::split(candidates) {
            match self.verify_group(&token, &group, now).await {
                Ok(found) => identities.extend(found),
                Err(error) => {
                    if failure
                        .as_ref()
                        .is_none_or(|f| error.progress() > f.progress())
                    {
                        failure = Some(error);
                    }
                }
            }
        }
        if identities.is_empty() {
            let error = failure.unwrap_or(OidcError::ClaimsMismatch);
            tracing::debug!(issuer = %token.issuer, error = ?error, "OIDC token refused");
            return Err(error);
        }
        identities.sort_by_key(|identity| identity.federation);
        Ok(identities)
    }

    /// Verifies the token with the keys of its issuer fetched under the group's CA bundle,
    /// then checks it against each federation of the group.
    async fn verify_group(
        &self,
        token: &jwt::UnverifiedToken<'_>,
        group: &TrustGroup<'_>,
        now: SystemTime,
    ) -> Result<Vec<FederatedIdentity>, OidcError> {
        let ca_bundle = group.ca_bundle;
        let kid = token.kid.as_deref();
        let alg = token.alg;
        let has_key = |set: &keys::KeySet| matches!(set.select(kid, alg), Selection::Found(_));

        let (mut set, fetched) = self
            .fetcher
            .keys(&token.issuer, ca_bundle, Need::Current, has_key)
            .await?;
        if !fetched && !has_key(&set) {
            (set, _) = self
                .fetcher
                .keys(&token.issuer, ca_bundle, Need::UnknownKey, has_key)
                .await?;
        }
        let key = match set.select(kid, alg) {
            Selection::Found(key) => key,
            Selection::Missing | Selection::Ambiguous => return Err(OidcError::UnknownKey),
        };
        let valid = jsonwebtoken::crypto::verify(
            token.signature,
            token.signing_input.as_bytes(),
            key.decoding_key(),
            alg,
        )
        .unwrap_or(false);
        if !valid {
            return Err(OidcError::InvalidSignature);
        }

        jwt::check_times(&token.claims, now, self.settings.leeway)?;
        let subject = jwt::subject(&token.claims)?;
        let mut audience_accepted = false;
        let mut identities = Vec::new();
        for (index, federation) in &group.members {
            if !jwt::audience_contains(&token.claims, &federation.audience) {
                continue;
            }
            audience_accepted = true;
            if jwt::rules_match(&token.claims, &federation.claim_rules) {
                identities.push(FederatedIdentity {
                    federation: *index,
                    name: federation.name.clone(),
                    issuer: token.issuer.clone(),
                    subject: subject.clone(),
                    expires: jwt::expiry(&token.claims),
                });
            }
        }
        match (identities.is_empty(), audience_accepted) {
            (false, _) => Ok(identities),
            (true, true) => Err(OidcError::ClaimsMismatch),
            (true, false) => Err(OidcError::AudienceMismatch),
        }
    }
}
