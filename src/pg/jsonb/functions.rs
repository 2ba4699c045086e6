//! jsonb through PostgreSQL's own functions, for an append's arguments: the datums stay
//! binary (`->`, `->>`, array elements, `||`), and only the text the hash covers is made.
use pgrx::prelude::*;
use std::ffi::CStr;

/// Calls a built-in function of jsonb; `None` for SQL NULL.
///
/// # Safety
/// `f` must take `args.len()` non-null arguments of the types given.
pub unsafe fn call(
    f: unsafe fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
    args: &[pg_sys::Datum],
) -> Option<pg_sys::Datum> {
    let args: Vec<Option<pg_sys::Datum>> = args.iter().map(|a| Some(*a)).collect();
    pgrx::direct_function_call_as_datum(f, &args)
}

pub fn text_datum(s: &str) -> pg_sys::Datum {
    s.into_datum().expect("text is never NULL")
}

/// `jsonb_typeof`: object, array, string, number, boolean or null.
pub fn kind(j: pg_sys::Datum) -> String {
    // SAFETY: `j` is a non-null jsonb datum; jsonb_typeof returns text.
    unsafe {
        let t = call(pg_sys::jsonb_typeof, &[j]).expect("jsonb_typeof is never NULL");
        String::from_datum(t, false).expect("text")
    }
}

/// `j -> key`, or `None` when the key is absent.
pub fn field(j: pg_sys::Datum, key: &str) -> Option<pg_sys::Datum> {
    // SAFETY: `j` is a non-null jsonb object datum, the key a text datum.
    unsafe { call(pg_sys::jsonb_object_field, &[j, text_datum(key)]) }
}

/// `j ->> key`: the text of a string, the JSON text of anything else, `None` for absent or null.
pub fn field_text(j: pg_sys::Datum, key: &str) -> Option<pg_sys::Datum> {
    // SAFETY: as for `field`; the result is a text datum.
    unsafe { call(pg_sys::jsonb_object_field_text, &[j, text_datum(key)]) }
}

/// The `i`th element (0-based) of a jsonb array.
pub fn element(j: pg_sys::Datum, i: i32) -> pg_sys::Datum {
    // SAFETY: `j` is a non-null jsonb array datum with more than `i` elements.
    unsafe { call(pg_sys::jsonb_array_element, &[j, i.into()]) }.expect("the element exists")
}

pub fn array_len(j: pg_sys::Datum) -> i32 {
    // SAFETY: `j` is a non-null jsonb array datum.
    unsafe { call(pg_sys::jsonb_array_length, &[j]) }
        .map(|d| d.value() as i32)
        .unwrap_or(0)
}

/// jsonb's text form, the bytes the hash recipe covers.
pub fn out(j: pg_sys::Datum) -> String {
    // SAFETY: `j` is a non-null jsonb datum; jsonb_out returns a palloc'd C string.
    unsafe {
        let c = call(pg_sys::jsonb_out, &[j]).expect("jsonb_out is never NULL");
        CStr::from_ptr(c.cast_mut_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

pub fn concat(a: pg_sys::Datum, b: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: both are non-null jsonb objects; `||` of two objects is an object.
    unsafe { call(pg_sys::jsonb_concat, &[a, b]) }.expect("jsonb || jsonb is never NULL")
}

/// Reads a text value with the input function of the column it goes to, as a SQL cast
/// would (same errors: `22P02` for an id that is not a UUID, a version that is not an int).
pub fn parse(
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
pub fn detoast(j: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: `j` is a non-null varlena datum.
    unsafe { pg_sys::Datum::from(pg_sys::pg_detoast_datum(j.cast_mut_ptr())) }
}
