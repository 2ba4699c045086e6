//! A stream's events read straight from its (stream_id, stream_version) index, in version
//! order, for the state functions' fold: no executor, no aggregate call per event, and on a
//! hypertable no time condition checked on every event (chunks are picked once, from
//! TimescaleDB's catalog). Where this reading could differ from what a query would see (row
//! level security, column-only privileges, compressed chunks, a missing index) it declines,
//! and the caller folds through SQL instead. (One file past 500 lines: the index scan, the
//! chunk walk and the visibility rules they share are only safe read together.)
use crate::pg::guards::{IndexScan, OwnedContext, Pinned, Registered, Switched};
use crate::pg::jsonb::{self, Jsonb};
use crate::pg::timescaledb;
use pgrx::pg_sys::{self, Datum};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::ffi::CStr;

/// Which events of the stream to read: versions in (after_version, upto_version], times in
/// [from_at, upto_at]. `timed` is false when upto_at is the stream's last time (no event is
/// later), so the scan need not read the time of each event.
pub struct Bounds {
    pub after_version: i64,
    pub upto_version: i64,
    pub from_at: TimestampWithTimeZone,
    pub upto_at: TimestampWithTimeZone,
    pub timed: bool,
}

/// A relation holding events (event_store, or one of its chunks), opened with its stream
/// index, and where to read them. Dropping closes both and keeps their locks to the end of
/// the transaction, as a query does.
struct Source {
    rel: pg_sys::Relation,
    index: pg_sys::Relation,
    version: usize,
    created_at: usize,
    event_type: usize,
    event_data: usize,
    event_version: usize,
}

impl Drop for Source {
    fn drop(&mut self) {
        // SAFETY: both were opened by `open` and are closed once, here.
        unsafe {
            pg_sys::index_close(self.index, pg_sys::NoLock as i32);
            pg_sys::relation_close(self.rel, pg_sys::NoLock as i32);
        }
    }
}

/// Whether event_store has children: chunks, when it is a hypertable.
pub fn partitioned(table: pg_sys::Oid) -> bool {
    // SAFETY: a relcache reference to an open relation (the caller holds event_store), closed
    // at once.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(table);
        let partitioned = (*(*rel).rd_rel).relhassubclass;
        pg_sys::RelationClose(rel);
        partitioned
    }
}

/// The relations to read, in time order, or `None` when some cannot be read in place.
fn relations(client: &SpiClient<'_>, table: pg_sys::Oid, b: &Bounds) -> Option<Vec<pg_sys::Oid>> {
    if !partitioned(table) {
        return Some(vec![table]);
    }
    // None: children of another kind, or a catalog of another shape.
    let mut chunks = timescaledb::chunks(
        client,
        table,
        b.from_at.into_inner(),
        b.upto_at.into_inner(),
    )?;
    if !chunks.iter().all(timescaledb::Chunk::readable) {
        return None;
    }
    // Sorted here, not in SQL: where enable_sort is off, a sort costs the plan enough to be
    // JIT-compiled on every call.
    chunks.sort_unstable_by_key(|c| c.start);
    Some(chunks.into_iter().map(|c| c.relid).collect())
}

pub(super) fn attnum(relid: pg_sys::Oid, name: &CStr) -> Option<usize> {
    // SAFETY: a syscache lookup.
    let n = unsafe { pg_sys::get_attnum(relid, name.as_ptr()) };
    (n > 0).then_some(n as usize)
}

