//! Every workflow of the seeds and every security scenario, end to end
//! against the sandbox over HTTP: from the issue a person files to the final
//! state in Zendesk, Google and on the issue.
//!
//! Each test reads every comment the bot wrote, checked by snapshot
//! (`Tester::expect_comment`); the tester fails the test if the bot wrote a
//! comment the test did not read.

mod common;

use access_bot::bot::Outcome;
use access_bot::sandbox::GroupBackend;
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::scenario::ZendeskAccount;
use common::tester::{
    FEDERAL_OKTA, GLOBAL_OKTA, Issue, MANAGER, OWNER, Tester, VERIFIED, account, fixtures,
};

// ---------------------------------------------------------------- workflows

async fn entitlement_creates_the_agent_with_role_groups_and_okta(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = t.file(&fixtures::role_based_entitlement()).await;
    t.run_for(4).await;
    // The plan first (the record of what is approved: pre-approved by the
    // automation's template), then what was done.
    t.expect_comment(iid);
    t.expect_comment(iid);
    let u = t.zd_user("global", "sam.rivera@gitlab.com").unwrap();
    assert_eq!(
        t.role_name("global", u.custom_role_id).as_deref(),
        Some("Support Engineer")
    );
    assert_eq!(
        t.sb.zd("global").groups_of(u.id),
        vec!["Support AMER", "Support EMEA"]
    );
    assert!(t.sb.group_member(GLOBAL_OKTA, "sam.rivera@gitlab.com"));
    // The Google item and the Zendesk item are ticked; Slack's is left alone.
    t.expect_ticked_count(iid, 2);
    assert!(t.sb.description(iid).contains("* [ ]  `Slack`"));
    t.expect_label(iid, "access-bot::done");
}

async fn special_request_plans_then_waits_for_both_approvals_then_acts(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = t.file(&fixtures::special_request()).await;
    t.run().await;
    // The plan: both approvals, neither applied yet.
    t.expect_comment(iid);
    t.expect_label(iid, "access-bot::waiting");
    t.label("mlee", iid, MANAGER).await;
    t.run().await;
    // One approval is not enough, and a missing approval that is simply not applied yet
    // is not worth another comment.
    assert!(t.zd_user("global", "robin.kim@gitlab.com").is_none());
    t.expect_no_comment(iid);
    t.label("lyle", iid, OWNER).await;
    t.run().await;
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    assert_eq!(
        t.custom_role_of("global", "robin.kim@gitlab.com")
            .as_deref(),
        Some("Support Engineer")
    );
    t.expect_ticked(iid, &["Zendesk Global: Agent - Support Engineer"]);
}

async fn light_agent_global_covers_all_four_starting_points(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    // Not found, end-user, full agent, already a light agent.
    for (user, name, email) in [
        ("eu", "End User", "end.user@gitlab.com"),
        ("fa", "Full Agent", "full.agent@gitlab.com"),
        ("la", "Light Agent", "light.agent@gitlab.com"),
    ] {
        t.sb.gitlab.lock().add_user(user, name, email);
        t.sb.add_directory_user(email);
    }
    t.sb.seed_zendesk(&account("End User", "end.user@gitlab.com", "end-user"))
        .unwrap();
    t.sb.seed_zendesk(&ZendeskAccount {
        custom_role: Some("Support Engineer".into()),
        ..account("Full Agent", "full.agent@gitlab.com", "agent")
    })
    .unwrap();
    t.sb.seed_zendesk(&account(
        "Light Agent",
        "light.agent@gitlab.com",
        "light-agent",
    ))
    .unwrap();
    let mut iids = vec![];
    for who in ["jdoe", "eu", "fa", "la"] {
        let issue = Issue {
            author: who.into(),
            title: "Zendesk Global light agent".into(),
            labels: vec!["support::to do".into()],
            body: "- [ ] Zendesk Global: Light Agent\n- Justification for this access: reading tickets\n"
                .into(),
        };
        iids.push(t.file(&issue).await);
    }
    t.run_for(4).await;
    let light = t.sb.zd("global").light_agent_role();
    // Each: the self-service plan, then what became of the account (created
    // and upgraded with the 24 hours' wait and where to ask; upgraded; already
    // a full agent, nothing changed; already a light agent).
    for iid in &iids {
        t.expect_comment(*iid);
        t.expect_comment(*iid);
    }
    assert_eq!(
        t.zd_user("global", "jane.doe@gitlab.com")
            .unwrap()
            .custom_role_id,
        light
    );
    let eu = t.zd_user("global", "end.user@gitlab.com").unwrap();
    assert_eq!((eu.role.as_str(), eu.custom_role_id), ("agent", light));
    assert_eq!(
        t.custom_role_of("global", "full.agent@gitlab.com")
            .as_deref(),
        Some("Support Engineer")
    );
    for (i, e) in iids.iter().zip([
        "jane.doe@gitlab.com",
        "end.user@gitlab.com",
        "full.agent@gitlab.com",
        "light.agent@gitlab.com",
    ]) {
        // Self-service never changes an existing agent, not even their Okta app.
        assert_eq!(
            t.sb.group_member(GLOBAL_OKTA, e),
            e != "full.agent@gitlab.com",
            "{e} in the Okta group"
        );
        t.expect_state(*i, "closed");
    }
}

async fn light_agent_federal_waits_for_verification_then_provisions(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = t.file(&fixtures::light_agent_federal()).await;
    t.run().await;
    // The plan asks the People team whether Bo is a US citizen, with a link
    // to the issue and the label to apply; then the e-mail, announced and sent.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.label("mlee", iid, MANAGER).await;
    t.run().await;
    assert!(
        t.zd_user("federal", "bo.li@gitlab.com").is_none(),
        "nothing before verification"
    );
    t.label("people-connect-1", iid, VERIFIED).await;
    t.run().await;
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    assert_eq!(
        t.zd_user("federal", "bo.li@gitlab.com")
            .unwrap()
            .custom_role_id,
        t.sb.zd("federal").light_agent_role()
    );
    assert!(
        t.zd_user("global", "bo.li@gitlab.com").is_none(),
        "instances are separate"
    );
    assert!(t.sb.group_member(FEDERAL_OKTA, "bo.li@gitlab.com"));
    assert!(!t.sb.group_member(GLOBAL_OKTA, "bo.li@gitlab.com"));
}

