//! Issue text in, typed request out. Pure: no I/O.

pub mod checklist;
pub mod email;
pub mod input;
pub mod subjects;
pub mod visible;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::NaiveDate;
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, normalize};
pub use checklist::{CheckState, ChecklistItem};
pub use email::{Email, EmailError};
pub use input::{IssueFacts, IssueInput, LabelAction, LabelEvent, Note, Person, UserRef};
pub use subjects::Subject;

/// GitLab's limit on a description; anything longer cannot be a real issue body.
pub const MAX_DESCRIPTION: usize = 1_048_576;
/// People in one request: more is a list to split, not a request to read.
pub const MAX_SUBJECTS: usize = 25;
/// Checklist items the bot manages in one request.
pub const MAX_BOT_ITEMS: usize = 40;
/// Problems reported in one comment (the rest are counted).
pub const MAX_ERRORS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// An individual or bulk access request (manager approval).
    AccessRequest,
    /// A Zendesk request that is not a role-based entitlement (system-owner approval too).
    SpecialRequest,
    /// Self-service light agent (Global), or US Federal with citizenship verification.
    LightAgent,
    /// Add or remove a team tag on an existing (light) agent.
    TeamTag,
    /// A mover: change role, custom role and groups.
    RoleChange,
    /// New-hire baseline, authored by the trusted automation.
    RoleBasedEntitlement,
    Offboarding,
}

impl RequestKind {
    pub const ALL: [RequestKind; 7] = [
        RequestKind::AccessRequest,
        RequestKind::SpecialRequest,
        RequestKind::LightAgent,
        RequestKind::TeamTag,
        RequestKind::RoleChange,
        RequestKind::RoleBasedEntitlement,
        RequestKind::Offboarding,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::AccessRequest => "access_request",
            RequestKind::SpecialRequest => "special_request",
            RequestKind::LightAgent => "light_agent",
            RequestKind::TeamTag => "team_tag",
            RequestKind::RoleChange => "role_change",
            RequestKind::RoleBasedEntitlement => "role_based_entitlement",
            RequestKind::Offboarding => "offboarding",
        }
    }

    pub fn human(self) -> &'static str {
        match self {
            RequestKind::AccessRequest => "access request",
            RequestKind::SpecialRequest => "special request",
            RequestKind::LightAgent => "light-agent request",
            RequestKind::TeamTag => "team-tag request",
            RequestKind::RoleChange => "role change",
            RequestKind::RoleBasedEntitlement => "role-based entitlement",
            RequestKind::Offboarding => "offboarding",
        }
    }

    pub fn revokes(self) -> bool {
        self == RequestKind::Offboarding
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a bot-owned checklist item asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ItemAction {
    /// Grant or change the access level and/or team tags in one instance's
    /// account system. Serialized under its first name: it is part of the
    /// digest of requests already planned.
    #[serde(rename = "zendesk")]
    Account {
        instance: String,
        level: Option<String>,
        add_tags: Vec<String>,
        remove_tags: Vec<String>,
    },
    /// Offboarding: remove the person from this Zendesk instance (its
    /// account system). Serialized under its first name: it is part of the
    /// digest of requests already planned.
    #[serde(rename = "zendesk_remove")]
    AccountRemove { instance: String },
    /// Membership of an instance's app group (in its group directory). The
    /// serialized names are the first ones: they are part of the digest of
    /// requests planned before the rename.
    #[serde(rename = "google_add")]
    GroupAdd { instance: String, group: String },
    #[serde(rename = "google_remove")]
    GroupRemove { instance: String, group: String },
}

impl ItemAction {
    pub fn instance(&self) -> &str {
        match self {
            ItemAction::Account { instance, .. }
            | ItemAction::AccountRemove { instance }
            | ItemAction::GroupAdd { instance, .. }
            | ItemAction::GroupRemove { instance, .. } => instance,
        }
    }

    pub fn revokes(&self) -> bool {
        matches!(
            self,
            ItemAction::AccountRemove { .. } | ItemAction::GroupRemove { .. }
        )
    }
}

/// A checklist item the bot owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BotItem {
    /// Index among all checklist items of the description.
    pub index: usize,
    /// Index among the bot's items (stable while the request's digest is).
    pub ordinal: usize,
    pub line: usize,
    /// The item as GitLab shows it (what is read, shown and digested).
    pub text: String,
    /// The first line as written (what GitLab's checklist notes quote).
    pub raw: String,
    pub state: CheckState,
    pub section: Option<String>,
    pub justification: Option<String>,
    pub action: ItemAction,
}

