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
    pub okta: Option<OktaConfig>,
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
    /// The operations listener of `run`: `/healthz`, `/readyz`, `/metrics`.
    #[serde(default)]
    pub ops: OpsConfig,
    /// Who is who: GitLab users and company e-mail addresses.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// The status page on the operations listener (`/status`, `/status.json`).
    #[serde(default)]
    pub status: StatusConfig,
}

/// A place the bot learns a GitLab user's company e-mail address from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// gitlab.com: a top-level group Owner's token sees its enterprise users' e-mails.
    GitlabEnterpriseUsers,
    /// Self-managed GitLab: an administrator's token reads `email` from the users API.
    GitlabAdmin,
    /// A file of `username,email` lines (small installations).
    Map,
}

/// `[identity]`: how the bot establishes who a GitLab user is. It never takes
/// an e-mail address from an issue's text for this; when no source knows a
/// person, whatever depends on it fails closed (self-service is not
/// self-service, an approval that cannot be told apart from the person it is
/// for does not count).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Tried in order; the first that knows the user wins.
    #[serde(default = "default_identity_sources")]
    pub sources: Vec<IdentitySource>,
    /// The top-level group (path or id) for `gitlab_enterprise_users`.
    #[serde(default)]
    pub enterprise_group: Option<String>,
    /// The file for `map` (relative to the configuration file).
    #[serde(default)]
    pub map_path: Option<PathBuf>,
    /// Check people against the Google Workspace directory (with the `[google]`
    /// service account, scope `admin.directory.user.readonly`): an address the
    /// bot grants to must be an active user of the domain, and the manager
    /// named for a person must be their manager there.
    #[serde(default)]
    pub directory: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            sources: default_identity_sources(),
            enterprise_group: None,
            map_path: None,
            directory: false,
        }
    }
}

fn default_identity_sources() -> Vec<IdentitySource> {
    vec![IdentitySource::GitlabAdmin]
}

/// `[ops]`: health, readiness and metrics, on a listener of their own so that
/// it can stay private while the webhook listener is public.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Address of the operations listener (loopback by default; `0.0.0.0:9090`
    /// in a container, where the probes come from outside).
    #[serde(default = "default_ops_listen")]
    pub listen: String,
    /// `/healthz` fails when no poll cycle completed for this long. Default:
    /// five poll intervals, at least five minutes (a long offboarding must not
    /// get the process restarted mid-way).
    #[serde(default)]
    pub unhealthy_after: Option<Dur>,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            listen: default_ops_listen(),
            unhealthy_after: None,
        }
    }
}

fn default_ops_listen() -> String {
    "127.0.0.1:9090".into()
}

/// `[status]`: the queue at a glance, as a page on the operations listener.
/// It shows who asked for what access, so it is off unless enabled, and then
/// answers only with the credentials named here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Serve `/status` and `/status.json` on the `[ops]` listener.
    #[serde(default)]
    pub enabled: bool,
    /// The variable holding the page's secret: sent as `Authorization: Bearer
    /// <secret>`, or as the password of basic auth with `username`.
    #[serde(default = "default_status_token_env")]
    pub token_env: String,
    /// The user name of basic auth (what a browser asks for).
    #[serde(default = "default_status_username")]
    pub username: String,
    /// An issue with no progress (no bot note, no change) for this long is stuck.
    #[serde(default = "default_stuck_after")]
    pub stuck_after: Dur,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            enabled: false,
            token_env: default_status_token_env(),
            username: default_status_username(),
            stuck_after: default_stuck_after(),
        }
    }
}

fn default_status_token_env() -> String {
    "ACCESS_BOT_STATUS_TOKEN".into()
}
fn default_status_username() -> String {
    "ops".into()
}
fn default_stuck_after() -> Dur {
    Dur::from_secs(3 * 86_400, "3d")
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
    pub dedupe_window: Dur,
    /// At most this many notices an hour across all kinds; the rest are counted
    /// and mentioned in the next one that goes out.
    #[serde(default = "default_max_per_hour")]
    pub max_per_hour: u32,
    /// Cron expression (with seconds) for a digest of the last 24 hours to ops; none by default.
    #[serde(default)]
    pub digest: Option<Cron>,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS, required (a server that does not offer it is an error).
    #[default]
    Starttls,
    /// TLS from the first byte.
    Implicit,
    /// Clear text: only for a loopback host.
    None,
}

impl SmtpTls {
    /// The port when `smtp_port` is not set.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::Starttls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        }
    }
}

impl std::fmt::Display for SmtpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SmtpTls::Starttls => "starttls",
            SmtpTls::Implicit => "implicit",
            SmtpTls::None => "none",
        })
    }
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
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username_env: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    pub from: String,
    /// Recipients of the US citizenship verification request.
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
    pub check_every: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitlabConfig {
    /// `https://gitlab.com` or a self-managed instance (`http://` for loopback tests).
    /// `ACCESS_BOT_GITLAB_URL` overrides it; `CI_SERVER_URL` is used when neither is set.
    #[serde(default)]
    pub url: String,
    /// Projects to poll, by full path or numeric id (`ACCESS_BOT_PROJECTS` overrides them).
    #[serde(default)]
    pub projects: Vec<String>,
    /// Environment variable holding the bot's personal/project access token.
    pub token_env: String,
    /// The bot's own username; its notes and edits are recognised by the user id this resolves to.
    pub bot_username: String,
    /// A duration (`90s`, `2m`) or a cron expression with seconds (`0 */5 * * * *`).
    #[serde(default = "default_poll_interval")]
    pub poll_interval: PollInterval,
    /// How far before the last seen `updated_at` each poll starts again.
    #[serde(default = "default_overlap")]
    pub poll_overlap: Dur,
    /// How long one GitLab request may take, answer included (a hung GitLab
    /// must not hold the bot). A duration, `30s` by default.
    #[serde(default = "default_gitlab_timeout")]
    pub request_timeout: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    #[serde(default = "default_state_db")]
    pub state_db: PathBuf,
    #[serde(default = "default_templates")]
    pub templates_dir: PathBuf,
    /// Issues worked on at once (webhook events, poll cycles and the issues of a
    /// cycle together), so that a short request never waits behind a long
    /// offboarding. Each system's request budget stays one for the process.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
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
    /// Time zone of every cron schedule: `UTC` (default), an IANA name
    /// (`Europe/Berlin`), or a fixed offset (`+02:00`).
    #[serde(default)]
    pub time_zone: Option<String>,
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
    /// On an issue whose time-bound grant is in force (from its record,
    /// written before the first change, until it is taken back): how a bot
    /// with an empty store finds the grants it must end.
    #[serde(default = "default_time_bound_label")]
    pub time_bound: String,
    /// The project label whose description holds which replica acts
    /// (`holder`, `until`): one writer at a time across hosts.
    #[serde(default = "default_lease_label")]
    pub lease: String,
}

// Not scoped (`::`): GitLab keeps one label per scope on an issue, so a
// scoped label beside the state labels would be dropped by the next state.
fn default_time_bound_label() -> String {
    "access-bot/time-bound".into()
}

fn default_lease_label() -> String {
    "access-bot/lease".into()
}

