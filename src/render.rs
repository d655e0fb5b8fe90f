//! Every comment the bot writes comes from a template in `templates/`. The
//! defaults are compiled in, and a file of the same name in the configured
//! template folder overrides one.
//!
//! Text from an issue is never repeated raw: the `code` filter puts it in an
//! inline code span (no mentions, no Markdown, no quick actions), and no
//! template starts a line with a value.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::{Environment, Value};

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../templates/", $name)))),*]
    };
}

/// The templates the bot knows, with their compiled-in text.
pub const TEMPLATES: &[(&str, &str)] = embedded!(
    "plan.md",
    "waiting.md",
    "refused.md",
    "invalid.md",
    "result.md",
    "failed.md",
    "citizenship_request.md",
    "citizenship_email.txt",
    "citizenship_denied.md",
    "needs_account_first.md",
    "stale_reminder.md",
    "stale_closed.md",
    "expiry_reminder.md",
    "expired.md",
    "seat_review.md",
    "seat_review_item.md",
    "seat_reclaimed.md",
    "ops_notice.txt",
    "email_sending.md",
    "email_sent.md",
    "email_failed.md",
    "support_team.md",
    "support_team_mr.md",
    "digest.txt",
    "grant_record.md",
    "seat_listed.md",
    "stopped.md",
    "status_phrases.txt",
    "status.txt",
    "status.html",
);

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("cannot read template {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Compiled-in templates, overridden by files in `dir` when it exists.
    pub fn load(dir: Option<&Path>) -> Result<Templates, RenderError> {
        let mut sources: BTreeMap<String, String> = TEMPLATES
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        if let Some(dir) = dir.filter(|d| d.is_dir()) {
            for (name, _) in TEMPLATES {
                let p = dir.join(name);
                if p.is_file() {
                    let text = std::fs::read_to_string(&p).map_err(|source| RenderError::Io {
                        path: p.display().to_string(),
                        source,
                    })?;
                    sources.insert(name.to_string(), text);
                }
            }
        }
        let mut env = Environment::new();
        // A mistyped or missing variable is an error, never empty text: only
        // `if` may test for a value that is absent.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
        env.set_keep_trailing_newline(true);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_filter("code", |v: Value| code_span(&v.to_string()));
        env.add_filter("cell", |v: Value| escape_cell(&v.to_string()));
        env.add_filter("block", |v: Value| code_block(&v.to_string()));
        for (name, text) in sources {
            env.add_template_owned(name.clone(), text)
                .map_err(|source| RenderError::Template { name, source })?;
        }
        Ok(Templates { env })
    }

    /// Untyped: the template named, with any data. The bot renders through
    /// [`Templates::text`] with a typed context (`crate::comment`); this is
    /// left for the snapshot tests that render a template with sample data.
    pub fn render(&self, name: &str, ctx: &impl serde::Serialize) -> Result<String, RenderError> {
        let t = self
            .env
            .get_template(name)
            .map_err(|source| RenderError::Template {
                name: name.to_string(),
                source,
            })?;
        let out = t
            .render(Value::from_serialize(ctx))
            .map_err(|source| RenderError::Template {
                name: name.to_string(),
                source,
            })?;
        Ok(tidy(&out))
    }
}

#[cfg(test)]
impl Templates {
    /// Undefined is an error even where `if` tests it: a test renders every
    /// context so, to find a variable a template uses and its context lacks.
    pub(crate) fn strict(mut self) -> Templates {
        self.env
            .set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        self
    }

    /// The variables a template uses that it does not set itself, with the
    /// attributes read from them (`r.email`).
    pub(crate) fn variables(&self, name: &str) -> std::collections::HashSet<String> {
        self.env
            .get_template(name)
            .map(|t| t.undeclared_variables(true))
            .unwrap_or_default()
    }
}

/// Collapse runs of blank lines left by template logic.
fn tidy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.lines() {
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.trim().to_string() + "\n"
}

/// Longest shown value: enough to recognise it, too short to flood a comment.
pub const MAX_SHOWN: usize = 120;

