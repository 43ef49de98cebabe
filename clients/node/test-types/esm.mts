// Compiled (not run) by `npm run typecheck`: the ESM types resolve and fit together.
import vaultlet, { createPgPool, getSecret, loadSecrets, reportRejected, VaultletError, waitUntilReady, watch } from 'vaultlet';
import type { RejectedAnswer } from 'vaultlet';
import type { DatabaseCredential, RotatingPgPool, Secret, VaultletErrorCode } from 'vaultlet';

const db: Secret<DatabaseCredential> = await getSecret<DatabaseCredential>('db', { waitUntilReady: true, timeoutMs: 5000 });
const user: string = db.data.username;
const ttl: number | undefined = db.lease?.ttl_seconds;
const all = await loadSecrets<{ api: { stripe_key: string } }>({ waitUntilReady: true });
const key: string = all.api.stripe_key;
await waitUntilReady({ timeoutMs: 1000, socket: '/run/vaultlet/vaultlet.sock' });
const w = watch('api', (s) => void s.version, { onError: (e) => void e.message });
w.close();
try {
  await getSecret('nope');
} catch (e) {
  if (e instanceof VaultletError) {
    const c: VaultletErrorCode = e.code;
    void c;
  }
}
declare const pg: { Pool: new (c: unknown) => { query(t: string): Promise<{ rows: unknown[] }>; connect(): Promise<unknown>; end(): Promise<void>; on(e: 'error', l: (err: Error) => void): unknown; waitingCount: number } };
const pool = await createPgPool('db', { pg, poolOptions: { host: 'db', port: 5432, database: 'app' } });
const r = await pool.query('SELECT 1');
void r.rows;
const p2: RotatingPgPool = pool;
void [user, ttl, key, p2, vaultlet.getSecret];

// serveTls: an https server whose certificate follows a PKI secret.
import { serveTls, tlsContextOf } from 'vaultlet';
import type { PkiCertificate, TlsServing } from 'vaultlet';
// Structural: anything with setSecureContext (tls.Server, https.Server); no @types/node here.
const server = { setSecureContext(_o: { cert?: string; key?: string }): void {} };
const serving: TlsServing = await serveTls(server, 'tls', {
  timeoutMs: 5000,
  secureContext: { minVersion: 'TLSv1.3' },
  onUpdate: (s) => void (s.data satisfies PkiCertificate).serial_number,
});
const v: number | undefined = serving.version;
serving.close();
const ctx: { cert: string; key: string } = tlsContextOf(await getSecret<PkiCertificate>('tls'), 'tls');
void v, ctx;
const answer: RejectedAnswer = await reportRejected('db', pool.version, { timeoutMs: 20000 });
const fresh: boolean = answer.replaced;
void [answer.version, fresh];
