//! Where notices land in the sandbox: an SMTP sink (a small RFC 5321 server
//! that keeps every accepted message) and a fake Slack incoming webhook.
//!
//! The sink speaks plain SMTP only (no STARTTLS): the bot reaches it with
//! `tls = "none"`, which the configuration accepts only for a loopback host.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The DATA section, headers and body, dot-unstuffed.
    pub data: String,
    /// The user that authenticated, if any.
    pub user: Option<String>,
}

impl Mail {
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.data
            .lines()
            .take_while(|l| !l.is_empty())
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_string())
    }

    /// The body after the headers, with quoted-printable soft breaks joined.
    pub fn body(&self) -> String {
        let body = self
            .data
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("");
        body.replace("=\r\n", "").replace("=3D", "=")
    }
}

#[derive(Debug, Default)]
pub struct SmtpWorld {
    pub messages: Vec<Mail>,
    /// `(user, password)` the sink accepts; `None`: no AUTH offered or needed.
    pub credentials: Option<(String, String)>,
    /// Answer the next transactions' MAIL FROM with this reply (e.g. `451 4.3.0 Try later`).
    pub refuse_next: Vec<String>,
    /// Keep the next this-many messages but drop the connection instead of
    /// answering 250 (the final reply lost on the way).
    pub lose_answer_next: usize,
}

#[derive(Clone, Default)]
pub struct SmtpSink {
    inner: Arc<Mutex<SmtpWorld>>,
}

impl SmtpSink {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SmtpWorld> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn messages(&self) -> Vec<Mail> {
        self.lock().messages.clone()
    }

    /// Refuse the next `n` messages with `reply` (a full SMTP reply line).
    pub fn refuse_next(&self, n: usize, reply: &str) {
        let mut w = self.lock();
        for _ in 0..n {
            w.refuse_next.push(reply.to_string());
        }
    }

    pub async fn serve(
        &self,
        port: u16,
    ) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = super::bind_loopback(port).await?;
        let addr = listener.local_addr()?;
        let sink = self.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let _ = sink.session(stream).await;
                });
            }
        });
        Ok((addr, task))
    }

    async fn session(&self, stream: tokio::net::TcpStream) -> std::io::Result<()> {
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r);
        w.write_all(b"220 smtp.sandbox ESMTP access-bot sandbox\r\n")
            .await?;
        let mut from = String::new();
        let mut to: Vec<String> = Vec::new();
        let mut user: Option<String> = None;
        let mut refused = false;
        loop {
            let mut line = String::new();
            if lines.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_string();
            let upper = cmd.to_ascii_uppercase();
            let needs_auth = self.lock().credentials.is_some();
            let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                if needs_auth {
                    "250-smtp.sandbox\r\n250-8BITMIME\r\n250 AUTH PLAIN LOGIN".into()
                } else {
                    "250-smtp.sandbox\r\n250 8BITMIME".into()
                }
            } else if let Some(arg) = upper.strip_prefix("AUTH PLAIN") {
                let arg = cmd[cmd.len() - arg.len()..].trim().to_string();
                let arg = if arg.is_empty() {
                    w.write_all(b"334 \r\n").await?;
                    let mut l = String::new();
                    lines.read_line(&mut l).await?;
                    l.trim().to_string()
                } else {
                    arg
                };
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(arg)
                    .unwrap_or_default();
                let parts: Vec<String> = decoded
                    .split(|b| *b == 0)
                    .map(|p| String::from_utf8_lossy(p).to_string())
                    .collect();
                let (u, p) = (
                    parts.get(1).cloned().unwrap_or_default(),
                    parts.get(2).cloned().unwrap_or_default(),
                );
                self.check(&u, &p, &mut user)
            } else if upper.starts_with("AUTH LOGIN") {
                let mut read_b64 = async |prompt: &[u8]| -> std::io::Result<String> {
                    w.write_all(prompt).await?;
                    let mut l = String::new();
                    lines.read_line(&mut l).await?;
                    Ok(String::from_utf8_lossy(
                        &base64::engine::general_purpose::STANDARD
                            .decode(l.trim())
                            .unwrap_or_default(),
                    )
                    .to_string())
                };
                let u = read_b64(b"334 VXNlcm5hbWU6\r\n").await?;
                let p = read_b64(b"334 UGFzc3dvcmQ6\r\n").await?;
                self.check(&u, &p, &mut user)
            } else if upper.starts_with("MAIL FROM:") {
                if needs_auth && user.is_none() {
                    "530 5.7.0 Authentication required".into()
                } else if let Some(r) = {
                    let mut world = self.lock();
                    (!world.refuse_next.is_empty()).then(|| world.refuse_next.remove(0))
                } {
                    refused = true;
                    r
                } else {
                    refused = false;
                    from = angle(&cmd[10..]);
                    to.clear();
                    "250 2.1.0 Ok".into()
                }
            } else if upper.starts_with("RCPT TO:") {
                if refused || from.is_empty() {
                    "503 5.5.1 Error: need MAIL command".into()
                } else {
                    to.push(angle(&cmd[8..]));
                    "250 2.1.5 Ok".into()
                }
            } else if upper == "DATA" {
                if to.is_empty() {
                    "503 5.5.1 Error: need RCPT command".into()
                } else {
                    w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    let mut data = String::new();
                    loop {
                        let mut l = String::new();
                        if lines.read_line(&mut l).await? == 0 {
                            return Ok(());
                        }
                        if l == ".\r\n" || l == ".\n" {
                            break;
                        }
                        let l = l.strip_prefix('.').map(str::to_string).unwrap_or(l);
                        data.push_str(&l);
                    }
                    let lose = {
                        let mut world = self.lock();
                        world.messages.push(Mail {
                            from: std::mem::take(&mut from),
                            to: std::mem::take(&mut to),
                            data,
                            user: user.clone(),
                        });
                        let lose = world.lose_answer_next > 0;
                        world.lose_answer_next = world.lose_answer_next.saturating_sub(1);
                        lose
                    };
                    if lose {
                        return Ok(());
                    }
                    "250 2.0.0 Ok: queued".into()
                }
            } else if upper == "RSET" {
                from.clear();
                to.clear();
                "250 2.0.0 Ok".into()
            } else if upper == "NOOP" {
                "250 2.0.0 Ok".into()
            } else if upper == "QUIT" {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            } else {
                "502 5.5.2 Error: command not recognized".into()
            };
            w.write_all(reply.as_bytes()).await?;
            w.write_all(b"\r\n").await?;
        }
    }

    fn check(&self, u: &str, p: &str, user: &mut Option<String>) -> String {
        let ok = self
            .lock()
            .credentials
            .as_ref()
            .is_some_and(|(cu, cp)| cu == u && cp == p);
        if ok {
            *user = Some(u.to_string());
            "235 2.7.0 Authentication successful".into()
        } else {
            "535 5.7.8 Error: authentication failed".into()
        }
    }
}