async fn light_agent_federal_denied_is_closed_without_provisioning(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = t.file(&fixtures::light_agent_federal_denied()).await;
    t.run().await;
    t.label("mlee", iid, MANAGER).await;
    t.label("people-connect-1", iid, "US-Citizenship::Not Verified")
        .await;
    t.run().await;
    // The plan and its e-mail, then: not confirmed, nothing more, closed.
    for _ in 0..4 {
        t.expect_comment(iid);
    }
    t.expect_state(iid, "closed");
    t.expect_untouched(&["robin.kim@gitlab.com"]);
}

async fn team_tags_add_and_remove_on_existing_accounts(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    t.sb.seed_zendesk(&ZendeskAccount {
        tags: vec!["oem_management_team".into()],
        ..account("Jane Doe", "jane.doe@gitlab.com", "light-agent")
    })
    .unwrap();
    let iid = t
        .file(&Issue::table(
            "jdoe",
            "Zendesk Global tags for Jane",
            &[["Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee"]],
            "- [ ] Zendesk Global: add tag `partner_support_agent`\n- [ ] Zendesk Global: remove tag `oem_management_team`\n",
        ))
        .await;
    t.run().await;
    t.expect_comment(iid);
    t.label("mlee", iid, MANAGER).await;
    t.run().await;
    t.expect_comment(iid);
    assert_eq!(
        t.zd_user("global", "jane.doe@gitlab.com").unwrap().tags,
        vec!["partner_support_agent"]
    );
    t.expect_ticked_count(iid, 2);
}

async fn team_tag_without_an_account_changes_nothing(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = t.file(&fixtures::team_tag_without_an_account()).await;
    t.run().await;
    t.label("mlee", iid, MANAGER).await;
    t.run().await;
    t.expect_comment(iid);
    // A light agent account is needed first.
    t.expect_comment(iid);
    t.expect_untouched(&["mallory@gitlab.com"]);
    t.expect_ticked(iid, &[]);
    t.expect_label(iid, "access-bot::refused");
}

async fn role_change_sets_role_custom_role_and_groups(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    t.sb.seed_zendesk(&ZendeskAccount {
        custom_role: Some("Support Manager".into()),
        groups: vec!["Support AMER".into(), "Support Managers".into()],
        ..account("Alex Chen", "alex.chen@gitlab.com", "agent")
    })
    .unwrap();
    let change = Issue::table(
        "kpatel",
        "Role change: Alex Chen back to Support Engineer",
        &[["Alex Chen", "alex.chen@gitlab.com", "achen", "kpatel"]],
        "- [ ] Zendesk Global: Agent - Support Engineer\n",
    );
    let iid = t.file(&change).await;
    t.run().await;
    t.label("kpatel", iid, MANAGER).await;
    t.run().await;
    // The plan (the role change and the group removed), then: kpatel is both
    // requester and manager, that is self-approval.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.unlabel("kpatel", iid, MANAGER).await;
    // A director listed as approver? Not configured: the system owners can't stand in for the manager either.
    t.sb.gitlab
        .lock()
        .add_user("dir", "Director", "dir@gitlab.com");
    t.expect_no_comment(iid);
    assert_eq!(
        t.custom_role_of("global", "alex.chen@gitlab.com")
            .as_deref(),
        Some("Support Manager"),
        "unchanged so far"
    );

    // Filed by someone else, approved by the manager and an owner.
    let iid2 = t
        .file(
            &change
                .by("achen")
                .titled("Role change: Alex Chen to Support Engineer"),
        )
        .await;
    t.run().await;
    t.label("kpatel", iid2, MANAGER).await;
    t.label("jason", iid2, OWNER).await;
    t.run().await;
    // achen is the subject: a request filed by the subject is fine, approvals by others count.
    t.expect_comment(iid2);
    t.expect_comment(iid2);
    // The first request, its manager's label since removed, says so once more.
    t.expect_comment(iid);
    let u = t.zd_user("global", "alex.chen@gitlab.com").unwrap();
    assert_eq!(
        t.role_name("global", u.custom_role_id).as_deref(),
        Some("Support Engineer")
    );
    assert_eq!(
        t.sb.zd("global").groups_of(u.id),
        vec!["Support AMER", "Support EMEA"]
    );
}

async fn offboarding_reassigns_then_strips_demotes_suspends_and_reports_evidence(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    t.seed_leaver(230); // three bulk batches
    let iid = t.file(&fixtures::offboarding()).await;
    t.run().await;
    // The plan (reassign open tickets, no approval needed), then the evidence
    // table: 230 open tickets to 0, agent to end-user, suspended.
    t.expect_comment(iid);
    t.expect_comment(iid);
    let c = t.zd_user("global", "casey.quinn@gitlab.com").unwrap();
    assert_eq!(
        (c.role.as_str(), c.suspended, c.custom_role_id),
        ("end-user", true, None)
    );
    assert!(c.tags.is_empty() && c.user_fields.is_empty());
    let mlee = t.zd_user("global", "mlee@gitlab.com").unwrap().id;
    assert_eq!(
        t.sb.zd("global").open_tickets_of(mlee),
        230,
        "every ticket went to the manager, none to the bot's admin"
    );
    let admin = t.sb.zd("global").admin_id;
    assert_eq!(t.sb.zd("global").open_tickets_of(admin), 0);
    assert!(!t.sb.group_member(GLOBAL_OKTA, "casey.quinn@gitlab.com"));
    t.expect_ticked_count(iid, 2);
    assert!(
        t.sb.description(iid)
            .contains("- [ ]  @it-ops-1: Remove the team member from Slack")
    );
    // 230 tickets: 3 bulk calls, not 230 calls.
    let k = t.sb.zd_knobs("global");
    assert_eq!(k.count("PUT", "/api/v2/tickets/update_many"), 3);
    // Counted, not listed, for the plan and the evidence (a first page each,
    // then a search count); listed in full once, to move them, and one page
    // more to see none is left.
    let pages = k.count("GET", "/api/v2/users/:id/tickets/assigned");
    let counts = k.count("GET", "/api/v2/search/count");
    assert!(pages <= 3 + 1 + 3, "{pages} pages of the assigned list");
    assert!(counts >= 1);
    // The three jobs in flight together: one look at all of them per poll.
    assert_eq!(k.count("GET", "/api/v2/job_statuses/:job"), 0);
    assert_eq!(k.count("GET", "/api/v2/job_statuses/show_many"), 2);
}

