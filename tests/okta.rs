//! The Okta connector over HTTP against the sandbox's Okta org: membership
//! and its idempotency, pages, rate limits, errors, both credentials, a lost
//! answer, and `check`. The fake's own strictness (scopes per route, limits,
//! cursors, assertion replay) is tested at the end. The workflow through
//! the bot uses the tests' DSL (`Tester`): its comments are read by snapshot.

mod common;

use std::time::{Duration, Instant};

use access_bot::groups::Change;
use access_bot::http::Backoff;
use access_bot::okta::{OktaClient, OktaError};
use access_bot::sandbox::faults::Failure;
use access_bot::sandbox::{GroupBackend, Ports, Sandbox};
use common::tester::{Issue, MANAGER, TABLE};

const GROUP: &str = "okta-zendeskglobal-users@gitlab.com";

fn fast() -> Backoff {
    Backoff {
        attempts: 5,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(50),
    }
}

async fn sandbox(b: GroupBackend) -> Sandbox {
    Sandbox::start_with(Ports::default(), b).await.unwrap()
}

fn client(sb: &Sandbox) -> OktaClient {
    OktaClient::new(
        sb.config.okta.as_ref().unwrap(),
        &sb.secrets,
        reqwest::Client::new(),
    )
    .unwrap()
    .with_backoff(fast())
}

fn token_requests(sb: &Sandbox) -> usize {
    sb.okta_knobs.count("POST", "/oauth2/v1/token")
}

#[tokio::test]
async fn okta_add_and_remove_are_idempotent_with_an_api_token() {
    let sb = sandbox(GroupBackend::OktaApiToken).await;
    let c = client(&sb);
    assert!(!c.member(GROUP, "jane.doe@gitlab.com").await.unwrap());
    assert_eq!(
        c.assign(GROUP, "jane.doe@gitlab.com").await.unwrap(),
        Change::Done
    );
    assert!(c.member(GROUP, "Jane.Doe@gitlab.com").await.unwrap());
    // Adding an existing member is safe (Okta's PUT is idempotent).
    c.assign(GROUP, "jane.doe@gitlab.com").await.unwrap();
    assert_eq!(sb.okta.lock().members(GROUP), vec!["jane.doe@gitlab.com"]);
    assert_eq!(
        c.members(GROUP).await.unwrap(),
        vec!["jane.doe@gitlab.com".to_string()]
    );
    assert_eq!(
        c.unassign(GROUP, "jane.doe@gitlab.com").await.unwrap(),
        Change::Done
    );
    assert!(!sb.group_member(GROUP, "jane.doe@gitlab.com"));
    // Removing a non-member, or someone the org does not know, is already so.
    assert_eq!(
        c.unassign(GROUP, "jane.doe@gitlab.com").await.unwrap(),
        Change::AlreadySo
    );
    assert_eq!(
        c.unassign(GROUP, "nobody@gitlab.com").await.unwrap(),
        Change::AlreadySo
    );
    // No token exchange with an API token.
    assert_eq!(token_requests(&sb), 0);
}

