//! Inserting the events of one call, with the ids the store generated claimed with them:
//! without an executor where the tables allow it (`direct`, routed to TimescaleDB's chunk by
//! `chunks`), otherwise in one SQL statement.
use super::direct::{self, datum, Column, Executor};
use super::{arg, uuid, Event};
use crate::pg::schema::OrRaise;
use crate::pg::{plans, schema};
use crate::read::stream_scan::unfiltered;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid as Oid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

// An event's tags travel as one text, joined by U+001E (which no tag holds): an array of
// arrays must be rectangular. Each statement without tags too, for event_store before 0.5.0.
macro_rules! insert_sql {
    ($columns:literal, $rows:literal) => {
        concat!(
            "WITH claim AS (INSERT INTO _event_store.es_event_ids \
             SELECT pg_catalog.unnest($11::uuid[])) \
             INSERT INTO _event_store.log (global_position, event_id, stream_id, stream_version, \
             event_type, event_data, metadata, event_version, created_at, hash",
            $columns,
            ") ",
            $rows
        )
    };
}
const INSERT_ONE_SQL: [&str; 2] = [
    insert_sql!("", "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
    insert_sql!(
        ", tags",
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, pg_catalog.string_to_array($12, pg_catalog.chr(30)))"
    ),
];
const INSERT_MANY_SQL: [&str; 2] = [
    insert_sql!(
        "",
        "SELECT * FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::int8[], $5::text[], \
         $6::jsonb[], $7::jsonb[], $8::int4[], $9::timestamptz[], $10::bytea[])"
    ),
    insert_sql!(
        ", tags",
        "SELECT p, i, s, v, t, d, m, ev, c, h, pg_catalog.string_to_array(g, pg_catalog.chr(30)) \
           FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::int8[], $5::text[], \
                $6::jsonb[], $7::jsonb[], $8::int4[], $9::timestamptz[], $10::bytea[], $12::text[]) \
             AS r(p, i, s, v, t, d, m, ev, c, h, g)"
    ),
];

/// An array of varlena datums of type `element` (text, jsonb: length -1, by reference, int
/// alignment), palloc'd in the current memory context; pgrx would build one through text.
fn varlena_array(mut items: Vec<pg_sys::Datum>, element: pg_sys::Oid) -> pg_sys::Datum {
    // SAFETY: as said above, for every element type this module passes.
    unsafe {
        pg_sys::Datum::from(pg_sys::construct_array(
            items.as_mut_ptr(),
            items.len() as i32,
            element,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
        ))
    }
}

/// An event's tags as a text[] datum.
fn text_array(tags: &[String]) -> pg_sys::Datum {
    varlena_array(
        tags.iter().map(|t| datum(t.as_str())).collect(),
        pg_sys::TEXTOID,
    )
}

/// A jsonb[] of datums.
fn jsonb_array(items: &[pg_sys::Datum]) -> DatumWithOid<'static> {
    let array = varlena_array(items.to_vec(), pg_sys::JSONBOID);
    // SAFETY: an array datum of type jsonb[].
    unsafe { DatumWithOid::new(array, pg_sys::JSONBARRAYOID) }
}

/// The columns of the events to insert, one statement for all of them.
pub(super) struct Insert<'a> {
    positions: Vec<i64>,
    ids: Vec<pgrx::Uuid>,
    streams: Vec<&'a str>,
    versions: Vec<i64>,
    types: Vec<&'a str>,
    data: Vec<pg_sys::Datum>,
    metadata: Vec<pg_sys::Datum>,
    event_versions: Vec<i32>,
    at: Vec<i64>,
    hashes: Vec<[u8; 32]>,
    tags: Vec<&'a [String]>,
    /// The ids the store generated (caller-chosen ones were claimed by `retries`).
    pub(super) claims: Vec<pgrx::Uuid>,
}

