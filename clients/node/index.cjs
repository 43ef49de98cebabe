'use strict';
// vaultlet client for Node.js: reads secrets from the vaultlet sidecar over its
// Unix socket (HTTP/1.1 + JSON), follows changes with long-polling, and keeps a
// node-postgres pool on the current database credential.
//
// No runtime dependencies. `pg` is only used by createPgPool, and the caller
// passes it in.

const fs = require('node:fs');
const http = require('node:http');
const nodePathMod = require('node:path');

const DEFAULT_SOCKET = '/run/vaultlet/vaultlet.sock';
const DEFAULT_TIMEOUT_MS = 5000;
const DEFAULT_READY_TIMEOUT_MS = 30000;
const DEFAULT_POLL_WAIT_MS = 30000;
const MAX_POLL_WAIT_MS = 300000;
const MAX_BODY_BYTES = 8 * 1024 * 1024;

class VaultletError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {object} [extra] status, reason, reasons, secret, socket, cause
   */
  constructor(code, message, extra = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'VaultletError';
    this.code = code;
    if (extra.status !== undefined) this.status = extra.status;
    if (extra.reason !== undefined) this.reason = extra.reason;
    if (extra.reasons !== undefined) this.reasons = extra.reasons;
    if (extra.secret !== undefined) this.secret = extra.secret;
    if (extra.socket !== undefined) this.socket = extra.socket;
  }
}

function socketPath(opts) {
  return (opts && opts.socket) || process.env.VAULTLET_SOCKET || DEFAULT_SOCKET;
}

function whoami() {
  const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
  const gid = typeof process.getgid === 'function' ? process.getgid() : undefined;
  return { uid, gid };
}

function positive(n, fallback) {
  return typeof n === 'number' && Number.isFinite(n) && n > 0 ? n : fallback;
}

function checkName(name) {
  if (typeof name !== 'string' || name === '') {
    throw new TypeError('vaultlet: a secret name (non-empty string) is required');
  }
}

// ------------------------------------------------------------------ transport

/** Maps a connection-level error to a VaultletError. */
function connectionError(err, socket) {
  if (err instanceof VaultletError) return err;
  switch (err && err.code) {
    case 'ENOENT':
    case 'ENOTDIR':
      return new VaultletError(
        'ENOSOCKET',
        `vaultlet socket ${socket} does not exist: is vaultlet running? check VAULTLET_SOCKET`,
        { socket, cause: err },
      );
    case 'ECONNREFUSED':
      return new VaultletError(
        'ENOSOCKET',
        `nothing is listening on vaultlet socket ${socket}: is vaultlet running? check VAULTLET_SOCKET`,
        { socket, cause: err },
      );
    case 'EACCES':
    case 'EPERM': {
      const { uid, gid } = whoami();
      return new VaultletError(
        'EACCES',
        `permission denied connecting to vaultlet socket ${socket} as uid ${uid} (gid ${gid}): ` +
          `give this user access to the socket (socket.mode and the socket's group, or systemd ` +
          `SupplementaryGroups=), and put { uid = ${uid} } on socket.allow in vaultlet's configuration`,
        { socket, cause: err },
      );
    }
    case 'ECONNRESET':
    case 'EPIPE':
      return new VaultletError('ECONNRESET', `vaultlet closed the connection on ${socket} before answering`, {
        socket,
        cause: err,
      });
    default:
      return new VaultletError('EPROTO', `request to vaultlet on ${socket} failed: ${(err && err.message) || err}`, {
        socket,
        cause: err,
      });
  }
}

