//! The sandbox: stateful fakes of GitLab, Zendesk (one server per instance)
//! and Google, served over HTTP on loopback. Used by the tests, by `demo`, and
//! by `access-bot sandbox` for anyone who wants to try the bot first.

pub mod crash;
pub mod faults;
pub mod gitlab;
pub mod google;
pub mod harness;
pub mod notify;
pub mod okta;
pub mod scenario;
pub mod zendesk;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::task::JoinHandle;

use crate::config::Config;
use crate::secret::Secrets;
use faults::{Flavor, Knobs};

/// The project the sandbox's issues live in.
pub const PROJECT: &str = "support/access-requests";
pub const DOMAIN: &str = "gitlab.com";
pub const SERVICE_ACCOUNT: &str = "access-bot@access-bot-sandbox.iam.gserviceaccount.com";

/// People of the default world: (GitLab username, name, email).
/// The Support Team repository (per-agent files deleted on offboarding).
pub const SUPPORT_TEAM: &str = "gitlab-support-readiness/support-team";

pub const PEOPLE: &[(&str, &str, &str)] = &[
    ("access-bot", "access-bot", "access-bot@gitlab.com"),
    (
        "gitlab-employment-bot",
        "Employment Bot",
        "employment-bot@gitlab.com",
    ),
    ("lyle", "Lyle Kozloff", "lyle@gitlab.com"),
    ("jason", "Jason Colyer", "jason@gitlab.com"),
    (
        "people-connect-1",
        "Pat People",
        "people-connect-1@gitlab.com",
    ),
    ("mlee", "Morgan Lee", "mlee@gitlab.com"),
    ("kpatel", "Kiran Patel", "kpatel@gitlab.com"),
    ("jdoe", "Jane Doe", "jane.doe@gitlab.com"),
    ("srivera", "Sam Rivera", "sam.rivera@gitlab.com"),
    ("achen", "Alex Chen", "alex.chen@gitlab.com"),
    ("bli", "Bo Li", "bo.li@gitlab.com"),
    ("rkim", "Robin Kim", "robin.kim@gitlab.com"),
    ("mallory", "Mallory Mallet", "mallory@gitlab.com"),
];

/// The company directory's reporting lines of the default world
/// (person -> manager). Anyone else has no manager on record.
pub const MANAGERS: &[(&str, &str)] = &[
    ("jane.doe@gitlab.com", "mlee@gitlab.com"),
    ("robin.kim@gitlab.com", "mlee@gitlab.com"),
    ("bo.li@gitlab.com", "mlee@gitlab.com"),
    ("mallory@gitlab.com", "mlee@gitlab.com"),
    ("alex.chen@gitlab.com", "kpatel@gitlab.com"),
    ("casey.quinn@gitlab.com", "mlee@gitlab.com"),
    ("lyle@gitlab.com", "mlee@gitlab.com"),
    ("sam.rivera@gitlab.com", "kpatel@gitlab.com"),
    ("mlee@gitlab.com", "kpatel@gitlab.com"),
    ("kpatel@gitlab.com", "jason@gitlab.com"),
];

pub struct ZendeskInstanceServer {
    pub server: zendesk::ZendeskServer,
    pub knobs: Knobs,
    pub addr: SocketAddr,
}

/// A running sandbox. Dropping it stops the servers.
pub struct Sandbox {
    pub gitlab: gitlab::GitlabServer,
    pub gitlab_knobs: Knobs,
    pub gitlab_addr: SocketAddr,
    pub zendesk: BTreeMap<String, ZendeskInstanceServer>,
    pub google: google::GoogleServer,
    pub google_knobs: Knobs,
    pub google_addr: SocketAddr,
    /// The Okta org (the group directory of instances whose
    /// `group_directory` is okta; see `start_with`).
    pub okta: okta::OktaServer,
    pub okta_knobs: Knobs,
    pub okta_addr: SocketAddr,
    /// Which directory holds the instances' app groups.
    pub backend: GroupBackend,
    /// Secrets the bot needs, keyed by the environment variable names of `config`.
    pub secrets: Secrets,
    /// A configuration pointing at these servers.
    pub config: Config,
    /// Every e-mail the bot sent.
    pub smtp: notify::SmtpSink,
    pub smtp_addr: SocketAddr,
    /// Every Slack notice the bot posted.
    pub slack: notify::SlackServer,
    pub slack_knobs: Knobs,
    pub slack_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Which group directory the sandbox's configuration uses for every
/// instance's app group (the workflow tests run with each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupBackend {
    #[default]
    Google,
    /// Okta, through an OAuth service app (private-key JWT).
    Okta,
    /// Okta, with an API token.
    OktaApiToken,
}