/// A checklist item for a system the bot does not manage; left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnmanagedItem {
    pub line: usize,
    pub text: String,
    pub raw: String,
}

/// Time-bound access: revoke on this date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Expiry(pub NaiveDate);

/// A parsed, validated request. Not yet approved: see `approval`.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub iid: u64,
    pub kind: RequestKind,
    pub title: String,
    pub web_url: String,
    pub requester: UserRef,
    pub subjects: Vec<Subject>,
    pub items: Vec<BotItem>,
    pub unmanaged: Vec<UnmanagedItem>,
    pub expires: Option<Expiry>,
    /// Every `[[kinds]]` rule that matched (their policies add approvals).
    pub matched_kinds: Vec<RequestKind>,
    /// The configuration each item relies on (access levels, Okta groups), so
    /// that changing it in `bot.toml` changes the digest, and the plan.
    pub definitions: BTreeMap<String, serde_json::Value>,
}

/// Why an issue cannot become a request. Each says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "error", content = "detail", rename_all = "snake_case")]
pub enum RequestError {
    #[error("the issue has no description")]
    EmptyDescription,
    #[error("the description is {0} bytes, above GitLab's limit of 1,048,576")]
    TooLarge(usize),
    #[error("no rule in the configuration says what kind of request this is")]
    UnknownKind,
    #[error("line {line}: {reason}")]
    TableRow { line: usize, reason: String },
    #[error(
        "no person is named: add the personal-information table (Full name, Email, GitLab username, Manager)"
    )]
    NoSubjects,
    #[error("line {line}: {reason}")]
    BadSubject { line: usize, reason: String },
    #[error("{} is listed more than once", crate::render::code_span(.0))]
    DuplicateSubject(String),
    #[error("the email domain of {} is not one the bot provisions (allowed: {allowed})", crate::render::code_span(.email))]
    DomainNotAllowed { email: String, allowed: String },
    #[error("{0} people are named; one request may name at most {max}, so split it", max = MAX_SUBJECTS)]
    TooManySubjects(usize),
    #[error("{0} items name systems the bot manages; one request may hold at most {max}, so split it", max = MAX_BOT_ITEMS)]
    TooManyItems(usize),
    #[error("no checklist item names a system the bot manages")]
    NoBotItems,
    #[error("line {line}: {reason}")]
    BadItem { line: usize, reason: String },
    #[error(
        "line {line}: access level {} is not in the configured table for {instance}; the bot grants only: {allowed}",
        crate::render::code_span(.level)
    )]
    UnknownAccessLevel {
        line: usize,
        instance: String,
        level: String,
        allowed: String,
    },
    #[error("line {line}: tag {} is not a configured team tag (allowed: {allowed})", crate::render::code_span(.tag))]
    UnknownTag {
        line: usize,
        tag: String,
        allowed: String,
    },
    #[error("conflicting items for {0}: {1}")]
    Conflict(String, String),
    #[error(
        "the bot cannot tell the e-mail address of `@{author}`, who filed this request: add the personal-information table (Full name, Email, GitLab username, Manager)"
    )]
    AuthorUnknown { author: String },
    #[error("{0}")]
    Expiry(String),
}

/// A regular expression from the configuration, compiled once per process:
/// the patterns are few (the configuration's), and compiling them on every
/// read was the largest part of the bot's own time per look in a profile.
fn compiled(pattern: &str) -> Result<Regex, regex::Error> {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    static CACHE: LazyLock<Mutex<HashMap<String, Regex>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = cache.get(pattern) {
        // A clone shares the compiled program.
        return Ok(r.clone());
    }
    let r = Regex::new(pattern)?;
    // Bounded anyway: tests and reloads compile other configurations.
    if cache.len() >= 1024 {
        cache.clear();
    }
    cache.insert(pattern.to_string(), r.clone());
    Ok(r)
}

