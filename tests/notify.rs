//! Beyond the issue, end to end against the sandbox: the People team's
//! e-mail (SMTP sink), ops notices (fake Slack webhook), and the Support Team
//! file merge request (sandbox repository). Each delivery, its exactly-once
//! behaviour across a crash and restart, and a clear error on refusal.
//!
//! Every bot comment is read and checked by snapshot (`Tester::expect_comment`).

mod common;

use access_bot::bot::Outcome;
use access_bot::notify::{NotifyError, Slack};
use access_bot::sandbox::faults::Failure;
use access_bot::sandbox::scenario::ZendeskAccount;
use access_bot::sandbox::{PROJECT, Ports, SUPPORT_TEAM, Sandbox};
use common::tester::{Issue, Tester, account, fixtures, memory_store};

const REPO_MRS: &str =
    "POST /api/v4/projects/gitlab-support-readiness%2Fsupport-team/merge_requests";

fn notes_route(iid: u64) -> String {
    format!("POST /api/v4/projects/support%2Faccess-requests/issues/{iid}/notes")
}

fn message_ids(sb: &Sandbox) -> Vec<String> {
    sb.smtp
        .messages()
        .iter()
        .filter_map(|m| m.header("Message-ID"))
        .collect()
}

#[tokio::test]
async fn no_email_goes_out_before_the_request_is_on_the_issue() {
    let st = memory_store();
    let mut t = Tester::with_store(crate::test_name!(), st.clone()).await;
    let iid = t.file(&fixtures::light_agent_federal()).await;
    // The plan (which asks the People team on the issue) cannot be posted.
    t.sb.gitlab_knobs
        .fail_next(&notes_route(iid), 1, Failure::Status(500));
    let r = t.bot.cycle().await;
    assert!(r.failed(), "the cycle reports the failed comment");
    assert!(
        t.sb.smtp.messages().is_empty(),
        "no e-mail without its record"
    );
    t.expect_no_comment(iid);

    // Restart (a new process, same state database).
    t.restart_with(st.clone()).await;
    t.run().await;
    let mails = t.sb.smtp.messages();
    assert_eq!(mails.len(), 1, "exactly one e-mail");
    let m = &mails[0];
    assert_eq!(m.to, ["people-connect@gitlab.com"]);
    assert_eq!(m.from, "access-bot@gitlab.com");
    assert_eq!(m.user.as_deref(), Some("access-bot"), "authenticated");
    assert_eq!(
        m.header("Subject").as_deref(),
        Some("US Citizenship Verification Request")
    );
    let body = m.body();
    assert!(
        body.contains("Can you verify if Bo Li (bo.li@gitlab.com) is a US Citizen?"),
        "{body}"
    );
    assert!(
        body.contains(&format!("/support/access-requests/-/issues/{iid}")),
        "{body}"
    );
    // The plan asking about citizenship, the e-mail announced, then sent to
    // people-connect@, and nothing else.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_no_comment(iid);
}

#[tokio::test]
async fn no_email_goes_out_before_the_issue_says_it_is_being_sent() {
    // With the database kept and with it lost: the announcement fails, so
    // nothing is sent; the next cycle announces and sends, once.
    for lose_db in [false, true] {
        let st = memory_store();
        let name = format!("{}_lose_db_{lose_db}", crate::test_name!());
        let mut t = Tester::with_store(&name, st.clone()).await;
        let iid = t.file(&fixtures::light_agent_federal()).await;
        t.sb.gitlab_knobs
            .fail_after(&notes_route(iid), 1, 1, Failure::Status(500));
        assert!(t.bot.cycle().await.failed());
        assert!(t.sb.smtp.messages().is_empty(), "lose_db={lose_db}");
        // A lost database: a new process, a new store.
        let st = if lose_db {
            drop(st);
            memory_store()
        } else {
            st
        };
        t.restart_with(st).await;
        t.run().await;
        assert_eq!(
            t.sb.smtp.messages().len(),
            1,
            "lose_db={lose_db} {:?}",
            t.sb.bot_comments(iid)
        );
        // The plan, the announcement, then: e-mailed.
        t.expect_comment(iid);
        t.expect_comment(iid);
        t.expect_comment(iid);
        t.expect_no_comment(iid);
    }
}