async fn offboarding_stops_before_demoting_when_the_manager_cannot_take_tickets(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    t.seed_leaver(4);
    // The manager is a light agent: cannot be an assignee.
    {
        let mut w = t.sb.zd("global");
        let light = w.light_agent_role();
        let m = w.user_mut_by_email("mlee@gitlab.com").unwrap();
        m.custom_role_id = light;
    }
    let iid = t.file(&fixtures::offboarding()).await;
    t.run().await;
    // The plan says the manager cannot take the tickets; the result is partly
    // done, stopped before demoting.
    t.expect_comment(iid);
    t.expect_comment(iid);
    let c = t.zd_user("global", "casey.quinn@gitlab.com").unwrap();
    assert_eq!(c.role, "agent", "not demoted");
    assert!(!c.suspended);
    assert_eq!(t.sb.zd("global").open_tickets_of(c.id), 4);
    t.expect_label(iid, "access-bot::failed");
}

async fn bulk_request_reports_per_subject(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let bulk = Issue::table(
        "mlee",
        "Bulk Access, Zendesk Global",
        &[
            ["Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee"],
            ["Bo Li", "bo.li@gitlab.com", "bli", "mlee"],
        ],
        "- [ ] Zendesk Global: Light Agent\n",
    );
    let iid = t.file(&bulk).await;
    t.run().await;
    t.label("mlee", iid, MANAGER).await; // requester: does not count
    t.unlabel("mlee", iid, MANAGER).await;
    t.label("lyle", iid, OWNER).await;
    t.sb.gitlab.lock().add_user("kim", "Kim", "kim@gitlab.com");
    t.run().await;
    // The plan for Jane and Bo; then the manager's label, applied then removed.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_untouched(&["jane.doe@gitlab.com", "bo.li@gitlab.com"]);
    // A bulk special request approved by the manager (not the requester this time) and an owner.
    let iid2 = t.file(&bulk.by("lyle")).await;
    t.run().await;
    t.label("mlee", iid2, MANAGER).await;
    t.label("jason", iid2, OWNER).await;
    t.run().await;
    // The plan, then a result per subject.
    t.expect_comment(iid2);
    t.expect_comment(iid2);
    assert!(
        t.zd_user("global", "jane.doe@gitlab.com").is_some()
            && t.zd_user("global", "bo.li@gitlab.com").is_some()
    );
}

// ---------------------------------------------------------------- security

/// A special request by jdoe for herself, plan posted and read.
async fn special_for_jane(t: &mut Tester) -> u64 {
    let iid = t.file(&fixtures::jane_support_engineer()).await;
    t.run().await;
    t.expect_comment(iid);
    iid
}

async fn security_self_approval_by_requester_or_subject(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = special_for_jane(&mut t).await;
    t.label("jdoe", iid, MANAGER).await;
    t.label("lyle", iid, OWNER).await;
    t.run().await;
    // Applied by `@jdoe`: self-approval does not count.
    t.expect_comment(iid);
    t.expect_untouched(&["jane.doe@gitlab.com"]);
    // The subject approving a request someone else filed for them is self-approval too.
    let iid2 = t
        .file(&Issue::table(
            "mlee",
            "Bo Li, Zendesk Global, Support Engineer",
            &[["Bo Li", "bo.li@gitlab.com", "bli", "bli"]],
            "- [ ] Zendesk Global: Agent - Support Engineer\n",
        ))
        .await;
    // Even were the company directory wrong about Bo's manager.
    t.sb.google
        .lock()
        .managers
        .insert("bo.li@gitlab.com".into(), "bo.li@gitlab.com".into());
    t.run().await;
    t.label("bli", iid2, MANAGER).await;
    t.label("lyle", iid2, OWNER).await;
    t.run().await;
    t.expect_comment(iid2);
    t.expect_comment(iid2);
    t.expect_untouched(&["bo.li@gitlab.com"]);
}

async fn security_approval_by_someone_not_authorised(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = special_for_jane(&mut t).await;
    t.label("mallory", iid, MANAGER).await;
    t.label("mallory", iid, OWNER).await;
    t.run().await;
    // Applied by `@mallory`, who is not an authorised approver.
    t.expect_comment(iid);
    t.expect_untouched(&["jane.doe@gitlab.com"]);
}

async fn security_approval_removed_again(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = special_for_jane(&mut t).await;
    t.label("lyle", iid, OWNER).await;
    t.label("mlee", iid, MANAGER).await;
    t.unlabel("mlee", iid, MANAGER).await;
    t.run().await;
    // Applied, then removed by `@mlee`.
    t.expect_comment(iid);
    t.expect_untouched(&["jane.doe@gitlab.com"]);
}

