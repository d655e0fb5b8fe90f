//! A stateful fake of one Zendesk Support account (shapes checked against the
//! public examples in `tests/fixtures/zendesk`):
//! users, search (offset, count, export), roles, groups and memberships, tags,
//! user fields, tickets, `update_many` with `job_status` and `show_many`,
//! OAuth client credentials and legacy API tokens.
//! Paths are accepted with or without `.json`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct ZdUser {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub role: String,
    pub custom_role_id: Option<u64>,
    pub suspended: bool,
    pub tags: Vec<String>,
    pub user_fields: BTreeMap<String, Value>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub default_group_id: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct CustomRole {
    pub id: u64,
    pub name: String,
    pub role_type: i64,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Membership {
    pub id: u64,
    pub user_id: u64,
    pub group_id: u64,
}

#[derive(Debug, Clone)]
pub struct Ticket {
    pub id: u64,
    pub subject: String,
    pub status: String,
    pub assignee_id: Option<u64>,
    pub group_id: Option<u64>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Job {
    id: String,
    total: usize,
    polls: u32,
    /// No longer queued or running (no longer counts towards the job limit).
    completed: bool,
    results: Vec<Value>,
    /// Applied when the job completes.
    pending: Vec<(u64, Option<u64>, Option<u64>)>,
}

#[derive(Debug, Clone)]
struct IssuedToken {
    token: String,
    expires: DateTime<Utc>,
    /// The scopes granted (`read`, `users:write`, ...).
    scopes: Vec<String>,
}

/// The two wordings of a bulk update's per-ticket failure when the assignee
/// cannot take a ticket of its group (both in Zendesk's documented 422 for the
/// same problem; which one a job result carries is not documented).
pub const ASSIGNEE_NOT_IN_GROUP: &str = "Assignee: is not a member of the group";
pub const ASSIGNEE_INVALID: &str = "Assignee: is invalid";

/// Zendesk's documented resource scopes (`resource:read|write`, or the bare
/// resource for both); `read`, `write` and `impersonate` cover every resource.
const SCOPE_RESOURCES: &[&str] = &[
    "tickets",
    "users",
    "auditlogs",
    "organizations",
    "hc",
    "apps",
    "triggers",
    "automations",
    "targets",
    "webhooks",
    "zis",
    "macros",
    "requests",
    "satisfaction_ratings",
    "dynamic_content",
];

#[derive(Debug)]
pub struct ZendeskWorld {
    pub name: String,
    pub users: BTreeMap<u64, ZdUser>,
    pub custom_roles: Vec<CustomRole>,
    pub groups: Vec<Group>,
    pub memberships: Vec<Membership>,
    pub tickets: BTreeMap<u64, Ticket>,
    pub user_field_keys: Vec<String>,
    /// OAuth clients: id -> (secret, may write).
    pub oauth_clients: BTreeMap<String, (String, bool)>,
    /// Legacy API tokens: email -> token.
    pub api_tokens: BTreeMap<String, String>,
    /// The admin the bot acts as (receives tickets orphaned by a demotion).
    pub admin_id: u64,
    /// Lifetime of issued OAuth tokens.
    pub token_ttl: chrono::Duration,
    /// Polls a job stays in `queued` and then `working` before completing.
    pub job_polls: u32,
    /// The per-ticket failure text of a bulk update whose assignee is not in
    /// the ticket's group (`ASSIGNEE_NOT_IN_GROUP` or `ASSIGNEE_INVALID`).
    pub assignee_error: &'static str,
    /// Scopes an OAuth client may request (Admin Center's "allowed scopes"):
    /// asking for another is a 400 `invalid_scope`. Clients not listed may ask for any.
    pub allowed_scopes: BTreeMap<String, Vec<String>>,
    /// Bulk jobs an account may have queued or running at once; the next one is a 429.
    pub job_limit: usize,
    /// Search exports allowed in any sliding minute (an endpoint limit on top of the account's).
    pub export_rate_limit: usize,
    exports: std::collections::VecDeque<std::time::Instant>,
    tokens: Vec<IssuedToken>,
    jobs: BTreeMap<String, Job>,
    next_id: u64,
}

impl ZendeskWorld {
    pub fn new(name: &str) -> ZendeskWorld {
        let now = Utc::now();
        let mut w = ZendeskWorld {
            name: name.into(),
            users: BTreeMap::new(),
            custom_roles: Vec::new(),
            groups: Vec::new(),
            memberships: Vec::new(),
            tickets: BTreeMap::new(),
            user_field_keys: vec!["support_team".into(), "region".into()],
            oauth_clients: BTreeMap::new(),
            api_tokens: BTreeMap::new(),
            admin_id: 0,
            token_ttl: chrono::Duration::hours(1),
            job_polls: 2,
            assignee_error: ASSIGNEE_NOT_IN_GROUP,
            allowed_scopes: BTreeMap::new(),
            job_limit: 30,
            export_rate_limit: 100,
            exports: std::collections::VecDeque::new(),
            tokens: Vec::new(),
            jobs: BTreeMap::new(),
            next_id: 360_000_000_000,
        };
        // Every Enterprise account has a light-agent role, whatever its name (here localised).
        w.add_custom_role("Agent léger", 1);
        w.add_custom_role("Staff", 0);
        w.admin_id = w.add_user("access-bot admin", "access-bot@gitlab.com", "admin", None);
        let _ = now;
        w
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Invalidate every issued OAuth token (as an expiry or a revocation would).
    pub fn revoke_tokens(&mut self) {
        self.tokens.clear();
    }

    pub fn add_custom_role(&mut self, name: &str, role_type: i64) -> u64 {
        let id = self.id();
        self.custom_roles.push(CustomRole {
            id,
            name: name.into(),
            role_type,
        });
        id
    }

    pub fn add_group(&mut self, name: &str) -> u64 {
        if let Some(g) = self.groups.iter().find(|g| g.name == name) {
            return g.id;
        }
        let id = self.id();
        self.groups.push(Group {
            id,
            name: name.into(),
        });
        id
    }

    pub fn role_by_name(&self, name: &str) -> Option<u64> {
        self.custom_roles
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case(name))
            .map(|r| r.id)
    }

    pub fn light_agent_role(&self) -> Option<u64> {
        self.custom_roles
            .iter()
            .find(|r| r.role_type == 1)
            .map(|r| r.id)
    }

    pub fn add_user(
        &mut self,
        name: &str,
        email: &str,
        role: &str,
        custom_role_id: Option<u64>,
    ) -> u64 {
        let id = self.id();
        let now = Utc::now();
        self.users.insert(
            id,
            ZdUser {
                id,
                name: name.into(),
                email: email.to_ascii_lowercase(),
                role: role.into(),
                custom_role_id,
                suspended: false,
                tags: Vec::new(),
                user_fields: BTreeMap::new(),
                last_login_at: None,
                created_at: now,
                updated_at: now,
                default_group_id: None,
            },
        );
        id
    }

    pub fn user_by_email(&self, email: &str) -> Option<&ZdUser> {
        self.users
            .values()
            .find(|u| u.email.eq_ignore_ascii_case(email))
    }

    pub fn user_mut_by_email(&mut self, email: &str) -> Option<&mut ZdUser> {
        self.users
            .values_mut()
            .find(|u| u.email.eq_ignore_ascii_case(email))
    }

    pub fn join_group(&mut self, user_id: u64, group_id: u64) -> u64 {
        if let Some(m) = self
            .memberships
            .iter()
            .find(|m| m.user_id == user_id && m.group_id == group_id)
        {
            return m.id;
        }
        let id = self.id();
        self.memberships.push(Membership {
            id,
            user_id,
            group_id,
        });
        id
    }

    pub fn groups_of(&self, user_id: u64) -> Vec<String> {
        self.memberships
            .iter()
            .filter(|m| m.user_id == user_id)
            .filter_map(|m| {
                self.groups
                    .iter()
                    .find(|g| g.id == m.group_id)
                    .map(|g| g.name.clone())
            })
            .collect()
    }

    pub fn add_ticket(&mut self, assignee: Option<u64>, group: Option<u64>, status: &str) -> u64 {
        let id = self.tickets.keys().max().copied().unwrap_or(0) + 1;
        self.tickets.insert(
            id,
            Ticket {
                id,
                subject: format!("Ticket {id}"),
                status: status.into(),
                assignee_id: assignee,
                group_id: group,
                updated_at: Utc::now(),
            },
        );
        id
    }

    pub fn open_tickets_of(&self, user_id: u64) -> usize {
        self.tickets
            .values()
            .filter(|t| t.assignee_id == Some(user_id) && t.status != "closed")
            .count()
    }

    fn role_type(&self, u: &ZdUser) -> Option<i64> {
        match u.role.as_str() {
            "end-user" => None,
            "admin" => Some(4),
            _ => u
                .custom_role_id
                .and_then(|id| self.custom_roles.iter().find(|r| r.id == id))
                .map(|r| r.role_type),
        }
    }

    fn user_json(&self, u: &ZdUser) -> Value {
        json!({
            "id": u.id, "url": format!("https://sandbox.zendesk.com/api/v2/users/{}.json", u.id),
            "name": u.name, "email": u.email, "role": u.role,
            "role_type": self.role_type(u), "custom_role_id": u.custom_role_id,
            "suspended": u.suspended, "active": true, "verified": true,
            "tags": u.tags, "user_fields": self.fields_json(u),
            "default_group_id": u.default_group_id,
            "last_login_at": u.last_login_at.map(ts),
            "created_at": ts(u.created_at), "updated_at": ts(u.updated_at),
            "external_id": null, "restricted_agent": u.role != "admin", "ticket_restriction": null,
            "time_zone": "UTC", "locale": "en-US", "moderator": false, "only_private_comments": false,
            "organization_id": null, "phone": null, "photo": null, "shared": false, "shared_agent": false,
            "signature": null, "details": null, "notes": null, "alias": null, "two_factor_auth_enabled": false,
            "iana_time_zone": "Etc/UTC", "shared_phone_number": null, "locale_id": 1, "report_csv": false,
        })
    }

    /// Every defined field appears, unset ones as null (as the API returns them).
    fn fields_json(&self, u: &ZdUser) -> Value {
        let mut m = serde_json::Map::new();
        for k in &self.user_field_keys {
            m.insert(
                k.clone(),
                u.user_fields.get(k).cloned().unwrap_or(Value::Null),
            );
        }
        Value::Object(m)
    }

    fn ticket_json(t: &Ticket) -> Value {
        json!({"id": t.id, "url": format!("https://sandbox.zendesk.com/api/v2/tickets/{}.json", t.id),
               "subject": t.subject, "status": t.status, "assignee_id": t.assignee_id,
               "group_id": t.group_id, "updated_at": ts(t.updated_at), "type": "question", "priority": null})
    }

    /// Demotion to end-user: custom role cleared, groups left, open tickets reassigned to the acting admin.
    fn demote(&mut self, user_id: u64, acting: u64) {
        self.memberships.retain(|m| m.user_id != user_id);
        for t in self.tickets.values_mut() {
            if t.assignee_id == Some(user_id) && t.status != "closed" {
                t.assignee_id = Some(acting);
            }
        }
        if let Some(u) = self.users.get_mut(&user_id) {
            u.custom_role_id = None;
            u.default_group_id = None;
        }
    }
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[derive(Clone)]
pub struct ZendeskServer {
    pub world: Arc<Mutex<ZendeskWorld>>,
}

impl ZendeskServer {
    pub fn new(name: &str) -> ZendeskServer {
        ZendeskServer {
            world: Arc::new(Mutex::new(ZendeskWorld::new(name))),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, ZendeskWorld> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "description": description})),
    )
        .into_response()
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "RecordNotFound", "Not found")
}

