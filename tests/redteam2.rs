//! Red team, round 2: attack classes and variants not in `tests/security.rs`
//! or `tests/hostile_probe.rs`.
//!
//! Each test is an attack run end to end against the sandbox over HTTP and
//! asserts the SAFE outcome: it fails when the attack works.
//!
//! Holes this round found, now closed:
//! - a1: the requester removes the `access-bot/time-bound` label, then the
//!   state database is lost: the bot adopts the grant from its sealed record
//!   whenever it reads the issue, and puts the label back.
//! - a3: a maintainer edits the bot's grant record, then the database is
//!   lost: the record no longer verifies, so nothing is taken back on it; the
//!   issue says ops must end the grant by hand, and ops are told.
//! - b1, b2, b5: labels renamed so that another label is bound to (or takes
//!   the name of) an approval: an approval now needs the label the plan bound
//!   *and* the approval's name on the issue as it is now.
//! - c2: a plan carried out in part, then a change it made undone by an
//!   admin: the bot does not make it again on the old approval (one approval,
//!   one execution) but posts a new plan.

mod common;

use access_bot::sandbox::{PROJECT, Sandbox};
use common::tester::{GLOBAL_OKTA, MANAGER, OWNER, TABLE, Tester};
const TIME_BOUND: &str = "access-bot/time-bound";
const TRIAGE: &str = "support::in progress";

// ------------------------------------------------------------------ helpers

fn bot_text(sb: &Sandbox, iid: u64) -> String {
    sb.bot_comments(iid)
        .iter()
        .map(|c| c.body.clone())
        .collect::<Vec<_>>()
        .join("\n-----\n")
}

fn role_of(sb: &Sandbox, email: &str) -> Option<(String, Option<String>)> {
    let w = sb.zd("global");
    let u = w.user_by_email(email)?;
    let custom = u
        .custom_role_id
        .and_then(|id| w.custom_roles.iter().find(|r| r.id == id))
        .map(|r| r.name.clone());
    Some((u.role.clone(), custom))
}

fn make_maintainer(sb: &Sandbox, user: &str) {
    let id = sb.gitlab.lock().user_by_name(user).unwrap().id;
    let mut g = sb.gitlab.lock();
    let p = g.projects.iter_mut().find(|p| p.path == PROJECT).unwrap();
    p.maintainers.insert(id);
}

/// Rename a project label as `user` (GitLab Labels API; Reporters may).
async fn rename_label(sb: &Sandbox, user: &str, old: &str, new: &str) {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let st = reqwest::Client::new()
        .put(format!(
            "http://{}/api/v4/projects/{}/labels/{}",
            sb.gitlab_addr,
            enc(PROJECT),
            enc(old)
        ))
        .header("PRIVATE-TOKEN", sb.token_of(user))
        .form(&[("new_name", new)])
        .send()
        .await
        .unwrap()
        .status();
    assert!(st.is_success(), "rename {old} -> {new}: {st}");
}

/// A time-bound Support Engineer grant for Robin (filed by Robin), approved and carried out.
async fn time_bound_request(t: &Tester, days: i64) -> u64 {
    let sb = &t.sb;
    let until = (chrono::Utc::now() + chrono::Duration::days(days)).date_naive();
    let body = format!(
        "{TABLE}| Robin Kim | robin.kim@gitlab.com | @rkim | @mlee |\n\nExpires: {until}\n\n- [ ] Zendesk Global: Agent - Support Engineer\n- [ ] Access revoked on expiry\n"
    );
    let iid =
        t.sb.file_issue("rkim", "Robin Kim, Zendesk Global", &[], &body)
            .await
            .unwrap();
    t.run().await;
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run().await;
    assert_eq!(
        role_of(sb, "robin.kim@gitlab.com"),
        Some(("agent".into(), Some("Support Engineer".into()))),
        "control: the grant happened\n{}",
        bot_text(sb, iid)
    );
    assert!(sb.labels(iid).iter().any(|l| l == TIME_BOUND));
    iid
}

