'use strict';
// A small HTTP API whose secrets come from vaultlet, not from .env files:
//   - KV secrets are read once at startup (loadSecrets);
//   - PostgreSQL is queried through a pool that follows the leased credential
//     and switches to each replacement without dropping a query (createPgPool).
//
// Configuration (environment):
//   PGHOST, PGPORT, PGDATABASE  where PostgreSQL is (user/password come from vaultlet)
//   VAULTLET_SOCKET             vaultlet's socket (default /run/vaultlet/vaultlet.sock)
//   PORT, HOST                  where to listen (default 3000 on 0.0.0.0)
//   DB_SECRET                   name of the database secret in vaultlet.toml (default "db")

const http = require('node:http');
const pg = require('pg');
const { loadSecrets, createPgPool } = require('vaultlet');

async function main() {
  // Waits (up to a minute) for vaultlet to hold every secret, e.g. while both start.
  const secrets = await loadSecrets({ waitUntilReady: true, timeoutMs: 60000 });
  const db = await createPgPool(process.env.DB_SECRET || 'db', {
    pg,
    poolOptions: {
      host: process.env.PGHOST || 'localhost',
      port: Number(process.env.PGPORT || 5432),
      database: process.env.PGDATABASE || 'app',
      max: 10,
      connectionTimeoutMillis: 5000,
    },
    onRotate: ({ version, user }) => console.log(`database credential rotated: version ${version}, user ${user}`),
  });

  // A value the app needs, e.g. to call a payment API. Never log it.
  const stripeKey = secrets.api && secrets.api.stripe_key;

  const server = http.createServer(async (req, res) => {
    const reply = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify(body));
    };
    try {
      if (req.method !== 'GET') return reply(405, { error: 'only GET' });
      if (req.url === '/health') {
        return reply(200, { status: 'ok', secrets: Object.keys(secrets).sort(), payments: Boolean(stripeKey) });
      }
      if (req.url === '/whoami') {
        const { rows } = await db.query('SELECT current_user, current_database() AS database');
        return reply(200, { current_user: rows[0].current_user, database: rows[0].database, credential_version: db.version });
      }
      return reply(404, { error: 'not found' });
    } catch (err) {
      console.error(`request failed: ${err.code || ''} ${err.message}`);
      return reply(500, { error: 'internal error' });
    }
  });

  const port = Number(process.env.PORT ?? 3000);
  server.listen(port, process.env.HOST || '0.0.0.0', () => {
    const a = server.address();
    console.log(`node-api listening on http://${a.address}:${a.port}`);
  });

  const shutdown = (signal) => {
    console.log(`${signal}: shutting down`);
    server.close(() => db.end().then(() => process.exit(0)));
    setTimeout(() => process.exit(1), 10000).unref();
  };
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);
}

main().catch((err) => {
  // VaultletError messages say what to fix (socket missing, uid not allowed, …).
  console.error(`node-api: cannot start: ${err.message}`);
  process.exit(1);
});
