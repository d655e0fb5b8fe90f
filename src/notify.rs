//! Beyond the issue: e-mail over SMTP (the People team's citizenship
//! verification request, ops notices) and Slack incoming-webhook notices,
//! de-duplicated and rate-limited so an outage makes one notice, not hundreds.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{EmailConfig, NotifyConfig, SlackConfig, SmtpTls};
use crate::render::Templates;
use crate::secret::{Secret, Secrets};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notify configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    #[error("the SMTP server refused the message: {detail} ({permanent})")]
    Smtp {
        permanent: Permanence,
        detail: String,
    },
    #[error("Slack refused the notice: HTTP {status} {body}")]
    Slack { status: u16, body: String },
    #[error("Slack could not be reached: {0}")]
    SlackUnreachable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permanence {
    Permanent,
    Transient,
}

impl std::fmt::Display for Permanence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Permanence::Permanent => "permanent",
            Permanence::Transient => "transient",
        })
    }
}

/// Every SMTP exchange gives up after this long.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// SMTP with STARTTLS (required), implicit TLS, or (loopback only) plain.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// What the two-phase send needs to open its own connection.
    host: String,
    port: u16,
    tls: SmtpTls,
    credentials: Option<Credentials>,
    from: Mailbox,
    pub people_team: Vec<String>,
    pub ops: Vec<String>,
    /// A rehearsal's mailer records each message instead of sending it.
    rehearsal: Option<crate::rehearsal::Rehearsal>,
}

/// How a two-phase send ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Handover {
    /// The server said 250: it has the message.
    Accepted,
    /// The message was handed over but the server's answer never came: it
    /// most likely has it; never send it again.
    AnswerLost(String),
    /// Not sent: the people it is for already answered on the issue.
    Answered,
    /// The issue says it was being handed over, and nothing says whether it
    /// went (the bot's store was lost): not sent again.
    Uncertain,
}