/** Maps a non-2xx answer to a VaultletError. */
function statusError(status, body, socket, secret) {
  const said = body && typeof body.error === 'string' ? body.error : undefined;
  const extra = { status, socket, secret };
  switch (status) {
    case 403: {
      const { uid, gid } = whoami();
      // vaultlet refuses either the whole socket (socket.allow) or one name:
      // a secret whose own allow list leaves this process out, or a name it
      // does not have (it answers both alike, so callers cannot list names).
      const perSecret = secret !== undefined && said !== undefined && /readable by uid|may not read/.test(said);
      return new VaultletError(
        'FORBIDDEN',
        perSecret
          ? `vaultlet on ${socket} does not let this process (uid ${uid}, gid ${gid}) read "${secret}": ` +
              `check that [secret.${secret}] is in vaultlet's configuration, and ` +
              `add { uid = ${uid} } to secret.${secret}.allow there`
          : `vaultlet on ${socket} refused this process (uid ${uid}, gid ${gid}): ` +
              `add { uid = ${uid} } (or { gid = ${gid} }) to socket.allow in vaultlet's configuration`,
        { ...extra, reason: said },
      );
    }
    case 429: {
      const { uid } = whoami();
      return new VaultletError(
        'RATE_LIMITED',
        `vaultlet on ${socket} is refusing uid ${uid} for a while after repeated denials (403): ` +
          `fix the allow list, then retry`,
        { ...extra, reason: said },
      );
    }
    // vaultlet answers an unknown secret name with 403 (above); 404 is an
    // unknown route, or an unknown name from an older vaultlet.
    case 404:
      return new VaultletError(
        'NOT_FOUND',
        secret !== undefined
          ? `vaultlet has no secret named "${secret}" (names are the [secret.NAME] tables of its configuration)`
          : `vaultlet: ${said || 'not found'}`,
        { ...extra, reason: said },
      );
    case 503: {
      if (body && Array.isArray(body.reasons)) {
        const list = body.reasons.map((r) => `${r.secret}: ${r.reason}`).join('; ');
        return new VaultletError('NOT_READY', `vaultlet is not ready: ${list || 'no reason given'}`, {
          ...extra,
          reasons: body.reasons,
          reason: list,
        });
      }
      const what = secret !== undefined ? `secret "${secret}" is not available` : 'vaultlet is not ready';
      return new VaultletError('NOT_READY', `${what}: ${said || 'no reason given'}`, { ...extra, reason: said });
    }
    case 400:
      return new VaultletError('BAD_REQUEST', `vaultlet rejected the request: ${said || 'bad request'}`, {
        ...extra,
        reason: said,
      });
    default:
      return new VaultletError('EPROTO', `unexpected answer from vaultlet: HTTP ${status}${said ? `: ${said}` : ''}`, {
        ...extra,
        reason: said,
      });
  }
}

/**
 * One GET on the socket. Resolves {status, headers, body} for any HTTP status;
 * rejects with a VaultletError for connection problems, timeouts, aborts and
 * unreadable answers. Always settles within timeoutMs.
 */
/**
 * `expectUid`: Node cannot read the server's SO_PEERCRED (as `vaultlet get
 * --expect-uid` does), so this checks the socket file before connecting: it
 * must be a socket owned by `expectUid`, in a directory other users cannot
 * write to (or a sticky one owned by `expectUid` or root). That proves the
 * file at the path was put there by `expectUid` (or root) and that nobody
 * else could have swapped it since. It does not prove which process listens
 * on it (that uid could hand the socket to another process), and it checks
 * only the socket's own directory, not the directories above it. Throws
 * WRONG_OWNER before anything is sent.
 */
function checkOwner(socket, expectUid) {
  if (expectUid === undefined || expectUid === null) return;
  let st;
  let dir;
  const dirname = nodePathMod.dirname(socket);
  try {
    st = fs.lstatSync(socket);
    dir = fs.statSync(dirname);
  } catch {
    return; // missing: connecting reports it
  }
  const refuse = (why) => {
    throw new VaultletError('WRONG_OWNER', `${why}; request not sent (expectUid ${expectUid})`, { socket });
  };
  if (!st.isSocket()) refuse(`${socket} is not a socket`);
  if (st.uid !== expectUid) refuse(`${socket} is owned by uid ${st.uid}`);
  if (dir.mode & 0o002) {
    if (!(dir.mode & 0o1000)) refuse(`${dirname} is writable by other users without the sticky bit`);
    if (dir.uid !== expectUid && dir.uid !== 0) refuse(`${dirname} is writable by other users and owned by uid ${dir.uid}`);
  }
}