fn invalid(field: &str, code: &str, text: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(
            json!({"error": "RecordInvalid", "description": "Record validation errors",
            "details": {field: [{"description": text, "error": code}]}}),
        ),
    )
        .into_response()
}

/// Who is calling: (acting user id, may write).
fn auth(w: &mut ZendeskWorld, headers: &HeaderMap) -> Result<(u64, bool), Response> {
    let h = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(tok) = h.strip_prefix("Bearer ") {
        let now = Utc::now();
        w.tokens.retain(|t| t.expires > now);
        if let Some(t) = w.tokens.iter().find(|t| t.token == tok) {
            let write = t.scopes.iter().any(|s| {
                s == "write" || s.ends_with(":write") || SCOPE_RESOURCES.contains(&s.as_str())
            });
            return Ok((w.admin_id, write));
        }
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The access token provided is expired, revoked, malformed or invalid for other reasons.",
        ));
    }
    if let Some(b) = h.strip_prefix("Basic ")
        && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim())
        && let Ok(s) = String::from_utf8(raw)
        && let Some((user, token)) = s.split_once(':')
        && let Some(email) = user.strip_suffix("/token")
        && w.api_tokens.get(email).is_some_and(|t| t == token)
    {
        return Ok((w.admin_id, true));
    }
    Err((
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "Couldn't authenticate you"})),
    )
        .into_response())
}

