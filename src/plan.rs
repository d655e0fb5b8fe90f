//! Request + observed state of Zendesk and the group directories -> an ordered list of
//! idempotent steps, each tied to the checklist item it completes. Pure.
//!
//! Two entry points: [`preview`] for anything (the plan comment, `plan`,
//! `--dry-run`), and [`build`] which needs an [`Approved`] request and is the
//! only way to get an `Approved<Plan>`, the type the executor takes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::Digest;

use crate::approval::Approved;
use crate::config::Config;
use crate::request::{Email, ItemAction, Request, RequestKind, Subject};

/// What an instance's account system knows about one person. Serialized
/// as it is into the audit trail's "before": its field names are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Account {
    pub id: u64,
    pub name: String,
    pub role: String,
    pub role_type: Option<i64>,
    pub custom_role_id: Option<u64>,
    /// Name of the custom role, when the connector resolved it.
    pub custom_role: Option<String>,
    pub suspended: bool,
    pub tags: Vec<String>,
    /// User fields that hold a value (keys).
    pub filled_user_fields: Vec<String>,
    /// Group names.
    pub groups: Vec<String>,
    /// Tickets below `closed` assigned to them, when counted.
    pub open_tickets: Option<u64>,
    pub last_login_at: Option<String>,
}

impl Account {
    pub fn is_light_agent(&self) -> bool {
        self.role == "agent" && self.role_type == Some(1)
    }
    pub fn is_agent(&self) -> bool {
        self.role == "agent" || self.role == "admin"
    }
    /// Can receive tickets: a full agent or admin, not suspended.
    pub fn can_take_tickets(&self) -> bool {
        self.is_agent() && !self.is_light_agent() && !self.suspended
    }
}

/// Observed state. A missing key means "not looked at" (offline plans).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observed {
    /// (instance, email) -> account, or `None` when the search found nobody.
    #[serde(rename = "zendesk")]
    pub accounts: BTreeMap<(String, Email), Option<Account>>,
    /// (app group, email) -> is a direct member, in the group's directory.
    pub groups: BTreeMap<(String, Email), bool>,
    /// Managers' emails by GitLab username (for ticket reassignment).
    pub manager_emails: BTreeMap<String, Email>,
    /// Accounts never changed, with why (the bot's own accounts).
    pub protected: BTreeMap<Email, String>,
}

impl Observed {
    fn account(&self, instance: &str, email: &Email) -> Lookup<'_> {
        match self.accounts.get(&(instance.to_string(), email.clone())) {
            None => Lookup::Unknown,
            Some(None) => Lookup::Absent,
            Some(Some(a)) => Lookup::Found(a),
        }
    }
}

enum Lookup<'a> {
    Unknown,
    Absent,
    Found(&'a Account),
}

/// One planned change, by the target system that applies it: an instance's
/// account system or its group directory. Each prints itself (the plan
/// comment is made of them) and knows its own undo.
///
/// Untagged: each target's change carries its own `type`, so the serialized
/// form (in step keys, audit rows and grant records) is the target change's
/// own, as it was before the split.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Action {
    Account(AccountChange),
    Membership(MembershipChange),
}

/// A change to one person's account in an instance's account system.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AccountChange {
    CreateAgent {
        name: String,
        role: String,
        custom_role: Option<String>,
        light_agent: bool,
        level: String,
    },
    SetRole {
        from: String,
        role: String,
        custom_role: Option<String>,
        light_agent: bool,
        level: String,
    },
    Unsuspend,
    AddToGroup {
        group: String,
    },
    RemoveFromGroup {
        group: String,
    },
    AddTag {
        tag: String,
    },
    RemoveTag {
        tag: String,
    },
    ReassignTickets {
        manager: String,
        manager_email: Option<Email>,
    },
    RemoveAllTags,
    ClearUserFields,
    RemoveAllGroups,
    DemoteToEndUser,
    Suspend,
}

/// A change to one person's membership of the instance's app group, in its
/// group directory. The serialized names are the first ones: step keys,
/// audit rows and grant records written before the rename carry them.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "type")]
pub enum MembershipChange {
    #[serde(rename = "add_google_member")]
    Add { group: String },
    #[serde(rename = "remove_google_member")]
    Remove { group: String },
}

impl From<AccountChange> for Action {
    fn from(c: AccountChange) -> Action {
        Action::Account(c)
    }
}

impl From<MembershipChange> for Action {
    fn from(c: MembershipChange) -> Action {
        Action::Membership(c)
    }
}

impl Action {
    /// The step that undoes this one, given the account as it was before
    /// (`None`: there was no account). Used to end time-bound access.
    pub fn inverse(&self, before: Option<&Account>) -> Option<Action> {
        match self {
            Action::Account(c) => c.inverse(before).map(Action::Account),
            Action::Membership(c) => c.inverse().map(Action::Membership),
        }
    }

    /// What the step gives, as a grant record names it (`level:NAME`,
    /// `group:NAME`, `tag:NAME`, `okta:GROUP`, `active`); `None` for a step
    /// that takes something away.
    fn gives(&self) -> Option<String> {
        match self {
            Action::Account(c) => c.gives(),
            Action::Membership(MembershipChange::Add { group }) => Some(format!("okta:{group}")),
            Action::Membership(MembershipChange::Remove { .. }) => None,
        }
    }

    /// The part of a step's key after `instance/email/`: the change's type,
    /// and the group or tag it is about.
    fn key(&self) -> String {
        let kind = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(String::from))
            .unwrap_or_default();
        let about = match self {
            Action::Account(
                AccountChange::AddToGroup { group } | AccountChange::RemoveFromGroup { group },
            )
            | Action::Membership(
                MembershipChange::Add { group } | MembershipChange::Remove { group },
            ) => format!(":{group}"),
            Action::Account(AccountChange::AddTag { tag } | AccountChange::RemoveTag { tag }) => {
                format!(":{tag}")
            }
            _ => String::new(),
        };
        kind + &about
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Account(c) => c.fmt(f),
            Action::Membership(c) => c.fmt(f),
        }
    }
}

