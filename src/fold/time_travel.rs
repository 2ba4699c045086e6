//! Time travel: a stream's state at an instant or version, folded from its events by the
//! reducers of its category (core/src/fold/rules.rs), starting from the latest usable snapshot.
use crate::fold::reducers::rules;
use crate::pg::jsonb::StateJsonb;
use crate::pg::schema::{column, nullable, OrRaise};
use crate::pg::{plans, settings};
use crate::read::stream_scan;
use event_store_core::fold::plan::{plan, Point, Snapshot, Start};
use event_store_core::fold::reducers::RuleSet;
use event_store_core::fold::rules::initial_state;
use event_store_core::json::state::State;
use event_store_core::stream::category;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid as Oid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::Value;
use std::rc::Rc;

/// A stream's state, folded from the snapshot at `snapshot_version` (0: none) over the
/// events up to `version` and `last_at`: the stream's head and its time when folded to the
/// head, otherwise bounds (the last event before an instant is not looked up).
pub struct Folded {
    pub state: State,
    pub snapshot_version: i64,
    pub version: i64,
    pub last_at: TimestampWithTimeZone,
    pub rules: Rc<RuleSet>,
}

// The stream's head and time range, and the latest usable snapshot (with its time) at or
// before the point asked for: a version ($3; NULL for the head) or an instant ($3). For an
// instant, also the first snapshot after it: it bounds the fold from above, so a state in
// the past does not read the stream's later events only to filter them out by time.
// Column 8: where retention cut the stream (its first kept version), NULL when never cut.
// 0.1.0's SQL (before ALTER EXTENSION UPDATE) has no anchors.
macro_rules! start_sql {
    ($anchor:literal) => {
        [
            concat!(
                "SELECT s.version, s.first_at, s.last_at, p.stream_version, p.state, NULL::bigint, \
                        p.last_at, ",
                $anchor,
                " FROM _event_store.es_streams s LEFT JOIN LATERAL ( \
                    SELECT stream_version, state, last_at FROM _event_store.es_snapshots \
                     WHERE stream_id = $1 AND reducers = $2 AND stream_version <= least(s.version, $3) \
                     ORDER BY stream_version DESC LIMIT 1) p ON true \
                 WHERE s.stream_id = $1"
            ),
            concat!(
                "SELECT s.version, s.first_at, s.last_at, p.stream_version, p.state, n.stream_version, \
                        p.last_at, ",
                $anchor,
                " FROM _event_store.es_streams s LEFT JOIN LATERAL ( \
                    SELECT stream_version, state, last_at FROM _event_store.es_snapshots \
                     WHERE stream_id = $1 AND reducers = $2 AND last_at <= $3 \
                     ORDER BY last_at DESC, stream_version DESC LIMIT 1) p ON true \
                 LEFT JOIN LATERAL ( \
                    SELECT stream_version FROM _event_store.es_snapshots \
                     WHERE stream_id = $1 AND reducers = $2 AND last_at > $3 \
                     ORDER BY last_at, stream_version LIMIT 1) n ON true \
                 WHERE s.stream_id = $1"
            ),
        ]
    };
}
/// [at a version, at an instant] for [this version's SQL, 0.1.0's].
const START_SQL: [[&str; 2]; 2] = [
    start_sql!("(SELECT a.first_version FROM _event_store.es_anchors a WHERE a.stream_id = $1)"),
    start_sql!("NULL::bigint"),
];

