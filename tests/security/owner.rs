//! Code that runs as the extension's owner (SECURITY DEFINER functions, the worker, the install and
//! update scripts) runs nothing a database owner, a writer or anyone else put in its way.
use super::*;

#[test]
fn objects_in_public_or_pg_temp_change_nothing_owner_run_code_does() {
    let db = TestDb::new("sec_public");
    let mut c = db.connect();
    let dbo = role(&db, &mut c, "dbo", "");
    let writer = role(&db, &mut c, "writer", "IN ROLE event_store_writer");
    // A database owner owns public (PostgreSQL 15), so may create anything in it.
    c.batch_execute(&format!("ALTER DATABASE {} OWNER TO {dbo}", db.name))
        .unwrap();
    let mut o = db.connect_as(&dbo);
    let trap = |name: &str, args: &str, ret: &str| {
        format!(
            "CREATE FUNCTION public.{name}({args}) RETURNS {ret} LANGUAGE plpgsql AS
                 $$BEGIN RAISE EXCEPTION 'pwned as %', current_user; END$$;"
        )
    };
    o.batch_execute(
        &[
            trap("clock_timestamp", "", "timestamptz"),
            trap("nextval", "text", "bigint"),
            trap("now", "", "timestamptz"),
            trap("jsonb_build_object", "text, text", "jsonb"),
            trap("split_part", "text, text, bigint", "text"),
            trap("coalesce_", "jsonb", "jsonb"),
            // Better matches than pg_catalog's anyarray forms, for the DCB condition's SQL.
            trap("cardinality", "text[]", "integer"),
            trap("string_to_array", "text, text", "text[]"),
        ]
        .concat(),
    )
    .unwrap();
    let mut w = db.connect_as(&writer);
    for _ in 0..2 {
        w.batch_execute("SET search_path = public, pg_catalog")
            .unwrap();
        w.query("SELECT * FROM es_append('user-1', 'T', '{\"a\": 1}')", &[])
            .unwrap();
        w.query("SELECT * FROM es_append_batch('user-1', '[{\"type\": \"T\", \"data\": {}, \"id\": \"7c2a1f7e-0000-4000-8000-000000000001\"}]')", &[]).unwrap();
        // A conditional append, on tags and on types: its check runs as the owner.
        for condition in [
            r#"{"fail_if_events_match": {"items": [{"types": ["T"], "tags": ["t"]}]}, "after": 1000}"#,
            r#"{"fail_if_events_match": {"items": [{"types": ["T"]}]}, "after": 1000}"#,
        ] {
            w.query(
                "SELECT es_dcb_append('[{\"type\": \"T\", \"data\": {}, \"tags\": [\"t\"]}]', $1::text::jsonb)",
                &[&condition],
            )
            .unwrap();
        }
        w.batch_execute("RESET search_path").unwrap();
    }
    // A reader's temp tables named like the extension's change no answer of es_verify,
    // es_stream or the state functions.
    let reader = role(&db, &mut c, "reader", "IN ROLE event_store_reader");
    let mut r = db.connect_as(&reader);
    r.batch_execute(
        "CREATE TEMP TABLE es_streams (LIKE public.es_streams);
         INSERT INTO es_streams (stream_id, version) VALUES ('ghost-1', 7);
         CREATE TEMP TABLE event_store (LIKE public.event_store);
         SET search_path = pg_temp, public, pg_catalog",
    )
    .unwrap();
    assert_eq!(count(&mut r, "SELECT count(*) FROM public.es_verify()"), 0);
    assert_eq!(
        count(&mut r, "SELECT count(*) FROM public.es_stream('user-1')"),
        3
    );
    let state: serde_json::Value = r
        .query_one("SELECT public.es_state('user-1')", &[])
        .unwrap()
        .get(0);
    assert_eq!(state, serde_json::json!({"a": 1}));
}

#[test]
fn a_shadowed_pg_proc_does_not_pass_a_reducer_check() {
    let cluster = Cluster::start("proc");
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE EXTENSION event_store; CREATE ROLE proc_reader IN ROLE event_store_reader;
         SELECT es_append('s-1', 'T', '{}')",
    )
    .unwrap();
    let mut r = cluster.connect();
    r.batch_execute(
        "SET ROLE proc_reader;
         CREATE TEMP VIEW pg_proc AS
             SELECT p.oid, 'f'::\"char\" AS prokind, false AS proretset, 2::int2 AS pronargs,
                    'jsonb'::regtype::oid AS prorettype,
                    (concat_ws(' ', 'jsonb'::regtype::oid, 'event_store'::regtype::oid))::oidvector AS proargtypes
               FROM pg_catalog.pg_proc p;
         SET search_path = pg_temp, public, pg_catalog",
    )
    .unwrap();
    let got = r.query("SELECT es_state('s-1', 'int8pl(bigint,bigint)')", &[]);
    assert_eq!(sqlstate(got), "42804");
    assert!(cluster.alive(&mut c));
}

