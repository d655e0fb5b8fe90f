//! Is this request approved, by whom, and does the approval still hold? Pure.
//!
//! Only this module builds an [`Approved`]; the executor takes nothing else,
//! so nothing is changed on an unverified approval. The invariant:
//!
//! > The bot performs a change only if that exact change is listed in a plan
//! > comment the bot itself posted on this issue, and every approval the change
//! > requires was applied, by someone allowed to give it, after that plan
//! > comment and before any later change to the request. An approval
//! > authorises one execution of one plan.
//!
//! The bot's own comments are known by their sealed markers ([`History`]): a
//! plan carries the digest of the request it describes, a result the digest it
//! executed and the digest its ticks leave behind. Everything else follows:
//! - the request now must be the one the latest plan describes (its digest, or
//!   a state the bot's own ticks explain); otherwise a new plan is posted;
//! - each required approval (see `policy`) is the latest `add` of its label,
//!   by an authorised approver (by user id), who is neither the requester nor a
//!   person the request is for (by user id and e-mail; when the bot cannot tell,
//!   it does not count), applied after the plan, with no change to the request
//!   (text, title, a tick on a bot item, by anyone but the bot) since;
//! - once a result says the plan is done, the plan is consumed: nothing more
//!   happens without a new plan and approvals applied after it;
//! - trusted automation's issues (entitlements, offboarding) are trusted only
//!   when the automation filed them, applied their kind's label, and nobody
//!   else changed them (ticking an item the bot does not manage is allowed);
//! - a denial label (citizenship) by an authorised person refuses and closes.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::comment::NoteKind;
use crate::config::{ApprovalRule, Config};
use crate::marker::{Marker, MarkerError, MarkerKey};
use crate::policy::{self, Requester, Requirements};
use crate::request::{Email, IssueFacts, LabelAction, LabelEvent, Note, Request, UserRef};

/// A GitLab user as the bot knows them: id and username from GitLab, the
/// company e-mail from an identity source (unknown when no source can tell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: u64,
    pub username: String,
    pub email: Option<Email>,
    /// The name on the GitLab account (not the issue's free text).
    pub name: Option<String>,
}

/// GitLab users resolved by the adapter (usernames compared case-insensitively),
/// and what the company directory says about the people a request names.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    by_name: HashMap<String, Identity>,
    by_id: HashMap<u64, Identity>,
    /// Usernames GitLab says do not exist.
    absent: BTreeSet<String>,
    /// People are checked against the company directory: `people` holds what
    /// it said (`None`: no such user).
    pub checked: bool,
    people: HashMap<Email, Option<crate::request::Person>>,
}

/// What the directory says about a username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    Found(&'a Identity),
    NotFound,
    /// Not looked up (or the lookup failed): nothing may be concluded.
    Unknown,
}

impl Directory {
    pub fn new() -> Directory {
        Directory::default()
    }

    pub fn add(&mut self, identity: Identity) {
        self.by_name
            .insert(identity.username.to_ascii_lowercase(), identity.clone());
        self.by_id.insert(identity.id, identity);
    }

    /// A user known by id and username only (no e-mail).
    pub fn insert(&mut self, username: &str, id: u64) {
        self.add(Identity {
            id,
            username: username.to_string(),
            email: None,
            name: None,
        });
    }

    /// What the company directory said about an address.
    pub fn add_person(&mut self, email: Email, person: Option<crate::request::Person>) {
        self.checked = true;
        self.people.insert(email, person);
    }

    pub fn person(&self, email: &Email) -> Option<&Option<crate::request::Person>> {
        self.people.get(email)
    }

    pub fn add_absent(&mut self, username: &str) {
        self.absent.insert(username.to_ascii_lowercase());
    }

    fn key(username: &str) -> String {
        username.trim_start_matches('@').to_ascii_lowercase()
    }

    pub fn lookup(&self, username: &str) -> Lookup<'_> {
        let k = Directory::key(username);
        match self.by_name.get(&k) {
            Some(i) => Lookup::Found(i),
            None if self.absent.contains(&k) => Lookup::NotFound,
            None => Lookup::Unknown,
        }
    }

    pub fn id(&self, username: &str) -> Option<u64> {
        self.by_name.get(&Directory::key(username)).map(|i| i.id)
    }

    pub fn by_id(&self, id: u64) -> Option<&Identity> {
        self.by_id.get(&id)
    }

    pub fn email_of(&self, id: u64) -> Option<&Email> {
        self.by_id.get(&id).and_then(|i| i.email.as_ref())
    }

    /// Every username a decision about this request may need resolved.
    pub fn wanted(request: &Request, cfg: &Config) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for s in &request.subjects {
            out.extend(s.gitlab_username.clone());
            out.extend(s.manager.clone());
        }
        out.extend(Directory::configured(cfg));
        out
    }

    /// The usernames the configuration itself names (approvers, trusted authors):
    /// the same for every request, so the bot resolves them once at start-up.
    pub fn configured(cfg: &Config) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for rule in cfg.approvals.values() {
            out.extend(
                rule.approvers
                    .iter()
                    .filter(|a| *a != MANAGER)
                    .map(|a| a.trim_start_matches('@').to_string()),
            );
        }
        for p in cfg.policy.values() {
            out.extend(p.trusted_authors.iter().cloned());
        }
        out
    }
}

