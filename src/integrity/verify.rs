//! Tamper evidence: `es_verify` walks the hash chains (event_store_core::integrity::chain) and checks
//! the registry, the global positions and, on request, the snapshots.
use crate::fold::reducers::rules;
use crate::pg::jsonb::{Json, StateJsonb};
use crate::pg::schema::{self, column, nullable, OrRaise};
use event_store_core::fold::rules::initial_state;
use event_store_core::integrity::chain::{event_hash, Anchor, Content, Head, StreamCheck, GENESIS};
use event_store_core::stream::category;
use event_store_core::time::PG_EPOCH_US;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::collections::HashMap;

/// Hash of one event chained to `prev` (NULL for a stream's first event: the chain starts
/// from event_store_core::integrity::chain::GENESIS); used by es_append so both sides share one recipe.
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, parallel_safe, schema = "_event_store")]
fn _es_event_hash(
    prev: Option<&[u8]>,
    event_id: pgrx::Uuid,
    stream_id: &str,
    stream_version: i64,
    global_position: i64,
    event_type: &str,
    event_version: i32,
    created_at: TimestampWithTimeZone,
    event_data: &str,
    metadata: &str,
    tags: default!(Vec<String>, "'{}'"),
) -> Vec<u8> {
    let id = event_id.to_string();
    let content = Content {
        event_id: &id,
        stream_id,
        stream_version,
        global_position,
        event_type,
        event_version,
        created_at_unix_us: created_at.into_inner() + PG_EPOCH_US,
        event_data,
        metadata,
        tags: &tags,
    };
    event_hash(prev.unwrap_or(&GENESIS), &content).to_vec()
}

/// The events `walk_chains` reads, those `filter` keeps, in chain order.
/// Each without tags too, for event_store before 0.5.0 (`schema::tagged`).
macro_rules! chain_sql {
    ($filter:literal) => {
        [
            chain_sql!($filter, "'{}'::pg_catalog.text[]"),
            chain_sql!($filter, "tags"),
        ]
    };
    ($filter:literal, $tags:literal) => {
        concat!(
            "SELECT stream_id, stream_version, hash, event_id::text, global_position, \
             event_type, event_version, created_at, event_data::text, metadata::text, ",
            $tags,
            " FROM _event_store.log WHERE ",
            $filter,
            " ORDER BY stream_id, stream_version, global_position"
        )
    };
}
pub(crate) use chain_sql;

const EVENTS_SQL: [&str; 2] = chain_sql!("$1::text IS NULL OR stream_id = $1");

const HEADS_SQL: &str =
    "SELECT stream_id, version, coalesce(head_hash, ''::bytea), first_at, last_at, \
    last_position FROM _event_store.es_streams WHERE $1::text IS NULL OR stream_id = $1";

/// Positions that two events share, or that lie beyond what the sequence handed out (a
/// `setval` back, which would make later appends reuse them).
const POSITIONS_SQL: &str = "SELECT e.stream_id, e.stream_version, e.global_position, \
         CASE WHEN e.global_position > q.last THEN 'position' ELSE 'duplicate position' END, \
         CASE WHEN e.global_position > q.last \
              THEN format('global position %s is beyond the last one handed out (%s): the sequence was set back', e.global_position, q.last) \
              ELSE format('global position %s is also held by another event', e.global_position) END \
    FROM _event_store.log e, \
         (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS last \
            FROM _event_store.es_global_position_seq) q \
   WHERE ($1::text IS NULL OR e.stream_id = $1) \
     AND (e.global_position > q.last OR EXISTS ( \
          SELECT FROM _event_store.log o WHERE o.global_position = e.global_position \
             AND (o.stream_id, o.stream_version) <> (e.stream_id, e.stream_version))) \
   ORDER BY e.stream_id, e.stream_version";

/// Event ids held by more than one event: es_append claims every id (es_event_ids), so only
/// rows written behind its back can share one. Over all streams one grouping pass; for one
/// stream, a probe of the id index per event.
const IDS_SQL: [&str; 2] = [
    "SELECT e.stream_id, e.stream_version, e.event_id::text, d.n - 1 \
       FROM (SELECT event_id, count(*) AS n FROM _event_store.log \
              GROUP BY event_id HAVING count(*) > 1) d \
       JOIN _event_store.log e ON e.event_id = d.event_id \
      ORDER BY e.stream_id, e.stream_version",
    "SELECT e.stream_id, e.stream_version, e.event_id::text, o.n \
       FROM _event_store.log e, \
            LATERAL (SELECT count(*) AS n FROM _event_store.log x \
                      WHERE x.event_id = e.event_id \
                        AND (x.stream_id, x.stream_version) <> (e.stream_id, e.stream_version)) o \
      WHERE e.stream_id = $1 AND o.n > 0 \
      ORDER BY e.stream_version",
];

