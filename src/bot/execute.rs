//! Carry out an approved plan: each step is idempotent, recorded in the audit
//! trail as it completes, and the first failure stops the plan (the next cycle
//! re-reads the systems, so finished steps show as already done). Whatever the
//! plan says, the bot's own accounts, Zendesk admins and protected accounts
//! are never written to, and a self-service grant re-reads the account right
//! before it writes.

use std::collections::{BTreeMap, BTreeSet};

use crate::accounts::{AccountError, User, UserPatch};
use crate::approval::Approved;
use crate::plan::{AccountChange, Action, Expired, Observed, Plan, Step, StepState};
use crate::request::Email;
use crate::seats::ReviewerTicked;

use super::Bot;

#[derive(Debug, Default)]
pub struct ExecResult {
    pub done: BTreeSet<String>,
    /// The step that failed, the error, and whether trying again later may help.
    pub failed: Option<(Step, String, bool)>,
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Accounts(#[from] AccountError),
    #[error(transparent)]
    Groups(#[from] crate::groups::GroupError),
    #[error("{0}")]
    Other(String),
}

impl From<crate::accounts::ChangeError> for StepError {
    fn from(e: crate::accounts::ChangeError) -> StepError {
        match e {
            crate::accounts::ChangeError::System(e) => StepError::Accounts(e),
            crate::accounts::ChangeError::Refused(why) => StepError::Other(why),
        }
    }
}

impl StepError {
    fn transient(&self) -> bool {
        match self {
            StepError::Accounts(e) => e.is_transient(),
            StepError::Groups(e) => e.is_transient(),
            StepError::Other(_) => false,
        }
    }
}

impl Bot {
    pub(super) async fn execute(
        &self,
        project: &str,
        plan: &Approved<Plan>,
        observed: &Observed,
    ) -> ExecResult {
        let p = plan.inner();
        let approvers = plan
            .granted()
            .iter()
            .map(|g| format!("{}@{}", g.by.username, g.at.to_rfc3339()))
            .collect::<Vec<_>>()
            .join(", ");
        let approvers = if approvers.is_empty() {
            match p.kind {
                crate::request::RequestKind::RoleBasedEntitlement
                | crate::request::RequestKind::Offboarding => {
                    "trusted automation (pre-approved template)".to_string()
                }
                _ if p.self_service => "self-service (no approval required)".to_string(),
                _ => "no approval required".to_string(),
            }
        } else {
            approvers
        };
        let approvers = format!("{approvers}; plan {}", plan.plan().marker.digest);
        let mut ids: BTreeMap<(String, Email), u64> = BTreeMap::new();
        for ((inst, email), acc) in &observed.accounts {
            if let Some(a) = acc {
                ids.insert((inst.clone(), email.clone()), a.id);
            }
        }
        let steps: Vec<Step> = p
            .steps
            .iter()
            .filter(|s| s.state != StepState::AlreadyDone)
            .cloned()
            .collect();
        self.run_steps(
            project,
            p.iid,
            &steps,
            &approvers,
            &mut ids,
            observed,
            p.self_service,
        )
        .await
    }

    /// End a time-bound grant: only with the proof that its date has come,
    /// and only the changes it still owns. `n` numbers the grant on its issue
    /// (an issue can grant twice, under two plans).
    pub(super) async fn revoke_expired(
        &self,
        project: &str,
        expired: &Expired,
        n: usize,
        observed: &Observed,
    ) -> (Vec<Step>, ExecResult) {
        let steps: Vec<Step> = expired
            .undo()
            .iter()
            .enumerate()
            .map(|(i, a)| Step {
                key: format!(
                    "{}/{}/revoke-{n}-{i}",
                    expired.instance(),
                    expired.subject()
                ),
                subject: expired.subject().clone(),
                instance: expired.instance().to_string(),
                action: a.clone(),
                item: 0,
                state: StepState::ToDo,
            })
            .collect();
        let mut ids = BTreeMap::new();
        let r = self
            .run_steps(
                project,
                expired.iid(),
                &steps,
                &format!("expiry on {} of #{}", expired.expires(), expired.iid()),
                &mut ids,
                observed,
                false,
            )
            .await;
        (steps, r)
    }

    /// Reclaim an idle seat: only with the proof that a reviewer ticked its
    /// line, and only while this replica holds the project (`None`: it no
    /// longer does). The caller has re-read the account and writes the audit
    /// row.
    pub(super) async fn reclaim_seat(
        &self,
        project: &str,
        instance: &crate::accounts::Instance,
        ticked: &ReviewerTicked,
        account: &User,
        patch: &UserPatch,
    ) -> Result<Option<User>, AccountError> {
        if !self.may_write(project) {
            return Ok(None);
        }
        tracing::info!(
            user_id = account.id,
            reviewer = ticked.by(),
            line = ticked.item_text(),
            "reclaiming a seat"
        );
        if let Some(r) = &self.rehearsal {
            r.record(
                None,
                format!(
                    "reclaim the seat of {} (ticked by @{})",
                    account.email.as_deref().unwrap_or(&account.name),
                    ticked.by()
                ),
            );
            return Ok(Some(patch.applied_to(account)));
        }
        instance.api.update_user(account.id, patch).await.map(Some)
    }

    /// Make this bot a rehearsal (a dry run): it reads and decides as it
    /// would, and every write is recorded instead of made: on GitLab, on the
    /// account systems and group directories (here, in the executor), by
    /// e-mail and to ops. It works on a copy of the state database in
    /// memory, and holds no replica lease (it writes nothing to guard).
    /// Returns the record of what it would have written.
    pub fn rehearse(&mut self) -> Result<crate::rehearsal::Rehearsal, crate::store::StoreError> {
        let log = crate::rehearsal::Rehearsal::default();
        self.store = std::sync::Arc::new(self.store.copy_in_memory()?);
        self.gitlab = std::sync::Arc::new(crate::rehearsal::RehearsedGitlab::new(
            self.gitlab.clone(),
            log.clone(),
            self.me.clone(),
        ));
        self.mailer = self
            .mailer
            .as_ref()
            .map(|m| std::sync::Arc::new(m.rehearsed(log.clone())));
        let notifier = std::mem::replace(&mut self.notifier, crate::notify::Notifier::none());
        self.notifier = notifier.rehearsed(log.clone());
        self.lease = super::lease::ReplicaLease::unneeded(self.store.owner().to_string());
        self.rehearsal = Some(log.clone());
        Ok(log)
    }

    /// A rehearsal's writes not yet reported with an issue's outcome (ops
    /// notices, e-mails, review issues, labels); empty for a real run.
    pub fn rehearsal_rest(&self) -> Vec<String> {
        self.rehearsal
            .as_ref()
            .map(|r| r.take_all())
            .unwrap_or_default()
    }

    /// Whether this bot rehearses (a dry run), for what it prints about itself.
    pub fn rehearsing(&self) -> bool {
        self.rehearsal.is_some()
    }

    /// What a look at an issue comes to: in a rehearsal, the writes it would
    /// have made (when it would have made any); otherwise its outcome.
    pub(super) fn rehearsed_outcome(
        &self,
        project: &str,
        iid: u64,
        outcome: super::Outcome,
    ) -> super::Outcome {
        let Some(r) = &self.rehearsal else {
            return outcome;
        };
        let lines = r.take(project, iid);
        if lines.is_empty() {
            return outcome;
        }
        let written: String = lines.iter().map(|l| format!("{l}\n")).collect();
        match outcome {
            // A real run would fail here too: still a failure, with what it
            // would have written on the way.
            super::Outcome::Failed(why) => {
                super::Outcome::Failed(format!("{why}\nwould have written:\n{written}"))
            }
            _ => super::Outcome::Planned(written),
        }
    }

    /// Run steps in order, recording each in the audit trail before anything
    /// reports it; stop at the first failure. Reached only through a proof:
    /// an approved plan ([`Bot::execute`]) or an expired grant
    /// ([`Bot::revoke_expired`]).
    #[allow(clippy::too_many_arguments)]
    async fn run_steps(
        &self,
        project: &str,
        iid: u64,
        steps: &[Step],
        approvers: &str,
        ids: &mut BTreeMap<(String, Email), u64>,
        observed: &Observed,
        self_service: bool,
    ) -> ExecResult {
        let mut result = self
            .run_steps_unsynced(project, iid, steps, approvers, ids, observed, self_service)
            .await;
        // Each row was committed before the next write (a killed process
        // keeps it); one sync to disk for the run, before anything reports it.
        if !steps.is_empty()
            && let Err(e) = self.store.sync_audit()
        {
            tracing::error!(iid, error = %e, "cannot sync the audit trail to disk");
            if result.failed.is_none()
                && let Some(last) = steps.iter().rev().find(|s| result.done.contains(&s.key))
            {
                result.done.remove(&last.key);
                result.failed = Some((last.clone(), e.to_string(), true));
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_steps_unsynced(
        &self,
        project: &str,
        iid: u64,
        steps: &[Step],
        approvers: &str,
        ids: &mut BTreeMap<(String, Email), u64>,
        observed: &Observed,
        self_service: bool,
    ) -> ExecResult {
        let mut result = ExecResult::default();
        for step in steps {
            let before = observed
                .accounts
                .get(&(step.instance.clone(), step.subject.clone()))
                .map(|a| serde_json::to_string(a).unwrap_or_default())
                .unwrap_or_default();
            // Right before each write: this replica still holds the project.
            if !self.may_write(project) {
                result.failed = Some((
                    step.clone(),
                    "this replica no longer holds the project's lease; another may act now".into(),
                    true,
                ));
                return result;
            }
            let outcome = match self.guard(step, observed, self_service).await {
                Ok(()) => match &self.rehearsal {
                    // A rehearsal stops here: past every check, short of the write.
                    Some(r) => {
                        r.record(
                            Some((project, iid)),
                            format!("{}: {}: {}", step.instance, step.subject, step.action),
                        );
                        Ok("rehearsed".to_string())
                    }
                    None => self.step(step, ids, observed).await,
                },
                Err(e) => Err(e),
            };
            let (label, after) = match &outcome {
                Ok(after) => ("ok", after.clone()),
                Err(e) => ("failed", e.to_string()),
            };
            // Recorded before the next write and before it is reported
            // anywhere: the audit trail survives a crash.
            if let Err(e) = self.store.audit_unsynced(
                project,
                iid,
                step.subject.as_str(),
                &step.instance,
                &step.key,
                &before,
                &after,
                approvers,
                label,
            ) {
                tracing::error!(iid, error = %e, "cannot write the audit trail; stopping");
                result.failed = Some((step.clone(), e.to_string(), true));
                return result;
            }
            crate::metrics::step(label);
            match outcome {
                Ok(_) => {
                    tracing::info!(iid, step = %step.key, "done");
                    result.done.insert(step.key.clone());
                }
                Err(e) => {
                    tracing::warn!(iid, step = %step.key, error = %e, "step failed");
                    let transient = e.transient();
                    result.failed = Some((step.clone(), e.to_string(), transient));
                    return result;
                }
            }
        }
        result
    }

    /// The last check before a write: never the bot's own account, an admin or
    /// a protected account; a self-service grant only onto no account, an
    /// end-user or a light agent, and never a suspended one, as read right now.
    async fn guard(
        &self,
        step: &Step,
        observed: &Observed,
        self_service: bool,
    ) -> Result<(), StepError> {
        let protected = self
            .cfg
            .bot
            .protected
            .iter()
            .any(|p| Email::parse(p).is_ok_and(|p| p == step.subject));
        if protected || observed.protected.contains_key(&step.subject) {
            return Err(StepError::Other(format!(
                "{} is a protected account; the bot never changes it",
                step.subject
            )));
        }
        let observed_admin = observed
            .accounts
            .get(&(step.instance.clone(), step.subject.clone()))
            .and_then(|a| a.as_ref())
            .is_some_and(|a| a.role == "admin");
        if observed_admin {
            return Err(StepError::Other(format!(
                "{} is a Zendesk admin; the bot never changes an admin",
                step.subject
            )));
        }
        let grants_role = matches!(&step.action, Action::Account(c) if c.grants_role());
        if self_service && grants_role {
            let inst = self
                .instance(&step.instance)
                .map_err(|e| StepError::Other(e.to_string()))?;
            if let Some(u) = inst.api.find_user(&step.subject).await?
                && !u.open_to_self_service()
            {
                return Err(StepError::Other(format!(
                    "the account of {} changed since it was read (now role {}, suspended {}); a self-service request does not change it",
                    step.subject, u.role, u.suspended
                )));
            }
        }
        Ok(())
    }

    /// One step. Returns a short description of the state after it.
    async fn step(
        &self,
        step: &Step,
        ids: &mut BTreeMap<(String, Email), u64>,
        observed: &Observed,
    ) -> Result<String, StepError> {
        let change = match &step.action {
            Action::Membership(c) => {
                let groups = self.groups.of(&step.instance).ok_or_else(|| {
                    StepError::Other(format!(
                        "no group directory is configured for {}",
                        step.instance
                    ))
                })?;
                let done = groups.apply_change(c, step.subject.as_str()).await?;
                return Ok(format!("{}: {done:?}", c.group()));
            }
            Action::Account(c) => c,
        };
        let inst = self
            .instance(&step.instance)
            .map_err(|e| StepError::Other(e.to_string()))?;
        let key = (step.instance.clone(), step.subject.clone());
        let mut known = ids.get(&key).copied();
        let manager_email = match change {
            AccountChange::ReassignTickets {
                manager,
                manager_email,
            } => manager_email
                .clone()
                .or_else(|| observed.manager_emails.get(manager).cloned()),
            _ => None,
        };
        // The account system applies the change itself: the executor's
        // checks and audit row come first, and only the executor calls it.
        let r = inst
            .apply_change(
                &step.instance,
                &step.subject,
                change,
                &mut known,
                manager_email,
            )
            .await;
        if let Some(id) = known {
            ids.insert(key, id);
        }
        Ok(r?)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use mockall::Sequence;

    use crate::accounts::{
        AccountError, Accounts, BulkOutcome, Instance, MockAccountSystem, Resolved, Ticket, User,
    };
    use crate::approval::{self, Context, Decision, Directory, History, Record};
    use crate::bot::Bot;
    use crate::config::Config;
    use crate::gitlab::{ApiUser, MockGitlabApi};
    use crate::plan::{self, Account, Observed};
    use crate::policy::Requester;
    use crate::request::{IssueFacts, IssueInput, UserRef, parse_request};
    use crate::store::Store;

    fn user(id: u64, role: &str) -> User {
        User {
            id,
            name: "x".into(),
            email: None,
            role: role.into(),
            role_type: None,
            custom_role_id: if role == "agent" { Some(7) } else { None },
            suspended: false,
            tags: vec!["t".into()],
            user_fields: Default::default(),
            last_login_at: None,
        }
    }

    async fn offboard(zd: MockAccountSystem) -> super::ExecResult {
        let mut cfg = Config::parse(include_str!("../../bot.toml"), Path::new("bot.toml")).unwrap();
        cfg.google = None; // Zendesk only: the Okta group is another connector's business
        let body = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n| Casey Quinn | casey@gitlab.com | @cq | @mlee |\n\n- [ ]  @a: Remove the team member from Zendesk Global\n";
        let issue = IssueInput {
            iid: 1,
            title: "Offboarding: Casey Quinn".into(),
            description: body.into(),
            labels: vec!["offboarding".into()],
            author: UserRef {
                id: 2,
                username: "gitlab-employment-bot".into(),
            },
            author_email: None,
            author_name: None,
            web_url: String::new(),
            created_at: chrono::Utc::now(),
            updated_at: None,
            state: "opened".into(),
        };
        let facts = IssueFacts {
            issue: issue.clone(),
            label_events: vec![crate::request::LabelEvent {
                id: 1,
                user: UserRef {
                    id: 2,
                    username: "gitlab-employment-bot".into(),
                },
                created_at: chrono::Utc::now(),
                label: Some("offboarding".into()),
                label_id: None,
                action: crate::request::LabelAction::Add,
            }],
            notes: vec![],
        };
        let mut dir = Directory::new();
        dir.insert("gitlab-employment-bot", 2);
        let req = parse_request(&issue, &cfg).unwrap();
        let history = History {
            records: vec![Record {
                note_id: 1,
                at: chrono::Utc::now(),
                marker: crate::marker::Marker::new("plan", vec![], &req.digest()),
                content: String::new(),
            }],
            rejected: vec![],
        };
        let requester = Requester {
            username: "gitlab-employment-bot".into(),
            email: None,
        };
        let cx = Context {
            facts: &facts,
            cfg: &cfg,
            dir: &dir,
            bot_id: 1,
            history: &history,
            requester: &requester,
        };
        let Decision::Approved(approved) = approval::decide(req, &cx) else {
            panic!("not approved")
        };
        let mut obs = Observed::default();
        let casey = crate::request::Email::parse("casey@gitlab.com").unwrap();
        let mlee = crate::request::Email::parse("mlee@gitlab.com").unwrap();
        obs.accounts.insert(
            ("global".into(), casey),
            Some(Account {
                id: 10,
                role: "agent".into(),
                tags: vec!["t".into()],
                open_tickets: Some(2),
                ..Default::default()
            }),
        );
        obs.accounts.insert(
            ("global".into(), mlee.clone()),
            Some(Account {
                id: 11,
                role: "agent".into(),
                ..Default::default()
            }),
        );
        obs.manager_emails.insert("mlee".into(), mlee);
        let exec = plan::build(&approved, &obs, &cfg);
        let accounts = Accounts::from_instances([(
            "global".to_string(),
            Instance {
                api: Arc::new(zd),
                resolved: Resolved::default(),
            },
        )]);
        // GitLab holds the replica lease in a label's description.
        let mut gl = MockGitlabApi::new();
        let description = Arc::new(std::sync::Mutex::new(None::<String>));
        let label = |id: u64, name: &str, d: Option<String>| crate::gitlab::ProjectLabel {
            id,
            name: name.to_string(),
            description: d,
        };
        let read = description.clone();
        gl.expect_project_label().returning(move |_, name| {
            Ok(read
                .lock()
                .unwrap()
                .clone()
                .map(|d| label(7, name, Some(d))))
        });
        gl.expect_create_project_label()
            .returning(move |_, name, d| Ok(label(7, name, Some(d.to_string()))));
        let write = description.clone();
        gl.expect_set_label_description()
            .returning(move |_, id, d| {
                *write.lock().unwrap() = Some(d.to_string());
                Ok(label(id, "access-bot/lease", Some(d.to_string())))
            });
        let bot = Bot::from_parts(
            cfg,
            Arc::new(gl),
            accounts,
            Default::default(),
            Arc::new(Store::open(Path::new(":memory:")).unwrap()),
            ApiUser {
                id: 1,
                username: "access-bot".into(),
                name: None,
                email: None,
                public_email: None,
                is_admin: None,
            },
        )
        .unwrap();
        assert_eq!(
            bot.active("p").await.unwrap(),
            crate::bot::lease::Standing::Active
        );
        bot.execute("p", &exec, &obs).await
    }

    #[tokio::test]
    async fn tickets_are_handed_over_before_the_agent_is_demoted() {
        let mut zd = MockAccountSystem::new();
        let mut seq = Sequence::new();
        let tickets = vec![
            Ticket {
                id: 1,
                status: "open".into(),
                assignee_id: Some(10),
                group_id: None,
                updated_at: None,
            },
            Ticket {
                id: 2,
                status: "pending".into(),
                assignee_id: Some(10),
                group_id: None,
                updated_at: None,
            },
        ];
        zd.expect_find_user()
            .returning(|_| Ok(Some(user(11, "agent"))));
        zd.expect_memberships().returning(|_| Ok(vec![]));
        let t = tickets.clone();
        zd.expect_open_tickets()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(t.clone()));
        zd.expect_reassign()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|t, assignee, _| t.len() == 2 && *assignee == 11)
            .returning(|t, _, _| {
                Ok(BulkOutcome {
                    updated: t.iter().map(|t| t.id).collect(),
                    ..Default::default()
                })
            });
        zd.expect_open_tickets()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(vec![]));
        zd.expect_show_user().returning(|_| Ok(user(10, "agent")));
        zd.expect_remove_tags()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(vec![]));
        zd.expect_update_user()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|_, p| p.role.as_deref() == Some("end-user"))
            .returning(|_, _| Ok(user(10, "end-user")));
        zd.expect_update_user()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|_, p| p.suspended == Some(true))
            .returning(|_, _| Ok(user(10, "end-user")));
        let r = offboard(zd).await;
        assert!(r.failed.is_none(), "{:?}", r.failed);
        assert_eq!(r.done.len(), 4, "{:?}", r.done);
    }

    #[tokio::test]
    async fn a_failed_reassignment_stops_everything_after_it() {
        let mut zd = MockAccountSystem::new();
        zd.expect_find_user()
            .returning(|_| Ok(Some(user(11, "agent"))));
        zd.expect_memberships().returning(|_| Ok(vec![]));
        zd.expect_open_tickets().returning(|_| {
            Ok(vec![Ticket {
                id: 1,
                status: "open".into(),
                assignee_id: Some(10),
                group_id: None,
                updated_at: None,
            }])
        });
        zd.expect_reassign().returning(|_, _, _| {
            Err(AccountError::new(
                "Zendesk global: server error 503 after 5 attempts",
                true,
            ))
        });
        // Nothing else may be called: no tag removal, no demotion, no suspension.
        zd.expect_update_user().never();
        zd.expect_remove_tags().never();
        let r = offboard(zd).await;
        let (step, _, transient) = r.failed.unwrap();
        assert!(step.key.ends_with("reassign_tickets"));
        assert!(transient);
        assert!(r.done.is_empty());
    }
}
