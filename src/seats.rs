//! Idle-seat review (pure): which paid agents are idle, what they cost, and
//! whether a reviewer's tick on a review issue may be acted on. No HTTP here.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::accounts::User;
use crate::config::SeatAuditConfig;
use crate::request::input::Note;

/// One paid agent idle for longer than the configured days, with the fields
/// the review issue shows. Frozen once listed, so the line a reviewer ticks
/// never changes under them.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SeatCandidate {
    pub zendesk_id: u64,
    pub name: String,
    pub email: String,
    /// `admin`, `agent`, or the custom role's name.
    pub role: String,
    /// `YYYY-MM-DD`, or `never`.
    pub last_login: String,
    /// Days since the last login; `None` when the person never logged in.
    pub days_idle: Option<i64>,
    pub suspended: bool,
    /// Price of the seat for a year, in the configured currency.
    pub yearly_cost: f64,
}

/// A paid seat: agents and admins, suspended ones included (Zendesk bills
/// them), but not light agents (free) nor end-users.
pub fn is_paid(u: &User, light_agent_role: Option<u64>) -> bool {
    paid_role(&u.role, u.role_type, u.custom_role_id, light_agent_role)
}

/// [`is_paid`] on the parts of a user record that decide it (an adapter
/// filters its own records with it while it pages through them).
pub fn paid_role(
    role: &str,
    role_type: Option<i64>,
    custom_role_id: Option<u64>,
    light_agent_role: Option<u64>,
) -> bool {
    let agentish = role == "agent" || role == "admin";
    let light =
        role_type == Some(1) || (light_agent_role.is_some() && custom_role_id == light_agent_role);
    agentish && !light
}

/// Paid agents whose last login is older than `idle_days` (or who never
/// logged in), minus the exempt. Ticket activity is checked afterwards by the
/// caller, because it costs one request per candidate.
pub fn idle_by_login(
    users: &[User],
    light_agent_role: Option<u64>,
    role_names: &std::collections::BTreeMap<u64, String>,
    cfg: &SeatAuditConfig,
    now: DateTime<Utc>,
) -> Vec<SeatCandidate> {
    let exempt_emails: BTreeSet<String> = cfg
        .exempt_emails
        .iter()
        .map(|e| e.trim().to_ascii_lowercase())
        .collect();
    let mut out: Vec<SeatCandidate> = users
        .iter()
        .filter(|u| is_paid(u, light_agent_role))
        .filter(|u| {
            let email = u.email.clone().unwrap_or_default().to_ascii_lowercase();
            !email.is_empty() && !exempt_emails.contains(&email)
        })
        .filter(|u| !u.tags.iter().any(|t| cfg.exempt_tags.contains(t)))
        .filter_map(|u| {
            let days = u.last_login_at.map(|t| (now - t).num_days());
            if days.is_some_and(|d| d <= i64::from(cfg.idle_days)) {
                return None;
            }
            let role = match (u.role.as_str(), u.custom_role_id) {
                ("agent", Some(id)) => role_names.get(&id).cloned().unwrap_or("agent".into()),
                (r, _) => r.to_string(),
            };
            Some(SeatCandidate {
                zendesk_id: u.id,
                name: u.name.clone(),
                email: u.email.clone().unwrap_or_default().to_ascii_lowercase(),
                role,
                last_login: u
                    .last_login_at
                    .map(|t| t.format("%Y-%m-%d").to_string())
                    .unwrap_or_else(|| "never".into()),
                days_idle: days,
                suspended: u.suspended,
                yearly_cost: cfg.price_per_seat_month * 12.0,
            })
        })
        .collect();
    out.sort_by(longest_idle_first);
    out
}

/// The review's order: longest idle first, never-logged-in before everyone.
pub fn longest_idle_first(a: &SeatCandidate, b: &SeatCandidate) -> std::cmp::Ordering {
    b.days_idle
        .unwrap_or(i64::MAX)
        .cmp(&a.days_idle.unwrap_or(i64::MAX))
        .then(a.email.cmp(&b.email))
}

/// The review period a run belongs to: one review issue per instance and month.
pub fn period(now: DateTime<Utc>) -> String {
    now.format("%Y-%m").to_string()
}

/// `1380` -> `1,380`; cents only when there are some.
pub fn money(amount: f64, currency: &str) -> String {
    let cents = (amount * 100.0).round() as i64;
    let whole = cents / 100;
    let frac = cents % 100;
    let digits = whole.abs().to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if whole < 0 { "-" } else { "" };
    if frac == 0 {
        format!("{sign}{grouped} {currency}")
    } else {
        format!("{sign}{grouped}.{frac:02} {currency}")
    }
}

