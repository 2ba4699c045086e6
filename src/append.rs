//! Appending: `es_append`, `es_append_batch` and `es_append_multi`, each a C function
//! (SECURITY DEFINER with a pinned search_path, declared in sql/append.sql) over one engine.
//!
//! An append reads its arguments as jsonb datums and validates every event before it locks
//! or writes anything; then, in one SPI connection with kept plans: locks each stream's
//! registry row in stream-id order (so calls over the same streams never deadlock), claims
//! caller-chosen ids (generated ones are claimed by the INSERT), checks expected versions, registers with the feed, takes the call's
//! positions as one consecutive block, hashes in Rust, inserts every event in one statement
//! and advances each stream's head. ES001/ES002 are raised only once everything Rust holds
//! is dropped (they leave by longjmp).
use crate::errors::Refused;
use crate::schema::{column, OrRaise};
use crate::{catalog, context, feed, fold, guc, jsonb, plans, projection_worker, registry};
use event_store_core::append::{classify, has_duplicate, lock_order, Retry, Stored};
use event_store_core::chain::{event_hash, Content, GENESIS};
use event_store_core::stream::{category, system_stream, SYSTEM_CATEGORY};
use event_store_core::time::PG_EPOCH_US;
use event_store_core::validate::{self as rules, Invalid};
use pgrx::datum::DatumWithOid;
use pgrx::fcinfo::{pg_arg_is_null, pg_getarg_datum_raw};
use pgrx::pg_sys::BuiltinOid as Oid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::IntoDatum;
use std::ffi::CStr;

/// One event, validated, before its stream's lock is taken.
struct Event {
    id: Option<[u8; 16]>,
    event_type: String,
    data: pg_sys::Datum,
    data_text: String,
    metadata: pg_sys::Datum,
    meta_text: String,
    version: i32,
}

/// The events for one stream.
struct Entry {
    stream_id: String,
    expected: Option<i64>,
    events: Vec<Event>,
}

/// One row of the result: the entry it belongs to and what was stored.
#[derive(Clone, Copy)]
struct Appended {
    entry: usize,
    id: [u8; 16],
    version: i64,
    position: i64,
    at: i64,
}

// ---- jsonb through PostgreSQL's own functions (datums stay binary; text only for the hash)

/// Calls a built-in function of jsonb; `None` for SQL NULL.
///
/// # Safety
/// `f` must take `args.len()` non-null arguments of the types given.
unsafe fn call(
    f: unsafe fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
    args: &[pg_sys::Datum],
) -> Option<pg_sys::Datum> {
    let args: Vec<Option<pg_sys::Datum>> = args.iter().map(|a| Some(*a)).collect();
    pgrx::direct_function_call_as_datum(f, &args)
}

fn text_datum(s: &str) -> pg_sys::Datum {
    s.into_datum().expect("text is never NULL")
}

/// `jsonb_typeof`: object, array, string, number, boolean or null.
fn kind(j: pg_sys::Datum) -> String {
    // SAFETY: `j` is a non-null jsonb datum; jsonb_typeof returns text.
    unsafe {
        let t = call(pg_sys::jsonb_typeof, &[j]).expect("jsonb_typeof is never NULL");
        String::from_datum(t, false).expect("text")
    }
}

/// `j -> key`, or `None` when the key is absent.
fn field(j: pg_sys::Datum, key: &str) -> Option<pg_sys::Datum> {
    // SAFETY: `j` is a non-null jsonb object datum, the key a text datum.
    unsafe { call(pg_sys::jsonb_object_field, &[j, text_datum(key)]) }
}

/// `j ->> key`: the text of a string, the JSON text of anything else, `None` for absent or null.
fn field_text(j: pg_sys::Datum, key: &str) -> Option<pg_sys::Datum> {
    // SAFETY: as for `field`; the result is a text datum.
    unsafe { call(pg_sys::jsonb_object_field_text, &[j, text_datum(key)]) }
}

/// The `i`th element (0-based) of a jsonb array.
fn element(j: pg_sys::Datum, i: i32) -> pg_sys::Datum {
    // SAFETY: `j` is a non-null jsonb array datum with more than `i` elements.
    unsafe { call(pg_sys::jsonb_array_element, &[j, i.into()]) }.expect("the element exists")
}

fn array_len(j: pg_sys::Datum) -> i32 {
    // SAFETY: `j` is a non-null jsonb array datum.
    unsafe { call(pg_sys::jsonb_array_length, &[j]) }
        .map(|d| d.value() as i32)
        .unwrap_or(0)
}

