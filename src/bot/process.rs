//! One issue, one cycle: read, decide, act, report.
//!
//! The order is what makes it safe: the plan comment is posted (and read back
//! as the bot's own record) before anything is changed; approvals count only
//! after it; the request is read again right before acting; the result comment
//! is posted before the ticks, and says which digest the ticks leave behind, so
//! a crash anywhere is picked up where it stopped and a completed plan is
//! never run a second time.

use std::collections::{BTreeMap, BTreeSet};

use crate::approval::{self, Context, Decision, Directory, History, Identity, Stage};
use crate::comment::{self, NoteKind};
use crate::gitlab::ApiIssue;
use crate::marker::short_hash;
use crate::plan::{self, Action, BlockReason, Observed, Plan};
use crate::policy::Requester;
use crate::report;
use crate::request::{self, Email, IssueFacts, Request, RequestKind, checklist};

use crate::notify::{Notice, NoticeKind};

use super::observe::ObserveError;
use super::reply;
use super::writeback::{Section, Writeback};
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
    #[error("cannot look up the GitLab user @{0} right now; trying again next cycle")]
    Lookup(String),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error("this replica no longer holds the project's lease; another may act now")]
    NotActive,
}

impl ProcessError {
    /// Worth trying again as it is: a service was busy, slow or unreachable.
    /// Anything else (an answer the bot cannot read, a refusal) is said on
    /// the issue, because trying again alone will not fix it.
    pub fn is_transient(&self) -> bool {
        use crate::identity::IdentityError;
        match self {
            ProcessError::Gitlab(e) => e.is_transient(),
            ProcessError::Observe(ObserveError::Accounts(e)) => e.is_transient(),
            ProcessError::Observe(ObserveError::Groups(e)) => e.is_transient(),
            ProcessError::Observe(ObserveError::Identity(IdentityError::Gitlab(e)))
            | ProcessError::Identity(IdentityError::Gitlab(e)) => e.is_transient(),
            ProcessError::Observe(ObserveError::Identity(IdentityError::Directory(
                crate::directory::DirectoryError::Failed(_),
            )))
            | ProcessError::Identity(IdentityError::Directory(
                crate::directory::DirectoryError::Failed(_),
            )) => true,
            ProcessError::Lookup(_) | ProcessError::NotActive => true,
            _ => false,
        }
    }
}

/// What acting on an approved plan came to.
enum Acted {
    Outcome(Outcome),
    /// The accounts changed since the plan: the approval does not cover the
    /// changes now needed; a new plan says why.
    Replan(String),
}

/// What a plan comment is made of.
pub(super) struct PlanPost<'a> {
    pub request: &'a Request,
    pub requirements: &'a crate::policy::Requirements,
    pub missing: &'a [approval::MissingApproval],
    pub granted: &'a [approval::Granted],
    pub verification_pending: bool,
    /// Why earlier approvals no longer apply, if any did.
    pub voided: Option<String>,
    pub observed: &'a Observed,
    /// A new plan even where one with the same request and changes is on
    /// the issue (its approvals were used up by a change someone undid).
    pub again: Option<String>,
}

/// Why a plan carried out in part is not carried on: a change it made was
/// undone since, by someone else.
const UNDONE_SINCE: &str = "A change the earlier plan already made was undone since (by someone other than the bot), so the bot does not make it again on the earlier approval: an approval authorises one execution. This plan lists what is needed now; approve it again.";

/// The person the People team is e-mailed about.
pub(super) struct ToVerify {
    who: String,
    email: Email,
}

/// The key of the verification request on the issue (one per person).
/// What the store holds for a People-team e-mail about to be announced on
/// the issue and handed over (not yet handed over).
const PREPARED: &str = "prepared";
/// ... and what it holds while the message is handed over.
const HANDING_OVER: &str = "handing over";

/// How many times one decision reads the issue and its label events at most,
/// when the two disagree (a label applied between the reads).
pub(super) const VIEWS: u32 = 3;

fn verification_key(email: &Email) -> String {
    format!("citizenship:{}", short_hash(email.as_str()))
}

/// The author of an issue as far as identity sources tell (never the issue itself).
pub(super) struct Author {
    pub(super) email: Option<String>,
    pub(super) name: Option<String>,
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

    /// Process one issue under its lease. Until the issue reaches a stable
    /// outcome (done, waiting, refused, ignored) it stays on the retry list,
    /// recorded before any work starts: a bot killed mid-way leaves it there,
    /// so the next run looks at it again whatever the poll cursor says.
    pub async fn process(&self, project: &str, iid: u64) -> Outcome {
        self.process_listed(project, iid, None).await
    }

