//! A failover on a real highly available cluster: etcd and three PostgreSQL nodes under
//! Patroni (scripts/ha-cluster.sh), quorum synchronous replication, event_store preloaded on
//! each. The leader is killed (SIGKILL of Patroni and of the postmaster) under concurrent
//! appends, a reader following the feed and a projection; then it rejoins as a replica.
//! One failover costs Patroni's ttl (about 20 s here), so one test walks the whole story.
use event_store_testing::*;
use postgres::{Client, Config, NoTls};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

struct Ha {
    dir: String,
    port: u16,
}

impl Ha {
    fn script(args: &[&str]) {
        let dir = std::path::Path::new(&pg_bin("pg_ctl"))
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let status = std::process::Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/ha-cluster.sh"
            ))
            .args(args)
            .env("ES_PG_BIN", dir)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/ha-cluster.sh {args:?}");
    }

    fn start() -> Ha {
        let run = std::env::var("ES_TEST_HOST").expect("ES_TEST_HOST");
        // Below the ephemeral range (32768-60999), which outgoing connections take ports from.
        let port = 21000 + (std::process::id() % 100) as u16 * 30;
        let ha = Ha {
            dir: format!("{run}/ha-{}", std::process::id()),
            port,
        };
        let preload = match timescaledb() {
            true => "timescaledb,event_store",
            false => "event_store",
        };
        Ha::script(&["start", &ha.dir, &port.to_string(), preload]);
        ha
    }

    fn config(&self, node: usize) -> Config {
        let mut c = Config::new();
        c.host("127.0.0.1")
            .port(self.port + 10 + node as u16)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        c
    }

    fn connect(&self, node: usize) -> Option<Client> {
        self.config(node).connect(NoTls).ok()
    }

    /// The node that takes writes now, if any (never `except`).
    fn leader(&self, except: usize) -> Option<(usize, Client)> {
        (1..=3).filter(|&n| n != except).find_map(|n| {
            let mut c = self.connect(n)?;
            let primary: bool = c
                .query_one("SELECT NOT pg_is_in_recovery()", &[])
                .ok()?
                .get(0);
            primary.then_some((n, c))
        })
    }

    fn wait_leader(&self, except: usize) -> (usize, Client) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(l) = self.leader(except) {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader came up");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL of node `n`'s Patroni and postmaster: nothing of it gets to run again.
    fn kill(&self, n: usize) {
        for file in ["patroni.pid", "data/postmaster.pid"] {
            let text = std::fs::read_to_string(format!("{}/node{n}/{file}", self.dir)).unwrap();
            let pid: i32 = text.lines().next().unwrap().trim().parse().unwrap();
            // SAFETY: a signal to a process this test's cluster started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        Ha::script(&["stop", &self.dir]);
    }
}

fn event_id(writer: usize, k: usize) -> String {
    format!("00000000-0000-4000-8000-{:06x}{:06x}", writer, k)
}

#[derive(Debug, Clone)]
struct Ack {
    k: usize,
    stream: String,
    version: i64,
    position: i64,
    id: String,
    /// Sent first to the new leader (not a retry of one the old leader may have stored).
    after_failover: bool,
}

/// What the test tells its threads.
#[derive(Default)]
struct Flags {
    stop: AtomicBool,
    /// The synchronous writers start no new append (the local one goes on).
    pause: AtomicBool,
    failed_over: AtomicBool,
    /// Every writer has returned: no append is in flight any more.
    written: AtomicBool,
    /// Appends the new leader acknowledged to each writer, first sent there.
    after: [AtomicUsize; 4],
}

/// Appends until `stop`, each event retried with the same id and expected version until it is
/// acknowledged, across the failover. `local`: with `synchronous_commit = local`, whose
/// acknowledgements a failover may lose (and no expected version, since it may lose one).
fn writer(ha: Arc<Ha>, w: usize, local: bool, flags: Arc<Flags>) -> JoinHandle<Vec<Ack>> {
    std::thread::spawn(move || {
        let mut acks = vec![];
        let mut c: Option<Client> = None;
        let mut k = 0;
        while !flags.stop.load(SeqCst) {
            if !local && flags.pause.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let stream = format!("w{w}-{}", k / 5);
            let expected = (!local).then_some((k % 5) as i64);
            let id = event_id(w, k);
            let mut retried = false;
            loop {
                if c.is_none() {
                    c = ha.leader(0).map(|(_, mut c)| {
                        if local {
                            c.batch_execute("SET synchronous_commit = local").unwrap();
                        }
                        c
                    });
                }
                let Some(client) = c.as_mut() else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                let after = flags.failed_over.load(SeqCst);
                match client.query_one(
                    "SELECT stream_version, global_position, event_id::text \
                       FROM es_append($1, 'Happened', $2::text::jsonb, '{}', $3, $4::text::uuid)",
                    &[&stream, &format!("{{\"k\": {k}}}"), &expected, &id],
                ) {
                    Ok(r) => {
                        acks.push(Ack {
                            k,
                            stream: stream.clone(),
                            version: r.get(0),
                            position: r.get(1),
                            id: r.get(2),
                            after_failover: after && !retried,
                        });
                        flags.after[w].fetch_add((after && !retried) as usize, SeqCst);
                        break;
                    }
                    Err(e) if e.as_db_error().is_some() && !e.is_closed() => {
                        // A node read-only again or shutting down: reconnect. Any other error
                        // (ES001: an expected version broken by the failover) fails the test.
                        let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                        assert!(
                            ["25006", "57P01", "57P02", "57P03"].contains(&code.as_str()),
                            "writer {w} event {k}: {e}"
                        );
                        c = None;
                    }
                    Err(_) => c = None, // the connection died with the leader
                }
                retried = true;
            }
            k += 1;
        }
        acks
    })
}

/// Follows the feed from position 0 until the writers are done, then to its end: every
/// (position, id) served.
fn reader(ha: Arc<Ha>, flags: Arc<Flags>) -> JoinHandle<BTreeMap<i64, String>> {
    std::thread::spawn(move || {
        let mut served = BTreeMap::new();
        let mut checkpoint = 0i64;
        let mut c: Option<Client> = None;
        let mut done = false;
        let mut deadline = None;
        while !done {
            if flags.written.load(SeqCst) {
                let at = *deadline.get_or_insert(Instant::now() + Duration::from_secs(90));
                assert!(Instant::now() < at, "the feed did not reach the last event");
            }
            if c.is_none() {
                c = ha.leader(0).map(|(_, c)| c);
            }
            let Some(client) = c.as_mut() else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            match client.query(
                "SELECT global_position, event_id::text FROM es_read_all($1, 500)",
                &[&checkpoint],
            ) {
                Ok(rows) => {
                    for r in &rows {
                        let position: i64 = r.get(0);
                        assert!(position > checkpoint, "the feed went back");
                        checkpoint = position;
                        served.insert(position, r.get::<_, String>(1));
                    }
                    if rows.is_empty() {
                        // Done once the writers stopped and the horizon reached the last event.
                        done = flags.written.load(SeqCst)
                            && client
                                .query_one(
                                    "SELECT es_feed_horizon() >= coalesce(max(global_position), 0) \
                                       FROM event_store",
                                    &[],
                                )
                                .is_ok_and(|r| r.get(0));
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                Err(_) => c = None,
            }
        }
        served
    })
}

fn events(c: &mut Client) -> HashMap<String, (String, i64, i64)> {
    c.query(
        "SELECT event_id::text, stream_id, stream_version, global_position FROM event_store",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
    .collect()
}

/// How long the new leader, the projection or the rejoined replica may take.
const WAIT: Duration = Duration::from_secs(90);

#[test]
fn a_killed_leader_loses_no_acknowledged_append_and_the_feed_skips_nothing() {
    let ha = Arc::new(Ha::start());
    let (old, mut c) = ha.wait_leader(0);
    if timescaledb() {
        c.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
            .unwrap();
    }
    // A projection that records how often it applied each event.
    c.batch_execute(
        "CREATE EXTENSION event_store;
         CREATE ROLE app_owner IN ROLE event_store_writer;
         GRANT CREATE ON SCHEMA public TO app_owner;
         SET ROLE app_owner;
         CREATE TABLE applied (event_id uuid PRIMARY KEY, times integer NOT NULL);
         CREATE FUNCTION apply(e event_store) RETURNS void LANGUAGE sql AS $$
             INSERT INTO applied VALUES (e.event_id, 1)
             ON CONFLICT (event_id) DO UPDATE SET times = applied.times + 1 $$;
         SELECT es_create_projection('applied', 'apply(event_store)');
         RESET ROLE;",
    )
    .unwrap();

    let flags = Arc::new(Flags::default());
    let writers: Vec<_> = (0..4)
        .map(|w| writer(ha.clone(), w, w == 3, flags.clone()))
        .collect();
    let reading = reader(ha.clone(), flags.clone());
    std::thread::sleep(Duration::from_secs(3));
    // The scenario needs both replicas streaming; on a loaded machine one may still be
    // connecting after those 3 seconds.
    wait_for(WAIT, "both replicas stream", || {
        count(
            &mut c,
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        ) == 2
    });
    // The leader stops sending WAL while only the local writer appends: it goes on committing
    // on the leader alone (visible there at once), and the leader dies with those commits.
    flags.pause.store(true, SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    let senders: Vec<i32> = c
        .query("SELECT pid FROM pg_stat_replication", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(senders.len(), 2);
    // SAFETY: signals to processes of this test's cluster.
    senders.iter().for_each(|&pid| unsafe {
        libc::kill(pid, libc::SIGSTOP);
    });
    std::thread::sleep(Duration::from_secs(1));
    let served_before = c
        .query_one("SELECT es_feed_horizon()", &[])
        .unwrap()
        .get::<_, i64>(0);
    // The synchronous writers go on: their appends wait for standbys that hear nothing, and
    // are in flight when the leader dies (each retried on the new leader with its id).
    flags.pause.store(false, SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above; they die without sending what they hold.
    senders.iter().for_each(|&pid| unsafe {
        libc::kill(pid, libc::SIGKILL);
    });
    ha.kill(old);
    let killed_at = Instant::now();
    let (new, mut c) = ha.wait_leader(old);
    flags.failed_over.store(true, SeqCst);
    eprintln!(
        "node{new} leads {:.1} s after node{old} was killed",
        killed_at.elapsed().as_secs_f64()
    );
    // Until the new leader has a synchronous standby and took appends from every writer (the
    // local writer's alone need no standby).
    wait_for(
        WAIT,
        "the new leader takes appends from every writer",
        || flags.after.iter().all(|a| a.load(SeqCst) >= 50),
    );
    flags.stop.store(true, SeqCst);
    let acks: Vec<Vec<Ack>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    flags.written.store(true, SeqCst);
    let served = reading.join().unwrap();

    let stored = events(&mut c);
    // Every acknowledged synchronous append is on the new leader, where it was acknowledged.
    for ack in acks[..3].iter().flatten() {
        let at = stored.get(&ack.id);
        assert_eq!(
            at,
            Some(&(ack.stream.clone(), ack.version, ack.position)),
            "acknowledged {ack:?}"
        );
    }
    assert!(acks[..3].iter().all(|a| a.iter().any(|a| a.after_failover)));
    // Everything the feed served exists as served; and the reader, resuming from its
    // checkpoint on the new leader, read every event there: no position was reused.
    let all: BTreeMap<i64, String> = stored.iter().map(|(id, e)| (e.2, id.clone())).collect();
    let erased: Vec<_> = served
        .iter()
        .filter(|(p, id)| all.get(p) != Some(id))
        .collect();
    let skipped: Vec<_> = all
        .iter()
        .filter(|(p, id)| served.get(p) != Some(id))
        .collect();
    assert!(
        erased.is_empty() && skipped.is_empty(),
        "the feed served events the failover erased: {erased:?}; skipped: {skipped:?} \
         (the last event is at {:?}, the reader got to {:?})",
        all.keys().last(),
        served.keys().last()
    );
    let first_after = acks
        .iter()
        .flatten()
        .filter(|a| a.after_failover)
        .map(|a| a.position)
        .min()
        .unwrap();
    assert!(first_after > served_before);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    // Each synchronous writer's last append acknowledged by the old leader, sent again to the
    // new one as a client that never got the answer would: the stored event comes back, and
    // nothing is written.
    for (w, acked) in acks[..3].iter().enumerate() {
        let ack = acked.iter().rfind(|a| !a.after_failover).unwrap();
        let r = c
            .query_one(
                "SELECT stream_version, global_position FROM es_append($1, 'Happened', \
                   $2::text::jsonb, '{}', $3, $4::text::uuid)",
                &[
                    &ack.stream,
                    &format!("{{\"k\": {}}}", ack.k),
                    &(ack.version - 1),
                    &event_id(w, ack.k),
                ],
            )
            .unwrap();
        assert_eq!(
            (r.get::<_, i64>(0), r.get::<_, i64>(1)),
            (ack.version, ack.position)
        );
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM event_store"),
        stored.len() as i64
    );

    // The projection resumes on the new leader: every event applied exactly once.
    wait_for(WAIT, "the projection caught up on the new leader", || {
        count(
            &mut c,
            "SELECT count(*) FROM es_projections WHERE name = 'applied' AND position >= es_feed_horizon()",
        ) == 1
    });
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM applied WHERE times = 1"),
        stored.len() as i64
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM applied"),
        stored.len() as i64
    );

    // The old leader rejoins as a replica (pg_rewind): it serves reads again, never past what
    // it replayed, and no event_store worker runs on a replica.
    Ha::script(&["node", &ha.dir, &old.to_string()]);
    c.query_one("SELECT es_publish_feed_horizon()", &[])
        .unwrap();
    let leader_horizon: i64 = c.query_one("SELECT es_feed_horizon()", &[]).unwrap().get(0);
    // Patroni may restart it once more after pg_rewind: a fresh session each time.
    wait_for(
        WAIT,
        "the old leader, a replica, serves the whole feed",
        || {
            ha.connect(old).is_some_and(|mut r| {
                r.query_one(
                    "SELECT pg_is_in_recovery() AND es_feed_horizon() = $1",
                    &[&leader_horizon],
                )
                .is_ok_and(|row| row.get::<_, bool>(0))
            })
        },
    );
    let mut r = ha.connect(old).unwrap();
    let replica: BTreeMap<i64, String> = r
        .query(
            "SELECT global_position, event_id::text FROM es_read_all(0, NULL)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(replica, all);
    for n in (1..=3).filter(|&n| n != new) {
        let mut s = ha.connect(n).unwrap();
        assert_eq!(
            count(
                &mut s,
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'event_store%'"
            ),
            0,
            "an event_store worker runs on replica node{n}"
        );
    }
}
