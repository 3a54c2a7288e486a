//! The redb store's small records: enrolment tokens and policy versions.

use std::ops::Bound;

use chrono::{DateTime, Utc};
use redb::{ReadableDatabase, ReadableTable};
use serde_json::Value;

use super::super::{PolicyVersion, StoreResult, TokenRecord, TokenRefusal};
use super::{Engine, POLICIES, TOKENS, decode, encode, engine};

pub(super) fn insert_token(s: &Engine, token: &TokenRecord) -> StoreResult<()> {
    let txn = s.db.begin_write().map_err(engine)?;
    txn.open_table(TOKENS)
        .map_err(engine)?
        .insert(token.hash.as_str(), encode(token).as_slice())
        .map_err(engine)?;
    txn.commit().map_err(engine)
}

/// Uses a token once if it is valid at `now`. Atomic against concurrent use: redb runs one
/// write transaction at a time, and the read is inside it.
pub(super) fn use_token(
    s: &Engine,
    hash: &str,
    now: DateTime<Utc>,
) -> StoreResult<Result<TokenRecord, TokenRefusal>> {
    let txn = s.db.begin_write().map_err(engine)?;
    let used = {
        let mut tokens = txn.open_table(TOKENS).map_err(engine)?;
        let Some(raw) = tokens.get(hash).map_err(engine)? else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        let mut t: TokenRecord = decode("token", raw.value())?;
        drop(raw);
        if now >= t.expires_at {
            return Ok(Err(TokenRefusal::Expired));
        }
        if t.uses >= t.max_uses {
            return Ok(Err(TokenRefusal::UsedUp));
        }
        t.uses += 1;
        tokens.insert(hash, encode(&t).as_slice()).map_err(engine)?;
        t
    };
    txn.commit().map_err(engine)?;
    Ok(Ok(used))
}

pub(super) fn current_policy(s: &Engine) -> StoreResult<Option<PolicyVersion>> {
    let txn = s.db.begin_read().map_err(engine)?;
    let policies = txn.open_table(POLICIES).map_err(engine)?;
    policies
        .last()
        .map_err(engine)?
        .map(|(_, v)| decode("policy", v.value()))
        .transpose()
}

/// Stores `policy` as the version after the last one (inside the write transaction, so two
/// writers cannot take the same number).
pub(super) fn put_policy(
    s: &Engine,
    policy: Value,
    changed_by: &str,
    at: DateTime<Utc>,
) -> StoreResult<PolicyVersion> {
    let txn = s.db.begin_write().map_err(engine)?;
    let pv = {
        let mut policies = txn.open_table(POLICIES).map_err(engine)?;
        let version = policies
            .last()
            .map_err(engine)?
            .map_or(1, |(k, _)| k.value() + 1);
        let pv = PolicyVersion {
            version,
            policy,
            changed_by: changed_by.to_string(),
            changed_at: at,
        };
        policies
            .insert(version, encode(&pv).as_slice())
            .map_err(engine)?;
        pv
    };
    txn.commit().map_err(engine)?;
    Ok(pv)
}

pub(super) fn policy_history(s: &Engine) -> StoreResult<Vec<PolicyVersion>> {
    let txn = s.db.begin_read().map_err(engine)?;
    super::all(&txn.open_table(POLICIES).map_err(engine)?, "policy")
}

/// Up to `limit` versions below `before`, newest first, and whether older ones remain: reads
/// only the page.
pub(super) fn policy_page(
    s: &Engine,
    before: Option<u64>,
    limit: usize,
) -> StoreResult<(Vec<PolicyVersion>, bool)> {
    let txn = s.db.begin_read().map_err(engine)?;
    let policies = txn.open_table(POLICIES).map_err(engine)?;
    let mut page = Vec::with_capacity(limit.min(100));
    let mut more = false;
    let upper = before.map_or(Bound::Unbounded, Bound::Excluded);
    for r in policies
        .range::<u64>((Bound::Unbounded, upper))
        .map_err(engine)?
        .rev()
    {
        if page.len() == limit {
            more = true;
            break;
        }
        let (_, v) = r.map_err(engine)?;
        page.push(decode("policy", v.value())?);
    }
    Ok((page, more))
}
