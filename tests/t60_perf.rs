//! `tandem perf` end to end: against an embedded broker, and against a `tandem run` process over
//! the native protocol and STOMP. These check what a run reports and its exit status (including
//! the accounting failing when messages are really lost), never how fast anything went: rates on
//! a loaded 2-core machine are not a test.

mod support;

use serde_json::Value;
use support::*;

/// Runs `tandem perf ARGS --json --quiet`; returns (exit code, report, stderr).
fn perf(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["perf", "--json", "--quiet"];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(&all);
    let code = code.expect("perf exits by itself");
    let report = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!("perf printed no JSON report ({e}); exit {code}\nstdout: {out}\nstderr: {err}")
    });
    (code, report, err)
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

fn acct(v: &Value, key: &str) -> u64 {
    u(&v["accounting"], key)
}

/// A clean run: everything sent arrived once, and the report says so.
fn assert_clean(code: i32, r: &Value, sent: u64, deliveries: u64) {
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(u(r, "sent"), sent, "{r:#}");
    assert_eq!(u(r, "expected"), deliveries);
    assert_eq!(u(r, "received"), deliveries, "{r:#}");
    assert_eq!(acct(r, "missing"), 0);
    assert_eq!(acct(r, "duplicates"), 0);
    assert_eq!(
        acct(r, "out_of_order"),
        0,
        "one producer's messages stay in order"
    );
    assert_eq!(r["drained"], true);
    assert!(r["errors"].as_array().unwrap().is_empty(), "{r:#}");
    // Every delivery was timed (no warm-up in these runs).
    assert_eq!(u(&r["latency_e2e"], "count"), deliveries, "{r:#}");
    let per = r["accounting"]["per_producer"].as_array().unwrap();
    assert_eq!(
        per.iter().map(|p| p["sent"].as_u64().unwrap()).sum::<u64>(),
        sent
    );
}

#[test]
fn embedded_queue_competing_consumers() {
    let (code, r, _) = perf(&["--embedded", "-n", "2000", "-p", "2", "-c", "2"]);
    assert_clean(code, &r, 2000, 2000);
    assert_eq!(r["target"], "embedded");
    assert_eq!(r["protocol"], "native");
    assert_eq!(r["destination"], "queue:perf");
    // Non-persistent native sends are not confirmed by the protocol.
    assert!(r["confirmed"].is_null());
    assert!(r["latency_confirm"].is_null());
    assert!(
        r["latency_e2e_uncorrected"].is_null(),
        "unpaced: one view only"
    );
    assert!(r["cpu_tool"]["cpu_s"].as_f64().is_some());
}

#[test]
fn embedded_paced_persistent_topic_fan_out() {
    let (code, r, _) = perf(&[
        "--embedded",
        "-d",
        "topic:fan",
        "-c",
        "3",
        "-n",
        "300",
        "--rate",
        "2000",
        "--persistent",
        "--ack",
        "client",
        "--ack-every",
        "10",
    ]);
    assert_clean(code, &r, 300, 900);
    assert_eq!(u(&r, "confirmed"), 300);
    assert_eq!(u(&r["latency_confirm"], "count"), 300);
    // Paced: both views of each latency, the corrected one measured from the intended send time,
    // which is never after the actual one.
    let c = &r["latency_e2e"];
    let uc = &r["latency_e2e_uncorrected"];
    assert_eq!(u(uc, "count"), 900);
    assert!(c["max_us"].as_f64() >= uc["max_us"].as_f64(), "{r:#}");
    assert!(
        c["min_us"].as_f64() >= uc["min_us"].as_f64().map(|m| m - 1.0),
        "{r:#}"
    );
}

#[test]
fn against_tandem_run_native_and_stomp() {
    let broker = BrokerProcess::start(&[]);
    let stomp = broker.stomp.unwrap().to_string();
    let pid = broker.pid().to_string();

    let url = broker.url();
    let (code, r, _) = perf(&[
        "--url",
        &url,
        "-n",
        "1000",
        "-p",
        "2",
        "-c",
        "2",
        "--persistent",
        "--broker-pid",
        &pid,
        "-d",
        "queue:native",
    ]);
    assert_clean(code, &r, 1000, 1000);
    assert_eq!(u(&r, "confirmed"), 1000);
    assert_eq!(
        r["cpu_broker"]["pid"].as_u64(),
        Some(u64::from(broker.pid()))
    );
    assert!(r["cpu_broker"]["cpu_s"].as_f64().is_some());

    // STOMP, persistent, a receipt every 10 sends, client acks every 5 messages.
    let (code, r, _) = perf(&[
        "--stomp",
        &stomp,
        "-n",
        "1000",
        "-p",
        "2",
        "-c",
        "2",
        "--persistent",
        "--receipt-every",
        "10",
        "--max-in-flight",
        "50",
        "--ack",
        "client",
        "--ack-every",
        "5",
        "-d",
        "queue:stomp",
    ]);
    assert_clean(code, &r, 1000, 1000);
    assert_eq!(r["protocol"], "stomp");
    assert_eq!(r["receipt_every"], 10);
    // 500 per producer, a multiple of 10: every send is covered by a receipt.
    assert_eq!(u(&r, "confirmed"), 1000);
    assert_eq!(
        u(&r["latency_confirm"], "count"),
        100,
        "one sample per receipt"
    );

    // STOMP topic, individual acks, paced.
    let (code, r, _) = perf(&[
        "--stomp",
        &stomp,
        "-n",
        "400",
        "-c",
        "2",
        "-d",
        "topic:stomp",
        "--ack",
        "individual",
        "--rate",
        "4000",
    ]);
    assert_clean(code, &r, 400, 800);

    // A native consumer reads what a STOMP producer sent, and the other way round, is covered by
    // the broker's own tests; here the marks must survive either protocol on their own.
    broker.terminate();
}

