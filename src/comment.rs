//! Every text the bot writes, typed: one context per template in
//! `templates/`, with exactly the fields that template uses, tied to its
//! template name, and the kinds of sealed note the bot's comments go in.
//!
//! To add a text: a template in `templates/` (listed in
//! [`crate::render::TEMPLATES`]), its context here in [`texts!`], and, if it
//! is posted on an issue, a [`Comment`] variant. The tests below render a
//! sample of every context with strict undefined and compare each template's
//! variables with its context's fields.

use serde::Serialize;

use crate::bot::status::StatusReport;
use crate::render::{RenderError, Templates};
use crate::report::{GrantedView, MissingView, PlanView, SystemView};
use crate::seats::SeatCandidate;

/// A template's typed context. Implemented only here (the trait is sealed),
/// so every context and its template name are listed in one place.
pub trait Text: Serialize + sealed::Sealed {
    /// The file in `templates/` this context renders.
    const TEMPLATE: &'static str;
}

mod sealed {
    pub trait Sealed {}
}

impl Templates {
    /// The one way the bot renders a text: a typed context names its template.
    pub fn text<T: Text>(&self, ctx: &T) -> Result<String, RenderError> {
        self.render(T::TEMPLATE, ctx)
    }
}

macro_rules! texts {
    ($($ty:ident $(<$lt:lifetime>)? => $file:literal,)*) => {
        $(
            impl $(<$lt>)? sealed::Sealed for $ty $(<$lt>)? {}
            impl $(<$lt>)? Text for $ty $(<$lt>)? {
                const TEMPLATE: &'static str = $file;
            }
        )*
        /// The templates that have a typed context, each once.
        pub const TEXTS: &[&str] = &[$($file),*];
    };
}

texts! {
    PlanView => "plan.md",
    Waiting => "waiting.md",
    Refused => "refused.md",
    CitizenshipDenied => "citizenship_denied.md",
    Invalid => "invalid.md",
    ResultNote => "result.md",
    Failed => "failed.md",
    CitizenshipRequest => "citizenship_request.md",
    CitizenshipEmail => "citizenship_email.txt",
    NeedsAccountFirst => "needs_account_first.md",
    StaleReminder => "stale_reminder.md",
    StaleClosed => "stale_closed.md",
    ExpiryReminder => "expiry_reminder.md",
    Expired => "expired.md",
    SeatReview<'a> => "seat_review.md",
    SeatReviewItem<'a> => "seat_review_item.md",
    SeatReclaimed => "seat_reclaimed.md",
    SeatListed => "seat_listed.md",
    OpsNotice => "ops_notice.txt",
    EmailSending => "email_sending.md",
    EmailSent => "email_sent.md",
    EmailFailed => "email_failed.md",
    SupportTeam => "support_team.md",
    SupportTeamMr => "support_team_mr.md",
    Digest => "digest.txt",
    GrantRecord => "grant_record.md",
    Stopped => "stopped.md",
    StatusText<'a> => "status.txt",
    StatusPage<'a> => "status.html",
}

/// Templates that are not rendered on their own: macros the others import.
pub const LIBRARIES: &[&str] = &["status_phrases.txt"];

/// What a sealed note of the bot's is (its marker's `kind`): the bot reads
/// its own notes back by it, so these names are as fixed as the markers
/// already on issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoteKind {
    Plan,
    Waiting,
    Invalid,
    Refused,
    Result,
    Email,
    Grant,
    ExpiryReminder,
    Expired,
    Stopped,
    /// The lines a seat review lists (`seat_listed.md`).
    SeatList,
    /// Anything else: seat review outcomes, the Support Team follow-up.
    #[default]
    Note,
}

impl NoteKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            NoteKind::Plan => "plan",
            NoteKind::Waiting => "waiting",
            NoteKind::Invalid => "invalid",
            NoteKind::Refused => "refused",
            NoteKind::Result => "result",
            NoteKind::Email => "email",
            NoteKind::Grant => "grant",
            NoteKind::ExpiryReminder => "expiry-reminder",
            NoteKind::Expired => "expired",
            NoteKind::Stopped => "stopped",
            NoteKind::SeatList => "seat-list",
            NoteKind::Note => "note",
        }
    }
}

