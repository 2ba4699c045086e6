//! Several real connections committing at once.
use event_store_testing::*;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};
use uuid::Uuid;

const WRITERS: usize = 8;

#[test]
fn eight_writers_on_one_stream_with_expected_version_get_dense_versions() {
    let db = Arc::new(TestDb::new("onestream"));
    let per_writer: i32 = 25;
    let barrier = Arc::new(Barrier::new(WRITERS));
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (db, barrier) = (db.clone(), barrier.clone());
            thread::spawn(move || {
                let mut c = db.connect();
                barrier.wait();
                let mut conflicts = 0;
                for i in 0..per_writer {
                    loop {
                        let v: i64 = c.query_one("SELECT es_stream_version('shared-1')", &[]).unwrap().get(0);
                        let r = c.query_one(
                            "SELECT stream_version FROM es_append('shared-1', 'Inc', jsonb_build_object('w', $1::int, 'i', $2::int), '{}', $3)",
                            &[&(w as i32), &i, &v],
                        );
                        match r {
                            Ok(row) => {
                                assert_eq!(row.get::<_, i64>(0), v + 1);
                                break;
                            }
                            Err(e) if e.code().map(|c| c.code()) == Some("ES001") => conflicts += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let mut c = db.connect();
    let n = WRITERS as i64 * per_writer as i64;
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), n);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(DISTINCT stream_version) FROM event_store"
        ),
        n
    );
    assert_eq!(
        count(&mut c, "SELECT min(stream_version) FROM event_store"),
        1
    );
    assert_eq!(
        count(&mut c, "SELECT max(stream_version) FROM event_store"),
        n
    );
    assert_eq!(count(&mut c, "SELECT es_stream_version('shared-1')"), n);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    eprintln!("{conflicts} optimistic-concurrency conflicts were retried");
}

#[test]
fn writers_on_different_streams_never_wait_for_each_other() {
    let db = Arc::new(TestDb::new("manystreams"));
    let mut setup = db.connect();
    for i in 0..WRITERS {
        setup
            .query(
                "SELECT * FROM es_append($1, 'Created', '{}')",
                &[&format!("s-{i}")],
            )
            .unwrap();
    }
    // Stream s-0's lock is held by an open transaction that has appended.
    let mut holder = db.connect();
    holder
        .batch_execute("BEGIN; SELECT * FROM es_append('s-0', 'Held', '{}')")
        .unwrap();

    let handles: Vec<_> = (1..WRITERS)
        .map(|i| {
            let db = db.clone();
            thread::spawn(move || {
                let mut c = db.connect();
                c.batch_execute("SET lock_timeout = '5s'").unwrap();
                let start = Instant::now();
                for _ in 0..20 {
                    c.query(
                        "SELECT * FROM es_append($1, 'Step', '{}')",
                        &[&format!("s-{i}")],
                    )
                    .unwrap();
                }
                // A stream nobody has used yet does not wait either.
                c.query(
                    "SELECT * FROM es_append($1, 'Created', '{}')",
                    &[&format!("new-{i}")],
                )
                .unwrap();
                start.elapsed()
            })
        })
        .collect();
    for h in handles {
        let took = h.join().unwrap();
        assert!(took < Duration::from_secs(5), "a writer waited {took:?}");
    }
    // The same stream does wait: one stream serialises on itself.
    let mut same = db.connect();
    same.batch_execute("SET lock_timeout = '300ms'").unwrap();
    assert_eq!(
        sqlstate(same.query("SELECT * FROM es_append('s-0', 'Blocked', '{}')", &[])),
        "55P03"
    );
    holder.batch_execute("COMMIT").unwrap();
    same.query("SELECT * FROM es_append('s-0', 'Unblocked', '{}')", &[])
        .unwrap();
    assert_eq!(count(&mut setup, "SELECT es_stream_version('s-0')"), 3);
    assert_eq!(
        count(&mut setup, "SELECT count(*) FROM event_store"),
        (WRITERS + 2 + (WRITERS - 1) * 21) as i64
    );
}

#[test]
fn concurrent_retries_of_one_event_id_write_it_once() {
    let db = Arc::new(TestDb::new("retries"));
    let id = Uuid::new_v4();
    let results = race(&db, WRITERS, move |_, c| {
        let r = c
            .query_one(
                "SELECT event_id, global_position FROM es_append('pay-1', 'Charged', '{\"cents\": 500}', '{}', 0, $1)",
                &[&id],
            )
            .unwrap();
        (r.get::<_, Uuid>(0), r.get::<_, i64>(1))
    });
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
    assert_eq!(results[0].0, id);
    let mut c = db.connect();
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 1);
}

