//! Where the extension's objects live. The public API is in the extension's schema (often
//! `public`, which the database owner controls); every table but event_store, and every
//! internal function, is in `_event_store`, where only the extension's owner creates objects.
//! Owner-run SQL names only `_event_store.` objects, in full, reaches event_store through the
//! view `_event_store.log` (bound to it by oid), and runs under `search_path = pg_catalog,
//! pg_temp`: nothing anyone creates in the extension's schema, in `public` or in `pg_temp`,
//! and no rename of the extension's schema, changes what it runs. Also how rows of those
//! relations are read through SPI, with errors that say what failed.
//!
//! Until `ALTER EXTENSION event_store UPDATE` brings a database to 0.3.0, its objects are all
//! in the extension's schema: this library serves that layout too, naming them there.
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{SpiError, SpiHeapTupleData};
use pgrx::{FromDatum, IntoDatum};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CStr;

/// The internal schema's name, as SQL in this crate spells it.
const INTERNAL: &str = "_event_store";

thread_local! {
    /// `_event_store` once found: a database never goes back to the older layout.
    static INTERNAL_FOUND: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
    static NAMESPACE: Cell<Option<(pg_sys::Oid, &'static str)>> = const { Cell::new(None) };
    static QUALIFIED: RefCell<HashMap<(&'static str, bool), &'static str>> = RefCell::new(HashMap::new());
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

/// The `_event_store` schema, when it is the extension's: a member of the extension in
/// pg_depend (a schema of that name someone else made is never used). None before the update
/// to 0.3.0. Looked up through the catalogs' indexes, so it follows an update in this session.
fn internal() -> Option<pg_sys::Oid> {
    if let Some(ns) = INTERNAL_FOUND.get() {
        // SAFETY: a syscache probe by oid. Gone when the extension was dropped and created
        // again in this session.
        let exists = unsafe {
            pg_sys::SearchSysCacheExists(
                pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
                pg_sys::Datum::from(ns),
                pg_sys::Datum::from(0),
                pg_sys::Datum::from(0),
                pg_sys::Datum::from(0),
            )
        };
        if exists {
            return Some(ns);
        }
    }
    // SAFETY: lookups by name (NUL-terminated) and by oid in the catalogs.
    let found = unsafe {
        let ns = pg_sys::get_namespace_oid(c"_event_store".as_ptr(), true);
        let ext = pg_sys::get_extension_oid(c"event_store".as_ptr(), true);
        (ns != pg_sys::InvalidOid
            && ext != pg_sys::InvalidOid
            && pg_sys::getExtensionOfObject(pg_sys::NamespaceRelationId, ns) == ext)
            .then_some(ns)
    };
    INTERNAL_FOUND.set(found);
    found
}

/// Whether this database has 0.3.0's layout (`_event_store`); plans and statement texts are
/// kept per layout.
pub fn internal_layout() -> bool {
    internal().is_some()
}

fn relation_owner(rel: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: the relation exists (the caller looked it up) and is only read for its owner,
    // then closed.
    unsafe {
        let r = pg_sys::RelationIdGetRelation(rel);
        let owner = (*(*r).rd_rel).relowner;
        pg_sys::RelationClose(r);
        owner
    }
}

/// `sql` for this database's layout: as written (`_event_store.` names) with 0.3.0's, and
/// with every `_event_store.` name in the extension's schema before it (`_event_store.log`
/// being event_store itself there). Computed once per statement text, layout and backend.
pub fn qualified(sql: &'static str) -> &'static str {
    let layout = internal_layout();
    QUALIFIED.with(|cache| {
        if let Some(q) = cache.borrow().get(&(sql, layout)) {
            return *q;
        }
        let q: &'static str = if layout {
            sql
        } else {
            let ext = format!("{}.", namespace().1);
            // The internal twins of public functions, then everything else.
            let mut q = sql.to_string();
            for (internal, public) in [
                ("log", "event_store"),
                ("_es_append(", "es_append("),
                ("_es_publish_feed_horizon(", "es_publish_feed_horizon("),
            ] {
                q = q.replace(&format!("{INTERNAL}.{internal}"), &format!("{ext}{public}"));
            }
            String::leak(q.replace(&format!("{INTERNAL}."), &ext))
        };
        cache.borrow_mut().insert((sql, layout), q);
        q
    })
}

/// One of the extension's relations: event_store in the extension's schema, the others in
/// `_event_store` (in the extension's schema before 0.3.0). By name in a schema found by oid:
/// no search_path involved.
pub fn relation(name: &CStr) -> pg_sys::Oid {
    try_relation(name).unwrap_or_else(|| {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!(
                "event_store: relation {} is missing from the extension's schemas",
                name.to_string_lossy()
            )
        );
    })
}

/// One of the extension's relations, or None where it does not exist.
pub fn try_relation(name: &CStr) -> Option<pg_sys::Oid> {
    let ns = if name == c"event_store" {
        namespace().0
    } else {
        internal().unwrap_or_else(|| namespace().0)
    };
    // SAFETY: a syscache lookup by (name, namespace); `name` is NUL-terminated.
    let relid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), ns) };
    (relid != pg_sys::InvalidOid).then_some(relid)
}

/// Whether event_store has 0.5.0's `tags` column: until `ALTER EXTENSION event_store UPDATE`,
/// appends store no tags and es_verify hashes none.
pub fn tagged() -> bool {
    // SAFETY: a syscache lookup of a column of the extension's table.
    unsafe { pg_sys::get_attnum(relation(c"event_store"), c"tags".as_ptr()) > 0 }
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
    let owner = relation_owner(rel);
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
