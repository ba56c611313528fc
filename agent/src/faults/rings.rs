//! NIC ring sizes over ethtool netlink (`ethtool -g` / `ethtool -G`), encoded
//! by hand: the kernel piece of the `nic_rings` mechanism.
//!
//! Why this file exists: the `ethtool` crate implements RINGS_GET but not
//! RINGS_SET, and no well-kept crate sends RINGS_SET (nor the old
//! SIOCETHTOOL ETHTOOL_SRINGPARAM ioctl). As with netem (netem.rs), this file
//! builds exactly the messages it needs, and nothing else, against the kernel
//! headers' layout, over a blocking NETLINK_GENERIC socket (netlink-sys, the
//! socket rtnetlink already uses). It is synchronous and fast (two round trips
//! to the kernel); async callers may use `tokio::task::spawn_blocking`.
//!
//! The layout (include/uapi/linux/netlink.h, genetlink.h, ethtool_netlink.h;
//! every integer in host byte order, every part padded to 4 bytes):
//!
//! ```text
//! struct nlmsghdr   len u32 | type u16 (the "ethtool" family id) | flags u16 | seq u32 | pid u32   (16 bytes)
//! struct genlmsghdr cmd u8 (RINGS_GET 15 / RINGS_SET 16) | version u8 (1) | reserved u16               (4 bytes)
//! nlattr ETHTOOL_A_RINGS_HEADER (1) | NLA_F_NESTED
//!     nlattr ETHTOOL_A_HEADER_DEV_NAME (2): "eth0\0", padded
//! nlattr ETHTOOL_A_RINGS_RX (6): u32      set only, when asked
//! nlattr ETHTOOL_A_RINGS_TX (9): u32      set only, when asked
//! ```
//!
//! The family id is dynamic: it is resolved first with CTRL_CMD_GETFAMILY to
//! the generic netlink controller (GENL_ID_CTRL). A kernel built without
//! CONFIG_ETHTOOL_NETLINK has no such family and gets a clear error. The reply
//! to RINGS_GET is ETHTOOL_MSG_RINGS_GET_REPLY, whose number (16) is from the
//! kernel-to-user enum, separate from the user-to-kernel one.

use std::io;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use serde::{Deserialize, Serialize};

// include/uapi/linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
/// In an NLMSG_ERROR: the echoed request is only its nlmsghdr (NETLINK_CAP_ACK).
const NLM_F_CAPPED: u16 = 0x100;
/// In an NLMSG_ERROR: extended ACK attributes follow the echoed request.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_HDRLEN: usize = 4;
pub const NLA_F_NESTED: u16 = 1 << 15;
const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

// include/uapi/linux/genetlink.h
const GENL_HDRLEN: usize = 4;
/// GENL_ID_CTRL = NLMSG_MIN_TYPE.
pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_CMD_NEWFAMILY: u8 = 1;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// Version sent in the controller's genlmsghdr (any works; libmnl's examples send 1).
const CTRL_VERSION: u8 = 1;

// include/uapi/linux/ethtool_netlink.h
pub const ETHTOOL_GENL_NAME: &str = "ethtool";
pub const ETHTOOL_GENL_VERSION: u8 = 1;
/// User to kernel: NONE 0, STRSET_GET 1, LINKINFO_GET 2, LINKINFO_SET 3, LINKMODES_GET 4,
/// LINKMODES_SET 5, LINKSTATE_GET 6, DEBUG_GET 7, DEBUG_SET 8, WOL_GET 9, WOL_SET 10,
/// FEATURES_GET 11, FEATURES_SET 12, PRIVFLAGS_GET 13, PRIVFLAGS_SET 14, RINGS_GET 15.
pub const ETHTOOL_MSG_RINGS_GET: u8 = 15;
pub const ETHTOOL_MSG_RINGS_SET: u8 = 16;
/// Kernel to user: NONE 0, STRSET_GET_REPLY 1, LINKINFO_GET_REPLY 2, LINKINFO_NTF 3,
/// LINKMODES_GET_REPLY 4, LINKMODES_NTF 5, LINKSTATE_GET_REPLY 6, DEBUG_GET_REPLY 7, DEBUG_NTF 8,
/// WOL_GET_REPLY 9, WOL_NTF 10, FEATURES_GET_REPLY 11, FEATURES_SET_REPLY 12, FEATURES_NTF 13,
/// PRIVFLAGS_GET_REPLY 14, PRIVFLAGS_NTF 15, RINGS_GET_REPLY 16.
pub const ETHTOOL_MSG_RINGS_GET_REPLY: u8 = 16;
pub const ETHTOOL_A_HEADER_DEV_INDEX: u16 = 1;
pub const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;
/// u32 of ETHTOOL_FLAG_*; not sent (RINGS_SET has no reply to omit).
pub const ETHTOOL_A_HEADER_FLAGS: u16 = 3;
pub const ETHTOOL_A_RINGS_HEADER: u16 = 1;
pub const ETHTOOL_A_RINGS_RX_MAX: u16 = 2;
pub const ETHTOOL_A_RINGS_TX_MAX: u16 = 5;
pub const ETHTOOL_A_RINGS_RX: u16 = 6;
pub const ETHTOOL_A_RINGS_TX: u16 = 9;

/// ALTIFNAMSIZ - 1: the longest name ETHTOOL_A_HEADER_DEV_NAME accepts (an altname).
const MAX_NAME: usize = 127;
/// How long to wait for the kernel's answer (it answers at once; this only
/// bounds a wedged driver).
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
const RECV_BUF: usize = 64 * 1024;

