//! `es_fold`: the fold as an aggregate any query can use, with the declarative reducers or
//! with a custom reducer function. Written against the fmgr directly: the transition state
//! stays a Rust value for the whole group, and rows and jsonb are read without conversion.
use crate::fold::reducers;
use crate::pg::jsonb;
use event_store_core::fold::reducers::RuleSet;
use event_store_core::fold::rules::initial_state;
use event_store_core::json::pointer::Data;
use event_store_core::json::state::State;
use event_store_core::stream::category;
use pgrx::fcinfo::{pg_arg_is_null, pg_getarg_datum_raw, pg_return_null};
use pgrx::pg_sys::{self, Datum, FunctionCallInfo};
use pgrx::prelude::*;
use serde_json::Value;
use std::ffi::{c_void, CStr};
use std::rc::Rc;

struct Acc {
    state: State,
    events: u64,
    /// The last category's reducers: rows mostly come grouped by stream.
    rules: Option<(String, Rc<RuleSet>)>,
    /// Whether the final state goes to a reader (es_fold), with personal data revealed; the
    /// state functions' fold keeps it sealed, since they may snapshot it (they reveal their
    /// own result).
    reveal: bool,
}

impl Acc {
    fn new(state: State, rules: Option<(String, Rc<RuleSet>)>, reveal: bool) -> Self {
        Acc {
            state,
            events: 0,
            rules,
            reveal,
        }
    }

    fn use_category(&mut self, category: &str) {
        if self.rules.as_ref().is_none_or(|(c, _)| c != category) {
            self.rules = Some((category.to_string(), reducers::rules(category)));
        }
    }

    /// Folds an event with the reducers of the category last used.
    fn fold<'a>(&mut self, event_type: &str, version: i32, data: impl Data<'a>) {
        let (_, rules) = self
            .rules
            .as_ref()
            .expect("set before any fold: by use_category, or given to Acc::new");
        rules.apply(&mut self.state, event_type, version, data);
        self.events += 1;
    }
}

/// # Safety
/// `arg` is the `Acc` `acc` leaked for this callback, freed once, here.
unsafe extern "C-unwind" fn drop_acc(arg: *mut c_void) {
    drop(Box::from_raw(arg.cast::<Acc>()));
}

/// The transition state, created on the first call of a group in the aggregate's memory and
/// freed with it (also when the query fails).
///
/// # Safety
/// `fcinfo` is a transition function's call whose argument 0, when not NULL, is the state
/// this function returned earlier in the group.
unsafe fn acc(fcinfo: FunctionCallInfo, start: impl FnOnce() -> Acc) -> *mut Acc {
    if !pg_arg_is_null(fcinfo, 0) {
        return pg_getarg_datum_raw(fcinfo, 0).cast_mut_ptr::<Acc>();
    }
    let mut aggctx: pg_sys::MemoryContext = std::ptr::null_mut();
    if pg_sys::AggCheckCallContext(fcinfo, &mut aggctx) == 0 {
        error!("event_store: a transition function of es_fold was called outside an aggregate");
    }
    let acc = Box::into_raw(Box::new(start()));
    let cb = pg_sys::MemoryContextAllocZero(aggctx, size_of::<pg_sys::MemoryContextCallback>())
        .cast::<pg_sys::MemoryContextCallback>();
    (*cb).func = Some(drop_acc);
    (*cb).arg = acc.cast();
    pg_sys::MemoryContextRegisterResetCallback(aggctx, cb);
    acc
}

/// Where an event_store row's columns are, looked up on a query's first row.
struct RowLayout {
    tupdesc: pg_sys::TupleDesc,
    stream_id: usize,
    event_type: usize,
    event_data: usize,
    event_version: usize,
}

/// More than event_store's columns, dropped ones included, are ever likely to be.
const MAX_COLUMNS: usize = 64;

/// The row type's layout, looked up on the first row of the query and kept in `fn_extra`.
///
/// # Safety
/// `fcinfo` is a call of `_es_fold_step`, whose `fn_extra` holds nothing else, and `row` a
/// detoasted composite datum.
unsafe fn row_layout(fcinfo: FunctionCallInfo, row: pg_sys::HeapTupleHeader) -> *mut RowLayout {
    let flinfo = (*fcinfo).flinfo;
    let mut layout = (*flinfo).fn_extra.cast::<RowLayout>();
    if layout.is_null() {
        let old = pg_sys::CurrentMemoryContext;
        pg_sys::CurrentMemoryContext = (*flinfo).fn_mcxt;
        let fields = (*row).t_choice.t_datum;
        let tupdesc = pg_sys::lookup_rowtype_tupdesc_copy(fields.datum_typeid, fields.datum_typmod);
        layout = pg_sys::palloc0(size_of::<RowLayout>()).cast();
        pg_sys::CurrentMemoryContext = old;
        let attrs = (*tupdesc).attrs.as_slice((*tupdesc).natts as usize);
        // The row type is event_store's, which its owner can alter.
        if attrs.len() > MAX_COLUMNS {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "event_store: es_fold reads rows of at most {MAX_COLUMNS} columns, \
                     dropped ones included; event_store has {}",
                    attrs.len()
                )
            );
        }
        let column = |name: &str| {
            let found = attrs
                .iter()
                .position(|a| !a.attisdropped && pgrx::name_data_to_str(&a.attname) == name);
            let Some(at) = found else {
                ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!("event_store: es_fold: event_store has no column {name}")
                );
            };
            at
        };
        *layout = RowLayout {
            tupdesc,
            stream_id: column("stream_id"),
            event_type: column("event_type"),
            event_data: column("event_data"),
            event_version: column("event_version"),
        };
        (*flinfo).fn_extra = layout.cast();
    }
    layout
}

