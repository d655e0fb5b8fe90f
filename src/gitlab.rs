//! GitLab adapter on the `gitlab` crate's async client (REST API v4).
//!
//! Every request goes through the transport all adapters share
//! (`crate::http::Transport`), under the crate's endpoints and the listings
//! the bot pages itself. Every request has a timeout. A 429, on any endpoint: wait for `Retry-After`
//! (every caller waits), or back off when there is none. 5xx, timeouts and
//! dropped connections: retry reads and idempotent writes with capped,
//! jittered backoff a bounded number of times, then give up on that call (the
//! loop gives up on the issue for this cycle, never on the whole loop). A
//! write that creates something is sent again only after a 429: any other
//! failure may hide a write that happened, so its effect is looked for first.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gitlab::api::{self, AsyncQuery, Pagination};
use serde::Deserialize;

use crate::http::{Backoff, Failure, RateBudget, Resend, with_causes};
use crate::request::{IssueInput, LabelAction, LabelEvent, Note, UserRef};

#[derive(Debug, thiserror::Error)]
pub enum GitlabError {
    #[error("GitLab: cannot connect as the bot: {0}")]
    Connect(String),
    #[error(
        "GitLab: {what} not found (or not visible to the bot: confidential issues need project membership)"
    )]
    NotFound { what: String },
    #[error("GitLab: the token was rejected (401); check the variable named by gitlab.token_env")]
    Unauthorized,
    #[error("GitLab: forbidden (403): the bot needs Reporter (Planner) rights and the api scope")]
    Forbidden,
    #[error("GitLab: still failing after {attempts} attempts: {detail}")]
    Exhausted { attempts: u32, detail: String },
    #[error("GitLab: request rejected: {0}")]
    Rejected(String),
    #[error("GitLab: cannot read {what}: {detail}")]
    Unreadable { what: String, detail: String },
    #[error(
        "GitLab: no answer to {what} ({detail}); it may have been applied, so it is not sent again before the bot has looked for its effect"
    )]
    Unconfirmed { what: String, detail: String },
}

impl GitlabError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GitlabError::Exhausted { .. } | GitlabError::Unconfirmed { .. }
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiUser {
    pub id: u64,
    pub username: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub public_email: Option<String>,
    /// Shown for the token's own user (`GET /user`), and to administrators.
    #[serde(default)]
    pub is_admin: Option<bool>,
}

