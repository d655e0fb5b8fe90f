//! The binary as operators run it: configuration from `ACCESS_BOT_CONFIG`,
//! secrets from `<VAR>_FILE`, exit codes, read-only commands that leave no
//! database behind, a closed stdout, `once`'s summary, `log --format json`,
//! and `run`'s start line and operations listener, against the sandbox.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use access_bot::sandbox::{Ports, Sandbox};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_access-bot"));
    // Nothing from the developer's environment.
    for v in [
        "ACCESS_BOT_CONFIG",
        "ACCESS_BOT_GITLAB_URL",
        "ACCESS_BOT_PROJECTS",
        "CI_SERVER_URL",
        "RUST_LOG",
    ] {
        c.env_remove(v);
    }
    c
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ab-cli-{tag}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The shipped example, with GitLab somewhere nothing listens and the state
/// database and templates in `dir`.
fn unreachable_config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("bot.toml"))
        .unwrap()
        .replacen(
            "url = \"https://gitlab.com\"",
            "url = \"http://127.0.0.1:1\"",
            1,
        )
        .replacen("state_db = \"access-bot.db\"", "state_db = \"state.db\"", 1);
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    let p = dir.join("bot.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn fake_secrets(c: &mut Command) -> &mut Command {
    for v in [
        "GITLAB_TOKEN",
        "ZENDESK_GLOBAL_CLIENT_ID",
        "ZENDESK_GLOBAL_CLIENT_SECRET",
        "ZENDESK_FEDERAL_CLIENT_ID",
        "ZENDESK_FEDERAL_CLIENT_SECRET",
        "SMTP_USERNAME",
        "SMTP_PASSWORD",
    ] {
        c.env(v, "x");
    }
    c.env("GOOGLE_SERVICE_ACCOUNT_KEY", "{}")
        .env("ACCESS_BOT_MARKER_KEY", "0123456789abcdef0123456789abcdef")
        .env("SLACK_WEBHOOK_URL", "http://127.0.0.1:1/x")
}

