//! Which TimescaleDB chunk an event of a hypertable goes into: the one whose range holds its
//! time, as TimescaleDB's catalog says (`event_store_core::append::chunks` keeps the answers).
//!
//! Only a chunk TimescaleDB would insert into as a plain table qualifies: not compressed,
//! partial, frozen or tiered (OSM), of a hypertable with one dimension. Any change to
//! TimescaleDB's chunk catalog (a chunk compressed, dropped, its status changed) invalidates
//! its hypertable cache's proxy relation, and so everything known here: the next append asks
//! again, after taking the chunk's lock (which blocks compression and drops from then on).
use crate::pg::plans;
use crate::pg::schema::{column, OrRaise};
use event_store_core::append::chunks::{Chunk, Chunks};
use event_store_core::time::PG_EPOCH_US;
use pgrx::pg_sys::{self, BuiltinOid};
use pgrx::spi::SpiClient;
use std::cell::{Cell, RefCell};

/// The chunk of event_store (`$1`) whose range holds `$2`, if TimescaleDB would insert into
/// it as it is; and the relation TimescaleDB invalidates when its catalog changes.
const CHUNK_SQL: &str = "SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', c.schema_name, c.table_name))::pg_catalog.oid, \
       s.range_start, s.range_end, \
       pg_catalog.to_regclass('_timescaledb_cache.cache_inval_hypertable')::pg_catalog.oid \
  FROM _timescaledb_catalog.hypertable h \
  JOIN _timescaledb_catalog.chunk c ON c.hypertable_id OPERATOR(pg_catalog.=) h.id \
  JOIN _timescaledb_catalog.chunk_constraint cc ON cc.chunk_id OPERATOR(pg_catalog.=) c.id \
  JOIN _timescaledb_catalog.dimension_slice s ON s.id OPERATOR(pg_catalog.=) cc.dimension_slice_id \
 WHERE pg_catalog.to_regclass(pg_catalog.format('%I.%I', h.schema_name, h.table_name))::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
   AND h.num_dimensions OPERATOR(pg_catalog.=) 1 \
   AND NOT c.dropped AND NOT c.osm_chunk AND c.compressed_chunk_id IS NULL \
   AND c.status OPERATOR(pg_catalog.=) 0 \
   AND s.range_start OPERATOR(pg_catalog.<=) $2 AND $2 OPERATOR(pg_catalog.<) s.range_end";

struct Known {
    /// TimescaleDB's proxy relation for its hypertable cache.
    proxy: pg_sys::Oid,
    chunks: Chunks,
}

thread_local! {
    static KNOWN: RefCell<Known> = RefCell::new(Known { proxy: pg_sys::InvalidOid, chunks: Chunks::default() });
    /// Set by the invalidation callback: what is known may be out of date.
    static STALE: Cell<bool> = const { Cell::new(false) };
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Relation cache invalidation callback: marks what is known stale when the relation is
/// TimescaleDB's proxy or a known chunk (or all relations are). Never raises.
unsafe extern "C-unwind" fn invalidated(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let hit = relid == pg_sys::InvalidOid
        || KNOWN.with(|k| {
            k.try_borrow()
                .map_or(true, |k| relid == k.proxy || k.chunks.knows(relid.to_u32()))
        });
    if hit {
        STALE.set(true);
    }
}

/// The chunk of hypertable `root` to insert an event of time `at` (PostgreSQL microseconds)
/// into, locked
/// (RowExclusiveLock), or `None` where there is none TimescaleDB would insert into as a plain
/// table (the caller's SQL INSERT lets TimescaleDB create or handle it).
pub(super) fn chunk(client: &SpiClient<'_>, root: pg_sys::Oid, at: i64) -> Option<pg_sys::Oid> {
    // TimescaleDB's slices of a timestamptz dimension count from the Unix epoch.
    let at = at + PG_EPOCH_US;
    if !WATCHING.replace(true) {
        // SAFETY: registers a callback that only sets flags; once per backend.
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(invalidated), pg_sys::Datum::from(0)) };
        STALE.set(true);
    }
    for _ in 0..2 {
        if STALE.replace(false) {
            KNOWN.with(|k| k.borrow_mut().chunks.forget());
        }
        let relid = match KNOWN.with(|k| k.borrow().chunks.find(at)) {
            Some(relid) => pg_sys::Oid::from(relid),
            None => {
                let (chunk, proxy) = look_up(client, root, at)?;
                KNOWN.with(|k| {
                    let mut k = k.borrow_mut();
                    k.proxy = proxy;
                    k.chunks.learn(chunk);
                });
                pg_sys::Oid::from(chunk.relid)
            }
        };
        // SAFETY: a lock on a relation by oid, held to the end of the transaction as the
        // INSERT's would be. Taking it first in this transaction accepts invalidations: a
        // change committed since the chunk was learnt marks it stale.
        unsafe { pg_sys::LockRelationOid(relid, pg_sys::RowExclusiveLock as i32) };
        if !STALE.get() {
            return Some(relid);
        }
    }
    None
}

/// Asks TimescaleDB's catalog, as of now (not the statement's snapshot: a chunk compressed
/// since must not be taken for a plain one).
fn look_up(client: &SpiClient<'_>, root: pg_sys::Oid, at: i64) -> Option<(Chunk, pg_sys::Oid)> {
    use BuiltinOid::*;
    let plan = plans::kept(client, CHUNK_SQL, &[OIDOID, INT8OID], false);
    // SAFETY: the latest snapshot, active for this query only. An error leaves it pushed:
    // the transaction's abort pops it.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
    let row = client
        .select(&*plan, Some(1), &[root.into(), at.into()])
        .or_raise("finding the TimescaleDB chunk of an event")
        .next()
        .map(|row| {
            let relid: Option<pg_sys::Oid> = crate::pg::schema::nullable(&row, 1, "chunk");
            let chunk = relid.map(|relid| Chunk {
                relid: relid.to_u32(),
                start: column(&row, 2, "dimension_slice.range_start"),
                end: column(&row, 3, "dimension_slice.range_end"),
            });
            let proxy: Option<pg_sys::Oid> = crate::pg::schema::nullable(&row, 4, "proxy");
            chunk.zip(proxy)
        });
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    row.flatten()
}
