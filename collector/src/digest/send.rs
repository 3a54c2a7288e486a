//! Delivering a recorded digest: SMTP with STARTTLS and authentication (lettre), or a webhook (generic JSON or a Teams card).
//!
//! Each digest carries a stable identity (its Message-ID, its webhook `Idempotency-Key`), so
//! the one resend that a crash between "delivered" and "recorded" can cause is the same
//! message, which mail systems and webhook receivers can recognise.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::settings::Smtp;
use crate::store::{Channel, DigestRecord};

/// Why a send failed, in words for the dashboard.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("mail is not set up: add the SMTP relay in Settings")]
    NoSmtp,
    #[error("the mail settings are wrong: {0}")]
    Config(String),
    #[error("the mail server refused or could not be reached: {0}")]
    Smtp(String),
    #[error("the webhook failed: {0}")]
    Webhook(String),
}

/// The Message-ID of a digest: the same on every attempt.
pub fn message_id(d: &DigestRecord, from: &str) -> String {
    let domain = from
        .rsplit('@')
        .next()
        .map(|d| d.trim_end_matches('>'))
        .filter(|d| !d.is_empty())
        .unwrap_or("caretaker.invalid");
    format!("<caretaker-digest-{}@{domain}>", d.id)
}

/// Delivers one digest over its channel.
pub async fn deliver(d: &DigestRecord, smtp: Option<&Smtp>) -> Result<(), SendError> {
    match &d.channel {
        Channel::Email { address } => send_mail(d, address, smtp.ok_or(SendError::NoSmtp)?).await,
        Channel::Webhook { url, kind } => send_webhook(d, url, kind).await,
    }
}

async fn send_mail(d: &DigestRecord, to: &str, smtp: &Smtp) -> Result<(), SendError> {
    let config = |e: String| SendError::Config(e);
    let from: Mailbox = smtp
        .from
        .parse()
        .map_err(|e| config(format!("the sender {:?}: {e}", smtp.from)))?;
    let to: Mailbox = to
        .parse()
        .map_err(|e| config(format!("the address {to:?}: {e}")))?;
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(&d.subject)
        .message_id(Some(message_id(d, &smtp.from)))
        .multipart(body(d)?)
        .map_err(|e| config(e.to_string()))?;
    let mut tls = TlsParameters::builder(smtp.host.clone());
    if !smtp.ca_file.is_empty() {
        let pem = std::fs::read(&smtp.ca_file)
            .map_err(|e| config(format!("cannot read {}: {e}", smtp.ca_file)))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| config(format!("{} is not a PEM certificate: {e}", smtp.ca_file)))?;
        tls = tls.add_root_certificate(cert);
    }
    let tls = tls
        .build_rustls()
        .map_err(|e| config(format!("TLS: {e}")))?;
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
        .port(smtp.port)
        .timeout(Some(Duration::from_secs(30)))
        .tls(match smtp.security.as_str() {
            "tls" => Tls::Wrapper(tls),
            "none" => Tls::None,
            _ => Tls::Required(tls),
        });
    if !smtp.username.is_empty() {
        let password = std::fs::read_to_string(&smtp.password_file).map_err(|e| {
            config(format!(
                "cannot read the password file {:?}: {e}",
                smtp.password_file
            ))
        })?;
        transport = transport.credentials(Credentials::new(
            smtp.username.clone(),
            password.trim_end().to_string(),
        ));
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| SendError::Smtp(e.to_string()))
}

/// The text and HTML alternatives, with the attachment (a report's PDF) when there is one.
fn body(d: &DigestRecord) -> Result<MultiPart, SendError> {
    use base64::Engine;
    let alternative = MultiPart::alternative_plain_html(d.text.clone(), d.html.clone());
    let Some(a) = &d.attachment else {
        return Ok(alternative);
    };
    let data = base64::engine::general_purpose::STANDARD
        .decode(&a.data_base64)
        .map_err(|e| SendError::Config(format!("the recorded attachment is damaged: {e}")))?;
    let content_type = ContentType::parse(&a.content_type)
        .map_err(|e| SendError::Config(format!("attachment type: {e}")))?;
    Ok(MultiPart::mixed()
        .multipart(alternative)
        .singlepart(lettre::message::Attachment::new(a.name.clone()).body(data, content_type)))
}

async fn send_webhook(d: &DigestRecord, url: &str, kind: &str) -> Result<(), SendError> {
    let body = if kind == "teams" {
        d.json
            .get("teams")
            .cloned()
            .unwrap_or_else(|| d.json.clone())
    } else {
        d.json
            .get("generic")
            .cloned()
            .unwrap_or_else(|| d.json.clone())
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| SendError::Webhook(e.to_string()))?;
    let resp = client
        .post(url)
        .header("Idempotency-Key", format!("caretaker-digest-{}", d.id))
        .json(&body)
        .send()
        .await
        .map_err(|e| SendError::Webhook(e.to_string()))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(SendError::Webhook(format!(
            "the receiver answered {}",
            resp.status()
        )))
    }
}
