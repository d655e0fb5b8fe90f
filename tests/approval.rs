//! Approval rules, one scenario each (pure: label events, notes and the bot's
//! own records as data). The invariant they spell out: a change happens only
//! if a plan comment the bot posted lists it, and every approval it needs was
//! applied after that comment, by someone allowed, with no change to the
//! request since; a completed plan is consumed.

mod common;

use access_bot::approval::{
    self, Context, Decision, Directory, History, Identity, Missing, Record, Stage,
};
use access_bot::marker::Marker;
use access_bot::policy::Requester;
use access_bot::request::{Email, Request, parse_request};
use common::*;

const MANAGER_LABEL: &str = "AR-Approval::Manager Approved";
const OWNER_LABEL: &str = "Zendesk::System Owner Approved";
const VERIFIED: &str = "US-Citizenship::Verified";
const DENIED: &str = "US-Citizenship::Not Verified";

const PEOPLE: &[(&str, u64, Option<&str>)] = &[
    ("access-bot", BOT, None),
    ("jdoe", 10, Some("jane.doe@gitlab.com")),
    ("mlee", 11, Some("mlee@gitlab.com")),
    ("lyle", 12, Some("lyle@gitlab.com")),
    ("jason", 13, Some("jason@gitlab.com")),
    ("mallory", 14, Some("mallory@gitlab.com")),
    ("people-connect-1", 15, Some("people-connect-1@gitlab.com")),
    (
        "gitlab-employment-bot",
        16,
        Some("employment-bot@gitlab.com"),
    ),
    ("srivera", 17, Some("sam.rivera@gitlab.com")),
    ("kpatel", 18, Some("kpatel@gitlab.com")),
    ("achen", 19, Some("alex.chen@gitlab.com")),
    ("nomail", 20, None),
];

fn dir() -> Directory {
    let mut d = Directory::new();
    for (n, id, e) in PEOPLE {
        d.add(Identity {
            id: *id,
            username: n.to_string(),
            email: e.and_then(|e| Email::parse(e).ok()),
            name: None,
        });
    }
    d.add_absent("ghost");
    d
}

fn uid(name: &str) -> u64 {
    PEOPLE.iter().find(|p| p.0 == name).map(|p| p.1).unwrap()
}

fn u(name: &str) -> access_bot::request::UserRef {
    user(uid(name), name)
}

/// One issue: its facts and the bot's records on it.
struct Case {
    f: Facts,
    history: History,
    dir: Directory,
    next_note: u64,
}

const TABLE: &str = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n";

impl Case {
    fn new(title: &str, labels: &[&str], author: &str, body: &str) -> Case {
        Case {
            f: Facts::new(issue(title, labels, u(author), body)),
            history: History::default(),
            dir: dir(),
            next_note: 9000,
        }
    }

    fn request(&self) -> Request {
        parse_request(&self.f.facts.issue, &config()).unwrap()
    }

    /// The bot posts a plan for the request as it is now.
    fn plan(&mut self, minute: i64) -> &mut Self {
        let d = self.request().digest();
        self.record(Marker::new("plan", vec![format!("plan:{d}")], &d), minute)
    }

    fn record(&mut self, m: Marker, minute: i64) -> &mut Self {
        self.next_note += 1;
        self.history.push(Record {
            note_id: self.next_note,
            at: at(minute),
            marker: m,
            content: String::new(),
        });
        self
    }

    /// The bot reports the plan carried out (or not), ticking these bot items.
    fn result(&mut self, minute: i64, done: bool, ticks: &[usize]) -> &mut Self {
        let req = self.request();
        let plan = self.history.latest_plan().unwrap().marker.digest.clone();
        let set = ticks.iter().copied().collect();
        let m = Marker::new("result", vec![], &req.digest())
            .with("plan", &plan)
            .with("done", if done { "1" } else { "0" })
            .with("after", &req.digest_after_ticks(&set))
            .with(
                "ticks",
                &ticks
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join("."),
            );
        self.record(m, minute)
    }

    fn label(&mut self, by: &str, label: &str, minute: i64) -> &mut Self {
        self.f.label(u(by), label, minute);
        self
    }

    fn note(&mut self, by: &str, body: &str, minute: i64) -> &mut Self {
        self.f.note(u(by), body, true, minute);
        self
    }

    fn set_body(&mut self, body: &str) -> &mut Self {
        self.f.facts.issue.description = body.into();
        self
    }