impl AccountChange {
    /// The change that undoes this one, given the account as it was before
    /// (`None`: there was no account).
    pub fn inverse(&self, before: Option<&Account>) -> Option<AccountChange> {
        Some(match self {
            // No account before: demoting frees the seat (accounts are never deleted).
            AccountChange::CreateAgent { .. } => AccountChange::DemoteToEndUser,
            AccountChange::SetRole { level, .. } => match before {
                Some(b) => AccountChange::SetRole {
                    from: level.clone(),
                    role: b.role.clone(),
                    custom_role: if b.is_light_agent() {
                        None
                    } else {
                        b.custom_role.clone()
                    },
                    light_agent: b.is_light_agent(),
                    level: if b.is_light_agent() {
                        "light agent".into()
                    } else {
                        b.custom_role.clone().unwrap_or_else(|| b.role.clone())
                    },
                },
                None => AccountChange::DemoteToEndUser,
            },
            AccountChange::Unsuspend => AccountChange::Suspend,
            AccountChange::AddToGroup { group } => AccountChange::RemoveFromGroup {
                group: group.clone(),
            },
            AccountChange::RemoveFromGroup { group } => AccountChange::AddToGroup {
                group: group.clone(),
            },
            AccountChange::AddTag { tag } => AccountChange::RemoveTag { tag: tag.clone() },
            AccountChange::RemoveTag { tag } => AccountChange::AddTag { tag: tag.clone() },
            // Deprovisioning is not time-bound.
            AccountChange::ReassignTickets { .. }
            | AccountChange::RemoveAllTags
            | AccountChange::ClearUserFields
            | AccountChange::RemoveAllGroups
            | AccountChange::DemoteToEndUser
            | AccountChange::Suspend => return None,
        })
    }

    fn gives(&self) -> Option<String> {
        Some(match self {
            AccountChange::CreateAgent { level, .. } | AccountChange::SetRole { level, .. } => {
                format!("level:{level}")
            }
            AccountChange::AddToGroup { group } => format!("group:{group}"),
            AccountChange::AddTag { tag } => format!("tag:{tag}"),
            AccountChange::Unsuspend => "active".into(),
            _ => return None,
        })
    }

    /// Whether the change gives the account a role or makes it active again.
    pub fn grants_role(&self) -> bool {
        matches!(
            self,
            AccountChange::CreateAgent { .. }
                | AccountChange::SetRole { .. }
                | AccountChange::Unsuspend
        )
    }
}

impl std::fmt::Display for AccountChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccountChange::CreateAgent { level, .. } => write!(f, "create the account as {level}"),
            AccountChange::SetRole { from, level, .. } => {
                write!(f, "change the role from {from} to {level}")
            }
            AccountChange::Unsuspend => f.write_str("unsuspend the account"),
            AccountChange::AddToGroup { group } => write!(f, "add to group {group}"),
            AccountChange::RemoveFromGroup { group } => write!(f, "remove from group {group}"),
            AccountChange::AddTag { tag } => write!(f, "add tag `{tag}`"),
            AccountChange::RemoveTag { tag } => write!(f, "remove tag `{tag}`"),
            AccountChange::ReassignTickets {
                manager,
                manager_email,
            } => {
                // The address is who actually gets them (with a company
                // directory, the leaver's manager there).
                let who = if manager.contains('@') {
                    crate::render::code_span(manager)
                } else {
                    format!("`@{manager}`")
                };
                match manager_email {
                    Some(e) if e.as_str() != manager => write!(
                        f,
                        "reassign open tickets (status below closed) to the manager {who} ({})",
                        crate::render::code_span(e.as_str())
                    ),
                    _ => write!(
                        f,
                        "reassign open tickets (status below closed) to the manager {who}"
                    ),
                }
            }
            AccountChange::RemoveAllTags => f.write_str("remove all tags"),
            AccountChange::ClearUserFields => f.write_str("clear the user fields"),
            AccountChange::RemoveAllGroups => f.write_str("remove all group memberships"),
            AccountChange::DemoteToEndUser => f.write_str("demote to end-user"),
            AccountChange::Suspend => f.write_str("suspend"),
        }
    }
}

impl MembershipChange {
    /// The change that undoes this one: a membership a grant added ends with
    /// it; one taken away is not given back.
    pub fn inverse(&self) -> Option<MembershipChange> {
        match self {
            MembershipChange::Add { group } => Some(MembershipChange::Remove {
                group: group.clone(),
            }),
            MembershipChange::Remove { .. } => None,
        }
    }

    pub fn group(&self) -> &str {
        match self {
            MembershipChange::Add { group } | MembershipChange::Remove { group } => group,
        }
    }
}

impl std::fmt::Display for MembershipChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembershipChange::Add { group } => write!(f, "add to `{group}` (Okta app)"),
            MembershipChange::Remove { group } => write!(f, "remove from `{group}` (Okta app)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    ToDo,
    /// Observed state already matches; nothing to do.
    AlreadyDone,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Stable identity: `instance/email/action`, for the audit trail and resumption.
    pub key: String,
    pub subject: Email,
    /// Zendesk instance (for group steps: the instance whose app group it is).
    pub instance: String,
    pub action: Action,
    /// Index of the checklist item this step helps complete.
    pub item: usize,
    pub state: StepState,
}

/// Something the bot will not do, with the reason, for one subject and item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blocked {
    pub subject: Email,
    pub instance: String,
    pub item: usize,
    pub reason: BlockReason,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockReason {
    /// Team tags need an existing light-agent or agent account.
    NeedsAccountFirst,
    /// A role change needs an existing agent.
    NoAccountToChange,
    /// Offboarding: the manager cannot take tickets (stop before demoting).
    ManagerCannotTakeTickets { manager: String, why: String },
    /// Offboarding with open tickets but no manager named.
    NoManager,
    /// The bot's own account, a Zendesk admin or a `bot.protected` account.
    Protected { why: String },
    /// Self-service never reactivates a suspended account.
    SuspendedSelfService,
}

impl BlockReason {
    pub fn explain(&self, instance: &str) -> String {
        match self {
            BlockReason::NeedsAccountFirst => format!(
                "has no light-agent or agent account in {instance} yet; request a light agent first, then ask for the tag again. Nothing was changed"
            ),
            BlockReason::NoAccountToChange => {
                format!(
                    "has no agent account in {instance} to change; file an access request instead"
                )
            }
            BlockReason::ManagerCannotTakeTickets { manager, why } => format!(
                "has open tickets in {instance}, but the manager `@{manager}` cannot take them ({why}); stopped before demoting so no ticket is orphaned"
            ),
            BlockReason::NoManager => format!(
                "has open tickets in {instance}, but the issue names no manager to hand them to; stopped before demoting"
            ),
            BlockReason::Protected { why } => format!(
                "is {why} in {instance}; the bot never changes such an account. Nothing was changed"
            ),
            BlockReason::SuspendedSelfService => format!(
                "has a suspended account in {instance}; a self-service request does not reactivate it. Ask Support Operations. Nothing was changed"
            ),
        }
    }
}

