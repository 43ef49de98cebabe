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
//! * vaultlet's own files (the sealed state) go only into a directory that
//!   belongs to vaultlet's uid or root and that others cannot write, sticky
//!   or not: in a shared sticky directory another user could hold the name
//!   before the first write, and vaultlet could never replace it;
//! * files vaultlet reads for itself (the state, its key) are opened with
//!   `O_NOFOLLOW | O_NONBLOCK` and checked on the opened descriptor (a
//!   regular file, vaultlet's or root's, no access for others beyond what
//!   the caller allows, bounded in size) before a byte is read: a symlink,
//!   a FIFO or a device planted at the name can neither block vaultlet nor
//!   feed it without end;
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
    /// The directory belongs to another user, who can replace what we put there.
    #[error(
        "{dir} belongs to uid {owner}, who could replace {what} there; it must belong to the uid vaultlet runs as ({euid}) or root"
    )]
    ForeignDir {
        /// The directory.
        dir: String,
        /// What would have gone there.
        what: &'static str,
        /// Its owner.
        owner: u32,
        /// vaultlet's effective uid.
        euid: u32,
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
    /// Never world-writable, and owned by us or root (vaultlet's own files).
    Private,
}

/// Opens `dir` and checks that other users cannot replace entries in it.
/// The checks apply to the opened directory, not to a path resolved again.
fn open_dir(dir: &Path, what: &'static str, shared: Shared) -> Result<OwnedFd, PlaceError> {
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(errno(dir))?;
    let st = rustix::fs::fstat(&fd).map_err(errno(dir))?;
    let mode = st.st_mode;
    let euid = rustix::process::geteuid().as_raw();
    let owner_ok = st.st_uid == 0 || st.st_uid == euid;
    if shared == Shared::Private && !owner_ok {
        return Err(PlaceError::ForeignDir { dir: dir.display().to_string(), what, owner: st.st_uid, euid });
    }
    if mode & 0o002 != 0 {
        let sticky = mode & 0o1000 != 0;
        let unsafe_dir = match shared {
            Shared::Sticky => (!sticky).then_some(" without the sticky bit"),
            Shared::StickyOwned if !sticky => Some(" without the sticky bit"),
            Shared::StickyOwned => (!owner_ok).then_some(" and owned by another user"),
            Shared::Private if sticky => Some(" (sticky, but another user could hold the name first)"),
            Shared::Private => Some(""),
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
    write_in(path, bytes, mode, owner, group, ("a file", Shared::Sticky))
}

/// Writes one of vaultlet's own files (the sealed state) like
/// [`write_file`], mode 0600, into a directory that only vaultlet's uid or
/// root may change (see [`check_own_dir`]).
pub fn write_own_file(path: &Path, bytes: &[u8], what: &'static str) -> Result<(), PlaceError> {
    write_in(path, bytes, 0o600, None, None, (what, Shared::Private))
}

fn write_in(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
    (what, shared): (&'static str, Shared),
) -> Result<(), PlaceError> {
    let (dir_path, name) = split(path)?;
    let dir = open_dir(dir_path, what, shared)?;
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

// === file groups ===

/// One file of a group: its name in the group's directory, content, mode,
/// owner and group.
pub struct GroupFile<'a> {
    /// File name (no directory part).
    pub name: &'a std::ffi::OsStr,
    /// Content.
    pub bytes: &'a [u8],
    /// Mode.
    pub mode: u32,
    /// Owner uid to set.
    pub owner: Option<u32>,
    /// Group gid to set.
    pub group: Option<u32>,
}

/// The link every file of group `bundle` resolves through.
pub fn group_link(bundle: &str) -> String {
    format!(".vaultlet-{bundle}")
}

/// Writes every file of a group so that they switch together, as
/// Kubernetes' atomic writer does: the files go into a fresh directory
/// `dir/.vaultlet-<bundle>.<random>/`, then one `renameat` of a symlink
/// switches `dir/.vaultlet-<bundle>` to it. Each `dir/<name>` is a symlink
/// to `.vaultlet-<bundle>/<name>`, so every path moves to the new version at
/// the same instant; a reader never finds a new certificate next to an old
/// key. The previous version's directory is kept until the next switch, so
/// a reader that resolved the link just before a switch can still finish.
pub fn write_group(dir_path: &Path, bundle: &str, files: &[GroupFile<'_>]) -> Result<(), PlaceError> {
    let dir = open_dir(dir_path, "a file group", Shared::Sticky)?;
    let io = io_at(dir_path);
    let link = group_link(bundle);
    let prefix = format!("{link}.");
    // 1. The new version's directory, private until it is complete.
    let mut version = None;
    for _ in 0..ATTEMPTS {
        let name = format!("{prefix}{:016x}", rand::random::<u64>());
        match rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                version = Some(name);
                break;
            }
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(io(e.into())),
        }
    }
    let Some(version) = version else {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "no free directory name after 16 tries",
        )));
    };
    let filled = (|| -> std::io::Result<()> {
        let vdir = rustix::fs::openat(
            &dir,
            version.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for f in files {
            let fd = rustix::fs::openat(
                &vdir,
                f.name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            if f.owner.is_some() || f.group.is_some() {
                rustix::fs::fchown(
                    &fd,
                    f.owner.map(rustix::fs::Uid::from_raw),
                    f.group.map(rustix::fs::Gid::from_raw),
                )?;
            }
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(f.mode))?;
            let mut w = std::fs::File::from(fd);
            w.write_all(f.bytes)?;
            w.sync_all()?;
        }
        // Readers of a file given to another group must be able to enter.
        if let Some(gid) = files.iter().find_map(|f| f.group) {
            rustix::fs::fchown(&vdir, None, Some(rustix::fs::Gid::from_raw(gid)))?;
        }
        rustix::fs::fchmod(&vdir, Mode::from_raw_mode(DIR_MODE))?;
        rustix::fs::fsync(&vdir)?;
        Ok(())
    })();
    if let Err(e) = filled {
        remove_version(&dir, &version);
        return Err(io(e));
    }
    // 2. The switch: one rename of a symlink.
    let previous = rustix::fs::readlinkat(&dir, link.as_str(), Vec::new()).ok();
    if let Err(e) = replace_with_symlink(&dir, &version, &link) {
        remove_version(&dir, &version);
        return Err(io(e));
    }
    // 3. The stable names, made once (or taken over from plain files).
    for f in files {
        let mut target = std::ffi::OsString::from(format!("{link}/"));
        target.push(f.name);
        let current = rustix::fs::readlinkat(&dir, f.name, Vec::new()).ok();
        if current.as_ref().map(|c| c.as_bytes()) != Some(target.as_bytes()) {
            replace_with_symlink(&dir, &target, f.name).map_err(&io)?;
        }
    }
    rustix::fs::fsync(&dir).map_err(|e| io(e.into()))?;
    // 4. Older versions go; the new one and the one just replaced stay.
    let keep = previous.as_ref().map(|p| p.as_bytes().to_vec());
    if let Ok(mut entries) = rustix::fs::Dir::read_from(&dir) {
        let mut stale = Vec::new();
        while let Some(Ok(e)) = entries.next() {
            let n = e.file_name().to_bytes();
            let is_version =
                n.strip_prefix(prefix.as_bytes()).is_some_and(|r| r.len() == 16 && r.iter().all(u8::is_ascii_hexdigit));
            if is_version && n != version.as_bytes() && Some(n) != keep.as_deref() {
                stale.push(String::from_utf8_lossy(n).into_owned());
            }
        }
        for n in stale {
            remove_version(&dir, &n);
        }
    }
    Ok(())
}

