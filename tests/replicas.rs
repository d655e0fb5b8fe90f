//! One writer per project across hosts: replicas on separate databases agree
//! through a GitLab label (who acts, until when), end to end over HTTP.

use std::sync::Arc;

use access_bot::bot::lease::Standing;
use access_bot::bot::{Bot, Outcome};
use access_bot::demo::bodies;
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::{PROJECT, Ports, Sandbox};
use access_bot::store::Store;

const LEASE: &str = "access-bot/lease";

async fn file(sb: &Sandbox, name: &str) -> u64 {
    let (_, author, title, labels, body) = bodies()
        .into_iter()
        .find(|b| b.0 == name)
        .expect("demo body");
    sb.file_issue(author, title, &labels, &body).await.unwrap()
}

/// A bot on a database of its own (a replica on another host or volume).
async fn replica(sb: &Sandbox) -> Bot {
    let path = std::env::temp_dir().join(format!("ab-replica-{}.db", rand::random::<u64>()));
    sb.bot_with_store(Arc::new(Store::open(&path).unwrap()))
        .await
        .unwrap()
}

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
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let mut iids = Vec::new();
    for name in [
        "role-based entitlement",
        "light agent, Zendesk Global",
        "light agent, Zendesk US Federal",
    ] {
        iids.push(file(&sb, name).await);
    }
    let a = replica(&sb).await;
    let b = replica(&sb).await;
    // Both start at the same moment.
    let (ra, rb) = tokio::join!(a.cycle(), b.cycle());
    let standing_by = [&ra, &rb].iter().filter(|r| !r.standby.is_empty()).count();
    assert_eq!(standing_by, 1, "exactly one stands by: {ra:?} {rb:?}");
    for _ in 0..3 {
        let (_, _) = tokio::join!(a.cycle(), b.cycle());
    }
    assert!(
        duplicated_comments(&sb, &iids).is_empty(),
        "{:?}",
        duplicated_comments(&sb, &iids)
    );
    assert_eq!(sb.smtp.messages().len(), 1, "the People team's e-mail once");
    let d = lease_description(&sb);
    let holder = if ra.standby.is_empty() { &a } else { &b };
    assert!(d.contains(&holder.lease.id), "{d}");
}

#[tokio::test]
async fn a_standby_takes_over_at_once_when_the_holder_is_gone_or_gives_it_back() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let iid = file(&sb, "role-based entitlement").await;
    let a = replica(&sb).await;
    assert_eq!(a.active(PROJECT).await.unwrap(), Standing::Active);
    let b = replica(&sb).await;
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
    assert_eq!(
        sb.bot_comments(iid)
            .iter()
            .filter(|c| c.body.contains("access-bot: done"))
            .count(),
        1
    );
    // A clean shutdown gives it back: the next replica acts at once.
    b.lease.release(&*b.gitlab).await;
    let c = replica(&sb).await;
    assert_eq!(c.active(PROJECT).await.unwrap(), Standing::Active);
}

#[tokio::test]
async fn a_holder_on_another_host_is_waited_for_until_its_time_runs_out() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let iid = file(&sb, "light agent, Zendesk Global").await;
    let a = replica(&sb).await;
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
    let b = replica(&sb).await;
    let r = b.cycle().await;
    assert!(r.outcomes.is_empty(), "{r:?}");
    assert!(
        r.standby.iter().any(|s| s.contains("elsewhere/1/0000")),
        "{r:?}"
    );
    assert!(sb.bot_comments(iid).is_empty());
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
}
