//! GDPR Art. 17 by crypto-shredding: personal data is sealed with its subject's key before it
//! is hashed and stored; members of event_store_personal_data read it, others see it withheld;
//! es_forget_subject destroys the key, after which every read path shows the erased marker,
//! chains still verify, folds and diffs still run, and a projection purges its copy.
use event_store_testing::*;
use postgres::Client;
use serde_json::{json, Value};

const EMAIL: &str = "ann.erasure-test@example.com";
const NEW_EMAIL: &str = "ann.erasure-test@new.example";
const CARD: &str = "4111-1111-1111-1111";

/// The catalog, a reducer that copies a sealed value into the state, and u-1's events in
/// three streams (plus u-2's, who stays).
fn fill(c: &mut Client) {
    c.batch_execute(&format!(
        "SELECT es_define_event_type('UserRegistered', personal_data => '{{/email,/name}}', subject => '/userId');
         SELECT es_define_event_type('UserEmailChanged', personal_data => '{{/newEmail}}', subject => '/userId');
         SELECT es_define_event_type('PaymentProcessed', personal_data => '{{/card}}', subject => 'metadata:/customer');
         SELECT es_define_reducer('user', 'UserEmailChanged', '{{\"op\": \"set\", \"path\": \"/email\", \"from\": \"/newEmail\"}}');
         SELECT es_append('user-u1', 'UserRegistered', '{{\"userId\": \"u-1\", \"email\": \"{EMAIL}\", \"name\": \"Ann Erasure\"}}');
         SELECT es_append('user-u1', 'UserEmailChanged', '{{\"userId\": \"u-1\", \"newEmail\": \"{NEW_EMAIL}\"}}');
         SELECT es_append('payment-1', 'PaymentProcessed', '{{\"amount\": 20, \"card\": \"{CARD}\"}}', '{{\"customer\": \"u-1\"}}');
         SELECT es_append('order-9', 'PaymentProcessed', '{{\"amount\": 5, \"card\": \"{CARD}\"}}', '{{\"customer\": \"u-1\"}}');
         SELECT es_append('user-u2', 'UserRegistered', '{{\"userId\": \"u-2\", \"email\": \"bob@example.com\", \"name\": \"Bob\"}}');
         SELECT es_snapshot('user-u1');"
    ))
    .unwrap();
}

