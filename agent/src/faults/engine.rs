//! The fault engine: journal → snapshot → apply, leases, and recovery.
//!
//! Order of operations for every fault (DESIGN.md "Faults"):
//! 1. validate the spec and resolve the target (unknown interface: error);
//! 2. snapshot the prior state (refusing what could not be restored exactly);
//! 3. journal the intent with that prior state, fsync'ed;
//! 4. apply; if that fails, revert whatever happened and journal `Failed`;
//! 5. at lease expiry, on revert, on SIGTERM: revert, then journal `Reverted`.
//!
//! At start, [`FaultEngine::start`] reverts everything the journal still
//! lists, so a crash at any step leaves nothing applied after restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt as _;
use graydar_common::faults::{Direction, FaultSpec};

use super::dm::{self, DmFaultError, DmFaultSpec, DmTable as _, TableLine};
use super::journal::{FaultRecord, Journal, JournalError, Record};
use super::netem::{NetemSpec, SpecError};
use super::tc::{self, PriorRoot, TcError};

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("interface {0:?} does not exist on this host")]
    UnknownInterface(String),
    #[error(transparent)]
    Tc(#[from] TcError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Dm(#[from] DmFaultError),
    #[error("fault {0:?} is already active")]
    Duplicate(String),
    #[error("no active fault {0:?}")]
    NotFound(String),
    #[error("journal record of {id}: {detail}")]
    Record { id: String, detail: String },
    #[error("not supported by this agent: {0}")]
    Unsupported(String),
}

/// A netem fault on a whole interface's egress.
#[derive(Clone, Debug)]
pub struct NetemFault {
    pub id: String,
    pub interface: String,
    pub spec: NetemSpec,
    pub lease: Duration,
}

/// A dm-delay / dm-flakey fault on a dm device with a linear table.
#[derive(Clone, Debug)]
pub struct DmFault {
    pub id: String,
    /// Name of the dm device (`/dev/mapper/<device>`).
    pub device: String,
    pub spec: DmFaultSpec,
    pub lease: Duration,
}

enum Prior {
    Qdisc { ifindex: u32, root: PriorRoot },
    DmTable(Vec<TableLine>),
}

struct Active {
    record: FaultRecord,
    prior: Prior,
}

pub struct FaultEngine {
    journal: Journal,
    netlink: rtnetlink::Handle,
    active: BTreeMap<String, Active>,
}

/// What start-up recovery did with one journaled fault.
#[derive(Debug)]
pub struct Recovered {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub result: Result<(), String>,
}

/// The journal record of a fault about to be applied: spec and prior state
/// as JSON, lease from now.
fn fault_record(
    id: &str,
    kind: &str,
    target: &str,
    spec: &impl serde::Serialize,
    prior: &impl serde::Serialize,
    lease: Duration,
) -> Result<FaultRecord, FaultError> {
    let record_err = |e: serde_json::Error| FaultError::Record {
        id: id.to_owned(),
        detail: e.to_string(),
    };
    Ok(FaultRecord {
        id: id.to_owned(),
        kind: kind.to_owned(),
        target: target.to_owned(),
        spec: serde_json::to_value(spec).map_err(record_err)?,
        prior: serde_json::to_value(prior).map_err(record_err)?,
        lease_expires_unix: unix_now().saturating_add(lease.as_secs().max(1)),
    })
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn ifindex_of(netlink: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, FaultError> {
    let mut links = netlink.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such interface.
        Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| -c.get()) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(FaultError::Tc(TcError::Netlink {
            op: "get link",
            detail: e.to_string(),
        })),
    }
}

impl FaultEngine {
    /// Opens the journal in `state_dir` and reverts every fault it still
    /// lists (left by a crash or a kill).
    pub async fn start(
        state_dir: &Path,
        netlink: rtnetlink::Handle,
    ) -> Result<(FaultEngine, Vec<Recovered>), FaultError> {
        let (journal, recovery) = Journal::open(state_dir)?;
        let mut engine = FaultEngine {
            journal,
            netlink,
            active: BTreeMap::new(),
        };
        let mut out = Vec::new();
        for rec in recovery.pending {
            let result = engine.revert_record(&rec).await;
            if result.is_ok() {
                engine.journal.append(&Record::Reverted { id: rec.id.clone() })?;
            }
            out.push(Recovered {
                id: rec.id.clone(),
                kind: rec.kind.clone(),
                target: rec.target.clone(),
                result: result.map_err(|e| e.to_string()),
            });
        }
        Ok((engine, out))
    }

