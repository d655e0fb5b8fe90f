//! What the bot reads from GitLab, counted in the sandbox's request log: the
//! idle poll is one request per cycle whatever the clocks say, an update is
//! never lost to the cursor, and a look at an issue reads only the notes that
//! changed since the last look (the decision staying what a full read gives).
//!
//! Every bot comment is read and checked by snapshot (`Tester::expect_rest`
//! at the end of a test about reads); the words a test asserts stay in it.

mod common;

use access_bot::bot::Outcome;
use access_bot::demo::bodies;
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::{PROJECT, Sandbox};
use common::tester::{MANAGER, OWNER, Tester, fixtures};

const NOTES: &str = "/api/v4/projects/:project/issues/:id/notes";

async fn file(sb: &Sandbox, name: &str) -> u64 {
    let (_, author, title, labels, body) = bodies()
        .into_iter()
        .find(|b| b.0 == name)
        .expect("demo body");
    sb.file_issue(author, title, &labels, &body).await.unwrap()
}

/// Move GitLab's clock (only GitLab's: the bot's stays where it is).
fn shift_gitlab_clock(sb: &Sandbox, by: chrono::Duration) {
    let mut w = sb.gitlab.lock();
    w.clock_offset += by;
}

fn notes_reads(sb: &Sandbox) -> usize {
    sb.gitlab_knobs.count("GET", NOTES)
}

/// A special request, planned, in a project where mallory is a maintainer
/// (who may edit anyone's note).
async fn special_request_with_a_maintainer(t: &Tester) -> u64 {
    {
        let mallory = t.sb.gitlab.lock().user_by_name("mallory").unwrap().id;
        let mut w = t.sb.gitlab.lock();
        let p = w.projects.iter_mut().find(|p| p.path == PROJECT).unwrap();
        p.maintainers.insert(mallory);
    }
    let iid = file(&t.sb, "special request").await;
    run_until_quiet(&t.bot, 4).await;
    iid
}

/// The plan rewritten by a maintainer (its sealed marker kept), then both
/// approvals: nothing is done, and a second plan says what is needed.
async fn rewritten_plan_approved_counts_for_nothing(t: &Tester, iid: u64) {
    let plan = t.sb.bot_comments(iid)[0].clone();
    let tampered = plan.body.replace("Support Engineer", "Light Agent");
    assert_ne!(tampered, plan.body);
    t.sb.edit_note_as("mallory", iid, plan.id, &tampered)
        .await
        .unwrap();
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    run_until_quiet(&t.bot, 4).await;
    let comments = t.sb.bot_comments(iid);
    assert!(
        !comments.iter().any(|c| c.body.contains("access-bot: done")),
        "{comments:#?}"
    );
    assert_eq!(
        comments
            .iter()
            .filter(|c| c.body.contains("access-bot plan"))
            .count(),
        2,
        "{comments:#?}"
    );
}

#[tokio::test]
async fn idle_cycles_are_one_request_each_when_gitlab_runs_ahead_of_the_bot() {
    let t = crate::tester!().await;
    // GitLab's clock 5 s ahead of the bot's (more than the 2 s overlap).
    shift_gitlab_clock(&t.sb, chrono::Duration::seconds(5));
    {
        let mut w = t.sb.gitlab.lock();
        let author = w.user_by_name("jdoe").unwrap().id;
        for i in 0..1000 {
            w.create_issue(
                PROJECT,
                author,
                &format!("Unrelated {i}"),
                "x",
                &["support::to do".to_string()],
                false,
            );
        }
    }
    run_until_quiet(&t.bot, 3).await;
    // Time passes on GitLab beyond the overlap: the first poll after that
    // still covers the window, every later one finds nothing.
    shift_gitlab_clock(&t.sb, chrono::Duration::seconds(4));
    t.bot.cycle().await;
    t.sb.clear_logs();
    let cycles = 5;
    for _ in 0..cycles {
        let r = t.bot.cycle().await;
        assert!(r.outcomes.is_empty() && r.errors.is_empty(), "{r:?}");
    }
    // One listing per cycle and nothing else (but the replica lease's
    // renewal, when a slow machine makes it due).
    let counts = t.sb.gitlab_knobs.counts();
    assert_eq!(
        counts.get("GET /api/v4/projects/:project/issues"),
        Some(&cycles),
        "{counts:?}"
    );
    assert!(
        counts
            .keys()
            .all(|r| r == "GET /api/v4/projects/:project/issues"
                || r == "PUT /api/v4/projects/:project/labels/:id"),
        "{counts:?}"
    );
}