/// Ports: `None` for ephemeral ones (tests), or a base port: GitLab on it,
/// Google on +1, Zendesk instances on +2, +3, ..., Okta on +12.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ports {
    pub base: Option<u16>,
}

async fn serve(
    router: axum::Router,
    knobs: Knobs,
    port: u16,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let app = router.layer(axum::middleware::from_fn_with_state(
        knobs,
        faults::middleware,
    ));
    let listener = bind_loopback(port).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%addr, error = %e, "sandbox server stopped");
        }
    });
    Ok((addr, task))
}

/// Bind 127.0.0.1:`port` (0: any free port); the error names the port, so
/// that `sandbox --port` says which one is taken.
pub async fn bind_loopback(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on 127.0.0.1:{port}: {e}"))
        })
}

/// The example configuration shipped with the bot, parsed once.
pub fn example_config() -> Result<Config, crate::config::ConfigError> {
    Config::parse(
        include_str!("../../bot.toml"),
        std::path::Path::new("bot.toml"),
    )
}

impl Sandbox {
    /// Start the three services with the default world (the people, roles,
    /// groups and Okta groups the example `bot.toml` names).
    pub async fn start(ports: Ports) -> anyhow::Result<Sandbox> {
        Sandbox::start_with(ports, GroupBackend::Google).await
    }

