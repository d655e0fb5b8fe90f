//! One bad issue or answer fails that issue alone, says why on it, and never
//! stops the others; a killed bot's issue is picked up again by the next run,
//! whatever the poll cursor says. End to end against the sandbox over HTTP.
//!
//! Every bot comment is read and checked by snapshot (`Tester::expect_comment`).

mod common;

use std::sync::Arc;

use access_bot::bot::{Bot, Outcome};
use access_bot::sandbox::faults::Failure;
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::{PROJECT, Sandbox};
use access_bot::store::Store;
use common::tester::{MANAGER, OWNER, fixtures};

fn has_agent(sb: &Sandbox, email: &str) -> bool {
    sb.zd("global").user_by_email(email).is_some()
}

#[tokio::test]
async fn an_issue_gitlab_shows_as_unreadable_json_fails_alone_and_says_so() {
    let mut t = crate::tester!().await;
    let broken = t.file(&fixtures::light_agent_global()).await;
    let fine = t.file(&fixtures::role_based_entitlement()).await;
    let sb = &t.sb;
    sb.gitlab
        .lock()
        .project_mut(PROJECT)
        .and_then(|p| p.issues.iter_mut().find(|i| i.iid == broken))
        .unwrap()
        .malformed = true;
    let reports = t.run_reports(3).await;
    assert!(
        reports.iter().all(|r| r.errors.is_empty()),
        "the poll itself never fails: {reports:?}"
    );
    assert!(
        has_agent(&t.sb, "sam.rivera@gitlab.com"),
        "the other issue (#{fine}) is done"
    );
    // The other issue: its plan, and done.
    t.expect_comment(fine);
    t.expect_comment(fine);
    t.expect_no_comment(fine);
    assert!(!has_agent(&t.sb, "jane.doe@gitlab.com"));
    // The broken one: stopped, the bot cannot read what GitLab sent.
    t.expect_comment(broken);
    t.expect_no_comment(broken);
    // Repaired: the same issue is picked up and finished; the note is not repeated.
    t.sb.gitlab
        .lock()
        .project_mut(PROJECT)
        .and_then(|p| p.issues.iter_mut().find(|i| i.iid == broken))
        .unwrap()
        .malformed = false;
    t.run().await;
    assert!(has_agent(&t.sb, "jane.doe@gitlab.com"));
    // Its plan and its result, and no second stop.
    t.expect_comment(broken);
    t.expect_comment(broken);
    t.expect_no_comment(broken);
}

#[tokio::test]
async fn a_zendesk_answer_the_bot_cannot_read_is_said_on_the_issue_once() {
    let mut t = crate::tester!().await;
    let iid = t.file(&fixtures::light_agent_global()).await;
    t.sb.zd_knobs("global")
        .fail_next("GET /api/v2/users/search", 2, Failure::Garbage);
    let r = t.bot.cycle().await;
    assert!(
        matches!(&r.outcomes[..], [(_, i, Outcome::Failed(_))] if *i == iid),
        "{r:?}"
    );
    let r = t.bot.cycle().await;
    assert!(r.failed(), "{r:?}");
    // Stopped on this issue: said once, not every cycle.
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    assert!(!has_agent(&t.sb, "jane.doe@gitlab.com"));
    // The answers are readable again: done (the plan, then the result).
    t.run().await;
    assert!(has_agent(&t.sb, "jane.doe@gitlab.com"));
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_no_comment(iid);
}

#[tokio::test]
async fn a_killed_bots_issue_is_taken_over_at_once_and_not_skipped_by_the_cursor() {
    let mut t = crate::tester!().await;
    let path = std::env::temp_dir().join(format!("ab-kill-{}.db", rand::random::<u32>()));
    let iid = t.file(&fixtures::role_based_entitlement()).await;
    let sb = &t.sb;
    // The first bot dies while Zendesk holds its first write.
    sb.zd_knobs("global")
        .fail_next("POST /api/v2/users/create_or_update", 1, Failure::Hang);
    let first: Arc<Bot> = Arc::new(
        sb.bot_with_store(Arc::new(Store::open(&path).unwrap()))
            .await
            .unwrap(),
    );
    let running = tokio::spawn({
        let b = first.clone();
        async move { b.cycle().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    running.abort();
    let _ = running.await;
    drop(first);
    sb.zd_knobs("global").clear_faults();
    // Meanwhile other activity moves the cursor past the issue.
    let other = t.file(&fixtures::light_agent_global()).await;
    let second = sb
        .bot_with_store(Arc::new(Store::open(&path).unwrap()))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let reports = run_until_quiet(&second, 4).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "no waiting for the dead bot's lease"
    );
    assert!(
        !reports
            .iter()
            .any(|r| r.outcomes.iter().any(|(_, _, o)| *o == Outcome::Busy)),
        "{reports:?}"
    );
    assert!(has_agent(sb, "sam.rivera@gitlab.com"), "#{iid} finished");
    assert!(has_agent(sb, "jane.doe@gitlab.com"), "#{other} finished");
    // Each: the plan, then done once.
    for i in [iid, other] {
        t.expect_comment(i);
        t.expect_comment(i);
        t.expect_no_comment(i);
    }
    let _ = std::fs::remove_file(&path);
}

/// A person's change that lands while the bot is looking at the issue was not
/// part of its decision: the bot looks again, instead of taking the issue as
/// seen up to its own write. Here the system owner approves while the bot is
/// reading the label events of the manager's approval.
#[tokio::test]
async fn a_change_made_while_the_bot_looks_brings_the_issue_back() {
    let mut t = crate::tester!().await;
    let iid = t.file(&fixtures::special_request()).await;
    t.run().await;
    // The plan, once.
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    t.label("mlee", iid, MANAGER).await;
    let (sb, bot) = (&t.sb, &t.bot);
    sb.gitlab_knobs.fail_next(
        &format!(
            "GET /api/v4/projects/support%2Faccess-requests/issues/{iid}/resource_label_events"
        ),
        1,
        Failure::Delay(std::time::Duration::from_millis(800)),
    );
    let (report, approved) = tokio::join!(bot.cycle(), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        sb.add_label("lyle", iid, OWNER).await
    });
    approved.unwrap();
    assert!(
        report
            .outcomes
            .iter()
            .any(|(_, i, o)| *i == iid && matches!(o, Outcome::Waiting)),
        "decided on what it read before the owner's label: {report:?}"
    );
    run_until_quiet(bot, 3).await;
    // Done, once.
    t.expect_comment(iid);
    t.expect_no_comment(iid);
}
