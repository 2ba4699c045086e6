//! Personal data (event_store_core::privacy::sealing): sealed at append with the key of the event's
//! subject, revealed on every read for members of `event_store_personal_data`, erased by
//! destroying the key (`es_forget_subject`, sql/privacy/sealing.sql). Keys live in es_subject_keys,
//! which only its owner reads and writes: reads take them as that owner, once per transaction.
use crate::pg::errors::Refused;
use crate::pg::schema::{self, nullable, OrRaise};
use event_store_core::catalog::Personal;
use event_store_core::privacy::sealing::{self as rules, Access, KeyBytes, KeyId};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::pg_sys::BuiltinOid as Oid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;

/// Members of this role see personal data; everyone else sees it withheld.
const PRIVILEGED: &std::ffi::CStr = c"event_store_personal_data";

/// What this transaction has read of es_subject_keys.
#[derive(Default)]
struct Cache {
    transaction: u32,
    /// Whether any key exists (reads reveal nothing in a store that never sealed a value).
    active: Option<bool>,
    /// Keys by id; None once destroyed.
    keys: HashMap<KeyId, Option<KeyBytes>>,
    /// The subject (hashed) of each key read; a key's subject never changes.
    owners: HashMap<KeyId, [u8; 32]>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

fn cached<R>(f: impl FnOnce(&mut Cache) -> R) -> R {
    // SAFETY: MyProc is this backend's PGPROC, set for the life of the backend.
    let transaction = unsafe { (*pg_sys::MyProc).lxid };
    CACHE.with_borrow_mut(|c| {
        if c.transaction != transaction {
            *c = Cache {
                transaction,
                ..Cache::default()
            };
        }
        f(c)
    })
}

/// `event_store.master_key` as bytes: None when unset; 22023 when it is not 64 hex digits
/// and `strict` (an append about to wrap a key), None otherwise (a read: the key does not
/// unwrap, and its values read as erased rather than as an error).
fn master_key(strict: bool) -> Option<KeyBytes> {
    let hex = crate::pg::settings::MASTER_KEY.get()?;
    let hex = hex.to_str().unwrap_or_default();
    let bytes: Option<Vec<u8>> = (hex.len() == 64)
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect()
        })
        .flatten();
    match bytes.and_then(|b| KeyBytes::try_from(b).ok()) {
        Some(k) => Some(k),
        None if !strict => None,
        None => {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "event_store: event_store.master_key must be 64 hexadecimal digits"
            );
        }
    }
}

fn keys_table() -> Option<pg_sys::Oid> {
    schema::try_relation(c"es_subject_keys")
}

/// Whether the store has sealed anything (0.1.0's SQL has no key table: nothing).
fn active() -> bool {
    if let Some(a) = cached(|c| c.active) {
        return a;
    }
    let a = keys_table().is_some_and(|rel| {
        schema::as_owner_of(rel, || {
            schema::select_one::<bool>(schema::qualified(
                "SELECT EXISTS (SELECT FROM _event_store.es_subject_keys)",
            ))
            .unwrap_or(false)
        })
    });
    cached(|c| c.active = Some(a));
    a
}

/// Whether `role` may see personal data.
fn privileged_role(role: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup of a role by name, and a membership check.
    unsafe {
        let privileged = pg_sys::get_role_oid(PRIVILEGED.as_ptr(), true);
        privileged != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, privileged)
    }
}

/// Whether the current user may see personal data.
fn privileged() -> bool {
    // SAFETY: reads the backend's current user; cannot fail.
    privileged_role(unsafe { pg_sys::GetUserId() })
}

/// Whether the role an append acts for (not the owner its SECURITY DEFINER runs as) may see
/// personal data: the retry check compares plaintext only for such a caller.
pub fn caller_privileged() -> bool {
    privileged_role(crate::pg::caller::calling_role())
}

