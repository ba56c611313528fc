//! Driving the agent's fault engine (graydar_agent::faults) inside a test
//! network namespace: a netlink connection opened on a thread that entered
//! the namespace acts on that namespace.

use crate::netns::NetNs;

/// Runs `f` with an rtnetlink handle bound to `ns`.
pub fn with_netlink<R: Send>(ns: &NetNs, f: impl AsyncFnOnce(rtnetlink::Handle) -> R + Send) -> R {
    ns.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().expect("netlink socket");
            tokio::spawn(conn);
            f(handle).await
        })
    })
}

/// `tc -d qdisc show dev <ifname>` inside `ns`, the text compared before and after.
pub fn qdisc_tree(ns: &NetNs, ifname: &str) -> String {
    ns.exec_stdout("tc", ["-d", "qdisc", "show", "dev", ifname])
}
