//! Where an event goes: event_store itself, or when it is a hypertable the TimescaleDB chunk
//! whose range holds its time, as TimescaleDB's catalog says (`event_store_core::append::chunks`
//! keeps the answers). Whether it is a hypertable is asked of TimescaleDB's catalog too: a
//! restored hypertable has lost the insert trigger that marks one.
//!
//! Only a chunk TimescaleDB would insert into as a plain table qualifies: not compressed,
//! partial, frozen or tiered (OSM), of a hypertable with one dimension. Any change to
//! TimescaleDB's chunk catalog (a chunk compressed, dropped, its status changed) invalidates
//! its hypertable cache's proxy relation, and so everything known here: the next append asks
//! again, after taking the chunk's lock (which blocks compression and drops from then on).
use crate::pg::schema::{column, OrRaise};
use crate::pg::{plans, relcache};
use event_store_core::append::chunks::{Chunk, Chunks};
use event_store_core::time::PG_EPOCH_US;
use pgrx::pg_sys::{self, BuiltinOid};
use pgrx::spi::SpiClient;
use std::cell::RefCell;

/// The chunk of event_store (`$1`) whose range holds `$2`, if TimescaleDB would insert into
/// it as it is.
const CHUNK_SQL: &str = "SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', c.schema_name, c.table_name))::pg_catalog.oid, \
       s.range_start, s.range_end \
  FROM _timescaledb_catalog.hypertable h \
  JOIN _timescaledb_catalog.chunk c ON c.hypertable_id OPERATOR(pg_catalog.=) h.id \
  JOIN _timescaledb_catalog.chunk_constraint cc ON cc.chunk_id OPERATOR(pg_catalog.=) c.id \
  JOIN _timescaledb_catalog.dimension_slice s ON s.id OPERATOR(pg_catalog.=) cc.dimension_slice_id \
 WHERE pg_catalog.to_regclass(pg_catalog.format('%I.%I', h.schema_name, h.table_name))::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
   AND h.num_dimensions OPERATOR(pg_catalog.=) 1 \
   AND NOT c.dropped AND NOT c.osm_chunk AND c.compressed_chunk_id IS NULL \
   AND c.status OPERATOR(pg_catalog.=) 0 \
   AND s.range_start OPERATOR(pg_catalog.<=) $2 AND $2 OPERATOR(pg_catalog.<) s.range_end";

/// Whether event_store (`$1`) is a hypertable, and TimescaleDB's proxy relation; asked only
/// where TimescaleDB is installed (its catalog exists, its schemas are its own).
const HYPERTABLE_SQL: &str = "SELECT EXISTS (SELECT FROM _timescaledb_catalog.hypertable h \
         WHERE pg_catalog.to_regclass(pg_catalog.format('%I.%I', h.schema_name, h.table_name))::pg_catalog.oid OPERATOR(pg_catalog.=) $1), \
       pg_catalog.to_regclass('_timescaledb_cache.cache_inval_hypertable')::pg_catalog.oid";

/// What is known, as of a generation of `relcache`: it watches event_store, TimescaleDB's
/// proxy relation for its hypertable cache, and every chunk learnt.
struct Known {
    generation: u64,
    /// event_store, and whether it is a hypertable.
    root: pg_sys::Oid,
    hypertable: Option<bool>,
    chunks: Chunks,
}

thread_local! {
    static KNOWN: RefCell<Known> = const { RefCell::new(Known {
        generation: 0,
        root: pg_sys::InvalidOid,
        hypertable: None,
        chunks: Chunks::new(),
    }) };
}

/// Forgets what is known when a watched relation changed since it was learnt.
fn refresh() {
    let now = relcache::generation();
    KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        if k.generation != now {
            k.generation = now;
            k.hypertable = None;
            k.chunks.forget();
        }
    });
}

