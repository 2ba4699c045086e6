//! GDPR Art. 15: a subject's export holds every event about them (found through the catalog's
//! subject pointers) and nothing of anyone else, and is itself recorded, without personal
//! data, in the store's own stream, which no caller can append to.
use event_store_testing::*;
use postgres::Client;
use serde_json::Value;

fn catalog_and_events(c: &mut Client) {
    c.batch_execute(
        "SELECT es_define_event_type('UserRegistered', personal_data => '{/email}', subject => '/userId');
         SELECT es_define_event_type('UserEmailChanged', personal_data => '{/email}', subject => '/userId');
         SELECT es_define_event_type('PaymentProcessed', subject => 'metadata:/customer');
         -- Whose it is follows from the stream it is in: the id after the category.
         SELECT es_define_event_type('SessionStarted', subject => 'stream');
         SET event_store.correlation_id = 'req-7';
         SELECT es_append('user-1', 'UserRegistered', '{\"userId\": \"u-1\", \"email\": \"ann@example.com\"}');
         SELECT es_append('user-2', 'UserRegistered', '{\"userId\": \"u-2\", \"email\": \"bob@example.com\"}');
         SELECT es_append('user-1', 'UserEmailChanged', '{\"userId\": \"u-1\", \"email\": \"ann@example.org\"}');
         SELECT es_append('payment-9', 'PaymentProcessed', '{\"amount\": 20}', '{\"customer\": \"u-1\"}');
         SELECT es_append('payment-8', 'PaymentProcessed', '{\"amount\": 30}', '{\"customer\": \"u-2\"}');
         -- Not in the catalog: it names u-1, but nothing says whose data it is.
         SELECT es_append('audit-1', 'Noted', '{\"userId\": \"u-1\"}');
         -- Same type at another version, which has no catalog entry.
         SELECT es_append('user-3', 'UserRegistered', '{\"userId\": \"u-1\"}', event_version => 2);
         SELECT es_append('user-u-1', 'SessionStarted', '{\"ip\": \"10.0.0.1\"}');
         SELECT es_append('user-u-2', 'SessionStarted', '{\"ip\": \"10.0.0.2\"}');
         SELECT es_append('u-1', 'SessionStarted', '{}');
         RESET event_store.correlation_id;",
    )
    .unwrap();
}

fn export(c: &mut Client, subject: &str) -> Value {
    c.query_one("SELECT es_subject_export($1)", &[&subject])
        .unwrap()
        .get(0)
}

#[test]
fn an_export_holds_every_event_about_the_subject_and_nothing_of_others() {
    let db = TestDb::new("privacy_export");
    let mut c = db.connect();
    catalog_and_events(&mut c);
    let doc = export(&mut c, "u-1");
    assert_eq!(doc["subject"], "u-1");
    assert_eq!(doc["exported_by"], "postgres");
    let events = doc["events"].as_array().unwrap();
    let found: Vec<(&str, i64, &str)> = events
        .iter()
        .map(|e| {
            (
                e["stream_id"].as_str().unwrap(),
                e["stream_version"].as_i64().unwrap(),
                e["event_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("user-1", 1, "UserRegistered"),
            ("user-1", 2, "UserEmailChanged"),
            ("payment-9", 1, "PaymentProcessed"),
            ("user-u-1", 1, "SessionStarted"),
        ]
    );
    // Provenance of each event.
    let first = &events[0];
    assert_eq!(first["appended_by"], "postgres");
    assert_eq!(first["correlation_id"], "req-7");
    assert_eq!(first["data"]["email"], "ann@example.com");
    assert_eq!(first["global_position"], 1);
    assert!(first["event_id"].is_string() && first["created_at"].is_string());
    // The current state of every stream involved.
    let streams = doc["streams"].as_object().unwrap();
    assert_eq!(
        streams.keys().collect::<Vec<_>>(),
        vec!["payment-9", "user-1", "user-u-1"]
    );
    assert_eq!(streams["user-1"]["version"], 2);
    assert_eq!(streams["user-1"]["state"]["email"], "ann@example.org");
    // Nothing of anyone else.
    let text = doc.to_string();
    for other in [
        "u-2",
        "bob@example.com",
        "payment-8",
        "audit-1",
        "user-3",
        "10.0.0.2",
    ] {
        assert!(!text.contains(other), "{other} in {text}");
    }
    assert_eq!(export(&mut c, "u-404")["events"], serde_json::json!([]));
    // Each export is recorded in event_store-privacy, with the subject only as a hash.
    let rows = c
        .query(
            "SELECT event_type, event_data, metadata->>'appendedBy' FROM es_stream('event_store-privacy') ORDER BY stream_version",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 2);
    let (kind, data, by): (String, Value, String) =
        (rows[0].get(0), rows[0].get(1), rows[0].get(2));
    assert_eq!(
        (kind.as_str(), by.as_str()),
        ("SubjectExported", "postgres")
    );
    let hash: String = c
        .query_one("SELECT encode(sha256('u-1'), 'hex')", &[])
        .unwrap()
        .get(0);
    assert_eq!(data["subject_sha256"], hash.as_str());
    assert_eq!(
        (data["events"].clone(), data["streams"].clone()),
        (4.into(), 3.into())
    );
    assert!(!data.to_string().contains("u-1"));
    // The records are in the feed, for projections to act on.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_read_all(0, 100) WHERE stream_id = 'event_store-privacy'"
        ),
        2
    );
    assert_eq!(verify_problems(&mut c), 0);
}