#[tokio::test]
async fn okta_errors_are_typed_with_their_codes() {
    let sb = sandbox(GroupBackend::OktaApiToken).await;
    let c = client(&sb);
    let e = c.assign(GROUP, "nobody@gitlab.com").await.unwrap_err();
    assert!(matches!(e, OktaError::NoSuchUser(_)), "{e}");
    assert_eq!(e.code(), Some("E0000007"));
    let e = c
        .assign("no-such-group", "jane.doe@gitlab.com")
        .await
        .unwrap_err();
    assert!(matches!(e, OktaError::GroupNotFound(_)), "{e}");
    assert!(e.to_string().contains("okta_group"), "{e}");
    // An imported app group (its memberships cannot be edited) is not taken
    // for the instance's group.
    sb.okta
        .lock()
        .add_group_of_kind("okta-imported", "APP_GROUP");
    let e = c
        .assign("okta-imported", "jane.doe@gitlab.com")
        .await
        .unwrap_err();
    assert!(matches!(e, OktaError::GroupNotFound(_)), "{e}");
    assert!(!e.is_transient());
    // A wrong API token: 401 E0000011, never retried, never echoed.
    let mut secrets = vec![("OKTA_API_TOKEN".to_string(), "00wrong-token".to_string())];
    secrets.extend(sb.env().into_iter().filter(|(k, _)| k != "OKTA_API_TOKEN"));
    let bad = OktaClient::new(
        sb.config.okta.as_ref().unwrap(),
        &access_bot::secret::Secrets::from_map(secrets),
        reqwest::Client::new(),
    )
    .unwrap();
    sb.clear_logs();
    let e = bad.member(GROUP, "jane.doe@gitlab.com").await.unwrap_err();
    assert!(
        matches!(&e, OktaError::Unauthorized { code } if code == "E0000011"),
        "{e}"
    );
    assert!(!e.to_string().contains("00wrong-token"));
    assert_eq!(
        sb.okta_knobs.total(),
        1,
        "a refused API token is not retried"
    );
    // Backend errors are retried; past the attempts, a transient error.
    sb.okta_knobs
        .fail_next("GET /api/v1/users", 2, Failure::Status(500));
    assert!(!c.member(GROUP, "bo.li@gitlab.com").await.unwrap());
    sb.okta_knobs
        .fail_next("GET /api/v1/users", 50, Failure::Status(503));
    let e = c.member(GROUP, "bo.li@gitlab.com").await.unwrap_err();
    assert!(
        matches!(e, OktaError::Exhausted(_)) && e.is_transient(),
        "{e}"
    );
    sb.okta_knobs.clear_faults();
    // A 200 whose body is not the JSON Okta documents is not an empty answer.
    sb.okta_knobs
        .fail_next("GET /api/v1/groups/", 50, Failure::Garbage);
    let e = c.members(GROUP).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}

#[tokio::test]
async fn okta_member_lists_follow_the_link_header_page_by_page() {
    let sb = sandbox(GroupBackend::OktaApiToken).await;
    {
        let mut w = sb.okta.lock();
        for i in 0..450 {
            w.add_member(GROUP, &format!("person{i:03}@gitlab.com"));
        }
    }
    let c = client(&sb);
    sb.clear_logs();
    let mut members = c.members(GROUP).await.unwrap();
    assert_eq!(members.len(), 450);
    members.sort();
    members.dedup();
    assert_eq!(members.len(), 450, "no member twice across pages");
    let pages: Vec<_> = sb
        .okta_knobs
        .log()
        .into_iter()
        .filter(|e| e.path.ends_with("/users") && e.path.starts_with("/api/v1/groups/"))
        .collect();
    assert_eq!(pages.len(), 3, "200 + 200 + 50: {pages:?}");
}

