//! A dry run is a rehearsal: the bot reads and decides exactly as in a real
//! run, and its writers record each write instead of making it. The writers
//! are GitLab (notes, ticks, labels, issues, merge requests), the executor's
//! steps on the account systems and group directories, e-mail and ops
//! notices; the state database is a copy in memory. `Bot::rehearse` swaps
//! them in; nothing else in the bot knows whether it rehearses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::gitlab::{
    ApiIssue, ApiMergeRequest, ApiUser, ChangedIssues, GitlabApi, GitlabError, IssueEdit,
    IssuePage, NewMergeRequest, NoteRead, ProjectLabel,
};
use crate::request::{LabelEvent, Note, checklist};

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
    lines: Arc<Mutex<Vec<Line>>>,
}

impl Rehearsal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Line>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a write on an issue (`Some((project, iid))`) or elsewhere.
    pub fn record(&self, issue: Option<(&str, u64)>, text: impl Into<String>) {
        self.lock().push(Line {
            issue: issue.map(|(p, i)| (p.to_string(), i)),
            text: text.into(),
        });
    }

    /// The writes recorded for one issue, removed from the record.
    pub fn take(&self, project: &str, iid: u64) -> Vec<String> {
        let mut lines = self.lock();
        let (mine, rest): (Vec<Line>, Vec<Line>) = lines.drain(..).partition(|l| {
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
                Some((p, i)) => format!("{p}#{i}: {}", l.text),
                None => l.text,
            })
            .collect()
    }
}

/// GitLab for a rehearsal: reads go to GitLab, writes are recorded and
/// answered as GitLab would answer them, so that the rest of the look goes
/// on as it would (a plan "posted", then the decision made again with it).
pub struct RehearsedGitlab {
    inner: Arc<dyn GitlabApi>,
    log: Rehearsal,
    me: ApiUser,
    /// Ids for notes, labels and issues that were never created: far above
    /// any real one.
    next_id: AtomicU64,
}

impl RehearsedGitlab {
    pub fn new(inner: Arc<dyn GitlabApi>, log: Rehearsal, me: ApiUser) -> RehearsedGitlab {
        RehearsedGitlab {
            inner,
            log,
            me,
            next_id: AtomicU64::new(u64::MAX / 2),
        }
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
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
        self.inner.issue(project, iid).await
    }
    async fn notes(&self, project: &str, iid: u64) -> Result<Vec<Note>, GitlabError> {
        self.inner.notes(project, iid).await
    }
    async fn notes_since(
        &self,
        project: &str,
        iid: u64,
        since: Option<DateTime<Utc>>,
    ) -> Result<NoteRead, GitlabError> {
        self.inner.notes_since(project, iid, since).await
    }
    async fn label_events(&self, project: &str, iid: u64) -> Result<Vec<LabelEvent>, GitlabError> {
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
        Ok(Note {
            id: self.id(),
            author: self.me.to_ref(),
            body: body.to_string(),
            created_at: Utc::now(),
            system: false,
        })
    }
    async fn edit_issue(
        &self,
        project: &str,
        iid: u64,
        edit: &IssueEdit,
    ) -> Result<ApiIssue, GitlabError> {
        let mut issue = self.inner.issue(project, iid).await?;
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
        issue.updated_at = Utc::now();
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
        self.log.record(
            None,
            format!(
                "{project}: open the issue {title:?} (labels: {}):\n{description}",
                labels.join(", ")
            ),
        );
        let now = Utc::now();
        Ok(ApiIssue {
            iid: self.id(),
            title: title.to_string(),
            description: Some(description.to_string()),
            state: "opened".into(),
            labels: labels.to_vec(),
            author: self.me.clone(),
            web_url: String::new(),
            created_at: now,
            updated_at: now,
            task_completion_status: None,
            user_notes_count: Some(0),
        })
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
        self.inner.merge_requests_from(project, source_branch).await
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
        Ok(ApiMergeRequest {
            iid: self.id(),
            state: "opened".into(),
            web_url: String::new(),
            source_branch: mr.source_branch.clone(),
        })
    }
    async fn merge_request(&self, project: &str, iid: u64) -> Result<ApiMergeRequest, GitlabError> {
        self.inner.merge_request(project, iid).await
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
}