/// User-supplied text, shown inert: an inline code span (no mentions, links,
/// references, HTML or quick actions are rendered inside one), fenced with
/// more backticks than the text contains so it cannot close the span early,
/// on one line, bounded in length, pipes escaped for table cells, and with
/// `<` and `>` replaced so that not even the raw note can carry an HTML
/// comment or a marker prefix.
pub fn code_span(s: &str) -> String {
    let mut t: String = s
        .chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            '<' => '\u{2039}',
            '>' => '\u{203a}',
            c if c.is_control() => ' ',
            // Invisible and direction-changing characters would make the shown
            // text differ from what the bot read.
            '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}' => ' ',
            c => c,
        })
        .collect();
    if t.chars().count() > MAX_SHOWN {
        t = t.chars().take(MAX_SHOWN - 1).collect::<String>() + "\u{2026}";
    }
    let t = t.trim().replace('|', "\\|");
    if t.is_empty() {
        return "` `".into();
    }
    let longest = t.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if t.starts_with('`') || t.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{t}{pad}{fence}")
}

/// Longer text (an error a service returned) as a fenced block: the fence is
/// longer than any run of backticks inside, `<` and `>` are replaced as in
/// [`code_span`], and the length is bounded.
pub fn code_block(s: &str) -> String {
    let mut t: String = s
        .chars()
        .map(|c| match c {
            '<' => '\u{2039}',
            '>' => '\u{203a}',
            '\n' | '\t' => c,
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if t.chars().count() > 2000 {
        t = t.chars().take(1999).collect::<String>() + "\u{2026}";
    }
    let longest = t.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}text\n{}\n{fence}", t.trim_end())
}

/// A list of user-supplied texts for a comment: at most `max` shown, each
/// inert, then how many more there were.
pub fn code_list(items: &[String], max: usize) -> String {
    let mut out: Vec<String> = items.iter().take(max).map(|i| code_span(i)).collect();
    if items.len() > max {
        out.push(format!("and {} more", items.len() - max));
    }
    out.join(", ")
}

/// Plain text for a table cell (already validated text such as names).
pub fn escape_cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_span_neutralises() {
        assert_eq!(code_span("@all"), "`@all`");
        assert_eq!(code_span("a`b|c\n/close"), "``a`b\\|c /close``");
        assert_eq!(code_span("``x"), "``` ``x ```");
        assert_eq!(code_span(""), "` `");
        assert_eq!(
            code_span("<!-- access-bot -->"),
            "`\u{2039}!-- access-bot --\u{203a}`"
        );
        assert!(!code_span("a\u{202e}b").contains('\u{202e}'));
        assert!(code_span(&"x".repeat(500)).chars().count() < 130);
        assert_eq!(
            code_list(&["a".into(), "b".into(), "c".into()], 2),
            "`a`, `b`, and 1 more"
        );
    }

    #[test]
    fn a_missing_variable_is_an_error_not_empty_text() {
        let t = Templates::load(None).unwrap();
        // `to` mistyped as `recipient`: the text would read "E-mailed ... to ."
        let err = t
            .render(
                "email_sent.md",
                &serde_json::json!({"recipient": "people@x", "subject": "s"}),
            )
            .unwrap_err();
        assert!(err.to_string().contains("email_sent.md"), "{err}");
        // Optional values may be tested with `if` and left out.
        let ok = t
            .render(
                "email_sent.md",
                &serde_json::json!({"to": "people@x", "subject": "s"}),
            )
            .unwrap();
        assert!(ok.contains("to people@x"), "{ok}");
    }

    #[test]
    fn all_embedded_templates_compile() {
        let t = Templates::load(None).unwrap();
        for (name, _) in TEMPLATES {
            assert!(t.env.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn override_from_folder() {
        let dir = std::env::temp_dir().join(format!("ab-tpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stale_closed.md"), "custom {{ iid }}").unwrap();
        let t = Templates::load(Some(&dir)).unwrap();
        let out = t
            .render("stale_closed.md", &serde_json::json!({"iid": 7}))
            .unwrap();
        assert_eq!(out, "custom 7\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