fn one(c: &mut Client, sql: &str) -> Value {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// The extension's relations (tables, TOAST, indexes, TimescaleDB chunks) whose files hold
/// `text`, after a checkpoint: dead row versions and index entries included.
fn files_holding(c: &mut Client, text: &str, except: &str) -> Vec<String> {
    c.batch_execute("CHECKPOINT").unwrap();
    c.query(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname IN ('public', 'pg_toast', '_timescaledb_internal')
            AND c.relkind IN ('r', 't', 'i', 'm') AND pg_relation_filepath(c.oid) IS NOT NULL
            AND c.relname NOT LIKE $2 || '%'
            AND c.oid NOT IN (SELECT reltoastrelid FROM pg_class WHERE relname LIKE $2 || '%')
            AND c.oid NOT IN (SELECT indexrelid FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
                               WHERE t.relname LIKE $2 || '%')
            AND position(convert_to($1, 'UTF8') IN pg_read_binary_file(pg_relation_filepath(c.oid))) > 0",
        &[&text, &except],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn forgetting_a_subject_erases_them_from_every_read_and_keeps_every_chain() {
    let db = TestDb::new("erasure");
    let mut c = db.connect();
    fill(&mut c);
    let (officer, reader, owner) = (
        format!("{}_officer", db.name),
        format!("{}_reader", db.name),
        format!("{}_proj", db.name),
    );
    // A projection that keeps users' emails, and purges them when the store forgets a subject.
    c.batch_execute(&format!(
        "CREATE ROLE {officer} IN ROLE event_store_reader, event_store_personal_data;
         CREATE ROLE {reader} IN ROLE event_store_reader;
         CREATE ROLE {owner} IN ROLE event_store_writer, event_store_personal_data;
         GRANT CREATE ON SCHEMA public TO {owner};
         SET ROLE {owner};
         CREATE TABLE emails_copy (user_id text PRIMARY KEY, email text);
         CREATE FUNCTION keep_email(e event_store) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             IF e.event_type = 'UserRegistered' THEN
                 INSERT INTO emails_copy VALUES (e.event_data->>'userId', e.event_data->>'email');
             ELSIF e.event_type = 'SubjectForgotten' THEN
                 DELETE FROM emails_copy
                  WHERE encode(sha256(convert_to(user_id, 'UTF8')), 'hex') = e.event_data->>'subject_sha256';
             END IF;
         END $$;
         SELECT es_create_projection('emails', 'keep_email(event_store)');
         RESET ROLE;"
    ))
    .unwrap();
    let run_projection = |c: &mut Client| {
        // The worker of a new database may take a few seconds to start.
        for _ in 0..1200 {
            if std::env::var("ES_TEST_WORKER").as_deref() != Ok("1") {
                c.batch_execute("SELECT es_run_projections()").unwrap();
            }
            let behind = count(
                c,
                "SELECT count(*) FROM es_projections WHERE name = 'emails'
                   AND position < (SELECT max(global_position) FROM event_store)",
            );
            if behind == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("the projection did not catch up");
    };
    run_projection(&mut c);
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM emails_copy WHERE email = '{EMAIL}'")
        ),
        1,
        "its owner may see personal data: the handler got it in plaintext"
    );

    // Stored sealed: no plaintext in any of the extension's files, dead versions included.
    for secret in [EMAIL, NEW_EMAIL, CARD, "Ann Erasure"] {
        assert_eq!(
            files_holding(&mut c, secret, "emails_copy"),
            Vec::<String>::new(),
            "{secret}"
        );
    }
    // A member of event_store_personal_data reads plaintext; another reader sees it withheld.
    let mut o = db.connect_as(&officer);
    let mut r = db.connect_as(&reader);
    let state = "SELECT es_state('user-u1')";
    assert_eq!(one(&mut o, state)["email"], NEW_EMAIL);
    assert_eq!(one(&mut r, state)["email"], "[personal data]");
    let first = "SELECT event_data FROM es_stream('user-u1') WHERE stream_version = 1";
    assert_eq!(one(&mut o, first)["email"], EMAIL);
    assert_eq!(one(&mut r, first)["email"], "[personal data]");
    assert_eq!(one(&mut r, first)["userId"], "u-1");

    assert_eq!(
        count(
            &mut c,
            "SELECT es_forget_subject('u-1', 'erasure request #42')"
        ),
        1
    );
    run_projection(&mut c);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM emails_copy"),
        1,
        "u-2's row stays"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM emails_copy WHERE user_id = 'u-1'"
        ),
        0
    );

    // Every read path shows the marker, for everyone, the officer included.
    let erased = json!("[erased]");
    for sql in [
        "SELECT event_data->'email' FROM es_stream('user-u1') WHERE stream_version = 1",
        "SELECT event_data->'name' FROM es_stream('user-u1') WHERE stream_version = 1",
        "SELECT event_data->'newEmail' FROM es_stream('user-u1', upcast => true) WHERE stream_version = 2",
        "SELECT event_data->'card' FROM es_read_all(0, 100) WHERE stream_id = 'payment-1'",
        "SELECT event_data->'card' FROM es_read_category('order', 0, 100)",
        "SELECT es_state('user-u1')->'email'",
        "SELECT es_state_at('user-u1', now())->'email'",
        "SELECT es_state_at_version('user-u1', 1)->'email'",
        "SELECT es_fold(e ORDER BY stream_version)->'email' FROM event_store e WHERE stream_id = 'user-u1'",
        "SELECT after FROM es_diff('user-u1', '-infinity', now()) WHERE path = '/email' ORDER BY stream_version DESC LIMIT 1",
        "SELECT e->'data'->'email' FROM jsonb_array_elements(es_subject_export('u-1')->'events') e WHERE e->>'event_type' = 'UserRegistered'",
    ] {
        let who = if sql.contains("export") { &mut c } else { &mut o };
        assert_eq!(one(who, sql), erased, "{sql}");
    }
    // Others untouched; u-1's data that is not personal stays.
    assert_eq!(
        one(&mut o, "SELECT es_state('user-u2')->'email'"),
        json!("bob@example.com")
    );
    assert_eq!(
        one(&mut o, "SELECT es_state('user-u1')->'userId'"),
        json!("u-1")
    );
    assert_eq!(
        one(
            &mut o,
            "SELECT event_data->'amount' FROM es_stream('payment-1')"
        ),
        json!(20)
    );
    // Chains and snapshots verify as before; nothing was rewritten.
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_verify(snapshots => true)"),
        0
    );
    // The erasure is on record, without personal data; the store keeps no plaintext.
    let record = one(
        &mut c,
        "SELECT event_data || jsonb_build_object('by', metadata->'appendedBy') FROM es_stream('event_store-privacy')
          WHERE event_type = 'SubjectForgotten'",
    );
    let hash: String = c
        .query_one("SELECT encode(sha256('u-1'), 'hex')", &[])
        .unwrap()
        .get(0);
    assert_eq!(record["subject_sha256"], hash.as_str());
    assert_eq!(record["reason"], "erasure request #42");
    assert_eq!(
        (record["keys_destroyed"].clone(), record["by"].clone()),
        (json!(1), json!("postgres"))
    );
    assert!(!record.to_string().contains("u-1") && !record.to_string().contains("ann"));
    for secret in [EMAIL, NEW_EMAIL, CARD, "Ann Erasure"] {
        assert_eq!(
            files_holding(&mut c, secret, "emails_copy"),
            Vec::<String>::new(),
            "{secret}"
        );
    }
    // Forgetting again destroys nothing more; a new event of the subject gets a new key.
    assert_eq!(count(&mut c, "SELECT es_forget_subject('u-1', 'again')"), 0);
    c.batch_execute("SELECT es_append('user-u1', 'UserEmailChanged', '{\"userId\": \"u-1\", \"newEmail\": \"ann@later.example\"}')")
        .unwrap();
    assert_eq!(one(&mut o, state)["email"], "ann@later.example");
}