impl Default for StateLabels {
    fn default() -> Self {
        StateLabels {
            planned: "access-bot::planned".into(),
            waiting: "access-bot::waiting".into(),
            done: "access-bot::done".into(),
            failed: "access-bot::failed".into(),
            refused: "access-bot::refused".into(),
            time_bound: default_time_bound_label(),
            lease: default_lease_label(),
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
    /// The access levels those pre-approvals cover (empty: every level).
    /// Any other level needs its approvals like any request.
    #[serde(default)]
    pub pre_approved_levels: Vec<String>,
    /// When someone other than the automation changed a trusted issue (its
    /// text, title, or a line the bot manages), it is no longer pre-approved:
    /// it needs these approvals, after the bot's plan. Empty: it is refused.
    #[serde(default)]
    pub if_edited: Vec<String>,
    /// Every person the issue names must appear in its title (which cannot
    /// change without a note GitLab attributes): an anchor against a person
    /// swapped in an edit GitLab records only as a tick.
    #[serde(default)]
    pub subject_in_title: bool,
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
    /// The group whose membership assigns this instance's app in Okta: a
    /// Google group's address, or an Okta group's name (see `group_directory`).
    #[serde(default)]
    pub okta_group: Option<String>,
    /// Which directory holds `okta_group`: `google` (default) or `okta`.
    #[serde(default)]
    pub group_directory: GroupDirectoryKind,
    /// Extra `[approvals.*]` any grant in this instance needs (e.g. citizenship for US Federal).
    #[serde(default)]
    pub requires: Vec<String>,
    /// An agent (by e-mail) who takes a leaver's open tickets when the manager
    /// cannot (unknown, not an agent here, suspended); said on the issue.
    #[serde(default)]
    pub fallback_assignee: Option<String>,
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

/// The directory holding an instance's app group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupDirectoryKind {
    #[default]
    Google,
    Okta,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OktaConfig {
    /// System names that mean an Okta group in a checklist item.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `https://<org>.okta.com` (the `/api/v1` part is added by the bot).
    pub org_url: String,
    pub auth: OktaAuth,
    /// Client-side budget; Okta's own limits (per endpoint, announced on
    /// every answer) are respected on top of it.
    #[serde(default = "default_okta_rpm")]
    pub requests_per_minute: u32,
}

fn default_okta_rpm() -> u32 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum OktaAuth {
    /// An API token (`Authorization: SSWS ...`); it acts with the rights of
    /// the admin who created it.
    ApiToken { token_env: String },
    /// An OAuth service app: client credentials with a private-key JWT,
    /// scopes `okta.groups.manage okta.users.read`.
    PrivateKeyJwt {
        /// The service app's client id (not a secret).
        client_id: String,
        /// Variable holding the PEM private key (PKCS#8 or PKCS#1 RSA).
        key_env: String,
        /// The key's id (`kid`) when the app has several keys.
        #[serde(default)]
        key_id: Option<String>,
    },
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
    /// Cron expression for `run`.
    #[serde(default)]
    pub schedule: Option<Cron>,
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
    pub stale_reminder_after: Dur,
    /// ... and is closed after this long.
    #[serde(default = "default_stale_close")]
    pub stale_close_after: Dur,
    /// Remind this long before time-bound access expires.
    #[serde(default = "default_expiry_remind")]
    pub expiry_reminder_before: Dur,
    /// How often `run` reads the time-bound grants from their issues and
    /// reminds of or takes back those due.
    #[serde(default = "default_hourly")]
    pub expiry_check_every: Dur,
    /// How often `run` looks for waiting requests old enough for a reminder
    /// or closing.
    #[serde(default = "default_hourly")]
    pub stale_scan_every: Dur,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            stale_reminder_after: default_stale_remind(),
            stale_close_after: default_stale_close(),
            expiry_reminder_before: default_expiry_remind(),
            expiry_check_every: default_hourly(),
            stale_scan_every: default_hourly(),
        }
    }
}

fn default_poll_interval() -> PollInterval {
    PollInterval::every(Duration::from_secs(120), "2m")
}
fn default_overlap() -> Dur {
    Dur::from_secs(120, "2m")
}
fn default_gitlab_timeout() -> Dur {
    Dur::from_secs(30, "30s")
}
fn default_state_db() -> PathBuf {
    "access-bot.db".into()
}
fn default_concurrency() -> usize {
    4
}
fn default_templates() -> PathBuf {
    "templates".into()
}
fn default_rpm() -> u32 {
    400
}
fn default_zendesk_scope() -> String {
    crate::zendesk::required_scope()
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
fn default_dedupe_window() -> Dur {
    Dur::from_secs(6 * 3600, "6h")
}
fn default_max_per_hour() -> u32 {
    10
}
fn default_target_branch() -> String {
    "main".into()
}
fn default_support_item() -> String {
    "Support Team".into()
}
fn default_mr_check() -> Dur {
    Dur::from_secs(600, "10m")
}
fn default_seat_label() -> String {
    "zendesk-seat-review".into()
}
fn default_stale_remind() -> Dur {
    Dur::from_secs(7 * 86_400, "7d")
}
fn default_stale_close() -> Dur {
    Dur::from_secs(30 * 86_400, "30d")
}
fn default_expiry_remind() -> Dur {
    Dur::from_secs(3 * 86_400, "3d")
}
fn default_hourly() -> Dur {
    Dur::from_secs(3600, "1h")
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

/// `gitlab.poll_interval` as written (`90s`, `2m`, or a cron expression),
/// parsed once as the file is read.
#[derive(Debug, Clone)]
pub struct PollInterval {
    text: String,
    schedule: PollSchedule,
}

impl PollInterval {
    /// A fixed interval, shown as `text`.
    pub fn every(d: Duration, text: &str) -> PollInterval {
        PollInterval {
            text: text.to_string(),
            schedule: PollSchedule::Every(d),
        }
    }

    pub fn schedule(&self) -> &PollSchedule {
        &self.schedule
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::str::FromStr for PollInterval {
    type Err = String;
    fn from_str(s: &str) -> Result<PollInterval, String> {
        let t = s.trim();
        let schedule = if t.contains(' ') {
            PollSchedule::Cron(Box::new(parse_cron(t)?))
        } else {
            PollSchedule::Every(
                parse_duration(t).map_err(|e| format!("{e} (or a cron expression)"))?,
            )
        };
        Ok(PollInterval {
            text: t.to_string(),
            schedule,
        })
    }
}

impl<'de> Deserialize<'de> for PollInterval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PollInterval, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for PollInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where the configuration's environment overrides come from (the process
/// environment in production; a map in tests, the real one being process-wide).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn no_env(_: &str) -> Option<String> {
    None
}

/// The process environment, for `Config::load`.
pub fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

impl Config {
    /// Read an operator's configuration file: environment overrides applied
    /// (`ACCESS_BOT_GITLAB_URL`, `ACCESS_BOT_PROJECTS`, `CI_SERVER_URL`,
    /// `ACCESS_BOT_OPS_LISTEN`) and
    /// `templates_dir` resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, &process_env)
    }

    /// As `load`, with the environment given.
    pub fn load_with(path: &Path, env: Env<'_>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        let mut cfg = Config::parse_with(&text, path, env)?;
        cfg.resolve_templates_dir(&text, path)?;
        cfg.resolve_identity_map(&text, path)?;
        Ok(cfg)
    }

    /// `identity.map_path` relative to the configuration file's folder; it
    /// must be readable now, not at the first request.
    fn resolve_identity_map(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let Some(map) = &self.identity.map_path else {
            return Ok(());
        };
        let resolved = path.parent().unwrap_or(Path::new(".")).join(map);
        if self.identity.sources.contains(&IdentitySource::Map)
            && let Err(e) = crate::identity::read_map(&resolved)
        {
            return Err(ConfigError {
                path: path.to_path_buf(),
                line: locate_exact(text, &["identity", "map_path"]),
                message: format!("identity.map_path: {e}"),
            });
        }
        self.identity.map_path = Some(resolved);
        Ok(())
    }

    /// Parse and validate, without the environment (tests, the embedded example).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, path, &no_env)
    }

    /// Parse, apply the environment overrides, validate.
    pub fn parse_with(text: &str, path: &Path, env: Env<'_>) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: match e.span().and_then(|s| key_at(text, s.start)) {
                Some(key) => format!("{key}: {}", e.message().trim()),
                None => e.message().trim().to_string(),
            },
        })?;
        cfg.apply_env(env);
        cfg.validate(text, path)?;
        Ok(cfg)
    }

    /// Environment over file for the GitLab URL and projects; GitLab CI's
    /// `CI_SERVER_URL` only when neither names a URL.
    fn apply_env(&mut self, env: Env<'_>) {
        let set = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(u) = set("ACCESS_BOT_GITLAB_URL") {
            self.gitlab.url = u;
        } else if self.gitlab.url.trim().is_empty()
            && let Some(u) = set("CI_SERVER_URL")
        {
            self.gitlab.url = u;
        }
        // Containers: the probes come from outside, so the image listens on all interfaces.
        if let Some(l) = set("ACCESS_BOT_OPS_LISTEN") {
            self.ops.listen = l;
        }
        if let Some(p) = set("ACCESS_BOT_PROJECTS") {
            self.gitlab.projects = p
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
    }

    /// `templates_dir` relative to the configuration file's folder (not to
    /// wherever the process was started). Named in the file, it must exist;
    /// left at its default, a missing folder means the built-in templates.
    fn resolve_templates_dir(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let base = path.parent().unwrap_or(Path::new("."));
        let resolved = base.join(&self.bot.templates_dir);
        let named = locate_exact(text, &["bot", "templates_dir"]);
        if named.is_some() && !resolved.is_dir() {
            return Err(ConfigError {
                path: path.to_path_buf(),
                line: named,
                message: format!(
                    "bot.templates_dir: {} is not a folder (a relative path is taken from the configuration file's folder)",
                    resolved.display()
                ),
            });
        }
        self.bot.templates_dir = resolved;
        Ok(())
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        // The line comes from the parser's spans of the key path, so it is the
        // offending key's own line, not the first text that looks like it.
        let err = |key: &[&str], message: String| ConfigError {
            path: path.to_path_buf(),
            line: locate(text, key),
            message,
        };
        if self.gitlab.url.trim().is_empty() {
            return Err(err(
                &["gitlab"],
                "no GitLab URL: set gitlab.url, or ACCESS_BOT_GITLAB_URL (CI_SERVER_URL in a GitLab pipeline)".into(),
            ));
        }
        if self.gitlab.projects.is_empty() {
            return Err(err(
                &["gitlab", "projects"],
                "`gitlab.projects` names no project (or set ACCESS_BOT_PROJECTS, comma-separated)"
                    .into(),
            ));
        }
        let timeout = self.gitlab.request_timeout.get();
        if timeout.is_zero() || timeout > Duration::from_secs(600) {
            return Err(err(
                &["gitlab", "request_timeout"],
                format!(
                    "gitlab.request_timeout is {}: it must be more than 0s and at most 10m",
                    self.gitlab.request_timeout
                ),
            ));
        }
        let tz = self
            .time_zone()
            .map_err(|e| err(&["bot", "time_zone"], e))?;
        let schedule = self.poll_schedule();
        let loopback_gitlab = is_loopback_url(&self.gitlab.url);
        // Every poll costs at least one GitLab call per project: a zero or
        // sub-second interval hammers GitLab. The sandbox (loopback) may go down to 1s.
        let min = if loopback_gitlab { 1 } else { MIN_POLL_SECS };
        let every = match schedule {
            PollSchedule::Every(d) => *d,
            PollSchedule::Cron(c) => shortest_gap(c, tz),
        };
        if every < Duration::from_secs(min) {
            return Err(err(
                &["gitlab", "poll_interval"],
                format!(
                    "gitlab.poll_interval {:?} polls every {:?}; the minimum is {min}s (use the webhook for faster reactions)",
                    self.gitlab.poll_interval.as_str(),
                    every
                ),
            ));
        }
        if self.ops.listen.trim().is_empty() {
            return Err(err(
                &["ops", "listen"],
                "ops.listen is empty: give an address such as 127.0.0.1:9090".into(),
            ));
        }
        if self.status.enabled && self.status.token_env.trim().is_empty() {
            return Err(err(
                &["status", "token_env"],
                "status.token_env is empty: the status page shows personal data and needs a secret"
                    .into(),
            ));
        }
        if self.status.username.is_empty() || self.status.username.contains(':') {
            return Err(err(
                &["status", "username"],
                "status.username must be non-empty and contain no ':' (basic auth)".into(),
            ));
        }
        for (i, rule) in self.kinds.iter().enumerate() {
            let idx = i.to_string();
            if rule.labels.is_empty() && rule.title.is_none() {
                return Err(err(
                    &["kinds", &idx],
                    format!("the rule for {} has neither labels nor a title", rule.kind),
                ));
            }
            if !self.policy_for(rule.kind).trusted_authors.is_empty() && rule.labels.is_empty() {
                return Err(err(
                    &["kinds", &idx, "labels"],
                    format!(
                        "the rule for {} (a trusted kind) needs a label: the label's event shows who made the issue that kind",
                        rule.kind
                    ),
                ));
            }
            if let Some(t) = &rule.title {
                regex::Regex::new(t).map_err(|e| {
                    err(
                        &["kinds", &idx, "title"],
                        format!("invalid title regex {t:?}: {e}"),
                    )
                })?;
            }
        }
        let check_refs = |names: &[String], at: &[&str], ctx: &str| -> Result<(), ConfigError> {
            for n in names {
                if !self.approvals.contains_key(n) {
                    return Err(err(
                        at,
                        format!("{ctx} requires approval {n:?}, which no [approvals.{n}] defines"),
                    ));
                }
            }
            Ok(())
        };
        for (kind, p) in &self.policy {
            let k = kind.to_string();
            check_refs(
                &p.approvals,
                &["policy", &k, "approvals"],
                &format!("policy.{kind}"),
            )?;
            check_refs(
                &p.pre_approved,
                &["policy", &k, "pre_approved"],
                &format!("policy.{kind}.pre_approved"),
            )?;
            check_refs(
                &p.if_edited,
                &["policy", &k, "if_edited"],
                &format!("policy.{kind}.if_edited"),
            )?;
            if (!p.if_edited.is_empty() || p.subject_in_title || !p.pre_approved_levels.is_empty())
                && p.trusted_authors.is_empty()
            {
                return Err(err(
                    &["policy", &k],
                    format!(
                        "policy.{kind}: if_edited, subject_in_title and pre_approved_levels are for kinds with trusted_authors"
                    ),
                ));
            }
            if !p.pre_approved.is_empty() && p.trusted_authors.is_empty() {
                return Err(err(
                    &["policy", &k, "pre_approved"],
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
                        &["policy", &k, "pre_approved"],
                        format!(
                            "policy.{kind}.pre_approved names {n:?}, a verification (it has a denied_label); a template cannot verify a person"
                        ),
                    ));
                }
            }
        }
        check_refs(&self.changes.level, &["changes", "level"], "changes.level")?;
        check_refs(
            &self.changes.team_tag,
            &["changes", "team_tag"],
            "changes.team_tag",
        )?;
        check_refs(
            &self.changes.app_group,
            &["changes", "app_group"],
            "changes.app_group",
        )?;
        for (key, label) in [
            ("time_bound", &self.bot.state_labels.time_bound),
            ("lease", &self.bot.state_labels.lease),
        ] {
            if label.contains("::") {
                return Err(err(
                    &["bot", "state_labels", key],
                    format!(
                        "bot.state_labels.{key} = {label:?} is a scoped label (::): GitLab keeps one label per scope, so the next state label would remove it; use a name without ::"
                    ),
                ));
            }
        }
        if self.identity.sources.is_empty() {
            return Err(err(
                &["identity", "sources"],
                "identity.sources is empty: the bot could never tell who anyone is".into(),
            ));
        }
        if self
            .identity
            .sources
            .contains(&IdentitySource::GitlabEnterpriseUsers)
            && self.identity.enterprise_group.is_none()
        {
            return Err(err(
                &["identity", "enterprise_group"],
                "identity.sources names gitlab_enterprise_users: set identity.enterprise_group (the top-level group)".into(),
            ));
        }
        if self.identity.sources.contains(&IdentitySource::Map) && self.identity.map_path.is_none()
        {
            return Err(err(
                &["identity", "map_path"],
                "identity.sources names map: set identity.map_path".into(),
            ));
        }
        if self.identity.directory && self.google.is_none() {
            return Err(err(
                &["identity", "directory"],
                "identity.directory needs the [google] service account".into(),
            ));
        }
        if self.bot.marker_key_env.trim().is_empty() {
            return Err(err(
                &["bot", "marker_key_env"],
                "bot.marker_key_env must name the variable holding the marker key".into(),
            ));
        }
        for e in &self.bot.protected {
            if crate::request::Email::parse(e).is_err() {
                return Err(err(
                    &["bot", "protected"],
                    format!("bot.protected: {e:?} is not an e-mail address"),
                ));
            }
        }
        check_url(&self.gitlab.url, "gitlab.url").map_err(|e| err(&["gitlab", "url"], e))?;
        let mut okta_groups: BTreeMap<String, &str> = BTreeMap::new();
        for (name, z) in &self.zendesk {
            check_refs(
                &z.requires,
                &["zendesk", name, "requires"],
                &format!("zendesk.{name}"),
            )?;
            check_url(&z.base_url, &format!("zendesk.{name}.base_url"))
                .map_err(|e| err(&["zendesk", name, "base_url"], e))?;
            // One Okta group assigns one instance's app: shared, removing
            // someone from one instance would take away the other as well.
            if let Some(g) = &z.okta_group
                && let Some(other) = okta_groups.insert(normalize(g), name)
            {
                return Err(err(
                    &["zendesk", name, "okta_group"],
                    format!(
                        "zendesk.{name}.okta_group {g:?} is also zendesk.{other}'s: each instance needs its own group"
                    ),
                ));
            }
            if z.requests_per_minute == 0 {
                return Err(err(
                    &["zendesk", name, "requests_per_minute"],
                    format!("zendesk.{name}.requests_per_minute must be above 0"),
                ));
            }
            for (level, a) in &z.access_levels {
                if !["agent", "admin", "end-user"].contains(&a.role.as_str()) {
                    return Err(err(
                        &["zendesk", name, "access_levels", level, "role"],
                        format!(
                            "zendesk.{name}.access_levels.{level:?}: role {:?} is not agent, admin or end-user",
                            a.role
                        ),
                    ));
                }
                if let Some(r) = &a.requires {
                    check_refs(
                        r,
                        &["zendesk", name, "access_levels", level, "requires"],
                        &format!("zendesk.{name}.access_levels.{level:?}"),
                    )?;
                }
                if a.self_service && (!a.light_agent || !a.groups.is_empty()) {
                    return Err(err(
                        &["zendesk", name, "access_levels", level, "self_service"],
                        format!(
                            "zendesk.{name}.access_levels.{level:?}: self_service is only for a light-agent level without groups"
                        ),
                    ));
                }
                if a.light_agent && a.custom_role.is_some() {
                    return Err(err(
                        &["zendesk", name, "access_levels", level, "custom_role"],
                        format!(
                            "zendesk.{name}.access_levels.{level:?}: light_agent picks the role by role_type 1; do not also name custom_role"
                        ),
                    ));
                }
            }
        }
        for (name, z) in &self.zendesk {
            if z.group_directory == GroupDirectoryKind::Okta && self.okta.is_none() {
                return Err(err(
                    &["zendesk", name, "group_directory"],
                    format!("zendesk.{name}.group_directory is okta: add the [okta] section"),
                ));
            }
        }
        if let Some(o) = &self.okta {
            check_url(&o.org_url, "okta.org_url").map_err(|e| err(&["okta", "org_url"], e))?;
        }
        if let Some(g) = &self.google {
            if g.key_path.is_none() && g.key_env.is_none() {
                return Err(err(
                    &["google"],
                    "[google] needs key_path or key_env for the service-account key".into(),
                ));
            }
            check_url(&g.base_url, "google.base_url")
                .map_err(|e| err(&["google", "base_url"], e))?;
        }
        for d in &self.bot.allowed_email_domains {
            if d.is_empty() || d.contains('@') || d.ends_with('.') || !d.is_ascii() {
                return Err(err(
                    &["bot", "allowed_email_domains"],
                    format!("allowed email domain {d:?} is not a plain ASCII domain"),
                ));
            }
        }
        if let Some(e) = self.notify.as_ref().and_then(|n| n.email.as_ref()) {
            let loopback = ["localhost", "127.0.0.1", "::1"].contains(&e.smtp_host.as_str());
            if e.tls == SmtpTls::None && !loopback {
                return Err(err(
                    &["notify", "email", "tls"],
                    format!(
                        "notify.email.tls = \"none\" sends credentials and personal data in clear text; only allowed for a loopback host, not {:?}",
                        e.smtp_host
                    ),
                ));
            }
            if e.username_env.is_some() != e.password_env.is_some() {
                return Err(err(
                    &["notify", "email", "username_env"],
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
                        &["notify", "email"],
                        format!("notify.email: {a:?} is not an e-mail address"),
                    ));
                }
            }
        }
        if let Some(t) = &self.support_team
            && !t.path.contains("{username}")
        {
            return Err(err(
                &["support_team", "path"],
                "support_team.path must contain {username}".into(),
            ));
        }
        if let Some(s) = &self.seat_audit {
            if !["light_agent", "end_user"].contains(&s.reclaim_to.as_str()) {
                return Err(err(
                    &["seat_audit", "reclaim_to"],
                    "seat_audit.reclaim_to must be light_agent or end_user".into(),
                ));
            }
            // A negative or NaN price would make every saving in the review wrong.
            if !s.price_per_seat_month.is_finite() || s.price_per_seat_month < 0.0 {
                return Err(err(
                    &["seat_audit", "price_per_seat_month"],
                    format!(
                        "seat_audit.price_per_seat_month must be a number of at least 0, not {}",
                        s.price_per_seat_month
                    ),
                ));
            }
            // Ticks are only seen on polled projects.
            if let Some(p) = &s.project
                && !self.gitlab.projects.contains(p)
            {
                return Err(err(
                    &["seat_audit", "project"],
                    format!(
                        "seat_audit.project {p:?} must also be listed in gitlab.projects, or reviewers' ticks are never seen"
                    ),
                ));
            }
            if s.reviewers.is_empty() {
                return Err(err(
                    &["seat_audit", "reviewers"],
                    "seat_audit.reviewers is empty: nobody could approve a reclaim".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn poll_schedule(&self) -> &PollSchedule {
        self.gitlab.poll_interval.schedule()
    }

    /// The time zone of the cron schedules (`[bot] time_zone`, UTC by default).
    pub fn time_zone(&self) -> Result<Zone, String> {
        match &self.bot.time_zone {
            None => Ok(Zone::Utc),
            Some(z) => Zone::parse(z),
        }
    }

    /// How long `/healthz` tolerates no completed poll cycle.
    pub fn unhealthy_after(&self) -> Duration {
        if let Some(d) = &self.ops.unhealthy_after {
            return d.get();
        }
        let tz = self.time_zone().unwrap_or(Zone::Utc);
        let every = match self.poll_schedule() {
            PollSchedule::Every(d) => *d,
            PollSchedule::Cron(c) => longest_gap(c, tz),
        };
        every.saturating_mul(5).max(Duration::from_secs(300))
    }

    /// The timeout of one GitLab request (`gitlab.request_timeout`).
    pub fn gitlab_timeout(&self) -> Duration {
        self.gitlab.request_timeout.get()
    }

    pub fn poll_overlap(&self) -> Duration {
        self.gitlab.poll_overlap.get()
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

    /// System names that mean a group directory in a checklist item (the
    /// item then names the group, which says whose app it is).
    pub fn group_directory_aliases(&self) -> Vec<&str> {
        let google = self.google.iter().flat_map(|g| g.aliases.iter());
        let okta = self.okta.iter().flat_map(|o| o.aliases.iter());
        google.chain(okta).map(String::as_str).collect()
    }

    pub fn is_group_directory_alias(&self, system: &str) -> bool {
        let s = normalize(system);
        self.group_directory_aliases()
            .iter()
            .any(|a| normalize(a) == s)
    }

    /// `instance`'s app group, when the directory holding it is configured.
    pub fn app_group(&self, instance: &str) -> Option<&str> {
        let z = self.zendesk.get(instance)?;
        let configured = match z.group_directory {
            GroupDirectoryKind::Google => self.google.is_some(),
            GroupDirectoryKind::Okta => self.okta.is_some(),
        };
        z.okta_group.as_deref().filter(|_| configured)
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
        match self.okta.as_ref().map(|o| &o.auth) {
            Some(OktaAuth::ApiToken { token_env }) => {
                v.push((token_env.clone(), "Okta API token".into()));
            }
            Some(OktaAuth::PrivateKeyJwt { key_env, .. }) => {
                v.push((key_env.clone(), "Okta service app private key (PEM)".into()));
            }
            None => {}
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
        if self.status.enabled {
            v.push((self.status.token_env.clone(), "status page secret".into()));
        }
        v
    }

    /// `[status] stuck_after` (three days unless configured).
    pub fn stuck_after(&self) -> Duration {
        self.status.stuck_after.get()
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

/// The longest duration accepted anywhere: a hundred years. Longer ones are
/// typos, and date arithmetic on them would overflow.
pub const MAX_DURATION_SECS: u64 = 100 * 366 * 86_400;

/// The shortest poll interval against a real GitLab.
pub const MIN_POLL_SECS: u64 = 5;

/// A duration from the configuration, parsed when the file is read (an
/// invalid one is an error at its line then, never a default later); it keeps
/// the text the operator wrote, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dur {
    value: Duration,
    text: String,
}

impl Dur {
    fn from_secs(secs: u64, text: &str) -> Dur {
        Dur {
            value: Duration::from_secs(secs),
            text: text.to_string(),
        }
    }

    /// As in the file: `90s`, `15m`, `2h`, `7d`, `2w`.
    pub fn parse(text: &str) -> Result<Dur, String> {
        Ok(Dur {
            value: parse_duration(text)?,
            text: text.trim().to_string(),
        })
    }

    pub fn get(&self) -> Duration {
        self.value
    }

    /// The same, for date arithmetic (at most a hundred years: always fits).
    pub fn chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.value).unwrap_or(chrono::Duration::MAX)
    }
}

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let text = String::deserialize(d)?;
        Dur::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// `90s`, `15m`, `2h`, `7d`, `2w`, or a bare number of seconds; at most a hundred years.
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
    match n.checked_mul(mult) {
        Some(secs) if secs <= MAX_DURATION_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(format!("{s:?} is too long (at most 100 years)")),
    }
}

/// A cron schedule, parsed as the configuration is read (an error names its
/// key and line); it keeps the expression as written for messages.
#[derive(Debug, Clone)]
pub struct Cron {
    expr: String,
    schedule: Box<cron::Schedule>,
}

impl Cron {
    pub fn schedule(&self) -> &cron::Schedule {
        &self.schedule
    }

    pub fn as_str(&self) -> &str {
        &self.expr
    }
}

impl std::str::FromStr for Cron {
    type Err = String;
    fn from_str(s: &str) -> Result<Cron, String> {
        Ok(Cron {
            expr: s.to_string(),
            schedule: Box::new(parse_cron(s)?),
        })
    }
}

impl<'de> Deserialize<'de> for Cron {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cron, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Cron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.expr)
    }
}

/// The accepted cron forms, for error messages.
pub const CRON_FORMS: &str = "5 fields `minute hour day-of-month month day-of-week` (\"*/5 * * * *\", \"0 9 * * 1-5\"), 6 fields with seconds first (\"0 */5 * * * *\"), or 7 with a year last";

/// A cron expression as operators write it: the standard 5 fields (day of
/// week 0-7, Sunday 0 or 7), or 6/7 fields with seconds first (and a year).
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let normalized = match fields.len() {
        5 => {
            let dow = standard_day_of_week(fields[4])
                .map_err(|e| format!("{expr:?}: {e}; accepted: {CRON_FORMS}"))?;
            format!(
                "0 {} {} {} {} {dow}",
                fields[0], fields[1], fields[2], fields[3]
            )
        }
        6 | 7 => fields.join(" "),
        n => {
            return Err(format!("{expr:?} has {n} fields; accepted: {CRON_FORMS}"));
        }
    };
    normalized.parse::<cron::Schedule>().map_err(|e| {
        format!("{expr:?} is not a valid cron expression ({e}); accepted: {CRON_FORMS}")
    })
}

