//! The fault engine: journal → snapshot → apply, leases, and recovery.
//!
//! Order of operations for every fault, in one driver ([`FaultEngine`]'s
//! `drive`) over the mechanisms of mechanism.rs (DESIGN.md "Faults"):
//! 1. validate the spec and resolve the target (unknown interface: error);
//! 2. snapshot the prior state (refusing what could not be restored exactly);
//! 3. journal the intent with that prior state, fsync'ed;
//! 4. apply; if that fails, roll back, verify, and journal `Failed`. If the
//!    rollback fails, the entry stays pending: it is kept active as
//!    *reverting* and retried with back-off, and start-up recovery retries it;
//! 5. journal `Applied`; if that write fails, revert at once (a fault in the
//!    kernel that the journal does not call applied is never reported failed
//!    while it is still there);
//! 6. at lease expiry (monotonic clock, lease.rs), on revert, on SIGTERM:
//!    restore, verify against the kernel, then journal `Reverted`.
//!
//! At start, [`FaultEngine::start`] reverts everything the journal still
//! lists, so a crash at any step leaves nothing applied after restart; an
//! entry it cannot revert is reported and retried, and the engine runs on.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt as _;
use graydar_common::faults::{Cidr, Direction, FaultKind, FaultSpec, Scope};

use super::caps::{self, KernelCaps, Missing, Piece};
use super::dm::{self, DmFaultError, DmFaultSpec, DmTable as _};
use super::journal::{FaultRecord, Journal, JournalError, Mechanism, Record};
use super::lease::{self, BootClock, Clock, Retry};
use super::mechanism::{Change, LoadPrior, Prior, Restored, RingsPrior};
use super::netem::{NetemSpec, SpecError};
use super::route::{self, RouteError, RoutePrior};
use super::tc::{self, TcError};
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
        source: Arc<serde_json::Error>,
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
    #[error(transparent)]
    Load(#[from] crate::load::LoadError),
    #[error(transparent)]
    Rings(#[from] super::rings::RingsError),
    /// A ring size above what the driver allows.
    #[error("nic_rings: {iface}: {which} {asked} is above the driver's maximum of {max}")]
    RingsAboveMax {
        iface: String,
        which: &'static str,
        asked: u32,
        max: u32,
    },
    /// A restore ran but the kernel still shows the fault.
    #[error("fault {id}: {what}")]
    NotReverted { id: String, what: String },
    /// The apply failed and so did its rollback: the fault's state may be in
    /// the kernel; the agent keeps reverting it.
    #[error("{apply}; rolling it back failed too ({rollback}): the agent keeps reverting it")]
    RollbackFailed {
        #[source]
        apply: Box<FaultError>,
        rollback: Box<FaultError>,
    },
    /// The fault is being reverted (its apply or an earlier run left it):
    /// it cannot be renewed.
    #[error("fault {id:?} is being reverted ({last_error}); it cannot be renewed")]
    Reverting { id: String, last_error: String },
    /// A blackhole that would take the controller's address(es) with it.
    #[error(
        "blackhole prefix {prefix} covers the controller's address {controller}: the control channel must never be \
         impaired, so it is refused"
    )]
    CoversController { prefix: String, controller: IpAddr },
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

struct Active {
    record: FaultRecord,
    prior: Prior,
    /// When the lease ends, on the engine's monotonic clock.
    expires: Duration,
    /// Set while the fault is being reverted and the revert keeps failing
    /// (or its apply's rollback failed, or a previous run left it): retried
    /// with back-off until it succeeds; never renewed.
    reverting: Option<Retry>,
    /// A route flap's schedule: the lease timer adds and removes its route.
    flap: Option<Flap>,
    /// A running load (stopped before the revert's restore).
    load: Option<crate::load::Running>,
}

/// A route flap in progress ([`graydar_common::faults::route_flap_withdrawn`]
/// says whether its route should be in place).
struct Flap {
    cidr: Cidr,
    table: u32,
    down: Duration,
    up: Duration,
    /// The apply, on the engine's monotonic clock.
    started: Duration,
    /// Whether the route is in place now (as far as this engine did it).
    withdrawn: bool,
    /// Route changes made so far (the apply's add is the first).
    changes: u64,
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
    RouteFlap {
        prefix: &'a str,
        table: Option<u32>,
        down: Duration,
        up: Duration,
    },
    Detour {
        prefix: &'a str,
        via: &'a str,
        src: Option<&'a str>,
        table: Option<u32>,
    },
    /// An interface's ring sizes.
    Rings {
        interface: &'a str,
        rx: Option<u32>,
        tx: Option<u32>,
    },
    /// A load (traffic, fsync, burst, a sink).
    Load,
}