fn verify_problems(c: &mut Client) -> i64 {
    count(c, "SELECT count(*) FROM es_verify()")
}

#[test]
fn only_the_store_appends_to_its_own_streams_whatever_the_catalog_mode() {
    let db = TestDb::new("privacy_system");
    let mut c = db.connect();
    for sql in [
        "SELECT es_append('event_store-privacy', 'SubjectExported', '{}')",
        "SELECT es_append_batch('event_store-x', '[{\"type\": \"T\", \"data\": {}}]')",
        "SELECT es_append_multi('[{\"stream_id\": \"user-1\", \"events\": [{\"type\": \"T\", \"data\": {}}]},
                                  {\"stream_id\": \"event_store-privacy\", \"events\": [{\"type\": \"T\", \"data\": {}}]}]')",
    ] {
        assert_eq!(outcome(c.batch_execute(sql)), "42501", "{sql}");
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 0);
    // A strict catalog for every category does not stop the store's own records.
    c.batch_execute(
        "SELECT es_define_event_type('UserRegistered', subject => '/userId');
         SELECT es_set_catalog_mode('*', 'strict');
         SELECT es_append('user-1', 'UserRegistered', '{\"userId\": \"u-1\"}');",
    )
    .unwrap();
    assert_eq!(export(&mut c, "u-1")["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        count(&mut c, "SELECT es_stream_version('event_store-privacy')"),
        1
    );
    // The allowance is for that one append: a later one is refused again.
    assert_eq!(
        outcome(
            c.batch_execute("SELECT es_append('event_store-privacy', 'SubjectExported', '{}')")
        ),
        "42501"
    );
}

#[test]
fn exports_are_for_roles_granted_them_and_bad_subjects_are_refused() {
    let db = TestDb::new("privacy_roles");
    let mut c = db.connect();
    catalog_and_events(&mut c);
    let (reader, writer, dpo) = (
        format!("{}_reader", db.name),
        format!("{}_writer", db.name),
        format!("{}_dpo", db.name),
    );
    c.batch_execute(&format!(
        "CREATE ROLE {reader} IN ROLE event_store_reader;
         CREATE ROLE {writer} IN ROLE event_store_writer;
         CREATE ROLE {dpo};
         GRANT USAGE ON SCHEMA public TO {dpo};
         GRANT EXECUTE ON FUNCTION es_subject_export(text) TO {dpo};"
    ))
    .unwrap();
    for role in [&reader, &writer] {
        let mut r = db.connect_as(role);
        assert_eq!(
            sqlstate(r.query("SELECT es_subject_export('u-1')", &[])),
            "42501"
        );
        assert_eq!(
            sqlstate(r.query(
                "SELECT _event_store._es_record('privacy', 'SubjectForgotten', '{}')",
                &[]
            )),
            "42501"
        );
    }
    let mut d = db.connect_as(&dpo);
    let doc = export(&mut d, "u-1");
    assert_eq!(doc["events"].as_array().unwrap().len(), 4);
    assert_eq!(doc["exported_by"], dpo.as_str());
    for (sql, state) in [
        ("SELECT es_subject_export(NULL)", "22004"),
        ("SELECT es_subject_export('')", "22023"),
    ] {
        assert_eq!(outcome(d.batch_execute(sql)), state, "{sql}");
    }
}
