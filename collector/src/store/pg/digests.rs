//! The PostgreSQL implementation of `DigestStore`: digests, their recipients' cursors, and the audience feed in arrival order.
//!
//! A digest and its recipient's moved cursor are written in one transaction, so the events it
//! covers are covered exactly once; the cursor is an upsert, never a read then a write.

use tokio_postgres::Row;

use super::super::digests::{Channel, DigestCursor, DigestRecord, DigestStatus, DigestStore};
use super::super::{StoreError, StoreResult, StoredEvent};
use super::PgStore;
use super::incidents::{big, from_ns, ns, pg, unsigned};

pub(super) const DIGEST_COLUMNS: &str = "id, recipient, channel, kind, created_at_ns, subject, body_text, \
     body_html, body_json, events, status, attempts, last_error, next_attempt_ns, sent_at_ns, \
     attachment";

fn status_label(s: DigestStatus) -> &'static str {
    match s {
        DigestStatus::Pending => "pending",
        DigestStatus::Sent => "sent",
    }
}

pub(super) fn digest_from_row(r: &Row) -> StoreResult<DigestRecord> {
    let channel: serde_json::Value = r.get(2);
    let status: String = r.get(10);
    let attempts: i32 = r.get(11);
    let attachment: Option<serde_json::Value> = r.get(15);
    Ok(DigestRecord {
        id: unsigned("digest id", r.get(0))?,
        recipient: r.get(1),
        channel: serde_json::from_value::<Channel>(channel)
            .map_err(|e| StoreError::Corrupt(format!("digest channel: {e}")))?,
        kind: r.get(3),
        created_at: from_ns(r.get(4)),
        subject: r.get(5),
        text: r.get(6),
        html: r.get(7),
        json: r.get(8),
        events: unsigned("digest event count", r.get(9))?,
        status: match status.as_str() {
            "pending" => DigestStatus::Pending,
            "sent" => DigestStatus::Sent,
            other => return Err(StoreError::Corrupt(format!("digest status {other:?}"))),
        },
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("digest attempts {attempts}")))?,
        last_error: r.get(12),
        next_attempt: r.get::<_, Option<i64>>(13).map(from_ns),
        sent_at: r.get::<_, Option<i64>>(14).map(from_ns),
        attachment: attachment
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("digest attachment: {e}")))?,
    })
}

/// A digest's columns after its id, as statement parameters $2..$16.
struct DigestParams {
    recipient: String,
    channel: serde_json::Value,
    kind: String,
    created_at: i64,
    subject: String,
    text: String,
    html: String,
    json: serde_json::Value,
    events: i64,
    status: &'static str,
    attempts: i32,
    last_error: Option<String>,
    next_attempt: Option<i64>,
    sent_at: Option<i64>,
    attachment: Option<serde_json::Value>,
}

impl DigestParams {
    fn of(d: &DigestRecord) -> StoreResult<Self> {
        let json = |what: &str, v: Result<serde_json::Value, serde_json::Error>| {
            v.map_err(|e| StoreError::Conflict(format!("digest {what}: {e}")))
        };
        Ok(DigestParams {
            recipient: d.recipient.clone(),
            channel: json("channel", serde_json::to_value(&d.channel))?,
            kind: d.kind.clone(),
            created_at: ns(d.created_at)?,
            subject: d.subject.clone(),
            text: d.text.clone(),
            html: d.html.clone(),
            json: d.json.clone(),
            events: big("digest event count", d.events)?,
            status: status_label(d.status),
            attempts: i32::try_from(d.attempts).unwrap_or(i32::MAX),
            last_error: d.last_error.clone(),
            next_attempt: d.next_attempt.map(ns).transpose()?,
            sent_at: d.sent_at.map(ns).transpose()?,
            attachment: d
                .attachment
                .as_ref()
                .map(|a| json("attachment", serde_json::to_value(a)))
                .transpose()?,
        })
    }

    fn list(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 15] {
        [
            &self.recipient,
            &self.channel,
            &self.kind,
            &self.created_at,
            &self.subject,
            &self.text,
            &self.html,
            &self.json,
            &self.events,
            &self.status,
            &self.attempts,
            &self.last_error,
            &self.next_attempt,
            &self.sent_at,
            &self.attachment,
        ]
    }
}

/// `INSERT INTO digests` with the id as $1 and the rest as in `DigestParams`.
const INSERT_DIGEST: &str = "INSERT INTO digests (id, recipient, channel, kind, created_at_ns, \
     subject, body_text, body_html, body_json, events, status, attempts, last_error, \
     next_attempt_ns, sent_at_ns, attachment) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

