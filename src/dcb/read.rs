//! `es_dcb_read`: the events a DCB query matches, as the caller may see them. Each item reads
//! through its own index with a kept plan (no planning, no PL/pgSQL, no row built and taken
//! apart per event); the items' results, each in position order, are merged into one without
//! repeats, and only events holding sealed personal data are decoded to be revealed.
use crate::append;
use crate::pg::errors::raise_invalid as raise;
use crate::pg::guards::{self, OwnedContext, Switched};
use crate::pg::{jsonb, plans};
use crate::privacy::sealing;
use crate::read::{feed, tag_scan};
use event_store_core::dcb::{self, Item};
use event_store_core::validate::Invalid;
use pgrx::pg_sys::BuiltinOid as Oid;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiCursor};

/// The columns es_dcb_read returns, in its order; the statements below select them so.
const COLUMNS: usize = 6;
const EVENT_DATA: usize = 2;

/// All events, by the position index.
const ALL_SQL: &str = "SELECT l.global_position, l.event_type, l.event_data, l.tags, l.metadata, l.created_at \
     FROM _event_store.log l \
    WHERE l.global_position OPERATOR(pg_catalog.>) $1 AND l.global_position OPERATOR(pg_catalog.<=) $2 \
    ORDER BY l.global_position LIMIT $3";
/// An item with tags, by the tag index. Its positions are compared and ordered as an
/// expression, and the limit is left to the merge: a kept plan knows neither the bounds nor the
/// limit, and with them in reach of the position index it would walk that index over every
/// event (as the condition's check, `append::condition`, also avoids).
const TAGGED_SQL: &str = "SELECT l.global_position, l.event_type, l.event_data, l.tags, l.metadata, l.created_at \
     FROM _event_store.log l \
    WHERE l.tags OPERATOR(pg_catalog.@>) $1 AND l.tags OPERATOR(pg_catalog.<>) '{}'::pg_catalog.text[] \
      AND (pg_catalog.cardinality($2) OPERATOR(pg_catalog.=) 0 OR l.event_type OPERATOR(pg_catalog.=) ANY ($2)) \
      AND (l.global_position OPERATOR(pg_catalog.+) 0) OPERATOR(pg_catalog.>) $3 \
      AND (l.global_position OPERATOR(pg_catalog.+) 0) OPERATOR(pg_catalog.<=) $4 \
    ORDER BY l.global_position OPERATOR(pg_catalog.+) 0";
/// An item naming types only, by the type index, for the same reason.
const TYPED_SQL: &str =
    "SELECT l.global_position, l.event_type, l.event_data, l.tags, l.metadata, l.created_at \
     FROM _event_store.log l \
    WHERE l.event_type OPERATOR(pg_catalog.=) ANY ($1) \
      AND (l.global_position OPERATOR(pg_catalog.+) 0) OPERATOR(pg_catalog.>) $2 \
      AND (l.global_position OPERATOR(pg_catalog.+) 0) OPERATOR(pg_catalog.<=) $3 \
    ORDER BY l.global_position OPERATOR(pg_catalog.+) 0";

/// Rows fetched from an item's cursor at a time.
const BATCH: i64 = 256;

/// Refuses a negative `limit` (22023).
pub fn check_limit(limit: Option<i32>) {
    if let Some(n) = limit.filter(|n| *n < 0) {
        raise(Invalid::Value(format!(
            "limit must be NULL or >= 0, not {n}"
        )));
    }
}

/// A query's items as they are read: none when it matches every event (NULL, no items, or an
/// item naming neither types nor tags). 22023 for a query of another shape.
pub fn items(query: Option<&serde_json::Value>) -> Vec<Item> {
    let Some(q) = query.filter(|q| !q.is_null()) else {
        return vec![];
    };
    let query = dcb::query(q).unwrap_or_else(|e| raise(e));
    query.narrowing().map(<[Item]>::to_vec).unwrap_or_default()
}

/// One item's cursor and the batch fetched from it, read up to `next`.
struct Source<'c> {
    cursor: SpiCursor<'c>,
    batch: *mut pg_sys::SPITupleTable,
    len: usize,
    next: usize,
}

