//! Hostile probes (red team, branch `h2-attack`) against the rewrite that
//! closed the holes of issue #14.
//!
//! Every probe is an attack run end to end against the sandbox over HTTP:
//! issues are filed and edited as the attacker, other people act with their
//! own tokens, the real bot runs its poll cycles, and then Zendesk and Google
//! are checked.
//!
//! A probe PASSES when the attack fails (nothing was granted or revoked that
//! nobody approved, and the bot's comments are inert). The file has two parts:
//!
//! 1. `closed_*`: probes that found a hole when they were written; each
//!    comment says the attack, the root cause and the class of bug, and how
//!    the class was closed (they are regression tests now);
//! 2. `refused_*`: attacks the bot refused from the start.
//!
//! Run: `cargo test --test hostile_probe -- --test-threads=2` (about a minute).
//!
//! The classes the `closed_*` probes found, and what closed them:
//! - GitLab writes only the tick note when an edit both ticks a box and changes
//!   text (`closed_entitlement_rewritten_*`, `closed_offboarding_subject_swapped_*`,
//!   `closed_leaver_marks_own_offboarding_*`): an edited trusted issue needs
//!   the `if_edited` approvals, titles anchor the person, subjects may not
//!   touch their own issue.
//! - `@manager` came from the description (`closed_requester_names_an_accomplice_*`,
//!   `closed_requester_named_manager_strips_*`, `closed_stale_reminder_mentions_*`):
//!   the manager must be the person's manager in the company directory.
//! - A verification asked about one name applied to everyone (`closed_federal_*`):
//!   one person per verification.
//! - Approvals bound the request digest, not the steps, and a refusal did not
//!   consume them (`closed_approved_plan_runs_an_unsuspend_*`,
//!   `closed_refused_request_runs_later_*`): approvals bind the plan's change set.
//! - Time-bound bookkeeping (`closed_time_bound_upgrade_*`, `closed_expiry_after_offboarding_*`):
//!   grants per plan, holdings end on revocation.
//! - Revocation failed open (`closed_leaver_keeps_access_*`).
//! - Self-service reached a full agent's Okta group (`closed_self_service_readds_okta_*`).
//! - Meaning read by phrase match, verbs dropped (`closed_items_asking_to_remove_*`):
//!   reversing words are refused.
//! - Approval label identified by its (mutable) name (`closed_approval_forged_by_renaming_*`,
//!   with the sandbox's Labels API rename): approvals bind label ids.
//! - Webhook receiver (class 11): `closed_webhook_*`, `closed_metrics_*`.
//!
//! Every bot comment is read and checked by snapshot (`Tester::expect_rest`
//! at the end of a probe); the words a probe asserts stay in it, as the
//! point of the probe.
//!
//! Not modelled by the sandbox (so not probed end to end): editing or deleting
//! another user's note (maintainers can, on GitLab), the "changed title" system
//! note, the "marked the checklist item ... as inapplicable" note, Zendesk
//! secondary identities, Google aliases.

mod common;

use access_bot::demo::bodies;
use access_bot::sandbox::harness::Comment;
use access_bot::sandbox::scenario::ZendeskAccount;
use access_bot::sandbox::{PROJECT, Sandbox};
use common::tester::{FEDERAL_OKTA, GLOBAL_OKTA, MANAGER, OWNER, TABLE, VERIFIED};

const NOT_VERIFIED: &str = "US-Citizenship::Not Verified";

// ------------------------------------------------------------------ helpers

fn row(name: &str, email: &str, user: &str, manager: &str) -> String {
    format!("| {name} | {email} | @{user} | @{manager} |\n")
}

fn demo(name: &str) -> (&'static str, &'static str, Vec<&'static str>, String) {
    let (_, author, title, labels, body) = bodies()
        .into_iter()
        .find(|b| b.0 == name)
        .expect("demo body");
    (author, title, labels, body)
}

fn zd(sb: &Sandbox, inst: &str, email: &str) -> Option<access_bot::sandbox::zendesk::ZdUser> {
    sb.zd(inst).user_by_email(email).cloned()
}

/// The custom role name of an account ("Support Engineer", the light agent role, ...).
fn custom_role(sb: &Sandbox, inst: &str, email: &str) -> Option<String> {
    let w = sb.zd(inst);
    let u = w.user_by_email(email)?;
    let id = u.custom_role_id?;
    w.custom_roles
        .iter()
        .find(|r| r.id == id)
        .map(|r| r.name.clone())
}

fn is_light_agent(sb: &Sandbox, inst: &str, email: &str) -> bool {
    let w = sb.zd(inst);
    let la = w.light_agent_role();
    w.user_by_email(email)
        .is_some_and(|u| u.role == "agent" && u.custom_role_id == la && la.is_some())
}

