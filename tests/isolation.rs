//! One bad issue or answer fails that issue alone, says why on it, and never
//! stops the others; a killed bot's issue is picked up again by the next run,
//! whatever the poll cursor says. End to end against the sandbox over HTTP.

use std::sync::Arc;

use access_bot::bot::{Bot, Outcome};
use access_bot::demo::bodies;
use access_bot::sandbox::faults::Failure;
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::{PROJECT, Ports, Sandbox};
use access_bot::store::Store;

async fn file(sb: &Sandbox, name: &str) -> u64 {
    let (_, author, title, labels, body) = bodies()
        .into_iter()
        .find(|b| b.0 == name)
        .expect("demo body");
    sb.file_issue(author, title, &labels, &body).await.unwrap()
}

fn has_agent(sb: &Sandbox, email: &str) -> bool {
    sb.zd("global").user_by_email(email).is_some()
}

fn said(sb: &Sandbox, iid: u64, needle: &str) -> usize {
    sb.bot_comments(iid)
        .iter()
        .filter(|c| c.body.contains(needle))
        .count()
}

#[tokio::test]
async fn an_issue_gitlab_shows_as_unreadable_json_fails_alone_and_says_so() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let bot = sb.bot().await.unwrap();
    let broken = file(&sb, "light agent, Zendesk Global").await;
    let fine = file(&sb, "role-based entitlement").await;
    sb.gitlab
        .lock()
        .project_mut(PROJECT)
        .and_then(|p| p.issues.iter_mut().find(|i| i.iid == broken))
        .unwrap()
        .malformed = true;
    let reports = run_until_quiet(&bot, 3).await;
    assert!(
        reports.iter().all(|r| r.errors.is_empty()),
        "the poll itself never fails: {reports:?}"
    );
    assert!(
        has_agent(&sb, "sam.rivera@gitlab.com"),
        "the other issue (#{fine}) is done"
    );
    assert_eq!(said(&sb, fine, "access-bot: done"), 1);
    assert!(!has_agent(&sb, "jane.doe@gitlab.com"));
    assert_eq!(said(&sb, broken, "access-bot stopped on this issue"), 1);
    assert!(
        sb.bot_comments(broken)[0].body.contains("cannot read"),
        "{}",
        sb.bot_comments(broken)[0].body
    );
    // Repaired: the same issue is picked up and finished; the note is not repeated.
    sb.gitlab
        .lock()
        .project_mut(PROJECT)
        .and_then(|p| p.issues.iter_mut().find(|i| i.iid == broken))
        .unwrap()
        .malformed = false;
    run_until_quiet(&bot, 3).await;
    assert!(has_agent(&sb, "jane.doe@gitlab.com"));
    assert_eq!(said(&sb, broken, "access-bot stopped on this issue"), 1);
}

#[tokio::test]
async fn a_zendesk_answer_the_bot_cannot_read_is_said_on_the_issue_once() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let bot = sb.bot().await.unwrap();
    let iid = file(&sb, "light agent, Zendesk Global").await;
    sb.zd_knobs("global")
        .fail_next("GET /api/v2/users/search", 2, Failure::Garbage);
    let r = bot.cycle().await;
    assert!(
        matches!(&r.outcomes[..], [(_, i, Outcome::Failed(_))] if *i == iid),
        "{r:?}"
    );
    let r = bot.cycle().await;
    assert!(r.failed(), "{r:?}");
    assert_eq!(
        said(&sb, iid, "access-bot stopped on this issue"),
        1,
        "said once, not every cycle"
    );
    assert!(!has_agent(&sb, "jane.doe@gitlab.com"));
    // The answers are readable again: done.
    run_until_quiet(&bot, 3).await;
    assert!(has_agent(&sb, "jane.doe@gitlab.com"));
}

#[tokio::test]
async fn a_killed_bots_issue_is_taken_over_at_once_and_not_skipped_by_the_cursor() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let path = std::env::temp_dir().join(format!("ab-kill-{}.db", rand::random::<u32>()));
    let iid = file(&sb, "role-based entitlement").await;
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
    let other = file(&sb, "light agent, Zendesk Global").await;
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
    assert!(has_agent(&sb, "sam.rivera@gitlab.com"), "#{iid} finished");
    assert!(has_agent(&sb, "jane.doe@gitlab.com"), "#{other} finished");
    assert_eq!(said(&sb, iid, "access-bot: done"), 1);
    let _ = std::fs::remove_file(&path);
}

/// A person's change that lands while the bot is looking at the issue was not
/// part of its decision: the bot looks again, instead of taking the issue as
/// seen up to its own write. Here the system owner approves while the bot is
/// reading the label events of the manager's approval.
#[tokio::test]
async fn a_change_made_while_the_bot_looks_brings_the_issue_back() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let bot = sb.bot().await.unwrap();
    let iid = file(&sb, "special request").await;
    run_until_quiet(&bot, 3).await;
    assert_eq!(said(&sb, iid, "access-bot plan"), 1);
    sb.add_label("mlee", iid, "AR-Approval::Manager Approved")
        .await
        .unwrap();
    sb.gitlab_knobs.fail_next(
        &format!(
            "GET /api/v4/projects/support%2Faccess-requests/issues/{iid}/resource_label_events"
        ),
        1,
        Failure::Delay(std::time::Duration::from_millis(800)),
    );
    let (report, approved) = tokio::join!(bot.cycle(), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        sb.add_label("lyle", iid, "Zendesk::System Owner Approved")
            .await
    });
    approved.unwrap();
    assert!(
        report
            .outcomes
            .iter()
            .any(|(_, i, o)| *i == iid && matches!(o, Outcome::Waiting)),
        "decided on what it read before the owner's label: {report:?}"
    );
    run_until_quiet(&bot, 3).await;
    assert_eq!(
        said(&sb, iid, "access-bot: done"),
        1,
        "{:?}",
        sb.bot_comments(iid)
            .iter()
            .map(|c| c.body.lines().next().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    );
}