/// Standard cron numbers the days of the week from Sunday = 0 (7 too); the
/// `cron` crate from Sunday = 1. Names and `*` mean the same in both.
fn standard_day_of_week(field: &str) -> Result<String, String> {
    let mut out: Vec<String> = Vec::new();
    for part in field.split(',') {
        if part.starts_with('*') || part.chars().any(|c| c.is_ascii_alphabetic()) {
            out.push(part.to_string());
            continue;
        }
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step in day of week {part:?}"))?,
            ),
            None => (part, 1),
        };
        let num = |v: &str| {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n <= 7)
                .ok_or_else(|| format!("day of week {v:?} is not 0-7 or a name"))
        };
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None if part.contains('/') => (num(range)?, 6),
            None => {
                let a = num(range)?;
                (a, a)
            }
        };
        if a > b {
            return Err(format!("day-of-week range {range:?} runs backwards"));
        }
        let mut days: Vec<u32> = (a..=b).step_by(step as usize).map(|d| d % 7 + 1).collect();
        days.sort_unstable();
        days.dedup();
        out.extend(days.iter().map(|d| d.to_string()));
    }
    Ok(out.join(","))
}

/// The time zone cron schedules are read in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    Utc,
    Fixed(chrono::FixedOffset),
    Iana(chrono_tz::Tz),
}

