//! The command line. `anyhow` lives here, at the edge.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::plan::{self, Observed};
use crate::render::Templates;
use crate::report;
use crate::request::{self, IssueInput, RequestKind, UserRef};

/// Set once stdout's reader went away (`access-bot log | head -1`): the rest
/// of the output is dropped, and the command still finishes its work and
/// exits with the code its work deserves.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Write to stdout; a closed pipe is not an error worth a panic.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.flush()) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            tracing::warn!(error = %e, "cannot write to stdout");
        }
    }
}

macro_rules! out {
    ($($t:tt)*) => { write_out(format_args!($($t)*)) };
}
macro_rules! outln {
    ($($t:tt)*) => { write_out(format_args!("{}\n", format_args!($($t)*))) };
}

/// An error that ends the command with a given exit code (the message keeps its causes).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

/// Exit codes (also in the README).
pub mod exit {
    /// Everything done or waiting.
    pub const OK: u8 = 0;
    /// At least one issue failed, or a workflow did not reach its end.
    pub const FAILED: u8 = 1;
    /// Bad configuration or command line.
    pub const CONFIG: u8 = 2;
    /// A connectivity check failed.
    pub const CHECK: u8 = 3;
}

#[derive(Debug, Parser)]
#[command(
    name = "access-bot",
    version,
    about = "Turns GitLab access-request, entitlement and offboarding issues into finished work in Zendesk and Google Groups"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "ACCESS_BOT_CONFIG",
        default_value = "bot.toml"
    )]
    pub config: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogOutput {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SeatFormat {
    Text,
    Json,
    Csv,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bot's main job on the embedded sandbox: no configuration, no credentials.
    Demo,
    /// Validate the configuration offline and summarise what the bot will act on.
    CheckConfig,
    /// Connect to every configured system once and report what works and what is wrong.
    Check,
    /// Explain what the bot would do with an issue, and why not if it would not.
    Plan(PlanArgs),
    /// One cycle over all candidate issues, then exit (for a scheduled CI pipeline).
    Once {
        /// A rehearsal: read and decide everything, write nothing anywhere,
        /// print what would have been written.
        #[arg(long = "dry-run")]
        rehearse: bool,
    },
    /// The daemon: poll on schedule, react to webhooks, stop cleanly on SIGINT/SIGTERM.
    Run {
        /// A rehearsal: as `once --dry-run`, on schedule.
        #[arg(long = "dry-run")]
        rehearse: bool,
    },
    /// Review idle paid Zendesk seats: print the report and open or update one
    /// review issue per instance and month (reviewers reclaim seats by ticking).
    AuditSeats {
        /// Print the report, and the review issue it would open or update;
        /// touch nothing in GitLab.
        #[arg(long = "dry-run")]
        rehearse: bool,
        /// Only this Zendesk instance (as named in bot.toml).
        #[arg(long)]
        instance: Option<String>,
        /// `text` for people, `json` or `csv` for finance.
        #[arg(long, value_enum, default_value_t = SeatFormat::Text)]
        format: SeatFormat,
    },
    /// The audit trail: who gave whom what access, when, approved by whom.
    Log {
        /// Only rows newer than this (e.g. 7d, 24h).
        #[arg(long)]
        since: Option<String>,
        /// Only rows about this person (email).
        #[arg(long)]
        user: Option<String>,
        /// Only rows about this issue.
        #[arg(long)]
        issue: Option<u64>,
        /// `table` for people, `json` for one JSON object per line (SIEM export).
        #[arg(long, value_enum, default_value_t = LogOutput::Table)]
        format: LogOutput,
    },
    /// The queue at a glance: every open issue the bot tracks, by state, what
    /// each waits for and from whom, failures, time-bound grants ending soon,
    /// idle seats (read-only: reads GitLab, creates no state database).
    Status {
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Serve the sandbox (fake GitLab, Zendesk, Google) on loopback and print a config snippet.
    Sandbox {
        /// A seed scenario (TOML) with people, accounts and issues.
        #[arg(long)]
        seed: Option<PathBuf>,
        /// First port (GitLab); Google is +1, Zendesk instances +2, +3 (0: any free ports, printed).
        #[arg(long, default_value_t = 18080)]
        port: u16,
    },
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The issue description, from a file (offline).
    #[arg(long, conflicts_with = "issue")]
    pub body_file: Option<PathBuf>,
    /// A live issue (by iid) in the first configured project: read it and explain.
    #[arg(long)]
    pub issue: Option<u64>,
    /// Issue title.
    #[arg(long, default_value = "")]
    pub title: String,
    /// Comma-separated labels.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// The issue author's GitLab username.
    #[arg(long, default_value = "requester")]
    pub author: String,
    /// The author's email (light-agent requests use it when the issue names none).
    #[arg(long)]
    pub author_email: Option<String>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// `main` with the command line given: the benchmark runs the bot from its
/// own binary this way, so `cargo run --bin access-bot-bench` needs nothing else built.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let default_level = match cli.command {
        Command::Demo | Command::CheckConfig | Command::Plan(_) | Command::Status { .. } => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    // One thread: the bot waits on APIs, its state database is one
    // connection behind a lock, and a task that stays on one thread is woken
    // without a hand-over between threads (BENCHMARKS.md, reaction time).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = e
                .downcast_ref::<Exit>()
                .map(|x| x.code)
                .unwrap_or(exit::CONFIG);
            ExitCode::from(code)
        }
    }
}

