//! Inserting rows without an executor, as COPY does: the table AM's insert, the relation's
//! constraints and index entries, one executor state for the call. An SPI INSERT would start
//! an executor per statement and, on a hypertable, TimescaleDB's insert state per chunk: most
//! of what a single append costs beyond the row itself (measured with perf).
//!
//! A table takes rows here only where nothing else would have acted on them: no INSERT trigger
//! or rule, no row level security, the caller allowed to insert, and the columns the rows fill
//! of those types; any other column is one an INSERT of those columns would leave NULL (no
//! default, nullable) or a stored generated one, computed as the executor computes it.
//! `open` answers `None` otherwise, and the caller runs its SQL statement instead, which does
//! whatever the table asks.
use crate::pg::guards::{Opened, Slot};
use crate::pg::relcache;
use pgrx::pg_sys;
use pgrx::IntoDatum;
use std::cell::{Cell, RefCell};

/// Rows inserted per table AM call (heap_multi_insert fills a page per WAL record).
const MULTI: usize = 100;

/// A column the rows fill: its name and type.
pub(super) type Column = (&'static str, pg_sys::Oid);

/// A table opened for rows, its indexes open.
struct Table {
    rri: *mut pg_sys::ResultRelInfo,
    /// For each column of the rows, its attribute index in the table.
    attrs: Vec<usize>,
    /// Whether it has stored generated columns.
    generated: bool,
    slots: Vec<Slot>,
    rel: Opened,
}

/// The executor state of one call's inserts and the tables it opened. Dropping it closes them.
pub(super) struct Executor {
    estate: *mut pg_sys::EState,
    tables: Vec<Table>,
    /// The generation of `relcache` when the call began: `Compiled` serves it while unchanged.
    generation: u64,
}

/// Per backend: the CHECK constraints, generated columns, index expressions and predicates of the tables
/// appends insert into, compiled once (as the executor would per statement: parsing and
/// planning them took 4% of a single append) and kept while `relcache` watches those tables
/// and indexes unchanged.
struct Compiled {
    generation: u64,
    /// Where the compiled states live, reset when they are dropped.
    context: pg_sys::MemoryContext,
    /// A table's checks, as `ri_ConstraintExprs` holds them.
    checks: Vec<(pg_sys::Oid, *mut *mut pg_sys::ExprState)>,
    /// A table's stored generated columns, as `ri_GeneratedExprs` and `ri_NumGeneratedNeeded`
    /// hold them for an INSERT.
    generated: Vec<(pg_sys::Oid, *mut *mut pg_sys::ExprState, i32)>,
    /// An index's expressions, as `ii_ExpressionsState` holds them.
    expressions: Vec<(pg_sys::Oid, *mut pg_sys::List)>,
    /// A partial index's predicate, as `ii_PredicateState` holds it.
    predicates: Vec<(pg_sys::Oid, *mut pg_sys::ExprState)>,
}

thread_local! {
    static COMPILED: RefCell<Compiled> = const { RefCell::new(Compiled {
        generation: u64::MAX,
        context: std::ptr::null_mut(),
        checks: Vec::new(),
        generated: Vec::new(),
        expressions: Vec::new(),
        predicates: Vec::new(),
    }) };
    /// Executors alive: compiled states are dropped only when none is (an append nested in
    /// one, from a function a constraint calls, must not free what the outer one runs).
    static EXECUTORS: Cell<usize> = const { Cell::new(0) };
}

impl Compiled {
    /// Drops what was compiled when `generation` moved and no executor is using it.
    fn refresh(&mut self, generation: u64) {
        if self.generation == generation || EXECUTORS.get() > 0 {
            return;
        }
        // SAFETY: the context holds only compiled states no executor uses; it is created once,
        // under CacheMemoryContext, and lives as long as the backend.
        unsafe {
            if self.context.is_null() {
                self.context = pg_sys::AllocSetContextCreateInternal(
                    pg_sys::CacheMemoryContext,
                    c"event_store compiled constraints".as_ptr(),
                    0,
                    8 * 1024,
                    8 * 1024 * 1024,
                );
            } else {
                pg_sys::MemoryContextReset(self.context);
            }
        }
        self.checks.clear();
        self.generated.clear();
        self.expressions.clear();
        self.predicates.clear();
        self.generation = generation;
    }

    /// `rel`'s checks compiled, as ExecRelCheck compiles them.
    ///
    /// # Safety
    /// `rel` is open and has `num_check` > 0.
    unsafe fn checks(&mut self, rel: pg_sys::Relation) -> *mut *mut pg_sys::ExprState {
        // SAFETY: reads the relation's constraints; compiles into this cache's context.
        unsafe {
            let relid = (*rel).rd_id;
            if let Some(c) = self.checks.iter().find(|c| c.0 == relid) {
                return c.1;
            }
            relcache::watch(relid);
            let constr = &*(*(*rel).rd_att).constr;
            let n = constr.num_check as usize;
            let old = pg_sys::MemoryContextSwitchTo(self.context);
            let states = pg_sys::palloc(n * std::mem::size_of::<*mut pg_sys::ExprState>())
                .cast::<*mut pg_sys::ExprState>();
            for i in 0..n {
                let expr = pg_sys::stringToNode((*constr.check.add(i)).ccbin);
                *states.add(i) = pg_sys::ExecInitExpr(
                    pg_sys::expression_planner(expr.cast()),
                    std::ptr::null_mut(),
                );
            }
            pg_sys::MemoryContextSwitchTo(old);
            self.checks.push((relid, states));
            states
        }
    }

    /// `rel`'s stored generated columns compiled, as ExecInitStoredGenerated compiles them for
    /// an INSERT: an expression per attribute (NULL for the others), and how many.
    ///
    /// # Safety
    /// `rel` is open and has stored generated columns.
    unsafe fn generated(&mut self, rel: pg_sys::Relation) -> (*mut *mut pg_sys::ExprState, i32) {
        // SAFETY: reads the relation's column defaults; compiles into this cache's context.
        unsafe {
            let relid = (*rel).rd_id;
            if let Some(g) = self.generated.iter().find(|g| g.0 == relid) {
                return (g.1, g.2);
            }
            relcache::watch(relid);
            let desc = (*rel).rd_att;
            let natts = (*desc).natts as usize;
            let old = pg_sys::MemoryContextSwitchTo(self.context);
            let states = pg_sys::palloc0(natts * std::mem::size_of::<*mut pg_sys::ExprState>())
                .cast::<*mut pg_sys::ExprState>();
            let mut n = 0;
            for (i, a) in (*desc).attrs.as_slice(natts).iter().enumerate() {
                if a.attgenerated == pg_sys::ATTRIBUTE_GENERATED_STORED as std::ffi::c_char {
                    let expr = pg_sys::build_column_default(rel, i as i32 + 1);
                    if expr.is_null() {
                        pgrx::error!("event_store: generated column {} has no expression", i + 1);
                    }
                    *states.add(i) = pg_sys::ExecInitExpr(
                        pg_sys::expression_planner(expr.cast()),
                        std::ptr::null_mut(),
                    );
                    n += 1;
                }
            }
            pg_sys::MemoryContextSwitchTo(old);
            self.generated.push((relid, states, n));
            (states, n)
        }
    }

    /// An index's expressions compiled, as FormIndexDatum compiles them.
    ///
    /// # Safety
    /// `index` is open and `expressions` its IndexInfo's `ii_Expressions`.
    unsafe fn expressions(
        &mut self,
        index: pg_sys::Oid,
        expressions: *mut pg_sys::List,
    ) -> *mut pg_sys::List {
        if let Some(c) = self.expressions.iter().find(|c| c.0 == index) {
            return c.1;
        }
        relcache::watch(index);
        // SAFETY: compiles a list of expression nodes into this cache's context.
        let states = unsafe {
            let old = pg_sys::MemoryContextSwitchTo(self.context);
            let mut states: *mut pg_sys::List = std::ptr::null_mut();
            let nodes = pgrx::PgList::<pg_sys::Expr>::from_pg(expressions);
            for expr in nodes.iter_ptr() {
                // Copied here first: planning copies nodes flat, constants' values included.
                let expr = pg_sys::copyObjectImpl(expr.cast()).cast();
                let state =
                    pg_sys::ExecInitExpr(pg_sys::expression_planner(expr), std::ptr::null_mut());
                states = pg_sys::lappend(states, state.cast());
            }
            pg_sys::MemoryContextSwitchTo(old);
            states
        };
        self.expressions.push((index, states));
        states
    }

    /// A partial index's predicate compiled, as ExecInsertIndexTuples compiles it.
    ///
    /// # Safety
    /// `index` is open and `predicate` its IndexInfo's `ii_Predicate`.
    unsafe fn predicate(
        &mut self,
        index: pg_sys::Oid,
        predicate: *mut pg_sys::List,
    ) -> *mut pg_sys::ExprState {
        if let Some(c) = self.predicates.iter().find(|c| c.0 == index) {
            return c.1;
        }
        relcache::watch(index);
        // SAFETY: compiles an implicitly-ANDed list of clauses into this cache's context.
        let state = unsafe {
            let old = pg_sys::MemoryContextSwitchTo(self.context);
            let copy = pg_sys::copyObjectImpl(predicate.cast());
            let state = pg_sys::ExecInitQual(
                pg_sys::expression_planner(copy.cast()).cast(),
                std::ptr::null_mut(),
            );
            pg_sys::MemoryContextSwitchTo(old);
            state
        };
        self.predicates.push((index, state));
        state
    }
}

/// A table of the executor, by its index there.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Target(usize);

impl Executor {
    /// # Safety
    /// Inside a transaction; `root` is the table permissions were checked on (`stream_scan::unfiltered`),
    /// named in the range table that constraint errors report through.
    pub(super) unsafe fn new(root: pg_sys::Oid) -> Executor {
        // SAFETY: a fresh executor state; the range table entry is allocated in its memory.
        unsafe {
            let estate = pg_sys::CreateExecutorState();
            let old = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
            let rte = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>())
                .cast::<pg_sys::RangeTblEntry>();
            (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
            (*rte).rtekind = pg_sys::RTEKind::RTE_RELATION;
            (*rte).relid = root;
            (*rte).relkind = pg_sys::RELKIND_RELATION as std::ffi::c_char;
            (*rte).rellockmode = pg_sys::RowExclusiveLock as i32;
            (*rte).requiredPerms = pg_sys::ACL_INSERT as pg_sys::AclMode;
            pg_sys::ExecInitRangeTable(estate, pg_sys::lappend(std::ptr::null_mut(), rte.cast()));
            pg_sys::MemoryContextSwitchTo(old);
            let generation = relcache::generation();
            COMPILED.with(|c| c.borrow_mut().refresh(generation));
            EXECUTORS.set(EXECUTORS.get() + 1);
            Executor {
                estate,
                tables: vec![],
                generation,
            }
        }
    }

    /// Opens `relid` (locked by the caller or here, RowExclusiveLock) for rows of `columns`,
    /// or `None` when it takes more than this module does (see the module's comment).
    ///
    /// # Safety
    /// Inside a transaction; `relid` is a table the caller may insert into (`stream_scan::unfiltered`).
    pub(super) unsafe fn open(&mut self, relid: pg_sys::Oid, columns: &[Column]) -> Option<Target> {
        // SAFETY: as the caller promises.
        unsafe { self.open_with(relid, columns, false) }
    }

    /// As `open`, for `insert_new`: its unique indexes ready to be checked before an insert.
    ///
    /// # Safety
    /// As for `open`.
    pub(super) unsafe fn open_unique(
        &mut self,
        relid: pg_sys::Oid,
        columns: &[Column],
    ) -> Option<Target> {
        // SAFETY: as the caller promises.
        unsafe { self.open_with(relid, columns, true) }
    }

    unsafe fn open_with(
        &mut self,
        relid: pg_sys::Oid,
        columns: &[Column],
        speculative: bool,
    ) -> Option<Target> {
        // SAFETY: the relation is opened, read and kept open by this executor.
        unsafe {
            let rel = pg_sys::try_table_open(relid, pg_sys::RowExclusiveLock as i32);
            if rel.is_null() {
                return None;
            }
            let rel = Opened(rel);
            let form = &*(*rel.0).rd_rel;
            let triggers = (*rel.0).trigdesc;
            if form.relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char
                || form.relhasrules
                || (!triggers.is_null() && inserts_fire(&*triggers))
            {
                return None;
            }
            let desc = (*rel.0).rd_att;
            let generated = !(*desc).constr.is_null() && (*(*desc).constr).has_generated_stored;
            let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
            let mut at = vec![usize::MAX; columns.len()];
            for (i, a) in attrs.iter().enumerate().filter(|(_, a)| !a.attisdropped) {
                let name = pgrx::name_data_to_str(&a.attname);
                match columns.iter().position(|c| c.0 == name) {
                    Some(k) if columns[k].1 == a.atttypid && a.attgenerated == 0 => at[k] = i,
                    Some(_) => return None,
                    None if a.attgenerated != 0 => {}
                    None if !a.attnotnull && !a.atthasdef && a.attidentity == 0 => {}
                    None => return None,
                }
            }
            if at.contains(&usize::MAX) {
                return None;
            }
            let old = pg_sys::MemoryContextSwitchTo((*self.estate).es_query_cxt);
            let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                .cast::<pg_sys::ResultRelInfo>();
            pg_sys::InitResultRelInfo(rri, rel.0, 1, std::ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(rri, speculative);
            pg_sys::MemoryContextSwitchTo(old);
            // Compiled states serve relations as they were when compiled: only while nothing
            // watched changed since the call began (opening this one may have brought news).
            if relcache::generation() == self.generation {
                COMPILED.with(|c| {
                    let mut c = c.borrow_mut();
                    if c.generation != self.generation {
                        return; // an enclosing call's executor kept older states alive
                    }
                    if !(*desc).constr.is_null() && (*(*desc).constr).num_check > 0 {
                        (*rri).ri_ConstraintExprs = c.checks(rel.0);
                    }
                    if generated {
                        let (states, n) = c.generated(rel.0);
                        (*rri).ri_GeneratedExprs = states;
                        (*rri).ri_NumGeneratedNeeded = n;
                    }
                    for i in 0..(*rri).ri_NumIndices as usize {
                        let info = *(*rri).ri_IndexRelationInfo.add(i);
                        let index = (**(*rri).ri_IndexRelationDescs.add(i)).rd_id;
                        if !(*info).ii_Expressions.is_null() {
                            (*info).ii_ExpressionsState =
                                c.expressions(index, (*info).ii_Expressions);
                        }
                        if !(*info).ii_Predicate.is_null() {
                            (*info).ii_PredicateState = c.predicate(index, (*info).ii_Predicate);
                        }
                    }
                });
            }
            self.tables.push(Table {
                rri,
                attrs: at,
                generated,
                slots: vec![],
                rel,
            });
            Some(Target(self.tables.len() - 1))
        }
    }

    /// Inserts `n` rows into `target`: `fill(i, values)` gives row `i`'s values, in the order
    /// of the columns it was opened for. The table's constraints are checked and its index
    /// entries made (a unique index raises 23505, waiting first for a transaction inserting
    /// the same key). Rows are visible to the commands that follow.
    ///
    /// # Safety
    /// Inside the transaction that opened `target`; `fill` gives datums of the columns' types.
    pub(super) unsafe fn insert(
        &mut self,
        target: Target,
        n: usize,
        mut fill: impl FnMut(usize, &mut [pg_sys::Datum]),
    ) {
        if n == 0 {
            return;
        }
        // SAFETY: slots of the table's own row type, filled as virtual tuples and inserted by
        // its table AM; index entries and constraints as the executor makes and checks them.
        unsafe {
            let estate = self.estate;
            let table = &mut self.tables[target.0];
            let rel = table.rel.0;
            let am = &*(*rel).rd_tableam;
            let cid = pg_sys::GetCurrentCommandId(true);
            let mut values = vec![pg_sys::Datum::from(0); table.attrs.len()];
            let mut start = 0;
            while start < n {
                let count = MULTI.min(n - start);
                while table.slots.len() < count {
                    table.slots.push(Slot::of(rel));
                }
                for (j, slot) in table.slots[..count].iter().enumerate() {
                    fill(start + j, &mut values);
                    table.store(slot.0, &values, estate);
                }
                // Called through the table AM's pointers, which pgrx does not guard: an error
                // there (out of disk, say) must not unwind through Rust frames unannounced.
                if count == 1 {
                    let insert = am.tuple_insert.expect("a table AM inserts");
                    let slot = table.slots[0].0;
                    pg_sys::ffi::pg_guard_ffi_boundary(|| {
                        insert(rel, slot, cid, 0, std::ptr::null_mut())
                    });
                } else {
                    let insert = am.multi_insert.expect("a table AM inserts many");
                    let mut slots: Vec<*mut pg_sys::TupleTableSlot> =
                        table.slots[..count].iter().map(|s| s.0).collect();
                    pg_sys::ffi::pg_guard_ffi_boundary(|| {
                        insert(
                            rel,
                            slots.as_mut_ptr(),
                            count as i32,
                            cid,
                            0,
                            std::ptr::null_mut(),
                        )
                    });
                }
                if (*table.rri).ri_NumIndices > 0 {
                    for slot in &table.slots[..count] {
                        let recheck = pg_sys::ExecInsertIndexTuples(
                            table.rri,
                            slot.0,
                            estate,
                            false,
                            false,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                        );
                        pg_sys::list_free(recheck);
                        let per_row = (*estate).es_per_tuple_exprcontext;
                        if !per_row.is_null() {
                            pg_sys::MemoryContextReset((*per_row).ecxt_per_tuple_memory);
                        }
                    }
                }
                start += count;
            }
            pg_sys::CommandCounterIncrement();
        }
    }

    /// Inserts one row into `target` (opened with `open_unique`) unless one of its unique
    /// indexes holds the row's key, as INSERT ... ON CONFLICT DO NOTHING does: a transaction
    /// inserting the same key is waited for, and two inserting at once never both succeed
    /// (speculative insertion). Returns where the row went, or `Err` with where the row
    /// holding the key is. The row is visible to the commands that follow.
    ///
    /// # Safety
    /// Inside the transaction that opened `target`; `values` are datums of the columns' types.
    pub(super) unsafe fn insert_new(
        &mut self,
        target: Target,
        values: &[pg_sys::Datum],
    ) -> Result<pg_sys::ItemPointerData, pg_sys::ItemPointerData> {
        // SAFETY: the executor's own protocol for ON CONFLICT DO NOTHING (ExecInsert), on a
        // table and indexes this executor opened, through the table AM's pointers guarded.
        unsafe {
            let estate = self.estate;
            let table = &mut self.tables[target.0];
            let rel = table.rel.0;
            if table.slots.is_empty() {
                table.slots.push(Slot::of(rel));
            }
            let slot = table.slots[0].0;
            table.store(slot, values, estate);
            let am = &*(*rel).rd_tableam;
            let insert = am
                .tuple_insert_speculative
                .expect("a table AM inserts speculatively");
            let complete = am
                .tuple_complete_speculative
                .expect("a table AM completes speculative inserts");
            let xid = pg_sys::GetCurrentTransactionId();
            let cid = pg_sys::GetCurrentCommandId(true);
            loop {
                let mut held: pg_sys::ItemPointerData = std::mem::zeroed();
                // Arbiters: every unique index (a NIL list).
                let all = std::ptr::null_mut();
                if !pg_sys::ExecCheckIndexConstraints(table.rri, slot, estate, &mut held, all) {
                    return Err(held);
                }
                let token = pg_sys::SpeculativeInsertionLockAcquire(xid);
                let no_bulk_state = std::ptr::null_mut();
                pg_sys::ffi::pg_guard_ffi_boundary(|| {
                    insert(rel, slot, cid, 0, no_bulk_state, token)
                });
                let mut lost = false;
                let recheck = pg_sys::ExecInsertIndexTuples(
                    table.rri, slot, estate, false, true, &mut lost, all,
                );
                pg_sys::list_free(recheck);
                pg_sys::ffi::pg_guard_ffi_boundary(|| complete(rel, slot, token, !lost));
                pg_sys::SpeculativeInsertionLockRelease(xid);
                if !lost {
                    pg_sys::CommandCounterIncrement();
                    return Ok((*slot).tts_tid);
                }
                // Another transaction inserted the key meanwhile: wait for it, as a new check does.
            }
        }
    }
}

impl Table {
    /// Makes `values` (in the order of the columns the table was opened for) the row in `slot`,
    /// its generated columns computed and its constraints checked, as the executor would.
    ///
    /// # Safety
    /// `slot` is the table's; `values` are datums of the columns' types.
    unsafe fn store(
        &self,
        slot: *mut pg_sys::TupleTableSlot,
        values: &[pg_sys::Datum],
        estate: *mut pg_sys::EState,
    ) {
        // SAFETY: as the caller promises: a virtual tuple of the table's row type, unfilled
        // columns NULL.
        unsafe {
            pg_sys::ExecClearTuple(slot);
            let desc = (*slot).tts_tupleDescriptor;
            std::slice::from_raw_parts_mut((*slot).tts_isnull, (*desc).natts as usize).fill(true);
            for (k, &a) in self.attrs.iter().enumerate() {
                *(*slot).tts_values.add(a) = values[k];
                *(*slot).tts_isnull.add(a) = false;
            }
            pg_sys::ExecStoreVirtualTuple(slot);
            if self.generated {
                pg_sys::ffi::pg_guard_ffi_boundary(|| {
                    ExecComputeStoredGenerated(self.rri, estate, slot, pg_sys::CmdType::CMD_INSERT)
                });
            }
            if !(*desc).constr.is_null() {
                pg_sys::ExecConstraints(self.rri, slot, estate);
            }
        }
    }
}

extern "C-unwind" {
    // executor/nodeModifyTable.h, which pgrx does not bind.
    fn ExecComputeStoredGenerated(
        rri: *mut pg_sys::ResultRelInfo,
        estate: *mut pg_sys::EState,
        slot: *mut pg_sys::TupleTableSlot,
        cmdtype: pg_sys::CmdType::Type,
    );
}

impl Drop for Executor {
    fn drop(&mut self) {
        // SAFETY: each table's indexes were opened by `open`, closed once, before the tables
        // (their guards) and then the executor state are released.
        unsafe {
            for t in &self.tables {
                pg_sys::ExecCloseIndices(t.rri);
            }
            self.tables.clear();
            pg_sys::FreeExecutorState(self.estate);
        }
        EXECUTORS.set(EXECUTORS.get() - 1);
    }
}

/// Whether inserting into a table with these triggers fires any.
fn inserts_fire(t: &pg_sys::TriggerDesc) -> bool {
    t.trig_insert_before_row
        || t.trig_insert_after_row
        || t.trig_insert_instead_row
        || t.trig_insert_before_statement
        || t.trig_insert_after_statement
        || t.trig_insert_new_table
}

/// A datum of a value pgrx converts without NULLs (text, uuid, bytea).
pub(super) fn datum<T: IntoDatum>(v: T) -> pg_sys::Datum {
    v.into_datum().expect("a value")
}