/// Puts a symlink to `target` at `name`, replacing whatever is there in one
/// `renameat`.
fn replace_with_symlink(
    dir: &OwnedFd,
    target: impl AsRef<std::ffi::OsStr>,
    name: impl AsRef<std::ffi::OsStr>,
) -> std::io::Result<()> {
    let name = name.as_ref();
    for _ in 0..ATTEMPTS {
        let tmp = temp_name(name, ".tmp");
        match rustix::fs::symlinkat(target.as_ref(), dir, tmp.as_os_str()) {
            Ok(()) => {}
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = rustix::fs::renameat(dir, tmp.as_os_str(), dir, name) {
            let _ = rustix::fs::unlinkat(dir, tmp.as_os_str(), AtFlags::empty());
            return Err(e.into());
        }
        return Ok(());
    }
    Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free temporary name after 16 tries"))
}

/// Removes a version directory and the files in it (never following links).
fn remove_version(dir: &OwnedFd, name: &str) {
    let Ok(vdir) = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let mut names = Vec::new();
    if let Ok(mut entries) = rustix::fs::Dir::read_from(&vdir) {
        while let Some(Ok(e)) = entries.next() {
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(std::ffi::OsStr::from_bytes(n).to_owned());
            }
        }
    }
    for n in names {
        let _ = rustix::fs::unlinkat(&vdir, n.as_os_str(), AtFlags::empty());
    }
    let _ = rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR);
}

