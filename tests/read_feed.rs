//! The global feed: every committed event exactly once, in position order, whatever order
//! transactions commit in, and never held back by transactions that append nothing.
use event_store_testing::*;
use postgres::fallible_iterator::FallibleIterator;
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

fn read_all(c: &mut postgres::Client, after: i64) -> Vec<i64> {
    c.query(
        "SELECT global_position FROM es_read_all($1, 1000)",
        &[&after],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn append(c: &mut postgres::Client, stream: &str) -> i64 {
    c.query_one(
        "SELECT global_position FROM es_append($1, 'E', '{}')",
        &[&stream],
    )
    .unwrap()
    .get(0)
}

fn out_of_order_commit(rollback_a: bool) {
    let db = TestDb::new(if rollback_a {
        "feedrollback"
    } else {
        "feedorder"
    });
    let (mut a, mut b, mut reader) = (db.connect(), db.connect(), db.connect());
    let p0 = append(&mut b, "warmup-1");
    a.batch_execute("BEGIN").unwrap();
    let pa = append(&mut a, "a-1");
    let pb = append(&mut b, "b-1"); // commits while A, with the lower position, is still open
    assert!(pa < pb);
    // B is committed, but returning it now would let the reader move past A's position.
    assert_eq!(read_all(&mut reader, 0), vec![p0]);
    assert_eq!(read_all(&mut reader, p0), Vec::<i64>::new());
    a.batch_execute(if rollback_a { "ROLLBACK" } else { "COMMIT" })
        .unwrap();
    let expected = if rollback_a { vec![pb] } else { vec![pa, pb] };
    assert_eq!(read_all(&mut reader, p0), expected);
    assert_eq!(read_all(&mut reader, pb), Vec::<i64>::new());
}

#[test]
fn a_later_position_committed_first_waits_for_the_earlier_one() {
    out_of_order_commit(false);
}

#[test]
fn a_rolled_back_position_does_not_stall_the_feed() {
    out_of_order_commit(true);
}

#[test]
fn transactions_that_append_nothing_do_not_hold_the_feed_back() {
    let db = TestDb::new("feedidle");
    let mut setup = db.connect();
    setup.batch_execute("CREATE TABLE other (x int)").unwrap();
    // Idle in transaction, with a transaction id and a snapshot: the classic feed staller.
    let mut idle = db.connect();
    idle.batch_execute("BEGIN; INSERT INTO other VALUES (1); SELECT count(*) FROM event_store")
        .unwrap();
    let mut w = db.connect();
    let p = append(&mut w, "s-1");
    let mut reader = db.connect();
    assert_eq!(read_all(&mut reader, 0), vec![p]);
    idle.batch_execute("COMMIT").unwrap();
}

#[test]
fn hundreds_of_appenders_committing_in_random_order_are_read_exactly_once() {
    let db = Arc::new(TestDb::new("feedstress"));
    let writers = 16;
    let txns_per_writer = 25;
    let done = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(writers + 1));
    let reader = {
        let (db, done, barrier) = (db.clone(), done.clone(), barrier.clone());
        thread::spawn(move || {
            let mut c = db.connect();
            let mut seen = vec![];
            let mut after = 0;
            barrier.wait();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let page = read_all(&mut c, after);
                if let Some(last) = page.last() {
                    after = *last;
                }
                seen.extend(page);
                if finished {
                    // One more read after every writer ended, then stop.
                    let tail = read_all(&mut c, after);
                    seen.extend(tail);
                    return seen;
                }
            }
        })
    };
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (db, barrier) = (db.clone(), barrier.clone());
            thread::spawn(move || {
                let mut c = db.connect();
                let mut rng = rand::thread_rng();
                barrier.wait();
                for t in 0..txns_per_writer {
                    c.batch_execute("BEGIN").unwrap();
                    for _ in 0..rng.gen_range(1..4) {
                        append(&mut c, &format!("w{w}-{}", t % 3));
                    }
                    thread::sleep(Duration::from_micros(rng.gen_range(0..3000)));
                    c.batch_execute(if rng.gen_bool(0.2) {
                        "ROLLBACK"
                    } else {
                        "COMMIT"
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();
    let mut c = db.connect();
    let committed: Vec<i64> = c
        .query("SELECT global_position FROM event_store ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "positions not strictly increasing"
    );
    assert_eq!(
        seen.len(),
        committed.len(),
        "read {} of {} committed events",
        seen.len(),
        committed.len()
    );
    assert_eq!(seen, committed);
    assert!(committed.len() > writers * txns_per_writer / 2);
}

#[test]
fn category_reads_split_streams_between_consumer_group_members() {
    let db = TestDb::new("feedcategory");
    let mut c = db.connect();
    for i in 0..30 {
        append(&mut c, &format!("order-{}", i % 10));
        append(&mut c, &format!("user-{}", i % 7));
    }
    let read =
        |c: &mut postgres::Client, member: Option<i32>, size: Option<i32>| -> Vec<(i64, String)> {
            c.query(
                "SELECT global_position, stream_id FROM es_read_category('order', 0, 1000, $1, $2)",
                &[&member, &size],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
        };
    let all = read(&mut c, None, None);
    assert_eq!(all.len(), 30);
    assert!(all.iter().all(|(_, s)| s.starts_with("order-")));
    let mut union: Vec<(i64, String)> = vec![];
    let mut owners = std::collections::HashMap::new();
    for m in 0..3 {
        for (p, s) in read(&mut c, Some(m), Some(3)) {
            assert_eq!(
                *owners.entry(s.clone()).or_insert(m),
                m,
                "stream {s} went to two members"
            );
            union.push((p, s));
        }
    }
    union.sort();
    assert_eq!(union, all);
    for (args, state) in [
        ("0, -1", "22023"),
        ("0, 10, 0, NULL", "22023"),
        ("0, 10, 3, 3", "22023"),
    ] {
        assert_eq!(
            sqlstate(c.query(
                &format!("SELECT * FROM es_read_category('order', {args})"),
                &[]
            )),
            state,
            "{args}"
        );
    }
    let page: Vec<i64> = c
        .query(
            "SELECT global_position FROM es_read_category('order', $1, 5)",
            &[&all[9].0],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        page,
        all[10..15].iter().map(|(p, _)| *p).collect::<Vec<_>>()
    );
}

#[test]
fn event_type_filter_and_paging() {
    let db = TestDb::new("feedfilter");
    let mut c = db.connect();
    for i in 0..10 {
        c.query(
            "SELECT * FROM es_append('s-1', $1, '{}')",
            &[&if i % 2 == 0 { "Even" } else { "Odd" }],
        )
        .unwrap();
    }
    let evens: Vec<String> = c
        .query(
            "SELECT event_type FROM es_read_all(0, 3, ARRAY['Even'])",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(evens, vec!["Even"; 3]);
    assert_eq!(
        sqlstate(c.query("SELECT * FROM es_read_all(0, -1)", &[])),
        "22023"
    );
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .unwrap();
    assert_eq!(
        sqlstate(c.query("SELECT * FROM es_read_all()", &[])),
        "0A000"
    );
}

#[test]
fn listeners_are_notified_of_committed_appends_only() {
    let db = TestDb::new("feednotify");
    let mut listener = db.connect();
    listener.batch_execute("LISTEN event_store").unwrap();
    let mut w = db.connect();
    w.batch_execute("BEGIN").unwrap();
    append(&mut w, "s-1");
    w.batch_execute("ROLLBACK").unwrap();
    let p = append(&mut w, "s-1");
    let mut n = listener.notifications();
    let first = n
        .timeout_iter(Duration::from_secs(5))
        .next()
        .unwrap()
        .expect("no notification");
    assert_eq!(
        (first.channel(), first.payload()),
        ("event_store", p.to_string().as_str())
    );
    let more = n.timeout_iter(Duration::from_millis(300)).next().unwrap();
    assert!(
        more.is_none(),
        "the rolled-back append must not notify: {more:?}"
    );
}

/// Waits for notifications until one carries `last`; returns (sender pid, payload) of each.
fn notifications_up_to(listener: &mut postgres::Client, last: i64) -> Vec<(i32, i64)> {
    let mut got = vec![];
    let mut n = listener.notifications();
    let mut it = n.timeout_iter(Duration::from_secs(10));
    while let Some(note) = it.next().unwrap() {
        let payload: i64 = note.payload().parse().unwrap();
        got.push((note.process_id(), payload));
        if payload >= last {
            return got;
        }
    }
    panic!("no notification carried position {last}: {got:?}");
}

/// Who sends this database's notifications: with the worker, waits until it does (until it
/// runs, appends notify themselves) and returns its pid; without, the appending backend's.
fn notifier(listener: &mut postgres::Client, w: &mut postgres::Client) -> i32 {
    let own: i32 = w.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    if std::env::var("ES_TEST_WORKER").as_deref() != Ok("1") {
        let p = append(w, "s-1");
        assert_eq!(notifications_up_to(listener, p), vec![(own, p)]);
        return own;
    }
    // Ask the launcher for this database's worker.
    w.batch_execute("SELECT _event_store._es_wake_projections(true)")
        .unwrap();
    let worker = (0..200)
        .find_map(|_| {
            let p = append(w, "s-1");
            let from = notifications_up_to(listener, p).last().unwrap().0;
            thread::sleep(Duration::from_millis(50));
            (from != own).then_some(from)
        })
        .expect("the worker never sent a notification");
    let kind: String = w
        .query_one(
            "SELECT backend_type FROM pg_stat_activity WHERE pid = $1",
            &[&worker],
        )
        .unwrap()
        .get(0);
    assert_eq!(kind, "event_store projections");
    worker
}

#[test]
fn one_notify_may_announce_many_commits_and_every_commit_is_announced() {
    let db = Arc::new(TestDb::new("feednotify_coalesced"));
    let mut listener = db.connect();
    listener.batch_execute("LISTEN event_store").unwrap();
    let mut w = db.connect();
    let sender = notifier(&mut listener, &mut w);
    // A burst from several connections: every commit is announced. The worker announces the
    // highest position committed so far, so its payloads never go down (one may stand for
    // several commits); commits notifying themselves come in commit order.
    let last = race(&db, 4, |i, c| {
        (0..25)
            .map(|_| append(c, &format!("burst-{i}")))
            .max()
            .unwrap()
    })
    .into_iter()
    .max()
    .unwrap();
    let got = notifications_up_to(&mut listener, last);
    if std::env::var("ES_TEST_WORKER").as_deref() == Ok("1") {
        assert!(got.windows(2).all(|p| p[0].1 <= p[1].1), "{got:?}");
        assert!(got.iter().all(|(pid, _)| *pid == sender), "{got:?}");
    }
    // A commit of a lower position after a higher one was announced: a listener woken by the
    // higher one stopped below the lower, so the later commit must wake it again.
    let mut a = db.connect();
    a.batch_execute("BEGIN").unwrap();
    let low = append(&mut a, "late-1");
    let high = append(&mut w, "early-1");
    assert!(low < high);
    notifications_up_to(&mut listener, high);
    a.batch_execute("COMMIT").unwrap();
    let mut n = listener.notifications();
    let again = n.timeout_iter(Duration::from_secs(10)).next().unwrap();
    assert!(
        again.is_some(),
        "the late commit of position {low} woke no listener"
    );
}
