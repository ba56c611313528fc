//! The mechanisms a fault is carried out with (a netem root qdisc, a netem
//! tree, a dm table, a blackhole route) behind the one interface the engine's
//! apply driver uses (engine.rs): a [`Change`] applies, a [`Prior`] (the
//! snapshot taken before, and journaled) restores and **verifies** the
//! restore against the kernel.
//!
//! Closed enums rather than a trait object: the set of mechanisms is this
//! crate's own, every one is async over the same netlink handle, and a
//! journaled prior must be rebuilt from its record by kind anyway
//! ([`Prior::from_record`]). A new kind adds a variant to both and the
//! compiler lists every place that must handle it.

use std::sync::Arc;

use graydar_common::faults::Cidr;

use super::dm::{self, DmFaultError, TableLine};
use super::engine::FaultError;
use super::journal::{FaultRecord, Mechanism};
use super::netem::NetemSpec;
use super::rings;
use super::route::{self, RoutePrior};
use super::tc::{self, PriorRoot};
use super::tree::{self, TreePrior};

/// What a fault replaced, and so how it is put back.
#[derive(Debug)]
pub enum Prior {
    /// The root qdisc a bare netem root replaced. `ifindex` is the
    /// interface's index when the fault was applied in this run (a
    /// re-created interface of the same name is another interface).
    Qdisc {
        ifindex: Option<u32>,
        root: PriorRoot,
    },
    /// The linear table a delay/flakey table replaced.
    DmTable(Vec<TableLine>),
    /// A netem tree (prio root or ingress ifb).
    Tree(TreePrior),
    /// A blackhole route (nothing was there before: it is deleted).
    Route(RoutePrior),
    /// The ring sizes an interface had (rings.rs).
    Rings(RingsPrior),
    /// A load (agent/src/load/): the engine stops it before the restore,
    /// which removes the file an fsync load wrote.
    Load(LoadPrior),
    /// A journal record this agent cannot revert: a kind another version
    /// wrote, or a prior it cannot decode. Kept (and reported) rather than
    /// dropped or guessed.
    Unknown {
        kind: String,
    },
    Undecodable(Arc<serde_json::Error>),
}

/// How a restore ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restored {
    /// The kernel is as before the fault (verified).
    Restored,
    /// What the fault changed no longer exists (interface or device removed):
    /// nothing left to revert, for the reason given.
    Gone(String),
}

impl Restored {
    pub fn reason(&self) -> Option<String> {
        match self {
            Restored::Restored => None,
            Restored::Gone(r) => Some(r.clone()),
        }
    }
}

/// What applying a fault does.
pub enum Change {
    /// Replace the root qdisc of the interface with netem.
    Netem { ifindex: u32, spec: NetemSpec },
    /// Build a netem tree (needs `Prior::Tree`).
    Tree { ifindex: u32, plan: tree::Plan },
    /// Swap a table into the dm device.
    Dm { table: Vec<TableLine> },
    /// Add a blackhole route.
    Blackhole { cidr: Cidr, table: u32 },
    /// Add a unicast route through another gateway.
    Detour {
        cidr: Cidr,
        table: u32,
        via: std::net::IpAddr,
        src: Option<std::net::IpAddr>,
    },
    /// Set an interface's ring sizes (only those given).
    Rings { rx: Option<u32>, tx: Option<u32> },
    /// Nothing in the kernel: the engine starts the load once the journal
    /// calls it applied.
    Load,
}

/// An interface's ring sizes before a `nic_rings` fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RingsPrior {
    pub rx: u32,
    pub tx: u32,
}

