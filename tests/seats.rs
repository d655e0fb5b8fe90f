//! Idle-seat review end to end against the sandbox over HTTP: the listing,
//! the review issue (created, then updated in place), reclaim by an
//! authorized reviewer's tick, refusal of anyone else's, and closing.
//!
//! Every bot comment on a review is read: those for people by snapshot
//! (`Tester::expect_comment`), the bot's records of the listed lines
//! (`seat-list` notes) counted.

mod common;

use access_bot::bot::Outcome;
use access_bot::cli::{SeatFormat, render_seat_reports};
use access_bot::sandbox::Sandbox;
use access_bot::sandbox::faults::Failure;
use access_bot::sandbox::scenario::ZendeskAccount;
use common::tester::Tester;

/// The kind of the notes that record a review's lines.
const SEAT_LIST: &str = "seat-list";

fn account(name: &str, email: &str, role: &str, login_days_ago: Option<i64>) -> ZendeskAccount {
    ZendeskAccount {
        instance: "global".into(),
        name: name.into(),
        email: email.into(),
        role: role.into(),
        custom_role: None,
        groups: vec![],
        tags: vec![],
        user_fields: Default::default(),
        open_tickets: 0,
        suspended: false,
        last_login_days_ago: login_days_ago,
    }
}

/// Global: two idle agents, one idle admin who is exempt by tag, one active
/// agent, one idle light agent (free), one end-user; an idle agent whose
/// assigned ticket changed last week. The bot starts after the seeding.
async fn seeded(name: &str) -> Tester {
    let mut t = Tester::start(name, Default::default()).await;
    let sb = &t.sb;
    everyone_active(sb);
    for a in [
        account("Ann Idle", "ann.idle@gitlab.com", "agent", Some(120)),
        account("Ben Never", "ben.never@gitlab.com", "agent", None),
        account("Cat Active", "cat.active@gitlab.com", "agent", Some(3)),
        account(
            "Dan Light",
            "dan.light@gitlab.com",
            "light-agent",
            Some(300),
        ),
        account("Eve User", "eve.user@gitlab.com", "end-user", Some(300)),
    ] {
        sb.seed_zendesk(&a).unwrap();
    }
    let mut exempt = account("Fay Boss", "fay.boss@gitlab.com", "admin", Some(200));
    exempt.tags = vec!["seat_exempt".into()];
    sb.seed_zendesk(&exempt).unwrap();
    let busy = sb
        .seed_zendesk(&account(
            "Gus Busy",
            "gus.busy@gitlab.com",
            "agent",
            Some(100),
        ))
        .unwrap();
    {
        let mut w = sb.zd("global");
        let t = w.add_ticket(Some(busy), None, "pending");
        if let Some(t) = w.tickets.get_mut(&t) {
            t.updated_at = chrono::Utc::now() - chrono::Duration::days(7);
        }
    }
    t.restart().await;
    t
}

/// The default world's agents (managers) logged in today.
fn everyone_active(sb: &Sandbox) {
    for u in sb.zd("global").users.values_mut() {
        u.last_login_at = Some(chrono::Utc::now());
    }
}

fn review_iid(sb: &Sandbox) -> u64 {
    let g = sb.gitlab.lock();
    let p = g.project(access_bot::sandbox::PROJECT).unwrap();
    let found: Vec<u64> = p
        .issues
        .iter()
        .filter(|i| i.labels.iter().any(|l| l == "zendesk-seat-review"))
        .map(|i| i.iid)
        .collect();
    assert_eq!(found.len(), 1, "exactly one review issue: {found:?}");
    found[0]
}