impl ApiUser {
    pub fn to_ref(&self) -> UserRef {
        UserRef {
            id: self.id,
            username: self.username.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct TaskStatus {
    pub count: usize,
    pub completed_count: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiIssue {
    pub iid: u64,
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    pub state: String,
    #[serde(default)]
    pub labels: Vec<String>,
    pub author: ApiUser,
    #[serde(default)]
    pub web_url: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub task_completion_status: Option<TaskStatus>,
    /// Comments (not system notes) GitLab counts on the issue: tells a cached
    /// copy of the notes that lost one (deleted) from one that is complete.
    #[serde(default)]
    pub user_notes_count: Option<u64>,
}

impl ApiIssue {
    /// The issue as the parser sees it. The author's e-mail and name are not
    /// here: they come from the identity sources, never from what GitLab
    /// shows publicly.
    pub fn to_input(&self) -> IssueInput {
        IssueInput {
            iid: self.iid,
            title: self.title.clone(),
            description: self.description.clone().unwrap_or_default(),
            labels: self.labels.clone(),
            author: self.author.to_ref(),
            author_email: None,
            author_name: None,
            web_url: self.web_url.clone(),
            created_at: self.created_at,
            updated_at: Some(self.updated_at),
            state: self.state.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ApiNote {
    id: u64,
    body: String,
    author: ApiUser,
    created_at: DateTime<Utc>,
    /// Moves with every edit (GitLab has it on every note; the creation time stands in otherwise).
    #[serde(default)]
    updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    system: bool,
}

impl ApiNote {
    fn into_timed(self) -> TimedNote {
        TimedNote {
            updated_at: self.updated_at.unwrap_or(self.created_at),
            note: Note {
                id: self.id,
                author: self.author.to_ref(),
                body: self.body,
                created_at: self.created_at,
                system: self.system,
            },
        }
    }
}

/// A note with the time of its last edit, which an incremental read follows.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct TimedNote {
    pub note: Note,
    pub updated_at: DateTime<Utc>,
}

/// Notes as read at a time: a cache that the next read completes.
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
pub struct NoteRead {
    pub notes: Vec<TimedNote>,
    /// GitLab's clock when it answered the first page (its `Date` header).
    pub read_at: Option<DateTime<Utc>>,
}

/// Open issues changed since a time, and what GitLab said about the listing.
#[derive(Debug, Clone, Default)]
pub struct ChangedIssues {
    pub page: IssuePage,
    /// GitLab's own clock when it answered the first page (its `Date`
    /// header): the next listing starts from there, whatever the bot's clock says.
    pub listed_at: Option<DateTime<Utc>>,
    /// The number of matching issues changed between pages: one may have
    /// slipped past the pagination, so the listing proves nothing about what
    /// it did not show.
    pub shifted: bool,
}

#[derive(Debug, Deserialize)]
struct ApiLabel {
    #[serde(default)]
    id: Option<u64>,
    name: String,
}

/// A project label with its description (the replica lease lives in one).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ProjectLabel {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// An issue in a listing whose JSON the bot could not read: it fails alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableIssue {
    /// When even the number could not be read, nothing can be said on it.
    pub iid: Option<u64>,
    pub error: String,
}

/// A listing of issues: those the bot could read, and those it could not.
#[derive(Debug, Clone, Default)]
pub struct IssuePage {
    pub issues: Vec<ApiIssue>,
    pub unreadable: Vec<UnreadableIssue>,
}

impl IssuePage {
    /// Each entry on its own: one malformed issue does not hide the rest.
    fn from_values(values: Vec<serde_json::Value>) -> IssuePage {
        let mut page = IssuePage::default();
        for v in values {
            let iid = v.get("iid").and_then(serde_json::Value::as_u64);
            match serde_json::from_value::<ApiIssue>(v) {
                Ok(i) => page.issues.push(i),
                Err(e) => page.unreadable.push(UnreadableIssue {
                    iid,
                    error: e.to_string(),
                }),
            }
        }
        page
    }
}

#[derive(Debug, Deserialize)]
struct ApiLabelEvent {
    id: u64,
    user: Option<ApiUser>,
    created_at: DateTime<Utc>,
    label: Option<ApiLabel>,
    action: String,
}

/// A merge request, as far as the bot follows one.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ApiMergeRequest {
    pub iid: u64,
    /// `opened`, `closed`, `locked`, `merged`.
    pub state: String,
    #[serde(default)]
    pub web_url: String,
    #[serde(default)]
    pub source_branch: String,
}

/// A merge request to open.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewMergeRequest {
    pub source_branch: String,
    pub target_branch: String,
    pub title: String,
    pub description: String,
    pub reviewer_ids: Vec<u64>,
}

/// A change to an issue: only what is `Some` is sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IssueEdit {
    pub description: Option<String>,
    pub add_labels: Vec<String>,
    pub remove_labels: Vec<String>,
    pub close: bool,
}

#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait GitlabApi: Send + Sync {
    async fn me(&self) -> Result<ApiUser, GitlabError>;
    /// Open issues (with `label`, if given), updated at or after `since`, ascending by `updated_at`.
    /// Open issues, oldest change first.
    async fn list_issues<'a>(
        &self,
        project: &str,
        label: Option<&'a str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<IssuePage, GitlabError>;
    /// Open issues updated at or after `since` (every open issue without it),
    /// newest change first, with GitLab's time of the listing. Newest first so
    /// that an issue changing during the listing moves to pages already read
    /// (seen twice, or next time) and never pushes an unread one out of reach.
    async fn changed_issues(
        &self,
        project: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<ChangedIssues, GitlabError>;
    /// Every issue with a label, open or closed.
    async fn labelled_issues(&self, project: &str, label: &str) -> Result<IssuePage, GitlabError>;
    /// A project label by exact name, with its description.
    async fn project_label(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Option<ProjectLabel>, GitlabError>;
    /// Create a label with a description; an existing one is returned as it is.
    async fn create_project_label(
        &self,
        project: &str,
        name: &str,
        description: &str,
    ) -> Result<ProjectLabel, GitlabError>;
    async fn set_label_description(
        &self,
        project: &str,
        label_id: u64,
        description: &str,
    ) -> Result<ProjectLabel, GitlabError>;
    async fn issue(&self, project: &str, iid: u64) -> Result<ApiIssue, GitlabError>;
    async fn notes(&self, project: &str, iid: u64) -> Result<Vec<Note>, GitlabError>;
    /// Notes with their edit times: every note edited or added at or after
    /// `since` (most recently edited first, stopping at the first page that
    /// reaches past it), or all of them without it (oldest first).
    async fn notes_since(
        &self,
        project: &str,
        iid: u64,
        since: Option<DateTime<Utc>>,
    ) -> Result<NoteRead, GitlabError>;
    async fn label_events(&self, project: &str, iid: u64) -> Result<Vec<LabelEvent>, GitlabError>;
    /// Post a note; returns it as created (its id and time identify the bot's record).
    async fn create_note(&self, project: &str, iid: u64, body: &str) -> Result<Note, GitlabError>;
    async fn edit_issue(
        &self,
        project: &str,
        iid: u64,
        edit: &IssueEdit,
    ) -> Result<ApiIssue, GitlabError>;
    async fn user_by_username(&self, username: &str) -> Result<Option<ApiUser>, GitlabError>;
    /// An enterprise user of a top-level group, with their e-mail (a group
    /// Owner's token sees it; `None` when they are not one of its enterprise users).
    async fn enterprise_user(
        &self,
        group: &str,
        username: &str,
    ) -> Result<Option<ApiUser>, GitlabError>;
    /// The ids of these project labels, creating any that does not exist yet
    /// (an approval is bound to its label's id, which a rename does not change).
    async fn label_ids(
        &self,
        project: &str,
        names: &[String],
    ) -> Result<std::collections::BTreeMap<String, u64>, GitlabError>;
    async fn create_issue(
        &self,
        project: &str,
        title: &str,
        description: &str,
        labels: &[String],
    ) -> Result<ApiIssue, GitlabError>;
    /// Whether a file exists at `reference` (404 is `false`).
    async fn file_exists(
        &self,
        project: &str,
        path: &str,
        reference: &str,
    ) -> Result<bool, GitlabError>;
    async fn branch_exists(&self, project: &str, branch: &str) -> Result<bool, GitlabError>;
    /// One commit deleting `path` on `branch`, created from `start_branch` if new.
    async fn delete_file(
        &self,
        project: &str,
        path: &str,
        branch: &str,
        start_branch: &str,
        message: &str,
    ) -> Result<(), GitlabError>;
    /// Merge requests (any state) from a source branch.
    async fn merge_requests_from(
        &self,
        project: &str,
        source_branch: &str,
    ) -> Result<Vec<ApiMergeRequest>, GitlabError>;
    async fn create_merge_request(
        &self,
        project: &str,
        mr: &NewMergeRequest,
    ) -> Result<ApiMergeRequest, GitlabError>;
    async fn merge_request(&self, project: &str, iid: u64) -> Result<ApiMergeRequest, GitlabError>;
}

pub struct GitlabClient {
    /// Reads and idempotent writes: any transient failure is sent again.
    client: Transport,
    /// Writes that create something: sent again only after a 429.
    writes: Transport,
}

/// Timeouts a read survives before the call gives up, over all the pages the
/// crate reads for it: a hung server rarely recovers within a minute, and the
/// next poll cycle tries again anyway.
const MAX_TIMEOUTS: u32 = 2;

type CrateError = api::ApiError<TransportError>;

/// What went wrong below the `gitlab` crate. The crate's own client has no
/// timeout, and turns a 429 into a rate-limit error only for some endpoint
/// kinds (paged and body-less calls see the `text/plain` "Retry later" as an
/// unreadable body), so the bot sends every request itself, through the
/// transport every adapter shares (`crate::http::Transport`): its attempts,
/// timeout, backoff and the hold after a 429 are spent before the crate sees
/// an answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No answer (connection, timeout) after this many attempts.
    #[error("{detail}")]
    NoAnswer { attempts: u32, detail: String },
    /// Still asked to slow down after this many attempts.
    #[error("rate limited (429)")]
    RateLimited { attempts: u32 },
    /// Still a server failure (5xx) after this many attempts.
    #[error("server error ({status}): {message}")]
    Server {
        attempts: u32,
        status: reqwest::StatusCode,
        message: String,
    },
    /// The request could not be built (a bug, or a token that is no header value): never retried.
    #[error("building the request: {0}")]
    Request(String),
    /// An answer other than 2xx to a request the bot pages itself.
    #[error("{status}: {message}")]
    Status { status: u16, message: String },
}

/// One page of a listing the bot pages itself (it needs the headers the
/// crate's pagination drops), as GitLab answered it.
struct RawPage {
    values: Vec<serde_json::Value>,
    /// `x-next-page`: empty (or absent) on the last page.
    next: Option<u64>,
    /// `x-total`: GitLab leaves it out above 10,000 matches.
    total: Option<u64>,
    /// `Date`: GitLab's clock (whole seconds, rounded down).
    date: Option<DateTime<Utc>>,
}

/// Reads of an issue's notes before a look gives up on notes that keep
/// changing between their pages.
const NOTES_READS: u32 = 3;

/// Items per page: the most GitLab gives.
const PER_PAGE: &str = "100";

impl Transport {
    /// `GET` one page of `path` (under `api/v4/`) with these parameters.
    async fn page(&self, path: &str, query: &[(&str, String)]) -> Result<RawPage, CrateError> {
        let bad = |e: String| api::ApiError::client(TransportError::Request(e));
        let mut url = self.rest.join(path).map_err(|e| bad(e.to_string()))?;
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        let request = ::http::Request::builder()
            .method(::http::Method::GET)
            .uri(url.as_str());
        let r = api::AsyncClient::rest_async(self, request, Vec::new()).await?;
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        if !r.status().is_success() {
            return Err(api::ApiError::client(TransportError::Status {
                status: r.status().as_u16(),
                message: message_of(r.body()),
            }));
        }
        let values: Vec<serde_json::Value> =
            serde_json::from_slice(r.body()).map_err(|e| api::ApiError::DataType {
                source: e,
                typename: "a JSON array",
            })?;
        Ok(RawPage {
            values,
            next: header("x-next-page").and_then(|v| v.parse().ok()),
            total: header("x-total").and_then(|v| v.parse().ok()),
            date: header("date")
                .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
                .map(|d| d.with_timezone(&Utc)),
        })
    }
}

/// GitLab's error message in an answer's body (`message`, or `error`).
fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error"))
                .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
        })
        .unwrap_or_default()
}

