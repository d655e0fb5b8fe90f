//! The port of an account system: the place a Zendesk instance's agents live
//! (today Zendesk itself). The executor, the observer and the seat review
//! see only this trait and its types; `zendesk.rs` implements it on its
//! client and converts its own wire types at the boundary, so that its
//! typed errors and calls stay its own. [`Accounts`] is the one place that
//! builds a client per configured instance.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::{Config, ZendeskInstance};
use crate::plan::AccountChange;
use crate::request::Email;
use crate::secret::Secrets;

/// An account system's failure, as the bot needs it: what to say (the
/// adapter's own message, unchanged), and whether trying again later may help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AccountError {
    message: String,
    transient: bool,
}

impl AccountError {
    pub fn new(message: impl Into<String>, transient: bool) -> AccountError {
        AccountError {
            message: message.into(),
            transient,
        }
    }

    /// Worth trying again on a later cycle (as opposed to a configuration or request problem).
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

/// A user record (only the fields the bot reads).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: Option<String>,
    /// `end-user`, `agent` or `admin`.
    pub role: String,
    /// 1: a light agent.
    pub role_type: Option<i64>,
    pub custom_role_id: Option<u64>,
    pub suspended: bool,
    pub tags: Vec<String>,
    pub user_fields: BTreeMap<String, Value>,
    pub last_login_at: Option<DateTime<Utc>>,
}

impl User {
    /// The keys of the user fields that hold a value.
    pub fn filled_fields(&self) -> Vec<String> {
        filled(&self.user_fields)
    }

    /// A light agent: an agent whose role type is 1.
    pub fn is_light_agent(&self) -> bool {
        self.role == "agent" && self.role_type == Some(1)
    }

    /// Whether a self-service grant may change the account as it is: an
    /// end-user or a light agent, not suspended (never an admin or a full agent).
    pub fn open_to_self_service(&self) -> bool {
        !self.suspended && (self.role == "end-user" || self.is_light_agent())
    }

    /// Whether the account can be assigned tickets: an agent or admin that
    /// is neither light nor suspended.
    pub fn takes_tickets(&self) -> bool {
        !(self.role == "end-user" || self.role_type == Some(1) || self.suspended)
    }
}

/// The keys of the user fields that hold a value (neither null nor empty).
pub fn filled(fields: &BTreeMap<String, Value>) -> Vec<String> {
    fields
        .iter()
        .filter(|(_, v)| !v.is_null() && *v != &Value::String(String::new()))
        .map(|(k, _)| k.clone())
        .collect()
}

/// A ticket assigned to someone (offboarding moves them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ticket {
    pub id: u64,
    pub status: String,
    pub assignee_id: Option<u64>,
    pub group_id: Option<u64>,
    /// When the ticket last changed (idle-seat review: recent work keeps a seat).
    pub updated_at: Option<DateTime<Utc>>,
}

/// One user's membership of one group of the account system.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub id: u64,
    pub user_id: u64,
    pub group_id: u64,
}

/// Outcome of a bulk update, per ticket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BulkOutcome {
    pub updated: Vec<u64>,
    pub failed: Vec<(u64, String)>,
    pub bulk_calls: u32,
    pub job_polls: u32,
}

/// What the user update may change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserPatch {
    pub role: Option<String>,
    /// `Some(None)` clears it.
    pub custom_role_id: Option<Option<u64>>,
    pub suspended: Option<bool>,
    pub clear_fields: Vec<String>,
}

impl UserPatch {
    /// The account as it would be after this change (a rehearsal's answer).
    pub fn applied_to(&self, user: &User) -> User {
        let mut after = user.clone();
        if let Some(role) = &self.role {
            after.role = role.clone();
        }
        if let Some(custom) = self.custom_role_id {
            after.custom_role_id = custom;
        }
        if let Some(suspended) = self.suspended {
            after.suspended = suspended;
        }
        for f in &self.clear_fields {
            after.user_fields.remove(f);
        }
        after
    }
}

