//! One writer per project across hosts. Replicas (a second pod, a one-shot
//! run beside the daemon, a bot on another database) agree through GitLab,
//! which all of them see: a project label whose description names the
//! replica that acts and until when. The holder renews it well before it
//! runs out; another replica acts only once it has run out (or its holder is
//! known to be gone), and a replica that took it over reads it back after a
//! pause, so that two that raced both see who won. Before each write the
//! holder checks, on its own clock, that its time has not run out: a stalled
//! holder stops writing before anyone else may start.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::gitlab::{GitlabApi, GitlabError};

/// Where a replica stands on a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Active,
    /// Another replica acts here until then.
    Standby {
        holder: String,
        until: DateTime<Utc>,
    },
}

/// Clock difference between hosts the lease tolerates.
const SKEW: chrono::Duration = chrono::Duration::seconds(15);

/// Time for a racing replica's write to land before reading back: a few of
/// our own write's round trips, within bounds.
fn settle(round_trip: Duration) -> Duration {
    (round_trip * 4).clamp(Duration::from_millis(100), Duration::from_secs(3))
}

#[derive(Debug, Clone, Copy)]
struct Held {
    label_id: u64,
    /// On this host's monotonic clock: writes stop at this instant.
    stop_writing: Instant,
    renew_after: Instant,
}

pub struct ReplicaLease {
    /// This replica: `host/pid/nonce` (the store's owner id).
    pub id: String,
    ttl: chrono::Duration,
    held: Mutex<HashMap<String, Held>>,
    /// False for a rehearsal, which writes nothing and so needs no hold:
    /// it acts beside the replica that holds the project.
    needed: bool,
}

