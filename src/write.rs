//! Putting files and sockets in place, in directories other users may share.
//!
//! Env files, templates, the API socket and the metrics socket all end up
//! in directories vaultlet does not own alone (`/run/app`, a volume shared
//! with a container, sometimes a sticky `/tmp`). Whoever else can write
//! there can pre-create names, plant symlinks, or swap the file under us.
//! So every step here works relative to an opened directory handle
//! (`openat`, `renameat`, `unlinkat`), never by re-resolving a path:
//!
//! * temporary names carry 64 random bits, are created with
//!   `O_CREAT | O_EXCL | O_NOFOLLOW`, and a collision is retried with a new
//!   name: nobody can block a write or make it follow a symlink by guessing;
//! * the final name is only ever the target of `renameat`, which replaces
//!   a symlink there instead of writing through it;
//! * a directory writable by other users is refused unless it is sticky
//!   (then others cannot rename or delete our entries); for sockets the
//!   sticky directory must also belong to vaultlet's uid or root;
//! * directories vaultlet creates get mode 0750 or stricter, whatever the
//!   umask;
//! * a socket is bound inside a private 0700 directory made for it, given
//!   its mode there, and renamed into place: it is never reachable under a
//!   looser mode, and its chmod cannot be redirected;
//! * a socket is removed at exit only if the path still holds the very
//!   socket vaultlet created (same device and inode).
//!
//! What this does not stop: a member of a group that may write the
//! directory (group-writable directories trust the group), and in a sticky
//! directory a file another user already holds at the final name (it
//! cannot be replaced by us either; the write fails with the reason).

use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// How many fresh random names to try before giving up.
const ATTEMPTS: usize = 16;

/// Mode of directories vaultlet creates (the umask can only narrow it).
pub const DIR_MODE: u32 = 0o750;

/// Why a file or socket was not put in place.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The directory lets other users replace what we put there.
    #[error(
        "{dir} is writable by other users{why}; refusing to put {what} there (chmod o-w, or use a private directory)"
    )]
    UnsafeDir {
        /// The directory.
        dir: String,
        /// What would have gone there.
        what: &'static str,
        /// Extra detail.
        why: &'static str,
    },
    /// Something other than a socket is at the path.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(String),
    /// Another process is serving on it.
    #[error("{0} is in use by another process")]
    InUse(String),
    /// A socket is there, but whether it is live cannot be told.
    #[error("{path} exists and connecting to it failed with `{source}`, so it may be live; refusing to replace it")]
    Unclear {
        /// The socket path.
        path: String,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<PlaceError> for std::io::Error {
    fn from(e: PlaceError) -> std::io::Error {
        match e {
            PlaceError::Io { source, .. } => source,
            e => std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string()),
        }
    }
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> PlaceError + '_ {
    move |source| PlaceError::Io { path: path.display().to_string(), source }
}

fn errno(path: &Path) -> impl Fn(Errno) -> PlaceError + '_ {
    move |e| PlaceError::Io { path: path.display().to_string(), source: e.into() }
}

/// The directory and the last component of `path`.
fn split(path: &Path) -> Result<(&Path, &std::ffi::OsStr), PlaceError> {
    let name = path.file_name().ok_or_else(|| PlaceError::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok((dir, name))
}

/// Who else may change a directory's entries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shared {
    /// Sticky and world-writable is fine (files).
    Sticky,
    /// Sticky and world-writable only when owned by us or root (sockets).
    StickyOwned,
}

