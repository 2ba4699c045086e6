//! jsonb datums to `serde_json::Value` without jsonb's text form: folding reads every
//! event, so it walks the binary container directly. (Answers go out once per call through
//! pgrx's `JsonB`, which parses text with jsonb_in and so also normalises numbers.)
use pgrx::pg_sys::{self, jbvType, JsonbIteratorToken as Tok};
use serde_json::{Map, Number, Value};
use std::ffi::CStr;
use std::str::FromStr;

enum Open {
    Array(Vec<Value>),
    Object(Map<String, Value>, Option<String>),
}

impl Open {
    fn push(&mut self, v: Value) {
        match self {
            Open::Array(a) => a.push(v),
            Open::Object(m, key) => {
                m.insert(key.take().expect("jsonb gives a key before its value"), v);
            }
        }
    }

    fn close(self) -> Value {
        match self {
            Open::Array(a) => Value::Array(a),
            Open::Object(m, _) => Value::Object(m),
        }
    }
}

unsafe fn string(v: &pg_sys::JsonbValue) -> String {
    let s = v.val.string;
    let bytes = std::slice::from_raw_parts(s.val as *const u8, s.len as usize);
    String::from_utf8_lossy(bytes).into_owned()
}

unsafe fn scalar(v: &pg_sys::JsonbValue) -> Value {
    match v.type_ {
        jbvType::jbvNull => Value::Null,
        jbvType::jbvBool => Value::Bool(v.val.boolean),
        jbvType::jbvString => Value::String(string(v)),
        jbvType::jbvNumeric => {
            // numeric_out keeps the scale the number was written with ("1.50").
            let text = pgrx::direct_function_call_as_datum(
                pg_sys::numeric_out,
                &[Some(pg_sys::Datum::from(v.val.numeric))],
            )
            .expect("numeric_out returns text");
            let cstr = text.cast_mut_ptr::<std::ffi::c_char>();
            let n = Number::from_str(CStr::from_ptr(cstr).to_str().expect("numeric_out is ASCII"))
                .expect("numeric_out gives a JSON number");
            pg_sys::pfree(cstr.cast());
            Value::Number(n)
        }
        other => panic!("unexpected jsonb scalar type {other}"),
    }
}

/// Reads a jsonb datum (possibly toasted).
///
/// # Safety
/// `datum` must be a non-null jsonb datum.
pub unsafe fn to_value(datum: pg_sys::Datum) -> Value {
    let jb = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::Jsonb;
    let mut it = pg_sys::JsonbIteratorInit(&mut (*jb).root);
    let mut v: pg_sys::JsonbValue = std::mem::zeroed();
    let mut stack: Vec<Open> = Vec::new();
    let mut raw_scalar = false;
    let mut result = Value::Null;
    loop {
        match pg_sys::JsonbIteratorNext(&mut it, &mut v, false) {
            Tok::WJB_BEGIN_ARRAY => {
                raw_scalar |= stack.is_empty() && v.val.array.rawScalar;
                stack.push(Open::Array(Vec::new()));
            }
            Tok::WJB_BEGIN_OBJECT => stack.push(Open::Object(Map::new(), None)),
            Tok::WJB_KEY => {
                if let Some(Open::Object(_, key)) = stack.last_mut() {
                    *key = Some(string(&v));
                }
            }
            Tok::WJB_VALUE | Tok::WJB_ELEM => stack.last_mut().expect("inside a container").push(scalar(&v)),
            Tok::WJB_END_ARRAY | Tok::WJB_END_OBJECT => {
                let done = stack.pop().expect("balanced containers").close();
                match stack.last_mut() {
                    Some(parent) => parent.push(done),
                    None => result = done,
                }
            }
            _ => break, // WJB_DONE
        }
    }
    if jb.cast() != datum.cast_mut_ptr::<pg_sys::varlena>() {
        pg_sys::pfree(jb.cast());
    }
    match result {
        // A top-level scalar is stored as a one-element "raw scalar" array.
        Value::Array(mut a) if raw_scalar => a.pop().unwrap_or(Value::Null),
        other => other,
    }
}

/// A jsonb column or argument read with [`to_value`], e.g. `row.get::<Json>(n)` in SPI.
pub struct Json(pub Value);

impl pgrx::FromDatum for Json {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
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