fn tick(desc: &str, email: &str, mark: char) -> String {
    desc.lines()
        .map(|l| {
            if l.starts_with("- [ ] ") && l.contains(&format!("({email})")) {
                format!("- [{mark}] {}", &l[6..])
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn role(sb: &Sandbox, email: &str) -> (String, Option<u64>) {
    let w = sb.zd("global");
    let u = w.user_by_email(email).unwrap();
    (u.role.clone(), u.custom_role_id)
}

#[tokio::test]
async fn dry_run_lists_idle_paid_seats_and_touches_nothing() {
    let mut t = seeded(crate::test_name!()).await;
    t.bot.rehearse().unwrap();
    t.sb.clear_logs();
    let reports = t.bot.audit_seats(Some("global")).await.unwrap();
    let r = &reports[0];
    let emails: Vec<&str> = r.candidates.iter().map(|c| c.email.as_str()).collect();
    assert_eq!(emails, ["ben.never@gitlab.com", "ann.idle@gitlab.com"]);
    assert_eq!(r.active_by_tickets, 1, "Gus worked a ticket last week");
    assert_eq!(r.yearly_total, 2.0 * 115.0 * 12.0);
    let gitlab_writes = t.sb.gitlab_knobs.writes();
    assert!(gitlab_writes.is_empty(), "dry run: {gitlab_writes:?}");
    // What it would have written: the month's review issue listing both,
    // and the note on it that records the lines.
    let would = t.bot.rehearsal_rest();
    assert_eq!(would.len(), 2, "{would:?}");
    assert!(
        would[0].contains(": open new issue 0 \"Zendesk seat review"),
        "{would:?}"
    );
    assert!(would[1].contains(", on new issue 0: comment"), "{would:?}");
    for w in &would {
        assert!(
            w.contains("ben.never@gitlab.com") && w.contains("ann.idle@gitlab.com"),
            "{would:?}"
        );
    }
    let text = render_seat_reports(&reports, SeatFormat::Text);
    assert!(text.contains("2 idle"), "{text}");
    assert!(text.contains("2,760 USD"), "{text}");
    let csv = render_seat_reports(&reports, SeatFormat::Csv);
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.contains("global,Ann Idle,ann.idle@gitlab.com,agent,false,"));
    let json: serde_json::Value =
        serde_json::from_str(&render_seat_reports(&reports, SeatFormat::Json)).unwrap();
    assert_eq!(json[0]["candidates"].as_array().unwrap().len(), 2);
    assert!(matches!(
        t.bot.audit_seats(Some("nowhere")).await,
        Err(access_bot::bot::SeatError::UnknownInstance(_))
    ));
}

#[tokio::test]
async fn review_issue_is_opened_updated_in_place_and_reclaims_on_a_reviewers_tick() {
    let mut t = seeded(crate::test_name!()).await;
    t.bot.audit_seats(Some("global")).await.unwrap();
    let iid = review_iid(&t.sb);
    let desc = t.sb.description(iid);
    assert!(
        desc.contains("Zendesk seat review: Zendesk Global"),
        "{desc}"
    );
    assert!(desc.contains("(ann.idle@gitlab.com): agent, last login"));
    assert!(desc.contains("(ben.never@gitlab.com): agent, last login never"));
    assert!(desc.contains("1,380 USD a year"));
    assert!(desc.contains("reclaiming them would save 2,760 USD a year"));
    assert!(
        !desc.contains("cat.active") && !desc.contains("dan.light") && !desc.contains("fay.boss")
    );

    // A second run the same month updates the same issue, adding a new idle seat.
    t.sb.seed_zendesk(&account("Hal New", "hal.new@gitlab.com", "agent", Some(90)))
        .unwrap();
    t.bot.audit_seats(Some("global")).await.unwrap();
    assert_eq!(
        review_iid(&t.sb),
        iid,
        "updated in place, not a second issue"
    );
    assert!(t.sb.description(iid).contains("hal.new@gitlab.com"));

    // Someone who is not a reviewer ticks Ann: nothing happens but a comment.
    let d = t.sb.description(iid);
    t.edit("jdoe", iid, &tick(&d, "ann.idle@gitlab.com", 'x'))
        .await;
    t.run().await;
    assert_eq!(role(&t.sb, "ann.idle@gitlab.com").0, "agent");
    assert_eq!(role(&t.sb, "ann.idle@gitlab.com").1, None);
    // Ticked by `@jdoe`, who is not one of the reviewers.
    t.read_records(iid, SEAT_LIST);
    t.expect_comment(iid);
    t.expect_no_comment(iid);

    // The reviewer unticks and ticks it again, and ticks Ben: both reclaimed (light agent).
    let d = t.sb.description(iid).replace("- [x] ", "- [ ] ");
    t.edit("lyle", iid, &d).await;
    let d = tick(&t.sb.description(iid), "ann.idle@gitlab.com", 'x');
    let d = tick(&d, "ben.never@gitlab.com", 'x');
    t.edit("lyle", iid, &d).await;
    let reports = t.run_reports(3).await;
    assert!(reports.iter().all(|r| !r.failed()));
    let light = t.sb.zd("global").light_agent_role();
    assert_eq!(role(&t.sb, "ann.idle@gitlab.com"), ("agent".into(), light));
    assert_eq!(role(&t.sb, "ben.never@gitlab.com"), ("agent".into(), light));
    // One new comment for the cycle: Ann's seat reclaimed, now agent (Agent
    // léger), ticked by `@lyle`; and Ben's.
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    t.expect_state(iid, "opened"); // Hal is still undecided

    // The audit trail answers who reclaimed Ann's seat.
    let rows = t
        .bot
        .store
        .audit_rows(&access_bot::store::AuditQuery {
            subject: Some("ann.idle@gitlab.com".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].action, "reclaim_seat");
    assert_eq!(rows[0].approvers, "seat review ticked by @lyle");

    // A later monthly run keeps the decided lines exactly as they are.
    t.bot.audit_seats(Some("global")).await.unwrap();
    let d = t.sb.description(iid);
    assert!(d.contains("- [x] `Ann Idle`"), "{d}");
    assert!(d.contains("- [x] `Ben Never`"), "{d}");

    // Marking Hal `[~]` (keep) closes the review; nothing more is written.
    let d = tick(&t.sb.description(iid), "hal.new@gitlab.com", '~');
    t.edit("jason", iid, &d).await;
    t.run().await;
    t.expect_state(iid, "closed");
    assert_eq!(role(&t.sb, "hal.new@gitlab.com"), ("agent".into(), None));
    t.run().await;
    assert_eq!(
        t.read_records(iid, SEAT_LIST).len(),
        2,
        "one record per listing: the first, and Hal"
    );
    t.expect_no_comment(iid); // no duplicate comments
}

#[tokio::test]
async fn a_line_altered_by_someone_else_or_a_returning_agent_is_not_reclaimed() {
    let mut t = seeded(crate::test_name!()).await;
    t.bot.audit_seats(Some("global")).await.unwrap();
    let iid = review_iid(&t.sb);

    // Someone rewrites Ann's line to point at Cat (active), then a reviewer ticks it.
    let d = t.sb.description(iid).replace(
        "`Ann Idle` (ann.idle@gitlab.com)",
        "`Cat Active` (cat.active@gitlab.com)",
    );
    t.edit("jdoe", iid, &d).await;
    let d = tick(&t.sb.description(iid), "cat.active@gitlab.com", 'x');
    t.edit("lyle", iid, &d).await;

    // Ben logs in after the review listed him, then the reviewer ticks him.
    t.sb.zd("global")
        .user_mut_by_email("ben.never@gitlab.com")
        .unwrap()
        .last_login_at = Some(chrono::Utc::now() + chrono::Duration::seconds(1));
    let d = tick(&t.sb.description(iid), "ben.never@gitlab.com", 'x');
    t.edit("lyle", iid, &d).await;
    let reports = t.run_reports(3).await;
    assert!(reports.iter().all(|r| !r.failed()));

    assert_eq!(role(&t.sb, "cat.active@gitlab.com"), ("agent".into(), None));
    assert_eq!(role(&t.sb, "ben.never@gitlab.com"), ("agent".into(), None));
    // Cat's line is ticked, but it is not a line the bot wrote; Ben is not
    // reclaimed: he logged in since.
    t.read_records(iid, SEAT_LIST);
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    t.expect_state(iid, "opened");
    assert!(
        t.bot
            .store
            .audit_rows(&Default::default())
            .unwrap()
            .iter()
            .all(|r| r.action != "reclaim_seat"),
        "nothing reclaimed, nothing recorded as reclaimed"
    );
}

#[tokio::test]
async fn nothing_idle_opens_no_issue_and_a_crash_after_opening_finds_the_same_issue() {
    let mut t = Tester::start(crate::test_name!(), Default::default()).await;
    everyone_active(&t.sb);
    t.sb.seed_zendesk(&account(
        "Cat Active",
        "cat.active@gitlab.com",
        "agent",
        Some(3),
    ))
    .unwrap();
    t.restart().await;
    let r = t.bot.audit_seats(Some("global")).await.unwrap();
    assert!(r[0].candidates.is_empty());
    assert!(r[0].issue_url.is_none());

    t.sb.seed_zendesk(&account(
        "Ann Idle",
        "ann.idle@gitlab.com",
        "agent",
        Some(120),
    ))
    .unwrap();
    t.bot.audit_seats(Some("global")).await.unwrap();
    let iid = review_iid(&t.sb);
    // A fresh state database (the record of the issue lost): found again by its marker.
    t.restart().await;
    let r = t.bot.audit_seats(Some("global")).await.unwrap();
    assert_eq!(review_iid(&t.sb), iid);
    assert!(
        r[0].issue_url
            .as_deref()
            .unwrap_or("")
            .ends_with(&format!("/{iid}"))
    );
    let outcome = t.bot.process(access_bot::sandbox::PROJECT, iid).await;
    assert_eq!(outcome, Outcome::Waiting);
    // The lines were recorded once, and nothing said.
    assert_eq!(t.read_records(iid, SEAT_LIST).len(), 1);
    t.expect_no_comment(iid);
}

#[tokio::test]
async fn the_review_lives_on_the_issue_a_bot_with_an_empty_store_carries_on() {
    let mut t = seeded(crate::test_name!()).await;
    t.bot.audit_seats(Some("global")).await.unwrap();
    let iid = review_iid(&t.sb);
    // A reviewer ticks Ann; someone adds a line of their own and it is ticked too.
    let d = tick(&t.sb.description(iid), "ann.idle@gitlab.com", 'x');
    let forged =
        "- [x] `Cat Active` (cat.active@gitlab.com): agent, last login never, 1,380 USD a year\n";
    t.edit("lyle", iid, &format!("{d}\n{forged}")).await;
    // A new bot, with nothing in its store.
    t.restart().await;
    t.run().await;
    let light = t.sb.zd("global").light_agent_role();
    assert_eq!(role(&t.sb, "ann.idle@gitlab.com"), ("agent".into(), light));
    assert_eq!(
        role(&t.sb, "cat.active@gitlab.com"),
        ("agent".into(), None),
        "a line the bot did not record is never acted on"
    );
    // Ann's seat reclaimed; Cat's line is not one the bot wrote.
    t.read_records(iid, SEAT_LIST);
    t.expect_comment(iid);
    t.expect_no_comment(iid);
    // Another new bot's monthly run: the same issue, decided lines kept, no
    // second record of the same lines.
    t.restart().await;
    t.bot.audit_seats(Some("global")).await.unwrap();
    assert_eq!(review_iid(&t.sb), iid);
    let d = t.sb.description(iid);
    assert!(d.contains("- [x] `Ann Idle`"), "{d}");
    assert!(d.contains("ben.never@gitlab.com"), "{d}");
    assert_eq!(
        t.read_records(iid, SEAT_LIST).len(),
        1,
        "the lines were recorded once"
    );
    t.run().await;
    // Ann's seat was reclaimed once.
    t.expect_no_comment(iid);
}
/// Ticket activity is read in pages of tickets, not asked per agent: a review
/// of hundreds of idle agents costs a handful of calls, and its verdicts are
/// those of the per-agent reading (an open ticket changed since the idle
/// threshold keeps the seat; a closed one or an old one does not).
#[tokio::test]
async fn seat_review_costs_pages_not_one_call_per_agent() {
    let mut t = Tester::start(crate::test_name!(), Default::default()).await;
    everyone_active(&t.sb);
    let agents = 450;
    let now = chrono::Utc::now();
    {
        let mut w = t.sb.zd("global");
        let staff = w.role_by_name("Staff");
        let ids: Vec<u64> = (0..agents)
            .map(|i| {
                let id = w.add_user(
                    &format!("Agent {i}"),
                    &format!("agent{i}@gitlab.com"),
                    "agent",
                    staff,
                );
                if let Some(u) = w.users.get_mut(&id) {
                    u.last_login_at = Some(now - chrono::Duration::days(200));
                }
                id
            })
            .collect();
        let mut ticket = |who: u64, status: &str, days_ago: i64| {
            let t = w.add_ticket(Some(who), None, status);
            if let Some(t) = w.tickets.get_mut(&t) {
                t.updated_at = now - chrono::Duration::days(days_ago);
            }
        };
        // The first 100 worked an open ticket recently: 1,500 tickets, more
        // than one page of the export.
        for (i, id) in ids.iter().take(100).enumerate() {
            for _ in 0..15 {
                ticket(*id, if i % 2 == 0 { "open" } else { "pending" }, 5);
            }
        }
        // Recently closed, or open but untouched since long before: idle.
        for id in &ids[100..150] {
            ticket(*id, "closed", 5);
        }
        for id in &ids[150..200] {
            ticket(*id, "open", 90);
        }
    }
    t.restart().await;
    t.bot.rehearse().unwrap();
    let sb = &t.sb;
    sb.clear_logs();
    // A rate limit on a later page is waited out, not taken for the end.
    sb.zd_knobs("global").fail_after(
        "GET /api/v2/search/export",
        1,
        1,
        Failure::TooMany {
            retry_after: Some(1),
        },
    );
    let reports = t.bot.audit_seats(Some("global")).await.unwrap();
    let r = &reports[0];
    assert_eq!(r.active_by_tickets, 100);
    assert_eq!(r.candidates.len(), agents - 100);
    assert!(
        !r.candidates
            .iter()
            .any(|c| c.email == "agent0@gitlab.com" || c.email == "agent99@gitlab.com")
    );
    assert!(
        r.candidates
            .iter()
            .any(|c| c.email == "agent100@gitlab.com")
    );
    assert!(
        r.candidates
            .iter()
            .any(|c| c.email == "agent199@gitlab.com")
    );
    let k = sb.zd_knobs("global");
    let api: Vec<_> = k
        .log()
        .into_iter()
        .filter(|e| e.route.starts_with("/api/v2/"))
        .collect();
    let count = |route: &str| api.iter().filter(|e| e.route == route).count();
    // Agents in pages of 100, recent tickets in export pages of 1,000.
    assert_eq!(count("/api/v2/users/:id/tickets/assigned"), 0);
    let export_ok = api
        .iter()
        .filter(|e| e.route == "/api/v2/search/export" && e.status == 200)
        .count();
    assert_eq!((export_ok, count("/api/v2/search/export")), (2, 3));
    assert!(count("/api/v2/users") <= 5, "{}", count("/api/v2/users"));
    assert!(api.len() <= 11, "{} Zendesk calls: {api:?}", api.len());
}

/// A long review is recorded in full: its lines go into as many list notes
/// as they need (a note is cut at the writer's limit, and a cut record would
/// list nobody), so a tick on the last line counts as one on the first.
#[tokio::test]
async fn a_long_review_is_recorded_in_full_across_list_notes() {
    let mut t = Tester::start(crate::test_name!(), Default::default()).await;
    everyone_active(&t.sb);
    let n = 400;
    {
        let now = chrono::Utc::now();
        let mut w = t.sb.zd("global");
        let staff = w.role_by_name("Staff");
        for i in 0..n {
            let id = w.add_user(
                &format!("Agent {i}"),
                &format!("agent{i}@gitlab.com"),
                "agent",
                staff,
            );
            if let Some(u) = w.users.get_mut(&id) {
                // Distinct idle days: the order of the lines is known.
                u.last_login_at = Some(now - chrono::Duration::days(100 + i as i64));
            }
        }
    }
    t.restart().await;
    t.sb.clear_logs();
    t.bot.audit_seats(Some("global")).await.unwrap();
    assert_eq!(
        t.sb.gitlab_knobs
            .count("PUT", "/api/v4/projects/:project/issues/:id"),
        0,
        "opened with every line, untouched since: not rewritten"
    );
    let iid = review_iid(&t.sb);
    let notes = t.read_records(iid, SEAT_LIST).len();
    assert!(notes > 1, "{notes} list notes");
    // Longest idle first: agent399 heads the list, agent0 ends it.
    let d = tick(&t.sb.description(iid), "agent0@gitlab.com", 'x');
    let d = tick(&d, "agent399@gitlab.com", 'x');
    t.edit("lyle", iid, &d).await;
    let reports = t.run_reports(3).await;
    assert!(reports.iter().all(|r| !r.failed()));
    let light = t.sb.zd("global").light_agent_role();
    for who in ["agent0@gitlab.com", "agent399@gitlab.com"] {
        assert_eq!(role(&t.sb, who), ("agent".to_string(), light), "{who}");
    }
    // Both lines were on record: both seats reclaimed, neither line unknown.
    let c = t.expect_comment(iid);
    assert!(
        !(c.body.contains("not a line the bot listed") || c.body.contains("unknown")),
        "both lines were on record"
    );
    t.expect_no_comment(iid);
}
