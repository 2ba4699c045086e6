//! Running projection handlers: as the projection's owner, never as the worker's superuser,
//! sandboxed so that nothing a handler sets outlives it, within a time limit.
use crate::pg::caller::Acting;
use crate::pg::schema::{self, OrRaise};
use crate::pg::settings;
use pgrx::pg_sys::{self, ffi::pg_guard_ffi_boundary};
use pgrx::prelude::*;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// The handler's identity while it runs: its owner, in a security-restricted operation like
/// REFRESH MATERIALIZED VIEW uses (no SET ROLE back to the caller, no session changes), and
/// the owner as the acting role for what it appends. Dropping restores the caller, also when
/// an error unwinds through it; the (sub)transaction's abort then undoes the handler's settings.
struct AsOwner {
    saved_user: pg_sys::Oid,
    saved_ctx: i32,
    _acting: Acting,
}

impl AsOwner {
    fn enter(owner: pg_sys::Oid) -> Self {
        let (mut saved_user, mut saved_ctx) = (pg_sys::InvalidOid, 0);
        // SAFETY: saves and switches the backend's current user, as fmgr_security_definer does.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
            pg_sys::SetUserIdAndSecContext(
                owner,
                saved_ctx
                    | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION)
                        as i32,
            );
        }
        AsOwner {
            saved_user,
            saved_ctx,
            _acting: Acting::on_behalf_of(owner),
        }
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        // SAFETY: restores what `enter` saved; cannot fail.
        unsafe { pg_sys::SetUserIdAndSecContext(self.saved_user, self.saved_ctx) };
    }
}

/// Whether `owner` may see the event: row level security applies to the owner, not to the
/// extension owner that reads the feed for it. Runs as the owner.
fn visible_to_owner(table: pg_sys::Oid, owner: pg_sys::Oid, position: i64) -> bool {
    // SAFETY: syscache lookups.
    let (select, rls) = unsafe {
        (
            pg_sys::pg_class_aclcheck(table, owner, pg_sys::ACL_SELECT),
            pg_sys::check_enable_rls(table, owner, true),
        )
    };
    if select != pg_sys::AclResult::ACLCHECK_OK {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "event_store: the projection's owner may not read event_store",
            "Grant event_store_reader to the projection's owner."
        );
    }
    if rls != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 {
        return true;
    }
    let sql = schema::qualified(
        "SELECT EXISTS (SELECT FROM _event_store.log WHERE global_position = $1)",
    );
    Spi::get_one_with_args::<bool>(sql, &[position.into()])
        .or_raise("checking whether the projection's owner may see an event")
        .unwrap_or(false)
}

/// The search_path handlers run with; a handler that needs another sets it on itself
/// (`ALTER FUNCTION ... SET search_path`).
const HANDLER_SEARCH_PATH: &std::ffi::CStr = c"\"$user\", public, pg_temp";

/// Calls `func` with `event` (or no argument) as `owner`, in its own GUC nest level: a handler
/// that runs `SET search_path` (or any setting) changes nothing for the code that called it.
/// An event the owner may not see under row level security is skipped. Returns whether the
/// handler ran.
#[pg_extern(volatile, parallel_unsafe, schema = "_event_store")]
fn _es_run_as<'a>(
    func: pg_sys::Oid,
    owner: pg_sys::Oid,
    event: Option<pgrx::composite_type!('a, "@extschema@.event_store")>,
) -> bool {
    // SAFETY: a syscache lookup.
    if unsafe { pg_sys::superuser_arg(owner) } {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "event_store: projection handlers never run as a superuser",
            "The projection's owner has become a superuser; recreate it under an ordinary role."
        );
    }
    let _as_owner = AsOwner::enter(owner);
    let arg = match event {
        Some(e) => {
            let position: i64 = e
                .get_by_name("global_position")
                .ok()
                .flatten()
                .unwrap_or_default();
            if !visible_to_owner(schema::relation(c"event_store"), owner, position) {
                return false;
            }
            // Personal data as the owner may see it (the pass may run as a superuser).
            // SAFETY: an event_store row.
            e.into_datum()
                .map(|d| unsafe { crate::privacy::sealing::reveal_row(d) })
        }
        None => None,
    };
    // Names in the handler resolve as in a plain session of its owner, never through the
    // extension's pinned path nor through temp tables of whoever runs the pass; every setting
    // the handler makes, SET or SET LOCAL, is undone after it.
    // SAFETY: the call frame is palloc'd for `nargs` arguments, as fmgr expects, and the
    // handler's ERROR crosses back as a Rust panic through pg_guard_ffi_boundary.
    settings::isolated(&[(c"search_path", HANDLER_SEARCH_PATH)], || unsafe {
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
        let Some(call) = flinfo.fn_addr else {
            error!(
                "event_store: handler {} has no entry point",
                u32::from(func)
            );
        };
        // The handler's result (void) is ignored; only its effects count.
        {
            let _running = InHandler::enter();
            pg_guard_ffi_boundary(|| call(fcinfo));
        }
        pg_sys::pfree(fcinfo.cast());
    });
    // A handler that trapped every cancel and returned after the limit still fails: its
    // batch rolls back and counts as timed out.
    if TIMED_OUT.load(Ordering::SeqCst) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            "event_store: the handler ran longer than event_store.projection_timeout"
        );
    }
    true
}