/// The fold of a stream's events $1 from the start handed to the aggregate: the executor
/// feeds the columns of an ordered index scan straight into it. Each bound is there only
/// when it restricts something, since the scan checks every one on every event: versions
/// after a snapshot ($2), up to a version or the next snapshot ($3), and the time range ($4,
/// $5), which stops at an instant and lets a hypertable exclude other chunks.
/// With 0.1.0's SQL (before ALTER EXTENSION UPDATE), its aggregate, which has no event_version.
fn fold_sql(after_snapshot: bool, before_head: bool, timed: bool) -> &'static str {
    // 0.3.0's SQL: a function that reads only the fold's columns (a role granted just those
    // may fold), every bound given; the time range lets a hypertable exclude other chunks.
    if crate::pg::schema::internal_layout() {
        return "SELECT _event_store._es_fold_events(event_type, event_version, event_data, $6, $1) \
                  FROM _event_store._es_fold_rows($1, $2, $3, $4, $5)";
    }
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let variants = SQL.get_or_init(|| {
        (0..16)
            .map(|bits| {
                let fold = if bits & 8 == 0 {
                    "_es_fold_events(event_type, event_version, event_data, $6, $1)"
                } else {
                    "_es_fold_events(event_type, event_data, $6, $1)"
                };
                let mut sql = format!(
                    "SELECT _event_store.{fold} FROM (SELECT event_type, event_version, event_data \
                       FROM _event_store.log WHERE stream_id = $1"
                );
                for (bit, cond) in [
                    " AND stream_version > $2",
                    " AND stream_version <= $3",
                    " AND created_at BETWEEN $4 AND $5",
                ]
                .iter()
                .enumerate()
                {
                    if bits & (1 << bit) != 0 {
                        sql.push_str(cond);
                    }
                }
                sql + " ORDER BY stream_version) e"
            })
            .collect()
    });
    let legacy = crate::pg::schema::legacy_sql();
    &variants[after_snapshot as usize
        | (before_head as usize) << 1
        | (timed as usize) << 2
        | (legacy as usize) << 3]
}

/// Runs `f` with the planner reading streams through their (stream_id, stream_version)
/// index. A stream's time range is narrow, so statistics make a bitmap AND of the stream and
/// time indexes, then a sort, look cheaper; measured, it took twice as long.
pub fn in_stream_order<R>(f: impl FnOnce() -> R) -> R {
    crate::pg::settings::with(
        &[(c"enable_bitmapscan", c"off"), (c"enable_sort", c"off")],
        f,
    )
}

/// event_store, found in the extension's schema whatever the search_path.
fn event_store() -> pg_sys::Oid {
    crate::pg::schema::relation(c"event_store")
}

/// The fold of the events `each_event` would read, as a query: for when it cannot.
fn fold_in_sql(
    client: &SpiClient<'_>,
    stream_id: &str,
    b: &stream_scan::Bounds,
    head: i64,
    start: State,
    from_snapshot: bool,
) -> Option<State> {
    // A hypertable needs the time range to exclude other chunks.
    let timed = stream_scan::partitioned(event_store()) || b.timed;
    let sql = fold_sql(b.after_version > 0, b.upto_version < head, timed);
    // The aggregate reads the snapshot to start from once, as an argument ($6).
    let snapshot = from_snapshot.then(|| crate::pg::jsonb::datum(&Value::from(&start)));
    let args: [DatumWithOid; 6] = [
        stream_id.into(),
        b.after_version.into(),
        b.upto_version.into(),
        b.from_at.into(),
        b.upto_at.into(),
        match snapshot {
            // SAFETY: a jsonb datum made just above, alive for this call.
            Some(d) => unsafe { DatumWithOid::new(d, pg_sys::JSONBOID) },
            None => DatumWithOid::null_oid(pg_sys::JSONBOID),
        },
    ];
    let types = [
        Oid::TEXTOID,
        Oid::INT8OID,
        Oid::INT8OID,
        Oid::TIMESTAMPTZOID,
        Oid::TIMESTAMPTZOID,
        Oid::JSONBOID,
    ];
    // Kept: the plan cache itself weighs a generic plan (no chunk excluded, but no
    // planning) against plans for these values.
    let plan = plans::kept(client, sql, &types, false);
    let rows = in_stream_order(|| client.select(&*plan, Some(1), &args));
    let folded = rows
        .or_raise("folding the stream")
        .next()
        .and_then(|row| nullable::<StateJsonb>(&row, 1, "the fold"))
        .map(|s| s.0);
    // Nothing folded: the events after the snapshot are later than `at`.
    folded.or_else(|| from_snapshot.then_some(start))
}

/// Folds the stream's events with created_at <= `at` and stream_version <= `version`
/// (stream times never go backwards, so that is a prefix of the stream). `None` when the
/// stream had no events by then.
pub fn fold_stream(client: &SpiClient<'_>, stream_id: &str, point: Point) -> Option<Folded> {
    fold_reachable(client, stream_id, point).unwrap_or_else(|first_kept| {
        crate::pg::errors::raise(
            b"ES008",
            format!("event_store: the state of {stream_id} needs events that retention removed"),
            format!(
                "Retention removed versions 1 to {} of the stream; no snapshot under its current reducers stands for them.",
                first_kept - 1
            ),
            "Ask for a state at or after the retention cut. Redefining a category's reducers after retention, or row level security, leaves its cut streams without that snapshot.".into(),
        )
    })
}