async fn security_description_edited_after_approval(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = special_for_jane(&mut t).await;
    t.label("mlee", iid, MANAGER).await;
    t.label("lyle", iid, OWNER).await;
    // Same meaning, different words after the approval: still voided (text edit by a person).
    let edited =
        t.sb.description(iid)
            .replace("Support Engineer\n", "Support Engineer \n");
    t.edit("jdoe", iid, &edited).await;
    t.run().await;
    // Changed by `@jdoe` after the approval: approve again.
    t.expect_comment(iid);
    t.expect_untouched(&["jane.doe@gitlab.com"]);
    // Changing what is asked for posts a new plan that says earlier approvals no longer apply.
    let bigger =
        t.sb.description(iid)
            .replace("Support Engineer", "Support Manager");
    t.edit("jdoe", iid, &bigger).await;
    t.run().await;
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    t.expect_untouched(&["jane.doe@gitlab.com"]);
}

async fn security_entitlement_not_from_the_automation_or_edited(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let forged = t
        .file(&fixtures::role_based_entitlement().by("mallory"))
        .await;
    let genuine = t
        .file(
            &fixtures::role_based_entitlement()
                .replace("Sam Rivera", "Bo Li")
                .replace("sam.rivera", "bo.li")
                .replace("srivera", "bli"),
        )
        .await;
    // Someone edits the genuine one before the bot sees it.
    let edited =
        t.sb.description(genuine)
            .replace("Support Engineer", "Support Manager");
    t.edit("mallory", genuine, &edited).await;
    t.run().await;
    // Will not act: only trusted when filed by the automation, not `@mallory`.
    t.expect_comment(forged);
    // The genuine one, changed by someone else, is no longer pre-approved: it
    // needs the approvals any such request needs.
    t.expect_comment(genuine);
    t.expect_untouched(&["sam.rivera@gitlab.com", "bo.li@gitlab.com"]);
}

async fn security_offboarding_not_from_the_automation(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    t.seed_leaver(2);
    let iid = t.file(&fixtures::offboarding().by("mallory")).await;
    t.run().await;
    // Will not act: only trusted when filed by the automation.
    t.expect_comment(iid);
    let c = t.zd_user("global", "casey.quinn@gitlab.com").unwrap();
    assert_eq!((c.role.as_str(), c.suspended), ("agent", false));
}

async fn security_emails_outside_the_allowed_domains(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let mut iids = vec![];
    for e in [
        "jane@gitlab.com.evil.io",
        "jane@evil-gitlab.com",
        "jane@gitlab.com@evil.io",
        "jane@gitlаb.com",
        "jane@gitlab.com.",
    ] {
        let issue = Issue::table(
            "jdoe",
            "Zendesk Global light agent",
            &[["Jane Doe", e, "jdoe", "mlee"]],
            "- [ ] Zendesk Global: Light Agent\n",
        );
        iids.push(t.file(&issue).await);
    }
    t.run().await;
    // Each: cannot read this request, saying what is wrong with the address.
    for iid in iids {
        t.expect_comment(iid);
    }
    assert_eq!(
        t.sb.zd("global").users.len(),
        3,
        "only the admin and the two managers"
    );
    assert!(t.sb.group_members(GLOBAL_OKTA).is_empty());
}

async fn security_role_outside_the_table(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = t
        .file(&Issue::table(
            "jdoe",
            "Jane Doe, Zendesk Global, Admin",
            &[["Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee"]],
            "- [ ] Zendesk Global: Admin\n",
        ))
        .await;
    t.run().await;
    t.label("mlee", iid, MANAGER).await;
    t.label("lyle", iid, OWNER).await;
    t.run().await;
    // Not in the configured table, which lists the roles there are.
    t.expect_comment(iid);
    t.expect_untouched(&["jane.doe@gitlab.com"]);
}

async fn security_federal_without_or_with_forged_verification(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = t.file(&fixtures::light_agent_federal()).await;
    t.run().await;
    t.label("mlee", iid, MANAGER).await;
    t.run().await;
    assert!(
        t.zd_user("federal", "bo.li@gitlab.com").is_none(),
        "no verification, no access"
    );
    t.label("mallory", iid, VERIFIED).await;
    t.run().await;
    // The plan and its e-mail, then: applied by `@mallory`, who is not an
    // authorised approver.
    for _ in 0..4 {
        t.expect_comment(iid);
    }
    t.expect_untouched(&["bo.li@gitlab.com"]);
}

async fn security_mentions_and_markdown_in_names_are_escaped(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = t
        .file(&Issue::table(
            "jdoe",
            "Zendesk Global, Support Engineer",
            &[[
                "@all [click](http://evil)",
                "jane.doe@gitlab.com",
                "jdoe",
                "mlee",
            ]],
            "- [ ] Zendesk Global: Agent - Support Engineer\n/close\n",
        ))
        .await;
    t.run().await;
    // Cannot read this request; the name is quoted as `@all click`.
    let c = t.expect_comment(iid);
    // Outside code spans there is no @all, and no line starts with a quick action.
    let outside: String = c.body.split('`').step_by(2).collect();
    assert!(!outside.contains("@all"), "{}", c.body);
    assert!(!c.body.lines().any(|l| l.trim_start().starts_with('/')));
    t.expect_untouched(&["jane.doe@gitlab.com"]);
    t.expect_state(iid, "opened");
}

// ---------------------------------------------------------------- the loop

async fn waiting_issue_gets_one_comment_and_nothing_on_later_cycles(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = special_for_jane(&mut t).await;
    t.sb.clear_logs();
    for _ in 0..3 {
        let r = t.bot.cycle().await;
        assert!(r.outcomes.is_empty(), "{:?}", r.outcomes);
    }
    t.expect_no_comment(iid);
    // Idle cycles cost one listing request each, nothing else.
    assert_eq!(
        t.sb.gitlab_knobs.total(),
        3,
        "{:?}",
        t.sb.gitlab_knobs.counts()
    );
    assert_eq!(t.sb.zd_knobs("global").total(), 0);
}

