//! Every workflow of the seeds and every security scenario, end to end
//! against the sandbox over HTTP: from the issue a person files to the final
//! state in Zendesk, Google and on the issue.
//!
//! Each test reads every comment the bot wrote (`Seen::expect`); `Seen::done`
//! fails the test if the bot wrote a comment the test did not look at.

use access_bot::bot::{Bot, Outcome};
use access_bot::demo::bodies;
use access_bot::sandbox::harness::{Comment, run_until_quiet};
use access_bot::sandbox::scenario::ZendeskAccount;
use access_bot::sandbox::{GroupBackend, Ports, Sandbox};

const GLOBAL_OKTA: &str = "okta-zendeskglobal-users@gitlab.com";
const FEDERAL_OKTA: &str = "okta-zendeskfederal-users@gitlab.com";
const MANAGER: &str = "AR-Approval::Manager Approved";
const OWNER: &str = "Zendesk::System Owner Approved";
const TABLE: &str = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n";

/// Comments the test has looked at.
struct Seen {
    iid: u64,
    count: usize,
}

impl Seen {
    fn new(iid: u64) -> Seen {
        Seen { iid, count: 0 }
    }
    /// The next unread bot comment; it must contain every needle.
    fn expect(&mut self, sb: &Sandbox, needles: &[&str]) -> Comment {
        let all = sb.bot_comments(self.iid);
        let c = all
            .get(self.count)
            .unwrap_or_else(|| {
                panic!(
                    "expected bot comment #{} on #{}, found {}",
                    self.count + 1,
                    self.iid,
                    all.len()
                )
            })
            .clone();
        for n in needles {
            assert!(
                c.body.contains(n),
                "comment on #{} lacks {n:?}:\n{}",
                self.iid,
                c.body
            );
        }
        self.count += 1;
        c
    }
    /// No comment the test has not read.
    fn done(&self, sb: &Sandbox) {
        let all = sb.bot_comments(self.iid);
        assert_eq!(
            all.len(),
            self.count,
            "unread bot comments on #{}:\n{}",
            self.iid,
            all[self.count.min(all.len())..]
                .iter()
                .map(|c| c.body.as_str())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
    }
}

fn body(name: &str) -> (&'static str, &'static str, Vec<&'static str>, String) {
    let (_, author, title, labels, body) = bodies()
        .into_iter()
        .find(|b| b.0 == name)
        .expect("demo body");
    (author, title, labels, body)
}

async fn file(sb: &Sandbox, name: &str) -> u64 {
    let (author, title, labels, body) = body(name);
    sb.file_issue(author, title, &labels, &body).await.unwrap()
}

async fn start(b: GroupBackend) -> (Sandbox, Bot) {
    let sb = Sandbox::start_with(Ports::default(), b).await.unwrap();
    let bot = sb.bot().await.unwrap();
    (sb, bot)
}

fn zd(sb: &Sandbox, inst: &str, email: &str) -> Option<access_bot::sandbox::zendesk::ZdUser> {
    sb.zd(inst).user_by_email(email).cloned()
}

fn role_name(sb: &Sandbox, inst: &str, id: Option<u64>) -> Option<String> {
    let w = sb.zd(inst);
    id.and_then(|id| {
        w.custom_roles
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.name.clone())
    })
}

/// Nothing changed in Zendesk or Google for these addresses.
fn untouched(sb: &Sandbox, emails: &[&str]) {
    for e in emails {
        for inst in ["global", "federal"] {
            assert!(zd(sb, inst, e).is_none(), "{e} got an account in {inst}");
        }
        assert!(
            !sb.group_member(GLOBAL_OKTA, e) && !sb.group_member(FEDERAL_OKTA, e),
            "{e} got an Okta group"
        );
    }
}

// ---------------------------------------------------------------- workflows

async fn entitlement_creates_the_agent_with_role_groups_and_okta(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let iid = file(&sb, "role-based entitlement").await;
    run_until_quiet(&bot, 4).await;
    let mut seen = Seen::new(iid);
    // The plan first (the record of what is approved), then what was done.
    seen.expect(
        &sb,
        &[
            "access-bot plan: role-based entitlement",
            "pre-approved by the template of a trusted automation",
        ],
    );
    seen.expect(
        &sb,
        &[
            "access-bot: done",
            "create the account as Support Engineer",
            "add to group Support AMER",
        ],
    );
    seen.done(&sb);
    let u = zd(&sb, "global", "sam.rivera@gitlab.com").unwrap();
    assert_eq!(
        role_name(&sb, "global", u.custom_role_id).as_deref(),
        Some("Support Engineer")
    );
    assert_eq!(
        sb.zd("global").groups_of(u.id),
        vec!["Support AMER", "Support EMEA"]
    );
    assert!(sb.group_member(GLOBAL_OKTA, "sam.rivera@gitlab.com"));
    // The Google item and the Zendesk item are ticked; Slack's is left alone.
    assert_eq!(sb.ticked(iid).len(), 2);
    assert!(sb.description(iid).contains("* [ ]  `Slack`"));
    assert!(sb.labels(iid).contains(&"access-bot::done".into()));
}