function request(path, { socket, timeoutMs, signal, expectUid, method = 'GET' }) {
  checkOwner(socket, expectUid);
  return new Promise((resolve, reject) => {
    let settled = false;
    let req;
    const finish = (err, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (signal) signal.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(value);
    };
    const fail = (err) => {
      finish(err);
      if (req) req.destroy();
    };
    const timer = setTimeout(() => {
      fail(new VaultletError('TIMEOUT', `vaultlet on ${socket} did not answer ${method} ${path} within ${timeoutMs} ms`, { socket }));
    }, timeoutMs);
    const onAbort = () => fail(new VaultletError('ABORTED', 'request aborted', { socket }));
    if (signal) {
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
    }
    req = http.request(
      {
        socketPath: socket,
        path,
        method,
        agent: false,
        headers: { accept: 'application/json', host: 'vaultlet', ...(method === 'GET' ? {} : { 'content-length': '0' }) },
      },
      (res) => {
        const chunks = [];
        let size = 0;
        res.on('data', (c) => {
          size += c.length;
          if (size > MAX_BODY_BYTES) {
            fail(new VaultletError('EPROTO', `answer from vaultlet on ${socket} is larger than ${MAX_BODY_BYTES} bytes`, { socket }));
          } else {
            chunks.push(c);
          }
        });
        res.on('error', (e) => fail(connectionError(e, socket)));
        res.on('close', () => {
          if (!res.complete) fail(connectionError(Object.assign(new Error('aborted'), { code: 'ECONNRESET' }), socket));
        });
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body = null;
          if (text !== '') {
            try {
              body = JSON.parse(text);
            } catch {
              return finish(
                new VaultletError('EPROTO', `answer from vaultlet on ${socket} is not JSON (HTTP ${res.statusCode})`, {
                  socket,
                  status: res.statusCode,
                }),
              );
            }
          }
          finish(null, { status: res.statusCode, headers: res.headers, body });
        });
      },
    );
    req.on('error', (e) => fail(connectionError(e, socket)));
    req.end();
  });
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal && signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      if (signal) signal.removeEventListener('abort', done);
      resolve();
    }
    if (signal) signal.addEventListener('abort', done, { once: true });
  });
}

/** Capped exponential backoff with jitter: half fixed, half random. */
function backoffDelay(attempt, minMs, maxMs) {
  const d = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(d / 2 + Math.random() * (d / 2));
}

/** Default error reporter: a process warning, the same message at most once a minute. */
function warner(prefix, code) {
  const seen = new Map();
  return (err) => {
    const msg = `${prefix}: ${(err && err.message) || err}`;
    const now = Date.now();
    if (now - (seen.get(msg) || -Infinity) < 60000) return;
    if (seen.size > 100) seen.clear();
    seen.set(msg, now);
    process.emitWarning(msg, { code });
  };
}

// Errors that waiting or retrying will not fix by themselves.
const PERMANENT = new Set(['FORBIDDEN', 'RATE_LIMITED', 'EACCES', 'NOT_FOUND', 'BAD_REQUEST', 'WRONG_OWNER']);

function timeoutError(what, timeoutMs, last, socket) {
  const because = last ? `: ${last.message}` : '';
  return new VaultletError('TIMEOUT', `${what} within ${timeoutMs} ms${because}`, {
    socket,
    cause: last,
    reason: last && last.reason,
    reasons: last && last.reasons,
  });
}

// ------------------------------------------------------------------ API

/**
 * Waits until vaultlet holds every configured secret (GET /v1/ready = 200).
 * Keeps trying while the socket is missing (vaultlet starting) or vaultlet
 * answers 503; fails at once on 403 / permission denied.
 */
async function waitUntilReady(opts = {}) {
  const socket = socketPath(opts);
  const timeoutMs = positive(opts.timeoutMs, DEFAULT_READY_TIMEOUT_MS);
  const intervalMs = positive(opts.intervalMs, 200);
  const deadline = Date.now() + timeoutMs;
  let last;
  for (let attempt = 0; ; attempt++) {
    const left = deadline - Date.now();
    if (left <= 0) throw timeoutError('vaultlet was not ready', timeoutMs, last, socket);
    try {
      const res = await request('/v1/ready', { socket, expectUid: opts.expectUid, timeoutMs: Math.min(left, DEFAULT_TIMEOUT_MS), signal: opts.signal });
      if (res.status === 200) return { ready: true };
      last = statusError(res.status, res.body, socket);
      if (PERMANENT.has(last.code)) throw last;
    } catch (err) {
      if (err.code === 'ABORTED' || PERMANENT.has(err.code)) throw err;
      last = err.code === 'TIMEOUT' && last ? last : err;
    }
    await sleep(Math.min(Math.max(0, deadline - Date.now()), backoffDelay(attempt, intervalMs, 2000)), opts.signal);
  }
}