impl Mailer {
    pub fn new(cfg: &EmailConfig, secrets: &Secrets) -> Result<Mailer, NotifyError> {
        let bad = |e: lettre::transport::smtp::Error| NotifyError::Config(e.to_string());
        let mut b = match cfg.tls {
            SmtpTls::Implicit => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.smtp_host).map_err(bad)?
            }
            SmtpTls::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.smtp_host)
            }
            SmtpTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.smtp_host).map_err(bad)?
            }
        };
        let port = cfg.smtp_port.unwrap_or(cfg.tls.default_port());
        b = b.port(port).timeout(Some(SMTP_TIMEOUT));
        let mut credentials = None;
        if let (Some(u), Some(p)) = (&cfg.username_env, &cfg.password_env) {
            let c = Credentials::new(
                secrets.get(u)?.expose().to_string(),
                secrets.get(p)?.expose().to_string(),
            );
            b = b.credentials(c.clone());
            credentials = Some(c);
        }
        let from: Mailbox = format!("access-bot <{}>", cfg.from)
            .parse()
            .map_err(|e: lettre::address::AddressError| NotifyError::Config(e.to_string()))?;
        Ok(Mailer {
            transport: b.build(),
            host: cfg.smtp_host.clone(),
            port,
            tls: cfg.tls,
            credentials,
            from,
            people_team: cfg.people_team.clone(),
            ops: cfg.ops.clone(),
            rehearsal: None,
        })
    }

    /// This mailer for a rehearsal: messages are recorded, never sent.
    pub fn rehearsed(&self, log: crate::rehearsal::Rehearsal) -> Mailer {
        Mailer {
            rehearsal: Some(log),
            ..self.clone()
        }
    }

    /// Connect, greet and authenticate, without sending anything (`check`).
    pub async fn check(&self) -> Result<(), NotifyError> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(NotifyError::Smtp {
                permanent: Permanence::Transient,
                detail: "the server did not answer NOOP".into(),
            }),
            Err(e) => Err(NotifyError::Smtp {
                permanent: if e.is_permanent() {
                    Permanence::Permanent
                } else {
                    Permanence::Transient
                },
                detail: e.to_string(),
            }),
        }
    }

    /// One plain-text message in two phases, for messages that must go out
    /// exactly once. The transaction is opened (connect, TLS, AUTH, MAIL,
    /// RCPT, DATA); then `before_handover` runs (it records, where it survives
    /// a crash, that the message is about to be handed over); then the
    /// message and its final dot go in one write, and the server answers. A
    /// crash before the final dot leaves the server nothing to deliver (it
    /// drops a transaction that did not end), so whoever finds no record may
    /// send again; a crash after it is covered by the record. An error from
    /// `before_handover` abandons the transaction.
    pub async fn send_two_phase<F, E>(
        &self,
        to: &[String],
        subject: &str,
        body: &str,
        message_id: &str,
        before_handover: F,
    ) -> Result<Result<Handover, NotifyError>, E>
    where
        F: std::future::Future<Output = Result<(), E>>,
    {
        use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
        use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
        use lettre::transport::smtp::extension::ClientId;
        let smtp = |detail: String, permanent: bool| NotifyError::Smtp {
            permanent: if permanent {
                Permanence::Permanent
            } else {
                Permanence::Transient
            },
            detail,
        };
        let of = |e: lettre::transport::smtp::Error| smtp(e.to_string(), e.is_permanent());
        let message = match self.message(to, subject, body, message_id) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(r) = &self.rehearsal {
            before_handover.await?;
            r.record(None, format!("e-mail {subject:?} to {}", to.join(", ")));
            return Ok(Ok(Handover::Accepted));
        }
        let envelope = message.envelope().clone();
        let bytes = message.formatted();
        let opened = async {
            let hello = ClientId::default();
            let params = || TlsParameters::new(self.host.clone()).map_err(of);
            let wrapper = if self.tls == SmtpTls::Implicit {
                Some(params()?)
            } else {
                None
            };
            let mut conn = AsyncSmtpConnection::connect_tokio1(
                (self.host.as_str(), self.port),
                Some(SMTP_TIMEOUT),
                &hello,
                wrapper,
                None,
            )
            .await
            .map_err(of)?;
            if self.tls == SmtpTls::Starttls {
                if !conn.can_starttls() {
                    return Err(smtp("the server does not offer STARTTLS".into(), true));
                }
                conn.starttls(params()?, &hello).await.map_err(of)?;
            }
            if let Some(c) = &self.credentials {
                use lettre::transport::smtp::authentication::Mechanism;
                conn.auth(&[Mechanism::Plain, Mechanism::Login], c)
                    .await
                    .map_err(of)?;
            }
            conn.command(Mail::new(envelope.from().cloned(), vec![]))
                .await
                .map_err(of)?;
            for r in envelope.to() {
                conn.command(Rcpt::new(r.clone(), vec![]))
                    .await
                    .map_err(of)?;
            }
            conn.command(Data).await.map_err(of)?;
            Ok(conn)
        }
        .await;
        let mut conn = match opened {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = before_handover.await {
            conn.abort().await;
            return Err(e);
        }
        let answer = conn.message(&bytes).await;
        let _ = conn.quit().await;
        Ok(match answer {
            Ok(_) => Ok(Handover::Accepted),
            // A refusal is an answer: the server does not have the message.
            Err(e) if e.is_permanent() || e.is_transient() => Err(of(e)),
            Err(e) => Ok(Handover::AnswerLost(e.to_string())),
        })
    }

    fn message(
        &self,
        to: &[String],
        subject: &str,
        body: &str,
        message_id: &str,
    ) -> Result<Message, NotifyError> {
        let mut m = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(message_id.to_string()))
            .header(ContentType::TEXT_PLAIN);
        for t in to {
            let mb: Mailbox = t
                .parse()
                .map_err(|e: lettre::address::AddressError| NotifyError::Config(e.to_string()))?;
            m = m.to(mb);
        }
        m.body(body.to_string())
            .map_err(|e| NotifyError::Config(e.to_string()))
    }

    /// One plain-text message. `message_id` is stable per purpose, so a copy
    /// sent twice (a crash in the instant between the server's 250 and our
    /// record of it) is recognisable as the same message by mail clients.
    pub async fn send(
        &self,
        to: &[String],
        subject: &str,
        body: &str,
        message_id: &str,
    ) -> Result<(), NotifyError> {
        let msg = self.message(to, subject, body, message_id)?;
        if let Some(r) = &self.rehearsal {
            r.record(None, format!("e-mail {subject:?} to {}", to.join(", ")));
            return Ok(());
        }
        match self.transport.send(msg).await {
            Ok(_) => Ok(()),
            Err(e) => Err(NotifyError::Smtp {
                permanent: if e.is_permanent() {
                    Permanence::Permanent
                } else {
                    Permanence::Transient
                },
                detail: e.to_string(),
            }),
        }
    }
}