// Run as the owner, possibly under a reader's search_path: every operator is pg_catalog's.
const KEY_SQL: &str = "SELECT wrapped, subject_hash FROM _event_store.es_subject_keys \
     WHERE key_id OPERATOR(pg_catalog.=) $1";

/// A key's row: (wrapped, subject_hash).
type KeyRow = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Reads key `id` (its bytes, None once destroyed) and its subject into the cache.
fn load_key(id: &KeyId) {
    let row: Option<KeyRow> = keys_table().and_then(|rel| {
        schema::as_owner_of(rel, || {
            Spi::connect(|client| {
                client
                    .select(
                        schema::qualified(KEY_SQL),
                        Some(1),
                        &[pgrx::Uuid::from_bytes(*id).into()],
                    )
                    .or_raise("reading es_subject_keys")
                    .next()
                    .map(|r| {
                        (
                            nullable::<Vec<u8>>(&r, 1, "es_subject_keys.wrapped"),
                            nullable::<Vec<u8>>(&r, 2, "es_subject_keys.subject_hash"),
                        )
                    })
            })
        })
    });
    let (wrapped, owner) = row.unwrap_or_default();
    let key = wrapped.and_then(|w| rules::unwrap_key(id, &w, master_key(false).as_ref()));
    let owner: Option<[u8; 32]> = owner.and_then(|o| o.try_into().ok());
    cached(|c| {
        c.keys.insert(*id, key);
        if let Some(o) = owner {
            c.owners.insert(*id, o);
        }
    });
}

fn key(id: &KeyId) -> Option<KeyBytes> {
    if let Some(k) = cached(|c| c.keys.get(id).copied()) {
        return k;
    }
    load_key(id);
    cached(|c| c.keys.get(id).copied().flatten())
}

/// The subject (hashed) key `id` belongs to; None for an unknown key.
fn owner(id: &KeyId) -> Option<[u8; 32]> {
    if cached(|c| !c.keys.contains_key(id)) {
        load_key(id);
    }
    cached(|c| c.owners.get(id).copied())
}

/// Reveals every sealed value of `doc` for the current user: plaintext for a member of
/// event_store_personal_data, the erased marker where the key is gone, withheld otherwise.
/// Returns whether `doc` changed.
pub fn reveal(doc: &mut Value) -> bool {
    if !active() {
        return false;
    }
    if privileged() {
        rules::reveal(doc, &mut Access::Keys(&mut |id: &KeyId| key(id)))
    } else {
        rules::reveal(doc, &mut Access::Withheld)
    }
}

/// Reveals `doc` for one subject's export: values sealed under that subject's own keys open
/// (or read as erased once destroyed), every other sealed value shows as withheld, whatever
/// the reader may otherwise see. A reader without the privilege sees everything withheld.
pub fn reveal_for_subject(doc: &mut Value, subject: &str) -> bool {
    if !active() {
        return false;
    }
    if !privileged() {
        return rules::reveal(doc, &mut Access::Withheld);
    }
    let hash = rules::subject_hash(subject);
    rules::reveal(
        doc,
        &mut Access::Only(&mut |id: &KeyId| (owner(id) == Some(hash)).then(|| key(id))),
    )
}

/// Opens every sealed value of `doc` with its key, whoever the user is (callers run as the
/// owner). Returns false when a key was destroyed: `doc` then is not the event as written.
pub fn open_all(doc: &mut Value) -> bool {
    if !active() {
        return true;
    }
    let mut complete = true;
    rules::reveal(
        doc,
        &mut Access::Keys(&mut |id: &KeyId| {
            let k = key(id);
            complete &= k.is_some();
            k
        }),
    );
    complete
}

/// `reveal` of a jsonb datum's document; the datum itself when nothing is sealed.
pub fn reveal_jsonb(doc: pgrx::JsonB) -> pgrx::JsonB {
    let mut v = doc.0;
    reveal(&mut v);
    pgrx::JsonB(v)
}

