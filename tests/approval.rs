//! Approval rules, one scenario each (pure: label events and notes as data).

mod common;

use access_bot::approval::{self, Decision, Directory, Missing};
use access_bot::marker::Marker;
use access_bot::request::parse_request;
use common::*;

const MANAGER_LABEL: &str = "AR-Approval::Manager Approved";
const OWNER_LABEL: &str = "Zendesk::System Owner Approved";

fn dir() -> Directory {
    let mut d = Directory::new();
    for (n, id) in [
        ("access-bot", BOT),
        ("jdoe", 10),
        ("mlee", 11),
        ("lyle", 12),
        ("jason", 13),
        ("mallory", 14),
        ("people-connect-1", 15),
        ("gitlab-employment-bot", 16),
        ("srivera", 17),
        ("kpatel", 18),
        ("achen", 19),
    ] {
        d.insert(n, id);
    }
    d
}

const TEAM_TAG_BODY: &str = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n- Justification for this access: partner work\n";

fn tag_facts() -> Facts {
    Facts::new(issue(
        "Jane Doe, Zendesk Global tag partner support",
        &["support::to do"],
        user(10, "jdoe"),
        TEAM_TAG_BODY,
    ))
}

fn decide(f: &Facts) -> Decision {
    let cfg = config();
    let req = parse_request(&f.facts.issue, &cfg).unwrap();
    approval::decide(req, &f.facts, &cfg, &dir(), BOT)
}

fn missing(d: &Decision) -> Vec<Missing> {
    match d {
        Decision::Waiting { missing, .. } => missing.iter().map(|m| m.missing.clone()).collect(),
        other => panic!("expected waiting, got {other:?}"),
    }
}

fn plan_note(f: &mut Facts, minute: i64) {
    let cfg = config();
    let digest = parse_request(&f.facts.issue, &cfg).unwrap().digest();
    let m = Marker::new("plan", &format!("plan:{digest}"), &digest, "plan");
    f.note(
        user(BOT, "access-bot"),
        &format!("plan\n{}", m.render()),
        false,
        minute,
    );
}