#[tokio::test]
async fn an_email_whose_note_failed_is_not_sent_again_after_a_restart() {
    let st = memory_store();
    let mut t = Tester::with_store(crate::test_name!(), st.clone()).await;
    let iid = t.file(&fixtures::light_agent_federal()).await;
    // The plan and the announcement go up, the e-mail goes out, the note
    // saying so fails.
    t.sb.gitlab_knobs
        .fail_after(&notes_route(iid), 2, 1, Failure::Status(500));
    let r = t.bot.cycle().await;
    assert!(r.failed(), "{r:?}");
    assert_eq!(t.sb.smtp.messages().len(), 1);
    t.restart_with(st.clone()).await;
    t.run().await;
    assert_eq!(t.sb.smtp.messages().len(), 1, "not sent again");
    // The plan, the announcement, then: e-mailed (from the bot's own record,
    // so no word of a lost final answer).
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_no_comment(iid);
}

#[tokio::test]
async fn a_lost_final_answer_counts_as_sent_and_says_so() {
    let st = memory_store();
    let mut t = Tester::with_store(crate::test_name!(), st.clone()).await;
    t.sb.smtp.lock().lose_answer_next = 1;
    let iid = t.file(&fixtures::light_agent_federal()).await;
    t.run().await;
    t.restart_with(st.clone()).await;
    t.run().await;
    assert_eq!(t.sb.smtp.messages().len(), 1, "never sent twice");
    // The plan, the announcement, then: its final answer never reached the bot.
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_no_comment(iid);
}

#[tokio::test]
async fn with_the_database_lost_after_the_announcement_nothing_is_sent_twice() {
    // The issue says the e-mail was being handed over, and the bot's own
    // record of how far it got is gone: it may have gone, so it is not sent
    // again, and the issue says so. Whether it went (note lost after the
    // send) or not (killed before the send, here: the server refused).
    for sent in [true, false] {
        let name = format!("{}_sent_{sent}", crate::test_name!());
        let mut t = Tester::with_store(&name, memory_store()).await;
        let iid = t.file(&fixtures::light_agent_federal()).await;
        if sent {
            t.sb.gitlab_knobs
                .fail_after(&notes_route(iid), 2, 1, Failure::Status(500));
        } else {
            t.sb.smtp.refuse_next(1, "451 4.3.0 try later");
            // ... and the note saying so is lost too.
            t.sb.gitlab_knobs
                .fail_after(&notes_route(iid), 2, 1, Failure::Status(500));
        }
        t.bot.cycle().await;
        t.restart_with(memory_store()).await;
        t.run().await;
        assert_eq!(message_ids(&t.sb).len(), usize::from(sent), "sent={sent}");
        // The plan, the announcement, then: cannot tell whether it went.
        t.expect_comment(iid);
        t.expect_comment(iid);
        t.expect_comment(iid);
        t.expect_no_comment(iid);
    }
}

#[tokio::test]
async fn a_refusing_smtp_server_is_said_on_the_issue_and_retried() {
    let mut t = crate::tester!().await;
    t.sb.smtp.refuse_next(1, "550 5.7.1 Relaying denied");
    let iid = t.file(&fixtures::light_agent_federal()).await;
    let r = t.bot.cycle().await;
    assert!(
        matches!(r.outcomes[0].2, Outcome::Failed(ref e) if e.contains("550")),
        "{r:?}"
    );
    assert!(t.sb.smtp.messages().is_empty());
    // The plan, the announcement, then the refusal: could not e-mail, with
    // the server's "Relaying denied".
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    // Next cycle (the issue is on the retry list): sent, and said once.
    t.run().await;
    assert_eq!(t.sb.smtp.messages().len(), 1);
    t.expect_comment(iid);
    t.expect_no_comment(iid);
}

