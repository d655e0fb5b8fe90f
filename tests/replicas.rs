//! One writer per project across hosts: replicas on separate databases agree
//! through a GitLab label (who acts, until when), end to end over HTTP.
//!
//! The replicas are bots on one `Tester`'s sandbox (`Tester::replica`): what
//! they write is read by snapshot, and a comment no test read fails it.

mod common;

use access_bot::bot::Outcome;
use access_bot::bot::lease::Standing;
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::{PROJECT, Sandbox};
use common::tester::Issue;

const LEASE: &str = "access-bot/lease";

fn lease_description(sb: &Sandbox) -> String {
    let w = sb.gitlab.lock();
    let p = w
        .projects
        .iter()
        .find(|p| p.path == PROJECT)
        .expect("project");
    let id = p.labels.get(LEASE).copied().unwrap_or(0);
    p.label_descriptions.get(&id).cloned().unwrap_or_default()
}

fn duplicated_comments(sb: &Sandbox, iids: &[u64]) -> Vec<String> {
    let mut out = Vec::new();
    for iid in iids {
        let mut seen = std::collections::BTreeSet::new();
        for c in sb.bot_comments(*iid) {
            if let Some(m) = &c.marker {
                for k in &m.keys {
                    if !seen.insert(k.clone()) {
                        out.push(format!("#{iid}: {k}"));
                    }
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn two_replicas_on_separate_databases_one_acts_and_nothing_is_done_twice() {
    let mut t = crate::tester!().await;
    let sb = &t.sb;
    let mut iids = Vec::new();
    for name in [
        "role-based entitlement",
        "light agent, Zendesk Global",
        "light agent, Zendesk US Federal",
    ] {
        iids.push(t.file(&Issue::demo(name)).await);
    }
    let a = t.replica().await;
    let b = t.replica().await;
    // Both start at the same moment.
    let (ra, rb) = tokio::join!(a.cycle(), b.cycle());
    let standing_by = [&ra, &rb].iter().filter(|r| !r.standby.is_empty()).count();
    assert_eq!(standing_by, 1, "exactly one stands by: {ra:?} {rb:?}");
    for _ in 0..3 {
        let (_, _) = tokio::join!(a.cycle(), b.cycle());
    }
    assert!(
        duplicated_comments(sb, &iids).is_empty(),
        "{:?}",
        duplicated_comments(sb, &iids)
    );
    assert_eq!(sb.smtp.messages().len(), 1, "the People team's e-mail once");
    let d = lease_description(sb);
    let holder = if ra.standby.is_empty() { &a } else { &b };
    assert!(d.contains(&holder.lease.id), "{d}");
    // What the one that acted said, by snapshot.
    t.expect_rest();
}

#[tokio::test]
async fn a_standby_takes_over_at_once_when_the_holder_is_gone_or_gives_it_back() {
    let mut t = crate::tester!().await;
    let iid = t.file(&Issue::demo("role-based entitlement")).await;
    let a = t.replica().await;
    assert_eq!(a.active(PROJECT).await.unwrap(), Standing::Active);
    let b = t.replica().await;
    assert!(matches!(
        b.active(PROJECT).await.unwrap(),
        Standing::Standby { .. }
    ));
    let r = b.cycle().await;
    assert!(r.outcomes.is_empty() && !r.standby.is_empty(), "{r:?}");
    // The holder dies (on this host: its process is gone).
    drop(a);
    assert_eq!(b.active(PROJECT).await.unwrap(), Standing::Active);
    run_until_quiet(&b, 3).await;
    let said = t.expect_comments(iid);
    assert_eq!(
        said.iter()
            .filter(|c| c.body.contains("access-bot: done"))
            .count(),
        1,
        "{said:#?}"
    );
    // A clean shutdown gives it back: the next replica acts at once.
    b.lease.release(&*b.gitlab).await;
    let c = t.replica().await;
    assert_eq!(c.active(PROJECT).await.unwrap(), Standing::Active);
}

#[tokio::test]
async fn a_holder_on_another_host_is_waited_for_until_its_time_runs_out() {
    let mut t = crate::tester!().await;
    let iid = t.file(&Issue::demo("light agent, Zendesk Global")).await;
    let sb = &t.sb;
    let a = t.replica().await;
    assert_eq!(a.active(PROJECT).await.unwrap(), Standing::Active);
    // Another host takes the label over (its clock: an hour to go).
    let until = chrono::Utc::now() + chrono::Duration::hours(1);
    {
        let mut w = sb.gitlab.lock();
        let p = w.projects.iter_mut().find(|p| p.path == PROJECT).unwrap();
        let id = p.labels[LEASE];
        p.label_descriptions.insert(
            id,
            format!(
                "holder=elsewhere/1/0000 until={}",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        );
    }
    let b = t.replica().await;
    let r = b.cycle().await;
    assert!(r.outcomes.is_empty(), "{r:?}");
    assert!(
        r.standby.iter().any(|s| s.contains("elsewhere/1/0000")),
        "{r:?}"
    );
    t.expect_no_comment(iid);
    // Its time runs out (plus the allowance for clocks): this host acts.
    {
        let mut w = sb.gitlab.lock();
        let p = w.projects.iter_mut().find(|p| p.path == PROJECT).unwrap();
        let id = p.labels[LEASE];
        let past = chrono::Utc::now() - chrono::Duration::seconds(20);
        p.label_descriptions.insert(
            id,
            format!(
                "holder=elsewhere/1/0000 until={}",
                past.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        );
    }
    let reports = run_until_quiet(&b, 3).await;
    assert!(
        reports
            .iter()
            .flat_map(|r| &r.outcomes)
            .any(|(_, i, o)| *i == iid && *o == Outcome::Done),
        "{reports:?}"
    );
    t.expect_rest();
}
