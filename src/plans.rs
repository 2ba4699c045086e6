//! SPI plans kept for the life of the backend: planning dominated the cost of the hot
//! statements (an append's registry updates, a fold's reads).
use pgrx::pg_sys::BuiltinOid as Oid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

thread_local! {
    static PLANS: RefCell<HashMap<&'static str, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// The kept plan of `sql`, prepared on first use. `mutating` plans run with a fresh
/// snapshot per statement, read-only ones with the calling query's.
pub fn kept(
    client: &SpiClient<'_>,
    sql: &'static str,
    types: &[Oid],
    mutating: bool,
) -> Rc<OwnedPreparedStatement> {
    PLANS.with(|plans| {
        plans
            .borrow_mut()
            .entry(sql)
            .or_insert_with(|| {
                let oids: Vec<PgOid> = types.iter().map(|t| PgOid::BuiltIn(*t)).collect();
                let plan = if mutating {
                    client.prepare_mut(sql, &oids)
                } else {
                    client.prepare(sql, &oids)
                };
                Rc::new(plan.expect("preparing a kept statement").keep())
            })
            .clone()
    })
}
