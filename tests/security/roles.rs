//! Privileges: what each role may do, PUBLIC nothing, row level security honoured, and a role known
//! by its oid whatever its name.
use super::*;

#[test]
fn writers_cannot_lift_the_servers_limits() {
    let db = TestDb::new("sec_gucs");
    let mut c = db.connect();
    let writer = role(&db, &mut c, "writer", "IN ROLE event_store_writer");
    let mut w = db.connect_as(&writer);
    w.batch_execute("SELECT es_uuidv7()").unwrap(); // loads the library
    for setting in [
        "event_store.max_event_bytes = 2147483647",
        "event_store.max_event_depth = 1000",
        "event_store.projection_timeout = 0",
        "event_store.snapshot_every = 1",
        "event_store.projection_batch_size = 1000000",
    ] {
        assert_eq!(
            sqlstate(w.batch_execute(&format!("SET {setting}"))),
            "42501",
            "{setting}"
        );
    }
    // Set before the library is loaded (without preloading), the value is a placeholder that
    // PostgreSQL drops for a writer when the library defines the setting.
    let mut w = db.connect_as(&writer);
    w.batch_execute("SET event_store.max_event_bytes = 2147483647")
        .ok();
    let big = format!("{{\"a\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    assert_eq!(
        sqlstate(w.query(
            "SELECT * FROM es_append('big-1', 'T', $1::text::jsonb)",
            &[&big]
        )),
        "54000"
    );
}

#[test]
fn public_gets_nothing_of_the_extension() {
    let db = TestDb::new("sec_public_grants");
    let mut c = db.connect();
    let nobody = role(&db, &mut c, "nobody", "");
    // Every member of the extension, from pg_depend, so a new one cannot slip through.
    let leaks: Vec<String> = c
        .query(
            "SELECT d.objid::regprocedure::text FROM pg_depend d
              WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
                AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'event_store')
                AND d.classid = 'pg_proc'::regclass
                AND has_function_privilege($1, d.objid, 'EXECUTE')
             UNION ALL
             SELECT d.objid::regclass::text FROM pg_depend d JOIN pg_class k ON k.oid = d.objid
              WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
                AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'event_store')
                AND d.classid = 'pg_class'::regclass
                AND (CASE WHEN k.relkind = 'S' THEN has_sequence_privilege($1, d.objid, 'SELECT, USAGE, UPDATE')
                          ELSE has_table_privilege($1, d.objid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE') END)",
            &[&nobody],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(leaks, Vec::<String>::new());
    // Nor does a reader get the internals that run as the owner.
    let reader = role(&db, &mut c, "reader", "IN ROLE event_store_reader");
    let mut r = db.connect_as(&reader);
    for sql in [
        "SELECT * FROM _event_store.es_event_ids",
        "SELECT _event_store._es_projection_timer(true)",
        "SELECT _event_store._es_wake_projections(true)",
    ] {
        assert_eq!(sqlstate(r.batch_execute(sql)), "42501", "{sql}");
    }
}

#[test]
fn snapshots_of_streams_hidden_by_row_level_security_are_hidden_too() {
    let db = TestDb::new("sec_snapshots");
    let mut c = db.connect();
    let tenant = role(&db, &mut c, "tenant", "IN ROLE event_store_reader");
    // Row level security does not apply to a BYPASSRLS role: it may see every snapshot.
    let reader = role(
        &db,
        &mut c,
        "reader",
        "BYPASSRLS IN ROLE event_store_reader",
    );
    c.batch_execute(&format!(
        "SELECT es_append('a-1', 'T', '{{\"n\": 1}}'); SELECT es_append('b-1', 'T', '{{\"n\": 2}}');
         SELECT es_snapshot('a-1'); SELECT es_snapshot('b-1');
         ALTER TABLE event_store ENABLE ROW LEVEL SECURITY;
         CREATE POLICY tenant_a ON event_store FOR SELECT TO {tenant} USING (stream_id LIKE 'a-%');"
    ))
    .unwrap();
    let mut t = db.connect_as(&tenant);
    assert_eq!(count(&mut t, "SELECT count(*) FROM es_snapshots"), 0);
    assert_eq!(count(&mut t, "SELECT count(*) FROM event_store"), 1);
    let mut r = db.connect_as(&reader);
    assert_eq!(count(&mut r, "SELECT count(*) FROM es_snapshots"), 2);
}

// ---- Issue 22, item 6: a role is identified by its oid, never by its name as text.

#[test]
fn roles_with_mixed_case_or_spaces_in_their_names_keep_their_identity() {
    let db = TestDb::new("sec_role_names");
    let mut c = db.connect();
    let lower = format!("{}_mixed", db.name);
    let mixed = format!("\"{}_Mixed\"", db.name);
    let spaced = format!("\"{} spaced\"", db.name);
    for r in [&lower, &mixed, &spaced] {
        c.batch_execute(&format!(
            "CREATE ROLE {r} IN ROLE event_store_reader; GRANT CREATE ON SCHEMA public TO {r}"
        ))
        .unwrap();
    }
    let mut m = db.connect_as(&mixed);
    m.batch_execute("SELECT es_save_checkpoint('c-mixed', 1)")
        .unwrap();
    let owner: bool = c
        .query_one(
            &format!(
                "SELECT owner = '{}'::regrole FROM es_checkpoints WHERE consumer = 'c-mixed'",
                mixed.replace('\'', "''")
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        owner,
        "the checkpoint belongs to another role than its saver"
    );
    // The lower-case namesake may not move it; its saver may.
    let mut l = db.connect_as(&lower);
    assert_eq!(
        sqlstate(l.batch_execute("SELECT es_save_checkpoint('c-mixed', 2)")),
        "42501"
    );
    m.batch_execute("SELECT es_save_checkpoint('c-mixed', 3)")
        .unwrap();
    // A name with a space works everywhere a role is recorded.
    let mut s = db.connect_as(&spaced);
    s.batch_execute(
        "SELECT es_save_checkpoint('c-spaced', 1);
         SELECT es_save_checkpoint('c-spaced', 2);
         CREATE FUNCTION public.sp_h(e event_store) RETURNS void LANGUAGE sql AS $$ SELECT $$;
         SELECT es_create_projection('spaced', 'public.sp_h(event_store)');
         SELECT es_pause_projection('spaced');",
    )
    .unwrap();
    m.batch_execute(
        "CREATE FUNCTION public.mx_h(e event_store) RETURNS void LANGUAGE sql AS $$ SELECT $$;
         SELECT es_create_projection('mixed', 'public.mx_h(event_store)');
         SELECT es_pause_projection('mixed');",
    )
    .unwrap();
    assert_eq!(
        sqlstate(l.batch_execute("SELECT es_pause_projection('mixed')")),
        "42501"
    );
    let owners: Vec<(String, bool)> = c
        .query(
            &format!(
                "SELECT name, owner = CASE name WHEN 'mixed' THEN '{}' ELSE '{}' END::regrole
                   FROM es_projection_state ORDER BY name",
                mixed, spaced
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        owners,
        vec![("mixed".into(), true), ("spaced".into(), true)]
    );
}