const ANCHORS_SQL: &str =
    "SELECT stream_id, first_version, prev_hash, prev_position FROM _event_store.es_anchors \
      WHERE $1::text IS NULL OR stream_id = $1";

/// Where es_apply_retention cut streams (all, or one), with the position of the last removed
/// event; none with 0.1.0's SQL, before ALTER EXTENSION UPDATE.
pub fn anchors(client: &SpiClient<'_>, stream_id: Option<&str>) -> HashMap<String, (Anchor, i64)> {
    if schema::try_relation(c"es_anchors").is_none() {
        return HashMap::new();
    }
    client
        .select(schema::qualified(ANCHORS_SQL), None, &[stream_id.into()])
        .or_raise("reading es_anchors")
        .map(|r| {
            let anchor = Anchor {
                first_version: column(&r, 2, "es_anchors.first_version"),
                prev_hash: column(&r, 3, "es_anchors.prev_hash"),
            };
            (
                column(&r, 1, "es_anchors.stream_id"),
                (anchor, column(&r, 4, "es_anchors.prev_position")),
            )
        })
        .collect()
}

/// A problem as es_verify reports it: stream, version, kind, detail.
pub type Row = (String, Option<i64>, String, String);

fn micros(t: TimestampWithTimeZone) -> i64 {
    t.into_inner() + PG_EPOCH_US
}

/// Walks the hash chains and checks the registry against them.
fn verify_chains(client: &SpiClient<'_>, stream_id: Option<&str>, out: &mut Vec<Row>) {
    let mut heads: HashMap<String, Head> = HashMap::new();
    for row in client
        .select(schema::qualified(HEADS_SQL), None, &[stream_id.into()])
        .or_raise("reading es_streams")
    {
        let id: String = column(&row, 1, "es_streams.stream_id");
        let head = Head {
            version: column(&row, 2, "es_streams.version"),
            hash: column(&row, 3, "es_streams.head_hash"),
            first_at: nullable(&row, 4, "es_streams.first_at").map(micros),
            last_at: nullable(&row, 5, "es_streams.last_at").map(micros),
            last_position: nullable(&row, 6, "es_streams.last_position"),
        };
        heads.insert(id, head);
    }
    let anchors = anchors(client, stream_id);
    let start = |id: &str| StreamCheck::from(anchors.get(id).map(|a| &a.0));
    let mut flush = |id: String, check: StreamCheck, head: Option<Head>| {
        for p in check.finish(head) {
            out.push((id.clone(), p.version, p.problem.into(), p.detail));
        }
    };
    walk_chains(
        client,
        EVENTS_SQL[schema::tagged() as usize],
        &[stream_id.into()],
        start,
        |id, check| {
            let head = heads.remove(&id);
            flush(id, check, head);
        },
    );
    // Registered streams none of whose events were seen (or retention removed them all).
    let mut orphans: Vec<_> = heads.into_iter().collect();
    orphans.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, head) in orphans {
        flush(id.clone(), start(&id), Some(head));
    }
}

