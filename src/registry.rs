//! The stream registry `es_streams`: one row per stream holding its head (version, hash,
//! time bounds). Appends lock that row, which serialises writers of one stream only.
//!
//! Rows change only through the functions here: they open a write scope that the registry's
//! guard trigger checks, so even the table owner cannot edit heads by hand.
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
        .expect("registry statement")
}

v1_function!(pg_finfo__es_guard_registry);
/// The guard trigger of es_streams: refuses UPDATE, DELETE and TRUNCATE (SQLSTATE ES003) for
/// every role, the table owner and superusers included, except the updates made inside this
/// module's write scope. A C trigger reads the scope directly: no function a caller could
/// be refused EXECUTE on, and no PL/pgSQL call on every append.
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
        "Events are append-only and es_streams is maintained by es_append.",
        "Append a compensating event with es_append instead.",
    )
}

const LOCK_SQL: &str =
    "SELECT version, head_hash, first_at, last_at FROM @extschema@.es_streams WHERE stream_id = $1 FOR UPDATE";
const REGISTER_SQL: &str =
    "INSERT INTO @extschema@.es_streams (stream_id, version) VALUES ($1, 0) ON CONFLICT (stream_id) DO NOTHING";
const ADVANCE_SQL: &str =
    "UPDATE @extschema@.es_streams SET version = $2, first_at = coalesce(first_at, $3), \
     last_at = $4, last_position = $5, head_hash = $6 WHERE stream_id = $1";

/// Locks the stream's registry row, creating it at version 0 when the stream is new, and
/// returns its head. Held until the transaction ends.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn _es_open_stream(
    stream_id: &str,
) -> TableIterator<
    'static,
    (
        name!(version, i64),
        name!(head_hash, Option<Vec<u8>>),
        name!(first_at, Option<TimestampWithTimeZone>),
        name!(last_at, Option<TimestampWithTimeZone>),
    ),
> {
    use Oid::TEXTOID;
    let head = Spi::connect_mut(|client| {
        for attempt in 0..2 {
            let rows = execute(client, LOCK_SQL, &[TEXTOID], &[stream_id.into()]);
            if let Some(row) = rows.into_iter().next() {
                return (
                    row.get::<i64>(1).unwrap().unwrap(),
                    row.get::<Vec<u8>>(2).unwrap(),
                    row.get::<TimestampWithTimeZone>(3).unwrap(),
                    row.get::<TimestampWithTimeZone>(4).unwrap(),
                );
            }
            if attempt == 0 {
                let _scope = WriteScope::open();
                execute(client, REGISTER_SQL, &[TEXTOID], &[stream_id.into()]);
            }
        }
        unreachable!("stream row vanished while locked")
    });
    TableIterator::once(head)
}

/// Moves the stream's head after an append (the row is already locked by `_es_open_stream`).
#[pg_extern(volatile, parallel_unsafe)]
fn _es_advance_stream(
    stream_id: &str,
    version: i64,
    first_at: TimestampWithTimeZone,
    last_at: TimestampWithTimeZone,
    last_position: i64,
    head_hash: &[u8],
) {
    use Oid::*;
    let _scope = WriteScope::open();
    Spi::connect_mut(|client| {
        execute(
            client,
            ADVANCE_SQL,
            &[
                TEXTOID,
                INT8OID,
                TIMESTAMPTZOID,
                TIMESTAMPTZOID,
                INT8OID,
                BYTEAOID,
            ],
            &[
                stream_id.into(),
                version.into(),
                first_at.into(),
                last_at.into(),
                last_position.into(),
                head_hash.into(),
            ],
        );
    });
}
