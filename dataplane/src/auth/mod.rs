//! Access control: who a caller is and what it may do.
//!
//! Layer rule: this module is pure policy and cryptography over the configuration document
//! ([`crate::config`]); it never touches storage and knows nothing of HTTP. The HTTP layer
//! ([`crate::http::auth`] and the token endpoint) extracts credentials from requests, asks
//! [`AuthService`] and maps the answers to responses and challenges.
//!
//! - [`secret`]: credential secrets, stored only as salted argon2 hashes, verified in
//!   constant time, in a queue that serves sources without recent failures first.
//! - [`throttle`]: limits on failed logins per source address and per credential id.
//! - [`token`]: the registry's short-lived signed access tokens (JWT) and their keys.
//! - [`oidc`]: workload identity, OIDC tokens of federated issuers.
//! - [`policy`]: the one authorization rule, scope × namespace × visibility × action.
//! - [`audit`]: the audit trail, as structured `tracing` events.
//!
//! Everything derived from the configuration (namespace and credential indexes, loaded keys,
//! trusted issuers, verified tokens) lives in one [`AccessIndex`], built in full by
//! [`AuthService::build_index`] before a document is put in force (a document whose keys or
//! federations cannot be used is refused there, never half-applied). The process swaps whole
//! indexes (see [`crate::live`]), so a reload takes effect on the next request and no request
//! reads storage or rebuilds anything to authorize.

pub mod audit;
pub mod oidc;
pub mod policy;
pub mod secret;
pub mod throttle;
pub mod token;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, CredentialConfig, LoginLimits, Problem, Scope, SigningKey};
use crate::oci::RepoName;

pub use policy::{Action, Actions, Grants, Namespaces};
use token::{Claims, KeySet, ResourceAccess, TokenError, TokenUse};

/// The user name under which clients present an OIDC token as their password.
pub const OIDC_USERNAME: &str = "oidc";
/// The user name under which clients present a refresh token of this registry as their
/// password (the convention of Docker's identity tokens). Kubelet credential providers
/// return it, with a workload identity's refresh token.
pub const TOKEN_USERNAME: &str = "<token>";
/// Longest lifetime of a refresh token.
pub const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest lifetime of a workload identity's refresh token (never past its OIDC token).
pub const FEDERATED_REFRESH_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);
/// Most verified access tokens remembered per configuration.
const VERIFIED_TOKENS_AT_MOST: usize = 8192;

/// How the data plane is reached, which changes what access control must insist on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transport {
    /// Requests arrive over TLS (challenges announce `https://` realms).
    pub tls: bool,
    /// The listener is reachable from other hosts (not loopback): a configuration without
    /// access control then denies everything instead of allowing everything.
    pub public: bool,
}

/// How requests are authorized under the current configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No access control configured, loopback listener: every caller may do everything.
    Open,
    /// Access control configured: credentials, tokens, visibility.
    Enforced,
    /// No access control configured on a public listener: nothing is allowed.
    Closed,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials were presented.
    Anonymous,
    /// An access credential, by id.
    Credential(String),
    /// A workload identity proved by an OIDC token.
    Federated {
        /// The federation name.
        federation: String,
        /// The token's subject.
        subject: String,
    },
}

impl Principal {
    /// The subject written into tokens (`sub`).
    pub fn subject(&self) -> String {
        match self {
            Self::Anonymous => String::new(),
            Self::Credential(id) => id.clone(),
            Self::Federated {
                federation,
                subject,
            } => format!("federation:{federation}:{subject}"),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("anonymous"),
            Self::Credential(id) => write!(f, "credential:{id}"),
            Self::Federated {
                federation,
                subject,
            } => write!(f, "federation:{federation}:{subject}"),
        }
    }
}

/// An authenticated caller and the namespaces it holds a scope on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Who.
    pub principal: Principal,
    /// Its grants.
    pub grants: Grants,
    /// A workload identity: every federation its token satisfied.
    pub federations: Vec<String>,
    /// A workload identity: when its proof (the OIDC token) expires.
    pub not_after: Option<SystemTime>,
}

