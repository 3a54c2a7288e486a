//! The sled implementation of `DigestStore`: digests, their cursors, and reading the DSL's events in arrival order.

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::digests::{DigestCursor, DigestRecord, DigestStatus, DigestStore};
use super::sled_store::{Engine, IDX_AUDIENCE, decode, encode, engine, idx_key};
use super::{StoreError, StoreResult, StoredEvent};

fn id_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

impl DigestStore for Engine {
    fn audience_events_from(
        &self,
        audience: &str,
        from: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, StoredEvent)>> {
        let from = idx_key(IDX_AUDIENCE, audience, from);
        let to = idx_key(IDX_AUDIENCE, audience, u64::MAX);
        let mut out = Vec::new();
        for item in self.idx.range(from..to).take(limit) {
            let (k, ev_key) = item.map_err(engine)?;
            let tid = u64::from_be_bytes(
                k[k.len() - 8..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("index key".into()))?,
            );
            if let Some(v) = self.events_tree().get(&ev_key).map_err(engine)? {
                out.push((tid, decode("event", &v)?));
            }
        }
        Ok(out)
    }

    fn next_timeline_id(&self) -> StoreResult<u64> {
        Ok(self
            .timeline_tree()
            .last()
            .map_err(engine)?
            .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes))
            .map_or(0, |last| last + 1))
    }

    fn incident_for_group(&self, group_key: &str) -> StoreResult<Option<u64>> {
        Ok(self
            .incident_open
            .get(group_key.as_bytes())
            .map_err(engine)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    fn digest_cursor(&self, recipient: &str) -> StoreResult<DigestCursor> {
        Ok(self
            .digest_cursors
            .get(recipient.as_bytes())
            .map_err(engine)?
            .map(|v| decode("digest cursor", &v))
            .transpose()?
            .unwrap_or_default())
    }

    fn record_digests(
        &self,
        recipient: &str,
        cursor: &DigestCursor,
        digests: Vec<DigestRecord>,
    ) -> StoreResult<Vec<DigestRecord>> {
        let mut ids = Vec::with_capacity(digests.len());
        for _ in &digests {
            ids.push(self.next_id()?);
        }
        let result = (&self.digests, &self.digest_pending, &self.digest_cursors).transaction(
            |(all, pending, cursors)| {
                let mut out = Vec::with_capacity(digests.len());
                for (d, id) in digests.iter().zip(&ids) {
                    let mut d = d.clone();
                    d.id = *id;
                    all.insert(&id_key(d.id), encode(&d))?;
                    if d.status == DigestStatus::Pending {
                        pending.insert(&id_key(d.id), &[])?;
                    }
                    out.push(d);
                }
                cursors.insert(recipient.as_bytes(), encode(cursor))?;
                Ok::<_, ConflictableTransactionError<StoreError>>(out)
            },
        );
        let out = result.map_err(|e: TransactionError<StoreError>| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => engine(e),
        })?;
        self.flush()?;
        Ok(out)
    }

    fn put_digest_cursor(&self, recipient: &str, cursor: &DigestCursor) -> StoreResult<()> {
        self.digest_cursors
            .insert(recipient.as_bytes(), encode(cursor))
            .map_err(engine)?;
        self.flush()
    }

    fn update_digest(&self, d: &DigestRecord) -> StoreResult<()> {
        let result = (&self.digests, &self.digest_pending).transaction(|(all, pending)| {
            all.insert(&id_key(d.id), encode(d))?;
            if d.status == DigestStatus::Pending {
                pending.insert(&id_key(d.id), &[])?;
            } else {
                pending.remove(&id_key(d.id))?;
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        });
        result.map_err(|e: TransactionError<StoreError>| engine(e))?;
        self.flush()
    }

    fn digest(&self, id: u64) -> StoreResult<Option<DigestRecord>> {
        self.digests
            .get(id_key(id))
            .map_err(engine)?
            .map(|v| decode("digest", &v))
            .transpose()
    }

    fn digests(&self, before: Option<u64>, limit: usize) -> StoreResult<Vec<DigestRecord>> {
        self.digests
            .range(..id_key(before.unwrap_or(u64::MAX)))
            .rev()
            .take(limit)
            .map(|r| r.map_err(engine).and_then(|(_, v)| decode("digest", &v)))
            .collect()
    }

    fn pending_digests(&self) -> StoreResult<Vec<DigestRecord>> {
        let mut out = Vec::new();
        for item in self.digest_pending.iter() {
            let (k, _) = item.map_err(engine)?;
            let id = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("digest key".into()))?,
            );
            if let Some(d) = self.digest(id)? {
                out.push(d);
            }
        }
        Ok(out)
    }
}
