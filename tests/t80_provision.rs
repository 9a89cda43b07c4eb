//! `tandem provision`: tenant spec to plan, template and local layout, with clear errors.

mod support;

use support::*;

const DOUBLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/docs/examples/tenant-double.toml"
);

#[test]
fn plan_render_and_local_from_the_example_spec() {
    let (code, out, err) = run_cli(&["provision", "plan", DOUBLE]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("resources") && out.contains("AWS::EC2::VPC"),
        "{out}"
    );
    let (code, out, _) = run_cli(&["provision", "render", DOUBLE]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("AWSTemplateFormatVersion") && out.contains("/health"),
        "{out}"
    );
    // Deterministic: the same spec renders byte for byte the same.
    assert_eq!(run_cli(&["provision", "render", DOUBLE]).1, out);
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(&[
        "provision",
        "local",
        DOUBLE,
        "--base-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(dir.path().to_str().unwrap()), "{out}");
}

#[test]
fn a_bad_spec_names_the_key_in_plan_and_apply() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let mut text = std::fs::read_to_string(DOUBLE).unwrap();
    text = text.replace("lanes = 2", "lanes = 3");
    assert!(
        text.contains("lanes = 3"),
        "the example spec sets lanes = 2"
    );
    std::fs::write(&bad, text).unwrap();
    let (code, _, err) = run_cli(&["provision", "plan", bad.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("lanes") && !err.contains("stack backtrace"),
        "{err}"
    );
    // apply checks the spec before it talks to AWS (tests/t81_aws_moto.rs drives apply itself).
    let (code, _, err) = run_cli(&["provision", "apply", bad.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("lanes") && err.contains("invalid tenant spec"),
        "{err}"
    );
}
