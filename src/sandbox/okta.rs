//! A fake of an Okta org: the org authorization server's token endpoint
//! (client credentials with a private-key JWT: signature, claims, replay and
//! scopes checked), users by id or login, groups, and group membership, with
//! Okta's error shape (`errorCode`, `errorSummary`, `errorLink`, `errorId`,
//! `errorCauses`), pages by `limit` and `after` with `Link` headers, and the
//! rate-limit headers on every API answer (429 E0000047 past the limit).
//!
//! Where Okta's documentation leaves a case open, the fake takes the stricter
//! reading: a `limit` out of range is refused (not capped), an unknown cursor
//! is refused, removing a non-member is a 404, and an OAuth token carries
//! only the scopes it was granted, checked per route.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, KeyPair as _};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use serde_json::{Value, json};

pub const GROUPS_READ: &str = "okta.groups.read";
pub const GROUPS_MANAGE: &str = "okta.groups.manage";
pub const USERS_READ: &str = "okta.users.read";
pub const USERS_MANAGE: &str = "okta.users.manage";

/// The largest `limit` the member listing takes.
pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Clone)]
pub struct OktaUser {
    pub id: String,
    pub login: String,
    pub status: String,
}

#[derive(Debug, Clone)]
pub struct OktaGroup {
    pub id: String,
    pub name: String,
    /// `OKTA_GROUP` (memberships editable) or `APP_GROUP` (imported; not editable).
    pub kind: String,
    /// Member user ids.
    pub members: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct ServiceApp {
    pub client_id: String,
    /// RSA public key (PKCS#1 DER) that verifies its assertions.
    pub public_key: Vec<u8>,
    /// Scopes an admin granted to the app.
    pub granted: Vec<String>,
}

#[derive(Debug, Clone)]
struct Token {
    token: String,
    scopes: Vec<String>,
    expires: chrono::DateTime<chrono::Utc>,
}

/// The org-wide rate limit: a fixed window.
#[derive(Debug, Clone)]
pub struct RateWindow {
    pub limit: u32,
    pub window_secs: i64,
    used: u32,
    /// Epoch seconds when the window resets.
    reset: i64,
}

#[derive(Debug)]
pub struct OktaWorld {
    /// `http://127.0.0.1:port`, for `Link` headers and the token audience.
    pub org_url: String,
    /// API tokens (SSWS); they act as a super admin.
    pub api_tokens: BTreeSet<String>,
    pub service_apps: BTreeMap<String, ServiceApp>,
    pub users: BTreeMap<String, OktaUser>,
    pub groups: BTreeMap<String, OktaGroup>,
    pub rate: RateWindow,
    /// Answers 429 given.
    pub limited: u64,
    tokens: Vec<Token>,
    used_jti: BTreeSet<String>,
    next: u64,
}

impl Default for OktaWorld {
    fn default() -> Self {
        OktaWorld {
            org_url: String::new(),
            api_tokens: BTreeSet::new(),
            service_apps: BTreeMap::new(),
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            rate: RateWindow {
                limit: 600,
                window_secs: 60,
                used: 0,
                reset: 0,
            },
            limited: 0,
            tokens: Vec::new(),
            used_jti: BTreeSet::new(),
            next: 0,
        }
    }
}

/// An Okta-looking id: a prefix (`00u` user, `00g` group, `0oa` app) and 17 more.
fn okta_id(prefix: &str, n: u64) -> String {
    format!("{prefix}{:0>17}", format!("sbx{n}"))
}

impl OktaWorld {
    fn bump(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// A user (ACTIVE) with this login; returns its id.
    pub fn add_user(&mut self, login: &str) -> String {
        if let Some(u) = self.user(login) {
            return u.id.clone();
        }
        let n = self.bump();
        let id = okta_id("00u", n);
        self.users.insert(
            id.clone(),
            OktaUser {
                id: id.clone(),
                login: login.to_ascii_lowercase(),
                status: "ACTIVE".into(),
            },
        );
        id
    }

    /// By id or login (case-insensitive, as Okta's logins).
    pub fn user(&self, key: &str) -> Option<&OktaUser> {
        self.users.get(key).or_else(|| {
            self.users
                .values()
                .find(|u| u.login.eq_ignore_ascii_case(key))
        })
    }

    /// An `OKTA_GROUP` with this name; returns its id.
    pub fn add_group(&mut self, name: &str) -> String {
        self.add_group_of_kind(name, "OKTA_GROUP")
    }

    pub fn add_group_of_kind(&mut self, name: &str, kind: &str) -> String {
        if let Some(g) = self.group_by_name(name) {
            return g.id.clone();
        }
        let n = self.bump();
        let id = okta_id("00g", n);
        self.groups.insert(
            id.clone(),
            OktaGroup {
                id: id.clone(),
                name: name.to_string(),
                kind: kind.to_string(),
                members: BTreeSet::new(),
            },
        );
        id
    }

    pub fn group_by_name(&self, name: &str) -> Option<&OktaGroup> {
        self.groups.values().find(|g| g.name == name)
    }

    /// Seeding: `login` (made a user if needed) joins the group called `group`.
    pub fn add_member(&mut self, group: &str, login: &str) {
        let uid = self.add_user(login);
        let gid = self.add_group(group);
        if let Some(g) = self.groups.get_mut(&gid) {
            g.members.insert(uid);
        }
    }

    pub fn is_member(&self, group: &str, login: &str) -> bool {
        match (self.group_by_name(group), self.user(login)) {
            (Some(g), Some(u)) => g.members.contains(&u.id),
            _ => false,
        }
    }

    /// Logins of the group's members.
    pub fn members(&self, group: &str) -> Vec<String> {
        self.group_by_name(group)
            .map(|g| {
                g.members
                    .iter()
                    .filter_map(|id| self.users.get(id).map(|u| u.login.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A new API token (acting as a super admin).
    pub fn create_api_token(&mut self) -> String {
        let n = self.bump();
        let t = format!("00sandbox{n}{}", hex::encode(rand::random::<[u8; 12]>()));
        self.api_tokens.insert(t.clone());
        t
    }

    /// An OAuth service app with a fresh RSA key and these scopes granted;
    /// returns its client id and private key (PKCS#8 PEM).
    pub fn create_service_app(&mut self, granted: &[&str]) -> Result<(String, String), String> {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| "RSA key generation failed".to_string())?;
        let pkcs8 = kp
            .as_der()
            .map_err(|_| "PKCS#8 encoding failed".to_string())?;
        let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or(""));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        let n = self.bump();
        let client_id = okta_id("0oa", n);
        self.service_apps.insert(
            client_id.clone(),
            ServiceApp {
                client_id: client_id.clone(),
                public_key: kp.public_key().as_ref().to_vec(),
                granted: granted.iter().map(|s| s.to_string()).collect(),
            },
        );
        Ok((client_id, pem))
    }

    /// Invalidate every access token issued (a revocation).
    pub fn revoke_tokens(&mut self) {
        self.tokens.clear();
    }

    /// Access tokens issued so far and still valid.
    pub fn live_tokens(&self) -> usize {
        let now = chrono::Utc::now();
        self.tokens.iter().filter(|t| t.expires > now).count()
    }

    /// The rate limit: `limit` API requests per window of `window_secs`,
    /// starting afresh now.
    pub fn set_rate_limit(&mut self, limit: u32, window_secs: i64) {
        self.rate = RateWindow {
            limit,
            window_secs,
            used: 0,
            reset: 0,
        };
    }

    /// Count one API request: its rate-limit headers, and whether it is over.
    fn take(&mut self) -> (bool, [(&'static str, String); 3]) {
        let now = chrono::Utc::now().timestamp();
        if now >= self.rate.reset {
            self.rate.used = 0;
            self.rate.reset = now + self.rate.window_secs;
        }
        let over = self.rate.used >= self.rate.limit;
        if over {
            self.limited += 1;
        } else {
            self.rate.used += 1;
        }
        let remaining = self.rate.limit - self.rate.used;
        (
            over,
            [
                ("x-rate-limit-limit", self.rate.limit.to_string()),
                ("x-rate-limit-remaining", remaining.to_string()),
                ("x-rate-limit-reset", self.rate.reset.to_string()),
            ],
        )
    }
}

#[derive(Clone)]
pub struct OktaServer {
    pub world: Arc<Mutex<OktaWorld>>,
}

impl Default for OktaServer {
    fn default() -> Self {
        Self::new()
    }
}

impl OktaServer {
    pub fn new() -> OktaServer {
        OktaServer {
            world: Arc::new(Mutex::new(OktaWorld::default())),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, OktaWorld> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Okta's error body.
pub fn error(status: StatusCode, code: &str, summary: &str, causes: &[&str]) -> Response {
    let id = format!("oae{}", hex::encode(rand::random::<[u8; 8]>()));
    (
        status,
        axum::Json(json!({
            "errorCode": code, "errorSummary": summary, "errorLink": code, "errorId": id,
            "errorCauses": causes.iter().map(|c| json!({"errorSummary": c})).collect::<Vec<_>>(),
        })),
    )
        .into_response()
}

/// The 429 Okta answers past a rate limit (the fault knobs use it too).
pub fn too_many(reset_in_secs: u64) -> Response {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "E0000047",
        "API call exceeded rate limit due to too many requests.",
        &[],
    );
    let reset = chrono::Utc::now().timestamp() + reset_in_secs as i64;
    for (k, v) in [
        ("x-rate-limit-limit", "600".to_string()),
        ("x-rate-limit-remaining", "0".to_string()),
        ("x-rate-limit-reset", reset.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

fn not_found(what: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "E0000007",
        &format!("Not found: Resource not found: {what}"),
        &[],
    )
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

pub fn router(server: OktaServer) -> Router {
    let api = Router::new()
        .route("/api/v1/users/{user}", get(get_user))
        .route("/api/v1/users/{user}/groups", get(user_groups))
        .route("/api/v1/groups", get(list_groups))
        .route("/api/v1/groups/{group}", get(get_group))
        .route("/api/v1/groups/{group}/users", get(list_members))
        .route(
            "/api/v1/groups/{group}/users/{user}",
            put(assign).delete(unassign),
        )
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            rate_limit,
        ));
    Router::new()
        .route("/oauth2/v1/token", post(token))
        .merge(api)
        .fallback(|| async { not_found("the endpoint") })
        .with_state(server)
}

/// Every API answer carries the rate-limit headers; past the limit, 429.
async fn rate_limit(State(s): State<OktaServer>, req: Request, next: Next) -> Response {
    let (over, headers) = s.lock().take();
    let mut r = if over {
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "E0000047",
            "API call exceeded rate limit due to too many requests.",
            &[],
        )
    } else {
        next.run(req).await
    };
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

async fn token(State(s): State<OktaServer>, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "The authorization grant type is not supported by the authorization server.",
        );
    }
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The client_assertion_type is missing or not supported.",
        );
    }
    let bad = |d: &str| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", d);
    let Some(jwt) = form.get("client_assertion") else {
        return bad("client_assertion is required.");
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts.as_slice() else {
        return bad("The client_assertion token is malformed.");
    };
    let (Some(header), Some(claims), Some(sig)) = (b64(h), b64(c), b64(sig)) else {
        return bad("The client_assertion token is malformed.");
    };
    let (Ok(header), Ok(claims)) = (
        serde_json::from_slice::<Value>(&header),
        serde_json::from_slice::<Value>(&claims),
    ) else {
        return bad("The client_assertion token is malformed.");
    };
    if header["alg"] != "RS256" {
        return bad("The client_assertion token has an unsupported algorithm.");
    }
    let mut w = s.lock();
    let iss = claims["iss"].as_str().unwrap_or("");
    let Some(app) = w.service_apps.get(iss).cloned() else {
        return bad("The client_id is not valid.");
    };
    if claims["sub"].as_str() != Some(iss) {
        return bad("The client_assertion sub claim must be the client_id.");
    }
    let key =
        signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &app.public_key);
    if key.verify(format!("{h}.{c}").as_bytes(), &sig).is_err() {
        return bad("The client_assertion signature is invalid.");
    }
    let audience = format!("{}/oauth2/v1/token", w.org_url);
    if claims["aud"].as_str() != Some(audience.as_str()) {
        return bad("The audience claim for client_assertion must be the endpoint invoked.");
    }
    let now = chrono::Utc::now().timestamp();
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap_or(0),
        claims["exp"].as_i64().unwrap_or(0),
    );
    if exp <= now || exp - iat > 3600 || iat > now + 60 {
        return bad("The client_assertion token is expired or its lifetime is too long.");
    }
    let Some(jti) = claims["jti"].as_str() else {
        return bad("The client_assertion token must have a jti claim.");
    };
    if !w.used_jti.insert(jti.to_string()) {
        return bad("The client_assertion token has already been used.");
    }
    let scopes: Vec<String> = form
        .get("scope")
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    if scopes.is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "The authorization server resource does not have any configured default scopes, 'scope' must be provided.",
        );
    }
    let refused: Vec<&str> = scopes
        .iter()
        .filter(|s| !app.granted.contains(s))
        .map(String::as_str)
        .collect();
    if !refused.is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!(
                "The following scopes are not allowed: {}",
                refused.join(", ")
            ),
        );
    }
    let n = w.bump();
    let tok = format!("eyJsandbox.{n}.{}", hex::encode(rand::random::<[u8; 12]>()));
    w.tokens.push(Token {
        token: tok.clone(),
        scopes: scopes.clone(),
        expires: chrono::Utc::now() + chrono::Duration::seconds(3600),
    });
    axum::Json(json!({
        "token_type": "Bearer", "expires_in": 3600,
        "access_token": tok, "scope": scopes.join(" "),
    }))
    .into_response()
}

/// Authentication, then the route's scopes (any one of `accepted`) for OAuth
/// tokens. API tokens act as a super admin.
fn auth(w: &OktaWorld, headers: &HeaderMap, accepted: &[&str]) -> Result<(), Response> {
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let invalid = || {
        error(
            StatusCode::UNAUTHORIZED,
            "E0000011",
            "Invalid token provided",
            &[],
        )
    };
    if let Some(t) = value.strip_prefix("SSWS ") {
        return if w.api_tokens.contains(t) {
            Ok(())
        } else {
            Err(invalid())
        };
    }
    let Some(t) = value.strip_prefix("Bearer ") else {
        return Err(invalid());
    };
    let now = chrono::Utc::now();
    let Some(tok) = w.tokens.iter().find(|x| x.token == t && x.expires > now) else {
        return Err(invalid());
    };
    if !tok.scopes.iter().any(|s| accepted.contains(&s.as_str())) {
        let mut r = error(
            StatusCode::FORBIDDEN,
            "E0000006",
            "You do not have permission to perform the requested action",
            &[],
        );
        if let Ok(v) = HeaderValue::from_str(&format!(
            "Bearer error=\"insufficient_scope\", error_description=\"The access token provided does not contain the required scopes.\", scope=\"{}\"",
            accepted.join(" ")
        )) {
            r.headers_mut().insert("www-authenticate", v);
        }
        return Err(r);
    }
    Ok(())
}

fn user_json(u: &OktaUser) -> Value {
    json!({"id": u.id, "status": u.status, "type": {"id": "oty-default"},
        "profile": {"login": u.login, "email": u.login}})
}

fn group_json(g: &OktaGroup) -> Value {
    json!({"id": g.id, "type": g.kind, "objectClass": ["okta:user_group"],
        "profile": {"name": g.name, "description": ""}})
}

async fn get_user(
    State(s): State<OktaServer>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Response {
    let w = s.lock();
    if let Err(r) = auth(&w, &headers, &[USERS_READ, USERS_MANAGE]) {
        return r;
    }
    match w.user(&user) {
        Some(u) => axum::Json(user_json(u)).into_response(),
        None => not_found(&format!("{user} (User)")),
    }
}

async fn user_groups(
    State(s): State<OktaServer>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Response {
    let w = s.lock();
    if let Err(r) = auth(&w, &headers, &[USERS_READ, USERS_MANAGE]) {
        return r;
    }
    let Some(u) = w.user(&user) else {
        return not_found(&format!("{user} (User)"));
    };
    let groups: Vec<Value> = w
        .groups
        .values()
        .filter(|g| g.members.contains(&u.id))
        .map(group_json)
        .collect();
    axum::Json(groups).into_response()
}

/// `limit` in range, strictly: out of range or not a number is refused.
fn parse_limit(q: &BTreeMap<String, String>, default: u32) -> Result<u32, Response> {
    match q.get("limit") {
        None => Ok(default),
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                "E0000001",
                "Api validation failed: limit",
                &[&format!("limit: must be between 1 and {MAX_LIMIT}")],
            )),
        },
    }
}