/// No account anywhere and no Okta group for these addresses.
fn untouched(sb: &Sandbox, emails: &[&str]) {
    for e in emails {
        for inst in ["global", "federal"] {
            assert!(zd(sb, inst, e).is_none(), "{e} got an account in {inst}");
        }
        assert!(
            !sb.google_member(GLOBAL_OKTA, e) && !sb.google_member(FEDERAL_OKTA, e),
            "{e} got an Okta group"
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn seed(
    sb: &Sandbox,
    inst: &str,
    name: &str,
    email: &str,
    role: &str,
    custom: Option<&str>,
    groups: &[&str],
    suspended: bool,
) {
    sb.seed_zendesk(&ZendeskAccount {
        instance: inst.into(),
        name: name.into(),
        email: email.into(),
        role: role.into(),
        custom_role: custom.map(String::from),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        tags: vec![],
        user_fields: Default::default(),
        open_tickets: 0,
        suspended,
        last_login_days_ago: Some(1),
    })
    .unwrap();
}

/// A raw issue edit as `user` (title, state_event, ...), over HTTP like the harness.
async fn put(sb: &Sandbox, user: &str, iid: u64, form: &[(&str, &str)]) {
    let url = format!(
        "http://{}/api/v4/projects/{}/issues/{iid}",
        sb.gitlab_addr,
        percent_encoding::utf8_percent_encode(PROJECT, percent_encoding::NON_ALPHANUMERIC)
    );
    let r = reqwest::Client::new()
        .put(url)
        .header("PRIVATE-TOKEN", sb.token_of(user))
        .form(form)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "edit as {user}: {}", r.status());
}

/// Text outside inline code spans (any fence length), marker line excluded.
fn outside_code(body: &str) -> String {
    let mut out = String::new();
    let b: Vec<char> = body.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '`' {
            let mut n = 0;
            while i + n < b.len() && b[i + n] == '`' {
                n += 1;
            }
            // find a closing run of exactly n backticks
            let mut j = i + n;
            let mut closed = None;
            while j < b.len() {
                if b[j] == '`' {
                    let mut m = 0;
                    while j + m < b.len() && b[j + m] == '`' {
                        m += 1;
                    }
                    if m == n {
                        closed = Some(j + m);
                        break;
                    }
                    j += m;
                } else {
                    j += 1;
                }
            }
            match closed {
                Some(end) => {
                    out.push(' ');
                    i = end;
                }
                None => {
                    out.extend(std::iter::repeat_n('`', n));
                    i += n;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Every bot comment on the issue is inert: one marker, on the last line;
/// outside code spans no `@all`, no HTML comment, no link, no raw HTML tag,
/// and no line starting with a quick action; bounded in size.
fn assert_inert(sb: &Sandbox, iid: u64) {
    for c in sb.bot_comments(iid) {
        assert_eq!(
            c.body.matches("<!-- access-bot").count(),
            1,
            "#{iid}: a bot comment carries more than one marker:\n{}",
            c.body
        );
        let last = c.body.trim_end().lines().last().unwrap_or("");
        assert!(last.starts_with("<!-- access-bot:v2 "), "{}", c.body);
        let content = access_bot::marker::Marker::content_of(&c.body);
        let outside = outside_code(content);
        for bad in [
            "@all",
            "<!--",
            "](",
            "javascript:",
            "<img",
            "<a ",
            "<details",
        ] {
            assert!(
                !outside.contains(bad),
                "#{iid}: {bad:?} outside code in a bot comment:\n{}",
                c.body
            );
        }
        for l in outside.lines() {
            assert!(
                !l.trim_start().starts_with('/'),
                "#{iid}: a line of a bot comment starts with a quick action: {l:?}\n{}",
                c.body
            );
        }
        assert!(
            c.body.len() < 100_000,
            "#{iid}: a bot comment of {} bytes",
            c.body.len()
        );
    }
}

fn bot_text(sb: &Sandbox, iid: u64) -> String {
    sb.bot_comments(iid)
        .iter()
        .map(|c: &Comment| c.body.clone())
        .collect::<Vec<_>>()
        .join("\n-----\n")
}

fn casey(sb: &Sandbox) -> access_bot::sandbox::zendesk::ZdUser {
    zd(sb, "global", "casey.quinn@gitlab.com").unwrap()
}

/// The leaver of the demo offboarding: a Support Engineer with tags and the Okta group.
fn seed_leaver(sb: &Sandbox) {
    sb.gitlab
        .lock()
        .add_user("cquinn", "Casey Quinn", "casey.quinn@gitlab.com");
    sb.google
        .lock()
        .users
        .insert("casey.quinn@gitlab.com".into());
    seed(
        sb,
        "global",
        "Casey Quinn",
        "casey.quinn@gitlab.com",
        "agent",
        Some("Support Engineer"),
        &["Support AMER"],
        false,
    );
    sb.google
        .lock()
        .add_member(GLOBAL_OKTA, "casey.quinn@gitlab.com");
}

fn assert_casey_intact(sb: &Sandbox) {
    let c = casey(sb);
    assert_eq!(
        (c.role.as_str(), c.suspended),
        ("agent", false),
        "Casey was offboarded"
    );
    assert!(sb.google_member(GLOBAL_OKTA, "casey.quinn@gitlab.com"));
}

fn assert_casey_offboarded(sb: &Sandbox) {
    let c = casey(sb);
    assert_eq!(
        (c.role.as_str(), c.suspended),
        ("end-user", true),
        "the leaver kept Zendesk access"
    );
    assert!(
        !sb.google_member(GLOBAL_OKTA, "casey.quinn@gitlab.com"),
        "the leaver kept the Okta group"
    );
}

/// Stop the sandbox GitLab's clock `hours` ahead of real time: until real
/// time catches up, every event gets that same timestamp.
fn freeze(sb: &Sandbox, hours: i64) {
    let mut w = sb.gitlab.lock();
    w.clock_offset = chrono::Duration::hours(hours);
    let _ = w.now();
    w.clock_offset = -chrono::Duration::days(1);
}

/// What the People team is asked: the quoted question on the issue and the
/// e-mail they receive.
fn citizenship_question(sb: &Sandbox, iid: u64) -> String {
    let on_issue: String = bot_text(sb, iid)
        .lines()
        .filter(|l| l.contains("Can you verify"))
        .collect::<Vec<_>>()
        .join("\n");
    let mails: String = sb
        .smtp
        .messages()
        .iter()
        .map(|m| m.body())
        .collect::<Vec<_>>()
        .join("\n");
    format!("{on_issue}\n{mails}")
}

fn day(offset: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(offset))
        .date_naive()
        .to_string()
}

// ========================================================================
// PART 1: CLOSED. Each of these probes found a hole when it was written.
// ========================================================================

/// CLOSED (was a hole: class 6, trusted automation changed by others).
/// GitLab writes only "marked the checklist item X as completed" when an edit
/// both toggles a box and changes other text (gitlab-foss#33577; the sandbox
/// models it). Before the bot's first plan, mallory edits a genuine
/// entitlement filed by the automation: she swaps the person for herself and
/// the level for Support Manager, and in the same edit ticks the unmanaged
/// Slack line. `approval::trust_problems` sees only a tick on an item the bot
/// does not manage, before any plan: allowed. The pre-approved template then
/// creates mallory as a Support Manager.
#[tokio::test]
async fn closed_entitlement_rewritten_before_the_plan_masked_by_an_unmanaged_tick() {
    let mut t = crate::tester!().await;
    let (author, title, labels, body) = demo("role-based entitlement");
    let iid =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    let forged = body
        .replace(
            "| Sam Rivera | sam.rivera@gitlab.com | @srivera | @kpatel |",
            "| Mallory Mallet | mallory@gitlab.com | @mallory | @kpatel |",
        )
        .replace(
            "`Agent, role Support Engineer`",
            "`Agent - Support Manager`",
        )
        .replace("* [ ]  `Slack`", "* [x]  `Slack`");
    assert_ne!(forged, body);
    t.sb.edit_description("mallory", iid, &forged)
        .await
        .unwrap();
    t.run_for(4).await;
    assert_inert(&t.sb, iid);
    untouched(&t.sb, &["mallory@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: class 6, and "revokes the wrong access").
/// Same masking on an offboarding: before the plan, mallory replaces the
/// leaver's row with lyle's (a system owner and Support Engineer) and ticks
/// the unmanaged Slack line in the same edit. The bot offboards lyle: demoted,
/// suspended, removed from Okta, his Support Team file deleted by an MR.
#[tokio::test]
async fn closed_offboarding_subject_swapped_before_the_plan_masked_by_an_unmanaged_tick() {
    let mut t = crate::tester!().await;
    seed_leaver(&t.sb);
    seed(
        &t.sb,
        "global",
        "Lyle Kozloff",
        "lyle@gitlab.com",
        "agent",
        Some("Support Engineer"),
        &["Support AMER"],
        false,
    );
    t.sb.google
        .lock()
        .add_member(GLOBAL_OKTA, "lyle@gitlab.com");
    let (author, title, labels, body) = demo("offboarding");
    let iid =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    let forged = body
        .replace(
            "| Casey Quinn | casey.quinn@gitlab.com | @cquinn | @mlee |",
            "| Lyle Kozloff | lyle@gitlab.com | @lyle | @mlee |",
        )
        .replace(
            "- [ ]  @it-ops-1: Remove the team member from Slack",
            "- [x]  @it-ops-1: Remove the team member from Slack",
        );
    assert_ne!(forged, body);
    t.sb.edit_description("mallory", iid, &forged)
        .await
        .unwrap();
    t.run_for(4).await;
    let l = zd(&t.sb, "global", "lyle@gitlab.com").unwrap();
    assert_eq!(
        (l.role.as_str(), l.suspended),
        ("agent", false),
        "lyle was offboarded by an issue about Casey:\n{}",
        bot_text(&t.sb, iid)
    );
    assert!(t.sb.google_member(GLOBAL_OKTA, "lyle@gitlab.com"));
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: class 5 / 2: who may approve comes from the request itself).
/// `@manager` is "the manager named for every person in the issue", and the
/// requester writes that name. Mallory names her colleague bli (any employee,
/// or a compromised non-approver account) as her manager; bli applies the
/// manager label. A light agent with a team tag (and the Okta group) needs
/// only `manager`, so mallory gets a Zendesk seat, the tag and Okta.
/// Root cause: `approval::authorised_ids` resolves `@manager` from
/// `Subject::manager`, which is parsed from the description; nothing ties it
/// to an HR/identity source.
#[tokio::test]
async fn closed_requester_names_an_accomplice_as_manager() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Light Agent, add tag `partner_support_agent`\n",
        row("Mallory Mallet", "mallory@gitlab.com", "mallory", "bli")
    );
    let iid =
        t.sb.file_issue("mallory", "Zendesk Global light agent", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("bli", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    assert_inert(&t.sb, iid);
    untouched(&t.sb, &["mallory@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: same root cause as above, used to revoke): mallory files a request
/// for jdoe that *removes* jdoe's team tag, names her accomplice bli as jdoe's
/// manager, and bli approves. Removing a tag needs only `manager`
/// (`changes.team_tag`), and the manager is whoever the requester wrote.
#[tokio::test]
async fn closed_requester_named_manager_strips_a_colleagues_tag() {
    let mut t = crate::tester!().await;
    t.sb.seed_zendesk(&ZendeskAccount {
        instance: "global".into(),
        name: "Jane Doe".into(),
        email: "jane.doe@gitlab.com".into(),
        role: "light-agent".into(),
        custom_role: None,
        groups: vec![],
        tags: vec!["partner_support_agent".into()],
        user_fields: Default::default(),
        open_tickets: 0,
        suspended: false,
        last_login_days_ago: Some(1),
    })
    .unwrap();
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: remove tag `partner_support_agent`\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "bli")
    );
    let iid =
        t.sb.file_issue("mallory", "Jane: tag clean-up", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("bli", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    assert!(
        zd(&t.sb, "global", "jane.doe@gitlab.com")
            .unwrap()
            .tags
            .contains(&"partner_support_agent".to_string()),
        "jane lost her tag on the approval of a manager mallory chose:\n{}",
        bot_text(&t.sb, iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: verification bound to one person, applied to all).
/// A US Federal request for two people: Bo Li (a verified citizen) first,
/// mallory second, same manager. The bot's citizenship request (comment and
/// e-mail) names only the first person (`process.rs` `verification()`:
/// `request.subjects.first()`), the People team verifies Bo Li, and the single
/// `US-Citizenship::Verified` label provisions both.
#[tokio::test]
async fn closed_federal_second_person_rides_on_the_first_persons_citizenship() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}{}\n- [ ] Zendesk US Federal: Light Agent\n",
        row("Bo Li", "bo.li@gitlab.com", "bli", "mlee"),
        row("Mallory Mallet", "mallory@gitlab.com", "mallory", "mlee")
    );
    let iid =
        t.sb.file_issue("mallory", "Zendesk US Federal light agents", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("people-connect-1", iid, VERIFIED)
        .await
        .unwrap();
    t.run_for(4).await;
    // One verification label cannot vouch for two people: refused.
    assert!(zd(&t.sb, "federal", "mallory@gitlab.com").is_none());
    assert!(zd(&t.sb, "federal", "bo.li@gitlab.com").is_none());
    let text = bot_text(&t.sb, iid);
    assert!(text.contains("verified per person"), "{text}");
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: verification asked about a name the requester chose).
/// Mallory files a US Federal light agent for herself (her own e-mail and
/// username, so identity checks pass) but writes "Bo Li" in the name column.
/// The citizenship request asks the People team "Can you verify if `Bo Li` is
/// a US Citizen?"; they verify Bo Li, and mallory is provisioned. The name is
/// never compared with the identity source's name, and the request carries no
/// e-mail or username.
#[tokio::test]
async fn closed_federal_citizenship_asked_about_a_name_the_requester_chose() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk US Federal: Light Agent\n",
        row("Bo Li", "mallory@gitlab.com", "mallory", "mlee")
    );
    let iid =
        t.sb.file_issue("mallory", "Zendesk US Federal light agent", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("people-connect-1", iid, VERIFIED)
        .await
        .unwrap();
    t.run_for(4).await;
    let ask = citizenship_question(&t.sb, iid);
    if zd(&t.sb, "federal", "mallory@gitlab.com").is_some() {
        assert!(
            ask.contains("Mallory") || ask.contains("mallory"),
            "mallory was provisioned in US Federal on a verification of:\n{ask}"
        );
    }
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: plan drift: the executed steps are not the approved steps).
/// The approval binds the request digest, not the steps. The plan comment
/// said Robin is "already a light agent; nothing to do" (plus the Okta
/// group). Robin is then suspended (offboarded elsewhere). The manager
/// approves the plan as posted; `approved()` rebuilds the steps from the
/// state observed *now* (`plan::build`), which adds "unsuspend the account",
/// a step no plan comment listed, and runs it.
#[tokio::test]
async fn closed_approved_plan_runs_an_unsuspend_no_plan_listed() {
    let mut t = crate::tester!().await;
    seed(
        &t.sb,
        "global",
        "Robin Kim",
        "robin.kim@gitlab.com",
        "light-agent",
        None,
        &[],
        false,
    );
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Light Agent\n",
        row("Robin Kim", "robin.kim@gitlab.com", "rkim", "mlee")
    );
    let iid =
        t.sb.file_issue("mallory", "Robin: Zendesk Global light agent", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    let plan = bot_text(&t.sb, iid);
    assert!(!plan.contains("unsuspend"), "{plan}");
    t.sb.zd("global")
        .user_mut_by_email("robin.kim@gitlab.com")
        .unwrap()
        .suspended = true;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    assert!(
        zd(&t.sb, "global", "robin.kim@gitlab.com")
            .unwrap()
            .suspended,
        "the bot unsuspended Robin although no plan comment said so:\n{}",
        bot_text(&t.sb, iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: plan drift, second form: a refusal does not consume the approval).
/// A tag for jdoe, who has no Zendesk account: the plan lists no step ("has no
/// light-agent or agent account ... Nothing was changed"), the manager
/// approves anyway, and the bot refuses ("A light agent account is needed
/// first"). Weeks later jdoe has an account; mallory comments on the old
/// issue and the bot adds the tag on the old approval, a step no plan comment
/// ever listed. `Stage` only ends with a *result* note; a refusal leaves the
/// plan Current and its approvals valid forever.
#[tokio::test]
async fn closed_refused_request_runs_later_on_the_old_approval() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: add tag `partner_support_agent`\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    let iid =
        t.sb.file_issue("mallory", "Jane: partner tag", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    assert!(
        bot_text(&t.sb, iid).contains("needed first"),
        "{}",
        bot_text(&t.sb, iid)
    );
    // Later: jane is a light agent (through her own self-service request).
    seed(
        &t.sb,
        "global",
        "Jane Doe",
        "jane.doe@gitlab.com",
        "light-agent",
        None,
        &[],
        false,
    );
    t.sb.comment_as("mallory", iid, "any news?").await.unwrap();
    t.run_for(4).await;
    assert!(
        zd(&t.sb, "global", "jane.doe@gitlab.com")
            .unwrap()
            .tags
            .is_empty(),
        "a refused request ran later on its old approval:\n{}",
        bot_text(&t.sb, iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: class 7 variant: a time-bound grant extended on the same issue
/// becomes permanent).
/// jdoe files a self-service light agent with `Expires:` (done at once; the
/// store records its undo: demote). She then edits the same issue to ask for
/// Support Engineer, still time-bound; the manager and a system owner approve
/// the new plan, which says the access "will be revoked on" the date. The
/// second grant's undo is never stored: `store::record_grant` is
/// `ON CONFLICT(project, iid, subject, instance) DO NOTHING`, so the first
/// record stays, and on the date `still_owned` finds the account "no longer
/// has Light Agent" and keeps everything. Support Engineer becomes permanent.
#[tokio::test]
async fn closed_time_bound_upgrade_on_the_same_issue_is_never_revoked() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\nExpires: {}\n\n- [ ] Zendesk Global: Light Agent\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee"),
        day(10)
    );
    let iid =
        t.sb.file_issue("jdoe", "Temporary Zendesk access", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    assert!(is_light_agent(&t.sb, "global", "jane.doe@gitlab.com"));
    // The issue may have been closed (light agent requests close when done).
    put(&t.sb, "jdoe", iid, &[("state_event", "reopen")]).await;
    let upgraded = t.sb.description(iid).replace(
        "- [x] Zendesk Global: Light Agent",
        "- [ ] Zendesk Global: Agent - Support Engineer",
    );
    t.sb.edit_description("jdoe", iid, &upgraded).await.unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    assert_eq!(
        custom_role(&t.sb, "global", "jane.doe@gitlab.com").as_deref(),
        Some("Support Engineer"),
        "setup: the time-bound upgrade was granted:\n{}",
        bot_text(&t.sb, iid)
    );
    t.bot.clock.set_offset(chrono::Duration::days(11));
    t.run_for(4).await;
    t.run_for(4).await;
    assert_ne!(
        custom_role(&t.sb, "global", "jane.doe@gitlab.com").as_deref(),
        Some("Support Engineer"),
        "a time-bound Support Engineer grant outlived its date:\n{}",
        bot_text(&t.sb, iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: class 7 inverse: stale holdings keep access after expiry).
/// jdoe got a permanent light agent (holding recorded), was then offboarded
/// (demoted, suspended, out of Okta; the holding is never cleared), and is
/// re-hired with a time-bound Support Engineer grant. On the date, the undo
/// demotes her but keeps "suspend" and "remove from Okta" because
/// `store::other_holdings` still returns the light-agent holding of the old,
/// long revoked request (`plan::still_owned`: "another request in force").
/// She ends active and in the Okta group, which nothing in force grants.
#[tokio::test]
async fn closed_expiry_after_offboarding_keeps_the_okta_group_and_the_account_active() {
    let mut t = crate::tester!().await;
    // 1. A permanent self-service light agent.
    let (author, title, labels, body) = demo("light agent, Zendesk Global");
    let la =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    t.run_for(4).await;
    assert!(
        is_light_agent(&t.sb, "global", "jane.doe@gitlab.com"),
        "{}",
        bot_text(&t.sb, la)
    );
    // 2. Offboarded by the automation.
    let (_, _, olabels, obody) = demo("offboarding");
    let obody = obody.replace(
        "| Casey Quinn | casey.quinn@gitlab.com | @cquinn | @mlee |",
        "| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |",
    );
    let off =
        t.sb.file_issue(
            "gitlab-employment-bot",
            "Offboarding: Jane Doe",
            &olabels,
            &obody,
        )
        .await
        .unwrap();
    t.run_for(4).await;
    let j = zd(&t.sb, "global", "jane.doe@gitlab.com").unwrap();
    assert!(
        j.suspended && !t.sb.google_member(GLOBAL_OKTA, "jane.doe@gitlab.com"),
        "setup: offboarding:\n{}",
        bot_text(&t.sb, off)
    );
    // 3. Re-hired: a time-bound Support Engineer, approved.
    let body = format!(
        "{TABLE}{}\nExpires: {}\n\n- [ ] Zendesk Global: Agent - Support Engineer\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee"),
        day(10)
    );
    let tb =
        t.sb.file_issue("jdoe", "Temporary Support Engineer", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", tb, MANAGER).await.unwrap();
    t.sb.add_label("lyle", tb, OWNER).await.unwrap();
    t.run_for(4).await;
    let j = zd(&t.sb, "global", "jane.doe@gitlab.com").unwrap();
    assert!(!j.suspended, "setup: grant:\n{}", bot_text(&t.sb, tb));
    // 4. The date.
    t.bot.clock.set_offset(chrono::Duration::days(11));
    t.run_for(4).await;
    t.run_for(4).await;
    let j = zd(&t.sb, "global", "jane.doe@gitlab.com").unwrap();
    assert!(
        j.suspended && !t.sb.google_member(GLOBAL_OKTA, "jane.doe@gitlab.com"),
        "after expiry jane is suspended={} and in Okta={}; before the grant she was suspended and out of Okta:\n{}",
        j.suspended,
        t.sb.google_member(GLOBAL_OKTA, "jane.doe@gitlab.com"),
        bot_text(&t.sb, tb)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: revocation evaded silently).
/// The leaver (cquinn still has GitLab access on their last day) edits their
/// own offboarding before the bot's plan: both managed lines become `[~]`
/// (not applicable) and, in the same edit, the unmanaged Slack line is
/// ticked. The sandbox, like GitLab, writes only the Slack tick note; the `[~]`
/// changes are invisible to `trust_problems`. The bot plans "nothing to do",
/// reports the offboarding done, and Casey keeps Zendesk and Okta. (On real
/// GitLab, `[~]` toggles write "marked the checklist item ... as
/// inapplicable", which `checklist_note_item` does not recognise at all, so
/// even without the masking tick the change may pass.)
#[tokio::test]
async fn closed_leaver_marks_own_offboarding_not_applicable_masked_by_a_tick() {
    let mut t = crate::tester!().await;
    seed_leaver(&t.sb);
    let (author, title, labels, body) = demo("offboarding");
    let iid =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    let forged = body
        .replace(
            "- [ ]  @zd-admin-1 @zd-admin-2: Remove the team member from Zendesk Global",
            "- [~]  @zd-admin-1 @zd-admin-2: Remove the team member from Zendesk Global",
        )
        .replace(
            "- [ ]  @it-ops-1: Remove the team member from Google Group",
            "- [~]  @it-ops-1: Remove the team member from Google Group",
        )
        .replace(
            "- [ ]  @it-ops-1: Remove the team member from Slack",
            "- [x]  @it-ops-1: Remove the team member from Slack",
        );
    assert_ne!(forged, body);
    t.sb.edit_description("cquinn", iid, &forged).await.unwrap();
    t.run_for(4).await;
    // The leaver touched their own offboarding: it is no longer pre-approved,
    // a system owner must confirm what is left alone (ops are told).
    let text = bot_text(&t.sb, iid);
    assert!(text.contains("**Not pre-approved:**"), "{text}");
    assert!(text.contains("Zendesk::System Owner Approved"), "{text}");
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: revocation fails open).
/// Any edit of an offboarding by someone other than the automation refuses the
/// whole issue (`trust_problems`), so a leaver who still has GitLab access
/// keeps all their access by adding a space to their own offboarding. Ops is
/// told, but nothing is revoked; for a revocation, refusing is the unsafe
/// direction (the change nobody approved is the leaver keeping access).
#[tokio::test]
async fn closed_leaver_keeps_access_by_touching_own_offboarding() {
    let mut t = crate::tester!().await;
    seed_leaver(&t.sb);
    let (author, title, labels, body) = demo("offboarding");
    let iid =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    let touched = body.replace(
        "Remove the team member from Slack",
        "Remove the team member from Slack ",
    );
    t.sb.edit_description("cquinn", iid, &touched)
        .await
        .unwrap();
    t.run_for(4).await;
    // Not refused: a system owner confirms the changed offboarding, and it runs.
    let text = bot_text(&t.sb, iid);
    assert!(text.contains("**Not pre-approved:**"), "{text}");
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    assert_casey_offboarded(&t.sb);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: self-service touches a full agent).
/// Mallory is a suspended full agent (suspended by ops, not demoted). Her
/// self-service light-agent request is planned as "already a full agent;
/// nothing was changed", but the Okta step is still planned and run: the
/// suspended full agent is put back in the Okta group with no approval.
/// `plan::grant_level` skips the suspended check when `keeps_full_agent`,
/// and the executor's self-service guard only covers role steps, not Google.
#[tokio::test]
async fn closed_self_service_readds_okta_for_a_suspended_full_agent() {
    let mut t = crate::tester!().await;
    seed(
        &t.sb,
        "global",
        "Mallory Mallet",
        "mallory@gitlab.com",
        "agent",
        Some("Support Engineer"),
        &["Support AMER"],
        true,
    );
    let iid =
        t.sb.file_issue(
            "mallory",
            "Mallory: Zendesk Global light agent",
            &[],
            "- [ ] Zendesk Global: Light Agent\n",
        )
        .await
        .unwrap();
    t.run_for(4).await;
    assert!(
        !t.sb.google_member(GLOBAL_OKTA, "mallory@gitlab.com"),
        "a suspended full agent was put back in the Okta group by self-service:\n{}",
        bot_text(&t.sb, iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: meaning read loosely: verbs are ignored).
/// An item that asks to *remove* access is read as a grant: the level and the
/// Okta group are found by phrase match and every other word is dropped
/// (`classify_visible`, `match_level`, `GROUP_TOKEN`). A manager who reads the
/// description approves a removal and the bot creates the account. The plan
/// comment does say "create", so the approval is informed by the plan, but the
/// bot should refuse an item whose words contradict what it will do.
#[tokio::test]
async fn closed_items_asking_to_remove_are_read_as_grants() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: revoke Light Agent\n- [ ] Google Group: remove from okta-zendeskglobal-users\n",
        row("Robin Kim", "robin.kim@gitlab.com", "rkim", "mlee")
    );
    let iid =
        t.sb.file_issue("mallory", "Robin leaves Zendesk", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["robin.kim@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// CLOSED (was a hole: class 10, low: the bot mentions people the requester chose).
/// A request naming five people with five different "managers" can never get
/// the manager approval (one manager for all is required), yet the stale
/// reminder mentions every named manager who is a GitLab user. A requester
/// can make the bot ping arbitrary employees (executives, on-call) once per
/// request; 25 rows give 25 mentions.
#[tokio::test]
async fn closed_stale_reminder_mentions_everyone_the_requester_named_as_manager() {
    let mut t = crate::tester!().await;
    let people = [
        ("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee"),
        ("Bo Li", "bo.li@gitlab.com", "bli", "kpatel"),
        ("Alex Chen", "alex.chen@gitlab.com", "achen", "lyle"),
        ("Robin Kim", "robin.kim@gitlab.com", "rkim", "jason"),
        (
            "Sam Rivera",
            "sam.rivera@gitlab.com",
            "srivera",
            "people-connect-1",
        ),
    ];
    let rows: String = people.iter().map(|p| row(p.0, p.1, p.2, p.3)).collect();
    let body = format!("{TABLE}{rows}\n- [ ] Google Group: okta-zendeskglobal-users\n");
    t.sb.gitlab.lock().clock_offset = -chrono::Duration::days(10);
    let iid =
        t.sb.file_issue("mallory", "Okta for my team", &[], &body)
            .await
            .unwrap();
    t.sb.gitlab.lock().clock_offset = chrono::Duration::zero();
    t.restart().await;
    t.run_for(4).await;
    let text = bot_text(&t.sb, iid);
    let mentioned: Vec<&str> = people
        .iter()
        .map(|p| p.3)
        .filter(|m| outside_code(&text).contains(&format!("@{m}")))
        .collect();
    assert!(
        mentioned.len() <= 1,
        "the bot mentioned {mentioned:?}, none of whom can approve this:\n{text}"
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Rename a project label over HTTP as `user` (GitLab Labels API; Reporters
/// may manage labels).
async fn rename_label(sb: &Sandbox, user: &str, old: &str, new: &str) -> reqwest::StatusCode {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    reqwest::Client::new()
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
        .status()
}

/// CLOSED (was a hole: approval identified by a mutable label name).
/// (Sandbox addition, documented GitLab behaviour: `PUT /projects/:id/labels/:label_id`
/// with `new_name`; label events refer to the label, so they report its
/// current name; Reporters may manage labels.)
/// After the bot's plan, the manager triages mallory's request with an
/// everyday label (`support::in progress`). Mallory renames the real approval
/// label out of the way and then renames `support::in progress` to
/// `AR-Approval::Manager Approved`. The issue now carries the approval label,
/// and its latest `add` event is by the manager, after the plan: the bot
/// grants. `approval::check_one` and `latest_add` compare label *names*
/// (`LabelEvent::label` is `e.label.map(|l| l.name)` in `gitlab.rs`); the
/// label id is never pinned.
#[tokio::test]
async fn closed_approval_forged_by_renaming_a_label_the_manager_applied() {
    let mut t = crate::tester!().await;
    // The approval label exists in the project (used on an earlier request).
    let (author, title, labels, body) = demo("special request");
    let old =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    t.sb.add_label("mlee", old, MANAGER).await.unwrap();
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Light Agent, add tag `partner_support_agent`\n",
        row("Mallory Mallet", "mallory@gitlab.com", "mallory", "mlee")
    );
    let iid =
        t.sb.file_issue("mallory", "Mallory: light agent and tag", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    // The manager looks at it and marks it in progress (not an approval).
    t.sb.add_label("mlee", iid, "support::in progress")
        .await
        .unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["mallory@gitlab.com"]);
    assert!(
        rename_label(
            &t.sb,
            "mallory",
            MANAGER,
            "AR-Approval::Manager Approved (v1)"
        )
        .await
        .is_success()
    );
    assert!(
        rename_label(&t.sb, "mallory", "support::in progress", MANAGER)
            .await
            .is_success()
    );
    // A rename does not touch the issue; any comment makes the bot look again.
    t.sb.comment_as("mallory", iid, "ping").await.unwrap();
    t.run_for(4).await;
    assert!(
        zd(&t.sb, "global", "mallory@gitlab.com").is_none(),
        "granted on a renamed label:\n{}",
        bot_text(&t.sb, iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// The webhook listener as `run` serves it (its own channel, so the test can
/// count what gets queued).
async fn webhook(
    capacity: usize,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<access_bot::bot::Event>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let metrics = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
    let (addr, task) = access_bot::bot::run::serve_web(
        "127.0.0.1:0",
        Some(access_bot::secret::Secret::new("hook-secret")),
        "access-bot",
        vec![PROJECT.into()],
        tx,
        metrics,
    )
    .await
    .unwrap();
    (addr, rx, task)
}

/// CLOSED (was a hole: class 11, not addressed by the rewrite).
/// `bot::run::serve_web` is a bare `axum::serve`: no header-read or idle
/// timeout and no connection limit. 200 unauthenticated connections that send
/// half a request line stay open indefinitely (here: still open after 12 s),
/// each holding a descriptor of the bot's process.
#[tokio::test]
async fn closed_webhook_keeps_idle_unauthenticated_connections_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, _rx, _task) = webhook(16).await;
    let mut conns = Vec::new();
    for _ in 0..200 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        conns.push(c);
    }
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    let mut open = 0;
    for c in &mut conns {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(std::time::Duration::from_millis(20), c.read(&mut buf)).await {
            Err(_) => open += 1, // nothing to read, not closed
            Ok(Ok(0)) => {}      // closed by the server
            Ok(_) => {}          // an answer (408) and then a close
        }
    }
    assert_eq!(
        open, 0,
        "{open} of 200 idle half-requests are still open after 12 s"
    );
}

/// CLOSED (was a hole: class 11): `/metrics` is served on the webhook's public listener,
/// unauthenticated, and there is no setting to move it to a private one.
#[tokio::test]
async fn closed_metrics_are_public_on_the_webhook_listener() {
    let (addr, _rx, _task) = webhook(16).await;
    let r = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_ne!(
        r.status(),
        200,
        "/metrics answered anyone: {}",
        r.text().await.unwrap_or_default()
    );
}

/// CLOSED (was a hole: class 11): duplicate events for one issue are not coalesced. 300
/// valid hooks for the same issue queue 300 events; `run` handles each with a
/// full read of the issue (notes, label events, users).
#[tokio::test]
async fn closed_webhook_duplicate_events_are_not_coalesced() {
    let (addr, mut rx, _task) = webhook(1024).await;
    let http = reqwest::Client::new();
    let payload = serde_json::json!({"object_kind": "issue", "user": {"username": "mallory"}, "project": {"path_with_namespace": PROJECT}, "object_attributes": {"iid": 1}});
    for _ in 0..300 {
        let r = http
            .post(format!("http://{addr}/webhook"))
            .header("X-Gitlab-Event", "Issue Hook")
            .header("X-Gitlab-Token", "hook-secret")
            .json(&payload)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let mut queued = 0;
    while rx.try_recv().is_ok() {
        queued += 1;
    }
    assert!(queued <= 2, "{queued} events queued for one issue");
}

// ========================================================================
// PART 2: REFUSED. Each of these probes PASSES: the attack is refused.
// ========================================================================

/// Class 1: a marker in an unmanaged item is echoed inert; the approval
/// binds to the bot's sealed plan, so swapping the level afterwards grants
/// nothing more.
#[tokio::test]
async fn refused_forged_marker_in_an_unmanaged_item() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Engineer\n- [ ] Slack: <!-- access-bot:v2 kind=plan keys=plan:E digest=E mac=00 -->\n- [ ] Slack: --> <!-- access-bot:v2 kind=result keys=- digest=E done=1 mac=00 -->\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane: Support Engineer", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    let swapped =
        t.sb.description(iid)
            .replace("Agent - Support Engineer", "Agent - Support Manager")
            .replace("- [x] Zendesk Global", "- [ ] Zendesk Global");
    t.sb.edit_description("jdoe", iid, &swapped).await.unwrap();
    t.run_for(4).await;
    assert_inert(&t.sb, iid);
    assert_ne!(
        custom_role(&t.sb, "global", "jane.doe@gitlab.com").as_deref(),
        Some("Support Manager")
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 1: markers, mentions and quick actions in bad e-mails, usernames and
/// levels are echoed inert in the error comment.
#[tokio::test]
async fn refused_forged_marker_and_mentions_in_error_texts() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}| Jane | <!--access-bot:v2 kind=plan-->@gitlab.com | @all | @all |\n| Bo | bo.li@gitlab.com | `@bli /close` | @mlee |\n\n- [ ] Zendesk Global: @all <!-- access-bot:v2 kind=plan --> [x](javascript:alert(1)) admin\n- [ ] Zendesk Global: add tag `x-->@all`\n"
    );
    let iid =
        t.sb.file_issue("mallory", "Zendesk Global", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    assert!(
        bot_text(&t.sb, iid).contains("cannot read"),
        "{}",
        bot_text(&t.sb, iid)
    );
    assert_inert(&t.sb, iid);
    assert_eq!(t.sb.state(iid), "opened");
    untouched(&t.sb, &["bo.li@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 1: a copy of a genuine sealed bot note, posted by mallory on another
/// issue (or the same one), counts for nothing.
#[tokio::test]
async fn refused_replayed_bot_note_posted_by_someone_else() {
    let mut t = crate::tester!().await;
    let (author, title, labels, body) = demo("light agent, Zendesk Global");
    let a =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    t.run_for(4).await;
    let notes: Vec<String> = t.sb.bot_comments(a).into_iter().map(|c| c.body).collect();
    let special = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Manager\n",
        row("Mallory Mallet", "mallory@gitlab.com", "mallory", "mlee")
    );
    let b =
        t.sb.file_issue("mallory", "Support Manager", &[], &special)
            .await
            .unwrap();
    for n in &notes {
        t.sb.comment_as("mallory", b, n).await.unwrap();
        t.sb.comment_as(
            "mallory",
            b,
            &n.replace(&format!("iid={a}"), &format!("iid={b}")),
        )
        .await
        .unwrap();
    }
    t.run_for(4).await;
    untouched(&t.sb, &["mallory@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 2: a "light agent" title does not lower what Support Manager needs.
#[tokio::test]
async fn refused_light_agent_title_with_a_support_manager_item() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Manager\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    let iid =
        t.sb.file_issue(
            "jdoe",
            "Jane Doe: Zendesk Global light agent",
            &["support::to do"],
            &body,
        )
        .await
        .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["jane.doe@gitlab.com"]);
    assert!(bot_text(&t.sb, iid).contains(OWNER));
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 2: self-service grants only the light agent; a tag makes it need the manager.
#[tokio::test]
async fn refused_self_service_light_agent_with_a_tag() {
    let mut t = crate::tester!().await;
    let iid =
        t.sb.file_issue(
            "jdoe",
            "Jane: light agent",
            &[],
            "- [ ] Zendesk Global: Light Agent, add tag `order_management_team`\n",
        )
        .await
        .unwrap();
    t.run_for(4).await;
    let _ = iid;
    untouched(&t.sb, &["jane.doe@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 2: a self-service light agent with the Okta group of the other
/// instance (not declared for self-service) waits.
#[tokio::test]
async fn refused_self_service_with_the_other_instances_okta_group() {
    let mut t = crate::tester!().await;
    t.sb.file_issue(
        "jdoe",
        "Jane: light agent",
        &[],
        "- [ ] Zendesk Global: Light Agent\n- [ ] Google Group: okta-zendeskfederal-users\n",
    )
    .await
    .unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["jane.doe@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 2: a role change filed with a title that makes it a role change needs
/// the system owner even if the content looks like an access request.
#[tokio::test]
async fn refused_role_change_with_manager_only() {
    let mut t = crate::tester!().await;
    seed(
        &t.sb,
        "global",
        "Alex Chen",
        "alex.chen@gitlab.com",
        "agent",
        Some("Support Engineer"),
        &["Support AMER", "Support EMEA"],
        false,
    );
    let (author, title, labels, body) = demo("role change");
    let iid =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("kpatel", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    assert_eq!(
        custom_role(&t.sb, "global", "alex.chen@gitlab.com").as_deref(),
        Some("Support Engineer")
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 3: a pre-ticked Support Manager is part of the digest; unticking it
/// after approval voids the approval.
#[tokio::test]
async fn refused_pre_ticked_item_unticked_after_approval() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [x] Zendesk Global: Agent - Support Manager\n- [ ] Google Group: okta-zendeskglobal-users\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane: Okta", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    let unticked =
        t.sb.description(iid)
            .replace("- [x] Zendesk Global", "- [ ] Zendesk Global");
    t.sb.edit_description("jdoe", iid, &unticked).await.unwrap();
    t.run_for(4).await;
    assert!(zd(&t.sb, "global", "jane.doe@gitlab.com").is_none());
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 3 with GitLab's note masking, on a normal request: after approval the
/// requester changes the level and ticks an unmanaged line in one edit (only
/// the tick note is written). The digest changed, so a new plan is needed.
#[tokio::test]
async fn refused_level_swap_after_approval_masked_by_an_unmanaged_tick() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Engineer\n- [ ] Slack: #support\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane: Support Engineer", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    let swapped = body
        .replace("Agent - Support Engineer", "Agent - Support Manager")
        .replace("- [ ] Slack", "- [x] Slack");
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.sb.edit_description("jdoe", iid, &swapped).await.unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["jane.doe@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 4: after completion, unticking re-ticks only; nothing is re-granted
/// to someone who was offboarded since.
#[tokio::test]
async fn refused_untick_after_done_does_not_regrant() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Engineer\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane: Support Engineer", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    assert_eq!(
        custom_role(&t.sb, "global", "jane.doe@gitlab.com").as_deref(),
        Some("Support Engineer")
    );
    {
        let mut w = t.sb.zd("global");
        let u = w.user_mut_by_email("jane.doe@gitlab.com").unwrap();
        u.role = "end-user".into();
        u.custom_role_id = None;
        u.suspended = true;
    }
    let unticked = t.sb.description(iid).replace("- [x]", "- [ ]");
    t.sb.edit_description("jdoe", iid, &unticked).await.unwrap();
    t.run_for(4).await;
    let j = zd(&t.sb, "global", "jane.doe@gitlab.com").unwrap();
    assert_eq!((j.role.as_str(), j.suspended), ("end-user", true));
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 4: reopening and extending a finished self-service request after an
/// offboarding does not reactivate the suspended account.
#[tokio::test]
async fn refused_reopen_and_extend_a_done_self_service_request_after_offboarding() {
    let mut t = crate::tester!().await;
    let (author, title, labels, body) = demo("light agent, Zendesk Global");
    let iid =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    t.run_for(4).await;
    assert!(is_light_agent(&t.sb, "global", "jane.doe@gitlab.com"));
    {
        let mut w = t.sb.zd("global");
        let u = w.user_mut_by_email("jane.doe@gitlab.com").unwrap();
        u.role = "end-user".into();
        u.custom_role_id = None;
        u.suspended = true;
    }
    t.sb.google
        .lock()
        .groups
        .entry(GLOBAL_OKTA.to_string())
        .or_default()
        .retain(|m| m.email != "jane.doe@gitlab.com");
    put(&t.sb, "jdoe", iid, &[("state_event", "reopen")]).await;
    let more = format!(
        "{}\n- [ ] Google Group: okta-zendeskglobal-users\n",
        t.sb.description(iid).replace("- [x]", "- [ ]")
    );
    t.sb.edit_description("jdoe", iid, &more).await.unwrap();
    t.run_for(4).await;
    let j = zd(&t.sb, "global", "jane.doe@gitlab.com").unwrap();
    assert!(j.suspended && j.role == "end-user");
    assert!(!t.sb.google_member(GLOBAL_OKTA, "jane.doe@gitlab.com"));
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 5: a manager approving their own promotion under their e-mail only
/// (no username, upper case) is self-approval.
#[tokio::test]
async fn refused_approver_named_by_email_only() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}| Morgan Lee | MLee@GitLab.com | - | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Manager\n"
    );
    let iid =
        t.sb.file_issue("rkim", "Morgan: Support Manager", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    assert_ne!(
        custom_role(&t.sb, "global", "mlee@gitlab.com").as_deref(),
        Some("Support Manager")
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 5: a row that names someone else's username with the approver's e-mail is refused.
#[tokio::test]
async fn refused_row_with_username_and_email_of_different_people() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}| Lyle | lyle@gitlab.com | @rkim | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Manager\n"
    );
    let iid =
        t.sb.file_issue("rkim", "Support Manager", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["lyle@gitlab.com", "robin.kim@gitlab.com"]);
    assert!(bot_text(&t.sb, iid).contains("will not act"));
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 5: a system owner in a bulk request approving it (username in another case).
#[tokio::test]
async fn refused_system_owner_in_a_bulk_request_approves_it() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}| Lyle Kozloff | lyle@gitlab.com | @LYLE | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Manager\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    let iid =
        t.sb.file_issue("rkim", "Support Managers", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["lyle@gitlab.com", "jane.doe@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 5: the requester naming themself as the subject's manager cannot approve.
#[tokio::test]
async fn refused_requester_names_themself_as_manager() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Light Agent\n",
        row("Robin Kim", "robin.kim@gitlab.com", "rkim", "mallory")
    );
    let iid =
        t.sb.file_issue("mallory", "Robin: light agent", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mallory", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["robin.kim@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 5: bulk request with different managers: no single manager can approve.
#[tokio::test]
async fn refused_bulk_request_with_mixed_managers() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}{}\n- [ ] Google Group: okta-zendeskglobal-users\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee"),
        row("Mallory Mallet", "mallory@gitlab.com", "mallory", "kpatel")
    );
    let iid = t.sb.file_issue("jdoe", "Okta", &[], &body).await.unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["jane.doe@gitlab.com", "mallory@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 5: the citizenship verifier verifying themself (a request someone
/// else filed for them) is self-approval.
#[tokio::test]
async fn refused_verifier_verifies_themself() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk US Federal: Light Agent\n",
        row(
            "Pat People",
            "people-connect-1@gitlab.com",
            "people-connect-1",
            "mlee"
        )
    );
    let iid =
        t.sb.file_issue("mallory", "Pat: US Federal", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("people-connect-1", iid, VERIFIED)
        .await
        .unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["people-connect-1@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 6: an entitlement with the offboarding label added by mallory is refused.
#[tokio::test]
async fn refused_offboarding_label_added_to_an_entitlement() {
    let mut t = crate::tester!().await;
    seed(
        &t.sb,
        "global",
        "Sam Rivera",
        "sam.rivera@gitlab.com",
        "agent",
        Some("Support Engineer"),
        &["Support AMER"],
        false,
    );
    let (author, title, labels, body) = demo("role-based entitlement");
    let iid =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    t.sb.add_label("mallory", iid, "offboarding").await.unwrap();
    t.run_for(4).await;
    let s = zd(&t.sb, "global", "sam.rivera@gitlab.com").unwrap();
    assert!(!s.suspended && s.role == "agent");
    let said = bot_text(&t.sb, iid);
    assert!(
        said.contains("will not act") || said.contains("cannot read"),
        "{said}"
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 6, the control: another team ticking its own (unmanaged) line on an
/// offboarding does not block it.
#[tokio::test]
async fn refused_nothing_control_other_team_ticks_its_own_offboarding_line() {
    let mut t = crate::tester!().await;
    seed_leaver(&t.sb);
    let (author, title, labels, body) = demo("offboarding");
    let iid =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    let ticked = body.replace(
        "- [ ]  @it-ops-1: Remove the team member from Slack",
        "- [x]  @it-ops-1: Remove the team member from Slack",
    );
    t.sb.edit_description("bli", iid, &ticked).await.unwrap();
    t.run_for(4).await;
    assert_casey_offboarded(&t.sb);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 6: an edit of an entitlement after the plan (with a masking tick) is refused.
#[tokio::test]
async fn refused_entitlement_rewritten_after_the_plan() {
    let mut t = crate::tester!().await;
    let (author, title, labels, body) = demo("role-based entitlement");
    // Citizenship-free, so it runs at once; file a second, federal one that waits.
    let fed = body
        .replace(
            "`Zendesk Global`: `Agent, role Support Engineer`",
            "`Zendesk US Federal`: `Light Agent`",
        )
        .replace(
            "Member of okta-zendeskglobal-users",
            "Member of okta-zendeskfederal-users",
        );
    let iid = t.sb.file_issue(author, title, &labels, &fed).await.unwrap();
    t.run_for(4).await;
    assert!(bot_text(&t.sb, iid).contains("plan"));
    let forged = fed
        .replace(
            "| Sam Rivera | sam.rivera@gitlab.com | @srivera | @kpatel |",
            "| Mallory Mallet | mallory@gitlab.com | @mallory | @kpatel |",
        )
        .replace("* [ ]  `Slack`", "* [x]  `Slack`");
    t.sb.edit_description("mallory", iid, &forged)
        .await
        .unwrap();
    t.run_for(4).await;
    t.sb.add_label("people-connect-1", iid, VERIFIED)
        .await
        .unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["mallory@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 7: a time-bound light agent ending does not take away a permanent
/// Support Engineer role approved later.
#[tokio::test]
async fn refused_expiry_keeps_a_later_permanent_role() {
    let mut t = crate::tester!().await;
    let tb = format!(
        "{TABLE}{}\nExpires: {}\n\n- [ ] Zendesk Global: Light Agent\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee"),
        day(10)
    );
    t.sb.file_issue("jdoe", "Temporary light agent", &[], &tb)
        .await
        .unwrap();
    t.run_for(4).await;
    assert!(is_light_agent(&t.sb, "global", "jane.doe@gitlab.com"));
    let perm = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Engineer\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    let p =
        t.sb.file_issue("jdoe", "Support Engineer", &[], &perm)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", p, MANAGER).await.unwrap();
    t.sb.add_label("jason", p, OWNER).await.unwrap();
    t.run_for(4).await;
    t.bot.clock.set_offset(chrono::Duration::days(11));
    t.run_for(4).await;
    t.run_for(4).await;
    assert_eq!(
        custom_role(&t.sb, "global", "jane.doe@gitlab.com").as_deref(),
        Some("Support Engineer")
    );
    assert!(t.sb.google_member(GLOBAL_OKTA, "jane.doe@gitlab.com"));
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 8: an offboarding naming the bot's own Zendesk admin (in upper case).
#[tokio::test]
async fn refused_offboarding_of_the_bots_own_admin_account() {
    let mut t = crate::tester!().await;
    let (author, title, labels, body) = demo("offboarding");
    let body = body.replace(
        "| Casey Quinn | casey.quinn@gitlab.com | @cquinn | @mlee |",
        "| Access Bot | ACCESS-BOT@GitLab.com | - | @mlee |",
    );
    let iid =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    t.run_for(4).await;
    let a = zd(&t.sb, "global", "access-bot@gitlab.com").unwrap();
    assert_eq!(
        (a.role.as_str(), a.suspended),
        ("admin", false),
        "{}",
        bot_text(&t.sb, iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 8: a fully approved request changing a Zendesk admin is refused.
#[tokio::test]
async fn refused_approved_request_for_a_zendesk_admin() {
    let mut t = crate::tester!().await;
    seed(
        &t.sb,
        "global",
        "Bo Li",
        "bo.li@gitlab.com",
        "admin",
        None,
        &[],
        false,
    );
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Light Agent\n",
        row("Bo Li", "bo.li@gitlab.com", "bli", "mlee")
    );
    let iid =
        t.sb.file_issue("mallory", "Bo: light agent", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    assert_eq!(
        zd(&t.sb, "global", "bo.li@gitlab.com").unwrap().role,
        "admin"
    );
    assert!(!t.sb.google_member(GLOBAL_OKTA, "bo.li@gitlab.com"));
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 8: an address on `bot.protected` (configured in mixed case) is never changed.
#[tokio::test]
async fn refused_protected_list_in_mixed_case() {
    let mut t = crate::tester!().await;
    t.sb.config.bot.protected = vec!["Jane.Doe@GitLab.com".into()];
    t.restart().await;
    let (author, title, labels, body) = demo("light agent, Zendesk Global");
    t.sb.file_issue(author, title, &labels, &body)
        .await
        .unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["jane.doe@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 9: a person table in an HTML comment, a block quote or a code block
/// is not read; the visible `Key: value` lines are.
#[tokio::test]
async fn refused_hidden_person_tables() {
    let mut t = crate::tester!().await;
    let hidden = format!(
        "<!--\n{TABLE}{}-->\n\n> {TABLE_Q}> | Mallory | mallory@gitlab.com | @mallory | @mlee |\n\n```\n{TABLE}{}```\n\nEmail: jane.doe@gitlab.com\nGitLab username: @jdoe\n\n- [ ] Zendesk Global: Light Agent\n",
        row("Mallory Mallet", "mallory@gitlab.com", "mallory", "mlee"),
        row("Mallory Mallet", "mallory@gitlab.com", "mallory", "mlee"),
        TABLE_Q = "| Full name | Email | GitLab username | Manager |\n> |---|---|---|---|\n"
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane: light agent", &[], &hidden)
            .await
            .unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["mallory@gitlab.com"]);
    assert!(
        is_light_agent(&t.sb, "global", "jane.doe@gitlab.com"),
        "{}",
        bot_text(&t.sb, iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 9: a checklist item in a block quote, a link reference definition or
/// a code span is not read; the visible light agent is.
#[tokio::test]
async fn refused_hidden_checklist_items() {
    let mut t = crate::tester!().await;
    let body = "[//]: # (- [ ] Zendesk Global: Agent - Support Manager)\n\n> - [ ] Zendesk Global: Agent - Support Manager\n\n    - [ ] Zendesk Global: Agent - Support Manager\n\n- [ ] Zendesk Global: Light Agent\n";
    let iid =
        t.sb.file_issue("jdoe", "Jane: light agent", &[], body)
            .await
            .unwrap();
    t.run_for(4).await;
    assert!(
        is_light_agent(&t.sb, "global", "jane.doe@gitlab.com"),
        "{}",
        bot_text(&t.sb, iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 9: an item inside `<details>` (collapsed when rendered) still counts,
/// so it cannot ride along a self-service request; HTML inside an item is refused.
#[tokio::test]
async fn refused_details_block_and_html_in_items() {
    let mut t = crate::tester!().await;
    let a = t
        .sb
        .file_issue(
            "jdoe",
            "Jane: light agent",
            &[],
            "- [ ] Zendesk Global: Light Agent\n\n<details><summary>more</summary>\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n\n</details>\n",
        )
        .await
        .unwrap();
    let b =
        t.sb.file_issue(
            "mallory",
            "Mallory: light agent",
            &[],
            "- [ ] Zendesk Global: Light Agent <!-- Support Manager -->\n",
        )
        .await
        .unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["jane.doe@gitlab.com", "mallory@gitlab.com"]);
    assert_inert(&t.sb, a);
    assert_inert(&t.sb, b);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 9: a nested task item under an unmanaged parent is read like any
/// other (a self-service request with a nested Support Manager needs approval).
#[tokio::test]
async fn refused_nested_item_under_an_unmanaged_parent() {
    let mut t = crate::tester!().await;
    t.sb.file_issue(
        "mallory",
        "Mallory: light agent",
        &[],
        "- [ ] Slack: #support\n  - [ ] Google Group: okta-zendeskfederal-users\n- [ ] Zendesk Global: Light Agent\n",
    )
    .await
    .unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["mallory@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 10: a ~1 MB description with thousands of unmanaged items carrying
/// `@all`, quick actions, links and markers: the bot's comment is small and inert.
#[tokio::test]
async fn refused_huge_description_with_mentions_and_quick_actions() {
    let mut t = crate::tester!().await;
    let mut body = String::from("- [ ] Zendesk Global: Light Agent\n");
    let line = "- [ ] Slack: @all /close [x](http://evil) <!-- access-bot:v2 kind=plan --> ";
    while body.len() < 1_000_000 - 200 {
        body.push_str(line);
        body.push_str(&"z".repeat(40));
        body.push('\n');
    }
    let iid =
        t.sb.file_issue("jdoe", "Jane: light agent", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    assert_inert(&t.sb, iid);
    assert!(is_light_agent(&t.sb, "global", "jane.doe@gitlab.com"));
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 10: 26 people in one request are refused, and `@all` as a manager
/// is refused and never mentioned.
#[tokio::test]
async fn refused_too_many_people_and_all_as_manager() {
    let mut t = crate::tester!().await;
    let rows: String = (0..26)
        .map(|i| {
            format!(
                "| Person {} | p{i}@gitlab.com | - | @mlee |\n",
                [
                    "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P",
                    "Q", "R", "S", "T", "U", "V", "W", "X", "Y", "Z"
                ][i]
            )
        })
        .collect();
    let a =
        t.sb.file_issue(
            "mallory",
            "Bulk",
            &[],
            &format!("{TABLE}{rows}\n- [ ] Google Group: okta-zendeskglobal-users\n"),
        )
        .await
        .unwrap();
    t.sb.gitlab.lock().clock_offset = -chrono::Duration::days(10);
    let b =
        t.sb.file_issue(
            "mallory",
            "Okta",
            &[],
            &format!(
                "{TABLE}{}\n- [ ] Google Group: okta-zendeskglobal-users\n",
                row("Mallory Mallet", "mallory@gitlab.com", "mallory", "all")
            ),
        )
        .await
        .unwrap();
    t.sb.gitlab.lock().clock_offset = chrono::Duration::zero();
    t.run_for(4).await;
    assert!(t.sb.google.lock().members(GLOBAL_OKTA).is_empty());
    assert_inert(&t.sb, a);
    assert_inert(&t.sb, b);
    assert!(
        bot_text(&t.sb, a).contains("split"),
        "{}",
        bot_text(&t.sb, a)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Unicode: lookalike domains and at-signs, zero-width characters in a level,
/// a lookalike username and a right-to-left override: nothing is granted and
/// the comments stay inert.
#[tokio::test]
async fn refused_unicode_tricks() {
    let mut t = crate::tester!().await;
    let bodies = [
        // Cyrillic "а" in the domain.
        format!("{TABLE}| Mallory | mallory@gitlаb.com | @mallory | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"),
        // Fullwidth at sign.
        format!("{TABLE}| Jane | jane.doe＠gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"),
        // Zero-width space inside the level, right-to-left override in the system name.
        "- [ ] Zendesk Global: Support\u{200b} Manager\n- [ ] \u{202e}labolG ksednеZ: Light Agent\n".to_string(),
        // Cyrillic "а" in the manager's username.
        format!("{TABLE}| Mallory | mallory@gitlab.com | @mallory | @mlее |\n\n- [ ] Google Group: okta-zendeskglobal-users\n"),
    ];
    let mut iids = vec![];
    for b in &bodies {
        iids.push(t.sb.file_issue("mallory", "Zendesk", &[], b).await.unwrap());
    }
    t.run_for(4).await;
    for iid in &iids {
        t.sb.add_label("mlee", *iid, MANAGER).await.unwrap();
        t.sb.add_label("lyle", *iid, OWNER).await.unwrap();
    }
    t.run_for(4).await;
    for iid in iids {
        assert_inert(&t.sb, iid);
    }
    untouched(&t.sb, &["mallory@gitlab.com", "jane.doe@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// A request that grants and revokes, and a removal outside an offboarding, are refused.
#[tokio::test]
async fn refused_revocation_outside_an_offboarding() {
    let mut t = crate::tester!().await;
    seed_leaver(&t.sb);
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Light Agent\n- [ ]  @zd-admin-1: Remove the team member from Zendesk Global\n",
        row("Casey Quinn", "casey.quinn@gitlab.com", "cquinn", "mlee")
    );
    let iid =
        t.sb.file_issue("mallory", "Casey", &[], &body)
            .await
            .unwrap();
    let only_remove = format!(
        "{TABLE}{}\n- [ ]  @it-ops-1: Remove the team member from Google Group okta-zendeskglobal-users\n",
        row("Casey Quinn", "casey.quinn@gitlab.com", "cquinn", "mlee")
    );
    let iid2 =
        t.sb.file_issue("mallory", "Casey", &[], &only_remove)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("mlee", iid2, MANAGER).await.unwrap();
    t.run_for(4).await;
    assert_casey_intact(&t.sb);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// A requester adding a trusted kind's label to their own request is refused.
#[tokio::test]
async fn refused_requester_adds_the_entitlement_label() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Manager\n",
        row("Mallory Mallet", "mallory@gitlab.com", "mallory", "mlee")
    );
    let iid =
        t.sb.file_issue(
            "mallory",
            "Support Manager",
            &["BaselineEntitlementAR"],
            &body,
        )
        .await
        .unwrap();
    let iid2 =
        t.sb.file_issue("mallory", "Support Manager", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mallory", iid2, "BaselineEntitlementAR")
        .await
        .unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["mallory@gitlab.com"]);
    assert!(bot_text(&t.sb, iid).contains("will not act"));
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Timing: an approval in the same instant as the plan (the world's clock
/// ties) counts as before it; an edit at the instant of the approval voids it.
/// (A fresh bot is used after each tied change: a change stamped with the
/// `updated_at` the bot already saw is not picked up by the poll, see report.)
#[tokio::test]
async fn refused_approval_tied_with_the_plan_or_an_edit() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Engineer\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    // Freeze the clock: the world's clock never goes back, so pushing it an
    // hour ahead and then behind makes every event share one timestamp.
    freeze(&t.sb, 1);
    let iid =
        t.sb.file_issue("jdoe", "Jane: Support Engineer", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.restart().await;
    t.run_for(4).await;
    assert!(
        zd(&t.sb, "global", "jane.doe@gitlab.com").is_none(),
        "approval tied with the plan counted:\n{}",
        bot_text(&t.sb, iid)
    );
    assert!(
        bot_text(&t.sb, iid).contains("before the current plan"),
        "{}",
        bot_text(&t.sb, iid)
    );
    // Move on, re-approve, and in the very same instant edit (same meaning).
    t.sb.remove_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.remove_label("lyle", iid, OWNER).await.unwrap();
    freeze(&t.sb, 2);
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    let tweaked =
        t.sb.description(iid)
            .replace("Support Engineer\n", "Support Engineer \n");
    t.sb.edit_description("jdoe", iid, &tweaked).await.unwrap();
    t.restart().await;
    t.run_for(4).await;
    assert!(
        zd(&t.sb, "global", "jane.doe@gitlab.com").is_none(),
        "an edit tied with the approval did not void it:\n{}",
        bot_text(&t.sb, iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Labels: an approval applied before the bot's first plan does not count;
/// mallory removing and re-adding an approval (or replacing it through its
/// scope) leaves it unauthorised.
#[tokio::test]
async fn refused_label_tricks() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Engineer\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    let early =
        t.sb.file_issue("jdoe", "Jane: SE", &[], &body)
            .await
            .unwrap();
    t.sb.add_label("mlee", early, MANAGER).await.unwrap();
    t.sb.add_label("lyle", early, OWNER).await.unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["jane.doe@gitlab.com"]);

    let body2 = body
        .replace("jane.doe@gitlab.com", "bo.li@gitlab.com")
        .replace("@jdoe", "@bli")
        .replace("Jane Doe", "Bo Li");
    let re = t.sb.file_issue("bli", "Bo: SE", &[], &body2).await.unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", re, MANAGER).await.unwrap();
    t.sb.add_label("lyle", re, OWNER).await.unwrap();
    t.sb.remove_label("mallory", re, MANAGER).await.unwrap();
    t.sb.add_label("mallory", re, MANAGER).await.unwrap();
    t.run_for(4).await;
    // Scoped: a "needs approval" label replaces the approval; mallory re-adds it.
    t.sb.remove_label("mallory", re, MANAGER).await.unwrap();
    t.sb.add_label("mlee", re, MANAGER).await.unwrap();
    t.sb.add_label("mallory", re, "AR-Approval::Needs Manager Approval")
        .await
        .unwrap();
    t.sb.add_label("mallory", re, MANAGER).await.unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["jane.doe@gitlab.com", "bo.li@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Close, edit while closed, reopen: the approval given before is void.
#[tokio::test]
async fn refused_edit_while_closed_then_reopen() {
    let mut t = crate::tester!().await;
    let body = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Engineer\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    let iid =
        t.sb.file_issue("jdoe", "Jane: SE", &[], &body)
            .await
            .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.close_issue("jdoe", iid).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    let edited =
        t.sb.description(iid)
            .replace("Support Engineer", "Support Manager");
    t.sb.edit_description("jdoe", iid, &edited).await.unwrap();
    put(&t.sb, "jdoe", iid, &[("state_event", "reopen")]).await;
    t.run_for(4).await;
    untouched(&t.sb, &["jane.doe@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Two issues for the same person: the approvals of one do not carry to the other.
#[tokio::test]
async fn refused_approval_of_one_issue_used_for_another() {
    let mut t = crate::tester!().await;
    let se = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Engineer\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    let a = t.sb.file_issue("jdoe", "Jane: SE", &[], &se).await.unwrap();
    let b =
        t.sb.file_issue(
            "jdoe",
            "Jane: SM",
            &[],
            &se.replace("Support Engineer", "Support Manager"),
        )
        .await
        .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", a, MANAGER).await.unwrap();
    t.sb.add_label("lyle", a, OWNER).await.unwrap();
    t.sb.add_label("mlee", b, MANAGER).await.unwrap();
    t.run_for(4).await;
    assert_eq!(
        custom_role(&t.sb, "global", "jane.doe@gitlab.com").as_deref(),
        Some("Support Engineer"),
        "{}",
        bot_text(&t.sb, b)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// US Federal: a denial or a verification applied by someone not authorised
/// changes nothing; a verification before the plan does not count.
#[tokio::test]
async fn refused_federal_verification_tricks() {
    let mut t = crate::tester!().await;
    let (author, title, labels, body) = demo("light agent, Zendesk US Federal");
    let iid =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    t.sb.add_label("people-connect-1", iid, VERIFIED)
        .await
        .unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["bo.li@gitlab.com"]);
    t.sb.add_label("mallory", iid, NOT_VERIFIED).await.unwrap();
    t.sb.add_label("mallory", iid, VERIFIED).await.unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["bo.li@gitlab.com"]);
    assert_eq!(t.sb.state(iid), "opened");
    assert_inert(&t.sb, iid);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Expiry: a date before the issue, a zero duration and two different dates are refused.
#[tokio::test]
async fn refused_bad_expiry() {
    let mut t = crate::tester!().await;
    let mut iids = vec![];
    for e in [
        format!("Expires: {}", day(-3)),
        "Expires: 0d".to_string(),
        format!("Expires: {}\n\nExpiry: {}", day(5), day(400)),
    ] {
        let body = format!("{e}\n\n- [ ] Zendesk Global: Light Agent\n");
        iids.push(
            t.sb.file_issue("jdoe", "Jane: light agent", &[], &body)
                .await
                .unwrap(),
        );
    }
    t.run_for(4).await;
    untouched(&t.sb, &["jane.doe@gitlab.com"]);
    for i in iids {
        assert!(
            bot_text(&t.sb, i).contains("cannot read"),
            "{}",
            bot_text(&t.sb, i)
        );
    }
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 4/6: replay of a finished offboarding by a label of another kind.
/// (Probed because `trust_problems` checks only the labels of the issue's own
/// kind and a label is not a note: the label does change the digest and the
/// bot does post a new plan, but the bot's items are ticked, so the new plan
/// is "nothing to do"; unticking them is a managed change and is refused.)
/// An offboarding was carried out. Casey is later re-hired and given access
/// again. Mallory adds the label `BaselineEntitlementAR` to the old
/// offboarding issue (still open; she could reopen it anyway). That label is
/// another `[[kinds]]` rule's, so `matched_kinds` (in the digest) changes, the
/// stage becomes Stale and a new plan is made; `trust_problems` checks only
/// the labels of the issue's own kind ("offboarding") and label events are
/// not notes, so nobody "changed" the issue. No approval is needed for an
/// offboarding; the attack would offboard Casey a second time.
#[tokio::test]
async fn refused_offboarding_replayed_by_a_label_of_another_kind() {
    let mut t = crate::tester!().await;
    seed_leaver(&t.sb);
    let (author, title, labels, body) = demo("offboarding");
    let iid =
        t.sb.file_issue(author, title, &labels, &body)
            .await
            .unwrap();
    t.run_for(4).await;
    assert_casey_offboarded(&t.sb);
    // Re-hired: access restored (as a later approved request would).
    {
        let mut w = t.sb.zd("global");
        let se = w.role_by_name("Support Engineer");
        let u = w.user_mut_by_email("casey.quinn@gitlab.com").unwrap();
        u.role = "agent".into();
        u.custom_role_id = se;
        u.suspended = false;
    }
    t.sb.google
        .lock()
        .add_member(GLOBAL_OKTA, "casey.quinn@gitlab.com");
    t.sb.add_label("mallory", iid, "BaselineEntitlementAR")
        .await
        .unwrap();
    t.run_for(4).await;
    assert_casey_intact(&t.sb);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 11: an oversized webhook body is refused before it is parsed, and an
/// unauthenticated one queues nothing.
#[tokio::test]
async fn refused_webhook_oversized_or_unauthenticated() {
    let (addr, mut rx, _task) = webhook(16).await;
    let http = reqwest::Client::new();
    let big = format!(
        "{{\"object_kind\":\"issue\",\"project\":{{\"path_with_namespace\":\"{PROJECT}\"}},\"object_attributes\":{{\"iid\":1}},\"pad\":\"{}\"}}",
        "x".repeat(8_000_000)
    );
    let r = http
        .post(format!("http://{addr}/webhook"))
        .header("X-Gitlab-Event", "Issue Hook")
        .header("X-Gitlab-Token", "hook-secret")
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await;
    assert!(r.map(|r| !r.status().is_success()).unwrap_or(true));
    let r = http
        .post(format!("http://{addr}/webhook"))
        .header("X-Gitlab-Event", "Issue Hook")
        .header("X-Gitlab-Token", "hook-secreT")
        .json(&serde_json::json!({"object_kind": "issue", "project": {"path_with_namespace": PROJECT}, "object_attributes": {"iid": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(rx.try_recv().is_err());
}

/// Class 9 / Markdown: lazy continuation lines, setext headings, tables
/// without leading pipes, escaped characters and HTML blocks do not turn a
/// request into self-service for someone else, or hide a tag from the bot.
#[tokio::test]
async fn refused_markdown_variants_do_not_bypass_approval() {
    let mut t = crate::tester!().await;
    let bodies = [
        // Lazy continuation: the tag is on the item's second line.
        "- [ ] Zendesk Global: Light\nAgent, add tag `partner_support_agent`\n".to_string(),
        // Setext heading naming jane (not a Key: value line for the bot).
        "Email: jane.doe@gitlab.com\n---\n\n- [ ] Zendesk Global: Light Agent, add tag `oem_management_team`\n".to_string(),
        // A table without leading pipes naming jane.
        "Full name | Email | GitLab username | Manager\n--- | --- | --- | ---\nJane Doe | jane.doe@gitlab.com | @jdoe | @mlee\n\n- [ ] Zendesk Global: Light Agent\n".to_string(),
        // Escaped characters.
        "- [ ] Zendesk Global: Light Agent\\, add tag partner\\_support\\_agent\n".to_string(),
        // An HTML block around a visible table naming jane.
        format!("<div>\n\n{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n</div>\n\n- [ ] Zendesk Global: Light Agent\n"),
    ];
    let mut iids = vec![];
    for b in &bodies {
        iids.push(
            t.sb.file_issue("mallory", "Light agent", &[], b)
                .await
                .unwrap(),
        );
    }
    t.run_for(4).await;
    untouched(&t.sb, &["jane.doe@gitlab.com"]);
    if let Some(m) = zd(&t.sb, "global", "mallory@gitlab.com") {
        assert!(
            m.tags.is_empty(),
            "mallory got a tag without approval: {:?}",
            m.tags
        );
    }
    for i in iids {
        assert_inert(&t.sb, i);
    }
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// Class 4: an approval of an earlier plan does not come back when the request
/// is edited away and back to the same content (a new plan each time).
#[tokio::test]
async fn refused_approval_of_an_older_identical_plan() {
    let mut t = crate::tester!().await;
    let se = format!(
        "{TABLE}{}\n- [ ] Zendesk Global: Agent - Support Engineer\n",
        row("Jane Doe", "jane.doe@gitlab.com", "jdoe", "mlee")
    );
    let iid = t.sb.file_issue("jdoe", "Jane: SE", &[], &se).await.unwrap();
    t.run_for(4).await;
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    let sm = se.replace("Support Engineer", "Support Manager");
    t.sb.edit_description("jdoe", iid, &sm).await.unwrap();
    t.run_for(4).await;
    t.sb.edit_description("jdoe", iid, &se).await.unwrap();
    t.run_for(4).await;
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    t.run_for(4).await;
    untouched(&t.sb, &["jane.doe@gitlab.com"]);
    // What the bot said, by snapshot.
    t.expect_rest();
}