/// The keyword for "the subject's manager named in the issue".
pub const MANAGER: &str = "@manager";

/// A bot comment whose marker verified: the only kind of bot comment that counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub note_id: u64,
    pub at: DateTime<Utc>,
    pub marker: Marker,
    /// The note's text without its marker (verified with it).
    pub content: String,
}

impl Record {
    /// The label id a plan bound an approval to, by approval name.
    pub fn label_id(&self, approval: &str) -> Option<u64> {
        self.marker.field("labels")?.split(',').find_map(|pair| {
            let (name, id) = pair.split_once(':')?;
            (name == approval).then(|| id.parse().ok()).flatten()
        })
    }

    pub fn done(&self) -> bool {
        self.marker.field("done") == Some("1")
    }
    pub fn after(&self) -> Option<&str> {
        self.marker.field("after")
    }
    /// Bot items (by ordinal) the result ticks.
    pub fn ticks(&self) -> BTreeSet<usize> {
        self.marker
            .field("ticks")
            .map(|t| t.split('.').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// The bot's own comments on one issue, oldest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub records: Vec<Record>,
    /// Notes by the bot's account whose marker did not verify (tampered, forged
    /// through echoed text, or sealed with another key).
    pub rejected: Vec<(u64, MarkerError)>,
}

impl History {
    pub fn read(notes: &[Note], bot_id: u64, key: &MarkerKey, project: &str, iid: u64) -> History {
        let mut h = History::default();
        for n in notes.iter().filter(|n| !n.system && n.author.id == bot_id) {
            match Marker::open(key, project, iid, &n.body) {
                Ok(marker) => h.records.push(Record {
                    note_id: n.id,
                    at: n.created_at,
                    marker,
                    content: Marker::content_of(&n.body).to_string(),
                }),
                Err(MarkerError::Missing) => {}
                Err(e) => h.rejected.push((n.id, e)),
            }
        }
        h.records.sort_by_key(|r| (r.at, r.note_id));
        h
    }

    pub fn push(&mut self, r: Record) {
        self.records.push(r);
        self.records.sort_by_key(|r| (r.at, r.note_id));
    }

    /// Section keys already on the issue.
    pub fn keys(&self) -> BTreeSet<String> {
        self.records
            .iter()
            .flat_map(|r| r.marker.keys.iter().cloned())
            .collect()
    }

    pub fn latest_plan(&self) -> Option<&Record> {
        self.records
            .iter()
            .rev()
            .find(|r| r.marker.is(NoteKind::Plan))
    }

    /// Results of the latest plan, oldest first.
    pub fn results(&self) -> Vec<&Record> {
        let Some(p) = self.latest_plan() else {
            return Vec::new();
        };
        self.records
            .iter()
            .filter(|r| r.marker.is(NoteKind::Result) && (r.at, r.note_id) > (p.at, p.note_id))
            .filter(|r| r.marker.field("plan") == Some(p.marker.digest.as_str()))
            .collect()
    }
}

/// Where the request stands against the bot's plan comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// The bot never posted a plan here.
    NoPlan,
    /// The request differs from the latest plan (or changed after it was done).
    Stale { plan: Record },
    /// The request is what the latest plan describes, maybe partly done.
    Current { plan: Record },
    /// The latest plan was carried out. `retick`: the bot's ticks are not on
    /// the issue (lost, or undone by someone) and are put back; nothing is run again.
    Done {
        plan: Record,
        result: Record,
        retick: bool,
    },
    /// The latest plan was refused when it came to act (no account yet, a
    /// protected account, …): consumed like a completed one.
    Closed { plan: Record, refusal: Record },
}

/// A digest of the approvals a request needs: a plan that listed other
/// needs is not the plan of this request any more.
pub fn needs_digest(required: &[String]) -> String {
    let mut v: Vec<&str> = required.iter().map(String::as_str).collect();
    v.sort_unstable();
    crate::marker::short_hash(&v.join(","))
}

pub fn stage(history: &History, digest: &str, needs: &str) -> Stage {
    let Some(plan) = history.latest_plan().cloned() else {
        return Stage::NoPlan;
    };
    if plan.marker.field("needs").is_some_and(|n| n != needs) {
        return Stage::Stale { plan };
    }
    let after_plan = |r: &&Record| (r.at, r.note_id) > (plan.at, plan.note_id);
    let refusal = history
        .records
        .iter()
        .filter(after_plan)
        .find(|r| {
            r.marker.is(NoteKind::Refused)
                && r.marker.field("plan") == Some(plan.marker.digest.as_str())
        })
        .cloned();
    let results = history.results();
    if let Some(last) = results.last().filter(|r| r.done()) {
        let after = last.after().unwrap_or(last.marker.digest.as_str());
        if digest == after {
            return Stage::Done {
                plan,
                result: (*last).clone(),
                retick: false,
            };
        }
        if digest == last.marker.digest {
            return Stage::Done {
                plan,
                result: (*last).clone(),
                retick: true,
            };
        }
        return Stage::Stale { plan };
    }
    let known = std::iter::once(plan.marker.digest.as_str())
        .chain(results.iter().filter_map(|r| r.after()))
        .any(|d| d == digest);
    match (known, refusal) {
        (true, Some(refusal)) => Stage::Closed { plan, refusal },
        (true, None) => Stage::Current { plan },
        (false, _) => Stage::Stale { plan },
    }
}

/// One approval that holds.
#[derive(Debug, Clone, Serialize)]
pub struct Granted {
    pub approval: String,
    pub label: String,
    /// The label's id, when the plan bound it.
    pub label_id: Option<u64>,
    /// The label event that gave it.
    pub event: u64,
    pub by: UserRef,
    pub at: DateTime<Utc>,
}

impl Granted {
    /// Still given by the same event, in these (fresh) label events: the
    /// latest event of its label is that very `add`.
    pub fn still_holds(&self, events: &[LabelEvent]) -> bool {
        sorted_events(events)
            .into_iter()
            .rev()
            .find(|e| match self.label_id {
                Some(id) => e.label_id == Some(id),
                None => e.label.as_deref() == Some(self.label.as_str()),
            })
            .is_some_and(|e| {
                e.id == self.event
                    && e.action == LabelAction::Add
                    && e.label.as_deref().is_none_or(|n| n == self.label)
            })
    }
}

/// Why a required approval does not hold (yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Missing {
    NotApplied,
    Removed {
        by: String,
    },
    NoEventRecord,
    Unauthorized {
        by: String,
    },
    SelfApproval {
        by: String,
    },
    /// The bot cannot establish that the approver is not a person the request is for.
    IdentityUnknown {
        by: String,
    },
    /// Applied before the plan it would approve (or before a plan was consumed).
    BeforePlan {
        by: String,
    },
    /// By someone who already gave another approval this request needs.
    SameApprover {
        by: String,
    },
    /// The manager named in the issue is not the person's manager in the
    /// company directory (or the directory cannot tell).
    ManagerNotConfirmed {
        why: String,
    },
    EditedAfter {
        by: String,
    },
    /// The label applied is the one the plan bound, but it no longer carries
    /// the approval's name (or the name now belongs to another label): a
    /// renamed label is not an approval.
    Renamed {
        by: String,
        now: String,
    },
}

