//! `tandem provision plan|render|local|apply|status|destroy|promote-region`: a tenant spec (TOML) to its
//! resource plan, its CloudFormation template, its one-machine layout, or its stack in AWS.
//!
//! The AWS commands are thin: the logic (create/update/resume/rollback handling, event streaming, status,
//! EFS failover) lives in `tandem_provisioning::aws` behind a trait seam; here are the flags, a
//! current-thread runtime, and the indicatif progress bar.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tandem_provisioning::aws::deploy::{self, ApplyOutcome, DestroyOutcome, WaitOptions};
use tandem_provisioning::aws::sdk::Sdk;
use tandem_provisioning::aws::status as aws_status;
use tandem_provisioning::aws::{ParamValue, Progress, StackEvent, StackRequest};
use tandem_provisioning::plan::{P_AMI, P_CARWASH, P_CERT, P_IMAGE};
use tandem_provisioning::{TenantSpec, local, plan, render};

#[derive(clap::Args, Debug)]
pub struct ProvisionArgs {
    #[command(subcommand)]
    command: ProvisionCommand,
}

/// Where and how the AWS commands talk to AWS.
#[derive(clap::Args, Debug)]
struct AwsArgs {
    /// Send every AWS call to this endpoint instead of AWS (e.g. a local moto server). The region is
    /// the spec's; credentials come from the default chain (environment, profile, instance role).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
}

/// How apply and destroy wait for CloudFormation.
#[derive(clap::Args, Debug)]
struct WaitArgs {
    /// Seconds between two polls of the stack and its events.
    #[arg(long, default_value_t = 5)]
    poll_seconds: u64,
    /// Give up waiting for one stack operation after this many minutes (the operation goes on in AWS;
    /// running the command again resumes waiting).
    #[arg(long, default_value_t = 60)]
    timeout_minutes: u64,
}

