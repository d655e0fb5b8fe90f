//! The Zendesk and Google connectors over HTTP against the sandbox: every
//! operation, the error shapes, and the fault cases.

use std::time::Duration;

use access_bot::google::{Change, GoogleClient, GoogleError};
use access_bot::http::Backoff;
use access_bot::request::Email;
use access_bot::sandbox::faults::Failure;
use access_bot::sandbox::scenario::ZendeskAccount;
use access_bot::sandbox::{Ports, Sandbox};
use access_bot::secret::Secrets;
use access_bot::zendesk::{Resolved, Ticket, UserPatch, ZendeskApi, ZendeskClient, ZendeskError};

const OKTA: &str = "okta-zendeskglobal-users@gitlab.com";

fn fast() -> Backoff {
    Backoff {
        attempts: 5,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(50),
    }
}

fn client(sb: &Sandbox, secrets: &Secrets) -> ZendeskClient {
    let mut inst = sb.config.zendesk["global"].clone();
    inst.requests_per_minute = 60_000;
    let mut c = ZendeskClient::new("global", &inst, secrets, reqwest::Client::new())
        .unwrap()
        .with_backoff(fast());
    c.job_poll_interval = Duration::from_millis(2);
    c
}

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

#[tokio::test]
async fn zendesk_oauth_token_is_cached_and_refreshed_once_after_401() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let zd = client(&sb, &sb.secrets);
    for _ in 0..3 {
        zd.me().await.unwrap();
    }
    assert_eq!(sb.zd_knobs("global").count("POST", "/oauth/tokens"), 1);
    sb.zd("global").revoke_tokens();
    zd.me().await.unwrap();
    assert_eq!(sb.zd_knobs("global").count("POST", "/oauth/tokens"), 2);
    assert_eq!(
        sb.zd_knobs("global").count("GET", "/api/v2/users/me"),
        5,
        "one 401, then the retry"
    );
}

#[tokio::test]
async fn zendesk_bad_credentials_are_typed_and_never_echo_the_secret() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let secrets = Secrets::from_map([
        (
            "ZENDESK_GLOBAL_CLIENT_ID".to_string(),
            "access-bot-global".to_string(),
        ),
        (
            "ZENDESK_GLOBAL_CLIENT_SECRET".to_string(),
            "wrong-but-secret-value".to_string(),
        ),
    ]);
    let err = client(&sb, &secrets).me().await.unwrap_err();
    assert!(matches!(err, ZendeskError::Unauthorized { .. }), "{err}");
    assert!(!err.to_string().contains("wrong-but-secret-value"));
    assert!(
        err.to_string()
            .contains("Check the OAuth client id and secret")
    );
    let missing = ZendeskClient::new(
        "global",
        &sb.config.zendesk["global"],
        &Secrets::from_map([]),
        reqwest::Client::new(),
    )
    .err()
    .unwrap();
    assert!(
        missing.to_string().contains("ZENDESK_GLOBAL_CLIENT_ID"),
        "{missing}"
    );
}

#[tokio::test]
async fn zendesk_legacy_api_token_works() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    sb.zd("global")
        .api_tokens
        .insert("admin@gitlab.com".into(), "legacy-token".into());
    let mut inst = sb.config.zendesk["global"].clone();
    inst.auth = access_bot::config::ZendeskAuth::ApiToken {
        email_env: "E".into(),
        token_env: "T".into(),
    };
    let secrets = Secrets::from_map([
        ("E".to_string(), "admin@gitlab.com".to_string()),
        ("T".to_string(), "legacy-token".to_string()),
    ]);
    let zd = ZendeskClient::new("global", &inst, &secrets, reqwest::Client::new()).unwrap();
    assert_eq!(zd.me().await.unwrap().role, "admin");
    assert_eq!(sb.zd_knobs("global").count("POST", "/oauth/tokens"), 0);
}

