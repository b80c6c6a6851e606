//! Moving threads into named network namespaces (`/var/run/netns/<name>`, as `ip netns` creates them).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use crate::LabError;

/// Path of the bind-mounted namespace file `ip netns add <name>` creates.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// Moves the calling thread (only this thread) into the named network namespace.
///
/// Sockets the thread creates afterwards live in that namespace, and so do threads it spawns.
pub fn enter_netns(name: &str) -> Result<(), LabError> {
    let file = File::open(netns_path(name)).map_err(|source| LabError::Netns {
        name: name.to_string(),
        source,
    })?;
    setns_net(&file).map_err(|source| LabError::Netns {
        name: name.to_string(),
        source,
    })
}

fn setns_net(file: &File) -> io::Result<()> {
    // SAFETY: `file` is borrowed for the whole call, so its descriptor is open and valid;
    // setns(2) only reads the descriptor and the flag and touches no memory of ours.
    // CLONE_NEWNET is permitted for one thread of a multithreaded process and changes only
    // the calling thread's network namespace, which no Rust invariant depends on.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A thread running inside a network namespace, from [`spawn_in_netns`].
#[derive(Debug)]
pub struct NetnsThread<T> {
    inner: JoinHandle<Option<T>>,
}

impl<T> NetnsThread<T> {
    /// Waits for the thread and returns its result (`Err` if it panicked).
    pub fn join(self) -> thread::Result<T> {
        // The closure only returns None when entering the namespace failed, and then
        // spawn_in_netns returned an error instead of this handle.
        self.inner
            .join()
            .map(|v| v.expect("netns thread entered its namespace"))
    }

    /// Whether the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }
}

/// Spawns a thread that enters the named network namespace and then runs `f`.
///
/// Returns once the thread is inside the namespace (or with the error if it could not enter it).
pub fn spawn_in_netns<F, T>(name: &str, f: F) -> Result<NetnsThread<T>, LabError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let file = File::open(netns_path(name)).map_err(|source| LabError::Netns {
        name: name.to_string(),
        source,
    })?;
    let (tx, rx) = mpsc::channel();
    let inner = thread::Builder::new()
        .name(format!("ns:{name}"))
        .spawn(move || {
            let entered = setns_net(&file);
            drop(file);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            ok.then(f)
        })
        .map_err(LabError::Thread)?;
    match rx.recv() {
        Ok(Ok(())) => Ok(NetnsThread { inner }),
        Ok(Err(source)) => Err(LabError::Netns {
            name: name.to_string(),
            source,
        }),
        Err(_) => Err(LabError::Netns {
            name: name.to_string(),
            source: io::Error::other("namespace thread died before entering"),
        }),
    }
}
