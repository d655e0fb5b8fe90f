//! Crash testing against the sandbox (`tests/crash.rs`).
//!
//! - [`Gate`] and [`Proxies`]: a proxy in front of every server the bot writes
//!   to (GitLab, each Zendesk, Google, Slack, and the SMTP sink) that numbers
//!   the bot's requests and writes and, when a [`Trigger`] is reached, holds
//!   the bot's traffic: before the request reaches the server, or after the
//!   server performed it but before the bot learns the answer. The harness
//!   then kills the bot and releases the gate; nothing the dead bot sends
//!   afterwards reaches a server. People acting in the sandbox (approvers,
//!   the People team, maintainers) go to the servers directly.
//! - [`EndState`]: the outcome of a batch as canonical text that can be
//!   compared across sandboxes (ids, ports and times left out), and the
//!   duplicates a run left behind (comments with the same marker keys,
//!   e-mails with the same Message-ID or the same bytes, merge requests per
//!   branch, Zendesk and Google memberships, ops notices).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{PROJECT, SUPPORT_TEAM, Sandbox};
use crate::config::Config;
use crate::secret::Secrets;

/// Where the gate stops the bot. Indices count from 1 since the gate was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The n-th request of any kind (or the first after it, if the count
    /// passed n before the trigger was armed) is held before it reaches the
    /// server.
    BeforeRequest(u64),
    /// The n-th request of any kind (or the first after it) is performed;
    /// its answer is held.
    AfterRequest(u64),
    /// The n-th write (or the first after it) is performed; its answer is held.
    AfterWrite(u64),
}

/// Longest a held request waits for the harness (a harness bug, not a hang).
const HOLD_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct GateState {
    requests: u64,
    writes: u64,
    polls: u64,
    /// Every write: (index, `METHOD path`).
    write_log: Vec<(u64, String)>,
    trigger: Option<Trigger>,
    /// What the trigger stopped, once it fired (until `release`).
    fired: Option<String>,
    generation: u64,
    /// When the last request arrived.
    last: Option<std::time::Instant>,
}

/// Numbers the bot's requests and writes across all servers, and holds its
/// traffic once a trigger fires. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gate {
    state: Arc<Mutex<GateState>>,
    released: watch::Sender<u64>,
}

