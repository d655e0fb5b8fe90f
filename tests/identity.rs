//! Who is who, end to end over HTTP: the bot learns a GitLab user's company
//! e-mail only from a source that may tell it (an enterprise group's Owner, an
//! administrator's token, the operator's map), never from what GitLab shows a
//! normal token or from the issue; and with a directory, people are checked
//! against Google Workspace (active, primary address, manager).
//!
//! Every bot comment is read and checked by snapshot (`Tester::expect_rest`
//! at the end of a test); the words a test asserts stay in it.

mod common;

use access_bot::bot::Bot;
use access_bot::config::{Config, IdentitySource};
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::{SERVICE_ACCOUNT, Sandbox};
use common::tester::{MANAGER, OWNER, TABLE};
use serde_json::Value;

const SELF_SERVICE: &str =
    "- [ ] Zendesk Global: Light Agent\n- Justification for this access: reading tickets\n";

async fn bot_with(sb: &Sandbox, cfg: Config) -> Bot {
    let store = std::sync::Arc::new(
        access_bot::store::Store::open(std::path::Path::new(":memory:")).unwrap(),
    );
    Bot::connect_with(cfg, &sb.secrets, store, std::time::Duration::from_millis(5))
        .await
        .unwrap()
}

fn has_account(sb: &Sandbox, email: &str) -> bool {
    sb.zd("global").user_by_email(email).is_some()
}

fn bot_text(sb: &Sandbox, iid: u64) -> String {
    sb.bot_comments(iid)
        .iter()
        .map(|c| c.body.clone())
        .collect::<Vec<_>>()
        .join("\n-----\n")
}