fn writer(w: &mut ZendeskWorld, headers: &HeaderMap) -> Result<u64, Response> {
    let (id, write) = auth(w, headers)?;
    if !write {
        return Err(error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "You do not have access to this page. Please contact the account owner of this help desk for further help.",
        ));
    }
    Ok(id)
}

fn strip_json(s: &str) -> &str {
    s.strip_suffix(".json").unwrap_or(s)
}

fn id_param(s: &str) -> Option<u64> {
    strip_json(s).parse().ok()
}

pub fn router(server: ZendeskServer) -> Router {
    Router::new()
        .route("/oauth/tokens", post(oauth_token))
        .route("/api/v2/users/me", get(users_me))
        .route("/api/v2/users/me.json", get(users_me))
        .route("/api/v2/users/search", get(users_search))
        .route("/api/v2/users/search.json", get(users_search))
        .route("/api/v2/users/create_or_update", post(create_or_update))
        .route(
            "/api/v2/users/create_or_update.json",
            post(create_or_update),
        )
        .route("/api/v2/users", get(list_users))
        .route("/api/v2/users.json", get(list_users))
        .route("/api/v2/users/{id}", get(show_user).put(update_user))
        .route(
            "/api/v2/users/{id}/tags",
            get(get_tags)
                .post(set_tags)
                .put(add_tags)
                .delete(remove_tags),
        )
        .route(
            "/api/v2/users/{id}/tags.json",
            get(get_tags)
                .post(set_tags)
                .put(add_tags)
                .delete(remove_tags),
        )
        .route("/api/v2/users/{id}/related", get(related))
        .route("/api/v2/users/{id}/related.json", get(related))
        .route(
            "/api/v2/users/{id}/group_memberships",
            get(user_memberships),
        )
        .route(
            "/api/v2/users/{id}/group_memberships.json",
            get(user_memberships),
        )
        .route(
            "/api/v2/users/{uid}/group_memberships/{id}",
            delete(delete_user_membership),
        )
        .route("/api/v2/users/{id}/tickets/assigned", get(assigned_tickets))
        .route(
            "/api/v2/users/{id}/tickets/assigned.json",
            get(assigned_tickets),
        )
        .route("/api/v2/user_fields", get(user_fields))
        .route("/api/v2/user_fields.json", get(user_fields))
        .route("/api/v2/custom_roles", get(custom_roles))
        .route("/api/v2/custom_roles.json", get(custom_roles))
        .route("/api/v2/groups", get(groups))
        .route("/api/v2/groups.json", get(groups))
        .route("/api/v2/group_memberships", post(create_membership))
        .route("/api/v2/group_memberships.json", post(create_membership))
        .route("/api/v2/group_memberships/{id}", delete(delete_membership))
        .route("/api/v2/search", get(search))
        .route("/api/v2/search.json", get(search))
        .route("/api/v2/search/count", get(search_count))
        .route("/api/v2/search/count.json", get(search_count))
        .route("/api/v2/search/export", get(search_export))
        .route("/api/v2/search/export.json", get(search_export))
        .route("/api/v2/tickets/update_many", put(update_many))
        .route("/api/v2/tickets/update_many.json", put(update_many))
        .route("/api/v2/job_statuses/show_many", get(job_statuses_many))
        .route(
            "/api/v2/job_statuses/show_many.json",
            get(job_statuses_many),
        )
        .route("/api/v2/job_statuses/{id}", get(job_status))
        .fallback(|| async { not_found() })
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            scope_guard,
        ))
        .with_state(server)
}

/// A scope as Zendesk documents them: `read`, `write`, `impersonate`, a
/// resource (both levels), or `resource:read|write`.
fn valid_scope(s: &str) -> bool {
    match s.split_once(':') {
        None => ["read", "write", "impersonate"].contains(&s) || SCOPE_RESOURCES.contains(&s),
        Some((r, level)) => SCOPE_RESOURCES.contains(&r) && (level == "read" || level == "write"),
    }
}

/// The scope a route needs: a resource (`users`, `tickets`), or `None` where
/// no resource scope is documented for it (groups, group memberships, custom
/// roles, user fields, job statuses, search), which only the global `read`
/// or `write` covers. Writes need write, reads need read. Where the
/// documentation is silent this is the strict reading: the narrowest scope
/// that plausibly covers the route, and nothing broader stands in for it
/// except the global one.
pub fn needed_scope(method: &axum::http::Method, path: &str) -> (Option<&'static str>, bool) {
    let write = method != axum::http::Method::GET;
    let rest = path.strip_prefix("/api/v2/").unwrap_or(path);
    let segs: Vec<&str> = rest.split('/').map(strip_json).collect();
    let resource = match segs.as_slice() {
        ["users", _, "group_memberships", ..] => None,
        ["users", _, "tickets", ..] => Some("tickets"),
        ["users", ..] => Some("users"),
        ["tickets", ..] => Some("tickets"),
        _ => None,
    };
    (resource, write)
}

fn covers(scopes: &[String], (resource, write): (Option<&str>, bool)) -> bool {
    let level = if write { "write" } else { "read" };
    scopes
        .iter()
        .any(|s| s == level || resource.is_some_and(|r| *s == format!("{r}:{level}") || s == r))
}

