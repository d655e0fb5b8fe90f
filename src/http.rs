//! What every adapter shares: capped, jittered backoff, `Retry-After`, a
//! client-side request budget so the bot normally never sees a 429, and the
//! `Transport` that runs one call's attempts with them.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use tokio::time::Instant;

/// Retry policy: attempts and the backoff between them.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempts: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Full jitter: a random delay up to min(cap, base * 2^attempt).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(16));
        let max = exp.min(self.cap);
        let ms = max.as_millis().max(1) as u64;
        Duration::from_millis(ms / 2 + rand::random_range(0..=ms / 2))
    }
}

/// `Retry-After` in seconds (the only form these APIs send), capped at 10 minutes.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 600.0)))
}

/// A token bucket (GCRA, the `governor` crate) of the plan's per-minute budget:
/// a burst up to the whole budget goes out at once, then requests refill at the
/// budget's rate. Bursts can outrun a server's sliding minute; the server's
/// `ratelimit-remaining` (see `pause`) and 429s with `Retry-After` hold every
/// caller when that happens, so the bucket only has to be right on average.
#[derive(Debug, Clone)]
pub struct RateBudget {
    limiter: Arc<governor::DefaultDirectRateLimiter>,
    clock: governor::clock::DefaultClock,
    /// Nobody sends before this instant (a 429 or an empty server bucket).
    hold: Arc<Mutex<Option<Instant>>>,
}

impl RateBudget {
    pub fn per_minute(n: u32) -> RateBudget {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let clock = governor::clock::DefaultClock::default();
        RateBudget {
            limiter: Arc::new(governor::RateLimiter::direct_with_clock(
                governor::Quota::per_minute(n).allow_burst(n),
                clock.clone(),
            )),
            clock,
            hold: Arc::new(Mutex::new(None)),
        }
    }

    /// No pacing at all, only the hold after a slow-down answer, which every
    /// caller then waits out.
    pub fn unpaced() -> RateBudget {
        RateBudget::per_minute(u32::MAX)
    }

    /// Wait for this request's token.
    pub async fn acquire(&self) {
        loop {
            let held = *self.hold.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(until) = held
                && until > Instant::now()
            {
                tokio::time::sleep_until(until).await;
                continue;
            }
            match self.limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
                }
            }
        }
    }

    /// After a 429 (or an empty bucket on the server), nobody sends before
    /// `wait` is over.
    pub async fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        if hold.is_none_or(|h| h < until) {
            *hold = Some(until);
        }
    }
}

/// One answer, body read: any status the adapter interprets itself (2xx, and
/// the 4xx it turns into its own typed errors).
#[derive(Debug)]
pub struct Reply {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    /// The body as JSON, `Null` if it is empty or not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Why a call ended without an answer for the adapter. Each adapter turns it
/// into its own error variant, with its own words.
#[derive(Debug)]
pub enum Failure<E> {
    /// The adapter's own hook (a token fetch) failed.
    Api(E),
    /// Still asked to slow down (429) after this many attempts.
    RateLimited { attempts: u32, last: Reply },
    /// Still failing (a 5xx, or another answer the adapter retries) after
    /// this many attempts.
    Server { attempts: u32, last: Reply },
    /// No answer (connection, timeout, body cut short) after this many
    /// attempts; `timed_out` when the last one ran out of time.
    Connection {
        attempts: u32,
        detail: String,
        timed_out: bool,
    },
}

impl<E> Failure<E> {
    /// A token endpoint's failure in words (how many attempts, the last
    /// status or connection error), wrapped by the adapter; the adapter's
    /// own error as it is.
    pub fn token_error(self, wrap: impl FnOnce(String) -> E) -> E {
        let (attempts, what) = match self {
            Failure::Api(e) => return e,
            Failure::RateLimited { attempts, last } | Failure::Server { attempts, last } => {
                (attempts, last.status.to_string())
            }
            Failure::Connection {
                attempts, detail, ..
            } => (attempts, detail),
        };
        wrap(format!(
            "the token endpoint failed {attempts} times: {what}"
        ))
    }
}

/// What the transport does with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The adapter's to interpret.
    Answer,
    /// The server asks to slow down: wait `after` (or the backoff) and hold
    /// every caller of the budget meanwhile.
    SlowDown { after: Option<Duration> },
    /// A server failure: this call retries after the backoff.
    Retry,
}

