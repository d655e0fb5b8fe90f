//! The parts of the comments' contexts (`crate::comment`) built from the
//! core's types: the plan, its systems and steps, approvals.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::approval::{Granted, MissingApproval};
use crate::config::Config;
use crate::plan::{Plan, StepState};
use crate::policy::{Requirements, SelfService};
use crate::request::Request;

#[derive(Debug, Serialize)]
pub struct SubjectView {
    pub name: String,
    pub email: String,
    pub username: Option<String>,
    pub manager: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StepView {
    pub text: String,
    pub done: bool,
    /// Nothing had to be done: the system was already in that state.
    pub already: bool,
    pub item: String,
}

#[derive(Debug, Serialize, Default)]
pub struct EvidenceRow {
    pub field: String,
    pub before: String,
    pub after: String,
}

#[derive(Debug, Serialize)]
pub struct SystemView {
    pub title: String,
    pub steps: Vec<StepView>,
    pub blocked: Vec<String>,
    pub notes: Vec<String>,
    pub evidence: Vec<EvidenceRow>,
}

#[derive(Debug, Serialize)]
pub struct ApprovalView {
    pub label: String,
    pub who: String,
    pub detail: String,
}

/// What one item needs, and why (the configuration rule), for `plan` and the plan comment.
#[derive(Debug, Serialize)]
pub struct NeedsView {
    pub item: String,
    pub change: String,
    /// `label` (rule), …
    pub needs: Vec<String>,
    pub waived: Vec<String>,
}

/// At most this many items of other systems are repeated in a comment.
pub const MAX_LISTED: usize = 10;

#[derive(Debug, Serialize)]
pub struct PlanView {
    pub kind: String,
    pub subjects: Vec<SubjectView>,
    pub systems: Vec<SystemView>,
    pub approvals: Vec<ApprovalView>,
    /// Per item: the approvals it needs and the rule that says so.
    pub needs: Vec<NeedsView>,
    /// Why self-service does not apply, when the request looks like it.
    pub not_self_service_because: Option<String>,
    /// Why a trusted automation's pre-approval no longer applies.
    pub trust_note: Option<String>,
    /// Other systems' items (at most `MAX_LISTED`, then a count).
    pub unmanaged: Vec<String>,
    pub unmanaged_more: usize,
    pub skipped: Vec<String>,
    pub skipped_more: usize,
    pub expires: Option<String>,
    pub voided: bool,
    /// Why earlier approvals no longer apply (shown when `voided`).
    pub voided_why: Option<String>,
}

pub fn subjects(request: &Request) -> Vec<SubjectView> {
    request
        .subjects
        .iter()
        .map(|s| SubjectView {
            name: s.name.clone(),
            email: s.email.to_string(),
            username: s.gitlab_username.as_ref().map(|u| format!("@{u}")),
            manager: s.manager.as_ref().map(|u| format!("@{u}")),
        })
        .collect()
}

fn item_text(request: &Request, index: usize) -> String {
    request
        .items
        .iter()
        .find(|i| i.index == index)
        .map(|i| i.text.clone())
        .unwrap_or_default()
}

/// Group the plan's steps by (instance, subject), in plan order.
pub fn systems(
    request: &Request,
    plan: &Plan,
    cfg: &Config,
    done: Option<&BTreeSet<String>>,
) -> Vec<SystemView> {
    let mut out: Vec<(String, String, SystemView)> = Vec::new();
    let slot =
        |out: &mut Vec<(String, String, SystemView)>, instance: &str, email: &str| -> usize {
            if let Some(i) = out.iter().position(|(a, b, _)| a == instance && b == email) {
                return i;
            }
            let display = cfg
                .zendesk
                .get(instance)
                .map(|z| z.display_name.clone())
                .unwrap_or_else(|| instance.to_string());
            let name = request
                .subjects
                .iter()
                .find(|s| s.email.as_str() == email)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            out.push((
                instance.to_string(),
                email.to_string(),
                SystemView {
                    title: format!(
                        "{display}: {} ({})",
                        crate::render::escape_cell(&name),
                        crate::render::code_span(email)
                    ),
                    steps: Vec::new(),
                    blocked: Vec::new(),
                    notes: Vec::new(),
                    evidence: Vec::new(),
                },
            ));
            out.len() - 1
        };
    for st in &plan.steps {
        let i = slot(&mut out, &st.instance, st.subject.as_str());
        let already = st.state == StepState::AlreadyDone;
        out[i].2.steps.push(StepView {
            text: st.action.to_string(),
            done: already || done.is_some_and(|d| d.contains(&st.key)),
            already,
            item: item_text(request, st.item),
        });
    }
    for b in &plan.blocked {
        let i = slot(&mut out, &b.instance, b.subject.as_str());
        let display = cfg
            .zendesk
            .get(&b.instance)
            .map(|z| z.display_name.clone())
            .unwrap_or_default();
        out[i].2.blocked.push(format!(
            "{} {}",
            crate::render::code_span(b.subject.as_str()),
            b.reason.explain(&display)
        ));
    }
    for n in &plan.notes {
        let i = slot(&mut out, &n.instance, n.subject.as_str());
        out[i].2.notes.push(n.text.clone());
    }
    out.into_iter().map(|(_, _, v)| v).collect()
}

pub fn plan_view(
    request: &Request,
    plan: &Plan,
    cfg: &Config,
    missing: &[MissingApproval],
    granted: &[Granted],
    requirements: &Requirements,
    voided: bool,
) -> PlanView {
    let label_of = |name: &str| {
        cfg.approvals
            .get(name)
            .map(|a| a.label.clone())
            .unwrap_or_else(|| name.to_string())
    };
    let needs = requirements
        .items
        .iter()
        .map(|n| NeedsView {
            item: request
                .items
                .iter()
                .find(|i| i.ordinal == n.item)
                .map(|i| i.text.clone())
                .unwrap_or_default(),
            change: n.change.clone(),
            needs: n
                .needs
                .iter()
                .map(|x| format!("`{}` ({})", label_of(&x.approval), x.because))
                .collect(),
            waived: n
                .waived
                .iter()
                .map(|x| format!("`{}`: {}", label_of(&x.approval), x.because))
                .collect(),
        })
        .chain(requirements.kind_needs.iter().map(|k| NeedsView {
            item: String::new(),
            change: format!("a {}", request.kind.human()),
            needs: vec![format!("`{}` ({})", label_of(&k.approval), k.because)],
            waived: Vec::new(),
        }))
        .collect();
    let not_self_service_because = match &requirements.self_service {
        SelfService::Unverified(why) => Some(why.clone()),
        _ => None,
    };
    let trust_note = match &requirements.trust {
        crate::policy::Trust::Lost(why) => Some(why.clone()),
        _ => None,
    };
    let unmanaged: Vec<String> = request.unmanaged.iter().map(|u| u.text.clone()).collect();
    let skipped: Vec<String> = plan
        .skipped_items
        .iter()
        .map(|i| item_text(request, *i))
        .collect();
    let mut approvals: Vec<ApprovalView> = granted
        .iter()
        .map(|g| ApprovalView {
            label: g.label.clone(),
            who: format!("`@{}`", g.by.username),
            detail: format!("approved {}", g.at.format("%Y-%m-%d %H:%M UTC")),
        })
        .collect();
    approvals.extend(missing.iter().map(|m| ApprovalView {
        label: m.label.clone(),
        who: m.who.clone(),
        detail: m.missing.explain(),
    }));
    PlanView {
        kind: request.kind.human().to_string(),
        subjects: subjects(request),
        systems: systems(request, plan, cfg, None),
        approvals,
        needs,
        not_self_service_because,
        trust_note,
        unmanaged_more: unmanaged.len().saturating_sub(MAX_LISTED),
        unmanaged: unmanaged.into_iter().take(MAX_LISTED).collect(),
        skipped_more: skipped.len().saturating_sub(MAX_LISTED),
        skipped: skipped.into_iter().take(MAX_LISTED).collect(),
        expires: request.expires.map(|e| e.0.to_string()),
        voided,
        voided_why: None,
    }
}

#[derive(Debug, Serialize)]
pub struct MissingView {
    pub label: String,
    pub who: String,
    pub detail: String,
}

pub fn missing_views(missing: &[MissingApproval]) -> Vec<MissingView> {
    missing
        .iter()
        .map(|m| MissingView {
            label: m.label.clone(),
            who: m.who.clone(),
            detail: m.missing.explain(),
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct GrantedView {
    pub label: String,
    pub by: String,
    pub at: String,
}

pub fn granted_views(granted: &[Granted]) -> Vec<GrantedView> {
    granted
        .iter()
        .map(|g| GrantedView {
            label: g.label.clone(),
            by: g.by.username.clone(),
            at: g.at.format("%Y-%m-%d %H:%M UTC").to_string(),
        })
        .collect()
}
