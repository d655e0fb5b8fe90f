//! The port of a group directory: the system whose group membership assigns
//! a Zendesk instance's app (a Google group pushed to Okta, or an Okta group
//! itself). Each Zendesk instance names its group (`okta_group`) and which
//! directory holds it (`group_directory`); the planner, the executor and the
//! reports only ever see this trait and the group's name.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{Config, GroupDirectoryKind};
use crate::plan::MembershipChange;
use crate::secret::Secrets;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Done,
    /// Already so (already a member on add, not a member on remove).
    AlreadySo,
}

/// A directory's failure, as the bot needs it: what to say, and whether
/// trying again later may help. Each adapter keeps its own typed error and
/// converts at the port.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct GroupError {
    message: String,
    transient: bool,
}

impl GroupError {
    pub fn new(message: impl Into<String>, transient: bool) -> GroupError {
        GroupError {
            message: message.into(),
            transient,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

/// Membership of a person (by company e-mail, which is also their login) in
/// a named group. Every write is idempotent: adding a member or removing a
/// non-member answers `AlreadySo`, and a retried request whose first answer
/// was lost converges.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait GroupDirectory: Send + Sync {
    /// How `check` names this directory ("Google", "Okta").
    fn label(&self) -> &'static str;
    async fn add_member(&self, group: &str, person: &str) -> Result<Change, GroupError>;
    async fn remove_member(&self, group: &str, person: &str) -> Result<Change, GroupError>;
    /// Direct membership (nested groups do not count).
    async fn is_member(&self, group: &str, person: &str) -> Result<bool, GroupError>;
    async fn list_members(&self, group: &str) -> Result<Vec<String>, GroupError>;
    /// `check`: drop the credential held and get a new one (or, for a
    /// credential that is not refreshed, that it is accepted); says what worked.
    async fn refresh(&self) -> Result<&'static str, GroupError>;
}

impl dyn GroupDirectory {
    /// Apply one planned membership change to `person`. Only the executor
    /// calls it, after its checks and audit row.
    pub async fn apply_change(
        &self,
        change: &MembershipChange,
        person: &str,
    ) -> Result<Change, GroupError> {
        match change {
            MembershipChange::Add { group } => self.add_member(group, person).await,
            MembershipChange::Remove { group } => self.remove_member(group, person).await,
        }
    }
}

/// The group directory of each Zendesk instance that has a group.
#[derive(Clone, Default)]
pub struct Directories {
    by_instance: BTreeMap<String, Arc<dyn GroupDirectory>>,
}

impl Directories {
    /// One client per configured directory, shared by the instances using it.
    /// An instance whose directory is not configured has none (its plan has
    /// no group step).
    pub fn connect(
        cfg: &Config,
        secrets: &Secrets,
        http: reqwest::Client,
    ) -> Result<Directories, GroupError> {
        let mut google: Option<Arc<dyn GroupDirectory>> = None;
        let mut okta: Option<Arc<dyn GroupDirectory>> = None;
        let mut by_instance = BTreeMap::new();
        for (name, z) in &cfg.zendesk {
            if z.okta_group.is_none() {
                continue;
            }
            let dir = match z.group_directory {
                GroupDirectoryKind::Google => match (&google, &cfg.google) {
                    (Some(d), _) => d.clone(),
                    (None, Some(g)) => {
                        let d: Arc<dyn GroupDirectory> = Arc::new(
                            crate::google::GoogleClient::new(g, secrets, http.clone())
                                .map_err(GroupError::from)?,
                        );
                        google = Some(d.clone());
                        d
                    }
                    (None, None) => continue,
                },
                GroupDirectoryKind::Okta => match (&okta, &cfg.okta) {
                    (Some(d), _) => d.clone(),
                    (None, Some(o)) => {
                        let d: Arc<dyn GroupDirectory> = Arc::new(
                            crate::okta::OktaClient::new(o, secrets, http.clone())
                                .map_err(GroupError::from)?,
                        );
                        okta = Some(d.clone());
                        d
                    }
                    (None, None) => continue,
                },
            };
            by_instance.insert(name.clone(), dir);
        }
        Ok(Directories { by_instance })
    }

    /// The same directory for every instance with a group (tests with mocks).
    pub fn for_all(cfg: &Config, dir: Arc<dyn GroupDirectory>) -> Directories {
        Directories {
            by_instance: cfg
                .zendesk
                .iter()
                .filter(|(_, z)| z.okta_group.is_some())
                .map(|(n, _)| (n.clone(), dir.clone()))
                .collect(),
        }
    }

    /// The directory holding `instance`'s group.
    pub fn of(&self, instance: &str) -> Option<&Arc<dyn GroupDirectory>> {
        self.by_instance.get(instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_instance_with_a_group_gets_its_directory() {
        let mut cfg = crate::config::Config::parse(
            include_str!("../bot.toml"),
            std::path::Path::new("bot.toml"),
        )
        .unwrap();
        cfg.zendesk.get_mut("federal").unwrap().okta_group = None;
        let mut mock = MockGroupDirectory::new();
        mock.expect_label().return_const("Mock");
        mock.expect_is_member()
            .returning(|g, p| Ok(g == "okta-zendeskglobal-users@gitlab.com" && p == "a@b.c"));
        let dirs = Directories::for_all(&cfg, Arc::new(mock));
        assert!(dirs.of("federal").is_none(), "no group, no directory");
        let d = dirs.of("global").unwrap();
        assert_eq!(d.label(), "Mock");
        assert!(
            d.is_member("okta-zendeskglobal-users@gitlab.com", "a@b.c")
                .await
                .unwrap()
        );
        // A transient failure says so through the port.
        assert!(GroupError::new("x", true).is_transient());
        assert!(!GroupError::new("x", false).is_transient());
    }
}
