//! Who is calling, and what they may do: the authorization extractor of the API.
//!
//! [`Access`] is extracted before every handler. It authenticates the request once — a
//! registry access token (`Authorization: Bearer`, verified in memory), an access credential
//! or OIDC token sent directly (`Authorization: Basic`), or nobody — and then answers every
//! question through [`crate::auth`]'s single rule. Handlers call [`Access::require`] before
//! touching storage, so a denial never depends on whether the repository, tag or blob exists.
//!
//! Denials: an anonymous caller or a token that lacks the action gets `401 UNAUTHORIZED` with
//! a `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge (what clients need
//! to fetch a token); a caller authenticated with Basic credentials that do not allow the
//! action gets `403 DENIED`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{AUTHORIZATION, HOST, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ErrorCode};
pub use crate::auth::Action;
use crate::auth::token::Claims;
use crate::auth::{
    AccessIndex, Actions, AuthError, AuthService, Grants, Mode, Principal, Transport, audit,
};
use crate::oci::RepoName;

/// What the caller proved, and therefore how its rights are computed.
#[derive(Debug, Clone)]
enum Rights {
    /// Anonymous, or authenticated directly with Basic credentials: the grants of the
    /// identity, evaluated by the policy.
    Grants { grants: Grants, basic: bool },
    /// A registry access token: the actions it lists.
    Token(Arc<Claims>),
}

/// The caller of a request and what it is allowed to do; extracted before every handler.
#[derive(Debug, Clone)]
pub struct Access {
    principal: Principal,
    rights: Rights,
    index: Arc<AccessIndex>,
    challenge: Challenge,
}

impl Access {
    /// Who is calling.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// What the caller may do on `repo`.
    pub fn actions(&self, repo: &RepoName) -> Actions {
        match &self.rights {
            Rights::Grants { grants, .. } => self.index.permitted(grants, repo),
            Rights::Token(claims) => self.index.token_permits(claims, repo),
        }
    }

    /// The immutable tag patterns of `repo`'s namespace in the configuration in force.
    pub fn immutable_tags(&self, repo: &RepoName) -> &[String] {
        self.index.immutable_tags(repo.namespace())
    }

    /// Whether the caller may perform `action` on `repo`.
    pub fn allows(&self, repo: &RepoName, action: Action) -> bool {
        self.actions(repo).contains(action)
    }

    /// Succeeds when the caller may perform `action` on `repo`; the error is the response
    /// to send otherwise (the same whether or not the repository exists).
    pub fn require(&self, repo: &RepoName, action: Action) -> Result<(), ApiError> {
        let allowed = self.allows(repo, action);
        if self.index.mode() != Mode::Open {
            audit::repository_access(&self.principal, repo, action, allowed);
        }
        if allowed {
            return Ok(());
        }
        let wanted = if action == Action::Pull {
            "pull".to_owned()
        } else {
            format!("pull,{}", action.as_str())
        };
        let scope = format!("repository:{repo}:{wanted}");
        let detail =
            json!([{"Type": "repository", "Name": repo.as_str(), "Action": action.as_str()}]);
        Err(match (&self.rights, self.index.mode()) {
            (_, Mode::Closed) => closed(),
            (Rights::Grants { basic: true, .. }, _) => ApiError::new(
                ErrorCode::Denied,
                format!(
                    "{} may not {} repository \"{repo}\"",
                    self.principal,
                    action.as_str()
                ),
            )
            .with_detail(detail),
            (Rights::Grants { .. }, _) => self
                .reject("authentication required", Some(&scope), None)
                .with_detail(detail),
            (Rights::Token(_), _) => self
                .reject(
                    &format!(
                        "the access token does not grant {} on repository \"{repo}\"",
                        action.as_str()
                    ),
                    Some(&scope),
                    Some("insufficient_scope"),
                )
                .with_detail(detail),
        })
    }