/// Refuses, as Zendesk does, a bearer token whose scopes do not cover the
/// route (403). Requests without a valid token reach the handler, which
/// answers 401; legacy API tokens act with the user's full rights.
async fn scope_guard(
    State(s): State<ZendeskServer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.uri().path().starts_with("/api/v2/") {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(String::from);
        let granted = token.and_then(|tok| {
            let w = s.lock();
            let now = Utc::now();
            w.tokens
                .iter()
                .find(|t| t.token == tok && t.expires > now)
                .map(|t| t.scopes.clone())
        });
        if let Some(scopes) = granted
            && !covers(&scopes, needed_scope(req.method(), req.uri().path()))
        {
            return error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "You do not have access to this page. Please contact the account owner of this help desk for further help.",
            );
        }
    }
    next.run(req).await
}

async fn oauth_token(State(s): State<ZendeskServer>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_request", "error_description": "The request is missing a required parameter."}))).into_response();
    };
    let mut w = s.lock();
    if v["grant_type"] != "client_credentials" {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "unsupported_grant_type", "error_description": "The authorization grant type is not supported by the authorization server."}))).into_response();
    }
    let id = v["client_id"].as_str().unwrap_or("");
    let secret = v["client_secret"].as_str().unwrap_or("");
    let Some((expected, can_write)) = w.oauth_clients.get(id).cloned() else {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client", "error_description": "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method."}))).into_response();
    };
    if expected != secret {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client", "error_description": "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method."}))).into_response();
    }
    let requested: Vec<String> = v["scope"]
        .as_str()
        .unwrap_or("read")
        .split_whitespace()
        .map(String::from)
        .collect();
    let invalid_scope = |d: String| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_scope", "error_description": d})),
        )
            .into_response()
    };
    if let Some(bad) = requested.iter().find(|s| !valid_scope(s)) {
        return invalid_scope(format!("The requested scope is invalid: {bad}"));
    }
    if let Some(allowed) = w.allowed_scopes.get(id)
        && let Some(bad) = requested.iter().find(|s| !allowed.contains(s))
    {
        return invalid_scope(format!(
            "The requested scope is not allowed for this client: {bad}"
        ));
    }
    // A client that may not write is granted the read part of what it asks.
    let mut scopes: Vec<String> = Vec::new();
    for s in requested {
        let granted = if can_write {
            s
        } else if s == "write" || s.ends_with(":write") {
            continue;
        } else if SCOPE_RESOURCES.contains(&s.as_str()) {
            format!("{s}:read")
        } else {
            s
        };
        if !scopes.contains(&granted) {
            scopes.push(granted);
        }
    }
    let scope = scopes.join(" ");
    let ttl = v["expires_in"]
        .as_i64()
        .filter(|e| *e > 300 && *e < 172_800)
        .map(chrono::Duration::seconds)
        .unwrap_or(w.token_ttl)
        .min(w.token_ttl);
    let n = w.id();
    let token = format!("zd-sandbox-{}-{n}", w.name);
    w.tokens.push(IssuedToken {
        token: token.clone(),
        expires: Utc::now() + ttl,
        scopes,
    });
    axum::Json(json!({"access_token": token, "token_type": "bearer", "scope": scope, "expires_in": ttl.num_seconds()})).into_response()
}

async fn users_me(State(s): State<ZendeskServer>, headers: HeaderMap) -> Response {
    let mut w = s.lock();
    match auth(&mut w, &headers) {
        Ok((id, _)) => match w.users.get(&id) {
            Some(u) => axum::Json(json!({"user": w.user_json(u)})).into_response(),
            None => not_found(),
        },
        Err(r) => r,
    }
}

/// Zendesk's search is fuzzy: `email:"x"` matches addresses containing x, so
/// near-misses come back too. Callers must match exactly.
async fn users_search(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    let query = q.iter().find(|(k, _)| k == "query").map(|(_, v)| v.clone());
    let Some(query) = query else {
        // Unknown parameters (e.g. `email=`) are ignored: every user comes back.
        let all: Vec<Value> = w.users.values().map(|u| w.user_json(u)).collect();
        let count = all.len();
        return axum::Json(
            json!({"users": all, "count": count, "next_page": null, "previous_page": null}),
        )
        .into_response();
    };
    let needle = query
        .trim()
        .trim_start_matches("email:")
        .trim_matches('"')
        .to_ascii_lowercase();
    let needle_local = needle.split('@').next().unwrap_or("").to_string();
    let found: Vec<Value> = w
        .users
        .values()
        .filter(|u| {
            let e = u.email.to_ascii_lowercase();
            e.contains(&needle)
                || (!needle_local.is_empty()
                    && e.starts_with(&needle_local)
                    && needle.contains('@'))
        })
        .map(|u| w.user_json(u))
        .collect();
    let count = found.len();
    axum::Json(json!({"users": found, "count": count, "next_page": null, "previous_page": null}))
        .into_response()
}

fn parse_body(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice::<Value>(body).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "Unprocessable Entity", "description": "Invalid JSON"})),
        )
            .into_response()
    })
}