#[tokio::test]
async fn an_outage_makes_one_notice_and_the_next_one_counts_the_rest() {
    let mut t = crate::tester!().await;
    // The bot's token is revoked: every poll fails the same way.
    t.sb.gitlab_knobs.fail_next(
        "GET /api/v4/projects/support%2Faccess-requests/issues",
        5,
        Failure::Status(401),
    );
    for _ in 0..5 {
        assert!(t.bot.cycle().await.failed());
    }
    let texts = t.sb.slack.texts();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].contains("configuration error"), "{}", texts[0]);
    assert!(texts[0].contains("401"), "{}", texts[0]);
    let ops_mail =
        t.sb.smtp
            .messages()
            .into_iter()
            .filter(|m| m.to == ["support-ops@gitlab.com"])
            .count();
    assert_eq!(ops_mail, 1, "the same single notice by e-mail");

    // A different problem: told, with the four held back counted.
    let iid = t.file(&Issue::demo("security: self-approval")).await;
    t.run().await;
    t.label("mallory", iid, "AR-Approval::Manager Approved")
        .await;
    t.run().await;
    let texts = t.sb.slack.texts();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[1].contains("security reason"), "{}", texts[1]);
    assert!(
        texts[1].contains("4 similar or further notices were held back"),
        "{}",
        texts[1]
    );
    assert!(texts[1].contains(&format!("/issues/{iid}")));
    // On the issue: the plan, then mallory's approval that does not count.
    t.expect_comment(iid);
    t.expect_comment(iid);
}

#[tokio::test]
async fn slack_refusals_are_clear_errors() {
    // The notifier alone: no issue, no bot.
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let cfg = sb.config.notify.clone().unwrap().slack.unwrap();
    let slack = Slack::new(&cfg, &sb.secrets, reqwest::Client::new()).unwrap();
    slack.post("hello").await.unwrap();
    assert_eq!(sb.slack.texts(), ["hello"]);
    sb.slack.refuse_next(1, 404, "no_service");
    match slack.post("again").await {
        Err(e @ NotifyError::Slack { status: 404, .. }) => {
            assert_eq!(
                e.to_string(),
                "Slack refused the notice: HTTP 404 no_service"
            );
        }
        other => panic!("{other:?}"),
    }
    // 429 and 5xx are retried.
    sb.slack.refuse_next(1, 503, "service_unavailable");
    slack.post("third").await.unwrap();
    assert_eq!(sb.slack.texts(), ["hello", "third"]);
    // A wrong URL: Slack's 403, and the URL (a secret) is not in the message.
    let wrong = access_bot::secret::Secrets::from_map([(
        cfg.webhook_env.clone(),
        format!("http://{}/services/T0/B0/wrong", sb.slack_addr),
    )]);
    let e = Slack::new(&cfg, &wrong, reqwest::Client::new())
        .unwrap()
        .post("x")
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Slack refused the notice: HTTP 403 invalid_token"
    );
}

fn seed_leaver(sb: &Sandbox) {
    sb.gitlab
        .lock()
        .add_user("cquinn", "Casey Quinn", "casey.quinn@gitlab.com");
    sb.seed_zendesk(&ZendeskAccount {
        custom_role: Some("Support Engineer".into()),
        last_login_days_ago: Some(3),
        ..account("Casey Quinn", "casey.quinn@gitlab.com", "agent")
    })
    .unwrap();
}

fn repo_files(sb: &Sandbox, branch: &str) -> Vec<String> {
    sb.gitlab
        .lock()
        .project(SUPPORT_TEAM)
        .and_then(|p| p.files.get(branch).map(|f| f.keys().cloned().collect()))
        .unwrap_or_default()
}