    /// Whether a blob may be mounted into `into` from `from` (push on `into` is checked by
    /// the caller). A token that says nothing about `from` — the client did not ask for it —
    /// gets a challenge for both repositories, so that the client fetches a token covering
    /// the source; a token that lists `from` without pull, or any other caller without pull
    /// on it, gets `Ok(false)`: an ordinary upload session instead of the mount.
    pub fn mount_source_readable(
        &self,
        into: &RepoName,
        from: &RepoName,
    ) -> Result<bool, ApiError> {
        if self.allows(from, Action::Pull) {
            return Ok(true);
        }
        if let Rights::Token(claims) = &self.rights
            && self.index.mode() == Mode::Enforced
            && !claims
                .access
                .iter()
                .any(|a| a.kind == "repository" && a.name == from.as_str())
        {
            return Err(self.reject(
                &format!("mounting from repository \"{from}\" needs a token that covers it"),
                Some(&format!(
                    "repository:{into}:pull,push repository:{from}:pull"
                )),
                Some("insufficient_scope"),
            ));
        }
        Ok(false)
    }

    /// A `401` with this request's challenge.
    fn reject(&self, message: &str, scope: Option<&str>, error: Option<&str>) -> ApiError {
        self.challenge.reject(&self.index, message, scope, error)
    }

    /// Whether the catalog shows `repo` to the caller.
    pub fn lists(&self, repo: &RepoName) -> bool {
        match &self.rights {
            Rights::Grants { grants, .. } => self.index.lists_namespace(grants, repo.namespace()),
            Rights::Token(claims) => {
                self.index
                    .token_permits(claims, repo)
                    .contains(Action::Pull)
                    || claims.catalog.iter().any(|ns| ns == repo.namespace())
            }
        }
    }

    /// Succeeds when the caller may list the catalog: everyone may (the listing is filtered),
    /// except a token that was not issued for the catalog, which gets a challenge for it.
    pub fn require_catalog(&self) -> Result<(), ApiError> {
        if self.index.mode() == Mode::Closed {
            return Err(closed());
        }
        if let Rights::Token(claims) = &self.rights
            && self.index.mode() == Mode::Enforced
            && !claims.grants("registry", "catalog", "*")
        {
            return Err(self.reject(
                "the access token does not grant the catalog",
                Some("registry:catalog:*"),
                Some("insufficient_scope"),
            ));
        }
        audit::catalog_listed(&self.principal);
        Ok(())
    }

    /// Succeeds for an authenticated caller (or any caller in open mode): `GET /v2/` answers
    /// anonymous callers with the challenge that starts the token flow.
    pub fn require_login(&self) -> Result<(), ApiError> {
        match self.index.mode() {
            Mode::Open => Ok(()),
            Mode::Closed => Err(closed()),
            Mode::Enforced => match (&self.principal, &self.rights) {
                (Principal::Anonymous, Rights::Grants { .. }) => {
                    Err(self.reject("authentication required", None, None))
                }
                _ => Ok(()),
            },
        }
    }
}

fn closed() -> ApiError {
    ApiError::new(
        ErrorCode::Denied,
        "access control is not configured on this registry, and it does not serve open \
         access on a public address",
    )
}

/// Where clients get tokens: what a `WWW-Authenticate` challenge needs from the request. Kept
/// raw (a header value clone, a flag) so that requests that are allowed pay nothing for it;
/// the realm is only formatted when a challenge is sent.
#[derive(Debug, Clone)]
pub struct Challenge {
    host: Option<HeaderValue>,
    https: bool,
}

impl Challenge {
    /// The challenge source of a request: the host the client addressed and its scheme.
    pub fn for_request(transport: Transport, headers: &HeaderMap) -> Self {
        let forwarded_https = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
        Self {
            host: headers.get(HOST).cloned(),
            https: transport.tls || forwarded_https,
        }
    }

    /// The realm: the configured one, or the token endpoint on the host the client addressed
    /// (a host that could break out of the quoted value is replaced by `localhost`).
    fn realm(&self, index: &AccessIndex) -> String {
        if let Some(realm) = index.realm() {
            return realm.to_owned();
        }
        let scheme = if self.https { "https" } else { "http" };
        let host = self
            .host
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
            })
            .unwrap_or("localhost");
        format!("{scheme}://{host}/token")
    }

    /// The `WWW-Authenticate` value.
    pub fn header(&self, index: &AccessIndex, scope: Option<&str>, error: Option<&str>) -> String {
        let mut value = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(index),
            index.service()
        );
        if let Some(scope) = scope {
            value.push_str(&format!(",scope=\"{scope}\""));
        }
        if let Some(error) = error {
            value.push_str(&format!(",error=\"{error}\""));
        }
        value
    }

    /// A `401 UNAUTHORIZED` carrying this challenge.
    pub fn reject(
        &self,
        index: &AccessIndex,
        message: &str,
        scope: Option<&str>,
        error: Option<&str>,
    ) -> ApiError {
        ApiError::new(ErrorCode::Unauthorized, message)
            .with_header(WWW_AUTHENTICATE, self.header(index, scope, error))
    }
}

