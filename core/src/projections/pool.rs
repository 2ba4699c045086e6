//! The launcher's decisions for the cluster-wide pool of projection workers
//! (`event_store.max_workers`): which databases get a worker now, and which workers give their
//! slot back so that a database waiting for one is served. Plain data in, plain data out; the
//! launcher (src/projections/launcher.rs) reads the shared state and acts on the plan.

/// Whether a database has event_store, as far as the pool knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// Not yet looked at (a database created since the server started): one worker looks.
    Unknown,
    Absent,
    Present,
}

/// A database as the launcher sees it.
#[derive(Clone, Debug)]
pub struct Database {
    pub id: u32,
    pub known: Known,
    /// Work waits: a pass asked for, an announcement owed to listeners, a retry or retention
    /// policy due.
    pub demand: bool,
    /// Workers started for it and not yet gone (some may still be connecting).
    pub workers: usize,
    /// Of those, how many are inside one projection's batch for longer than a moment: they
    /// cannot take new work until it ends.
    pub busy: usize,
    /// Since when it has waited for a worker (microseconds, any epoch); None if it is not.
    pub waiting_since: Option<i64>,
}

/// A worker that is connected.
#[derive(Clone, Debug)]
pub struct Worker {
    pub slot: usize,
    pub database: u32,
    /// How long it has served its database, in microseconds.
    pub tenure: i64,
    /// Between batches (not inside a handler).
    pub idle: bool,
    /// Already asked to give its slot back.
    pub leaving: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Databases to start a worker for, in this order, while slots last.
    pub start: Vec<u32>,
    /// Databases that need a worker and get none now.
    pub waiting: Vec<u32>,
    /// Worker slots asked to leave after their current batch.
    pub leave: Vec<usize>,
}

/// Whether `d` needs one more worker: a database never looked at gets one to look; one with
/// work gets one when it has none, or when every one it has is stuck in a batch (a slow
/// handler must not hold up its other projections and its listeners).
fn needs_worker(d: &Database) -> bool {
    match d.known {
        Known::Unknown => d.workers == 0,
        Known::Absent => false,
        Known::Present => d.demand && (d.workers == 0 || d.busy >= d.workers),
    }
}