/// A database owner's traps in public, laid before the extension is installed: neither the
/// installing superuser's script nor the (superuser) projection worker may call them.
#[test]
fn traps_laid_before_install_never_run_as_a_superuser() {
    let db = TestDb::empty("sec_traps");
    let mut c = db.connect();
    let dbo = role(&db, &mut c, "dbo", "");
    let app = role(&db, &mut c, "app", "IN ROLE event_store_writer");
    c.batch_execute(&format!("ALTER DATABASE {} OWNER TO {dbo}", db.name))
        .unwrap();
    let mut o = db.connect_as(&dbo);
    o.batch_execute(
        "CREATE TABLE public.fired (who text, what text);
         GRANT INSERT ON public.fired TO PUBLIC;
         CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE sql AS
             $$ INSERT INTO public.fired VALUES (current_user, 'format'); SELECT pg_catalog.format($1, $2) $$;
         CREATE FUNCTION public.format(text, regprocedure) RETURNS text LANGUAGE sql AS
             $$ INSERT INTO public.fired VALUES (current_user, 'format'); SELECT pg_catalog.format($1, $2) $$;
         CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE sql AS
             $$ INSERT INTO public.fired VALUES (current_user, 'quote_ident'); SELECT pg_catalog.quote_ident($1::text) $$;
         CREATE FUNCTION public.current_database() RETURNS name LANGUAGE sql AS
             $$ INSERT INTO public.fired VALUES (current_user, 'current_database'); SELECT pg_catalog.current_database() $$;",
    )
    .unwrap();
    if timescaledb() {
        c.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
            .unwrap();
    }
    c.batch_execute(&format!(
        "CREATE EXTENSION event_store;
         GRANT CREATE ON SCHEMA public TO {app};
         SET ROLE {app};
         CREATE TABLE public.seen (n int);
         CREATE FUNCTION public.h(e event_store) RETURNS void LANGUAGE sql AS $$ INSERT INTO public.seen VALUES (1) $$;
         SELECT es_create_projection('p', 'public.h(event_store)');
         RESET ROLE;
         SELECT es_append('s-1', 'T', '{{}}');"
    ))
    .unwrap();
    until_projected(&mut c, None, 30, "the projection never ran", |c| {
        count(c, "SELECT count(*) FROM public.seen") > 0
    });
    let fired: Vec<(String, String)> = c
        .query("SELECT who, what FROM public.fired", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(fired, vec![]);
}

// ---- Issue 22, item 1: a database owner runs no code as the extension's owner.

/// A schema `traps` of the database owner's, where every trap records who ran it and what.
const TRAPS: &str = "
    CREATE SCHEMA traps;
    CREATE TABLE traps.fired (who name, what text);
    GRANT USAGE ON SCHEMA traps TO PUBLIC;
    GRANT INSERT ON traps.fired TO PUBLIC;
    CREATE FUNCTION traps.fire(what text) RETURNS boolean LANGUAGE sql AS
        $$ INSERT INTO traps.fired VALUES (current_user, what); SELECT true $$;
    -- Matches the grants' `refclassid = 'pg_extension'::regclass` better than pg_catalog's =.
    CREATE FUNCTION public.trap_eq(oid, regclass) RETURNS boolean LANGUAGE sql AS
        $$ SELECT traps.fire('=(oid, regclass)') AND $1 OPERATOR(pg_catalog.=) $2::oid $$;
    CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.trap_eq);
    CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE sql AS
        $$ SELECT traps.fire('format') :: text || pg_catalog.format($1, $2) $$;";

/// Overloads next to the functions owner-run code calls, better matches for what 0.2.0 passed.
const OVERLOADS: &str = "
    CREATE FUNCTION public._es_check_append(text, text, text, integer) RETURNS void LANGUAGE sql AS
        $$ SELECT traps.fire('_es_check_append') $$;
    CREATE FUNCTION public._es_run_as(regprocedure, regrole, event_store) RETURNS boolean LANGUAGE sql AS
        $$ SELECT traps.fire('_es_run_as') $$;
    CREATE FUNCTION public._es_state_with(text, text, bigint, regprocedure) RETURNS jsonb LANGUAGE sql AS
        $$ SELECT traps.fire('_es_state_with') :: text :: jsonb $$;";