    fn decide_as(&self, requester_email: Option<&str>) -> Decision {
        self.decide_with(&config(), requester_email)
    }

    fn decide_with(
        &self,
        cfg: &access_bot::config::Config,
        requester_email: Option<&str>,
    ) -> Decision {
        let requester = Requester {
            username: self.f.facts.issue.author.username.clone(),
            email: requester_email.and_then(|e| Email::parse(e).ok()),
        };
        let cx = Context {
            facts: &self.f.facts,
            cfg,
            dir: &self.dir,
            bot_id: BOT,
            history: &self.history,
            requester: &requester,
        };
        approval::decide(parse_request(&self.f.facts.issue, cfg).unwrap(), &cx)
    }

    fn decide(&self) -> Decision {
        let email = self
            .dir
            .by_id(self.f.facts.issue.author.id)
            .and_then(|i| i.email.clone());
        self.decide_as(email.as_ref().map(|e| e.as_str()))
    }
}

fn missing(d: &Decision) -> Vec<Missing> {
    match d {
        Decision::Waiting { missing, .. } => missing.iter().map(|m| m.missing.clone()).collect(),
        other => panic!("expected waiting, got {other:?}"),
    }
}

fn approved(d: &Decision) -> Vec<String> {
    match d {
        Decision::Approved(a) => a.granted().iter().map(|g| g.by.username.clone()).collect(),
        other => panic!("expected approved, got {other:?}"),
    }
}

fn refused(d: &Decision) -> String {
    match d {
        Decision::Refused { reasons, .. } => reasons.join("\n"),
        other => panic!("expected refused, got {other:?}"),
    }
}

fn tag_case() -> Case {
    Case::new(
        "Jane Doe, Zendesk Global tag partner support",
        &[],
        "jdoe",
        &format!(
            "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n- Justification for this access: partner work\n- [ ] Slack: #partners\n"
        ),
    )
}

fn special_case() -> Case {
    Case::new(
        "Robin Kim, Zendesk Global, Support Engineer",
        &[],
        "jdoe",
        &format!(
            "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n"
        ),
    )
}

// ------------------------------------------------------------ the plan first

#[test]
fn manager_approval_after_the_plan_is_approved() {
    let mut c = tag_case();
    c.plan(1).label("mlee", MANAGER_LABEL, 5);
    assert_eq!(approved(&c.decide()), vec!["mlee"]);
}

#[test]
fn no_label_is_waiting() {
    let mut c = tag_case();
    c.plan(1);
    assert_eq!(missing(&c.decide()), vec![Missing::NotApplied]);
}

#[test]
fn an_approval_before_the_plan_does_not_count() {
    for (label_at, plan_at) in [(1, 5), (5, 5)] {
        let mut c = tag_case();
        c.label("mlee", MANAGER_LABEL, label_at).plan(plan_at);
        assert_eq!(
            missing(&c.decide()),
            vec![Missing::BeforePlan { by: "mlee".into() }],
            "label at {label_at}, plan at {plan_at}"
        );
    }
}

#[test]
fn without_any_plan_nothing_is_approved() {
    let mut c = tag_case();
    c.label("mlee", MANAGER_LABEL, 5);
    let d = c.decide();
    assert!(matches!(
        &d,
        Decision::Waiting {
            stage: Stage::NoPlan,
            ..
        }
    ));
    assert_eq!(missing(&d), vec![Missing::BeforePlan { by: "mlee".into() }]);
}

#[test]
fn an_approval_of_an_older_plan_does_not_hold() {
    let mut c = tag_case();
    c.plan(1).label("mlee", MANAGER_LABEL, 5);
    // The request changes: the plan no longer describes it.
    let body =
        c.f.facts
            .issue
            .description
            .replace("partner_support_agent", "order_management_team");
    c.set_body(&body);
    let d = c.decide();
    assert!(matches!(
        &d,
        Decision::Waiting {
            stage: Stage::Stale { .. },
            ..
        }
    ));
    assert_eq!(missing(&d), vec![Missing::BeforePlan { by: "mlee".into() }]);
    // A new plan, then a new approval after it: approved.
    c.plan(7);
    assert_eq!(
        missing(&c.decide()),
        vec![Missing::BeforePlan { by: "mlee".into() }]
    );
    c.f.unlabel(u("mlee"), MANAGER_LABEL, 8);
    c.label("mlee", MANAGER_LABEL, 9);
    assert_eq!(approved(&c.decide()), vec!["mlee"]);
}

// ------------------------------------------------------------ who approves