/// An informational outcome per subject ("already a full agent").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Note {
    pub subject: Email,
    pub instance: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub iid: u64,
    pub kind: RequestKind,
    pub digest: String,
    pub steps: Vec<Step>,
    pub blocked: Vec<Blocked>,
    pub notes: Vec<Note>,
    /// Items the bot owns and that are already ticked or `[~]`: left alone.
    pub skipped_items: Vec<usize>,
    /// Planned as self-service (the requester for themself): no reactivation,
    /// no change to an agent.
    pub self_service: bool,
    /// Items that need nothing at all (an offboarding of someone with no
    /// account there): done as they are, and ticked.
    pub satisfied_items: BTreeSet<usize>,
}

/// The change a step makes, whatever the account's state: creating an
/// account and raising an existing one to a level are the same change.
pub fn change_key(s: &Step) -> String {
    match &s.action {
        Action::Account(
            AccountChange::CreateAgent { level, .. } | AccountChange::SetRole { level, .. },
        ) => format!("{}/{}/level:{level}", s.instance, s.subject),
        _ => s.key.clone(),
    }
}

impl Plan {
    /// What the plan changes, whatever is already so: one key per change
    /// (`instance/email/level:NAME`, `instance/email/add_to_group:NAME`, …).
    /// Creating an account and raising an existing one to a level are the
    /// same change.
    pub fn change_keys(&self) -> BTreeSet<String> {
        self.steps.iter().map(change_key).collect()
    }

    /// A digest of `change_keys`: an approval holds for the changes its plan
    /// listed, not for whatever the accounts would need later.
    pub fn changes_digest(&self) -> String {
        let joined = self
            .change_keys()
            .into_iter()
            .collect::<Vec<_>>()
            .join("\n");
        hex::encode(&sha2::Sha256::digest(joined.as_bytes())[..8])
    }

    pub fn todo(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.state == StepState::ToDo)
    }

    /// Items complete once every step tied to them is done and none is blocked.
    pub fn items_completed_by(&self, done_steps: &BTreeSet<String>) -> BTreeSet<usize> {
        let items: BTreeSet<usize> = self
            .steps
            .iter()
            .map(|s| s.item)
            .chain(self.satisfied_items.iter().copied())
            .collect();
        let blocked: BTreeSet<usize> = self.blocked.iter().map(|b| b.item).collect();
        items
            .into_iter()
            .filter(|i| !blocked.contains(i))
            .filter(|i| {
                self.steps
                    .iter()
                    .filter(|s| s.item == *i)
                    .all(|s| s.state == StepState::AlreadyDone || done_steps.contains(&s.key))
            })
            .collect()
    }

    pub fn is_noop(&self) -> bool {
        self.todo().next().is_none()
    }
}

/// What the bot would do: for the plan comment, `plan` and `--dry-run`.
pub fn preview(request: &Request, observed: &Observed, cfg: &Config, self_service: bool) -> Plan {
    make(request, observed, cfg, self_service)
}

/// The only way to a plan the executor runs: from a verified approval, whose
/// proof (and the plan comment it is bound to) the plan keeps.
pub fn build(approved: &Approved<Request>, observed: &Observed, cfg: &Config) -> Approved<Plan> {
    let self_service = approved.requirements().self_service == crate::policy::SelfService::Verified;
    approved.map(|request| make(request, observed, cfg, self_service))
}

struct Builder<'a> {
    cfg: &'a Config,
    observed: &'a Observed,
    self_service: bool,
    satisfied: BTreeSet<usize>,
    steps: Vec<Step>,
    blocked: Vec<Blocked>,
    notes: Vec<Note>,
}

impl Builder<'_> {
    fn push(
        &mut self,
        s: &Subject,
        instance: &str,
        item: usize,
        action: impl Into<Action>,
        done: bool,
    ) {
        let action = action.into();
        let key = format!("{instance}/{}/{}", s.email, action.key());
        if self.steps.iter().any(|x| x.key == key) {
            return; // two items asking for the same thing: do it once
        }
        self.steps.push(Step {
            key,
            subject: s.email.clone(),
            instance: instance.to_string(),
            action,
            item,
            state: if done {
                StepState::AlreadyDone
            } else {
                StepState::ToDo
            },
        });
    }

    fn note(&mut self, s: &Subject, instance: &str, text: String) {
        self.notes.push(Note {
            subject: s.email.clone(),
            instance: instance.to_string(),
            text,
        });
    }

    fn block(&mut self, s: &Subject, instance: &str, item: usize, reason: BlockReason) {
        self.blocked.push(Blocked {
            subject: s.email.clone(),
            instance: instance.to_string(),
            item,
            reason,
        });
    }

    fn group_member(&self, group: &str, email: &Email) -> Option<bool> {
        self.observed
            .groups
            .get(&(group.to_string(), email.clone()))
            .copied()
    }
}

