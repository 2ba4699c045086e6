//! Export and erasure hold against a writer: an export opens only the subject's own keys, a
//! personal-data path is always sealed by the store, and a retry reveals nothing sealed.
use super::*;

// ---- Issue 22, item 2: export and erasure hold against a writer.

/// The victim's and mallory's signups, their emails sealed; a writer without personal-data
/// rights; an officer who may export. Returns (writer, officer).
fn personal_store(db: &TestDb, c: &mut postgres::Client) -> (String, String) {
    let writer = role(db, c, "writer", "IN ROLE event_store_writer");
    let officer = role(
        db,
        c,
        "officer",
        "IN ROLE event_store_reader, event_store_personal_data",
    );
    c.batch_execute(&format!(
        "GRANT EXECUTE ON FUNCTION es_subject_export(text) TO {officer};
         SELECT es_define_event_type('UserRegistered', personal_data => '{{/email}}', subject => '/userId');
         SELECT es_define_event_type('Note', subject => '/about');
         SELECT es_append('signup-9', 'UserRegistered', '{{\"userId\": \"victim\", \"email\": \"victim@example.com\"}}');
         SELECT es_append('signup-7', 'UserRegistered', '{{\"userId\": \"mallory\", \"email\": \"mallory@example.com\"}}');"
    ))
    .unwrap();
    (writer, officer)
}

/// A stored value as the table holds it (sealed): any reader may select it.
fn stored_value(c: &mut postgres::Client, stream: &str, pointer: &str) -> serde_json::Value {
    c.query_one(
        "SELECT event_data #> $2::text::text[] FROM event_store WHERE stream_id = $1 AND stream_version = 1",
        &[&stream, &pointer],
    )
    .unwrap()
    .get(0)
}

#[test]
fn an_export_opens_only_what_is_sealed_under_the_subjects_own_keys() {
    let db = TestDb::new("sec_export_others");
    let mut c = db.connect();
    let (writer, officer) = personal_store(&db, &mut c);
    let mut w = db.connect_as(&writer);
    // Route 1: an event about mallory in the victim's stream puts that stream's state, which
    // holds the victim's email, into mallory's export.
    w.batch_execute("SELECT es_append('signup-9', 'Note', '{\"about\": \"mallory\"}')")
        .unwrap();
    // Route 2: the victim's sealed value, readable as ciphertext, copied into an event about
    // mallory.
    let seal = stored_value(&mut w, "signup-9", "{email}");
    assert!(seal.get("$es_sealed").is_some(), "{seal}");
    w.execute(
        "SELECT es_append('note-1', 'Note', jsonb_build_object('about', 'mallory', 'text', $1::jsonb))",
        &[&seal],
    )
    .unwrap();
    let mut o = db.connect_as(&officer);
    let doc: serde_json::Value = o
        .query_one("SELECT es_subject_export('mallory')", &[])
        .unwrap()
        .get(0);
    let text = doc.to_string();
    assert!(!text.contains("victim@example.com"), "{text}");
    // Mallory's own data is there, in the events and in the state of mallory's stream.
    assert_eq!(
        doc["streams"]["signup-7"]["state"]["email"],
        "mallory@example.com"
    );
    let events = doc["events"].as_array().unwrap();
    assert_eq!(events[0]["data"]["email"], "mallory@example.com");
    // Everything else personal shows withheld.
    assert_eq!(
        doc["streams"]["signup-9"]["state"]["email"],
        "[personal data]"
    );
    let note = events.iter().find(|e| e["stream_id"] == "note-1").unwrap();
    assert_eq!(note["data"]["text"], "[personal data]");
    assert_eq!(doc["streams"]["note-1"]["state"]["text"], "[personal data]");
    // The victim's own export still opens it.
    let doc: serde_json::Value = o
        .query_one("SELECT es_subject_export('victim')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        doc["streams"]["signup-9"]["state"]["email"],
        "victim@example.com"
    );
}