/// Human-readable on a terminal, JSON with `--log-format json`; `RUST_LOG` overrides the level.
pub fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("access_bot={default_level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber; nothing to report.
    let _ = match format {
        // `message` and the event's fields at the top level, where log
        // pipelines look for them; the issue's span stays under `span`.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::CheckConfig => check_config(&cli.config),
        Command::Plan(args) if args.issue.is_some() => plan_live(&cli.config, &args).await,
        Command::Plan(args) => plan_offline(&cli.config, &args),
        Command::Once { rehearse } => once(&cli.config, rehearse).await,
        Command::Run { rehearse } => daemon(&cli.config, rehearse).await,
        Command::Check => check(&cli.config).await,
        Command::Status { format } => status(&cli.config, format).await,
        Command::AuditSeats {
            rehearse,
            instance,
            format,
        } => audit_seats(&cli.config, rehearse, instance.as_deref(), format).await,
        Command::Log {
            since,
            user,
            issue,
            format,
        } => audit_log(&cli.config, since.as_deref(), user, issue, format),
        #[cfg(feature = "sandbox")]
        Command::Demo => demo().await,
        #[cfg(feature = "sandbox")]
        Command::Sandbox { seed, port } => sandbox(seed.as_deref(), port).await,
        #[cfg(not(feature = "sandbox"))]
        Command::Demo | Command::Sandbox { .. } => {
            anyhow::bail!("this build has no sandbox (built without the `sandbox` feature)")
        }
    }
}

async fn connect(config: &Path, rehearse: bool) -> anyhow::Result<crate::bot::Bot> {
    let cfg = load_config(config)?;
    connect_with(cfg, rehearse).await
}

/// Connect to every system; what goes wrong talking to them is a connectivity
/// failure (exit 3), what is wrong locally a configuration error (exit 2).
/// A rehearsal (dry run) never creates the state database: without one it
/// works in memory, and with one on a copy of it in memory.
async fn connect_with(cfg: Config, rehearse: bool) -> anyhow::Result<crate::bot::Bot> {
    let store = if rehearse {
        match crate::store::Store::copy_of_file(&cfg.bot.state_db)? {
            Some(s) => s,
            None => crate::store::Store::open(Path::new(":memory:"))?,
        }
    } else {
        crate::store::Store::open(&cfg.bot.state_db)?
    };
    let store = std::sync::Arc::new(store);
    let mut bot = crate::bot::Bot::connect(cfg, &crate::secret::Secrets::from_env(), store)
        .await
        .map_err(start_error)?;
    if rehearse {
        bot.rehearse()?;
    }
    Ok(bot)
}

