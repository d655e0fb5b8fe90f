//! The Google Workspace directory as a source of truth about people: whether
//! an address is an active user of the domain, its primary address, and the
//! person's manager (the `relations` entry of type `manager`). Admin SDK
//! Directory `users.get`, scope `admin.directory.user.readonly`, with the
//! `[google]` service account (its own admin role, or domain-wide delegation).

use serde::Deserialize;

use crate::config::GoogleConfig;
use crate::google::{GoogleError, ServiceAccountTokens};
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
}

impl DirectoryClient {
    pub fn new(
        cfg: &GoogleConfig,
        secrets: &Secrets,
        http: reqwest::Client,
    ) -> Result<DirectoryClient, DirectoryError> {
        let tokens = ServiceAccountTokens::new(cfg, secrets, http.clone(), USER_SCOPE)
            .map_err(from_google)?;
        Ok(DirectoryClient {
            base: cfg.base_url.trim_end_matches('/').to_string(),
            http,
            tokens,
        })
    }

    async fn token(&self) -> Result<String, DirectoryError> {
        self.tokens.token().await.map_err(from_google)
    }

    /// The person with this address (primary or alias), or `None` when the
    /// domain has no such user.
    pub async fn person(&self, email: &Email) -> Result<Option<Person>, DirectoryError> {
        let url = format!(
            "{}/admin/directory/v1/users/{}",
            self.base,
            percent_encoding::utf8_percent_encode(
                email.as_str(),
                percent_encoding::NON_ALPHANUMERIC
            )
        );
        let mut attempt = 0u32;
        let mut refused = false;
        loop {
            let token = self.token().await?;
            let r = self.http.get(&url).bearer_auth(&token).send().await;
            let r = match r {
                Ok(r) => r,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "directory call failed; retrying");
                    tokio::time::sleep(crate::http::Backoff::default().delay(attempt)).await;
                    continue;
                }
                Err(e) => return Err(DirectoryError::Failed(e.to_string())),
            };
            let status = r.status().as_u16();
            crate::metrics::api(
                "google.directory",
                &if status < 400 || status == 404 {
                    Ok(())
                } else {
                    Err(status)
                },
            );
            match status {
                200 => {
                    let u: ApiUser = r
                        .json()
                        .await
                        .map_err(|e| DirectoryError::Failed(format!("unreadable user: {e}")))?;
                    let primary = Email::parse(&u.primary_email).map_err(|e| {
                        DirectoryError::Failed(format!("the directory's primary address: {e}"))
                    })?;
                    let manager = u
                        .relations
                        .iter()
                        .find(|r| r.kind.eq_ignore_ascii_case("manager"))
                        .and_then(|r| Email::parse(&r.value).ok());
                    return Ok(Some(Person {
                        primary,
                        active: !u.suspended && !u.archived,
                        manager,
                    }));
                }
                404 => return Ok(None),
                // A refused token is dropped and a new one fetched, once; a
                // new token refused too is the account's problem.
                401 if !refused => {
                    refused = true;
                    self.tokens.drop_token(&token).await;
                    tracing::warn!(
                        "the directory refused the access token (401): fetching a new one"
                    );
                }
                401 | 403 => return Err(DirectoryError::Forbidden { status }),
                429 | 500..=599 if attempt < 3 => {
                    attempt += 1;
                    let wait = crate::http::retry_after(r.headers())
                        .unwrap_or_else(|| crate::http::Backoff::default().delay(attempt));
                    tokio::time::sleep(wait).await;
                }
                s => return Err(DirectoryError::Failed(format!("users.get answered {s}"))),
            }
        }
    }
}