/// A request as the gate saw it arrive.
#[derive(Debug, Clone)]
pub struct Arrival {
    request: u64,
    write: Option<u64>,
    generation: u64,
    /// Held before reaching the server.
    hold: bool,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Gate {
    pub fn new() -> Gate {
        Gate {
            state: Arc::new(Mutex::new(GateState::default())),
            released: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests that reached the gate so far.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Writes (POST/PUT/PATCH/DELETE other than token requests, SMTP DATA) so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Polls so far: listings of a project's issues (one per cycle).
    pub fn polls(&self) -> u64 {
        self.lock().polls
    }

    /// Time since the last request arrived (since ever: a long time).
    pub fn idle_for(&self) -> Duration {
        self.lock()
            .last
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX)
    }

    /// Every write so far: (index, `METHOD path`).
    pub fn write_log(&self) -> Vec<(u64, String)> {
        self.lock().write_log.clone()
    }

    /// The write with this index, as `METHOD path`.
    pub fn write_at(&self, n: u64) -> Option<String> {
        self.lock()
            .write_log
            .iter()
            .find(|(i, _)| *i == n)
            .map(|(_, w)| w.clone())
    }

    /// Stop the bot at `trigger` (replacing any armed one); `None` disarms.
    pub fn arm(&self, trigger: Option<Trigger>) {
        self.lock().trigger = trigger;
    }

    /// What the trigger stopped, once it has fired.
    pub fn fired(&self) -> Option<String> {
        self.lock().fired.clone()
    }

    /// After the harness killed the bot: the held requests end without
    /// reaching a server (their sender is gone), and traffic flows again.
    pub fn release(&self) {
        let generation = {
            let mut s = self.lock();
            s.fired = None;
            s.trigger = None;
            s.generation += 1;
            s.generation
        };
        self.released.send_replace(generation);
    }

    /// A request arrives: number it; hold it if the bot is already stopped or
    /// the trigger is "before this request".
    pub fn arrive(&self, what: &str, write: bool, poll: bool) -> Arrival {
        let mut s = self.lock();
        s.requests += 1;
        s.last = Some(std::time::Instant::now());
        let request = s.requests;
        let write = write.then(|| {
            s.writes += 1;
            let n = s.writes;
            s.write_log.push((n, what.to_string()));
            n
        });
        if poll {
            s.polls += 1;
        }
        let mut hold = s.fired.is_some();
        // At or past its number: the harness reads the count and arms a
        // trigger a few requests ahead while the bot goes on, so the count can
        // pass the number first; the next request then is the one held.
        if !hold && matches!(s.trigger, Some(Trigger::BeforeRequest(n)) if request >= n) {
            s.fired = Some(format!("before request #{request} ({what})"));
            hold = true;
        }
        Arrival {
            request,
            write,
            generation: s.generation,
            hold,
        }
    }

    /// The server answered: hold the answer if the bot is stopped, or if this
    /// request or write is the trigger.
    pub fn answered(&self, a: &Arrival, what: &str) -> bool {
        let mut s = self.lock();
        if s.generation != a.generation || s.fired.is_some() {
            return true;
        }
        // At or past its number, as in `arrive`.
        let hit = match s.trigger {
            Some(Trigger::AfterRequest(n)) => a.request >= n,
            Some(Trigger::AfterWrite(n)) => a.write.is_some_and(|w| w >= n),
            _ => false,
        };
        if hit {
            s.fired = Some(match a.write {
                Some(w) => format!("after write #{w} ({what})"),
                None => format!("after request #{} ({what})", a.request),
            });
        }
        hit
    }

    /// Wait until the harness releases the gate (or `HOLD_LIMIT`).
    pub async fn held(&self, a: &Arrival) {
        let mut rx = self.released.subscribe();
        let _ = tokio::time::timeout(HOLD_LIMIT, rx.wait_for(|g| *g != a.generation)).await;
    }
}

/// Mutating requests: everything but reads and token requests.
pub fn is_write(method: &Method, path: &str) -> bool {
    is_write_request(method.as_str(), path)
}

/// [`is_write`] for a method as logged: token requests (Zendesk's
/// `/oauth/tokens`, Google's `/token`, Okta's `/oauth2/v1/token`) change nothing.
pub fn is_write_request(method: &str, path: &str) -> bool {
    let mutating = matches!(method, "POST" | "PUT" | "PATCH" | "DELETE");
    mutating && !path.ends_with("/oauth/tokens") && !path.ends_with("/token")
}

struct HttpProxy {
    gate: Gate,
    upstream: String,
    client: reqwest::Client,
}

const HOP_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
];

fn hop(name: &HeaderName) -> bool {
    HOP_HEADERS.contains(&name.as_str())
}

async fn forward(State(p): State<Arc<HttpProxy>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let what = format!(
        "{} {}",
        parts.method,
        crate::sandbox::faults::route_of(&path)
    );
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let write = is_write(&parts.method, &path);
    let poll = parts.method == Method::GET
        && crate::sandbox::faults::route_of(&path) == "/api/v4/projects/:project/issues";
    let arrival = p.gate.arrive(&what, write, poll);
    if arrival.hold {
        p.gate.held(&arrival).await;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "crash gate: the bot was killed",
        )
            .into_response();
    }
    let mut rb = p
        .client
        .request(parts.method.clone(), format!("{}{target}", p.upstream));
    for (k, v) in parts.headers.iter().filter(|(k, _)| !hop(k)) {
        rb = rb.header(k, v);
    }
    let answer = match rb.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::BAD_GATEWAY, format!("crash gate: {e}")).into_response();
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    if p.gate.answered(&arrival, &what) {
        p.gate.held(&arrival).await;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "crash gate: the bot was killed",
        )
            .into_response();
    }
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    for (k, v) in headers.iter().filter(|(k, _)| !hop(k)) {
        r.headers_mut().append(k.clone(), v.clone());
    }
    r
}

