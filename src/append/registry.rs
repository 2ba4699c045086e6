//! The stream registry `es_streams`: one row per stream holding its head (version, hash,
//! time bounds). Appends lock that row, which serialises writers of one stream only.
//!
//! Appends lock and advance the row directly (an index probe, a tuple lock, a heap update
//! with its index entries), not through SQL statements: each statement would cost an
//! executor start and end, and the two of them more than the rest of the registry's work
//! (measured with perf). Nothing else may change a row: the guard trigger refuses UPDATE,
//! DELETE and TRUNCATE to every role, the owner included, and direct updates fire no trigger.
use crate::pg::guards::{IndexScan, Opened, Registered, Slot};
use crate::pg::{relcache, schema};
use pgrx::pg_sys::{self, BuiltinOid as Oid};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{FromDatum, IntoDatum};
use std::ffi::CStr;

v1_function!(pg_finfo__es_guard_registry);
/// The guard trigger of es_streams: refuses UPDATE, DELETE and TRUNCATE (SQLSTATE ES003) for
/// every role, the table owner and superusers included. Written in C so that no function a
/// caller could be refused EXECUTE on sits in the way.
///
/// # Safety
/// Called by PostgreSQL's trigger manager with its TriggerData as context.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _es_guard_registry(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: called by the trigger manager, whose context is a TriggerData (checked).
    let trigger = unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
            error!("event_store: _es_guard_registry is a trigger function");
        }
        &*context.cast::<pg_sys::TriggerData>()
    };
    let op = match trigger.tg_event & pg_sys::TRIGGER_EVENT_OPMASK {
        pg_sys::TRIGGER_EVENT_UPDATE => "UPDATE",
        pg_sys::TRIGGER_EVENT_DELETE => "DELETE",
        pg_sys::TRIGGER_EVENT_TRUNCATE => "TRUNCATE",
        _ => "INSERT",
    };
    crate::pg::errors::raise(
        b"ES003",
        format!("event_store: {op} of es_streams is not allowed"),
        "Events are append-only and es_streams is maintained by es_append.".into(),
        "Append a compensating event with es_append instead.".into(),
    )
}

/// A new stream's row, at version 0; a conflict means another transaction created it. What
/// `create` does without a statement where it can.
const REGISTER_SQL: &str =
    "INSERT INTO _event_store.es_streams (stream_id, version) VALUES ($1, 0) \
     ON CONFLICT (stream_id) DO NOTHING";

/// A stream's head as its locked registry row says.
#[derive(Clone, Debug)]
pub struct Head {
    pub version: i64,
    /// `None` for a stream without events: its chain starts from the zero hash.
    pub hash: Option<Vec<u8>>,
    /// Time of the last event, in PostgreSQL's microseconds.
    pub last_at: Option<i64>,
    /// Where the locked row version is.
    tid: pg_sys::ItemPointerData,
}

impl Head {
    /// The head of a stream the call made up, before its first event: no row yet.
    pub fn made() -> Head {
        Head {
            version: 0,
            hash: None,
            last_at: None,
            // SAFETY: an all-zero item pointer (invalid), never used: `register` writes the row.
            tid: unsafe { std::mem::zeroed() },
        }
    }
}

/// es_streams' columns that appends read or write, by attribute number.
#[derive(Clone, Copy)]
struct Columns {
    version: i16,
    first_at: i16,
    last_at: i16,
    last_position: i16,
    head_hash: i16,
}

/// es_streams opened for an append, with its primary key: opened once per call.
pub(super) struct Registry {
    rel: Opened,
    pkey: Opened,
    columns: Columns,
}

/// What `Registry::open` checks and looks up, as of a generation of `relcache` (which watches
/// es_streams, so a changed column or index is seen by the next append).
#[derive(Clone, Copy)]
struct Layout {
    generation: u64,
    relid: pg_sys::Oid,
    pkey: pg_sys::Oid,
    columns: Columns,
}

thread_local! {
    static LAYOUT: std::cell::Cell<Option<Layout>> = const { std::cell::Cell::new(None) };
}

impl Registry {
    /// # Safety
    /// Inside a transaction.
    pub(super) unsafe fn open() -> Registry {
        // SAFETY: the extension's own table, looked up in its schema; locking it accepts the
        // invalidations that move `relcache`'s generation.
        unsafe {
            let relid = schema::relation(c"es_streams");
            let rel = Opened::table(relid, pg_sys::RowExclusiveLock);
            let generation = relcache::generation();
            let layout = match LAYOUT.get() {
                Some(l) if l.generation == generation && l.relid == relid => l,
                _ => {
                    relcache::watch(relid);
                    let l = Self::layout(&rel, relid, relcache::generation());
                    LAYOUT.set(Some(l));
                    l
                }
            };
            Registry {
                pkey: Opened::index(layout.pkey, pg_sys::RowExclusiveLock),
                columns: layout.columns,
                rel,
            }
        }
    }

