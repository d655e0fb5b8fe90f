//! Beyond the issue, end to end against the sandbox: the People team's
//! e-mail (SMTP sink), ops notices (fake Slack webhook), and the Support Team
//! file merge request (sandbox repository). Each delivery, its exactly-once
//! behaviour across a crash and restart, and a clear error on refusal.

use std::sync::Arc;

use access_bot::bot::{Bot, Outcome};
use access_bot::demo::bodies;
use access_bot::notify::{NotifyError, Slack};
use access_bot::sandbox::faults::Failure;
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::scenario::ZendeskAccount;
use access_bot::sandbox::{PROJECT, Ports, SUPPORT_TEAM, Sandbox};
use access_bot::store::Store;

const REPO_MRS: &str =
    "POST /api/v4/projects/gitlab-support-readiness%2Fsupport-team/merge_requests";

async fn file(sb: &Sandbox, name: &str) -> u64 {
    let (_, author, title, labels, body) = bodies()
        .into_iter()
        .find(|b| b.0 == name)
        .expect("demo body");
    sb.file_issue(author, title, &labels, &body).await.unwrap()
}

fn store() -> Arc<Store> {
    Arc::new(Store::open(std::path::Path::new(":memory:")).unwrap())
}

async fn bot(sb: &Sandbox, store: &Arc<Store>) -> Bot {
    sb.bot_with_store(store.clone()).await.unwrap()
}

fn bodies_of(sb: &Sandbox, iid: u64) -> Vec<String> {
    sb.bot_comments(iid).into_iter().map(|c| c.body).collect()
}

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
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let st = store();
    let b = bot(&sb, &st).await;
    let iid = file(&sb, "light agent, Zendesk US Federal").await;
    // The plan (which asks the People team on the issue) cannot be posted.
    sb.gitlab_knobs
        .fail_next(&notes_route(iid), 1, Failure::Status(500));
    let r = b.cycle().await;
    assert!(r.failed(), "the cycle reports the failed comment");
    assert!(
        sb.smtp.messages().is_empty(),
        "no e-mail without its record"
    );
    assert!(bodies_of(&sb, iid).is_empty());

    // Restart (a new process, same state database).
    drop(b);
    let b = bot(&sb, &st).await;
    run_until_quiet(&b, 3).await;
    let mails = sb.smtp.messages();
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
    let notes = bodies_of(&sb, iid);
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(notes[0].contains("citizenship"), "{}", notes[0]);
    assert!(notes[1].contains("E-mailing the verification request"));
    assert!(notes[2].contains("E-mailed the verification request"));
    assert!(notes[2].contains("people-connect@gitlab.com"));
}

#[tokio::test]
async fn no_email_goes_out_before_the_issue_says_it_is_being_sent() {
    // With the database kept and with it lost: the announcement fails, so
    // nothing is sent; the next cycle announces and sends, once.
    for lose_db in [false, true] {
        let sb = Sandbox::start(Ports::default()).await.unwrap();
        let st = store();
        let b = bot(&sb, &st).await;
        let iid = file(&sb, "light agent, Zendesk US Federal").await;
        sb.gitlab_knobs
            .fail_after(&notes_route(iid), 1, 1, Failure::Status(500));
        assert!(b.cycle().await.failed());
        assert!(sb.smtp.messages().is_empty(), "lose_db={lose_db}");
        drop(b);
        // A lost database: a new process, a new store.
        let st = if lose_db {
            drop(st);
            store()
        } else {
            st
        };
        let b = bot(&sb, &st).await;
        run_until_quiet(&b, 3).await;
        assert_eq!(
            sb.smtp.messages().len(),
            1,
            "lose_db={lose_db} {:?}",
            bodies_of(&sb, iid)
        );
        let notes = bodies_of(&sb, iid);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[2].contains("E-mailed the verification request"));
    }
}