async fn list_groups(
    State(s): State<OktaServer>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let w = s.lock();
    if let Err(r) = auth(&w, &headers, &[GROUPS_READ, GROUPS_MANAGE]) {
        return r;
    }
    let limit = match parse_limit(&q, 200) {
        Ok(l) => l,
        Err(r) => return r,
    };
    // Only the search the bot uses: `profile.name eq "NAME"`.
    let name = match q.get("search") {
        None => None,
        Some(expr) => {
            let parsed = expr
                .strip_prefix("profile.name eq \"")
                .and_then(|r| r.strip_suffix('"'))
                .map(|n| n.replace("\\\"", "\""));
            match parsed {
                Some(n) => Some(n),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "E0000031",
                        "Invalid search.",
                        &[&format!("search: {expr:?} is not a supported expression")],
                    );
                }
            }
        }
    };
    let groups: Vec<Value> = w
        .groups
        .values()
        .filter(|g| name.as_ref().is_none_or(|n| &g.name == n))
        .take(limit as usize)
        .map(group_json)
        .collect();
    axum::Json(groups).into_response()
}

async fn get_group(
    State(s): State<OktaServer>,
    Path(group): Path<String>,
    headers: HeaderMap,
) -> Response {
    let w = s.lock();
    if let Err(r) = auth(&w, &headers, &[GROUPS_READ, GROUPS_MANAGE]) {
        return r;
    }
    match w.groups.get(&group) {
        Some(g) => axum::Json(group_json(g)).into_response(),
        None => not_found(&format!("{group} (UserGroup)")),
    }
}