impl<'a> Insert<'a> {
    pub(super) fn with_capacity(n: usize) -> Insert<'a> {
        Insert {
            positions: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            streams: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            event_versions: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
            tags: Vec::with_capacity(n),
            claims: Vec::with_capacity(n),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
        &mut self,
        stream: &'a str,
        ev: &'a Event,
        id: [u8; 16],
        version: i64,
        position: i64,
        at: i64,
        hash: [u8; 32],
    ) {
        self.positions.push(position);
        self.ids.push(uuid(id));
        self.streams.push(stream);
        self.versions.push(version);
        self.types.push(&ev.event_type);
        self.data.push(ev.data);
        self.metadata.push(ev.metadata);
        self.event_versions.push(ev.version);
        self.at.push(at);
        self.hashes.push(hash);
        self.tags.push(&ev.tags);
    }

    pub(super) fn execute(self, client: &mut SpiClient<'_>) {
        let tagged = schema::tagged();
        if !tagged && self.tags.iter().any(|t| !t.is_empty()) {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "event_store: this database's event_store has no tags column yet",
                "Run ALTER EXTENSION event_store UPDATE."
            );
        }
        if let Err(why) = self.direct(client, tagged) {
            debug1!("event_store: appending with an INSERT statement: {why}");
            self.statement(client, tagged);
        }
    }

    /// Inserts the rows without an executor, or says why not having written nothing.
    fn direct(&self, client: &SpiClient<'_>, tagged: bool) -> Result<(), &'static str> {
        use pg_sys::{
            BYTEAOID, INT4OID, INT8OID, JSONBOID, TEXTARRAYOID, TEXTOID, TIMESTAMPTZOID, UUIDOID,
            XID8OID,
        };
        const EVENT: [Column; 12] = [
            ("global_position", INT8OID),
            ("event_id", UUIDOID),
            ("stream_id", TEXTOID),
            ("stream_version", INT8OID),
            ("event_type", TEXTOID),
            ("event_data", JSONBOID),
            ("metadata", JSONBOID),
            ("event_version", INT4OID),
            ("created_at", TIMESTAMPTZOID),
            ("transaction_id", XID8OID),
            ("hash", BYTEAOID),
            ("tags", TEXTARRAYOID),
        ];
        let columns = &EVENT[..EVENT.len() - 1 + tagged as usize];
        let root = schema::relation(c"event_store");
        let ids = schema::relation(c"es_event_ids");
        // SAFETY: inside the append's transaction, which holds RowExclusiveLock on event_store;
        // rows are filled with datums of the columns' types.
        unsafe {
            if !unfiltered(root, pg_sys::ACL_INSERT) || !unfiltered(ids, pg_sys::ACL_INSERT) {
                return Err("row level security or no INSERT privilege");
            }
            let mut executor = Executor::new(root);
            // Where each event goes: event_store, or on a hypertable its time's chunk.
            let mut targets = Vec::with_capacity(self.at.len());
            if !super::chunks::hypertable(client, root) {
                let Some(table) = executor.open(root, columns) else {
                    return Err("event_store has triggers, rules or columns appends do not fill");
                };
                targets.resize(self.at.len(), table);
            } else {
                let mut opened: Vec<(pg_sys::Oid, direct::Target)> = vec![];
                for &at in &self.at {
                    let Some(chunk) = super::chunks::chunk(client, root, at) else {
                        return Err("no chunk TimescaleDB inserts into as a plain table holds the event's time (none yet, or compressed, frozen or tiered)");
                    };
                    let table = match opened.iter().find(|o| o.0 == chunk) {
                        Some(o) => o.1,
                        None => {
                            let Some(table) = executor.open(chunk, columns) else {
                                return Err(
                                    "the chunk has triggers, rules or columns appends do not fill",
                                );
                            };
                            opened.push((chunk, table));
                            table
                        }
                    };
                    targets.push(table);
                }
            }
            if !self.claims.is_empty() {
                let Some(claims) = executor.open(ids, &[("event_id", UUIDOID)]) else {
                    return Err("es_event_ids has triggers, rules or other columns");
                };
                executor.insert(claims, self.claims.len(), |i, v| {
                    v[0] = datum(self.claims[i]);
                });
            }
            let xid = pg_sys::Datum::from(pg_sys::GetTopFullTransactionId().value);
            let untagged = text_array(&[]);
            // Each table's rows in one go, in the order given.
            let mut order: Vec<usize> = (0..targets.len()).collect();
            order.sort_by_key(|&i| targets[i]);
            for rows in order.chunk_by(|&a, &b| targets[a] == targets[b]) {
                executor.insert(targets[rows[0]], rows.len(), |k, v| {
                    let i = rows[k];
                    v[0] = self.positions[i].into();
                    v[1] = datum(self.ids[i]);
                    v[2] = datum(self.streams[i]);
                    v[3] = self.versions[i].into();
                    v[4] = datum(self.types[i]);
                    v[5] = self.data[i];
                    v[6] = self.metadata[i];
                    v[7] = self.event_versions[i].into();
                    v[8] = self.at[i].into();
                    v[9] = xid;
                    v[10] = datum(&self.hashes[i][..]);
                    if tagged {
                        v[11] = match self.tags[i] {
                            [] => untagged,
                            tags => text_array(tags),
                        };
                    }
                });
            }
        }
        Ok(())
    }

    /// Inserts the rows with an SQL statement: whatever the tables ask for (triggers, row
    /// level security, TimescaleDB creating a chunk) happens.
    fn statement(self, client: &mut SpiClient<'_>, tagged: bool) {
        use Oid::*;
        let timestamptz = |t: i64| {
            // SAFETY: a timestamptz is passed by value as its microseconds.
            unsafe { DatumWithOid::new(pg_sys::Datum::from(t), TIMESTAMPTZOID.value()) }
        };
        let jsonb = |d: pg_sys::Datum| {
            // SAFETY: a jsonb datum built or checked by this module.
            unsafe { DatumWithOid::new(d, JSONBOID.value()) }
        };
        let result = if self.positions.len() == 1 {
            let types = [
                INT8OID,
                UUIDOID,
                TEXTOID,
                INT8OID,
                TEXTOID,
                JSONBOID,
                JSONBOID,
                INT4OID,
                TIMESTAMPTZOID,
                BYTEAOID,
                UUIDARRAYOID,
                TEXTOID,
            ];
            let plan = plans::kept(
                client,
                INSERT_ONE_SQL[tagged as usize],
                &types[..types.len() - 1 + tagged as usize],
                true,
            );
            let args = [
                arg(self.positions[0]),
                arg(self.ids[0]),
                arg(self.streams[0]),
                arg(self.versions[0]),
                arg(self.types[0]),
                jsonb(self.data[0]),
                jsonb(self.metadata[0]),
                arg(self.event_versions[0]),
                timestamptz(self.at[0]),
                arg(&self.hashes[0][..]),
                arg(self.claims),
                arg(self.tags[0].join("\u{1e}")),
            ];
            client
                .update(&*plan, None, &args[..args.len() - 1 + tagged as usize])
                .map(drop)
        } else {
            let types = [
                INT8ARRAYOID,
                UUIDARRAYOID,
                TEXTARRAYOID,
                INT8ARRAYOID,
                TEXTARRAYOID,
                JSONBARRAYOID,
                JSONBARRAYOID,
                INT4ARRAYOID,
                TIMESTAMPTZARRAYOID,
                BYTEAARRAYOID,
                UUIDARRAYOID,
                TEXTARRAYOID,
            ];
            let plan = plans::kept(
                client,
                INSERT_MANY_SQL[tagged as usize],
                &types[..types.len() - 1 + tagged as usize],
                true,
            );
            let at: Vec<TimestampWithTimeZone> = self
                .at
                .iter()
                .map(|t| {
                    // Out of range only when es_streams' time bounds were corrupted.
                    TimestampWithTimeZone::try_from(*t).unwrap_or_else(|_| {
                        ereport!(
                            ERROR,
                            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                            "event_store: a stream's last event time in es_streams is out of range"
                        );
                    })
                })
                .collect();
            let args = [
                arg(self.positions),
                arg(self.ids),
                arg(self.streams),
                arg(self.versions),
                arg(self.types),
                jsonb_array(&self.data),
                jsonb_array(&self.metadata),
                arg(self.event_versions),
                arg(at),
                arg(self.hashes.iter().map(|h| &h[..]).collect::<Vec<_>>()),
                arg(self.claims),
                arg(self
                    .tags
                    .iter()
                    .map(|t| t.join("\u{1e}"))
                    .collect::<Vec<_>>()),
            ];
            client
                .update(&*plan, None, &args[..args.len() - 1 + tagged as usize])
                .map(drop)
        };
        result.or_raise("inserting events");
    }
}