    /// As `process`, with the issue as the poll's listing just returned it
    /// (no need to read it again to decide: every write is preceded by a
    /// fresh read, right before acting and right before editing the issue).
    pub async fn process_listed(
        &self,
        project: &str,
        iid: u64,
        listed: Option<ApiIssue>,
    ) -> Outcome {
        // One task per issue in this process; the other finds it busy and leaves
        // it on the retry list, as it would another runner's.
        let Some(_mine) = InFlight::enter(&self.in_flight, project, iid) else {
            tracing::info!(iid, "already being worked on in this process; skipping");
            if let Err(e) = self.store.add_retry(project, iid, "busy") {
                tracing::error!(iid, error = %e, "cannot keep the issue on the retry list");
            }
            return Outcome::Busy;
        };
        // The bound on work at once; the request budgets are shared anyway.
        let _permit = self.work.acquire().await.ok();
        match self.active(project).await {
            Ok(super::lease::Standing::Active) => {}
            Ok(super::lease::Standing::Standby { holder, .. }) => {
                tracing::info!(
                    iid,
                    holder,
                    "another replica acts on this project; skipping"
                );
                return Outcome::Busy;
            }
            Err(e) => return Outcome::Failed(e.to_string()),
        }
        match self.store.try_lease(project, iid) {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(iid, "another runner is working on this issue; skipping");
                if let Err(e) = self.store.add_retry(project, iid, "busy") {
                    tracing::error!(iid, error = %e, "cannot keep the issue on the retry list");
                }
                return Outcome::Busy;
            }
            Err(e) => return Outcome::Failed(e.to_string()),
        }
        if let Err(e) = self.store.add_retry(project, iid, "in progress") {
            tracing::error!(iid, error = %e, "cannot mark the issue in progress");
            let _ = self.store.release(project, iid);
            return Outcome::Failed(e.to_string());
        }
        self.forget_own_edit(project, iid);
        // Every line logged while working on the issue carries its iid (connectors included).
        let span = tracing::info_span!("issue", iid, project);
        let work =
            tracing::Instrument::instrument(self.process_inner(project, iid, listed, 1), span);
        // Signs of life while it works, so that a long step keeps the lease
        // and a dead holder's lease is taken over quickly.
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(work);
        let result = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = every.tick() => {
                    if let Err(e) = self.store.heartbeat() {
                        tracing::warn!(iid, error = %e, "cannot renew the issue's lease");
                    }
                }
            }
        };
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(iid, error = %e, "giving up on this issue for this cycle");
                if !e.is_transient() {
                    self.say_stopped(project, iid, &e.to_string()).await;
                }
                Outcome::Failed(e.to_string())
            }
        };
        let r = match &outcome {
            Outcome::Failed(why) => self.store.add_retry(project, iid, why),
            Outcome::Busy => self.store.add_retry(project, iid, "busy"),
            _ => self.store.clear_retry(project, iid),
        };
        if let Err(e) = r {
            tracing::error!(iid, error = %e, "cannot record the issue's outcome");
        }
        if let Err(e) = self.store.release(project, iid) {
            tracing::error!(iid, error = %e, "cannot release the issue's lease");
        }
        self.forget_own_edit(project, iid);
        tracing::info!(iid, outcome = ?outcome, "processed");
        self.rehearsed_outcome(project, iid, outcome)
    }

    /// Say on the issue, once per distinct error, that the bot stopped on it
    /// and why (an answer it cannot read, a refusal): the issue alone fails,
    /// and whoever reads it learns what to fix. Needs only the issue's notes,
    /// so that an issue whose own JSON cannot be read still gets it.
    pub(super) async fn say_stopped(&self, project: &str, iid: u64, error: &str) {
        if !self.may_write(project) {
            return;
        }
        let key = format!("stopped:{}", short_hash(error));
        let said = async {
            let notes = self.gitlab.notes(project, iid).await?;
            let history = History::read(&notes, self.me.id, &self.marker_key, project, iid);
            if history.keys().contains(&crate::marker::clean(&key)) {
                return Ok::<bool, ProcessError>(false);
            }
            let body = self.templates.text(&comment::Stopped {
                error: error.to_string(),
            })?;
            let kind = NoteKind::Stopped.as_str();
            let sealed = crate::marker::Marker::new(kind, vec![key.clone()], "").seal(
                &self.marker_key,
                project,
                iid,
                &body,
            );
            self.gitlab.create_note(project, iid, &sealed).await?;
            Ok(true)
        }
        .await;
        match said {
            Ok(true) => {
                self.tell_ops(
                    NoticeKind::StepFailed,
                    format!("#{iid} stopped: {}", short_hash(error)),
                    format!("#{iid} in {project}: the bot stopped on this issue: {error}"),
                    None,
                )
                .await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(iid, error = %e, "cannot say on the issue why the bot stopped");
            }
        }
    }

    /// The issue and its notes, without label events: enough for work that
    /// decides from notes and markers (seat reviews, merge-request follow-ups).
    pub(super) async fn notes_only(
        &self,
        project: &str,
        issue: &ApiIssue,
    ) -> Result<IssueFacts, ProcessError> {
        Ok(IssueFacts {
            issue: issue.to_input(),
            label_events: Vec::new(),
            notes: self.read_notes(project, issue).await?,
        })
    }

    /// The notes that decisions read, oldest first: the system notes (edits,
    /// ticks) and the bot's own, exactly as a full read gives them. Other
    /// people's comments decide nothing; the cache keeps only their ids and
    /// edit times, to count them.
    ///
    /// From the cache (`store`) with what was edited or added since (a note's
    /// edit moves its `updated_at`), or a full read when there is no cache,
    /// or when the cache with the changes does not add up to the comments
    /// GitLab counts on the issue (one was deleted; or missed). A look stores
    /// only the notes that changed, so its cost does not grow with the
    /// discussion.
    pub(super) async fn read_notes(
        &self,
        project: &str,
        issue: &ApiIssue,
    ) -> Result<Vec<request::Note>, ProcessError> {
        let iid = issue.iid;
        let bot = self.me.id;
        let decides = |n: &request::Note| n.system || n.author.id == bot;
        let head = self
            .store
            .notes_head(project, iid)
            .unwrap_or_else(|e| {
                tracing::warn!(iid, error = %e, "cannot read the cached notes; reading them all");
                None
            })
            // Kept for another account, the cache lacks this one's notes.
            .filter(|h| h.bot == bot);
        if let (Some(head), Some(count)) = (head, issue.user_notes_count) {
            // From GitLab's time of the last read (or the newest edit it
            // showed), minus the overlap: a note whose edit was not yet
            // visible to that read is read now.
            let overlap = chrono::Duration::from_std(self.cfg.poll_overlap()).unwrap_or_default();
            if let Some(since) = head
                .read_at
                .or(head.newest_edit)
                .and_then(|t| t.checked_sub_signed(overlap))
            {
                let fresh = self.gitlab.notes_since(project, iid, Some(since)).await?;
                match self.merge_notes(project, iid, &head, fresh, count, &decides) {
                    Ok(Some(notes)) => return Ok(notes),
                    Ok(None) => tracing::info!(
                        iid,
                        gitlab = count,
                        "the cached notes do not add up to GitLab's count (one was deleted); reading them all"
                    ),
                    Err(e) => {
                        tracing::warn!(iid, error = %e, "cannot read the cached notes; reading them all")
                    }
                }
            }
        }
        let all = self.gitlab.notes_since(project, iid, None).await?;
        let comments = all.notes.iter().filter(|n| !n.note.system).count() as u64;
        // Kept only when it adds up: else the next look reads them all again.
        let kept = if issue.user_notes_count == Some(comments) {
            self.store
                .store_notes(project, iid, bot, &all, true, decides)
        } else {
            self.store.forget_notes(project, iid)
        };
        if let Err(e) = kept {
            tracing::warn!(iid, error = %e, "cannot cache the notes; the next look reads them all");
        }
        let mut notes: Vec<request::Note> = all
            .notes
            .into_iter()
            .map(|n| n.note)
            .filter(|n| decides(n))
            .collect();
        notes.sort_by_key(|n| (n.created_at, n.id));
        Ok(notes)
    }

    /// The cached notes with what a read since the cache's time found, stored
    /// as far as they changed; `None` when they do not add up to `count`,
    /// GitLab's number of comments on the issue.
    fn merge_notes(
        &self,
        project: &str,
        iid: u64,
        head: &crate::store::NotesHead,
        fresh: crate::gitlab::NoteRead,
        count: u64,
        decides: &dyn Fn(&request::Note) -> bool,
    ) -> Result<Option<Vec<request::Note>>, crate::store::StoreError> {
        // The latest version of each note read (a note can show twice when
        // an edit moves it between pages).
        let mut read: BTreeMap<u64, crate::gitlab::TimedNote> = BTreeMap::new();
        for n in fresh.notes {
            match read.get(&n.note.id) {
                Some(seen) if seen.updated_at > n.updated_at => {}
                _ => {
                    read.insert(n.note.id, n);
                }
            }
        }
        let ids: Vec<u64> = read.keys().copied().collect();
        let cached = self.store.cached_versions(project, iid, &ids)?;
        let mut new_comments = 0;
        let changed: Vec<crate::gitlab::TimedNote> = read
            .into_values()
            .filter(|n| match cached.get(&n.note.id) {
                None => {
                    new_comments += u64::from(!n.note.system);
                    true
                }
                // A note read as it was cached adds nothing; the same time
                // with other content (its author renamed) does, where the
                // text is kept.
                Some(old) => {
                    old.updated_at < n.updated_at
                        || (old.updated_at == n.updated_at
                            && decides(&n.note)
                            && old.note.as_ref() != Some(&n.note))
                }
            })
            .collect();
        if head.comments + new_comments != count {
            return Ok(None);
        }
        let mut notes: BTreeMap<u64, request::Note> = self
            .store
            .kept_notes(project, iid)?
            .into_iter()
            .map(|n| (n.note.id, n.note))
            .collect();
        if !changed.is_empty() {
            // Unchanged, the cache keeps the time of its last read: the next
            // look reads from there again, which is what was read now (and
            // whatever changes after), so nothing is missed.
            let changed = crate::gitlab::NoteRead {
                notes: changed,
                read_at: fresh.read_at,
            };
            self.store
                .store_notes(project, iid, head.bot, &changed, false, decides)?;
            for n in changed.notes {
                if decides(&n.note) {
                    notes.insert(n.note.id, n.note);
                }
            }
        }
        let mut notes: Vec<request::Note> = notes.into_values().collect();
        notes.sort_by_key(|n| (n.created_at, n.id));
        Ok(Some(notes))
    }

    /// Whether deciding on this request reads the label events (who applied
    /// which label): for the trust in a trusted kind, for any approval it
    /// needs, and for the People team's answer to a verification e-mail. A
    /// request that needs none of them (verified self-service) is decided
    /// without them, as `approval::decide` would: it computes the same
    /// requirements, with no trust to lose when the kind has no trusted authors.
    fn needs_label_events(&self, req: &Request, requester: &Requester, history: &History) -> bool {
        if !self.cfg.policy_for(req.kind).trusted_authors.is_empty() {
            return true;
        }
        // The People team's e-mail looks for their answer once the bot has
        // asked on the issue (`verification_email`).
        let asked = req.subjects.first().is_some_and(|s| {
            history
                .keys()
                .contains(&crate::marker::clean(&verification_key(&s.email)))
        });
        if asked && self.to_verify_configured() {
            return true;
        }
        let ss = crate::policy::self_service(req, requester, &self.cfg);
        !crate::policy::requirements(req, &self.cfg, ss, crate::policy::Trust::NotApplicable)
            .required
            .is_empty()
    }

    /// The bot's verified records on an issue. Notes by the bot's account that
    /// do not verify are someone's forgery or edit: logged and told to ops.
    pub(super) async fn history(&self, project: &str, facts: &IssueFacts) -> History {
        let h = History::read(
            &facts.notes,
            self.me.id,
            &self.marker_key,
            project,
            facts.issue.iid,
        );
        if let Some((note, e)) = h.rejected.first() {
            tracing::warn!(iid = facts.issue.iid, note, error = %e, "a note by the bot's account does not verify; it does not count");
            self.tell_ops(
                NoticeKind::SecurityRefusal,
                format!("#{} tampered bot note", facts.issue.iid),
                format!(
                    "#{}: {} note(s) by the bot's account do not verify ({e}); they were edited by someone, or carry a forged marker, and are ignored",
                    facts.issue.iid,
                    h.rejected.len()
                ),
                Some(facts.issue.web_url.clone()),
            )
            .await;
        }
        h
    }

    /// GitLab users the decision needs, with e-mails from the identity sources.
    /// A lookup that fails is an error (retried), never a silent "unknown".
    pub(super) async fn directory(
        &self,
        names: BTreeSet<String>,
        request: &Request,
    ) -> Result<Directory, ProcessError> {
        let mut d = Directory::new();
        d.add(Identity {
            id: self.me.id,
            username: self.me.username.clone(),
            email: None,
            name: None,
        });
        for u in names {
            match self.lookup_user(&u).await {
                Ok(Some(user)) => d.add(Identity {
                    id: user.id,
                    username: user.username.clone(),
                    email: self.identity.email_of(&user).await?,
                    name: user.name.clone(),
                }),
                Ok(None) => d.add_absent(&u),
                Err(_) => return Err(ProcessError::Lookup(u)),
            }
        }
        // What the company directory says about each person the request names.
        if self.identity.has_directory() {
            for s in &request.subjects {
                let p = self.identity.person(&s.email).await?;
                d.add_person(s.email.clone(), p);
            }
        }
        Ok(d)
    }

    pub(super) async fn author(&self, username: &str) -> Result<Author, ProcessError> {
        match self.lookup_user(username).await {
            Ok(Some(u)) => Ok(Author {
                email: self.identity.email_of(&u).await?.map(|e| e.to_string()),
                name: u.name.clone(),
            }),
            Ok(None) => Ok(Author {
                email: None,
                name: None,
            }),
            Err(_) => Err(ProcessError::Lookup(username.to_string())),
        }
    }

    /// `views`: how many times the issue was read for this decision so far
    /// (see `labels_agree`).
    async fn process_inner(
        &self,
        project: &str,
        iid: u64,
        listed: Option<ApiIssue>,
        views: u32,
    ) -> Result<Outcome, ProcessError> {
        let issue = match listed {
            Some(i) if i.iid == iid => i,
            _ => self.gitlab.issue(project, iid).await?,
        };
        if issue.state != "opened" {
            return Ok(Outcome::Ignored);
        }
        // A seat review the bot opened: reviewers' ticks, not a request.
        if let Some((instance, period)) = self.seat_review_of(project, &issue).await? {
            return self
                .process_seat_review(project, &issue, &instance, &period)
                .await;
        }
        if !request::is_candidate(&issue.to_input(), &self.cfg) {
            return Ok(Outcome::Ignored);
        }
        let author = self.author(&issue.author.username).await?;
        let mut input = issue.to_input();
        input.author_email = author.email.clone();
        input.author_name = author.name.clone();
        let mut facts = IssueFacts {
            issue: input,
            notes: self.read_notes(project, &issue).await?,
            // Read below, once the request says whether anything needs them.
            label_events: Vec::new(),
        };
        let mut history = self.history(project, &facts).await;
        self.remember_grants(project, &issue, &history).await?;

        let req = match request::parse_request(&facts.issue, &self.cfg) {
            Ok(req) => req,
            Err(errors) => {
                let reply = self.invalid_reply(&errors);
                return self
                    .perform(project, &issue, &mut history, Some(&facts), None, reply)
                    .await;
            }
        };
        let requester = Requester {
            username: issue.author.username.clone(),
            email: author.email.as_deref().and_then(|e| Email::parse(e).ok()),
        };
        if self.needs_label_events(&req, &requester, &history) {
            facts.label_events = self.gitlab.label_events(project, iid).await?;
            // The issue was listed (or read) before its label events: a label
            // applied in between shows in the events only, and a decision on
            // the mix calls a fresh approval a renamed label (a security
            // refusal, on the issue and to ops) or finds a label nobody
            // applied. Decide on one view: read the issue again and start
            // over, the events read after it. Bounded: labels that keep
            // changing are decided on as read the last time.
            if !approval::labels_agree(&self.cfg, &facts.issue.labels, &facts.label_events) {
                if views < VIEWS {
                    tracing::info!(
                        iid,
                        "the labels changed while the bot read the issue; reading it again"
                    );
                    let fresh = self.gitlab.issue(project, iid).await?;
                    return Box::pin(self.process_inner(project, iid, Some(fresh), views + 1))
                        .await;
                }
                tracing::warn!(
                    iid,
                    "the labels kept changing while the bot read the issue; deciding on the last read"
                );
            }
        }
        let facts = facts;
        let mut names = Directory::wanted(&req, &self.cfg);
        names.insert(issue.author.username.clone());
        let dir = self.directory(names, &req).await?;
        // A verification request on the issue whose e-mail no note reports
        // (a crash, a refusal): finish it first, whatever the decision is now.
        if let Some(v) = self.to_verify(&req, &dir)
            && let Err(e) = self
                .verification_email(project, &issue, &mut history, &req, &v, &facts)
                .await?
        {
            tracing::warn!(iid, error = %e, "the People team's e-mail is still not sent");
        }

        // Decide; post a plan when none describes the request (or the accounts
        // changed since the plan), then decide again with it on record: a
        // request that needs no approval goes ahead at once. Bounded: a plan is
        // posted at most twice in one cycle.
        let mut replan: Option<String> = None;
        for _ in 0..3 {
            let decision = {
                let cx = Context {
                    facts: &facts,
                    cfg: &self.cfg,
                    dir: &dir,
                    bot_id: self.me.id,
                    history: &history,
                    requester: &requester,
                };
                approval::decide(req.clone(), &cx)
            };
            match decision {
                Decision::Waiting {
                    request,
                    stage,
                    missing,
                    granted,
                    verification_pending,
                    requirements,
                } if !matches!(stage, Stage::Current { .. }) => {
                    let observed = self.observe(&request).await?;
                    let why = matches!(stage, Stage::Stale { .. }).then(|| {
                            "The request changed since an earlier plan (or after it was carried out), so any earlier approval no longer applies: approve this plan again.".to_string()
                        });
                    let planned = history.records.iter().any(|r| {
                        r.marker.is(NoteKind::Plan) && r.marker.digest == request.digest()
                    });
                    let early = self
                        .post_plan(
                            project,
                            &issue,
                            &facts,
                            &dir,
                            &mut history,
                            PlanPost {
                                request: &request,
                                requirements: &requirements,
                                missing: &missing,
                                granted: &granted,
                                verification_pending,
                                voided: why,
                                observed: &observed,
                                again: None,
                            },
                        )
                        .await?;
                    // After the plan that explains it is on the issue; not
                    // again for a request already planned.
                    if let Some(n) = reply::approvals_notice(&request, &missing, planned) {
                        self.tell_ops(n.kind, n.cause, n.detail, n.url).await;
                    }
                    if let Some(o) = early {
                        return Ok(o);
                    }
                    if !requirements.required.is_empty() {
                        // Approvals come after the plan: nothing more this cycle.
                        return Ok(Outcome::Waiting);
                    }
                }
                Decision::Refused {
                    request,
                    reasons,
                    close,
                    security,
                } => {
                    let reply =
                        self.refused_reply(&history, &request, reasons, close, security, None);
                    return self
                        .perform(
                            project,
                            &issue,
                            &mut history,
                            Some(&facts),
                            Some(&request),
                            reply,
                        )
                        .await;
                }
                Decision::Done { request, stage } => {
                    return self
                        .already_done(project, &issue, &mut history, &request, &author, stage)
                        .await;
                }
                Decision::Waiting {
                    request,
                    missing,
                    granted,
                    verification_pending,
                    ..
                } => {
                    let reply = self.waiting_reply(
                        &facts,
                        &history,
                        &request,
                        &missing,
                        &granted,
                        verification_pending,
                        &dir,
                    );
                    return self
                        .perform(
                            project,
                            &issue,
                            &mut history,
                            Some(&facts),
                            Some(&request),
                            reply,
                        )
                        .await;
                }
                Decision::Approved(approved) => {
                    let request = approved.request().clone();
                    let requirements = approved.requirements().clone();
                    let superseded = approved.superseded(&self.cfg, &request);
                    match self
                        .approved(project, &issue, &mut history, approved, &author)
                        .await?
                    {
                        Acted::Outcome(o) => return Ok(o),
                        // At most one new plan per cycle for this reason.
                        Acted::Replan(_) if replan.is_some() => return Ok(Outcome::Waiting),
                        Acted::Replan(why) => {
                            replan = Some(why.clone());
                            // A new plan note, even for the same changes: the
                            // number of the bot's records so far tells them apart.
                            let again =
                                (why == UNDONE_SINCE).then(|| history.records.len().to_string());
                            let observed = self.observe(&request).await?;
                            if let Some(o) = self
                                .post_plan(
                                    project,
                                    &issue,
                                    &facts,
                                    &dir,
                                    &mut history,
                                    PlanPost {
                                        request: &request,
                                        requirements: &requirements,
                                        missing: &superseded,
                                        granted: &[],
                                        verification_pending: false,
                                        again,
                                        voided: Some(why),
                                        observed: &observed,
                                    },
                                )
                                .await?
                            {
                                return Ok(o);
                            }
                            if !requirements.required.is_empty() {
                                return Ok(Outcome::Waiting);
                            }
                        }
                    }
                }
            }
        }
        Ok(Outcome::Waiting)
    }

    /// Post the plan comment: what the bot will do, what each change needs,
    /// and (sealed in its marker) the digests an approval binds to.
    /// `Some(outcome)`: stop here (the People team's e-mail failed).
    async fn post_plan(
        &self,
        project: &str,
        issue: &ApiIssue,
        facts: &IssueFacts,
        dir: &Directory,
        history: &mut History,
        p: PlanPost<'_>,
    ) -> Result<Option<Outcome>, ProcessError> {
        // Each approval is bound to its label's id, which a rename cannot move.
        let label_names: Vec<String> = p
            .requirements
            .required
            .iter()
            .filter_map(|n| self.cfg.approvals.get(n).map(|a| a.label.clone()))
            .collect();
        let ids = if label_names.is_empty() {
            Default::default()
        } else {
            self.gitlab.label_ids(project, &label_names).await?
        };
        let reply = self.plan_reply(facts, dir, &p, &ids);
        match self
            .perform(project, issue, history, Some(facts), Some(p.request), reply)
            .await?
        {
            Outcome::Failed(e) => Ok(Some(Outcome::Failed(e))),
            _ => Ok(None),
        }
    }

    /// The latest plan was carried out. Put back the bot's ticks if they are
    /// missing; never run anything again.
    async fn already_done(
        &self,
        project: &str,
        issue: &ApiIssue,
        history: &mut History,
        request: &Request,
        author: &Author,
        stage: Stage,
    ) -> Result<Outcome, ProcessError> {
        let (result, retick) = match stage {
            Stage::Done { result, retick, .. } => (result, retick),
            // Refused when it came to act: nothing more without a new plan.
            Stage::Closed { .. } => {
                let reply = self.closed_reply(issue);
                return self
                    .perform(project, issue, history, None, Some(request), reply)
                    .await;
            }
            _ => return Ok(Outcome::Ignored),
        };
        // Proposing the Support Team file opens a merge request: done first,
        // its sections go into the reply.
        let mut files = Writeback::default();
        let failed = if request.kind == RequestKind::Offboarding {
            self.support_team_files(project, request, &mut files)
                .await?
        } else {
            None
        };
        let reply = self.done_reply(
            issue,
            request,
            author,
            &result,
            retick,
            (files.sections, failed),
        );
        self.perform(project, issue, history, None, Some(request), reply)
            .await
    }

    /// US Federal access: the People team is asked to verify citizenship on
    /// the issue (a section of the note being written). Returns the person to
    /// e-mail the People team about, when `[notify.email]` is configured; the
    /// e-mail goes out only after that note is on the issue.
    pub(super) fn verification(
        &self,
        request: &Request,
        dir: &Directory,
        wb: &mut Writeback,
    ) -> Option<ToVerify> {
        let rule = self
            .cfg
            .approvals
            .values()
            .find(|r| r.denied_label.is_some());
        // A verification is of one person (`decide` refuses more), named as
        // GitLab and the identity sources know them, never by the free text
        // of the issue: the People team checks who will get the access.
        let subject = request.subjects.first()?;
        let who = self.verified_person(request, dir)?;
        wb.sections.push(Section {
            comment: comment::CitizenshipRequest {
                name: who.clone(),
                issue_url: request.web_url.clone(),
                verifiers: rule.map(|r| {
                    r.approvers
                        .iter()
                        .map(|a| format!("`@{}`", a.trim_start_matches('@')))
                        .collect::<Vec<_>>()
                        .join(", ")
                }),
                verified_label: rule.map(|r| r.label.clone()),
                denied_label: rule.and_then(|r| r.denied_label.clone()),
            }
            .into(),
            key: verification_key(&subject.email),
        });
        self.mailer
            .as_ref()
            .filter(|m| !m.people_team.is_empty())
            .map(|_| ToVerify {
                who,
                email: subject.email.clone(),
            })
    }

    /// Whether one of the verification's approvers applied its label (either
    /// answer) since the bot asked.
    fn verification_answered(&self, facts: &IssueFacts) -> bool {
        let Some(rule) = self
            .cfg
            .approvals
            .values()
            .find(|r| r.denied_label.is_some())
        else {
            return false;
        };
        let labels: Vec<&String> = std::iter::once(&rule.label)
            .chain(rule.denied_label.iter())
            .collect();
        facts.label_events.iter().any(|e| {
            e.action == crate::request::LabelAction::Add
                && e.label.as_ref().is_some_and(|l| labels.contains(&l))
                && rule.approvers.iter().any(|a| {
                    a.trim_start_matches('@')
                        .eq_ignore_ascii_case(&e.user.username)
                })
        })
    }

    /// The person a verification is about, as GitLab and the identity
    /// sources name them.
    fn verified_person(&self, request: &Request, dir: &Directory) -> Option<String> {
        let subject = request.subjects.first()?;
        let gitlab_name = subject
            .gitlab_username
            .as_deref()
            .and_then(|u| match dir.lookup(u) {
                approval::Lookup::Found(i) => i.name.clone(),
                _ => None,
            });
        Some(match gitlab_name {
            Some(n) => format!("{n} ({})", subject.email),
            None => subject.email.to_string(),
        })
    }

    /// Whether the People team's e-mail is configured for a verification.
    fn to_verify_configured(&self) -> bool {
        self.mailer
            .as_ref()
            .is_some_and(|m| !m.people_team.is_empty())
            && self
                .cfg
                .approvals
                .values()
                .any(|r| r.denied_label.is_some())
    }

    /// Whom to e-mail the People team about, when e-mail is configured and
    /// the request involves a verification.
    fn to_verify(&self, request: &Request, dir: &Directory) -> Option<ToVerify> {
        self.mailer.as_ref().filter(|m| !m.people_team.is_empty())?;
        self.cfg
            .approvals
            .values()
            .find(|r| r.denied_label.is_some())?;
        let subject = request.subjects.first()?;
        Some(ToVerify {
            who: self.verified_person(request, dir)?,
            email: subject.email.clone(),
        })
    }

    /// The People team's e-mail, exactly once, with the issue as the memory:
    /// the verification request on the issue is the record that the e-mail
    /// is due; the note saying it was sent is the record that it went. In
    /// between, the mail server gets the message in two phases, and the
    /// instant before the hand-over is recorded in the store: after a crash
    /// the bot sends again only if the message cannot have been handed over
    /// (with an empty store it cannot tell, and sends again with the same
    /// Message-ID, which mail systems show once).
    /// `Ok(Err(_))`: the server refused; said on the issue, retried next cycle.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn verification_email(
        &self,
        project: &str,
        issue: &ApiIssue,
        history: &mut History,
        request: &Request,
        v: &ToVerify,
        facts: &IssueFacts,
    ) -> Result<Result<(), String>, ProcessError> {
        let Some(m) = &self.mailer else {
            return Ok(Ok(()));
        };
        let keys = history.keys();
        let sent_key = format!("citizenship-email:{}", short_hash(v.email.as_str()));
        if keys.contains(&crate::marker::clean(&sent_key)) {
            return Ok(Ok(()));
        }
        if !keys.contains(&crate::marker::clean(&verification_key(&v.email))) {
            // The request is not on the issue (its note failed): nothing to send yet.
            return Ok(Ok(()));
        }
        let store_key = format!(
            "citizenship-email:{project}:{}:{}",
            request.iid,
            short_hash(v.email.as_str())
        );
        let to = m.people_team.join(", ");
        let subject = comment::CITIZENSHIP_SUBJECT;
        let said = |comment: comment::Comment, key: String| Writeback {
            kind: NoteKind::Email,
            digest: request.digest(),
            sections: vec![Section { comment, key }],
            ..Default::default()
        };
        if !self.may_write(project) {
            return Err(ProcessError::NotActive);
        }
        let handed = self.store.delivery(&store_key)?;
        // The People team already answered on the issue: they have the
        // request; it is not sent (again).
        let answered = self.verification_answered(facts);
        let sending_key = format!("citizenship-sending:{}", short_hash(v.email.as_str()));
        let announced = keys.contains(&crate::marker::clean(&sending_key));
        let outcome = match (handed.as_deref(), answered) {
            // Handed over before a crash: the server has it (or its answer was lost).
            (Some(HANDING_OVER), _) => Ok(crate::notify::Handover::AnswerLost(
                "the bot stopped before the server's answer arrived".into(),
            )),
            // The server took it; only the note saying so is missing.
            (Some(h), _) if h != PREPARED => Ok(crate::notify::Handover::Accepted),
            (_, true) => Ok(crate::notify::Handover::Answered),
            // Announced on the issue, but the store that would say whether it
            // went is gone: it may have; never twice.
            (None, false) if announced => Ok(crate::notify::Handover::Uncertain),
            (_, false) => {
                // The store first (so that a crash before the hand-over is
                // known as one), then the issue, then the message.
                self.store.set_delivery(&store_key, PREPARED)?;
                if !announced {
                    let wb = said(
                        comment::EmailSending {
                            to: to.clone(),
                            subject,
                        }
                        .into(),
                        sending_key,
                    );
                    match self.write_back(project, issue, history, wb).await? {
                        Some(r) => history.push(r),
                        None => return Err(ProcessError::NotActive),
                    }
                }
                let body = self.templates.text(&comment::CitizenshipEmail {
                    name: v.who.clone(),
                    issue_url: request.web_url.clone(),
                })?;
                let id = format!(
                    "<citizenship-{}-{}-{}@access-bot>",
                    short_hash(project),
                    request.iid,
                    short_hash(v.email.as_str())
                );
                let record = async { self.store.set_delivery(&store_key, HANDING_OVER) };
                m.send_two_phase(&m.people_team, subject, &body, &id, record)
                    .await?
            }
        };
        match outcome {
            Ok(h) => {
                if handed.is_none_or(|h| h == PREPARED) {
                    self.store.set_delivery(&store_key, &to)?;
                }
                tracing::info!(iid = request.iid, to = %to, handover = ?h, "citizenship verification e-mail sent");
                let (lost, answered, uncertain) = match h {
                    crate::notify::Handover::Accepted => (None, false, false),
                    crate::notify::Handover::AnswerLost(why) => (Some(why), false, false),
                    crate::notify::Handover::Answered => (None, true, false),
                    crate::notify::Handover::Uncertain => (None, false, true),
                };
                // Who can answer on the issue instead (from the configuration,
                // never from the issue): mentioned, so GitLab tells them.
                let verifiers: Vec<String> = self
                    .cfg
                    .approvals
                    .values()
                    .find(|r| r.denied_label.is_some())
                    .map(|r| {
                        r.approvers
                            .iter()
                            .map(|a| format!("@{}", a.trim_start_matches('@')))
                            .collect()
                    })
                    .unwrap_or_default();
                let wb = said(
                    comment::EmailSent {
                        to: to.clone(),
                        subject,
                        answer_lost: lost,
                        answered,
                        uncertain,
                        verifiers,
                    }
                    .into(),
                    sent_key,
                );
                if let Some(r) = self.write_back(project, issue, history, wb).await? {
                    history.push(r);
                }
                Ok(Ok(()))
            }
            Err(e) => {
                tracing::warn!(iid = request.iid, error = %e, "citizenship verification e-mail not sent");
                let wb = said(
                    comment::EmailFailed {
                        to: to.clone(),
                        error: e.to_string(),
                    }
                    .into(),
                    format!("email-failed:{}", short_hash(&e.to_string())),
                );
                if let Some(r) = self.write_back(project, issue, history, wb).await? {
                    history.push(r);
                }
                Ok(Err(format!("e-mail to the People team: {e}")))
            }
        }
    }

    async fn approved(
        &self,
        project: &str,
        issue: &ApiIssue,
        history: &mut History,
        approved: approval::Approved<Request>,
        author: &Author,
    ) -> Result<Acted, ProcessError> {
        let labels = &self.cfg.bot.state_labels;
        let req = approved.request();
        let digest = approved.digest().to_string();
        let observed = self.observe(req).await?;
        let exec = plan::build(&approved, &observed, &self.cfg);
        let p = exec.inner();
        let plan_digest = approved.plan().marker.digest.clone();
        // The approval covers the changes its plan listed. If the accounts now
        // need other changes (someone was suspended, an account appeared), a
        // new plan says so and needs its own approvals.
        if let Some(listed) = approved.plan().marker.field("changes")
            && listed != p.changes_digest()
        {
            tracing::info!(
                iid = req.iid,
                "the accounts changed since the plan; posting a new one"
            );
            return Ok(Acted::Replan(
                "The accounts changed since the earlier plan, so it no longer says what would be done, and approvals given to it no longer apply: this plan lists what is needed now. Approve it again.".into(),
            ));
        }
        // One approval, one execution: a grant this plan already made (its
        // results say so) that is to do again was undone by someone since.
        let plan_note = approved.plan().note_id.to_string();
        let did_before: BTreeSet<String> = history
            .records
            .iter()
            .filter(|r| {
                r.marker.is(NoteKind::Result) && r.marker.field("plan_note") == Some(&plan_note)
            })
            .flat_map(|r| {
                r.marker
                    .field("did")
                    .unwrap_or_default()
                    .split('.')
                    .filter(|h| !h.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        if !req.kind.revokes()
            && p.todo()
                .any(|s| did_before.contains(&short_hash(&plan::change_key(s))))
        {
            tracing::warn!(
                iid = req.iid,
                "a change this plan made was undone since; a new plan"
            );
            return Ok(Acted::Replan(UNDONE_SINCE.into()));
        }
        let did_now = |done: &BTreeSet<String>| -> String {
            let mut h: Vec<String> = p
                .steps
                .iter()
                .filter(|s| done.contains(&s.key))
                .map(|s| short_hash(&plan::change_key(s)))
                .collect();
            h.sort();
            h.dedup();
            if h.is_empty() {
                "-".into()
            } else {
                h.join(".")
            }
        };
        // Things the bot will not do at all: nothing is changed for anyone.
        let refusals: Vec<&plan::Blocked> = p
            .blocked
            .iter()
            .filter(|b| {
                matches!(
                    b.reason,
                    BlockReason::NeedsAccountFirst
                        | BlockReason::Protected { .. }
                        | BlockReason::SuspendedSelfService
                        | BlockReason::NoAccountToChange
                )
            })
            .collect();
        let grants = !req.kind.revokes();
        if !refusals.is_empty() || (grants && !p.blocked.is_empty()) {
            let protected = refusals
                .iter()
                .any(|b| matches!(b.reason, BlockReason::Protected { .. }));
            let reasons: Vec<String> = p
                .blocked
                .iter()
                .map(|b| {
                    format!(
                        "{} {}",
                        crate::render::code_span(b.subject.as_str()),
                        b.reason.explain(&self.display(&b.instance))
                    )
                })
                .collect();
            let reply = if !refusals.is_empty()
                && refusals
                    .iter()
                    .all(|b| b.reason == BlockReason::NeedsAccountFirst)
            {
                self.needs_account_first_reply(req, &refusals, &plan_digest)
            } else {
                self.refused_reply(history, req, reasons, false, protected, Some(&plan_digest))
            };
            return self
                .perform(project, issue, history, None, Some(req), reply)
                .await
                .map(Acted::Outcome);
        }

        let mut done = BTreeSet::new();
        let mut failure = None;
        let mut grant_note = None;
        if !p.is_noop() {
            // Time of check = time of use: the request must be what was
            // approved, right now, and each approval still given by the very
            // event that gave it (not removed and applied again by someone
            // else meanwhile). The two reads are independent: side by side.
            let (fresh, events) = tokio::try_join!(self.gitlab.issue(project, req.iid), async {
                if approved.granted().is_empty() {
                    Ok(None)
                } else {
                    self.gitlab.label_events(project, req.iid).await.map(Some)
                }
            })?;
            let mut input = fresh.to_input();
            input.author_email = author.email.clone();
            input.author_name = author.name.clone();
            let still = request::parse_request(&input, &self.cfg)
                .map(|r| r.digest() == digest)
                .unwrap_or(false);
            let labels_held = events
                .is_none_or(|events| approved.granted().iter().all(|g| g.still_holds(&events)));
            if !still || !labels_held || fresh.state != "opened" {
                tracing::info!(
                    iid = req.iid,
                    "the issue changed just before acting; deciding again next cycle"
                );
                self.store.forget_seen(project, req.iid)?;
                return Ok(Acted::Outcome(Outcome::Waiting));
            }
            // Time-bound: what to take back on the date is written on the issue
            // before the first write, from the state as it is now.
            if let Some(exp) = req.expires {
                let key = format!("grant:{plan_digest}");
                // The label (how a bot with an empty store finds the grant)
                // goes on with the record, or after it if that edit was lost.
                let mut wb = Writeback {
                    kind: NoteKind::Grant,
                    digest: digest.clone(),
                    add_labels: vec![self.cfg.bot.state_labels.time_bound.clone()],
                    ..Default::default()
                };
                if !history.keys().contains(&crate::marker::clean(&key)) {
                    let records = plan::grant_records(req, p, &observed);
                    wb.sections.push(Section {
                        comment: comment::GrantRecord {
                            expires: exp.0.to_string(),
                            lines: records.iter().flat_map(|r| r.undo.iter().map(|a| self.change_line(&r.subject, &r.instance, a))).collect(),
                            record: json_block(&serde_json::json!({"expires": exp.0.to_string(), "grants": records})),
                        }
                        .into(),
                        key,
                    });
                }
                if let Some(r) = self.write_back(project, issue, history, wb).await? {
                    grant_note = Some(r);
                }
            }
            let r = self.execute(project, &exec, &observed).await;
            done = r.done;
            failure = r.failed;
        }

        let completed = p.items_completed_by(&done);
        let ticks: BTreeSet<usize> = req
            .items
            .iter()
            .filter(|i| completed.contains(&i.index) && i.state == checklist::CheckState::Open)
            .map(|i| i.ordinal)
            .collect();
        let mut systems = report::systems(req, p, &self.cfg, Some(&done));

        let acting = reply::Acting {
            request: req,
            plan: p,
            plan_digest: &plan_digest,
            plan_note: &plan_note,
            author,
            ticks: &ticks,
            did: did_now(&done),
        };
        if let Some((step, error, transient)) = failure {
            let reply = self.step_failed_reply(&acting, &step, error, transient, &systems);
            return self
                .perform(project, issue, history, None, Some(req), reply)
                .await
                .map(Acted::Outcome);
        }

        if req.kind == RequestKind::Offboarding {
            self.add_evidence(req, &observed, &mut systems).await;
            self.inapplicable_but_active(req, &observed, &mut systems)
                .await;
        }
        let blocked = !p.blocked.is_empty();
        let open_items: BTreeSet<usize> = req
            .items
            .iter()
            .filter(|i| i.state == checklist::CheckState::Open)
            .map(|i| i.index)
            .collect();
        let complete = !blocked && open_items.iter().all(|i| completed.contains(i));
        let ticked: Vec<String> = req
            .items
            .iter()
            .filter(|i| ticks.contains(&i.ordinal))
            .map(|i| i.text.clone())
            .collect();
        let light_agent = light_agent_result(req, p, &done);
        let mut reply = self.acted_reply(
            &acting,
            comment::ResultNote {
                complete,
                systems,
                ticked,
                light_agent,
                expires: req.expires.map(|e| e.0.to_string()),
            },
        );
        if complete {
            let records = history
                .records
                .iter()
                .chain(grant_note.iter())
                .rev()
                .find(|r| {
                    r.marker.is(NoteKind::Grant)
                        && r.marker
                            .keys
                            .contains(&crate::marker::clean(&format!("grant:{plan_digest}")))
                })
                .and_then(|r| read_json_block::<GrantFile>(&r.content))
                .map(|f| f.grants);
            self.record_holdings(project, req, p, &observed, records, &plan_digest);
        }
        // An offboarding done: the Support Team files, proposed before the
        // result note that links them.
        if !blocked
            && req.kind == RequestKind::Offboarding
            && let Some(note) = reply.note.as_mut()
            && let Some(error) = self.support_team_files(project, req, note).await?
        {
            note.state_label = Some(labels.failed.clone());
            reply.outcome = Outcome::Failed(error);
        }
        self.perform(project, issue, history, None, Some(req), reply)
            .await
            .map(Acted::Outcome)
    }

    pub(super) fn display(&self, instance: &str) -> String {
        self.cfg
            .zendesk
            .get(instance)
            .map(|z| z.display_name.clone())
            .unwrap_or_else(|| instance.to_string())
    }

    /// A request waiting too long gets one reminder naming the missing approvers,
    /// and after the second limit is closed with a note on how to reopen.
    pub(super) fn stale(
        &self,
        facts: &IssueFacts,
        request: &Request,
        missing: &[approval::MissingApproval],
        dir: &Directory,
        wb: &mut Writeback,
    ) {
        let lc = &self.cfg.lifecycle;
        let (remind, close) = (lc.stale_reminder_after.get(), lc.stale_close_after.get());
        let age = self.now() - facts.issue.created_at;
        let days = age.num_days();
        if age.to_std().is_ok_and(|a| a >= close) {
            wb.sections.push(Section {
                comment: comment::StaleClosed { days }.into(),
                key: "stale-closed".into(),
            });
            wb.close = true;
        } else if age.to_std().is_ok_and(|a| a >= remind) {
            // Deliberate mentions: the reminder is meant to reach the approvers,
            // and only those GitLab confirmed can approve it (never a name as
            // typed in the issue: it could be `@all`, a group, or anyone).
            let mention = |m: &approval::MissingApproval| {
                self.cfg
                    .approvals
                    .get(&m.approval)
                    .map(|r| {
                        approval::approver_usernames(r, request, dir)
                            .into_iter()
                            .map(|u| format!("@{u}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default()
            };
            let list: Vec<comment::Reminded> = missing
                .iter()
                .map(|m| comment::Reminded {
                    label: m.label.clone(),
                    mention: mention(m),
                })
                .collect();
            let close_in = close
                .as_secs()
                .saturating_sub(age.num_seconds().max(0) as u64)
                / 86_400;
            wb.sections.push(Section {
                comment: comment::StaleReminder {
                    days,
                    missing: list,
                    close_in_days: close_in,
                }
                .into(),
                key: "stale-reminder".into(),
            });
        }
    }

    /// A completed grant: what it gives (so that a time-bound grant ending
    /// never takes away what this one still gives) and, when time-bound, how to
    /// take it back (the record written on the issue before the first write;
    /// computed now only if that record cannot be read).
    fn record_holdings(
        &self,
        project: &str,
        req: &Request,
        p: &Plan,
        observed: &Observed,
        written: Option<Vec<plan::GrantRecord>>,
        plan_digest: &str,
    ) {
        if req.kind.revokes() {
            // Access taken away: what other requests gave these people in
            // these instances is no longer in force (an expiring grant must
            // not keep an offboarded person's access alive).
            let today = self.now().date_naive();
            for s in &req.subjects {
                for inst in req.instances() {
                    if let Err(e) = self.store.end_holdings(s.email.as_str(), inst, today, None) {
                        tracing::error!(iid = req.iid, error = %e, "cannot end what the person held");
                    }
                }
            }
            return;
        }
        let expires = req.expires.map(|e| e.0);
        let now = self.now();
        let computed = plan::grant_records(req, p, observed);
        let holdings: Vec<crate::store::Holding> = computed
            .iter()
            .flat_map(|r| {
                r.gives.iter().map(|what| crate::store::Holding {
                    project: project.into(),
                    iid: req.iid,
                    subject: r.subject.to_string(),
                    instance: r.instance.clone(),
                    what: what.clone(),
                    expires,
                    at: now,
                })
            })
            .collect();
        if let Err(e) = self.store.record_holdings(&holdings) {
            tracing::error!(iid = req.iid, error = %e, "cannot record what the request gives");
        }
        let Some(exp) = expires else {
            return;
        };
        for r in written.unwrap_or(computed) {
            let undo = serde_json::to_string(&r).unwrap_or_default();
            if let Err(e) = self.store.record_grant(&crate::store::Grant {
                project: project.into(),
                iid: req.iid,
                plan: plan_digest.to_string(),
                subject: r.subject.to_string(),
                instance: r.instance.clone(),
                undo,
                expires: exp,
                reminded: false,
                revoked: false,
            }) {
                tracing::error!(iid = req.iid, error = %e, "cannot record the time-bound grant");
            }
        }
    }

    /// An offboarding line marked not applicable (`[~]`) is left alone, as
    /// asked; but if the leaver still holds access there, that is said on the
    /// issue and told to ops rather than passed over in silence.
    async fn inapplicable_but_active(
        &self,
        req: &Request,
        observed: &Observed,
        systems: &mut Vec<report::SystemView>,
    ) {
        for it in req
            .items
            .iter()
            .filter(|i| i.state == checklist::CheckState::Inapplicable)
        {
            let request::ItemAction::AccountRemove { instance } = &it.action else {
                continue;
            };
            for s in &req.subjects {
                let Some(Some(a)) = observed.accounts.get(&(instance.clone(), s.email.clone()))
                else {
                    continue;
                };
                if a.role == "end-user" && a.suspended {
                    continue;
                }
                let text = format!(
                    "{} is marked not applicable, so it was left alone, but {} still has an account there ({}, {}): check it by hand",
                    crate::render::code_span(&it.text),
                    crate::render::code_span(s.email.as_str()),
                    a.role,
                    if a.suspended { "suspended" } else { "active" }
                );
                systems.push(report::SystemView {
                    title: format!(
                        "{}: {}",
                        self.display(instance),
                        crate::render::code_span(s.email.as_str())
                    ),
                    steps: Vec::new(),
                    blocked: vec![text.clone()],
                    notes: Vec::new(),
                    evidence: Vec::new(),
                });
                self.tell_ops(
                    NoticeKind::SecurityRefusal,
                    format!("#{} inapplicable but active {instance}", req.iid),
                    format!("#{}: {text}", req.iid),
                    Some(req.web_url.clone()),
                )
                .await;
            }
        }
    }

    /// Before and after, per account: the evidence an offboarding leaves on the issue.
    async fn add_evidence(
        &self,
        req: &Request,
        before: &Observed,
        systems: &mut [report::SystemView],
    ) {
        for s in &req.subjects {
            for inst in req.instances() {
                let Some(Some(b)) = before.accounts.get(&(inst.to_string(), s.email.clone()))
                else {
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
}

/// The record on a time-bound grant's issue.
#[derive(serde::Deserialize)]
struct GrantFile {
    grants: Vec<plan::GrantRecord>,
}

/// A JSON value as a fenced block no content can close early.
pub(super) fn json_block(v: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}json\n{text}\n{fence}")
}

/// The first fenced JSON block of a (verified) note, parsed.
pub(super) fn read_json_block<T: serde::de::DeserializeOwned>(content: &str) -> Option<T> {
    let start = content.find("json\n")? + 5;
    let rest = &content[start..];
    let end = rest.find("\n```")?;
    serde_json::from_str(&rest[..end]).ok()
}

/// What a light-agent request came to, for its result.
fn light_agent_result(
    req: &Request,
    p: &Plan,
    done: &BTreeSet<String>,
) -> Option<comment::LightAgent> {
    if req.kind != RequestKind::LightAgent {
        return None;
    }
    let created = p.steps.iter().any(|s| {
        matches!(
            s.action,
            Action::Account(
                plan::AccountChange::CreateAgent {
                    light_agent: true,
                    ..
                } | plan::AccountChange::SetRole {
                    light_agent: true,
                    ..
                }
            )
        ) && done.contains(&s.key)
    });
    Some(if created {
        comment::LightAgent::Created
    } else if p.notes.iter().any(|n| n.text.contains("full agent")) {
        comment::LightAgent::FullAgent
    } else if p
        .notes
        .iter()
        .any(|n| n.text.contains("already a light agent"))
    {
        comment::LightAgent::Already
    } else {
        comment::LightAgent::Provisioned
    })
}

/// This process's claim on one issue, given back when dropped (also when the
/// work is cancelled).
pub(super) struct InFlight<'a> {
    set: &'a std::sync::Mutex<std::collections::BTreeSet<(String, u64)>>,
    key: (String, u64),
}

impl<'a> InFlight<'a> {
    pub(super) fn enter(
        set: &'a std::sync::Mutex<std::collections::BTreeSet<(String, u64)>>,
        project: &str,
        iid: u64,
    ) -> Option<InFlight<'a>> {
        let key = (project.to_string(), iid);
        let fresh = set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        // Lazily: a claim built and dropped would give back the holder's.
        fresh.then(|| InFlight { set, key })
    }

    /// As `enter`, waiting while another task works on the issue.
    pub(super) async fn wait(
        set: &'a std::sync::Mutex<std::collections::BTreeSet<(String, u64)>>,
        project: &str,
        iid: u64,
    ) -> InFlight<'a> {
        loop {
            if let Some(claim) = InFlight::enter(set, project, iid) {
                return claim;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}