/// Apply role, custom role, suspension, fields and tags from a user payload.
fn apply_user(w: &mut ZendeskWorld, id: u64, u: &Value, acting: u64) -> Result<(), Response> {
    if let Some(role) = u.get("role").and_then(|r| r.as_str()) {
        if !["end-user", "agent", "admin"].contains(&role) {
            return Err(invalid("role", "InvalidValue", "Role is invalid"));
        }
        let was = w.users.get(&id).map(|x| x.role.clone()).unwrap_or_default();
        if role == "end-user" && was != "end-user" {
            w.demote(id, acting);
        }
        if let Some(x) = w.users.get_mut(&id) {
            x.role = role.into();
        }
    }
    if let Some(cr) = u.get("custom_role_id") {
        let role = w.users.get(&id).map(|x| x.role.clone()).unwrap_or_default();
        match cr.as_u64() {
            Some(cr_id) => {
                if !w.custom_roles.iter().any(|r| r.id == cr_id) {
                    return Err(invalid(
                        "custom_role_id",
                        "InvalidValue",
                        "Custom role is invalid",
                    ));
                }
                if role != "agent" {
                    return Err(invalid(
                        "custom_role_id",
                        "InvalidValue",
                        "Only agents can have a custom role",
                    ));
                }
                if let Some(x) = w.users.get_mut(&id) {
                    x.custom_role_id = Some(cr_id);
                }
            }
            None if cr.is_null() => {
                if let Some(x) = w.users.get_mut(&id) {
                    x.custom_role_id = None;
                }
            }
            None => {
                return Err(invalid(
                    "custom_role_id",
                    "InvalidValue",
                    "Custom role is invalid",
                ));
            }
        }
    }
    let keys = w.user_field_keys.clone();
    let Some(x) = w.users.get_mut(&id) else {
        return Err(not_found());
    };
    if let Some(sus) = u.get("suspended").and_then(|v| v.as_bool()) {
        x.suspended = sus;
    }
    if let Some(name) = u.get("name").and_then(|v| v.as_str()) {
        x.name = name.into();
    }
    if let Some(Value::Object(f)) = u.get("user_fields") {
        for (k, v) in f {
            if !keys.contains(k) {
                continue; // unknown keys are ignored by Zendesk
            }
            if v.is_null() {
                x.user_fields.remove(k);
            } else {
                x.user_fields.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(Value::Array(tags)) = u.get("tags") {
        x.tags = tags
            .iter()
            .filter_map(|t| t.as_str().map(String::from))
            .collect();
    }
    x.updated_at = Utc::now();
    Ok(())
}

async fn create_or_update(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    let acting = match writer(&mut w, &headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let v = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let u = &v["user"];
    let Some(email) = u["email"].as_str() else {
        return invalid("email", "BlankValue", "Email: cannot be blank");
    };
    let name = u["name"].as_str().unwrap_or("");
    let (id, created) = match w.user_by_email(email).map(|x| x.id) {
        Some(id) => (id, false),
        None => {
            if name.chars().count() < 1 {
                return invalid(
                    "name",
                    "TooShort",
                    "Name:  is too short (minimum one character)",
                );
            }
            (w.add_user(name, email, "end-user", None), true)
        }
    };
    if let Err(r) = apply_user(&mut w, id, u, acting) {
        if created {
            w.users.remove(&id);
        }
        return r;
    }
    let user = w
        .users
        .get(&id)
        .map(|x| w.user_json(x))
        .unwrap_or(Value::Null);
    let location = format!("https://sandbox.zendesk.com/api/v2/users/{id}.json");
    (
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        [("location", location)],
        axum::Json(json!({"user": user})),
    )
        .into_response()
}

async fn list_users(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    let roles: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "role[]" || k == "role")
        .map(|(_, v)| v.as_str())
        .collect();
    let perm: Option<u64> = q
        .iter()
        .find(|(k, _)| k == "permission_set")
        .and_then(|(_, v)| v.parse().ok());
    let items: Vec<(u64, Value)> = w
        .users
        .values()
        .filter(|u| roles.is_empty() || roles.contains(&u.role.as_str()))
        .filter(|u| perm.is_none_or(|p| u.custom_role_id == Some(p)))
        .map(|u| (u.id, w.user_json(u)))
        .collect();
    cursor_page(items, &q, "users", "/api/v2/users.json")
}

/// Cursor pagination: `page[size]` (max 100), `page[after]`; `meta.has_more`, `links.next`.
fn cursor_page(
    items: Vec<(u64, Value)>,
    q: &[(String, String)],
    key: &str,
    path: &str,
) -> Response {
    let size = q
        .iter()
        .find(|(k, _)| k == "page[size]")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(100);
    if size > 100 {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "InvalidPaginationParameter", "description": "page[size] must be less than or equal to 100"}))).into_response();
    }
    let after: Option<u64> = q
        .iter()
        .find(|(k, _)| k == "page[after]")
        .and_then(|(_, v)| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(v)
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok());
    let rest: Vec<(u64, Value)> = items
        .into_iter()
        .filter(|(id, _)| after.is_none_or(|a| *id > a))
        .collect();
    let has_more = rest.len() > size;
    let page: Vec<(u64, Value)> = rest.into_iter().take(size).collect();
    let cursor = |id: u64| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.to_string());
    let after_cursor = page.last().map(|(id, _)| cursor(*id));
    let before_cursor = page.first().map(|(id, _)| cursor(*id));
    let next = after_cursor.as_ref().filter(|_| has_more).map(|c| {
        format!("https://sandbox.zendesk.com{path}?page%5Bafter%5D={c}&page%5Bsize%5D={size}")
    });
    let values: Vec<Value> = page.into_iter().map(|(_, v)| v).collect();
    axum::Json(json!({
        key: values,
        "meta": {"has_more": has_more, "after_cursor": after_cursor, "before_cursor": before_cursor},
        "links": {"next": next, "prev": null},
    }))
    .into_response()
}

async fn show_user(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    match id_param(&id).and_then(|id| w.users.get(&id)) {
        Some(u) => axum::Json(json!({"user": w.user_json(u)})).into_response(),
        None => not_found(),
    }
}

async fn update_user(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    let acting = match writer(&mut w, &headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(id) = id_param(&id).filter(|id| w.users.contains_key(id)) else {
        return not_found();
    };
    let v = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = apply_user(&mut w, id, &v["user"], acting) {
        return r;
    }
    let user = w
        .users
        .get(&id)
        .map(|x| w.user_json(x))
        .unwrap_or(Value::Null);
    axum::Json(json!({"user": user})).into_response()
}

fn tags_of(w: &ZendeskWorld, id: &str) -> Option<u64> {
    id_param(id).filter(|id| w.users.contains_key(id))
}

async fn get_tags(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    match tags_of(&w, &id).and_then(|id| w.users.get(&id)) {
        Some(u) => axum::Json(json!({"tags": u.tags})).into_response(),
        None => not_found(),
    }
}

async fn tag_op(
    s: ZendeskServer,
    headers: HeaderMap,
    id: String,
    body: Bytes,
    op: fn(&mut Vec<String>, Vec<String>),
) -> Response {
    let mut w = s.lock();
    if let Err(r) = writer(&mut w, &headers) {
        return r;
    }
    let Some(id) = tags_of(&w, &id) else {
        return not_found();
    };
    let v = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let tags: Vec<String> = v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(|s| s.to_ascii_lowercase()))
                .collect()
        })
        .unwrap_or_default();
    let Some(u) = w.users.get_mut(&id) else {
        return not_found();
    };
    op(&mut u.tags, tags);
    u.updated_at = Utc::now();
    axum::Json(json!({"tags": u.tags})).into_response()
}