pub struct FaultEngine {
    journal: Journal,
    netlink: rtnetlink::Handle,
    active: BTreeMap<String, Active>,
    /// Never impaired by a fault: the controller's addresses.
    protected: Vec<SocketAddr>,
    caps: KernelCaps,
    clock: Arc<dyn Clock>,
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
    /// How the revert ended (`Gone`: the interface or device was removed),
    /// or why it failed (the fault is then kept and retried).
    pub result: Result<Restored, FaultError>,
}

/// The journal record of a fault about to be applied: spec and prior state
/// as JSON; the lease's end in wall-clock time, for people reading the
/// journal (the engine decides by its monotonic clock).
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
        source: Arc::new(source),
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

/// Seconds since the Unix epoch by the wall clock (0 before 1970): for the
/// journal's human-readable lease end only.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Restores `prior` on `target`, verified against the kernel, then
/// journals `Reverted` (with the reason when nothing was left to restore).
async fn restore_and_journal(
    journal: &mut Journal,
    netlink: &rtnetlink::Handle,
    id: &str,
    target: &str,
    prior: &Prior,
) -> Result<Restored, FaultError> {
    let how = prior.restore(netlink, id, target).await?;
    journal.append(&Record::Reverted {
        id: id.to_owned(),
        reason: how.reason(),
    })?;
    Ok(how)
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

impl FaultEngine {
    /// Opens the journal in `state_dir` and reverts every fault it still
    /// lists (left by a crash or a kill). Leases run on `CLOCK_BOOTTIME`.
    pub async fn start(
        state_dir: &Path,
        netlink: rtnetlink::Handle,
    ) -> Result<(FaultEngine, Vec<Recovered>), FaultError> {
        FaultEngine::start_with_clock(state_dir, netlink, Arc::new(BootClock)).await
    }

    /// [`FaultEngine::start`] with the clock leases are measured by (tests
    /// pass a [`lease::ManualClock`]).
    ///
    /// Recovery never stops at an entry it cannot revert: the entry is
    /// reported, kept (in the journal and as a *reverting* fault retried with
    /// back-off), and the others are reverted; the engine runs either way.
    /// Only a journal that cannot be opened fails the start.
    pub async fn start_with_clock(
        state_dir: &Path,
        netlink: rtnetlink::Handle,
        clock: Arc<dyn Clock>,
    ) -> Result<(FaultEngine, Vec<Recovered>), FaultError> {
        let (journal, recovery) = Journal::open(state_dir)?;
        let mut engine = FaultEngine {
            journal,
            netlink,
            active: BTreeMap::new(),
            protected: Vec::new(),
            caps: caps::probe(&caps::Roots::default()),
            clock,
        };
        let mut out = Vec::new();
        for rec in recovery.pending {
            let prior = Prior::from_record(&rec);
            let result = restore_and_journal(&mut engine.journal, &engine.netlink, &rec.id, &rec.target, &prior).await;
            let kind = RecoveredKind::Fault(rec.kind.clone());
            let target = rec.target.clone();
            let id = rec.id.clone();
            let result = match result {
                Ok(how) => Ok(how),
                Err(e) => {
                    // Kept: the lease timer retries it with back-off.
                    let now = engine.clock.now();
                    engine.active.insert(
                        rec.id.clone(),
                        Active {
                            record: rec,
                            prior,
                            expires: now,
                            reverting: Some(Retry::first(now, e.to_string())),
                            flap: None,
                            load: None,
                        },
                    );
                    Err(e)
                }
            };
            out.push(Recovered {
                id,
                kind,
                target,
                result,
            });
        }
        // Safety net: ifb devices (and redirects to them) the journal did not list.
        match tree::sweep(&engine.netlink).await {
            Ok(removed) => out.extend(removed.into_iter().map(|what| Recovered {
                id: "(sweep)".into(),
                kind: RecoveredKind::Ifb,
                target: what,
                result: Ok(Restored::Restored),
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

    /// The one apply driver: journal the intent (with the prior state) →
    /// apply → on failure roll back, verify and journal `Failed`, or keep the
    /// fault *reverting* when the rollback fails → journal `Applied`, or
    /// revert at once when that write fails. Every mechanism goes through
    /// here.
    async fn drive(
        &mut self,
        record: FaultRecord,
        prior: Prior,
        change: Change,
        lease: Duration,
    ) -> Result<(), FaultError> {
        let id = record.id.clone();
        if self.active.contains_key(&id) {
            return Err(FaultError::Duplicate(id));
        }
        self.journal.append(&Record::Intent { fault: record.clone() })?;
        if let Err(e) = change.apply(&self.netlink, &record.target, &prior).await {
            return match prior.restore(&self.netlink, &id, &record.target).await {
                Ok(_) => {
                    self.journal.append(&Record::Failed {
                        id,
                        reason: e.to_string(),
                    })?;
                    Err(e)
                }
                Err(re) => {
                    // The intent stays pending in the journal (start-up
                    // recovery retries it) and the fault stays active as
                    // reverting, so the lease timer retries it now.
                    tracing::error!(id, error = %e, rollback = %re, "apply failed and its rollback failed; retrying the revert");
                    let now = self.clock.now();
                    self.active.insert(
                        id,
                        Active {
                            record,
                            prior,
                            expires: now,
                            reverting: Some(Retry::first(now, re.to_string())),
                            flap: None,
                            load: None,
                        },
                    );
                    Err(FaultError::RollbackFailed {
                        apply: Box::new(e),
                        rollback: Box::new(re),
                    })
                }
            };
        }
        let expires = lease::expiry(self.clock.now(), lease);
        if let Err(je) = self.journal.append(&Record::Applied { id: id.clone() }) {
            // In the kernel, but the journal could not say so: revert at
            // once rather than run a fault the books disagree about.
            match prior.restore(&self.netlink, &id, &record.target).await {
                Ok(how) => {
                    // If this write fails too, the pending intent makes the
                    // next start restore it again (idempotent).
                    let _ = self.journal.append(&Record::Reverted {
                        id,
                        reason: how.reason(),
                    });
                    return Err(je.into());
                }
                // Still in the kernel: kept active with its lease below, so
                // the lease, DELETE and revert-all reach it.
                Err(re) => {
                    tracing::error!(id, error = %je, revert = %re, "fault applied but not journaled as applied, and the revert failed; kept active under its lease")
                }
            }
        }
        self.active.insert(
            id,
            Active {
                record,
                prior,
                expires,
                reverting: None,
                flap: None,
                load: None,
            },
        );
        Ok(())
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
            How::Dm { device, dm } => {
                self.apply_dm(DmFault {
                    id: id.to_owned(),
                    device: device.to_owned(),
                    spec: dm.clone(),
                    lease,
                })
                .await
            }
            How::Blackhole { prefix, table } => self.apply_blackhole(id, spec, prefix, table, lease).await,
            How::RouteFlap {
                prefix,
                table,
                down,
                up,
            } => self.apply_route_flap(id, spec, prefix, table, (down, up), lease).await,
            How::Detour {
                prefix,
                via,
                src,
                table,
            } => self.apply_detour(id, spec, prefix, (via, src), table, lease).await,
            How::Rings { interface, rx, tx } => self.apply_rings(id, spec, interface, (rx, tx), lease).await,
            How::Load => self.apply_load(id, spec, lease).await,
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
            FaultSpec::RouteFlap {
                prefix,
                table,
                down_seconds,
                up_seconds,
            } => How::RouteFlap {
                prefix,
                table: *table,
                down: Duration::from_secs(u64::from(*down_seconds)),
                up: Duration::from_secs(u64::from(*up_seconds)),
            },
            FaultSpec::RouteDetour {
                prefix,
                via,
                src,
                table,
            } => How::Detour {
                prefix,
                via,
                src: src.as_deref(),
                table: *table,
            },
            FaultSpec::NicRings { interface, rx, tx } => How::Rings {
                interface,
                rx: *rx,
                tx: *tx,
            },
            FaultSpec::Traffic(_) | FaultSpec::Fsync(_) | FaultSpec::Burst(_) | FaultSpec::LoadSink(_) => How::Load,
        }
    }

    /// The ring sizes now, and the sizes asked checked against the
    /// driver's maxima (before anything is journaled or changed).
    fn rings_plan(interface: &str, rx: Option<u32>, tx: Option<u32>) -> Result<super::rings::Rings, FaultError> {
        let now = super::rings::get(interface)?;
        for (which, asked, max) in [("rx", rx, now.rx_max), ("tx", tx, now.tx_max)] {
            if let Some(asked) = asked
                && max > 0
                && asked > max
            {
                return Err(FaultError::RingsAboveMax {
                    iface: interface.to_owned(),
                    which,
                    asked,
                    max,
                });
            }
        }
        Ok(now)
    }

    /// `nic_rings`: snapshot the ring sizes, journal them, set the new
    /// ones (ETHTOOL_MSG_RINGS_SET, rings.rs); the revert sets the snapshot
    /// back and reads it back.
    async fn apply_rings(
        &mut self,
        id: &str,
        spec: &FaultSpec,
        interface: &str,
        (rx, tx): (Option<u32>, Option<u32>),
        lease: Duration,
    ) -> Result<(), FaultError> {
        if self.active.contains_key(id) {
            return Err(FaultError::Duplicate(id.to_owned()));
        }
        let now = Self::rings_plan(interface, rx, tx)?;
        let prior = RingsPrior { rx: now.rx, tx: now.tx };
        let record = fault_record(id, Mechanism::NicRings, interface, spec, &prior, lease)?;
        self.drive(record, Prior::Rings(prior), Change::Rings { rx, tx }, lease)
            .await?;
        tracing::info!(
            id,
            interface,
            ?rx,
            ?tx,
            before_rx = now.rx,
            before_tx = now.tx,
            "nic_rings applied"
        );
        Ok(())
    }

    /// A load: journaled (with the file an fsync load will write) like any
    /// fault, then started; a load that cannot start (a sink port in use,
    /// no such directory) is reverted at once and fails.
    async fn apply_load(&mut self, id: &str, spec: &FaultSpec, lease: Duration) -> Result<(), FaultError> {
        if self.active.contains_key(id) {
            return Err(FaultError::Duplicate(id.to_owned()));
        }
        let prior = LoadPrior {
            file: match spec {
                FaultSpec::Fsync(f) => Some(crate::load::fsync_path(&f.dir, id).display().to_string()),
                _ => None,
            },
        };
        let record = fault_record(id, Mechanism::Load(spec.kind()), spec.target(), spec, &prior, lease)?;
        self.drive(record, Prior::Load(prior), Change::Load, lease).await?;
        match crate::load::start(id, spec).await {
            Ok(run) => {
                if let Some(a) = self.active.get_mut(id) {
                    a.load = Some(run);
                }
                tracing::info!(id, kind = %spec.kind(), target = spec.target(), "load started");
                Ok(())
            }
            Err(e) => {
                if let Err(re) = self.revert(id).await {
                    tracing::error!(id, error = %re, "a load that could not start could not be reverted either; retrying");
                }
                Err(e.into())
            }
        }
    }

    /// What the running load `id` has done so far.
    pub fn load_summary(&self, id: &str) -> Option<crate::load::Summary> {
        self.active.get(id)?.load.as_ref().map(crate::load::Running::summary)
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
        self.drive(record, Prior::Tree(prior), Change::Tree { ifindex, plan }, lease)
            .await?;
        tracing::info!(id, interface, ?direction, spec = %netem.describe(), "fault applied");
        Ok(())
    }

    /// Refuses a prefix that covers one of the controller's addresses.
    fn check_not_controller(&self, cidr: &Cidr) -> Result<(), FaultError> {
        match self.protected_ips().into_iter().find(|ip| cidr.contains(*ip)) {
            Some(controller) => Err(FaultError::CoversController {
                prefix: cidr.to_string(),
                controller,
            }),
            None => Ok(()),
        }
    }

    async fn apply_blackhole(
        &mut self,
        id: &str,
        spec: &FaultSpec,
        prefix: &str,
        table: Option<u32>,
        lease: Duration,
    ) -> Result<(), FaultError> {
        let (cidr, table) = self
            .apply_route(id, spec, prefix, table, Mechanism::Blackhole, None, lease)
            .await?;
        tracing::info!(id, prefix = %cidr, table, "blackhole route applied");
        Ok(())
    }

    /// Adds graydar's route for `prefix` as fault `id`, journaled as
    /// `mechanism` (a blackhole or a route flap; a detour with its gateway
    /// and source): the same checks, one change, the same revert.
    #[expect(clippy::too_many_arguments, reason = "the route faults' one apply path")]
    async fn apply_route(
        &mut self,
        id: &str,
        spec: &FaultSpec,
        prefix: &str,
        table: Option<u32>,
        mechanism: Mechanism,
        detour: Option<(IpAddr, Option<IpAddr>)>,
        lease: Duration,
    ) -> Result<(Cidr, u32), FaultError> {
        if self.active.contains_key(id) {
            return Err(FaultError::Duplicate(id.to_owned()));
        }
        let cidr = Cidr::parse(prefix)?;
        self.check_not_controller(&cidr)?;
        let table = table.unwrap_or(route::RT_TABLE_MAIN);
        route::check_free(&self.netlink, &cidr, table).await?;
        let prior = RoutePrior {
            prefix: cidr.to_string(),
            table,
        };
        let record = fault_record(id, mechanism, &prior.prefix, spec, &prior, lease)?;
        let change = match detour {
            None => Change::Blackhole { cidr, table },
            Some((via, src)) => Change::Detour { cidr, table, via, src },
        };
        self.drive(record, Prior::Route(prior), change, lease).await?;
        Ok((cidr, table))
    }

    /// A detour: [`FaultEngine::apply_route`] with a unicast route through
    /// `via` (from `src`) instead of a blackhole.
    async fn apply_detour(
        &mut self,
        id: &str,
        spec: &FaultSpec,
        prefix: &str,
        (via, src): (&str, Option<&str>),
        table: Option<u32>,
        lease: Duration,
    ) -> Result<(), FaultError> {
        let (via, src) = Self::detour_addresses(via, src)?;
        let (cidr, table) = self
            .apply_route(id, spec, prefix, table, Mechanism::RouteDetour, Some((via, src)), lease)
            .await?;
        tracing::info!(id, prefix = %cidr, table, %via, ?src, "detour route applied");
        Ok(())
    }

    /// A detour's gateway and source as addresses (validated specs parse).
    fn detour_addresses(via: &str, src: Option<&str>) -> Result<(IpAddr, Option<IpAddr>), FaultError> {
        let ip = |name: &str, v: &str| -> Result<IpAddr, FaultError> {
            v.parse()
                .map_err(|_| FaultError::Spec(SpecError(format!("route_detour {name}: {v:?} is not an IP address"))))
        };
        Ok((ip("via", via)?, src.map(|s| ip("src", s)).transpose()?))
    }

    /// A route flap: [`FaultEngine::apply_route`] (journaled as
    /// `route_flap`, whose revert removes the route if it is there), then
    /// [`FaultEngine::flap`] on the lease timer removes and re-adds it.
    async fn apply_route_flap(
        &mut self,
        id: &str,
        spec: &FaultSpec,
        prefix: &str,
        table: Option<u32>,
        (down, up): (Duration, Duration),
        lease: Duration,
    ) -> Result<(), FaultError> {
        let (cidr, table) = self
            .apply_route(id, spec, prefix, table, Mechanism::RouteFlap, None, lease)
            .await?;
        let started = self.clock.now();
        if let Some(a) = self.active.get_mut(id) {
            a.flap = Some(Flap {
                cidr,
                table,
                down,
                up,
                started,
                withdrawn: true,
                changes: 1,
            });
        }
        tracing::info!(id, prefix = %cidr, table, down_s = down.as_secs(), up_s = up.as_secs(), "route flap applied: prefix withdrawn");
        Ok(())
    }

    /// Moves every route flap to where its schedule says it should be (on
    /// the lease timer's tick). A change that fails is logged and tried
    /// again at the next tick; a fault being reverted is left alone.
    async fn flap(&mut self) {
        let now = self.clock.now();
        for (id, a) in &mut self.active {
            let Some(f) = a.flap.as_mut() else { continue };
            if a.reverting.is_some() {
                continue;
            }
            let want = graydar_common::faults::route_flap_withdrawn(now.saturating_sub(f.started), f.down, f.up);
            if want == f.withdrawn {
                continue;
            }
            let r = if want {
                route::add_blackhole(&self.netlink, &f.cidr, f.table).await
            } else {
                route::del_ours(&self.netlink, &f.cidr, f.table).await
            };
            match r {
                Ok(()) => {
                    f.withdrawn = want;
                    f.changes += 1;
                    tracing::info!(id, prefix = %f.cidr, change = f.changes, "route flap: prefix {}", if want { "withdrawn" } else { "announced" });
                }
                Err(e) => {
                    tracing::warn!(id, prefix = %f.cidr, error = %e, "route flap: change failed; retried at the next tick")
                }
            }
        }
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
            How::RouteFlap {
                prefix,
                table,
                down,
                up,
            } => {
                let cidr = Cidr::parse(prefix)?;
                let table = table.unwrap_or(route::RT_TABLE_MAIN);
                let mut ops = route::describe(&cidr, table);
                ops.insert(
                    2,
                    format!(
                        "then every {} s: RTM_DELROUTE after {} s withdrawn, RTM_NEWROUTE again after {} s announced",
                        down.as_secs() + up.as_secs(),
                        down.as_secs(),
                        up.as_secs()
                    ),
                );
                if let Err(e) = self.check_not_controller(&cidr) {
                    ops.push(format!("would fail: {e}"));
                }
                if let Err(e) = route::check_free(&self.netlink, &cidr, table).await {
                    ops.push(format!("would fail: {e}"));
                }
                Ok(ops)
            }
            How::Blackhole { prefix, table } => {
                let cidr = Cidr::parse(prefix)?;
                let table = table.unwrap_or(route::RT_TABLE_MAIN);
                let mut ops = route::describe(&cidr, table);
                if let Err(e) = self.check_not_controller(&cidr) {
                    ops.push(format!("would fail: {e}"));
                }
                if let Err(e) = route::check_free(&self.netlink, &cidr, table).await {
                    ops.push(format!("would fail: {e}"));
                }
                Ok(ops)
            }
            How::Detour {
                prefix,
                via,
                src,
                table,
            } => {
                let cidr = Cidr::parse(prefix)?;
                let table = table.unwrap_or(route::RT_TABLE_MAIN);
                let (via, src) = Self::detour_addresses(via, src)?;
                let mut ops = route::describe_detour(&cidr, table, via, src);
                if let Err(e) = self.check_not_controller(&cidr) {
                    ops.push(format!("would fail: {e}"));
                }
                if let Err(e) = route::check_free(&self.netlink, &cidr, table).await {
                    ops.push(format!("would fail: {e}"));
                }
                Ok(ops)
            }
            How::Rings { interface, rx, tx } => {
                let now = Self::rings_plan(interface, rx, tx)?;
                Ok(vec![
                    format!(
                        "ETHTOOL_MSG_RINGS_GET {interface}: rx {} (max {}), tx {} (max {}), driver {}",
                        now.rx,
                        now.rx_max,
                        now.tx,
                        now.tx_max,
                        super::rings::driver_of(interface)
                    ),
                    format!(
                        "ETHTOOL_MSG_RINGS_SET {interface}:{}{}",
                        rx.map(|v| format!(" rx {} -> {v}", now.rx)).unwrap_or_default(),
                        tx.map(|v| format!(" tx {} -> {v}", now.tx)).unwrap_or_default()
                    ),
                    format!(
                        "revert: ETHTOOL_MSG_RINGS_SET {interface}: rx {} tx {}, read back",
                        now.rx, now.tx
                    ),
                ])
            }
            How::Load => Ok(vec![match spec {
                FaultSpec::Traffic(t) => format!(
                    "{} traffic to {} port {}: {} packets/s of {} bytes per destination{}",
                    t.protocol.as_str(),
                    t.to.join(", "),
                    t.port,
                    t.packets_per_second(),
                    t.size,
                    if t.protocol == graydar_common::load::LoadProtocol::Tcp {
                        format!(" over {} connections each", t.connections)
                    } else {
                        String::new()
                    }
                ),
                FaultSpec::Fsync(f) => format!(
                    "write {} bytes + fdatasync {} times a second to {}, removed at the end",
                    f.block_bytes,
                    f.per_second,
                    crate::load::fsync_path(&f.dir, "ID").display()
                ),
                FaultSpec::Burst(b) => format!(
                    "every {} ms from {}: a TCP connection to {} port {} carrying {} bytes",
                    b.every_ms, b.start_unix_ms, b.to, b.port, b.bytes
                ),
                FaultSpec::LoadSink(k) => format!("listen on TCP and UDP port {} and discard what arrives", k.port),
                other => format!("{} is not a load", other.kind()),
            }]),
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
        let prior = Prior::Qdisc {
            ifindex: Some(ifindex),
            root: prior,
        };
        let change = Change::Netem {
            ifindex,
            spec: f.spec.clone(),
        };
        self.drive(record, prior, change, f.lease).await?;
        tracing::info!(id = %f.id, interface = %f.interface, spec = %f.spec.describe(), "fault applied");
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

    pub async fn apply_dm(&mut self, f: DmFault) -> Result<(), FaultError> {
        if self.active.contains_key(&f.id) {
            return Err(FaultError::Duplicate(f.id));
        }
        f.spec.validate()?;
        let h = dm::open()?;
        let prior = dm::snapshot(&h, &f.device)?;
        self.require(&[Piece::DeviceMapper, dm::target_piece(&f.spec)])?;
        let record = fault_record(&f.id, Mechanism::Dm, &f.device, &f.spec, &prior, f.lease)?;
        // swap_table resumes the device on its old table when the load fails.
        let change = Change::Dm {
            table: f.spec.table(&prior),
        };
        self.drive(record, Prior::DmTable(prior), change, f.lease).await?;
        tracing::info!(id = %f.id, device = %f.device, "dm fault applied");
        Ok(())
    }

    /// Restores what fault `id` changed, verifies it against the kernel,
    /// then journals `Reverted`. On failure the fault stays active (and
    /// *reverting*, retried by [`FaultEngine::expire`] with back-off).
    pub async fn revert(&mut self, id: &str) -> Result<(), FaultError> {
        if let Some(run) = self.active.get_mut(id).and_then(|a| a.load.take()) {
            let kind = run.kind();
            let done = run.stop().await;
            tracing::info!(id, kind, "load stopped: {done}");
        }
        let a = self.active.get(id).ok_or_else(|| FaultError::NotFound(id.to_owned()))?;
        match restore_and_journal(&mut self.journal, &self.netlink, id, &a.record.target, &a.prior).await {
            Ok(how) => {
                match how {
                    Restored::Restored => tracing::info!(id, "fault reverted"),
                    Restored::Gone(reason) => tracing::warn!(id, reason, "fault ended: nothing left to revert"),
                }
                self.active.remove(id);
                Ok(())
            }
            Err(e) => {
                let now = self.clock.now();
                if let Some(a) = self.active.get_mut(id) {
                    match &mut a.reverting {
                        Some(r) => r.failed_again(now, e.to_string()),
                        None => a.reverting = Some(Retry::first(now, e.to_string())),
                    }
                }
                Err(e)
            }
        }
    }

    /// Extends a lease while the controller still wants the fault.
    pub fn renew(&mut self, id: &str, lease: Duration) -> Result<(), FaultError> {
        let now = self.clock.now();
        let a = self
            .active
            .get_mut(id)
            .ok_or_else(|| FaultError::NotFound(id.to_owned()))?;
        if let Some(r) = &a.reverting {
            return Err(FaultError::Reverting {
                id: id.to_owned(),
                last_error: r.last_error.clone(),
            });
        }
        a.expires = lease::expiry(now, lease);
        a.record.lease_expires_unix = unix_now().saturating_add(lease.as_secs().max(1));
        Ok(())
    }

    /// Reverts every fault whose lease ended by the engine's monotonic
    /// clock, and retries the reverts that are due; returns the ids it
    /// reverted. Then moves route flaps along their schedule. Runs on the
    /// agent's own timer, controller or not.
    pub async fn expire(&mut self) -> Vec<String> {
        let now = self.clock.now();
        let due: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| match &a.reverting {
                Some(r) => r.due(now),
                None => a.expires <= now,
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut done = Vec::new();
        for id in due {
            match self.revert(&id).await {
                Ok(()) => done.push(id),
                Err(e) => {
                    tracing::error!(id, error = %e, "fault due for revert but the revert failed; retrying with back-off")
                }
            }
        }
        self.flap().await;
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

    /// Whether `id` is active but being reverted (its revert keeps failing).
    pub fn is_reverting(&self, id: &str) -> bool {
        self.active.get(id).is_some_and(|a| a.reverting.is_some())
    }

    /// The kind of an active fault.
    pub fn kind_of(&self, id: &str) -> Option<FaultKind> {
        self.active.get(id).and_then(|a| a.record.kind.fault_kind())
    }

    pub fn active_ids(&self) -> Vec<String> {
        self.active.keys().cloned().collect()
    }
}