#[tokio::test]
async fn okta_rate_limit_used_up_waits_for_the_reset_instead_of_meeting_429() {
    let sb = sandbox(GroupBackend::OktaApiToken).await;
    let c = client(&sb);
    // Three requests per two-second window.
    sb.okta.lock().set_rate_limit(3, 2);
    let t = Instant::now();
    for _ in 0..3 {
        // Each is the user and the user's groups (the group id is held).
        c.member(GROUP, "jane.doe@gitlab.com").await.unwrap();
    }
    let took = t.elapsed();
    assert_eq!(
        sb.okta.lock().limited,
        0,
        "the bot waited; Okta never said 429"
    );
    assert!(took >= Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn okta_reads_side_by_side_look_the_group_up_once() {
    let sb = sandbox(GroupBackend::OktaApiToken).await;
    let c = client(&sb);
    // A cold client, four membership reads at once (a request's subjects
    // observed side by side): one search for the group's id, not four.
    let (a, b, d, e) = tokio::join!(
        c.member(GROUP, "jane.doe@gitlab.com"),
        c.member(GROUP, "mlee@gitlab.com"),
        c.member(GROUP, "jane.doe@gitlab.com"),
        c.member(GROUP, "mlee@gitlab.com"),
    );
    for r in [a, b, d, e] {
        assert!(!r.unwrap());
    }
    assert_eq!(sb.okta_knobs.count("GET", "/api/v1/groups"), 1);
}

#[tokio::test]
async fn okta_429_waits_for_the_reset_and_gives_up_after_bounded_attempts() {
    let sb = sandbox(GroupBackend::OktaApiToken).await;
    let c = client(&sb);
    c.member(GROUP, "jane.doe@gitlab.com").await.unwrap();
    // Two 429s whose reset is a second away: waited out, then done.
    sb.okta_knobs.fail_next(
        "PUT /api/v1/groups",
        2,
        Failure::TooMany {
            retry_after: Some(1),
        },
    );
    let t = Instant::now();
    assert_eq!(
        c.assign(GROUP, "jane.doe@gitlab.com").await.unwrap(),
        Change::Done
    );
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert!(sb.group_member(GROUP, "jane.doe@gitlab.com"));
    // Always 429 (E0000047): a typed, transient error after the attempts.
    sb.okta_knobs.fail_next(
        "DELETE /api/v1/groups",
        50,
        Failure::TooMany {
            retry_after: Some(0),
        },
    );
    let e = c.unassign(GROUP, "jane.doe@gitlab.com").await.unwrap_err();
    assert!(matches!(e, OktaError::RateLimited), "{e}");
    assert_eq!(e.code(), Some("E0000047"));
    assert!(e.is_transient());
    let deletes = sb
        .okta_knobs
        .log()
        .iter()
        .filter(|e| e.method == "DELETE")
        .count();
    assert_eq!(deletes, 5, "bounded attempts");
}

#[tokio::test]
async fn okta_a_write_whose_answer_was_lost_converges_on_the_retry() {
    let sb = sandbox(GroupBackend::Okta).await;
    let c = client(&sb);
    sb.okta_knobs
        .fail_next("PUT /api/v1/groups", 1, Failure::ApplyThenDrop);
    assert_eq!(
        c.assign(GROUP, "bo.li@gitlab.com").await.unwrap(),
        Change::Done
    );
    assert_eq!(sb.okta.lock().members(GROUP), vec!["bo.li@gitlab.com"]);
    // The removal applied, its answer lost: the retry meets a 404, which
    // that first attempt caused.
    sb.okta_knobs
        .fail_next("DELETE /api/v1/groups", 1, Failure::ApplyThenDrop);
    assert_eq!(
        c.unassign(GROUP, "bo.li@gitlab.com").await.unwrap(),
        Change::Done
    );
    assert!(sb.okta.lock().members(GROUP).is_empty());
    // The same when the answer never comes (a timeout).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let slow = OktaClient::new(sb.config.okta.as_ref().unwrap(), &sb.secrets, http)
        .unwrap()
        .with_backoff(fast());
    sb.okta_knobs
        .fail_next("PUT /api/v1/groups", 1, Failure::ApplyThenHang);
    assert_eq!(
        slow.assign(GROUP, "bo.li@gitlab.com").await.unwrap(),
        Change::Done
    );
    assert_eq!(sb.okta.lock().members(GROUP), vec!["bo.li@gitlab.com"]);
}

#[tokio::test]
async fn okta_service_app_token_is_held_and_a_refused_one_replaced_once() {
    let sb = sandbox(GroupBackend::Okta).await;
    let c = client(&sb);
    c.member(GROUP, "jane.doe@gitlab.com").await.unwrap();
    c.assign(GROUP, "jane.doe@gitlab.com").await.unwrap();
    assert_eq!(token_requests(&sb), 1, "one token for every call");
    // Revoked: the 401 drops it, a new one is fetched, the call succeeds.
    sb.okta.lock().revoke_tokens();
    assert!(c.member(GROUP, "jane.doe@gitlab.com").await.unwrap());
    assert_eq!(token_requests(&sb), 2);
    // A key Okta no longer knows: the token request is refused, and says why.
    let client_id = match &sb.config.okta.as_ref().unwrap().auth {
        access_bot::config::OktaAuth::PrivateKeyJwt { client_id, .. } => client_id.clone(),
        _ => unreachable!(),
    };
    sb.okta
        .lock()
        .service_apps
        .get_mut(&client_id)
        .unwrap()
        .public_key = vec![0; 16];
    let fresh = client(&sb);
    let e = fresh
        .member(GROUP, "jane.doe@gitlab.com")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OktaError::Token(t) if t.contains("invalid_client")),
        "{e}"
    );
}

