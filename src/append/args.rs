//! Reading an append's arguments: the events as jsonb datums (validated before any lock is
//! taken), the metadata every event gets, and the fmgr's argument slots.
use super::{Entry, Event};
use crate::pg::jsonb;
use crate::pg::jsonb::functions::{
    array_len, concat, element, field, field_text, kind, out, parse,
};
use crate::pg::settings;
use event_store_core::validate::{self as rules, Invalid};
use pgrx::fcinfo::{pg_arg_is_null, pg_getarg_datum_raw};
use pgrx::prelude::*;
use std::ffi::CStr;

pub(super) fn raise(invalid: Invalid) -> ! {
    crate::pg::errors::raise_invalid(invalid)
}

// ---- reading the arguments

/// What an append adds to every event's metadata: the correlation and causation ids set for
/// the session, and the acting role (always last, so no caller can forge it).
pub(super) struct Stamp {
    context: Option<pg_sys::Datum>,
    appended_by: pg_sys::Datum,
}

/// The stamp last made in this backend: what it was made of, and the bytes of its jsonb
/// values (made again only when those change: JSON built and parsed by jsonb_in per call cost
/// more than reading the event).
struct Made {
    role: String,
    ids: [Option<String>; 2],
    context: Option<Vec<u8>>,
    appended_by: Vec<u8>,
}

thread_local! {
    static MADE: std::cell::RefCell<Option<Made>> = const { std::cell::RefCell::new(None) };
}

/// The bytes of a varlena datum, to keep past the call's memory.
fn bytes(d: pg_sys::Datum) -> Vec<u8> {
    // SAFETY: a varlena made by jsonb_in, whose header gives its size.
    unsafe {
        let p = d.cast_mut_ptr::<pg_sys::varlena>();
        std::slice::from_raw_parts(p.cast::<u8>(), pgrx::varlena::varsize_any(p)).to_vec()
    }
}

/// Those bytes as a datum again, palloc'd in the current context.
fn copied(b: &[u8]) -> pg_sys::Datum {
    // SAFETY: a copy of a whole varlena, in memory of the current context.
    unsafe {
        let p = pg_sys::palloc(b.len()).cast::<u8>();
        std::ptr::copy_nonoverlapping(b.as_ptr(), p, b.len());
        pg_sys::Datum::from(p)
    }
}

impl Stamp {
    pub(super) fn new() -> Stamp {
        let setting = |name: &CStr| {
            // SAFETY: a lookup of a custom setting that may be undefined (then NULL).
            let v = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
            // SAFETY: a non-null result is a C string owned by the GUC machinery.
            (!v.is_null())
                .then(|| unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
        };
        let role = crate::pg::caller::_es_calling_role();
        let ids = [
            setting(c"event_store.correlation_id"),
            setting(c"event_store.causation_id"),
        ];
        MADE.with(|made| {
            let mut made = made.borrow_mut();
            let current = made
                .as_ref()
                .is_some_and(|m| m.role == role && m.ids == ids);
            let made = match &mut *made {
                Some(m) if current => m,
                slot => {
                    let mut context = serde_json::Map::new();
                    for (key, id) in ["correlationId", "causationId"].iter().zip(&ids) {
                        if let Some(v) = id {
                            context.insert((*key).into(), v.clone().into());
                        }
                    }
                    let by = serde_json::json!({ "appendedBy": role });
                    slot.insert(Made {
                        context: (!context.is_empty())
                            .then(|| bytes(jsonb::datum(&context.into()))),
                        appended_by: bytes(jsonb::datum(&by)),
                        role,
                        ids,
                    })
                }
            };
            Stamp {
                context: made.context.as_deref().map(copied),
                appended_by: copied(&made.appended_by),
            }
        })
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
pub(super) struct Given {
    pub(super) id: Option<[u8; 16]>,
    pub(super) event_type: Option<String>,
    pub(super) data: Option<pg_sys::Datum>,
    /// `"null"` for SQL NULL data of a single append, `"missing"` for a batch's absent key.
    pub(super) absent_data: &'static str,
    pub(super) metadata: Option<pg_sys::Datum>,
    /// NULL (or absent) means 1.
    pub(super) version: Option<i32>,
    /// NULL (or absent) means none.
    pub(super) tags: Option<Vec<String>>,
}

pub(super) fn event(
    given: Given,
    stamp: &Stamp,
    ordinal: Option<i32>,
    limits: (i64, usize),
) -> Result<Event, Invalid> {
    let (id, version) = (given.id, given.version.unwrap_or(1));
    let data_kind = given.data.map_or(given.absent_data.to_string(), kind);
    let meta_kind = given.metadata.map_or("null".to_string(), kind);
    let data = given.data.filter(|_| data_kind == "object");
    let data_text = data.map(out).unwrap_or_default();
    let metadata = given
        .metadata
        .filter(|_| meta_kind == "object")
        .map(|m| stamp.apply(m));
    let meta_text = metadata.map(out).unwrap_or_default();
    let size = (data_text.len() + meta_text.len()) as i64;
    let (event_type, data, metadata) = rules::check_event(
        given.event_type.as_deref(),
        (data, &data_kind),
        (metadata, &meta_kind),
        Some(version),
        size,
        limits.0,
        ordinal,
    )?;
    for (j, what) in [(data, "event_data"), (metadata, "metadata")] {
        // SAFETY: a non-null jsonb datum.
        let depth = unsafe { jsonb::with_jsonb(j, |j| jsonb::depth(j, limits.1)) };
        rules::check_depth(what, depth, limits.1, ordinal)?;
    }
    let tags = given.tags.unwrap_or_default();
    event_store_core::dcb::check_tags(&tags).map_err(|e| rules::in_event(ordinal, e))?;
    Ok(Event {
        id,
        tags,
        rank: 0,
        event_type: event_type.to_string(),
        data,
        data_text,
        metadata,
        meta_text,
        version,
    })
}

pub(super) fn limits() -> (i64, usize) {
    (
        i64::from(settings::MAX_EVENT_BYTES.get()),
        settings::MAX_EVENT_DEPTH.get().max(1) as usize,
    )
}

/// The events of a JSON array as es_append_batch takes them (`ordinal` numbers them in
/// messages, from 1).
pub(super) fn batch_events(events: pg_sys::Datum, stamp: &Stamp) -> Result<Vec<Event>, Invalid> {
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
            let event_type = string_field(ev, "type");
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
                tags: field(ev, "tags")
                    // SAFETY: a jsonb datum.
                    .map(|t| unsafe { jsonb::to_value(t) })
                    .map(|t| event_store_core::dcb::tags(Some(&t)))
                    .transpose()
                    .map_err(|e| rules::in_event(Some(i + 1), e))?,
            };
            event(given, stamp, Some(i + 1), limits)
        })
        .collect()
}