    /// Checks es_streams' indexes and finds its primary key and columns.
    ///
    /// # Safety
    /// `rel` is es_streams (`relid`), open.
    unsafe fn layout(rel: &Opened, relid: pg_sys::Oid, generation: u64) -> Layout {
        // SAFETY: as the caller promises.
        unsafe {
            // Index entries of a non-HOT update are formed without an executor: only plain
            // columns can be indexed (as on PostgreSQL's own catalogs).
            let indexes = pgrx::PgList::<pg_sys::Oid>::from_pg(pg_sys::RelationGetIndexList(rel.0));
            for oid in indexes.iter_oid() {
                let index = Opened::index(oid, pg_sys::RowExclusiveLock);
                if !pg_sys::RelationGetIndexExpressions(index.0).is_null()
                    || !pg_sys::RelationGetIndexPredicate(index.0).is_null()
                {
                    ereport!(
                        ERROR,
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        "event_store: es_streams has an index on an expression or with a predicate",
                        "Appends maintain es_streams' indexes themselves and support indexes on plain columns only."
                    );
                }
            }
            // Not rd_pkindex: opening the indexes above accepts invalidations, and an entry
            // rebuilt by one (an ANALYZE's, say) has no index list until asked for it again.
            let pkey = pg_sys::RelationGetPrimaryKeyIndex(rel.0);
            if pkey == pg_sys::InvalidOid {
                error!("event_store: es_streams has lost its primary key");
            }
            let attnum = |name: &CStr| {
                let n = pg_sys::get_attnum(relid, name.as_ptr());
                if n <= 0 {
                    error!(
                        "event_store: es_streams has no column {}",
                        name.to_string_lossy()
                    );
                }
                n
            };
            Layout {
                generation,
                relid,
                pkey,
                columns: Columns {
                    version: attnum(c"version"),
                    first_at: attnum(c"first_at"),
                    last_at: attnum(c"last_at"),
                    last_position: attnum(c"last_position"),
                    head_hash: attnum(c"head_hash"),
                },
            }
        }
    }

