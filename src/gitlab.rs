//! GitLab adapter on the `gitlab` crate's async client (REST API v4).
//!
//! 429: wait for `Retry-After`. 5xx and dropped connections: retry with capped,
//! jittered backoff, then give up on that call (the loop gives up on the issue
//! for this cycle, never on the whole loop).

use std::future::Future;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gitlab::api::{self, AsyncQuery, Pagination};
use serde::Deserialize;

use crate::http::Backoff;
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
}

impl GitlabError {
    pub fn is_transient(&self) -> bool {
        matches!(self, GitlabError::Exhausted { .. })
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
    #[serde(default)]
    system: bool,
}

#[derive(Debug, Deserialize)]
struct ApiLabel {
    #[serde(default)]
    id: Option<u64>,
    name: String,
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
    async fn list_issues<'a>(
        &self,
        project: &str,
        label: Option<&'a str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<ApiIssue>, GitlabError>;
    async fn issue(&self, project: &str, iid: u64) -> Result<ApiIssue, GitlabError>;
    async fn notes(&self, project: &str, iid: u64) -> Result<Vec<Note>, GitlabError>;
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
    client: gitlab::AsyncGitlab,
    backoff: Backoff,
}

type CrateError = api::ApiError<gitlab::RestError>;

impl GitlabClient {
    /// Builds the client; the crate checks the connection with `GET /user`.
    pub async fn connect(
        url: &str,
        token: &crate::secret::Secret,
    ) -> Result<GitlabClient, GitlabError> {
        let parsed = url::Url::parse(url).map_err(|e| GitlabError::Connect(e.to_string()))?;
        let host = match (parsed.host_str(), parsed.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => return Err(GitlabError::Connect(format!("no host in {url}"))),
        };
        let mut b = gitlab::GitlabBuilder::new(host, token.expose());
        if parsed.scheme() == "http" {
            b.insecure();
        }
        b.user_agent("access-bot");
        let client = b
            .build_async()
            .await
            .map_err(|e| GitlabError::Connect(scrub(&with_causes(&e))))?;
        Ok(GitlabClient {
            client,
            backoff: Backoff::default(),
        })
    }

    pub fn with_backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }

    async fn retry<T, F, Fut>(&self, what: &str, f: F) -> Result<T, GitlabError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, CrateError>>,
    {
        let r = self.retry_inner(what, f).await;
        crate::metrics::api("gitlab", &r);
        r
    }

    async fn retry_inner<T, F, Fut>(&self, what: &str, f: F) -> Result<T, GitlabError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, CrateError>>,
    {
        let mut attempt = 0;
        loop {
            let err = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let status = match &err {
                api::ApiError::GitlabService { status, .. }
                | api::ApiError::GitlabWithStatus { status, .. }
                | api::ApiError::GitlabObjectWithStatus { status, .. }
                | api::ApiError::GitlabUnrecognizedWithStatus { status, .. } => {
                    Some(status.as_u16())
                }
                _ => None,
            };
            let wait = match (&err, status) {
                (api::ApiError::GitlabRateLimited { retry_after, .. }, _) => {
                    tracing::warn!(
                        wait_s = retry_after.as_secs(),
                        "GitLab rate limit: waiting Retry-After"
                    );
                    Some((*retry_after).max(std::time::Duration::from_millis(200)))
                }
                (api::ApiError::Client { .. }, _) => Some(self.backoff.delay(attempt)),
                (_, Some(s)) if s >= 500 => Some(self.backoff.delay(attempt)),
                (_, Some(401)) => return Err(GitlabError::Unauthorized),
                (_, Some(403)) => return Err(GitlabError::Forbidden),
                (_, Some(404)) => return Err(GitlabError::NotFound { what: what.into() }),
                _ => return Err(GitlabError::Rejected(scrub(&err.to_string()))),
            };
            attempt += 1;
            if attempt >= self.backoff.attempts {
                return Err(GitlabError::Exhausted {
                    attempts: attempt,
                    detail: scrub(&with_causes(&err)),
                });
            }
            if let Some(w) = wait {
                tracing::debug!(
                    what,
                    attempt,
                    "GitLab call failed, retrying: {}",
                    scrub(&with_causes(&err))
                );
                tokio::time::sleep(w).await;
            }
        }
    }
}