#[test]
fn check_config_survives_a_closed_stdout() {
    // `access-bot check-config | head -1`, with the reader gone before the first line.
    let mut child = bin()
        .args(["--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bot.toml"))
        .arg("check-config")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Through a real pipe and `head`, as the issue reported it.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' --config '{}' check-config | head -1",
            env!("CARGO_BIN_EXE_access-bot"),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("bot.toml")
                .display()
        ))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn config_comes_from_access_bot_config_and_errors_name_the_line() {
    let dir = temp_dir("env");
    let cfg = unreachable_config(&dir);
    let out = bin()
        .current_dir(std::env::temp_dir())
        .env("ACCESS_BOT_CONFIG", &cfg)
        .arg("check-config")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.starts_with(&format!("{}: valid", cfg.display())),
        "{stdout}"
    );
    // --config wins over the variable; a bad value is exit 2 with file and line.
    let bad = dir.join("bad.toml");
    let text_bad = std::fs::read_to_string(&cfg).unwrap().replacen(
        "poll_interval = \"60s\"",
        "poll_interval = \"0s\"",
        1,
    );
    std::fs::write(&bad, &text_bad).unwrap();
    let out = bin()
        .env("ACCESS_BOT_CONFIG", &cfg)
        .arg("--config")
        .arg(&bad)
        .arg("check-config")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = text_bad
        .lines()
        .position(|l| l.starts_with("poll_interval"))
        .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!("{}:{line}: ", bad.display())),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn read_only_commands_leave_no_database_and_gitlab_down_is_exit_3() {
    let dir = temp_dir("ro");
    let cfg = unreachable_config(&dir);
    let run = |args: &[&str]| {
        let mut c = bin();
        fake_secrets(&mut c);
        c.current_dir(&dir).arg("--config").arg(&cfg).args(args);
        c.output().unwrap()
    };
    let out = run(&["log"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no state database at state.db"), "{stderr}");
    assert_eq!(run(&["check-config"]).status.code(), Some(0));
    for args in [&["once", "--dry-run"][..], &["plan", "--issue", "1"][..]] {
        let out = run(args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        // The cause is kept, not only "cannot connect".
        assert!(stderr.contains("Connection refused"), "{args:?}: {stderr}");
    }
    assert!(
        !dir.join("state.db").exists(),
        "a read-only command created the database"
    );
    // A real `once` is not read-only: it creates the database (private), then fails on GitLab.
    let out = run(&["once"]);
    assert_eq!(out.status.code(), Some(3));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("state.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "state database mode {mode:o}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config file for the sandbox, in its own folder.
fn sandbox_config(sb: &Sandbox, dir: &Path) -> PathBuf {
    let p = dir.join("bot.toml");
    std::fs::write(
        &p,
        sb.config_toml(
            &dir.join("state.db").display().to_string(),
            None,
            "5s",
            None,
        ),
    )
    .unwrap();
    p
}

async fn blocking(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

/// `once --dry-run` as an admin runs it: the light agent's whole run (plan,
/// account, group, result, ticks, close) printed and not made; twice the
/// same, as it keeps nothing; then a real `once` does it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_dry_run_prints_every_write_and_makes_none() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let iid = sb
        .file_issue(
            "jdoe",
            "Jane Doe: Zendesk Global light agent",
            &["support::to do"],
            "- [ ] Zendesk Global: Light Agent\n- Justification for this access: tickets.\n",
        )
        .await
        .unwrap();
    let dir = temp_dir("rehearsal");
    let cfg = sandbox_config(&sb, &dir);
    let once = |extra: &[&str]| {
        let mut c = bin();
        c.arg("--config").arg(&cfg).arg("once").args(extra);
        for (var, value) in sb.env() {
            c.env(var, value);
        }
        c
    };
    sb.clear_logs();
    let mut printed = Vec::new();
    for _ in 0..2 {
        let out = blocking(once(&["--dry-run"])).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
        for expected in [
            &format!("== support/access-requests#{iid}: would do") as &str,
            "#### access-bot plan: light-agent request",
            "global: jane.doe@gitlab.com: create the account as Light Agent",
            "#### access-bot: done",
            "tick `Zendesk Global: Light Agent`",
            "close the issue",
            "access-bot once --dry-run: 1 issue (1 planned); 0 poll errors",
        ] {
            assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
        }
        printed.push(stdout);
    }
    assert_eq!(printed[0], printed[1], "a dry run keeps nothing");
    let writes = sb.writes();
    assert!(writes.is_empty(), "{writes:?}");
    assert!(sb.ticked(iid).is_empty());
    assert!(
        !dir.join("state.db").exists(),
        "a dry run created the database"
    );
    let out = blocking(once(&[])).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!sb.ticked(iid).is_empty(), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_with_secrets_from_files_summarises_and_log_json_is_structured() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    // An end-user already in Zendesk: the audit row's `before` is an object.
    sb.zd("global")
        .add_user("Jane Doe", "jane.doe@gitlab.com", "end-user", None);
    let iid = sb
        .file_issue(
            "jdoe",
            "Jane Doe: Zendesk Global light agent",
            &["support::to do"],
            "- [ ] Zendesk Global: Light Agent\n- Justification for this access: tickets.\n",
        )
        .await
        .unwrap();
    let dir = temp_dir("once");
    let cfg = sandbox_config(&sb, &dir);
    let mut c = bin();
    c.arg("--config").arg(&cfg).arg("once");
    for (var, value) in sb.env() {
        if var == "GITLAB_TOKEN" {
            // Kubernetes/Docker secrets: the token in a file, with the newline editors add.
            let f = dir.join("gitlab-token");
            std::fs::write(&f, format!("{value}\n")).unwrap();
            c.env("GITLAB_TOKEN_FILE", &f).env_remove("GITLAB_TOKEN");
        } else {
            c.env(var, value);
        }
    }
    let out = blocking(c).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!sb.ticked(iid).is_empty(), "{stdout}");
    let last = stdout.lines().last().unwrap_or("");
    assert_eq!(
        last, "access-bot once: 1 issue (1 done); 0 poll errors",
        "{stdout}"
    );
    // The audit trail as JSON: `before` and `after` are values, not strings of JSON.
    let mut c = bin();
    c.arg("--config")
        .arg(&cfg)
        .args(["log", "--format", "json"]);
    let out = blocking(c).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!rows.is_empty(), "{stdout}");
    let first = &rows[0];
    assert!(first["before"].is_object(), "before is structured: {first}");
    assert_eq!(first["before"]["role"], "end-user", "{first}");
    assert!(!first["after"].is_null(), "{first}");
    for r in &rows {
        if let Some(s) = r["before"].as_str() {
            assert!(serde_json::from_str::<serde_json::Value>(s).is_err(), "{r}");
        }
    }
    // The table: every column starts at the same place on every line.
    let mut c = bin();
    c.arg("--config").arg(&cfg).arg("log");
    let out = blocking(c).await;
    let (table, _) = text(&out);
    let header = table.lines().next().unwrap();
    let col = header.find("outcome").unwrap();
    for l in table.lines().skip(1) {
        assert!(
            l[col..].starts_with("ok") || l[col..].starts_with("failed"),
            "misaligned:\n{table}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_a_process_says_what_it_watches_and_serves_the_probes() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let dir = temp_dir("run");
    let cfg = sandbox_config(&sb, &dir);
    let mut child = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .envs(sb.env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    let mut start = None;
    while t0.elapsed() < Duration::from_secs(20) && start.is_none() {
        match rx.try_recv() {
            Ok(l) if l.contains("watching") => start = Some(l),
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let start = start.expect("a start line");
    let _ = child.kill();
    let _ = child.wait();
    // One line: what, where, how often, where it listens.
    for needle in [
        "watching support/access-requests on http://127.0.0.1:",
        "polling every 5s",
        "no webhook",
        "ops on http://127.0.0.1:",
        "seat review on cron",
    ] {
        assert!(start.contains(needle), "{needle:?} not in: {start}");
    }
    // The operations listener bound port 0 and the line says which port it got;
    // a second process checks it while the first is alive.
    let mut child = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .envs(sb.env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    let mut ops = None;
    while t0.elapsed() < Duration::from_secs(20) && ops.is_none() {
        match rx.try_recv() {
            Ok(l) => {
                if let Some(i) = l.find("ops on http://") {
                    let rest = &l[i + "ops on http://".len()..];
                    ops = rest.split_whitespace().next().map(String::from);
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let ops = ops.expect("the ops address");
    let http = reqwest::Client::new();
    let mut ready = false;
    while t0.elapsed() < Duration::from_secs(20) {
        let r = http
            .get(format!("http://{ops}/readyz"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "/readyz never became ready");
    let r = http
        .get(format!("http://{ops}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = http
        .get(format!("http://{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("access_bot_poll_cycles_total"), "{m}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn absurd_durations_are_errors_not_panics() {
    let dir = temp_dir("dur");
    let body = dir.join("issue.md");
    std::fs::write(
        &body,
        "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Zendesk Global: Agent - Support Engineer\n\nExpires: 99999999999999d\n",
    )
    .unwrap();
    let out = bin()
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bot.toml"))
        .args([
            "plan",
            "--title",
            "Zendesk Global access",
            "--labels",
            "support::to do",
            "--body-file",
        ])
        .arg(&body)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("Expires"), "{stdout}");
    let out = bin()
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bot.toml"))
        .args(["log", "--since", "99999999999999w"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("too long"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `run` answers probes and takes webhook deliveries while its start-up work
/// (connecting to GitLab and the target systems) is still going on: here
/// GitLab accepts the connection and never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_listens_before_start_up_work_is_done() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let dir = temp_dir("early-listen");
    // Accepts connections (the kernel's backlog) and never reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let text = sb
        .config_toml(
            &dir.join("state.db").display().to_string(),
            Some(&listen.to_string()),
            "10m",
            None,
        )
        .replace(
            &format!("http://{}", sb.gitlab_addr),
            &format!("http://{silent_addr}"),
        )
        // The webhook and the probes on one listener.
        .replace(
            "[ops]\nlisten = \"127.0.0.1:0\"",
            &format!("[ops]\nlisten = \"{listen}\""),
        );
    let cfg = dir.join("bot.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut child = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .envs(sb.env())
        .env("GITLAB_WEBHOOK_SECRET", "early-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let mut health = None;
    while t0.elapsed() < Duration::from_secs(20) && health.is_none() {
        if let Ok(r) = http.get(format!("http://{listen}/healthz")).send().await {
            health = Some(r.status().as_u16());
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let ready = http
        .get(format!("http://{listen}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16());
    let delivery = http
        .post(format!("http://{listen}/webhook"))
        .header("x-gitlab-token", "early-secret")
        .header("x-gitlab-event", "Issue Hook")
        .body(
            serde_json::json!({
                "object_kind": "issue",
                "user": {"username": "someone"},
                "project": {"path_with_namespace": "support/access-requests"},
                "object_attributes": {"iid": 1}
            })
            .to_string(),
        )
        .send()
        .await
        .map(|r| r.status().as_u16());
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    drop(silent);
    assert_eq!(health, Some(200), "/healthz answers while start-up hangs");
    assert_eq!(ready.ok(), Some(503), "/readyz says it is starting");
    assert_eq!(delivery.ok(), Some(202), "a delivery is queued for later");
    assert!(still_running, "the bot was still starting, not exited");
}