#[test]
fn keys_are_the_owners_wrapped_by_the_master_key_and_appends_stay_idempotent() {
    let db = TestDb::new("erasure_keys");
    let mut c = db.connect();
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    c.batch_execute(&format!(
        "SET event_store.master_key = '{key}';
         SELECT es_define_event_type('UserRegistered', personal_data => '{{/email}}', subject => '/userId');
         SELECT es_append('user-1', 'UserRegistered', '{{\"userId\": \"u-1\", \"email\": \"{EMAIL}\"}}',
                          id => '0190d0c0-0000-7000-8000-0000000000aa');"
    ))
    .unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT get_byte(wrapped, 0)::bigint FROM _event_store.es_subject_keys"
        ),
        1,
        "wrapped"
    );
    let read = "SELECT event_data->>'email' FROM es_stream('user-1')";
    let text = |c: &mut Client| -> String { c.query_one(read, &[]).unwrap().get(0) };
    assert_eq!(text(&mut c), EMAIL);
    // Without the master key, the key cannot be unwrapped: the value reads as erased, never
    // as ciphertext or an error.
    c.batch_execute("RESET event_store.master_key").unwrap();
    assert_eq!(text(&mut c), "[erased]");
    c.batch_execute(&format!("SET event_store.master_key = '{key}'"))
        .unwrap();
    // A retry of the same append (same id and content) is the same append, not a conflict.
    let retry = format!(
        "SELECT stream_version FROM es_append('user-1', 'UserRegistered', '{{\"userId\": \"u-1\", \"email\": \"{EMAIL}\"}}',
                                              id => '0190d0c0-0000-7000-8000-0000000000aa')"
    );
    assert_eq!(count(&mut c, &retry), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 1);
    // Personal data without its subject is refused, and nothing is written.
    assert_eq!(
        outcome(c.batch_execute(
            "SELECT es_append('user-2', 'UserRegistered', '{\"email\": \"x@example.com\"}')"
        )),
        "ES004"
    );
    assert_eq!(
        outcome(c.batch_execute("SET event_store.master_key = 'short'; SELECT es_append('user-3', 'UserRegistered', '{\"userId\": \"u-3\", \"email\": \"y@example.com\"}')")),
        "22023"
    );
    c.batch_execute("RESET event_store.master_key").unwrap();
    // Only the owner reads keys or forgets; nobody but a superuser sets or reads the master key.
    let (reader, writer) = (format!("{}_reader", db.name), format!("{}_writer", db.name));
    c.batch_execute(&format!(
        "CREATE ROLE {reader} IN ROLE event_store_reader, event_store_personal_data;
         CREATE ROLE {writer} IN ROLE event_store_writer;"
    ))
    .unwrap();
    for role in [&reader, &writer] {
        let mut r = db.connect_as(role);
        // The library defines its settings when it loads (without preloading, at first use).
        r.batch_execute("SELECT es_uuidv7()").unwrap();
        for sql in [
            "SELECT * FROM _event_store.es_subject_keys",
            "SELECT es_forget_subject('u-1', 'because')",
            "SELECT _event_store._es_reveal_data('{}')",
            "SELECT _event_store._es_reveal_for_subject(e, 'u-1') FROM event_store e",
            "SELECT _event_store._es_state_for_subject('user-1', 'u-1')",
            "SELECT _event_store._es_subject_hash('u-1')",
            "SET event_store.master_key = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff'",
            "SHOW event_store.master_key",
        ] {
            assert_eq!(outcome(r.batch_execute(sql)), "42501", "{role}: {sql}");
        }
    }
    for (sql, state) in [
        ("SELECT es_forget_subject(NULL, 'x')", "22004"),
        ("SELECT es_forget_subject('u-1', NULL)", "22004"),
        ("SELECT es_forget_subject('', 'x')", "22023"),
        ("SELECT es_forget_subject('u-1', ' ')", "22023"),
    ] {
        assert_eq!(outcome(c.batch_execute(sql)), state, "{sql}");
    }
}

