//! Email addresses, parsed rather than split.
//!
//! Accepted: `local@domain` with exactly one `@`, an ASCII dot-atom local part
//! (no quotes, no comments, no display names) and an ASCII domain of at least
//! two labels without a trailing dot. Anything else is an error; this is a
//! gatekeeper for who gets access, not a general RFC 5322 parser.
//!
//! Sub-addressing: an address with `+tag` in the local part is refused.
//! `jane+x@example.com` reaches Jane's mailbox but is a different identity in
//! Zendesk and in Google, so provisioning it would create a second account that
//! Okta cannot tie to the person, and would let one person hold several seats.

use std::fmt;

#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct Email(String);

/// Deserialising goes through the parser: no way around the rules.
impl TryFrom<String> for Email {
    type Error = EmailError;
    fn try_from(s: String) -> Result<Email, EmailError> {
        Email::parse(&s)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("no email address given")]
    Empty,
    #[error("{0} is not a plain email address: it must contain exactly one @")]
    AtCount(String),
    #[error(
        "{0} contains characters that are not allowed in an address (only ASCII letters, digits and . _ - are accepted)"
    )]
    BadLocal(String),
    #[error("{0} uses a sub-address (+tag); give the person's primary address")]
    SubAddress(String),
    #[error(
        "{0} has an invalid domain (ASCII letters, digits, hyphens and dots only, no trailing dot)"
    )]
    BadDomain(String),
    #[error("{0} is too long")]
    TooLong(String),
}

impl Email {
    /// Parse a value as written in an issue. Surrounding whitespace, a
    /// `mailto:` prefix and angle brackets or backticks around the whole value
    /// are tolerated; nothing else is.
    pub fn parse(raw: &str) -> Result<Email, EmailError> {
        let mut s = raw.trim();
        for (open, close) in [("<", ">"), ("`", "`")] {
            if s.len() >= 2 && s.starts_with(open) && s.ends_with(close) {
                s = s[open.len()..s.len() - close.len()].trim();
            }
        }
        if let Some(rest) = s.strip_prefix("mailto:") {
            s = rest;
        }
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        let shown = truncate(s);
        if s.len() > 254 {
            return Err(EmailError::TooLong(shown));
        }
        let mut parts = s.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(EmailError::AtCount(shown));
        };
        if local.is_empty()
            || local.len() > 64
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
            || !local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        {
            return Err(EmailError::BadLocal(shown));
        }
        if local.contains('+') {
            return Err(EmailError::SubAddress(shown));
        }
        let domain_ok = !domain.is_empty()
            && domain.len() <= 253
            && domain.split('.').count() >= 2
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !domain_ok {
            return Err(EmailError::BadDomain(shown));
        }
        Ok(Email(format!(
            "{}@{}",
            local.to_ascii_lowercase(),
            domain.to_ascii_lowercase()
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }

    /// Exact domain match against the allowed list: no suffix, no subdomain.
    pub fn domain_allowed(&self, allowed: &[String]) -> bool {
        allowed
            .iter()
            .any(|a| a.trim().eq_ignore_ascii_case(self.domain()))
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rejected value, inert (it is repeated in a comment).
fn truncate(s: &str) -> String {
    crate::render::code_span(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["gitlab.com".to_string()]
    }

    #[test]
    fn accepts_plain_and_normalises_case() {
        let e = Email::parse(" Jane.Doe@GitLab.com ").unwrap();
        assert_eq!(e.as_str(), "jane.doe@gitlab.com");
        assert!(e.domain_allowed(&allowed()));
        assert_eq!(
            Email::parse("<a_b-c@gitlab.com>").unwrap().as_str(),
            "a_b-c@gitlab.com"
        );
        assert_eq!(
            Email::parse("mailto:x@gitlab.com").unwrap().as_str(),
            "x@gitlab.com"
        );
    }

    #[test]
    fn refuses_tricks() {
        for bad in [
            "a@gitlab.com@evil.io",
            "\"a@b\"@gitlab.com",
            "Jane <jane@gitlab.com>",
            "a@gitlab.com.",
            "a@gitlab",
            "a@-gitlab.com",
            "a@gitlаb.com", // Cyrillic а
            "jаne@gitlab.com",
            "a b@gitlab.com",
            ".a@gitlab.com",
            "a..b@gitlab.com",
            "a@",
            "@gitlab.com",
            "",
            "a+tag@gitlab.com",
            "a@gitlab..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn domain_must_match_exactly() {
        for addr in [
            "a@gitlab.com.evil.io",
            "a@evil-gitlab.com",
            "a@sub.gitlab.com",
        ] {
            let e = Email::parse(addr).unwrap();
            assert!(!e.domain_allowed(&allowed()), "{addr}");
        }
    }

    #[test]
    fn sub_address_has_its_own_reason() {
        assert!(matches!(
            Email::parse("jane+zd@gitlab.com"),
            Err(EmailError::SubAddress(_))
        ));
    }
}
