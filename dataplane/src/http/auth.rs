//! Who is calling, and what they may do: the authorization slot of the API.
//!
//! Today every caller is the anonymous principal and is granted everything. Access control
//! replaces [`Access::from_request_parts`] (verify the bearer token) and [`Access::allows`]
//! (consult its grants); [`AuthRejection`] then becomes the `401` with a `WWW-Authenticate`
//! challenge. Handlers already call [`Access::require`] before touching storage and filter the
//! catalog with [`Access::allows`], so nothing else has to change.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ErrorCode};
use crate::oci::RepoName;

/// What a request wants to do with a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read manifests, blobs, tags and referrers.
    Pull,
    /// Upload blobs and push manifests and tags.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials were presented.
    Anonymous,
}

/// The caller of a request and what it is allowed to do; extracted before every handler.
#[derive(Debug, Clone)]
pub struct Access {
    principal: Principal,
}

impl Access {
    /// Access of the anonymous caller.
    pub fn anonymous() -> Self {
        Self {
            principal: Principal::Anonymous,
        }
    }

    /// Who is calling.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Whether the caller may perform `action` on `repo` (also the catalog filter).
    pub fn allows(&self, _repo: &RepoName, _action: Action) -> bool {
        match self.principal {
            Principal::Anonymous => true,
        }
    }

    /// Succeeds when the caller may perform `action` on `repo`; the error is the response
    /// to send otherwise.
    pub fn require(&self, repo: &RepoName, action: Action) -> Result<(), ApiError> {
        if self.allows(repo, action) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Denied,
                "requested access to the resource is denied",
            ))
        }
    }
}

/// Why a request could not be authenticated (the future `WWW-Authenticate` challenge).
#[derive(Debug)]
pub struct AuthRejection(ApiError);

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl FromRequestParts<AppState> for Access {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        _parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::anonymous())
    }
}

impl AuthRejection {
    /// A rejection asking the client to authenticate.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self(ApiError::new(ErrorCode::Unauthorized, message))
    }
}