async fn get(sb: &Sandbox, token_of: &str, path: &str) -> (u16, Value) {
    let token = sb
        .gitlab
        .lock()
        .user_by_name(token_of)
        .map(|u| u.token.clone())
        .unwrap();
    let r = reqwest::Client::new()
        .get(format!("http://{}/api/v4{path}", sb.gitlab_addr))
        .header("PRIVATE-TOKEN", token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn gitlab_shows_a_normal_token_no_one_elses_email() {
    let t = crate::tester!().await;
    let (_, list) = get(&t.sb, "mallory", "/users?username=jdoe").await;
    let jdoe = &list[0];
    assert_eq!(jdoe["username"], "jdoe");
    assert!(jdoe.get("email").is_none(), "{jdoe}");
    let id = jdoe["id"].as_u64().unwrap();
    // The single-user call shows only what the user chose to publish.
    let (_, one) = get(&t.sb, "mallory", &format!("/users/{id}")).await;
    assert!(one.get("email").is_none(), "{one}");
    assert_eq!(one["public_email"], "");
    // One's own address, yes.
    let (_, me) = get(&t.sb, "mallory", "/user").await;
    assert_eq!(me["email"], "mallory@gitlab.com");
    assert_eq!(me["is_admin"], false);
    // The enterprise users of a group: its Owners only.
    let group = t.sb.config.identity.enterprise_group.clone().unwrap();
    let path = format!("/groups/{group}/enterprise_users?username=jdoe");
    let (status, _) = get(&t.sb, "mallory", &path).await;
    assert_eq!(status, 403);
    let (status, owners_view) = get(&t.sb, "access-bot", &path).await;
    assert_eq!(status, 200);
    assert_eq!(owners_view[0]["email"], "jane.doe@gitlab.com");
    // An administrator sees everyone's.
    t.sb.gitlab
        .lock()
        .users
        .iter_mut()
        .filter(|u| u.username == "lyle")
        .for_each(|u| u.admin = true);
    let (_, admins_view) = get(&t.sb, "lyle", "/users?username=jdoe").await;
    assert_eq!(admins_view[0]["email"], "jane.doe@gitlab.com");
}

#[tokio::test]
async fn a_source_that_cannot_see_emails_makes_self_service_fail_closed() {
    let mut t = crate::tester!().await;
    let mut cfg = t.sb.config.clone();
    // gitlab_admin with a token that is not an administrator's.
    cfg.identity.sources = vec![IdentitySource::GitlabAdmin];
    // The bot on this configuration.
    t.bot = bot_with(&t.sb, cfg).await;
    let iid =
        t.sb.file_issue("jdoe", "Zendesk Global light agent", &[], SELF_SERVICE)
            .await
            .unwrap();
    run_until_quiet(&t.bot, 4).await;
    assert!(
        !has_account(&t.sb, "jane.doe@gitlab.com"),
        "{}",
        bot_text(&t.sb, iid)
    );
    assert!(
        !t.sb
            .google
            .lock()
            .is_member("okta-zendeskglobal-users@gitlab.com", "jane.doe@gitlab.com")
    );
    let text = bot_text(&t.sb, iid);
    assert!(!text.is_empty(), "the requester is told why");
    assert!(!text.contains("self-service"), "{text}");
    assert!(
        text.contains("cannot tell the e-mail address of `@jdoe`"),
        "{text}"
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

#[tokio::test]
async fn an_administrators_token_is_a_source() {
    let mut t = crate::tester!().await;
    t.sb.gitlab
        .lock()
        .users
        .iter_mut()
        .filter(|u| u.username == "access-bot")
        .for_each(|u| u.admin = true);
    let mut cfg = t.sb.config.clone();
    cfg.identity.sources = vec![IdentitySource::GitlabAdmin];
    // The bot on this configuration.
    t.bot = bot_with(&t.sb, cfg).await;
    let iid =
        t.sb.file_issue("jdoe", "Zendesk Global light agent", &[], SELF_SERVICE)
            .await
            .unwrap();
    run_until_quiet(&t.bot, 4).await;
    assert!(
        has_account(&t.sb, "jane.doe@gitlab.com"),
        "{}",
        bot_text(&t.sb, iid)
    );
    assert!(bot_text(&t.sb, iid).contains("self-service"));
    // What the bot said, by snapshot.
    t.expect_rest();
}

#[tokio::test]
async fn a_map_file_is_a_source_and_knows_only_whom_it_lists() {
    let mut t = crate::tester!().await;
    let dir = std::env::temp_dir().join(format!("ab-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let map = dir.join("people.csv");
    std::fs::write(&map, "# username,email\njdoe,jane.doe@gitlab.com\n").unwrap();
    let mut cfg = t.sb.config.clone();
    cfg.identity.sources = vec![IdentitySource::Map];
    cfg.identity.map_path = Some(map);
    // The bot on this configuration.
    t.bot = bot_with(&t.sb, cfg).await;
    let listed =
        t.sb.file_issue("jdoe", "Zendesk Global light agent", &[], SELF_SERVICE)
            .await
            .unwrap();
    let unlisted =
        t.sb.file_issue("bli", "Zendesk Global light agent", &[], SELF_SERVICE)
            .await
            .unwrap();
    run_until_quiet(&t.bot, 4).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        has_account(&t.sb, "jane.doe@gitlab.com"),
        "{}",
        bot_text(&t.sb, listed)
    );
    assert!(
        !has_account(&t.sb, "bo.li@gitlab.com"),
        "{}",
        bot_text(&t.sb, unlisted)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// A request for one person, filed by kpatel, approved by the directory's
/// manager mlee and a system owner.
async fn approved_request(sb: &Sandbox, bot: &Bot, row: &str) -> u64 {
    let body = format!("{TABLE}{row}\n- [ ] Zendesk Global: Agent - Support Engineer\n");
    let iid = sb
        .file_issue("kpatel", "Zendesk Global access", &[], &body)
        .await
        .unwrap();
    run_until_quiet(bot, 3).await;
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    sb.add_label("lyle", iid, OWNER).await.unwrap();
    run_until_quiet(bot, 4).await;
    iid
}

#[tokio::test]
async fn grants_go_only_to_active_users_of_the_directory_by_their_primary_address() {
    let mut t = crate::tester!().await;
    {
        let mut g = t.sb.google.lock();
        g.suspended.insert("bo.li@gitlab.com".into());
        g.aliases
            .insert("jane@gitlab.com".into(), "jane.doe@gitlab.com".into());
    }
    t.restart().await;
    let cases = [
        (
            "| Nobody | nobody@gitlab.com | - | @mlee |",
            "nobody@gitlab.com",
            "not a user of the company directory",
        ),
        (
            "| Bo Li | bo.li@gitlab.com | @bli | @mlee |",
            "bo.li@gitlab.com",
            "suspended in the company directory",
        ),
        (
            "| Jane Doe | jane@gitlab.com | @jdoe | @mlee |",
            "jane@gitlab.com",
            "is another address of `jane.doe@gitlab.com`",
        ),
    ];
    for (row, email, why) in cases {
        let iid = approved_request(&t.sb, &t.bot, row).await;
        let text = bot_text(&t.sb, iid);
        assert!(text.contains(why), "#{iid} does not say {why:?}:\n{text}");
        assert!(!has_account(&t.sb, email), "{email}: {text}");
        assert!(!has_account(&t.sb, "jane.doe@gitlab.com"), "{text}");
    }
    // The control: an active user by their primary address is provisioned.
    let iid = approved_request(
        &t.sb,
        &t.bot,
        "| Robin Kim | robin.kim@gitlab.com | @rkim | @mlee |",
    )
    .await;
    assert!(
        has_account(&t.sb, "robin.kim@gitlab.com"),
        "{}",
        bot_text(&t.sb, iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

#[tokio::test]
async fn only_the_directorys_manager_approves_for_a_person() {
    let mut t = crate::tester!().await;
    t.restart().await;
    // Robin's manager is mlee; the issue names kpatel, a real manager of others.
    let body = format!(
        "{TABLE}| Robin Kim | robin.kim@gitlab.com | @rkim | @kpatel |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n"
    );
    let iid =
        t.sb.file_issue("rkim", "Zendesk Global access", &[], &body)
            .await
            .unwrap();
    run_until_quiet(&t.bot, 3).await;
    t.sb.add_label("kpatel", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    run_until_quiet(&t.bot, 4).await;
    let text = bot_text(&t.sb, iid);
    assert!(!has_account(&t.sb, "robin.kim@gitlab.com"), "{text}");
    assert!(
        text.contains("the company directory does not list `@kpatel` as the manager"),
        "{text}"
    );
    // The reporting line changes in the directory: now kpatel's approval,
    // given again after the bot's new plan, counts.
    t.sb.google
        .lock()
        .managers
        .insert("robin.kim@gitlab.com".into(), "kpatel@gitlab.com".into());
    t.restart().await;
    run_until_quiet(&t.bot, 3).await;
    t.sb.remove_label("kpatel", iid, MANAGER).await.unwrap();
    t.sb.add_label("kpatel", iid, MANAGER).await.unwrap();
    t.sb.remove_label("lyle", iid, OWNER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    run_until_quiet(&t.bot, 4).await;
    assert!(
        has_account(&t.sb, "robin.kim@gitlab.com"),
        "{}",
        bot_text(&t.sb, iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

#[tokio::test]
async fn a_directory_the_bot_may_not_read_stops_it_and_check_says_why() {
    let mut t = crate::tester!().await;
    let report = access_bot::check::report(&t.sb.config, &t.sb.secrets).await;
    let identity: Vec<&(bool, String)> = report
        .iter()
        .filter(|(_, l)| l.starts_with("Identity") || l.starts_with("Directory"))
        .collect();
    assert_eq!(identity.len(), 2, "{report:?}");
    assert!(identity.iter().all(|(ok, _)| *ok), "{report:?}");

    t.sb.google.lock().user_readers.remove(SERVICE_ACCOUNT);
    let report = access_bot::check::report(&t.sb.config, &t.sb.secrets).await;
    assert!(
        report
            .iter()
            .any(|(ok, l)| !ok && l.contains("directory: not allowed")),
        "{report:?}"
    );
    t.restart().await;
    let iid = approved_request(
        &t.sb,
        &t.bot,
        "| Robin Kim | robin.kim@gitlab.com | @rkim | @mlee |",
    )
    .await;
    assert!(
        !has_account(&t.sb, "robin.kim@gitlab.com"),
        "{}",
        bot_text(&t.sb, iid)
    );
    let r = t.bot.cycle().await;
    assert!(
        r.failed(),
        "a directory that refuses is an error, not a yes"
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

#[tokio::test]
async fn check_names_an_enterprise_group_the_bot_does_not_own() {
    let t = crate::tester!().await;
    t.sb.gitlab
        .lock()
        .groups
        .iter_mut()
        .for_each(|g| g.owners.clear());
    let report = access_bot::check::report(&t.sb.config, &t.sb.secrets).await;
    assert!(
        report
            .iter()
            .any(|(ok, l)| !ok && l.contains("must be an Owner")),
        "{report:?}"
    );
    let mut cfg = t.sb.config.clone();
    cfg.identity.sources = vec![IdentitySource::GitlabAdmin];
    let report = access_bot::check::report(&cfg, &t.sb.secrets).await;
    assert!(
        report
            .iter()
            .any(|(ok, l)| !ok && l.contains("needs an administrator's token")),
        "{report:?}"
    );
}
