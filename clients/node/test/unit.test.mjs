// The client against a scripted stand-in for vaultlet on a Unix socket: the
// cases a real vaultlet does not produce on demand (hangs, garbage, a server
// that comes and goes), and createPgPool's swap-and-drain with a fake pg.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventEmitter } from 'node:events';

import vaultlet, { createPgPool, getSecret, loadSecrets, waitUntilReady, watch, VaultletError } from '../index.js';
import { createRequire } from 'node:module';

const dir = mkdtempSync(join(tmpdir(), 'vaultlet-node-unit-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const sockPath = () => join(dir, `s${n++}.sock`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** An HTTP server on a Unix socket; `handler(req, res, url)`. */
async function fakeVaultlet(handler, path = sockPath()) {
  const server = http.createServer((req, res) => handler(req, res, new URL(req.url, 'http://x')));
  await new Promise((r) => server.listen(path, r));
  return {
    path,
    server,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections?.();
        server.close(r);
      }),
  };
}

function send(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

/** A server holding versions of one secret and answering long-polls like vaultlet. */
function secretServer() {
  const state = { version: 1, data: { token: 'v1' }, waiters: [], requests: [] };
  const doc = () => ({ name: 's', version: state.version, data: state.data });
  const handler = (req, res, url) => {
    state.requests.push(url.pathname + url.search);
    if (url.pathname !== '/v1/secrets/s') return send(res, 404, { error: 'no such secret' });
    const after = url.searchParams.get('after');
    if (url.searchParams.has('wait') && after !== null && Number(after) >= state.version) {
      const t = setTimeout(() => send(res, 200, doc()), 2000);
      state.waiters.push(() => {
        clearTimeout(t);
        send(res, 200, doc());
      });
      return;
    }
    send(res, 200, doc(), { 'x-vaultlet-version': String(state.version) });
  };
  const bump = (data) => {
    state.version += 1;
    state.data = data;
    const w = state.waiters.splice(0);
    w.forEach((f) => f());
  };
  return { state, handler, bump };
}

async function until(what, fn, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await fn()) return;
    await sleep(20);
  }
  throw new Error(`${what}: not within ${timeoutMs} ms`);
}

test('ESM and CommonJS entries export the same functions', () => {
  const cjs = createRequire(import.meta.url)('../index.cjs');
  assert.equal(cjs.getSecret, getSecret);
  assert.equal(cjs.VaultletError, VaultletError);
  assert.equal(vaultlet.createPgPool, createPgPool);
  assert.equal(cjs.DEFAULT_SOCKET, '/run/vaultlet/vaultlet.sock');
});

test('a server that never answers gives TIMEOUT, not a hang', async () => {
  const path = sockPath();
  const sockets = [];
  const server = net.createServer((s) => sockets.push(s)); // accepts, never replies
  await new Promise((r) => server.listen(path, r));
  try {
    // The given timeouts, not the 5 s and 30 s defaults.
    const t0 = Date.now();
    await assert.rejects(getSecret('db', { socket: path, timeoutMs: 300 }), (err) => {
      assert.ok(err instanceof VaultletError);
      assert.equal(err.code, 'TIMEOUT');
      assert.match(err.message, /within 300 ms/);
      return true;
    });
    await assert.rejects(waitUntilReady({ socket: path, timeoutMs: 400 }), (err) => {
      assert.equal(err.code, 'TIMEOUT');
      assert.match(err.message, /within 400 ms/);
      return true;
    });
    assert.ok(Date.now() - t0 < 20000, `took ${Date.now() - t0} ms`);
  } finally {
    sockets.forEach((s) => s.destroy());
    server.close();
  }
});

