//! The daemon: polls on the configured schedule, takes GitLab webhooks as
//! immediate events, runs the stale scan, the expiry check, the merge-request
//! follow-ups, the seat review and the digest as events on schedules of their
//! own, serves `/healthz`, `/readyz` and `/metrics` on an
//! operations listener of its own, and stops cleanly on SIGINT/SIGTERM after
//! the events in flight.
//!
//! The webhook listener is public (GitLab must reach it) and hardened (see
//! [`crate::listen`]); the operations listener can stay private. A burst of
//! deliveries for one issue is coalesced: a look at once, and one more when
//! the burst is over.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::{Config, PollSchedule, Zone};
use crate::listen::{Limits, ListenerStats};
use crate::secret::Secret;

use super::{Bot, Clock, CycleReport, Event};

/// A webhook body is read only after its token checked out, and only up to
/// this (an issue description is at most 1,000,000 characters; an update hook
/// carries it up to three times, as current and as previous and current
/// change, escaped). Larger deliveries are refused; polling still sees the issue.
pub const MAX_WEBHOOK_BODY: usize = 3 * 1024 * 1024;
/// An authenticated sender has this long to send the body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Deliveries for one issue within the wait cap after a look wait at least
/// this long...
pub const COALESCE_SETTLE: Duration = Duration::from_millis(150);
/// ...and until the last look is this old; an issue without a look for this
/// long is looked at on its first delivery.
pub const COALESCE_MAX_WAIT: Duration = Duration::from_secs(2);
/// Issues waiting at most; more are dropped (polling picks them up).
const MAX_PENDING: usize = 10_000;

/// Counters and health for `/metrics`, `/healthz` and `/readyz`.
pub struct Metrics {
    outcomes: BTreeMap<String, u64>,
    cycles: u64,
    poll_errors: u64,
    webhooks: BTreeMap<String, u64>,
    last_poll: Option<Instant>,
    /// The last poll cycle in which every project could be listed.
    last_good_poll: Option<Instant>,
    started: Instant,
    /// Start-up work done (connected, first poll cycle finished).
    ready: bool,
    /// Start-up work still running behind the listeners (`run`'s warm-up).
    warming: bool,
    /// `/healthz` fails after this long without a good poll cycle.
    pub unhealthy_after: Duration,
    listeners: Vec<(&'static str, Arc<ListenerStats>)>,
    /// The status page, once the bot is connected and `[status]` enables it.
    pub status: Option<Arc<super::status::StatusPage>>,
    /// Open issues stuck longer than `[status] stuck_after`, as last computed.
    pub stuck_issues: Option<usize>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            outcomes: BTreeMap::new(),
            cycles: 0,
            poll_errors: 0,
            webhooks: BTreeMap::new(),
            last_poll: None,
            last_good_poll: None,
            started: Instant::now(),
            ready: false,
            warming: false,
            unhealthy_after: Duration::from_secs(300),
            listeners: Vec::new(),
            status: None,
            stuck_issues: None,
        }
    }
}

impl Metrics {
    /// Fresh counters with the health threshold of `cfg`.
    pub fn for_config(cfg: &Config) -> Arc<StdMutex<Metrics>> {
        Arc::new(StdMutex::new(Metrics {
            unhealthy_after: cfg.unhealthy_after(),
            ..Metrics::default()
        }))
    }

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

    /// A poll cycle ended; `ok` when every project could be listed.
    pub fn poll_done(&mut self, ok: bool) {
        self.cycles += 1;
        self.last_poll = Some(Instant::now());
        if ok {
            self.last_good_poll = Some(Instant::now());
        }
    }

    pub fn set_ready(&mut self) {
        self.ready = true;
    }

    fn is_ready(&self) -> bool {
        self.ready && !self.warming
    }

    fn count_webhook(&mut self, k: &str) {
        *self.webhooks.entry(k.to_string()).or_insert(0) += 1;
    }

