//! jsonb datums read in place, without jsonb's text form or a call into PostgreSQL per
//! token: folding reads every event, so it walks the binary container itself and copies only
//! what the reducers use. (States go out once per fold as text through jsonb_in, which also
//! normalises numbers.)
use event_store_core::json::pointer::Data;
use event_store_core::json::state::{Map, State};
use pgrx::pg_sys;
use serde_json::{Number, Value};
use std::str::FromStr;

#[cfg(not(target_endian = "little"))]
compile_error!("the jsonb and numeric readers below assume a little-endian machine");

// From PostgreSQL's jsonb.h: a container's header and its children's JEntry words.
const COUNT_MASK: u32 = 0x0FFF_FFFF;
const F_SCALAR: u32 = 0x1000_0000;
const F_OBJECT: u32 = 0x2000_0000;
const OFFLEN_MASK: u32 = 0x0FFF_FFFF;
const TYPE_MASK: u32 = 0x7000_0000;
const HAS_OFF: u32 = 0x8000_0000;
const IS_STRING: u32 = 0x0000_0000;
const IS_NUMERIC: u32 = 0x1000_0000;
const IS_FALSE: u32 = 0x2000_0000;
const IS_TRUE: u32 = 0x3000_0000;
const IS_NULL: u32 = 0x4000_0000;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("a slice of 4 bytes"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(b[at..at + 2].try_into().expect("a slice of 2 bytes"))
}

/// The payload of an in-line varlena (1- or 4-byte header), or `None` when it is toasted.
fn varlena_payload(b: &[u8]) -> Option<&[u8]> {
    match b[0] {
        0x01 => None, // a TOAST pointer
        h if h & 0x01 == 0x01 => Some(&b[1..(h >> 1) as usize]),
        h if h & 0x03 == 0x00 => Some(&b[4..(u32_at(b, 0) >> 2) as usize]),
        _ => None, // compressed
    }
}

/// Whether the database stores text as UTF-8, which PostgreSQL then has validated.
fn utf8_database() -> bool {
    static UTF8: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: reads the database's encoding, fixed for the life of the backend.
    *UTF8.get_or_init(|| unsafe { pg_sys::GetDatabaseEncoding() } == pg_sys::pg_enc::PG_UTF8 as i32)
}

/// Text stored by PostgreSQL in this database, as UTF-8.
fn str_of(b: &[u8]) -> &str {
    if utf8_database() {
        // SAFETY: PostgreSQL checks every string stored in a UTF-8 database.
        return unsafe { std::str::from_utf8_unchecked(b) };
    }
    // Converted by the server (into memory of the current call when it must copy); text it
    // cannot convert, as in a SQL_ASCII database, is an error rather than a guess.
    // SAFETY: `b` is valid for its length; a converted copy is NUL-terminated and palloc'd in
    // the current memory context, which lives as long as the call or event reading `b`.
    let utf8 = unsafe {
        let p = pg_sys::pg_server_to_any(
            b.as_ptr().cast(),
            b.len() as i32,
            pg_sys::pg_enc::PG_UTF8 as i32,
        );
        if p.cast_const() == b.as_ptr().cast() {
            b
        } else {
            std::ffi::CStr::from_ptr(p).to_bytes()
        }
    };
    match std::str::from_utf8(utf8) {
        Ok(s) => s,
        Err(_) => {
            pgrx::ereport!(
                ERROR,
                pgrx::PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
                "event_store: text in the events cannot be converted to UTF-8"
            );
        }
    }
}

/// A numeric varlena: an integer, or the decimal form numeric_out prints ("-12.50").
fn numeric(b: &[u8]) -> State {
    let data = varlena_payload(b).expect("jsonb stores its numerics in line, uncompressed");
    let h = u16_at(data, 0);
    let (negative, dscale, weight, digits) = match h & 0xC000 {
        0x8000 => {
            let weight = (h & 0x003F) as i16 | if h & 0x0040 != 0 { !0x003F } else { 0 };
            (
                h & 0x2000 != 0,
                ((h & 0x1F80) >> 7) as i32,
                weight as i32,
                &data[2..],
            )
        }
        0xC000 => panic!("jsonb holds no NaN or infinite numerics"),
        sign => (
            sign == 0x4000,
            (h & 0x3FFF) as i32,
            u16_at(data, 2) as i16 as i32,
            &data[4..],
        ),
    };
    let digit = |i: i32| -> u16 {
        if i < 0 || (i as usize) * 2 >= digits.len() {
            0
        } else {
            u16_at(digits, i as usize * 2)
        }
    };
    if dscale == 0 && (0..4).contains(&weight) {
        // Integers of up to 16 digits, the common case, need no decimal parse.
        let n = (0..=weight).fold(0i64, |n, i| n * 10000 + digit(i) as i64);
        return State::Int(if negative { -n } else { n });
    }
    // Base-10000 digits, each printed as four decimal ones.
    let push4 = |s: &mut String, d: u16| {
        for p in [1000, 100, 10, 1] {
            s.push((b'0' + (d / p % 10) as u8) as char);
        }
    };
    let mut s = String::with_capacity(8 + 4 * digits.len() + dscale as usize);
    if negative {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        let first = digit(0);
        let mut p = 1000;
        while p > 1 && first < p {
            p /= 10;
        }
        while p > 0 {
            s.push((b'0' + (first / p % 10) as u8) as char);
            p /= 10;
        }
        for i in 1..=weight {
            push4(&mut s, digit(i));
        }
    }
    if dscale > 0 {
        s.push('.');
        let end = s.len() + dscale as usize;
        let mut i = weight + 1;
        while s.len() < end {
            push4(&mut s, digit(i));
            i += 1;
        }
        s.truncate(end);
    }
    State::Number(Number::from_str(&s).expect("a numeric's decimal form is a JSON number"))
}

