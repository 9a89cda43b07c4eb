//! status and promote-region: what a tenant's stack and file system look like, and the EFS failover.
//!
//! status reads the stack (status, outputs), then the file system named by its `FileSystemId` output and
//! its replication configuration. Each part is read even when another failed, so a half-broken deployment
//! still shows everything that can be seen; the failures are listed with the resource they concern.
//!
//! promote-region is EFS failover: deleting the replication configuration turns the read-only replica in
//! the contingency region into an ordinary writable file system. It is irreversible (replicating back means
//! a new configuration and a full copy), hence the CLI's `--yes`.

use serde::Serialize;

use super::{
    AwsError, CloudFormationApi, EfsApi, FileSystemInfo, ReplicaInfo, ReplicationInfo, StackInfo,
};

/// The stack output that names the tenant's file system (see `plan::outputs`).
pub const FILE_SYSTEM_OUTPUT: &str = "FileSystemId";

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub stack_name: String,
    pub region: String,
    /// `None`: there is no such stack.
    pub stack: Option<StackInfo>,
    pub file_system: Option<FileSystemInfo>,
    pub replications: Vec<ReplicationInfo>,
    /// Calls that failed, each naming its resource.
    pub errors: Vec<String>,
}

impl StatusReport {
    /// A few aligned lines for people (`--json` prints the struct instead).
    pub fn text(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, k: &str, v: &str| out.push_str(&format!("{k:<30} {v}\n"));
        line(
            &mut out,
            "stack",
            &format!("{} ({})", self.stack_name, self.region),
        );
        match &self.stack {
            None => line(&mut out, "status", "absent"),
            Some(s) => {
                let reason = s
                    .status_reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                line(&mut out, "status", &format!("{}{reason}", s.status));
                for (k, v) in &s.outputs {
                    line(&mut out, &format!("output {k}"), v);
                }
            }
        }
        if let Some(fs) = &self.file_system {
            let protection = fs
                .replication_overwrite_protection
                .as_deref()
                .map(|p| format!(", replication overwrite protection {p}"))
                .unwrap_or_default();
            line(
                &mut out,
                "file system",
                &format!("{} {}{protection}", fs.file_system_id, fs.state),
            );
        }
        for r in &self.replications {
            for d in &r.destinations {
                line(
                    &mut out,
                    "replication",
                    &format!(
                        "{} ({}) -> {} ({}) {}",
                        r.source_file_system_id,
                        r.source_region,
                        d.file_system_id,
                        d.region,
                        d.status
                    ),
                );
            }
        }
        if self.file_system.is_some() && self.replications.is_empty() && self.errors.is_empty() {
            line(&mut out, "replication", "none");
        }
        for e in &self.errors {
            line(&mut out, "error", e);
        }
        out
    }
}

/// Reads the stack and its file system. Only a failure to read the stack itself is an `Err`.
pub async fn status<C: CloudFormationApi, E: EfsApi>(
    cf: &C,
    efs: &E,
    stack_name: &str,
    region: &str,
) -> Result<StatusReport, AwsError> {
    let stack = cf.describe_stack(stack_name).await?;
    let mut report = StatusReport {
        stack_name: stack_name.to_owned(),
        region: region.to_owned(),
        stack,
        file_system: None,
        replications: vec![],
        errors: vec![],
    };
    let Some(fs_id) = report
        .stack
        .as_ref()
        .and_then(|s| s.output(FILE_SYSTEM_OUTPUT))
        .map(str::to_owned)
    else {
        return Ok(report);
    };
    match efs.describe_file_system(&fs_id).await {
        Ok(Some(fs)) => report.file_system = Some(fs),
        Ok(None) => report.errors.push(format!(
            "file system {fs_id} (stack output {FILE_SYSTEM_OUTPUT}) does not exist"
        )),
        Err(e) => report.errors.push(e.to_string()),
    }
    match efs.replications(&fs_id).await {
        Ok(r) => report.replications = r,
        Err(e) => report.errors.push(e.to_string()),
    }
    Ok(report)
}

/// Why promote-region cannot go ahead.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(
        "stack {0} does not exist in the home region; give the replica with --replica-file-system-id"
    )]
    NoStack(String),
    #[error("stack {stack} has no {FILE_SYSTEM_OUTPUT} output")]
    NoFileSystemOutput { stack: String },
    #[error(
        "file system {0} has no replication configuration: it was already promoted, or never replicated"
    )]
    NotReplicated(String),
    #[error("file system {fs} replicates to {found}, not to the contingency region {wanted}")]
    WrongRegion {
        fs: String,
        wanted: String,
        found: String,
    },
}

/// The replication promote-region would end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Promotion {
    pub source_file_system_id: String,
    pub source_region: String,
    pub replica: ReplicaInfo,
}