/// The exit code a start-up failure deserves, with its causes in the message.
fn start_error(e: crate::bot::StartError) -> anyhow::Error {
    use crate::bot::StartError as S;
    let code = match &e {
        S::Gitlab(_) | S::Accounts(_) | S::Groups(_) | S::Missing { .. } | S::Notify(_) => {
            exit::CHECK
        }
        S::Secret(_) | S::Store(_) | S::Render(_) | S::MarkerKey { .. } => exit::CONFIG,
        S::Identity(_) => exit::CHECK,
    };
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(&format!(": {text}"));
        }
        source = s.source();
    }
    anyhow::Error::new(Exit { code, message })
}

/// What a rehearsal would have written beyond the issues it reported on
/// (ops notices, e-mails, review issues, labels); nothing for a real run.
fn print_rehearsal(bot: &crate::bot::Bot) {
    let rest = bot.rehearsal_rest();
    if !rest.is_empty() {
        outln!("== would also write");
        for line in rest {
            outln!("{line}");
        }
    }
}

fn print_report(r: &crate::bot::CycleReport) {
    for (project, iid, o) in &r.outcomes {
        match o {
            crate::bot::Outcome::Planned(text) => outln!("== {project}#{iid}: would do\n{text}"),
            other => outln!(
                "{project}#{iid}: {}",
                serde_json::to_string(other).unwrap_or_default()
            ),
        }
    }
    for e in &r.errors {
        outln!("error: {e}");
    }
}

async fn once(config: &Path, rehearse: bool) -> anyhow::Result<u8> {
    let bot = connect(config, rehearse).await?;
    let r = bot.once().await;
    print_report(&r);
    print_rehearsal(&bot);
    outln!("{}", summary(&r, rehearse));
    Ok(if r.failed() { exit::FAILED } else { exit::OK })
}

/// One line at the end of `once`: how many issues, by outcome.
pub fn summary(r: &crate::bot::CycleReport, rehearsed: bool) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, _, o) in &r.outcomes {
        let name = serde_json::to_value(o)
            .ok()
            .and_then(|v| v["outcome"].as_str().map(String::from))
            .unwrap_or_else(|| "unknown".into());
        *counts.entry(name).or_insert(0) += 1;
    }
    let by = if counts.is_empty() {
        "nothing to do".to_string()
    } else {
        counts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let standby = if r.standby.is_empty() {
        String::new()
    } else {
        format!(
            "; another replica acts on {} (this one did nothing there)",
            r.standby.join(", ")
        )
    };
    format!(
        "access-bot once{}: {} issue{} ({by}); {} poll error{}{standby}",
        if rehearsed { " --dry-run" } else { "" },
        r.outcomes.len(),
        if r.outcomes.len() == 1 { "" } else { "s" },
        r.errors.len(),
        if r.errors.len() == 1 { "" } else { "s" },
    )
}

async fn daemon(config: &Path, rehearse: bool) -> anyhow::Result<u8> {
    let cfg = load_config(config)?;
    let webhook = match &cfg.webhook {
        Some(w) => Some((
            w.listen.clone(),
            crate::secret::Secrets::from_env().get(&w.token_env)?,
        )),
        None => None,
    };
    let status_token = if cfg.status.enabled {
        Some(crate::secret::Secrets::from_env().get(&cfg.status.token_env)?)
    } else {
        None
    };
    // The listeners come up first, from the configuration alone: probes get
    // an answer and webhook deliveries are queued while the bot connects and
    // resolves ids.
    let opts = crate::bot::run::RunOptions {
        ops: Some(cfg.ops.listen.clone()),
        webhook,
        status_token,
        ..Default::default()
    };
    let listeners = crate::bot::run::listen(&cfg, &opts)
        .await
        .map_err(|e| Exit {
            code: exit::CONFIG,
            message: format!("cannot listen: {e:#}"),
        })?;
    let bot = std::sync::Arc::new(connect_with(cfg, rehearse).await?);
    crate::bot::run::run_listening(bot, opts, listeners, crate::bot::run::shutdown_signal())
        .await?;
    Ok(exit::OK)
}

