//! The file task: keeps one rendered file, or one bundle of files, up to
//! date with the secrets it uses.
//!
//! It waits until every secret the file uses is live, renders, and writes
//! only when the content changed (compared by a keyed digest, so no second
//! copy of the content is kept). Changes that arrive together are batched
//! into one write. After a write, the file's `command` runs. Files are
//! written by [`crate::write`]: to a temporary file in the same directory,
//! created with the final mode, fsynced, renamed over the destination, and
//! the directory is fsynced, so a reader sees the old file or the new one,
//! never half of one (unguessable temporary names, no symlink followed).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::{RenderError, render_env, render_json, render_raw, render_yaml};
use crate::config::{FileFormat, FileSpec};
use crate::metrics::Metrics;
use crate::secret::SecretData;
use crate::store::Snapshot;

/// How long to wait for more changes before writing, so that secrets that
/// change together (a re-read of several KV secrets, a burst of replacements)
/// cause one write. Short next to any lease: credentials reach the file well
/// before the old ones are revoked.
const BATCH: Duration = Duration::from_millis(250);

/// Writes `bytes` to `path` atomically with `mode` (and owner/group when
/// given); see [`crate::write`] for what a shared directory cannot do to it.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> std::io::Result<()> {
    crate::write::write_file(path, bytes, mode, owner, group).map_err(Into::into)
}

/// Secrets by name, as templates see them.
pub type Secrets = BTreeMap<String, Arc<SecretData>>;

/// A hasher under keys drawn at random once per process: digests of
/// rendered content can be compared inside the process but say nothing to
/// anyone who sees one (unlike `DefaultHasher::new()`, whose keys are fixed).
pub fn keyed_hasher() -> impl Hasher {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    KEYS.get_or_init(std::collections::hash_map::RandomState::new).build_hasher()
}

/// The live values of `uses` in `snap`, with their versions for logs; `None`
/// until every one of them is available.
pub fn live_secrets(snap: &Snapshot, uses: &BTreeSet<String>) -> Option<(Secrets, Vec<String>)> {
    let now = Instant::now();
    let mut secrets = BTreeMap::new();
    let mut versions = Vec::new();
    for name in uses {
        let e = snap.get(name.as_str())?;
        secrets.insert(name.clone(), e.live(now)?.clone());
        versions.push(format!("{name}@{}", e.version));
    }
    Some((secrets, versions))
}

/// Keeps one file up to date until shutdown. `first` is told after the
/// first successful write.
pub async fn run_file(
    spec: FileSpec,
    mut rx: watch::Receiver<Snapshot>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    mut first: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut written: Option<u64> = None;
    let mut last_error: Option<String> = None;
    loop {
        let snap = rx.borrow_and_update().clone();
        if let Some((secrets, versions)) = live_secrets(&snap, &spec.uses) {
            match render_and_write(&spec, &secrets, &mut written).await {
                Ok(true) => {
                    tracing::info!(path = %spec.path.display(), versions = %versions.join(","), "wrote file");
                    metrics.file_written(&spec.path);
                    last_error = None;
                    if let Some(tx) = first.take() {
                        let _ = tx.send(());
                    }
                    if let Some(cmd) = &spec.command {
                        run_command(cmd, &spec.inherit_env, spec.command_timeout, &spec.path, &metrics).await;
                    }
                }
                Ok(false) => last_error = None,
                Err(e) => {
                    if let Some(msg) = first_time(&mut last_error, &e) {
                        tracing::error!(path = %spec.path.display(), error = %msg, "file not written");
                    }
                }
            }
        }
        if !next_change(&mut rx, &shutdown, written.is_some()).await {
            return;
        }
    }
}

/// The error's message if it differs from the last one, so a file that
/// keeps failing the same way is logged once, not on every change.
fn first_time(last: &mut Option<String>, e: &impl std::fmt::Display) -> Option<String> {
    let msg = e.to_string();
    if last.as_ref() == Some(&msg) {
        return None;
    }
    *last = Some(msg.clone());
    Some(msg)
}

/// Waits for the next change of the secrets and, once something has been
/// written, for the batch window too, so secrets that change together are
/// written once (nothing is written until every secret is there, so the
/// first write does not wait). `false` at shutdown.
async fn next_change(rx: &mut watch::Receiver<Snapshot>, shutdown: &CancellationToken, batch: bool) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => return false,
        r = rx.changed() => if r.is_err() { return false },
    }
    if batch {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(BATCH) => {}
        }
    }
    true
}