// === vaultlet's own files ===

/// Checks, before vaultlet runs, the directory its own file `path` goes
/// in: it (or, while it does not exist yet, the nearest ancestor that does,
/// under which vaultlet creates it 0750) must belong to vaultlet's uid or
/// root and must not be writable by others, sticky or not.
pub fn check_own_dir(path: &Path, what: &'static str) -> Result<(), PlaceError> {
    let (dir, _) = split(path)?;
    let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(Path::new("/"));
    open_dir(existing, what, Shared::Private).map(drop)
}

/// What a file vaultlet reads for itself must be.
pub struct OwnFile {
    /// What it is, for messages ("the state file").
    pub what: &'static str,
    /// Mode bits it must not have: 0o022 (nobody else may change it) or
    /// 0o077 (nobody else may touch it).
    pub forbidden_mode: u32,
    /// The longest content accepted.
    pub max_len: u64,
    /// Whether its directory must follow the rules of [`check_own_dir`]
    /// (a file vaultlet writes there itself).
    pub private_dir: bool,
}

/// Why one of vaultlet's own files was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Nothing at the path, or no directory for it.
    #[error("file not found")]
    Missing,
    /// A symlink, a FIFO, a device, a directory…: never read.
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    /// Another user's file.
    #[error("it belongs to uid {owner}; it must belong to the uid vaultlet runs as ({euid}) or root")]
    Owner {
        /// The file's owner.
        owner: u32,
        /// vaultlet's effective uid.
        euid: u32,
    },
    /// Group or others have access they must not have.
    #[error("its mode {0:04o} gives group or others access they must not have")]
    Mode(u32),
    /// Longer than any file vaultlet writes or accepts there.
    #[error("it is longer than {0} bytes")]
    TooLong(u64),
    /// The directory is not safe (see [`check_own_dir`]).
    #[error(transparent)]
    Dir(PlaceError),
    /// It could not be read.
    #[error("cannot read it: {0}")]
    Io(#[source] std::io::Error),
}

fn kind(mode: u32) -> &'static str {
    match FileType::from_raw_mode(mode) {
        FileType::Directory => "a directory",
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Socket => "a socket",
        FileType::Symlink => "a symbolic link",
        _ => "not a plain file",
    }
}