#[tokio::test]
async fn okta_service_app_without_the_manage_scope_is_refused_at_the_token() {
    let sb = sandbox(GroupBackend::Okta).await;
    let (client_id, pem) = sb
        .okta
        .lock()
        .create_service_app(&["okta.groups.read", "okta.users.read"])
        .unwrap();
    let mut cfg = sb.config.okta.clone().unwrap();
    cfg.auth = access_bot::config::OktaAuth::PrivateKeyJwt {
        client_id,
        key_env: "READ_ONLY_KEY".into(),
        key_id: None,
    };
    let c = OktaClient::new(
        &cfg,
        &access_bot::secret::Secrets::from_map([("READ_ONLY_KEY".to_string(), pem)]),
        reqwest::Client::new(),
    )
    .unwrap();
    let e = c.member(GROUP, "jane.doe@gitlab.com").await.unwrap_err();
    assert!(
        matches!(&e, OktaError::Token(t) if t.contains("invalid_scope") && t.contains("okta.groups.manage")),
        "{e}"
    );
}

#[tokio::test]
async fn check_reports_the_okta_groups_and_the_credential() {
    // A service app: the groups readable, and a fresh token issued.
    let sb = sandbox(GroupBackend::Okta).await;
    sb.okta.lock().add_member(GROUP, "robin.kim@gitlab.com");
    let lines = access_bot::check::report(&sb.config, &sb.secrets).await;
    assert!(lines.iter().all(|(ok, _)| *ok), "{lines:#?}");
    for needle in [
        "Okta group okta-zendeskglobal-users@gitlab.com (global): readable, 1 members",
        "Okta group okta-zendeskfederal-users@gitlab.com (federal): readable, 0 members",
        "Okta: token refresh works",
    ] {
        assert!(
            lines.iter().any(|(_, l)| l.starts_with(needle)),
            "{needle}: {lines:#?}"
        );
    }
    assert!(!lines.iter().any(|(_, l)| l.starts_with("Google group")));
    assert_eq!(
        token_requests(&sb),
        2,
        "the one used, and the refreshed one"
    );
    // A group that is not in the org: the line names it and the setting.
    let mut cfg = sb.config.clone();
    cfg.zendesk.get_mut("federal").unwrap().okta_group = Some("okta-missing".into());
    let lines = access_bot::check::report(&cfg, &sb.secrets).await;
    let fails: Vec<&String> = lines.iter().filter(|(ok, _)| !ok).map(|(_, l)| l).collect();
    assert_eq!(fails.len(), 1, "{fails:#?}");
    assert!(
        fails[0].starts_with("Okta group okta-missing (federal):")
            && fails[0].contains("okta_group"),
        "{fails:#?}"
    );

    // An API token: accepted; a wrong one is a failure that names the credential.
    let sb = sandbox(GroupBackend::OktaApiToken).await;
    let lines = access_bot::check::report(&sb.config, &sb.secrets).await;
    assert!(
        lines
            .iter()
            .any(|(ok, l)| *ok && l == "Okta: the API token is accepted"),
        "{lines:#?}"
    );
    let secrets = access_bot::secret::Secrets::from_map(sb.env().into_iter().map(|(k, v)| {
        if k == "OKTA_API_TOKEN" {
            (k, "00bad-okta-token-value".into())
        } else {
            (k, v)
        }
    }));
    let lines = access_bot::check::report(&sb.config, &secrets).await;
    let fails: Vec<&String> = lines.iter().filter(|(ok, _)| !ok).map(|(_, l)| l).collect();
    assert!(
        fails
            .iter()
            .any(|l| l.starts_with("Okta group")
                && l.contains("credential was rejected (401 E0000011)")),
        "{fails:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|(_, l)| l.contains("00bad-okta-token-value"))
    );
}

// ------------------------------------------------------- the fake's strictness

async fn api_token(sb: &Sandbox) -> String {
    sb.env()
        .into_iter()
        .find(|(k, _)| k == "OKTA_API_TOKEN")
        .map(|(_, v)| v)
        .unwrap()
}