macro_rules! comments {
    ($($variant:ident($ty:ident) => $kind:expr,)*) => {
        /// A comment on an issue: one section of a sealed note.
        #[derive(Debug)]
        pub enum Comment {
            $($variant($ty),)*
        }

        $(
            impl From<$ty> for Comment {
                fn from(c: $ty) -> Comment {
                    Comment::$variant(c)
                }
            }
        )*

        impl Comment {
            pub fn template(&self) -> &'static str {
                match self {
                    $(Comment::$variant(_) => <$ty as Text>::TEMPLATE,)*
                }
            }

            /// The kind of note this comment is always sealed in; `None`
            /// for one that joins notes of several kinds.
            pub fn kind(&self) -> Option<NoteKind> {
                match self {
                    $(Comment::$variant(_) => $kind,)*
                }
            }

            pub fn render(&self, t: &Templates) -> Result<String, RenderError> {
                match self {
                    $(Comment::$variant(c) => t.text(c),)*
                }
            }
        }
    };
}

comments! {
    Plan(PlanView) => Some(NoteKind::Plan),
    Waiting(Waiting) => Some(NoteKind::Waiting),
    Refused(Refused) => Some(NoteKind::Refused),
    CitizenshipDenied(CitizenshipDenied) => Some(NoteKind::Refused),
    Invalid(Invalid) => Some(NoteKind::Invalid),
    ResultNote(ResultNote) => Some(NoteKind::Result),
    Failed(Failed) => Some(NoteKind::Result),
    // Asked in the note of the plan or of the wait.
    CitizenshipRequest(CitizenshipRequest) => None,
    NeedsAccountFirst(NeedsAccountFirst) => Some(NoteKind::Refused),
    StaleReminder(StaleReminder) => None,
    StaleClosed(StaleClosed) => None,
    ExpiryReminder(ExpiryReminder) => Some(NoteKind::ExpiryReminder),
    Expired(Expired) => Some(NoteKind::Expired),
    SeatReclaimed(SeatReclaimed) => Some(NoteKind::Note),
    SeatListed(SeatListed) => Some(NoteKind::SeatList),
    EmailSending(EmailSending) => Some(NoteKind::Email),
    EmailSent(EmailSent) => Some(NoteKind::Email),
    EmailFailed(EmailFailed) => Some(NoteKind::Email),
    // In the offboarding's result, or a note of its own when the merge
    // request is merged or closed.
    SupportTeam(SupportTeam) => None,
    GrantRecord(GrantRecord) => Some(NoteKind::Grant),
    Stopped(Stopped) => Some(NoteKind::Stopped),
}

/// The subject of the People team's e-mail, also quoted on the issue.
pub const CITIZENSHIP_SUBJECT: &str = "US Citizenship Verification Request";

/// Approvals that do not count yet, and those already given.
#[derive(Debug, Serialize)]
pub struct Waiting {
    /// The kind of request, for people (`light agent request`, …).
    pub kind: String,
    pub missing: Vec<MissingView>,
    pub granted: Vec<GrantedView>,
}

#[derive(Debug, Serialize)]
pub struct Refused {
    pub reasons: Vec<String>,
    /// The issue is closed with it.
    pub close: bool,
}

/// The People team could not verify citizenship: the issue is closed.
#[derive(Debug, Serialize)]
pub struct CitizenshipDenied {
    pub reasons: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Invalid {
    pub errors: Vec<String>,
    /// Errors not shown.
    pub more: usize,
}

/// The result of carrying out a plan (`result.md`).
#[derive(Debug, Serialize)]
pub struct ResultNote {
    pub complete: bool,
    pub systems: Vec<SystemView>,
    pub ticked: Vec<String>,
    /// A light-agent request: what it came to.
    pub light_agent: Option<LightAgent>,
    pub expires: Option<String>,
}

/// What a light-agent request came to; `result.md` words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LightAgent {
    /// An account was created or made a light agent.
    Created,
    /// A full agent keeps what they have.
    FullAgent,
    Already,
    Provisioned,
}

