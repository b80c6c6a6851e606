//! Unix sockets only their owner can use: mode 0600 from the instant they exist (whatever the
//! umask), in a directory only their owner can enter.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process accepts on this path.
    #[error("{0} is in use by another process")]
    InUse(PathBuf),
    /// The OS refused.
    #[error("cannot create the socket")]
    Io(#[from] std::io::Error),
}

/// Binds a listening Unix socket at `path` with mode 0600. A stale socket file (nobody accepting)
/// is replaced; a live one is an error.
///
/// The mode does not depend on the umask: the socket's inode gets 0600 before `bind` creates the
/// file (Linux creates it with the socket's mode masked by the umask, so it is never more open
/// than 0600), and exactly 0600 right after.
pub fn bind_private(path: &Path) -> Result<UnixListener, BindError> {
    if std::fs::symlink_metadata(path).is_ok() {
        if crate::transport::socket_in_use(path) {
            return Err(BindError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path)?;
    }
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // SAFETY: fchmod on a file descriptor we own (the socket just created); it reads no memory.
    if unsafe { libc::fchmod(sock.as_raw_fd(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    sock.bind(&SockAddr::unix(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    sock.listen(128)?;
    // SAFETY: into_raw_fd hands over sole ownership of a valid, listening Unix stream socket.
    Ok(unsafe { UnixListener::from_raw_fd(sock.into_raw_fd()) })
}

/// Why the private runtime directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    /// It could not be created or inspected.
    #[error("cannot create the private directory {path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It exists but is not a directory we own (someone else made it first).
    #[error(
        "{path} exists but is not a directory owned by this user (uid {uid}): refusing to put \
         control sockets there; remove it or pass --control PATH in a directory of your own"
    )]
    NotOurs {
        /// The path.
        path: PathBuf,
        /// Our uid.
        uid: u32,
    },
}

/// The directory for this user's control sockets, created with mode 0700 if missing:
/// `$XDG_RUNTIME_DIR/ferry` when that is set, `/run/ferry` for root, else `ferry-UID` in the temp
/// directory. An existing directory must be a real directory (not a symlink) owned by this user;
/// its mode is then forced to 0700.
pub fn runtime_dir() -> Result<PathBuf, RuntimeDirError> {
    // SAFETY: getuid cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("ferry"),
        None if uid == 0 => PathBuf::from("/run/ferry"),
        None => std::env::temp_dir().join(format!("ferry-{uid}")),
    };
    private_dir(&dir, uid)?;
    Ok(dir)
}

/// Creates `dir` (mode 0700) or checks that the existing one is ours, and forces its mode to 0700.
pub fn private_dir(dir: &Path, uid: u32) -> Result<(), RuntimeDirError> {
    let io = |source| RuntimeDirError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io)?;
    if !meta.is_dir() || meta.uid() != uid {
        return Err(RuntimeDirError::NotOurs {
            path: dir.to_path_buf(),
            uid,
        });
    }
    // DirBuilder's mode is masked by the umask; the directory must be exactly 0700.
    if meta.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// The default control socket of VM host process `pid`.
pub fn default_control_path(pid: u32) -> Result<PathBuf, RuntimeDirError> {
    Ok(runtime_dir()?.join(format!("vm-{pid}.sock")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn sockets_are_0600_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.sock");
        // SAFETY: umask only swaps the process's file mode mask.
        let old = unsafe { libc::umask(0o002) };
        let l = bind_private(&p);
        // SAFETY: as above, restoring it.
        unsafe { libc::umask(old) };
        let l = l.unwrap();
        assert_eq!(mode(&p), 0o600);
        // A live socket is not replaced; a stale one is.
        assert!(matches!(bind_private(&p), Err(BindError::InUse(_))));
        drop(l);
        let _l = bind_private(&p).unwrap();
        assert_eq!(mode(&p), 0o600);
    }

    #[test]
    fn private_dirs_are_0700_and_must_be_ours() {
        let d = tempfile::tempdir().unwrap();
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let p = d.path().join("rt");
        private_dir(&p, uid).unwrap();
        assert_eq!(mode(&p), 0o700);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        private_dir(&p, uid).unwrap();
        assert_eq!(
            mode(&p),
            0o700,
            "an existing directory is made private again"
        );
        // Another user's directory (or a symlink to one) is refused.
        assert!(matches!(
            private_dir(&p, uid + 1),
            Err(RuntimeDirError::NotOurs { .. })
        ));
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(
            private_dir(&link, uid),
            Err(RuntimeDirError::NotOurs { .. })
        ));
    }
}
