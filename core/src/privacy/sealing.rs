//! Personal data sealed per subject, for erasure by crypto-shredding (GDPR Art. 17).
//!
//! At append, each value at one of the catalog's personal-data paths becomes
//! `{"$es_sealed": "<base64 of key id, nonce, ciphertext>"}`: the value's JSON text encrypted
//! with ChaCha20-Poly1305 under its subject's key, with a fresh random nonce per value and the
//! key id as associated data. The event is hashed as stored, sealed, so chains verify before
//! and after erasure. Destroying a subject's key erases every value sealed with it, wherever
//! it went: reads reveal sealed values anywhere in a document (a reducer may have copied one
//! into a state or a snapshot), as plaintext, or as [`ERASED`] once the key is gone.
use crate::json::pointer::Pointer;
use crate::json::state::check_stack;
use base64::{engine::general_purpose::STANDARD, Engine};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde_json::{Map, Value};

/// The one member of a sealed value's object.
pub const SEALED: &str = "$es_sealed";
/// What every read shows for a value whose key was destroyed.
pub const ERASED: &str = "[erased]";
/// What a reader without the personal-data privilege sees instead of a value.
pub const WITHHELD: &str = "[personal data]";

pub type KeyId = [u8; 16];
pub type KeyBytes = [u8; 32];

pub fn new_key() -> KeyBytes {
    ChaCha20Poly1305::generate_key(&mut OsRng).into()
}

pub fn new_key_id() -> KeyId {
    rand::random()
}

/// What stands for a subject where the subject itself must not be kept: SHA-256 of its UTF-8.
pub fn subject_hash(subject: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(subject.as_bytes()).into()
}

fn encrypt(key: &KeyBytes, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("ChaCha20-Poly1305 encrypts any message that fits in memory");
    [nonce.as_slice(), &sealed].concat()
}

fn decrypt(key: &KeyBytes, aad: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
    if blob.len() < 12 {
        return None;
    }
    let (nonce, sealed) = blob.split_at(12);
    ChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
        .ok()
}

/// A subject's key wrapped for storage: under the master key when one is set (a backup or a
/// WAL segment then holds no usable key), as is otherwise. The first byte says which.
pub fn wrap(id: &KeyId, key: &KeyBytes, master: Option<&KeyBytes>) -> Vec<u8> {
    match master {
        Some(m) => [&[1u8][..], &encrypt(m, id, key)].concat(),
        None => [&[0u8][..], key].concat(),
    }
}

/// The key `wrap` stored; None when it needs another master key than `master`.
pub fn unwrap_key(id: &KeyId, wrapped: &[u8], master: Option<&KeyBytes>) -> Option<KeyBytes> {
    let bytes = match (wrapped.split_first()?, master) {
        ((0, key), _) => key.to_vec(),
        ((1, blob), Some(m)) => decrypt(m, id, blob)?,
        _ => return None,
    };
    bytes.try_into().ok()
}

fn at_mut<'a>(doc: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(doc, |v, key| match v {
        Value::Object(m) => m.get_mut(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    })
}

/// The text of a sealed value: an object whose only member is `$es_sealed`.
fn sealed_text(v: &Value) -> Option<&str> {
    match v {
        Value::Object(m) if m.len() == 1 => m.get(SEALED)?.as_str(),
        _ => None,
    }
}

