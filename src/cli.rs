//! The command line. `anyhow` lives here, at the edge.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::plan::{self, Observed};
use crate::render::Templates;
use crate::report;
use crate::request::{self, IssueInput, RequestKind, UserRef};

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
    #[arg(long, global = true, default_value = "bot.toml")]
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
        /// Read and plan everything, write nothing anywhere, print the plans.
        #[arg(long)]
        dry_run: bool,
    },
    /// The daemon: poll on schedule, react to webhooks, stop cleanly on SIGINT/SIGTERM.
    Run {
        #[arg(long)]
        dry_run: bool,
    },
    /// Review idle paid Zendesk seats: print the report and open or update one
    /// review issue per instance and month (reviewers reclaim seats by ticking).
    AuditSeats {
        /// Print the report only; touch nothing in GitLab.
        #[arg(long)]
        dry_run: bool,
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
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Demo | Command::CheckConfig | Command::Plan(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
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
            ExitCode::from(exit::CONFIG)
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
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
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
        Command::Once { dry_run } => once(&cli.config, dry_run).await,
        Command::Run { dry_run } => daemon(&cli.config, dry_run).await,
        Command::Check => check(&cli.config).await,
        Command::AuditSeats {
            dry_run,
            instance,
            format,
        } => audit_seats(&cli.config, dry_run, instance.as_deref(), format).await,
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

async fn connect(config: &Path, dry_run: bool) -> anyhow::Result<crate::bot::Bot> {
    let cfg = load_config(config)?;
    let store = std::sync::Arc::new(crate::store::Store::open(&cfg.bot.state_db)?);
    let mut bot = crate::bot::Bot::connect(cfg, &crate::secret::Secrets::from_env(), store).await?;
    bot.dry_run = dry_run;
    Ok(bot)
}

fn print_report(r: &crate::bot::CycleReport) {
    for (project, iid, o) in &r.outcomes {
        match o {
            crate::bot::Outcome::Planned(text) => println!("== {project}#{iid}: would do\n{text}"),
            other => println!(
                "{project}#{iid}: {}",
                serde_json::to_string(other).unwrap_or_default()
            ),
        }
    }
    for e in &r.errors {
        println!("error: {e}");
    }
}

async fn once(config: &Path, dry_run: bool) -> anyhow::Result<u8> {
    let bot = connect(config, dry_run).await?;
    let r = bot.cycle().await;
    print_report(&r);
    Ok(if r.failed() { exit::FAILED } else { exit::OK })
}

async fn daemon(config: &Path, dry_run: bool) -> anyhow::Result<u8> {
    let bot = std::sync::Arc::new(connect(config, dry_run).await?);
    let webhook = match &bot.cfg.webhook {
        Some(w) => Some((
            w.listen.clone(),
            crate::secret::Secrets::from_env().get(&w.token_env)?,
        )),
        None => None,
    };
    crate::bot::run::run(
        bot,
        crate::bot::run::RunOptions { webhook },
        crate::bot::run::shutdown_signal(),
    )
    .await?;
    Ok(exit::OK)
}

async fn plan_live(config: &Path, args: &PlanArgs) -> anyhow::Result<u8> {
    let mut bot = connect(config, true).await?;
    bot.dry_run = true;
    let project = bot.cfg.gitlab.projects[0].clone();
    let iid = args.issue.unwrap_or_default();
    let o = bot.process(&project, iid).await;
    match &o {
        crate::bot::Outcome::Planned(text) => print!("{text}"),
        crate::bot::Outcome::Ignored => println!(
            "#{iid}: not for the bot: closed, or no [[kinds]] rule matches its labels and title (labels the bot polls: {})",
            bot.cfg.poll_labels().join(", ")
        ),
        other => println!(
            "#{iid}: {}",
            serde_json::to_string_pretty(other).unwrap_or_default()
        ),
    }
    Ok(if o.is_failure() {
        exit::FAILED
    } else {
        exit::OK
    })
}

async fn audit_seats(
    config: &Path,
    dry_run: bool,
    instance: Option<&str>,
    format: SeatFormat,
) -> anyhow::Result<u8> {
    let bot = connect(config, dry_run).await?;
    let reports = bot.audit_seats(instance).await?;
    print!("{}", render_seat_reports(&reports, format));
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
                for c in &r.candidates {
                    out.push_str(&format!(
                        "  {:<40} {:<24} last login {:<10} {:>6} days idle{}\n",
                        c.email,
                        c.role,
                        c.last_login,
                        c.days_idle
                            .map(|d| d.to_string())
                            .unwrap_or_else(|| "-".into()),
                        if c.suspended { " (suspended)" } else { "" }
                    ));
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
    let store = crate::store::Store::open(&cfg.bot.state_db)?;
    let since = match since {
        Some(s) => Some(
            chrono::Utc::now()
                - chrono::Duration::from_std(
                    crate::config::parse_duration(s).map_err(|e| anyhow::anyhow!(e))?,
                )?,
        ),
        None => None,
    };
    let rows = store.audit_rows(&crate::store::AuditQuery {
        since,
        subject: user,
        project: None,
        iid: issue,
    })?;
    print!("{}", render_audit(&rows, format));
    Ok(exit::OK)
}

/// The audit rows as a table or as JSON lines.
pub fn render_audit(rows: &[crate::store::AuditRow], format: LogOutput) -> String {
    let mut out = String::new();
    match format {
        LogOutput::Json => {
            for r in rows {
                out.push_str(&serde_json::to_string(r).unwrap_or_default());
                out.push('\n');
            }
        }
        LogOutput::Table => {
            out.push_str(&format!(
                "{:<20} {:<6} {:<28} {:<8} {:<48} {:<8} {}\n",
                "time (UTC)", "issue", "person", "system", "action", "outcome", "approved by"
            ));
            for r in rows {
                let action = r.action.rsplit('/').next().unwrap_or(&r.action);
                out.push_str(&format!(
                    "{:<20} {:<6} {:<28} {:<8} {:<48} {:<8} {}\n",
                    r.at.format("%Y-%m-%d %H:%M:%S"),
                    format!("#{}", r.iid),
                    r.subject,
                    r.instance,
                    action,
                    r.outcome,
                    r.approvers
                ));
            }
        }
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
    println!(
        "access-bot demo: every workflow of the seeds against the embedded sandbox\n{}",
        demo.transcript
    );
    println!("\n==================================================================");
    if demo.failures.is_empty() {
        println!(
            "All {} workflows reached their expected end in {:.1}s.",
            demo.issues.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(exit::OK)
    } else {
        for f in &demo.failures {
            println!("NOT REACHED: {f}");
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
    println!("Sandbox listening:");
    println!("  gitlab http://{}", sb.gitlab_addr);
    println!("  google http://{}", sb.google_addr);
    for (name, z) in &sb.zendesk {
        println!("  zendesk.{name} http://{}", z.addr);
    }
    println!("  smtp {}", sb.smtp_addr);
    println!("  slack http://{}", sb.slack_addr);
    let port = sb.gitlab_addr.port();
    if let Some(seed) = seed {
        let text =
            std::fs::read_to_string(seed).with_context(|| format!("reading {}", seed.display()))?;
        let scenario = crate::sandbox::scenario::Scenario::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", seed.display()))?;
        let iids = sb.apply(&scenario).await?;
        println!(
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
    println!("Sandbox running (Ctrl-C to stop).\n\n{}", sb.snippet());
    println!(
        "A complete configuration for it: {}\n  (export the variables below, then: access-bot --config {} once)\n",
        cfg_path.display(),
        cfg_path.display()
    );
    println!("Secrets (sandbox only):");
    for (var, _) in sb.config.secret_envs() {
        if let Ok(v) = sb.secrets.get(&var) {
            let shown = if v.expose().len() > 80 {
                "<service-account key JSON>".to_string()
            } else {
                v.expose().to_string()
            };
            println!("  {var}={shown}");
        }
    }
    println!(
        "\nTry: curl -H 'PRIVATE-TOKEN: {}' http://{}/api/v4/projects/support%2Faccess-requests/issues",
        sb.token_of("access-bot"),
        sb.gitlab_addr
    );
    crate::bot::run::shutdown_signal().await;
    Ok(exit::OK)
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn check_config(path: &Path) -> anyhow::Result<u8> {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(exit::CONFIG);
        }
    };
    println!("{}: valid", path.display());
    println!(
        "GitLab {} projects {} as @{}, polling {} (labels: {})",
        cfg.gitlab.url,
        cfg.gitlab.projects.join(", "),
        cfg.gitlab.bot_username,
        cfg.gitlab.poll_interval,
        cfg.poll_labels().join(", ")
    );
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
        println!("  {:<24} {needs}", k.human());
    }
    for (name, z) in &cfg.zendesk {
        println!(
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
                .map(|g| format!(", Okta group {g}"))
                .unwrap_or_default(),
            if z.requires.is_empty() {
                String::new()
            } else {
                format!(", grants also need {}", z.requires.join(" + "))
            }
        );
    }
    if let Some(g) = &cfg.google {
        println!(
            "Google Groups at {} ({})",
            g.base_url,
            if g.subject.is_some() {
                "domain-wide delegation"
            } else {
                "service account with a Groups admin role"
            }
        );
    }
    println!(
        "Allowed email domains: {}",
        cfg.bot.allowed_email_domains.join(", ")
    );
    let missing: Vec<_> = cfg
        .secret_envs()
        .into_iter()
        .filter(|(v, _)| std::env::var(v).map(|x| x.is_empty()).unwrap_or(true))
        .map(|(v, what)| format!("{v} ({what})"))
        .collect();
    if !missing.is_empty() {
        println!(
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
    print!("{}", out.text);
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
                OutputFormat::Json => serde_json::to_string_pretty(&serde_json::json!({
                    "actionable": false,
                    "kind": request::classify(issue, cfg),
                    "errors": errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                }))? + "\n",
                OutputFormat::Text => templates.render(
                    "invalid.md",
                    &serde_json::json!({ "errors": errors.iter().map(|e| e.to_string()).collect::<Vec<_>>() }),
                )?,
            };
            Ok(Explanation {
                text,
                actionable: false,
            })
        }
        Ok(req) => {
            let plan = plan::preview(&req, &Observed::default(), cfg);
            let required = crate::approval::required_approvals(&req, cfg);
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
                        "trusted_authors": policy.trusted_authors,
                        "plan": plan,
                    }))? + "\n"
                }
                OutputFormat::Text => {
                    let mut view = report::plan_view(&req, &plan, cfg, &[], &[], false);
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
                    let mut t = templates.render("plan.md", &view)?;
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
