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
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt as _;
use graydar_common::faults::{Cidr, Direction, FaultKind, FaultSpec, Scope};

use super::caps::{self, KernelCaps, Missing, Piece};
use super::dm::{self, DmFaultError, DmFaultSpec, DmTable as _, TableLine};
use super::journal::{FaultRecord, Journal, JournalError, Mechanism, Record};
use super::netem::{NetemSpec, SpecError};
use super::route::{self, RouteError, RoutePrior};
use super::tc::{self, PriorRoot, TcError};
use super::tree::{self, IngressPrior, TreePrior};

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
    #[error("journal record of {id}: {source}")]
    Record {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("journal record of {id}: unknown fault kind {kind:?}")]
    UnknownKind { id: String, kind: String },
    #[error("not supported by this agent: {0}")]
    Unsupported(String),
    /// The kernel lacks what the fault needs (named with its config option).
    #[error(transparent)]
    Missing(#[from] Missing),
    #[error(transparent)]
    Route(#[from] RouteError),
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
    Qdisc {
        ifindex: u32,
        root: PriorRoot,
    },
    DmTable(Vec<TableLine>),
    /// Scoped / ingress / controller-excluding netem (tree.rs).
    Tree(TreePrior),
    Route(RoutePrior),
}

struct Active {
    record: FaultRecord,
    prior: Prior,
}

/// The mechanism a [`FaultSpec`] is carried out with ([`FaultEngine::how`]).
enum How<'a> {
    /// A netem root qdisc replacing the interface's root.
    BareNetem {
        interface: &'a str,
        netem: &'a NetemSpec,
    },
    /// prio root + netem child + flower filters; ingress through an ifb.
    NetemTree {
        interface: &'a str,
        direction: Direction,
        scope: &'a Scope,
        netem: &'a NetemSpec,
    },
    Dm {
        device: &'a str,
        dm: &'a DmFaultSpec,
    },
    Blackhole {
        prefix: &'a str,
        table: Option<u32>,
    },
}

pub struct FaultEngine {
    journal: Journal,
    netlink: rtnetlink::Handle,
    active: BTreeMap<String, Active>,
    /// Never impaired by a netem fault: the controller's addresses.
    protected: Vec<SocketAddr>,
    caps: KernelCaps,
}

/// What start-up recovery reverted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveredKind {
    /// A journaled fault, by how it was applied.
    Fault(Mechanism),
    /// An ifb device (or a redirect to one) the journal did not list.
    Ifb,
}

impl RecoveredKind {
    /// The fault kind, for a journaled fault of a known mechanism.
    pub fn fault_kind(&self) -> Option<FaultKind> {
        match self {
            RecoveredKind::Fault(m) => m.fault_kind(),
            RecoveredKind::Ifb => None,
        }
    }
}

impl std::fmt::Display for RecoveredKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveredKind::Fault(m) => m.fmt(f),
            RecoveredKind::Ifb => f.write_str("ifb"),
        }
    }
}

/// What start-up recovery did with one journaled fault.
#[derive(Debug)]
pub struct Recovered {
    pub id: String,
    pub kind: RecoveredKind,
    pub target: String,
    pub result: Result<(), FaultError>,
}

/// The journal record of a fault about to be applied: spec and prior state
/// as JSON, lease from now.
fn fault_record(
    id: &str,
    kind: Mechanism,
    target: &str,
    spec: &impl serde::Serialize,
    prior: &impl serde::Serialize,
    lease: Duration,
) -> Result<FaultRecord, FaultError> {
    let record_err = |source: serde_json::Error| FaultError::Record {
        id: id.to_owned(),
        source,
    };
    Ok(FaultRecord {
        id: id.to_owned(),
        kind,
        target: target.to_owned(),
        spec: serde_json::to_value(spec).map_err(record_err)?,
        prior: serde_json::to_value(prior).map_err(record_err)?,
        lease_expires_unix: unix_now().saturating_add(lease.as_secs().max(1)),
    })
}

