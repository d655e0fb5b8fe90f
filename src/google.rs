//! Google Groups membership (the Okta app assignment), via the Admin SDK
//! Directory `members` resource (`admin.directory.group.member` scope).
//!
//! Authentication is a service account: with a Groups admin role of its own
//! (no subject), or with domain-wide delegation (a subject to act as). The bot
//! signs the JWT with `gcp_auth`'s signer and exchanges it at the key file's
//! `token_uri` itself, so that it holds the token and can drop it: a token
//! the Directory API refuses (401) is never sent again, a new one is fetched.
//! Only the `admin.directory.group.member` scope is requested.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Value, json};

use crate::config::GoogleConfig;
use crate::groups::GroupError;
use crate::http::{Api, Backoff, Class, Failure, Reply, Transport, retry_after};
use crate::secret::Secrets;

pub const SCOPE: &str = "https://www.googleapis.com/auth/admin.directory.group.member";

#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    #[error("Google: no service-account key: {0}")]
    Key(String),
    #[error("Google: token exchange refused: {0}")]
    Token(String),
    #[error("Google: the token was rejected (401): check the service-account key")]
    Unauthorized,
    #[error(
        "Google: not allowed (403 {reason}) on {group}: give the service account a Groups admin role, or authorise domain-wide delegation for the admin.directory.group.member scope and set `subject`"
    )]
    Forbidden { group: String, reason: String },
    #[error(
        "Google: group {0} does not exist, or the service account cannot see it: check okta_group in bot.toml"
    )]
    GroupNotFound(String),
    #[error("Google: {email} is not a user of the domain (404 memberKey)")]
    NoSuchUser { email: String },
    #[error("Google: {0} after retries")]
    Exhausted(String),
    #[error("Google: request rejected ({status} {reason}): {message}")]
    Invalid {
        status: u16,
        reason: String,
        message: String,
    },
    #[error("Google: connection failed: {0}")]
    Transport(String),
}

impl GoogleError {
    pub fn is_transient(&self) -> bool {
        matches!(self, GoogleError::Exhausted(_) | GoogleError::Transport(_))
    }
}

pub use crate::groups::{Change, GroupDirectory};

impl From<GoogleError> for crate::groups::GroupError {
    fn from(e: GoogleError) -> Self {
        let transient = e.is_transient();
        crate::groups::GroupError::new(e.to_string(), transient)
    }
}

/// An access token and when to stop using it.
struct HeldToken {
    token: crate::secret::Secret,
    /// A minute before the token's own expiry.
    renew_at: std::time::Instant,
}

/// The service account's access token for one scope, held by the bot: it
/// signs the JWT (with `sub` under delegation), exchanges it at the key
/// file's `token_uri`, keeps the token until a minute before it expires, and
/// drops it when the API refuses it. Shared by the groups client and the
/// directory of people.
pub struct ServiceAccountTokens {
    http: reqwest::Client,
    key: Arc<gcp_auth::CustomServiceAccount>,
    /// From the key file.
    client_email: String,
    token_uri: String,
    subject: Option<String>,
    scope: &'static str,
    /// The token endpoint's attempts (Google's calls have no budget).
    transport: Transport,
    held: tokio::sync::Mutex<Option<HeldToken>>,
}

