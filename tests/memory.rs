//! The issue is the memory; the state database is a cache. A bot started with
//! an empty database (deleted, lost, another host) converges to the same end
//! state with nothing done twice. End to end against the sandbox over HTTP.
//! (The People team's e-mail and the seat review have their own tests in
//! `tests/notify.rs` and `tests/seats.rs`.)

mod common;

use access_bot::sandbox::faults::Failure;
use common::tester::{GLOBAL_OKTA, Issue, MANAGER, OWNER, Tester};

const TIME_BOUND: &str = "access-bot/time-bound";

/// A time-bound Support Engineer grant for Robin, filed and approved.
async fn time_bound_request(t: &Tester, days: i64) -> u64 {
    let until = (chrono::Utc::now() + chrono::Duration::days(days)).date_naive();
    let iid = t
        .file(
            &Issue::table(
                "rkim",
                "Robin Kim, Zendesk Global",
                &[["Robin Kim", "robin.kim@gitlab.com", "rkim", "mlee"]],
                &format!(
                    "Expires: {until}\n\n- [ ] Zendesk Global: Agent - Support Engineer\n- [ ] Access revoked on expiry\n"
                ),
            )
            .labels(&[]),
        )
        .await;
    t.run().await;
    t.label("mlee", iid, MANAGER).await;
    t.label("lyle", iid, OWNER).await;
    t.run().await;
    iid
}

fn robin(t: &Tester) -> Option<(String, Option<String>)> {
    let u = t.zd_user("global", "robin.kim@gitlab.com")?;
    Some((u.role, t.role_name("global", u.custom_role_id)))
}

#[tokio::test]
async fn a_time_bound_grant_ends_on_its_date_though_the_database_was_lost() {
    let mut t = crate::tester!().await;
    let iid = time_bound_request(&t, 5).await;
    assert_eq!(
        robin(&t),
        Some(("agent".into(), Some("Support Engineer".into())))
    );
    assert!(
        t.sb.labels(iid).iter().any(|l| l == TIME_BOUND),
        "{:?}",
        t.sb.labels(iid)
    );
    // The plan, the record of what will be taken back, the result.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);

    // Another bot, with an empty database, on the date.
    t.restart().await;
    t.bot.clock.set_offset(chrono::Duration::days(6));
    t.run().await;
    let (role, custom) = robin(&t).unwrap();
    assert_eq!(role, "end-user", "taken back");
    assert_eq!(custom, None);
    assert!(
        !t.sb
            .google
            .lock()
            .is_member(GLOBAL_OKTA, "robin.kim@gitlab.com")
    );
    // Time-bound access revoked, once.
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    assert!(!t.sb.labels(iid).iter().any(|l| l == TIME_BOUND));
    assert!(
        t.sb.ticked(iid)
            .iter()
            .any(|t| t.contains("revoked on expiry"))
    );

    // And a third, also empty: nothing more.
    t.restart().await;
    t.bot.clock.set_offset(chrono::Duration::days(7));
    t.run().await;
    t.expect_no_comment(iid);
}

#[tokio::test]
async fn a_grant_interrupted_half_way_is_still_taken_back_in_full_from_its_record() {
    let mut t = crate::tester!().await;
    // The Okta group cannot be changed while the grant runs: it stops after
    // the Zendesk steps.
    t.sb.google_knobs
        .fail_next("POST /admin/directory", 1000, Failure::Status(403));
    let iid = time_bound_request(&t, 5).await;
    assert_eq!(
        robin(&t),
        Some(("agent".into(), Some("Support Engineer".into()))),
        "the Zendesk half happened"
    );
    assert!(
        !t.sb
            .google
            .lock()
            .is_member(GLOBAL_OKTA, "robin.kim@gitlab.com")
    );
    t.sb.google_knobs.clear_faults();
    // The plan, the record of what will be taken back, the result: partly
    // done, the Okta group refused.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);

    // The database is lost; on the date, what the record lists and the
    // account still has is taken back.
    t.restart().await;
    t.bot.clock.set_offset(chrono::Duration::days(6));
    t.run().await;
    assert_eq!(robin(&t).map(|r| r.0).as_deref(), Some("end-user"));
    assert!(
        !t.sb
            .google
            .lock()
            .is_member(GLOBAL_OKTA, "robin.kim@gitlab.com")
    );
    // The failed step, retried now that the group can be changed: done;
    // then time-bound access revoked, once.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_no_comment(iid);
}

