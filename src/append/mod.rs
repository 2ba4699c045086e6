//! Appending: `es_append`, `es_append_batch` and `es_append_multi` (here), each a C function
//! (SECURITY DEFINER with a pinned search_path, declared in sql/append/append.sql) over one
//! engine:
//! - `args`: the arguments read as jsonb datums, every event validated before any lock;
//! - `engine`: the append, all or nothing: catalog checks, stream locks in stream-id order
//!   (`registry`, so calls over the same streams never deadlock), retries (`retry`), sealing,
//!   the feed's registration and one block of positions, hashes, the rows (`insert`: without an
//!   executor where the tables allow, `direct` and `chunks`, else one INSERT statement), and
//!   the stream heads;
//! - `record`: the store's own records; `ids`: `es_uuidv7`.
//!
//! ES001/ES002 are raised only once everything Rust holds is dropped (they leave by longjmp).
use crate::pg::errors::Refused;
use crate::pg::jsonb::functions::{detoast, element};
pub(crate) use args::datum_arg;
use args::{
    batch_events, check_batch, event, limits, multi_entry, raise, shape, text_arg, text_array,
    Given, Stamp,
};
use engine::append;
use event_store_core::validate as rules;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::IntoDatum;

mod args;
mod chunks;
mod condition;
mod direct;
mod engine;
pub mod ids;
mod insert;
pub mod record;
pub mod registry;
mod retry;
pub(crate) mod watermarks;

/// One event, validated, before its stream's lock is taken.
struct Event {
    id: Option<[u8; 16]>,
    event_type: String,
    data: pg_sys::Datum,
    data_text: String,
    metadata: pg_sys::Datum,
    meta_text: String,
    version: i32,
    /// In the order given (docs/dcb.md).
    tags: Vec<String>,
    /// Where its position falls among the call's events (es_dcb_append: its place in the
    /// array); equal for the other append functions, whose events follow entry order.
    rank: usize,
}

/// The events for one stream.
struct Entry {
    stream_id: String,
    expected: Option<i64>,
    events: Vec<Event>,
    /// A stream this call made up (es_dcb_append's `dcb-<uuid>`): no other transaction knows
    /// it, so it has no registry row to lock, and one is written once its head is known.
    made: bool,
}

/// One row of the result: the entry it belongs to and what was stored.
#[derive(Clone, Copy)]
struct Appended {
    entry: usize,
    id: [u8; 16],
    version: i64,
    position: i64,
    at: i64,
}

fn arg<T: IntoDatum>(v: T) -> DatumWithOid<'static> {
    let oid = T::type_oid();
    // SAFETY: the value's own type oid.
    unsafe { DatumWithOid::new(v, oid) }
}

fn uuid(b: [u8; 16]) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(b)
}

fn refused(code: &'static [u8; 5], message: String, detail: String, hint: &str) -> Refused {
    Refused {
        code,
        message,
        detail,
        hint: hint.into(),
    }
}

// ---- the SQL functions

/// Runs the engine and returns its rows as the function's result set; an ES error is
/// raised only after everything the engine held is dropped.
///
/// # Safety
/// `fcinfo` is the call's, from a set-returning function declared with the columns `row` fills.
unsafe fn respond(
    fcinfo: pg_sys::FunctionCallInfo,
    entries: Vec<Entry>,
    row: fn(&str, &Appended) -> Vec<Option<pg_sys::Datum>>,
) -> pg_sys::Datum {
    match append(entries, None) {
        Ok((streams, rows)) => {
            // SAFETY: a set-returning call in a context that accepts a materialized result.
            unsafe {
                let rsinfo = crate::pg::materialize(fcinfo);
                for r in &rows {
                    let cols = row(&streams[r.entry], r);
                    let mut values: Vec<pg_sys::Datum> = cols
                        .iter()
                        .map(|c| c.unwrap_or(pg_sys::Datum::from(0)))
                        .collect();
                    let mut nulls: Vec<bool> = cols.iter().map(|c| c.is_none()).collect();
                    pg_sys::tuplestore_putvalues(
                        (*rsinfo).setResult,
                        (*rsinfo).setDesc,
                        values.as_mut_ptr(),
                        nulls.as_mut_ptr(),
                    );
                }
            }
            pg_sys::Datum::from(0)
        }
        Err(r) => r.raise(),
    }
}

fn event_columns(_: &str, r: &Appended) -> Vec<Option<pg_sys::Datum>> {
    vec![
        uuid(r.id).into_datum(),
        r.version.into_datum(),
        r.position.into_datum(),
        Some(pg_sys::Datum::from(r.at)),
    ]
}

fn multi_columns(stream: &str, r: &Appended) -> Vec<Option<pg_sys::Datum>> {
    let mut cols = vec![stream.into_datum()];
    cols.extend(event_columns(stream, r));
    cols
}

