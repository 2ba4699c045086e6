//! Running projection handlers: as the projection's owner, never as the worker's superuser.
use crate::guc;
use pgrx::pg_sys::{self, ffi::pg_guard_ffi_boundary};
use pgrx::prelude::*;

/// Calls `func` with `event` (or no argument) as `owner`, in a security-restricted operation
/// like REFRESH MATERIALIZED VIEW uses, so the handler cannot SET ROLE back to the caller.
/// On error, the (sub)transaction's abort restores the caller's identity.
#[pg_extern(volatile, parallel_unsafe)]
fn _es_run_as<'a>(
    func: pg_sys::Oid,
    owner: pg_sys::Oid,
    event: Option<pgrx::composite_type!('a, "event_store")>,
) {
    unsafe {
        if pg_sys::superuser_arg(owner) {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "event_store: projection handlers never run as a superuser",
                "The projection's owner has become a superuser; recreate it under an ordinary role."
            );
        }
        let arg = event.and_then(|e| e.into_datum());
        let (mut saved_user, mut saved_ctx) = (pg_sys::InvalidOid, 0);
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_ctx
                | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION)
                    as i32,
        );
        let mut flinfo = pg_sys::FmgrInfo::default();
        pg_sys::fmgr_info(func, &mut flinfo);
        let nargs = arg.is_some() as usize;
        let fcinfo = pg_sys::palloc0(
            std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
                + std::mem::size_of::<pg_sys::NullableDatum>() * nargs,
        ) as *mut pg_sys::FunctionCallInfoBaseData;
        let f = &mut *fcinfo;
        f.flinfo = &mut flinfo;
        f.fncollation = pg_sys::InvalidOid;
        f.nargs = nargs as _;
        if let Some(d) = arg {
            f.args.as_mut_slice(1)[0] = pg_sys::NullableDatum {
                value: d,
                isnull: false,
            };
        }
        let call = flinfo.fn_addr.expect("handler has no entry point");
        // The handler's result (void) is ignored; only its effects count.
        pg_guard_ffi_boundary(|| call(fcinfo));
        pg_sys::pfree(fcinfo.cast());
        pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx);
    }
}

/// The projection settings, for the SQL side (the library may not be loaded before a call).
#[pg_extern(stable, strict, parallel_safe)]
fn _es_setting_int(name: &str) -> i32 {
    match name {
        "event_store.projection_batch_size" => guc::PROJECTION_BATCH_SIZE.get(),
        "event_store.projection_max_attempts" => guc::PROJECTION_MAX_ATTEMPTS.get(),
        "event_store.projection_retry_delay" => guc::PROJECTION_RETRY_DELAY.get(),
        other => error!("event_store: unknown setting {other}"),
    }
}
