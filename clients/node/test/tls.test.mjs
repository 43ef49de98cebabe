// serveTls against the real stack: OpenBao's PKI engine (scripts/testbed.sh
// mounts pki/ with role internal) and vaultlet. One https server, never
// restarted, across re-issues of a 12 s certificate.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { readFileSync } from 'node:fs';

import { serveTls } from '../index.js';
import { Stack, sleep } from '../testing/stack.mjs';

const POLICY = `
path "pki/issue/internal" { capabilities = ["update"] }
`;

let stack;
let daemon;

before(async () => {
  stack = await Stack.up('tls');
  const approle = await stack.approle('t_node_tls', POLICY);
  daemon = await stack.vaultlet(
    'tls',
    `[secret.tls]
pki = { role = "internal", common_name = "localhost", ip_sans = ["127.0.0.1"], ttl = "12s" }
`,
    { approle },
  );
});

after(async () => {
  await stack?.down();
});

function get(port, ca, agent) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, servername: 'localhost', ca, agent, path: '/' }, (res) => {
      const serial = res.socket.getPeerCertificate().serialNumber;
      const localPort = res.socket.localPort;
      res.resume();
      res.on('end', () => resolve({ serial, localPort, status: res.statusCode }));
    });
    req.setTimeout(10000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

test('an https server swaps its certificate live across re-issues: 0 failed handshakes, no restart, open connections kept', async () => {
  const server = https.createServer({}, (req, res) => res.end('ok\n'));
  const serving = await serveTls(server, 'tls', { socket: daemon.socket, timeoutMs: 60000 });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  const ca = readFileSync(stack.env.PKI_CA_FILE);
  const keep = new https.Agent({ keepAlive: true, maxSockets: 1 });
  const first = await get(port, ca, keep);
  const serials = [];
  const failures = [];
  let handshakes = 0;
  const keptPorts = new Set([first.localPort]);
  const t0 = Date.now();
  // Until four re-issues over two lifetimes at least; two minutes at most.
  while (Date.now() - t0 < 120000 && !(serials.length >= 5 && Date.now() - t0 > 24000)) {
    const t = Date.now();
    handshakes++;
    try {
      const r = await get(port, ca, false); // a new connection: a full handshake
      if (serials.at(-1) !== r.serial) serials.push(r.serial);
      const k = await get(port, ca, keep); // the connection opened before the first swap
      keptPorts.add(k.localPort);
    } catch (err) {
      failures.push(`${Date.now() - t0}ms: ${err.message}`);
    }
    await sleep(Math.max(0, 100 - (Date.now() - t)));
  }
  serving.close();
  keep.destroy();
  await new Promise((r) => server.close(r));
  console.log(`  serveTls: ${handshakes} handshakes, ${failures.length} failed, ${serials.length} certificates served, version ${serving.version}, kept connection ports ${[...keptPorts].join(',')}`);
  assert.deepEqual(failures, []);
  assert.ok(serials.length >= 4, `served serials: ${serials}`);
  assert.ok(serving.version >= 4, `version ${serving.version}`);
  assert.equal(keptPorts.size, 1, 'the keep-alive connection opened before the swaps was never dropped');
});