    async fn revert_record(&self, rec: &FaultRecord) -> Result<(), FaultError> {
        match rec.kind.as_str() {
            "netem" => {
                let prior: PriorRoot = serde_json::from_value(rec.prior.clone()).map_err(|e| FaultError::Record {
                    id: rec.id.clone(),
                    detail: e.to_string(),
                })?;
                match ifindex_of(&self.netlink, &rec.target).await? {
                    // The interface is gone, and its qdiscs with it.
                    None => Ok(()),
                    Some(ifindex) => Ok(tc::revert_netem(&self.netlink, ifindex, &prior).await?),
                }
            }
            "dm" => {
                let table: Vec<TableLine> =
                    serde_json::from_value(rec.prior.clone()).map_err(|e| FaultError::Record {
                        id: rec.id.clone(),
                        detail: e.to_string(),
                    })?;
                let h = dm::open()?;
                match dm::table(&h, &rec.target) {
                    // The device is gone, and its table with it.
                    Err(DmFaultError::NoDevice(_)) => Ok(()),
                    Err(e) => Err(e.into()),
                    Ok(live) if live == table => Ok(()),
                    Ok(_) => Ok(dm::swap_table(&h, &rec.target, &table)?),
                }
            }
            other => Err(FaultError::Record {
                id: rec.id.clone(),
                detail: format!("unknown fault kind {other:?}"),
            }),
        }
    }

    /// Applies any fault spec (the controller's and the CLI's entry point):
    /// validates, then dispatches by kind.
    pub async fn apply(&mut self, id: &str, spec: &FaultSpec, lease: Duration) -> Result<(), FaultError> {
        spec.validate()?;
        match spec {
            FaultSpec::Netem {
                interface,
                direction: Direction::Egress,
                scope,
                netem,
            } if scope.is_whole_interface() => {
                self.apply_netem(NetemFault {
                    id: id.to_owned(),
                    interface: interface.clone(),
                    spec: netem.clone(),
                    lease,
                })
                .await
            }
            FaultSpec::Dm { device, dm } => self.apply_dm(DmFault {
                id: id.to_owned(),
                device: device.clone(),
                spec: dm.clone(),
                lease,
            }),
            FaultSpec::Netem { .. } => Err(FaultError::Unsupported(
                "netem scoped to CIDRs/ports/protocol or on ingress".into(),
            )),
            FaultSpec::Blackhole { .. } => Err(FaultError::Unsupported("blackhole routes".into())),
        }
    }

    /// The exact kernel operations [`FaultEngine::apply`] would perform (dry run).
    pub async fn describe(&self, spec: &FaultSpec) -> Result<Vec<String>, FaultError> {
        spec.validate()?;
        match spec {
            FaultSpec::Netem {
                interface,
                direction: Direction::Egress,
                scope,
                netem,
            } if scope.is_whole_interface() => {
                self.describe_netem(&NetemFault {
                    id: String::new(),
                    interface: interface.clone(),
                    spec: netem.clone(),
                    lease: Duration::ZERO,
                })
                .await
            }
            FaultSpec::Dm { device, dm } => self.describe_dm(&DmFault {
                id: String::new(),
                device: device.clone(),
                spec: dm.clone(),
                lease: Duration::ZERO,
            }),
            FaultSpec::Netem { .. } => Err(FaultError::Unsupported(
                "netem scoped to CIDRs/ports/protocol or on ingress".into(),
            )),
            FaultSpec::Blackhole { .. } => Err(FaultError::Unsupported("blackhole routes".into())),
        }
    }

    /// The netlink operations [`FaultEngine::apply_netem`] would perform, without performing them.
    pub async fn describe_netem(&self, f: &NetemFault) -> Result<Vec<String>, FaultError> {
        f.spec.validate()?;
        let ifindex = ifindex_of(&self.netlink, &f.interface)
            .await?
            .ok_or_else(|| FaultError::UnknownInterface(f.interface.clone()))?;
        let prior = tc::snapshot(&self.netlink, ifindex).await?;
        Ok(tc::describe_netem(&f.interface, ifindex, &f.spec, &prior))
    }

