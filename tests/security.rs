//! Hostile requests, end to end against the sandbox over HTTP: each files
//! issues and acts as the people involved (with their own tokens), runs the
//! real bot, and checks that Zendesk and Google are byte-for-byte what they
//! were, that the issue says why, and that every comment the bot wrote is
//! inert (no mention, link, HTML or quick action it did not mean). The
//! controls at the end show the legitimate path still works.
//!
//! The invariant under test: the bot changes something only if that exact
//! change is listed in a plan comment the bot itself posted on the issue, and
//! every approval it needs was applied, by someone allowed, after that comment
//! and before any later change to the request; one approval, one execution.
//!
//! Every bot comment is read and checked by snapshot (`World::says`, or
//! `Tester::expect_rest` for tests about something else); `says` also names
//! the words that are the point of the test, so that a snapshot accepted
//! carelessly cannot drop them.

mod common;

use access_bot::bot::Bot;
use access_bot::request::{IssueInput, UserRef, parse_request};
use access_bot::sandbox::PROJECT;
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::scenario::ZendeskAccount;
use common::tester::{GLOBAL_OKTA, MANAGER, OWNER, TABLE, Tester, VERIFIED};
use pulldown_cmark::{Event, Parser, Tag};

const JANE: &str = "| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n";

/// The tester (sandbox, bot, comments read) and Zendesk and Google as they were.
struct World {
    t: Tester,
    before: String,
}

impl std::ops::Deref for World {
    type Target = Tester;
    fn deref(&self) -> &Tester {
        &self.t
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut Tester {
        &mut self.t
    }
}

impl World {
    /// The company directory says `manager` manages `person` (even where that
    /// is absurd: the checks after it must still hold on their own).
    fn directory_manager(&self, person: &str, manager: &str) {
        self.sb
            .google
            .lock()
            .managers
            .insert(person.into(), manager.into());
    }

    async fn new(name: &str) -> World {
        let t = Tester::start(name, Default::default()).await;
        let before = t.sb.target_state();
        World { t, before }
    }

    /// Zendesk and Google as they are now become the reference.
    fn freeze(&mut self) {
        self.before = self.sb.target_state();
    }

    async fn run(&self) {
        run_until_quiet(&self.bot, 4).await;
    }

    async fn file(&self, author: &str, title: &str, labels: &[&str], body: &str) -> u64 {
        self.sb
            .file_issue(author, title, labels, body)
            .await
            .unwrap()
    }

    async fn label(&self, by: &str, iid: u64, label: &str) {
        self.sb.add_label(by, iid, label).await.unwrap();
    }

    async fn unlabel(&self, by: &str, iid: u64, label: &str) {
        self.sb.remove_label(by, iid, label).await.unwrap();
    }

    async fn edit(&self, by: &str, iid: u64, from: &str, to: &str) {
        let d = self.sb.description(iid);
        assert!(d.contains(from), "{from:?} not in #{iid}");
        self.sb
            .edit_description(by, iid, &d.replacen(from, to, 1))
            .await
            .unwrap();
    }

    /// Nothing changed in Zendesk or Google.
    fn unchanged(&self) {
        let now = self.sb.target_state();
        assert!(
            now == self.before,
            "Zendesk or Google changed:\n--- before\n{}\n--- after\n{}",
            self.before,
            now
        );
    }

    /// The bot's unread comments on the issue, each by snapshot; some comment
    /// there says all of these (the point of the test).
    #[track_caller]
    fn says(&mut self, iid: u64, needles: &[&str]) {
        self.t.expect_comments(iid);
        let all = self.sb.bot_comments(iid);
        assert!(
            all.iter()
                .any(|c| needles.iter().all(|n| c.body.contains(n))),
            "no bot comment on #{iid} says {needles:?}:\n{}",
            all.iter()
                .map(|c| c.body.as_str())
                .collect::<Vec<_>>()
                .join("\n-----\n")
        );
        self.inert(iid);
    }

    /// Every bot comment on the issue is inert.
    fn inert(&self, iid: u64) {
        for c in self.sb.bot_comments(iid) {
            assert_inert(&c.body);
        }
    }

    fn no_account(&self, email: &str) {
        for inst in ["global", "federal"] {
            assert!(
                self.sb.zd(inst).user_by_email(email).is_none(),
                "{email} has an account in {inst}"
            );
        }
        assert!(!self.sb.google_member(GLOBAL_OKTA, email));
    }

    fn custom_role(&self, email: &str) -> Option<String> {
        let w = self.sb.zd("global");
        let id = w.user_by_email(email)?.custom_role_id?;
        w.custom_roles
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.name.clone())
    }

    fn seed(&self, email: &str, role: &str, custom: Option<&str>) {
        let name = email.split('@').next().unwrap_or("x").replace('.', " ");
        self.sb
            .seed_zendesk(&ZendeskAccount {
                instance: "global".into(),
                name,
                email: email.into(),
                role: role.into(),
                custom_role: custom.map(String::from),
                groups: vec![],
                tags: vec![],
                user_fields: Default::default(),
                open_tickets: 0,
                suspended: false,
                last_login_days_ago: Some(1),
            })
            .unwrap();
    }

    fn user_id(&self, name: &str) -> u64 {
        self.sb.gitlab.lock().user_by_name(name).unwrap().id
    }

    /// The digest the bot would compute for this body filed by `author`.
    fn digest_of(&self, author: &str, title: &str, labels: &[&str], body: &str) -> String {
        let issue = IssueInput {
            iid: 0,
            title: title.into(),
            description: body.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            author: UserRef {
                id: self.user_id(author),
                username: author.into(),
            },
            author_email: None,
            author_name: None,
            web_url: String::new(),
            created_at: chrono::Utc::now(),
            updated_at: None,
            state: "opened".into(),
        };
        parse_request(&issue, &self.bot.cfg)
            .map(|r| r.digest())
            .unwrap_or_default()
    }
}

