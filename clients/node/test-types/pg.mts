// Compiled (not run) by `npm run typecheck`: createPgPool accepts the real node-postgres module.
import pg from 'pg';
import { createPgPool } from 'vaultlet';

const db = await createPgPool('db', { pg, poolOptions: { host: 'db', port: 5432, database: 'app', max: 10 } });
const res = await db.query<{ current_user: string }>('SELECT current_user');
const who: string = res.rows[0].current_user;
const client = await db.connect();
client.release();
const total: number = db.pool.totalCount;
await db.end();
void [who, total];

// Node's own AbortSignal fits `signal`.
import { getSecret } from 'vaultlet';
await getSecret('db', { signal: AbortSignal.timeout(1000) });
await getSecret('db', { signal: new AbortController().signal });