#[test]
fn self_approval_does_not_count() {
    let mut c = tag_case();
    c.plan(1).label("jdoe", MANAGER_LABEL, 5);
    let m = missing(&c.decide());
    assert!(matches!(&m[0], Missing::SelfApproval { by } if by == "jdoe"));
    assert!(m[0].is_security());
}

#[test]
fn the_manager_named_as_the_subject_by_email_is_a_self_approval() {
    // No username in the row: the row is the manager by e-mail.
    let mut c = Case::new(
        "Promotion",
        &[],
        "jdoe",
        &format!(
            "{TABLE}| M Lee | mlee@gitlab.com | - | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Manager\n"
        ),
    );
    c.plan(1)
        .label("mlee", MANAGER_LABEL, 5)
        .label("lyle", OWNER_LABEL, 5);
    let m = missing(&c.decide());
    assert!(
        m.contains(&Missing::SelfApproval { by: "mlee".into() }),
        "{m:?}"
    );
}

#[test]
fn a_row_whose_username_and_email_disagree_is_refused() {
    // Someone else's username, the approver's e-mail.
    let mut c = Case::new(
        "Promotion",
        &[],
        "jdoe",
        &format!(
            "{TABLE}| Jane Doe | lyle@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Manager\n"
        ),
    );
    c.plan(1)
        .label("mlee", MANAGER_LABEL, 5)
        .label("lyle", OWNER_LABEL, 5);
    assert!(refused(&c.decide()).contains("one person"));
}

#[test]
fn an_approver_the_bot_cannot_tell_apart_from_the_subject_does_not_count() {
    // The approver has no known e-mail and the row has no username: it could be them.
    let mut c = Case::new(
        "x",
        &[],
        "jdoe",
        &format!(
            "{TABLE}| Some One | some.one@gitlab.com | - | @nomail |\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n"
        ),
    );
    c.plan(1).label("nomail", MANAGER_LABEL, 5);
    assert_eq!(
        missing(&c.decide()),
        vec![Missing::IdentityUnknown {
            by: "nomail".into()
        }]
    );
    // With a username in the row, GitLab's ids tell them apart.
    let mut c = Case::new(
        "x",
        &[],
        "jdoe",
        &format!(
            "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @nomail |\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n"
        ),
    );
    c.plan(1).label("nomail", MANAGER_LABEL, 5);
    assert_eq!(approved(&c.decide()), vec!["nomail"]);
}

#[test]
fn approval_by_someone_else_does_not_count() {
    let mut c = tag_case();
    c.plan(1).label("mallory", MANAGER_LABEL, 5);
    assert!(matches!(&missing(&c.decide())[0], Missing::Unauthorized { by } if by == "mallory"));
}

#[test]
fn a_username_lookalike_with_another_id_does_not_count() {
    let mut c = tag_case();
    c.plan(1);
    c.f.label(user(999, "mlee"), MANAGER_LABEL, 5);
    assert!(matches!(
        &missing(&c.decide())[0],
        Missing::Unauthorized { .. }
    ));
}

#[test]
fn removed_approval_does_not_count() {
    let mut c = tag_case();
    c.plan(1).label("mlee", MANAGER_LABEL, 5);
    c.f.unlabel(u("mlee"), MANAGER_LABEL, 6);
    assert!(matches!(&missing(&c.decide())[0], Missing::Removed { .. }));
}

#[test]
fn label_present_without_event_does_not_count() {
    let mut c = tag_case();
    c.plan(1);
    c.f.facts.issue.labels.push(MANAGER_LABEL.into());
    assert_eq!(missing(&c.decide()), vec![Missing::NoEventRecord]);
}

#[test]
fn latest_add_decides_regardless_of_event_order() {
    let mut c = tag_case();
    c.plan(1)
        .label("mallory", MANAGER_LABEL, 9)
        .label("mlee", MANAGER_LABEL, 5);
    // Events arrive out of order; the later one (mallory) decides.
    assert!(matches!(
        &missing(&c.decide())[0],
        Missing::Unauthorized { .. }
    ));
}

#[test]
fn special_request_needs_both_approvals() {
    let mut c = special_case();
    c.plan(1).label("mlee", MANAGER_LABEL, 5);
    assert_eq!(missing(&c.decide()), vec![Missing::NotApplied]);
    c.label("lyle", OWNER_LABEL, 6);
    assert_eq!(approved(&c.decide()), vec!["mlee", "lyle"]);
}