/// The HTTP client the `gitlab` crate's endpoints run on.
struct Transport {
    http: reqwest::Client,
    rest: url::Url,
    token: crate::secret::Secret,
    /// Attempts, timeout and the hold after a 429, as for every adapter.
    sending: crate::http::Transport,
}

impl api::RestClient for Transport {
    type Error = TransportError;

    fn rest_endpoint(&self, endpoint: &str) -> Result<url::Url, CrateError> {
        Ok(self.rest.join(endpoint)?)
    }
}

/// GitLab's credentials: a personal, group or project access token.
#[async_trait]
impl crate::http::Api for Transport {
    type Error = TransportError;

    async fn authorize(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, TransportError> {
        let mut token = ::http::HeaderValue::from_str(self.token.expose()).map_err(|_| {
            TransportError::Request("the GitLab token is not a valid header value".into())
        })?;
        token.set_sensitive(true);
        Ok(rb.header("PRIVATE-TOKEN", token))
    }

    /// A call gives up after `MAX_TIMEOUTS` timeouts, over all the pages the
    /// crate reads for it (counted in `CALL_TIMEOUTS`, set by `call`).
    fn gives_up_after_timeout(&self) -> bool {
        CALL_TIMEOUTS
            .try_with(|n| {
                n.set(n.get() + 1);
                n.get() >= MAX_TIMEOUTS
            })
            // Outside a call (none today), the attempts bound it.
            .unwrap_or(false)
    }

    fn name(&self) -> String {
        "GitLab".into()
    }
}

tokio::task_local! {
    /// The timeouts of the GitLab call in progress, all its pages together.
    static CALL_TIMEOUTS: std::cell::Cell<u32>;
}

#[async_trait]
impl api::AsyncClient for Transport {
    async fn rest_async(
        &self,
        request: ::http::request::Builder,
        body: Vec<u8>,
    ) -> Result<::http::Response<bytes::Bytes>, CrateError> {
        let bad = |e: String| api::ApiError::client(TransportError::Request(e));
        let (parts, _) = request
            .body(())
            .map_err(|e| bad(e.to_string()))?
            .into_parts();
        let url = parts.uri.to_string();
        let body = bytes::Bytes::from(body);
        let build = || {
            self.http
                .request(parts.method.clone(), url.as_str())
                .headers(parts.headers.clone())
                .body(body.clone())
        };
        let reply = self.sending.send(self, build).await.map_err(|f| {
            api::ApiError::client(match f {
                Failure::Api(e) => e,
                Failure::RateLimited { attempts, .. } => TransportError::RateLimited { attempts },
                Failure::Server { attempts, last } => TransportError::Server {
                    attempts,
                    status: last.status,
                    message: message_of(&last.body),
                },
                Failure::Connection {
                    attempts,
                    detail,
                    timed_out,
                } => TransportError::NoAnswer {
                    attempts,
                    detail: match self.sending.timeout {
                        Some(t) if timed_out => format!("no answer within {}s", t.as_secs_f64()),
                        _ => detail,
                    },
                },
            })
        })?;
        let mut response = ::http::Response::builder().status(reply.status);
        if let Some(h) = response.headers_mut() {
            *h = reply.headers;
        }
        response.body(reply.body).map_err(|e| bad(e.to_string()))
    }
}

/// How a call may be repeated after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and idempotent writes: any transient failure is retried.
    Safe,
    /// A write that creates something: only a 429 (refused before anything
    /// was done) is retried. A timeout, a dropped connection or a 5xx may
    /// hide a write that happened, so the call reports it, and the bot looks
    /// for the write's effect before it tries again.
    OnlyRefused,
}

