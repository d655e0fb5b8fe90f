//! The queue at a glance: `access-bot status` and the `/status` page of
//! `run`'s operations listener, end to end against the sandbox over HTTP. The
//! world is seeded by the real bot (a waiting request, a failed one, a
//! time-bound grant ending in five days, a seat review listing an idle
//! seat); the page is then served by a second bot with an empty database, so
//! everything shown comes from GitLab. One test opens the page in headless
//! Chromium.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use access_bot::bot::Bot;
use access_bot::bot::run::{Listening, RunOptions};
use access_bot::config::StatusConfig;
use access_bot::sandbox::faults::Failure;
use access_bot::sandbox::harness::run_until_quiet;
use access_bot::sandbox::scenario::ZendeskAccount;
use access_bot::sandbox::{Ports, Sandbox};
use access_bot::secret::Secret;
use serde_json::Value;
use tokio::sync::oneshot;

const MANAGER: &str = "AR-Approval::Manager Approved";
const OWNER: &str = "Zendesk::System Owner Approved";
const TABLE: &str = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n";
const TOKEN: &str = "status-secret-0123456789";
const HOSTILE: &str = "<script>alert('x')</script> @all please";

struct Seeded {
    sb: Sandbox,
    waiting: u64,
    failed: u64,
    time_bound: u64,
}

fn status_config(stuck_after: &str) -> StatusConfig {
    StatusConfig {
        enabled: true,
        token_env: "ACCESS_BOT_STATUS_TOKEN".into(),
        username: "ops".into(),
        stuck_after: access_bot::config::Dur::parse(stuck_after).unwrap(),
    }
}

fn request_body(name: &str, email: &str, user: &str, expires: Option<i64>) -> String {
    let expires = expires
        .map(|d| {
            format!(
                "Expires: {}\n\n",
                (chrono::Utc::now() + chrono::Duration::days(d)).date_naive()
            )
        })
        .unwrap_or_default();
    format!(
        "{TABLE}| {name} | {email} | @{user} | @mlee |\n\n{expires}- [ ] Zendesk Global: Agent - Support Engineer\n"
    )
}

/// The seeded world: every request goes through the real bot.
async fn seeded(stuck_after: &str) -> Seeded {
    let mut sb = Sandbox::start(Ports::default()).await.unwrap();
    sb.config.status = status_config(stuck_after);
    let bot = sb.bot().await.unwrap();

    // A time-bound grant ending in five days: done, the issue still open.
    let time_bound = sb
        .file_issue(
            "rkim",
            "Robin Kim, Zendesk Global",
            &[],
            &request_body("Robin Kim", "robin.kim@gitlab.com", "rkim", Some(5)),
        )
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    sb.add_label("mlee", time_bound, MANAGER).await.unwrap();
    sb.add_label("lyle", time_bound, OWNER).await.unwrap();
    run_until_quiet(&bot, 3).await;

    // A failure: Google refuses the Okta group, and goes on refusing (a 400,
    // not retried: every later poll fails at once).
    sb.google_knobs
        .fail_next("POST /admin/directory", 100_000, Failure::Status(400));
    let failed = sb
        .file_issue(
            "bli",
            "Bo Li, Zendesk Global",
            &[],
            &request_body("Bo Li", "bo.li@gitlab.com", "bli", None),
        )
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;
    sb.add_label("mlee", failed, MANAGER).await.unwrap();
    sb.add_label("jason", failed, OWNER).await.unwrap();
    run_until_quiet(&bot, 3).await;

    // Waiting for both approvals, under a title someone made hostile.
    let waiting = sb
        .file_issue(
            "jdoe",
            HOSTILE,
            &[],
            &request_body("Jane Doe", "jane.doe@gitlab.com", "jdoe", None),
        )
        .await
        .unwrap();
    run_until_quiet(&bot, 3).await;

    // A seat review listing one idle agent.
    for u in sb.zd("global").users.values_mut() {
        u.last_login_at = Some(chrono::Utc::now());
    }
    sb.seed_zendesk(&ZendeskAccount {
        instance: "global".into(),
        name: "Ann Idle".into(),
        email: "ann.idle@gitlab.com".into(),
        role: "agent".into(),
        custom_role: None,
        groups: vec![],
        tags: vec![],
        user_fields: Default::default(),
        open_tickets: 0,
        suspended: false,
        last_login_days_ago: Some(120),
    })
    .unwrap();
    bot.audit_seats(Some("global")).await.unwrap();

    let labels = |iid| sb.labels(iid);
    assert!(
        labels(waiting).contains(&"access-bot::waiting".to_string()),
        "{:?}",
        labels(waiting)
    );
    assert!(
        labels(failed).contains(&"access-bot::failed".to_string()),
        "{:?}",
        labels(failed)
    );
    assert!(
        labels(time_bound).contains(&"access-bot/time-bound".to_string()),
        "{:?}",
        labels(time_bound)
    );
    Seeded {
        sb,
        waiting,
        failed,
        time_bound,
    }
}