    pub async fn apply_netem(&mut self, f: NetemFault) -> Result<(), FaultError> {
        if self.active.contains_key(&f.id) {
            return Err(FaultError::Duplicate(f.id));
        }
        f.spec.validate()?;
        let ifindex = ifindex_of(&self.netlink, &f.interface)
            .await?
            .ok_or_else(|| FaultError::UnknownInterface(f.interface.clone()))?;
        let prior = tc::snapshot(&self.netlink, ifindex).await?;
        let record = fault_record(&f.id, "netem", &f.interface, &f.spec, &prior, f.lease)?;
        self.journal.append(&Record::Intent { fault: record.clone() })?;
        if let Err(e) = tc::apply_netem(&self.netlink, ifindex, &f.spec).await {
            // Roll back whatever the kernel did, then record the failure.
            let _ = tc::revert_netem(&self.netlink, ifindex, &prior).await;
            self.journal.append(&Record::Failed {
                id: f.id.clone(),
                reason: e.to_string(),
            })?;
            return Err(e.into());
        }
        self.journal.append(&Record::Applied { id: f.id.clone() })?;
        tracing::info!(id = %f.id, interface = %f.interface, spec = %f.spec.describe(), "fault applied");
        self.active.insert(
            f.id,
            Active {
                record,
                prior: Prior::Qdisc { ifindex, root: prior },
            },
        );
        Ok(())
    }

    /// The device-mapper operations [`FaultEngine::apply_dm`] would perform.
    pub fn describe_dm(&self, f: &DmFault) -> Result<Vec<String>, FaultError> {
        f.spec.validate()?;
        let h = dm::open()?;
        let prior = dm::snapshot(&h, &f.device)?;
        let mut ops = dm::describe(&f.device, &f.spec.table(&prior));
        ops.extend(
            dm::describe(&f.device, &prior)
                .into_iter()
                .map(|o| format!("revert: {o}")),
        );
        Ok(ops)
    }

    pub fn apply_dm(&mut self, f: DmFault) -> Result<(), FaultError> {
        if self.active.contains_key(&f.id) {
            return Err(FaultError::Duplicate(f.id));
        }
        f.spec.validate()?;
        let h = dm::open()?;
        let prior = dm::snapshot(&h, &f.device)?;
        let record = fault_record(&f.id, "dm", &f.device, &f.spec, &prior, f.lease)?;
        self.journal.append(&Record::Intent { fault: record.clone() })?;
        // swap_table resumes the device on its old table when the load fails.
        if let Err(e) = dm::swap_table(&h, &f.device, &f.spec.table(&prior)) {
            self.journal.append(&Record::Failed {
                id: f.id.clone(),
                reason: e.to_string(),
            })?;
            return Err(e.into());
        }
        self.journal.append(&Record::Applied { id: f.id.clone() })?;
        tracing::info!(id = %f.id, device = %f.device, "dm fault applied");
        self.active.insert(
            f.id,
            Active {
                record,
                prior: Prior::DmTable(prior),
            },
        );
        Ok(())
    }

    pub async fn revert(&mut self, id: &str) -> Result<(), FaultError> {
        let a = self.active.get(id).ok_or_else(|| FaultError::NotFound(id.to_owned()))?;
        match &a.prior {
            Prior::Qdisc { ifindex, root } => tc::revert_netem(&self.netlink, *ifindex, root).await?,
            Prior::DmTable(table) => dm::swap_table(&dm::open()?, &a.record.target, table)?,
        }
        self.journal.append(&Record::Reverted { id: id.to_owned() })?;
        tracing::info!(id, "fault reverted");
        self.active.remove(id);
        Ok(())
    }

    /// Extends a lease while the controller still wants the fault.
    pub fn renew(&mut self, id: &str, lease: Duration) -> Result<(), FaultError> {
        let a = self
            .active
            .get_mut(id)
            .ok_or_else(|| FaultError::NotFound(id.to_owned()))?;
        a.record.lease_expires_unix = unix_now().saturating_add(lease.as_secs().max(1));
        Ok(())
    }

    /// Reverts every fault whose lease ended at or before `now_unix`;
    /// returns their ids. Runs on the agent's own timer, controller or not.
    pub async fn expire(&mut self, now_unix: u64) -> Vec<String> {
        let due: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| a.record.lease_expires_unix <= now_unix)
            .map(|(id, _)| id.clone())
            .collect();
        let mut done = Vec::new();
        for id in due {
            match self.revert(&id).await {
                Ok(()) => done.push(id),
                Err(e) => tracing::error!(id, error = %e, "lease expired but the revert failed; retrying next tick"),
            }
        }
        done
    }

    /// Reverts everything (SIGTERM, kill switch). Returns the failures.
    pub async fn revert_all(&mut self) -> Vec<(String, FaultError)> {
        let ids: Vec<String> = self.active.keys().cloned().collect();
        let mut failed = Vec::new();
        for id in ids {
            if let Err(e) = self.revert(&id).await {
                failed.push((id, e));
            }
        }
        failed
    }

    pub fn active_ids(&self) -> Vec<String> {
        self.active.keys().cloned().collect()
    }
}
