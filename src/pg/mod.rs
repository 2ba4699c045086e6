//! PostgreSQL plumbing every capability uses: errors with our SQLSTATEs, RAII guards, kept SPI
//! plans, shared memory, settings, where the extension's objects live, who is calling, and
//! jsonb datums.
pub mod caller;
pub mod errors;
pub mod guards;
pub mod jsonb;
pub mod plans;
pub mod relcache;
pub mod schema;
pub mod settings;
pub mod shmem;
pub mod timescaledb;

use pgrx::pg_sys;

/// Sets a set-returning call up to return a materialized result and gives its `ReturnSetInfo`.
/// The caller's expected row type is used where it gives one: the same columns as the
/// function's declared result, without building them from pg_proc on every call.
///
/// # Safety
/// `fcinfo` is a set-returning call's, in a context that accepts a materialized result.
pub unsafe fn materialize(fcinfo: pg_sys::FunctionCallInfo) -> *mut pg_sys::ReturnSetInfo {
    // SAFETY: as the caller promises; resultinfo is checked to be a ReturnSetInfo before its
    // expected descriptor is read.
    unsafe {
        let rsinfo = (*fcinfo).resultinfo.cast::<pg_sys::ReturnSetInfo>();
        let expected = !rsinfo.is_null()
            && (*rsinfo).type_ == pg_sys::NodeTag::T_ReturnSetInfo
            && !(*rsinfo).expectedDesc.is_null();
        let flags = match expected {
            true => pg_sys::MAT_SRF_USE_EXPECTED_DESC as pg_sys::bits32,
            false => 0,
        };
        pg_sys::InitMaterializedSRF(fcinfo, flags);
        rsinfo
    }
}