struct Running {
    at: Listening,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn ops(&self) -> String {
        format!("http://{}", self.at.ops.expect("ops listener"))
    }
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // The event in flight (a poll cycle) finishes first.
        let r = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("run stops");
        r.unwrap().unwrap();
    }
}

/// `run` on a bot with an empty database, the ops listener on a free port.
async fn start_run(sb: &Sandbox, token: Option<&str>) -> Running {
    let bot: Arc<Bot> = Arc::new(sb.bot().await.unwrap());
    let (tx, rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let opts = RunOptions {
        ops: Some("127.0.0.1:0".into()),
        on_listening: Some(tx),
        status_token: token.map(Secret::new),
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

async fn get(url: &str, auth: Option<&str>) -> (u16, String, reqwest::header::HeaderMap) {
    let mut r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(30));
    if let Some(a) = auth {
        r = r.header("Authorization", a);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.text().await.unwrap(), headers)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// As HTML-escaped by the template engine in an attribute or text (`/` included).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;")
        .replace('/', "&#x2f;")
}

/// The issue's address as the sandbox's GitLab gives it.
fn web_url(_sb: &Sandbox, iid: u64) -> String {
    format!(
        "https://gitlab.sandbox/{}/-/issues/{iid}",
        access_bot::sandbox::PROJECT
    )
}

/// The `<tr>` of an issue in a group's table, as served.
fn row<'a>(html: &'a str, table_class: &str, iid: u64) -> &'a str {
    let table = html
        .split(&format!("<table class=\"{table_class}\">"))
        .nth(1)
        .unwrap_or_else(|| panic!("no {table_class} table in\n{html}"));
    let table = &table[..table.find("</table>").unwrap()];
    table
        .split("<tr class=\"row")
        .skip(1)
        .find(|r| r.contains(&format!("data-iid=\"{iid}\"")))
        .unwrap_or_else(|| panic!("no row for #{iid} in {table_class}:\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_queue_from_gitlab_on_a_fresh_database() {
    let s = seeded("3d").await;
    let run = start_run(&s.sb, Some(TOKEN)).await;
    let (code, html, headers) = get(&format!("{}/status", run.ops()), Some(&bearer())).await;
    assert_eq!(code, 200, "{html}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        !html.contains("<script"),
        "no script of any origin:\n{html}"
    );

    // Waiting: both approvals, from whom GitLab confirms.
    let waiting = row(&html, "state-waiting", s.waiting);
    assert!(waiting.contains(&format!("href=\"{}\"", esc(&web_url(&s.sb, s.waiting)))));
    assert!(
        waiting.contains(&format!("<code>{MANAGER}</code> from @mlee")),
        "{waiting}"
    );
    assert!(
        waiting.contains(&format!("<code>{OWNER}</code> from @jason @lyle"))
            || waiting.contains(&format!("<code>{OWNER}</code> from @lyle @jason")),
        "{waiting}"
    );
    assert!(
        waiting.contains("Jane Doe &lt;jane.doe@gitlab.com&gt;"),
        "{waiting}"
    );
    assert!(waiting.contains("posted its plan"), "{waiting}");
    // The hostile title, escaped.
    assert!(
        waiting.contains("&lt;script&gt;alert(&#x27;x&#x27;)&lt;&#x2f;script&gt; @all please"),
        "{waiting}"
    );

    // Failed: the reason from the bot's note, and when it is tried again.
    let failed = row(&html, "state-failed", s.failed);
    assert!(failed.contains(&format!("href=\"{}\"", esc(&web_url(&s.sb, s.failed)))));
    assert!(failed.contains("failed"), "{failed}");
    assert!(failed.contains("400"), "{failed}");
    assert!(
        failed.contains(&format!(
            "Next retry: with the next poll (every {} seconds)",
            access_bot::config::parse_duration(s.sb.config.gitlab.poll_interval.as_str())
                .unwrap()
                .as_secs()
        )),
        "{failed}"
    );
    assert!(failed.contains("reported a failed step"), "{failed}");

    // Done but open, and the grant ending in five days.
    let done = row(&html, "state-done", s.time_bound);
    assert!(done.contains("Robin Kim"), "{done}");
    let expiring = html
        .split("<tr class=\"grant\"")
        .skip(1)
        .find(|r| r.contains(&format!("data-iid=\"{}\"", s.time_bound)))
        .unwrap_or_else(|| panic!("no grant row:\n{html}"));
    assert!(expiring.contains("robin.kim@gitlab.com"), "{expiring}");
    assert!(expiring.contains("(in 5 days)"), "{expiring}");
    assert!(expiring.contains(&format!("href=\"{}\"", esc(&web_url(&s.sb, s.time_bound)))));

    // Seats from the open review: the idle agent and the yearly cost.
    let seats = html
        .split("<tr class=\"seats\">")
        .nth(1)
        .expect("seats row");
    assert!(
        seats.contains("Ann Idle &lt;ann.idle@gitlab.com&gt;: 1,380 USD"),
        "{seats}"
    );

    // Nothing stuck with three days' grace.
    assert!(html.contains("<span class=\"stuck-tag\" id=\"stuck-count\">0 stuck</span>"));
    assert!(!html.contains("row stuck"));

    // The same view as JSON.
    let (code, json, _) = get(&format!("{}/status.json", run.ops()), Some(&bearer())).await;
    assert_eq!(code, 200, "{json}");
    let v: Value = serde_json::from_str(&json).unwrap();
    let group = |state: &str| {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["state"] == state)
            .unwrap()["rows"]
            .as_array()
            .unwrap()
            .clone()
    };
    let w = group("waiting");
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0]["iid"], s.waiting);
    assert_eq!(w[0]["title"], HOSTILE, "JSON keeps the title as typed");
    let manager = w[0]["waiting_for"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["label"] == MANAGER)
        .unwrap();
    assert_eq!(manager["from"], serde_json::json!(["@mlee"]));
    assert_eq!(manager["for_how_long"], "less than a minute");
    let f = group("failed");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["iid"], s.failed);
    assert!(f[0]["failure"]["reason"].as_str().unwrap().contains("400"));
    assert_eq!(group("done").len(), 1);
    assert_eq!(v["expiring"][0]["iid"], s.time_bound);
    assert_eq!(v["expiring"][0]["in_days"], 5);
    assert_eq!(v["seats"]["instances"][0]["yearly_cost"], 1380.0);
    assert_eq!(v["stuck"], 0);
    assert_eq!(v["errors"], serde_json::json!([]));

    // Basic auth (what a browser sends) works as well.
    let (code, _, _) = get(&format!("{}/status", run.ops()), Some(&basic("ops", TOKEN))).await;
    assert_eq!(code, 200);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_refuses_without_or_with_wrong_credentials_and_is_off_by_default() {
    let mut sb = Sandbox::start(Ports::default()).await.unwrap();
    // Off by default: the ops listener does not serve it.
    let run = start_run(&sb, None).await;
    let (code, body, _) = get(&format!("{}/status", run.ops()), Some(&bearer())).await;
    assert_eq!(code, 404, "{body}");
    let (code, _, _) = get(&format!("{}/healthz", run.ops()), None).await;
    assert_eq!(code, 200);
    run.stop().await;

    sb.config.status = status_config("3d");
    let run = start_run(&sb, Some(TOKEN)).await;
    for path in ["/status", "/status.json"] {
        let url = format!("{}{path}", run.ops());
        for auth in [
            None,
            Some("Bearer wrong-secret".to_string()),
            Some(format!("Bearer {TOKEN}x")),
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
            Some(basic("ops", "wrong")),
            Some(basic("someone", TOKEN)),
            Some(basic("", TOKEN)),
            Some(format!("Token {TOKEN}")),
            Some("Basic not-base64!".to_string()),
        ] {
            let (code, body, headers) = get(&url, auth.as_deref()).await;
            assert_eq!(code, 401, "{path} with {auth:?}: {body}");
            assert!(!body.contains("jane") && !body.contains("Robin"));
            assert_eq!(
                headers["www-authenticate"],
                "Basic realm=\"access-bot status\", charset=\"UTF-8\""
            );
        }
        let (code, _, _) = get(&url, Some(&bearer())).await;
        assert_eq!(code, 200, "{path}");
    }
    run.stop().await;

    // Enabled without its secret: `run` does not start.
    let bot = Arc::new(sb.bot().await.unwrap());
    let r = access_bot::bot::run::run(
        bot,
        RunOptions {
            ops: Some("127.0.0.1:0".into()),
            ..Default::default()
        },
        std::future::pending::<()>(),
    )
    .await;
    let e = r.expect_err("no secret, no page").to_string();
    assert!(e.contains("ACCESS_BOT_STATUS_TOKEN"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_issues_are_highlighted_and_counted_on_metrics() {
    let s = seeded("2s").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let run = start_run(&s.sb, Some(TOKEN)).await;
    // A scrape before any page load starts the count in the background.
    let t0 = Instant::now();
    let metric = loop {
        let (_, text, _) = get(&format!("{}/metrics", run.ops()), None).await;
        if let Some(l) = text
            .lines()
            .find(|l| l.starts_with("access_bot_stuck_issues "))
        {
            break l.to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (code, json, _) = get(&format!("{}/status.json", run.ops()), Some(&bearer())).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&json).unwrap();
    // Waiting and failed issues have made no progress for 2s; done ones are not stuck.
    assert_eq!(v["stuck"], 2, "{json}");
    assert_eq!(metric, "access_bot_stuck_issues 2");
    let (_, html, _) = get(&format!("{}/status", run.ops()), Some(&bearer())).await;
    assert!(row(&html, "state-waiting", s.waiting).starts_with(" stuck\""));
    assert!(row(&html, "state-failed", s.failed).starts_with(" stuck\""));
    assert!(!row(&html, "state-done", s.time_bound).starts_with(" stuck\""));
    assert!(html.contains("id=\"stuck-count\">2 stuck</span>"));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_command_prints_the_queue() {
    let s = seeded("3d").await;
    let dir = std::env::temp_dir().join(format!("ab-status-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bot.toml");
    let db = dir.join("state.db");
    std::fs::write(
        &cfg,
        s.sb.config_toml(&db.display().to_string(), None, "5s", None),
    )
    .unwrap();
    let run = |format: &'static str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_access-bot"));
        c.arg("--config")
            .arg(&cfg)
            .arg("status")
            .arg("--format")
            .arg(format)
            .env_remove("RUST_LOG")
            .envs(s.sb.env())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        async move {
            let out = tokio::task::spawn_blocking(move || c.output().unwrap())
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
    };
    let (code, text, err) = run("text").await;
    assert_eq!(code, Some(0), "{text}\n{err}");
    // Shown with --nocapture: the README's example comes from here.
    println!("{text}");
    assert!(
        text.starts_with("access-bot status at ")
            && text
                .lines()
                .next()
                .unwrap()
                .contains("3 open issues tracked, 0 stuck"),
        "{text}"
    );
    let project = access_bot::sandbox::PROJECT;
    let after = |heading: &str| {
        text.split(heading)
            .nth(1)
            .unwrap_or_else(|| panic!("no {heading:?} in\n{text}"))
            .split("\n== ")
            .next()
            .unwrap()
            .to_string()
    };
    let waiting = after("== Waiting (1, label access-bot::waiting)");
    assert!(
        waiting.contains(&format!(
            "{project}#{} special request: {HOSTILE}",
            s.waiting
        )),
        "{waiting}"
    );
    assert!(
        waiting.contains("for: Jane Doe <jane.doe@gitlab.com>"),
        "{waiting}"
    );
    assert!(
        waiting.contains(&format!(
            "waiting for {MANAGER} from @mlee, less than a minute"
        )),
        "{waiting}"
    );
    assert!(waiting.contains(&web_url(&s.sb, s.waiting)));
    let failed = after("== Failed (1, label access-bot::failed)");
    assert!(
        failed.contains(&format!("{project}#{}", s.failed)),
        "{failed}"
    );
    assert!(
        failed.contains("    failed: ") && failed.contains("400"),
        "{failed}"
    );
    assert!(
        failed.contains("next retry: with the next poll (every 5 seconds)"),
        "{failed}"
    );
    assert!(after("== Refused, still open (0").contains("(none)"));
    assert!(after("== Done, still open (1").contains(&format!("#{}", s.time_bound)));
    let expiring = after("== Time-bound grants ending within 14 days (1)");
    assert!(
        expiring.contains(&format!(
            "{project}#{} robin.kim@gitlab.com on Zendesk Global: ends {} (in 5 days)",
            s.time_bound,
            (chrono::Utc::now() + chrono::Duration::days(5)).date_naive()
        )),
        "{expiring}"
    );
    let seats = after("== Idle paid seats");
    assert!(seats.contains("1 idle, 1,380 USD a year"), "{seats}");
    assert!(seats.contains("Ann Idle <ann.idle@gitlab.com>: 1,380 USD a year"));
    // Read-only: no state database was created.
    assert!(!db.exists());

    let (code, json, err) = run("json").await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["total"], 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Chromium from Debian's `chromium` package, if installed.
fn chromium() -> Option<std::path::PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

/// Run Chromium headless with a deadline; its output.
async fn headless(bin: &std::path::Path, args: Vec<String>) -> (bool, String, String) {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
    ])
    .args(args)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = c.spawn().expect("chromium starts");
    let id = child.id();
    let waited = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    match waited {
        Ok(out) => {
            let out = out.unwrap().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
        Err(_) => {
            // Only the process this test started.
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!("chromium did not finish within 90s");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_renders_the_page() {
    let Some(bin) = chromium() else {
        if std::env::var("ACCESS_BOT_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!(
                "ACCESS_BOT_REQUIRE_BROWSER=1 but no Chromium at /usr/bin/chromium: apt-get install chromium"
            );
        }
        eprintln!(
            "SKIPPED a_real_browser_renders_the_page: no headless browser; install Debian's `chromium` package (apt-get install chromium)"
        );
        return;
    };
    let s = seeded("3d").await;
    let run = start_run(&s.sb, Some(TOKEN)).await;
    let addr = run.at.ops.unwrap();
    let dir = std::env::temp_dir().join(format!("ab-chromium-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = format!("--user-data-dir={}", dir.join("profile").display());
    // Basic auth in the URL: Chromium answers the page's challenge with it.
    let url = format!("http://ops:{TOKEN}@{addr}/status");

    let (ok, dom, err) = headless(
        &bin,
        vec![profile.clone(), "--dump-dom".into(), url.clone()],
    )
    .await;
    assert!(ok, "{err}");
    assert!(dom.contains("access-bot status"), "{dom}\n{err}");
    assert!(dom.contains("3 open issues tracked"), "{dom}");
    assert!(dom.contains("from @mlee"), "{dom}");
    assert!(dom.contains("robin.kim@gitlab.com"), "{dom}");
    assert!(dom.contains("Ann Idle"), "{dom}");
    // The hostile title is text in the DOM, not an element.
    assert!(
        dom.contains("&lt;script&gt;alert('x')&lt;/script&gt; @all please"),
        "{dom}"
    );
    assert!(!dom.contains("<script>alert"), "{dom}");

    // Without credentials the browser gets nothing but the refusal.
    let (_, dom, _) = headless(
        &bin,
        vec![
            profile.clone(),
            "--dump-dom".into(),
            format!("http://{addr}/status"),
        ],
    )
    .await;
    assert!(!dom.contains("robin.kim"), "{dom}");

    let png = dir.join("status.png");
    let (ok, _, err) = headless(
        &bin,
        vec![
            profile,
            format!("--screenshot={}", png.display()),
            "--window-size=1280,1600".into(),
            "--hide-scrollbars".into(),
            url,
        ],
    )
    .await;
    assert!(ok, "{err}");
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot ({e}): {err}"));
    assert!(bytes.len() > 1000, "{} bytes", bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // To look at it: ACCESS_BOT_SCREENSHOT_TO=/tmp/status.png.
    if let Ok(to) = std::env::var("ACCESS_BOT_SCREENSHOT_TO") {
        std::fs::write(&to, &bytes).unwrap();
    }
    run.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_a_process_serves_the_page_with_the_secret_from_its_environment() {
    use std::io::BufRead;
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let waiting = sb
        .file_issue(
            "jdoe",
            "Jane Doe, Zendesk Global",
            &[],
            &request_body("Jane Doe", "jane.doe@gitlab.com", "jdoe", None),
        )
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("ab-status-run-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bot.toml");
    std::fs::write(
        &cfg,
        sb.config_toml(
            &dir.join("state.db").display().to_string(),
            None,
            "5s",
            None,
        ) + "\n[status]\nenabled = true\n",
    )
    .unwrap();
    let bin = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_access-bot"));
        c.arg("--config")
            .arg(&cfg)
            .arg("run")
            .env_remove("RUST_LOG")
            .env_remove("ACCESS_BOT_STATUS_TOKEN")
            .envs(sb.env())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };

    // Enabled without its secret: a configuration error, before anything runs.
    let mut c = bin();
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("ACCESS_BOT_STATUS_TOKEN"), "{err}");

    let mut child = bin().env("ACCESS_BOT_STATUS_TOKEN", TOKEN).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let t0 = Instant::now();
    let mut page = None;
    while t0.elapsed() < Duration::from_secs(30) && page.is_none() {
        match rx.try_recv() {
            Ok(l) => {
                if let Some(i) = l.find("status page on http://") {
                    let rest = &l[i + "status page on ".len()..];
                    page = rest
                        .split_whitespace()
                        .next()
                        .map(|p| p.trim_end_matches(';').to_string());
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let page = page.expect("the start line names the status page");
    assert!(page.starts_with("http://127.0.0.1:"), "{page}");
    let (code, _, _) = get(&page, None).await;
    assert_eq!(code, 401);
    // The first poll posts the plan; the page then shows what it waits for.
    let mut html = String::new();
    while t0.elapsed() < Duration::from_secs(30) {
        let (code, body, _) = get(&page, Some(&basic("ops", TOKEN))).await;
        assert_eq!(code, 200, "{body}");
        html = body;
        if html.contains("from @mlee") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let row = row(&html, "state-waiting", waiting);
    assert!(
        row.contains(&format!("<code>{MANAGER}</code> from @mlee")),
        "{row}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every value the page repeats goes through the template engine's HTML
/// escaping, the phrases of `status_phrases.txt` included.
#[test]
fn every_value_on_the_page_is_escaped() {
    let t = access_bot::render::Templates::load(None).unwrap();
    let evil = "<img src=x onerror=alert(1)> \"quoted\" & 'single' @all";
    let row = serde_json::json!({
        "project": evil, "iid": 7, "url": "https://gitlab.example.com/a/-/issues/7\" onclick=\"x",
        "title": evil, "state": "failed", "kind": evil, "people": [evil],
        "waiting_for": [{"label": evil, "from": [evil], "who": evil, "detail": evil,
                         "since": "2026-01-01T00:00:00Z", "for_how_long": evil}],
        "situation": evil, "notes": [evil],
        "last_action": {"what": evil, "at": "2026-01-01T00:00:00Z", "when": evil, "ago": evil},
        "failure": {"reason": evil, "next_retry": {"every": evil, "at": null, "in": null}},
        "progress_at": "2026-01-01T00:00:00Z", "idle_for": evil, "stuck": true,
    });
    let ctx = serde_json::json!({
        "generated_at": "2026-01-01T00:00:00Z", "generated": evil, "projects": [evil],
        "stuck_after": evil, "total": 1, "stuck": 1, "expiring_within_days": 14,
        "groups": [{"state": "failed", "label": evil, "rows": [row]}],
        "expiring": [{"project": evil, "iid": 7, "url": evil, "title": evil, "person": evil,
                      "instance": evil, "expires": evil, "in_days": 3}],
        "seats": {"configured": true, "unreadable": false, "instances": [{"instance": evil,
                  "period": evil, "url": evil, "iid": 1, "yearly_cost": 1.0, "cost": evil,
                  "people": [{"name": evil, "email": evil, "cost": evil}]}]},
        "errors": [evil],
    });
    let html = t.render("status.html", &ctx).unwrap();
    assert!(!html.contains("<img"), "{html}");
    assert!(!html.contains("\" onclick"), "{html}");
    assert!(!html.contains("\"quoted\""), "{html}");
    assert!(html.contains(
        "&lt;img src=x onerror=alert(1)&gt; &quot;quoted&quot; &amp; &#x27;single&#x27; @all"
    ));
    // The text form repeats values as they are (for a terminal), and the
    // macros' phrases are there.
    let text = t.render("status.txt", &ctx).unwrap();
    assert!(text.contains(&format!("failed: {evil}")), "{text}");
    assert!(text.contains(&format!("next retry: with the next poll (every {evil})")));
}
