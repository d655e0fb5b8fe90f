//! A fake of Google's OAuth token endpoint (JWT bearer grant, signature and
//! claims checked) and the Admin SDK Directory `members` resource, with
//! Google's error envelope (compared with public examples in `tests/fixtures/google`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, KeyPair as _};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};

pub const MEMBER_SCOPE: &str = "https://www.googleapis.com/auth/admin.directory.group.member";
pub const GROUP_SCOPE: &str = "https://www.googleapis.com/auth/admin.directory.group";
const READONLY_SCOPE: &str =
    "https://www.googleapis.com/auth/admin.directory.group.member.readonly";
const GROUP_READONLY_SCOPE: &str = "https://www.googleapis.com/auth/admin.directory.group.readonly";
pub const USER_READONLY_SCOPE: &str =
    "https://www.googleapis.com/auth/admin.directory.user.readonly";
const USER_SCOPE: &str = "https://www.googleapis.com/auth/admin.directory.user";

#[derive(Debug, Clone)]
pub struct ServiceAccount {
    pub email: String,
    pub client_id: String,
    /// RSA public key (PKCS#1 DER) that verifies its JWTs.
    pub public_key: Vec<u8>,
    /// Holds a Groups admin role itself (no delegation needed).
    pub groups_admin: bool,
    /// Scopes a super admin authorised for domain-wide delegation.
    pub delegated_scopes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub email: String,
    pub role: String,
    pub kind: String,
}

#[derive(Debug, Clone)]
struct Token {
    token: String,
    /// The service account, or the delegated admin it acts as.
    identity: String,
    scopes: Vec<String>,
    expires: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Default)]
pub struct GoogleWorld {
    pub domain: String,
    pub token_uri: String,
    pub service_accounts: BTreeMap<String, ServiceAccount>,
    /// Users of the domain, and which of them have group privileges.
    pub users: BTreeSet<String>,
    pub group_admins: BTreeSet<String>,
    /// Group email -> members.
    pub groups: BTreeMap<String, Vec<Member>>,
    /// Eventual consistency: a fresh membership is invisible to `get` for this many reads.
    pub consistency_reads: u32,
    /// The directory's people: user -> manager (the `manager` relation).
    pub managers: BTreeMap<String, String>,
    /// Suspended users (still in the directory, not active).
    pub suspended: BTreeSet<String>,
    /// Alias address -> the user's primary address.
    pub aliases: BTreeMap<String, String>,
    /// Identities (service accounts or delegated admins) whose admin role
    /// may read users; everyone else gets 403 from `users.get`.
    pub user_readers: BTreeSet<String>,
    hidden: BTreeMap<(String, String), u32>,
    tokens: Vec<Token>,
    next: u64,
}

impl GoogleWorld {
    /// Invalidate every access token issued (a revocation, or an expiry
    /// earlier than announced): the Directory API answers 401 to them.
    pub fn revoke_tokens(&mut self) {
        self.tokens.clear();
    }

    /// Access tokens issued so far and still valid.
    pub fn live_tokens(&self) -> usize {
        let now = chrono::Utc::now();
        self.tokens.iter().filter(|t| t.expires > now).count()
    }

    pub fn add_group(&mut self, email: &str) {
        self.groups.entry(email.to_ascii_lowercase()).or_default();
    }

    pub fn members(&self, group: &str) -> Vec<String> {
        self.groups
            .get(&group.to_ascii_lowercase())
            .map(|m| m.iter().map(|m| m.email.clone()).collect())
            .unwrap_or_default()
    }

    pub fn is_member(&self, group: &str, email: &str) -> bool {
        self.groups
            .get(&group.to_ascii_lowercase())
            .is_some_and(|m| m.iter().any(|m| m.email.eq_ignore_ascii_case(email)))
    }

    pub fn add_member(&mut self, group: &str, email: &str) {
        self.next += 1;
        let id = format!("{:021}", self.next);
        let kind = if self.in_domain(email) {
            "USER"
        } else {
            "EXTERNAL"
        }
        .to_string();
        if let Some(g) = self.groups.get_mut(&group.to_ascii_lowercase())
            && !g.iter().any(|m| m.email.eq_ignore_ascii_case(email))
        {
            g.push(Member {
                id,
                email: email.to_string(),
                role: "MEMBER".into(),
                kind,
            });
        }
    }

    pub fn remove_member(&mut self, group: &str, email: &str) {
        if let Some(g) = self.groups.get_mut(&group.to_ascii_lowercase()) {
            g.retain(|m| !m.email.eq_ignore_ascii_case(email));
        }
    }

