//! What the bot says and does on an issue in answer to a decision, as a
//! value: a [`Reply`] (the note with its ticks, labels and close; an ops
//! notice; the People team's e-mail; the outcome). The builders here only
//! compute (no `.await`, no GitLab, no store: `tests/architecture.rs`
//! checks it); [`Bot::perform`] is the one place that carries a reply out,
//! always in the same order: the note first, then what refers to it.

use std::collections::{BTreeMap, BTreeSet};

use crate::approval::{self, Directory, History};
use crate::comment::{self, NoteKind};
use crate::gitlab::ApiIssue;
use crate::marker::short_hash;
use crate::notify::{Notice, NoticeKind};
use crate::plan;
use crate::report;
use crate::request::{self, IssueFacts, Request};

use super::process::{Author, PlanPost, ProcessError, ToVerify};
use super::writeback::{Section, Ticks, Writeback};
use super::{Bot, Outcome};

/// What a reply to acting on an approved plan is bound to.
pub(super) struct Acting<'a> {
    pub request: &'a Request,
    pub plan: &'a plan::Plan,
    /// The digest of the approved plan, and the id of its note.
    pub plan_digest: &'a str,
    pub plan_note: &'a str,
    pub author: &'a Author,
    /// The boxes this act ticks.
    pub ticks: &'a BTreeSet<usize>,
    /// The changes made, as short hashes joined by dots (`-`: none).
    pub did: String,
}

/// Everything one answer to a decision writes, and what it comes to.
pub(super) struct Reply {
    /// The note (sections not yet on the issue) and the edit of the issue.
    pub note: Option<Writeback>,
    /// Sent once the note is on the issue: ops learn what the issue says.
    pub notices: Vec<Notice>,
    /// Sent once the note asking for it is on the issue.
    pub email: Option<ToVerify>,
    /// Nothing to write, and the look counts as seen up to the issue's
    /// last change (so the next poll does not bring it back for nothing).
    pub seen: bool,
    pub outcome: Outcome,
}

impl Reply {
    fn with_note(note: Writeback, outcome: Outcome) -> Reply {
        Reply {
            note: Some(note),
            notices: Vec::new(),
            email: None,
            seen: false,
            outcome,
        }
    }
}

/// A security notice to ops about approvals that do not count, unless the
/// issue already explained this situation (`explained`).
pub(super) fn approvals_notice(
    request: &Request,
    missing: &[approval::MissingApproval],
    explained: bool,
) -> Option<Notice> {
    if explained || !missing.iter().any(|m| m.missing.is_security()) {
        return None;
    }
    let views = report::missing_views(missing);
    let sig: Vec<String> = views
        .iter()
        .map(|v| format!("{} {}", v.label, v.detail))
        .collect();
    Some(Notice {
        kind: NoticeKind::SecurityRefusal,
        cause: format!("#{} {}", request.iid, sig.join("; ")),
        detail: format!(
            "#{}: an approval does not count: {}",
            request.iid,
            sig.join("; ")
        ),
        url: Some(request.web_url.clone()),
    })
}

impl Bot {
    /// A request the bot cannot read: each problem (the first few), and the
    /// refused label.
    pub(super) fn invalid_reply(&self, errors: &[request::RequestError]) -> Reply {
        let shown: Vec<String> = errors
            .iter()
            .take(request::MAX_ERRORS)
            .map(|e| e.to_string())
            .collect();
        let more = errors.len().saturating_sub(shown.len());
        let note = Writeback {
            kind: NoteKind::Invalid,
            sections: vec![Section {
                key: format!("invalid:{}", short_hash(&shown.join("\n"))),
                comment: comment::Invalid {
                    errors: shown,
                    more,
                }
                .into(),
            }],
            state_label: Some(self.cfg.bot.state_labels.refused.clone()),
            ..Default::default()
        };
        Reply::with_note(note, Outcome::Refused)
    }

    /// A refusal, bound to the plan it refuses (if one), and the first time
    /// for a security reason, a notice to ops.
    pub(super) fn refused_reply(
        &self,
        history: &History,
        request: &Request,
        reasons: Vec<String>,
        close: bool,
        security: bool,
        plan: Option<&str>,
    ) -> Reply {
        let digest = request.digest();
        let key = format!("refused:{digest}:{}", short_hash(&reasons.join("\n")));
        let explained = history.keys().contains(&crate::marker::clean(&key));
        let notice = (security && !explained).then(|| Notice {
            kind: NoticeKind::SecurityRefusal,
            cause: format!("#{} {}", request.iid, reasons.join("; ")),
            detail: format!("#{} was refused: {}", request.iid, reasons.join("; ")),
            url: Some(request.web_url.clone()),
        });
        let note = Writeback {
            kind: NoteKind::Refused,
            digest,
            // Bound to the plan it refuses: that plan is consumed.
            fields: plan
                .map(|p| vec![("plan", p.to_string())])
                .unwrap_or_default(),
            sections: vec![Section {
                comment: if close {
                    comment::CitizenshipDenied { reasons }.into()
                } else {
                    comment::Refused { reasons, close }.into()
                },
                key,
            }],
            state_label: Some(self.cfg.bot.state_labels.refused.clone()),
            close,
            ..Default::default()
        };
        Reply {
            notices: notice.into_iter().collect(),
            ..Reply::with_note(note, Outcome::Refused)
        }
    }