/// Runs a file's after-change command. Its output is not captured: it goes
/// to vaultlet's own stdout/stderr, and vaultlet logs only the exit status.
async fn run_command(cmd: &[String], inherit_env: &[String], timeout: Duration, path: &Path, metrics: &Metrics) {
    let ok = command_once(cmd, inherit_env, timeout, path).await;
    metrics.file_command(path, ok);
}

/// Runs the command once; whether it exited 0 in time.
async fn command_once(cmd: &[String], inherit_env: &[String], timeout: Duration, path: &Path) -> bool {
    let mut command = crate::process::command(cmd, inherit_env, None);
    let mut child = match crate::process::spawn_tracked(command.kill_on_drop(true)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(path = %path.display(), command = %cmd[0], error = %e, "cannot run after-change command");
            return false;
        }
    };
    let pid = child.id();
    let _untrack = Untrack(pid);
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(st)) if st.success() => {
            tracing::info!(path = %path.display(), command = %cmd[0], "after-change command ran");
            true
        }
        Ok(Ok(st)) => {
            tracing::warn!(path = %path.display(), command = %cmd[0], status = %st, "after-change command failed");
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(path = %path.display(), command = %cmd[0], error = %e, "after-change command failed");
            false
        }
        Err(_) => {
            // It leads its own process group: whatever it started goes too.
            if let Some(p) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            tracing::warn!(path = %path.display(), command = %cmd[0], ?timeout, "after-change command timed out; killed");
            false
        }
    }
}

fn has_extension(path: &Path, exts: &[&str]) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Forgets a tracked pid however the wait ends.
struct Untrack(Option<u32>);

impl Drop for Untrack {
    fn drop(&mut self) {
        crate::process::untrack(self.0);
    }
}

fn render_text(spec: &FileSpec, secrets: &BTreeMap<String, Arc<SecretData>>) -> Result<Zeroizing<String>, RenderError> {
    Ok(match spec.format {
        FileFormat::Env(format) => render_env(&spec.template, secrets, format)?,
        FileFormat::Raw if has_extension(&spec.path, &["json"]) => render_json(&spec.template, secrets)?,
        FileFormat::Raw if has_extension(&spec.path, &["yaml", "yml"]) => render_yaml(&spec.template, secrets)?,
        FileFormat::Raw => render_raw(&spec.template, secrets)?,
    })
}

/// Keeps the files of one `bundle` up to date until shutdown: all are
/// rendered from one snapshot and switched together by
/// [`crate::write::write_group`]; each distinct after-change command runs
/// once per switch, after it.
pub async fn run_bundle(
    bundle: String,
    specs: Vec<FileSpec>,
    mut rx: watch::Receiver<Snapshot>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    mut first: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let uses: BTreeSet<String> = specs.iter().flat_map(|s| s.uses.iter().cloned()).collect();
    let dir = specs[0].path.parent().unwrap_or(Path::new("/")).to_owned();
    let mut commands: Vec<&FileSpec> = Vec::new();
    for s in &specs {
        if s.command.is_some() && !commands.iter().any(|c| c.command == s.command) {
            commands.push(s);
        }
    }
    let mut written: Option<u64> = None;
    let mut last_error: Option<String> = None;
    loop {
        let snap = rx.borrow_and_update().clone();
        if let Some((secrets, versions)) = live_secrets(&snap, &uses) {
            match render_and_switch(&bundle, &dir, &specs, &secrets, &mut written).await {
                Ok(true) => {
                    tracing::info!(bundle = %bundle, dir = %dir.display(), files = specs.len(), versions = %versions.join(","), "switched file bundle");
                    metrics.bundle_switched(&bundle);
                    for s in &specs {
                        metrics.file_written(&s.path);
                    }
                    last_error = None;
                    if let Some(tx) = first.take() {
                        let _ = tx.send(());
                    }
                    for c in &commands {
                        if let Some(cmd) = &c.command {
                            run_command(cmd, &c.inherit_env, c.command_timeout, &c.path, &metrics).await;
                        }
                    }
                }
                Ok(false) => last_error = None,
                Err(e) => {
                    if let Some(msg) = first_time(&mut last_error, &e) {
                        tracing::error!(bundle = %bundle, error = %msg, "file bundle not written");
                    }
                }
            }
        }
        if !next_change(&mut rx, &shutdown, written.is_some()).await {
            return;
        }
    }
}

