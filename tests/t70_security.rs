//! Security through the real binary: `tandem user add|remove|list` round trip against a running
//! `tandem run` with TLS and a users file (changes apply without a restart), the startup warning
//! of an open broker, and no password in the broker's log.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;
use tandem_client::{AckMode, ConnectionFactory, Destination, ErrorCode, Message, TlsOptions};

/// `tandem ARGS` with `stdin` fed in; returns (exit code, stdout, stderr).
fn cli_with_stdin(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(tandem_bin())
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A CA, and a server certificate for localhost signed by it: (CA PEM, cert PEM, key PEM).
fn pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn login(port: u16, ca: &str, user: &str, password: &str) -> tandem_client::Result<()> {
    let c = ConnectionFactory::new(&format!("tls://localhost:{port}"))?
        .with_tls(TlsOptions::new().with_ca_pem(ca.as_bytes())?)
        .with_credentials(user, password)
        .with_connect_timeout(GUARD)
        .connect()
        .await?;
    let session = c.create_session(AckMode::Auto).await?;
    let q = Destination::queue("orders.cli").unwrap();
    session
        .create_producer(Some(&q))
        .await?
        .send(Message::text("hello"))
        .await?;
    c.close().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_cli_round_trip_against_a_running_broker() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let u = s(&users);

    // add (password from stdin, no prompt), a certificate-only user, list.
    let (code, _, err) = cli_with_stdin(
        &[
            "user",
            "add",
            "alice",
            "--roles",
            "shop",
            "--password-stdin",
            "--file",
            u,
        ],
        "Alice-S3cret\n",
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli_with_stdin(
        &[
            "user",
            "add",
            "svc",
            "--roles",
            "billing,audit",
            "--no-password",
            "--file",
            u,
        ],
        "",
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = cli_with_stdin(&["user", "list", "--file", u], "");
    assert_eq!(code, Some(0));
    assert!(out.contains("alice\tpassword\troles=shop"), "{out}");
    assert!(
        out.contains("svc\tcertificate-only\troles=billing,audit"),
        "{out}"
    );
    assert!(!out.contains("argon2"), "list shows no hashes: {out}");
    let file = std::fs::read_to_string(&users).unwrap();
    assert!(
        file.contains("$argon2id$") && !file.contains("Alice-S3cret"),
        "{file}"
    );
    // Adding an existing user needs --replace; an empty password is refused.
    let (code, _, err) = cli_with_stdin(
        &["user", "add", "alice", "--password-stdin", "--file", u],
        "x\n",
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("--replace"), "{err}");
    let (code, _, err) = cli_with_stdin(
        &["user", "add", "eve", "--password-stdin", "--file", u],
        "\n",
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("empty password"), "{err}");

    // A broker with TLS and that users file.
    let (ca, cert, key) = pki();
    let cert_path = dir.path().join("server.crt");
    let key_path = dir.path().join("server.key");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let config = dir.path().join("tandem.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[tls]
cert = "{}"
key = "{}"

[security]
users_file = "{}"

[[security.grants]]
match = "orders.#"
send = ["shop"]
create = ["shop"]
"#,
            s(&cert_path),
            s(&key_path),
            u
        ),
    )
    .unwrap();
    let broker = BrokerProcess::start(&["--config", s(&config)]);
    let port = broker.native.port();
    login(port, &ca, "alice", "Alice-S3cret").await.unwrap();
    let e = login(port, &ca, "alice", "Not-Her-Pass").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AuthenticationFailed), "{e}");

    // Changes apply to the running broker: a new user logs in, a removed one no longer does.
    let (code, _, err) = cli_with_stdin(
        &[
            "user",
            "add",
            "dave",
            "--roles",
            "shop",
            "--password-stdin",
            "--file",
            u,
        ],
        "Dave-S3cret\n",
    );
    assert_eq!(code, Some(0), "{err}");
    login(port, &ca, "dave", "Dave-S3cret").await.unwrap();
    let (code, _, err) = cli_with_stdin(&["user", "remove", "alice", "--file", u], "");
    assert_eq!(code, Some(0), "{err}");
    let e = login(port, &ca, "alice", "Alice-S3cret").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AuthenticationFailed), "{e}");
    let (code, _, err) = cli_with_stdin(&["user", "remove", "alice", "--file", u], "");
    assert_ne!(code, Some(0));
    assert!(err.contains("no user"), "{err}");

    // The refusals were logged (warn level), the passwords were not.
    let log = wait_for_log(&broker, "login refused");
    for secret in ["Alice-S3cret", "Not-Her-Pass", "Dave-S3cret"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    broker.terminate();
}

/// The broker's log once it holds `needle` (polled: the reader thread may lag the broker).
fn wait_for_log(broker: &BrokerProcess, needle: &str) -> String {
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        let log = broker.log.lock().unwrap().join("\n");
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} never logged:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_open_broker_says_so_at_start() {
    let broker = BrokerProcess::start(&[]);
    wait_for_log(&broker, "runs OPEN");
    wait_for_log(&broker, "every listener is plaintext");
    broker.terminate();
}
