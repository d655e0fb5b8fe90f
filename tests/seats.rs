//! Idle-seat review end to end against the sandbox over HTTP: the listing,
//! the review issue (created, then updated in place), reclaim by an
//! authorized reviewer's tick, refusal of anyone else's, and closing.

use access_bot::bot::{Bot, Outcome};
use access_bot::cli::{SeatFormat, render_seat_reports};
use access_bot::sandbox::faults::Failure;
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::scenario::ZendeskAccount;
use access_bot::sandbox::{Ports, Sandbox};

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
/// assigned ticket changed last week.
async fn seeded() -> (Sandbox, Bot) {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    everyone_active(&sb);
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
    let bot = sb.bot().await.unwrap();
    (sb, bot)
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
    let (sb, mut bot) = seeded().await;
    bot.dry_run = true;
    sb.clear_logs();
    let reports = bot.audit_seats(Some("global")).await.unwrap();
    let r = &reports[0];
    let emails: Vec<&str> = r.candidates.iter().map(|c| c.email.as_str()).collect();
    assert_eq!(emails, ["ben.never@gitlab.com", "ann.idle@gitlab.com"]);
    assert_eq!(r.active_by_tickets, 1, "Gus worked a ticket last week");
    assert_eq!(r.yearly_total, 2.0 * 115.0 * 12.0);
    assert!(
        sb.gitlab_knobs.log().is_empty(),
        "dry run: no GitLab request at all"
    );
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
        bot.audit_seats(Some("nowhere")).await,
        Err(access_bot::bot::SeatError::UnknownInstance(_))
    ));
}

/// The bot's comments on a review, without its list notes (the record of the lines).
fn review_comments(sb: &Sandbox, iid: u64) -> Vec<access_bot::sandbox::harness::Comment> {
    sb.bot_comments(iid)
        .into_iter()
        .filter(|c| c.marker.as_ref().is_none_or(|m| m.kind != "seat-list"))
        .collect()
}

fn list_notes(sb: &Sandbox, iid: u64) -> usize {
    sb.bot_comments(iid).len() - review_comments(sb, iid).len()
}

#[tokio::test]
async fn review_issue_is_opened_updated_in_place_and_reclaims_on_a_reviewers_tick() {
    let (sb, bot) = seeded().await;
    bot.audit_seats(Some("global")).await.unwrap();
    let iid = review_iid(&sb);
    let desc = sb.description(iid);
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
    sb.seed_zendesk(&account("Hal New", "hal.new@gitlab.com", "agent", Some(90)))
        .unwrap();
    bot.audit_seats(Some("global")).await.unwrap();
    assert_eq!(review_iid(&sb), iid, "updated in place, not a second issue");
    assert!(sb.description(iid).contains("hal.new@gitlab.com"));

    // Someone who is not a reviewer ticks Ann: nothing happens but a comment.
    let d = sb.description(iid);
    sb.edit_description("jdoe", iid, &tick(&d, "ann.idle@gitlab.com", 'x'))
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    assert_eq!(role(&sb, "ann.idle@gitlab.com").0, "agent");
    assert_eq!(role(&sb, "ann.idle@gitlab.com").1, None);
    let c = review_comments(&sb, iid);
    assert_eq!(c.len(), 1);
    assert!(
        c[0].body
            .contains("`@jdoe`, who is not one of the reviewers"),
        "{}",
        c[0].body
    );

    // The reviewer unticks and ticks it again, and ticks Ben: both reclaimed (light agent).
    let d = sb.description(iid).replace("- [x] ", "- [ ] ");
    sb.edit_description("lyle", iid, &d).await.unwrap();
    let d = tick(&sb.description(iid), "ann.idle@gitlab.com", 'x');
    let d = tick(&d, "ben.never@gitlab.com", 'x');
    sb.edit_description("lyle", iid, &d).await.unwrap();
    let reports = run_until_quiet(&bot, 3).await;
    assert!(reports.iter().all(|r| !r.failed()));
    let light = sb.zd("global").light_agent_role();
    assert_eq!(role(&sb, "ann.idle@gitlab.com"), ("agent".into(), light));
    assert_eq!(role(&sb, "ben.never@gitlab.com"), ("agent".into(), light));
    let c = review_comments(&sb, iid);
    assert_eq!(c.len(), 2, "one new comment for the cycle");
    assert!(
        c[1].body.contains("`ann.idle@gitlab.com`: seat reclaimed, now agent (Agent léger) (was agent); ticked by `@lyle`"),
        "{}",
        c[1].body
    );
    assert!(c[1].body.contains("`ben.never@gitlab.com`: seat reclaimed"));
    assert_eq!(sb.state(iid), "opened", "Hal is still undecided");

    // The audit trail answers who reclaimed Ann's seat.
    let rows = bot
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
    bot.audit_seats(Some("global")).await.unwrap();
    let d = sb.description(iid);
    assert!(d.contains("- [x] `Ann Idle`"), "{d}");
    assert!(d.contains("- [x] `Ben Never`"), "{d}");

    // Marking Hal `[~]` (keep) closes the review; nothing more is written.
    let d = tick(&sb.description(iid), "hal.new@gitlab.com", '~');
    sb.edit_description("jason", iid, &d).await.unwrap();
    run_until_quiet(&bot, 3).await;
    assert_eq!(sb.state(iid), "closed");
    assert_eq!(role(&sb, "hal.new@gitlab.com"), ("agent".into(), None));
    assert_eq!(review_comments(&sb, iid).len(), 2);
    run_until_quiet(&bot, 3).await;
    assert_eq!(review_comments(&sb, iid).len(), 2, "no duplicate comments");
    assert_eq!(
        list_notes(&sb, iid),
        2,
        "one record per listing: the first, and Hal"
    );
}