test('garbage, resets and odd statuses map to error codes', async () => {
  const f = await fakeVaultlet((req, res, url) => {
    if (url.pathname === '/v1/secrets/garbage') return res.end('<html>');
    if (url.pathname === '/v1/secrets/reset') return req.socket.destroy();
    if (url.pathname === '/v1/secrets/bad') return send(res, 400, { error: '`wait` must be a duration like 30s' });
    if (url.pathname === '/v1/secrets/boom') return send(res, 500, { error: 'oops' });
    if (url.pathname === '/v1/secrets/denied') return send(res, 403, { error: 'caller is not allowed to use this socket' });
    if (url.pathname === '/v1/secrets/later') return send(res, 503, { error: 'not fetched yet: login failed' });
    if (url.pathname === '/v1/secrets/acl') return send(res, 403, { error: 'no secret `acl` readable by uid 1000' });
    if (url.pathname === '/v1/secrets/old_acl') return send(res, 403, { error: 'caller uid 1000 may not read `old_acl`' });
    if (url.pathname === '/v1/secrets/slow-down') return send(res, 429, { error: 'too many refused requests; slow down' });
    // An older vaultlet's answer to an unknown name.
    return send(res, 404, { error: 'no secret named `x`' });
  });
  try {
    const code = async (name) => getSecret(name, { socket: f.path }).then(() => 'ok', (e) => e.code);
    assert.equal(await code('garbage'), 'EPROTO');
    assert.equal(await code('reset'), 'ECONNRESET');
    assert.equal(await code('bad'), 'BAD_REQUEST');
    assert.equal(await code('boom'), 'EPROTO');
    assert.equal(await code('denied'), 'FORBIDDEN');
    assert.equal(await code('x'), 'NOT_FOUND');
    assert.equal(await code('slow-down'), 'RATE_LIMITED');
    await assert.rejects(getSecret('acl', { socket: f.path }), /\[secret\.acl\] is in .* to secret\.acl\.allow/);
    await assert.rejects(getSecret('old_acl', { socket: f.path }), /to secret\.old_acl\.allow/);
    await assert.rejects(getSecret('denied', { socket: f.path }), /to socket\.allow/);
    await assert.rejects(getSecret('later', { socket: f.path }), (e) => {
      assert.equal(e.code, 'NOT_READY');
      assert.equal(e.reason, 'not fetched yet: login failed');
      assert.match(e.message, /secret "later" is not available: not fetched yet: login failed/);
      return true;
    });
    assert.throws(() => watch('', () => {}), TypeError);
    await assert.rejects(getSecret(''), TypeError);
  } finally {
    await f.close();
  }
});

test('the socket comes from the option, then VAULTLET_SOCKET, then the default', async () => {
  const f = await fakeVaultlet((req, res) => send(res, 200, { secrets: { a: { name: 'a', version: 1, data: { k: 'v' } } }, unavailable: {} }));
  const saved = process.env.VAULTLET_SOCKET;
  try {
    process.env.VAULTLET_SOCKET = f.path;
    assert.deepEqual(await loadSecrets(), { a: { k: 'v' } });
    process.env.VAULTLET_SOCKET = join(dir, 'elsewhere.sock');
    await assert.rejects(loadSecrets(), (e) => e.code === 'ENOSOCKET' && e.socket === join(dir, 'elsewhere.sock'));
    assert.deepEqual(await loadSecrets({ socket: f.path }), { a: { k: 'v' } });
    delete process.env.VAULTLET_SOCKET;
    if (!existsSync('/run/vaultlet/vaultlet.sock')) {
      await assert.rejects(loadSecrets({ timeoutMs: 500 }), (e) => e.code === 'ENOSOCKET' && e.socket === '/run/vaultlet/vaultlet.sock');
    }
  } finally {
    if (saved === undefined) delete process.env.VAULTLET_SOCKET;
    else process.env.VAULTLET_SOCKET = saved;
    await f.close();
  }
});

