//! Acting as people in the sandbox, over HTTP with each person's own token, so
//! that the world records who did what exactly as GitLab would.

use serde_json::Value;

use super::{PROJECT, Sandbox};
use crate::marker::Marker;

#[derive(Debug, Clone)]
pub struct Comment {
    pub id: u64,
    pub author: String,
    pub body: String,
    pub marker: Option<Marker>,
}

impl Sandbox {
    fn client(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    fn issues_url(&self) -> String {
        format!(
            "http://{}/api/v4/projects/{}/issues",
            self.gitlab_addr,
            percent_encoding::utf8_percent_encode(PROJECT, percent_encoding::NON_ALPHANUMERIC)
        )
    }

    async fn put_issue(
        &self,
        user: &str,
        iid: u64,
        form: &[(&str, &str)],
    ) -> anyhow::Result<Value> {
        let r = self
            .client()
            .put(format!("{}/{iid}", self.issues_url()))
            .header("PRIVATE-TOKEN", self.token_of(user))
            .form(form)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "edit as {user}: {}", r.status());
        Ok(r.json().await?)
    }

    /// File an issue as `author`; labels set at creation are that person's label events.
    pub async fn file_issue(
        &self,
        author: &str,
        title: &str,
        labels: &[&str],
        body: &str,
    ) -> anyhow::Result<u64> {
        let r = self
            .client()
            .post(self.issues_url())
            .header("PRIVATE-TOKEN", self.token_of(author))
            .form(&[
                ("title", title),
                ("description", body),
                ("labels", &labels.join(",")),
                ("confidential", "true"),
            ])
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "file issue as {author}: {}",
            r.status()
        );
        let v: Value = r.json().await?;
        v["iid"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no iid in {v}"))
    }

    pub async fn add_label(&self, user: &str, iid: u64, label: &str) -> anyhow::Result<()> {
        self.put_issue(user, iid, &[("add_labels", label)])
            .await
            .map(|_| ())
    }

    pub async fn remove_label(&self, user: &str, iid: u64, label: &str) -> anyhow::Result<()> {
        self.put_issue(user, iid, &[("remove_labels", label)])
            .await
            .map(|_| ())
    }

    pub async fn edit_description(&self, user: &str, iid: u64, text: &str) -> anyhow::Result<()> {
        self.put_issue(user, iid, &[("description", text)])
            .await
            .map(|_| ())
    }

    pub async fn close_issue(&self, user: &str, iid: u64) -> anyhow::Result<()> {
        self.put_issue(user, iid, &[("state_event", "close")])
            .await
            .map(|_| ())
    }