#[derive(Debug, Serialize)]
pub struct Failed {
    pub step: String,
    pub subject: String,
    pub system: String,
    pub error: String,
    /// The steps done before the error.
    pub done: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CitizenshipRequest {
    pub name: String,
    pub issue_url: String,
    /// The People team's mentions, when an approval rule has a denial label.
    pub verifiers: Option<String>,
    pub verified_label: Option<String>,
    pub denied_label: Option<String>,
}

/// The e-mail to the People team.
#[derive(Debug, Serialize)]
pub struct CitizenshipEmail {
    pub name: String,
    pub issue_url: String,
}

#[derive(Debug, Serialize)]
pub struct NeedsAccountFirst {
    pub people: Vec<WithoutAccount>,
}

#[derive(Debug, Serialize)]
pub struct WithoutAccount {
    pub name: String,
    pub email: String,
    pub system: String,
}

#[derive(Debug, Serialize)]
pub struct StaleReminder {
    pub days: i64,
    pub missing: Vec<Reminded>,
    pub close_in_days: u64,
}

#[derive(Debug, Serialize)]
pub struct Reminded {
    pub label: String,
    /// `@user …`: meant to reach them.
    pub mention: String,
}

#[derive(Debug, Serialize)]
pub struct StaleClosed {
    pub days: i64,
}

#[derive(Debug, Serialize)]
pub struct ExpiryReminder {
    pub expires: String,
    pub revocations: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Expired {
    pub expires: String,
    pub revocations: Vec<Revocation>,
}

#[derive(Debug, Serialize)]
pub struct Revocation {
    pub done: bool,
    /// Left as it is (another request gives it); `why` says so.
    pub kept: bool,
    pub why: String,
    pub text: String,
}

/// The description of a seat review issue. Lines are borrowed: thousands of
/// seats are not copied first.
#[derive(Debug, Serialize)]
pub struct SeatReview<'a> {
    pub instance: &'a str,
    pub instance_key: &'a str,
    pub period: &'a str,
    pub idle_days: u32,
    pub reclaim_to: String,
    pub reviewers: &'a str,
    pub candidates: Vec<ReviewLine<'a>>,
    pub open_count: usize,
    pub open_total: String,
    pub price: String,
    pub checked_at: String,
}

#[derive(Debug, Serialize)]
pub struct ReviewLine<'a> {
    /// `x`, `~` or a space: the box as it is.
    pub mark: &'static str,
    pub text: &'a str,
}

/// One idle seat's line in the review.
#[derive(Debug, Serialize)]
pub struct SeatReviewItem<'a> {
    pub c: &'a SeatCandidate,
    pub cost: String,
}

/// What became of one ticked line of a seat review.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", content = "r", rename_all = "snake_case")]
pub enum SeatReclaimed {
    Reclaimed {
        email: String,
        was: String,
        now: String,
        by: String,
    },
    Already {
        email: String,
        now: String,
    },
    Kept {
        email: String,
        why: String,
    },
    Refused {
        email: String,
        why: String,
    },
    /// A ticked line the bot did not write.
    Unknown {
        text: String,
    },
    Failed {
        email: String,
        error: String,
    },
}

#[derive(Debug, Serialize)]
pub struct SeatListed {
    pub lines: Vec<String>,
    /// The lines' record, a fenced JSON block.
    pub record: String,
}

/// A notice to ops (Slack, e-mail).
#[derive(Debug, Serialize)]
pub struct OpsNotice {
    pub title: &'static str,
    pub detail: String,
    pub url: Option<String>,
    /// Notices held back since the last one.
    pub suppressed: u64,
}

#[derive(Debug, Serialize)]
pub struct EmailSending {
    pub to: String,
    pub subject: &'static str,
}

#[derive(Debug, Serialize)]
pub struct EmailSent {
    pub to: String,
    pub subject: &'static str,
    /// The server took it but its final answer was lost: why.
    pub answer_lost: Option<String>,
    /// The People team answered on the issue: not sent.
    pub answered: bool,
    /// The bot cannot tell whether it went.
    pub uncertain: bool,
    /// `@user` of those who may answer on the issue instead.
    pub verifiers: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct EmailFailed {
    pub to: String,
    pub error: String,
}

/// The merge request deleting an offboarded person's Support Team file.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SupportTeam {
    Opened {
        path: String,
        repo: String,
        url: Option<String>,
    },
    /// No such file: nothing to delete.
    #[serde(rename = "none")]
    NoFile {
        path: String,
        repo: String,
    },
    Merged {
        path: String,
        url: Option<String>,
    },
    Closed {
        path: String,
        repo: String,
        url: Option<String>,
    },
    Failed {
        path: String,
        repo: String,
        error: String,
    },
}

/// The description of that merge request.
#[derive(Debug, Serialize)]
pub struct SupportTeamMr {
    pub path: String,
    pub username: String,
    pub issue_url: String,
}