#[test]
fn bulk_request_with_different_managers_cannot_be_approved_by_one_of_them() {
    let mut c = Case::new(
        "Bulk",
        &[],
        "jdoe",
        &format!(
            "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n| Sam Rivera | sam.rivera@gitlab.com | @srivera | @kpatel |\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n"
        ),
    );
    c.plan(1).label("mlee", MANAGER_LABEL, 5);
    assert!(matches!(
        &missing(&c.decide())[0],
        Missing::Unauthorized { .. }
    ));
}

// ------------------------------------------------------------ changes after approval

#[test]
fn text_edit_after_approval_voids_it() {
    let mut c = tag_case();
    c.plan(1)
        .label("mlee", MANAGER_LABEL, 5)
        .note("jdoe", "changed the description", 6);
    assert_eq!(
        missing(&c.decide()),
        vec![Missing::EditedAfter { by: "jdoe".into() }]
    );
}

#[test]
fn a_title_change_after_approval_voids_it() {
    let mut c = tag_case();
    c.plan(1).label("mlee", MANAGER_LABEL, 5).note(
        "mallory",
        "changed title from **a** to **b**",
        6,
    );
    assert_eq!(
        missing(&c.decide()),
        vec![Missing::EditedAfter {
            by: "mallory".into()
        }]
    );
}

#[test]
fn an_edit_at_the_same_instant_as_the_approval_counts_as_after() {
    let mut c = tag_case();
    c.plan(1)
        .label("mlee", MANAGER_LABEL, 5)
        .note("jdoe", "changed the description", 5);
    assert!(matches!(
        &missing(&c.decide())[0],
        Missing::EditedAfter { .. }
    ));
}

#[test]
fn an_edit_between_plan_and_approval_is_fine() {
    let mut c = tag_case();
    c.plan(1)
        .note("jdoe", "changed the description", 3)
        .label("mlee", MANAGER_LABEL, 5);
    assert_eq!(approved(&c.decide()), vec!["mlee"]);
}

#[test]
fn bot_ticks_after_approval_do_not_void() {
    let mut c = tag_case();
    c.plan(1).label("mlee", MANAGER_LABEL, 5);
    c.f.note(
        user(BOT, "access-bot"),
        "marked the checklist item **Zendesk Global: add tag `partner_support_agent`** as completed",
        true,
        6,
    );
    assert_eq!(approved(&c.decide()), vec!["mlee"]);
}

#[test]
fn others_ticking_their_own_systems_after_approval_are_fine() {
    let mut c = tag_case();
    c.plan(1).label("mlee", MANAGER_LABEL, 5).note(
        "mallory",
        "marked the checklist item **Slack: #partners** as completed",
        6,
    );
    let body =
        c.f.facts
            .issue
            .description
            .replace("- [ ] Slack", "- [x] Slack");
    c.set_body(&body);
    assert_eq!(approved(&c.decide()), vec!["mlee"]);
}

#[test]
fn others_ticking_a_bot_item_after_approval_void_it() {
    let mut c = tag_case();
    c.plan(1).label("mlee", MANAGER_LABEL, 5).note(
        "mallory",
        "marked the checklist item **Zendesk Global: add tag `partner_support_agent`** as completed",
        6,
    );
    assert!(matches!(
        &missing(&c.decide())[0],
        Missing::EditedAfter { .. }
    ));
}

#[test]
fn tick_state_is_part_of_the_plan() {
    // A bot item ticked before the plan is left alone by it; unticking it later
    // means a new plan (and approvals after that).
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [x] Zendesk Global: Agent - Support Manager\n- [ ] Zendesk Global: add tag `partner_support_agent`\n"
    );
    let mut c = Case::new("x", &[], "jdoe", &body);
    c.plan(1)
        .label("mlee", MANAGER_LABEL, 5)
        .label("lyle", OWNER_LABEL, 5);
    assert_eq!(approved(&c.decide()), vec!["mlee", "lyle"]);
    c.set_body(&body.replace("- [x] Zendesk", "- [ ] Zendesk"));
    let d = c.decide();
    assert!(
        matches!(
            &d,
            Decision::Waiting {
                stage: Stage::Stale { .. },
                ..
            }
        ),
        "{d:?}"
    );
}

// ------------------------------------------------------------ one execution

