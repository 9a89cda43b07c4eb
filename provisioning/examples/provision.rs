//! Stand-in for `tandem provision plan|render|local` until the CLI wires the crate in:
//!
//! ```text
//! cargo run -p tandem-provisioning --example provision -- plan   docs/examples/tenant-double.toml
//! cargo run -p tandem-provisioning --example provision -- render docs/examples/tenant-double.toml > stack.yaml
//! cargo run -p tandem-provisioning --example provision -- local  docs/examples/tenant-double.toml /var/tmp/t
//! ```

use std::path::Path;
use std::process::ExitCode;

use tandem_provisioning::{TenantSpec, local, plan, render};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(cmd), Some(file)) = (args.first(), args.get(1)) else {
        eprintln!("usage: provision plan|render|local <tenant.toml> [base-dir]");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{file}: {e}");
            return ExitCode::from(2);
        }
    };
    let spec = match TenantSpec::load(&text) {
        Ok(s) => s,
        Err(errs) => {
            for e in errs {
                eprintln!("{file}: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    match cmd.as_str() {
        "plan" => print!("{}", plan::plan(&spec).summary()),
        "render" => print!("{}", render::cloudformation(&plan::plan(&spec))),
        "local" => {
            let base = args.get(2).map_or("/var/tmp/tandem", String::as_str);
            println!("{:#?}", local::plan(&spec, Path::new(base)));
        }
        other => {
            eprintln!("unknown command {other:?}; use plan, render or local");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
