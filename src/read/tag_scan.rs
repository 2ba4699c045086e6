//! Events with given tags read straight from the tag index (a GIN bitmap) of event_store, or
//! of each of its chunks, without the executor: the condition's check and es_dcb_read for
//! items that name tags. A statement's executor start, its bitmap heap scan's prefetching and
//! its sort cost more than the few events a tag holds (benches/ section 13). Where this reading
//! could differ from a query's (row level security, column-only privileges, a compressed or
//! tiered chunk, a tag index missing or of another shape), `open` declines and the caller takes
//! its SQL.
use super::stream_scan;
use crate::pg::guards::{OwnedContext, Pinned, Switched};
use crate::pg::{relcache, timescaledb};
use event_store_core::dcb::Item;
use pgrx::pg_sys::{self, Datum};
use pgrx::spi::SpiClient;
use pgrx::IntoDatum;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

extern "C-unwind" {
    /// catalog/pg_inherits.h (not bound by pgrx): the children of a table, here its chunks.
    fn find_inheritance_children(
        parent: pg_sys::Oid,
        lockmode: pg_sys::LOCKMODE,
    ) -> *mut pg_sys::List;
}

/// GIN's array_ops strategy for `@>`.
const CONTAINS: u16 = 2;

/// A tag with more events than this, scanned after a position fewer events follow, is narrowed
/// to those events by the position index: the tag index knows no positions, and a check after
/// a recent position (the usual condition) would otherwise read every row of the tag, where an
/// entry of the position index costs less than a row.
const NARROW_FROM: i64 = 4;

/// One relation of events, open with its tag index, and where its columns are (attribute
/// numbers: a chunk made after a column was dropped numbers them differently).
struct Source {
    rel: pg_sys::Relation,
    index: pg_sys::Relation,
    /// A btree index on the position (null: none).
    by_position: pg_sys::Relation,
    /// es_dcb_read's columns, in its order (`POSITION`, `EVENT_TYPE`, `TAGS` among them).
    row: [usize; 6],
}

/// Where `Source::row` holds the columns a scan checks.
const POSITION: usize = 0;
const EVENT_TYPE: usize = 1;
const TAGS: usize = 3;

impl Drop for Source {
    fn drop(&mut self) {
        // SAFETY: both opened by `open_source`, closed once; their locks are kept to the end
        // of the transaction, as a query's are.
        unsafe {
            pg_sys::index_close(self.index, pg_sys::NoLock as i32);
            if !self.by_position.is_null() {
                pg_sys::index_close(self.by_position, pg_sys::NoLock as i32);
            }
            pg_sys::relation_close(self.rel, pg_sys::NoLock as i32);
        }
    }
}

/// An event a scan found: its position and where its row is.
#[derive(Clone, Copy)]
pub struct Found {
    pub position: i64,
    source: usize,
    tid: pg_sys::ItemPointerData,
}

/// event_store's relations, open for tag scans.
pub struct Relations(Vec<Source>);

/// The chunks learnt: valid while `relcache`'s generation holds (TimescaleDB invalidates its
/// proxy relation whenever a chunk's status changes or a chunk is dropped) and event_store's
/// children are the same (a new chunk invalidates nothing).
struct Learnt {
    generation: u64,
    root: pg_sys::Oid,
    children: Vec<pg_sys::Oid>,
    /// None: some chunk cannot be read in place.
    readable: Option<Vec<pg_sys::Oid>>,
}

thread_local! {
    static LEARNT: RefCell<Option<Learnt>> = const { RefCell::new(None) };
}

