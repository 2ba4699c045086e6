//! Digests an auditor keeps outside: appends after a digest keep it valid; a superuser's edit,
//! deletion, insertion or full re-chain below its position makes es_verify_digest fail and
//! name the stream, even where es_verify passes.
use event_store_testing::*;
use postgres::Client;
use serde_json::Value;

fn fill(c: &mut Client) {
    c.batch_execute(
        "SELECT es_append('order-1', 'Placed', '{\"total\": 120}');
         SELECT es_append_batch('order-1', '[{\"type\": \"Paid\", \"data\": {\"amount\": 120}},
                                              {\"type\": \"Shipped\", \"data\": {}}]');
         SELECT es_append('order-2', 'Placed', '{\"total\": 80}');
         SELECT es_append('user-1', 'Registered', '{\"email\": \"a@example.com\"}');",
    )
    .unwrap();
}

fn digest(c: &mut Client) -> Value {
    c.query_one("SELECT es_digest()", &[]).unwrap().get(0)
}

/// (stream, version, problem) of every row es_verify_digest returns.
fn problems(c: &mut Client, d: &Value) -> Vec<(Option<String>, Option<i64>, String)> {
    c.query(
        "SELECT stream_id, stream_version, problem FROM es_verify_digest($1) ORDER BY 1, 2, 3",
        &[d],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn verify_problems(c: &mut Client) -> i64 {
    count(c, "SELECT count(*) FROM es_verify()")
}

/// Recomputes a stream's every hash from its (edited) content with the published recipe, and
/// its registry head: what es_verify cannot tell from an honest history.
const RECHAIN: &str = "SET session_replication_role = replica;
DO $$
DECLARE
    prev bytea := decode(repeat('00', 32), 'hex');
    r record;
BEGIN
    FOR r IN SELECT * FROM event_store WHERE stream_id = 'order-1' ORDER BY stream_version LOOP
        prev := sha256(prev || convert_to(concat_ws(chr(31), r.event_id, r.stream_id,
                    r.stream_version, r.global_position, r.event_type, r.event_version,
                    (extract(epoch FROM r.created_at) * 1000000)::bigint,
                    r.event_data::text, r.metadata::text), 'UTF8'));
        UPDATE event_store SET hash = prev WHERE stream_id = r.stream_id AND stream_version = r.stream_version;
    END LOOP;
    UPDATE es_streams SET head_hash = prev WHERE stream_id = 'order-1';
END
$$;
RESET session_replication_role;";

#[test]
fn a_digest_covers_the_settled_store_and_appends_after_it_keep_it_valid() {
    let db = TestDb::new("digest_valid");
    let mut c = db.connect();
    fill(&mut c);
    let auditor = format!("{}_auditor", db.name);
    c.batch_execute(&format!("CREATE ROLE {auditor} IN ROLE event_store_reader"))
        .unwrap();
    let mut a = db.connect_as(&auditor);
    // An append in flight holds position 6: the digest stops below it.
    let mut writer = db.connect();
    let mut tx = writer.transaction().unwrap();
    tx.batch_execute("SELECT es_append('order-2', 'Paid', '{\"amount\": 80}')")
        .unwrap();
    let d1 = digest(&mut a);
    assert_eq!(d1["format"], 1);
    assert_eq!(d1["position"], 5);
    assert_eq!(d1["events"], 5);
    assert_eq!(d1["streams"], 3);
    assert_eq!(d1["root"].as_str().unwrap().len(), 64);
    assert_eq!(d1["taken_by"], auditor.as_str());
    tx.commit().unwrap();
    assert_eq!(problems(&mut a, &d1), vec![]);
    // Later appends, to old streams and new ones, do not touch what the digest covers.
    c.batch_execute(
        "SELECT es_append('order-1', 'Returned', '{}'); SELECT es_append('order-3', 'Placed', '{}');",
    )
    .unwrap();
    let d2 = digest(&mut a);
    assert_eq!(
        (d2["position"].clone(), d2["events"].clone()),
        (8.into(), 8.into())
    );
    assert_ne!(d1["root"], d2["root"]);
    assert_eq!(problems(&mut a, &d1), vec![]);
    assert_eq!(problems(&mut a, &d2), vec![]);
    // A digest taken twice at one position is the same digest; the store records each once,
    // with only the heads that changed since the one before.
    assert_eq!(digest(&mut a)["root"], d2["root"]);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_digests"), 2);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_digest_heads WHERE position = 8"
        ),
        3,
        "order-1, order-2 and order-3 changed after position 5; user-1 did not"
    );
}

#[test]
fn edits_deletions_insertions_and_rechains_below_the_digest_are_found() {
    // Each tampering in a store of its own: (what a superuser does, what is reported).
    type Found = Vec<(Option<String>, Option<i64>, String)>;
    let s = |id: &str, v: i64, p: &str| (Some(id.to_string()), Some(v), p.to_string());
    let cases: Vec<(&str, String, Found, bool)> = vec![
        (
            "edit",
            "SET session_replication_role = replica;
             UPDATE event_store SET event_data = '{\"amount\": 1}' WHERE stream_id = 'order-1' AND stream_version = 2;"
                .into(),
            vec![s("order-1", 2, "modified")],
            false,
        ),
        (
            "rechain",
            format!(
                "SET session_replication_role = replica;
                 UPDATE event_store SET event_data = '{{\"amount\": 1}}' WHERE stream_id = 'order-1' AND stream_version = 2;
                 {RECHAIN}"
            ),
            vec![s("order-1", 3, "modified")],
            true,
        ),
        (
            "cut",
            "SET session_replication_role = replica;
             DELETE FROM event_store WHERE stream_id = 'order-1' AND stream_version = 3;
             UPDATE es_streams SET version = 2, last_position = 2,
                    head_hash = (SELECT hash FROM event_store WHERE stream_id = 'order-1' AND stream_version = 2)
              WHERE stream_id = 'order-1';"
                .into(),
            vec![s("order-1", 3, "deleted")],
            false,
        ),
        (
            "drop-stream",
            "SET session_replication_role = replica;
             DELETE FROM event_store WHERE stream_id = 'user-1';
             DELETE FROM es_streams WHERE stream_id = 'user-1';"
                .into(),
            vec![s("user-1", 1, "deleted")],
            true,
        ),
        (
            "insert",
            "INSERT INTO event_store (global_position, event_id, stream_id, stream_version, event_type,
                                      event_data, created_at, hash)
             SELECT 1, es_uuidv7(), 'ghost-1', 1, 'Placed', '{}', created_at, hash
               FROM event_store WHERE global_position = 1;"
                .into(),
            vec![s("ghost-1", 1, "inserted")],
            false,
        ),
    ];
    for (name, tamper, expected, verify_passes) in cases {
        let db = TestDb::new(&format!("digest_{}", name.replace('-', "_")));
        let mut c = db.connect();
        fill(&mut c);
        let d = digest(&mut c);
        c.batch_execute(&format!("{tamper} RESET session_replication_role;"))
            .unwrap();
        // Appends after the tampering do not hide it.
        c.batch_execute("SELECT es_append('order-2', 'Paid', '{}')")
            .unwrap();
        let found: Found = problems(&mut c, &d)
            .into_iter()
            .filter(|p| p.2 != "events")
            .collect();
        assert!(
            expected.iter().all(|e| found.contains(e)),
            "{name}: expected {expected:?} among {found:?}"
        );
        if verify_passes {
            assert_eq!(
                verify_problems(&mut c),
                0,
                "{name}: es_verify cannot see it"
            );
        }
    }
}

#[test]
fn without_the_stores_record_the_digest_still_fails_but_cannot_name_streams() {
    let db = TestDb::new("digest_record");
    let mut c = db.connect();
    fill(&mut c);
    let d = digest(&mut c);
    c.batch_execute(&format!(
        "SET session_replication_role = replica;
         UPDATE event_store SET event_data = '{{\"total\": 1}}' WHERE stream_id = 'order-1' AND stream_version = 1;
         {RECHAIN}
         DELETE FROM es_digest_heads WHERE stream_id = 'order-1';"
    ))
    .unwrap();
    assert_eq!(verify_problems(&mut c), 0);
    assert_eq!(problems(&mut c, &d), vec![(None, None, "digest".into())]);
    // A digest of another store, or of this one before a restore to an earlier point.
    let mut ahead = d.clone();
    ahead["position"] = 1000.into();
    assert_eq!(
        problems(&mut c, &ahead),
        vec![(None, None, "digest".into())]
    );
}

#[test]
fn bad_digests_isolation_and_roles_are_refused() {
    let db = TestDb::new("digest_refused");
    let mut c = db.connect();
    fill(&mut c);
    let d = digest(&mut c);
    for (bad, state) in [
        (Value::Null, "22004"),
        (serde_json::json!({}), "22023"),
        (serde_json::json!([1]), "22023"),
        (
            {
                let mut x = d.clone();
                x["root"] = "00".into();
                x
            },
            "22023",
        ),
        (
            {
                let mut x = d.clone();
                x["position"] = (-1).into();
                x
            },
            "22023",
        ),
    ] {
        let arg: Option<Value> = if bad.is_null() {
            None
        } else {
            Some(bad.clone())
        };
        assert_eq!(
            sqlstate(c.query("SELECT * FROM es_verify_digest($1)", &[&arg])),
            state,
            "{bad}"
        );
    }
    assert_eq!(
        outcome(
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT es_digest(); COMMIT")
        ),
        "0A000"
    );
    c.batch_execute("ROLLBACK").unwrap();
    // Neither function is PUBLIC's; a reader under row level security would digest only
    // what it sees, so it is refused.
    let (none, tenant) = (format!("{}_none", db.name), format!("{}_tenant", db.name));
    c.batch_execute(&format!(
        "CREATE ROLE {none}; CREATE ROLE {tenant} IN ROLE event_store_reader;
         ALTER TABLE event_store ENABLE ROW LEVEL SECURITY;
         CREATE POLICY orders ON event_store TO {tenant} USING (stream_id LIKE 'order-%');"
    ))
    .unwrap();
    let mut n = db.connect_as(&none);
    assert_eq!(sqlstate(n.query("SELECT es_digest()", &[])), "42501");
    assert_eq!(
        sqlstate(n.query("SELECT * FROM es_verify_digest($1)", &[&d])),
        "42501"
    );
    let mut t = db.connect_as(&tenant);
    assert_eq!(sqlstate(t.query("SELECT es_digest()", &[])), "42501");
    assert_eq!(
        sqlstate(t.query("SELECT * FROM es_verify_digest($1)", &[&d])),
        "42501"
    );
    // Nobody writes the store's record of digests but es_digest.
    let reader = format!("{}_reader", db.name);
    c.batch_execute(&format!("CREATE ROLE {reader} IN ROLE event_store_writer"))
        .unwrap();
    let mut w = db.connect_as(&reader);
    for sql in [
        "DELETE FROM es_digest_heads",
        "INSERT INTO es_digests VALUES (99, 0, 0, '', now(), 'x')",
    ] {
        assert_eq!(outcome(w.batch_execute(sql)), "42501", "{sql}");
    }
}