/// Ids resolved per instance at start-up: never shared between instances.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub light_agent_role: Option<u64>,
    /// Custom role name (lower-case) -> id.
    pub roles: BTreeMap<String, u64>,
    pub role_names: BTreeMap<u64, String>,
    /// Group name (lower-case) -> id.
    pub groups: BTreeMap<String, u64>,
    pub group_names: BTreeMap<u64, String>,
    /// The bot's own account here: never changed.
    pub me: Option<User>,
}

impl Resolved {
    /// Everything the configuration names that this instance lacks.
    pub fn missing(&self, cfg: &ZendeskInstance) -> Vec<String> {
        let mut out = Vec::new();
        for (level, l) in &cfg.access_levels {
            if l.light_agent && self.light_agent_role.is_none() {
                out.push(format!("access level {level:?} needs a light-agent role (role_type 1), and there is none"));
            }
            if let Some(cr) = &l.custom_role
                && !self.roles.contains_key(&cr.to_lowercase())
            {
                out.push(format!(
                    "access level {level:?}: custom role {cr:?} does not exist"
                ));
            }
            for g in &l.groups {
                if !self.groups.contains_key(&g.to_lowercase()) {
                    out.push(format!(
                        "access level {level:?}: group {g:?} does not exist"
                    ));
                }
            }
        }
        out
    }
}

/// The operations the workflows use, per instance. Mocked in unit tests of
/// logic; proved against the sandbox over HTTP.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait AccountSystem: Send + Sync {
    /// The roles, groups and own account the plans refer to, by name.
    async fn resolve(&self) -> Result<Resolved, AccountError>;
    async fn me(&self) -> Result<User, AccountError>;
    /// Exact (case-insensitive) email match.
    async fn find_user(&self, email: &Email) -> Result<Option<User>, AccountError>;
    async fn show_user(&self, id: u64) -> Result<User, AccountError>;
    /// Create or update by email; returns the user and whether it was created.
    async fn create_or_update(
        &self,
        name: &str,
        email: &Email,
        role: &str,
        custom_role_id: Option<u64>,
    ) -> Result<(User, bool), AccountError>;
    async fn update_user(&self, id: u64, patch: &UserPatch) -> Result<User, AccountError>;
    async fn add_tags(&self, id: u64, tags: &[String]) -> Result<Vec<String>, AccountError>;
    async fn remove_tags(&self, id: u64, tags: &[String]) -> Result<Vec<String>, AccountError>;
    async fn memberships(&self, user_id: u64) -> Result<Vec<Membership>, AccountError>;
    async fn add_membership(&self, user_id: u64, group_id: u64) -> Result<(), AccountError>;
    /// A membership already gone counts as done.
    async fn remove_membership(&self, membership_id: u64) -> Result<(), AccountError>;
    /// Tickets assigned to the user with status below closed.
    async fn open_tickets(&self, user_id: u64) -> Result<Vec<Ticket>, AccountError>;
    /// How many tickets below closed are assigned to the user, without
    /// listing them all (may lag by minutes, never below what one page showed).
    async fn open_ticket_count(&self, user_id: u64) -> Result<u64, AccountError>;
    /// Who is assigned a ticket below closed that changed after `since`.
    async fn recently_worked_assignees(
        &self,
        since: DateTime<Utc>,
    ) -> Result<BTreeSet<u64>, AccountError>;
    /// Reassign the tickets, with the group set up front for those whose
    /// group the assignee is not in; failed items retried once.
    async fn reassign(
        &self,
        tickets: &[Ticket],
        assignee: u64,
        assignee_groups: &[u64],
    ) -> Result<BulkOutcome, AccountError>;
    /// The paid seats (agents and admins, not light agents) but `except`,
    /// counted, and those whose last login is before `cutoff` or never.
    async fn idle_paid_agents(
        &self,
        light_agent_role: Option<u64>,
        cutoff: DateTime<Utc>,
        except: u64,
    ) -> Result<(usize, Vec<User>), AccountError>;
}

/// One connected instance: its client and the ids resolved at start-up.
pub struct Instance {
    pub api: Arc<dyn AccountSystem>,
    pub resolved: Resolved,
}

/// Why one change to an account was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    System(#[from] AccountError),
    /// The change cannot be made as planned: a role or group the instance
    /// lacks, no account, a manager who cannot take tickets, a state that
    /// did not take.
    #[error("{0}")]
    Refused(String),
}