#[tokio::test]
async fn zendesk_user_operations() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let zd = client(&sb, &sb.secrets);
    let resolved = Resolved::load(&zd).await.unwrap();
    let light = resolved.light_agent_role.unwrap();
    assert_eq!(
        sb.zd("global")
            .custom_roles
            .iter()
            .find(|r| r.id == light)
            .unwrap()
            .name,
        "Agent léger",
        "found by role_type, not by name"
    );

    // A near-miss in the search results is never taken.
    sb.zd("global")
        .add_user("Jane Junior", "jane.doe@gitlab.com.au", "agent", None);
    sb.zd("global")
        .add_user("Xjane", "xjane.doe@gitlab.com", "agent", None);
    assert_eq!(
        zd.find_user(&email("jane.doe@gitlab.com")).await.unwrap(),
        None
    );

    let (u, created) = zd
        .create_or_update(
            "Jane Doe",
            &email("jane.doe@gitlab.com"),
            "agent",
            Some(light),
        )
        .await
        .unwrap();
    assert!(created);
    assert_eq!(u.role_type, Some(1));
    let (_, created) = zd
        .create_or_update(
            "Jane Doe",
            &email("jane.doe@gitlab.com"),
            "agent",
            Some(light),
        )
        .await
        .unwrap();
    assert!(!created, "200 on an existing user");
    assert_eq!(
        zd.find_user(&email("JANE.DOE@gitlab.com"))
            .await
            .unwrap()
            .unwrap()
            .id,
        u.id
    );

    assert_eq!(
        zd.add_tags(u.id, &["partner_support_agent".into(), "x".into()])
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        zd.remove_tags(u.id, &["x".into()]).await.unwrap(),
        vec!["partner_support_agent"]
    );

    let se = resolved.roles["support engineer"];
    let u2 = zd
        .update_user(
            u.id,
            &UserPatch {
                role: Some("agent".into()),
                custom_role_id: Some(Some(se)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(u2.custom_role_id, Some(se));
    let amer = resolved.groups["support amer"];
    zd.add_membership(u.id, amer).await.unwrap();
    let ms = zd.memberships(u.id).await.unwrap();
    assert_eq!(ms.len(), 1);
    zd.remove_membership(ms[0].id).await.unwrap();
    zd.remove_membership(ms[0].id).await.unwrap(); // 404: already done
    sb.zd("global")
        .user_mut_by_email("jane.doe@gitlab.com")
        .unwrap()
        .user_fields
        .insert("region".into(), serde_json::json!("EMEA"));
    let cleared = zd
        .update_user(
            u.id,
            &UserPatch {
                clear_fields: vec!["region".into()],
                suspended: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(cleared.filled_fields().is_empty() && cleared.suspended);
    let unsuspended = zd
        .update_user(
            u.id,
            &UserPatch {
                suspended: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!unsuspended.suspended);
    // Paid seats: agents and admins, cursor-paginated.
    let agents = zd.agents().await.unwrap();
    assert!(agents.iter().any(|a| a.id == u.id));
    // A 4xx other than 409/429 is not retried and says what is wrong.
    sb.zd_knobs("global").clear_log();
    let err = zd
        .update_user(
            u.id,
            &UserPatch {
                custom_role_id: Some(Some(12345)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ZendeskError::Invalid { status: 422, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("Custom role is invalid"), "{err}");
    assert_eq!(sb.zd_knobs("global").total(), 1);
}

#[tokio::test]
async fn zendesk_retries_429_503_and_dropped_connections() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let zd = client(&sb, &sb.secrets);
    zd.me().await.unwrap();
    let k = sb.zd_knobs("global");
    k.clear_log();
    k.fail_next("GET /api/v2/users/me", 1, Failure::Status(429));
    let t = std::time::Instant::now();
    zd.me().await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "waited for Retry-After: 1"
    );
    k.fail_next("GET /api/v2/users/me", 3, Failure::Status(503));
    zd.me().await.unwrap();
    k.fail_next("GET /api/v2/users/me", 1, Failure::Drop);
    zd.me().await.unwrap();
    assert_eq!(k.count("GET", "/api/v2/users/me"), 2 + 4 + 2);
    k.fail_next("GET /api/v2/users/me", 10, Failure::Status(500));
    let err = zd.me().await.unwrap_err();
    assert!(
        matches!(
            err,
            ZendeskError::Server {
                status: 500,
                attempts: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient());
}

fn tickets(sb: &Sandbox, assignee: u64, group: Option<u64>, n: usize) -> Vec<Ticket> {
    let mut w = sb.zd("global");
    (0..n)
        .map(|_| {
            let id = w.add_ticket(Some(assignee), group, "open");
            Ticket {
                id,
                status: "open".into(),
                assignee_id: Some(assignee),
                group_id: group,
                updated_at: None,
            }
        })
        .collect()
}

#[tokio::test]
async fn zendesk_bulk_jobs_stay_under_the_job_limit_and_are_polled_together() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let zd = client(&sb, &sb.secrets);
    let (leaver, manager, amer) = {
        let mut w = sb.zd("global");
        let amer = w.add_group("Support AMER");
        let staff = w.role_by_name("Staff");
        let leaver = w.add_user("Leaver", "leaver@gitlab.com", "agent", staff);
        let manager = w.user_by_email("mlee@gitlab.com").unwrap().id;
        w.join_group(manager, amer);
        // Jobs finish late here, and a job past the client's own cap is a 429.
        w.job_polls = 4;
        w.job_limit = access_bot::zendesk::JOBS_IN_FLIGHT;
        (leaver, manager, amer)
    };
    let list = tickets(&sb, leaver, Some(amer), 4_000);
    sb.clear_logs();
    let out = zd.reassign(&list, manager, &[amer]).await.unwrap();
    assert_eq!(out.updated.len(), 4_000, "{:?}", out.failed.first());
    assert_eq!(out.bulk_calls, 40);
    let k = sb.zd_knobs("global");
    let refused = k.log().iter().filter(|e| e.status == 429).count();
    assert_eq!(refused, 0, "never more jobs queued than the cap");
    // Forty jobs, each looked at four times: one at a time that is 160 polls;
    // fifteen at a time, polled together, about a tenth of it.
    let polls = k.count("GET", "/api/v2/job_statuses/show_many");
    assert_eq!(polls as u32, out.job_polls);
    assert!(polls <= 16, "{polls} polls");
    assert_eq!(sb.zd("global").open_tickets_of(manager), 4_000);
}

#[tokio::test]
async fn zendesk_bulk_reassignment_batches_polls_and_checks_every_item() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let zd = client(&sb, &sb.secrets);
    let (leaver, manager, amer, billing) = {
        let mut w = sb.zd("global");
        let amer = w.add_group("Support AMER");
        let billing = w.add_group("Billing");
        let staff = w.role_by_name("Staff");
        let leaver = w.add_user("Leaver", "leaver@gitlab.com", "agent", staff);
        let manager = w.user_by_email("mlee@gitlab.com").unwrap().id;
        (leaver, manager, amer, billing)
    };
    let mut list = tickets(&sb, leaver, Some(amer), 250);
    // Tickets in a group the manager is not in: retried once with the manager's group.
    list.extend(tickets(&sb, leaver, Some(billing), 5));
    assert_eq!(zd.open_tickets(leaver).await.unwrap().len(), 255);
    let out = zd.reassign(&list, manager, &[amer]).await.unwrap();
    assert_eq!(out.updated.len(), 255, "{:?}", out.failed);
    assert!(out.failed.is_empty());
    assert_eq!(
        out.bulk_calls,
        3 + 1,
        "three batches of at most 100 staying in their group, one moving to the manager's"
    );
    // The four jobs are in flight at once and looked at together: the
    // sandbox's jobs complete on their second look, so two polls in all.
    assert_eq!(out.job_polls, 2);
    let k = sb.zd_knobs("global");
    assert_eq!(k.count("GET", "/api/v2/job_statuses/show_many"), 2);
    assert_eq!(k.count("GET", "/api/v2/job_statuses/:job"), 0);
    assert_eq!(sb.zd("global").open_tickets_of(manager), 255);
    let moved_group = sb
        .zd("global")
        .tickets
        .values()
        .filter(|t| t.group_id == Some(billing))
        .count();
    assert_eq!(moved_group, 0, "the five moved to the manager's group");

    // A closed ticket fails and is reported, not hidden.
    let closed = sb
        .zd("global")
        .add_ticket(Some(leaver), Some(amer), "closed");
    let out = zd
        .reassign(
            &[Ticket {
                id: closed,
                status: "open".into(),
                assignee_id: Some(leaver),
                group_id: Some(amer),
                updated_at: None,
            }],
            manager,
            &[amer],
        )
        .await
        .unwrap();
    assert_eq!(out.failed.len(), 1);
    assert!(out.failed[0].1.contains("closed"), "{:?}", out.failed);
}

fn google(
    sb: &Sandbox,
    cfg: &access_bot::config::GoogleConfig,
) -> Result<GoogleClient, GoogleError> {
    Ok(GoogleClient::new(cfg, &sb.secrets, reqwest::Client::new())?.with_backoff(fast()))
}

#[tokio::test]
async fn google_membership_is_idempotent_and_confirms_through_eventual_consistency() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let g = google(&sb, sb.config.google.as_ref().unwrap()).unwrap();
    assert_eq!(
        g.add_member(OKTA, "jane.doe@gitlab.com").await.unwrap(),
        Change::Done
    );
    assert_eq!(
        g.add_member(OKTA, "jane.doe@gitlab.com").await.unwrap(),
        Change::AlreadySo,
        "409 duplicate"
    );
    assert!(g.is_member(OKTA, "Jane.Doe@gitlab.com").await.unwrap());
    assert_eq!(
        g.remove_member(OKTA, "jane.doe@gitlab.com").await.unwrap(),
        Change::Done
    );
    assert_eq!(
        g.remove_member(OKTA, "jane.doe@gitlab.com").await.unwrap(),
        Change::AlreadySo,
        "404 notFound"
    );
    assert_eq!(
        g.remove_member(OKTA, "someone@other.example")
            .await
            .unwrap(),
        Change::AlreadySo,
        "400 required for externals"
    );
    // Eventual consistency: the first reads after insert are 404; the add still succeeds.
    sb.google.lock().consistency_reads = 2;
    sb.google_knobs.clear_log();
    assert_eq!(
        g.add_member(OKTA, "bo.li@gitlab.com").await.unwrap(),
        Change::Done
    );
    assert_eq!(
        sb.google_knobs
            .count("GET", "/admin/directory/v1/groups/:key/members/:key"),
        3
    );
    for i in 0..205 {
        sb.google
            .lock()
            .add_member(OKTA, &format!("p{i}@gitlab.com"));
    }
    assert_eq!(
        g.list_members(OKTA).await.unwrap().len(),
        206,
        "two pages with pageToken"
    );
    // The token was exchanged once.
    assert_eq!(
        sb.google_knobs.count("POST", "/token"),
        0,
        "cleared log: no new exchange needed"
    );
}

#[tokio::test]
async fn google_quota_and_backend_errors_are_retried_configuration_errors_are_not() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let g = google(&sb, sb.config.google.as_ref().unwrap()).unwrap();
    g.is_member(OKTA, "x@gitlab.com").await.unwrap();
    sb.google_knobs
        .fail_next("GET /admin", 2, Failure::Status(403));
    sb.google_knobs
        .fail_next("GET /admin", 2, Failure::Status(503));
    assert!(!g.is_member(OKTA, "x@gitlab.com").await.unwrap());
    sb.google_knobs.clear_log();
    let e = g
        .add_member("missing@gitlab.com", "x@gitlab.com")
        .await
        .unwrap_err();
    assert!(matches!(e, GoogleError::GroupNotFound(_)), "{e}");
    assert!(e.to_string().contains("okta_group"));
    assert_eq!(sb.google_knobs.total(), 1, "not retried");
    sb.google
        .lock()
        .service_accounts
        .get_mut(access_bot::sandbox::SERVICE_ACCOUNT)
        .unwrap()
        .groups_admin = false;
    let e = g.is_member(OKTA, "x@gitlab.com").await.unwrap_err();
    assert!(matches!(e, GoogleError::Forbidden { .. }), "{e}");
    assert!(e.to_string().contains("Groups admin role"));
}

#[tokio::test]
async fn google_domain_wide_delegation_needs_the_grant_and_a_real_subject() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let mut cfg = sb.config.google.clone().unwrap();
    cfg.subject = Some("zendesk-admin@gitlab.com".into());
    sb.google
        .lock()
        .service_accounts
        .get_mut(access_bot::sandbox::SERVICE_ACCOUNT)
        .unwrap()
        .groups_admin = false;
    let e = google(&sb, &cfg)
        .unwrap()
        .is_member(OKTA, "x@gitlab.com")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unauthorized_client"), "{e}");
    sb.google
        .lock()
        .service_accounts
        .get_mut(access_bot::sandbox::SERVICE_ACCOUNT)
        .unwrap()
        .delegated_scopes
        .push(access_bot::google::SCOPE.into());
    let g = google(&sb, &cfg).unwrap();
    assert!(
        !g.is_member(OKTA, "x@gitlab.com").await.unwrap(),
        "acts as the delegated admin"
    );
    cfg.subject = Some("nobody@gitlab.com".into());
    let e = google(&sb, &cfg)
        .unwrap()
        .is_member(OKTA, "x@gitlab.com")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a user of the domain"), "{e}");
    // The key itself never appears in an error.
    let key: serde_json::Value = serde_json::from_str(
        sb.secrets
            .get("GOOGLE_SERVICE_ACCOUNT_KEY")
            .unwrap()
            .expose(),
    )
    .unwrap();
    let piece = key["private_key"].as_str().unwrap().lines().nth(1).unwrap()[..24].to_string();
    assert_eq!(piece.len(), 24);
    assert!(!format!("{e} {e:?}").contains(&piece));
}

#[tokio::test]
async fn check_reports_each_system_and_exactly_what_is_wrong() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let lines = access_bot::check::report(&sb.config, &sb.secrets).await;
    assert!(lines.iter().all(|(ok, _)| *ok), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|(_, l)| l.contains("connected as @access-bot"))
    );
    for needle in [
        "SMTP 127.0.0.1 (none): connected and accepted",
        "Support Team repository gitlab-support-readiness/support-team: branch main readable",
        "Slack webhook: configured",
    ] {
        assert!(
            lines.iter().any(|(_, l)| l.contains(needle)),
            "{needle}: {lines:#?}"
        );
    }

    let mut cfg = sb.config.clone();
    cfg.zendesk
        .get_mut("federal")
        .unwrap()
        .access_levels
        .get_mut("Support Engineer")
        .unwrap()
        .groups
        .push("No Such Group".into());
    cfg.zendesk.get_mut("global").unwrap().okta_group = Some("okta-nope@gitlab.com".into());
    let bad_secret = Secrets::from_map(
        sb.secrets
            .values()
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("unused{i}"), v))
            .chain(sb.config.secret_envs().into_iter().map(|(var, _)| {
                let v = if var == "ZENDESK_GLOBAL_CLIENT_SECRET" || var == "SMTP_PASSWORD" {
                    "wrong".to_string()
                } else {
                    sb.secrets.get(&var).unwrap().expose().to_string()
                };
                (var, v)
            })),
    );
    let lines = access_bot::check::report(&cfg, &bad_secret).await;
    let fails: Vec<&String> = lines.iter().filter(|(ok, _)| !ok).map(|(_, l)| l).collect();
    assert!(
        fails
            .iter()
            .any(|l| l.contains("Zendesk global") && l.contains("credentials rejected")),
        "{fails:#?}"
    );
    assert!(
        fails
            .iter()
            .any(|l| l.contains("group \"No Such Group\" does not exist")),
        "{fails:#?}"
    );
    assert!(
        fails
            .iter()
            .any(|l| l.contains("okta-nope@gitlab.com") && l.contains("does not exist")),
        "{fails:#?}"
    );
    assert!(
        fails
            .iter()
            .any(|l| l.starts_with("SMTP 127.0.0.1") && l.contains("535")),
        "{fails:#?}"
    );
}