async fn special_request_plans_then_waits_for_both_approvals_then_acts(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let iid = file(&sb, "special request").await;
    let mut seen = Seen::new(iid);
    run_until_quiet(&bot, 3).await;
    seen.expect(
        &sb,
        &[
            "access-bot plan: special request",
            "`AR-Approval::Manager Approved` by the manager (`@mlee`): not applied yet",
            "Zendesk::System Owner Approved",
        ],
    );
    assert!(sb.labels(iid).contains(&"access-bot::waiting".into()));
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    // One approval is not enough, and a missing approval that is simply not applied yet
    // is not worth another comment.
    assert!(zd(&sb, "global", "robin.kim@gitlab.com").is_none());
    seen.done(&sb);
    sb.add_label("lyle", iid, OWNER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    seen.expect(
        &sb,
        &["access-bot: done", "create the account as Support Engineer"],
    );
    seen.done(&sb);
    let u = zd(&sb, "global", "robin.kim@gitlab.com").unwrap();
    assert_eq!(
        role_name(&sb, "global", u.custom_role_id).as_deref(),
        Some("Support Engineer")
    );
    assert_eq!(
        sb.ticked(iid),
        vec!["Zendesk Global: Agent - Support Engineer"]
    );
}

async fn light_agent_global_covers_all_four_starting_points(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    // Not found, end-user, full agent, already a light agent.
    sb.gitlab
        .lock()
        .add_user("eu", "End User", "end.user@gitlab.com");
    sb.gitlab
        .lock()
        .add_user("fa", "Full Agent", "full.agent@gitlab.com");
    sb.gitlab
        .lock()
        .add_user("la", "Light Agent", "light.agent@gitlab.com");
    for u in [
        "end.user@gitlab.com",
        "full.agent@gitlab.com",
        "light.agent@gitlab.com",
    ] {
        sb.add_directory_user(u);
    }
    let acct = |name: &str, email: &str, role: &str, custom: Option<&str>| ZendeskAccount {
        instance: "global".into(),
        name: name.into(),
        email: email.into(),
        role: role.into(),
        custom_role: custom.map(String::from),
        groups: vec![],
        tags: vec![],
        user_fields: Default::default(),
        open_tickets: 0,
        suspended: false,
        last_login_days_ago: None,
    };
    sb.seed_zendesk(&acct("End User", "end.user@gitlab.com", "end-user", None))
        .unwrap();
    sb.seed_zendesk(&acct(
        "Full Agent",
        "full.agent@gitlab.com",
        "agent",
        Some("Support Engineer"),
    ))
    .unwrap();
    sb.seed_zendesk(&acct(
        "Light Agent",
        "light.agent@gitlab.com",
        "light-agent",
        None,
    ))
    .unwrap();
    let body =
        "- [ ] Zendesk Global: Light Agent\n- Justification for this access: reading tickets\n";
    let mut iids = vec![];
    for who in ["jdoe", "eu", "fa", "la"] {
        iids.push(
            sb.file_issue(who, "Zendesk Global light agent", &["support::to do"], body)
                .await
                .unwrap(),
        );
    }
    run_until_quiet(&bot, 4).await;
    let light = sb.zd("global").light_agent_role();
    let mut s = Seen::new(iids[0]);
    s.expect(
        &sb,
        &["access-bot plan: light-agent request", "self-service"],
    );
    s.expect(
        &sb,
        &[
            "Account created and upgraded to light agent",
            "wait 24 hours",
            "#support_operations",
        ],
    );
    s.done(&sb);
    assert_eq!(
        zd(&sb, "global", "jane.doe@gitlab.com")
            .unwrap()
            .custom_role_id,
        light
    );

    let mut s = Seen::new(iids[1]);
    s.expect(&sb, &["access-bot plan"]);
    s.expect(&sb, &["Account created and upgraded to light agent"]);
    s.done(&sb);
    let eu = zd(&sb, "global", "end.user@gitlab.com").unwrap();
    assert_eq!((eu.role.as_str(), eu.custom_role_id), ("agent", light));

    let mut s = Seen::new(iids[2]);
    s.expect(&sb, &["access-bot plan"]);
    s.expect(
        &sb,
        &[
            "Looks like you are already a full agent.",
            "nothing was changed",
        ],
    );
    s.done(&sb);
    let fa = zd(&sb, "global", "full.agent@gitlab.com").unwrap();
    assert_eq!(
        role_name(&sb, "global", fa.custom_role_id).as_deref(),
        Some("Support Engineer")
    );

    let mut s = Seen::new(iids[3]);
    s.expect(&sb, &["access-bot plan"]);
    s.expect(&sb, &["already have a light agent account"]);
    s.done(&sb);
    for (i, e) in iids.iter().zip([
        "jane.doe@gitlab.com",
        "end.user@gitlab.com",
        "full.agent@gitlab.com",
        "light.agent@gitlab.com",
    ]) {
        // Self-service never changes an existing agent, not even their Okta app.
        assert_eq!(
            sb.group_member(GLOBAL_OKTA, e),
            e != "full.agent@gitlab.com",
            "{e} in the Okta group"
        );
        assert_eq!(sb.state(*i), "closed");
    }
}

async fn light_agent_federal_waits_for_verification_then_provisions(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let iid = file(&sb, "light agent, Zendesk US Federal").await;
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(
        &sb,
        &[
            "access-bot plan",
            "Can you verify if `Bo Li (bo.li@gitlab.com)` is a US Citizen?",
            "https://gitlab.sandbox/support/access-requests/-/issues/1",
            "US-Citizenship::Verified",
        ],
    );
    s.expect(
        &sb,
        &[
            "E-mailing the verification request",
            "people-connect@gitlab.com",
        ],
    );
    s.expect(
        &sb,
        &[
            "E-mailed the verification request",
            "people-connect@gitlab.com",
        ],
    );
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    assert!(
        zd(&sb, "federal", "bo.li@gitlab.com").is_none(),
        "nothing before verification"
    );
    sb.add_label("people-connect-1", iid, "US-Citizenship::Verified")
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    s.expect(&sb, &["access-bot: done", "Zendesk US Federal"]);
    s.done(&sb);
    assert_eq!(
        zd(&sb, "federal", "bo.li@gitlab.com")
            .unwrap()
            .custom_role_id,
        sb.zd("federal").light_agent_role()
    );
    assert!(
        zd(&sb, "global", "bo.li@gitlab.com").is_none(),
        "instances are separate"
    );
    assert!(sb.group_member(FEDERAL_OKTA, "bo.li@gitlab.com"));
    assert!(!sb.group_member(GLOBAL_OKTA, "bo.li@gitlab.com"));
}

async fn light_agent_federal_denied_is_closed_without_provisioning(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let iid = file(&sb, "light agent, US Federal, citizenship denied").await;
    run_until_quiet(&bot, 3).await;
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    sb.add_label("people-connect-1", iid, "US-Citizenship::Not Verified")
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(&sb, &["US Citizen"]);
    s.expect(&sb, &["E-mailing the verification request"]);
    s.expect(&sb, &["E-mailed the verification request"]);
    s.expect(
        &sb,
        &[
            "Citizenship could not be confirmed",
            "no further action can be taken",
            "closed",
        ],
    );
    s.done(&sb);
    assert_eq!(sb.state(iid), "closed");
    untouched(&sb, &["robin.kim@gitlab.com"]);
}

async fn team_tags_add_and_remove_on_existing_accounts(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let light = ZendeskAccount {
        instance: "global".into(),
        name: "Jane Doe".into(),
        email: "jane.doe@gitlab.com".into(),
        role: "light-agent".into(),
        custom_role: None,
        groups: vec![],
        tags: vec!["oem_management_team".into()],
        user_fields: Default::default(),
        open_tickets: 0,
        suspended: false,
        last_login_days_ago: None,
    };
    sb.seed_zendesk(&light).unwrap();
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n- [ ] Zendesk Global: remove tag `oem_management_team`\n"
    );
    let iid = sb
        .file_issue(
            "jdoe",
            "Zendesk Global tags for Jane",
            &["support::to do"],
            &body,
        )
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(
        &sb,
        &[
            "add tag `partner_support_agent`",
            "remove tag `oem_management_team`",
        ],
    );
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    s.expect(&sb, &["access-bot: done"]);
    s.done(&sb);
    assert_eq!(
        zd(&sb, "global", "jane.doe@gitlab.com").unwrap().tags,
        vec!["partner_support_agent"]
    );
    assert_eq!(sb.ticked(iid).len(), 2);
}