#[tokio::test]
async fn okta_fake_requires_auth_and_refuses_limits_and_cursors_it_does_not_document() {
    let sb = sandbox(GroupBackend::OktaApiToken).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", sb.okta_addr);
    let gid = sb.okta.lock().group_by_name(GROUP).unwrap().id.clone();
    // No credential, or the wrong scheme: 401 E0000011, with rate-limit headers.
    for auth in [None, Some("Bearer nope".to_string())] {
        let mut rb = http.get(format!("{base}/api/v1/groups/{gid}/users"));
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("x-rate-limit-remaining"));
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["errorCode"], "E0000011");
        assert!(v["errorCauses"].is_array() && v["errorId"].is_string());
    }
    let token = api_token(&sb).await;
    let get = |path: String| {
        http.get(format!("{base}{path}"))
            .header("authorization", format!("SSWS {token}"))
            .send()
    };
    let r = get(format!("/api/v1/groups/{gid}/users?limit=5000"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errorCode"], "E0000001");
    assert!(
        v["errorCauses"][0]["errorSummary"]
            .as_str()
            .unwrap()
            .contains("limit")
    );
    let r = get(format!("/api/v1/groups/{gid}/users?after=garbage"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Removing a non-member is a 404 E0000007 (the stricter reading).
    let uid = sb
        .okta
        .lock()
        .user("jane.doe@gitlab.com")
        .unwrap()
        .id
        .clone();
    let r = http
        .delete(format!("{base}/api/v1/groups/{gid}/users/{uid}"))
        .header("authorization", format!("SSWS {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errorCode"], "E0000007");
}

#[tokio::test]
async fn okta_fake_checks_scopes_per_route_and_never_accepts_an_assertion_twice() {
    let sb = sandbox(GroupBackend::Okta).await;
    let base = format!("http://{}", sb.okta_addr);
    let (client_id, pem) = sb
        .okta
        .lock()
        .create_service_app(&["okta.groups.read", "okta.users.read"])
        .unwrap();
    let key = access_bot::jwt::RsaKey::from_pem(&pem).unwrap();
    let now = chrono::Utc::now().timestamp();
    let assertion = access_bot::jwt::rs256(
        &serde_json::json!({"iss": client_id, "sub": client_id,
            "aud": format!("{base}/oauth2/v1/token"), "iat": now, "exp": now + 300, "jti": "one"}),
        None,
        |m| key.sign(m),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let ask = || {
        http.post(format!("{base}/oauth2/v1/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "okta.groups.read okta.users.read"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
            ])
            .send()
    };
    let r = ask().await.unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    // The same assertion again: refused (replay).
    let r = ask().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_client"
    );
    // Reading the group is allowed; changing it needs okta.groups.manage.
    let (gid, uid) = {
        let w = sb.okta.lock();
        (
            w.group_by_name(GROUP).unwrap().id.clone(),
            w.user("jane.doe@gitlab.com").unwrap().id.clone(),
        )
    };
    let r = http
        .get(format!("{base}/api/v1/groups/{gid}/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .put(format!("{base}/api/v1/groups/{gid}/users/{uid}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("insufficient_scope"))
    );
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["errorCode"],
        "E0000006"
    );
    assert!(!sb.okta.lock().is_member(GROUP, "jane.doe@gitlab.com"));
}

#[tokio::test]
async fn an_item_naming_the_okta_group_is_planned_approved_and_done_in_okta() {
    let mut t = crate::tester!(GroupBackend::Okta).await;
    let issue = Issue {
        author: "jdoe".into(),
        title: "Access request: Jane Doe".into(),
        labels: Vec::new(),
        body: format!(
            "{TABLE}| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Okta: okta-zendeskglobal-users\n"
        ),
    };
    let iid = t.file(&issue).await;
    t.run().await;
    let plan = t.expect_comment(iid);
    assert!(
        plan.body
            .contains("add to `okta-zendeskglobal-users@gitlab.com` (Okta app)"),
        "{}",
        plan.body
    );
    assert!(!t.sb.okta.lock().is_member(GROUP, "jane.doe@gitlab.com"));
    t.label("mlee", iid, MANAGER).await;
    t.run().await;
    assert!(t.sb.okta.lock().is_member(GROUP, "jane.doe@gitlab.com"));
    assert!(!t.sb.google_member(GROUP, "jane.doe@gitlab.com"));
    t.expect_ticked(iid, &["Okta: okta-zendeskglobal-users"]);
    let done = t.expect_comment(iid);
    assert!(done.body.contains("access-bot: done"), "{}", done.body);
    t.expect_no_comment(iid);
}

/// Collects log output in memory.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn okta_credentials_never_reach_a_log_line_at_trace_level() {
    for backend in [GroupBackend::Okta, GroupBackend::OktaApiToken] {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        // The test's runtime is single-threaded: the bot's tasks log here too.
        let guard = tracing::subscriber::set_default(subscriber);
        // With one scoped subscriber alone, tracing asks only the thread that
        // meets a callsite first whether it is on: a callsite another test's
        // thread met first stayed off here (a flaky count below). With a
        // second dispatcher alive, every callsite asks all of them.
        let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let sb = sandbox(backend).await;
        let bot = sb.bot().await.unwrap();
        sb.okta.lock().revoke_tokens(); // a 401 and a new token on the way
        let body = "| Full name | Email | GitLab username | Manager |\n|---|---|---|---|\n| Jane Doe | jane.doe@gitlab.com | @jdoe | @mlee |\n\n- [ ] Okta: okta-zendeskglobal-users\n";
        let iid = sb
            .file_issue("jdoe", "Access request: Jane Doe", &[], body)
            .await
            .unwrap();
        access_bot::sandbox::harness::run_until_quiet(&bot, 3).await;
        sb.add_label("mlee", iid, "AR-Approval::Manager Approved")
            .await
            .unwrap();
        access_bot::sandbox::harness::run_until_quiet(&bot, 3).await;
        assert!(sb.okta.lock().is_member(GROUP, "jane.doe@gitlab.com"));
        drop(guard);
        let logs = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(logs.lines().count() > 50, "trace logging was on");
        let mut needles = vec![
            "eyJsandbox.".to_string(),          // access tokens the fake issues
            "eyJhbGciOiJSUzI1NiIs".to_string(), // a signed client assertion
            "BEGIN PRIVATE KEY".to_string(),
            "SSWS ".to_string(),
            "Bearer ".to_string(),
        ];
        for (var, value) in sb.env() {
            if var.starts_with("OKTA_") {
                // The key's body lines, or the API token.
                needles.extend(value.lines().filter(|l| l.len() > 20).map(String::from));
            }
        }
        for n in needles {
            assert!(!logs.contains(&n), "{backend:?}: {n:?} appears in the logs");
        }
    }
}

#[tokio::test]
async fn okta_a_token_endpoint_retries_with_a_new_assertion_each_time() {
    let sb = sandbox(GroupBackend::Okta).await;
    let c = client(&sb);
    // Okta's 429 (its reset now) and a 503, then the token.
    sb.okta_knobs.fail_next(
        "POST /oauth2/v1/token",
        1,
        Failure::TooMany {
            retry_after: Some(0),
        },
    );
    sb.okta_knobs
        .fail_next("POST /oauth2/v1/token", 1, Failure::Status(503));
    c.member(GROUP, "jane.doe@gitlab.com").await.unwrap();
    assert_eq!(token_requests(&sb), 3);
    // An answer lost after Okta took the assertion: the retry is signed anew
    // (Okta refuses a `jti` it has seen).
    sb.okta_knobs
        .fail_next("POST /oauth2/v1/token", 1, Failure::ApplyThenDrop);
    client(&sb)
        .member(GROUP, "jane.doe@gitlab.com")
        .await
        .unwrap();
    assert_eq!(token_requests(&sb), 5);
    // Failing to the last attempt: said, with the attempts.
    sb.okta_knobs
        .fail_next("POST /oauth2/v1/token", 5, Failure::Status(502));
    let e = client(&sb)
        .member(GROUP, "jane.doe@gitlab.com")
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Okta: token request refused: the token endpoint failed 5 times: 502 Bad Gateway"
    );
}