#[tokio::test]
async fn an_email_whose_note_failed_is_not_sent_again_after_a_restart() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let st = store();
    let b = bot(&sb, &st).await;
    let iid = file(&sb, "light agent, Zendesk US Federal").await;
    // The plan and the announcement go up, the e-mail goes out, the note
    // saying so fails.
    sb.gitlab_knobs
        .fail_after(&notes_route(iid), 2, 1, Failure::Status(500));
    let r = b.cycle().await;
    assert!(r.failed(), "{r:?}");
    assert_eq!(sb.smtp.messages().len(), 1);
    drop(b);
    let b = bot(&sb, &st).await;
    run_until_quiet(&b, 3).await;
    assert_eq!(sb.smtp.messages().len(), 1, "not sent again");
    let notes = bodies_of(&sb, iid);
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(notes[2].contains("E-mailed the verification request"));
    assert!(!notes[2].contains("final answer"), "{}", notes[2]);
}

#[tokio::test]
async fn a_lost_final_answer_counts_as_sent_and_says_so() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let st = store();
    sb.smtp.lock().lose_answer_next = 1;
    let b = bot(&sb, &st).await;
    let iid = file(&sb, "light agent, Zendesk US Federal").await;
    run_until_quiet(&b, 3).await;
    drop(b);
    let b = bot(&sb, &st).await;
    run_until_quiet(&b, 3).await;
    assert_eq!(sb.smtp.messages().len(), 1, "never sent twice");
    let notes = bodies_of(&sb, iid);
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(
        notes[2].contains("its final answer never reached the bot"),
        "{}",
        notes[2]
    );
}

#[tokio::test]
async fn with_the_database_lost_after_the_announcement_nothing_is_sent_twice() {
    // The issue says the e-mail was being handed over, and the bot's own
    // record of how far it got is gone: it may have gone, so it is not sent
    // again, and the issue says so. Whether it went (note lost after the
    // send) or not (killed before the send, here: the server refused).
    for sent in [true, false] {
        let sb = Sandbox::start(Ports::default()).await.unwrap();
        let b = bot(&sb, &store()).await;
        let iid = file(&sb, "light agent, Zendesk US Federal").await;
        if sent {
            sb.gitlab_knobs
                .fail_after(&notes_route(iid), 2, 1, Failure::Status(500));
        } else {
            sb.smtp.refuse_next(1, "451 4.3.0 try later");
            // ... and the note saying so is lost too.
            sb.gitlab_knobs
                .fail_after(&notes_route(iid), 2, 1, Failure::Status(500));
        }
        b.cycle().await;
        drop(b);
        let b = bot(&sb, &store()).await;
        run_until_quiet(&b, 3).await;
        assert_eq!(message_ids(&sb).len(), usize::from(sent), "sent={sent}");
        let notes = bodies_of(&sb, iid);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes[2].contains("cannot tell whether it went"),
            "{}",
            notes[2]
        );
    }
}

#[tokio::test]
async fn a_refusing_smtp_server_is_said_on_the_issue_and_retried() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let b = sb.bot().await.unwrap();
    sb.smtp.refuse_next(1, "550 5.7.1 Relaying denied");
    let iid = file(&sb, "light agent, Zendesk US Federal").await;
    let r = b.cycle().await;
    assert!(
        matches!(r.outcomes[0].2, Outcome::Failed(ref e) if e.contains("550")),
        "{r:?}"
    );
    assert!(sb.smtp.messages().is_empty());
    let notes = bodies_of(&sb, iid);
    assert_eq!(
        notes.len(),
        3,
        "the plan, the announcement, then the refusal: {notes:?}"
    );
    assert!(
        notes[2].contains("Could not e-mail the verification request"),
        "{}",
        notes[2]
    );
    assert!(notes[2].contains("Relaying denied"), "{}", notes[2]);
    // Next cycle (the issue is on the retry list): sent, and said once.
    run_until_quiet(&b, 3).await;
    assert_eq!(sb.smtp.messages().len(), 1);
    let notes = bodies_of(&sb, iid);
    assert_eq!(notes.len(), 4);
    assert!(notes[3].contains("E-mailed the verification request"));
}