#[test]
fn a_value_at_a_personal_data_path_is_always_sealed_by_the_store() {
    let db = TestDb::new("sec_prewrapped");
    let mut c = db.connect();
    let (writer, officer) = personal_store(&db, &mut c);
    let mut w = db.connect_as(&writer);
    // Plaintext dressed up as a seal: it would stay in the table after erasure.
    let r = w.batch_execute(
        "SELECT es_append('signup-3', 'UserRegistered', '{\"userId\": \"u3\", \"email\": {\"$es_sealed\": \"u3@plain.example\"}}')",
    );
    assert_eq!(sqlstate(r), "ES004");
    // The victim's real seal, copied into an event about mallory.
    let victims = stored_value(&mut w, "signup-9", "{email}");
    let append = "SELECT es_append($1, 'UserRegistered', jsonb_build_object('userId', $2::text, 'email', $3::jsonb))";
    assert_eq!(
        sqlstate(w.execute(append, &[&"signup-4", &"mallory", &victims])),
        "ES004"
    );
    // In a batch too: nothing of it is written.
    let r = w.execute(
        "SELECT es_append_batch('signup-4', jsonb_build_array(
             jsonb_build_object('type', 'UserRegistered', 'data', '{\"userId\": \"mallory\", \"email\": \"m@x.example\"}'::jsonb),
             jsonb_build_object('type', 'UserRegistered', 'data', jsonb_build_object('userId', 'mallory', 'email', $1::jsonb))))",
        &[&victims],
    );
    assert_eq!(sqlstate(r), "ES004");
    // A seal under the event's own subject's live key is the store's own: it is kept.
    let mallorys = stored_value(&mut w, "signup-7", "{email}");
    w.execute(append, &[&"signup-5", &"mallory", &mallorys])
        .unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE event_data::text LIKE '%plain.example%' OR stream_id IN ('signup-3', 'signup-4')"
        ),
        0
    );
    let mut o = db.connect_as(&officer);
    let email: String = o
        .query_one("SELECT es_state('signup-5') ->> 'email'", &[])
        .unwrap()
        .get(0);
    assert_eq!(email, "mallory@example.com");
}

#[test]
fn a_retry_tells_a_writer_nothing_about_a_sealed_value() {
    let db = TestDb::new("sec_retry_guess");
    let mut c = db.connect();
    let (writer, _) = personal_store(&db, &mut c);
    let insider = role(
        &db,
        &mut c,
        "insider",
        "IN ROLE event_store_writer, event_store_personal_data",
    );
    let id: uuid::Uuid = c
        .query_one(
            "SELECT event_id FROM es_append('signup-5', 'UserRegistered', '{\"userId\": \"v5\", \"email\": \"v5@example.com\"}', id => 'a0f8e6a4-5b8e-4c1e-9d3a-000000000005')",
            &[],
        )
        .unwrap()
        .get(0);
    let guess = |c: &mut postgres::Client, email: &str| {
        outcome(c.execute(
            "SELECT es_append('signup-5', 'UserRegistered', jsonb_build_object('userId', 'v5', 'email', $2::text), id => $1)",
            &[&id, &email],
        ))
    };
    // Without the right to read personal data, a right and a wrong guess answer alike.
    let mut w = db.connect_as(&writer);
    let right = guess(&mut w, "v5@example.com");
    let wrong = guess(&mut w, "someone@else.example");
    assert_eq!(right, wrong);
    assert_eq!(right, "ok");
    // What is not personal data is still compared.
    let r = w.execute(
        "SELECT es_append('signup-5', 'UserRegistered', '{\"userId\": \"v6\", \"email\": \"v5@example.com\"}', id => $1)",
        &[&id],
    );
    assert_eq!(sqlstate(r), "ES002");
    // A member of event_store_personal_data, who reads the value anyway, gets the full check.
    let mut i = db.connect_as(&insider);
    assert_eq!(guess(&mut i, "v5@example.com"), "ok");
    assert_eq!(guess(&mut i, "someone@else.example"), "ES002");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE stream_id = 'signup-5'"
        ),
        1
    );
}
