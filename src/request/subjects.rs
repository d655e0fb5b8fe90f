//! The people a request is about: a personal-information Markdown table, or
//! `Key: value` lines (optionally as `- **Key**: value` list items).

use super::RequestError;
use super::email::Email;

/// A person named in the issue, as written (validated later against policy).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RawSubject {
    pub line: usize,
    pub name: Option<String>,
    pub email: Option<String>,
    pub gitlab_username: Option<String>,
    pub manager: Option<String>,
}

/// A validated subject.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Subject {
    pub name: String,
    pub email: Email,
    pub gitlab_username: Option<String>,
    pub manager: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Email,
    Gitlab,
    Manager,
    Other,
}

fn field_of(header: &str) -> Field {
    let h = header
        .trim()
        .trim_matches('*')
        .trim()
        .to_ascii_lowercase()
        .replace(['-', '_'], " ");
    match h.as_str() {
        "full name" | "name" | "team member" | "team member name" | "legal name" => Field::Name,
        "email" | "email address" | "e mail" | "work email" | "gitlab email" => Field::Email,
        "gitlab username" | "gitlab handle" | "username" | "gitlab" => Field::Gitlab,
        "manager" | "manager gitlab username" | "manager username" | "managers gitlab handle" => {
            Field::Manager
        }
        _ => Field::Other,
    }
}

fn clean(v: &str) -> Option<String> {
    let v = v.trim();
    if v.is_empty() || v == "-" || v.eq_ignore_ascii_case("n/a") {
        None
    } else {
        Some(v.to_string())
    }
}

/// Read subjects from the one table whose header has an email column, or
/// else from `Key: value` lines; both, or two such tables, are ambiguous.
/// Only what a reader of the rendered issue sees counts (see `visible`).
pub fn parse_raw(text: &str) -> Result<Vec<RawSubject>, RequestError> {
    let seen = super::visible::read(text);
    let tables: Vec<&super::visible::Table> = seen
        .tables
        .iter()
        .filter(|t| t.header.iter().any(|h| field_of(h) == Field::Email))
        .collect();
    let kv_lines: Vec<&super::visible::Line> = seen
        .lines
        .iter()
        .filter(|l| key_value(&l.text).is_some_and(|(k, _)| field_of(&k) != Field::Other))
        .collect();
    if tables.len() > 1 {
        return Err(RequestError::TableRow {
            line: tables[1].line,
            reason: format!(
                "a second table of people (the first is at line {}); keep one table",
                tables[0].line
            ),
        });
    }
    if let (Some(t), Some(l)) = (tables.first(), kv_lines.first()) {
        return Err(RequestError::TableRow {
            line: l.line,
            reason: format!(
                "people are given both in the table at line {} and as a `Key: value` line; keep the table",
                t.line
            ),
        });
    }
    if let Some(t) = tables.first() {
        let fields: Vec<Field> = t.header.iter().map(|h| field_of(h)).collect();
        let mut out = Vec::new();
        for row in &t.rows {
            if row.has_html {
                return Err(RequestError::TableRow {
                    line: row.line,
                    reason: "the row holds HTML, so what it shows and what it says can differ; write plain text".into(),
                });
            }
            if row.cells.len() < fields.len() {
                return Err(RequestError::TableRow {
                    line: row.line,
                    reason: format!(
                        "the row has {} cells but the header has {} columns",
                        row.cells.len(),
                        fields.len()
                    ),
                });
            }
            let mut s = RawSubject {
                line: row.line,
                name: None,
                email: None,
                gitlab_username: None,
                manager: None,
            };
            for (f, c) in fields.iter().zip(row.cells.iter()) {
                let v = clean(c);
                let slot = match f {
                    Field::Name => &mut s.name,
                    Field::Email => &mut s.email,
                    Field::Gitlab => &mut s.gitlab_username,
                    Field::Manager => &mut s.manager,
                    Field::Other => continue,
                };
                if slot.is_some() && v.is_some() && *slot != v {
                    return Err(RequestError::TableRow {
                        line: row.line,
                        reason: "two columns of the row mean the same field with different values"
                            .into(),
                    });
                }
                if v.is_some() {
                    *slot = v;
                }
            }
            if s.name.is_none()
                && s.email.is_none()
                && s.gitlab_username.is_none()
                && s.manager.is_none()
            {
                continue; // an empty template row
            }
            out.push(s);
        }
        return Ok(out);
    }

    // `Key: value` lines, one person.
    let mut s = RawSubject {
        line: 0,
        name: None,
        email: None,
        gitlab_username: None,
        manager: None,
    };
    for l in kv_lines {
        let Some((k, v)) = key_value(&l.text) else {
            continue;
        };
        if l.has_html {
            return Err(RequestError::TableRow {
                line: l.line,
                reason: format!(
                    "the {} line holds HTML, so what it shows and what it says can differ; write plain text",
                    k.trim()
                ),
            });
        }
        let v = clean(&v);
        let slot = match field_of(&k) {
            Field::Name => &mut s.name,
            Field::Email => &mut s.email,
            Field::Gitlab => &mut s.gitlab_username,
            Field::Manager => &mut s.manager,
            Field::Other => continue,
        };
        if slot.is_some() && v.is_some() && *slot != v {
            return Err(RequestError::TableRow {
                line: l.line,
                reason: format!(
                    "{} is given twice with different values; file one issue per person or use a table",
                    k.trim()
                ),
            });
        }
        if s.line == 0 {
            s.line = l.line;
        }
        if v.is_some() {
            *slot = v;
        }
    }
    if s.email.is_some() || s.name.is_some() || s.gitlab_username.is_some() {
        Ok(vec![s])
    } else {
        Ok(vec![])
    }
}