async fn status(config: &Path, format: OutputFormat) -> anyhow::Result<u8> {
    // Read-only: a dry run, which never creates the state database.
    let bot = connect(config, true).await?;
    let report = bot.status().await;
    out!("{}", render_status(&report, &bot.templates, format)?);
    Ok(if report.errors.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// `access-bot status` as printed: the text template, or the report as JSON.
pub fn render_status(
    report: &crate::bot::status::StatusReport,
    templates: &crate::render::Templates,
    format: OutputFormat,
) -> anyhow::Result<String> {
    Ok(match format {
        OutputFormat::Text => report.to_text(templates)?,
        OutputFormat::Json => serde_json::to_string_pretty(report)? + "\n",
    })
}

async fn plan_live(config: &Path, args: &PlanArgs) -> anyhow::Result<u8> {
    // Read-only: a rehearsal, which never creates the state database.
    let bot = connect(config, true).await?;
    let project = bot.cfg.gitlab.projects[0].clone();
    let iid = args.issue.unwrap_or_default();
    let o = bot.process(&project, iid).await;
    match &o {
        crate::bot::Outcome::Planned(text) => out!("{text}"),
        crate::bot::Outcome::Ignored => outln!(
            "#{iid}: not for the bot: closed, or no [[kinds]] rule matches its labels and title (labels the bot polls: {})",
            bot.cfg.poll_labels().join(", ")
        ),
        crate::bot::Outcome::Waiting => outln!(
            "#{iid}: waiting, with nothing new to say: the bot's last comment on the issue says what it waits for"
        ),
        crate::bot::Outcome::Done => {
            outln!("#{iid}: done: nothing left to do, and nothing new to say")
        }
        crate::bot::Outcome::Refused => outln!(
            "#{iid}: refused, with nothing new to say: the bot's last comment on the issue says why"
        ),
        crate::bot::Outcome::Failed(why) => outln!("#{iid}: failed: {why}"),
        other => outln!(
            "#{iid}: {}",
            serde_json::to_string_pretty(other).unwrap_or_default()
        ),
    }
    print_rehearsal(&bot);
    Ok(if o.is_failure() {
        exit::FAILED
    } else {
        exit::OK
    })
}

async fn audit_seats(
    config: &Path,
    rehearse: bool,
    instance: Option<&str>,
    format: SeatFormat,
) -> anyhow::Result<u8> {
    let bot = connect(config, rehearse).await?;
    let reports = bot.audit_seats(instance).await?;
    out!("{}", render_seat_reports(&reports, format));
    if matches!(format, SeatFormat::Text) {
        print_rehearsal(&bot);
    }
    Ok(exit::OK)
}

/// The seat review for people (text) or finance (JSON, CSV).
pub fn render_seat_reports(reports: &[crate::bot::SeatReport], format: SeatFormat) -> String {
    use crate::seats::money;
    match format {
        SeatFormat::Json => serde_json::to_string_pretty(reports).unwrap_or_default() + "\n",
        SeatFormat::Csv => {
            let rows: Vec<(String, crate::seats::SeatCandidate)> = reports
                .iter()
                .flat_map(|r| r.candidates.iter().map(|c| (r.instance.clone(), c.clone())))
                .collect();
            let currency = reports.first().map(|r| r.currency.as_str()).unwrap_or("");
            crate::seats::csv(&rows, currency)
        }
        SeatFormat::Text => {
            let mut out = String::new();
            for r in reports {
                out.push_str(&format!(
                    "Zendesk {} ({}): {} paid seats, {} idle, {} kept off by recent ticket work; reclaiming all would save {} a year\n",
                    r.instance,
                    r.period,
                    r.paid_seats,
                    r.candidates.len(),
                    r.active_by_tickets,
                    money(r.yearly_total, &r.currency)
                ));
                let rows: Vec<Vec<String>> = r
                    .candidates
                    .iter()
                    .map(|c| {
                        vec![
                            c.email.clone(),
                            c.role.clone(),
                            c.last_login.clone(),
                            c.days_idle
                                .map(|d| d.to_string())
                                .unwrap_or_else(|| "-".into()),
                            if c.suspended { "suspended" } else { "" }.to_string(),
                        ]
                    })
                    .collect();
                if !rows.is_empty() {
                    for l in table(&["email", "role", "last login", "days idle", ""], &rows).lines()
                    {
                        out.push_str(&format!("  {l}\n"));
                    }
                }
                if let Some(u) = &r.issue_url {
                    out.push_str(&format!("  review issue: {u}\n"));
                }
            }
            out
        }
    }
}

fn audit_log(
    config: &Path,
    since: Option<&str>,
    user: Option<String>,
    issue: Option<u64>,
    format: LogOutput,
) -> anyhow::Result<u8> {
    let cfg = load_config(config)?;
    let since = match since {
        Some(s) => {
            let d =
                crate::config::parse_duration(s).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
            let d = chrono::Duration::from_std(d)?;
            Some(
                chrono::Utc::now()
                    .checked_sub_signed(d)
                    .ok_or_else(|| anyhow::anyhow!("--since {s}: too far back"))?,
            )
        }
        None => None,
    };
    // Reading the trail must not create an empty one.
    let Some(store) = crate::store::Store::open_existing(&cfg.bot.state_db)? else {
        return Err(Exit {
            code: exit::CONFIG,
            message: format!(
                "no state database at {}: the bot has not run with this configuration here (bot.state_db), so there is no audit trail to show",
                cfg.bot.state_db.display()
            ),
        }
        .into());
    };
    let rows = store.audit_rows(&crate::store::AuditQuery {
        since,
        subject: user,
        project: None,
        iid: issue,
    })?;
    out!("{}", render_audit(&rows, format));
    Ok(exit::OK)
}

/// The audit rows as a table or as JSON lines. In JSON, `before` and `after`
/// are the objects they record (text stays text; nothing recorded is `null`).
pub fn render_audit(rows: &[crate::store::AuditRow], format: LogOutput) -> String {
    let mut out = String::new();
    match format {
        LogOutput::Json => {
            for r in rows {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                for key in ["before", "after"] {
                    let text = v[key].as_str().unwrap_or_default().to_string();
                    v[key] = structured(&text);
                }
                out.push_str(&v.to_string());
                out.push('\n');
            }
        }
        LogOutput::Table => {
            let body: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        format!("#{}", r.iid),
                        r.subject.clone(),
                        r.instance.clone(),
                        r.action.rsplit('/').next().unwrap_or(&r.action).to_string(),
                        r.outcome.clone(),
                        r.approvers.clone(),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "time (UTC)",
                    "issue",
                    "person",
                    "system",
                    "action",
                    "outcome",
                    "approved by",
                ],
                &body,
            ));
        }
    }
    out
}