/// Upserts a recipient's cursor ($1 the recipient).
const PUT_CURSOR: &str = "INSERT INTO digest_cursors (recipient, scheduled_from, urgent_from, \
     last_due_ns, urgent_sent_ns) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (recipient) DO UPDATE SET scheduled_from = EXCLUDED.scheduled_from, \
     urgent_from = EXCLUDED.urgent_from, last_due_ns = EXCLUDED.last_due_ns, \
     urgent_sent_ns = EXCLUDED.urgent_sent_ns";

/// A cursor as statement parameters $2..$5.
fn cursor_params(c: &DigestCursor) -> StoreResult<(i64, i64, Option<i64>, Vec<i64>)> {
    Ok((
        big("digest cursor", c.scheduled_from)?,
        big("digest cursor", c.urgent_from)?,
        c.last_due.map(ns).transpose()?,
        c.urgent_sent
            .iter()
            .map(|t| ns(*t))
            .collect::<StoreResult<_>>()?,
    ))
}

impl DigestStore for PgStore {
    fn lead_digests(&self) -> StoreResult<bool> {
        self.lead()
    }

    fn audience_events_from(
        &self,
        audience: &str,
        from: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, StoredEvent)>> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        self.audience_feed(audience, from, limit)
    }

    fn next_timeline_id(&self) -> StoreResult<u64> {
        self.next_arrival_id()
    }

    fn incident_for_group(&self, group_key: &str) -> StoreResult<Option<u64>> {
        let group_key = group_key.to_string();
        self.run(move |c| async move {
            let id: Option<i64> = c
                .query_opt(
                    "SELECT incident FROM incident_groups WHERE group_key = $1",
                    &[&group_key],
                )
                .await
                .map_err(pg)?
                .and_then(|r| r.get(0));
            id.map(|id| unsigned("incident id", id)).transpose()
        })
    }

    fn digest_cursor(&self, recipient: &str) -> StoreResult<DigestCursor> {
        let recipient = recipient.to_string();
        self.run(move |c| async move {
            let Some(r) = c
                .query_opt(
                    "SELECT scheduled_from, urgent_from, last_due_ns, urgent_sent_ns \
                     FROM digest_cursors WHERE recipient = $1",
                    &[&recipient],
                )
                .await
                .map_err(pg)?
            else {
                return Ok(DigestCursor::default());
            };
            Ok(DigestCursor {
                scheduled_from: unsigned("digest cursor", r.get(0))?,
                urgent_from: unsigned("digest cursor", r.get(1))?,
                last_due: r.get::<_, Option<i64>>(2).map(from_ns),
                urgent_sent: r.get::<_, Vec<i64>>(3).into_iter().map(from_ns).collect(),
            })
        })
    }

    fn record_digests(
        &self,
        recipient: &str,
        cursor: &DigestCursor,
        digests: Vec<DigestRecord>,
    ) -> StoreResult<Vec<DigestRecord>> {
        let recipient = recipient.to_string();
        let (scheduled, urgent, due, sent) = cursor_params(cursor)?;
        let params = digests
            .iter()
            .map(DigestParams::of)
            .collect::<StoreResult<Vec<_>>>()?;
        self.run(move |mut c| async move {
            let tx = c.transaction().await.map_err(pg)?;
            let mut out = Vec::with_capacity(digests.len());
            for (mut d, p) in digests.into_iter().zip(&params) {
                // In order, so the ids follow the order the digests were given in.
                let id: i64 = tx
                    .query_one("SELECT nextval('digest_ids')", &[])
                    .await
                    .map_err(pg)?
                    .get(0);
                let mut values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&id];
                values.extend(p.list());
                tx.execute(INSERT_DIGEST, &values).await.map_err(pg)?;
                d.id = unsigned("digest id", id)?;
                out.push(d);
            }
            tx.execute(PUT_CURSOR, &[&recipient, &scheduled, &urgent, &due, &sent])
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            Ok(out)
        })
    }

    fn put_digest_cursor(&self, recipient: &str, cursor: &DigestCursor) -> StoreResult<()> {
        let recipient = recipient.to_string();
        let (scheduled, urgent, due, sent) = cursor_params(cursor)?;
        self.run(move |c| async move {
            c.execute(PUT_CURSOR, &[&recipient, &scheduled, &urgent, &due, &sent])
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn update_digest(&self, d: &DigestRecord) -> StoreResult<()> {
        let id = big("digest id", d.id)?;
        let p = DigestParams::of(d)?;
        self.run(move |c| async move {
            // Written whole, as the redb store does (an upsert on the id), except that a sent
            // digest stays sent: every collector sends the pending digests it finds, and one
            // whose attempt failed must not put back a digest another has delivered, to be
            // sent again.
            let statement = format!(
                "{INSERT_DIGEST} ON CONFLICT (id) DO UPDATE SET recipient = EXCLUDED.recipient, \
                 channel = EXCLUDED.channel, kind = EXCLUDED.kind, \
                 created_at_ns = EXCLUDED.created_at_ns, subject = EXCLUDED.subject, \
                 body_text = EXCLUDED.body_text, body_html = EXCLUDED.body_html, \
                 body_json = EXCLUDED.body_json, events = EXCLUDED.events, \
                 status = EXCLUDED.status, attempts = EXCLUDED.attempts, \
                 last_error = EXCLUDED.last_error, next_attempt_ns = EXCLUDED.next_attempt_ns, \
                 sent_at_ns = EXCLUDED.sent_at_ns, attachment = EXCLUDED.attachment \
                 WHERE digests.status <> 'sent' OR EXCLUDED.status = 'sent'"
            );
            let mut values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&id];
            values.extend(p.list());
            c.execute(&statement, &values).await.map_err(pg)?;
            Ok(())
        })
    }

    fn digest(&self, id: u64) -> StoreResult<Option<DigestRecord>> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.one(
            format!("SELECT {DIGEST_COLUMNS} FROM digests WHERE id = $1"),
            vec![Box::new(id)],
            digest_from_row,
        )
    }

    fn digests(&self, before: Option<u64>, limit: usize) -> StoreResult<Vec<DigestRecord>> {
        let upper = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| async move {
            c.query(
                &format!(
                    "SELECT {DIGEST_COLUMNS} FROM digests WHERE id < $1 ORDER BY id DESC LIMIT $2"
                ),
                &[&upper, &limit],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(digest_from_row)
            .collect()
        })
    }

    fn pending_digests(&self) -> StoreResult<Vec<DigestRecord>> {
        self.run(move |c| async move {
            c.query(
                &format!(
                    "SELECT {DIGEST_COLUMNS} FROM digests WHERE status = 'pending' ORDER BY id"
                ),
                &[],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(digest_from_row)
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    //! What the contract suite cannot show: two collectors sending the same pending digest.

    use chrono::{Duration, Utc};
    use serde_json::json;

    use super::super::PgStore;
    use super::super::rig::test_database;
    use crate::store::{Channel, DigestCursor, DigestRecord, DigestStatus, DigestStore};

    #[test]
    fn a_digest_one_collector_sent_is_not_put_back_by_another_whose_attempt_failed() {
        let (url, _guard) = test_database();
        let a = PgStore::connect(&url).unwrap();
        let b = PgStore::connect(&url).unwrap();
        let pending = DigestRecord {
            id: 0,
            recipient: "ann".into(),
            channel: Channel::Webhook {
                url: "https://hooks.school.example/dsl".into(),
                kind: "json".into(),
            },
            kind: "urgent".into(),
            created_at: Utc::now(),
            subject: "Urgent".into(),
            text: "text".into(),
            html: "<p>html</p>".into(),
            json: json!({"events": 2}),
            events: 2,
            status: DigestStatus::Pending,
            attempts: 0,
            last_error: None,
            next_attempt: None,
            sent_at: None,
            attachment: None,
        };
        let recorded = a
            .record_digests("ann", &DigestCursor::default(), vec![pending])
            .unwrap()
            .remove(0);
        // Both collectors found it pending and tried it: `a` delivered, `b` timed out.
        let mut sent = recorded.clone();
        sent.status = DigestStatus::Sent;
        sent.attempts = 1;
        sent.sent_at = Some(Utc::now());
        let mut failed = recorded.clone();
        failed.attempts = 1;
        failed.last_error = Some("timed out".into());
        failed.next_attempt = Some(Utc::now() + Duration::minutes(1));
        a.update_digest(&sent).unwrap();
        b.update_digest(&failed).unwrap();
        assert_eq!(b.digest(recorded.id).unwrap(), Some(sent.clone()));
        assert!(
            a.pending_digests().unwrap().is_empty(),
            "not to be sent again"
        );

        // A failure recorded before the delivery is overwritten by it, as on one collector.
        let mut second = recorded;
        second.id = 0;
        let second = b
            .record_digests("ann", &DigestCursor::default(), vec![second])
            .unwrap()
            .remove(0);
        let mut failed = second.clone();
        failed.attempts = 1;
        failed.last_error = Some("refused".into());
        b.update_digest(&failed).unwrap();
        assert_eq!(a.pending_digests().unwrap(), [failed.clone()]);
        let mut delivered = failed;
        delivered.status = DigestStatus::Sent;
        delivered.attempts = 2;
        delivered.sent_at = Some(Utc::now());
        a.update_digest(&delivered).unwrap();
        assert_eq!(b.digest(second.id).unwrap(), Some(delivered));
        assert!(b.pending_digests().unwrap().is_empty());
    }
}