async fn set_tags(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    tag_op(s, headers, id, body, |have, new| *have = new).await
}

async fn add_tags(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    tag_op(s, headers, id, body, |have, new| {
        for t in new {
            if !have.contains(&t) {
                have.push(t);
            }
        }
    })
    .await
}

async fn remove_tags(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    tag_op(s, headers, id, body, |have, gone| {
        have.retain(|t| !gone.contains(t))
    })
    .await
}

async fn related(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    let Some(id) = tags_of(&w, &id) else {
        return not_found();
    };
    let assigned = w
        .tickets
        .values()
        .filter(|t| t.assignee_id == Some(id))
        .count();
    axum::Json(json!({"user_related": {"assigned_tickets": assigned, "ccd_tickets": 0, "organization_subscriptions": 0, "requested_tickets": 0}})).into_response()
}

fn membership_json(m: &Membership) -> Value {
    json!({"id": m.id, "url": format!("https://sandbox.zendesk.com/api/v2/group_memberships/{}.json", m.id),
           "user_id": m.user_id, "group_id": m.group_id, "default": false,
           "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
}

async fn user_memberships(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    let Some(id) = tags_of(&w, &id) else {
        return not_found();
    };
    let items = w
        .memberships
        .iter()
        .filter(|m| m.user_id == id)
        .map(|m| (m.id, membership_json(m)))
        .collect();
    cursor_page(
        items,
        &q,
        "group_memberships",
        &format!("/api/v2/users/{id}/group_memberships.json"),
    )
}

async fn create_membership(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = writer(&mut w, &headers) {
        return r;
    }
    let v = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (Some(user_id), Some(group_id)) = (
        v["group_membership"]["user_id"].as_u64(),
        v["group_membership"]["group_id"].as_u64(),
    ) else {
        return invalid(
            "group_membership",
            "BlankValue",
            "user_id and group_id are required",
        );
    };
    let Some(u) = w.users.get(&user_id) else {
        return invalid("user", "InvalidValue", "User is invalid");
    };
    if u.role == "end-user" {
        // Only agents can be group members.
        return invalid("user", "InvalidValue", "User is not an agent");
    }
    if !w.groups.iter().any(|g| g.id == group_id) {
        return invalid("group", "InvalidValue", "Group is invalid");
    }
    if w.memberships
        .iter()
        .any(|m| m.user_id == user_id && m.group_id == group_id)
    {
        // Creating a duplicate: the error shape is UNCONFIRMED in the docs; be strict.
        return invalid(
            "user_id",
            "DuplicateValue",
            "User is already a member of this group",
        );
    }
    let id = w.join_group(user_id, group_id);
    let m = w.memberships.iter().find(|m| m.id == id).cloned();
    match m {
        Some(m) => (
            StatusCode::CREATED,
            axum::Json(json!({"group_membership": membership_json(&m)})),
        )
            .into_response(),
        None => not_found(),
    }
}

fn remove_membership(w: &mut ZendeskWorld, id: u64, uid: Option<u64>) -> Response {
    let Some(pos) = w
        .memberships
        .iter()
        .position(|m| m.id == id && uid.is_none_or(|u| u == m.user_id))
    else {
        return not_found();
    };
    let m = w.memberships.remove(pos);
    // Deleting a membership unassigns the user's working tickets in that group.
    for t in w.tickets.values_mut() {
        if t.assignee_id == Some(m.user_id)
            && t.group_id == Some(m.group_id)
            && t.status != "closed"
            && t.status != "solved"
        {
            t.assignee_id = None;
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_membership(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = writer(&mut w, &headers) {
        return r;
    }
    match id_param(&id) {
        Some(id) => remove_membership(&mut w, id, None),
        None => not_found(),
    }
}

async fn delete_user_membership(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Path((uid, id)): Path<(String, String)>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = writer(&mut w, &headers) {
        return r;
    }
    match (id_param(&uid), id_param(&id)) {
        (Some(uid), Some(id)) => remove_membership(&mut w, id, Some(uid)),
        _ => not_found(),
    }
}

async fn assigned_tickets(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    let Some(id) = tags_of(&w, &id) else {
        return not_found();
    };
    // Archived (closed long ago) tickets are excluded; here all tickets are live.
    let items = w
        .tickets
        .values()
        .filter(|t| t.assignee_id == Some(id))
        .map(|t| (t.id, ZendeskWorld::ticket_json(t)))
        .collect();
    cursor_page(
        items,
        &q,
        "tickets",
        &format!("/api/v2/users/{id}/tickets/assigned.json"),
    )
}

async fn user_fields(State(s): State<ZendeskServer>, headers: HeaderMap) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    let fields: Vec<Value> = w
        .user_field_keys
        .iter()
        .enumerate()
        .map(|(i, k)| json!({"id": 7000 + i, "key": k, "type": "text", "title": k, "active": true}))
        .collect();
    let count = fields.len();
    axum::Json(
        json!({"user_fields": fields, "count": count, "next_page": null, "previous_page": null}),
    )
    .into_response()
}

async fn custom_roles(State(s): State<ZendeskServer>, headers: HeaderMap) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    let roles: Vec<Value> = w
        .custom_roles
        .iter()
        .map(|r| {
            let light = r.role_type == 1;
            let members = w
                .users
                .values()
                .filter(|u| u.custom_role_id == Some(r.id))
                .count();
            json!({"id": r.id, "name": r.name, "role_type": r.role_type, "description": "",
                   "team_member_count": members,
                   "configuration": role_configuration(light),
                   "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
        })
        .collect();
    axum::Json(json!({"custom_roles": roles})).into_response()
}

async fn groups(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    let items = w
        .groups
        .iter()
        .map(|g| (g.id, json!({"id": g.id, "name": g.name, "deleted": false, "default": false, "description": ""})))
        .collect();
    cursor_page(items, &q, "groups", "/api/v2/groups.json")
}

/// A ticket search query as far as the sandbox understands one: `type:ticket`,
/// `assignee:ID`, `status<closed`, `updated>DATE` (a day, or an RFC 3339
/// instant). Anything else is refused rather than ignored, so that a query
/// the bot sends is never answered as if it meant something else.
#[derive(Debug, Default)]
struct TicketQuery {
    typed: bool,
    assignee: Option<u64>,
    below_closed: bool,
    updated_after: Option<DateTime<Utc>>,
}

impl TicketQuery {
    fn parse(query: &str) -> Result<TicketQuery, String> {
        let mut q = TicketQuery::default();
        for part in query.split_whitespace() {
            if part == "type:ticket" {
                q.typed = true;
            } else if let Some(a) = part.strip_prefix("assignee:") {
                q.assignee = Some(a.parse().map_err(|_| format!("bad assignee: {a}"))?);
            } else if part == "status<closed" {
                q.below_closed = true;
            } else if let Some(d) = part.strip_prefix("updated>") {
                let t = DateTime::parse_from_rfc3339(d)
                    .map(|t| t.with_timezone(&Utc))
                    .or_else(|_| {
                        chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").map(|d| {
                            // A day compares as the whole day: after its end.
                            (d + chrono::Duration::days(1))
                                .and_hms_opt(0, 0, 0)
                                .unwrap_or_default()
                                .and_utc()
                                - chrono::Duration::seconds(1)
                        })
                    })
                    .map_err(|_| format!("bad date: {d}"))?;
                q.updated_after = Some(t);
            } else {
                return Err(format!("the sandbox does not understand `{part}`"));
            }
        }
        Ok(q)
    }

    fn matches(&self, t: &Ticket) -> bool {
        self.assignee.is_none_or(|a| t.assignee_id == Some(a))
            && (!self.below_closed || t.status != "closed")
            && self.updated_after.is_none_or(|u| t.updated_at > u)
    }
}

fn query_of(q: &[(String, String)]) -> Result<TicketQuery, Response> {
    let query = q
        .iter()
        .find(|(k, _)| k == "query")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    TicketQuery::parse(&query).map_err(|e| error(StatusCode::BAD_REQUEST, "invalid", &e))
}

/// Offset search: 100 per page at most, 1,000 results per query at most
/// (page 11 is 422), `count` the true number of matches.
async fn search(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    let query = match query_of(&q) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let page: usize = q
        .iter()
        .find(|(k, _)| k == "page")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let per_page: usize = q
        .iter()
        .find(|(k, _)| k == "per_page")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(100)
        .clamp(1, 100);
    if (page - 1) * per_page >= 1000 {
        return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({"error": "invalid", "description": "Page number cannot exceed the 1,000th result. Use the export endpoint instead."}))).into_response();
    }
    let matching: Vec<&Ticket> = w.tickets.values().filter(|t| query.matches(t)).collect();
    let count = matching.len();
    let reachable = count.min(1000);
    let slice: Vec<Value> = matching
        .into_iter()
        .take(reachable)
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|t| {
            let mut v = ZendeskWorld::ticket_json(t);
            v["result_type"] = json!("ticket");
            v
        })
        .collect();
    let next = (page * per_page < reachable).then(|| {
        format!(
            "https://sandbox.zendesk.com/api/v2/search.json?page={}&query=...",
            page + 1
        )
    });
    axum::Json(json!({"results": slice, "count": count, "next_page": next, "previous_page": null, "facets": null})).into_response()
}