static TIMED_OUT: AtomicBool = AtomicBool::new(false);

thread_local! {
    static TIMER: Cell<Option<i32>> = const { Cell::new(None) };
    /// Whether a handler is running (its code, not the pass around it).
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
    /// Whether a cancel was raised again after the handler trapped one.
    static RECANCELLED: Cell<bool> = const { Cell::new(false) };
}

/// Marks a handler as running until dropped (also when its error unwinds through it).
struct InHandler(bool);

impl InHandler {
    fn enter() -> Self {
        InHandler(IN_HANDLER.replace(true))
    }
}

impl Drop for InHandler {
    fn drop(&mut self) {
        IN_HANDLER.set(self.0);
        if RECANCELLED.replace(false) {
            // The cancel raised for the handler is not the caller's: the pass records the
            // timeout instead of being cancelled itself.
            // SAFETY: a flag of this backend, read at its next interrupt check.
            unsafe { pg_sys::QueryCancelPending = 0 };
        }
    }
}

/// Once the time limit has passed, every subtransaction a handler rolls back (a trapped
/// cancel: `EXCEPTION WHEN query_canceled`, a plpy/pl/perl try) is followed by another
/// cancel at the handler's next interrupt check, outside the block that trapped it: a
/// handler can trap cancels but never outrun them.
///
/// # Safety
/// Called by PostgreSQL at subtransaction events; registered in `_es_projection_timer`.
unsafe extern "C-unwind" fn after_subxact(
    event: pg_sys::SubXactEvent::Type,
    _: pg_sys::SubTransactionId,
    _: pg_sys::SubTransactionId,
    _: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB
        && IN_HANDLER.get()
        && TIMED_OUT.load(Ordering::SeqCst)
    {
        RECANCELLED.set(true);
        // SAFETY: what the SIGINT handler sets; only ever read by CHECK_FOR_INTERRUPTS.
        unsafe {
            pg_sys::QueryCancelPending = 1;
            pg_sys::InterruptPending = 1;
        }
    }
}

// utils/timeout.h, which pgrx does not bind.
const USER_TIMEOUT: i32 = 12;
unsafe extern "C-unwind" {
    fn RegisterTimeout(id: i32, handler: Option<unsafe extern "C-unwind" fn()>) -> i32;
    fn enable_timeout_after(id: i32, delay_ms: i32);
    fn disable_timeout(id: i32, keep_indicator: bool);
}

/// Runs in the SIGALRM handler: only async-signal-safe work. SIGINT to ourselves is a query
/// cancel, which PostgreSQL raises at the handler's next interrupt check (also in a wait).
///
/// # Safety
/// Called only by PostgreSQL's timeout handler, registered in `_es_projection_timer`.
unsafe extern "C-unwind" fn on_timeout() {
    TIMED_OUT.store(true, Ordering::SeqCst);
    // SAFETY: kill(2) is async-signal-safe.
    unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
}

/// Arms (`true`) or disarms (`false`) the time limit of one projection's batch,
/// `event_store.projection_timeout`. Disarming returns whether it fired since it was armed.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "_event_store")]
fn _es_projection_timer(on: bool) -> bool {
    // SAFETY: PostgreSQL's timeout framework, one user timeout registered once per backend;
    // its errors cross back through pg_guard_ffi_boundary.
    unsafe {
        let id = TIMER.get().unwrap_or_else(|| {
            let id = pg_guard_ffi_boundary(|| RegisterTimeout(USER_TIMEOUT, Some(on_timeout)));
            pg_sys::RegisterSubXactCallback(Some(after_subxact), std::ptr::null_mut());
            TIMER.set(Some(id));
            id
        });
        if on {
            TIMED_OUT.store(false, Ordering::SeqCst);
            let ms = settings::PROJECTION_TIMEOUT.get();
            if ms > 0 {
                pg_guard_ffi_boundary(|| enable_timeout_after(id, ms));
            }
            false
        } else {
            pg_guard_ffi_boundary(|| disable_timeout(id, false));
            TIMED_OUT.swap(false, Ordering::SeqCst)
        }
    }
}

/// The projection settings, for the SQL side (the library may not be loaded before a call).
#[pg_extern(stable, strict, parallel_safe, schema = "_event_store")]
fn _es_setting_int(name: &str) -> i32 {
    match name {
        "event_store.projection_batch_size" => settings::PROJECTION_BATCH_SIZE.get(),
        "event_store.projection_max_attempts" => settings::PROJECTION_MAX_ATTEMPTS.get(),
        "event_store.projection_retry_delay" => settings::PROJECTION_RETRY_DELAY.get(),
        "event_store.projection_timeout" => settings::PROJECTION_TIMEOUT.get(),
        "event_store.projection_time_slice" => settings::PROJECTION_TIME_SLICE.get(),
        other => error!("event_store: unknown setting {other}"),
    }
}
