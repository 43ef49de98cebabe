//! The sealed format, the resume decisions and the file rules.

use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use sha2::Digest;
use tokio::time::Instant;

use super::file::{HEADER, MAGIC, Sealed, SealedSecret, SealedToken, decode, encode};
use super::identity::hex;
use super::*;
use crate::config::state::read_key;
use crate::config::{RevokeOld, SecretSource, SecretSpec};
use crate::ledger::Held;
use crate::secret::{Lease, LeaseId, SecretData, Token};
use crate::store::Store;

fn key(b: u8) -> StateKey {
    StateKey::from_bytes([b; 32])
}

fn identity() -> Identity {
    Identity {
        addresses: vec!["http://127.0.0.1:8200/".into()],
        namespace: None,
        method: "approle".into(),
        auth_mount: "approle".into(),
        login_sha256: hex(&sha2::Sha256::digest(b"role")),
    }
}

fn db_spec(name: &str, role: &str) -> SecretSpec {
    SecretSpec {
        name: name.into(),
        source: SecretSource::Database { mount: "database".into(), role: role.into() },
        refresh: Duration::from_secs(300),
        rotate_before: None,
        drain: Duration::from_secs(60),
        revoke_old: RevokeOld::Drain,
        verify_every: Duration::from_secs(60),
        allow: None,
    }
}

fn kv_spec(name: &str, path: &str) -> SecretSpec {
    SecretSpec {
        source: SecretSource::Kv { mount: "secret".into(), path: path.into(), version: 2 },
        ..db_spec(name, "x")
    }
}

fn sample() -> Sealed {
    Sealed {
        identity: identity(),
        written_ms: 1_000,
        token: Some(SealedToken {
            secret: "s.the-token-value".into(),
            generation: 3,
            issued_ms: 500,
            expires_ms: 60_000,
            hard_end_ms: None,
            ttl_s: 60,
            renewable: true,
        }),
        secrets: vec![SealedSecret {
            name: "db".into(),
            spec: fingerprint(&db_spec("db", "api").source),
            version: 4,
            values: vec![("password".into(), "hunter2-secret".into()), ("username".into(), "v-user".into())],
            lease: None,
        }],
        draining: vec![],
    }
}

#[test]
fn seals_and_opens_without_plaintext() {
    let file = encode(&sample(), &key(7));
    for needle in ["hunter2-secret", "s.the-token-value", "v-user", "password"] {
        assert!(!file.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} in the file");
    }
    assert_eq!(&file[..8], MAGIC);
    let back = decode(&file, &key(7), &identity()).expect("opens");
    assert_eq!(back.token.as_ref().map(|t| t.secret.as_str()), Some("s.the-token-value"));
    assert_eq!(back.secrets[0].values[0].1, "hunter2-secret");
    // A fresh nonce each time: two writes of the same state differ.
    assert_ne!(encode(&sample(), &key(7)), file);
}

#[test]
fn each_bad_file_has_its_reason() {
    let file = encode(&sample(), &key(7));
    let reason = |f: &[u8], k: &StateKey| decode(f, k, &identity()).err().map(|e| e.reason());
    assert_eq!(reason(&file, &key(8)), Some("wrong_key_or_tampered"));
    for i in [20, 40, file.len() - 1] {
        let mut t = file.clone();
        t[i] ^= 1;
        assert_eq!(reason(&t, &key(7)), Some("wrong_key_or_tampered"), "byte {i}");
    }
    let mut longer = file.clone();
    longer.push(0);
    assert_eq!(reason(&longer, &key(7)), Some("wrong_key_or_tampered"));
    for cut in [0, 3, 8, 12, 30, file.len() - 1] {
        assert_eq!(reason(&file[..cut], &key(7)), Some("truncated"), "cut at {cut}");
    }
    let mut v = file.clone();
    v[8] = 9;
    assert_eq!(reason(&v, &key(7)), Some("unknown_version"));
    // The length is authenticated: changing it (to the real body size,
    // even) is a tampering, not a truncation.
    let mut l = file.clone();
    l.pop();
    let shorter = u32::from_be_bytes([l[9], l[10], l[11], l[12]]) - 1;
    l[9..HEADER].copy_from_slice(&shorter.to_be_bytes());
    assert_eq!(reason(&l, &key(7)), Some("wrong_key_or_tampered"));
    let mut other = identity();
    other.login_sha256 = hex(&sha2::Sha256::digest(b"another role"));
    assert_eq!(decode(&file, &key(7), &other).err().map(|e| e.reason()), Some("other_config"));
    assert_eq!(reason(b"not a state file at all", &key(7)), Some("wrong_key_or_tampered"));
}

