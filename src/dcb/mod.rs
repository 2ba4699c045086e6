//! Dynamic Consistency Boundary (docs/dcb.md): `es_dcb_append`, conditioned on a query over
//! tags and types, on the append engine (whose `condition` module takes the locks and checks
//! the condition), and the items `es_dcb_read` (sql/dcb/dcb.sql) runs.
use crate::append;
use crate::pg::errors::raise_invalid as raise;
use crate::pg::jsonb;
use event_store_core::dcb;
use event_store_core::validate::Invalid;
use pgrx::prelude::*;

v1_function!(pg_finfo_es_dcb_append);
/// `es_dcb_append(events jsonb, condition jsonb)`: the position of the last event written.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn es_dcb_append(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the argument types are those sql/dcb/dcb.sql declares.
    let [events, condition] =
        [0, 1].map(|n| unsafe { append::datum_arg(fcinfo, n) }.map(jsonb::functions::detoast));
    let condition = condition
        // SAFETY: a jsonb datum.
        .map(|c| unsafe { jsonb::to_value(c) })
        .filter(|c| !c.is_null())
        .map(|c| dcb::condition(&c).unwrap_or_else(|e| raise(e)));
    pg_sys::Datum::from(append::conditional(events, condition.as_ref()))
}

/// A query's items as es_dcb_read runs them: one row per item (its types and tags), none
/// when the query matches every event (NULL, no items, or an item naming neither).
#[pg_extern(immutable, parallel_safe, schema = "_event_store")]
fn _es_dcb_items(
    query: Option<pgrx::JsonB>,
) -> TableIterator<'static, (name!(types, Vec<String>), name!(tags, Vec<String>))> {
    let items = match query.map(|q| q.0).filter(|q| !q.is_null()) {
        None => vec![],
        Some(q) => dcb::query(&q).unwrap_or_else(|e| raise(e)).items,
    };
    let all = items.is_empty()
        || items
            .iter()
            .any(|i| i.types.is_empty() && i.tags.is_empty());
    let rows: Vec<_> = match all {
        true => vec![],
        false => items.into_iter().map(|i| (i.types, i.tags)).collect(),
    };
    TableIterator::new(rows)
}

/// Refuses a negative `limit` (22023).
#[pg_extern(immutable, parallel_safe, schema = "_event_store")]
fn _es_dcb_check_limit(limit: Option<i32>) {
    if let Some(n) = limit.filter(|n| *n < 0) {
        raise(Invalid::Value(format!(
            "limit must be NULL or >= 0, not {n}"
        )));
    }
}