/// The plan for one round. `running` is how many pool slots are taken (workers started and not
/// gone), `max` the pool's size, `slice` how long a worker serves one database before it gives
/// its slot to a database that waits (microseconds).
pub fn plan(
    databases: &[Database],
    workers: &[Worker],
    running: usize,
    max: usize,
    slice: i64,
) -> Plan {
    let mut needy: Vec<&Database> = databases.iter().filter(|d| needs_worker(d)).collect();
    // A database with no worker before one asking for another; then the longest waiting; then
    // by id, so that equal claims are served in a stable order.
    needy.sort_by_key(|d| (d.workers > 0, d.waiting_since.unwrap_or(i64::MAX), d.id));
    let free = max.saturating_sub(running);
    let (start, waiting) = needy.split_at(free.min(needy.len()));
    let mut plan = Plan {
        start: start.iter().map(|d| d.id).collect(),
        waiting: waiting.iter().map(|d| d.id).collect(),
        leave: vec![],
    };
    // Databases with no worker at all that wait: each is owed one slot by a worker that can
    // give it back.
    let starving = waiting.iter().filter(|d| d.workers == 0).count();
    let already = workers.iter().filter(|w| w.leaving).count();
    let owed = starving.saturating_sub(already);
    if owed == 0 {
        return plan;
    }
    let count = |db: u32| {
        workers
            .iter()
            .filter(|w| w.database == db && !w.leaving)
            .count()
    };
    let demand = |db: u32| databases.iter().any(|d| d.id == db && d.demand);
    // A worker its database can spare even as its last: one that served a whole slice, or one
    // with nothing to do (it leaves at once).
    let spare = |w: &Worker| w.tenure >= slice || (w.idle && !demand(w.database));
    // Who gives way: a database's second worker before its only one, an idle worker before a
    // busy one, one without work before one with, then the longest served.
    let mut candidates: Vec<&Worker> = workers
        .iter()
        .filter(|w| !w.leaving && (count(w.database) > 1 || spare(w)))
        .collect();
    candidates.sort_by_key(|w| {
        (
            count(w.database) == 1,
            !w.idle,
            demand(w.database),
            -w.tenure,
            w.slot,
        )
    });
    let mut left: Vec<u32> = vec![];
    for w in candidates {
        if plan.leave.len() == owed {
            break;
        }
        let others = count(w.database) - left.iter().filter(|db| **db == w.database).count();
        if others == 1 && !spare(w) {
            continue; // its database's last worker, and it cannot be spared
        }
        plan.leave.push(w.slot);
        left.push(w.database);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLICE: i64 = 1_000_000;

    fn db(id: u32, known: Known, demand: bool, workers: usize, busy: usize) -> Database {
        Database {
            id,
            known,
            demand,
            workers,
            busy,
            waiting_since: None,
        }
    }

    fn worker(slot: usize, database: u32, tenure: i64, idle: bool) -> Worker {
        Worker {
            slot,
            database,
            tenure,
            idle,
            leaving: false,
        }
    }

    #[test]
    fn databases_with_work_and_no_worker_get_one_while_slots_last() {
        let dbs = [
            db(1, Known::Present, true, 0, 0),
            db(2, Known::Present, false, 0, 0),
            db(3, Known::Absent, true, 0, 0),
            db(4, Known::Unknown, false, 0, 0),
            db(5, Known::Present, true, 0, 0),
        ];
        let p = plan(&dbs, &[], 0, 2, SLICE);
        assert_eq!(p.start, vec![1, 4]);
        assert_eq!(p.waiting, vec![5]);
        // Nothing connected can give way: nothing to ask.
        assert!(p.leave.is_empty());
        // A database already looked at, or being looked at, is not looked at again.
        let p = plan(&[db(4, Known::Unknown, false, 1, 0)], &[], 1, 2, SLICE);
        assert!(p.start.is_empty() && p.waiting.is_empty());
    }

    #[test]
    fn the_longest_waiting_database_is_served_first() {
        let mut a = db(1, Known::Present, true, 0, 0);
        let mut b = db(2, Known::Present, true, 0, 0);
        a.waiting_since = Some(200);
        b.waiting_since = Some(100);
        let p = plan(&[a, b], &[], 3, 4, SLICE);
        assert_eq!(p.start, vec![2]);
        assert_eq!(p.waiting, vec![1]);
    }

    #[test]
    fn a_database_whose_workers_are_all_stuck_gets_another() {
        let dbs = [db(1, Known::Present, true, 1, 1)];
        assert_eq!(plan(&dbs, &[], 1, 2, SLICE).start, vec![1]);
        // Not while one of them can take the work.
        let dbs = [db(1, Known::Present, true, 2, 1)];
        assert!(plan(&dbs, &[], 2, 4, SLICE).start.is_empty());
        // A database without any worker comes before a second worker for another.
        let dbs = [
            db(1, Known::Present, true, 1, 1),
            db(2, Known::Present, true, 0, 0),
        ];
        let p = plan(&dbs, &[], 1, 2, SLICE);
        assert_eq!(p.start, vec![2]);
        assert_eq!(p.waiting, vec![1]);
    }

    #[test]
    fn a_full_pool_makes_room_for_a_database_that_waits() {
        let dbs = [
            db(1, Known::Present, true, 2, 1),
            db(2, Known::Present, true, 0, 0),
            db(3, Known::Present, false, 1, 0),
        ];
        let ws = [
            worker(0, 1, 10, false),
            worker(1, 1, 5, true),
            worker(2, 3, 1, true),
        ];
        // Database 1's second worker (the idle one) goes first.
        assert_eq!(plan(&dbs, &ws, 3, 3, SLICE).leave, vec![1]);
        // Two waiting: then database 3's idle worker, which has nothing to do.
        let more = [
            dbs[0].clone(),
            dbs[1].clone(),
            dbs[2].clone(),
            db(4, Known::Present, true, 0, 0),
        ];
        assert_eq!(plan(&more, &ws, 3, 3, SLICE).leave, vec![1, 2]);
        // Workers already leaving count against what is owed.
        let mut leaving = ws.clone();
        leaving[1].leaving = true;
        assert_eq!(plan(&dbs, &leaving, 3, 3, SLICE).leave, Vec::<usize>::new());
    }

    #[test]
    fn a_database_keeps_its_only_busy_worker_for_a_whole_slice() {
        let dbs = [
            db(1, Known::Present, true, 1, 1),
            db(2, Known::Present, true, 0, 0),
        ];
        let young = [worker(0, 1, SLICE - 1, false)];
        let p = plan(&dbs, &young, 1, 1, SLICE);
        assert_eq!(p.waiting, vec![2, 1]);
        assert!(p.leave.is_empty());
        let old = [worker(0, 1, SLICE, false)];
        assert_eq!(plan(&dbs, &old, 1, 1, SLICE).leave, vec![0]);
        // An only worker with nothing to do gives way at once.
        let dbs = [
            db(1, Known::Present, false, 1, 0),
            db(2, Known::Present, true, 0, 0),
        ];
        let idle = [worker(0, 1, 1, true)];
        assert_eq!(plan(&dbs, &idle, 1, 1, SLICE).leave, vec![0]);
    }

    #[test]
    fn a_database_never_loses_its_last_young_busy_worker_to_the_second_worker_rule() {
        // Two workers of database 1, both busy and young; two databases wait. Only one of the
        // two may go.
        let dbs = [
            db(1, Known::Present, true, 2, 2),
            db(2, Known::Present, true, 0, 0),
            db(3, Known::Present, true, 0, 0),
        ];
        let ws = [worker(0, 1, 10, false), worker(1, 1, 20, false)];
        assert_eq!(plan(&dbs, &ws, 2, 2, SLICE).leave, vec![1]);
    }
}