/// Reads one of vaultlet's own files without trusting what is at the path:
/// opened with `O_NOFOLLOW | O_NONBLOCK` (a symlink is refused, a FIFO does
/// not block), checked on the opened descriptor (a regular file owned by
/// vaultlet's uid or root, none of `forbidden_mode`, at most `max_len`
/// bytes), then read through a reader that stops after `max_len + 1` bytes,
/// so a file that grows meanwhile cannot make it read more.
pub fn read_own_file(path: &Path, rules: &OwnFile) -> Result<zeroize::Zeroizing<Vec<u8>>, ReadError> {
    use std::io::Read as _;
    let io = |e: Errno| match e {
        Errno::NOENT | Errno::NOTDIR => ReadError::Missing,
        e => ReadError::Io(e.into()),
    };
    let (dir_path, name) = split(path).map_err(ReadError::Dir)?;
    let dir = if rules.private_dir {
        open_dir(dir_path, rules.what, Shared::Private).map_err(|e| match e {
            PlaceError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => ReadError::Missing,
            PlaceError::Io { source, .. } => ReadError::Io(source),
            e => ReadError::Dir(e),
        })?
    } else {
        rustix::fs::open(dir_path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(io)?
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dir, name, flags, Mode::empty()).map_err(|e| match e {
        Errno::LOOP => ReadError::NotRegular("a symbolic link"),
        // A socket cannot be opened at all.
        Errno::NXIO => ReadError::NotRegular("a socket"),
        e => io(e),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(io)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(ReadError::NotRegular(kind(st.st_mode)));
    }
    let euid = rustix::process::geteuid().as_raw();
    if st.st_uid != euid && st.st_uid != 0 {
        return Err(ReadError::Owner { owner: st.st_uid, euid });
    }
    if st.st_mode & rules.forbidden_mode != 0 {
        return Err(ReadError::Mode(st.st_mode & 0o7777));
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size > rules.max_len {
        return Err(ReadError::TooLong(rules.max_len));
    }
    // One allocation: of the bound for small files (a key never moves to
    // a second, unwiped buffer), of what fstat saw for large ones (a file
    // that grows meanwhile may still reallocate, up to the bound).
    let want = if rules.max_len <= 1 << 16 { rules.max_len } else { size };
    let cap = usize::try_from(want.saturating_add(1)).unwrap_or(usize::MAX);
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(cap));
    std::fs::File::from(fd).take(rules.max_len.saturating_add(1)).read_to_end(&mut buf).map_err(ReadError::Io)?;
    if buf.len() as u64 > rules.max_len {
        return Err(ReadError::TooLong(rules.max_len));
    }
    Ok(buf)
}

/// Reads a file the operator points vaultlet at (config, template source,
/// role_id and secret_id, CA bundle, client certificate and key) without
/// letting what sits at the path stall or swell vaultlet: opened with
/// `O_NONBLOCK` (a FIFO does not block), checked to be a regular file on
/// the opened descriptor, and read through a reader that stops after
/// `max_len + 1` bytes, so a device such as `/dev/zero` or a file that
/// grows meanwhile cannot make it read more. Symlinks are followed: these
/// files live where their owners put them (Kubernetes secret volumes are
/// links), and who may change them is warned about elsewhere.
pub fn read_input_file(path: &Path, max_len: u64) -> Result<zeroize::Zeroizing<Vec<u8>>, ReadError> {
    use std::io::Read as _;
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
        Errno::NOENT | Errno::NOTDIR => ReadError::Missing,
        Errno::NXIO => ReadError::NotRegular("a socket"),
        e => ReadError::Io(e.into()),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| ReadError::Io(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(ReadError::NotRegular(kind(st.st_mode)));
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size > max_len {
        return Err(ReadError::TooLong(max_len));
    }
    let cap = usize::try_from(size.saturating_add(1)).unwrap_or(usize::MAX);
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(cap));
    std::fs::File::from(fd).take(max_len.saturating_add(1)).read_to_end(&mut buf).map_err(ReadError::Io)?;
    if buf.len() as u64 > max_len {
        return Err(ReadError::TooLong(max_len));
    }
    Ok(buf)
}

/// The longest role_id, secret_id or wrapping-token file read.
pub const MAX_CREDENTIAL_FILE: u64 = 64 * 1024;

/// The longest config file, template source, CA bundle or client
/// certificate file read.
pub const MAX_INPUT_FILE: u64 = 16 * 1024 * 1024;

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

    /// `read_input_file` on another thread, failing the test if it blocks.
    fn read_input_within(path: &Path, max_len: u64) -> Result<Vec<u8>, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = path.to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(read_input_file(&path, max_len).map(|b| b.to_vec()).map_err(|e| e.to_string()));
        });
        rx.recv_timeout(std::time::Duration::from_secs(30)).expect("read_input_file blocked")
    }

    #[test]
    fn input_files_at_a_fifo_or_a_device_neither_block_nor_read_without_end() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("secret_id");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::RUSR | Mode::WUSR, 0).unwrap();
        let e = read_input_within(&fifo, MAX_CREDENTIAL_FILE).unwrap_err();
        assert!(e.contains("a FIFO"), "{e}");
        let e = read_input_within(Path::new("/dev/zero"), MAX_CREDENTIAL_FILE).unwrap_err();
        assert!(e.contains("a character device"), "{e}");
        // A link is followed (Kubernetes secret volumes are links)…
        let real = dir.path().join("real");
        std::fs::write(&real, "role-123\n").unwrap();
        let link = dir.path().join("role_id");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(read_input_within(&link, MAX_CREDENTIAL_FILE).unwrap(), b"role-123\n");
        // …to a link to a device, it is refused like the device.
        let to_dev = dir.path().join("to_dev");
        std::os::unix::fs::symlink("/dev/zero", &to_dev).unwrap();
        assert!(read_input_within(&to_dev, MAX_CREDENTIAL_FILE).is_err());
        // One byte over the bound is refused, the bound itself is read.
        std::fs::write(&real, vec![b'a'; 10]).unwrap();
        assert_eq!(read_input_within(&real, 10).unwrap().len(), 10);
        assert!(read_input_within(&real, 9).unwrap_err().contains("longer than 9 bytes"));
        assert_eq!(read_input_within(&dir.path().join("none"), 10).unwrap_err(), "file not found");
    }

    fn group(dir: &Path, cert: &str, key: &str) {
        let files = [
            GroupFile { name: "tls.crt".as_ref(), bytes: cert.as_bytes(), mode: 0o644, owner: None, group: None },
            GroupFile { name: "tls.key".as_ref(), bytes: key.as_bytes(), mode: 0o600, owner: None, group: None },
        ];
        write_group(dir, "tls", &files).unwrap();
    }

    #[test]
    fn a_file_group_switches_with_one_link_and_keeps_one_old_version() {
        let dir = tempfile::tempdir().unwrap();
        // A plain file from before the group is taken over.
        std::fs::write(dir.path().join("tls.key"), "old plain").unwrap();
        for v in 1..=4 {
            group(dir.path(), &format!("cert{v}"), &format!("key{v}"));
            assert_eq!(std::fs::read_to_string(dir.path().join("tls.crt")).unwrap(), format!("cert{v}"));
            assert_eq!(std::fs::read_to_string(dir.path().join("tls.key")).unwrap(), format!("key{v}"));
        }
        let key = dir.path().join("tls.key");
        assert_eq!(std::fs::read_link(&key).unwrap(), Path::new(".vaultlet-tls/tls.key"));
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o7777, 0o600);
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        // The link, the current and the previous version, the two names: no temp files.
        assert_eq!(names.len(), 5, "{names:?}");
        assert_eq!(names.iter().filter(|n| n.starts_with(".vaultlet-tls.")).count(), 2, "{names:?}");
        let cur = std::fs::read_link(dir.path().join(".vaultlet-tls")).unwrap();
        let vmode = std::fs::metadata(dir.path().join(&cur)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(vmode, 0o750);
    }

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