impl Identity {
    /// The anonymous caller.
    pub fn anonymous() -> Self {
        Self::with(Principal::Anonymous, Grants::none())
    }

    /// A caller with grants and no federation.
    pub fn with(principal: Principal, grants: Grants) -> Self {
        Self {
            principal,
            grants,
            federations: Vec::new(),
            not_after: None,
        }
    }
}

/// Why a caller could not be authenticated. Messages are safe to send to clients.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown credential id or wrong secret (never says which).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// The secret matched, but the credential is not valid yet.
    #[error("credential {0:?} is not valid yet")]
    NotYetValid(String),
    /// The secret matched, but the credential (or this rotated-out secret) has expired.
    #[error("credential {0:?} has expired")]
    Expired(String),
    /// The OIDC token was refused.
    #[error("workload identity token refused: {0}")]
    Oidc(#[from] oidc::OidcError),
    /// A registry token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A refresh token was used as an access token or the other way round.
    #[error("invalid token: wrong token type")]
    WrongTokenUse,
    /// No access control is configured and the listener is public: nothing is allowed.
    #[error("access control is not configured on this registry")]
    Closed,
    /// Too many failed logins from this source (or for this credential): refused before any
    /// secret was checked.
    #[error("too many failed logins from this {}; retry in {} s", .0.limit.as_str().replace("source", "address"), retry_after_secs(.0.retry_after))]
    Throttled(throttle::Throttled),
}

/// Whole seconds to wait, rounded up (at least one): the `Retry-After` value.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl AuthError {
    /// Whether the failure is temporary (an OIDC issuer could not be reached): the client
    /// should retry later rather than fix its credentials.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Oidc(e) if e.is_transient())
    }
}

/// One requested scope of a token request (`repository:acme/app:pull,push`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeRequest {
    /// Actions on a repository (`*` for all).
    Repository(RepoName, Vec<String>),
    /// The catalog (`registry:catalog:*`).
    Catalog,
}

impl ScopeRequest {
    /// Parses space-separated scopes, skipping the malformed ones (a token simply does not
    /// grant what was not understood).
    pub fn parse_all<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<Self> {
        texts
            .into_iter()
            .flat_map(str::split_whitespace)
            .filter_map(Self::parse)
            .collect()
    }

    /// Parses one scope.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, rest) = text.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        let actions: Vec<String> = actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        // `repository(plugin)` and similar class suffixes name the same resource.
        match kind.split('(').next()? {
            "repository" => Some(Self::Repository(name.parse().ok()?, actions)),
            "registry" if name == "catalog" => Some(Self::Catalog),
            _ => None,
        }
    }
}

/// A freshly issued token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The signed JWT.
    pub token: String,
    /// Its lifetime.
    pub expires_in: Duration,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// What it grants.
    pub claims: Claims,
}

/// Why a document cannot be put in force although it is valid: a token key or federation it
/// names cannot be built. Every problem found is listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot apply the configuration:{}", problems_list(.problems))]
pub struct IndexError {
    /// What cannot be built, by field path (`tokens.keys[0].privateKey`, `federations[1].caBundle`).
    pub problems: Vec<Problem>,
}

impl IndexError {
    /// Whether a token-signing key is among the problems.
    pub fn concerns_keys(&self) -> bool {
        self.problems.iter().any(|p| p.path.starts_with("tokens"))
    }
}

fn problems_list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

/// Everything derived from one configuration that authorization needs per request, built
/// in full before the configuration is put in force.
#[derive(Debug)]
pub struct AccessIndex {
    config: Arc<Config>,
    in_force: bool,
    mode: Mode,
    namespaces: Namespaces,
    immutable_tags: HashMap<String, Vec<String>>,
    credentials: HashMap<String, usize>,
    /// Verified for an unknown credential id: the parameters of the configured hashes.
    decoy: String,
    keys: KeySet,
    verified: Mutex<HashMap<String, Arc<Claims>>>,
}

