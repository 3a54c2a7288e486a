//! The PostgreSQL store's reads of events: the API's pages newest first, one device's events from a sequence on, and the audience feed in arrival order.
//!
//! A page walks one access path (an index) newest first, as the embedded store does: the
//! DSL's or network manager's partial index, the user's, the device's (by sequence), the
//! kind's, or the arrival order. The other filters apply to what the walk reads, and a walk
//! reads at most `MAX_SCAN` entries before it returns a (possibly short) page with a cursor.

use crate::store::AccessPath;
use tokio_postgres::types::ToSql;

use super::PgStore;
use super::events::{EVENT_COLUMNS, event_from_row};
use super::incidents::{ns, pg};
use crate::rules::{DSL, NETWORK_MANAGER};
use crate::store::{EventPage, EventQuery, StoreResult, StoredEvent};

/// Most index entries one page request reads (as in the embedded store).
const MAX_SCAN: i64 = 200_000;

/// How many events `device_events_after` reads per round trip.
const CHUNK: i64 = 5_000;

type Param = Box<dyn ToSql + Sync + Send>;

/// A statement's parameters, numbered as they are bound.
#[derive(Default)]
struct Params(Vec<Param>);

impl Params {
    fn bind(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(v));
        format!("${}", self.0.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// "The audience includes `role`". The known roles are written as literals so that the
/// planner can use their partial indexes (a parameter would hide which index applies).
fn audience_has(role: &str, p: &mut Params) -> String {
    match role {
        DSL => format!("audience @> ARRAY['{DSL}']::text[]"),
        NETWORK_MANAGER => format!("audience @> ARRAY['{NETWORK_MANAGER}']::text[]"),
        other => format!("audience @> ARRAY[{}]::text[]", p.bind(other.to_string())),
    }
}

/// The index a page walks: its predicate, its key column and its cursor's tag.
struct Path {
    predicate: fn(&EventQuery, &mut Params) -> String,
    key: &'static str,
    tag: char,
}

fn by_id(predicate: fn(&EventQuery, &mut Params) -> String) -> Path {
    Path {
        predicate,
        key: "id",
        tag: 't',
    }
}

/// The most selective access path first (as the embedded store chooses).
fn path_of(q: &EventQuery) -> Path {
    match q.access_path() {
        AccessPath::Audience(_) => {
            by_id(|q, p| audience_has(q.audience.as_deref().unwrap_or_default(), p))
        }
        AccessPath::User(_) => by_id(|q, p| format!("\"user\" = {}", p.bind(q.user.clone()))),
        AccessPath::Device(_) => Path {
            predicate: |q, p| format!("device_id = {}", p.bind(q.device.clone())),
            key: "seq",
            tag: 's',
        },
        AccessPath::Kind(_) => by_id(|q, p| format!("kind = {}", p.bind(q.kind.clone()))),
        AccessPath::Timeline => by_id(|_, _| "TRUE".to_string()),
    }
}

/// Every filter of `q` as one SQL condition (the path's own is among them, harmlessly).
fn filters(q: &EventQuery, p: &mut Params) -> StoreResult<String> {
    let mut all = vec!["TRUE".to_string()];
    if let Some(d) = &q.device {
        all.push(format!("device_id = {}", p.bind(d.clone())));
    }
    if let Some(k) = &q.kind {
        all.push(format!("kind = {}", p.bind(k.clone())));
    }
    if let Some(u) = &q.user {
        all.push(format!("\"user\" = {}", p.bind(u.clone())));
    }
    if let Some(s) = &q.severity {
        all.push(format!("severity = {}", p.bind(s.clone())));
    }
    if let Some(a) = &q.audience {
        all.push(audience_has(a, p));
    }
    if let Some(a) = &q.exclude_audience {
        all.push(format!("NOT {}", audience_has(a, p)));
    }
    for (bound, column, op) in [
        (q.since, "occurred_at_ns", ">="),
        (q.until, "occurred_at_ns", "<"),
        (q.received_since, "received_at_ns", ">="),
        (q.received_until, "received_at_ns", "<"),
    ] {
        if let Some(t) = bound {
            all.push(format!("{column} {op} {}", p.bind(ns(t)?)));
        }
    }
    Ok(all.join(" AND "))
}

/// One page of `q`: the matching events among the next `MAX_SCAN` entries of its path, newest
/// first, and a cursor at the last entry read when older ones remain.
async fn page(client: deadpool_postgres::Object, q: EventQuery) -> StoreResult<EventPage> {
    let path = path_of(&q);
    let key = path.key;
    let below = q
        .cursor_position(path.tag)?
        .map_or(i64::MAX, |c| i64::try_from(c).unwrap_or(i64::MAX));
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);

    let mut p = Params::default();
    let walk = (path.predicate)(&q, &mut p);
    let below_at = p.bind(below);
    let matching = filters(&q, &mut p)?;
    let limit_at = p.bind(limit);
    let rows = client
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM (\
                     SELECT * FROM events WHERE {walk} AND {key} < {below_at} \
                     ORDER BY {key} DESC LIMIT {MAX_SCAN}) walked \
                 WHERE {matching} ORDER BY {key} DESC LIMIT {limit_at}"
            ),
            &p.refs(),
        )
        .await
        .map_err(pg)?;
    let mut events = Vec::with_capacity(rows.len());
    let mut last = None;
    for row in &rows {
        let (id, e) = event_from_row(row)?;
        last = Some(if path.tag == 's' {
            row.get::<_, i64>(2)
        } else {
            id
        });
        events.push(e);
    }
    if rows.len() as i64 != limit || limit == 0 {
        // A short page: the walk ended, or it read `MAX_SCAN` entries; then it stopped at the
        // last of them, matching or not.
        let mut p = Params::default();
        let walk = (path.predicate)(&q, &mut p);
        let below_at = p.bind(below);
        last = client
            .query_opt(
                &format!(
                    "SELECT {key} FROM events WHERE {walk} AND {key} < {below_at} \
                     ORDER BY {key} DESC OFFSET {} LIMIT 1",
                    MAX_SCAN - 1
                ),
                &p.refs(),
            )
            .await
            .map_err(pg)?
            .map(|r| r.get(0));
    }
    let next = match last {
        Some(last) => {
            let mut p = Params::default();
            let walk = (path.predicate)(&q, &mut p);
            let last_at = p.bind(last);
            let older: bool = client
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM events WHERE {walk} AND {key} < {last_at})"
                    ),
                    &p.refs(),
                )
                .await
                .map_err(pg)?
                .get(0);
            older.then(|| format!("{}{last}", path.tag))
        }
        None => None,
    };
    Ok(EventPage { events, next })
}

