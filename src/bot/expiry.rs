//! Time-bound access: a reminder before the date, and on the date the undo of
//! what the grant still owns, then a comment and a tick on the issue's
//! revocation item (`- [ ] Access revoked on expiry`).
//!
//! The undo was computed before the grant's first write, from the approved plan
//! and the state observed then. On the date the bot reads the account again and
//! takes back only what the grant still owns: what it set is still there, and
//! no other request in force gives it (a later permanent role, another
//! time-bound grant). Whatever it leaves, it says why.

use std::collections::{BTreeMap, BTreeSet};

use crate::approval::History;
use crate::comment::{self, NoteKind};
use crate::plan::{self, Action, GrantRecord, Observed};
use crate::request::{Email, IssueFacts, checklist};
use crate::store::Grant;

use super::writeback::{Section, Ticks, Writeback};
use super::{Bot, Outcome};

/// A grant record's block on the issue.
#[derive(serde::Deserialize)]
pub(super) struct RecordFile {
    pub(super) expires: chrono::NaiveDate,
    pub(super) grants: Vec<GrantRecord>,
}

/// A grant as stored: the record, or (older rows) the undo steps alone.
pub(super) fn record_of(g: &Grant) -> Option<GrantRecord> {
    let subject = Email::parse(&g.subject).ok()?;
    if let Ok(r) = serde_json::from_str::<GrantRecord>(&g.undo) {
        return Some(r);
    }
    let undo: Vec<Action> = serde_json::from_str(&g.undo).ok()?;
    Some(GrantRecord {
        subject,
        instance: g.instance.clone(),
        gives: Vec::new(),
        undo,
    })
}

