//! Append-only enforcement for every role, and tamper evidence for what a superuser can
//! still do with triggers disabled.
use event_store_testing::*;

fn seed(c: &mut postgres::Client, streams: &[&str], per_stream: i64) {
    for s in streams {
        for i in 1..=per_stream {
            c.query(
                "SELECT * FROM es_append($1, 'Step', jsonb_build_object('i', $2::bigint))",
                &[s, &i],
            )
            .unwrap();
        }
    }
}

const MUTATIONS: [&str; 10] = [
    "UPDATE event_store SET event_data = '{}'",
    "DELETE FROM event_store",
    "TRUNCATE event_store",
    "UPDATE _event_store.es_streams SET version = 99",
    "DELETE FROM _event_store.es_streams",
    "TRUNCATE _event_store.es_streams",
    "INSERT INTO event_store SELECT * FROM event_store LIMIT 1",
    "INSERT INTO _event_store.es_streams (stream_id) VALUES ('forged')",
    // The registry's public face, a view, passes on nothing either.
    "UPDATE es_streams SET version = 99",
    "INSERT INTO es_streams (stream_id) VALUES ('forged')",
];

#[test]
fn owner_cannot_update_delete_or_truncate() {
    let db = TestDb::new("owner");
    let mut c = db.connect();
    seed(&mut c, &["a-1", "a-2"], 3);
    for sql in &MUTATIONS[..6] {
        assert_eq!(sqlstate(c.batch_execute(sql)), "ES003", "{sql}");
    }
    // A non-superuser owner is stopped by the same triggers.
    c.batch_execute("CREATE ROLE es_owner_t; GRANT USAGE ON SCHEMA _event_store TO es_owner_t; ALTER TABLE event_store OWNER TO es_owner_t; ALTER TABLE _event_store.es_streams OWNER TO es_owner_t").unwrap();
    c.batch_execute("SET ROLE es_owner_t").unwrap();
    for sql in &MUTATIONS[..6] {
        assert_eq!(sqlstate(c.batch_execute(sql)), "ES003", "owner: {sql}");
    }
    c.batch_execute("RESET ROLE; ALTER TABLE event_store OWNER TO postgres; ALTER TABLE _event_store.es_streams OWNER TO postgres; REVOKE USAGE ON SCHEMA _event_store FROM es_owner_t; DROP ROLE es_owner_t").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 6);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
}

#[test]
fn granted_roles_cannot_write_around_es_append() {
    let db = TestDb::new("grants");
    let mut c = db.connect();
    seed(&mut c, &["g-1"], 2);
    c.batch_execute(
        "CREATE ROLE es_w_t; GRANT event_store_writer TO es_w_t; CREATE ROLE es_r_t; GRANT event_store_reader TO es_r_t;",
    )
    .unwrap();
    for role in ["es_w_t", "es_r_t"] {
        let mut r = db.connect_as(role);
        for sql in MUTATIONS {
            assert_eq!(sqlstate(r.batch_execute(sql)), "42501", "{role}: {sql}");
        }
        for sql in [
            "SELECT nextval('_event_store.es_global_position_seq')",
            "SELECT es_enable_hypertable()",
        ] {
            assert_eq!(sqlstate(r.batch_execute(sql)), "42501", "{role}: {sql}");
        }
        // Both may read.
        assert_eq!(count(&mut r, "SELECT count(*) FROM es_stream('g-1')"), 2);
        assert_eq!(count(&mut r, "SELECT count(*) FROM es_verify()"), 0);
    }
    let mut w = db.connect_as("es_w_t");
    w.query("SELECT * FROM es_append('g-1', 'T', '{}')", &[])
        .unwrap();
    let mut r = db.connect_as("es_r_t");
    assert_eq!(
        sqlstate(r.query("SELECT * FROM es_append('g-1', 'T', '{}')", &[])),
        "42501"
    );
    drop((w, r));
    c.batch_execute("DROP ROLE es_w_t; DROP ROLE es_r_t")
        .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 3);
}

