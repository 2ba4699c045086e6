//! The reducer loader: the rules of a category, read from es_reducers once per statement and
//! parsed by the core crate's rule engine, with the catalog's upcasts. Used by the state
//! functions, es_fold, es_diff and es_verify.
use crate::pg::jsonb::Json;
use crate::pg::plans;
use crate::pg::schema::{column, OrRaise};
use event_store_core::fold::reducers::RuleSet;
use pgrx::pg_sys::BuiltinOid as Oid;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

type StatementKey = (u32, i64, u32);

thread_local! {
    static RULES: RefCell<(StatementKey, HashMap<String, Rc<RuleSet>>)> = RefCell::new(Default::default());
}

/// Reducers are read once per statement (and again after the statement changes data), so an
/// aggregate over many streams reads them once per category.
fn statement_key() -> StatementKey {
    // SAFETY: reads of this backend's transaction state, which exists wherever SQL runs
    // (MyProc is set in every backend that runs SQL).
    unsafe {
        (
            (*pg_sys::MyProc).lxid,
            pg_sys::GetCurrentStatementStartTimestamp(),
            pg_sys::GetCurrentCommandId(false),
        )
    }
}

/// Qualified: es_fold calls this under the caller's search_path.
const RULES_SQL: &str = "SELECT category, event_type, rule FROM _event_store.es_reducers \
      WHERE category = $1 OR category = '*'";

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
            let plan = plans::kept(client, RULES_SQL, &[Oid::TEXTOID], false);
            client
                .select(&*plan, None, &[category.into()])
                .or_raise("reading es_reducers")
                .map(|row| {
                    (
                        column::<String>(&row, 1, "es_reducers.category"),
                        column::<String>(&row, 2, "es_reducers.event_type"),
                        column::<Json>(&row, 3, "es_reducers.rule").0,
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
        let set = Rc::new(set.with_upcasts(crate::catalog::upcasts()));
        cache.1.insert(category.to_string(), set.clone());
        set
    })
}

/// Raises unless the reducer is acceptable (es_define_reducer checks it before storing).
#[pg_extern(immutable, parallel_safe, schema = "_event_store")]
fn _es_check_reducer(category: Option<&str>, event_type: Option<&str>, rule: Option<pgrx::JsonB>) {
    event_store_core::validate::check_reducer(category, event_type, rule.as_ref().map(|r| &r.0))
        .unwrap_or_else(|e| crate::pg::errors::raise_invalid(e))
}