/// A stored audit value as JSON: parsed when it is JSON, else the text.
fn structured(text: &str) -> serde_json::Value {
    if text.trim().is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// A text table whose columns are as wide as their widest cell (the last
/// column is not padded).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut l = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                l.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                l.push_str(c);
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

async fn check(config: &Path) -> anyhow::Result<u8> {
    let cfg = load_config(config)?;
    let ok = crate::check::run(&cfg, &crate::secret::Secrets::from_env()).await;
    Ok(if ok { exit::OK } else { exit::CHECK })
}

#[cfg(feature = "sandbox")]
async fn demo() -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    let demo = crate::demo::Demo::run().await?;
    outln!(
        "access-bot demo: every workflow against the embedded sandbox\n{}",
        demo.transcript
    );
    outln!("\n==================================================================");
    if demo.failures.is_empty() {
        outln!(
            "All {} workflows reached their expected end in {:.1}s.",
            demo.issues.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(exit::OK)
    } else {
        for f in &demo.failures {
            outln!("NOT REACHED: {f}");
        }
        Ok(exit::FAILED)
    }
}

#[cfg(feature = "sandbox")]
async fn sandbox(seed: Option<&Path>, port: u16) -> anyhow::Result<u8> {
    let ports = crate::sandbox::Ports {
        base: (port != 0).then_some(port),
    };
    let sb = crate::sandbox::Sandbox::start(ports).await?;
    // The addresses first, one per line, so that scripts and tests can read
    // the ports back (with `--port 0` they are whatever was free).
    outln!("Sandbox listening:");
    outln!("  gitlab http://{}", sb.gitlab_addr);
    outln!("  google http://{}", sb.google_addr);
    for (name, z) in &sb.zendesk {
        outln!("  zendesk.{name} http://{}", z.addr);
    }
    outln!("  smtp {}", sb.smtp_addr);
    outln!("  slack http://{}", sb.slack_addr);
    let port = sb.gitlab_addr.port();
    if let Some(seed) = seed {
        let text =
            std::fs::read_to_string(seed).with_context(|| format!("reading {}", seed.display()))?;
        let scenario = crate::sandbox::scenario::Scenario::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", seed.display()))?;
        let iids = sb.apply(&scenario).await?;
        outln!(
            "Seeded {}: {} issues ({:?})",
            seed.display(),
            iids.len(),
            iids
        );
    }
    let cfg_path = std::env::temp_dir().join(format!("access-bot-sandbox-{port}.toml"));
    let key_path = std::env::temp_dir().join(format!("access-bot-sandbox-{port}-google-key.json"));
    if let Some(var) = sb.config.google.as_ref().and_then(|g| g.key_env.clone()) {
        std::fs::write(&key_path, sb.secrets.get(&var)?.expose())?;
    }
    std::fs::write(
        &cfg_path,
        sb.config_toml(
            "access-bot-sandbox.db",
            None,
            "10s",
            Some(&key_path.display().to_string()),
        ),
    )?;
    outln!("Sandbox running (Ctrl-C to stop).\n\n{}", sb.snippet());
    outln!(
        "A complete configuration for it: {}\n  (export the variables below, then: access-bot --config {} once)\n",
        cfg_path.display(),
        cfg_path.display()
    );
    outln!("Secrets (sandbox only):");
    for (var, _) in sb.config.secret_envs() {
        if let Ok(v) = sb.secrets.get(&var) {
            let shown = if v.expose().len() > 80 {
                "<service-account key JSON>".to_string()
            } else {
                v.expose().to_string()
            };
            outln!("  {var}={shown}");
        }
    }
    outln!(
        "\nTry: curl -H 'PRIVATE-TOKEN: {}' http://{}/api/v4/projects/support%2Faccess-requests/issues",
        sb.token_of("access-bot"),
        sb.gitlab_addr
    );
    crate::bot::run::shutdown_signal().await;
    Ok(exit::OK)
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| {
        Exit {
            code: exit::CONFIG,
            message: e.to_string(),
        }
        .into()
    })
}

