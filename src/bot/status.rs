//! The queue at a glance (`access-bot status`, `/status` on the operations
//! listener): every open issue the bot tracks, by its state label, with what
//! it waits for and from whom, failures and when they are tried again,
//! time-bound grants ending soon and the idle seats of the open seat reviews.
//!
//! Everything is read from GitLab with the same readers the bot decides with
//! (its sealed notes through [`History`], the approval decision, the grant
//! and seat-list records), never from the state database: a bot with a fresh
//! database shows the same page. It writes nothing and tells nobody.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::approval::{self, Context, Decision, Directory, History, Missing};
use crate::comment::NoteKind;
use crate::config::PollSchedule;
use crate::gitlab::{ApiIssue, GitlabError};
use crate::policy::Requester;
use crate::render::{RenderError, Templates};
use crate::request::{self, Email, IssueFacts};
use crate::seats::SeatCandidate;

use super::Bot;
use super::process::ProcessError;

/// Time-bound grants ending within this many days are listed.
pub const EXPIRING_WITHIN_DAYS: i64 = 14;
/// Issues read at once (each costs two or three GitLab requests).
const CONCURRENCY: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Gitlab(#[from] GitlabError),
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// The whole view, as the CLI prints it and the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub generated_at: DateTime<Utc>,
    /// `generated_at` for people.
    pub generated: String,
    pub projects: Vec<String>,
    /// `[status] stuck_after`, as configured.
    pub stuck_after: String,
    /// Waiting, failed, refused, done but still open: in that order, each present.
    pub groups: Vec<StateGroup>,
    /// Open issues shown in the groups.
    pub total: usize,
    /// Open issues waiting or failed with no progress for longer than `stuck_after`.
    pub stuck: usize,
    pub expiring_within_days: i64,
    pub expiring: Vec<Expiring>,
    pub seats: Seats,
    /// What could not be read (the rest is shown).
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateGroup {
    /// `waiting`, `failed`, `refused` or `done`.
    pub state: String,
    /// The state label the rows carry.
    pub label: String,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub project: String,
    pub iid: u64,
    pub url: String,
    pub title: String,
    pub state: String,
    pub kind: String,
    /// The people the request is for (name and e-mail).
    pub people: Vec<String>,
    pub waiting_for: Vec<Awaited>,
    /// Where a waiting request stands besides its missing approvals
    /// (`approved`, `done`, `verification`); the templates say it.
    pub situation: Option<String>,
    /// Refusal reasons, or why the request cannot be read (from the core).
    pub notes: Vec<String>,
    pub last_action: Option<LastAction>,
    pub failure: Option<Failure>,
    /// The last progress: the bot's last note or the last label change.
    pub progress_at: DateTime<Utc>,
    pub idle_for: String,
    pub stuck: bool,
}

/// One approval a waiting request lacks.
#[derive(Debug, Clone, Serialize)]
pub struct Awaited {
    pub label: String,
    /// Who may give it, as GitLab confirmed them (`@user`).
    pub from: Vec<String>,
    /// Who may give it as the configuration says (when nobody is confirmed).
    pub who: String,
    /// Why something already done does not count (absent when simply not applied).
    pub detail: Option<String>,
    /// Since the plan it would approve was posted.
    pub since: DateTime<Utc>,
    pub for_how_long: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastAction {
    /// What the note was (`plan`, `failed-step`, ...; see `status_phrases.txt`).
    pub what: String,
    pub at: DateTime<Utc>,
    /// `at` for people.
    pub when: String,
    pub ago: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// From the bot's latest note saying so; `None` when no note says why.
    pub reason: Option<String>,
    pub next_retry: NextPoll,
}

/// When a failed issue is looked at again: with the next poll.
#[derive(Debug, Clone, Serialize)]
pub struct NextPoll {
    /// Polls at a fixed interval: this one.
    pub every: Option<String>,
    /// Polls on a cron schedule: the next time, and how far away.
    pub at: Option<String>,
    pub r#in: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Expiring {
    pub project: String,
    pub iid: u64,
    pub url: String,
    pub title: String,
    pub person: String,
    pub instance: String,
    pub expires: NaiveDate,
    /// Negative when the date has passed and the grant is not taken back yet.
    pub in_days: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Seats {
    /// Whether `[seat_audit]` is configured.
    pub configured: bool,
    /// The open reviews could not be read.
    pub unreadable: bool,
    pub instances: Vec<SeatInstance>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeatInstance {
    pub instance: String,
    pub period: String,
    pub url: String,
    pub iid: u64,
    pub people: Vec<SeatPerson>,
    pub yearly_cost: f64,
    pub cost: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeatPerson {
    pub name: String,
    pub email: String,
    pub cost: String,
}

impl StatusReport {
    /// For a terminal (`access-bot status`).
    pub fn to_text(&self, t: &Templates) -> Result<String, RenderError> {
        t.text(&crate::comment::StatusText(self))
    }

    /// The page: every value HTML-escaped by the template engine (`.html`).
    pub fn to_html(&self, t: &Templates) -> Result<String, RenderError> {
        t.text(&crate::comment::StatusPage(self))
    }
}

/// "3 days", "5 hours", "12 minutes", "less than a minute".
pub fn human_duration(d: chrono::Duration) -> String {
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if d.num_days() >= 1 {
        plural(d.num_days(), "day")
    } else if d.num_hours() >= 1 {
        plural(d.num_hours(), "hour")
    } else if d.num_minutes() >= 1 {
        plural(d.num_minutes(), "minute")
    } else {
        "less than a minute".into()
    }
}

/// A time to the minute, for people.
fn minute(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// "3 days ago", "just now".
fn ago(d: chrono::Duration) -> String {
    if d.num_minutes() < 1 {
        "just now".into()
    } else {
        format!("{} ago", human_duration(d))
    }
}

/// User-typed text shown on one line: no control characters (a terminal
/// would obey escape sequences in a title). HTML escaping is the template's.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// What a note of the bot's was, as a code the templates put in words.
fn describe_record(r: &approval::Record) -> String {
    let key = |p: &str| r.marker.keys.iter().any(|k| k.starts_with(p));
    match r.marker.kind.as_str() {
        "waiting" if key("stale-reminder") => "stale-reminder".into(),
        "waiting" if key("stale-closed") => "stale-closed".into(),
        "result" if key("failed:") => "failed-step".into(),
        "result" if r.done() => "done".into(),
        other => other.into(),
    }
}

/// Why the issue failed, from the bot's latest note saying so: its sentence
/// and the first line of the error it quoted.
fn failure_reason(history: &History) -> Option<String> {
    let r = history.records.iter().rev().find(|r| {
        r.marker.is(NoteKind::Stopped)
            || r.marker
                .keys
                .iter()
                .any(|k| k.starts_with("failed:") || k.starts_with("email-failed:"))
    })?;
    let lines: Vec<&str> = r
        .content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("```"))
        .take(2)
        .collect();
    Some(one_line(&lines.join(" ")))
}

impl Bot {
    /// When a failed issue is looked at again: it stays on the retry list, so
    /// with the next poll cycle.
    fn next_retry(&self, now: DateTime<Utc>) -> NextPoll {
        let tz = self.cfg.time_zone().unwrap_or(crate::config::Zone::Utc);
        let mut next = NextPoll {
            every: None,
            at: None,
            r#in: None,
        };
        match self.cfg.poll_schedule() {
            PollSchedule::Every(d) => {
                next.every = Some(if d.as_secs() < 60 {
                    format!("{} seconds", d.as_secs())
                } else {
                    chrono::Duration::from_std(*d)
                        .map(human_duration)
                        .unwrap_or_else(|_| format!("{d:?}"))
                })
            }
            PollSchedule::Cron(c) => {
                if let Some(t) = tz.upcoming_after(c, now, 1).first() {
                    next.at = Some(minute(*t));
                    next.r#in = Some(human_duration(*t - now));
                }
            }
        }
        next
    }

    /// The queue as GitLab shows it now. Reads only; an issue that cannot be
    /// read is named in `errors` and the rest is shown.
    pub async fn status(&self) -> StatusReport {
        use futures_util::StreamExt;
        let now = self.now();
        let labels = &self.cfg.bot.state_labels;
        let states: [(&str, &str); 4] = [
            ("waiting", labels.waiting.as_str()),
            ("failed", labels.failed.as_str()),
            ("refused", labels.refused.as_str()),
            ("done", labels.done.as_str()),
        ];
        let mut errors = Vec::new();
        let mut by_state: BTreeMap<&str, Vec<Row>> = BTreeMap::new();
        let mut expiring = Vec::new();
        for project in &self.cfg.gitlab.projects {
            // One listing per state label; an issue with two state labels is
            // shown once, under the first (a failure outranks waiting).
            let mut issues: BTreeMap<u64, (String, ApiIssue)> = BTreeMap::new();
            for state in ["failed", "refused", "waiting", "done"] {
                let Some((_, label)) = states.iter().find(|s| s.0 == state) else {
                    continue;
                };
                match self.gitlab.list_issues(project, Some(label), None).await {
                    Ok(page) => {
                        for i in page.issues {
                            issues.entry(i.iid).or_insert((state.to_string(), i));
                        }
                    }
                    Err(e) => errors.push(format!("{project}: listing {label}: {e}")),
                }
            }
            let rows: Vec<Result<Row, (u64, StatusError)>> =
                futures_util::stream::iter(issues.into_values())
                    .map(|(state, issue)| {
                        let project = project.clone();
                        async move {
                            let iid = issue.iid;
                            self.status_row(&project, &state, issue, now)
                                .await
                                .map_err(|e| (iid, e))
                        }
                    })
                    .buffered(CONCURRENCY)
                    .collect()
                    .await;
            for r in rows {
                match r {
                    Ok(row) => by_state
                        .entry(states.iter().find(|s| s.0 == row.state).map_or("", |s| s.0))
                        .or_default()
                        .push(row),
                    Err((iid, e)) => errors.push(format!("{project}#{iid}: {e}")),
                }
            }
            match self.expiring(project, now).await {
                Ok(mut e) => expiring.append(&mut e),
                Err(e) => errors.push(format!("{project}: time-bound grants: {e}")),
            }
        }
        expiring
            .sort_by(|a, b| (a.expires, &a.project, a.iid).cmp(&(b.expires, &b.project, b.iid)));
        let groups: Vec<StateGroup> = states
            .iter()
            .map(|(state, label)| {
                let mut rows = by_state.remove(state).unwrap_or_default();
                rows.sort_by(|a, b| {
                    (a.progress_at, &a.project, a.iid).cmp(&(b.progress_at, &b.project, b.iid))
                });
                StateGroup {
                    state: state.to_string(),
                    label: label.to_string(),
                    rows,
                }
            })
            .collect();
        let total = groups.iter().map(|g| g.rows.len()).sum();
        let stuck = groups
            .iter()
            .flat_map(|g| g.rows.iter())
            .filter(|r| r.stuck)
            .count();
        let seats = match self.idle_seats_on_reviews().await {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("seat reviews: {e}"));
                Seats {
                    configured: self.cfg.seat_audit.is_some(),
                    unreadable: true,
                    instances: Vec::new(),
                }
            }
        };
        StatusReport {
            generated_at: now,
            generated: minute(now),
            projects: self.cfg.gitlab.projects.clone(),
            stuck_after: self.cfg.status.stuck_after.to_string(),
            groups,
            total,
            stuck,
            expiring_within_days: EXPIRING_WITHIN_DAYS,
            expiring,
            seats,
            errors,
        }
    }

    /// One issue's row: its request read as the bot reads it, the approval
    /// decision as it stands, the bot's notes.
    async fn status_row(
        &self,
        project: &str,
        state: &str,
        issue: ApiIssue,
        now: DateTime<Utc>,
    ) -> Result<Row, StatusError> {
        let author = self.author(&issue.author.username).await?;
        let notes = self.gitlab.notes(project, issue.iid).await?;
        let mut issue = issue;
        let mut label_events = self.gitlab.label_events(project, issue.iid).await?;
        // The issue was listed before its label events were read: a label
        // applied in between would show as an approval for a renamed label.
        // As `process` does: read the issue again, up to its number of views.
        for _ in 1..super::process::VIEWS {
            if crate::approval::labels_agree(&self.cfg, &issue.labels, &label_events) {
                break;
            }
            issue = self.gitlab.issue(project, issue.iid).await?;
            label_events = self.gitlab.label_events(project, issue.iid).await?;
        }
        let mut input = issue.to_input();
        input.author_email = author.email.clone();
        input.author_name = author.name.clone();
        let facts = IssueFacts {
            issue: input,
            notes,
            label_events,
        };
        // Read as `process` reads it, without telling ops about tampered
        // notes: the page is looked at often, and `process` already tells.
        let history = History::read(
            &facts.notes,
            self.me.id,
            &self.marker_key,
            project,
            issue.iid,
        );
        let last = history.records.last();
        let last_action = last.map(|r| LastAction {
            what: describe_record(r),
            at: r.at,
            when: minute(r.at),
            ago: ago(now - r.at),
        });
        let progress_at = last
            .map(|r| r.at)
            .into_iter()
            .chain(facts.label_events.iter().map(|e| e.created_at))
            .chain(std::iter::once(issue.created_at))
            .max()
            .unwrap_or(issue.created_at);
        let mut row = Row {
            project: project.to_string(),
            iid: issue.iid,
            url: issue.web_url.clone(),
            title: one_line(&issue.title),
            state: state.to_string(),
            kind: String::new(),
            people: Vec::new(),
            waiting_for: Vec::new(),
            situation: None,
            notes: Vec::new(),
            last_action,
            failure: None,
            progress_at,
            idle_for: human_duration(now - progress_at),
            stuck: false,
        };
        if matches!(state, "waiting" | "failed") {
            row.stuck = (now - progress_at)
                .to_std()
                .is_ok_and(|d| d > self.cfg.stuck_after());
        }
        if state == "failed" {
            row.failure = Some(Failure {
                reason: failure_reason(&history),
                next_retry: self.next_retry(now),
            });
        }
        let req = match request::parse_request(&facts.issue, &self.cfg) {
            Ok(r) => r,
            Err(errors) => {
                row.kind = "unreadable request".into();
                row.notes = errors
                    .iter()
                    .take(3)
                    .map(|e| one_line(&e.to_string()))
                    .collect();
                return Ok(row);
            }
        };
        row.kind = req.kind.human().to_string();
        row.people = req
            .subjects
            .iter()
            .map(|s| one_line(&format!("{} <{}>", s.name, s.email)))
            .collect();
        if state != "waiting" {
            return Ok(row);
        }
        let mut names = Directory::wanted(&req, &self.cfg);
        names.insert(issue.author.username.clone());
        let dir = self.directory(names, &req).await?;
        let requester = Requester {
            username: issue.author.username.clone(),
            email: author.email.as_deref().and_then(|e| Email::parse(e).ok()),
        };
        let since = history
            .latest_plan()
            .map(|p| p.at)
            .unwrap_or(issue.created_at);
        let decision = approval::decide(
            req.clone(),
            &Context {
                facts: &facts,
                cfg: &self.cfg,
                dir: &dir,
                bot_id: self.me.id,
                history: &history,
                requester: &requester,
            },
        );
        match decision {
            Decision::Waiting {
                missing,
                verification_pending,
                ..
            } => {
                for m in missing {
                    let from = self
                        .cfg
                        .approvals
                        .get(&m.approval)
                        .map(|rule| {
                            approval::approver_usernames(rule, &req, &dir)
                                .into_iter()
                                .map(|u| format!("@{u}"))
                                .collect()
                        })
                        .unwrap_or_default();
                    row.waiting_for.push(Awaited {
                        label: m.label.clone(),
                        from,
                        who: one_line(&m.who),
                        detail: (m.missing != Missing::NotApplied)
                            .then(|| one_line(&m.missing.explain())),
                        since,
                        for_how_long: human_duration(now - since),
                    });
                }
                if verification_pending {
                    row.situation = Some("verification".into());
                }
            }
            Decision::Approved(_) => row.situation = Some("approved".into()),
            Decision::Done { .. } => row.situation = Some("done".into()),
            Decision::Refused { reasons, .. } => {
                row.notes.extend(reasons.iter().map(|r| one_line(r)))
            }
        }
        Ok(row)
    }

    /// Time-bound grants in force (the issue still carries the time-bound
    /// label) ending within [`EXPIRING_WITHIN_DAYS`], from their grant
    /// records on the issues, open or closed.
    async fn expiring(
        &self,
        project: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Expiring>, StatusError> {
        let label = &self.cfg.bot.state_labels.time_bound;
        let today = now.date_naive();
        let mut out = Vec::new();
        for issue in self.gitlab.labelled_issues(project, label).await?.issues {
            let notes = self.gitlab.notes(project, issue.iid).await?;
            let history = History::read(&notes, self.me.id, &self.marker_key, project, issue.iid);
            for r in history
                .records
                .iter()
                .filter(|r| r.marker.is(NoteKind::Grant))
            {
                let Some(file) =
                    super::process::read_json_block::<super::expiry::RecordFile>(&r.content)
                else {
                    continue;
                };
                let in_days = (file.expires - today).num_days();
                if in_days > EXPIRING_WITHIN_DAYS {
                    continue;
                }
                for g in &file.grants {
                    out.push(Expiring {
                        project: project.to_string(),
                        iid: issue.iid,
                        url: issue.web_url.clone(),
                        title: one_line(&issue.title),
                        person: g.subject.to_string(),
                        instance: self.display(&g.instance),
                        expires: file.expires,
                        in_days,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Idle seats listed on the open seat reviews and not decided yet, with
    /// their yearly cost, per instance: what the seat review already wrote
    /// (its sealed list notes), so the page costs no Zendesk request.
    async fn idle_seats_on_reviews(&self) -> Result<Seats, StatusError> {
        let Some(cfg) = &self.cfg.seat_audit else {
            return Ok(Seats {
                configured: false,
                unreadable: false,
                instances: Vec::new(),
            });
        };
        let project = cfg
            .project
            .clone()
            .or_else(|| self.cfg.gitlab.projects.first().cloned())
            .unwrap_or_default();
        let mut instances = Vec::new();
        for issue in self
            .gitlab
            .list_issues(&project, Some(&cfg.label), None)
            .await?
            .issues
            .into_iter()
            .filter(|i| i.author.id == self.me.id)
        {
            let notes = self.gitlab.notes(&project, issue.iid).await?;
            let history = History::read(&notes, self.me.id, &self.marker_key, &project, issue.iid);
            // The lines still open on the issue: ticked or `[~]` ones are decided.
            let open: Vec<String> =
                request::checklist::parse(issue.description.as_deref().unwrap_or(""))
                    .into_iter()
                    .filter(|i| i.state == request::checklist::CheckState::Open)
                    .map(|i| i.text)
                    .collect();
            let periods: std::collections::BTreeSet<(String, String)> = history
                .records
                .iter()
                .filter(|r| r.marker.is(NoteKind::SeatList))
                .filter_map(|r| {
                    Some((
                        r.marker.field("instance")?.to_string(),
                        r.marker.field("period")?.to_string(),
                    ))
                })
                .collect();
            let mut by_instance: BTreeMap<(String, String), BTreeMap<String, SeatCandidate>> =
                BTreeMap::new();
            for (instance, period) in periods {
                for row in super::seats::listed_on(&history, &instance, &period) {
                    if row.reclaimed || !open.contains(&row.item_text) {
                        continue;
                    }
                    if let Ok(c) = serde_json::from_str::<SeatCandidate>(&row.fields) {
                        by_instance
                            .entry((instance.clone(), period.clone()))
                            .or_default()
                            .entry(row.email.clone())
                            .or_insert(c);
                    }
                }
            }
            for ((instance, period), people) in by_instance {
                let total: f64 = people.values().map(|c| c.yearly_cost).sum();
                instances.push(SeatInstance {
                    instance: self.display(&instance),
                    period,
                    url: issue.web_url.clone(),
                    iid: issue.iid,
                    people: people
                        .values()
                        .map(|c| SeatPerson {
                            name: one_line(&c.name),
                            email: c.email.clone(),
                            cost: crate::seats::money(c.yearly_cost, &cfg.currency),
                        })
                        .collect(),
                    yearly_cost: total,
                    cost: crate::seats::money(total, &cfg.currency),
                });
            }
        }
        Ok(Seats {
            configured: true,
            unreadable: false,
            instances,
        })
    }
}

/// The page on the operations listener: who may see it, and what it needs to
/// compute it. Registered in [`super::run::Metrics`] once the bot is connected
/// (the listener comes up before).
pub struct StatusPage {
    bot: std::sync::Arc<Bot>,
    token: crate::secret::Secret,
    username: String,
    /// A background refresh of the stuck-issues gauge is running.
    refreshing: std::sync::atomic::AtomicBool,
    /// When the figures were last computed (by a page load or a refresh).
    computed: std::sync::Mutex<Option<std::time::Instant>>,
}

/// `/metrics` recomputes the stuck-issues gauge at most this often (a page
/// load always does): a scrape every few seconds must not cost a listing of
/// every open issue each time.
pub const STUCK_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);

type SharedMetrics = std::sync::Arc<std::sync::Mutex<super::run::Metrics>>;

fn metrics_lock(m: &SharedMetrics) -> std::sync::MutexGuard<'_, super::run::Metrics> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StatusPage {
    pub fn new(bot: std::sync::Arc<Bot>, token: crate::secret::Secret) -> StatusPage {
        let username = bot.cfg.status.username.clone();
        StatusPage {
            bot,
            token,
            username,
            refreshing: std::sync::atomic::AtomicBool::new(false),
            computed: std::sync::Mutex::new(None),
        }
    }

    /// `Authorization: Bearer <secret>`, or basic auth with the configured
    /// user name and the secret as password. Both sides are hashed first so
    /// that the comparison takes the same time whatever the length.
    pub fn authorized(&self, header: Option<&[u8]>) -> bool {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let eq = |a: &[u8], b: &[u8]| Sha256::digest(a).ct_eq(&Sha256::digest(b));
        let Some(h) = header.and_then(|h| std::str::from_utf8(h).ok()) else {
            return false;
        };
        let secret = self.token.expose().as_bytes();
        let (scheme, value) = h.trim().split_once(' ').unwrap_or((h, ""));
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return bool::from(eq(value.as_bytes(), secret));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(value) else {
                return false;
            };
            let (user, pass) = match raw.iter().position(|b| *b == b':') {
                Some(i) => (&raw[..i], &raw[i + 1..]),
                None => (&raw[..], &[][..]),
            };
            return bool::from(eq(user, self.username.as_bytes()) & eq(pass, secret));
        }
        false
    }

    /// Compute the report and keep the stuck-issues gauge with it.
    async fn compute(&self, metrics: &SharedMetrics) -> StatusReport {
        let report = self.bot.status().await;
        metrics_lock(metrics).stuck_issues = Some(report.stuck);
        *self.computed.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        report
    }
}

/// Before `/metrics` renders: refresh the stuck-issues gauge in the
/// background when it is older than [`STUCK_REFRESH`] (the scrape does not wait).
pub fn refresh_stuck(metrics: &SharedMetrics) {
    let Some(page) = metrics_lock(metrics).status.clone() else {
        return;
    };
    let fresh = page
        .computed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_some_and(|t| t.elapsed() < STUCK_REFRESH);
    if fresh
        || page
            .refreshing
            .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return;
    }
    let metrics = metrics.clone();
    tokio::spawn(async move {
        page.compute(&metrics).await;
        page.refreshing
            .store(false, std::sync::atomic::Ordering::SeqCst);
    });
}

#[derive(Clone, Copy)]
enum Form {
    Html,
    Json,
}

/// `/status` and `/status.json`, merged into the operations router.
pub fn router(metrics: SharedMetrics) -> axum::Router {
    use axum::extract::State;
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/status",
            get(
                |State(m): State<SharedMetrics>, h: axum::http::HeaderMap| async move {
                    serve(m, h, Form::Html).await
                },
            ),
        )
        .route(
            "/status.json",
            get(
                |State(m): State<SharedMetrics>, h: axum::http::HeaderMap| async move {
                    serve(m, h, Form::Json).await
                },
            ),
        )
        .with_state(metrics)
}

async fn serve(
    metrics: SharedMetrics,
    headers: axum::http::HeaderMap,
    form: Form,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let Some(page) = metrics_lock(&metrics).status.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "the status page is off ([status] enabled = true turns it on), or the bot is still starting\n",
        )
            .into_response();
    };
    let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if !page.authorized(given) {
        tracing::warn!(
            present = given.is_some(),
            "status page request with wrong or missing credentials rejected"
        );
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"access-bot status\", charset=\"UTF-8\"",
            )],
            "credentials required\n",
        )
            .into_response();
    }
    let report = page.compute(&metrics).await;
    let (body, kind) = match form {
        Form::Json => (
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string()),
            "application/json",
        ),
        Form::Html => (
            report
                .to_html(&page.bot.templates)
                .map_err(|e| e.to_string()),
            "text/html; charset=utf-8",
        ),
    };
    match body {
        Ok(body) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, kind),
                // Personal data: not kept by browsers or proxies, not sent on
                // as a referrer to the issues it links, and no script at all.
                (header::CACHE_CONTROL, "no-store"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
                ),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the status page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the status page\n",
            )
                .into_response()
        }
    }
}