impl ServiceAccountTokens {
    /// The `[google]` key, for tokens of `scope`.
    pub fn new(
        cfg: &GoogleConfig,
        secrets: &Secrets,
        http: reqwest::Client,
        scope: &'static str,
    ) -> Result<ServiceAccountTokens, GoogleError> {
        let json = match (&cfg.key_env, &cfg.key_path) {
            (Some(var), _) => secrets
                .get(var)
                .map_err(|e| GoogleError::Key(e.to_string()))?
                .expose()
                .to_string(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| GoogleError::Key(format!("{}: {e}", path.display())))?,
            (None, None) => {
                return Err(GoogleError::Key(
                    "set key_path or key_env in [google]".into(),
                ));
            }
        };
        // The error text of a bad key never includes the key itself.
        let bad_key = || {
            GoogleError::Key("the key is not a valid service-account key file (JSON with client_email, private_key, token_uri)".into())
        };
        let key = gcp_auth::CustomServiceAccount::from_json(&json).map_err(|_| bad_key())?;
        let fields: Value = serde_json::from_str(&json).map_err(|_| bad_key())?;
        Ok(ServiceAccountTokens {
            http,
            key: Arc::new(key),
            client_email: fields["client_email"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            token_uri: fields["token_uri"].as_str().unwrap_or_default().to_string(),
            subject: cfg.subject.clone(),
            scope,
            transport: Transport::new(None),
            held: tokio::sync::Mutex::new(None),
        })
    }

    /// The token endpoint's attempts and backoff.
    pub fn with_backoff(mut self, b: Backoff) -> Self {
        self.transport.backoff = b;
        self
    }

    /// The token held, or a new one.
    pub async fn token(&self) -> Result<String, GoogleError> {
        let mut held = self.held.lock().await;
        if let Some(t) = held.as_ref()
            && std::time::Instant::now() < t.renew_at
        {
            return Ok(t.token.expose().to_string());
        }
        let (token, lifetime) = self.exchange().await?;
        let value = token.expose().to_string();
        *held = Some(HeldToken {
            token,
            renew_at: std::time::Instant::now()
                + lifetime.saturating_sub(std::time::Duration::from_secs(60)),
        });
        Ok(value)
    }

    /// Drops the token held, if it is still `refused` (another caller may
    /// have replaced it already): it is never sent again.
    pub async fn drop_token(&self, refused: &str) {
        let mut held = self.held.lock().await;
        if held.as_ref().is_some_and(|t| t.token.expose() == refused) {
            *held = None;
        }
    }

    /// Drops the token held and fetches a new one (`check`: refreshing works).
    pub async fn refresh(&self) -> Result<(), GoogleError> {
        *self.held.lock().await = None;
        self.token().await.map(|_| ())
    }

    /// Signs a JWT and exchanges it; Google's answer, when it refuses, says
    /// exactly what is wrong (unauthorized_client, a bad subject, a deleted key).
    async fn exchange(&self) -> Result<(crate::secret::Secret, std::time::Duration), GoogleError> {
        let reply = self
            .transport
            .send(&TokenEndpoint(self), || self.http.post(&self.token_uri))
            .await
            .map_err(|f| f.token_error(GoogleError::Token))?;
        if reply.status.is_success() {
            let v: Value = serde_json::from_slice(&reply.body)
                .map_err(|e| GoogleError::Token(format!("unreadable token answer: {e}")))?;
            return crate::jwt::access_token(&v).map_err(GoogleError::Token);
        }
        let v = reply.json();
        Err(GoogleError::Token(explain_token_error(
            &format!(
                "{}: {} ({})",
                v["error"].as_str().unwrap_or(""),
                v["error_description"].as_str().unwrap_or(""),
                reply.status
            ),
            self.scope,
        )))
    }
}

/// The key file's `token_uri` on the shared transport (no budget): each
/// attempt carries a newly signed assertion, a refusal is `exchange`'s to
/// explain, a 429 or 5xx is retried.
struct TokenEndpoint<'a>(&'a ServiceAccountTokens);

#[async_trait]
impl Api for TokenEndpoint<'_> {
    type Error = GoogleError;

    async fn authorize(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, GoogleError> {
        let t = self.0;
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({"iss": t.client_email, "scope": t.scope, "aud": t.token_uri, "iat": now, "exp": now + 3600});
        if let Some(s) = &t.subject {
            claims["sub"] = json!(s);
        }
        let assertion = crate::jwt::rs256(&claims, None, |m| {
            t.key
                .signer()
                .sign(m)
                .map_err(|e| GoogleError::Key(format!("cannot sign with the key: {e}")))
        })?;
        Ok(rb.form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ]))
    }

    fn classify(&self, reply: &crate::http::Reply) -> crate::http::Class {
        crate::http::token_class(crate::http::standard_class(reply))
    }

    fn name(&self) -> String {
        "google token".into()
    }
}

pub struct GoogleClient {
    base: String,
    http: reqwest::Client,
    tokens: ServiceAccountTokens,
    backoff: Backoff,
    /// Every API call's attempts.
    transport: Transport,
    /// Reads after an insert before its 404 is believed (eventual consistency).
    pub confirm_attempts: u32,
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl GoogleClient {
    pub fn new(
        cfg: &GoogleConfig,
        secrets: &Secrets,
        http: reqwest::Client,
    ) -> Result<GoogleClient, GoogleError> {
        Ok(GoogleClient {
            base: cfg.base_url.trim_end_matches('/').to_string(),
            tokens: ServiceAccountTokens::new(cfg, secrets, http.clone(), SCOPE)?,
            http,
            backoff: Backoff::default(),
            transport: Transport::new(None),
            confirm_attempts: 5,
        })
    }

    pub fn with_backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self.tokens = self.tokens.with_backoff(b);
        self.transport.backoff = b;
        self
    }

    async fn token(&self) -> Result<String, GoogleError> {
        self.tokens.token().await
    }

    async fn drop_token(&self, refused: &str) {
        self.tokens.drop_token(refused).await
    }

