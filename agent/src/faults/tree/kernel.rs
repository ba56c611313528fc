//! The netlink calls that build, find and remove a netem tree.

use futures_util::TryStreamExt as _;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::tc::{TcHandle, TcMessage};
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};

use super::super::caps::{self, Missing, Piece};
use super::super::tc::{self, GRAYDAR_MAJOR, TcError};
use super::*;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A kernel refusal → the missing piece(s) when the errno says "unknown
/// kind" (ENOENT for qdiscs, classifiers and actions, EOPNOTSUPP for link
/// kinds); when several pieces could be meant, the ones the capability probe
/// says are missing, else all of them.
fn refused(op: &'static str, ifindex: u32, candidates: &[Piece], e: rtnetlink::Error) -> TcError {
    if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::EOPNOTSUPP)) {
        if candidates == [Piece::Netem] {
            return TcError::NoNetem;
        }
        let kernel = caps::probe(&caps::Roots::default());
        let mut which: Vec<Piece> = candidates.iter().copied().filter(|p| !kernel.usable(*p)).collect();
        if which.is_empty() {
            which = candidates.to_vec();
        }
        return TcError::Missing(Missing(which));
    }
    tc::map_err(op, ifindex, e)
}

async fn new_tc(
    handle: &rtnetlink::Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
    op: &'static str,
    ifindex: u32,
    candidates: &[Piece],
) -> Result<(), TcError> {
    tc::send(handle, msg, flags)
        .await
        .map_err(|e| refused(op, ifindex, candidates, e))
}

pub async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, TcError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(TcError::Netlink {
            op: "get link",
            source: e,
        }),
    }
}

/// Every link of this namespace: (ifindex, name).
pub async fn links(handle: &rtnetlink::Handle) -> Result<Vec<(u32, String)>, TcError> {
    let all: Vec<_> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| TcError::Netlink {
            op: "dump links",
            source: e,
        })?;
    Ok(all
        .into_iter()
        .filter_map(|l| {
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })?;
            Some((l.header.index, name))
        })
        .collect())
}

/// The first `gd-ifb<N>` name not in use.
pub async fn free_ifb_name(handle: &rtnetlink::Handle) -> Result<String, TcError> {
    let names: Vec<String> = links(handle).await?.into_iter().map(|(_, n)| n).collect();
    (0..1000)
        .map(|n| format!("{IFB_PREFIX}{n}"))
        .find(|n| !names.contains(n))
        .ok_or_else(|| TcError::Refused("1000 gd-ifb devices exist already".into()))
}

/// Whether `ifindex` has an ingress or clsact qdisc.
pub async fn has_ingress_qdisc(handle: &rtnetlink::Handle, ifindex: u32) -> Result<bool, TcError> {
    Ok(tc::dump(handle, ifindex)
        .await?
        .iter()
        .any(|m| m.header.parent == TcHandle::INGRESS))
}

async fn ingress_filters(handle: &rtnetlink::Handle, ifindex: u32, minor: u16) -> Result<Vec<TcMessage>, TcError> {
    let mut req = handle.traffic_filter(ifindex as i32).get();
    req = if minor == TC_H_MIN_INGRESS {
        req.ingress()
    } else {
        req.egress()
    };
    match req.execute().try_collect::<Vec<_>>().await {
        Ok(v) => Ok(v),
        // No clsact: nothing attached.
        Err(e) if matches!(errno(&e), Some(libc::EINVAL) | Some(libc::ENOENT)) => Ok(Vec::new()),
        Err(e) => Err(tc::map_err("dump ingress filters", ifindex, e)),
    }
}

fn pref_of(m: &TcMessage) -> u16 {
    (m.header.info >> 16) as u16
}

/// Refuses an ingress fault when the interface's ingress hook already has a
/// filter at our preference (ours would join or replace it).
pub async fn ingress_pref_free(handle: &rtnetlink::Handle, ifindex: u32, pref: u16) -> Result<(), TcError> {
    let taken = ingress_filters(handle, ifindex, TC_H_MIN_INGRESS)
        .await?
        .iter()
        .any(|m| pref_of(m) == pref);
    if taken {
        return Err(TcError::Refused(format!(
            "ifindex {ifindex} already has an ingress filter at pref {pref}; graydar's redirect to the ifb must \
             run first there, so it refuses rather than share that slot"
        )));
    }
    Ok(())
}

