// Types for the vaultlet Node.js client, require() entry (index.cjs). index.d.ts re-exports them for import.

/** Default socket path, used when neither `socket` nor VAULTLET_SOCKET is set. */
export declare const DEFAULT_SOCKET: '/run/vaultlet/vaultlet.sock';

export type VaultletErrorCode =
  /** The socket file is missing or nobody listens on it: is vaultlet running? check VAULTLET_SOCKET. */
  | 'ENOSOCKET'
  /** The OS refused to connect to the socket (file mode / group). */
  | 'EACCES'
  /** vaultlet answered 403: this process's uid/gid is not on `socket.allow`, or not on the secret's own `allow`, or there is no secret of that name (vaultlet answers the last two alike). */
  | 'FORBIDDEN'
  /** vaultlet answered 429: too many refused requests from this uid; fix the allow list first. */
  | 'RATE_LIMITED'
  /** 404: no such route (older vaultlet versions also answered an unknown secret name with 404). */
  | 'NOT_FOUND'
  /** 503: vaultlet does not hold the secret (yet), or is not ready; `reason`/`reasons` say why. */
  | 'NOT_READY'
  /** No answer in time. */
  | 'TIMEOUT'
  /** 400: vaultlet rejected the request. */
  | 'BAD_REQUEST'
  /** vaultlet closed the connection before answering (e.g. it is shutting down). */
  | 'ECONNRESET'
  /** Any other unexpected answer or transport failure. */
  | 'EPROTO'
  /** The request was aborted through `signal`. */
  | 'ABORTED'
  /** `expectUid` was given and the socket file is not that uid's, or sits in a directory others may write; nothing was sent. */
  | 'WRONG_OWNER';

export declare class VaultletError extends Error {
  constructor(
    code: VaultletErrorCode,
    message: string,
    extra?: { status?: number; reason?: string; reasons?: ReadinessReason[]; secret?: string; socket?: string; cause?: unknown },
  );
  name: 'VaultletError';
  code: VaultletErrorCode;
  /** HTTP status, when vaultlet answered. */
  status?: number;
  /** vaultlet's own explanation (never holds a secret value). */
  reason?: string;
  /** For NOT_READY from /v1/ready or loadSecrets: one entry per missing secret. */
  reasons?: ReadinessReason[];
  /** The secret asked for, when there was one. */
  secret?: string;
  /** The socket path used. */
  socket?: string;
  cause?: unknown;
}

export interface ReadinessReason {
  secret: string;
  reason: string;
}

export interface Lease {
  /** RFC 3339 UTC, e.g. "2026-01-01T12:00:00Z". */
  expires_at: string;
  ttl_seconds: number;
  renewable: boolean;
}

/** A secret as served by vaultlet. `lease` is present for database credentials, absent for KV. */
export interface Secret<D extends Record<string, string> = Record<string, string>> {
  name: string;
  /** Starts at 1, moves only when the content changes (new credential, changed KV value). */
  version: number;
  data: D;
  lease?: Lease;
}

/** Fields of a database secret's `data`. */
export interface DatabaseCredential extends Record<string, string> {
  username: string;
  password: string;
}