#[tokio::test]
async fn a_line_altered_by_someone_else_or_a_returning_agent_is_not_reclaimed() {
    let (sb, bot) = seeded().await;
    bot.audit_seats(Some("global")).await.unwrap();
    let iid = review_iid(&sb);

    // Someone rewrites Ann's line to point at Cat (active), then a reviewer ticks it.
    let d = sb.description(iid).replace(
        "`Ann Idle` (ann.idle@gitlab.com)",
        "`Cat Active` (cat.active@gitlab.com)",
    );
    sb.edit_description("jdoe", iid, &d).await.unwrap();
    let d = tick(&sb.description(iid), "cat.active@gitlab.com", 'x');
    sb.edit_description("lyle", iid, &d).await.unwrap();

    // Ben logs in after the review listed him, then the reviewer ticks him.
    sb.zd("global")
        .user_mut_by_email("ben.never@gitlab.com")
        .unwrap()
        .last_login_at = Some(chrono::Utc::now() + chrono::Duration::seconds(1));
    let d = tick(&sb.description(iid), "ben.never@gitlab.com", 'x');
    sb.edit_description("lyle", iid, &d).await.unwrap();
    let reports = run_until_quiet(&bot, 3).await;
    assert!(reports.iter().all(|r| !r.failed()));

    assert_eq!(role(&sb, "cat.active@gitlab.com"), ("agent".into(), None));
    assert_eq!(role(&sb, "ben.never@gitlab.com"), ("agent".into(), None));
    let all: String = sb
        .bot_comments(iid)
        .iter()
        .map(|c| c.body.clone())
        .collect();
    assert!(
        all.contains("is ticked, but it is not a line the bot wrote"),
        "{all}"
    );
    assert!(
        all.contains("`ben.never@gitlab.com`: not reclaimed: they logged in on"),
        "{all}"
    );
    assert_eq!(sb.state(iid), "opened");
    assert!(
        bot.store
            .audit_rows(&Default::default())
            .unwrap()
            .iter()
            .all(|r| r.action != "reclaim_seat"),
        "nothing reclaimed, nothing recorded as reclaimed"
    );
}

#[tokio::test]
async fn nothing_idle_opens_no_issue_and_a_crash_after_opening_finds_the_same_issue() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    everyone_active(&sb);
    sb.seed_zendesk(&account(
        "Cat Active",
        "cat.active@gitlab.com",
        "agent",
        Some(3),
    ))
    .unwrap();
    let bot = sb.bot().await.unwrap();
    let r = bot.audit_seats(Some("global")).await.unwrap();
    assert!(r[0].candidates.is_empty());
    assert!(r[0].issue_url.is_none());

    sb.seed_zendesk(&account(
        "Ann Idle",
        "ann.idle@gitlab.com",
        "agent",
        Some(120),
    ))
    .unwrap();
    bot.audit_seats(Some("global")).await.unwrap();
    let iid = review_iid(&sb);
    // A fresh state database (the record of the issue lost): found again by its marker.
    drop(bot); // a restart: the old bot is gone
    let bot2 = sb.bot().await.unwrap();
    let r = bot2.audit_seats(Some("global")).await.unwrap();
    assert_eq!(review_iid(&sb), iid);
    assert!(
        r[0].issue_url
            .as_deref()
            .unwrap_or("")
            .ends_with(&format!("/{iid}"))
    );
    let outcome = bot2.process(access_bot::sandbox::PROJECT, iid).await;
    assert_eq!(outcome, Outcome::Waiting);
}