/// The `[[kinds]]` rules that match the issue's labels and title, in order.
pub fn matching_rules(issue: &IssueInput, cfg: &Config) -> Vec<RequestKind> {
    cfg.kinds
        .iter()
        .filter(|rule| {
            rule.labels.iter().all(|l| issue.labels.contains(l))
                && rule.title.as_ref().is_none_or(|t| {
                    compiled(t)
                        .map(|r| r.is_match(&issue.title))
                        .unwrap_or(false)
                })
        })
        .map(|r| r.kind)
        .collect()
}

/// The kind a rule gives an issue on its own: kinds whose issues come from a
/// trusted automation (entitlements, offboarding), then a role change. Any
/// other kind is read from what the checklist asks for (`content_kind`).
pub fn classify(issue: &IssueInput, cfg: &Config) -> Option<RequestKind> {
    let rules = matching_rules(issue, cfg);
    rules
        .iter()
        .copied()
        .find(|k| !cfg.policy_for(*k).trusted_authors.is_empty())
        .or_else(|| rules.into_iter().find(|k| *k == RequestKind::RoleChange))
}

/// Worth reading: a rule gives it a kind, or a checklist item names a system
/// the bot manages. Cheap (no approval logic), for the poller.
pub fn is_candidate(issue: &IssueInput, cfg: &Config) -> bool {
    classify(issue, cfg).is_some()
        || checklist::parse(&issue.description)
            .iter()
            .any(|it| !matches!(classify_item(it, false, cfg), Ok(None)))
}

/// What a request is, from what it asks for: self-service levels (and their
/// Okta groups) only is a light-agent request, tags only a team-tag request,
/// any other Zendesk access level a special request, anything else an access
/// request. The title plays no part: it cannot lower what a request needs.
fn content_kind(items: &[BotItem], cfg: &Config) -> RequestKind {
    let mut levels = 0;
    let mut self_service = true;
    let mut tags_only = true;
    for it in items {
        match &it.action {
            ItemAction::Account {
                instance,
                level,
                add_tags,
                remove_tags,
            } => {
                if let Some(l) = level {
                    levels += 1;
                    tags_only = false;
                    let ss = cfg
                        .zendesk
                        .get(instance)
                        .and_then(|z| z.access_levels.get(l))
                        .is_some_and(|a| a.self_service);
                    self_service &= ss;
                }
                if !add_tags.is_empty() || !remove_tags.is_empty() {
                    self_service = false;
                }
            }
            ItemAction::GroupAdd { .. } => tags_only = false,
            ItemAction::AccountRemove { .. } | ItemAction::GroupRemove { .. } => {
                self_service = false;
                tags_only = false;
            }
        }
    }
    if levels > 0 && self_service {
        RequestKind::LightAgent
    } else if tags_only && !items.is_empty() {
        RequestKind::TeamTag
    } else if levels > 0 {
        RequestKind::SpecialRequest
    } else {
        RequestKind::AccessRequest
    }
}

