//! A dry run is a rehearsal: the bot reads and decides exactly as in a real
//! run, and its writers record each write instead of making it. The writers
//! are GitLab (notes, ticks, labels, issues, merge requests), the executor's
//! steps on the account systems and group directories, e-mail and ops
//! notices; the state database is a copy in memory. `Bot::rehearse` swaps
//! them in; nothing else in the bot knows whether it rehearses.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::gitlab::{
    ApiIssue, ApiMergeRequest, ApiUser, ChangedIssues, GitlabApi, GitlabError, IssueEdit,
    IssuePage, NewMergeRequest, NoteRead, ProjectLabel,
};
use crate::request::{LabelEvent, Note, checklist};

/// Writes kept until taken: a one-shot run takes them all; a daemon that
/// rehearses for days must not grow without bound.
pub const KEPT: usize = 1_000;

/// One write a rehearsal did not make, and the issue it was for (if any).
#[derive(Debug, Clone)]
struct Line {
    issue: Option<(String, u64)>,
    text: String,
}

/// What a rehearsal would have written, in order. Cheap to clone: the
/// clones share one record.
#[derive(Debug, Clone, Default)]
pub struct Rehearsal {
    lines: Arc<Mutex<VecDeque<Line>>>,
}

impl Rehearsal {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Line>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a write on an issue (`Some((project, iid))`) or elsewhere. It
    /// is logged too: a rehearsing daemon shows its writes in its log, and
    /// keeps only the latest [`KEPT`] that nothing has taken yet.
    pub fn record(&self, issue: Option<(&str, u64)>, text: impl Into<String>) {
        let text = text.into();
        match issue {
            Some((project, iid)) => {
                tracing::info!(project, iid, write = %text, "dry run: not written")
            }
            None => tracing::info!(write = %text, "dry run: not written"),
        }
        let mut lines = self.lock();
        if lines.len() >= KEPT {
            lines.pop_front();
        }
        lines.push_back(Line {
            issue: issue.map(|(p, i)| (p.to_string(), i)),
            text,
        });
    }

    /// The writes recorded for one issue, removed from the record.
    pub fn take(&self, project: &str, iid: u64) -> Vec<String> {
        let mut lines = self.lock();
        let (mine, rest): (VecDeque<Line>, VecDeque<Line>) = lines.drain(..).partition(|l| {
            l.issue
                .as_ref()
                .is_some_and(|(p, i)| p == project && *i == iid)
        });
        *lines = rest;
        mine.into_iter().map(|l| l.text).collect()
    }

    /// Every write still in the record (those on no issue, or not taken).
    pub fn take_all(&self) -> Vec<String> {
        self.lock()
            .drain(..)
            .map(|l| match l.issue {
                Some((p, i)) if i >= FIRST_ID => {
                    format!("{p}, on new issue {}: {}", i - FIRST_ID, l.text)
                }
                Some((p, i)) => format!("{p}#{i}: {}", l.text),
                None => l.text,
            })
            .collect()
    }
}

type IssueKey = (String, u64);

/// An issue as the rehearsal left it, and GitLab's time of the issue it
/// edited (`None`: the rehearsal opened it).
type Edited = (ApiIssue, Option<DateTime<Utc>>);

/// GitLab for a rehearsal: reads go to GitLab, writes are recorded and
/// answered as GitLab would answer them, so that the rest of the rehearsal
/// goes on as it would (a plan "posted", then the decision made again with
/// it). Later reads see the rehearsal's own notes, edits and issues.
pub struct RehearsedGitlab {
    inner: Arc<dyn GitlabApi>,
    log: Rehearsal,
    me: ApiUser,
    /// Ids for notes, labels and issues that were never created: from
    /// [`FIRST_ID`] on, far above any real one.
    next_id: AtomicU64,
    /// Issues as the rehearsal left them: opened by it, or edited, with
    /// GitLab's time of the issue it edited (`None`: opened here). An edit
    /// counts only while GitLab's issue is that one: after anyone's change
    /// the issue is read as GitLab has it.
    issues: Mutex<BTreeMap<IssueKey, Edited>>,
    /// Notes the rehearsal posted, per issue.
    notes: Mutex<BTreeMap<IssueKey, Vec<Note>>>,
    /// Merge requests the rehearsal opened, per project.
    merge_requests: Mutex<Vec<(String, ApiMergeRequest)>>,
}