/// jsonb's text form, the bytes the hash recipe covers.
fn out(j: pg_sys::Datum) -> String {
    // SAFETY: `j` is a non-null jsonb datum; jsonb_out returns a palloc'd C string.
    unsafe {
        let c = call(pg_sys::jsonb_out, &[j]).expect("jsonb_out is never NULL");
        CStr::from_ptr(c.cast_mut_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

fn concat(a: pg_sys::Datum, b: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: both are non-null jsonb objects; `||` of two objects is an object.
    unsafe { call(pg_sys::jsonb_concat, &[a, b]) }.expect("jsonb || jsonb is never NULL")
}

/// Reads a text value with the input function of the column it goes to, as a SQL cast
/// would (same errors: `22P02` for an id that is not a UUID, a version that is not an int).
fn parse(
    input: unsafe fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
    text: pg_sys::Datum,
) -> pg_sys::Datum {
    // SAFETY: `text` is a non-null text datum; the input functions take a C string.
    unsafe {
        let s = String::from_datum(text, false).expect("text");
        let c = std::ffi::CString::new(s).unwrap_or_default();
        call(input, &[pg_sys::Datum::from(c.as_ptr())]).expect("input functions return a value")
    }
}

/// Detoasted once: every lookup in a toasted array would otherwise detoast it again.
fn detoast(j: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: `j` is a non-null varlena datum.
    unsafe { pg_sys::Datum::from(pg_sys::pg_detoast_datum(j.cast_mut_ptr())) }
}

fn raise(invalid: Invalid) -> ! {
    crate::validate::raise(invalid)
}

// ---- reading the arguments

/// What an append adds to every event's metadata: the correlation and causation ids set for
/// the session, and the acting role (always last, so no caller can forge it).
struct Stamp {
    context: Option<pg_sys::Datum>,
    appended_by: pg_sys::Datum,
}

impl Stamp {
    fn new() -> Stamp {
        let setting = |name: &CStr| {
            // SAFETY: a lookup of a custom setting that may be undefined (then NULL).
            let v = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
            // SAFETY: a non-null result is a C string owned by the GUC machinery.
            (!v.is_null())
                .then(|| unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
        };
        let mut context = serde_json::Map::new();
        for (key, name) in [
            ("correlationId", c"event_store.correlation_id"),
            ("causationId", c"event_store.causation_id"),
        ] {
            if let Some(v) = setting(name) {
                context.insert(key.into(), v.into());
            }
        }
        let by = serde_json::json!({ "appendedBy": context::_es_calling_role() });
        Stamp {
            context: (!context.is_empty()).then(|| jsonb::datum(&context.into())),
            appended_by: jsonb::datum(&by),
        }
    }

    fn apply(&self, metadata: pg_sys::Datum) -> pg_sys::Datum {
        let m = match self.context {
            Some(c) => concat(c, metadata),
            None => metadata,
        };
        concat(m, self.appended_by)
    }
}

/// The parts of one event as given, checked in the order the documentation gives: id, version,
/// then type, data, metadata, version, size and depth.
struct Given {
    id: Option<[u8; 16]>,
    event_type: Option<String>,
    data: Option<pg_sys::Datum>,
    /// `"null"` for SQL NULL data of a single append, `"missing"` for a batch's absent key.
    absent_data: &'static str,
    metadata: Option<pg_sys::Datum>,
    /// NULL (or absent) means 1.
    version: Option<i32>,
}

fn event(
    given: Given,
    stamp: &Stamp,
    ordinal: Option<i32>,
    limits: (i64, usize),
) -> Result<Event, Invalid> {
    let (id, version) = (given.id, given.version.unwrap_or(1));
    let data_kind = given.data.map_or(given.absent_data.to_string(), kind);
    let meta_kind = given.metadata.map_or("null".to_string(), kind);
    let data_text = given
        .data
        .filter(|_| data_kind == "object")
        .map(out)
        .unwrap_or_default();
    let metadata = given
        .metadata
        .filter(|_| meta_kind == "object")
        .map(|m| stamp.apply(m));
    let meta_text = metadata.map(out).unwrap_or_default();
    let size = (data_text.len() + meta_text.len()) as i64;
    rules::check_event(
        given.event_type.as_deref(),
        Some(&data_kind),
        Some(&meta_kind),
        Some(version),
        size,
        limits.0,
        ordinal,
    )?;
    let (data, metadata) = (given.data.expect("checked"), metadata.expect("checked"));
    for (j, what) in [(data, "event_data"), (metadata, "metadata")] {
        // SAFETY: a non-null jsonb datum.
        let depth = unsafe { jsonb::with_jsonb(j, |j| jsonb::depth(j, limits.1)) };
        rules::check_depth(what, depth, limits.1, ordinal)?;
    }
    Ok(Event {
        id,
        event_type: given.event_type.expect("checked"),
        data,
        data_text,
        metadata,
        meta_text,
        version,
    })
}

fn limits() -> (i64, usize) {
    (
        i64::from(guc::MAX_EVENT_BYTES.get()),
        guc::MAX_EVENT_DEPTH.get().max(1) as usize,
    )
}

/// The events of a JSON array as es_append_batch takes them (`ordinal` numbers them in
/// messages, from 1).
fn batch_events(events: pg_sys::Datum, stamp: &Stamp) -> Result<Vec<Event>, Invalid> {
    let limits = limits();
    (0..array_len(events))
        .map(|i| {
            let ev = element(events, i);
            let k = kind(ev);
            if k != "object" {
                return Err(Invalid::Value(format!(
                    "event {}: must be a JSON object, not {k}",
                    i + 1
                )));
            }
            let event_type = field(ev, "type")
                .filter(|t| kind(*t) == "string")
                .and_then(|_| field_text(ev, "type"))
                // SAFETY: ->> returns text.
                .map(|t| unsafe { String::from_datum(t, false) }.expect("text"));
            // Read as a SQL cast would (22P02 for an id that is not a UUID, a version that is
            // not an integer), before the other checks.
            let id = field_text(ev, "id").map(|t| {
                // SAFETY: uuid_in returns a pointer to 16 bytes.
                unsafe { *parse(pg_sys::uuid_in, t).cast_mut_ptr::<[u8; 16]>() }
            });
            let version = match field_text(ev, "version") {
                Some(t) => {
                    // SAFETY: ->> returns text.
                    let text = unsafe { String::from_datum(t, false) }.expect("text");
                    rules::check_version_range(&text, Some(i + 1))?;
                    Some(parse(pg_sys::int4in, t).value() as i32)
                }
                None => None,
            };
            let given = Given {
                id,
                event_type,
                data: field(ev, "data"),
                absent_data: "missing",
                metadata: Some(
                    field(ev, "metadata").unwrap_or_else(|| jsonb::datum(&serde_json::json!({}))),
                ),
                version,
            };
            event(given, stamp, Some(i + 1), limits)
        })
        .collect()
}

/// Checks a stream id and an array of events.
fn check_batch(
    stream_id: Option<&str>,
    expected: Option<i64>,
    events: Option<pg_sys::Datum>,
) -> Result<(), Invalid> {
    let (k, n) = match events {
        None => ("null".to_string(), 0),
        Some(e) => {
            let k = kind(e);
            let n = if k == "array" { array_len(e) } else { 0 };
            (k, n)
        }
    };
    rules::check_append(stream_id, expected, &k, n)
}

// ---- the engine

const CLAIM_SQL: &str =
    "INSERT INTO _event_store.es_event_ids SELECT pg_catalog.unnest($1::uuid[]) \
    ON CONFLICT DO NOTHING RETURNING event_id";
// unnest over several arrays is FROM-clause syntax, not a function that could be qualified;
// the pinned search_path (pg_catalog first) is what resolves it.
/// The stored events an append's ids name, and whether each has the stream, type and version
/// the append gives; their data is compared in Rust (`same_data`).
const STORED_SQL: &str =
    "SELECT b.ord::int, e.event_id, e.stream_id OPERATOR(pg_catalog.=) b.stream \
       AND e.event_type OPERATOR(pg_catalog.=) b.type \
       AND e.event_version OPERATOR(pg_catalog.=) b.version, \
       e.stream_id, e.stream_version, e.global_position, e.created_at, e.event_data \
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[]) \
       WITH ORDINALITY AS b(id, stream, type, version, ord) \
  JOIN _event_store.log e ON e.event_id OPERATOR(pg_catalog.=) b.id";
// Each also claims the ids the store generated for the call: an id, whoever chose it, is
// held by one event (a caller reusing one the store handed out gets ES002, as for its own).
const INSERT_ONE_SQL: &str = "WITH claim AS (INSERT INTO _event_store.es_event_ids \
    SELECT pg_catalog.unnest($11::uuid[])) \
    INSERT INTO _event_store.log (global_position, event_id, stream_id, stream_version, event_type, event_data, metadata, event_version, created_at, hash) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
const INSERT_MANY_SQL: &str = "WITH claim AS (INSERT INTO _event_store.es_event_ids \
    SELECT pg_catalog.unnest($11::uuid[])) \
    INSERT INTO _event_store.log (global_position, event_id, stream_id, stream_version, event_type, event_data, metadata, event_version, created_at, hash) \
    SELECT * FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::int8[], $5::text[], \
    $6::jsonb[], $7::jsonb[], $8::int4[], $9::timestamptz[], $10::bytea[])";

fn arg<T: IntoDatum>(v: T) -> DatumWithOid<'static> {
    let oid = T::type_oid();
    // SAFETY: the value's own type oid.
    unsafe { DatumWithOid::new(v, oid) }
}

/// A jsonb[] of datums (pgrx would build one through text).
fn jsonb_array(items: &[pg_sys::Datum]) -> DatumWithOid<'static> {
    let mut items = items.to_vec();
    // SAFETY: jsonb elements are varlenas (length -1, by reference, int alignment); the
    // array is palloc'd in the current memory context.
    let array = unsafe {
        pg_sys::construct_array(
            items.as_mut_ptr(),
            items.len() as i32,
            pg_sys::JSONBOID,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
        )
    };
    // SAFETY: an array datum of type jsonb[].
    unsafe { DatumWithOid::new(pg_sys::Datum::from(array), pg_sys::JSONBARRAYOID) }
}

fn uuid(b: [u8; 16]) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(b)
}

fn refused(code: &'static [u8; 5], message: String, detail: String, hint: &str) -> Refused {
    Refused {
        code,
        message,
        detail,
        hint: hint.into(),
    }
}

/// Whether a retry's data is the stored event's. A caller who may read personal data compares
/// plaintext (the stored event opened; the retry was not sealed yet, and the seal's nonce
/// differs anyway). For any other caller the answer must not depend on what it cannot read:
/// both sides are blinded (every value at a personal-data path of the type, and every sealed
/// value, withheld), so a retry that differs from the original only there is the same append.
fn same_data(
    mut stored: serde_json::Value,
    given: pg_sys::Datum,
    personal: Option<&event_store_core::catalog::Personal>,
    privileged: bool,
) -> bool {
    // SAFETY: a non-null jsonb datum, checked when the event was read.
    let mut given = unsafe { jsonb::to_value(given) };
    if privileged {
        crate::personal::open_all(&mut stored);
        crate::personal::open_all(&mut given);
    } else {
        let paths = personal.map_or(&[][..], |p| &p.paths[..]);
        event_store_core::personal::blind(&mut stored, paths);
        event_store_core::personal::blind(&mut given, paths);
    }
    // Compared as jsonb compares (numbers by value), as a SQL `=` did before.
    let (a, b) = (jsonb::datum(&stored), jsonb::datum(&given));
    // SAFETY: two non-null jsonb datums; jsonb_eq returns a bool.
    unsafe { call(pg_sys::jsonb_eq, &[a, b]) }.is_some_and(|d| d.value() != 0)
}

/// Claims the call's caller-chosen ids and decides, entry by entry, whether it is new or a
/// retry of an append stored whole. Returns the stored rows of replayed entries. `personal`
/// gives what the catalog says of an event's personal data (for the retry check).
fn retries(
    client: &mut SpiClient<'_>,
    entries: &[Entry],
    personal: impl Fn(usize, &Event) -> Option<std::rc::Rc<event_store_core::catalog::Personal>>,
) -> Result<(Vec<bool>, Vec<Appended>), Refused> {
    let mut replay = vec![false; entries.len()];
    let given: Vec<(usize, &Event)> = entries
        .iter()
        .enumerate()
        .flat_map(|(i, e)| e.events.iter().map(move |ev| (i, ev)))
        .filter(|(_, ev)| ev.id.is_some())
        .collect();
    if given.is_empty() {
        return Ok((replay, vec![]));
    }
    // Sorted, so that two calls claiming the same ids queue in one order.
    let mut ids: Vec<[u8; 16]> = given.iter().map(|(_, e)| e.id.unwrap()).collect();
    ids.sort_unstable();
    let claim = plans::kept(client, CLAIM_SQL, &[Oid::UUIDARRAYOID], true);
    let claimed = client
        .update(
            &*claim,
            None,
            &[arg(ids.iter().map(|b| uuid(*b)).collect::<Vec<_>>())],
        )
        .or_raise("claiming event ids")
        .len();
    if claimed == ids.len() {
        return Ok((replay, vec![])); // none was claimed before: none is stored
    }
    let plan = plans::kept(
        client,
        STORED_SQL,
        &[
            Oid::UUIDARRAYOID,
            Oid::TEXTARRAYOID,
            Oid::TEXTARRAYOID,
            Oid::INT4ARRAYOID,
        ],
        true,
    );
    let rows = client
        .update(
            &*plan,
            None,
            &[
                arg(given
                    .iter()
                    .map(|(_, e)| uuid(e.id.unwrap()))
                    .collect::<Vec<_>>()),
                arg(given
                    .iter()
                    .map(|(i, _)| entries[*i].stream_id.as_str())
                    .collect::<Vec<_>>()),
                arg(given
                    .iter()
                    .map(|(_, e)| e.event_type.as_str())
                    .collect::<Vec<_>>()),
                arg(given.iter().map(|(_, e)| e.version).collect::<Vec<_>>()),
            ],
        )
        .or_raise("reading stored event ids");
    let privileged = crate::personal::caller_privileged();
    // (entry, ordinal in `given`, stored, row)
    let mut found: Vec<(usize, usize, Stored, Appended, String)> = vec![];
    for row in rows {
        let ord = column::<i32>(&row, 1, "ordinality") as usize - 1;
        let id: pgrx::Uuid = column(&row, 2, "event_store.event_id");
        let position: i64 = column(&row, 6, "event_store.global_position");
        let (entry, ev) = given[ord];
        let same_rest: bool = column(&row, 3, "the comparison of stored events");
        let stored = Stored {
            position,
            same_content: same_rest && {
                let data: pgrx::JsonB = column(&row, 8, "event_store.event_data");
                let personal = personal(entry, ev);
                same_data(data.0, ev.data, personal.as_deref(), privileged)
            },
        };
        let at: TimestampWithTimeZone = column(&row, 7, "event_store.created_at");
        found.push((
            entry,
            ord,
            stored,
            Appended {
                entry,
                id: *id.as_bytes(),
                version: column(&row, 5, "event_store.stream_version"),
                position,
                at: at.into_inner(),
            },
            column(&row, 4, "event_store.stream_id"),
        ));
    }
    found.sort_by_key(|f| f.1);
    let mut rows = vec![];
    for (i, entry) in entries.iter().enumerate() {
        let mine: Vec<&(usize, usize, Stored, Appended, String)> =
            found.iter().filter(|f| f.0 == i).collect();
        let stored: Vec<Stored> = mine.iter().map(|f| f.2.clone()).collect();
        let ids_given = entry.events.iter().filter(|e| e.id.is_some()).count();
        match classify(entry.events.len(), ids_given, &stored) {
            Retry::New => {}
            Retry::Replay => {
                replay[i] = true;
                rows.extend(mine.iter().map(|f| f.3));
            }
            Retry::Conflict(k) => {
                let f = mine[k];
                return Err(refused(
                    b"ES002",
                    format!(
                        "event_store: event id {} already exists with other content",
                        uuid(f.3.id)
                    ),
                    format!(
                        "It is version {} of stream {}. A retry must repeat the stream, type, data and version of every event of the original append.",
                        f.3.version, f.4
                    ),
                    "",
                ));
            }
        }
    }
    Ok((replay, rows))
}

thread_local! {
    /// Set by `_es_record` for the one append it makes: the store's own streams take no other.
    static SYSTEM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Allows the next append into the store's own streams; cleared when dropped, also by an error.
struct SystemAppend;

impl SystemAppend {
    fn allow() -> SystemAppend {
        SYSTEM.set(true);
        SystemAppend
    }
}

impl Drop for SystemAppend {
    fn drop(&mut self) {
        SYSTEM.set(false);
    }
}

/// Appends the store's own record of `kind` (an export, an erasure) to its stream
/// `event_store-<kind>`, which no caller may append to; returns its global position. Granted
/// to nobody: the owner's functions call it.
#[pg_extern(volatile, schema = "_event_store")]
#[search_path(pg_catalog, pg_temp)]
fn _es_record(kind: &str, event_type: &str, event_data: pgrx::JsonB) -> i64 {
    let _allowed = SystemAppend::allow();
    Spi::get_one_with_args::<i64>(
        crate::schema::qualified("SELECT global_position FROM _event_store._es_append($1, $2, $3, '{}'::pg_catalog.jsonb, NULL::pg_catalog.int8, NULL::pg_catalog.uuid, 1)"),
        &[
            system_stream(kind).into(),
            event_type.into(),
            event_data.into(),
        ],
    )
    .or_raise("recording in the store's own stream")
    .unwrap_or_default()
}

/// Appends every entry, all or nothing. Rows come back in input order.
fn append(mut entries: Vec<Entry>) -> Result<(Vec<String>, Vec<Appended>), Refused> {
    // Taken by the first append after it was allowed: one a user's code (a reducer taking a
    // snapshot) might make inside that append is refused.
    let system = SYSTEM.take();
    if let Some(e) = entries
        .iter()
        .find(|e| !system && category(&e.stream_id) == SYSTEM_CATEGORY)
    {
        return Err(refused(
            b"42501",
            format!(
                "event_store: stream {} is in the category {SYSTEM_CATEGORY}, which holds the store's own records",
                e.stream_id
            ),
            String::new(),
            "Name the stream in another category.",
        ));
    }
    let streams: Vec<&str> = entries.iter().map(|e| e.stream_id.as_str()).collect();
    let order = lock_order(&streams).unwrap_or_else(|s| {
        raise(Invalid::Value(format!(
            "stream {s} is named twice: give all its events in one entry"
        )))
    });
    if has_duplicate(
        entries
            .iter()
            .flat_map(|e| e.events.iter().filter_map(|ev| ev.id)),
    ) {
        return Err(refused(
            b"ES002",
            "event_store: the batch uses an event id twice".into(),
            String::new(),
            "",
        ));
    }
    // Locked as the INSERT below would, but first: a catalog change committed before the
    // lock is seen (taking it processes invalidations), and one after waits for this append.
    // SAFETY: a lock on event_store, held to the end of the transaction as the INSERT's is.
    unsafe {
        pg_sys::LockRelationOid(
            crate::schema::relation(c"event_store"),
            pg_sys::RowExclusiveLock as i32,
        )
    };
    let catalog = catalog::current();
    // The events with personal data to seal: (entry, event, what the catalog says, label).
    let mut seals = vec![];
    for (i, e) in entries.iter().enumerate() {
        let stream_category = category(&e.stream_id);
        if stream_category == SYSTEM_CATEGORY {
            continue; // the store's own records are not the application's catalog
        }
        for (n, ev) in e.events.iter().enumerate() {
            let at = || match (entries.len(), e.events.len()) {
                (1, 1) => String::new(),
                (1, _) => format!("event {}: ", n + 1),
                _ => format!("stream {}, event {}: ", e.stream_id, n + 1),
            };
            catalog.check(stream_category, &ev.event_type, ev.version, ev.data, &at)?;
            if let Some(p) = catalog.personal(stream_category, &ev.event_type, ev.version) {
                seals.push((i, n, p, at()));
            }
        }
    }
    drop(catalog);
    let (written, rows) = Spi::connect_mut(|client| -> Result<_, Refused> {
        let mut heads = vec![None; entries.len()];
        for &i in &order {
            heads[i] = Some(registry::lock(client, &entries[i].stream_id));
        }
        let heads: Vec<registry::Head> = heads.into_iter().map(|h| h.expect("locked")).collect();
        let personal = |i: usize, ev: &Event| {
            seals
                .iter()
                .find(|(si, n, _, _)| *si == i && std::ptr::eq(&entries[i].events[*n], ev))
                .map(|s| s.2.clone())
        };
        let (replay, mut rows) = retries(client, &entries, personal)?;
        for (i, e) in entries.iter().enumerate() {
            match e.expected {
                Some(v) if !replay[i] && v != heads[i].version => {
                    return Err(refused(
                        b"ES001",
                        format!(
                            "event_store: wrong expected version for stream {}: expected {v}, actual {}",
                            e.stream_id, heads[i].version
                        ),
                        String::new(),
                        "Read the stream again, decide, and retry with its current version.",
                    ))
                }
                _ => {}
            }
        }
        for (i, n, personal, at) in &seals {
            if !replay[*i] {
                seal(client, personal, &mut entries[*i], *n, at)?;
            }
        }
        let n: usize = (0..entries.len())
            .filter(|i| !replay[*i])
            .map(|i| entries[i].events.len())
            .sum();
        let mut written = vec![];
        if n > 0 {
            // Visible to feed readers before any position is taken: they stop below ours.
            feed::register();
            let mut position = feed::allocate(n as i64);
            // SAFETY: reads the clock.
            let now = unsafe { pg_sys::GetCurrentTimestamp() };
            let mut new = Insert::with_capacity(n);
            for (i, e) in entries.iter().enumerate().filter(|(i, _)| !replay[*i]) {
                let head = &heads[i];
                // Times never go backwards within a stream: "state at an instant" follows versions.
                let at = head.last_at.map_or(now, |last| last.max(now));
                let mut prev = head.hash.clone().unwrap_or_else(|| GENESIS.to_vec());
                let mut version = head.version;
                for ev in &e.events {
                    version += 1;
                    let id = ev.id.unwrap_or_else(|| {
                        let id = event_store_core::ids::next_v7();
                        new.claims.push(uuid(id));
                        id
                    });
                    let id_text = uuid(id).to_string();
                    let hash = event_hash(
                        &prev,
                        &Content {
                            event_id: &id_text,
                            stream_id: &e.stream_id,
                            stream_version: version,
                            global_position: position,
                            event_type: &ev.event_type,
                            event_version: ev.version,
                            created_at_unix_us: at + PG_EPOCH_US,
                            event_data: &ev.data_text,
                            metadata: &ev.meta_text,
                        },
                    );
                    prev = hash.to_vec();
                    new.push(&e.stream_id, ev, id, version, position, at, prev.clone());
                    rows.push(Appended {
                        entry: i,
                        id,
                        version,
                        position,
                        at,
                    });
                    position += 1;
                }
                written.push((i, head.version, version, at, position - 1, prev));
            }
            new.execute(client);
            for (i, _, version, at, last, hash) in &written {
                registry::advance(&heads[*i], *version, *at, *last, hash);
            }
        }
        rows.sort_by_key(|r| r.entry);
        // (entry, version before, version after, last position)
        let done: Vec<(usize, i64, i64, i64)> =
            written.iter().map(|w| (w.0, w.1, w.2, w.4)).collect();
        Ok((done, rows))
    })?;
    for &(i, from, to, _) in &written {
        fold::snapshot_after_append(&entries[i].stream_id, from, to);
    }
    if let Some(last) = written.iter().map(|w| w.3).max() {
        crate::notify::appended(last);
        projection_worker::_es_wake_projections(false);
    }
    Ok((entries.into_iter().map(|e| e.stream_id).collect(), rows))
}

/// Seals event `n` of `entry` (crate::personal): its data is rewritten, and the text it is
/// hashed by with it.
fn seal(
    client: &mut SpiClient<'_>,
    personal: &event_store_core::catalog::Personal,
    entry: &mut Entry,
    n: usize,
    at: &str,
) -> Result<(), Refused> {
    let ev = &mut entry.events[n];
    // SAFETY: both are non-null jsonb datums, checked when the event was read. The metadata
    // is decoded only where it names the subject.
    let (mut data, metadata) = unsafe {
        let metadata = match personal.subject {
            event_store_core::catalog::Subject::Metadata(_) => jsonb::to_value(ev.metadata),
            _ => serde_json::Value::Null,
        };
        (jsonb::to_value(ev.data), metadata)
    };
    crate::personal::seal(client, personal, &entry.stream_id, &mut data, &metadata, at)?;
    ev.data = jsonb::datum(&data);
    ev.data_text = out(ev.data);
    Ok(())
}

/// The columns of the events to insert, one statement for all of them.
struct Insert {
    positions: Vec<i64>,
    ids: Vec<pgrx::Uuid>,
    streams: Vec<String>,
    versions: Vec<i64>,
    types: Vec<String>,
    data: Vec<pg_sys::Datum>,
    metadata: Vec<pg_sys::Datum>,
    event_versions: Vec<i32>,
    at: Vec<i64>,
    hashes: Vec<Vec<u8>>,
    /// The ids the store generated (caller-chosen ones were claimed by `retries`).
    claims: Vec<pgrx::Uuid>,
}

impl Insert {
    fn with_capacity(n: usize) -> Insert {
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
            claims: Vec::with_capacity(n),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        stream: &str,
        ev: &Event,
        id: [u8; 16],
        version: i64,
        position: i64,
        at: i64,
        hash: Vec<u8>,
    ) {
        self.positions.push(position);
        self.ids.push(uuid(id));
        self.streams.push(stream.to_string());
        self.versions.push(version);
        self.types.push(ev.event_type.clone());
        self.data.push(ev.data);
        self.metadata.push(ev.metadata);
        self.event_versions.push(ev.version);
        self.at.push(at);
        self.hashes.push(hash);
    }

    fn execute(self, client: &mut SpiClient<'_>) {
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
            let plan = plans::kept(
                client,
                INSERT_ONE_SQL,
                &[
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
                ],
                true,
            );
            let args = [
                arg(self.positions[0]),
                arg(self.ids[0]),
                arg(self.streams[0].as_str()),
                arg(self.versions[0]),
                arg(self.types[0].as_str()),
                jsonb(self.data[0]),
                jsonb(self.metadata[0]),
                arg(self.event_versions[0]),
                timestamptz(self.at[0]),
                arg(self.hashes[0].as_slice()),
                arg(self.claims),
            ];
            client.update(&*plan, None, &args).map(drop)
        } else {
            let plan = plans::kept(
                client,
                INSERT_MANY_SQL,
                &[
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
                ],
                true,
            );
            let at: Vec<TimestampWithTimeZone> = self
                .at
                .iter()
                .map(|t| TimestampWithTimeZone::try_from(*t).expect("a stored time"))
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
                arg(self.hashes),
                arg(self.claims),
            ];
            client.update(&*plan, None, &args).map(drop)
        };
        result.or_raise("inserting events");
    }
}

