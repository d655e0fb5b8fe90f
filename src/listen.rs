//! Serving the bot's own HTTP listeners (the webhook and the operations
//! endpoints) so that nobody can hold them hostage: a deadline for the request
//! headers, a deadline for idle keep-alive connections, and a connection limit.
//! At the limit, a new connection closes the connection that has been idle the
//! longest, so a flood of idle, unauthenticated connections cannot lock out
//! GitLab's next delivery or the kubelet's probe.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; at the limit the longest-idle one is closed.
    pub max_connections: usize,
    /// A request's headers must arrive within this.
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of a listener, for `/metrics`.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub open: AtomicUsize,
    pub accepted: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// Idle connections closed by the idle deadline.
    pub idle_closed: AtomicU64,
    /// New connections refused: every open one had a request in flight.
    pub refused: AtomicU64,
}

struct Conn {
    /// Milliseconds since the registry's epoch of the last request start or end.
    last_active: AtomicU64,
    in_flight: AtomicUsize,
    close: Notify,
}

struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Room for one more connection: true when there is (closing the
    /// longest-idle connection if need be), false when every one is busy.
    fn make_room(&self, max: usize, stats: &ListenerStats) -> bool {
        let mut conns = self.lock();
        if conns.len() < max {
            return true;
        }
        let victim = conns
            .iter()
            .filter(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, c)| c.last_active.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        match victim.and_then(|id| conns.remove(&id)) {
            Some(c) => {
                c.close.notify_one();
                stats.evicted.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

/// Serve `app` on `listener` under `limits` until the task is aborted.
pub fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<ListenerStats>,
) -> JoinHandle<()> {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        next_id: AtomicU64::new(0),
        conns: Mutex::new(BTreeMap::new()),
    });
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors, most likely: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if !registry.make_room(limits.max_connections.max(1), &stats) {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "connection refused: every connection is busy");
                drop(stream);
                continue;
            }
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
            let conn = Arc::new(Conn {
                last_active: AtomicU64::new(registry.now_ms()),
                in_flight: AtomicUsize::new(0),
                close: Notify::new(),
            });
            registry.lock().insert(id, conn.clone());
            stats.open.fetch_add(1, Ordering::Relaxed);
            let (registry, stats, app) = (registry.clone(), stats.clone(), app.clone());
            tokio::spawn(async move {
                serve_connection(stream, peer, app, limits, &registry, &conn, &stats).await;
                registry.lock().remove(&id);
                stats.open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    })
}

/// Marks a connection busy for the life of one request.
struct InFlight {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn
            .last_active
            .store(self.registry.now_ms(), Ordering::Release);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    registry: &Arc<Registry>,
    conn: &Arc<Conn>,
    stats: &ListenerStats,
) {
    let (svc_conn, svc_registry) = (conn.clone(), registry.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        svc_conn.in_flight.fetch_add(1, Ordering::AcqRel);
        svc_conn
            .last_active
            .store(svc_registry.now_ms(), Ordering::Release);
        let guard = InFlight {
            conn: svc_conn.clone(),
            registry: svc_registry.clone(),
        };
        let app = app.clone();
        async move {
            let resp = tower::ServiceExt::oneshot(app, req).await;
            drop(guard);
            resp
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let serving = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(serving);
    // Check for idleness a few times per idle period.
    let tick = (limits.idle_timeout / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            r = serving.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = conn.close.notified() => {
                tracing::debug!(%peer, "idle connection closed to make room");
                return;
            }
            _ = tokio::time::sleep(tick) => {
                let idle_ms = registry.now_ms().saturating_sub(conn.last_active.load(Ordering::Acquire));
                if conn.in_flight.load(Ordering::Acquire) == 0
                    && Duration::from_millis(idle_ms) >= limits.idle_timeout
                {
                    stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "idle connection closed");
                    return;
                }
            }
        }
    }
}

/// Bind `addr`; the error names the address.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