fn make(request: &Request, observed: &Observed, cfg: &Config, self_service: bool) -> Plan {
    let mut b = Builder {
        cfg,
        observed,
        self_service,
        satisfied: BTreeSet::new(),
        steps: Vec::new(),
        blocked: Vec::new(),
        notes: Vec::new(),
    };
    let open: Vec<_> = request
        .items
        .iter()
        .filter(|i| i.state == crate::request::CheckState::Open)
        .collect();
    let skipped_items = request
        .items
        .iter()
        .filter(|i| i.state != crate::request::CheckState::Open)
        .map(|i| i.index)
        .collect();

    // An item naming an instance's app group takes that group step; otherwise
    // the Zendesk item of the instance does.
    let group_item = |instance: &str, add: bool| {
        open.iter().find(|i| match &i.action {
            ItemAction::GroupAdd { instance: g, .. } => add && g == instance,
            ItemAction::GroupRemove { instance: g, .. } => !add && g == instance,
            _ => false,
        })
    };

    for s in &request.subjects {
        // Never change a protected account (the bot's own, an admin, a listed one).
        let mut protected = false;
        for inst in request.instances() {
            let why = if let Some(why) = observed.protected.get(&s.email) {
                Some(why.clone())
            } else if let Lookup::Found(a) = observed.account(inst, &s.email)
                && a.role == "admin"
            {
                Some("a Zendesk admin".to_string())
            } else {
                None
            };
            if let Some(why) = why {
                let item = open
                    .iter()
                    .find(|i| i.action.instance() == inst)
                    .map(|i| i.index)
                    .unwrap_or(0);
                b.block(s, inst, item, BlockReason::Protected { why });
                protected = true;
            }
        }
        if protected {
            continue;
        }
        for it in &open {
            match &it.action {
                ItemAction::Account {
                    instance,
                    level,
                    add_tags,
                    remove_tags,
                } => {
                    let z = &cfg.zendesk[instance];
                    let account = observed.account(instance, &s.email);
                    let mut will_have_account = matches!(account, Lookup::Found(a) if a.is_agent());
                    if let Some(level) = level {
                        will_have_account |= grant_level(
                            &mut b,
                            request.kind,
                            s,
                            instance,
                            it.index,
                            level,
                            &account,
                        );
                    }
                    if !add_tags.is_empty() || !remove_tags.is_empty() {
                        let unknown = matches!(account, Lookup::Unknown);
                        if !will_have_account && !unknown {
                            b.block(s, instance, it.index, BlockReason::NeedsAccountFirst);
                        } else {
                            let tags = match &account {
                                Lookup::Found(a) => a.tags.clone(),
                                _ => Vec::new(),
                            };
                            for t in add_tags {
                                b.push(
                                    s,
                                    instance,
                                    it.index,
                                    AccountChange::AddTag { tag: t.clone() },
                                    tags.contains(t),
                                );
                            }
                            for t in remove_tags {
                                b.push(
                                    s,
                                    instance,
                                    it.index,
                                    AccountChange::RemoveTag { tag: t.clone() },
                                    !tags.contains(t),
                                );
                            }
                        }
                    }
                    // Self-service never changes an existing agent, not even their Okta app.
                    let existing_agent = level.as_ref().is_some_and(|l| {
                        z.access_levels.get(l).is_some_and(|lv| lv.light_agent)
                            && matches!(account, Lookup::Found(a) if a.is_agent() && !a.is_light_agent())
                    });
                    // The Okta app via the instance's app group, for anything that grants a level.
                    if let (Some(group), Some(_)) = (cfg.app_group(instance), level)
                        && !(b.self_service && existing_agent)
                    {
                        let item = group_item(instance, true)
                            .map(|g| g.index)
                            .unwrap_or(it.index);
                        let blocked_here = b
                            .blocked
                            .iter()
                            .any(|x| x.subject == s.email && x.item == it.index);
                        if !blocked_here {
                            let member = b.group_member(group, &s.email) == Some(true);
                            b.push(
                                s,
                                instance,
                                item,
                                MembershipChange::Add {
                                    group: group.to_string(),
                                },
                                member,
                            );
                        }
                    }
                }
                ItemAction::GroupAdd { instance, group } => {
                    // Stands alone when no Zendesk item of the instance covers it.
                    let covered = open.iter().any(|o| {
                        matches!(&o.action, ItemAction::Account { instance: i, level: Some(_), .. } if i == instance)
                    });
                    if !covered {
                        let member = b.group_member(group, &s.email) == Some(true);
                        b.push(
                            s,
                            instance,
                            it.index,
                            MembershipChange::Add {
                                group: group.clone(),
                            },
                            member,
                        );
                    }
                }
                ItemAction::AccountRemove { instance } => {
                    deprovision(&mut b, request, s, instance, it.index);
                    if let Some(group) = cfg.app_group(instance) {
                        let item = group_item(instance, false)
                            .map(|g| g.index)
                            .unwrap_or(it.index);
                        let member = b.group_member(group, &s.email);
                        b.push(
                            s,
                            instance,
                            item,
                            MembershipChange::Remove {
                                group: group.to_string(),
                            },
                            member == Some(false),
                        );
                    }
                }
                ItemAction::GroupRemove { instance, group } => {
                    let covered = open.iter().any(|o| {
                        matches!(&o.action, ItemAction::AccountRemove { instance: i } if i == instance)
                    });
                    if !covered {
                        let member = b.group_member(group, &s.email);
                        b.push(
                            s,
                            instance,
                            it.index,
                            MembershipChange::Remove {
                                group: group.clone(),
                            },
                            member == Some(false),
                        );
                    }
                }
            }
        }
    }

    Plan {
        iid: request.iid,
        kind: request.kind,
        digest: request.digest(),
        steps: b.steps,
        blocked: b.blocked,
        notes: b.notes,
        skipped_items,
        self_service,
        satisfied_items: b.satisfied,
    }
}

