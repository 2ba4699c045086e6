//! Time travel: a stream's state at an instant or version, folded from its events by the
//! reducers of its category (src/reducer.rs), starting from the latest usable snapshot.
use crate::jsonb::Json;
use crate::reducer::RuleSet;
use crate::{guc, plans};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid as Oid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Streams are named `category-id`; reducers are defined per category.
pub fn category(stream_id: &str) -> &str {
    stream_id.split('-').next().unwrap_or_default()
}

type StatementKey = (u32, i64, u32);

thread_local! {
    static RULES: RefCell<(StatementKey, HashMap<String, Rc<RuleSet>>)> = RefCell::new(Default::default());
}

/// Reducers are read once per statement (and again after the statement changes data), so an
/// aggregate over many streams reads them once per category.
fn statement_key() -> StatementKey {
    unsafe {
        (
            (*pg_sys::MyProc).lxid,
            pg_sys::GetCurrentStatementStartTimestamp(),
            pg_sys::GetCurrentCommandId(false),
        )
    }
}

/// Qualified with the extension's schema: es_fold calls this under the caller's search_path.
fn rules_sql() -> &'static str {
    static SQL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let schema = Spi::get_one::<String>(
            "SELECT quote_ident(n.nspname) FROM pg_catalog.pg_extension e \
               JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
              WHERE e.extname = 'event_store'",
        )
        .expect("reading pg_extension")
        .expect("event_store is installed");
        String::leak(format!(
            "SELECT category, event_type, rule FROM {schema}.es_reducers \
              WHERE category = $1 OR category = '*'"
        ))
    })
}

/// The reducers that apply to a category.
pub fn rules(category: &str) -> Rc<RuleSet> {
    let key = statement_key();
    RULES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != key {
            *cache = (key, HashMap::new());
        }
        if let Some(set) = cache.1.get(category) {
            return set.clone();
        }
        let defs = Spi::connect(|client| {
            let plan = plans::kept(client, rules_sql(), &[Oid::TEXTOID], false);
            client
                .select(&*plan, None, &[category.into()])
                .expect("reading es_reducers")
                .map(|row| {
                    (
                        row.get::<String>(1).unwrap().unwrap(),
                        row.get::<String>(2).unwrap().unwrap(),
                        row.get::<Json>(3).unwrap().unwrap().0,
                    )
                })
                .collect::<Vec<_>>()
        });
        let set = RuleSet::new(category, defs).unwrap_or_else(|e| {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("event_store: {e}"),
                "es_reducers was changed by hand; fix the rule with es_define_reducer"
            );
        });
        let set = Rc::new(set);
        cache.1.insert(category.to_string(), set.clone());
        set
    })
}

/// A stream's state after `version`, whose event was written at `last_at`.
pub struct Folded {
    pub state: Value,
    pub version: i64,
    pub last_at: TimestampWithTimeZone,
    pub rules: Rc<RuleSet>,
}

const BOUNDS_SQL: &str = "SELECT version, first_at, last_at FROM es_streams WHERE stream_id = $1";
// One statement: the latest usable snapshot, then the fold of the events after it by the
// _es_fold_events aggregate, fed in stream order by the subquery (the executor hands it the
// columns directly). The first snapshot after `at` bounds the scan from above: without it a
// state in the past would read the stream's later events only to filter them out by time.
// Bounded by the stream's time range so a hypertable excludes other chunks; planned for
// these values each time, since a generic plan could exclude none.
const FOLD_SQL: &str = "WITH snap AS MATERIALIZED ( \
         SELECT stream_version, last_at, state FROM es_snapshots \
          WHERE stream_id = $1 AND reducers = $4 AND stream_version <= $5 AND last_at <= $3 \
          ORDER BY stream_version DESC LIMIT 1) \
     SELECT (SELECT stream_version FROM snap), (SELECT last_at FROM snap), (SELECT state FROM snap), \
            _es_fold_events((SELECT state FROM snap), $6, e.event_type, e.event_data), \
            max(e.stream_version), max(e.created_at) \
       FROM (SELECT event_type, event_data, stream_version, created_at FROM event_store \
              WHERE stream_id = $1 AND created_at BETWEEN $2 AND $3 AND stream_version <= $5 \
                AND stream_version > coalesce((SELECT stream_version FROM snap), 0) \
                AND stream_version < coalesce((SELECT min(stream_version) FROM es_snapshots \
                     WHERE stream_id = $1 AND reducers = $4 AND last_at > $3), $5 + 1) \
              ORDER BY stream_version) e";