// ---- the SQL functions

/// Runs the engine and returns its rows as the function's result set; an ES error is
/// raised only after everything the engine held is dropped.
///
/// # Safety
/// `fcinfo` is the call's, from a set-returning function declared with the columns `row` fills.
unsafe fn respond(
    fcinfo: pg_sys::FunctionCallInfo,
    entries: Vec<Entry>,
    row: fn(&str, &Appended) -> Vec<Option<pg_sys::Datum>>,
) -> pg_sys::Datum {
    match append(entries) {
        Ok((streams, rows)) => {
            // SAFETY: a set-returning call in a context that accepts a materialized result.
            unsafe {
                pg_sys::InitMaterializedSRF(fcinfo, 0);
                let rsinfo = (*fcinfo).resultinfo.cast::<pg_sys::ReturnSetInfo>();
                for r in &rows {
                    let cols = row(&streams[r.entry], r);
                    let mut values: Vec<pg_sys::Datum> = cols
                        .iter()
                        .map(|c| c.unwrap_or(pg_sys::Datum::from(0)))
                        .collect();
                    let mut nulls: Vec<bool> = cols.iter().map(|c| c.is_none()).collect();
                    pg_sys::tuplestore_putvalues(
                        (*rsinfo).setResult,
                        (*rsinfo).setDesc,
                        values.as_mut_ptr(),
                        nulls.as_mut_ptr(),
                    );
                }
            }
            pg_sys::Datum::from(0)
        }
        Err(r) => r.raise(),
    }
}

