// createPgPool across a token revocation, against the real stack: an operator
// revokes every AppRole token (`bao lease revoke -prefix auth/approle/login`),
// which also revokes every database credential they created. vaultlet verifies
// its lease only hourly here, so what saves the app is createPgPool reporting
// the refused login (POST /v1/secrets/db/rejected) and retrying on a new
// connection with the credential vaultlet issues then. A query every 100 ms
// must not fail once.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';

import { createPgPool, getSecret, waitUntilReady } from '../index.js';
import { Stack, eventually, sleep } from '../testing/stack.mjs';

const POLICY = `
path "database/creds/t_node_rev" { capabilities = ["read"] }
path "sys/leases/renew/database/creds/t_node_rev/*" { capabilities = ["update"] }
path "sys/leases/revoke/database/creds/t_node_rev/*" { capabilities = ["update"] }
path "sys/leases/lookup" {
  capabilities = ["update"]
  allowed_parameters = { "lease_id" = ["database/creds/t_node_rev/*"] }
}
`;
const INTERVAL_MS = 100;

let stack;
let daemon;

before(async () => {
  stack = await Stack.up('revoke');
  await stack.dbRole('t_node_rev', '60s', '10m');
  const approle = await stack.approle('t_node_rev', POLICY);
  daemon = await stack.vaultlet('revoke', `[secret.db]\ndatabase = { role = "t_node_rev" }\nverify_every = "1h"\n`, { approle });
  await waitUntilReady({ socket: daemon.socket, timeoutMs: 60000 });
});

after(async () => {
  if (stack) await stack.down();
});

test('createPgPool sees no failed query across a token revocation', async (t) => {
  const db = await createPgPool('db', {
    pg,
    socket: daemon.socket,
    poolOptions: { ...stack.pg, max: 4, connectionTimeoutMillis: 30000, idleTimeoutMillis: 200 },
    onError: () => {},
  });
  const before = await getSecret('db', { socket: daemon.socket });
  let queries = 0;
  const failures = [];
  const users = [];
  let stop = false;
  let slowest = 0;
  const loop = (async () => {
    while (!stop) {
      const t0 = Date.now();
      try {
        const res = await db.query('SELECT current_user');
        queries++;
        const who = res.rows[0].current_user;
        if (users.at(-1) !== who) users.push(who);
      } catch (err) {
        failures.push(`${err.code || ''} ${err.message}`);
      }
      slowest = Math.max(slowest, Date.now() - t0);
      await sleep(INTERVAL_MS);
    }
  })();
  try {
    // Queries run on the first credential, then the revocation.
    await eventually('queries on the first credential', () => queries >= 5);
    const revokedAt = Date.now();
    await stack.bao('lease', 'revoke', '-prefix', 'auth/approle/login');
    // The old credential is dead once Vault dropped its role.
    await eventually('a new database user after the revocation', async () => users.length >= 2);
    const switchedMs = Date.now() - revokedAt;
    // And on the new one for a while.
    const switched = queries;
    await eventually('queries on the new credential', () => queries >= switched + 5);
    stop = true;
    await loop;
    const after = await getSecret('db', { socket: daemon.socket });
    const figures = `queries: ${queries}, failed: ${failures.length}, users: ${users.length}, new credential in use ${switchedMs} ms after the revocation, slowest query ${slowest} ms`;
    t.diagnostic(figures);
    console.log(`createPgPool revocation test: ${figures}`);
    assert.deepEqual(failures, [], `failed queries:\n${failures.join('\n')}\n--- vaultlet log ---\n${daemon.log().slice(-4000)}`);
    assert.ok(after.version > before.version, 'vaultlet replaced the credential');
    assert.equal(users.at(-1), after.data.username, 'the pool uses the credential vaultlet serves now');
    assert.match(daemon.log(), /app reported a rejected credential/, 'the pool reported the refused login');
  } finally {
    stop = true;
    await loop;
    await db.end();
  }
});