/// The status page lists the waiting issues, then reads each one's label
/// events: an approval applied in between is shown as one, never as a
/// renamed label.
#[tokio::test]
async fn the_status_page_does_not_show_an_approval_given_while_it_reads_as_renamed() {
    let mut t = crate::tester!(GroupBackend::Google).await;
    let iid = t.file(&fixtures::special_request()).await;
    t.run().await;
    t.expect_comment(iid);
    t.label("mlee", iid, MANAGER).await;
    {
        let mut w = t.sb.gitlab.lock();
        let lyle = w.user_by_name("lyle").unwrap().id;
        w.labels_on_events_read.push((
            access_bot::sandbox::PROJECT.to_string(),
            iid,
            lyle,
            OWNER.to_string(),
        ));
    }
    let report = t.bot.status().await;
    assert!(
        t.sb.gitlab.lock().labels_on_events_read.is_empty(),
        "the race happened"
    );
    let row = report
        .groups
        .iter()
        .flat_map(|g| g.rows.iter())
        .find(|r| r.iid == iid)
        .expect("the issue is on the page");
    let shown = format!("{:?}", row.waiting_for);
    assert!(!shown.contains("renamed"), "{shown}");
    assert!(
        row.waiting_for.iter().all(|a| a.label != OWNER),
        "the owner's approval is shown as missing: {shown}"
    );
}

