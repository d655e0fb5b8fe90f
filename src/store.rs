//! The state store (SQLite): poll cursors, the append-only audit trail,
//! per-issue leases (so a daemon and a one-shot run never work on the same
//! issue at once), issues to retry, and time-bound grants.
//!
//! The issue stays the source of truth: deleting the database loses only
//! history and speed, never causes a duplicate grant or comment (the bot
//! re-reads the systems and its comment markers).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database: {0}")]
    Busy(String),
    #[error("state database: a cached note: {0}")]
    Note(#[from] serde_json::Error),
}

/// What the notes cache of an issue holds, apart from the notes.
#[derive(Debug, Clone, PartialEq)]
pub struct NotesHead {
    /// The bot account whose notes the cache keeps the text of.
    pub bot: u64,
    /// GitLab's clock when the notes were last read with a change.
    pub read_at: Option<DateTime<Utc>>,
    /// The latest edit time among the notes read.
    pub newest_edit: Option<DateTime<Utc>>,
    /// Comments (notes that are not system notes) in the cache.
    pub comments: u64,
}

/// A note as cached: its edit time, and its text if the cache keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedNote {
    pub updated_at: DateTime<Utc>,
    pub note: Option<crate::request::Note>,
}

pub struct Store {
    conn: Mutex<Connection>,
    /// Who holds leases taken through this handle: `host/pid/nonce`.
    owner: String,
}

/// Owners alive in this process (a lease of this process whose owner is not
/// here was held by a bot that is gone: a restart in the same process).
static LIVE_OWNERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A lease whose holder has not shown a sign of life for this long is taken
/// over (the holder renews every few seconds while it works).
pub const LEASE_STALE_AFTER: chrono::Duration = chrono::Duration::seconds(20);

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "localhost".into())
}

/// Whether the owner of a lease is certainly gone: a process on this host
/// that no longer runs, or a handle of this very process that was dropped.
/// Another host's owner is never judged here (its heartbeat is).
pub fn owner_is_gone(owner: &str) -> bool {
    let mut parts = owner.splitn(3, '/');
    let (Some(host), Some(pid), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != host_name() {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if pid == std::process::id() {
        return !LIVE_OWNERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|o| o == owner);
    }
    cfg!(target_os = "linux") && !Path::new(&format!("/proc/{pid}")).exists()
}

impl Drop for Store {
    fn drop(&mut self) {
        LIVE_OWNERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|o| *o != self.owner);
    }
}

/// One row of the audit trail.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub project: String,
    pub iid: u64,
    pub subject: String,
    pub instance: String,
    pub action: String,
    pub before: String,
    pub after: String,
    pub approvers: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub since: Option<DateTime<Utc>>,
    pub subject: Option<String>,
    pub project: Option<String>,
    pub iid: Option<u64>,
}

/// A grant with an end date, to revoke exactly what was granted.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Grant {
    pub project: String,
    pub iid: u64,
    /// The plan that granted it (an issue can grant twice, under two plans).
    pub plan: String,
    pub subject: String,
    pub instance: String,
    /// JSON: what to undo (previous role, tags added, groups added, Okta group).
    pub undo: String,
    pub expires: chrono::NaiveDate,
    pub reminded: bool,
    pub revoked: bool,
}

