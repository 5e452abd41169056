//! The operator's one error type.

/// What can go wrong while reconciling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A Secret the operator keeps holds something it cannot read (edited by hand?).
    #[error("secret {name}: {message}")]
    CorruptState {
        /// The Secret.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Hashing a secret or making a key failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// A remote sync target cluster could not be reached to remove copies (retried until the
    /// give-up timeout).
    #[error("remote cluster {cluster}: {message}")]
    Remote {
        /// The cluster's name.
        cluster: String,
        /// What went wrong.
        message: String,
    },
    /// The rendered document does not validate: a bug, since inputs are checked first.
    #[error("rendered configuration is invalid: {0}")]
    Render(#[from] crds::config::ConfigError),
    /// The data plane's internal endpoints failed or could not be reached.
    #[error("data plane: {0}")]
    DataPlane(String),
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Finalizer(_) => "finalizer",
            Self::CorruptState { .. } => "corrupt_state",
            Self::Crypto(_) => "crypto",
            Self::Remote { .. } => "remote",
            Self::Render(_) => "render",
            Self::DataPlane(_) => "dataplane",
        }
    }

    /// Whether trying again later may succeed (API errors other than validation refusals).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Kube(kube::Error::Api(status)) => !matches!(status.code, 400 | 422),
            Self::Kube(_) | Self::Remote { .. } | Self::DataPlane(_) => true,
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_transient(),
                _ => true,
            },
            Self::CorruptState { .. } | Self::Crypto(_) | Self::Render(_) => false,
        }
    }
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
