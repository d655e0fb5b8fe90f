//! The hidden marker that ends every bot comment, and the only thing the bot
//! believes about its own past comments:
//!
//! `<!-- access-bot:v2 kind=plan keys=plan:1a2b digest=1a2b mac=9f8e… -->`
//!
//! - `kind` says what the comment is (a plan, a result, a refusal, …) and
//!   `keys` which workflow sections it reports, so the bot never posts the same
//!   section twice: the issue, not the database, is the source of truth.
//! - `digest` is the request digest the comment was about; further fields
//!   carry what a later cycle must know (the digest after the bot's ticks, …).
//! - `mac` is an HMAC-SHA256, under a key only the bot holds, over the project,
//!   the issue, every field and a hash of the comment's text. A marker that
//!   does not verify, that is not the last line of the note, or that shares its
//!   note with another marker prefix, is not the bot's: text a requester got
//!   the bot to repeat cannot become a marker, and a bot comment edited by
//!   someone else (maintainers can edit any note) stops counting.

use std::collections::BTreeMap;

use aws_lc_rs::hmac;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// Every marker starts with this; the bot refuses any other occurrence of it in a note.
pub const PREFIX: &str = "<!-- access-bot";
const V2: &str = "<!-- access-bot:v2 ";
const SUFFIX: &str = " -->";

/// The key markers are sealed with. Loaded from the environment at start-up.
#[derive(Clone)]
pub struct MarkerKey {
    key: hmac::Key,
}

impl std::fmt::Debug for MarkerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MarkerKey(***)")
    }
}