/// Checks the chain of every stream in the events `sql` (made by `chain_sql!`) returns, each
/// from the check `start` gives it (where retention cut it), and hands each stream's check to
/// `done`. Returns the number of events read.
pub fn walk_chains(
    client: &SpiClient<'_>,
    sql: &'static str,
    args: &[DatumWithOid<'_>],
    start: impl Fn(&str) -> StreamCheck,
    mut done: impl FnMut(String, StreamCheck),
) -> i64 {
    let mut cursor = client.open_cursor(schema::qualified(sql), args);
    let mut current: Option<(String, StreamCheck)> = None;
    let mut events = 0;
    loop {
        let batch = cursor.fetch(1000).or_raise("reading event_store");
        if batch.is_empty() {
            break;
        }
        for row in batch {
            events += 1;
            let text = |i, name| column::<String>(&row, i, name);
            let sid = text(1, "event_store.stream_id");
            if current.as_ref().is_none_or(|(s, _)| *s != sid) {
                if let Some((s, c)) = current.take() {
                    done(s, c);
                }
                current = Some((sid.clone(), start(&sid)));
            }
            let Some((_, check)) = current.as_mut() else {
                continue;
            };
            let version: i64 = column(&row, 2, "event_store.stream_version");
            let stored: Vec<u8> = column(&row, 3, "event_store.hash");
            let event_id = text(4, "event_store.event_id");
            let event_type = text(6, "event_store.event_type");
            let data = text(9, "event_store.event_data");
            let meta = text(10, "event_store.metadata");
            let tags: Vec<String> = column(&row, 11, "event_store.tags");
            let content = Content {
                event_id: &event_id,
                stream_id: &sid,
                stream_version: version,
                global_position: column(&row, 5, "event_store.global_position"),
                event_type: &event_type,
                event_version: column(&row, 7, "event_store.event_version"),
                created_at_unix_us: micros(column(&row, 8, "event_store.created_at")),
                event_data: &data,
                metadata: &meta,
                tags: &tags,
            };
            check.push(version, &stored, &content);
        }
    }
    if let Some((s, c)) = current.take() {
        done(s, c);
    }
    events
}

fn verify_positions(client: &SpiClient<'_>, stream_id: Option<&str>, out: &mut Vec<Row>) {
    let rows = client
        .select(schema::qualified(POSITIONS_SQL), None, &[stream_id.into()])
        .or_raise("checking global positions");
    for r in rows {
        out.push((
            column(&r, 1, "event_store.stream_id"),
            nullable(&r, 2, "event_store.stream_version"),
            nullable(&r, 4, "a position's problem").unwrap_or_default(),
            nullable(&r, 5, "a position's problem").unwrap_or_default(),
        ));
    }
}

fn verify_ids(client: &SpiClient<'_>, stream_id: Option<&str>, out: &mut Vec<Row>) {
    let rows = match stream_id {
        None => client.select(schema::qualified(IDS_SQL[0]), None, &[]),
        Some(s) => client.select(schema::qualified(IDS_SQL[1]), None, &[s.into()]),
    }
    .or_raise("checking event ids");
    for r in rows {
        let id: String = column(&r, 3, "event_store.event_id");
        let others: i64 = column(&r, 4, "a count of events");
        out.push((
            column(&r, 1, "event_store.stream_id"),
            nullable(&r, 2, "event_store.stream_version"),
            "duplicate id".into(),
            format!("event id {id} is also held by {others} other event(s)"),
        ));
    }
}

const SNAPSHOT_STREAMS_SQL: &str = "SELECT DISTINCT stream_id FROM _event_store.es_snapshots \
      WHERE $1::text IS NULL OR stream_id = $1 ORDER BY 1";
const SNAPSHOTS_SQL: &str = "SELECT stream_version, last_at, state FROM _event_store.es_snapshots \
      WHERE stream_id = $1 AND reducers = $2 ORDER BY stream_version";
const REFOLD_SQL: &str =
    "SELECT stream_version, created_at, event_type, event_data, event_version \
       FROM _event_store.log WHERE stream_id = $1 AND stream_version > $3 \
        AND stream_version <= $2 ORDER BY stream_version";

/// es_verify(snapshots => true): every snapshot under the current reducers must equal a
/// fold of its stream's events from scratch, and carry the time of its last event (a
/// snapshot edited by hand would make the state functions lie). Snapshots under other
/// reducers are never used, so they are not checked. A stream cut by retention is refolded
/// from the snapshot taken at its cut.
fn verify_snapshots(client: &SpiClient<'_>, stream_id: Option<&str>, out: &mut Vec<Row>) {
    let doing = "checking snapshots";
    let anchors = anchors(client, stream_id);
    let streams: Vec<String> = client
        .select(
            schema::qualified(SNAPSHOT_STREAMS_SQL),
            None,
            &[stream_id.into()],
        )
        .or_raise(doing)
        .map(|r| column(&r, 1, "es_snapshots.stream_id"))
        .collect();
    for sid in streams {
        let rules = rules(category(&sid));
        let snapshots: Vec<(i64, TimestampWithTimeZone, StateJsonb)> = client
            .select(
                schema::qualified(SNAPSHOTS_SQL),
                None,
                &[sid.as_str().into(), rules.fingerprint.as_slice().into()],
            )
            .or_raise(doing)
            .map(|r| {
                (
                    column(&r, 1, "es_snapshots.stream_version"),
                    column(&r, 2, "es_snapshots.last_at"),
                    column(&r, 3, "es_snapshots.state"),
                )
            })
            .collect();
        let Some(last) = snapshots.last().map(|s| s.0) else {
            continue;
        };
        let mut report = |version: i64, detail: String| {
            out.push((sid.clone(), Some(version), "snapshot".into(), detail));
        };
        let mut pending = snapshots.into_iter().peekable();
        let mut state = initial_state();
        let cut = anchors.get(&sid).map_or(0, |a| a.0.first_version - 1);
        if cut > 0 {
            // Retention removed the snapshots before its cut, and the events under them.
            while let Some((v, _, _)) = pending.next_if(|s| s.0 < cut) {
                report(
                    v,
                    format!("snapshot of version {v}, before the retention cut at {cut}"),
                );
            }
            match pending.next_if(|s| s.0 == cut) {
                Some((_, _, snap)) => state = snap.0,
                None => {
                    for (v, _, _) in pending {
                        report(v, format!("snapshot of version {v} cannot be refolded: retention removed versions 1 to {cut} and left no snapshot of them under these reducers"));
                    }
                    continue;
                }
            }
        }
        let events = client
            .select(
                schema::qualified(REFOLD_SQL),
                None,
                &[sid.as_str().into(), last.into(), cut.into()],
            )
            .or_raise(doing);
        for e in events {
            let version: i64 = column(&e, 1, "event_store.stream_version");
            let at: TimestampWithTimeZone = column(&e, 2, "event_store.created_at");
            let event_type: String = column(&e, 3, "event_store.event_type");
            let Json(data) = column(&e, 4, "event_store.event_data");
            let event_version: i32 = column(&e, 5, "event_store.event_version");
            rules.apply(&mut state, &event_type, event_version, &data);
            while let Some((v, last_at, snap)) = pending.next_if(|s| s.0 <= version) {
                if v < version {
                    report(v, format!("snapshot of version {v}, which no event has"));
                } else if !event_store_core::json::state::same(&snap.0, &state) {
                    report(
                        v,
                        format!("snapshot of version {v} differs from a fold of events 1 to {v}"),
                    );
                } else if last_at != at {
                    report(
                        v,
                        format!("snapshot of version {v} has another time than event {v}"),
                    );
                }
            }
        }
        for (v, _, _) in pending {
            report(
                v,
                format!("snapshot of version {v}, beyond the stream's events"),
            );
        }
    }
}

/// One row per problem found (all streams, or one); none when intact: the hash chains, the
/// registry against the events, unique global positions and event ids, and on request every snapshot
/// against a refold of its events. NULL `snapshots` is false.
/// Volatile: a run by a role that sees every event is logged (see `record`).
#[pg_extern(sql = false)] // declared in sql/integrity/verify.sql, with its settings
fn es_verify(
    stream_id: default!(Option<&str>, "NULL"),
    snapshots: default!(Option<bool>, "false"),
) -> TableIterator<
    'static,
    (
        name!(stream_id, String),
        name!(stream_version, Option<i64>),
        name!(problem, String),
        name!(detail, String),
    ),
> {
    let mut out: Vec<Row> = vec![];
    Spi::connect(|client| {
        verify_chains(client, stream_id, &mut out);
        verify_positions(client, stream_id, &mut out);
        verify_ids(client, stream_id, &mut out);
        if snapshots.unwrap_or(false) {
            verify_snapshots(client, stream_id, &mut out);
        }
    });
    record(stream_id, snapshots.unwrap_or(false), out.len() as i64);
    TableIterator::new(out)
}

const RECORD_SQL: &str = "INSERT INTO _event_store.es_verifications \
    (stream_id, snapshots, problems, verified_by) VALUES ($1, $2, $3, $4)";

/// Logs a run in es_verifications, as the log's owner: no role may write the log itself, so
/// an entry is evidence that es_verify ran. Skipped where the caller does not see every event
/// (its answer covers only what it sees) and where nothing can be written (a standby, a
/// read-only transaction).
fn record(stream_id: Option<&str>, snapshots: bool, problems: i64) {
    // SAFETY: reads of this backend's recovery and transaction state.
    let writable = unsafe { !pg_sys::RecoveryInProgress() && !pg_sys::XactReadOnly };
    if !writable || !crate::read::stream_scan::reads_like_a_query(schema::relation(c"event_store"))
    {
        return;
    }
    let Some(log) = schema::try_relation(c"es_verifications") else {
        return; // 0.1.0's SQL, before ALTER EXTENSION UPDATE
    };
    let by = crate::pg::caller::_es_calling_role();
    schema::as_owner_of(log, || {
        Spi::run_with_args(
            schema::qualified(RECORD_SQL),
            &[
                stream_id.into(),
                snapshots.into(),
                problems.into(),
                by.as_str().into(),
            ],
        )
        .or_raise("logging the verification")
    });
}
