//! Zendesk Support connector, one client per instance (Support API v2).
//!
//! Auth: OAuth client credentials (cached, refreshed a minute before expiry and
//! once after a 401) or the legacy `email/token` API token (warned about: they
//! stop working on 2027-04-30). Every request waits for its slot in the
//! instance's budget; a 429 pauses the whole instance for `Retry-After`; 5xx
//! and dropped connections are retried with capped jittered backoff; other 4xx
//! come back as typed errors that say what to fix.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::accounts::AccountError;
pub use crate::accounts::{BulkOutcome, UserPatch};
use crate::config::{ZendeskAuth, ZendeskInstance};
use crate::http::{Api, Backoff, Class, Failure, RateBudget, Reply, Transport, retry_after};
use crate::request::Email;
use crate::secret::{Secret, Secrets};

#[derive(Debug, thiserror::Error)]
pub enum ZendeskError {
    #[error(
        "Zendesk {instance}: credentials rejected (401): {detail}. Check the OAuth client id and secret (or API token) named in bot.toml"
    )]
    Unauthorized { instance: String, detail: String },
    #[error(
        "Zendesk {instance}: not allowed (403): {detail}. The OAuth client needs write scope and an admin user; some features need the Enterprise plan"
    )]
    Forbidden { instance: String, detail: String },
    #[error("Zendesk {instance}: {what} not found")]
    NotFound { instance: String, what: String },
    #[error("Zendesk {instance}: request rejected ({status} {error}): {detail}")]
    Invalid {
        instance: String,
        status: u16,
        error: String,
        detail: String,
    },
    #[error("Zendesk {instance}: still rate limited after {attempts} attempts")]
    RateLimited { instance: String, attempts: u32 },
    #[error("Zendesk {instance}: server error {status} after {attempts} attempts")]
    Server {
        instance: String,
        status: u16,
        attempts: u32,
    },
    #[error("Zendesk {instance}: connection failed after {attempts} attempts: {detail}")]
    Transport {
        instance: String,
        attempts: u32,
        detail: String,
    },
    #[error("Zendesk {instance}: unexpected response: {detail}")]
    Decode { instance: String, detail: String },
    #[error("Zendesk {instance}: {detail}")]
    Config { instance: String, detail: String },
    #[error("Zendesk {instance}: bulk job {job} did not finish: {detail}")]
    Job {
        instance: String,
        job: String,
        detail: String,
    },
    #[error(
        "Zendesk {instance}: the OAuth token lacks the `{scope}` scope, which {what} needs (granted: `{granted}`). Request it: leave `scope` out of the instance's auth in bot.toml (the bot then asks for `{required}`), and allow it for the OAuth client"
    )]
    MissingScope {
        instance: String,
        scope: String,
        what: String,
        granted: String,
        required: String,
    },
    #[error(
        "Zendesk {instance}: the OAuth client may not request the scope `{requested}` (400 {error}: {detail}). Allow these scopes for the client in Admin Center (Apps and integrations > APIs > OAuth clients)"
    )]
    ScopeRefused {
        instance: String,
        requested: String,
        error: String,
        detail: String,
    },
}

impl ZendeskError {
    /// Worth trying again on a later cycle (as opposed to a configuration or request problem).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ZendeskError::RateLimited { .. }
                | ZendeskError::Server { .. }
                | ZendeskError::Transport { .. }
                | ZendeskError::Job { .. }
        )
    }
}

/// A user as the API returns it (only the fields the bot reads).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct User {
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    pub role: String,
    #[serde(default)]
    pub role_type: Option<i64>,
    #[serde(default)]
    pub custom_role_id: Option<u64>,
    #[serde(default)]
    pub suspended: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub user_fields: BTreeMap<String, Value>,
    #[serde(default)]
    pub last_login_at: Option<DateTime<Utc>>,
}