    /// A plan refused when it came to act: the refused label, nothing more
    /// without a new plan.
    pub(super) fn closed_reply(&self, issue: &ApiIssue) -> Reply {
        let refused = &self.cfg.bot.state_labels.refused;
        let note = (!issue.labels.contains(refused)).then(|| Writeback {
            state_label: Some(refused.clone()),
            ..Default::default()
        });
        Reply {
            note,
            notices: Vec::new(),
            email: None,
            seen: false,
            outcome: Outcome::Refused,
        }
    }

    /// The latest plan was carried out: its ticks put back if they are
    /// missing, the done label (or failed, if a Support Team file could not
    /// be proposed: `support` holds those sections and the error), closed
    /// if the kind says so. Never anything run again.
    pub(super) fn done_reply(
        &self,
        issue: &ApiIssue,
        request: &Request,
        author: &Author,
        result: &approval::Record,
        retick: bool,
        support: (Vec<Section>, Option<String>),
    ) -> Reply {
        let labels = &self.cfg.bot.state_labels;
        let mut note = Writeback {
            kind: NoteKind::Result,
            digest: request.digest(),
            state_label: Some(labels.done.clone()),
            close: self.cfg.policy_for(request.kind).close_when_done,
            ..Default::default()
        };
        if retick {
            note.ticks = Ticks::Request {
                ordinals: result.ticks(),
                digest: request.digest(),
                author_email: author.email.clone(),
                author_name: author.name.clone(),
            };
        }
        let (sections, failed) = support;
        note.sections = sections;
        let outcome = match failed {
            Some(error) => {
                note.state_label = Some(labels.failed.clone());
                Outcome::Failed(error)
            }
            None => Outcome::Done,
        };
        let nothing_to_do = !retick
            && note.sections.is_empty()
            && issue.labels.contains(&labels.done)
            && (!note.close || issue.state != "opened");
        Reply {
            seen: nothing_to_do,
            note: (!nothing_to_do).then_some(note),
            notices: Vec::new(),
            email: None,
            outcome,
        }
    }