test('waitUntilReady polls until ready; a TIMEOUT carries the reasons', async () => {
  let ready = false;
  const f = await fakeVaultlet((req, res) =>
    ready ? send(res, 200, { ready: true }) : send(res, 503, { ready: false, reasons: [{ secret: 'db', reason: 'not fetched yet' }] }),
  );
  try {
    await assert.rejects(waitUntilReady({ socket: f.path, timeoutMs: 300 }), (e) => {
      assert.equal(e.code, 'TIMEOUT');
      assert.deepEqual(e.reasons, [{ secret: 'db', reason: 'not fetched yet' }]);
      assert.match(e.message, /db: not fetched yet/);
      return true;
    });
    setTimeout(() => (ready = true), 300);
    assert.deepEqual(await waitUntilReady({ socket: f.path, timeoutMs: 30000 }), { ready: true });
  } finally {
    await f.close();
  }
});

test('watch: initial value, long-poll with after=, changes, close()', async () => {
  const s = secretServer();
  const f = await fakeVaultlet(s.handler);
  const seen = [];
  const w = watch('s', (x) => seen.push(x), { socket: f.path, pollWaitMs: 5000 });
  try {
    await until('initial', () => seen.length === 1);
    assert.equal(seen[0].data.token, 'v1');
    await until('long-poll pending', () => s.state.waiters.length === 1);
    assert.ok(s.state.requests.at(-1).includes('wait=5s&after=1'), s.state.requests.at(-1));
    s.bump({ token: 'v2' });
    await until('second', () => seen.length === 2);
    assert.equal(seen[1].version, 2);
    assert.equal(w.current.data.token, 'v2');
    w.close();
    assert.equal(w.closed, true);
    const count = s.state.requests.length;
    await sleep(300);
    assert.equal(s.state.requests.length, count, 'no requests after close()');
  } finally {
    w.close();
    await f.close();
  }
});

test('watch reconnects with backoff while vaultlet is away and catches up after a restart', async () => {
  const path = sockPath();
  const errors = [];
  const seen = [];
  const w = watch('s', (x) => seen.push(x), { socket: path, minBackoffMs: 50, maxBackoffMs: 200, onError: (e) => errors.push(e) });
  try {
    // Capped backoff: the retries keep coming ~200 ms apart. Uncapped, the
    // one after the tenth error would come 25 s or more later.
    await until('ten errors while no socket', () => errors.length >= 10);
    assert.ok(errors.every((e) => e.code === 'ENOSOCKET'));
    const before = errors.length;
    const t0 = Date.now();
    await until('two more retries', () => errors.length >= before + 2);
    assert.ok(Date.now() - t0 < 10000, `two retries took ${Date.now() - t0} ms`);

    let s = secretServer();
    let f = await fakeVaultlet(s.handler, path);
    await until('first value', () => seen.length === 1);
    s.bump({ token: 'v2' });
    await until('v2', () => seen.length === 2);
    await f.close();

    // A restarted vaultlet counts from 1 again, with new content: delivered.
    s = secretServer();
    s.state.data = { token: 'fresh' };
    f = await fakeVaultlet(s.handler, path);
    await until('after restart', () => seen.length === 3);
    assert.deepEqual([seen[2].version, seen[2].data.token], [1, 'fresh']);
    await f.close();
  } finally {
    w.close();
  }
});

test('watch: a throwing callback is reported and the watcher goes on', async () => {
  const s = secretServer();
  const f = await fakeVaultlet(s.handler);
  const errors = [];
  const seen = [];
  const w = watch(
    's',
    async (x) => {
      seen.push(x.version);
      if (x.version === 1) throw new Error('callback failed');
    },
    { socket: f.path, onError: (e) => errors.push(e) },
  );
  try {
    await until('first', () => seen.length === 1);
    await until('pending', () => s.state.waiters.length === 1);
    s.bump({ token: 'v2' });
    await until('second', () => seen.length === 2);
    assert.equal(errors[0].message, 'callback failed');
  } finally {
    w.close();
    await f.close();
  }
});

