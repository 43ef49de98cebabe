// Test support: the real stack for the client's tests. One test bed per test
// file (scripts/testbed.sh: real OpenBao + PostgreSQL on loopback), AppRoles and
// database roles made with the bao CLI, and vaultlet processes started from the
// binary (VAULTLET_BIN, default target/debug/vaultlet; this builds nothing).
//
// Kept outside test/ so `node --test clients/node/test/` does not run it as a test.

import { spawn, spawnSync, execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const VAULTLET_BIN = process.env.VAULTLET_BIN || join(REPO, 'target/debug/vaultlet');
const TESTBED = join(REPO, 'scripts/testbed.sh');

// The statements scripts/demo.sh uses: a login role valid until the lease's
// expiration; revocation terminates its sessions and drops it.
export const CREATION_STATEMENTS =
  'CREATE ROLE "{{name}}" WITH LOGIN PASSWORD \'{{password}}\' VALID UNTIL \'{{expiration}}\'; GRANT CONNECT ON DATABASE app TO "{{name}}";';
export const REVOCATION_STATEMENTS =
  'REVOKE ALL ON DATABASE app FROM "{{name}}"; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = \'{{name}}\'; DROP ROLE IF EXISTS "{{name}}";';

/** Environment without the caller's Vault/OpenBao/libpq settings. */
function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(VAULT_|BAO_|PG|VAULTLET_)/.test(k)) env[k] = v;
  }
  return { ...env, ...extra };
}

function run(file, args, opts = {}) {
  return new Promise((resolvePromise, reject) => {
    const child = execFile(file, args, { maxBuffer: 16 * 1024 * 1024, timeout: opts.timeout ?? 60000, env: opts.env }, (err, stdout, stderr) => {
      if (err) {
        err.message = `${file} ${args.join(' ')} failed: ${err.message}\n${stderr}`;
        reject(err);
      } else {
        resolvePromise(stdout);
      }
    });
    if (opts.input !== undefined) child.stdin.end(opts.input);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Everything started here, for the synchronous last-resort cleanup on exit.
const live = { beds: new Set(), pids: new Set() };
function cleanupSync() {
  for (const pid of live.pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  }
  live.pids.clear();
  for (const dir of live.beds) spawnSync(TESTBED, ['down', dir], { stdio: 'ignore' });
  live.beds.clear();
}
process.once('exit', cleanupSync);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    cleanupSync();
    process.exit(130);
  });
}