fn fired(c: &mut postgres::Client) -> Vec<(String, String)> {
    c.query("SELECT who::text, what FROM traps.fired ORDER BY 1, 2", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A custom reducer (a superuser's, in public) for the state functions' SQL path.
const REDUCER: &str = "
    CREATE FUNCTION public.keep_last(s jsonb, e event_store) RETURNS jsonb LANGUAGE sql AS
        $$ SELECT e.event_data $$;
    GRANT EXECUTE ON FUNCTION public.keep_last(jsonb, event_store) TO PUBLIC;";

/// Everything each role does with the store, through the functions in `schema`; the reader
/// saves checkpoint `position`.
fn use_the_store(db: &TestDb, schema: &str, writer: &str, reader: &str, position: i64) {
    let mut w = db.connect_as(writer);
    w.batch_execute(&format!(
        "SET search_path = {schema};
         SELECT * FROM es_append('acct-1', 'Opened', '{{\"n\": 1}}');
         SELECT * FROM es_append_batch('acct-1', '[{{\"type\": \"Deposited\", \"data\": {{\"n\": 2}}}}]');
         SELECT * FROM es_append_multi('[{{\"stream_id\": \"acct-2\", \"events\": [{{\"type\": \"Opened\", \"data\": {{}}}}]}}]');"
    ))
    .unwrap();
    let mut r = db.connect_as(reader);
    r.batch_execute(&format!(
        "SET search_path = {schema};
         SELECT es_save_checkpoint('mailer', {position});
         SELECT count(*) FROM es_read_all(0);
         SELECT count(*) FROM es_read_category('acct', 0, 10, 0, 2);
         SELECT count(*) FROM es_stream('acct-1', upcast => true);
         SELECT es_state('acct-1'), es_state_at_version('acct-1', 1), es_stream_version('acct-1');
         SELECT es_state('acct-1', '{schema}.keep_last(jsonb, {schema}.event_store)'::regprocedure);
         SELECT count(*) FROM es_verify();
         SELECT es_digest();
         SELECT count(*) FROM es_catalog();
         SELECT es_metrics_prometheus();
         SELECT count(*) FROM es_projections;"
    ))
    .unwrap();
}

#[test]
fn a_database_owner_runs_nothing_as_the_extension_owner() {
    let db = TestDb::empty("sec_dbo");
    let mut c = db.connect();
    let dbo = role(&db, &mut c, "dbo", "");
    // On managed PostgreSQL the application's role owns its database, and so public.
    c.batch_execute(&format!("ALTER DATABASE {} OWNER TO {dbo}", db.name))
        .unwrap();
    if timescaledb() {
        c.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
            .unwrap();
    }
    let mut o = db.connect_as(&dbo);
    o.batch_execute(TRAPS).unwrap();
    if timescaledb() {
        // A better match than TimescaleDB's own for a call by name in its schema (public).
        o.batch_execute(
            "CREATE FUNCTION public.drop_chunks(relation regclass, older_than timestamptz) RETURNS SETOF text
                 LANGUAGE sql AS $$ SELECT traps.fire('drop_chunks') :: text $$;",
        )
        .unwrap();
    }
    c.batch_execute("CREATE EXTENSION event_store").unwrap();
    c.batch_execute(REDUCER).unwrap();
    let writer = role(&db, &mut c, "writer", "IN ROLE event_store_writer");
    let reader = role(&db, &mut c, "reader", "IN ROLE event_store_reader");
    if timescaledb() {
        // Old events in chunks of their own, for retention below.
        c.batch_execute("SELECT set_chunk_time_interval('event_store', interval '1 second')")
            .unwrap();
    }
    o.batch_execute(OVERLOADS).unwrap();
    // A projection of the writer's, run by the worker or by a superuser's pass.
    c.batch_execute(&format!(
        "GRANT CREATE ON SCHEMA public TO {writer};
         SET ROLE {writer};
         CREATE TABLE public.seen (n int);
         CREATE FUNCTION public.seen(e event_store) RETURNS void LANGUAGE sql
             BEGIN ATOMIC INSERT INTO public.seen VALUES (1); END;
         SELECT es_create_projection('seen', 'public.seen(event_store)');
         RESET ROLE;"
    ))
    .unwrap();
    use_the_store(&db, "public", &writer, &reader, 1);
    until_projected(&mut c, None, 30, "the projection never ran", |c| {
        count(c, "SELECT count(*) FROM public.seen") >= 3
    });
    assert_eq!(fired(&mut c), vec![], "traps in public");

    // The schema renamed under the store, with stubs under the old name.
    o.batch_execute(
        "ALTER SCHEMA public RENAME TO moved;
         CREATE SCHEMA public;
         CREATE TABLE public.es_checkpoints (consumer text, position bigint, owner regrole, saved_at timestamptz);
         CREATE TABLE public.es_streams (stream_id text, version bigint);
         CREATE FUNCTION public._es_calling_role() RETURNS name LANGUAGE sql AS
             $$ SELECT traps.fire('renamed: _es_calling_role') :: text :: name $$;
         CREATE FUNCTION public.es_upcast(e moved.event_store) RETURNS moved.event_store LANGUAGE sql AS
             $$ SELECT traps.fire('renamed: es_upcast'); SELECT e $$;
         CREATE FUNCTION public._es_feed_horizon() RETURNS bigint LANGUAGE sql AS
             $$ SELECT traps.fire('renamed: _es_feed_horizon') :: int :: bigint $$;
         GRANT USAGE, CREATE ON SCHEMA public TO PUBLIC;",
    )
    .unwrap();
    c.batch_execute("SET search_path = moved").unwrap();
    use_the_store(&db, "moved", &writer, &reader, 2);
    until_projected(
        &mut c,
        None,
        30,
        "the projection stopped after the rename",
        |c| count(c, "SELECT count(*) FROM moved.seen") >= 6,
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT max(position) FROM _event_store.es_checkpoints WHERE consumer = 'mailer'"
        ),
        2
    );
    // Retention over whole chunks on TimescaleDB (TimescaleDB is in moved now, with the
    // owner's drop_chunks beside its own), in batches otherwise: after the last event's
    // one-second chunk has ended a second ago.
    std::thread::sleep(Duration::from_millis(2200));
    let removed: serde_json::Value = c
        .query_one("SELECT es_apply_retention(interval '1 second')", &[])
        .unwrap()
        .get(0);
    assert!(
        removed["events_removed"].as_i64().unwrap() >= 6,
        "{removed}"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    assert_eq!(fired(&mut c), vec![]);
}

/// The same traps laid before ALTER EXTENSION UPDATE, from 0.2.0 and from 0.1.0 (their SQL
/// built from the git history by scripts/old-version.sh, installed before the traps).
#[test]
fn traps_laid_before_an_update_never_run() {
    traps_before_update_from("0.2.0");
}

#[test]
fn traps_laid_before_an_update_from_0_1_0_never_run() {
    traps_before_update_from("0.1.0");
}

fn traps_before_update_from(old: &str) {
    let db = TestDb::empty(&format!("sec_dbo_update_{}", old.replace('.', "_")));
    let mut c = db.connect();
    let dbo = role(&db, &mut c, "dbo", "");
    c.batch_execute(&format!("ALTER DATABASE {} OWNER TO {dbo}", db.name))
        .unwrap();
    if timescaledb() {
        c.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
            .unwrap();
    }
    c.batch_execute(&format!(
        "CREATE EXTENSION event_store VERSION '{old}';
         SELECT es_append('acct-1', 'Opened', '{{}}');"
    ))
    .unwrap();
    c.batch_execute(REDUCER).unwrap();
    let writer = role(&db, &mut c, "writer", "IN ROLE event_store_writer");
    let reader = role(&db, &mut c, "reader", "IN ROLE event_store_reader");
    let mut o = db.connect_as(&dbo);
    o.batch_execute(TRAPS).unwrap();
    c.batch_execute("ALTER EXTENSION event_store UPDATE")
        .unwrap();
    o.batch_execute(OVERLOADS).unwrap();
    use_the_store(&db, "public", &writer, &reader, 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    assert_eq!(fired(&mut c), vec![]);
}

/// A create_hypertable of the database owner's next to TimescaleDB's (both in public): the
/// install refuses to call either, rather than risk the wrong one.
#[test]
fn a_foreign_create_hypertable_stops_the_install() {
    if !timescaledb() {
        return;
    }
    let db = TestDb::empty("sec_dbo_tsdb");
    let mut c = db.connect();
    let dbo = role(&db, &mut c, "dbo", "");
    c.batch_execute(&format!(
        "ALTER DATABASE {} OWNER TO {dbo}; SET client_min_messages = warning; CREATE EXTENSION timescaledb",
        db.name
    ))
    .unwrap();
    let mut o = db.connect_as(&dbo);
    o.batch_execute(TRAPS).unwrap();
    o.batch_execute(
        "CREATE FUNCTION public.create_hypertable(regclass, name, chunk_time_interval interval,
                                                  create_default_indexes boolean, migrate_data boolean)
             RETURNS boolean LANGUAGE sql AS $$ SELECT traps.fire('create_hypertable') $$;",
    )
    .unwrap();
    assert_eq!(
        sqlstate(c.batch_execute("CREATE EXTENSION event_store")),
        "42723"
    );
    o.batch_execute(
        "DROP FUNCTION public.create_hypertable(regclass, name, interval, boolean, boolean)",
    )
    .unwrap();
    c.batch_execute("CREATE EXTENSION event_store").unwrap();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'event_store'"),
        1
    );
    assert_eq!(fired(&mut c), vec![]);
}