/// A client for plain HTTP on loopback: no proxy from the environment, and
/// no root certificates (building a client that loads the system's costs
/// more than a request).
pub fn loopback_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only(Vec::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build()?)
}

async fn serve_http(
    gate: &Gate,
    client: &reqwest::Client,
    upstream: SocketAddr,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let state = Arc::new(HttpProxy {
        gate: gate.clone(),
        upstream: format!("http://{upstream}"),
        client: client.clone(),
    });
    let app = axum::Router::new().fallback(forward).with_state(state);
    let listener = super::bind_loopback(0).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// SMTP, line by line: the end of a message's DATA is a write; the server's
/// answer to it is what a trigger holds.
async fn smtp_session(
    gate: Gate,
    client: tokio::net::TcpStream,
    upstream: SocketAddr,
) -> std::io::Result<()> {
    let server = tokio::net::TcpStream::connect(upstream).await?;
    let (cr, mut cw) = client.into_split();
    let (sr, mut sw) = server.into_split();
    // Arrivals of DATA ends whose answer is still to come.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Arrival>();
    let up_gate = gate.clone();
    let up = async move {
        let mut lines = BufReader::new(cr);
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if lines.read_line(&mut line).await? == 0 {
                return Ok::<(), std::io::Error>(());
            }
            if in_data {
                if line == ".\r\n" || line == ".\n" {
                    in_data = false;
                    let a = up_gate.arrive("SMTP DATA", true, false);
                    if a.hold {
                        up_gate.held(&a).await;
                        return Ok(());
                    }
                    let _ = tx.send(a);
                }
            } else if line.trim_end().eq_ignore_ascii_case("DATA") {
                in_data = true;
            }
            sw.write_all(line.as_bytes()).await?;
        }
    };
    let down = async move {
        let mut lines = BufReader::new(sr);
        loop {
            let mut line = String::new();
            if lines.read_line(&mut line).await? == 0 {
                return Ok::<(), std::io::Error>(());
            }
            // A final reply line ("250 ", not "250-") answers the oldest DATA end.
            if line.len() > 3
                && line.as_bytes()[3] == b' '
                && let Ok(a) = rx.try_recv()
                && line.starts_with('2')
                && gate.answered(&a, "SMTP DATA")
            {
                gate.held(&a).await;
                return Ok(());
            }
            cw.write_all(line.as_bytes()).await?;
        }
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

async fn serve_smtp(
    gate: &Gate,
    upstream: SocketAddr,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = super::bind_loopback(0).await?;
    let addr = listener.local_addr()?;
    let gate = gate.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _ = smtp_session(gate, stream, upstream).await;
            });
        }
    });
    Ok((addr, task))
}