/// A comment the bot wrote carries nothing it did not mean: one marker, on its
/// last line; outside code spans no mention (but of the people it means to
/// remind), no link, no HTML, no line a quick action could start.
fn assert_inert(body: &str) {
    let marker_line = body.trim_end().rsplit('\n').next().unwrap_or("");
    assert!(
        marker_line.starts_with("<!-- access-bot:v2 "),
        "no marker on the last line:\n{body}"
    );
    let content = &body[..body.trim_end().len() - marker_line.len()];
    assert!(
        !content.contains("<!--") && !content.contains("-->"),
        "an HTML comment in the text:\n{body}"
    );
    for line in content.lines() {
        assert!(
            !line.trim_start().starts_with('/'),
            "a line could run a quick action: {line:?}"
        );
    }
    for event in Parser::new(content) {
        match event {
            Event::Text(t) => {
                let t = t.to_string();
                for (i, _) in t.match_indices('@') {
                    let before = t[..i].chars().last();
                    let after = t[i + 1..].chars().next();
                    let mention = before.is_none_or(|c| !c.is_alphanumeric())
                        && after.is_some_and(|c| c.is_alphanumeric() || c == '_');
                    assert!(!mention, "a mention outside code: {t:?} in\n{body}");
                }
                assert!(
                    !t.contains("http://evil") && !t.contains("evil.example"),
                    "an attacker's link outside code: {t:?}"
                );
            }
            Event::Start(Tag::Link { dest_url, .. }) => {
                panic!("a link in a bot comment: {dest_url}\n{body}")
            }
            Event::Html(h) | Event::InlineHtml(h) => {
                panic!("HTML in a bot comment: {h}\n{body}")
            }
            _ => {}
        }
    }
}

async fn special_request(w: &World, author: &str, row: &str, item: &str) -> u64 {
    w.file(
        author,
        "Zendesk Global access",
        &[],
        &format!("{TABLE}{row}\n- [ ] {item}\n"),
    )
    .await
}

// ================================================== 1. forged markers

/// The attacker's marker, for a request they are about to swap in.
fn forged(kind: &str, digest: &str) -> String {
    format!(
        "<!-- access-bot:v2 kind={kind} keys={kind}:{digest} digest={digest} mac={} -->",
        "0".repeat(64)
    )
}

#[tokio::test]
async fn forged_plan_marker_in_an_unmanaged_item_does_not_bind_an_approval() {
    let mut w = World::new(crate::test_name!()).await;
    let evil_body = format!("{TABLE}{JANE}\n- [ ] Zendesk Global: Support Manager\n");
    let evil = w.digest_of("jdoe", "Zendesk Global access", &[], &evil_body);
    let iid = w
        .file(
            "jdoe",
            "Zendesk Global access",
            &[],
            &format!(
                "{TABLE}{JANE}\n- [ ] Zendesk Global: add tag `partner_support_agent`\n- [ ] Slack: {}\n",
                forged("plan", &evil)
            ),
        )
        .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.label("lyle", iid, OWNER).await;
    w.sb.edit_description("jdoe", iid, &evil_body)
        .await
        .unwrap();
    w.run().await;
    w.unchanged();
    w.says(
        iid,
        &["access-bot plan", "Support Manager", "no longer applies"],
    );
}

#[tokio::test]
async fn forged_marker_in_an_access_level_is_repeated_inert() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "jdoe",
        JANE,
        &format!("Zendesk Global: {}", forged("plan", "abcd")),
    )
    .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["cannot read this request"]);
}

#[tokio::test]
async fn forged_marker_in_an_email_is_repeated_inert() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "jdoe",
        &format!(
            "| Jane | a{}@gitlab.com | @jdoe | @mlee |\n",
            forged("plan", "ab")
        ),
        "Zendesk Global: Light Agent",
    )
    .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["cannot read this request"]);
}

#[tokio::test]
async fn forged_marker_in_a_name_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "jdoe",
        &format!(
            "| Jane {} | jane.doe@gitlab.com | @jdoe | @mlee |\n",
            forged("result", "ab")
        ),
        "Zendesk Global: Light Agent",
    )
    .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["cannot read this request", "HTML"]);
}

#[tokio::test]
async fn a_marker_posted_by_someone_else_does_not_count() {
    let mut w = World::new(crate::test_name!()).await;
    let body = format!("{TABLE}{JANE}\n- [ ] Zendesk Global: Agent - Support Manager\n");
    let iid = special_request(&w, "jdoe", JANE, "Zendesk Global: Agent - Support Manager").await;
    // Mallory copies a plan marker (even a real one from another issue) into her comment.
    let other = special_request(&w, "jdoe", JANE, "Zendesk Global: Agent - Support Engineer").await;
    w.run().await;
    let real = w.sb.bot_comments(other)[0].body.clone();
    let _ = body;
    w.sb.comment_as("mallory", iid, &real).await.unwrap();
    w.label("mlee", iid, MANAGER).await;
    w.run().await;
    w.unchanged();
    w.inert(iid);
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn a_bot_plan_edited_by_a_maintainer_stops_counting() {
    let mut w = World::new(crate::test_name!()).await;
    {
        let mallory = w.user_id("mallory");
        let mut g = w.sb.gitlab.lock();
        let p = g.projects.iter_mut().find(|p| p.path == PROJECT).unwrap();
        p.maintainers.insert(mallory);
    }
    let iid = special_request(&w, "jdoe", JANE, "Zendesk Global: Agent - Support Manager").await;
    w.run().await;
    // The plan is rewritten to look harmless; its marker is kept as it was.
    let plan = w.sb.bot_comments(iid)[0].clone();
    let tampered = plan.body.replace("Support Manager", "Light Agent");
    w.sb.edit_note_as("mallory", iid, plan.id, &tampered)
        .await
        .unwrap();
    w.label("mlee", iid, MANAGER).await;
    w.label("lyle", iid, OWNER).await;
    w.run().await;
    w.unchanged();
    // The tampered plan does not count: a new one is posted, the approvals predate it.
    let plans =
        w.sb.bot_comments(iid)
            .into_iter()
            .filter(|c| c.body.contains("access-bot plan"))
            .count();
    assert_eq!(plans, 2);
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn a_plan_marker_moved_to_another_issue_does_not_count() {
    let mut w = World::new(crate::test_name!()).await;
    {
        let mallory = w.user_id("mallory");
        let mut g = w.sb.gitlab.lock();
        let p = g.projects.iter_mut().find(|p| p.path == PROJECT).unwrap();
        p.maintainers.insert(mallory);
    }
    // Issue A: a harmless request, planned and approved.
    let a = special_request(&w, "jdoe", JANE, "Zendesk Global: Agent - Support Manager").await;
    let b = special_request(&w, "jdoe", JANE, "Zendesk Global: Agent - Support Manager").await;
    w.run().await;
    // The maintainer copies A's plan note text (valid for A) over B's plan note.
    let a_plan = w.sb.bot_comments(a)[0].body.clone();
    let b_plan = w.sb.bot_comments(b)[0].id;
    w.sb.edit_note_as("mallory", b, b_plan, &a_plan)
        .await
        .unwrap();
    w.label("mlee", b, MANAGER).await;
    w.label("lyle", b, OWNER).await;
    w.run().await;
    w.unchanged();
    // What else the bot said, by snapshot.
    w.expect_rest();
}

// ================================================== 2. what is asked decides

#[tokio::test]
async fn a_light_agent_title_asking_for_support_manager_needs_its_approvals() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "Jane Doe: Zendesk Global light agent",
            &[],
            &format!("{TABLE}{JANE}\n- [ ] Zendesk Global: Support Manager\n"),
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &[MANAGER, OWNER, "not applied yet"]);
}

