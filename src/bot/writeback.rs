//! Saying it on the issue: at most one new note per cycle, sealed with one
//! marker, then one edit (ticks, state label, close) made on a fresh read.

use std::collections::BTreeSet;

use crate::approval::{History, Record};
use crate::comment::{Comment, NoteKind};
use crate::gitlab::{ApiIssue, IssueEdit};
use crate::marker::Marker;
use crate::request::{self, checklist};

use super::Bot;
use super::process::ProcessError;

/// One part of a note, posted unless a note on the issue already reported its key.
pub(super) struct Section {
    pub comment: Comment,
    pub key: String,
}

/// Which boxes to tick.
#[derive(Default)]
pub(super) enum Ticks {
    #[default]
    None,
    /// Items by text (and occurrence among items with that text).
    ByText(Vec<(String, usize)>),
    /// The request's own items by ordinal, only if the request still has this
    /// digest when the issue is read right before the edit.
    Request {
        ordinals: BTreeSet<usize>,
        digest: String,
        author_email: Option<String>,
        author_name: Option<String>,
    },
}

/// What to write back to the issue at the end of the cycle.
#[derive(Default)]
pub(super) struct Writeback {
    /// What the note is (`plan`, `result`, …); `note` when unset.
    pub kind: NoteKind,
    /// The request digest the note is about.
    pub digest: String,
    /// Further marker fields (`done`, `after`, `ticks`, `plan`).
    pub fields: Vec<(&'static str, String)>,
    pub sections: Vec<Section>,
    pub ticks: Ticks,
    pub state_label: Option<String>,
    /// Labels beside the state label (e.g. the time-bound grant's).
    pub add_labels: Vec<String>,
    pub remove_labels: Vec<String>,
    pub close: bool,
    /// Post the note and stop: no read and no edit of the issue (the caller
    /// edits it itself, after a run of notes).
    pub note_only: bool,
}

/// A note's sections joined, capped: GitLab refuses notes over 1,000,000
/// characters, and nobody reads a comment that long anyway.
const MAX_NOTE: usize = 60_000;

impl Bot {
    /// Post the note (sections not yet on the issue) and make the edit.
    /// Returns the bot's record of the note it posted.
    pub(super) async fn write_back(
        &self,
        project: &str,
        issue: &ApiIssue,
        history: &History,
        wb: Writeback,
    ) -> Result<Option<Record>, ProcessError> {
        // Checked right before writing: a replica whose time ran out stops.
        if !self.may_write(project) {
            return Err(ProcessError::NotActive);
        }
        let existing = history.keys();
        let mut parts = Vec::new();
        let mut keys = Vec::new();
        for s in &wb.sections {
            let key = crate::marker::clean(&s.key).replace(',', "_");
            if existing.contains(&key) || keys.contains(&key) {
                continue;
            }
            // A comment always sealed in one kind of note is in that kind.
            debug_assert!(
                s.comment.kind().is_none_or(|k| k == wb.kind),
                "{} in a {:?} note",
                s.comment.template(),
                wb.kind
            );
            parts.push(s.comment.render(&self.templates)?);
            keys.push(key);
        }
        let mut record = None;
        if !parts.is_empty() {
            let mut body = parts.join("\n---\n\n");
            if body.len() > MAX_NOTE {
                let cut = (0..=MAX_NOTE)
                    .rev()
                    .find(|i| body.is_char_boundary(*i))
                    .unwrap_or(0);
                body.truncate(cut);
                body.push_str("\n\n*(cut: this comment was too long)*\n");
            }
            let mut marker = Marker::new(wb.kind.as_str(), keys, &wb.digest);
            for (k, v) in &wb.fields {
                marker = marker.with(k, v);
            }
            let sealed = marker.seal(&self.marker_key, project, issue.iid, &body);
            let note = self.gitlab.create_note(project, issue.iid, &sealed).await?;
            // Read back exactly as the next cycle will: a note that does not
            // verify would not count.
            match Marker::open(&self.marker_key, project, issue.iid, &note.body) {
                Ok(m) => {
                    record = Some(Record {
                        note_id: note.id,
                        at: note.created_at,
                        marker: m,
                        content: Marker::content_of(&note.body).to_string(),
                    })
                }
                Err(e) => {
                    tracing::error!(iid = issue.iid, error = %e, "GitLab changed the bot's note: its marker no longer verifies")
                }
            }
        }

        if wb.note_only {
            return Ok(record);
        }
        // One edit: ticks, state label, close; read the issue right before editing.
        let fresh = self.gitlab.issue(project, issue.iid).await?;
        let description = fresh.description.clone().unwrap_or_default();
        let items = checklist::parse(&description);
        let targets: Vec<usize> = match &wb.ticks {
            Ticks::None => Vec::new(),
            Ticks::ByText(ticks) => ticks
                .iter()
                .filter_map(|(text, n)| checklist::find(&items, text, *n))
                .filter(|i| i.state == checklist::CheckState::Open)
                .map(|i| i.index)
                .collect(),
            Ticks::Request {
                ordinals,
                digest,
                author_email,
                author_name,
            } => {
                let mut input = fresh.to_input();
                input.author_email = author_email.clone();
                input.author_name = author_name.clone();
                match request::parse_request(&input, &self.cfg) {
                    Ok(r) if r.digest() == *digest => r
                        .items
                        .iter()
                        .filter(|i| {
                            ordinals.contains(&i.ordinal) && i.state == checklist::CheckState::Open
                        })
                        .map(|i| i.index)
                        .collect(),
                    _ => {
                        tracing::info!(
                            iid = issue.iid,
                            "the request changed since the bot read it; not ticking"
                        );
                        Vec::new()
                    }
                }
            }
        };
        let mut edit = IssueEdit::default();
        if !targets.is_empty()
            && let Ok(ticked) = checklist::tick(&description, &targets)
        {
            edit.description = Some(ticked);
        }
        if let Some(l) = &wb.state_label {
            if !fresh.labels.contains(l) {
                edit.add_labels.push(l.clone());
            }
            edit.remove_labels = self
                .cfg
                .bot
                .state_labels
                .all()
                .iter()
                .filter(|x| *x != l && fresh.labels.iter().any(|y| y == *x))
                .map(|x| x.to_string())
                .collect();
        }
        for l in &wb.add_labels {
            if !fresh.labels.contains(l) && !edit.add_labels.contains(l) {
                edit.add_labels.push(l.clone());
            }
        }
        for l in &wb.remove_labels {
            if fresh.labels.contains(l) && !edit.remove_labels.contains(l) {
                edit.remove_labels.push(l.clone());
            }
        }
        edit.close = wb.close && fresh.state == "opened";
        // Someone else's change between the read above and the edit: the
        // edit's answer shows it (labels are added and removed relative to
        // what is there), and the bot's edit must not count it as seen.
        let mut raced = false;
        let mut after_edit: Option<ApiIssue> = None;
        let last = if edit != IssueEdit::default() {
            let after = self.gitlab.edit_issue(project, issue.iid, &edit).await?;
            let mut expected: Vec<&String> = fresh
                .labels
                .iter()
                .filter(|l| !edit.remove_labels.contains(l))
                .chain(edit.add_labels.iter().filter(|l| !fresh.labels.contains(l)))
                .collect();
            let mut got: Vec<&String> = after.labels.iter().collect();
            expected.sort();
            expected.dedup();
            got.sort();
            got.dedup();
            after_edit = Some(after.clone());
            raced = got != expected
                || after.title != fresh.title
                || (edit.description.is_none() && after.description != fresh.description);
            if let (Some(ts), Some(_)) = (&after.task_completion_status, &edit.description) {
                let ours = checklist::completion(&checklist::parse(
                    after.description.as_deref().unwrap_or(""),
                ));
                if (ts.count, ts.completed_count) != ours {
                    tracing::warn!(iid = issue.iid, gitlab = ?(ts.count, ts.completed_count), ours = ?ours, "task_completion_status differs from our count (quoted items?)");
                }
            }
            if let Some(l) = &wb.state_label
                && !after.labels.contains(l)
            {
                tracing::error!(
                    iid = issue.iid,
                    "GitLab dropped the label change: the bot needs Reporter (Planner) rights"
                );
            }
            after.updated_at
        } else {
            fresh.updated_at
        };
        // Seen up to the bot's own edit only when nobody else changed the
        // issue since the bot read it for this look: a label or an edit that
        // landed meanwhile was not part of the decision, so the next poll
        // must bring the issue back (an extra look, not a missed change).
        // The issue as the bot last knew it in this look: after its own
        // earlier edit, if it made one (a plan's label, then the result).
        let known = self
            .own_edit(project, issue.iid)
            .filter(|e| e.updated_at >= issue.updated_at);
        let issue = known.as_ref().unwrap_or(issue);
        let mut before_labels = issue.labels.clone();
        let mut now_labels = fresh.labels.clone();
        before_labels.sort();
        now_labels.sort();
        let changed_meanwhile = raced
            || fresh.title != issue.title
            || fresh.description != issue.description
            || fresh.state != issue.state
            || now_labels != before_labels;
        let seen_at = if changed_meanwhile {
            issue.updated_at
        } else {
            last
        };
        if let Some(after) = after_edit.filter(|_| !changed_meanwhile) {
            self.remember_own_edit(project, after);
        }
        self.store.mark_seen(project, issue.iid, seen_at)?;
        Ok(record)
    }
}
