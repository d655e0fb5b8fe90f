//! The bot: polls (and takes webhook events), decides with the core, acts
//! through the connectors, and reports on the issue. Timers and webhooks
//! enter as the same [`Event`]; every decision on time reads one [`Clock`].

mod clock;
mod execute;
mod expiry;
pub mod lease;
mod observe;
mod process;
mod reply;
pub mod run;
mod seats;
pub mod status;
mod support_team;
mod writeback;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::accounts::{Accounts, Instance};
use crate::config::Config;
use crate::gitlab::{ApiIssue, ApiUser, GitlabApi, GitlabClient};
use crate::groups::Directories;
use crate::render::Templates;
use crate::secret::Secrets;
use crate::store::Store;

pub use clock::Clock;
pub use execute::ExecResult;
pub use seats::{SeatError, SeatReport};

/// What wakes the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Poll every project for changed issues (and the retry list).
    Poll,
    /// Look at one issue now (webhook, `plan --issue`).
    Issue { project: String, iid: u64 },
    /// Read the time-bound grants from their issues, then remind of and take
    /// back those due (`[lifecycle] expiry_check_every`).
    Expiries,
    /// Look at waiting requests old enough for a reminder or closing: they do
    /// not change by themselves, so no poll brings them back
    /// (`[lifecycle] stale_scan_every`).
    StaleScan,
    /// Follow up the open Support Team merge requests (`[support_team]
    /// check_every`).
    MergeRequests,
    /// Review idle paid seats (`[seat_audit] schedule`).
    SeatAudit,
    /// Send ops the digest of the last 24 hours (`[notify] digest`).
    Digest,
}

/// What happened to one issue in one cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// Not an issue the bot handles (no kind, closed).
    Ignored,
    /// Another runner holds the issue's lease.
    Busy,
    Waiting,
    Done,
    Refused,
    /// Something needs a person (a blocked step), or a step failed.
    Failed(String),
    /// A rehearsal (dry run): the writes it would have made, one per line.
    Planned(String),
}

impl Outcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }
}

#[derive(Debug, Default, Serialize)]
pub struct CycleReport {
    pub outcomes: Vec<(String, u64, Outcome)>,
    /// Problems that stopped a whole project's poll (the loop goes on).
    pub errors: Vec<String>,
    /// Projects another replica acts on (this one stands by).
    pub standby: Vec<String>,
}

impl CycleReport {
    pub fn failed(&self) -> bool {
        !self.errors.is_empty() || self.outcomes.iter().any(|(_, _, o)| o.is_failure())
    }
}

pub struct Bot {
    pub cfg: Config,
    pub gitlab: Arc<dyn GitlabApi>,
    /// The account system of each instance (its agents, roles and groups).
    pub accounts: Accounts,
    /// The group directory of each instance with an app group.
    pub groups: Directories,
    pub templates: Templates,
    pub store: Arc<Store>,
    pub me: ApiUser,
    /// Seals and verifies the markers of the bot's comments.
    pub marker_key: crate::marker::MarkerKey,
    /// Who is who: GitLab users' company e-mails, the company directory.
    pub identity: crate::identity::Resolver,
    /// Set by `rehearse` (a dry run): where the writers record what they
    /// would have written. Read only by the executor.
    rehearsal: Option<crate::rehearsal::Rehearsal>,
    /// GitLab users by username (lower-case), cached for the life of the process.
    users: Mutex<HashMap<String, Option<ApiUser>>>,
    /// Issues processed at once, across cycles and events (`[bot] concurrency`).
    work: tokio::sync::Semaphore,
    /// Issues being processed in this process: the issue lease is the same
    /// owner's for all of them, so it cannot keep two tasks apart.
    in_flight: std::sync::Mutex<BTreeSet<(String, u64)>>,
    /// Now, for every decision on time (tests move it forward).
    pub clock: Arc<Clock>,
    /// SMTP, when `[notify.email]` is configured (the People team's e-mail).
    pub mailer: Option<Arc<crate::notify::Mailer>>,
    /// Ops notices (Slack and/or e-mail), de-duplicated.
    pub notifier: crate::notify::Notifier,
    /// Which replica acts on which project (one writer across hosts).
    pub lease: lease::ReplicaLease,
    /// The issue as the bot's own last edit left it, during a look (cleared
    /// when the look starts): a later write-back in the same look tells the
    /// bot's changes from someone else's.
    own_edits: std::sync::Mutex<HashMap<(String, u64), ApiIssue>>,
}