#[test]
fn a_missing_file_is_a_first_start_and_a_directory_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = state_cfg(dir.path());
    assert!(matches!(read(&cfg, &identity(), Clock::now()), Ok(None)), "missing = first start");
    let nested = StateConfig { path: dir.path().join("not-yet").join("state"), ..cfg.clone() };
    assert!(matches!(read(&nested, &identity(), Clock::now()), Ok(None)), "no directory yet = first start");
    std::fs::create_dir(&cfg.path).unwrap();
    assert_eq!(read(&cfg, &identity(), Clock::now()).err().map(|e| e.reason()), Some("unsafe_file"));
}

fn state_cfg(dir: &Path) -> StateConfig {
    StateConfig { path: dir.join("state"), key: key(1), max_len: size_limit(1, 1 << 20) }
}

/// A good state file for [`identity`] under `key(1)` at `path`, mode 0600.
fn good_state(path: &Path) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    let bytes = encode(&sample(), &key(1));
    std::fs::write(path, &bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    bytes
}

/// `read` on a thread of its own, waited for with a generous deadline:
/// a read that blocks fails the test instead of hanging it. `Ok(true)`:
/// the state was read.
fn read_within(cfg: &StateConfig) -> Result<bool, &'static str> {
    let (tx, rx) = std::sync::mpsc::channel();
    let cfg = cfg.clone();
    std::thread::spawn(move || {
        let _ = tx.send(read(&cfg, &identity(), Clock::now()).map(|s| s.is_some()).map_err(|e| e.reason()));
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("reading the state file blocked")
}

#[test]
fn a_fifo_at_the_state_path_is_a_fresh_start_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = state_cfg(dir.path());
    rustix::fs::mknodat(rustix::fs::CWD, &cfg.path, rustix::fs::FileType::Fifo, rustix::fs::Mode::RUSR, 0).unwrap();
    assert_eq!(read_within(&cfg), Err("unsafe_file"));
    // `load` (what a start does): one counted failure, a fresh plan.
    let metrics = crate::metrics::Metrics::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let m = metrics.clone();
    std::thread::spawn(move || {
        let plan = load(&cfg, &identity(), &[], &m);
        let _ = tx.send((plan.token.is_none(), plan.secrets.is_empty()));
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).expect("load blocked"), (true, true));
    let text = crate::metrics::render(&metrics.register(Store::new([]), true));
    assert!(text.contains("vaultlet_state_load_failures_total{reason=\"unsafe_file\"} 1\n"), "{text}");
}

#[test]
fn a_symlink_at_the_state_path_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let real = StateConfig { path: dir.path().join("real"), ..state_cfg(dir.path()) };
    good_state(&real.path);
    assert_eq!(read_within(&real), Ok(true), "the target itself is a good state file");
    let cfg = state_cfg(dir.path());
    std::os::unix::fs::symlink(&real.path, &cfg.path).unwrap();
    assert_eq!(read_within(&cfg), Err("unsafe_file"), "a link to a good state file");
    std::fs::remove_file(&cfg.path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &cfg.path).unwrap();
    assert_eq!(read_within(&cfg), Err("unsafe_file"), "a link to /dev/zero");
}

#[test]
fn a_state_file_of_another_user_or_that_others_may_write_is_not_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = state_cfg(dir.path());
    good_state(&cfg.path);
    assert_eq!(read_within(&cfg), Ok(true));
    let owner = rustix::process::geteuid().as_raw();
    std::os::unix::fs::chown(&cfg.path, Some(65534), None).unwrap();
    assert_eq!(read_within(&cfg), Err("unsafe_file"), "owned by uid 65534");
    std::os::unix::fs::chown(&cfg.path, Some(owner), None).unwrap();
    for mode in [0o620, 0o602, 0o666] {
        std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(read_within(&cfg), Err("unsafe_file"), "mode {mode:o}");
    }
    // Reading it does no harm: it is sealed.
    std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(read_within(&cfg), Ok(true), "mode 640");
}

