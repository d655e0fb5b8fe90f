//! Running in production: the operations listener (`/healthz`, `/readyz`,
//! `/metrics`) served by `run` with or without a webhook, health that follows
//! the poll loop, the webhook listener's defences (idle floods, slow headers,
//! oversized bodies) and the coalescing of webhook bursts. Everything runs
//! against the sandbox over HTTP; every listener binds port 0 and the test
//! reads the bound address back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use access_bot::bot::run::{Listening, Metrics, RunOptions};
use access_bot::listen::Limits;
use access_bot::sandbox::faults::Failure;
use access_bot::sandbox::{PROJECT, Ports, Sandbox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const SECRET: &str = "hook-secret";

struct Running {
    at: Listening,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("run stops on shutdown");
        r.unwrap().unwrap();
    }
    fn ops(&self) -> String {
        format!("http://{}", self.at.ops.expect("ops listener"))
    }
    fn hook(&self) -> String {
        format!(
            "http://{}/webhook",
            self.at.webhook.expect("webhook listener")
        )
    }
}

async fn start_run(
    sb: &Sandbox,
    webhook: bool,
    limits: Limits,
    metrics: Option<Arc<std::sync::Mutex<Metrics>>>,
) -> Running {
    let bot = Arc::new(sb.bot().await.unwrap());
    let (tx, rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let opts = RunOptions {
        webhook: webhook.then(|| {
            (
                "127.0.0.1:0".to_string(),
                access_bot::secret::Secret::new(SECRET),
            )
        }),
        ops: Some("127.0.0.1:0".into()),
        metrics,
        on_listening: Some(tx),
        limits,
        ..Default::default()
    };
    let task = tokio::spawn(access_bot::bot::run::run(bot, opts, async move {
        let _ = stop_rx.await;
    }));
    let at = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("run listens")
        .unwrap();
    Running {
        at,
        stop: Some(stop_tx),
        task,
    }
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn wait_for(url: &str, status: u16, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (s, body) = get(url).await;
        if s == status {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "{url} still {s} after {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn issue_hook(iid: u64, by: &str) -> serde_json::Value {
    serde_json::json!({
        "object_kind": "issue",
        "user": {"username": by},
        "project": {"path_with_namespace": PROJECT},
        "object_attributes": {"iid": iid},
    })
}

async fn file_light_agent(sb: &Sandbox, author: &str) -> u64 {
    sb.file_issue(
        author,
        "Zendesk Global light agent",
        &["support::to do"],
        "- [ ] Zendesk Global: Light Agent\n- Justification for this access: tickets.\n",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn run_without_a_webhook_serves_health_readiness_and_metrics() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let iid = file_light_agent(&sb, "jdoe").await;
    let run = start_run(&sb, false, Limits::default(), None).await;
    assert!(run.at.webhook.is_none());
    // Ready once the first poll cycle is done, which also did the work.
    wait_for(
        &format!("{}/readyz", run.ops()),
        200,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        !sb.ticked(iid).is_empty(),
        "the first poll processed #{iid}"
    );
    let (s, body) = get(&format!("{}/healthz", run.ops())).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("ok:"), "{body}");
    let (s, m) = get(&format!("{}/metrics", run.ops())).await;
    assert_eq!(s, 200);
    for needle in [
        "access_bot_ready 1",
        "access_bot_healthy 1",
        "access_bot_poll_cycles_total ",
        "access_bot_issues_processed_total{outcome=\"done\"} 1",
        "access_bot_api_calls_total{system=\"gitlab\",result=\"ok\"}",
        "access_bot_connections{listener=\"ops\"}",
    ] {
        assert!(m.contains(needle), "{needle} missing:\n{m}");
    }
    // No webhook route on the operations listener.
    let r = reqwest::Client::new()
        .post(format!("{}/webhook", run.ops()))
        .json(&issue_hook(iid, "jdoe"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    run.stop().await;
}

#[tokio::test]
async fn healthz_fails_when_no_poll_cycle_completes_and_recovers() {
    let mut sb = Sandbox::start(Ports::default()).await.unwrap();
    sb.config.gitlab.poll_interval = "1s".parse().unwrap();
    let metrics = Arc::new(std::sync::Mutex::new(Metrics::default()));
    metrics.lock().unwrap().unhealthy_after = Duration::from_secs(2);
    let run = start_run(&sb, false, Limits::default(), Some(metrics)).await;
    let health = format!("{}/healthz", run.ops());
    wait_for(
        &format!("{}/readyz", run.ops()),
        200,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(get(&health).await.0, 200);
    // GitLab answers 500 to every listing: polls fail, health goes.
    sb.gitlab_knobs
        .fail_next("GET /api/v4/projects", 100_000, Failure::Status(500));
    let took = wait_for(&health, 503, Duration::from_secs(30)).await;
    let (_, body) = get(&health).await;
    assert!(body.contains("unhealthy"), "{body}");
    eprintln!("/healthz went 503 {took:?} after GitLab started failing");
    // GitLab back: the next good cycle brings it back.
    sb.gitlab_knobs.clear_faults();
    wait_for(&health, 200, Duration::from_secs(30)).await;
    run.stop().await;
}

#[tokio::test]
async fn a_thousand_idle_connections_do_not_starve_the_webhook_or_the_probes() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let iid = file_light_agent(&sb, "jdoe").await;
    let run = start_run(&sb, true, Limits::default(), None).await;
    wait_for(
        &format!("{}/readyz", run.ops()),
        200,
        Duration::from_secs(20),
    )
    .await;
    let addr = run.at.webhook.unwrap();
    // 1,000 connections that never send a byte (the number is capped by the
    // process's descriptor limit, both ends being in this process).
    let t0 = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..1000 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => idle.push(s),
            Err(e) => {
                eprintln!("stopped opening connections at {}: {e}", idle.len());
                break;
            }
        }
    }
    assert!(idle.len() >= 500, "only {} connections opened", idle.len());
    let opened = t0.elapsed();
    let client = reqwest::Client::new();
    // A valid delivery still answers at once...
    let t1 = Instant::now();
    let r = client
        .post(run.hook())
        .header("X-Gitlab-Event", "Issue Hook")
        .header("X-Gitlab-Token", SECRET)
        .json(&issue_hook(iid, "jdoe"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    let hook_took = t1.elapsed();
    assert_eq!(r.status(), 202);
    // ...and so do the probes.
    let t2 = Instant::now();
    let (s, _) = get(&format!("{}/healthz", run.ops())).await;
    let health_took = t2.elapsed();
    assert_eq!(s, 200);
    assert!(
        hook_took < Duration::from_secs(1),
        "webhook took {hook_took:?}"
    );
    assert!(
        health_took < Duration::from_secs(1),
        "healthz took {health_took:?}"
    );
    let (_, m) = get(&format!("{}/metrics", run.ops())).await;
    let value = |name: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
    };
    let open = value("access_bot_connections{listener=\"webhook\"}");
    let evicted =
        value("access_bot_connections_closed_total{listener=\"webhook\",reason=\"evicted_idle\"}");
    assert!(open <= 256, "{open} connections held open");
    assert!(
        evicted as usize >= idle.len() - 256,
        "{evicted} evicted of {}",
        idle.len()
    );
    eprintln!(
        "{} idle connections opened in {opened:?}; then a valid webhook answered in {hook_took:?}, /healthz in {health_took:?}; {open} held open, {evicted} idle ones closed to make room",
        idle.len()
    );
    // The evicted ones were really closed: reading gives end-of-file.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), idle[0].read(&mut buf))
        .await
        .expect("the oldest idle connection was closed");
    assert!(matches!(n, Ok(0) | Err(_)));
    drop(idle);
    run.stop().await;
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_cut_off() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let limits = Limits {
        max_connections: 16,
        header_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(800),
    };
    let run = start_run(&sb, true, limits, None).await;
    let addr = run.at.webhook.unwrap();
    // Half a request line, then silence (slowloris).
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Nothing at all.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    for s in [&mut slow, &mut silent] {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("the bot closes the connection");
        assert!(r.is_ok() || r.is_err());
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    eprintln!("slow-header and silent connections closed after {took:?}");
    // A keep-alive connection that goes quiet after a request is closed too.
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    let t1 = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), kept.read_to_end(&mut rest))
        .await
        .expect("the idle keep-alive connection is closed")
        .ok();
    assert!(t1.elapsed() < Duration::from_secs(3));
    run.stop().await;
}

/// Send raw request headers and read the status line of the answer.
async fn status_of_raw(addr: std::net::SocketAddr, head: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("an answer without the body being sent")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn webhook_bodies_are_read_only_when_authenticated_and_within_the_limit() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let run = start_run(&sb, true, Limits::default(), None).await;
    let addr = run.at.webhook.unwrap();
    let big = access_bot::bot::run::MAX_WEBHOOK_BODY + 1;
    // No token: refused at once, though the announced body never comes.
    let line = status_of_raw(
        addr,
        &format!(
            "POST /webhook HTTP/1.1\r\nHost: x\r\nX-Gitlab-Event: Issue Hook\r\nContent-Length: {big}\r\n\r\n{{"
        ),
    )
    .await;
    assert_eq!(line, "HTTP/1.1 401 Unauthorized");
    // With the token, a body over the limit is refused before it is read.
    let line = status_of_raw(
        addr,
        &format!(
            "POST /webhook HTTP/1.1\r\nHost: x\r\nX-Gitlab-Event: Issue Hook\r\nX-Gitlab-Token: {SECRET}\r\nContent-Length: {big}\r\n\r\n{{"
        ),
    )
    .await;
    assert_eq!(line, "HTTP/1.1 413 Payload Too Large");
    // Chunked (no length announced): cut off at the limit as it streams.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!(
            "POST /webhook HTTP/1.1\r\nHost: x\r\nX-Gitlab-Event: Issue Hook\r\nX-Gitlab-Token: {SECRET}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let chunk = vec![b' '; 256 * 1024];
    let mut sent = 0;
    // The bot stops reading past the limit and answers: our writes may then
    // fail, and the answer may be lost to the reset. The counter says what it did.
    while sent <= big {
        let frame = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk.clone(),
            b"\r\n".to_vec(),
        ]
        .concat();
        if c.write_all(&frame).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = c.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 1024];
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await
        && n > 0
    {
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    let (_, m) = get(&format!("{}/metrics", run.ops())).await;
    assert!(
        m.contains("access_bot_webhooks_total{result=\"too_large\"} 2"),
        "both oversized bodies refused as too large:\n{m}"
    );
    assert!(
        m.contains("access_bot_webhooks_total{result=\"unauthorized\"} 1"),
        "{m}"
    );
    let client = reqwest::Client::new();
    // A normal delivery is fine.
    let r = client
        .post(run.hook())
        .header("X-Gitlab-Event", "Issue Hook")
        .header("X-Gitlab-Token", SECRET)
        .json(&issue_hook(1, "jdoe"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    run.stop().await;
}

#[tokio::test]
async fn a_burst_of_deliveries_becomes_one_look_per_issue() {
    let mut sb = Sandbox::start(Ports::default()).await.unwrap();
    // Only the first poll: every later GitLab call comes from the webhook.
    sb.config.gitlab.poll_interval = "1h".parse().unwrap();
    let mut iids = Vec::new();
    for who in ["jdoe", "srivera", "achen", "bli", "rkim"] {
        iids.push(file_light_agent(&sb, who).await);
    }
    let run = start_run(&sb, true, Limits::default(), None).await;
    wait_for(
        &format!("{}/readyz", run.ops()),
        200,
        Duration::from_secs(30),
    )
    .await;
    sb.clear_logs();
    // 2,000 deliveries for five issues, 20 senders at a time.
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let mut senders = Vec::new();
    for s in 0..20u64 {
        let (client, url, iids) = (client.clone(), run.hook(), iids.clone());
        senders.push(tokio::spawn(async move {
            let mut accepted = 0;
            for i in 0..100u64 {
                let iid = iids[((s * 100 + i) % iids.len() as u64) as usize];
                let r = client
                    .post(&url)
                    .header("X-Gitlab-Event", "Issue Hook")
                    .header("X-Gitlab-Token", SECRET)
                    .json(&issue_hook(iid, "mlee"))
                    .send()
                    .await
                    .unwrap();
                if r.status() == 202 {
                    accepted += 1;
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for s in senders {
        accepted += s.await.unwrap();
    }
    let burst = t0.elapsed();
    assert_eq!(accepted, 2000, "every delivery answered 202");
    // Let the coalesced events run, then count what reached GitLab.
    tokio::time::sleep(access_bot::bot::run::COALESCE_MAX_WAIT + Duration::from_secs(2)).await;
    let log = sb.gitlab_knobs.log();
    let mut looks = Vec::new();
    for iid in &iids {
        let n = log
            .iter()
            .filter(|e| e.method == "GET" && e.path.ends_with(&format!("/issues/{iid}")))
            .count();
        looks.push(n);
    }
    let total = log.len();
    eprintln!(
        "2,000 deliveries in {burst:?} for {} issues: issue reads per issue {looks:?}, {total} GitLab calls in all",
        iids.len()
    );
    // The first delivery is looked at at once, the rest of the burst once
    // more: one look more for each wait cap the burst outlasted.
    let cap = access_bot::bot::run::COALESCE_MAX_WAIT;
    let most = 2 + (burst.as_millis() / cap.as_millis()) as usize;
    assert!(
        looks.iter().all(|n| (1..=most).contains(n)),
        "each issue looked at {most} times at most in a burst of {burst:?}: {looks:?}"
    );
    assert!(total <= 10 * iids.len(), "{total} GitLab calls");
    let (_, m) = get(&format!("{}/metrics", run.ops())).await;
    assert!(
        m.contains("access_bot_webhooks_total{result=\"coalesced\"}"),
        "{m}"
    );
    run.stop().await;
}