impl AccessIndex {
    fn build(
        config: Arc<Config>,
        transport: Transport,
        fallback_key: &SigningKey,
        oidc: &oidc::OidcVerifier,
    ) -> Result<Self, IndexError> {
        let spec = &config.spec;
        let mut problems = Vec::new();
        let keys = match KeySet::load(&spec.tokens, fallback_key) {
            Ok(keys) => Some(keys),
            Err(errors) => {
                for error in errors {
                    let path = match &error {
                        TokenError::Key { id, .. } => {
                            match spec.tokens.keys.iter().position(|k| &k.id == id) {
                                Some(i) => format!("tokens.keys[{i}].privateKey"),
                                None => "tokens.active".to_owned(),
                            }
                        }
                        _ => "tokens.keys".to_owned(),
                    };
                    problems.push(Problem {
                        path,
                        message: error.to_string(),
                    });
                }
                None
            }
        };
        problems.extend(oidc.prepare(&spec.federations));
        let Some(keys) = keys.filter(|_| problems.is_empty()) else {
            return Err(IndexError { problems });
        };
        let mode = if spec.access_control_enabled() {
            Mode::Enforced
        } else if transport.public {
            Mode::Closed
        } else {
            Mode::Open
        };
        if mode == Mode::Enforced && spec.tokens.keys.is_empty() {
            tracing::warn!(
                "no token signing keys configured: tokens are signed with a key of this \
                 process only, so they do not work across replicas"
            );
        }
        Ok(Self {
            namespaces: Namespaces::from_config(&config),
            immutable_tags: spec
                .namespaces
                .iter()
                .filter(|ns| !ns.immutable_tags.is_empty())
                .map(|ns| (ns.name.clone(), ns.immutable_tags.clone()))
                .collect(),
            credentials: spec
                .credentials
                .iter()
                .enumerate()
                .map(|(i, c)| (c.id.clone(), i))
                .collect(),
            decoy: spec
                .credentials
                .iter()
                .find_map(|c| secret::decoy_like(&c.secret_hash))
                .unwrap_or_else(|| secret::default_decoy().to_owned()),
            keys,
            mode,
            in_force: true,
            verified: Mutex::new(HashMap::new()),
            config,
        })
    }

