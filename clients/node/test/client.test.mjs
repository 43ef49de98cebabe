// The client against the real stack: OpenBao + PostgreSQL (scripts/testbed.sh)
// and vaultlet processes. Values, errors, waiting and watching.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';

import { getSecret, loadSecrets, waitUntilReady, watch, VaultletError } from '../index.js';
import { Stack, eventually } from '../testing/stack.mjs';

const POLICY = `
path "database/creds/api" { capabilities = ["read"] }
path "database/creds/t_node" { capabilities = ["read"] }
path "secret/data/*" { capabilities = ["read"] }
path "sys/leases/*" { capabilities = ["update"] }
`;

let stack;
let approle;
let main; // api (KV v2), watched (KV v2, refresh 1s), db (database role api)

before(async () => {
  stack = await Stack.up('client');
  approle = await stack.approle('t_node_client', POLICY);
  await stack.bao('kv', 'put', '-mount=secret', 't_node_watch', 'token=one');
  main = await stack.vaultlet(
    'main',
    `[secret.api]
kv = { path = "api" }

[secret.watched]
kv = { path = "t_node_watch" }
refresh = "1s"

[secret.db]
database = { role = "api" }
`,
    { approle },
  );
  await waitUntilReady({ socket: main.socket, timeoutMs: 60000 });
});

after(async () => {
  if (stack) await stack.down();
});

test('getSecret and loadSecrets return what OpenBao holds', async () => {
  const api = await getSecret('api', { socket: main.socket });
  assert.equal(api.name, 'api');
  assert.equal(api.data.stripe_key, 'sk_test_demo123');
  assert.equal(api.data.greeting, 'hello');
  assert.equal(api.version, 1);
  assert.equal(api.lease, undefined, 'KV secrets have no lease');

  const db = await getSecret('db', { socket: main.socket });
  assert.match(db.data.username, /^v-approle-api-/);
  assert.ok(db.data.password.length >= 16);
  assert.equal(db.lease.renewable, true);
  assert.match(db.lease.expires_at, /Z$/);
  assert.ok(db.lease.ttl_seconds > 0);

  const all = await loadSecrets({ socket: main.socket });
  assert.deepEqual(Object.keys(all).sort(), ['api', 'db', 'watched']);
  assert.equal(all.api.stripe_key, 'sk_test_demo123');
  assert.equal(all.db.username, db.data.username);

  // VAULTLET_SOCKET is the default socket.
  process.env.VAULTLET_SOCKET = main.socket;
  try {
    assert.equal((await getSecret('api')).data.stripe_key, 'sk_test_demo123');
  } finally {
    delete process.env.VAULTLET_SOCKET;
  }
});

test('a missing socket fails fast with ENOSOCKET', async () => {
  // ENOSOCKET, not TIMEOUT: it did not wait for an answer.
  await assert.rejects(getSecret('api', { socket: join(stack.parent, 'nothing-here.sock') }), (err) => {
    assert.ok(err instanceof VaultletError);
    assert.equal(err.code, 'ENOSOCKET');
    assert.match(err.message, /is vaultlet running\? check VAULTLET_SOCKET/);
    return true;
  });
  await assert.rejects(loadSecrets({ socket: join(stack.parent, 'nothing-here.sock') }), { code: 'ENOSOCKET' });
});

test('an unknown secret is FORBIDDEN, like a secret this process may not read', async () => {
  await assert.rejects(getSecret('no_such_secret', { socket: main.socket }), (err) => {
    assert.equal(err.code, 'FORBIDDEN');
    assert.equal(err.status, 403);
    assert.match(err.message, /no_such_secret/);
    assert.match(err.message, /\[secret\.no_such_secret\]/);
    return true;
  });
});

test('a secret vaultlet cannot fetch is NOT_READY with its reason', async () => {
  const broken = await stack.vaultlet(
    'broken',
    `[secret.api]
kv = { path = "api" }

[secret.missing]
kv = { path = "t_node_does_not_exist" }
`,
    { approle },
  );
  await getSecret('api', { socket: broken.socket, waitUntilReady: true, timeoutMs: 60000 });
  const err = await eventually('NOT_READY with a reason', async () => {
    try {
      await getSecret('missing', { socket: broken.socket });
    } catch (e) {
      if (e.code === 'NOT_READY' && e.reason) return e;
      throw e;
    }
    return null;
  });
  assert.equal(err.status, 503);
  assert.ok(err.message.includes(err.reason), err.message);

  // The given timeout, not the 30 s default.
  const t0 = Date.now();
  await assert.rejects(waitUntilReady({ socket: broken.socket, timeoutMs: 1500 }), (e) => {
    assert.equal(e.code, 'TIMEOUT');
    assert.equal(e.reasons[0].secret, 'missing');
    assert.match(e.message, /within 1500 ms/);
    assert.match(e.message, /missing: /);
    return true;
  });
  assert.ok(Date.now() - t0 < 25000, `took ${Date.now() - t0} ms`);
  await assert.rejects(getSecret('missing', { socket: broken.socket, waitUntilReady: true, timeoutMs: 1000 }), {
    code: 'TIMEOUT',
  });
  await assert.rejects(loadSecrets({ socket: broken.socket }), (e) => {
    assert.equal(e.code, 'NOT_READY');
    assert.deepEqual(e.reasons.map((r) => r.secret), ['missing']);
    return true;
  });
  assert.deepEqual(Object.keys(await loadSecrets({ socket: broken.socket, partial: true })), ['api']);
  await broken.stop();
});

