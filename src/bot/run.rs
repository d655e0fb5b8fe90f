//! The daemon: polls on the configured schedule, takes GitLab webhooks as
//! immediate events, serves `/healthz` and `/metrics`, and stops cleanly on
//! SIGINT/SIGTERM after the event in flight.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use crate::config::PollSchedule;
use crate::secret::Secret;

use super::{Bot, CycleReport, Event};

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    outcomes: BTreeMap<String, u64>,
    cycles: u64,
    poll_errors: u64,
    webhooks: BTreeMap<String, u64>,
    last_poll: Option<Instant>,
}

impl Metrics {
    fn record(&mut self, r: &CycleReport) {
        for (_, _, o) in &r.outcomes {
            let name = serde_json::to_value(o)
                .ok()
                .and_then(|v| v["outcome"].as_str().map(String::from))
                .unwrap_or_default();
            *self.outcomes.entry(name).or_insert(0) += 1;
        }
        self.poll_errors += r.errors.len() as u64;
    }

    fn render(&self) -> String {
        let mut s = String::from(
            "# HELP access_bot_issues_processed_total Issues processed, by outcome.\n# TYPE access_bot_issues_processed_total counter\n",
        );
        for (k, v) in &self.outcomes {
            s.push_str(&format!(
                "access_bot_issues_processed_total{{outcome=\"{k}\"}} {v}\n"
            ));
        }
        s.push_str(&format!(
            "# TYPE access_bot_poll_cycles_total counter\naccess_bot_poll_cycles_total {}\n# TYPE access_bot_poll_errors_total counter\naccess_bot_poll_errors_total {}\n",
            self.cycles, self.poll_errors
        ));
        s.push_str("# TYPE access_bot_webhooks_total counter\n");
        for (k, v) in &self.webhooks {
            s.push_str(&format!(
                "access_bot_webhooks_total{{result=\"{k}\"}} {v}\n"
            ));
        }
        if let Some(t) = self.last_poll {
            s.push_str(&format!(
                "# HELP access_bot_poll_lag_seconds Seconds since the last completed poll.\n# TYPE access_bot_poll_lag_seconds gauge\naccess_bot_poll_lag_seconds {:.3}\n",
                t.elapsed().as_secs_f64()
            ));
        }
        s
    }
}

#[derive(Clone)]
struct WebState {
    tx: mpsc::Sender<Event>,
    /// Events the bot itself caused (its comments and edits) are not worth a look.
    bot_username: String,
    token: Option<Secret>,
    projects: Vec<String>,
    metrics: Arc<StdMutex<Metrics>>,
}

/// The webhook, health and metrics routes.
fn router(state: WebState) -> Router {
    Router::new()
        .route("/webhook", post(webhook))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(s): State<WebState>| async move {
                let mut m = s.metrics.lock().map(|m| m.render()).unwrap_or_default();
                m.push_str(&crate::metrics::render());
                ([("content-type", "text/plain; version=0.0.4")], m)
            }),
        )
        .with_state(state)
}