#[test]
fn late_topic_subscribers_miss_everything_and_the_exit_says_so() {
    let broker = BrokerProcess::start(&[]);
    let stomp = broker.stomp.unwrap().to_string();
    let url = broker.url();
    // Consumers subscribe only after every producer has finished: a topic keeps nothing for
    // subscribers that did not exist, so all 2 × 100 deliveries are missing, deterministically.
    for target in [["--url", url.as_str()], ["--stomp", stomp.as_str()]] {
        let (code, r, _) = perf(&[
            target[0],
            target[1],
            "-d",
            "topic:late",
            "-n",
            "100",
            "-c",
            "2",
            "--late-consumers",
            "--drain-timeout",
            "300ms",
        ]);
        assert_eq!(code, 3, "{r:#}");
        assert_eq!(r["ok"], false);
        assert_eq!(r["exit_code"], 3);
        assert_eq!(u(&r, "sent"), 100);
        assert_eq!(u(&r, "expected"), 200);
        assert_eq!(u(&r, "received"), 0);
        assert_eq!(acct(&r, "missing"), 200, "{r:#}");
        assert_eq!(r["drained"], false);
        let first = &r["accounting"]["per_producer"][0]["first_missing"];
        assert_eq!(first[0], 1, "{r:#}");
    }
    // The same late consumers on a queue get everything: the queue kept the messages.
    let (code, r, _) = perf(&[
        "--url",
        &url,
        "-d",
        "queue:late",
        "-n",
        "100",
        "-c",
        "2",
        "--late-consumers",
    ]);
    assert_clean(code, &r, 100, 100);
    broker.terminate();
}

#[test]
fn duration_runs_stop_by_themselves_and_show_progress() {
    // Not --quiet: the progress line goes to stderr once a second.
    let (code, out, err) = run_cli(&["perf", "--embedded", "--duration", "3s", "--rate", "500"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(err.contains("perf ") && err.contains("msg/s"), "{err}");
    assert!(out.contains("result") && out.contains("OK"), "{out}");
    assert!(out.contains("end-to-end (from intended)"), "{out}");
}

#[test]
fn refusals_exit_2_and_transaction_batches_run_natively_and_over_stomp() {
    let (code, _, err) = run_cli(&["perf", "--url", "tcp://10.1.2.3:61616", "-n", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("loopback") && err.contains("--allow-remote"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["perf", "--embedded", "-d", "perf"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("queue:NAME"), "{err}");

    // Nothing listening: the run fails (exit 1) and says why, rather than reporting zeros as OK.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("tcp://{closed}");
    for target in [["--url", url.as_str()], ["--stomp", &closed.to_string()]] {
        let (code, r, _) = perf(&[target[0], target[1], "-n", "10"]);
        assert_eq!(code, 1, "{r:#}");
        assert!(r["errors"].to_string().contains("refused"), "{r:#}");
    }

    // Transaction batches (a commit confirms each batch of 10; the last batch is partial), over
    // the native protocol and over STOMP, with persistent messages on a journal.
    let (code, r, _) = perf(&["--embedded", "-n", "25", "--tx-batch", "10"]);
    assert_clean(code, &r, 25, 25);
    assert_eq!(u(&r, "confirmed"), 25, "{r:#}");
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_in(&dir.path().join("data"), &[]);
    let stomp = broker.stomp.unwrap().to_string();
    let (code, r, _) = perf(&["--stomp", &stomp, "-n", "25", "--tx-batch", "10"]);
    assert_clean(code, &r, 25, 25);
    let (code, r, _) = perf(&["--url", &broker.url(), "-n", "25", "--tx-batch", "10"]);
    assert_clean(code, &r, 25, 25);
    broker.terminate();
}
