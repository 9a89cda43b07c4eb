//! `tandem provision plan|render|local`: a tenant spec (TOML) to its resource plan, its
//! CloudFormation template, or its one-machine layout. Applying to AWS (`apply`, `destroy`,
//! `status`, `promote-region`) is not wired yet: those subcommands say so and exit non-zero.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tandem_provisioning::{TenantSpec, local, plan, render};

#[derive(clap::Args, Debug)]
pub struct ProvisionArgs {
    #[command(subcommand)]
    command: ProvisionCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ProvisionCommand {
    /// Validate a tenant spec and print the resources it becomes.
    Plan {
        /// The tenant spec (see docs/examples/tenant-double.toml).
        spec: PathBuf,
    },
    /// Print the tenant's CloudFormation template (YAML) on stdout.
    Render {
        /// The tenant spec.
        spec: PathBuf,
    },
    /// Print the same topology laid out on one machine (lanes, ports, shared dir, proxy).
    Local {
        /// The tenant spec.
        spec: PathBuf,
        /// Where the lanes' shared directory and files go.
        #[arg(long, default_value = "/var/tmp/tandem")]
        base_dir: PathBuf,
    },
    /// Create or update the tenant's stack in AWS (not available yet).
    Apply {
        /// The tenant spec.
        spec: PathBuf,
    },
}

pub(crate) fn load(path: &std::path::Path) -> anyhow::Result<TenantSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    TenantSpec::load(&text).map_err(|errs| {
        let lines: Vec<String> = errs.iter().map(|e| format!("  {e}")).collect();
        anyhow::anyhow!(
            "{}: invalid tenant spec:\n{}",
            path.display(),
            lines.join("\n")
        )
    })
}

pub fn run(args: ProvisionArgs) -> anyhow::Result<()> {
    match args.command {
        ProvisionCommand::Plan { spec } => print!("{}", plan::plan(&load(&spec)?).summary()),
        ProvisionCommand::Render { spec } => {
            print!("{}", render::cloudformation(&plan::plan(&load(&spec)?)))
        }
        ProvisionCommand::Local { spec, base_dir } => {
            println!("{:#?}", local::plan(&load(&spec)?, &base_dir))
        }
        ProvisionCommand::Apply { spec } => {
            load(&spec)?;
            bail!(
                "apply is not available yet: render the template with `tandem provision render` and \
                 deploy it with CloudFormation; the AWS SDK apply lands with issue 8"
            )
        }
    }
    Ok(())
}