async fn webhook(State(s): State<WebState>, headers: HeaderMap, body: Bytes) -> Response {
    let count = |k: &str| {
        if let Ok(mut m) = s.metrics.lock() {
            *m.webhooks.entry(k.to_string()).or_insert(0) += 1;
        }
    };
    let given = headers
        .get("x-gitlab-token")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let ok = s
        .token
        .as_ref()
        .is_some_and(|t| bool::from(t.expose().as_bytes().ct_eq(&given)));
    if !ok {
        tracing::warn!(
            present = !given.is_empty(),
            "webhook with a wrong or missing X-Gitlab-Token rejected"
        );
        count("unauthorized");
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    let kind = headers
        .get("x-gitlab-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !matches!(
        kind,
        "Issue Hook" | "Confidential Issue Hook" | "Note Hook" | "Confidential Note Hook"
    ) {
        count("ignored");
        return (StatusCode::OK, "ignored").into_response();
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if v["user"]["username"]
        .as_str()
        .is_some_and(|u| u.eq_ignore_ascii_case(&s.bot_username))
    {
        count("own");
        return (StatusCode::OK, "own event").into_response();
    }
    let iid = v["object_attributes"]["iid"]
        .as_u64()
        .filter(|_| v["object_kind"] != "note")
        .or_else(|| v["issue"]["iid"].as_u64());
    let project = v["project"]["path_with_namespace"]
        .as_str()
        .map(String::from)
        .or_else(|| v["project"]["id"].as_u64().map(|i| i.to_string()));
    match (iid, project) {
        (Some(iid), Some(p)) if s.projects.contains(&p) => {
            // Answer at once; the work happens in the loop (GitLab disables slow hooks).
            let _ = s.tx.try_send(Event::Issue { project: p, iid });
            count("accepted");
            (StatusCode::ACCEPTED, "queued").into_response()
        }
        _ => {
            count("ignored");
            (StatusCode::OK, "ignored").into_response()
        }
    }
}

fn next_delay(schedule: &PollSchedule) -> Duration {
    match schedule {
        PollSchedule::Every(d) => *d,
        PollSchedule::Cron(c) => c
            .upcoming(chrono::Utc)
            .next()
            .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(60)),
    }
}

/// Send `event` at every time of a cron expression (validated with the config).
fn cron_ticker(
    tx: &mpsc::Sender<Event>,
    cron: Option<&str>,
    event: Event,
) -> Option<tokio::task::JoinHandle<()>> {
    let schedule = PollSchedule::Cron(Box::new(cron?.parse::<cron::Schedule>().ok()?));
    let tx = tx.clone();
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(next_delay(&schedule)).await;
            if tx.send(event.clone()).await.is_err() {
                return;
            }
        }
    }))
}

/// Options of the daemon.
pub struct RunOptions {
    /// Webhook listener (`[webhook] listen`), with the secret.
    pub webhook: Option<(String, Secret)>,
}

/// Serve the webhook endpoint on a bound listener; returns the address.
pub async fn serve_web(
    listen: &str,
    token: Option<Secret>,
    bot_username: &str,
    projects: Vec<String>,
    tx: mpsc::Sender<Event>,
    metrics: Arc<StdMutex<Metrics>>,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = router(WebState {
        tx,
        bot_username: bot_username.to_string(),
        token,
        projects,
        metrics,
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// Run until `shutdown` resolves. Polls at start, then on schedule; webhook
/// events are handled as they come, without waiting for the next poll.
pub async fn run(
    bot: Arc<Bot>,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let schedule = bot.cfg.poll_schedule().map_err(|e| anyhow::anyhow!(e))?;
    let (tx, mut rx) = mpsc::channel::<Event>(1024);
    let metrics = Arc::new(StdMutex::new(Metrics::default()));
    let mut web = None;
    if let Some((listen, token)) = &opts.webhook {
        let (addr, task) = serve_web(
            listen,
            Some(token.clone()),
            &bot.cfg.gitlab.bot_username,
            bot.cfg.gitlab.projects.clone(),
            tx.clone(),
            metrics.clone(),
        )
        .await?;
        tracing::info!(%addr, "serving /webhook, /healthz and /metrics");
        web = Some(task);
    }
    let ticker = {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                if tx.send(Event::Poll).await.is_err() {
                    return;
                }
                tokio::time::sleep(next_delay(&schedule)).await;
            }
        })
    };
    // The seat review and the digest run on their own cron schedules, as events like the rest.
    let seat_ticker = cron_ticker(
        &tx,
        bot.cfg
            .seat_audit
            .as_ref()
            .and_then(|s| s.schedule.as_deref()),
        Event::SeatAudit,
    );
    let digest_ticker = cron_ticker(
        &tx,
        bot.cfg.notify.as_ref().and_then(|n| n.digest.as_deref()),
        Event::Digest,
    );
    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => break,
            e = rx.recv() => match e { Some(e) => e, None => break },
        };
        let is_poll = event == Event::Poll;
        // The event in flight finishes even if a signal arrives meanwhile.
        let report = bot.handle(event).await;
        if let Ok(mut m) = metrics.lock() {
            m.record(&report);
            if is_poll {
                m.cycles += 1;
                m.last_poll = Some(Instant::now());
            }
        }
    }
    tracing::info!("shutting down");
    ticker.abort();
    for t in [seat_ticker, digest_ticker].into_iter().flatten() {
        t.abort();
    }
    if let Some(w) = web {
        w.abort();
    }
    Ok(())
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