#[test]
fn an_oversized_state_file_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = state_cfg(dir.path());
    let len = good_state(&cfg.path).len() as u64;
    cfg.max_len = len - 1;
    assert_eq!(read_within(&cfg), Err("unsafe_file"));
    cfg.max_len = len;
    assert_eq!(read_within(&cfg), Ok(true), "exactly at the limit");
    assert_eq!(size_limit(3, 1 << 20), 4 << 20, "1 MiB and one answer per secret");
}

/// A config with `[state]` at `state` and the key at `key`.
fn config_text(state: &Path, key: &Path) -> String {
    format!(
        "[vault]\naddress = \"http://127.0.0.1:8200\"\n[auth.approle]\nrole_id_file = \"/etc/hostname\"\n\
         secret_id_file = \"/run/x/secret_id\"\n[secret.db]\ndatabase = {{ mount = \"database\", role = \"api\" }}\n\
         [socket]\n[state]\npath = \"{}\"\nkey_file = \"{}\"\n",
        state.display(),
        key.display()
    )
}

#[test]
fn a_state_directory_others_may_change_is_refused_at_check_and_at_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let check = |state: &Path| {
        crate::Config::from_toml(Path::new("v.toml"), &config_text(state, &key), 1000)
            .map(|_| ())
            .map_err(|e| (e.0[0].key.clone(), e.0[0].line, e.0[0].message.clone(), e.0.len()))
    };
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    for mode in [0o1777, 0o777] {
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode)).unwrap();
        for path in [shared.join("state"), shared.join("sub").join("state")] {
            let (k, line, msg, n) = check(&path).expect_err("a directory others may write");
            assert_eq!((k.as_str(), line, n), ("state.path", Some(10), 1), "{msg}");
            assert!(msg.contains("writable by other users"), "{msg}");
        }
    }
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&shared, Some(65534), None).unwrap();
    let (_, _, msg, _) = check(&shared.join("state")).expect_err("another user's directory");
    assert!(msg.contains("uid 65534"), "{msg}");
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    check(&mine.join("state")).expect("a private directory");
    check(&mine.join("not").join("yet").join("state")).expect("created by vaultlet, under a private one");
    // Changed after the check: the read and the write refuse it too.
    let cfg = state_cfg(&mine);
    good_state(&cfg.path);
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert_eq!(read_within(&cfg), Err("unsafe_file"));
    let e = crate::write::write_own_file(&cfg.path, b"x", "the state file").unwrap_err();
    assert!(matches!(e, crate::write::PlaceError::UnsafeDir { .. }), "{e}");
}

