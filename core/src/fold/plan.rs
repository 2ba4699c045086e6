//! Planning a fold: from what the start query found (the stream's head and time range, the
//! latest snapshot at or before the point, the first snapshot after it), which events to fold
//! and from which state. The bound arithmetic where "one event off" bugs live, kept apart
//! from SPI and row level security so that its edge cases have tests.
//!
//! Times are PostgreSQL timestamps (microseconds since 2000-01-01); a stream's times never go
//! backwards, so "up to an instant" is a prefix of the stream, like "up to a version".

/// The state asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// After the stream's last event.
    Head,
    /// As of an instant: every event with `created_at <= at`.
    At(i64),
    /// Right after a version.
    Version(i64),
}

/// A snapshot the start query found: its version and its last event's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub version: i64,
    pub last_at: i64,
}

/// What the start query read of a stream with events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub head: i64,
    pub first_at: i64,
    pub last_at: i64,
    /// The latest usable snapshot at or before the point.
    pub snapshot: Option<Snapshot>,
    /// For an instant: the version of the first snapshot after it, which bounds the fold from
    /// above without reading later events to filter them out by time.
    pub next_snapshot: Option<i64>,
}

/// Which events to fold, and from what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Start from this snapshot (None: from the initial state).
    pub snapshot: Option<Snapshot>,
    /// Fold the events with `after_version < stream_version <= upto_version` ...
    pub after_version: i64,
    pub upto_version: i64,
    /// ... and `from_at <= created_at <= upto_at`.
    pub from_at: i64,
    pub upto_at: i64,
    /// Whether the time bound restricts anything (an instant before the stream's last event).
    pub timed: bool,
    /// The version and time the folded state stands for (a snapshot taken of it is keyed so).
    pub version: i64,
}

impl Plan {
    /// Whether there is anything to fold after the snapshot.
    pub fn reads_events(&self) -> bool {
        self.upto_version > self.after_version
    }

    /// Whether the fold needs events that retention removed from a stream whose first kept
    /// version is `first_kept`: no snapshot stands for them.
    pub fn needs_removed_events(&self, first_kept: i64) -> bool {
        self.reads_events() && self.after_version + 1 < first_kept
    }
}