#[test]
fn a_completed_plan_is_consumed() {
    let mut c = tag_case();
    c.plan(1)
        .label("mlee", MANAGER_LABEL, 5)
        .result(6, true, &[0]);
    // The ticks are not on the issue yet: put them back, run nothing.
    assert!(matches!(
        c.decide(),
        Decision::Done {
            stage: Stage::Done { retick: true, .. },
            ..
        }
    ));
    let ticked =
        c.f.facts
            .issue
            .description
            .replace("- [ ] Zendesk", "- [x] Zendesk");
    c.set_body(&ticked);
    assert!(matches!(
        c.decide(),
        Decision::Done {
            stage: Stage::Done { retick: false, .. },
            ..
        }
    ));
}

#[test]
fn a_change_after_completion_needs_a_new_plan_and_new_approvals() {
    let mut c = tag_case();
    c.plan(1)
        .label("mlee", MANAGER_LABEL, 5)
        .result(6, true, &[0]);
    // Unticking is not enough to replay: a different request (tag changed) is stale,
    // and the old approval predates any new plan.
    let body =
        c.f.facts
            .issue
            .description
            .replace("partner_support_agent", "oem_management_team");
    c.set_body(&body);
    let d = c.decide();
    assert!(matches!(
        &d,
        Decision::Waiting {
            stage: Stage::Stale { .. },
            ..
        }
    ));
    assert_eq!(missing(&d), vec![Missing::BeforePlan { by: "mlee".into() }]);
    c.plan(8);
    assert_eq!(
        missing(&c.decide()),
        vec![Missing::BeforePlan { by: "mlee".into() }]
    );
}

#[test]
fn a_partly_done_plan_continues_on_its_approval() {
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n- [ ] Zendesk Global: add tag `order_management_team`\n"
    );
    let mut c = Case::new("x", &[], "jdoe", &body);
    c.plan(1)
        .label("mlee", MANAGER_LABEL, 5)
        .result(6, false, &[0]);
    c.set_body(&body.replacen("- [ ] Zendesk", "- [x] Zendesk", 1));
    c.f.note(
        user(BOT, "access-bot"),
        "marked the checklist item **Zendesk Global: add tag `partner_support_agent`** as completed",
        true,
        6,
    );
    assert_eq!(approved(&c.decide()), vec!["mlee"]);
}

// ------------------------------------------------------------ what is asked decides

#[test]
fn a_light_agent_title_asking_for_more_needs_what_more_needs() {
    let mut c = Case::new(
        "Jane Doe: Zendesk Global light agent",
        &[],
        "jdoe",
        &format!(
            "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Support Manager\n"
        ),
    );
    c.plan(1);
    assert_eq!(missing(&c.decide()).len(), 2);
}

#[test]
fn light_agent_for_oneself_needs_no_approval_once_planned() {
    let mut c = Case::new(
        "Light agent",
        &[],
        "jdoe",
        "- [ ] Zendesk Global: Light Agent\n",
    );
    c.f.facts.issue.author_email = Some("jane.doe@gitlab.com".into());
    // Nothing before the plan.
    assert!(matches!(
        c.decide(),
        Decision::Waiting {
            stage: Stage::NoPlan,
            ..
        }
    ));
    c.plan(1);
    assert_eq!(approved(&c.decide()), Vec::<String>::new());
}

#[test]
fn light_agent_whose_requester_is_unknown_waits_for_the_manager() {
    let mut c = Case::new(
        "Light agent",
        &[],
        "nomail",
        &format!(
            "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"
        ),
    );
    c.plan(1);
    let d = c.decide_as(None);
    assert_eq!(missing(&d), vec![Missing::NotApplied]);
    let Decision::Waiting { requirements, .. } = d else {
        unreachable!()
    };
    assert!(matches!(
        requirements.self_service,
        access_bot::policy::SelfService::Unverified(_)
    ));
}

#[test]
fn light_agent_for_someone_else_waits_for_the_manager() {
    let mut c = Case::new(
        "Light agent",
        &[],
        "mallory",
        &format!(
            "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"
        ),
    );
    c.plan(1);
    assert_eq!(missing(&c.decide()), vec![Missing::NotApplied]);
}

#[test]
fn protected_accounts_are_refused() {
    let cfg_body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n"
    );
    let mut c = Case::new("x", &[], "jdoe", &cfg_body);
    c.plan(1).label("mlee", MANAGER_LABEL, 5);
    let mut cfg = config();
    cfg.bot.protected = vec!["jane.doe@gitlab.com".into()];
    let requester = Requester {
        username: "jdoe".into(),
        email: None,
    };
    let d = approval::decide(
        parse_request(&c.f.facts.issue, &cfg).unwrap(),
        &Context {
            facts: &c.f.facts,
            cfg: &cfg,
            dir: &c.dir,
            bot_id: BOT,
            history: &c.history,
            requester: &requester,
        },
    );
    assert!(refused(&d).contains("protected"));
}