/// The relations holding event_store's rows, or None when some cannot be read in place. Called
/// with the snapshot the scan reads as active: the catalog is read as of later than it.
fn relations(client: &SpiClient<'_>, table: pg_sys::Oid) -> Option<Vec<pg_sys::Oid>> {
    if !stream_scan::partitioned(table) {
        return Some(vec![table]);
    }
    // SAFETY: catalog reads in the caller's transaction; the catalog snapshot is dropped first
    // so that every chunk committed before the scan's snapshot is listed.
    let mut children: Vec<pg_sys::Oid> = unsafe {
        pg_sys::InvalidateCatalogSnapshot();
        let list = pg_sys::ffi::pg_guard_ffi_boundary(|| {
            find_inheritance_children(table, pg_sys::NoLock as pg_sys::LOCKMODE)
        });
        pgrx::PgList::<pg_sys::Oid>::from_pg(list)
            .iter_oid()
            .collect()
    };
    children.sort_unstable_by_key(|o| o.to_u32());
    let generation = relcache::generation();
    let known = LEARNT.with(|l| {
        l.borrow()
            .as_ref()
            .filter(|l| l.generation == generation && l.root == table && l.children == children)
            .map(|l| l.readable.clone())
    });
    if let Some(readable) = known {
        return readable;
    }
    // Watches TimescaleDB's proxy relation; not a hypertable: children of another kind.
    let readable = if timescaledb::hypertable(client, table) {
        timescaledb::chunks(client, table, i64::MIN / 2, i64::MAX / 2).and_then(|mut chunks| {
            let mut relids: Vec<pg_sys::Oid> = chunks.iter().map(|c| c.relid).collect();
            relids.sort_unstable_by_key(|o| o.to_u32());
            let all = relids == children && chunks.iter().all(timescaledb::Chunk::readable);
            chunks.sort_unstable_by_key(|c| c.start);
            all.then(|| chunks.into_iter().map(|c| c.relid).collect())
        })
    } else {
        None
    };
    LEARNT.with(|l| {
        *l.borrow_mut() = Some(Learnt {
            generation,
            root: table,
            children,
            readable: readable.clone(),
        })
    });
    readable
}

/// Whether an index predicate is none, or `tags <> '{}'` (event_store's tag index: untagged
/// events are not in it, and a scan for a tag never wants them).
///
/// # Safety
/// `predicate` is a relation's index predicate (implicitly ANDed clauses).
unsafe fn only_untagged_left_out(predicate: *mut pg_sys::List, tags: usize) -> bool {
    // SAFETY: as the caller promises; nodes are checked for their tag before being cast.
    unsafe {
        let clauses = pgrx::PgList::<pg_sys::Node>::from_pg(predicate);
        match clauses.len() {
            0 => return true,
            1 => {}
            _ => return false,
        }
        let Some(clause) = clauses.get_ptr(0) else {
            return false;
        };
        if (*clause).type_ != pg_sys::NodeTag::T_OpExpr {
            return false;
        }
        let op = clause.cast::<pg_sys::OpExpr>();
        let args = pgrx::PgList::<pg_sys::Node>::from_pg((*op).args);
        let (Some(var), Some(value)) = (args.get_ptr(0), args.get_ptr(1)) else {
            return false;
        };
        if (*op).opfuncid != pg_sys::Oid::from(pg_sys::F_ARRAY_NE)
            || args.len() != 2
            || (*var).type_ != pg_sys::NodeTag::T_Var
            || (*var.cast::<pg_sys::Var>()).varattno as usize != tags
            || (*value).type_ != pg_sys::NodeTag::T_Const
        {
            return false;
        }
        let value = value.cast::<pg_sys::Const>();
        if (*value).constisnull {
            return false;
        }
        let array = pg_sys::pg_detoast_datum((*value).constvalue.cast_mut_ptr())
            .cast::<pg_sys::ArrayType>();
        (*array).ndim == 0
    }
}

/// Where a relation's tag index (a valid GIN index on `tags` alone), btree index on positions
/// (if any) and columns are.
#[derive(Clone, Copy)]
struct Layout {
    tags: pg_sys::Oid,
    by_position: Option<pg_sys::Oid>,
    row: [usize; 6],
}

thread_local! {
    /// Each relation's layout (None: it has no tag index) as of a generation of `relcache`,
    /// which watches the relation and both indexes: a column or index added or dropped, or an
    /// index made valid or invalid, invalidates one of them.
    static LAYOUTS: RefCell<(u64, HashMap<pg_sys::Oid, Option<Layout>>)> =
        RefCell::new((0, HashMap::new()));
}