/// Finds the replication of `file_system_id` (the source, or the replica itself) to `contingency_region`.
pub async fn find_promotion<E: EfsApi>(
    efs: &E,
    file_system_id: &str,
    contingency_region: &str,
) -> Result<Promotion, PromoteError> {
    let reps = efs.replications(file_system_id).await?;
    let Some(rep) = reps.first() else {
        return Err(PromoteError::NotReplicated(file_system_id.to_owned()));
    };
    let Some(replica) = rep
        .destinations
        .iter()
        .find(|d| d.region == contingency_region)
    else {
        return Err(PromoteError::WrongRegion {
            fs: rep.source_file_system_id.clone(),
            wanted: contingency_region.to_owned(),
            found: rep
                .destinations
                .iter()
                .map(|d| d.region.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    Ok(Promotion {
        source_file_system_id: rep.source_file_system_id.clone(),
        source_region: rep.source_region.clone(),
        replica: replica.clone(),
    })
}

/// The file system id the stack's output names.
pub async fn stack_file_system<C: CloudFormationApi>(
    cf: &C,
    stack_name: &str,
) -> Result<String, PromoteError> {
    let stack = cf
        .describe_stack(stack_name)
        .await?
        .ok_or_else(|| PromoteError::NoStack(stack_name.to_owned()))?;
    stack
        .output(FILE_SYSTEM_OUTPUT)
        .map(str::to_owned)
        .ok_or_else(|| PromoteError::NoFileSystemOutput {
            stack: stack_name.to_owned(),
        })
}

/// Ends the replication: the replica becomes writable once EFS finishes deleting the configuration.
pub async fn promote<E: EfsApi>(efs: &E, promotion: &Promotion) -> Result<(), AwsError> {
    efs.delete_replication(&promotion.source_file_system_id)
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::aws::deploy::fake::{FakeCf, stack};

    #[derive(Debug, Default)]
    struct FakeEfs {
        fs: Option<FileSystemInfo>,
        reps: Mutex<Vec<ReplicationInfo>>,
        fail_replications: bool,
    }

    impl EfsApi for FakeEfs {
        async fn describe_file_system(
            &self,
            _id: &str,
        ) -> Result<Option<FileSystemInfo>, AwsError> {
            Ok(self.fs.clone())
        }
        async fn replications(&self, id: &str) -> Result<Vec<ReplicationInfo>, AwsError> {
            if self.fail_replications {
                return Err(AwsError::new(
                    "DescribeReplicationConfigurations",
                    id,
                    None,
                    "not implemented",
                ));
            }
            Ok(self.reps.lock().unwrap().clone())
        }
        async fn delete_replication(&self, id: &str) -> Result<(), AwsError> {
            let mut reps = self.reps.lock().unwrap();
            let before = reps.len();
            reps.retain(|r| r.source_file_system_id != id);
            if reps.len() == before {
                return Err(AwsError::new(
                    "DeleteReplicationConfiguration",
                    id,
                    Some("ReplicationNotFound".into()),
                    "none",
                ));
            }
            Ok(())
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn efs() -> FakeEfs {
        FakeEfs {
            fs: Some(FileSystemInfo {
                file_system_id: "fs-1".into(),
                name: None,
                state: "available".into(),
                replication_overwrite_protection: Some("ENABLED".into()),
            }),
            reps: Mutex::new(vec![ReplicationInfo {
                source_file_system_id: "fs-1".into(),
                source_region: "eu-central-1".into(),
                destinations: vec![ReplicaInfo {
                    region: "eu-west-1".into(),
                    file_system_id: "fs-2".into(),
                    status: "ENABLED".into(),
                }],
            }]),
            fail_replications: false,
        }
    }

    fn cf_with_stack() -> FakeCf {
        let cf = FakeCf::default();
        let mut s = stack("tandem-acme-orders", "CREATE_COMPLETE");
        s.outputs.push((FILE_SYSTEM_OUTPUT.into(), "fs-1".into()));
        cf.0.lock().unwrap().stack = Some(s);
        cf
    }

    #[test]
    fn status_shows_stack_file_system_and_replication() {
        let r = run(status(
            &cf_with_stack(),
            &efs(),
            "tandem-acme-orders",
            "eu-central-1",
        ))
        .unwrap();
        let text = r.text();
        assert!(
            text.contains("CREATE_COMPLETE") && text.contains("fs-1 available"),
            "{text}"
        );
        assert!(
            text.contains("fs-1 (eu-central-1) -> fs-2 (eu-west-1) ENABLED"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["replications"][0]["destinations"][0]["file_system_id"],
            "fs-2"
        );
    }

    #[test]
    fn status_of_an_absent_stack_says_absent_and_a_failed_part_is_listed() {
        let r = run(status(
            &FakeCf::default(),
            &efs(),
            "tandem-x-y",
            "eu-central-1",
        ))
        .unwrap();
        assert!(
            r.stack.is_none() && r.text().contains("absent"),
            "{}",
            r.text()
        );
        let mut e = efs();
        e.fail_replications = true;
        let r = run(status(
            &cf_with_stack(),
            &e,
            "tandem-acme-orders",
            "eu-central-1",
        ))
        .unwrap();
        assert!(r.file_system.is_some());
        assert!(
            r.text().contains("DescribeReplicationConfigurations fs-1"),
            "{}",
            r.text()
        );
    }

    #[test]
    fn promote_ends_the_replication_once_and_then_refuses() {
        let cf = cf_with_stack();
        let e = efs();
        let fs = run(stack_file_system(&cf, "tandem-acme-orders")).unwrap();
        let p = run(find_promotion(&e, &fs, "eu-west-1")).unwrap();
        assert_eq!(p.replica.file_system_id, "fs-2");
        run(promote(&e, &p)).unwrap();
        let again = run(find_promotion(&e, &fs, "eu-west-1")).unwrap_err();
        assert!(matches!(again, PromoteError::NotReplicated(_)), "{again:?}");
    }

    #[test]
    fn promote_refuses_a_replica_in_another_region() {
        let err = run(find_promotion(&efs(), "fs-1", "us-east-1")).unwrap_err();
        assert!(
            err.to_string().contains("eu-west-1") && err.to_string().contains("us-east-1"),
            "{err}"
        );
    }
}