#[test]
fn a_key_file_that_is_a_link_a_fifo_another_users_or_too_long_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, [5u8; 32]).unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(**read_key(&good).unwrap().0, [5u8; 32]);
    let within = |p: &Path| {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = p.to_owned();
        std::thread::spawn(move || drop(tx.send(read_key(&p).map(drop))));
        rx.recv_timeout(Duration::from_secs(30)).expect("reading the key blocked")
    };
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let e = within(&link).unwrap_err();
    assert!(e.contains("symbolic link"), "{e}");
    let zero = dir.path().join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let e = within(&zero).unwrap_err();
    assert!(e.contains("symbolic link"), "{e}");
    let fifo = dir.path().join("fifo");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RUSR, 0).unwrap();
    let e = within(&fifo).unwrap_err();
    assert!(e.contains("FIFO"), "{e}");
    let theirs = dir.path().join("theirs");
    std::fs::copy(&good, &theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    let e = within(&theirs).unwrap_err();
    assert!(e.contains("uid 65534"), "{e}");
    let long = dir.path().join("long");
    std::fs::write(&long, [b'a'; 4096]).unwrap();
    std::fs::set_permissions(&long, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = within(&long).unwrap_err();
    assert!(e.contains("more than 66 bytes"), "{e}");
    // 64 hex characters and CR LF is the longest good key.
    std::fs::write(&long, format!("{}\r\n", "ab".repeat(32))).unwrap();
    assert_eq!(**read_key(&long).unwrap().0, [0xab; 32]);
}

#[test]
fn key_file_rules() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("key");
    let put = |bytes: &[u8], mode: u32| {
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    put(&[5u8; 32], 0o600);
    assert_eq!(**read_key(&p).unwrap().0, [5u8; 32]);
    put(format!("{}\n", "ab".repeat(32)).as_bytes(), 0o400);
    assert_eq!(**read_key(&p).unwrap().0, [0xab; 32]);
    put(&[5u8; 32], 0o640);
    assert!(read_key(&p).unwrap_err().contains("group or others"));
    put(&[5u8; 32], 0o602);
    assert!(read_key(&p).unwrap_err().contains("group or others"));
    put(&[5u8; 31], 0o600);
    let e = read_key(&p).unwrap_err();
    assert!(e.contains("32 raw bytes") && e.contains("31 bytes"), "{e}");
    put("zz".repeat(32).as_bytes(), 0o600);
    assert!(read_key(&p).unwrap_err().contains("64 hex"));
    std::fs::remove_file(&p).unwrap();
    assert_eq!(read_key(&p).unwrap_err(), "file not found");
    assert!(!format!("{:?}", key(0x41)).contains("65"), "Debug shows no key bytes");
}

#[test]
fn a_bad_key_file_is_a_config_error_naming_key_and_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let src = config_text(&dir.path().join("state"), &key);
    let load = || crate::Config::from_toml(Path::new("v.toml"), &src, 1000);
    let e = load().expect_err("a group-readable key is refused");
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!((e.0[0].key.as_str(), e.0[0].line), ("state.key_file", Some(11)), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = load().expect("a 0600 key loads").config;
    assert!(c.state.is_some());
    assert!(!format!("{c:?}").contains("9, 9"), "the key is not in Debug");
    let without = crate::Config::from_toml(Path::new("v.toml"), src.split("[state]").next().unwrap(), 1000);
    assert!(without.unwrap().config.state.is_none(), "no [state], no state");
}

#[tokio::test(start_paused = true)]
async fn times_round_trip_through_the_wall_clock() {
    let c = Clock { now: Instant::now(), wall_ms: 10_000_000 };
    let later = Instant::now() + Duration::from_secs(42);
    assert_eq!(c.to_wall(later), 10_042_000);
    assert_eq!(c.to_instant(10_042_000), later);
    // After a restart 30 s later, the same wall time is 12 s ahead.
    let c2 = Clock { now: Instant::now(), wall_ms: 10_030_000 };
    assert_eq!(c2.to_instant(10_042_000) - Instant::now(), Duration::from_secs(12));
    assert!(c2.to_instant(10_000_000) <= Instant::now(), "the past stays past");
}

fn data(v: &str) -> SecretData {
    let mut d = SecretData::default();
    d.insert("password", SecretString::from(v.to_owned()));
    d
}

fn held(id: &str, ends_in: u64, generation: u64) -> Held {
    let now = Instant::now();
    Held {
        lease: Lease {
            id: LeaseId::new(format!("database/creds/api/{id}")),
            issued_at: now,
            expires_at: now + Duration::from_secs(ends_in),
            ttl: Duration::from_secs(ends_in),
            renewable: true,
        },
        cap: None,
        token_generation: generation,
        token_end: None,
    }
}

fn token(generation: u64, ends_in: u64) -> Token {
    let now = Instant::now();
    Token {
        secret: SecretString::from("t".to_owned()),
        generation,
        issued_at: now,
        ttl: Duration::from_secs(ends_in),
        expires_at: now + Duration::from_secs(ends_in),
        hard_end: None,
        renewable: true,
    }
}

fn saved_db(name: &str, spec: &SecretSpec, h: Held, token_expires: Option<Instant>) -> SavedSecret {
    SavedSecret {
        name: name.into(),
        spec: fingerprint(&spec.source),
        version: 7,
        data: data("pw"),
        lease: Some(SavedLease { held: h, token_expires, learned: None }),
    }
}

#[tokio::test(start_paused = true)]
async fn resume_keeps_what_lives_and_revokes_what_nothing_uses() {
    let api = db_spec("api", "api");
    let kv = kv_spec("cfg", "app/cfg");
    let t_end = Some(Instant::now() + Duration::from_secs(100));
    let saved = Saved {
        token: Some(token(5, 100)),
        secrets: vec![
            saved_db("api", &api, held("a", 60, 5), t_end),
            // Its secret was removed from the config.
            saved_db("gone", &db_spec("gone", "gone"), held("b", 60, 5), t_end),
            // Same name, another role: not this lease's secret any more.
            saved_db("report", &db_spec("report", "old-role"), held("c", 60, 5), t_end),
            // Ended while we were down.
            saved_db("short", &db_spec("short", "short"), held("d", 5, 5), t_end),
            SavedSecret { name: "cfg".into(), spec: fingerprint(&kv.source), version: 2, data: data("x"), lease: None },
        ],
        draining: vec![],
    };
    tokio::time::advance(Duration::from_secs(10)).await;
    let specs = [api, kv, db_spec("report", "new-role"), db_spec("short", "short")];
    let plan = decide(saved, &specs, Instant::now());
    assert_eq!(plan.token.as_ref().map(|t| t.generation), Some(5));
    let mut names: Vec<_> = plan.secrets.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["api", "cfg"]);
    assert_eq!(plan.secrets["api"].version, 7, "versions do not move");
    assert!(plan.secrets["cfg"].lease.is_none());
    let revoked: Vec<_> = plan.revoke.iter().map(|i| i.as_str().rsplit('/').next().unwrap().to_owned()).collect();
    assert_eq!(revoked, ["b", "c"]);
    assert_eq!(plan.ended, 1);
}