/// The daily digest to ops.
#[derive(Debug, Serialize)]
pub struct Digest {
    pub date: String,
    pub changes: usize,
    pub counts: Vec<DigestCount>,
    /// `project#iid`
    pub issues: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DigestCount {
    pub action: String,
    pub outcome: String,
    pub n: usize,
}

/// What a time-bound grant will take back, recorded before the first write.
#[derive(Debug, Serialize)]
pub struct GrantRecord {
    pub expires: String,
    pub lines: Vec<String>,
    /// The record the bot reads back, a fenced JSON block.
    pub record: String,
}

#[derive(Debug, Serialize)]
pub struct Stopped {
    pub error: String,
}

/// The status view for a terminal.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct StatusText<'a>(pub &'a StatusReport);

/// The status page (every value HTML-escaped by the engine: `.html`).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct StatusPage<'a>(pub &'a StatusReport);

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    use super::*;
    use crate::bot::status::{
        Awaited, Expiring, Failure, LastAction, NextPoll, Row, SeatInstance, SeatPerson, Seats,
        StateGroup,
    };
    use crate::report::{ApprovalView, EvidenceRow, NeedsView, StepView, SubjectView};

    /// One context rendered: its template, its data, and the text.
    struct Sample {
        template: &'static str,
        data: Value,
        text: Result<String, RenderError>,
    }

