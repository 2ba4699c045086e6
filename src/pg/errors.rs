//! Errors with the extension's own SQLSTATEs (class ES), which pgrx's error-code enum cannot
//! name: raised through PostgreSQL's ereport functions directly; and the core crate's input
//! errors, raised with the SQLSTATEs they document.
use event_store_core::validate::Invalid;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::ffi::{c_char, c_int, CString};

unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errdetail(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// PostgreSQL's MAKE_SQLSTATE.
pub fn sqlstate(code: &[u8; 5]) -> c_int {
    code.iter()
        .enumerate()
        .map(|(i, c)| ((c.wrapping_sub(b'0') & 0x3F) as c_int) << (6 * i))
        .sum()
}

/// Raises an ERROR with `code` (five characters, e.g. `b"ES003"`). The texts are copied into
/// PostgreSQL's memory and dropped before the error leaves by longjmp, past every Rust frame
/// up to the calling #[pg_guard] function: callers must hold nothing else that needs dropping.
pub fn raise(code: &[u8; 5], message: String, detail: String, hint: String) -> ! {
    let text = |s: String| {
        let c = CString::new(s.replace('\0', "")).unwrap_or_default();
        // SAFETY: pstrdup copies the C string into the current memory context, which the
        // error's cleanup resets.
        unsafe { pgrx::pg_sys::pstrdup(c.as_ptr()) }
    };
    let (message, detail, hint) = (text(message), text(detail), text(hint));
    // SAFETY: the ereport protocol (errstart, fields, errfinish) with "%s" formats. errfinish
    // longjmps to PostgreSQL's handler; nothing of Rust's is left to drop here. Going through
    // pg_guard_ffi_boundary instead would turn the SQLSTATE into XX000.
    unsafe {
        if errstart(pgrx::PgLogLevel::ERROR as c_int, std::ptr::null()) {
            errcode(sqlstate(code));
            errmsg(c"%s".as_ptr(), message);
            if *detail != 0 {
                errdetail(c"%s".as_ptr(), detail);
            }
            if *hint != 0 {
                errhint(c"%s".as_ptr(), hint);
            }
            errfinish(c"event_store".as_ptr(), 0, std::ptr::null());
        }
    }
    unreachable!("ereport(ERROR) does not return")
}

/// An error with one of the extension's own SQLSTATEs, carried up to where nothing else needs
/// dropping and raised there.
pub struct Refused {
    pub code: &'static [u8; 5],
    pub message: String,
    pub detail: String,
    pub hint: String,
}

impl Refused {
    pub fn raise(self) -> ! {
        raise(self.code, self.message, self.detail, self.hint)
    }
}

/// Raises an input error with the SQLSTATE it documents.
pub fn raise_invalid(invalid: Invalid) -> ! {
    let (code, msg) = match invalid {
        Invalid::Null(m) => (PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, m),
        Invalid::Value(m) => (PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, m),
        Invalid::TooLarge(m) => (PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, m),
    };
    ereport!(ERROR, code, format!("event_store: {msg}"));
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlstates_pack_as_postgresql_does() {
        // ERRCODE_UNIQUE_VIOLATION is MAKE_SQLSTATE('2','3','5','0','5').
        let expected = 2 + (3 << 6) + (5 << 12) + (5 << 24);
        assert_eq!(super::sqlstate(b"23505"), expected);
        assert_eq!(super::sqlstate(b"ES003") & 0x3F, (b'E' - b'0') as i32);
    }
}