    /// A user of the domain, optionally with a manager.
    pub fn add_person(&mut self, email: &str, manager: Option<&str>) {
        let email = email.to_ascii_lowercase();
        if let Some(m) = manager {
            self.managers.insert(email.clone(), m.to_ascii_lowercase());
        }
        self.users.insert(email);
    }

    fn in_domain(&self, email: &str) -> bool {
        email
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&self.domain))
    }

    /// Create a service account with a fresh RSA key; returns its key file JSON.
    pub fn create_service_account(
        &mut self,
        email: &str,
        groups_admin: bool,
    ) -> Result<String, String> {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| "RSA key generation failed".to_string())?;
        let pkcs8 = kp
            .as_der()
            .map_err(|_| "PKCS#8 encoding failed".to_string())?;
        let pem_body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in pem_body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or(""));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        self.next += 1;
        let client_id = format!("1{:020}", self.next);
        self.service_accounts.insert(
            email.to_string(),
            ServiceAccount {
                email: email.to_string(),
                client_id: client_id.clone(),
                public_key: kp.public_key().as_ref().to_vec(),
                groups_admin,
                delegated_scopes: Vec::new(),
            },
        );
        Ok(json!({
            "type": "service_account", "project_id": "access-bot-sandbox",
            "private_key_id": format!("sandbox-{}", self.next), "private_key": pem,
            "client_email": email, "client_id": client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
        })
        .to_string())
    }
}

#[derive(Clone)]
pub struct GoogleServer {
    pub world: Arc<Mutex<GoogleWorld>>,
}

impl GoogleServer {
    pub fn new(domain: &str) -> GoogleServer {
        GoogleServer {
            world: Arc::new(Mutex::new(GoogleWorld {
                domain: domain.into(),
                ..Default::default()
            })),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, GoogleWorld> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Google's v1 error envelope.
pub fn error(status: StatusCode, domain: &str, reason: &str, message: &str) -> Response {
    (
        status,
        axum::Json(
            json!({"error": {"code": status.as_u16(), "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}]}}),
        ),
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

pub fn router(server: GoogleServer) -> Router {
    Router::new()
        .route("/token", post(token))
        .route(
            "/admin/directory/v1/groups/{group}/members",
            get(list).post(insert),
        )
        .route(
            "/admin/directory/v1/groups/{group}/members/{member}",
            get(get_member).delete(delete_member),
        )
        .route(
            "/admin/directory/v1/groups/{group}/hasMember/{member}",
            get(has_member),
        )
        .route("/admin/directory/v1/users/{user}", get(get_user))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "global", "notFound", "Not Found") })
        .with_state(server)
}

fn b64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

async fn token(State(s): State<GoogleServer>, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type",
        );
    }
    let Some(jwt) = form.get("assertion") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    let bad = |d: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", d);
    let [h, c, sig] = parts.as_slice() else {
        return bad("Invalid JWT: malformed");
    };
    let (Some(header), Some(claims), Some(sig)) = (b64(h), b64(c), b64(sig)) else {
        return bad("Invalid JWT: malformed");
    };
    let (Ok(header), Ok(claims)) = (
        serde_json::from_slice::<Value>(&header),
        serde_json::from_slice::<Value>(&claims),
    ) else {
        return bad("Invalid JWT: malformed");
    };
    if header["alg"] != "RS256" {
        return bad("Invalid JWT: unsupported algorithm");
    }
    let mut w = s.lock();
    let iss = claims["iss"].as_str().unwrap_or("");
    let Some(sa) = w.service_accounts.get(iss).cloned() else {
        return bad("Invalid JWT: No valid verifier found for issuer.");
    };
    let signed = format!("{h}.{c}");
    let key =
        signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &sa.public_key);
    if key.verify(signed.as_bytes(), &sig).is_err() {
        return bad("Invalid JWT Signature.");
    }
    if claims["aud"].as_str() != Some(w.token_uri.as_str()) {
        return bad("Invalid JWT audience.");
    }
    let now = chrono::Utc::now().timestamp();
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap_or(0),
        claims["exp"].as_i64().unwrap_or(0),
    );
    if exp <= now || exp - iat > 3600 || iat > now + 300 {
        return bad(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    let scopes: Vec<String> = claims["scope"]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect();
    if scopes.is_empty() {
        return bad("Invalid OAuth scope or ID token audience provided.");
    }
    if scopes
        .iter()
        .any(|s| !s.starts_with("https://www.googleapis.com/auth/"))
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        );
    }
    let identity = match claims["sub"].as_str() {
        Some(sub) => {
            // Domain-wide delegation: every scope must be authorised for this client id.
            if !scopes.iter().all(|s| sa.delegated_scopes.contains(s)) {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized_client",
                    "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.",
                );
            }
            if !w.users.contains(&sub.to_ascii_lowercase()) {
                return bad("Invalid email or User ID");
            }
            sub.to_ascii_lowercase()
        }
        None => sa.email.clone(),
    };
    w.next += 1;
    let tok = format!("ya29.sandbox-{}", w.next);
    w.tokens.push(Token {
        token: tok.clone(),
        identity,
        scopes,
        expires: chrono::Utc::now() + chrono::Duration::seconds(3599),
    });
    axum::Json(json!({"access_token": tok, "token_type": "Bearer", "expires_in": 3599}))
        .into_response()
}