    fn sample<T: Text>(t: &Templates, ctx: T) -> Sample {
        Sample {
            template: T::TEMPLATE,
            data: serde_json::to_value(&ctx).unwrap(),
            text: t.text(&ctx),
        }
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    fn system() -> SystemView {
        SystemView {
            title: s("Zendesk Global: Ann (`ann@x`)"),
            steps: vec![StepView {
                text: s("create the account"),
                done: true,
                already: false,
                item: s("Zendesk Global"),
            }],
            blocked: vec![s("`bob@x` is protected")],
            notes: vec![s("already a light agent")],
            evidence: vec![EvidenceRow {
                field: s("role"),
                before: s("end-user"),
                after: s("agent"),
            }],
        }
    }

    fn plan(full: bool) -> PlanView {
        let some = |x: &str| full.then(|| s(x));
        let list = |x: &str| if full { vec![s(x)] } else { Vec::new() };
        PlanView {
            kind: s("light agent request"),
            subjects: vec![SubjectView {
                name: s("Ann"),
                email: s("ann@x"),
                username: some("@ann"),
                manager: some("@mlee"),
            }],
            systems: if full { vec![system()] } else { Vec::new() },
            approvals: vec![ApprovalView {
                label: s("Manager Approved"),
                who: s("`@mlee`"),
                detail: s("not applied yet"),
            }],
            needs: vec![NeedsView {
                item: s("Zendesk Global"),
                change: s("a light agent"),
                needs: list("`Manager Approved` (rule)"),
                waived: list("`Owner`: self-service"),
            }],
            not_self_service_because: some("the requester is not the subject"),
            trust_note: some("the author edited it"),
            unmanaged: list("Slack"),
            unmanaged_more: 2,
            skipped: list("Okta"),
            skipped_more: 1,
            expires: some("2026-12-31"),
            voided: true,
            voided_why: some("The request changed."),
        }
    }

    fn status() -> StatusReport {
        let row = Row {
            project: s("support/access"),
            iid: 4,
            url: s("https://gitlab.example/issues/4"),
            title: s("Access for Ann"),
            state: s("waiting"),
            kind: s("light agent request"),
            people: vec![s("Ann <ann@x>")],
            waiting_for: vec![Awaited {
                label: s("Manager Approved"),
                from: vec![s("@mlee")],
                who: s("the manager"),
                detail: Some(s("applied by someone else")),
                since: Default::default(),
                for_how_long: s("3 days"),
            }],
            situation: Some(s("verification")),
            notes: vec![s("a note")],
            last_action: Some(LastAction {
                what: s("plan"),
                at: Default::default(),
                when: s("2026-11-20 10:00 UTC"),
                ago: s("3 days ago"),
            }),
            failure: Some(Failure {
                reason: Some(s("HTTP 500")),
                next_retry: NextPoll {
                    every: None,
                    at: Some(s("12:00")),
                    r#in: Some(s("5 minutes")),
                },
            }),
            progress_at: Default::default(),
            idle_for: s("3 days"),
            stuck: true,
        };
        StatusReport {
            generated_at: Default::default(),
            generated: s("2026-11-23 10:00 UTC"),
            projects: vec![s("support/access")],
            stuck_after: s("2d"),
            groups: vec![StateGroup {
                state: s("waiting"),
                label: s("AR::Waiting"),
                rows: vec![row],
            }],
            total: 1,
            stuck: 1,
            expiring_within_days: 14,
            expiring: vec![Expiring {
                project: s("support/access"),
                iid: 5,
                url: s("https://gitlab.example/issues/5"),
                title: s("Temporary access"),
                person: s("Bo"),
                instance: s("Zendesk Global"),
                expires: Default::default(),
                in_days: -2,
            }],
            seats: Seats {
                configured: true,
                unreadable: false,
                instances: vec![SeatInstance {
                    instance: s("Zendesk Global"),
                    period: s("2026-11"),
                    url: s("https://gitlab.example/issues/9"),
                    iid: 9,
                    people: vec![SeatPerson {
                        name: s("Cy"),
                        email: s("cy@x"),
                        cost: s("1,380 USD"),
                    }],
                    yearly_cost: 1380.0,
                    cost: s("1,380 USD"),
                }],
            },
            errors: vec![s("support/other: forbidden")],
        }
    }

    /// A context for every template, with each list filled and each branch
    /// that reads a variable taken at least once.
    fn samples(t: &Templates) -> Vec<Sample> {
        let candidate = SeatCandidate {
            zendesk_id: 1,
            name: s("Ann | Idle"),
            email: s("ann@x"),
            role: s("agent"),
            last_login: s("2026-07-26"),
            days_idle: Some(120),
            suspended: true,
            yearly_cost: 1380.0,
        };
        let status = status();
        let mut out = vec![
            sample(t, plan(true)),
            sample(t, plan(false)),
            sample(
                t,
                Waiting {
                    kind: s("light agent request"),
                    missing: vec![MissingView {
                        label: s("Manager Approved"),
                        who: s("`@mlee`"),
                        detail: s("applied before the plan"),
                    }],
                    granted: vec![GrantedView {
                        label: s("Owner Approved"),
                        by: s("lyle"),
                        at: s("2026-11-20 10:00 UTC"),
                    }],
                },
            ),
            sample(
                t,
                Refused {
                    reasons: vec![s("protected")],
                    close: true,
                },
            ),
            sample(
                t,
                CitizenshipDenied {
                    reasons: vec![s("denied")],
                },
            ),
            sample(
                t,
                Invalid {
                    errors: vec![s("no subject")],
                    more: 2,
                },
            ),
            sample(
                t,
                ResultNote {
                    complete: true,
                    systems: vec![system()],
                    ticked: vec![s("Zendesk Global")],
                    light_agent: Some(LightAgent::Created),
                    expires: Some(s("2026-12-31")),
                },
            ),
            sample(
                t,
                Failed {
                    step: s("create the account"),
                    subject: s("ann@x"),
                    system: s("Zendesk Global"),
                    error: s("HTTP 500"),
                    done: vec![s("add to the group")],
                },
            ),
            sample(
                t,
                CitizenshipRequest {
                    name: s("Bo Li"),
                    issue_url: s("https://gitlab.example/issues/4"),
                    verifiers: Some(s("`@people`")),
                    verified_label: Some(s("Verified")),
                    denied_label: Some(s("Denied")),
                },
            ),
            sample(
                t,
                CitizenshipEmail {
                    name: s("Bo Li"),
                    issue_url: s("https://gitlab.example/issues/4"),
                },
            ),
            sample(
                t,
                NeedsAccountFirst {
                    people: vec![WithoutAccount {
                        name: s("Ann"),
                        email: s("ann@x"),
                        system: s("Zendesk Global"),
                    }],
                },
            ),
            sample(
                t,
                StaleReminder {
                    days: 20,
                    missing: vec![Reminded {
                        label: s("Manager Approved"),
                        mention: s("@mlee"),
                    }],
                    close_in_days: 10,
                },
            ),
            sample(t, StaleClosed { days: 30 }),
            sample(
                t,
                ExpiryReminder {
                    expires: s("2026-12-31"),
                    revocations: vec![s("remove the tag")],
                },
            ),
            sample(
                t,
                Expired {
                    expires: s("2026-12-31"),
                    revocations: vec![
                        Revocation {
                            done: true,
                            kept: false,
                            why: String::new(),
                            text: s("remove the tag"),
                        },
                        Revocation {
                            done: false,
                            kept: true,
                            why: s("another request gives it"),
                            text: s("the group"),
                        },
                    ],
                },
            ),
            sample(
                t,
                SeatReview {
                    instance: "Zendesk Global",
                    instance_key: "global",
                    period: "2026-11",
                    idle_days: 60,
                    reclaim_to: s("light agent"),
                    reviewers: "`@lyle`",
                    candidates: vec![ReviewLine {
                        mark: "x",
                        text: "Ann (ann@x)",
                    }],
                    open_count: 1,
                    open_total: s("1,380 USD"),
                    price: s("115 USD"),
                    checked_at: s("2026-11-23 06:00 UTC"),
                },
            ),
            sample(
                t,
                SeatReviewItem {
                    c: &candidate,
                    cost: s("1,380 USD"),
                },
            ),
            sample(
                t,
                SeatListed {
                    lines: vec![s("Ann (ann@x)")],
                    record: s("```json\n[]\n```"),
                },
            ),
            sample(
                t,
                OpsNotice {
                    title: "step failed",
                    detail: s("#4: failed"),
                    url: Some(s("https://gitlab.example/issues/4")),
                    suppressed: 3,
                },
            ),
            sample(
                t,
                EmailSending {
                    to: s("people@x"),
                    subject: CITIZENSHIP_SUBJECT,
                },
            ),
            sample(
                t,
                EmailFailed {
                    to: s("people@x"),
                    error: s("550"),
                },
            ),
            sample(
                t,
                SupportTeamMr {
                    path: s("data/agents/ann.yaml"),
                    username: s("ann"),
                    issue_url: s("https://gitlab.example/issues/7"),
                },
            ),
            sample(
                t,
                Digest {
                    date: s("2026-11-23"),
                    changes: 1,
                    counts: vec![DigestCount {
                        action: s("global create_agent"),
                        outcome: s("ok"),
                        n: 1,
                    }],
                    issues: vec![s("support/access#1")],
                },
            ),
            sample(
                t,
                GrantRecord {
                    expires: s("2026-12-31"),
                    lines: vec![s("remove the tag")],
                    record: s("```json\n{}\n```"),
                },
            ),
            sample(
                t,
                Stopped {
                    error: s("HTTP 400"),
                },
            ),
            sample(t, StatusText(&status)),
            sample(t, StatusPage(&status)),
        ];
        for (lost, answered, uncertain) in [
            (Some(s("reset")), false, false),
            (None, true, false),
            (None, false, true),
        ] {
            out.push(sample(
                t,
                EmailSent {
                    to: s("people@x"),
                    subject: CITIZENSHIP_SUBJECT,
                    answer_lost: lost,
                    answered,
                    uncertain,
                    verifiers: vec![s("@people")],
                },
            ));
        }
        let email = || s("ann@x");
        for r in [
            SeatReclaimed::Reclaimed {
                email: email(),
                was: s("agent"),
                now: s("light agent"),
                by: s("lyle"),
            },
            SeatReclaimed::Already {
                email: email(),
                now: s("end-user"),
            },
            SeatReclaimed::Kept {
                email: email(),
                why: s("open tickets"),
            },
            SeatReclaimed::Refused {
                email: email(),
                why: s("not a reviewer"),
            },
            SeatReclaimed::Unknown { text: s("Cat") },
            SeatReclaimed::Failed {
                email: email(),
                error: s("HTTP 500"),
            },
        ] {
            out.push(sample(t, r));
        }
        let (path, repo, url) = (|| s("data/a.yaml"), || s("team"), || Some(s("https://mr")));
        for c in [
            SupportTeam::Opened {
                path: path(),
                repo: repo(),
                url: url(),
            },
            SupportTeam::NoFile {
                path: path(),
                repo: repo(),
            },
            SupportTeam::Merged {
                path: path(),
                url: url(),
            },
            SupportTeam::Closed {
                path: path(),
                repo: repo(),
                url: url(),
            },
            SupportTeam::Failed {
                path: path(),
                repo: repo(),
                error: s("403"),
            },
        ] {
            out.push(sample(t, c));
        }
        out
    }

    #[test]
    fn every_template_has_exactly_one_typed_context() {
        let files: BTreeSet<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/templates"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
        let embedded: BTreeSet<String> = crate::render::TEMPLATES
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(files, embedded, "every file in templates/ is compiled in");
        let mut typed = BTreeMap::new();
        for name in TEXTS.iter().chain(LIBRARIES) {
            *typed.entry(name.to_string()).or_insert(0) += 1;
        }
        let twice: Vec<_> = typed.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "one context per template: {twice:?}");
        assert_eq!(
            typed.keys().cloned().collect::<BTreeSet<_>>(),
            files,
            "a context for every template, and a template for every context"
        );
    }