    /// As `start`, with every instance's app group in `backend`.
    pub async fn start_with(ports: Ports, backend: GroupBackend) -> anyhow::Result<Sandbox> {
        let mut config = example_config().map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(b) = ports.base
            && b.checked_add(12).is_none()
        {
            anyhow::bail!("port {b} is too high: the sandbox uses {b} to {b}+12");
        }
        let port = |i: u16| ports.base.map(|b| b + i).unwrap_or(0);

        let gl = gitlab::GitlabServer::new();
        gl.start_hook_delivery();
        let gitlab_knobs = Knobs::new(Flavor::Gitlab);
        let (gitlab_addr, t1) =
            serve(gitlab::router(gl.clone()), gitlab_knobs.clone(), port(0)).await?;

        let g = google::GoogleServer::new(DOMAIN);
        let google_knobs = Knobs::new(Flavor::Google);
        let (google_addr, t2) =
            serve(google::router(g.clone()), google_knobs.clone(), port(1)).await?;
        let mut tasks = vec![t1, t2];

        let mut secrets: Vec<(String, String)> = Vec::new();
        {
            let mut w = gl.lock();
            for (u, n, e) in PEOPLE {
                w.add_user(u, n, e);
            }
            // On gitlab.com the bot learns e-mails as an Owner of the
            // top-level group whose verified domain the company's users are on.
            if let Some(group) = &config.identity.enterprise_group {
                let owner = w
                    .user_by_name(&config.gitlab.bot_username)
                    .map(|u| u.id)
                    .into_iter()
                    .collect::<Vec<_>>();
                w.add_group(group, DOMAIN, &owner);
            }
            w.add_project(PROJECT);
            w.base_url = format!("http://{gitlab_addr}");
            secrets.push((
                config.bot.marker_key_env.clone(),
                hex::encode(rand::random::<[u8; 32]>()),
            ));
            secrets.push((
                config.gitlab.token_env.clone(),
                w.user_by_name(&config.gitlab.bot_username)
                    .map(|u| u.token.clone())
                    .unwrap_or_default(),
            ));
        }
        config.gitlab.url = format!("http://{gitlab_addr}");
        config.gitlab.projects = vec![PROJECT.to_string()];
        config.gitlab.poll_interval =
            crate::config::PollInterval::every(std::time::Duration::from_secs(2), "2s");
        config.gitlab.poll_overlap = crate::config::Dur::parse("2s").map_err(anyhow::Error::msg)?;
        config.bot.state_db = std::path::PathBuf::from(":memory:");

        {
            let mut w = g.lock();
            w.token_uri = format!("http://{google_addr}/token");
            for (_, _, e) in PEOPLE {
                let manager = MANAGERS.iter().find(|(p, _)| p == e).map(|(_, m)| *m);
                w.add_person(e, manager);
            }
            for (p, m) in MANAGERS {
                w.add_person(p, Some(m));
            }
            w.users.insert("zendesk-admin@gitlab.com".into());
            w.group_admins.insert("zendesk-admin@gitlab.com".into());
            for z in config.zendesk.values() {
                if let Some(og) = &z.okta_group {
                    w.add_group(og);
                }
            }
            let key = w
                .create_service_account(SERVICE_ACCOUNT, true)
                .map_err(|e| anyhow::anyhow!(e))?;
            // Its admin role also reads users (the directory check).
            w.user_readers.insert(SERVICE_ACCOUNT.to_string());
            if let Some(gc) = config.google.as_mut() {
                gc.base_url = format!("http://{google_addr}");
                gc.key_path = None;
                let var = gc
                    .key_env
                    .clone()
                    .unwrap_or_else(|| "GOOGLE_SERVICE_ACCOUNT_KEY".into());
                gc.key_env = Some(var.clone());
                secrets.push((var, key));
            }
        }

        // The Okta org: the same people, the instances' groups, and both
        // kinds of credential (the configuration picks one).
        let ok = okta::OktaServer::new();
        let okta_knobs = Knobs::new(Flavor::Okta);
        let (okta_addr, t_okta) =
            serve(okta::router(ok.clone()), okta_knobs.clone(), port(12)).await?;
        tasks.push(t_okta);
        {
            let mut w = ok.lock();
            w.org_url = format!("http://{okta_addr}");
            for (_, _, e) in PEOPLE {
                w.add_user(e);
            }
            for (p, m) in MANAGERS {
                w.add_user(p);
                w.add_user(m);
            }
            for z in config.zendesk.values() {
                if let Some(og) = &z.okta_group {
                    w.add_group(og);
                }
            }
            let auth = match backend {
                GroupBackend::Google => None,
                GroupBackend::Okta => {
                    let (client_id, pem) = w
                        .create_service_app(&[okta::GROUPS_MANAGE, okta::USERS_READ])
                        .map_err(|e| anyhow::anyhow!(e))?;
                    secrets.push(("OKTA_PRIVATE_KEY".into(), pem));
                    Some(crate::config::OktaAuth::PrivateKeyJwt {
                        client_id,
                        key_env: "OKTA_PRIVATE_KEY".into(),
                        key_id: None,
                    })
                }
                GroupBackend::OktaApiToken => {
                    secrets.push(("OKTA_API_TOKEN".into(), w.create_api_token()));
                    Some(crate::config::OktaAuth::ApiToken {
                        token_env: "OKTA_API_TOKEN".into(),
                    })
                }
            };
            if let Some(auth) = auth {
                config.okta = Some(crate::config::OktaConfig {
                    aliases: vec!["Okta".into(), "Okta group".into()],
                    org_url: format!("http://{okta_addr}"),
                    auth,
                    requests_per_minute: 600,
                });
                for z in config.zendesk.values_mut() {
                    z.group_directory = crate::config::GroupDirectoryKind::Okta;
                }
            }
        }

        let mut zendesk = BTreeMap::new();
        for (i, (name, inst)) in config.zendesk.iter_mut().enumerate() {
            let server = zendesk::ZendeskServer::new(name);
            let knobs = Knobs::new(Flavor::Zendesk);
            let (addr, task) = serve(
                zendesk::router(server.clone()),
                knobs.clone(),
                port(2 + i as u16),
            )
            .await?;
            tasks.push(task);
            {
                let mut w = server.lock();
                for level in inst.access_levels.values() {
                    if let Some(cr) = &level.custom_role
                        && w.role_by_name(cr).is_none()
                    {
                        w.add_custom_role(cr, 0);
                    }
                    for g in &level.groups {
                        w.add_group(g);
                    }
                }
                // Managers are full agents who can take tickets.
                let support = inst
                    .access_levels
                    .values()
                    .find(|l| !l.light_agent)
                    .cloned();
                for m in ["mlee", "kpatel"] {
                    let (_, n, e) = PEOPLE
                        .iter()
                        .find(|p| p.0 == m)
                        .copied()
                        .unwrap_or(("", "", ""));
                    let role = support
                        .as_ref()
                        .and_then(|l| l.custom_role.as_ref())
                        .and_then(|c| w.role_by_name(c));
                    let id = w.add_user(n, e, "agent", role);
                    for g in support.iter().flat_map(|l| l.groups.clone()) {
                        let gid = w.add_group(&g);
                        w.join_group(id, gid);
                    }
                }
                match &inst.auth {
                    crate::config::ZendeskAuth::Oauth {
                        client_id_env,
                        client_secret_env,
                        ..
                    } => {
                        let (id, secret) = (
                            format!("access-bot-{name}"),
                            format!("zd-secret-{name}-sandbox"),
                        );
                        w.oauth_clients.insert(id.clone(), (secret.clone(), true));
                        secrets.push((client_id_env.clone(), id));
                        secrets.push((client_secret_env.clone(), secret));
                    }
                    crate::config::ZendeskAuth::ApiToken {
                        email_env,
                        token_env,
                    } => {
                        let token = format!("zd-apitoken-{name}-sandbox");
                        w.api_tokens
                            .insert("access-bot@gitlab.com".into(), token.clone());
                        secrets.push((email_env.clone(), "access-bot@gitlab.com".into()));
                        secrets.push((token_env.clone(), token));
                    }
                }
            }
            inst.base_url = format!("http://{addr}");
            zendesk.insert(
                name.clone(),
                ZendeskInstanceServer {
                    server,
                    knobs,
                    addr,
                },
            );
        }

        // The Support Team repository, with one leaver's file.
        {
            let mut w = gl.lock();
            w.add_project(SUPPORT_TEAM);
            w.put_file(
                SUPPORT_TEAM,
                "main",
                "data/agents/cquinn.yaml",
                "name: Casey Quinn\nzendesk: global\n",
            );
            w.put_file(
                SUPPORT_TEAM,
                "main",
                "data/agents/lyle.yaml",
                "name: Lyle Kozloff\n",
            );
        }
        if let Some(st) = config.support_team.as_mut() {
            st.project = SUPPORT_TEAM.to_string();
            // The sandbox is fast; look at open merge requests every cycle.
            st.check_every = crate::config::Dur::parse("0s").map_err(anyhow::Error::msg)?;
        }

        // Where notices land: an SMTP sink and a Slack webhook.
        let smtp = notify::SmtpSink::default();
        let (smtp_addr, t_smtp) = smtp.serve(port(10)).await?;
        tasks.push(t_smtp);
        let slack = notify::SlackServer::default();
        let slack_path = "/services/T0SANDBOX/B0SANDBOX/sandboxslacksecret".to_string();
        slack.lock().path = slack_path.clone();
        let slack_knobs = Knobs::new(Flavor::Other);
        let (slack_addr, t_slack) = serve(
            notify::slack_router(slack.clone()),
            slack_knobs.clone(),
            port(11),
        )
        .await?;
        tasks.push(t_slack);
        if let Some(n) = config.notify.as_mut() {
            if let Some(e) = n.email.as_mut() {
                e.smtp_host = "127.0.0.1".into();
                e.smtp_port = Some(smtp_addr.port());
                e.tls = crate::config::SmtpTls::None;
                if let (Some(u), Some(pw)) = (&e.username_env, &e.password_env) {
                    smtp.lock().credentials =
                        Some(("access-bot".into(), "smtp-password-sandbox".into()));
                    secrets.push((u.clone(), "access-bot".into()));
                    secrets.push((pw.clone(), "smtp-password-sandbox".into()));
                }
            }
            if let Some(sl) = &n.slack {
                secrets.push((
                    sl.webhook_env.clone(),
                    format!("http://{slack_addr}{slack_path}"),
                ));
            }
        }

        Ok(Sandbox {
            smtp,
            smtp_addr,
            slack,
            slack_knobs,
            slack_addr,
            gitlab: gl,
            gitlab_knobs,
            gitlab_addr,
            zendesk,
            google: g,
            google_knobs,
            google_addr,
            okta: ok,
            okta_knobs,
            okta_addr,
            backend,
            secrets: Secrets::from_map(secrets),
            config,
            tasks,
        })
    }