/// Builds the tree on `dev_index` (the interface or the ifb).
async fn build_tree(handle: &rtnetlink::Handle, dev_index: u32, plan: &Plan) -> Result<(), TcError> {
    match &plan.layout {
        Layout::Plain => {
            let m = tc::netem_message_at(dev_index, TcHandle::ROOT, GRAYDAR_MAJOR, &plan.netem);
            new_tc(
                handle,
                RouteNetlinkMessage::NewQueueDiscipline(m),
                NLM_F_CREATE | NLM_F_REPLACE,
                "add netem",
                dev_index,
                &[Piece::Netem],
            )
            .await
        }
        Layout::Prio { default_netem, filters } => {
            new_tc(
                handle,
                RouteNetlinkMessage::NewQueueDiscipline(prio_root_message(dev_index, *default_netem)),
                NLM_F_CREATE | NLM_F_REPLACE,
                "add prio root",
                dev_index,
                &[Piece::Prio],
            )
            .await?;
            new_tc(
                handle,
                RouteNetlinkMessage::NewQueueDiscipline(netem_child_message(dev_index, &plan.netem)),
                NLM_F_CREATE | NLM_F_EXCL,
                "add netem child",
                dev_index,
                &[Piece::Netem],
            )
            .await?;
            for (pref, f) in prefs(filters) {
                new_tc(
                    handle,
                    RouteNetlinkMessage::NewTrafficFilter(flower_message(dev_index, pref, f)),
                    NLM_F_CREATE | NLM_F_EXCL,
                    "add flower filter",
                    dev_index,
                    &[Piece::Flower],
                )
                .await?;
            }
            Ok(())
        }
    }
}

/// Applies `plan` on `ifindex` (the interface). The caller journaled
/// `prior` first, and calls [`revert`] if this fails part-way.
pub async fn apply(handle: &rtnetlink::Handle, ifindex: u32, plan: &Plan, prior: &TreePrior) -> Result<(), TcError> {
    let Some(ing) = &prior.ingress else {
        return build_tree(handle, ifindex, plan).await;
    };
    // Ingress: the ifb, the tree on it, then the redirect.
    handle
        .link()
        .add(rtnetlink::LinkIfb::new(&ing.ifb).up().build())
        .execute()
        .await
        .map_err(|e| refused("add ifb", ifindex, &[Piece::Ifb], e))?;
    let ifb_index = link_index(handle, &ing.ifb)
        .await?
        .ok_or_else(|| TcError::Refused(format!("{} vanished right after it was created", ing.ifb)))?;
    build_tree(handle, ifb_index, plan).await?;
    if !ing.clsact_existed {
        new_tc(
            handle,
            RouteNetlinkMessage::NewQueueDiscipline(clsact_message(ifindex)),
            NLM_F_CREATE | NLM_F_EXCL,
            "add clsact",
            ifindex,
            &[Piece::Clsact],
        )
        .await?;
    }
    new_tc(
        handle,
        RouteNetlinkMessage::NewTrafficFilter(redirect_message(ifindex, ing.pref, ifb_index)),
        NLM_F_CREATE | NLM_F_EXCL,
        "add ingress redirect",
        ifindex,
        &[Piece::Flower, Piece::Mirred],
    )
    .await
}

async fn del_filter_pref(handle: &rtnetlink::Handle, ifindex: u32, pref: u16) -> Result<(), TcError> {
    let mut m = base(ifindex, ingress_hook(), TcHandle::UNSPEC);
    m.header.info = (u32::from(pref) << 16) | u32::from(ETH_P_ALL.to_be());
    match tc::send(handle, RouteNetlinkMessage::DelTrafficFilter(m), 0).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(()),
        Err(e) => Err(tc::map_err("delete ingress redirect", ifindex, e)),
    }
}

/// Removes our redirect from `ifindex`'s ingress hook (only a flower at our
/// pref redirecting to `ifb_index` or to a device that is gone). Returns how
/// many filter messages the ingress hook still holds; `filters` is its dump.
async fn remove_redirect(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    pref: u16,
    ifb_index: Option<u32>,
    filters: &[TcMessage],
) -> Result<usize, TcError> {
    let mut ours = false;
    for m in filters.iter().filter(|m| pref_of(m) == pref) {
        match mirred_target(m) {
            Some(t) if Some(t) == ifb_index => ours = true,
            // A redirect to some other device: ours only if that device is
            // gone (a crash between deleting the ifb and the redirect). The
            // link dump is only needed in that rare case.
            Some(t) => ours |= !links(handle).await?.iter().any(|(i, _)| *i == t),
            None => {}
        }
        if ours {
            break;
        }
    }
    if !ours {
        return Ok(filters.len());
    }
    del_filter_pref(handle, ifindex, pref).await?;
    Ok(filters.iter().filter(|m| pref_of(m) != pref).count())
}

