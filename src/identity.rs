//! Who is who: a GitLab user's company e-mail address, from the sources the
//! configuration names (tried in order), and what the Google Workspace
//! directory says about a person (active, primary address, manager).
//!
//! Never from an issue's text: a requester can type anyone's address. When no
//! source knows a user the answer is "unknown", and what depends on it fails
//! closed (see `approval` and `policy`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::config::{Config, IdentitySource};
use crate::directory::{DirectoryClient, DirectoryError, Person};
use crate::gitlab::{ApiUser, GitlabApi, GitlabError};
use crate::request::Email;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity: {0}")]
    Gitlab(#[from] GitlabError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error("identity map {path}: {detail}")]
    Map { path: String, detail: String },
}

/// `username,email` lines; `#` comments and blank lines ignored.
pub fn read_map(path: &Path) -> Result<BTreeMap<String, Email>, IdentityError> {
    let bad = |detail: String| IdentityError::Map {
        path: path.display().to_string(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (u, e) = line
            .split_once(',')
            .ok_or_else(|| bad(format!("line {}: expected `username,email`", n + 1)))?;
        let email = Email::parse(e.trim()).map_err(|err| bad(format!("line {}: {err}", n + 1)))?;
        let user = u.trim().trim_start_matches('@').to_ascii_lowercase();
        if out.insert(user.clone(), email).is_some() {
            return Err(bad(format!("line {}: {user} is listed twice", n + 1)));
        }
    }
    Ok(out)
}

pub struct Resolver {
    sources: Vec<IdentitySource>,
    enterprise_group: Option<String>,
    allowed_domains: Vec<String>,
    map: BTreeMap<String, Email>,
    gitlab: Arc<dyn GitlabApi>,
    directory: Option<DirectoryClient>,
    emails: Mutex<HashMap<String, (Instant, Option<Email>)>>,
    people: Mutex<HashMap<Email, (Instant, Option<Person>)>>,
}

/// How long an answer is reused: people change managers, leave, are
/// suspended; a long-running bot must notice within minutes.
const FRESH_FOR: Duration = Duration::from_secs(600);

impl Resolver {
    pub fn new(
        cfg: &Config,
        gitlab: Arc<dyn GitlabApi>,
        directory: Option<DirectoryClient>,
    ) -> Result<Resolver, IdentityError> {
        let map = match (
            &cfg.identity.map_path,
            cfg.identity.sources.contains(&IdentitySource::Map),
        ) {
            (Some(p), true) => read_map(p)?,
            _ => BTreeMap::new(),
        };
        Ok(Resolver {
            sources: cfg.identity.sources.clone(),
            enterprise_group: cfg.identity.enterprise_group.clone(),
            allowed_domains: cfg.bot.allowed_email_domains.clone(),
            map,
            gitlab,
            directory,
            emails: Mutex::new(HashMap::new()),
            people: Mutex::new(HashMap::new()),
        })
    }

    /// Whether people are checked against the directory.
    pub fn has_directory(&self) -> bool {
        self.directory.is_some()
    }

    /// The user's company e-mail, from the first source that knows it (and,
    /// with a directory, confirmed there and given as its primary address).
    /// Cached for a few minutes; a failed lookup is not.
    pub async fn email_of(&self, user: &ApiUser) -> Result<Option<Email>, IdentityError> {
        let key = user.username.to_ascii_lowercase();
        if let Some((at, e)) = self.emails.lock().await.get(&key)
            && at.elapsed() < FRESH_FOR
        {
            return Ok(e.clone());
        }
        let mut found = None;
        for source in &self.sources {
            let candidate = match source {
                IdentitySource::GitlabAdmin => user.email.clone(),
                IdentitySource::GitlabEnterpriseUsers => match &self.enterprise_group {
                    Some(g) => self
                        .gitlab
                        .enterprise_user(g, &user.username)
                        .await?
                        .and_then(|u| u.email),
                    None => None,
                },
                IdentitySource::Map => self.map.get(&key).map(|e| e.to_string()),
            };
            // Only a company address is an identity; a personal one is not.
            if let Some(e) = candidate
                .and_then(|e| Email::parse(&e).ok())
                .filter(|e| e.domain_allowed(&self.allowed_domains))
            {
                found = Some(e);
                break;
            }
        }
        if let (Some(e), true) = (&found, self.directory.is_some()) {
            found = match self.person(e).await? {
                Some(p) => Some(p.primary),
                None => None,
            };
        }
        self.emails
            .lock()
            .await
            .insert(key, (Instant::now(), found.clone()));
        Ok(found)
    }

    /// The directory's person for an address (`None` without a directory, or
    /// when the domain has no such user).
    pub async fn person(&self, email: &Email) -> Result<Option<Person>, IdentityError> {
        let Some(d) = &self.directory else {
            return Ok(None);
        };
        if let Some((at, p)) = self.people.lock().await.get(email)
            && at.elapsed() < FRESH_FOR
        {
            return Ok(p.clone());
        }
        let p = d.person(email).await?;
        self.people
            .lock()
            .await
            .insert(email.clone(), (Instant::now(), p.clone()));
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_files_are_read_strictly() {
        let dir = std::env::temp_dir().join(format!("ab-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ids.csv");
        std::fs::write(
            &p,
            "# people\n@JDoe, jane.doe@gitlab.com\n\nmlee,mlee@gitlab.com\n",
        )
        .unwrap();
        let m = read_map(&p).unwrap();
        assert_eq!(m["jdoe"].as_str(), "jane.doe@gitlab.com");
        std::fs::write(&p, "jdoe,a@gitlab.com\njdoe,b@gitlab.com\n").unwrap();
        assert!(read_map(&p).unwrap_err().to_string().contains("twice"));
        std::fs::write(&p, "jdoe a@gitlab.com\n").unwrap();
        assert!(read_map(&p).unwrap_err().to_string().contains("line 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