/// What a load leaves behind: the fsync load's file.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadPrior {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl Change {
    /// Applies the change to `target` (interface, dm device or prefix).
    pub async fn apply(&self, netlink: &rtnetlink::Handle, target: &str, prior: &Prior) -> Result<(), FaultError> {
        match (self, prior) {
            (Change::Netem { ifindex, spec }, _) => Ok(tc::apply_netem(netlink, *ifindex, spec).await?),
            (Change::Tree { ifindex, plan }, Prior::Tree(p)) => Ok(tree::apply(netlink, *ifindex, plan, p).await?),
            (Change::Tree { .. }, _) => Err(FaultError::Unsupported(
                "a netem tree needs its tree snapshot (internal error)".into(),
            )),
            (Change::Dm { table }, _) => Ok(dm::swap_table(&dm::open()?, target, table)?),
            (Change::Blackhole { cidr, table }, _) => Ok(route::add_blackhole(netlink, cidr, *table).await?),
            (Change::Detour { cidr, table, via, src }, _) => {
                Ok(route::add_detour(netlink, cidr, *table, *via, *src).await?)
            }
            (Change::Rings { rx, tx }, _) => Ok(rings::set(target, *rx, *tx)?),
            (Change::Load, _) => Ok(()),
        }
    }
}

/// The prior state a journal record holds, as `T`.
fn decode<T: serde::de::DeserializeOwned>(rec: &FaultRecord) -> Result<T, Arc<serde_json::Error>> {
    serde_json::from_value(rec.prior.clone()).map_err(Arc::new)
}

