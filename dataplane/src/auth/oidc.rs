//! Workload identity: verification of OIDC tokens from federated issuers.
//!
//! (Interface only; the implementation follows.)

use std::time::SystemTime;

use crate::config::FederationConfig;

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
}

/// Why an OIDC token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The token is not a well-formed JWT.
    #[error("the token is not a well-formed JWT")]
    Malformed,
}

/// Verifies OIDC tokens against the configured federations, caching discovery documents and
/// key sets per issuer.
#[derive(Debug, Default)]
pub struct OidcVerifier {}

impl OidcVerifier {
    /// A verifier with empty caches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies `token` and returns every federation it satisfies (at least one), or why none.
    pub async fn verify(
        &self,
        _token: &str,
        _federations: &[FederationConfig],
        _now: SystemTime,
    ) -> Result<Vec<FederatedIdentity>, OidcError> {
        Err(OidcError::Malformed)
    }
}