/// How long a replica's hold on a project lasts: several poll intervals, so
/// that a standby takes over within minutes of the holder's death.
fn lease_ttl(cfg: &Config) -> std::time::Duration {
    use std::time::Duration;
    match cfg.poll_schedule() {
        crate::config::PollSchedule::Every(d) => {
            (*d * 5).clamp(Duration::from_secs(60), Duration::from_secs(900))
        }
        _ => Duration::from_secs(600),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    #[error(transparent)]
    Gitlab(#[from] crate::gitlab::GitlabError),
    #[error(transparent)]
    Accounts(#[from] crate::accounts::AccountError),
    #[error(transparent)]
    Groups(#[from] crate::groups::GroupError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    #[error("Zendesk {instance}: {problems}")]
    Missing { instance: String, problems: String },
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error("the marker key ({var}): {source}")]
    MarkerKey {
        var: String,
        source: crate::marker::MarkerError,
    },
}

impl Bot {
    /// Connect to everything the configuration names, resolving role and group ids per instance.
    pub async fn connect(
        cfg: Config,
        secrets: &Secrets,
        store: Arc<Store>,
    ) -> Result<Bot, StartError> {
        Bot::connect_with(cfg, secrets, store, std::time::Duration::from_millis(500)).await
    }

    /// As `connect`, with the pause between polls of a Zendesk bulk job.
    pub async fn connect_with(
        cfg: Config,
        secrets: &Secrets,
        store: Arc<Store>,
        job_poll: std::time::Duration,
    ) -> Result<Bot, StartError> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .user_agent(concat!("access-bot/", env!("CARGO_PKG_VERSION")))
            .build()
            // The words the Zendesk client's configuration error used to give.
            .map_err(|e| crate::accounts::AccountError::new(format!("Zendesk -: {e}"), false))?;
        let marker_key = crate::marker::MarkerKey::new(&secrets.get(&cfg.bot.marker_key_env)?)
            .map_err(|source| StartError::MarkerKey {
                var: cfg.bot.marker_key_env.clone(),
                source,
            })?;
        let token = secrets.get(&cfg.gitlab.token_env)?;
        let clients = Accounts::clients(&cfg, secrets, http.clone(), job_poll)?;
        // GitLab's user and every instance's roles and groups at once: start-up
        // costs the slowest of them, not their sum.
        let gitlab_user = GitlabClient::connect_as(
            &cfg.gitlab.url,
            &token,
            cfg.gitlab_timeout(),
            crate::http::Backoff::default(),
        );
        let accounts = Accounts::connect(&cfg, clients);
        let (gitlab_user, accounts) = tokio::join!(gitlab_user, accounts);
        let (gl, me) = gitlab_user?;
        let accounts = accounts.map_err(|e| match e {
            crate::accounts::ConnectError::System(e) => StartError::Accounts(e),
            crate::accounts::ConnectError::Missing { instance, problems } => {
                StartError::Missing { instance, problems }
            }
        })?;
        let groups = Directories::connect(&cfg, secrets, http.clone())?;
        let templates = Templates::load(Some(&cfg.bot.templates_dir))?;
        let (mailer, notifier) = match &cfg.notify {
            Some(n) => {
                let mailer = match &n.email {
                    Some(e) => Some(Arc::new(crate::notify::Mailer::new(e, secrets)?)),
                    None => None,
                };
                let slack = match &n.slack {
                    Some(s) => Some(crate::notify::Slack::new(s, secrets, http.clone())?),
                    None => None,
                };
                let notifier = crate::notify::Notifier::new(n, mailer.clone(), slack)?;
                (mailer, notifier)
            }
            None => (None, crate::notify::Notifier::none()),
        };
        let gitlab: Arc<dyn GitlabApi> = Arc::new(gl);
        let directory = match (&cfg.google, cfg.identity.directory) {
            (Some(g), true) => Some(
                crate::directory::DirectoryClient::new(g, secrets, http.clone())
                    .map_err(crate::identity::IdentityError::from)?,
            ),
            _ => None,
        };
        let identity = crate::identity::Resolver::new(&cfg, gitlab.clone(), directory)?;
        let lease = lease::ReplicaLease::new(store.owner().to_string(), lease_ttl(&cfg));
        let bot = Bot {
            // Before `cfg` moves in.
            work: tokio::sync::Semaphore::new(cfg.bot.concurrency.max(1)),
            cfg,
            gitlab,
            identity,
            accounts,
            groups,
            templates,
            store,
            me,
            marker_key,
            rehearsal: None,
            users: Mutex::new(HashMap::new()),
            in_flight: Default::default(),
            lease,
            clock: Arc::new(Clock::system()),
            mailer,
            notifier,
            own_edits: Default::default(),
        };
        Ok(bot)
    }

    /// Approvers and trusted authors are the same for every request: resolved
    /// once (`run` does it behind its listeners) rather than on the first issue,
    /// all at once. A failure is not fatal (not cached; retried when an issue
    /// needs the name).
    pub async fn warm_up(&self) {
        let names = crate::approval::Directory::configured(&self.cfg);
        futures_util::future::join_all(names.iter().map(|u| self.user(u))).await;
    }

    /// Assemble from parts (tests with mocks).
    pub fn from_parts(
        cfg: Config,
        gitlab: Arc<dyn GitlabApi>,
        accounts: Accounts,
        groups: Directories,
        store: Arc<Store>,
        me: ApiUser,
    ) -> Result<Bot, StartError> {
        let lease = lease::ReplicaLease::new(store.owner().to_string(), lease_ttl(&cfg));
        Ok(Bot {
            templates: Templates::load(Some(&cfg.bot.templates_dir))?,
            identity: crate::identity::Resolver::new(&cfg, gitlab.clone(), None)?,
            work: tokio::sync::Semaphore::new(cfg.bot.concurrency.max(1)),
            cfg,
            gitlab,
            accounts,
            groups,
            store,
            me,
            marker_key: crate::marker::MarkerKey::random(),
            rehearsal: None,
            users: Mutex::new(HashMap::new()),
            in_flight: Default::default(),
            lease,
            clock: Arc::new(Clock::system()),
            mailer: None,
            notifier: crate::notify::Notifier::none(),
            own_edits: Default::default(),
        })
    }

    fn own_edits(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), ApiIssue>> {
        self.own_edits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The issue after the bot's own last edit in the current look.
    pub(crate) fn own_edit(&self, project: &str, iid: u64) -> Option<ApiIssue> {
        self.own_edits().get(&(project.to_string(), iid)).cloned()
    }

    pub(crate) fn remember_own_edit(&self, project: &str, issue: ApiIssue) {
        self.own_edits()
            .insert((project.to_string(), issue.iid), issue);
    }

    pub(crate) fn forget_own_edit(&self, project: &str, iid: u64) {
        self.own_edits().remove(&(project.to_string(), iid));
    }

    /// A GitLab user by username, cached; `None` when failing to look them up.
    pub async fn user(&self, username: &str) -> Option<ApiUser> {
        self.lookup_user(username).await.ok().flatten()
    }

    /// A GitLab user by username, cached: `Ok(None)` when GitLab says there is
    /// no such user, `Err` when it could not be asked (not cached).
    pub async fn lookup_user(
        &self,
        username: &str,
    ) -> Result<Option<ApiUser>, crate::gitlab::GitlabError> {
        let key = username.trim_start_matches('@').to_ascii_lowercase();
        if let Some(u) = self.users.lock().await.get(&key) {
            return Ok(u.clone());
        }
        match self.gitlab.user_by_username(&key).await {
            Ok(u) => {
                self.users.lock().await.insert(key, u.clone());
                Ok(u)
            }
            Err(e) => {
                // Not cached: a transient failure must not stick.
                tracing::warn!(username = %key, error = %e, "cannot resolve GitLab user");
                Err(e)
            }
        }
    }

    /// The bot's notion of now (see [`Clock`]).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Handle one event.
    pub async fn handle(&self, event: Event) -> CycleReport {
        match event {
            Event::Poll => self.cycle().await,
            Event::StaleScan => self.stale_scan(&BTreeSet::new()).await,
            Event::Expiries => {
                // Their own schedule, not the poll's: the project leases may
                // want renewing first (writes happen only where this replica acts).
                self.hold_leases().await;
                CycleReport {
                    outcomes: self.expiries().await,
                    ..Default::default()
                }
            }
            Event::MergeRequests => {
                self.hold_leases().await;
                CycleReport {
                    outcomes: self.support_team_followups().await,
                    ..Default::default()
                }
            }
            Event::SeatAudit => {
                let mut report = CycleReport::default();
                if let Err(e) = self.audit_seats(None).await {
                    tracing::warn!(error = %e, "seat review failed; it runs again at its next time");
                    report.errors.push(format!("seat review: {e}"));
                }
                report
            }
            Event::Digest => {
                self.digest().await;
                CycleReport::default()
            }
            Event::Issue { project, iid } => {
                let o = self.process(&project, iid).await;
                CycleReport {
                    outcomes: vec![(project, iid, o)],
                    ..Default::default()
                }
            }
        }
    }

    /// What the bot did in the last 24 hours, to ops (Slack and/or e-mail), once
    /// a day: the audit trail counted by action and outcome, and the issues.
    pub async fn digest(&self) -> bool {
        if !self.notifier.enabled() {
            return false;
        }
        let now = self.now();
        let today = now.format("%Y-%m-%d").to_string();
        let key = format!("digest:{today}");
        if self
            .store
            .delivery(&key)
            .map(|d| d.is_some())
            .unwrap_or(true)
        {
            return false;
        }
        let rows = self
            .store
            .audit_rows(&crate::store::AuditQuery {
                since: Some(now - chrono::Duration::hours(24)),
                ..Default::default()
            })
            .unwrap_or_default();
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut issues: BTreeSet<(String, u64)> = BTreeSet::new();
        for r in &rows {
            // Step keys are `instance/email/type...`; other rows are a bare action.
            let kind: String = r
                .action
                .split('/')
                .nth(2)
                .unwrap_or(&r.action)
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let action = format!("{} {kind}", r.instance);
            *counts.entry((action, r.outcome.clone())).or_insert(0) += 1;
            issues.insert((r.project.clone(), r.iid));
        }
        let ctx = crate::comment::Digest {
            date: today.clone(),
            changes: rows.len(),
            counts: counts
                .iter()
                .map(|((a, o), n)| crate::comment::DigestCount {
                    action: a.clone(),
                    outcome: o.clone(),
                    n: *n,
                })
                .collect::<Vec<_>>(),
            issues: issues
                .iter()
                .map(|(p, i)| format!("{p}#{i}"))
                .collect::<Vec<_>>(),
        };
        let text = match self.templates.text(&ctx) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot render the digest");
                return false;
            }
        };
        let sent = self
            .notifier
            .deliver(&format!("access-bot: digest {today}"), &text, &key)
            .await;
        if sent {
            let _ = self.store.record_delivery(&key, "ops");
        }
        sent
    }

    /// Whether this replica acts on the project (a dry run always may: it writes nothing).
    pub async fn active(
        &self,
        project: &str,
    ) -> Result<lease::Standing, crate::gitlab::GitlabError> {
        self.lease
            .standing(&*self.gitlab, project, &self.cfg.bot.state_labels.lease)
            .await
    }

    /// Whether this replica may write to the project right now (no call to GitLab).
    pub fn may_write(&self, project: &str) -> bool {
        self.lease.may_write(project)
    }

    /// Every event's work once, in this order: the poll, the stale scan (of
    /// the issues the poll did not look at), the expiries, the Support Team
    /// follow-ups (`once`, and a daemon at start).
    pub async fn once(&self) -> CycleReport {
        let mut report = self.cycle().await;
        // GitLab did not answer for any project: the rest would only wait on it too.
        if report.errors.len() >= self.cfg.gitlab.projects.len() {
            return report;
        }
        let looked: BTreeSet<(String, u64)> = report
            .outcomes
            .iter()
            .map(|(p, i, _)| (p.clone(), *i))
            .collect();
        report
            .outcomes
            .extend(self.stale_scan(&looked).await.outcomes);
        // As one poll that listed them too would say them: by project, then issue.
        let order = |p: &str| self.cfg.gitlab.projects.iter().position(|x| x == p);
        report.outcomes.sort_by_key(|(p, iid, _)| (order(p), *iid));
        let periodic = self.expiries().await;
        let periodic = periodic
            .into_iter()
            .chain(self.support_team_followups().await);
        // In a rehearsal, what each would have written (as for the poll's).
        report.outcomes.extend(periodic.map(|(p, iid, o)| {
            let o = self.rehearsed_outcome(&p, iid, o);
            (p, iid, o)
        }));
        report
    }

    /// Take or renew the lease of every project (as a poll does), so that
    /// work on a schedule of its own knows where this replica acts.
    async fn hold_leases(&self) {
        for project in &self.cfg.gitlab.projects {
            if let Err(e) = self.active(project).await {
                tracing::warn!(project, error = %e, "cannot check the project's lease");
            }
        }
    }

    /// One poll of every project: changed issues, plus those to retry.
    pub async fn cycle(&self) -> CycleReport {
        let mut report = CycleReport::default();
        for project in self.cfg.gitlab.projects.clone() {
            match self.active(&project).await {
                Ok(lease::Standing::Active) => {}
                Ok(lease::Standing::Standby { holder, until }) => {
                    tracing::info!(project, holder, %until, "another replica acts on this project; standing by");
                    report
                        .standby
                        .push(format!("{project}: {holder} until {until}"));
                    continue;
                }
                Err(e) => {
                    report.errors.push(format!("{project}: {e}"));
                    continue;
                }
            }
            match self.candidates(&project).await {
                Ok((iids, newest)) => {
                    use futures_util::StreamExt;
                    let results: Vec<(u64, Outcome)> = futures_util::stream::iter(iids)
                        .map(|(iid, listed)| {
                            let project = project.clone();
                            async move { (iid, self.process_listed(&project, iid, listed).await) }
                        })
                        .buffer_unordered(self.cfg.bot.concurrency.max(1))
                        .collect()
                        .await;
                    let mut results = results;
                    results.sort_by_key(|(iid, _)| *iid);
                    for (iid, o) in results {
                        report.outcomes.push((project.clone(), iid, o));
                    }
                    if let Some(t) = newest
                        && let Err(e) = self.store.advance_cursor(&project, t)
                    {
                        report.errors.push(e.to_string());
                    }
                }
                Err(e) => {
                    tracing::error!(project = %project, error = %e, "poll failed; will try again next cycle");
                    let text = e.to_string();
                    let kind = if ["401", "403", "Unauthorized", "Forbidden", "404"]
                        .iter()
                        .any(|k| text.contains(k))
                    {
                        crate::notify::NoticeKind::ConfigurationError
                    } else {
                        crate::notify::NoticeKind::StepFailed
                    };
                    self.tell_ops(
                        kind,
                        format!("poll {project}: {text}"),
                        format!("Polling {project} failed: {text}"),
                        None,
                    )
                    .await;
                    report.errors.push(format!("{project}: {e}"));
                }
            }
        }
        report
    }

    /// Issues to look at: changed since the cursor, not yet seen at this
    /// `updated_at`, that are requests by what they ask for (or a rule's
    /// label, or a seat review), with the issue as listed; plus the retry list
    /// (no listed issue). And where the next listing starts.
    async fn candidates(
        &self,
        project: &str,
    ) -> Result<(Vec<(u64, Option<ApiIssue>)>, Option<DateTime<Utc>>), crate::gitlab::GitlabError>
    {
        let seat_label = self.cfg.seat_audit.as_ref().map(|s| s.label.clone());
        let cursor = self.store.cursor(project).ok().flatten();
        let overlap = chrono::Duration::from_std(self.cfg.poll_overlap()).unwrap_or_default();
        let listing = self.gitlab.changed_issues(project, cursor).await?;
        // The next listing starts at GitLab's time of this one (its clock,
        // not the bot's: no skew), minus the overlap, applied once here: it
        // covers changes GitLab had not made visible yet when it answered.
        // An issue changed during the listing is changed after that time, so
        // the next one shows it. When nothing changes for longer than the
        // overlap, a poll is one request per project however many issues
        // exist. Without GitLab's `Date`, the newest change it showed stands
        // in; a listing whose total moved between pages (an issue may have
        // slipped between them) does not move the cursor.
        let next = if listing.shifted {
            tracing::info!(
                project,
                "the listing changed while it was paged; the next one starts from the same cursor"
            );
            None
        } else {
            listing
                .listed_at
                .or_else(|| listing.page.issues.iter().map(|i| i.updated_at).max())
                .map(|t| t - overlap)
        };
        let page = listing.page;
        // An issue whose JSON cannot be read fails alone: it is processed like
        // the others (and its failure said on it), never stops the listing.
        let unreadable: Vec<u64> = page.unreadable.iter().filter_map(|u| u.iid).collect();
        for u in &page.unreadable {
            tracing::warn!(project, iid = ?u.iid, error = %u.error, "an issue in the listing cannot be read");
        }
        // The latest version of each (an issue changed during the listing
        // can be in it twice).
        let mut latest: BTreeMap<u64, ApiIssue> = BTreeMap::new();
        for i in page.issues.into_iter().filter(|i| {
            seat_label.as_ref().is_some_and(|l| i.labels.contains(l))
                || crate::request::is_candidate(&i.to_input(), &self.cfg)
        }) {
            if latest
                .get(&i.iid)
                .is_none_or(|seen| seen.updated_at < i.updated_at)
            {
                latest.insert(i.iid, i);
            }
        }
        let mut out: BTreeMap<u64, Option<ApiIssue>> = latest
            .into_iter()
            .filter(|(iid, i)| {
                !self
                    .store
                    .seen(project, *iid, i.updated_at)
                    .unwrap_or(false)
            })
            .map(|(iid, i)| (iid, Some(i)))
            .collect();
        let others = unreadable
            .into_iter()
            .chain(self.store.retries(project).unwrap_or_default());
        for iid in others {
            out.entry(iid).or_insert(None);
        }
        Ok((out.into_iter().collect(), next))
    }

    /// The stale scan: waiting issues old enough for a reminder or closing,
    /// in every project this replica acts on, each looked at as the poll
    /// would (except those in `skip`, already looked at).
    async fn stale_scan(&self, skip: &BTreeSet<(String, u64)>) -> CycleReport {
        let mut report = CycleReport::default();
        for project in self.cfg.gitlab.projects.clone() {
            match self.active(&project).await {
                Ok(lease::Standing::Active) => {}
                // The poll says who stands by, and why a project cannot be read.
                Ok(lease::Standing::Standby { .. }) => continue,
                Err(e) => {
                    tracing::warn!(project, error = %e, "cannot check the project's lease for the stale scan");
                    continue;
                }
            }
            let iids: Vec<u64> = self
                .stale_candidates(&project)
                .await
                .into_iter()
                .filter(|iid| !skip.contains(&(project.clone(), *iid)))
                .collect();
            use futures_util::StreamExt;
            let mut results: Vec<(u64, Outcome)> = futures_util::stream::iter(iids)
                .map(|iid| {
                    let project = project.clone();
                    async move { (iid, self.process(&project, iid).await) }
                })
                .buffer_unordered(self.cfg.bot.concurrency.max(1))
                .collect()
                .await;
            results.sort_by_key(|(iid, _)| *iid);
            for (iid, o) in results {
                report.outcomes.push((project.clone(), iid, o));
            }
        }
        report
    }

    /// Waiting issues old enough for a reminder or closing.
    async fn stale_candidates(&self, project: &str) -> Vec<u64> {
        let remind = self.cfg.lifecycle.stale_reminder_after.chrono();
        let now = self.now();
        match self
            .gitlab
            .list_issues(project, Some(&self.cfg.bot.state_labels.waiting), None)
            .await
        {
            Ok(list) => list
                .issues
                .into_iter()
                .filter(|i| now - i.created_at >= remind)
                .map(|i| i.iid)
                .collect(),
            Err(e) => {
                tracing::warn!(project, error = %e, "cannot list waiting issues for the stale check");
                Vec::new()
            }
        }
    }
}