export class Stack {
  /** Starts a test bed in a fresh temporary directory. */
  static async up(label) {
    if (!existsSync(VAULTLET_BIN)) {
      throw new Error(`vaultlet binary not found at ${VAULTLET_BIN}: run \`cargo build\` first, or set VAULTLET_BIN`);
    }
    const parent = mkdtempSync(join(tmpdir(), `vaultlet-node-${label}-`));
    chmodSync(parent, 0o711);
    const dir = join(parent, 'bed');
    live.beds.add(dir);
    const stack = new Stack(parent, dir);
    const child = spawn(TESTBED, ['up', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => (out += c));
    child.stderr.on('data', (c) => (err += c));
    const code = await new Promise((r) => child.on('close', r));
    if (code !== 0) {
      // `up` stops what it started when it fails; `down` again in case it
      // could not (it is safe on a half-started bed).
      await new Promise((r) => spawn(TESTBED, ['down', dir], { stdio: 'ignore' }).on('close', r));
      live.beds.delete(dir);
      rmSync(parent, { recursive: true, force: true });
      throw new Error(`scripts/testbed.sh up failed (exit ${code}):\n${err}`);
    }
    for (const line of out.split('\n')) {
      const i = line.indexOf('=');
      if (i > 0) stack.env[line.slice(0, i)] = line.slice(i + 1);
    }
    return stack;
  }

  constructor(parent, dir) {
    this.parent = parent;
    this.dir = dir;
    this.env = {};
    this.daemons = [];
  }

  get pg() {
    return { host: this.env.PGHOST, port: Number(this.env.PGPORT), database: this.env.PGDATABASE };
  }

  /** Runs the bao CLI with the root token; resolves stdout. */
  bao(...args) {
    return run(this.env.BAO_BIN, args, { env: cleanEnv({ BAO_ADDR: this.env.BAO_ADDR, BAO_TOKEN: this.env.BAO_TOKEN }) });
  }

  /** A short-lived PostgreSQL role on database/ (statements as in scripts/demo.sh). */
  async dbRole(name, ttl, maxTtl) {
    await this.bao(
      'write',
      `database/roles/${name}`,
      'db_name=pg',
      `default_ttl=${ttl}`,
      `max_ttl=${maxTtl}`,
      `creation_statements=${CREATION_STATEMENTS}`,
      `revocation_statements=${REVOCATION_STATEMENTS}`,
    );
  }

  /** A policy named `name` and an AppRole of the same name; returns its role_id/secret_id files. */
  async approle(name, policy) {
    const dir = this.workDir(`approle-${name}`);
    const policyFile = join(dir, 'policy.hcl');
    writeFileSync(policyFile, policy);
    await this.bao('policy', 'write', name, policyFile);
    await this.bao('write', `auth/approle/role/${name}`, `token_policies=${name}`, 'token_ttl=1h', 'token_max_ttl=4h');
    const roleId = (await this.bao('read', '-field=role_id', `auth/approle/role/${name}/role-id`)).trim();
    const secretId = (await this.bao('write', '-f', '-field=secret_id', `auth/approle/role/${name}/secret-id`)).trim();
    const roleIdFile = join(dir, 'role_id');
    const secretIdFile = join(dir, 'secret_id');
    writeFileSync(roleIdFile, roleId, { mode: 0o600 });
    writeFileSync(secretIdFile, secretId, { mode: 0o600 });
    return { roleIdFile, secretIdFile };
  }

  /** The bed's own AppRole (policy policies/vaultlet.hcl: database/creds/api, secret/data/api, kv/api). */
  get bedApprole() {
    return { roleIdFile: this.env.ROLE_ID_FILE, secretIdFile: this.env.SECRET_ID_FILE };
  }

  workDir(name) {
    const d = join(this.parent, name);
    mkdirSync(d, { recursive: true, mode: 0o711 });
    return d;
  }

  /**
   * Writes a vaultlet config (vault + approle + socket, then `body`) and runs
   * `vaultlet run`. `socketExtra` goes into the [socket] table.
   */
  async vaultlet(name, body, { approle, socketExtra = '', socket } = {}) {
    const dir = this.workDir(`vaultlet-${name}`);
    const creds = approle || this.bedApprole;
    const sock = socket || join(dir, 'vaultlet.sock');
    const config = `[vault]
address = "${this.env.BAO_ADDR}"
request_timeout = "3s"
connect_timeout = "1s"

[auth.approle]
role_id_file = "${creds.roleIdFile}"
secret_id_file = "${creds.secretIdFile}"

[socket]
path = "${sock}"
${socketExtra}

${body}
`;
    const configFile = join(dir, 'vaultlet.toml');
    writeFileSync(configFile, config);
    const d = new Daemon(configFile, sock, join(dir, 'vaultlet.log'));
    d.start();
    this.daemons.push(d);
    return d;
  }

  /** Stops every vaultlet (SIGTERM) and the bed. */
  async down() {
    await Promise.all(this.daemons.map((d) => d.stop()));
    await new Promise((r) => spawn(TESTBED, ['down', this.dir], { stdio: 'ignore' }).on('close', r));
    live.beds.delete(this.dir);
    rmSync(this.parent, { recursive: true, force: true });
  }
}

export class Daemon {
  constructor(configFile, socket, logFile) {
    this.configFile = configFile;
    this.socket = socket;
    this.logFile = logFile;
    this.child = null;
  }

  start() {
    const fd = openSync(this.logFile, 'a');
    this.child = spawn(VAULTLET_BIN, ['--log', 'debug', 'run', '-c', this.configFile], {
      stdio: ['ignore', 'ignore', fd],
      env: cleanEnv(),
    });
    closeSync(fd);
    live.pids.add(this.child.pid);
    const child = this.child;
    this.exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
    this.exited.then(() => live.pids.delete(child.pid));
  }

  log() {
    try {
      return readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  /** SIGTERM, wait up to 30 s, then SIGKILL. */
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return this.exited;
    child.kill('SIGTERM');
    let timer;
    const done = await Promise.race([this.exited, new Promise((r) => (timer = setTimeout(r, 30000, null)))]);
    clearTimeout(timer);
    if (done) return done;
    child.kill('SIGKILL');
    return this.exited;
  }

  async restart() {
    await this.stop();
    this.start();
  }
}

/** Polls `fn` until it returns a truthy value (the deadline is generous: a loaded machine is slow, not wrong). */
export async function eventually(what, fn, { timeoutMs = 60000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    await sleep(intervalMs);
  }
  throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (last error: ${last.message})` : ''}`);
}

export { sleep };
