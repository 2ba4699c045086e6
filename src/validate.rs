//! Raising the core crate's input errors with their SQLSTATEs, and the checks SQL calls.
use event_store_core::validate::*;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// Raises an input error with the SQLSTATE it documents.
pub fn raise(invalid: Invalid) -> ! {
    let (code, msg) = match invalid {
        Invalid::Null(m) => (PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, m),
        Invalid::Value(m) => (PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, m),
        Invalid::TooLarge(m) => (PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, m),
    };
    ereport!(ERROR, code, format!("event_store: {msg}"));
}

#[pg_extern(immutable, parallel_safe, schema = "_event_store")]
fn _es_check_reducer(category: Option<&str>, event_type: Option<&str>, rule: Option<pgrx::JsonB>) {
    check_reducer(category, event_type, rule.as_ref().map(|r| &r.0)).unwrap_or_else(|e| raise(e))
}

#[pg_extern(immutable, parallel_safe, schema = "_event_store")]
fn _es_check_feed_read(max_count: Option<i32>, member: Option<i32>, size: Option<i32>) {
    check_feed_read(max_count, member, size).unwrap_or_else(|e| raise(e))
}

/// Raises unless the append as a whole is acceptable. `batch_kind` is `jsonb_typeof(events)`.
#[pg_extern(stable, parallel_safe, schema = "_event_store")]
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
