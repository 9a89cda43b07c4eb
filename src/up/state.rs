//! The state file of a tenant started with `tandem up`, and the process checks `status` and `down`
//! rely on.
//!
//! The supervisor owns the file (`monitor.json` in the tenant dir) and rewrites it whole on every
//! change (a lane restarted, the proxy's target moved) by writing a temporary file and renaming
//! it, so a reader never sees half a file. It records every process the supervisor started, which
//! is what lets `down` prove nothing is left behind. A process is recorded as its pid *and* its
//! start time (from `/proc/PID/stat`), and only signalled while both still match, so a recycled
//! pid is never killed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The format version; a reader refuses another one rather than misreading it.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpState {
    pub version: u32,
    pub tenant: String,
    pub model: String,
    pub dir: PathBuf,
    pub shared_dir: PathBuf,
    pub supervisor: ProcId,
    /// Proxies are bound and lanes started (set once, before `up` returns).
    pub ready: bool,
    pub proxies: Vec<ProxyState>,
    pub lanes: Vec<LaneState>,
    /// The lane new connections go to (`None`: no lane is active; connections are refused).
    pub routed_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyState {
    pub name: String,
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneState {
    pub name: String,
    /// The running process (`None` while waiting to restart, or after giving up).
    pub pid: Option<u32>,
    /// Every process this lane has had, oldest first: `down` and the tests check all are gone.
    pub pids: Vec<ProcId>,
    pub jms: u16,
    pub stomp: u16,
    pub http: u16,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// The monitor stopped restarting it (too many failures in a row).
    pub given_up: bool,
    pub log_file: PathBuf,
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("monitor.json")
}

impl UpState {
    /// Reads the state file in `dir`; a missing file says no tenant is up there.
    pub fn read(dir: &Path) -> anyhow::Result<UpState> {
        let path = state_path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                anyhow::bail!(
                    "no tenant is up in {} (no {}); start one with `tandem up SPEC --dir {}`",
                    dir.display(),
                    path.display(),
                    dir.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: UpState = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a tandem up state file", path.display()))?;
        anyhow::ensure!(
            state.version == STATE_VERSION,
            "{} has format version {}, this tandem reads {STATE_VERSION}",
            path.display(),
            state.version
        );
        Ok(state)
    }

    /// Writes the whole file atomically (temporary file, fsync, rename).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let path = state_path(dir);
        let tmp = dir.join("monitor.json.tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }

    /// Every process ever recorded: the supervisor and all lanes' processes.
    pub fn all_procs(&self) -> Vec<ProcId> {
        let mut v = vec![self.supervisor];
        for l in &self.lanes {
            v.extend(&l.pids);
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// A process, told apart from a later one that reuses its pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: u64,
}

impl ProcId {
    /// The process `pid` as it is now; `None` if it does not exist.
    pub fn of(pid: u32) -> Option<ProcId> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // After the name: state is field 3, start time field 22 (1-based), i.e. index 19 here.
        let start = fields.get(19)?.parse().ok()?;
        Some(ProcId { pid, start })
    }

    /// Still the same process, and not a zombie.
    pub fn running(&self) -> bool {
        alive(self.pid) && ProcId::of(self.pid).is_some_and(|now| now.start == self.start)
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        if self.running() {
            signal(self.pid, sig);
        }
    }
}

/// A process that exists and is not a zombie. A zombie has exited (only its parent has not
/// collected its status yet), so for "is anything still running" it counts as gone.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the command name in parentheses, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Polls until none of `procs` runs or `within` has passed; returns those still running.
pub fn wait_gone(procs: &[ProcId], within: Duration) -> Vec<ProcId> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left: Vec<ProcId> = procs.iter().copied().filter(ProcId::running).collect();
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> UpState {
        UpState {
            version: STATE_VERSION,
            tenant: "acme".into(),
            model: "orders".into(),
            dir: dir.to_path_buf(),
            shared_dir: dir.join("shared"),
            supervisor: ProcId { pid: 10, start: 5 },
            ready: true,
            proxies: vec![ProxyState {
                name: "jms".into(),
                listen: "127.0.0.1:61616".into(),
            }],
            lanes: vec![LaneState {
                name: "a".into(),
                pid: Some(12),
                pids: vec![ProcId { pid: 12, start: 7 }, ProcId { pid: 11, start: 6 }],
                jms: 61626,
                stomp: 61623,
                http: 8171,
                restarts: 1,
                last_exit: Some("signal 9".into()),
                given_up: false,
                log_file: dir.join("lane-a/tandem.log"),
            }],
            routed_to: Some("a".into()),
        }
    }

    #[test]
    fn round_trip_and_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let err = UpState::read(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("no tenant is up"), "{err}");
        let s = sample(tmp.path());
        s.write(tmp.path()).unwrap();
        assert_eq!(UpState::read(tmp.path()).unwrap(), s);
        let pids: Vec<u32> = s.all_procs().iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![10, 11, 12]);
        std::fs::write(state_path(tmp.path()), "{ not json").unwrap();
        let err = format!("{:#}", UpState::read(tmp.path()).unwrap_err());
        assert!(err.contains("not a tandem up state file"), "{err}");
        let mut v2 = serde_json::to_value(&s).unwrap();
        v2["version"] = 2.into();
        std::fs::write(state_path(tmp.path()), v2.to_string()).unwrap();
        let err = UpState::read(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("format version 2"), "{err}");
    }

    #[test]
    fn process_checks() {
        let me = ProcId::of(std::process::id()).unwrap();
        assert!(me.running());
        // Same pid, another start time: a recycled pid is not "ours".
        let other = ProcId {
            start: me.start + 1,
            ..me
        };
        assert!(!other.running());
        // A child that exited and was reaped is gone; one that exited unreaped (a zombie) too.
        let exe = std::env::current_exe().unwrap();
        let spawn = || {
            std::process::Command::new(&exe)
                .arg("--list")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut zombie = spawn();
        let z = ProcId::of(zombie.id()).unwrap();
        assert!(wait_gone(&[z], Duration::from_secs(10)).is_empty());
        assert!(!alive(z.pid), "exited but unreaped counts as gone");
        zombie.wait().unwrap();
        let mut reaped = spawn();
        let r = ProcId::of(reaped.id()).unwrap();
        reaped.wait().unwrap();
        assert!(!r.running());
    }
}
