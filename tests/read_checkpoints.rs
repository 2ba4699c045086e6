//! Consumer checkpoints saved with their effects: one transaction commits both or neither, a
//! position must move forward, and a consumer belongs to the role that first saved it.
use event_store_testing::*;

#[test]
fn a_checkpoint_commits_and_rolls_back_with_the_consumers_effects() {
    let db = TestDb::new("checkpoint_tx");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE effects (position bigint);
         SELECT es_append('user-1', 'A', '{}'); SELECT es_append('user-1', 'B', '{}');",
    )
    .unwrap();
    let none: Option<i64> = c
        .query_one("SELECT es_checkpoint('mailer')", &[])
        .unwrap()
        .get(0);
    assert_eq!(none, None);
    // A consumer's pass: read from its checkpoint (NULL reads as 0), apply, save; rolled back.
    let pass =
        "INSERT INTO effects SELECT global_position FROM es_read_all(es_checkpoint('mailer'), 1);
                SELECT es_save_checkpoint('mailer', (SELECT max(position) FROM effects));";
    let mut tx = c.transaction().unwrap();
    tx.batch_execute(pass).unwrap();
    tx.rollback().unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM effects"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_checkpoints"), 0);
    // Committed: both are there, and the next pass starts after it.
    let mut tx = c.transaction().unwrap();
    tx.batch_execute(pass).unwrap();
    tx.commit().unwrap();
    assert_eq!(count(&mut c, "SELECT es_checkpoint('mailer')"), 1);
    c.batch_execute(
        "BEGIN; INSERT INTO effects SELECT global_position FROM es_read_all(es_checkpoint('mailer'), 1);
         SELECT es_save_checkpoint('mailer', (SELECT max(position) FROM effects)); COMMIT;",
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT es_checkpoint('mailer')"), 2);
    assert_eq!(
        count(&mut c, "SELECT count(DISTINCT position) FROM effects"),
        2
    );
    // Never back, nor in place.
    for p in [2, 1] {
        assert_eq!(
            sqlstate(c.execute("SELECT es_save_checkpoint('mailer', $1)", &[&(p as i64)])),
            "ES007"
        );
    }
    assert_eq!(count(&mut c, "SELECT es_checkpoint('mailer')"), 2);
    // The horizon: everything committed so far.
    assert_eq!(count(&mut c, "SELECT es_feed_horizon()"), 2);
    for (sql, state) in [
        ("SELECT es_save_checkpoint(NULL, 1)", "22004"),
        ("SELECT es_save_checkpoint('mailer', NULL)", "22004"),
        ("SELECT es_save_checkpoint('mailer', -1)", "22023"),
        ("SELECT es_save_checkpoint('', 1)", "22023"),
    ] {
        assert_eq!(outcome(c.batch_execute(sql)), state, "{sql}");
    }
    let null: Option<i64> = c
        .query_one("SELECT es_checkpoint(NULL)", &[])
        .unwrap()
        .get(0);
    assert_eq!(null, None);
}

#[test]
fn two_sessions_saving_one_consumer_queue_and_the_later_must_be_ahead() {
    let db = std::sync::Arc::new(TestDb::new("checkpoint_race"));
    let mut c = db.connect();
    c.batch_execute("SELECT es_save_checkpoint('c', 10)")
        .unwrap();
    let mut a = db.connect();
    let mut ta = a.transaction().unwrap();
    ta.batch_execute("SELECT es_save_checkpoint('c', 20)")
        .unwrap();
    // b waits on a's row; once a commits, b's 15 is behind a's 20.
    let db2 = db.clone();
    let b = std::thread::spawn(move || {
        let mut b = db2.connect();
        outcome(b.batch_execute("SELECT es_save_checkpoint('c', 15)"))
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !b.is_finished(),
        "the second save did not wait for the first"
    );
    ta.commit().unwrap();
    assert_eq!(b.join().unwrap(), "ES007");
    assert_eq!(count(&mut c, "SELECT es_checkpoint('c')"), 20);
}

#[test]
fn a_consumer_belongs_to_the_role_that_first_saved_it() {
    let db = TestDb::new("checkpoint_roles");
    let mut c = db.connect();
    let (one, two, other) = (
        format!("{}_one", db.name),
        format!("{}_two", db.name),
        format!("{}_other", db.name),
    );
    c.batch_execute(&format!(
        "CREATE ROLE {one} IN ROLE event_store_reader; CREATE ROLE {two} IN ROLE {one};
         CREATE ROLE {other} IN ROLE event_store_reader; CREATE ROLE {}_none;",
        db.name
    ))
    .unwrap();
    let mut r = db.connect_as(&one);
    r.batch_execute("SELECT es_save_checkpoint('billing', 5)")
        .unwrap();
    // A member of the owner may move it; another reader may not; PUBLIC may not call it at all.
    let mut t = db.connect_as(&two);
    t.batch_execute("SELECT es_save_checkpoint('billing', 6)")
        .unwrap();
    let mut o = db.connect_as(&other);
    assert_eq!(
        outcome(o.batch_execute("SELECT es_save_checkpoint('billing', 7)")),
        "42501"
    );
    assert_eq!(count(&mut o, "SELECT es_checkpoint('billing')"), 6);
    let mut n = db.connect_as(&format!("{}_none", db.name));
    for sql in [
        "SELECT es_save_checkpoint('billing', 8)",
        "SELECT es_checkpoint('billing')",
        "SELECT es_feed_horizon()",
    ] {
        assert_eq!(outcome(n.batch_execute(sql)), "42501", "{sql}");
    }
    assert_eq!(
        outcome(o.batch_execute("UPDATE es_checkpoints SET position = 100")),
        "42501"
    );
}