/// Undoes [`apply`]; idempotent, and safe on a half-applied fault (crash or
/// failure at any step). `ifindex` is `None` when the interface is gone.
/// Round trips are counted here (revert latency is a benchmark goal): the
/// ingress dump taken to find our redirect also tells whether the clsact
/// graydar added carries anything else.
pub async fn revert(handle: &rtnetlink::Handle, ifindex: Option<u32>, prior: &TreePrior) -> Result<(), TcError> {
    if let Some(ing) = &prior.ingress {
        let ifb_index = link_index(handle, &ing.ifb).await?;
        if let Some(ifindex) = ifindex {
            let filters = ingress_filters(handle, ifindex, TC_H_MIN_INGRESS).await?;
            let left = remove_redirect(handle, ifindex, ing.pref, ifb_index, &filters).await?;
            // An empty ingress dump also means "no clsact at all" (the dump
            // fails with EINVAL, read as empty): the delete below then meets
            // ENOENT/EINVAL, which is fine.
            if !ing.clsact_existed {
                let others = left + ingress_filters(handle, ifindex, TC_H_MIN_EGRESS).await?.len();
                if others == 0 {
                    let m = clsact_message(ifindex);
                    match tc::send(handle, RouteNetlinkMessage::DelQueueDiscipline(m), 0).await {
                        Ok(()) => {}
                        Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::EINVAL)) => {}
                        Err(e) => return Err(tc::map_err("delete clsact", ifindex, e)),
                    }
                } else {
                    tracing::warn!(
                        ifindex,
                        others,
                        "the clsact qdisc graydar added now carries other filters; left in place"
                    );
                }
            }
        }
        if let Some(i) = ifb_index
            && ing.ifb.starts_with(IFB_PREFIX)
        {
            match handle.link().del(i).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::ENODEV) => {}
                Err(e) => {
                    return Err(TcError::Netlink {
                        op: "delete ifb",
                        source: e,
                    });
                }
            }
        }
    }
    if let (Some(root), Some(ifindex)) = (&prior.root, ifindex) {
        tc::revert_netem(handle, ifindex, root).await?;
    }
    Ok(())
}

/// Checks that what [`apply`] created is gone (after [`revert`], before it
/// is journaled): no ifb of ours by the journaled name, no redirect at our
/// ingress preference, no graydar root qdisc on the interface.
pub async fn verify_reverted(
    handle: &rtnetlink::Handle,
    ifindex: Option<u32>,
    prior: &TreePrior,
) -> Result<(), TcError> {
    if let Some(ing) = &prior.ingress {
        if ing.ifb.starts_with(IFB_PREFIX) && link_index(handle, &ing.ifb).await?.is_some() {
            return Err(TcError::Leftover(format!("the ifb device {}", ing.ifb)));
        }
        if let Some(ifindex) = ifindex
            && ingress_filters(handle, ifindex, TC_H_MIN_INGRESS)
                .await?
                .iter()
                .any(|f| pref_of(f) == ing.pref && mirred_target(f).is_some())
        {
            return Err(TcError::Leftover(format!(
                "graydar's ingress redirect on ifindex {ifindex} (pref {})",
                ing.pref
            )));
        }
    }
    if let (Some(_), Some(ifindex)) = (&prior.root, ifindex) {
        tc::verify_reverted(handle, ifindex).await?;
    }
    Ok(())
}

/// Start-up safety net, after the journal's own recovery: removes every
/// `gd-ifb*` device of this namespace and any ingress filter redirecting to
/// one (a redirect to a deleted device would drop all traffic). Returns what
/// it removed.
pub async fn sweep(handle: &rtnetlink::Handle) -> Result<Vec<String>, TcError> {
    let all = links(handle).await?;
    let ifbs: Vec<(u32, String)> = all.iter().filter(|(_, n)| n.starts_with(IFB_PREFIX)).cloned().collect();
    let mut removed = Vec::new();
    if ifbs.is_empty() {
        return Ok(removed);
    }
    let ifb_indexes: Vec<u32> = ifbs.iter().map(|(i, _)| *i).collect();
    for (ifindex, name) in &all {
        for f in ingress_filters(handle, *ifindex, TC_H_MIN_INGRESS).await? {
            if mirred_target(&f).is_some_and(|t| ifb_indexes.contains(&t)) {
                del_filter_pref(handle, *ifindex, pref_of(&f)).await?;
                removed.push(format!("ingress redirect on {name} (pref {})", pref_of(&f)));
            }
        }
    }
    for (i, name) in ifbs {
        match handle.link().del(i).execute().await {
            Ok(()) => removed.push(format!("link {name}")),
            Err(e) if errno(&e) == Some(libc::ENODEV) => {}
            Err(e) => {
                return Err(TcError::Netlink {
                    op: "delete ifb",
                    source: e,
                });
            }
        }
    }
    Ok(removed)
}
