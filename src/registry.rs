//! The stream registry `es_streams`: one row per stream holding its head (version, hash,
//! time bounds). Appends lock that row, which serialises writers of one stream only.
//!
//! Rows change only through the functions here: they open a write scope that the registry's
//! guard trigger checks, so even the table owner cannot edit heads by hand.
use crate::schema::{column, nullable};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid as Oid;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};
use std::cell::Cell;

thread_local! {
    static WRITE_SCOPE: Cell<bool> = const { Cell::new(false) };
}

/// Allows registry writes until dropped, also when an error unwinds through it.
struct WriteScope;

impl WriteScope {
    fn open() -> Self {
        WRITE_SCOPE.with(|w| w.set(true));
        WriteScope
    }
}

impl Drop for WriteScope {
    fn drop(&mut self) {
        WRITE_SCOPE.with(|w| w.set(false));
    }
}

fn execute<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    types: &[Oid],
    args: &[DatumWithOid],
) -> SpiTupleTable<'conn> {
    let plan = crate::plans::kept(client, sql, types, true);
    client
        .update(&*plan, None, args)
        .unwrap_or_else(|e| error!("event_store: updating es_streams: {e}"))
}

v1_function!(pg_finfo__es_guard_registry);
/// The guard trigger of es_streams: refuses UPDATE, DELETE and TRUNCATE (SQLSTATE ES003) for
/// every role, the table owner and superusers included, except the updates made inside this
/// module's write scope. A C trigger reads the scope directly: no function a caller could
/// be refused EXECUTE on, and no PL/pgSQL call on every append.
///
/// # Safety
/// Called by PostgreSQL's trigger manager with its TriggerData as context.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _es_guard_registry(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: called by the trigger manager, whose context is a TriggerData (checked).
    let trigger = unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
            error!("event_store: _es_guard_registry is a trigger function");
        }
        &*context.cast::<pg_sys::TriggerData>()
    };
    let op = trigger.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    if op == pg_sys::TRIGGER_EVENT_UPDATE && WRITE_SCOPE.with(|w| w.get()) {
        return pg_sys::Datum::from(trigger.tg_newtuple);
    }
    let op = match op {
        pg_sys::TRIGGER_EVENT_UPDATE => "UPDATE",
        pg_sys::TRIGGER_EVENT_DELETE => "DELETE",
        pg_sys::TRIGGER_EVENT_TRUNCATE => "TRUNCATE",
        _ => "INSERT",
    };
    crate::errors::raise(
        b"ES003",
        format!("event_store: {op} of es_streams is not allowed"),
        "Events are append-only and es_streams is maintained by es_append.".into(),
        "Append a compensating event with es_append instead.".into(),
    )
}

const LOCK_SQL: &str =
    "SELECT version, head_hash, last_at FROM @extschema@.es_streams WHERE stream_id = $1 FOR UPDATE";
const REGISTER_SQL: &str =
    "INSERT INTO @extschema@.es_streams (stream_id, version) VALUES ($1, 0) \
     ON CONFLICT (stream_id) DO NOTHING RETURNING version";
const ADVANCE_SQL: &str =
    "UPDATE @extschema@.es_streams SET version = $2, first_at = coalesce(first_at, $3), \
     last_at = $3, last_position = $4, head_hash = $5 WHERE stream_id = $1";

/// A stream's head as its locked registry row says.
#[derive(Clone, Debug)]
pub struct Head {
    pub version: i64,
    /// `None` for a stream without events: its chain starts from the zero hash.
    pub hash: Option<Vec<u8>>,
    /// Time of the last event, in PostgreSQL's microseconds.
    pub last_at: Option<i64>,
}

/// Locks the stream's registry row, creating it at version 0 when the stream is new, and
/// returns its head. Held until the transaction ends.
pub fn lock(client: &mut SpiClient<'_>, stream_id: &str) -> Head {
    use Oid::TEXTOID;
    for _ in 0..2 {
        let rows = execute(client, LOCK_SQL, &[TEXTOID], &[stream_id.into()]);
        if let Some(row) = rows.into_iter().next() {
            return Head {
                version: column(&row, 1, "es_streams.version"),
                hash: nullable(&row, 2, "es_streams.head_hash"),
                last_at: nullable::<TimestampWithTimeZone>(&row, 3, "es_streams.last_at")
                    .map(|t| t.into_inner()),
            };
        }
        let _scope = WriteScope::open();
        // A row this inserts is ours until the transaction ends; a conflict means another
        // transaction created the stream meanwhile, whose row the next round locks.
        if !execute(client, REGISTER_SQL, &[TEXTOID], &[stream_id.into()]).is_empty() {
            return Head {
                version: 0,
                hash: None,
                last_at: None,
            };
        }
    }
    error!("event_store: the registry row of stream {stream_id} vanished while being locked")
}

/// Moves the stream's head after an append (its row is locked by `lock`).
pub fn advance(
    client: &mut SpiClient<'_>,
    stream_id: &str,
    version: i64,
    at: i64,
    last_position: i64,
    head_hash: &[u8],
) {
    use Oid::*;
    let _scope = WriteScope::open();
    // SAFETY: a timestamptz is passed by value as its microseconds.
    let at = unsafe { DatumWithOid::new(pg_sys::Datum::from(at), TIMESTAMPTZOID.value()) };
    execute(
        client,
        ADVANCE_SQL,
        &[TEXTOID, INT8OID, TIMESTAMPTZOID, INT8OID, BYTEAOID],
        &[
            stream_id.into(),
            version.into(),
            at,
            last_position.into(),
            head_hash.into(),
        ],
    );
}