#[tokio::test]
async fn offboarding_opens_one_merge_request_deleting_the_file_and_ticks_when_merged() {
    let st = memory_store();
    let mut t = Tester::with_store(crate::test_name!(), st.clone()).await;
    seed_leaver(&t.sb);
    let iid = t.file(&fixtures::offboarding()).await;
    // Opening the merge request fails once, after the commit landed on the branch.
    t.sb.gitlab_knobs
        .fail_next(REPO_MRS, 1, Failure::Status(500));
    let r = t.bot.cycle().await;
    assert!(r.failed());
    // The plan, then the result: could not open the merge request deleting
    // `data/agents/cquinn.yaml`.
    t.expect_comment(iid);
    t.expect_comment(iid);
    // Restart: the branch is found, no second commit, one merge request.
    t.restart_with(st.clone()).await;
    t.run().await;
    let mrs =
        t.sb.gitlab
            .lock()
            .project(SUPPORT_TEAM)
            .unwrap()
            .merge_requests
            .clone();
    assert_eq!(mrs.len(), 1);
    let mr = &mrs[0];
    assert_eq!(mr.source_branch, "access-bot/offboard-cquinn");
    assert_eq!(mr.target_branch, "main");
    assert_eq!(mr.state, "opened");
    assert!(
        mr.description.contains(&format!("/issues/{iid}")),
        "{}",
        mr.description
    );
    let lyle = t.sb.gitlab.lock().user_by_name("lyle").unwrap().id;
    assert_eq!(mr.reviewer_ids, [lyle]);
    assert_eq!(mr.assignee_ids, [lyle]);
    assert!(repo_files(&t.sb, "main").contains(&"data/agents/cquinn.yaml".to_string()));
    assert!(
        !repo_files(&t.sb, "access-bot/offboard-cquinn")
            .contains(&"data/agents/cquinn.yaml".to_string())
    );
    assert!(
        repo_files(&t.sb, "access-bot/offboard-cquinn")
            .contains(&"data/agents/lyle.yaml".to_string()),
        "only that file"
    );
    // Opened merge request 1 (its address).
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    assert!(
        !t.sb.ticked(iid).iter().any(|t| t.contains("Support Team")),
        "not ticked before the merge"
    );

    // Merged by a maintainer: the item is ticked and it is said, once, by
    // the follow-ups (an event of their own: a poll does not look).
    t.sb.gitlab.lock().merge(SUPPORT_TEAM, 1);
    let r = t.bot.cycle().await;
    assert!(r.outcomes.is_empty(), "{r:?}");
    assert!(!t.sb.ticked(iid).iter().any(|t| t.contains("Support Team")));
    let r = t.bot.handle(access_bot::bot::Event::MergeRequests).await;
    assert_eq!(r.outcomes.len(), 1, "{r:?}");
    t.run().await;
    t.run().await;
    assert!(t.sb.ticked(iid).iter().any(|t| t.contains("Support Team")));
    assert!(!repo_files(&t.sb, "main").contains(&"data/agents/cquinn.yaml".to_string()));
    // It was merged.
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    assert_eq!(
        t.sb.gitlab
            .lock()
            .project(SUPPORT_TEAM)
            .unwrap()
            .merge_requests
            .len(),
        1
    );
}