#[test]
fn manager_approval_by_the_manager_is_approved() {
    let mut f = tag_facts();
    f.label(user(11, "mlee"), MANAGER_LABEL, 5);
    match decide(&f) {
        Decision::Approved(a) => {
            assert_eq!(a.granted().len(), 1);
            assert_eq!(a.granted()[0].by.username, "mlee");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_label_is_waiting() {
    let f = tag_facts();
    assert_eq!(missing(&decide(&f)), vec![Missing::NotApplied]);
}

#[test]
fn self_approval_does_not_count() {
    let mut f = tag_facts();
    f.label(user(10, "jdoe"), MANAGER_LABEL, 5);
    let m = missing(&decide(&f));
    assert!(matches!(&m[0], Missing::SelfApproval { by } if by == "jdoe"));
    assert!(m[0].is_security());
}

#[test]
fn approval_by_someone_else_does_not_count() {
    let mut f = tag_facts();
    f.label(user(14, "mallory"), MANAGER_LABEL, 5);
    assert!(matches!(&missing(&decide(&f))[0], Missing::Unauthorized { by } if by == "mallory"));
}

#[test]
fn a_username_lookalike_with_another_id_does_not_count() {
    // Same username string, different user id: ids decide.
    let mut f = tag_facts();
    f.label(user(999, "mlee"), MANAGER_LABEL, 5);
    assert!(matches!(
        &missing(&decide(&f))[0],
        Missing::Unauthorized { .. }
    ));
}

#[test]
fn removed_approval_does_not_count() {
    let mut f = tag_facts();
    f.label(user(11, "mlee"), MANAGER_LABEL, 5)
        .unlabel(user(11, "mlee"), MANAGER_LABEL, 6);
    assert!(matches!(&missing(&decide(&f))[0], Missing::Removed { .. }));
}

#[test]
fn label_present_without_event_does_not_count() {
    let mut f = tag_facts();
    f.facts.issue.labels.push(MANAGER_LABEL.into());
    assert_eq!(missing(&decide(&f)), vec![Missing::NoEventRecord]);
}

#[test]
fn latest_add_decides_regardless_of_event_order() {
    let mut f = tag_facts();
    f.label(user(14, "mallory"), MANAGER_LABEL, 9); // later, unauthorised
    f.label(user(11, "mlee"), MANAGER_LABEL, 5);
    // Events arrive unordered; mallory's is the latest add.
    assert!(matches!(
        &missing(&decide(&f))[0],
        Missing::Unauthorized { .. }
    ));
}

#[test]
fn text_edit_after_approval_voids_it() {
    let mut f = tag_facts();
    f.label(user(11, "mlee"), MANAGER_LABEL, 5);
    f.note(user(10, "jdoe"), "changed the description", true, 7);
    assert!(matches!(&missing(&decide(&f))[0], Missing::EditedAfter { by } if by == "jdoe"));
}

#[test]
fn edit_before_approval_is_fine() {
    let mut f = tag_facts();
    f.note(user(10, "jdoe"), "changed the description", true, 3);
    f.label(user(11, "mlee"), MANAGER_LABEL, 5);
    assert!(matches!(decide(&f), Decision::Approved(_)));
}

#[test]
fn bot_ticks_after_approval_do_not_void() {
    let mut f = tag_facts();
    f.label(user(11, "mlee"), MANAGER_LABEL, 5);
    f.note(
        user(BOT, "access-bot"),
        "marked the checklist item **x** as completed",
        true,
        7,
    );
    assert!(matches!(decide(&f), Decision::Approved(_)));
}

#[test]
fn others_ticking_after_approval_void_without_a_plan_comment() {
    let mut f = tag_facts();
    f.label(user(11, "mlee"), MANAGER_LABEL, 5);
    f.note(
        user(14, "mallory"),
        "marked the checklist item **Okta** as completed",
        true,
        7,
    );
    assert!(matches!(
        &missing(&decide(&f))[0],
        Missing::EditedAfter { .. }
    ));
}

#[test]
fn others_ticking_after_approval_are_fine_with_a_matching_plan() {
    let mut f = tag_facts();
    plan_note(&mut f, 2);
    f.label(user(11, "mlee"), MANAGER_LABEL, 5);
    f.note(
        user(14, "mallory"),
        "marked the checklist item **Okta** as completed",
        true,
        7,
    );
    assert!(matches!(decide(&f), Decision::Approved(_)));
}

#[test]
fn approval_of_an_older_plan_does_not_hold() {
    let mut f = tag_facts();
    // A plan for different content (another digest), then the approval.
    let m = Marker::new("plan", "plan:0000", "0000000000000000", "plan");
    f.note(user(BOT, "access-bot"), &m.render(), false, 2);
    f.label(user(11, "mlee"), MANAGER_LABEL, 5);
    assert_eq!(missing(&decide(&f)), vec![Missing::PlanChanged]);
}

#[test]
fn special_request_needs_both_approvals() {
    let body = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n";
    let mut f = Facts::new(issue(
        "Jane Doe, Zendesk Global, Support Engineer",
        &["support::to do"],
        user(10, "jdoe"),
        body,
    ));
    f.label(user(11, "mlee"), MANAGER_LABEL, 5);
    let m = missing(&decide(&f));
    assert_eq!(m, vec![Missing::NotApplied]);
    f.label(user(12, "lyle"), OWNER_LABEL, 6);
    assert!(matches!(decide(&f), Decision::Approved(_)));
}

#[test]
fn bulk_request_with_different_managers_needs_a_listed_approver() {
    let body = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n| Sam Rivera | sam.rivera@gitlab.com | @srivera | @kpatel |\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n";
    let mut f = Facts::new(issue(
        "Bulk Access, Zendesk Global tag",
        &["support::to do"],
        user(14, "mallory"),
        body,
    ));
    f.label(user(11, "mlee"), MANAGER_LABEL, 5);
    assert!(matches!(
        &missing(&decide(&f))[0],
        Missing::Unauthorized { .. }
    ));
}

fn rbe_facts(author: (u64, &str)) -> Facts {
    let mut f = Facts::new(issue(
        "Role-based entitlements: Sam Rivera, Support Engineer",
        &["BaselineEntitlementAR", "support::to do", MANAGER_LABEL],
        user(author.0, author.1),
        &example("b_entitlement.md"),
    ));
    f.label(user(author.0, author.1), MANAGER_LABEL, 0);
    f
}

#[test]
fn entitlement_from_the_automation_waits_only_for_citizenship() {
    let mut f = rbe_facts((16, "gitlab-employment-bot"));
    let m = match decide(&f) {
        Decision::Waiting {
            missing,
            verification_pending,
            ..
        } => {
            assert!(verification_pending);
            missing
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].approval, "citizenship");
    f.label(user(15, "people-connect-1"), "US-Citizenship::Verified", 10);
    assert!(matches!(decide(&f), Decision::Approved(_)));
}

#[test]
fn entitlement_from_anyone_else_is_refused() {
    let f = rbe_facts((14, "mallory"));
    match decide(&f) {
        Decision::Refused {
            security, reasons, ..
        } => {
            assert!(security);
            assert!(reasons[0].contains("mallory"), "{reasons:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn entitlement_edited_by_a_person_is_refused() {
    let mut f = rbe_facts((16, "gitlab-employment-bot"));
    f.note(user(14, "mallory"), "changed the description", true, 3);
    assert!(matches!(
        decide(&f),
        Decision::Refused { security: true, .. }
    ));
}

#[test]
fn citizenship_denied_by_the_people_team_refuses_and_closes() {
    let mut f = rbe_facts((16, "gitlab-employment-bot"));
    f.label(
        user(15, "people-connect-1"),
        "US-Citizenship::Not Verified",
        10,
    );
    assert!(matches!(
        decide(&f),
        Decision::Refused {
            close: true,
            security: false,
            ..
        }
    ));
}

#[test]
fn forged_verification_does_not_count() {
    let mut f = rbe_facts((16, "gitlab-employment-bot"));
    f.label(user(14, "mallory"), "US-Citizenship::Verified", 10);
    assert!(matches!(
        &missing(&decide(&f))[0],
        Missing::Unauthorized { .. }
    ));
    // ...and a forged denial is ignored.
    let mut g = rbe_facts((16, "gitlab-employment-bot"));
    g.label(user(14, "mallory"), "US-Citizenship::Not Verified", 10);
    assert!(matches!(decide(&g), Decision::Waiting { .. }));
}

#[test]
fn light_agent_global_needs_no_approval() {
    let mut i = issue(
        "Zendesk Global light agent",
        &["support::to do"],
        user(10, "jdoe"),
        "- [ ] Zendesk Global: Light Agent\n- Justification for this access: I read tickets.\n",
    );
    i.author_email = Some("jane.doe@gitlab.com".into());
    let f = Facts::new(i);
    assert!(matches!(decide(&f), Decision::Approved(_)));
}

#[test]
fn an_edit_at_the_same_instant_as_the_approval_counts_as_after() {
    let mut f = tag_facts();
    f.label(user(11, "mlee"), MANAGER_LABEL, 5);
    f.note(user(10, "jdoe"), "changed the description", true, 5);
    assert!(matches!(
        &missing(&decide(&f))[0],
        Missing::EditedAfter { .. }
    ));
}