/// An interface's ring sizes, as `ethtool -g` shows them (descriptors per ring).
/// A size the driver does not report is 0 (the kernel omits its attribute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rings {
    pub rx: u32,
    pub tx: u32,
    pub rx_max: u32,
    pub tx_max: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RingsError {
    #[error("{iface:?} is not a valid interface name (1 to {MAX_NAME} bytes, no NUL, '/', ':' or whitespace)")]
    InvalidName { iface: String },
    #[error(
        "{iface}: this kernel has no \"ethtool\" generic netlink family (it was built without \
         CONFIG_ETHTOOL_NETLINK), so ring sizes can be neither read nor changed"
    )]
    NoEthtoolNetlink { iface: String },
    #[error("{iface}: no such network interface")]
    NoSuchInterface { iface: String },
    #[error("{iface}: changing ring sizes needs CAP_NET_ADMIN ({})", errno_text(*errno))]
    NotPermitted { iface: String, errno: i32 },
    #[error("the driver {driver} of {iface} does not report ring sizes ({}{})", errno_text(*errno), kernel_says(message))]
    NoRingInfo {
        iface: String,
        driver: String,
        errno: i32,
        message: Option<String>,
    },
    #[error("the driver {driver} of {iface} cannot change its ring sizes ({}{})", cannot_resize_why(*errno), kernel_says(message))]
    CannotResize {
        iface: String,
        driver: String,
        errno: i32,
        message: Option<String>,
    },
    #[error(
        "{iface}: the kernel refused ring sizes {} (driver {driver}; {}){}",
        sizes(*rx, *tx),
        maxima(max),
        kernel_says(message)
    )]
    Rejected {
        iface: String,
        driver: String,
        rx: Option<u32>,
        tx: Option<u32>,
        /// What RINGS_GET said after the refusal (None if it failed too).
        max: Option<Rings>,
        message: Option<String>,
    },
    #[error("{iface}: ethtool netlink {op} failed (driver {driver}): {}{}", errno_text(*errno), kernel_says(message))]
    Kernel {
        iface: String,
        driver: String,
        op: &'static str,
        errno: i32,
        message: Option<String>,
    },
    #[error("{iface}: netlink socket {op}: {source}")]
    Io {
        iface: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{iface}: malformed ethtool netlink reply: {detail}")]
    Malformed { iface: String, detail: String },
}

/// "EOPNOTSUPP: Operation not supported" (libc's strerror; nix's texts differ).
fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    match Errno::from_raw(errno) {
        Errno::UnknownErrno => format!("errno {errno}: {text}"),
        e => format!("{e:?}: {text}"),
    }
}

fn cannot_resize_why(errno: i32) -> String {
    if errno == libc::ENOENT {
        // virtqueue_resize(): "Transport or device not supported".
        "ENOENT from the driver: the device cannot reset its queues (virtio: no VIRTIO_F_RING_RESET)".to_owned()
    } else {
        errno_text(errno)
    }
}

fn kernel_says(message: &Option<String>) -> String {
    message
        .as_ref()
        .map(|m| format!("; the kernel says: {m}"))
        .unwrap_or_default()
}

fn sizes(rx: Option<u32>, tx: Option<u32>) -> String {
    match (rx, tx) {
        (Some(rx), Some(tx)) => format!("rx {rx} tx {tx}"),
        (Some(rx), None) => format!("rx {rx}"),
        (None, Some(tx)) => format!("tx {tx}"),
        (None, None) => "(none)".to_owned(),
    }
}

fn maxima(max: &Option<Rings>) -> String {
    match max {
        Some(r) => format!(
            "maxima rx {} tx {}, current rx {} tx {}",
            r.rx_max, r.tx_max, r.rx, r.tx
        ),
        None => "maxima unknown: RINGS_GET failed too".to_owned(),
    }
}

/// The driver bound to `iface`: the file name of the
/// `/sys/class/net/IF/device/driver` symlink, "unknown" without one (lo, veth).
pub fn driver_of(iface: &str) -> String {
    driver_in(Path::new("/sys"), iface)
}