    /// `Ok` with a short status, or `Err` with why not.
    pub fn health(&self) -> Result<String, String> {
        let since = self.last_good_poll.unwrap_or(self.started).elapsed();
        let what = if self.last_good_poll.is_some() {
            "since the last good poll cycle"
        } else {
            "since start, and no poll cycle completed yet"
        };
        if since > self.unhealthy_after {
            Err(format!(
                "unhealthy: {}s {what} (limit {}s)\n",
                since.as_secs(),
                self.unhealthy_after.as_secs()
            ))
        } else {
            Ok(format!("ok: {}s {what}\n", since.as_secs()))
        }
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
        s.push_str("# HELP access_bot_webhooks_total Webhook deliveries, by what became of them.\n# TYPE access_bot_webhooks_total counter\n");
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
        s.push_str(&format!(
            "# TYPE access_bot_ready gauge\naccess_bot_ready {}\n# TYPE access_bot_healthy gauge\naccess_bot_healthy {}\n",
            u8::from(self.is_ready()),
            u8::from(self.health().is_ok())
        ));
        if let Some(n) = self.stuck_issues {
            s.push_str(&format!(
                "# HELP access_bot_stuck_issues Open issues with no progress for longer than [status] stuck_after.\n# TYPE access_bot_stuck_issues gauge\naccess_bot_stuck_issues {n}\n"
            ));
        }
        if !self.listeners.is_empty() {
            s.push_str("# HELP access_bot_connections Connections of the bot's listeners.\n# TYPE access_bot_connections gauge\n");
            for (name, l) in &self.listeners {
                s.push_str(&format!(
                    "access_bot_connections{{listener=\"{name}\"}} {}\n",
                    l.open.load(Ordering::Relaxed)
                ));
            }
            s.push_str("# HELP access_bot_connections_closed_total Connections the bot closed or refused, by reason.\n# TYPE access_bot_connections_closed_total counter\n");
            for (name, l) in &self.listeners {
                for (reason, n) in [
                    ("evicted_idle", l.evicted.load(Ordering::Relaxed)),
                    ("idle_timeout", l.idle_closed.load(Ordering::Relaxed)),
                    ("refused_busy", l.refused.load(Ordering::Relaxed)),
                ] {
                    s.push_str(&format!(
                        "access_bot_connections_closed_total{{listener=\"{name}\",reason=\"{reason}\"}} {n}\n"
                    ));
                }
            }
        }
        s
    }
}

fn lock(m: &StdMutex<Metrics>) -> std::sync::MutexGuard<'_, Metrics> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Webhook deliveries becoming events. The first delivery for an issue that
/// had no look for a while (the wait cap) is handed on at once: a person who
/// applied an approval sees it acted on without delay. Deliveries within the
/// wait cap after a look are a burst: they are merged into one more look, the
/// wait cap after the last one (and the settle window after the first of
/// them), so a burst of any shape costs one look per wait cap.
pub struct Coalescer {
    pending: StdMutex<HashMap<(String, u64), Slot>>,
    wake: Notify,
    settle: Duration,
    max_wait: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    /// To be handed on at `due`.
    Waiting { due: Instant },
    /// Handed on at this instant: deliveries within the wait cap after it
    /// wait for the burst to end.
    Sent(Instant),
}

/// What became of an offered delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The first for its issue: it will be looked at.
    Queued,
    /// Merged with one already waiting for the same issue.
    Coalesced,
    /// Too many issues waiting; polling will pick it up.
    Dropped,
}

