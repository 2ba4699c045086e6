//! Where an event goes: event_store itself, or when it is a hypertable the TimescaleDB chunk
//! whose range holds its time (`pg::timescaledb` reads TimescaleDB's catalog;
//! `event_store_core::append::chunks` keeps the answers). Whether it is a hypertable is asked
//! of that catalog too: a restored hypertable has lost the insert trigger that marks one.
//!
//! Only a chunk TimescaleDB would insert into as a plain table qualifies (`Chunk::writable`).
//! Any change to TimescaleDB's chunk catalog (a chunk compressed, dropped, its status changed)
//! invalidates its hypertable cache's proxy relation, and so everything known here: the next
//! append asks again, after taking the chunk's lock (which blocks compression and drops from
//! then on). Both questions are asked as of now, not of the statement's snapshot: a chunk
//! compressed since the statement began must not be taken for a plain one.
use crate::pg::guards::as_of_now;
use crate::pg::{relcache, timescaledb};
use event_store_core::append::chunks::{Chunk, Chunks};
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use std::cell::RefCell;

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
    let hypertable = as_of_now(|| timescaledb::hypertable(client, root));
    relcache::watch(root);
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

/// The chunk of hypertable `root` to insert an event of time `at` (PostgreSQL microseconds)
/// into, locked (RowExclusiveLock), or `None` where there is none TimescaleDB would insert
/// into as a plain table (the caller's SQL INSERT lets TimescaleDB create or handle it).
pub(super) fn chunk(client: &SpiClient<'_>, root: pg_sys::Oid, at: i64) -> Option<pg_sys::Oid> {
    for _ in 0..2 {
        refresh();
        let learnt = relcache::generation();
        let relid = match KNOWN.with(|k| k.borrow().chunks.find(at)) {
            Some(relid) => pg_sys::Oid::from(relid),
            None => {
                let found = as_of_now(|| timescaledb::chunks(client, root, at, at))?;
                let chunk = found.into_iter().find(timescaledb::Chunk::writable)?;
                relcache::watch(chunk.relid);
                KNOWN.with(|k| {
                    k.borrow_mut().chunks.learn(Chunk {
                        relid: chunk.relid.to_u32(),
                        start: chunk.start,
                        end: chunk.end,
                    })
                });
                chunk.relid
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
