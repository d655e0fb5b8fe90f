//! Independent issues side by side (`[bot] concurrency`): `run` does not make a
//! short request wait behind a long offboarding, while every Zendesk request
//! still goes through the one budget of the instance. Against the sandbox over
//! HTTP; the order of events is compared, not times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use access_bot::bot::run::{Listening, RunOptions};
use access_bot::demo::bodies;
use access_bot::sandbox::scenario::ZendeskAccount;
use access_bot::sandbox::{Ports, Sandbox};
use tokio::sync::oneshot;

const SECRET: &str = "hook-secret";
const TICKETS: u32 = 5000;

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_agent_filed_during_a_long_offboarding_is_done_long_before_it() {
    let mut sb = Sandbox::start(Ports::default()).await.unwrap();
    sb.config.bot.concurrency = 4;
    sb.gitlab
        .lock()
        .add_user("cquinn", "Casey Quinn", "casey.quinn@gitlab.com");
    sb.seed_zendesk(&ZendeskAccount {
        instance: "global".into(),
        name: "Casey Quinn".into(),
        email: "casey.quinn@gitlab.com".into(),
        role: "agent".into(),
        custom_role: Some("Support Engineer".into()),
        groups: vec!["Support AMER".into()],
        tags: vec![],
        user_fields: Default::default(),
        open_tickets: TICKETS,
        suspended: false,
        last_login_days_ago: None,
    })
    .unwrap();
    let bot = Arc::new(sb.bot().await.unwrap());
    let (tx, rx) = oneshot::channel::<Listening>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let opts = RunOptions {
        webhook: Some((
            "127.0.0.1:0".to_string(),
            access_bot::secret::Secret::new(SECRET),
        )),
        ops: Some("127.0.0.1:0".into()),
        on_listening: Some(tx),
        ..Default::default()
    };
    let task = tokio::spawn(access_bot::bot::run::run(bot, opts, async move {
        let _ = stop_rx.await;
    }));
    let at = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .unwrap()
        .unwrap();
    sb.gitlab
        .lock()
        .hooks
        .push(access_bot::sandbox::gitlab::Hook {
            url: format!("http://{}/webhook", at.webhook.unwrap()),
            token: SECRET.into(),
        });
    // Every Zendesk answer takes a while: the offboarding's hundreds of calls
    // (ticket pages, bulk updates, job polls) add up, a light agent's few do not.
    sb.zd_knobs("global").set_latency(Duration::from_millis(20));

    let (_, author, title, labels, body) =
        bodies().into_iter().find(|b| b.0 == "offboarding").unwrap();
    let leaver = sb.file_issue(author, title, &labels, &body).await.unwrap();
    let zd = sb.zd_knobs("global").clone();
    until(
        "the offboarding starts on the tickets",
        Duration::from_secs(60),
        || zd.count("GET", "/api/v2/users/:id/tickets/assigned") > 0,
    )
    .await;

    let light = sb
        .file_issue(
            "jdoe",
            "Zendesk Global light agent",
            &["support::to do"],
            "- [ ] Zendesk Global: Light Agent\n- Justification for this access: tickets.\n",
        )
        .await
        .unwrap();
    until("the light agent is done", Duration::from_secs(120), || {
        !sb.ticked(light).is_empty()
    })
    .await;
    let bulk_then = zd.count("PUT", "/api/v2/tickets/update_many");
    assert!(
        sb.ticked(leaver).is_empty(),
        "the offboarding was over before the light agent"
    );
    // Long before: not even half of the tickets had been moved.
    let bulk_total = TICKETS.div_ceil(100) as usize;
    assert!(
        bulk_then < bulk_total / 2,
        "{bulk_then} of {bulk_total} bulk updates were done before the light agent"
    );

    // The offboarding goes on to its end, untouched by the light agent.
    until("the offboarding ends", Duration::from_secs(300), || {
        !sb.ticked(leaver).is_empty()
    })
    .await;
    assert_eq!(zd.count("PUT", "/api/v2/tickets/update_many"), bulk_total);
    assert_eq!(zd.rate_limited(), 0);
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