/// Learns `rel`'s layout by opening each of its indexes, and watches what it depends on.
///
/// # Safety
/// `rel` is open.
unsafe fn learn(rel: pg_sys::Relation) -> Option<Layout> {
    // SAFETY: as the caller promises; each index opened here is closed here (open_source opens
    // the two it uses again).
    unsafe {
        let relid = (*rel).rd_id;
        relcache::watch(relid);
        let column = |name: &CStr| stream_scan::attnum(relid, name);
        let tags = column(c"tags")?;
        let row = [
            column(c"global_position")?,
            column(c"event_type")?,
            column(c"event_data")?,
            tags,
            column(c"metadata")?,
            column(c"created_at")?,
        ];
        let indexes = pgrx::PgList::<pg_sys::Oid>::from_pg(pg_sys::RelationGetIndexList(rel));
        let (mut by_tags, mut by_position) = (None, None);
        for oid in indexes.iter_oid() {
            let index = pg_sys::index_open(oid, pg_sys::AccessShareLock as i32);
            let form = (*index).rd_index;
            let am = (*(*index).rd_rel).relam;
            let first = (*form).indkey.values.as_slice(1)[0] as usize;
            let predicate = pg_sys::RelationGetIndexPredicate(index);
            let valid = (*form).indisvalid;
            if valid
                && by_tags.is_none()
                && am == pg_sys::GIN_AM_OID
                && (*form).indnatts == 1
                && first == tags
                && only_untagged_left_out(predicate, tags)
            {
                by_tags = Some(oid);
            } else if valid
                && by_position.is_none()
                && am == pg_sys::BTREE_AM_OID
                && first == row[POSITION]
                && predicate.is_null()
            {
                by_position = Some(oid);
            }
            pg_sys::index_close(index, pg_sys::AccessShareLock as i32);
        }
        by_tags
            .iter()
            .chain(&by_position)
            .for_each(|&oid| relcache::watch(oid));
        by_tags.map(|tags| Layout {
            tags,
            by_position,
            row,
        })
    }
}

/// Opens one relation of events with its tag index and, where there is one, a btree index on
/// positions.
///
/// # Safety
/// Inside a transaction.
unsafe fn open_source(relid: pg_sys::Oid) -> Option<Source> {
    // SAFETY: as the caller promises; what is opened here is closed by Source's drop, or below.
    unsafe {
        let rel = pg_sys::try_relation_open(relid, pg_sys::AccessShareLock as i32);
        if rel.is_null() {
            return None; // dropped since it was listed
        }
        // Read after the lock, whose taking accepted the invalidations committed before it.
        let generation = relcache::generation();
        let known = LAYOUTS.with(|l| {
            let mut l = l.borrow_mut();
            if l.0 != generation {
                *l = (generation, HashMap::new());
            }
            l.1.get(&relid).copied()
        });
        let layout = known.unwrap_or_else(|| {
            let layout = learn(rel);
            LAYOUTS.with(|l| l.borrow_mut().1.insert(relid, layout));
            layout
        });
        let Some(layout) = layout else {
            pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
            return None;
        };
        let index = pg_sys::index_open(layout.tags, pg_sys::AccessShareLock as i32);
        let by_position = layout.by_position.map_or(std::ptr::null_mut(), |oid| {
            pg_sys::index_open(oid, pg_sys::AccessShareLock as i32)
        });
        Some(Source {
            rel,
            index,
            by_position,
            row: layout.row,
        })
    }
}

/// event_store's relations open for tag scans, or None where a query must read instead. The
/// snapshot the scans will read with is active.
pub fn open(client: &SpiClient<'_>) -> Option<Relations> {
    let table = crate::pg::schema::relation(c"event_store");
    if !stream_scan::reads_like_a_query(table) {
        return None;
    }
    let relids = relations(client, table)?;
    let listed = relcache::generation();
    let mut sources = Vec::with_capacity(relids.len());
    for relid in relids {
        // SAFETY: in the caller's transaction.
        sources.push(unsafe { open_source(relid) }?);
    }
    // Taking the locks accepted invalidations: a chunk changed since it was listed (compressed,
    // dropped) leaves the reading to a query.
    (relcache::generation() == listed).then_some(Relations(sources))
}

/// Keeps in `bitmap` (not iterated yet) only the rows with positions in (lo, hi], as the
/// position index `index` gives them.
///
/// # Safety
/// `index` is open; `snapshot` registered or active.
unsafe fn narrow(
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    lo: i64,
    hi: i64,
    bitmap: &Bitmap,
) {
    // SAFETY: as the caller promises; the scan and the second bitmap are freed by guards.
    unsafe {
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        let bound = |key: &mut pg_sys::ScanKeyData, strategy: u32, op: u32, value: i64| {
            pg_sys::ScanKeyEntryInitialize(
                key,
                0,
                1,
                strategy as u16,
                pg_sys::InvalidOid,
                pg_sys::InvalidOid,
                pg_sys::Oid::from(op),
                Datum::from(value),
            )
        };
        bound(
            &mut keys[0],
            pg_sys::BTGreaterStrategyNumber,
            pg_sys::F_INT8GT,
            lo,
        );
        let n = if hi < i64::MAX {
            bound(
                &mut keys[1],
                pg_sys::BTLessEqualStrategyNumber,
                pg_sys::F_INT8LE,
                hi,
            );
            2
        } else {
            1
        };
        let scan = crate::pg::guards::IndexScan(pg_sys::index_beginscan_bitmap(index, snapshot, n));
        pg_sys::index_rescan(scan.0, keys.as_mut_ptr(), n, std::ptr::null_mut(), 0);
        let recent = Bitmap::new();
        pg_sys::index_getbitmap(scan.0, recent.0);
        pg_sys::tbm_intersect(bitmap.0, recent.0);
    }
}