/// How most APIs say it: 429 with `Retry-After`, 5xx a failure to retry.
pub fn standard_class(reply: &Reply) -> Class {
    if reply.status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Class::SlowDown {
            after: retry_after(&reply.headers),
        }
    } else if reply.status.is_server_error() {
        Class::Retry
    } else {
        Class::Answer
    }
}

/// Longest wait a token endpoint's slow-down is given: every call of the
/// API waits on the token, and an issue held longer than this is better
/// retried on the next cycle.
pub const TOKEN_MAX_WAIT: Duration = Duration::from_secs(60);

/// A token endpoint's class: the API's own, its waits capped at [`TOKEN_MAX_WAIT`].
pub fn token_class(class: Class) -> Class {
    match class {
        Class::SlowDown { after } => Class::SlowDown {
            after: after.map(|a| a.min(TOKEN_MAX_WAIT)),
        },
        other => other,
    }
}

/// What differs per API: credentials and how a server says "slow down".
#[async_trait::async_trait]
pub trait Api: Sync {
    type Error: Send;

    /// The request with its credentials (fetching a token if none is held).
    async fn authorize(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, Self::Error> {
        Ok(rb)
    }

    /// Every 401: the `authorization` the server refused (never sent again).
    async fn refused(&self, _authorization: Option<&reqwest::header::HeaderValue>) {}

    /// After the call's first 401: get a new token. `Ok(false)` when the
    /// credentials cannot be refreshed (a static token), and the 401 is the
    /// adapter's to explain.
    async fn refresh(&self) -> Result<bool, Self::Error> {
        Ok(false)
    }

    /// A wait the answer's own rate-limit headers ask for before anyone
    /// sends again (an empty server bucket), whatever its status.
    fn drained(&self, _headers: &reqwest::header::HeaderMap) -> Option<Duration> {
        None
    }

    /// By default a 429 slows down for its `Retry-After`, a 5xx is retried,
    /// and everything else is the adapter's.
    fn classify(&self, reply: &Reply) -> Class {
        standard_class(reply)
    }

    /// A request of the current call ran out of time: whether the call gives
    /// up now. An API that bounds a call's timeouts across the pages of a
    /// listing counts them here; by default a call has its attempts.
    fn gives_up_after_timeout(&self) -> bool {
        false
    }

    /// Names the API in the transport's log lines.
    fn name(&self) -> String;
}

/// One call's attempts: the budget's token, credentials, send; then an
/// answer that asks to slow down pauses the budget, a server failure or a
/// lost connection is retried with backoff, a 401 refreshes the token once;
/// up to `backoff.attempts`.
#[derive(Debug, Clone)]
pub struct Transport {
    pub backoff: Backoff,
    /// The API's request budget; without one, a slow-down answer holds only
    /// the call that saw it.
    pub budget: Option<RateBudget>,
    /// Set on each request when the client has none of its own.
    pub timeout: Option<Duration>,
    /// Which failures a call is sent again after.
    pub resend: Resend,
}

/// Which failures a call is sent again after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resend {
    /// Any transient failure: for reads, and writes that are idempotent or
    /// whose effect the adapter checks.
    #[default]
    AnyFailure,
    /// Only an answer that asks to slow down (refused before anything was
    /// done). A lost connection, a timeout or a server failure may hide a
    /// write that happened: the call ends there, and the caller looks for
    /// the write's effect before it tries again.
    OnlyRefused,
}

impl Transport {
    pub fn new(budget: Option<RateBudget>) -> Transport {
        Transport {
            backoff: Backoff::default(),
            budget,
            timeout: None,
            resend: Resend::AnyFailure,
        }
    }

    /// The same attempts and timeout without the budget, for the API's token
    /// endpoint: a token is fetched inside a call that already holds its
    /// slot, and the budget counts API calls, not token requests; queueing
    /// the fetch behind the callers that wait for its token only delays them.
    pub fn outside_budget(&self) -> Transport {
        Transport {
            budget: None,
            ..self.clone()
        }
    }

    /// Nobody sends before `wait` is over (only this call without a budget).
    async fn hold(&self, wait: Duration) {
        match &self.budget {
            Some(b) => b.pause(wait).await,
            None => tokio::time::sleep(wait).await,
        }
    }

    /// As `send_tracked`, for calls that need not know about lost answers.
    pub async fn send<A: Api + ?Sized>(
        &self,
        api: &A,
        build: impl Fn() -> reqwest::RequestBuilder + Send,
    ) -> Result<Reply, Failure<A::Error>> {
        self.send_tracked(api, build, &mut false).await
    }