/// The expiry check is an event of its own, on the bot's one clock: polls
/// never take a grant back, however late it is; the `Expiries` event does,
/// with no poll, and only once.
#[tokio::test]
async fn an_expiry_is_taken_back_by_its_own_event_and_never_by_a_poll() {
    use access_bot::bot::{Event, Outcome};
    let mut t = crate::tester!().await;
    let iid = time_bound_request(&t, 5).await;
    // The plan, the record of what will be taken back, the result.
    assert_eq!(t.read_all(iid).len(), 3);
    let granted = Some(("agent".to_string(), Some("Support Engineer".to_string())));
    assert_eq!(robin(&t), granted);

    t.bot.clock.advance(chrono::Duration::days(6));
    for _ in 0..3 {
        let r = t.bot.cycle().await;
        assert!(r.outcomes.is_empty() && r.errors.is_empty(), "{r:?}");
    }
    assert_eq!(robin(&t), granted, "a poll took the grant back");
    t.expect_no_comment(iid);
    assert!(t.sb.labels(iid).iter().any(|l| l == TIME_BOUND));

    let r = t.bot.handle(Event::Expiries).await;
    assert_eq!(
        r.outcomes,
        vec![(access_bot::sandbox::PROJECT.to_string(), iid, Outcome::Done)]
    );
    assert_eq!(robin(&t).map(|r| r.0).as_deref(), Some("end-user"));
    let said = t.read_all(iid);
    assert_eq!(said.len(), 4, "one comment more: revoked");
    assert!(
        said[3].body.contains("Time-bound access revoked"),
        "{}",
        said[3].body
    );
    assert!(!t.sb.labels(iid).iter().any(|l| l == TIME_BOUND));
    assert!(
        t.sb.ticked(iid)
            .iter()
            .any(|t| t.contains("revoked on expiry"))
    );
    // Once.
    let r = t.bot.handle(Event::Expiries).await;
    assert!(r.outcomes.is_empty(), "{r:?}");
    t.expect_no_comment(iid);
}

/// The stale scan is an event of its own, and a request's age is read on the
/// bot's clock: a poll leaves an unchanged waiting request alone; the
/// `StaleScan` event reminds its approvers.
#[tokio::test]
async fn a_waiting_request_is_reminded_by_the_stale_scan_not_by_a_poll() {
    use access_bot::bot::{Event, Outcome};
    let mut t = crate::tester!().await;
    let iid = t
        .file(&Issue::table(
            "rkim",
            "Robin Kim, Zendesk Global",
            &[["Robin Kim", "robin.kim@gitlab.com", "rkim", "mlee"]],
            "- [ ] Zendesk Global: Agent - Support Engineer\n",
        ))
        .await;
    t.run().await;
    // The plan, waiting for approvals.
    assert_eq!(t.read_all(iid).len(), 1);

    // Eight days later (a reminder is due after seven).
    t.bot.clock.advance(chrono::Duration::days(8));
    let r = t.bot.cycle().await;
    assert!(r.outcomes.is_empty(), "{r:?}");
    t.expect_no_comment(iid);

    let r = t.bot.handle(Event::StaleScan).await;
    assert_eq!(
        r.outcomes,
        vec![(
            access_bot::sandbox::PROJECT.to_string(),
            iid,
            Outcome::Waiting
        )]
    );
    let said = t.read_all(iid);
    assert!(
        said.iter()
            .any(|c| c.body.contains("still waiting for approval")),
        "{said:#?}"
    );
    t.expect_state(iid, "opened");
}