#[test]
fn a_username_gitlab_does_not_know_is_refused() {
    let mut c = Case::new(
        "x",
        &[],
        "jdoe",
        &format!(
            "{TABLE}| Jane Doe | jane.doe@gitlab.com | @ghost | @mlee |\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n"
        ),
    );
    c.plan(1);
    assert!(refused(&c.decide()).contains("not a GitLab user"));
}

// ------------------------------------------------------------ trusted automation

fn rbe(author: &str, extra_labels: &[&str]) -> Case {
    let mut labels = vec!["BaselineEntitlementAR"];
    labels.extend_from_slice(extra_labels);
    let mut c = Case::new(
        "Role-based entitlements: Sam Rivera",
        &labels,
        author,
        &format!(
            "{TABLE}| Sam Rivera | sam.rivera@gitlab.com | @srivera | @kpatel |\n\n#### Support to-do:\n* [ ]  `Zendesk Global`: `Agent, role Support Engineer`\n* [ ]  `Zendesk US Federal`: `Light Agent`\n* [ ]  `Slack`: `#support`\n"
        ),
    );
    // Labels set when the issue is filed are its author's label events.
    for l in labels {
        c.f.label(u(author), l, 0);
    }
    c
}

#[test]
fn entitlement_from_the_automation_waits_only_for_citizenship() {
    let mut c = rbe("gitlab-employment-bot", &[]);
    c.plan(1);
    assert_eq!(missing(&c.decide()), vec![Missing::NotApplied]);
    c.label("people-connect-1", VERIFIED, 5);
    assert_eq!(approved(&c.decide()), vec!["people-connect-1"]);
}

#[test]
fn entitlement_from_anyone_else_is_refused() {
    let mut c = rbe("mallory", &[]);
    c.plan(1);
    assert!(refused(&c.decide()).contains("only trusted when filed by the automation"));
}

#[test]
fn entitlement_edited_by_a_person_is_no_longer_pre_approved() {
    let mut c = rbe("gitlab-employment-bot", &[]);
    c.plan(1).note("mallory", "changed the description", 2);
    let (required, why) = trust_lost(&c.decide());
    assert_eq!(required, vec!["manager", "system_owner", "citizenship"]);
    assert!(why.contains("`@mallory` changed it"), "{why}");
}

/// A trusted issue someone else changed: waiting for its `if_edited` approvals.
fn trust_lost(d: &Decision) -> (Vec<String>, String) {
    match d {
        Decision::Waiting { requirements, .. } => match &requirements.trust {
            access_bot::policy::Trust::Lost(why) => (requirements.required.clone(), why.clone()),
            other => panic!("trust is {other:?}"),
        },
        other => panic!("expected waiting, got {other:?}"),
    }
}

#[test]
fn an_entitlement_whose_title_does_not_name_its_person_is_not_pre_approved() {
    let mut c = rbe("gitlab-employment-bot", &[]);
    c.f.facts.issue.title = "Role-based entitlements: Mallory Mallet".into();
    c.plan(1);
    let (_, why) = trust_lost(&c.decide());
    assert!(why.contains("title does not name"), "{why}");
}

#[test]
fn an_entitlement_level_outside_its_templates_needs_its_approvals() {
    let mut c = rbe("gitlab-employment-bot", &[]);
    let body =
        c.f.facts
            .issue
            .description
            .replace("Agent, role Support Engineer", "Agent - Support Manager");
    c.set_body(&body);
    c.plan(1);
    let d = c.decide();
    let Decision::Waiting { requirements, .. } = &d else {
        panic!("{d:?}")
    };
    assert_eq!(
        requirements.required,
        vec!["manager", "system_owner", "citizenship"]
    );
}

#[test]
fn the_kind_label_must_come_from_the_automation() {
    let mut c = rbe("gitlab-employment-bot", &[]);
    c.f.facts.issue.labels.clear();
    c.label("mallory", "BaselineEntitlementAR", 1);
    assert!(refused(&c.decide()).contains("not by the automation"));
}