enum Access {
    Read,
    Write,
    /// `users.get`: the user scopes, and an admin role that reads users.
    ReadUsers,
}

fn check(w: &GoogleWorld, headers: &HeaderMap, access: Access) -> Result<(), Response> {
    let tok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let now = chrono::Utc::now();
    let Some(t) = w.tokens.iter().find(|t| t.token == tok && t.expires > now) else {
        return Err((
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"code": 401,
                "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
                "errors": [{"message": "Invalid Credentials", "domain": "global", "reason": "authError", "location": "Authorization", "locationType": "header"}],
                "status": "UNAUTHENTICATED"}})),
        )
            .into_response());
    };
    // As documented per method: insert and delete need `group` or
    // `group.member`; get, hasMember and list accept their read-only variants too.
    let ok_scope = t.scopes.iter().any(|s| match access {
        Access::ReadUsers => s == USER_READONLY_SCOPE || s == USER_SCOPE,
        Access::Read => {
            s == MEMBER_SCOPE
                || s == GROUP_SCOPE
                || s == READONLY_SCOPE
                || s == GROUP_READONLY_SCOPE
        }
        Access::Write => s == MEMBER_SCOPE || s == GROUP_SCOPE,
    });
    if !ok_scope {
        return Err(error(
            StatusCode::FORBIDDEN,
            "global",
            "insufficientPermissions",
            "Request had insufficient authentication scopes.",
        ));
    }
    let privileged = match access {
        Access::ReadUsers => w.user_readers.contains(&t.identity),
        Access::Read | Access::Write => {
            w.group_admins.contains(&t.identity)
                || w.service_accounts
                    .get(&t.identity)
                    .is_some_and(|sa| sa.groups_admin)
        }
    };
    if !privileged {
        return Err(error(
            StatusCode::FORBIDDEN,
            "global",
            "forbidden",
            "Not Authorized to access this resource/api",
        ));
    }
    Ok(())
}

fn group_404() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "global",
        "notFound",
        "Resource Not Found: groupKey",
    )
}

fn member_404() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "global",
        "notFound",
        "Resource Not Found: memberKey",
    )
}

fn member_json(m: &Member) -> Value {
    json!({"kind": "admin#directory#member", "etag": format!("\"sandbox-{}\"", m.id), "id": m.id,
           "email": m.email, "role": m.role, "type": m.kind, "status": "ACTIVE", "delivery_settings": "ALL_MAIL"})
}

async fn insert(
    State(s): State<GoogleServer>,
    headers: HeaderMap,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = check(&w, &headers, Access::Write) {
        return r;
    }
    let group = group.to_ascii_lowercase();
    if !w.groups.contains_key(&group) {
        return group_404();
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(email) = v["email"]
        .as_str()
        .filter(|e| !e.is_empty())
        .map(String::from)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "global",
            "required",
            "Missing required field: member",
        );
    };
    if w.is_member(&group, &email) {
        return error(
            StatusCode::CONFLICT,
            "global",
            "duplicate",
            "Member already exists.",
        );
    }
    if w.in_domain(&email) && !w.users.contains(&email.to_ascii_lowercase()) {
        // UNCONFIRMED in the docs: assumed to be 404 memberKey.
        return member_404();
    }
    w.add_member(&group, &email);
    let hide = w.consistency_reads;
    if hide > 0 {
        w.hidden
            .insert((group.clone(), email.to_ascii_lowercase()), hide);
    }
    let m = w.groups[&group]
        .iter()
        .find(|m| m.email.eq_ignore_ascii_case(&email))
        .cloned();
    match m {
        Some(m) => axum::Json(member_json(&m)).into_response(),
        None => member_404(),
    }
}

async fn get_member(
    State(s): State<GoogleServer>,
    headers: HeaderMap,
    Path((group, member)): Path<(String, String)>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = check(&w, &headers, Access::Read) {
        return r;
    }
    let group = group.to_ascii_lowercase();
    let key = (group.clone(), member.to_ascii_lowercase());
    if let Some(n) = w.hidden.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            w.hidden.remove(&key);
        }
        return member_404();
    }
    let Some(g) = w.groups.get(&group) else {
        return group_404();
    };
    match g.iter().find(|m| m.email.eq_ignore_ascii_case(&member)) {
        Some(m) => axum::Json(member_json(m)).into_response(),
        None => member_404(),
    }
}