/// Steps that give `s` the access level in `instance`. Returns whether the
/// person will have an agent account afterwards.
fn grant_level(
    b: &mut Builder<'_>,
    kind: RequestKind,
    s: &Subject,
    instance: &str,
    item: usize,
    level: &str,
    account: &Lookup<'_>,
) -> bool {
    let z = &b.cfg.zendesk[instance];
    let Some(lv) = z.access_levels.get(level) else {
        return false;
    };
    let target_ok = |a: &Account| {
        a.role == lv.role
            && if lv.light_agent {
                a.role_type == Some(1)
            } else {
                match &lv.custom_role {
                    Some(cr) => a
                        .custom_role
                        .as_deref()
                        .is_some_and(|x| x.eq_ignore_ascii_case(cr)),
                    None => a.role_type != Some(1),
                }
            }
    };
    match account {
        Lookup::Absent | Lookup::Unknown => {
            if kind == RequestKind::RoleChange && matches!(account, Lookup::Absent) {
                b.block(s, instance, item, BlockReason::NoAccountToChange);
                return false;
            }
            b.push(
                s,
                instance,
                item,
                AccountChange::CreateAgent {
                    name: s.name.clone(),
                    role: lv.role.clone(),
                    custom_role: lv.custom_role.clone(),
                    light_agent: lv.light_agent,
                    level: level.to_string(),
                },
                false,
            );
            for g in &lv.groups {
                b.push(
                    s,
                    instance,
                    item,
                    AccountChange::AddToGroup { group: g.clone() },
                    false,
                );
            }
            true
        }
        Lookup::Found(a) => {
            if kind == RequestKind::RoleChange && !a.is_agent() {
                b.block(s, instance, item, BlockReason::NoAccountToChange);
                return false;
            }
            // A full agent asking for a light agent keeps what they have (the
            // result says "Looks like you are already a full agent."), so the step is "already so".
            let keeps_full_agent = lv.light_agent && a.is_agent() && !a.is_light_agent();
            if a.suspended && b.self_service {
                b.block(s, instance, item, BlockReason::SuspendedSelfService);
                return false;
            }
            if keeps_full_agent {
                b.note(
                    s,
                    instance,
                    format!(
                        "already a full agent ({}) in {}; nothing was changed",
                        role_name(a),
                        z.display_name
                    ),
                );
            } else if lv.light_agent && target_ok(a) {
                b.note(
                    s,
                    instance,
                    format!("already a light agent in {}; nothing to do", z.display_name),
                );
            }
            b.push(
                s,
                instance,
                item,
                AccountChange::SetRole {
                    from: role_name(a),
                    role: lv.role.clone(),
                    custom_role: lv.custom_role.clone(),
                    light_agent: lv.light_agent,
                    level: level.to_string(),
                },
                keeps_full_agent || target_ok(a),
            );
            if a.suspended && !keeps_full_agent {
                b.push(s, instance, item, AccountChange::Unsuspend, false);
            }
            for g in &lv.groups {
                let has = a.groups.iter().any(|x| x.eq_ignore_ascii_case(g));
                b.push(
                    s,
                    instance,
                    item,
                    AccountChange::AddToGroup { group: g.clone() },
                    has,
                );
            }
            if kind == RequestKind::RoleChange {
                // Groups that belong to other configured levels, not to the new one.
                let other: BTreeSet<&String> = z
                    .access_levels
                    .iter()
                    .filter(|(n, _)| *n != level)
                    .flat_map(|(_, l)| l.groups.iter())
                    .filter(|g| !lv.groups.iter().any(|x| x.eq_ignore_ascii_case(g)))
                    .collect();
                for g in other {
                    if a.groups.iter().any(|x| x.eq_ignore_ascii_case(g)) {
                        b.push(
                            s,
                            instance,
                            item,
                            AccountChange::RemoveFromGroup { group: g.clone() },
                            false,
                        );
                    }
                }
            }
            true
        }
    }
}

fn role_name(a: &Account) -> String {
    if a.is_light_agent() {
        "light agent".into()
    } else if let Some(cr) = &a.custom_role {
        format!("{} ({cr})", a.role)
    } else {
        a.role.clone()
    }
}

/// The documented order: tickets to the manager first, then tags, fields,
/// groups, demote, suspend. A manager who cannot take tickets stops it all.
fn deprovision(b: &mut Builder<'_>, request: &Request, s: &Subject, instance: &str, item: usize) {
    let z = &b.cfg.zendesk[instance];
    let account = b.observed.account(instance, &s.email);
    let a = match account {
        Lookup::Absent => {
            b.note(
                s,
                instance,
                format!("has no account in {}: nothing to remove", z.display_name),
            );
            b.satisfied.insert(item);
            return;
        }
        Lookup::Unknown => None,
        Lookup::Found(a) => Some(a),
    };
    let tickets = a.and_then(|a| a.open_tickets);
    if tickets != Some(0) {
        // Who takes the open tickets: the manager, or, when they cannot, the
        // instance's fallback assignee (said on the issue), so that a leaver is
        // never left half-deprovisioned for want of someone to hand them to.
        let manager_problem: Option<(String, String)> = match &s.manager {
            None => Some((String::new(), "no manager is named".to_string())),
            Some(m) => {
                let email = b.observed.manager_emails.get(m).cloned();
                let why = match &email {
                    None => Some("no e-mail address is known for them".to_string()),
                    Some(e) => match b.observed.account(instance, e) {
                        Lookup::Absent => {
                            Some(format!("they have no account in {}", z.display_name))
                        }
                        Lookup::Found(ma) if !ma.can_take_tickets() => Some(if ma.suspended {
                            "their account is suspended".into()
                        } else if ma.is_light_agent() {
                            "they are a light agent".into()
                        } else {
                            "they are not an agent".into()
                        }),
                        _ => None,
                    },
                };
                match why {
                    Some(w) if a.is_some() => Some((m.clone(), w)),
                    _ => {
                        b.push(
                            s,
                            instance,
                            item,
                            AccountChange::ReassignTickets {
                                manager: m.clone(),
                                manager_email: email,
                            },
                            false,
                        );
                        None
                    }
                }
            }
        };
        if let Some((manager, why)) = manager_problem {
            let fallback = z
                .fallback_assignee
                .as_deref()
                .and_then(|e| Email::parse(e).ok())
                .filter(|fb| {
                    matches!(b.observed.account(instance, fb), Lookup::Found(fa) if fa.can_take_tickets())
                });
            match fallback {
                Some(fb) => {
                    b.note(
                        s,
                        instance,
                        format!(
                            "open tickets go to the fallback assignee {} because {}: {why}",
                            crate::render::code_span(fb.as_str()),
                            if manager.is_empty() {
                                "of the manager".to_string()
                            } else {
                                format!("the manager `@{manager}` cannot take them")
                            }
                        ),
                    );
                    b.push(
                        s,
                        instance,
                        item,
                        AccountChange::ReassignTickets {
                            manager: fb.to_string(),
                            manager_email: Some(fb),
                        },
                        false,
                    );
                }
                None if manager.is_empty() => {
                    b.block(s, instance, item, BlockReason::NoManager);
                    return;
                }
                None => {
                    b.block(
                        s,
                        instance,
                        item,
                        BlockReason::ManagerCannotTakeTickets { manager, why },
                    );
                    return;
                }
            }
        }
    } else {
        b.push(
            s,
            instance,
            item,
            AccountChange::ReassignTickets {
                manager: s.manager.clone().unwrap_or_default(),
                manager_email: None,
            },
            true,
        );
    }
    let _ = request;
    b.push(
        s,
        instance,
        item,
        AccountChange::RemoveAllTags,
        a.is_some_and(|a| a.tags.is_empty()),
    );
    b.push(
        s,
        instance,
        item,
        AccountChange::ClearUserFields,
        a.is_some_and(|a| a.filled_user_fields.is_empty()),
    );
    b.push(
        s,
        instance,
        item,
        AccountChange::RemoveAllGroups,
        a.is_some_and(|a| a.groups.is_empty()),
    );
    b.push(
        s,
        instance,
        item,
        AccountChange::DemoteToEndUser,
        a.is_some_and(|a| a.role == "end-user"),
    );
    b.push(
        s,
        instance,
        item,
        AccountChange::Suspend,
        a.is_some_and(|a| a.suspended),
    );
}