/// A Slack incoming webhook. The URL is the credential: it lives in a Secret.
pub struct Slack {
    url: Secret,
    http: reqwest::Client,
}

impl Slack {
    pub fn new(
        cfg: &SlackConfig,
        secrets: &Secrets,
        http: reqwest::Client,
    ) -> Result<Slack, NotifyError> {
        Ok(Slack {
            url: secrets.get(&cfg.webhook_env)?,
            http,
        })
    }

    /// Slack answers 200 `ok`; errors are plain-text codes (`invalid_token`,
    /// `no_service`, `channel_not_found`, ...) with 4xx, which are not retried;
    /// 429 (with `Retry-After`) and 5xx are retried twice.
    pub async fn post(&self, text: &str) -> Result<(), NotifyError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self
                .http
                .post(self.url.expose())
                .json(&serde_json::json!({"text": text}))
                .send()
                .await;
            let r = match r {
                Ok(r) => r,
                Err(e) if attempt < 3 => {
                    tracing::debug!(error = %e.without_url(), "Slack unreachable; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    continue;
                }
                // reqwest errors carry the URL, which is the secret: never show it.
                Err(e) => {
                    return Err(NotifyError::SlackUnreachable(
                        if e.is_timeout() {
                            "timed out"
                        } else {
                            "connection failed"
                        }
                        .into(),
                    ));
                }
            };
            let status = r.status().as_u16();
            let wait = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = r.text().await.unwrap_or_default();
            if (200..300).contains(&status) {
                return Ok(());
            }
            if (status == 429 || status >= 500) && attempt < 3 {
                let secs = wait.unwrap_or(1).min(30);
                tokio::time::sleep(Duration::from_secs(secs)).await;
                continue;
            }
            return Err(NotifyError::Slack {
                status,
                body: body.chars().take(200).collect(),
            });
        }
    }
}

/// Why a person is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    StepFailed,
    ConfigurationError,
    SecurityRefusal,
    ManagerCannotTakeTickets,
}

impl NoticeKind {
    fn as_str(self) -> &'static str {
        match self {
            NoticeKind::StepFailed => "step failed",
            NoticeKind::ConfigurationError => "configuration error",
            NoticeKind::SecurityRefusal => "approval refused for a security reason",
            NoticeKind::ManagerCannotTakeTickets => "manager cannot take tickets",
        }
    }
}

pub struct Notice {
    pub kind: NoticeKind,
    /// What makes two notices the same (the error, not the issue): an outage
    /// failing fifty issues is one cause.
    pub cause: String,
    pub detail: String,
    pub url: Option<String>,
}

/// The dedupe key: kind and cause, with numbers blurred (ids, counts, times).
pub fn notice_key(kind: NoticeKind, cause: &str) -> String {
    let blurred: String = cause
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .take(120)
        .collect();
    format!("{}:{blurred}", kind.as_str())
}

/// Ops notices over Slack and/or e-mail, de-duplicated and rate-limited
/// through the state store (so restarts do not re-send).
pub struct Notifier {
    mailer: Option<Arc<Mailer>>,
    slack: Option<Slack>,
    window: chrono::Duration,
    max_per_hour: u32,
    /// A rehearsal's notifier records each notice instead of sending it.
    rehearsal: Option<crate::rehearsal::Rehearsal>,
}

impl Notifier {
    pub fn none() -> Notifier {
        Notifier {
            mailer: None,
            slack: None,
            window: chrono::Duration::hours(6),
            max_per_hour: 10,
            rehearsal: None,
        }
    }