/// A bitmap and its iterator, freed when dropped.
struct Bitmap(*mut pg_sys::TIDBitmap, *mut pg_sys::TBMIterator);

impl Bitmap {
    /// An empty bitmap of up to work_mem, not iterated yet.
    fn new() -> Bitmap {
        // SAFETY: a bitmap in the current memory context, freed by `drop`.
        let tbm = unsafe {
            pg_sys::tbm_create(
                pg_sys::work_mem as std::ffi::c_long * 1024,
                std::ptr::null_mut(),
            )
        };
        Bitmap(tbm, std::ptr::null_mut())
    }
}

impl Drop for Bitmap {
    fn drop(&mut self) {
        // SAFETY: made by tbm_create and tbm_begin_iterate in `matches`, freed once.
        unsafe {
            if !self.1.is_null() {
                pg_sys::tbm_end_iterate(self.1);
            }
            pg_sys::tbm_free(self.0);
        }
    }
}

impl Relations {
    /// Calls `f` with each event `item` matches in positions (lo, hi] that `snapshot` sees, and
    /// its row (valid during the call: copy it to keep it), in no particular order, until it
    /// returns false. Returns false when `f` did.
    ///
    /// # Safety
    /// `snapshot` is registered or active for the call; `item` names tags.
    pub unsafe fn matches(
        &self,
        snapshot: pg_sys::Snapshot,
        item: &Item,
        lo: i64,
        hi: i64,
        mut f: impl FnMut(Found, &mut pg_sys::HeapTupleData) -> bool,
    ) -> bool {
        let per_page = OwnedContext::new(c"event_store tag scan");
        let wanted = item.tags.clone().into_datum().expect("an array");
        // How far positions go: the read's bound, or for a check (no bound) the last position
        // handed out, read once if a tag needs it.
        let mut newest = (hi < i64::MAX).then_some(hi);
        for (n, s) in self.0.iter().enumerate() {
            // SAFETY: as the caller promises, on relations `open` opened; every resource is
            // held by a guard, and the page is unlocked before anything that can fail.
            unsafe {
                let collation = *(*s.index).rd_indcollation;
                let bitmap = {
                    let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
                    pg_sys::ScanKeyEntryInitialize(
                        &mut key,
                        0,
                        1,
                        CONTAINS,
                        pg_sys::ANYARRAYOID,
                        collation,
                        pg_sys::Oid::from(pg_sys::F_ARRAYCONTAINS),
                        wanted,
                    );
                    let scan = crate::pg::guards::IndexScan(pg_sys::index_beginscan_bitmap(
                        s.index, snapshot, 1,
                    ));
                    pg_sys::index_rescan(scan.0, &mut key, 1, std::ptr::null_mut(), 0);
                    let mut bitmap = Bitmap::new();
                    let found = pg_sys::index_getbitmap(scan.0, bitmap.0);
                    if lo > 0 && found > NARROW_FROM && !s.by_position.is_null() {
                        let last = *newest.get_or_insert_with(crate::read::feed::seq_last);
                        if last - lo < found {
                            narrow(s.by_position, snapshot, lo, hi, &bitmap);
                        }
                    }
                    bitmap.1 = pg_sys::tbm_begin_iterate(bitmap.0);
                    bitmap
                };
                let tupdesc = (*s.rel).rd_att;
                let natts = (*tupdesc).natts as usize;
                let (mut values, mut nulls) = (vec![Datum::from(0); natts], vec![false; natts]);
                let mut buffer = Pinned(0);
                let mut tuples: Vec<pg_sys::HeapTupleData> = Vec::with_capacity(16);
                loop {
                    let page = pg_sys::tbm_iterate(bitmap.1);
                    if page.is_null() {
                        break;
                    }
                    let page = &*page;
                    buffer.0 = pg_sys::ReleaseAndReadBuffer(buffer.0, s.rel, page.blockno);
                    pg_sys::LockBuffer(buffer.0, pg_sys::BUFFER_LOCK_SHARE as i32);
                    // A lossy page (ntuples -1) names no offsets: all of them are looked at.
                    let offsets: Vec<u16> = if page.ntuples >= 0 {
                        page.offsets.as_slice(page.ntuples as usize).to_vec()
                    } else {
                        (1..=pg_sys::PageGetMaxOffsetNumber(pg_sys::BufferGetPage(buffer.0)))
                            .collect()
                    };
                    let tids = offsets.into_iter().map(|offset| {
                        let mut tid: pg_sys::ItemPointerData = std::mem::zeroed();
                        tid.ip_blkid.bi_hi = (page.blockno >> 16) as u16;
                        tid.ip_blkid.bi_lo = page.blockno as u16;
                        tid.ip_posid = offset;
                        tid
                    });
                    stream_scan::visible(s.rel, buffer.0, snapshot, tids, &mut tuples);
                    pg_sys::LockBuffer(buffer.0, pg_sys::BUFFER_LOCK_UNLOCK as i32);
                    // The index says the tags may match: checked on the row, with the types and
                    // positions.
                    let _in_page = Switched::to(&per_page);
                    for tuple in tuples.iter_mut() {
                        pgrx::check_for_interrupts!();
                        pg_sys::heap_deform_tuple(
                            tuple,
                            tupdesc,
                            values.as_mut_ptr(),
                            nulls.as_mut_ptr(),
                        );
                        let position = values[s.row[POSITION] - 1].value() as i64;
                        if position <= lo || position > hi || nulls[s.row[TAGS] - 1] {
                            continue;
                        }
                        if !item.types.is_empty()
                            && !crate::pg::jsonb::with_text(values[s.row[EVENT_TYPE] - 1], |t| {
                                item.types.iter().any(|w| w == t)
                            })
                        {
                            continue;
                        }
                        // Byte equality: `@>` on text under the deterministic default collation.
                        let tags = <pgrx::Array<&str> as pgrx::FromDatum>::from_datum(
                            values[s.row[TAGS] - 1],
                            false,
                        );
                        if !tags.is_some_and(|tags| {
                            item.tags
                                .iter()
                                .all(|w| tags.iter().any(|t| t == Some(w.as_str())))
                        }) {
                            continue;
                        }
                        let found = Found {
                            position,
                            source: n,
                            tid: tuple.t_self,
                        };
                        if !f(found, tuple) {
                            return false;
                        }
                    }
                    drop(_in_page);
                    per_page.reset();
                }
            }
        }
        true
    }