/// Whether a jsonb document holds a sealed value, looked for in place.
///
/// # Safety
/// `data` is a non-null jsonb datum.
unsafe fn holds_sealed(data: pg_sys::Datum) -> bool {
    // SAFETY: as the caller promises.
    unsafe {
        crate::pg::jsonb::with_jsonb(data, |j| crate::pg::jsonb::holds_member(j, rules::SEALED))
    }
}

/// An event's data (a jsonb datum) revealed for the current user, allocated in the current
/// memory context; the datum itself when nothing is sealed.
///
/// # Safety
/// `data` is a non-null jsonb datum.
pub unsafe fn reveal_data(data: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: as the caller promises.
    if !unsafe { holds_sealed(data) } || !active() {
        return data;
    }
    // SAFETY: as the caller promises.
    let mut doc = unsafe { crate::pg::jsonb::to_value(data) };
    match reveal(&mut doc) {
        true => crate::pg::jsonb::datum(&doc),
        false => data,
    }
}

/// An event_store row with its data revealed; the row itself when nothing is sealed.
///
/// # Safety
/// `row` is a non-null datum of event_store's row type.
pub unsafe fn reveal_row(row: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: as the caller promises.
    unsafe { reveal_row_with(row, reveal) }
}

/// `reveal_row` with another way to reveal the data.
///
/// # Safety
/// As for `reveal_row`.
unsafe fn reveal_row_with(
    row: pg_sys::Datum,
    reveal: impl FnOnce(&mut Value) -> bool,
) -> pg_sys::Datum {
    // Most events hold nothing sealed: looked for in place, without decoding the row, and
    // before asking whether the store has keys (a query, once per transaction).
    // SAFETY: the caller passes a composite datum of event_store, whose event_data is jsonb;
    // the header is detoasted (a copy when needed) and the attribute read in place.
    let sealed = unsafe {
        let header = pg_sys::pg_detoast_datum(row.cast_mut_ptr()) as pg_sys::HeapTupleHeader;
        let mut isnull = false;
        let data = pg_sys::GetAttributeByName(header, c"event_data".as_ptr(), &mut isnull);
        !isnull && holds_sealed(data)
    };
    if !sealed || !active() {
        return row;
    }
    // SAFETY: the caller passes a composite datum.
    let mut tuple = unsafe { PgHeapTuple::from_composite_datum(row) };
    let Ok(Some(pgrx::JsonB(mut data))) = tuple.get_by_name::<pgrx::JsonB>("event_data") else {
        return row;
    };
    if !reveal(&mut data) {
        return row;
    }
    if let Err(e) = tuple.set_by_name("event_data", pgrx::JsonB(data)) {
        error!("event_store: revealing personal data: {e}");
    }
    tuple.into_composite_datum().expect("a tuple has a datum")
}

v1_function!(pg_finfo__es_reveal);
/// `_es_reveal(event_store) RETURNS event_store` (STRICT): the reads' last step.
///
/// # Safety
/// Called only by the fmgr, with one non-null event_store row.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _es_reveal(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the function is STRICT over event_store rows.
    unsafe { reveal_row(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 0)) }
}

/// A document revealed for the current user. No longer called (the appends' retry check
/// compares in Rust, `append::same_data`); kept because 0.2.0's SQL declares it, so that
/// library must still hold it until an update script drops it.
#[pg_extern(stable, strict, parallel_safe, schema = "_event_store")]
fn _es_reveal_data(doc: pgrx::JsonB) -> pgrx::JsonB {
    reveal_jsonb(doc)
}

v1_function!(pg_finfo__es_reveal_for_subject);
/// `_es_reveal_for_subject(event_store, text) RETURNS event_store` (STRICT): an event as the
/// subject's export shows it (`reveal_for_subject`).
///
/// # Safety
/// Called only by the fmgr, with a non-null event_store row and a non-null text.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _es_reveal_for_subject(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the function is STRICT over (event_store, text).
    unsafe {
        let subject = String::from_datum(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 1), false)
            .expect("a text argument");
        reveal_row_with(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 0), |d| {
            reveal_for_subject(d, &subject)
        })
    }
}