/// Runs `f` with the planner reading streams through their (stream_id, stream_version)
/// index. A stream's time range is narrow, so statistics make a bitmap AND of the stream and
/// time indexes, then a sort, look cheaper; measured, it took twice as long.
pub fn in_stream_order<R>(f: impl FnOnce() -> R) -> R {
    use pg_sys::{GucAction, GucContext, GucSource};
    unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        for setting in [c"enable_bitmapscan", c"enable_sort"] {
            pg_sys::set_config_option(
                setting.as_ptr(),
                c"off".as_ptr(),
                GucContext::PGC_USERSET,
                GucSource::PGC_S_SESSION,
                GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        let r = f();
        // An error skips this; aborting the (sub)transaction then restores the settings.
        pg_sys::AtEOXact_GUC(true, nest);
        r
    }
}

fn ts_min(a: TimestampWithTimeZone, b: Option<TimestampWithTimeZone>) -> TimestampWithTimeZone {
    match b {
        Some(b) if b.into_inner() < a.into_inner() => b,
        _ => a,
    }
}

/// Folds the stream's events with created_at <= `at` and stream_version <= `version`
/// (stream times never go backwards, so that is a prefix of the stream). `None` when the
/// stream had no events by then.
pub fn fold_stream(
    client: &SpiClient<'_>,
    stream_id: &str,
    at: Option<TimestampWithTimeZone>,
    version: Option<i64>,
) -> Option<Folded> {
    let bounds = plans::kept(client, BOUNDS_SQL, &[Oid::TEXTOID], false);
    let row = client
        .select(&*bounds, Some(1), &[stream_id.into()])
        .expect("reading es_streams")
        .next()?;
    let head: i64 = row.get(1).unwrap().unwrap();
    let (Some(first), Some(last)) = (
        row.get::<TimestampWithTimeZone>(2).unwrap(),
        row.get::<TimestampWithTimeZone>(3).unwrap(),
    ) else {
        return None; // registered, no events yet
    };
    let upto_at = ts_min(last, at);
    let upto_v = version.map_or(head, |v| v.min(head));
    if upto_v < 1 || upto_at.into_inner() < first.into_inner() {
        return None;
    }
    let category = category(stream_id);
    let rules = rules(category);
    let args: [DatumWithOid; 6] = [
        stream_id.into(),
        first.into(),
        upto_at.into(),
        rules.fingerprint.as_slice().into(),
        upto_v.into(),
        category.into(),
    ];
    let row = in_stream_order(|| client.select(FOLD_SQL, Some(1), &args))
        .expect("folding the stream")
        .next()
        .expect("an aggregate returns a row");
    let snapshot_version: Option<i64> = row.get(1).unwrap();
    let (version, last_at, state) = match row.get::<i64>(5).unwrap() {
        Some(v) => (
            v,
            row.get(6).unwrap().unwrap(),
            row.get::<Json>(4).unwrap().unwrap().0,
        ),
        None => (
            snapshot_version?,
            row.get(2).unwrap().unwrap(),
            row.get::<Json>(3).unwrap().unwrap().0,
        ),
    };
    Some(Folded {
        state,
        version,
        last_at,
        rules,
    })
}

fn state(
    stream_id: &str,
    at: Option<TimestampWithTimeZone>,
    version: Option<i64>,
) -> Option<pgrx::JsonB> {
    Spi::connect(|client| fold_stream(client, stream_id, at, version).map(|f| pgrx::JsonB(f.state)))
}

/// The stream's state as it was at `at`: NULL when the stream had no events by then.
#[pg_extern(stable, strict, parallel_safe)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn es_state_at(stream_id: &str, at: TimestampWithTimeZone) -> Option<pgrx::JsonB> {
    state(stream_id, Some(at), None)
}

/// The stream's current state: NULL for a stream with no events.
#[pg_extern(stable, strict, parallel_safe)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn es_state(stream_id: &str) -> Option<pgrx::JsonB> {
    state(stream_id, None, None)
}

/// The stream's state right after `version`: NULL when version < 1 or the stream is empty.
#[pg_extern(stable, strict, parallel_safe)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn es_state_at_version(stream_id: &str, version: i64) -> Option<pgrx::JsonB> {
    state(stream_id, None, Some(version))
}

const SAVE_SQL: &str =
    "INSERT INTO es_snapshots (stream_id, stream_version, reducers, last_at, state) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";

/// Folds the stream to its head and stores the state as a snapshot; returns the version
/// snapshotted, NULL for a stream without events. Called by es_snapshot and by appends.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _es_take_snapshot(stream_id: &str) -> Option<i64> {
    Spi::connect_mut(|client| {
        let f = fold_stream(client, stream_id, None, None)?;
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
                    f.version.into(),
                    f.rules.fingerprint.as_slice().into(),
                    f.last_at.into(),
                    pgrx::JsonB(f.state).into(),
                ],
            )
            .expect("storing a snapshot");
        Some(f.version)
    })
}

/// After an append moved a stream from `from_version` to `to_version`: takes a snapshot when
/// it crossed a multiple of `event_store.snapshot_every`.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _es_snapshot_after_append(stream_id: &str, from_version: i64, to_version: i64) {
    let every = i64::from(guc::SNAPSHOT_EVERY.get());
    if every > 0 && from_version / every != to_version / every {
        _es_take_snapshot(stream_id);
    }
}
