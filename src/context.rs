//! Who appended: recorded in every event's metadata so nobody has to remember to pass it.
use pgrx::prelude::*;

/// The role the session acts as (its SET ROLE), which SECURITY DEFINER does not change.
#[pg_extern(stable, parallel_safe)]
fn _es_calling_role() -> String {
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), false);
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}
