//! The monitor: runs one lane process, restarts it when it exits (auto-healing, with the backoff
//! of [`RestartPolicy`]), and writes its stdout and stderr to its log file, rotated, with rotated
//! files older than the tenant's log retention removed.
//!
//! A restarted lane comes back dormant when the other lane took the lease meanwhile: the monitor
//! does not decide roles, the lease does. Every process started is recorded in the state file
//! before anything else happens to it, so `down` can always find it. On shutdown the lane gets
//! SIGTERM (it leaves the lease cleanly) and SIGKILL after [`STOP_GRACE`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::policy::{self, Backoff, Restart, RestartPolicy};
use super::state::{ProcId, UpState};

/// How long a lane may take to leave the lease and exit after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// A live log file is rotated at this size or age.
pub const LOG_MAX_SIZE: u64 = 64 * 1024 * 1024;
pub const LOG_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How often rotated logs are checked against the retention period (besides at each rotation).
const RETENTION_SWEEP: Duration = Duration::from_secs(600);

/// The state file, shared by the lane tasks and the proxy: every change is written through.
pub struct StateCell {
    dir: PathBuf,
    state: std::sync::Mutex<UpState>,
}

impl StateCell {
    pub fn new(dir: &Path, state: UpState) -> anyhow::Result<Arc<StateCell>> {
        state.write(dir)?;
        Ok(Arc::new(StateCell {
            dir: dir.to_path_buf(),
            state: std::sync::Mutex::new(state),
        }))
    }

    /// Applies `f` and writes the file while still holding the lock, so two writers can never
    /// leave the older state on disk.
    pub fn update(&self, f: impl FnOnce(&mut UpState)) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        if let Err(e) = s.write(&self.dir) {
            tracing::error!(error = %format!("{e:#}"), "could not write the state file");
        }
    }
}

/// How to start one lane.
#[derive(Debug, Clone)]
pub struct LaneCommand {
    pub index: usize,
    pub name: String,
    pub exe: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub log_file: PathBuf,
    pub pid_file: PathBuf,
}

/// Runs the lane until `shutdown`, restarting it when it exits.
pub async fn run_lane(
    cmd: LaneCommand,
    restart: RestartPolicy,
    retention: Duration,
    state: Arc<StateCell>,
    shutdown: CancellationToken,
) {
    let log = match LogFile::open(&cmd.log_file, retention) {
        Ok(l) => Arc::new(std::sync::Mutex::new(l)),
        Err(e) => {
            tracing::error!(lane = %cmd.name, error = %e, "cannot open the lane's log; not starting it");
            state.update(|s| {
                s.lanes[cmd.index].given_up = true;
                s.lanes[cmd.index].last_exit = Some(format!("log file: {e}"));
            });
            return;
        }
    };
    let sweeper = {
        let (log, shutdown) = (log.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETENTION_SWEEP) => {}
                }
                log.lock().unwrap_or_else(|e| e.into_inner()).sweep();
            }
        })
    };
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let exit = match spawn(&cmd, &log) {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                let id = ProcId::of(pid).unwrap_or(ProcId { pid, start: 0 });
                let _ = std::fs::write(&cmd.pid_file, format!("{pid}\n"));
                state.update(|s| {
                    let l = &mut s.lanes[cmd.index];
                    l.pid = Some(pid);
                    l.pids.push(id);
                });
                tracing::info!(lane = %cmd.name, pid, "lane started");
                let status = tokio::select! {
                    st = child.wait() => st,
                    _ = shutdown.cancelled() => {
                        stop(&mut child, &cmd.name).await;
                        let _ = std::fs::remove_file(&cmd.pid_file);
                        state.update(|s| s.lanes[cmd.index].pid = None);
                        break;
                    }
                };
                let _ = std::fs::remove_file(&cmd.pid_file);
                match status {
                    Ok(st) => describe(st),
                    Err(e) => format!("wait failed: {e}"),
                }
            }
            Err(e) => format!("could not start: {e}"),
        };
        let now = Instant::now();
        let decision = backoff.on_exit(&restart, started, now);
        match decision {
            Restart::At(at) => {
                let ms = at.saturating_duration_since(now).as_millis();
                tracing::warn!(lane = %cmd.name, exit = %exit, restart_in_ms = ms, "lane exited");
            }
            Restart::GiveUp { .. } => tracing::warn!(lane = %cmd.name, exit = %exit, "lane exited"),
        }
        state.update(|s| {
            let l = &mut s.lanes[cmd.index];
            l.pid = None;
            l.last_exit = Some(exit.clone());
            l.given_up = matches!(decision, Restart::GiveUp { .. });
        });
        match decision {
            Restart::GiveUp { restarts } => {
                tracing::error!(lane = %cmd.name, restarts, "lane keeps failing; not restarting it again");
                break;
            }
            Restart::At(at) => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
        }
        state.update(|s| s.lanes[cmd.index].restarts += 1);
    }
    sweeper.abort();
}

