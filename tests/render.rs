//! Snapshots of rendered comments: the templates with representative data,
//! and real comments the bot wrote in the sandbox (markers included), so a
//! change to any text the bot writes shows up in review.

use access_bot::demo::bodies;
use access_bot::render::Templates;
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::{Ports, Sandbox};
use serde_json::json;

fn t() -> Templates {
    Templates::load(None).unwrap()
}

#[test]
fn seat_review_issue() {
    let t = t();
    let candidates = [
        json!({"mark": "x", "text": "Ann Idle (ann.idle@gitlab.com): agent, last login 2026-07-26, idle 120 days, 1,380 USD a year"}),
        json!({"mark": " ", "text": "Ben Never (ben.never@gitlab.com): agent (Support Engineer) (suspended), last login never, 1,380 USD a year"}),
        json!({"mark": "~", "text": "Cy Keep (cy.keep@gitlab.com): admin, last login 2026-01-02, idle 325 days, 1,380 USD a year"}),
    ];
    insta::assert_snapshot!(
        t.render(
            "seat_review.md",
            &json!({
                "instance": "Zendesk Global", "instance_key": "global", "period": "2026-11",
                "idle_days": 60, "reclaim_to": "light agent", "reviewers": "`@lyle`, `@jason`",
                "candidates": candidates, "open_count": 1, "open_total": "1,380 USD",
                "price": "115 USD", "checked_at": "2026-11-23 06:00 UTC",
            }),
        )
        .unwrap()
    );
    insta::assert_snapshot!(
        t.render(
            "seat_review_item.md",
            &json!({"c": {"name": "Ann | Idle", "email": "ann.idle@gitlab.com", "role": "agent",
                          "suspended": false, "last_login": "never", "days_idle": null},
                    "cost": "1,380 USD"}),
        )
        .unwrap()
    );
}

#[test]
fn seat_review_comments_of_every_kind() {
    let t = t();
    let out: Vec<String> = [
        ("reclaimed", json!({"email": "a@gitlab.com", "was": "agent", "now": "agent (Light Agent)", "by": "lyle"})),
        ("already", json!({"email": "a@gitlab.com", "now": "end-user"})),
        ("kept", json!({"email": "a@gitlab.com", "why": "2 open tickets are assigned to them"})),
        ("refused", json!({"email": "a@gitlab.com", "why": "it was ticked by `@jdoe`, who is not one of the reviewers"})),
        ("unknown", json!({"text": "Cat (cat@gitlab.com)"})),
        ("failed", json!({"email": "a@gitlab.com", "error": "Zendesk global: HTTP 500"})),
    ]
    .into_iter()
    .map(|(kind, r)| t.render("seat_reclaimed.md", &json!({"kind": kind, "r": r})).unwrap())
    .collect();
    insta::assert_snapshot!(out.join("---\n"));
}

#[test]
fn beyond_the_issue_texts() {
    let t = t();
    let mut out: Vec<String> = ["opened", "none", "merged", "closed", "failed"]
        .into_iter()
        .map(|kind| {
            t.render(
                "support_team.md",
                &json!({"kind": kind, "path": "data/agents/cquinn.yaml", "repo": "gitlab-support-readiness/support-team",
                        "url": "https://gitlab.example/-/merge_requests/1", "username": "cquinn", "error": "GitLab: forbidden (403)"}),
            )
            .unwrap()
        })
        .collect();
    out.push(
        t.render(
            "support_team_mr.md",
            &json!({"path": "data/agents/cquinn.yaml", "username": "cquinn", "issue_url": "https://gitlab.example/issues/7"}),
        )
        .unwrap(),
    );
    out.push(
        t.render(
            "citizenship_email.txt",
            &json!({"name": "Bo Li", "issue_url": "https://gitlab.example/issues/4"}),
        )
        .unwrap(),
    );
    out.push(
        t.render(
            "email_sent.md",
            &json!({"to": "people-connect@gitlab.com", "subject": "US Citizenship Verification Request"}),
        )
        .unwrap(),
    );
    out.push(
        t.render(
            "email_sending.md",
            &json!({"to": "people-connect@gitlab.com", "subject": "US Citizenship Verification Request"}),
        )
        .unwrap(),
    );
    for (answer_lost, answered, uncertain) in [
        (Some("connection reset"), false, false),
        (None, true, false),
        (None, false, true),
    ] {
        out.push(
            t.render(
                "email_sent.md",
                &json!({"to": "people-connect@gitlab.com", "subject": "US Citizenship Verification Request",
                        "answer_lost": answer_lost, "answered": answered, "uncertain": uncertain,
                        "verifiers": ["@people-connect-1", "@people-connect-2"]}),
            )
            .unwrap(),
        );
    }
    out.push(
        t.render(
            "email_failed.md",
            &json!({"to": "people-connect@gitlab.com", "error": "the SMTP server refused the message: permanent error (550): 5.7.1 Relaying denied (permanent)"}),
        )
        .unwrap(),
    );
    out.push(
        t.render(
            "ops_notice.txt",
            &json!({"title": "step failed", "detail": "#4: create the account failed", "url": "https://gitlab.example/issues/4", "suppressed": 3}),
        )
        .unwrap(),
    );
    out.push(
        t.render(
            "digest.txt",
            &json!({"date": "2026-11-23", "changes": 3, "issues": ["support/access-requests#1"],
                    "counts": [{"action": "global create_agent", "outcome": "ok", "n": 1},
                               {"action": "global add_google_member", "outcome": "ok", "n": 2}]}),
        )
        .unwrap(),
    );
    insta::assert_snapshot!(out.join("---\n"));
}

/// The comments the bot really wrote for a special request: the plan, then
/// (after both approvals) the result.
#[tokio::test]
async fn special_request_comments_as_written() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let bot = sb.bot().await.unwrap();
    let (_, author, title, labels, body) = bodies()
        .into_iter()
        .find(|b| b.0 == "special request")
        .unwrap();
    let iid = sb.file_issue(author, title, &labels, &body).await.unwrap();
    run_until_quiet(&bot, 3).await;
    sb.add_label("mlee", iid, "AR-Approval::Manager Approved")
        .await
        .unwrap();
    sb.add_label("lyle", iid, "Zendesk::System Owner Approved")
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    // The sandbox's marker key is new on every run: the MAC is redacted.
    let mac = regex::Regex::new("mac=[0-9a-f]{64}").unwrap();
    let comments: Vec<String> = sb
        .bot_comments(iid)
        .into_iter()
        .map(|c| mac.replace_all(&c.body, "mac=<mac>").into_owned())
        .collect();
    insta::assert_snapshot!(comments.join("\n=====\n"));
}
