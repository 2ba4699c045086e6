//! jsonb datums to `serde_json::Value` without jsonb's text form or a call into PostgreSQL
//! per token: folding reads every event, so it decodes the binary container itself.
//! (Answers go out once per call through pgrx's `JsonB`, which parses text with jsonb_in and
//! so also normalises numbers.)
use pgrx::pg_sys;
use serde_json::{Map, Number, Value};
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
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
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
    *UTF8.get_or_init(|| unsafe { pg_sys::GetDatabaseEncoding() } == pg_sys::pg_enc::PG_UTF8 as i32)
}

fn text(b: &[u8]) -> String {
    if utf8_database() {
        // SAFETY: PostgreSQL checks every string stored in a UTF-8 database.
        unsafe { std::str::from_utf8_unchecked(b) }.to_owned()
    } else {
        String::from_utf8_lossy(b).into_owned()
    }
}

/// A numeric varlena in the decimal form numeric_out prints ("-12.50").
fn numeric(b: &[u8]) -> Number {
    let data = varlena_payload(b).expect("numerics inside jsonb are in line");
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
    let mut s = String::with_capacity(8 + 4 * digits.len() + dscale as usize);
    if negative {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        s.push_str(&digit(0).to_string());
        for i in 1..=weight {
            s.push_str(&format!("{:04}", digit(i)));
        }
    }
    if dscale > 0 {
        s.push('.');
        let end = s.len() + dscale as usize;
        let mut i = weight + 1;
        while s.len() < end {
            s.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        s.truncate(end);
    }
    Number::from_str(&s).expect("a numeric's decimal form is a JSON number")
}

fn intalign(off: usize) -> usize {
    (off + 3) & !3
}

/// One child of a container; `data` runs from the child's offset to its end.
fn child(entry: u32, data: &[u8], off: usize) -> Value {
    match entry & TYPE_MASK {
        IS_STRING => Value::String(text(data)),
        IS_NUMERIC => Value::Number(numeric(&data[intalign(off) - off..])),
        IS_FALSE => Value::Bool(false),
        IS_TRUE => Value::Bool(true),
        IS_NULL => Value::Null,
        _ => container(&data[intalign(off) - off..]),
    }
}

/// Decodes a JsonbContainer: a header word, one JEntry per child (an object's keys first,
/// then its values), then the children's data.
fn container(b: &[u8]) -> Value {
    let header = u32_at(b, 0);
    let count = (header & COUNT_MASK) as usize;
    let entries = if header & F_OBJECT != 0 {
        2 * count
    } else {
        count
    };
    let base = 4 + 4 * entries;
    // Each JEntry holds either its length or (every few entries) its end offset.
    let mut start = 0usize;
    let spans: Vec<(u32, usize, usize)> = (0..entries)
        .map(|i| {
            let entry = u32_at(b, 4 + 4 * i);
            let field = (entry & OFFLEN_MASK) as usize;
            let end = if entry & HAS_OFF != 0 {
                field
            } else {
                start + field
            };
            let span = (entry, start, end);
            start = end;
            span
        })
        .collect();
    let value =
        |(entry, from, to): (u32, usize, usize)| child(entry, &b[base + from..base + to], from);
    if header & F_OBJECT != 0 {
        let mut m = Map::new();
        for i in 0..count {
            let (_, from, to) = spans[i];
            m.insert(text(&b[base + from..base + to]), value(spans[count + i]));
        }
        Value::Object(m)
    } else if header & F_SCALAR != 0 {
        value(spans[0])
    } else {
        Value::Array(spans.into_iter().map(value).collect())
    }
}

/// Reads a jsonb datum, detoasting it first when it is not in line.
///
/// # Safety
/// `datum` must be a non-null jsonb datum.
pub unsafe fn to_value(datum: pg_sys::Datum) -> Value {
    with_payload(datum, container)
}

/// Calls `f` with a varlena datum's payload, detoasting a copy first when it is not in line.
unsafe fn with_payload<R>(datum: pg_sys::Datum, f: impl FnOnce(&[u8]) -> R) -> R {
    let p = datum.cast_mut_ptr::<u8>();
    let len = match *p {
        h if h != 0x01 && h & 0x01 == 0x01 => (h >> 1) as usize,
        h if h & 0x03 == 0x00 => (u32_at(std::slice::from_raw_parts(p, 4), 0) >> 2) as usize,
        _ => 0,
    };
    if len > 0 {
        return f(varlena_payload(std::slice::from_raw_parts(p, len)).unwrap());
    }
    let flat = pg_sys::pg_detoast_datum(p.cast()).cast::<u8>();
    let len = (u32_at(std::slice::from_raw_parts(flat, 4), 0) >> 2) as usize;
    let r = f(&std::slice::from_raw_parts(flat, len)[4..]);
    pg_sys::pfree(flat.cast());
    r
}

/// A jsonb column or argument read with [`to_value`], e.g. `row.get::<Json>(n)` in SPI.
pub struct Json(pub Value);

impl pgrx::FromDatum for Json {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then(|| Json(to_value(datum)))
    }
}

impl pgrx::IntoDatum for Json {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        pgrx::JsonB(self.0).into_datum()
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

/// A text datum's contents.
///
/// # Safety
/// `datum` must be a non-null text datum.
pub unsafe fn text_datum(datum: pg_sys::Datum) -> String {
    with_payload(datum, text)
}