/// The proxies in front of one sandbox, and the gate they share. Dropping
/// it stops them.
pub struct Proxies {
    pub gate: Gate,
    /// Real address -> proxy address.
    pub addrs: BTreeMap<SocketAddr, SocketAddr>,
    pub smtp: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn encoded_project() -> String {
    percent_encoding::utf8_percent_encode(PROJECT, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Sandbox {
    /// Put a [`Gate`] between the bot and every server it writes to.
    pub async fn crash_proxies(&self) -> anyhow::Result<Proxies> {
        let gate = Gate::new();
        let mut addrs = BTreeMap::new();
        let mut tasks = Vec::new();
        let mut upstreams = vec![self.gitlab_addr, self.google_addr, self.slack_addr];
        upstreams.extend(self.zendesk.values().map(|z| z.addr));
        let client = loopback_client()?;
        for up in upstreams {
            let (addr, task) = serve_http(&gate, &client, up).await?;
            addrs.insert(up, addr);
            tasks.push(task);
        }
        let (smtp, task) = serve_smtp(&gate, self.smtp_addr).await?;
        tasks.push(task);
        Ok(Proxies {
            gate,
            addrs,
            smtp,
            tasks,
        })
    }
}

impl Proxies {
    /// `text` with each server's address replaced by its proxy's (whole
    /// addresses only: `127.0.0.1:4000` is not a prefix of `127.0.0.1:40001`).
    fn via(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (real, proxy) in &self.addrs {
            let (from, to) = (real.to_string(), proxy.to_string());
            let mut next = String::with_capacity(out.len());
            let mut rest = out.as_str();
            while let Some(i) = rest.find(&from) {
                let after = &rest[i + from.len()..];
                next.push_str(&rest[..i]);
                if after.starts_with(|c: char| c.is_ascii_digit()) {
                    next.push_str(&from);
                } else {
                    next.push_str(&to);
                }
                rest = after;
            }
            next.push_str(rest);
            out = next;
        }
        out
    }

    /// The sandbox's configuration with every server behind the gate (the
    /// Google token endpoint excepted: it writes nothing) and no rate budget
    /// worth waiting for.
    pub fn config(&self, sb: &Sandbox, state_db: &std::path::Path) -> Config {
        let mut cfg = sb.config.clone();
        cfg.gitlab.url = self.via(&cfg.gitlab.url);
        for z in cfg.zendesk.values_mut() {
            z.base_url = self.via(&z.base_url);
            z.requests_per_minute = 60_000;
        }
        if let Some(g) = cfg.google.as_mut() {
            g.base_url = self.via(&g.base_url);
        }
        if let Some(e) = cfg.notify.as_mut().and_then(|n| n.email.as_mut()) {
            e.smtp_port = Some(self.smtp.port());
        }
        cfg.bot.state_db = state_db.to_path_buf();
        cfg
    }

    /// The environment a bot needs (secrets), with the Slack webhook behind the gate.
    pub fn env(&self, sb: &Sandbox) -> Vec<(String, String)> {
        sb.env()
            .into_iter()
            .map(|(k, v)| {
                let v = if v.starts_with("http://") {
                    self.via(&v)
                } else {
                    v
                };
                (k, v)
            })
            .collect()
    }

    pub fn secrets(&self, sb: &Sandbox) -> Secrets {
        Secrets::from_map(self.env(sb))
    }

    /// A `bot.toml` for the real binary, every server behind the gate.
    pub fn config_toml(&self, sb: &Sandbox, state_db: &str, poll_interval: &str) -> String {
        let toml = sb.config_toml(state_db, None, poll_interval, None);
        let smtp_line = format!("smtp_port = {}", sb.smtp_addr.port());
        self.via(&toml)
            .lines()
            .map(|l| {
                let t = l.trim_start();
                if t == smtp_line {
                    format!("smtp_port = {}", self.smtp.port())
                } else if t.starts_with("requests_per_minute") {
                    "requests_per_minute = 60000".to_string()
                } else if t.starts_with("digest =") {
                    // No daily digest in the middle of a trial.
                    "# digest: off".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// People acting in the sandbox over HTTP with their own tokens, as
/// `harness.rs` does, through one client for the whole trial.
#[derive(Clone)]
pub struct People {
    client: reqwest::Client,
    issues_url: String,
    gitlab: super::gitlab::GitlabServer,
}

impl People {
    pub fn new(sb: &Sandbox) -> anyhow::Result<People> {
        Ok(People {
            client: loopback_client()?,
            issues_url: format!(
                "http://{}/api/v4/projects/{}/issues",
                sb.gitlab_addr,
                encoded_project()
            ),
            gitlab: sb.gitlab.clone(),
        })
    }

    fn token(&self, user: &str) -> anyhow::Result<String> {
        self.gitlab
            .lock()
            .user_by_name(user)
            .map(|u| u.token.clone())
            .ok_or_else(|| anyhow::anyhow!("no sandbox user {user}"))
    }

    async fn send(
        &self,
        user: &str,
        rb: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let r = rb.header("PRIVATE-TOKEN", self.token(user)?).send().await?;
        anyhow::ensure!(r.status().is_success(), "{what} as {user}: {}", r.status());
        Ok(r.json().await?)
    }

    /// File a confidential issue as `author`; returns its iid.
    pub async fn file_issue(
        &self,
        author: &str,
        title: &str,
        labels: &[&str],
        body: &str,
    ) -> anyhow::Result<u64> {
        let labels = labels.join(",");
        let rb = self.client.post(&self.issues_url).form(&[
            ("title", title),
            ("description", body),
            ("labels", labels.as_str()),
            ("confidential", "true"),
        ]);
        let v = self.send(author, rb, "file an issue").await?;
        v["iid"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no iid in {v}"))
    }

    async fn edit(&self, user: &str, iid: u64, form: &[(&str, &str)]) -> anyhow::Result<()> {
        let rb = self
            .client
            .put(format!("{}/{iid}", self.issues_url))
            .form(form);
        self.send(user, rb, "edit an issue").await.map(|_| ())
    }

    pub async fn add_label(&self, user: &str, iid: u64, label: &str) -> anyhow::Result<()> {
        self.edit(user, iid, &[("add_labels", label)]).await
    }

    pub async fn remove_label(&self, user: &str, iid: u64, label: &str) -> anyhow::Result<()> {
        self.edit(user, iid, &[("remove_labels", label)]).await
    }

    pub async fn edit_description(&self, user: &str, iid: u64, text: &str) -> anyhow::Result<()> {
        self.edit(user, iid, &[("description", text)]).await
    }
}

/// The outcome of a batch, comparable across sandboxes: one line per thing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndState {
    /// What (`#3 special request: labels`, `zendesk global jane.doe@…`) -> its value.
    pub facts: BTreeMap<String, String>,
    /// Duplicates found, by class (`comment`, `e-mail`, `e-mail (raw)`,
    /// `merge request`, `grant`, `notice`).
    pub duplicates: Vec<(String, String)>,
    /// Ops notices (Slack, and e-mails to ops) and the People team's
    /// e-mails: at most once by design (the issue holds the whole story), so
    /// a trial may have fewer than the reference, never others, never one
    /// twice.
    pub at_most_once: BTreeMap<String, std::collections::BTreeSet<String>>,
}

fn counted<I: IntoIterator<Item = String>>(items: I) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

fn show_counts(m: &BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(k, n)| {
            if *n == 1 {
                k.clone()
            } else {
                format!("{k} x{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `/issues/12` and `#12` references in a text, in order.
fn issue_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    for (i, _) in text.match_indices('#') {
        let digits: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if !digits.is_empty() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            out.push(format!("#{digits}"));
        }
    }
    for (i, m) in text.match_indices("/issues/") {
        let digits: String = text[i + m.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if !digits.is_empty() {
            out.push(format!("#{digits}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

impl EndState {
    /// Read the outcome from the sandbox. `names` names issues by iid; the
    /// other issues of the project are named by their title.
    pub fn read(sb: &Sandbox, names: &BTreeMap<u64, String>) -> EndState {
        let mut facts = BTreeMap::new();
        let mut dups: Vec<(String, String)> = Vec::new();

        // Issues: state, labels, ticks, the bot's comments by kind.
        let iids: Vec<(u64, String)> = {
            let w = sb.gitlab.lock();
            w.project(PROJECT)
                .map(|p| p.issues.iter().map(|i| (i.iid, i.title.clone())).collect())
                .unwrap_or_default()
        };
        // Issues named in e-mails and notices, by name.
        let named = |refs: Vec<String>| -> String {
            refs.iter()
                .map(|r| {
                    let iid: u64 = r.trim_start_matches('#').parse().unwrap_or(0);
                    names
                        .get(&iid)
                        .cloned()
                        .or_else(|| iids.iter().find(|(i, _)| *i == iid).map(|(_, t)| t.clone()))
                        .map(|n| format!("[{n}]"))
                        .unwrap_or_else(|| r.clone())
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        for (iid, title) in iids.iter().cloned() {
            // By name, not iid: an issue filed late (or not at all) must not
            // shift the names of the others.
            let name = names.get(&iid).cloned().unwrap_or(title);
            let mut key = name.clone();
            let mut n = 1;
            while facts.contains_key(&format!("{key}: state")) {
                n += 1;
                key = format!("{name} ({n})");
            }
            let mut labels = sb.labels(iid);
            labels.sort();
            facts.insert(format!("{key}: state"), sb.state(iid));
            facts.insert(format!("{key}: labels"), labels.join(", "));
            facts.insert(format!("{key}: ticked"), sb.ticked(iid).join(" | "));
            let comments = sb.bot_comments(iid);
            let kinds = counted(comments.iter().map(|c| match &c.marker {
                Some(m) => m.kind.clone(),
                None => "(no marker)".to_string(),
            }));
            facts.insert(format!("{key}: bot comments"), show_counts(&kinds));
            let keys = counted(
                comments
                    .iter()
                    .filter_map(|c| c.marker.as_ref())
                    .flat_map(|m| {
                        m.keys
                            .iter()
                            .map(move |k| format!("kind={} key={k}", m.kind))
                    }),
            );
            for (k, n) in keys.into_iter().filter(|(_, n)| *n > 1) {
                dups.push(("comment".into(), format!("{key}: {k} posted {n} times")));
            }
        }

        // Zendesk: each account by e-mail; memberships and tickets by name.
        for (name, z) in &sb.zendesk {
            let w = z.server.lock();
            let mut by_email: BTreeMap<String, usize> = BTreeMap::new();
            for u in w.users.values().filter(|u| u.id != w.admin_id) {
                *by_email.entry(u.email.clone()).or_insert(0) += 1;
                let role = match u
                    .custom_role_id
                    .and_then(|id| w.custom_roles.iter().find(|r| r.id == id))
                {
                    Some(r) if r.role_type == 1 => "light agent".to_string(),
                    Some(r) => format!("{} ({})", u.role, r.name),
                    None => u.role.clone(),
                };
                let mut tags = u.tags.clone();
                tags.sort();
                let mut groups = w.groups_of(u.id);
                groups.sort();
                let fields: Vec<String> = u
                    .user_fields
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                facts.insert(
                    format!("zendesk {name} {}", u.email),
                    format!(
                        "{role}{}; groups [{}]; tags [{}]; fields [{}]; open tickets {}",
                        if u.suspended { ", suspended" } else { "" },
                        groups.join(", "),
                        tags.join(", "),
                        fields.join(", "),
                        w.open_tickets_of(u.id)
                    ),
                );
            }
            for (email, n) in by_email.into_iter().filter(|(_, n)| *n > 1) {
                dups.push((
                    "grant".into(),
                    format!("zendesk {name}: {n} accounts for {email}"),
                ));
            }
            let memberships = counted(w.memberships.iter().map(|m| {
                let email = w
                    .users
                    .get(&m.user_id)
                    .map(|u| u.email.clone())
                    .unwrap_or_default();
                let group = w
                    .groups
                    .iter()
                    .find(|g| g.id == m.group_id)
                    .map(|g| g.name.clone())
                    .unwrap_or_default();
                format!("{email} in {group}")
            }));
            for (m, n) in memberships.into_iter().filter(|(_, n)| *n > 1) {
                dups.push(("grant".into(), format!("zendesk {name}: {m} x{n}")));
            }
        }

        // Google groups.
        {
            let g = sb.google.lock();
            for (group, members) in &g.groups {
                let m = counted(
                    members
                        .iter()
                        .map(|m| format!("{} {}", m.email.to_ascii_lowercase(), m.role)),
                );
                facts.insert(
                    format!("google {group}"),
                    m.keys().cloned().collect::<Vec<_>>().join(", "),
                );
                for (who, n) in m.into_iter().filter(|(_, n)| *n > 1) {
                    dups.push(("grant".into(), format!("google {group}: {who} x{n}")));
                }
            }
        }

        // E-mails: who got what; the same Message-ID (or the same bytes) twice.
        // The bot's own notices to ops ("access-bot: ...") are at most once.
        let mails = sb.smtp.messages();
        let is_notice = |m: &crate::sandbox::notify::Mail| {
            m.header("Subject")
                .is_some_and(|s| s.starts_with("access-bot:"))
        };
        let describe_mail = |m: &crate::sandbox::notify::Mail| {
            format!(
                "to {} {:?} {}",
                m.to.join(","),
                m.header("Subject").unwrap_or_default(),
                named(issue_refs(&m.body()))
            )
        };
        // The People team's e-mails too: a bot killed between saying on the
        // issue that it is handing one over and handing it over, with its
        // database lost, cannot know whether it went, so it asks the People
        // team on the issue instead of sending it twice. (The issues' end
        // states still need their answer; duplicates are counted below.)
        let mut at_most_once: BTreeMap<String, std::collections::BTreeSet<String>> =
            BTreeMap::new();
        at_most_once.insert(
            "e-mails".into(),
            mails
                .iter()
                .filter(|m| !is_notice(m))
                .map(describe_mail)
                .collect(),
        );
        at_most_once.insert(
            "ops e-mails".into(),
            mails
                .iter()
                .filter(|m| is_notice(m))
                .map(describe_mail)
                .collect(),
        );
        let ids = counted(
            mails
                .iter()
                .map(|m| m.header("Message-ID").unwrap_or_else(|| "(none)".into())),
        );
        for (id, n) in ids.into_iter().filter(|(_, n)| *n > 1) {
            let subject = mails
                .iter()
                .find(|m| m.header("Message-ID").as_deref() == Some(id.as_str()))
                .and_then(|m| m.header("Subject"))
                .unwrap_or_default();
            dups.push((
                "e-mail".into(),
                format!("Message-ID {id} ({subject:?}) sent {n} times"),
            ));
        }
        let raw = counted(
            mails
                .iter()
                .map(|m| format!("{}\n{}", m.to.join(","), m.data)),
        );
        for (data, n) in raw.into_iter().filter(|(_, n)| *n > 1) {
            let subject = data
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("subject:"))
                .unwrap_or("")
                .to_string();
            dups.push((
                "e-mail (raw)".into(),
                format!("the same bytes sent {n} times ({subject})"),
            ));
        }

        // Ops notices on Slack: the first line and the issues named.
        let texts = sb.slack.texts();
        let notices = counted(texts.iter().map(|t| {
            format!(
                "{} {}",
                t.lines().next().unwrap_or(""),
                named(issue_refs(t))
            )
        }));
        at_most_once.insert("slack".into(), notices.keys().cloned().collect());
        for (t, n) in counted(texts.iter().cloned())
            .into_iter()
            .filter(|(_, n)| *n > 1)
        {
            dups.push((
                "notice".into(),
                format!(
                    "the same Slack notice {n} times: {}",
                    t.lines().next().unwrap_or("")
                ),
            ));
        }

        // The Support Team repository: merge requests by branch, files on main.
        {
            let w = sb.gitlab.lock();
            if let Some(p) = w.project(SUPPORT_TEAM) {
                let mrs = counted(
                    p.merge_requests
                        .iter()
                        .map(|m| format!("{} -> {}", m.source_branch, m.target_branch)),
                );
                facts.insert(
                    "merge requests".into(),
                    show_counts(&counted(p.merge_requests.iter().map(|m| {
                        format!("{} -> {} {}", m.source_branch, m.target_branch, m.state)
                    }))),
                );
                for (b, n) in mrs.into_iter().filter(|(_, n)| *n > 1) {
                    dups.push(("merge request".into(), format!("{b}: {n} merge requests")));
                }
                let files: Vec<String> = p
                    .files
                    .get("main")
                    .map(|f| f.keys().cloned().collect())
                    .unwrap_or_default();
                facts.insert("support team files on main".into(), files.join(", "));
            }
        }
        EndState {
            facts,
            duplicates: dups,
            at_most_once,
        }
    }

    /// What differs from `reference`, fact by fact.
    pub fn diff(&self, reference: &EndState) -> Vec<Difference> {
        let keys: std::collections::BTreeSet<&String> =
            self.facts.keys().chain(reference.facts.keys()).collect();
        let mut out: Vec<Difference> = keys
            .into_iter()
            .filter(|k| reference.facts.get(*k) != self.facts.get(*k))
            .map(|k| Difference {
                what: k.clone(),
                expected: reference
                    .facts
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| "(nothing)".into()),
                got: self
                    .facts
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| "(nothing)".into()),
            })
            .collect();
        // At most once: nothing the reference does not have.
        for (what, got) in &self.at_most_once {
            let expected = reference
                .at_most_once
                .get(what)
                .cloned()
                .unwrap_or_default();
            let extra: Vec<&String> = got.difference(&expected).collect();
            if !extra.is_empty() {
                out.push(Difference {
                    what: what.clone(),
                    expected: format!(
                        "at most {}",
                        expected.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                    got: extra
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        out
    }
}

/// One fact that is not as in the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `special request: labels`, `zendesk global jane.doe@gitlab.com`, `e-mails`, ...
    pub what: String,
    pub expected: String,
    pub got: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_mutating_requests_other_than_tokens() {
        assert!(is_write(&Method::POST, "/api/v4/projects/x/issues/1/notes"));
        assert!(is_write(
            &Method::DELETE,
            "/admin/directory/v1/groups/g/members/m"
        ));
        assert!(!is_write(&Method::GET, "/api/v4/projects/x/issues"));
        assert!(!is_write(&Method::POST, "/oauth/tokens"));
        assert!(!is_write(&Method::POST, "/token"));
        assert!(!is_write(&Method::POST, "/oauth2/v1/token"));
        assert!(is_write_request("PUT", "/api/v1/groups/g/users/u"));
        assert!(!is_write_request("GET", "/api/v1/groups/g/users"));
    }

    #[test]
    fn issue_references_are_found_once() {
        assert_eq!(
            issue_refs("#10: refused, see https://x/-/issues/10 and #3"),
            ["#10", "#3"]
        );
        assert!(issue_refs("a#1b").is_empty());
    }

    /// The harness arms a trigger a few requests past the count it read;
    /// the bot may pass that number first. The kill then falls on the next
    /// request instead of never (a trial stuck with a kill still to come).
    #[test]
    fn a_trigger_armed_behind_the_count_fires_at_the_next_request() {
        for (trigger, before) in [
            (Trigger::BeforeRequest(2), true),
            (Trigger::AfterRequest(2), false),
            (Trigger::AfterWrite(1), false),
        ] {
            let g = Gate::new();
            let w1 = g.arrive("PUT /a", true, false);
            assert!(!g.answered(&w1, "PUT /a"));
            let r2 = g.arrive("GET /b", false, false);
            assert!(!g.answered(&r2, "GET /b"));
            // Armed only now, with the count already at its number.
            g.arm(Some(trigger));
            let next = g.arrive("GET /c", false, false);
            if before {
                assert!(next.hold, "{trigger:?}: the next request is held");
            } else {
                assert!(!next.hold);
                let w = g.arrive("PUT /d", true, false);
                assert!(
                    g.answered(&w, "PUT /d"),
                    "{trigger:?}: the next answer is held"
                );
            }
            assert!(g.fired().is_some(), "{trigger:?} never fired");
        }
    }

    #[test]
    fn the_gate_holds_after_the_chosen_write_and_everything_after_it() {
        let g = Gate::new();
        g.arm(Some(Trigger::AfterWrite(2)));
        let a = g.arrive("POST /a", true, false);
        assert!(!a.hold && !g.answered(&a, "POST /a"));
        let b = g.arrive("GET /b", false, true);
        let c = g.arrive("PUT /c", true, false);
        assert!(!g.answered(&b, "GET /b"));
        assert!(
            g.answered(&c, "PUT /c"),
            "the second write's answer is held"
        );
        assert_eq!(g.fired().as_deref(), Some("after write #2 (PUT /c)"));
        assert!(
            g.arrive("GET /d", false, false).hold,
            "the dead bot sends nothing more"
        );
        g.release();
        assert!(g.fired().is_none());
        assert!(!g.arrive("GET /e", false, false).hold);
        assert_eq!((g.requests(), g.writes(), g.polls()), (5, 2, 1));
        assert_eq!(g.write_at(2).as_deref(), Some("PUT /c"));
    }
}
