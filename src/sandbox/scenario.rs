//! Seed scenarios for `access-bot sandbox --seed FILE`: extra people, Zendesk
//! accounts, Google memberships and issues, in TOML.

use serde::Deserialize;

use super::Sandbox;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub people: Vec<Person>,
    #[serde(default)]
    pub zendesk: Vec<ZendeskAccount>,
    #[serde(default)]
    pub google: Vec<GoogleMember>,
    #[serde(default)]
    pub issues: Vec<Issue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    pub username: String,
    pub name: String,
    pub email: String,
    /// Their manager's e-mail in the company directory.
    #[serde(default)]
    pub manager: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZendeskAccount {
    pub instance: String,
    pub name: String,
    pub email: String,
    /// `end-user`, `agent`, `admin` or `light-agent`.
    pub role: String,
    #[serde(default)]
    pub custom_role: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub user_fields: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub open_tickets: u32,
    #[serde(default)]
    pub suspended: bool,
    /// Days since the last login (for the seat review).
    #[serde(default)]
    pub last_login_days_ago: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleMember {
    pub group: String,
    pub email: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issue {
    pub author: String,
    pub title: String,
    #[serde(default)]
    pub labels: Vec<String>,
    pub body: String,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, toml::de::Error> {
        toml::from_str(text)
    }
}

impl Sandbox {
    /// Put a Zendesk account in place directly (seeding, not through the API).
    pub fn seed_zendesk(&self, a: &ZendeskAccount) -> anyhow::Result<u64> {
        let mut w = self.zd(&a.instance);
        let (role, custom) =
            match a.role.as_str() {
                "light-agent" | "light_agent" => ("agent", w.light_agent_role()),
                r => (
                    r,
                    match &a.custom_role {
                        Some(c) => Some(w.role_by_name(c).ok_or_else(|| {
                            anyhow::anyhow!("no custom role {c} in {}", a.instance)
                        })?),
                        None => None,
                    },
                ),
            };
        let id = w.add_user(&a.name, &a.email, role, custom);
        let groups: Vec<u64> = a.groups.iter().map(|g| w.add_group(g)).collect();
        for gid in &groups {
            w.join_group(id, *gid);
        }
        for _ in 0..a.open_tickets {
            w.add_ticket(Some(id), groups.first().copied(), "open");
        }
        if let Some(u) = w.users.get_mut(&id) {
            u.tags = a.tags.clone();
            u.suspended = a.suspended;
            u.user_fields = a
                .user_fields
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            u.last_login_at = a
                .last_login_days_ago
                .map(|d| chrono::Utc::now() - chrono::Duration::days(d));
        }
        Ok(id)
    }

    pub async fn apply(&self, s: &Scenario) -> anyhow::Result<Vec<u64>> {
        {
            let mut g = self.gitlab.lock();
            for p in &s.people {
                g.add_user(&p.username, &p.name, &p.email);
            }
        }
        {
            let mut g = self.google.lock();
            for p in &s.people {
                g.add_person(&p.email, p.manager.as_deref());
            }
        }
        for p in &s.people {
            self.okta.lock().add_user(&p.email);
        }
        for a in &s.zendesk {
            self.seed_zendesk(a)?;
        }
        // Memberships go to the directory the configuration uses.
        for m in &s.google {
            self.seed_group_member(&m.group, &m.email);
        }
        let mut iids = Vec::new();
        for i in &s.issues {
            let labels: Vec<&str> = i.labels.iter().map(String::as_str).collect();
            iids.push(
                self.file_issue(&i.author, &i.title, &labels, &i.body)
                    .await?,
            );
        }
        Ok(iids)
    }
}