impl Instance {
    /// The account's id: `known` from an earlier step, or looked up.
    async fn account_id(
        &self,
        name: &str,
        subject: &Email,
        known: &mut Option<u64>,
    ) -> Result<u64, ChangeError> {
        if let Some(id) = *known {
            return Ok(id);
        }
        let u =
            self.api.find_user(subject).await?.ok_or_else(|| {
                ChangeError::Refused(format!("{subject} has no account in {name}"))
            })?;
        *known = Some(u.id);
        Ok(u.id)
    }

    /// Apply one planned change to `subject`'s account in this instance
    /// (`name`), and say what the account is now. `known`: the account's id,
    /// when an earlier step found it (set when this one does);
    /// `manager_email`: where a reassignment sends the tickets. Only the
    /// executor calls it, after its checks and audit row.
    pub async fn apply_change(
        &self,
        name: &str,
        subject: &Email,
        change: &AccountChange,
        known: &mut Option<u64>,
        manager_email: Option<Email>,
    ) -> Result<String, ChangeError> {
        let api = &self.api;
        let role_id = |custom: &Option<String>, light: bool| -> Result<Option<u64>, ChangeError> {
            if light {
                return self.resolved.light_agent_role.map(Some).ok_or_else(|| {
                    ChangeError::Refused(format!("{name} has no light-agent role"))
                });
            }
            match custom {
                None => Ok(None),
                Some(role) => self
                    .resolved
                    .roles
                    .get(&role.to_lowercase())
                    .copied()
                    .map(Some)
                    .ok_or_else(|| {
                        ChangeError::Refused(format!(
                            "custom role {role:?} does not exist in {name}"
                        ))
                    }),
            }
        };
        match change {
            AccountChange::CreateAgent {
                name,
                role,
                custom_role,
                light_agent,
                ..
            } => {
                let cr = role_id(custom_role, *light_agent)?;
                let (u, created) = api.create_or_update(name, subject, role, cr).await?;
                *known = Some(u.id);
                Ok(format!(
                    "{} id {} role {} custom_role_id {:?}",
                    if created { "created" } else { "updated" },
                    u.id,
                    u.role,
                    u.custom_role_id
                ))
            }
            AccountChange::SetRole {
                role,
                custom_role,
                light_agent,
                ..
            } => {
                let id = self.account_id(name, subject, known).await?;
                let cr = role_id(custom_role, *light_agent)?;
                let u = api
                    .update_user(
                        id,
                        &UserPatch {
                            role: Some(role.clone()),
                            custom_role_id: Some(cr),
                            ..Default::default()
                        },
                    )
                    .await?;
                Ok(format!(
                    "role {} custom_role_id {:?}",
                    u.role, u.custom_role_id
                ))
            }
            AccountChange::Unsuspend | AccountChange::Suspend => {
                let suspended = matches!(change, AccountChange::Suspend);
                let id = self.account_id(name, subject, known).await?;
                api.update_user(
                    id,
                    &UserPatch {
                        suspended: Some(suspended),
                        ..Default::default()
                    },
                )
                .await?;
                Ok(if suspended { "suspended" } else { "active" }.into())
            }
            AccountChange::AddToGroup { group } => {
                let id = self.account_id(name, subject, known).await?;
                let gid = *self
                    .resolved
                    .groups
                    .get(&group.to_lowercase())
                    .ok_or_else(|| {
                        ChangeError::Refused(format!("group {group:?} does not exist in {}", name))
                    })?;
                // Creating a membership that exists has an unconfirmed error shape: look first.
                if !api.memberships(id).await?.iter().any(|m| m.group_id == gid) {
                    api.add_membership(id, gid).await?;
                }
                Ok(format!("member of {group}"))
            }
            AccountChange::RemoveFromGroup { group } => {
                let id = self.account_id(name, subject, known).await?;
                let gid = self.resolved.groups.get(&group.to_lowercase()).copied();
                for m in api.memberships(id).await? {
                    if Some(m.group_id) == gid {
                        api.remove_membership(m.id).await?;
                    }
                }
                Ok(format!("not in {group}"))
            }
            AccountChange::AddTag { tag } => {
                let id = self.account_id(name, subject, known).await?;
                let tags = api.add_tags(id, std::slice::from_ref(tag)).await?;
                Ok(format!("tags {tags:?}"))
            }
            AccountChange::RemoveTag { tag } => {
                let id = self.account_id(name, subject, known).await?;
                let tags = api.remove_tags(id, std::slice::from_ref(tag)).await?;
                Ok(format!("tags {tags:?}"))
            }
            AccountChange::ReassignTickets { manager, .. } => {
                let id = self.account_id(name, subject, known).await?;
                let email = manager_email.ok_or_else(|| {
                    ChangeError::Refused(format!("no email known for the manager @{manager}"))
                })?;
                let mgr = api.find_user(&email).await?.ok_or_else(|| {
                    ChangeError::Refused(format!("the manager {email} has no account in {}", name))
                })?;
                if !mgr.takes_tickets() {
                    return Err(ChangeError::Refused(format!(
                        "the manager {email} cannot take tickets (role {}, suspended {})",
                        mgr.role, mgr.suspended
                    )));
                }
                let mgr_groups: Vec<u64> = api
                    .memberships(mgr.id)
                    .await?
                    .iter()
                    .map(|m| m.group_id)
                    .collect();
                let mut moved = 0usize;
                // Re-list until nothing is left (triggers can reassign again).
                for _ in 0..3 {
                    let open = api.open_tickets(id).await?;
                    if open.is_empty() {
                        return Ok(format!("{moved} open tickets reassigned to {email}"));
                    }
                    let out = api.reassign(&open, mgr.id, &mgr_groups).await?;
                    moved += out.updated.len();
                    if !out.failed.is_empty() {
                        return Err(ChangeError::Refused(format!(
                            "{} of {} tickets could not be reassigned, e.g. #{}: {}",
                            out.failed.len(),
                            open.len(),
                            out.failed[0].0,
                            out.failed[0].1
                        )));
                    }
                }
                let left = api.open_tickets(id).await?.len();
                if left == 0 {
                    Ok(format!("{moved} open tickets reassigned to {email}"))
                } else {
                    Err(ChangeError::Refused(format!(
                        "{left} tickets are still assigned after three passes"
                    )))
                }
            }
            AccountChange::RemoveAllTags => {
                let id = self.account_id(name, subject, known).await?;
                let u = api.show_user(id).await?;
                if !u.tags.is_empty() {
                    api.remove_tags(id, &u.tags).await?;
                }
                Ok("no tags".into())
            }
            AccountChange::ClearUserFields => {
                let id = self.account_id(name, subject, known).await?;
                let u = api.show_user(id).await?;
                let filled = u.filled_fields();
                if !filled.is_empty() {
                    let after = api
                        .update_user(
                            id,
                            &UserPatch {
                                clear_fields: filled,
                                ..Default::default()
                            },
                        )
                        .await?;
                    if !after.filled_fields().is_empty() {
                        return Err(ChangeError::Refused(format!(
                            "user fields still set after clearing: {:?}",
                            after.filled_fields()
                        )));
                    }
                }
                Ok("user fields empty".into())
            }
            AccountChange::RemoveAllGroups => {
                let id = self.account_id(name, subject, known).await?;
                for m in api.memberships(id).await? {
                    api.remove_membership(m.id).await?;
                }
                Ok("no groups".into())
            }
            AccountChange::DemoteToEndUser => {
                let id = self.account_id(name, subject, known).await?;
                let u = api
                    .update_user(
                        id,
                        &UserPatch {
                            role: Some("end-user".into()),
                            ..Default::default()
                        },
                    )
                    .await?;
                if u.custom_role_id.is_some() || u.role != "end-user" {
                    return Err(ChangeError::Refused(format!(
                        "still role {} with custom role {:?} after demotion",
                        u.role, u.custom_role_id
                    )));
                }
                Ok("end-user".into())
            }
        }
    }
}

