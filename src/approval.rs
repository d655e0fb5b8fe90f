//! Is this request approved, by whom, and does the approval still hold?
//!
//! Only this module can build an [`Approved`]; provisioning code takes one, so
//! nothing can be granted on an unverified approval. The rule (see
//! `docs/approvals.md` in the shared notes):
//! - each required label is present now and its latest `add` was by an
//!   authorised approver (by user id), who is neither the requester nor a subject;
//! - nobody but the bot changed the description's text after that approval;
//! - the approval binds to the latest plan comment posted before it: if the
//!   request's digest differs from that plan's, the approval no longer applies;
//!   without such a plan comment, any description change by someone else after
//!   the approval (text or checkbox) voids it;
//! - entitlement and offboarding issues are trusted only when authored by the
//!   configured automation and edited by nobody else;
//! - a denial label (citizenship) by an authorised person refuses and closes.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{ApprovalRule, Config};
use crate::marker::Marker;
use crate::request::{IssueFacts, LabelAction, LabelEvent, Request, UserRef};

/// GitLab usernames resolved to user ids by the adapter (lower-cased keys).
#[derive(Debug, Clone, Default)]
pub struct Directory {
    ids: HashMap<String, u64>,
}

impl Directory {
    pub fn new() -> Directory {
        Directory::default()
    }

    pub fn insert(&mut self, username: &str, id: u64) {
        self.ids.insert(username.to_ascii_lowercase(), id);
    }

