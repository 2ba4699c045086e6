//! Raising the core crate's input errors with their SQLSTATEs, and the checks that read
//! datums or settings.
use crate::guc;
use event_store_core::validate::*;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// Raises an input error with the SQLSTATE it documents.
fn raise(invalid: Invalid) -> ! {
    let (code, msg) = match invalid {
        Invalid::Null(m) => (PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, m),
        Invalid::Value(m) => (PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, m),
        Invalid::TooLarge(m) => (PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, m),
    };
    ereport!(ERROR, code, format!("event_store: {msg}"));
}

#[pg_extern(immutable, parallel_safe)]
fn _es_check_reducer(category: Option<&str>, event_type: Option<&str>, rule: Option<pgrx::JsonB>) {
    check_reducer(category, event_type, rule.as_ref().map(|r| &r.0)).unwrap_or_else(|e| raise(e))
}

#[pg_extern(immutable, parallel_safe)]
fn _es_check_feed_read(max_count: Option<i32>, member: Option<i32>, size: Option<i32>) {
    check_feed_read(max_count, member, size).unwrap_or_else(|e| raise(e))
}

/// Raises unless the append as a whole is acceptable. `batch_kind` is `jsonb_typeof(events)`.
#[pg_extern(stable, parallel_safe)]
fn _es_check_append(
    stream_id: Option<&str>,
    expected_version: Option<i64>,
    batch_kind: Option<&str>,
    batch_len: Option<i32>,
) {
    check_append(
        stream_id,
        expected_version,
        batch_kind.unwrap_or("null"),
        batch_len.unwrap_or(0),
    )
    .unwrap_or_else(|e| raise(e))
}

/// Raises unless one event is acceptable. `ordinal` is NULL for a single append.
#[pg_extern(stable, parallel_safe)]
fn _es_check_event(
    event_type: Option<&str>,
    data_kind: Option<&str>,
    metadata_kind: Option<&str>,
    event_version: Option<i32>,
    size_bytes: Option<i64>,
    ordinal: Option<i32>,
) {
    check_event(
        event_type,
        data_kind,
        metadata_kind,
        event_version,
        size_bytes.unwrap_or(0),
        guc::MAX_EVENT_BYTES.get() as i64,
        ordinal,
    )
    .unwrap_or_else(|e| raise(e))
}

v1_function!(pg_finfo__es_check_depth);
/// `_es_check_depth(event_data jsonb, metadata jsonb, ordinal integer)`: raises 54000 when
/// either nests deeper than `event_store.max_event_depth`. Reads the jsonb in place, without
/// recursion, so that no input can exhaust the stack here either. NULLs pass (they are
/// refused by `_es_check_event`).
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _es_check_depth(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    use pgrx::fcinfo::{pg_arg_is_null, pg_getarg_datum_raw};
    let limit = guc::MAX_EVENT_DEPTH.get().max(1) as usize;
    let ordinal =
        (!pg_arg_is_null(fcinfo, 2)).then(|| pg_getarg_datum_raw(fcinfo, 2).value() as i32);
    for (arg, what) in [(0, "event_data"), (1, "metadata")] {
        if pg_arg_is_null(fcinfo, arg) {
            continue;
        }
        // SAFETY: argument `arg` is a non-null jsonb, as the SQL declaration says.
        let depth = crate::jsonb::with_jsonb(pg_getarg_datum_raw(fcinfo, arg), |j| {
            crate::jsonb::depth(j, limit)
        });
        if let Err(e) = check_depth(what, depth, limit, ordinal) {
            raise(e);
        }
    }
    pg_sys::Datum::from(0)
}