/// Parse and validate. Every problem found is reported (up to `MAX_ERRORS`).
pub fn parse_request(issue: &IssueInput, cfg: &Config) -> Result<Request, Vec<RequestError>> {
    let text = issue.description.as_str();
    if text.len() > MAX_DESCRIPTION {
        return Err(vec![RequestError::TooLarge(text.len())]);
    }
    if text.trim().is_empty() {
        return Err(vec![RequestError::EmptyDescription]);
    }
    let rule_kind = classify(issue, cfg);
    let revoking = rule_kind.is_some_and(RequestKind::revokes);
    let mut errors = Vec::new();

    let all_items = checklist::parse(text);
    let mut items = Vec::new();
    let mut unmanaged = Vec::new();
    for it in &all_items {
        match classify_item(it, revoking, cfg) {
            Ok(Some(action)) => items.push(BotItem {
                index: it.index,
                ordinal: items.len(),
                line: it.line,
                text: it.visible.clone(),
                raw: it.text.clone(),
                state: it.state,
                section: it.section.clone(),
                justification: it.justification.clone(),
                action,
            }),
            Ok(None) => unmanaged.push(UnmanagedItem {
                line: it.line,
                text: it.visible.clone(),
                raw: it.text.clone(),
            }),
            Err(e) => errors.push(e),
        }
    }
    if items.is_empty() && errors.is_empty() && rule_kind.is_none() {
        return Err(vec![RequestError::UnknownKind]);
    }
    if items.is_empty() && errors.is_empty() {
        errors.push(RequestError::NoBotItems);
    }
    if items.len() > MAX_BOT_ITEMS {
        errors.push(RequestError::TooManyItems(items.len()));
    }
    let kind = rule_kind.unwrap_or_else(|| content_kind(&items, cfg));
    check_conflicts(kind, &items, &mut errors);

    let subjects = match subjects::parse_raw(text) {
        Ok(raw) if raw.len() > MAX_SUBJECTS => {
            errors.push(RequestError::TooManySubjects(raw.len()));
            Vec::new()
        }
        Ok(raw) => validate_subjects(issue, kind, raw, cfg, &mut errors),
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
    };

    let expires = match parse_expiry(text, issue.created_at.date_naive()) {
        Ok(e) => e,
        Err(e) => {
            errors.push(e);
            None
        }
    };

    if !errors.is_empty() {
        return Err(errors);
    }
    let definitions = definitions(&items, cfg);
    Ok(Request {
        iid: issue.iid,
        kind,
        title: issue.title.clone(),
        web_url: issue.web_url.clone(),
        requester: issue.author.clone(),
        subjects,
        items,
        unmanaged,
        expires,
        matched_kinds: matching_rules(issue, cfg),
        definitions,
    })
}

/// The configuration the items rely on, keyed by what they name.
fn definitions(items: &[BotItem], cfg: &Config) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for it in items {
        let instance = it.action.instance();
        let Some(z) = cfg.zendesk.get(instance) else {
            continue;
        };
        let mut def = serde_json::json!({"okta_group": z.okta_group, "requires": z.requires});
        // Moving the group to another directory changes the plan; the default
        // (Google) is left out so that digests made before the key existed hold.
        if z.group_directory != crate::config::GroupDirectoryKind::Google {
            def["group_directory"] = serde_json::json!("okta");
        }
        out.insert(format!("{instance}/instance"), def);
        if let ItemAction::Account {
            level: Some(level), ..
        } = &it.action
            && let Some(a) = z.access_levels.get(level)
        {
            out.insert(
                format!("{instance}/level/{level}"),
                serde_json::to_value(a).unwrap_or_default(),
            );
        }
    }
    out
}

fn validate_subjects(
    issue: &IssueInput,
    kind: RequestKind,
    raw: Vec<subjects::RawSubject>,
    cfg: &Config,
    errors: &mut Vec<RequestError>,
) -> Vec<Subject> {
    let mut out: Vec<Subject> = Vec::new();
    let mut raw = raw;
    // A light-agent request may leave the person out: it is then for its author,
    // as far as the bot can establish who that is.
    if kind == RequestKind::LightAgent && raw.is_empty() {
        match &issue.author_email {
            Some(email) => raw.push(subjects::RawSubject {
                line: 0,
                name: issue.author_name.clone(),
                email: Some(email.clone()),
                gitlab_username: Some(issue.author.username.clone()),
                manager: None,
            }),
            None => {
                errors.push(RequestError::AuthorUnknown {
                    author: issue.author.username.clone(),
                });
                return out;
            }
        }
    }
    if raw.is_empty() {
        errors.push(RequestError::NoSubjects);
        return out;
    }
    let mut seen = BTreeSet::new();
    for r in raw {
        let bad = |reason: String| RequestError::BadSubject {
            line: r.line,
            reason,
        };
        let email = match r.email.as_deref().map(Email::parse) {
            None => {
                errors.push(bad("no email address given".into()));
                continue;
            }
            Some(Err(e)) => {
                errors.push(bad(e.to_string()));
                continue;
            }
            Some(Ok(e)) => e,
        };
        if !email.domain_allowed(&cfg.bot.allowed_email_domains) {
            errors.push(RequestError::DomainNotAllowed {
                email: email.to_string(),
                allowed: cfg.bot.allowed_email_domains.join(", "),
            });
            continue;
        }
        let name = match r.name {
            Some(n) if !subjects::valid_name(&n) => {
                errors.push(bad(format!(
                    "the name {} contains mentions, Markdown or symbols; write the plain name",
                    crate::render::code_span(&n)
                )));
                continue;
            }
            Some(n) => n.trim().to_string(),
            None => email.as_str().split('@').next().unwrap_or("").to_string(),
        };
        let username = match r.gitlab_username.as_deref() {
            None => None,
            Some(u) => match subjects::parse_username(u) {
                Some(u) => Some(u),
                None => {
                    errors.push(bad(format!(
                        "{} is not a GitLab username",
                        crate::render::code_span(u)
                    )));
                    continue;
                }
            },
        };
        let manager = match r.manager.as_deref() {
            None => None,
            Some(m) => match subjects::parse_username(m) {
                Some(m) => Some(m),
                None => {
                    errors.push(bad(format!(
                        "manager {} is not a GitLab username",
                        crate::render::code_span(m)
                    )));
                    continue;
                }
            },
        };
        if !seen.insert(email.clone()) {
            errors.push(RequestError::DuplicateSubject(email.to_string()));
            continue;
        }
        out.push(Subject {
            name,
            email,
            gitlab_username: username,
            manager,
        });
    }
    out
}