/// The hash that stands for a subject in es_subject_keys and in the store's own records.
#[pg_extern(immutable, strict, parallel_safe, schema = "_event_store")]
fn _es_subject_hash(subject: &str) -> Vec<u8> {
    rules::subject_hash(subject).to_vec()
}

const LIVE_KEY_SQL: &str = "SELECT key_id, wrapped FROM _event_store.es_subject_keys \
     WHERE subject_hash OPERATOR(pg_catalog.=) $1 AND wrapped IS NOT NULL";
const NEW_KEY_SQL: &str = "INSERT INTO _event_store.es_subject_keys (key_id, subject_hash, wrapped) \
     VALUES ($1, $2, $3) ON CONFLICT (subject_hash) WHERE wrapped IS NOT NULL DO NOTHING RETURNING key_id";

/// The subject's live key, made on first use. The appends run as the table's owner.
fn subject_key(client: &mut SpiClient<'_>, subject: &str) -> (KeyId, KeyBytes) {
    let hash = rules::subject_hash(subject).to_vec();
    let master = master_key(true);
    let live = |client: &SpiClient<'_>| -> Option<(KeyId, Vec<u8>)> {
        let plan = crate::pg::plans::kept(client, LIVE_KEY_SQL, &[Oid::BYTEAOID], false);
        let row = client
            .select(&*plan, Some(1), &[hash.clone().into()])
            .or_raise("reading es_subject_keys")
            .next()?;
        let id: pgrx::Uuid = nullable(&row, 1, "es_subject_keys.key_id")?;
        Some((
            *id.as_bytes(),
            nullable(&row, 2, "es_subject_keys.wrapped")?,
        ))
    };
    for _ in 0..2 {
        if let Some((id, wrapped)) = live(client) {
            let key = rules::unwrap_key(&id, &wrapped, master.as_ref()).unwrap_or_else(|| {
                ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    "event_store: a subject's key is wrapped under another master key than event_store.master_key"
                );
            });
            return (id, key);
        }
        let (id, key) = (rules::new_key_id(), rules::new_key());
        let made = client
            .update(
                schema::qualified(NEW_KEY_SQL),
                Some(1),
                &[
                    pgrx::Uuid::from_bytes(id).into(),
                    hash.clone().into(),
                    rules::wrap(&id, &key, master.as_ref()).into(),
                ],
            )
            .or_raise("making a subject's key")
            .len();
        if made == 1 {
            cached(|c| {
                c.active = Some(true);
                c.keys.insert(id, Some(key));
            });
            return (id, key);
        }
        // Another append made it first: read that one.
    }
    error!("event_store: a subject's key could not be made");
}

/// Seals an event's personal data with its subject's key, before it is hashed and stored.
/// `data` and `metadata` are the event's documents; `at` names the event in messages.
pub fn seal(
    client: &mut SpiClient<'_>,
    personal: &Personal,
    stream_id: &str,
    data: &mut Value,
    metadata: &Value,
    at: &str,
) -> Result<(), Refused> {
    let Some(subject) = personal.subject.of(stream_id, data, metadata) else {
        return Err(Refused {
            code: b"ES004",
            message: format!(
                "event_store: {at}the event holds personal data but not its subject ({})",
                personal.subject_text
            ),
            detail: "Personal data is sealed with its subject's key: the subject must be a non-empty string or a number.".into(),
            hint: String::new(),
        });
    };
    let (id, key) = subject_key(client, &subject);
    rules::seal(data, &personal.paths, &id, &key).map_err(|path| Refused {
        code: b"ES004",
        message: format!(
            "event_store: {at}the value at \"{path}\" is sealed already, but not with its subject's key"
        ),
        detail: "The store seals personal data itself: give the value in plaintext. Only a copy of a value sealed for the same subject, while its key lives, is kept as it is.".into(),
        hint: String::new(),
    })?;
    Ok(())
}