async fn team_tag_without_an_account_changes_nothing(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let iid = file(&sb, "team tag without an account").await;
    run_until_quiet(&bot, 3).await;
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(&sb, &["access-bot plan"]);
    s.expect(
        &sb,
        &[
            "A light agent account is needed first",
            "Please request a Zendesk light agent first",
        ],
    );
    s.done(&sb);
    untouched(&sb, &["mallory@gitlab.com"]);
    assert!(sb.ticked(iid).is_empty());
    assert!(sb.labels(iid).contains(&"access-bot::refused".into()));
}

async fn role_change_sets_role_custom_role_and_groups(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    sb.seed_zendesk(&ZendeskAccount {
        instance: "global".into(),
        name: "Alex Chen".into(),
        email: "alex.chen@gitlab.com".into(),
        role: "agent".into(),
        custom_role: Some("Support Manager".into()),
        groups: vec!["Support AMER".into(), "Support Managers".into()],
        tags: vec![],
        user_fields: Default::default(),
        open_tickets: 0,
        suspended: false,
        last_login_days_ago: None,
    })
    .unwrap();
    let body = format!(
        "{TABLE}| Alex Chen | alex.chen@gitlab.com | @achen | @kpatel |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n"
    );
    let iid = sb
        .file_issue(
            "kpatel",
            "Role change: Alex Chen back to Support Engineer",
            &["support::to do"],
            &body,
        )
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    sb.add_label("kpatel", iid, MANAGER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    // kpatel is both requester and manager: that is self-approval.
    let mut s = Seen::new(iid);
    s.expect(
        &sb,
        &[
            "change the role from agent (Support Manager) to Support Engineer",
            "remove from group Support Managers",
        ],
    );
    s.expect(&sb, &["self-approval does not count"]);
    sb.remove_label("kpatel", iid, MANAGER).await.unwrap();
    // A director listed as approver? Not configured: the system owners can't stand in for the manager either.
    sb.gitlab
        .lock()
        .add_user("dir", "Director", "dir@gitlab.com");
    s.done(&sb);
    let u = zd(&sb, "global", "alex.chen@gitlab.com").unwrap();
    assert_eq!(
        role_name(&sb, "global", u.custom_role_id).as_deref(),
        Some("Support Manager"),
        "unchanged so far"
    );

    // Filed by someone else, approved by the manager and an owner.
    let iid2 = sb
        .file_issue(
            "achen",
            "Role change: Alex Chen to Support Engineer",
            &["support::to do"],
            &body,
        )
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    sb.add_label("kpatel", iid2, MANAGER).await.unwrap();
    sb.add_label("jason", iid2, OWNER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    // achen is the subject: a request filed by the subject is fine, approvals by others count.
    let mut s2 = Seen::new(iid2);
    s2.expect(&sb, &["access-bot plan: role change"]);
    s2.expect(
        &sb,
        &[
            "access-bot: done",
            "change the role from agent (Support Manager) to Support Engineer",
        ],
    );
    s2.done(&sb);
    let u = zd(&sb, "global", "alex.chen@gitlab.com").unwrap();
    assert_eq!(
        role_name(&sb, "global", u.custom_role_id).as_deref(),
        Some("Support Engineer")
    );
    assert_eq!(
        sb.zd("global").groups_of(u.id),
        vec!["Support AMER", "Support EMEA"]
    );
}

async fn seed_leaver(sb: &Sandbox, tickets: u32) {
    sb.gitlab
        .lock()
        .add_user("cquinn", "Casey Quinn", "casey.quinn@gitlab.com");
    sb.add_directory_user("casey.quinn@gitlab.com");
    sb.seed_zendesk(&ZendeskAccount {
        instance: "global".into(),
        name: "Casey Quinn".into(),
        email: "casey.quinn@gitlab.com".into(),
        role: "agent".into(),
        custom_role: Some("Support Engineer".into()),
        groups: vec!["Support AMER".into()],
        tags: vec!["partner_support_agent".into(), "emea_shift".into()],
        user_fields: [("region".to_string(), "EMEA".to_string())]
            .into_iter()
            .collect(),
        open_tickets: tickets,
        suspended: false,
        last_login_days_ago: Some(3),
    })
    .unwrap();
    sb.seed_group_member(GLOBAL_OKTA, "casey.quinn@gitlab.com");
}

async fn offboarding_reassigns_then_strips_demotes_suspends_and_reports_evidence(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    seed_leaver(&sb, 230).await; // three bulk batches
    let iid = file(&sb, "offboarding").await;
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(
        &sb,
        &[
            "access-bot plan: offboarding",
            "reassign open tickets",
            "no approval",
        ],
    );
    s.expect(
        &sb,
        &[
            "access-bot: done",
            "| open tickets | `230` | `0` |",
            "| role | `agent` | `end-user` |",
            "| suspended | `false` | `true` |",
        ],
    );
    s.done(&sb);
    let c = zd(&sb, "global", "casey.quinn@gitlab.com").unwrap();
    assert_eq!(
        (c.role.as_str(), c.suspended, c.custom_role_id),
        ("end-user", true, None)
    );
    assert!(c.tags.is_empty() && c.user_fields.is_empty());
    let mlee = zd(&sb, "global", "mlee@gitlab.com").unwrap().id;
    assert_eq!(
        sb.zd("global").open_tickets_of(mlee),
        230,
        "every ticket went to the manager, none to the bot's admin"
    );
    let admin = sb.zd("global").admin_id;
    assert_eq!(sb.zd("global").open_tickets_of(admin), 0);
    assert!(!sb.group_member(GLOBAL_OKTA, "casey.quinn@gitlab.com"));
    assert_eq!(sb.ticked(iid).len(), 2);
    assert!(
        sb.description(iid)
            .contains("- [ ]  @it-ops-1: Remove the team member from Slack")
    );
    // 230 tickets: 3 bulk calls, not 230 calls.
    let k = sb.zd_knobs("global");
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
    let (sb, bot) = start(b).await;
    seed_leaver(&sb, 4).await;
    // The manager is a light agent: cannot be an assignee.
    {
        let mut w = sb.zd("global");
        let light = w.light_agent_role();
        let m = w.user_mut_by_email("mlee@gitlab.com").unwrap();
        m.custom_role_id = light;
    }
    let iid = file(&sb, "offboarding").await;
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(
        &sb,
        &[
            "access-bot plan: offboarding",
            "cannot take them (they are a light agent)",
        ],
    );
    s.expect(
        &sb,
        &[
            "access-bot: partly done",
            "cannot take them (they are a light agent)",
            "stopped before demoting",
        ],
    );
    s.done(&sb);
    let c = zd(&sb, "global", "casey.quinn@gitlab.com").unwrap();
    assert_eq!(c.role, "agent", "not demoted");
    assert!(!c.suspended);
    assert_eq!(sb.zd("global").open_tickets_of(c.id), 4);
    assert!(sb.labels(iid).contains(&"access-bot::failed".into()));
}

async fn bulk_request_reports_per_subject(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n| Bo Li | bo.li@gitlab.com | @bli | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"
    );
    let iid = sb
        .file_issue(
            "mlee",
            "Bulk Access, Zendesk Global",
            &["support::to do"],
            &body,
        )
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    sb.add_label("mlee", iid, MANAGER).await.unwrap(); // requester: does not count
    sb.remove_label("mlee", iid, MANAGER).await.unwrap();
    sb.add_label("lyle", iid, OWNER).await.unwrap();
    sb.gitlab.lock().add_user("kim", "Kim", "kim@gitlab.com");
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(&sb, &["Jane Doe", "Bo Li"]);
    s.expect(&sb, &["applied, then removed by `@mlee`"]);
    s.done(&sb);
    untouched(&sb, &["jane.doe@gitlab.com", "bo.li@gitlab.com"]);
    // A bulk special request approved by the manager (not the requester this time) and an owner.
    let iid2 = sb
        .file_issue(
            "lyle",
            "Bulk Access, Zendesk Global",
            &["support::to do"],
            &body,
        )
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    sb.add_label("mlee", iid2, MANAGER).await.unwrap();
    sb.add_label("jason", iid2, OWNER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    let mut s2 = Seen::new(iid2);
    s2.expect(&sb, &["access-bot plan"]);
    s2.expect(
        &sb,
        &["**Zendesk Global: Jane Doe", "**Zendesk Global: Bo Li"],
    );
    s2.done(&sb);
    assert!(
        zd(&sb, "global", "jane.doe@gitlab.com").is_some()
            && zd(&sb, "global", "bo.li@gitlab.com").is_some()
    );
}

// ---------------------------------------------------------------- security

/// A special request by jdoe for herself, plan posted.
async fn special_for_jane(sb: &Sandbox, bot: &Bot) -> (u64, Seen) {
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n"
    );
    let iid = sb
        .file_issue(
            "jdoe",
            "Jane Doe, Zendesk Global, Support Engineer",
            &["support::to do"],
            &body,
        )
        .await
        .unwrap();
    run_until_quiet(bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(sb, &["access-bot plan"]);
    (iid, s)
}

async fn security_self_approval_by_requester_or_subject(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let (iid, mut s) = special_for_jane(&sb, &bot).await;
    sb.add_label("jdoe", iid, MANAGER).await.unwrap();
    sb.add_label("lyle", iid, OWNER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    s.expect(&sb, &["applied by `@jdoe`", "self-approval does not count"]);
    s.done(&sb);
    untouched(&sb, &["jane.doe@gitlab.com"]);
    // The subject approving a request someone else filed for them is self-approval too.
    let body = format!(
        "{TABLE}| Bo Li | bo.li@gitlab.com | @bli | @bli |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n"
    );
    let iid2 = sb
        .file_issue(
            "mlee",
            "Bo Li, Zendesk Global, Support Engineer",
            &["support::to do"],
            &body,
        )
        .await
        .unwrap();
    // Even were the company directory wrong about Bo's manager.
    sb.google
        .lock()
        .managers
        .insert("bo.li@gitlab.com".into(), "bo.li@gitlab.com".into());
    run_until_quiet(&bot, 3).await;
    sb.add_label("bli", iid2, MANAGER).await.unwrap();
    sb.add_label("lyle", iid2, OWNER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    let mut s2 = Seen::new(iid2);
    s2.expect(&sb, &["access-bot plan"]);
    s2.expect(&sb, &["self-approval does not count"]);
    s2.done(&sb);
    untouched(&sb, &["bo.li@gitlab.com"]);
}

async fn security_approval_by_someone_not_authorised(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let (iid, mut s) = special_for_jane(&sb, &bot).await;
    sb.add_label("mallory", iid, MANAGER).await.unwrap();
    sb.add_label("mallory", iid, OWNER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    s.expect(
        &sb,
        &["applied by `@mallory`, who is not an authorised approver"],
    );
    s.done(&sb);
    untouched(&sb, &["jane.doe@gitlab.com"]);
}

async fn security_approval_removed_again(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let (iid, mut s) = special_for_jane(&sb, &bot).await;
    sb.add_label("lyle", iid, OWNER).await.unwrap();
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    sb.remove_label("mlee", iid, MANAGER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    s.expect(&sb, &["applied, then removed by `@mlee`"]);
    s.done(&sb);
    untouched(&sb, &["jane.doe@gitlab.com"]);
}

async fn security_description_edited_after_approval(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let (iid, mut s) = special_for_jane(&sb, &bot).await;
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    sb.add_label("lyle", iid, OWNER).await.unwrap();
    // Same meaning, different words after the approval: still voided (text edit by a person).
    let edited = sb
        .description(iid)
        .replace("Support Engineer\n", "Support Engineer \n");
    sb.edit_description("jdoe", iid, &edited).await.unwrap();
    run_until_quiet(&bot, 3).await;
    s.expect(
        &sb,
        &["changed by `@jdoe` after the approval", "approve again"],
    );
    s.done(&sb);
    untouched(&sb, &["jane.doe@gitlab.com"]);
    // Changing what is asked for posts a new plan that says earlier approvals no longer apply.
    let bigger = sb
        .description(iid)
        .replace("Support Engineer", "Support Manager");
    sb.edit_description("jdoe", iid, &bigger).await.unwrap();
    run_until_quiet(&bot, 3).await;
    s.expect(
        &sb,
        &[
            "access-bot plan",
            "Support Manager",
            "any earlier approval no longer applies",
        ],
    );
    s.done(&sb);
    untouched(&sb, &["jane.doe@gitlab.com"]);
}

async fn security_entitlement_not_from_the_automation_or_edited(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let (_, title, labels, body) = body("role-based entitlement");
    let forged = sb
        .file_issue("mallory", title, &labels, &body)
        .await
        .unwrap();
    let genuine = sb
        .file_issue(
            "gitlab-employment-bot",
            title,
            &labels,
            &body
                .replace("Sam Rivera", "Bo Li")
                .replace("sam.rivera", "bo.li")
                .replace("srivera", "bli"),
        )
        .await
        .unwrap();
    // Someone edits the genuine one before the bot sees it.
    let edited = sb
        .description(genuine)
        .replace("Support Engineer", "Support Manager");
    sb.edit_description("mallory", genuine, &edited)
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(forged);
    s.expect(
        &sb,
        &[
            "will not act",
            "only trusted when filed by the automation",
            "`@mallory`",
        ],
    );
    s.done(&sb);
    // The genuine one, changed by someone else, is no longer pre-approved: it
    // needs the approvals any such request needs.
    let mut s = Seen::new(genuine);
    s.expect(
        &sb,
        &[
            "access-bot plan",
            "**Not pre-approved:** `@mallory` changed it",
            "Zendesk::System Owner Approved",
        ],
    );
    s.done(&sb);
    untouched(&sb, &["sam.rivera@gitlab.com", "bo.li@gitlab.com"]);
}

async fn security_offboarding_not_from_the_automation(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    seed_leaver(&sb, 2).await;
    let (_, title, labels, body) = body("offboarding");
    let iid = sb
        .file_issue("mallory", title, &labels, &body)
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(
        &sb,
        &["will not act", "only trusted when filed by the automation"],
    );
    s.done(&sb);
    let c = zd(&sb, "global", "casey.quinn@gitlab.com").unwrap();
    assert_eq!((c.role.as_str(), c.suspended), ("agent", false));
}

async fn security_emails_outside_the_allowed_domains(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let mut iids = vec![];
    for e in [
        "jane@gitlab.com.evil.io",
        "jane@evil-gitlab.com",
        "jane@gitlab.com@evil.io",
        "jane@gitlаb.com",
        "jane@gitlab.com.",
    ] {
        let body = format!(
            "{TABLE}| Jane Doe | {e} | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"
        );
        iids.push((
            e,
            sb.file_issue(
                "jdoe",
                "Zendesk Global light agent",
                &["support::to do"],
                &body,
            )
            .await
            .unwrap(),
        ));
    }
    run_until_quiet(&bot, 3).await;
    for (e, iid) in iids {
        let mut s = Seen::new(iid);
        let c = s.expect(&sb, &["cannot read this request"]);
        assert!(
            c.body.contains("domain") || c.body.contains("email") || c.body.contains("@"),
            "{e}: {}",
            c.body
        );
        s.done(&sb);
    }
    assert_eq!(
        sb.zd("global").users.len(),
        3,
        "only the admin and the two managers"
    );
    assert!(sb.group_members(GLOBAL_OKTA).is_empty());
}

async fn security_role_outside_the_table(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Admin\n"
    );
    let iid = sb
        .file_issue(
            "jdoe",
            "Jane Doe, Zendesk Global, Admin",
            &["support::to do"],
            &body,
        )
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    sb.add_label("lyle", iid, OWNER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(
        &sb,
        &[
            "is not in the configured table",
            "Light Agent, Support Engineer, Support Manager",
        ],
    );
    s.done(&sb);
    untouched(&sb, &["jane.doe@gitlab.com"]);
}

async fn security_federal_without_or_with_forged_verification(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let iid = file(&sb, "light agent, Zendesk US Federal").await;
    run_until_quiet(&bot, 3).await;
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    assert!(
        zd(&sb, "federal", "bo.li@gitlab.com").is_none(),
        "no verification, no access"
    );
    sb.add_label("mallory", iid, "US-Citizenship::Verified")
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(&sb, &["US Citizen"]);
    s.expect(&sb, &["E-mailing the verification request"]);
    s.expect(&sb, &["E-mailed the verification request"]);
    s.expect(
        &sb,
        &["applied by `@mallory`, who is not an authorised approver"],
    );
    s.done(&sb);
    untouched(&sb, &["bo.li@gitlab.com"]);
}

async fn security_mentions_and_markdown_in_names_are_escaped(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let body = format!(
        "{TABLE}| @all [click](http://evil) | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n/close\n"
    );
    let iid = sb
        .file_issue(
            "jdoe",
            "Zendesk Global, Support Engineer",
            &["support::to do"],
            &body,
        )
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    let c = s.expect(&sb, &["cannot read this request", "`@all click`"]);
    s.done(&sb);
    // Outside code spans there is no @all, and no line starts with a quick action.
    let outside: String = c.body.split('`').step_by(2).collect();
    assert!(!outside.contains("@all"), "{}", c.body);
    assert!(!c.body.lines().any(|l| l.trim_start().starts_with('/')));
    untouched(&sb, &["jane.doe@gitlab.com"]);
    assert_eq!(sb.state(iid), "opened");
}

// ---------------------------------------------------------------- the loop

async fn waiting_issue_gets_one_comment_and_nothing_on_later_cycles(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let (_, s) = special_for_jane(&sb, &bot).await;
    sb.clear_logs();
    for _ in 0..3 {
        let r = bot.cycle().await;
        assert!(r.outcomes.is_empty(), "{:?}", r.outcomes);
    }
    s.done(&sb);
    // Idle cycles cost one listing request each, nothing else.
    assert_eq!(sb.gitlab_knobs.total(), 3, "{:?}", sb.gitlab_knobs.counts());
    assert_eq!(sb.zd_knobs("global").total(), 0);
}

async fn idle_poll_over_a_thousand_untouched_issues_is_one_request(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    {
        let mut w = sb.gitlab.lock();
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
    run_until_quiet(&bot, 3).await;
    // Nothing changes for longer than the overlap (2 s in the sandbox): the
    // first poll after that still covers the window, every later one is idle.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    bot.cycle().await;
    for _ in 0..3 {
        sb.clear_logs();
        let r = bot.cycle().await;
        assert!(r.outcomes.is_empty());
        assert_eq!(sb.gitlab_knobs.total(), 1, "{:?}", sb.gitlab_knobs.counts());
    }
}

async fn running_twice_or_restarting_without_the_database_changes_nothing(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let iid = file(&sb, "role-based entitlement").await;
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(&sb, &["access-bot plan"]);
    s.expect(&sb, &["access-bot: done"]);
    let before = sb.zd("global").users.len();
    // A new bot with an empty database (as if the file were deleted): the issue decides.
    drop(bot); // a restart: the old bot is gone
    let fresh = sb.bot().await.unwrap();
    sb.clear_logs();
    run_until_quiet(&fresh, 3).await;
    s.done(&sb);
    assert_eq!(sb.zd("global").users.len(), before);
    assert_eq!(
        sb.zd_knobs("global")
            .count("POST", "/api/v2/users/create_or_update"),
        0
    );
    assert_eq!(
        sb.gitlab_knobs
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
        let (sb, _) = start(b).await;
        seed_leaver(&sb, 3).await;
        let iid = file(&sb, "offboarding").await;
        let entitlement = file(&sb, "role-based entitlement").await;
        let (knobs, route) = match server {
            "zendesk" => (sb.zd_knobs("global").clone(), route.to_string()),
            // The membership removal, in whichever directory holds the group.
            "groups" => (sb.group_knobs().clone(), sb.group_write_route(route)),
            _ => (sb.gitlab_knobs.clone(), route.to_string()),
        };
        let route = route.as_str();
        knobs.fail_next(
            route,
            100,
            access_bot::sandbox::faults::Failure::Status(500),
        );
        let first = sb.bot().await.unwrap();
        let r = first.cycle().await;
        assert!(
            r.outcomes.iter().any(|(_, _, o)| o.is_failure()) || !r.errors.is_empty(),
            "{route}: {r:?}"
        );
        drop(first);
        knobs.clear_faults();
        let second = sb.bot().await.unwrap();
        run_until_quiet(&second, 4).await;
        let c = zd(&sb, "global", "casey.quinn@gitlab.com").unwrap();
        assert_eq!(
            (c.role.as_str(), c.suspended),
            ("end-user", true),
            "{route}"
        );
        assert!(
            zd(&sb, "global", "sam.rivera@gitlab.com").is_some(),
            "{route}"
        );
        let results: Vec<_> = sb
            .bot_comments(iid)
            .into_iter()
            .filter(|c| c.body.contains("access-bot: done"))
            .collect();
        assert_eq!(results.len(), 1, "{route}: one result comment");
        let r2: Vec<_> = sb
            .bot_comments(entitlement)
            .into_iter()
            .filter(|c| c.body.contains("access-bot: done"))
            .collect();
        assert_eq!(
            r2.len(),
            1,
            "{route}: one result comment on the entitlement"
        );
        assert_eq!(sb.ticked(iid).len(), 2, "{route}");
        assert_eq!(sb.ticked(entitlement).len(), 2, "{route}");
    }
}

async fn daemon_and_one_shot_together_do_not_double_process(b: GroupBackend) {
    let (sb, _) = start(b).await;
    for _ in 0..3 {
        file(&sb, "light agent, Zendesk Global").await;
    }
    seed_leaver(&sb, 120).await;
    file(&sb, "offboarding").await;
    let dir = std::env::temp_dir().join(format!("ab-shared-{}.db", rand::random::<u32>()));
    let a = sb
        .bot_with_store(std::sync::Arc::new(
            access_bot::store::Store::open(&dir).unwrap(),
        ))
        .await
        .unwrap();
    let b = sb
        .bot_with_store(std::sync::Arc::new(
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
    for iid in 1..=4 {
        let done: Vec<_> = sb
            .bot_comments(iid)
            .into_iter()
            .filter(|c| c.body.contains("access-bot: done"))
            .collect();
        assert_eq!(done.len(), 1, "#{iid}: exactly one result");
    }
    // Each create and each bulk reassignment happened once.
    assert_eq!(
        sb.zd_knobs("global")
            .count("PUT", "/api/v2/tickets/update_many"),
        2
    );
    let _ = busy;
    let _ = std::fs::remove_file(&dir);
}

async fn webhook_reacts_without_waiting_for_the_poll_and_rejects_bad_tokens(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let bot = std::sync::Arc::new(bot);
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
    sb.gitlab
        .lock()
        .hooks
        .push(access_bot::sandbox::gitlab::Hook {
            url: format!("http://{addr}/webhook"),
            token: "hook-secret".into(),
        });
    let iid = file(&sb, "light agent, Zendesk Global").await;
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
    let t = std::time::Instant::now();
    bot.handle(event).await;
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
    assert!(zd(&sb, "global", "jane.doe@gitlab.com").is_some());
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
    let (sb, mut bot) = start(b).await;
    let iid = file(&sb, "role-based entitlement").await;
    bot.dry_run = true;
    sb.clear_logs();
    let r = bot.cycle().await;
    assert!(
        matches!(&r.outcomes[0].2, Outcome::Planned(t) if t.contains("create the account as Support Engineer"))
    );
    assert!(sb.bot_comments(iid).is_empty());
    let writes = |k: &access_bot::sandbox::faults::Knobs| {
        k.log()
            .iter()
            .filter(|e| {
                e.method != "GET"
                    && !e.path.ends_with("/oauth/tokens")
                    && !e.path.ends_with("/token")
            })
            .count()
    };
    assert_eq!(writes(&sb.gitlab_knobs), 0);
    assert_eq!(writes(sb.zd_knobs("global")), 0);
    assert_eq!(writes(&sb.google_knobs), 0);
    assert_eq!(writes(&sb.okta_knobs), 0);
}

async fn audit_trail_answers_who_gave_this_person_access_and_who_approved(b: GroupBackend) {
    let (sb, bot) = start(b).await;
    let iid = file(&sb, "special request").await;
    run_until_quiet(&bot, 3).await;
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    sb.add_label("lyle", iid, OWNER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    let rows = bot
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
        bot.store
            .audit_rows(&access_bot::store::AuditQuery {
                iid: Some(iid + 100),
                ..Default::default()
            })
            .unwrap()
            .is_empty()
    );
}

async fn stale_requests_get_one_reminder_then_are_closed(b: GroupBackend) {
    let (sb, _) = start(b).await;
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n"
    );
    // Filed 40 days ago (closed after 30) and 10 days ago (reminder after 7);
    // the sandbox's clock only moves forward, so the older one first.
    sb.gitlab.lock().clock_offset = -chrono::Duration::days(40);
    let older = sb
        .file_issue("jdoe", "Zendesk Global tag", &["support::to do"], &body)
        .await
        .unwrap();
    sb.gitlab.lock().clock_offset = -chrono::Duration::days(10);
    let old = sb
        .file_issue("jdoe", "Zendesk Global tag", &["support::to do"], &body)
        .await
        .unwrap();
    sb.gitlab.lock().clock_offset = chrono::Duration::zero();
    let bot = sb.bot().await.unwrap();
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(old);
    s.expect(
        &sb,
        &[
            "access-bot plan",
            "Reminder: this request is still waiting",
            "@mlee",
            "It has waited",
        ],
    );
    s.done(&sb);
    assert_eq!(sb.state(old), "opened");
    let mut s2 = Seen::new(older);
    s2.expect(
        &sb,
        &[
            "access-bot plan",
            "Closed: no approval after",
            "reopen the issue",
        ],
    );
    s2.done(&sb);
    assert_eq!(sb.state(older), "closed");
    // A restarted bot (its hourly scan runs at once) does not remind twice.
    let again = sb.bot().await.unwrap();
    run_until_quiet(&again, 3).await;
    s.done(&sb);
    s2.done(&sb);
}

async fn time_bound_access_is_reminded_then_revoked_exactly(b: GroupBackend) {
    let (sb, mut bot) = start(b).await;
    // Jane is a light agent with a tag the bot did not grant; Bo has no account.
    sb.seed_zendesk(&ZendeskAccount {
        instance: "global".into(),
        name: "Jane Doe".into(),
        email: "jane.doe@gitlab.com".into(),
        role: "light-agent".into(),
        custom_role: None,
        groups: vec![],
        tags: vec!["oem_management_team".into()],
        user_fields: Default::default(),
        open_tickets: 0,
        suspended: false,
        last_login_days_ago: None,
    })
    .unwrap();
    let expires = (chrono::Utc::now() + chrono::Duration::days(10)).date_naive();
    let body = format!(
        "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n| Bo Li | bo.li@gitlab.com | @bli | @mlee |\n\nExpires: {expires}\n\n- [ ] Zendesk Global: Light Agent, add tag `partner_support_agent`\n- [ ] Access revoked on expiry\n"
    );
    let iid = sb
        .file_issue(
            "jdoe",
            "Temporary Zendesk Global access",
            &["support::to do"],
            &body,
        )
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    sb.add_label("jason", iid, OWNER).await.unwrap();
    run_until_quiet(&bot, 3).await;
    let mut s = Seen::new(iid);
    s.expect(&sb, &["access-bot plan", "revoked on **"]);
    // Before the first write: what will be taken back, from the accounts as they were.
    s.expect(
        &sb,
        &[
            "what will be taken back",
            "`bo.li@gitlab.com` in Zendesk Global: demote to end-user",
            "remove tag `partner_support_agent`",
        ],
    );
    s.expect(&sb, &["access-bot: done", "time-bound"]);
    assert!(
        zd(&sb, "global", "jane.doe@gitlab.com")
            .unwrap()
            .tags
            .contains(&"partner_support_agent".to_string())
    );
    assert!(sb.group_member(GLOBAL_OKTA, "bo.li@gitlab.com"));

    // Eight days later: one reminder.
    bot.clock_offset = chrono::Duration::days(8);
    run_until_quiet(&bot, 3).await;
    run_until_quiet(&bot, 3).await;
    s.expect(
        &sb,
        &[
            "expires on",
            "remove tag `partner_support_agent`",
            "demote to end-user",
            "remove from `okta-zendeskglobal-users@gitlab.com`",
        ],
    );
    s.done(&sb);

    // On the date: exactly what was granted goes away.
    bot.clock_offset = chrono::Duration::days(10);
    run_until_quiet(&bot, 3).await;
    s.expect(
        &sb,
        &["Time-bound access revoked", "Done: `jane.doe@gitlab.com`"],
    );
    s.done(&sb);
    let jane = zd(&sb, "global", "jane.doe@gitlab.com").unwrap();
    assert_eq!(
        jane.tags,
        vec!["oem_management_team"],
        "the tag the bot did not grant stays"
    );
    assert_eq!(
        jane.custom_role_id,
        sb.zd("global").light_agent_role(),
        "Jane stays the light agent she was"
    );
    let bo = zd(&sb, "global", "bo.li@gitlab.com").unwrap();
    assert_eq!(bo.role, "end-user", "Bo had no account: back to no seat");
    assert!(!sb.group_member(GLOBAL_OKTA, "bo.li@gitlab.com"));
    assert!(
        !sb.group_member(GLOBAL_OKTA, "jane.doe@gitlab.com"),
        "this request granted Jane's Okta membership"
    );
    assert!(
        sb.ticked(iid)
            .contains(&"Access revoked on expiry".to_string())
    );
    // Nothing more happens later.
    bot.clock_offset = chrono::Duration::days(20);
    run_until_quiet(&bot, 3).await;
    s.done(&sb);
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
    audit_trail_answers_who_gave_this_person_access_and_who_approved,
    stale_requests_get_one_reminder_then_are_closed,
    time_bound_access_is_reminded_then_revoked_exactly,
);