    pub fn zd(&self, instance: &str) -> std::sync::MutexGuard<'_, zendesk::ZendeskWorld> {
        match self.zendesk.get(instance) {
            Some(z) => z.server.lock(),
            None => panic!("no Zendesk instance {instance} in the sandbox"),
        }
    }

    pub fn zd_knobs(&self, instance: &str) -> &Knobs {
        match self.zendesk.get(instance) {
            Some(z) => &z.knobs,
            None => panic!("no Zendesk instance {instance} in the sandbox"),
        }
    }

    /// Every server's request log, one after the other.
    pub fn logs(&self) -> Vec<faults::LogEntry> {
        self.all_knobs().flat_map(|k| k.log()).collect()
    }

    /// The writes every server saw (token requests are none), as `METHOD path`.
    pub fn writes(&self) -> Vec<String> {
        self.all_knobs().flat_map(|k| k.writes()).collect()
    }

    fn all_knobs(&self) -> impl Iterator<Item = &faults::Knobs> {
        [&self.gitlab_knobs, &self.google_knobs, &self.okta_knobs]
            .into_iter()
            .chain(self.zendesk.values().map(|z| &z.knobs))
    }

    /// Clear every server's request log.
    pub fn clear_logs(&self) {
        for k in self.all_knobs() {
            k.clear_log();
        }
    }

    /// Token of a sandbox GitLab user.
    pub fn token_of(&self, username: &str) -> String {
        self.gitlab
            .lock()
            .user_by_name(username)
            .map(|u| u.token.clone())
            .unwrap_or_default()
    }

    /// A configuration snippet for a real `bot.toml` pointing at this sandbox.
    pub fn snippet(&self) -> String {
        let mut s = format!(
            "[gitlab]\nurl = \"http://{}\"\nprojects = [\"{PROJECT}\"]\n# export {}={}\n",
            self.gitlab_addr,
            self.config.gitlab.token_env,
            self.token_of(&self.config.gitlab.bot_username)
        );
        for (name, z) in &self.zendesk {
            s.push_str(&format!(
                "\n[zendesk.{name}]\nbase_url = \"http://{}\"\n",
                z.addr
            ));
        }
        s.push_str(&format!(
            "\n[google]\nbase_url = \"http://{}\"\n# the key's token_uri is http://{}/token\n",
            self.google_addr, self.google_addr
        ));
        s.push_str(&format!(
            "\n[notify.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\ntls = \"none\"\n# an SMTP sink: it keeps what it receives\n\n[notify.slack]\n# a fake incoming webhook at http://{}/services/T0SANDBOX/B0SANDBOX/sandboxslacksecret\n",
            self.smtp_addr.port(),
            self.slack_addr
        ));
        s
    }
}