#[tokio::test]
async fn a_light_agent_request_with_a_tag_needs_the_manager() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "light agent",
            &[],
            "- [ ] Zendesk Global: Light Agent, add tag `partner_support_agent`\n",
        )
        .await;
    w.run().await;
    w.unchanged();
    w.inert(iid);
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn a_zendesk_request_without_zendesk_in_its_title_needs_the_system_owner() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "Access for Jane",
            &[],
            &format!("{TABLE}{JANE}\n- [ ] Zendesk Global: Agent - Support Engineer\n"),
        )
        .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.run().await;
    w.unchanged();
    w.says(iid, &[OWNER]);
}

#[tokio::test]
async fn a_role_change_filed_as_an_access_request_needs_the_system_owner() {
    let w = World::new(crate::test_name!()).await;
    w.seed("alex.chen@gitlab.com", "agent", Some("Support Engineer"));
    let mut w = w;
    w.freeze();
    let iid = w
        .file(
            "kpatel",
            "Alex Chen, access request",
            &[],
            &format!(
                "{TABLE}| Alex Chen | alex.chen@gitlab.com | @achen | @kpatel |\n\n- [ ] Zendesk Global: Agent - Support Manager\n"
            ),
        )
        .await;
    w.run().await;
    // The requester is the manager here: their own label is a self-approval anyway;
    // a different manager row would still need the owner. Nobody else approves.
    w.label("kpatel", iid, MANAGER).await;
    w.run().await;
    w.unchanged();
    assert_eq!(
        w.custom_role("alex.chen@gitlab.com").as_deref(),
        Some("Support Engineer")
    );
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn a_light_agent_for_someone_else_is_not_self_service() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "mallory",
            "light agent",
            &[],
            &format!("{TABLE}{JANE}\n- [ ] Zendesk Global: Light Agent\n"),
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["not handled as self-service", MANAGER]);
}

#[tokio::test]
async fn a_self_service_row_with_the_authors_username_and_another_email_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "mallory",
            "light agent",
            &[],
            &format!(
                "{TABLE}| Mallory | jane.doe@gitlab.com | @mallory | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"
            ),
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["will not act", "one person"]);
}

#[tokio::test]
async fn a_self_service_request_naming_two_people_is_not_self_service() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "light agents",
            &[],
            &format!(
                "{TABLE}{JANE}| Mallory Mallet | mallory@gitlab.com | @mallory | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"
            ),
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["not handled as self-service"]);
}

#[tokio::test]
async fn self_service_on_us_federal_still_needs_citizenship() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "federal light agent",
            &[],
            "- [ ] Zendesk US Federal: Light Agent\n",
        )
        .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["US Federal access needs citizenship verification"]);
}

#[tokio::test]
async fn an_okta_group_on_its_own_needs_the_manager() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "okta",
            &[],
            &format!("{TABLE}{JANE}\n- [ ] Google Group: okta-zendeskglobal-users (Member)\n"),
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &[MANAGER, "changes.app_group"]);
}

#[tokio::test]
async fn self_service_never_reactivates_a_suspended_account() {
    let w = World::new(crate::test_name!()).await;
    w.seed("jane.doe@gitlab.com", "end-user", None);
    w.sb.zd("global")
        .user_mut_by_email("jane.doe@gitlab.com")
        .unwrap()
        .suspended = true;
    let mut w = w;
    w.freeze();
    let iid = w
        .file(
            "jdoe",
            "light agent",
            &[],
            "- [ ] Zendesk Global: Light Agent\n",
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["suspended", "does not reactivate"]);
}

#[tokio::test]
async fn self_service_never_touches_a_full_agent() {
    let w = World::new(crate::test_name!()).await;
    w.seed("jane.doe@gitlab.com", "agent", Some("Support Engineer"));
    w.sb.google
        .lock()
        .add_member(GLOBAL_OKTA, "jane.doe@gitlab.com");
    let mut w = w;
    w.freeze();
    let iid = w
        .file(
            "jdoe",
            "light agent",
            &[],
            "- [ ] Zendesk Global: Light Agent\n",
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["already a full agent"]);
}

#[tokio::test]
async fn removing_access_through_a_request_is_refused() {
    let w = World::new(crate::test_name!()).await;
    w.seed("kpatel2@gitlab.com", "agent", Some("Support Engineer"));
    let mut w = w;
    w.freeze();
    let iid = w
        .file(
            "mallory",
            "cleanup",
            &[],
            &format!(
                "{TABLE}| K P | kpatel2@gitlab.com | - | @mlee |\n\n- [ ] @x: Remove the team member from Zendesk Global\n"
            ),
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(
        iid,
        &[
            "cannot read this request",
            "offboarding issue from the automation",
        ],
    );
}

// ================================================== 3. tick state is part of the plan

#[tokio::test]
async fn unticking_a_pre_ticked_item_after_approval_runs_nothing() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "Zendesk Global",
            &[],
            &format!(
                "{TABLE}{JANE}\n- [x] Zendesk Global: Support Manager\n- [ ] Zendesk Global: add tag `partner_support_agent`\n"
            ),
        )
        .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.label("lyle", iid, OWNER).await;
    w.edit(
        "jdoe",
        iid,
        "- [x] Zendesk Global: Support Manager",
        "- [ ] Zendesk Global: Support Manager",
    )
    .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["no longer applies"]);
}