/// `fold_stream`, or Err(the first kept version) when the fold needs events that retention
/// removed.
fn fold_reachable(
    client: &SpiClient<'_>,
    stream_id: &str,
    point: Point,
) -> Result<Option<Folded>, i64> {
    let rules = rules(category(stream_id));
    let sql = &START_SQL[crate::pg::schema::legacy_sql() as usize];
    let (sql, at, point_type): (_, DatumWithOid, _) = match point {
        Point::At(at) => (sql[1], pg_time(at).into(), Oid::TIMESTAMPTZOID),
        Point::Version(v) => (sql[0], v.into(), Oid::INT8OID),
        Point::Head => (sql[0], Option::<i64>::None.into(), Oid::INT8OID),
    };
    let types = [Oid::TEXTOID, Oid::BYTEAOID, point_type];
    let start = plans::kept(client, sql, &types, false);
    let row = client
        .select(
            &*start,
            Some(1),
            &[stream_id.into(), rules.fingerprint.as_slice().into(), at],
        )
        .or_raise("reading es_streams and es_snapshots")
        .next();
    let Some(row) = row else { return Ok(None) };
    let time = |i, name| nullable::<TimestampWithTimeZone>(&row, i, name).map(|t| t.into_inner());
    let first_at = time(2, "es_streams.first_at");
    let last_at = time(3, "es_streams.last_at");
    let (Some(first_at), Some(last_at)) = (first_at, last_at) else {
        return Ok(None); // registered, no events yet
    };
    let snapshot_version: Option<i64> = nullable(&row, 4, "es_snapshots.stream_version");
    let found = Start {
        head: column(&row, 1, "es_streams.version"),
        first_at,
        last_at,
        snapshot: snapshot_version.map(|version| Snapshot {
            version,
            last_at: time(7, "es_snapshots.last_at").unwrap_or(first_at),
        }),
        next_snapshot: nullable(&row, 6, "es_snapshots.stream_version"),
    };
    // Snapshots fold every event; under row level security the caller may see fewer.
    let table = event_store();
    let Some(plan) = plan(point, &found, !stream_scan::row_security(table)) else {
        return Ok(None);
    };
    if let Some(first_kept) = nullable::<i64>(&row, 8, "es_anchors.first_version") {
        if plan.needs_removed_events(first_kept) {
            return Err(first_kept);
        }
    }
    let snapshot = plan
        .snapshot
        .and_then(|_| nullable::<StateJsonb>(&row, 5, "es_snapshots.state"))
        .map(|s| s.0);
    let from_snapshot = snapshot.is_some();
    let mut state = snapshot.unwrap_or_else(initial_state);
    let folded = if plan.reads_events() {
        let bounds = stream_scan::Bounds {
            after_version: plan.after_version,
            upto_version: plan.upto_version,
            from_at: pg_time(plan.from_at),
            upto_at: pg_time(plan.upto_at),
            timed: plan.timed,
        };
        let mut events = 0u64;
        let read =
            stream_scan::each_event(client, table, stream_id, &bounds, |ty, version, data| {
                rules.apply(&mut state, ty, version, data);
                events += 1;
            });
        if read {
            (events > 0 || from_snapshot).then_some(state)
        } else {
            fold_in_sql(client, stream_id, &bounds, found.head, state, from_snapshot)
        }
    } else {
        from_snapshot.then_some(state)
    };
    Ok(folded.map(|state| Folded {
        state,
        snapshot_version: plan.after_version,
        version: plan.version,
        last_at: pg_time(plan.upto_at),
        rules,
    }))
}

/// A PostgreSQL timestamp from its microseconds (they came from one).
fn pg_time(us: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(us).unwrap_or_else(|_| {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW, // 22008, datetime_value_out_of_range too
            format!("event_store: timestamp {us} out of range")
        );
    })
}