/// [`driver_of`] under another sysfs root (tests, `SYSFS_ROOT`).
pub fn driver_in(sysfs_root: &Path, iface: &str) -> String {
    if check_name(iface).is_err() {
        return "unknown".to_owned();
    }
    std::fs::read_link(sysfs_root.join("class/net").join(iface).join("device/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Reads `iface`'s ring sizes (ETHTOOL_MSG_RINGS_GET).
pub fn get(iface: &str) -> Result<Rings, RingsError> {
    check_name(iface)?;
    let mut conn = Conn::open(iface)?;
    let family = conn.family()?;
    let seq = 2;
    let reply = conn.exchange(&encode_get(family, seq, iface), seq)?;
    decode_reply(&reply).map_err(|e| match e {
        Reply::Kernel { errno, message } => match Errno::from_raw(errno) {
            Errno::ENODEV => RingsError::NoSuchInterface {
                iface: iface.to_owned(),
            },
            Errno::EPERM | Errno::EACCES => RingsError::NotPermitted {
                iface: iface.to_owned(),
                errno,
            },
            Errno::EOPNOTSUPP => RingsError::NoRingInfo {
                iface: iface.to_owned(),
                driver: driver_of(iface),
                errno,
                message,
            },
            _ => RingsError::Kernel {
                iface: iface.to_owned(),
                driver: driver_of(iface),
                op: "RINGS_GET",
                errno,
                message,
            },
        },
        Reply::Malformed(detail) => RingsError::Malformed {
            iface: iface.to_owned(),
            detail,
        },
    })
}

/// Sets `iface`'s rx and/or tx ring sizes (ETHTOOL_MSG_RINGS_SET); only the
/// given ones are sent. Both `None` changes nothing and asks nothing.
pub fn set(iface: &str, rx: Option<u32>, tx: Option<u32>) -> Result<(), RingsError> {
    check_name(iface)?;
    if rx.is_none() && tx.is_none() {
        return Ok(());
    }
    let mut conn = Conn::open(iface)?;
    let family = conn.family()?;
    let seq = 2;
    let reply = conn.exchange(&encode_set(family, seq, iface, rx, tx), seq)?;
    let (errno, message) = match decode_ack(&reply) {
        Ok(()) => return Ok(()),
        Err(Reply::Malformed(detail)) => {
            return Err(RingsError::Malformed {
                iface: iface.to_owned(),
                detail,
            });
        }
        Err(Reply::Kernel { errno, message }) => (errno, message),
    };
    Err(match Errno::from_raw(errno) {
        Errno::ENODEV => RingsError::NoSuchInterface {
            iface: iface.to_owned(),
        },
        Errno::EPERM | Errno::EACCES => RingsError::NotPermitted {
            iface: iface.to_owned(),
            errno,
        },
        // EOPNOTSUPP: the driver has no set_ringparam. ENOENT: what
        // virtqueue_resize() answers when the transport or device cannot reset
        // a queue (virtio_net without VIRTIO_F_RING_RESET); RINGS_SET itself
        // answers ENODEV, not ENOENT, for a missing device.
        Errno::EOPNOTSUPP | Errno::ENOENT => RingsError::CannotResize {
            iface: iface.to_owned(),
            driver: driver_of(iface),
            errno,
            message,
        },
        Errno::EINVAL | Errno::E2BIG | Errno::ERANGE => RingsError::Rejected {
            iface: iface.to_owned(),
            driver: driver_of(iface),
            rx,
            tx,
            max: get(iface).ok(),
            message,
        },
        _ => RingsError::Kernel {
            iface: iface.to_owned(),
            driver: driver_of(iface),
            op: "RINGS_SET",
            errno,
            message,
        },
    })
}

/// The RINGS_GET request for `iface` (no ACK asked: the reply or an error comes back).
pub fn encode_get(family: u16, seq: u32, iface: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    dev_header(&mut attrs, iface);
    message(
        family,
        NLM_F_REQUEST,
        seq,
        ETHTOOL_MSG_RINGS_GET,
        ETHTOOL_GENL_VERSION,
        &attrs,
    )
}

/// The RINGS_SET request for `iface` with an ACK asked; only the sizes given are sent.
pub fn encode_set(family: u16, seq: u32, iface: &str, rx: Option<u32>, tx: Option<u32>) -> Vec<u8> {
    let mut attrs = Vec::new();
    dev_header(&mut attrs, iface);
    if let Some(rx) = rx {
        attr(&mut attrs, ETHTOOL_A_RINGS_RX, &rx.to_ne_bytes());
    }
    if let Some(tx) = tx {
        attr(&mut attrs, ETHTOOL_A_RINGS_TX, &tx.to_ne_bytes());
    }
    message(
        family,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        ETHTOOL_MSG_RINGS_SET,
        ETHTOOL_GENL_VERSION,
        &attrs,
    )
}

/// The CTRL_CMD_GETFAMILY request for the "ethtool" family.
fn encode_getfamily(seq: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, &nul_terminated(ETHTOOL_GENL_NAME));
    message(
        GENL_ID_CTRL,
        NLM_F_REQUEST,
        seq,
        CTRL_CMD_GETFAMILY,
        CTRL_VERSION,
        &attrs,
    )
}

/// Decodes the first netlink message of `msg`: a RINGS_GET_REPLY gives the
/// sizes; an NLMSG_ERROR, a truncated or otherwise malformed message is an
/// error. Errors name the interface the reply's header names, if any.
pub fn decode_rings_reply(msg: &[u8]) -> Result<Rings, RingsError> {
    let iface = reply_dev_name(msg).unwrap_or_else(|| "(interface not named in the reply)".to_owned());
    decode_reply(msg).map_err(|e| match e {
        Reply::Kernel { errno, message } => RingsError::Kernel {
            driver: driver_of(&iface),
            iface,
            op: "RINGS_GET",
            errno,
            message,
        },
        Reply::Malformed(detail) => RingsError::Malformed { iface, detail },
    })
}

// ---------------------------------------------------------------------------
// Encoding

fn message(kind: u16, flags: u16, seq: u32, cmd: u8, version: u8, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + GENL_HDRLEN + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: to the kernel
    out.extend_from_slice(&[cmd, version, 0, 0]);
    out.extend_from_slice(attrs);
    out
}

/// ETHTOOL_A_RINGS_HEADER (nested) holding ETHTOOL_A_HEADER_DEV_NAME.
fn dev_header(out: &mut Vec<u8>, iface: &str) {
    let mut inner = Vec::new();
    attr(&mut inner, ETHTOOL_A_HEADER_DEV_NAME, &nul_terminated(iface));
    attr(out, ETHTOOL_A_RINGS_HEADER | NLA_F_NESTED, &inner);
}

/// One nlattr: length (header + payload, unpadded), type, payload, padding to 4.
/// Names are checked (at most 127 bytes) before they get here, so the length fits.
fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(NLA_HDRLEN + payload.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(out.len()), 0);
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn check_name(iface: &str) -> Result<(), RingsError> {
    let ok = !iface.is_empty()
        && iface.len() <= MAX_NAME
        && iface != "."
        && iface != ".."
        && !iface
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace() || b == b':');
    if ok {
        Ok(())
    } else {
        Err(RingsError::InvalidName {
            iface: iface.to_owned(),
        })
    }
}

// ---------------------------------------------------------------------------
// Decoding (every length is checked: bytes from the kernel never panic)

/// Why a reply is not the answer wanted.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// NLMSG_ERROR with a negative errno (stored positive) and the extended ACK message.
    Kernel {
        errno: i32,
        message: Option<String>,
    },
    Malformed(String),
}

