//! Read the current state of the target systems for a request.

use crate::accounts::AccountError;
use crate::plan::{Account, Observed};
use crate::request::{Email, Request};

use super::{Bot, Instance};

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Accounts(#[from] AccountError),
    #[error(transparent)]
    Groups(#[from] crate::groups::GroupError),
    #[error("no Zendesk instance {0} is connected")]
    NoInstance(String),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
}

/// Reads of one kind (accounts, memberships) in flight at once while
/// observing a request.
const READS_IN_FLIGHT: usize = 4;

/// One account as the plan sees it.
pub async fn account(
    inst: &Instance,
    email: &Email,
    with_tickets: bool,
) -> Result<Option<Account>, AccountError> {
    let Some(u) = inst.api.find_user(email).await? else {
        return Ok(None);
    };
    let groups = if u.role == "end-user" {
        // Only agents can be group members: no need to ask.
        Vec::new()
    } else {
        inst.api
            .memberships(u.id)
            .await?
            .into_iter()
            .filter_map(|m| inst.resolved.group_names.get(&m.group_id).cloned())
            .collect()
    };
    let open_tickets = if with_tickets && u.role != "end-user" {
        // A count, not the list: the executor lists them when it moves them.
        Some(inst.api.open_ticket_count(u.id).await?)
    } else if with_tickets {
        Some(0)
    } else {
        None
    };
    Ok(Some(Account {
        id: u.id,
        name: u.name.clone(),
        custom_role: u
            .custom_role_id
            .and_then(|id| inst.resolved.role_names.get(&id).cloned()),
        role: u.role.clone(),
        role_type: u.role_type,
        custom_role_id: u.custom_role_id,
        suspended: u.suspended,
        filled_user_fields: u.filled_fields(),
        tags: u.tags.clone(),
        groups,
        open_tickets,
        last_login_at: u.last_login_at.map(|t| t.to_rfc3339()),
    }))
}

impl Bot {
    /// The bot's own accounts: its Zendesk admin account in each instance and
    /// the Google identities it acts as.
    pub(super) fn own_accounts(&self) -> std::collections::BTreeMap<Email, String> {
        let mut out = std::collections::BTreeMap::new();
        for (name, inst) in self.accounts.iter() {
            if let Some(e) = inst
                .resolved
                .me
                .as_ref()
                .and_then(|u| u.email.as_deref())
                .and_then(|e| Email::parse(e).ok())
            {
                out.insert(
                    e,
                    format!("the bot's own account in {}", self.display(name)),
                );
            }
        }
        if let Some(g) = &self.cfg.google
            && let Some(subject) = g.subject.as_deref().and_then(|e| Email::parse(e).ok())
        {
            out.insert(subject, "the admin the bot acts as in Google".into());
        }
        out
    }

    pub(super) fn instance(&self, name: &str) -> Result<&Instance, ObserveError> {
        self.accounts
            .of(name)
            .ok_or_else(|| ObserveError::NoInstance(name.to_string()))
    }

    /// Zendesk accounts of every subject (and, for offboarding, of their managers)
    /// in every instance the request touches, and their Okta group memberships.
    pub(super) async fn observe(&self, req: &Request) -> Result<Observed, ObserveError> {
        use futures_util::StreamExt;
        let mut obs = Observed {
            protected: self.own_accounts(),
            ..Default::default()
        };
        let offboarding = req.kind.revokes();
        // The subjects' accounts and app-group memberships are independent
        // reads: they go side by side (each system's rate budget stays
        // global). Once all are in, the first error in the order they were
        // once read one by one (per instance: accounts, then memberships) is
        // the one returned, so whether it is said on the issue or retried
        // quietly does not depend on which answer came first.
        let mut account_reads = Vec::new();
        let mut member_reads = Vec::new();
        let instances = req.instances();
        for (n, inst_name) in instances.iter().copied().enumerate() {
            let inst = self.instance(inst_name)?;
            for s in &req.subjects {
                account_reads.push(async move {
                    let a = account(inst, &s.email, offboarding).await;
                    (n, (inst_name.to_string(), s.email.clone()), a)
                });
            }
            if let (Some(groups), Some(group)) =
                (self.groups.of(inst_name), self.cfg.app_group(inst_name))
            {
                for s in &req.subjects {
                    member_reads.push(async move {
                        let m = groups.is_member(group, s.email.as_str()).await;
                        (n, (group.to_string(), s.email.clone()), m)
                    });
                }
            }
        }
        let (accounts, members) = tokio::join!(
            futures_util::stream::iter(account_reads)
                .buffered(READS_IN_FLIGHT)
                .collect::<Vec<_>>(),
            futures_util::stream::iter(member_reads)
                .buffered(READS_IN_FLIGHT)
                .collect::<Vec<_>>(),
        );
        let mut accounts = accounts.into_iter().peekable();
        let mut members = members.into_iter().peekable();
        for n in 0..instances.len() {
            while let Some((_, key, a)) = accounts.next_if(|(i, ..)| *i == n) {
                obs.accounts.insert(key, a?);
            }
            while let Some((_, key, m)) = members.next_if(|(i, ..)| *i == n) {
                obs.groups.insert(key, m?);
            }
        }
        if !offboarding {
            return Ok(obs);
        }
        // Offboarding: who takes the tickets (the fallback assignee, the
        // managers), after the subjects, whose accounts they may be.
        for inst_name in instances {
            let inst = self.instance(inst_name)?;
            if let Some(fb) = self.cfg.zendesk[inst_name]
                .fallback_assignee
                .as_deref()
                .and_then(|e| Email::parse(e).ok())
            {
                let key = (inst_name.to_string(), fb.clone());
                if let std::collections::btree_map::Entry::Vacant(slot) = obs.accounts.entry(key) {
                    slot.insert(account(inst, &fb, false).await?);
                }
            }
            for s in &req.subjects {
                let Some(m) = &s.manager else { continue };
                // The manager's address from an identity source; with a
                // directory, the leaver's manager there is who gets the tickets.
                let named = match self.user(m).await {
                    Some(u) => self.identity.email_of(&u).await?,
                    None => None,
                };
                let from_directory = self
                    .identity
                    .person(&s.email)
                    .await?
                    .and_then(|p| p.manager);
                let Some(email) = from_directory.or(named) else {
                    continue;
                };
                obs.manager_emails.insert(m.clone(), email.clone());
                let key = (inst_name.to_string(), email.clone());
                if let std::collections::btree_map::Entry::Vacant(slot) = obs.accounts.entry(key) {
                    slot.insert(account(inst, &email, false).await?);
                }
            }
        }
        Ok(obs)
    }
}