#[tokio::test]
async fn an_outage_makes_one_notice_and_the_next_one_counts_the_rest() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let b = sb.bot().await.unwrap();
    // The bot's token is revoked: every poll fails the same way.
    sb.gitlab_knobs.fail_next(
        "GET /api/v4/projects/support%2Faccess-requests/issues",
        5,
        Failure::Status(401),
    );
    for _ in 0..5 {
        assert!(b.cycle().await.failed());
    }
    let texts = sb.slack.texts();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].contains("configuration error"), "{}", texts[0]);
    assert!(texts[0].contains("401"), "{}", texts[0]);
    let ops_mail = sb
        .smtp
        .messages()
        .into_iter()
        .filter(|m| m.to == ["support-ops@gitlab.com"])
        .count();
    assert_eq!(ops_mail, 1, "the same single notice by e-mail");

    // A different problem: told, with the four held back counted.
    let iid = file(&sb, "security: self-approval").await;
    run_until_quiet(&b, 3).await;
    sb.add_label("mallory", iid, "AR-Approval::Manager Approved")
        .await
        .unwrap();
    run_until_quiet(&b, 3).await;
    let texts = sb.slack.texts();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[1].contains("security reason"), "{}", texts[1]);
    assert!(
        texts[1].contains("4 similar or further notices were held back"),
        "{}",
        texts[1]
    );
    assert!(texts[1].contains(&format!("/issues/{iid}")));
}