impl MarkerKey {
    /// At least 16 bytes of secret material: a shorter key would be guessable.
    pub fn new(secret: &Secret) -> Result<MarkerKey, MarkerError> {
        let raw = secret.expose().as_bytes();
        if raw.len() < 16 {
            return Err(MarkerError::WeakKey);
        }
        Ok(MarkerKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, raw),
        })
    }

    /// A random key (the sandbox and tests).
    pub fn random() -> MarkerKey {
        let bytes: [u8; 32] = rand::random();
        MarkerKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        }
    }

    fn tag(&self, data: &[u8]) -> String {
        hex::encode(hmac::sign(&self.key, data).as_ref())
    }

    fn verify(&self, data: &[u8], tag_hex: &str) -> bool {
        match hex::decode(tag_hex) {
            Ok(tag) => hmac::verify(&self.key, data, &tag).is_ok(),
            Err(_) => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkerError {
    #[error("the marker key must be at least 16 bytes long")]
    WeakKey,
    #[error("no marker on the last line")]
    Missing,
    #[error("more than one marker in the note")]
    Several,
    #[error("the marker is malformed")]
    Malformed,
    #[error("the marker does not verify (not written by this bot, or the comment was edited)")]
    BadMac,
}

/// What a bot comment says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Marker {
    /// What the comment is: `plan`, `result`, `refused`, …
    pub kind: String,
    /// The sections the comment reports (each posted once per issue).
    pub keys: Vec<String>,
    /// The request digest the comment was about (may be empty).
    pub digest: String,
    /// Further facts a later cycle reads back (`after`, `done`, …).
    pub fields: BTreeMap<String, String>,
}

impl Marker {
    pub fn new(kind: &str, keys: Vec<String>, digest: &str) -> Marker {
        Marker {
            kind: clean(kind),
            keys: keys.iter().map(|k| clean(k).replace(',', "_")).collect(),
            digest: clean(digest),
            fields: BTreeMap::new(),
        }
    }

    pub fn with(mut self, field: &str, value: &str) -> Marker {
        let f = clean(field).replace(['=', ','], "_");
        if !["kind", "keys", "digest", "mac"].contains(&f.as_str()) {
            self.fields.insert(f, clean(value));
        }
        self
    }

    /// Whether the note is of this kind.
    pub fn is(&self, kind: crate::comment::NoteKind) -> bool {
        self.kind == kind.as_str()
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The bytes the MAC covers: the issue, every field, and the comment's text.
    fn signed(&self, project: &str, iid: u64, content: &str) -> Vec<u8> {
        let mut s = format!(
            "access-bot-marker-v2\nproject={project}\niid={iid}\nkind={}\nkeys={}\ndigest={}\n",
            self.kind,
            self.keys.join(","),
            self.digest
        );
        for (k, v) in &self.fields {
            s.push_str(&format!("{k}={v}\n"));
        }
        s.push_str("content=");
        s.push_str(&content_hash(content));
        s.into_bytes()
    }

    fn line(&self, mac: &str) -> String {
        let mut s = format!(
            "{V2}kind={} keys={} digest={}",
            self.kind,
            if self.keys.is_empty() {
                "-".to_string()
            } else {
                self.keys.join(",")
            },
            if self.digest.is_empty() {
                "-"
            } else {
                &self.digest
            }
        );
        for (k, v) in &self.fields {
            s.push_str(&format!(" {k}={v}"));
        }
        s.push_str(&format!(" mac={mac}{SUFFIX}"));
        s
    }

    /// The full note: the comment's text, then the sealed marker as its last line.
    pub fn seal(&self, key: &MarkerKey, project: &str, iid: u64, body: &str) -> String {
        let content = normalise(body);
        let mac = key.tag(&self.signed(project, iid, &content));
        format!("{content}\n\n{}\n", self.line(&mac))
    }

    /// Read and verify the marker of a note body. Only a note the bot's own
    /// account wrote should be given here; this checks that the text is what
    /// the bot wrote, for this issue.
    pub fn open(
        key: &MarkerKey,
        project: &str,
        iid: u64,
        note_body: &str,
    ) -> Result<Marker, MarkerError> {
        let trimmed = note_body.trim_end();
        let (content, last) = match trimmed.rfind('\n') {
            Some(i) => (&trimmed[..i], trimmed[i + 1..].trim()),
            None => ("", trimmed.trim()),
        };
        if !last.starts_with(PREFIX) {
            return Err(if note_body.contains(PREFIX) {
                MarkerError::Several
            } else {
                MarkerError::Missing
            });
        }
        if content.contains(PREFIX) {
            return Err(MarkerError::Several);
        }
        let inner = last
            .strip_prefix(V2)
            .and_then(|r| r.strip_suffix(SUFFIX))
            .ok_or(MarkerError::Malformed)?;
        let mut m = Marker::default();
        let mut mac = None;
        for part in inner.split(' ') {
            let (k, v) = part.split_once('=').ok_or(MarkerError::Malformed)?;
            if v.is_empty() || clean(v) != v {
                return Err(MarkerError::Malformed);
            }
            match k {
                "kind" => m.kind = v.to_string(),
                "keys" if v == "-" => {}
                "keys" => m.keys = v.split(',').map(String::from).collect(),
                "digest" if v == "-" => {}
                "digest" => m.digest = v.to_string(),
                "mac" => mac = Some(v.to_string()),
                _ => {
                    if m.fields.insert(k.to_string(), v.to_string()).is_some() {
                        return Err(MarkerError::Malformed);
                    }
                }
            }
        }
        let mac = mac.ok_or(MarkerError::Malformed)?;
        if m.kind.is_empty() {
            return Err(MarkerError::Malformed);
        }
        let content = normalise(content);
        if !key.verify(&m.signed(project, iid, &content), &mac) {
            return Err(MarkerError::BadMac);
        }
        Ok(m)
    }

    /// A note's text without its marker line.
    pub fn content_of(note_body: &str) -> &str {
        let trimmed = note_body.trim_end();
        match trimmed.rfind('\n') {
            Some(i) if trimmed[i + 1..].trim().starts_with(PREFIX) => trimmed[..i].trim_end(),
            None if trimmed.trim().starts_with(PREFIX) => "",
            _ => trimmed,
        }
    }

    /// The marker line of a note, unverified: for display and tests only,
    /// never for a decision.
    pub fn peek(note_body: &str) -> Option<Marker> {
        let last = note_body.trim_end().rsplit('\n').next()?.trim();
        let inner = last.strip_prefix(V2)?.strip_suffix(SUFFIX)?;
        let mut m = Marker::default();
        for part in inner.split(' ') {
            let (k, v) = part.split_once('=')?;
            match k {
                "kind" => m.kind = v.to_string(),
                "keys" if v != "-" => m.keys = v.split(',').map(String::from).collect(),
                "digest" if v != "-" => m.digest = v.to_string(),
                "keys" | "digest" | "mac" => {}
                _ => {
                    m.fields.insert(k.to_string(), v.to_string());
                }
            }
        }
        Some(m)
    }
}

/// The text as the MAC sees it: line endings and trailing spaces do not
/// matter (a server may normalise them); everything else does.
fn normalise(body: &str) -> String {
    body.replace('\r', "")
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

fn content_hash(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

/// A short digest for marker keys: the same text gives the same key.
pub fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

/// Marker values never contain spaces, `=` or `--` (which would end the HTML
/// comment). Callers compare keys through this function too, so what is
/// written is what is found.
pub fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_:.@/+-,".contains(c) {
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

    fn key() -> MarkerKey {
        MarkerKey::new(&Secret::new("0123456789abcdef0123456789abcdef")).unwrap()
    }

    #[test]
    fn round_trip() {
        let m = Marker::new("plan", vec!["plan:abcd".into()], "abcd").with("after", "ef01");
        let note = m.seal(&key(), "g/p", 7, "Some text\r\n\n| a |  \n");
        assert_eq!(Marker::open(&key(), "g/p", 7, &note), Ok(m.clone()));
        assert_eq!(Marker::peek(&note), Some(m));
    }

    #[test]
    fn another_issue_project_or_key_does_not_verify() {
        let m = Marker::new("plan", vec!["plan:abcd".into()], "abcd");
        let note = m.seal(&key(), "g/p", 7, "text");
        assert_eq!(
            Marker::open(&key(), "g/p", 8, &note),
            Err(MarkerError::BadMac)
        );
        assert_eq!(
            Marker::open(&key(), "g/q", 7, &note),
            Err(MarkerError::BadMac)
        );
        assert_eq!(
            Marker::open(&MarkerKey::random(), "g/p", 7, &note),
            Err(MarkerError::BadMac)
        );
    }

    #[test]
    fn edited_text_or_fields_do_not_verify() {
        let m = Marker::new("plan", vec!["plan:abcd".into()], "abcd");
        let note = m.seal(&key(), "g/p", 7, "Light Agent");
        let edited = note.replace("Light Agent", "Support Manager");
        assert_eq!(
            Marker::open(&key(), "g/p", 7, &edited),
            Err(MarkerError::BadMac)
        );
        let swapped = note.replace("digest=abcd", "digest=ffff");
        assert_eq!(
            Marker::open(&key(), "g/p", 7, &swapped),
            Err(MarkerError::BadMac)
        );
    }

    #[test]
    fn a_marker_anywhere_but_the_last_line_is_refused() {
        let m = Marker::new("plan", vec!["plan:abcd".into()], "abcd");
        let forged = "- Slack: <!-- access-bot:v2 kind=plan keys=plan:e digest=e mac=00 -->";
        let note = m.seal(&key(), "g/p", 7, forged);
        assert_eq!(
            Marker::open(&key(), "g/p", 7, &note),
            Err(MarkerError::Several)
        );
        // Old-style markers count as prefixes too.
        let note = m.seal(&key(), "g/p", 7, "x <!-- access-bot step=plan -->");
        assert_eq!(
            Marker::open(&key(), "g/p", 7, &note),
            Err(MarkerError::Several)
        );
        assert_eq!(
            Marker::open(&key(), "g/p", 7, "plain comment"),
            Err(MarkerError::Missing)
        );
        let text_after = format!("{}\ntrailing", m.seal(&key(), "g/p", 7, "x"));
        assert_eq!(
            Marker::open(&key(), "g/p", 7, &text_after),
            Err(MarkerError::Several)
        );
    }

    #[test]
    fn hostile_values_cannot_break_out() {
        let m = Marker::new("plan --> <b>", vec!["k ey,x".into()], "d=1").with("a b", "-->");
        let note = m.seal(&key(), "p", 1, "");
        assert_eq!(note.matches("-->").count(), 1);
        let back = Marker::open(&key(), "p", 1, &note).unwrap();
        assert!(!back.kind.contains("--"));
        assert_eq!(back.keys, vec!["k_ey_x".to_string()]);
        assert_eq!(clean("needs-account:1"), "needs-account:1");
        assert_eq!(clean("a---b"), "a-_-b");
    }

    #[test]
    fn weak_keys_are_refused() {
        assert_eq!(
            MarkerKey::new(&Secret::new("short")).unwrap_err(),
            MarkerError::WeakKey
        );
    }
}