/** An AbortSignal (Node's or the DOM's). */
export interface AbortSignalLike {
  readonly aborted: boolean;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

export interface ClientOptions {
  /** Socket path. Default: env VAULTLET_SOCKET, else /run/vaultlet/vaultlet.sock. */
  socket?: string;
  /** Give up after this many milliseconds (default 5000; 30000 when waiting until ready). */
  timeoutMs?: number;
  /** Abort the request(s). */
  signal?: AbortSignalLike;
  /**
   * Only talk to a socket file owned by this uid, in a directory other users cannot
   * write to (else WRONG_OWNER, nothing sent). Checks the file, not the listening process.
   */
  expectUid?: number;
}

export interface GetSecretOptions extends ClientOptions {
  /** Wait (long-poll, also while vaultlet is starting) until the secret is available, up to timeoutMs. */
  waitUntilReady?: boolean;
}

export interface LoadSecretsOptions extends ClientOptions {
  /** First wait (up to timeoutMs, default 30000) until vaultlet holds every secret. */
  waitUntilReady?: boolean;
  /** Return what is available instead of throwing NOT_READY when some secrets are missing. */
  partial?: boolean;
}

export interface WaitUntilReadyOptions extends ClientOptions {
  /** First delay between checks of /v1/ready, growing to 2 s (default 200). */
  intervalMs?: number;
}

export interface WatchOptions {
  socket?: string;
  /** As in ClientOptions: only a socket file owned by this uid. */
  expectUid?: number;
  /** How long one long-poll waits on the server (default 30000, max 300000). */
  pollWaitMs?: number;
  /** Reconnect backoff: first delay (default 250) and cap (default 10000), with jitter. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /**
   * Called with connection problems and errors thrown by the callback; the watcher keeps
   * retrying. Default: a process warning, the same message at most once a minute.
   */
  onError?: (err: VaultletError | Error) => void;
}

export interface Watcher<D extends Record<string, string> = Record<string, string>> {
  /** Stops watching and aborts the pending long-poll. */
  close(): void;
  /** The last secret handed to the callback. */
  readonly current: Secret<D> | undefined;
  readonly closed: boolean;
}

/** GET /v1/secrets/{name}. */
export declare function getSecret<D extends Record<string, string> = Record<string, string>>(
  name: string,
  opts?: GetSecretOptions,
): Promise<Secret<D>>;

/** GET /v1/secrets, as `{ [name]: data }`. */
export declare function loadSecrets<T extends Record<string, Record<string, string>> = Record<string, Record<string, string>>>(
  opts?: LoadSecretsOptions,
): Promise<T>;

/** Polls GET /v1/ready until it answers 200 (throws TIMEOUT with the reasons, or FORBIDDEN/EACCES at once). */
export declare function waitUntilReady(opts?: WaitUntilReadyOptions): Promise<{ ready: true }>;

/**
 * Calls `callback` once the secret is available and on every new version (async callbacks are
 * awaited before the next call). Reconnects with capped exponential backoff and jitter.
 */
export declare function watch<D extends Record<string, string> = Record<string, string>>(
  name: string,
  callback: (secret: Secret<D>) => void | Promise<void>,
  opts?: WatchOptions,
): Watcher<D>;

/** Fields of a PKI secret's `data` (all PEM or RFC 3339 text). */
export interface PkiCertificate extends Record<string, string> {
  certificate: string;
  private_key: string;
  issuing_ca: string;
  ca_chain: string;
  serial_number: string;
  expiration: string;
  not_before: string;
}

/** A server whose certificate can be replaced live (tls.Server, https.Server). */
export interface SecureContextServer {
  setSecureContext(options: { cert?: string; key?: string; [k: string]: unknown }): void;
}

export interface ServeTlsOptions extends WatchOptions {
  /** How long to wait for the first certificate (default 30000): TIMEOUT after it. */
  timeoutMs?: number;
  /** More tls.createSecureContext options (ciphers, minVersion, ca for client certs…). */
  secureContext?: Record<string, unknown>;
  /** Called after each new certificate is in place. */
  onUpdate?: (secret: Secret<PkiCertificate>) => void;
}

export interface TlsServing {
  /** Stops following the secret; the server keeps its current certificate. */
  close(): void;
  /** Version of the certificate in place. */
  readonly version: number | undefined;
  readonly closed: boolean;
}

/**
 * Gives the server its certificate from PKI secret `name` and swaps it with
 * `server.setSecureContext()` on every new version: no restart, no dropped connection.
 * Resolves once the first certificate is in place.
 */
export declare function serveTls(server: SecureContextServer, name: string, opts?: ServeTlsOptions): Promise<TlsServing>;

/** `{ cert, key }` (leaf then chain) for tls.createSecureContext from a PKI secret. */
export declare function tlsContextOf(secret: Secret<Record<string, string>>, name: string): { cert: string; key: string };
/** The answer to a rejected-credential report. */
export interface RejectedAnswer {
  name: string;
  /** The version to use now. */
  version: number;
  /** True when it is another credential than the one reported (the lease was gone, or already replaced). */
  replaced: boolean;
}

export type ReportRejectedOptions = ClientOptions;

/**
 * POST /v1/secrets/{name}/rejected?version=N: the database refused the credential of `version`.
 * vaultlet looks its lease up at once and replaces it if Vault no longer knows it; resolves once
 * the version to use is published.
 */
export declare function reportRejected(name: string, version: number, opts?: ReportRejectedOptions): Promise<RejectedAnswer>;

/** The parts of node-postgres createPgPool uses (structural, so `pg` stays optional). */
export interface PgModuleLike<P extends PgPoolLike = PgPoolLike> {
  Pool: new (config: any) => P;
}

export interface PgPoolLike {
  query(...args: any[]): Promise<any>;
  connect(): Promise<any>;
  end(): Promise<void>;
  on(event: 'error', listener: (err: Error) => void): unknown;
  readonly waitingCount: number;
}

/** The client type a pool's connect() resolves to (node-postgres: PoolClient). */
export type PgClientOf<P> = P extends { connect(callback: (err: any, client: infer C, done: any) => void): void }
  ? NonNullable<C>
  : P extends { connect(): Promise<infer C> }
    ? C
    : any;

export interface RotationInfo {
  name: string;
  version: number;
  previousVersion: number;
  user: string;
  previousUser: string;
}

export interface PgPoolOptions<P extends PgPoolLike = PgPoolLike> {
  /** The node-postgres module: `import pg from 'pg'` / `require('pg')`. */
  pg?: PgModuleLike<P>;
  /** pg.Pool options (host, port, database, max, ssl…); user and password come from the secret. */
  poolOptions?: Record<string, unknown>;
  /** Maps the secret's data to pool credentials. Default: `{ user: data.username, password: data.password }`. */
  credentials?: (data: Record<string, string>) => { user: string; password: string };
  socket?: string;
  /** As in ClientOptions: only a socket file owned by this uid. */
  expectUid?: number;
  /** How long to wait for the first credential (default 30000). */
  timeoutMs?: number;
  pollWaitMs?: number;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Called after each swap to a new credential. */
  onRotate?: (info: RotationInfo) => void;
  /** Pool errors (idle clients dropped by the server) and watch problems. Default: a rate-limited process warning. */
  onError?: (err: Error) => void;
}

export interface RotatingPgPool<P extends PgPoolLike = PgPoolLike> {
  /** pg's pool.query on the current pool (promise or callback form). A login refused by PostgreSQL (SQLSTATE 28P01/28000) is reported to vaultlet (`reportRejected`) and retried once on a new connection with the credential vaultlet serves then. */
  query: P['query'];
  /** A client from the current pool; call `client.release()` when done. */
  connect(): Promise<PgClientOf<P>>;
  /** Stops following the secret and ends every pool (waits for checked-out clients). */
  end(): Promise<void>;
  /** The pool new queries go to. */
  readonly pool: P;
  /** The secret version the current pool was built from. */
  readonly version: number;
  /** The database user of the current pool. */
  readonly user: string;
}

/** A pg.Pool that follows database secret `name` across rotations. */
export declare function createPgPool<P extends PgPoolLike = PgPoolLike>(
  name: string,
  opts?: PgPoolOptions<P>,
): Promise<RotatingPgPool<P>>;