/// Opens a relation of events and its stream index: a valid, whole btree index whose keys
/// start with (stream_id, stream_version).
///
/// # Safety
/// Inside a transaction; `relid` names a relation (it may have been dropped since).
unsafe fn open(relid: pg_sys::Oid) -> Option<Source> {
    let stream = attnum(relid, c"stream_id")?;
    let version = attnum(relid, c"stream_version")?;
    let created_at = attnum(relid, c"created_at")?;
    let event_type = attnum(relid, c"event_type")?;
    let event_data = attnum(relid, c"event_data")?;
    let event_version = attnum(relid, c"event_version")?;
    let rel = pg_sys::try_relation_open(relid, pg_sys::AccessShareLock as i32);
    if rel.is_null() {
        return None; // dropped since the catalog was read
    }
    let indexes = pgrx::PgList::<pg_sys::Oid>::from_pg(pg_sys::RelationGetIndexList(rel));
    for oid in indexes.iter_oid() {
        let index = pg_sys::index_open(oid, pg_sys::AccessShareLock as i32);
        let form = (*index).rd_index;
        let keys = (*form).indkey.values.as_slice((*form).indnatts as usize);
        if (*(*index).rd_rel).relam == pg_sys::BTREE_AM_OID
            && (*form).indisvalid
            && (*form).indnkeyatts >= 2
            && keys[0] as usize == stream
            && keys[1] as usize == version
            && pg_sys::RelationGetIndexPredicate(index).is_null()
        {
            return Some(Source {
                rel,
                index,
                version,
                created_at,
                event_type,
                event_data,
                event_version,
            });
        }
        pg_sys::index_close(index, pg_sys::AccessShareLock as i32);
    }
    pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
    None
}

/// Whether row level security filters what the current user reads of event_store.
pub fn row_security(table: pg_sys::Oid) -> bool {
    // SAFETY: a catalog check for the current user.
    unsafe {
        pg_sys::check_enable_rls(table, pg_sys::InvalidOid, true)
            == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
    }
}

/// Whether the current user reads event_store as a query would: with table-wide SELECT and
/// no row level security in the way.
pub fn reads_like_a_query(table: pg_sys::Oid) -> bool {
    unfiltered(table, pg_sys::ACL_SELECT)
}

