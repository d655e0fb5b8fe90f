//! The sandbox servers over HTTP: routes, error shapes, fault knobs,
//! pagination, and comparisons with the public payload examples.

use std::path::Path;

use access_bot::sandbox::faults::Failure;
use access_bot::sandbox::{PROJECT, Ports, Sandbox};
use base64::Engine;
use serde_json::{Value, json};

fn fixture(rel: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

/// Every field of the public example exists in ours with the same JSON type
/// (null matches anything: unset fields are null in real payloads).
fn assert_shape(example: &Value, ours: &Value, path: &str) {
    match (example, ours) {
        (Value::Object(e), Value::Object(o)) => {
            for (k, ev) in e {
                let ov = o
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} missing in the fake's payload: {ours}"));
                assert_shape(ev, ov, &format!("{path}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(o)) => {
            if let (Some(e0), Some(o0)) = (e.first(), o.first())
                && (!e0.is_string() || !e0.as_str().unwrap_or("").starts_with("..."))
            {
                assert_shape(e0, o0, &format!("{path}[0]"));
            }
        }
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_)) => {}
        (e, o) => panic!("{path}: example is {e}, fake gives {o}"),
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

struct Gl<'a> {
    sb: &'a Sandbox,
    http: reqwest::Client,
}

impl Gl<'_> {
    fn url(&self, p: &str) -> String {
        format!("http://{}/api/v4{p}", self.sb.gitlab_addr)
    }
    fn issues(&self) -> String {
        self.url(&format!("/projects/{}/issues", enc(PROJECT)))
    }
    async fn get(&self, user: &str, url: &str) -> reqwest::Response {
        self.http
            .get(url)
            .header("PRIVATE-TOKEN", self.sb.token_of(user))
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn gitlab_auth_users_and_issue_lifecycle() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let gl = Gl {
        sb: &sb,
        http: reqwest::Client::new(),
    };

    let r = gl.http.get(gl.url("/user")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "401 Unauthorized"})
    );
    let me: Value = gl
        .get("access-bot", &gl.url("/user"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "access-bot");
    let users: Value = gl
        .get("access-bot", &gl.url("/users?username=mlee"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(users[0]["username"], "mlee");
    let id = users[0]["id"].as_u64().unwrap();
    let u: Value = gl
        .get("access-bot", &gl.url(&format!("/users/{id}")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(u["username"], "mlee");

    let iid = sb
        .file_issue(
            "jdoe",
            "Zendesk light agent",
            &["support::to do"],
            "- [ ] Zendesk Global: Light Agent\n- [ ] Slack: x\n",
        )
        .await
        .unwrap();
    let issue: Value = gl
        .get("access-bot", &format!("{}/{iid}", gl.issues()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(issue["iid"], iid);
    assert_eq!(
        issue["task_completion_status"],
        json!({"count": 2, "completed_count": 0})
    );
    assert_eq!(issue["author"]["username"], "jdoe");

    // Ticking one box writes exactly one checklist note, authored by the editor.
    sb.edit_description(
        "access-bot",
        iid,
        "- [x] Zendesk Global: Light Agent\n- [ ] Slack: x\n",
    )
    .await
    .unwrap();
    // A text edit writes "changed the description".
    sb.edit_description(
        "jdoe",
        iid,
        "- [x] Zendesk Global: Light Agent\n- [ ] Slack: y\n",
    )
    .await
    .unwrap();
    // A text edit that also toggles a box writes only the checklist note.
    sb.edit_description(
        "mallory",
        iid,
        "- [x] Zendesk Global: Light Agent!\n- [x] Slack: y\n",
    )
    .await
    .unwrap();
    let notes: Value = gl
        .get(
            "access-bot",
            &format!("{}/{iid}/notes?sort=asc", gl.issues()),
        )
        .await
        .json()
        .await
        .unwrap();
    let sys: Vec<(String, String)> = notes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["system"] == true)
        .map(|n| {
            (
                n["author"]["username"].as_str().unwrap().to_string(),
                n["body"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        sys,
        vec![
            (
                "access-bot".into(),
                "marked the checklist item **Zendesk Global: Light Agent** as completed".into()
            ),
            ("jdoe".into(), "changed the description".into()),
            (
                "mallory".into(),
                "marked the checklist item **Slack: y** as completed".into()
            ),
        ]
    );

    // Labels: events record who and what; scoped labels exclude each other.
    sb.add_label("mlee", iid, "AR-Approval::Needs Manager Approval")
        .await
        .unwrap();
    sb.add_label("mlee", iid, "AR-Approval::Manager Approved")
        .await
        .unwrap();
    let ev: Value = gl
        .get(
            "access-bot",
            &format!("{}/{iid}/resource_label_events", gl.issues()),
        )
        .await
        .json()
        .await
        .unwrap();
    let ev: Vec<(String, String, String)> = ev
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["user"]["username"].as_str().unwrap().into(),
                e["label"]["name"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(ev.contains(&("jdoe".into(), "support::to do".into(), "add".into())));
    assert!(ev.contains(&(
        "mlee".into(),
        "AR-Approval::Needs Manager Approval".into(),
        "remove".into()
    )));
    assert!(ev.contains(&(
        "mlee".into(),
        "AR-Approval::Manager Approved".into(),
        "add".into()
    )));
    assert_eq!(
        sb.labels(iid),
        vec!["support::to do", "AR-Approval::Manager Approved"]
    );

    // JSON bodies work too; state_event closes.
    let r = gl
        .http
        .put(format!("{}/{iid}", gl.issues()))
        .header("PRIVATE-TOKEN", sb.token_of("access-bot"))
        .json(&json!({"state_event": "close", "remove_labels": "support::to do"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sb.state(iid), "closed");

    // Notes: create and 400 without body.
    let r = gl
        .http
        .post(format!("{}/{iid}/notes", gl.issues()))
        .header("PRIVATE-TOKEN", sb.token_of("access-bot"))
        .form(&[("body", "hi")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = gl
        .http
        .post(format!("{}/{iid}/notes", gl.issues()))
        .header("PRIVATE-TOKEN", sb.token_of("access-bot"))
        .form(&[("body", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = gl.get("access-bot", &format!("{}/999", gl.issues())).await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "404 Issue Not Found"
    );
}

#[tokio::test]
async fn gitlab_listing_filters_and_pagination() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let gl = Gl {
        sb: &sb,
        http: reqwest::Client::new(),
    };
    for i in 0..25 {
        let labels: &[&str] = if i % 2 == 0 {
            &["offboarding", "x"]
        } else {
            &["offboarding"]
        };
        sb.file_issue(
            "gitlab-employment-bot",
            &format!("Offboarding {i}"),
            labels,
            "body",
        )
        .await
        .unwrap();
    }
    let first = gl
        .get(
            "access-bot",
            &format!(
                "{}?state=opened&labels=offboarding&order_by=updated_at&sort=asc&per_page=10",
                gl.issues()
            ),
        )
        .await;
    let h = first.headers().clone();
    assert_eq!(h["x-total"], "25");
    assert_eq!(h["x-total-pages"], "3");
    assert_eq!(h["x-next-page"], "2");
    assert!(h["link"].to_str().unwrap().contains("rel=\"next\""));
    let page: Vec<Value> = first.json().await.unwrap();
    assert_eq!(page.len(), 10);
    assert!(
        page.windows(2)
            .all(|w| w[0]["updated_at"].as_str() <= w[1]["updated_at"].as_str())
    );
    let last = gl
        .get(
            "access-bot",
            &format!("{}?labels=offboarding&per_page=10&page=3", gl.issues()),
        )
        .await;
    assert_eq!(last.headers()["x-next-page"], "");
    assert_eq!(last.json::<Vec<Value>>().await.unwrap().len(), 5);
    // labels is AND
    let both: Vec<Value> = gl
        .get(
            "access-bot",
            &format!("{}?labels=offboarding,x&per_page=100", gl.issues()),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(both.len(), 13);
    // updated_after is inclusive
    let t = page[3]["updated_at"].as_str().unwrap();
    let after: Vec<Value> = gl
        .get(
            "access-bot",
            &format!(
                "{}?updated_after={}&order_by=updated_at&sort=asc&per_page=100",
                gl.issues(),
                enc(t)
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after.len(), 22);
    assert_eq!(after[0]["updated_at"].as_str(), Some(t));
}

#[tokio::test]
async fn gitlab_confidential_404_and_silent_label_drop() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let gl = Gl {
        sb: &sb,
        http: reqwest::Client::new(),
    };
    let iid = sb.file_issue("jdoe", "t", &[], "b").await.unwrap();
    let mallory = sb.gitlab.lock().user_by_name("mallory").unwrap().id;
    let jdoe = sb.gitlab.lock().user_by_name("jdoe").unwrap().id;
    {
        let mut w = sb.gitlab.lock();
        let p = w.projects.iter_mut().find(|p| p.path == PROJECT).unwrap();
        p.members = Some([1, 2, jdoe].into_iter().collect());
        p.label_editors = Some([1].into_iter().collect());
    }
    assert_eq!(
        gl.get("mallory", &format!("{}/{iid}", gl.issues()))
            .await
            .status(),
        404
    );
    let _ = mallory;
    // jdoe may see it, but a label change without rights is dropped and still 200.
    sb.add_label("jdoe", iid, "AR-Approval::Manager Approved")
        .await
        .unwrap();
    assert!(sb.labels(iid).is_empty());
}

#[tokio::test]
async fn gitlab_429_is_plain_text_with_retry_after() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let gl = Gl {
        sb: &sb,
        http: reqwest::Client::new(),
    };
    sb.gitlab_knobs.set_rate_limit(Some(2));
    assert_eq!(gl.get("access-bot", &gl.url("/user")).await.status(), 200);
    assert_eq!(gl.get("access-bot", &gl.url("/user")).await.status(), 200);
    let r = gl.get("access-bot", &gl.url("/user")).await;
    assert_eq!(r.status(), 429);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.text().await.unwrap(), "Retry later\n");
    assert_eq!(sb.gitlab_knobs.rate_limited(), 1);
    assert_eq!(sb.gitlab_knobs.count("GET", "/api/v4/user"), 3);
}

#[tokio::test]
async fn fault_knobs_fail_drop_and_delay() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let gl = Gl {
        sb: &sb,
        http: reqwest::Client::new(),
    };
    sb.gitlab_knobs
        .fail_next("GET /api/v4/user", 2, Failure::Status(503));
    assert_eq!(gl.get("access-bot", &gl.url("/user")).await.status(), 503);
    assert_eq!(gl.get("access-bot", &gl.url("/user")).await.status(), 503);
    assert_eq!(gl.get("access-bot", &gl.url("/user")).await.status(), 200);
    sb.gitlab_knobs.fail_next("", 1, Failure::Drop);
    let r = gl
        .http
        .get(gl.url("/user"))
        .header("PRIVATE-TOKEN", sb.token_of("access-bot"))
        .send()
        .await;
    let dropped = match r {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(dropped, "the connection should break");
    sb.gitlab_knobs
        .set_latency(std::time::Duration::from_millis(150));
    let t = std::time::Instant::now();
    assert_eq!(gl.get("access-bot", &gl.url("/user")).await.status(), 200);
    assert!(t.elapsed() >= std::time::Duration::from_millis(150));
}

struct Zd {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Zd {
    async fn new(sb: &Sandbox, instance: &str) -> Zd {
        let z = &sb.zendesk[instance];
        let base = format!("http://{}", z.addr);
        let (id, secret) = sb
            .zd(instance)
            .oauth_clients
            .iter()
            .next()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .unwrap();
        let http = reqwest::Client::new();
        let tok: Value = http.post(format!("{base}/oauth/tokens"))
            .json(&json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret, "scope": "read write"}))
            .send().await.unwrap().json().await.unwrap();
        assert_shape(
            &fixture("zendesk/oauth_token_grant.response.json"),
            &tok,
            "token",
        );
        Zd {
            base,
            token: tok["access_token"].as_str().unwrap().into(),
            http,
        }
    }
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

#[tokio::test]
async fn zendesk_users_roles_tags_groups() {
    use reqwest::Method as M;
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let zd = Zd::new(&sb, "global").await;
    let light = sb.zd("global").light_agent_role().unwrap();

    let (s, me) = zd.call(M::GET, "/api/v2/users/me.json", None).await;
    assert_eq!(s, 200);
    assert_eq!(me["user"]["role"], "admin");

    // create_or_update: 201 then 200.
    let body = json!({"user": {"name": "Jane Doe", "email": "jane.doe@gitlab.com", "role": "agent", "custom_role_id": light}});
    let (s, u) = zd
        .call(
            M::POST,
            "/api/v2/users/create_or_update",
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(u["user"]["role_type"], 1);
    let (s, _) = zd
        .call(M::POST, "/api/v2/users/create_or_update.json", Some(body))
        .await;
    assert_eq!(s, 200);
    assert_shape(
        &fixture("zendesk/rec_user_create_201.exchange.json")["response"]["body"],
        &u,
        "user",
    );
    let id = u["user"]["id"].as_u64().unwrap();

    // Search is fuzzy: a near-miss comes back too.
    sb.zd("global").add_user(
        "Jane Doe Junior",
        "jane.doe@gitlab.com.au",
        "end-user",
        None,
    );
    let (_, found) = zd
        .call(
            M::GET,
            "/api/v2/users/search?query=email%3A%22jane.doe%40gitlab.com%22",
            None,
        )
        .await;
    assert_eq!(found["users"].as_array().unwrap().len(), 2);
    // An unknown parameter is ignored: everything comes back.
    let (_, all) = zd
        .call(
            M::GET,
            "/api/v2/users/search?email=jane.doe%40gitlab.com",
            None,
        )
        .await;
    assert!(all["users"].as_array().unwrap().len() >= 4);

    // Tags: PUT adds, DELETE removes, POST replaces.
    let (_, t) = zd
        .call(
            M::PUT,
            &format!("/api/v2/users/{id}/tags"),
            Some(json!({"tags": ["partner_support_agent", "x"]})),
        )
        .await;
    assert_eq!(t["tags"], json!(["partner_support_agent", "x"]));
    let (_, t) = zd
        .call(
            M::DELETE,
            &format!("/api/v2/users/{id}/tags.json"),
            Some(json!({"tags": ["x"]})),
        )
        .await;
    assert_eq!(t["tags"], json!(["partner_support_agent"]));
    let (_, t) = zd
        .call(
            M::POST,
            &format!("/api/v2/users/{id}/tags"),
            Some(json!({"tags": []})),
        )
        .await;
    assert_eq!(t["tags"], json!([]));

    // Update: unknown custom role is 422; user fields clear with null.
    let (s, e) = zd
        .call(
            M::PUT,
            &format!("/api/v2/users/{id}"),
            Some(json!({"user": {"custom_role_id": 1}})),
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (422, Some("RecordInvalid")));
    zd.call(
        M::PUT,
        &format!("/api/v2/users/{id}"),
        Some(json!({"user": {"user_fields": {"region": "EMEA"}}})),
    )
    .await;
    let (_, u) = zd
        .call(
            M::PUT,
            &format!("/api/v2/users/{id}"),
            Some(json!({"user": {"user_fields": {"region": null}, "suspended": true}})),
        )
        .await;
    assert_eq!(u["user"]["user_fields"]["region"], Value::Null);
    assert_eq!(u["user"]["suspended"], true);

    // Roles and groups, cursor-paginated.
    let (_, roles) = zd.call(M::GET, "/api/v2/custom_roles", None).await;
    assert_shape(
        &fixture("zendesk/oas_custom_roles.response.json"),
        &roles,
        "custom_roles",
    );
    let (_, groups) = zd.call(M::GET, "/api/v2/groups?page[size]=1", None).await;
    assert_eq!(groups["meta"]["has_more"], true);
    assert_shape(
        &fixture("zendesk/pagination_cursor_envelope.json")["meta"],
        &groups["meta"],
        "meta",
    );
    let next = groups["links"]["next"].as_str().unwrap();
    let path = &next[next.find("/api/v2").unwrap()..];
    let (_, g2) = zd.call(M::GET, path, None).await;
    assert_ne!(g2["groups"][0]["id"], groups["groups"][0]["id"]);
    let gid = groups["groups"][0]["id"].as_u64().unwrap();

    let (s, m) = zd
        .call(
            M::POST,
            "/api/v2/group_memberships",
            Some(json!({"group_membership": {"user_id": id, "group_id": gid}})),
        )
        .await;
    assert_eq!(s, 201);
    let mid = m["group_membership"]["id"].as_u64().unwrap();
    let (_, ms) = zd
        .call(
            M::GET,
            &format!("/api/v2/users/{id}/group_memberships"),
            None,
        )
        .await;
    assert_shape(
        &fixture("zendesk/oas_group_memberships.response.json"),
        &ms,
        "memberships",
    );
    assert_eq!(
        zd.call(M::DELETE, &format!("/api/v2/group_memberships/{mid}"), None)
            .await
            .0,
        204
    );
    let (s, e) = zd
        .call(M::DELETE, &format!("/api/v2/group_memberships/{mid}"), None)
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        e,
        fixture("zendesk/rec_404_record_not_found.exchange.json")["response"]["body"]
    );
    // End-users cannot join groups.
    let enduser = sb
        .zd("global")
        .add_user("E U", "eu@gitlab.com", "end-user", None);
    let (s, _) = zd
        .call(
            M::POST,
            "/api/v2/group_memberships",
            Some(json!({"group_membership": {"user_id": enduser, "group_id": gid}})),
        )
        .await;
    assert_eq!(s, 422);

    let (_, f) = zd.call(M::GET, "/api/v2/user_fields", None).await;
    assert!(
        f["user_fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["key"] == "region")
    );
}

/// The search variants the bot relies on, as strict as documented: offset
/// search stops at 1,000 results; the export needs `filter[type]`, refuses
/// `type:` in its query and pages over 1,000, pages by cursor, and has its
/// own limit per minute; the count is one number.
#[tokio::test]
async fn zendesk_search_count_and_export_limits() {
    use reqwest::Method as M;
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let zd = Zd::new(&sb, "global").await;
    let agent = {
        let mut w = sb.zd("global");
        let staff = w.role_by_name("Staff");
        let a = w.add_user("Busy", "busy@gitlab.com", "agent", staff);
        for i in 0..1_250 {
            w.add_ticket(Some(a), None, if i % 5 == 0 { "closed" } else { "open" });
        }
        a
    };
    let open_q = enc(&format!("type:ticket assignee:{agent} status<closed"));
    let (s, c) = zd
        .call(
            M::GET,
            &format!("/api/v2/search/count?query={open_q}"),
            None,
        )
        .await;
    assert_eq!((s, c["count"].clone()), (200, json!(1_000)));
    // Offset search: the true count, but nothing past the 1,000th result.
    let (_, p10) = zd
        .call(
            M::GET,
            &format!("/api/v2/search.json?query={}&page=10", enc("type:ticket")),
            None,
        )
        .await;
    assert_eq!(p10["count"], 1_250);
    assert_eq!(p10["results"].as_array().unwrap().len(), 100);
    assert_eq!(
        p10["next_page"],
        Value::Null,
        "the 1,000th result is the last"
    );
    let (s, _) = zd
        .call(
            M::GET,
            &format!(
                "/api/v2/search.json?query={}&page=21&per_page=50",
                enc("type:ticket")
            ),
            None,
        )
        .await;
    assert_eq!(s, 422);
    // A query the sandbox cannot read is refused, not answered as another.
    let (s, _) = zd
        .call(
            M::GET,
            &format!("/api/v2/search/count?query={}", enc("priority:high")),
            None,
        )
        .await;
    assert_eq!(s, 400);

    // Export: filter[type] required, `type:` refused, page[size] at most 1,000.
    let q = enc(&format!("assignee:{agent} status<closed"));
    for bad in [
        format!("/api/v2/search/export?query={q}"),
        format!("/api/v2/search/export?filter[type]=ticket&query={open_q}"),
        format!("/api/v2/search/export?filter[type]=ticket&page[size]=1001&query={q}"),
    ] {
        let (s, e) = zd.call(M::GET, &bad, None).await;
        assert_eq!(s, 400, "{bad}: {e}");
    }
    // Cursor pages past the 1,000 the offset search allows.
    let mut next = Some(format!(
        "/api/v2/search/export.json?filter[type]=ticket&page[size]=400&query={q}"
    ));
    let mut seen = 0;
    let mut pages = 0;
    while let Some(p) = next.take() {
        let (s, v) = zd.call(M::GET, &p, None).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        seen += v["results"].as_array().unwrap().len();
        if v["meta"]["has_more"] == true {
            let n = v["links"]["next"].as_str().unwrap();
            next = Some(n[n.find("/api/v2").unwrap()..].to_string());
        }
    }
    assert_eq!((seen, pages), (1_000, 3));
    // Its own limit: 100 requests in any minute, then 429 with Retry-After.
    let url = format!(
        "{}/api/v2/search/export?filter[type]=ticket&page[size]=1&query={q}",
        zd.base
    );
    let mut limited = None;
    for _ in 0..100 {
        let r = zd
            .http
            .get(&url)
            .bearer_auth(&zd.token)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = r.headers().get("retry-after").cloned();
            break;
        }
    }
    let retry = limited.expect("a 429 within the minute");
    assert!(retry.to_str().unwrap().parse::<u64>().unwrap() >= 1);
}

/// Bulk jobs as documented: at most 30 queued or running per account (the
/// next is a 429 with Retry-After), looked at together with `show_many`
/// (at most 100 ids; unknown ones are left out).
#[tokio::test]
async fn zendesk_job_limit_and_show_many() {
    use reqwest::Method as M;
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let zd = Zd::new(&sb, "global").await;
    let manager = {
        let mut w = sb.zd("global");
        let m = w.user_by_email("mlee@gitlab.com").unwrap().id;
        for _ in 0..31 {
            w.add_ticket(None, None, "open");
        }
        m
    };
    let mut jobs = Vec::new();
    for t in 1..=30 {
        let (s, j) = zd
            .call(
                M::PUT,
                &format!("/api/v2/tickets/update_many?ids={t}"),
                Some(json!({"ticket": {"assignee_id": manager}})),
            )
            .await;
        assert_eq!(s, 200);
        jobs.push(j["job_status"]["id"].as_str().unwrap().to_string());
    }
    let r = zd
        .http
        .put(format!("{}/api/v2/tickets/update_many?ids=31", zd.base))
        .bearer_auth(&zd.token)
        .json(&json!({"ticket": {"assignee_id": manager}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());

    let ids = format!("{},nope", jobs.join(","));
    let (s, v) = zd
        .call(
            M::GET,
            &format!("/api/v2/job_statuses/show_many?ids={ids}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let st = v["job_statuses"].as_array().unwrap();
    assert_eq!(st.len(), 30, "the unknown id is left out");
    assert!(st.iter().all(|j| j["status"] == "working"));
    let (_, v) = zd
        .call(
            M::GET,
            &format!("/api/v2/job_statuses/show_many.json?ids={ids}"),
            None,
        )
        .await;
    assert!(
        v["job_statuses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["status"] == "completed")
    );
    assert_shape(
        &fixture("zendesk/oas_job_status.response.json")["job_status"],
        &v["job_statuses"][0],
        "job",
    );
    assert_eq!(sb.zd("global").open_tickets_of(manager), 30);
    // Done jobs no longer count: the 31st goes through now.
    let (s, _) = zd
        .call(
            M::PUT,
            "/api/v2/tickets/update_many?ids=31",
            Some(json!({"ticket": {"assignee_id": manager}})),
        )
        .await;
    assert_eq!(s, 200);
    let many: Vec<String> = (0..101).map(|i| format!("job{i}")).collect();
    let (s, e) = zd
        .call(
            M::GET,
            &format!("/api/v2/job_statuses/show_many?ids={}", many.join(",")),
            None,
        )
        .await;
    assert_eq!((s, e["error"].clone()), (400, json!("TooManyValues")));
}

#[tokio::test]
async fn zendesk_tickets_bulk_update_and_jobs() {
    use reqwest::Method as M;
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let zd = Zd::new(&sb, "global").await;
    let (agent, manager, outsider, group) = {
        let mut w = sb.zd("global");
        let g = w.add_group("Support AMER");
        let other = w.add_group("Billing");
        let staff = w.role_by_name("Staff");
        let a = w.add_user("Leaver", "leaver@gitlab.com", "agent", staff);
        let m = w.user_by_email("mlee@gitlab.com").unwrap().id;
        let o = w.add_user("Outsider", "out@gitlab.com", "agent", staff);
        w.join_group(o, other);
        for _ in 0..3 {
            w.add_ticket(Some(a), Some(g), "open");
        }
        w.add_ticket(Some(a), Some(g), "closed");
        (a, m, o, g)
    };
    let (_, related) = zd
        .call(M::GET, &format!("/api/v2/users/{agent}/related"), None)
        .await;
    assert_eq!(related["user_related"]["assigned_tickets"], 4);
    let (_, assigned) = zd
        .call(
            M::GET,
            &format!("/api/v2/users/{agent}/tickets/assigned?page[size]=2"),
            None,
        )
        .await;
    assert_eq!(assigned["meta"]["has_more"], true);
    let (_, search) = zd
        .call(
            M::GET,
            &format!(
                "/api/v2/search?query={}",
                enc(&format!("type:ticket assignee:{agent} status<closed")),
            ),
            None,
        )
        .await;
    assert_eq!(search["count"], 3);
    let (s, _) = zd
        .call(M::GET, "/api/v2/search?query=type%3Aticket&page=11", None)
        .await;
    assert_eq!(s, 422);

    let ids: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
    let (s, e) = zd
        .call(
            M::PUT,
            &format!("/api/v2/tickets/update_many?ids={}", ids.join(",")),
            Some(json!({"ticket": {"assignee_id": manager}})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"], "TooManyValues");

    // Outsider is not in the tickets' group: every item fails; the closed ticket fails too.
    let (_, job) = zd
        .call(
            M::PUT,
            "/api/v2/tickets/update_many.json?ids=1,2,3,4",
            Some(json!({"ticket": {"assignee_id": outsider}})),
        )
        .await;
    assert_eq!(job["job_status"]["status"], "queued");
    let jid = job["job_status"]["id"].as_str().unwrap().to_string();
    let (_, j1) = zd
        .call(M::GET, &format!("/api/v2/job_statuses/{jid}"), None)
        .await;
    assert_eq!(j1["job_status"]["status"], "working");
    let (_, j2) = zd
        .call(M::GET, &format!("/api/v2/job_statuses/{jid}.json"), None)
        .await;
    assert_eq!(j2["job_status"]["status"], "completed");
    let results = j2["job_status"]["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["success"] == false));
    assert!(
        results[0]["details"]
            .as_str()
            .unwrap()
            .contains("Assignee: is not a member of the group")
    );
    assert!(results[3]["details"].as_str().unwrap().contains("closed"));

    // The manager is in the group: succeeds once the job completes.
    let (_, job) = zd
        .call(
            M::PUT,
            "/api/v2/tickets/update_many?ids=1,2,3",
            Some(json!({"ticket": {"assignee_id": manager}})),
        )
        .await;
    let jid = job["job_status"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        sb.zd("global").open_tickets_of(manager),
        0,
        "not applied before completion"
    );
    zd.call(M::GET, &format!("/api/v2/job_statuses/{jid}"), None)
        .await;
    let (_, done) = zd
        .call(M::GET, &format!("/api/v2/job_statuses/{jid}"), None)
        .await;
    assert_shape(
        &fixture("zendesk/oas_job_status.response.json"),
        &done,
        "job",
    );
    assert_eq!(sb.zd("global").open_tickets_of(manager), 3);
    let _ = group;

    // Demoting an agent with open tickets hands them to the acting admin (the trap the bot avoids).
    let t = sb.zd("global").add_ticket(Some(agent), None, "open");
    zd.call(
        M::PUT,
        &format!("/api/v2/users/{agent}"),
        Some(json!({"user": {"role": "end-user"}})),
    )
    .await;
    let admin = sb.zd("global").admin_id;
    assert_eq!(sb.zd("global").tickets[&t].assignee_id, Some(admin));
}

#[tokio::test]
async fn zendesk_auth_errors_and_rate_limit() {
    use reqwest::Method as M;
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let base = format!("http://{}", sb.zendesk["global"].addr);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/oauth/tokens"))
        .json(
            &json!({"grant_type": "client_credentials", "client_id": "nope", "client_secret": "x"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    let r = http
        .get(format!("{base}/api/v2/users/me"))
        .bearer_auth("stale")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Legacy API token (email/token basic auth).
    sb.zd("global")
        .api_tokens
        .insert("admin@gitlab.com".into(), "tok123".into());
    let basic = base64::engine::general_purpose::STANDARD.encode("admin@gitlab.com/token:tok123");
    let r = http
        .get(format!("{base}/api/v2/users/me.json"))
        .header("authorization", format!("Basic {basic}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A read-only client may not write.
    sb.zd("global")
        .oauth_clients
        .insert("ro".into(), ("ro-secret".into(), false));
    let tok: Value = http.post(format!("{base}/oauth/tokens")).json(&json!({"grant_type": "client_credentials", "client_id": "ro", "client_secret": "ro-secret", "scope": "read write"})).send().await.unwrap().json().await.unwrap();
    let r = http
        .put(format!("{base}/api/v2/users/1"))
        .bearer_auth(tok["access_token"].as_str().unwrap())
        .json(&json!({"user": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let zd = Zd::new(&sb, "global").await;
    sb.zd_knobs("global").set_rate_limit(Some(3));
    for _ in 0..3 {
        let r = http
            .get(format!("{base}/api/v2/users/me"))
            .bearer_auth(&zd.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-rate-limit"], "3");
        assert!(r.headers().contains_key("ratelimit-remaining"));
    }
    let r = http
        .get(format!("{base}/api/v2/users/me"))
        .bearer_auth(&zd.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let example = fixture("zendesk/rate_limited_429.headers.json");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        r.text().await.unwrap(),
        example["body_text"].as_str().unwrap()
    );
    let _ = M::GET;
}

/// Sign a JWT the way a service-account client does (RS256 over header.claims).
fn jwt(key_json: &str, claims: Value) -> String {
    let key: Value = serde_json::from_str(key_json).unwrap();
    let pem = key["private_key"].as_str().unwrap();
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(der)
        .unwrap();
    let kp = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).unwrap();
    let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let signed = format!(
        "{}.{}",
        b(br#"{"alg":"RS256","typ":"JWT"}"#),
        b(claims.to_string().as_bytes())
    );
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut sig = vec![0; kp.public_modulus_len()];
    kp.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &rng,
        signed.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{signed}.{}", b(&sig))
}

#[tokio::test]
async fn google_token_exchange_checks_claims() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let key = sb
        .secrets
        .get("GOOGLE_SERVICE_ACCOUNT_KEY")
        .unwrap()
        .expose()
        .to_string();
    let token_uri = format!("http://{}/token", sb.google_addr);
    let http = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp();
    let scope = "https://www.googleapis.com/auth/admin.directory.group.member";
    let exchange = |claims: Value| {
        let assertion = jwt(&key, claims);
        let http = http.clone();
        let uri = token_uri.clone();
        async move {
            let r = http
                .post(uri)
                .form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let iss = access_bot::sandbox::SERVICE_ACCOUNT;
    let (s, t) = exchange(
        json!({"iss": iss, "scope": scope, "aud": token_uri, "iat": now, "exp": now + 3600}),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    assert_shape(&fixture("google/oauth_token_response.json"), &t, "token");
    let (s, e) = exchange(json!({"iss": iss, "scope": scope, "aud": "https://elsewhere/token", "iat": now, "exp": now + 3600})).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
    let (s, _) = exchange(
        json!({"iss": iss, "scope": scope, "aud": token_uri, "iat": now, "exp": now + 7200}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = exchange(json!({"iss": "someone@else", "scope": scope, "aud": token_uri, "iat": now, "exp": now + 3600})).await;
    assert_eq!(s, 400);
    // Delegation not granted for this client: unauthorized_client, as in the fixture.
    let (s, e) = exchange(json!({"iss": iss, "sub": "zendesk-admin@gitlab.com", "scope": scope, "aud": token_uri, "iat": now, "exp": now + 3600})).await;
    assert_eq!(s, 401);
    assert_eq!(
        e,
        fixture("google/oauth_token_error_401_unauthorized_client.json")
    );
    // Granted: works for an admin subject, invalid_grant for an unknown one.
    sb.google
        .lock()
        .service_accounts
        .get_mut(iss)
        .unwrap()
        .delegated_scopes
        .push(scope.into());
    let (s, _) = exchange(json!({"iss": iss, "sub": "zendesk-admin@gitlab.com", "scope": scope, "aud": token_uri, "iat": now, "exp": now + 3600})).await;
    assert_eq!(s, 200);
    let (s, e) = exchange(json!({"iss": iss, "sub": "ghost@gitlab.com", "scope": scope, "aud": token_uri, "iat": now, "exp": now + 3600})).await;
    assert_eq!(
        (s, e["error_description"].as_str()),
        (400, Some("Invalid email or User ID"))
    );
    // A forged signature fails.
    let mut forged = jwt(
        &key,
        json!({"iss": iss, "scope": scope, "aud": token_uri, "iat": now, "exp": now + 3600}),
    );
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let r = http
        .post(&token_uri)
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", forged.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn google_members_idempotency_paging_and_errors() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let key = sb
        .secrets
        .get("GOOGLE_SERVICE_ACCOUNT_KEY")
        .unwrap()
        .expose()
        .to_string();
    let token_uri = format!("http://{}/token", sb.google_addr);
    let now = chrono::Utc::now().timestamp();
    let http = reqwest::Client::new();
    let assertion = jwt(
        &key,
        json!({"iss": access_bot::sandbox::SERVICE_ACCOUNT, "scope": "https://www.googleapis.com/auth/admin.directory.group.member", "aud": token_uri, "iat": now, "exp": now + 3600}),
    );
    let t: Value = http
        .post(&token_uri)
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tok = t["access_token"].as_str().unwrap().to_string();
    let g = "okta-zendeskglobal-users@gitlab.com";
    let base = format!(
        "http://{}/admin/directory/v1/groups/{}",
        sb.google_addr,
        enc(g)
    );
    let call = |m: reqwest::Method, url: String, body: Option<Value>| {
        let http = http.clone();
        let tok = tok.clone();
        async move {
            let mut rb = http.request(m, url).bearer_auth(tok);
            if let Some(b) = body {
                rb = rb.json(&b);
            }
            let r = rb.send().await.unwrap();
            let s = r.status().as_u16();
            let text = r.text().await.unwrap();
            (
                s,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    use reqwest::Method as M;
    let (s, m) = call(
        M::POST,
        format!("{base}/members"),
        Some(json!({"email": "jane.doe@gitlab.com", "role": "MEMBER"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_shape(
        &fixture("google/directory_member_get_response.json"),
        &m,
        "member",
    );
    let (s, e) = call(
        M::POST,
        format!("{base}/members"),
        Some(json!({"email": "jane.doe@gitlab.com", "role": "MEMBER"})),
    )
    .await;
    assert_eq!(s, 409);
    assert_eq!(
        e,
        fixture("google/directory_error_409_member_already_exists.json")
    );
    let (s, _) = call(
        M::GET,
        format!("{base}/members/{}", enc("JANE.DOE@gitlab.com")),
        None,
    )
    .await;
    assert_eq!(s, 200, "emails compare case-insensitively");
    let (s, e) = call(
        M::GET,
        format!("{base}/hasMember/{}", enc("x@other.example")),
        None,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        e,
        fixture("google/directory_error_400_invalid_input_memberkey.json")
    );
    assert_eq!(
        call(
            M::DELETE,
            format!("{base}/members/{}", enc("jane.doe@gitlab.com")),
            None
        )
        .await
        .0,
        204
    );
    let (s, e) = call(
        M::DELETE,
        format!("{base}/members/{}", enc("jane.doe@gitlab.com")),
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        e,
        fixture("google/directory_error_404_member_not_found.json")
    );
    let (s, e) = call(
        M::DELETE,
        format!("{base}/members/{}", enc("x@other.example")),
        None,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        e,
        fixture("google/directory_error_400_missing_required_memberkey.json")
    );
    let (s, e) = call(
        M::GET,
        format!(
            "http://{}/admin/directory/v1/groups/{}/members",
            sb.google_addr,
            enc("nope@gitlab.com")
        ),
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        e,
        fixture("google/directory_error_404_group_not_found.json")
    );

    // Paging with pageToken; empty groups omit `members`.
    let (_, empty) = call(M::GET, format!("{base}/members"), None).await;
    assert!(empty.get("members").is_none());
    for i in 0..5 {
        sb.google.lock().add_member(g, &format!("p{i}@gitlab.com"));
    }
    let (_, p1) = call(M::GET, format!("{base}/members?maxResults=3"), None).await;
    assert_shape(
        &fixture("google/directory_members_list_page1.json"),
        &p1,
        "list",
    );
    let (_, p2) = call(
        M::GET,
        format!(
            "{base}/members?maxResults=3&pageToken={}",
            p1["nextPageToken"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(p2["members"].as_array().unwrap().len(), 2);
    assert!(p2.get("nextPageToken").is_none());

    // Eventual consistency: a fresh membership is invisible to `get` for a moment.
    sb.google.lock().consistency_reads = 2;
    call(
        M::POST,
        format!("{base}/members"),
        Some(json!({"email": "bo.li@gitlab.com", "role": "MEMBER"})),
    )
    .await;
    let url = format!("{base}/members/{}", enc("bo.li@gitlab.com"));
    assert_eq!(call(M::GET, url.clone(), None).await.0, 404);
    assert_eq!(call(M::GET, url.clone(), None).await.0, 404);
    assert_eq!(call(M::GET, url, None).await.0, 200);

    // Quota and backend faults come in Google's shape.
    sb.google_knobs.fail_next("", 1, Failure::Status(503));
    let (s, e) = call(M::GET, format!("{base}/members"), None).await;
    assert_eq!(
        (s, e["error"]["errors"][0]["reason"].as_str()),
        (503, Some("backendError"))
    );
    sb.google_knobs.fail_next("", 1, Failure::Status(403));
    let (s, e) = call(M::GET, format!("{base}/members"), None).await;
    assert_eq!(
        (s, e["error"]["errors"][0]["reason"].as_str()),
        (403, Some("quotaExceeded"))
    );
    sb.google_knobs.set_rate_limit(Some(1));
    call(M::GET, format!("{base}/members"), None).await;
    let (s, e) = call(M::GET, format!("{base}/members"), None).await;
    assert_eq!(
        (s, e["error"]["errors"][0]["reason"].as_str()),
        (403, Some("userRateLimitExceeded"))
    );

    // Without a Groups admin role: forbidden.
    sb.google
        .lock()
        .service_accounts
        .get_mut(access_bot::sandbox::SERVICE_ACCOUNT)
        .unwrap()
        .groups_admin = false;
    sb.google_knobs.set_rate_limit(None);
    let (s, e) = call(M::GET, format!("{base}/members"), None).await;
    assert_eq!(
        (s, e["error"]["errors"][0]["reason"].as_str()),
        (403, Some("forbidden"))
    );
}

#[tokio::test]
async fn the_example_seed_applies() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scenario.toml"),
    )
    .unwrap();
    let s = access_bot::sandbox::scenario::Scenario::parse(&text).unwrap();
    let iids = sb.apply(&s).await.unwrap();
    assert_eq!(iids.len(), 2);
    let casey = sb
        .zd("global")
        .user_by_email("casey.quinn@gitlab.com")
        .map(|u| u.id)
        .unwrap();
    assert_eq!(sb.zd("global").open_tickets_of(casey), 12);
    assert!(sb.google_member(
        "okta-zendeskglobal-users@gitlab.com",
        "casey.quinn@gitlab.com"
    ));
    assert!(
        access_bot::sandbox::scenario::Scenario::parse("bogus = 1").is_err(),
        "unknown keys are errors"
    );
}

/// `access-bot sandbox --port 0`: the ports are whatever was free; the
/// process prints them first, one per line. (A random base port in the
/// ephemeral range collided on a busy machine.)
fn spawn_sandbox(port: u16) -> (std::process::Child, std::collections::BTreeMap<String, u16>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_access-bot"))
        .args(["sandbox", "--port", &port.to_string(), "--seed"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scenario.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut ports = std::collections::BTreeMap::new();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = out.lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some((name, addr)) = line.trim().split_once(' ')
            && let Some((_, p)) = addr.rsplit_once(':')
            && let Ok(p) = p.parse::<u16>()
        {
            ports.insert(name.to_string(), p);
        }
        if line.trim().starts_with("slack ") {
            break;
        }
    }
    // Keep draining stdout so that the sandbox never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, ports)
}

#[tokio::test]
async fn access_bot_sandbox_serves_every_api_on_free_ports() {
    let t0 = std::time::Instant::now();
    let (mut child, ports) = spawn_sandbox(0);
    let port = ports["gitlab"];
    assert_ne!(port, 0);
    let http = reqwest::Client::new();
    let mut up = None;
    for _ in 0..500 {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/api/v4/user"))
            .header("PRIVATE-TOKEN", "glpat-sandbox-access-bot")
            .send()
            .await
            && r.status() == 200
        {
            up = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let up = up.expect("the sandbox answered");
    eprintln!("sandbox answered after {up:?} (debug build)");
    let mut issues: Vec<Value> = Vec::new();
    for _ in 0..200 {
        issues = http
            .get(format!(
                "http://127.0.0.1:{port}/api/v4/projects/support%2Faccess-requests/issues"
            ))
            .header("PRIVATE-TOKEN", "glpat-sandbox-access-bot")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if issues.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(issues.len(), 2, "seeded");
    // Google and the Zendesk instances: each answers in its own error shape.
    let g: Value = http
        .get(format!(
            "http://127.0.0.1:{}/admin/directory/v1/groups/x/members",
            ports["google"]
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(g["error"]["code"], 401);
    for p in [ports["zendesk.global"], ports["zendesk.federal"]] {
        let r = http
            .get(format!("http://127.0.0.1:{p}/api/v2/users/me.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn sandbox_port_in_use_is_named() {
    // Hold a port, then ask the sandbox for it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_access-bot"))
        .args(["sandbox", "--port", &port.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "the error names the port: {stderr}"
    );
    drop(held);
}

#[tokio::test]
async fn gitlab_quick_actions_in_notes_run_as_their_author_with_their_rights() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let gl = Gl {
        sb: &sb,
        http: reqwest::Client::new(),
    };
    let iid = sb
        .file_issue("jdoe", "t", &["support::to do"], "- [ ] x\n")
        .await
        .unwrap();
    let note = |user: &str, body: &str| {
        let r = gl
            .http
            .post(format!("{}/{iid}/notes", gl.issues()))
            .header("PRIVATE-TOKEN", sb.token_of(user))
            .form(&[("body", body)]);
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let events = |sb: &Sandbox| {
        let w = sb.gitlab.lock();
        let i = w.issue(PROJECT, iid).unwrap();
        i.label_events
            .iter()
            .map(|e| {
                (
                    w.user(e.user).unwrap().username.clone(),
                    e.label.clone(),
                    e.add,
                )
            })
            .collect::<Vec<_>>()
    };
    let system_notes = |sb: &Sandbox| {
        let w = sb.gitlab.lock();
        w.issue(PROJECT, iid)
            .unwrap()
            .notes
            .iter()
            .filter(|n| n.system)
            .map(|n| (w.user(n.author).unwrap().username.clone(), n.body.clone()))
            .collect::<Vec<_>>()
    };

    // Text and commands: the commands run as the author and leave the text.
    let (s, n) = note(
        "jdoe",
        "Please look\n/label ~\"AR-Approval::Manager Approved\" ~extra\n/assign @mlee\n/close",
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(n["body"], "Please look");
    assert_eq!(sb.comments(iid).last().unwrap().body, "Please look");
    assert_eq!(sb.state(iid), "closed");
    let labels = sb.labels(iid);
    assert!(
        labels.contains(&"AR-Approval::Manager Approved".to_string())
            && labels.contains(&"extra".to_string()),
        "{labels:?}"
    );
    let ev = events(&sb);
    assert!(ev.contains(&("jdoe".into(), "AR-Approval::Manager Approved".into(), true)));
    assert!(ev.contains(&("jdoe".into(), "extra".into(), true)));
    let sys = system_notes(&sb);
    assert!(sys.contains(&("jdoe".into(), "closed".into())), "{sys:?}");
    assert!(
        sys.contains(&("jdoe".into(), "assigned to @mlee".into())),
        "{sys:?}"
    );
    let issue: Value = gl
        .get("access-bot", &format!("{}/{iid}", gl.issues()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(issue["assignees"][0]["username"], "mlee");

    // Only commands: no note (202), the commands ran.
    let before = sb.comments(iid).len();
    let (s, _) = note("jdoe", "/reopen\n/unlabel ~extra").await;
    assert_eq!(s, 202);
    assert_eq!(sb.comments(iid).len(), before);
    assert_eq!(sb.state(iid), "opened");
    assert!(!sb.labels(iid).contains(&"extra".to_string()));
    assert!(events(&sb).contains(&("jdoe".into(), "extra".into(), false)));

    // Stricter than GitLab where its documentation is silent: indented, and
    // inside a code block, a command still runs.
    let (s, n) = note("jdoe", "```\n  /close\n```").await;
    assert_eq!(s, 201);
    assert_eq!(n["body"], "```\n```");
    assert_eq!(sb.state(iid), "closed");
    note("jdoe", "/reopen").await;

    // Without the rights: nothing runs and the text stays as written.
    let bot = sb.gitlab.lock().user_by_name("access-bot").unwrap().id;
    {
        let mut w = sb.gitlab.lock();
        let p = w.projects.iter_mut().find(|p| p.path == PROJECT).unwrap();
        p.label_editors = Some([bot].into_iter().collect());
    }
    let text = "/close\n/label ~x\n/assign @mallory";
    let (s, n) = note("mallory", text).await;
    assert_eq!((s, n["body"].as_str()), (201, Some(text)));
    assert_eq!(sb.state(iid), "opened");
    assert!(!sb.labels(iid).contains(&"x".to_string()));
    // The author may close their own issue without Reporter rights, not label it.
    let (_, n) = note("jdoe", "/label ~x\n/close").await;
    assert_eq!(n["body"], "/label ~x");
    assert_eq!(sb.state(iid), "closed");
    assert!(!sb.labels(iid).contains(&"x".to_string()));
    // Text that merely mentions a command mid-line is not one.
    let (_, n) = note("access-bot", "see /close and `/label ~x`").await;
    assert_eq!(n["body"], "see /close and `/label ~x`");
}

#[tokio::test]
async fn zendesk_scopes_are_enforced_on_every_route_strictly() {
    use reqwest::Method as M;
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let base = format!("http://{}", sb.zendesk["global"].addr);
    let http = reqwest::Client::new();
    let (id, secret) = sb
        .zd("global")
        .oauth_clients
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .unwrap();
    let token = |scope: &str| {
        let r = http.post(format!("{base}/oauth/tokens")).json(&json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret, "scope": scope}));
        async move {
            let r = r.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let (light, agent, group) = {
        let mut w = sb.zd("global");
        let g = w.add_group("Support AMER");
        let a = w.add_user("A", "a@gitlab.com", "agent", None);
        (w.light_agent_role(), a, g)
    };
    let _ = light;
    // (method, path, body, the resource scope that covers it, if any)
    let routes: Vec<(M, String, Option<Value>, Option<&str>)> = vec![
        (M::GET, "/api/v2/users/me.json".into(), None, Some("users")),
        (
            M::GET,
            "/api/v2/users/search.json?query=a".into(),
            None,
            Some("users"),
        ),
        (
            M::GET,
            format!("/api/v2/users/{agent}.json"),
            None,
            Some("users"),
        ),
        (
            M::GET,
            "/api/v2/users.json?role[]=agent".into(),
            None,
            Some("users"),
        ),
        (
            M::PUT,
            format!("/api/v2/users/{agent}.json"),
            Some(json!({"user": {}})),
            Some("users"),
        ),
        (
            M::POST,
            "/api/v2/users/create_or_update.json".into(),
            Some(json!({"user": {"name": "B", "email": "b@gitlab.com"}})),
            Some("users"),
        ),
        (
            M::PUT,
            format!("/api/v2/users/{agent}/tags.json"),
            Some(json!({"tags": ["t"]})),
            Some("users"),
        ),
        (
            M::GET,
            format!("/api/v2/users/{agent}/tickets/assigned.json"),
            None,
            Some("tickets"),
        ),
        (
            M::PUT,
            "/api/v2/tickets/update_many.json?ids=1".into(),
            Some(json!({"ticket": {"assignee_id": agent}})),
            Some("tickets"),
        ),
        (
            M::GET,
            format!("/api/v2/users/{agent}/group_memberships.json"),
            None,
            None,
        ),
        (M::GET, "/api/v2/groups.json".into(), None, None),
        (M::GET, "/api/v2/custom_roles.json".into(), None, None),
        (M::GET, "/api/v2/user_fields.json".into(), None, None),
        (
            M::POST,
            "/api/v2/group_memberships.json".into(),
            Some(json!({"group_membership": {"user_id": agent, "group_id": group}})),
            None,
        ),
    ];
    let call = |m: M, path: String, body: Option<Value>, tok: String| {
        let mut rb = http.request(m, format!("{base}{path}")).bearer_auth(tok);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        async move { rb.send().await.unwrap().status().as_u16() }
    };
    for (m, path, body, resource) in routes {
        let write = m != M::GET;
        let level = if write { "write" } else { "read" };
        let other = if write { "read" } else { "write" };
        let mut granted = vec![level.to_string()];
        let mut refused = vec![
            other.to_string(),
            "impersonate organizations hc".to_string(),
        ];
        match resource {
            Some(r) => {
                granted.push(format!("{r}:{level}"));
                granted.push(r.to_string());
                refused.push(format!("{r}:{other}"));
                let unrelated = if r == "users" { "tickets" } else { "users" };
                refused.push(format!("{unrelated}:{level} {unrelated}"));
            }
            // No documented resource scope: no resource scope stands in.
            None => refused.push(format!("users:{level} tickets:{level} users tickets")),
        }
        for scope in &granted {
            let (s, t) = token(scope).await;
            assert_eq!(s, 200, "{scope}: {t}");
            assert_eq!(t["scope"], scope.as_str());
            let status = call(
                m.clone(),
                path.clone(),
                body.clone(),
                t["access_token"].as_str().unwrap().into(),
            )
            .await;
            assert_ne!(status, 403, "{m} {path} with `{scope}`");
            assert_ne!(status, 401);
        }
        for scope in &refused {
            let (_, t) = token(scope).await;
            let status = call(
                m.clone(),
                path.clone(),
                body.clone(),
                t["access_token"].as_str().unwrap().into(),
            )
            .await;
            assert_eq!(status, 403, "{m} {path} with `{scope}`");
        }
    }
    // Scopes Zendesk does not document are refused at the token.
    for bad in ["groups:write", "users:admin", "everything"] {
        let (s, t) = token(&format!("read {bad}")).await;
        assert_eq!(
            (s, t["error"].as_str()),
            (400, Some("invalid_scope")),
            "{bad}"
        );
    }
    // A client's allowed scopes (Admin Center) bound what it may request.
    sb.zd("global")
        .allowed_scopes
        .insert(id.clone(), vec!["read".into(), "users:write".into()]);
    assert_eq!(token("read users:write").await.0, 200);
    let (s, t) = token("read write").await;
    assert_eq!((s, t["error"].as_str()), (400, Some("invalid_scope")));
}

#[tokio::test]
async fn google_scopes_per_method_and_error_shapes_as_documented() {
    let sb = Sandbox::start(Ports::default()).await.unwrap();
    let key = sb
        .secrets
        .get("GOOGLE_SERVICE_ACCOUNT_KEY")
        .unwrap()
        .expose()
        .to_string();
    let token_uri = format!("http://{}/token", sb.google_addr);
    let http = reqwest::Client::new();
    let token = |scope: &str| {
        let now = chrono::Utc::now().timestamp();
        let assertion = jwt(
            &key,
            json!({"iss": access_bot::sandbox::SERVICE_ACCOUNT, "scope": scope, "aud": token_uri, "iat": now, "exp": now + 3600}),
        );
        let r = http.post(&token_uri).form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ]);
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let members = format!(
        "http://{}/admin/directory/v1/groups/{}/members",
        sb.google_addr,
        enc("okta-zendeskglobal-users@gitlab.com")
    );
    let call = |m: reqwest::Method, url: String, tok: String| {
        let mut rb = http.request(m.clone(), url).bearer_auth(tok);
        if m == reqwest::Method::POST {
            rb = rb.json(&json!({"email": "jane.doe@gitlab.com", "role": "MEMBER"}));
        }
        async move {
            let r = rb.send().await.unwrap();
            let s = r.status().as_u16();
            let text = r.text().await.unwrap();
            (
                s,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let auth = "https://www.googleapis.com/auth/admin.directory.";
    let member = format!("{members}/{}", enc("jane.doe@gitlab.com"));
    use reqwest::Method as M;
    // Reads accept the read-only variants; insert and delete do not.
    for read_only in ["group.member.readonly", "group.readonly"] {
        let (s, t) = token(&format!("{auth}{read_only}")).await;
        assert_eq!(s, 200, "{t}");
        let tok = t["access_token"].as_str().unwrap().to_string();
        assert_eq!(call(M::GET, members.clone(), tok.clone()).await.0, 200);
        for m in [M::POST, M::DELETE] {
            let url = if m == M::POST {
                members.clone()
            } else {
                member.clone()
            };
            let (s, e) = call(m.clone(), url, tok.clone()).await;
            assert_eq!(
                (s, e["error"]["errors"][0]["reason"].as_str()),
                (403, Some("insufficientPermissions")),
                "{m} with {read_only}"
            );
        }
    }
    for write in ["group.member", "group"] {
        let (_, t) = token(&format!("{auth}{write}")).await;
        let tok = t["access_token"].as_str().unwrap().to_string();
        assert_eq!(
            call(M::POST, members.clone(), tok.clone()).await.0,
            200,
            "{write}"
        );
        assert_eq!(
            call(M::DELETE, member.clone(), tok.clone()).await.0,
            204,
            "{write}"
        );
    }
    // A scope that is not Google's is refused at the token endpoint.
    let (s, e) = token("admin.directory.group.member").await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_scope")));
    // A revoked token: 401 in Google's envelope.
    let (_, t) = token(&format!("{auth}group.member")).await;
    let tok = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(call(M::GET, members.clone(), tok.clone()).await.0, 200);
    sb.google.lock().revoke_tokens();
    let (s, e) = call(M::GET, members.clone(), tok).await;
    assert_eq!(s, 401);
    assert_eq!(e["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(e["error"]["errors"][0]["reason"], "authError");
    // Quota and backend faults exactly as the public examples.
    let (_, t) = token(&format!("{auth}group.member")).await;
    let tok = t["access_token"].as_str().unwrap().to_string();
    sb.google_knobs
        .fail_next("GET /admin", 1, Failure::Status(403));
    assert_eq!(
        call(M::GET, members.clone(), tok.clone()).await,
        (
            403,
            fixture("google/directory_error_403_quota_exceeded.json")
        )
    );
    sb.google_knobs
        .fail_next("GET /admin", 1, Failure::Status(503));
    assert_eq!(
        call(M::GET, members.clone(), tok).await,
        (
            503,
            fixture("google/directory_error_503_backend_error.json")
        )
    );
}