    #[test]
    fn every_context_renders_with_strict_undefined() {
        let t = Templates::load(None).unwrap().strict();
        let samples = samples(&t);
        for name in TEXTS {
            assert!(
                samples.iter().any(|s| s.template == *name),
                "no sample of {name}"
            );
        }
        for s in &samples {
            if let Err(e) = &s.text {
                panic!("{}: {e:#}\n{}", s.template, s.data);
            }
        }
    }

    /// Statically, every branch: a variable a template reads (or an
    /// attribute of one) is in its context, and every field of the context
    /// is read by the template.
    #[test]
    fn templates_use_exactly_their_contexts_fields() {
        let t = Templates::load(None).unwrap();
        let samples = samples(&t);
        // The status report is also the `status --json` output.
        let unread: &[(&str, &str)] = &[
            ("status.txt", "generated_at"),
            ("status.html", "generated_at"),
        ];
        let mut problems = Vec::new();
        for name in TEXTS {
            let data: Vec<&Value> = samples
                .iter()
                .filter(|s| s.template == *name)
                .map(|s| &s.data)
                .collect();
            let has = |path: &str| {
                data.iter().any(|d| {
                    let mut v = *d;
                    for part in path.split('.') {
                        match v {
                            // Read only when set: the template tests it first.
                            Value::Null => return true,
                            Value::Object(m) => match m.get(part) {
                                Some(x) => v = x,
                                None => return false,
                            },
                            _ => return false,
                        }
                    }
                    true
                })
            };
            let used = t.variables(name);
            for v in &used {
                if !has(v) {
                    problems.push(format!("{name} reads {v}, which its context lacks"));
                }
            }
            let fields: BTreeSet<&String> = data
                .iter()
                .filter_map(|d| d.as_object())
                .flat_map(|m| m.keys())
                .collect();
            for f in fields {
                let read = used
                    .iter()
                    .any(|u| u == f || u.starts_with(&format!("{f}.")));
                if !read && !unread.contains(&(*name, f.as_str())) {
                    problems.push(format!("{name} never reads its context's {f}"));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn a_light_agent_result_in_words() {
        let t = Templates::load(None).unwrap().strict();
        for (outcome, words) in [
            (
                LightAgent::Created,
                "**Account created and upgraded to light agent**",
            ),
            (
                LightAgent::FullAgent,
                "**Looks like you are already a full agent.**",
            ),
            (
                LightAgent::Already,
                "**You already have a light agent account; nothing needed to change.**",
            ),
            (LightAgent::Provisioned, "**Light agent provisioned**"),
        ] {
            let text = t
                .text(&ResultNote {
                    complete: true,
                    systems: Vec::new(),
                    ticked: Vec::new(),
                    light_agent: Some(outcome),
                    expires: None,
                })
                .unwrap();
            assert!(text.contains(words), "{outcome:?}: {text}");
        }
    }

    #[test]
    fn a_mistyped_field_is_caught() {
        // What the tests above would say of a context that lacks a field.
        let dir = std::env::temp_dir().join(format!("ab-typed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("stale_closed.md"),
            "{% if dayz %}{{ days }}{% endif %}",
        )
        .unwrap();
        let t = Templates::load(Some(&dir)).unwrap();
        assert!(t.variables("stale_closed.md").contains("dayz"));
        assert!(t.strict().text(&StaleClosed { days: 3 }).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The bot's code names no template and passes no untyped data: every
    /// render goes through `Templates::text`.
    #[test]
    fn no_untyped_render_in_the_bot() {
        let untyped = regex::Regex::new(r#"\.render\(\s*("|[^()]*,)"#).unwrap();
        let mut found = Vec::new();
        let mut stack = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let rel = p.to_string_lossy().replace('\\', "/");
            // The untyped door itself, and the typed one that calls it.
            if !rel.ends_with(".rs")
                || rel.ends_with("/src/render.rs")
                || rel.ends_with("/src/comment.rs")
            {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            if untyped.is_match(code) {
                found.push(rel);
            }
        }
        assert!(found.is_empty(), "untyped renders in {found:?}");
    }
}
