//! Who appended: recorded in every event's metadata so nobody has to remember to pass it.
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    /// The owner of the projection whose handler is running, while one runs.
    static ACTING: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

/// Marks `owner` as the acting role until dropped (also when an error unwinds through it):
/// what a handler does is done in its owner's name, never in the name of whoever runs the pass.
pub struct Acting(Option<pg_sys::Oid>);

impl Acting {
    pub fn on_behalf_of(owner: pg_sys::Oid) -> Self {
        Acting(ACTING.replace(Some(owner)))
    }
}

impl Drop for Acting {
    fn drop(&mut self) {
        ACTING.set(self.0);
    }
}

/// The role the session acts as (its SET ROLE, which SECURITY DEFINER does not change), or
/// inside a projection handler the projection's owner.
pub fn calling_role() -> pg_sys::Oid {
    // SAFETY: reads the backend's current identity; no allocation, cannot fail.
    ACTING
        .get()
        .unwrap_or_else(|| unsafe { pg_sys::GetOuterUserId() })
}

/// The calling role's oid (SQL casts it to regrole without a lookup by name). Who owns or may
/// touch something is decided by this, never by the name: a name read back as text and cast
/// (`'Sec_Mixed'::regrole`) folds its case, and one with a space does not parse.
#[pg_extern(stable, parallel_safe, schema = "_event_store")]
pub fn _es_calling_role_id() -> pg_sys::Oid {
    calling_role()
}

/// The calling role's name, for records of who did something (`defined_by`, `appendedBy`).
#[pg_extern(stable, parallel_safe, schema = "_event_store")]
pub fn _es_calling_role() -> String {
    // SAFETY: the role exists (it is the session's or a projection's owner); the name is
    // palloc'd and copied at once.
    unsafe {
        let name = pg_sys::GetUserNameFromId(calling_role(), false);
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}