    /// Sends what `build` makes (called again for each attempt) until an
    /// answer the adapter interprets, or the attempts run out. Every call the
    /// adapters make through here is idempotent or checked, so a lost
    /// connection is retried; `lost` says one was (a write may have been
    /// applied without its answer).
    pub async fn send_tracked<A: Api + ?Sized>(
        &self,
        api: &A,
        build: impl Fn() -> reqwest::RequestBuilder + Send,
        lost: &mut bool,
    ) -> Result<Reply, Failure<A::Error>> {
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            if let Some(b) = &self.budget {
                b.acquire().await;
            }
            let mut rb = api.authorize(build()).await.map_err(Failure::Api)?;
            if let Some(t) = self.timeout {
                rb = rb.timeout(t);
            }
            let (reply, authorization) = match exchange(rb).await {
                Ok(r) => r,
                Err(e) => {
                    let timed_out = e.is_timeout();
                    let detail = with_causes(&e.without_url());
                    if attempt + 1 >= self.backoff.attempts
                        || self.resend == Resend::OnlyRefused
                        || (timed_out && api.gives_up_after_timeout())
                    {
                        return Err(Failure::Connection {
                            attempts: attempt + 1,
                            detail,
                            timed_out,
                        });
                    }
                    *lost = true;
                    tracing::debug!(api = %api.name(), error = %detail, attempt, "connection problem, retrying");
                    tokio::time::sleep(self.backoff.delay(attempt)).await;
                    attempt += 1;
                    continue;
                }
            };
            // Without a budget there is nobody else to hold.
            if let Some(b) = &self.budget
                && let Some(wait) = api.drained(&reply.headers)
            {
                tracing::info!(api = %api.name(), wait_ms = wait.as_millis() as u64, "rate-limit bucket empty; pausing");
                b.pause(wait).await;
            }
            if reply.status == reqwest::StatusCode::UNAUTHORIZED {
                api.refused(authorization.as_ref()).await;
                if refreshed || !api.refresh().await.map_err(Failure::Api)? {
                    return Ok(reply);
                }
                // The refused attempt is not counted: nothing was done.
                refreshed = true;
                tracing::warn!(api = %api.name(), "access token refused (401): fetching a new one");
                continue;
            }
            let last = attempt + 1 >= self.backoff.attempts;
            match api.classify(&reply) {
                Class::Answer => return Ok(reply),
                Class::SlowDown { after } => {
                    // The body (often text/plain) is never parsed here.
                    let wait = after.unwrap_or_else(|| self.backoff.delay(attempt));
                    tracing::warn!(api = %api.name(), status = reply.status.as_u16(), wait_ms = wait.as_millis() as u64, "asked to slow down");
                    // Only a 429 says nothing was done: a server failure the
                    // API reads as "slow down" (a 503) may hide a write.
                    let refused = reply.status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    if last || (self.resend == Resend::OnlyRefused && !refused) {
                        self.budget_pause_only(wait).await;
                        return Err(if refused {
                            Failure::RateLimited {
                                attempts: attempt + 1,
                                last: reply,
                            }
                        } else {
                            Failure::Server {
                                attempts: attempt + 1,
                                last: reply,
                            }
                        });
                    }
                    // With a budget, the next acquire waits it out with every other caller.
                    self.hold(wait).await;
                }
                Class::Retry => {
                    if last || self.resend == Resend::OnlyRefused {
                        return Err(Failure::Server {
                            attempts: attempt + 1,
                            last: reply,
                        });
                    }
                    tokio::time::sleep(self.backoff.delay(attempt)).await;
                }
            }
            attempt += 1;
        }
    }

    /// The last attempt's slow-down still holds the other callers; this call
    /// does not wait, it has given up.
    async fn budget_pause_only(&self, wait: Duration) {
        if let Some(b) = &self.budget {
            b.pause(wait).await;
        }
    }
}

/// An error and its causes ("error sending request: connection refused"):
/// the top line alone rarely says what went wrong.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