/// Split an item into (system, details) for the three known formats.
fn system_and_details(text: &str) -> Option<(String, String, bool)> {
    // Offboarding: `@a @b: Remove the team member from System`.
    OFFBOARDING_ITEM
        .captures(text)
        .map(|c| (c[1].to_string(), String::new(), true))
        .or_else(|| {
            // RBE: `Tool`: `level`
            RBE_ITEM
                .captures(text)
                .map(|c| (c[1].to_string(), c[2].to_string(), false))
        })
        .or_else(|| {
            // AR: System name: details
            text.split_once(':')
                .map(|(s, d)| (s.trim().to_string(), d.trim().to_string(), false))
        })
}

/// Literal patterns, compiled once. They are constants of this file and covered by
/// tests, so failing to compile one is a programming error caught at first use.
macro_rules! lazy_regex {
    ($name:ident, $re:expr) => {
        static $name: std::sync::LazyLock<Regex> =
            std::sync::LazyLock::new(|| Regex::new($re).expect("literal regex"));
    };
}
lazy_regex!(
    OFFBOARDING_ITEM,
    r"(?i)^(?:@[\w.\-]+[\s,]*)*:?\s*remove\s+the\s+team\s+member\s+from\s+(.+?)\s*$"
);
lazy_regex!(RBE_ITEM, r"^`([^`]+)`\s*:\s*`([^`]*)`\s*$");
lazy_regex!(GROUP_TOKEN, r"[A-Za-z0-9._\-]+(?:@[A-Za-z0-9.\-]+)?");
lazy_regex!(
    TAG_OP,
    r"\b(add|remove)\s+(?:the\s+)?(?:team\s+)?tags?\s+([a-z0-9_\-]+)"
);

fn classify_item(
    it: &ChecklistItem,
    revoking: bool,
    cfg: &Config,
) -> Result<Option<ItemAction>, RequestError> {
    let action = classify_visible(it, revoking, cfg)?;
    if action.is_some() && it.has_html {
        return Err(RequestError::BadItem {
            line: it.line,
            reason: "the item holds HTML, so what it shows and what it says can differ; write plain text".into(),
        });
    }
    Ok(action)
}

