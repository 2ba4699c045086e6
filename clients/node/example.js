// event_store from Node.js with `pg`: append with an expected version and retry on a
// conflict, read a stream, fold its state, follow the feed with LISTEN and a checkpoint saved
// in the same transaction as the consumer's effects, and decide across two boundaries with a
// conditional append on tags (docs/dcb.md).
//
// Connects with the PG* environment variables (PGHOST, PGPORT, PGUSER, PGDATABASE). Exits
// non-zero when something is not as the store promises (scripts/test.sh runs it).
'use strict';
const { Client } = require('pg');

// ES001: the stream is not at the expected version, or a conditional append's query matched
// an event after the position it names (docs/reference.md, SQLSTATEs).
const isConflict = (err) => err.code === 'ES001';

// Appends what `decide` makes of the stream's version, expecting that version; on a conflict
// (another writer got there first) reads the version again and decides again. `known` is the
// version the caller last saw.
async function appendWithRetry(client, streamId, eventType, known, decide) {
  for (let attempt = 1; ; attempt++) {
    try {
      const { rows } = await client.query(
        'SELECT stream_version FROM es_append($1, $2, $3, expected_version => $4)',
        [streamId, eventType, decide(known), known]);
      return { version: Number(rows[0].stream_version), attempts: attempt };
    } catch (err) {
      if (!isConflict(err) || attempt >= 5) throw err;
      const { rows } = await client.query('SELECT es_stream_version($1) AS v', [streamId]);
      known = Number(rows[0].v);
    }
  }
}

// DCB (docs/dcb.md): a course's and a student's events, as one query.
const enrolment = (course, student) => ({
  items: [{ tags: [`course:${course}`] }, { tags: [`student:${student}`] }],
});

// What an enrolment decision needs: the seats the course's events take, and the last position
// read (null: nothing matched yet).
async function readEnrolment(client, course, student) {
  const { rows } = await client.query(
    'SELECT global_position, tags FROM es_dcb_read($1)', [JSON.stringify(enrolment(course, student))]);
  return {
    taken: rows.filter((r) => r.tags.includes(`course:${course}`)).length,
    head: rows.length > 0 ? Number(rows[rows.length - 1].global_position) : null,
  };
}

// Enrols `student` in `course` while a seat is left, on the condition that nothing the query
// matches came after what was read; refused (ES001: another decision came first), reads again
// and decides again. Returns whether the student got a seat and the attempts it took.
async function enrolWithRetry(client, course, student, seats, seen) {
  for (let attempt = 1; ; attempt++) {
    if (seen.taken >= seats) return { enrolled: false, attempts: attempt };
    try {
      const events = [{
        type: 'StudentEnrolled',
        data: { course, student },
        tags: [`course:${course}`, `student:${student}`],
      }];
      const condition = { fail_if_events_match: enrolment(course, student), after: seen.head };
      await client.query('SELECT es_dcb_append($1, $2)', [JSON.stringify(events), JSON.stringify(condition)]);
      return { enrolled: true, attempts: attempt };
    } catch (err) {
      if (!isConflict(err) || attempt >= 5) throw err;
      seen = await readEnrolment(client, course, student);
    }
  }
}

function check(ok, what) {
  if (!ok) throw new Error(`not so: ${what}`);
  console.log(`ok: ${what}`);
}

async function main() {
  const app = new Client();
  const other = new Client();
  const consumer = new Client();
  await Promise.all([app.connect(), other.connect(), consumer.connect()]);
  try {
    const cart = 'cart-node-1';
    let r = await appendWithRetry(app, cart, 'ItemAdded', 0, () => ({ sku: 'A', qty: 1 }));
    check(r.version === 1, 'a new stream starts at version 1');
    // Another writer appends meanwhile: our next append, expecting version 1, conflicts once.
    await other.query(`SELECT es_append($1, 'ItemAdded', '{"sku": "B", "qty": 2}')`, [cart]);
    r = await appendWithRetry(app, cart, 'CheckedOut', 1, (seen) => ({ items_seen: seen }));
    check(r.version === 3 && r.attempts === 2, 'a conflict is retried against the new version');

    // Read the stream; fold its state (no reducers: each event's data merged in).
    const { rows: events } = await app.query(
      'SELECT stream_version, event_type, event_data FROM es_stream($1)', [cart]);
    for (const e of events) console.log(`  ${e.stream_version} ${e.event_type} ${JSON.stringify(e.event_data)}`);
    check(events.length === 3, 'the stream reads back in version order');
    const { rows: [{ state }] } = await app.query('SELECT es_state($1) AS state', [cart]);
    check(state.items_seen === 2 && state.sku === 'B', 'the state folds every event');

    // Follow the feed: read after the saved checkpoint, apply, save the position with the
    // effects in one transaction; sleep until NOTIFY event_store says more has committed.
    const name = 'node-example';
    await consumer.query('CREATE TEMP TABLE seen (position bigint PRIMARY KEY)');
    let wake = null;
    consumer.on('notification', () => { if (wake) wake(); });
    await consumer.query('LISTEN event_store');
    let expected = 3;
    let extraAppended = false;
    for (;;) {
      const notified = new Promise((resolve, reject) => {
        wake = resolve;
        setTimeout(() => reject(new Error('not so: NOTIFY event_store wakes the consumer')), 10000).unref();
      });
      await consumer.query('BEGIN');
      const { rows: [{ after }] } = await consumer.query(
        'SELECT coalesce(es_checkpoint($1), 0) AS after', [name]);
      const { rows: batch } = await consumer.query(
        'SELECT global_position FROM es_read_all($1, 100)', [after]);
      for (const e of batch) await consumer.query('INSERT INTO seen VALUES ($1)', [e.global_position]);
      if (batch.length > 0) {
        await consumer.query('SELECT es_save_checkpoint($1, $2)', [name, batch[batch.length - 1].global_position]);
      }
      await consumer.query('COMMIT');
      const { rows: [{ n }] } = await consumer.query('SELECT count(*)::int AS n FROM seen');
      if (n === expected) {
        if (extraAppended) break;
        // Caught up: one more event from another connection must wake us.
        await other.query(`SELECT es_append('cart-node-2', 'ItemAdded', '{}')`);
        expected += 1;
        extraAppended = true;
      }
      await notified;
      console.log('ok: NOTIFY event_store wakes the consumer');
    }
    const { rows: [{ cp }] } = await consumer.query('SELECT es_checkpoint($1) AS cp', [name]);
    check(Number(cp) === 4, 'every event consumed once, the checkpoint at the last');

    // One seat left: Ann's decision reads the course, then Bob enrols first. Ann's append,
    // conditioned on what she read, is refused; she reads again and finds the course full.
    const annSaw = await readEnrolment(app, 'algebra', 'ann');
    const bob = await enrolWithRetry(other, 'algebra', 'bob', 1, await readEnrolment(other, 'algebra', 'bob'));
    check(bob.enrolled && bob.attempts === 1, 'a decision across a course and a student appends on its condition');
    const ann = await enrolWithRetry(app, 'algebra', 'ann', 1, annSaw);
    check(!ann.enrolled && ann.attempts === 2, 'a decision on a stale read is refused (ES001), decided again: the course is full');
  } finally {
    await Promise.all([app.end(), other.end(), consumer.end()]);
  }
}

main().catch((err) => { console.error(err.message || err); process.exit(1); });