impl User {
    pub fn filled_fields(&self) -> Vec<String> {
        crate::accounts::filled(&self.user_fields)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CustomRole {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub role_type: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Group {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Membership {
    pub id: u64,
    pub user_id: u64,
    pub group_id: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Ticket {
    pub id: u64,
    pub status: String,
    #[serde(default)]
    pub assignee_id: Option<u64>,
    #[serde(default)]
    pub group_id: Option<u64>,
    /// When the ticket last changed (idle-seat review: recent work keeps a seat).
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
}

/// What one kind of call needs from an OAuth token: a resource scope
/// (`users`, `tickets`), or, where Zendesk has none (groups, group
/// memberships, custom roles, job statuses), the global `read` or `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub resource: Option<&'static str>,
    pub write: bool,
}

impl Need {
    const fn new(resource: Option<&'static str>, write: bool) -> Need {
        Need { resource, write }
    }

    fn level(&self) -> &'static str {
        if self.write { "write" } else { "read" }
    }

    /// The narrowest scope that grants it (`users:write`; `write` where there is no resource scope).
    pub fn scope(&self) -> String {
        match self.resource {
            Some(r) => format!("{r}:{}", self.level()),
            None => self.level().to_string(),
        }
    }

    /// Whether these granted scopes cover it (a bare resource grants both levels).
    pub fn granted_by(&self, scopes: &[String]) -> bool {
        scopes.iter().any(|s| {
            s == self.level() || self.resource.is_some_and(|r| *s == self.scope() || s == r)
        })
    }

    /// What the bot does with it, for messages.
    pub fn purpose(&self) -> &'static str {
        CALLS
            .iter()
            .find(|(_, n)| n == self)
            .map(|(what, _)| *what)
            .unwrap_or("this call")
    }
}

/// Every kind of call the bot makes to Zendesk, and the scope it needs.
pub const CALLS: &[(&str, Need)] = &[
    (
        "reading users (look-ups, tags, its own account, paid seats)",
        Need::new(Some("users"), false),
    ),
    (
        "listing a leaver's assigned tickets",
        Need::new(Some("tickets"), false),
    ),
    (
        "reading custom roles, groups, group memberships, bulk job statuses and ticket searches (counts, recent work)",
        Need::new(None, false),
    ),
    (
        "creating and changing users (role, custom role, suspension, user fields, tags)",
        Need::new(Some("users"), true),
    ),
    (
        "adding and removing group memberships",
        Need::new(None, true),
    ),
    (
        "reassigning tickets in bulk",
        Need::new(Some("tickets"), true),
    ),
];

/// The scopes the bot requests: exactly what `CALLS` need, without the
/// resource scopes a global one already grants. Zendesk has no scope for
/// groups and memberships, so this is `read write`.
pub fn required_scope() -> String {
    let mut scopes: Vec<String> = Vec::new();
    for (_, need) in CALLS {
        let s = need.scope();
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    let global: Vec<String> = scopes
        .iter()
        .filter(|s| !s.contains(':'))
        .cloned()
        .collect();
    scopes.retain(|s| {
        s.split_once(':')
            .is_none_or(|(_, level)| !global.iter().any(|g| g == level))
    });
    scopes.sort();
    scopes.join(" ")
}

/// The bot's reading of which scope a request needs (method and path under `/api/v2`).
pub fn need_of(method: &Method, path: &str) -> Need {
    let rest = match path.find("/api/v2/") {
        Some(i) => &path[i + 8..],
        None => path.trim_start_matches('/'),
    };
    let rest = rest.split('?').next().unwrap_or(rest);
    let segs: Vec<&str> = rest
        .split('/')
        .map(|s| s.strip_suffix(".json").unwrap_or(s))
        .collect();
    let resource = match segs.as_slice() {
        ["users", _, "group_memberships", ..] => None,
        ["users", _, "tickets", ..] => Some("tickets"),
        ["users", ..] => Some("users"),
        ["tickets", ..] => Some("tickets"),
        _ => None,
    };
    Need::new(resource, *method != Method::GET)
}

/// What an OAuth token grants, as far as the bot can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A legacy API token: the user's full rights, no scopes.
    ApiToken,
    /// The scopes the token response named.
    Scopes(Vec<String>),
    /// The token response did not say.
    Unstated,
}

/// The operations the workflows use, per instance. Mocked in unit tests of logic;
/// proved against the sandbox over HTTP.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait ZendeskApi: Send + Sync {
    fn instance(&self) -> &str;
    async fn me(&self) -> Result<User, ZendeskError>;
    /// Exact (case-insensitive) email match among the search results.
    async fn find_user(&self, email: &Email) -> Result<Option<User>, ZendeskError>;
    async fn show_user(&self, id: u64) -> Result<User, ZendeskError>;
    /// Create or update by email; returns the user and whether it was created (201).
    async fn create_or_update(
        &self,
        name: &str,
        email: &Email,
        role: &str,
        custom_role_id: Option<u64>,
    ) -> Result<(User, bool), ZendeskError>;
    async fn update_user(&self, id: u64, patch: &UserPatch) -> Result<User, ZendeskError>;
    async fn add_tags(&self, id: u64, tags: &[String]) -> Result<Vec<String>, ZendeskError>;
    async fn remove_tags(&self, id: u64, tags: &[String]) -> Result<Vec<String>, ZendeskError>;
    async fn custom_roles(&self) -> Result<Vec<CustomRole>, ZendeskError>;
    async fn groups(&self) -> Result<Vec<Group>, ZendeskError>;
    async fn memberships(&self, user_id: u64) -> Result<Vec<Membership>, ZendeskError>;
    async fn add_membership(&self, user_id: u64, group_id: u64) -> Result<(), ZendeskError>;
    /// 404 counts as done.
    async fn remove_membership(&self, membership_id: u64) -> Result<(), ZendeskError>;
    /// Tickets assigned to the user with status below closed.
    async fn open_tickets(&self, user_id: u64) -> Result<Vec<Ticket>, ZendeskError>;
    /// How many tickets below closed are assigned to the user, without
    /// listing them all: exact when one page of the assigned list holds every
    /// assigned ticket, else Zendesk's search count (whose index may lag by
    /// minutes), never below what that page showed.
    async fn open_ticket_count(&self, user_id: u64) -> Result<u64, ZendeskError>;
    /// Who is assigned a ticket below closed that changed after `since`: one
    /// search export (cursor pages of up to 1,000), whatever the number of
    /// agents. The search index may lag by minutes.
    async fn recently_worked_assignees(
        &self,
        since: DateTime<Utc>,
    ) -> Result<std::collections::BTreeSet<u64>, ZendeskError>;
    /// Reassign in batches of at most 100, with the group set up front for the
    /// tickets whose group the assignee is not in; several jobs in flight,
    /// polled together; failed items retried once.
    async fn reassign(
        &self,
        tickets: &[Ticket],
        assignee: u64,
        assignee_groups: &[u64],
    ) -> Result<BulkOutcome, ZendeskError>;
    /// Agents and admins (paid seats), cursor-paginated.
    async fn agents(&self) -> Result<Vec<User>, ZendeskError>;
    /// The paid seats (agents and admins, not light agents) but `except`,
    /// read page by page, counted, and kept only when their last login is
    /// before `cutoff` or never: memory for the idle, not for every agent.
    async fn idle_paid_agents(
        &self,
        light_agent_role: Option<u64>,
        cutoff: DateTime<Utc>,
        except: u64,
    ) -> Result<(usize, Vec<User>), ZendeskError>;
}

/// An OAuth access token and what came with it.
struct OauthToken {
    token: Secret,
    expires: Option<DateTime<Utc>>,
    /// The token response's `scope`, split.
    scopes: Option<Vec<String>>,
}

enum Auth {
    Oauth {
        client_id: Secret,
        client_secret: Secret,
        scope: String,
        token: Mutex<Option<OauthToken>>,
    },
    ApiToken {
        email: Secret,
        token: Secret,
    },
}

pub struct ZendeskClient {
    instance: String,
    base: String,
    http: reqwest::Client,
    auth: Auth,
    /// Budget, retries and backoff of every API call (and, without the
    /// budget, of the token endpoint's).
    transport: Transport,
    /// Delay between job polls.
    pub job_poll_interval: Duration,
}

impl ZendeskClient {
    pub fn new(
        instance: &str,
        cfg: &ZendeskInstance,
        secrets: &Secrets,
        http: reqwest::Client,
    ) -> Result<ZendeskClient, ZendeskError> {
        let missing = |e: crate::secret::SecretError| ZendeskError::Config {
            instance: instance.into(),
            detail: e.to_string(),
        };
        let auth = match &cfg.auth {
            ZendeskAuth::Oauth {
                client_id_env,
                client_secret_env,
                scope,
            } => Auth::Oauth {
                client_id: secrets.get(client_id_env).map_err(missing)?,
                client_secret: secrets.get(client_secret_env).map_err(missing)?,
                scope: scope.clone(),
                token: Mutex::new(None),
            },
            ZendeskAuth::ApiToken {
                email_env,
                token_env,
            } => {
                tracing::warn!(
                    instance,
                    "Zendesk {instance} uses a legacy API token; API tokens stop working on 2027-04-30: move to an OAuth client"
                );
                Auth::ApiToken {
                    email: secrets.get(email_env).map_err(missing)?,
                    token: secrets.get(token_env).map_err(missing)?,
                }
            }
        };
        Ok(ZendeskClient {
            instance: instance.into(),
            base: cfg.base_url.trim_end_matches('/').to_string(),
            http,
            auth,
            transport: Transport::new(Some(RateBudget::per_minute(cfg.requests_per_minute))),
            job_poll_interval: Duration::from_millis(500),
        })
    }