impl Missing {
    pub fn explain(&self) -> String {
        match self {
            Missing::NotApplied => "not applied yet".into(),
            Missing::Removed { by } => format!("applied, then removed by `@{by}`"),
            Missing::NoEventRecord => {
                "the label is there but GitLab has no record of who applied it; remove it and apply it again".into()
            }
            Missing::Unauthorized { by } => {
                format!("applied by `@{by}`, who is not an authorised approver for it")
            }
            Missing::SelfApproval { by } => {
                format!("applied by `@{by}`, who is the requester or a person this request is for; self-approval does not count")
            }
            Missing::IdentityUnknown { by } => format!(
                "applied by `@{by}`, but the bot cannot establish that `@{by}` is not a person this request is for (no e-mail address is known for them); it does not count"
            ),
            Missing::BeforePlan { by } => format!(
                "applied by `@{by}` before the current plan; an approval counts only for the plan it follows: review the plan, then remove the label and apply it again"
            ),
            Missing::ManagerNotConfirmed { why } => format!(
                "the manager named in the issue cannot approve: {why}"
            ),
            Missing::SameApprover { by } => format!(
                "applied by `@{by}`, who already gave another approval this request needs; each approval needs a different person"
            ),
            Missing::EditedAfter { by } => {
                format!("the request was changed by `@{by}` after the approval, so the approval no longer applies; please review and approve again")
            }
            Missing::Renamed { by, now } => format!(
                "applied by `@{by}`, but the label this plan bound is now named {} and the approval's name is not on the issue; a renamed label is not an approval (restore the label names, then apply the approval again)",
                crate::render::code_span(now)
            ),
        }
    }

