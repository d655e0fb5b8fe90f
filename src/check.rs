//! `access-bot check`: call each system once and say, per system, that the
//! bot can act, or exactly what is wrong.

use crate::config::Config;
use crate::gitlab::{GitlabApi, GitlabClient};
use crate::secret::Secrets;

/// One line per check; returns whether everything passed.
pub async fn run(cfg: &Config, secrets: &Secrets) -> bool {
    let lines = report(cfg, secrets).await;
    for (ok, line) in &lines {
        println!("{} {line}", if *ok { "ok  " } else { "FAIL" });
    }
    lines.iter().all(|(ok, _)| *ok)
}

pub async fn report(cfg: &Config, secrets: &Secrets) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    match secrets.get(&cfg.gitlab.token_env) {
        Err(e) => out.push((false, format!("GitLab: {e}"))),
        Ok(token) => {
            match GitlabClient::connect(&cfg.gitlab.url, &token, cfg.gitlab_timeout()).await {
                Err(e) => out.push((false, format!("GitLab: {e}"))),
                Ok(gl) => match gl.me().await {
                    Ok(me) if me.username.eq_ignore_ascii_case(&cfg.gitlab.bot_username) => {
                        out.push((
                            true,
                            format!("GitLab {}: connected as @{}", cfg.gitlab.url, me.username),
                        ));
                        for p in &cfg.gitlab.projects {
                            match gl
                                .list_issues(
                                    p,
                                    cfg.poll_labels().first().map(String::as_str),
                                    Some(chrono::Utc::now()),
                                )
                                .await
                            {
                                Ok(_) => {
                                    out.push((true, format!("GitLab project {p}: issues readable")))
                                }
                                Err(e) => out.push((false, format!("GitLab project {p}: {e}"))),
                            }
                        }
                        if let Some(st) = &cfg.support_team {
                            match gl.branch_exists(&st.project, &st.target_branch).await {
                            Ok(true) => out.push((
                                true,
                                format!(
                                    "Support Team repository {}: branch {} readable",
                                    st.project, st.target_branch
                                ),
                            )),
                            Ok(false) => out.push((
                                false,
                                format!(
                                    "Support Team repository {}: no branch {} (support_team.target_branch)",
                                    st.project, st.target_branch
                                ),
                            )),
                            Err(e) => out.push((
                                false,
                                format!("Support Team repository {}: {e}", st.project),
                            )),
                        }
                        }
                    }
                    Ok(me) => out.push((
                        false,
                        format!(
                            "GitLab: the token belongs to @{}, but gitlab.bot_username is {}",
                            me.username, cfg.gitlab.bot_username
                        ),
                    )),
                    Err(e) => out.push((false, format!("GitLab: {e}"))),
                },
            }
        }
    }
    let http = reqwest::Client::new();
    out.extend(crate::accounts::check(cfg, secrets, &http).await);
    match crate::groups::Directories::connect(cfg, secrets, http.clone()) {
        Err(e) => out.push((false, e.to_string())),
        Ok(dirs) => {
            let mut refreshed = std::collections::BTreeSet::new();
            for name in cfg.zendesk.keys() {
                let (Some(group), Some(dir)) = (cfg.app_group(name), dirs.of(name)) else {
                    continue;
                };
                let label = dir.label();
                match dir.list_members(group).await {
                    Ok(m) => out.push((
                        true,
                        format!(
                            "{label} group {group} ({name}): readable, {} members",
                            m.len()
                        ),
                    )),
                    Err(e) => out.push((false, format!("{label} group {group} ({name}): {e}"))),
                }
                // A refused token is dropped and a new one fetched: that must
                // work (once per directory).
                if refreshed.insert(label) {
                    match dir.refresh().await {
                        Ok(what) => out.push((true, format!("{label}: {what}"))),
                        Err(e) => out.push((false, format!("{label} token refresh: {e}"))),
                    }
                }
            }
        }
    }
    out.extend(identity(cfg, secrets, &http).await);
    if let Some(n) = &cfg.notify {
        if let Some(e) = &n.email {
            match crate::notify::Mailer::new(e, secrets) {
                Err(err) => out.push((false, format!("SMTP: {err}"))),
                Ok(m) => match m.check().await {
                    Ok(()) => out.push((
                        true,
                        format!("SMTP {} ({}): connected and accepted", e.smtp_host, e.tls),
                    )),
                    Err(err) => out.push((false, format!("SMTP {}: {err}", e.smtp_host))),
                },
            }
        }
        if let Some(sl) = &n.slack {
            // Slack has no way to test a webhook without posting to the channel.
            match secrets.get(&sl.webhook_env) {
                Ok(url) if url.expose().starts_with("https://hooks.slack.com/") => out.push((
                    true,
                    "Slack webhook: configured (not posted to; Slack has no test call)".into(),
                )),
                Ok(_) => out.push((
                    true,
                    "Slack webhook: configured, not a hooks.slack.com address (a proxy or a test server?)".into(),
                )),
                Err(e) => out.push((false, format!("Slack: {e}"))),
            }
        }
    }
    out
}