fn check_config(path: &Path) -> anyhow::Result<u8> {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(exit::CONFIG);
        }
    };
    outln!("{}: valid", path.display());
    outln!(
        "GitLab {} projects {} as @{}, polling {} (labels: {})",
        cfg.gitlab.url,
        cfg.gitlab.projects.join(", "),
        cfg.gitlab.bot_username,
        cfg.gitlab.poll_interval,
        cfg.poll_labels().join(", ")
    );
    let mut kinds: Vec<Vec<String>> = Vec::new();
    for k in RequestKind::ALL {
        let p = cfg.policy_for(k);
        let rules = cfg.kinds.iter().filter(|r| r.kind == k).count();
        if rules == 0 {
            continue;
        }
        let needs = if !p.trusted_authors.is_empty() {
            format!("trusted authors {}", p.trusted_authors.join(", "))
        } else if p.approvals.is_empty() {
            "no approval".into()
        } else {
            format!("approvals {}", p.approvals.join(" + "))
        };
        kinds.push(vec![format!("  {}", k.human()), needs]);
    }
    for l in table(&["", ""], &kinds).lines().skip(1) {
        outln!("{l}");
    }
    for (name, z) in &cfg.zendesk {
        outln!(
            "Zendesk {name} ({}) at {}, {} req/min, levels: {}{}{}",
            z.display_name,
            z.base_url,
            z.requests_per_minute,
            z.access_levels
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            z.okta_group
                .as_ref()
                .map(|g| format!(
                    ", Okta group {g} (in {})",
                    match z.group_directory {
                        crate::config::GroupDirectoryKind::Google => "Google",
                        crate::config::GroupDirectoryKind::Okta => "Okta",
                    }
                ))
                .unwrap_or_default(),
            if z.requires.is_empty() {
                String::new()
            } else {
                format!(", grants also need {}", z.requires.join(" + "))
            }
        );
    }
    if let Some(g) = &cfg.google {
        outln!(
            "Google Groups at {} ({})",
            g.base_url,
            if g.subject.is_some() {
                "domain-wide delegation"
            } else {
                "service account with a Groups admin role"
            }
        );
    }
    if let Some(o) = &cfg.okta {
        outln!(
            "Okta groups at {} ({})",
            o.org_url,
            match &o.auth {
                crate::config::OktaAuth::ApiToken { .. } => "API token",
                crate::config::OktaAuth::PrivateKeyJwt { .. } => "OAuth service app",
            }
        );
    }
    outln!(
        "Allowed email domains: {}",
        cfg.bot.allowed_email_domains.join(", ")
    );
    let missing: Vec<_> = cfg
        .secret_envs()
        .into_iter()
        .filter(|(v, _)| !crate::secret::Secret::is_provided(v))
        .map(|(v, what)| format!("{v} ({what})"))
        .collect();
    if !missing.is_empty() {
        outln!(
            "Not set in this environment (needed to run, not to validate): {}",
            missing.join(", ")
        );
    }
    Ok(exit::OK)
}