    /// Edit a note as `user` (its author or a project maintainer, as on GitLab).
    pub async fn edit_note_as(
        &self,
        user: &str,
        iid: u64,
        note: u64,
        body: &str,
    ) -> anyhow::Result<()> {
        let r = self
            .client()
            .put(format!("{}/{iid}/notes/{note}", self.issues_url()))
            .header("PRIVATE-TOKEN", self.token_of(user))
            .form(&[("body", body)])
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "edit note as {user}: {}",
            r.status()
        );
        Ok(())
    }

    pub async fn edit_title(&self, user: &str, iid: u64, title: &str) -> anyhow::Result<()> {
        self.put_issue(user, iid, &[("title", title)])
            .await
            .map(|_| ())
    }

    /// Everything Zendesk and Google hold, as text: the same text before and
    /// after means the bot changed nothing anywhere.
    pub fn target_state(&self) -> String {
        let mut out = String::new();
        for name in self.zendesk.keys() {
            let w = self.zd(name);
            out.push_str(&format!(
                "zendesk {name}\nusers {:?}\nmemberships {:?}\ntickets {:?}\n",
                w.users, w.memberships, w.tickets
            ));
        }
        let g = self.google.lock();
        out.push_str(&format!("google {:?}\n", g.groups));
        let o = self.okta.lock();
        let okta: Vec<_> = o.groups.values().map(|g| (&g.name, &g.members)).collect();
        out.push_str(&format!("okta {okta:?}\n"));
        out
    }

    pub async fn comment_as(&self, user: &str, iid: u64, body: &str) -> anyhow::Result<()> {
        let r = self
            .client()
            .post(format!("{}/{iid}/notes", self.issues_url()))
            .header("PRIVATE-TOKEN", self.token_of(user))
            .form(&[("body", body)])
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "comment as {user}: {}", r.status());
        Ok(())
    }

    /// Current description of an issue.
    pub fn description(&self, iid: u64) -> String {
        self.gitlab
            .lock()
            .issue(PROJECT, iid)
            .and_then(|i| i.description.clone())
            .unwrap_or_default()
    }

    pub fn labels(&self, iid: u64) -> Vec<String> {
        self.gitlab
            .lock()
            .issue(PROJECT, iid)
            .map(|i| i.labels.clone())
            .unwrap_or_default()
    }

    pub fn state(&self, iid: u64) -> String {
        self.gitlab
            .lock()
            .issue(PROJECT, iid)
            .map(|i| i.state.clone())
            .unwrap_or_default()
    }

    /// Non-system comments on an issue, oldest first.
    pub fn comments(&self, iid: u64) -> Vec<Comment> {
        let w = self.gitlab.lock();
        let Some(issue) = w.issue(PROJECT, iid) else {
            return Vec::new();
        };
        issue
            .notes
            .iter()
            .filter(|n| !n.system)
            .map(|n| Comment {
                id: n.id,
                author: w
                    .user(n.author)
                    .map(|u| u.username.clone())
                    .unwrap_or_default(),
                body: n.body.clone(),
                marker: Marker::peek(&n.body),
            })
            .collect()
    }

    /// The bot's comments on an issue, oldest first.
    pub fn bot_comments(&self, iid: u64) -> Vec<Comment> {
        let bot = self.config.gitlab.bot_username.clone();
        self.comments(iid)
            .into_iter()
            .filter(|c| c.author == bot)
            .collect()
    }

    /// Texts of the checklist items that are ticked.
    pub fn ticked(&self, iid: u64) -> Vec<String> {
        crate::request::checklist::parse(&self.description(iid))
            .into_iter()
            .filter(|i| i.state == crate::request::CheckState::Done)
            .map(|i| i.text)
            .collect()
    }

    pub fn google_member(&self, group: &str, email: &str) -> bool {
        self.google.lock().is_member(group, email)
    }

    /// Does the directory holding `group` (Google or Okta, as configured) list
    /// `email` as a member?
    pub fn group_member(&self, group: &str, email: &str) -> bool {
        match self.backend {
            super::GroupBackend::Google => self.google_member(group, email),
            _ => self.okta.lock().is_member(group, email),
        }
    }

    /// Members of `group` in the directory holding it.
    pub fn group_members(&self, group: &str) -> Vec<String> {
        match self.backend {
            super::GroupBackend::Google => self.google.lock().members(group),
            _ => self.okta.lock().members(group),
        }
    }

    /// Seed a membership in the directory holding `group`.
    pub fn seed_group_member(&self, group: &str, email: &str) {
        match self.backend {
            super::GroupBackend::Google => self.google.lock().add_member(group, email),
            _ => self.okta.lock().add_member(group, email),
        }
    }

    /// A new person of the company: a user of the Google domain and of the Okta org.
    pub fn add_directory_user(&self, email: &str) {
        self.google.lock().users.insert(email.to_ascii_lowercase());
        self.okta.lock().add_user(email);
    }

    /// The fault knobs of the directory holding the app groups.
    pub fn group_knobs(&self) -> &super::faults::Knobs {
        match self.backend {
            super::GroupBackend::Google => &self.google_knobs,
            _ => &self.okta_knobs,
        }
    }

    /// The path prefix of that directory's membership writes (for fault scripts).
    pub fn group_write_route(&self, method: &str) -> String {
        match self.backend {
            super::GroupBackend::Google => format!("{method} /admin/directory"),
            _ => format!("{method} /api/v1/groups"),
        }
    }
}

impl Sandbox {
    /// The real bot, connected over HTTP to this sandbox, with a fresh in-memory store.
    pub async fn bot(&self) -> anyhow::Result<crate::bot::Bot> {
        let store =
            std::sync::Arc::new(crate::store::Store::open(std::path::Path::new(":memory:"))?);
        self.bot_with_store(store).await
    }

    pub async fn bot_with_store(
        &self,
        store: std::sync::Arc<crate::store::Store>,
    ) -> anyhow::Result<crate::bot::Bot> {
        // Fast job polls: the sandbox's jobs complete after two polls.
        let bot = crate::bot::Bot::connect_with(
            self.config.clone(),
            &self.secrets,
            store,
            std::time::Duration::from_millis(5),
        )
        .await?;
        // As `run` does behind its listeners: approvers known before the first issue.
        bot.warm_up().await;
        Ok(bot)
    }
}

/// Run the bot until a pass finds nothing to do (at most `max` passes), as a
/// daemon would for a while: the first pass is every event once (`once`:
/// poll, stale scan, expiries, merge-request follow-ups), the rest are polls.
/// Returns every report.
pub async fn run_until_quiet(bot: &crate::bot::Bot, max: usize) -> Vec<crate::bot::CycleReport> {
    let mut reports = Vec::new();
    for pass in 0..max {
        let r = if pass == 0 {
            bot.once().await
        } else {
            bot.cycle().await
        };
        let quiet = r.outcomes.is_empty() && r.errors.is_empty();
        reports.push(r);
        if quiet {
            break;
        }
    }
    reports
}