#[test]
fn an_offboarding_label_added_by_someone_else_does_not_make_an_offboarding() {
    // An entitlement filed by the automation; someone adds `offboarding`.
    let mut c = Case::new(
        "Role-based entitlements: Sam Rivera",
        &["BaselineEntitlementAR"],
        "gitlab-employment-bot",
        &format!(
            "{TABLE}| Sam Rivera | sam.rivera@gitlab.com | @srivera | @kpatel |\n\n- [ ]  @zd: Remove the team member from Zendesk Global\n"
        ),
    );
    c.f.label(u("gitlab-employment-bot"), "BaselineEntitlementAR", 0);
    c.label("mallory", "offboarding", 2);
    assert!(refused(&c.decide()).contains("not by the automation"));
}

fn offboarding() -> Case {
    let mut c = Case::new(
        "Offboarding: Alex Chen",
        &["offboarding"],
        "gitlab-employment-bot",
        &format!(
            "{TABLE}| Alex Chen | alex.chen@gitlab.com | @achen | @mlee |\n\n- [ ]  @zd: Remove the team member from Zendesk Global\n- [ ]  @it: Remove the team member from Slack\n"
        ),
    );
    c.f.label(u("gitlab-employment-bot"), "offboarding", 0);
    c
}

#[test]
fn another_team_ticking_its_own_line_does_not_block_an_offboarding() {
    let mut c = offboarding();
    c.note(
        "mallory",
        "marked the checklist item **@it: Remove the team member from Slack** as completed",
        2,
    );
    let body =
        c.f.facts
            .issue
            .description
            .replace("- [ ]  @it", "- [x]  @it");
    c.set_body(&body);
    c.plan(3);
    assert_eq!(approved(&c.decide()), Vec::<String>::new());
}

#[test]
fn someone_ticking_the_bots_line_on_an_offboarding_needs_a_system_owner() {
    let mut c = offboarding();
    c.plan(1).note(
        "mallory",
        "marked the checklist item **@zd: Remove the team member from Zendesk Global** as completed",
        2,
    );
    let (required, why) = trust_lost(&c.decide());
    assert_eq!(required, vec!["system_owner"]);
    assert!(why.contains("`@mallory` changed it"), "{why}");
}

#[test]
fn a_text_edit_hidden_behind_a_tick_after_the_plan_needs_a_system_owner() {
    // GitLab writes only the tick's note when an edit also changes text.
    let mut c = offboarding();
    c.plan(1).note(
        "mallory",
        "marked the checklist item **@it: Remove the team member from Slack** as completed",
        2,
    );
    let body =
        c.f.facts
            .issue
            .description
            .replace(
                "alex.chen@gitlab.com | @achen",
                "sam.rivera@gitlab.com | @srivera",
            )
            .replace("- [ ]  @it", "- [x]  @it");
    c.set_body(&body);
    let (required, _) = trust_lost(&c.decide());
    assert_eq!(required, vec!["system_owner"]);
}

#[test]
fn a_checklist_note_the_bot_cannot_read_is_a_change() {
    let mut c = offboarding();
    c.plan(1).note(
        "mallory",
        "marked the checklist item **@zd: Remove the team member from Zendesk Global** as inapplicable",
        2,
    );
    let (required, _) = trust_lost(&c.decide());
    assert_eq!(required, vec!["system_owner"]);
}

#[test]
fn one_person_cannot_give_two_approvals() {
    // The system owner is also the subject's manager: four eyes still.
    let mut c = Case::new(
        "x",
        &[],
        "jdoe",
        &format!(
            "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @lyle |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n"
        ),
    );
    c.plan(1)
        .label("lyle", MANAGER_LABEL, 5)
        .label("lyle", OWNER_LABEL, 6);
    assert_eq!(
        missing(&c.decide()),
        vec![Missing::SameApprover { by: "lyle".into() }]
    );
}

#[test]
fn a_verification_covers_one_person() {
    let mut c = Case::new(
        "Federal",
        &[],
        "mlee",
        &format!(
            "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n| Sam Rivera | sam.rivera@gitlab.com | @srivera | @mlee |\n\n- [ ] Zendesk US Federal: Light Agent\n"
        ),
    );
    c.plan(1);
    assert!(refused(&c.decide()).contains("verified per person"));
}

// ------------------------------------------------------------ verification

fn federal() -> Case {
    let mut c = Case::new(
        "Bo Li: Zendesk US Federal light agent",
        &[],
        "jdoe",
        &format!(
            "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk US Federal: Light Agent\n"
        ),
    );
    c.plan(1);
    c
}