fn angle(s: &str) -> String {
    let s = s.trim();
    let s = s.split_whitespace().next().unwrap_or("");
    s.trim_start_matches('<').trim_end_matches('>').to_string()
}

/// A Slack incoming webhook: `POST /services/T…/B…/…` with `{"text": …}`;
/// `200 ok`, or Slack's plain-text error codes.
#[derive(Debug, Default)]
pub struct SlackWorld {
    pub posts: Vec<serde_json::Value>,
    /// The path part of the URL that is valid (the secret).
    pub path: String,
    /// Answer the next posts with this `(status, body)`, e.g. `(404, "no_service")`.
    pub refuse_next: Vec<(u16, String)>,
}

#[derive(Clone, Default)]
pub struct SlackServer {
    inner: Arc<Mutex<SlackWorld>>,
}

impl SlackServer {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SlackWorld> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn texts(&self) -> Vec<String> {
        self.lock()
            .posts
            .iter()
            .map(|p| p["text"].as_str().unwrap_or("").to_string())
            .collect()
    }

    pub fn refuse_next(&self, n: usize, status: u16, body: &str) {
        let mut w = self.lock();
        for _ in 0..n {
            w.refuse_next.push((status, body.to_string()));
        }
    }
}

pub fn slack_router(s: SlackServer) -> Router {
    Router::new()
        .route("/services/{a}/{b}/{c}", post(slack_post))
        .with_state(s)
}

async fn slack_post(
    State(s): State<SlackServer>,
    axum::extract::Path((a, b, c)): axum::extract::Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let mut w = s.lock();
    if !w.refuse_next.is_empty() {
        let (status, text) = w.refuse_next.remove(0);
        return (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            text,
        )
            .into_response();
    }
    if format!("/services/{a}/{b}/{c}") != w.path {
        return (StatusCode::FORBIDDEN, "invalid_token").into_response();
    }
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return (StatusCode::BAD_REQUEST, "invalid_payload").into_response(),
    };
    if !v["text"].is_string() && !v["blocks"].is_array() {
        return (StatusCode::BAD_REQUEST, "no_text").into_response();
    }
    w.posts.push(v);
    (StatusCode::OK, "ok").into_response()
}