#[tokio::test]
async fn zendesk_light_agent_seed_accounts_resolve() {
    // The seeded light agent is recognised by role_type 1 through the API.
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    sb.seed_zendesk(&ZendeskAccount {
        instance: "global".into(),
        name: "L A".into(),
        email: "la@gitlab.com".into(),
        role: "light-agent".into(),
        custom_role: None,
        groups: vec![],
        tags: vec![],
        user_fields: Default::default(),
        open_tickets: 0,
        suspended: false,
        last_login_days_ago: None,
    })
    .unwrap();
    let zd = client(&sb, &sb.secrets);
    assert_eq!(
        zd.find_user(&email("la@gitlab.com"))
            .await
            .unwrap()
            .unwrap()
            .role_type,
        Some(1)
    );
}

// ------------------------------------------------------------------ GitLab

use access_bot::gitlab::{GitlabApi, GitlabClient, GitlabError, IssueEdit, NewMergeRequest};
use access_bot::sandbox::{PROJECT, SUPPORT_TEAM};
use access_bot::secret::Secret;

/// The project paths as the `gitlab` crate sends them.
const P: &str = "support%2Faccess-requests";
const ST: &str = "gitlab-support-readiness%2Fsupport-team";

async fn gitlab(sb: &Sandbox, timeout: Duration) -> GitlabClient {
    GitlabClient::connect_with(
        &sb.config.gitlab.url,
        &Secret::new(sb.token_of("access-bot")),
        timeout,
        fast(),
    )
    .await
    .unwrap()
}

/// Run `call` with one 429 (GitLab's shape, `Retry-After: 1`) on `route`:
/// it succeeds after waiting, and the route saw the 429 and then the request
/// again (answered: a 404 is how "no such branch" is told).
async fn after_429<T, F>(sb: &Sandbox, route: &str, call: F) -> T
where
    F: std::future::Future<Output = Result<T, GitlabError>>,
{
    sb.gitlab_knobs.clear_log();
    sb.gitlab_knobs.fail_next(
        route,
        1,
        Failure::TooMany {
            retry_after: Some(1),
        },
    );
    let t = std::time::Instant::now();
    let v = call.await.unwrap_or_else(|e| panic!("{route}: {e}"));
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "{route}: Retry-After not honoured ({waited:?})"
    );
    let hits: Vec<u16> = sb
        .gitlab_knobs
        .log()
        .iter()
        .filter(|e| format!("{} {}", e.method, e.path).starts_with(route))
        .map(|e| e.status)
        .collect();
    assert_eq!(hits.first(), Some(&429), "{route}: {hits:?}");
    assert!(
        hits.len() >= 2 && hits[1..].iter().all(|s| *s != 429 && *s < 500),
        "{route}: {hits:?}"
    );
    v
}

