//! A stateful fake of the GitLab v4 REST subset the bot uses (the routes
//! `src/gitlab.rs` calls): issues, notes, label events, users. Tokens map to
//! users, so the world knows who did what.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::request::checklist::{self, CheckState};

#[derive(Debug, Clone)]
pub struct GlUser {
    pub id: u64,
    pub username: String,
    pub name: String,
    pub email: String,
    pub token: String,
    /// An instance administrator: sees everyone's `email`.
    pub admin: bool,
    /// The address the user chose to publish (`GET /users/:id` only).
    pub public_email: Option<String>,
}

/// A top-level group: its Owners see its enterprise users' e-mails.
#[derive(Debug, Clone)]
pub struct GlGroup {
    pub id: u64,
    pub path: String,
    pub owners: BTreeSet<u64>,
    /// The verified domain that makes a user an enterprise user of the group.
    pub domain: String,
}

#[derive(Debug, Clone)]
pub struct GlNote {
    pub id: u64,
    pub author: u64,
    pub body: String,
    pub system: bool,
    pub created_at: DateTime<Utc>,
    /// Moves with every edit of the body.
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct GlLabelEvent {
    pub id: u64,
    pub user: u64,
    pub label: String,
    pub add: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct GlIssue {
    pub id: u64,
    pub iid: u64,
    pub title: String,
    pub description: Option<String>,
    pub state: String,
    pub labels: Vec<String>,
    pub author: u64,
    pub confidential: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub notes: Vec<GlNote>,
    pub label_events: Vec<GlLabelEvent>,
    /// Set by the `/assign` quick action.
    pub assignees: Vec<u64>,
    /// Test hook: the API shows this issue with JSON a client cannot read
    /// (no author, a number for a title), as a broken import might.
    pub malformed: bool,
}

#[derive(Debug, Clone)]
pub struct GlProject {
    pub id: u64,
    pub path: String,
    pub issues: Vec<GlIssue>,
    /// Users who may see confidential issues (`None`: everyone).
    pub members: Option<BTreeSet<u64>>,
    /// Users with rights to change labels (`None`: everyone); others' label changes are silently dropped.
    pub label_editors: Option<BTreeSet<u64>>,
    /// Repository: branch -> path -> content.
    pub files: BTreeMap<String, BTreeMap<String, String>>,
    pub merge_requests: Vec<GlMergeRequest>,
    /// Users who may push and open merge requests (`None`: everyone); others get 403.
    pub writers: Option<BTreeSet<u64>>,
    /// Maintainers: on GitLab they may edit anyone's note.
    pub maintainers: BTreeSet<u64>,
    /// Project labels by name: an id stays with its label when it is renamed.
    pub labels: BTreeMap<String, u64>,
    /// Label descriptions by label id.
    pub label_descriptions: BTreeMap<u64, String>,
}

impl GlProject {
    /// The label's id, creating the label on first use (as `add_labels` does).
    pub fn label_id(&mut self, name: &str) -> u64 {
        let next = 1000 + self.labels.len() as u64 + 1;
        *self.labels.entry(name.to_string()).or_insert(next)
    }

    pub fn known_label_id(&self, name: &str) -> u64 {
        self.labels.get(name).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
pub struct GlMergeRequest {
    pub iid: u64,
    pub source_branch: String,
    pub target_branch: String,
    pub title: String,
    pub description: String,
    pub author: u64,
    pub reviewer_ids: Vec<u64>,
    pub assignee_ids: Vec<u64>,
    /// `opened`, `closed`, `merged`.
    pub state: String,
}

/// A GitLab webhook registered in the sandbox.
#[derive(Debug, Clone)]
pub struct Hook {
    pub url: String,
    pub token: String,
}

#[derive(Debug)]
pub struct GitlabWorld {
    pub users: Vec<GlUser>,
    pub groups: Vec<GlGroup>,
    pub projects: Vec<GlProject>,
    pub hooks: Vec<Hook>,
    /// `http://host:port` of this server, for absolute `Link` headers.
    pub base_url: String,
    /// Scoped labels (`a::b`) exclude each other, as on paid tiers.
    pub scoped_labels: bool,
    next_id: u64,
    last_time: DateTime<Utc>,
    /// Shift of the world's clock (tests of stale and expiring requests).
    pub clock_offset: chrono::Duration,
    hook_tx: Option<tokio::sync::mpsc::UnboundedSender<(Hook, &'static str, Value)>>,
    /// Labels a person applies the moment the bot next reads an issue's
    /// label events `(project, iid, user id, label)`: the race between a
    /// listing and the events read after it.
    pub labels_on_events_read: Vec<(String, u64, u64, String)>,
}

impl Default for GitlabWorld {
    fn default() -> Self {
        GitlabWorld {
            users: Vec::new(),
            groups: Vec::new(),
            projects: Vec::new(),
            hooks: Vec::new(),
            base_url: String::new(),
            scoped_labels: true,
            next_id: 1000,
            last_time: DateTime::<Utc>::MIN_UTC,
            clock_offset: chrono::Duration::zero(),
            hook_tx: None,
            labels_on_events_read: Vec::new(),
        }
    }
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl GitlabWorld {
    /// Non-decreasing time. Like GitLab's, timestamps can tie (ordering falls back
    /// to ids); a strictly increasing clock would run ahead of real time when many
    /// changes come at once, and make every poll look busy.
    pub fn now(&mut self) -> DateTime<Utc> {
        let t = (Utc::now() + self.clock_offset).max(self.last_time);
        self.last_time = t;
        t
    }

    /// The world's time, without taking it for a change (`Date` headers).
    pub fn clock(&self) -> DateTime<Utc> {
        (Utc::now() + self.clock_offset).max(self.last_time)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn add_user(&mut self, username: &str, name: &str, email: &str) -> u64 {
        if let Some(u) = self.user_by_name(username) {
            return u.id;
        }
        let id = self.users.len() as u64 + 1;
        self.users.push(GlUser {
            id,
            username: username.into(),
            name: name.into(),
            email: email.into(),
            token: format!("glpat-sandbox-{username}"),
            admin: false,
            public_email: None,
        });
        id
    }

    /// A top-level group whose enterprise users are the users at `domain`.
    pub fn add_group(&mut self, path: &str, domain: &str, owners: &[u64]) -> u64 {
        let id = 9000 + self.groups.len() as u64 + 1;
        self.groups.push(GlGroup {
            id,
            path: path.into(),
            owners: owners.iter().copied().collect(),
            domain: domain.to_ascii_lowercase(),
        });
        id
    }

    /// A user as another user sees them: `email` only for an administrator or
    /// oneself; `public_email` only where GitLab shows it (`GET /users/:id`).
    fn user_seen_by(&self, id: u64, viewer: u64, with_public: bool) -> Value {
        let mut v = self.user_json(id);
        if let Some(u) = self.user(id) {
            let admin = self.user(viewer).is_some_and(|x| x.admin);
            if admin || viewer == id {
                v["email"] = json!(u.email);
            }
            if admin {
                v["is_admin"] = json!(u.admin);
            }
            if with_public {
                v["public_email"] = json!(u.public_email.clone().unwrap_or_default());
            }
        }
        v
    }

    pub fn user_by_name(&self, username: &str) -> Option<&GlUser> {
        self.users
            .iter()
            .find(|u| u.username.eq_ignore_ascii_case(username))
    }

    pub fn user(&self, id: u64) -> Option<&GlUser> {
        self.users.iter().find(|u| u.id == id)
    }

    pub fn add_project(&mut self, path: &str) -> u64 {
        if let Some(p) = self.projects.iter().find(|p| p.path == path) {
            return p.id;
        }
        let id = self.projects.len() as u64 + 1;
        self.projects.push(GlProject {
            id,
            path: path.into(),
            issues: Vec::new(),
            members: None,
            label_editors: None,
            files: BTreeMap::from([("main".to_string(), BTreeMap::new())]),
            merge_requests: Vec::new(),
            writers: None,
            maintainers: BTreeSet::new(),
            labels: BTreeMap::new(),
            label_descriptions: BTreeMap::new(),
        });
        id
    }

    /// Edit a note as `editor`: its author, or a maintainer of the project.
    pub fn edit_note(
        &mut self,
        project: &str,
        iid: u64,
        note: u64,
        editor: u64,
        body: &str,
    ) -> Result<GlNote, StatusCode> {
        let now = self.now();
        let p = self.project_mut(project).ok_or(StatusCode::NOT_FOUND)?;
        let maintainer = p.maintainers.contains(&editor);
        let issue = p
            .issues
            .iter_mut()
            .find(|i| i.iid == iid)
            .ok_or(StatusCode::NOT_FOUND)?;
        let n = issue
            .notes
            .iter_mut()
            .find(|n| n.id == note && !n.system)
            .ok_or(StatusCode::NOT_FOUND)?;
        if n.author != editor && !maintainer {
            return Err(StatusCode::FORBIDDEN);
        }
        n.body = body.to_string();
        n.updated_at = now;
        issue.updated_at = now;
        Ok(n.clone())
    }

    /// Delete a note as `user`: its author, or a maintainer of the project.
    /// The note is gone from every listing; the issue's `updated_at` moves
    /// (it may not on GitLab: nothing the bot reads relies on it).
    pub fn delete_note(
        &mut self,
        project: &str,
        iid: u64,
        note: u64,
        user: u64,
    ) -> Result<(), StatusCode> {
        let now = self.now();
        let p = self.project_mut(project).ok_or(StatusCode::NOT_FOUND)?;
        let maintainer = p.maintainers.contains(&user);
        let issue = p
            .issues
            .iter_mut()
            .find(|i| i.iid == iid)
            .ok_or(StatusCode::NOT_FOUND)?;
        let pos = issue
            .notes
            .iter()
            .position(|n| n.id == note && !n.system)
            .ok_or(StatusCode::NOT_FOUND)?;
        if issue.notes[pos].author != user && !maintainer {
            return Err(StatusCode::FORBIDDEN);
        }
        issue.notes.remove(pos);
        issue.updated_at = now;
        Ok(())
    }

    /// Change the title as `editor`, with GitLab's system note.
    pub fn set_title(&mut self, project: &str, iid: u64, editor: u64, title: &str) {
        let now = self.now();
        let id = self.id();
        if let Some(i) = self
            .project_mut(project)
            .and_then(|p| p.issues.iter_mut().find(|i| i.iid == iid))
            && i.title != title
        {
            i.notes.push(GlNote {
                id,
                author: editor,
                body: format!("changed title from **{}** to **{}**", i.title, title),
                system: true,
                created_at: now,
                updated_at: now,
            });
            i.title = title.to_string();
            i.updated_at = now;
        }
    }

    /// Put a file on a branch (creating the branch).
    pub fn put_file(&mut self, project: &str, branch: &str, path: &str, content: &str) {
        if let Some(p) = self.project_mut(project) {
            p.files
                .entry(branch.to_string())
                .or_default()
                .insert(path.to_string(), content.to_string());
        }
    }

    /// Merge a merge request as a maintainer would: the target branch takes the
    /// source branch's files; the source branch is removed.
    pub fn merge(&mut self, project: &str, iid: u64) -> bool {
        let Some(p) = self.project_mut(project) else {
            return false;
        };
        let Some(mr) = p.merge_requests.iter_mut().find(|m| m.iid == iid) else {
            return false;
        };
        if mr.state != "opened" {
            return false;
        }
        mr.state = "merged".into();
        let (src, dst) = (mr.source_branch.clone(), mr.target_branch.clone());
        if let Some(files) = p.files.remove(&src) {
            p.files.insert(dst, files);
        }
        true
    }

    pub fn close_merge_request(&mut self, project: &str, iid: u64) {
        if let Some(m) = self
            .project_mut(project)
            .and_then(|p| p.merge_requests.iter_mut().find(|m| m.iid == iid))
        {
            m.state = "closed".into();
        }
    }

    pub fn project_mut(&mut self, key: &str) -> Option<&mut GlProject> {
        self.projects
            .iter_mut()
            .find(|p| p.path == key || p.id.to_string() == key)
    }

    pub fn project(&self, key: &str) -> Option<&GlProject> {
        self.projects
            .iter()
            .find(|p| p.path == key || p.id.to_string() == key)
    }

    pub fn issue(&self, project: &str, iid: u64) -> Option<&GlIssue> {
        self.project(project)?.issues.iter().find(|i| i.iid == iid)
    }

    /// File an issue as `author` (labels applied at creation count as that user's label events).
    pub fn create_issue(
        &mut self,
        project: &str,
        author: u64,
        title: &str,
        description: &str,
        labels: &[String],
        confidential: bool,
    ) -> Option<u64> {
        let now = self.now();
        let id = self.id();
        let mut events = Vec::new();
        let mut final_labels: Vec<String> = Vec::new();
        for l in labels {
            if !final_labels.contains(l) {
                final_labels.push(l.clone());
                let eid = self.id();
                events.push(GlLabelEvent {
                    id: eid,
                    user: author,
                    label: l.clone(),
                    add: true,
                    created_at: now,
                });
            }
        }
        let p = self.project_mut(project)?;
        for l in &final_labels {
            p.label_id(l);
        }
        let iid = p.issues.iter().map(|i| i.iid).max().unwrap_or(0) + 1;
        p.issues.push(GlIssue {
            id,
            iid,
            title: title.into(),
            description: Some(description.into()),
            state: "opened".into(),
            labels: final_labels,
            author,
            confidential,
            created_at: now,
            updated_at: now,
            closed_at: None,
            notes: Vec::new(),
            label_events: events,
            assignees: Vec::new(),
            malformed: false,
        });
        self.emit(project, iid, "Issue Hook", author);
        Some(iid)
    }

    /// Edit a description as `editor`, writing the system notes GitLab writes:
    /// one "marked the checklist item" note per toggled box, or, when no box
    /// toggled, "changed the description".
    pub fn set_description(&mut self, project: &str, iid: u64, editor: u64, text: &str) -> bool {
        let now = self.now();
        let mut ids: Vec<u64> = (0..64).map(|_| self.id()).collect();
        let Some(issue) = self
            .project_mut(project)
            .and_then(|p| p.issues.iter_mut().find(|i| i.iid == iid))
        else {
            return false;
        };
        let old = issue.description.clone().unwrap_or_default();
        if old == text {
            return true;
        }
        let before = checklist::parse(&old);
        let after = checklist::parse(text);
        let mut toggles = Vec::new();
        for (a, b) in before.iter().zip(after.iter()) {
            if a.text == b.text && a.state != b.state {
                let done = b.state == CheckState::Done;
                if a.state == CheckState::Inapplicable || b.state == CheckState::Inapplicable {
                    continue;
                }
                toggles.push(format!(
                    "marked the checklist item **{}** as {}",
                    b.text,
                    if done { "completed" } else { "incomplete" }
                ));
            }
        }
        let bodies = if toggles.is_empty() {
            vec!["changed the description".to_string()]
        } else {
            toggles
        };
        for body in bodies {
            let id = ids.pop().unwrap_or_default();
            issue.notes.push(GlNote {
                id,
                author: editor,
                body,
                system: true,
                created_at: now,
                updated_at: now,
            });
        }
        issue.description = Some(text.to_string());
        issue.updated_at = now;
        self.emit(project, iid, "Issue Hook", editor);
        true
    }

    /// Add and remove labels as `user`; records label events. Returns false if
    /// the user may not edit labels (the change is then silently dropped, as GitLab does).
    pub fn change_labels(
        &mut self,
        project: &str,
        iid: u64,
        user: u64,
        add: &[String],
        remove: &[String],
    ) -> bool {
        let now = self.now();
        let scoped = self.scoped_labels;
        let mut ids: Vec<u64> = (0..(add.len() * 4 + remove.len() + 8))
            .map(|_| self.id())
            .collect();
        let Some(p) = self.project_mut(project) else {
            return false;
        };
        if p.label_editors.as_ref().is_some_and(|e| !e.contains(&user)) {
            return false;
        }
        for a in add {
            p.label_id(a);
        }
        let Some(issue) = p.issues.iter_mut().find(|i| i.iid == iid) else {
            return false;
        };
        let mut changed = false;
        let mut events = Vec::new();
        for r in remove {
            if let Some(pos) = issue.labels.iter().position(|l| l == r) {
                issue.labels.remove(pos);
                events.push((r.clone(), false));
                changed = true;
            }
        }
        for a in add {
            if issue.labels.contains(a) {
                continue;
            }
            if scoped && let Some((scope, _)) = a.rsplit_once("::") {
                let prefix = format!("{scope}::");
                let excluded: Vec<String> = issue
                    .labels
                    .iter()
                    .filter(|l| l.starts_with(&prefix) && !l[prefix.len()..].contains("::"))
                    .cloned()
                    .collect();
                for x in excluded {
                    issue.labels.retain(|l| *l != x);
                    events.push((x, false));
                }
            }
            issue.labels.push(a.clone());
            events.push((a.clone(), true));
            changed = true;
        }
        for (label, add) in events {
            issue.label_events.push(GlLabelEvent {
                id: ids.pop().unwrap_or_default(),
                user,
                label,
                add,
                created_at: now,
            });
        }
        if changed {
            issue.updated_at = now;
            self.emit(project, iid, "Issue Hook", user);
        }
        true
    }

    /// Rename a project label as `user`, as the Labels API does
    /// (`PUT /projects/:id/labels/:label_id` with `new_name`; Reporters and up
    /// may manage labels). Issues keep the label, and their resource label
    /// events refer to the label, so both report the new name afterwards.
    /// A title already in use is refused (409), an unknown label is a 404.
    pub fn rename_label(
        &mut self,
        project: &str,
        user: u64,
        old: &str,
        new: &str,
    ) -> Result<(), (StatusCode, &'static str)> {
        let Some(p) = self.project_mut(project) else {
            return Err((StatusCode::NOT_FOUND, "404 Project Not Found"));
        };
        if p.label_editors.as_ref().is_some_and(|e| !e.contains(&user)) {
            return Err((StatusCode::FORBIDDEN, "403 Forbidden"));
        }
        let in_use = |name: &str| {
            p.issues.iter().any(|i| {
                i.labels.iter().any(|l| l == name) || i.label_events.iter().any(|e| e.label == name)
            })
        };
        if !in_use(old) {
            return Err((StatusCode::NOT_FOUND, "404 Label Not Found"));
        }
        if in_use(new) {
            return Err((StatusCode::CONFLICT, "Title has already been taken"));
        }
        // The label keeps its id under its new name.
        if let Some(id) = p.labels.remove(old) {
            p.labels.insert(new.to_string(), id);
        }
        for i in &mut p.issues {
            for l in &mut i.labels {
                if l == old {
                    *l = new.to_string();
                }
            }
            for e in &mut i.label_events {
                if e.label == old {
                    e.label = new.to_string();
                }
            }
        }
        Ok(())
    }

    pub fn add_note(&mut self, project: &str, iid: u64, author: u64, body: &str) -> Option<GlNote> {
        let now = self.now();
        let id = self.id();
        let issue = self
            .project_mut(project)?
            .issues
            .iter_mut()
            .find(|i| i.iid == iid)?;
        let note = GlNote {
            id,
            author,
            body: body.to_string(),
            system: false,
            created_at: now,
            updated_at: now,
        };
        issue.notes.push(note.clone());
        issue.updated_at = now;
        self.emit(project, iid, "Note Hook", author);
        Some(note)
    }

    /// Run the quick actions of a new note as GitLab does, as its author and
    /// with the author's rights: `/close`, `/reopen`, `/label ~"x" ~y`,
    /// `/unlabel ~"x"` (no label: all of them) and `/assign @u` on a line of
    /// their own. Label changes are the author's label events, state changes
    /// and assignments their system notes. Returns the note's text without the
    /// lines that ran (unchanged when none did) and what each did.
    ///
    /// Stricter than GitLab where its documentation is silent: a command runs
    /// even when indented or inside a code block, so that a comment of the
    /// bot's is only safe when no line of it starts with `/`. A command the
    /// author may not run (no rights, or nothing to do) stays in the text.
    pub fn run_quick_actions(
        &mut self,
        project: &str,
        iid: u64,
        author: u64,
        text: &str,
    ) -> (String, Vec<String>) {
        let Some(p) = self.project(project) else {
            return (text.to_string(), Vec::new());
        };
        let Some(issue) = p.issues.iter().find(|i| i.iid == iid) else {
            return (text.to_string(), Vec::new());
        };
        // Reporter rights (labels, assignees; closing anyone's issue); the
        // author of an issue may close and reopen it too.
        let reporter = p.label_editors.as_ref().is_none_or(|e| e.contains(&author));
        let may_close = reporter || issue.author == author;
        let mut open = issue.state == "opened";
        let mut kept = Vec::new();
        let mut summary = Vec::new();
        for line in text.split('\n') {
            let Some((command, args)) = quick_action(line) else {
                kept.push(line);
                continue;
            };
            let ran = match command.as_str() {
                "close" if may_close && open => {
                    self.set_state(project, iid, author, true);
                    open = false;
                    Some("Closed this issue.".to_string())
                }
                "reopen" if may_close && !open => {
                    self.set_state(project, iid, author, false);
                    open = true;
                    Some("Reopened this issue.".to_string())
                }
                "label" if reporter && !label_args(&args).is_empty() => {
                    let add = label_args(&args);
                    self.change_labels(project, iid, author, &add, &[]);
                    Some(format!("Added {} label(s).", add.len()))
                }
                "unlabel" if reporter => {
                    let mut remove = label_args(&args);
                    if remove.is_empty() {
                        remove = self
                            .issue(project, iid)
                            .map(|i| i.labels.clone())
                            .unwrap_or_default();
                    }
                    self.change_labels(project, iid, author, &[], &remove);
                    Some(format!("Removed {} label(s).", remove.len()))
                }
                "assign" if reporter => self.assign(project, iid, author, &args),
                _ => None,
            };
            match ran {
                Some(s) => summary.push(s),
                None => kept.push(line),
            }
        }
        if summary.is_empty() {
            return (text.to_string(), summary);
        }
        (kept.join("\n").trim().to_string(), summary)
    }

    /// `/assign @a @b` (or `me`): adds the users who exist, with GitLab's system note.
    fn assign(&mut self, project: &str, iid: u64, author: u64, args: &str) -> Option<String> {
        let users: Vec<(u64, String)> = args
            .split_whitespace()
            .filter_map(|a| {
                if a == "me" {
                    self.user(author).map(|u| (u.id, u.username.clone()))
                } else {
                    let name = a.strip_prefix('@')?;
                    self.user_by_name(name).map(|u| (u.id, u.username.clone()))
                }
            })
            .collect();
        if users.is_empty() {
            return None;
        }
        let now = self.now();
        let id = self.id();
        let issue = self
            .project_mut(project)?
            .issues
            .iter_mut()
            .find(|i| i.iid == iid)?;
        for (u, _) in &users {
            if !issue.assignees.contains(u) {
                issue.assignees.push(*u);
            }
        }
        let names: Vec<String> = users.iter().map(|(_, n)| format!("@{n}")).collect();
        issue.notes.push(GlNote {
            id,
            author,
            body: format!("assigned to {}", names.join(" ")),
            system: true,
            created_at: now,
            updated_at: now,
        });
        issue.updated_at = now;
        Some(format!("Assigned {}.", names.join(" ")))
    }

    pub fn set_state(&mut self, project: &str, iid: u64, user: u64, close: bool) -> bool {
        let now = self.now();
        let id = self.id();
        let Some(issue) = self
            .project_mut(project)
            .and_then(|p| p.issues.iter_mut().find(|i| i.iid == iid))
        else {
            return false;
        };
        let target = if close { "closed" } else { "opened" };
        if issue.state != target {
            issue.state = target.into();
            issue.closed_at = close.then_some(now);
            issue.updated_at = now;
            issue.notes.push(GlNote {
                id,
                author: user,
                body: if close { "closed" } else { "reopened" }.into(),
                system: true,
                created_at: now,
                updated_at: now,
            });
            self.emit(project, iid, "Issue Hook", user);
        }
        true
    }

    fn emit(&self, project: &str, iid: u64, kind: &'static str, actor: u64) {
        let Some(tx) = &self.hook_tx else { return };
        let Some(p) = self.project(project) else {
            return;
        };
        let Some(issue) = p.issues.iter().find(|i| i.iid == iid) else {
            return;
        };
        let hook_kind = match (kind, issue.confidential) {
            ("Issue Hook", true) => "Confidential Issue Hook",
            ("Note Hook", true) => "Confidential Note Hook",
            (k, _) => k,
        };
        let attrs = json!({
            "id": issue.id, "iid": issue.iid, "title": issue.title, "state": issue.state,
            "updated_at": ts(issue.updated_at), "url": self.web_url(p, issue),
            "labels": issue.labels.iter().map(|l| json!({"title": l})).collect::<Vec<_>>(),
        });
        let actor = self.user_json(actor);
        let payload = if kind == "Note Hook" {
            json!({"object_kind": "note", "user": actor, "project": {"id": p.id, "path_with_namespace": p.path},
                   "object_attributes": {"note": issue.notes.last().map(|n| n.body.clone()), "system": false},
                   "issue": attrs})
        } else {
            json!({"object_kind": "issue", "event_type": "issue", "user": actor,
                   "project": {"id": p.id, "path_with_namespace": p.path},
                   "object_attributes": attrs})
        };
        for h in &self.hooks {
            let _ = tx.send((h.clone(), hook_kind, payload.clone()));
        }
    }

    fn web_url(&self, p: &GlProject, i: &GlIssue) -> String {
        format!("https://gitlab.sandbox/{}/-/issues/{}", p.path, i.iid)
    }

    fn user_json(&self, id: u64) -> Value {
        match self.user(id) {
            Some(u) => {
                json!({"id": u.id, "username": u.username, "name": u.name, "state": "active",
                              "avatar_url": null, "web_url": format!("https://gitlab.sandbox/{}", u.username)})
            }
            None => {
                json!({"id": id, "username": format!("ghost-{id}"), "name": "Ghost", "state": "blocked"})
            }
        }
    }

    fn issue_json(&self, p: &GlProject, i: &GlIssue) -> Value {
        if i.malformed {
            return json!({"id": i.id, "iid": i.iid, "project_id": p.id, "title": 42,
                "state": i.state, "author": null, "labels": i.labels});
        }
        let items = checklist::parse(i.description.as_deref().unwrap_or(""));
        let (count, done) = checklist::completion(&items);
        json!({
            "id": i.id, "iid": i.iid, "project_id": p.id, "title": i.title,
            "description": i.description, "state": i.state,
            "created_at": ts(i.created_at), "updated_at": ts(i.updated_at),
            "closed_at": i.closed_at.map(ts), "closed_by": null,
            "labels": i.labels, "author": self.user_json(i.author),
            "assignees": i.assignees.iter().map(|a| self.user_json(*a)).collect::<Vec<_>>(),
            "assignee": i.assignees.first().map(|a| self.user_json(*a)), "confidential": i.confidential,
            "web_url": self.web_url(p, i),
            "references": {"short": format!("#{}", i.iid), "relative": format!("#{}", i.iid), "full": format!("{}#{}", p.path, i.iid)},
            "user_notes_count": i.notes.iter().filter(|n| !n.system).count(),
            "task_completion_status": {"count": count, "completed_count": done},
            "has_tasks": count > 0,
            "milestone": null, "due_date": null, "type": "ISSUE", "issue_type": "issue",
            "discussion_locked": null, "moved_to_id": null,
        })
    }
}

/// The server's shared state.
#[derive(Clone)]
pub struct GitlabServer {
    pub world: Arc<Mutex<GitlabWorld>>,
}

impl GitlabServer {
    pub fn new() -> GitlabServer {
        GitlabServer {
            world: Arc::new(Mutex::new(GitlabWorld::default())),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, GitlabWorld> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deliver webhooks (Issue Hook, Note Hook) to registered URLs in the background.
    pub fn start_hook_delivery(&self) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Hook, &'static str, Value)>();
        self.lock().hook_tx = Some(tx);
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while let Some((hook, kind, payload)) = rx.recv().await {
                let _ = client
                    .post(&hook.url)
                    .header("X-Gitlab-Event", kind)
                    .header("X-Gitlab-Token", &hook.token)
                    .header("User-Agent", "GitLab/19.5.0")
                    .json(&payload)
                    .send()
                    .await;
            }
        });
    }
}

impl Default for GitlabServer {
    fn default() -> Self {
        Self::new()
    }
}

pub fn router(server: GitlabServer) -> Router {
    Router::new()
        .route("/api/v4/user", get(me))
        .route("/api/v4/users", get(users))
        .route("/api/v4/users/{id}", get(user_by_id))
        .route(
            "/api/v4/projects/{project}/issues",
            get(list_issues).post(create_issue),
        )
        .route(
            "/api/v4/projects/{project}/issues/{iid}",
            get(show_issue).put(edit_issue),
        )
        .route(
            "/api/v4/projects/{project}/issues/{iid}/notes",
            get(list_notes).post(create_note),
        )
        .route(
            "/api/v4/groups/{group}/enterprise_users",
            get(enterprise_users),
        )
        .route(
            "/api/v4/projects/{project}/labels",
            get(list_labels).post(create_label),
        )
        .route(
            "/api/v4/projects/{project}/issues/{iid}/notes/{note}",
            axum::routing::put(edit_note).delete(delete_note),
        )
        .route(
            "/api/v4/projects/{project}/issues/{iid}/resource_label_events",
            get(label_events),
        )
        .route(
            "/api/v4/projects/{project}/labels/{label}",
            axum::routing::put(edit_label),
        )
        .route(
            "/api/v4/projects/{project}/repository/files/{file_path}",
            get(show_file).delete(delete_file),
        )
        .route(
            "/api/v4/projects/{project}/repository/branches/{branch}",
            get(show_branch),
        )
        .route(
            "/api/v4/projects/{project}/merge_requests",
            get(list_mrs).post(create_mr),
        )
        .route(
            "/api/v4/projects/{project}/merge_requests/{iid}",
            get(show_mr),
        )
        .fallback(|| async { err(StatusCode::NOT_FOUND, "404 Not Found") })
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            world_date,
        ))
        .with_state(server)
}

/// Every answer's `Date` is the world's clock (whole seconds, as HTTP has
/// them), so that a shifted clock (`clock_offset`) is GitLab's clock for the
/// bot too.
async fn world_date(
    State(s): State<GitlabServer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut r = next.run(req).await;
    let now = s.lock().clock();
    let date = now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(v) = date.parse() {
        r.headers_mut().insert(axum::http::header::DATE, v);
    }
    r
}

async fn delete_note(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path((project, iid, note)): Path<(String, u64, u64)>,
) -> Response {
    let mut w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let visible_issue = w
        .project(&project)
        .and_then(|p| {
            p.issues
                .iter()
                .find(|i| i.iid == iid)
                .map(|i| visible(p, i, user))
        })
        .unwrap_or(false);
    if !visible_issue {
        return err(StatusCode::NOT_FOUND, "404 Issue Not Found");
    }
    match w.delete_note(&project, iid, note, user) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(StatusCode::FORBIDDEN) => err(StatusCode::FORBIDDEN, "403 Forbidden"),
        Err(_) => err(StatusCode::NOT_FOUND, "404 Note Not Found"),
    }
}

fn mr_json(w: &GitlabWorld, p: &GlProject, m: &GlMergeRequest) -> Value {
    json!({
        "id": p.id * 100_000 + m.iid, "iid": m.iid, "project_id": p.id,
        "title": m.title, "description": m.description, "state": m.state,
        "source_branch": m.source_branch, "target_branch": m.target_branch,
        "author": w.user_json(m.author),
        "reviewers": m.reviewer_ids.iter().map(|r| w.user_json(*r)).collect::<Vec<_>>(),
        "assignees": m.assignee_ids.iter().map(|r| w.user_json(*r)).collect::<Vec<_>>(),
        "web_url": format!("https://gitlab.sandbox/{}/-/merge_requests/{}", p.path, m.iid),
        "merge_status": "can_be_merged", "draft": false,
    })
}

/// `GET .../repository/files/:file_path?ref=`: 404 "File Not Found" (or "Commit
/// Not Found" for an unknown ref), as GitLab answers.
async fn show_file(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path((project, file_path)): Path<(String, String)>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let w = s.lock();
    if let Err(r) = auth(&w, &headers) {
        return r;
    }
    let Some(p) = w.project(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    let Some(reference) = param(&q, "ref") else {
        return err(StatusCode::BAD_REQUEST, "ref is missing");
    };
    let Some(files) = p.files.get(reference) else {
        return err(StatusCode::NOT_FOUND, "404 Commit Not Found");
    };
    match files.get(&file_path) {
        Some(content) => {
            use base64::Engine;
            axum::Json(json!({
                "file_name": file_path.rsplit('/').next().unwrap_or(""),
                "file_path": file_path, "size": content.len(), "encoding": "base64",
                "content": base64::engine::general_purpose::STANDARD.encode(content),
                "ref": reference, "blob_id": "0000", "commit_id": "0000", "last_commit_id": "0000",
            }))
            .into_response()
        }
        None => err(StatusCode::NOT_FOUND, "404 File Not Found"),
    }
}

/// `DELETE .../repository/files/:file_path` with `branch`, `start_branch`,
/// `commit_message`: 204; 400 when the file is not there.
async fn delete_file(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path((project, file_path)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let params = body_params(&headers, &body);
    let Some(p) = w.project_mut(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    if p.writers.as_ref().is_some_and(|ws| !ws.contains(&user)) {
        return err(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let (Some(branch), Some(_message)) =
        (param(&params, "branch"), param(&params, "commit_message"))
    else {
        return err(
            StatusCode::BAD_REQUEST,
            "branch, commit_message are missing",
        );
    };
    if !p.files.contains_key(branch) {
        let Some(start) = param(&params, "start_branch")
            .and_then(|b| p.files.get(b))
            .cloned()
        else {
            return err(
                StatusCode::BAD_REQUEST,
                "You can only create or edit files when you are on a branch",
            );
        };
        p.files.insert(branch.to_string(), start);
    }
    let files = p.files.entry(branch.to_string()).or_default();
    if files.remove(&file_path).is_none() {
        return err(
            StatusCode::BAD_REQUEST,
            "A file with this name doesn't exist",
        );
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn show_branch(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path((project, branch)): Path<(String, String)>,
) -> Response {
    let w = s.lock();
    if let Err(r) = auth(&w, &headers) {
        return r;
    }
    match w.project(&project) {
        Some(p) if p.files.contains_key(&branch) => {
            axum::Json(json!({"name": branch, "merged": false, "protected": branch == "main", "default": branch == "main"})).into_response()
        }
        Some(_) => err(StatusCode::NOT_FOUND, "404 Branch Not Found"),
        None => err(StatusCode::NOT_FOUND, "404 Project Not Found"),
    }
}

async fn list_mrs(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path(project): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let w = s.lock();
    if let Err(r) = auth(&w, &headers) {
        return r;
    }
    let Some(p) = w.project(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    let source = param(&q, "source_branch");
    let state = param(&q, "state").filter(|s| *s != "all");
    let items: Vec<Value> = p
        .merge_requests
        .iter()
        .rev()
        .filter(|m| source.is_none_or(|b| m.source_branch == b))
        .filter(|m| state.is_none_or(|st| m.state == st))
        .map(|m| mr_json(&w, p, m))
        .collect();
    let base = format!("{}/api/v4/projects/{}/merge_requests", w.base_url, p.id);
    paginate(items, &q, &base)
}

/// `POST .../merge_requests`: 201; 409 when an open one exists for the source branch.
async fn create_mr(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path(project): Path<String>,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let params = body_params(&headers, &body);
    let ids = |key: &str| -> Vec<u64> {
        params
            .iter()
            .filter(|(k, _)| *k == format!("{key}[]") || k == key)
            .flat_map(|(_, v)| {
                v.split(',')
                    .filter_map(|x| x.trim().parse().ok())
                    .collect::<Vec<u64>>()
            })
            .collect()
    };
    let reviewers = ids("reviewer_ids");
    let mut assignees = ids("assignee_ids");
    assignees.extend(ids("assignee_id"));
    let Some(p) = w.project_mut(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    if p.writers.as_ref().is_some_and(|ws| !ws.contains(&user)) {
        return err(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let (Some(source), Some(target), Some(title)) = (
        param(&params, "source_branch"),
        param(&params, "target_branch"),
        param(&params, "title"),
    ) else {
        return err(
            StatusCode::BAD_REQUEST,
            "source_branch, target_branch, title are missing",
        );
    };
    if !p.files.contains_key(source) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"message": ["Source branch does not exist"]})),
        )
            .into_response();
    }
    if let Some(m) = p
        .merge_requests
        .iter()
        .find(|m| m.source_branch == source && m.state == "opened")
    {
        return (StatusCode::CONFLICT, axum::Json(json!({"message": [format!("Another open merge request already exists for this source branch: !{}", m.iid)]}))).into_response();
    }
    let mr = GlMergeRequest {
        iid: p.merge_requests.len() as u64 + 1,
        source_branch: source.to_string(),
        target_branch: target.to_string(),
        title: title.to_string(),
        description: param(&params, "description").unwrap_or("").to_string(),
        author: user,
        reviewer_ids: reviewers,
        assignee_ids: assignees,
        state: "opened".into(),
    };
    p.merge_requests.push(mr.clone());
    let Some(p) = w.project(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    (StatusCode::CREATED, axum::Json(mr_json(&w, p, &mr))).into_response()
}

async fn show_mr(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path((project, iid)): Path<(String, u64)>,
) -> Response {
    let w = s.lock();
    if let Err(r) = auth(&w, &headers) {
        return r;
    }
    let Some(p) = w.project(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    match p.merge_requests.iter().find(|m| m.iid == iid) {
        Some(m) => axum::Json(mr_json(&w, p, m)).into_response(),
        None => err(StatusCode::NOT_FOUND, "404 Not found"),
    }
}

fn err(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"message": message}))).into_response()
}

fn auth(w: &GitlabWorld, headers: &HeaderMap) -> Result<u64, Response> {
    let token = headers
        .get("private-token")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(String::from)
        });
    token
        .and_then(|t| w.users.iter().find(|u| u.token == t).map(|u| u.id))
        .ok_or_else(|| err(StatusCode::UNAUTHORIZED, "401 Unauthorized"))
}

/// Confidential issues are 404 for non-members, as on GitLab.
fn visible(p: &GlProject, i: &GlIssue, user: u64) -> bool {
    !i.confidential || p.members.as_ref().is_none_or(|m| m.contains(&user))
}

async fn me(State(s): State<GitlabServer>, headers: HeaderMap) -> Response {
    let w = s.lock();
    match auth(&w, &headers) {
        Ok(id) => {
            let mut u = w.user_json(id);
            if let Some(user) = w.user(id) {
                u["email"] = json!(user.email);
                u["is_admin"] = json!(user.admin);
            }
            axum::Json(u).into_response()
        }
        Err(r) => r,
    }
}

async fn users(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let w = s.lock();
    let viewer = match auth(&w, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let username = q
        .iter()
        .find(|(k, _)| k == "username")
        .map(|(_, v)| v.clone());
    let list: Vec<Value> = w
        .users
        .iter()
        .filter(|u| {
            username
                .as_ref()
                .is_none_or(|n| u.username.eq_ignore_ascii_case(n))
        })
        .map(|u| w.user_seen_by(u.id, viewer, false))
        .collect();
    axum::Json(list).into_response()
}

async fn user_by_id(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let w = s.lock();
    let viewer = match auth(&w, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match id.parse::<u64>().ok().and_then(|id| w.user(id)) {
        Some(u) => axum::Json(w.user_seen_by(u.id, viewer, true)).into_response(),
        None => err(StatusCode::NOT_FOUND, "404 User Not Found"),
    }
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
}

/// `order_by` of issues and notes: `Some(true)` for `updated_at`, `Some(false)`
/// for `created_at` (the default), `None` for anything else (GitLab answers 400;
/// issues have more keys, none of which the bot uses).
fn order_by(q: &[(String, String)]) -> Option<bool> {
    match param(q, "order_by") {
        None | Some("created_at") => Some(false),
        Some("updated_at") => Some(true),
        Some(_) => None,
    }
}

/// `sort`: `asc` or `desc` (the default); anything else is a 400.
fn ascending(q: &[(String, String)]) -> Option<bool> {
    match param(q, "sort") {
        None | Some("desc") => Some(false),
        Some("asc") => Some(true),
        Some(_) => None,
    }
}

/// Offset pagination with GitLab's headers (`x-next-page` empty on the last page, totals
/// dropped above 10,000 records, `Link` with prev/next/first/last).
fn paginate(items: Vec<Value>, q: &[(String, String)], base: &str) -> Response {
    paginate_with(items, q, base, |v| v)
}

/// As `paginate`, turning only the page's items into JSON (a listing of
/// 50,000 issues would otherwise render every one for each page).
fn paginate_with<T>(
    items: Vec<T>,
    q: &[(String, String)],
    base: &str,
    to_json: impl Fn(T) -> Value,
) -> Response {
    let per_page = param(q, "per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let page = param(q, "page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let total = items.len();
    let pages = total.div_ceil(per_page).max(1);
    let start = (page - 1) * per_page;
    let slice: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(per_page)
        .map(to_json)
        .collect();
    let next = if page < pages {
        (page + 1).to_string()
    } else {
        String::new()
    };
    let prev = if page > 1 {
        (page - 1).to_string()
    } else {
        String::new()
    };
    let query_without_page: String = q
        .iter()
        .filter(|(k, _)| k != "page")
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let link =
        |p: usize, rel: &str| format!("<{base}?{query_without_page}&page={p}>; rel=\"{rel}\"");
    let mut links = Vec::new();
    if page > 1 {
        links.push(link(page - 1, "prev"));
    }
    if page < pages {
        links.push(link(page + 1, "next"));
    }
    links.push(link(1, "first"));
    let mut headers = vec![
        ("x-page", page.to_string()),
        ("x-per-page", per_page.to_string()),
        ("x-next-page", next),
        ("x-prev-page", prev),
    ];
    if total <= 10_000 {
        links.push(link(pages, "last"));
        headers.push(("x-total", total.to_string()));
        headers.push(("x-total-pages", pages.to_string()));
    }
    let mut r = axum::Json(slice).into_response();
    for (k, v) in headers {
        if let Ok(v) = v.parse() {
            r.headers_mut().insert(k, v);
        }
    }
    if let Ok(v) = links.join(", ").parse() {
        r.headers_mut().insert("link", v);
    }
    r
}

async fn list_issues(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path(project): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(p) = w.project(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    let state = param(&q, "state").unwrap_or("all");
    let labels: Vec<&str> = param(&q, "labels")
        .map(|l| {
            l.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let updated_after = param(&q, "updated_after")
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .map(|d| d.with_timezone(&Utc));
    let created_before = param(&q, "created_before")
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .map(|d| d.with_timezone(&Utc));
    let mut list: Vec<&GlIssue> = p
        .issues
        .iter()
        .filter(|i| visible(p, i, user))
        .filter(|i| state == "all" || i.state == state)
        .filter(|i| match labels.as_slice() {
            ["None"] => i.labels.is_empty(),
            ["Any"] => !i.labels.is_empty(),
            ls => ls.iter().all(|l| i.labels.iter().any(|x| x == l)),
        })
        .filter(|i| updated_after.is_none_or(|t| i.updated_at >= t))
        .filter(|i| created_before.is_none_or(|t| i.created_at <= t))
        .collect();
    let Some(by_updated) = order_by(&q) else {
        return err(
            StatusCode::BAD_REQUEST,
            "400 (Bad request) \"order_by\" does not have a valid value",
        );
    };
    let Some(asc) = ascending(&q) else {
        return err(
            StatusCode::BAD_REQUEST,
            "400 (Bad request) \"sort\" does not have a valid value",
        );
    };
    list.sort_by_key(|i| {
        (
            if by_updated {
                i.updated_at
            } else {
                i.created_at
            },
            i.id,
        )
    });
    if !asc {
        list.reverse();
    }
    paginate_with(
        list,
        &q,
        &format!("{}/api/v4/projects/{}/issues", w.base_url, p.id),
        |i| w.issue_json(p, i),
    )
}

async fn show_issue(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path((project, iid)): Path<(String, u64)>,
) -> Response {
    let w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(p) = w.project(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    match p
        .issues
        .iter()
        .find(|i| i.iid == iid && visible(p, i, user))
    {
        Some(i) => axum::Json(w.issue_json(p, i)).into_response(),
        None => err(StatusCode::NOT_FOUND, "404 Issue Not Found"),
    }
}

/// Form-encoded (what the `gitlab` crate sends) or JSON.
fn body_params(headers: &HeaderMap, body: &Bytes) -> Vec<(String, String)> {
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    if is_json {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m
                .into_iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s,
                        Value::Array(a) => a
                            .iter()
                            .map(|x| {
                                x.as_str()
                                    .map(String::from)
                                    .unwrap_or_else(|| x.to_string())
                            })
                            .collect::<Vec<_>>()
                            .join(","),
                        other => other.to_string(),
                    };
                    (k, s)
                })
                .collect(),
            _ => Vec::new(),
        }
    } else {
        url::form_urlencoded::parse(body).into_owned().collect()
    }
}

fn split_labels(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

async fn create_issue(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path(project): Path<String>,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let params = body_params(&headers, &body);
    let Some(title) = param(&params, "title").map(String::from) else {
        return err(
            StatusCode::BAD_REQUEST,
            "400 (Bad request) \"title\" not given",
        );
    };
    let description = param(&params, "description").unwrap_or("").to_string();
    if description.chars().count() > crate::request::MAX_DESCRIPTION {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"message": {"description": ["is too long (maximum is 1048576 characters)"]}}))).into_response();
    }
    let labels = param(&params, "labels")
        .map(split_labels)
        .unwrap_or_default();
    let confidential = param(&params, "confidential") == Some("true");
    let Some(iid) = w.create_issue(&project, user, &title, &description, &labels, confidential)
    else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    let p = w.project(&project).cloned();
    match p
        .as_ref()
        .and_then(|p| p.issues.iter().find(|i| i.iid == iid).map(|i| (p, i)))
    {
        Some((p, i)) => (StatusCode::CREATED, axum::Json(w.issue_json(p, i))).into_response(),
        None => err(StatusCode::NOT_FOUND, "404 Issue Not Found"),
    }
}

async fn edit_issue(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path((project, iid)): Path<(String, u64)>,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let visible_issue = w
        .project(&project)
        .and_then(|p| {
            p.issues
                .iter()
                .find(|i| i.iid == iid)
                .map(|i| visible(p, i, user))
        })
        .unwrap_or(false);
    if !visible_issue {
        return err(StatusCode::NOT_FOUND, "404 Issue Not Found");
    }
    let params = body_params(&headers, &body);
    if let Some(d) = param(&params, "description") {
        if d.chars().count() > crate::request::MAX_DESCRIPTION {
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"message": {"description": ["is too long (maximum is 1048576 characters)"]}}))).into_response();
        }
        w.set_description(&project, iid, user, d);
    }
    if let Some(t) = param(&params, "title") {
        w.set_title(&project, iid, user, t);
    }
    let mut add: Vec<String> = param(&params, "add_labels")
        .map(split_labels)
        .unwrap_or_default();
    let mut remove: Vec<String> = param(&params, "remove_labels")
        .map(split_labels)
        .unwrap_or_default();
    if let Some(all) = param(&params, "labels") {
        let want = split_labels(all);
        let have = w
            .issue(&project, iid)
            .map(|i| i.labels.clone())
            .unwrap_or_default();
        remove.extend(have.iter().filter(|l| !want.contains(l)).cloned());
        add.extend(want.into_iter().filter(|l| !have.contains(l)));
    }
    if !add.is_empty() || !remove.is_empty() {
        // Without rights the change is silently dropped and the call still succeeds.
        let _ = w.change_labels(&project, iid, user, &add, &remove);
    }
    match param(&params, "state_event") {
        Some("close") => {
            w.set_state(&project, iid, user, true);
        }
        Some("reopen") => {
            w.set_state(&project, iid, user, false);
        }
        _ => {}
    }
    let p = w.project(&project).cloned();
    match p
        .as_ref()
        .and_then(|p| p.issues.iter().find(|i| i.iid == iid).map(|i| (p, i)))
    {
        Some((p, i)) => axum::Json(w.issue_json(p, i)).into_response(),
        None => err(StatusCode::NOT_FOUND, "404 Issue Not Found"),
    }
}

async fn list_notes(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path((project, iid)): Path<(String, u64)>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(p) = w.project(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    let Some(i) = p
        .issues
        .iter()
        .find(|i| i.iid == iid && visible(p, i, user))
    else {
        return err(StatusCode::NOT_FOUND, "404 Issue Not Found");
    };
    // GitLab's values only (400 otherwise); newest first by default.
    let Some(by_updated) = order_by(&q) else {
        return err(
            StatusCode::BAD_REQUEST,
            "400 (Bad request) \"order_by\" does not have a valid value",
        );
    };
    let Some(asc) = ascending(&q) else {
        return err(
            StatusCode::BAD_REQUEST,
            "400 (Bad request) \"sort\" does not have a valid value",
        );
    };
    let mut notes: Vec<&GlNote> = i.notes.iter().collect();
    notes.sort_by_key(|n| {
        (
            if by_updated {
                n.updated_at
            } else {
                n.created_at
            },
            n.id,
        )
    });
    if !asc {
        notes.reverse();
    }
    paginate_with(
        notes,
        &q,
        &format!("{}/api/v4/projects/{}/issues/{iid}/notes", w.base_url, p.id),
        |n| {
            json!({"id": n.id, "body": n.body, "author": w.user_json(n.author),
                   "created_at": ts(n.created_at), "updated_at": ts(n.updated_at),
                   "system": n.system, "noteable_id": i.id, "noteable_iid": i.iid,
                   "noteable_type": "Issue", "internal": false, "confidential": false, "resolvable": false})
        },
    )
}

async fn create_note(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path((project, iid)): Path<(String, u64)>,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let params = body_params(&headers, &body);
    let Some(text) = param(&params, "body")
        .filter(|b| !b.trim().is_empty())
        .map(String::from)
    else {
        return err(
            StatusCode::BAD_REQUEST,
            "400 (Bad request) \"body\" not given",
        );
    };
    let ok = w
        .project(&project)
        .and_then(|p| {
            p.issues
                .iter()
                .find(|i| i.iid == iid)
                .map(|i| visible(p, i, user))
        })
        .unwrap_or(false);
    if !ok {
        return err(StatusCode::NOT_FOUND, "404 Issue Not Found");
    }
    let (text, ran) = w.run_quick_actions(&project, iid, user, &text);
    if text.is_empty() {
        // Only quick actions: no note is created (GitLab answers 202).
        return (
            StatusCode::ACCEPTED,
            axum::Json(json!({"commands_changes": {}, "summary": ran})),
        )
            .into_response();
    }
    match w.add_note(&project, iid, user, &text) {
        Some(n) => {
            let issue_id = w.issue(&project, iid).map(|i| i.id).unwrap_or(0);
            (
                StatusCode::CREATED,
                axum::Json(json!({"id": n.id, "body": n.body, "author": w.user_json(n.author),
                    "created_at": ts(n.created_at), "updated_at": ts(n.updated_at), "system": false,
                    "noteable_id": issue_id, "noteable_iid": iid, "noteable_type": "Issue", "internal": false})),
            )
                .into_response()
        }
        None => err(StatusCode::NOT_FOUND, "404 Issue Not Found"),
    }
}

async fn edit_note(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path((project, iid, note)): Path<(String, u64, u64)>,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let params = body_params(&headers, &body);
    let Some(text) = param(&params, "body").map(String::from) else {
        return err(
            StatusCode::BAD_REQUEST,
            "400 (Bad request) \"body\" not given",
        );
    };
    let visible_issue = w
        .project(&project)
        .and_then(|p| {
            p.issues
                .iter()
                .find(|i| i.iid == iid)
                .map(|i| visible(p, i, user))
        })
        .unwrap_or(false);
    if !visible_issue {
        return err(StatusCode::NOT_FOUND, "404 Issue Not Found");
    }
    match w.edit_note(&project, iid, note, user, &text) {
        Ok(n) => axum::Json(
            json!({"id": n.id, "body": n.body, "author": w.user_json(n.author),
            "created_at": ts(n.created_at), "updated_at": ts(n.updated_at), "system": false}),
        )
        .into_response(),
        Err(StatusCode::FORBIDDEN) => err(StatusCode::FORBIDDEN, "403 Forbidden"),
        Err(_) => err(StatusCode::NOT_FOUND, "404 Note Not Found"),
    }
}

async fn label_events(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path((project, iid)): Path<(String, u64)>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let this = w.project(&project).map(|p| p.id);
    let pending = std::mem::take(&mut w.labels_on_events_read);
    let (now, later): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|(p, i, _, _)| *i == iid && w.project(p).map(|p| p.id) == this);
    w.labels_on_events_read = later;
    for (_, _, by, label) in now {
        let _ = w.change_labels(&project, iid, by, &[label], &[]);
    }
    let Some(p) = w.project(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    let Some(i) = p
        .issues
        .iter()
        .find(|i| i.iid == iid && visible(p, i, user))
    else {
        return err(StatusCode::NOT_FOUND, "404 Issue Not Found");
    };
    let items = i
        .label_events
        .iter()
        .map(|e| {
            json!({"id": e.id, "user": w.user_json(e.user), "created_at": ts(e.created_at),
                   "resource_type": "Issue", "resource_id": i.id,
                   "label": {"id": p.known_label_id(&e.label), "name": e.label, "color": "#34495E", "description": ""},
                   "action": if e.add { "add" } else { "remove" }})
        })
        .collect();
    paginate(
        items,
        &q,
        &format!(
            "{}/api/v4/projects/{}/issues/{iid}/resource_label_events",
            w.base_url, p.id
        ),
    )
}

/// `PUT /projects/:id/labels/:label_id` (the label by id or title) with `new_name`.
async fn edit_label(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path((project, label)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let params = body_params(&headers, &body);
    let description = param(&params, "description").map(String::from);
    let new = param(&params, "new_name").map(String::from);
    if new.is_none() && description.is_none() && param(&params, "color").is_none() {
        return err(
            StatusCode::BAD_REQUEST,
            "400 (Bad request) \"new_name\", \"color\", \"description\" are missing, at least one parameter must be provided",
        );
    }
    // By title, or by id (the registry's, or the one label events report).
    let by_id = w.project(&project).and_then(|p| {
        p.labels
            .iter()
            .find(|(n, id)| **n == label || id.to_string() == label)
            .map(|(n, _)| n.clone())
    });
    let old = by_id
        .or_else(|| {
            w.project(&project).and_then(|p| {
                p.issues
                    .iter()
                    .flat_map(|i| {
                        i.labels
                            .iter()
                            .chain(i.label_events.iter().map(|e| &e.label))
                    })
                    .find(|l| **l == label || p.known_label_id(l).to_string() == label)
                    .cloned()
            })
        })
        .unwrap_or(label);
    let name = match new {
        Some(new) => match w.rename_label(&project, user, &old, &new) {
            Ok(()) => new,
            Err((status, message)) => return err(status, message),
        },
        None => old,
    };
    let Some(p) = w.project_mut(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    let Some(id) = p.labels.get(&name).copied() else {
        return err(StatusCode::NOT_FOUND, "404 Label Not Found");
    };
    if p.label_editors.as_ref().is_some_and(|e| !e.contains(&user)) {
        return err(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    if let Some(d) = description {
        p.label_descriptions.insert(id, d);
    }
    let description = p.label_descriptions.get(&id).cloned();
    axum::Json(json!({"id": id, "name": name, "color": "#34495E", "description": description}))
        .into_response()
}

/// `GET /groups/:id/enterprise_users`: only a top-level group's Owners may
/// list them; each comes with their `email`.
async fn enterprise_users(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path(group): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let w = s.lock();
    let viewer = match auth(&w, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(g) = w
        .groups
        .iter()
        .find(|g| g.path == group || g.id.to_string() == group)
    else {
        return err(StatusCode::NOT_FOUND, "404 Group Not Found");
    };
    if !g.owners.contains(&viewer) {
        return err(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let username = param(&q, "username");
    let suffix = format!("@{}", g.domain);
    let items: Vec<Value> = w
        .users
        .iter()
        .filter(|u| u.email.to_ascii_lowercase().ends_with(&suffix))
        .filter(|u| username.is_none_or(|n| u.username.eq_ignore_ascii_case(n)))
        .map(|u| {
            let mut v = w.user_json(u.id);
            v["email"] = json!(u.email);
            v
        })
        .collect();
    paginate(
        items,
        &q,
        &format!("{}/api/v4/groups/{}/enterprise_users", w.base_url, g.id),
    )
}

/// `GET /projects/:id/labels`: every project label with its id.
async fn list_labels(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path(project): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let w = s.lock();
    if let Err(r) = auth(&w, &headers) {
        return r;
    }
    let Some(p) = w.project(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    let search = param(&q, "search").map(str::to_lowercase);
    let items: Vec<Value> = p
        .labels
        .iter()
        .filter(|(n, _)| search.as_ref().is_none_or(|s| n.to_lowercase().contains(s)))
        .map(|(n, id)| json!({"id": id, "name": n, "color": "#34495E", "description": p.label_descriptions.get(id)}))
        .collect();
    paginate(
        items,
        &q,
        &format!("{}/api/v4/projects/{}/labels", w.base_url, p.id),
    )
}

/// `POST /projects/:id/labels` (`name`, `color`): 409 when the name is taken.
async fn create_label(
    State(s): State<GitlabServer>,
    headers: HeaderMap,
    Path(project): Path<String>,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    let user = match auth(&w, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let params = body_params(&headers, &body);
    let (Some(name), Some(_color)) = (param(&params, "name"), param(&params, "color")) else {
        return err(
            StatusCode::BAD_REQUEST,
            "400 (Bad request) \"name\" or \"color\" not given",
        );
    };
    let name = name.to_string();
    let Some(p) = w.project_mut(&project) else {
        return err(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    if p.label_editors.as_ref().is_some_and(|e| !e.contains(&user)) {
        return err(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    if p.labels.contains_key(&name) {
        return (
            StatusCode::CONFLICT,
            axum::Json(json!({"message": "Label already exists"})),
        )
            .into_response();
    }
    let id = p.label_id(&name);
    if let Some(d) = param(&params, "description") {
        p.label_descriptions.insert(id, d.to_string());
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "name": name, "color": "#34495E", "description": p.label_descriptions.get(&id)})),
    )
        .into_response()
}

/// A quick-action line: `/command args`, the command in lower case.
fn quick_action(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('/')?;
    let (command, args) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
    let command = command.trim_end_matches('\r').to_ascii_lowercase();
    matches!(
        command.as_str(),
        "close" | "reopen" | "label" | "unlabel" | "assign"
    )
    .then(|| (command, args.trim().to_string()))
}

/// The labels of `/label` and `/unlabel`: `~name`, `~"two words"`, or a bare name.
fn label_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = args.trim();
    while !rest.is_empty() {
        let token = rest.strip_prefix('~').unwrap_or(rest);
        let (label, after) = match token.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((l, a)) => (l, a),
                None => (quoted, ""),
            },
            None => token.split_once(char::is_whitespace).unwrap_or((token, "")),
        };
        let label = label.trim();
        if !label.is_empty() && !out.iter().any(|l| l == label) {
            out.push(label.to_string());
        }
        rest = after.trim_start();
    }
    out
}
