//! The feed under synchronous replication, on a real primary and standby: an append that
//! committed on the primary alone (its wait for the standby cancelled, or
//! `synchronous_commit = local`) is served by no read, no projection and no NOTIFY until the
//! standby confirms it, so that a failover can never erase an event a reader saw, nor hand
//! its position out again.
use event_store_testing::*;
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::time::Duration;

/// A primary with `conf`, preloading event_store (its projection worker runs) or not, the
/// extension created, and a standby it waits for as `synchronous_standby_names = names`.
fn pair(conf: &str, names: &str, preload: bool) -> (Cluster, Cluster) {
    let preload = match (timescaledb(), preload) {
        (true, true) => "timescaledb,event_store",
        (true, false) => "timescaledb",
        (false, true) => "event_store",
        (false, false) => "",
    };
    let primary = Cluster::start_with(
        "sync-primary",
        &format!("shared_preload_libraries = '{preload}'\n{conf}"),
    );
    let mut p = primary.connect();
    if timescaledb() {
        p.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
            .unwrap();
    }
    p.batch_execute("CREATE EXTENSION event_store").unwrap();
    let standby = primary.standby("sync-standby");
    p.execute(
        &format!("ALTER SYSTEM SET synchronous_standby_names = '{names}'"),
        &[],
    )
    .unwrap();
    p.execute("SELECT pg_reload_conf()", &[]).unwrap();
    let synchronous =
        "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')";
    wait_for(WAIT, "the standby is synchronous", || {
        count(&mut p, synchronous) == 1
    });
    (primary, standby)
}

/// How long a standby or the feed may take to catch up.
const WAIT: Duration = Duration::from_secs(60);

fn feed(c: &mut Client) -> Vec<(i64, String)> {
    c.query(
        "SELECT global_position, event_id::text FROM es_read_all(0, NULL)",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The payloads of the NOTIFYs received, until none comes for half a second.
fn notified(listener: &mut Client) -> Vec<i64> {
    let mut n = listener.notifications();
    n.timeout_iter(Duration::from_millis(500))
        .map(|m| Ok(m.payload().parse().unwrap()))
        .collect()
        .unwrap()
}

fn horizon(c: &mut Client) -> i64 {
    c.query_one("SELECT es_feed_horizon()", &[]).unwrap().get(0)
}

fn append(c: &mut Client, stream: &str) -> i64 {
    c.query_one(
        "SELECT global_position FROM es_append($1, 'Happened', '{}')",
        &[&stream],
    )
    .unwrap()
    .get(0)
}

/// Runs an append that waits for the (stopped) standby, then cancels that wait: PostgreSQL
/// commits it on the primary alone. Returns its position.
fn cancelled_append(primary: &Cluster, stream: &str) -> i64 {
    let mut c = primary.connect();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let stream = stream.to_string();
    let run = std::thread::spawn(move || append(&mut c, &stream));
    let mut watcher = primary.connect();
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event = 'SyncRep'"
    );
    wait_for(WAIT, "the append waits for the standby", || {
        count(&mut watcher, &waiting) == 1
    });
    watcher
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap();
    run.join().unwrap()
}

#[test]
fn the_feed_serves_nothing_the_synchronous_standby_has_not_confirmed() {
    unconfirmed_appends_wait_for_the_standby(true);
}

/// Without preloading, each session keeps its own marks: the reads are bounded alike (the
/// appends then notify at their own commit, unbounded: the payload is only a hint).
#[test]
fn the_feed_waits_for_the_standby_without_preloading_too() {
    unconfirmed_appends_wait_for_the_standby(false);
}

fn unconfirmed_appends_wait_for_the_standby(preload: bool) {
    let (primary, standby) = pair("", "ANY 1 (*)", preload);
    let mut p = primary.connect();
    append(&mut p, "a-1");
    wait_for(WAIT, "the confirmed append is served", || {
        horizon(&mut p) == 1
    });
    let mut listener = primary.connect();
    listener.batch_execute("LISTEN event_store").unwrap();

    standby.pg_ctl("stop");
    let cancelled = cancelled_append(&primary, "a-1");
    let mut local = primary.connect();
    local
        .batch_execute("SET synchronous_commit = local")
        .unwrap();
    let local_position = append(&mut local, "b-1");
    assert_eq!((cancelled, local_position), (2, 3));
    // Committed on the primary and visible there, but not replicated: no read serves them.
    assert_eq!(count(&mut p, "SELECT count(*) FROM event_store"), 3);
    std::thread::sleep(Duration::from_millis(300)); // the worker's passes and announcements
    assert_eq!(horizon(&mut p), 1);
    assert_eq!(feed(&mut p).len(), 1);
    assert_eq!(
        count(&mut p, "SELECT count(*) FROM es_read_category('a', 0)"),
        1
    );
    let payloads = notified(&mut listener);
    assert!(
        !preload || payloads.iter().all(|&p| p <= 1),
        "a NOTIFY announced an unconfirmed position: {payloads:?}"
    );

    // The standby back and caught up: both appear, and are announced.
    standby.pg_ctl("start");
    wait_for(WAIT, "the feed serves the confirmed appends", || {
        horizon(&mut p) == 3
    });
    assert_eq!(feed(&mut p).len(), 3);
    assert_eq!(feed(&mut primary.connect()).len(), 3, "a new session");
    if preload {
        let announced = notified(&mut listener);
        assert_eq!(
            announced.last(),
            Some(&3),
            "the confirmed appends were announced"
        );
    }
}

/// The position sequence logs 32 values ahead: after 33 appends the 34th `nextval` writes a
/// new WAL record, which a failover erases with the append. The new primary hands out 34
/// again; a consumer that had read up to 34 would skip the new event for good.
#[test]
fn no_position_is_served_twice_across_a_failover() {
    let (primary, standby) = pair("synchronous_commit = remote_apply", "FIRST 1 (*)", true);
    let mut p = primary.connect();
    for i in 0..33 {
        append(&mut p, &format!("a-{i}"));
    }
    assert_eq!(
        count(
            &mut p,
            "SELECT log_cnt FROM _event_store.es_global_position_seq"
        ),
        0
    );
    standby.pg_ctl("stop");
    assert_eq!(cancelled_append(&primary, "a-lost"), 34);
    let mut local = primary.connect();
    local
        .batch_execute("SET synchronous_commit = local")
        .unwrap();
    append(&mut local, "a-lost");
    std::thread::sleep(Duration::from_millis(300));
    let served = feed(&mut p);
    let checkpoint = horizon(&mut p);
    assert_eq!((served.len(), checkpoint), (33, 33));

    // The primary dies; the standby, which never received 34 and 35, takes over.
    primary.pg_ctl("stop");
    standby.pg_ctl("start");
    standby.pg_ctl("promote");
    let mut s = standby.connect();
    wait_for(WAIT, "the standby is promoted", || {
        !s.query_one("SELECT pg_is_in_recovery()", &[])
            .unwrap()
            .get::<_, bool>(0)
    });
    let position = append(&mut s, "a-new");
    assert_eq!(position, 34, "the erased position is handed out again");
    // Everything served before is there, unchanged, and the consumer resuming from its
    // checkpoint reads the new event.
    let after = feed(&mut s);
    assert_eq!(after[..33], served[..]);
    wait_for(WAIT, "the new event is served", || horizon(&mut s) >= 34);
    let resumed: Vec<i64> = s
        .query(
            "SELECT global_position FROM es_read_all($1)",
            &[&checkpoint],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(resumed, vec![34]);
    assert_eq!(count(&mut s, "SELECT count(*) FROM es_verify()"), 0);
}