#[tokio::test]
async fn an_inapplicable_item_made_open_after_approval_runs_nothing() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "Zendesk Global",
            &[],
            &format!(
                "{TABLE}{JANE}\n- [~] Zendesk Global: Support Manager\n- [ ] Zendesk Global: add tag `partner_support_agent`\n"
            ),
        )
        .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.edit("jdoe", iid, "- [~] Zendesk", "- [ ] Zendesk").await;
    w.run().await;
    w.unchanged();
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn ticking_a_bot_item_by_hand_after_approval_voids_it() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "Zendesk Global",
            &[],
            &format!(
                "{TABLE}{JANE}\n- [ ] Zendesk Global: add tag `partner_support_agent`\n- [ ] Zendesk Global: add tag `order_management_team`\n"
            ),
        )
        .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.edit(
        "mallory",
        iid,
        "- [ ] Zendesk Global: add tag `order",
        "- [x] Zendesk Global: add tag `order",
    )
    .await;
    w.run().await;
    w.unchanged();
    // What else the bot said, by snapshot.
    w.expect_rest();
}

// ================================================== 4. replay

#[tokio::test]
async fn unticking_a_done_item_does_not_grant_again() {
    let w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "rkim",
        "| Robin Kim | robin.kim@gitlab.com | @rkim | @mlee |\n",
        "Zendesk Global: Agent - Support Engineer",
    )
    .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.label("lyle", iid, OWNER).await;
    w.run().await;
    assert_eq!(
        w.custom_role("robin.kim@gitlab.com").as_deref(),
        Some("Support Engineer")
    );
    // Robin is offboarded by hand; someone unticks the item.
    {
        let mut z = w.sb.zd("global");
        let u = z.user_mut_by_email("robin.kim@gitlab.com").unwrap();
        u.role = "end-user".into();
        u.custom_role_id = None;
        u.suspended = true;
    }
    w.sb.google
        .lock()
        .remove_member(GLOBAL_OKTA, "robin.kim@gitlab.com");
    let mut w = w;
    w.freeze();
    w.edit("rkim", iid, "- [x] Zendesk Global", "- [ ] Zendesk Global")
        .await;
    w.run().await;
    w.unchanged();
    // The bot puts its tick back; it does not run the plan again.
    assert_eq!(w.sb.ticked(iid).len(), 1);
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn changing_a_done_request_needs_new_approvals_after_the_new_plan() {
    let w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "rkim",
        "| Robin Kim | robin.kim@gitlab.com | @rkim | @mlee |\n",
        "Zendesk Global: Agent - Support Engineer",
    )
    .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.label("lyle", iid, OWNER).await;
    w.run().await;
    let mut w = w;
    w.freeze();
    // The labels are still there: asking for more must not ride on them.
    w.edit(
        "rkim",
        iid,
        "- [x] Zendesk Global: Agent - Support Engineer",
        "- [ ] Zendesk Global: Agent - Support Manager",
    )
    .await;
    w.run().await;
    w.unchanged();
    w.says(
        iid,
        &[
            "access-bot plan",
            "Support Manager",
            "before the current plan",
        ],
    );
}

#[tokio::test]
async fn a_reverted_edit_after_completion_does_not_replay() {
    let w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "rkim",
        "| Robin Kim | robin.kim@gitlab.com | @rkim | @mlee |\n",
        "Zendesk Global: Agent - Support Engineer",
    )
    .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.label("lyle", iid, OWNER).await;
    w.run().await;
    {
        let mut z = w.sb.zd("global");
        let u = z.user_mut_by_email("robin.kim@gitlab.com").unwrap();
        u.role = "end-user".into();
        u.custom_role_id = None;
    }
    let mut w = w;
    w.freeze();
    // Untick and add a harmless line: a new plan, which the old approvals do not cover.
    let d = w.sb.description(iid);
    w.sb.edit_description(
        "rkim",
        iid,
        &d.replace("- [x] Zendesk", "- [ ] Zendesk")
            .replace("\n- [ ] Zendesk", "\nJustification: again\n\n- [ ] Zendesk"),
    )
    .await
    .unwrap();
    w.run().await;
    w.unchanged();
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn approvals_on_one_issue_do_not_carry_to_a_copy() {
    let mut w = World::new(crate::test_name!()).await;
    let row = "| Robin Kim | robin.kim@gitlab.com | @rkim | @mlee |\n";
    let a = special_request(&w, "rkim", row, "Zendesk Global: Agent - Support Engineer").await;
    w.run().await;
    w.label("mlee", a, MANAGER).await;
    w.label("lyle", a, OWNER).await;
    // Same body, new issue, same labels applied by the requester.
    let b = w
        .file(
            "rkim",
            "Zendesk Global access",
            &[MANAGER, OWNER],
            &format!("{TABLE}{row}\n- [ ] Zendesk Global: Agent - Support Manager\n"),
        )
        .await;
    w.run().await;
    assert!(w.custom_role("robin.kim@gitlab.com").as_deref() != Some("Support Manager"));
    w.says(b, &["self-approval does not count"]);
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn re_applying_a_label_before_the_new_plan_does_not_count() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "jdoe",
        JANE,
        "Zendesk Global: add tag `partner_support_agent`",
    )
    .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    // The request changes and the manager re-applies at once, before the bot plans it.
    w.edit(
        "jdoe",
        iid,
        "partner_support_agent",
        "order_management_team",
    )
    .await;
    w.unlabel("mlee", iid, MANAGER).await;
    w.label("mlee", iid, MANAGER).await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["before the current plan"]);
}

// ================================================== 5. approver as subject

#[tokio::test]
async fn the_manager_named_by_email_cannot_approve_their_own_promotion() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "jdoe",
        "| M Lee | mlee@gitlab.com | - | @mlee |\n",
        "Zendesk Global: Agent - Support Manager",
    )
    .await;
    // Were the directory wrong, self-approval would still not count.
    w.directory_manager("mlee@gitlab.com", "mlee@gitlab.com");
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.label("lyle", iid, OWNER).await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["self-approval does not count"]);
}