    /// Finds the stream's row and locks its latest version, as SELECT ... FOR UPDATE would:
    /// waiting for a writer that holds it, then reading what that writer committed (under
    /// REPEATABLE READ, a row changed since the snapshot is a serialization failure).
    ///
    /// # Safety
    /// Inside a transaction.
    unsafe fn find_and_lock(&self, stream_id: &str) -> Option<Head> {
        // SAFETY: the scan, lock and reads below follow the table AM's protocol on relations
        // opened by `open`; every resource is held by a guard.
        unsafe {
            // Rows this transaction wrote in earlier commands (a new stream's) become visible.
            pg_sys::CommandCounterIncrement();
            let serializable = pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32;
            let snapshot = Registered::new(if serializable {
                pg_sys::GetTransactionSnapshot()
            } else {
                pg_sys::GetLatestSnapshot()
            });
            let slot = Slot::of(self.rel.0);
            let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
            pg_sys::ScanKeyEntryInitialize(
                &mut key,
                0,
                1,
                pg_sys::BTEqualStrategyNumber as u16,
                pg_sys::InvalidOid,
                *(*self.pkey.0).rd_indcollation,
                pg_sys::Oid::from(pg_sys::F_TEXTEQ),
                stream_id.into_datum().expect("text"),
            );
            let mut tid = {
                let scan = IndexScan(pg_sys::index_beginscan(
                    self.rel.0,
                    self.pkey.0,
                    snapshot.0,
                    1,
                    0,
                ));
                pg_sys::index_rescan(scan.0, &mut key, 1, std::ptr::null_mut(), 0);
                if !pg_sys::index_getnext_slot(
                    scan.0,
                    pg_sys::ScanDirection::ForwardScanDirection,
                    slot.0,
                ) {
                    return None;
                }
                (*slot.0).tts_tid
            };
            let lock = (*(*self.rel.0).rd_tableam)
                .tuple_lock
                .expect("a table AM locks tuples");
            let mut failure: pg_sys::TM_FailureData = std::mem::zeroed();
            let flags = if serializable {
                0
            } else {
                pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION
            };
            let result = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                lock(
                    self.rel.0,
                    &mut tid,
                    snapshot.0,
                    slot.0,
                    pg_sys::GetCurrentCommandId(false),
                    pg_sys::LockTupleMode::LockTupleExclusive,
                    pg_sys::LockWaitPolicy::LockWaitBlock,
                    flags as u8,
                    &mut failure,
                )
            });
            match result {
                pg_sys::TM_Result::TM_Ok | pg_sys::TM_Result::TM_SelfModified => {}
                pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted if serializable => {
                    ereport!(
                        ERROR,
                        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                        "could not serialize access due to concurrent update"
                    );
                }
                pg_sys::TM_Result::TM_Deleted => return None,
                other => error!("event_store: locking the registry row of {stream_id}: {other:?}"),
            }
            let get = |attnum: i16| {
                let mut null = false;
                let d = pg_sys::slot_getattr(slot.0, attnum as i32, &mut null);
                (!null).then_some(d)
            };
            let c = &self.columns;
            Some(Head {
                version: get(c.version).map_or(0, |d| d.value() as i64),
                hash: get(c.head_hash).and_then(|d| Vec::<u8>::from_datum(d, false)),
                last_at: get(c.last_at).map(|d| d.value() as i64),
                tid,
            })
        }
    }

    /// Locks the stream's registry row, creating it at version 0 when the stream is new, and
    /// returns its head. Held until the transaction ends.
    pub(super) fn lock(&self, client: &mut SpiClient<'_>, stream_id: &str) -> Head {
        for _ in 0..2 {
            // SAFETY: inside the append's transaction, which opened the registry.
            if let Some(head) = unsafe { self.find_and_lock(stream_id) } {
                return head;
            }
            // A new stream: its row is inserted here, or by another transaction that got there
            // first (the insert then waits for it); either way, the next round locks it.
            // SAFETY: inside the append's transaction, as the extension's owner.
            match unsafe { self.create(stream_id) } {
                Ok(Some(head)) => return head,
                Ok(None) => {}
                Err(why) => {
                    debug1!("event_store: registering a stream with an INSERT statement: {why}");
                    let plan = crate::pg::plans::kept(client, REGISTER_SQL, &[Oid::TEXTOID], true);
                    client
                        .update(&*plan, None, &[stream_id.into()])
                        .unwrap_or_else(|e| {
                            error!("event_store: registering stream {stream_id}: {e}")
                        });
                }
            }
        }
        error!("event_store: the registry row of stream {stream_id} vanished while being locked")
    }

    /// REGISTER_SQL without a statement (its executor start was most of a new stream's cost):
    /// the stream's head at version 0 when this transaction made its row, `None` when another
    /// transaction's row holds the stream, `Err` when the table takes more than `direct` does.
    ///
    /// # Safety
    /// Inside the append's transaction.
    unsafe fn create(&self, stream_id: &str) -> Result<Option<Head>, &'static str> {
        use pg_sys::{INT8OID, TEXTOID};
        // SAFETY: an open relation.
        let relid = unsafe { (*self.rel.0).rd_id };
        if !crate::read::stream_scan::unfiltered(relid, pg_sys::ACL_INSERT) {
            return Err("row level security or no INSERT privilege on es_streams");
        }
        // SAFETY: as the caller promises; datums of the columns' types.
        unsafe {
            let mut executor = super::direct::Executor::new(relid);
            let Some(table) =
                executor.open_unique(relid, &[("stream_id", TEXTOID), ("version", INT8OID)])
            else {
                return Err("es_streams has triggers, rules or columns appends do not fill");
            };
            let values = [super::direct::datum(stream_id), 0i64.into()];
            match executor.insert_new(table, &values) {
                Ok(tid) => Ok(Some(Head {
                    version: 0,
                    hash: None,
                    last_at: None,
                    tid,
                })),
                Err(mut held) => {
                    // Under REPEATABLE READ a row committed since the snapshot is a serialization
                    // failure, as ON CONFLICT DO NOTHING makes it.
                    if pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 {
                        let slot = Slot::of(self.rel.0);
                        if !self.fetch(&mut held, pg_sys::GetTransactionSnapshot(), &slot) {
                            ereport!(
                                ERROR,
                                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                                "could not serialize access due to concurrent update"
                            );
                        }
                    }
                    Ok(None)
                }
            }
        }
    }

    /// Reads the row version at `tid` into `slot` if `snapshot` sees it (the table AM's
    /// `tuple_fetch_row_version`, which pgrx does not guard).
    ///
    /// # Safety
    /// `slot` is the registry's; `snapshot` is valid for the call.
    unsafe fn fetch(
        &self,
        tid: &mut pg_sys::ItemPointerData,
        snapshot: pg_sys::Snapshot,
        slot: &Slot,
    ) -> bool {
        // SAFETY: as the caller promises, on the registry this call opened.
        unsafe {
            let fetch = (*(*self.rel.0).rd_tableam)
                .tuple_fetch_row_version
                .expect("a table AM fetches row versions");
            pg_sys::ffi::pg_guard_ffi_boundary(|| fetch(self.rel.0, tid, snapshot, slot.0))
        }
    }

    /// Registers a stream the call made up (`Head::made`) with its head after the append: one
    /// row written, where `lock` then `advance` would write two versions of it.
    pub(super) fn register(
        &self,
        client: &mut SpiClient<'_>,
        stream_id: &str,
        version: i64,
        at: i64,
        last_position: i64,
        head_hash: &[u8],
    ) {
        // SAFETY: inside the append's transaction, as the extension's owner.
        if unsafe { self.insert_head(stream_id, version, at, last_position, head_hash) } {
            return;
        }
        let head = self.lock(client, stream_id);
        self.advance(&head, version, at, last_position, head_hash);
    }

    /// `register` without a statement, or false when the table takes more than `direct` does.
    ///
    /// # Safety
    /// Inside the append's transaction.
    unsafe fn insert_head(
        &self,
        stream_id: &str,
        version: i64,
        at: i64,
        last_position: i64,
        head_hash: &[u8],
    ) -> bool {
        use pg_sys::{BYTEAOID, INT8OID, TEXTOID, TIMESTAMPTZOID};
        // SAFETY: an open relation.
        let relid = unsafe { (*self.rel.0).rd_id };
        if !crate::read::stream_scan::unfiltered(relid, pg_sys::ACL_INSERT) {
            return false;
        }
        // SAFETY: as the caller promises; datums of the columns' types. A key another
        // transaction holds (it cannot guess the made-up id) would raise 23505.
        unsafe {
            let mut executor = super::direct::Executor::new(relid);
            let columns = [
                ("stream_id", TEXTOID),
                ("version", INT8OID),
                ("first_at", TIMESTAMPTZOID),
                ("last_at", TIMESTAMPTZOID),
                ("last_position", INT8OID),
                ("head_hash", BYTEAOID),
            ];
            let Some(table) = executor.open(relid, &columns) else {
                return false;
            };
            let row = [
                super::direct::datum(stream_id),
                version.into(),
                at.into(),
                at.into(),
                last_position.into(),
                head_hash.into_datum().expect("bytea"),
            ];
            executor.insert(table, 1, |_, values| values.copy_from_slice(&row));
        }
        true
    }

    /// Moves the stream's head after an append; `head` is what `lock` returned.
    pub(super) fn advance(
        &self,
        head: &Head,
        version: i64,
        at: i64,
        last_position: i64,
        head_hash: &[u8],
    ) {
        // SAFETY: the row version at head.tid is locked by this transaction; the update and its
        // index entries follow what PostgreSQL does for its catalogs (CatalogTupleUpdate), on a
        // table whose indexes `open` checked.
        unsafe {
            let rel = self.rel.0;
            let slot = Slot::of(rel);
            let mut tid = head.tid;
            if !self.fetch(&mut tid, &raw mut pg_sys::SnapshotAnyData, &slot) {
                error!("event_store: the locked registry row is gone");
            }
            let mut should_free = false;
            let tuple = pg_sys::ExecFetchSlotHeapTuple(slot.0, true, &mut should_free);
            let natts = (*(*rel).rd_att).natts as usize;
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![false; natts];
            let mut replace = vec![false; natts];
            let c = &self.columns;
            let mut set = |attnum: i16, value: pg_sys::Datum| {
                let i = attnum as usize - 1;
                values[i] = value;
                replace[i] = true;
            };
            set(c.version, version.into());
            set(c.last_at, at.into());
            set(c.last_position, last_position.into());
            set(c.head_hash, head_hash.into_datum().expect("bytea"));
            let mut null = false;
            pg_sys::slot_getattr(slot.0, c.first_at as i32, &mut null);
            if null {
                set(c.first_at, at.into());
            }
            let new = pg_sys::heap_modify_tuple(
                tuple,
                (*rel).rd_att,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
                replace.as_mut_ptr(),
            );
            pg_sys::CatalogTupleUpdate(rel, &mut tid, new);
            pg_sys::heap_freetuple(new);
            if should_free {
                pg_sys::heap_freetuple(tuple);
            }
        }
    }
}
