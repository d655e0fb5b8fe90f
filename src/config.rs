//! `bot.toml`: what the bot acts on and how. Unknown keys are errors; secrets
//! are never in the file, only the names of the environment variables that
//! hold them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::request::RequestKind;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gitlab: GitlabConfig,
    pub bot: BotConfig,
    /// Rules that decide an issue's kind; the first rule that matches wins.
    #[serde(default)]
    pub kinds: Vec<KindRule>,
    /// Named approvals (label + who may apply it), referenced by policies.
    #[serde(default)]
    pub approvals: BTreeMap<String, ApprovalRule>,
    /// What each kind of change needs, whatever the kind or title.
    pub changes: ChangeRules,
    /// What each kind of request needs on top (never less).
    #[serde(default)]
    pub policy: BTreeMap<RequestKind, KindPolicy>,
    #[serde(default)]
    pub zendesk: BTreeMap<String, ZendeskInstance>,
    #[serde(default)]
    pub google: Option<GoogleConfig>,
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    #[serde(default)]
    pub seat_audit: Option<SeatAuditConfig>,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    /// E-mail to the People team, and notices to ops.
    #[serde(default)]
    pub notify: Option<NotifyConfig>,
    /// The Support Team repository whose per-agent file offboarding deletes.
    #[serde(default)]
    pub support_team: Option<SupportTeamConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    #[serde(default)]
    pub email: Option<EmailConfig>,
    #[serde(default)]
    pub slack: Option<SlackConfig>,
    /// The same notice (kind and cause) is sent at most once in this window.
    #[serde(default = "default_dedupe_window")]
    pub dedupe_window: String,
    /// At most this many notices an hour across all kinds; the rest are counted
    /// and mentioned in the next one that goes out.
    #[serde(default = "default_max_per_hour")]
    pub max_per_hour: u32,
    /// Cron expression (with seconds) for a digest of the last 24 hours to ops; none by default.
    #[serde(default)]
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub smtp_host: String,
    /// Default: 587 for `starttls`, 465 for `implicit`, 25 for `none`.
    #[serde(default)]
    pub smtp_port: Option<u16>,
    /// `starttls` (required, not opportunistic), `implicit` (TLS from the first
    /// byte), or `none` (only accepted for a loopback host: tests, a local relay).
    #[serde(default = "default_smtp_tls")]
    pub tls: String,
    #[serde(default)]
    pub username_env: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    pub from: String,
    /// Recipients of the US citizenship verification request (seed 001).
    #[serde(default)]
    pub people_team: Vec<String>,
    /// Recipients of ops notices (optional; Slack may be enough).
    #[serde(default)]
    pub ops: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Environment variable holding the incoming-webhook URL (the URL is the secret).
    pub webhook_env: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportTeamConfig {
    /// The repository holding the per-agent files, by path or id.
    pub project: String,
    /// Path of a person's file; `{username}` is their GitLab username.
    pub path: String,
    #[serde(default = "default_target_branch")]
    pub target_branch: String,
    /// GitLab usernames asked to review the merge request.
    #[serde(default)]
    pub reviewers: Vec<String>,
    /// The offboarding checklist item this work ticks: the first open item whose
    /// text contains this (case-insensitive).
    #[serde(default = "default_support_item")]
    pub item: String,
    /// How often an open merge request is checked for being merged.
    #[serde(default = "default_mr_check")]
    pub check_every: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitlabConfig {
    /// `https://gitlab.com` or a self-managed instance (`http://` for loopback tests).
    pub url: String,
    /// Projects to poll, by full path or numeric id.
    pub projects: Vec<String>,
    /// Environment variable holding the bot's personal/project access token.
    pub token_env: String,
    /// The bot's own username; its notes and edits are recognised by the user id this resolves to.
    pub bot_username: String,
    /// A duration (`90s`, `2m`) or a cron expression with seconds (`0 */5 * * * *`).
    #[serde(default = "default_poll_interval")]
    pub poll_interval: String,
    /// How far before the last seen `updated_at` each poll starts again.
    #[serde(default = "default_overlap")]
    pub poll_overlap: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    #[serde(default = "default_state_db")]
    pub state_db: PathBuf,
    #[serde(default = "default_templates")]
    pub templates_dir: PathBuf,
    /// Email domains the bot will provision; compared exactly.
    pub allowed_email_domains: Vec<String>,
    /// Tags that mark a Zendesk team (`partner_support_agent`, ...).
    #[serde(default)]
    pub team_tags: Vec<String>,
    /// Labels the bot uses to show its state on an issue.
    #[serde(default)]
    pub state_labels: StateLabels,
    /// Environment variable holding the key that seals the bot's comment
    /// markers (at least 16 bytes; keep it stable, and secret).
    pub marker_key_env: String,
    /// Accounts the bot never changes, by e-mail (besides its own accounts
    /// and every Zendesk admin, which are always protected).
    #[serde(default)]
    pub protected: Vec<String>,
}

/// The approvals each kind of change needs (names of `[approvals.*]`). A
/// request needs the union over everything it asks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRules {
    /// Granting or changing a Zendesk access level (each level may add its own `requires`).
    pub level: Vec<String>,
    /// Adding or removing a team tag.
    pub team_tag: Vec<String>,
    /// Adding someone to an instance's Okta group on its own (it assigns the app).
    pub app_group: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateLabels {
    pub planned: String,
    pub waiting: String,
    pub done: String,
    pub failed: String,
    pub refused: String,
}

impl Default for StateLabels {
    fn default() -> Self {
        StateLabels {
            planned: "access-bot::planned".into(),
            waiting: "access-bot::waiting".into(),
            done: "access-bot::done".into(),
            failed: "access-bot::failed".into(),
            refused: "access-bot::refused".into(),
        }
    }
}

impl StateLabels {
    pub fn all(&self) -> [&str; 5] {
        [
            &self.planned,
            &self.waiting,
            &self.done,
            &self.failed,
            &self.refused,
        ]
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindRule {
    pub kind: RequestKind,
    /// All of these labels must be on the issue.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Optional regular expression the title must match.
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    /// The label that grants this approval when an authorised person applies it.
    pub label: String,
    /// GitLab usernames allowed to apply it. `@manager` means the subject's manager named in the issue.
    pub approvers: Vec<String>,
    /// A label that, applied by an authorised person, refuses the request (citizenship denied).
    #[serde(default)]
    pub denied_label: Option<String>,
    /// Shown in comments ("manager approval", "Zendesk system owner").
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindPolicy {
    /// Names of `[approvals.*]` that must all hold.
    #[serde(default)]
    pub approvals: Vec<String>,
    /// The issue must be authored by one of these accounts and edited by nobody else.
    #[serde(default)]
    pub trusted_authors: Vec<String>,
    /// Close the issue when everything is done.
    #[serde(default)]
    pub close_when_done: bool,
    /// Approvals a trusted author's issue already carries: its template was
    /// approved by them when it was merged. Verifications (approvals with a
    /// `denied_label`, such as citizenship) cannot be pre-approved.
    #[serde(default)]
    pub pre_approved: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZendeskInstance {
    /// How the instance is called in comments.
    pub display_name: String,
    /// System names (case-insensitive) that mean this instance in a checklist item.
    pub aliases: Vec<String>,
    /// `https://<subdomain>.zendesk.com` (the `/api/v2` part is added by the bot).
    pub base_url: String,
    pub auth: ZendeskAuth,
    /// Client-side budget so the bot stays under the plan's limit.
    #[serde(default = "default_rpm")]
    pub requests_per_minute: u32,
    /// Google group whose membership assigns this instance's app in Okta.
    #[serde(default)]
    pub okta_group: Option<String>,
    /// Extra `[approvals.*]` any grant in this instance needs (e.g. citizenship for US Federal).
    #[serde(default)]
    pub requires: Vec<String>,
    /// Access levels the bot may grant here. Anything else is refused.
    #[serde(default)]
    pub access_levels: BTreeMap<String, AccessLevel>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum ZendeskAuth {
    /// OAuth client credentials (recommended; API tokens stop working on 2027-04-30).
    Oauth {
        client_id_env: String,
        client_secret_env: String,
        #[serde(default = "default_zendesk_scope")]
        scope: String,
    },
    /// Legacy `email/token` API token.
    ApiToken {
        email_env: String,
        token_env: String,
    },
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLevel {
    /// Other names for this level in checklist items (case-insensitive).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `agent` or `admin` or `end-user`. The bot refuses `admin` unless listed here explicitly.
    pub role: String,
    /// Custom role by name, resolved to an id per instance at start-up.
    #[serde(default)]
    pub custom_role: Option<String>,
    /// The light-agent role: the custom role with `role_type` 1, whatever it is called.
    #[serde(default)]
    pub light_agent: bool,
    /// Zendesk groups (by name) the agent must be in.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Approvals this level needs instead of `[changes] level` (the
    /// instance's `requires` still apply).
    #[serde(default)]
    pub requires: Option<Vec<String>>,
    /// The requester may ask for this level for themself without the level's
    /// approvals (the instance's `requires` still apply). Self-service only
    /// creates an account or raises an end-user to this level and adds the
    /// instance's Okta group; it never reactivates a suspended account,
    /// changes an agent, or adds tags.
    #[serde(default)]
    pub self_service: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleConfig {
    /// System names that mean Google Groups in a checklist item.
    pub aliases: Vec<String>,
    #[serde(default = "default_google_base")]
    pub base_url: String,
    /// Path to the service-account key file.
    #[serde(default)]
    pub key_path: Option<PathBuf>,
    /// Or: environment variable holding the key file's JSON.
    #[serde(default)]
    pub key_env: Option<String>,
    /// Domain-wide delegation: the admin to act as. Leave out when the service account holds a Groups admin role itself.
    #[serde(default)]
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub listen: String,
    pub token_env: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeatAuditConfig {
    pub idle_days: u32,
    pub price_per_seat_month: f64,
    #[serde(default = "default_currency")]
    pub currency: String,
    /// GitLab usernames allowed to approve a reclaim by ticking its item.
    pub reviewers: Vec<String>,
    /// `light_agent` or `end_user`.
    #[serde(default = "default_reclaim")]
    pub reclaim_to: String,
    #[serde(default)]
    pub exempt_emails: Vec<String>,
    #[serde(default)]
    pub exempt_tags: Vec<String>,
    /// Cron expression (with seconds) for `run`.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Label of the review issues.
    #[serde(default = "default_seat_label")]
    pub label: String,
    /// Project the review issues are opened in (default: the first of `gitlab.projects`).
    #[serde(default)]
    pub project: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// A request waiting for approval this long gets one reminder.
    #[serde(default = "default_stale_remind")]
    pub stale_reminder_after: String,
    /// ... and is closed after this long.
    #[serde(default = "default_stale_close")]
    pub stale_close_after: String,
    /// Remind this long before time-bound access expires.
    #[serde(default = "default_expiry_remind")]
    pub expiry_reminder_before: String,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            stale_reminder_after: default_stale_remind(),
            stale_close_after: default_stale_close(),
            expiry_reminder_before: default_expiry_remind(),
        }
    }
}

fn default_poll_interval() -> String {
    "2m".into()
}
fn default_overlap() -> String {
    "2m".into()
}
fn default_state_db() -> PathBuf {
    "access-bot.db".into()
}
fn default_templates() -> PathBuf {
    "templates".into()
}
fn default_rpm() -> u32 {
    400
}
fn default_zendesk_scope() -> String {
    "users:read users:write tickets:read tickets:write read".into()
}
fn default_google_base() -> String {
    "https://admin.googleapis.com".into()
}
fn default_currency() -> String {
    "USD".into()
}
fn default_reclaim() -> String {
    "end_user".into()
}
fn default_dedupe_window() -> String {
    "6h".into()
}
fn default_max_per_hour() -> u32 {
    10
}
fn default_smtp_tls() -> String {
    "starttls".into()
}
fn default_target_branch() -> String {
    "main".into()
}
fn default_support_item() -> String {
    "Support Team".into()
}
fn default_mr_check() -> String {
    "10m".into()
}
fn default_seat_label() -> String {
    "zendesk-seat-review".into()
}
fn default_stale_remind() -> String {
    "7d".into()
}
fn default_stale_close() -> String {
    "30d".into()
}
fn default_expiry_remind() -> String {
    "3d".into()
}

/// A configuration error, naming the file, the line and the key when known.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.path.display(), l, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// How the poller is scheduled.
#[derive(Debug, Clone)]
pub enum PollSchedule {
    Every(Duration),
    Cron(Box<cron::Schedule>),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        cfg.validate(text, path)?;
        Ok(cfg)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            path: path.to_path_buf(),
            line: find_line(text, key),
            message,
        };
        if self.gitlab.projects.is_empty() {
            return Err(err("projects", "`gitlab.projects` names no project".into()));
        }
        parse_duration(&self.gitlab.poll_overlap).map_err(|e| err("poll_overlap", e))?;
        self.poll_schedule().map_err(|e| err("poll_interval", e))?;
        for key in [
            &self.lifecycle.stale_reminder_after,
            &self.lifecycle.stale_close_after,
            &self.lifecycle.expiry_reminder_before,
        ] {
            parse_duration(key).map_err(|e| err(key, e))?;
        }
        for rule in &self.kinds {
            if rule.labels.is_empty() && rule.title.is_none() {
                return Err(err(
                    "[[kinds]]",
                    format!("the rule for {} has neither labels nor a title", rule.kind),
                ));
            }
            if !self.policy_for(rule.kind).trusted_authors.is_empty() && rule.labels.is_empty() {
                return Err(err(
                    "[[kinds]]",
                    format!(
                        "the rule for {} (a trusted kind) needs a label: the label's event shows who made the issue that kind",
                        rule.kind
                    ),
                ));
            }
            if let Some(t) = &rule.title {
                regex::Regex::new(t)
                    .map_err(|e| err(t, format!("invalid title regex {t:?}: {e}")))?;
            }
        }
        let check_refs = |names: &[String], ctx: &str| -> Result<(), ConfigError> {
            for n in names {
                if !self.approvals.contains_key(n) {
                    return Err(err(
                        n,
                        format!("{ctx} requires approval {n:?}, which no [approvals.{n}] defines"),
                    ));
                }
            }
            Ok(())
        };
        for (kind, p) in &self.policy {
            check_refs(&p.approvals, &format!("policy.{kind}"))?;
            check_refs(&p.pre_approved, &format!("policy.{kind}.pre_approved"))?;
            if !p.pre_approved.is_empty() && p.trusted_authors.is_empty() {
                return Err(err(
                    "pre_approved",
                    format!(
                        "policy.{kind}.pre_approved needs trusted_authors: only a trusted automation's template can carry approvals"
                    ),
                ));
            }
            for n in &p.pre_approved {
                if self
                    .approvals
                    .get(n)
                    .is_some_and(|a| a.denied_label.is_some())
                {
                    return Err(err(
                        n,
                        format!(
                            "policy.{kind}.pre_approved names {n:?}, a verification (it has a denied_label); a template cannot verify a person"
                        ),
                    ));
                }
            }
        }
        check_refs(&self.changes.level, "changes.level")?;
        check_refs(&self.changes.team_tag, "changes.team_tag")?;
        check_refs(&self.changes.app_group, "changes.app_group")?;
        if self.bot.marker_key_env.trim().is_empty() {
            return Err(err(
                "marker_key_env",
                "bot.marker_key_env must name the variable holding the marker key".into(),
            ));
        }
        for e in &self.bot.protected {
            if crate::request::Email::parse(e).is_err() {
                return Err(err(
                    e,
                    format!("bot.protected: {e:?} is not an e-mail address"),
                ));
            }
        }
        for (name, z) in &self.zendesk {
            check_refs(&z.requires, &format!("zendesk.{name}"))?;
            url::Url::parse(&z.base_url)
                .map_err(|e| err(&z.base_url, format!("zendesk.{name}.base_url: {e}")))?;
            if z.requests_per_minute == 0 {
                return Err(err(
                    "requests_per_minute",
                    format!("zendesk.{name}.requests_per_minute must be above 0"),
                ));
            }
            for (level, a) in &z.access_levels {
                if !["agent", "admin", "end-user"].contains(&a.role.as_str()) {
                    return Err(err(
                        level,
                        format!(
                            "zendesk.{name}.access_levels.{level:?}: role {:?} is not agent, admin or end-user",
                            a.role
                        ),
                    ));
                }
                if let Some(r) = &a.requires {
                    check_refs(r, &format!("zendesk.{name}.access_levels.{level:?}"))?;
                }
                if a.self_service && (!a.light_agent || !a.groups.is_empty()) {
                    return Err(err(
                        level,
                        format!(
                            "zendesk.{name}.access_levels.{level:?}: self_service is only for a light-agent level without groups"
                        ),
                    ));
                }
                if a.light_agent && a.custom_role.is_some() {
                    return Err(err(
                        level,
                        format!(
                            "zendesk.{name}.access_levels.{level:?}: light_agent picks the role by role_type 1; do not also name custom_role"
                        ),
                    ));
                }
            }
        }
        url::Url::parse(&self.gitlab.url).map_err(|e| err("url", format!("gitlab.url: {e}")))?;
        if let Some(g) = &self.google
            && g.key_path.is_none()
            && g.key_env.is_none()
        {
            return Err(err(
                "[google]",
                "[google] needs key_path or key_env for the service-account key".into(),
            ));
        }
        for d in &self.bot.allowed_email_domains {
            if d.is_empty() || d.contains('@') || d.ends_with('.') || !d.is_ascii() {
                return Err(err(
                    d,
                    format!("allowed email domain {d:?} is not a plain ASCII domain"),
                ));
            }
        }
        if let Some(n) = &self.notify {
            parse_duration(&n.dedupe_window)
                .map_err(|e| err("dedupe_window", format!("notify.dedupe_window: {e}")))?;
            if let Some(c) = &n.digest {
                c.parse::<cron::Schedule>()
                    .map_err(|e| err(c, format!("notify.digest: {e}")))?;
            }
            if let Some(e) = &n.email {
                if !["starttls", "implicit", "none"].contains(&e.tls.as_str()) {
                    return Err(err(
                        "tls",
                        "notify.email.tls must be starttls, implicit or none".into(),
                    ));
                }
                let loopback = ["localhost", "127.0.0.1", "::1"].contains(&e.smtp_host.as_str());
                if e.tls == "none" && !loopback {
                    return Err(err(
                        "tls",
                        format!(
                            "notify.email.tls = \"none\" sends credentials and personal data in clear text; only allowed for a loopback host, not {:?}",
                            e.smtp_host
                        ),
                    ));
                }
                if e.username_env.is_some() != e.password_env.is_some() {
                    return Err(err(
                        "username_env",
                        "notify.email: set both username_env and password_env, or neither".into(),
                    ));
                }
                for a in e
                    .people_team
                    .iter()
                    .chain(&e.ops)
                    .chain(std::iter::once(&e.from))
                {
                    if crate::request::Email::parse(a).is_err() {
                        return Err(err(
                            a,
                            format!("notify.email: {a:?} is not an e-mail address"),
                        ));
                    }
                }
            }
        }
        if let Some(t) = &self.support_team {
            if !t.path.contains("{username}") {
                return Err(err(
                    "path",
                    "support_team.path must contain {username}".into(),
                ));
            }
            parse_duration(&t.check_every)
                .map_err(|e| err("check_every", format!("support_team.check_every: {e}")))?;
        }
        if let Some(s) = &self.seat_audit {
            if !["light_agent", "end_user"].contains(&s.reclaim_to.as_str()) {
                return Err(err(
                    "reclaim_to",
                    "seat_audit.reclaim_to must be light_agent or end_user".into(),
                ));
            }
            if let Some(c) = &s.schedule {
                c.parse::<cron::Schedule>()
                    .map_err(|e| err(c, format!("seat_audit.schedule: {e}")))?;
            }
            // Ticks are only seen on polled projects.
            if let Some(p) = &s.project
                && !self.gitlab.projects.contains(p)
            {
                return Err(err(
                    p,
                    format!(
                        "seat_audit.project {p:?} must also be listed in gitlab.projects, or reviewers' ticks are never seen"
                    ),
                ));
            }
            if s.reviewers.is_empty() {
                return Err(err(
                    "reviewers",
                    "seat_audit.reviewers is empty: nobody could approve a reclaim".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn poll_schedule(&self) -> Result<PollSchedule, String> {
        let s = self.gitlab.poll_interval.trim();
        if s.contains(' ') {
            s.parse::<cron::Schedule>()
                .map(|c| PollSchedule::Cron(Box::new(c)))
                .map_err(|e| {
                    format!("poll_interval {s:?} is neither a duration nor a cron expression: {e}")
                })
        } else {
            parse_duration(s).map(PollSchedule::Every)
        }
    }

    pub fn poll_overlap(&self) -> Duration {
        parse_duration(&self.gitlab.poll_overlap).unwrap_or(Duration::from_secs(120))
    }

    /// The labels the poller lists issues by: the first label of each kind rule.
    pub fn poll_labels(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.kinds {
            if let Some(l) = r.labels.first()
                && !out.contains(l)
            {
                out.push(l.clone());
            }
        }
        if let Some(s) = &self.seat_audit
            && !out.contains(&s.label)
        {
            out.push(s.label.clone());
        }
        out
    }

    pub fn policy_for(&self, kind: RequestKind) -> KindPolicy {
        self.policy.get(&kind).cloned().unwrap_or_default()
    }

    /// Zendesk instance named by a checklist system name, via its aliases.
    pub fn instance_by_alias(&self, system: &str) -> Option<&str> {
        let s = normalize(system);
        self.zendesk
            .iter()
            .find(|(name, z)| {
                normalize(name) == s
                    || normalize(&z.display_name) == s
                    || z.aliases.iter().any(|a| normalize(a) == s)
            })
            .map(|(n, _)| n.as_str())
    }

    pub fn is_google_alias(&self, system: &str) -> bool {
        let s = normalize(system);
        self.google
            .as_ref()
            .is_some_and(|g| g.aliases.iter().any(|a| normalize(a) == s))
    }

    /// The instance whose Okta group is `group` (by full address or local part).
    pub fn instance_by_okta_group(&self, group: &str) -> Option<&str> {
        let g = normalize(group);
        self.zendesk
            .iter()
            .find(|(_, z)| {
                z.okta_group.as_deref().is_some_and(|og| {
                    let og = normalize(og);
                    og == g || og.split('@').next() == Some(g.as_str())
                })
            })
            .map(|(n, _)| n.as_str())
    }

    /// Environment variables the configuration names, with what each is for.
    pub fn secret_envs(&self) -> Vec<(String, String)> {
        let mut v = vec![
            (self.gitlab.token_env.clone(), "GitLab token".to_string()),
            (
                self.bot.marker_key_env.clone(),
                "key sealing the bot's comment markers".to_string(),
            ),
        ];
        for (name, z) in &self.zendesk {
            match &z.auth {
                ZendeskAuth::Oauth {
                    client_id_env,
                    client_secret_env,
                    ..
                } => {
                    v.push((
                        client_id_env.clone(),
                        format!("Zendesk {name} OAuth client id"),
                    ));
                    v.push((
                        client_secret_env.clone(),
                        format!("Zendesk {name} OAuth secret"),
                    ));
                }
                ZendeskAuth::ApiToken {
                    email_env,
                    token_env,
                } => {
                    v.push((email_env.clone(), format!("Zendesk {name} API user email")));
                    v.push((token_env.clone(), format!("Zendesk {name} API token")));
                }
            }
        }
        if let Some(g) = &self.google
            && let Some(k) = &g.key_env
        {
            v.push((k.clone(), "Google service-account key JSON".into()));
        }
        if let Some(w) = &self.webhook {
            v.push((w.token_env.clone(), "GitLab webhook secret".into()));
        }
        if let Some(n) = &self.notify {
            if let Some(e) = &n.email {
                if let Some(u) = &e.username_env {
                    v.push((u.clone(), "SMTP username".into()));
                }
                if let Some(p) = &e.password_env {
                    v.push((p.clone(), "SMTP password".into()));
                }
            }
            if let Some(s) = &n.slack {
                v.push((s.webhook_env.clone(), "Slack incoming-webhook URL".into()));
            }
        }
        v
    }
}

/// Case-insensitive, whitespace-collapsed, backticks removed.
pub fn normalize(s: &str) -> String {
    s.replace('`', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// `90s`, `15m`, `2h`, `7d`, `2w`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 2h or 7d"))?;
    let mult = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use s, m, h, d or w)"
            ));
        }
    };
    Ok(Duration::from_secs(n * mult))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Best-effort line of a key or value for semantic errors.
fn find_line(text: &str, needle: &str) -> Option<usize> {
    text.find(needle).map(|o| line_of(text, o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/bot.toml")).unwrap()
    }

    #[test]
    fn example_config_is_valid() {
        let cfg = Config::parse(&example(), Path::new("bot.toml")).unwrap();
        assert!(cfg.zendesk.contains_key("global"));
        assert!(cfg.zendesk.contains_key("federal"));
        assert_eq!(cfg.instance_by_alias("zendesk  GLOBAL"), Some("global"));
        assert_eq!(
            cfg.instance_by_okta_group("okta-zendeskfederal-users"),
            Some("federal")
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = example().replacen("[bot]\n", "[bot]\ncolour = \"red\"\n", 1);
        let e = Config::parse(&text, Path::new("bot.toml")).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("colour"), "{shown}");
        let expected_line = text.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
        assert_eq!(e.line, Some(expected_line), "{shown}");
    }

    #[test]
    fn undefined_approval_reference_is_an_error() {
        let text = example().replacen("team_tag = [\"manager\"]", "team_tag = [\"managr\"]", 1);
        let e = Config::parse(&text, Path::new("bot.toml")).unwrap_err();
        assert!(e.to_string().contains("managr"), "{e}");
        assert!(e.line.is_some());
    }

    #[test]
    fn durations_and_cron() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
        let mut text = example();
        text = text.replacen(
            "poll_interval = \"60s\"",
            "poll_interval = \"0 */5 * * * *\"",
            1,
        );
        let cfg = Config::parse(&text, Path::new("bot.toml")).unwrap();
        assert!(matches!(cfg.poll_schedule(), Ok(PollSchedule::Cron(_))));
    }
}