    /// The plan comment: what the bot will do, what each change needs, and
    /// (sealed in its marker) the digests an approval binds to, with the
    /// approval labels' ids (`label_ids`, read from GitLab: a rename cannot
    /// move them). Its outcome is `Waiting`: the caller decides again.
    pub(super) fn plan_reply(
        &self,
        facts: &IssueFacts,
        dir: &Directory,
        p: &PlanPost<'_>,
        label_ids: &BTreeMap<String, u64>,
    ) -> Reply {
        let request = p.request;
        let ss = p.requirements.self_service == crate::policy::SelfService::Verified;
        let plan = plan::preview(request, p.observed, &self.cfg, ss);
        let digest = request.digest();
        let changes = plan.changes_digest();
        let mut view = report::plan_view(
            request,
            &plan,
            &self.cfg,
            p.missing,
            p.granted,
            p.requirements,
            p.voided.is_some(),
        );
        view.voided_why = p.voided.clone();
        let label_field = p
            .requirements
            .required
            .iter()
            .filter_map(|n| {
                let label = &self.cfg.approvals.get(n)?.label;
                Some(format!("{n}:{}", label_ids.get(label)?))
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut fields = vec![
            ("changes", changes.clone()),
            ("needs", approval::needs_digest(&p.requirements.required)),
        ];
        if !label_field.is_empty() {
            fields.push(("labels", label_field));
        }
        let mut note = Writeback {
            kind: NoteKind::Plan,
            digest: digest.clone(),
            fields,
            sections: vec![Section {
                key: match &p.again {
                    Some(salt) => format!("plan:{digest}:{changes}:{}", short_hash(salt)),
                    None => format!("plan:{digest}:{changes}"),
                },
                comment: view.into(),
            }],
            state_label: Some(self.cfg.bot.state_labels.waiting.clone()),
            ..Default::default()
        };
        let email = if p.verification_pending {
            self.verification(request, dir, &mut note)
        } else {
            None
        };
        if !p.requirements.required.is_empty() {
            self.stale(facts, request, p.missing, dir, &mut note);
        }
        Reply {
            note: Some(note),
            notices: Vec::new(),
            email,
            seen: false,
            outcome: Outcome::Waiting,
        }
    }

    /// Waiting on the current plan: the waiting label; why something that
    /// happened does not count (once per situation, and to ops if it is a
    /// security matter); the People team's verification; a stale reminder
    /// or close.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn waiting_reply(
        &self,
        facts: &IssueFacts,
        history: &History,
        request: &Request,
        missing: &[approval::MissingApproval],
        granted: &[approval::Granted],
        verification_pending: bool,
        dir: &Directory,
    ) -> Reply {
        let digest = request.digest();
        let mut note = Writeback {
            kind: NoteKind::Waiting,
            digest: digest.clone(),
            state_label: Some(self.cfg.bot.state_labels.waiting.clone()),
            ..Default::default()
        };
        let mut notice = None;
        if missing
            .iter()
            .any(|m| m.missing != approval::Missing::NotApplied)
        {
            // Something happened that does not count: say why, once per situation.
            let views = report::missing_views(missing);
            let sig: Vec<String> = views
                .iter()
                .map(|v| format!("{}{}", v.label, v.detail))
                .collect();
            let key = format!("waiting:{digest}:{}", short_hash(&sig.join("\n")));
            let explained = history.keys().contains(&crate::marker::clean(&key));
            note.sections.push(Section {
                key,
                comment: comment::Waiting {
                    kind: request.kind.human().to_string(),
                    missing: views,
                    granted: report::granted_views(granted),
                }
                .into(),
            });
            notice = approvals_notice(request, missing, explained);
        }
        let email = if verification_pending {
            self.verification(request, dir, &mut note)
        } else {
            None
        };
        self.stale(facts, request, missing, dir, &mut note);
        Reply {
            note: Some(note),
            notices: notice.into_iter().collect(),
            email,
            seen: false,
            outcome: Outcome::Waiting,
        }
    }

    /// Some people of the request have no account for the asked change to
    /// apply to: nothing is changed for anyone, and the refused label.
    pub(super) fn needs_account_first_reply(
        &self,
        request: &Request,
        refusals: &[&plan::Blocked],
        plan_digest: &str,
    ) -> Reply {
        let digest = request.digest();
        let people: Vec<comment::WithoutAccount> = refusals
            .iter()
            .map(|b| comment::WithoutAccount {
                name: request
                    .subjects
                    .iter()
                    .find(|s| s.email == b.subject)
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                email: b.subject.as_str().to_string(),
                system: self.display(&b.instance),
            })
            .collect();
        let note = Writeback {
            kind: NoteKind::Refused,
            digest: digest.clone(),
            fields: vec![("plan", plan_digest.to_string())],
            sections: vec![Section {
                comment: comment::NeedsAccountFirst { people }.into(),
                key: format!("needs-account:{digest}"),
            }],
            state_label: Some(self.cfg.bot.state_labels.refused.clone()),
            ..Default::default()
        };
        Reply::with_note(note, Outcome::Refused)
    }

    /// The result note of acting on an approved plan: bound to that plan
    /// and its note, with the changes made (`did`), the boxes ticked and
    /// the request's digest once they are.
    fn result_note(&self, a: &Acting<'_>, sections: Vec<Section>, done: bool) -> Writeback {
        let digest = a.request.digest();
        Writeback {
            kind: NoteKind::Result,
            digest: digest.clone(),
            fields: vec![
                ("plan", a.plan_digest.to_string()),
                ("plan_note", a.plan_note.to_string()),
                ("did", a.did.clone()),
                ("done", if done { "1" } else { "0" }.to_string()),
                ("after", a.request.digest_after_ticks(a.ticks)),
                (
                    "ticks",
                    if a.ticks.is_empty() {
                        "-".to_string()
                    } else {
                        a.ticks
                            .iter()
                            .map(|t| t.to_string())
                            .collect::<Vec<_>>()
                            .join(".")
                    },
                ),
            ],
            sections,
            ticks: Ticks::Request {
                ordinals: a.ticks.clone(),
                digest,
                author_email: a.author.email.clone(),
                author_name: a.author.name.clone(),
            },
            ..Default::default()
        }
    }

    /// A step failed while acting: what failed and what was done before it,
    /// the boxes of what is complete ticked, the failed label, and unless
    /// the error passes by itself, ops told.
    pub(super) fn step_failed_reply(
        &self,
        a: &Acting<'_>,
        step: &plan::Step,
        error: String,
        transient: bool,
        systems: &[report::SystemView],
    ) -> Reply {
        let mut note = self.result_note(
            a,
            vec![Section {
                comment: comment::Failed {
                    step: step.action.to_string(),
                    subject: step.subject.as_str().to_string(),
                    system: self.display(&step.instance),
                    error: error.clone(),
                    done: systems
                        .iter()
                        .flat_map(|s| {
                            s.steps
                                .iter()
                                .filter(|st| st.done)
                                .map(|st| st.text.clone())
                        })
                        .collect(),
                }
                .into(),
                key: format!(
                    "failed:{}:{}:{}",
                    a.plan_digest,
                    step.key,
                    short_hash(&error)
                ),
            }],
            false,
        );
        note.state_label = Some(self.cfg.bot.state_labels.failed.clone());
        let notices = if transient {
            Vec::new()
        } else {
            vec![Notice {
                kind: NoticeKind::StepFailed,
                cause: format!("{}: {error}", step.instance),
                detail: format!(
                    "#{}: {} for {} failed: {error}",
                    a.request.iid,
                    step.action,
                    step.subject.as_str()
                ),
                url: Some(a.request.web_url.clone()),
            }]
        };
        Reply {
            notices,
            ..Reply::with_note(note, Outcome::Failed(error))
        }
    }

    /// Every step of the plan ran: the result note. Complete, it is done
    /// (closed if the kind says so); with something blocked, it is failed,
    /// with why, and ops are told of a manager who cannot take the tickets.
    pub(super) fn acted_reply(&self, a: &Acting<'_>, result: comment::ResultNote) -> Reply {
        let labels = &self.cfg.bot.state_labels;
        let p = a.plan;
        let complete = result.complete;
        let mut note = self.result_note(
            a,
            vec![Section {
                comment: result.into(),
                // Once per outcome: done, or blocked for these reasons (not
                // once per retry of the same situation).
                key: format!(
                    "result:{}:{}",
                    a.plan_digest,
                    if complete {
                        "done".to_string()
                    } else {
                        short_hash(
                            &p.blocked
                                .iter()
                                .map(|b| b.reason.explain(&b.instance))
                                .collect::<Vec<_>>()
                                .join("\n"),
                        )
                    }
                ),
            }],
            complete,
        );
        if p.blocked.is_empty() {
            note.state_label = Some(labels.done.clone());
            note.close = complete && self.cfg.policy_for(a.request.kind).close_when_done;
            return Reply::with_note(note, Outcome::Done);
        }
        note.state_label = Some(labels.failed.clone());
        let notices = p
            .blocked
            .iter()
            .filter_map(|b| match &b.reason {
                plan::BlockReason::ManagerCannotTakeTickets { manager, .. } => Some(Notice {
                    kind: NoticeKind::ManagerCannotTakeTickets,
                    cause: format!("#{} {manager}", a.request.iid),
                    detail: format!("#{}: {}", a.request.iid, b.reason.explain(&b.instance)),
                    url: Some(a.request.web_url.clone()),
                }),
                _ => None,
            })
            .collect();
        let why = p
            .blocked
            .iter()
            .map(|b| b.reason.explain(&b.instance))
            .collect::<Vec<_>>()
            .join("; ");
        Reply {
            notices,
            ..Reply::with_note(note, Outcome::Failed(why))
        }
    }

    /// Carry out a reply: the note and the edit, then the notice, then the
    /// e-mail (whose failure is the outcome: said on the issue, retried).
    pub(super) async fn perform(
        &self,
        project: &str,
        issue: &ApiIssue,
        history: &mut History,
        facts: Option<&IssueFacts>,
        request: Option<&Request>,
        reply: Reply,
    ) -> Result<Outcome, ProcessError> {
        if let Some(note) = reply.note
            && let Some(r) = self.write_back(project, issue, history, note).await?
        {
            history.push(r);
        }
        if reply.seen {
            self.store.mark_seen(project, issue.iid, issue.updated_at)?;
        }
        for n in reply.notices {
            tracing::warn!(iid = issue.iid, kind = ?n.kind, cause = %n.cause, "telling ops");
            self.tell_ops(n.kind, n.cause, n.detail, n.url).await;
        }
        if let Some(v) = reply.email {
            let (Some(request), Some(facts)) = (request, facts) else {
                tracing::error!(
                    iid = issue.iid,
                    "an e-mail to send without its request; not sent"
                );
                return Ok(Outcome::Failed(
                    "the People team's e-mail could not be prepared".into(),
                ));
            };
            if let Err(e) = self
                .verification_email(project, issue, history, request, &v, facts)
                .await?
            {
                return Ok(Outcome::Failed(e));
            }
        }
        Ok(reply.outcome)
    }
}