/// Approvals given while the bot works from a listing read just before:
/// the label events it reads next show them, the listed labels do not. The
/// bot must decide on one view of the issue: an approval bound to its
/// label's id is not a renamed label because an older read lacks its name
/// (a false security alarm on the issue and to ops, seen in the crash test
/// with a real process on a loaded machine).
#[tokio::test]
async fn approvals_given_after_the_listing_are_not_taken_for_renamed_labels() {
    let mut t = crate::tester!(GroupBackend::Google).await;
    let iid = t.file(&fixtures::light_agent_federal()).await;
    t.run().await;
    // The plan, the e-mail announced and sent.
    let kinds = |c: &[access_bot::sandbox::harness::Comment]| {
        c.iter()
            .map(|c| {
                c.marker
                    .as_ref()
                    .map(|m| m.kind.clone())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(&t.read_all(iid)), ["plan", "email", "email"]);
    let before = t.sb.bot_comments(iid).len();
    // The poll lists the issue; then the manager and the People team answer.
    let listed = t
        .bot
        .gitlab
        .issue(access_bot::sandbox::PROJECT, iid)
        .await
        .unwrap();
    t.label("mlee", iid, MANAGER).await;
    t.label("people-connect-1", iid, VERIFIED).await;
    t.bot
        .process_listed(access_bot::sandbox::PROJECT, iid, Some(listed))
        .await;
    t.run().await;
    // Provisioned, with the result only: no "waiting" note, no ops notice.
    let after = t.read_all(iid);
    assert_eq!(
        kinds(&after[before..]),
        ["result"],
        "{}",
        after[before..]
            .iter()
            .map(|c| c.body.as_str())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    assert!(t.sb.slack.texts().is_empty(), "{:?}", t.sb.slack.texts());
    assert!(t.zd_user("federal", "bo.li@gitlab.com").is_some());
    t.expect_label(iid, "access-bot::done");
}

async fn idle_poll_over_a_thousand_untouched_issues_is_one_request(b: GroupBackend) {
    let t = crate::tester!(b).await;
    {
        let mut w = t.sb.gitlab.lock();
        let author = w.user_by_name("jdoe").unwrap().id;
        for i in 0..1000 {
            w.create_issue(
                access_bot::sandbox::PROJECT,
                author,
                &format!("Unrelated {i}"),
                "x",
                &["support::to do".to_string()],
                false,
            );
        }
    }
    t.run().await;
    // Nothing changes for longer than the overlap (2 s in the sandbox) plus
    // a second (GitLab's `Date`, the listing's time, is in whole seconds):
    // the first poll after that still covers the window, every later one is
    // idle. With only the overlap, a fast machine saw the window again.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    t.bot.cycle().await;
    for _ in 0..3 {
        t.sb.clear_logs();
        let r = t.bot.cycle().await;
        assert!(r.outcomes.is_empty());
        assert_eq!(
            t.sb.gitlab_knobs.total(),
            1,
            "{:?}",
            t.sb.gitlab_knobs.counts()
        );
    }
}

async fn running_twice_or_restarting_without_the_database_changes_nothing(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = t.file(&fixtures::role_based_entitlement()).await;
    t.run().await;
    t.expect_comment(iid);
    t.expect_comment(iid);
    let before = t.sb.zd("global").users.len();
    // A new bot with an empty database (as if the file were deleted): the issue decides.
    t.restart().await;
    t.sb.clear_logs();
    t.run().await;
    t.expect_no_comment(iid);
    assert_eq!(t.sb.zd("global").users.len(), before);
    assert_eq!(
        t.sb.zd_knobs("global")
            .count("POST", "/api/v2/users/create_or_update"),
        0
    );
    assert_eq!(
        t.sb.gitlab_knobs
            .count("POST", "/api/v4/projects/:project/issues/:id/notes"),
        0
    );
}

async fn a_crash_between_any_two_steps_ends_in_the_same_state_without_duplicates(b: GroupBackend) {
    // Fail each write in turn (Zendesk, Google, GitLab comment, GitLab edit): the first
    // run stops there, the restarted bot finishes, and the end state is the same.
    for (server, route) in [
        ("zendesk", "POST /api/v2/group_memberships"),
        ("zendesk", "PUT /api/v2/users"),
        ("zendesk", "PUT /api/v2/tickets/update_many"),
        ("groups", "DELETE"),
        ("gitlab", "POST /api/v4/projects"),
        ("gitlab", "PUT /api/v4/projects"),
    ] {
        let mut t = crate::tester!(b).await;
        t.seed_leaver(3);
        let iid = t.file(&fixtures::offboarding()).await;
        let entitlement = t.file(&fixtures::role_based_entitlement()).await;
        let (knobs, route) = match server {
            "zendesk" => (t.sb.zd_knobs("global").clone(), route.to_string()),
            // The membership removal, in whichever directory holds the group.
            "groups" => (t.sb.group_knobs().clone(), t.sb.group_write_route(route)),
            _ => (t.sb.gitlab_knobs.clone(), route.to_string()),
        };
        let route = route.as_str();
        knobs.fail_next(
            route,
            100,
            access_bot::sandbox::faults::Failure::Status(500),
        );
        t.restart().await;
        let r = t.bot.cycle().await;
        assert!(
            r.outcomes.iter().any(|(_, _, o)| o.is_failure()) || !r.errors.is_empty(),
            "{route}: {r:?}"
        );
        knobs.clear_faults();
        t.restart().await;
        t.run_for(4).await;
        let c = t.zd_user("global", "casey.quinn@gitlab.com").unwrap();
        assert_eq!(
            (c.role.as_str(), c.suspended),
            ("end-user", true),
            "{route}"
        );
        assert!(
            t.zd_user("global", "sam.rivera@gitlab.com").is_some(),
            "{route}"
        );
        // Whatever the failed run said (it depends on where it stopped), one result each.
        let done = |cs: Vec<access_bot::sandbox::harness::Comment>| {
            cs.iter()
                .filter(|c| c.body.contains("access-bot: done"))
                .count()
        };
        assert_eq!(done(t.read_all(iid)), 1, "{route}: one result comment");
        assert_eq!(
            done(t.read_all(entitlement)),
            1,
            "{route}: one result comment on the entitlement"
        );
        t.expect_ticked_count(iid, 2);
        t.expect_ticked_count(entitlement, 2);
    }
}

async fn daemon_and_one_shot_together_do_not_double_process(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    for _ in 0..3 {
        t.file(&fixtures::light_agent_global()).await;
    }
    t.seed_leaver(120);
    t.file(&fixtures::offboarding()).await;
    let dir = std::env::temp_dir().join(format!("ab-shared-{}.db", rand::random::<u32>()));
    let a =
        t.sb.bot_with_store(std::sync::Arc::new(
            access_bot::store::Store::open(&dir).unwrap(),
        ))
        .await
        .unwrap();
    let b =
        t.sb.bot_with_store(std::sync::Arc::new(
            access_bot::store::Store::open(&dir).unwrap(),
        ))
        .await
        .unwrap();
    let (ra, rb) = tokio::join!(a.cycle(), b.cycle());
    let busy = ra
        .outcomes
        .iter()
        .chain(rb.outcomes.iter())
        .filter(|(_, _, o)| *o == Outcome::Busy)
        .count();
    run_until_quiet(&a, 3).await;
    // Which bot said what depends on the race: the test counts the results.
    for iid in 1..=4 {
        let done = t
            .read_all(iid)
            .into_iter()
            .filter(|c| c.body.contains("access-bot: done"))
            .count();
        assert_eq!(done, 1, "#{iid}: exactly one result");
    }
    // Each create and each bulk reassignment happened once.
    assert_eq!(
        t.sb.zd_knobs("global")
            .count("PUT", "/api/v2/tickets/update_many"),
        2
    );
    let _ = busy;
    let _ = std::fs::remove_file(&dir);
}

async fn webhook_reacts_without_waiting_for_the_poll_and_rejects_bad_tokens(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let metrics = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
    let secret = access_bot::secret::Secret::new("hook-secret");
    let (addr, _task) = access_bot::bot::run::serve_web(
        "127.0.0.1:0",
        Some(secret),
        "access-bot",
        vec![access_bot::sandbox::PROJECT.into()],
        tx,
        metrics,
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let payload = serde_json::json!({"object_kind": "issue", "project": {"path_with_namespace": access_bot::sandbox::PROJECT}, "object_attributes": {"iid": 1}});
    for token in [None, Some("wrong")] {
        let mut rb = http
            .post(format!("http://{addr}/webhook"))
            .header("X-Gitlab-Event", "Issue Hook")
            .json(&payload);
        if let Some(t) = token {
            rb = rb.header("X-Gitlab-Token", t);
        }
        assert_eq!(rb.send().await.unwrap().status(), 401);
    }
    assert!(rx.try_recv().is_err());
    // GitLab (the sandbox) delivers hooks to us for real.
    t.sb.gitlab
        .lock()
        .hooks
        .push(access_bot::sandbox::gitlab::Hook {
            url: format!("http://{addr}/webhook"),
            token: "hook-secret".into(),
        });
    let iid = t.file(&fixtures::light_agent_global()).await;
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event,
        access_bot::bot::Event::Issue {
            project: access_bot::sandbox::PROJECT.into(),
            iid
        }
    );
    let start = std::time::Instant::now();
    t.bot.handle(event).await;
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
    assert!(t.zd_user("global", "jane.doe@gitlab.com").is_some());
    // The self-service plan and its result, from the one event.
    t.expect_comment(iid);
    t.expect_comment(iid);
    // The public webhook listener serves nothing else: the operations
    // endpoints live on their own, private listener (tests/ops.rs).
    for path in ["/healthz", "/metrics"] {
        assert_eq!(
            http.get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap()
                .status(),
            404,
            "{path}"
        );
    }
    // Prometheus counters: API calls by system and steps by outcome are there.
    let m = access_bot::metrics::render();
    for needle in [
        "access_bot_api_calls_total{system=\"gitlab\",result=\"ok\"}",
        "access_bot_api_calls_total{system=\"zendesk.global\",result=\"ok\"}",
        match b {
            GroupBackend::Google => "access_bot_api_calls_total{system=\"google\",result=\"ok\"}",
            _ => "access_bot_api_calls_total{system=\"okta\",result=\"ok\"}",
        },
        "access_bot_steps_total{outcome=\"ok\"}",
    ] {
        assert!(m.contains(needle), "{needle} missing:\n{m}");
    }
}

async fn dry_run_reads_and_plans_but_writes_nothing(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = t.file(&fixtures::role_based_entitlement()).await;
    t.bot.rehearse().unwrap();
    t.sb.clear_logs();
    let r = t.bot.cycle().await;
    // What it would have written on the issue: the plan, as it would post it.
    let Outcome::Planned(would) = &r.outcomes[0].2 else {
        panic!("{:?}", r.outcomes);
    };
    assert!(would.starts_with("comment:\n"), "{would}");
    assert!(
        would.contains("create the account as Support Engineer"),
        "{would}"
    );
    t.expect_no_comment(iid);
    let writes = t.sb.writes();
    assert!(writes.is_empty(), "a dry run wrote: {writes:?}");
}

/// A dry run of an approved request goes as far as a real one would: every
/// step past its checks, the result and the ticks, shown and not made; and
/// it leaves the state database as it found it, so the real run after it
/// still acts.
async fn dry_run_of_an_approved_request_shows_each_write_and_makes_none(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = t.file(&fixtures::special_request()).await;
    t.run().await;
    t.expect_comment(iid);
    t.label("mlee", iid, MANAGER).await;
    t.label("lyle", iid, OWNER).await;
    t.restart().await;
    t.bot.rehearse().unwrap();
    t.sb.clear_logs();
    let r = t.bot.cycle().await;
    let Some((_, _, Outcome::Planned(would))) = r.outcomes.iter().find(|o| o.1 == iid) else {
        panic!("{:?}", r.outcomes);
    };
    for expected in [
        "global: robin.kim@gitlab.com: create the account as Support Engineer",
        "global: robin.kim@gitlab.com: add to group Support AMER",
        "comment:\n",
        "tick `Zendesk Global: Agent - Support Engineer`",
    ] {
        assert!(would.contains(expected), "{expected:?} missing:\n{would}");
    }
    let writes = t.sb.writes();
    assert!(writes.is_empty(), "a dry run wrote: {writes:?}");
    assert!(t.zd_user("global", "robin.kim@gitlab.com").is_none());
    t.expect_no_comment(iid);
    // The real run after it finds the issue changed and acts.
    t.restart().await;
    t.run().await;
    t.expect_comment(iid);
    assert_eq!(
        t.custom_role_of("global", "robin.kim@gitlab.com")
            .as_deref(),
        Some("Support Engineer")
    );
    t.expect_ticked(iid, &["Zendesk Global: Agent - Support Engineer"]);
}

async fn audit_trail_answers_who_gave_this_person_access_and_who_approved(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let iid = t.file(&fixtures::special_request()).await;
    t.run().await;
    t.label("mlee", iid, MANAGER).await;
    t.label("lyle", iid, OWNER).await;
    t.run().await;
    // The plan and the result (as in the special request's own test).
    t.expect_comment(iid);
    t.expect_comment(iid);
    let rows = t
        .bot
        .store
        .audit_rows(&access_bot::store::AuditQuery {
            subject: Some("Robin.Kim@gitlab.com".into()),
            ..Default::default()
        })
        .unwrap();
    let actions: Vec<&str> = rows
        .iter()
        .map(|r| r.action.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "create_agent",
            "add_to_group:Support AMER",
            "add_to_group:Support EMEA",
            "add_google_member:okta-zendeskglobal-users@gitlab.com"
        ]
    );
    assert!(rows.iter().all(|r| r.iid == iid && r.outcome == "ok"));
    assert!(
        rows[0].approvers.contains("mlee@") && rows[0].approvers.contains("lyle@"),
        "{}",
        rows[0].approvers
    );
    assert!(rows[0].after.contains("created"));
    let table = access_bot::cli::render_audit(&rows, access_bot::cli::LogOutput::Table);
    assert!(table.contains("robin.kim@gitlab.com") && table.contains("create_agent"));
    let json = access_bot::cli::render_audit(&rows, access_bot::cli::LogOutput::Json);
    assert_eq!(json.lines().count(), 4);
    for l in json.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["subject"], "robin.kim@gitlab.com");
    }
    assert!(
        t.bot
            .store
            .audit_rows(&access_bot::store::AuditQuery {
                iid: Some(iid + 100),
                ..Default::default()
            })
            .unwrap()
            .is_empty()
    );
}