#[tokio::test]
async fn an_update_right_after_a_listing_is_seen_when_gitlab_runs_behind_the_bot() {
    let mut t = crate::tester!().await;
    // GitLab's clock 5 s behind the bot's: a cursor from the bot's clock
    // would start after changes GitLab dates now.
    shift_gitlab_clock(&t.sb, chrono::Duration::seconds(-5));
    t.restart().await;
    let iid = file(&t.sb, "special request").await;
    run_until_quiet(&t.bot, 4).await;
    for round in 0..3 {
        let r = t.bot.cycle().await;
        assert!(r.outcomes.is_empty(), "round {round}: {r:?}");
        // In the same second as that listing, most likely.
        t.sb.comment_as("jdoe", iid, &format!("any news? ({round})"))
            .await
            .unwrap();
        let r = t.bot.cycle().await;
        assert!(
            r.outcomes.iter().any(|(_, i, _)| *i == iid),
            "round {round}: the comment was not seen: {r:?}"
        );
    }
    // What the bot said, by snapshot.
    t.expect_rest();
}

#[tokio::test]
async fn a_look_reads_only_the_notes_changed_since_the_last_and_decides_the_same() {
    let mut t = crate::tester!().await;
    let iid = file(&t.sb, "special request").await;
    run_until_quiet(&t.bot, 4).await;
    // 5,000 comments, as a long discussion leaves them; later comments come
    // after the overlap (2 s in the sandbox).
    long_discussion(&t, iid, 5000);
    // The look that meets them reads them (50 pages of 100, and the overlap).
    assert_eq!(t.bot.process(PROJECT, iid).await, Outcome::Waiting);
    // Every later look: the one page of what changed.
    for round in 0..3 {
        t.sb.comment_as("jdoe", iid, &format!("still waiting ({round})"))
            .await
            .unwrap();
        t.sb.clear_logs();
        assert_eq!(t.bot.process(PROJECT, iid).await, Outcome::Waiting);
        assert_eq!(
            notes_reads(&t.sb),
            1,
            "round {round}: {:?}",
            t.sb.gitlab_knobs.counts()
        );
    }
    // The cache counts every comment and keeps the text of none of them:
    // only the notes that decide (the bot's, and system notes).
    let head = t.bot.store.notes_head(PROJECT, iid).unwrap().unwrap();
    // The plan, 5,000 comments and 3 more.
    assert_eq!(head.comments, 5004);
    let kept = t.bot.store.kept_notes(PROJECT, iid).unwrap();
    assert!(!kept.is_empty());
    assert!(
        kept.iter()
            .all(|n| n.note.system || n.note.author.username == "access-bot"),
        "{kept:#?}"
    );
    // The database lost: a full read, and the same decision.
    t.restart().await;
    t.sb.clear_logs();
    assert_eq!(t.bot.process(PROJECT, iid).await, Outcome::Waiting);
    assert_eq!(notes_reads(&t.sb), 51, "{:?}", t.sb.gitlab_knobs.counts());
    // Then the approvals, with the notes from the cache: carried out.
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    run_until_quiet(&t.bot, 4).await;
    assert!(
        t.sb.bot_comments(iid)
            .iter()
            .any(|c| c.body.contains("access-bot: done")),
        "{:#?}",
        t.sb.bot_comments(iid)
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

#[tokio::test]
async fn a_plan_deleted_after_it_was_read_stops_counting() {
    let mut t = crate::tester!().await;
    let iid = file(&t.sb, "special request").await;
    run_until_quiet(&t.bot, 4).await;
    let plan = t.sb.bot_comments(iid)[0].clone();
    assert!(plan.body.contains("access-bot plan"), "{}", plan.body);
    look_with_the_plan_cached(&t, iid).await;
    // The plan is deleted (by the bot's own account, as a maintainer could),
    // then approved: no plan, nothing to approve.
    {
        let mut w = t.sb.gitlab.lock();
        let me = w.user_by_name("access-bot").map(|u| u.id).unwrap();
        w.delete_note(PROJECT, iid, plan.id, me).unwrap();
    }
    t.sb.add_label("mlee", iid, MANAGER).await.unwrap();
    t.sb.add_label("lyle", iid, OWNER).await.unwrap();
    run_until_quiet(&t.bot, 4).await;
    let comments = t.sb.bot_comments(iid);
    assert!(
        !comments.iter().any(|c| c.body.contains("access-bot: done")),
        "{comments:#?}"
    );
    // A new plan instead, which the approvals predate.
    assert!(
        comments.iter().any(|c| c.body.contains("access-bot plan")),
        "{comments:#?}"
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

#[tokio::test]
async fn a_plan_edited_after_it_was_read_stops_counting() {
    let mut t = crate::tester!().await;
    let iid = special_request_with_a_maintainer(&t).await;
    look_with_the_plan_cached(&t, iid).await;
    rewritten_plan_approved_counts_for_nothing(&t, iid).await;
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// A look that finds nothing new leaves the notes cache as it is (written
/// again whole, it would cost a write growing with the discussion at every
/// look), and an edit made after such looks is still read.
#[tokio::test]
async fn looks_that_find_nothing_new_leave_the_cache_and_a_later_edit_is_read() {
    let mut t = crate::tester!().await;
    let iid = special_request_with_a_maintainer(&t).await;
    look_with_the_plan_cached(&t, iid).await;
    let cached = |t: &Tester| {
        let head = t.bot.store.notes_head(PROJECT, iid).unwrap();
        let kept = t.bot.store.kept_notes(PROJECT, iid).unwrap();
        format!(
            "{:?} {}",
            head.expect("the notes are cached"),
            serde_json::to_string(&kept).unwrap()
        )
    };
    let before = cached(&t);
    // Looks with nothing new, GitLab's clock moving past the overlap each time.
    for _ in 0..3 {
        shift_gitlab_clock(&t.sb, chrono::Duration::seconds(5));
        t.sb.clear_logs();
        assert_eq!(t.bot.process(PROJECT, iid).await, Outcome::Waiting);
        assert_eq!(notes_reads(&t.sb), 1, "{:?}", t.sb.gitlab_knobs.counts());
        assert_eq!(
            cached(&t),
            before,
            "a look that found nothing new rewrote the cache"
        );
    }
    // Then the plan is rewritten: the next look reads the edit, and the
    // approvals given to the rewritten plan count for nothing.
    shift_gitlab_clock(&t.sb, chrono::Duration::seconds(5));
    rewritten_plan_approved_counts_for_nothing(&t, iid).await;
    assert_ne!(cached(&t), before);
    // What the bot said, by snapshot.
    t.expect_rest();
}

/// A comment, and a look that caches the notes, plan included.
async fn look_with_the_plan_cached(t: &Tester, iid: u64) {
    t.sb.comment_as("jdoe", iid, "any news?").await.unwrap();
    assert_eq!(t.bot.process(PROJECT, iid).await, Outcome::Waiting);
}

/// Add `n` comments by jdoe, then move GitLab's clock past the overlap.
fn long_discussion(t: &Tester, iid: u64, n: usize) {
    {
        let mut w = t.sb.gitlab.lock();
        let author = w.user_by_name("jdoe").unwrap().id;
        for i in 0..n {
            w.add_note(PROJECT, iid, author, &format!("comment {i}"));
        }
    }
    shift_gitlab_clock(&t.sb, chrono::Duration::seconds(3));
}

/// The notes that decide stay in the cache however long the discussion
/// grows: an edit by someone else keeps a trusted request from acting on its
/// own at every later look, when the edit is older than what a look reads
/// and only the cache has it.
#[tokio::test]
async fn an_edit_only_the_cache_still_has_keeps_deciding() {
    let mut t = crate::tester!().await;
    let iid = t.file(&fixtures::role_based_entitlement()).await;
    // Someone edits it before the bot sees it: no longer pre-approved.
    let edited =
        t.sb.description(iid)
            .replace("Support Engineer", "Support Manager");
    t.edit("mallory", iid, &edited).await;
    assert_eq!(t.bot.process(PROJECT, iid).await, Outcome::Waiting);
    long_discussion(&t, iid, 150);
    for round in 0..4 {
        t.sb.comment_as("jdoe", iid, &format!("any news? ({round})"))
            .await
            .unwrap();
        shift_gitlab_clock(&t.sb, chrono::Duration::seconds(3));
        t.sb.clear_logs();
        assert_eq!(
            t.bot.process(PROJECT, iid).await,
            Outcome::Waiting,
            "round {round}"
        );
        if round > 0 {
            assert_eq!(notes_reads(&t.sb), 1, "round {round}: a full read");
        }
    }
    let kept = t.bot.store.kept_notes(PROJECT, iid).unwrap();
    assert!(
        kept.iter()
            .any(|n| n.note.system && n.note.body.starts_with("changed the description")),
        "{kept:#?}"
    );
    t.expect_untouched(&["sam.rivera@gitlab.com"]);
    t.expect_rest();
}

/// A comment deleted while the notes' pages are read moves the next page by
/// one; the note at its start (here: someone's edit of a trusted request) is
/// not lost: the pages' total moved, so the read starts over.
#[tokio::test]
async fn a_note_deleted_between_pages_hides_nothing() {
    use access_bot::sandbox::faults::Failure;
    let mut t = crate::tester!().await;
    let iid = t.file(&fixtures::role_based_entitlement()).await;
    // 100 comments fill the first page; the edit is the first note of the second.
    {
        let mut w = t.sb.gitlab.lock();
        let author = w.user_by_name("jdoe").unwrap().id;
        for i in 0..100 {
            w.add_note(PROJECT, iid, author, &format!("comment {i}"));
        }
    }
    let edited =
        t.sb.description(iid)
            .replace("Support Engineer", "Support Manager");
    t.edit("mallory", iid, &edited).await;
    // The first page is answered late; meanwhile its first comment is deleted.
    let route = format!("GET /api/v4/projects/support%2Faccess-requests/issues/{iid}/notes");
    t.sb.gitlab_knobs.fail_next(
        &route,
        1,
        Failure::Delay(std::time::Duration::from_millis(400)),
    );
    let deleter = {
        let gitlab = t.sb.gitlab.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            let mut w = gitlab.lock();
            let jdoe = w.user_by_name("jdoe").unwrap().id;
            let first = w
                .projects
                .iter()
                .find(|p| p.path == PROJECT)
                .and_then(|p| p.issues.iter().find(|i| i.iid == iid))
                .and_then(|i| i.notes.iter().find(|n| !n.system).map(|n| n.id))
                .unwrap();
            w.delete_note(PROJECT, iid, first, jdoe).unwrap();
        })
    };
    t.sb.clear_logs();
    let read = t.bot.gitlab.notes_since(PROJECT, iid, None).await.unwrap();
    deleter.await.unwrap();
    assert!(
        read.notes
            .iter()
            .any(|n| n.note.system && n.note.body.starts_with("changed the description")),
        "the edit was lost: {} notes read",
        read.notes.len()
    );
    // Two pages whose totals differ, then the 100 notes left on one page.
    assert_eq!(notes_reads(&t.sb), 3, "{:?}", t.sb.gitlab_knobs.counts());
    // And the bot, reading them again: edited by someone else, the request
    // waits for approvals and changes nothing.
    assert_eq!(t.bot.process(PROJECT, iid).await, Outcome::Waiting);
    t.expect_untouched(&["sam.rivera@gitlab.com"]);
    t.expect_rest();
}

/// A cache kept for another bot account (with the text of that account's
/// notes, not this one's) is not used: the look reads every note again.
#[tokio::test]
async fn a_cache_kept_for_another_bot_account_is_not_used() {
    let mut t = crate::tester!().await;
    let iid = file(&t.sb, "special request").await;
    run_until_quiet(&t.bot, 4).await;
    long_discussion(&t, iid, 150);
    assert_eq!(t.bot.process(PROJECT, iid).await, Outcome::Waiting);
    let head = t.bot.store.notes_head(PROJECT, iid).unwrap().unwrap();
    // The same cache, as kept for another account.
    let other = access_bot::gitlab::NoteRead {
        notes: Vec::new(),
        read_at: head.read_at,
    };
    t.bot
        .store
        .store_notes(PROJECT, iid, head.bot + 1, &other, false, |_| false)
        .unwrap();
    t.sb.comment_as("jdoe", iid, "any news?").await.unwrap();
    t.sb.clear_logs();
    assert_eq!(t.bot.process(PROJECT, iid).await, Outcome::Waiting);
    assert_eq!(notes_reads(&t.sb), 2, "the 152 comments, in full");
    assert_eq!(
        t.bot.store.notes_head(PROJECT, iid).unwrap().unwrap().bot,
        head.bot
    );
    t.expect_rest();
}

const ISSUES: &str = "/api/v4/projects/support%2Faccess-requests/issues";

#[tokio::test]
async fn a_listing_that_changes_between_its_pages_keeps_the_cursor() {
    use access_bot::sandbox::faults::Failure;
    let t = crate::tester!().await;
    {
        let mut w = t.sb.gitlab.lock();
        let author = w.user_by_name("jdoe").unwrap().id;
        for i in 0..150 {
            w.create_issue(
                PROJECT,
                author,
                &format!("Unrelated {i}"),
                "x",
                &["support::to do".to_string()],
                false,
            );
        }
    }
    // The first page is answered late; meanwhile an issue is closed, so the
    // second page starts one issue further on than the first page ended.
    t.sb.gitlab_knobs.fail_next(
        &format!("GET {ISSUES}"),
        1,
        Failure::Delay(std::time::Duration::from_millis(400)),
    );
    let closer = {
        let gitlab = t.sb.gitlab.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            let mut w = gitlab.lock();
            let author = w.user_by_name("jdoe").unwrap().id;
            w.set_state(PROJECT, 150, author, true);
        })
    };
    t.bot.cycle().await;
    closer.await.unwrap();
    assert_eq!(
        t.bot.store.cursor(PROJECT).unwrap(),
        None,
        "the cursor moved past a listing that may have skipped an issue"
    );
    // An undisturbed listing moves it.
    t.bot.cycle().await;
    assert!(t.bot.store.cursor(PROJECT).unwrap().is_some());
}

#[tokio::test]
async fn approvals_landing_between_the_bots_read_and_its_edit_are_looked_at() {
    use access_bot::sandbox::faults::Failure;
    let mut t = crate::tester!().await;
    let iid = file(&t.sb, "special request").await;
    // The look that posts the plan reads the issue right before its edit;
    // that answer is late, and the approvals land while it travels.
    // (Its notes and label events come first on the same route prefix.)
    t.sb.gitlab_knobs.fail_after(
        &format!("GET {ISSUES}/{iid}"),
        2,
        1,
        Failure::Delay(std::time::Duration::from_millis(600)),
    );
    let approvers = {
        let sb_gitlab = t.sb.gitlab.clone();
        tokio::spawn(async move {
            // Once the plan is on the issue.
            for _ in 0..200 {
                let planned = sb_gitlab
                    .lock()
                    .issue(PROJECT, iid)
                    .is_some_and(|i| i.notes.iter().any(|n| n.body.contains("access-bot plan")));
                if planned {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let mut w = sb_gitlab.lock();
            let mlee = w.user_by_name("mlee").unwrap().id;
            let lyle = w.user_by_name("lyle").unwrap().id;
            w.change_labels(PROJECT, iid, mlee, &[MANAGER.to_string()], &[]);
            w.change_labels(PROJECT, iid, lyle, &[OWNER.to_string()], &[]);
        })
    };
    t.bot.cycle().await;
    approvers.await.unwrap();
    run_until_quiet(&t.bot, 4).await;
    let comments = t.sb.bot_comments(iid);
    assert!(
        comments.iter().any(|c| c.body.contains("access-bot: done")),
        "{comments:#?}"
    );
    // What the bot said, by snapshot.
    t.expect_rest();
}

#[tokio::test]
async fn a_self_service_light_agent_reads_no_label_events_and_the_listed_issue_once() {
    let mut t = crate::tester!().await;
    let iid = file(&t.sb, "light agent, Zendesk Global").await;
    t.sb.clear_logs();
    run_until_quiet(&t.bot, 4).await;
    assert!(
        t.sb.bot_comments(iid)
            .iter()
            .any(|c| c.body.contains("access-bot: done")),
        "{:#?}",
        t.sb.bot_comments(iid)
    );
    let events = "/api/v4/projects/:project/issues/:id/resource_label_events";
    assert_eq!(
        t.sb.gitlab_knobs.count("GET", events),
        0,
        "{:?}",
        t.sb.gitlab_knobs.counts()
    );
    // The issue as listed decides; it is read again right before acting
    // (time of check) and right before each of the bot's edits.
    let reads =
        t.sb.gitlab_knobs
            .count("GET", "/api/v4/projects/:project/issues/:id");
    let edits =
        t.sb.gitlab_knobs
            .count("PUT", "/api/v4/projects/:project/issues/:id");
    assert_eq!(reads, edits + 1, "{:?}", t.sb.gitlab_knobs.counts());
    // What the bot said, by snapshot.
    t.expect_rest();
}

#[tokio::test]
async fn the_fake_refuses_what_gitlab_refuses_in_listings() {
    let t = crate::tester!().await;
    let iid = file(&t.sb, "special request").await;
    let client = reqwest::Client::new();
    let token = t.sb.token_of("access-bot");
    let base = t.sb.config.gitlab.url.trim_end_matches('/').to_string();
    for (path, query, status) in [
        (
            format!("{ISSUES}/{iid}/notes"),
            "order_by=updated_at&sort=desc",
            200,
        ),
        (format!("{ISSUES}/{iid}/notes"), "order_by=id", 400),
        (format!("{ISSUES}/{iid}/notes"), "sort=up", 400),
        (ISSUES.to_string(), "order_by=updated_at&sort=desc", 200),
        (ISSUES.to_string(), "sort=descending", 400),
    ] {
        let r = client
            .get(format!("{base}{path}?{query}"))
            .header("PRIVATE-TOKEN", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}?{query}");
        if status == 200 {
            assert!(r.headers().contains_key("date"));
            assert!(r.headers().contains_key("x-total"));
        }
    }
}