/// Whether each identity source answers for the bot's token, and the
/// directory for its service account.
async fn identity(cfg: &Config, secrets: &Secrets, http: &reqwest::Client) -> Vec<(bool, String)> {
    use crate::config::IdentitySource;
    let mut out = Vec::new();
    let gl = match secrets.get(&cfg.gitlab.token_env) {
        Ok(token) => GitlabClient::connect(&cfg.gitlab.url, &token, cfg.gitlab_timeout())
            .await
            .ok(),
        Err(_) => None,
    };
    for source in &cfg.identity.sources {
        match source {
            IdentitySource::GitlabEnterpriseUsers => {
                let group = cfg.identity.enterprise_group.clone().unwrap_or_default();
                let Some(gl) = &gl else {
                    out.push((
                        false,
                        "Identity (enterprise users): GitLab not reachable".into(),
                    ));
                    continue;
                };
                match gl.enterprise_user(&group, &cfg.gitlab.bot_username).await {
                    Ok(_) => out.push((
                        true,
                        format!("Identity: enterprise users of group {group} readable (e-mails of its users)"),
                    )),
                    Err(e) => out.push((
                        false,
                        format!(
                            "Identity: cannot list the enterprise users of group {group} (the bot's user must be an Owner of that top-level group): {e}"
                        ),
                    )),
                }
            }
            IdentitySource::GitlabAdmin => {
                let Some(gl) = &gl else {
                    out.push((
                        false,
                        "Identity (GitLab admin): GitLab not reachable".into(),
                    ));
                    continue;
                };
                match gl.me().await {
                    Ok(me) if me.is_admin == Some(true) => out.push((
                        true,
                        "Identity: the GitLab token is an administrator's (reads users' e-mails)".into(),
                    )),
                    Ok(_) => out.push((
                        false,
                        "Identity: gitlab_admin needs an administrator's token; this one cannot read other users' e-mails (on gitlab.com use gitlab_enterprise_users)".into(),
                    )),
                    Err(e) => out.push((false, format!("Identity (GitLab admin): {e}"))),
                }
            }
            IdentitySource::Map => match &cfg.identity.map_path {
                Some(p) => match crate::identity::read_map(p) {
                    Ok(m) => out.push((
                        true,
                        format!("Identity: {} people in {}", m.len(), p.display()),
                    )),
                    Err(e) => out.push((false, format!("Identity: {e}"))),
                },
                None => out.push((false, "Identity: map without map_path".into())),
            },
        }
    }
    if cfg.identity.directory
        && let Some(g) = &cfg.google
    {
        let probe = cfg
            .bot
            .allowed_email_domains
            .first()
            .and_then(|d| crate::request::Email::parse(&format!("access-bot-check@{d}")).ok());
        match (
            crate::directory::DirectoryClient::new(g, secrets, http.clone()),
            probe,
        ) {
            (Err(e), _) => out.push((false, e.to_string())),
            (Ok(_), None) => out.push((
                false,
                "Directory: set bot.allowed_email_domains (the company's domain)".into(),
            )),
            (Ok(d), Some(probe)) => match d.person(&probe).await {
                Ok(_) => out.push((
                    true,
                    format!("Directory: users of {} readable", probe.domain()),
                )),
                Err(e) => out.push((false, e.to_string())),
            },
        }
    }
    out
}
