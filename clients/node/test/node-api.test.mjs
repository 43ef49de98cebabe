// Smoke test of examples/node-api against the real stack: the example starts,
// reads its secrets from vaultlet and answers /whoami as the leased database user.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import http from 'node:http';

import { getSecret } from '../index.js';
import { REPO, Stack } from '../testing/stack.mjs';

const APP = join(REPO, 'examples/node-api');

let stack;
let daemon;

before(async () => {
  if (!existsSync(join(APP, 'node_modules/pg'))) {
    throw new Error('examples/node-api has no node_modules: run `npm ci --prefix examples/node-api` (scripts/test-node.sh does)');
  }
  stack = await Stack.up('api');
  // The bed's own AppRole, with the shipped least-privilege policy
  // (policies/vaultlet.hcl): database/creds/api and secret/data/api.
  daemon = await stack.vaultlet(
    'api',
    `[secret.db]
database = { role = "api" }

[secret.api]
kv = { path = "api" }
`,
  );
});

after(async () => {
  if (stack) await stack.down();
});

function get(port, path) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, timeout: 30000 }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(body) }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path} timed out`)));
    req.on('error', reject);
  });
}

test('examples/node-api serves /health and /whoami with the leased credential', async () => {
  // Started right away: the app waits for vaultlet to be ready by itself.
  const app = spawn(process.execPath, ['server.js'], {
    cwd: APP,
    env: {
      PATH: process.env.PATH,
      PGHOST: stack.env.PGHOST,
      PGPORT: stack.env.PGPORT,
      PGDATABASE: stack.env.PGDATABASE,
      VAULTLET_SOCKET: daemon.socket,
      PORT: '0',
      HOST: '127.0.0.1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  app.stdout.on('data', (c) => (out += c));
  app.stderr.on('data', (c) => (out += c));
  const exited = new Promise((r) => app.on('exit', (code, signal) => r({ code, signal })));
  try {
    const port = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`node-api did not start within 60 s:\n${out}`)), 60000);
      const check = () => {
        const m = out.match(/listening on http:\/\/[^:]+:(\d+)/);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      };
      app.stdout.on('data', check);
      exited.then(({ code }) => reject(new Error(`node-api exited (${code}):\n${out}`)));
    });

    const health = await get(port, '/health');
    assert.equal(health.status, 200);
    assert.deepEqual(health.body, { status: 'ok', secrets: ['api', 'db'], payments: true });

    const who = await get(port, '/whoami');
    assert.equal(who.status, 200);
    const db = await getSecret('db', { socket: daemon.socket });
    assert.equal(who.body.current_user, db.data.username);
    assert.match(who.body.current_user, /^v-approle-api-/);
    assert.equal(who.body.database, 'app');

    assert.equal((await get(port, '/nope')).status, 404);
    assert.ok(!out.includes(db.data.password), 'the app never prints the password');
    assert.ok(!out.includes('sk_test_demo123'), 'the app never prints the API key');
  } finally {
    app.kill('SIGTERM');
    const { code } = await exited;
    assert.equal(code, 0, `node-api exit: ${out}`);
  }
});
