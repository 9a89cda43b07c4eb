//! The `tandem` binary: help, configuration errors, start, health, clean shutdown.

mod support;

use support::*;

#[test]
fn help_reads_well() {
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("JMS-compatible message broker") && out.contains("run"),
        "{out}"
    );
    let (code, out, _) = run_cli(&["run", "--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--config",
        "--listen",
        "--http",
        "--data-dir",
        "TANDEM_LISTEN",
        "--stomp",
        "TANDEM_STOMP",
    ] {
        assert!(out.contains(flag), "run --help lacks {flag}: {out}");
    }
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tandem.toml");
    std::fs::write(&cfg, "max_connections = 0\nheartbeat_ms = 5\n").unwrap();
    let (code, _, err) = run_cli(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--http",
        "off",
    ]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("max_connections") && err.contains("heartbeat_ms"),
        "{err}"
    );

    std::fs::write(&cfg, "listen_on = \"127.0.0.1:1\"\n").unwrap();
    let (code, _, err) = run_cli(&["run", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("listen_on"),
        "unknown key must be named: {err}"
    );

    let (code, _, err) = run_cli(&["run", "--listen", "localhost-ish"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("--listen") && err.contains("HOST:PORT"),
        "{err}"
    );

    let (code, _, err) = run_cli(&["run", "--stomp", "everywhere"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("--stomp") && err.contains("HOST:PORT"),
        "{err}"
    );

    let (code, _, err) = run_cli(&["run", "--config", "/nonexistent/tandem.toml"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("/nonexistent/tandem.toml"), "{err}");
}

#[test]
fn config_file_and_env_and_flags_layer_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tandem.toml");
    // The file turns HTTP off; the flag turns it back on at port 0: flags win.
    std::fs::write(
        &cfg,
        "http = \"127.0.0.1:1\"\nauto_create = false\nqueues = [\"known\"]\n",
    )
    .unwrap();
    let b = BrokerProcess::start(&["--config", cfg.to_str().unwrap()]);
    let (status, body) = http_get(b.http, "/health");
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = http_get(b.http, "/metrics");
    assert!(
        metrics.contains("name=\"known\""),
        "the file's queue exists: {metrics}"
    );
    b.terminate();
}

#[test]
fn run_serves_health_and_metrics_and_stops_cleanly_on_sigterm() {
    let b = BrokerProcess::start(&[]);
    let (status, body) = http_get(b.http, "/health");
    assert_eq!(status, 200);
    assert!(
        body.contains("\"state\":\"active\"") && body.contains("\"version\""),
        "{body}"
    );
    let (status, body) = http_get(b.http, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE tandem_connections gauge"), "{body}");
    assert!(std::net::TcpStream::connect(b.native).is_ok());
    assert_eq!(b.terminate(), Some(0), "clean exit on SIGTERM");
}