/// Where a link to something the rehearsal did not create would go.
const NOT_CREATED: &str = "(not created: a dry run)";

/// Far above any real id, and still within SQLite's signed 64-bit integers
/// (the copy of the state database stores some of them).
const FIRST_ID: u64 = 1 << 60;

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RehearsedGitlab {
    pub fn new(inner: Arc<dyn GitlabApi>, log: Rehearsal, me: ApiUser) -> RehearsedGitlab {
        RehearsedGitlab {
            inner,
            log,
            me,
            next_id: AtomicU64::new(FIRST_ID),
            issues: Default::default(),
            notes: Default::default(),
            merge_requests: Default::default(),
        }
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// An issue only this rehearsal opened: GitLab has never heard of it.
    fn opened_here(iid: u64) -> bool {
        iid >= FIRST_ID
    }

    /// The issue as the rehearsal would see it, and GitLab's time of it
    /// (`None` for an issue opened here).
    async fn read_issue(
        &self,
        project: &str,
        iid: u64,
    ) -> Result<(ApiIssue, Option<DateTime<Utc>>), GitlabError> {
        let key = (project.to_string(), iid);
        let known = locked(&self.issues).get(&key).cloned();
        if let Some((mut issue, None)) = known {
            issue.user_notes_count = Some(self.posted(project, iid).len() as u64);
            return Ok((issue, None));
        }
        let mut fresh = self.inner.issue(project, iid).await?;
        let real = fresh.updated_at;
        match known {
            Some((edited, Some(base))) if base == real => fresh = edited,
            Some(_) => {
                locked(&self.issues).remove(&key);
            }
            None => {}
        }
        // GitLab would count the rehearsal's notes among the comments.
        let posted = self.posted(project, iid).len() as u64;
        if let Some(n) = fresh.user_notes_count.as_mut() {
            *n += posted;
        }
        Ok((fresh, Some(real)))
    }

    fn posted(&self, project: &str, iid: u64) -> Vec<Note> {
        locked(&self.notes)
            .get(&(project.to_string(), iid))
            .cloned()
            .unwrap_or_default()
    }
}

/// What an edit of an issue would change, for people.
fn describe_edit(before: &ApiIssue, edit: &IssueEdit) -> String {
    let mut parts = Vec::new();
    if let Some(after) = &edit.description {
        let was = checklist::parse(before.description.as_deref().unwrap_or(""));
        let ticked: Vec<String> = checklist::parse(after)
            .into_iter()
            .filter(|i| i.state != checklist::CheckState::Open)
            .filter(|i| {
                was.iter()
                    .any(|w| w.index == i.index && w.state == checklist::CheckState::Open)
            })
            .map(|i| crate::render::code_span(&i.text))
            .collect();
        if ticked.is_empty() {
            parts.push("change the description".to_string());
        } else {
            parts.push(format!("tick {}", ticked.join(", ")));
        }
    }
    if !edit.add_labels.is_empty() {
        parts.push(format!("add the labels {}", edit.add_labels.join(", ")));
    }
    if !edit.remove_labels.is_empty() {
        parts.push(format!(
            "remove the labels {}",
            edit.remove_labels.join(", ")
        ));
    }
    if edit.close {
        parts.push("close the issue".to_string());
    }
    parts.join("; ")
}

#[async_trait]
impl GitlabApi for RehearsedGitlab {
    async fn me(&self) -> Result<ApiUser, GitlabError> {
        self.inner.me().await
    }
    async fn list_issues<'a>(
        &self,
        project: &str,
        label: Option<&'a str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<IssuePage, GitlabError> {
        self.inner.list_issues(project, label, since).await
    }
    async fn changed_issues(
        &self,
        project: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<ChangedIssues, GitlabError> {
        self.inner.changed_issues(project, since).await
    }
    async fn labelled_issues(&self, project: &str, label: &str) -> Result<IssuePage, GitlabError> {
        self.inner.labelled_issues(project, label).await
    }
    async fn project_label(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Option<ProjectLabel>, GitlabError> {
        self.inner.project_label(project, name).await
    }
    async fn create_project_label(
        &self,
        project: &str,
        name: &str,
        description: &str,
    ) -> Result<ProjectLabel, GitlabError> {
        if let Some(l) = self.inner.project_label(project, name).await? {
            return Ok(l);
        }
        self.log
            .record(None, format!("{project}: create the label {name}"));
        Ok(ProjectLabel {
            id: self.id(),
            name: name.to_string(),
            description: Some(description.to_string()),
        })
    }
    async fn set_label_description(
        &self,
        project: &str,
        label_id: u64,
        description: &str,
    ) -> Result<ProjectLabel, GitlabError> {
        self.log.record(
            None,
            format!("{project}: set the description of label {label_id}"),
        );
        Ok(ProjectLabel {
            id: label_id,
            name: String::new(),
            description: Some(description.to_string()),
        })
    }
    async fn issue(&self, project: &str, iid: u64) -> Result<ApiIssue, GitlabError> {
        Ok(self.read_issue(project, iid).await?.0)
    }
    async fn notes(&self, project: &str, iid: u64) -> Result<Vec<Note>, GitlabError> {
        let mut notes = if Self::opened_here(iid) {
            Vec::new()
        } else {
            self.inner.notes(project, iid).await?
        };
        notes.extend(self.posted(project, iid));
        Ok(notes)
    }
    async fn notes_since(
        &self,
        project: &str,
        iid: u64,
        since: Option<DateTime<Utc>>,
    ) -> Result<NoteRead, GitlabError> {
        let mut read = if Self::opened_here(iid) {
            NoteRead {
                notes: Vec::new(),
                read_at: Some(Utc::now()),
            }
        } else {
            self.inner.notes_since(project, iid, since).await?
        };
        read.notes.extend(
            self.posted(project, iid)
                .into_iter()
                .filter(|n| since.is_none_or(|t| n.created_at >= t))
                .map(|n| crate::gitlab::TimedNote {
                    updated_at: n.created_at,
                    note: n,
                }),
        );
        Ok(read)
    }
    async fn label_events(&self, project: &str, iid: u64) -> Result<Vec<LabelEvent>, GitlabError> {
        if Self::opened_here(iid) {
            return Ok(Vec::new());
        }
        self.inner.label_events(project, iid).await
    }
    async fn create_note(&self, project: &str, iid: u64, body: &str) -> Result<Note, GitlabError> {
        self.log.record(
            Some((project, iid)),
            format!(
                "comment:\n{}",
                crate::marker::Marker::content_of(body).trim_end()
            ),
        );
        let note = Note {
            id: self.id(),
            author: self.me.to_ref(),
            body: body.to_string(),
            created_at: Utc::now(),
            system: false,
        };
        locked(&self.notes)
            .entry((project.to_string(), iid))
            .or_default()
            .push(note.clone());
        Ok(note)
    }
    async fn edit_issue(
        &self,
        project: &str,
        iid: u64,
        edit: &IssueEdit,
    ) -> Result<ApiIssue, GitlabError> {
        let (mut issue, real) = self.read_issue(project, iid).await?;
        self.log
            .record(Some((project, iid)), describe_edit(&issue, edit));
        if let Some(d) = &edit.description {
            issue.description = Some(d.clone());
        }
        issue.labels.retain(|l| !edit.remove_labels.contains(l));
        for l in &edit.add_labels {
            if !issue.labels.contains(l) {
                issue.labels.push(l.clone());
            }
        }
        if edit.close {
            issue.state = "closed".into();
        }
        // GitLab's own count of the ticks: not worked out here.
        issue.task_completion_status = None;
        issue.updated_at = Utc::now();
        let mut kept = issue.clone();
        // Counted again from the notes at each read.
        if let (Some(n), Some(_)) = (kept.user_notes_count.as_mut(), real) {
            *n = n.saturating_sub(self.posted(project, iid).len() as u64);
        }
        locked(&self.issues).insert((project.to_string(), iid), (kept, real));
        Ok(issue)
    }
    async fn user_by_username(&self, username: &str) -> Result<Option<ApiUser>, GitlabError> {
        self.inner.user_by_username(username).await
    }
    async fn enterprise_user(
        &self,
        group: &str,
        username: &str,
    ) -> Result<Option<ApiUser>, GitlabError> {
        self.inner.enterprise_user(group, username).await
    }
    /// Existing labels' ids as GitLab has them; a missing one would be
    /// created: recorded, with an id no real label has.
    async fn label_ids(
        &self,
        project: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, u64>, GitlabError> {
        let mut out = BTreeMap::new();
        for name in names {
            let id = match self.inner.project_label(project, name).await? {
                Some(l) => l.id,
                None => {
                    self.log
                        .record(None, format!("{project}: create the label {name}"));
                    self.id()
                }
            };
            out.insert(name.clone(), id);
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
        let iid = self.id();
        self.log.record(
            None,
            format!(
                "{project}: open new issue {} {title:?} (labels: {}):\n{description}",
                iid - FIRST_ID,
                labels.join(", ")
            ),
        );
        let now = Utc::now();
        let issue = ApiIssue {
            iid,
            title: title.to_string(),
            description: Some(description.to_string()),
            state: "opened".into(),
            labels: labels.to_vec(),
            author: self.me.clone(),
            web_url: NOT_CREATED.into(),
            created_at: now,
            updated_at: now,
            task_completion_status: None,
            user_notes_count: Some(0),
        };
        locked(&self.issues).insert((project.to_string(), issue.iid), (issue.clone(), None));
        Ok(issue)
    }
    async fn file_exists(
        &self,
        project: &str,
        path: &str,
        reference: &str,
    ) -> Result<bool, GitlabError> {
        self.inner.file_exists(project, path, reference).await
    }
    async fn branch_exists(&self, project: &str, branch: &str) -> Result<bool, GitlabError> {
        self.inner.branch_exists(project, branch).await
    }
    async fn delete_file(
        &self,
        project: &str,
        path: &str,
        branch: &str,
        start_branch: &str,
        _message: &str,
    ) -> Result<(), GitlabError> {
        self.log.record(
            None,
            format!("{project}: delete {path} on branch {branch} (from {start_branch})"),
        );
        Ok(())
    }
    async fn merge_requests_from(
        &self,
        project: &str,
        source_branch: &str,
    ) -> Result<Vec<ApiMergeRequest>, GitlabError> {
        let mut found = self
            .inner
            .merge_requests_from(project, source_branch)
            .await?;
        found.extend(
            locked(&self.merge_requests)
                .iter()
                .filter(|(p, mr)| p == project && mr.source_branch == source_branch)
                .map(|(_, mr)| mr.clone()),
        );
        Ok(found)
    }
    async fn create_merge_request(
        &self,
        project: &str,
        mr: &NewMergeRequest,
    ) -> Result<ApiMergeRequest, GitlabError> {
        self.log.record(
            None,
            format!(
                "{project}: open the merge request {:?} from {} into {}",
                mr.title, mr.source_branch, mr.target_branch
            ),
        );
        let opened = ApiMergeRequest {
            iid: self.id(),
            state: "opened".into(),
            web_url: NOT_CREATED.into(),
            source_branch: mr.source_branch.clone(),
        };
        locked(&self.merge_requests).push((project.to_string(), opened.clone()));
        Ok(opened)
    }
    async fn merge_request(&self, project: &str, iid: u64) -> Result<ApiMergeRequest, GitlabError> {
        let opened = locked(&self.merge_requests)
            .iter()
            .find(|(p, mr)| p == project && mr.iid == iid)
            .map(|(_, mr)| mr.clone());
        match opened {
            Some(mr) => Ok(mr),
            None => self.inner.merge_request(project, iid).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_taken_per_issue_and_the_rest_stays() {
        let r = Rehearsal::default();
        r.record(Some(("g/p", 1)), "comment on one");
        r.record(None, "notice to ops");
        r.record(Some(("g/p", 2)), "comment on two");
        r.record(Some(("g/p", 1)), "tick on one");
        assert_eq!(r.take("g/p", 1), ["comment on one", "tick on one"]);
        assert!(r.take("g/p", 1).is_empty());
        assert_eq!(r.take_all(), ["notice to ops", "g/p#2: comment on two"]);
        assert!(r.take_all().is_empty());
    }

    fn user() -> ApiUser {
        ApiUser {
            id: 7,
            username: "bot".into(),
            name: None,
            email: None,
            public_email: None,
            is_admin: None,
        }
    }

    fn issue_at(minute: u32, labels: &[&str]) -> ApiIssue {
        let at = DateTime::parse_from_rfc3339(&format!("2026-11-30T10:{minute:02}:00Z"))
            .unwrap()
            .with_timezone(&Utc);
        ApiIssue {
            iid: 5,
            title: "t".into(),
            description: Some("- [ ] item\n".into()),
            state: "opened".into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            author: user(),
            web_url: String::new(),
            created_at: at,
            updated_at: at,
            task_completion_status: None,
            user_notes_count: Some(2),
        }
    }

    /// A rehearsing daemon sees its own edit and notes until someone
    /// changes the issue; then it sees the issue as GitLab has it, not a
    /// copy frozen at its own edit.
    #[tokio::test]
    async fn own_edits_hold_until_the_issue_changes_on_gitlab() {
        let real = Arc::new(Mutex::new(issue_at(0, &["support::to do"])));
        let mut inner = crate::gitlab::MockGitlabApi::new();
        let seen = real.clone();
        inner
            .expect_issue()
            .returning(move |_, _| Ok(locked(&seen).clone()));
        let log = Rehearsal::default();
        let gl = RehearsedGitlab::new(Arc::new(inner), log.clone(), user());
        let edit = IssueEdit {
            add_labels: vec!["access-bot::waiting".into()],
            ..Default::default()
        };
        gl.edit_issue("g/p", 5, &edit).await.unwrap();
        gl.create_note("g/p", 5, "the plan").await.unwrap();
        let now = gl.issue("g/p", 5).await.unwrap();
        assert_eq!(now.labels, ["support::to do", "access-bot::waiting"]);
        assert_eq!(now.user_notes_count, Some(3), "its note is counted");
        // A manager approves on GitLab.
        *locked(&real) = issue_at(1, &["support::to do", "approved"]);
        let now = gl.issue("g/p", 5).await.unwrap();
        assert_eq!(now.labels, ["support::to do", "approved"]);
        assert_eq!(now.user_notes_count, Some(3));
        assert_eq!(
            log.take("g/p", 5),
            ["add the labels access-bot::waiting", "comment:\nthe plan"]
        );
    }

    #[test]
    fn a_long_rehearsal_keeps_only_the_latest_writes() {
        let r = Rehearsal::default();
        for i in 0..KEPT + 5 {
            r.record(None, format!("write {i}"));
        }
        let all = r.take_all();
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0], "write 5");
        assert_eq!(all[KEPT - 1], format!("write {}", KEPT + 4));
    }
}
