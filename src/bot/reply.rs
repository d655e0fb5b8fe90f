//! What the bot says and does on an issue in answer to a decision, as a
//! value: a [`Reply`] (the note with its ticks, labels and close; an ops
//! notice; the People team's e-mail; the outcome). The builders here only
//! compute (no `.await`, no GitLab, no store: `tests/architecture.rs`
//! checks it); [`Bot::perform`] is the one place that carries a reply out,
//! always in the same order: the note first, then what refers to it.

use crate::approval::{self, Directory, History};
use crate::comment::{self, NoteKind};
use crate::gitlab::ApiIssue;
use crate::marker::short_hash;
use crate::notify::{Notice, NoticeKind};
use crate::report;
use crate::request::{self, IssueFacts, Request};

use super::process::{ProcessError, ToVerify};
use super::writeback::{Section, Writeback};
use super::{Bot, Outcome};

/// Everything one answer to a decision writes, and what it comes to.
pub(super) struct Reply {
    /// The note (sections not yet on the issue) and the edit of the issue.
    pub note: Option<Writeback>,
    /// Sent once the note is on the issue: ops learn what the issue says.
    pub notice: Option<Notice>,
    /// Sent once the note asking for it is on the issue.
    pub email: Option<ToVerify>,
    pub outcome: Outcome,
}

impl Reply {
    fn with_note(note: Writeback, outcome: Outcome) -> Reply {
        Reply {
            note: Some(note),
            notice: None,
            email: None,
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
            notice,
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
            notice: None,
            email: None,
            outcome: Outcome::Refused,
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
            notice,
            email,
            outcome: Outcome::Waiting,
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
        if let Some(n) = reply.notice {
            tracing::warn!(iid = issue.iid, cause = %n.cause, "a security refusal; telling ops");
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