impl Coalescer {
    pub fn new(settle: Duration, max_wait: Duration) -> Arc<Coalescer> {
        Arc::new(Coalescer {
            pending: StdMutex::new(HashMap::new()),
            wake: Notify::new(),
            settle,
            max_wait,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Slot>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn offer(&self, project: String, iid: u64) -> Offer {
        let now = Instant::now();
        let mut p = self.lock();
        let key = (project, iid);
        let offer = match p.get(&key).copied() {
            // A look not yet handed on covers this delivery too.
            Some(Slot::Waiting { .. }) => Offer::Coalesced,
            Some(Slot::Sent(at)) if now.duration_since(at) < self.max_wait => {
                // Looks at one issue are the wait cap apart, however the
                // burst's deliveries are spread (a loaded sender has gaps).
                p.insert(
                    key,
                    Slot::Waiting {
                        due: (at + self.max_wait).max(now + self.settle),
                    },
                );
                Offer::Coalesced
            }
            _ => {
                if p.len() >= MAX_PENDING {
                    let cap = self.max_wait;
                    p.retain(|_, s| !matches!(s, Slot::Sent(at) if now.duration_since(*at) >= cap));
                    if p.len() >= MAX_PENDING {
                        return Offer::Dropped;
                    }
                }
                p.insert(key, Slot::Waiting { due: now });
                Offer::Queued
            }
        };
        drop(p);
        self.wake.notify_one();
        offer
    }

    /// Hand each issue to `tx` when it is due; ends when `tx` closes.
    pub async fn dispatch(self: Arc<Self>, tx: mpsc::Sender<Event>) {
        loop {
            let now = Instant::now();
            let (due, next) = {
                let mut p = self.lock();
                // Issues handed on long enough ago need no memory of it.
                let cap = self.max_wait;
                p.retain(|_, s| !matches!(s, Slot::Sent(at) if now.duration_since(*at) >= cap));
                let due: Vec<(String, u64)> = p
                    .iter()
                    .filter(|(_, s)| matches!(s, Slot::Waiting { due, .. } if *due <= now))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &due {
                    p.insert(k.clone(), Slot::Sent(now));
                }
                let next = p
                    .values()
                    .map(|s| match s {
                        Slot::Waiting { due, .. } => *due,
                        Slot::Sent(at) => *at + cap,
                    })
                    .min();
                (due, next)
            };
            for (project, iid) in due {
                if tx.send(Event::Issue { project, iid }).await.is_err() {
                    return;
                }
            }
            match next {
                Some(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t.into()) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        }
    }
}

#[derive(Clone)]
struct WebState {
    /// Events the bot itself caused (its comments and edits) are not worth a look.
    bot_username: String,
    token: Option<Secret>,
    projects: Vec<String>,
    metrics: Arc<StdMutex<Metrics>>,
    coalescer: Arc<Coalescer>,
}

/// `/webhook` alone: the public listener.
fn webhook_router(state: WebState) -> Router {
    Router::new()
        .route("/webhook", post(webhook))
        .with_state(state)
}

/// `/healthz`, `/readyz` and `/metrics`: the operations listener.
pub fn ops_router(metrics: Arc<StdMutex<Metrics>>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|State(m): State<Arc<StdMutex<Metrics>>>| async move {
                match lock(&m).health() {
                    Ok(s) => (StatusCode::OK, s),
                    Err(s) => (StatusCode::SERVICE_UNAVAILABLE, s),
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(m): State<Arc<StdMutex<Metrics>>>| async move {
                if lock(&m).is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Arc<StdMutex<Metrics>>>| async move {
                super::status::refresh_stuck(&m);
                let mut text = lock(&m).render();
                text.push_str(&crate::metrics::render());
                ([("content-type", "text/plain; version=0.0.4")], text)
            }),
        )
        .with_state(metrics.clone())
        .merge(super::status::router(metrics))
}

async fn webhook(State(s): State<WebState>, req: Request) -> Response {
    let count = |k: &str| lock(&s.metrics).count_webhook(k);
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    // The token is checked before a byte of the body is read: an
    // unauthenticated sender cannot make the bot buffer anything.
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
    // Refused before reading: a declared length over the limit.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_WEBHOOK_BODY as u64) {
        count("too_large");
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
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
    let bytes = match tokio::time::timeout(
        BODY_TIMEOUT,
        axum::body::to_bytes(Body::new(body), MAX_WEBHOOK_BODY),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "webhook body refused (over {MAX_WEBHOOK_BODY} bytes or broken)");
            count("too_large");
            return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
        }
        Err(_) => {
            count("timeout");
            return (StatusCode::REQUEST_TIMEOUT, "body too slow").into_response();
        }
    };
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "webhook body is not JSON");
            count("bad_json");
            return (StatusCode::BAD_REQUEST, "not JSON").into_response();
        }
    };
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
            match s.coalescer.offer(p, iid) {
                Offer::Queued => count("accepted"),
                Offer::Coalesced => count("coalesced"),
                Offer::Dropped => {
                    tracing::warn!(
                        iid,
                        "too many issues waiting; polling will pick this one up"
                    );
                    count("dropped");
                }
            }
            (StatusCode::ACCEPTED, "queued").into_response()
        }
        _ => {
            count("ignored");
            (StatusCode::OK, "ignored").into_response()
        }
    }
}

