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
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration offline and summarise what the bot will act on.
    CheckConfig,
    /// Explain what the bot would do with an issue, and why not if it would not.
    Plan(PlanArgs),
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The issue description, from a file (offline).
    #[arg(long)]
    pub body_file: Option<PathBuf>,
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
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::CONFIG)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::CheckConfig => check_config(&cli.config),
        Command::Plan(args) => plan_offline(&cli.config, &args),
    }
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