/// One netlink message, borrowed from a receive buffer.
struct Msg<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
    /// The whole message, header included.
    bytes: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// The first message of `buf` and the rest after it (aligned).
fn first_message(buf: &[u8]) -> Result<(Msg<'_>, &[u8]), Reply> {
    let truncated = |what: String| Reply::Malformed(format!("truncated message: {what}"));
    if buf.len() < NLMSG_HDRLEN {
        return Err(truncated(format!(
            "{} bytes, shorter than a {NLMSG_HDRLEN}-byte nlmsghdr",
            buf.len()
        )));
    }
    let (Some(len), Some(kind), Some(flags), Some(seq)) =
        (u32_at(buf, 0), u16_at(buf, 4), u16_at(buf, 6), u32_at(buf, 8))
    else {
        return Err(truncated("nlmsghdr".to_owned()));
    };
    let len = len as usize;
    if len < NLMSG_HDRLEN || len > buf.len() {
        return Err(truncated(format!("nlmsg_len {len} but {} bytes received", buf.len())));
    }
    let bytes = &buf[..len];
    let rest = buf.get(align4(len).min(buf.len())..).unwrap_or_default();
    Ok((
        Msg {
            kind,
            flags,
            seq,
            payload: &bytes[NLMSG_HDRLEN..],
            bytes,
        },
        rest,
    ))
}

/// The attributes in `buf`: (type without the NESTED/NET_BYTEORDER flags, payload).
fn attrs(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, Reply> {
    let mut out = Vec::new();
    while buf.len() >= NLA_HDRLEN {
        let (Some(len), Some(kind)) = (u16_at(buf, 0), u16_at(buf, 2)) else {
            break;
        };
        let len = usize::from(len);
        if len < NLA_HDRLEN || len > buf.len() {
            return Err(Reply::Malformed(format!(
                "truncated attribute {}: nla_len {len} but {} bytes left",
                kind & NLA_TYPE_MASK,
                buf.len()
            )));
        }
        out.push((kind & NLA_TYPE_MASK, &buf[NLA_HDRLEN..len]));
        buf = buf.get(align4(len)..).unwrap_or_default();
    }
    if !buf.is_empty() {
        return Err(Reply::Malformed(format!(
            "{} stray bytes after the last attribute",
            buf.len()
        )));
    }
    Ok(out)
}

fn attr_u32(payload: &[u8], what: &str) -> Result<u32, Reply> {
    u32_at(payload, 0)
        .filter(|_| payload.len() == 4)
        .ok_or_else(|| Reply::Malformed(format!("{what} has {} bytes, not a u32", payload.len())))
}

/// An NLMSG_ERROR's errno (positive; 0 is an ACK) and extended ACK message.
fn decode_error(m: &Msg<'_>) -> Result<(i32, Option<String>), Reply> {
    let Some(raw) = u32_at(m.payload, 0) else {
        return Err(Reply::Malformed(format!(
            "truncated NLMSG_ERROR: {} payload bytes",
            m.payload.len()
        )));
    };
    let errno = (raw as i32).checked_neg().unwrap_or(i32::MAX);
    // Best effort: the echoed request then, with NLM_F_ACK_TLVS, the NLMSGERR_ATTR_*.
    let message = (m.flags & NLM_F_ACK_TLVS != 0)
        .then(|| {
            let echoed = if m.flags & NLM_F_CAPPED != 0 {
                NLMSG_HDRLEN
            } else {
                align4(u32_at(m.payload, 4)? as usize)
            };
            let tlvs = m.payload.get(4usize.checked_add(echoed)?..)?;
            let found = attrs(tlvs).ok()?.into_iter().find(|(k, _)| *k == NLMSGERR_ATTR_MSG)?;
            let text = found.1.split(|b| *b == 0).next().unwrap_or_default();
            Some(String::from_utf8_lossy(text).into_owned())
        })
        .flatten()
        .filter(|s| !s.is_empty());
    Ok((errno, message))
}

fn decode_reply(buf: &[u8]) -> Result<Rings, Reply> {
    let (m, _) = first_message(buf)?;
    if m.kind == NLMSG_ERROR {
        let (errno, message) = decode_error(&m)?;
        return Err(if errno == 0 {
            Reply::Malformed("an ACK where RINGS_GET_REPLY was expected".to_owned())
        } else {
            Reply::Kernel { errno, message }
        });
    }
    if m.kind < GENL_ID_CTRL {
        return Err(Reply::Malformed(format!("unexpected message type {}", m.kind)));
    }
    let Some(&cmd) = m.payload.first().filter(|_| m.payload.len() >= GENL_HDRLEN) else {
        return Err(Reply::Malformed(format!(
            "truncated genlmsghdr: {} bytes",
            m.payload.len()
        )));
    };
    if cmd != ETHTOOL_MSG_RINGS_GET_REPLY {
        return Err(Reply::Malformed(format!(
            "genetlink command {cmd}, not RINGS_GET_REPLY ({ETHTOOL_MSG_RINGS_GET_REPLY})"
        )));
    }
    let mut rings = Rings {
        rx: 0,
        tx: 0,
        rx_max: 0,
        tx_max: 0,
    };
    for (kind, payload) in attrs(&m.payload[GENL_HDRLEN..])? {
        let field = match kind {
            ETHTOOL_A_RINGS_HEADER => {
                header_dev_name(payload)?; // checked, not needed
                continue;
            }
            ETHTOOL_A_RINGS_RX_MAX => &mut rings.rx_max,
            ETHTOOL_A_RINGS_TX_MAX => &mut rings.tx_max,
            ETHTOOL_A_RINGS_RX => &mut rings.rx,
            ETHTOOL_A_RINGS_TX => &mut rings.tx,
            _ => continue, // mini/jumbo rings, rx_buf_len, cqe_size, push...
        };
        *field = attr_u32(payload, &format!("ring attribute {kind}"))?;
    }
    Ok(rings)
}

/// ETHTOOL_A_HEADER_DEV_NAME inside a (nested) ETHTOOL_A_*_HEADER payload.
fn header_dev_name(payload: &[u8]) -> Result<Option<String>, Reply> {
    Ok(attrs(payload)?
        .into_iter()
        .find(|(k, _)| *k == ETHTOOL_A_HEADER_DEV_NAME)
        .map(|(_, v)| String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned()))
}

/// The device name a RINGS_GET_REPLY's header names, if it parses that far.
fn reply_dev_name(buf: &[u8]) -> Option<String> {
    let (m, _) = first_message(buf).ok()?;
    let attrs = attrs(m.payload.get(GENL_HDRLEN..)?).ok()?;
    let (_, header) = attrs.into_iter().find(|(k, _)| *k == ETHTOOL_A_RINGS_HEADER)?;
    header_dev_name(header).ok()?
}

/// The first message of `buf` as an ACK: Ok for error 0.
fn decode_ack(buf: &[u8]) -> Result<(), Reply> {
    let (m, _) = first_message(buf)?;
    if m.kind != NLMSG_ERROR {
        return Err(Reply::Malformed(format!(
            "message type {} where an ACK was expected",
            m.kind
        )));
    }
    match decode_error(&m)? {
        (0, _) => Ok(()),
        (errno, message) => Err(Reply::Kernel { errno, message }),
    }
}

/// The family id in a CTRL_CMD_NEWFAMILY reply.
fn decode_family(buf: &[u8]) -> Result<u16, Reply> {
    let (m, _) = first_message(buf)?;
    if m.kind == NLMSG_ERROR {
        let (errno, message) = decode_error(&m)?;
        return Err(Reply::Kernel { errno, message });
    }
    if m.kind != GENL_ID_CTRL || m.payload.first() != Some(&CTRL_CMD_NEWFAMILY) || m.payload.len() < GENL_HDRLEN {
        return Err(Reply::Malformed(format!(
            "type {} command {:?} where the controller's NEWFAMILY was expected",
            m.kind,
            m.payload.first()
        )));
    }
    let (_, id) = attrs(&m.payload[GENL_HDRLEN..])?
        .into_iter()
        .find(|(k, _)| *k == CTRL_ATTR_FAMILY_ID)
        .ok_or_else(|| Reply::Malformed("NEWFAMILY without CTRL_ATTR_FAMILY_ID".to_owned()))?;
    u16_at(id, 0).ok_or_else(|| Reply::Malformed(format!("CTRL_ATTR_FAMILY_ID has {} bytes", id.len())))
}

// ---------------------------------------------------------------------------
// The socket

/// A blocking NETLINK_GENERIC socket for one interface's requests.
struct Conn<'a> {
    sock: Socket,
    iface: &'a str,
    buf: Vec<u8>,
}

