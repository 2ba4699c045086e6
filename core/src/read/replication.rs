//! The feed's bound under synchronous replication: a position is served only once the WAL of
//! its commit is confirmed by the synchronous standbys, so that no failover can erase an event
//! a reader saw. Commit LSNs are not kept per event; instead each horizon the feed reaches is
//! marked with a WAL position every commit below it precedes, and a mark becomes servable
//! once the standbys confirm that position.

/// Marks kept per database: more only refine how soon a position is released.
pub const MARKS: usize = 8;

/// One database's marks, kept in shared memory under a lock (plain data, zero = empty).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Marks {
    /// Every position up to this one is settled and confirmed.
    pub confirmed: i64,
    len: u32,
    position: [i64; MARKS],
    lsn: [u64; MARKS],
}

impl Marks {
    /// Marks that start from `confirmed`, known confirmed by other means (after a restart,
    /// the horizon last published, which was itself bounded).
    pub fn from(confirmed: i64) -> Marks {
        Marks {
            confirmed,
            ..Marks::default()
        }
    }

    /// The feed reached `horizon` (settled: every position up to it committed or rolled back
    /// for good), with every commit below it ending at or before WAL position `latest`; the
    /// standbys confirmed the WAL up to `synced`. Returns how far the feed may be served.
    pub fn observe(&mut self, horizon: i64, latest: u64, synced: u64) -> i64 {
        let mut kept = 0;
        for i in 0..self.len as usize {
            if self.lsn[i] <= synced {
                self.confirmed = self.confirmed.max(self.position[i]);
            } else {
                self.position[kept] = self.position[i];
                self.lsn[kept] = self.lsn[i];
                kept += 1;
            }
        }
        self.len = kept as u32;
        if latest <= synced {
            self.confirmed = self.confirmed.max(horizon);
        } else if horizon > self.confirmed {
            let n = self.len as usize;
            if n > 0 && self.position[n - 1] >= horizon {
                // Marked already, at a WAL position no later than this one.
            } else if n == MARKS {
                // Full: the newest mark moves up (only its own release comes later).
                self.position[n - 1] = horizon;
                self.lsn[n - 1] = latest;
            } else {
                self.position[n] = horizon;
                self.lsn[n] = latest;
                self.len += 1;
            }
        }
        self.confirmed.min(horizon)
    }
}

/// What the synchronous standbys must confirm before a commit counts as replicated, after
/// PostgreSQL's `synchronous_commit` names: the index into the walsenders' confirmed LSNs
/// (write, flush, apply).
pub fn wait_mode(synchronous_commit: &str) -> usize {
    match synchronous_commit {
        "remote_write" => 0,
        "remote_apply" => 2,
        _ => 1, // on, and for local/off (which wait for no standby) the flush a failover keeps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmed_commits_are_served_at_once() {
        let mut m = Marks::default();
        assert_eq!(m.observe(5, 100, 100), 5);
        assert_eq!(m.observe(9, 150, 200), 9);
        assert_eq!(m.confirmed, 9);
    }

    #[test]
    fn an_unconfirmed_commit_holds_the_feed_until_the_standbys_confirm_it() {
        let mut m = Marks::from(3);
        assert_eq!(m.observe(5, 100, 90), 3, "commit at 100 not yet confirmed");
        assert_eq!(m.observe(7, 120, 99), 3);
        assert_eq!(m.observe(7, 120, 100), 5, "the first mark confirmed");
        assert_eq!(m.observe(8, 130, 125), 7);
        assert_eq!(m.observe(8, 130, 130), 8);
    }

    #[test]
    fn the_feed_never_goes_back_and_never_passes_the_horizon() {
        let mut m = Marks::from(10);
        assert_eq!(m.observe(8, 100, 0), 8, "never past the settled horizon");
        assert_eq!(m.observe(12, 100, 0), 10);
        assert_eq!(m.confirmed, 10);
    }

    #[test]
    fn full_marks_merge_the_newest_and_still_release_in_order() {
        let mut m = Marks::default();
        for i in 1..=20 {
            assert_eq!(m.observe(i, 100 + i as u64, 0), 0);
        }
        assert_eq!(m.len as usize, MARKS);
        assert_eq!(m.observe(20, 120, 101), 1);
        assert_eq!(m.observe(20, 120, 107), 7);
        // The merged newest mark (20 at 120) is released only when 120 is confirmed.
        assert_eq!(m.observe(20, 120, 119), 7);
        assert_eq!(m.observe(20, 120, 120), 20);
    }

    #[test]
    fn wait_modes_follow_synchronous_commit() {
        assert_eq!(wait_mode("remote_write"), 0);
        assert_eq!(wait_mode("on"), 1);
        assert_eq!(wait_mode("local"), 1);
        assert_eq!(wait_mode("remote_apply"), 2);
    }
}