/// What a time-bound plan gives one person in one instance, and how to take
/// it back: computed before the first write, from the approved plan and the
/// state observed then, and written on the issue.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct GrantRecord {
    pub subject: Email,
    pub instance: String,
    /// What the request gives (`level:NAME`, `group:NAME`, `tag:NAME`,
    /// `okta:GROUP`, `active`), whether or not it had to change anything.
    pub gives: Vec<String>,
    /// The steps that undo what it changed, last change first.
    pub undo: Vec<Action>,
}

/// One record per person and instance the plan grants in.
pub fn grant_records(request: &Request, plan: &Plan, before: &Observed) -> Vec<GrantRecord> {
    let mut out = Vec::new();
    for s in &request.subjects {
        for inst in request.granting_instances() {
            let steps: Vec<&Step> = plan
                .steps
                .iter()
                .filter(|st| st.subject == s.email && st.instance == inst)
                .collect();
            if steps.is_empty() {
                continue;
            }
            let prior = before
                .accounts
                .get(&(inst.to_string(), s.email.clone()))
                .and_then(|a| a.as_ref());
            out.push(GrantRecord {
                subject: s.email.clone(),
                instance: inst.to_string(),
                gives: steps.iter().filter_map(|st| st.action.gives()).collect(),
                undo: steps
                    .iter()
                    .filter(|st| st.state == StepState::ToDo)
                    .rev()
                    .filter_map(|st| st.action.inverse(prior))
                    .collect(),
            });
        }
    }
    out
}

/// Whether the account holds this configured access level now.
pub fn has_level(cfg: &Config, instance: &str, level: &str, a: &Account) -> bool {
    let Some(lv) = cfg
        .zendesk
        .get(instance)
        .and_then(|z| z.access_levels.get(level))
    else {
        return false;
    };
    a.role == lv.role
        && if lv.light_agent {
            a.role_type == Some(1)
        } else {
            match &lv.custom_role {
                Some(cr) => a
                    .custom_role
                    .as_deref()
                    .is_some_and(|x| x.eq_ignore_ascii_case(cr)),
                None => a.role_type != Some(1),
            }
        }
}

/// A time-bound grant whose end date has come, with the changes it still
/// owns (as read just now): built only by [`Expired::due`], and the only way
/// to the executor's revocation.
#[derive(Debug, Clone)]
pub struct Expired {
    iid: u64,
    subject: Email,
    instance: String,
    expires: chrono::NaiveDate,
    undo: Vec<Action>,
}

impl Expired {
    /// The proof, if `today` is on or after the end date; with the changes
    /// the grant no longer owns (kept, each with why).
    #[allow(clippy::too_many_arguments)]
    pub fn due(
        cfg: &Config,
        iid: u64,
        record: &GrantRecord,
        expires: chrono::NaiveDate,
        today: chrono::NaiveDate,
        now: Option<&Account>,
        okta_member: Option<bool>,
        held_elsewhere: &BTreeSet<String>,
    ) -> Option<(Expired, Vec<(Action, String)>)> {
        if today < expires {
            return None;
        }
        let (undo, kept) = still_owned(cfg, record, now, okta_member, held_elsewhere);
        Some((
            Expired {
                iid,
                subject: record.subject.clone(),
                instance: record.instance.clone(),
                expires,
                undo,
            },
            kept,
        ))
    }

    pub fn iid(&self) -> u64 {
        self.iid
    }
    pub fn subject(&self) -> &Email {
        &self.subject
    }
    pub fn instance(&self) -> &str {
        &self.instance
    }
    pub fn expires(&self) -> chrono::NaiveDate {
        self.expires
    }
    /// What the revocation takes back, last change first.
    pub fn undo(&self) -> &[Action] {
        &self.undo
    }
}

