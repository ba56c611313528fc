//! The orphan census of the fault tests: everything a graydar fault can
//! leave in the kernel, read before any fault (a [`Baseline`]) and compared
//! with the kernel afterwards.
//!
//! What agent/src/faults creates, and so what is read here:
//! - per network namespace, from iproute2's JSON output (`tc -j`, `ip -j`):
//!   every qdisc of every interface, root and ingress/clsact, by interface,
//!   parent, handle and kind, with its options (netem roots and children,
//!   prio roots, clsact); the tc filters of every interface, on every
//!   classful qdisc and on both clsact hooks, by parent, preference,
//!   protocol, kind, chain and handle, with their options and actions
//!   (flower, u32, matchall, mirred redirects); every link (ifb devices:
//!   any new link at all); and, in every table, IPv4 and IPv6, the routes of
//!   graydar's protocol 71 and every blackhole route;
//! - device-mapper (global, not per namespace), from `dmsetup`: every
//!   device with its state (live / inactive table slots, suspended or not,
//!   read-only or not), its live table and its inactive table.
//!
//! A difference in either direction is reported: something new (left
//! behind), something gone (a revert that removed more than its own) or
//! something changed (a root qdisc or dm table not restored exactly). A
//! command that fails or prints something unparsable fails the census
//! loudly; "no output" never reads as "no orphans". Only a kernel without
//! device-mapper (no `device-mapper` line in /proc/misc) has no dm devices,
//! and that is read as such.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::blockdev::DMSETUP;
use crate::netns::NetNs;

/// The kernel objects a fault could create or change, as rows: a key that
/// names the object (`netns X qdisc dev fd1 parent root handle 4744: kind
/// prio`) and its details (options, table lines) compared as text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    rows: BTreeMap<String, String>,
}

impl KernelState {
    /// Reads the network namespaces `namespaces` (by name) and device-mapper.
    /// Panics, naming the command, when anything cannot be read.
    pub fn read(namespaces: &[String]) -> KernelState {
        let mut s = KernelState::default();
        for ns in namespaces {
            s.read_netns(ns);
        }
        s.read_dm();
        s
    }

    fn read_netns(&mut self, ns: &str) {
        let qdiscs = json_of("tc", &["-n", ns, "-j", "qdisc", "show"]);
        let qrows = qdisc_rows(ns, &qdiscs);
        // The filters of every qdisc that can hold them: a classful qdisc
        // by its handle, clsact / ingress by hook.
        for q in &qrows {
            for hook in q.filter_hooks() {
                let args: Vec<&str> = match hook.as_str() {
                    "ingress" | "egress" => vec!["-n", ns, "-j", "filter", "show", "dev", &q.dev, &hook],
                    parent => vec!["-n", ns, "-j", "filter", "show", "dev", &q.dev, "parent", parent],
                };
                let filters = json_of("tc", &args);
                self.rows.extend(
                    filter_rows(ns, &q.dev, &hook, &filters)
                        .unwrap_or_else(|e| panic!("orphan census: `tc {}`: {e}: {filters}", args.join(" "))),
                );
            }
        }
        self.rows.extend(qrows.into_iter().map(|q| (q.key, q.detail)));
        let links = json_of("ip", &["-n", ns, "-j", "-d", "link", "show"]);
        self.rows.extend(
            link_rows(ns, &links)
                .unwrap_or_else(|e| panic!("orphan census: `ip -n {ns} -j -d link show`: {e}: {links}")),
        );
        for family in ["-4", "-6"] {
            let routes = json_of("ip", &["-n", ns, "-N", "-j", family, "route", "show", "table", "all"]);
            self.rows.extend(route_rows(ns, family, &routes).unwrap_or_else(|e| {
                panic!("orphan census: `ip -n {ns} -N -j {family} route show table all`: {e}: {routes}")
            }));
        }
    }

