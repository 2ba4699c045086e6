//! Errors with the extension's own SQLSTATEs (class ES), which pgrx's error-code enum cannot
//! name: raised through PostgreSQL's ereport functions directly.
use pgrx::pg_sys::ffi::pg_guard_ffi_boundary;
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

/// Raises an ERROR with `code` (five characters, e.g. `b"ES003"`).
pub fn raise(code: &[u8; 5], message: &str, detail: &str, hint: &str) -> ! {
    let text = |s: &str| CString::new(s.replace('\0', "")).unwrap_or_default();
    let (message, detail, hint) = (text(message), text(detail), text(hint));
    // SAFETY: the ereport protocol (errstart, fields, errfinish) with "%s" formats; the
    // ERROR's longjmp is turned into a Rust panic by pg_guard_ffi_boundary, which the calling
    // #[pg_guard] function re-raises.
    unsafe {
        pg_guard_ffi_boundary(|| {
            if errstart(pgrx::PgLogLevel::ERROR as c_int, std::ptr::null()) {
                errcode(sqlstate(code));
                errmsg(c"%s".as_ptr(), message.as_ptr());
                if !detail.is_empty() {
                    errdetail(c"%s".as_ptr(), detail.as_ptr());
                }
                if !hint.is_empty() {
                    errhint(c"%s".as_ptr(), hint.as_ptr());
                }
                errfinish(c"event_store".as_ptr(), 0, std::ptr::null());
            }
        });
    }
    unreachable!("ereport(ERROR) returns no more")
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
