//! The domain's errors. They know nothing of HTTP; keyplane-http maps them once.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No valid credential was presented (or it is revoked, expired, unknown or malformed).
    #[error("authentication required: {0}")]
    Unauthenticated(String),
    /// The caller is known but lacks the permission.
    #[error("{0}")]
    Forbidden(String),
    /// The thing does not exist, or the caller may not learn that it does.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Input that breaks a rule; `field` names the offending field when there is one.
    #[error("{message}")]
    Invalid {
        field: Option<&'static str>,
        message: String,
    },
    /// A uniqueness rule (a name already taken).
    #[error("{0}")]
    Conflict(String),
    /// The object is declared in the configuration file (`domain::managed`): changing it through
    /// the API needs `Keyplane-Override-Config: true`.
    #[error("this {0} is managed by the configuration file: change it there and run `keyplane apply` (or restart), or send `Keyplane-Override-Config: true` to change it here anyway (the next apply puts the file's values back)")]
    ManagedByConfig(&'static str),
    /// The caller asked for a version (`If-Match`) and the resource has changed since.
    #[error("the {0} changed since the version given in If-Match; read it again")]
    PreconditionFailed(&'static str),
    /// Another change to the same row committed first (a version check failed in storage). Use
    /// cases retry on it; it reaches a client only when retries run out.
    #[error("the {0} is being changed concurrently; try again")]
    VersionConflict(&'static str),
    /// Too many failed authentications from the caller's address: retry after this many seconds.
    #[error("too many failed authentications from this address; retry in {0} seconds")]
    TooManyRequests(u64),
    /// A quota, such as the number of active API keys per organization.
    #[error("{0}")]
    LimitExceeded(String),
    /// Storage failed; the cause goes to the log, never to the client.
    #[error("storage error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: Some(field),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