impl<'a> Conn<'a> {
    fn open(iface: &'a str) -> Result<Self, RingsError> {
        let io_err = |op: &'static str| {
            move |source: io::Error| RingsError::Io {
                iface: iface.to_owned(),
                op,
                source,
            }
        };
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(io_err("socket(AF_NETLINK, NETLINK_GENERIC)"))?;
        sock.bind_auto().map_err(io_err("bind"))?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(io_err("connect"))?;
        // Extended ACK: the kernel's reason in words ("requested ring size
        // exceeds maximum"); capped ACK: errors do not echo our request.
        // Both are optional (kernels since 4.12 / 4.3).
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        let timeout = TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0);
        setsockopt(&sock, sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| io_err("setsockopt(SO_RCVTIMEO)")(io::Error::from(e)))?;
        Ok(Conn {
            sock,
            iface,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Resolves the "ethtool" genetlink family's id.
    fn family(&mut self) -> Result<u16, RingsError> {
        let seq = 1;
        let reply = self.exchange(&encode_getfamily(seq), seq)?;
        decode_family(&reply).map_err(|e| match e {
            Reply::Kernel { errno, .. } if errno == libc::ENOENT => RingsError::NoEthtoolNetlink {
                iface: self.iface.to_owned(),
            },
            Reply::Kernel { errno, message } => RingsError::Kernel {
                iface: self.iface.to_owned(),
                driver: driver_of(self.iface),
                op: "CTRL_CMD_GETFAMILY \"ethtool\"",
                errno,
                message,
            },
            Reply::Malformed(detail) => RingsError::Malformed {
                iface: self.iface.to_owned(),
                detail: format!("resolving the \"ethtool\" family: {detail}"),
            },
        })
    }

    /// Sends `req` and returns the first message answering `seq` (bytes of
    /// that one message, header included).
    fn exchange(&mut self, req: &[u8], seq: u32) -> Result<Vec<u8>, RingsError> {
        let iface = self.iface;
        let io_err = |op: &'static str, source: io::Error| RingsError::Io {
            iface: iface.to_owned(),
            op,
            source,
        };
        let sent = self.sock.send(req, 0).map_err(|e| io_err("send", e))?;
        if sent != req.len() {
            return Err(io_err(
                "send",
                io::Error::other(format!("sent {sent} of {} bytes", req.len())),
            ));
        }
        loop {
            self.buf.clear();
            let n = match self.sock.recv(&mut self.buf, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(io_err(
                        "recv",
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no answer from the kernel within {}s", RECV_TIMEOUT.as_secs()),
                        ),
                    ));
                }
                Err(e) => return Err(io_err("recv", e)),
            };
            if n > self.buf.len() {
                return Err(RingsError::Malformed {
                    iface: iface.to_owned(),
                    detail: format!("a {n}-byte datagram did not fit the {}-byte buffer", self.buf.len()),
                });
            }
            let mut rest: &[u8] = &self.buf;
            while !rest.is_empty() {
                let (m, after) = first_message(rest).map_err(|e| RingsError::Malformed {
                    iface: iface.to_owned(),
                    detail: match e {
                        Reply::Malformed(d) => d,
                        Reply::Kernel { errno, .. } => errno_text(errno),
                    },
                })?;
                if m.seq == seq {
                    return Ok(m.bytes.to_vec());
                }
                rest = after;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ne16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }

    fn ne32(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    /// nlmsghdr + genlmsghdr, built field by field.
    fn hdr(len: u32, kind: u16, flags: u16, seq: u32, cmd: u8) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(ne32(len));
        v.extend(ne16(kind));
        v.extend(ne16(flags));
        v.extend(ne32(seq));
        v.extend(ne32(0));
        v.extend([cmd, 1, 0, 0]);
        v
    }

    #[test]
    fn numbers_match_the_uapi_headers() {
        assert_eq!(ETHTOOL_MSG_RINGS_GET, 15);
        assert_eq!(ETHTOOL_MSG_RINGS_SET, 16);
        assert_eq!(ETHTOOL_MSG_RINGS_GET_REPLY, 16);
        assert_eq!(
            (
                ETHTOOL_A_HEADER_DEV_INDEX,
                ETHTOOL_A_HEADER_DEV_NAME,
                ETHTOOL_A_HEADER_FLAGS
            ),
            (1, 2, 3)
        );
        assert_eq!(
            (
                ETHTOOL_A_RINGS_HEADER,
                ETHTOOL_A_RINGS_RX_MAX,
                ETHTOOL_A_RINGS_TX_MAX,
                ETHTOOL_A_RINGS_RX,
                ETHTOOL_A_RINGS_TX
            ),
            (1, 2, 5, 6, 9)
        );
        assert_eq!((GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID), (16, 3, 1));
        assert_eq!(NLA_F_NESTED, 0x8000);
    }

    #[test]
    fn encodes_rings_get_byte_for_byte() {
        let got = encode_get(0x1d, 7, "eth0");
        // 16 nlmsghdr + 4 genlmsghdr + 16 nested header (4 + DEV_NAME: 4 + "eth0\0" = 9, padded to 12)
        let mut want = hdr(36, 0x1d, NLM_F_REQUEST, 7, 15);
        want.extend(ne16(16));
        want.extend(ne16(1 | 0x8000)); // ETHTOOL_A_RINGS_HEADER | NLA_F_NESTED
        want.extend(ne16(9));
        want.extend(ne16(2)); // ETHTOOL_A_HEADER_DEV_NAME
        want.extend(b"eth0\0\0\0\0");
        assert_eq!(got, want);
        assert_eq!(got.len(), 36);
        assert_eq!(got[16], 15, "genlmsghdr.cmd = ETHTOOL_MSG_RINGS_GET");
        assert_eq!(got[17], 1, "genlmsghdr.version = ETHTOOL_GENL_VERSION");
    }

    #[test]
    fn encodes_rings_set_byte_for_byte() {
        let got = encode_set(0x1d, 9, "enp0s3", Some(128), Some(64));
        // header nest: 4 + (4 + "enp0s3\0" = 11, padded to 12) = 16; RX 8; TX 8
        let mut want = hdr(16 + 4 + 16 + 8 + 8, 0x1d, NLM_F_REQUEST | NLM_F_ACK, 9, 16);
        want.extend(ne16(16));
        want.extend(ne16(0x8001));
        want.extend(ne16(11));
        want.extend(ne16(2));
        want.extend(b"enp0s3\0\0");
        want.extend(ne16(8));
        want.extend(ne16(6)); // ETHTOOL_A_RINGS_RX
        want.extend(ne32(128));
        want.extend(ne16(8));
        want.extend(ne16(9)); // ETHTOOL_A_RINGS_TX
        want.extend(ne32(64));
        assert_eq!(got, want);
    }

    #[test]
    fn set_sends_only_the_sizes_given() {
        let rx_only = encode_set(30, 1, "eth1", Some(256), None);
        let tx_only = encode_set(30, 1, "eth1", None, Some(512));
        assert_eq!(rx_only.len(), 16 + 4 + 16 + 8);
        assert_eq!(&rx_only[36..], [&ne16(8)[..], &ne16(6), &ne32(256)].concat());
        assert_eq!(&tx_only[36..], [&ne16(8)[..], &ne16(9), &ne32(512)].concat());
        // A 4-byte name: "abcd\0" is 5 bytes, padded to 8; a 3-byte name fits 4 exactly.
        assert_eq!(encode_get(30, 1, "abc").len(), 16 + 4 + 4 + 8);
        assert!(encode_set(30, 1, "a", None, None).len().is_multiple_of(4));
    }

    #[test]
    fn encodes_the_family_lookup() {
        let got = encode_getfamily(1);
        let mut want = hdr(16 + 4 + 12, 0x10, NLM_F_REQUEST, 1, 3);
        want.extend(ne16(12));
        want.extend(ne16(2)); // CTRL_ATTR_FAMILY_NAME
        want.extend(b"ethtool\0");
        assert_eq!(got, want);
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Real RINGS_GET_REPLY bytes, printed (hex) by a probe built on
    /// `encode_get` in the VM tier's guest: Debian's 6.1.0-57-amd64 kernel
    /// under QEMU 7.2, eth0 a virtio-net-pci NIC (256-descriptor queues), the
    /// "ethtool" family id 20, right after `set("eth0", Some(128), Some(128))`.
    /// Attributes, in the kernel's order: header {DEV_INDEX 2, DEV_NAME
    /// "eth0"}, RX_MAX 256, RX 128, TX_MAX 256, TX 128, TX_PUSH (u8) 0.
    const VM_6_1_VIRTIO_SHRUNK: &str = "5400000014000000050000008400000010010000180001800800010002000000\
        0900020065746830000000000800020000010000080006008000000008000500\
        00010000080009008000000005000d0000000000";
    /// The same from this project's development machine (kernel 6.18,
    /// Firecracker; eth0 virtio_net, family 21): RX_PUSH (u8) follows TX_PUSH.
    const HOST_6_18_VIRTIO: &str = "5c0000001500000005000000dd46000010010000180001800800010004000000\
        0900020065746830000000000800020000010000080006000001000008000500\
        00010000080009000001000005000d000000000005000e0000000000";
    /// The 6.1 guest's answer for lo (no get_ringparam): NLMSG_ERROR -95, not
    /// capped (the probe did not set NETLINK_CAP_ACK), echoing the 32-byte request.
    const VM_6_1_LO_EOPNOTSUPP: &str = "34000000020000000500000083000000a1ffffff200000001400010005000000\
        000000000f0100000c000180070002006c6f0000";

    #[test]
    fn decodes_replies_captured_from_real_kernels() {
        let shrunk = unhex(VM_6_1_VIRTIO_SHRUNK);
        assert_eq!(shrunk.len(), 0x54);
        assert_eq!(
            decode_rings_reply(&shrunk).expect("6.1 reply"),
            Rings {
                rx: 128,
                tx: 128,
                rx_max: 256,
                tx_max: 256
            }
        );
        assert_eq!(reply_dev_name(&shrunk).as_deref(), Some("eth0"));
        let host = unhex(HOST_6_18_VIRTIO);
        assert_eq!(
            decode_rings_reply(&host).expect("6.18 reply"),
            Rings {
                rx: 256,
                tx: 256,
                rx_max: 256,
                tx_max: 256
            }
        );
        let lo = unhex(VM_6_1_LO_EOPNOTSUPP);
        assert_eq!(
            decode_reply(&lo),
            Err(Reply::Kernel {
                errno: libc::EOPNOTSUPP,
                message: None
            })
        );
        for real in [&shrunk, &host] {
            for cut in 0..real.len() {
                assert!(decode_rings_reply(&real[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    /// A RINGS_GET_REPLY built per the header, with other sizes than the
    /// real captures above (and an attribute this file skips).
    fn built_reply() -> Vec<u8> {
        let mut attrs = Vec::new();
        let mut inner = Vec::new();
        attr(&mut inner, ETHTOOL_A_HEADER_DEV_INDEX, &ne32(2));
        attr(&mut inner, ETHTOOL_A_HEADER_DEV_NAME, b"eth0\0");
        attr(&mut attrs, ETHTOOL_A_RINGS_HEADER | NLA_F_NESTED, &inner);
        attr(&mut attrs, ETHTOOL_A_RINGS_RX_MAX, &ne32(4096));
        attr(&mut attrs, ETHTOOL_A_RINGS_TX_MAX, &ne32(2048));
        attr(&mut attrs, ETHTOOL_A_RINGS_RX, &ne32(512));
        attr(&mut attrs, ETHTOOL_A_RINGS_TX, &ne32(256));
        attr(&mut attrs, 11, &[0]); // ETHTOOL_A_RINGS_TCP_DATA_SPLIT u8: skipped
        message(0x1d, 0, 2, ETHTOOL_MSG_RINGS_GET_REPLY, 1, &attrs)
    }

    #[test]
    fn decodes_a_reply_built_per_the_header() {
        assert_eq!(
            decode_rings_reply(&built_reply()).expect("decodes"),
            Rings {
                rx: 512,
                tx: 256,
                rx_max: 4096,
                tx_max: 2048
            }
        );
    }

    #[test]
    fn every_truncation_of_a_reply_is_an_error_not_a_panic() {
        let full = built_reply();
        for cut in 0..full.len() {
            let err = decode_rings_reply(&full[..cut]).expect_err("a truncated reply must not decode");
            assert!(matches!(err, RingsError::Malformed { .. }), "cut at {cut}: {err}");
        }
        // nlmsg_len claims more than the buffer has.
        let mut long = full.clone();
        long[0..4].copy_from_slice(&ne32(full.len() as u32 + 8));
        assert!(matches!(decode_rings_reply(&long), Err(RingsError::Malformed { .. })));
        // An attribute whose nla_len runs past the end of the message.
        let mut bad = full.clone();
        let last_attr = full.len() - 8; // the TCP_DATA_SPLIT attribute (4 + 1, padded to 8)
        bad[last_attr..last_attr + 2].copy_from_slice(&ne16(64));
        let err = decode_rings_reply(&bad).expect_err("overlong attribute");
        assert!(err.to_string().contains("truncated attribute"), "{err}");
        // A ring attribute that is not 4 bytes.
        let mut attrs = Vec::new();
        attr(&mut attrs, ETHTOOL_A_RINGS_RX, &[1, 2]);
        let short = message(0x1d, 0, 2, ETHTOOL_MSG_RINGS_GET_REPLY, 1, &attrs);
        assert!(matches!(decode_rings_reply(&short), Err(RingsError::Malformed { .. })));
    }

    /// NLMSG_ERROR -EOPNOTSUPP, capped, with the extended ACK message.
    fn error_reply(errno: i32, text: Option<&str>) -> Vec<u8> {
        let mut payload = Vec::new();
        payload.extend((-errno).to_ne_bytes());
        payload.extend(&encode_get(0x1d, 2, "lo")[..16]); // the echoed request's nlmsghdr
        let mut flags = NLM_F_CAPPED;
        if let Some(t) = text {
            flags |= NLM_F_ACK_TLVS;
            attr(&mut payload, NLMSGERR_ATTR_MSG, &nul_terminated(t));
        }
        let mut v = Vec::new();
        v.extend(ne32((16 + payload.len()) as u32));
        v.extend(ne16(NLMSG_ERROR));
        v.extend(ne16(flags));
        v.extend(ne32(2));
        v.extend(ne32(0));
        v.extend(payload);
        v
    }

    #[test]
    fn an_error_reply_decodes_to_the_kernels_errno_and_message() {
        let err = decode_reply(&error_reply(libc::EOPNOTSUPP, Some("no ring info"))).expect_err("error");
        assert_eq!(
            err,
            Reply::Kernel {
                errno: libc::EOPNOTSUPP,
                message: Some("no ring info".to_owned())
            }
        );
        let err = decode_rings_reply(&error_reply(libc::ENODEV, None)).expect_err("error");
        assert!(
            matches!(err, RingsError::Kernel { errno, .. } if errno == libc::ENODEV),
            "{err}"
        );
        assert!(err.to_string().contains("ENODEV"), "{err}");
        // An ACK (error 0) is no reply to a GET.
        assert!(matches!(
            decode_rings_reply(&error_reply(0, None)),
            Err(RingsError::Malformed { .. })
        ));
        assert_eq!(decode_ack(&error_reply(0, None)), Ok(()));
        // A truncated NLMSG_ERROR.
        let mut short = error_reply(libc::EINVAL, None);
        short.truncate(18);
        short[0..4].copy_from_slice(&ne32(18));
        assert!(matches!(decode_ack(&short), Err(Reply::Malformed(_))));
        // Extended ACK attributes that run past the end are ignored, not a panic.
        let mut bad = error_reply(libc::EINVAL, Some("requested ring size exceeds maximum"));
        let at = 16 + 4 + 16;
        bad[at..at + 2].copy_from_slice(&ne16(500));
        assert_eq!(
            decode_ack(&bad),
            Err(Reply::Kernel {
                errno: libc::EINVAL,
                message: None
            })
        );
    }

    #[test]
    fn decodes_the_family_id() {
        let mut attrs = Vec::new();
        attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, b"ethtool\0");
        attr(&mut attrs, CTRL_ATTR_FAMILY_ID, &ne16(0x15));
        let reply = message(GENL_ID_CTRL, 0, 1, CTRL_CMD_NEWFAMILY, 2, &attrs);
        assert_eq!(decode_family(&reply), Ok(0x15));
        for cut in 0..reply.len() {
            assert!(decode_family(&reply[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            decode_family(&error_reply(libc::ENOENT, None)),
            Err(Reply::Kernel {
                errno: libc::ENOENT,
                message: None
            })
        );
    }

    #[test]
    fn errors_name_the_interface_and_driver() {
        let e = RingsError::CannotResize {
            iface: "eth1".into(),
            driver: "virtio_net".into(),
            errno: libc::EOPNOTSUPP,
            message: None,
        };
        assert_eq!(
            e.to_string(),
            "the driver virtio_net of eth1 cannot change its ring sizes (EOPNOTSUPP: Operation not supported)"
        );
        let e = RingsError::CannotResize {
            iface: "eth2".into(),
            driver: "virtio_net".into(),
            errno: libc::ENOENT,
            message: None,
        };
        assert_eq!(
            e.to_string(),
            "the driver virtio_net of eth2 cannot change its ring sizes (ENOENT from the driver: the device cannot \
             reset its queues (virtio: no VIRTIO_F_RING_RESET))"
        );
        let e = RingsError::NoEthtoolNetlink { iface: "eth0".into() };
        assert!(e.to_string().contains("CONFIG_ETHTOOL_NETLINK") && e.to_string().contains("eth0"));
        let e = RingsError::Rejected {
            iface: "eth0".into(),
            driver: "e1000e".into(),
            rx: Some(8192),
            tx: None,
            max: Some(Rings {
                rx: 256,
                tx: 256,
                rx_max: 4096,
                tx_max: 4096,
            }),
            message: Some("requested ring size exceeds maximum".into()),
        };
        assert_eq!(
            e.to_string(),
            "eth0: the kernel refused ring sizes rx 8192 (driver e1000e; maxima rx 4096 tx 4096, current rx 256 tx \
             256); the kernel says: requested ring size exceeds maximum"
        );
    }

    #[test]
    fn names_are_checked_before_anything_is_sent() {
        for bad in ["", ".", "..", "a/b", "a b", "x\0y", &"n".repeat(128)] {
            assert!(matches!(get(bad), Err(RingsError::InvalidName { .. })), "{bad:?}");
            assert!(
                matches!(set(bad, Some(1), None), Err(RingsError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(set("eth0", None, None).is_ok(), "nothing to set sends nothing");
    }

    #[test]
    fn the_driver_is_the_symlinks_file_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path().join("class/net/eth0/device");
        std::fs::create_dir_all(&dev).expect("mkdir");
        std::os::unix::fs::symlink("../../../../bus/virtio/drivers/virtio_net", dev.join("driver")).expect("symlink");
        std::fs::create_dir_all(dir.path().join("class/net/lo")).expect("mkdir lo");
        assert_eq!(driver_in(dir.path(), "eth0"), "virtio_net");
        assert_eq!(driver_in(dir.path(), "lo"), "unknown");
        assert_eq!(driver_in(dir.path(), "missing"), "unknown");
        assert_eq!(driver_in(dir.path(), "../x"), "unknown");
    }
}
