//! Okta group membership (the Zendesk app assigned through an Okta group),
//! through the Groups API: `PUT`/`DELETE /api/v1/groups/{groupId}/users/{userId}`,
//! the person looked up by login (`GET /api/v1/users/{login}`), their groups
//! read with `GET /api/v1/users/{userId}/groups`, the group's members with
//! `GET /api/v1/groups/{groupId}/users` (pages by the `Link` header).
//!
//! Authentication is an API token (`Authorization: SSWS ...`) or an OAuth
//! service app (client credentials with a private-key JWT, scopes
//! `okta.groups.manage okta.users.read`). The bot holds the access token and
//! drops it when Okta refuses it (401), fetching a new one once.
//!
//! Okta's rate limits come back on every answer (`X-Rate-Limit-Limit`,
//! `-Remaining`, `-Reset` in epoch seconds): when nothing remains, every
//! caller waits until the reset; a 429 (E0000047) waits the same way and is
//! retried.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Value, json};

use crate::config::{OktaAuth, OktaConfig};
use crate::groups::{Change, GroupDirectory, GroupError};
use crate::http::{Api, Backoff, Class, Failure, RateBudget, Reply, Transport, retry_after};
use crate::secret::{Secret, Secrets};

/// The scopes the service app asks for: membership changes, and reading
/// users to find a person by login.
pub const SCOPES: &str = "okta.groups.manage okta.users.read";

/// Page size of member listings (Okta's documented advice: at most 200).
const PAGE: u32 = 200;

/// Never wait longer than this for a rate-limit reset: Okta's windows are a
/// minute, so a later reset means the clocks disagree.
const MAX_RESET_WAIT: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum OktaError {
    #[error("Okta: no credential: {0}")]
    Credential(String),
    #[error("Okta: token request refused: {0}")]
    Token(String),
    #[error(
        "Okta: the credential was rejected (401 {code}): check the API token, or the service app's client id and key"
    )]
    Unauthorized { code: String },
    #[error(
        "Okta: not allowed (403 {code}: {summary}) on {group}: the credential needs the okta.groups.manage and okta.users.read scopes and an admin role that manages this group"
    )]
    Forbidden {
        code: String,
        summary: String,
        group: String,
    },
    #[error(
        "Okta: group {0} does not exist (or is not an Okta group the credential can see): check okta_group in bot.toml"
    )]
    GroupNotFound(String),
    #[error("Okta: {0} is not a user of the org (E0000007)")]
    NoSuchUser(String),
    #[error("Okta: rate limit still exceeded after retries (E0000047)")]
    RateLimited,
    #[error("Okta: {0} after retries")]
    Exhausted(String),
    #[error("Okta: request rejected ({status} {code}): {summary}{}", causes_text(.causes))]
    Invalid {
        status: u16,
        code: String,
        summary: String,
        causes: Vec<String>,
    },
    #[error("Okta: connection failed: {0}")]
    Transport(String),
}

fn causes_text(causes: &[String]) -> String {
    if causes.is_empty() {
        String::new()
    } else {
        format!(" ({})", causes.join("; "))
    }
}

impl OktaError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            OktaError::RateLimited | OktaError::Exhausted(_) | OktaError::Transport(_)
        )
    }

    /// Okta's error code (`E0000007`), when the answer had one.
    pub fn code(&self) -> Option<&str> {
        match self {
            OktaError::Unauthorized { code }
            | OktaError::Forbidden { code, .. }
            | OktaError::Invalid { code, .. } => Some(code),
            OktaError::NoSuchUser(_) | OktaError::GroupNotFound(_) => Some("E0000007"),
            OktaError::RateLimited => Some("E0000047"),
            _ => None,
        }
    }
}

impl From<OktaError> for GroupError {
    fn from(e: OktaError) -> Self {
        let transient = e.is_transient();
        GroupError::new(e.to_string(), transient)
    }
}

/// How the client authenticates.
enum Auth {
    ApiToken(Secret),
    ServiceApp {
        client_id: String,
        key: crate::jwt::RsaKey,
        key_id: Option<String>,
        token_url: String,
        held: tokio::sync::Mutex<Option<HeldToken>>,
    },
}

struct HeldToken {
    token: Secret,
    /// A minute before the token's own expiry.
    renew_at: std::time::Instant,
}