/// A listing the `gitlab` crate pages for one call (all the notes) gives up
/// after two timeouts in all, not two per page: one on its first page and
/// one on its second end the call.
#[tokio::test]
async fn gitlab_timeouts_are_counted_per_call_over_its_pages() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let iid = gitlab_world(&sb).await;
    {
        let mut w = sb.gitlab.lock();
        let author = w.user_by_name("jdoe").unwrap().id;
        for i in 0..150 {
            w.add_note(PROJECT, iid, author, &format!("comment {i}"));
        }
    }
    let gl = gitlab(&sb, Duration::from_millis(300)).await;
    let notes = format!("GET /api/v4/projects/{P}/issues/{iid}/notes");
    // Both pages answer: 151 notes.
    assert_eq!(gl.notes(PROJECT, iid).await.unwrap().len(), 151);
    // The first page hangs once (its retry answers), then the second hangs.
    sb.gitlab_knobs.fail_next(&notes, 1, Failure::Hang);
    sb.gitlab_knobs.fail_after(&notes, 1, 1, Failure::Hang);
    let e = gl.notes(PROJECT, iid).await.unwrap_err();
    assert!(
        matches!(e, GitlabError::Exhausted { .. }) && e.to_string().contains("no answer within"),
        "{e}"
    );
    sb.gitlab_knobs.clear_faults();
    // The next call starts its own count.
    sb.gitlab_knobs.fail_next(&notes, 1, Failure::Hang);
    assert_eq!(gl.notes(PROJECT, iid).await.unwrap().len(), 151);
}

/// The world the GitLab calls below act on: an issue with a label and a note,
/// and the Support Team repository with a leaver's file.
async fn gitlab_world(sb: &Sandbox) -> u64 {
    let iid = sb
        .file_issue(
            "jdoe",
            "Zendesk light agent",
            &["support::to do"],
            "- [ ] x\n",
        )
        .await
        .unwrap();
    sb.comment_as("jdoe", iid, "hello").await.unwrap();
    iid
}

#[tokio::test]
async fn gitlab_429_on_every_call_the_bot_makes_is_waited_out() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let iid = gitlab_world(&sb).await;
    let gl = gitlab(&sb, Duration::from_secs(5)).await;
    let issues = format!("/api/v4/projects/{P}/issues");

    let me = after_429(&sb, "GET /api/v4/user", gl.me()).await;
    assert_eq!(me.username, "access-bot");
    let list = after_429(
        &sb,
        &format!("GET {issues}"),
        gl.list_issues(PROJECT, Some("support::to do"), None),
    )
    .await;
    assert_eq!(list.issues.len(), 1);
    let issue = after_429(&sb, &format!("GET {issues}/{iid}"), gl.issue(PROJECT, iid)).await;
    assert_eq!(issue.iid, iid);
    let notes = after_429(
        &sb,
        &format!("GET {issues}/{iid}/notes"),
        gl.notes(PROJECT, iid),
    )
    .await;
    assert!(notes.iter().any(|n| n.body == "hello"));
    // The listings the bot pages itself (for GitLab's headers).
    let changed = after_429(
        &sb,
        &format!("GET {issues}"),
        gl.changed_issues(PROJECT, None),
    )
    .await;
    assert_eq!(changed.page.issues.len(), 1);
    assert!(changed.listed_at.is_some() && !changed.shifted);
    let since = after_429(
        &sb,
        &format!("GET {issues}/{iid}/notes"),
        gl.notes_since(
            PROJECT,
            iid,
            Some(issue.updated_at - chrono::Duration::hours(1)),
        ),
    )
    .await;
    assert!(since.notes.iter().any(|n| n.note.body == "hello"));
    let events = after_429(
        &sb,
        &format!("GET {issues}/{iid}/resource_label_events"),
        gl.label_events(PROJECT, iid),
    )
    .await;
    assert_eq!(events.len(), 1);

    // Writes: each lands exactly once.
    let note = after_429(
        &sb,
        &format!("POST {issues}/{iid}/notes"),
        gl.create_note(PROJECT, iid, "the bot's note"),
    )
    .await;
    assert_eq!(note.body, "the bot's note");
    assert_eq!(
        sb.comments(iid)
            .iter()
            .filter(|c| c.body == "the bot's note")
            .count(),
        1,
        "posted exactly once"
    );
    let edit = IssueEdit {
        add_labels: vec!["access-bot::planned".into()],
        ..Default::default()
    };
    let edited = after_429(
        &sb,
        &format!("PUT {issues}/{iid}"),
        gl.edit_issue(PROJECT, iid, &edit),
    )
    .await;
    assert!(edited.labels.contains(&"access-bot::planned".to_string()));
    let user = after_429(&sb, "GET /api/v4/users", gl.user_by_username("mlee")).await;
    assert_eq!(user.map(|u| u.username).as_deref(), Some("mlee"));
    let labels = format!("/api/v4/projects/{P}/labels");
    let ids = after_429(
        &sb,
        &format!("GET {labels}"),
        gl.label_ids(PROJECT, &["support::to do".to_string()]),
    )
    .await;
    assert_eq!(ids.len(), 1);
    let new_label = "AR-Approval::Manager Approved".to_string();
    let ids = after_429(
        &sb,
        &format!("POST {labels}"),
        gl.label_ids(PROJECT, std::slice::from_ref(&new_label)),
    )
    .await;
    assert!(ids.contains_key(&new_label));
    let created = after_429(
        &sb,
        &format!("POST {issues}"),
        gl.create_issue(
            PROJECT,
            "Seat review",
            "body",
            &["zendesk-seat-review".into()],
        ),
    )
    .await;
    assert_eq!(
        sb.gitlab
            .lock()
            .project(PROJECT)
            .unwrap()
            .issues
            .iter()
            .filter(|i| i.title == "Seat review")
            .count(),
        1,
        "one issue opened"
    );
    assert_ne!(created.iid, iid);

    // The Support Team repository: files, branches, merge requests.
    let repo = format!("/api/v4/projects/{ST}");
    let path = "data/agents/cquinn.yaml";
    assert!(
        after_429(
            &sb,
            &format!("GET {repo}/repository/files"),
            gl.file_exists(SUPPORT_TEAM, path, "main"),
        )
        .await
    );
    assert!(
        !after_429(
            &sb,
            &format!("GET {repo}/repository/branches"),
            gl.branch_exists(SUPPORT_TEAM, "access-bot/offboard-cquinn"),
        )
        .await
    );
    after_429(
        &sb,
        &format!("DELETE {repo}/repository/files"),
        gl.delete_file(
            SUPPORT_TEAM,
            path,
            "access-bot/offboard-cquinn",
            "main",
            "Remove cquinn",
        ),
    )
    .await;
    let mr = NewMergeRequest {
        source_branch: "access-bot/offboard-cquinn".into(),
        target_branch: "main".into(),
        title: "Remove cquinn".into(),
        description: "offboarding".into(),
        reviewer_ids: vec![],
    };
    let opened = after_429(
        &sb,
        &format!("POST {repo}/merge_requests"),
        gl.create_merge_request(SUPPORT_TEAM, &mr),
    )
    .await;
    assert_eq!(
        sb.gitlab
            .lock()
            .project(SUPPORT_TEAM)
            .unwrap()
            .merge_requests
            .len(),
        1,
        "one merge request opened"
    );
    let from = after_429(
        &sb,
        &format!("GET {repo}/merge_requests"),
        gl.merge_requests_from(SUPPORT_TEAM, "access-bot/offboard-cquinn"),
    )
    .await;
    assert_eq!(from.len(), 1);
    let one = after_429(
        &sb,
        &format!("GET {repo}/merge_requests/{}", opened.iid),
        gl.merge_request(SUPPORT_TEAM, opened.iid),
    )
    .await;
    assert_eq!(one.state, "opened");
}