/// Why the account systems could not be connected at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    System(#[from] AccountError),
    /// Something the configuration names does not exist in the instance.
    #[error("Zendesk {instance}: {problems}")]
    Missing { instance: String, problems: String },
}

/// Each instance's client, before anything is asked of it.
pub type Clients = Vec<(String, Arc<dyn AccountSystem>)>;

/// The account system of each configured instance.
#[derive(Default)]
pub struct Accounts {
    by_instance: BTreeMap<String, Instance>,
}

impl Accounts {
    /// One client per configured instance, without a call yet (a missing
    /// secret fails here, before anything is asked over the network).
    pub fn clients(
        cfg: &Config,
        secrets: &Secrets,
        http: reqwest::Client,
        job_poll: std::time::Duration,
    ) -> Result<Clients, AccountError> {
        let mut out: Clients = Vec::new();
        for (name, inst) in &cfg.zendesk {
            let mut api = crate::zendesk::ZendeskClient::new(name, inst, secrets, http.clone())?;
            api.job_poll_interval = job_poll;
            out.push((name.clone(), Arc::new(api)));
        }
        Ok(out)
    }

    /// Resolve every instance's roles and groups at once (start-up costs the
    /// slowest, not their sum), and check that what the configuration names exists.
    pub async fn connect(cfg: &Config, clients: Clients) -> Result<Accounts, ConnectError> {
        let instances =
            futures_util::future::try_join_all(clients.into_iter().map(|(name, api)| async move {
                let resolved = api.resolve().await?;
                if let Some(inst) = cfg.zendesk.get(&name) {
                    let missing = resolved.missing(inst);
                    if !missing.is_empty() {
                        return Err(ConnectError::Missing {
                            instance: name,
                            problems: missing.join("; "),
                        });
                    }
                }
                Ok((name, Instance { api, resolved }))
            }))
            .await?;
        Ok(Accounts {
            by_instance: instances.into_iter().collect(),
        })
    }