    pub fn new(
        cfg: &NotifyConfig,
        mailer: Option<Arc<Mailer>>,
        slack: Option<Slack>,
    ) -> Result<Notifier, NotifyError> {
        let window = cfg.dedupe_window.chrono();
        Ok(Notifier {
            mailer: mailer.filter(|m| !m.ops.is_empty()),
            slack,
            window,
            max_per_hour: cfg.max_per_hour,
            rehearsal: None,
        })
    }

    /// This notifier for a rehearsal: notices are recorded, never sent.
    pub fn rehearsed(self, log: crate::rehearsal::Rehearsal) -> Notifier {
        Notifier {
            rehearsal: Some(log),
            ..self
        }
    }

    pub fn enabled(&self) -> bool {
        self.mailer.is_some() || self.slack.is_some()
    }

    /// Send unless the same notice went out within the window or the hourly
    /// budget is spent. Never fails the caller: problems are logged.
    pub async fn notice(&self, store: &Store, templates: &Templates, n: Notice) {
        if !self.enabled() {
            return;
        }
        let key = notice_key(n.kind, &n.cause);
        let now = Utc::now();
        match store.notice_sent_at(&key) {
            Ok(Some(t)) if now - t < self.window => {
                let _ = store.bump_suppressed();
                tracing::debug!(
                    kind = n.kind.as_str(),
                    "notice already sent in the window; suppressed"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the notice record; not sending");
                return;
            }
            _ => {}
        }
        if store
            .notices_since(now - chrono::Duration::hours(1))
            .unwrap_or(0)
            >= self.max_per_hour as usize
        {
            let _ = store.bump_suppressed();
            tracing::warn!(
                kind = n.kind.as_str(),
                "hourly notice budget spent; suppressed"
            );
            return;
        }
        let suppressed = store.suppressed().unwrap_or(0);
        let text = match templates.text(&crate::comment::OpsNotice {
            title: n.kind.as_str(),
            detail: n.detail.clone(),
            url: n.url.clone(),
            suppressed,
        }) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot render the ops notice");
                return;
            }
        };
        // Recorded before it goes out: a notice is a heads-up (the issue
        // always says it all), so a crash while sending loses it rather than
        // sends it twice. Taken back if no channel took it, to try again.
        if let Err(e) = store.record_notice(&key, now, suppressed) {
            tracing::warn!(error = %e, "cannot record the notice; not sending");
            return;
        }
        let id = format!("{key}{now}");
        if !self
            .deliver(&format!("access-bot: {}", n.kind.as_str()), &text, &id)
            .await
            && let Err(e) = store.unrecord_notice(&key, now, suppressed)
        {
            tracing::warn!(error = %e, "cannot take back the notice that was not sent");
        }
    }

    /// Send a text to every ops channel; true if at least one took it.
    pub async fn deliver(&self, subject: &str, text: &str, id_seed: &str) -> bool {
        if let Some(r) = &self.rehearsal {
            r.record(None, format!("to ops:\n{text}"));
            return true;
        }
        let mut delivered = false;
        if let Some(s) = &self.slack {
            match s.post(text).await {
                Ok(()) => delivered = true,
                Err(e) => tracing::error!(error = %e, "ops notice not delivered to Slack"),
            }
        }
        if let Some(m) = &self.mailer {
            let id = format!(
                "<ops-{}@access-bot>",
                hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(id_seed.as_bytes())[..8])
            );
            match m.send(&m.ops, subject, text, &id).await {
                Ok(()) => delivered = true,
                Err(e) => tracing::error!(error = %e, "ops notice not delivered by e-mail"),
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_blur_numbers_so_one_outage_is_one_notice() {
        assert_eq!(
            notice_key(
                NoticeKind::StepFailed,
                "Zendesk global: HTTP 503 after 4 attempts (issue 12)"
            ),
            notice_key(
                NoticeKind::StepFailed,
                "Zendesk global: HTTP 503 after 4 attempts (issue 97)"
            ),
        );
        assert_ne!(
            notice_key(NoticeKind::StepFailed, "Zendesk global: HTTP 503"),
            notice_key(NoticeKind::StepFailed, "Zendesk federal: HTTP 503"),
        );
    }
}