#[tokio::test]
async fn gitlab_429_without_retry_after_backs_off_and_gives_up_after_bounded_attempts() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let iid = gitlab_world(&sb).await;
    let gl = gitlab(&sb, Duration::from_secs(5)).await;
    let route = format!("GET /api/v4/projects/{P}/issues/{iid}/notes");
    // No Retry-After: the capped, jittered backoff (here at most 50 ms).
    sb.gitlab_knobs
        .fail_next(&route, 2, Failure::TooMany { retry_after: None });
    let t = std::time::Instant::now();
    gl.notes(PROJECT, iid).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // Still limited after every attempt: a transient error, not a rejection.
    sb.gitlab_knobs.clear_log();
    sb.gitlab_knobs
        .fail_next(&route, 100, Failure::TooMany { retry_after: None });
    let e = gl.notes(PROJECT, iid).await.unwrap_err();
    assert!(
        matches!(e, GitlabError::Exhausted { attempts: 5, .. }),
        "{e}"
    );
    assert!(e.is_transient());
    assert_eq!(sb.gitlab_knobs.total(), 5);
    sb.gitlab_knobs.clear_faults();
    // A 429 on a new note is waited out too, and the note is posted once.
    sb.gitlab_knobs.fail_next(
        &format!("POST /api/v4/projects/{P}/issues/{iid}/notes"),
        3,
        Failure::TooMany { retry_after: None },
    );
    gl.create_note(PROJECT, iid, "once").await.unwrap();
    assert_eq!(
        sb.comments(iid).iter().filter(|c| c.body == "once").count(),
        1
    );
}