impl GitlabClient {
    /// Whether a GET finds its object: 404 is `false`, other errors are errors.
    async fn exists<E>(&self, what: &str, ep: E) -> Result<bool, GitlabError>
    where
        E: api::Endpoint + Sync,
    {
        let ep = api::ignore(ep);
        match self.retry(what, || ep.query_async(&self.client)).await {
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

/// An error and its causes ("error sending request: connection refused"):
/// the top line alone rarely says what went wrong.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

#[async_trait]
impl GitlabApi for GitlabClient {
    async fn me(&self) -> Result<ApiUser, GitlabError> {
        let ep = built(api::users::CurrentUser::builder().build())?;
        self.retry("current user", || ep.query_async(&self.client))
            .await
    }

    async fn list_issues<'a>(
        &self,
        project: &str,
        label: Option<&'a str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<ApiIssue>, GitlabError> {
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
        self.retry("issues", || ep.query_async(&self.client)).await
    }

    async fn issue(&self, project: &str, iid: u64) -> Result<ApiIssue, GitlabError> {
        let ep = built(
            api::projects::issues::Issue::builder()
                .project(project)
                .issue(iid)
                .build(),
        )?;
        self.retry("issue", || ep.query_async(&self.client)).await
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
        let raw: Vec<ApiNote> = self.retry("notes", || ep.query_async(&self.client)).await?;
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
        let raw: Vec<ApiLabelEvent> = self
            .retry("label events", || ep.query_async(&self.client))
            .await?;
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
        // Not retried blindly: a retry after a dropped connection could post twice.
        // The caller re-lists notes (markers) before posting again on a later cycle.
        let ep = api::projects::issues::notes::CreateIssueNote::builder()
            .project(project)
            .issue(iid)
            .body(body)
            .build()
            .map_err(|e| GitlabError::Rejected(e.to_string()))?;
        let to_note = |n: ApiNote| Note {
            id: n.id,
            author: n.author.to_ref(),
            body: n.body,
            created_at: n.created_at,
            system: n.system,
        };
        let r = match ep.query_async(&self.client).await {
            Ok(n) => Ok(to_note(n)),
            Err(api::ApiError::GitlabRateLimited { retry_after, .. }) => {
                // A 429 means the note was not created: waiting and sending once more is safe.
                tokio::time::sleep(retry_after).await;
                let ep = api::projects::issues::notes::CreateIssueNote::builder()
                    .project(project)
                    .issue(iid)
                    .body(body)
                    .build()
                    .map_err(|e| GitlabError::Rejected(e.to_string()))?;
                ep.query_async(&self.client)
                    .await
                    .map(to_note)
                    .map_err(|e| GitlabError::Exhausted {
                        attempts: 2,
                        detail: scrub(&e.to_string()),
                    })
            }
            Err(e) => Err(GitlabError::Exhausted {
                attempts: 1,
                detail: scrub(&e.to_string()),
            }),
        };
        crate::metrics::api("gitlab", &r);
        r
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
        self.retry("issue", || ep.query_async(&self.client)).await
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<ApiUser>, GitlabError> {
        let ep = built(api::users::Users::builder().username(username).build())?;
        let users: Vec<ApiUser> = self.retry("user", || ep.query_async(&self.client)).await?;
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
            .retry("enterprise users", || ep.query_async(&self.client))
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
            let found: Vec<ApiLabel> = self
                .retry("labels", || ep.query_async(&self.client))
                .await?;
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
            let created: ApiLabel = match ep.query_async(&self.client).await {
                Ok(l) => l,
                // Created meanwhile (a 409): read it again.
                Err(_) => {
                    let ep = api::paged(
                        built(
                            api::projects::labels::Labels::builder()
                                .project(project)
                                .search(name.as_str())
                                .build(),
                        )?,
                        Pagination::All,
                    );
                    let again: Vec<ApiLabel> = self
                        .retry("labels", || ep.query_async(&self.client))
                        .await?;
                    again.into_iter().find(|l| l.name == *name).ok_or_else(|| {
                        GitlabError::Rejected(format!("cannot create the label {name:?}"))
                    })?
                }
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
        let ep = api::projects::issues::CreateIssue::builder()
            .project(project)
            .title(title)
            .description(description)
            .labels(labels.iter().map(String::as_str))
            .confidential(true)
            .build()
            .map_err(|e| GitlabError::Rejected(e.to_string()))?;
        let r = ep
            .query_async(&self.client)
            .await
            .map_err(|e| GitlabError::Exhausted {
                attempts: 1,
                detail: scrub(&e.to_string()),
            });
        crate::metrics::api("gitlab", &r);
        r
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
        // Not retried blindly: a commit that landed but whose answer was lost
        // is found by the caller (the branch exists) on its next pass.
        let r = api::ignore(ep)
            .query_async(&self.client)
            .await
            .map_err(|e| GitlabError::Rejected(scrub(&e.to_string())));
        crate::metrics::api("gitlab", &r);
        r
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
        self.retry("merge requests", || ep.query_async(&self.client))
            .await
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
        let r = ep
            .query_async(&self.client)
            .await
            .map_err(|e| GitlabError::Rejected(scrub(&e.to_string())));
        crate::metrics::api("gitlab", &r);
        r
    }

    async fn merge_request(&self, project: &str, iid: u64) -> Result<ApiMergeRequest, GitlabError> {
        let ep = built(
            api::projects::merge_requests::MergeRequest::builder()
                .project(project)
                .merge_request(iid)
                .build(),
        )?;
        self.retry("merge request", || ep.query_async(&self.client))
            .await
    }
}