/// Access a completed request gave someone (`what`: `level:NAME`,
/// `group:NAME`, `tag:NAME`, `okta:GROUP`), permanent or until a date: a
/// time-bound grant ending never takes away what another request still gives.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Holding {
    pub project: String,
    pub iid: u64,
    pub subject: String,
    pub instance: String,
    pub what: String,
    pub expires: Option<chrono::NaiveDate>,
    pub at: DateTime<Utc>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS cursor (
    project TEXT PRIMARY KEY,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    project TEXT NOT NULL,
    iid INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (project, iid)
);
-- The notes cache: a row per note, so that a look stores only what changed.
DROP TABLE IF EXISTS note_cache;
CREATE TABLE IF NOT EXISTS note_read (
    project TEXT NOT NULL,
    iid INTEGER NOT NULL,
    bot INTEGER NOT NULL,
    read_at TEXT,
    newest_edit TEXT,
    PRIMARY KEY (project, iid)
);
CREATE TABLE IF NOT EXISTS note_row (
    project TEXT NOT NULL,
    iid INTEGER NOT NULL,
    id INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    system INTEGER NOT NULL,
    note TEXT,
    PRIMARY KEY (project, iid, id)
);
CREATE TABLE IF NOT EXISTS retry (
    project TEXT NOT NULL,
    iid INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (project, iid)
);
DROP TABLE IF EXISTS lease;
CREATE TABLE IF NOT EXISTS issue_lease (
    project TEXT NOT NULL,
    iid INTEGER NOT NULL,
    owner TEXT NOT NULL,
    heartbeat TEXT NOT NULL,
    PRIMARY KEY (project, iid)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    project TEXT NOT NULL,
    iid INTEGER NOT NULL,
    subject TEXT NOT NULL,
    instance TEXT NOT NULL,
    action TEXT NOT NULL,
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    approvers TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TABLE IF NOT EXISTS time_bound_grant (
    project TEXT NOT NULL,
    iid INTEGER NOT NULL,
    plan TEXT NOT NULL,
    subject TEXT NOT NULL,
    instance TEXT NOT NULL,
    undo TEXT NOT NULL,
    expires TEXT NOT NULL,
    reminded INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0,
    at TEXT NOT NULL,
    PRIMARY KEY (project, iid, plan, subject, instance)
);
CREATE TABLE IF NOT EXISTS holding (
    project TEXT NOT NULL,
    iid INTEGER NOT NULL,
    subject TEXT NOT NULL,
    instance TEXT NOT NULL,
    what TEXT NOT NULL,
    expires TEXT,
    at TEXT NOT NULL,
    PRIMARY KEY (project, iid, subject, instance, what)
);
CREATE TABLE IF NOT EXISTS notice (
    key TEXT PRIMARY KEY,
    sent_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notice_sent (at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS delivery (
    key TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS support_mr (
    project TEXT NOT NULL,
    iid INTEGER NOT NULL,
    username TEXT NOT NULL,
    state TEXT NOT NULL,
    mr_iid INTEGER,
    mr_url TEXT,
    checked_at TEXT,
    PRIMARY KEY (project, iid, username)
);
CREATE TABLE IF NOT EXISTS seat_review (
    project TEXT NOT NULL,
    iid INTEGER NOT NULL,
    instance TEXT NOT NULL,
    period TEXT NOT NULL,
    PRIMARY KEY (instance, period)
);
-- The lines of a seat review are recorded on its issue.
DROP TABLE IF EXISTS seat_candidate;
"#;

/// Everything in `src`, copied into a new in-memory database in one step (a
/// step at a time would start over each time a running bot commits).
fn copy_of(src: &Connection) -> Result<Connection, StoreError> {
    let mut copy = Connection::open_in_memory()?;
    {
        use rusqlite::backup::StepResult;
        let backup = rusqlite::backup::Backup::new(src, &mut copy)?;
        // Busy or locked: a writer holds it for a moment; try again shortly.
        let mut tries = 0;
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                _ if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => {
                    return Err(StoreError::Busy(
                        "the state database stayed locked while it was copied".into(),
                    ));
                }
            }
        }
    }
    Ok(copy)
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A time as exactly as it was read (GitLab's edit times are compared with
/// the next read's, so nothing may be rounded off).
fn ts_exact(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Store {
    /// Open (or create) the database. `:memory:` gives a private in-memory store.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = if path.as_os_str() == ":memory:" {
            Connection::open_in_memory()?
        } else {
            let new = !path.exists();
            let conn = Connection::open(path)?;
            // The audit trail names people and their access: owner only,
            // whatever the umask of the process that created it.
            #[cfg(unix)]
            if new {
                use std::os::unix::fs::PermissionsExt;
                if let Err(e) =
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                {
                    tracing::warn!(path = %path.display(), error = %e, "cannot make the state database private");
                }
            }
            conn
        };
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Store::ready(conn)
    }

    /// A private copy in memory of this store: a rehearsal (a dry run) reads
    /// what the bot knows and writes only to the copy, which goes with it.
    pub fn copy_in_memory(&self) -> Result<Store, StoreError> {
        let src = self.c();
        Store::ready(copy_of(&src)?)
    }

    /// A private copy in memory of the database at `path`, if there is one,
    /// read without writing to it at all (no schema, no settings, opened
    /// read-only): what a rehearsal starts from, beside a running bot.
    pub fn copy_of_file(path: &Path) -> Result<Option<Store>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        let src = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )?;
        src.busy_timeout(std::time::Duration::from_secs(10))?;
        let copy = copy_of(&src)?;
        drop(src);
        Store::ready(copy).map(Some)
    }

    /// The schema, the settings and an owner id for an open connection.
    fn ready(conn: Connection) -> Result<Store, StoreError> {
        // Everything but the audit trail (see `audit`) is a cache of what the
        // issues say: a commit is not synced to disk on its own. A killed
        // process loses nothing this way; a power loss can lose the last
        // commits, which the next look at the issue rebuilds.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        // Every statement is prepared once per connection (parsing them was
        // a fair part of the bot's own time per look).
        conn.set_prepared_statement_cache_capacity(128);
        let owner = format!(
            "{}/{}/{:08x}",
            host_name(),
            std::process::id(),
            rand::random::<u32>()
        );
        LIVE_OWNERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(owner.clone());
        Ok(Store {
            conn: Mutex::new(conn),
            owner,
        })
    }

    /// Open the database only if it is already there (`None` otherwise):
    /// read-only commands must not leave an empty database behind.
    pub fn open_existing(path: &Path) -> Result<Option<Store>, StoreError> {
        if path.as_os_str() != ":memory:" && !path.exists() {
            return Ok(None);
        }
        Store::open(path).map(Some)
    }

    fn c(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn cursor(&self, project: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let v: Option<String> = self
            .c()
            .prepare_cached("SELECT updated_at FROM cursor WHERE project = ?1")?
            .query_row([project], |r| r.get(0))
            .optional()?;
        Ok(v.map(|s| parse_ts(&s)))
    }

    /// Move the cursor forward (never back).
    pub fn advance_cursor(&self, project: &str, to: DateTime<Utc>) -> Result<(), StoreError> {
        let cur = self.cursor(project)?;
        if cur.is_none_or(|c| to > c) {
            self.c()
                .prepare_cached(
                    "INSERT INTO cursor (project, updated_at) VALUES (?1, ?2)
                 ON CONFLICT(project) DO UPDATE SET updated_at = excluded.updated_at",
                )?
                .execute(params![project, ts(to)])?;
        }
        Ok(())
    }

    /// Has this version of the issue been handled already?
    pub fn seen(
        &self,
        project: &str,
        iid: u64,
        updated_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let v: Option<String> = self
            .c()
            .prepare_cached("SELECT updated_at FROM seen WHERE project = ?1 AND iid = ?2")?
            .query_row(params![project, iid], |r| r.get(0))
            .optional()?;
        Ok(v.is_some_and(|s| parse_ts(&s) >= updated_at))
    }

    pub fn mark_seen(
        &self,
        project: &str,
        iid: u64,
        updated_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.c()
            .prepare_cached(
                "INSERT INTO seen (project, iid, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(project, iid) DO UPDATE SET updated_at = excluded.updated_at",
            )?
            .execute(params![project, iid, ts(updated_at)])?;
        Ok(())
    }

    pub fn forget_seen(&self, project: &str, iid: u64) -> Result<(), StoreError> {
        self.c()
            .prepare_cached("DELETE FROM seen WHERE project = ?1 AND iid = ?2")?
            .execute(params![project, iid])?;
        Ok(())
    }

    /// What the notes cache of an issue holds, without its notes: `None`
    /// when there is none (the caller then reads them all).
    pub fn notes_head(&self, project: &str, iid: u64) -> Result<Option<NotesHead>, StoreError> {
        let c = self.c();
        let head: Option<(u64, Option<String>, Option<String>)> = c
            .prepare_cached(
                "SELECT bot, read_at, newest_edit FROM note_read WHERE project = ?1 AND iid = ?2",
            )?
            .query_row(params![project, iid], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((bot, read_at, newest_edit)) = head else {
            return Ok(None);
        };
        let comments: u64 = c
            .prepare_cached(
                "SELECT COUNT(*) FROM note_row WHERE project = ?1 AND iid = ?2 AND system = 0",
            )?
            .query_row(params![project, iid], |r| r.get(0))?;
        // A time that does not read makes no cache: the caller reads all.
        let time = |s: Option<String>| -> Result<Option<DateTime<Utc>>, StoreError> {
            s.map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|d| d.with_timezone(&Utc))
                    .map_err(|e| StoreError::Busy(format!("a cached notes time {s:?}: {e}")))
            })
            .transpose()
        };
        Ok(Some(NotesHead {
            bot,
            read_at: time(read_at)?,
            newest_edit: time(newest_edit)?,
            comments,
        }))
    }

    /// The cached versions of these notes, by id (those the cache has).
    pub fn cached_versions(
        &self,
        project: &str,
        iid: u64,
        ids: &[u64],
    ) -> Result<BTreeMap<u64, CachedNote>, StoreError> {
        let c = self.c();
        let mut st = c.prepare_cached(
            "SELECT updated_at, note FROM note_row WHERE project = ?1 AND iid = ?2 AND id = ?3",
        )?;
        let mut found = BTreeMap::new();
        for &id in ids {
            let row: Option<(String, Option<String>)> = st
                .query_row(params![project, iid, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((at, note)) = row {
                found.insert(
                    id,
                    CachedNote {
                        updated_at: parse_ts(&at),
                        note: note.map(|n| serde_json::from_str(&n)).transpose()?,
                    },
                );
            }
        }
        Ok(found)
    }

    /// The notes whose text the cache keeps, oldest first.
    pub fn kept_notes(
        &self,
        project: &str,
        iid: u64,
    ) -> Result<Vec<crate::gitlab::TimedNote>, StoreError> {
        let c = self.c();
        let mut st = c.prepare_cached(
            "SELECT updated_at, note FROM note_row
             WHERE project = ?1 AND iid = ?2 AND note IS NOT NULL",
        )?;
        let rows = st.query_map(params![project, iid], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut notes = Vec::new();
        for row in rows {
            let (at, text) = row?;
            let note = serde_json::from_str(&text)?;
            notes.push(crate::gitlab::TimedNote {
                note,
                updated_at: parse_ts(&at),
            });
        }
        notes.sort_by_key(|n| (n.note.created_at, n.note.id));
        Ok(notes)
    }

    /// Add or replace these notes in the cache and record the read, in one
    /// transaction (a cache missing a note it claims to have read would hide
    /// it). `whole`: the notes are all there are, replacing the cache. A note
    /// is stored with its text only if `keep_text` says so.
    pub fn store_notes(
        &self,
        project: &str,
        iid: u64,
        bot: u64,
        read: &crate::gitlab::NoteRead,
        whole: bool,
        keep_text: impl Fn(&crate::request::Note) -> bool,
    ) -> Result<(), StoreError> {
        let mut c = self.c();
        let tx = c.transaction()?;
        if whole {
            tx.prepare_cached("DELETE FROM note_row WHERE project = ?1 AND iid = ?2")?
                .execute(params![project, iid])?;
        }
        let old_newest: Option<String> = if whole {
            None
        } else {
            tx.prepare_cached("SELECT newest_edit FROM note_read WHERE project = ?1 AND iid = ?2")?
                .query_row(params![project, iid], |r| r.get(0))
                .optional()?
                .flatten()
        };
        let mut newest = old_newest.map(|s| parse_ts(&s));
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO note_row (project, iid, id, updated_at, system, note)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(project, iid, id) DO UPDATE SET
                   updated_at = excluded.updated_at, system = excluded.system, note = excluded.note",
            )?;
            for n in &read.notes {
                let text = if keep_text(&n.note) {
                    Some(serde_json::to_string(&n.note)?)
                } else {
                    None
                };
                st.execute(params![
                    project,
                    iid,
                    n.note.id,
                    ts_exact(n.updated_at),
                    n.note.system,
                    text
                ])?;
                newest = newest.max(Some(n.updated_at));
            }
        }
        tx.prepare_cached(
            "INSERT INTO note_read (project, iid, bot, read_at, newest_edit) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(project, iid) DO UPDATE SET bot = excluded.bot,
               read_at = excluded.read_at, newest_edit = excluded.newest_edit",
        )?
        .execute(params![
            project,
            iid,
            bot,
            read.read_at.map(ts_exact),
            newest.map(ts_exact)
        ])?;
        tx.commit()?;
        Ok(())
    }

    pub fn forget_notes(&self, project: &str, iid: u64) -> Result<(), StoreError> {
        let mut c = self.c();
        let tx = c.transaction()?;
        tx.prepare_cached("DELETE FROM note_read WHERE project = ?1 AND iid = ?2")?
            .execute(params![project, iid])?;
        tx.prepare_cached("DELETE FROM note_row WHERE project = ?1 AND iid = ?2")?
            .execute(params![project, iid])?;
        tx.commit()?;
        Ok(())
    }

    pub fn add_retry(&self, project: &str, iid: u64, reason: &str) -> Result<(), StoreError> {
        self.c()
            .prepare_cached(
                "INSERT INTO retry (project, iid, reason) VALUES (?1, ?2, ?3)
             ON CONFLICT(project, iid) DO UPDATE SET reason = excluded.reason",
            )?
            .execute(params![project, iid, reason])?;
        Ok(())
    }

    pub fn clear_retry(&self, project: &str, iid: u64) -> Result<(), StoreError> {
        self.c()
            .prepare_cached("DELETE FROM retry WHERE project = ?1 AND iid = ?2")?
            .execute(params![project, iid])?;
        Ok(())
    }

    pub fn retries(&self, project: &str) -> Result<Vec<u64>, StoreError> {
        let c = self.c();
        let mut st = c.prepare_cached("SELECT iid FROM retry WHERE project = ?1 ORDER BY iid")?;
        let rows = st.query_map([project], |r| r.get::<_, u64>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Take the lease on an issue, unless another live holder has it: one
    /// that renewed it within `LEASE_STALE_AFTER` and is not known to be gone.
    pub fn try_lease(&self, project: &str, iid: u64) -> Result<bool, StoreError> {
        let now = Utc::now();
        let c = self.c();
        let held: Option<(String, String)> = c
            .prepare_cached(
                "SELECT owner, heartbeat FROM issue_lease WHERE project = ?1 AND iid = ?2",
            )?
            .query_row(params![project, iid], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match held {
            None => {
                let n = c.prepare_cached("INSERT OR IGNORE INTO issue_lease (project, iid, owner, heartbeat) VALUES (?1, ?2, ?3, ?4)")?.execute(
                    params![project, iid, self.owner, ts(now)],
                )?;
                Ok(n == 1)
            }
            Some((owner, beat)) => {
                let free = owner == self.owner
                    || parse_ts(&beat) + LEASE_STALE_AFTER < now
                    || owner_is_gone(&owner);
                if !free {
                    return Ok(false);
                }
                // Compare and swap: only if nobody took it meanwhile.
                let n = c
                    .prepare_cached(
                        "UPDATE issue_lease SET owner = ?3, heartbeat = ?4
                     WHERE project = ?1 AND iid = ?2 AND owner = ?5 AND heartbeat = ?6",
                    )?
                    .execute(params![project, iid, self.owner, ts(now), owner, beat])?;
                if n == 1 && owner != self.owner {
                    tracing::info!(iid, previous = %owner, "took over the lease of a holder that is gone");
                }
                Ok(n == 1)
            }
        }
    }

    /// Who holds leases through this handle (`host/pid/nonce`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// A sign of life for every lease this handle holds.
    pub fn heartbeat(&self) -> Result<(), StoreError> {
        self.c()
            .prepare_cached("UPDATE issue_lease SET heartbeat = ?2 WHERE owner = ?1")?
            .execute(params![self.owner, ts(Utc::now())])?;
        Ok(())
    }

    pub fn release(&self, project: &str, iid: u64) -> Result<(), StoreError> {
        self.c()
            .prepare_cached(
                "DELETE FROM issue_lease WHERE project = ?1 AND iid = ?2 AND owner = ?3",
            )?
            .execute(params![project, iid, self.owner])?;
        Ok(())
    }

    /// Append an audit row, synced to disk at once: the audit trail survives
    /// a power loss too (and with this commit, everything committed before it).
    #[allow(clippy::too_many_arguments)]
    pub fn audit(
        &self,
        project: &str,
        iid: u64,
        subject: &str,
        instance: &str,
        action: &str,
        before: &str,
        after: &str,
        approvers: &str,
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.audit_row(
            project, iid, subject, instance, action, before, after, approvers, outcome, true,
        )
    }

    /// Append an audit row that a killed process keeps (it is committed), but
    /// that reaches the disk only with the next synced commit: a run of steps
    /// records each row this way and then calls [`Store::sync_audit`] once,
    /// before anything reports the steps.
    #[allow(clippy::too_many_arguments)]
    pub fn audit_unsynced(
        &self,
        project: &str,
        iid: u64,
        subject: &str,
        instance: &str,
        action: &str,
        before: &str,
        after: &str,
        approvers: &str,
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.audit_row(
            project, iid, subject, instance, action, before, after, approvers, outcome, false,
        )
    }

    /// Sync to disk every audit row committed so far (one synced commit: in
    /// write-ahead-log mode it carries all the commits before it).
    pub fn sync_audit(&self) -> Result<(), StoreError> {
        let c = self.c();
        c.pragma_update(None, "synchronous", "FULL")?;
        let r = c
            .prepare_cached(
                "INSERT INTO counter (name, value) VALUES ('audit_syncs', 1)
             ON CONFLICT(name) DO UPDATE SET value = value + 1",
            )?
            .execute([]);
        c.pragma_update(None, "synchronous", "NORMAL")?;
        r?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn audit_row(
        &self,
        project: &str,
        iid: u64,
        subject: &str,
        instance: &str,
        action: &str,
        before: &str,
        after: &str,
        approvers: &str,
        outcome: &str,
        sync: bool,
    ) -> Result<(), StoreError> {
        let c = self.c();
        if sync {
            c.pragma_update(None, "synchronous", "FULL")?;
        }
        let inserted = c.prepare_cached("INSERT INTO audit (at, project, iid, subject, instance, action, before, after, approvers, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)")?.execute(
            params![ts(Utc::now()), project, iid, subject, instance, action, before, after, approvers, outcome],
        );
        if sync {
            c.pragma_update(None, "synchronous", "NORMAL")?;
        }
        inserted?;
        Ok(())
    }

    pub fn audit_rows(&self, q: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT id, at, project, iid, subject, instance, action, before, after, approvers, outcome
             FROM audit
             WHERE (?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR subject = ?2)
               AND (?3 IS NULL OR project = ?3) AND (?4 IS NULL OR iid = ?4)
             ORDER BY id",
        )?;
        let rows = st.query_map(
            params![
                q.since.map(ts),
                q.subject.as_ref().map(|s| s.to_ascii_lowercase()),
                q.project,
                q.iid
            ],
            |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    at: parse_ts(&r.get::<_, String>(1)?),
                    project: r.get(2)?,
                    iid: r.get(3)?,
                    subject: r.get(4)?,
                    instance: r.get(5)?,
                    action: r.get(6)?,
                    before: r.get(7)?,
                    after: r.get(8)?,
                    approvers: r.get(9)?,
                    outcome: r.get(10)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// One grant per plan, person and instance; the first record wins (it
    /// was computed before the first write).
    pub fn record_grant(&self, g: &Grant) -> Result<(), StoreError> {
        self.c().prepare_cached("INSERT INTO time_bound_grant (project, iid, plan, subject, instance, undo, expires, reminded, revoked, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, ?8)
             ON CONFLICT(project, iid, plan, subject, instance) DO NOTHING")?.execute(
            params![g.project, g.iid, g.plan, g.subject, g.instance, g.undo, g.expires.to_string(), ts(Utc::now())],
        )?;
        Ok(())
    }

    /// A grant read from its issue: recorded if new; reminded and revoked as
    /// the issue says (never set back).
    pub fn adopt_grant(&self, g: &Grant, reminded: bool, revoked: bool) -> Result<(), StoreError> {
        self.record_grant(g)?;
        self.c().prepare_cached("UPDATE time_bound_grant SET reminded = MAX(reminded, ?6), revoked = MAX(revoked, ?7)
             WHERE project = ?1 AND iid = ?2 AND plan = ?3 AND subject = ?4 AND instance = ?5")?.execute(
            params![
                g.project,
                g.iid,
                g.plan,
                g.subject,
                g.instance,
                reminded as i64,
                revoked as i64
            ],
        )?;
        Ok(())
    }

    /// Every time-bound grant, newest first (so that undoing them in this
    /// order restores what was there before each).
    pub fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT project, iid, plan, subject, instance, undo, expires, reminded, revoked
             FROM time_bound_grant ORDER BY at DESC, rowid DESC",
        )?;
        let rows = st.query_map([], |r| {
            Ok(Grant {
                project: r.get(0)?,
                iid: r.get(1)?,
                plan: r.get(2)?,
                subject: r.get(3)?,
                instance: r.get(4)?,
                undo: r.get(5)?,
                expires: r
                    .get::<_, String>(6)?
                    .parse()
                    .unwrap_or(chrono::NaiveDate::MAX),
                reminded: r.get::<_, i64>(7)? != 0,
                revoked: r.get::<_, i64>(8)? != 0,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Access was taken away (an offboarding, a time-bound grant ending):
    /// what requests gave this person in this instance is no longer in force.
    pub fn end_holdings(
        &self,
        subject: &str,
        instance: &str,
        day: chrono::NaiveDate,
        only: Option<(&str, u64)>,
    ) -> Result<(), StoreError> {
        match only {
            Some((project, iid)) => self
                .c()
                .prepare_cached(
                    "UPDATE holding SET expires = ?3 WHERE subject = ?1 AND instance = ?2
                   AND (expires IS NULL OR expires > ?3) AND project = ?4 AND iid = ?5",
                )?
                .execute(params![subject, instance, day.to_string(), project, iid])?,
            None => self
                .c()
                .prepare_cached(
                    "UPDATE holding SET expires = ?3 WHERE subject = ?1 AND instance = ?2
                   AND (expires IS NULL OR expires > ?3)",
                )?
                .execute(params![subject, instance, day.to_string()])?,
        };
        Ok(())
    }

    /// What a completed request gives, all of it or none (one commit).
    pub fn record_holdings(&self, holdings: &[Holding]) -> Result<(), StoreError> {
        let mut c = self.c();
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached("INSERT INTO holding (project, iid, subject, instance, what, expires, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(project, iid, subject, instance, what) DO UPDATE SET expires = excluded.expires, at = excluded.at")?;
            for h in holdings {
                st.execute(params![
                    h.project,
                    h.iid,
                    h.subject,
                    h.instance,
                    h.what,
                    h.expires.map(|d| d.to_string()),
                    ts(h.at)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// What other issues give this person in this instance and still hold on
    /// `day`: permanent, or ending after it.
    pub fn other_holdings(
        &self,
        project: &str,
        iid: u64,
        subject: &str,
        instance: &str,
        day: chrono::NaiveDate,
    ) -> Result<Vec<Holding>, StoreError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT project, iid, subject, instance, what, expires, at FROM holding
             WHERE subject = ?1 AND instance = ?2 AND NOT (project = ?3 AND iid = ?4)
               AND (expires IS NULL OR expires > ?5)",
        )?;
        let rows = st.query_map(
            params![subject, instance, project, iid, day.to_string()],
            |r| {
                Ok(Holding {
                    project: r.get(0)?,
                    iid: r.get(1)?,
                    subject: r.get(2)?,
                    instance: r.get(3)?,
                    what: r.get(4)?,
                    expires: r.get::<_, Option<String>>(5)?.and_then(|d| d.parse().ok()),
                    at: parse_ts(&r.get::<_, String>(6)?),
                })
            },
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn mark_grant(
        &self,
        project: &str,
        iid: u64,
        reminded: bool,
        revoked: bool,
    ) -> Result<(), StoreError> {
        self.c().prepare_cached("UPDATE time_bound_grant SET reminded = MAX(reminded, ?3), revoked = MAX(revoked, ?4) WHERE project = ?1 AND iid = ?2")?.execute(
            params![project, iid, reminded as i64, revoked as i64],
        )?;
        Ok(())
    }
}

/// A merge request deleting a leaver's Support Team file, followed until merged.
#[derive(Debug, Clone, PartialEq)]
pub struct SupportMr {
    pub project: String,
    pub iid: u64,
    pub username: String,
    /// `none` (no file), `open`, `merged`, `closed`.
    pub state: String,
    pub mr_iid: Option<u64>,
    pub mr_url: Option<String>,
}

impl Store {
    pub fn notice_sent_at(&self, key: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .c()
            .prepare_cached("SELECT sent_at FROM notice WHERE key = ?1")?
            .query_row(params![key], |r| r.get::<_, String>(0))
            .optional()?
            .map(|s| parse_ts(&s)))
    }

    pub fn notices_since(&self, since: DateTime<Utc>) -> Result<usize, StoreError> {
        Ok(self
            .c()
            .prepare_cached("SELECT COUNT(*) FROM notice_sent WHERE at > ?1")?
            .query_row(params![ts(since)], |r| r.get::<_, i64>(0))? as usize)
    }

    pub fn bump_suppressed(&self) -> Result<(), StoreError> {
        self.c()
            .prepare_cached(
                "INSERT INTO counter (name, value) VALUES ('suppressed_notices', 1)
             ON CONFLICT(name) DO UPDATE SET value = value + 1",
            )?
            .execute([])?;
        Ok(())
    }

    pub fn suppressed(&self) -> Result<u64, StoreError> {
        Ok(self
            .c()
            .prepare_cached("SELECT value FROM counter WHERE name = 'suppressed_notices'")?
            .query_row([], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64)
    }

    /// A notice went out; the suppressed ones it mentioned are accounted for.
    pub fn record_notice(
        &self,
        key: &str,
        at: DateTime<Utc>,
        mentioned: u64,
    ) -> Result<(), StoreError> {
        let c = self.c();
        c.prepare_cached("INSERT INTO notice (key, sent_at) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET sent_at = ?2")?.execute(
            params![key, ts(at)],
        )?;
        c.prepare_cached("INSERT INTO notice_sent (at) VALUES (?1)")?
            .execute(params![ts(at)])?;
        c.prepare_cached(
            "UPDATE counter SET value = MAX(0, value - ?1) WHERE name = 'suppressed_notices'",
        )?
        .execute(params![mentioned as i64])?;
        Ok(())
    }

    /// Take back a notice recorded before it was sent, when no channel took it.
    pub fn unrecord_notice(
        &self,
        key: &str,
        at: DateTime<Utc>,
        mentioned: u64,
    ) -> Result<(), StoreError> {
        let c = self.c();
        c.prepare_cached("DELETE FROM notice WHERE key = ?1 AND sent_at = ?2")?
            .execute(params![key, ts(at)])?;
        c.prepare_cached("DELETE FROM notice_sent WHERE rowid IN (SELECT rowid FROM notice_sent WHERE at = ?1 LIMIT 1)")?.execute(
            params![ts(at)],
        )?;
        c.prepare_cached(
            "UPDATE counter SET value = value + ?1 WHERE name = 'suppressed_notices'",
        )?
        .execute(params![mentioned as i64])?;
        Ok(())
    }

    /// What was recorded for a delivery key, if anything.
    pub fn delivery(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .c()
            .prepare_cached("SELECT detail FROM delivery WHERE key = ?1")?
            .query_row(params![key], |r| r.get(0))
            .optional()?)
    }

    pub fn record_delivery(&self, key: &str, detail: &str) -> Result<(), StoreError> {
        self.c().prepare_cached("INSERT INTO delivery (key, at, detail) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO NOTHING")?.execute(
            params![key, ts(Utc::now()), detail],
        )?;
        Ok(())
    }

    /// Record how far a delivery got, replacing what was recorded before.
    pub fn set_delivery(&self, key: &str, detail: &str) -> Result<(), StoreError> {
        self.c().prepare_cached("INSERT INTO delivery (key, at, detail) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO UPDATE SET at = ?2, detail = ?3")?.execute(
            params![key, ts(Utc::now()), detail],
        )?;
        Ok(())
    }

    fn support_mr_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SupportMr> {
        Ok(SupportMr {
            project: r.get(0)?,
            iid: r.get(1)?,
            username: r.get(2)?,
            state: r.get(3)?,
            mr_iid: r.get(4)?,
            mr_url: r.get(5)?,
        })
    }

    pub fn support_mr(
        &self,
        project: &str,
        iid: u64,
        username: &str,
    ) -> Result<Option<SupportMr>, StoreError> {
        Ok(self
            .c()
            .prepare_cached(
                "SELECT project, iid, username, state, mr_iid, mr_url FROM support_mr
                 WHERE project = ?1 AND iid = ?2 AND username = ?3",
            )?
            .query_row(params![project, iid, username], Store::support_mr_row)
            .optional()?)
    }

    pub fn open_support_mrs(&self) -> Result<Vec<SupportMr>, StoreError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT project, iid, username, state, mr_iid, mr_url FROM support_mr WHERE state = 'open'",
        )?;
        let rows = st.query_map([], Store::support_mr_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn set_support_mr(&self, m: &SupportMr) -> Result<(), StoreError> {
        self.c().prepare_cached("INSERT INTO support_mr (project, iid, username, state, mr_iid, mr_url, checked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(project, iid, username) DO UPDATE SET state = ?4, mr_iid = ?5, mr_url = ?6, checked_at = ?7")?.execute(
            params![m.project, m.iid, m.username, m.state, m.mr_iid, m.mr_url, ts(Utc::now())],
        )?;
        Ok(())
    }
}

/// A person listed on a seat review issue, exactly as the bot wrote them
/// (recorded on the issue, in the bot's sealed list notes).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SeatCandidateRow {
    pub instance: String,
    pub period: String,
    pub email: String,
    pub zendesk_id: u64,
    /// JSON of the fields the template rendered (frozen, so the line never changes).
    pub fields: String,
    /// The checklist item's text as rendered: a tick counts only on this exact text.
    pub item_text: String,
    pub listed_at: DateTime<Utc>,
    /// Known from the bot's notes on the issue, not recorded with the line.
    #[serde(skip)]
    pub reclaimed: bool,
}

impl Store {
    /// The review issue of an instance and period, if one was opened.
    pub fn seat_review(
        &self,
        instance: &str,
        period: &str,
    ) -> Result<Option<(String, u64)>, StoreError> {
        Ok(self
            .c()
            .prepare_cached(
                "SELECT project, iid FROM seat_review WHERE instance = ?1 AND period = ?2",
            )?
            .query_row(params![instance, period], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    pub fn record_seat_review(
        &self,
        instance: &str,
        period: &str,
        project: &str,
        iid: u64,
    ) -> Result<(), StoreError> {
        self.c()
            .prepare_cached(
                "INSERT INTO seat_review (project, iid, instance, period) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(instance, period) DO NOTHING",
            )?
            .execute(params![project, iid, instance, period])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::open(Path::new(":memory:")).unwrap()
    }

    #[test]
    fn holdings_are_recorded_together_and_again_without_duplicates() {
        let s = store();
        let day = |d: &str| d.parse::<chrono::NaiveDate>().unwrap();
        let holding = |iid: u64, what: &str, expires: Option<&str>| Holding {
            project: "p".into(),
            iid,
            subject: "a@x.com".into(),
            instance: "global".into(),
            what: what.into(),
            expires: expires.map(day),
            at: Utc::now(),
        };
        let given = [
            holding(1, "level:light", Some("2026-12-31")),
            holding(1, "tag:t", Some("2026-12-31")),
            holding(1, "group:g", Some("2026-12-31")),
        ];
        s.record_holdings(&given).unwrap();
        // Recorded again (a crash before the result, or a later look): one row
        // each, the new end date kept.
        let later = given.clone().map(|mut h| {
            h.expires = None;
            h
        });
        s.record_holdings(&later).unwrap();
        s.record_holdings(&[]).unwrap();
        let mut seen = s
            .other_holdings("p", 2, "a@x.com", "global", day("2027-06-01"))
            .unwrap();
        seen.sort_by(|a, b| a.what.cmp(&b.what));
        let whats: Vec<(&str, Option<chrono::NaiveDate>)> =
            seen.iter().map(|h| (h.what.as_str(), h.expires)).collect();
        assert_eq!(
            whats,
            [("group:g", None), ("level:light", None), ("tag:t", None)]
        );
        // The issue's own holdings are not "other".
        assert!(
            s.other_holdings("p", 1, "a@x.com", "global", day("2026-12-01"))
                .unwrap()
                .is_empty()
        );
    }

    fn timed(
        id: u64,
        author: u64,
        system: bool,
        body: &str,
        edit: i64,
    ) -> crate::gitlab::TimedNote {
        let t0 = DateTime::parse_from_rfc3339("2026-11-30T10:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        crate::gitlab::TimedNote {
            note: crate::request::Note {
                id,
                author: crate::request::UserRef {
                    id: author,
                    username: format!("u{author}"),
                },
                body: body.into(),
                created_at: t0,
                system,
            },
            updated_at: t0 + chrono::Duration::seconds(edit),
        }
    }

    fn read(
        notes: &[crate::gitlab::TimedNote],
        read_at: Option<DateTime<Utc>>,
    ) -> crate::gitlab::NoteRead {
        crate::gitlab::NoteRead {
            notes: notes.to_vec(),
            read_at,
        }
    }

    /// The notes cache keeps a row per note and the text only of the notes
    /// asked for; a partial store adds to it, a whole one replaces it, and
    /// edit times come back exactly as stored.
    #[test]
    fn the_notes_cache_adds_what_changed_and_keeps_only_the_text_asked_for() {
        let s = store();
        let bot = 7;
        let keep = |n: &crate::request::Note| n.system || n.author.id == bot;
        assert_eq!(s.notes_head("g/p", 1).unwrap(), None);
        let read_at = Utc::now();
        let first = vec![
            timed(1, bot, false, "plan", 0),
            timed(2, 3, false, "a comment", 1),
            timed(3, 3, true, "changed the description", 2),
        ];
        s.store_notes("g/p", 1, bot, &read(&first, Some(read_at)), true, keep)
            .unwrap();
        let head = s.notes_head("g/p", 1).unwrap().unwrap();
        assert_eq!(head.bot, bot);
        assert_eq!(head.read_at, Some(read_at));
        assert_eq!(head.newest_edit, Some(first[2].updated_at));
        assert_eq!(head.comments, 2);
        let kept = s.kept_notes("g/p", 1).unwrap();
        assert_eq!(kept.iter().map(|n| n.note.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(kept[1].updated_at, first[2].updated_at, "rounded off");
        let v = s.cached_versions("g/p", 1, &[1, 2, 9]).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[&2].note, None, "another's comment is kept as a time only");
        assert_eq!(v[&1].note.as_ref(), Some(&first[0].note));

        // A later look adds a comment and an edit of the plan.
        let later = vec![
            timed(4, 3, false, "any news?", 5),
            timed(1, bot, false, "plan v2", 6),
        ];
        s.store_notes("g/p", 1, bot, &read(&later, None), false, keep)
            .unwrap();
        let head = s.notes_head("g/p", 1).unwrap().unwrap();
        assert_eq!(head.comments, 3);
        assert_eq!(head.read_at, None);
        assert_eq!(head.newest_edit, Some(later[1].updated_at));
        let kept = s.kept_notes("g/p", 1).unwrap();
        assert_eq!(kept[0].note.body, "plan v2");
        assert_eq!(kept.len(), 2);
        // Another issue's cache is apart.
        assert_eq!(s.notes_head("g/p", 2).unwrap(), None);

        // A whole read replaces it.
        s.store_notes("g/p", 1, bot, &read(&first[..1], None), true, keep)
            .unwrap();
        assert_eq!(s.notes_head("g/p", 1).unwrap().unwrap().comments, 1);
        assert_eq!(s.kept_notes("g/p", 1).unwrap().len(), 1);
        s.forget_notes("g/p", 1).unwrap();
        assert_eq!(s.notes_head("g/p", 1).unwrap(), None);
        assert!(s.kept_notes("g/p", 1).unwrap().is_empty());
    }

    /// A rehearsal's copy leaves the file exactly as it was, even a file of
    /// an older schema that opening it as a store would change, and works
    /// on a file it may not write.
    #[test]
    fn a_copy_of_the_file_reads_it_and_writes_nothing_to_it() {
        let dir = std::env::temp_dir().join(format!("ab-store-copy-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        {
            let s = Store::open(&path).unwrap();
            let t = Utc::now();
            s.advance_cursor("g/p", t).unwrap();
            // A table this version's schema drops.
            s.c()
                .execute_batch("CREATE TABLE seat_candidate (x INTEGER);")
                .unwrap();
            s.c().pragma_update(None, "journal_mode", "DELETE").unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        let copy = Store::copy_of_file(&path).unwrap().unwrap();
        assert!(
            copy.cursor("g/p").unwrap().is_some(),
            "the copy has what the file has"
        );
        copy.advance_cursor("g/q", Utc::now()).unwrap();
        drop(copy);
        assert_eq!(std::fs::read(&path).unwrap(), before, "the file changed");
        assert!(Store::copy_of_file(&dir.join("none.db")).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cursor_only_moves_forward() {
        let s = store();
        let t1 = Utc::now();
        let t0 = t1 - chrono::Duration::hours(1);
        s.advance_cursor("p", t1).unwrap();
        s.advance_cursor("p", t0).unwrap();
        assert_eq!(
            s.cursor("p").unwrap().map(|t| t.timestamp_millis()),
            Some(t1.timestamp_millis())
        );
    }

    #[test]
    fn audit_is_append_only() {
        let s = store();
        s.audit(
            "p", 1, "a@x.com", "global", "create", "{}", "{}", "mlee", "ok",
        )
        .unwrap();
        assert!(s.c().execute("UPDATE audit SET outcome = 'x'", []).is_err());
        assert!(s.c().execute("DELETE FROM audit", []).is_err());
        let rows = s
            .audit_rows(&AuditQuery {
                subject: Some("A@X.com".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn unsynced_audit_rows_are_committed_and_a_sync_leaves_the_connection_unsynced() {
        let dir = std::env::temp_dir().join(format!("ab-store-sync-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        let s = Store::open(&path).unwrap();
        for i in 0..3 {
            s.audit_unsynced(
                "p",
                1,
                "a@x.com",
                "global",
                &format!("step{i}"),
                "",
                "{}",
                "mlee",
                "ok",
            )
            .unwrap();
        }
        s.sync_audit().unwrap();
        s.sync_audit().unwrap();
        let sync: i64 = s
            .c()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        // 1 = NORMAL: only the audit's commits are synced to disk.
        assert_eq!(sync, 1);
        let syncs: i64 = s
            .c()
            .query_row(
                "SELECT value FROM counter WHERE name = 'audit_syncs'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(syncs, 2);
        drop(s);
        // Committed: another connection (a restarted process) reads them.
        let again = Store::open(&path).unwrap();
        let rows = again.audit_rows(&AuditQuery::default()).unwrap();
        let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(actions, ["step0", "step1", "step2"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn leases_exclude_live_owners_and_pass_from_gone_ones() {
        let dir = std::env::temp_dir().join(format!("ab-lease-{}.db", rand::random::<u32>()));
        let a = Store::open(&dir).unwrap();
        let b = Store::open(&dir).unwrap();
        assert!(a.try_lease("p", 1).unwrap());
        assert!(a.try_lease("p", 1).unwrap(), "re-entrant for its owner");
        assert!(!b.try_lease("p", 1).unwrap(), "a live holder keeps it");
        a.release("p", 1).unwrap();
        assert!(b.try_lease("p", 1).unwrap());
        assert!(!a.try_lease("p", 1).unwrap());
        // A holder that stopped renewing loses it.
        b.c()
            .execute(
                "UPDATE issue_lease SET heartbeat = ?1",
                params![ts(Utc::now()
                    - LEASE_STALE_AFTER
                    - chrono::Duration::seconds(1))],
            )
            .unwrap();
        assert!(a.try_lease("p", 1).unwrap());
        // A holder that is gone (its handle dropped: the bot was killed and
        // restarted) loses it at once, heartbeat or not.
        assert!(a.try_lease("p", 2).unwrap());
        a.heartbeat().unwrap();
        drop(a);
        assert!(b.try_lease("p", 2).unwrap());
        // A process on this host that no longer runs.
        b.c()
            .execute(
                "UPDATE issue_lease SET owner = ?1 WHERE iid = 2",
                params![format!("{}/{}/00000000", host_name(), u32::MAX - 7)],
            )
            .unwrap();
        let c = Store::open(&dir).unwrap();
        assert_eq!(c.try_lease("p", 2).unwrap(), cfg!(target_os = "linux"));
        // Another host's holder is judged by its heartbeat only.
        c.c()
            .execute(
                "UPDATE issue_lease SET owner = 'elsewhere/1/00000000', heartbeat = ?1 WHERE iid = 2",
                params![ts(Utc::now())],
            )
            .unwrap();
        assert!(!c.try_lease("p", 2).unwrap());
        let _ = std::fs::remove_file(&dir);
    }
}