#[tokio::test]
async fn gitlab_requests_time_out_and_a_timed_out_write_is_never_sent_twice() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let iid = gitlab_world(&sb).await;
    let timeout = Duration::from_millis(300);
    let gl = gitlab(&sb, timeout).await;
    let issues = format!("/api/v4/projects/{P}/issues");

    // A read that hangs once is answered by the retry.
    sb.gitlab_knobs
        .fail_next(&format!("GET {issues}/{iid}"), 1, Failure::Hang);
    let t = std::time::Instant::now();
    gl.issue(PROJECT, iid).await.unwrap();
    assert!(t.elapsed() >= timeout && t.elapsed() < Duration::from_secs(3));
    // A GitLab that hangs for good: the call gives up after two timeouts, in
    // well under a second here (the daemon is never frozen).
    sb.gitlab_knobs
        .fail_next(&format!("GET {issues}"), 100, Failure::Hang);
    let t = std::time::Instant::now();
    let e = gl.list_issues(PROJECT, None, None).await.unwrap_err();
    assert!(
        matches!(e, GitlabError::Exhausted { .. }) && e.to_string().contains("no answer within"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    sb.gitlab_knobs.clear_faults();

    // A note whose answer never comes: posted once, not sent again, and the
    // error says it may have been applied.
    sb.gitlab_knobs.clear_log();
    sb.gitlab_knobs.fail_next(
        &format!("POST {issues}/{iid}/notes"),
        1,
        Failure::ApplyThenHang,
    );
    let e = gl
        .create_note(PROJECT, iid, "answer lost")
        .await
        .unwrap_err();
    assert!(matches!(e, GitlabError::Unconfirmed { .. }), "{e}");
    assert!(e.is_transient());
    assert_eq!(
        sb.gitlab_knobs
            .count("POST", "/api/v4/projects/:project/issues/:id/notes"),
        1,
        "never retried within the call"
    );
    assert_eq!(
        sb.comments(iid)
            .iter()
            .filter(|c| c.body == "answer lost")
            .count(),
        1
    );
    // The same with a dropped connection.
    sb.gitlab_knobs.fail_next(
        &format!("POST {issues}/{iid}/notes"),
        1,
        Failure::ApplyThenDrop,
    );
    let e = gl.create_note(PROJECT, iid, "dropped").await.unwrap_err();
    assert!(matches!(e, GitlabError::Unconfirmed { .. }), "{e}");
    assert_eq!(
        sb.comments(iid)
            .iter()
            .filter(|c| c.body == "dropped")
            .count(),
        1
    );
    // A hung new issue is not sent again either (nothing was applied here).
    sb.gitlab_knobs
        .fail_next(&format!("POST {issues}"), 1, Failure::Hang);
    let e = gl
        .create_issue(PROJECT, "Hung", "x", &[])
        .await
        .unwrap_err();
    assert!(matches!(e, GitlabError::Unconfirmed { .. }), "{e}");

    // Creating writes whose answer is lost find their own effect.
    let labels = format!("/api/v4/projects/{P}/labels");
    sb.gitlab_knobs
        .fail_next(&format!("POST {labels}"), 1, Failure::ApplyThenHang);
    let ids = gl
        .label_ids(PROJECT, &["timed-out-label".to_string()])
        .await
        .unwrap();
    assert!(ids.contains_key("timed-out-label"));
    let repo = format!("/api/v4/projects/{ST}");
    let branch = "access-bot/offboard-cquinn";
    sb.gitlab_knobs.fail_next(
        &format!("DELETE {repo}/repository/files"),
        1,
        Failure::ApplyThenHang,
    );
    gl.delete_file(
        SUPPORT_TEAM,
        "data/agents/cquinn.yaml",
        branch,
        "main",
        "Remove cquinn",
    )
    .await
    .unwrap();
    // Sent again later (a crash before the caller saw the branch): the file
    // is gone from the branch already, which is done.
    gl.delete_file(
        SUPPORT_TEAM,
        "data/agents/cquinn.yaml",
        branch,
        "main",
        "Remove cquinn",
    )
    .await
    .unwrap();
    sb.gitlab_knobs.fail_next(
        &format!("POST {repo}/merge_requests"),
        1,
        Failure::ApplyThenDrop,
    );
    let mr = NewMergeRequest {
        source_branch: branch.into(),
        target_branch: "main".into(),
        title: "Remove cquinn".into(),
        description: "offboarding".into(),
        reviewer_ids: vec![],
    };
    let first = gl.create_merge_request(SUPPORT_TEAM, &mr).await.unwrap();
    // And again: 409, the open merge request is the one.
    let again = gl.create_merge_request(SUPPORT_TEAM, &mr).await.unwrap();
    assert_eq!(first.iid, again.iid);
    assert_eq!(
        sb.gitlab
            .lock()
            .project(SUPPORT_TEAM)
            .unwrap()
            .merge_requests
            .len(),
        1
    );
}

/// What the bot leaves on an issue: each of its comments' marker kind and
/// keys in order, the ticked items, the labels and the state.
type Left = (Vec<(String, Vec<String>)>, Vec<String>, Vec<String>, String);

fn left_on(sb: &Sandbox, iid: u64) -> Left {
    let comments = sb
        .bot_comments(iid)
        .into_iter()
        .map(|c| {
            let m = c
                .marker
                .unwrap_or_else(|| panic!("a bot comment without a marker:\n{}", c.body));
            (m.kind, m.keys)
        })
        .collect();
    let mut labels = sb.labels(iid);
    labels.sort();
    (comments, sb.ticked(iid), labels, sb.state(iid))
}

async fn light_agent_request(sb: &Sandbox) -> u64 {
    sb.file_issue(
        "jdoe",
        "Zendesk Global light agent",
        &["support::to do"],
        "- [ ] Zendesk Global: Light Agent\n- Justification for this access: reading tickets\n",
    )
    .await
    .unwrap()
}

/// The bot with a short GitLab timeout.
async fn bot_with_timeout(sb: &Sandbox, timeout: &str) -> access_bot::bot::Bot {
    let mut cfg = sb.config.clone();
    cfg.gitlab.request_timeout = access_bot::config::Dur::parse(timeout).unwrap();
    let store = std::sync::Arc::new(
        access_bot::store::Store::open(std::path::Path::new(":memory:")).unwrap(),
    );
    access_bot::bot::Bot::connect_with(cfg, &sb.secrets, store, Duration::from_millis(5))
        .await
        .unwrap()
}

#[tokio::test]
async fn gitlab_a_note_whose_answer_was_lost_is_found_by_its_marker_and_never_posted_twice() {
    use access_bot::sandbox::harness::run_until_quiet;
    // The same request without any fault: what the bot should leave.
    let control = Sandbox::start(Ports::default()).await.unwrap();
    let iid = light_agent_request(&control).await;
    run_until_quiet(&control.bot().await.unwrap(), 6).await;
    let expected = left_on(&control, iid);
    assert!(!expected.0.is_empty());

    for failure in [Failure::ApplyThenDrop, Failure::ApplyThenHang] {
        let sb = Sandbox::start(Ports::default()).await.unwrap();
        let bot = bot_with_timeout(&sb, "1s").await;
        let iid = light_agent_request(&sb).await;
        // The bot's first comment is posted, but its answer never arrives.
        sb.gitlab_knobs.fail_next(
            &format!("POST /api/v4/projects/{P}/issues/{iid}/notes"),
            1,
            failure.clone(),
        );
        bot.cycle().await;
        assert_eq!(sb.bot_comments(iid).len(), 1, "{failure:?}");
        assert_eq!(
            sb.gitlab_knobs
                .count("POST", "/api/v4/projects/:project/issues/:id/notes"),
            1,
            "{failure:?}: not sent again within the cycle"
        );
        run_until_quiet(&bot, 6).await;
        assert_eq!(left_on(&sb, iid), expected, "{failure:?}");
    }

    // 429s on the bot's reads and on its comments: the same end, each comment once.
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let bot = bot_with_timeout(&sb, "5s").await;
    let iid = light_agent_request(&sb).await;
    let issue = format!("/api/v4/projects/{P}/issues/{iid}");
    // A self-service light agent needs no label events (nothing decides on
    // who applied a label), so these are the reads and writes it makes.
    for route in [
        format!("GET /api/v4/projects/{P}/issues"),
        format!("GET {issue}/notes"),
        format!("POST {issue}/notes"),
        format!("PUT {issue}"),
    ] {
        sb.gitlab_knobs.fail_next(
            &route,
            2,
            Failure::TooMany {
                retry_after: Some(1),
            },
        );
    }
    let reports = run_until_quiet(&bot, 6).await;
    assert_eq!(
        sb.gitlab_knobs
            .log()
            .iter()
            .filter(|e| e.status == 429)
            .count(),
        8,
        "every scripted 429 was met"
    );
    // Waited out within the call: no cycle saw an error or a failed issue.
    assert!(reports.iter().all(|r| !r.failed()), "{reports:?}");
    assert_eq!(left_on(&sb, iid), expected);
}

// -------------------------------------------------------- Zendesk, continued

use access_bot::sandbox::zendesk::{ASSIGNEE_INVALID, ASSIGNEE_NOT_IN_GROUP};

#[tokio::test]
async fn zendesk_reassignment_sends_the_group_up_front_whatever_the_job_error_says() {
    for wording in [ASSIGNEE_NOT_IN_GROUP, ASSIGNEE_INVALID] {
        let sb = Sandbox::start(Ports::default()).await.unwrap();
        sb.zd("global").assignee_error = wording;
        let zd = client(&sb, &sb.secrets);
        let (leaver, manager, amer, billing) = {
            let mut w = sb.zd("global");
            let amer = w.add_group("Support AMER");
            let billing = w.add_group("Billing");
            let staff = w.role_by_name("Staff");
            let leaver = w.add_user("Leaver", "leaver@gitlab.com", "agent", staff);
            let manager = w.user_by_email("mlee@gitlab.com").unwrap().id;
            (leaver, manager, amer, billing)
        };
        let manager_groups: Vec<u64> = zd
            .memberships(manager)
            .await
            .unwrap()
            .iter()
            .map(|m| m.group_id)
            .collect();
        assert!(manager_groups.contains(&amer) && !manager_groups.contains(&billing));
        let mut list = tickets(&sb, leaver, Some(amer), 5);
        list.extend(tickets(&sb, leaver, Some(billing), 7));
        list.extend(tickets(&sb, leaver, None, 1));
        let out = zd.reassign(&list, manager, &manager_groups).await.unwrap();
        assert_eq!(out.updated.len(), 13, "{wording}: {:?}", out.failed);
        assert!(out.failed.is_empty(), "{wording}");
        assert_eq!(out.bulk_calls, 2, "{wording}: no failed item to retry");
        {
            let w = sb.zd("global");
            assert_eq!(w.open_tickets_of(manager), 13, "{wording}");
            assert!(
                w.tickets.values().all(|t| t.group_id != Some(billing)),
                "{wording}: moved to the manager's group"
            );
        }
        // The sandbox does answer in this wording when the group is not sent
        // (told, wrongly, that the manager is in Billing): reported, not hidden.
        let more = tickets(&sb, leaver, Some(billing), 2);
        let out = zd.reassign(&more, manager, &[billing]).await.unwrap();
        assert_eq!(out.failed.len(), 2, "{wording}");
        assert!(out.failed.iter().all(|(_, why)| why == wording), "{out:?}");
    }
}

#[tokio::test]
async fn zendesk_a_create_whose_answer_was_lost_finds_its_own_effect_on_the_retry() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let zd = client(&sb, &sb.secrets);
    let k = sb.zd_knobs("global");
    let light = Resolved::load(&zd).await.unwrap().light_agent_role;
    // create_or_update: applied, answer dropped; the retry finds the user (200).
    k.fail_next(
        "POST /api/v2/users/create_or_update",
        1,
        Failure::ApplyThenDrop,
    );
    let (u, _) = zd
        .create_or_update("Jane Doe", &email("jane.doe@gitlab.com"), "agent", light)
        .await
        .unwrap();
    assert_eq!(
        sb.zd("global")
            .users
            .values()
            .filter(|x| x.email == "jane.doe@gitlab.com")
            .count(),
        1
    );
    let amer = sb.zd("global").add_group("Support AMER");
    let emea = sb.zd("global").add_group("Support EMEA");
    // Add to group: applied, answer dropped; the retry's 422 is its own effect.
    k.clear_log();
    k.fail_next("POST /api/v2/group_memberships", 1, Failure::ApplyThenDrop);
    zd.add_membership(u.id, amer).await.unwrap();
    let statuses: Vec<u16> = k
        .log()
        .iter()
        .filter(|e| e.method == "POST" && e.route == "/api/v2/group_memberships")
        .map(|e| e.status)
        .collect();
    assert_eq!(statuses.len(), 2, "sent again after the lost answer");
    assert_eq!(
        statuses[1], 422,
        "the retry met the earlier attempt's membership"
    );
    assert_eq!(sb.zd("global").groups_of(u.id), vec!["Support AMER"]);
    // The same after a timeout (the answer never comes).
    let mut inst = sb.config.zendesk["global"].clone();
    inst.requests_per_minute = 60_000;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let zd_timeout = ZendeskClient::new("global", &inst, &sb.secrets, http)
        .unwrap()
        .with_backoff(fast());
    k.fail_next("POST /api/v2/group_memberships", 1, Failure::ApplyThenHang);
    zd_timeout.add_membership(u.id, emea).await.unwrap();
    assert_eq!(
        sb.zd("global").groups_of(u.id),
        vec!["Support AMER", "Support EMEA"]
    );
    // A 422 that is not the bot's own effect is still an error.
    let end_user = sb
        .zd("global")
        .add_user("E U", "eu@gitlab.com", "end-user", None);
    let e = zd.add_membership(end_user, amer).await.unwrap_err();
    assert!(
        matches!(e, ZendeskError::Invalid { status: 422, .. }),
        "{e}"
    );
    // Tags and a bulk update whose answers are lost: the retry is harmless.
    k.fail_next("PUT /api/v2/users", 1, Failure::ApplyThenDrop);
    assert_eq!(
        zd.add_tags(u.id, &["partner_support_agent".into()])
            .await
            .unwrap(),
        vec!["partner_support_agent"]
    );
    let manager = sb.zd("global").user_by_email("mlee@gitlab.com").unwrap().id;
    let list = tickets(&sb, u.id, Some(amer), 3);
    k.fail_next("PUT /api/v2/tickets/update_many", 1, Failure::ApplyThenDrop);
    let out = zd.reassign(&list, manager, &[amer]).await.unwrap();
    assert_eq!(out.updated.len(), 3, "{out:?}");
    assert_eq!(sb.zd("global").open_tickets_of(manager), 3);
}