fn next_delay(schedule: &PollSchedule, tz: Zone, clock: &Clock) -> Duration {
    match schedule {
        PollSchedule::Every(d) => *d,
        PollSchedule::Cron(c) => {
            let now = clock.now();
            tz.upcoming_after(c, now, 1)
                .first()
                .and_then(|t| (*t - now).to_std().ok())
                .unwrap_or(Duration::from_secs(60))
        }
    }
}

/// Send `event` at every time of a cron schedule.
fn cron_ticker(
    tx: &mpsc::Sender<Event>,
    cron: Option<&crate::config::Cron>,
    tz: Zone,
    clock: &Arc<Clock>,
    event: Event,
) -> Option<tokio::task::JoinHandle<()>> {
    let schedule = PollSchedule::Cron(Box::new(cron?.schedule().clone()));
    let (tx, clock) = (tx.clone(), clock.clone());
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(next_delay(&schedule, tz, &clock)).await;
            if tx.send(event.clone()).await.is_err() {
                return;
            }
        }
    }))
}

/// Send `event` now and then every `every`: at least a second apart (`0s`,
/// "at every turn" to the sandbox, must not spin).
fn interval_ticker(
    tx: &mpsc::Sender<Event>,
    every: Duration,
    event: Event,
) -> tokio::task::JoinHandle<()> {
    let every = every.max(Duration::from_secs(1));
    let tx = tx.clone();
    tokio::spawn(async move {
        loop {
            if tx.send(event.clone()).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// The work on schedules of its own besides the poll, each with its interval:
/// the expiry check, the stale scan and (with `[support_team]`) the merge
/// request follow-ups.
pub fn periodic_events(cfg: &Config) -> Vec<(Event, Duration)> {
    let mut events = vec![
        (Event::Expiries, cfg.lifecycle.expiry_check_every.get()),
        (Event::StaleScan, cfg.lifecycle.stale_scan_every.get()),
    ];
    if let Some(st) = &cfg.support_team {
        events.push((Event::MergeRequests, st.check_every.get()));
    }
    events
}

/// Where `run` listens, once it does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Listening {
    pub ops: Option<SocketAddr>,
    pub webhook: Option<SocketAddr>,
}

/// Options of the daemon.
#[derive(Default)]
pub struct RunOptions {
    /// Webhook listener (`[webhook] listen`), with the secret.
    pub webhook: Option<(String, Secret)>,
    /// Operations listener to bind (`[ops] listen`); `None` when it is
    /// already served (see [`serve_ops`]) or not wanted.
    pub ops: Option<String>,
    /// An operations listener already serving `metrics`, for the start line.
    pub ops_addr: Option<SocketAddr>,
    /// Health and counters shared with an operations listener started earlier.
    pub metrics: Option<Arc<StdMutex<Metrics>>>,
    /// Told the bound addresses once listening (tests bind port 0).
    pub on_listening: Option<oneshot::Sender<Listening>>,
    /// Connection limits of both listeners.
    pub limits: Limits,
    /// The status page's secret (`[status] token_env`), when `[status]` enables it.
    pub status_token: Option<Secret>,
}

/// Serve the operations endpoints on `listen`; returns the bound address.
pub async fn serve_ops(
    listen: &str,
    metrics: Arc<StdMutex<Metrics>>,
    limits: Limits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = crate::listen::bind(listen).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(ListenerStats::default());
    lock(&metrics).listeners.push(("ops", stats.clone()));
    let task = crate::listen::serve(listener, ops_router(metrics), limits, stats);
    Ok((addr, task))
}

/// Serve the webhook alone on a listener (the operations endpoints live on
/// their own, private one); returns the address. Events go to `tx`, coalesced.
pub async fn serve_web(
    listen: &str,
    token: Option<Secret>,
    bot_username: &str,
    projects: Vec<String>,
    tx: mpsc::Sender<Event>,
    metrics: Arc<StdMutex<Metrics>>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (addr, task, _) = serve_webhook(
        listen,
        token,
        bot_username,
        projects,
        tx,
        metrics,
        false,
        Limits::default(),
    )
    .await?;
    Ok((addr, task))
}

#[allow(clippy::too_many_arguments)]
async fn serve_webhook(
    listen: &str,
    token: Option<Secret>,
    bot_username: &str,
    projects: Vec<String>,
    tx: mpsc::Sender<Event>,
    metrics: Arc<StdMutex<Metrics>>,
    with_ops: bool,
    limits: Limits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>, Arc<Coalescer>)> {
    let listener = crate::listen::bind(listen).await?;
    let addr = listener.local_addr()?;
    let coalescer = Coalescer::new(COALESCE_SETTLE, COALESCE_MAX_WAIT);
    let stats = Arc::new(ListenerStats::default());
    lock(&metrics).listeners.push(("webhook", stats.clone()));
    let mut app = webhook_router(WebState {
        bot_username: bot_username.to_string(),
        token,
        projects,
        metrics: metrics.clone(),
        coalescer: coalescer.clone(),
    });
    if with_ops {
        app = app.merge(ops_router(metrics));
    }
    let server = crate::listen::serve(listener, app, limits, stats);
    let dispatcher = tokio::spawn(coalescer.clone().dispatch(tx));
    let task = tokio::spawn(async move {
        // Both stop together: aborting this task aborts neither by itself.
        struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                for t in &self.0 {
                    t.abort();
                }
            }
        }
        let guard = AbortOnDrop(vec![server, dispatcher]);
        std::future::pending::<()>().await;
        drop(guard);
    });
    Ok((addr, task, coalescer))
}

/// One line for the log at start: what the bot watches, how often, where it listens.
fn start_line(cfg: &Config, listening: &Listening, rehearsing: bool) -> String {
    let tz = cfg
        .bot
        .time_zone
        .clone()
        .unwrap_or_else(|| "UTC".to_string());
    let poll = match cfg.poll_schedule() {
        PollSchedule::Every(d) => format!("every {}s", d.as_secs()),
        PollSchedule::Cron(_) => format!("on cron {:?} ({tz})", cfg.gitlab.poll_interval.as_str()),
    };
    let mut s = format!(
        "access-bot {}{}: watching {} on {} (labels: {}), polling {poll}",
        env!("CARGO_PKG_VERSION"),
        if rehearsing { " (dry run)" } else { "" },
        cfg.gitlab.projects.join(", "),
        cfg.gitlab.url,
        cfg.poll_labels().join(", "),
    );
    s.push_str(&match listening.webhook {
        Some(a) => format!("; webhook on http://{a}/webhook"),
        None => "; no webhook".to_string(),
    });
    if let Some(a) = listening.ops {
        s.push_str(&format!("; ops on http://{a} (/healthz /readyz /metrics)"));
        if cfg.status.enabled {
            s.push_str(&format!("; status page on http://{a}/status"));
        }
    }
    for (event, every) in periodic_events(cfg) {
        let what = match event {
            Event::Expiries => "expiry check",
            Event::StaleScan => "stale scan",
            _ => "Support Team merge requests",
        };
        s.push_str(&format!("; {what} every {}s", every.as_secs().max(1)));
    }
    if let Some(c) = cfg.seat_audit.as_ref().and_then(|s| s.schedule.as_ref()) {
        s.push_str(&format!("; seat review on cron {:?}", c.as_str()));
    }
    if let Some(c) = cfg.notify.as_ref().and_then(|n| n.digest.as_ref()) {
        s.push_str(&format!("; digest on cron {:?}", c.as_str()));
    }
    s
}

/// The listeners of `run`, bound and answering, and the events they have
/// queued meanwhile. Bound before the bot connects, so that probes get an
/// answer and webhook deliveries are queued while start-up work goes on.
pub struct Listeners {
    listening: Listening,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
    metrics: Arc<StdMutex<Metrics>>,
}

/// Bind the webhook and operations listeners `opts` names, from the
/// configuration alone (no connection to anything is needed for them).
pub async fn listen(cfg: &Config, opts: &RunOptions) -> anyhow::Result<Listeners> {
    // Checked before anything listens: enabled without its secret is a configuration error.
    if cfg.status.enabled && opts.status_token.is_none() {
        anyhow::bail!(
            "[status] is enabled but its secret ({}) was not given",
            cfg.status.token_env
        );
    }
    let (tx, rx) = mpsc::channel::<Event>(1024);
    let metrics = opts
        .metrics
        .clone()
        .unwrap_or_else(|| Metrics::for_config(cfg));
    let mut listening = Listening {
        ops: opts.ops_addr,
        webhook: None,
    };
    let mut tasks = Vec::new();
    let same = match (&opts.ops, &opts.webhook) {
        (Some(o), Some((w, _))) => o == w,
        _ => false,
    };
    if let Some((listen, token)) = &opts.webhook {
        let (addr, task, _) = serve_webhook(
            listen,
            Some(token.clone()),
            &cfg.gitlab.bot_username,
            cfg.gitlab.projects.clone(),
            tx.clone(),
            metrics.clone(),
            same,
            opts.limits,
        )
        .await?;
        listening.webhook = Some(addr);
        if same {
            listening.ops = Some(addr);
        }
        tasks.push(task);
    }
    if let Some(listen) = opts.ops.as_deref().filter(|_| !same) {
        let (addr, task) = serve_ops(listen, metrics.clone(), opts.limits).await?;
        listening.ops = Some(addr);
        tasks.push(task);
    }
    Ok(Listeners {
        listening,
        tasks,
        tx,
        rx,
        metrics,
    })
}

/// Run until `shutdown` resolves. Polls at start, then on schedule; webhook
/// events are handled as they come, without waiting for the next poll; the
/// periodic events start after the first poll ([`periodic_events`]).
pub async fn run(
    bot: Arc<Bot>,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listeners = listen(&bot.cfg, &opts).await?;
    run_listening(bot, opts, listeners, shutdown).await
}

/// [`run`] on listeners bound earlier by [`listen`].
pub async fn run_listening(
    bot: Arc<Bot>,
    opts: RunOptions,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let schedule = bot.cfg.poll_schedule().clone();
    let tz = bot.cfg.time_zone().map_err(|e| anyhow::anyhow!(e))?;
    let Listeners {
        listening,
        mut tasks,
        tx,
        mut rx,
        metrics,
    } = listeners;
    let status_page = match (bot.cfg.status.enabled, opts.status_token.clone()) {
        (true, Some(token)) => Some(Arc::new(super::status::StatusPage::new(bot.clone(), token))),
        _ => None,
    };
    // Registered before the start line announces the page.
    if let Some(page) = status_page {
        if listening.ops.is_some_and(|a| !a.ip().is_loopback()) {
            tracing::warn!(
                ops = ?listening.ops,
                "the status page shows personal data and the ops listener is not on loopback: only its credentials protect it"
            );
        }
        lock(&metrics).status = Some(page);
    }
    tracing::info!(
        ops = ?listening.ops,
        webhook = ?listening.webhook,
        "{}",
        start_line(&bot.cfg, &listening, bot.rehearsing())
    );
    if let Some(ch) = opts.on_listening {
        let _ = ch.send(listening);
    }
    // Start-up work that need not hold the listeners back: /readyz waits for it.
    lock(&metrics).warming = true;
    tasks.push({
        let (bot, metrics) = (bot.clone(), metrics.clone());
        tokio::spawn(async move {
            bot.warm_up().await;
            lock(&metrics).warming = false;
        })
    });
    tasks.push({
        let (tx, clock) = (tx.clone(), bot.clock.clone());
        tokio::spawn(async move {
            loop {
                if tx.send(Event::Poll).await.is_err() {
                    return;
                }
                tokio::time::sleep(next_delay(&schedule, tz, &clock)).await;
            }
        })
    });
    // The seat review and the digest run on their own cron schedules, as events like the rest.
    tasks.extend(cron_ticker(
        &tx,
        bot.cfg
            .seat_audit
            .as_ref()
            .and_then(|s| s.schedule.as_ref()),
        tz,
        &bot.clock,
        Event::SeatAudit,
    ));
    tasks.extend(cron_ticker(
        &tx,
        bot.cfg.notify.as_ref().and_then(|n| n.digest.as_ref()),
        tz,
        &bot.clock,
        Event::Digest,
    ));
    // The expiry check, the stale scan and the merge request follow-ups start
    // once the first poll is done, as `once` runs them: the project leases
    // are known by then, and they do not find the poll's issues busy.
    let mut periodic = Some(periodic_events(&bot.cfg));
    tokio::pin!(shutdown);
    // Events run side by side, so that a short request never waits behind a
    // long offboarding or a seat review: issues are bounded by `[bot]
    // concurrency` in `Bot::process`, and each system's request budget is one
    // for the process. An event arriving while the same one runs waits for it,
    // and wake-ups that pile up meanwhile are one (a dozen queued polls are one
    // poll). Two poll cycles may overlap: one held by a long issue does not hold
    // back the issues that changed since (the long one is busy to the other).
    let mut running: tokio::task::JoinSet<CycleReport> = tokio::task::JoinSet::new();
    let mut active: HashMap<tokio::task::Id, Event> = HashMap::new();
    let mut waiting: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
    loop {
        let mut held = std::collections::VecDeque::new();
        while let Some(event) = waiting.pop_front() {
            let same = active.values().filter(|a| **a == event).count();
            if same >= if event == Event::Poll { 2 } else { 1 } {
                held.push_back(event);
                continue;
            }
            tracing::debug!(?event, running = active.len(), "event starts");
            let bot = bot.clone();
            let handle = running.spawn({
                let event = event.clone();
                async move { bot.handle(event).await }
            });
            active.insert(handle.id(), event);
        }
        waiting = held;
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, report) = match done {
                    Ok((id, report)) => (id, report),
                    Err(e) => {
                        tracing::error!(error = %e, "an event's work ended abnormally");
                        (e.id(), CycleReport::default())
                    }
                };
                let event = active.remove(&id);
                tracing::debug!(?event, running = active.len(), "event done");
                if event == Some(Event::Poll) {
                    {
                        let mut m = lock(&metrics);
                        m.record(&report);
                        m.poll_done(report.errors.is_empty());
                        // Start-up work ends with the first poll cycle.
                        m.set_ready();
                    }
                    for (event, every) in periodic.take().unwrap_or_default() {
                        tasks.push(interval_ticker(&tx, every, event));
                    }
                } else {
                    lock(&metrics).record(&report);
                }
            }
            e = rx.recv() => match e {
                Some(e) => {
                    if !waiting.contains(&e) {
                        waiting.push_back(e);
                    }
                }
                None => break,
            },
        }
    }
    // The events in flight finish even though a signal arrived; nothing new starts.
    while running.join_next().await.is_some() {}
    tracing::info!("shutting down");
    for t in tasks {
        t.abort();
    }
    // A standby replica takes over at once instead of waiting for the lease to run out.
    bot.lease.release(&*bot.gitlab).await;
    Ok(())
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(extra: &str) -> Config {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/bot.toml"))
            .unwrap()
            .replacen(
                "expiry_reminder_before = \"3d\"\n",
                &format!("expiry_reminder_before = \"3d\"\n{extra}"),
                1,
            );
        Config::parse(&text, std::path::Path::new("bot.toml")).unwrap()
    }

    #[test]
    fn the_periodic_events_come_with_their_configured_intervals() {
        let cfg = example("");
        assert_eq!(
            periodic_events(&cfg),
            vec![
                (Event::Expiries, Duration::from_secs(3600)),
                (Event::StaleScan, Duration::from_secs(3600)),
                (Event::MergeRequests, Duration::from_secs(600)),
            ]
        );
        let mut cfg = example("expiry_check_every = \"15m\"\nstale_scan_every = \"2h\"\n");
        cfg.support_team = None;
        assert_eq!(
            periodic_events(&cfg),
            vec![
                (Event::Expiries, Duration::from_secs(900)),
                (Event::StaleScan, Duration::from_secs(7200)),
            ]
        );
    }

    fn issue(e: Event) -> u64 {
        match e {
            Event::Issue { iid, .. } => iid,
            _ => 0,
        }
    }

    #[tokio::test]
    async fn the_first_delivery_is_handed_on_at_once_and_a_burst_costs_one_more_look() {
        let settle = Duration::from_millis(150);
        let cap = Duration::from_millis(600);
        let c = Coalescer::new(settle, cap);
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(c.clone().dispatch(tx));
        let t0 = Instant::now();
        assert_eq!(c.offer("p".into(), 7), Offer::Queued);
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
            .map(issue);
        assert_eq!(first, Some(7));
        assert!(
            t0.elapsed() < settle,
            "the first delivery waited {:?}, as long as a burst's settle window",
            t0.elapsed()
        );
        // The rest of the burst, however spread: merged into a single look,
        // the wait cap after the first.
        let looked = Instant::now();
        for _ in 0..6 {
            assert_eq!(c.offer("p".into(), 7), Offer::Coalesced);
            tokio::time::sleep(settle / 2).await;
        }
        let second = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
            .map(issue);
        assert_eq!(second, Some(7));
        assert!(looked.elapsed() >= cap - Duration::from_millis(20));
        assert!(
            tokio::time::timeout(settle * 3, rx.recv()).await.is_err(),
            "a third look for one burst"
        );
        // Within the wait cap after a look: still the burst, it waits.
        assert_eq!(c.offer("p".into(), 7), Offer::Coalesced);
        let fourth = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
            .map(issue);
        assert_eq!(fourth, Some(7));
        // Quiet for longer than the wait cap: the next delivery is again at once.
        tokio::time::sleep(cap + settle).await;
        let t1 = Instant::now();
        assert_eq!(c.offer("p".into(), 7), Offer::Queued);
        let third = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
            .map(issue);
        assert_eq!(third, Some(7));
        assert!(t1.elapsed() < settle);
        task.abort();
    }

    #[tokio::test]
    async fn another_issue_is_not_held_by_a_burst() {
        let settle = Duration::from_millis(150);
        let c = Coalescer::new(settle, Duration::from_secs(2));
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(c.clone().dispatch(tx));
        c.offer("p".into(), 1);
        let _ = rx.recv().await;
        c.offer("p".into(), 1);
        let t0 = Instant::now();
        assert_eq!(c.offer("p".into(), 2), Offer::Queued);
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
            .map(issue);
        assert_eq!(next, Some(2), "issue 2 waited behind issue 1's burst");
        assert!(t0.elapsed() < settle);
        task.abort();
    }
}