    fn read_dm(&mut self) {
        let misc =
            std::fs::read_to_string("/proc/misc").unwrap_or_else(|e| panic!("orphan census: reading /proc/misc: {e}"));
        if !misc
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("device-mapper"))
        {
            // No device-mapper driver in this kernel: no dm device can exist.
            return;
        }
        let info = run(
            DMSETUP,
            &[
                "info",
                "-c",
                "--noheadings",
                "--separator",
                "|",
                "-o",
                "name,devno,tables_loaded,suspended,readonly",
            ],
        );
        let live = run(DMSETUP, &["table"]);
        let inactive = run(DMSETUP, &["table", "--inactive"]);
        self.rows.extend(
            dm_rows(&info, &live, &inactive)
                .unwrap_or_else(|e| panic!("orphan census: dmsetup: {e}\ninfo:\n{info}\ntable:\n{live}")),
        );
    }

    /// Every difference from `before` to `self`, one readable line each:
    /// `left behind: ...`, `gone since the baseline: ...`, `changed: ...`.
    pub fn diff(&self, before: &KernelState) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.rows {
            match before.rows.get(k) {
                None => out.push(format!("left behind: {k}{}", detail(v))),
                Some(old) if old != v => out.push(format!("changed: {k}: was {old:?}, now {v:?}")),
                Some(_) => {}
            }
        }
        for (k, v) in &before.rows {
            if !self.rows.contains_key(k) {
                out.push(format!("gone since the baseline: {k}{}", detail(v)));
            }
        }
        out
    }

    /// The rows, `key: details` (for reports and tests).
    pub fn rows(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rows.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn detail(v: &str) -> String {
    if v.is_empty() { String::new() } else { format!(" ({v})") }
}

/// The kernel state before any fault, to compare against.
#[derive(Clone, Debug)]
pub struct Baseline {
    namespaces: Vec<String>,
    state: KernelState,
}

impl Baseline {
    /// Reads `namespaces` (where faults will be applied) and device-mapper.
    pub fn take(namespaces: &[&NetNs]) -> Baseline {
        let namespaces: Vec<String> = namespaces.iter().map(|n| n.name().to_owned()).collect();
        let state = KernelState::read(&namespaces);
        Baseline { namespaces, state }
    }

    /// Everything that differs from the baseline now: empty when clean.
    pub fn orphans(&self) -> Vec<String> {
        KernelState::read(&self.namespaces).diff(&self.state)
    }

    pub fn state(&self) -> &KernelState {
        &self.state
    }
}

fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .unwrap_or_else(|e| panic!("orphan census: cannot run `{prog} {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "orphan census: `{prog} {}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout)
        .unwrap_or_else(|e| panic!("orphan census: `{prog} {}` printed non-UTF-8: {e}", args.join(" ")))
}

/// The JSON `prog args` prints (iproute2 prints `[]` for nothing, so empty
/// output is an error too).
fn json_of(prog: &str, args: &[&str]) -> Value {
    let text = run(prog, args);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "orphan census: `{prog} {}` did not print JSON ({e}): {text:?}",
            args.join(" ")
        )
    })
}

fn array(v: &Value) -> Result<&Vec<Value>, String> {
    v.as_array().ok_or_else(|| "expected a JSON array".to_owned())
}

fn str_field<'a>(o: &'a Value, name: &str) -> Result<&'a str, String> {
    o.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no string field {name:?} in {o}"))
}

/// A field as text, whether iproute2 printed it as a string or a number.
fn text_field(o: &Value, name: &str) -> Option<String> {
    match o.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

/// One qdisc: the row, and where its filters can hang.
#[derive(Debug)]
struct QdiscRow {
    key: String,
    detail: String,
    dev: String,
    kind: String,
    handle: String,
}

impl QdiscRow {
    /// Where `tc filter show` finds this qdisc's filters: both hooks of a
    /// clsact, the ingress hook of an ingress qdisc, the handle of any other
    /// qdisc that has one (a kernel default root `0:` has none).
    fn filter_hooks(&self) -> Vec<String> {
        match self.kind.as_str() {
            "clsact" => vec!["ingress".into(), "egress".into()],
            "ingress" => vec!["ingress".into()],
            _ if self.handle == "0:" => vec![],
            _ => vec![self.handle.clone()],
        }
    }
}

fn qdisc_rows(ns: &str, v: &Value) -> Vec<QdiscRow> {
    try_qdisc_rows(ns, v).unwrap_or_else(|e| panic!("orphan census: `tc -n {ns} -j qdisc show`: {e}: {v}"))
}

fn try_qdisc_rows(ns: &str, v: &Value) -> Result<Vec<QdiscRow>, String> {
    array(v)?
        .iter()
        .map(|q| {
            let dev = str_field(q, "dev")?.to_owned();
            let kind = str_field(q, "kind")?.to_owned();
            let handle = str_field(q, "handle")?.to_owned();
            let parent = if q.get("root").and_then(Value::as_bool) == Some(true) {
                "root".to_owned()
            } else {
                str_field(q, "parent")?.to_owned()
            };
            let detail = q.get("options").map(Value::to_string).unwrap_or_default();
            Ok(QdiscRow {
                key: format!("netns {ns} qdisc dev {dev} parent {parent} handle {handle} kind {kind}"),
                detail,
                dev,
                kind,
                handle,
            })
        })
        .collect()
}

/// Fields of filters and actions that count use or references, not
/// configuration.
const VOLATILE: &[&str] = &[
    "stats",
    "ref",
    "bind",
    "installed",
    "last_used",
    "first_used",
    "expires",
    "in_hw_count",
];

fn strip_volatile(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !VOLATILE.contains(&k.as_str()));
            m.values_mut().for_each(strip_volatile);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

/// The filters `tc -j filter show dev <dev> <hook>` printed: one row per
/// entry (the per-preference header and each filter of it).
fn filter_rows(ns: &str, dev: &str, hook: &str, v: &Value) -> Result<Vec<(String, String)>, String> {
    array(v)?
        .iter()
        .map(|f| {
            let kind = str_field(f, "kind")?;
            let pref = text_field(f, "pref").ok_or_else(|| format!("no pref in {f}"))?;
            let protocol = text_field(f, "protocol").unwrap_or_else(|| "-".into());
            let chain = text_field(f, "chain").unwrap_or_else(|| "0".into());
            let (handle, detail) = match f.get("options") {
                Some(o) => {
                    let handle = text_field(o, "handle")
                        .or_else(|| text_field(o, "fh"))
                        .unwrap_or_else(|| "-".into());
                    let mut o = o.clone();
                    strip_volatile(&mut o);
                    (handle, o.to_string())
                }
                None => ("(pref)".to_owned(), String::new()),
            };
            let at = match hook {
                "ingress" | "egress" => format!("hook {hook}"),
                parent => format!("parent {parent}"),
            };
            Ok((
                format!(
                    "netns {ns} filter dev {dev} {at} pref {pref} protocol {protocol} kind {kind} chain {chain} handle \
                     {handle}"
                ),
                detail,
            ))
        })
        .collect()
}

/// Every link by name, with its kind (`ifb`, `veth`, ...; the link type
/// when it has none).
fn link_rows(ns: &str, v: &Value) -> Result<Vec<(String, String)>, String> {
    array(v)?
        .iter()
        .map(|l| {
            let name = str_field(l, "ifname")?;
            let kind = l
                .get("linkinfo")
                .and_then(|i| i.get("info_kind"))
                .and_then(Value::as_str)
                .or_else(|| l.get("link_type").and_then(Value::as_str))
                .unwrap_or("?");
            Ok((format!("netns {ns} link {name} kind {kind}"), String::new()))
        })
        .collect()
}

/// `RTN_BLACKHOLE`, as `ip -N` prints route types.
const RTN_BLACKHOLE: &str = "6";
/// graydar's route protocol (agent/src/faults/route.rs `RTPROT_GRAYDAR`).
const RTPROT_GRAYDAR: &str = "71";

/// Routes of protocol 71 and blackhole routes (any protocol), from
/// `ip -N -j <family> route show table all` (numeric: `type` 6 is a
/// blackhole; the main table has no `table` field).
fn route_rows(ns: &str, family: &str, v: &Value) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for r in array(v)? {
        let ty = text_field(r, "type").unwrap_or_else(|| "1".into());
        let proto = text_field(r, "protocol").unwrap_or_else(|| "0".into());
        if ty != RTN_BLACKHOLE && proto != RTPROT_GRAYDAR {
            continue;
        }
        let dst = str_field(r, "dst")?;
        let table = text_field(r, "table").unwrap_or_else(|| "254".into());
        let ty_name = if ty == RTN_BLACKHOLE {
            "blackhole".to_owned()
        } else {
            format!("type {ty}")
        };
        let mut detail = Vec::new();
        for f in ["dev", "gateway", "metric", "tos"] {
            if let Some(x) = text_field(r, f) {
                detail.push(format!("{f} {x}"));
            }
        }
        out.push((
            format!("netns {ns} route {family} table {table} {ty_name} {dst} proto {proto}"),
            detail.join(" "),
        ));
    }
    Ok(out)
}

/// `dmsetup table` (or `table --inactive`): lines per device name.
fn dm_tables(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if text.trim() == "No devices found" {
        return Ok(out);
    }
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (name, rest) = line
            .split_once(':')
            .ok_or_else(|| format!("unexpected dmsetup table line {line:?}"))?;
        let lines = out.entry(name.to_owned()).or_default();
        let rest = rest.trim();
        if !rest.is_empty() {
            lines.push(rest.to_owned());
        }
    }
    Ok(out)
}

/// dm devices from `dmsetup info -c --noheadings --separator '|' -o
/// name,devno,tables_loaded,suspended,readonly` and the live and inactive
/// tables.
fn dm_rows(info: &str, live: &str, inactive: &str) -> Result<Vec<(String, String)>, String> {
    let live = dm_tables(live)?;
    let inactive = dm_tables(inactive)?;
    let mut out = Vec::new();
    if info.trim() == "No devices found" {
        if let Some(name) = live.keys().next() {
            return Err(format!("dmsetup info lists no devices, its table lists {name}"));
        }
        return Ok(out);
    }
    for line in info.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('|').collect();
        let [name, devno, tables, suspended, readonly] = f[..] else {
            return Err(format!("unexpected dmsetup info line {line:?}"));
        };
        out.push((format!("dm {name}: device {devno}"), String::new()));
        out.push((
            format!("dm {name}: state"),
            format!("tables {tables}, {suspended}, {readonly}"),
        ));
        let table = |t: &BTreeMap<String, Vec<String>>| t.get(name).map(|l| l.join("; ")).unwrap_or_default();
        out.push((format!("dm {name}: live table"), table(&live)));
        let inactive = table(&inactive);
        if !inactive.is_empty() {
            out.push((format!("dm {name}: inactive table"), inactive));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured in the test VM (iproute2 6.1, Debian's 6.1 kernel).
    const QDISCS: &str = r#"[{"kind":"noqueue","handle":"0:","dev":"vb","root":true,"refcnt":2,"options":{}},{"kind":"clsact","handle":"ffff:","dev":"vb","parent":"ffff:fff1","options":{}},{"kind":"prio","handle":"4744:","dev":"va","root":true,"refcnt":3,"options":{"bands":2,"priomap":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"multiqueue":false}},{"kind":"netem","handle":"4745:","dev":"va","parent":"4744:2","options":{"limit":1000,"delay":{"delay":0.01,"jitter":0,"correlation":0},"loss-random":{"loss":0.05,"correlation":0},"ecn":false,"gap":0}}]"#;
    const INGRESS: &str = r#"[{"protocol":"all","pref":1,"kind":"flower","chain":0},{"protocol":"all","pref":1,"kind":"flower","chain":0,"options":{"handle":1,"keys":{},"not_in_hw":true,"actions":[{"order":1,"kind":"mirred","mirred_action":"redirect","direction":"egress","to_dev":"gd-ifb0","control_action":{"type":"stolen"},"index":1,"ref":1,"bind":1}]}},{"protocol":"ip","pref":5,"kind":"u32","chain":0},{"protocol":"ip","pref":5,"kind":"u32","chain":0,"options":{"fh":"800:","ht_divisor":1}}]"#;

    fn state(rows: &[(&str, &str)]) -> KernelState {
        KernelState {
            rows: rows.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn qdiscs_are_keyed_by_device_parent_handle_and_kind() {
        let v: Value = serde_json::from_str(QDISCS).expect("json");
        let rows = qdisc_rows("n", &v);
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "netns n qdisc dev vb parent root handle 0: kind noqueue",
                "netns n qdisc dev vb parent ffff:fff1 handle ffff: kind clsact",
                "netns n qdisc dev va parent root handle 4744: kind prio",
                "netns n qdisc dev va parent 4744:2 handle 4745: kind netem",
            ]
        );
        assert!(rows[3].detail.contains("loss-random"), "{}", rows[3].detail);
        let hooks: Vec<Vec<String>> = rows.iter().map(QdiscRow::filter_hooks).collect();
        assert_eq!(
            hooks,
            [
                vec![],
                vec!["ingress".to_owned(), "egress".to_owned()],
                vec!["4744:".to_owned()],
                vec!["4745:".to_owned()]
            ]
        );
    }

    #[test]
    fn filters_keep_their_actions_but_not_their_reference_counts() {
        let v: Value = serde_json::from_str(INGRESS).expect("json");
        let rows = filter_rows("n", "vb", "ingress", &v).expect("rows");
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows[1].0,
            "netns n filter dev vb hook ingress pref 1 protocol all kind flower chain 0 handle 1"
        );
        assert!(rows[1].1.contains("\"to_dev\":\"gd-ifb0\""), "{}", rows[1].1);
        assert!(!rows[1].1.contains("\"ref\""), "{}", rows[1].1);
        assert_eq!(
            rows[3].0,
            "netns n filter dev vb hook ingress pref 5 protocol ip kind u32 chain 0 handle 800:"
        );
    }

    #[test]
    fn only_graydar_and_blackhole_routes_count() {
        let v: Value = serde_json::from_str(
            r#"[{"type":"6","dst":"2001:db8:7::/48","dev":"lo","table":"1000","protocol":"71","metric":1024,"flags":[],"pref":"medium"},{"dst":"fe80::/64","dev":"vb","protocol":"2","metric":256,"flags":[]},{"type":"6","dst":"203.0.113.0/24","table":"100","flags":[]},{"dst":"198.51.100.0/24","protocol":"71","flags":[]}]"#,
        )
        .expect("json");
        let rows = route_rows("n", "-6", &v).expect("rows");
        let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "netns n route -6 table 1000 blackhole 2001:db8:7::/48 proto 71",
                "netns n route -6 table 100 blackhole 203.0.113.0/24 proto 0",
                "netns n route -6 table 254 type 1 198.51.100.0/24 proto 71",
            ]
        );
    }

    #[test]
    fn dm_devices_show_state_and_both_table_slots() {
        let rows = dm_rows(
            "gdp|254:0|Live & Inactive|Suspended|Writeable\n",
            "gdp: 0 32768 linear 7:0 0\n",
            "gdp: 0 32768 delay 7:0 0 10\n",
        )
        .expect("rows");
        assert_eq!(
            rows,
            [
                ("dm gdp: device 254:0".to_owned(), String::new()),
                (
                    "dm gdp: state".to_owned(),
                    "tables Live & Inactive, Suspended, Writeable".to_owned()
                ),
                ("dm gdp: live table".to_owned(), "0 32768 linear 7:0 0".to_owned()),
                ("dm gdp: inactive table".to_owned(), "0 32768 delay 7:0 0 10".to_owned()),
            ]
        );
        assert_eq!(
            dm_rows("No devices found\n", "No devices found\n", "No devices found\n").expect("none"),
            []
        );
        assert!(dm_rows("gdp|254:0|Live\n", "", "").is_err());
    }

    #[test]
    fn the_diff_names_what_was_left_what_went_and_what_changed() {
        let before = state(&[("qdisc a", "x"), ("qdisc b", "y"), ("dm d: live table", "linear")]);
        let after = state(&[("qdisc a", "x"), ("link gd-ifb0", ""), ("dm d: live table", "delay")]);
        assert_eq!(
            after.diff(&before),
            [
                "changed: dm d: live table: was \"linear\", now \"delay\"",
                "left behind: link gd-ifb0",
                "gone since the baseline: qdisc b (y)",
            ]
        );
        assert!(before.diff(&before).is_empty());
    }
}
