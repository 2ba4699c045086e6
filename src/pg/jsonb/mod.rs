//! jsonb datums: read in place (`binary`, what folding and the catalog read) or through
//! PostgreSQL's own functions (`functions`, what an append's arguments go through); here,
//! the conversions between datums and JSON values or fold states.
pub mod binary;
pub mod functions;

pub use binary::*;

use event_store_core::json::pointer::Data;
use event_store_core::json::state::State;
use pgrx::pg_sys;
use serde_json::Value;

/// A jsonb column or argument read with [`to_value`], e.g. `row.get::<Json>(n)` in SPI.
pub struct Json(pub Value);

impl pgrx::FromDatum for Json {
    /// # Safety
    /// As `FromDatum` requires: unless `is_null`, `datum` is a jsonb datum.
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then(|| Json(to_value(datum)))
    }
}

/// A jsonb datum of `v` (through jsonb_in, which also normalises numbers as jsonb does).
pub fn datum(v: &Value) -> pg_sys::Datum {
    let text = std::ffi::CString::new(v.to_string()).expect("JSON text escapes NUL bytes");
    // SAFETY: jsonb_in with the NUL-terminated text it expects, alive for the call; its
    // errors (a number out of numeric's range, a \u0000) are raised with their SQLSTATE.
    unsafe { pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(text.as_ptr().into())]) }
        .expect("jsonb_in never returns NULL")
}

/// A fold state read from or written as a jsonb column or argument, without a
/// `serde_json::Value` on the way in.
pub struct StateJsonb(pub State);

impl pgrx::FromDatum for StateJsonb {
    /// # Safety
    /// As `FromDatum` requires: unless `is_null`, `datum` is a jsonb datum.
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then(|| StateJsonb(with_jsonb(datum, |j| j.to_state())))
    }
}

impl pgrx::IntoDatum for StateJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(datum(&Value::from(&self.0)))
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

impl pgrx::IntoDatum for Json {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(datum(&self.0))
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}