/// Whether event_store (`root`, locked by the append) is a hypertable.
pub(super) fn hypertable(client: &SpiClient<'_>, root: pg_sys::Oid) -> bool {
    refresh();
    if let Some(known) = KNOWN.with(|k| {
        let k = k.borrow();
        (k.root == root).then_some(k.hypertable).flatten()
    }) {
        return known;
    }
    // SAFETY: a catalog lookup by name.
    let installed =
        unsafe { pg_sys::get_extension_oid(c"timescaledb".as_ptr(), true) } != pg_sys::InvalidOid;
    let (hypertable, proxy) = if installed {
        let plan = plans::kept(client, HYPERTABLE_SQL, &[BuiltinOid::OIDOID], false);
        latest(|| {
            let row = client
                .select(&*plan, Some(1), &[root.into()])
                .or_raise("asking whether event_store is a hypertable")
                .next()
                .expect("one row");
            let hypertable: bool = column(&row, 1, "whether event_store is a hypertable");
            let proxy: Option<pg_sys::Oid> = crate::pg::schema::nullable(&row, 2, "proxy");
            (hypertable, proxy.unwrap_or(pg_sys::InvalidOid))
        })
    } else {
        (false, pg_sys::InvalidOid)
    };
    relcache::watch(root);
    if proxy != pg_sys::InvalidOid {
        relcache::watch(proxy);
    }
    KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        if k.root != root {
            k.root = root;
            k.chunks.forget();
        }
        k.hypertable = Some(hypertable);
    });
    hypertable
}

/// `f`, its queries reading the catalog as of now (not the statement's snapshot: a change
/// committed while the append waited for its locks is seen).
fn latest<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: the latest snapshot, active for `f` only. An error leaves it pushed: the
    // transaction's abort pops it.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
    let result = f();
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    result
}

/// The chunk of hypertable `root` to insert an event of time `at` (PostgreSQL microseconds)
/// into, locked (RowExclusiveLock), or `None` where there is none TimescaleDB would insert into as a plain
/// table (the caller's SQL INSERT lets TimescaleDB create or handle it).
pub(super) fn chunk(client: &SpiClient<'_>, root: pg_sys::Oid, at: i64) -> Option<pg_sys::Oid> {
    // TimescaleDB's slices of a timestamptz dimension count from the Unix epoch.
    let at = at + PG_EPOCH_US;
    for _ in 0..2 {
        refresh();
        let learnt = relcache::generation();
        let relid = match KNOWN.with(|k| k.borrow().chunks.find(at)) {
            Some(relid) => pg_sys::Oid::from(relid),
            None => {
                let chunk = look_up(client, root, at)?;
                relcache::watch(pg_sys::Oid::from(chunk.relid));
                KNOWN.with(|k| k.borrow_mut().chunks.learn(chunk));
                pg_sys::Oid::from(chunk.relid)
            }
        };
        // SAFETY: a lock on a relation by oid, held to the end of the transaction as the
        // INSERT's would be. Taking it first in this transaction accepts invalidations: a
        // change committed since the chunk was learnt marks it stale.
        unsafe { pg_sys::LockRelationOid(relid, pg_sys::RowExclusiveLock as i32) };
        if relcache::generation() == learnt {
            return Some(relid);
        }
    }
    None
}

/// Asks TimescaleDB's catalog, as of now: a chunk compressed since the statement began must
/// not be taken for a plain one.
fn look_up(client: &SpiClient<'_>, root: pg_sys::Oid, at: i64) -> Option<Chunk> {
    use BuiltinOid::*;
    let plan = plans::kept(client, CHUNK_SQL, &[OIDOID, INT8OID], false);
    latest(|| {
        let row = client
            .select(&*plan, Some(1), &[root.into(), at.into()])
            .or_raise("finding the TimescaleDB chunk of an event")
            .next()?;
        let relid: Option<pg_sys::Oid> = crate::pg::schema::nullable(&row, 1, "chunk");
        Some(Chunk {
            relid: relid?.to_u32(),
            start: column(&row, 2, "dimension_slice.range_start"),
            end: column(&row, 3, "dimension_slice.range_end"),
        })
    })
}