fn plan_offline(config: &Path, args: &PlanArgs) -> anyhow::Result<u8> {
    let cfg = load_config(config)?;
    let Some(path) = &args.body_file else {
        anyhow::bail!("plan needs --body-file FILE (or, with a running bot, --issue IID)");
    };
    let description =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let issue = IssueInput {
        iid: 0,
        title: args.title.clone(),
        description,
        labels: args.labels.clone(),
        author: UserRef {
            id: 0,
            username: args.author.trim_start_matches('@').to_string(),
        },
        author_email: args.author_email.clone(),
        author_name: None,
        web_url: String::new(),
        created_at: chrono::Utc::now(),
        updated_at: None,
        state: "opened".into(),
    };
    let templates = Templates::load(Some(&cfg.bot.templates_dir))?;
    let out = explain(&issue, &cfg, &templates, args.format)?;
    out!("{}", out.text);
    Ok(if out.actionable {
        exit::OK
    } else {
        exit::FAILED
    })
}

pub struct Explanation {
    pub text: String,
    pub actionable: bool,
}

/// What the bot would do with this issue, offline: approvals are listed as
/// required (they can only be verified against GitLab's label events).
pub fn explain(
    issue: &IssueInput,
    cfg: &Config,
    templates: &Templates,
    format: OutputFormat,
) -> anyhow::Result<Explanation> {
    match request::parse_request(issue, cfg) {
        Err(errors) => {
            let text = match format {
                OutputFormat::Json => {
                    serde_json::to_string_pretty(&serde_json::json!({
                        "actionable": false,
                        "kind": request::classify(issue, cfg),
                        "errors": errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    }))? + "\n"
                }
                OutputFormat::Text => templates.text(&crate::comment::Invalid {
                    errors: errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    more: 0,
                })?,
            };
            Ok(Explanation {
                text,
                actionable: false,
            })
        }
        Ok(req) => {
            let requester = crate::policy::Requester {
                username: issue.author.username.clone(),
                email: issue
                    .author_email
                    .as_deref()
                    .and_then(|e| request::Email::parse(e).ok()),
            };
            let ss = crate::policy::self_service(&req, &requester, cfg);
            let verified = ss == crate::policy::SelfService::Verified;
            let trust = if cfg.policy_for(req.kind).trusted_authors.is_empty() {
                crate::policy::Trust::NotApplicable
            } else {
                crate::policy::Trust::Intact
            };
            let requirements = crate::policy::requirements(&req, cfg, ss, trust);
            let plan = plan::preview(&req, &Observed::default(), cfg, verified);
            let required = requirements.required.clone();
            let policy = cfg.policy_for(req.kind);
            let text = match format {
                OutputFormat::Json => {
                    serde_json::to_string_pretty(&serde_json::json!({
                        "actionable": true,
                        "kind": req.kind,
                        "digest": req.digest(),
                        "subjects": req.subjects,
                        "items": req.items,
                        "unmanaged": req.unmanaged,
                        "expires": req.expires,
                        "required_approvals": required,
                        "requirements": requirements,
                        "trusted_authors": policy.trusted_authors,
                        "plan": plan,
                    }))? + "\n"
                }
                OutputFormat::Text => {
                    let mut view =
                        report::plan_view(&req, &plan, cfg, &[], &[], &requirements, false);
                    view.approvals = required
                        .iter()
                        .filter_map(|n| cfg.approvals.get(n).map(|r| (n, r)))
                        .map(|(n, r)| report::ApprovalView {
                            label: r.label.clone(),
                            who: r
                                .approvers
                                .iter()
                                .map(|a| format!("`{a}`"))
                                .collect::<Vec<_>>()
                                .join(" or "),
                            detail: format!(
                                "{} (verified against the label events when the bot runs)",
                                r.description.clone().unwrap_or_else(|| n.clone())
                            ),
                        })
                        .collect();
                    let mut t = templates.text(&view)?;
                    if !policy.trusted_authors.is_empty() {
                        t.push_str(&format!(
                            "\nTrusted only when filed by {} and edited by nobody else.\n",
                            policy
                                .trusted_authors
                                .iter()
                                .map(|a| format!("`@{a}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    t
                }
            };
            Ok(Explanation {
                text,
                actionable: true,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_fit_their_content() {
        let rows = vec![
            vec![
                "a".to_string(),
                "a-very-long-person@gitlab.com".into(),
                "x".into(),
            ],
            vec!["bbbb".to_string(), "b@gitlab.com".into(), "y".into()],
        ];
        let t = table(&["k", "person", "last"], &rows);
        let lines: Vec<&str> = t.lines().collect();
        // Each column as wide as its widest cell, plus two spaces; no trailing blanks.
        assert_eq!(lines[0], "k     person                         last");
        assert_eq!(lines[1], "a     a-very-long-person@gitlab.com  x");
        assert_eq!(lines[2], "bbbb  b@gitlab.com                   y");
    }

    #[test]
    fn audit_json_has_structured_before_and_after() {
        let row = |before: &str, after: &str| crate::store::AuditRow {
            id: 1,
            at: chrono::Utc::now(),
            project: "p".into(),
            iid: 1,
            subject: "a@gitlab.com".into(),
            instance: "global".into(),
            action: "global/a@gitlab.com/set_role".into(),
            before: before.into(),
            after: after.into(),
            approvers: "mlee".into(),
            outcome: "ok".into(),
        };
        let out = render_audit(
            &[
                row(r#"{"role":"end-user","tags":["x"]}"#, "role agent"),
                row("", r#"["a","b"]"#),
            ],
            LogOutput::Json,
        );
        let v: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v[0]["before"]["role"], "end-user");
        assert_eq!(v[0]["after"], "role agent");
        assert!(v[1]["before"].is_null());
        assert_eq!(v[1]["after"][1], "b");
    }

    #[test]
    fn once_summary_counts_by_outcome() {
        let r = crate::bot::CycleReport {
            outcomes: vec![
                ("p".into(), 1, crate::bot::Outcome::Done),
                ("p".into(), 2, crate::bot::Outcome::Done),
                ("p".into(), 3, crate::bot::Outcome::Failed("x".into())),
                ("p".into(), 4, crate::bot::Outcome::Waiting),
            ],
            errors: vec!["p: down".into()],
            standby: vec![],
        };
        assert_eq!(
            summary(&r, false),
            "access-bot once: 4 issues (2 done, 1 failed, 1 waiting); 1 poll error"
        );
        assert_eq!(
            summary(&Default::default(), true),
            "access-bot once --dry-run: 0 issues (nothing to do); 0 poll errors"
        );
    }
}