#[tokio::test(start_paused = true)]
async fn an_ended_token_takes_its_leases_with_it() {
    let api = db_spec("api", "api");
    let t_end = Some(Instant::now() + Duration::from_secs(30));
    let saved = Saved {
        token: Some(token(2, 30)),
        secrets: vec![saved_db("api", &api, held("a", 3600, 2), t_end)],
        draining: vec![],
    };
    tokio::time::advance(Duration::from_secs(31)).await;
    let plan = decide(saved, &[api], Instant::now());
    assert!(plan.token.is_none(), "expired token: log in");
    assert!(plan.secrets.is_empty(), "its lease died with it");
    assert!(plan.revoke.is_empty());
    assert_eq!(plan.ended, 1);
}

#[tokio::test(start_paused = true)]
async fn a_lease_of_an_older_token_ends_with_that_token() {
    let api = db_spec("api", "api");
    let old_end = Instant::now() + Duration::from_secs(40);
    let saved = Saved {
        token: Some(token(3, 100)),
        secrets: vec![saved_db("api", &api, held("a", 3600, 2), Some(old_end))],
        draining: vec![],
    };
    let plan = decide(saved, &[api], Instant::now());
    let (h, _) = plan.secrets["api"].lease.clone().unwrap();
    assert_eq!(h.token_end, Some(old_end), "replaced before the old token ends");
}

#[tokio::test(start_paused = true)]
async fn draining_leases_keep_draining_or_are_revoked() {
    let api = db_spec("api", "api");
    let mk = |id: &str, name: &str, drain_in: u64| SavedDrain {
        name: name.into(),
        spec: fingerprint(&api.source),
        lease: SavedLease { held: held(id, 600, 1), token_expires: None, learned: None },
        drain_end: Instant::now() + Duration::from_secs(drain_in),
    };
    let saved = Saved {
        token: None,
        secrets: vec![],
        draining: vec![mk("keep", "api", 60), mk("over", "api", 5), mk("orphan", "removed", 60)],
    };
    tokio::time::advance(Duration::from_secs(10)).await;
    let plan = decide(saved, &[api], Instant::now());
    assert_eq!(plan.draining.len(), 1);
    assert!(plan.draining[0].1.lease.id.as_str().ends_with("/keep"));
    let revoked: Vec<_> = plan.revoke.iter().map(|i| i.as_str().rsplit('/').next().unwrap().to_owned()).collect();
    assert_eq!(revoked, ["over", "orphan"]);
}