fn event_columns(_: &str, r: &Appended) -> Vec<Option<pg_sys::Datum>> {
    vec![
        uuid(r.id).into_datum(),
        r.version.into_datum(),
        r.position.into_datum(),
        Some(pg_sys::Datum::from(r.at)),
    ]
}

fn multi_columns(stream: &str, r: &Appended) -> Vec<Option<pg_sys::Datum>> {
    let mut cols = vec![stream.into_datum()];
    cols.extend(event_columns(stream, r));
    cols
}

/// Argument `n` as text, `None` for NULL.
///
/// # Safety
/// Argument `n` is declared text.
unsafe fn text_arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Option<String> {
    // SAFETY: as the caller promises.
    unsafe {
        (!pg_arg_is_null(fcinfo, n))
            .then(|| String::from_datum(pg_getarg_datum_raw(fcinfo, n), false).expect("text"))
    }
}

/// Argument `n` as a raw datum, `None` for NULL.
///
/// # Safety
/// `n` is within the call's arguments.
unsafe fn datum_arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Option<pg_sys::Datum> {
    // SAFETY: as the caller promises.
    unsafe { (!pg_arg_is_null(fcinfo, n)).then(|| pg_getarg_datum_raw(fcinfo, n)) }
}

v1_function!(pg_finfo_es_append);
/// `es_append(stream_id, event_type, event_data, metadata, expected_version, id, event_version)`.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn es_append(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the argument types are those sql/append.sql declares.
    let entry = unsafe {
        let stream_id = text_arg(fcinfo, 0);
        let expected = datum_arg(fcinfo, 4).map(|d| d.value() as i64);
        rules::check_append(stream_id.as_deref(), expected, "array", 1)
            .unwrap_or_else(|e| raise(e));
        let stamp = Stamp::new();
        let given = Given {
            // SAFETY: a uuid datum points to its 16 bytes.
            id: datum_arg(fcinfo, 5).map(|u| *u.cast_mut_ptr::<[u8; 16]>()),
            event_type: text_arg(fcinfo, 1),
            data: datum_arg(fcinfo, 2).map(detoast),
            absent_data: "null",
            metadata: datum_arg(fcinfo, 3).map(detoast),
            version: datum_arg(fcinfo, 6).map(|v| v.value() as i32),
        };
        Entry {
            stream_id: stream_id.expect("checked"),
            expected,
            events: vec![event(given, &stamp, None, limits()).unwrap_or_else(|e| raise(e))],
        }
    };
    // SAFETY: es_append returns TABLE (event_id, stream_version, global_position, created_at).
    unsafe { respond(fcinfo, vec![entry], event_columns) }
}