/// What a tick on a review item is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickVerdict {
    /// Ticked by a reviewer, and nobody else changed the description since:
    /// the proof the executor needs to reclaim that seat.
    Holds(ReviewerTicked),
    /// The last tick of this item was by someone who is not a reviewer.
    NotReviewer { by: String, note_id: u64 },
    /// A reviewer ticked it, but someone else changed the description at or after that.
    LaterEdit { by: String, note_id: u64 },
    /// GitLab has no record of anyone ticking it (it was written ticked).
    NoRecord,
}

/// A seat review line that a configured reviewer ticked, with nobody else
/// changing the description since: built only by [`verify_tick`], and the
/// only way to the executor's seat reclaim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewerTicked {
    by: String,
    note_id: u64,
    item_text: String,
}

impl ReviewerTicked {
    /// The reviewer's username.
    pub fn by(&self) -> &str {
        &self.by
    }
    /// GitLab's note recording the tick.
    pub fn note_id(&self) -> u64 {
        self.note_id
    }
    /// The line that was ticked, as the bot wrote it.
    pub fn item_text(&self) -> &str {
        &self.item_text
    }
}

/// GitLab may Markdown-escape the item text in its checklist notes (`\_`).
fn unescape_markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&n) = chars.peek()
            && n.is_ascii_punctuation()
        {
            out.push(n);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

/// `(item text, completed?)` of a "marked the checklist item **X** as completed" note.
fn toggle(note: &Note) -> Option<(String, bool)> {
    if !note.system {
        return None;
    }
    let rest = note.body.strip_prefix("marked the checklist item **")?;
    let (text, done) = if let Some(t) = rest.strip_suffix("** as completed") {
        (t, true)
    } else {
        (rest.strip_suffix("** as incomplete")?, false)
    };
    Some((unescape_markdown(text).trim().to_string(), done))
}

/// Decide whether the current tick of `item_text` may be acted on: the latest
/// toggle of that item must be a "completed" by a reviewer, and no one but the
/// bot or a reviewer may have changed the description at or after that moment
/// (an equal timestamp counts against, as for approvals).
pub fn verify_tick(
    item_text: &str,
    notes: &[Note],
    reviewers: &BTreeSet<u64>,
    bot_id: u64,
) -> TickVerdict {
    let wanted = item_text.trim();
    let Some((note, _)) = notes
        .iter()
        .filter_map(|n| toggle(n).map(|t| (n, t)))
        .filter(|(_, (text, _))| text == wanted)
        .max_by_key(|(n, _)| (n.created_at, n.id))
        .filter(|(_, (_, done))| *done)
    else {
        return TickVerdict::NoRecord;
    };
    let by = note.author.username.clone();
    if !reviewers.contains(&note.author.id) {
        return TickVerdict::NotReviewer {
            by,
            note_id: note.id,
        };
    }
    if let Some(later) = notes.iter().find(|n| {
        n.id != note.id
            && n.is_description_change()
            && n.created_at >= note.created_at
            && n.author.id != bot_id
            && !reviewers.contains(&n.author.id)
    }) {
        return TickVerdict::LaterEdit {
            by: later.author.username.clone(),
            note_id: note.id,
        };
    }
    TickVerdict::Holds(ReviewerTicked {
        by,
        note_id: note.id,
        item_text: wanted.to_string(),
    })
}

/// A CSV cell: quoted when needed, and never read as a formula by a spreadsheet.
fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The report for finance: one row per candidate.
pub fn csv(rows: &[(String, SeatCandidate)], currency: &str) -> String {
    let mut out = String::from(
        "instance,name,email,role,suspended,last_login,days_idle,yearly_cost,currency\n",
    );
    for (instance, c) in rows {
        let cells = [
            csv_cell(instance),
            csv_cell(&c.name),
            csv_cell(&c.email),
            csv_cell(&c.role),
            c.suspended.to_string(),
            csv_cell(&c.last_login),
            c.days_idle.map(|d| d.to_string()).unwrap_or_default(),
            format!("{:.2}", c.yearly_cost),
            csv_cell(currency),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::input::UserRef;
    use chrono::TimeZone;

    fn cfg() -> SeatAuditConfig {
        toml::from_str(
            r#"idle_days = 60
price_per_seat_month = 115.0
reviewers = ["lyle"]
exempt_emails = ["Boss@Example.com"]
exempt_tags = ["seat_exempt"]"#,
        )
        .unwrap()
    }

    fn user(id: u64, email: &str, role: &str, login_days_ago: Option<i64>) -> User {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        User {
            id,
            name: format!("User {id}"),
            email: Some(email.into()),
            role: role.into(),
            role_type: None,
            custom_role_id: None,
            suspended: false,
            tags: vec![],
            user_fields: Default::default(),
            last_login_at: login_days_ago.map(|d| now - chrono::Duration::days(d)),
        }
    }

    #[test]
    fn only_idle_paid_unexempt_agents_are_candidates() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        let mut light = user(3, "light@example.com", "agent", Some(400));
        light.custom_role_id = Some(99);
        let mut tagged = user(6, "tagged@example.com", "agent", Some(400));
        tagged.tags = vec!["seat_exempt".into()];
        let mut suspended = user(7, "suspended@example.com", "agent", Some(90));
        suspended.suspended = true;
        let users = vec![
            user(1, "active@example.com", "agent", Some(60)),
            user(2, "idle@example.com", "admin", Some(61)),
            light,
            user(4, "enduser@example.com", "end-user", None),
            user(5, "boss@example.com", "agent", None),
            tagged,
            suspended,
            user(8, "never@example.com", "agent", None),
        ];
        let c = idle_by_login(&users, Some(99), &Default::default(), &cfg(), now);
        let emails: Vec<&str> = c.iter().map(|c| c.email.as_str()).collect();
        assert_eq!(
            emails,
            [
                "never@example.com",
                "suspended@example.com",
                "idle@example.com"
            ]
        );
        assert_eq!(c[0].last_login, "never");
        assert_eq!(c[2].days_idle, Some(61));
        assert_eq!(c[2].yearly_cost, 1380.0);
    }

    #[test]
    fn money_groups_thousands() {
        assert_eq!(money(1380.0, "USD"), "1,380 USD");
        assert_eq!(money(6900.0, "USD"), "6,900 USD");
        assert_eq!(money(1234567.5, "EUR"), "1,234,567.50 EUR");
        assert_eq!(money(0.0, "USD"), "0 USD");
    }

    fn note(id: u64, who: (u64, &str), body: &str, min: u32) -> Note {
        Note {
            id,
            author: UserRef {
                id: who.0,
                username: who.1.into(),
            },
            body: body.into(),
            created_at: Utc.with_ymd_and_hms(2026, 11, 23, 10, min, 0).unwrap(),
            system: true,
        }
    }

    const ITEM: &str = "Jane Doe (jane_doe@example.com): agent";

    #[test]
    fn a_tick_holds_only_from_a_reviewer_without_later_edits_by_others() {
        let reviewers: BTreeSet<u64> = [10].into();
        let tick = |id, who, min| {
            note(
                id,
                who,
                "marked the checklist item **Jane Doe (jane\\_doe@example.com): agent** as completed",
                min,
            )
        };
        let lyle = (10, "lyle");
        let mallory = (66, "mallory");
        let bot = (1, "bot");
        match verify_tick(ITEM, &[tick(1, lyle, 1)], &reviewers, 1) {
            TickVerdict::Holds(t) => {
                assert_eq!((t.by(), t.note_id(), t.item_text()), ("lyle", 1, ITEM));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            verify_tick(ITEM, &[tick(1, mallory, 1)], &reviewers, 1),
            TickVerdict::NotReviewer { .. }
        ));
        // Someone else edits at the same minute: counts against.
        let edit = note(2, mallory, "changed the description", 1);
        assert!(matches!(
            verify_tick(ITEM, &[tick(1, lyle, 1), edit], &reviewers, 1),
            TickVerdict::LaterEdit { .. }
        ));
        // The bot's own edits and earlier edits by others do not.
        let earlier = note(3, mallory, "changed the description", 0);
        let ours = note(4, bot, "changed the description", 5);
        assert!(matches!(
            verify_tick(ITEM, &[earlier, tick(1, lyle, 1), ours], &reviewers, 1),
            TickVerdict::Holds(_)
        ));
        // Unticked afterwards, or never ticked at all.
        let untick = note(
            5,
            lyle,
            "marked the checklist item **Jane Doe (jane\\_doe@example.com): agent** as incomplete",
            2,
        );
        assert_eq!(
            verify_tick(ITEM, &[tick(1, lyle, 1), untick], &reviewers, 1),
            TickVerdict::NoRecord
        );
        assert_eq!(verify_tick(ITEM, &[], &reviewers, 1), TickVerdict::NoRecord);
        // A reviewer's tick re-done by someone else is that someone's tick.
        assert!(matches!(
            verify_tick(
                ITEM,
                &[tick(1, lyle, 1), tick(6, mallory, 3)],
                &reviewers,
                1
            ),
            TickVerdict::NotReviewer { .. }
        ));
    }

    #[test]
    fn csv_is_quoted_and_formula_safe() {
        let c = SeatCandidate {
            zendesk_id: 1,
            name: "=HYPERLINK(\"x\"), Bob".into(),
            email: "bob@example.com".into(),
            role: "agent".into(),
            last_login: "never".into(),
            days_idle: None,
            suspended: false,
            yearly_cost: 1380.0,
        };
        let out = csv(&[("global".into(), c)], "USD");
        assert_eq!(
            out.lines().nth(1).unwrap(),
            "global,\"'=HYPERLINK(\"\"x\"\"), Bob\",bob@example.com,agent,false,never,,1380.00,USD"
        );
    }
}