async fn ifindex_of(netlink: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, FaultError> {
    Ok(tree::link_index(netlink, name).await?)
}

impl Prior {
    /// The prior a journal record holds (start-up recovery). Never fails: a
    /// record that cannot be reverted becomes [`Prior::Unknown`] or
    /// [`Prior::Undecodable`], whose restore fails naming why.
    pub fn from_record(rec: &FaultRecord) -> Prior {
        let r = match &rec.kind {
            Mechanism::Netem => decode(rec).map(|root| Prior::Qdisc { ifindex: None, root }),
            Mechanism::Dm => decode(rec).map(Prior::DmTable),
            Mechanism::NetemTree => decode(rec).map(Prior::Tree),
            Mechanism::Blackhole | Mechanism::RouteFlap | Mechanism::RouteDetour => decode(rec).map(Prior::Route),
            Mechanism::NicRings => decode(rec).map(Prior::Rings),
            Mechanism::Load(_) => decode(rec).map(Prior::Load),
            Mechanism::Unknown(kind) => Ok(Prior::Unknown { kind: kind.clone() }),
        };
        r.unwrap_or_else(Prior::Undecodable)
    }

    /// Puts `target` back as it was, then checks the kernel: `Ok` only when
    /// what the fault created is gone (and a dm table equals the snapshot).
    /// Idempotent: restoring twice, or restoring a fault that was never
    /// applied, changes nothing of anyone else's.
    pub async fn restore(&self, netlink: &rtnetlink::Handle, id: &str, target: &str) -> Result<Restored, FaultError> {
        match self {
            Prior::Qdisc { ifindex, root } => {
                let now = ifindex_of(netlink, target).await?;
                let ifindex = match (now, ifindex) {
                    (None, _) => {
                        return Ok(Restored::Gone(format!(
                            "interface {target} is gone, and its qdiscs with it"
                        )));
                    }
                    (Some(now), Some(then)) if now != *then => {
                        return Ok(Restored::Gone(format!(
                            "interface {target} was re-created (index {then} → {now}); the faulted one is gone"
                        )));
                    }
                    (Some(now), _) => now,
                };
                tc::revert_netem(netlink, ifindex, root).await?;
                tc::verify_reverted(netlink, ifindex).await?;
                Ok(Restored::Restored)
            }
            Prior::Tree(prior) => {
                let ifindex = ifindex_of(netlink, target).await?;
                tree::revert(netlink, ifindex, prior).await?;
                tree::verify_reverted(netlink, ifindex, prior).await?;
                Ok(match ifindex {
                    Some(_) => Restored::Restored,
                    None => Restored::Gone(format!("interface {target} is gone, and its qdiscs with it")),
                })
            }
            Prior::DmTable(table) => {
                let h = dm::open()?;
                // A kill between an apply's table load and its resume left
                // the fault's table in the inactive slot (the live one
                // untouched): clear it before anything else.
                match dm::clear_loaded_by_graydar(&h, target, table) {
                    Err(DmFaultError::NoDevice(_)) => {
                        return Ok(Restored::Gone(format!(
                            "dm device {target} was removed, and its table with it"
                        )));
                    }
                    Err(e) => return Err(e.into()),
                    Ok(true) => {
                        tracing::warn!(id, device = target, "cleared a table graydar loaded but never resumed")
                    }
                    Ok(false) => {}
                }
                match dm::table(&h, target) {
                    Err(DmFaultError::NoDevice(_)) => {
                        return Ok(Restored::Gone(format!(
                            "dm device {target} was removed, and its table with it"
                        )));
                    }
                    Err(e) => return Err(e.into()),
                    Ok(live) if live == *table => return Ok(Restored::Restored),
                    Ok(_) => dm::swap_table(&h, target, table)?,
                }
                match dm::table(&h, target) {
                    Ok(live) if live == *table => Ok(Restored::Restored),
                    Ok(live) => Err(FaultError::NotReverted {
                        id: id.to_owned(),
                        what: format!("dm device {target} has table {live:?} after the restore, not {table:?}"),
                    }),
                    Err(DmFaultError::NoDevice(_)) => Ok(Restored::Gone(format!(
                        "dm device {target} was removed, and its table with it"
                    ))),
                    Err(e) => Err(e.into()),
                }
            }
            Prior::Route(prior) => {
                // Masked: a journal written before prefixes were checked may
                // hold host bits; the kernel's route has none.
                let cidr = Cidr::parse_masked(&prior.prefix)?;
                route::del_ours(netlink, &cidr, prior.table).await?;
                route::verify_removed(netlink, &cidr, prior.table).await?;
                Ok(Restored::Restored)
            }
            Prior::Rings(prior) => {
                // Only the sizes that differ are set (a driver may refuse a
                // set of a ring it cannot change, even to the same size).
                let now = match rings::get(target) {
                    Ok(r) => r,
                    Err(rings::RingsError::NoSuchInterface { .. }) => {
                        return Ok(Restored::Gone(format!(
                            "interface {target} is gone, and its rings with it"
                        )));
                    }
                    Err(e) => return Err(e.into()),
                };
                let rx = (now.rx != prior.rx).then_some(prior.rx);
                let tx = (now.tx != prior.tx).then_some(prior.tx);
                rings::set(target, rx, tx)?;
                let after = rings::get(target)?;
                if (after.rx, after.tx) == (prior.rx, prior.tx) {
                    Ok(Restored::Restored)
                } else {
                    Err(FaultError::NotReverted {
                        id: id.to_owned(),
                        what: format!(
                            "{target} has rings rx {} tx {} after the restore, not rx {} tx {}",
                            after.rx, after.tx, prior.rx, prior.tx
                        ),
                    })
                }
            }
            Prior::Load(LoadPrior { file: None }) => Ok(Restored::Restored),
            Prior::Load(LoadPrior { file: Some(file) }) => {
                match std::fs::remove_file(file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(FaultError::NotReverted {
                            id: id.to_owned(),
                            what: format!("cannot remove the fsync load's file {file}: {e}"),
                        });
                    }
                }
                if std::path::Path::new(file).exists() {
                    return Err(FaultError::NotReverted {
                        id: id.to_owned(),
                        what: format!("the fsync load's file {file} is still there after its removal"),
                    });
                }
                Ok(Restored::Restored)
            }
            Prior::Unknown { kind } => Err(FaultError::UnknownKind {
                id: id.to_owned(),
                kind: kind.clone(),
            }),
            Prior::Undecodable(e) => Err(FaultError::Record {
                id: id.to_owned(),
                source: e.clone(),
            }),
        }
    }
}