fn intalign(off: usize) -> usize {
    (off + 3) & !3
}

/// A value inside a jsonb datum, read in place: the fold looks up and copies only what it
/// uses. `bytes` is a container from its header on, or a scalar's data.
#[derive(Clone, Copy)]
pub struct Jsonb<'a> {
    kind: u32,
    bytes: &'a [u8],
}

const IS_CONTAINER: u32 = 0x5000_0000;

impl<'a> Jsonb<'a> {
    /// The value of a datum's payload (a raw scalar is stored as a one-element array).
    fn root(payload: &'a [u8]) -> Self {
        let root = Jsonb {
            kind: IS_CONTAINER,
            bytes: payload,
        };
        if root.header() & F_SCALAR != 0 {
            root.child(0)
        } else {
            root
        }
    }

    fn header(self) -> u32 {
        u32_at(self.bytes, 0)
    }

    fn count(self) -> usize {
        if self.kind == IS_CONTAINER {
            (self.header() & COUNT_MASK) as usize
        } else {
            0
        }
    }

    fn is_object_container(self) -> bool {
        self.kind == IS_CONTAINER && self.header() & F_OBJECT != 0
    }

    fn entry(self, i: usize) -> u32 {
        u32_at(self.bytes, 4 + 4 * i)
    }

    /// Where child `i`'s data starts, relative to the data area: each JEntry holds either its
    /// length or (every few entries) its end offset, as jsonb.h's getJsonbOffset reads them.
    fn offset(self, i: usize) -> usize {
        let mut off = 0;
        for j in (0..i).rev() {
            let e = self.entry(j);
            off += (e & OFFLEN_MASK) as usize;
            if e & HAS_OFF != 0 {
                break;
            }
        }
        off
    }

    /// Where the children's data starts: after the header and one JEntry per child.
    fn data_start(self) -> usize {
        let entries = if self.is_object_container() {
            2 * self.count()
        } else {
            self.count()
        };
        4 + 4 * entries
    }

    /// Child `i` (an object's keys come first, then its values), whose data starts at `from`
    /// in the data area at `base`; also where its data ends.
    fn child_at(self, base: usize, i: usize, from: usize) -> (Self, usize) {
        let e = self.entry(i);
        let to = if e & HAS_OFF != 0 {
            (e & OFFLEN_MASK) as usize
        } else {
            from + (e & OFFLEN_MASK) as usize
        };
        let kind = e & TYPE_MASK;
        // Numerics and containers are aligned to 4 bytes from the data area's start.
        let start = match kind {
            IS_NUMERIC | IS_CONTAINER => intalign(from),
            _ => from,
        };
        let child = Jsonb {
            kind,
            bytes: &self.bytes[base + start..base + to],
        };
        (child, to)
    }

    fn child(self, i: usize) -> Self {
        self.child_at(self.data_start(), i, self.offset(i)).0
    }

    /// Children `first..first + n` in one pass over their JEntries.
    fn children(self, first: usize, n: usize) -> impl Iterator<Item = Self> {
        let base = self.data_start();
        let mut from = self.offset(first);
        (first..first + n).map(move |i| {
            let (child, to) = self.child_at(base, i, from);
            from = to;
            child
        })
    }

    /// jsonb stores an object's keys sorted by length, then bytes: a scan of a few keys, or a
    /// binary search of many, finds one.
    fn member(self, key: &str) -> Option<Self> {
        use std::cmp::Ordering::*;
        let count = self.count();
        if !utf8_database() {
            // Stored in the server's encoding, sorted by those bytes: compare converted keys.
            let found = self.children(0, count).position(|k| str_of(k.bytes) == key);
            return found.map(|i| self.child(count + i));
        }
        let target = (key.len(), key.as_bytes());
        let order = |k: Self| (k.bytes.len(), k.bytes).cmp(&target);
        if count <= 8 {
            for (i, k) in self.children(0, count).enumerate() {
                match order(k) {
                    Equal => return Some(self.child(count + i)),
                    Greater => return None,
                    Less => {}
                }
            }
            return None;
        }
        let (mut lo, mut hi) = (0, count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match order(self.child(mid)) {
                Equal => return Some(self.child(count + mid)),
                Less => lo = mid + 1,
                Greater => hi = mid,
            }
        }
        None
    }
}