fn classify_visible(
    it: &ChecklistItem,
    revoking: bool,
    cfg: &Config,
) -> Result<Option<ItemAction>, RequestError> {
    let Some((system, details, removal)) = system_and_details(&it.visible) else {
        return Ok(None);
    };
    let bad = |reason: String| RequestError::BadItem {
        line: it.line,
        reason,
    };

    // App group lines, under any group directory's alias: "Google Group: okta-x (Member)",
    // "`Google Workspace`: `Member of okta-x`", "Remove the team member from Google Group okta-x",
    // "Okta: okta-x".
    let (gsystem, gdetails) = split_group_item(cfg, &system, &details);
    if let Some(gdetails) = gdetails {
        let group = GROUP_TOKEN
            .find_iter(&gdetails)
            .map(|m| m.as_str().to_string())
            .find(|tok| cfg.instance_by_okta_group(tok).is_some());
        let Some(group) = group else {
            // A group the bot does not manage (not an instance's app group).
            return Ok(None);
        };
        let instance = cfg
            .instance_by_okta_group(&group)
            .unwrap_or_default()
            .to_string();
        let full = cfg.zendesk[&instance].okta_group.clone().unwrap_or(group);
        let _ = gsystem;
        if !removal && let Some(w) = reversing_word(&normalize(&gdetails)) {
            return Err(bad(format!(
                "{} says {}: the bot only adds people to a group on a request (removal is done by offboarding); write what to add",
                crate::render::code_span(&it.visible),
                crate::render::code_span(w)
            )));
        }
        if removal && !revoking {
            return Err(bad(
                "removing access is done by an offboarding issue from the automation, not by a request".into(),
            ));
        }
        return Ok(Some(if removal || revoking {
            ItemAction::GroupRemove {
                instance,
                group: full,
            }
        } else {
            ItemAction::GroupAdd {
                instance,
                group: full,
            }
        }));
    }

    let Some(instance) = cfg.instance_by_alias(&system) else {
        return Ok(None);
    };
    let instance = instance.to_string();
    if removal && !revoking {
        return Err(bad(
            "removing access is done by an offboarding issue from the automation, not by a request"
                .into(),
        ));
    }
    if removal || revoking {
        if !removal {
            return Err(bad(format!(
                "an offboarding issue can only remove access; {} asks for something else",
                crate::render::code_span(&it.visible)
            )));
        }
        return Ok(Some(ItemAction::AccountRemove { instance }));
    }

    let z = &cfg.zendesk[&instance];
    let norm = normalize(&details);

    // Team tags.
    let mut add_tags = Vec::new();
    let mut remove_tags = Vec::new();
    let mut rest = norm.clone();
    for c in TAG_OP.captures_iter(&norm) {
        let tag = c[2].to_string();
        if !cfg.bot.team_tags.contains(&tag) {
            return Err(RequestError::UnknownTag {
                line: it.line,
                tag,
                allowed: cfg.bot.team_tags.join(", "),
            });
        }
        if &c[1] == "add" {
            add_tags.push(tag);
        } else {
            remove_tags.push(tag);
        }
        rest = rest.replace(&c[0], " ");
    }
    // Only what the bot can read for certain: a word that reverses or limits
    // the meaning ("revoke", "not", "instead of") is not skipped over.
    if let Some(w) = reversing_word(&rest) {
        return Err(bad(format!(
            "{} says {}, which the bot does not read: ask for one access level (and `add tag X` / `remove tag X`) in plain words",
            crate::render::code_span(&it.visible),
            crate::render::code_span(w)
        )));
    }

    // Access level: exact name/alias match, else a single phrase match.
    let level = match_level(z, &rest);
    let level = match level {
        LevelMatch::One(l) => Some(l),
        LevelMatch::Ambiguous(ls) => {
            return Err(bad(format!(
                "names several access levels ({}); ask for one per line",
                ls.join(", ")
            )));
        }
        LevelMatch::None => {
            // Tags alone are fine; anything that talks about a role must match the table.
            if add_tags.is_empty() && remove_tags.is_empty() || mentions_role(&rest) {
                return Err(RequestError::UnknownAccessLevel {
                    line: it.line,
                    instance: z.display_name.clone(),
                    level: details.trim().trim_matches('`').to_string(),
                    allowed: z
                        .access_levels
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            None
        }
    };
    Ok(Some(ItemAction::Account {
        instance,
        level,
        add_tags,
        remove_tags,
    }))
}

/// A word that takes away, reverses or limits what an item asks for.
fn reversing_word(norm: &str) -> Option<&'static str> {
    const WORDS: &[&str] = &[
        "remove",
        "removed",
        "removal",
        "revoke",
        "revoked",
        "revocation",
        "delete",
        "deleted",
        "downgrade",
        "demote",
        "deactivate",
        "disable",
        "suspend",
        "unsuspend",
        "reactivate",
        "offboard",
        "offboarding",
        "not",
        "no",
        "never",
        "without",
        "except",
        "instead",
        "unless",
        "but",
        "undo",
        "drop",
        "strip",
        "cancel",
    ];
    norm.split(|c: char| !c.is_alphanumeric())
        .find_map(|w| WORDS.iter().find(|x| **x == w).copied())
}

fn mentions_role(norm: &str) -> bool {
    norm.split(|c: char| !c.is_alphanumeric()).any(|w| {
        [
            "admin",
            "administrator",
            "agent",
            "owner",
            "superuser",
            "role",
        ]
        .contains(&w)
    })
}

fn split_group_item(cfg: &Config, system: &str, details: &str) -> (String, Option<String>) {
    if cfg.is_group_directory_alias(system) {
        return (system.to_string(), Some(details.to_string()));
    }
    // "Google Group okta-x" (offboarding form: the group follows the system name).
    let s = normalize(system);
    for a in cfg.group_directory_aliases() {
        let a = normalize(a);
        if let Some(rest) = s.strip_prefix(&format!("{a} ")) {
            return (a.clone(), Some(format!("{rest} {details}")));
        }
    }
    (system.to_string(), None)
}

enum LevelMatch {
    None,
    One(String),
    Ambiguous(Vec<String>),
}

fn match_level(z: &crate::config::ZendeskInstance, norm_details: &str) -> LevelMatch {
    let d = norm_details
        .trim()
        .trim_matches(|c: char| c == ',' || c == '.')
        .trim();
    let names = |level: &String, a: &crate::config::AccessLevel| -> Vec<String> {
        std::iter::once(normalize(level))
            .chain(a.aliases.iter().map(|x| normalize(x)))
            .collect()
    };
    for (level, a) in &z.access_levels {
        if names(level, a).iter().any(|n| n == d) {
            return LevelMatch::One(level.clone());
        }
    }
    // Phrase matches, word-bounded; a match inside a longer match does not count.
    let mut spans: Vec<(usize, usize, String)> = Vec::new();
    for (level, a) in &z.access_levels {
        for n in names(level, a) {
            if n.is_empty() {
                continue;
            }
            let Ok(re) = compiled(&format!(
                r"(?:^|[^a-z0-9]){}(?:$|[^a-z0-9])",
                regex::escape(&n)
            )) else {
                continue;
            };
            for m in re.find_iter(d) {
                spans.push((m.start(), m.end(), level.clone()));
            }
        }
    }
    let outer: BTreeSet<String> = spans
        .iter()
        .filter(|(s, e, l)| {
            !spans
                .iter()
                .any(|(s2, e2, l2)| l2 != l && s2 <= s && e <= e2 && (e2 - s2) > (e - s))
        })
        .map(|(_, _, l)| l.clone())
        .collect();
    match outer.len() {
        0 => LevelMatch::None,
        1 => LevelMatch::One(outer.into_iter().next().unwrap_or_default()),
        _ => LevelMatch::Ambiguous(outer.into_iter().collect()),
    }
}

fn check_conflicts(kind: RequestKind, items: &[BotItem], errors: &mut Vec<RequestError>) {
    let mut levels: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut add: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut remove: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut grants = false;
    let mut removes = false;
    for it in items {
        match &it.action {
            ItemAction::Account {
                instance,
                level,
                add_tags,
                remove_tags,
            } => {
                if let Some(l) = level {
                    levels.entry(instance).or_default().insert(l);
                    grants = true;
                }
                add.extend(add_tags.iter().map(|t| (instance.as_str(), t.as_str())));
                remove.extend(remove_tags.iter().map(|t| (instance.as_str(), t.as_str())));
            }
            ItemAction::GroupAdd { .. } => grants = true,
            ItemAction::AccountRemove { .. } | ItemAction::GroupRemove { .. } => removes = true,
        }
    }
    for (inst, ls) in levels {
        if ls.len() > 1 {
            errors.push(RequestError::Conflict(
                inst.to_string(),
                format!(
                    "several access levels requested ({})",
                    ls.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    for (inst, tag) in add.intersection(&remove) {
        errors.push(RequestError::Conflict(
            inst.to_string(),
            format!("tag {tag} is both added and removed"),
        ));
    }
    if grants && removes && !kind.revokes() {
        errors.push(RequestError::Conflict(
            "this issue".into(),
            "it both grants and removes access".into(),
        ));
    }
}

/// `Expires: 2026-12-31` or `Expires: 90d` (from the issue's creation date).
fn parse_expiry(text: &str, created: NaiveDate) -> Result<Option<Expiry>, RequestError> {
    let mut found: Option<(usize, Option<Expiry>)> = None;
    for line in visible::read(text).lines {
        let Some((k, _)) = subjects::key_value(&line.text) else {
            continue;
        };
        let k = k.to_ascii_lowercase();
        if k != "expires" && k != "expiry" && k != "access expires" {
            continue;
        }
        let this = expiry_line(&line.text, created)?;
        match &found {
            Some((first, e)) if *e != this => {
                return Err(RequestError::Expiry(format!(
                    "line {}: a second expiry that differs from the one at line {first}; keep one",
                    line.line
                )));
            }
            Some(_) => {}
            None => found = Some((line.line, this)),
        }
    }
    Ok(found.and_then(|(_, e)| e))
}

fn expiry_line(text: &str, created: NaiveDate) -> Result<Option<Expiry>, RequestError> {
    let Some((_, v)) = subjects::key_value(text) else {
        return Ok(None);
    };
    let v = v.trim();
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        if d <= created {
            return Err(RequestError::Expiry(format!(
                "the expiry date {d} is not after the issue's creation"
            )));
        }
        return Ok(Some(Expiry(d)));
    }
    match crate::config::parse_duration(v) {
        Ok(dur) if dur.as_secs() >= 86_400 => Ok(Some(Expiry(
            created + chrono::Days::new(dur.as_secs() / 86_400),
        ))),
        _ => Err(RequestError::Expiry(format!(
            "`Expires:` must be a date (YYYY-MM-DD) or a number of days or weeks (90d, 12w), not {}",
            crate::render::code_span(v)
        ))),
    }
}

impl Request {
    /// Digest of what an approver approves: who asks, the kind (and every rule
    /// that matched), the people, each bot-owned item's text, meaning and tick
    /// state (a ticked item is one the bot leaves alone), the expiry, and the
    /// configuration the items rely on. Not other systems' lines. 128 bits, so
    /// that nobody can craft two requests with the same digest.
    pub fn digest(&self) -> String {
        #[derive(Serialize)]
        struct Canon<'a> {
            requester: u64,
            kind: RequestKind,
            matched_kinds: &'a [RequestKind],
            subjects: &'a [Subject],
            items: Vec<(&'a str, &'a ItemAction, CheckState)>,
            expires: Option<Expiry>,
            definitions: &'a BTreeMap<String, serde_json::Value>,
        }
        let canon = Canon {
            requester: self.requester.id,
            kind: self.kind,
            matched_kinds: &self.matched_kinds,
            subjects: &self.subjects,
            items: self
                .items
                .iter()
                .map(|i| (i.text.as_str(), &i.action, i.state))
                .collect(),
            expires: self.expires,
            definitions: &self.definitions,
        };
        let json = serde_json::to_vec(&canon).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..16])
    }

    /// The digest this request will have once the bot ticks these items
    /// (by ordinal): what a completed plan leaves on the issue.
    pub fn digest_after_ticks(&self, ordinals: &BTreeSet<usize>) -> String {
        let mut after = self.clone();
        for it in &mut after.items {
            if ordinals.contains(&it.ordinal) && it.state == CheckState::Open {
                it.state = CheckState::Done;
            }
        }
        after.digest()
    }

    pub fn instances(&self) -> BTreeSet<&str> {
        self.items.iter().map(|i| i.action.instance()).collect()
    }

    /// Instances in which this request grants (not revokes) something.
    pub fn granting_instances(&self) -> BTreeSet<&str> {
        self.items
            .iter()
            .filter_map(|i| match &i.action {
                ItemAction::Account { instance, .. } | ItemAction::GroupAdd { instance, .. } => {
                    Some(instance.as_str())
                }
                _ => None,
            })
            .collect()
    }
}