impl GitlabClient {
    /// Connects with this request timeout and checks the token with `GET /user`.
    pub async fn connect(
        url: &str,
        token: &crate::secret::Secret,
        timeout: Duration,
    ) -> Result<GitlabClient, GitlabError> {
        GitlabClient::connect_with(url, token, timeout, Backoff::default()).await
    }

    /// As `connect`, with this request timeout and retry policy.
    pub async fn connect_with(
        url: &str,
        token: &crate::secret::Secret,
        timeout: Duration,
        backoff: Backoff,
    ) -> Result<GitlabClient, GitlabError> {
        Ok(GitlabClient::connect_as(url, token, timeout, backoff)
            .await?
            .0)
    }

    /// As `connect_with`, also returning the token's user (the `GET /user`
    /// that checked the token: start-up needs it and need not ask twice).
    pub async fn connect_as(
        url: &str,
        token: &crate::secret::Secret,
        timeout: Duration,
        backoff: Backoff,
    ) -> Result<(GitlabClient, ApiUser), GitlabError> {
        let parsed = url::Url::parse(url).map_err(|e| GitlabError::Connect(e.to_string()))?;
        if parsed.host_str().is_none() {
            return Err(GitlabError::Connect(format!("no host in {url}")));
        }
        let mut base = parsed;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let rest = base
            .join("api/v4/")
            .map_err(|e| GitlabError::Connect(e.to_string()))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("access-bot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GitlabError::Connect(with_causes(&e)))?;
        // No pacing (GitLab's limits are per minute and generous), but a
        // 429's wait holds every caller, not only the one that saw it.
        let mut sending = crate::http::Transport::new(Some(RateBudget::unpaced()));
        sending.backoff = backoff;
        sending.timeout = Some(timeout);
        let reads = Transport {
            http,
            rest,
            token: token.clone(),
            sending: sending.clone(),
        };
        let writes = Transport {
            http: reads.http.clone(),
            rest: reads.rest.clone(),
            token: token.clone(),
            sending: crate::http::Transport {
                resend: Resend::OnlyRefused,
                ..sending
            },
        };
        let gl = GitlabClient {
            client: reads,
            writes,
        };
        // What the crate's own client checks when it is built.
        match gl.me().await {
            Ok(me) => Ok((gl, me)),
            Err(e @ (GitlabError::Unauthorized | GitlabError::Forbidden)) => Err(e),
            Err(e) => Err(GitlabError::Connect(e.to_string())),
        }
    }

    pub fn with_backoff(mut self, b: Backoff) -> Self {
        self.client.sending.backoff = b;
        self.writes.sending.backoff = b;
        self
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.client.sending.timeout = Some(timeout);
        self.writes.sending.timeout = Some(timeout);
        self
    }

    /// A read or an idempotent write.
    async fn retry<'c, T, F, Fut>(&'c self, what: &str, f: F) -> Result<T, GitlabError>
    where
        F: FnOnce(&'c Transport) -> Fut,
        Fut: Future<Output = Result<T, CrateError>>,
    {
        self.call(what, Retry::Safe, f).await
    }

    /// One call, on the client of its policy: the transport has spent the
    /// attempts by the time an error comes back.
    async fn call<'c, T, F, Fut>(
        &'c self,
        what: &str,
        policy: Retry,
        f: F,
    ) -> Result<T, GitlabError>
    where
        F: FnOnce(&'c Transport) -> Fut,
        Fut: Future<Output = Result<T, CrateError>>,
    {
        let client = match policy {
            Retry::Safe => &self.client,
            Retry::OnlyRefused => &self.writes,
        };
        let r = CALL_TIMEOUTS
            .scope(std::cell::Cell::new(0), f(client))
            .await
            .map_err(|e| failed(what, policy, e));
        crate::metrics::api("gitlab", &r);
        r
    }
}

/// What reading a listing's pages found, besides the items.
struct Walk {
    /// GitLab's clock when it answered the first page (its `Date` header).
    date: Option<DateTime<Utc>>,
    /// The listing's total moved between pages: an item added or deleted
    /// meanwhile shifts the later pages, and one may have been skipped.
    moved: bool,
}

impl GitlabClient {
    /// Read the pages of a listing the bot pages itself (it needs the headers
    /// the crate's pagination drops), from the first, handing each page's
    /// items to `each`, which says whether to read on; up to the last page.
    async fn walk(
        &self,
        what: &str,
        path: &str,
        query: &[(&str, String)],
        mut each: impl FnMut(Vec<serde_json::Value>) -> Result<bool, GitlabError>,
    ) -> Result<Walk, GitlabError> {
        let mut walk = Walk {
            date: None,
            moved: false,
        };
        let mut total = None;
        let mut page = 1u64;
        loop {
            let mut q = query.to_vec();
            q.push(("page", page.to_string()));
            let p = self.retry(what, |c| c.page(path, &q)).await?;
            if page == 1 {
                walk.date = p.date;
                total = p.total;
            } else if p.total != total {
                walk.moved = true;
            }
            let empty = p.values.is_empty();
            let more = each(p.values)?;
            match p.next {
                Some(n) if n > page && more && !empty => page = n,
                _ => return Ok(walk),
            }
        }
    }
}

/// What a call's failure means, by cause and status.
fn failed(what: &str, policy: Retry, err: CrateError) -> GitlabError {
    // The transport's own words, without the crate's "client error" wrapper.
    let detail = scrub(&match &err {
        api::ApiError::Client { source } => with_causes(source),
        other => with_causes(other),
    });
    let status = match &err {
        api::ApiError::Client {
            source:
                TransportError::RateLimited { attempts }
                | TransportError::NoAnswer { attempts, .. }
                | TransportError::Server { attempts, .. },
        } => {
            let refused = matches!(
                err,
                api::ApiError::Client {
                    source: TransportError::RateLimited { .. }
                }
            );
            // Refused, nothing was done; otherwise a write may have been.
            return if policy == Retry::OnlyRefused && !refused {
                GitlabError::Unconfirmed {
                    what: what.to_string(),
                    detail,
                }
            } else {
                GitlabError::Exhausted {
                    attempts: *attempts,
                    detail,
                }
            };
        }
        api::ApiError::Client {
            source: TransportError::Request(e),
        } => return GitlabError::Rejected(e.clone()),
        api::ApiError::Client {
            source: TransportError::Status { status, .. },
        } => Some(*status),
        api::ApiError::DataType { source, .. } => {
            return GitlabError::Unreadable {
                what: what.into(),
                detail: source.to_string(),
            };
        }
        api::ApiError::GitlabService { status, .. }
        | api::ApiError::GitlabWithStatus { status, .. }
        | api::ApiError::GitlabObjectWithStatus { status, .. }
        | api::ApiError::GitlabUnrecognizedWithStatus { status, .. } => Some(status.as_u16()),
        _ => None,
    };
    match status {
        Some(401) => GitlabError::Unauthorized,
        Some(403) => GitlabError::Forbidden,
        Some(404) => GitlabError::NotFound { what: what.into() },
        _ => GitlabError::Rejected(detail),
    }
}

impl GitlabClient {
    /// Whether a GET finds its object: 404 is `false`, other errors are errors.
    async fn exists<E>(&self, what: &str, ep: E) -> Result<bool, GitlabError>
    where
        E: api::Endpoint + Sync,
    {
        let ep = api::ignore(ep);
        match self.retry(what, |c| ep.query_async(c)).await {
            Ok(()) => Ok(true),
            Err(GitlabError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// `GET /groups/:id/enterprise_users?username=…`, which the `gitlab` crate
/// does not have.
struct EnterpriseUsers {
    group: String,
    username: String,
}

impl api::Endpoint for EnterpriseUsers {
    fn method(&self) -> api::endpoint_prelude::Method {
        api::endpoint_prelude::Method::GET
    }

    fn endpoint(&self) -> std::borrow::Cow<'static, str> {
        format!(
            "groups/{}/enterprise_users",
            percent_encoding::utf8_percent_encode(&self.group, percent_encoding::NON_ALPHANUMERIC)
        )
        .into()
    }

    fn parameters(&self) -> api::QueryParams<'_> {
        let mut p = api::QueryParams::default();
        p.push("username", self.username.as_str());
        p
    }
}

/// An endpoint builder fails only when a required field is missing: a bug here, reported as such.
fn built<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, GitlabError> {
    r.map_err(|e| GitlabError::Rejected(format!("building the request: {e}")))
}

/// Error texts from the HTTP client may carry URLs; tokens are sent as headers,
/// never in URLs, but keep messages short and free of query strings anyway.
/// Error text without query strings (they can carry tokens), capped.
fn scrub(s: &str) -> String {
    let mut out = String::new();
    let mut in_query = false;
    for c in s.chars() {
        if c == '?' {
            in_query = true;
            continue;
        }
        if in_query && (c == ')' || c.is_whitespace()) {
            in_query = false;
        }
        if !in_query {
            out.push(c);
        }
    }
    out.chars().take(600).collect()
}

#[async_trait]
impl GitlabApi for GitlabClient {
    async fn me(&self) -> Result<ApiUser, GitlabError> {
        let ep = built(api::users::CurrentUser::builder().build())?;
        self.retry("current user", |c| ep.query_async(c)).await
    }

    async fn list_issues<'a>(
        &self,
        project: &str,
        label: Option<&'a str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<IssuePage, GitlabError> {
        let mut b = api::issues::ProjectIssues::builder();
        b.project(project).state(api::issues::IssueState::Opened);
        if let Some(l) = label {
            b.label(l);
        }
        b.order_by(api::issues::IssueOrderBy::UpdatedAt)
            .sort(api::common::SortOrder::Ascending);
        if let Some(t) = since {
            b.updated_after(t);
        }
        let ep = api::paged(built(b.build())?, Pagination::All);
        let values: Vec<serde_json::Value> = self.retry("issues", |c| ep.query_async(c)).await?;
        Ok(IssuePage::from_values(values))
    }

    async fn changed_issues(
        &self,
        project: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<ChangedIssues, GitlabError> {
        let path = format!("projects/{}/issues", api::common::NameOrId::from(project));
        let mut query = vec![
            ("state", "opened".to_string()),
            ("order_by", "updated_at".to_string()),
            ("sort", "desc".to_string()),
            ("per_page", PER_PAGE.to_string()),
        ];
        if let Some(t) = since {
            // Whole seconds, rounded down: the window only grows.
            query.push((
                "updated_after",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ));
        }
        let mut values = Vec::new();
        let walk = self
            .walk("issues", &path, &query, |page| {
                values.extend(page);
                Ok(true)
            })
            .await?;
        Ok(ChangedIssues {
            page: IssuePage::from_values(values),
            listed_at: walk.date,
            shifted: walk.moved,
        })
    }

    async fn labelled_issues(&self, project: &str, label: &str) -> Result<IssuePage, GitlabError> {
        let mut b = api::issues::ProjectIssues::builder();
        b.project(project).label(label);
        let ep = api::paged(built(b.build())?, Pagination::All);
        let values: Vec<serde_json::Value> = self.retry("issues", |c| ep.query_async(c)).await?;
        Ok(IssuePage::from_values(values))
    }

    async fn project_label(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Option<ProjectLabel>, GitlabError> {
        let ep = api::paged(
            built(
                api::projects::labels::Labels::builder()
                    .project(project)
                    .search(name)
                    .build(),
            )?,
            Pagination::All,
        );
        let found: Vec<ProjectLabel> = self.retry("labels", |c| ep.query_async(c)).await?;
        Ok(found.into_iter().find(|l| l.name == name))
    }

    async fn create_project_label(
        &self,
        project: &str,
        name: &str,
        description: &str,
    ) -> Result<ProjectLabel, GitlabError> {
        let ep = built(
            api::projects::labels::CreateLabel::builder()
                .project(project)
                .name(name)
                .description(description)
                .color(api::projects::labels::LabelColor::from((
                    0x69u8, 0xd1u8, 0x00u8,
                )))
                .build(),
        )?;
        match self
            .call("the new label", Retry::OnlyRefused, |c| ep.query_async(c))
            .await
        {
            Ok(l) => Ok(l),
            // Created meanwhile (409), or created but the answer was lost.
            Err(GitlabError::Rejected(_) | GitlabError::Unconfirmed { .. }) => self
                .project_label(project, name)
                .await?
                .ok_or_else(|| GitlabError::Rejected(format!("cannot create the label {name:?}"))),
            Err(e) => Err(e),
        }
    }

    async fn set_label_description(
        &self,
        project: &str,
        label_id: u64,
        description: &str,
    ) -> Result<ProjectLabel, GitlabError> {
        let ep = built(
            api::projects::labels::EditLabel::builder()
                .project(project)
                .label(label_id)
                .description(description)
                // The crate insists on a name or a colour besides the description.
                .color(api::projects::labels::LabelColor::from((
                    0x69u8, 0xd1u8, 0x00u8,
                )))
                .build(),
        )?;
        self.call("the label", Retry::Safe, |c| ep.query_async(c))
            .await
    }

    async fn issue(&self, project: &str, iid: u64) -> Result<ApiIssue, GitlabError> {
        let ep = built(
            api::projects::issues::Issue::builder()
                .project(project)
                .issue(iid)
                .build(),
        )?;
        self.retry("issue", |c| ep.query_async(c)).await
    }

    async fn notes(&self, project: &str, iid: u64) -> Result<Vec<Note>, GitlabError> {
        let ep = api::paged(
            built(
                api::projects::issues::notes::IssueNotes::builder()
                    .project(project)
                    .issue(iid)
                    .sort(api::common::SortOrder::Ascending)
                    .build(),
            )?,
            Pagination::All,
        );
        let raw: Vec<ApiNote> = self.retry("notes", |c| ep.query_async(c)).await?;
        Ok(raw
            .into_iter()
            .map(|n| Note {
                id: n.id,
                author: n.author.to_ref(),
                body: n.body,
                created_at: n.created_at,
                system: n.system,
            })
            .collect())
    }

    async fn notes_since(
        &self,
        project: &str,
        iid: u64,
        since: Option<DateTime<Utc>>,
    ) -> Result<NoteRead, GitlabError> {
        let path = format!(
            "projects/{}/issues/{iid}/notes",
            api::common::NameOrId::from(project)
        );
        // All of them oldest first, as the full read always did; or the
        // latest edits first, so that the pages stop where `since` is reached.
        let (order_by, sort) = match since {
            None => ("created_at", "asc"),
            Some(_) => ("updated_at", "desc"),
        };
        let query = [
            ("order_by", order_by.to_string()),
            ("sort", sort.to_string()),
            ("per_page", PER_PAGE.to_string()),
        ];
        // A note deleted while the pages are read moves the next page by one
        // and hides the note at its start (an edit of the description, say).
        // The pages' total shows it: when it moves, the read starts over.
        for _ in 0..NOTES_READS {
            let mut notes = Vec::new();
            let walk = self
                .walk("notes", &path, &query, |page| {
                    let mut reached = false;
                    for v in page {
                        let n: ApiNote =
                            serde_json::from_value(v).map_err(|e| GitlabError::Unreadable {
                                what: "notes".into(),
                                detail: e.to_string(),
                            })?;
                        let n = n.into_timed();
                        reached |= since.is_some_and(|t| n.updated_at < t);
                        notes.push(n);
                    }
                    Ok(!reached)
                })
                .await?;
            if !walk.moved {
                return Ok(NoteRead {
                    notes,
                    read_at: walk.date,
                });
            }
            tracing::info!(
                iid,
                "the notes changed while their pages were read; reading them again"
            );
        }
        // Transient: the issue is looked at again on the next cycle.
        Err(GitlabError::Exhausted {
            attempts: NOTES_READS,
            detail: "the notes kept changing while their pages were read".into(),
        })
    }

    async fn label_events(&self, project: &str, iid: u64) -> Result<Vec<LabelEvent>, GitlabError> {
        let ep = api::paged(
            built(
                api::projects::issues::IssueResourceLabelEvents::builder()
                    .project(project)
                    .issue(iid)
                    .build(),
            )?,
            Pagination::All,
        );
        let raw: Vec<ApiLabelEvent> = self.retry("label events", |c| ep.query_async(c)).await?;
        Ok(raw
            .into_iter()
            .filter_map(|e| {
                Some(LabelEvent {
                    id: e.id,
                    user: e.user?.to_ref(),
                    created_at: e.created_at,
                    label_id: e.label.as_ref().and_then(|l| l.id),
                    label: e.label.map(|l| l.name),
                    action: if e.action == "remove" {
                        LabelAction::Remove
                    } else {
                        LabelAction::Add
                    },
                })
            })
            .collect())
    }

    async fn create_note(&self, project: &str, iid: u64, body: &str) -> Result<Note, GitlabError> {
        // Sent again only after a 429. A lost answer is not retried here (it
        // could post twice): the bot lists the notes, and finds this one by
        // its marker, before it posts again on a later cycle.
        let ep = built(
            api::projects::issues::notes::CreateIssueNote::builder()
                .project(project)
                .issue(iid)
                .body(body)
                .build(),
        )?;
        let n: ApiNote = self
            .call("the new note", Retry::OnlyRefused, |c| ep.query_async(c))
            .await?;
        Ok(Note {
            id: n.id,
            author: n.author.to_ref(),
            body: n.body,
            created_at: n.created_at,
            system: n.system,
        })
    }

    async fn edit_issue(
        &self,
        project: &str,
        iid: u64,
        edit: &IssueEdit,
    ) -> Result<ApiIssue, GitlabError> {
        // Idempotent (same description, set-like label operations): safe to retry.
        let mut b = api::projects::issues::EditIssue::builder();
        b.project(project).issue(iid);
        if let Some(d) = &edit.description {
            b.description(d.as_str());
        }
        for l in &edit.add_labels {
            b.add_label(l.as_str());
        }
        for l in &edit.remove_labels {
            b.remove_label(l.as_str());
        }
        if edit.close {
            b.state_event(api::projects::issues::IssueStateEvent::Close);
        }
        let ep = built(b.build())?;
        self.retry("issue", |c| ep.query_async(c)).await
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<ApiUser>, GitlabError> {
        let ep = built(api::users::Users::builder().username(username).build())?;
        let users: Vec<ApiUser> = self.retry("user", |c| ep.query_async(c)).await?;
        Ok(users
            .into_iter()
            .find(|u| u.username.eq_ignore_ascii_case(username)))
    }

    async fn enterprise_user(
        &self,
        group: &str,
        username: &str,
    ) -> Result<Option<ApiUser>, GitlabError> {
        let ep = EnterpriseUsers {
            group: group.to_string(),
            username: username.to_string(),
        };
        let users: Vec<ApiUser> = self
            .retry("enterprise users", |c| ep.query_async(c))
            .await?;
        Ok(users
            .into_iter()
            .find(|u| u.username.eq_ignore_ascii_case(username)))
    }

    async fn label_ids(
        &self,
        project: &str,
        names: &[String],
    ) -> Result<std::collections::BTreeMap<String, u64>, GitlabError> {
        let mut out = std::collections::BTreeMap::new();
        for name in names {
            let ep = api::paged(
                built(
                    api::projects::labels::Labels::builder()
                        .project(project)
                        .search(name.as_str())
                        .build(),
                )?,
                Pagination::All,
            );
            let found: Vec<ApiLabel> = self.retry("labels", |c| ep.query_async(c)).await?;
            if let Some(id) = found.iter().find(|l| l.name == *name).and_then(|l| l.id) {
                out.insert(name.clone(), id);
                continue;
            }
            let ep = built(
                api::projects::labels::CreateLabel::builder()
                    .project(project)
                    .name(name.as_str())
                    .color(api::projects::labels::LabelColor::from((
                        0x69u8, 0xd1u8, 0x00u8,
                    )))
                    .build(),
            )?;
            // Created meanwhile (409), or created but the answer was lost: read it again.
            let created: ApiLabel = match self
                .call("the new label", Retry::OnlyRefused, |c| ep.query_async(c))
                .await
            {
                Ok(l) => l,
                Err(GitlabError::Rejected(_) | GitlabError::Unconfirmed { .. }) => {
                    let ep = api::paged(
                        built(
                            api::projects::labels::Labels::builder()
                                .project(project)
                                .search(name.as_str())
                                .build(),
                        )?,
                        Pagination::All,
                    );
                    let again: Vec<ApiLabel> = self.retry("labels", |c| ep.query_async(c)).await?;
                    again.into_iter().find(|l| l.name == *name).ok_or_else(|| {
                        GitlabError::Rejected(format!("cannot create the label {name:?}"))
                    })?
                }
                Err(e) => return Err(e),
            };
            if let Some(id) = created.id {
                out.insert(name.clone(), id);
            }
        }
        Ok(out)
    }

    async fn create_issue(
        &self,
        project: &str,
        title: &str,
        description: &str,
        labels: &[String],
    ) -> Result<ApiIssue, GitlabError> {
        let ep = built(
            api::projects::issues::CreateIssue::builder()
                .project(project)
                .title(title)
                .description(description)
                .labels(labels.iter().map(String::as_str))
                .confidential(true)
                .build(),
        )?;
        // Not sent again after a lost answer: the caller finds an issue it
        // opened (by its label) before it opens another.
        self.call("the new issue", Retry::OnlyRefused, |c| ep.query_async(c))
            .await
    }

    async fn file_exists(
        &self,
        project: &str,
        path: &str,
        reference: &str,
    ) -> Result<bool, GitlabError> {
        let ep = built(
            api::projects::repository::files::File::builder()
                .project(project)
                .file_path(path)
                .ref_(reference)
                .build(),
        )?;
        self.exists("file", ep).await
    }

    async fn branch_exists(&self, project: &str, branch: &str) -> Result<bool, GitlabError> {
        let ep = built(
            api::projects::repository::branches::Branch::builder()
                .project(project)
                .branch(branch)
                .build(),
        )?;
        self.exists("branch", ep).await
    }

    async fn delete_file(
        &self,
        project: &str,
        path: &str,
        branch: &str,
        start_branch: &str,
        message: &str,
    ) -> Result<(), GitlabError> {
        let ep = built(
            api::projects::repository::files::DeleteFile::builder()
                .project(project)
                .file_path(path)
                .branch(branch)
                .start_branch(start_branch)
                .commit_message(message)
                .build(),
        )?;
        let ep = api::ignore(ep);
        match self
            .call("the file deletion", Retry::OnlyRefused, |c| {
                ep.query_async(c)
            })
            .await
        {
            Ok(()) => Ok(()),
            // The answer was lost, or an earlier attempt whose answer was lost
            // deleted it already ("A file with this name doesn't exist"): done
            // when the branch is there without the file.
            Err(e @ (GitlabError::Unconfirmed { .. } | GitlabError::Rejected(_))) => {
                if self.branch_exists(project, branch).await?
                    && !self.file_exists(project, path, branch).await?
                {
                    tracing::info!(
                        project,
                        branch,
                        "the file is already deleted on the branch: an earlier attempt did it"
                    );
                    Ok(())
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn merge_requests_from(
        &self,
        project: &str,
        source_branch: &str,
    ) -> Result<Vec<ApiMergeRequest>, GitlabError> {
        let ep = built(
            api::projects::merge_requests::MergeRequests::builder()
                .project(project)
                .source_branch(source_branch)
                .build(),
        )?;
        self.retry("merge requests", |c| ep.query_async(c)).await
    }

    async fn create_merge_request(
        &self,
        project: &str,
        mr: &NewMergeRequest,
    ) -> Result<ApiMergeRequest, GitlabError> {
        let mut b = api::projects::merge_requests::CreateMergeRequest::builder();
        b.project(project)
            .source_branch(mr.source_branch.as_str())
            .target_branch(mr.target_branch.as_str())
            .title(mr.title.as_str())
            .description(mr.description.as_str())
            .remove_source_branch(true);
        if !mr.reviewer_ids.is_empty() {
            // "Assigned to the configured reviewers": both assignees and reviewers.
            b.reviewers(mr.reviewer_ids.iter().copied());
            b.assignees(mr.reviewer_ids.iter().copied());
        }
        let ep = built(b.build())?;
        match self
            .call("the new merge request", Retry::OnlyRefused, |c| {
                ep.query_async(c)
            })
            .await
        {
            Ok(m) => Ok(m),
            // The answer was lost, or an earlier attempt whose answer was lost
            // opened it (409 "Another open merge request already exists"): the
            // open merge request from this branch is the one.
            Err(e @ (GitlabError::Unconfirmed { .. } | GitlabError::Rejected(_))) => {
                match self
                    .merge_requests_from(project, &mr.source_branch)
                    .await?
                    .into_iter()
                    .find(|m| m.state == "opened")
                {
                    Some(m) => {
                        tracing::info!(
                            project,
                            mr = m.iid,
                            "the merge request exists already: an earlier attempt opened it"
                        );
                        Ok(m)
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn merge_request(&self, project: &str, iid: u64) -> Result<ApiMergeRequest, GitlabError> {
        let ep = built(
            api::projects::merge_requests::MergeRequest::builder()
                .project(project)
                .merge_request(iid)
                .build(),
        )?;
        self.retry("merge request", |c| ep.query_async(c)).await
    }
}