    /// Drops the token held and fetches a new one (`check`: refreshing works).
    pub async fn refresh(&self) -> Result<(), GoogleError> {
        self.tokens.refresh().await
    }

    /// One call: token, retries on rate limits and backend errors, typed errors.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        group: &str,
    ) -> Result<(u16, Value), GoogleError> {
        self.call_tracked(method, url, body, group).await.0
    }

    /// As `call`, and whether an attempt's answer was lost before the last
    /// one (the request may have been applied then).
    async fn call_tracked(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        group: &str,
    ) -> (Result<(u16, Value), GoogleError>, bool) {
        let mut lost = false;
        let r = self.call_once(method, url, body, group, &mut lost).await;
        crate::metrics::api("google", &r);
        (r, lost)
    }

    async fn call_once(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        group: &str,
        lost: &mut bool,
    ) -> Result<(u16, Value), GoogleError> {
        let reply = self
            .transport
            .send_tracked(
                self,
                || {
                    let rb = self.http.request(method.clone(), url);
                    match body {
                        Some(b) => rb.json(b),
                        None => rb,
                    }
                },
                lost,
            )
            .await
            .map_err(|f| match f {
                Failure::Api(e) => e,
                Failure::RateLimited { last, .. } | Failure::Server { last, .. } => {
                    GoogleError::Exhausted(format!(
                        "{} {}",
                        last.status.as_u16(),
                        reason_of(&last.json())
                    ))
                }
                Failure::Connection { detail, .. } => GoogleError::Transport(detail),
            })?;
        let status = reply.status.as_u16();
        let v = reply.json();
        if (200..300).contains(&status) {
            return Ok((status, v));
        }
        // A 401 here: a new token was refused too, which is the key's problem.
        let reason = reason_of(&v);
        let message = v["error"]["message"].as_str().unwrap_or("").to_string();
        Err(match (status, reason.as_str()) {
            (401, _) => GoogleError::Unauthorized,
            (403, _) => GoogleError::Forbidden {
                group: group.to_string(),
                reason,
            },
            (404, _) if message.ends_with("groupKey") => {
                GoogleError::GroupNotFound(group.to_string())
            }
            _ => GoogleError::Invalid {
                status,
                reason,
                message,
            },
        })
    }

    fn member_url(&self, group: &str, email: &str) -> String {
        format!(
            "{}/admin/directory/v1/groups/{}/members/{}",
            self.base,
            enc(group),
            enc(email)
        )
    }
}

/// Google's part of the shared transport: no request budget (a slow-down
/// holds only its own call), rate-limit 403s retried like 429s, and a
/// refused token dropped and fetched again once.
#[async_trait]
impl Api for GoogleClient {
    type Error = GoogleError;