/// Opens `dir` and checks that other users cannot replace entries in it.
/// The checks apply to the opened directory, not to a path resolved again.
fn open_dir(dir: &Path, what: &'static str, shared: Shared) -> Result<OwnedFd, PlaceError> {
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(errno(dir))?;
    let st = rustix::fs::fstat(&fd).map_err(errno(dir))?;
    let mode = st.st_mode;
    if mode & 0o002 != 0 {
        let sticky = mode & 0o1000 != 0;
        let owner_ok = st.st_uid == 0 || st.st_uid == rustix::process::geteuid().as_raw();
        let unsafe_dir = match shared {
            Shared::Sticky => (!sticky).then_some(" without the sticky bit"),
            Shared::StickyOwned if !sticky => Some(" without the sticky bit"),
            Shared::StickyOwned => (!owner_ok).then_some(" and owned by another user"),
        };
        if let Some(why) = unsafe_dir {
            return Err(PlaceError::UnsafeDir { dir: dir.display().to_string(), what, why });
        }
    }
    Ok(fd)
}

/// A name nobody can guess: `.<name>.<16 hex digits><suffix>`.
fn temp_name(name: &std::ffi::OsStr, suffix: &str) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(".");
    // Keep the result short enough for socket paths.
    let n = name.as_bytes();
    s.push(std::ffi::OsStr::from_bytes(&n[..n.len().min(40)]));
    s.push(format!(".{:016x}{suffix}", rand::random::<u64>()));
    s
}

/// Creates `dir` (and missing parents) with [`DIR_MODE`] when it is missing.
pub fn ensure_dir(dir: &Path) -> Result<(), PlaceError> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(io_at(dir))
}

// === files ===

