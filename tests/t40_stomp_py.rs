//! A real STOMP client against the real binary: Python's stomp.py runs the scripted conversation
//! in `tests/stomp/conversation.py` (send/receive, client-individual ack and NACK redelivery,
//! receipts, selectors, topic fan-out, heart-beats, and transactions).
//!
//! The client lives in `.venv`, which `scripts/test.sh` creates from `tests/requirements.txt`.
//! Without it this test fails (it does not skip): a missing venv must not pass for a green run.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// The conversation takes a few seconds (it idles 3.5 s to see heart-beats); this bounds a hang.
const CONVERSATION_LIMIT: Duration = Duration::from_secs(120);

fn venv_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let importable = python.exists()
        && Command::new(&python)
            .args(["-c", "import stomp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        importable,
        "{} with stomp.py is missing: run scripts/test.sh, which creates .venv and installs \
         tests/requirements.txt",
        python.display()
    );
    python
}

#[test]
fn stomp_py_conversation() {
    let python = venv_python();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tandem.toml");
    // Heart-beats every second, so the script sees several while it idles.
    std::fs::write(&cfg, "heartbeat_ms = 1000\n").unwrap();
    let broker = BrokerProcess::start(&["--config", cfg.to_str().unwrap()]);
    let stomp = broker.stomp.expect("the STOMP listener is on");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stomp/conversation.py");
    let child = Command::new(&python)
        .arg(&script)
        .arg(stomp.ip().to_string())
        .arg(stomp.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(CONVERSATION_LIMIT) {
        Ok(out) => out.expect("python ran"),
        Err(_) => {
            signal(pid, "KILL");
            panic!("the stomp.py conversation did not finish within {CONVERSATION_LIMIT:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "stomp.py conversation failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("all 6 steps passed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}
