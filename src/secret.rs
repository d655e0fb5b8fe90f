//! A value that must never be printed: `Debug` and `Display` show `***`.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The only way to read the value; grep for it to audit every use.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Read from an environment variable named in the configuration.
    pub fn from_env(var: &str) -> Result<Secret, SecretError> {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_string())),
            _ => Err(SecretError::Missing(var.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("environment variable {0} is not set (the configuration names it for a credential)")]
    Missing(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}

/// Where credentials come from: the environment in production, a map in the
/// sandbox and tests (environment variables are process-wide and tests run in parallel).
#[derive(Clone, Default)]
pub struct Secrets {
    map: Option<std::collections::HashMap<String, Secret>>,
}

impl Secrets {
    pub fn from_env() -> Secrets {
        Secrets { map: None }
    }

    pub fn from_map(pairs: impl IntoIterator<Item = (String, String)>) -> Secrets {
        Secrets {
            map: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k, Secret::new(v)))
                    .collect(),
            ),
        }
    }

    /// The secret held by the variable the configuration names.
    pub fn get(&self, var: &str) -> Result<Secret, SecretError> {
        match &self.map {
            None => Secret::from_env(var),
            Some(m) => m
                .get(var)
                .cloned()
                .ok_or_else(|| SecretError::Missing(var.to_string())),
        }
    }

    /// Every secret value, for tests that grep logs for leaks.
    pub fn values(&self) -> Vec<String> {
        self.map
            .as_ref()
            .map(|m| m.values().map(|s| s.expose().to_string()).collect())
            .unwrap_or_default()
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets(***)")
    }
}