#[test]
fn one_event_id_raced_into_different_streams_lands_once() {
    let db = Arc::new(TestDb::new("idrace"));
    let id = Uuid::new_v4();
    let mut outcomes = race(&db, WRITERS, move |w, c| {
        outcome(c.query(
            "SELECT * FROM es_append($1, 'Charged', '{}', '{}', NULL, $2)",
            &[&format!("pay-{w}"), &id],
        ))
    });
    outcomes.sort();
    let mut want = vec!["ES002".to_string(); WRITERS - 1];
    want.push("ok".into());
    assert_eq!(outcomes, want);
    let mut c = db.connect();
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 1);
}

#[test]
fn racing_to_create_a_stream_with_expected_version_zero_has_one_winner() {
    let db = Arc::new(TestDb::new("create"));
    let outcomes = race(&db, WRITERS, |_, c| {
        outcome(c.query(
            "SELECT * FROM es_append('order-1', 'Placed', '{}', '{}', 0)",
            &[],
        ))
    });
    assert_eq!(
        outcomes.iter().filter(|o| *o == "ok").count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| o == "ok" || o == "ES001"),
        "{outcomes:?}"
    );
    let mut c = db.connect();
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 1);
}

/// A stream's creator that rolls back leaves no row behind: the second creator, which waited
/// for it, makes the stream itself (its first event at version 1); one that commits makes the
/// waiter append after it.
#[test]
fn a_second_creator_of_a_stream_waits_for_the_first_and_follows_its_outcome() {
    let db = Arc::new(TestDb::new("create_wait"));
    for outcome in ["ROLLBACK", "COMMIT"] {
        let stream = format!("wait-{}", outcome.to_lowercase());
        let mut first = db.connect();
        first
            .batch_execute(&format!(
                "BEGIN; SELECT es_append('{stream}', 'First', '{{}}')"
            ))
            .unwrap();
        let second = {
            let (db, stream) = (db.clone(), stream.clone());
            thread::spawn(move || {
                let mut c = db.connect();
                c.query_one(
                    "SELECT stream_version FROM es_append($1, 'Second', '{}')",
                    &[&stream],
                )
                .unwrap()
                .get::<_, i64>(0)
            })
        };
        let mut watch = db.connect();
        wait_for(
            Duration::from_secs(10),
            "the second creator waiting",
            || {
                count(
                    &mut watch,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                   AND query LIKE '%Second%' AND datname = current_database()",
                ) == 1
            },
        );
        first.batch_execute(outcome).unwrap();
        let expected = if outcome == "COMMIT" { 2 } else { 1 };
        assert_eq!(second.join().unwrap(), expected, "after {outcome}");
        let mut c = db.connect();
        let versions: Vec<i64> = c
            .query(
                "SELECT version FROM _event_store.es_streams WHERE stream_id = $1",
                &[&stream],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, [expected], "one registry row, after {outcome}");
    }
    let mut c = db.connect();
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
}

/// Under REPEATABLE READ, a stream another transaction created after the snapshot is a
/// serialization failure (to retry), not an error of another kind and not a second row.
#[test]
fn creating_a_stream_created_since_a_repeatable_read_snapshot_fails_to_serialize() {
    let db = TestDb::new("create_rr");
    let mut reader = db.connect();
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM event_store")
        .unwrap();
    db.connect()
        .batch_execute("SELECT es_append('rr-1', 'Made', '{}')")
        .unwrap();
    assert_eq!(
        sqlstate(reader.execute("SELECT es_append('rr-1', 'Again', '{}')", &[])),
        "40001"
    );
    reader.batch_execute("ROLLBACK").unwrap();
    let mut c = db.connect();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM _event_store.es_streams WHERE stream_id = 'rr-1'"
        ),
        1
    );
}

/// Appends keep working while the registry's relcache entry is invalidated under them (an
/// ANALYZE, as autovacuum runs one, invalidates it at every commit): an append that opened
/// es_streams and then its indexes once read the primary key from an entry rebuilt in between,
/// and failed with "es_streams has lost its primary key".
#[test]
fn appends_survive_invalidations_of_the_registry() {
    let db = Arc::new(TestDb::new("reginval"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let analyze = {
        let (db, stop) = (db.clone(), stop.clone());
        thread::spawn(move || {
            let mut c = db.connect();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.batch_execute("ANALYZE _event_store.es_streams").unwrap();
                n += 1;
            }
            n
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let db = db.clone();
            thread::spawn(move || {
                let mut c = db.connect();
                let deadline = Instant::now() + Duration::from_secs(4);
                let mut n = 0;
                while Instant::now() < deadline {
                    c.execute(
                        "SELECT es_append('inval-' || $1::int || '-' || $2::int, 'E', '{}')",
                        &[&w, &(n % 50)],
                    )
                    .unwrap_or_else(|e| panic!("append {n} of writer {w}: {e:?}"));
                    n += 1;
                }
                n
            })
        })
        .collect();
    let appended: i32 = writers.into_iter().map(|h| h.join().unwrap()).sum();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let analyzed = analyze.join().unwrap();
    assert!(
        appended > 100 && analyzed > 10,
        "{appended} appends, {analyzed} analyzes"
    );
    let mut c = db.connect();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM event_store"),
        appended as i64
    );
}
