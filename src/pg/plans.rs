//! SPI plans kept for the life of the backend: planning dominated the cost of the hot
//! statements (an append's registry updates, a fold's reads).
use crate::pg::schema::OrRaise;
use pgrx::pg_sys::BuiltinOid as Oid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A kept plan is planned for the table sizes of its first uses (a seq scan of a young,
/// small es_streams) and only replanned when ANALYZE happens to run. Preparing it again now
/// and then bounds how long a backend in a pool runs with a plan for yesterday's sizes.
const REPREPARE_AFTER_USES: u32 = 1000;

struct Kept {
    plan: Rc<OwnedPreparedStatement>,
    uses: u32,
}

thread_local! {
    static PLANS: RefCell<HashMap<(&'static str, bool), Kept>> = RefCell::new(HashMap::new());
}

/// The kept plan of `sql` (in this database's layout, see `schema::qualified`). `mutating` plans run with a fresh snapshot per statement,
/// read-only ones with the calling query's.
pub fn kept(
    client: &SpiClient<'_>,
    sql: &'static str,
    types: &[Oid],
    mutating: bool,
) -> Rc<OwnedPreparedStatement> {
    let prepare = || {
        let oids: Vec<PgOid> = types.iter().map(|t| PgOid::BuiltIn(*t)).collect();
        let text = crate::pg::schema::qualified(sql);
        let plan = if mutating {
            client.prepare_mut(text, &oids)
        } else {
            client.prepare(text, &oids)
        };
        Rc::new(plan.or_raise("preparing a kept statement").keep())
    };
    PLANS.with(|plans| {
        let mut plans = plans.borrow_mut();
        let kept = plans
            .entry((sql, crate::pg::schema::internal_layout()))
            .or_insert_with(|| Kept {
                plan: prepare(),
                uses: 0,
            });
        kept.uses += 1;
        if kept.uses > REPREPARE_AFTER_USES {
            *kept = Kept {
                plan: prepare(),
                uses: 1,
            };
        }
        kept.plan.clone()
    })
}

/// Runs `f`, which runs kept statements that read a few index entries of every chunk (a DCB
/// condition's check, es_dcb_read's items), with the planner settings they need: no JIT (their
/// plans over every chunk cost past jit_above_cost, and compiling took hundreds of
/// milliseconds), generic plans (with the tags known a custom plan looks cheaper, so the default
/// mode would plan them again on every call), and no TimescaleDB ChunkAppend (tags and
/// positions exclude no chunk, and starting it cost a tenth of a decision at 8 clients, benches/
/// section 13; a placeholder where TimescaleDB is not loaded). Set here, around the statements,
/// not as the functions' SET clauses, which cost every call 4% of a decision when no statement
/// runs (the tag index read directly, `read::tag_scan`).
pub fn for_few_rows<R>(f: impl FnOnce() -> R) -> R {
    crate::pg::settings::with(
        &[
            (c"jit", c"off"),
            (c"plan_cache_mode", c"force_generic_plan"),
            (c"timescaledb.enable_chunk_append", c"off"),
        ],
        f,
    )
}