v1_function!(pg_finfo__es_fold_step);
/// Transition function of `es_fold(event_store)`; NULL rows are skipped.
///
/// # Safety
/// Called only by the fmgr, as that aggregate's transition function (its SQL declaration
/// fixes the argument types).
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _es_fold_step(fcinfo: FunctionCallInfo) -> Datum {
    let acc = acc(fcinfo, || Acc::new(initial_state(), None, true));
    if !pg_arg_is_null(fcinfo, 1) {
        let row = pg_sys::pg_detoast_datum(pg_getarg_datum_raw(fcinfo, 1).cast_mut_ptr())
            as pg_sys::HeapTupleHeader;
        let layout = &*row_layout(fcinfo, row);
        let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
        tuple.t_len = (*row).t_choice.t_datum.datum_len_ as u32 >> 2;
        tuple.t_data = row;
        let mut values = [Datum::from(0); MAX_COLUMNS];
        let mut nulls = [false; MAX_COLUMNS];
        pg_sys::heap_deform_tuple(
            &mut tuple,
            layout.tupdesc,
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        // A stored event has none, but a row built in the query can.
        if [
            layout.stream_id,
            layout.event_type,
            layout.event_data,
            layout.event_version,
        ]
        .iter()
        .any(|&c| nulls[c])
        {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "event_store: es_fold: an event's stream_id, event_type, event_version and event_data must not be NULL"
            );
        }
        let version = values[layout.event_version].value() as i32;
        jsonb::with_text(values[layout.stream_id], |stream_id| {
            jsonb::with_text(values[layout.event_type], |event_type| {
                jsonb::with_jsonb(values[layout.event_data], |data| {
                    (*acc).use_category(category(stream_id));
                    (*acc).fold(event_type, version, data)
                })
            })
        });
    }
    Datum::from(acc)
}

v1_function!(pg_finfo__es_fold_events_step);
/// Transition function of `_es_fold_events(event_type text, event_version integer,
/// event_data jsonb, start jsonb, stream_id text)`, the state functions' fold: columns instead of rows. `start` (the
/// snapshot to fold on from; NULL for none) and `stream_id` (whose category picks the
/// reducers) are the same for every row and read once, when the group's state is created.
///
/// # Safety
/// Called only by the fmgr, as that aggregate's transition function.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _es_fold_events_step(fcinfo: FunctionCallInfo) -> Datum {
    // 0.1.0's SQL declares this symbol without event_version (four arguments after the
    // state): the library keeps serving it until ALTER EXTENSION UPDATE; its events are
    // all at version 1, as 0.1.0 had no versions to read.
    let legacy = (*fcinfo).nargs == 5;
    let (data_at, start_at, stream_at) = if legacy { (2, 3, 4) } else { (3, 4, 5) };
    let acc = acc(fcinfo, || {
        if pg_arg_is_null(fcinfo, stream_at) {
            error!("event_store: _es_fold_events needs the stream id");
        }
        let rules = jsonb::with_text(pg_getarg_datum_raw(fcinfo, stream_at), |stream_id| {
            reducers::rules(category(stream_id))
        });
        let start = if pg_arg_is_null(fcinfo, start_at) {
            initial_state()
        } else {
            jsonb::with_jsonb(pg_getarg_datum_raw(fcinfo, start_at), |j| j.to_state())
        };
        Acc::new(start, Some((String::new(), rules)), false)
    });
    if pg_arg_is_null(fcinfo, 1)
        || pg_arg_is_null(fcinfo, data_at)
        || (!legacy && pg_arg_is_null(fcinfo, 2))
    {
        return Datum::from(acc);
    }
    let version = if legacy {
        1
    } else {
        pg_getarg_datum_raw(fcinfo, 2).value() as i32
    };
    jsonb::with_text(pg_getarg_datum_raw(fcinfo, 1), |event_type| {
        jsonb::with_jsonb(pg_getarg_datum_raw(fcinfo, data_at), |data| {
            (*acc).fold(event_type, version, data)
        })
    });
    Datum::from(acc)
}

v1_function!(pg_finfo__es_fold_final);
/// Final function of both: NULL when no (non-NULL) event was folded.
///
/// # Safety
/// Called only by the fmgr, as the final function of those aggregates (argument 0 is the
/// state their transition functions made).
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _es_fold_final(fcinfo: FunctionCallInfo) -> Datum {
    if pg_arg_is_null(fcinfo, 0) {
        return pg_return_null(fcinfo);
    }
    let acc = pg_getarg_datum_raw(fcinfo, 0).cast_mut_ptr::<Acc>();
    if (*acc).events == 0 {
        return pg_return_null(fcinfo);
    }
    let mut state = Value::from(&(*acc).state);
    if (*acc).reveal {
        crate::privacy::sealing::reveal(&mut state);
    }
    jsonb::datum(&state)
}