/** A stand-in for node-postgres: pools record their user and lifecycle. */
function fakePg() {
  const pools = [];
  class Pool extends EventEmitter {
    constructor(cfg) {
      super();
      this.cfg = cfg;
      this.ended = false;
      this.waitingCount = 0;
      this.queries = 0;
      this.refuse = false;
      pools.push(this);
    }
    async query(text) {
      if (this.ended) throw new Error('Cannot use a pool after calling end on the pool');
      if (this.refuse) throw Object.assign(new Error(`password authentication failed for user "${this.cfg.user}"`), { code: '28P01' });
      this.queries++;
      return { rows: [{ current_user: this.cfg.user, text }] };
    }
    async connect() {
      return { user: this.cfg.user, release() {} };
    }
    async end() {
      this.ended = true;
    }
  }
  return { pg: { Pool }, pools };
}

test('createPgPool swaps to a new pool on rotation and drains the old one', async () => {
  const s = secretServer();
  s.state.data = { username: 'u1', password: 'p1' };
  const f = await fakeVaultlet(s.handler);
  const { pg, pools } = fakePg();
  const rotations = [];
  const db = await createPgPool('s', {
    pg,
    socket: f.path,
    poolOptions: { host: 'db.internal', port: 5432, database: 'app', max: 3 },
    onRotate: (r) => rotations.push(r),
  });
  try {
    assert.equal(pools.length, 1);
    assert.deepEqual(pools[0].cfg, { host: 'db.internal', port: 5432, database: 'app', max: 3, user: 'u1', password: 'p1' });
    assert.equal((await db.query('SELECT current_user')).rows[0].current_user, 'u1');
    assert.equal(db.pool, pools[0]);
    assert.equal(db.version, 1);

    // The old pool still has a queued request: it is ended only once that is served.
    pools[0].waitingCount = 1;
    await until('pending', () => s.state.waiters.length === 1);
    s.bump({ username: 'u2', password: 'p2' });
    await until('rotation', () => pools.length === 2);
    assert.equal((await db.query('SELECT current_user')).rows[0].current_user, 'u2');
    assert.deepEqual(rotations, [{ name: 's', version: 2, previousVersion: 1, user: 'u2', previousUser: 'u1' }]);
    await sleep(100);
    assert.equal(pools[0].ended, false, 'not ended while requests are queued on it');
    pools[0].waitingCount = 0;
    await until('old pool ended', () => pools[0].ended);
    assert.equal(pools[1].ended, false);
    assert.equal((await db.connect()).user, 'u2');

    // A login refused with a stale password: the client re-reads the secret and retries once.
    pools[1].refuse = true;
    s.state.version = 3; // vaultlet moved on without the long-poll noticing yet
    s.state.data = { username: 'u3', password: 'p3' };
    assert.equal((await db.query('SELECT 1')).rows[0].current_user, 'u3');
    assert.equal(pools.length, 3);

    // Other errors are not retried.
    pools[2].query = async () => {
      throw Object.assign(new Error('syntax error'), { code: '42601' });
    };
    await assert.rejects(db.query('SELEC'), { code: '42601' });
    assert.equal(pools.length, 3);
  } finally {
    await db.end();
    await f.close();
  }
  assert.ok(pools.every((p) => p.ended), 'end() ends every pool');
  await assert.rejects(db.query('SELECT 1'), /after end/);
});

test('createPgPool reports a refused login with the version it used, once for queries failing together, then retries', async () => {
  const s = secretServer();
  s.state.data = { username: 'u1', password: 'p1' };
  const reports = [];
  const f = await fakeVaultlet((req, res, url) => {
    if (url.pathname === '/v1/secrets/s/rejected') {
      reports.push({ method: req.method, version: url.searchParams.get('version') });
      // vaultlet found the lease gone and published a replacement.
      s.bump({ username: 'u2', password: 'p2' });
      return setTimeout(() => send(res, 200, { name: 's', version: s.state.version, replaced: true }), 50);
    }
    return s.handler(req, res, url);
  });
  const { pg, pools } = fakePg();
  const db = await createPgPool('s', { pg, socket: f.path, poolOptions: {}, onError: () => {} });
  try {
    pools[0].refuse = true;
    const results = await Promise.all([db.query('SELECT 1'), db.query('SELECT 2'), db.query('SELECT 3')]);
    assert.deepEqual(
      results.map((r) => r.rows[0].current_user),
      ['u2', 'u2', 'u2'],
      'every query retried on the new credential',
    );
    assert.deepEqual(reports, [{ method: 'POST', version: '1' }], 'one report, with the version the refused pool was built from');
    assert.equal(db.version, 2);
  } finally {
    await db.end();
    await f.close();
  }
});