#[tokio::test]
async fn slack_refusals_are_clear_errors() {
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

async fn seed_leaver(sb: &Sandbox) {
    sb.gitlab
        .lock()
        .add_user("cquinn", "Casey Quinn", "casey.quinn@gitlab.com");
    sb.seed_zendesk(&ZendeskAccount {
        instance: "global".into(),
        name: "Casey Quinn".into(),
        email: "casey.quinn@gitlab.com".into(),
        role: "agent".into(),
        custom_role: Some("Support Engineer".into()),
        groups: vec![],
        tags: vec![],
        user_fields: Default::default(),
        open_tickets: 0,
        suspended: false,
        last_login_days_ago: Some(3),
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
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    seed_leaver(&sb).await;
    let st = store();
    let b = bot(&sb, &st).await;
    let iid = file(&sb, "offboarding").await;
    // Opening the merge request fails once, after the commit landed on the branch.
    sb.gitlab_knobs.fail_next(REPO_MRS, 1, Failure::Status(500));
    let r = b.cycle().await;
    assert!(r.failed());
    let notes = bodies_of(&sb, iid);
    assert!(
        notes
            .iter()
            .any(|n| n
                .contains("could not open the merge request deleting `data/agents/cquinn.yaml`")),
        "{notes:?}"
    );
    // Restart: the branch is found, no second commit, one merge request.
    drop(b);
    let b = bot(&sb, &st).await;
    run_until_quiet(&b, 3).await;
    let mrs = sb
        .gitlab
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
    let lyle = sb.gitlab.lock().user_by_name("lyle").unwrap().id;
    assert_eq!(mr.reviewer_ids, [lyle]);
    assert_eq!(mr.assignee_ids, [lyle]);
    assert!(repo_files(&sb, "main").contains(&"data/agents/cquinn.yaml".to_string()));
    assert!(
        !repo_files(&sb, "access-bot/offboard-cquinn")
            .contains(&"data/agents/cquinn.yaml".to_string())
    );
    assert!(
        repo_files(&sb, "access-bot/offboard-cquinn")
            .contains(&"data/agents/lyle.yaml".to_string()),
        "only that file"
    );
    let notes = bodies_of(&sb, iid);
    assert!(notes.iter().any(|n| n.contains(
        "opened https://gitlab.sandbox/gitlab-support-readiness/support-team/-/merge_requests/1"
    )));
    assert!(
        !sb.ticked(iid).iter().any(|t| t.contains("Support Team")),
        "not ticked before the merge"
    );

    // Merged by a maintainer: the item is ticked and it is said, once.
    sb.gitlab.lock().merge(SUPPORT_TEAM, 1);
    run_until_quiet(&b, 3).await;
    run_until_quiet(&b, 3).await;
    assert!(sb.ticked(iid).iter().any(|t| t.contains("Support Team")));
    assert!(!repo_files(&sb, "main").contains(&"data/agents/cquinn.yaml".to_string()));
    let merged: Vec<String> = bodies_of(&sb, iid)
        .into_iter()
        .filter(|n| n.contains("was merged"))
        .collect();
    assert_eq!(merged.len(), 1);
    assert_eq!(
        sb.gitlab
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
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    // Robin has a Zendesk account but no Support Team file.
    sb.seed_zendesk(&ZendeskAccount {
        instance: "global".into(),
        name: "Robin Kim".into(),
        email: "robin.kim@gitlab.com".into(),
        role: "agent".into(),
        custom_role: None,
        groups: vec![],
        tags: vec![],
        user_fields: Default::default(),
        open_tickets: 0,
        suspended: false,
        last_login_days_ago: Some(3),
    })
    .unwrap();
    let b = sb.bot().await.unwrap();
    let body = "## Team member details\n\n| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n| Robin Kim | robin.kim@gitlab.com | @rkim | @mlee |\n\n- [ ]  @zd-admin-1: Remove the team member from Zendesk Global\n- [ ]  @zd-admin-1: Delete any Support Team files attached to the user (if applicable)\n";
    let iid = sb
        .file_issue(
            "gitlab-employment-bot",
            "Offboarding: Robin Kim",
            &["offboarding"],
            body,
        )
        .await
        .unwrap();
    run_until_quiet(&b, 3).await;
    let notes = bodies_of(&sb, iid).join("\n");
    assert!(
        notes.contains("there is no `data/agents/rkim.yaml`"),
        "{notes}"
    );
    assert!(!sb.ticked(iid).iter().any(|t| t.contains("Support Team")));
    assert!(
        sb.gitlab
            .lock()
            .project(SUPPORT_TEAM)
            .unwrap()
            .merge_requests
            .is_empty()
    );

    // The bot may not write to the repository: 403, said on the issue and to ops.
    sb.gitlab
        .lock()
        .add_user("cquinn", "Casey Quinn", "casey.quinn@gitlab.com");
    seed_leaver(&sb).await;
    {
        let mut w = sb.gitlab.lock();
        let p = w
            .projects
            .iter_mut()
            .find(|p| p.path == SUPPORT_TEAM)
            .unwrap();
        p.writers = Some(Default::default());
    }
    let iid = file(&sb, "offboarding").await;
    let r = run_until_quiet(&b, 2).await;
    assert!(r.iter().any(|r| r.failed()));
    let notes = bodies_of(&sb, iid).join("\n");
    assert!(
        notes.contains("could not open the merge request"),
        "{notes}"
    );
    assert!(notes.contains("403"), "{notes}");
    assert!(
        sb.slack
            .texts()
            .iter()
            .any(|t| t.contains("403") && t.contains("support-team"))
    );
    assert!(repo_files(&sb, "main").contains(&"data/agents/cquinn.yaml".to_string()));
}

#[tokio::test]
async fn the_daily_digest_counts_the_days_changes_once() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let b = sb.bot().await.unwrap();
    file(&sb, "role-based entitlement").await;
    run_until_quiet(&b, 3).await;
    assert!(b.digest().await, "sent");
    assert!(!b.digest().await, "once a day");
    let texts = sb.slack.texts();
    assert_eq!(texts.len(), 1, "{texts:?}");
    let t = &texts[0];
    assert!(t.contains("the last 24 hours"), "{t}");
    assert!(t.contains("changes on 1 issues"), "{t}");
    assert!(t.contains("global create_agent"), "{t}");
    assert!(t.contains(&format!("{PROJECT}#1")), "{t}");
}