impl<'a> Data<'a> for Jsonb<'a> {
    fn get(self, token: &str) -> Option<Self> {
        if self.is_object_container() {
            self.member(token)
        } else if self.kind == IS_CONTAINER {
            let i = token.parse::<usize>().ok()?;
            (i < self.count()).then(|| self.child(i))
        } else {
            None
        }
    }

    fn is_object(self) -> bool {
        self.is_object_container()
    }

    fn each_member(self, mut f: impl FnMut(&'a str, Self)) {
        if self.is_object_container() {
            let count = self.count();
            for (k, v) in self.children(0, count).zip(self.children(count, count)) {
                f(str_of(k.bytes), v);
            }
        }
    }

    fn is_null(self) -> bool {
        self.kind == IS_NULL
    }

    fn as_str(self) -> Option<&'a str> {
        (self.kind == IS_STRING).then(|| str_of(self.bytes))
    }

    fn to_state(self) -> State {
        event_store_core::json::state::check_stack();
        match self.kind {
            IS_STRING => State::String(str_of(self.bytes).to_owned()),
            IS_NUMERIC => numeric(self.bytes),
            IS_FALSE => State::Bool(false),
            IS_TRUE => State::Bool(true),
            IS_NULL => State::Null,
            _ if self.is_object_container() => {
                let mut m = Map::with_capacity(self.count());
                self.each_member(|k, v| {
                    m.insert(k.to_owned(), v.to_state());
                });
                State::Object(m)
            }
            _ => State::Array(
                self.children(0, self.count())
                    .map(|c| c.to_state())
                    .collect(),
            ),
        }
    }
}

/// How deeply arrays and objects nest in a jsonb value (0 for a scalar), counted without
/// recursion and without looking deeper than `limit + 1`.
pub fn depth(root: Jsonb, limit: usize) -> usize {
    let mut deepest = 0;
    let mut todo = vec![(root, 1)];
    while let Some((v, d)) = todo.pop() {
        if v.kind != IS_CONTAINER {
            continue;
        }
        deepest = deepest.max(d);
        if d > limit {
            break;
        }
        let n = if v.is_object_container() {
            2 * v.count()
        } else {
            v.count()
        };
        todo.extend(v.children(0, n).map(|c| (c, d + 1)));
    }
    deepest
}

/// Whether an object anywhere in a jsonb value has a member named `key`, read in place
/// without recursion.
pub fn holds_member(root: Jsonb, key: &str) -> bool {
    let mut todo = vec![root];
    while let Some(v) = todo.pop() {
        if v.kind != IS_CONTAINER {
            continue;
        }
        let n = v.count();
        if v.is_object_container() {
            if v.children(0, n).any(|k| str_of(k.bytes) == key) {
                return true;
            }
            todo.extend(v.children(n, n));
        } else {
            todo.extend(v.children(0, n));
        }
    }
    false
}

/// Calls `f` with a jsonb datum read in place (detoasted into a copy when not in line).
///
/// # Safety
/// `datum` must be a non-null jsonb datum.
pub unsafe fn with_jsonb<R>(datum: pg_sys::Datum, f: impl FnOnce(Jsonb) -> R) -> R {
    with_payload(datum, |b| f(Jsonb::root(b)))
}

/// Reads a jsonb datum, detoasting it first when it is not in line.
///
/// # Safety
/// `datum` must be a non-null jsonb datum.
pub unsafe fn to_value(datum: pg_sys::Datum) -> Value {
    with_jsonb(datum, |j| Value::from(&j.to_state()))
}

/// Calls `f` with a varlena datum's payload, detoasting a copy first when it is not in line.
///
/// # Safety
/// `datum` must be a non-null varlena datum.
unsafe fn with_payload<R>(datum: pg_sys::Datum, f: impl FnOnce(&[u8]) -> R) -> R {
    let p = datum.cast_mut_ptr::<u8>();
    let len = match *p {
        h if h != 0x01 && h & 0x01 == 0x01 => (h >> 1) as usize,
        h if h & 0x03 == 0x00 => (u32_at(std::slice::from_raw_parts(p, 4), 0) >> 2) as usize,
        _ => 0,
    };
    if len > 0 {
        let payload = varlena_payload(std::slice::from_raw_parts(p, len));
        return f(payload.expect("an in-line header, matched above"));
    }
    let flat = pg_sys::pg_detoast_datum(p.cast()).cast::<u8>();
    let len = (u32_at(std::slice::from_raw_parts(flat, 4), 0) >> 2) as usize;
    let r = f(&std::slice::from_raw_parts(flat, len)[4..]);
    pg_sys::pfree(flat.cast());
    r
}

/// A text datum's contents.
///
/// # Safety
/// `datum` must be a non-null text datum.
pub unsafe fn with_text<R>(datum: pg_sys::Datum, f: impl FnOnce(&str) -> R) -> R {
    with_payload(datum, |b| f(str_of(b)))
}