test('a caller not on socket.allow gets FORBIDDEN naming its uid', async () => {
  const denied = await stack.vaultlet('denied', `[secret.api]\nkv = { path = "api" }\n`, {
    approle,
    socketExtra: 'allow = [{ uid = 12345 }]',
  });
  const uid = process.getuid();
  const err = await eventually('403 from vaultlet', async () => {
    try {
      await getSecret('api', { socket: denied.socket });
    } catch (e) {
      if (e.code === 'FORBIDDEN') return e;
      if (e.code !== 'ENOSOCKET') throw e;
    }
    return null;
  });
  assert.equal(err.status, 403);
  assert.match(err.message, new RegExp(`uid ${uid}\\b`));
  assert.match(err.message, new RegExp(`\\{ uid = ${uid} \\}`));
  assert.ok(!err.message.includes('sk_test'));
  // Waiting cannot fix a 403: waitUntilReady fails at once, not when its minute is up.
  const t0 = Date.now();
  await assert.rejects(waitUntilReady({ socket: denied.socket, timeoutMs: 60000 }), { code: 'FORBIDDEN' });
  assert.ok(Date.now() - t0 < 30000, `took ${Date.now() - t0} ms`);
  await denied.stop();
});

test("a secret whose own allow list excludes the caller is FORBIDDEN and left out of loadSecrets", async () => {
  const d = await stack.vaultlet(
    'acl',
    `[secret.api]
kv = { path = "api" }

[secret.restricted]
kv = { path = "api" }
allow = [{ uid = 12345 }]
`,
    { approle },
  );
  await waitUntilReady({ socket: d.socket, timeoutMs: 60000 });
  const uid = process.getuid();
  await assert.rejects(getSecret('restricted', { socket: d.socket }), (e) => {
    assert.equal(e.code, 'FORBIDDEN');
    assert.match(e.message, new RegExp(`\\{ uid = ${uid} \\} to secret\\.restricted\\.allow`));
    return true;
  });
  assert.deepEqual(Object.keys(await loadSecrets({ socket: d.socket })), ['api']);
  await d.stop();
});

test('watch delivers the current value, then each KV change', async () => {
  const seen = [];
  const errors = [];
  const w = watch('watched', (s) => seen.push(s), { socket: main.socket, onError: (e) => errors.push(e) });
  try {
    await eventually('initial value', () => seen.length >= 1);
    assert.equal(seen[0].data.token, 'one');
    const v1 = seen[0].version;

    await stack.bao('kv', 'put', '-mount=secret', 't_node_watch', 'token=two');
    await eventually('second value', () => seen.length >= 2);
    assert.equal(seen[1].data.token, 'two');
    assert.equal(seen[1].version, v1 + 1);
    assert.equal(w.current.data.token, 'two');
    assert.deepEqual(errors, []);
  } finally {
    w.close();
  }
});

test('getSecret waits for a vaultlet that is still starting; watch survives a restart', async () => {
  await stack.bao('kv', 'put', '-mount=secret', 't_node_restart', 'token=before');
  const body = `[secret.r]\nkv = { path = "t_node_restart" }\nrefresh = "1s"\n`;
  // Ask before vaultlet has even created its socket.
  const socket = join(stack.workDir('vaultlet-restart'), 'vaultlet.sock');
  const pending = getSecret('r', { socket, waitUntilReady: true, timeoutMs: 60000 });
  const d = await stack.vaultlet('restart', body, { approle, socket });
  assert.equal((await pending).data.token, 'before');

  const seen = [];
  const errors = [];
  const w = watch('r', (s) => seen.push(s), { socket, onError: (e) => errors.push(e), maxBackoffMs: 1000 });
  try {
    await eventually('initial value', () => seen.length >= 1);
    await d.stop();
    // While vaultlet is down the value changes; the restarted vaultlet starts
    // again at version 1, which the watcher must still deliver.
    await stack.bao('kv', 'put', '-mount=secret', 't_node_restart', 'token=after');
    await eventually('watcher notices vaultlet is gone', () => errors.length >= 1);
    d.start();
    await eventually('value after restart', () => seen.at(-1).data.token === 'after');
    assert.equal(seen.at(-1).version, 1);
    assert.ok(errors.every((e) => ['ENOSOCKET', 'ECONNRESET'].includes(e.code)), errors.map((e) => e.code).join());
  } finally {
    w.close();
    await d.stop();
  }
});