pub struct OktaClient {
    base: String,
    http: reqwest::Client,
    auth: Auth,
    /// Every API call's attempts, with the budget that holds every caller
    /// while Okta says nothing remains (or after a 429); the token
    /// endpoint's attempts without it.
    transport: Transport,
    /// Group name -> id, resolved once.
    group_ids: tokio::sync::Mutex<HashMap<String, String>>,
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// An Okta group id (`00g` and 17 more letters or digits), as opposed to a name.
fn is_group_id(s: &str) -> bool {
    s.len() == 20 && s.starts_with("00g") && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The `rel="next"` target of a `Link` header, if any.
pub fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get_all("link")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|part| {
            let (url, params) = part.split_once(';')?;
            let is_next = params
                .split(';')
                .any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
            is_next.then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
        })
}

/// How long until `X-Rate-Limit-Reset` (epoch seconds), bounded.
fn until_reset(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let reset: i64 = headers
        .get("x-rate-limit-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let ms = reset.saturating_mul(1000).saturating_sub(now_ms).max(0) as u64;
    // The reset second itself is still in the window: wait past it.
    Some((Duration::from_millis(ms) + Duration::from_millis(200)).min(MAX_RESET_WAIT))
}

fn header_number(headers: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Requests that may be on their way when Okta says how many remain (issues
/// worked at once, each reading memberships side by side): a tenth of the
/// window's limit, at most 16, so a small limit is still used up.
fn in_flight_margin(headers: &reqwest::header::HeaderMap) -> u64 {
    header_number(headers, "x-rate-limit-limit").map_or(0, |limit| (limit / 10).min(16))
}

/// Whether nobody should send before the window resets: what remains is
/// no more than what may already be in flight.
fn window_drained(headers: &reqwest::header::HeaderMap) -> bool {
    header_number(headers, "x-rate-limit-remaining")
        .is_some_and(|remaining| remaining <= in_flight_margin(headers))
}

/// Okta's part of the shared transport: its rate-limit headers, E0000047,
/// the service app's token dropped and fetched again after a 401.
#[async_trait]
impl Api for OktaClient {
    type Error = OktaError;

    async fn authorize(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, OktaError> {
        Ok(rb.header("authorization", self.authorization().await?))
    }

    async fn refused(&self, authorization: Option<&reqwest::header::HeaderValue>) {
        // A refused access token is never sent again.
        if let Some(a) = authorization.and_then(|a| a.to_str().ok()) {
            self.drop_token(a).await;
        }
    }

    async fn refresh(&self) -> Result<bool, OktaError> {
        // The next attempt fetches a new token; an API token refused is simply wrong.
        Ok(matches!(self.auth, Auth::ServiceApp { .. }))
    }

    fn drained(&self, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
        // Nothing left in this window, or only room for the requests already
        // on their way: nobody sends before the reset.
        if window_drained(headers) {
            until_reset(headers)
        } else {
            None
        }
    }

    fn classify(&self, reply: &Reply) -> Class {
        let status = reply.status.as_u16();
        let v = reply.json();
        match status {
            // A 200 must carry the JSON Okta documents; anything else is a
            // broken answer, not an empty result.
            200 if v.is_null() => Class::Retry,
            200..=299 => Class::Answer,
            429 => Class::SlowDown {
                after: until_reset(&reply.headers).or_else(|| retry_after(&reply.headers)),
            },
            500 | 502 | 503 | 504 => Class::SlowDown { after: None },
            _ if error_parts(&v).0 == "E0000047" => Class::SlowDown { after: None },
            _ => Class::Answer,
        }
    }

    fn name(&self) -> String {
        "okta".into()
    }
}

/// The service app's `/oauth2/v1/token` on the shared transport, without
/// the budget: each attempt carries a newly signed assertion (its `jti` is
/// single-use), a refusal is `exchange`'s to explain, and a 429 or 5xx waits
/// for the endpoint's own reset (or `Retry-After`, or the backoff).
struct TokenEndpoint<'a>(&'a OktaClient);

#[async_trait]
impl Api for TokenEndpoint<'_> {
    type Error = OktaError;

    async fn authorize(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, OktaError> {
        let Auth::ServiceApp {
            client_id,
            key,
            key_id,
            token_url,
            ..
        } = &self.0.auth
        else {
            return Err(OktaError::Token("an API token is not exchanged".into()));
        };
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": client_id, "sub": client_id, "aud": token_url,
            "iat": now, "exp": now + 300,
            "jti": hex::encode(rand::random::<[u8; 16]>()),
        });
        let assertion = crate::jwt::rs256(&claims, key_id.as_deref(), |m| key.sign(m))
            .map_err(OktaError::Credential)?;
        Ok(rb.form(&[
            ("grant_type", "client_credentials"),
            ("scope", SCOPES),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ]))
    }

    fn classify(&self, reply: &Reply) -> Class {
        if reply.status == reqwest::StatusCode::TOO_MANY_REQUESTS || reply.status.is_server_error()
        {
            crate::http::token_class(Class::SlowDown {
                after: until_reset(&reply.headers).or_else(|| retry_after(&reply.headers)),
            })
        } else {
            Class::Answer
        }
    }

    fn name(&self) -> String {
        "okta token".into()
    }
}

/// Okta's error body: `errorCode`, `errorSummary`, `errorCauses[].errorSummary`.
fn error_parts(v: &Value) -> (String, String, Vec<String>) {
    let code = v["errorCode"].as_str().unwrap_or("").to_string();
    let summary = v["errorSummary"].as_str().unwrap_or("").to_string();
    let causes = v["errorCauses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["errorSummary"].as_str().map(String::from))
        .collect();
    (code, summary, causes)
}

impl OktaClient {
    pub fn new(
        cfg: &OktaConfig,
        secrets: &Secrets,
        http: reqwest::Client,
    ) -> Result<OktaClient, OktaError> {
        let base = cfg.org_url.trim_end_matches('/').to_string();
        let auth = match &cfg.auth {
            OktaAuth::ApiToken { token_env } => Auth::ApiToken(
                secrets
                    .get(token_env)
                    .map_err(|e| OktaError::Credential(e.to_string()))?,
            ),
            OktaAuth::PrivateKeyJwt {
                client_id,
                key_env,
                key_id,
            } => {
                let pem = secrets
                    .get(key_env)
                    .map_err(|e| OktaError::Credential(e.to_string()))?;
                let key = crate::jwt::RsaKey::from_pem(pem.expose())
                    .map_err(|e| OktaError::Credential(format!("{key_env}: {e}")))?;
                Auth::ServiceApp {
                    client_id: client_id.clone(),
                    key,
                    key_id: key_id.clone(),
                    token_url: format!("{base}/oauth2/v1/token"),
                    held: tokio::sync::Mutex::new(None),
                }
            }
        };
        Ok(OktaClient {
            base,
            http,
            auth,
            transport: Transport::new(Some(RateBudget::per_minute(cfg.requests_per_minute))),
            group_ids: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn with_backoff(mut self, b: Backoff) -> Self {
        self.transport.backoff = b;
        self
    }

    /// The `Authorization` header's value.
    async fn authorization(&self) -> Result<String, OktaError> {
        match &self.auth {
            Auth::ApiToken(t) => Ok(format!("SSWS {}", t.expose())),
            Auth::ServiceApp { held, .. } => {
                let mut held = held.lock().await;
                if let Some(t) = held.as_ref()
                    && std::time::Instant::now() < t.renew_at
                {
                    return Ok(format!("Bearer {}", t.token.expose()));
                }
                let (token, lifetime) = self.exchange().await?;
                let value = format!("Bearer {}", token.expose());
                *held = Some(HeldToken {
                    token,
                    renew_at: std::time::Instant::now()
                        + lifetime.saturating_sub(Duration::from_secs(60)),
                });
                Ok(value)
            }
        }
    }

    /// Drops the access token if it is still the refused one.
    async fn drop_token(&self, refused: &str) {
        if let Auth::ServiceApp { held, .. } = &self.auth {
            let mut held = held.lock().await;
            if held
                .as_ref()
                .is_some_and(|t| refused.strip_prefix("Bearer ") == Some(t.token.expose()))
            {
                *held = None;
            }
        }
    }

    /// Client credentials with a signed assertion; Okta's refusal says what is
    /// wrong (`invalid_client`: unknown client or key, `invalid_scope`: a scope
    /// not granted to the app).
    async fn exchange(&self) -> Result<(Secret, Duration), OktaError> {
        let Auth::ServiceApp { token_url, .. } = &self.auth else {
            return Err(OktaError::Token("an API token is not exchanged".into()));
        };
        // Outside the budget: the call that needs the token holds its slot already.
        let reply = self
            .transport
            .outside_budget()
            .send(&TokenEndpoint(self), || {
                self.http
                    .post(token_url)
                    .header("accept", "application/json")
            })
            .await
            .map_err(|f| f.token_error(OktaError::Token))?;
        let v = reply.json();
        if reply.status.is_success() {
            return crate::jwt::access_token(&v).map_err(OktaError::Token);
        }
        Err(OktaError::Token(format!(
            "{}: {} ({})",
            v["error"].as_str().unwrap_or(""),
            v["error_description"].as_str().unwrap_or(""),
            reply.status
        )))
    }

    /// One logical call, with its retries; the answer's body, its next page,
    /// and whether an earlier attempt's answer was lost (it may have been applied).
    async fn call(
        &self,
        method: Method,
        url: &str,
        group: &str,
    ) -> (Result<(Value, Option<String>), OktaError>, bool) {
        let mut lost = false;
        let r = self.call_once(method, url, group, &mut lost).await;
        crate::metrics::api("okta", &r);
        (r, lost)
    }

    async fn call_once(
        &self,
        method: Method,
        url: &str,
        group: &str,
        lost: &mut bool,
    ) -> Result<(Value, Option<String>), OktaError> {
        let reply = self
            .transport
            .send_tracked(
                self,
                || {
                    self.http
                        .request(method.clone(), url)
                        .header("accept", "application/json")
                },
                lost,
            )
            .await
            .map_err(|f| match f {
                Failure::Api(e) => e,
                Failure::RateLimited { .. } => OktaError::RateLimited,
                Failure::Server { last, .. } if last.status == 200 => {
                    OktaError::Exhausted("200 without a JSON body".into())
                }
                Failure::Server { last, .. } => OktaError::Exhausted(format!(
                    "{} {}",
                    last.status.as_u16(),
                    error_parts(&last.json()).0
                )),
                Failure::Connection { detail, .. } => OktaError::Transport(detail),
            })?;
        let status = reply.status.as_u16();
        let v = reply.json();
        if (200..300).contains(&status) {
            return Ok((v, next_link(&reply.headers)));
        }
        let (code, summary, causes) = error_parts(&v);
        Err(match status {
            401 => OktaError::Unauthorized { code },
            403 => OktaError::Forbidden {
                code,
                summary,
                group: group.to_string(),
            },
            _ => OktaError::Invalid {
                status,
                code,
                summary,
                causes,
            },
        })
    }

    /// The id of the group configured by name (or given as an id), once.
    async fn group_id(&self, group: &str) -> Result<String, OktaError> {
        if is_group_id(group) {
            return Ok(group.to_string());
        }
        // Held across the search: reads side by side on a cold cache look
        // the group up once, not once each.
        let mut ids = self.group_ids.lock().await;
        if let Some(id) = ids.get(group) {
            return Ok(id.clone());
        }
        let search = format!("profile.name eq \"{}\"", group.replace('"', "\\\""));
        let url = format!(
            "{}/api/v1/groups?search={}&limit=2",
            self.base,
            enc(&search)
        );
        let (v, _) = self.call(Method::GET, &url, group).await.0?;
        let found: Vec<&Value> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["type"] == "OKTA_GROUP" && g["profile"]["name"] == group)
            .collect();
        let [only] = found.as_slice() else {
            return Err(if found.is_empty() {
                OktaError::GroupNotFound(group.to_string())
            } else {
                OktaError::Invalid {
                    status: 200,
                    code: String::new(),
                    summary: format!("more than one Okta group is called {group:?}"),
                    causes: Vec::new(),
                }
            });
        };
        let id = only["id"]
            .as_str()
            .ok_or_else(|| OktaError::GroupNotFound(group.to_string()))?
            .to_string();
        ids.insert(group.to_string(), id.clone());
        Ok(id)
    }

    /// The user's id by login; `None` when the org has no such user.
    async fn user_id(&self, login: &str, group: &str) -> Result<Option<String>, OktaError> {
        let url = format!("{}/api/v1/users/{}", self.base, enc(login));
        match self.call(Method::GET, &url, group).await.0 {
            Ok((v, _)) => Ok(v["id"].as_str().map(String::from)),
            Err(OktaError::Invalid {
                status: 404, code, ..
            }) if code == "E0000007" => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn membership_url(&self, group_id: &str, user_id: &str) -> String {
        format!(
            "{}/api/v1/groups/{}/users/{}",
            self.base,
            enc(group_id),
            enc(user_id)
        )
    }

    /// Assigns the user to the group. Okta's `PUT` is idempotent: a member
    /// already there, or an attempt repeated after a lost answer, is a 204 too.
    pub async fn assign(&self, group: &str, login: &str) -> Result<Change, OktaError> {
        let gid = self.group_id(group).await?;
        let uid = self
            .user_id(login, group)
            .await?
            .ok_or_else(|| OktaError::NoSuchUser(login.to_string()))?;
        let url = self.membership_url(&gid, &uid);
        match self.call(Method::PUT, &url, group).await.0 {
            Ok(_) => Ok(Change::Done),
            Err(OktaError::Invalid {
                status: 404, code, ..
            }) if code == "E0000007" => Err(OktaError::GroupNotFound(group.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Unassigns the user. Not a member (or not a user at all) is already so;
    /// a 404 on a retry whose first answer was lost means that attempt did it.
    pub async fn unassign(&self, group: &str, login: &str) -> Result<Change, OktaError> {
        let gid = self.group_id(group).await?;
        let Some(uid) = self.user_id(login, group).await? else {
            return Ok(Change::AlreadySo);
        };
        let url = self.membership_url(&gid, &uid);
        let (r, lost) = self.call(Method::DELETE, &url, group).await;
        match r {
            Ok(_) => Ok(Change::Done),
            Err(OktaError::Invalid {
                status: 404, code, ..
            }) if code == "E0000007" => {
                if lost {
                    tracing::info!(
                        group,
                        "removed by an attempt whose answer was lost (404 on the retry)"
                    );
                    Ok(Change::Done)
                } else if self.group_exists(&gid, group).await? {
                    Ok(Change::AlreadySo)
                } else {
                    Err(OktaError::GroupNotFound(group.to_string()))
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn group_exists(&self, gid: &str, group: &str) -> Result<bool, OktaError> {
        let url = format!("{}/api/v1/groups/{}", self.base, enc(gid));
        match self.call(Method::GET, &url, group).await.0 {
            Ok(_) => Ok(true),
            Err(OktaError::Invalid { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Direct membership, from the user's groups (a person has a few; a
    /// group may have thousands of members).
    pub async fn member(&self, group: &str, login: &str) -> Result<bool, OktaError> {
        let gid = self.group_id(group).await?;
        let Some(uid) = self.user_id(login, group).await? else {
            return Ok(false);
        };
        let mut url = Some(format!("{}/api/v1/users/{}/groups", self.base, enc(&uid)));
        while let Some(u) = url.take() {
            let (v, next) = self.call(Method::GET, &u, group).await.0?;
            if v.as_array()
                .into_iter()
                .flatten()
                .any(|g| g["id"].as_str() == Some(gid.as_str()))
            {
                return Ok(true);
            }
            url = next.filter(|n| self.same_origin(n));
        }
        Ok(false)
    }

    /// Every member's login, page by page along `Link: rel="next"`.
    pub async fn members(&self, group: &str) -> Result<Vec<String>, OktaError> {
        let gid = self.group_id(group).await?;
        let mut out = Vec::new();
        let mut url = Some(format!(
            "{}/api/v1/groups/{}/users?limit={PAGE}",
            self.base,
            enc(&gid)
        ));
        while let Some(u) = url.take() {
            let (v, next) = match self.call(Method::GET, &u, group).await.0 {
                Err(OktaError::Invalid {
                    status: 404, code, ..
                }) if code == "E0000007" => {
                    return Err(OktaError::GroupNotFound(group.to_string()));
                }
                r => r?,
            };
            let page = v.as_array().ok_or_else(|| OktaError::Invalid {
                status: 200,
                code: String::new(),
                summary: "the member list is not an array".into(),
                causes: Vec::new(),
            })?;
            out.extend(
                page.iter()
                    .filter_map(|m| m["profile"]["login"].as_str().map(String::from)),
            );
            url = next.filter(|n| self.same_origin(n));
        }
        Ok(out)
    }

    /// A next link is followed only on the org it came from: the credential
    /// goes with it.
    fn same_origin(&self, link: &str) -> bool {
        let ok = link.starts_with(&format!("{}/", self.base));
        if !ok {
            tracing::warn!("Okta: a next-page link to another origin was not followed");
        }
        ok
    }

    /// `check`: a new access token (service app), or the API token accepted.
    pub async fn verify_credentials(&self) -> Result<&'static str, OktaError> {
        match &self.auth {
            Auth::ApiToken(_) => {
                let url = format!("{}/api/v1/groups?limit=1", self.base);
                self.call(Method::GET, &url, "").await.0?;
                Ok("the API token is accepted")
            }
            Auth::ServiceApp { held, .. } => {
                *held.lock().await = None;
                self.authorization().await?;
                Ok("token refresh works (a new access token was issued)")
            }
        }
    }
}

#[async_trait]
impl GroupDirectory for OktaClient {
    fn label(&self) -> &'static str {
        "Okta"
    }
    async fn add_member(&self, group: &str, person: &str) -> Result<Change, GroupError> {
        Ok(self.assign(group, person).await?)
    }
    async fn remove_member(&self, group: &str, person: &str) -> Result<Change, GroupError> {
        Ok(self.unassign(group, person).await?)
    }
    async fn is_member(&self, group: &str, person: &str) -> Result<bool, GroupError> {
        Ok(self.member(group, person).await?)
    }
    async fn list_members(&self, group: &str) -> Result<Vec<String>, GroupError> {
        Ok(self.members(group).await?)
    }
    async fn refresh(&self) -> Result<&'static str, GroupError> {
        Ok(self.verify_credentials().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_the_rel_next_one() {
        let mut h = reqwest::header::HeaderMap::new();
        h.append(
            "link",
            "<https://x.okta.com/api/v1/groups/g/users?limit=2>; rel=\"self\""
                .parse()
                .unwrap(),
        );
        h.append(
            "link",
            "<https://x.okta.com/api/v1/groups/g/users?after=abc&limit=2>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://x.okta.com/api/v1/groups/g/users?after=abc&limit=2")
        );
        let mut one = reqwest::header::HeaderMap::new();
        one.insert(
            "link",
            "<a>; rel=\"self\", <b>; rel=\"next\"".parse().unwrap(),
        );
        assert_eq!(next_link(&one).as_deref(), Some("b"));
        let mut none = reqwest::header::HeaderMap::new();
        none.insert("link", "<a>; rel=\"self\"".parse().unwrap());
        assert_eq!(next_link(&none), None);
    }

    #[test]
    fn the_window_counts_as_drained_with_room_left_only_for_requests_in_flight() {
        let headers = |limit: u64, remaining: u64| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("x-rate-limit-limit", limit.into());
            h.insert("x-rate-limit-remaining", remaining.into());
            h
        };
        // 600 a minute: stop with 16 left, for what is on its way.
        assert!(!window_drained(&headers(600, 17)));
        assert!(window_drained(&headers(600, 16)));
        // 100: a tenth of it.
        assert!(!window_drained(&headers(100, 11)));
        assert!(window_drained(&headers(100, 10)));
        // A small limit is used up to the last request.
        assert!(!window_drained(&headers(3, 1)));
        assert!(window_drained(&headers(3, 0)));
        // No limit said: only at zero.
        let mut bare = reqwest::header::HeaderMap::new();
        bare.insert("x-rate-limit-remaining", 1u64.into());
        assert!(!window_drained(&bare));
        bare.insert("x-rate-limit-remaining", 0u64.into());
        assert!(window_drained(&bare));
        assert!(!window_drained(&reqwest::header::HeaderMap::new()));
    }

    #[test]
    fn group_ids_are_told_from_names() {
        assert!(is_group_id("00g1emaKYZTWRYYRRTSK"));
        assert!(!is_group_id("okta-zendeskglobal-users"));
        assert!(!is_group_id("00g1emaKYZTWRYYRRTS"));
    }

    #[test]
    fn errors_keep_okta_codes_and_causes() {
        let (code, summary, causes) = error_parts(&json!({
            "errorCode": "E0000001", "errorSummary": "Api validation failed: limit",
            "errorLink": "E0000001", "errorId": "x",
            "errorCauses": [{"errorSummary": "limit: must be at most 1000"}]
        }));
        let e = OktaError::Invalid {
            status: 400,
            code,
            summary,
            causes,
        };
        assert_eq!(e.code(), Some("E0000001"));
        assert!(e.to_string().contains("limit: must be at most 1000"), "{e}");
        assert!(!e.is_transient());
        assert!(OktaError::RateLimited.is_transient());
    }
}
