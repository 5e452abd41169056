//! Access control: who a caller is and what it may do.
//!
//! Layer rule: this module is pure policy and cryptography over the configuration document
//! ([`crate::config`]); it never touches storage and knows nothing of HTTP. The HTTP layer
//! ([`crate::http::auth`]) extracts credentials from requests, asks [`AuthService`] and maps
//! the answers to responses and challenges.
//!
//! - [`secret`]: credential secrets, stored only as salted argon2 hashes, verified in
//!   constant time.
//! - [`token`]: the registry's short-lived signed access tokens (JWT) and their keys.
//! - [`oidc`]: workload identity, OIDC tokens of federated issuers.
//! - [`policy`]: the one authorization rule, scope × namespace × visibility × action.

pub mod oidc;

use std::sync::Arc;

use crate::config::ConfigHandle;

/// How the data plane is reached, which changes what access control must insist on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transport {
    /// Requests arrive over TLS (challenges announce `https://` realms).
    pub tls: bool,
    /// The listener is reachable from other hosts (not loopback): a configuration without
    /// access control then denies everything instead of allowing everything.
    pub public: bool,
}

/// Authentication and authorization for one data-plane process, following the live
/// configuration.
#[derive(Debug)]
pub struct AuthService {
    config: ConfigHandle,
    transport: Transport,
    oidc: oidc::OidcVerifier,
}

impl AuthService {
    /// The service for this configuration and transport.
    pub fn new(config: ConfigHandle, transport: Transport) -> Arc<Self> {
        Arc::new(Self {
            config,
            transport,
            oidc: oidc::OidcVerifier::new(),
        })
    }

    /// How the process is reached.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The configuration followed.
    pub fn config(&self) -> &ConfigHandle {
        &self.config
    }

    /// The OIDC verifier.
    pub fn oidc(&self) -> &oidc::OidcVerifier {
        &self.oidc
    }
}
