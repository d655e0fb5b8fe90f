//! The hidden marker every bot comment ends with:
//! `<!-- access-bot step=plan key=plan:1a2b digest=1a2b content=9f8e -->`.
//!
//! `key` says which workflow step the comment reports, so the bot never posts
//! the same step twice (the issue, not our database, is the source of truth);
//! `digest` is the request digest the comment was about; `content` is a digest
//! of the rendered text, kept for audit and debugging.

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub step: String,
    pub key: String,
    pub digest: String,
    pub content: String,
}

const PREFIX: &str = "<!-- access-bot ";

impl Marker {
    pub fn new(step: &str, key: &str, digest: &str, body: &str) -> Marker {
        Marker {
            step: clean(step),
            key: clean(key),
            digest: clean(digest),
            content: hex::encode(&Sha256::digest(body.as_bytes())[..6]),
        }
    }

    pub fn render(&self) -> String {
        format!(
            "{PREFIX}step={} key={} digest={} content={} -->",
            self.step, self.key, self.digest, self.content
        )
    }

    /// Every marker in a comment body (a note can carry several sections).
    pub fn find_all(body: &str) -> Vec<Marker> {
        body.match_indices(PREFIX)
            .filter_map(|(i, _)| Marker::parse_at(&body[i..]))
            .collect()
    }

    /// Find the marker in a comment body (the last one wins).
    pub fn find(body: &str) -> Option<Marker> {
        let start = body.rfind(PREFIX)?;
        Marker::parse_at(&body[start..])
    }

    fn parse_at(s: &str) -> Option<Marker> {
        let rest = &s[PREFIX.len()..];
        let end = rest.find("-->")?;
        let mut m = Marker {
            step: String::new(),
            key: String::new(),
            digest: String::new(),
            content: String::new(),
        };
        for part in rest[..end].split_whitespace() {
            let (k, v) = part.split_once('=')?;
            match k {
                "step" => m.step = v.to_string(),
                "key" => m.key = v.to_string(),
                "digest" => m.digest = v.to_string(),
                "content" => m.content = v.to_string(),
                _ => {}
            }
        }
        (!m.step.is_empty() && !m.key.is_empty()).then_some(m)
    }
}

/// Marker fields never contain spaces, `=` or `--` (which would end the HTML comment).
/// Callers compare keys through this function too, so what is written is what is found.
/// A short digest for marker keys: the same text gives the same key.
pub fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

pub fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_:.@/+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-_");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = Marker::new("plan", "plan:abcd", "abcd", "hello");
        let body = format!("Some text\n\n{}", m.render());
        assert_eq!(Marker::find(&body), Some(m));
    }

    #[test]
    fn hostile_values_cannot_break_out() {
        let m = Marker::new("plan --> <b>", "k ey", "d=1", "");
        let r = m.render();
        assert_eq!(r.matches("-->").count(), 1);
        assert_eq!(Marker::find(&r).unwrap().step, "plan_-____b_");
        assert!(!Marker::find(&r).unwrap().step.contains("--"));
        assert_eq!(clean("needs-account:1"), "needs-account:1");
        assert_eq!(clean("a---b"), "a-_-b");
    }

    #[test]
    fn several_in_one_note() {
        let a = Marker::new("plan", "plan:1", "1", "a");
        let b = Marker::new("citizenship", "citizenship:1", "1", "b");
        let body = format!("A\n{}\n\n---\n\nB\n{}", a.render(), b.render());
        assert_eq!(Marker::find_all(&body), vec![a, b]);
    }

    #[test]
    fn no_marker() {
        assert_eq!(Marker::find("plain comment"), None);
        assert_eq!(Marker::find("<!-- access-bot broken"), None);
    }
}