    async fn authorize(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, GoogleError> {
        Ok(rb.bearer_auth(self.token().await?))
    }

    async fn refused(&self, authorization: Option<&reqwest::header::HeaderValue>) {
        // The token is refused (revoked, or expired early): never sent again.
        if let Some(t) = authorization
            .and_then(|a| a.to_str().ok())
            .and_then(|a| a.strip_prefix("Bearer "))
        {
            self.drop_token(t).await;
        }
    }

    async fn refresh(&self) -> Result<bool, GoogleError> {
        // The next attempt fetches a new token.
        Ok(true)
    }

    fn classify(&self, reply: &Reply) -> Class {
        let status = reply.status.as_u16();
        let retryable = matches!(status, 429 | 500 | 502 | 503 | 504)
            || (status == 403
                && matches!(
                    reason_of(&reply.json()).as_str(),
                    "rateLimitExceeded" | "userRateLimitExceeded" | "quotaExceeded"
                ));
        if retryable {
            Class::SlowDown {
                after: retry_after(&reply.headers),
            }
        } else {
            Class::Answer
        }
    }

    fn name(&self) -> String {
        "google".into()
    }
}

/// The reason of an error body (`errors[0].reason`, or the newer `status`).
fn reason_of(v: &Value) -> String {
    v["error"]["errors"][0]["reason"]
        .as_str()
        .or(v["error"]["status"].as_str())
        .unwrap_or("")
        .to_string()
}

fn explain_token_error(raw: &str, scope: &str) -> String {
    if raw.contains("unauthorized_client") {
        let name = scope.rsplit('/').next().unwrap_or(scope);
        format!(
            "unauthorized_client: domain-wide delegation is not granted for this service account's client id and the {name} scope"
        )
    } else if raw.contains("Invalid email or User ID") || raw.contains("Not a valid email") {
        "invalid_grant: the `subject` in [google] is not a user of the domain".into()
    } else if raw.contains("No valid verifier") || raw.contains("Invalid JWT Signature") {
        "invalid_grant: the key was rotated or deleted; download a new key".into()
    } else {
        // Keep only the first line: gcp_auth's debug output can be long.
        raw.lines()
            .next()
            .unwrap_or(raw)
            .chars()
            .take(300)
            .collect()
    }
}

/// Google's own calls, with Google's errors (the connector tests match on them).
impl GoogleClient {
    pub async fn add_member(&self, group: &str, email: &str) -> Result<Change, GoogleError> {
        let url = format!(
            "{}/admin/directory/v1/groups/{}/members",
            self.base,
            enc(group)
        );
        let (result, lost) = self
            .call_tracked(
                Method::POST,
                &url,
                Some(&json!({"email": email, "role": "MEMBER"})),
                group,
            )
            .await;
        let change = match result {
            Ok(_) => Change::Done,
            // "Member already exists" after an attempt whose answer was lost:
            // that attempt added them.
            Err(GoogleError::Invalid { status: 409, .. }) if lost => {
                tracing::info!(
                    group,
                    "added by an attempt whose answer was lost (409 on the retry)"
                );
                Change::Done
            }
            Err(GoogleError::Invalid { status: 409, .. }) => Change::AlreadySo,
            Err(GoogleError::Invalid { status: 404, .. }) => {
                return Err(GoogleError::NoSuchUser {
                    email: email.into(),
                });
            }
            Err(e) => return Err(e),
        };
        // A fresh membership can be invisible to `get` for a while: confirm with
        // bounded retries, and never read an early 404 as failure.
        for attempt in 0..self.confirm_attempts {
            if self.is_member(group, email).await? {
                return Ok(change);
            }
            tokio::time::sleep(
                self.backoff
                    .delay(attempt)
                    .min(std::time::Duration::from_secs(2)),
            )
            .await;
        }
        tracing::warn!(
            group,
            "membership not visible yet after insert; trusting the insert's answer"
        );
        Ok(change)
    }

    pub async fn remove_member(&self, group: &str, email: &str) -> Result<Change, GoogleError> {
        match self
            .call(Method::DELETE, &self.member_url(group, email), None, group)
            .await
        {
            Ok(_) => Ok(Change::Done),
            Err(GoogleError::Invalid { status: 404, .. }) => Ok(Change::AlreadySo),
            // An external address that is not a member answers 400 `required`.
            Err(GoogleError::Invalid {
                status: 400,
                reason,
                ..
            }) if reason == "required" && !email.is_empty() => Ok(Change::AlreadySo),
            Err(e) => Err(e),
        }
    }

    /// Direct membership (`members.get`; not `hasMember`, which counts nested
    /// groups and rejects external addresses).
    pub async fn is_member(&self, group: &str, email: &str) -> Result<bool, GoogleError> {
        match self
            .call(Method::GET, &self.member_url(group, email), None, group)
            .await
        {
            Ok(_) => Ok(true),
            Err(GoogleError::Invalid { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn list_members(&self, group: &str) -> Result<Vec<String>, GoogleError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/admin/directory/v1/groups/{}/members?maxResults=200",
                self.base,
                enc(group)
            );
            if let Some(t) = &token {
                url.push_str(&format!("&pageToken={}", enc(t)));
            }
            let (_, v) = self.call(Method::GET, &url, None, group).await?;
            // An empty group may omit `members`.
            for m in v["members"].as_array().into_iter().flatten() {
                if let Some(e) = m["email"].as_str() {
                    out.push(e.to_string());
                }
            }
            match v["nextPageToken"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => return Ok(out),
            }
        }
    }
}

#[async_trait]
impl GroupDirectory for GoogleClient {
    fn label(&self) -> &'static str {
        "Google"
    }
    async fn add_member(&self, group: &str, person: &str) -> Result<Change, GroupError> {
        Ok(GoogleClient::add_member(self, group, person).await?)
    }
    async fn remove_member(&self, group: &str, person: &str) -> Result<Change, GroupError> {
        Ok(GoogleClient::remove_member(self, group, person).await?)
    }
    async fn is_member(&self, group: &str, person: &str) -> Result<bool, GroupError> {
        Ok(GoogleClient::is_member(self, group, person).await?)
    }
    async fn list_members(&self, group: &str) -> Result<Vec<String>, GroupError> {
        Ok(GoogleClient::list_members(self, group).await?)
    }
    async fn refresh(&self) -> Result<&'static str, GroupError> {
        GoogleClient::refresh(self).await?;
        Ok("token refresh works (a new access token was issued)")
    }
}