#[tokio::test]
async fn zendesk_scopes_requested_enforced_named_and_checked() {
    use access_bot::config::ZendeskAuth;
    // Exactly what the calls need: Zendesk has no scope for groups and
    // memberships, so the global ones.
    assert_eq!(access_bot::zendesk::required_scope(), "read write");
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    match &sb.config.zendesk["global"].auth {
        ZendeskAuth::Oauth { scope, .. } => assert_eq!(scope, "read write"),
        other => panic!("{other:?}"),
    }
    let with_scope = |scope: &str| {
        let mut cfg = sb.config.clone();
        for inst in cfg.zendesk.values_mut() {
            if let ZendeskAuth::Oauth { scope: s, .. } = &mut inst.auth {
                *s = scope.to_string();
            }
            inst.requests_per_minute = 60_000;
        }
        cfg
    };
    // The scopes the previous release asked for: no global write.
    let cfg = with_scope("users:read users:write tickets:read tickets:write read");
    let zd = ZendeskClient::new(
        "global",
        &cfg.zendesk["global"],
        &sb.secrets,
        reqwest::Client::new(),
    )
    .unwrap()
    .with_backoff(fast());
    zd.me().await.unwrap();
    let amer = Resolved::load(&zd).await.unwrap().groups["support amer"];
    let (u, _) = zd
        .create_or_update("Jane Doe", &email("jane.doe@gitlab.com"), "agent", None)
        .await
        .unwrap();
    let e = zd.add_membership(u.id, amer).await.unwrap_err();
    assert!(
        matches!(&e, ZendeskError::MissingScope { scope, .. } if scope == "write"),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("lacks the `write` scope")
            && text.contains("adding and removing group memberships")
            && text.contains("asks for `read write`"),
        "{text}"
    );
    assert!(!e.is_transient());
    assert!(sb.zd("global").groups_of(u.id).is_empty());
    // `check` names it before any write is tried.
    let lines = access_bot::check::report(&cfg, &sb.secrets).await;
    let fails: Vec<&String> = lines.iter().filter(|(ok, _)| !ok).map(|(_, l)| l).collect();
    for inst in ["global", "federal"] {
        assert!(
            fails
                .iter()
                .any(|l| l.starts_with(&format!("Zendesk {inst}:"))
                    && l.contains("lacks the `write` scope")
                    && l.contains("adding and removing group memberships")),
            "{fails:#?}"
        );
    }
    assert_eq!(fails.len(), 2, "{fails:#?}");

    // Without the global read: reading groups and roles is refused, and named.
    let cfg = with_scope("users:read users:write tickets:read tickets:write write");
    let zd = ZendeskClient::new(
        "global",
        &cfg.zendesk["global"],
        &sb.secrets,
        reqwest::Client::new(),
    )
    .unwrap()
    .with_backoff(fast());
    let e = Resolved::load(&zd).await.unwrap_err();
    assert!(
        matches!(&e, ZendeskError::MissingScope { scope, .. } if scope == "read"),
        "{e}"
    );
    // A client whose allowed scopes do not include a requested one: refused
    // at the token, and said so.
    sb.zd("global")
        .allowed_scopes
        .insert("access-bot-global".into(), vec!["read".into()]);
    let e = client(&sb, &sb.secrets).me().await.unwrap_err();
    assert!(
        matches!(&e, ZendeskError::ScopeRefused { .. }) && e.to_string().contains("invalid_scope"),
        "{e}"
    );
}

// --------------------------------------------------------- Google, continued

fn count_status(
    k: &access_bot::sandbox::faults::Knobs,
    method: &str,
    prefix: &str,
    status: u16,
) -> usize {
    k.log()
        .iter()
        .filter(|e| e.method == method && e.path.starts_with(prefix) && e.status == status)
        .count()
}

#[tokio::test]
async fn google_a_refused_token_is_dropped_and_a_new_one_fetched() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let g = google(&sb, sb.config.google.as_ref().unwrap()).unwrap();
    assert!(!g.is_member(OKTA, "x@gitlab.com").await.unwrap());
    assert_eq!(sb.google_knobs.count("POST", "/token"), 1);
    // The tokens are revoked (or expire early): the next call meets a 401,
    // drops the token, fetches a new one, and every later call uses that.
    sb.google.lock().revoke_tokens();
    for _ in 0..20 {
        assert!(!g.is_member(OKTA, "x@gitlab.com").await.unwrap());
    }
    assert_eq!(sb.google_knobs.count("POST", "/token"), 2);
    assert_eq!(
        count_status(&sb.google_knobs, "GET", "/admin/", 401),
        1,
        "the refused token was sent once, never again"
    );
    assert_eq!(
        count_status(&sb.google_knobs, "GET", "/admin/", 404),
        21,
        "answered (404: not a member)"
    );
    // A new token refused too is the key's problem: said, not retried forever.
    sb.google_knobs
        .fail_next("GET /admin", 2, Failure::Status(401));
    let e = g.is_member(OKTA, "x@gitlab.com").await.unwrap_err();
    assert!(matches!(e, GoogleError::Unauthorized), "{e}");
    assert_eq!(sb.google_knobs.count("POST", "/token"), 3);
    // And the next call starts with a fresh token.
    assert!(!g.is_member(OKTA, "x@gitlab.com").await.unwrap());
}

#[tokio::test]
async fn google_an_insert_whose_answer_was_lost_is_done_when_the_retry_meets_409() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let g = google(&sb, sb.config.google.as_ref().unwrap()).unwrap();
    g.is_member(OKTA, "x@gitlab.com").await.unwrap();
    sb.google_knobs.clear_log();
    sb.google_knobs
        .fail_next("POST /admin/directory/v1/groups", 1, Failure::ApplyThenDrop);
    assert_eq!(
        g.add_member(OKTA, "jane.doe@gitlab.com").await.unwrap(),
        Change::Done,
        "added by the attempt whose answer was lost"
    );
    let posts: Vec<u16> = sb
        .google_knobs
        .log()
        .iter()
        .filter(|e| e.method == "POST" && e.path.starts_with("/admin/"))
        .map(|e| e.status)
        .collect();
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[1], 409, "the retry met its own earlier insert");
    assert_eq!(
        sb.google
            .lock()
            .members(OKTA)
            .iter()
            .filter(|m| m.as_str() == "jane.doe@gitlab.com")
            .count(),
        1
    );
    // The same when the answer never comes (a timeout).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let g = GoogleClient::new(sb.config.google.as_ref().unwrap(), &sb.secrets, http)
        .unwrap()
        .with_backoff(fast());
    sb.google_knobs
        .fail_next("POST /admin/directory/v1/groups", 1, Failure::ApplyThenHang);
    assert_eq!(
        g.add_member(OKTA, "bo.li@gitlab.com").await.unwrap(),
        Change::Done
    );
    assert!(sb.google_member(OKTA, "bo.li@gitlab.com"));
    // A 409 without a lost answer: someone else added them.
    assert_eq!(
        g.add_member(OKTA, "bo.li@gitlab.com").await.unwrap(),
        Change::AlreadySo
    );
}