/// `Key: value`, `- Key: value`, `- **Key**: value`, `**Key:** value`.
pub(crate) fn key_value(line: &str) -> Option<(String, String)> {
    let mut t = line.trim();
    for m in ["- ", "* ", "+ "] {
        if let Some(r) = t.strip_prefix(m) {
            t = r.trim_start();
        }
    }
    if t.starts_with('[') || t.starts_with('|') || t.starts_with('#') {
        return None;
    }
    let (k, v) = t.split_once(':')?;
    let k = k.trim().trim_matches('*').trim();
    let v = v.trim().trim_start_matches("**").trim();
    if k.is_empty() || k.len() > 40 {
        return None;
    }
    Some((k.to_string(), v.to_string()))
}

/// A GitLab username as written: optional leading `@`, then GitLab's allowed characters.
pub fn parse_username(raw: &str) -> Option<String> {
    let u = raw.trim().trim_matches('`').trim();
    let u = u.strip_prefix('@').unwrap_or(u);
    let ok = !u.is_empty()
        && u.len() <= 255
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        && !u.starts_with(['-', '.'])
        && !u.ends_with(['.', '-']);
    ok.then(|| u.to_string())
}

/// A name the bot will repeat in comments: letters, spaces, and `.'-,`.
/// Mentions (`@all`), Markdown and HTML are refused rather than repeated.
pub fn valid_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.chars().count() <= 100
        && name
            .chars()
            .all(|c| c.is_alphabetic() || c == ' ' || c == '.' || c == '\'' || c == '-' || c == ',')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_with_all_columns() {
        let md = "## Step 1\n\n| Full name | Email | GitLab username | Manager | Role |\n|---|---|---|---|---|\n| Jane Doe | jane.doe@example.com | @jdoe | @mlee | AE |\n| Bo Li | bo@example.com | bli | @mlee | AE |\n";
        let s = parse_raw(md).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name.as_deref(), Some("Jane Doe"));
        assert_eq!(s[0].gitlab_username.as_deref(), Some("@jdoe"));
        assert_eq!(s[1].manager.as_deref(), Some("@mlee"));
        assert_eq!(s[1].line, 6);
    }

    #[test]
    fn a_short_row_has_empty_cells_as_shown() {
        // GitLab renders the missing cells empty; so does the bot.
        let md = "| Full name | Email | Manager |\n|---|---|---|\n| Jane | jane@example.com |\n";
        let s = parse_raw(md).unwrap();
        assert_eq!(s[0].email.as_deref(), Some("jane@example.com"));
        assert_eq!(s[0].manager, None);
    }

    #[test]
    fn key_value_list() {
        let md = "- **Full Name**: Jane Doe\n- **Email**: jane@example.com\nManager: @mlee\nGitLab username: jdoe\n";
        let s = parse_raw(md).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].email.as_deref(), Some("jane@example.com"));
        assert_eq!(s[0].manager.as_deref(), Some("@mlee"));
    }

    #[test]
    fn escaped_pipe_and_code_blocks() {
        let md = "```\n| Email |\n|---|\n| fake@example.com |\n```\n| Name | Email |\n|--|--|\n| A \\| B | a@example.com |\n";
        let s = parse_raw(md).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name.as_deref(), Some("A | B"));
    }

    #[test]
    fn names_and_usernames() {
        assert!(valid_name("José O'Brien-Smith"));
        assert!(!valid_name("@all"));
        assert!(!valid_name("Jane *Doe*"));
        assert!(!valid_name("<img src=x>"));
        assert_eq!(parse_username("@jdoe").as_deref(), Some("jdoe"));
        assert_eq!(parse_username("j doe"), None);
    }
}
