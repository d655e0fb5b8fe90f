//! The Google Workspace directory as a source of truth about people: whether
//! an address is an active user of the domain, its primary address, and the
//! person's manager (the `relations` entry of type `manager`). Admin SDK
//! Directory `users.get`, scope `admin.directory.user.readonly`, with the
//! `[google]` service account (its own admin role, or domain-wide delegation).

use serde::Deserialize;

use crate::config::GoogleConfig;
use crate::google::{GoogleError, ServiceAccountTokens};
use crate::http::{Api, Backoff, Class, Failure, Reply, Transport, retry_after};
use crate::request::Email;
use crate::secret::Secrets;

pub const USER_SCOPE: &str = "https://www.googleapis.com/auth/admin.directory.user.readonly";

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory: no service-account key: {0}")]
    Key(String),
    #[error("directory: token exchange refused: {0}")]
    Token(String),
    #[error(
        "directory: not allowed ({status}): give the service account a role that reads users, or delegate the admin.directory.user.readonly scope"
    )]
    Forbidden { status: u16 },
    #[error("directory: {0}")]
    Failed(String),
}

pub use crate::request::Person;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiUser {
    primary_email: String,
    #[serde(default)]
    suspended: bool,
    #[serde(default)]
    archived: bool,
    #[serde(default)]
    relations: Vec<Relation>,
}

#[derive(Deserialize)]
struct Relation {
    value: String,
    #[serde(rename = "type")]
    kind: String,
}

fn from_google(e: GoogleError) -> DirectoryError {
    match e {
        GoogleError::Key(k) => DirectoryError::Key(k),
        GoogleError::Token(t) => DirectoryError::Token(t),
        other => DirectoryError::Token(other.to_string()),
    }
}

pub struct DirectoryClient {
    base: String,
    http: reqwest::Client,
    /// Held by the bot, so that a token the API refuses (401) is dropped.
    tokens: ServiceAccountTokens,
    /// Each lookup's attempts; no budget, as for Google's groups.
    transport: Transport,
}

impl DirectoryClient {
    pub fn new(
        cfg: &GoogleConfig,
        secrets: &Secrets,
        http: reqwest::Client,
    ) -> Result<DirectoryClient, DirectoryError> {
        let tokens = ServiceAccountTokens::new(cfg, secrets, http.clone(), USER_SCOPE)
            .map_err(from_google)?;
        let mut transport = Transport::new(None);
        // A lookup is on the way of an issue's processing: four attempts, as
        // before the shared transport, rather than the default five.
        transport.backoff.attempts = 4;
        Ok(DirectoryClient {
            base: cfg.base_url.trim_end_matches('/').to_string(),
            http,
            tokens,
            transport,
        })
    }

    pub fn with_backoff(mut self, b: Backoff) -> Self {
        self.tokens = self.tokens.with_backoff(b);
        self.transport.backoff = b;
        self
    }

    /// The person with this address (primary or alias), or `None` when the
    /// domain has no such user. Counted once per lookup, after its retries.
    pub async fn person(&self, email: &Email) -> Result<Option<Person>, DirectoryError> {
        let r = self.lookup(email).await;
        crate::metrics::api("google.directory", &r);
        r
    }

    async fn lookup(&self, email: &Email) -> Result<Option<Person>, DirectoryError> {
        let url = format!(
            "{}/admin/directory/v1/users/{}",
            self.base,
            percent_encoding::utf8_percent_encode(
                email.as_str(),
                percent_encoding::NON_ALPHANUMERIC
            )
        );
        let reply = self
            .transport
            .send(self, || self.http.get(&url))
            .await
            .map_err(|f| match f {
                Failure::Api(e) => e,
                Failure::RateLimited { last, .. } | Failure::Server { last, .. } => {
                    DirectoryError::Failed(format!("users.get answered {}", last.status.as_u16()))
                }
                Failure::Connection { detail, .. } => DirectoryError::Failed(detail),
            })?;
        match reply.status.as_u16() {
            200 => {
                let u: ApiUser = serde_json::from_slice(&reply.body)
                    .map_err(|e| DirectoryError::Failed(format!("unreadable user: {e}")))?;
                let primary = Email::parse(&u.primary_email).map_err(|e| {
                    DirectoryError::Failed(format!("the directory's primary address: {e}"))
                })?;
                let manager = u
                    .relations
                    .iter()
                    .find(|r| r.kind.eq_ignore_ascii_case("manager"))
                    .and_then(|r| Email::parse(&r.value).ok());
                Ok(Some(Person {
                    primary,
                    active: !u.suspended && !u.archived,
                    manager,
                }))
            }
            404 => Ok(None),
            // A 401 here: a new token was refused too, which is the account's problem.
            status @ (401 | 403) => Err(DirectoryError::Forbidden { status }),
            s => Err(DirectoryError::Failed(format!("users.get answered {s}"))),
        }
    }
}

/// The directory's part of the shared transport: a refused token dropped
/// and fetched again once, 429 and 5xx retried after their `Retry-After`.
#[async_trait::async_trait]
impl Api for DirectoryClient {
    type Error = DirectoryError;

    async fn authorize(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, DirectoryError> {
        Ok(rb.bearer_auth(self.tokens.token().await.map_err(from_google)?))
    }

    async fn refused(&self, authorization: Option<&reqwest::header::HeaderValue>) {
        // Never sent again.
        if let Some(t) = authorization
            .and_then(|a| a.to_str().ok())
            .and_then(|a| a.strip_prefix("Bearer "))
        {
            self.tokens.drop_token(t).await;
        }
    }

    async fn refresh(&self) -> Result<bool, DirectoryError> {
        // The next attempt fetches a new token.
        Ok(true)
    }

    fn classify(&self, reply: &Reply) -> Class {
        let status = reply.status.as_u16();
        if status == 429 || reply.status.is_server_error() {
            Class::SlowDown {
                after: retry_after(&reply.headers),
            }
        } else {
            Class::Answer
        }
    }

    fn name(&self) -> String {
        "google.directory".into()
    }
}
