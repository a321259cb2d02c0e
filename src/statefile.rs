//! Opening files under `state_dir` without following symlinks.
//!
//! lineship usually runs as root (or as a service user whose `state_dir` others may write to).
//! A symlink planted where one of its files goes must never make it open, truncate or append to
//! the link's target: every file of its own is opened with `O_NOFOLLOW`, and what was opened
//! must be a regular file. Directories are checked with `symlink_metadata` before use.
//!
//! `state_dir` itself may be a symlink (an operator's choice, e.g. onto a data disk); only what
//! lineship creates inside it is held to these rules.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` with `opts`, refusing a symlink (`ELOOP`) and anything that is not a regular
/// file (`EINVAL` with a message naming what it is). Opening a FIFO never blocks.
pub fn open(path: &Path, opts: &mut OpenOptions) -> io::Result<File> {
    let f = opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{} is a symlink; lineship never follows symlinks in its state directory",
                        path.display()
                    ),
                )
            } else {
                e
            }
        })?;
    let kind = f.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a {}, not a regular file",
                path.display(),
                kind_name(kind)
            ),
        ));
    }
    // O_NONBLOCK only kept the open of a FIFO from hanging; regular files ignore it, but clear
    // it so the descriptor is what callers expect.
    set_blocking(&f)?;
    Ok(f)
}

/// Opens an existing file of ours for reading.
pub fn open_read(path: &Path) -> io::Result<File> {
    open(path, OpenOptions::new().read(true))
}

/// Creates a new file for appending (it must not exist, so nothing is followed or truncated).
pub fn create_new(path: &Path) -> io::Result<File> {
    open(path, OpenOptions::new().append(true).create_new(true))
}

/// Opens a file of ours for appending, creating it if missing.
pub fn open_append(path: &Path) -> io::Result<File> {
    open(path, OpenOptions::new().append(true).create(true))
}

/// Atomically replaces `dir/name` with `bytes`: written to `dir/name.tmp`, renamed over
/// `name`. A leftover tmp file is removed first; anything else under either name (a directory,
/// a FIFO) is renamed aside to `NAME.not-ours`; nothing is followed. With `durable`, the file
/// and the directory are fsynced, so the new contents survive a power loss; without, they
/// survive a crash of the process only.
pub fn replace(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    match fs::symlink_metadata(&tmp) {
        Ok(m) if m.is_file() || m.file_type().is_symlink() => fs::remove_file(&tmp)?,
        Ok(_) => set_aside(&tmp)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // A symlink under the final name is replaced by the rename; a directory would refuse it.
    if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
        set_aside(&path)?;
    }
    {
        let mut f = create_new(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, &path)?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Renames what stands at `path` to an unused `NAME.not-ours` beside it, logging it.
fn set_aside(path: &Path) -> io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let aside = unused_name(&path.with_file_name(format!("{name}.not-ours")));
    fs::rename(path, &aside)?;
    tracing::error!(path = %path.display(), moved_to = %aside.display(), "a file lineship writes was not a regular file; it was renamed aside untouched");
    Ok(())
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and its parents) if missing. Where something else than a directory stands
/// under that name (a symlink, a file), it is renamed aside to `NAME.not-ours` (never
/// followed, never deleted) and a real directory is made: a planted link must neither redirect
/// lineship's files nor keep it from starting. Only `dir` itself is checked, not its parents.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
        set_aside(dir)?;
    }
    fs::create_dir_all(dir)
}

/// `path`, or `path.1`, `path.2`, … : the first name not taken.
pub fn unused_name(path: &Path) -> std::path::PathBuf {
    let mut candidate = path.to_path_buf();
    let mut n = 1;
    while fs::symlink_metadata(&candidate).is_ok() {
        candidate = std::path::PathBuf::from(format!("{}.{n}", path.display()));
        n += 1;
    }
    candidate
}

/// A file type in words, for messages.
pub fn kind_name(kind: fs::FileType) -> &'static str {
    if kind.is_symlink() {
        "symlink"
    } else if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "device"
    } else {
        "regular file"
    }
}

fn set_blocking(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a valid descriptor owned by `f`.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_symlink_is_never_followed_and_its_target_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        fs::write(&target, b"keep me").unwrap();
        let link = dir.path().join("file");
        symlink(&target, &link).unwrap();
        assert!(open_append(&link).is_err());
        assert!(open_read(&link).is_err());
        assert!(create_new(&link).is_err());
        // A tmp file planted as a symlink is removed, not written through.
        symlink(&target, dir.path().join("state.tmp")).unwrap();
        replace(dir.path(), "state", b"new", true).unwrap();
        assert_eq!(fs::read(dir.path().join("state")).unwrap(), b"new");
        // And the final name as a symlink is replaced, not followed.
        replace(dir.path(), "file", b"mine", false).unwrap();
        // A directory under the tmp or the final name is renamed aside.
        fs::create_dir(dir.path().join("other.tmp")).unwrap();
        fs::create_dir(dir.path().join("other")).unwrap();
        replace(dir.path(), "other", b"x", true).unwrap();
        assert_eq!(fs::read(dir.path().join("other")).unwrap(), b"x");
        assert!(dir.path().join("other.tmp.not-ours").is_dir());
        assert!(dir.path().join("other.not-ours").is_dir());
        assert!(!fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&target).unwrap(), b"keep me");
    }

    #[test]
    fn a_fifo_or_directory_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_read(&fifo).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = open_read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn ensure_dir_renames_a_symlink_aside_and_makes_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("spool");
        symlink(&real, &link).unwrap();
        ensure_dir(&link).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().is_dir());
        let aside = dir.path().join("spool.not-ours");
        assert!(fs::symlink_metadata(&aside)
            .unwrap()
            .file_type()
            .is_symlink());
        // A second time, the name aside is not reused.
        fs::remove_dir(&link).unwrap();
        fs::write(&link, b"a file").unwrap();
        ensure_dir(&link).unwrap();
        assert_eq!(
            fs::read(dir.path().join("spool.not-ours.1")).unwrap(),
            b"a file"
        );
        ensure_dir(&dir.path().join("fresh/nested")).unwrap();
    }
}