/// Why a request could not be authenticated: a `401` with the `WWW-Authenticate` challenge,
/// or a `503` when an identity provider could not be reached.
#[derive(Debug)]
pub enum AuthRejection {
    /// An OCI error.
    Error(ApiError),
    /// A ready response.
    Response(Response),
}

impl From<ApiError> for AuthRejection {
    fn from(e: ApiError) -> Self {
        Self::Error(e)
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        match self {
            Self::Error(e) => e.into_response(),
            Self::Response(r) => r,
        }
    }
}

/// The `user:password` of a Basic `Authorization` value.
pub fn basic_credentials(value: &str) -> Option<(String, String)> {
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn principal_of(claims: &Claims) -> Principal {
    if claims.sub.is_empty() {
        return Principal::Anonymous;
    }
    if let Some(rest) = claims.sub.strip_prefix("federation:")
        && let Some((federation, subject)) = rest.split_once(':')
    {
        return Principal::Federated {
            federation: federation.to_owned(),
            subject: subject.to_owned(),
        };
    }
    Principal::Credential(claims.sub.clone())
}

impl Access {
    /// Authenticates a request's `Authorization` header.
    pub async fn authenticate(
        auth: &AuthService,
        index: Arc<AccessIndex>,
        headers: &HeaderMap,
        source: Option<IpAddr>,
    ) -> Result<Self, AuthRejection> {
        let challenge = Challenge::for_request(auth.transport(), headers);
        let anonymous = |index: Arc<AccessIndex>, challenge: Challenge| Access {
            principal: Principal::Anonymous,
            rights: Rights::Grants {
                grants: Grants::none(),
                basic: false,
            },
            index,
            challenge,
        };
        let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let Some(header) = header.filter(|_| index.mode() != Mode::Open) else {
            return Ok(anonymous(index, challenge));
        };
        let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return match index.verify_access_token(value.trim()) {
                Ok(claims) => Ok(Access {
                    principal: principal_of(&claims),
                    rights: Rights::Token(claims),
                    index,
                    challenge,
                }),
                Err(e) => {
                    audit::authentication_failed("", "bearer", &e.to_string());
                    Err(AuthRejection::from(challenge.reject(
                        &index,
                        "invalid or expired access token: request a new one",
                        None,
                        Some("invalid_token"),
                    )))
                }
            };
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Some((user, password)) = basic_credentials(header) else {
                return Err(AuthRejection::from(challenge.reject(
                    &index,
                    "malformed Basic authorization header",
                    None,
                    None,
                )));
            };
            return match auth
                .authenticate_password(&index, &user, &password, source, SystemTime::now())
                .await
            {
                Ok(identity) => Ok(Access {
                    principal: identity.principal,
                    rights: Rights::Grants {
                        grants: identity.grants,
                        basic: true,
                    },
                    index,
                    challenge,
                }),
                Err(AuthError::Throttled(t)) => Err(AuthRejection::Response(
                    super::token::throttled(&user, "basic", &AuthError::Throttled(t), &t),
                )),
                Err(e) => {
                    audit::authentication_failed(&user, "basic", &e.to_string());
                    if e.is_transient() {
                        return Err(AuthRejection::Response(super::token::unavailable(&e)));
                    }
                    Err(AuthRejection::from(challenge.reject(
                        &index,
                        &e.to_string(),
                        None,
                        None,
                    )))
                }
            };
        }
        Err(AuthRejection::from(challenge.reject(
            &index,
            "unsupported authorization scheme: use Bearer or Basic",
            None,
            None,
        )))
    }
}

impl FromRequestParts<AppState> for Access {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Peer(source) = Peer::of(parts);
        Access::authenticate(state.auth(), state.live().current(), &parts.headers, source).await
    }
}

/// The peer's address, when the connection server recorded it ([`ConnectInfo`]); requests
/// handed to the router directly (tests, embedding) have none.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<IpAddr>);

impl Peer {
    fn of(parts: &Parts) -> Self {
        Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts))
    }
}

impl AuthRejection {
    /// A rejection asking the client to authenticate.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Error(ApiError::new(ErrorCode::Unauthorized, message))
    }
}