/// Plans the fold of `point`; `None` when the stream had no event by then. Snapshots are not
/// used where `snapshots_allowed` is false (row level security may hide events from the
/// caller that a snapshot folded).
pub fn plan(point: Point, start: &Start, snapshots_allowed: bool) -> Option<Plan> {
    let upto_at = match point {
        Point::At(at) if at < start.last_at => at,
        _ => start.last_at,
    };
    let version = match point {
        Point::Version(v) => v.min(start.head),
        _ => start.head,
    };
    if version < 1 || upto_at < start.first_at {
        return None;
    }
    let snapshot = start
        .snapshot
        .filter(|s| snapshots_allowed && s.version <= version);
    let upto_version = match start.next_snapshot {
        Some(next) => version.min(next - 1),
        None => version,
    };
    Some(Plan {
        snapshot,
        after_version: snapshot.map_or(0, |s| s.version),
        upto_version,
        // The events after a snapshot are no older than its last one.
        from_at: snapshot.map_or(start.first_at, |s| s.last_at),
        upto_at,
        timed: upto_at != start.last_at,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: Start = Start {
        head: 10,
        first_at: 100,
        last_at: 1000,
        snapshot: None,
        next_snapshot: None,
    };

    fn with_snapshot(version: i64, last_at: i64) -> Start {
        Start {
            snapshot: Some(Snapshot { version, last_at }),
            ..START
        }
    }

    #[test]
    fn the_head_folds_every_event() {
        let p = plan(Point::Head, &START, true).unwrap();
        assert_eq!((p.after_version, p.upto_version, p.version), (0, 10, 10));
        assert_eq!((p.from_at, p.upto_at, p.timed), (100, 1000, false));
        assert!(p.reads_events());
    }

    #[test]
    fn nothing_before_the_first_event_or_version_one() {
        assert_eq!(plan(Point::At(99), &START, true), None);
        assert!(plan(Point::At(100), &START, true).is_some());
        assert_eq!(plan(Point::Version(0), &START, true), None);
        assert_eq!(plan(Point::Version(-5), &START, true), None);
        assert_eq!(
            plan(Point::Version(1), &START, true).unwrap().upto_version,
            1
        );
    }

    #[test]
    fn points_beyond_the_head_are_the_head() {
        let p = plan(Point::Version(99), &START, true).unwrap();
        assert_eq!((p.upto_version, p.version), (10, 10));
        let p = plan(Point::At(5000), &START, true).unwrap();
        assert_eq!((p.upto_at, p.timed), (1000, false));
        // The last event's own instant is the head too: nothing to filter by time.
        assert!(!plan(Point::At(1000), &START, true).unwrap().timed);
        assert!(plan(Point::At(999), &START, true).unwrap().timed);
    }

    #[test]
    fn a_snapshot_starts_the_fold_after_its_version_and_time() {
        let s = with_snapshot(4, 400);
        let p = plan(Point::Head, &s, true).unwrap();
        assert_eq!(
            p.snapshot,
            Some(Snapshot {
                version: 4,
                last_at: 400
            })
        );
        assert_eq!((p.after_version, p.from_at), (4, 400));
        // A snapshot at the point itself leaves nothing to read.
        let p = plan(Point::Version(4), &s, true).unwrap();
        assert!(!p.reads_events());
        assert_eq!(p.snapshot.map(|s| s.version), Some(4));
    }

    #[test]
    fn a_snapshot_past_the_version_asked_for_is_not_used() {
        let p = plan(Point::Version(3), &with_snapshot(4, 400), true).unwrap();
        assert_eq!((p.snapshot, p.after_version, p.upto_version), (None, 0, 3));
    }

    #[test]
    fn snapshots_are_ignored_where_not_allowed() {
        let p = plan(Point::Head, &with_snapshot(4, 400), false).unwrap();
        assert_eq!((p.snapshot, p.after_version, p.from_at), (None, 0, 100));
    }

    #[test]
    fn after_retention_a_fold_starts_at_the_snapshot_of_the_cut() {
        // Retention kept versions 5 on and took a snapshot of version 4.
        let cut = with_snapshot(4, 400);
        assert!(!plan(Point::Head, &cut, true)
            .unwrap()
            .needs_removed_events(5));
        assert!(!plan(Point::Version(4), &cut, true)
            .unwrap()
            .needs_removed_events(5));
        assert!(!plan(Point::At(400), &cut, true)
            .unwrap()
            .needs_removed_events(5));
        // Before the cut, or without its snapshot (new reducers, row level security): the
        // events the fold needs are gone.
        assert!(plan(Point::Version(3), &cut, true)
            .unwrap()
            .needs_removed_events(5));
        assert!(plan(Point::Head, &cut, false)
            .unwrap()
            .needs_removed_events(5));
        assert!(plan(Point::Head, &START, true)
            .unwrap()
            .needs_removed_events(5));
        // A stream never cut keeps everything.
        assert!(!plan(Point::Head, &START, true)
            .unwrap()
            .needs_removed_events(1));
    }

    #[test]
    fn the_next_snapshot_bounds_a_fold_to_an_instant() {
        let s = Start {
            next_snapshot: Some(7),
            ..with_snapshot(4, 400)
        };
        let p = plan(Point::At(500), &s, true).unwrap();
        assert_eq!((p.after_version, p.upto_version), (4, 6));
        assert_eq!((p.from_at, p.upto_at, p.timed), (400, 500, true));
        // The state stands for the stream's version bound, not the read's.
        assert_eq!(p.version, 10);
        // Next snapshot right after this one: nothing between to read.
        let s = Start {
            next_snapshot: Some(5),
            ..with_snapshot(4, 400)
        };
        assert!(!plan(Point::At(450), &s, true).unwrap().reads_events());
    }
}
