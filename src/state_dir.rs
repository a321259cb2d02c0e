//! The state directory (`state_dir`): the spool, dead letters, tail checkpoints and the lock
//! that keeps two processes from sharing them. [`prepare`] creates it, checks that this process
//! can write there, and locks it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

/// Creates `dir` if needed, checks that it is writable and takes its lock, held until the
/// returned `Flock` is dropped (or the process dies).
pub fn prepare(dir: &Path) -> anyhow::Result<Flock<File>> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create state_dir {}; create it or point state_dir at a writable directory",
            dir.display()
        )
    })?;
    check_writable(dir)?;
    lock(dir)
}

/// Fails with a clear message unless this process can create files in `dir`.
pub fn check_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(format!(".lineship-write-test.{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => {
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            anyhow::bail!(
                "state_dir {} is not writable by this process (uid {uid}): {e}. The spool, dead letters and checkpoints live there: fix its owner/permissions (under systemd, StateDirectory=lineship creates it for the service user) or point state_dir at a writable directory",
                dir.display()
            )
        }
    }
}

/// Takes an exclusive `flock` on `state_dir/lock`, so two processes never share a state_dir.
fn lock(dir: &Path) -> anyhow::Result<Flock<File>> {
    let path = dir.join("lock");
    // Never through a symlink: the file is truncated below. Whatever is not a regular file
    // is renamed aside (a planted link must not keep the daemon from starting either).
    if let Ok(m) = std::fs::symlink_metadata(&path) {
        if !m.is_file() {
            let aside = crate::statefile::unused_name(&dir.join("lock.not-ours"));
            std::fs::rename(&path, &aside).with_context(|| {
                format!(
                    "{} is not a regular file and cannot be renamed aside; remove it",
                    path.display()
                )
            })?;
            tracing::warn!(path = %path.display(), moved_to = %aside.display(), "the lock file was not a regular file; it was renamed aside untouched");
        }
    }
    let f = crate::statefile::open(
        &path,
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
    )
    .with_context(|| format!("cannot open lock file {}", path.display()))?;
    // Held until the returned `Flock` is dropped at the end of `run` (or the process dies).
    // Its drop unlocks explicitly and panics only if `LOCK_UN` fails, which it cannot on the
    // open fd it owns.
    let mut f = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut f, _)) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            anyhow::bail!(
            "state_dir {} is in use by another lineship process (pid {}); stop it, or give this run its own state_dir",
            dir.display(),
                pid.trim()
            );
        }
    };
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_lock_file_is_never_truncated_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&victim, state.join("lock")).unwrap();
        let _lock = lock(&state).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(state.join("lock"))
            .unwrap()
            .is_file());
        assert!(std::fs::symlink_metadata(state.join("lock.not-ours"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