test('reportRejected posts the version and returns the answer; refusals are VaultletErrors', async () => {
  const f = await fakeVaultlet((req, res, url) => {
    if (req.method !== 'POST') return send(res, 405, { error: 'only POST' });
    if (url.searchParams.get('version') === '7') return send(res, 200, { name: 'db', version: 7, replaced: false });
    return send(res, 503, { error: 'could not check the lease: vault unreachable' });
  });
  try {
    assert.deepEqual(await vaultlet.reportRejected('db', 7, { socket: f.path }), { name: 'db', version: 7, replaced: false });
    await assert.rejects(vaultlet.reportRejected('db', 8, { socket: f.path }), { code: 'NOT_READY', status: 503 });
    await assert.rejects(vaultlet.reportRejected('db', -1, { socket: f.path }), TypeError);
  } finally {
    await f.close();
  }
});

test('createPgPool gives up with TIMEOUT when the secret never arrives, and FORBIDDEN at once on 403', async () => {
  const { pg } = fakePg();
  const missing = join(dir, 'never.sock');
  await assert.rejects(createPgPool('db', { pg, socket: missing, timeoutMs: 400 }), (e) => {
    assert.equal(e.code, 'TIMEOUT');
    assert.match(e.message, /is vaultlet running\?/);
    return true;
  });
  const f = await fakeVaultlet((req, res) => send(res, 403, { error: 'caller is not allowed to use this socket' }));
  try {
    await assert.rejects(createPgPool('db', { pg, socket: f.path, timeoutMs: 1500 }), { code: 'FORBIDDEN' });
  } finally {
    await f.close();
  }
});

test('expectUid refuses a socket file owned by another uid and sends nothing', async () => {
  let requests = 0;
  const f = await fakeVaultlet((req, res) => {
    requests++;
    send(res, 200, { name: 'api', version: 1, data: { stripe_key: 'from-the-socket' } });
  });
  try {
    const me = process.getuid();
    const other = me === 0 ? 65534 : 0;
    await assert.rejects(getSecret('api', { socket: f.path, expectUid: other }), (e) => {
      assert.equal(e.code, 'WRONG_OWNER');
      assert.match(e.message, new RegExp(`owned by uid ${me}`));
      return true;
    });
    await assert.rejects(loadSecrets({ socket: f.path, expectUid: other }), { code: 'WRONG_OWNER' });
    await assert.rejects(waitUntilReady({ socket: f.path, expectUid: other, timeoutMs: 2000 }), { code: 'WRONG_OWNER' });
    assert.equal(requests, 0, 'nothing reached the server');
    const s = await getSecret('api', { socket: f.path, expectUid: me });
    assert.equal(s.data.stripe_key, 'from-the-socket');
    assert.equal(requests, 1);
  } finally {
    await f.close();
  }
});

test('expectUid refuses a socket in a directory anyone may write to', async () => {
  const { mkdirSync, chmodSync } = await import('node:fs');
  const open = join(dir, 'open');
  mkdirSync(open);
  chmodSync(open, 0o777);
  let requests = 0;
  const f = await fakeVaultlet((req, res) => {
    requests++;
    send(res, 200, { name: 'api', version: 1, data: {} });
  }, join(open, 'v.sock'));
  try {
    await assert.rejects(getSecret('api', { socket: f.path, expectUid: process.getuid() }), (e) => {
      assert.equal(e.code, 'WRONG_OWNER');
      assert.match(e.message, /writable by other users without the sticky bit/);
      return true;
    });
    assert.equal(requests, 0);
  } finally {
    await f.close();
  }
});