impl Sandbox {
    /// A complete `bot.toml` pointing at this sandbox: the example configuration
    /// with the URLs, project, state database and (optionally) a webhook listener replaced.
    /// With `key_path`, the Google key is read from that file instead of the environment.
    pub fn config_toml(
        &self,
        state_db: &str,
        webhook_listen: Option<&str>,
        poll_interval: &str,
        key_path: Option<&str>,
    ) -> String {
        let mut out = String::new();
        let mut section = String::new();
        for line in include_str!("../../bot.toml").lines() {
            let t = line.trim_start();
            if t.starts_with('[') {
                section = t.trim_matches(|c| c == '[' || c == ']').to_string();
            }
            let replaced = match (section.as_str(), t.split('=').next().map(str::trim)) {
                ("gitlab", Some("url")) => format!("url = \"http://{}\"", self.gitlab_addr),
                ("gitlab", Some("projects")) => format!("projects = [\"{PROJECT}\"]"),
                ("gitlab", Some("poll_interval")) => format!("poll_interval = \"{poll_interval}\""),
                ("gitlab", Some("poll_overlap")) => "poll_overlap = \"2s\"".to_string(),
                ("bot", Some("state_db")) => format!("state_db = \"{state_db}\""),
                // The file is written elsewhere: a relative folder would not be there.
                ("bot", Some("templates_dir")) => {
                    "# templates_dir: left out, the built-in templates".to_string()
                }
                (s, Some("base_url")) if s.starts_with("zendesk.") => {
                    let name = s.trim_start_matches("zendesk.");
                    match self.zendesk.get(name) {
                        Some(z) => format!("base_url = \"http://{}\"", z.addr),
                        None => line.to_string(),
                    }
                }
                ("notify.email", Some("smtp_host")) => format!(
                    "smtp_host = \"127.0.0.1\"\nsmtp_port = {}",
                    self.smtp_addr.port()
                ),
                ("notify.email", Some("tls")) => "tls = \"none\"".to_string(),
                ("support_team", Some("project")) => format!("project = \"{SUPPORT_TEAM}\""),
                (s, Some("okta_group"))
                    if s.starts_with("zendesk.") && self.backend != GroupBackend::Google =>
                {
                    format!("{line}\ngroup_directory = \"okta\"")
                }
                ("google", Some("key_env")) => match key_path {
                    Some(p) => format!(
                        "key_path = \"{p}\"\nbase_url = \"http://{}\"",
                        self.google_addr
                    ),
                    None => format!("{line}\nbase_url = \"http://{}\"", self.google_addr),
                },
                _ => line.to_string(),
            };
            out.push_str(&replaced);
            out.push('\n');
        }
        // Any free port, so that several sandboxes and bots can run side by
        // side; `run` logs the address it bound.
        out.push_str("\n[ops]\nlisten = \"127.0.0.1:0\"\n");
        if let Some(o) = &self.config.okta {
            out.push_str(&format!(
                "\n[okta]\naliases = [\"Okta\", \"Okta group\"]\norg_url = \"{}\"\n\n[okta.auth]\n",
                o.org_url
            ));
            match &o.auth {
                crate::config::OktaAuth::ApiToken { token_env } => out.push_str(&format!(
                    "kind = \"api_token\"\ntoken_env = \"{token_env}\"\n"
                )),
                crate::config::OktaAuth::PrivateKeyJwt {
                    client_id, key_env, ..
                } => out.push_str(&format!(
                    "kind = \"private_key_jwt\"\nclient_id = \"{client_id}\"\nkey_env = \"{key_env}\"\n"
                )),
            }
        }
        if let Some(listen) = webhook_listen {
            out.push_str(&format!(
                "\n[webhook]\nlisten = \"{listen}\"\ntoken_env = \"GITLAB_WEBHOOK_SECRET\"\n"
            ));
        }
        out
    }

    /// The environment a separate `access-bot` process needs to use this sandbox.
    pub fn env(&self) -> Vec<(String, String)> {
        self.config
            .secret_envs()
            .into_iter()
            .filter_map(|(var, _)| {
                self.secrets
                    .get(&var)
                    .ok()
                    .map(|v| (var, v.expose().to_string()))
            })
            .collect()
    }
}