fn spawn(
    cmd: &LaneCommand,
    log: &Arc<std::sync::Mutex<LogFile>>,
) -> std::io::Result<tokio::process::Child> {
    let mut child = tokio::process::Command::new(&cmd.exe)
        .args(&cmd.args)
        .envs(&cmd.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C meant for a foreground supervisor reaches only the
        // supervisor, which then stops the lanes in order instead of racing their deaths.
        .process_group(0)
        .spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, log.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, log.clone()));
    }
    Ok(child)
}

/// Copies a pipe into the log until the lane closes it (exits).
async fn pump(mut from: impl tokio::io::AsyncRead + Unpin, log: Arc<std::sync::Mutex<LogFile>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(&buf[..n]),
        }
    }
}

async fn stop(child: &mut tokio::process::Child, name: &str) {
    if let Some(pid) = child.id() {
        super::state::signal(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(lane = %name, "lane ignored SIGTERM; killing it");
        let _ = child.kill().await;
    }
}

fn describe(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown".to_owned(),
    }
}

/// A lane's live log file plus its rotated predecessors (`tandem.log.<unix ms>`).
pub struct LogFile {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    opened: SystemTime,
    retention: Duration,
}

impl LogFile {
    pub fn open(path: &Path, retention: Duration) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let meta = file.metadata()?;
        let mut log = LogFile {
            path: path.to_path_buf(),
            file,
            size: meta.len(),
            // A file left by an earlier run counts from its creation, so age rotation still happens.
            opened: meta
                .created()
                .or_else(|_| meta.modified())
                .unwrap_or_else(|_| SystemTime::now()),
            retention,
        };
        log.sweep();
        Ok(log)
    }

    /// Appends; rotates first when the live file is too big or too old. Write errors are logged,
    /// never fatal: a full disk must not take the lane's supervisor down.
    pub fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let now = SystemTime::now();
        if policy::should_rotate(self.size, self.opened, now, LOG_MAX_SIZE, LOG_MAX_AGE)
            && let Err(e) = self.rotate(now)
        {
            tracing::warn!(file = %self.path.display(), error = %e, "log rotation failed");
        }
        match self.file.write_all(bytes) {
            Ok(()) => self.size += bytes.len() as u64,
            Err(e) => tracing::warn!(file = %self.path.display(), error = %e, "log write failed"),
        }
    }

    fn rotate(&mut self, now: SystemTime) -> std::io::Result<()> {
        let ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let rotated = self
            .path
            .with_file_name(format!("{}.{ms}", self.file_name()));
        std::fs::rename(&self.path, rotated)?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        self.opened = now;
        self.sweep();
        Ok(())
    }

    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Removes rotated files older than the retention period; the live file is never touched.
    pub fn sweep(&mut self) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let prefix = format!("{}.", self.file_name());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let files: Vec<(String, SystemTime)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let suffix = name.strip_prefix(&prefix)?;
                // Only our own rotated files: the suffix is the rotation's timestamp.
                if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some((name, e.metadata().ok()?.modified().ok()?))
            })
            .collect();
        for name in policy::expired(&files, SystemTime::now(), self.retention) {
            if let Err(e) = std::fs::remove_file(dir.join(name)) {
                tracing::warn!(file = name, error = %e, "could not remove an expired log");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_logs_past_retention_are_removed_and_others_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("lane-a/tandem.log");
        std::fs::create_dir_all(live.parent().unwrap()).unwrap();
        let old = live.with_file_name("tandem.log.1000");
        let recent = live.with_file_name("tandem.log.2000");
        let foreign = live.with_file_name("tandem.log.keep-me");
        for f in [&old, &recent, &foreign] {
            std::fs::write(f, "x").unwrap();
        }
        let month_ago = SystemTime::now() - Duration::from_secs(31 * 86_400);
        for f in [&old, &foreign] {
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(month_ago)
                .unwrap();
        }
        let mut log = LogFile::open(&live, Duration::from_secs(30 * 86_400)).unwrap();
        assert!(!old.exists(), "older than 30 days: removed");
        assert!(recent.exists() && foreign.exists());
        log.write(b"hello\n");
        log.rotate(SystemTime::now()).unwrap();
        log.write(b"again\n");
        assert_eq!(std::fs::read_to_string(&live).unwrap(), "again\n");
        let rotated: Vec<String> = std::fs::read_dir(live.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.starts_with("tandem.log.") && n != "tandem.log.2000" && n != "tandem.log.keep-me"
            })
            .collect();
        assert_eq!(rotated.len(), 1, "{rotated:?}");
        let text = std::fs::read_to_string(live.with_file_name(&rotated[0])).unwrap();
        assert_eq!(text, "hello\n");
    }
}