    pub fn id(&self, username: &str) -> Option<u64> {
        self.ids
            .get(&username.trim_start_matches('@').to_ascii_lowercase())
            .copied()
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

/// One approval that holds.
#[derive(Debug, Clone, Serialize)]
pub struct Granted {
    pub approval: String,
    pub label: String,
    pub by: UserRef,
    pub at: DateTime<Utc>,
}

/// Why a required approval does not hold (yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Missing {
    NotApplied,
    Removed { by: String },
    NoEventRecord,
    Unauthorized { by: String },
    SelfApproval { by: String },
    EditedAfter { by: String },
    PlanChanged,
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
            Missing::EditedAfter { by } => {
                format!("the description was edited by `@{by}` after the approval, so the approval no longer applies; please approve again")
            }
            Missing::PlanChanged => {
                "the request changed after the plan that was approved; please review the new plan and approve again".into()
            }
        }
    }

    /// A reason ops should hear about (someone tried something).
    pub fn is_security(&self) -> bool {
        matches!(
            self,
            Missing::Unauthorized { .. } | Missing::SelfApproval { .. }
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

/// A request whose approval has been verified. Only `decide` builds one.
#[derive(Debug, Clone)]
pub struct Approved<T> {
    request: T,
    granted: Vec<Granted>,
    digest: String,
}

impl<T> Approved<T> {
    pub fn request(&self) -> &T {
        &self.request
    }
    pub fn granted(&self) -> &[Granted] {
        &self.granted
    }
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

#[derive(Debug, Clone)]
pub enum Decision {
    Approved(Approved<Request>),
    Waiting {
        request: Request,
        missing: Vec<MissingApproval>,
        granted: Vec<Granted>,
        /// A required citizenship-style verification (an approval with a denial label) is outstanding.
        verification_pending: bool,
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
            Decision::Waiting { request, .. } => request,
            Decision::Refused { request, .. } => request,
        }
    }
}

/// The latest plan comment digest the bot posted, and when.
pub fn plan_comments(facts: &IssueFacts, bot_id: u64) -> Vec<(DateTime<Utc>, String)> {
    let mut v: Vec<_> = facts
        .notes
        .iter()
        .filter(|n| !n.system && n.author.id == bot_id)
        .flat_map(|n| {
            Marker::find_all(&n.body)
                .into_iter()
                .filter(|m| m.step == "plan")
                .map(|m| (n.created_at, m.digest))
                .collect::<Vec<_>>()
        })
        .collect();
    v.sort();
    v
}

/// Does the latest plan comment describe the request as it is now?
pub fn plan_is_current(request: &Request, facts: &IssueFacts, bot_id: u64) -> bool {
    plan_comments(facts, bot_id)
        .last()
        .is_some_and(|(_, d)| *d == request.digest())
}

/// Names of the approvals this request needs: its kind's policy plus what
/// each instance it grants in requires. Kinds pre-approved through their
/// template (trusted authors) take only the instance's verifications (the
/// approvals with a denial label, such as citizenship), not its approvals.
pub fn required_approvals(request: &Request, cfg: &Config) -> Vec<String> {
    let policy = cfg.policy_for(request.kind);
    let pre_approved = !policy.trusted_authors.is_empty();
    let mut names = policy.approvals;
    for inst in request.granting_instances() {
        if let Some(z) = cfg.zendesk.get(inst) {
            for r in &z.requires {
                let verification = cfg
                    .approvals
                    .get(r)
                    .is_some_and(|a| a.denied_label.is_some());
                if pre_approved && !verification {
                    continue;
                }
                if !names.contains(r) {
                    names.push(r.clone());
                }
            }
        }
    }
    names
}

pub fn decide(
    request: Request,
    facts: &IssueFacts,
    cfg: &Config,
    dir: &Directory,
    bot_id: u64,
) -> Decision {
    let digest = request.digest();
    let policy = cfg.policy_for(request.kind);
    let events = sorted_events(&facts.label_events);

    // Trusted automation (entitlements, offboarding).
    if !policy.trusted_authors.is_empty() {
        let trusted: BTreeSet<u64> = policy
            .trusted_authors
            .iter()
            .filter_map(|u| dir.id(u))
            .collect();
        let mut reasons = Vec::new();
        if !trusted.contains(&facts.issue.author.id) {
            reasons.push(format!(
                "a {} is only trusted when filed by the automation ({}); this one was filed by `@{}`",
                request.kind.human(),
                policy
                    .trusted_authors
                    .iter()
                    .map(|u| format!("`@{u}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                facts.issue.author.username
            ));
        }
        for n in facts.notes.iter().filter(|n| n.is_description_change()) {
            if n.author.id != bot_id && !trusted.contains(&n.author.id) {
                reasons.push(format!(
                    "the description was changed by `@{}` at {}; a {} must not be edited by hand",
                    n.author.username,
                    n.created_at.format("%Y-%m-%d %H:%M UTC"),
                    request.kind.human()
                ));
                break;
            }
        }
        if !reasons.is_empty() {
            return Decision::Refused {
                request: Box::new(request),
                reasons,
                close: false,
                security: true,
            };
        }
    }

    let subject_ids: BTreeSet<u64> = request
        .subjects
        .iter()
        .filter_map(|s| s.gitlab_username.as_deref().and_then(|u| dir.id(u)))
        .collect();
    let subject_names: BTreeSet<String> = request
        .subjects
        .iter()
        .filter_map(|s| s.gitlab_username.as_ref().map(|u| u.to_ascii_lowercase()))
        .collect();
    let plans = plan_comments(facts, bot_id);

    let mut granted = Vec::new();
    let mut missing = Vec::new();
    let mut verification_pending = false;
    for name in required_approvals(&request, cfg) {
        let Some(rule) = cfg.approvals.get(&name) else {
            continue; // validated at load time
        };
        let authorised = authorised_ids(rule, &request, dir);

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
            rule,
            &authorised,
            facts,
            &events,
            &request,
            &subject_ids,
            &subject_names,
            &plans,
            &digest,
            bot_id,
        );
        match verdict {
            Ok(ev) => granted.push(Granted {
                approval: name.clone(),
                label: rule.label.clone(),
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

    if missing.is_empty() {
        Decision::Approved(Approved {
            request,
            granted,
            digest,
        })
    } else {
        Decision::Waiting {
            request,
            missing,
            granted,
            verification_pending,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_one<'a>(
    rule: &ApprovalRule,
    authorised: &BTreeSet<u64>,
    facts: &IssueFacts,
    events: &[&'a LabelEvent],
    request: &Request,
    subject_ids: &BTreeSet<u64>,
    subject_names: &BTreeSet<String>,
    plans: &[(DateTime<Utc>, String)],
    digest: &str,
    bot_id: u64,
) -> Result<&'a LabelEvent, Missing> {
    let label = &rule.label;
    if !facts.issue.labels.contains(label) {
        let last = events
            .iter()
            .rev()
            .find(|e| e.label.as_deref() == Some(label.as_str()));
        return Err(match last {
            Some(e) if e.action == LabelAction::Remove => Missing::Removed {
                by: e.user.username.clone(),
            },
            _ => Missing::NotApplied,
        });
    }
    let Some(ev) = latest_add(events, label) else {
        return Err(Missing::NoEventRecord);
    };
    if ev.user.id == request.requester.id
        || subject_ids.contains(&ev.user.id)
        || subject_names.contains(&ev.user.username.to_ascii_lowercase())
    {
        return Err(Missing::SelfApproval {
            by: ev.user.username.clone(),
        });
    }
    if !authorised.contains(&ev.user.id) {
        return Err(Missing::Unauthorized {
            by: ev.user.username.clone(),
        });
    }
    // Timestamps can tie; when they do, the order is unknown, so an edit at the same
    // instant counts as after the approval, and a plan must come strictly before it.
    let after = |n: &&crate::request::Note| n.author.id != bot_id && n.created_at >= ev.created_at;
    if let Some(n) = facts.notes.iter().filter(|n| n.is_text_edit()).find(after) {
        return Err(Missing::EditedAfter {
            by: n.author.username.clone(),
        });
    }
    match plans.iter().rev().find(|(at, _)| *at < ev.created_at) {
        Some((_, d)) if d != digest => Err(Missing::PlanChanged),
        Some(_) => Ok(ev),
        None => match facts
            .notes
            .iter()
            .filter(|n| n.is_description_change())
            .find(after)
        {
            Some(n) => Err(Missing::EditedAfter {
                by: n.author.username.clone(),
            }),
            None => Ok(ev),
        },
    }
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

fn authorised_ids(rule: &ApprovalRule, request: &Request, dir: &Directory) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for a in &rule.approvers {
        if a == MANAGER {
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