fn assert_robin_revoked(sb: &Sandbox, iid: u64) {
    let (role, custom) = role_of(sb, "robin.kim@gitlab.com").unwrap();
    assert!(
        role == "end-user" && custom.is_none(),
        "the time-bound grant outlived its date: Robin is still {role}/{custom:?}\n{}",
        bot_text(sb, iid)
    );
    assert!(
        !sb.google
            .lock()
            .is_member(GLOBAL_OKTA, "robin.kim@gitlab.com"),
        "Robin kept the Okta group past the grant's date"
    );
}

// ============================================ class A: time-bound grants outliving their date

/// The requester removes the `access-bot/time-bound` label from their own done
/// issue (any Reporter can), then the state database is lost (a new host, a CI
/// cache evicted). The README says the issue is the memory and a grant ends on
/// its date with the database lost; the bot finds grants only by that label.
#[tokio::test]
async fn a1_time_bound_label_removed_by_the_requester_then_database_lost() {
    let mut t = crate::tester!().await;
    let iid = time_bound_request(&t, 5).await;
    t.sb.remove_label("rkim", iid, TIME_BOUND).await.unwrap();

    t.restart().await;
    t.bot.clock.set_offset(chrono::Duration::days(6));
    t.run_for(4).await;
    assert_robin_revoked(&t.sb, iid);
    // The plan, the grant record, done; on the date, revoked.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// Same label removal, the database kept: the store still knows the grant.
#[tokio::test]
async fn a2_time_bound_label_removed_by_the_requester_database_kept() {
    let mut t = crate::tester!().await;
    let iid = time_bound_request(&t, 5).await;
    t.sb.remove_label("rkim", iid, TIME_BOUND).await.unwrap();
    t.run_for(4).await;
    t.bot.clock.set_offset(chrono::Duration::days(6));
    t.run_for(4).await;
    assert_robin_revoked(&t.sb, iid);
    // The plan, the grant record, done; on the date, revoked.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// A maintainer edits the bot's sealed grant record (its marker stops
/// verifying), then the database is lost. The record cannot be trusted, so
/// the bot cannot know what to take back: it must not forget the grant in
/// silence, but say on the issue that ops must end it by hand (and tell ops).
#[tokio::test]
async fn a3_grant_record_edited_by_a_maintainer_then_database_lost() {
    let mut t = crate::tester!().await;
    make_maintainer(&t.sb, "mallory");
    // The bot starts once mallory is a maintainer, as before the migration.
    t.restart().await;
    let iid = time_bound_request(&t, 5).await;
    let grant =
        t.sb.bot_comments(iid)
            .into_iter()
            .find(|c| c.marker.as_ref().is_some_and(|m| m.kind == "grant"))
            .expect("a grant record note");
    assert!(grant.body.contains("what will be taken back"));
    let tampered = grant.body.replacen(
        "what will be taken back",
        "what will be taken back (noted)",
        1,
    );
    t.sb.edit_note_as("mallory", iid, grant.id, &tampered)
        .await
        .unwrap();

    t.restart().await;
    t.bot.clock.set_offset(chrono::Duration::days(6));
    t.run_for(4).await;
    let said = bot_text(&t.sb, iid);
    assert!(
        said.contains("grant record was changed")
            && said.contains("ops must end this grant by hand"),
        "{said}"
    );
    assert!(
        t.sb.slack
            .texts()
            .iter()
            .any(|t| t.contains(&format!("#{iid}")) && t.contains("by hand")),
        "ops are told: {:?}",
        t.sb.slack.texts()
    );
    // Nothing was taken back on a record nobody can trust.
    let (role, _) = role_of(&t.sb, "robin.kim@gitlab.com").unwrap();
    assert_ne!(role, "end-user");
    // The plan, the grant record (as mallory edited it), done; on the date,
    // stopped: the record was changed, ops must end this grant by hand.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// The requester pushes `Expires:` a year out after the grant (database kept).
#[tokio::test]
async fn a4_expiry_date_extended_after_the_grant() {
    let mut t = crate::tester!().await;
    let iid = time_bound_request(&t, 5).await;
    let until = (chrono::Utc::now() + chrono::Duration::days(5)).date_naive();
    let later = (chrono::Utc::now() + chrono::Duration::days(365)).date_naive();
    let d = t.sb.description(iid);
    t.sb.edit_description(
        "rkim",
        iid,
        &d.replace(&until.to_string(), &later.to_string()),
    )
    .await
    .unwrap();
    t.run_for(4).await;
    t.bot.clock.set_offset(chrono::Duration::days(6));
    t.run_for(4).await;
    assert_robin_revoked(&t.sb, iid);
    // The plan, the grant record, done, a new plan for the new date; on the
    // recorded date, revoked.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// The requester deletes the `Expires:` line after the grant and the
/// database is lost.
#[tokio::test]
async fn a5_expiry_line_removed_after_the_grant_then_database_lost() {
    let mut t = crate::tester!().await;
    let iid = time_bound_request(&t, 5).await;
    let d = t.sb.description(iid);
    let d: String = d
        .lines()
        .filter(|l| !l.starts_with("Expires:"))
        .map(|l| format!("{l}\n"))
        .collect();
    t.sb.edit_description("rkim", iid, &d).await.unwrap();
    t.run_for(4).await;
    t.restart().await;
    t.bot.clock.set_offset(chrono::Duration::days(6));
    t.run_for(4).await;
    assert_robin_revoked(&t.sb, iid);
    // The plan, the grant record, done, a new plan without the date and its
    // wait for approval; on the recorded date, revoked.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
}

// ============================================ class B: approval label identity (by id, name ignored)

fn mallory_body() -> String {
    format!(
        "{TABLE}| Mallory Mallet | mallory@gitlab.com | @mallory | @mlee |\n\n- [ ] Zendesk Global: Light Agent, add tag `partner_support_agent`\n"
    )
}

/// After the plan bound the approval to the label's id, mallory swaps names:
/// the approval label (that id) is now called `support::in progress`. The
/// manager triages the issue with what they see as `support::in progress`:
/// that is the approval label's id, after the plan, by the manager. The
/// label the issue shows is not named `AR-Approval::Manager Approved` at all.
#[tokio::test]
async fn b1_approval_label_renamed_to_a_triage_label_after_the_plan() {
    let mut t = crate::tester!().await;
    // The triage label exists in the project.
    let other =
        t.sb.file_issue("bli", "unrelated", &[], "nothing here\n")
            .await
            .unwrap();
    t.sb.add_label("mlee", other, TRIAGE).await.unwrap();
    // The approval label exists in the project (used before).
    t.sb.add_label("bli", other, MANAGER).await.unwrap();
    t.sb.remove_label("bli", other, MANAGER).await.unwrap();

    let iid =
        t.sb.file_issue(
            "mallory",
            "Mallory: light agent and tag",
            &[],
            &mallory_body(),
        )
        .await
        .unwrap();
    t.run_for(4).await;
    assert!(
        bot_text(&t.sb, iid).contains("plan"),
        "{}",
        bot_text(&t.sb, iid)
    );
    // Swap the two labels' names.
    rename_label(&t.sb, "mallory", MANAGER, "tmp-swap").await;
    rename_label(&t.sb, "mallory", TRIAGE, MANAGER).await;
    rename_label(&t.sb, "mallory", "tmp-swap", TRIAGE).await;
    // The manager marks the request in progress (not an approval).
    t.sb.add_label("mlee", iid, TRIAGE).await.unwrap();
    t.run_for(4).await;
    assert!(
        t.sb.zd("global")
            .user_by_email("mallory@gitlab.com")
            .is_none(),
        "granted on a label named {TRIAGE:?} (the approval label's id, renamed):\n{}",
        bot_text(&t.sb, iid)
    );
    assert!(!t.sb.google_member(GLOBAL_OKTA, "mallory@gitlab.com"));
    // The plan, then waiting: the triage label is no approval.
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// Before the plan, mallory gives the triage label the approval label's name,
/// so the plan binds the approval to the triage label's id; then she renames
/// both back. The manager's routine triage label counts as the approval.
#[tokio::test]
async fn b2_plan_bound_to_a_triage_label_renamed_before_the_plan() {
    let mut t = crate::tester!().await;
    let other =
        t.sb.file_issue("bli", "unrelated", &[], "nothing here\n")
            .await
            .unwrap();
    t.sb.add_label("mlee", other, TRIAGE).await.unwrap();
    t.sb.add_label("bli", other, MANAGER).await.unwrap();
    t.sb.remove_label("bli", other, MANAGER).await.unwrap();

    rename_label(
        &t.sb,
        "mallory",
        MANAGER,
        "AR-Approval::Manager Approved (v1)",
    )
    .await;
    rename_label(&t.sb, "mallory", TRIAGE, MANAGER).await;
    let iid =
        t.sb.file_issue(
            "mallory",
            "Mallory: light agent and tag",
            &[],
            &mallory_body(),
        )
        .await
        .unwrap();
    t.run_for(4).await;
    rename_label(&t.sb, "mallory", MANAGER, TRIAGE).await;
    rename_label(
        &t.sb,
        "mallory",
        "AR-Approval::Manager Approved (v1)",
        MANAGER,
    )
    .await;
    t.sb.add_label("mlee", iid, TRIAGE).await.unwrap();
    t.run_for(4).await;
    assert!(
        t.sb.zd("global")
            .user_by_email("mallory@gitlab.com")
            .is_none(),
        "granted on the manager's triage label, bound by a rename before the plan:\n{}",
        bot_text(&t.sb, iid)
    );
    assert!(!t.sb.google_member(GLOBAL_OKTA, "mallory@gitlab.com"));
    // The plan, then waiting: the triage label is no approval.
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// The approval label is removed and re-added by the requester after the
/// manager approved: the latest add is the requester's.
#[tokio::test]
async fn b3_approval_removed_and_readded_by_the_requester() {
    let mut t = crate::tester!().await;
    let iid =
        t.sb.file_issue(
            "mallory",
            "Mallory: light agent and tag",
            &[],
            &mallory_body(),
        )
        .await
        .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.remove_label("mallory", iid, MANAGER).await.unwrap();
    t.sb.add_label("mallory", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    assert!(
        t.sb.zd("global")
            .user_by_email("mallory@gitlab.com")
            .is_none()
    );
    // The plan, then waiting: the latest approval is the requester's own.
    t.expect_comment(iid);
    t.expect_comment(iid);
}

// ============================================ class C: maintainer edits of bot notes after completion

/// A done request; the subject is later demoted by an admin. A maintainer
/// edits the bot's result note (it stops verifying) and unticks nothing:
/// the approval must not run a second time.
#[tokio::test]
async fn c1_result_note_edited_by_a_maintainer_does_not_replay() {
    let mut t = crate::tester!().await;
    make_maintainer(&t.sb, "mallory");
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n"
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane Doe, Zendesk Global", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    assert_eq!(
        role_of(&t.sb, "jane.doe@gitlab.com"),
        Some(("agent".into(), Some("Support Engineer".into())))
    );
    // An admin takes the seat back by hand.
    {
        let mut w = t.sb.zd("global");
        let id = w.user_by_email("jane.doe@gitlab.com").unwrap().id;
        let u = w.users.get_mut(&id).unwrap();
        u.role = "end-user".into();
        u.custom_role_id = None;
    }
    for c in t.sb.bot_comments(iid) {
        if c.marker.as_ref().is_some_and(|m| m.kind == "result") {
            t.sb.edit_note_as("mallory", iid, c.id, &format!("{} ", c.body))
                .await
                .unwrap();
        }
    }
    t.sb.comment_as("mallory", iid, "ping").await.unwrap();
    t.run_for(4).await;
    assert_eq!(
        role_of(&t.sb, "jane.doe@gitlab.com")
            .map(|r| r.0)
            .as_deref(),
        Some("end-user"),
        "the old approval ran again:\n{}",
        bot_text(&t.sb, iid)
    );
    // The plan and done; nothing replayed.
    t.expect_comment(iid);
    t.expect_comment(iid);
}

// ============================================ class D: request text variants after approval

/// A lone CR (old Mac line ending) joins two items on one "line" for the
/// byte-level ticker but makes two list items for the Markdown renderer.
/// Filed after approval of a one-item plan, masked as one edit.
#[tokio::test]
async fn d1_lone_cr_smuggles_a_second_item_after_approval() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n- [ ] Slack: join #support\n"
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane Doe, Zendesk Global", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    // After the approvals, before the bot looks: the light agent line gains a
    // lone-CR second item asking for Support Manager.
    let d = t.sb.description(iid);
    let d = d.replace(
        "- [ ] Zendesk Global: Light Agent\n",
        "- [ ] Zendesk Global: Light Agent\r- [ ] Zendesk Global: Agent - Support Manager\n",
    );
    t.sb.edit_description("jdoe", iid, &d).await.unwrap();
    t.run_for(4).await;
    let r = role_of(&t.sb, "jane.doe@gitlab.com");
    assert!(
        r.as_ref().and_then(|r| r.1.as_deref()) != Some("Support Manager"),
        "Support Manager granted through a lone CR: {r:?}\n{}",
        bot_text(&t.sb, iid)
    );
    // The light-agent plan and done: no Support Manager.
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// The lone-CR body filed from the start: whatever the bot does, the plan it
/// posts must list every change it then makes (nothing from a hidden item).
#[tokio::test]
async fn d2_lone_cr_item_is_planned_as_executed() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Light Agent\r- [ ] Zendesk Global: Agent - Support Manager\n"
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane Doe, Zendesk Global", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    let plan = bot_text(&t.sb, iid);
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    if role_of(&t.sb, "jane.doe@gitlab.com")
        .and_then(|r| r.1)
        .as_deref()
        == Some("Support Manager")
    {
        assert!(
            plan.contains("Support Manager"),
            "Support Manager granted but the plan did not list it:\n{plan}"
        );
    }
    // The bot cannot read this request.
    t.expect_comment(iid);
}

/// After approval the requester changes the level and, in the same edit,
/// ticks an unmanaged line (GitLab then records only the tick).
#[tokio::test]
async fn d3_level_swap_masked_by_an_unmanaged_tick() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n- [ ] Slack: join #support\n"
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane Doe, Zendesk Global", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    let d =
        t.sb.description(iid)
            .replace("Agent - Support Engineer", "Agent - Support Manager")
            .replace("- [ ] Slack", "- [x] Slack");
    t.sb.edit_description("jdoe", iid, &d).await.unwrap();
    t.run_for(4).await;
    assert!(
        t.sb.zd("global")
            .user_by_email("jane.doe@gitlab.com")
            .is_none(),
        "{}",
        bot_text(&t.sb, iid)
    );
    // The plan, then a new plan for the changed level (to approve again).
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// Uppercase `[X]` on the bot's item after approval by the requester, then
/// back to `[ ]` (both recorded as ticks on a managed line).
#[tokio::test]
async fn d4_uppercase_tick_toggle_after_approval() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n"
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane Doe, Zendesk Global", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    let d = t.sb.description(iid);
    t.sb.edit_description("jdoe", iid, &d.replace("- [ ] Zendesk", "- [X] Zendesk"))
        .await
        .unwrap();
    t.sb.edit_description("jdoe", iid, &d).await.unwrap();
    t.run_for(4).await;
    assert!(
        t.sb.zd("global")
            .user_by_email("jane.doe@gitlab.com")
            .is_none(),
        "{}",
        bot_text(&t.sb, iid)
    );
    // The plan, then waiting: the requester's edit voids the approvals.
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// A plan half carried out (the Okta step refused for good), then an admin
/// takes the Zendesk role back by hand. When Google works again the bot
/// finishes "the same" plan: the role step is run a second time on the old
/// approval, undoing the admin's decision. An approval authorises one
/// execution of one plan.
#[tokio::test]
async fn c2_half_done_plan_reruns_a_step_an_admin_undid() {
    use access_bot::sandbox::faults::Failure;
    let mut t = crate::tester!().await;
    t.sb.google_knobs
        .fail_next("POST /admin/directory", 1000, Failure::Status(403));
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n"
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane Doe, Zendesk Global", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    assert_eq!(
        role_of(&t.sb, "jane.doe@gitlab.com"),
        Some(("agent".into(), Some("Support Engineer".into()))),
        "control: the Zendesk half happened\n{}",
        bot_text(&t.sb, iid)
    );
    assert!(!t.sb.google_member(GLOBAL_OKTA, "jane.doe@gitlab.com"));
    // An admin demotes Jane by hand.
    {
        let mut w = t.sb.zd("global");
        let id = w.user_by_email("jane.doe@gitlab.com").unwrap().id;
        let u = w.users.get_mut(&id).unwrap();
        u.role = "end-user".into();
        u.custom_role_id = None;
    }
    t.sb.google_knobs.clear_faults();
    t.sb.comment_as("jdoe", iid, "Google is fixed, please retry")
        .await
        .unwrap();
    t.run_for(4).await;
    assert_eq!(
        role_of(&t.sb, "jane.doe@gitlab.com")
            .map(|r| r.0)
            .as_deref(),
        Some("end-user"),
        "the half-done plan re-ran the role step on the old approval:\n{}",
        bot_text(&t.sb, iid)
    );
    // The issue says why, with a new plan to approve.
    let said = bot_text(&t.sb, iid);
    assert!(said.contains("was undone since"), "{said}");
    assert_eq!(said.matches("access-bot plan").count(), 2, "{said}");
    // The plan, the Okta step's error, then a new plan for the undone step.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// Mallory puts the time-bound label on Jane's permanent, done request, and
/// the database is lost: with no sealed grant record there, nothing is taken.
#[tokio::test]
async fn a6_time_bound_label_forged_on_a_permanent_request_takes_nothing() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n"
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane Doe, Zendesk Global", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    t.sb.add_label("mallory", iid, TIME_BOUND).await.unwrap();
    t.sb.comment_as("mallory", iid, "Expires: 2020-01-01")
        .await
        .unwrap();
    t.restart().await;
    t.bot.clock.set_offset(chrono::Duration::days(400));
    t.run_for(4).await;
    assert_eq!(
        role_of(&t.sb, "jane.doe@gitlab.com"),
        Some(("agent".into(), Some("Support Engineer".into()))),
        "a forged time-bound label took back a permanent grant:\n{}",
        bot_text(&t.sb, iid)
    );
    // The plan and done; nothing on the forged label.
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// The end date is pushed out after the approvals and before the bot acts:
/// the approved plan had another date, so nothing is granted.
#[tokio::test]
async fn a7_expiry_extended_between_approval_and_execution() {
    let mut t = crate::tester!().await;
    let until = (chrono::Utc::now() + chrono::Duration::days(5)).date_naive();
    let later = (chrono::Utc::now() + chrono::Duration::days(500)).date_naive();
    let body = format!(
        "{TABLE}| Robin Kim | robin.kim@gitlab.com | @rkim | @mlee |\n\nExpires: {until}\n\n- [ ] Zendesk Global: Agent - Support Engineer\n- [ ] Slack: join #support\n"
    );
    let iid =
        t.sb.file_issue("rkim", "Robin Kim, Zendesk Global", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    // Masked: GitLab records an edit that also ticks a box as the tick alone.
    let d =
        t.sb.description(iid)
            .replace(&until.to_string(), &later.to_string())
            .replace("- [ ] Slack", "- [x] Slack");
    t.sb.edit_description("rkim", iid, &d).await.unwrap();
    t.run_for(4).await;
    assert!(
        t.sb.zd("global")
            .user_by_email("robin.kim@gitlab.com")
            .is_none(),
        "granted with an end date nobody approved:\n{}",
        bot_text(&t.sb, iid)
    );
    // The plan, then a new plan for the new date (to approve again).
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// The approval label is removed by mallory and applied again by the
/// manager before the bot looks: a fresh approval after the plan counts
/// (control), and nothing else is granted.
#[tokio::test]
async fn b4_control_manager_reapplies_after_a_removal() {
    let mut t = crate::tester!().await;
    let iid =
        t.sb.file_issue(
            "mallory",
            "Mallory: light agent and tag",
            &[],
            &mallory_body(),
        )
        .await
        .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.remove_label("mallory", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    assert!(
        t.sb.zd("global")
            .user_by_email("mallory@gitlab.com")
            .is_none()
    );
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    assert!(
        t.sb.zd("global")
            .user_by_email("mallory@gitlab.com")
            .is_some(),
        "control: the manager's fresh approval counts\n{}",
        bot_text(&t.sb, iid)
    );
    // The plan, waiting (removed by mallory), then done on the manager's fresh approval.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// The grant record edited by a maintainer, database kept.
#[tokio::test]
async fn a3b_grant_record_edited_by_a_maintainer_database_kept() {
    let mut t = crate::tester!().await;
    make_maintainer(&t.sb, "mallory");
    let iid = time_bound_request(&t, 5).await;
    let grant =
        t.sb.bot_comments(iid)
            .into_iter()
            .find(|c| c.marker.as_ref().is_some_and(|m| m.kind == "grant"))
            .expect("a grant record note");
    let tampered = grant.body.replacen(
        "what will be taken back",
        "what will be taken back (noted)",
        1,
    );
    t.sb.edit_note_as("mallory", iid, grant.id, &tampered)
        .await
        .unwrap();
    t.sb.comment_as("mallory", iid, "ping").await.unwrap();
    t.run_for(4).await;
    t.bot.clock.set_offset(chrono::Duration::days(6));
    t.run_for(4).await;
    assert_robin_revoked(&t.sb, iid);
    // The plan, the grant record (as mallory edited it), done; on the date, revoked.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
}

/// The same rename, against a verification: Bo (not verified) swaps the names
/// of `US-Citizenship::Verified` (the id his plan bound) and the People
/// team's routine `people::triaged`. The verifier triages the issue: Bo is
/// provisioned in US Federal as if his citizenship had been verified.
#[tokio::test]
async fn b5_citizenship_verification_by_a_renamed_triage_label() {
    const VERIFIED: &str = "US-Citizenship::Verified";
    const PEOPLE_TRIAGE: &str = "people::triaged";
    let mut t = crate::tester!().await;
    let (_, author, title, labels, body) = access_bot::demo::bodies()
        .into_iter()
        .find(|b| b.0 == "light agent, Zendesk US Federal")
        .unwrap();
    let other =
        t.sb.file_issue("bli", "unrelated", &[], "nothing here\n")
            .await
            .unwrap();
    t.sb.add_label("people-connect-1", other, PEOPLE_TRIAGE)
        .await
        .unwrap();
    t.sb.add_label("bli", other, VERIFIED).await.unwrap();
    t.sb.remove_label("bli", other, VERIFIED).await.unwrap();

    let iid =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    t.run_for(4).await;
    assert!(
        bot_text(&t.sb, iid).contains("labels="),
        "control: the plan binds the label\n{}",
        bot_text(&t.sb, iid)
    );
    // The manager approves the access (not the citizenship).
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    assert!(
        t.sb.zd("federal")
            .user_by_email("bo.li@gitlab.com")
            .is_none()
    );
    rename_label(&t.sb, "bli", VERIFIED, "tmp-swap").await;
    rename_label(&t.sb, "bli", PEOPLE_TRIAGE, VERIFIED).await;
    rename_label(&t.sb, "bli", "tmp-swap", PEOPLE_TRIAGE).await;
    t.sb.add_label("people-connect-1", iid, PEOPLE_TRIAGE)
        .await
        .unwrap();
    t.run_for(4).await;
    assert!(
        t.sb.zd("federal")
            .user_by_email("bo.li@gitlab.com")
            .is_none(),
        "provisioned in US Federal on a triage label:\n{}",
        bot_text(&t.sb, iid)
    );
    assert!(
        !t.sb
            .google_member("okta-zendeskfederal-users@gitlab.com", "bo.li@gitlab.com")
    );
    // The plan asking the People team, the e-mail announced and sent, then
    // waiting: the triage label is no verification.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
}