v1_function!(pg_finfo_es_append_batch);
/// `es_append_batch(stream_id, events, expected_version)`.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn es_append_batch(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the argument types are those sql/append.sql declares.
    let entry = unsafe {
        let stream_id = text_arg(fcinfo, 0);
        let events = datum_arg(fcinfo, 1).map(detoast);
        let expected = datum_arg(fcinfo, 2).map(|d| d.value() as i64);
        check_batch(stream_id.as_deref(), expected, events).unwrap_or_else(|e| raise(e));
        let stamp = Stamp::new();
        Entry {
            stream_id: stream_id.expect("checked"),
            expected,
            events: batch_events(events.expect("checked"), &stamp).unwrap_or_else(|e| raise(e)),
        }
    };
    // SAFETY: as for es_append.
    unsafe { respond(fcinfo, vec![entry], event_columns) }
}

/// One element of es_append_multi's array.
fn multi_entry(a: pg_sys::Datum, stamp: &Stamp) -> Result<Entry, Invalid> {
    let k = kind(a);
    if k != "object" {
        return Err(Invalid::Value(format!("must be a JSON object, not {k}")));
    }
    let stream_id = field(a, "stream_id")
        .filter(|s| kind(*s) == "string")
        .and_then(|_| field_text(a, "stream_id"))
        // SAFETY: ->> returns text.
        .map(|t| unsafe { String::from_datum(t, false) }.expect("text"));
    let expected = match field(a, "expected_version").filter(|v| kind(*v) != "null") {
        None => None,
        Some(v) => {
            let text = out(v);
            Some(text.parse::<i64>().map_err(|_| {
                Invalid::Value(format!(
                    "expected_version must be an integer or null, not {text}"
                ))
            })?)
        }
    };
    let events = field(a, "events");
    check_batch(stream_id.as_deref(), expected, events)?;
    Ok(Entry {
        stream_id: stream_id.expect("checked"),
        expected,
        events: batch_events(events.expect("checked"), stamp)?,
    })
}

v1_function!(pg_finfo_es_append_multi);
/// `es_append_multi(appends)`: a JSON array of `{"stream_id", "expected_version"?, "events"}`.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn es_append_multi(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the argument type is the one sql/append.sql declares.
    let appends = unsafe { datum_arg(fcinfo, 0) }.map(detoast);
    let Some(appends) = appends else {
        raise(Invalid::Null("appends must not be NULL".into()));
    };
    let k = kind(appends);
    let n = if k == "array" { array_len(appends) } else { 0 };
    rules::check_multi(&k, n).unwrap_or_else(|e| raise(e));
    let stamp = Stamp::new();
    let entries: Vec<Entry> = (0..n)
        .map(|i| {
            multi_entry(element(appends, i), &stamp)
                .unwrap_or_else(|e| raise(rules::in_entry(i + 1, e)))
        })
        .collect();
    // SAFETY: es_append_multi returns TABLE (stream_id, event_id, stream_version, global_position, created_at).
    unsafe { respond(fcinfo, entries, multi_columns) }
}
