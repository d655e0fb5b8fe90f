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

/// Lines outside fenced code blocks and block quotes, with 1-based numbers.
pub(crate) fn plain_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.trim_end_matches('\r');
        let t = line.trim_start();
        if let Some(f) = fence {
            if t.starts_with(f) {
                fence = None;
            }
            continue;
        }
        if t.starts_with("```") {
            fence = Some("```");
            continue;
        }
        if t.starts_with("~~~") {
            fence = Some("~~~");
            continue;
        }
        if t.starts_with('>') {
            continue;
        }
        out.push((i + 1, line));
    }
    out
}

fn split_row(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = t.strip_suffix('|').unwrap_or(t);
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cur.push('|');
                chars.next();
            }
            '|' => cells.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    cells.push(cur.trim().to_string());
    cells
}

fn is_separator(line: &str) -> bool {
    let cells = split_row(line);
    !cells.is_empty()
        && cells.iter().all(|c| {
            let c = c.trim();
            !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':') && c.contains('-')
        })
}

fn clean(v: &str) -> Option<String> {
    let v = v.trim();
    if v.is_empty() || v == "-" || v.eq_ignore_ascii_case("n/a") {
        None
    } else {
        Some(v.to_string())
    }
}

/// Read subjects from the first table whose header has an email column, or
/// else from `Key: value` lines.
pub fn parse_raw(text: &str) -> Result<Vec<RawSubject>, RequestError> {
    let lines = plain_lines(text);
    let mut i = 0;
    while i + 1 < lines.len() {
        let (_, header) = lines[i];
        let (_, sep) = lines[i + 1];
        if header.trim_start().starts_with('|') && is_separator(sep) {
            let fields: Vec<Field> = split_row(header).iter().map(|h| field_of(h)).collect();
            if fields.contains(&Field::Email) {
                let mut out = Vec::new();
                for &(n, row) in &lines[i + 2..] {
                    if !row.trim_start().starts_with('|') {
                        break;
                    }
                    let cells = split_row(row);
                    if cells.len() < fields.len() {
                        return Err(RequestError::TableRow {
                            line: n,
                            reason: format!(
                                "the row has {} cells but the header has {} columns",
                                cells.len(),
                                fields.len()
                            ),
                        });
                    }
                    let mut s = RawSubject {
                        line: n,
                        name: None,
                        email: None,
                        gitlab_username: None,
                        manager: None,
                    };
                    for (f, c) in fields.iter().zip(cells.iter()) {
                        let v = clean(c);
                        match f {
                            Field::Name => s.name = v,
                            Field::Email => s.email = v,
                            Field::Gitlab => s.gitlab_username = v,
                            Field::Manager => s.manager = v,
                            Field::Other => {}
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
        }
        i += 1;
    }

    // `Key: value` lines, one person.
    let mut s = RawSubject {
        line: 0,
        name: None,
        email: None,
        gitlab_username: None,
        manager: None,
    };
    for &(n, line) in &lines {
        let Some((k, v)) = key_value(line) else {
            continue;
        };
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
                line: n,
                reason: format!(
                    "{} is given twice with different values; file one issue per person or use a table",
                    k.trim()
                ),
            });
        }
        if s.line == 0 {
            s.line = n;
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
    fn short_row_is_an_error() {
        let md = "| Full name | Email | Manager |\n|---|---|---|\n| Jane | jane@example.com |\n";
        assert!(matches!(
            parse_raw(md),
            Err(RequestError::TableRow { line: 3, .. })
        ));
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