#[tokio::test]
async fn a_row_with_someone_elses_username_and_the_approvers_email_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "jdoe",
        "| Jane Doe | lyle@gitlab.com | @jdoe | @mlee |\n",
        "Zendesk Global: Agent - Support Manager",
    )
    .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.label("lyle", iid, OWNER).await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["will not act", "one person"]);
}

#[tokio::test]
async fn a_system_owner_cannot_approve_a_request_for_their_own_email() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "mlee",
        "| L K | lyle@gitlab.com | - | @kpatel |\n",
        "Zendesk Global: Agent - Support Manager",
    )
    .await;
    w.run().await;
    w.label("kpatel", iid, MANAGER).await;
    w.label("lyle", iid, OWNER).await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["`@lyle`", "self-approval does not count"]);
}

#[tokio::test]
async fn a_username_in_other_case_is_the_same_person() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "mallory",
        "| Jane Doe | jane.doe@gitlab.com | @JDOE | @jdoe |\n",
        "Zendesk Global: Agent - Support Engineer",
    )
    .await;
    w.directory_manager("jane.doe@gitlab.com", "jane.doe@gitlab.com");
    w.run().await;
    w.label("jdoe", iid, MANAGER).await;
    w.label("lyle", iid, OWNER).await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["self-approval does not count"]);
}

#[tokio::test]
async fn a_username_gitlab_does_not_know_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "jdoe",
        "| Jane Doe | jane.doe@gitlab.com | @nobody-here | @mlee |\n",
        "Zendesk Global: Agent - Support Engineer",
    )
    .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["is not a GitLab user"]);
}

#[tokio::test]
async fn a_manager_gitlab_does_not_know_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "jdoe",
        "| Jane Doe | jane.doe@gitlab.com | @jdoe | @all |\n",
        "Zendesk Global: add tag `partner_support_agent`",
    )
    .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["the manager", "is not a GitLab user"]);
}

// ================================================== 6. trusted automation

fn rbe_body(name: &str, email: &str, user: &str, level: &str) -> String {
    format!(
        "{TABLE}| {name} | {email} | @{user} | @kpatel |\n\n#### Support to-do:\n* [ ]  `Zendesk Global`: `{level}`\n* [ ]  `Slack`: `#support`\n"
    )
}

#[tokio::test]
async fn an_offboarding_label_added_to_an_entitlement_by_someone_else_removes_nothing() {
    let w = World::new(crate::test_name!()).await;
    w.seed("alex.chen@gitlab.com", "agent", Some("Support Engineer"));
    let mut w = w;
    w.freeze();
    let iid = w
        .file(
            "gitlab-employment-bot",
            "Entitlements: Alex Chen",
            &["BaselineEntitlementAR"],
            &format!(
                "{TABLE}| Alex Chen | alex.chen@gitlab.com | @achen | @kpatel |\n\n- [ ]  @zd: Remove the team member from Zendesk Global\n"
            ),
        )
        .await;
    w.label("mallory", iid, "offboarding").await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["will not act", "not by the automation"]);
}

#[tokio::test]
async fn an_entitlement_label_on_a_personal_request_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "mallory",
            "my entitlements",
            &["BaselineEntitlementAR"],
            &rbe_body(
                "Mallory Mallet",
                "mallory@gitlab.com",
                "mallory",
                "Agent, role Support Engineer",
            ),
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["only trusted when filed by the automation"]);
}

#[tokio::test]
async fn an_entitlement_edited_by_someone_else_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "gitlab-employment-bot",
            "Entitlements: Sam Rivera",
            &["BaselineEntitlementAR"],
            &rbe_body(
                "Sam Rivera",
                "sam.rivera@gitlab.com",
                "srivera",
                "Agent, role Support Engineer",
            ),
        )
        .await;
    w.edit("mallory", iid, "Support Engineer", "Support Manager")
        .await;
    w.run().await;
    w.unchanged();
    w.says(
        iid,
        &["is not pre-approved", "Zendesk::System Owner Approved"],
    );
}

#[tokio::test]
async fn an_entitlement_changed_together_with_a_tick_after_its_plan_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let body = rbe_body(
        "Sam Rivera",
        "sam.rivera@gitlab.com",
        "srivera",
        "Agent, role Support Engineer",
    );
    // A pending verification keeps the entitlement waiting after its plan.
    let body = body.replace(
        "`Zendesk Global`: `Agent, role Support Engineer`",
        "`Zendesk US Federal`: `Light Agent`",
    );
    let iid = w
        .file(
            "gitlab-employment-bot",
            "Entitlements: Sam Rivera",
            &["BaselineEntitlementAR"],
            &body,
        )
        .await;
    w.run().await;
    // Mallory changes the person and ticks Slack in one edit: GitLab records only the tick.
    let d = w.sb.description(iid);
    w.sb.edit_description(
        "mallory",
        iid,
        &d.replace(
            "sam.rivera@gitlab.com | @srivera",
            "mallory@gitlab.com | @mallory",
        )
        .replace("* [ ]  `Slack`", "* [x]  `Slack`"),
    )
    .await
    .unwrap();
    w.label("people-connect-1", iid, VERIFIED).await;
    w.run().await;
    w.unchanged();
    w.says(
        iid,
        &["is not pre-approved", "Zendesk::System Owner Approved"],
    );
}

#[tokio::test]
async fn an_entitlement_retitled_by_someone_else_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "gitlab-employment-bot",
            "Entitlements: Sam Rivera",
            &["BaselineEntitlementAR"],
            &rbe_body(
                "Sam Rivera",
                "sam.rivera@gitlab.com",
                "srivera",
                "Agent, role Support Engineer",
            ),
        )
        .await;
    w.sb.edit_title("mallory", iid, "Role change: Sam")
        .await
        .unwrap();
    w.run().await;
    w.unchanged();
    w.says(
        iid,
        &["is not pre-approved", "Zendesk::System Owner Approved"],
    );
}