    pub fn with_backoff(mut self, b: Backoff) -> Self {
        self.transport.backoff = b;
        self
    }

    /// What the token grants (fetching one if none is held).
    pub async fn grant(&self) -> Result<Grant, ZendeskError> {
        match &self.auth {
            Auth::ApiToken { .. } => Ok(Grant::ApiToken),
            Auth::Oauth { token, .. } => {
                self.authorization(false).await?;
                Ok(
                    match token.lock().await.as_ref().and_then(|t| t.scopes.clone()) {
                        Some(s) => Grant::Scopes(s),
                        None => Grant::Unstated,
                    },
                )
            }
        }
    }

    /// Drops the token held and fetches a new one (`check`: refreshing works).
    pub async fn refresh(&self) -> Result<(), ZendeskError> {
        self.authorization(true).await.map(|_| ())
    }

    /// The scopes of the token held, if it said (no request is made).
    async fn held_scopes(&self) -> Option<Vec<String>> {
        match &self.auth {
            Auth::Oauth { token, .. } => token.lock().await.as_ref().and_then(|t| t.scopes.clone()),
            Auth::ApiToken { .. } => None,
        }
    }

    fn err_decode(&self, detail: impl ToString) -> ZendeskError {
        ZendeskError::Decode {
            instance: self.instance.clone(),
            detail: detail.to_string(),
        }
    }

    async fn authorization(&self, refresh: bool) -> Result<String, ZendeskError> {
        match &self.auth {
            Auth::ApiToken { email, token } => Ok(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}/token:{}",
                    email.expose(),
                    token.expose()
                ))
            )),
            Auth::Oauth {
                client_id,
                client_secret,
                scope,
                token,
            } => {
                let mut cached = token.lock().await;
                let fresh = cached.as_ref().is_some_and(|t| {
                    t.expires
                        .is_none_or(|e| e - chrono::Duration::seconds(60) > Utc::now())
                });
                if refresh || !fresh {
                    *cached = Some(self.fetch_token(client_id, client_secret, scope).await?);
                }
                Ok(format!(
                    "Bearer {}",
                    cached
                        .as_ref()
                        .map(|t| t.token.expose())
                        .unwrap_or_default()
                ))
            }
        }
    }

    async fn fetch_token(
        &self,
        id: &Secret,
        secret: &Secret,
        scope: &str,
    ) -> Result<OauthToken, ZendeskError> {
        let body = json!({"grant_type": "client_credentials", "client_id": id.expose(),
                          "client_secret": secret.expose(), "scope": scope, "expires_in": 3600});
        let url = format!("{}/oauth/tokens", self.base);
        // No token from the request budget: the token endpoint is not an API call
        // the plan counts, and a fetch must not wait behind a queue of callers.
        let reply =
            self.transport
                .outside_budget()
                .send(&TokenEndpoint(self), || self.http.post(&url).json(&body))
                .await
                .map_err(|f| match f {
                    Failure::Api(e) => e,
                    Failure::RateLimited { attempts, last }
                    | Failure::Server { attempts, last } => ZendeskError::Server {
                        instance: self.instance.clone(),
                        status: last.status.as_u16(),
                        attempts,
                    },
                    Failure::Connection {
                        attempts, detail, ..
                    } => ZendeskError::Transport {
                        instance: self.instance.clone(),
                        attempts,
                        detail,
                    },
                })?;
        match reply.status {
            s if s.is_success() => {
                let v: Value =
                    serde_json::from_slice(&reply.body).map_err(|e| self.err_decode(e))?;
                let tok = v["access_token"]
                    .as_str()
                    .ok_or_else(|| self.err_decode("token response without access_token"))?;
                // `expires_in` is optional in the documented response (UNCONFIRMED): then we
                // keep the token until a 401 says otherwise.
                let expires = v["expires_in"]
                    .as_i64()
                    .map(|s| Utc::now() + chrono::Duration::seconds(s));
                let scopes = v["scope"]
                    .as_str()
                    .map(|s| s.split_whitespace().map(String::from).collect());
                Ok(OauthToken {
                    token: Secret::new(tok),
                    expires,
                    scopes,
                })
            }
            StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST => {
                let v = reply.json();
                if v["error"] == "invalid_scope" {
                    return Err(ZendeskError::ScopeRefused {
                        instance: self.instance.clone(),
                        requested: scope.to_string(),
                        error: "invalid_scope".into(),
                        detail: v["error_description"].as_str().unwrap_or("").to_string(),
                    });
                }
                Err(ZendeskError::Unauthorized {
                    instance: self.instance.clone(),
                    detail: v["error"]
                        .as_str()
                        .unwrap_or("token request refused")
                        .to_string(),
                })
            }
            // Another answer is not retried: the attempt that got it is the one
            // counted (earlier attempts were slowed down or failed).
            s => Err(ZendeskError::Server {
                instance: self.instance.clone(),
                status: s.as_u16(),
                attempts: 1,
            }),
        }
    }

    /// One API call with budget, auth, retries and error mapping. `what` names
    /// the thing for 404 messages. Returns status and JSON body (Null if empty).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<(StatusCode, Value), ZendeskError> {
        let r = self.call_once(method, path, body, what).await;
        crate::metrics::api(&format!("zendesk.{}", self.instance), &r);
        r
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<(StatusCode, Value), ZendeskError> {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}/api/v2{path}", self.base)
        };
        let reply = self
            .transport
            .send(self, || {
                let rb = self
                    .http
                    .request(method.clone(), &url)
                    .header("accept", "application/json");
                match body {
                    Some(b) => rb.json(b),
                    None => rb,
                }
            })
            .await
            .map_err(|f| match f {
                Failure::Api(e) => e,
                Failure::RateLimited { attempts, .. } => ZendeskError::RateLimited {
                    instance: self.instance.clone(),
                    attempts,
                },
                Failure::Server { attempts, last } => ZendeskError::Server {
                    instance: self.instance.clone(),
                    status: last.status.as_u16(),
                    attempts,
                },
                Failure::Connection {
                    attempts, detail, ..
                } => ZendeskError::Transport {
                    instance: self.instance.clone(),
                    attempts,
                    detail,
                },
            })?;
        let status = reply.status;
        let json = || reply.json();
        match status.as_u16() {
            200..=299 => Ok((status, json())),
            401 => Err(ZendeskError::Unauthorized {
                instance: self.instance.clone(),
                detail: describe(&json()),
            }),
            403 => {
                // The body does not say why: when the token's scopes do not
                // cover the call, that is the reason, and it is named.
                let need = need_of(&method, &url);
                if let Some(granted) = self.held_scopes().await
                    && !need.granted_by(&granted)
                {
                    return Err(ZendeskError::MissingScope {
                        instance: self.instance.clone(),
                        scope: need.scope(),
                        what: need.purpose().to_string(),
                        granted: granted.join(" "),
                        required: required_scope(),
                    });
                }
                Err(ZendeskError::Forbidden {
                    instance: self.instance.clone(),
                    detail: describe(&json()),
                })
            }
            404 => Err(ZendeskError::NotFound {
                instance: self.instance.clone(),
                what: what.to_string(),
            }),
            s => {
                let v = json();
                Err(ZendeskError::Invalid {
                    instance: self.instance.clone(),
                    status: s,
                    error: v["error"].as_str().unwrap_or("").to_string(),
                    detail: describe(&v),
                })
            }
        }
    }

    async fn get(&self, path: &str, what: &str) -> Result<Value, ZendeskError> {
        self.call(Method::GET, path, None, what)
            .await
            .map(|(_, v)| v)
    }

    /// Follow cursor pagination (`links.next` while `meta.has_more`), handing
    /// each page's items, parsed, to `each`: only one page is held at a time.
    async fn each_page<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
        what: &str,
        size: usize,
        mut each: impl FnMut(Vec<T>),
    ) -> Result<(), ZendeskError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut next = Some(format!("{path}{sep}page[size]={size}"));
        while let Some(p) = next.take() {
            let mut v = self.get(&p, what).await?;
            let items = match v.get_mut(key).map(Value::take) {
                None | Some(Value::Null) => Vec::new(),
                Some(items) => serde_json::from_value(items).map_err(|e| self.err_decode(e))?,
            };
            each(items);
            if v["meta"]["has_more"] == true {
                // Hosts in links.next may differ from ours (recordings show it): keep our base.
                next = v["links"]["next"]
                    .as_str()
                    .and_then(|n| n.find("/api/v2").map(|i| n[i + 7..].to_string()));
            }
        }
        Ok(())
    }

    async fn paged<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
        what: &str,
    ) -> Result<Vec<T>, ZendeskError> {
        let mut out = Vec::new();
        self.each_page(path, key, what, 100, |items| out.extend(items))
            .await?;
        Ok(out)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, v: &Value) -> Result<T, ZendeskError> {
        serde_json::from_value(v.clone()).map_err(|e| self.err_decode(e))
    }
}

