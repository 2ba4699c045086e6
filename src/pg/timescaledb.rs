//! TimescaleDB's catalog as event_store reads it (`_timescaledb_catalog`, as of 2.19): whether
//! event_store is a hypertable, and which chunks hold which times. The state functions read
//! chunks in place with it, appends write into them. A catalog of another shape (a TimescaleDB
//! that renamed a column) makes both take their SQL instead rather than fail.
use crate::pg::relcache;
use crate::pg::schema::{column, OrRaise};
use event_store_core::time::PG_EPOCH_US;
use pgrx::pg_sys::{self, BuiltinOid as Oid};
use pgrx::spi::SpiClient;
use std::cell::Cell;

// The chunks of event_store ($1) whose ranges meet [$2, $3] (TimescaleDB counts from 1970),
// where each starts and ends, its status, and whether its rows are in its own table with one
// instant in one chunk (not tiered, one dimension).
const CHUNKS_SQL: &str = "SELECT r.oid, s.range_start, s.range_end, c.status, NOT c.osm_chunk \
            AND (SELECT count(*) FROM _timescaledb_catalog.dimension d WHERE d.hypertable_id = h.id) = 1 \
       FROM pg_catalog.pg_class t \
       JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace \
       JOIN _timescaledb_catalog.hypertable h ON h.schema_name = tn.nspname AND h.table_name = t.relname \
       JOIN _timescaledb_catalog.chunk c ON c.hypertable_id = h.id AND NOT c.dropped \
       JOIN _timescaledb_catalog.chunk_constraint cc ON cc.chunk_id = c.id \
       JOIN _timescaledb_catalog.dimension_slice s ON s.id = cc.dimension_slice_id \
       JOIN pg_catalog.pg_namespace n ON n.nspname = c.schema_name \
       JOIN pg_catalog.pg_class r ON r.relnamespace = n.oid AND r.relname = c.table_name \
      WHERE t.oid = $1 AND s.range_end > $2 AND s.range_start <= $3";

// Whether event_store ($1) is a hypertable (it may have no chunk yet), and the relation whose
// relcache entry TimescaleDB invalidates whenever its catalog of hypertables, dimensions,
// chunks or slices changes.
const HYPERTABLE_SQL: &str = "SELECT EXISTS (SELECT FROM pg_catalog.pg_class t \
       JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace \
       JOIN _timescaledb_catalog.hypertable h ON h.schema_name = tn.nspname AND h.table_name = t.relname \
      WHERE t.oid = $1), \
       pg_catalog.to_regclass('_timescaledb_cache.cache_inval_hypertable')::pg_catalog.oid";

// The catalog columns the statements above read.
const CATALOG_SQL: &str = "SELECT count(*) = 16 FROM pg_catalog.pg_attribute a \
       JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
      WHERE n.nspname = '_timescaledb_catalog' AND a.attnum > 0 AND NOT a.attisdropped \
        AND (c.relname, a.attname) IN (('hypertable', 'id'), ('hypertable', 'schema_name'), \
            ('hypertable', 'table_name'), ('chunk', 'id'), ('chunk', 'hypertable_id'), \
            ('chunk', 'schema_name'), ('chunk', 'table_name'), ('chunk', 'dropped'), \
            ('chunk', 'status'), ('chunk', 'osm_chunk'), ('chunk_constraint', 'chunk_id'), \
            ('chunk_constraint', 'dimension_slice_id'), ('dimension_slice', 'id'), \
            ('dimension_slice', 'range_start'), ('dimension_slice', 'range_end'), \
            ('dimension', 'hypertable_id'))";

thread_local! {
    static CATALOG_KNOWN: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether TimescaleDB's catalog is there with what the statements above read (its shape is
/// checked once per session).
fn catalog_known(client: &SpiClient<'_>) -> bool {
    // SAFETY: a syscache lookup.
    let schema = unsafe { pg_sys::get_namespace_oid(c"_timescaledb_catalog".as_ptr(), true) };
    if schema == pg_sys::InvalidOid {
        return false;
    }
    if let Some(known) = CATALOG_KNOWN.get() {
        return known;
    }
    let doing = "reading TimescaleDB's catalog columns";
    let known = client
        .select(CATALOG_SQL, Some(1), &[])
        .or_raise(doing)
        .first()
        .get_one::<bool>()
        .or_raise(doing)
        .unwrap_or(false);
    CATALOG_KNOWN.set(Some(known));
    known
}

/// One chunk: its relation, its range `[start, end)` in PostgreSQL's microseconds, and its
/// state.
pub struct Chunk {
    pub relid: pg_sys::Oid,
    pub start: i64,
    pub end: i64,
    status: i32,
    plain: bool,
}

impl Chunk {
    /// Its rows are all in its own table, one instant in one chunk: not compressed.
    pub fn readable(&self) -> bool {
        self.plain && self.status & 1 == 0
    }

    /// TimescaleDB would insert into it as into a plain table: not compressed, partial or
    /// frozen.
    pub fn writable(&self) -> bool {
        self.plain && self.status == 0
    }
}

/// The chunks of hypertable `table` whose ranges meet `[from, upto]` (PostgreSQL's
/// microseconds), read with the active snapshot; `None` where TimescaleDB's catalog is not
/// one this module reads.
pub fn chunks(
    client: &SpiClient<'_>,
    table: pg_sys::Oid,
    from: i64,
    upto: i64,
) -> Option<Vec<Chunk>> {
    if !catalog_known(client) {
        return None;
    }
    let plan = crate::pg::plans::kept(
        client,
        CHUNKS_SQL,
        &[Oid::OIDOID, Oid::INT8OID, Oid::INT8OID],
        false,
    );
    let rows = client
        .select(
            &*plan,
            None,
            &[
                table.into(),
                (from + PG_EPOCH_US).into(),
                (upto + PG_EPOCH_US).into(),
            ],
        )
        .or_raise("reading TimescaleDB's chunks");
    Some(
        rows.map(|row| Chunk {
            relid: column(&row, 1, "pg_class.oid"),
            start: column::<i64>(&row, 2, "_timescaledb_catalog.dimension_slice.range_start")
                .saturating_sub(PG_EPOCH_US),
            end: column::<i64>(&row, 3, "_timescaledb_catalog.dimension_slice.range_end")
                .saturating_sub(PG_EPOCH_US),
            status: column(&row, 4, "_timescaledb_catalog.chunk.status"),
            plain: column(&row, 5, "whether a chunk is plain"),
        })
        .collect(),
    )
}

/// Whether `table` is a hypertable, with or without chunks, read with the active snapshot. Its
/// answer holds while `relcache`'s generation does not move: TimescaleDB's proxy relation is
/// watched from here on.
pub fn hypertable(client: &SpiClient<'_>, table: pg_sys::Oid) -> bool {
    if !catalog_known(client) {
        return false;
    }
    let plan = crate::pg::plans::kept(client, HYPERTABLE_SQL, &[Oid::OIDOID], false);
    let doing = "asking whether event_store is a hypertable";
    let row = client
        .select(&*plan, Some(1), &[table.into()])
        .or_raise(doing)
        .first();
    let hypertable = row.get::<bool>(1).or_raise(doing).unwrap_or(false);
    if let Some(proxy) = row.get::<pg_sys::Oid>(2).or_raise(doing) {
        relcache::watch(proxy);
    }
    hypertable
}
