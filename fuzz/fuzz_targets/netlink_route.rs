//! rtnetlink messages from the kernel: route, link and neighbour
//! notifications (agent/src/probes/routes.rs `decode`) and qdisc dumps
//! (agent/src/probes/drops/qdisc.rs `from_message`; agent/src/faults/tc.rs
//! `configured_prior`, the journaled copy of a root qdisc), decoded by
//! netlink-packet-route from one raw netlink message.
//!
//! Asserts: nothing panics; link state is tracked across messages (one
//! `LinkStates` per process, as the probe keeps one); a qdisc's prior
//! journaled by `configured_prior` decodes with `prior_message` (what the
//! agent saved it can restore) to a qdisc of the same kind and handle, or is
//! refused as one graydar cannot restore; a route event's prefix prints and
//! parses back.
#![no_main]

use std::str::FromStr as _;
use std::sync::Mutex;

use graydar_agent::faults::tc::{self, PriorRoot};
use graydar_agent::probes::drops::qdisc;
use graydar_agent::probes::routes::{self, ChurnEvent, LinkStates, Prefix};
use libfuzzer_sys::fuzz_target;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcMessage};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};

static LINKS: Mutex<Option<LinkStates>> = Mutex::new(None);

fn kind(m: &TcMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(data) else {
        return;
    };
    {
        let mut links = LINKS.lock().unwrap_or_else(|e| e.into_inner());
        let links = links.get_or_insert_with(LinkStates::default);
        if let Some(ChurnEvent::Route(r)) = routes::decode(&msg, links) {
            let p = Prefix::from_str(&r.prefix.to_string()).expect("a decoded prefix prints back");
            assert_eq!(p, r.prefix);
        }
    }
    if let NetlinkPayload::InnerMessage(
        RouteNetlinkMessage::NewQueueDiscipline(m) | RouteNetlinkMessage::DelQueueDiscipline(m),
    ) = &msg.payload
    {
        let _ = qdisc::from_message(m);
        // A prior the agent would journal must come back as the same qdisc;
        // one that would not is refused (CannotRestore), never journaled.
        match tc::configured_prior(m) {
            Ok(PriorRoot::Configured {
                kind: k, message_hex, ..
            }) => {
                let back = tc::prior_message(&message_hex, 7).expect("a journaled prior decodes");
                assert_eq!(back.header.index, 7);
                assert_eq!(back.header.handle, m.header.handle);
                assert_eq!(kind(&back).unwrap_or_default(), k);
            }
            Ok(other) => panic!("configured_prior gives a configured prior, not {other:?}"),
            Err(e) => assert!(matches!(e, tc::TcError::CannotRestore { .. }), "{e}"),
        }
    }
});