/// Of a grant's undo steps, the ones it still owns now: the account still has
/// what the grant set, and no other request (still in force) gives it. The
/// rest are kept, each with why.
fn still_owned(
    cfg: &Config,
    record: &GrantRecord,
    now: Option<&Account>,
    okta_member: Option<bool>,
    held_elsewhere: &BTreeSet<String>,
) -> (Vec<Action>, Vec<(Action, String)>) {
    let mut undo = Vec::new();
    let mut kept = Vec::new();
    let level = record
        .gives
        .iter()
        .find_map(|g| g.strip_prefix("level:").map(String::from));
    for a in &record.undo {
        let why: Option<String> = match a {
            Action::Account(c) => match c {
                AccountChange::DemoteToEndUser | AccountChange::SetRole { .. } => {
                    match (now, &level) {
                        (None, _) => Some("the account no longer exists".into()),
                        (Some(acc), Some(l)) if !has_level(cfg, &record.instance, l, acc) => {
                            Some(format!(
                                "the account no longer has {l} (it was changed since), so the role is left as it is"
                            ))
                        }
                        (Some(_), Some(l)) if held_elsewhere.contains(&format!("level:{l}")) => {
                            Some(format!("another request in force also gives {l}"))
                        }
                        (Some(acc), _) if acc.role == "admin" => {
                            Some("the account is a Zendesk admin now".into())
                        }
                        _ => None,
                    }
                }
                AccountChange::RemoveFromGroup { group } => match now {
                    Some(acc) if !acc.groups.iter().any(|g| g.eq_ignore_ascii_case(group)) => {
                        Some(format!("no longer in {group}"))
                    }
                    None => Some("the account no longer exists".into()),
                    _ if held_elsewhere.contains(&format!("group:{group}")) => {
                        Some(format!("another request in force also gives {group}"))
                    }
                    _ => None,
                },
                AccountChange::RemoveTag { tag } => match now {
                    Some(acc) if !acc.tags.contains(tag) => Some(format!("no longer tagged {tag}")),
                    None => Some("the account no longer exists".into()),
                    _ if held_elsewhere.contains(&format!("tag:{tag}")) => {
                        Some(format!("another request in force also gives {tag}"))
                    }
                    _ => None,
                },
                AccountChange::Suspend => match now {
                    Some(acc) if acc.suspended => Some("already suspended".into()),
                    None => Some("the account no longer exists".into()),
                    _ if !held_elsewhere.is_empty() => {
                        Some("another request in force gives access in this instance".into())
                    }
                    _ => None,
                },
                _ => Some("not a step that ends a grant".into()),
            },
            Action::Membership(MembershipChange::Remove { group }) => {
                if okta_member == Some(false) {
                    Some(format!("no longer in {group}"))
                } else if held_elsewhere.contains(&format!("okta:{group}")) {
                    Some(format!("another request in force also gives {group}"))
                } else {
                    None
                }
            }
            Action::Membership(MembershipChange::Add { .. }) => {
                Some("not a step that ends a grant".into())
            }
        };
        match why {
            Some(w) => kept.push((a.clone(), w)),
            None => undo.push(a.clone()),
        }
    }
    (undo, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    /// Every change, with the JSON it is stored as (step keys, audit rows,
    /// grant records on issues already written). Splitting the changes by
    /// target must not change a byte of it.
    fn stored_forms() -> Vec<(Action, &'static str)> {
        vec![
            (
                AccountChange::CreateAgent {
                    name: "Robin Kim".into(),
                    role: "agent".into(),
                    custom_role: Some("Staff".into()),
                    light_agent: false,
                    level: "staff".into(),
                }
                .into(),
                r#"{"type":"create_agent","name":"Robin Kim","role":"agent","custom_role":"Staff","light_agent":false,"level":"staff"}"#,
            ),
            (
                AccountChange::SetRole {
                    from: "light agent".into(),
                    role: "agent".into(),
                    custom_role: None,
                    light_agent: false,
                    level: "agent".into(),
                }
                .into(),
                r#"{"type":"set_role","from":"light agent","role":"agent","custom_role":null,"light_agent":false,"level":"agent"}"#,
            ),
            (AccountChange::Unsuspend.into(), r#"{"type":"unsuspend"}"#),
            (
                AccountChange::AddToGroup { group: "T1".into() }.into(),
                r#"{"type":"add_to_group","group":"T1"}"#,
            ),
            (
                AccountChange::RemoveFromGroup { group: "T1".into() }.into(),
                r#"{"type":"remove_from_group","group":"T1"}"#,
            ),
            (
                AccountChange::AddTag { tag: "emea".into() }.into(),
                r#"{"type":"add_tag","tag":"emea"}"#,
            ),
            (
                AccountChange::RemoveTag { tag: "emea".into() }.into(),
                r#"{"type":"remove_tag","tag":"emea"}"#,
            ),
            (
                AccountChange::ReassignTickets {
                    manager: "lee".into(),
                    manager_email: Some(email("lee@gitlab.com")),
                }
                .into(),
                r#"{"type":"reassign_tickets","manager":"lee","manager_email":"lee@gitlab.com"}"#,
            ),
            (
                AccountChange::RemoveAllTags.into(),
                r#"{"type":"remove_all_tags"}"#,
            ),
            (
                AccountChange::ClearUserFields.into(),
                r#"{"type":"clear_user_fields"}"#,
            ),
            (
                AccountChange::RemoveAllGroups.into(),
                r#"{"type":"remove_all_groups"}"#,
            ),
            (
                AccountChange::DemoteToEndUser.into(),
                r#"{"type":"demote_to_end_user"}"#,
            ),
            (AccountChange::Suspend.into(), r#"{"type":"suspend"}"#),
            (
                MembershipChange::Add {
                    group: "app".into(),
                }
                .into(),
                r#"{"type":"add_google_member","group":"app"}"#,
            ),
            (
                MembershipChange::Remove {
                    group: "app".into(),
                }
                .into(),
                r#"{"type":"remove_google_member","group":"app"}"#,
            ),
        ]
    }

    #[test]
    fn every_change_keeps_its_stored_form_both_ways() {
        for (action, stored) in stored_forms() {
            assert_eq!(serde_json::to_string(&action).unwrap(), stored);
            let read: Action = serde_json::from_str(stored).unwrap();
            assert_eq!(read, action, "{stored}");
        }
        // A record of undo steps, as a grant record keeps it.
        let undo: Vec<Action> = serde_json::from_str(
            r#"[{"type":"remove_google_member","group":"app"},{"type":"demote_to_end_user"}]"#,
        )
        .unwrap();
        assert_eq!(
            undo,
            vec![
                Action::Membership(MembershipChange::Remove {
                    group: "app".into()
                }),
                Action::Account(AccountChange::DemoteToEndUser),
            ]
        );
        assert!(serde_json::from_str::<Action>(r#"{"type":"delete_account"}"#).is_err());
    }

    /// The steps the planner's own `push` makes of these changes, for one
    /// person in Global.
    fn planned(changes: Vec<Action>) -> Vec<Step> {
        let cfg = Config::parse(
            include_str!("../bot.toml"),
            std::path::Path::new("bot.toml"),
        )
        .unwrap();
        let observed = Observed::default();
        let mut b = Builder {
            cfg: &cfg,
            observed: &observed,
            self_service: false,
            satisfied: BTreeSet::new(),
            steps: Vec::new(),
            blocked: Vec::new(),
            notes: Vec::new(),
        };
        let robin = Subject {
            name: "Robin".into(),
            email: email("robin@gitlab.com"),
            gitlab_username: None,
            manager: None,
        };
        for c in changes {
            b.push(&robin, "global", 0, c, false);
        }
        b.steps
    }

    /// Robin's account created as a light agent.
    fn robin_created_as_light_agent() -> Action {
        AccountChange::CreateAgent {
            name: "Robin".into(),
            role: "agent".into(),
            custom_role: None,
            light_agent: true,
            level: "light agent".into(),
        }
        .into()
    }

    /// An approval is bound to the digest of the plan's change keys: the
    /// keys, and so the digest, of a plan already approved must not move.
    #[test]
    fn step_keys_and_the_changes_digest_keep_their_form() {
        let steps = planned(vec![
            robin_created_as_light_agent(),
            AccountChange::AddTag { tag: "emea".into() }.into(),
            AccountChange::AddToGroup { group: "T1".into() }.into(),
            MembershipChange::Add {
                group: "app".into(),
            }
            .into(),
        ]);
        let keys: Vec<&str> = steps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "global/robin@gitlab.com/create_agent",
                "global/robin@gitlab.com/add_tag:emea",
                "global/robin@gitlab.com/add_to_group:T1",
                "global/robin@gitlab.com/add_google_member:app",
            ]
        );
        let plan = Plan {
            iid: 1,
            kind: RequestKind::LightAgent,
            digest: String::new(),
            steps,
            blocked: Vec::new(),
            notes: Vec::new(),
            skipped_items: Vec::new(),
            self_service: false,
            satisfied_items: BTreeSet::new(),
        };
        assert_eq!(
            plan.change_keys().into_iter().collect::<Vec<_>>(),
            [
                "global/robin@gitlab.com/add_google_member:app",
                "global/robin@gitlab.com/add_tag:emea",
                "global/robin@gitlab.com/add_to_group:T1",
                "global/robin@gitlab.com/level:light agent",
            ]
        );
        // sha256 of the sorted keys joined by newlines, first 8 bytes.
        assert_eq!(plan.changes_digest(), DIGEST_OF_THE_KEYS_ABOVE);
    }

    /// Every change's step key (the pinned forms above, each planned through
    /// `push`), and the change key of creating an account and of a role
    /// change (its level, whatever the account was).
    #[test]
    fn every_step_key_and_change_key_keeps_its_form() {
        let mut changes: Vec<Action> = stored_forms().into_iter().map(|(a, _)| a).collect();
        // Asked twice: planned once.
        changes.push(changes[changes.len() - 1].clone());
        let steps = planned(changes);
        let keys: Vec<String> = steps.iter().map(|s| s.key.clone()).collect();
        let p = "global/robin@gitlab.com/";
        let expected = [
            "create_agent",
            "set_role",
            "unsuspend",
            "add_to_group:T1",
            "remove_from_group:T1",
            "add_tag:emea",
            "remove_tag:emea",
            "reassign_tickets",
            "remove_all_tags",
            "clear_user_fields",
            "remove_all_groups",
            "demote_to_end_user",
            "suspend",
            "add_google_member:app",
            "remove_google_member:app",
        ]
        .map(|k| format!("{p}{k}"));
        assert_eq!(keys, expected);
        let changes: Vec<String> = steps.iter().map(change_key).collect();
        assert_eq!(changes[0], format!("{p}level:staff"));
        assert_eq!(changes[1], format!("{p}level:agent"));
        assert_eq!(changes[2..], keys[2..]);
    }

    /// What each change gives, as grant records on issues name it (an
    /// expiry matches on these).
    #[test]
    fn what_each_change_gives_keeps_its_name() {
        let gives: Vec<(String, Option<String>)> = stored_forms()
            .into_iter()
            .map(|(a, stored)| (stored.to_string(), a.gives()))
            .collect();
        let named: Vec<(&str, Option<&str>)> = gives
            .iter()
            .map(|(s, g)| {
                let kind = s.split('"').nth(3).unwrap_or_default();
                (kind, g.as_deref())
            })
            .collect();
        assert_eq!(
            named,
            [
                ("create_agent", Some("level:staff")),
                ("set_role", Some("level:agent")),
                ("unsuspend", Some("active")),
                ("add_to_group", Some("group:T1")),
                ("remove_from_group", None),
                ("add_tag", Some("tag:emea")),
                ("remove_tag", None),
                ("reassign_tickets", None),
                ("remove_all_tags", None),
                ("clear_user_fields", None),
                ("remove_all_groups", None),
                ("demote_to_end_user", None),
                ("suspend", None),
                ("add_google_member", Some("okta:app")),
                ("remove_google_member", None),
            ]
        );
    }

    const DIGEST_OF_THE_KEYS_ABOVE: &str = "6d3a8882e442bb58";

    #[test]
    fn each_change_prints_itself_and_knows_its_undo() {
        let before = Account {
            role: "agent".into(),
            role_type: Some(1),
            ..Default::default()
        };
        let cases: Vec<(Action, &str, Option<Action>)> = vec![
            (
                AccountChange::SetRole {
                    from: "light agent".into(),
                    role: "agent".into(),
                    custom_role: Some("Staff".into()),
                    light_agent: false,
                    level: "staff".into(),
                }
                .into(),
                "change the role from light agent to staff",
                Some(
                    AccountChange::SetRole {
                        from: "staff".into(),
                        role: "agent".into(),
                        custom_role: None,
                        light_agent: true,
                        level: "light agent".into(),
                    }
                    .into(),
                ),
            ),
            (
                AccountChange::AddTag { tag: "emea".into() }.into(),
                "add tag `emea`",
                Some(AccountChange::RemoveTag { tag: "emea".into() }.into()),
            ),
            (
                AccountChange::Unsuspend.into(),
                "unsuspend the account",
                Some(AccountChange::Suspend.into()),
            ),
            (
                MembershipChange::Add {
                    group: "app".into(),
                }
                .into(),
                "add to `app` (Okta app)",
                Some(
                    MembershipChange::Remove {
                        group: "app".into(),
                    }
                    .into(),
                ),
            ),
            // Deprovisioning is not time-bound: nothing undoes it.
            (
                MembershipChange::Remove {
                    group: "app".into(),
                }
                .into(),
                "remove from `app` (Okta app)",
                None,
            ),
            (AccountChange::Suspend.into(), "suspend", None),
            (
                AccountChange::ReassignTickets {
                    manager: "lee".into(),
                    manager_email: Some(email("lee.k@gitlab.com")),
                }
                .into(),
                "reassign open tickets (status below closed) to the manager `@lee` (`lee.k@gitlab.com`)",
                None,
            ),
        ];
        for (change, text, undo) in cases {
            assert_eq!(change.to_string(), text);
            assert_eq!(change.inverse(Some(&before)), undo, "{text}");
        }
        // No account before: the seat a creation took is freed by demotion.
        let created: Action = robin_created_as_light_agent();
        assert_eq!(
            created.inverse(None),
            Some(AccountChange::DemoteToEndUser.into())
        );
    }
}