/// Writes `bytes` to `path` atomically with exactly `mode` (and owner/group
/// when given): a reader sees the old file or the new one, never half of
/// one, and never a looser mode.
pub fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> Result<(), PlaceError> {
    let (dir_path, name) = split(path)?;
    let dir = open_dir(dir_path, "a file", Shared::Sticky)?;
    let io = io_at(path);
    for _ in 0..ATTEMPTS {
        let tmp = temp_name(name, ".tmp");
        let fd = match rustix::fs::openat(
            &dir,
            tmp.as_os_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(io(e.into())),
        };
        let placed = (|| -> std::io::Result<()> {
            if owner.is_some() || group.is_some() {
                rustix::fs::fchown(&fd, owner.map(rustix::fs::Uid::from_raw), group.map(rustix::fs::Gid::from_raw))?;
            }
            // After fchown, which may clear mode bits; and exact whatever the umask.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
            let mut f = std::fs::File::from(fd);
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            rustix::fs::renameat(&dir, tmp.as_os_str(), &dir, name)?;
            rustix::fs::fsync(&dir)?;
            Ok(())
        })();
        if let Err(e) = placed {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_os_str(), AtFlags::empty());
            return Err(io(e));
        }
        return Ok(());
    }
    Err(io(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free temporary name after 16 tries")))
}

// === sockets ===

/// The socket vaultlet created: removed at exit only if it is still there.
#[derive(Debug, Clone)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket if the path still holds the one we created; a
    /// socket someone else put there since is left alone.
    pub fn remove(&self) {
        let Ok((dir_path, name)) = split(&self.path) else { return };
        let Ok(dir) = rustix::fs::open(dir_path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        else {
            return;
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_dev == self.dev && st.st_ino == self.ino => {
                let _ = rustix::fs::unlinkat(&dir, name, AtFlags::empty());
            }
            Ok(_) => tracing::warn!(path = %self.path.display(), "the socket was replaced by another file; leaving it"),
            Err(_) => {}
        }
    }
}

/// Binds a Unix socket at `path` with exactly `mode`. A stale socket there
/// (connecting is refused: nobody listens) is replaced; a live one, one
/// whose state cannot be told, or anything that is not a socket is an error.
pub fn bind_socket(path: &Path, mode: u32) -> Result<(std::os::unix::net::UnixListener, SocketFile), PlaceError> {
    let (dir_path, name) = split(path)?;
    ensure_dir(dir_path)?;
    let dir = open_dir(dir_path, "a socket", Shared::StickyOwned)?;
    let shown = || path.display().to_string();
    match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => {}
        Err(e) => return Err(errno(path)(e)),
        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Socket => {
            return Err(PlaceError::NotASocket(shown()));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(PlaceError::InUse(shown())),
            // Only a refusal proves nobody listens; renameat below replaces it.
            Err(e) if e.raw_os_error() == Some(Errno::CONNREFUSED.raw_os_error()) => {
                tracing::info!(path = %path.display(), "replacing a stale socket");
            }
            Err(source) => return Err(PlaceError::Unclear { path: shown(), source }),
        },
    }
    let private = (0..ATTEMPTS)
        .map(|_| temp_name(name, ".d"))
        .find_map(|p| match rustix::fs::mkdirat(&dir, p.as_os_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) => Some(Ok(p)),
            Err(Errno::EXIST) => None,
            Err(e) => Some(Err(errno(path)(e))),
        })
        .unwrap_or_else(|| {
            Err(io_at(path)(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free temporary name")))
        })?;
    let result = (|| {
        let pdir = rustix::fs::openat(
            &dir,
            private.as_os_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // Nobody but us can enter a 0700 directory we just made.
        let st = rustix::fs::fstat(&pdir)?;
        if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
            return Err(std::io::Error::other("temporary directory is not private"));
        }
        let tmp = dir_path.join(&private).join("s");
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        rustix::fs::chmodat(&pdir, "s", Mode::from_raw_mode(mode), AtFlags::empty())?;
        let st = rustix::fs::statat(&pdir, "s", AtFlags::SYMLINK_NOFOLLOW)?;
        rustix::fs::renameat(&pdir, "s", &dir, name)?;
        Ok((listener, SocketFile { path: path.to_owned(), dev: st.st_dev, ino: st.st_ino }))
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(&dir, Path::new(&private).join("s"), AtFlags::empty());
    }
    let _ = rustix::fs::unlinkat(&dir, private.as_os_str(), AtFlags::REMOVEDIR);
    result.map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_sets_exact_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.env");
        write_file(&p, b"A='1'\n", 0o640, None, None).unwrap();
        write_file(&p, b"A='2'\n", 0o600, None, None).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "A='2'\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlink_at_the_final_path_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let p = dir.path().join("app.env");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write_file(&p, b"A='1'\n", 0o600, None, None).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_file());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "A='1'\n");
    }

    #[test]
    fn world_writable_directory_without_sticky_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = write_file(&dir.path().join("app.env"), b"x", 0o600, None, None).unwrap_err();
        assert!(matches!(err, PlaceError::UnsafeDir { .. }), "{err}");
        assert!(err.to_string().contains("sticky"), "{err}");
        let err = bind_socket(&dir.path().join("s.sock"), 0o600).unwrap_err();
        assert!(matches!(err, PlaceError::UnsafeDir { .. }), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing was created");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        write_file(&dir.path().join("app.env"), b"x", 0o600, None, None).unwrap();
    }

    #[test]
    fn socket_gets_exact_mode_and_is_removed_only_while_it_is_ours() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("v.sock");
        let (l, file) = bind_socket(&p, 0o660).unwrap();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
        assert!(std::fs::metadata(dir.path().join("sub")).unwrap().permissions().mode() & 0o027 == 0);
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 1, "private dir removed");
        // Live: a second bind is refused and leaves it alone.
        assert!(matches!(bind_socket(&p, 0o600), Err(PlaceError::InUse(_))));
        // Replaced by someone else: exit leaves the newcomer.
        let other = dir.path().join("other.sock");
        let _l2 = std::os::unix::net::UnixListener::bind(&other).unwrap();
        std::fs::rename(&other, &p).unwrap();
        file.remove();
        assert!(std::os::unix::net::UnixStream::connect(&p).is_ok(), "the newcomer still serves");
        drop(l);
        // Ours again: removed.
        drop(_l2);
        let (_l3, file) = bind_socket(&p, 0o600).unwrap();
        file.remove();
        assert!(std::fs::symlink_metadata(&p).is_err());
    }
}