/// The prior state a journal record holds, as `T`.
fn prior_of<T: serde::de::DeserializeOwned>(rec: &FaultRecord) -> Result<T, FaultError> {
    serde_json::from_value(rec.prior.clone()).map_err(|source| FaultError::Record {
        id: rec.id.clone(),
        source,
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
        Err(source) => Err(FaultError::Tc(TcError::Netlink { op: "get link", source })),
    }
}

async fn revert_route(netlink: &rtnetlink::Handle, prior: &RoutePrior) -> Result<(), FaultError> {
    let cidr = Cidr::parse(&prior.prefix)?;
    Ok(route::del_blackhole(netlink, &cidr, prior.table).await?)
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
            protected: Vec::new(),
            caps: caps::probe(&caps::Roots::default()),
        };
        let mut out = Vec::new();
        for rec in recovery.pending {
            let result = engine.revert_record(&rec).await;
            if result.is_ok() {
                engine.journal.append(&Record::Reverted { id: rec.id.clone() })?;
            }
            out.push(Recovered {
                id: rec.id.clone(),
                kind: RecoveredKind::Fault(rec.kind.clone()),
                target: rec.target.clone(),
                result,
            });
        }
        // Safety net: ifb devices (and redirects to them) the journal did not list.
        match tree::sweep(&engine.netlink).await {
            Ok(removed) => out.extend(removed.into_iter().map(|what| Recovered {
                id: "(sweep)".into(),
                kind: RecoveredKind::Ifb,
                target: what,
                result: Ok(()),
            })),
            Err(e) => out.push(Recovered {
                id: "(sweep)".into(),
                kind: RecoveredKind::Ifb,
                target: tree::IFB_PREFIX.into(),
                result: Err(e.into()),
            }),
        }
        Ok((engine, out))
    }

    /// Endpoints no netem fault may impair (the controller's resolved
    /// addresses and port): traffic to (egress) or from (ingress) these
    /// addresses, any port, bypasses netem. Applies to faults applied after
    /// the call.
    pub fn set_protected(&mut self, endpoints: Vec<SocketAddr>) {
        self.protected = endpoints;
    }

    pub fn protected(&self) -> &[SocketAddr] {
        &self.protected
    }

    /// What this kernel can do (probed at start).
    pub fn caps(&self) -> &KernelCaps {
        &self.caps
    }

    fn protected_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.protected.iter().map(|s| s.ip()).collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// Fails before anything is journaled or changed when the capability
    /// probe knows the kernel lacks a piece (without any readable source the
    /// kernel's own refusal, mapped the same way, decides).
    fn require(&self, pieces: &[Piece]) -> Result<(), FaultError> {
        if self.caps.sources.is_empty() {
            return Ok(());
        }
        Ok(self.caps.require(pieces)?)
    }

    async fn revert_record(&self, rec: &FaultRecord) -> Result<(), FaultError> {
        match &rec.kind {
            Mechanism::Netem => {
                let prior: PriorRoot = prior_of(rec)?;
                match ifindex_of(&self.netlink, &rec.target).await? {
                    // The interface is gone, and its qdiscs with it.
                    None => Ok(()),
                    Some(ifindex) => Ok(tc::revert_netem(&self.netlink, ifindex, &prior).await?),
                }
            }
            Mechanism::Dm => {
                let table: Vec<TableLine> = prior_of(rec)?;
                let h = dm::open()?;
                match dm::table(&h, &rec.target) {
                    // The device is gone, and its table with it.
                    Err(DmFaultError::NoDevice(_)) => Ok(()),
                    Err(e) => Err(e.into()),
                    Ok(live) if live == table => Ok(()),
                    Ok(_) => Ok(dm::swap_table(&h, &rec.target, &table)?),
                }
            }
            Mechanism::NetemTree => {
                let prior: TreePrior = prior_of(rec)?;
                let ifindex = ifindex_of(&self.netlink, &rec.target).await?;
                Ok(tree::revert(&self.netlink, ifindex, &prior).await?)
            }
            Mechanism::Blackhole => {
                let prior: RoutePrior = prior_of(rec)?;
                Ok(revert_route(&self.netlink, &prior).await?)
            }
            Mechanism::Unknown(kind) => Err(FaultError::UnknownKind {
                id: rec.id.clone(),
                kind: kind.clone(),
            }),
        }
    }

    /// Applies any fault spec (the controller's and the CLI's entry point):
    /// validates, then dispatches by kind.
    pub async fn apply(&mut self, id: &str, spec: &FaultSpec, lease: Duration) -> Result<(), FaultError> {
        spec.validate()?;
        match self.how(spec) {
            How::BareNetem { interface, netem } => {
                self.apply_netem(NetemFault {
                    id: id.to_owned(),
                    interface: interface.to_owned(),
                    spec: netem.clone(),
                    lease,
                })
                .await
            }
            How::NetemTree {
                interface,
                direction,
                scope,
                netem,
            } => {
                self.apply_tree(id, spec, interface, direction, scope, netem, lease)
                    .await
            }
            How::Dm { device, dm } => self.apply_dm(DmFault {
                id: id.to_owned(),
                device: device.to_owned(),
                spec: dm.clone(),
                lease,
            }),
            How::Blackhole { prefix, table } => self.apply_blackhole(id, spec, prefix, table, lease).await,
        }
    }

    /// How a spec is carried out: the one place that decides, so
    /// [`FaultEngine::describe`] always shows what [`FaultEngine::apply`]
    /// does. A plain root netem only for a whole interface on egress with
    /// nothing to protect; anything else gets the prio tree (tree.rs).
    fn how<'a>(&self, spec: &'a FaultSpec) -> How<'a> {
        match spec {
            FaultSpec::Netem {
                interface,
                direction: Direction::Egress,
                scope,
                netem,
            } if scope.is_whole_interface() && self.protected.is_empty() => How::BareNetem { interface, netem },
            FaultSpec::Netem {
                interface,
                direction,
                scope,
                netem,
            } => How::NetemTree {
                interface,
                direction: *direction,
                scope,
                netem,
            },
            FaultSpec::Dm { device, dm } => How::Dm { device, dm },
            FaultSpec::Blackhole { prefix, table } => How::Blackhole { prefix, table: *table },
        }
    }

    /// Resolves and snapshots a scoped / ingress / excluding netem fault.
    /// Changes nothing.
    async fn prepare_tree(
        &self,
        interface: &str,
        direction: Direction,
        scope: &Scope,
        netem: &NetemSpec,
    ) -> Result<(u32, tree::Plan, TreePrior), FaultError> {
        let ifindex = ifindex_of(&self.netlink, interface)
            .await?
            .ok_or_else(|| FaultError::UnknownInterface(interface.to_owned()))?;
        let (ifb, prior) = match direction {
            Direction::Egress => (
                None,
                TreePrior {
                    root: Some(tc::snapshot(&self.netlink, ifindex).await?),
                    ingress: None,
                },
            ),
            Direction::Ingress => {
                tree::ingress_pref_free(&self.netlink, ifindex, tree::INGRESS_PREF).await?;
                let ifb = tree::free_ifb_name(&self.netlink).await?;
                let prior = TreePrior {
                    root: None,
                    ingress: Some(IngressPrior {
                        ifb: ifb.clone(),
                        clsact_existed: tree::has_ingress_qdisc(&self.netlink, ifindex).await?,
                        pref: tree::INGRESS_PREF,
                    }),
                };
                (Some(ifb), prior)
            }
        };
        let plan = tree::plan(interface, direction, scope, netem, &self.protected_ips(), ifb)?;
        Ok((ifindex, plan, prior))
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of one netem spec, destructured by FaultEngine::how"
    )]
    async fn apply_tree(
        &mut self,
        id: &str,
        spec: &FaultSpec,
        interface: &str,
        direction: Direction,
        scope: &Scope,
        netem: &NetemSpec,
        lease: Duration,
    ) -> Result<(), FaultError> {
        if self.active.contains_key(id) {
            return Err(FaultError::Duplicate(id.to_owned()));
        }
        let (ifindex, plan, prior) = self.prepare_tree(interface, direction, scope, netem).await?;
        self.require(&plan.required())?;
        let record = fault_record(id, Mechanism::NetemTree, interface, spec, &prior, lease)?;
        self.journal.append(&Record::Intent { fault: record.clone() })?;
        if let Err(e) = tree::apply(&self.netlink, ifindex, &plan, &prior).await {
            if let Err(re) = tree::revert(&self.netlink, Some(ifindex), &prior).await {
                // Keep it pending: the next start retries the revert.
                tracing::error!(id, error = %re, "rollback of a failed netem fault failed");
                return Err(e.into());
            }
            self.journal.append(&Record::Failed {
                id: id.to_owned(),
                reason: e.to_string(),
            })?;
            return Err(e.into());
        }
        self.journal.append(&Record::Applied { id: id.to_owned() })?;
        tracing::info!(id, interface, ?direction, spec = %netem.describe(), "fault applied");
        self.active.insert(
            id.to_owned(),
            Active {
                record,
                prior: Prior::Tree(prior),
            },
        );
        Ok(())
    }

    async fn apply_blackhole(
        &mut self,
        id: &str,
        spec: &FaultSpec,
        prefix: &str,
        table: Option<u32>,
        lease: Duration,
    ) -> Result<(), FaultError> {
        if self.active.contains_key(id) {
            return Err(FaultError::Duplicate(id.to_owned()));
        }
        let cidr = Cidr::parse(prefix)?;
        let table = table.unwrap_or(route::RT_TABLE_MAIN);
        route::check_free(&self.netlink, &cidr, table).await?;
        let prior = RoutePrior {
            prefix: cidr.to_string(),
            table,
        };
        let record = fault_record(id, Mechanism::Blackhole, &prior.prefix, spec, &prior, lease)?;
        self.journal.append(&Record::Intent { fault: record.clone() })?;
        if let Err(e) = route::add_blackhole(&self.netlink, &cidr, table).await {
            let _ = route::del_blackhole(&self.netlink, &cidr, table).await;
            self.journal.append(&Record::Failed {
                id: id.to_owned(),
                reason: e.to_string(),
            })?;
            return Err(e.into());
        }
        self.journal.append(&Record::Applied { id: id.to_owned() })?;
        tracing::info!(id, prefix = %cidr, table, "blackhole route applied");
        self.active.insert(
            id.to_owned(),
            Active {
                record,
                prior: Prior::Route(prior),
            },
        );
        Ok(())
    }

    /// The exact kernel operations [`FaultEngine::apply`] would perform (dry run).
    pub async fn describe(&self, spec: &FaultSpec) -> Result<Vec<String>, FaultError> {
        spec.validate()?;
        match self.how(spec) {
            How::BareNetem { interface, netem } => {
                self.describe_netem(&NetemFault {
                    id: String::new(),
                    interface: interface.to_owned(),
                    spec: netem.clone(),
                    lease: Duration::ZERO,
                })
                .await
            }
            How::NetemTree {
                interface,
                direction,
                scope,
                netem,
            } => {
                let (ifindex, plan, prior) = self.prepare_tree(interface, direction, scope, netem).await?;
                let mut ops = tree::describe(&plan, ifindex, &prior);
                if let Err(m) = self.require(&plan.required()) {
                    ops.push(format!("would fail: {m}"));
                }
                Ok(ops)
            }
            How::Dm { device, dm } => self.describe_dm(&DmFault {
                id: String::new(),
                device: device.to_owned(),
                spec: dm.clone(),
                lease: Duration::ZERO,
            }),
            How::Blackhole { prefix, table } => {
                let cidr = Cidr::parse(prefix)?;
                let table = table.unwrap_or(route::RT_TABLE_MAIN);
                let mut ops = route::describe(&cidr, table);
                if let Err(e) = route::check_free(&self.netlink, &cidr, table).await {
                    ops.push(format!("would fail: {e}"));
                }
                Ok(ops)
            }
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
        self.require(&[Piece::Netem])?;
        let prior = tc::snapshot(&self.netlink, ifindex).await?;
        let record = fault_record(&f.id, Mechanism::Netem, &f.interface, &f.spec, &prior, f.lease)?;
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
        self.require(&[Piece::DeviceMapper, dm::target_piece(&f.spec)])?;
        let record = fault_record(&f.id, Mechanism::Dm, &f.device, &f.spec, &prior, f.lease)?;
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
            Prior::Tree(prior) => {
                let ifindex = ifindex_of(&self.netlink, &a.record.target).await?;
                tree::revert(&self.netlink, ifindex, prior).await?
            }
            Prior::Route(prior) => revert_route(&self.netlink, prior).await?,
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

    /// The kind of an active fault.
    pub fn kind_of(&self, id: &str) -> Option<FaultKind> {
        self.active.get(id).and_then(|a| a.record.kind.fault_kind())
    }

    pub fn active_ids(&self) -> Vec<String> {
        self.active.keys().cloned().collect()
    }
}