/// A jsonb argument's `jsonb_typeof` (`"null"` for SQL NULL) and, for an array, its length.
pub(super) fn shape(j: Option<pg_sys::Datum>) -> (String, i32) {
    match j {
        None => ("null".to_string(), 0),
        Some(j) => {
            let k = kind(j);
            let n = if k == "array" { array_len(j) } else { 0 };
            (k, n)
        }
    }
}

/// Checks a stream id and an array of events; returns both.
pub(super) fn check_batch(
    stream_id: Option<&str>,
    expected: Option<i64>,
    events: Option<pg_sys::Datum>,
) -> Result<(String, pg_sys::Datum), Invalid> {
    let (k, n) = shape(events);
    let (stream_id, events) = rules::check_append(stream_id, expected, (events, &k, n))?;
    Ok((stream_id.to_string(), events))
}

/// A text[] argument's elements (SQLSTATE 22004 for a NULL element).
pub(super) fn text_array(a: pg_sys::Datum) -> Result<Vec<String>, Invalid> {
    // SAFETY: a text[] datum, detoasted by pgrx.
    let array = unsafe { Array::<String>::from_datum(a, false) }.expect("an array");
    array
        .iter()
        .map(|t| t.ok_or_else(|| Invalid::Null("tags must not hold NULL".into())))
        .collect()
}

/// Argument `n` as text, `None` for NULL.
///
/// # Safety
/// Argument `n` is declared text.
pub(super) unsafe fn text_arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Option<String> {
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
pub(crate) unsafe fn datum_arg(
    fcinfo: pg_sys::FunctionCallInfo,
    n: usize,
) -> Option<pg_sys::Datum> {
    // SAFETY: as the caller promises.
    unsafe { (!pg_arg_is_null(fcinfo, n)).then(|| pg_getarg_datum_raw(fcinfo, n)) }
}

/// A JSON object's string field as text; `None` when absent or of another kind.
fn string_field(j: pg_sys::Datum, key: &str) -> Option<String> {
    field(j, key)
        .filter(|v| kind(*v) == "string")
        .and_then(|_| field_text(j, key))
        // SAFETY: ->> returns text.
        .map(|t| unsafe { String::from_datum(t, false) }.expect("text"))
}

/// The `stream_id` of an element of es_dcb_append's array (`i` from 0), if it names one.
pub(super) fn stream_field(ev: pg_sys::Datum, i: usize) -> Result<Option<String>, Invalid> {
    let ordinal = Some(i as i32 + 1);
    match field(ev, "stream_id").map(kind).as_deref() {
        None | Some("null") => Ok(None),
        Some("string") => {
            let s = string_field(ev, "stream_id").expect("a string");
            rules::check_name("stream_id", Some(&s), ordinal)?;
            Ok(Some(s))
        }
        Some(k) => Err(Invalid::Value(format!(
            "event {}: stream_id must be a string, not {k}",
            i + 1
        ))),
    }
}

/// One element of es_append_multi's array.
pub(super) fn multi_entry(a: pg_sys::Datum, stamp: &Stamp) -> Result<Entry, Invalid> {
    let k = kind(a);
    if k != "object" {
        return Err(Invalid::Value(format!("must be a JSON object, not {k}")));
    }
    let stream_id = string_field(a, "stream_id");
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
    let (stream_id, events) = check_batch(stream_id.as_deref(), expected, events)?;
    Ok(Entry {
        stream_id,
        expected,
        events: batch_events(events, stamp)?,
        made: false,
    })
}
