//! Where the extension's objects live. Owner-run SQL names every one of them in full
//! (`@extschema@.event_store`) and runs under `search_path = pg_catalog, pg_temp`, so nothing a
//! caller creates in the extension's schema, in `public` or in `pg_temp` is ever picked up
//! instead (a better-matching function overload, a shadowing temp table).
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CString;

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
    let found = pgrx::Spi::get_two::<pg_sys::Oid, String>(
        "SELECT n.oid, pg_catalog.quote_ident(n.nspname) \
           FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n \
             ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
          WHERE e.extname OPERATOR(pg_catalog.=) 'event_store'::pg_catalog.name",
    );
    let ns = match found {
        Ok((Some(oid), Some(name))) => (oid, &*String::leak(name)),
        _ => {
            pgrx::ereport!(
                ERROR,
                pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
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
pub fn relation(name: &str) -> pg_sys::Oid {
    let cname = CString::new(name).expect("relation names have no NUL byte");
    // SAFETY: a syscache lookup by (name, namespace).
    let relid = unsafe { pg_sys::get_relname_relid(cname.as_ptr(), namespace().0) };
    if relid == pg_sys::InvalidOid {
        pgrx::ereport!(
            ERROR,
            pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("event_store: relation {name} is missing from the extension's schema")
        );
    }
    relid
}
