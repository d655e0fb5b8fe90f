//! Per-server fault knobs and measurement: a requests-per-minute limit that
//! answers 429 like the real service, scripted failures (status codes or a
//! dropped connection), added latency, and a request log with per-route counters.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Which real service a server imitates (decides the shape of 429 bodies and headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Gitlab,
    Zendesk,
    Google,
    Okta,
    Other,
}

#[derive(Debug, Clone)]
pub enum Failure {
    /// This status in the service's own shape (`429` with `Retry-After: 1`).
    Status(u16),
    /// A rate limit in the service's own shape, with this `Retry-After` (seconds), or none.
    TooMany { retry_after: Option<u64> },
    /// Send the headers, then break the body: the client sees a dropped connection.
    Drop,
    /// Never answer (until the client gives up): a hung server. Nothing is applied.
    Hang,
    /// Apply the request, then break the answer: the write happened, the client
    /// cannot know (a lost answer).
    ApplyThenDrop,
    /// Apply the request, then never answer: the write happened, the client times out.
    ApplyThenHang,
    /// Answer 200 with a body that is not the JSON the API documents.
    Garbage,
    /// Handle the request at once, then hold its answer this long (a slow
    /// answer: what it says may be out of date when it arrives).
    Delay(Duration),
}

/// How long a hung request is held before the sandbox lets go of it (clients
/// give up long before).
const HANG: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
struct Scripted {
    /// Method and path prefix, e.g. `PUT /api/v2/users`; empty matches everything.
    route: String,
    remaining: u32,
    /// Matching requests to let through before failing.
    skip: u32,
    failure: Failure,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogEntry {
    pub method: String,
    /// Path with ids and emails replaced (`/api/v2/users/:id`).
    pub route: String,
    pub path: String,
    pub status: u16,
    /// How long the sandbox took to answer (the benchmark's floor is made of these).
    pub took: Duration,
    /// When the request arrived: the benchmark's timeline of a round.
    #[serde(skip)]
    pub at: std::time::Instant,
}

#[derive(Debug, Default)]
struct KnobState {
    rpm_limit: Option<u32>,
    window: VecDeque<Instant>,
    scripted: Vec<Scripted>,
    latency: Duration,
    log: Vec<LogEntry>,
    limited: u64,
}

/// Shared handle to one server's knobs and log.
#[derive(Debug, Clone)]
pub struct Knobs {
    flavor: Flavor,
    inner: Arc<Mutex<KnobState>>,
}

impl Knobs {
    pub fn new(flavor: Flavor) -> Knobs {
        Knobs {
            flavor,
            inner: Arc::new(Mutex::new(KnobState::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KnobState> {
        // A panic while holding the lock would be a sandbox bug; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answer 429 past this many requests in any sliding minute.
    pub fn set_rate_limit(&self, per_minute: Option<u32>) {
        let mut k = self.lock();
        k.rpm_limit = per_minute;
        k.window.clear();
    }

    /// The next `count` requests matching `route` (`"PUT /api/v2/users"`, or `""` for any) fail.
    pub fn fail_next(&self, route: &str, count: u32, failure: Failure) {
        self.fail_after(route, 0, count, failure);
    }

    /// Let `skip` matching requests through, then fail the next `count`.
    pub fn fail_after(&self, route: &str, skip: u32, count: u32, failure: Failure) {
        self.lock().scripted.push(Scripted {
            route: route.to_string(),
            remaining: count,
            skip,
            failure,
        });
    }

    /// Drop every scripted failure still pending.
    pub fn clear_faults(&self) {
        self.lock().scripted.clear();
    }

    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    pub fn log(&self) -> Vec<LogEntry> {
        self.lock().log.clone()
    }

    /// The writes this server saw (token requests are none), as `METHOD path`.
    pub fn writes(&self) -> Vec<String> {
        self.lock()
            .log
            .iter()
            .filter(|e| super::crash::is_write_request(&e.method, &e.path))
            .map(|e| format!("{} {}", e.method, e.path))
            .collect()
    }

    pub fn clear_log(&self) {
        let mut k = self.lock();
        k.log.clear();
        k.limited = 0;
    }

    /// Requests per `METHOD route`.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in self.lock().log.iter() {
            *m.entry(format!("{} {}", e.method, e.route)).or_insert(0) += 1;
        }
        m
    }

    pub fn total(&self) -> usize {
        self.lock().log.len()
    }

    /// Number of 429 answers given.
    pub fn rate_limited(&self) -> u64 {
        self.lock().limited
    }

    pub fn count(&self, method: &str, route: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|e| e.method == method && e.route == route)
            .count()
    }
}

/// Replace numeric ids, job ids and emails in a path so that requests to the same route count together.
pub fn route_of(path: &str) -> String {
    path.trim_end_matches(".json")
        .split('/')
        .map(|seg| {
            let decoded = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
            if !seg.is_empty() && seg.chars().all(|c| c.is_ascii_digit()) {
                ":id".to_string()
            } else if decoded.contains('@') {
                ":key".to_string()
            } else if seg.starts_with("V3-") || seg.starts_with("job-") {
                ":job".to_string()
            } else if seg.contains("%2F") {
                ":project".to_string()
            } else {
                seg.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The middleware: latency, rate limit, scripted failure, then the handler; every request is logged.
pub async fn middleware(State(knobs): State<Knobs>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let route = route_of(&path);
    let key = format!("{method} {path}");

    let (latency, decision) = {
        let mut k = knobs.lock();
        let now = Instant::now();
        while k
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            k.window.pop_front();
        }
        let mut decision: Option<Result<Failure, u64>> = None;
        if let Some(limit) = k.rpm_limit {
            if k.window.len() as u32 >= limit {
                let oldest = k.window.front().copied().unwrap_or(now);
                let wait = 60u64
                    .saturating_sub(now.duration_since(oldest).as_secs())
                    .max(1);
                decision = Some(Err(wait));
                k.limited += 1;
            } else {
                k.window.push_back(now);
            }
        }
        if decision.is_none()
            && let Some(s) = k
                .scripted
                .iter_mut()
                .find(|s| s.remaining > 0 && key.starts_with(&s.route))
        {
            if s.skip > 0 {
                s.skip -= 1;
            } else {
                s.remaining -= 1;
                decision = Some(Ok(s.failure.clone()));
            }
        }
        k.scripted.retain(|s| s.remaining > 0);
        (k.latency, decision)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let response = match decision {
        Some(Err(retry_after)) => too_many(knobs.flavor, Some(retry_after)),
        Some(Ok(Failure::Status(429))) => too_many(knobs.flavor, Some(1)),
        Some(Ok(Failure::TooMany { retry_after })) => too_many(knobs.flavor, retry_after),
        Some(Ok(Failure::Status(code))) => server_error(knobs.flavor, code),
        Some(Ok(Failure::Drop)) => dropped(),
        Some(Ok(Failure::Garbage)) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            "{\"users\": [{\"id\": \"not a number\"",
        )
            .into_response(),
        Some(Ok(Failure::Delay(d))) => {
            let (parts, body) = next.run(req).await.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            tokio::time::sleep(d).await;
            Response::from_parts(parts, axum::body::Body::from(bytes))
        }
        Some(Ok(Failure::Hang)) => {
            // Logged now: the request arrived, even though it is never answered.
            knobs.lock().log.push(LogEntry {
                method,
                route,
                path,
                status: 0,
                took: started.elapsed(),
                at: started,
            });
            tokio::time::sleep(HANG).await;
            return dropped();
        }
        Some(Ok(Failure::ApplyThenDrop)) => {
            let applied = next.run(req).await;
            // Read the handler's answer to the end, so that the write is complete.
            let _ = axum::body::to_bytes(applied.into_body(), usize::MAX).await;
            dropped()
        }
        Some(Ok(Failure::ApplyThenHang)) => {
            let applied = next.run(req).await;
            let status = applied.status().as_u16();
            let _ = axum::body::to_bytes(applied.into_body(), usize::MAX).await;
            knobs.lock().log.push(LogEntry {
                method,
                route,
                path,
                status,
                took: started.elapsed(),
                at: started,
            });
            tokio::time::sleep(HANG).await;
            return dropped();
        }
        None => next.run(req).await,
    };
    let mut response = response;
    if knobs.flavor == Flavor::Zendesk {
        let k = knobs.lock();
        if let Some(limit) = k.rpm_limit {
            let remaining = limit.saturating_sub(k.window.len() as u32).to_string();
            let limit = limit.to_string();
            // Both spellings seen in recordings (2023 `rate-limit-*`, 2024 `ratelimit-*`) plus `x-rate-limit`.
            for (name, value) in [
                ("x-rate-limit", &limit),
                ("x-rate-limit-remaining", &remaining),
                ("ratelimit-limit", &limit),
                ("ratelimit-remaining", &remaining),
                ("ratelimit-reset", &"60".to_string()),
            ] {
                if let Ok(v) = HeaderValue::from_str(value) {
                    response.headers_mut().insert(name, v);
                }
            }
        }
    }
    knobs.lock().log.push(LogEntry {
        method,
        route,
        path,
        status: response.status().as_u16(),
        took: started.elapsed(),
        at: started,
    });
    response
}

/// Headers, then a broken body: the client sees the connection reset.
fn dropped() -> Response {
    let body = Body::from_stream(futures_util::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "sandbox: connection dropped",
        ))
    }));
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("content-length", HeaderValue::from_static("1024"));
    r
}

fn too_many(flavor: Flavor, retry_after: Option<u64>) -> Response {
    let mut r = match flavor {
        // GitLab: text/plain "Retry later" (lib/gitlab/throttle.rb), no JSON.
        Flavor::Gitlab => (
            StatusCode::TOO_MANY_REQUESTS,
            [("content-type", "text/plain")],
            "Retry later\n",
        )
            .into_response(),
        // Zendesk: text/plain body, retry-after header (rate_limited_429.headers.json).
        Flavor::Zendesk => (
            StatusCode::TOO_MANY_REQUESTS,
            [("content-type", "text/plain; charset=utf-8")],
            "Number of allowed API requests per minute exceeded",
        )
            .into_response(),
        // Google: rate limiting arrives as 403 userRateLimitExceeded.
        Flavor::Google => crate::sandbox::google::error(
            StatusCode::FORBIDDEN,
            "usageLimits",
            "userRateLimitExceeded",
            "User Rate Limit Exceeded",
        ),
        // Okta: E0000047 with the rate-limit headers (the reset in epoch seconds).
        Flavor::Okta => crate::sandbox::okta::too_many(retry_after.unwrap_or(1)),
        Flavor::Other => (StatusCode::TOO_MANY_REQUESTS, "").into_response(),
    };
    if let Some(ra) = retry_after
        && r.status() == StatusCode::TOO_MANY_REQUESTS
        && let Ok(v) = HeaderValue::from_str(&ra.to_string())
    {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

fn server_error(flavor: Flavor, code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match flavor {
        Flavor::Google if code == 503 => crate::sandbox::google::error(
            status,
            "global",
            "backendError",
            "Service unavailable. Please try again",
        ),
        Flavor::Google if code == 403 => crate::sandbox::google::error(
            status,
            "usageLimits",
            "quotaExceeded",
            "Request rate higher than configured.",
        ),
        Flavor::Gitlab => (
            status,
            axum::Json(serde_json::json!({"message": format!("{code} Internal Server Error")})),
        )
            .into_response(),
        Flavor::Okta => {
            crate::sandbox::okta::error(status, "E0000009", "Internal Server Error", &[])
        }
        _ => (status, "sandbox: scripted failure").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_normalised() {
        assert_eq!(route_of("/api/v2/users/123.json"), "/api/v2/users/:id");
        assert_eq!(
            route_of("/admin/directory/v1/groups/okta%40x.com/members/a%40b.com"),
            "/admin/directory/v1/groups/:key/members/:key"
        );
        assert_eq!(
            route_of("/api/v4/projects/g%2Fp/issues/4/notes"),
            "/api/v4/projects/:project/issues/:id/notes"
        );
    }
}
