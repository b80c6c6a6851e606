//! The run directory: one directory per VM with what a restarted daemon needs to adopt it.
//!
//! ```text
//! RUN_DIR/vms/NAME/vm.json       what the VM is (written before its process starts)
//! RUN_DIR/vms/NAME/control.sock  its VM host process's control socket
//! RUN_DIR/vms/NAME/vm.log        that process's stdout and stderr
//! RUN_DIR/vms/NAME/console.log   the guest's COM1
//! ```
//!
//! The directories are 0700: a control socket can stop or migrate its VM.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferry_host::RamBackingChoice;
use serde::{Deserialize, Serialize};

/// What a VM process does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Booted here from a kernel image (`ferry vm run`).
    Run,
    /// Arrived, or is arriving, by migration (`ferry vm receive`).
    Receive,
}

/// `vm.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMeta {
    /// The VM's name.
    pub name: String,
    /// How its process started.
    pub role: Role,
    /// Guest RAM, bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The kernel image (role run).
    pub kernel: Option<PathBuf>,
    /// What its guest RAM is made of (role run).
    #[serde(default)]
    pub ram_backing: RamBackingChoice,
    /// Its process (set once started).
    pub pid: Option<u32>,
    /// When it was created here, ms since the Unix epoch.
    pub created_unix_ms: u64,
}

/// What [`RunDir::scan`] found: VMs, and directories that are not (name, why).
pub type Scan = (Vec<VmMeta>, Vec<(String, String)>);

/// The run directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory at `root` (created, 0700, if missing).
    pub fn open(root: &Path) -> std::io::Result<RunDir> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root.join("vms"))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        Ok(RunDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory of VM `name`.
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.root.join("vms").join(name)
    }

    /// Its control socket.
    pub fn control(&self, name: &str) -> PathBuf {
        self.vm_dir(name).join("control.sock")
    }

    /// Its process's log.
    pub fn log(&self, name: &str) -> PathBuf {
        self.vm_dir(name).join("vm.log")
    }

    /// Its guest console.
    pub fn console(&self, name: &str) -> PathBuf {
        self.vm_dir(name).join("console.log")
    }

    /// Creates VM `name`'s directory; fails if it exists (another VM of that name is here).
    pub fn create(&self, meta: &VmMeta) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(self.vm_dir(&meta.name))?;
        self.write(meta)
    }

    /// Writes `vm.json` atomically.
    pub fn write(&self, meta: &VmMeta) -> std::io::Result<()> {
        let dir = self.vm_dir(&meta.name);
        let tmp = dir.join("vm.json.tmp");
        let text = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, dir.join("vm.json"))
    }

    /// Removes VM `name`'s directory.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.vm_dir(name)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Every VM directory with a readable `vm.json`; those without one are returned as errors
    /// (name, reason) so the caller can say so.
    pub fn scan(&self) -> std::io::Result<Scan> {
        let mut found = Vec::new();
        let mut bad = Vec::new();
        for entry in std::fs::read_dir(self.root.join("vms"))? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            match std::fs::read(entry.path().join("vm.json"))
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<VmMeta>(&b).map_err(|e| e.to_string()))
            {
                Ok(m) if m.name == name => found.push(m),
                Ok(m) => bad.push((name, format!("vm.json names another VM ({})", m.name))),
                Err(e) => bad.push((name, e)),
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((found, bad))
    }

    /// The last `lines` lines of VM `name`'s process log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let s = std::fs::read_to_string(self.log(name)).unwrap_or_default();
        let mut tail: Vec<&str> = s.lines().rev().take(lines).collect();
        tail.reverse();
        tail.join("\n")
    }
}

/// Whether process `pid` is alive and its command line mentions `socket` (so a reused pid is not
/// taken for the VM's process).
pub fn process_serves(pid: u32, socket: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state is the field after the parenthesised command name; a zombie has exited.
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    let want = socket.as_os_str().as_encoded_bytes();
    !zombie && cmdline.split(|&b| b == 0).any(|arg| arg == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str) -> VmMeta {
        VmMeta {
            name: name.into(),
            role: Role::Run,
            memory: 64 << 20,
            vcpus: 1,
            kernel: Some("/k.img".into()),
            ram_backing: RamBackingChoice::Auto,
            pid: Some(42),
            created_unix_ms: 1,
        }
    }

    #[test]
    fn create_scan_remove() {
        let t = tempfile::tempdir().unwrap();
        let rd = RunDir::open(&t.path().join("run")).unwrap();
        let mode = std::fs::metadata(t.path().join("run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        rd.create(&meta("a")).unwrap();
        rd.create(&meta("b")).unwrap();
        assert!(rd.create(&meta("a")).is_err(), "a second VM named a");
        std::fs::create_dir(rd.vm_dir("junk")).unwrap();
        let (found, bad) = rd.scan().unwrap();
        assert_eq!(found, vec![meta("a"), meta("b")]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, "junk");
        rd.remove("a").unwrap();
        rd.remove("a").unwrap();
        assert_eq!(rd.scan().unwrap().0, vec![meta("b")]);
    }

    #[test]
    fn a_pid_is_matched_by_its_command_line() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Until the child has exec'd, its command line is ours.
        let t = std::time::Instant::now();
        while !process_serves(child.id(), Path::new("30")) {
            assert!(t.elapsed().as_secs() < 5, "sleep 30 never showed up");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!process_serves(child.id(), Path::new("/other.sock")));
        child.kill().unwrap();
        // Killed but not reaped: a zombie is not alive.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!process_serves(child.id(), Path::new("30")));
        child.wait().unwrap();
    }
}