    /// From instances already connected (tests with mocks).
    pub fn from_instances(instances: impl IntoIterator<Item = (String, Instance)>) -> Accounts {
        Accounts {
            by_instance: instances.into_iter().collect(),
        }
    }

    /// The account system of `instance`.
    pub fn of(&self, instance: &str) -> Option<&Instance> {
        self.by_instance.get(instance)
    }

    pub fn contains(&self, instance: &str) -> bool {
        self.by_instance.contains_key(instance)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Instance)> {
        self.by_instance.iter()
    }
}

/// `check`: each instance's account system, called once: one line per finding.
pub async fn check(cfg: &Config, secrets: &Secrets, http: &reqwest::Client) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for (name, inst) in &cfg.zendesk {
        out.extend(crate::zendesk::check(name, inst, secrets, http.clone()).await);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_keeps_its_message_and_whether_to_retry() {
        let e = AccountError::new("Zendesk global: server error 503 after 3 attempts", true);
        assert_eq!(
            e.to_string(),
            "Zendesk global: server error 503 after 3 attempts"
        );
        assert!(e.is_transient());
        assert!(!AccountError::new("x", false).is_transient());
    }

    /// Who a self-service grant may change, and who can take tickets.
    #[test]
    fn an_account_s_standing_by_role_type_and_suspension() {
        let user = |role: &str, role_type: Option<i64>, suspended: bool| User {
            role: role.into(),
            role_type,
            suspended,
            ..User::default()
        };
        // (account, open to self-service, takes tickets)
        let cases = [
            (user("end-user", None, false), true, false),
            (user("agent", Some(1), false), true, false),
            (user("agent", None, false), false, true),
            (user("agent", Some(0), false), false, true),
            (user("admin", None, false), false, true),
            (user("end-user", None, true), false, false),
            (user("agent", Some(1), true), false, false),
            (user("agent", None, true), false, false),
        ];
        for (u, open, takes) in cases {
            assert_eq!(u.open_to_self_service(), open, "{u:?}");
            assert_eq!(u.takes_tickets(), takes, "{u:?}");
            assert_eq!(
                u.is_light_agent(),
                u.role == "agent" && u.role_type == Some(1)
            );
        }
    }

    #[test]
    fn filled_fields_skip_empty_values() {
        let u = User {
            user_fields: [
                ("a".to_string(), Value::Null),
                ("b".to_string(), Value::String(String::new())),
                ("c".to_string(), Value::String("x".into())),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        assert_eq!(u.filled_fields(), vec!["c".to_string()]);
    }
}
