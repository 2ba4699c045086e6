//! Dynamic Consistency Boundary (docs/dcb.md): `es_dcb_append`, conditioned on a query over
//! tags and types, on the append engine (whose `condition` module takes the locks and checks
//! the condition); `es_dcb_read` in `read`.
mod read;

use crate::append;
use crate::pg::errors::raise_invalid as raise;
use crate::pg::jsonb;
use event_store_core::dcb;
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

/// 0.5.0's es_dcb_read (PL/pgSQL) calls these two until `ALTER EXTENSION event_store UPDATE`
/// replaces it with `read::es_dcb_read`; 0.6.0's SQL no longer declares them.
#[pg_extern(sql = false)]
fn _es_dcb_items(
    query: Option<pgrx::JsonB>,
) -> TableIterator<'static, (name!(types, Vec<String>), name!(tags, Vec<String>))> {
    let items = read::items(query.map(|q| q.0).as_ref());
    TableIterator::new(items.into_iter().map(|i| (i.types, i.tags)))
}

#[pg_extern(sql = false)]
fn _es_dcb_check_limit(limit: Option<i32>) {
    read::check_limit(limit)
}
