//! Where the extension's objects live. Owner-run SQL names every one of them in full
//! (`@extschema@.event_store`) and runs under `search_path = pg_catalog, pg_temp`, so nothing a
//! caller creates in the extension's schema, in `public` or in `pg_temp` is ever picked up
//! instead (a better-matching function overload, a shadowing temp table). Also how rows of
//! those relations are read through SPI, with errors that say what failed.
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{SpiError, SpiHeapTupleData};
use pgrx::{FromDatum, IntoDatum};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CStr;

thread_local! {
    static NAMESPACE: Cell<Option<(pg_sys::Oid, &'static str)>> = const { Cell::new(None) };
    static QUALIFIED: RefCell<HashMap<&'static str, &'static str>> = RefCell::new(HashMap::new());
}

/// The extension's schema (its oid and quoted name), looked up once per backend by catalog
/// names qualified with pg_catalog, which no caller can shadow.
fn namespace() -> (pg_sys::Oid, &'static str) {
    if let Some(ns) = NAMESPACE.get() {
        return ns;
    }
    // A select, not Spi::get_two, which assigns a transaction id (impossible on a standby).
    let found = Spi::connect(|client| {
        client
            .select(
                "SELECT n.oid, pg_catalog.quote_ident(n.nspname) \
                   FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n \
                     ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
                  WHERE e.extname OPERATOR(pg_catalog.=) 'event_store'::pg_catalog.name",
                Some(1),
                &[],
            )
            .and_then(|rows| rows.first().get_two::<pg_sys::Oid, String>())
    });
    let ns = match found {
        Ok((Some(oid), Some(name))) => (oid, &*String::leak(name)),
        _ => {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                "event_store: the extension is not installed in this database"
            );
        }
    };
    NAMESPACE.set(Some(ns));
    ns
}

/// `sql` with every `@extschema@.` replaced by the extension's quoted schema; computed once
/// per statement text and backend.
pub fn qualified(sql: &'static str) -> &'static str {
    QUALIFIED.with(|cache| {
        if let Some(q) = cache.borrow().get(sql) {
            return *q;
        }
        let q: &'static str =
            String::leak(sql.replace("@extschema@.", &format!("{}.", namespace().1)));
        cache.borrow_mut().insert(sql, q);
        q
    })
}

/// One of the extension's relations, by name in its schema (no search_path involved).
pub fn relation(name: &CStr) -> pg_sys::Oid {
    try_relation(name).unwrap_or_else(|| {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!(
                "event_store: relation {} is missing from the extension's schema",
                name.to_string_lossy()
            )
        );
    })
}

/// One of the extension's relations, or None where it does not exist.
pub fn try_relation(name: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup by (name, namespace); `name` is NUL-terminated.
    let relid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace().0) };
    (relid != pg_sys::InvalidOid).then_some(relid)
}

/// Whether this database still has 0.1.0's SQL: the library is updated first, and until
/// `ALTER EXTENSION event_store UPDATE` runs, it leaves out what that SQL lacks (the catalog,
/// the verification log, the published horizon) and folds through 0.1.0's aggregate.
pub fn legacy_sql() -> bool {
    try_relation(c"es_catalog_types").is_none()
}

// Reading the extension's tables through SPI. A statement's own ERROR never comes back as
// an `Err` (it leaves with its SQLSTATE); what does is SPI's failure codes, or a value of
// another type than the code reads: a table changed by hand.

/// An SPI result's value, or an ERROR naming what was being done (`"reading es_reducers"`).
pub trait OrRaise<T> {
    fn or_raise(self, doing: &str) -> T;
}

impl<T> OrRaise<T> for Result<T, SpiError> {
    fn or_raise(self, doing: &str) -> T {
        self.unwrap_or_else(|e| spi_failed(doing, e))
    }
}

fn spi_failed(doing: &str, e: SpiError) -> ! {
    let code = match e {
        SpiError::DatumError(_) => PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
        _ => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
    };
    ereport!(ERROR, code, format!("event_store: {doing}: {e}"));
}

/// Column `ordinal` of `row`, which may be NULL; `name` ("es_streams.first_at") names it in
/// the error when it has another type.
pub fn nullable<T: FromDatum + IntoDatum>(
    row: &SpiHeapTupleData<'_>,
    ordinal: usize,
    name: &str,
) -> Option<T> {
    match row.get::<T>(ordinal) {
        Ok(v) => v,
        Err(e) => spi_failed(&format!("reading {name}"), e),
    }
}

/// Column `ordinal` of `row`, declared NOT NULL.
pub fn column<T: FromDatum + IntoDatum>(
    row: &SpiHeapTupleData<'_>,
    ordinal: usize,
    name: &str,
) -> T {
    let Some(v) = nullable(row, ordinal, name) else {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("event_store: {name} is NULL"),
            "The column is declared NOT NULL: its table was changed by hand."
        );
    };
    v
}

/// The first column of a read-only query's first row. Spi::get_one would assign the
/// transaction an id, which a hot standby refuses.
pub fn select_one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
    Spi::connect(|client| {
        client
            .select(sql, Some(1), &[])
            .and_then(|rows| rows.first().get_one::<T>())
    })
    .or_raise(sql)
}

/// Runs `f` as the owner of the extension's relation `rel`, for writes no caller may make
/// directly (a log entry, a digest's record), then switches back.
pub fn as_owner_of<R>(rel: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    // SAFETY: the relation exists (the caller looked it up) and is only read for its owner,
    // then closed.
    let owner = unsafe {
        let r = pg_sys::RelationIdGetRelation(rel);
        let owner = (*(*r).rd_rel).relowner;
        pg_sys::RelationClose(r);
        owner
    };
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: the user is switched for `f` and switched back; an error in between aborts the
    // transaction, whose cleanup restores the user as it does after any SECURITY DEFINER
    // function.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let out = f();
    // SAFETY: restores what was read above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
    out
}