impl Source<'_> {
    /// The next row's position, fetching another batch when this one is read; None at the end.
    fn head(&mut self) -> Option<i64> {
        if self.next == self.len {
            self.release();
            self.len = self
                .cursor
                .fetch(BATCH)
                .unwrap_or_else(|e| error!("event_store: reading events: {e}"))
                .len();
            // SAFETY: the table SPI_cursor_fetch just set; freed by `release`.
            self.batch = unsafe { pg_sys::SPI_tuptable };
            self.next = 0;
            if self.len == 0 {
                return None;
            }
        }
        let mut null = false;
        // SAFETY: a row of the batch; column 1 is global_position, a bigint never NULL.
        let position = unsafe {
            let b = &*self.batch;
            pg_sys::SPI_getbinval(*b.vals.add(self.next), b.tupdesc, 1, &mut null)
        };
        Some(position.value() as i64)
    }

    /// Frees the batch read (otherwise kept to the end of the call: a long read would hold
    /// all of it).
    fn release(&mut self) {
        if !self.batch.is_null() {
            // SAFETY: a table fetched by `head`, freed once.
            unsafe { pg_sys::SPI_freetuptable(self.batch) };
            self.batch = std::ptr::null_mut();
        }
    }
}

impl Drop for Source<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Opens the cursor reading `item`'s events (all events for `None`, at most `limit`) in
/// (lo, horizon].
fn open<'c>(
    client: &SpiClient<'c>,
    item: Option<&Item>,
    lo: i64,
    horizon: i64,
    limit: Option<i64>,
) -> SpiCursor<'c> {
    let cursor = match item {
        Some(i) if !i.tags.is_empty() => {
            let types = [
                Oid::TEXTARRAYOID,
                Oid::TEXTARRAYOID,
                Oid::INT8OID,
                Oid::INT8OID,
            ];
            let plan = plans::kept(client, TAGGED_SQL, &types, false);
            let args = [
                i.tags.clone().into(),
                i.types.clone().into(),
                lo.into(),
                horizon.into(),
            ];
            client.try_open_cursor(&*plan, &args)
        }
        Some(i) => {
            let types = [Oid::TEXTARRAYOID, Oid::INT8OID, Oid::INT8OID];
            let plan = plans::kept(client, TYPED_SQL, &types, false);
            client.try_open_cursor(&*plan, &[i.types.clone().into(), lo.into(), horizon.into()])
        }
        None => {
            let types = [Oid::INT8OID, Oid::INT8OID, Oid::INT8OID];
            let plan = plans::kept(client, ALL_SQL, &types, false);
            client.try_open_cursor(&*plan, &[lo.into(), horizon.into(), limit.into()])
        }
    };
    cursor.unwrap_or_else(|e| error!("event_store: reading events: {e}"))
}

/// Puts the events of `items` (all events when empty) in (lo, horizon] into the call's
/// result, in position order, each once, at most `limit`.
///
/// # Safety
/// `rsinfo` is the call's, set up by InitMaterializedSRF with es_dcb_read's columns.
unsafe fn read(
    rsinfo: *mut pg_sys::ReturnSetInfo,
    items: &[Item],
    lo: i64,
    horizon: i64,
    limit: Option<i64>,
) {
    Spi::connect(|client| {
        if !items.is_empty() && items.iter().all(|i| !i.tags.is_empty()) {
            if let Some(relations) = tag_scan::open(client) {
                // SAFETY: as the caller promises, as of the snapshot active.
                unsafe { read_tagged(rsinfo, &relations, items, lo, horizon, limit) };
                return;
            }
        }
        let mut sources: Vec<Source> = plans::for_few_rows(|| {
            match items {
                [] => vec![None],
                items => items.iter().map(Some).collect(),
            }
            .into_iter()
            .map(|item| Source {
                cursor: open(client, item, lo, horizon, limit),
                batch: std::ptr::null_mut(),
                len: 0,
                next: 0,
            })
            .collect()
        });
        let mut heads: Vec<Option<i64>> = sources.iter_mut().map(Source::head).collect();
        let (mut values, mut nulls) = ([pg_sys::Datum::from(0); COLUMNS], [false; COLUMNS]);
        // What revealing an event allocates, freed once the row is stored.
        let per_row = OwnedContext::new(c"event_store es_dcb_read");
        let mut left = limit.unwrap_or(i64::MAX);
        while left > 0 {
            let Some(least) = heads.iter().flatten().min().copied() else {
                break;
            };
            let mut written = false;
            for (s, head) in sources.iter_mut().zip(heads.iter_mut()) {
                if *head != Some(least) {
                    continue;
                }
                if !written {
                    // SAFETY: a row of the batch, whose columns are es_dcb_read's; the datums
                    // point into it and are copied by the tuplestore before it is freed.
                    unsafe {
                        let b = &*s.batch;
                        pg_sys::heap_deform_tuple(
                            *b.vals.add(s.next),
                            b.tupdesc,
                            values.as_mut_ptr(),
                            nulls.as_mut_ptr(),
                        );
                        put(rsinfo, &per_row, &mut values, &mut nulls);
                    }
                    written = true;
                }
                s.next += 1;
                *head = s.head();
            }
            left -= 1;
        }
    });
}