impl Zone {
    /// `UTC`, an IANA name (`Europe/Berlin`, daylight saving included), or a
    /// fixed offset (`+02:00`, `-0530`, `UTC+2`).
    pub fn parse(s: &str) -> Result<Zone, String> {
        let t = s.trim();
        if ["utc", "z", "etc/utc", "gmt"].contains(&t.to_ascii_lowercase().as_str()) {
            return Ok(Zone::Utc);
        }
        if let Ok(tz) = t.parse::<chrono_tz::Tz>() {
            return Ok(Zone::Iana(tz));
        }
        let off = t
            .strip_prefix("UTC")
            .or_else(|| t.strip_prefix("GMT"))
            .unwrap_or(t);
        let bad = || {
            format!(
                "bot.time_zone {s:?}: use UTC, an IANA name such as Europe/Berlin, or a fixed offset such as +02:00"
            )
        };
        let (sign, rest) = match off.chars().next() {
            Some('+') => (1, &off[1..]),
            Some('-') => (-1, &off[1..]),
            _ => return Err(bad()),
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || digits.len() > 4 {
            return Err(bad());
        }
        let (h, m) = if digits.len() <= 2 {
            (digits.parse::<i32>().map_err(|_| bad())?, 0)
        } else {
            let (h, m) = digits.split_at(digits.len() - 2);
            (
                h.parse::<i32>().map_err(|_| bad())?,
                m.parse::<i32>().map_err(|_| bad())?,
            )
        };
        if h > 14 || m > 59 {
            return Err(bad());
        }
        chrono::FixedOffset::east_opt(sign * (h * 3600 + m * 60))
            .map(Zone::Fixed)
            .ok_or_else(bad)
    }

    /// The next `n` times of `schedule` after now, in UTC.
    pub fn upcoming(
        self,
        schedule: &cron::Schedule,
        n: usize,
    ) -> Vec<chrono::DateTime<chrono::Utc>> {
        self.upcoming_after(schedule, chrono::Utc::now(), n)
    }

    /// The next `n` times of `schedule` after `after`, in UTC.
    pub fn upcoming_after(
        self,
        schedule: &cron::Schedule,
        after: chrono::DateTime<chrono::Utc>,
        n: usize,
    ) -> Vec<chrono::DateTime<chrono::Utc>> {
        match self {
            Zone::Utc => schedule.after(&after).take(n).collect(),
            Zone::Fixed(o) => schedule
                .after(&after.with_timezone(&o))
                .take(n)
                .map(|t| t.with_timezone(&chrono::Utc))
                .collect(),
            Zone::Iana(tz) => schedule
                .after(&after.with_timezone(&tz))
                .take(n)
                .map(|t| t.with_timezone(&chrono::Utc))
                .collect(),
        }
    }
}

/// Gaps between the next runs of a schedule (the first few).
fn gaps(c: &cron::Schedule, tz: Zone) -> Vec<Duration> {
    tz.upcoming(c, 12)
        .windows(2)
        .filter_map(|w| (w[1] - w[0]).to_std().ok())
        .collect()
}

fn shortest_gap(c: &cron::Schedule, tz: Zone) -> Duration {
    gaps(c, tz).into_iter().min().unwrap_or(Duration::MAX)
}

fn longest_gap(c: &cron::Schedule, tz: Zone) -> Duration {
    gaps(c, tz)
        .into_iter()
        .max()
        .unwrap_or(Duration::from_secs(3600))
}

/// Is this URL's host on the loopback interface (the sandbox, a local proxy)?
pub fn is_loopback_url(u: &str) -> bool {
    url::Url::parse(u).is_ok_and(|u| match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    })
}