    /// The index of a process that has no document in force yet: nothing is allowed.
    fn waiting(config: Arc<Config>, fallback_key: &SigningKey) -> Self {
        let keys = KeySet::load(&Default::default(), fallback_key).expect("a generated key loads");
        Self {
            config,
            in_force: false,
            mode: Mode::Closed,
            namespaces: Namespaces::default(),
            immutable_tags: HashMap::new(),
            credentials: HashMap::new(),
            decoy: secret::default_decoy().to_owned(),
            keys,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this index comes from a document put in force (`false` while a process waits
    /// for its first document, when nothing is allowed).
    pub fn in_force(&self) -> bool {
        self.in_force
    }

    /// The revision of the document in force, `None` while there is none.
    pub fn revision(&self) -> Option<u64> {
        self.in_force.then_some(self.config.spec.revision)
    }

    /// The tag patterns of `namespace` that may not move once pushed (`namespaces[].immutableTags`).
    pub fn immutable_tags(&self, namespace: &str) -> &[String] {
        self.immutable_tags
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The authorization mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The configuration this index was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The token service name (`service` in challenges, audience of tokens).
    pub fn service(&self) -> &str {
        self.config.spec.token_service()
    }

    /// The configured realm, when the configuration overrides the derived one.
    pub fn realm(&self) -> Option<&str> {
        self.config.spec.tokens.realm.as_deref()
    }

    /// The declared namespaces.
    pub fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    /// What `grants` allow on `repo` (everything in open mode, nothing when closed).
    pub fn permitted(&self, grants: &Grants, repo: &RepoName) -> Actions {
        match self.mode {
            Mode::Open => Actions::ALL,
            Mode::Closed => Actions::NONE,
            Mode::Enforced => policy::permitted(&self.namespaces, grants, repo),
        }
    }

    /// Whether the catalog shows the repositories of `namespace` to the holder of `grants`.
    pub fn lists_namespace(&self, grants: &Grants, namespace: &str) -> bool {
        match self.mode {
            Mode::Open => true,
            Mode::Closed => false,
            Mode::Enforced => policy::lists_namespace(&self.namespaces, grants, namespace),
        }
    }

    /// What an access token allows on `repo`: the actions it lists, limited to namespaces
    /// still declared, plus pull on public namespaces.
    pub fn token_permits(&self, claims: &Claims, repo: &RepoName) -> Actions {
        let declared = self.permitted(&Grants::none(), repo);
        if self.mode != Mode::Enforced {
            return declared;
        }
        if self.namespaces.visibility(repo.namespace()).is_none() {
            return Actions::NONE;
        }
        Action::ALL.into_iter().fold(declared, |set, action| {
            if claims.grants("repository", repo.as_str(), action.as_str()) {
                set.with(action)
            } else {
                set
            }
        })
    }

    /// Verifies a registry access token (remembered until it expires).
    pub fn verify_access_token(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        let now = token::unix_seconds(SystemTime::now());
        {
            let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(claims) = verified.get(token)
                && claims.exp > now
            {
                return Ok(Arc::clone(claims));
            }
        }
        let claims = self.keys.verify(token, self.service())?;
        if claims.token_use != TokenUse::Access {
            return Err(AuthError::WrongTokenUse);
        }
        let claims = Arc::new(claims);
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_TOKENS_AT_MOST {
            verified.retain(|_, c| c.exp > now);
            if verified.len() >= VERIFIED_TOKENS_AT_MOST {
                verified.clear();
            }
        }
        verified.insert(token.to_owned(), Arc::clone(&claims));
        Ok(claims)
    }

    fn credential(&self, id: &str) -> Option<&CredentialConfig> {
        self.credentials
            .get(id)
            .map(|i| &self.config.spec.credentials[*i])
    }

    /// The identity of a credential that is currently valid (for refresh tokens).
    fn credential_identity(&self, id: &str, now: SystemTime) -> Result<Identity, AuthError> {
        let credential = self.credential(id).ok_or(AuthError::InvalidCredentials)?;
        check_window(credential, now)?;
        let mut grants = Grants::none();
        grants.add(credential.scope, &credential.namespaces);
        Ok(Identity::with(
            Principal::Credential(credential.id.clone()),
            grants,
        ))
    }
}

fn check_window(credential: &CredentialConfig, now: SystemTime) -> Result<(), AuthError> {
    if credential.not_before.is_some_and(|nb| now < nb.0) {
        return Err(AuthError::NotYetValid(credential.id.clone()));
    }
    if credential.expires_at.is_some_and(|exp| now >= exp.0) {
        return Err(AuthError::Expired(credential.id.clone()));
    }
    Ok(())
}

/// Authentication and authorization for one data-plane process: the verifiers and caches
/// shared by every configuration, and the builder of their [`AccessIndex`]es. Which index is
/// in force is not its business: requests receive it from the live handle
/// ([`crate::live::LiveConfig`]).
#[derive(Debug)]
pub struct AuthService {
    transport: Transport,
    oidc: oidc::OidcVerifier,
    secrets: secret::SecretVerifier,
    throttle: throttle::LoginThrottle,
    /// Signs when the configuration has no keys; the same for the life of the process, so
    /// tokens survive reloads.
    fallback_key: SigningKey,
}

impl AuthService {
    /// The service for this transport, with the default login limits.
    pub fn new(transport: Transport) -> Arc<Self> {
        Self::with_login_limits(transport, LoginLimits::default())
    }

    /// The service for this transport and these limits on failed logins.
    pub fn with_login_limits(transport: Transport, limits: LoginLimits) -> Arc<Self> {
        Arc::new(Self {
            transport,
            oidc: oidc::OidcVerifier::new(),
            secrets: secret::SecretVerifier::new(),
            throttle: throttle::LoginThrottle::new(limits),
            fallback_key: token::generate_key("local"),
        })
    }

    /// How the process is reached.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Builds everything requests need from a validated `config`: the namespace and
    /// credential indexes, the token keys (every one must load, sign and verify), the
    /// federations' issuers and trusted roots. Fails, listing every problem, when anything
    /// cannot be built.
    pub fn build_index(&self, config: Arc<Config>) -> Result<AccessIndex, IndexError> {
        AccessIndex::build(config, self.transport, &self.fallback_key, &self.oidc)
    }

    /// The index of a process waiting for its first document: closed, nothing in force.
    pub fn waiting_index(&self, config: Arc<Config>) -> AccessIndex {
        AccessIndex::waiting(config, &self.fallback_key)
    }

    /// Authenticates a user name and password from `source` (the peer address, when known):
    /// an access credential, or an OIDC token under [`OIDC_USERNAME`]. Failed secret checks
    /// count against the source and the id ([`throttle`]); over the limits the login is
    /// refused ([`AuthError::Throttled`]) before any secret is checked, except one that
    /// matched recently.
    pub async fn authenticate_password(
        &self,
        index: &AccessIndex,
        username: &str,
        password: &str,
        source: Option<IpAddr>,
        now: SystemTime,
    ) -> Result<Identity, AuthError> {
        if index.mode == Mode::Closed {
            return Err(AuthError::Closed);
        }
        if username == OIDC_USERNAME && index.credential(username).is_none() {
            return self.authenticate_oidc(index, password, now).await;
        }
        if username == TOKEN_USERNAME {
            // A refresh token: a signature check, no secret to hash.
            return self.authenticate_refresh_token(index, password, now);
        }
        let credential = index.credential(username);
        let hashes: Vec<&str> = credential
            .map(|c| {
                std::iter::once(c.secret_hash.as_str())
                    .chain(c.previous_secrets.iter().map(|p| p.secret_hash.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let matched = match self.secrets.remembered(password, &hashes) {
            Some(i) => Some(i),
            None => {
                let admit = || {
                    self.throttle
                        .admit(source, Some(username), Instant::now())
                        .map_err(AuthError::Throttled)
                };
                let priority = admit()?;
                let turn = self.secrets.turn(priority).await.map_err(|secret::Busy| {
                    AuthError::Throttled(throttle::Throttled {
                        retry_after: Duration::from_secs(1),
                        limit: throttle::Limit::Source,
                    })
                })?;
                // Checks queued before this one may have spent the source's failures while
                // it waited: admit it again before the argon2 work.
                admit()?;
                let matched = self
                    .secrets
                    .check(turn, password, &hashes, &index.decoy)
                    .await;
                if matched.is_none() {
                    self.throttle.failed(source, Some(username), Instant::now());
                }
                matched
            }
        };
        let (Some(credential), Some(matched)) = (credential, matched) else {
            return Err(AuthError::InvalidCredentials);
        };
        if matched > 0 && now >= credential.previous_secrets[matched - 1].expires_at.0 {
            return Err(AuthError::Expired(credential.id.clone()));
        }
        index.credential_identity(&credential.id, now)
    }

    /// Authenticates a workload by its OIDC token; the grants are the union of every
    /// federation the token satisfies.
    pub async fn authenticate_oidc(
        &self,
        index: &AccessIndex,
        token: &str,
        now: SystemTime,
    ) -> Result<Identity, AuthError> {
        if index.mode == Mode::Closed {
            return Err(AuthError::Closed);
        }
        let federations = &index.config.spec.federations;
        let matches = self.oidc.verify(token, federations, now).await?;
        let first = matches.first().ok_or(AuthError::InvalidCredentials)?;
        let mut grants = Grants::none();
        for m in &matches {
            let federation = &federations[m.federation];
            grants.add(federation.scope, &federation.namespaces);
        }
        Ok(Identity {
            principal: Principal::Federated {
                federation: first.name.clone(),
                subject: first.subject.clone(),
            },
            grants,
            federations: matches.iter().map(|m| m.name.clone()).collect(),
            not_after: matches.iter().filter_map(|m| m.expires).min(),
        })
    }

    /// The identity behind a refresh token, re-checked against the current configuration.
    pub fn authenticate_refresh_token(
        &self,
        index: &AccessIndex,
        refresh_token: &str,
        now: SystemTime,
    ) -> Result<Identity, AuthError> {
        let claims = index.keys.verify(refresh_token, index.service())?;
        if claims.token_use != TokenUse::Refresh {
            return Err(AuthError::WrongTokenUse);
        }
        if claims.federations.is_empty() {
            return index.credential_identity(&claims.sub, now);
        }
        // A workload identity: the federations as configured now (one removed no longer
        // counts), pull only.
        let configured = &index.config.spec.federations;
        let mut grants = Grants::none();
        let mut found = Vec::new();
        for name in &claims.federations {
            if let Some(federation) = configured.iter().find(|f| &f.name == name) {
                grants.add(Scope::ContainerRegistryPull, &federation.namespaces);
                found.push(name.clone());
            }
        }
        let first = found.first().ok_or(AuthError::InvalidCredentials)?;
        let subject = claims
            .sub
            .strip_prefix(&format!("federation:{}:", claims.federations[0]))
            .unwrap_or_default()
            .to_owned();
        Ok(Identity {
            principal: Principal::Federated {
                federation: first.clone(),
                subject,
            },
            grants,
            federations: found,
            not_after: Some(UNIX_EPOCH + Duration::from_secs(claims.exp)),
        })
    }

    /// Issues an access token granting `identity` what it asked for and may have.
    pub fn issue_access_token(
        &self,
        index: &AccessIndex,
        identity: &Identity,
        requested: &[ScopeRequest],
        now: SystemTime,
    ) -> Result<IssuedToken, AuthError> {
        let ttl = index.config.spec.tokens.ttl.0;
        let mut claims = Claims::new(index.service(), &identity.principal.subject(), now, ttl);
        for request in requested {
            match request {
                ScopeRequest::Repository(repo, actions) => {
                    let permitted = index.permitted(&identity.grants, repo);
                    let granted: Vec<String> = permitted
                        .iter()
                        .filter(|a| actions.iter().any(|r| r == "*" || r == a.as_str()))
                        .map(|a| a.as_str().to_owned())
                        .collect();
                    // Listed even when nothing is granted: the registry then knows the
                    // question was asked and answered (see mounts).
                    claims.access.push(ResourceAccess {
                        kind: "repository".into(),
                        name: repo.to_string(),
                        actions: granted,
                    });
                }
                ScopeRequest::Catalog => {
                    claims.access.push(ResourceAccess {
                        kind: "registry".into(),
                        name: "catalog".into(),
                        actions: vec!["*".into()],
                    });
                    let mut visible: Vec<String> = index
                        .config
                        .spec
                        .namespaces
                        .iter()
                        .filter(|ns| index.lists_namespace(&identity.grants, &ns.name))
                        .map(|ns| ns.name.clone())
                        .collect();
                    visible.sort();
                    claims.catalog = visible;
                }
            }
        }
        let token = index.keys.sign(&claims)?;
        Ok(IssuedToken {
            token,
            expires_in: ttl,
            issued_at: now,
            claims,
        })
    }

    /// Issues a refresh token for a credential (other principals get none).
    pub fn issue_refresh_token(
        &self,
        index: &AccessIndex,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<Option<String>, AuthError> {
        if let Principal::Federated { .. } = &identity.principal {
            // Pull only, for an hour at most, and never past the OIDC token that proved it.
            let mut ttl = FEDERATED_REFRESH_TOKEN_TTL;
            if let Some(not_after) = identity.not_after {
                ttl = ttl.min(not_after.duration_since(now).unwrap_or_default());
            }
            if ttl.is_zero() {
                return Ok(None);
            }
            let mut claims = Claims::new(index.service(), &identity.principal.subject(), now, ttl);
            claims.token_use = TokenUse::Refresh;
            claims.federations = identity.federations.clone();
            return Ok(Some(index.keys.sign(&claims)?));
        }
        let Principal::Credential(id) = &identity.principal else {
            return Ok(None);
        };
        let mut ttl = REFRESH_TOKEN_TTL;
        if let Some(exp) = index.credential(id).and_then(|c| c.expires_at) {
            ttl = ttl.min(exp.0.duration_since(now).unwrap_or_default());
        }
        let mut claims = Claims::new(index.service(), id, now, ttl);
        claims.token_use = TokenUse::Refresh;
        Ok(Some(index.keys.sign(&claims)?))
    }
}

#[cfg(test)]
mod tests;