/// `read` for items that all name tags, through their tag index: the positions of the matches
/// first, then the rows of the first `limit` of them in position order. Without a limit, the
/// rows are copied as they are found (up to work_mem of them): reading each row's page again
/// cost a quarter of a read of a few dozen events (benches/ section 13).
///
/// # Safety
/// As for `read`, with the snapshot to read as of active.
unsafe fn read_tagged(
    rsinfo: *mut pg_sys::ReturnSetInfo,
    relations: &tag_scan::Relations,
    items: &[Item],
    lo: i64,
    horizon: i64,
    limit: Option<i64>,
) {
    // SAFETY: the snapshot `as_of_now` pushed, active for the whole read.
    let snapshot = unsafe { pg_sys::GetActiveSnapshot() };
    let copies = OwnedContext::new(c"event_store es_dcb_read rows");
    // SAFETY: a setting's value.
    let mut room = limit.map_or(unsafe { pg_sys::work_mem } as usize * 1024, |_| 0);
    let mut found = vec![];
    for item in items {
        // SAFETY: as above; the item names tags; a copy lives as long as `copies`.
        unsafe {
            relations.matches(snapshot, item, lo, horizon, |f, tuple| {
                let copy = match room.checked_sub(tuple.t_len as usize) {
                    Some(left) => {
                        room = left;
                        let _in = Switched::to(&copies);
                        pg_sys::heap_copytuple(tuple)
                    }
                    None => std::ptr::null_mut(),
                };
                found.push((f, copy));
                true
            })
        };
    }
    found.sort_unstable_by_key(|(f, _)| f.position);
    found.dedup_by_key(|(f, _)| f.position);
    found.truncate(limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)));
    // What revealing an event allocates, freed once the row is stored.
    let per_row = OwnedContext::new(c"event_store es_dcb_read");
    for (f, copy) in &found {
        // SAFETY: found with this snapshot, copied into `copies` (alive); the row's datums are
        // copied by the tuplestore.
        unsafe {
            let put = |values: &mut _, nulls: &mut _| put(rsinfo, &per_row, values, nulls);
            match copy.is_null() {
                true => relations.fetch(snapshot, f, put),
                false => relations.row(f, *copy, put),
            }
        };
    }
}

/// Puts an event's row into the call's result, its personal data revealed as the reader may
/// see it (what that allocates goes to `per_row`, freed after).
///
/// # Safety
/// `rsinfo` as for `read`; the datums are es_dcb_read's columns, valid for the call.
unsafe fn put(
    rsinfo: *mut pg_sys::ReturnSetInfo,
    per_row: &OwnedContext,
    values: &mut [pg_sys::Datum; COLUMNS],
    nulls: &mut [bool; COLUMNS],
) {
    {
        let _in_row = Switched::to(per_row);
        // SAFETY: as the caller promises; the tuplestore copies the row into its own memory.
        unsafe {
            values[EVENT_DATA] = sealing::reveal_data(values[EVENT_DATA]);
            pg_sys::tuplestore_putvalues(
                (*rsinfo).setResult,
                (*rsinfo).setDesc,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );
        }
    }
    per_row.reset();
}

v1_function!(pg_finfo_es_dcb_read);
/// `es_dcb_read(query jsonb, after bigint, "limit" integer)`: a materialized set of events.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn es_dcb_read(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the argument types are those sql/dcb/dcb.sql declares.
    let [query, after, limit] = [0, 1, 2].map(|n| unsafe { append::datum_arg(fcinfo, n) });
    feed::_es_check_feed_isolation();
    let limit = limit.map(|l| l.value() as i32);
    check_limit(limit);
    // SAFETY: a jsonb datum.
    let items = items(query.map(|q| unsafe { jsonb::to_value(q) }).as_ref());
    let lo = after.map_or(0, |a| a.value() as i64);
    // Before the snapshot the events are read with: everything up to it has settled.
    let horizon = feed::_es_feed_horizon();
    // SAFETY: a set-returning call; es_dcb_read's SQL declares the result's columns.
    let rsinfo = unsafe { crate::pg::materialize(fcinfo) };
    if limit != Some(0) && horizon > lo {
        // SAFETY: set up above.
        guards::as_of_now(|| unsafe { read(rsinfo, &items, lo, horizon, limit.map(i64::from)) });
    }
    pg_sys::Datum::from(0)
}