async fn delete_member(
    State(s): State<GoogleServer>,
    headers: HeaderMap,
    Path((group, member)): Path<(String, String)>,
) -> Response {
    let mut w = s.lock();
    if let Err(r) = check(&w, &headers, Access::Write) {
        return r;
    }
    let group = group.to_ascii_lowercase();
    let in_domain = w.in_domain(&member);
    let Some(g) = w.groups.get_mut(&group) else {
        return group_404();
    };
    match g.iter().position(|m| m.email.eq_ignore_ascii_case(&member)) {
        Some(i) => {
            g.remove(i);
            StatusCode::NO_CONTENT.into_response()
        }
        None if in_domain => member_404(),
        None => error(
            StatusCode::BAD_REQUEST,
            "global",
            "required",
            "Missing required field: memberKey",
        ),
    }
}

async fn list(
    State(s): State<GoogleServer>,
    headers: HeaderMap,
    Path(group): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let w = s.lock();
    if let Err(r) = check(&w, &headers, Access::Read) {
        return r;
    }
    let Some(g) = w.groups.get(&group.to_ascii_lowercase()) else {
        return group_404();
    };
    let max = q
        .iter()
        .find(|(k, _)| k == "maxResults")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(200)
        .clamp(1, 200);
    let start = q
        .iter()
        .find(|(k, _)| k == "pageToken")
        .and_then(|(_, v)| b64(v))
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let page: Vec<Value> = g.iter().skip(start).take(max).map(member_json).collect();
    let mut out = json!({"kind": "admin#directory#members", "etag": "\"sandbox\""});
    if !page.is_empty() {
        out["members"] = Value::Array(page);
    }
    if start + max < g.len() {
        out["nextPageToken"] = json!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode((start + max).to_string())
        );
    }
    axum::Json(out).into_response()
}

async fn has_member(
    State(s): State<GoogleServer>,
    headers: HeaderMap,
    Path((group, member)): Path<(String, String)>,
) -> Response {
    let w = s.lock();
    if let Err(r) = check(&w, &headers, Access::Read) {
        return r;
    }
    if !w.groups.contains_key(&group.to_ascii_lowercase()) {
        return group_404();
    }
    if !w.in_domain(&member) {
        return error(
            StatusCode::BAD_REQUEST,
            "global",
            "invalid",
            "Invalid Input: memberKey",
        );
    }
    axum::Json(json!({"isMember": w.is_member(&group, &member)})).into_response()
}

/// `users.get`: by primary address or alias (answering with the primary).
async fn get_user(
    State(s): State<GoogleServer>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    let w = s.lock();
    if let Err(r) = check(&w, &headers, Access::ReadUsers) {
        return r;
    }
    let key = user.to_ascii_lowercase();
    let primary = w.aliases.get(&key).cloned().unwrap_or(key);
    if !w.users.contains(&primary) {
        return error(
            StatusCode::NOT_FOUND,
            "global",
            "notFound",
            "Resource Not Found: userKey",
        );
    }
    let id = primary
        .bytes()
        .fold(100_000_000_000_000_000_000u128, |h, b| {
            h.wrapping_mul(31).wrapping_add(u128::from(b))
        })
        % 1_000_000_000_000_000_000_000;
    let aliases: Vec<&String> = w
        .aliases
        .iter()
        .filter(|(_, p)| **p == primary)
        .map(|(a, _)| a)
        .collect();
    let mut emails = vec![json!({"address": primary, "primary": true})];
    emails.extend(aliases.iter().map(|a| json!({"address": a})));
    let relations: Vec<Value> = w
        .managers
        .get(&primary)
        .map(|m| vec![json!({"value": m, "type": "manager"})])
        .unwrap_or_default();
    let local = primary.split('@').next().unwrap_or("");
    axum::Json(json!({
        "kind": "admin#directory#user",
        "id": id.to_string(),
        "etag": format!("\"sandbox-{id}\""),
        "primaryEmail": primary,
        "name": {"givenName": local, "familyName": "", "fullName": local},
        "isAdmin": false,
        "isDelegatedAdmin": false,
        "suspended": w.suspended.contains(&primary),
        "archived": false,
        "emails": emails,
        "aliases": aliases,
        "relations": relations,
        "customerId": "C0sandbox",
        "orgUnitPath": "/",
        "isMailboxSetup": true,
    }))
    .into_response()
}
