//! Idle-seat review against the live systems: list idle paid agents per
//! instance, open or update one review issue per instance and month, and
//! reclaim a seat when an authorized reviewer ticks its line.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::accounts::{AccountError, User, UserPatch};
use crate::approval::History;
use crate::comment::{self, NoteKind, ReviewLine, SeatReclaimed};
use crate::config::SeatAuditConfig;
use crate::gitlab::{ApiIssue, IssueEdit};
use crate::marker::short_hash;
use crate::request::checklist::{self, CheckState};
use crate::seats::{self, SeatCandidate, TickVerdict};
use crate::store::SeatCandidateRow;

use super::process::ProcessError;
use super::writeback::{Section, Writeback};
use super::{Bot, Instance, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum SeatError {
    #[error("the seat review is not configured: add [seat_audit] to bot.toml")]
    NotConfigured,
    #[error("no Zendesk instance {0:?} in bot.toml")]
    UnknownInstance(String),
    #[error(transparent)]
    Accounts(#[from] AccountError),
    #[error(transparent)]
    Gitlab(#[from] crate::gitlab::GitlabError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    #[error(transparent)]
    Process(Box<ProcessError>),
}

/// One instance's review, as printed by `audit-seats` and written to the issue.
#[derive(Debug, Clone, Serialize)]
pub struct SeatReport {
    pub instance: String,
    pub period: String,
    /// Paid seats in the instance (agents and admins, suspended included).
    pub paid_seats: usize,
    /// Idle by login but with recent work on an assigned ticket: kept off the list.
    pub active_by_tickets: usize,
    pub candidates: Vec<SeatCandidate>,
    pub yearly_total: f64,
    pub currency: String,
    /// The review issue, when one was opened or updated.
    pub issue_url: Option<String>,
}

/// What reclaiming one ticked seat came to.
enum Reclaim {
    Done { was: String, now: String },
    AlreadyFree { now: String },
    Kept(String),
}

fn describe(u: &User, role_names: &BTreeMap<u64, String>) -> String {
    let role = match (u.role.as_str(), u.custom_role_id) {
        ("agent", Some(id)) => format!(
            "agent ({})",
            role_names
                .get(&id)
                .map(String::as_str)
                .unwrap_or("custom role")
        ),
        (r, _) => r.to_string(),
    };
    if u.suspended {
        format!("{role}, suspended")
    } else {
        role
    }
}

/// The one field of a recorded line the total needs.
#[derive(serde::Deserialize)]
struct Cost {
    yearly_cost: f64,
}

/// The lines the bot listed on a review issue, from its sealed list notes,
/// each marked reclaimed if a note of the bot's says it was.
pub(super) fn listed_on(history: &History, instance: &str, period: &str) -> Vec<SeatCandidateRow> {
    let keys = history.keys();
    let mut by_email: BTreeMap<String, SeatCandidateRow> = BTreeMap::new();
    for r in history.records.iter().filter(|r| {
        r.marker.is(NoteKind::SeatList)
            && r.marker.field("instance") == Some(instance)
            && r.marker.field("period") == Some(period)
    }) {
        let rows: Vec<SeatCandidateRow> =
            super::process::read_json_block(&r.content).unwrap_or_default();
        for mut row in rows {
            // The note's own instance and period, whatever the block says.
            row.instance = instance.to_string();
            row.period = period.to_string();
            row.reclaimed = keys.contains(&crate::marker::clean(&format!(
                "seat-reclaimed:{}",
                row.email
            )));
            by_email.entry(row.email.clone()).or_insert(row);
        }
    }
    by_email.into_values().collect()
}

/// What one list note may hold: its lines and their record, well under the
/// writer's cut (`MAX_NOTE`, 60,000 characters) with the marker and text.
const LIST_NOTE_BUDGET: usize = 40_000;

/// The rows in runs that each fit one list note.
fn list_chunks(rows: &[SeatCandidateRow]) -> Vec<&[SeatCandidateRow]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, r) in rows.iter().enumerate() {
        // The line, and the row as the record prints it (pretty, indented once more).
        let pretty = serde_json::to_string_pretty(r).unwrap_or_default();
        let cost = r.item_text.len() + 4 + pretty.len() + 2 * pretty.lines().count();
        if i > start && size + cost > LIST_NOTE_BUDGET {
            out.push(&rows[start..i]);
            (start, size) = (i, 0);
        }
        size += cost;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

fn boxed(e: ProcessError) -> SeatError {
    SeatError::Process(Box::new(e))
}

impl Bot {
    fn seat_cfg(&self) -> Result<&SeatAuditConfig, SeatError> {
        self.cfg.seat_audit.as_ref().ok_or(SeatError::NotConfigured)
    }

    fn seat_project(&self, cfg: &SeatAuditConfig) -> String {
        cfg.project
            .clone()
            .or_else(|| self.cfg.gitlab.projects.first().cloned())
            .unwrap_or_default()
    }

    /// Review every instance (or one): list idle paid seats and open or
    /// update the review issues.
    pub async fn audit_seats(&self, only: Option<&str>) -> Result<Vec<SeatReport>, SeatError> {
        let cfg = self.seat_cfg()?;
        if let Some(o) = only
            && !self.accounts.contains(o)
        {
            return Err(SeatError::UnknownInstance(o.to_string()));
        }
        let mut out = Vec::new();
        for (name, inst) in self.accounts.iter() {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let span = tracing::info_span!("seat_review", instance = %name);
            let mut report =
                tracing::Instrument::instrument(self.idle_seats(name, inst, cfg), span).await?;
            report.issue_url = self.publish_review(name, cfg, &report).await?;
            out.push(report);
        }
        Ok(out)
    }

    async fn idle_seats(
        &self,
        name: &str,
        inst: &Instance,
        cfg: &SeatAuditConfig,
    ) -> Result<SeatReport, SeatError> {
        let now = self.now();
        // The bot's own admin account is a seat nobody reviews away.
        let me = inst.api.me().await?;
        let light = inst.resolved.light_agent_role;
        let names = &inst.resolved.role_names;
        let cutoff = now - chrono::Duration::days(i64::from(cfg.idle_days));
        let (paid, idle) = inst.api.idle_paid_agents(light, cutoff, me.id).await?;
        let by_login = seats::idle_by_login(&idle, light, names, cfg, now);
        drop(idle);
        // Recent work on an assigned ticket keeps a seat even without a recent
        // login (API-only agents, long sessions): one search export of the
        // open tickets changed since, whatever the number of candidates. The
        // index may lag by minutes; a reclaim re-reads the tickets anyway.
        let since = now - chrono::Duration::days(i64::from(cfg.idle_days));
        let worked = if by_login.is_empty() {
            Default::default()
        } else {
            inst.api.recently_worked_assignees(since).await?
        };
        let (busy, candidates): (Vec<SeatCandidate>, Vec<SeatCandidate>) = by_login
            .into_iter()
            .partition(|c| worked.contains(&c.zendesk_id));
        let active = busy.len();
        tracing::info!(
            paid,
            idle = candidates.len(),
            active_by_tickets = active,
            "seat review listed"
        );
        Ok(SeatReport {
            instance: name.to_string(),
            period: seats::period(now),
            paid_seats: paid,
            active_by_tickets: active,
            yearly_total: candidates.iter().map(|c| c.yearly_cost).sum(),
            candidates,
            currency: cfg.currency.clone(),
            issue_url: None,
        })
    }

    /// The review issue of an instance and period: from the store (a cache),
    /// or found among the bot's own issues with the review label by the
    /// marker its description carries (after a crash, or with a lost store).
    async fn find_review(
        &self,
        project: &str,
        cfg: &SeatAuditConfig,
        instance: &str,
        period: &str,
    ) -> Result<Option<ApiIssue>, SeatError> {
        if let Some((p, iid)) = self.store.seat_review(instance, period)? {
            return Ok(Some(self.gitlab.issue(&p, iid).await?));
        }
        let marker = format!("access-bot seat-review instance={instance} period={period} ");
        let found = self
            .gitlab
            .list_issues(project, Some(&cfg.label), None)
            .await?
            .issues
            .into_iter()
            .find(|i| {
                i.author.id == self.me.id
                    && i.description
                        .as_deref()
                        .is_some_and(|d| d.contains(&marker))
            });
        if let Some(i) = &found {
            self.store
                .record_seat_review(instance, period, project, i.iid)?;
        }
        Ok(found)
    }

    /// Which review an issue is: one the bot opened (its author) with the
    /// review label, and a sealed list note of the bot's naming the instance
    /// and period. The issue is the record; the store is not needed.
    pub(super) async fn seat_review_of(
        &self,
        project: &str,
        issue: &ApiIssue,
    ) -> Result<Option<(String, String)>, ProcessError> {
        let Some(cfg) = &self.cfg.seat_audit else {
            return Ok(None);
        };
        if issue.author.id != self.me.id || !issue.labels.contains(&cfg.label) {
            return Ok(None);
        }
        let facts = self.notes_only(project, issue).await?;
        let history = self.history(project, &facts).await;
        Ok(history
            .records
            .iter()
            .rev()
            .find(|r| r.marker.is(NoteKind::SeatList))
            .and_then(|r| {
                Some((
                    r.marker.field("instance")?.to_string(),
                    r.marker.field("period")?.to_string(),
                ))
            }))
    }

    fn item_text(&self, cfg: &SeatAuditConfig, c: &SeatCandidate) -> Result<String, SeatError> {
        let line = self.templates.text(&comment::SeatReviewItem {
            c,
            cost: seats::money(c.yearly_cost, &cfg.currency),
        })?;
        let line = line.lines().next().unwrap_or("").trim().to_string();
        // The text as the checklist parser will see it once written.
        Ok(checklist::parse(&format!("- [ ] {line}\n"))
            .first()
            .map(|i| i.text.clone())
            .unwrap_or(line))
    }

    /// Open the review issue, or update it in place: lines already ticked or
    /// marked `[~]` stay exactly as they are; new idle seats are added;
    /// undecided lines of people no longer idle are dropped.
    async fn publish_review(
        &self,
        instance: &str,
        cfg: &SeatAuditConfig,
        report: &SeatReport,
    ) -> Result<Option<String>, SeatError> {
        let project = self.seat_project(cfg);
        if let super::lease::Standing::Standby { holder, .. } = self.active(&project).await? {
            tracing::info!(
                project,
                holder,
                "another replica acts on the review project; it publishes the review"
            );
            return Ok(None);
        }
        let period = &report.period;
        let mut existing = self.find_review(&project, cfg, instance, period).await?;
        // The review issue is written by this and by `process` (a tick on it):
        // one at a time in this process, and read again after waiting.
        let _claim = match &existing {
            Some(i) => match super::process::InFlight::enter(&self.in_flight, &project, i.iid) {
                Some(claim) => Some(claim),
                None => {
                    let claim =
                        super::process::InFlight::wait(&self.in_flight, &project, i.iid).await;
                    existing = self.find_review(&project, cfg, instance, period).await?;
                    Some(claim)
                }
            },
            None => None,
        };
        if let Some(i) = &existing
            && i.state != "opened"
        {
            tracing::info!(
                iid = i.iid,
                "this period's review is closed; new idle seats wait for the next period"
            );
            return Ok(Some(i.web_url.clone()));
        }
        let states = |desc: &str| -> BTreeMap<String, CheckState> {
            checklist::parse(desc)
                .into_iter()
                .map(|i| (i.text, i.state))
                .collect()
        };
        let now_idle: BTreeSet<&str> = report.candidates.iter().map(|c| c.email.as_str()).collect();
        let listed = match &existing {
            Some(i) => {
                let facts = self.notes_only(&project, i).await.map_err(boxed)?;
                let history = self.history(&project, &facts).await;
                listed_on(&history, instance, period)
            }
            None => Vec::new(),
        };
        let known: BTreeSet<&str> = listed.iter().map(|r| r.email.as_str()).collect();
        let new: Vec<SeatCandidateRow> = report
            .candidates
            .iter()
            .filter(|c| !known.contains(c.email.as_str()))
            .map(|c| {
                Ok(SeatCandidateRow {
                    instance: instance.to_string(),
                    period: period.clone(),
                    email: c.email.clone(),
                    zendesk_id: c.zendesk_id,
                    fields: serde_json::to_string(c).unwrap_or_default(),
                    item_text: self.item_text(cfg, c)?,
                    listed_at: self.now(),
                    reclaimed: false,
                })
            })
            .collect::<Result<_, SeatError>>()?;
        // Shown: every line decided on the issue or reclaimed, and every
        // undecided one of a person still idle (the others are dropped).
        let shown = |current: &BTreeMap<String, CheckState>| -> Vec<&SeatCandidateRow> {
            listed
                .iter()
                .chain(new.iter())
                .filter(|r| {
                    r.reclaimed
                        || now_idle.contains(r.email.as_str())
                        || matches!(
                            current.get(&r.item_text),
                            Some(CheckState::Done | CheckState::Inapplicable)
                        )
                })
                .collect()
        };
        if listed.is_empty() && new.is_empty() && existing.is_none() {
            tracing::info!("no idle paid seats: no review issue needed");
            return Ok(None);
        }
        let display = self
            .cfg
            .zendesk
            .get(instance)
            .map(|z| z.display_name.clone())
            .unwrap_or_else(|| instance.to_string());
        let reviewers = cfg
            .reviewers
            .iter()
            .map(|r| format!("`@{r}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let render = |current: &BTreeMap<String, CheckState>| -> Result<String, SeatError> {
            let mut open_count = 0usize;
            let mut open_total = 0f64;
            // Borrowed lines, straight to the template: thousands of seats
            // are not copied into JSON values first.
            let candidates: Vec<ReviewLine<'_>> = shown(current)
                .into_iter()
                .map(|r| {
                    let mark = match current.get(&r.item_text) {
                        Some(CheckState::Done) => "x",
                        Some(CheckState::Inapplicable) => "~",
                        _ => " ",
                    };
                    if mark == " " {
                        open_count += 1;
                        open_total += serde_json::from_str::<Cost>(&r.fields)
                            .map(|c| c.yearly_cost)
                            .unwrap_or(cfg.price_per_seat_month * 12.0);
                    }
                    ReviewLine {
                        mark,
                        text: &r.item_text,
                    }
                })
                .collect();
            Ok(self.templates.text(&comment::SeatReview {
                instance: &display,
                instance_key: instance,
                period,
                idle_days: cfg.idle_days,
                reclaim_to: cfg.reclaim_to.replace('_', " "),
                reviewers: &reviewers,
                candidates,
                open_count,
                open_total: seats::money(open_total, &cfg.currency),
                price: seats::money(cfg.price_per_seat_month, &cfg.currency),
                checked_at: self.now().format("%Y-%m-%d %H:%M UTC").to_string(),
            })?)
        };
        // The issue first (empty), then the lines on record in a sealed note
        // of the bot's, then the lines in the description: a tick is only
        // ever checked against a line the bot recorded.
        let mut written = None;
        let issue = match existing {
            Some(i) => i,
            None => {
                let desc = render(&BTreeMap::new())?;
                let created = self
                    .gitlab
                    .create_issue(
                        &project,
                        &format!("Zendesk seat review: {display}, {period}"),
                        &desc,
                        std::slice::from_ref(&cfg.label),
                    )
                    .await?;
                self.store
                    .record_seat_review(instance, period, &project, created.iid)?;
                tracing::info!(iid = created.iid, "seat review issue opened");
                written = Some(desc);
                created
            }
        };
        if !new.is_empty() {
            let facts = self.notes_only(&project, &issue).await.map_err(boxed)?;
            let history = self.history(&project, &facts).await;
            // As many list notes as the rows need: a note is cut at the
            // writer's limit, and a cut record would list nobody.
            for chunk in list_chunks(&new) {
                let emails: Vec<&str> = chunk.iter().map(|r| r.email.as_str()).collect();
                let wb = Writeback {
                    kind: NoteKind::SeatList,
                    fields: vec![
                        ("instance", instance.to_string()),
                        ("period", period.clone()),
                    ],
                    sections: vec![Section {
                        comment: comment::SeatListed {
                            lines: chunk
                                .iter()
                                .map(|r| r.item_text.clone())
                                .collect::<Vec<_>>(),
                            record: super::process::json_block(
                                &serde_json::to_value(chunk).unwrap_or_default(),
                            ),
                        }
                        .into(),
                        key: format!("seat-list:{period}:{}", short_hash(&emails.join(","))),
                    }],
                    // The description is rewritten below, after the last one.
                    note_only: true,
                    ..Default::default()
                };
                self.write_back(&project, &issue, &history, wb)
                    .await
                    .map_err(boxed)?;
            }
        }
        // Read again right before writing, and keep every box as it is now: a
        // reviewer may have ticked one since the first read. (GitLab has no
        // conditional update; the window is this one round trip.)
        let fresh = self.gitlab.issue(&project, issue.iid).await?;
        if written.is_some() && fresh.description == written {
            // Opened just now with every line, and nobody touched it since:
            // nothing to carry over, nothing to rewrite.
            return Ok(Some(fresh.web_url));
        }
        drop(written);
        let desc = render(&states(fresh.description.as_deref().unwrap_or("")))?;
        if fresh.description.as_deref() != Some(desc.as_str()) {
            let edit = IssueEdit {
                description: Some(desc),
                ..Default::default()
            };
            self.gitlab.edit_issue(&project, issue.iid, &edit).await?;
        }
        Ok(Some(fresh.web_url))
    }

    /// A review issue changed: act on every line a reviewer ticked.
    pub(super) async fn process_seat_review(
        &self,
        project: &str,
        issue: &ApiIssue,
        instance: &str,
        period: &str,
    ) -> Result<Outcome, ProcessError> {
        let Some(cfg) = self.cfg.seat_audit.clone() else {
            return Ok(Outcome::Ignored);
        };
        let facts = self.notes_only(project, issue).await?;
        let history = self.history(project, &facts).await;
        let rows = listed_on(&history, instance, period);
        let items = checklist::parse(issue.description.as_deref().unwrap_or(""));
        let mut reviewers = BTreeSet::new();
        for r in &cfg.reviewers {
            if let Some(u) = self.user(r).await {
                reviewers.insert(u.id);
            }
        }
        let Some(inst) = self.accounts.of(instance) else {
            return Ok(Outcome::Failed(format!("no Zendesk instance {instance:?}")));
        };
        let mut wb = Writeback::default();
        let mut section = |key: String, r: SeatReclaimed| {
            wb.sections.push(Section {
                comment: r.into(),
                key,
            });
        };
        let mut failed = None;
        let mut reclaimed_now: BTreeSet<String> = BTreeSet::new();
        for item in items.iter().filter(|i| i.state == CheckState::Done) {
            let Some(row) = rows.iter().find(|r| r.item_text == item.text) else {
                section(
                    format!("seat-unknown:{}", short_hash(&item.text)),
                    SeatReclaimed::Unknown {
                        text: item.text.clone(),
                    },
                );
                continue;
            };
            if row.reclaimed {
                continue;
            }
            let email = row.email.clone();
            match seats::verify_tick(&row.item_text, &facts.notes, &reviewers, self.me.id) {
                TickVerdict::Holds(ticked) => {
                    let (by, note_id) = (ticked.by().to_string(), ticked.note_id());
                    match self.reclaim(project, inst, row, &cfg, &ticked).await {
                        Ok(r) => {
                            let (kind, before, after, ctx) = match r {
                                Reclaim::Done { was, now } => (
                                    "reclaimed",
                                    was.clone(),
                                    now.clone(),
                                    SeatReclaimed::Reclaimed {
                                        email: email.clone(),
                                        was,
                                        now,
                                        by: by.clone(),
                                    },
                                ),
                                Reclaim::AlreadyFree { now } => (
                                    "already",
                                    now.clone(),
                                    now.clone(),
                                    SeatReclaimed::Already {
                                        email: email.clone(),
                                        now,
                                    },
                                ),
                                Reclaim::Kept(why) => {
                                    section(
                                        format!("seat-kept:{email}:{note_id}"),
                                        SeatReclaimed::Kept {
                                            email: email.clone(),
                                            why,
                                        },
                                    );
                                    continue;
                                }
                            };
                            // The audit row comes before anything reports it.
                            self.store.audit(
                                project,
                                issue.iid,
                                &email,
                                instance,
                                "reclaim_seat",
                                &before,
                                &after,
                                &format!("seat review ticked by @{by}"),
                                if kind == "reclaimed" { "ok" } else { "already" },
                            )?;
                            reclaimed_now.insert(email.clone());
                            section(format!("seat-reclaimed:{email}"), ctx);
                        }
                        Err(e) => {
                            self.store.audit(
                                project,
                                issue.iid,
                                &email,
                                instance,
                                "reclaim_seat",
                                "",
                                &e.to_string(),
                                &format!("seat review ticked by @{by}"),
                                "failed",
                            )?;
                            section(
                                format!("seat-failed:{email}:{}", short_hash(&e.to_string())),
                                SeatReclaimed::Failed {
                                    email: email.clone(),
                                    error: e.to_string(),
                                },
                            );
                            failed = Some(e.to_string());
                        }
                    }
                }
                TickVerdict::NotReviewer { by, note_id } => section(
                    format!("seat-refused:{email}:{note_id}"),
                    SeatReclaimed::Refused {
                        email,
                        why: format!(
                            "it was ticked by `@{by}`, who is not one of the reviewers in bot.toml"
                        ),
                    },
                ),
                TickVerdict::LaterEdit { by, note_id } => section(
                    format!("seat-refused:{email}:{note_id}:edit"),
                    SeatReclaimed::Refused {
                        email,
                        why: format!(
                            "`@{by}` changed the description after the tick; a reviewer must untick and tick it again"
                        ),
                    },
                ),
                TickVerdict::NoRecord => section(
                    format!("seat-refused:{email}:none"),
                    SeatReclaimed::Refused {
                        email,
                        why: "GitLab has no record of a reviewer ticking it".into(),
                    },
                ),
            }
        }
        // Closed once every line is decided: ticked and reclaimed, or `[~]`.
        let all_decided = items.iter().all(|i| match i.state {
            CheckState::Inapplicable => true,
            CheckState::Done => rows.iter().any(|r| {
                r.item_text == i.text && (r.reclaimed || reclaimed_now.contains(&r.email))
            }),
            CheckState::Open => false,
        });
        wb.close = all_decided && failed.is_none();
        self.write_back(project, issue, &history, wb).await?;
        Ok(match failed {
            Some(e) => Outcome::Failed(e),
            None if all_decided => Outcome::Done,
            None => Outcome::Waiting,
        })
    }

    async fn reclaim(
        &self,
        project: &str,
        inst: &Instance,
        row: &SeatCandidateRow,
        cfg: &SeatAuditConfig,
        ticked: &crate::seats::ReviewerTicked,
    ) -> Result<Reclaim, AccountError> {
        let names = &inst.resolved.role_names;
        let light = inst.resolved.light_agent_role;
        let u = inst.api.show_user(row.zendesk_id).await?;
        if !u
            .email
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case(&row.email))
        {
            return Ok(Reclaim::Kept(format!(
                "Zendesk user {} no longer has this email; nothing changed",
                row.zendesk_id
            )));
        }
        if !seats::is_paid(&u, light) {
            return Ok(Reclaim::AlreadyFree {
                now: describe(&u, names),
            });
        }
        if let Some(t) = u.last_login_at
            && t > row.listed_at
        {
            return Ok(Reclaim::Kept(format!(
                "they logged in on {} after the review listed them; mark the line `[~]` to keep the seat, or it is listed again next period",
                t.format("%Y-%m-%d")
            )));
        }
        let open = inst.api.open_tickets(u.id).await?;
        if !open.is_empty() {
            return Ok(Reclaim::Kept(format!(
                "{} open tickets are assigned to them; reassign them, then untick and tick the line again",
                open.len()
            )));
        }
        let patch = if cfg.reclaim_to == "end_user" {
            UserPatch {
                role: Some("end-user".into()),
                custom_role_id: Some(None),
                ..Default::default()
            }
        } else {
            let Some(light) = light else {
                return Ok(Reclaim::Kept(
                    "this instance has no light-agent role (role_type 1) to demote to".into(),
                ));
            };
            UserPatch {
                role: Some("agent".into()),
                custom_role_id: Some(Some(light)),
                ..Default::default()
            }
        };
        let Some(after) = self.reclaim_seat(project, inst, ticked, &u, &patch).await? else {
            return Ok(Reclaim::Kept(
                "another replica of the bot holds this project now; it decides".into(),
            ));
        };
        Ok(Reclaim::Done {
            was: describe(&u, names),
            now: describe(&after, names),
        })
    }
}