/**
 * GET /v1/secrets/{name} → {name, version, data, lease?}.
 * With {waitUntilReady: true}, waits (long-poll) up to timeoutMs for the
 * secret to become available, also while vaultlet is still starting.
 */
async function getSecret(name, opts = {}) {
  checkName(name);
  const socket = socketPath(opts);
  const path = `/v1/secrets/${encodeURIComponent(name)}`;
  if (!opts.waitUntilReady) {
    const res = await request(path, { socket, expectUid: opts.expectUid, timeoutMs: positive(opts.timeoutMs, DEFAULT_TIMEOUT_MS), signal: opts.signal });
    if (res.status === 200) return res.body;
    throw statusError(res.status, res.body, socket, name);
  }
  const timeoutMs = positive(opts.timeoutMs, DEFAULT_READY_TIMEOUT_MS);
  const deadline = Date.now() + timeoutMs;
  let last;
  for (let attempt = 0; ; attempt++) {
    const left = deadline - Date.now();
    if (left <= 0) throw timeoutError(`secret "${name}" was not available`, timeoutMs, last, socket);
    try {
      const res = await request(`${path}?wait=${Math.max(1, Math.floor(left))}ms`, {
        socket,
        expectUid: opts.expectUid,
        timeoutMs: left + 2000,
        signal: opts.signal,
      });
      if (res.status === 200) return res.body;
      last = statusError(res.status, res.body, socket, name);
      if (PERMANENT.has(last.code)) throw last;
    } catch (err) {
      if (err.code === 'ABORTED' || PERMANENT.has(err.code)) throw err;
      last = err;
    }
    await sleep(Math.min(Math.max(0, deadline - Date.now()), backoffDelay(attempt, 100, 2000)), opts.signal);
  }
}

// A report waits for vaultlet to check the lease and, if it is gone, for the
// replacement to be issued (vaultlet gives up after 15 s).
const DEFAULT_REPORT_TIMEOUT_MS = 20000;

/**
 * POST /v1/secrets/{name}/rejected?version=N: tells vaultlet that the database
 * refused the credential of `version`. vaultlet looks the lease up at once and
 * replaces it if Vault no longer knows it. Resolves { name, version, replaced }:
 * the version to use now (`replaced` is true when it is another credential).
 */
async function reportRejected(name, version, opts = {}) {
  checkName(name);
  if (!Number.isSafeInteger(version) || version < 0) {
    throw new TypeError('vaultlet: reportRejected needs the version number the credential came with');
  }
  const socket = socketPath(opts);
  const path = `/v1/secrets/${encodeURIComponent(name)}/rejected?version=${version}`;
  const res = await request(path, {
    socket,
    method: 'POST',
    timeoutMs: positive(opts.timeoutMs, DEFAULT_REPORT_TIMEOUT_MS),
    signal: opts.signal,
    expectUid: opts.expectUid,
  });
  if (res.status === 200) return res.body;
  throw statusError(res.status, res.body, socket, name);
}

/**
 * GET /v1/secrets → { [name]: data }. Throws NOT_READY naming every secret
 * vaultlet does not hold, unless {partial: true}. With {waitUntilReady: true}
 * it first waits (up to timeoutMs) for vaultlet to hold them all.
 */
async function loadSecrets(opts = {}) {
  const socket = socketPath(opts);
  if (opts.waitUntilReady) await waitUntilReady(opts);
  const res = await request('/v1/secrets', {
    socket,
    expectUid: opts.expectUid,
    timeoutMs: positive(opts.waitUntilReady ? undefined : opts.timeoutMs, DEFAULT_TIMEOUT_MS),
    signal: opts.signal,
  });
  if (res.status !== 200) throw statusError(res.status, res.body, socket);
  const body = res.body || {};
  const unavailable = body.unavailable || {};
  const names = Object.keys(unavailable);
  if (names.length && !opts.partial) {
    const reasons = names.map((secret) => ({ secret, reason: unavailable[secret] }));
    throw new VaultletError(
      'NOT_READY',
      `vaultlet does not hold every secret yet: ${reasons.map((r) => `${r.secret}: ${r.reason}`).join('; ')}`,
      { status: 200, socket, reasons, reason: reasons.map((r) => `${r.secret}: ${r.reason}`).join('; ') },
    );
  }
  const out = {};
  for (const [name, doc] of Object.entries(body.secrets || {})) out[name] = doc.data;
  return out;
}