#[tokio::test]
async fn a_kind_label_removed_and_applied_again_by_someone_else_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "gitlab-employment-bot",
            "Entitlements: Sam Rivera",
            &["BaselineEntitlementAR"],
            &rbe_body(
                "Sam Rivera",
                "sam.rivera@gitlab.com",
                "srivera",
                "Agent, role Support Engineer",
            ),
        )
        .await;
    w.unlabel("mallory", iid, "BaselineEntitlementAR").await;
    w.label("mallory", iid, "BaselineEntitlementAR").await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["not by the automation"]);
}

#[tokio::test]
async fn someone_ticking_the_bots_line_on_an_offboarding_is_refused() {
    let w = World::new(crate::test_name!()).await;
    w.seed("alex.chen@gitlab.com", "agent", Some("Support Engineer"));
    let mut w = w;
    w.freeze();
    let iid = w
        .file(
            "gitlab-employment-bot",
            "Offboarding: Alex Chen",
            &["offboarding"],
            &format!(
                "{TABLE}| Alex Chen | alex.chen@gitlab.com | @achen | @mlee |\n\n- [ ]  @zd: Remove the team member from Zendesk Global\n"
            ),
        )
        .await;
    w.edit("achen", iid, "- [ ]  @zd", "- [x]  @zd").await;
    w.run().await;
    w.unchanged();
    w.says(
        iid,
        &["is not pre-approved", "Zendesk::System Owner Approved"],
    );
}

#[tokio::test]
async fn an_offboarding_filed_by_a_person_is_refused() {
    let w = World::new(crate::test_name!()).await;
    w.seed("kpatel9@gitlab.com", "agent", Some("Support Engineer"));
    let mut w = w;
    w.freeze();
    let iid = w
        .file(
            "mallory",
            "Offboarding: K",
            &["offboarding"],
            "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n| K P | kpatel9@gitlab.com | - | @mlee |\n\n- [ ]  @zd: Remove the team member from Zendesk Global\n",
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["only trusted when filed by the automation"]);
}

// ================================================== 7. time-bound grants end cleanly

async fn approved_special(w: &World, row: &str, items: &str) -> u64 {
    let iid = w
        .file(
            "jdoe",
            "Zendesk Global",
            &[],
            &format!("{TABLE}{row}\n{items}"),
        )
        .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.label("lyle", iid, OWNER).await;
    w.run().await;
    iid
}

#[tokio::test]
async fn an_expiring_grant_does_not_demote_a_later_permanent_role() {
    let mut w = World::new(crate::test_name!()).await;
    let until = (chrono::Utc::now() + chrono::Duration::days(5)).date_naive();
    approved_special(
        &w,
        JANE,
        &format!("Expires: {until}\n\n- [ ] Zendesk Global: Agent - Support Engineer\n"),
    )
    .await;
    // Later, a permanent request promotes Jane.
    approved_special(&w, JANE, "- [ ] Zendesk Global: Agent - Support Manager\n").await;
    assert_eq!(
        w.custom_role("jane.doe@gitlab.com").as_deref(),
        Some("Support Manager")
    );
    w.freeze();
    w.bot.clock.set_offset(chrono::Duration::days(6));
    w.run().await;
    assert_eq!(
        w.custom_role("jane.doe@gitlab.com").as_deref(),
        Some("Support Manager")
    );
    assert!(w.sb.google_member(GLOBAL_OKTA, "jane.doe@gitlab.com"));
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn an_expiring_grant_keeps_what_another_request_also_gives() {
    let mut w = World::new(crate::test_name!()).await;
    w.seed("jane.doe@gitlab.com", "light-agent", None);
    w.freeze();
    let until = (chrono::Utc::now() + chrono::Duration::days(5)).date_naive();
    let tag = "- [ ] Zendesk Global: add tag `partner_support_agent`\n";
    let first = w
        .file(
            "jdoe",
            "tag",
            &[],
            &format!("{TABLE}{JANE}\nExpires: {until}\n\n{tag}"),
        )
        .await;
    w.run().await;
    w.label("mlee", first, MANAGER).await;
    w.run().await;
    // A second, permanent request for the same tag (already there: nothing to change).
    let second = w
        .file("jdoe", "tag", &[], &format!("{TABLE}{JANE}\n{tag}"))
        .await;
    w.run().await;
    w.label("mlee", second, MANAGER).await;
    w.run().await;
    w.bot.clock.set_offset(chrono::Duration::days(6));
    w.run().await;
    let tags =
        w.sb.zd("global")
            .user_by_email("jane.doe@gitlab.com")
            .unwrap()
            .tags
            .clone();
    assert!(
        tags.contains(&"partner_support_agent".to_string()),
        "{tags:?}"
    );
    w.says(first, &["Left as it is", "another request in force"]);
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn an_expiring_grant_leaves_a_role_changed_since() {
    let mut w = World::new(crate::test_name!()).await;
    let until = (chrono::Utc::now() + chrono::Duration::days(5)).date_naive();
    let iid = approved_special(
        &w,
        JANE,
        &format!("Expires: {until}\n\n- [ ] Zendesk Global: Agent - Support Engineer\n"),
    )
    .await;
    // Someone (outside the bot) made Jane a light agent meanwhile.
    {
        let mut z = w.sb.zd("global");
        let light = z.light_agent_role();
        z.user_mut_by_email("jane.doe@gitlab.com")
            .unwrap()
            .custom_role_id = light;
    }
    w.bot.clock.set_offset(chrono::Duration::days(6));
    w.run().await;
    let z = w.sb.zd("global");
    let jane = z.user_by_email("jane.doe@gitlab.com").unwrap();
    assert_eq!(jane.role, "agent");
    assert_eq!(jane.custom_role_id, z.light_agent_role());
    drop(z);
    w.says(iid, &["Left as it is", "no longer has Support Engineer"]);
}

// ================================================== 8. protected accounts

#[tokio::test]
async fn an_offboarding_of_the_bots_own_account_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "gitlab-employment-bot",
            "Offboarding: access-bot",
            &["offboarding"],
            &format!(
                "{TABLE}| Access Bot | access-bot@gitlab.com | @access-bot | @mlee |\n\n- [ ]  @zd: Remove the team member from Zendesk Global\n"
            ),
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["bot's own account", "never changes"]);
}