#[test]
fn superuser_tampering_is_detected_by_es_verify() {
    let db = TestDb::new("tamper");
    let mut c = db.connect();
    seed(
        &mut c,
        &[
            "mod-1", "del-1", "ins-1", "swap-1", "tail-1", "ok-1", "rehash-1",
        ],
        4,
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);

    // What privileges cannot stop: a superuser with triggers switched off.
    c.batch_execute(
        r#"
        SET session_replication_role = replica;
        UPDATE event_store SET event_data = '{"i": 100}' WHERE stream_id = 'mod-1' AND stream_version = 2;
        DELETE FROM event_store WHERE stream_id = 'del-1' AND stream_version = 3;
        INSERT INTO event_store (global_position, event_id, stream_id, stream_version, event_type, event_data, metadata, created_at, hash)
            SELECT global_position + 1000, gen_random_uuid(), stream_id, 2, 'Forged', '{}', '{}', created_at, hash
              FROM event_store WHERE stream_id = 'ins-1' AND stream_version = 2;
        UPDATE event_store SET stream_version = 5 - stream_version WHERE stream_id = 'swap-1' AND stream_version IN (2, 3);
        DELETE FROM event_store WHERE stream_id = 'tail-1' AND stream_version = 4;
        -- Rewriting an event *and* its hash breaks the link to the next event.
        UPDATE event_store e SET event_data = '{"i": 200}',
               hash = _event_store._es_event_hash(p.hash, e.event_id, e.stream_id, e.stream_version, e.global_position,
                                     e.event_type, e.event_version, e.created_at, '{"i": 200}', e.metadata::text)
          FROM event_store p
         WHERE e.stream_id = 'rehash-1' AND e.stream_version = 2 AND p.stream_id = 'rehash-1' AND p.stream_version = 1;
        RESET session_replication_role;
        "#,
    )
    .unwrap();

    let found: Vec<(String, Option<i64>, String)> = c
        .query(
            "SELECT stream_id, stream_version, problem FROM es_verify() ORDER BY 1, 2, 3",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(String, Option<i64>, String)> = [
        ("del-1", Some(3), "deleted"),
        ("ins-1", Some(2), "inserted"),
        // The forged row's position was never handed out by the sequence.
        ("ins-1", Some(2), "position"),
        ("mod-1", Some(2), "modified"),
        ("rehash-1", Some(3), "modified"),
        ("swap-1", Some(2), "modified"),
        ("swap-1", Some(3), "modified"),
        // Version 4 chains from the hash that used to be at version 3.
        ("swap-1", Some(4), "modified"),
        ("tail-1", Some(4), "deleted"),
    ]
    .iter()
    .map(|(s, v, p)| (s.to_string(), *v, p.to_string()))
    .collect();
    assert_eq!(found, want);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify('ok-1')"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify('mod-1')"), 1);
}

#[test]
fn registry_tampering_is_detected() {
    let db = TestDb::new("registry");
    let mut c = db.connect();
    seed(&mut c, &["r-1", "r-2", "r-3"], 2);
    c.batch_execute(
        "SET session_replication_role = replica;
         UPDATE es_streams SET head_hash = '\\x00' WHERE stream_id = 'r-1';
         DELETE FROM es_streams WHERE stream_id = 'r-2';
         UPDATE es_streams SET version = 1 WHERE stream_id = 'r-3';
         RESET session_replication_role;",
    )
    .unwrap();
    let found: Vec<(String, String)> = c
        .query("SELECT stream_id, problem FROM es_verify() ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        found,
        vec![
            ("r-1".into(), "modified".into()),
            ("r-2".into(), "registry".into()),
            ("r-3".into(), "inserted".into())
        ]
    );
}

#[test]
fn auditors_can_recompute_every_hash_with_plain_sql() {
    let db = TestDb::new("recipe");
    let mut c = db.connect();
    seed(&mut c, &["x-1", "x-2"], 5);
    c.query("SELECT * FROM es_append('x-1', 'Odd', $1::text::jsonb, '{\"note\": \"tab\\tand \\u00e9\"}')", &[&r#"{"n": 1e3, "s": "\u0001", "deep": {"z": [1, 2.50]}}"#]).unwrap();
    // The recipe as docs/integrity.md gives it: no extension code involved.
    let mismatches = count(
        &mut c,
        r#"SELECT count(*) FROM (
             SELECT hash = sha256(coalesce(lag(hash) OVER w, decode(repeat('00', 32), 'hex'))
                      || convert_to(concat_ws(chr(31), event_id, stream_id, stream_version, global_position,
                             event_type, event_version, (extract(epoch FROM created_at) * 1000000)::bigint,
                             event_data::text, metadata::text), 'UTF8')) AS ok
               FROM event_store WINDOW w AS (PARTITION BY stream_id ORDER BY stream_version)) x
            WHERE NOT ok"#,
    );
    assert_eq!(mismatches, 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 11);
}

#[test]
fn hypertable_chunks_are_guarded_too() {
    if !timescaledb() {
        return;
    }
    let db = TestDb::new("chunks");
    let mut c = db.connect();
    seed(&mut c, &["h-1"], 3);
    assert!(count(&mut c, "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'event_store'") >= 1);
    let chunk: String = c
        .query_one("SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks WHERE hypertable_name = 'event_store' LIMIT 1", &[])
        .unwrap()
        .get(0);
    for sql in [
        format!("UPDATE {chunk} SET event_data = '{{}}'"),
        format!("DELETE FROM {chunk}"),
    ] {
        assert_eq!(sqlstate(c.batch_execute(&sql)), "ES003", "{sql}");
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 3);
}