function formatWait(ms) {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

/**
 * Follows one secret: calls `callback(secret)` once it is available and again
 * on every new version (an async callback is awaited before the next one).
 * Long-polls GET /v1/secrets/{name}?wait=…&after=…; while vaultlet is down or
 * unreachable, retries with capped exponential backoff and jitter. Returns
 * {close(), current}.
 */
function watch(name, callback, opts = {}) {
  checkName(name);
  if (typeof callback !== 'function') throw new TypeError('vaultlet: watch(name, callback) needs a callback function');
  const socket = socketPath(opts);
  const waitMs = Math.min(MAX_POLL_WAIT_MS, Math.max(1000, Math.round(positive(opts.pollWaitMs, DEFAULT_POLL_WAIT_MS))));
  const minBackoffMs = positive(opts.minBackoffMs, 250);
  const maxBackoffMs = Math.max(minBackoffMs, positive(opts.maxBackoffMs, 10000));
  const path = `/v1/secrets/${encodeURIComponent(name)}`;
  const stop = new AbortController();
  let current;
  let delivered; // "version\0data" of the last secret handed to the callback
  let fresh = true; // true after start or an error: ask without `after`
  const reportError = typeof opts.onError === 'function' ? opts.onError : warner(`vaultlet watch("${name}")`, 'VAULTLET_WATCH');
  const report = (err) => {
    try {
      reportError(err);
    } catch {
      // an onError that throws must not stop the watcher
    }
  };

  (async () => {
    let attempt = 0;
    while (!stop.signal.aborted) {
      const q = fresh || !current ? `?wait=${formatWait(waitMs)}` : `?wait=${formatWait(waitMs)}&after=${current.version}`;
      const started = Date.now();
      let changed = false;
      try {
        const res = await request(path + q, { socket, expectUid: opts.expectUid, timeoutMs: waitMs + 10000, signal: stop.signal });
        if (res.status === 200 && res.body && typeof res.body.version === 'number') {
          attempt = 0;
          fresh = false;
          const key = `${res.body.version}\0${JSON.stringify(res.body.data)}`;
          if (key !== delivered) {
            delivered = key;
            current = res.body;
            changed = true;
            try {
              await callback(res.body);
            } catch (err) {
              report(err);
            }
          }
        } else if (res.status === 503) {
          // Not available within the wait: ask again (vaultlet keeps the last
          // good secret; this means it has none yet, or the lease ended).
          attempt = 0;
        } else {
          throw statusError(res.status, res.body, socket, name);
        }
      } catch (err) {
        if (stop.signal.aborted) break;
        fresh = true;
        report(err);
        await sleep(backoffDelay(attempt++, PERMANENT.has(err.code) ? Math.max(minBackoffMs, 1000) : minBackoffMs, maxBackoffMs), stop.signal);
        continue;
      }
      // A server that ignores `wait` (or a secret that keeps flapping) must not
      // turn this into a busy loop.
      if (!changed && Date.now() - started < 500) await sleep(1000, stop.signal);
    }
  })();

  return {
    close() {
      stop.abort();
    },
    get current() {
      return current;
    },
    get closed() {
      return stop.signal.aborted;
    },
  };
}

// ------------------------------------------------------------------ TLS

/** `{ cert, key }` for tls.createSecureContext from a PKI secret's data. */
function tlsContextOf(secret, name) {
  const d = (secret && secret.data) || {};
  if (typeof d.certificate !== 'string' || typeof d.private_key !== 'string') {
    throw new TypeError(`vaultlet: secret "${name}" has no certificate/private_key (is it a pki secret?)`);
  }
  // The leaf first, then the chain up to the CA, as TLS sends it.
  const chain = typeof d.ca_chain === 'string' && d.ca_chain && !d.ca_chain.includes(d.certificate.trim()) ? `\n${d.ca_chain}` : '';
  return { cert: `${d.certificate.trim()}${chain}\n`, key: d.private_key };
}

/**
 * Gives a tls.Server or https.Server its certificate from PKI secret `name`
 * and swaps it live with server.setSecureContext() on every new version: no
 * restart; connections already open keep the context they started with.
 * Resolves once the first certificate is in place (listen after that).
 */
async function serveTls(server, name, opts = {}) {
  checkName(name);
  if (!server || typeof server.setSecureContext !== 'function') {
    throw new TypeError('vaultlet: serveTls(server, name) needs a tls.Server or https.Server');
  }
  const timeoutMs = positive(opts.timeoutMs, 30000);
  let settle;
  const first = new Promise((resolve, reject) => (settle = { resolve, reject }));
  let version;
  const w = watch(
    name,
    (secret) => {
      server.setSecureContext({ ...(opts.secureContext || {}), ...tlsContextOf(secret, name) });
      version = secret.version;
      settle.resolve();
      if (typeof opts.onUpdate === 'function') opts.onUpdate(secret);
    },
    opts,
  );
  const timer = setTimeout(() => settle.reject(timeoutError(`certificate "${name}"`, timeoutMs, undefined, socketPath(opts))), timeoutMs);
  try {
    await first;
  } catch (err) {
    w.close();
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return {
    close() {
      w.close();
    },
    get version() {
      return version;
    },
    get closed() {
      return w.closed;
    },
  };
}

// ------------------------------------------------------------------ PostgreSQL

function loadPg() {
  const { createRequire } = require('node:module');
  const nodePath = require('node:path');
  try {
    // Prefer the application's own pg (resolved from the working directory).
    return createRequire(nodePath.join(process.cwd(), 'index.js'))('pg');
  } catch {
    try {
      return require('pg');
    } catch {
      throw new TypeError("vaultlet: createPgPool needs node-postgres: pass it as { pg: require('pg') }");
    }
  }
}

// Errors raised while logging in, before any query was sent: safe to retry.
const LOGIN_FAILURES = new Set(['28P01', '28000']);

/**
 * A node-postgres pool that follows database secret `name`: built from its
 * current username/password (host, port, database… from poolOptions), and
 * replaced when vaultlet publishes a new credential. New queries go to the new
 * pool at once; the old pool is drained (checked-out clients finish, idle ones
 * are closed). Resolves once the first pool exists.
 */
async function createPgPool(name, opts = {}) {
  checkName(name);
  const pg = opts.pg || loadPg();
  const Pool = pg.Pool || (pg.default && pg.default.Pool);
  if (typeof Pool !== 'function') throw new TypeError('vaultlet: opts.pg must be the node-postgres module (with .Pool)');
  const socket = socketPath(opts);
  const poolOptions = opts.poolOptions || {};
  const credentials =
    typeof opts.credentials === 'function' ? opts.credentials : (data) => ({ user: data.username, password: data.password });
  const timeoutMs = positive(opts.timeoutMs, DEFAULT_READY_TIMEOUT_MS);
  const onRotate = typeof opts.onRotate === 'function' ? opts.onRotate : undefined;
  const onError = typeof opts.onError === 'function' ? opts.onError : warner(`vaultlet createPgPool("${name}")`, 'VAULTLET_PG');

  let pool;
  let version;
  let user;
  let ended = false;
  const retired = new Set(); // replaced pools not fully ended yet
  const ending = new Map(); // pool → promise of its end()

  const build = (secret) => {
    const creds = credentials(secret.data);
    const p = new Pool({ ...poolOptions, ...creds });
    // An idle client killed by the server (e.g. the old credential revoked)
    // emits 'error' on the pool; without a listener that would crash the app.
    p.on('error', (err) => onError(err));
    return { p, user: creds.user };
  };

  const endPool = (p) => {
    if (!ending.has(p)) {
      ending.set(p, p.end().catch((err) => onError(err)));
    }
    return ending.get(p);
  };

  const drain = async (old) => {
    retired.add(old);
    // pg-pool never serves requests still queued when end() is called: let the
    // queue empty first (new requests already go to the new pool).
    while (old.waitingCount > 0 && !ended) await sleep(20);
    await endPool(old);
    retired.delete(old);
    ending.delete(old);
  };

  const swap = (secret) => {
    if (ended) return;
    if (pool && secret.version === version && credentials(secret.data).user === user) return;
    const previous = { pool, version, user };
    const next = build(secret);
    pool = next.p;
    version = secret.version;
    user = next.user;
    if (previous.pool) {
      drain(previous.pool);
      if (onRotate) {
        try {
          onRotate({ name, version, previousVersion: previous.version, user, previousUser: previous.user });
        } catch (err) {
          onError(err);
        }
      }
    }
  };

  // Resolves with the first credential; a refusal waiting cannot fix (403,
  // unknown secret) fails at once, anything else after timeoutMs.
  let settle;
  const first = new Promise((resolve) => (settle = resolve));
  let lastError;
  const watcher = watch(
    name,
    (secret) => {
      swap(secret);
      settle({ ok: true });
    },
    {
      socket,
      expectUid: opts.expectUid,
      pollWaitMs: opts.pollWaitMs,
      minBackoffMs: opts.minBackoffMs,
      maxBackoffMs: opts.maxBackoffMs,
      onError: (err) => {
        lastError = err;
        if (pool) onError(err);
        else if (err && PERMANENT.has(err.code)) settle({ error: err });
      },
    },
  );
  const timer = setTimeout(() => settle({ error: timeoutError(`database secret "${name}" was not available`, timeoutMs, lastError, socket) }), timeoutMs);
  const outcome = await first;
  clearTimeout(timer);
  if (outcome.error) {
    watcher.close();
    throw outcome.error;
  }

  // After a login failure: report the refused credential (vaultlet checks
  // its lease at once and replaces it if it was revoked), then take whatever
  // vaultlet serves now. Queries failing together share one report.
  const reports = new Map(); // version → promise of the report and refresh
  const refresh = (usedVersion) => {
    if (!reports.has(usedVersion)) {
      const p = (async () => {
        try {
          await reportRejected(name, usedVersion, { socket, expectUid: opts.expectUid });
        } catch (err) {
          onError(err);
        }
        try {
          swap(await getSecret(name, { socket, expectUid: opts.expectUid }));
        } catch (err) {
          onError(err);
        }
      })();
      reports.set(usedVersion, p);
      p.finally(() => reports.delete(usedVersion));
    }
    return reports.get(usedVersion);
  };

  const withRetry = async (fn) => {
    const used = pool;
    const usedVersion = version;
    try {
      return await fn(used);
    } catch (err) {
      if (ended || !err || !LOGIN_FAILURES.has(err.code)) throw err;
      await refresh(usedVersion);
      if (pool === used) throw err;
      // A new pool: the retry runs on a new connection with the new credential.
      return fn(pool);
    }
  };

  const api = {
    /** Same arguments as pg's pool.query; runs on the current pool. */
    query(...args) {
      if (ended) return Promise.reject(new Error('vaultlet createPgPool: query after end()'));
      const cb = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
      const p = withRetry((target) => target.query(...args));
      if (!cb) return p;
      p.then((res) => cb(undefined, res), (err) => cb(err));
      return undefined;
    },
    /** A client from the current pool; call client.release() when done. */
    connect() {
      if (ended) return Promise.reject(new Error('vaultlet createPgPool: connect after end()'));
      return withRetry((target) => target.connect());
    },
    /** Stops following the secret and ends the current and draining pools. */
    async end() {
      if (ended) return;
      ended = true;
      watcher.close();
      const all = [pool, ...retired].filter(Boolean);
      await Promise.all(all.map(endPool));
    },
    /** The pool new queries go to. */
    get pool() {
      return pool;
    },
    /** The secret version the current pool was built from. */
    get version() {
      return version;
    },
    /** The database user of the current pool. */
    get user() {
      return user;
    },
  };
  return api;
}

module.exports = {
  DEFAULT_SOCKET,
  VaultletError,
  getSecret,
  loadSecrets,
  waitUntilReady,
  watch,
  createPgPool,
  serveTls,
  tlsContextOf,
  reportRejected,
};