#[tokio::test]
async fn an_offboarding_of_a_zendesk_admin_is_refused() {
    let w = World::new(crate::test_name!()).await;
    w.seed("alex.chen@gitlab.com", "admin", None);
    let mut w = w;
    w.freeze();
    let iid = w
        .file(
            "gitlab-employment-bot",
            "Offboarding: Alex",
            &["offboarding"],
            &format!(
                "{TABLE}| Alex Chen | alex.chen@gitlab.com | @achen | @mlee |\n\n- [ ]  @zd: Remove the team member from Zendesk Global\n- [ ]  @it: Remove the team member from Google Group okta-zendeskglobal-users\n"
            ),
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["a Zendesk admin", "never changes"]);
}

#[tokio::test]
async fn a_request_for_the_bots_own_account_is_refused_even_when_approved() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "jdoe",
        "| Bot | access-bot@gitlab.com | - | @mlee |\n",
        "Zendesk Global: add tag `partner_support_agent`",
    )
    .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["never changes"]);
}

#[tokio::test]
async fn a_configured_protected_account_is_refused() {
    let mut t = crate::tester!().await;
    let sb = &t.sb;
    let mut cfg = sb.config.clone();
    cfg.bot.protected = vec!["sam.rivera@gitlab.com".into()];
    let bot = Bot::connect_with(
        cfg,
        &sb.secrets,
        std::sync::Arc::new(
            access_bot::store::Store::open(std::path::Path::new(":memory:")).unwrap(),
        ),
        std::time::Duration::from_millis(5),
    )
    .await
    .unwrap();
    let before = sb.target_state();
    let iid = sb
        .file_issue(
            "gitlab-employment-bot",
            "Entitlements: Sam",
            &["BaselineEntitlementAR"],
            &rbe_body(
                "Sam Rivera",
                "sam.rivera@gitlab.com",
                "srivera",
                "Agent, role Support Engineer",
            ),
        )
        .await
        .unwrap();
    run_until_quiet(&bot, 4).await;
    assert_eq!(sb.target_state(), before);
    let said = t.expect_comments(iid);
    assert!(said.iter().any(|c| c.body.contains("protected account")));
}

// ================================================== 9. hidden content

#[tokio::test]
async fn a_person_table_in_an_html_comment_is_not_read() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "light agent",
            &[],
            &format!(
                "<!--\n{TABLE}| Mallory | mallory@gitlab.com | @mallory | @mlee |\n-->\n\n- [ ] Zendesk Global: Light Agent\n"
            ),
        )
        .await;
    w.run().await;
    w.no_account("mallory@gitlab.com");
    w.inert(iid);
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn a_person_in_a_hidden_key_value_line_is_not_read() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "light agent",
            &[],
            "<!-- Email: mallory@gitlab.com -->\n\n- [ ] Zendesk Global: Light Agent\n",
        )
        .await;
    w.run().await;
    w.no_account("mallory@gitlab.com");
    w.inert(iid);
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn an_item_in_an_html_comment_is_not_acted_on() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "light agent",
            &[],
            "- [ ] Zendesk Global: Light Agent\n\n<!--\n- [ ] Zendesk Global: add tag `partner_support_agent`\n-->\n",
        )
        .await;
    w.run().await;
    let z = w.sb.zd("global");
    assert!(
        z.user_by_email("jane.doe@gitlab.com")
            .is_none_or(|u| u.tags.is_empty())
    );
    drop(z);
    w.inert(iid);
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn an_item_with_a_hidden_html_part_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "light agent",
            &[],
            "- [ ] Zendesk Global: Light Agent <!-- Agent - Support Manager -->\n",
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["holds HTML"]);
}

#[tokio::test]
async fn a_table_in_a_quote_or_code_block_is_not_read() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "light agent",
            &[],
            &format!(
                "> {}\n> |---|---|---|---|\n> | Mallory | mallory@gitlab.com | @mallory | @mlee |\n\n```\n{TABLE}| Mallory | mallory@gitlab.com | @mallory | @mlee |\n```\n\n- [ ] Zendesk Global: Light Agent\n",
                TABLE.lines().next().unwrap()
            ),
        )
        .await;
    w.run().await;
    w.no_account("mallory@gitlab.com");
    w.inert(iid);
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn an_email_with_an_invisible_character_is_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "jdoe",
        "| Jane | jane.doe\u{200b}@gitlab.com | @jdoe | @mlee |\n",
        "Zendesk Global: Light Agent",
    )
    .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["cannot read this request"]);
}

#[tokio::test]
async fn two_person_tables_are_ambiguous() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "light agent",
            &[],
            &format!("{TABLE}{JANE}\n\n{TABLE}| Mallory | mallory@gitlab.com | @mallory | @mlee |\n\n- [ ] Zendesk Global: Light Agent\n"),
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["a second table of people"]);
}

#[tokio::test]
async fn an_item_hidden_in_a_quote_does_not_count() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "x",
            &[],
            &format!("{TABLE}{JANE}\n> - [ ] Zendesk Global: Support Manager\n\n- [ ] Zendesk Global: add tag `partner_support_agent`\n"),
        )
        .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.run().await;
    assert!(w.custom_role("jane.doe@gitlab.com").as_deref() != Some("Support Manager"));
    // What else the bot said, by snapshot.
    w.expect_rest();
}

// ================================================== 10. output size and injection

#[tokio::test]
async fn a_huge_description_gives_a_bounded_comment() {
    let mut w = World::new(crate::test_name!()).await;
    let noise: String = (0..12_000)
        .map(|i| format!("- [ ] Slack: channel number {i} @all [x](http://evil.example)\n"))
        .collect();
    let iid = w
        .file(
            "jdoe",
            "light agent",
            &[],
            &format!("- [ ] Zendesk Global: Light Agent\n{noise}"),
        )
        .await;
    w.run().await;
    for c in w.sb.bot_comments(iid) {
        assert!(c.body.len() < 70_000, "{} characters", c.body.len());
    }
    w.says(iid, &["and 11990 more"]);
}

#[tokio::test]
async fn mentions_and_links_in_an_access_level_are_inert() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(
        &w,
        "jdoe",
        JANE,
        "Zendesk Global: @all [root](http://evil.example) <img src=x>",
    )
    .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["cannot read this request"]);
}

