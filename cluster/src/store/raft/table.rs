//! The replicated state: the lease table and the commands that change it. Pure and deterministic, because every
//! member applies the same log to its own copy and the copies must agree.
//!
//! Epochs are dense (a claim of `n` needs `n - 1`), so "epoch `n` was claimed" is `1 <= n <= newest`: the claim and
//! supersession checks need only `newest`, never the records of old epochs. That is what makes garbage collection
//! safe here, unlike on the file store: a collected epoch still reads as claimed and superseded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One claimed epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimed {
    /// The lane that claimed it (as given; validated again when read back).
    pub holder: String,
    /// The claimant's random tag for this claim: a retried claim whose first attempt did land recognises itself.
    pub nonce: u64,
    /// The holder's heartbeat counter (0 until its first renewal).
    pub heartbeat: u64,
}

/// The lease table every member replicates. It is also the whole snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTable {
    /// Records of the newest epochs; older ones are dropped by [`LeaseCommand::Collect`].
    epochs: BTreeMap<u64, Claimed>,
    /// The newest epoch ever claimed (0: none). Kept apart from `epochs` so collection can never lower it.
    newest: u64,
}

/// A change to the lease, proposed through the raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseCommand {
    /// Claim `epoch` for `holder`.
    Claim {
        /// The epoch.
        epoch: u64,
        /// The claimant.
        holder: String,
        /// See [`Claimed::nonce`].
        nonce: u64,
    },
    /// Publish heartbeat `counter` for `epoch`.
    Renew {
        /// The epoch.
        epoch: u64,
        /// Who renews; must be the epoch's holder.
        holder: String,
        /// The new heartbeat value.
        counter: u64,
    },
    /// Drop the records of epochs older than `current` (never the newest).
    Collect {
        /// The caller's current epoch.
        current: u64,
    },
}

/// What applying a [`LeaseCommand`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseReply {
    /// Applied.
    Done,
    /// The epoch was already claimed; `nonce` is the winner's tag when its record is still kept.
    Lost {
        /// The winning claim's nonce.
        nonce: Option<u64>,
    },
    /// The epoch's predecessor was never claimed (or the epoch is 0).
    NotNext,
    /// A newer epoch exists.
    Superseded {
        /// The newest epoch.
        newer: u64,
    },
    /// The epoch was never claimed, or not by this holder.
    NotHolder,
}

/// The newest epoch as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewestView {
    /// The epoch.
    pub epoch: u64,
    /// Its holder, if its record is kept (always, for the newest).
    pub holder: Option<String>,
    /// Its heartbeat.
    pub heartbeat: u64,
}

impl LeaseTable {
    /// Apply one command. Same table and command in, same table and reply out, on every member.
    pub fn apply(&mut self, command: &LeaseCommand) -> LeaseReply {
        match command {
            LeaseCommand::Claim {
                epoch,
                holder,
                nonce,
            } => {
                let epoch = *epoch;
                if epoch >= 1 && epoch <= self.newest {
                    return LeaseReply::Lost {
                        nonce: self.epochs.get(&epoch).map(|c| c.nonce),
                    };
                }
                if epoch != self.newest + 1 {
                    return LeaseReply::NotNext;
                }
                self.epochs.insert(
                    epoch,
                    Claimed {
                        holder: holder.clone(),
                        nonce: *nonce,
                        heartbeat: 0,
                    },
                );
                self.newest = epoch;
                LeaseReply::Done
            }
            LeaseCommand::Renew {
                epoch,
                holder,
                counter,
            } => {
                let epoch = *epoch;
                match self.epochs.get_mut(&epoch) {
                    Some(c) if c.holder == *holder => {
                        if self.newest > epoch {
                            return LeaseReply::Superseded { newer: self.newest };
                        }
                        c.heartbeat = *counter;
                        LeaseReply::Done
                    }
                    // A collected record of an old epoch: whoever asks, a newer epoch exists.
                    None if epoch >= 1 && epoch < self.newest => {
                        LeaseReply::Superseded { newer: self.newest }
                    }
                    _ => LeaseReply::NotHolder,
                }
            }
            LeaseCommand::Collect { current } => {
                let keep_from = (*current).min(self.newest);
                self.epochs.retain(|&e, _| e >= keep_from);
                LeaseReply::Done
            }
        }
    }