/// Sends and reads the whole body (a body cut short is a lost connection
/// too); also the `authorization` that was sent, for a 401's hook.
async fn exchange(
    rb: reqwest::RequestBuilder,
) -> Result<(Reply, Option<reqwest::header::HeaderValue>), reqwest::Error> {
    let (client, request) = rb.build_split();
    let request = request?;
    let authorization = request.headers().get("authorization").cloned();
    let r = client.execute(request).await?;
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.bytes().await?;
    Ok((
        Reply {
            status,
            headers,
            body,
        },
        authorization,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let b = Backoff {
            attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        for a in 0..10 {
            let d = b.delay(a);
            assert!(d <= Duration::from_secs(1), "{a}: {d:?}");
        }
        assert!(b.delay(0) <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn budget_allows_a_burst_then_refills_at_its_rate() {
        // The bucket runs on the real clock: count what it lets through, not time.
        let b = RateBudget::per_minute(600); // burst 600, then one per 100 ms
        for _ in 0..600 {
            assert!(b.limiter.check().is_ok(), "the whole budget goes at once");
        }
        assert!(b.limiter.check().is_err(), "then the bucket is empty");
        let t = std::time::Instant::now();
        b.acquire().await;
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pause_holds_every_caller() {
        let b = RateBudget::per_minute(600);
        b.pause(Duration::from_secs(5)).await;
        let t = Instant::now();
        b.acquire().await;
        assert!(t.elapsed() >= Duration::from_secs(5), "{:?}", t.elapsed());
    }

    /// A local server answering with the statuses scripted, in order (then
    /// 200), recording the `authorization` header of each request.
    struct Script {
        url: String,
        seen: Arc<Mutex<Vec<String>>>,
    }

    async fn serve(answers: Vec<(u16, Option<&'static str>)>) -> Script {
        use axum::response::IntoResponse;
        let queue = Arc::new(Mutex::new(std::collections::VecDeque::from(answers)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (q, s) = (queue.clone(), seen.clone());
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let (q, s) = (q.clone(), s.clone());
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    s.lock().unwrap().push(auth);
                    let (status, after) = q.lock().unwrap().pop_front().unwrap_or((200, None));
                    let mut r = (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        "{\"ok\": true}",
                    )
                        .into_response();
                    if let Some(a) = after {
                        r.headers_mut()
                            .insert("retry-after", axum::http::HeaderValue::from_static(a));
                    }
                    r
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Script {
            url: format!("http://{addr}/"),
            seen,
        }
    }

    /// A connection failure's attempts and whether it timed out.
    fn connection_failure<E>(r: &Result<Reply, Failure<E>>) -> Option<(u32, bool)> {
        match r {
            Err(Failure::Connection {
                attempts,
                timed_out,
                ..
            }) => Some((*attempts, *timed_out)),
            _ => None,
        }
    }

    /// A server that accepts connections, reads nothing and never answers.
    async fn silent_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        url
    }

    /// A port nobody listens on (bound, then closed).
    fn refused_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", listener.local_addr().unwrap())
    }

    /// A token that can be refreshed: `t0`, then `t1`, ...
    #[derive(Default)]
    struct Refreshable {
        generation: std::sync::atomic::AtomicU32,
    }

    #[async_trait::async_trait]
    impl Api for Refreshable {
        type Error = String;
        async fn authorize(
            &self,
            rb: reqwest::RequestBuilder,
        ) -> Result<reqwest::RequestBuilder, String> {
            let g = self.generation.load(std::sync::atomic::Ordering::SeqCst);
            Ok(rb.header("authorization", format!("t{g}")))
        }
        async fn refresh(&self) -> Result<bool, String> {
            // The next authorize sends the next generation.
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(true)
        }
        fn name(&self) -> String {
            "test".into()
        }
    }

    fn transport(attempts: u32) -> Transport {
        Transport {
            backoff: Backoff {
                attempts,
                base: Duration::from_millis(1),
                cap: Duration::from_millis(5),
            },
            budget: Some(RateBudget::per_minute(6000)),
            timeout: Some(Duration::from_secs(5)),
            ..Transport::new(None)
        }
    }

    #[tokio::test]
    async fn a_429_then_success_waits_for_retry_after() {
        let s = serve(vec![(429, Some("1"))]).await;
        let http = reqwest::Client::new();
        let t = std::time::Instant::now();
        let r = transport(3)
            .send(&Refreshable::default(), || http.get(&s.url))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["ok"], true);
        assert!(
            t.elapsed() >= Duration::from_millis(950),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(s.seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn rate_limited_to_the_last_attempt_is_a_typed_failure() {
        let s = serve(vec![(429, Some("0")); 3]).await;
        let http = reqwest::Client::new();
        let r = transport(3)
            .send(&Refreshable::default(), || http.get(&s.url))
            .await;
        assert!(
            matches!(r, Err(Failure::RateLimited { attempts: 3, .. })),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn server_errors_are_retried_up_to_the_attempts() {
        let s = serve(vec![(502, None); 5]).await;
        let http = reqwest::Client::new();
        let r = transport(3)
            .send(&Refreshable::default(), || http.get(&s.url))
            .await;
        assert!(
            matches!(
                r,
                Err(Failure::Server { attempts: 3, ref last }) if last.status == 502
            ),
            "{r:?}"
        );
        assert_eq!(s.seen.lock().unwrap().len(), 3);

        let s = serve(vec![(500, None), (503, None)]).await;
        let r = transport(3)
            .send(&Refreshable::default(), || http.get(&s.url))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }

    #[tokio::test]
    async fn a_401_refreshes_the_token_once() {
        let s = serve(vec![(401, None)]).await;
        let http = reqwest::Client::new();
        let r = transport(3)
            .send(&Refreshable::default(), || http.get(&s.url))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(*s.seen.lock().unwrap(), ["t0", "t1"]);

        // Refused again: the 401 is the adapter's to explain.
        let s = serve(vec![(401, None), (401, None), (401, None)]).await;
        let r = transport(3)
            .send(&Refreshable::default(), || http.get(&s.url))
            .await
            .unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(*s.seen.lock().unwrap(), ["t0", "t1"]);
    }

    #[tokio::test]
    async fn other_client_errors_come_back_at_once() {
        let s = serve(vec![(404, None)]).await;
        let http = reqwest::Client::new();
        let r = transport(3)
            .send(&Refreshable::default(), || http.get(&s.url))
            .await
            .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(s.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_lost_connection_is_retried_then_typed() {
        let url = refused_url();
        let http = reqwest::Client::new();
        let r = transport(2)
            .send(&Refreshable::default(), || http.get(&url))
            .await;
        assert_eq!(connection_failure(&r), Some((2, false)), "{r:?}");
    }

    #[tokio::test]
    async fn a_timeout_is_told_from_a_refused_connection() {
        let url = silent_server().await;
        let http = reqwest::Client::new();
        let mut t = transport(2);
        t.timeout = Some(Duration::from_millis(100));
        let r = t.send(&Refreshable::default(), || http.get(&url)).await;
        assert_eq!(connection_failure(&r), Some((2, true)), "{r:?}");
    }

    /// A call that may have written (`Resend::OnlyRefused`) is sent again
    /// after a 429 only: a server failure or a lost connection ends it at once.
    #[tokio::test]
    async fn a_write_that_may_have_happened_is_not_sent_again() {
        let mut t = transport(3);
        t.resend = Resend::OnlyRefused;
        let http = reqwest::Client::new();
        let s = serve(vec![(429, Some("0")), (200, None)]).await;
        let r = t
            .send(&Refreshable::default(), || http.get(&s.url))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(s.seen.lock().unwrap().len(), 2);

        let s = serve(vec![(502, None), (200, None)]).await;
        let r = t.send(&Refreshable::default(), || http.get(&s.url)).await;
        assert!(
            matches!(r, Err(Failure::Server { attempts: 1, ref last }) if last.status == 502),
            "{r:?}"
        );
        assert_eq!(s.seen.lock().unwrap().len(), 1);

        let url = refused_url();
        let r = t.send(&Refreshable::default(), || http.get(&url)).await;
        assert!(
            matches!(r, Err(Failure::Connection { attempts: 1, .. })),
            "{r:?}"
        );
    }

    /// An API that reads a 503 as "slow down" (as Zendesk does).
    struct SlowOn503;

    #[async_trait::async_trait]
    impl Api for SlowOn503 {
        type Error = String;
        fn classify(&self, reply: &Reply) -> Class {
            if reply.status == 503 {
                Class::SlowDown { after: None }
            } else {
                standard_class(reply)
            }
        }
        fn name(&self) -> String {
            "slow on 503".into()
        }
    }

    /// Even where the API reads a 503 as "slow down", a call that may have
    /// written is not sent again after it; after a 429 it is.
    #[tokio::test]
    async fn only_a_429_sends_a_write_again_whatever_the_api_calls_slowing_down() {
        let http = reqwest::Client::new();
        let mut t = transport(3);
        t.resend = Resend::OnlyRefused;
        let s = serve(vec![(503, None), (200, None)]).await;
        let r = t.send(&SlowOn503, || http.get(&s.url)).await;
        assert!(
            matches!(r, Err(Failure::Server { attempts: 1, ref last }) if last.status == 503),
            "{r:?}"
        );
        assert_eq!(s.seen.lock().unwrap().len(), 1);
        // Reads still wait the 503 out.
        let s = serve(vec![(503, None), (200, None)]).await;
        let r = transport(3).send(&SlowOn503, || http.get(&s.url)).await;
        assert_eq!(r.unwrap().status, 200);
    }

    /// An API that gives up on the second timeout of a call.
    #[derive(Default)]
    struct TwoTimeouts(std::sync::atomic::AtomicU32);

    #[async_trait::async_trait]
    impl Api for TwoTimeouts {
        type Error = String;
        fn gives_up_after_timeout(&self) -> bool {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= 2
        }
        fn name(&self) -> String {
            "two timeouts".into()
        }
    }

    /// A call ends when its API says so on a timeout, attempts left or not.
    #[tokio::test]
    async fn a_call_gives_up_when_its_api_says_so_on_a_timeout() {
        let url = silent_server().await;
        let http = reqwest::Client::new();
        let mut t = transport(5);
        t.timeout = Some(Duration::from_millis(50));
        let r = t.send(&TwoTimeouts::default(), || http.get(&url)).await;
        assert_eq!(connection_failure(&r), Some((2, true)), "{r:?}");
        // By default a call has its attempts.
        let r = t.send(&Refreshable::default(), || http.get(&url)).await;
        assert!(
            matches!(r, Err(Failure::Connection { attempts: 5, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn a_token_endpoint_s_wait_is_capped_and_its_backoff_kept() {
        let capped = token_class(Class::SlowDown {
            after: Some(Duration::from_secs(600)),
        });
        assert!(matches!(capped, Class::SlowDown { after: Some(a) } if a == TOKEN_MAX_WAIT));
        assert!(matches!(
            token_class(Class::SlowDown { after: None }),
            Class::SlowDown { after: None }
        ));
        assert!(matches!(token_class(Class::Retry), Class::Retry));
    }

    /// A token endpoint: no credentials of its own, the default classes.
    struct TokenEndpoint;

    #[async_trait::async_trait]
    impl Api for TokenEndpoint {
        type Error = String;
        fn name(&self) -> String {
            "token".into()
        }
    }

    #[tokio::test]
    async fn a_token_endpoint_answering_429_then_200_is_retried() {
        let s = serve(vec![(429, Some("0")), (503, None)]).await;
        let http = reqwest::Client::new();
        let r = transport(3)
            .outside_budget()
            .send(&TokenEndpoint, || http.get(&s.url))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(s.seen.lock().unwrap().len(), 3);
    }

    /// An API whose every request fetches a token first, on the transport
    /// for tokens.
    struct FetchesTokens {
        tokens: Transport,
        token_url: String,
        http: reqwest::Client,
    }

    #[async_trait::async_trait]
    impl Api for FetchesTokens {
        type Error = String;
        async fn authorize(
            &self,
            rb: reqwest::RequestBuilder,
        ) -> Result<reqwest::RequestBuilder, String> {
            let reply = self
                .tokens
                .send(&TokenEndpoint, || self.http.get(&self.token_url))
                .await
                .map_err(|f| format!("{f:?}"))?;
            Ok(rb.header("authorization", format!("token {}", reply.status.as_u16())))
        }
        fn name(&self) -> String {
            "fetches tokens".into()
        }
    }

    #[tokio::test]
    async fn a_token_fetch_takes_no_slot_from_the_budget() {
        let (api, token) = (serve(vec![]).await, serve(vec![(429, Some("0"))]).await);
        let http = reqwest::Client::new();
        // Two slots a minute: a token fetch (and its retry) taking one would
        // hold the second call for half a minute.
        let mut t = transport(3);
        t.budget = Some(RateBudget::per_minute(2));
        let client = FetchesTokens {
            tokens: t.outside_budget(),
            token_url: token.url.clone(),
            http: http.clone(),
        };
        let calls = async {
            for _ in 0..2 {
                let r = t.send(&client, || http.get(&api.url)).await.unwrap();
                assert_eq!(r.status, 200);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), calls)
            .await
            .expect("the token fetches waited for the budget");
        assert_eq!(*api.seen.lock().unwrap(), ["token 200", "token 200"]);
        assert_eq!(token.seen.lock().unwrap().len(), 3, "one 429, retried");
        // The two calls took the budget's two slots, and nothing else did.
        assert!(
            t.budget.as_ref().unwrap().limiter.check().is_err(),
            "the budget is spent"
        );
    }
}
