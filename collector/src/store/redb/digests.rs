//! The redb implementation of `DigestStore`: digests, their cursors, and reading the DSL's events in arrival order.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::super::digests::{DigestCursor, DigestRecord, DigestStatus, DigestStore};
use super::super::{StoreResult, StoredEvent};
use super::accounts::{Commit, put_json, write};
use super::incidents::INCIDENT_OPEN;
use super::{Engine, decode, encode, engine};

/// Digest id → digest (JSON). Ids are the last one plus one (digests are never removed).
pub(super) const DIGESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("digests");
/// Ids of the digests still to deliver, so a retry pass does not read every digest.
pub(super) const DIGEST_PENDING: TableDefinition<u64, ()> = TableDefinition::new("digest_pending");
/// Recipient → cursor (JSON).
pub(super) const DIGEST_CURSORS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("digest_cursors");

/// Creates this module's tables, so that a read before the first digest finds them empty.
pub(super) fn create_tables(txn: &WriteTransaction) -> StoreResult<()> {
    txn.open_table(DIGESTS).map_err(engine)?;
    txn.open_table(DIGEST_PENDING).map_err(engine)?;
    txn.open_table(DIGEST_CURSORS).map_err(engine)?;
    Ok(())
}

/// Stores a digest and keeps the pending set in step with its status.
fn put(txn: &WriteTransaction, d: &DigestRecord) -> StoreResult<()> {
    txn.open_table(DIGESTS)
        .map_err(engine)?
        .insert(d.id, encode(d).as_slice())
        .map_err(engine)?;
    let mut pending = txn.open_table(DIGEST_PENDING).map_err(engine)?;
    if d.status == DigestStatus::Pending {
        pending.insert(d.id, ()).map_err(engine)?;
    } else {
        pending.remove(d.id).map_err(engine)?;
    }
    Ok(())
}

impl DigestStore for Engine {
    fn audience_events_from(
        &self,
        audience: &str,
        from: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, StoredEvent)>> {
        self.audience_events_from_arrival(audience, from, limit)
    }

    fn next_timeline_id(&self) -> StoreResult<u64> {
        self.next_arrival_id()
    }

    fn incident_for_group(&self, group_key: &str) -> StoreResult<Option<u64>> {
        let txn = self.db.begin_read().map_err(engine)?;
        let t = txn.open_table(INCIDENT_OPEN).map_err(engine)?;
        Ok(t.get(group_key).map_err(engine)?.map(|v| v.value()))
    }

    fn digest_cursor(&self, recipient: &str) -> StoreResult<DigestCursor> {
        let txn = self.db.begin_read().map_err(engine)?;
        let t = txn.open_table(DIGEST_CURSORS).map_err(engine)?;
        Ok(t.get(recipient)
            .map_err(engine)?
            .map(|v| decode("digest cursor", v.value()))
            .transpose()?
            .unwrap_or_default())
    }

    fn record_digests(
        &self,
        recipient: &str,
        cursor: &DigestCursor,
        digests: Vec<DigestRecord>,
    ) -> StoreResult<Vec<DigestRecord>> {
        write(self, Commit::Durable, |txn| {
            let last = txn
                .open_table(DIGESTS)
                .map_err(engine)?
                .last()
                .map_err(engine)?
                .map(|(k, _)| k.value());
            let first = super::next_id(txn, last, super::privacy::FLOOR_DIGESTS)?;
            let mut out = Vec::with_capacity(digests.len());
            for (id, mut d) in (first..).zip(digests) {
                d.id = id;
                put(txn, &d)?;
                out.push(d);
            }
            txn.open_table(DIGEST_CURSORS)
                .map_err(engine)?
                .insert(recipient, encode(cursor).as_slice())
                .map_err(engine)?;
            Ok(out)
        })
    }

    fn put_digest_cursor(&self, recipient: &str, cursor: &DigestCursor) -> StoreResult<()> {
        put_json(self, Commit::Durable, DIGEST_CURSORS, recipient, cursor)
    }

    fn update_digest(&self, d: &DigestRecord) -> StoreResult<()> {
        write(self, Commit::Durable, |txn| put(txn, d))
    }

    fn digest(&self, id: u64) -> StoreResult<Option<DigestRecord>> {
        let txn = self.db.begin_read().map_err(engine)?;
        let t = txn.open_table(DIGESTS).map_err(engine)?;
        t.get(id)
            .map_err(engine)?
            .map(|v| decode("digest", v.value()))
            .transpose()
    }

    fn digests(&self, before: Option<u64>, limit: usize) -> StoreResult<Vec<DigestRecord>> {
        let txn = self.db.begin_read().map_err(engine)?;
        let t = txn.open_table(DIGESTS).map_err(engine)?;
        t.range(..before.unwrap_or(u64::MAX))
            .map_err(engine)?
            .rev()
            .take(limit)
            .map(|r| {
                r.map_err(engine)
                    .and_then(|(_, v)| decode("digest", v.value()))
            })
            .collect()
    }

    fn pending_digests(&self) -> StoreResult<Vec<DigestRecord>> {
        let txn = self.db.begin_read().map_err(engine)?;
        let pending = txn.open_table(DIGEST_PENDING).map_err(engine)?;
        let all = txn.open_table(DIGESTS).map_err(engine)?;
        let mut out = Vec::new();
        for item in pending.iter().map_err(engine)? {
            let (k, _) = item.map_err(engine)?;
            if let Some(v) = all.get(k.value()).map_err(engine)? {
                out.push(decode("digest", v.value())?);
            }
        }
        Ok(out)
    }
}
