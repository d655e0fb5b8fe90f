//! One issue, one cycle: read, decide, act, report. At most one new comment
//! (sections joined, each with its own marker) and one description edit
//! (ticks, state label, close) per issue per cycle.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::approval::{self, Decision, Directory};
use crate::gitlab::{ApiIssue, IssueEdit};
use crate::marker::{Marker, short_hash};
use crate::plan::{self, Action, BlockReason, Observed, Plan, StepState};
use crate::report;
use crate::request::{self, IssueFacts, Request, RequestKind, checklist};

use crate::notify::{Notice, NoticeKind};

use super::observe::ObserveError;
use super::{Bot, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Gitlab(#[from] crate::gitlab::GitlabError),
    #[error(transparent)]
    Observe(#[from] ObserveError),
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A comment section to post (if its key is not on the issue yet).
pub(super) struct Section {
    pub template: &'static str,
    pub ctx: Value,
    pub step: &'static str,
    pub key: String,
    pub digest: String,
}

/// What to write back to the issue at the end of the cycle.
#[derive(Default)]
pub(super) struct Writeback {
    pub sections: Vec<Section>,
    /// (item text, occurrence among items with that text) to tick.
    pub ticks: Vec<(String, usize)>,
    pub state_label: Option<String>,
    pub close: bool,
}

fn occurrence(req: &Request, index: usize) -> Option<(String, usize)> {
    let item = req.items.iter().find(|i| i.index == index)?;
    let n = req
        .items
        .iter()
        .filter(|i| i.text == item.text && i.index < index)
        .count();
    Some((item.text.clone(), n))
}

impl Bot {
    /// Tell ops (Slack and/or e-mail), de-duplicated; never in a dry run.
    pub(super) async fn tell_ops(
        &self,
        kind: NoticeKind,
        cause: String,
        detail: String,
        url: Option<String>,
    ) {
        if self.dry_run {
            return;
        }
        self.notifier
            .notice(
                &self.store,
                &self.templates,
                Notice {
                    kind,
                    cause,
                    detail,
                    url,
                },
            )
            .await;
    }

    /// Process one issue under its lease; failures are remembered for retry.
    pub async fn process(&self, project: &str, iid: u64) -> Outcome {
        if !self.dry_run {
            match self
                .store
                .try_lease(project, iid, chrono::Duration::minutes(15))
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(iid, "another runner is working on this issue; skipping");
                    return Outcome::Busy;
                }
                Err(e) => return Outcome::Failed(e.to_string()),
            }
        }
        // Every line logged while working on the issue carries its iid (connectors included).
        let span = tracing::info_span!("issue", iid, project);
        let outcome =
            match tracing::Instrument::instrument(self.process_inner(project, iid), span).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(iid, error = %e, "giving up on this issue for this cycle");
                    Outcome::Failed(e.to_string())
                }
            };
        if !self.dry_run {
            let _ = match &outcome {
                Outcome::Failed(why) => self.store.add_retry(project, iid, why),
                _ => self.store.clear_retry(project, iid),
            };
            let _ = self.store.release(project, iid);
        }
        tracing::info!(iid, outcome = ?outcome, "processed");
        outcome
    }

    async fn facts(
        &self,
        project: &str,
        issue: &ApiIssue,
        kind: Option<RequestKind>,
    ) -> Result<IssueFacts, ProcessError> {
        let author = if kind == Some(RequestKind::LightAgent) {
            self.user(&issue.author.username).await
        } else {
            None
        };
        let notes = self.gitlab.notes(project, issue.iid).await?;
        let label_events = self.gitlab.label_events(project, issue.iid).await?;
        Ok(IssueFacts {
            issue: issue.to_input(author.as_ref()),
            label_events,
            notes,
        })
    }

    /// The issue and its notes, without label events: enough for work that
    /// decides from notes and markers (seat reviews, merge-request follow-ups).
    pub(super) async fn notes_only(
        &self,
        project: &str,
        issue: &ApiIssue,
    ) -> Result<IssueFacts, ProcessError> {
        Ok(IssueFacts {
            issue: issue.to_input(None),
            label_events: Vec::new(),
            notes: self.gitlab.notes(project, issue.iid).await?,
        })
    }

    async fn directory(&self, req: &Request) -> Directory {
        let mut d = Directory::new();
        d.insert(&self.me.username, self.me.id);
        for u in Directory::wanted(req, &self.cfg) {
            if let Some(user) = self.user(&u).await {
                d.insert(&user.username, user.id);
            }
        }
        d
    }

    async fn process_inner(&self, project: &str, iid: u64) -> Result<Outcome, ProcessError> {
        let issue = self.gitlab.issue(project, iid).await?;
        if issue.state != "opened" {
            return Ok(Outcome::Ignored);
        }
        // A seat review the bot opened: reviewers' ticks, not a request.
        if let Some((instance, period)) = self.store.seat_review_of(project, iid)? {
            if self.dry_run {
                return Ok(Outcome::Planned(format!(
                    "seat review {instance} {period}: would reclaim the seats whose lines a reviewer ticked\n"
                )));
            }
            return self
                .process_seat_review(project, &issue, &instance, &period)
                .await;
        }
        let probe = issue.to_input(None);
        let Some(kind) = request::classify(&probe, &self.cfg) else {
            return Ok(Outcome::Ignored);
        };
        let facts = self.facts(project, &issue, Some(kind)).await?;
        let mut wb = Writeback::default();
        let labels = &self.cfg.bot.state_labels;

        let outcome = match request::parse_request(&facts.issue, &self.cfg) {
            Err(errors) => {
                let texts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                wb.sections.push(Section {
                    template: "invalid.md",
                    ctx: json!({"errors": texts}),
                    step: "invalid",
                    key: format!("invalid:{}", short_hash(&texts.join("\n"))),
                    digest: String::new(),
                });
                wb.state_label = Some(labels.refused.clone());
                Outcome::Refused
            }
            Ok(req) => {
                let dir = self.directory(&req).await;
                let decision = approval::decide(req, &facts, &self.cfg, &dir, self.me.id);
                self.decided(project, &facts, decision, &mut wb).await?
            }
        };
        if self.dry_run {
            return Ok(outcome);
        }
        self.write_back(project, &issue, &facts, wb).await?;
        Ok(outcome)
    }

    async fn decided(
        &self,
        project: &str,
        facts: &IssueFacts,
        decision: Decision,
        wb: &mut Writeback,
    ) -> Result<Outcome, ProcessError> {
        let labels = &self.cfg.bot.state_labels;
        match decision {
            Decision::Refused {
                request,
                reasons,
                close,
                security,
            } => {
                if security {
                    tracing::warn!(iid = request.iid, reasons = ?reasons, "refused for a security reason");
                    self.tell_ops(
                        NoticeKind::SecurityRefusal,
                        format!("#{} {}", request.iid, reasons.join("; ")),
                        format!("#{} was refused: {}", request.iid, reasons.join("; ")),
                        Some(request.web_url.clone()),
                    )
                    .await;
                }
                wb.sections.push(Section {
                    template: if close {
                        "citizenship_denied.md"
                    } else {
                        "refused.md"
                    },
                    ctx: json!({"reasons": reasons, "close": close}),
                    step: "refused",
                    key: format!(
                        "refused:{}:{}",
                        request.digest(),
                        short_hash(&reasons.join("\n"))
                    ),
                    digest: request.digest(),
                });
                wb.state_label = Some(labels.refused.clone());
                wb.close = close;
                Ok(Outcome::Refused)
            }
            Decision::Waiting {
                request,
                missing,
                granted,
                verification_pending,
            } => {
                let digest = request.digest();
                let plans = approval::plan_comments(facts, self.me.id);
                let current = plans.last().is_some_and(|(_, d)| *d == digest);
                if self.dry_run {
                    let plan = plan::preview(&request, &Observed::default(), &self.cfg);
                    let view =
                        report::plan_view(&request, &plan, &self.cfg, &missing, &granted, false);
                    return Ok(Outcome::Planned(self.templates.render("plan.md", &view)?));
                }
                if !current {
                    let observed = self.observe(&request).await?;
                    let plan = plan::preview(&request, &observed, &self.cfg);
                    let view = report::plan_view(
                        &request,
                        &plan,
                        &self.cfg,
                        &missing,
                        &granted,
                        !plans.is_empty(),
                    );
                    wb.sections.push(Section {
                        template: "plan.md",
                        ctx: serde_json::to_value(&view).unwrap_or_default(),
                        step: "plan",
                        key: format!("plan:{digest}"),
                        digest: digest.clone(),
                    });
                } else if missing
                    .iter()
                    .any(|m| m.missing != approval::Missing::NotApplied)
                {
                    // Something happened that does not count: say why, once per situation.
                    let views = report::missing_views(&missing);
                    let sig: Vec<String> = views
                        .iter()
                        .map(|v| format!("{}{}", v.label, v.detail))
                        .collect();
                    wb.sections.push(Section {
                        template: "waiting.md",
                        ctx: json!({"kind": request.kind.human(), "missing": views, "granted": report::granted_views(&granted)}),
                        step: "waiting",
                        key: format!("waiting:{digest}:{}", short_hash(&sig.join("\n"))),
                        digest: digest.clone(),
                    });
                    if missing.iter().any(|m| m.missing.is_security()) {
                        tracing::warn!(
                            iid = request.iid,
                            "an approval was applied by someone who may not give it"
                        );
                        self.tell_ops(
                            NoticeKind::SecurityRefusal,
                            format!("#{} {}", request.iid, sig.join("; ")),
                            format!(
                                "#{}: an approval does not count: {}",
                                request.iid,
                                views
                                    .iter()
                                    .map(|v| format!("{} {}", v.label, v.detail))
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            ),
                            Some(request.web_url.clone()),
                        )
                        .await;
                    }
                }
                if verification_pending {
                    let rule = self
                        .cfg
                        .approvals
                        .values()
                        .find(|r| r.denied_label.is_some());
                    let name = request
                        .subjects
                        .first()
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    wb.sections.push(Section {
                        template: "citizenship_request.md",
                        ctx: json!({
                            "name": name,
                            "issue_url": request.web_url,
                            "verifiers": rule.map(|r| r.approvers.iter().map(|a| format!("`@{}`", a.trim_start_matches('@'))).collect::<Vec<_>>().join(", ")),
                            "verified_label": rule.map(|r| r.label.clone()),
                            "denied_label": rule.and_then(|r| r.denied_label.clone()),
                        }),
                        step: "citizenship",
                        key: "citizenship".into(),
                        digest: digest.clone(),
                    });
                    if let Err(e) = self
                        .citizenship_email(project, &request, &name, &digest, wb)
                        .await?
                    {
                        wb.state_label = Some(labels.waiting.clone());
                        return Ok(Outcome::Failed(e));
                    }
                }
                wb.state_label = Some(labels.waiting.clone());
                self.stale(facts, &request, &missing, wb);
                Ok(Outcome::Waiting)
            }
            Decision::Approved(approved) => {
                let author = if approved.request().kind == RequestKind::LightAgent {
                    self.user(&facts.issue.author.username).await
                } else {
                    None
                };
                self.approved(project, approved, author, wb).await
            }
        }
    }

    /// Seed 001: the People team gets the verification request by e-mail, once
    /// per issue (recorded in the store the moment the server accepts it, so a
    /// crash before the note does not send it again), and the issue says so.
    /// `Ok(Err(_))`: the server refused; said on the issue, retried next cycle.
    async fn citizenship_email(
        &self,
        project: &str,
        request: &Request,
        name: &str,
        digest: &str,
        wb: &mut Writeback,
    ) -> Result<Result<(), String>, ProcessError> {
        let Some(m) = &self.mailer else {
            return Ok(Ok(()));
        };
        if m.people_team.is_empty() {
            return Ok(Ok(()));
        }
        let key = format!("citizenship-email:{project}:{}", request.iid);
        let to = m.people_team.join(", ");
        if !self.store.delivered(&key)? {
            let body = self.templates.render(
                "citizenship_email.txt",
                &json!({"name": name, "issue_url": request.web_url}),
            )?;
            let id = format!(
                "<citizenship-{}-{}@access-bot>",
                short_hash(project),
                request.iid
            );
            match m
                .send(
                    &m.people_team,
                    "US Citizenship Verification Request",
                    &body,
                    &id,
                )
                .await
            {
                Ok(()) => {
                    self.store.record_delivery(&key, &to)?;
                    tracing::info!(iid = request.iid, to = %to, "citizenship verification e-mail sent");
                }
                Err(e) => {
                    tracing::warn!(iid = request.iid, error = %e, "citizenship verification e-mail not sent");
                    wb.sections.push(Section {
                        template: "email_failed.md",
                        ctx: json!({"to": to, "error": e.to_string()}),
                        step: "email",
                        key: format!("email-failed:{}", short_hash(&e.to_string())),
                        digest: digest.to_string(),
                    });
                    return Ok(Err(format!("e-mail to the People team: {e}")));
                }
            }
        }
        wb.sections.push(Section {
            template: "email_sent.md",
            ctx: json!({"to": to, "subject": "US Citizenship Verification Request"}),
            step: "email",
            key: "citizenship-email".into(),
            digest: digest.to_string(),
        });
        Ok(Ok(()))
    }

    async fn approved(
        &self,
        project: &str,
        approved: approval::Approved<Request>,
        author: Option<crate::gitlab::ApiUser>,
        wb: &mut Writeback,
    ) -> Result<Outcome, ProcessError> {
        let labels = &self.cfg.bot.state_labels;
        let req = approved.request();
        let digest = approved.digest().to_string();
        let observed = self.observe(req).await?;
        let exec = plan::build(&approved, &observed, &self.cfg);
        let p = exec.plan();
        if self.dry_run {
            let view = report::plan_view(req, p, &self.cfg, &[], approved.granted(), false);
            return Ok(Outcome::Planned(self.templates.render("plan.md", &view)?));
        }

        // Blocked because the person has no account yet: change nothing at all.
        let needs_account: Vec<_> = p
            .blocked
            .iter()
            .filter(|b| b.reason == BlockReason::NeedsAccountFirst)
            .collect();
        if !needs_account.is_empty() {
            let people: Vec<Value> = needs_account
                .iter()
                .map(|b| {
                    let name = req.subjects.iter().find(|s| s.email == b.subject).map(|s| s.name.clone()).unwrap_or_default();
                    json!({"name": name, "email": b.subject.as_str(), "system": self.cfg.zendesk[&b.instance].display_name})
                })
                .collect();
            wb.sections.push(Section {
                template: "needs_account_first.md",
                ctx: json!({"people": people}),
                step: "needs-account",
                key: format!("needs-account:{digest}"),
                digest,
            });
            wb.state_label = Some(labels.refused.clone());
            return Ok(Outcome::Refused);
        }

        let mut done = BTreeSet::new();
        let mut failure = None;
        if !p.is_noop() {
            // Time of check = time of use: the request must be what was approved, right now.
            let fresh = self.gitlab.issue(project, req.iid).await?;
            let still = request::parse_request(&fresh.to_input(author.as_ref()), &self.cfg)
                .map(|r| r.digest() == digest)
                .unwrap_or(false);
            let labels_held = approved
                .granted()
                .iter()
                .all(|g| fresh.labels.contains(&g.label));
            if !still || !labels_held || fresh.state != "opened" {
                tracing::info!(
                    iid = req.iid,
                    "the issue changed just before acting; deciding again next cycle"
                );
                return Ok(Outcome::Waiting);
            }
            let r = self.execute(project, &approved, &exec, &observed).await;
            done = r.done;
            failure = r.failed;
        }

        let completed = p.items_completed_by(&done);
        wb.ticks = completed
            .iter()
            .filter_map(|i| occurrence(req, *i))
            .collect();
        let mut systems = report::systems(req, p, &self.cfg, Some(&done));

        if let Some((step, error, transient)) = failure {
            wb.sections.push(Section {
                template: "failed.md",
                ctx: json!({
                    "step": step.action.describe(),
                    "subject": step.subject.as_str(),
                    "system": self.cfg.zendesk.get(&step.instance).map(|z| z.display_name.clone()).unwrap_or_default(),
                    "error": error,
                    "done": systems.iter().flat_map(|s| s.steps.iter().filter(|st| st.done).map(|st| st.text.clone())).collect::<Vec<_>>(),
                    "transient": transient,
                }),
                step: "failed",
                key: format!("failed:{digest}:{}:{}", step.key, short_hash(&error)),
                digest,
            });
            wb.state_label = Some(labels.failed.clone());
            if !transient {
                self.tell_ops(
                    NoticeKind::StepFailed,
                    format!("{}: {error}", step.instance),
                    format!(
                        "#{}: {} for {} failed: {error}",
                        req.iid,
                        step.action.describe(),
                        step.subject.as_str()
                    ),
                    Some(req.web_url.clone()),
                )
                .await;
            }
            return Ok(Outcome::Failed(error));
        }

        if req.kind == RequestKind::Offboarding {
            self.add_evidence(req, &observed, &mut systems).await;
        }
        let blocked = !p.blocked.is_empty();
        let open_items: BTreeSet<usize> = req
            .items
            .iter()
            .filter(|i| i.state == checklist::CheckState::Open)
            .map(|i| i.index)
            .collect();
        let complete = !blocked && open_items.iter().all(|i| completed.contains(i));
        let has_work = !p.steps.is_empty() || !p.notes.is_empty() || blocked;
        if has_work {
            let ticked: Vec<String> = wb.ticks.iter().map(|(t, _)| t.clone()).collect();
            let (light_agent, light_text) = light_agent_result(req, p, &done);
            wb.sections.push(Section {
                template: "result.md",
                ctx: json!({
                    "complete": complete,
                    "systems": systems,
                    "ticked": ticked,
                    "light_agent": light_agent,
                    "light_agent_result": light_text,
                    "expires": req.expires.map(|e| e.0.to_string()),
                }),
                step: "result",
                key: format!("result:{digest}"),
                digest: digest.clone(),
            });
        }
        if let Some(exp) = req.expires
            && complete
        {
            self.record_grants(project, req, p, &observed, exp.0);
        }
        if blocked {
            for b in &p.blocked {
                if let plan::BlockReason::ManagerCannotTakeTickets { manager, .. } = &b.reason {
                    self.tell_ops(
                        NoticeKind::ManagerCannotTakeTickets,
                        format!("#{} {manager}", req.iid),
                        format!("#{}: {}", req.iid, b.reason.explain(&b.instance)),
                        Some(req.web_url.clone()),
                    )
                    .await;
                }
            }
            wb.state_label = Some(labels.failed.clone());
            return Ok(Outcome::Failed(
                p.blocked
                    .iter()
                    .map(|b| b.reason.explain(&b.instance))
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
        if req.kind == RequestKind::Offboarding
            && let Some(error) = self.support_team_files(project, req, wb).await?
        {
            wb.state_label = Some(labels.failed.clone());
            return Ok(Outcome::Failed(error));
        }
        wb.state_label = Some(labels.done.clone());
        wb.close = complete && self.cfg.policy_for(req.kind).close_when_done;
        Ok(Outcome::Done)
    }

    /// A request waiting too long gets one reminder naming the missing approvers,
    /// and after the second limit is closed with a note on how to reopen.
    fn stale(
        &self,
        facts: &IssueFacts,
        request: &Request,
        missing: &[approval::MissingApproval],
        wb: &mut Writeback,
    ) {
        let lc = &self.cfg.lifecycle;
        let (Ok(remind), Ok(close)) = (
            crate::config::parse_duration(&lc.stale_reminder_after),
            crate::config::parse_duration(&lc.stale_close_after),
        ) else {
            return;
        };
        let age = chrono::Utc::now() - facts.issue.created_at;
        let days = age.num_days();
        let digest = request.digest();
        if age.to_std().is_ok_and(|a| a >= close) {
            wb.sections.push(Section {
                template: "stale_closed.md",
                ctx: json!({"days": days}),
                step: "stale-closed",
                key: "stale-closed".into(),
                digest,
            });
            wb.close = true;
        } else if age.to_std().is_ok_and(|a| a >= remind) {
            // Deliberate mentions: the reminder is meant to reach the approvers.
            let mention = |m: &approval::MissingApproval| {
                let rule = self.cfg.approvals.get(&m.approval);
                rule.map(|r| {
                    r.approvers
                        .iter()
                        .flat_map(|a| {
                            if a == approval::MANAGER {
                                request
                                    .subjects
                                    .iter()
                                    .filter_map(|s| s.manager.clone())
                                    .collect::<Vec<_>>()
                            } else {
                                vec![a.trim_start_matches('@').to_string()]
                            }
                        })
                        .map(|u| format!("@{u}"))
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
            };
            let list: Vec<Value> = missing
                .iter()
                .map(|m| json!({"label": m.label, "mention": mention(m)}))
                .collect();
            let close_in = close
                .as_secs()
                .saturating_sub(age.num_seconds().max(0) as u64)
                / 86_400;
            wb.sections.push(Section {
                template: "stale_reminder.md",
                ctx: json!({"days": days, "missing": list, "close_in_days": close_in}),
                step: "stale-reminder",
                key: "stale-reminder".into(),
                digest,
            });
        }
    }

    /// Remember how to undo exactly what was granted: the inverse of each step the
    /// bot performed, in reverse order, against the state observed before.
    fn record_grants(
        &self,
        project: &str,
        req: &Request,
        p: &Plan,
        before: &Observed,
        expires: chrono::NaiveDate,
    ) {
        for s in &req.subjects {
            for inst in req.granting_instances() {
                let prior = before
                    .zendesk
                    .get(&(inst.to_string(), s.email.clone()))
                    .and_then(|a| a.as_ref());
                let undo: Vec<plan::Action> = p
                    .steps
                    .iter()
                    .filter(|st| {
                        st.subject == s.email && st.instance == inst && st.state == StepState::ToDo
                    })
                    .rev()
                    .filter_map(|st| st.action.inverse(prior))
                    .collect();
                let undo = serde_json::to_value(&undo).unwrap_or_default();
                let _ = self.store.record_grant(&crate::store::Grant {
                    project: project.into(),
                    iid: req.iid,
                    subject: s.email.to_string(),
                    instance: inst.to_string(),
                    undo: undo.to_string(),
                    expires,
                    reminded: false,
                    revoked: false,
                });
            }
        }
    }

    /// Before and after, per account: this replaces the screenshot the seed asks for.
    async fn add_evidence(
        &self,
        req: &Request,
        before: &Observed,
        systems: &mut [report::SystemView],
    ) {
        for s in &req.subjects {
            for inst in req.instances() {
                let Some(Some(b)) = before.zendesk.get(&(inst.to_string(), s.email.clone())) else {
                    continue;
                };
                let Ok(instance) = self.instance(inst) else {
                    continue;
                };
                let after = super::observe::account(instance, &s.email, true)
                    .await
                    .ok()
                    .flatten();
                let Some(a) = after else { continue };
                let display = &self.cfg.zendesk[inst].display_name;
                let Some(view) = systems.iter_mut().find(|v| {
                    v.title.starts_with(&format!("{display}:"))
                        && v.title.contains(s.email.as_str())
                }) else {
                    continue;
                };
                let dash = |v: String| if v.is_empty() { "-".to_string() } else { v };
                let row = |f: &str, x: String, y: String| report::EvidenceRow {
                    field: f.into(),
                    before: dash(x),
                    after: dash(y),
                };
                view.evidence = vec![
                    row("role", b.role.clone(), a.role.clone()),
                    row(
                        "custom role",
                        b.custom_role.clone().unwrap_or("-".into()),
                        a.custom_role.clone().unwrap_or("-".into()),
                    ),
                    row(
                        "suspended",
                        b.suspended.to_string(),
                        a.suspended.to_string(),
                    ),
                    row("tags", b.tags.join(", "), a.tags.join(", ")),
                    row(
                        "user fields set",
                        b.filled_user_fields.join(", "),
                        a.filled_user_fields.join(", "),
                    ),
                    row("groups", b.groups.join(", "), a.groups.join(", ")),
                    row(
                        "open tickets",
                        b.open_tickets.unwrap_or(0).to_string(),
                        a.open_tickets.unwrap_or(0).to_string(),
                    ),
                ];
            }
        }
    }

    pub(super) async fn write_back(
        &self,
        project: &str,
        issue: &ApiIssue,
        facts: &IssueFacts,
        wb: Writeback,
    ) -> Result<(), ProcessError> {
        // Comments: skip sections already on the issue (markers), post the rest as one note.
        let existing: BTreeSet<String> = facts
            .notes
            .iter()
            .filter(|n| !n.system && n.author.id == self.me.id)
            .flat_map(|n| Marker::find_all(&n.body).into_iter().map(|m| m.key))
            .collect();
        let mut parts = Vec::new();
        for s in wb
            .sections
            .iter()
            .filter(|s| !existing.contains(&crate::marker::clean(&s.key)))
        {
            parts.push(
                self.templates
                    .comment(s.template, &s.ctx, s.step, &s.key, &s.digest)?,
            );
        }
        if !parts.is_empty() {
            self.gitlab
                .create_note(project, issue.iid, &parts.join("\n---\n\n"))
                .await?;
        }

        // One edit: ticks, state label, close; read the issue right before editing.
        let fresh = self.gitlab.issue(project, issue.iid).await?;
        let description = fresh.description.clone().unwrap_or_default();
        let items = checklist::parse(&description);
        let targets: Vec<usize> = wb
            .ticks
            .iter()
            .filter_map(|(text, n)| checklist::find(&items, text, *n))
            .filter(|i| i.state == checklist::CheckState::Open)
            .map(|i| i.index)
            .collect();
        let mut edit = IssueEdit::default();
        if !targets.is_empty()
            && let Ok(ticked) = checklist::tick(&description, &targets)
        {
            edit.description = Some(ticked);
        }
        if let Some(l) = &wb.state_label {
            if !fresh.labels.contains(l) {
                edit.add_labels.push(l.clone());
            }
            edit.remove_labels = self
                .cfg
                .bot
                .state_labels
                .all()
                .iter()
                .filter(|x| *x != l && fresh.labels.iter().any(|y| y == *x))
                .map(|x| x.to_string())
                .collect();
        }
        edit.close = wb.close && fresh.state == "opened";
        let last = if edit != IssueEdit::default() {
            let after = self.gitlab.edit_issue(project, issue.iid, &edit).await?;
            if let (Some(ts), Some(_)) = (&after.task_completion_status, &edit.description) {
                let ours = checklist::completion(&checklist::parse(
                    after.description.as_deref().unwrap_or(""),
                ));
                if (ts.count, ts.completed_count) != ours {
                    tracing::warn!(iid = issue.iid, gitlab = ?(ts.count, ts.completed_count), ours = ?ours, "task_completion_status differs from our count (quoted items?)");
                }
            }
            if let Some(l) = &wb.state_label
                && !after.labels.contains(l)
            {
                tracing::error!(
                    iid = issue.iid,
                    "GitLab dropped the label change: the bot needs Reporter (Planner) rights"
                );
            }
            after.updated_at
        } else {
            fresh.updated_at
        };
        self.store.mark_seen(project, issue.iid, last)?;
        Ok(())
    }
}

/// The seed's result text for light-agent requests.
fn light_agent_result(req: &Request, p: &Plan, done: &BTreeSet<String>) -> (bool, String) {
    if req.kind != RequestKind::LightAgent {
        return (false, String::new());
    }
    let created = p.steps.iter().any(|s| {
        matches!(
            s.action,
            Action::CreateAgent {
                light_agent: true,
                ..
            } | Action::SetRole {
                light_agent: true,
                ..
            }
        ) && done.contains(&s.key)
    });
    let text = if created {
        "Account created and upgraded to light agent".to_string()
    } else if p.notes.iter().any(|n| n.text.contains("full agent")) {
        "Looks like you are already a full agent.".to_string()
    } else if p
        .notes
        .iter()
        .any(|n| n.text.contains("already a light agent"))
    {
        "You already have a light agent account; nothing needed to change.".to_string()
    } else {
        "Light agent provisioned".to_string()
    };
    (true, text)
}
