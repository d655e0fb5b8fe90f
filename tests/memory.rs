//! The issue is the memory; the state database is a cache. A bot started with
//! an empty database (deleted, lost, another host) converges to the same end
//! state with nothing done twice. End to end against the sandbox over HTTP.
//! (The People team's e-mail and the seat review have their own tests in
//! `tests/notify.rs` and `tests/seats.rs`.)

use access_bot::bot::Bot;
use access_bot::sandbox::faults::Failure;
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::{Ports, Sandbox};

const MANAGER: &str = "AR-Approval::Manager Approved";
const OWNER: &str = "Zendesk::System Owner Approved";
const TABLE: &str = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n";
const GLOBAL_OKTA: &str = "okta-zendeskglobal-users@gitlab.com";
const TIME_BOUND: &str = "access-bot/time-bound";

/// A time-bound Support Engineer grant for Robin, filed and approved.
async fn time_bound_request(sb: &Sandbox, bot: &Bot, days: i64) -> u64 {
    let until = (chrono::Utc::now() + chrono::Duration::days(days)).date_naive();
    let body = format!(
        "{TABLE}| Robin Kim | robin.kim@gitlab.com | @rkim | @mlee |\n\nExpires: {until}\n\n- [ ] Zendesk Global: Agent - Support Engineer\n- [ ] Access revoked on expiry\n"
    );
    let iid = sb
        .file_issue("rkim", "Robin Kim, Zendesk Global", &[], &body)
        .await
        .unwrap();
    run_until_quiet(bot, 3).await;
    sb.add_label("mlee", iid, MANAGER).await.unwrap();
    sb.add_label("lyle", iid, OWNER).await.unwrap();
    run_until_quiet(bot, 3).await;
    iid
}

fn robin(sb: &Sandbox) -> Option<(String, Option<String>)> {
    let w = sb.zd("global");
    let u = w.user_by_email("robin.kim@gitlab.com")?;
    let custom = u
        .custom_role_id
        .and_then(|id| w.custom_roles.iter().find(|r| r.id == id))
        .map(|r| r.name.clone());
    Some((u.role.clone(), custom))
}

fn count(sb: &Sandbox, iid: u64, needle: &str) -> usize {
    sb.bot_comments(iid)
        .iter()
        .filter(|c| c.body.contains(needle))
        .count()
}

#[tokio::test]
async fn a_time_bound_grant_ends_on_its_date_though_the_database_was_lost() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let first = sb.bot().await.unwrap();
    let iid = time_bound_request(&sb, &first, 5).await;
    assert_eq!(
        robin(&sb),
        Some(("agent".into(), Some("Support Engineer".into())))
    );
    assert!(
        sb.labels(iid).iter().any(|l| l == TIME_BOUND),
        "{:?}",
        sb.labels(iid)
    );
    drop(first);

    // Another bot, with an empty database, on the date.
    let mut second = sb.bot().await.unwrap();
    second.clock_offset = chrono::Duration::days(6);
    run_until_quiet(&second, 3).await;
    let (role, custom) = robin(&sb).unwrap();
    assert_eq!(role, "end-user", "taken back");
    assert_eq!(custom, None);
    assert!(
        !sb.google
            .lock()
            .is_member(GLOBAL_OKTA, "robin.kim@gitlab.com")
    );
    assert_eq!(
        count(&sb, iid, "Time-bound access revoked"),
        1,
        "{:#?}",
        sb.bot_comments(iid)
    );
    assert!(!sb.labels(iid).iter().any(|l| l == TIME_BOUND));
    assert!(
        sb.ticked(iid)
            .iter()
            .any(|t| t.contains("revoked on expiry"))
    );

    // And a third, also empty: nothing more.
    let mut third = sb.bot().await.unwrap();
    third.clock_offset = chrono::Duration::days(7);
    let notes = sb.bot_comments(iid).len();
    run_until_quiet(&third, 3).await;
    assert_eq!(sb.bot_comments(iid).len(), notes, "nothing said twice");
}

#[tokio::test]
async fn a_grant_interrupted_half_way_is_still_taken_back_in_full_from_its_record() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    // The Okta group cannot be changed while the grant runs: it stops after
    // the Zendesk steps.
    sb.google_knobs
        .fail_next("POST /admin/directory", 1000, Failure::Status(403));
    let first = sb.bot().await.unwrap();
    let iid = time_bound_request(&sb, &first, 5).await;
    assert_eq!(
        robin(&sb),
        Some(("agent".into(), Some("Support Engineer".into()))),
        "the Zendesk half happened"
    );
    assert!(
        !sb.google
            .lock()
            .is_member(GLOBAL_OKTA, "robin.kim@gitlab.com")
    );
    sb.google_knobs.clear_faults();
    drop(first);

    // The database is lost; on the date, what the record lists and the
    // account still has is taken back.
    let mut second = sb.bot().await.unwrap();
    second.clock_offset = chrono::Duration::days(6);
    run_until_quiet(&second, 3).await;
    assert_eq!(robin(&sb).map(|r| r.0).as_deref(), Some("end-user"));
    assert!(
        !sb.google
            .lock()
            .is_member(GLOBAL_OKTA, "robin.kim@gitlab.com")
    );
    assert_eq!(count(&sb, iid, "Time-bound access revoked"), 1);
}