/// When the response says no requests are left, how long until the bucket resets.
/// Zendesk's part of the shared transport: OAuth refresh, its bucket headers,
/// and 503 treated like a 429 (both come with `Retry-After`).
#[async_trait]
impl Api for ZendeskClient {
    type Error = ZendeskError;

    async fn authorize(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, ZendeskError> {
        Ok(rb.header("authorization", self.authorization(false).await?))
    }

    async fn refresh(&self) -> Result<bool, ZendeskError> {
        if !matches!(self.auth, Auth::Oauth { .. }) {
            return Ok(false);
        }
        self.authorization(true).await?;
        Ok(true)
    }

    fn drained(&self, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
        drained(headers)
    }

    fn classify(&self, reply: &Reply) -> Class {
        match reply.status.as_u16() {
            429 | 503 => Class::SlowDown {
                after: retry_after(&reply.headers),
            },
            500..=599 => Class::Retry,
            _ => Class::Answer,
        }
    }

    fn name(&self) -> String {
        format!("zendesk.{}", self.instance)
    }
}

/// The instance's `/oauth/tokens`, on the shared transport without the
/// budget: the client's id and secret are in the body, a refusal (400, 401)
/// is `fetch_token`'s to explain, and a 429 or 5xx is retried as the API's are.
struct TokenEndpoint<'a>(&'a ZendeskClient);

#[async_trait]
impl Api for TokenEndpoint<'_> {
    type Error = ZendeskError;

    fn classify(&self, reply: &Reply) -> Class {
        crate::http::token_class(Api::classify(self.0, reply))
    }

    fn name(&self) -> String {
        format!("zendesk.{} token", self.0.instance)
    }
}

/// Requests that may be on their way when the server says how many remain.
const IN_FLIGHT_MARGIN: u64 = 16;

fn drained(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let remaining = num("ratelimit-remaining")
        .or_else(|| num("rate-limit-remaining"))
        .or_else(|| num("x-rate-limit-remaining"))?;
    // Not only at zero: the calls already in flight when the server's count
    // runs out get 429s. Stop while there is room for them (issues worked
    // at once, a bulk job's pipelined polls).
    if remaining > IN_FLIGHT_MARGIN {
        return None;
    }
    let reset = num("ratelimit-reset")
        .or_else(|| num("rate-limit-reset"))
        .unwrap_or(1);
    Some(Duration::from_secs(reset.clamp(1, 60)))
}