#[tokio::test]
async fn the_review_lives_on_the_issue_a_bot_with_an_empty_store_carries_on() {
    let (sb, bot) = seeded().await;
    bot.audit_seats(Some("global")).await.unwrap();
    let iid = review_iid(&sb);
    drop(bot);
    // A reviewer ticks Ann; someone adds a line of their own and it is ticked too.
    let d = tick(&sb.description(iid), "ann.idle@gitlab.com", 'x');
    let forged =
        "- [x] `Cat Active` (cat.active@gitlab.com): agent, last login never, 1,380 USD a year\n";
    sb.edit_description("lyle", iid, &format!("{d}\n{forged}"))
        .await
        .unwrap();
    // A new bot, with nothing in its store.
    let fresh = sb.bot().await.unwrap();
    run_until_quiet(&fresh, 3).await;
    let light = sb.zd("global").light_agent_role();
    assert_eq!(role(&sb, "ann.idle@gitlab.com"), ("agent".into(), light));
    assert_eq!(
        role(&sb, "cat.active@gitlab.com"),
        ("agent".into(), None),
        "a line the bot did not record is never acted on"
    );
    // Another new bot's monthly run: the same issue, decided lines kept, no
    // second record of the same lines.
    let again = sb.bot().await.unwrap();
    again.audit_seats(Some("global")).await.unwrap();
    assert_eq!(review_iid(&sb), iid);
    let d = sb.description(iid);
    assert!(d.contains("- [x] `Ann Idle`"), "{d}");
    assert!(d.contains("ben.never@gitlab.com"), "{d}");
    assert_eq!(list_notes(&sb, iid), 1, "the lines were recorded once");
    run_until_quiet(&again, 3).await;
    let reclaimed: Vec<_> = review_comments(&sb, iid)
        .into_iter()
        .filter(|c| c.body.contains("seat reclaimed"))
        .collect();
    assert_eq!(reclaimed.len(), 1, "Ann's seat was reclaimed once");
}

/// Ticket activity is read in pages of tickets, not asked per agent: a review
/// of hundreds of idle agents costs a handful of calls, and its verdicts are
/// those of the per-agent reading (an open ticket changed since the idle
/// threshold keeps the seat; a closed one or an old one does not).
#[tokio::test]
async fn seat_review_costs_pages_not_one_call_per_agent() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    everyone_active(&sb);
    let agents = 450;
    let now = chrono::Utc::now();
    {
        let mut w = sb.zd("global");
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
    let mut bot = sb.bot().await.unwrap();
    bot.dry_run = true;
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
    let reports = bot.audit_seats(Some("global")).await.unwrap();
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
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    everyone_active(&sb);
    let n = 400;
    {
        let now = chrono::Utc::now();
        let mut w = sb.zd("global");
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
    let bot = sb.bot().await.unwrap();
    sb.clear_logs();
    bot.audit_seats(Some("global")).await.unwrap();
    assert_eq!(
        sb.gitlab_knobs
            .count("PUT", "/api/v4/projects/:project/issues/:id"),
        0,
        "opened with every line, untouched since: not rewritten"
    );
    let iid = review_iid(&sb);
    assert!(
        list_notes(&sb, iid) > 1,
        "{} list notes",
        list_notes(&sb, iid)
    );
    // Longest idle first: agent399 heads the list, agent0 ends it.
    let d = tick(&sb.description(iid), "agent0@gitlab.com", 'x');
    let d = tick(&d, "agent399@gitlab.com", 'x');
    sb.edit_description("lyle", iid, &d).await.unwrap();
    let reports = run_until_quiet(&bot, 3).await;
    assert!(reports.iter().all(|r| !r.failed()));
    let light = sb.zd("global").light_agent_role();
    for who in ["agent0@gitlab.com", "agent399@gitlab.com"] {
        assert_eq!(role(&sb, who), ("agent".to_string(), light), "{who}");
    }
    assert!(
        !review_comments(&sb, iid)
            .iter()
            .any(|c| c.body.contains("not a line the bot listed") || c.body.contains("unknown")),
        "both lines were on record"
    );
}