async fn stale_requests_get_one_reminder_then_are_closed(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    let tag = Issue::table(
        "jdoe",
        "Zendesk Global tag",
        &[["Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee"]],
        "- [ ] Zendesk Global: add tag `partner_support_agent`\n",
    );
    // Filed 40 days ago (closed after 30) and 10 days ago (reminder after 7);
    // the sandbox's clock only moves forward, so the older one first.
    t.sb.gitlab.lock().clock_offset = -chrono::Duration::days(40);
    let older = t.file(&tag).await;
    t.sb.gitlab.lock().clock_offset = -chrono::Duration::days(10);
    let old = t.file(&tag).await;
    t.sb.gitlab.lock().clock_offset = chrono::Duration::zero();
    t.restart().await;
    t.run().await;
    // The plan with a reminder naming `@mlee` and how long it has waited.
    t.expect_comment(old);
    t.expect_no_comment(old);
    t.expect_state(old, "opened");
    // The plan, saying it is closed: no approval after 30 days, reopen to go on.
    t.expect_comment(older);
    t.expect_no_comment(older);
    t.expect_state(older, "closed");
    // A restarted bot (its hourly scan runs at once) does not remind twice.
    t.restart().await;
    t.run().await;
    t.expect_no_comment(old);
    t.expect_no_comment(older);
}