impl PgStore {
    pub(super) fn event_page(&self, query: &EventQuery) -> StoreResult<EventPage> {
        let q = query.clone();
        self.run(|c| page(c, q))
    }

    /// The highest sequence stored for `device` above `after`, if any: where
    /// `Store::device_events_after` stops (taken first, so what it returns is exactly what it
    /// visited, and events stored meanwhile are left for the next call).
    pub(super) fn highest_seq_above(&self, device: &str, after: i64) -> StoreResult<Option<i64>> {
        let d = device.to_string();
        self.run(move |c| async move {
            Ok(c.query_one(
                "SELECT max(seq) FROM events WHERE device_id = $1 AND seq > $2",
                &[&d, &after],
            )
            .await
            .map_err(pg)?
            .get(0))
        })
    }

    /// Up to `CHUNK` of `device`'s events with a sequence in `(from, through]` whose kind
    /// starts with `kind_prefix`, in sequence order, and whether the chunk was full (more may
    /// follow the last).
    pub(super) fn device_chunk(
        &self,
        device: &str,
        (from, through): (i64, i64),
        kind_prefix: &str,
    ) -> StoreResult<(Vec<StoredEvent>, bool)> {
        let (d, prefix) = (device.to_string(), kind_prefix.to_string());
        let chunk = self.run(move |c| async move {
            c.query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events \
                     WHERE device_id = $1 AND seq > $2 AND seq <= $3 \
                         AND starts_with(kind, $4) \
                     ORDER BY seq LIMIT {CHUNK}"
                ),
                &[&d, &from, &through, &prefix],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| event_from_row(r).map(|(_, e)| e))
            .collect::<StoreResult<Vec<_>>>()
        })?;
        let full = chunk.len() as i64 == CHUNK;
        Ok((chunk, full))
    }

    /// Events whose audience includes `audience`, from arrival id `from` on, oldest first.
    pub(super) fn audience_feed(
        &self,
        audience: &str,
        from: i64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, StoredEvent)>> {
        let mut p = Params::default();
        let has = audience_has(audience, &mut p);
        let from_at = p.bind(from);
        let limit_at = p.bind(i64::try_from(limit).unwrap_or(i64::MAX));
        self.run(move |c| async move {
            c.query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE {has} AND id >= {from_at} \
                     ORDER BY id LIMIT {limit_at}"
                ),
                &p.refs(),
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| event_from_row(r).map(|(id, e)| (id as u64, e)))
            .collect()
        })
    }

    /// The arrival id the next stored event will have at the least.
    pub(super) fn next_arrival_id(&self) -> StoreResult<u64> {
        self.run(|c| async move {
            let next: i64 = c
                .query_one("SELECT next_id FROM arrival_clock", &[])
                .await
                .map_err(pg)?
                .get(0);
            Ok(next as u64)
        })
    }
}