/// `GET /search/count`: the number of matches, no results.
async fn search_count(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    let query = match query_of(&q) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let count = w.tickets.values().filter(|t| query.matches(t)).count();
    axum::Json(json!({"count": count})).into_response()
}

/// `GET /search/export`: one object type named by `filter[type]` (required;
/// `type:` in the query is an error), cursor pages of `page[size]` up to
/// 1,000, ordered by creation; its own limit of requests per minute (429 with
/// `Retry-After`), which also count towards the account's.
async fn search_export(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    let now = std::time::Instant::now();
    while w
        .exports
        .front()
        .is_some_and(|t| now.duration_since(*t) >= std::time::Duration::from_secs(60))
    {
        w.exports.pop_front();
    }
    if w.exports.len() >= w.export_rate_limit {
        let oldest = w.exports.front().copied().unwrap_or(now);
        let wait = 60u64
            .saturating_sub(now.duration_since(oldest).as_secs())
            .max(1);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("content-type", "text/plain; charset=utf-8".to_string()),
                ("retry-after", wait.to_string()),
            ],
            "Number of allowed search export requests per minute exceeded",
        )
            .into_response();
    }
    w.exports.push_back(now);
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match param("filter[type]").as_deref() {
        Some("ticket") => {}
        Some("user" | "organization" | "group") => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "the sandbox exports tickets only",
            );
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                "filter[type] is required: ticket, organization, user or group",
            );
        }
    }
    let query = match query_of(&q) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if query.typed {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "type is not allowed in the query of an export: use filter[type]",
        );
    }
    let size = match param("page[size]").map(|v| v.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidPaginationParameter",
                "page[size] must be between 1 and 1000",
            );
        }
    };
    let after: Option<u64> = param("page[after]")
        .and_then(|v| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(v)
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok());
    let mut rest = w
        .tickets
        .values()
        .filter(|t| after.is_none_or(|a| t.id > a) && query.matches(t));
    let page: Vec<&Ticket> = rest.by_ref().take(size).collect();
    let has_more = rest.next().is_some();
    let cursor = |id: u64| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.to_string());
    let after_cursor = page.last().map(|t| cursor(t.id));
    let next = after_cursor.as_ref().filter(|_| has_more).map(|c| {
        let qs: Vec<String> = q
            .iter()
            .filter(|(k, _)| k != "page[after]")
            .map(|(k, v)| format!("{}={}", enc_q(k), enc_q(v)))
            .collect();
        format!(
            "https://sandbox.zendesk.com/api/v2/search/export.json?{}&page%5Bafter%5D={c}",
            qs.join("&")
        )
    });
    let results: Vec<Value> = page
        .into_iter()
        .map(|t| {
            let mut v = ZendeskWorld::ticket_json(t);
            v["result_type"] = json!("ticket");
            v
        })
        .collect();
    axum::Json(json!({
        "results": results,
        "facets": null,
        "meta": {"has_more": has_more, "after_cursor": after_cursor, "before_cursor": null},
        "links": {"next": next, "prev": null},
    }))
    .into_response()
}