v1_function!(pg_finfo_es_append);
/// `es_append(stream_id, event_type, event_data, metadata, expected_version, id, event_version, tags)`.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn es_append(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the argument types are those sql/append/append.sql declares.
    let entry = unsafe {
        let stream_id = text_arg(fcinfo, 0);
        let expected = datum_arg(fcinfo, 4).map(|d| d.value() as i64);
        let (stream_id, ()) =
            rules::check_append(stream_id.as_deref(), expected, (Some(()), "array", 1))
                .unwrap_or_else(|e| raise(e));
        let stamp = Stamp::new();
        let given = Given {
            // SAFETY: a uuid datum points to its 16 bytes.
            id: datum_arg(fcinfo, 5).map(|u| *u.cast_mut_ptr::<[u8; 16]>()),
            event_type: text_arg(fcinfo, 1),
            data: datum_arg(fcinfo, 2).map(detoast),
            absent_data: "null",
            metadata: datum_arg(fcinfo, 3).map(detoast),
            version: datum_arg(fcinfo, 6).map(|v| v.value() as i32),
            // The store's own _es_append has no tags argument.
            tags: if (*fcinfo).nargs > 7 {
                datum_arg(fcinfo, 7).map(|a| text_array(a).unwrap_or_else(|e| raise(e)))
            } else {
                None
            },
        };
        Entry {
            stream_id: stream_id.to_string(),
            expected,
            events: vec![event(given, &stamp, None, limits()).unwrap_or_else(|e| raise(e))],
            made: false,
        }
    };
    // SAFETY: es_append returns TABLE (event_id, stream_version, global_position, created_at).
    unsafe { respond(fcinfo, vec![entry], event_columns) }
}

v1_function!(pg_finfo_es_append_batch);
/// `es_append_batch(stream_id, events, expected_version)`.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn es_append_batch(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the argument types are those sql/append/append.sql declares.
    let entry = unsafe {
        let stream_id = text_arg(fcinfo, 0);
        let events = datum_arg(fcinfo, 1).map(detoast);
        let expected = datum_arg(fcinfo, 2).map(|d| d.value() as i64);
        let (stream_id, events) =
            check_batch(stream_id.as_deref(), expected, events).unwrap_or_else(|e| raise(e));
        let stamp = Stamp::new();
        Entry {
            stream_id,
            expected,
            events: batch_events(events, &stamp).unwrap_or_else(|e| raise(e)),
            made: false,
        }
    };
    // SAFETY: as for es_append.
    unsafe { respond(fcinfo, vec![entry], event_columns) }
}

v1_function!(pg_finfo_es_append_multi);
/// `es_append_multi(appends)`: a JSON array of `{"stream_id", "expected_version"?, "events"}`.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn es_append_multi(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the argument type is the one sql/append/append.sql declares.
    let appends = unsafe { datum_arg(fcinfo, 0) }.map(detoast);
    let (k, n) = shape(appends);
    let appends = rules::check_multi(appends, &k, n).unwrap_or_else(|e| raise(e));
    let stamp = Stamp::new();
    let entries: Vec<Entry> = (0..n)
        .map(|i| {
            multi_entry(element(appends, i), &stamp)
                .unwrap_or_else(|e| raise(rules::in_entry(i + 1, e)))
        })
        .collect();
    // SAFETY: es_append_multi returns TABLE (stream_id, event_id, stream_version, global_position, created_at).
    unsafe { respond(fcinfo, entries, multi_columns) }
}

/// es_dcb_append's events, a JSON array of `{"type", "data", "tags"?, "id"?, "metadata"?,
/// "version"?, "stream_id"?}`, appended under `condition`, at positions in array order: the
/// last one's. Events that name no stream go to one the call makes (`condition::call_stream`).
pub(crate) fn conditional(
    events: Option<pg_sys::Datum>,
    condition: Option<&event_store_core::dcb::Condition>,
) -> i64 {
    let (k, n) = shape(events);
    let events = match events {
        None => raise(rules::Invalid::Null("events must not be NULL".into())),
        Some(e) if k == "array" && n > 0 => e,
        Some(_) if k == "array" => raise(rules::Invalid::Value(
            "events must hold at least one event".into(),
        )),
        Some(_) => raise(rules::Invalid::Value(format!(
            "events must be a JSON array, not {k}"
        ))),
    };
    let stamp = Stamp::new();
    let parsed = batch_events(events, &stamp).unwrap_or_else(|e| raise(e));
    let mut entries: Vec<Entry> = vec![];
    let mut own: Option<String> = None;
    for (i, mut ev) in parsed.into_iter().enumerate() {
        let (stream, made) = match args::stream_field(element(events, i as i32), i) {
            Ok(Some(s)) => (s, false),
            Ok(None) => (own.get_or_insert_with(condition::call_stream).clone(), true),
            Err(e) => raise(e),
        };
        ev.rank = i;
        match entries.iter_mut().find(|e| e.stream_id == stream) {
            Some(e) => e.events.push(ev),
            None => entries.push(Entry {
                stream_id: stream,
                expected: None,
                events: vec![ev],
                made,
            }),
        }
    }
    match append(entries, condition) {
        Ok((_, rows)) => rows.iter().map(|r| r.position).max().expect("an event"),
        Err(r) => r.raise(),
    }
}

/// Raises unless the append as a whole is acceptable. `batch_kind` is `jsonb_typeof(events)`.
#[pg_extern(stable, parallel_safe, schema = "_event_store")]
fn _es_check_append(
    stream_id: Option<&str>,
    expected_version: Option<i64>,
    batch_kind: Option<&str>,
    batch_len: Option<i32>,
) {
    let kind = batch_kind.unwrap_or("null");
    rules::check_append(
        stream_id,
        expected_version,
        (batch_kind.map(|_| ()), kind, batch_len.unwrap_or(0)),
    )
    .unwrap_or_else(|e| raise(e));
}