    /// Calls `f` with the row of an event `matches` found, as es_dcb_read's columns (not when
    /// `snapshot` does not see it).
    ///
    /// # Safety
    /// `snapshot` is the one `matches` found it with, still registered or active.
    pub unsafe fn fetch(
        &self,
        snapshot: pg_sys::Snapshot,
        found: &Found,
        f: impl FnOnce(&mut [Datum; 6], &mut [bool; 6]),
    ) {
        // SAFETY: as the caller promises; the page stays pinned while the row's datums, which
        // point into it, are used.
        unsafe {
            let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
            tuple.t_self = found.tid;
            let mut buffer = Pinned(0);
            let rel = self.0[found.source].rel;
            if pg_sys::heap_fetch(rel, snapshot, &mut tuple, &mut buffer.0, false) {
                self.row(found, &mut tuple, f);
            }
        }
    }

    /// Calls `f` with the columns of `tuple`, the row of an event `matches` found (or a copy of
    /// it), as es_dcb_read's.
    ///
    /// # Safety
    /// `tuple` stays in place while `f` runs.
    pub unsafe fn row(
        &self,
        found: &Found,
        tuple: *mut pg_sys::HeapTupleData,
        f: impl FnOnce(&mut [Datum; 6], &mut [bool; 6]),
    ) {
        let s = &self.0[found.source];
        // SAFETY: as the caller promises, a tuple of relation `s.rel`.
        unsafe {
            let tupdesc = (*s.rel).rd_att;
            let natts = (*tupdesc).natts as usize;
            let (mut values, mut nulls) = (vec![Datum::from(0); natts], vec![false; natts]);
            pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
            let mut row = s.row.map(|a| values[a - 1]);
            let mut row_nulls = s.row.map(|a| nulls[a - 1]);
            f(&mut row, &mut row_nulls);
        }
    }
}
