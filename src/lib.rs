//! event_store: an append-only, tamper-evident event store inside PostgreSQL.
//!
//! Each module is one capability; the SQL that is clearer as SQL lives in `sql/` and is
//! pulled in here in dependency order.
use pgrx::prelude::*;

/// The V1 calling-convention marker the fmgr looks up (what `#[pg_extern]` emits), for the
/// functions written against the fmgr directly because they read datums in place.
macro_rules! v1_function {
    ($finfo:ident) => {
        #[no_mangle]
        pub extern "C" fn $finfo() -> &'static pg_sys::Pg_finfo_record {
            const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}

// The rule engine and the fold state, under the names the modules here use for them.
use event_store_core::{reducer, state};

mod aggregate;
mod append;
mod catalog;
mod context;
mod diff;
mod digest;
mod errors;
mod feed;
mod fold;
mod guards;
mod guc;
mod ids;
mod integrity;
mod jsonb;
mod notify;
mod personal;
mod plans;
mod projection;
mod projection_worker;
mod reducers;
mod registry;
mod schema;
mod shmem;
mod stream_scan;
mod validate;

::pgrx::pg_module_magic!(name, version);

/// The schema of the internals (`#[pg_extern(schema = "_event_store")]`). sql/schema.sql
/// creates it first, without IF NOT EXISTS: a schema someone made beforehand fails the install.
#[pg_schema]
mod _event_store {}

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/append.sql", name = "append", requires = ["schema"]);
extension_sql_file!(
    "../sql/read.sql",
    name = "read",
    requires = ["schema", "catalog", "personal"]
);
extension_sql_file!(
    "../sql/feed.sql",
    name = "feed",
    requires = [
        "schema",
        "personal",
        feed::_es_feed_horizon,
        feed::_es_feed_holders,
        feed::_es_consumer_group_member,
        validate::_es_check_feed_read
    ]
);
extension_sql_file!("../sql/guards.sql", name = "guards", requires = ["schema"]);
extension_sql_file!(
    "../sql/projections.sql",
    name = "projections",
    requires = [
        "feed",
        projection::_es_run_as,
        projection::_es_setting_int,
        projection::_es_projection_timer,
        projection_worker::_es_wake_projections,
        context::_es_calling_role_id
    ]
);
extension_sql_file!(
    "../sql/fold.sql",
    name = "fold",
    requires = [
        "schema",
        validate::_es_check_reducer,
        fold::_es_take_snapshot,
        "retention"
    ]
);
extension_sql_file!(
    "../sql/hypertable.sql",
    name = "hypertable",
    requires = ["guards"]
);
extension_sql_file!(
    "../sql/catalog.sql",
    name = "catalog",
    requires = [
        "fold",
        catalog::_es_check_event_type,
        catalog::_es_check_upcast,
        catalog::_es_check_catalog_mode,
        context::_es_calling_role
    ]
);
extension_sql_file!(
    "../sql/checkpoints.sql",
    name = "checkpoints",
    requires = [
        "feed",
        context::_es_calling_role_id,
        validate::_es_check_append
    ]
);
extension_sql_file!(
    "../sql/metrics.sql",
    name = "metrics",
    requires = [
        "projections",
        "retention",
        feed::_es_feed_horizon,
        feed::_es_feed_holders
    ]
);
extension_sql_file!("../sql/digest.sql", name = "digest", requires = ["schema"]);
extension_sql_file!(
    "../sql/personal.sql",
    name = "personal",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/privacy.sql",
    name = "privacy",
    requires = [
        "personal",
        personal::_es_subject_hash,
        "catalog",
        "read",
        fold::_es_state_for_subject,
        append::_es_record,
        catalog::_es_subject_of,
        context::_es_calling_role
    ]
);
extension_sql_file!(
    "../sql/retention.sql",
    name = "retention",
    requires = [
        "schema",
        fold::_es_snapshot_at,
        append::_es_record,
        context::_es_calling_role,
        projection_worker::_es_wake_projections
    ]
);
extension_sql_file!(
    "../sql/integrity.sql",
    name = "integrity",
    requires = ["schema"]
);
extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::register();
    // SAFETY: check_stack_depth raises a PostgreSQL error (54001) when the stack is too deep.
    state::set_stack_check(|| unsafe { pg_sys::check_stack_depth() });
    catalog::register_invalidation();
    // SAFETY: a flag PostgreSQL sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        shmem::init();
        projection_worker::register_launcher();
    }
}