/// An API base URL: https, or http to loopback only (the token would travel in clear text).
fn check_url(u: &str, key: &str) -> Result<(), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("{key} {u:?}: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_url(u) => Ok(()),
        "http" => Err(format!(
            "{key} {u:?} is http:// to a host that is not loopback: the credentials would travel in clear text; use https://"
        )),
        s => Err(format!("{key} {u:?}: scheme {s:?} is not https")),
    }
}

/// The dotted key (`status.stuck_after`) of the `key = value` line holding
/// `offset`, under the nearest table header above it; `None` off such a line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
        return None;
    }
    let table = before[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        l.starts_with('[')
            .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    });
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of a key path (`["zendesk", "global", "base_url"]`, array
/// elements by index) from the TOML parser's spans; the deepest part of the
/// path that exists when the rest does not (a missing key: its table).
pub fn locate(text: &str, path: &[&str]) -> Option<usize> {
    walk(text, path).map(|(line, _)| line)
}

/// The line of a key path only when the whole path is in the file.
pub fn locate_exact(text: &str, path: &[&str]) -> Option<usize> {
    walk(text, path).and_then(|(line, depth)| (depth == path.len()).then_some(line))
}

/// (line, how many segments were found) of the deepest existing part of a key path.
fn walk(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut line = None;
    let mut depth = 0;
    let mut table: Option<&toml::de::DeTable<'_>> = Some(doc.get_ref());
    let mut value: Option<&toml::de::DeValue<'_>> = None;
    for seg in path {
        let next = match (table, value) {
            (Some(t), _) => t.get_key_value(*seg).map(|(k, v)| (k.span().start, v)),
            (None, Some(toml::de::DeValue::Array(a))) => seg
                .parse::<usize>()
                .ok()
                .and_then(|i| a.get(i))
                .map(|v| (v.span().start, v)),
            _ => None,
        };
        let Some((start, v)) = next else {
            break;
        };
        line = Some(line_of(text, start));
        depth += 1;
        table = v.get_ref().as_table();
        value = Some(v.get_ref());
    }
    line.map(|l| (l, depth))
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
        assert!(matches!(cfg.poll_schedule(), PollSchedule::Cron(_)));
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("bot.toml"))
    }

    fn line_starting(text: &str, prefix: &str, after: &str) -> usize {
        let start = text.find(after).unwrap();
        line_of(text, start + text[start..].find(prefix).unwrap())
    }

    #[test]
    fn semantic_errors_point_at_the_offending_keys_own_line() {
        // `path` appears many times before [support_team]; the error must name
        // the line inside that section.
        let text = example().replacen(
            "path = \"data/agents/{username}.yaml\"",
            "path = \"data/agents/x.yaml\"",
            1,
        );
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("support_team.path"), "{e}");
        assert_eq!(
            e.line,
            Some(line_starting(&text, "path = ", "[support_team]")),
            "{e}"
        );
        // An array-of-tables element, by index.
        let text = example().replacen(
            "title = \"(?i)role change|change role\"",
            "title = \"(\"",
            1,
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.line,
            Some(text.lines().position(|l| l == "title = \"(\"").unwrap() + 1),
            "{e}"
        );
        // A nested table key.
        let text = example().replacen(
            "base_url = \"https://gitlab-federal-support.zendesk.com\"",
            "base_url = \"http://gitlab-federal-support.zendesk.com\"",
            1,
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.line,
            Some(line_starting(&text, "base_url", "[zendesk.federal]")),
            "{e}"
        );
    }

    #[test]
    fn locate_follows_tables_arrays_and_quoted_keys() {
        let t = "a = 1\n[x]\ny = 2\n[[k]]\nz = 1\n[[k]]\nz = 2\n[q.\"Light Agent\"]\nrole = \"agent\"\n";
        assert_eq!(locate(t, &["x", "y"]), Some(3));
        assert_eq!(locate(t, &["k", "1", "z"]), Some(7));
        assert_eq!(locate(t, &["q", "Light Agent", "role"]), Some(9));
        // Missing key: the deepest part that exists.
        assert_eq!(locate(t, &["x", "nope"]), Some(2));
        assert_eq!(locate(t, &["nope"]), None);
    }

    #[test]
    fn five_field_cron_is_standard_cron() {
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let next = |e: &str, tz: Zone| tz.upcoming_after(&parse_cron(e).unwrap(), t0, 10);
        // Monday to Friday at 09:00, as standard cron means 1-5.
        let weekdays = next("0 9 * * 1-5", Zone::Utc);
        assert_eq!(weekdays, next("0 0 9 * * Mon-Fri", Zone::Utc));
        assert!(weekdays.iter().all(|t| {
            use chrono::{Datelike, Timelike};
            t.hour() == 9 && t.weekday().number_from_monday() <= 5
        }));
        // Sunday is 0 and 7; names work as they are.
        assert_eq!(
            next("30 6 * * 0", Zone::Utc),
            next("0 30 6 * * Sun", Zone::Utc)
        );
        assert_eq!(
            next("30 6 * * 7", Zone::Utc),
            next("0 30 6 * * Sun", Zone::Utc)
        );
        assert_eq!(
            next("30 6 * * 5-7", Zone::Utc),
            next("0 30 6 * * Fri,Sat,Sun", Zone::Utc)
        );
        assert_eq!(
            next("*/5 * * * *", Zone::Utc)[1] - next("*/5 * * * *", Zone::Utc)[0],
            chrono::Duration::minutes(5)
        );
        // 6 and 7 fields are still the cron crate's own.
        assert!(parse_cron("0 0 6 1 * *").is_ok());
        assert!(parse_cron("0 0 6 1 * * 2027").is_ok());
        // A bad expression lists the accepted forms.
        for bad in ["* * *", "61 * * * *", "0 9 * * 8", "every day"] {
            let e = parse_cron(bad).unwrap_err();
            assert!(
                e.contains("5 fields") && e.contains("6 fields"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn cron_schedules_follow_the_configured_time_zone() {
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-07-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let c = parse_cron("0 9 * * *").unwrap();
        let hour = |z: Zone| {
            use chrono::Timelike;
            z.upcoming_after(&c, t0, 1)[0].hour()
        };
        assert_eq!(hour(Zone::Utc), 9);
        // Berlin in July is UTC+2 (daylight saving).
        assert_eq!(hour(Zone::parse("Europe/Berlin").unwrap()), 7);
        assert_eq!(hour(Zone::parse("+02:00").unwrap()), 7);
        assert_eq!(hour(Zone::parse("UTC-5").unwrap()), 14);
        assert!(Zone::parse("Mars/Olympus").is_err());
        let text = example().replacen(
            "team_tags =",
            "time_zone = \"America/New_York\"\nteam_tags =",
            1,
        );
        assert!(matches!(
            parse(&text).unwrap().time_zone(),
            Ok(Zone::Iana(_))
        ));
        let text = example().replacen("team_tags =", "time_zone = \"Moon\"\nteam_tags =", 1);
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("IANA"), "{e}");
        assert_eq!(
            e.line,
            Some(
                text.lines()
                    .position(|l| l.starts_with("time_zone"))
                    .unwrap()
                    + 1
            )
        );
    }

    #[test]
    fn each_instance_picks_its_group_directory() {
        // The example: Google for every instance (the default).
        let cfg = parse(&example()).unwrap();
        assert!(cfg.okta.is_none());
        assert_eq!(
            cfg.zendesk["global"].group_directory,
            GroupDirectoryKind::Google
        );
        assert_eq!(
            cfg.app_group("global"),
            Some("okta-zendeskglobal-users@gitlab.com")
        );
        // Okta for one instance: it needs [okta].
        let okta_global = example().replacen(
            "okta_group = \"okta-zendeskglobal-users@gitlab.com\"",
            "okta_group = \"okta-zendeskglobal-users\"\ngroup_directory = \"okta\"",
            1,
        );
        let e = parse(&okta_global).unwrap_err();
        assert!(e.to_string().contains("add the [okta] section"), "{e}");
        assert!(e.line.is_some(), "{e}");
        let with_okta = format!(
            "{okta_global}\n[okta]\naliases = [\"Okta\"]\norg_url = \"https://example.okta.com\"\n\n[okta.auth]\nkind = \"private_key_jwt\"\nclient_id = \"0oa1\"\nkey_env = \"OKTA_PRIVATE_KEY\"\n"
        );
        let cfg = parse(&with_okta).unwrap();
        assert_eq!(cfg.app_group("global"), Some("okta-zendeskglobal-users"));
        assert_eq!(
            cfg.zendesk["federal"].group_directory,
            GroupDirectoryKind::Google
        );
        assert!(cfg.is_group_directory_alias("okta"));
        assert!(cfg.is_group_directory_alias("Google Group"));
        assert!(
            cfg.secret_envs()
                .iter()
                .any(|(v, what)| v == "OKTA_PRIVATE_KEY" && what.contains("Okta"))
        );
        // The commented example in bot.toml, uncommented, is valid as written.
        let ex = example();
        let start = ex.find("# [okta]\n").unwrap();
        let end = ex[start..].find("\n\n").unwrap() + start;
        let block: String = ex[start..end]
            .lines()
            .map(|l| l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let uncommented = format!(
            "{}{block}{}",
            &ex[..start].replacen(
                "# group_directory = \"okta\"",
                "group_directory = \"okta\"",
                1
            ),
            &ex[end..]
        );
        let cfg = parse(&uncommented).unwrap();
        assert_eq!(
            cfg.zendesk["global"].group_directory,
            GroupDirectoryKind::Okta
        );
        assert!(matches!(
            cfg.okta.as_ref().map(|o| &o.auth),
            Some(OktaAuth::PrivateKeyJwt { .. })
        ));
        // An unknown directory, an Okta URL that is not https, an unknown auth kind.
        let bad_kind = example().replacen(
            "okta_group = \"okta-zendeskglobal-users@gitlab.com\"",
            "okta_group = \"x\"\ngroup_directory = \"ldap\"",
            1,
        );
        assert!(parse(&bad_kind).is_err());
        let plain_http = with_okta.replace("https://example.okta.com", "http://example.okta.com");
        assert!(parse(&plain_http).is_err());
        let bad_auth = with_okta.replace("kind = \"private_key_jwt\"", "kind = \"password\"");
        assert!(parse(&bad_auth).is_err());
    }

    #[test]
    fn validation_catches_real_mistakes() {
        let refused = |from: &str, to: &str, needle: &str| {
            let text = example().replacen(from, to, 1);
            assert_ne!(text, example(), "{from} not in the example");
            let e = parse(&text).expect_err(to);
            assert!(e.to_string().contains(needle), "{to}: {e}");
            assert!(e.line.is_some(), "{to}: {e}");
        };
        let poll = "poll_interval = \"60s\"";
        refused(poll, "poll_interval = \"0s\"", "minimum is 5s");
        refused(poll, "poll_interval = \"2s\"", "minimum is 5s");
        refused(poll, "poll_interval = \"* * * * * *\"", "minimum is 5s");
        refused(poll, "poll_interval = \"99999999999999999w\"", "too long");
        // Durations are parsed as the file is read: each bad one at its line.
        for (from, to) in [
            ("poll_overlap = \"2m\"", "poll_overlap = \"2 minutes\""),
            ("dedupe_window = \"6h\"", "dedupe_window = \"6y\""),
            ("check_every = \"10m\"", "check_every = \"often\""),
            (
                "stale_reminder_after = \"7d\"",
                "stale_reminder_after = \"-7d\"",
            ),
        ] {
            let text = example().replacen(from, to, 1);
            let e = parse(&text).expect_err(to);
            let at = text.lines().position(|l| l.trim() == to).unwrap() + 1;
            assert_eq!(e.line, Some(at), "{to}: {e}");
            assert!(
                e.to_string().contains("duration") || e.to_string().contains("unit"),
                "{e}"
            );
        }
        assert!(parse(&example().replacen(poll, "poll_interval = \"*/5 * * * *\"", 1)).is_ok());
        refused(
            "url = \"https://gitlab.com\"",
            "url = \"http://gitlab.example.com\"",
            "clear text",
        );
        refused(
            "base_url = \"https://gitlab.zendesk.com\"",
            "base_url = \"http://gitlab.zendesk.com\"",
            "clear text",
        );
        refused(
            "key_env = \"GOOGLE_SERVICE_ACCOUNT_KEY\"",
            "key_env = \"GOOGLE_SERVICE_ACCOUNT_KEY\"\nbase_url = \"http://10.1.2.3\"",
            "clear text",
        );
        refused(
            "okta_group = \"okta-zendeskfederal-users@gitlab.com\"",
            "okta_group = \"OKTA-zendeskglobal-users@gitlab.com\"",
            "each instance needs its own group",
        );
        refused(
            "price_per_seat_month = 115.0",
            "price_per_seat_month = -1.0",
            "at least 0",
        );
        refused(
            "price_per_seat_month = 115.0",
            "price_per_seat_month = nan",
            "at least 0",
        );
        refused(
            "schedule = \"0 0 6 1 * *\"",
            "schedule = \"every month\"",
            "5 fields",
        );
        refused(
            "stale_close_after = \"30d\"",
            "stale_close_after = \"18446744073709551615w\"",
            "too long",
        );
        // Loopback http is fine (the sandbox), and so is a 1s poll there.
        let text = example()
            .replacen(
                "url = \"https://gitlab.com\"",
                "url = \"http://127.0.0.1:8080\"",
                1,
            )
            .replacen(poll, "poll_interval = \"1s\"", 1);
        assert!(parse(&text).is_ok());
        assert!(parse_duration("18446744073709551615s").is_err());
        assert!(parse_duration("1000000000000000000w").is_err());
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn environment_overrides_url_and_projects() {
        let p = Path::new("bot.toml");
        let cfg = Config::parse_with(
            &example(),
            p,
            &env_of(&[
                ("ACCESS_BOT_GITLAB_URL", "https://gitlab.example.com"),
                ("ACCESS_BOT_PROJECTS", "a/b, 42 ,"),
                ("CI_SERVER_URL", "https://ci.example.com"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.gitlab.url, "https://gitlab.example.com");
        assert_eq!(cfg.gitlab.projects, vec!["a/b", "42"]);
        let cfg = Config::parse_with(
            &example(),
            p,
            &env_of(&[("ACCESS_BOT_OPS_LISTEN", "0.0.0.0:9090")]),
        )
        .unwrap();
        assert_eq!(cfg.ops.listen, "0.0.0.0:9090");
        // CI_SERVER_URL does not beat the file...
        let cfg = Config::parse_with(
            &example(),
            p,
            &env_of(&[("CI_SERVER_URL", "https://ci.example.com")]),
        )
        .unwrap();
        assert_eq!(cfg.gitlab.url, "https://gitlab.com");
        // ...but fills in when the file names no URL and no projects come from elsewhere.
        let bare = example()
            .replacen("url = \"https://gitlab.com\"\n", "", 1)
            .replacen(
                "projects = [\"gitlab-com/team-member-epics/access-requests\"]\n",
                "",
                1,
            );
        let cfg = Config::parse_with(
            &bare,
            p,
            &env_of(&[
                ("CI_SERVER_URL", "https://ci.example.com"),
                ("ACCESS_BOT_PROJECTS", "x/y"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.gitlab.url, "https://ci.example.com");
        let e = Config::parse_with(&bare, p, &env_of(&[])).unwrap_err();
        assert!(e.message.contains("ACCESS_BOT_GITLAB_URL"), "{e}");
        // The environment's URL is validated like the file's.
        let e = Config::parse_with(
            &example(),
            p,
            &env_of(&[("ACCESS_BOT_GITLAB_URL", "http://gitlab.example.com")]),
        )
        .unwrap_err();
        assert!(e.message.contains("clear text"), "{e}");
    }

    #[test]
    fn templates_dir_is_relative_to_the_config_file_and_must_exist() {
        let dir = std::env::temp_dir().join(format!("ab-cfg-{}", rand::random::<u32>()));
        std::fs::create_dir_all(dir.join("etc/templates")).unwrap();
        let cfg_path = dir.join("etc/bot.toml");
        std::fs::write(&cfg_path, example()).unwrap();
        let cfg = Config::load_with(&cfg_path, &env_of(&[])).unwrap();
        assert_eq!(cfg.bot.templates_dir, dir.join("etc/templates"));
        // Named but missing: an error on its line.
        std::fs::remove_dir(dir.join("etc/templates")).unwrap();
        let e = Config::load_with(&cfg_path, &env_of(&[])).unwrap_err();
        assert!(e.message.contains("is not a folder"), "{e}");
        assert_eq!(
            e.line,
            Some(
                example()
                    .lines()
                    .position(|l| l.starts_with("templates_dir"))
                    .unwrap()
                    + 1
            )
        );
        // Left out: the built-in templates, no error.
        let text = example().replacen("templates_dir = \"templates\"\n", "", 1);
        std::fs::write(&cfg_path, text).unwrap();
        assert!(Config::load_with(&cfg_path, &env_of(&[])).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ops_listener_is_on_by_default_on_loopback() {
        let cfg = parse(&example()).unwrap();
        assert_eq!(cfg.ops.listen, "127.0.0.1:9090");
        // Five 60 s intervals, at least five minutes.
        assert_eq!(cfg.unhealthy_after(), Duration::from_secs(300));
        let text = example().replacen("poll_interval = \"60s\"", "poll_interval = \"10m\"", 1)
            + "\n[ops]\nlisten = \"0.0.0.0:9100\"\n";
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.ops.listen, "0.0.0.0:9100");
        assert_eq!(cfg.unhealthy_after(), Duration::from_secs(3000));
    }

    #[test]
    fn the_status_page_is_off_by_default_and_its_section_validated() {
        let cfg = parse(&example()).unwrap();
        assert!(!cfg.status.enabled);
        assert_eq!(cfg.stuck_after(), Duration::from_secs(3 * 86_400));
        assert!(
            !cfg.secret_envs()
                .iter()
                .any(|(v, _)| v == "ACCESS_BOT_STATUS_TOKEN")
        );
        let on = example() + "\n[status]\nenabled = true\nstuck_after = \"12h\"\n";
        let cfg = parse(&on).unwrap();
        assert!(cfg.status.enabled);
        assert_eq!(cfg.status.username, "ops");
        assert_eq!(cfg.stuck_after(), Duration::from_secs(12 * 3600));
        assert!(
            cfg.secret_envs()
                .iter()
                .any(|(v, _)| v == "ACCESS_BOT_STATUS_TOKEN")
        );
        for (bad, needle) in [
            ("enabled = true\ntoken = \"x\"", "token"),
            ("stuck_after = \"soon\"", "status.stuck_after"),
            ("enabled = true\ntoken_env = \"\"", "status.token_env"),
            ("username = \"a:b\"", "status.username"),
        ] {
            let e = parse(&(example() + "\n[status]\n" + bad + "\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn smtp_tls_is_typed_with_its_port() {
        let with = |tls: &str, host: &str| {
            let line = if tls.is_empty() {
                String::new()
            } else {
                format!("tls = \"{tls}\"")
            };
            let text = example()
                .replace(
                    "smtp_host = \"smtp.gmail.com\"",
                    &format!("smtp_host = \"{host}\""),
                )
                .replace("tls = \"starttls\"", &line);
            parse(&text)
        };
        let tls_of = |c: Config| c.notify.and_then(|n| n.email).map(|e| e.tls);
        assert_eq!(
            tls_of(with("", "smtp.example.com").unwrap()),
            Some(SmtpTls::Starttls)
        );
        assert_eq!(
            tls_of(with("implicit", "smtp.example.com").unwrap()),
            Some(SmtpTls::Implicit)
        );
        assert_eq!(SmtpTls::Implicit.default_port(), 465);
        assert_eq!(SmtpTls::Starttls.default_port(), 587);
        assert_eq!(
            tls_of(with("none", "127.0.0.1").unwrap()),
            Some(SmtpTls::None)
        );
        let e = with("none", "smtp.example.com").unwrap_err().to_string();
        assert!(e.contains("clear text"), "{e}");
        let e = with("ssl", "smtp.example.com").unwrap_err().to_string();
        assert!(
            e.contains("notify.email.tls") && e.contains("starttls"),
            "{e}"
        );
    }

    #[test]
    fn cron_schedules_are_parsed_as_the_file_is_read() {
        let cfg = parse(&example()).unwrap();
        let review = cfg.seat_audit.as_ref().and_then(|a| a.schedule.as_ref());
        assert_eq!(review.map(|c| c.as_str()), Some("0 0 6 1 * *"));
        let digest = cfg.notify.as_ref().and_then(|n| n.digest.as_ref());
        assert_eq!(
            digest.map(|c| c.to_string()).as_deref(),
            Some("0 0 17 * * Mon-Fri")
        );
        for (from, to, key) in [
            (
                "schedule = \"0 0 6 1 * *\"",
                "schedule = \"monthly\"",
                "seat_audit.schedule",
            ),
            (
                "digest = \"0 0 17 * * Mon-Fri\"",
                "digest = \"0 0 25 * * *\"",
                "notify.digest",
            ),
        ] {
            let e = parse(&example().replace(from, to)).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(key) && text.contains("accepted"), "{text}");
            assert!(e.line.is_some(), "{text}: no line");
        }
    }
}