/// A JSON Pointer's text (RFC 6901), for messages.
pub fn pointer_text(path: &[String]) -> String {
    path.iter()
        .map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Whether `text` is a seal made with key `id`/`key` (it names that key and decrypts).
fn sealed_with(text: &str, id: &KeyId, key: &KeyBytes) -> bool {
    let Ok(blob) = STANDARD.decode(text) else {
        return false;
    };
    blob.len() >= 16 && blob[..16] == id[..] && decrypt(key, id, &blob[16..]).is_some()
}

/// Seals the values at `paths` that `data` has (null included) with the subject's key.
/// Returns how many it sealed. A value there that is sealed already must be sealed with this
/// very key (a copy of the subject's own sealed value): anything else, a copy of another
/// subject's seal or plaintext dressed up as one, would escape erasure, and is refused with
/// the path it is at (text of a JSON Pointer), before anything is sealed.
pub fn seal(
    data: &mut Value,
    paths: &[Pointer],
    id: &KeyId,
    key: &KeyBytes,
) -> Result<usize, String> {
    for path in paths {
        if let Some(text) = at_mut(data, path).and_then(|v| sealed_text(v)) {
            if !sealed_with(text, id, key) {
                return Err(pointer_text(path));
            }
        }
    }
    let mut sealed = 0;
    for path in paths {
        if let Some(v) = at_mut(data, path) {
            if sealed_text(v).is_none() {
                let blob = [&id[..], &encrypt(key, id, v.to_string().as_bytes())].concat();
                let mut m = Map::new();
                m.insert(SEALED.into(), Value::String(STANDARD.encode(blob)));
                *v = Value::Object(m);
                sealed += 1;
            }
        }
    }
    Ok(sealed)
}

/// What a retry's data is compared by for a caller who may not read personal data: the
/// values at `paths`, and every sealed value anywhere, become [`WITHHELD`], so whether a
/// retry matches never depends on plaintext the caller cannot read.
pub fn blind(doc: &mut Value, paths: &[Pointer]) {
    for path in paths {
        if let Some(v) = at_mut(doc, path) {
            *v = Value::String(WITHHELD.into());
        }
    }
    reveal(doc, &mut Access::Withheld);
}

/// How a read sees sealed values.
pub enum Access<'a> {
    /// The reader lacks the privilege: every sealed value shows as [`WITHHELD`].
    Withheld,
    /// The reader has it: each value decrypted with the key `keys` gives for its id, or
    /// [`ERASED`] when there is none (destroyed) or it does not decrypt.
    Keys(&'a mut dyn FnMut(&KeyId) -> Option<KeyBytes>),
    /// Only some keys open (a subject's export opens only the subject's own): `keys` gives
    /// `Some(key)` for such a key, `Some(None)` for one of them that was destroyed
    /// ([`ERASED`]), `None` for any other key: that value, and one that is no seal at all,
    /// shows as [`WITHHELD`].
    Only(&'a mut dyn FnMut(&KeyId) -> Option<Option<KeyBytes>>),
}

/// Replaces every sealed value in `doc`, at any depth. Returns whether there was one.
pub fn reveal(doc: &mut Value, access: &mut Access) -> bool {
    check_stack();
    if let Some(text) = sealed_text(doc) {
        *doc = match access {
            Access::Withheld => Value::String(WITHHELD.into()),
            Access::Keys(keys) => open(text, *keys).unwrap_or_else(|| ERASED.into()),
            Access::Only(keys) => match key_id(text).map(|id| (keys(&id), id)) {
                Some((Some(Some(key)), id)) => {
                    open(text, &mut |k: &KeyId| (*k == id).then_some(key))
                        .unwrap_or_else(|| ERASED.into())
                }
                Some((Some(None), _)) => ERASED.into(),
                _ => WITHHELD.into(),
            },
        };
        return true;
    }
    let mut found = false;
    match doc {
        Value::Object(m) => m.values_mut().for_each(|v| found |= reveal(v, access)),
        Value::Array(a) => a.iter_mut().for_each(|v| found |= reveal(v, access)),
        _ => {}
    }
    found
}

/// The id of the key a seal names; None when it names none.
fn key_id(text: &str) -> Option<KeyId> {
    let blob = STANDARD.decode(text).ok()?;
    blob.get(..16)?.try_into().ok()
}

fn open(text: &str, keys: &mut dyn FnMut(&KeyId) -> Option<KeyBytes>) -> Option<Value> {
    let blob = STANDARD.decode(text).ok()?;
    if blob.len() < 16 {
        return None;
    }
    let (id, rest) = blob.split_at(16);
    let id: KeyId = id.try_into().ok()?;
    let plain = decrypt(&keys(&id)?, &id, rest)?;
    serde_json::from_slice(&plain).ok()
}

/// Whether `doc` holds a sealed value anywhere.
pub fn has_sealed(doc: &Value) -> bool {
    check_stack();
    sealed_text(doc).is_some()
        || match doc {
            Value::Object(m) => m.values().any(has_sealed),
            Value::Array(a) => a.iter().any(has_sealed),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Pointer {
        crate::json::pointer::parse_pointer(s).unwrap()
    }

    #[test]
    fn sealed_values_hold_no_plaintext_and_open_only_with_their_key() {
        let (id, key) = ([7u8; 16], new_key());
        let mut doc =
            json!({"userId": "u-1", "email": "ann@example.com", "tags": ["x", {"phone": 123}]});
        let n = seal(
            &mut doc,
            &[p("/email"), p("/tags/1/phone"), p("/missing")],
            &id,
            &key,
        )
        .unwrap();
        assert_eq!(n, 2);
        let text = doc.to_string();
        assert!(
            !text.contains("ann@example.com") && !text.contains("123"),
            "{text}"
        );
        assert_eq!(doc["userId"], "u-1");
        // Sealing twice does not seal again; each seal has a fresh nonce.
        let again = doc.clone();
        assert_eq!(seal(&mut doc, &[p("/email")], &id, &key), Ok(0));
        assert_eq!(doc, again);
        let mut other = json!({"email": "ann@example.com"});
        seal(&mut other, &[p("/email")], &id, &key).unwrap();
        assert_ne!(other["email"], doc["email"]);

        let mut plain = doc.clone();
        let mut keys = |k: &KeyId| (k == &id).then_some(key);
        assert!(reveal(&mut plain, &mut Access::Keys(&mut keys)));
        assert_eq!(
            plain,
            json!({"userId": "u-1", "email": "ann@example.com", "tags": ["x", {"phone": 123}]})
        );
        let mut erased = doc.clone();
        assert!(reveal(
            &mut erased,
            &mut Access::Keys(&mut |_: &KeyId| None)
        ));
        assert_eq!(erased["email"], ERASED);
        assert_eq!(erased["tags"][1]["phone"], ERASED);
        let mut wrong = doc.clone();
        reveal(
            &mut wrong,
            &mut Access::Keys(&mut |_: &KeyId| Some(new_key())),
        );
        assert_eq!(wrong["email"], ERASED);
        let mut withheld = doc.clone();
        reveal(&mut withheld, &mut Access::Withheld);
        assert_eq!(withheld["email"], WITHHELD);
        assert!(!has_sealed(&withheld) && has_sealed(&doc));
    }

    #[test]
    fn a_copied_or_tampered_seal_reveals_as_erased_never_as_an_error() {
        let (id, key) = ([1u8; 16], new_key());
        let mut doc = json!({"email": "a@b.c"});
        seal(&mut doc, &[p("/email")], &id, &key).unwrap();
        // A reducer copied it into a state, nested.
        let mut state = json!({"profile": {"contact": doc["email"].clone()}, "n": 1});
        let mut keys = |_: &KeyId| Some(key);
        reveal(&mut state, &mut Access::Keys(&mut keys));
        assert_eq!(state["profile"]["contact"], "a@b.c");
        for bad in ["", "!!", "AAAA", &STANDARD.encode([9u8; 40])] {
            let mut v = json!({SEALED: bad});
            reveal(&mut v, &mut Access::Keys(&mut keys));
            assert_eq!(v, json!(ERASED), "{bad}");
        }
        // An object that merely has the member among others is data, not a seal.
        let mut v = json!({SEALED: "x", "other": 1});
        assert!(!reveal(&mut v, &mut Access::Withheld));
    }

    #[test]
    fn keys_wrap_under_the_master_key_or_as_is() {
        let (id, key, master) = ([3u8; 16], new_key(), new_key());
        let wrapped = wrap(&id, &key, Some(&master));
        assert!(!wrapped.windows(32).any(|w| w == key));
        assert_eq!(unwrap_key(&id, &wrapped, Some(&master)), Some(key));
        assert_eq!(unwrap_key(&id, &wrapped, None), None);
        assert_eq!(unwrap_key(&id, &wrapped, Some(&new_key())), None);
        assert_eq!(unwrap_key(&[4u8; 16], &wrapped, Some(&master)), None);
        let plain = wrap(&id, &key, None);
        assert_eq!(unwrap_key(&id, &plain, Some(&master)), Some(key));
        assert_eq!(unwrap_key(&id, &[], None), None);
    }

    #[test]
    fn a_value_sealed_beforehand_is_kept_only_under_the_subjects_own_key() {
        let (id, key) = ([5u8; 16], new_key());
        let (other_id, other_key) = ([6u8; 16], new_key());
        let mut own = json!({"email": "ann@example.com"});
        seal(&mut own, &[p("/email")], &id, &key).unwrap();
        let mut theirs = json!({"email": "bob@example.com"});
        seal(&mut theirs, &[p("/email")], &other_id, &other_key).unwrap();
        // A copy of the subject's own seal is kept as it is.
        let mut doc = json!({"email": own["email"].clone(), "name": "Ann"});
        let before = doc.clone();
        assert_eq!(seal(&mut doc, &[p("/email"), p("/name")], &id, &key), Ok(1));
        assert_eq!(doc["email"], before["email"]);
        // Another subject's seal, plaintext dressed up as one, a seal naming this key that
        // does not decrypt under it: refused, and nothing is sealed.
        let forged = STANDARD.encode([&id[..], &[0u8; 40]].concat());
        for bad in [
            theirs["email"].clone(),
            json!({SEALED: "ann@plain.example"}),
            json!({SEALED: forged}),
        ] {
            let mut doc = json!({"name": "Ann", "a~b": {"c/d": bad}});
            let before = doc.clone();
            assert_eq!(
                seal(&mut doc, &[p("/name"), p("/a~0b/c~1d")], &id, &key),
                Err("/a~0b/c~1d".to_string())
            );
            assert_eq!(doc, before);
        }
    }

    #[test]
    fn only_access_opens_the_given_keys_and_withholds_the_rest() {
        let (id, key) = ([8u8; 16], new_key());
        let (gone, gone_key) = ([9u8; 16], new_key());
        let (other, other_key) = ([10u8; 16], new_key());
        let mut doc = json!({"a": "mine", "b": "erased", "c": "theirs"});
        seal(&mut doc, &[p("/a")], &id, &key).unwrap();
        seal(&mut doc, &[p("/b")], &gone, &gone_key).unwrap();
        seal(&mut doc, &[p("/c")], &other, &other_key).unwrap();
        doc["d"] = json!({SEALED: "not a seal"});
        let mut keys = |k: &KeyId| match *k {
            k if k == id => Some(Some(key)),
            k if k == gone => Some(None),
            _ => None,
        };
        assert!(reveal(&mut doc, &mut Access::Only(&mut keys)));
        assert_eq!(
            doc,
            json!({"a": "mine", "b": ERASED, "c": WITHHELD, "d": WITHHELD})
        );
    }

    #[test]
    fn blinding_hides_personal_paths_and_every_seal() {
        let (id, key) = ([11u8; 16], new_key());
        let mut stored = json!({"id": 1, "email": "ann@example.com", "note": "x"});
        seal(&mut stored, &[p("/email")], &id, &key).unwrap();
        stored["copied"] = stored["email"].clone();
        let mut right =
            json!({"id": 1, "email": "ann@example.com", "note": "x", "copied": {SEALED: "zz"}});
        let mut wrong =
            json!({"id": 1, "email": "guess@example.com", "note": "x", "copied": {SEALED: "yy"}});
        for d in [&mut stored, &mut right, &mut wrong] {
            blind(d, &[p("/email"), p("/absent")]);
        }
        assert_eq!(stored, right);
        assert_eq!(right, wrong);
        assert_eq!(stored["email"], WITHHELD);
        assert_eq!(stored["note"], "x");
    }
}