#[tokio::test]
async fn check_verifies_scopes_and_token_refresh_on_every_system() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let lines = access_bot::check::report(&sb.config, &sb.secrets).await;
    assert!(lines.iter().all(|(ok, _)| *ok), "{lines:#?}");
    for needle in [
        "Zendesk global: the OAuth scopes granted (`read write`) cover every call the bot makes",
        "Zendesk federal: the OAuth scopes granted (`read write`) cover every call the bot makes",
        "Zendesk global: token refresh works",
        "Zendesk federal: token refresh works",
        "Google: token refresh works",
    ] {
        assert!(
            lines.iter().any(|(_, l)| l.starts_with(needle)),
            "{needle}: {lines:#?}"
        );
    }
    // Two tokens each: the one used, and the refreshed one (and Google's
    // directory of people its own, for its own scope).
    assert_eq!(sb.zd_knobs("global").count("POST", "/oauth/tokens"), 2);
    assert_eq!(sb.google_knobs.count("POST", "/token"), 3);
    // A Google token endpoint that stops issuing tokens: the refresh line says so.
    sb.google
        .lock()
        .service_accounts
        .get_mut(access_bot::sandbox::SERVICE_ACCOUNT)
        .unwrap()
        .public_key = vec![0; 16];
    let lines = access_bot::check::report(&sb.config, &sb.secrets).await;
    let fails: Vec<&String> = lines.iter().filter(|(ok, _)| !ok).map(|(_, l)| l).collect();
    assert!(
        fails.iter().any(|l| l.starts_with("Google token refresh:")
            && l.contains("the key was rotated or deleted")),
        "{fails:#?}"
    );
}

#[tokio::test]
async fn gitlab_a_hung_gitlab_ends_the_cycle_instead_of_freezing_the_bot() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let bot = bot_with_timeout(&sb, "1s").await;
    light_agent_request(&sb).await;
    // Every request from now on is never answered.
    sb.gitlab_knobs.fail_next("", 10_000, Failure::Hang);
    let t = std::time::Instant::now();
    let report = bot.cycle().await;
    let took = t.elapsed();
    eprintln!("a cycle against a hung GitLab ended after {took:?}");
    assert!(report.failed(), "{report:?}");
    assert!(
        report.errors.iter().any(|e| e.contains("no answer within")),
        "{report:?}"
    );
    // Two timeouts of a second and a backoff, not a hang.
    assert!(took < Duration::from_secs(4), "{took:?}");
    // GitLab answers again: the next cycle does the work.
    sb.gitlab_knobs.clear_faults();
    let report = bot.cycle().await;
    assert!(!report.failed(), "{report:?}");
}

#[tokio::test]
async fn google_the_directory_of_people_drops_a_refused_token_too() {
    use access_bot::directory::DirectoryClient;
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let d = DirectoryClient::new(
        sb.config.google.as_ref().unwrap(),
        &sb.secrets,
        reqwest::Client::new(),
    )
    .unwrap();
    let jane = email("jane.doe@gitlab.com");
    assert!(d.person(&jane).await.unwrap().is_some());
    sb.google.lock().revoke_tokens();
    for _ in 0..5 {
        assert!(d.person(&jane).await.unwrap().is_some());
    }
    assert_eq!(sb.google_knobs.count("POST", "/token"), 2);
    assert_eq!(
        count_status(&sb.google_knobs, "GET", "/admin/directory/v1/users/", 401),
        1,
        "the refused token was sent once"
    );
}

#[tokio::test]
async fn token_endpoints_are_retried_on_the_transport_outside_the_budget() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    // Zendesk: a 429, then a 503, then the token. One request a minute: the
    // call takes the only slot, so a token request that took one would
    // wait a minute.
    let mut inst = sb.config.zendesk["global"].clone();
    inst.requests_per_minute = 1;
    let zd = ZendeskClient::new("global", &inst, &sb.secrets, reqwest::Client::new())
        .unwrap()
        .with_backoff(fast());
    let k = sb.zd_knobs("global");
    k.fail_next(
        "POST /oauth/tokens",
        1,
        Failure::TooMany {
            retry_after: Some(0),
        },
    );
    k.fail_next("POST /oauth/tokens", 1, Failure::Status(503));
    tokio::time::timeout(Duration::from_secs(20), zd.me())
        .await
        .expect("the token fetch waited for the budget")
        .unwrap();
    assert_eq!(k.count("POST", "/oauth/tokens"), 3);
    assert_eq!(k.count("GET", "/api/v2/users/me"), 1);
    // Still failing on the last attempt: the status and the attempts, said.
    k.fail_next("POST /oauth/tokens", 5, Failure::Status(502));
    let e = client(&sb, &sb.secrets).me().await.unwrap_err();
    assert!(
        matches!(
            e,
            ZendeskError::Server {
                status: 502,
                attempts: 5,
                ..
            }
        ),
        "{e}"
    );

    // Google's token endpoint, for the groups and for the directory of people.
    sb.google_knobs
        .fail_next("POST /token", 2, Failure::Status(503));
    let g = google(&sb, sb.config.google.as_ref().unwrap()).unwrap();
    assert!(!g.is_member(OKTA, "x@gitlab.com").await.unwrap());
    assert_eq!(sb.google_knobs.count("POST", "/token"), 3);
    sb.google_knobs
        .fail_next("POST /token", 5, Failure::Status(500));
    let d = access_bot::directory::DirectoryClient::new(
        sb.config.google.as_ref().unwrap(),
        &sb.secrets,
        reqwest::Client::new(),
    )
    .unwrap()
    .with_backoff(fast());
    let e = d.person(&email("jane.doe@gitlab.com")).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "directory: token exchange refused: the token endpoint failed 5 times: 500 Internal Server Error"
    );
    assert!(
        d.person(&email("jane.doe@gitlab.com"))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn google_the_directory_of_people_retries_server_errors() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let d = access_bot::directory::DirectoryClient::new(
        sb.config.google.as_ref().unwrap(),
        &sb.secrets,
        reqwest::Client::new(),
    )
    .unwrap()
    .with_backoff(fast());
    let route = "GET /admin/directory/v1/users/";
    sb.google_knobs.fail_next(route, 1, Failure::Status(503));
    sb.google_knobs.fail_next(route, 1, Failure::Status(500));
    assert!(
        d.person(&email("jane.doe@gitlab.com"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        count_status(&sb.google_knobs, "GET", "/admin/directory", 200),
        1
    );
    // Failing to the last attempt: a transient failure, with the status.
    sb.google_knobs.fail_next(route, 5, Failure::Status(502));
    let e = d.person(&email("jane.doe@gitlab.com")).await.unwrap_err();
    assert!(
        matches!(&e, access_bot::directory::DirectoryError::Failed(m) if m == "users.get answered 502"),
        "{e}"
    );
    assert_eq!(
        count_status(&sb.google_knobs, "GET", "/admin/directory", 502),
        5
    );
}