async fn list_members(
    State(s): State<OktaServer>,
    Path(group): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let w = s.lock();
    if let Err(r) = auth(&w, &headers, &[GROUPS_READ, GROUPS_MANAGE]) {
        return r;
    }
    let Some(g) = w.groups.get(&group) else {
        return not_found(&format!("{group} (UserGroup)"));
    };
    let limit = match parse_limit(&q, MAX_LIMIT) {
        Ok(l) => l,
        Err(r) => return r,
    };
    // The cursor is the id of the last user of the previous page.
    let after = q.get("after");
    if let Some(a) = after
        && !a.starts_with("00u")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "E0000001",
            "Api validation failed: after",
            &["after: not a valid cursor"],
        );
    }
    let ids: Vec<&String> = g
        .members
        .iter()
        .filter(|id| after.is_none_or(|a| id.as_str() > a.as_str()))
        .collect();
    let page: Vec<Value> = ids
        .iter()
        .take(limit as usize)
        .filter_map(|id| w.users.get(*id).map(user_json))
        .collect();
    let base = format!("{}/api/v1/groups/{}/users", w.org_url, g.id);
    let mut links = vec![format!("<{base}?limit={limit}>; rel=\"self\"")];
    if ids.len() > limit as usize
        && let Some(last) = ids.get(limit as usize - 1)
    {
        links.push(format!("<{base}?after={last}&limit={limit}>; rel=\"next\""));
    }
    let mut r = axum::Json(page).into_response();
    for l in links {
        if let Ok(v) = HeaderValue::from_str(&l) {
            r.headers_mut().append("link", v);
        }
    }
    r
}