    /// A reason ops should hear about (someone tried something).
    pub fn is_security(&self) -> bool {
        matches!(
            self,
            Missing::Unauthorized { .. }
                | Missing::SelfApproval { .. }
                | Missing::ManagerNotConfirmed { .. }
                | Missing::Renamed { .. }
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MissingApproval {
    pub approval: String,
    pub label: String,
    /// Who may give it, for the comment.
    pub who: String,
    pub missing: Missing,
}

/// Something whose approval the approval module verified, bound to the plan
/// comment it approved. Only this module creates one; `map` keeps the proof
/// while the planner turns the request into steps.
#[derive(Debug, Clone)]
pub struct Approved<T> {
    inner: T,
    granted: Vec<Granted>,
    digest: String,
    plan: Record,
    requirements: Requirements,
}

impl<T> Approved<T> {
    pub fn request(&self) -> &T {
        &self.inner
    }
    pub fn inner(&self) -> &T {
        &self.inner
    }
    pub fn granted(&self) -> &[Granted] {
        &self.granted
    }
    /// The request digest at the time of the decision.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    /// The plan comment this approval is bound to.
    pub fn plan(&self) -> &Record {
        &self.plan
    }
    pub fn requirements(&self) -> &Requirements {
        &self.requirements
    }
    /// Its approvals, as they stand for a new plan that replaces the one they
    /// approved: given before it, so they do not count for it.
    pub fn superseded(&self, cfg: &Config, request: &Request) -> Vec<MissingApproval> {
        self.granted
            .iter()
            .map(|g| MissingApproval {
                approval: g.approval.clone(),
                label: g.label.clone(),
                who: cfg
                    .approvals
                    .get(&g.approval)
                    .map(|r| describe_approvers(r, request))
                    .unwrap_or_default(),
                missing: Missing::BeforePlan {
                    by: g.by.username.clone(),
                },
            })
            .collect()
    }

    pub(crate) fn map<U>(&self, f: impl FnOnce(&T) -> U) -> Approved<U> {
        Approved {
            inner: f(&self.inner),
            granted: self.granted.clone(),
            digest: self.digest.clone(),
            plan: self.plan.clone(),
            requirements: self.requirements.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Decision {
    Approved(Approved<Request>),
    Waiting {
        request: Request,
        stage: Stage,
        missing: Vec<MissingApproval>,
        granted: Vec<Granted>,
        /// A required verification (an approval with a denial label) is outstanding.
        verification_pending: bool,
        requirements: Requirements,
    },
    /// The latest plan was carried out and nothing changed since.
    Done {
        request: Request,
        stage: Stage,
    },
    Refused {
        request: Box<Request>,
        reasons: Vec<String>,
        /// Close the issue (citizenship denied).
        close: bool,
        /// Someone tried something: tell ops.
        security: bool,
    },
}

impl Decision {
    pub fn request(&self) -> &Request {
        match self {
            Decision::Approved(a) => a.request(),
            Decision::Waiting { request, .. } | Decision::Done { request, .. } => request,
            Decision::Refused { request, .. } => request,
        }
    }
}

/// Everything a decision reads besides the request.
pub struct Context<'a> {
    pub facts: &'a IssueFacts,
    pub cfg: &'a Config,
    pub dir: &'a Directory,
    pub bot_id: u64,
    pub history: &'a History,
    pub requester: &'a Requester,
}

pub fn decide(request: Request, cx: &Context) -> Decision {
    let cfg = cx.cfg;
    let facts = cx.facts;
    let digest = request.digest();
    let events = sorted_events(&facts.label_events);
    let refuse = |request: Request, reasons: Vec<String>, security: bool| Decision::Refused {
        request: Box::new(request),
        reasons,
        close: false,
        security,
    };

    // Protected people and rows that do not add up are refused outright; so
    // is a trusted kind the automation did not make.
    let mut reasons = identity_problems(&request, cx);
    let policy = cfg.policy_for(request.kind);
    let trust = if policy.trusted_authors.is_empty() {
        policy::Trust::NotApplicable
    } else {
        let t = trust_problems(&request, cx, &events, &digest);
        reasons.extend(t.forged);
        match t.edited {
            None => policy::Trust::Intact,
            // With nobody to confirm an edited one, it is refused.
            Some(why) if policy.if_edited.is_empty() => {
                reasons.push(why);
                policy::Trust::Intact
            }
            Some(why) => policy::Trust::Lost(why),
        }
    };
    if !reasons.is_empty() {
        return refuse(request, reasons, true);
    }
    let ss = policy::self_service(&request, cx.requester, cfg);
    let requirements = policy::requirements(&request, cfg, ss, trust);
    // A verification is of one person: one label cannot vouch for several.
    let verifications: Vec<&String> = requirements
        .required
        .iter()
        .filter(|n| {
            cfg.approvals
                .get(*n)
                .is_some_and(|a| a.denied_label.is_some())
        })
        .collect();
    if !verifications.is_empty() && request.subjects.len() > 1 {
        let people = request.subjects.len();
        return refuse(
            request,
            vec![format!(
                "it names {people} people, and {} is verified per person: file one request per person",
                verifications
                    .iter()
                    .filter_map(|n| cfg.approvals.get(*n))
                    .map(|a| crate::render::code_span(&a.label))
                    .collect::<Vec<_>>()
                    .join(", ")
            )],
            false,
        );
    }

    let stage = stage(cx.history, &digest, &needs_digest(&requirements.required));
    if let Stage::Done { .. } | Stage::Closed { .. } = stage {
        return Decision::Done { request, stage };
    }
    let plan_at = match &stage {
        Stage::Current { plan } => Some(plan),
        _ => None,
    };

    let subjects = subject_identities(&request, cx.dir);
    let mut granted = Vec::new();
    let mut missing = Vec::new();
    let mut verification_pending = false;
    for name in &requirements.required {
        let Some(rule) = cfg.approvals.get(name) else {
            continue; // validated at load time
        };
        let authorised = authorised_ids(rule, &request, cx.dir);
        // The manager the issue names must be the person's manager in the
        // company directory: a requester does not pick their own approver.
        if rule.approvers.iter().all(|a| a == MANAGER)
            && let Some(why) = manager_not_confirmed(&request, cx.dir)
        {
            missing.push(MissingApproval {
                approval: name.clone(),
                label: rule.label.clone(),
                who: describe_approvers(rule, &request),
                missing: Missing::ManagerNotConfirmed { why },
            });
            continue;
        }

        // Denial (e.g. citizenship could not be verified): refuse and close.
        if let Some(denied) = &rule.denied_label
            && facts.issue.labels.contains(denied)
            && let Some(ev) = latest_add(&events, denied)
            && authorised.contains(&ev.user.id)
        {
            return Decision::Refused {
                request: Box::new(request),
                reasons: vec![format!(
                    "`@{}` applied {} on {}: {} could not be confirmed, and no further action can be taken without it",
                    ev.user.username,
                    crate::render::code_span(denied),
                    ev.created_at.format("%Y-%m-%d"),
                    rule.description.clone().unwrap_or_else(|| name.clone())
                )],
                close: true,
                security: false,
            };
        }

        let verdict = check_one(
            name,
            rule,
            &authorised,
            &request,
            &subjects,
            cx,
            &events,
            plan_at,
        )
        .and_then(|ev| {
            // Four eyes: one person gives one approval.
            if granted.iter().any(|g: &Granted| g.by.id == ev.user.id) {
                Err(Missing::SameApprover {
                    by: ev.user.username.clone(),
                })
            } else {
                Ok(ev)
            }
        });
        match verdict {
            Ok(ev) => granted.push(Granted {
                approval: name.clone(),
                label: rule.label.clone(),
                label_id: plan_at.and_then(|p| p.label_id(name)),
                event: ev.id,
                by: ev.user.clone(),
                at: ev.created_at,
            }),
            Err(m) => {
                if rule.denied_label.is_some() {
                    verification_pending = true;
                }
                missing.push(MissingApproval {
                    approval: name.clone(),
                    label: rule.label.clone(),
                    who: describe_approvers(rule, &request),
                    missing: m,
                });
            }
        }
    }

    match stage {
        Stage::Current { plan } if missing.is_empty() => Decision::Approved(Approved {
            inner: request,
            granted,
            digest,
            plan,
            requirements,
        }),
        stage => Decision::Waiting {
            request,
            stage,
            missing,
            granted,
            verification_pending,
            requirements,
        },
    }
}

/// A subject as the approval check sees them.
struct SubjectIdentity {
    id: Option<u64>,
    email: Email,
    /// The row's e-mail is the one an identity source knows for its username.
    verified: bool,
}

fn subject_identities(request: &Request, dir: &Directory) -> Vec<SubjectIdentity> {
    request
        .subjects
        .iter()
        .map(|s| {
            let found = s
                .gitlab_username
                .as_deref()
                .map(|u| dir.lookup(u))
                .and_then(|l| match l {
                    Lookup::Found(i) => Some(i),
                    _ => None,
                });
            SubjectIdentity {
                id: found.map(|i| i.id),
                email: s.email.clone(),
                verified: found.and_then(|i| i.email.as_ref()) == Some(&s.email),
            }
        })
        .collect()
}

/// Rows whose username and e-mail belong to different people, usernames
/// GitLab does not know, and protected accounts.
fn identity_problems(request: &Request, cx: &Context) -> Vec<String> {
    let mut out = Vec::new();
    let grants = !request.kind.revokes();
    for s in &request.subjects {
        // With a directory, access is granted only to active users of the domain.
        if cx.dir.checked && grants {
            match cx.dir.person(&s.email) {
                Some(None) => out.push(format!(
                    "{} is not a user of the company directory",
                    crate::render::code_span(s.email.as_str())
                )),
                Some(Some(p)) if !p.active => out.push(format!(
                    "{} is suspended in the company directory",
                    crate::render::code_span(s.email.as_str())
                )),
                Some(Some(p)) if p.primary != s.email => out.push(format!(
                    "{} is another address of {}; name the person by their primary address",
                    crate::render::code_span(s.email.as_str()),
                    crate::render::code_span(p.primary.as_str())
                )),
                _ => {}
            }
        }
        let protected = cx
            .cfg
            .bot
            .protected
            .iter()
            .any(|p| Email::parse(p).is_ok_and(|p| p == s.email));
        if protected {
            out.push(format!(
                "{} is a protected account (`bot.protected`); the bot never changes it",
                crate::render::code_span(s.email.as_str())
            ));
        }
        if let Some(u) = &s.gitlab_username {
            match cx.dir.lookup(u) {
                Lookup::Found(i) => {
                    if let Some(e) = &i.email
                        && *e != s.email
                    {
                        out.push(format!(
                            "the row for {} names the GitLab user `@{}`, whose e-mail address is not that one; a row must name one person",
                            crate::render::code_span(s.email.as_str()),
                            i.username
                        ));
                    }
                }
                Lookup::NotFound => out.push(format!(
                    "{} is not a GitLab user",
                    crate::render::code_span(&format!("@{u}"))
                )),
                Lookup::Unknown => {}
            }
        }
        if let Some(m) = &s.manager
            && cx.dir.lookup(m) == Lookup::NotFound
        {
            out.push(format!(
                "the manager {} is not a GitLab user",
                crate::render::code_span(&format!("@{m}"))
            ));
        }
    }
    out
}

/// `marked the checklist item **X** as completed|incomplete` -> X, unescaped.
pub fn checklist_note_item(body: &str) -> Option<String> {
    let rest = body.strip_prefix("marked the checklist item **")?;
    let end = rest
        .rfind("** as completed")
        .or_else(|| rest.rfind("** as incomplete"))?;
    Some(unescape(&rest[..end]))
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(|n| n.is_ascii_punctuation()) {
            continue;
        }
        out.push(c);
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn same_item(note_item: &str, raw: &str, visible: &str) -> bool {
    let n = |s: &str| unescape(s);
    note_item == n(raw) || note_item == n(visible)
}

/// A change to the request that a note records, if any: a text or title edit,
/// or a tick on an item the bot manages (or one it cannot tell apart).
fn request_change(note: &Note, request: &Request) -> bool {
    if !note.system {
        return false;
    }
    if note.body.starts_with("changed the description") || note.body.starts_with("changed title") {
        return true;
    }
    if note.body.starts_with("marked the checklist item")
        && checklist_note_item(&note.body).is_none()
    {
        // A checklist note the bot cannot read (another wording, `[~]`): a change.
        return true;
    }
    match checklist_note_item(&note.body) {
        Some(x) => {
            let unmanaged = request
                .unmanaged
                .iter()
                .any(|u| same_item(&x, &u.raw, &u.text));
            let managed = request.items.iter().any(|i| same_item(&x, &i.raw, &i.text));
            managed || !unmanaged
        }
        None => false,
    }
}

/// What undermines a trusted issue: a forgery (refused), or a change by
/// someone other than the automation (it then needs `if_edited` approvals).
struct TrustProblems {
    forged: Vec<String>,
    edited: Option<String>,
}

fn trust_problems(
    request: &Request,
    cx: &Context,
    events: &[&LabelEvent],
    digest: &str,
) -> TrustProblems {
    let cfg = cx.cfg;
    let policy = cfg.policy_for(request.kind);
    let trusted: BTreeSet<u64> = policy
        .trusted_authors
        .iter()
        .filter_map(|u| cx.dir.id(u))
        .collect();
    let names = policy
        .trusted_authors
        .iter()
        .map(|u| format!("`@{u}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let kind = request.kind.human();
    let mut out = Vec::new();
    let mut edited = None;
    let facts = cx.facts;
    if !trusted.contains(&facts.issue.author.id) {
        out.push(format!(
            "a {kind} is only trusted when filed by the automation ({names}); this one was filed by `@{}`",
            facts.issue.author.username
        ));
    }
    // The label that makes it this kind must be the automation's too.
    let rule_labels: BTreeSet<&String> = cfg
        .kinds
        .iter()
        .filter(|r| r.kind == request.kind)
        .flat_map(|r| r.labels.iter())
        .filter(|l| facts.issue.labels.contains(l))
        .collect();
    for label in rule_labels {
        match latest_add(events, label) {
            Some(ev) if trusted.contains(&ev.user.id) => {}
            Some(ev) => out.push(format!(
                "the label {} that makes this a {kind} was applied by `@{}`, not by the automation",
                crate::render::code_span(label),
                ev.user.username
            )),
            None => out.push(format!(
                "GitLab has no record of who applied the label {}, which makes this a {kind}",
                crate::render::code_span(label)
            )),
        }
    }
    // Nobody else may change it; ticking an item the bot does not manage is
    // fine, unless the request changed since the bot's plan (a text edit made
    // together with a tick leaves only the tick's note behind).
    let plan = cx.history.latest_plan();
    let unchanged_since_plan = cx
        .history
        .latest_plan()
        .is_some_and(|p| p.marker.digest == digest)
        || cx
            .history
            .results()
            .iter()
            .any(|r| r.after() == Some(digest));
    // The people the issue is about may not touch it at all: a leaver ticking
    // "their" line may hide an edit that drops their own removal.
    let subject_ids: BTreeSet<u64> = request
        .subjects
        .iter()
        .filter_map(|s| s.gitlab_username.as_deref().and_then(|u| cx.dir.id(u)))
        .collect();
    for n in facts
        .notes
        .iter()
        .filter(|n| n.system && n.author.id != cx.bot_id && !trusted.contains(&n.author.id))
    {
        let after_plan = plan.is_some_and(|p| n.created_at >= p.at);
        let change = request_change(n, request);
        let tick_only = checklist_note_item(&n.body).is_some() && !change;
        let by_subject = subject_ids.contains(&n.author.id)
            && (tick_only || n.body.starts_with("marked the checklist item"));
        if change || by_subject || (tick_only && after_plan && !unchanged_since_plan) {
            edited = Some(format!(
                "`@{}` changed it at {}; a {kind} changed by anyone but the automation is not pre-approved",
                n.author.username,
                n.created_at.format("%Y-%m-%d %H:%M UTC")
            ));
            break;
        }
    }
    // The title cannot change without a note GitLab attributes, so it anchors
    // the people against an edit GitLab records only as a tick.
    if edited.is_none() && policy.subject_in_title {
        let title = words(&facts.issue.title);
        if let Some(s) = request
            .subjects
            .iter()
            .find(|s| !contains_words(&title, &words(&s.name)))
        {
            edited = Some(format!(
                "the title does not name {}, whom the issue is for; a {kind} names its person in its title",
                crate::render::code_span(&s.name)
            ));
        }
    }
    TrustProblems {
        forged: out,
        edited,
    }
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// `needle` appears in `hay` as consecutive words.
fn contains_words(hay: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[allow(clippy::too_many_arguments)]
fn check_one<'a>(
    name: &str,
    rule: &ApprovalRule,
    authorised: &BTreeSet<u64>,
    request: &Request,
    subjects: &[SubjectIdentity],
    cx: &Context,
    events: &[&'a LabelEvent],
    plan: Option<&Record>,
) -> Result<&'a LabelEvent, Missing> {
    let facts = cx.facts;
    let label = &rule.label;
    // The label this approval is: by the id the plan recorded (a rename keeps
    // the id and changes the name), else by name.
    let bound = plan.and_then(|p| p.label_id(name));
    let is_it = |e: &&LabelEvent| match bound {
        Some(id) => e.label_id == Some(id),
        None => e.label.as_deref() == Some(label.as_str()),
    };
    let last = events.iter().rev().find(|e| is_it(e)).copied();
    let present = match bound {
        Some(_) => last.is_some_and(|e| e.action == LabelAction::Add),
        None => facts.issue.labels.contains(label),
    };
    if !present {
        return Err(match last {
            Some(e) if e.action == LabelAction::Remove => Missing::Removed {
                by: e.user.username.clone(),
            },
            _ => Missing::NotApplied,
        });
    }
    let Some(ev) = last.filter(|e| e.action == LabelAction::Add) else {
        return Err(Missing::NoEventRecord);
    };
    let by = ev.user.username.clone();
    // Bound by id, and still under the approval's name, on the issue as it
    // is now: renaming labels cannot turn another label into the approval
    // (nor the approval into another label someone else applies).
    if bound.is_some()
        && (!facts.issue.labels.contains(label) || ev.label.as_deref().is_some_and(|n| n != label))
    {
        return Err(Missing::Renamed {
            by,
            now: ev.label.clone().unwrap_or_default(),
        });
    }
    let approver_email = cx.dir.email_of(ev.user.id);
    let is_subject = subjects
        .iter()
        .any(|s| s.id == Some(ev.user.id) || approver_email.is_some_and(|e| *e == s.email));
    if ev.user.id == request.requester.id || is_subject {
        return Err(Missing::SelfApproval { by });
    }
    if !authorised.contains(&ev.user.id) {
        return Err(Missing::Unauthorized { by });
    }
    // Not the same person as any subject: shown by their e-mail, or by a
    // subject whose row an identity source confirmed (then ids decide).
    let distinct = subjects
        .iter()
        .all(|s| approver_email.is_some() || (s.verified && s.id.is_some()));
    if !distinct {
        return Err(Missing::IdentityUnknown { by });
    }
    let Some(plan) = plan else {
        return Err(Missing::BeforePlan { by });
    };
    // Timestamps can tie; when they do, the order is unknown, so an approval
    // at the plan's instant counts as before it, and an edit at the
    // approval's instant as after it.
    if ev.created_at <= plan.at {
        return Err(Missing::BeforePlan { by });
    }
    if let Some(n) = facts.notes.iter().find(|n| {
        n.author.id != cx.bot_id && n.created_at >= ev.created_at && request_change(n, request)
    }) {
        return Err(Missing::EditedAfter {
            by: n.author.username.clone(),
        });
    }
    Ok(ev)
}

/// Whether the issue's labels and its label events tell the same story for
/// the labels a decision reads (every approval's label and denial label):
/// each such label is on the issue exactly when its latest event added it.
/// They are two reads; a label applied between them shows in the later one
/// only, and a decision on the mix sees an approval whose label is not on the
/// issue (a "renamed label", a security refusal) or a label nobody applied.
/// Both name a label by its current name, so a rename does not break this.
pub fn labels_agree(cfg: &Config, labels: &[String], events: &[LabelEvent]) -> bool {
    let read: BTreeSet<&String> = cfg
        .approvals
        .values()
        .flat_map(|r| std::iter::once(&r.label).chain(r.denied_label.iter()))
        .collect();
    let events = sorted_events(events);
    read.into_iter().all(|label| {
        let last = events
            .iter()
            .rev()
            .find(|e| e.label.as_ref() == Some(label));
        match last {
            Some(e) => (e.action == LabelAction::Add) == labels.contains(label),
            // No event: nothing to contradict (a label set when the issue was
            // filed, or one the decision will find without a record).
            None => true,
        }
    })
}

fn sorted_events(events: &[LabelEvent]) -> Vec<&LabelEvent> {
    let mut v: Vec<&LabelEvent> = events.iter().collect();
    // GitLab does not guarantee the order: sort by time, then id.
    v.sort_by_key(|e| (e.created_at, e.id));
    v
}

/// The latest `add` of `label`, provided no `remove` came after it.
fn latest_add<'a>(events: &[&'a LabelEvent], label: &str) -> Option<&'a LabelEvent> {
    let last = events
        .iter()
        .rev()
        .find(|e| e.label.as_deref() == Some(label))?;
    (last.action == LabelAction::Add).then_some(*last)
}

/// Why the manager named for the request's people is not confirmed by the
/// company directory (when people are checked against one).
fn manager_not_confirmed(request: &Request, dir: &Directory) -> Option<String> {
    if !dir.checked {
        return None;
    }
    for s in &request.subjects {
        let Some(named) = &s.manager else {
            return Some(format!(
                "no manager is named for {}",
                crate::render::code_span(s.email.as_str())
            ));
        };
        let named_email = match dir.lookup(named) {
            Lookup::Found(i) => i.email.clone(),
            _ => None,
        };
        let Some(named_email) = named_email else {
            return Some(format!(
                "the bot cannot establish the e-mail address of `@{named}`"
            ));
        };
        match dir.person(&s.email) {
            Some(Some(p)) if p.manager.as_ref() == Some(&named_email) => {}
            Some(Some(p)) => {
                return Some(match &p.manager {
                    Some(_) => format!(
                        "the company directory does not list `@{named}` as the manager of {}",
                        crate::render::code_span(s.email.as_str())
                    ),
                    None => format!(
                        "the company directory lists no manager for {}",
                        crate::render::code_span(s.email.as_str())
                    ),
                });
            }
            _ => {
                return Some(format!(
                    "{} is not in the company directory",
                    crate::render::code_span(s.email.as_str())
                ));
            }
        }
    }
    None
}

/// The GitLab users who may give this approval for this request: the ones a
/// reminder may mention (never a name as typed in the issue).
pub fn approver_usernames(rule: &ApprovalRule, request: &Request, dir: &Directory) -> Vec<String> {
    authorised_ids(rule, request, dir)
        .into_iter()
        .filter_map(|id| dir.by_id(id).map(|i| i.username.clone()))
        .collect()
}

fn authorised_ids(rule: &ApprovalRule, request: &Request, dir: &Directory) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for a in &rule.approvers {
        if a == MANAGER {
            // With a company directory, only the manager it confirms counts,
            // however the rule combines approvers.
            if manager_not_confirmed(request, dir).is_some() {
                continue;
            }
            // The manager of every subject: one person for all, or nobody.
            let managers: BTreeSet<Option<u64>> = request
                .subjects
                .iter()
                .map(|s| s.manager.as_deref().and_then(|m| dir.id(m)))
                .collect();
            if managers.len() == 1
                && let Some(Some(id)) = managers.into_iter().next()
            {
                ids.insert(id);
            }
        } else if let Some(id) = dir.id(a) {
            ids.insert(id);
        }
    }
    ids
}

fn describe_approvers(rule: &ApprovalRule, request: &Request) -> String {
    rule.approvers
        .iter()
        .map(|a| {
            if a == MANAGER {
                let ms: BTreeSet<String> = request
                    .subjects
                    .iter()
                    .map(|s| {
                        s.manager
                            .as_ref()
                            .map(|m| format!("`@{m}`"))
                            .unwrap_or_else(|| "(no manager named)".into())
                    })
                    .collect();
                format!(
                    "the manager ({})",
                    ms.into_iter().collect::<Vec<_>>().join(", ")
                )
            } else {
                format!("`@{}`", a.trim_start_matches('@'))
            }
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checklist_notes_are_read_back_unescaped() {
        assert_eq!(
            checklist_note_item(
                "marked the checklist item **Zendesk Global: Light\\_Agent** as completed"
            )
            .as_deref(),
            Some("Zendesk Global: Light_Agent")
        );
        assert_eq!(
            checklist_note_item("marked the checklist item **a ** as b** as incomplete").as_deref(),
            Some("a ** as b")
        );
        assert_eq!(checklist_note_item("changed the description"), None);
    }

    #[test]
    fn labels_agree_only_when_every_decided_label_is_as_its_last_event_left_it() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/bot.toml")).unwrap();
        let cfg = Config::parse(&text, std::path::Path::new("bot.toml")).unwrap();
        let t0 = Utc::now();
        let ev = |id: u64, label: &str, action: LabelAction| LabelEvent {
            id,
            user: UserRef {
                id: 7,
                username: "mlee".into(),
            },
            created_at: t0 + chrono::Duration::milliseconds(id as i64),
            label: Some(label.into()),
            label_id: Some(100),
            action,
        };
        let manager = "AR-Approval::Manager Approved";
        let applied = [ev(1, manager, LabelAction::Add)];
        // Listed before the approval, the events read after it: they disagree.
        assert!(!labels_agree(&cfg, &["support::to do".into()], &applied));
        assert!(labels_agree(&cfg, &[manager.into()], &applied));
        // Removed again: absent from the issue, as its last event says.
        let removed = [
            ev(1, manager, LabelAction::Add),
            ev(2, manager, LabelAction::Remove),
        ];
        assert!(labels_agree(&cfg, &[], &removed));
        assert!(!labels_agree(&cfg, &[manager.into()], &removed));
        // Labels no decision reads, and labels without events, do not count.
        let other = [ev(3, "support::doing", LabelAction::Add)];
        assert!(labels_agree(&cfg, &[manager.into()], &other));
    }
}
