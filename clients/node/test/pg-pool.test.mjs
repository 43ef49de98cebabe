// createPgPool against the real stack: a database role with TTL 3 s / max_ttl
// 10 s makes vaultlet replace the credential every ~5 s. Queries run every
// 50 ms through at least five rotations, and not one may fail.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';

import { createPgPool, getSecret, waitUntilReady } from '../index.js';
import { Stack, sleep } from '../testing/stack.mjs';

const POLICY = `
path "database/creds/t_node" { capabilities = ["read"] }
path "secret/data/*" { capabilities = ["read"] }
path "sys/leases/*" { capabilities = ["update"] }
`;
const ROTATIONS = 5;
const INTERVAL_MS = 50;
const DEADLINE_MS = 180000;

let stack;
let daemon;

before(async () => {
  stack = await Stack.up('pg');
  await stack.dbRole('t_node', '3s', '10s');
  const approle = await stack.approle('t_node_pg', POLICY);
  daemon = await stack.vaultlet('pg', `[secret.db]\ndatabase = { role = "t_node" }\n`, { approle });
  await waitUntilReady({ socket: daemon.socket, timeoutMs: 60000 });
});

after(async () => {
  if (stack) await stack.down();
});

test(`createPgPool keeps queries succeeding through ${ROTATIONS} credential rotations`, async (t) => {
  const rotations = [];
  const poolErrors = [];
  const db = await createPgPool('db', {
    pg,
    socket: daemon.socket,
    poolOptions: { ...stack.pg, max: 4, connectionTimeoutMillis: 30000 },
    onRotate: (r) => rotations.push({ ...r, at: Date.now() }),
    onError: (e) => poolErrors.push(e),
  });
  const first = await getSecret('db', { socket: daemon.socket });
  assert.equal(db.user, first.data.username);

  let queries = 0;
  const failures = [];
  const users = []; // current_user, each time it changes
  const t0 = Date.now();
  // A second, concurrent stream of queries holding a client across a short
  // transaction, so swaps also happen while clients are checked out.
  let stop = false;
  const tx = (async () => {
    while (!stop) {
      let client;
      try {
        client = await db.connect();
        await client.query('BEGIN');
        await client.query('SELECT pg_sleep(0.2)');
        await client.query('COMMIT');
        queries++;
      } catch (err) {
        failures.push(`transaction: ${err.code || ''} ${err.message}`);
      } finally {
        client?.release();
      }
      await sleep(INTERVAL_MS);
    }
  })();
  try {
    while (users.length <= ROTATIONS && Date.now() - t0 < DEADLINE_MS) {
      try {
        const res = await db.query('SELECT current_user');
        queries++;
        const who = res.rows[0].current_user;
        if (users.at(-1) !== who) users.push(who);
      } catch (err) {
        failures.push(`${err.code || ''} ${err.message}`);
      }
      await sleep(INTERVAL_MS);
    }
  } finally {
    stop = true;
    await tx;
    await db.end();
  }
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  const figures = `rotations: ${rotations.length}, users seen: ${users.length} (${users.length - 1} changes), queries: ${queries}, failed: ${failures.length}, in ${secs} s`;
  t.diagnostic(figures);
  console.log(`createPgPool rotation test: ${figures}`);

  assert.deepEqual(failures, [], `failed queries:\n${failures.join('\n')}\n--- vaultlet log ---\n${daemon.log().slice(-4000)}`);
  assert.ok(users.length - 1 >= ROTATIONS, `current_user changed only ${users.length - 1} times in ${secs} s`);
  assert.ok(rotations.length >= ROTATIONS);
  assert.equal(new Set(users).size, users.length, 'every rotation brings a new database user');
  for (const r of rotations) assert.equal(r.version, r.previousVersion + 1);
  // Idle connections of replaced credentials may be dropped by the server
  // (revocation terminates them); that must never surface as a failed query.
  for (const e of poolErrors) assert.ok(!/SELECT/.test(e.message), e.message);
});