#[tokio::test]
async fn a_quick_action_in_a_level_never_starts_a_line() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(&w, "jdoe", JANE, "Zendesk Global:\n  /close\n  /label ~x").await;
    w.run().await;
    w.unchanged();
    assert_eq!(w.sb.state(iid), "opened");
    w.inert(iid);
    // What else the bot said, by snapshot.
    w.expect_rest();
}

#[tokio::test]
async fn hundreds_of_errors_are_counted_not_listed() {
    let mut w = World::new(crate::test_name!()).await;
    let bad: String = (0..300)
        .map(|i| format!("- [ ] Zendesk Global: role number {i}\n"))
        .collect();
    let iid = w
        .file("jdoe", "x", &[], &format!("{TABLE}{JANE}\n{bad}"))
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["more problems"]);
}

#[tokio::test]
async fn too_many_people_in_one_request_are_refused() {
    let mut w = World::new(crate::test_name!()).await;
    let rows: String = (0..60)
        .map(|i| format!("| P {i} | p{i}@gitlab.com | - | @mlee |\n"))
        .collect();
    let iid = w
        .file(
            "jdoe",
            "bulk",
            &[],
            &format!("{TABLE}{rows}\n- [ ] Zendesk Global: Light Agent\n"),
        )
        .await;
    w.run().await;
    w.unchanged();
    w.says(iid, &["split it"]);
}

#[tokio::test]
async fn a_stale_reminder_mentions_only_real_people() {
    let mut t = crate::tester!().await;
    t.sb.gitlab.lock().clock_offset = -chrono::Duration::days(10);
    // The row's manager is a real user; a fake `@all` manager is refused elsewhere,
    // so here the reminder can only name @mlee.
    let iid =
        t.sb.file_issue(
            "jdoe",
            "tag",
            &[],
            &format!("{TABLE}{JANE}\n- [ ] Zendesk Global: add tag `partner_support_agent`\n"),
        )
        .await
        .unwrap();
    t.sb.gitlab.lock().clock_offset = chrono::Duration::zero();
    // The bot starts after the request was filed, ten days back.
    t.restart().await;
    t.run().await;
    let c = t
        .expect_comments(iid)
        .into_iter()
        .find(|c| c.body.contains("Reminder"))
        .unwrap();
    let mentions: Vec<&str> = c
        .body
        .split_whitespace()
        .filter(|w| w.starts_with('@'))
        .collect();
    assert_eq!(mentions, vec!["@mlee"]);
}

// ================================================== controls: the legitimate path

#[tokio::test]
async fn control_a_special_request_approved_after_its_plan_is_carried_out() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = special_request(&w, "jdoe", JANE, "Zendesk Global: Agent - Support Engineer").await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.label("lyle", iid, OWNER).await;
    w.run().await;
    assert_eq!(
        w.custom_role("jane.doe@gitlab.com").as_deref(),
        Some("Support Engineer")
    );
    w.says(iid, &["access-bot: done"]);
}

#[tokio::test]
async fn control_self_service_light_agent_is_carried_out() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "jdoe",
            "light agent",
            &[],
            "- [ ] Zendesk Global: Light Agent\n",
        )
        .await;
    w.run().await;
    let z = w.sb.zd("global");
    let u = z.user_by_email("jane.doe@gitlab.com").unwrap();
    assert_eq!(u.custom_role_id, z.light_agent_role());
    drop(z);
    w.says(iid, &["Account created and upgraded to light agent"]);
}

#[tokio::test]
async fn control_another_team_ticking_its_own_line_does_not_block_an_offboarding() {
    let mut w = World::new(crate::test_name!()).await;
    w.seed("alex.chen@gitlab.com", "agent", Some("Support Engineer"));
    let iid = w
        .file(
            "gitlab-employment-bot",
            "Offboarding: Alex Chen",
            &["offboarding"],
            &format!(
                "{TABLE}| Alex Chen | alex.chen@gitlab.com | @achen | @mlee |\n\n- [ ]  @zd: Remove the team member from Zendesk Global\n- [ ]  @it: Remove the team member from Slack\n"
            ),
        )
        .await;
    w.edit("mallory", iid, "- [ ]  @it", "- [x]  @it").await;
    w.run().await;
    let z = w.sb.zd("global");
    let a = z.user_by_email("alex.chen@gitlab.com").unwrap();
    assert!(a.role == "end-user" && a.suspended);
    drop(z);
    w.says(iid, &["access-bot: done"]);
}

#[tokio::test]
async fn control_an_entitlement_from_the_automation_is_carried_out() {
    let mut w = World::new(crate::test_name!()).await;
    let iid = w
        .file(
            "gitlab-employment-bot",
            "Entitlements: Sam Rivera",
            &["BaselineEntitlementAR"],
            &rbe_body(
                "Sam Rivera",
                "sam.rivera@gitlab.com",
                "srivera",
                "Agent, role Support Engineer",
            ),
        )
        .await;
    w.run().await;
    assert_eq!(
        w.custom_role("sam.rivera@gitlab.com").as_deref(),
        Some("Support Engineer")
    );
    w.says(iid, &["access-bot: done"]);
}

#[tokio::test]
async fn control_a_request_changed_then_approved_again_is_carried_out() {
    let mut w = World::new(crate::test_name!()).await;
    w.seed("jane.doe@gitlab.com", "light-agent", None);
    let iid = special_request(
        &w,
        "jdoe",
        JANE,
        "Zendesk Global: add tag `partner_support_agent`",
    )
    .await;
    w.run().await;
    w.label("mlee", iid, MANAGER).await;
    w.edit(
        "jdoe",
        iid,
        "partner_support_agent",
        "order_management_team",
    )
    .await;
    w.run().await;
    assert!(
        w.sb.zd("global")
            .user_by_email("jane.doe@gitlab.com")
            .unwrap()
            .tags
            .is_empty()
    );
    // The manager approves the new plan.
    w.unlabel("mlee", iid, MANAGER).await;
    w.label("mlee", iid, MANAGER).await;
    w.run().await;
    let tags =
        w.sb.zd("global")
            .user_by_email("jane.doe@gitlab.com")
            .unwrap()
            .tags
            .clone();
    assert_eq!(tags, vec!["order_management_team".to_string()]);
    // What else the bot said, by snapshot.
    w.expect_rest();
}
