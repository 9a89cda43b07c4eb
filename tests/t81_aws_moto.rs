//! `tandem provision apply|status|destroy` through the real AWS SDK clients against a local moto server,
//! and cfn-lint on the rendered templates.
//!
//! moto (`moto[server]`) and cfn-lint come from `.venv`, which `scripts/test.sh` creates from
//! `tests/requirements.txt`. moto listens on 127.0.0.1 on a free port and every call goes there through
//! `--endpoint-url`; the credentials are dummies. If `.venv/bin/moto_server` is absent the moto tests say so
//! and skip (scripts/test.sh always installs it); cfn-lint is required.
//!
//! What moto does not do (see docs/PROVISIONING.md, "Testing against moto"): it deploys most resource
//! types as plain records without their real behaviour, and it has no EFS replication; these tests check
//! what it does support and the product code is not shaped around it.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// One apply against moto creates ~60 records; generous for a loaded 2-core machine.
const CLI_LIMIT: Duration = Duration::from_secs(240);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn venv_bin(name: &str) -> PathBuf {
    root().join(".venv/bin").join(name)
}

/// A moto server on 127.0.0.1, killed on drop.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    /// `None` (after saying why) when moto is not installed.
    fn start() -> Option<Moto> {
        let bin = venv_bin("moto_server");
        if !bin.exists() {
            eprintln!(
                "SKIPPED: {} is absent; run scripts/test.sh (it installs tests/requirements.txt into .venv)",
                bin.display()
            );
            return None;
        }
        // The port was free a moment ago; another process taking it in between shows as moto exiting.
        let port = free_port();
        let mut child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("moto_server exited before listening on {addr}: {status}");
            }
            if TcpStream::connect(addr).is_ok() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "moto_server never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Moto {
            child,
            url: format!("http://{addr}"),
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tandem ARGS` with dummy AWS credentials and nothing from the user's AWS configuration; returns
/// (exit code, stdout, stderr). Bounded by [`CLI_LIMIT`].
fn tandem(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(tandem_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_CONFIG_FILE", "/nonexistent/tandem-t81")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/tandem-t81")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let mut child = cmd.spawn().unwrap();
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        out_pipe.read_to_string(&mut s).unwrap();
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        err_pipe.read_to_string(&mut s).unwrap();
        s
    });
    let t0 = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if t0.elapsed() > CLI_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tandem {args:?} did not finish within {CLI_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, out_t.join().unwrap(), err_t.join().unwrap())
}

/// The example spec with its own model name, written to `dir`.
fn spec_file(dir: &Path, example: &str, model: &str) -> String {
    let text = std::fs::read_to_string(root().join("docs/examples").join(example)).unwrap();
    let re_modelled = text
        .lines()
        .map(|l| {
            if l.starts_with("model = ") {
                format!("model = \"{model}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(re_modelled, text, "{example} sets a model");
    let path = dir.join(format!("{model}.toml"));
    std::fs::write(&path, re_modelled).unwrap();
    path.to_str().unwrap().to_owned()
}

fn status_json(spec: &str, url: &str) -> serde_json::Value {
    let (code, out, err) = tandem(&["provision", "status", spec, "--json", "--endpoint-url", url]);
    assert_eq!(code, Some(0), "status failed:\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{out}"))
}

/// apply (twice), status, destroy (twice) of one spec, checked at each step.
fn lifecycle(moto: &Moto, spec: &str, stack: &str, lanes: usize) {
    let url = moto.url.as_str();
    let s = status_json(spec, url);
    assert!(s["stack"].is_null(), "no stack before apply: {s}");

    let (code, out, err) = tandem(&["provision", "apply", spec, "--endpoint-url", url]);
    assert_ne!(
        code,
        Some(0),
        "a first apply without the required parameters must fail"
    );
    assert!(
        err.contains("BrokerImage") && err.contains("--broker-image"),
        "{err}"
    );
    assert!(
        status_json(spec, url)["stack"].is_null(),
        "the refused apply created nothing"
    );

    let apply = [
        "provision",
        "apply",
        spec,
        "--endpoint-url",
        url,
        "--poll-seconds",
        "1",
        "--broker-image",
        "ghcr.io/example/tandem:1",
        "--certificate-arn",
        "arn:aws:acm:eu-central-1:123456789012:certificate/0000",
    ];
    let (code, out1, err) = tandem(&apply);
    assert_eq!(code, Some(0), "apply failed:\n{out1}\n{err}");
    assert!(out1.contains(&format!("created {stack}")), "{out1}");
    // Events streamed: the stack's own and the lanes' groups, in the order they happened.
    assert!(out1.contains("CREATE_COMPLETE"), "{out1}");
    for lane in ["LaneAAutoScalingGroup", "LaneBAutoScalingGroup"]
        .iter()
        .take(lanes)
    {
        assert!(out1.contains(lane), "no event for {lane}:\n{out1}");
    }
    let first_id = out1.lines().last().unwrap().to_owned();

    let s = status_json(spec, url);
    assert_eq!(s["stack"]["status"], "CREATE_COMPLETE", "{s}");
    assert_eq!(s["stack"]["name"], stack, "{s}");
    let outputs = s["stack"]["outputs"].as_array().unwrap();
    let output = |k: &str| {
        outputs
            .iter()
            .find(|o| o[0] == k)
            .map(|o| o[1].as_str().unwrap().to_owned())
    };
    let fs = output("FileSystemId").unwrap_or_else(|| panic!("no FileSystemId output: {s}"));
    assert!(fs.starts_with("fs-"), "{s}");
    assert_eq!(s["file_system"]["file_system_id"], fs.as_str(), "{s}");
    assert_eq!(s["file_system"]["state"], "available", "{s}");
    let (code, text, _) = tandem(&["provision", "status", spec, "--endpoint-url", url]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains(stack) && text.contains("CREATE_COMPLETE") && text.contains(&fs),
        "{text}"
    );

    // Second apply, parameters kept from the stack: succeeds and leaves the same stack.
    let (code, out2, err) = tandem(&[
        "provision",
        "apply",
        spec,
        "--endpoint-url",
        url,
        "--poll-seconds",
        "1",
    ]);
    assert_eq!(code, Some(0), "second apply failed:\n{out2}\n{err}");
    let second = out2.lines().last().unwrap();
    assert!(
        second.starts_with(&format!("unchanged {stack}"))
            || second.starts_with(&format!("updated {stack}")),
        "{out2}"
    );
    assert_eq!(
        first_id.rsplit_once(' ').unwrap().1,
        second.rsplit_once(' ').unwrap().1,
        "the second apply must keep the stack (same id)"
    );
    assert!(!out2.contains("creating stack"), "{out2}");
    let s = status_json(spec, url);
    assert!(
        matches!(
            s["stack"]["status"].as_str(),
            Some("CREATE_COMPLETE" | "UPDATE_COMPLETE")
        ),
        "{s}"
    );

    let (code, out, err) = tandem(&[
        "provision",
        "destroy",
        spec,
        "--endpoint-url",
        url,
        "--poll-seconds",
        "1",
    ]);
    assert_eq!(code, Some(0), "destroy failed:\n{out}\n{err}");
    assert!(out.contains(&format!("deleted {stack}")), "{out}");
    assert!(
        status_json(spec, url)["stack"].is_null(),
        "the stack is gone after destroy"
    );
    let (code, out, err) = tandem(&["provision", "destroy", spec, "--endpoint-url", url]);
    assert_eq!(
        code,
        Some(0),
        "a second destroy is a success:\n{out}\n{err}"
    );
    assert!(out.contains(&format!("absent {stack}")), "{out}");
}

#[test]
fn single_lane_apply_status_destroy_against_moto() {
    let Some(moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_file(dir.path(), "tenant-single.toml", "single");
    lifecycle(&moto, &spec, "tandem-acme-single", 1);
}

#[test]
fn double_lane_apply_status_destroy_against_moto() {
    let Some(moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_file(dir.path(), "tenant-double.toml", "double");
    lifecycle(&moto, &spec, "tandem-globex-double", 2);
}

#[test]
fn an_unreachable_endpoint_is_an_error_naming_the_call_and_stack() {
    // Nothing listens on a port that was just free: the SDK's connection error must surface with the call.
    let port = free_port();
    let spec = root().join("docs/examples/tenant-single.toml");
    let (code, _, err) = tandem(&[
        "provision",
        "status",
        spec.to_str().unwrap(),
        "--endpoint-url",
        &format!("http://127.0.0.1:{port}"),
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("DescribeStacks tandem-acme-orders"), "{err}");
}

#[test]
fn promote_region_needs_yes_and_names_what_is_missing() {
    let Some(moto) = Moto::start() else { return };
    let spec = root().join("docs/examples/tenant-single.toml");
    let (code, _, err) = tandem(&[
        "provision",
        "promote-region",
        spec.to_str().unwrap(),
        "--endpoint-url",
        &moto.url,
    ]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("stack tandem-acme-orders does not exist"),
        "{err}"
    );
}

/// Renders `spec` through the CLI into `dir`.
fn render(dir: &Path, spec: &Path, name: &str) -> PathBuf {
    let (code, out, err) = tandem(&["provision", "render", spec.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn cfn_lint_passes_on_rendered_templates() {
    let lint = venv_bin("cfn-lint");
    assert!(
        lint.exists(),
        "{} is missing: run scripts/test.sh, which installs tests/requirements.txt into .venv",
        lint.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let examples = root().join("docs/examples");
    let carwash_tenant = dir.path().join("carwash-tenant.toml");
    let text = std::fs::read_to_string(examples.join("tenant-single.toml")).unwrap();
    std::fs::write(
        &carwash_tenant,
        format!("{text}\n[ingress]\nmode = \"carwash\"\nslot = 7\n"),
    )
    .unwrap();
    let templates = [
        render(dir.path(), &examples.join("tenant-single.toml"), "single"),
        render(dir.path(), &examples.join("tenant-double.toml"), "double"),
        render(dir.path(), &carwash_tenant, "carwash-tenant"),
        // The carwash stack has no CLI renderer; its golden file is what the renderer produces (the golden
        // test in provisioning/tests/templates.rs holds them equal).
        root().join("provisioning/tests/golden/carwash.yaml"),
    ];
    for t in &templates {
        let out = Command::new(&lint)
            .arg("--")
            .arg(t)
            .output()
            .expect("running cfn-lint");
        assert!(
            out.status.success(),
            "cfn-lint {}:\n{}{}",
            t.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