/// Whether the current user holds `mode` (ACL_SELECT, ACL_INSERT...) on all of `table`, with
/// no row level security in the way: what a statement would check, for code that reads or
/// writes the table without one.
pub fn unfiltered(table: pg_sys::Oid, mode: u32) -> bool {
    // SAFETY: a privilege check for the current user.
    let granted = unsafe {
        pg_sys::pg_class_aclcheck(table, pg_sys::GetUserId(), mode as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    };
    granted && !row_security(table)
}

/// Calls `f(event_type, event_version, event_data)` for the stream's events within `bounds`, in version
/// order. Returns false, having called nothing, when the events cannot be read in place.
pub fn each_event(
    client: &SpiClient<'_>,
    table: pg_sys::Oid,
    stream_id: &str,
    bounds: &Bounds,
    mut f: impl FnMut(&str, i32, Jsonb),
) -> bool {
    if !reads_like_a_query(table) {
        return false;
    }
    let Some(relids) = relations(client, table, bounds) else {
        return false;
    };
    let mut sources = Vec::with_capacity(relids.len());
    for relid in relids {
        // SAFETY: in the caller's transaction; what was opened closes when `sources` drops.
        match unsafe { open(relid) } {
            Some(s) => sources.push(s),
            None => return false,
        }
    }
    // SAFETY: the snapshot SPI gave the caller's query, or a later one (which reads the same
    // events up to the bounds: a later append has higher versions and times), registered
    // for the scan; a context of the scan's own; the stream id as a palloc'd text datum.
    // The guards release all of it, also when an error unwinds through here.
    unsafe {
        let snapshot = Registered(pg_sys::RegisterSnapshot(
            if pg_sys::GetCurrentTransactionIdIfAny() == pg_sys::InvalidTransactionId {
                pg_sys::GetActiveSnapshot()
            } else {
                pg_sys::GetTransactionSnapshot()
            },
        ));
        let per_event = OwnedContext::new(c"event_store stream scan");
        let stream =
            pg_sys::cstring_to_text_with_len(stream_id.as_ptr().cast(), stream_id.len() as i32);
        for s in &sources {
            if scan(
                s,
                snapshot.0,
                Datum::from(stream),
                bounds,
                &per_event,
                &mut f,
            ) {
                break;
            }
        }
    }
    true
}

/// Puts in `tuples` (emptied first) the row versions `snapshot` sees at `tids`, which point
/// into `buffer`'s page (locked by the caller, who keeps it pinned while the tuples are used).
///
/// # Safety
/// As said; `rel` is open and the heap of `buffer`.
pub(super) unsafe fn visible(
    rel: pg_sys::Relation,
    buffer: pg_sys::Buffer,
    snapshot: pg_sys::Snapshot,
    tids: impl Iterator<Item = pg_sys::ItemPointerData>,
    tuples: &mut Vec<pg_sys::HeapTupleData>,
) {
    tuples.clear();
    for mut tid in tids {
        // SAFETY: as the caller promises; the tuple points into the page.
        unsafe {
            let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
            let mut all_dead = false;
            if pg_sys::heap_hot_search_buffer(
                &mut tid,
                rel,
                buffer,
                snapshot,
                &mut tuple,
                &mut all_dead,
                true,
            ) {
                tuples.push(tuple);
            }
        }
    }
}

/// Reads columns 1..=values.len() of a tuple as heap_deform_tuple does, but only that far
/// (an event's metadata, hash and later columns are not touched); false, for
/// heap_deform_tuple to do it, when the tuple has nulls or a value in an unexpected form.
///
/// # Safety
/// `tuple` is a heap tuple of the relation described by `attrs`, kept in place (its page
/// pinned) while the returned datums, which point into it, are used.
unsafe fn deform_prefix(
    tuple: &pg_sys::HeapTupleData,
    attrs: &[pg_sys::FormData_pg_attribute],
    values: &mut [Datum],
) -> bool {
    let header = tuple.t_data;
    if (*header).t_infomask as u32 & pg_sys::HEAP_HASNULL != 0
        || ((*header).t_infomask2 as u32 & pg_sys::HEAP_NATTS_MASK) < values.len() as u32
    {
        return false;
    }
    let data = header.cast::<u8>().add((*header).t_hoff as usize);
    let mut off = 0usize;
    for (value, a) in values.iter_mut().zip(attrs) {
        let align = match a.attalign as u8 {
            b'd' => 8,
            b'i' => 4,
            b's' => 2,
            _ => 1,
        };
        if a.attlen == -1 {
            // Padding is zeros: a varlena with a 1-byte header starts unaligned.
            if *data.add(off) == 0 {
                off = off.next_multiple_of(align);
            }
            let p = data.add(off);
            *value = Datum::from(p);
            off += match *p {
                0x01 if *p.add(1) == pg_sys::vartag_external::VARTAG_ONDISK as u8 => {
                    2 + size_of::<pg_sys::varatt_external>()
                }
                0x01 => return false,
                h if h & 0x01 == 0x01 => (h >> 1) as usize,
                _ => (p.cast::<u32>().read_unaligned() >> 2) as usize,
            };
        } else if a.attlen > 0 {
            off = off.next_multiple_of(align);
            let p = data.add(off);
            *value = match (a.attbyval, a.attlen) {
                (false, _) => Datum::from(p),
                (true, 8) => Datum::from(p.cast::<i64>().read_unaligned()),
                (true, 4) => Datum::from(p.cast::<i32>().read_unaligned()),
                (true, 2) => Datum::from(p.cast::<i16>().read_unaligned()),
                (true, 1) => Datum::from(p.cast::<i8>().read()),
                _ => return false,
            };
            off += a.attlen as usize;
        } else {
            return false;
        }
    }
    true
}

/// Reads one relation's events of the stream; true once past the bounds.
///
/// # Safety
/// `s` is open, `snapshot` registered, `stream` a text datum and `per_event` a context
/// that may be reset after each event.
unsafe fn scan(
    s: &Source,
    snapshot: pg_sys::Snapshot,
    stream: Datum,
    b: &Bounds,
    per_event: &OwnedContext,
    f: &mut impl FnMut(&str, i32, Jsonb),
) -> bool {
    let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
    // The index's collation: btree positions the scan with it.
    pg_sys::ScanKeyEntryInitialize(
        &mut keys[0],
        0,
        1,
        pg_sys::BTEqualStrategyNumber as u16,
        pg_sys::InvalidOid,
        *(*s.index).rd_indcollation,
        pg_sys::Oid::from(pg_sys::F_TEXTEQ),
        stream,
    );
    // Only a lower version bound is a key (it positions the scan after a snapshot); the
    // others end the scan below, checked on the row rather than on every index entry.
    let nkeys = if b.after_version > 0 {
        pg_sys::ScanKeyEntryInitialize(
            &mut keys[1],
            0,
            2,
            pg_sys::BTGreaterStrategyNumber as u16,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::Oid::from(pg_sys::F_INT8GT),
            Datum::from(b.after_version),
        );
        2
    } else {
        1
    };
    let scan = IndexScan(pg_sys::index_beginscan(s.rel, s.index, snapshot, nkeys, 0));
    pg_sys::index_rescan(scan.0, keys.as_mut_ptr(), nkeys, std::ptr::null_mut(), 0);
    let tupdesc = (*s.rel).rd_att;
    let natts = (*tupdesc).natts as usize;
    let attrs = (*tupdesc).attrs.as_slice(natts);
    let (mut values, mut nulls) = (vec![Datum::from(0); natts], vec![false; natts]);
    // Columns are read up to the last one used; created_at comes after the event's.
    let mut last = s
        .version
        .max(s.event_type)
        .max(s.event_data)
        .max(s.event_version);
    if b.timed {
        last = last.max(s.created_at);
    }
    let upto_at = b.upto_at.into_inner();
    let block = |tid: &pg_sys::ItemPointerData| {
        (tid.ip_blkid.bi_hi as u32) << 16 | tid.ip_blkid.bi_lo as u32
    };
    // A page at a time, as a sequential scan reads: the index entries of one heap page are
    // checked for visibility under one lock, then folded with only the page pinned (which
    // keeps its tuples in place).
    let mut buffer = Pinned(0);
    let mut tids = Vec::with_capacity(64);
    let mut tuples: Vec<pg_sys::HeapTupleData> = Vec::with_capacity(64);
    let mut next = None;
    let (mut past, mut exhausted) = (false, false);
    while !past {
        tids.clear();
        tids.extend(next.take());
        // Not asked again once exhausted: a btree scan would start over.
        while !exhausted {
            let tid =
                pg_sys::index_getnext_tid(scan.0, pg_sys::ScanDirection::ForwardScanDirection);
            if tid.is_null() {
                exhausted = true;
                break;
            }
            if tids
                .first()
                .is_some_and(|first| block(first) != block(&*tid))
            {
                next = Some(*tid);
                break;
            }
            tids.push(*tid);
        }
        let Some(first) = tids.first() else { break };
        buffer.0 = pg_sys::ReleaseAndReadBuffer(buffer.0, s.rel, block(first));
        pg_sys::LockBuffer(buffer.0, pg_sys::BUFFER_LOCK_SHARE as i32);
        visible(s.rel, buffer.0, snapshot, tids.iter().copied(), &mut tuples);
        pg_sys::LockBuffer(buffer.0, pg_sys::BUFFER_LOCK_UNLOCK as i32);
        for tuple in tuples.iter_mut() {
            pgrx::check_for_interrupts!();
            if !deform_prefix(tuple, attrs, &mut values[..last]) {
                pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
            }
            // Versions and times grow together within a stream: the first event past either
            // bound ends the stream's prefix.
            if values[s.version - 1].value() as i64 > b.upto_version
                || b.timed && values[s.created_at - 1].value() as i64 > upto_at
            {
                past = true;
                break;
            }
            {
                let _in_event = Switched::to(per_event);
                jsonb::with_text(values[s.event_type - 1], |event_type| {
                    let version = values[s.event_version - 1].value() as i32;
                    jsonb::with_jsonb(values[s.event_data - 1], |data| {
                        f(event_type, version, data)
                    })
                });
            }
            per_event.reset();
        }
    }
    past
}