/// A custom reducer, checked and looked up once per query.
struct Reducer {
    oid: pg_sys::Oid,
    flinfo: pg_sys::FmgrInfo,
}

fn check_reducer(oid: pg_sys::Oid, event_type: pg_sys::Oid) {
    // The signature and privilege from the catalog cache: no SQL, so no relation a caller
    // names pg_proc can stand in for the catalog.
    // SAFETY: a syscache lookup whose tuple is released before the block ends; pg_proc's
    // fixed-size columns are read through its Form struct.
    let found = unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            pg_sys::Datum::from(oid),
        );
        if tuple.is_null() {
            None
        } else {
            let p = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_proc>(tuple);
            let args = p.proargtypes.values.as_slice(p.pronargs.max(0) as usize);
            let shape = p.prokind == b'f' as std::ffi::c_char
                && !p.proretset
                && p.pronargs == 2
                && p.prorettype == pg_sys::JSONBOID
                && args[0] == pg_sys::JSONBOID
                && args[1] == event_type;
            pg_sys::ReleaseSysCache(tuple);
            let may = pg_sys::pg_proc_aclcheck(oid, pg_sys::GetUserId(), pg_sys::ACL_EXECUTE)
                == pg_sys::AclResult::ACLCHECK_OK;
            Some((shape, may))
        }
    };
    // SAFETY: format_procedure returns a palloc'd string (a bare oid for a missing
    // function), copied at once.
    let name = || unsafe {
        CStr::from_ptr(pg_sys::format_procedure(oid))
            .to_string_lossy()
            .into_owned()
    };
    match found {
        None => {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
                format!(
                    "event_store: reducer function {} does not exist",
                    u32::from(oid)
                )
            );
        }
        Some((false, _)) => {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!(
                    "event_store: reducer {} must be a function \
                     (state jsonb, event event_store) RETURNS jsonb",
                    name()
                )
            );
        }
        Some((true, false)) => {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("event_store: permission denied for reducer {}", name())
            );
        }
        Some((true, true)) => {}
    }
}

v1_function!(pg_finfo__es_fold_with);
/// Transition function of `es_fold(event_store, regprocedure)`: calls the reducer with the
/// state (`{}` in place of NULL) and the event row upcast; a NULL event leaves the state alone.
///
/// # Safety
/// Called only by the fmgr, as that aggregate's transition function.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _es_fold_with(fcinfo: FunctionCallInfo) -> Datum {
    if pg_arg_is_null(fcinfo, 2) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "event_store: the reducer must not be NULL"
        );
    }
    if pg_arg_is_null(fcinfo, 1) {
        return if pg_arg_is_null(fcinfo, 0) {
            pg_return_null(fcinfo)
        } else {
            pg_getarg_datum_raw(fcinfo, 0)
        };
    }
    let oid = pg_sys::Oid::from(pg_getarg_datum_raw(fcinfo, 2).value() as u32);
    let flinfo = (*fcinfo).flinfo;
    let mut reducer = (*flinfo).fn_extra.cast::<Reducer>();
    if reducer.is_null() || (*reducer).oid != oid {
        check_reducer(oid, pg_sys::get_fn_expr_argtype(flinfo, 1));
        reducer = pg_sys::MemoryContextAllocZero((*flinfo).fn_mcxt, size_of::<Reducer>()).cast();
        (*reducer).oid = oid;
        pg_sys::fmgr_info_cxt(oid, &mut (*reducer).flinfo, (*flinfo).fn_mcxt);
        (*flinfo).fn_extra = reducer.cast();
    }
    let state = if pg_arg_is_null(fcinfo, 0) {
        jsonb::datum(&Value::from(&initial_state()))
    } else {
        pg_getarg_datum_raw(fcinfo, 0)
    };
    let call = pg_sys::palloc0(
        size_of::<pg_sys::FunctionCallInfoBaseData>() + 2 * size_of::<pg_sys::NullableDatum>(),
    )
    .cast::<pg_sys::FunctionCallInfoBaseData>();
    (*call).flinfo = &mut (*reducer).flinfo;
    (*call).nargs = 2;
    (*call).fncollation = pg_sys::InvalidOid;
    let args = (*call).args.as_mut_slice(2);
    args[0] = pg_sys::NullableDatum {
        value: state,
        isnull: false,
    };
    args[1] = pg_sys::NullableDatum {
        // A custom reducer sees personal data as its caller may.
        value: crate::privacy::sealing::reveal_row(crate::catalog::upcast_row(
            pg_getarg_datum_raw(fcinfo, 1),
        )),
        isnull: false,
    };
    let call_reducer = (*reducer)
        .flinfo
        .fn_addr
        .expect("fmgr_info_cxt sets fn_addr or raises an error");
    let result = call_reducer(call);
    if (*call).isnull {
        pg_return_null(fcinfo)
    } else {
        result
    }
}