async fn time_bound_access_is_reminded_then_revoked_exactly(b: GroupBackend) {
    let mut t = crate::tester!(b).await;
    // Jane is a light agent with a tag the bot did not grant; Bo has no account.
    t.sb.seed_zendesk(&ZendeskAccount {
        tags: vec!["oem_management_team".into()],
        ..account("Jane Doe", "jane.doe@gitlab.com", "light-agent")
    })
    .unwrap();
    let expires = (chrono::Utc::now() + chrono::Duration::days(10)).date_naive();
    let iid = t
        .file(&Issue::table(
            "jdoe",
            "Temporary Zendesk Global access",
            &[
                ["Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee"],
                ["Bo Li", "bo.li@gitlab.com", "bli", "mlee"],
            ],
            &format!(
                "Expires: {expires}\n\n- [ ] Zendesk Global: Light Agent, add tag `partner_support_agent`\n- [ ] Access revoked on expiry\n"
            ),
        ))
        .await;
    t.run().await;
    t.label("mlee", iid, MANAGER).await;
    t.label("jason", iid, OWNER).await;
    t.run().await;
    // The plan says when it is revoked.
    t.expect_comment(iid);
    // Before the first write: what will be taken back, from the accounts as
    // they were (Bo demoted to end-user, the tag removed).
    t.expect_comment(iid);
    // Done, time-bound.
    t.expect_comment(iid);
    assert!(
        t.zd_user("global", "jane.doe@gitlab.com")
            .unwrap()
            .tags
            .contains(&"partner_support_agent".to_string())
    );
    assert!(t.sb.group_member(GLOBAL_OKTA, "bo.li@gitlab.com"));

    // Eight days later: one reminder of what expires.
    t.bot.clock.set_offset(chrono::Duration::days(8));
    t.run().await;
    t.run().await;
    t.expect_comment(iid);
    t.expect_no_comment(iid);

    // On the date: exactly what was granted goes away.
    t.bot.clock.set_offset(chrono::Duration::days(10));
    t.run().await;
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    let jane = t.zd_user("global", "jane.doe@gitlab.com").unwrap();
    assert_eq!(
        jane.tags,
        vec!["oem_management_team"],
        "the tag the bot did not grant stays"
    );
    assert_eq!(
        jane.custom_role_id,
        t.sb.zd("global").light_agent_role(),
        "Jane stays the light agent she was"
    );
    let bo = t.zd_user("global", "bo.li@gitlab.com").unwrap();
    assert_eq!(bo.role, "end-user", "Bo had no account: back to no seat");
    assert!(!t.sb.group_member(GLOBAL_OKTA, "bo.li@gitlab.com"));
    assert!(
        !t.sb.group_member(GLOBAL_OKTA, "jane.doe@gitlab.com"),
        "this request granted Jane's Okta membership"
    );
    assert!(
        t.sb.ticked(iid)
            .contains(&"Access revoked on expiry".to_string())
    );
    // Nothing more happens later.
    t.bot.clock.set_offset(chrono::Duration::days(20));
    t.run().await;
    t.expect_no_comment(iid);
}

/// The tester fails a test that leaves a bot comment unread.
#[tokio::test]
#[should_panic(expected = "bot comments the test never read")]
async fn an_unread_bot_comment_fails_the_test() {
    let mut t = crate::tester!(GroupBackend::Google).await;
    let iid = t.file(&fixtures::role_based_entitlement()).await;
    t.run().await;
    // The plan is read, the result is not.
    t.expect_comment(iid);
}

/// Every workflow runs with each group directory holding the instances' app
/// groups: Google Groups, and Okta (through an OAuth service app).
macro_rules! with_each_backend {
    ($($name:ident),* $(,)?) => {
        mod google {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::GroupBackend::Google).await
            })*
        }
        mod okta {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::GroupBackend::Okta).await
            })*
        }
    };
}

with_each_backend!(
    entitlement_creates_the_agent_with_role_groups_and_okta,
    special_request_plans_then_waits_for_both_approvals_then_acts,
    light_agent_global_covers_all_four_starting_points,
    light_agent_federal_waits_for_verification_then_provisions,
    light_agent_federal_denied_is_closed_without_provisioning,
    team_tags_add_and_remove_on_existing_accounts,
    team_tag_without_an_account_changes_nothing,
    role_change_sets_role_custom_role_and_groups,
    offboarding_reassigns_then_strips_demotes_suspends_and_reports_evidence,
    offboarding_stops_before_demoting_when_the_manager_cannot_take_tickets,
    bulk_request_reports_per_subject,
    security_self_approval_by_requester_or_subject,
    security_approval_by_someone_not_authorised,
    security_approval_removed_again,
    security_description_edited_after_approval,
    security_entitlement_not_from_the_automation_or_edited,
    security_offboarding_not_from_the_automation,
    security_emails_outside_the_allowed_domains,
    security_role_outside_the_table,
    security_federal_without_or_with_forged_verification,
    security_mentions_and_markdown_in_names_are_escaped,
    waiting_issue_gets_one_comment_and_nothing_on_later_cycles,
    idle_poll_over_a_thousand_untouched_issues_is_one_request,
    running_twice_or_restarting_without_the_database_changes_nothing,
    a_crash_between_any_two_steps_ends_in_the_same_state_without_duplicates,
    daemon_and_one_shot_together_do_not_double_process,
    webhook_reacts_without_waiting_for_the_poll_and_rejects_bad_tokens,
    dry_run_reads_and_plans_but_writes_nothing,
    dry_run_of_an_approved_request_shows_each_write_and_makes_none,
    audit_trail_answers_who_gave_this_person_access_and_who_approved,
    stale_requests_get_one_reminder_then_are_closed,
    time_bound_access_is_reminded_then_revoked_exactly,
);