#[test]
fn revealing_runs_none_of_the_readers_code_as_the_owner() {
    let db = TestDb::new("erasure_path");
    let mut c = db.connect();
    let sneaky = format!("{}_sneaky", db.name);
    c.batch_execute(&format!(
        "SELECT es_define_event_type('UserRegistered', personal_data => '{{/email}}', subject => '/userId');
         SELECT es_append('user-1', 'UserRegistered', '{{\"userId\": \"u-1\", \"email\": \"{EMAIL}\"}}');
         CREATE ROLE {sneaky} IN ROLE event_store_reader, event_store_personal_data;
         CREATE SCHEMA sneaky AUTHORIZATION {sneaky};"
    ))
    .unwrap();
    // Keys are read as the owner: an operator of the reader's, first on its search_path,
    // must not be what compares them.
    let mut s = db.connect_as(&sneaky);
    s.batch_execute(
        "CREATE FUNCTION sneaky.eq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql AS
             $$BEGIN RAISE EXCEPTION 'pwned as %', current_user; END$$;
         CREATE OPERATOR sneaky.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = sneaky.eq);
         CREATE FUNCTION sneaky.beq(bytea, bytea) RETURNS boolean LANGUAGE plpgsql AS
             $$BEGIN RAISE EXCEPTION 'pwned as %', current_user; END$$;
         CREATE OPERATOR sneaky.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = sneaky.beq);
         SET search_path = sneaky, public, pg_catalog;",
    )
    .unwrap();
    for sql in [
        "SELECT (_event_store._es_reveal(e)).event_data->>'email' FROM event_store e",
        "SELECT es_fold(e ORDER BY stream_version)->>'email' FROM event_store e",
        "SELECT event_data->>'email' FROM es_stream('user-1')",
    ] {
        let got: String = s.query_one(sql, &[]).unwrap().get(0);
        assert_eq!(got, EMAIL, "{sql}");
    }
}