#[test]
fn citizenship_denied_by_the_people_team_refuses_and_closes() {
    let mut c = federal();
    c.label("people-connect-1", DENIED, 5);
    match c.decide() {
        Decision::Refused { close, .. } => assert!(close),
        other => panic!("{other:?}"),
    }
}

#[test]
fn forged_verification_does_not_count() {
    let mut c = federal();
    c.label("mlee", MANAGER_LABEL, 4)
        .label("mallory", VERIFIED, 5);
    let m = missing(&c.decide());
    assert!(
        matches!(&m[0], Missing::Unauthorized { by } if by == "mallory"),
        "{m:?}"
    );
}

#[test]
fn federal_self_service_still_needs_manager_and_verification() {
    let mut c = federal();
    c.label("mlee", MANAGER_LABEL, 4)
        .label("people-connect-1", VERIFIED, 5);
    assert_eq!(approved(&c.decide()), vec!["mlee", "people-connect-1"]);
}

// ------------------------------------------------------ the company directory

fn person(email: &str, manager: Option<&str>, active: bool) -> Option<access_bot::request::Person> {
    Some(access_bot::request::Person {
        primary: Email::parse(email).unwrap(),
        active,
        manager: manager.map(|m| Email::parse(m).unwrap()),
    })
}

fn jane() -> Email {
    Email::parse("jane.doe@gitlab.com").unwrap()
}

#[test]
fn with_a_directory_the_named_manager_approves_only_if_it_lists_them() {
    for (listed, counts) in [
        (Some("mlee@gitlab.com"), true),
        (Some("kpatel@gitlab.com"), false),
        (None, false),
    ] {
        let mut c = tag_case();
        c.dir
            .add_person(jane(), person("jane.doe@gitlab.com", listed, true));
        c.plan(1).label("mlee", MANAGER_LABEL, 5);
        let d = c.decide();
        if counts {
            assert_eq!(approved(&d), vec!["mlee"], "{listed:?}");
        } else {
            assert!(
                matches!(
                    missing(&d).as_slice(),
                    [Missing::ManagerNotConfirmed { .. }]
                ),
                "{listed:?}: {d:?}"
            );
        }
    }
}

#[test]
fn a_person_the_directory_does_not_know_has_no_manager_to_approve() {
    let mut c = tag_case();
    c.dir.add_person(jane(), None);
    c.plan(1).label("mlee", MANAGER_LABEL, 5);
    let d = c.decide();
    assert!(!matches!(d, Decision::Approved(_)), "{d:?}");
}

#[test]
fn an_unconfirmed_manager_does_not_count_however_the_rule_combines_approvers() {
    // A rule that lets the manager or a system owner approve.
    let mut cfg = config();
    cfg.approvals
        .get_mut("manager")
        .unwrap()
        .approvers
        .push("jason".into());
    let mut c = tag_case();
    c.dir.add_person(
        jane(),
        person("jane.doe@gitlab.com", Some("kpatel@gitlab.com"), true),
    );
    c.plan(1).label("mlee", MANAGER_LABEL, 5);
    let d = c.decide_with(&cfg, Some("jane.doe@gitlab.com"));
    assert!(!matches!(d, Decision::Approved(_)), "{d:?}");
    // The other approver the rule names still can.
    let mut c2 = tag_case();
    c2.dir.add_person(
        jane(),
        person("jane.doe@gitlab.com", Some("kpatel@gitlab.com"), true),
    );
    c2.plan(1).label("jason", MANAGER_LABEL, 5);
    assert_eq!(
        approved(&c2.decide_with(&cfg, Some("jane.doe@gitlab.com"))),
        vec!["jason"]
    );
}

#[test]
fn grants_need_an_active_primary_address_in_the_directory() {
    for (p, why) in [
        (None, "not a user of the company directory"),
        (
            person("jane.doe@gitlab.com", Some("mlee@gitlab.com"), false),
            "suspended",
        ),
        (
            person("jdoe@gitlab.com", Some("mlee@gitlab.com"), true),
            "another address",
        ),
    ] {
        let mut c = tag_case();
        c.dir.add_person(jane(), p);
        c.plan(1).label("mlee", MANAGER_LABEL, 5);
        let d = c.decide();
        let text = match &d {
            Decision::Refused { reasons, .. } => reasons.join("\n"),
            Decision::Waiting { missing, .. } => format!("{missing:?}"),
            other => panic!("{why}: {other:?}"),
        };
        assert!(text.contains(why), "{why}: {text}");
    }
}
