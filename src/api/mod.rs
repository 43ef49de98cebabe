//! The Unix socket: HTTP/1.1 + JSON, callers checked by `SO_PEERCRED`.
//!
//! Routes:
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/secrets` | `{"secrets": {name: secret}, "unavailable": {name: reason}}` |
//! | `GET /v1/secrets/{name}` | `{"name", "version", "data": {…}, "lease": {"expires_at", "ttl_seconds", "renewable"}}` (no `lease` for KV) |
//! | `GET /v1/secrets/{name}?wait=30s&after=N` | long-poll: answers once a version newer than `N` is available, or when the wait (at most 5 min) is over |
//! | `POST /v1/secrets/{name}/rejected?version=N` | the app's database refused version `N`: the lease is checked at once and replaced if gone; `{"name", "version", "replaced"}` once the version to use is published (see [`crate::rejected`]) |
//! | `GET /v1/events` | server-sent events: `secret` `{"name", "version"}` per available secret and per change, `unavailable` `{"name", "reason"}` |
//! | `GET /v1/health` | `{"status": "ok"}` while the process runs |
//! | `GET /v1/ready` | 200 `{"ready": true}` once every secret is held and unexpired, else 503 with reasons |
//!
//! Errors are `{"error": "…"}` with 400/403/404/405/429/503; no error ever
//! holds a value. Every response carries `Cache-Control: no-store`. A
//! secret name that is not configured is answered like a secret the caller
//! may not read (403, ``no secret `x` readable by uid N``), so the answers do
//! not tell which names exist; 404 is for unknown routes.
//!
//! The socket is the one way in for local processes, so the module is cut
//! along what each part has to get right:
//!
//! * [`socket`](self::socket) creates the socket file safely, accepts
//!   connections, reads the caller's uid/gid/pid from the kernel, enforces
//!   the connection caps, and drains connections at shutdown;
//! * [`access`](self::access) decides who may connect and read what, counts
//!   connections and waits against the caps, rate-limits refusals, and
//!   writes the audit line (a stable format fail2ban reads);
//! * [`audit_log`](self::audit_log) writes audit lines to stderr after the
//!   answer instead of before it, in order, losing none at shutdown;
//! * [`routes`](self::routes) maps requests to answers; the one route apps
//!   call in a loop (`GET /v1/secrets/{name}`) is answered before the router
//!   when it can be, everything else goes through axum;
//! * [`body`](self::body) turns secrets into JSON bodies that are wiped when
//!   sent, and keeps the body of each secret's current version so a read
//!   does not serialize it again;
//! * [`watch`](self::watch) holds the requests that wait for a change:
//!   long-polls and server-sent events.

mod access;
mod audit_log;
mod body;
mod routes;
mod socket;
mod watch;

pub use access::{Acl, Peer, audit_field};
pub use audit_log::{AuditLine, LogWriter};
pub use body::rfc3339;
pub use routes::router;
pub use socket::{BindError, Bound, bind, serve};
