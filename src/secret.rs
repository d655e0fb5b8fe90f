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

    /// Read from an environment variable named in the configuration, or from
    /// the file that `<VAR>_FILE` names (Kubernetes and Docker secrets).
    pub fn from_env(var: &str) -> Result<Secret, SecretError> {
        Secret::lookup(var, &|k| std::env::var(k).ok())
    }

    /// As `from_env`, with the environment given (tests: the real one is process-wide).
    pub fn lookup(var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, SecretError> {
        let direct = env(var).filter(|v| !v.trim().is_empty());
        let file_var = format!("{var}_FILE");
        let file = env(&file_var).filter(|v| !v.trim().is_empty());
        match (direct, file) {
            (Some(_), Some(_)) => Err(SecretError::Both(var.to_string(), file_var)),
            (Some(v), None) => Ok(Secret(v.trim().to_string())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path.trim()).map_err(|e| SecretError::File {
                    var: file_var.clone(),
                    path: path.trim().to_string(),
                    reason: e.to_string(),
                })?;
                // Files written by editors and `echo` end with a newline that is not part of the secret.
                let v = text.trim_end_matches(['\n', '\r']);
                if v.trim().is_empty() {
                    return Err(SecretError::File {
                        var: file_var,
                        path: path.trim().to_string(),
                        reason: "the file is empty".into(),
                    });
                }
                Ok(Secret(v.to_string()))
            }
            (None, None) => Err(SecretError::Missing(var.to_string())),
        }
    }

    /// Is the secret provided (directly or through `<VAR>_FILE`)? For summaries; reads no file.
    pub fn is_provided(var: &str) -> bool {
        let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
        set(var) || set(&format!("{var}_FILE"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error(
        "environment variable {0} is not set, nor {0}_FILE (the configuration names it for a credential)"
    )]
    Missing(String),
    #[error("both {0} and {1} are set: set one (the value, or the path of a file holding it)")]
    Both(String, String),
    #[error("{var} names {path}, which cannot be read: {reason}")]
    File {
        var: String,
        path: String,
        reason: String,
    },
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

    fn env(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn file_variant_reads_the_file_and_trims_the_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("ab-secret-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        std::fs::write(&p, "glpat-from-file\n").unwrap();
        let path = p.display().to_string();
        let s =
            Secret::lookup("GITLAB_TOKEN", &env(&[("GITLAB_TOKEN_FILE", path.clone())])).unwrap();
        assert_eq!(s.expose(), "glpat-from-file");
        // Inner newlines (a key file's JSON) are kept; only the trailing ones go.
        std::fs::write(&p, "{\n  \"k\": 1\n}\r\n").unwrap();
        let s = Secret::lookup("KEY", &env(&[("KEY_FILE", path.clone())])).unwrap();
        assert_eq!(s.expose(), "{\n  \"k\": 1\n}");
        // Both set is an error, naming both.
        let e = Secret::lookup(
            "GITLAB_TOKEN",
            &env(&[
                ("GITLAB_TOKEN", "x".into()),
                ("GITLAB_TOKEN_FILE", path.clone()),
            ]),
        )
        .unwrap_err();
        assert!(matches!(e, SecretError::Both(..)), "{e}");
        assert!(e.to_string().contains("GITLAB_TOKEN_FILE"), "{e}");
        // A missing or empty file says which variable pointed where.
        let e = Secret::lookup("T", &env(&[("T_FILE", "/nonexistent/x".into())])).unwrap_err();
        assert!(e.to_string().contains("T_FILE names /nonexistent/x"), "{e}");
        std::fs::write(&p, "\n").unwrap();
        let e = Secret::lookup("T", &env(&[("T_FILE", path)])).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        // Neither: the message names both ways.
        let e = Secret::lookup("T", &env(&[])).unwrap_err();
        assert!(e.to_string().contains("T_FILE"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
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