    /// The newest claimed epoch, or `None` on an empty table.
    pub fn newest(&self) -> Option<NewestView> {
        (self.newest > 0).then(|| {
            let record = self.epochs.get(&self.newest);
            NewestView {
                epoch: self.newest,
                holder: record.map(|c| c.holder.clone()),
                heartbeat: record.map_or(0, |c| c.heartbeat),
            }
        })
    }

    /// How many epoch records are kept.
    pub fn kept(&self) -> usize {
        self.epochs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(epoch: u64, holder: &str, nonce: u64) -> LeaseCommand {
        LeaseCommand::Claim {
            epoch,
            holder: holder.into(),
            nonce,
        }
    }

    fn renew(epoch: u64, holder: &str, counter: u64) -> LeaseCommand {
        LeaseCommand::Renew {
            epoch,
            holder: holder.into(),
            counter,
        }
    }

    #[test]
    fn claims_are_dense_and_exclusive() {
        let mut t = LeaseTable::default();
        assert_eq!(t.apply(&claim(0, "a", 1)), LeaseReply::NotNext);
        assert_eq!(t.apply(&claim(2, "a", 1)), LeaseReply::NotNext);
        assert_eq!(t.apply(&claim(1, "a", 7)), LeaseReply::Done);
        assert_eq!(
            t.apply(&claim(1, "b", 8)),
            LeaseReply::Lost { nonce: Some(7) }
        );
        assert_eq!(t.apply(&claim(3, "b", 8)), LeaseReply::NotNext);
        assert_eq!(t.apply(&claim(2, "b", 8)), LeaseReply::Done);
        let view = t.newest().unwrap();
        assert_eq!((view.epoch, view.holder.as_deref()), (2, Some("b")));
    }

    #[test]
    fn renewals_check_holder_then_successor() {
        let mut t = LeaseTable::default();
        assert_eq!(t.apply(&renew(1, "a", 1)), LeaseReply::NotHolder);
        t.apply(&claim(1, "a", 1));
        assert_eq!(t.apply(&renew(1, "b", 1)), LeaseReply::NotHolder);
        assert_eq!(t.apply(&renew(1, "a", 4)), LeaseReply::Done);
        assert_eq!(t.newest().unwrap().heartbeat, 4);
        t.apply(&claim(2, "b", 2));
        assert_eq!(
            t.apply(&renew(1, "a", 5)),
            LeaseReply::Superseded { newer: 2 }
        );
        assert_eq!(t.newest().unwrap().heartbeat, 0);
    }

    #[test]
    fn collection_keeps_the_newest_and_the_checks() {
        let mut t = LeaseTable::default();
        for e in 1..=5 {
            t.apply(&claim(e, "a", e));
        }
        t.apply(&LeaseCommand::Collect { current: 9 });
        assert_eq!(
            t.kept(),
            1,
            "only the newest survives even a too-high current"
        );
        assert_eq!(
            t.apply(&claim(3, "b", 99)),
            LeaseReply::Lost { nonce: None }
        );
        assert_eq!(
            t.apply(&renew(2, "a", 1)),
            LeaseReply::Superseded { newer: 5 }
        );
        assert_eq!(t.apply(&renew(6, "a", 1)), LeaseReply::NotHolder);
        assert_eq!(t.apply(&renew(5, "a", 3)), LeaseReply::Done);
        assert_eq!(t.newest().unwrap().heartbeat, 3);
        assert_eq!(t.apply(&claim(6, "b", 6)), LeaseReply::Done);
    }

    #[test]
    fn serde_round_trip() {
        let mut t = LeaseTable::default();
        t.apply(&claim(1, "a", 11));
        t.apply(&renew(1, "a", 2));
        let json = serde_json::to_vec(&t).unwrap();
        assert_eq!(serde_json::from_slice::<LeaseTable>(&json).unwrap(), t);
    }
}