/// The group and user a membership call names, and whether the group's
/// memberships can be changed here.
fn membership<'a>(
    w: &'a OktaWorld,
    group: &str,
    user: &str,
) -> Result<(&'a OktaGroup, &'a OktaUser), Response> {
    let g = w
        .groups
        .get(group)
        .ok_or_else(|| not_found(&format!("{group} (UserGroup)")))?;
    // Memberships are addressed by user id, not login.
    let u = w
        .users
        .get(user)
        .ok_or_else(|| not_found(&format!("{user} (User)")))?;
    if g.kind != "OKTA_GROUP" {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "E0000001",
            "Api validation failed: group",
            &["You can only modify memberships of groups of the OKTA_GROUP type."],
        ));
    }
    Ok((g, u))
}

async fn assign(
    State(s): State<OktaServer>,
    Path((group, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&w, &headers, &[GROUPS_MANAGE]) {
        return r;
    }
    let (gid, uid) = match membership(&w, &group, &user) {
        Ok((g, u)) => (g.id.clone(), u.id.clone()),
        Err(r) => return r,
    };
    // Idempotent: a member already there is a 204 as well.
    if let Some(g) = w.groups.get_mut(&gid) {
        g.members.insert(uid);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn unassign(
    State(s): State<OktaServer>,
    Path((group, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = auth(&w, &headers, &[GROUPS_MANAGE]) {
        return r;
    }
    let (gid, uid) = match membership(&w, &group, &user) {
        Ok((g, u)) => (g.id.clone(), u.id.clone()),
        Err(r) => return r,
    };
    let removed = w
        .groups
        .get_mut(&gid)
        .is_some_and(|g| g.members.remove(&uid));
    if removed {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(&format!("{uid} (GroupMembership)"))
    }
}