impl Bot {
    /// The time-bound grants in force, read from their issues into the store
    /// (a cache): on every expiry check, so that a bot with an empty or lost
    /// store still ends every grant on its date. An issue carries the
    /// time-bound label from its grant record (written before the first
    /// change) until the grant is taken back. What cannot be read now is
    /// read on the next check.
    async fn adopt_grants_from_issues(&self) {
        let label = &self.cfg.bot.state_labels.time_bound;
        for project in &self.cfg.gitlab.projects {
            if !self.may_write(project) {
                continue;
            }
            let page = match self.gitlab.labelled_issues(project, label).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(project, error = %e, "cannot list the time-bound issues; next time");
                    continue;
                }
            };
            for issue in page.issues {
                if let Err(e) = self.adopt_grants_of(project, issue.iid).await {
                    tracing::warn!(iid = issue.iid, error = %e, "cannot read the issue's time-bound grants");
                }
            }
        }
    }

    async fn adopt_grants_of(&self, project: &str, iid: u64) -> Result<(), String> {
        let notes = self
            .gitlab
            .notes(project, iid)
            .await
            .map_err(|e| e.to_string())?;
        let history = History::read(&notes, self.me.id, &self.marker_key, project, iid);
        let found = self
            .adopt_grants_in(project, iid, &history, true)
            .map_err(|e| e.to_string())?;
        // The store's copies, read from the records before anyone edited
        // them, still say what to take back: each edited grant record needs
        // one (an issue can carry two grants, under two plans).
        let edited = history
            .rejected
            .iter()
            .filter_map(|(id, _)| notes.iter().find(|n| n.id == *id))
            .filter(|n| {
                crate::marker::Marker::peek(&n.body)
                    .is_some_and(|m| m.kind == NoteKind::Grant.as_str())
            })
            .count();
        let (copies, kept) = self.store.grants().map_or((0, false), |gs| {
            let mine: Vec<_> = gs
                .iter()
                .filter(|g| g.project == project && g.iid == iid)
                .collect();
            let plans: std::collections::BTreeSet<&str> =
                mine.iter().map(|g| g.plan.as_str()).collect();
            (plans.len(), mine.iter().any(|g| !g.revoked))
        });
        if grant_needs_ops(found, history.rejected.len(), edited, copies, kept) {
            // Labelled time-bound, yet no grant record verifies: someone
            // edited the bot's record. The bot cannot know what to take back;
            // it says so rather than forget the grant.
            let why = "this time-bound grant record was changed after the bot wrote it: ops must end this grant by hand";
            self.say_stopped(project, iid, why).await;
        }
        Ok(())
    }

    /// Adopt the grants recorded on an issue (the issue is the memory);
    /// returns how many grant records verify. `labelled`: the issue carries
    /// the time-bound label (then a grant is revoked only once it is gone).
    pub(super) fn adopt_grants_in(
        &self,
        project: &str,
        iid: u64,
        history: &History,
        labelled: bool,
    ) -> Result<usize, crate::store::StoreError> {
        let keys = history.keys();
        let mut found = 0;
        for r in history
            .records
            .iter()
            .filter(|r| r.marker.is(NoteKind::Grant))
        {
            let Some(plan) = r.marker.keys.iter().find_map(|k| k.strip_prefix("grant:")) else {
                continue;
            };
            let Some(file) = super::process::read_json_block::<RecordFile>(&r.content) else {
                tracing::warn!(
                    iid,
                    note = r.note_id,
                    "a grant record the bot cannot read; left alone"
                );
                continue;
            };
            found += 1;
            let said = |prefix: &str| {
                keys.contains(&crate::marker::clean(&format!("{prefix}:{}", file.expires)))
            };
            for g in &file.grants {
                self.store.adopt_grant(
                    &Grant {
                        project: project.to_string(),
                        iid,
                        plan: plan.to_string(),
                        subject: g.subject.to_string(),
                        instance: g.instance.clone(),
                        undo: serde_json::to_string(g).unwrap_or_default(),
                        expires: file.expires,
                        reminded: false,
                        revoked: false,
                    },
                    said("expiry-reminder"),
                    // Revoked only once the label is gone: an issue still
                    // labelled may lack its tick or label change (a crash
                    // after the note), and revoking again takes back
                    // nothing the grant no longer owns.
                    !labelled && said("expired"),
                )?;
            }
        }
        Ok(found)
    }

    /// A time-bound grant recorded on this issue is the grant, whatever the
    /// store lost and whoever removed the label since: the store adopts it,
    /// and the issue gets its label back until the grant is taken back.
    pub(super) async fn remember_grants(
        &self,
        project: &str,
        issue: &crate::gitlab::ApiIssue,
        history: &History,
    ) -> Result<(), super::process::ProcessError> {
        if !history.records.iter().any(|r| r.marker.is(NoteKind::Grant)) {
            return Ok(());
        }
        let label = &self.cfg.bot.state_labels.time_bound;
        let labelled = issue.labels.contains(label);
        self.adopt_grants_in(project, issue.iid, history, labelled)?;
        let keys = history.keys();
        let pending = history
            .records
            .iter()
            .filter(|r| r.marker.is(NoteKind::Grant))
            .filter_map(|r| super::process::read_json_block::<RecordFile>(&r.content))
            .any(|f| !keys.contains(&crate::marker::clean(&format!("expired:{}", f.expires))));
        if pending && !labelled {
            tracing::warn!(
                iid = issue.iid,
                "a time-bound grant's label was removed; restoring it"
            );
            let wb = Writeback {
                add_labels: vec![label.clone()],
                ..Default::default()
            };
            self.write_back(project, issue, history, wb).await?;
        }
        Ok(())
    }

    /// The expiry check: the grants on their issues, then the reminders and
    /// revocations that are due.
    pub(super) async fn expiries(&self) -> Vec<(String, u64, Outcome)> {
        self.adopt_grants_from_issues().await;
        let grants = match self.store.grants() {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the time-bound grants");
                return Vec::new();
            }
        };
        let before = self.cfg.lifecycle.expiry_reminder_before.chrono();
        let today = self.now().date_naive();
        let mut by_issue: BTreeMap<(String, u64), Vec<Grant>> = BTreeMap::new();
        // Only where this replica acts.
        for g in grants
            .into_iter()
            .filter(|g| !g.revoked && self.may_write(&g.project))
        {
            by_issue
                .entry((g.project.clone(), g.iid))
                .or_default()
                .push(g);
        }
        let mut out = Vec::new();
        for ((project, iid), grants) in by_issue {
            // Not while a task of this process works on the issue: the next check.
            let Some(_claim) = super::process::InFlight::enter(&self.in_flight, &project, iid)
            else {
                continue;
            };
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

    async fn issue_facts(
        &self,
        project: &str,
        iid: u64,
    ) -> Result<(crate::gitlab::ApiIssue, IssueFacts), crate::gitlab::GitlabError> {
        let issue = self.gitlab.issue(project, iid).await?;
        let notes = self.gitlab.notes(project, iid).await?;
        let facts = IssueFacts {
            issue: issue.to_input(),
            label_events: Vec::new(),
            notes,
        };
        Ok((issue, facts))
    }

    fn undo_line(&self, r: &GrantRecord, a: &Action) -> String {
        self.change_line(&r.subject, &r.instance, a)
    }

    /// One change to one person in one system, as a grant record and a
    /// revocation list it.
    pub(super) fn change_line(&self, subject: &Email, instance: &str, a: &Action) -> String {
        format!(
            "{} in {}: {}",
            crate::render::code_span(subject.as_str()),
            self.display(instance),
            a
        )
    }

    async fn remind(&self, project: &str, iid: u64, grants: &[Grant]) -> Outcome {
        let revocations: Vec<String> = grants
            .iter()
            .filter_map(record_of)
            .flat_map(|r| {
                r.undo
                    .iter()
                    .map(|a| self.undo_line(&r, a))
                    .collect::<Vec<_>>()
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
            let history = self.history(project, &facts).await;
            let wb = Writeback {
                kind: NoteKind::ExpiryReminder,
                sections: vec![Section {
                    comment: comment::ExpiryReminder {
                        expires: expires.clone(),
                        revocations,
                    }
                    .into(),
                    key: format!("expiry-reminder:{expires}"),
                }],
                ..Default::default()
            };
            self.write_back(project, &issue, &history, wb).await
        }
        .await;
        match result {
            Ok(_) => {
                if let Err(e) = self.store.mark_grant(project, iid, true, false) {
                    tracing::error!(iid, error = %e, "cannot record the reminder");
                }
                Outcome::Waiting
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    async fn revoke(&self, project: &str, iid: u64, grants: &[Grant]) -> Outcome {
        let expires = grants.iter().map(|g| g.expires).min().unwrap_or_default();
        let mut all_lines: Vec<comment::Revocation> = Vec::new();
        // Newest grant first, each against the accounts as they are after the
        // one before was undone (an issue can grant twice, under two plans).
        for (n, g) in grants.iter().enumerate() {
            let Some(record) = record_of(g) else {
                tracing::error!(iid, subject = %g.subject, "unreadable time-bound grant; left alone");
                continue;
            };
            // Read the account again: the grant may not own what it set any more.
            let now = match self.instance(&record.instance) {
                Ok(inst) => match super::observe::account(inst, &record.subject, false).await {
                    Ok(a) => a,
                    Err(e) => return Outcome::Failed(e.to_string()),
                },
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            let okta_group = record.undo.iter().find_map(|a| match a {
                Action::Membership(plan::MembershipChange::Remove { group }) => Some(group.clone()),
                _ => None,
            });
            let member = match (self.groups.of(&record.instance), &okta_group) {
                (Some(groups), Some(group)) => {
                    match groups.is_member(group, record.subject.as_str()).await {
                        Ok(m) => Some(m),
                        Err(e) => return Outcome::Failed(e.to_string()),
                    }
                }
                _ => None,
            };
            let held: BTreeSet<String> = match self.store.other_holdings(
                project,
                iid,
                record.subject.as_str(),
                &record.instance,
                expires,
            ) {
                Ok(h) => h.into_iter().map(|h| h.what).collect(),
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            let mut observed = Observed::default();
            observed.accounts.insert(
                (record.instance.clone(), record.subject.clone()),
                now.clone(),
            );
            let Some((expired, kept)) = plan::Expired::due(
                &self.cfg,
                iid,
                &record,
                expires,
                self.now().date_naive(),
                now.as_ref(),
                member,
                &held,
            ) else {
                // Not due (a clock that went back): nothing is taken back.
                return Outcome::Waiting;
            };
            let (steps, r) = self.revoke_expired(project, &expired, n, &observed).await;
            all_lines.extend(steps.iter().map(|s| comment::Revocation {
                done: r.done.contains(&s.key),
                kept: false,
                why: String::new(),
                text: self.change_line(&s.subject, &s.instance, &s.action),
            }));
            all_lines.extend(kept.into_iter().map(|(a, why)| comment::Revocation {
                done: false,
                kept: true,
                text: self.undo_line(&record, &a),
                why,
            }));
            if let Some((step, error, _)) = &r.failed {
                tracing::warn!(iid, step = %step.key, error = %error, "revocation incomplete; will retry at the next expiry check");
                return Outcome::Failed(error.clone());
            }
        }
        let result = async {
            let (issue, facts) = self.issue_facts(project, iid).await?;
            let history: History = self.history(project, &facts).await;
            let items = checklist::parse(&facts.issue.description);
            let ticks = items
                .iter()
                .filter(|i| {
                    i.state == checklist::CheckState::Open
                        && i.visible.to_lowercase().contains("revoked on expiry")
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
                kind: NoteKind::Expired,
                sections: vec![Section {
                    comment: comment::Expired {
                        expires: expires.to_string(),
                        revocations: all_lines,
                    }
                    .into(),
                    key: format!("expired:{expires}"),
                }],
                ticks: Ticks::ByText(ticks),
                remove_labels: vec![self.cfg.bot.state_labels.time_bound.clone()],
                ..Default::default()
            };
            self.write_back(project, &issue, &history, wb).await
        }
        .await;
        match result {
            Ok(_) => {
                if let Err(e) = self.store.mark_grant(project, iid, true, true) {
                    tracing::error!(iid, error = %e, "cannot record the revocation");
                }
                for g in grants {
                    if let Err(e) = self.store.end_holdings(
                        &g.subject,
                        &g.instance,
                        expires,
                        Some((project, iid)),
                    ) {
                        tracing::error!(iid, error = %e, "cannot end what the grant gave");
                    }
                }
                Outcome::Done
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

/// Whether ops must end a time-bound grant by hand: no grant record on the
/// issue verifies (`found`) while some bot note does not (`rejected`) and
/// the store holds nothing to take back (`kept`); or an edited grant record
/// (`edited`, one per plan) has no copy in the store (`copies`: the plans
/// whose grants the store holds).
fn grant_needs_ops(
    found: usize,
    rejected: usize,
    edited: usize,
    copies: usize,
    kept: bool,
) -> bool {
    let unreadable = found == 0 && rejected > 0 && !kept;
    unreadable || (edited > 0 && copies < found + edited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edited_grant_record_needs_ops_unless_the_store_has_its_copy() {
        // One grant, edited; the store has it: the bot revokes from its copy.
        assert!(!grant_needs_ops(0, 1, 1, 1, true));
        // One grant, edited; the store lost it.
        assert!(grant_needs_ops(0, 1, 1, 0, false));
        // Two grants (two plans), both edited; the store has the first only.
        assert!(grant_needs_ops(0, 2, 2, 1, true));
        // Two grants, one intact, one edited, both in the store.
        assert!(!grant_needs_ops(1, 1, 1, 2, true));
        // Nothing edited, nothing rejected.
        assert!(!grant_needs_ops(1, 0, 0, 1, true));
        // A bot note whose marker cannot even be read, and nothing to take back.
        assert!(grant_needs_ops(0, 1, 0, 0, false));
    }
}