fn state(stream_id: &str, point: Point) -> Option<pgrx::JsonB> {
    Spi::connect(|client| {
        fold_stream(client, stream_id, point)
            .map(|f| crate::privacy::sealing::reveal_jsonb(pgrx::JsonB(Value::from(&f.state))))
    })
}

/// The stream's state as it was at `at`: NULL when the stream had no events by then.
#[pg_extern(sql = false)] // declared in sql/fold/fold.sql, with its settings
fn es_state_at(stream_id: &str, at: TimestampWithTimeZone) -> Option<pgrx::JsonB> {
    state(stream_id, Point::At(at.into_inner()))
}

/// The stream's current state: NULL for a stream with no events.
#[pg_extern(sql = false)] // declared in sql/fold/fold.sql, with its settings
fn es_state(stream_id: &str) -> Option<pgrx::JsonB> {
    state(stream_id, Point::Head)
}

/// The stream's current state as `subject`'s export shows it: only what is sealed under the
/// subject's own keys opens (crate::privacy::sealing::reveal_for_subject). For es_subject_export.
#[pg_extern(stable, strict, parallel_safe, schema = "_event_store")]
#[search_path(pg_catalog, pg_temp)]
fn _es_state_for_subject(stream_id: &str, subject: &str) -> Option<pgrx::JsonB> {
    Spi::connect(|client| {
        fold_stream(client, stream_id, Point::Head).map(|f| {
            let mut state = Value::from(&f.state);
            crate::privacy::sealing::reveal_for_subject(&mut state, subject);
            pgrx::JsonB(state)
        })
    })
}

/// The stream's state right after `version`: NULL when version < 1 or the stream is empty.
#[pg_extern(sql = false)] // declared in sql/fold/fold.sql, with its settings
fn es_state_at_version(stream_id: &str, version: i64) -> Option<pgrx::JsonB> {
    state(stream_id, Point::Version(version))
}

const SAVE_SQL: &str =
    "INSERT INTO _event_store.es_snapshots (stream_id, stream_version, reducers, last_at, state) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";

/// Folds the stream to its head and stores the state as a snapshot; returns the version
/// snapshotted, NULL for a stream without events. Called by es_snapshot and by appends.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "_event_store")]
fn _es_take_snapshot(stream_id: &str) -> Option<i64> {
    Spi::connect_mut(|client| {
        let f = fold_stream(client, stream_id, Point::Head)?;
        save(client, stream_id, f.version, f.last_at, f)
    })
}

/// Stores a snapshot of the stream right after `version`, whose event was written at
/// `last_at`: es_apply_retention calls it before it removes the events up to it. NULL when
/// no fold reaches it: the stream has no such version, or an earlier cut left no snapshot
/// under the current reducers.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "_event_store")]
fn _es_snapshot_at(stream_id: &str, version: i64, last_at: TimestampWithTimeZone) -> Option<i64> {
    Spi::connect_mut(|client| {
        let f = fold_reachable(client, stream_id, Point::Version(version)).ok()??;
        (f.version == version).then(|| save(client, stream_id, version, last_at, f))?
    })
}

fn save(
    client: &mut SpiClient<'_>,
    stream_id: &str,
    version: i64,
    last_at: TimestampWithTimeZone,
    f: Folded,
) -> Option<i64> {
    let plan = plans::kept(
        client,
        SAVE_SQL,
        &[
            Oid::TEXTOID,
            Oid::INT8OID,
            Oid::BYTEAOID,
            Oid::TIMESTAMPTZOID,
            Oid::JSONBOID,
        ],
        true,
    );
    client
        .update(
            &*plan,
            None,
            &[
                stream_id.into(),
                version.into(),
                f.rules.fingerprint.as_slice().into(),
                last_at.into(),
                StateJsonb(f.state).into(),
            ],
        )
        .or_raise("storing a snapshot");
    Some(version)
}

/// After an append moved a stream from `from_version` to `to_version`: takes a snapshot when
/// it crossed a multiple of `event_store.snapshot_every`.
pub fn snapshot_after_append(stream_id: &str, from_version: i64, to_version: i64) {
    let every = i64::from(settings::SNAPSHOT_EVERY.get());
    if every > 0 && from_version / every != to_version / every {
        _es_take_snapshot(stream_id);
    }
}
