//! `tandem provision apply|status|destroy` through the real AWS SDK clients against a local moto server,
//! and cfn-lint on the rendered templates.
//!
//! moto (`moto[server]`) and cfn-lint come from `.venv`, which `scripts/test.sh` creates from
//! `tests/requirements.txt`. moto listens on 127.0.0.1 on a free port and every call goes there through
//! `--endpoint-url`; the credentials are dummies. Without `.venv` (moto_server, cfn-lint) these tests fail, they
//! do not skip.
//!
//! What moto does not do (see docs/PROVISIONING.md, "Testing against moto"): it deploys most resource
//! types as plain records without their real behaviour, and it has no EFS replication; these tests check
//! what it does support and the product code is not shaped around it.

mod support;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tandem_provisioning::{TenantSpec, plan, render};

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
    /// Starts moto; fails (never skips) when it is not installed: a missing venv must not pass for a
    /// green run.
    fn start() -> Moto {
        let bin = venv_bin("moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/test.sh, which creates .venv and installs tests/requirements.txt",
            bin.display()
        );
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
        Moto {
            child,
            url: format!("http://{addr}"),
        }
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

/// The example spec with its own model name, written to `dir`; returns its path and the parsed spec.
fn spec_file(dir: &Path, example: &str, model: &str) -> (String, TenantSpec) {
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
    std::fs::write(&path, &re_modelled).unwrap();
    let spec = TenantSpec::load(&re_modelled).expect("the examples are valid");
    (path.to_str().unwrap().to_owned(), spec)
}

/// Resource types moto 5.2.5 cannot deploy or delete through CloudFormation (docs/PROVISIONING.md):
const MOTO_CANNOT: [&str; 4] = [
    // moto models every load balancer as an ALB and refuses the NLB's TCP and TLS listeners.
    "AWS::ElasticLoadBalancingV2::Listener",
    // moto reads only HostedZoneId (KeyError, HTTP 500, on HostedZoneName).
    "AWS::Route53::RecordSet",
    // moto has no Fn::GetAtt for access points (HTTP 500).
    "AWS::EFS::AccessPoint",
    // moto never deletes a route table on DeleteStack, so the VPC cannot be deleted either.
    "AWS::EC2::RouteTable",
];

/// Logical ids `v` refers to (Ref, Fn::GetAtt, Fn::Sub).
fn refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("Ref", Value::String(id)) => {
                        out.insert(id.clone());
                    }
                    ("Fn::GetAtt", Value::Array(a)) => {
                        out.insert(a[0].as_str().unwrap().to_owned());
                    }
                    ("Fn::Sub", _) => {
                        let text = x.as_str().or_else(|| x[0].as_str()).unwrap();
                        for part in text.split("${").skip(1) {
                            let name = part.split(['}', '.']).next().unwrap();
                            out.insert(name.to_owned());
                        }
                        if let Some(vars) = x.get(1) {
                            refs(vars, out);
                        }
                    }
                    ("DependsOn", Value::String(id)) => {
                        out.insert(id.clone());
                    }
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// The rendered template minus what moto cannot do and everything that depends on it, with the outputs
/// that still resolve. Returns the template and the dropped logical ids.
fn moto_subset(spec: &TenantSpec) -> (Value, Vec<String>) {
    let mut t = render::template(&plan::plan(spec));
    let resources = t["Resources"].as_object().unwrap().clone();
    let ids: BTreeSet<String> = resources.keys().cloned().collect();
    let mut keep: BTreeSet<String> = resources
        .iter()
        .filter(|(_, r)| !MOTO_CANNOT.contains(&r["Type"].as_str().unwrap()))
        .map(|(k, _)| k.clone())
        .collect();
    // Each pass drops what refers to a dropped resource; bounded by the resource count.
    for _ in 0..=resources.len() {
        let before = keep.len();
        let kept = keep.clone();
        keep.retain(|id| {
            let mut r = BTreeSet::new();
            refs(&resources[id], &mut r);
            r.iter()
                .all(|x| !resources.contains_key(x) || kept.contains(x))
        });
        if keep.len() == before {
            break;
        }
    }
    let dropped = resources
        .keys()
        .filter(|k| !keep.contains(*k))
        .cloned()
        .collect();
    t["Resources"] = Value::Object(
        resources
            .into_iter()
            .filter(|(k, _)| keep.contains(k))
            .collect(),
    );
    let outputs = t["Outputs"].as_object().unwrap().clone();
    t["Outputs"] = Value::Object(
        outputs
            .into_iter()
            .filter(|(_, o)| {
                let mut r = BTreeSet::new();
                refs(o, &mut r);
                r.iter().all(|x| !ids.contains(x) || keep.contains(x))
            })
            .collect(),
    );
    (t, dropped)
}

/// `tandem provision status --json`: (exit code, report). A report listing failed calls exits non-zero.
fn status_json(spec: &str, url: &str) -> (Option<i32>, Value) {
    let (code, out, err) = tandem(&["provision", "status", spec, "--json", "--endpoint-url", url]);
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{out}\n{err}"));
    (code, report)
}

/// apply (twice), status, promote-region, destroy (twice) of one spec, checked at each step.
fn lifecycle(moto: &Moto, example: &str, model: &str, lanes: u8) {
    let url = moto.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    let (spec, parsed) = spec_file(dir.path(), example, model);
    assert_eq!(parsed.lanes, lanes);
    let stack = parsed.stack_name();
    let (code, s) = status_json(&spec, url);
    assert_eq!(code, Some(0), "{s}");
    assert!(s["stack"].is_null(), "no stack before apply: {s}");

    let (subset, dropped) = moto_subset(&parsed);
    assert!(dropped.contains(&"DnsRecord".to_owned()), "{dropped:?}");
    let template = dir.path().join("moto-template.json");
    std::fs::write(&template, serde_json::to_string(&subset).unwrap()).unwrap();
    let template = template.to_str().unwrap();

    let (code, out, err) = tandem(&["provision", "apply", &spec, "--endpoint-url", url]);
    assert_ne!(
        code,
        Some(0),
        "a first apply without the required parameters must fail:\n{out}"
    );
    assert!(
        err.contains("BrokerImage") && err.contains("--broker-image"),
        "{err}"
    );
    assert!(
        status_json(&spec, url).1["stack"].is_null(),
        "the refused apply created nothing"
    );

    let apply = [
        "provision",
        "apply",
        &spec,
        "--template-file",
        template,
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
    // The stack's events were streamed, in the order they happened.
    let started = out1
        .find("CREATE_IN_PROGRESS")
        .unwrap_or_else(|| panic!("{out1}"));
    let done = out1
        .find("CREATE_COMPLETE")
        .unwrap_or_else(|| panic!("{out1}"));
    assert!(started < done, "{out1}");
    let first_id = out1.lines().last().unwrap().to_owned();

    let (code, s) = status_json(&spec, url);
    assert_eq!(s["stack"]["status"], "CREATE_COMPLETE", "{s}");
    assert_eq!(s["stack"]["name"], stack.as_str(), "{s}");
    let outputs = s["stack"]["outputs"].as_array().unwrap();
    let output = |k: &str| {
        outputs
            .iter()
            .find(|o| o[0] == k)
            .map(|o| o[1].as_str().unwrap().to_owned())
    };
    let fs = output("FileSystemId").unwrap_or_else(|| panic!("no FileSystemId output: {s}"));
    assert!(fs.starts_with("fs-"), "{s}");
    assert_eq!(
        output("VpcId").map(|v| v.starts_with("vpc-")),
        Some(true),
        "{s}"
    );
    assert_eq!(s["file_system"]["file_system_id"], fs.as_str(), "{s}");
    assert_eq!(s["file_system"]["state"], "available", "{s}");
    // moto has no DescribeReplicationConfigurations: status lists that failure, with the file system it
    // concerns, and exits non-zero; everything else is there.
    let errors: Vec<&str> = s["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors
            .iter()
            .all(|e| e.starts_with(&format!("DescribeReplicationConfigurations {fs}"))),
        "{errors:?}"
    );
    assert_eq!(code == Some(0), errors.is_empty(), "{s}");
    let (_, text, _) = tandem(&["provision", "status", &spec, "--endpoint-url", url]);
    assert!(
        text.contains(&stack) && text.contains("CREATE_COMPLETE") && text.contains(&fs),
        "{text}"
    );

    // Second apply with the parameters kept from the stack: success, and the same stack. moto performs
    // every update (real CloudFormation answers "no updates", which apply reports as unchanged).
    let (code, out2, err) = tandem(&[
        "provision",
        "apply",
        &spec,
        "--template-file",
        template,
        "--endpoint-url",
        url,
        "--poll-seconds",
        "1",
    ]);
    assert_eq!(code, Some(0), "second apply failed:\n{out2}\n{err}");
    let second = out2.lines().last().unwrap();
    assert!(
        second.starts_with(&format!("unchanged {stack} "))
            || second.starts_with(&format!("updated {stack} ")),
        "{out2}"
    );
    assert_eq!(
        first_id.rsplit_once(' ').unwrap().1,
        second.rsplit_once(' ').unwrap().1,
        "the second apply must keep the stack (same id)"
    );
    assert!(!out2.contains("creating stack"), "{out2}");
    let (_, s) = status_json(&spec, url);
    assert!(
        matches!(
            s["stack"]["status"].as_str(),
            Some("CREATE_COMPLETE" | "UPDATE_COMPLETE")
        ),
        "{s}"
    );

    // promote-region reads the replication first; against moto that call fails and is named.
    let (code, _, err) = tandem(&[
        "provision",
        "promote-region",
        &spec,
        "--yes",
        "--endpoint-url",
        url,
    ]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains(&format!("DescribeReplicationConfigurations {fs}")),
        "{err}"
    );

    let (code, out, err) = tandem(&[
        "provision",
        "destroy",
        &spec,
        "--endpoint-url",
        url,
        "--poll-seconds",
        "1",
    ]);
    assert_eq!(code, Some(0), "destroy failed:\n{out}\n{err}");
    assert!(out.contains(&format!("deleted {stack}")), "{out}");
    // The data is retained by the template, and destroy says what stays.
    let retained = out
        .lines()
        .find(|l| l.starts_with("retained"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(retained.contains("FileSystem"), "{retained}");
    assert_eq!(
        retained.contains("DataSinkBucket"),
        parsed.data_sink,
        "{retained}"
    );
    let (code, s) = status_json(&spec, url);
    assert_eq!(code, Some(0), "{s}");
    assert!(s["stack"].is_null(), "the stack is gone after destroy: {s}");
    let (code, out, err) = tandem(&["provision", "destroy", &spec, "--endpoint-url", url]);
    assert_eq!(
        code,
        Some(0),
        "a second destroy is a success:\n{out}\n{err}"
    );
    assert!(out.contains(&format!("absent {stack}")), "{out}");
}

#[test]
fn single_lane_apply_status_destroy_against_moto() {
    let moto = Moto::start();
    lifecycle(&moto, "tenant-single.toml", "single", 1);
}

#[test]
fn double_lane_apply_status_destroy_against_moto() {
    let moto = Moto::start();
    lifecycle(&moto, "tenant-double.toml", "double", 2);
}

#[test]
fn the_full_template_is_refused_by_moto_and_the_error_names_call_and_stack() {
    // The product's template as rendered, which moto cannot create (see MOTO_CANNOT). What this shows is
    // tandem's side of a refused CreateStack: the service's code and message, with the call and the stack.
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (spec, parsed) = spec_file(dir.path(), "tenant-double.toml", "full");
    let (code, out, err) = tandem(&[
        "provision",
        "apply",
        &spec,
        "--endpoint-url",
        &moto.url,
        "--poll-seconds",
        "1",
        "--broker-image",
        "ghcr.io/example/tandem:1",
        "--certificate-arn",
        "arn:aws:acm:eu-central-1:123456789012:certificate/0000",
    ]);
    assert_ne!(code, Some(0), "{out}");
    // moto first crashes on the record set (HTTP 500, which the SDK retries) or refuses a listener; either
    // way the one error line names the call and the stack, and nothing panics.
    let want = format!("error: CreateStack {}: ", parsed.stack_name());
    assert!(err.starts_with(&want) && !err.contains("panicked"), "{err}");
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
fn promote_region_without_a_stack_names_what_is_missing() {
    let moto = Moto::start();
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