/// The label's description: what it is for people, and the holder for replicas.
fn describe(holder: &str, until: DateTime<Utc>) -> String {
    format!(
        "Managed by access-bot (which replica acts on this project): holder={holder} until={}",
        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

fn parse(description: &str) -> Option<(String, DateTime<Utc>)> {
    let holder = description
        .split("holder=")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let until = description
        .split("until=")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let until = DateTime::parse_from_rfc3339(until)
        .ok()?
        .with_timezone(&Utc);
    Some((holder.to_string(), until))
}

impl ReplicaLease {
    /// A lease lasting `ttl` (renewed at half of it).
    pub fn new(id: String, ttl: Duration) -> ReplicaLease {
        ReplicaLease {
            id,
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(5)),
            held: Mutex::new(HashMap::new()),
            needed: true,
        }
    }

    /// The lease of a rehearsal: always free to go on, no call to GitLab.
    pub fn unneeded(id: String) -> ReplicaLease {
        ReplicaLease {
            needed: false,
            ..ReplicaLease::new(id, Duration::from_secs(60))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this replica may write to the project now (no call to GitLab).
    pub fn may_write(&self, project: &str) -> bool {
        !self.needed
            || self
                .lock()
                .get(project)
                .is_some_and(|h| Instant::now() < h.stop_writing)
    }

    fn hold(&self, project: &str, label_id: u64, taken: Instant) {
        let ttl = self.ttl.to_std().unwrap_or(Duration::from_secs(300));
        let margin = SKEW.to_std().unwrap_or(Duration::from_secs(15));
        self.lock().insert(
            project.to_string(),
            Held {
                label_id,
                stop_writing: taken + ttl.saturating_sub(margin),
                renew_after: taken + ttl / 2,
            },
        );
    }

    /// Take, keep or find out who holds the project's lease. A call to
    /// GitLab only when it must be renewed or is not held.
    pub async fn standing(
        &self,
        gitlab: &dyn GitlabApi,
        project: &str,
        label: &str,
    ) -> Result<Standing, GitlabError> {
        if !self.needed {
            return Ok(Standing::Active);
        }
        let now = Instant::now();
        let held = self.lock().get(project).copied();
        if let Some(h) = held
            && now < h.renew_after
        {
            return Ok(Standing::Active);
        }
        let taken = Instant::now();
        let until = Utc::now() + self.ttl;
        // Ours and still valid: renew without asking (nobody else may have it).
        if let Some(h) = held
            && now < h.stop_writing
        {
            gitlab
                .set_label_description(project, h.label_id, &describe(&self.id, until))
                .await?;
            self.hold(project, h.label_id, taken);
            return Ok(Standing::Active);
        }
        let current = match gitlab.project_label(project, label).await? {
            Some(l) => l,
            None => {
                gitlab
                    .create_project_label(project, label, &describe(&self.id, until))
                    .await?
            }
        };
        let claim = current.description.as_deref().and_then(parse);
        if let Some((holder, their_until)) = &claim
            && *holder != self.id
            && Utc::now() < *their_until + SKEW
            && !crate::store::owner_is_gone(holder)
        {
            self.lock().remove(project);
            return Ok(Standing::Standby {
                holder: holder.clone(),
                until: *their_until,
            });
        }
        // Taking it (or taking it back after this replica's own time ran
        // out): write, let a racing replica's write land, read back.
        let sent = Instant::now();
        gitlab
            .set_label_description(project, current.id, &describe(&self.id, until))
            .await?;
        tokio::time::sleep(settle(sent.elapsed())).await;
        let after = gitlab.project_label(project, label).await?;
        match after
            .as_ref()
            .and_then(|l| l.description.as_deref())
            .and_then(parse)
        {
            Some((h, _)) if h == self.id => {}
            Some((holder, until)) => {
                self.lock().remove(project);
                return Ok(Standing::Standby { holder, until });
            }
            None => {
                self.lock().remove(project);
                return Err(GitlabError::Rejected(format!(
                    "the lease label {label:?} lost its description"
                )));
            }
        }
        if claim.as_ref().is_none_or(|(h, _)| *h != self.id) {
            tracing::info!(project, previous = ?claim.map(|c| c.0), "this replica now acts on the project");
        }
        self.hold(project, current.id, taken);
        Ok(Standing::Active)
    }

    /// Give every lease back (a clean shutdown): a standby takes over at once.
    pub async fn release(&self, gitlab: &dyn GitlabApi) {
        let held: Vec<(String, Held)> = self.lock().drain().collect();
        for (project, h) in held {
            let gone = describe(&self.id, Utc::now() - SKEW - chrono::Duration::seconds(1));
            if let Err(e) = gitlab
                .set_label_description(&project, h.label_id, &gone)
                .await
            {
                tracing::warn!(project, error = %e, "cannot give the replica lease back; it runs out by itself");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitlab::{MockGitlabApi, ProjectLabel};
    use std::sync::Arc;

    /// A GitLab whose lease label remembers what was written.
    fn gitlab() -> MockGitlabApi {
        let mut gl = MockGitlabApi::new();
        let stored = Arc::new(Mutex::new(None::<String>));
        let read = stored.clone();
        gl.expect_project_label().returning(move |_, name| {
            Ok(read.lock().unwrap().clone().map(|d| ProjectLabel {
                id: 3,
                name: name.into(),
                description: Some(d),
            }))
        });
        let created = stored.clone();
        gl.expect_create_project_label()
            .returning(move |_, name, d| {
                *created.lock().unwrap() = Some(d.to_string());
                Ok(ProjectLabel {
                    id: 3,
                    name: name.into(),
                    description: Some(d.into()),
                })
            });
        let write = stored;
        gl.expect_set_label_description()
            .returning(move |_, id, d| {
                *write.lock().unwrap() = Some(d.to_string());
                Ok(ProjectLabel {
                    id,
                    name: "l".into(),
                    description: Some(d.into()),
                })
            });
        gl
    }

    #[tokio::test]
    async fn a_holder_whose_time_ran_out_stops_writing_before_anyone_may_start() {
        let gl = gitlab();
        // Sixteen seconds, of which fifteen are the allowance for clocks.
        let lease = ReplicaLease::new("here/1/a".into(), Duration::from_secs(16));
        assert_eq!(
            lease.standing(&gl, "p", "l").await.unwrap(),
            Standing::Active
        );
        assert!(lease.may_write("p"));
        assert!(!lease.may_write("other"), "only where it holds the lease");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(!lease.may_write("p"), "no write once its time is up");
    }

    #[test]
    fn the_description_says_who_and_until_when() {
        let until = DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let d = describe("host/12/abcd", until);
        assert_eq!(parse(&d), Some(("host/12/abcd".to_string(), until)));
        assert_eq!(parse("someone edited this"), None);
    }
}