fn describe(v: &Value) -> String {
    let mut s = String::new();
    if let Some(e) = v["error"].as_str() {
        s.push_str(e);
    } else if let Some(e) = v["error"]["title"].as_str() {
        s.push_str(e);
    }
    if let Some(d) = v["description"].as_str() {
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(d);
    }
    if let Value::Object(details) = &v["details"] {
        for (field, errs) in details {
            for e in errs.as_array().into_iter().flatten() {
                if let Some(d) = e["description"].as_str() {
                    s.push_str(&format!("; {field}: {d}"));
                }
            }
        }
    }
    if s.is_empty() { v.to_string() } else { s }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[async_trait]
impl ZendeskApi for ZendeskClient {
    fn instance(&self) -> &str {
        &self.instance
    }

    async fn me(&self) -> Result<User, ZendeskError> {
        let v = self.get("/users/me.json", "current user").await?;
        self.parse(&v["user"])
    }

    async fn find_user(&self, email: &Email) -> Result<Option<User>, ZendeskError> {
        // `/users/search` has no email parameter (unknown ones are ignored and return
        // everyone), so query `email:"..."` and keep only the exact match.
        let q = enc(&format!("email:\"{}\"", email.as_str()));
        let v = self
            .get(&format!("/users/search.json?query={q}"), "user")
            .await?;
        let mut users: Vec<User> = self.parse(&v["users"])?;
        let mut exact: Vec<User> = users
            .iter()
            .filter(|u| {
                u.email
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case(email.as_str()))
            })
            .cloned()
            .collect();
        // No primary match, but one account holds the address as another of its
        // identities: that account is who the address means (and
        // `create_or_update` would change it), so it is what the bot looks at,
        // with every guard (admins, the bot's own) applying to it.
        if exact.is_empty() && users.len() == 1 {
            tracing::info!(instance = %self.instance, "the address is a secondary identity of an existing account");
            return Ok(users.pop());
        }
        match exact.len() {
            0 => Ok(None),
            1 => Ok(exact.pop()),
            n => Err(ZendeskError::Invalid {
                instance: self.instance.clone(),
                status: 200,
                error: "Ambiguous".into(),
                detail: format!("{n} users have the email {email}"),
            }),
        }
    }

    async fn show_user(&self, id: u64) -> Result<User, ZendeskError> {
        let v = self.get(&format!("/users/{id}.json"), "user").await?;
        self.parse(&v["user"])
    }

    async fn create_or_update(
        &self,
        name: &str,
        email: &Email,
        role: &str,
        custom_role_id: Option<u64>,
    ) -> Result<(User, bool), ZendeskError> {
        let mut user =
            json!({"name": name, "email": email.as_str(), "role": role, "skip_verify_email": true});
        if let Some(c) = custom_role_id {
            user["custom_role_id"] = json!(c);
        }
        let (status, v) = self
            .call(
                Method::POST,
                "/users/create_or_update.json",
                Some(&json!({"user": user})),
                "user",
            )
            .await?;
        Ok((self.parse(&v["user"])?, status == StatusCode::CREATED))
    }

    async fn update_user(&self, id: u64, patch: &UserPatch) -> Result<User, ZendeskError> {
        let mut user = serde_json::Map::new();
        if let Some(r) = &patch.role {
            user.insert("role".into(), json!(r));
        }
        if let Some(c) = &patch.custom_role_id {
            user.insert("custom_role_id".into(), json!(c));
        }
        if let Some(s) = patch.suspended {
            user.insert("suspended".into(), json!(s));
        }
        if !patch.clear_fields.is_empty() {
            // Clearing with null is UNCONFIRMED in the docs; it is what the API returns for
            // unset fields, and the executor re-reads the user to verify.
            let fields: serde_json::Map<String, Value> = patch
                .clear_fields
                .iter()
                .map(|k| (k.clone(), Value::Null))
                .collect();
            user.insert("user_fields".into(), Value::Object(fields));
        }
        let (_, v) = self
            .call(
                Method::PUT,
                &format!("/users/{id}.json"),
                Some(&json!({"user": user})),
                "user",
            )
            .await?;
        self.parse(&v["user"])
    }

    async fn add_tags(&self, id: u64, tags: &[String]) -> Result<Vec<String>, ZendeskError> {
        let (_, v) = self
            .call(
                Method::PUT,
                &format!("/users/{id}/tags.json"),
                Some(&json!({"tags": tags})),
                "user",
            )
            .await?;
        Ok(self.parse(&v["tags"]).unwrap_or_default())
    }

    async fn remove_tags(&self, id: u64, tags: &[String]) -> Result<Vec<String>, ZendeskError> {
        // Answers 204 or 200 with the remaining tags: accept both.
        let (_, v) = self
            .call(
                Method::DELETE,
                &format!("/users/{id}/tags.json"),
                Some(&json!({"tags": tags})),
                "user",
            )
            .await?;
        Ok(self.parse(&v["tags"]).unwrap_or_default())
    }

    async fn custom_roles(&self) -> Result<Vec<CustomRole>, ZendeskError> {
        let v = self.get("/custom_roles.json", "custom roles").await?;
        self.parse(&v["custom_roles"])
    }

    async fn groups(&self) -> Result<Vec<Group>, ZendeskError> {
        self.paged("/groups.json", "groups", "groups").await
    }

    async fn memberships(&self, user_id: u64) -> Result<Vec<Membership>, ZendeskError> {
        self.paged(
            &format!("/users/{user_id}/group_memberships.json"),
            "group_memberships",
            "user",
        )
        .await
    }

    async fn add_membership(&self, user_id: u64, group_id: u64) -> Result<(), ZendeskError> {
        let body = json!({"group_membership": {"user_id": user_id, "group_id": group_id}});
        match self
            .call(
                Method::POST,
                "/group_memberships.json",
                Some(&body),
                "group",
            )
            .await
        {
            Ok(_) => Ok(()),
            // A 422 after a lost answer (the create is retried after a dropped
            // connection or a timeout) is the earlier attempt's own effect, in
            // whatever words Zendesk says "already a member": the membership
            // being there is what counts, not the wording.
            Err(e @ ZendeskError::Invalid { status: 422, .. }) => {
                if self
                    .memberships(user_id)
                    .await?
                    .iter()
                    .any(|m| m.group_id == group_id)
                {
                    tracing::info!(instance = %self.instance, user_id, group_id, "already a member of the group (an earlier attempt's answer was lost)");
                    Ok(())
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn remove_membership(&self, membership_id: u64) -> Result<(), ZendeskError> {
        match self
            .call(
                Method::DELETE,
                &format!("/group_memberships/{membership_id}.json"),
                None,
                "membership",
            )
            .await
        {
            Ok(_) | Err(ZendeskError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn open_tickets(&self, user_id: u64) -> Result<Vec<Ticket>, ZendeskError> {
        // The assigned-tickets list has no search-index lag (search can be minutes behind).
        let mut open = Vec::new();
        self.each_page(
            &format!("/users/{user_id}/tickets/assigned.json"),
            "tickets",
            "user",
            100,
            |page: Vec<Ticket>| open.extend(page.into_iter().filter(|t| t.status != "closed")),
        )
        .await?;
        Ok(open)
    }

    async fn open_ticket_count(&self, user_id: u64) -> Result<u64, ZendeskError> {
        // One page of the assigned list first: most people have fewer than a
        // page of tickets, and then the count is exact and current.
        let v = self
            .get(
                &format!("/users/{user_id}/tickets/assigned.json?page[size]=100"),
                "user",
            )
            .await?;
        let page: Vec<Ticket> = match &v["tickets"] {
            Value::Null => Vec::new(),
            t => self.parse(t)?,
        };
        let on_page = page.iter().filter(|t| t.status != "closed").count() as u64;
        if v["meta"]["has_more"] != true {
            return Ok(on_page);
        }
        let q = enc(&format!("type:ticket assignee:{user_id} status<closed"));
        let v = self
            .get(&format!("/search/count.json?query={q}"), "search")
            .await?;
        let counted = v["count"]
            .as_u64()
            .ok_or_else(|| self.err_decode("search count without a count"))?;
        Ok(counted.max(on_page))
    }

    async fn recently_worked_assignees(
        &self,
        since: DateTime<Utc>,
    ) -> Result<std::collections::BTreeSet<u64>, ZendeskError> {
        // A day of margin on the query (the index compares dates), the exact
        // instant checked on each result.
        let day = (since - chrono::Duration::days(1)).format("%Y-%m-%d");
        let q = enc(&format!("status<closed updated>{day}"));
        let mut out = std::collections::BTreeSet::new();
        self.each_page(
            &format!("/search/export.json?filter[type]=ticket&query={q}"),
            "results",
            "search",
            1000,
            |page: Vec<Ticket>| {
                out.extend(
                    page.into_iter()
                        .filter(|t| t.status != "closed" && t.updated_at.is_some_and(|u| u > since))
                        .filter_map(|t| t.assignee_id),
                )
            },
        )
        .await?;
        Ok(out)
    }

    async fn reassign(
        &self,
        tickets: &[Ticket],
        assignee: u64,
        assignee_groups: &[u64],
    ) -> Result<BulkOutcome, ZendeskError> {
        let mut outcome = BulkOutcome::default();
        // The bot knows each ticket's group and the assignee's groups: a
        // ticket in a group the assignee is not in moves to one of theirs in
        // the same update (Zendesk refuses the assignee otherwise), so nothing
        // depends on the wording of a per-ticket failure.
        let target_group = assignee_groups.first().copied();
        let (stay, moving): (Vec<&Ticket>, Vec<&Ticket>) = tickets
            .iter()
            .partition(|t| t.group_id.is_none_or(|g| assignee_groups.contains(&g)));
        let batches = |group: Option<u64>, ids: Vec<u64>| -> Vec<Batch> {
            ids.chunks(100)
                .map(|c| Batch {
                    ids: c.to_vec(),
                    group,
                })
                .collect()
        };
        let mut first = batches(None, stay.iter().map(|t| t.id).collect());
        first.extend(batches(target_group, moving.iter().map(|t| t.id).collect()));
        let progress = crate::progress::Progress::new("reassigning tickets", tickets.len());
        let results = self
            .bulk_pipelined(first, assignee, &mut outcome, &progress)
            .await?;
        progress.finish();
        // Failed items are tried once more as they were (a trigger or a
        // concurrent change may have been in the way); what still fails is reported.
        let mut retry: Vec<Batch> = Vec::new();
        for (group, r) in results {
            outcome.updated.extend(r.ok);
            let ids: Vec<u64> = r.failed.into_iter().map(|(id, _)| id).collect();
            retry.extend(batches(group, ids));
        }
        let quiet = crate::progress::Progress::new("retrying failed tickets", 0);
        for (_, r) in self
            .bulk_pipelined(retry, assignee, &mut outcome, &quiet)
            .await?
        {
            outcome.updated.extend(r.ok);
            outcome.failed.extend(r.failed);
        }
        Ok(outcome)
    }

    async fn agents(&self) -> Result<Vec<User>, ZendeskError> {
        self.paged("/users.json?role[]=agent&role[]=admin", "users", "users")
            .await
    }

    async fn idle_paid_agents(
        &self,
        light_agent_role: Option<u64>,
        cutoff: DateTime<Utc>,
        except: u64,
    ) -> Result<(usize, Vec<User>), ZendeskError> {
        let mut paid = 0;
        let mut idle = Vec::new();
        self.each_page(
            "/users.json?role[]=agent&role[]=admin",
            "users",
            "users",
            100,
            |page: Vec<User>| {
                for u in page {
                    if u.id == except
                        || !crate::seats::paid_role(
                            &u.role,
                            u.role_type,
                            u.custom_role_id,
                            light_agent_role,
                        )
                    {
                        continue;
                    }
                    paid += 1;
                    if u.last_login_at.is_none_or(|t| t < cutoff) {
                        // The review shows no user fields: thousands of idle
                        // seats need not hold them.
                        idle.push(User {
                            user_fields: BTreeMap::new(),
                            ..u
                        });
                    }
                }
            },
        )
        .await?;
        Ok((paid, idle))
    }
}

/// Bulk jobs one client keeps queued or running at once. Zendesk allows an
/// account 30 (other integrations share them): half is left to the others.
pub const JOBS_IN_FLIGHT: usize = 15;

/// Polls of one job before the bot gives up on it.
const MAX_JOB_POLLS: u32 = 600;

/// Up to 100 tickets moved by one bulk update.
struct Batch {
    ids: Vec<u64>,
    group: Option<u64>,
}

/// What one job did to its tickets.
#[derive(Default)]
struct JobResult {
    ok: Vec<u64>,
    failed: Vec<(u64, String)>,
}

impl ZendeskClient {
    /// Every batch as a bulk update, up to `JOBS_IN_FLIGHT` jobs queued at
    /// once, all of them polled with one `show_many` call per interval.
    /// Returns each batch's group and what its job did.
    async fn bulk_pipelined(
        &self,
        batches: Vec<Batch>,
        assignee: u64,
        outcome: &mut BulkOutcome,
        progress: &crate::progress::Progress,
    ) -> Result<Vec<(Option<u64>, JobResult)>, ZendeskError> {
        let mut queue = batches.into_iter();
        // (job id, batch, polls so far)
        let mut in_flight: Vec<(String, Batch, u32)> = Vec::new();
        let mut out = Vec::new();
        loop {
            let room = JOBS_IN_FLIGHT.saturating_sub(in_flight.len());
            let next: Vec<Batch> = queue.by_ref().take(room).collect();
            let submitted =
                futures_util::future::join_all(next.iter().map(|b| self.submit_bulk(b, assignee)))
                    .await;
            for (batch, job) in next.into_iter().zip(submitted) {
                outcome.bulk_calls += 1;
                let job = job?;
                let id = self.job_id(&job)?;
                match self.job_done(&id, &job, &batch)? {
                    Some(r) => {
                        progress.advance(batch.ids.len());
                        out.push((batch.group, r));
                    }
                    None => in_flight.push((id, batch, 0)),
                }
            }
            if in_flight.is_empty() {
                return Ok(out);
            }
            tokio::time::sleep(self.job_poll_interval).await;
            let ids: Vec<&str> = in_flight.iter().map(|(id, _, _)| id.as_str()).collect();
            outcome.job_polls += 1;
            let v = self
                .get(
                    &format!("/job_statuses/show_many.json?ids={}", ids.join(",")),
                    "job",
                )
                .await?;
            let statuses = v["job_statuses"].as_array().cloned().unwrap_or_default();
            let mut still = Vec::new();
            for (id, batch, polls) in in_flight {
                let status = statuses.iter().find(|s| s["id"].as_str() == Some(&id));
                match status.map(|s| self.job_done(&id, s, &batch)).transpose()? {
                    Some(Some(r)) => {
                        progress.advance(batch.ids.len());
                        out.push((batch.group, r));
                    }
                    _ if polls + 1 >= MAX_JOB_POLLS => {
                        return Err(ZendeskError::Job {
                            instance: self.instance.clone(),
                            job: id,
                            detail: format!("still not completed after {MAX_JOB_POLLS} polls"),
                        });
                    }
                    // Queued, working, or not listed yet: asked again next time.
                    _ => still.push((id, batch, polls + 1)),
                }
            }
            in_flight = still;
        }
    }

    async fn submit_bulk(&self, batch: &Batch, assignee: u64) -> Result<Value, ZendeskError> {
        let ids: Vec<String> = batch.ids.iter().map(u64::to_string).collect();
        let mut ticket = json!({"assignee_id": assignee});
        if let Some(g) = batch.group {
            ticket["group_id"] = json!(g);
        }
        let (_, mut v) = self
            .call(
                Method::PUT,
                &format!("/tickets/update_many.json?ids={}", ids.join(",")),
                Some(&json!({"ticket": ticket})),
                "tickets",
            )
            .await?;
        Ok(v.get_mut("job_status").map(Value::take).unwrap_or_default())
    }

    fn job_id(&self, job: &Value) -> Result<String, ZendeskError> {
        job["id"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| self.err_decode("job_status without id"))
    }

    /// `Some` once the job completed (with what it did to each ticket),
    /// `None` while it is queued or working, an error if it failed.
    fn job_done(
        &self,
        id: &str,
        status: &Value,
        batch: &Batch,
    ) -> Result<Option<JobResult>, ZendeskError> {
        match status["status"].as_str() {
            Some("completed") => {}
            Some("failed") | Some("killed") => {
                return Err(ZendeskError::Job {
                    instance: self.instance.clone(),
                    job: id.to_string(),
                    detail: status["message"].as_str().unwrap_or("failed").to_string(),
                });
            }
            _ => return Ok(None),
        }
        let mut r = JobResult::default();
        // `completed` does not mean every item succeeded: read each result.
        for item in status["results"].as_array().into_iter().flatten() {
            let Some(tid) = item["id"].as_u64() else {
                continue;
            };
            if !batch.ids.contains(&tid) {
                continue;
            }
            if item["success"] == true || item["status"] == "Updated" {
                r.ok.push(tid);
            } else {
                let why = item["details"]
                    .as_str()
                    .or(item["error"].as_str())
                    .unwrap_or("failed")
                    .to_string();
                r.failed.push((tid, why));
            }
        }
        for tid in &batch.ids {
            if !r.ok.contains(tid) && !r.failed.iter().any(|(id, _)| id == tid) {
                r.failed.push((*tid, "no result in the job status".into()));
            }
        }
        Ok(Some(r))
    }
}

/// Ids resolved per instance at start-up: never shared between instances.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub light_agent_role: Option<u64>,
    /// Custom role name (lower-case) -> id.
    pub roles: BTreeMap<String, u64>,
    pub role_names: BTreeMap<u64, String>,
    /// Group name (lower-case) -> id.
    pub groups: BTreeMap<String, u64>,
    pub group_names: BTreeMap<u64, String>,
    /// The bot's own account here: never changed.
    pub me: Option<User>,
}

impl Resolved {
    pub async fn load(api: &dyn ZendeskApi) -> Result<Resolved, ZendeskError> {
        // Independent reads: at once, so start-up costs one round trip, not three.
        let (roles, groups, me) = tokio::try_join!(api.custom_roles(), api.groups(), api.me())?;
        Ok(Resolved {
            me: Some(me),
            light_agent_role: roles.iter().find(|r| r.role_type == Some(1)).map(|r| r.id),
            roles: roles
                .iter()
                .map(|r| (r.name.to_lowercase(), r.id))
                .collect(),
            role_names: roles.iter().map(|r| (r.id, r.name.clone())).collect(),
            groups: groups
                .iter()
                .map(|g| (g.name.to_lowercase(), g.id))
                .collect(),
            group_names: groups.iter().map(|g| (g.id, g.name.clone())).collect(),
        })
    }
}

// The port: the bot sees Zendesk through `AccountSystem` and its neutral
// types; the conversions are here so that nothing else knows Zendesk's shapes.

impl From<ZendeskError> for AccountError {
    fn from(e: ZendeskError) -> AccountError {
        AccountError::new(e.to_string(), e.is_transient())
    }
}

impl From<User> for crate::accounts::User {
    fn from(u: User) -> crate::accounts::User {
        crate::accounts::User {
            id: u.id,
            name: u.name,
            email: u.email,
            role: u.role,
            role_type: u.role_type,
            custom_role_id: u.custom_role_id,
            suspended: u.suspended,
            tags: u.tags,
            user_fields: u.user_fields,
            last_login_at: u.last_login_at,
        }
    }
}

impl From<Ticket> for crate::accounts::Ticket {
    fn from(t: Ticket) -> crate::accounts::Ticket {
        crate::accounts::Ticket {
            id: t.id,
            status: t.status,
            assignee_id: t.assignee_id,
            group_id: t.group_id,
            updated_at: t.updated_at,
        }
    }
}

impl From<&crate::accounts::Ticket> for Ticket {
    fn from(t: &crate::accounts::Ticket) -> Ticket {
        Ticket {
            id: t.id,
            status: t.status.clone(),
            assignee_id: t.assignee_id,
            group_id: t.group_id,
            updated_at: t.updated_at,
        }
    }
}

impl From<Membership> for crate::accounts::Membership {
    fn from(m: Membership) -> crate::accounts::Membership {
        crate::accounts::Membership {
            id: m.id,
            user_id: m.user_id,
            group_id: m.group_id,
        }
    }
}

impl From<Resolved> for crate::accounts::Resolved {
    fn from(r: Resolved) -> crate::accounts::Resolved {
        crate::accounts::Resolved {
            light_agent_role: r.light_agent_role,
            roles: r.roles,
            role_names: r.role_names,
            groups: r.groups,
            group_names: r.group_names,
            me: r.me.map(Into::into),
        }
    }
}

// Not imported: its methods share their names with `ZendeskApi`'s.
#[async_trait]
impl crate::accounts::AccountSystem for ZendeskClient {
    async fn resolve(&self) -> Result<crate::accounts::Resolved, AccountError> {
        Ok(Resolved::load(self).await?.into())
    }

    async fn me(&self) -> Result<crate::accounts::User, AccountError> {
        Ok(ZendeskApi::me(self).await?.into())
    }

    async fn find_user(
        &self,
        email: &Email,
    ) -> Result<Option<crate::accounts::User>, AccountError> {
        Ok(ZendeskApi::find_user(self, email).await?.map(Into::into))
    }

    async fn show_user(&self, id: u64) -> Result<crate::accounts::User, AccountError> {
        Ok(ZendeskApi::show_user(self, id).await?.into())
    }

    async fn create_or_update(
        &self,
        name: &str,
        email: &Email,
        role: &str,
        custom_role_id: Option<u64>,
    ) -> Result<(crate::accounts::User, bool), AccountError> {
        let (u, created) =
            ZendeskApi::create_or_update(self, name, email, role, custom_role_id).await?;
        Ok((u.into(), created))
    }

    async fn update_user(
        &self,
        id: u64,
        patch: &UserPatch,
    ) -> Result<crate::accounts::User, AccountError> {
        Ok(ZendeskApi::update_user(self, id, patch).await?.into())
    }

    async fn add_tags(&self, id: u64, tags: &[String]) -> Result<Vec<String>, AccountError> {
        Ok(ZendeskApi::add_tags(self, id, tags).await?)
    }

    async fn remove_tags(&self, id: u64, tags: &[String]) -> Result<Vec<String>, AccountError> {
        Ok(ZendeskApi::remove_tags(self, id, tags).await?)
    }

    async fn memberships(
        &self,
        user_id: u64,
    ) -> Result<Vec<crate::accounts::Membership>, AccountError> {
        let ms = ZendeskApi::memberships(self, user_id).await?;
        Ok(ms.into_iter().map(Into::into).collect())
    }

    async fn add_membership(&self, user_id: u64, group_id: u64) -> Result<(), AccountError> {
        Ok(ZendeskApi::add_membership(self, user_id, group_id).await?)
    }

    async fn remove_membership(&self, membership_id: u64) -> Result<(), AccountError> {
        Ok(ZendeskApi::remove_membership(self, membership_id).await?)
    }

    async fn open_tickets(
        &self,
        user_id: u64,
    ) -> Result<Vec<crate::accounts::Ticket>, AccountError> {
        let ts = ZendeskApi::open_tickets(self, user_id).await?;
        Ok(ts.into_iter().map(Into::into).collect())
    }

    async fn open_ticket_count(&self, user_id: u64) -> Result<u64, AccountError> {
        Ok(ZendeskApi::open_ticket_count(self, user_id).await?)
    }

    async fn recently_worked_assignees(
        &self,
        since: DateTime<Utc>,
    ) -> Result<std::collections::BTreeSet<u64>, AccountError> {
        Ok(ZendeskApi::recently_worked_assignees(self, since).await?)
    }

    async fn reassign(
        &self,
        tickets: &[crate::accounts::Ticket],
        assignee: u64,
        assignee_groups: &[u64],
    ) -> Result<BulkOutcome, AccountError> {
        let tickets: Vec<Ticket> = tickets.iter().map(Into::into).collect();
        Ok(ZendeskApi::reassign(self, &tickets, assignee, assignee_groups).await?)
    }

    async fn idle_paid_agents(
        &self,
        light_agent_role: Option<u64>,
        cutoff: DateTime<Utc>,
        except: u64,
    ) -> Result<(usize, Vec<crate::accounts::User>), AccountError> {
        let (paid, idle) =
            ZendeskApi::idle_paid_agents(self, light_agent_role, cutoff, except).await?;
        Ok((paid, idle.into_iter().map(Into::into).collect()))
    }
}

/// `check`: one instance's credentials, granted scopes, admin rights, the
/// roles and groups the configuration names, and token refresh; one line
/// per finding, the calls stopping at the first that makes the rest moot.
pub async fn check(
    name: &str,
    inst: &ZendeskInstance,
    secrets: &Secrets,
    http: reqwest::Client,
) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let client = match ZendeskClient::new(name, inst, secrets, http) {
        Ok(c) => c,
        Err(e) => {
            out.push((false, e.to_string()));
            return out;
        }
    };
    // The granted scopes against every call the bot makes, before any
    // call: a missing one is named rather than found at the first write.
    let oauth = match client.grant().await {
        Ok(Grant::ApiToken) => {
            out.push((
                true,
                format!("Zendesk {name}: legacy API token (the user's own rights, no scopes)"),
            ));
            false
        }
        Ok(Grant::Scopes(granted)) => {
            let missing: Vec<_> = CALLS
                .iter()
                .filter(|(_, need)| !need.granted_by(&granted))
                .collect();
            if missing.is_empty() {
                out.push((
                    true,
                    format!(
                        "Zendesk {name}: the OAuth scopes granted (`{}`) cover every call the bot makes",
                        granted.join(" ")
                    ),
                ));
            }
            for (what, need) in missing {
                out.push((
                    false,
                    format!(
                        "Zendesk {name}: the OAuth token lacks the `{}` scope, needed for {what} (granted: `{}`; the bot needs `{}`)",
                        need.scope(),
                        granted.join(" "),
                        required_scope()
                    ),
                ));
            }
            true
        }
        Ok(Grant::Unstated) => {
            out.push((
                true,
                format!(
                    "Zendesk {name}: the token response does not list the scopes granted; the calls below show what works"
                ),
            ));
            true
        }
        Err(e) => {
            out.push((false, e.to_string()));
            return out;
        }
    };
    match client.me().await {
        Ok(me) if me.role == "admin" => {
            out.push((true, format!("Zendesk {name}: authenticated as an admin")));
        }
        Ok(me) => out.push((
            false,
            format!(
                "Zendesk {name}: authenticated, but as role {} (provisioning needs an admin)",
                me.role
            ),
        )),
        Err(e) => {
            out.push((false, e.to_string()));
            return out;
        }
    }
    match Resolved::load(&client).await {
        Ok(r) => {
            let r = crate::accounts::Resolved::from(r);
            let missing = r.missing(inst);
            if missing.is_empty() {
                out.push((
                    true,
                    format!(
                        "Zendesk {name}: every configured role and group exists (light-agent role id {})",
                        r.light_agent_role.map(|i| i.to_string()).unwrap_or("-".into())
                    ),
                ));
            } else {
                for m in missing {
                    out.push((false, format!("Zendesk {name}: {m}")));
                }
            }
        }
        Err(e) => out.push((false, e.to_string())),
    }
    if oauth {
        // A token is dropped and fetched again after a 401: that must work.
        match client.refresh().await {
            Ok(()) => match client.me().await {
                Ok(_) => out.push((
                    true,
                    format!(
                        "Zendesk {name}: token refresh works (a new token was issued and accepted)"
                    ),
                )),
                Err(e) => out.push((
                    false,
                    format!("Zendesk {name} token refresh: the new token was not accepted: {e}"),
                )),
            },
            Err(e) => out.push((false, format!("Zendesk {name} token refresh: {e}"))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_stops_while_the_calls_in_flight_still_fit() {
        let headers = |remaining: u64| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("ratelimit-remaining", remaining.into());
            h.insert("ratelimit-reset", 7u64.into());
            h
        };
        assert_eq!(drained(&headers(IN_FLIGHT_MARGIN + 1)), None);
        assert_eq!(
            drained(&headers(IN_FLIGHT_MARGIN)),
            Some(Duration::from_secs(7))
        );
        assert_eq!(drained(&headers(0)), Some(Duration::from_secs(7)));
        assert_eq!(drained(&reqwest::header::HeaderMap::new()), None);
    }

    #[test]
    fn the_port_s_error_keeps_the_message_and_whether_to_retry() {
        let server = ZendeskError::Server {
            instance: "global".into(),
            status: 503,
            attempts: 5,
        };
        let text = server.to_string();
        let e = AccountError::from(server);
        assert_eq!(e.to_string(), text);
        assert!(e.is_transient());
        let e = AccountError::from(ZendeskError::NotFound {
            instance: "global".into(),
            what: "user".into(),
        });
        assert!(!e.is_transient());
    }
}
