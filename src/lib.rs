//! event_store: an append-only, tamper-evident event store inside PostgreSQL.
//!
//! One folder per capability (append, read, fold, projections, integrity, privacy, catalog, dcb),
//! mirrored by `core/src/` (their logic without PostgreSQL) and `sql/` (what is clearer as
//! SQL, pulled in here in dependency order), plus `pg/` for PostgreSQL plumbing. Retention and
//! metrics are SQL only.
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

mod append;
mod catalog;
mod dcb;
mod fold;
mod integrity;
mod pg;
mod privacy;
mod projections;
mod read;

::pgrx::pg_module_magic!(name, version);

/// The schema of the internals (`#[pg_extern(schema = "_event_store")]`). sql/schema.sql
/// creates it first, without IF NOT EXISTS: a schema someone made beforehand fails the install.
#[pg_schema]
mod _event_store {}

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/append/append.sql",
    name = "append",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/read/streams.sql",
    name = "streams",
    requires = ["schema", "catalog", "sealing"]
);
extension_sql_file!(
    "../sql/read/feed.sql",
    name = "feed",
    requires = [
        "schema",
        "sealing",
        read::feed::_es_feed_horizon,
        read::feed::_es_feed_holders,
        read::feed::_es_consumer_group_member,
        read::feed::_es_check_feed_read,
        read::feed::_es_check_feed_isolation
    ]
);
extension_sql_file!(
    "../sql/dcb/dcb.sql",
    name = "dcb",
    requires = ["schema", "sealing", "feed"]
);
extension_sql_file!(
    "../sql/integrity/append_only.sql",
    name = "append_only",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/projections/projections.sql",
    name = "projections",
    requires = [
        "feed",
        projections::handlers::_es_run_as,
        projections::handlers::_es_setting_int,
        projections::handlers::_es_projection_timer,
        projections::pool::_es_wake_projections,
        projections::pool::_es_worker_state,
        pg::caller::_es_calling_role_id
    ]
);
extension_sql_file!(
    "../sql/fold/fold.sql",
    name = "fold",
    requires = [
        "schema",
        fold::reducers::_es_check_reducer,
        fold::time_travel::_es_take_snapshot,
        "retention"
    ]
);
extension_sql_file!(
    "../sql/hypertable.sql",
    name = "hypertable",
    requires = ["append_only"]
);
extension_sql_file!(
    "../sql/catalog/catalog.sql",
    name = "catalog",
    requires = [
        "fold",
        catalog::_es_check_event_type,
        catalog::_es_check_upcast,
        catalog::_es_check_catalog_mode,
        pg::caller::_es_calling_role
    ]
);
extension_sql_file!(
    "../sql/read/checkpoints.sql",
    name = "checkpoints",
    requires = [
        "feed",
        pg::caller::_es_calling_role_id,
        append::_es_check_append
    ]
);
extension_sql_file!(
    "../sql/metrics/metrics.sql",
    name = "metrics",
    requires = [
        "projections",
        "retention",
        read::feed::_es_feed_horizon,
        read::feed::_es_feed_holders
    ]
);
extension_sql_file!(
    "../sql/integrity/digest.sql",
    name = "digest",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/privacy/sealing.sql",
    name = "sealing",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/privacy/export_and_erasure.sql",
    name = "export_and_erasure",
    requires = [
        "sealing",
        privacy::sealing::_es_subject_hash,
        "catalog",
        "streams",
        fold::time_travel::_es_state_for_subject,
        append::record::_es_record,
        catalog::_es_subject_of,
        pg::caller::_es_calling_role
    ]
);
extension_sql_file!(
    "../sql/retention/retention.sql",
    name = "retention",
    requires = [
        "schema",
        fold::time_travel::_es_snapshot_at,
        append::record::_es_record,
        pg::caller::_es_calling_role,
        projections::pool::_es_wake_projections
    ]
);
extension_sql_file!(
    "../sql/integrity/verify.sql",
    name = "verify",
    requires = ["schema"]
);
extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    pg::settings::register();
    // SAFETY: check_stack_depth raises a PostgreSQL error (54001) when the stack is too deep.
    event_store_core::json::state::set_stack_check(|| unsafe { pg_sys::check_stack_depth() });
    pg::relcache::register();
    // SAFETY: a flag PostgreSQL sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg::shmem::init(&[
            projections::pool::AREA,
            read::replication::AREA,
            append::watermarks::AREA,
        ]);
        projections::launcher::register();
    }
}
