//! Time-bound access: a reminder before the date, and on the date the exact
//! undo of what was granted (recorded when it was granted), then a comment and
//! a tick on the issue's revocation item (`- [ ] Access revoked on expiry`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::plan::{Action, Observed, Step, StepState};
use crate::request::{Email, IssueFacts, checklist};
use crate::store::Grant;

use super::process::{Section, Writeback};
use super::{Bot, Outcome};

impl Bot {
    /// The bot's notion of now (tests move it forward).
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }

    /// Reminders and revocations that are due. Reads only the local store when nothing is due.
    pub(super) async fn expiries(&self) -> Vec<(String, u64, Outcome)> {
        if self.dry_run {
            return Vec::new();
        }
        let Ok(grants) = self.store.grants() else {
            return Vec::new();
        };
        let before = crate::config::parse_duration(&self.cfg.lifecycle.expiry_reminder_before)
            .ok()
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .unwrap_or(chrono::Duration::days(3));
        let today = self.now().date_naive();
        let mut by_issue: BTreeMap<(String, u64), Vec<Grant>> = BTreeMap::new();
        for g in grants.into_iter().filter(|g| !g.revoked) {
            by_issue
                .entry((g.project.clone(), g.iid))
                .or_default()
                .push(g);
        }
        let mut out = Vec::new();
        for ((project, iid), grants) in by_issue {
            let expires = grants.iter().map(|g| g.expires).min().unwrap_or(today);
            let outcome = if today >= expires {
                self.revoke(&project, iid, &grants).await
            } else if today + before >= expires && grants.iter().any(|g| !g.reminded) {
                self.remind(&project, iid, &grants).await
            } else {
                continue;
            };
            out.push((project, iid, outcome));
        }
        out
    }

    fn undo_steps(grants: &[Grant]) -> Vec<Step> {
        let mut steps = Vec::new();
        for g in grants {
            let Ok(subject) = Email::parse(&g.subject) else {
                continue;
            };
            let actions: Vec<Action> = serde_json::from_str(&g.undo).unwrap_or_default();
            for (i, a) in actions.into_iter().enumerate() {
                steps.push(Step {
                    key: format!("{}/{}/revoke-{i}", g.instance, subject),
                    subject: subject.clone(),
                    instance: g.instance.clone(),
                    action: a,
                    item: 0,
                    state: StepState::ToDo,
                });
            }
        }
        steps
    }

    async fn issue_facts(
        &self,
        project: &str,
        iid: u64,
    ) -> Result<(crate::gitlab::ApiIssue, IssueFacts), crate::gitlab::GitlabError> {
        let issue = self.gitlab.issue(project, iid).await?;
        let notes = self.gitlab.notes(project, iid).await?;
        let facts = IssueFacts {
            issue: issue.to_input(None),
            label_events: Vec::new(),
            notes,
        };
        Ok((issue, facts))
    }

    async fn remind(&self, project: &str, iid: u64, grants: &[Grant]) -> Outcome {
        let steps = Self::undo_steps(grants);
        let revocations: Vec<String> = steps
            .iter()
            .map(|s| {
                format!(
                    "{} in {}: {}",
                    crate::render::code_span(s.subject.as_str()),
                    self.display(&s.instance),
                    s.action.describe()
                )
            })
            .collect();
        let expires = grants
            .iter()
            .map(|g| g.expires)
            .min()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let result = async {
            let (issue, facts) = self.issue_facts(project, iid).await?;
            let wb = Writeback {
                sections: vec![Section {
                    template: "expiry_reminder.md",
                    ctx: json!({"expires": expires, "revocations": revocations}),
                    step: "expiry-reminder",
                    key: format!("expiry-reminder:{expires}"),
                    digest: String::new(),
                }],
                ..Default::default()
            };
            self.write_back(project, &issue, &facts, wb).await
        }
        .await;
        match result {
            Ok(()) => {
                let _ = self.store.mark_grant(project, iid, true, false);
                Outcome::Waiting
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    async fn revoke(&self, project: &str, iid: u64, grants: &[Grant]) -> Outcome {
        let steps = Self::undo_steps(grants);
        let expires = grants
            .iter()
            .map(|g| g.expires)
            .min()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let mut ids = BTreeMap::new();
        let r = self
            .run_steps(
                project,
                iid,
                &steps,
                &format!("expiry on {expires} of #{iid}"),
                &mut ids,
                &Observed::default(),
            )
            .await;
        let lines: Vec<serde_json::Value> = steps
            .iter()
            .map(|s| {
                json!({"done": r.done.contains(&s.key), "text": format!("{} in {}: {}", crate::render::code_span(s.subject.as_str()), self.display(&s.instance), s.action.describe())})
            })
            .collect();
        if let Some((step, error, _)) = &r.failed {
            tracing::warn!(iid, step = %step.key, error = %error, "revocation incomplete; will retry next cycle");
            return Outcome::Failed(error.clone());
        }
        let result = async {
            let (issue, facts) = self.issue_facts(project, iid).await?;
            let items = checklist::parse(&facts.issue.description);
            let ticks = items
                .iter()
                .filter(|i| {
                    i.state == checklist::CheckState::Open
                        && i.text.to_lowercase().contains("revoked on expiry")
                })
                .map(|i| {
                    (
                        i.text.clone(),
                        items
                            .iter()
                            .filter(|x| x.text == i.text && x.index < i.index)
                            .count(),
                    )
                })
                .collect();
            let wb = Writeback {
                sections: vec![Section {
                    template: "expired.md",
                    ctx: json!({"expires": expires, "revocations": lines}),
                    step: "expired",
                    key: format!("expired:{expires}"),
                    digest: String::new(),
                }],
                ticks,
                ..Default::default()
            };
            self.write_back(project, &issue, &facts, wb).await
        }
        .await;
        match result {
            Ok(()) => {
                let _ = self.store.mark_grant(project, iid, true, true);
                Outcome::Done
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    fn display(&self, instance: &str) -> String {
        self.cfg
            .zendesk
            .get(instance)
            .map(|z| z.display_name.clone())
            .unwrap_or_else(|| instance.to_string())
    }
}