async fn render_and_switch(
    bundle: &str,
    dir: &Path,
    specs: &[FileSpec],
    secrets: &BTreeMap<String, Arc<SecretData>>,
    written: &mut Option<u64>,
) -> Result<bool, RenderError> {
    let mut texts = Vec::with_capacity(specs.len());
    let mut h = keyed_hasher();
    for s in specs {
        let t = render_text(s, secrets)?;
        t.hash(&mut h);
        texts.push(t);
    }
    let digest = h.finish();
    if *written == Some(digest) {
        return Ok(false);
    }
    let meta: Vec<_> =
        specs.iter().map(|s| (s.path.file_name().unwrap_or_default().to_owned(), s.mode, s.owner, s.group)).collect();
    let (b, d) = (bundle.to_owned(), dir.to_owned());
    tokio::task::spawn_blocking(move || {
        let files: Vec<_> = meta
            .iter()
            .zip(&texts)
            .map(|((name, mode, owner, group), t)| crate::write::GroupFile {
                name,
                bytes: t.as_bytes(),
                mode: *mode,
                owner: *owner,
                group: *group,
            })
            .collect();
        crate::write::write_group(&d, &b, &files)
    })
    .await
    .map_err(|e| RenderError::Io { path: dir.display().to_string(), source: std::io::Error::other(e) })?
    .map_err(|e| RenderError::Io { path: dir.display().to_string(), source: e.into() })?;
    *written = Some(digest);
    Ok(true)
}

async fn render_and_write(
    spec: &FileSpec,
    secrets: &BTreeMap<String, Arc<SecretData>>,
    written: &mut Option<u64>,
) -> Result<bool, RenderError> {
    let text = render_text(spec, secrets)?;
    // Compare by a keyed hash so we do not keep a second copy of the content.
    let mut h = keyed_hasher();
    text.hash(&mut h);
    let digest = h.finish();
    if *written == Some(digest) {
        return Ok(false);
    }
    let (path, mode, owner, group) = (spec.path.clone(), spec.mode, spec.owner, spec.group);
    let p = path.clone();
    tokio::task::spawn_blocking(move || write_atomic(&p, text.as_bytes(), mode, owner, group))
        .await
        .map_err(|e| RenderError::Io { path: path.display().to_string(), source: std::io::Error::other(e) })?
        .map_err(|e| RenderError::Io { path: path.display().to_string(), source: e })?;
    *written = Some(digest);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EnvFormat;
    use secrecy::SecretString;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn content_digests_are_keyed_per_process_not_fixed() {
        let digest = |mut h: Box<dyn Hasher>| {
            "same content".hash(&mut h);
            h.finish()
        };
        assert_eq!(digest(Box::new(keyed_hasher())), digest(Box::new(keyed_hasher())), "stable within the process");
        assert_ne!(
            digest(Box::new(keyed_hasher())),
            digest(Box::new(std::collections::hash_map::DefaultHasher::new())),
            "not DefaultHasher's fixed keys"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn changes_close_together_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.env");
        let store = crate::store::Store::new(["a", "b"]);
        let data = |v: &str| {
            let mut d = SecretData::default();
            d.insert("k", SecretString::from(v.to_string()));
            d
        };
        store.publish("a", data("1"), None);
        store.publish("b", data("1"), None);
        let spec = FileSpec {
            path: path.clone(),
            template: "A={{ a.k }}\nB={{ b.k }}\n".into(),
            format: FileFormat::Env(EnvFormat::Sh),
            mode: 0o600,
            owner: None,
            group: None,
            command: None,
            command_timeout: Duration::from_secs(1),
            inherit_env: Vec::new(),
            uses: ["a".to_string(), "b".to_string()].into(),
            bundle: None,
        };
        let shutdown = CancellationToken::new();
        let metrics = crate::metrics::Metrics::new();
        let task = tokio::spawn(run_file(spec, store.subscribe(), metrics.clone(), shutdown.clone(), None));
        let read = || std::fs::read_to_string(&path).unwrap_or_default();
        while read().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Every write is a new file renamed into place: a new inode.
        let first = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        // Two changes 100 ms apart: one write with both.
        store.publish("a", data("2"), None);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(read(), "A='1'\nB='1'\n", "nothing written inside the batch window");
        store.publish("b", data("2"), None);
        while read() != "A='2'\nB='2'\n" {
            assert!(read() != "A='2'\nB='1'\n", "half-batched write");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()),
            first,
            "the file was replaced, not edited in place"
        );
        let text = crate::metrics::render(&metrics.register(crate::store::Store::new([]), false));
        let series = format!("vaultlet_file_writes_total{{file=\"{}\"}} 2\n", path.display());
        assert!(text.contains(&series), "two writes counted: {text}");
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn atomic_write_sets_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.env");
        write_atomic(&p, b"A='1'\n", 0o640, None, None).unwrap();
        write_atomic(&p, b"A='2'\n", 0o600, None, None).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "A='2'\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left behind");
    }
}