#[tokio::test]
async fn no_file_ticks_nothing_and_a_refusing_repository_is_a_clear_error() {
    let mut t = crate::tester!().await;
    // Robin has a Zendesk account but no Support Team file.
    t.sb.seed_zendesk(&ZendeskAccount {
        last_login_days_ago: Some(3),
        ..account("Robin Kim", "robin.kim@gitlab.com", "agent")
    })
    .unwrap();
    let offboarding = Issue::table(
        "gitlab-employment-bot",
        "Offboarding: Robin Kim",
        &[["Robin Kim", "robin.kim@gitlab.com", "rkim", "mlee"]],
        "- [ ]  @zd-admin-1: Remove the team member from Zendesk Global\n- [ ]  @zd-admin-1: Delete any Support Team files attached to the user (if applicable)\n",
    )
    .labels(&["offboarding"]);
    let offboarding = Issue {
        body: format!("## Team member details\n\n{}", offboarding.body),
        ..offboarding
    };
    let iid = t.file(&offboarding).await;
    t.run().await;
    // The plan and the result: there is no `data/agents/rkim.yaml`.
    t.expect_comment(iid);
    t.expect_comment(iid);
    assert!(!t.sb.ticked(iid).iter().any(|t| t.contains("Support Team")));
    assert!(
        t.sb.gitlab
            .lock()
            .project(SUPPORT_TEAM)
            .unwrap()
            .merge_requests
            .is_empty()
    );

    // The bot may not write to the repository: 403, said on the issue and to ops.
    t.sb.gitlab
        .lock()
        .add_user("cquinn", "Casey Quinn", "casey.quinn@gitlab.com");
    seed_leaver(&t.sb);
    {
        let mut w = t.sb.gitlab.lock();
        let p = w
            .projects
            .iter_mut()
            .find(|p| p.path == SUPPORT_TEAM)
            .unwrap();
        p.writers = Some(Default::default());
    }
    let iid = t.file(&fixtures::offboarding()).await;
    let r = t.run_reports(2).await;
    assert!(r.iter().any(|r| r.failed()));
    // The plan and the result: could not open the merge request, 403.
    t.expect_comment(iid);
    t.expect_comment(iid);
    assert!(
        t.sb.slack
            .texts()
            .iter()
            .any(|t| t.contains("403") && t.contains("support-team"))
    );
    assert!(repo_files(&t.sb, "main").contains(&"data/agents/cquinn.yaml".to_string()));
}

#[tokio::test]
async fn the_daily_digest_counts_the_days_changes_once() {
    let mut t = crate::tester!().await;
    let iid = t.file(&fixtures::role_based_entitlement()).await;
    t.run().await;
    // The plan and the result (as in tests/workflows.rs).
    t.expect_comment(iid);
    t.expect_comment(iid);
    assert!(t.bot.digest().await, "sent");
    assert!(!t.bot.digest().await, "once a day");
    let texts = t.sb.slack.texts();
    assert_eq!(texts.len(), 1, "{texts:?}");
    let text = &texts[0];
    assert!(text.contains("the last 24 hours"), "{text}");
    assert!(text.contains("changes on 1 issues"), "{text}");
    assert!(text.contains("global create_agent"), "{text}");
    assert!(text.contains(&format!("{PROJECT}#1")), "{text}");
}

#[tokio::test]
async fn slack_retries_a_429_and_says_when_it_cannot_be_reached() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let cfg = sb.config.notify.clone().unwrap().slack.unwrap();
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let slack = Slack::new(&cfg, &sb.secrets, http.clone()).unwrap();
    sb.slack_knobs.fail_next(
        "POST",
        1,
        Failure::TooMany {
            retry_after: Some(0),
        },
    );
    slack.post("after a 429").await.unwrap();
    assert_eq!(sb.slack.texts(), ["after a 429"]);
    // No answer to any of the three attempts: "timed out", never the URL.
    sb.slack_knobs.fail_next("POST", 3, Failure::Hang);
    let e = slack.post("lost").await.unwrap_err();
    assert_eq!(e.to_string(), "Slack could not be reached: timed out");
    // Nobody listening: "connection failed".
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = access_bot::secret::Secrets::from_map([(
        cfg.webhook_env.clone(),
        format!("http://{}/services/T0/B0/x", closed.local_addr().unwrap()),
    )]);
    drop(closed);
    let e = Slack::new(&cfg, &nowhere, http)
        .unwrap()
        .post("x")
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Slack could not be reached: connection failed"
    );
    assert_eq!(sb.slack.texts(), ["after a 429"]);
}