fn enc_q(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn update_many(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = writer(&mut w, &headers) {
        return r;
    }
    let ids: Vec<u64> = q
        .iter()
        .find(|(k, _)| k == "ids")
        .map(|(_, v)| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_default();
    if ids.len() > 100 {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "TooManyValues", "description": "Too many values specified for parameter 'ids'", "max_count": 100}))).into_response();
    }
    let running = w.jobs.values().filter(|j| !j.completed).count();
    if running >= w.job_limit {
        // The account's job queue is full: come back when some have finished.
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("content-type", "text/plain; charset=utf-8"),
                ("retry-after", "1"),
            ],
            "Too many jobs queued or running for this account",
        )
            .into_response();
    }
    let v = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let t = &v["ticket"];
    let assignee = t["assignee_id"].as_u64();
    let group = t["group_id"].as_u64();
    let mut results = Vec::new();
    let mut pending = Vec::new();
    for id in &ids {
        let Some(ticket) = w.tickets.get(id) else {
            results.push(json!({"id": id, "success": false, "error": "TicketNotFound", "details": "Ticket not found"}));
            continue;
        };
        if ticket.status == "closed" {
            results.push(json!({"id": id, "success": false, "error": "RecordInvalid", "details": "Status: closed prevents ticket update"}));
            continue;
        }
        let target_group = group.or(ticket.group_id);
        if let Some(a) = assignee {
            let is_agent = w
                .users
                .get(&a)
                .is_some_and(|u| u.role != "end-user" && w.role_type(u) != Some(1));
            let in_group = target_group.is_none_or(|g| {
                w.memberships
                    .iter()
                    .any(|m| m.user_id == a && m.group_id == g)
            });
            if !is_agent || !in_group {
                results.push(json!({"id": id, "success": false, "error": "RecordInvalid", "details": w.assignee_error}));
                continue;
            }
        }
        results.push(json!({"id": id, "action": "update", "status": "Updated", "success": true}));
        pending.push((*id, assignee, group));
    }
    let job_id = format!("V3-sandbox{:x}", w.id());
    let job = Job {
        id: job_id.clone(),
        total: ids.len(),
        polls: 0,
        completed: false,
        results,
        pending,
    };
    let json = job_json(&job, "queued");
    w.jobs.insert(job_id, job);
    axum::Json(json!({"job_status": json})).into_response()
}

fn job_json(j: &Job, status: &str) -> Value {
    let done = status == "completed";
    json!({"id": j.id, "url": format!("https://sandbox.zendesk.com/api/v2/job_statuses/{}.json", j.id),
           "total": j.total, "progress": if done { Some(j.total) } else if status == "working" { Some(j.total * 3 / 4) } else { None },
           "status": status, "message": if done { Some(format!("Completed at {}", ts(Utc::now()))) } else { None },
           "results": if done { Value::Array(j.results.clone()) } else { Value::Null }})
}

/// One look at a job: it moves on by one step (queued, working, completed
/// after `job_polls` looks); its changes apply when it completes.
fn look_at_job(w: &mut ZendeskWorld, id: &str) -> Option<Value> {
    let polls_needed = w.job_polls;
    let job = w.jobs.get_mut(id)?;
    job.polls += 1;
    let status = if job.polls >= polls_needed {
        "completed"
    } else if job.polls + 1 >= polls_needed {
        "working"
    } else {
        "queued"
    };
    let json = job_json(job, status);
    if status == "completed" {
        job.completed = true;
        let pending = std::mem::take(&mut job.pending);
        for (tid, assignee, group) in pending {
            if let Some(t) = w.tickets.get_mut(&tid) {
                if assignee.is_some() {
                    t.assignee_id = assignee;
                }
                if group.is_some() {
                    t.group_id = group;
                }
                t.updated_at = Utc::now();
            }
        }
    }
    Some(json)
}

async fn job_status(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    match look_at_job(&mut w, strip_json(&id)) {
        Some(json) => axum::Json(json!({"job_status": json})).into_response(),
        None => not_found(),
    }
}

/// `GET /job_statuses/show_many?ids=a,b`: up to 100 ids (the usual
/// `show_many` limit; the documentation names none, so the stricter
/// reading); unknown ids are left out of the answer.
async fn job_statuses_many(
    State(s): State<ZendeskServer>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&mut w, &headers) {
        return r;
    }
    let ids: Vec<String> = q
        .iter()
        .find(|(k, _)| k == "ids")
        .map(|(_, v)| {
            v.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "ids is required",
        );
    }
    if ids.len() > 100 {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "TooManyValues", "description": "Too many values specified for parameter 'ids'", "max_count": 100}))).into_response();
    }
    let statuses: Vec<Value> = ids
        .iter()
        .filter_map(|id| look_at_job(&mut w, id))
        .collect();
    axum::Json(json!({"job_statuses": statuses})).into_response()
}

/// The permission set of a custom role, with every key the API returns.
fn role_configuration(light: bool) -> Value {
    let edit = !light;
    json!({
        "assign_tickets_to_any_group": false, "chat_access": edit, "end_user_list_access": if light { "none" } else { "full" },
        "end_user_profile_access": "readonly", "explore_access": if light { "none" } else { "edit" },
        "forum_access": "readonly", "forum_access_restricted_content": false, "group_access": edit,
        "light_agent": light, "macro_access": if light { "readonly" } else { "full" },
        "manage_business_rules": false, "manage_contextual_workspaces": false, "manage_dynamic_content": false,
        "manage_extensions_and_channels": false, "manage_facebook": false, "manage_organization_fields": false,
        "manage_ticket_fields": false, "manage_ticket_forms": false, "manage_user_fields": false,
        "moderate_forums": false, "organization_editing": false, "organization_notes_editing": false,
        "report_access": if light { "none" } else { "readonly" }, "side_conversation_create": edit,
        "ticket_access": if light { "within-groups" } else { "all" }, "ticket_comment_access": if light { "private" } else { "public" },
        "ticket_deletion": false, "ticket_editing": edit, "ticket_merge": false, "ticket_tag_editing": edit,
        "twitter_search_access": false, "user_view_access": "readonly", "view_access": "readonly",
        "view_deleted_tickets": false, "voice_access": false, "voice_dashboard_access": false,
    })
}