impl WaitArgs {
    fn options(&self) -> WaitOptions {
        WaitOptions {
            poll: Duration::from_secs(self.poll_seconds),
            timeout: Duration::from_secs(self.timeout_minutes.saturating_mul(60)),
        }
    }
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
    /// Create or update the tenant's stack in its region, streaming the stack events. Idempotent; resumes
    /// after an interrupted run. Parameters not given keep their previous value on an update.
    Apply {
        /// The tenant spec.
        spec: PathBuf,
        /// The broker's container image (stack parameter BrokerImage; required on the first apply).
        #[arg(long)]
        broker_image: Option<String>,
        /// ACM certificate for the HTTPS listener (TlsCertificateArn; required on the first apply).
        #[arg(long)]
        certificate_arn: Option<String>,
        /// Carwash ingress only: the principal allowed to use the endpoint service (CarwashPrincipal).
        #[arg(long)]
        carwash_principal: Option<String>,
        /// SSM parameter naming the lanes' AMI (LaneAmi; defaults to the latest Amazon Linux 2023 arm64).
        #[arg(long)]
        lane_ami: Option<String>,
        /// Apply this template file (JSON or YAML, e.g. a reviewed `render` output) instead of rendering the
        /// spec; the stack name, region and parameters still come from the spec.
        #[arg(long)]
        template_file: Option<PathBuf>,
        #[command(flatten)]
        aws: AwsArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show the tenant stack's status and outputs, its EFS file system and replication.
    Status {
        /// The tenant spec.
        spec: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// Delete the tenant's stack, streaming the stack events. An absent stack is success. The file system
    /// and the data-sink bucket are retained by the template and stay.
    Destroy {
        /// The tenant spec.
        spec: PathBuf,
        #[command(flatten)]
        aws: AwsArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Fail over to the contingency region: end the EFS replication so the replica there becomes
    /// writable. Irreversible; needs --yes.
    PromoteRegion {
        /// The tenant spec.
        spec: PathBuf,
        /// Find the replication through this replica in the contingency region instead of the home
        /// region's stack (for when the home region is down).
        #[arg(long)]
        replica_file_system_id: Option<String>,
        /// Really do it.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        aws: AwsArgs,
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
        ProvisionCommand::Apply {
            spec,
            broker_image,
            certificate_arn,
            carwash_principal,
            lane_ami,
            template_file,
            aws,
            wait,
        } => {
            let spec = load(&spec)?;
            let template = match template_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            let given = [
                (P_IMAGE, broker_image),
                (P_CERT, certificate_arn),
                (P_CARWASH, carwash_principal),
                (P_AMI, lane_ami),
            ];
            runtime()?.block_on(apply(&spec, given, template, &aws, &wait))?
        }
        ProvisionCommand::Status { spec, json, aws } => {
            let spec = load(&spec)?;
            runtime()?.block_on(status(&spec, json, &aws))?
        }
        ProvisionCommand::Destroy { spec, aws, wait } => {
            let spec = load(&spec)?;
            runtime()?.block_on(destroy(&spec, &aws, &wait))?
        }
        ProvisionCommand::PromoteRegion {
            spec,
            replica_file_system_id,
            yes,
            aws,
        } => {
            let spec = load(&spec)?;
            runtime()?.block_on(promote_region(&spec, replica_file_system_id, yes, &aws))?
        }
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Events on stdout (one line each, as they arrive), the bar on stderr; without a terminal the bar hides
/// itself and the event lines still print.
struct Bar(ProgressBar);

impl Bar {
    fn new(total: u64) -> Self {
        let pb = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} resources {msg}",
        ) {
            pb.set_style(style);
        }
        pb.enable_steady_tick(Duration::from_millis(200));
        Self(pb)
    }
}

impl Progress for Bar {
    fn event(&mut self, e: &StackEvent) {
        let reason = e.reason.as_deref().unwrap_or("");
        self.0.suspend(|| {
            println!(
                "{}  {:<36} {:<40} {:<28} {reason}",
                e.timestamp, e.logical_id, e.resource_type, e.status
            )
        });
    }
    fn note(&mut self, message: &str) {
        self.0.suspend(|| println!("{message}"));
    }
    fn progress(&mut self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

async fn apply(
    spec: &TenantSpec,
    given: [(&str, Option<String>); 4],
    template: Option<String>,
    aws: &AwsArgs,
    wait: &WaitArgs,
) -> anyhow::Result<()> {
    let plan = plan::plan(spec);
    let flag = |id: &str| match id {
        P_IMAGE => "give it with --broker-image".to_owned(),
        P_CERT => "give it with --certificate-arn".to_owned(),
        P_CARWASH => "give it with --carwash-principal".to_owned(),
        other => format!("the template parameter {other} has no default"),
    };
    let required: Vec<(String, String)> = plan
        .parameters
        .iter()
        .filter(|p| p.default.is_none())
        .map(|p| (p.id.clone(), flag(&p.id)))
        .collect();
    let mut parameters = Vec::new();
    for (id, value) in given {
        let Some(value) = value else { continue };
        if !plan.parameters.iter().any(|p| p.id == id) {
            bail!(
                "this spec's template has no parameter {id} (is the flag meant for a carwash tenant?)"
            );
        }
        parameters.push((id.to_owned(), ParamValue::Value(value)));
    }
    // A JSON template file counts its own resources for the progress bar; YAML is sent as is and the
    // spec's count stands in.
    let total = template
        .as_deref()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .and_then(|v| v.get("Resources")?.as_object().map(|r| r.len()))
        .unwrap_or(plan.resources.len()) as u64;
    let req = StackRequest {
        name: plan.stack_name.clone(),
        template: template.unwrap_or_else(|| render::cloudformation_json(&plan)),
        parameters,
    };
    let sdk = Sdk::connect(&spec.region, aws.endpoint_url.as_deref()).await;
    let mut bar = Bar::new(total);
    let out = deploy::apply(&sdk, &req, &required, total, &mut bar, wait.options()).await;
    drop(bar);
    match out? {
        ApplyOutcome::Created { stack_id } => println!("created {} ({stack_id})", req.name),
        ApplyOutcome::Updated { stack_id } => println!("updated {} ({stack_id})", req.name),
        ApplyOutcome::Unchanged { stack_id } => println!("unchanged {} ({stack_id})", req.name),
    }
    Ok(())
}

async fn destroy(spec: &TenantSpec, aws: &AwsArgs, wait: &WaitArgs) -> anyhow::Result<()> {
    let plan = plan::plan(spec);
    let sdk = Sdk::connect(&spec.region, aws.endpoint_url.as_deref()).await;
    let total = plan.resources.len() as u64;
    let mut bar = Bar::new(total);
    let out = deploy::destroy(&sdk, &plan.stack_name, total, &mut bar, wait.options()).await;
    drop(bar);
    match out? {
        DestroyOutcome::Deleted { stack_id } => {
            println!("deleted {} ({stack_id})", plan.stack_name);
            let retained: Vec<&str> = plan
                .resources
                .iter()
                .filter(|r| r.retain)
                .map(|r| r.logical_id.as_str())
                .collect();
            println!(
                "retained (DeletionPolicy Retain; delete them by hand when the data may go): {}, and the EFS \
                 replica in {}",
                retained.join(", "),
                spec.contingency_region
            );
        }
        DestroyOutcome::Absent => println!("absent {} (nothing to delete)", plan.stack_name),
    }
    Ok(())
}

async fn status(spec: &TenantSpec, json: bool, aws: &AwsArgs) -> anyhow::Result<()> {
    let sdk = Sdk::connect(&spec.region, aws.endpoint_url.as_deref()).await;
    let report = aws_status::status(&sdk, &sdk, &spec.stack_name(), &spec.region).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if !report.errors.is_empty() {
        bail!(
            "status is incomplete: {} call(s) failed (listed in the report)",
            report.errors.len()
        );
    }
    Ok(())
}

async fn promote_region(
    spec: &TenantSpec,
    replica: Option<String>,
    yes: bool,
    aws: &AwsArgs,
) -> anyhow::Result<()> {
    // Through the replica, the calls go to the contingency region (the home region may be down).
    let (region, fs) = match replica {
        Some(id) => (spec.contingency_region.as_str(), id),
        None => {
            let home = Sdk::connect(&spec.region, aws.endpoint_url.as_deref()).await;
            let fs = aws_status::stack_file_system(&home, &spec.stack_name()).await?;
            (spec.region.as_str(), fs)
        }
    };
    let sdk = Sdk::connect(region, aws.endpoint_url.as_deref()).await;
    let p = aws_status::find_promotion(&sdk, &fs, &spec.contingency_region).await?;
    println!(
        "replication {} ({}) -> {} ({}), status {}",
        p.source_file_system_id,
        p.source_region,
        p.replica.file_system_id,
        p.replica.region,
        p.replica.status
    );
    if !yes {
        bail!(
            "not promoting without --yes: ending the replication makes {} in {} writable and cannot be undone \
             (replicating back needs a new configuration and a full copy)",
            p.replica.file_system_id,
            p.replica.region
        );
    }
    aws_status::promote(&sdk, &p).await?;
    println!(
        "replication deleted: {} in {} becomes writable once EFS finishes (check with `aws efs \
         describe-file-systems --region {}`).\nNext: rebuild the tenant in {}: set region = \"{}\" (and a new \
         contingency_region) in the spec, apply it there, and point the lanes at file system {} (the rendered \
         template creates a new file system; adopting the promoted replica is a manual step for now).",
        p.replica.file_system_id,
        p.replica.region,
        p.replica.region,
        p.replica.region,
        p.replica.region,
        p.replica.file_system_id
    );
    Ok(())
}
