//! `graydar fault apply|list|get|revert|revert-all` and `graydar safety-lever`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use graydar_common::client::{Client, ClientError};
use graydar_common::fault_api::{CreateFaultRequest, FaultInfo, FaultTargets, SafetyLever, SetSafetyLever};
use graydar_common::faults::{Direction, DmFaultSpec, FaultSpec, FlakeyMode, Loss, NetemSpec, Protocol, Scope};

use super::CliError;
use super::output::{Output, json, show, table, yaml};

/// A flag value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(String);

#[derive(Debug, Subcommand)]
pub enum FaultCmd {
    /// Inject a fault on agents (operator token). Give the spec in a YAML
    /// or JSON file (-f FILE), or by flags: netem (--interface with
    /// --netem-delay/--loss/--rate/...), dm (--dm-device with
    /// --read-delay/--write-delay/--flush-delay or --error-writes),
    /// --blackhole, --route-flap or --route-detour PREFIX.
    Apply(Box<ApplyArgs>),
    /// Faults newest first (the whole history).
    List {
        /// Only faults with this status.
        #[arg(long, value_parser = ["running", "dry_run", "ended", "failed"])]
        status: Option<String>,
        /// At most this many (default 500, max 10000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// One fault with per-agent state (and dry-run operations).
    Get {
        id: String,
        /// Follow it: a line each time its status or an agent's state
        /// changes, until it has ended and every agent has settled; exit
        /// status 3 when it ended `failed`.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Revert one fault now.
    Revert { id: String },
    /// Kill switch: every agent reverts every fault it has active.
    RevertAll,
}

/// `graydar safety-lever`: without a subcommand, its state.
#[derive(Debug, Subcommand)]
pub enum LeverCmd {
    /// Whether it is engaged, since when and why.
    Status,
    /// Engage it (operator token): every fault is reverted and new faults
    /// are refused until it is released.
    Engage {
        /// Why (kept and shown while engaged; at most 500 characters).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Release it (operator token): faults are accepted again.
    Release,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    Egress,
    Ingress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Target agent (hostname); repeat for several.
    #[arg(long = "agent")]
    pub agents: Vec<String>,
    /// Target every agent with this label (k=v); repeat to require several.
    #[arg(long = "selector", value_parser = parse_kv)]
    pub selector: Vec<(String, String)>,
    /// The fault spec from a YAML or JSON file (`-` reads stdin): a
    /// FaultSpec such as `{kind: netem, interface: eth0, netem: {delay_ms: 100}}`.
    #[arg(
        short = 'f',
        long = "filename",
        alias = "spec-file",
        conflicts_with_all = ["interface", "blackhole", "route_flap", "route_detour", "dm_device"]
    )]
    pub spec_file: Option<PathBuf>,
    /// netem: the interface.
    #[arg(long)]
    pub interface: Option<String>,
    /// netem: direction (ingress goes through an ifb device).
    #[arg(long, value_enum, default_value_t = DirectionArg::Egress)]
    pub direction: DirectionArg,
    /// netem: added delay, e.g. 100ms.
    #[arg(long = "netem-delay", alias = "delay", value_parser = parse_ms)]
    pub delay: Option<f64>,
    /// netem: delay jitter, e.g. 10ms.
    #[arg(long, value_parser = parse_ms)]
    pub jitter: Option<f64>,
    /// netem: random loss, e.g. 10%.
    #[arg(long, value_parser = parse_pct)]
    pub loss: Option<f64>,
    /// netem: duplicate packets, e.g. 1%.
    #[arg(long, value_parser = parse_pct)]
    pub duplicate: Option<f64>,
    /// netem: corrupt packets, e.g. 0.1%.
    #[arg(long, value_parser = parse_pct)]
    pub corrupt: Option<f64>,
    /// netem: reorder (send this share immediately; needs a delay), e.g. 25%.
    #[arg(long, value_parser = parse_pct)]
    pub reorder: Option<f64>,
    /// netem: rate limit in bytes per second.
    #[arg(long, conflicts_with = "rate")]
    pub rate_bytes_per_sec: Option<u64>,
    /// netem: rate limit in tc's units: 100mbit, 1gbit, 500kbit, 10mbps (bytes), 1mibit.
    #[arg(long, value_parser = parse_tc_rate)]
    pub rate: Option<u64>,
    /// netem scope: only traffic to this CIDR; repeat for several.
    #[arg(long = "dst-cidr")]
    pub dst_cidrs: Vec<String>,
    /// netem scope: only traffic to this port; repeat for several.
    #[arg(long = "dst-port")]
    pub dst_ports: Vec<u16>,
    /// netem scope: only this protocol.
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolArg>,
    /// A blackhole route for this prefix.
    #[arg(long)]
    pub blackhole: Option<String>,
    /// A flapping prefix: withdrawn for --flap-down, announced for --flap-up, repeated.
    #[arg(long, conflicts_with = "blackhole")]
    pub route_flap: Option<String>,
    /// How long each withdrawal of --route-flap lasts (whole seconds).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", requires = "route_flap")]
    pub flap_down: Duration,
    /// How long --route-flap stays announced between withdrawals (whole seconds).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s", requires = "route_flap")]
    pub flap_up: Duration,
    /// A detour: traffic to this prefix through the gateway --via (one direction of a path changes).
    #[arg(long, conflicts_with_all = ["blackhole", "route_flap"], requires = "via")]
    pub route_detour: Option<String>,
    /// The gateway of --route-detour.
    #[arg(long, requires = "route_detour")]
    pub via: Option<String>,
    /// The source address --route-detour's packets keep (one of the agent's own).
    #[arg(long, requires = "route_detour")]
    pub src: Option<String>,
    /// dm: the device-mapper device (a name or /dev/mapper/NAME) whose
    /// table is swapped for a delay (--read-delay/--write-delay/--flush-delay)
    /// or a flakey one (--error-writes, --drop-writes).
    #[arg(long, conflicts_with_all = ["interface", "blackhole", "route_flap", "route_detour"])]
    pub dm_device: Option<String>,
    /// dm-delay: added to every read, e.g. 50ms.
    #[arg(long, value_parser = parse_whole_ms, requires = "dm_device")]
    pub read_delay: Option<u32>,
    /// dm-delay: added to every write, e.g. 100ms.
    #[arg(long, value_parser = parse_whole_ms, requires = "dm_device")]
    pub write_delay: Option<u32>,
    /// dm-delay: added to every flush (fsync); the write delay when not given.
    #[arg(long, value_parser = parse_whole_ms, requires = "dm_device")]
    pub flush_delay: Option<u32>,
    /// dm-flakey: writes fail with EIO while down.
    #[arg(long, requires = "dm_device", conflicts_with_all = ["read_delay", "write_delay", "flush_delay", "drop_writes"])]
    pub error_writes: bool,
    /// dm-flakey: writes are silently dropped while down.
    #[arg(long, requires = "dm_device", conflicts_with_all = ["read_delay", "write_delay", "flush_delay"])]
    pub drop_writes: bool,
    /// dm-flakey: healthy this long before each down period (0s: always down).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub flakey_up: Duration,
    /// dm-flakey: misbehaving this long each time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub flakey_down: Duration,
    /// How long the fault stays, e.g. 60s, 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// A shorter lease than the controller's (whole seconds, e.g. 5s): the
    /// agents revert on their own this long after losing the controller.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease: Option<Duration>,
    /// Only show the exact operations each agent would perform.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply even above the blast-radius limit.
    #[arg(long)]
    pub force: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), BadValue> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| BadValue(format!("{s:?}: expected key=value")))
}

fn parse_ms(s: &str) -> Result<f64, BadValue> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| BadValue(format!("{s:?}: {e} (e.g. 100ms)")))?;
    Ok(d.as_secs_f64() * 1000.0)
}

fn parse_whole_ms(s: &str) -> Result<u32, BadValue> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| BadValue(format!("{s:?}: {e} (e.g. 100ms)")))?;
    u32::try_from(d.as_millis()).map_err(|_| BadValue(format!("{s:?}: too long")))
}

/// A rate in tc's units (tc(8), RATES), in bytes per second: `bit` (or a
/// bare number), `kbit`, `mbit`, `gbit`, `tbit` are bits per second in
/// powers of 1000, `kibit`... in powers of 1024; `bps`, `kbps`, `mbps`,
/// `gbps`, `tbps` (and `kibps`...) are *bytes* per second.
pub fn parse_tc_rate(s: &str) -> Result<u64, BadValue> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| BadValue(format!("{s:?}: expected a rate like 100mbit, 1gbit or 10mbps")))?;
    let (scale, bytes) = match unit {
        "" | "bit" => (1.0, false),
        "kbit" => (1e3, false),
        "mbit" => (1e6, false),
        "gbit" => (1e9, false),
        "tbit" => (1e12, false),
        "kibit" => (1024.0, false),
        "mibit" => (1_048_576.0, false),
        "gibit" => (1_073_741_824.0, false),
        "tibit" => (1_099_511_627_776.0, false),
        "bps" => (1.0, true),
        "kbps" => (1e3, true),
        "mbps" => (1e6, true),
        "gbps" => (1e9, true),
        "tbps" => (1e12, true),
        "kibps" => (1024.0, true),
        "mibps" => (1_048_576.0, true),
        "gibps" => (1_073_741_824.0, true),
        "tibps" => (1_099_511_627_776.0, true),
        other => {
            return Err(BadValue(format!(
                "{s:?}: unknown unit {other:?} (tc's: bit, kbit, mbit, gbit, tbit, kibit..., bps, kbps, mbps, gbps, kibps...)"
            )));
        }
    };
    let per_second = if bytes { n * scale } else { n * scale / 8.0 };
    if !per_second.is_finite() || per_second < 1.0 || per_second > u64::MAX as f64 {
        return Err(BadValue(format!("{s:?}: at least 8 bit (1 byte) per second")));
    }
    Ok(per_second.round() as u64)
}

fn parse_pct(s: &str) -> Result<f64, BadValue> {
    s.trim()
        .trim_end_matches('%')
        .trim()
        .parse::<f64>()
        .map_err(|_| BadValue(format!("{s:?}: expected a percentage like 10%")))
}

impl ApplyArgs {
    /// The request the flags describe (the controller validates it).
    pub fn request(&self) -> Result<CreateFaultRequest, CliError> {
        let spec = if let Some(p) = &self.spec_file {
            spec_from_file(p)?
        } else if let Some(device) = &self.dm_device {
            let dm = if self.error_writes || self.drop_writes {
                DmFaultSpec::Flakey {
                    up_s: u32::try_from(self.flakey_up.as_secs()).unwrap_or(u32::MAX),
                    down_s: u32::try_from(self.flakey_down.as_secs()).unwrap_or(u32::MAX),
                    mode: if self.error_writes {
                        FlakeyMode::ErrorWrites
                    } else {
                        FlakeyMode::DropWrites
                    },
                }
            } else {
                DmFaultSpec::Delay {
                    read_ms: self.read_delay.unwrap_or(0),
                    write_ms: self.write_delay.unwrap_or(0),
                    flush_ms: self.flush_delay,
                }
            };
            FaultSpec::Dm {
                device: device.clone(),
                dm,
            }
        } else if let Some(prefix) = &self.route_detour {
            FaultSpec::RouteDetour {
                prefix: prefix.clone(),
                via: self.via.clone().unwrap_or_default(),
                src: self.src.clone(),
                table: None,
            }
        } else if let Some(prefix) = &self.route_flap {
            FaultSpec::RouteFlap {
                prefix: prefix.clone(),
                table: None,
                down_seconds: u32::try_from(self.flap_down.as_secs()).unwrap_or(u32::MAX),
                up_seconds: u32::try_from(self.flap_up.as_secs()).unwrap_or(u32::MAX),
            }
        } else if let Some(prefix) = &self.blackhole {
            FaultSpec::Blackhole {
                prefix: prefix.clone(),
                table: None,
            }
        } else if let Some(interface) = &self.interface {
            FaultSpec::Netem {
                interface: interface.clone(),
                direction: match self.direction {
                    DirectionArg::Egress => Direction::Egress,
                    DirectionArg::Ingress => Direction::Ingress,
                },
                scope: Scope {
                    dst_cidrs: self.dst_cidrs.clone(),
                    dst_ports: self.dst_ports.clone(),
                    protocol: self.protocol.map(|p| match p {
                        ProtocolArg::Tcp => Protocol::Tcp,
                        ProtocolArg::Udp => Protocol::Udp,
                        ProtocolArg::Icmp => Protocol::Icmp,
                    }),
                },
                netem: NetemSpec {
                    delay_ms: self.delay.unwrap_or(0.0),
                    jitter_ms: self.jitter.unwrap_or(0.0),
                    loss: self.loss.map(|percent| Loss::Random {
                        percent,
                        correlation: 0.0,
                    }),
                    duplicate: self.duplicate.unwrap_or(0.0),
                    corrupt: self.corrupt.unwrap_or(0.0),
                    reorder: self.reorder.unwrap_or(0.0),
                    rate_bytes_per_sec: self.rate.or(self.rate_bytes_per_sec),
                    ..NetemSpec::default()
                },
            }
        } else {
            return Err(CliError::NoFault);
        };
        if !self.dry_run && self.duration.is_none() {
            return Err(CliError::NoDuration);
        }
        Ok(CreateFaultRequest {
            targets: FaultTargets {
                agents: self.agents.clone(),
                selector: self.selector.iter().cloned().collect::<BTreeMap<_, _>>(),
            },
            spec,
            duration_seconds: self.duration.map_or(0, |d| {
                i64::try_from(d.as_secs().max(u64::from(d.subsec_nanos() > 0))).unwrap_or(i64::MAX)
            }),
            dry_run: self.dry_run,
            force: self.force,
            lease_seconds: self.lease.map(|l| l.as_secs()),
        })
    }
}

/// A fault spec from a YAML or JSON file (`-`: stdin). YAML is a superset
/// of JSON, so one parser reads both and names the line of an error.
pub fn spec_from_file(p: &std::path::Path) -> Result<FaultSpec, CliError> {
    let text = if p.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(p)
    }
    .map_err(|source| CliError::Read {
        path: p.to_owned(),
        source,
    })?;
    spec_from_text(p, &text)
}

pub fn spec_from_text(p: &std::path::Path, text: &str) -> Result<FaultSpec, CliError> {
    serde_yaml::from_str::<FaultSpec>(text).map_err(|e| CliError::SpecFile {
        path: p.to_owned(),
        message: e.to_string(),
    })
}

fn spec_line(spec: &FaultSpec) -> String {
    match spec {
        FaultSpec::Netem {
            interface,
            direction,
            scope,
            netem,
        } => {
            let dir = match direction {
                Direction::Egress => "egress",
                Direction::Ingress => "ingress",
            };
            let mut s = format!("netem {interface} {dir}: {}", netem.describe());
            if !scope.is_whole_interface() {
                s.push_str(&format!(
                    " (to {:?} ports {:?} {:?})",
                    scope.dst_cidrs, scope.dst_ports, scope.protocol
                ));
            }
            s
        }
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

pub fn faults_table(faults: &[FaultInfo]) -> String {
    let rows: Vec<Vec<String>> = faults
        .iter()
        .map(|f| {
            let mut states: BTreeMap<&str, usize> = BTreeMap::new();
            for a in &f.agents {
                *states.entry(a.state.as_str()).or_default() += 1;
            }
            vec![
                f.id.clone(),
                f.status.clone(),
                f.spec.kind().to_string(),
                f.spec.target().to_owned(),
                f.agents.len().to_string(),
                states
                    .iter()
                    .map(|(s, n)| format!("{s}={n}"))
                    .collect::<Vec<_>>()
                    .join(","),
                f.created_at.to_string(),
                f.expires_at.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "STATUS", "KIND", "TARGET", "AGENTS", "STATES", "CREATED", "EXPIRES",
        ],
        &rows,
    )
}

pub fn fault_text(f: &FaultInfo) -> String {
    let mut out = String::new();
    for (k, v) in [
        ("id", f.id.clone()),
        ("status", f.status.clone()),
        ("spec", spec_line(&f.spec)),
        ("dry_run", f.dry_run.to_string()),
        ("forced", f.forced.to_string()),
        ("duration", format!("{}s", f.duration_seconds)),
        ("created_at", f.created_at.to_string()),
        ("expires_at", f.expires_at.to_string()),
        ("ended_at", f.ended_at.map_or_else(|| "-".into(), |t| t.to_string())),
        ("end_reason", f.end_reason.clone().unwrap_or_else(|| "-".into())),
    ] {
        out.push_str(&format!("{k:<12} {v}\n"));
    }
    out.push_str("\nagents:\n");
    let rows: Vec<Vec<String>> = f
        .agents
        .iter()
        .map(|a| {
            vec![
                a.agent.clone(),
                a.state.as_str().to_owned(),
                a.updated_at.to_string(),
                a.agent_at.map_or_else(|| "-".into(), |t| t.to_string()),
                a.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    for l in table(&["AGENT", "STATE", "UPDATED", "AGENT TIME", "REASON"], &rows).lines() {
        out.push_str(&format!("  {l}\n"));
    }
    for a in f.agents.iter().filter(|a| !a.operations.is_empty()) {
        out.push_str(&format!("\noperations on {}:\n", a.agent));
        for op in &a.operations {
            out.push_str(&format!("  {op}\n"));
        }
    }
    out
}

/// The status and every agent's state in one line (what `--watch` prints).
pub fn state_line(f: &FaultInfo) -> String {
    let agents: Vec<String> = f
        .agents
        .iter()
        .map(|a| format!("{}={}", a.agent, a.state.as_str()))
        .collect();
    format!("{} {}", f.status, agents.join(" "))
}

/// Over for `--watch`: ended (or a dry run) and every agent settled
/// (reverted, failed, or described for a dry run).
pub fn settled(f: &FaultInfo) -> bool {
    use graydar_common::faults::FaultState::{Described, Failed, Reverted};
    (f.ended_at.is_some() || f.dry_run)
        && f.agents
            .iter()
            .all(|a| matches!(a.state, Reverted | Failed | Described))
}

/// `graydar fault get ID --watch`.
fn watch(client: &Client, output: Output, id: &str) -> Result<String, CliError> {
    use std::io::Write as _;
    let mut last = String::new();
    loop {
        let f = match client.fault(id) {
            Ok(f) => f,
            // A controller restarting: keep following.
            Err(e) if e.is_transient() => {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(CliError::Fault(e)),
        };
        let line = state_line(&f);
        if output == Output::Table && line != last {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}  {line}", graydar_common::timestamp::Timestamp::now());
            let _ = out.flush();
            last = line;
        }
        if settled(&f) {
            let text = show(output, &f, fault_text);
            if f.status == "failed" {
                let _ = std::io::stdout().lock().write_all(text.as_bytes());
                return Err(CliError::FaultFailed {
                    id: f.id.clone(),
                    reasons: f
                        .agents
                        .iter()
                        .map(|a| format!("{}: {}", a.agent, a.reason.as_deref().unwrap_or("no reason given")))
                        .collect(),
                });
            }
            return Ok(text);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// An API error as the API's own message.
pub fn api_message(e: &ClientError) -> String {
    match e {
        ClientError::Api {
            status, error, detail, ..
        } => format!("{detail} (HTTP {status} {error})"),
        other => other.to_string(),
    }
}

pub fn run(client: &Client, output: Output, cmd: &FaultCmd) -> Result<String, CliError> {
    let show_fault = |f: &FaultInfo| show(output, f, fault_text);
    Ok(match cmd {
        FaultCmd::Apply(args) => {
            let req = args.request()?;
            let (status, f) = client.create_fault(&req).map_err(CliError::Fault)?;
            let mut out = show_fault(&f);
            if status == 202 && output == Output::Table {
                out.push_str(&format!(
                    "\nsome agents have not answered the dry run yet: graydar fault get {}\n",
                    f.id
                ));
            }
            out
        }
        FaultCmd::List { status, limit } => {
            let l = client.faults(status.as_deref(), *limit).map_err(CliError::Fault)?;
            show(output, &l, |l| faults_table(&l.faults))
        }
        FaultCmd::Get { id, watch: true } => return watch(client, output, id),
        FaultCmd::Get { id, watch: false } => show_fault(&client.fault(id).map_err(CliError::Fault)?),
        FaultCmd::Revert { id } => show_fault(&client.revert_fault(id).map_err(CliError::Fault)?),
        FaultCmd::RevertAll => {
            let r = client.revert_all_faults().map_err(CliError::Fault)?;
            match output {
                Output::Json => json(&r),
                Output::Yaml => yaml(&r),
                Output::Table => format!(
                    "revert-all: {} faults ended, {} agents notified (epoch {})\n",
                    r.faults_ended, r.agents_notified, r.revert_all_epoch
                ),
            }
        }
    })
}

/// `graydar safety-lever [status|engage|release]`.
pub fn lever(client: &Client, output: Output, cmd: &LeverCmd) -> Result<String, CliError> {
    let lever = match cmd {
        LeverCmd::Status => client.safety_lever(),
        LeverCmd::Engage { reason } => client.set_safety_lever(&SetSafetyLever {
            engaged: true,
            reason: reason.clone(),
        }),
        LeverCmd::Release => client.set_safety_lever(&SetSafetyLever {
            engaged: false,
            reason: None,
        }),
    }
    .map_err(CliError::Fault)?;
    Ok(match output {
        Output::Json => json(&lever),
        Output::Yaml => yaml(&lever),
        Output::Table => lever_text(&lever),
    })
}

fn lever_text(l: &SafetyLever) -> String {
    let mut out = match (&l.since, &l.reason) {
        (Some(since), reason) if l.engaged => format!(
            "safety lever: ENGAGED since {since} ({}): new faults are refused\n",
            reason.as_deref().unwrap_or("no reason given")
        ),
        _ if l.engaged => "safety lever: ENGAGED: new faults are refused\n".to_owned(),
        _ => "safety lever: released: faults are accepted\n".to_owned(),
    };
    if let Some(r) = &l.revert_all {
        out.push_str(&format!(
            "revert-all: {} faults ended, {} agents notified (epoch {})\n",
            r.faults_ended, r.agents_notified, r.revert_all_epoch
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn apply(argv: &[&str]) -> Result<CreateFaultRequest, String> {
        let mut full = vec!["graydar", "fault", "apply"];
        full.extend_from_slice(argv);
        let cli = crate::cli::Cli::try_parse_from(full).map_err(|e| e.to_string())?;
        match cli.cmd {
            crate::cli::Cmd::Fault {
                cmd: FaultCmd::Apply(a),
            } => a.request().map_err(|e| e.to_string()),
            other => panic!("not fault apply: {other:?}"),
        }
    }

    #[test]
    fn yaml_and_json_files_give_the_same_request() {
        let dir = tempfile::tempdir().expect("temp dir");
        let yaml = dir.path().join("slow.yaml");
        std::fs::write(
            &yaml,
            "# 100 ms on eth0, to one subnet\nkind: netem\ninterface: eth0\nscope:\n  dst_cidrs: [10.0.0.0/8]\n\
             netem:\n  delay_ms: 100\n  loss: {model: random, percent: 5}\n",
        )
        .expect("write");
        let json = dir.path().join("slow.json");
        std::fs::write(
            &json,
            r#"{"kind": "netem", "interface": "eth0", "scope": {"dst_cidrs": ["10.0.0.0/8"]},
                "netem": {"delay_ms": 100, "loss": {"model": "random", "percent": 5}}}"#,
        )
        .expect("write");
        let from = |p: &std::path::Path, flag: &str| {
            apply(&["--agent", "a1", flag, p.to_str().expect("utf-8"), "--duration", "1m"]).expect("request")
        };
        let y = from(&yaml, "-f");
        assert_eq!(y, from(&json, "-f"));
        assert_eq!(y, from(&json, "--filename"));
        assert_eq!(y, from(&yaml, "--spec-file"), "the old flag still works");
        let FaultSpec::Netem { netem, scope, .. } = &y.spec else {
            panic!("netem: {y:?}")
        };
        assert_eq!(
            (netem.delay_ms, scope.dst_cidrs.as_slice()),
            (100.0, &["10.0.0.0/8".to_owned()][..])
        );
        // A file that is not a spec names the file and the field (no line:
        // the spec is tagged by `kind`, which serde reads before the rest).
        std::fs::write(&yaml, "kind: netem\ninterface: eth0\nnetem:\n  delay: 100\n").expect("write");
        let e = apply(&["--agent", "a1", "-f", yaml.to_str().expect("utf-8"), "--duration", "1m"])
            .expect_err("unknown field");
        assert!(
            e.contains("slow.yaml") && e.contains("not a fault spec") && e.contains("delay"),
            "{e}"
        );
        // A file with flags of another kind: refused by clap.
        assert!(apply(&["-f", "x.yaml", "--interface", "eth0"]).is_err());
    }

    #[test]
    fn dm_flags_map_to_the_spec_fields_they_name() {
        let r = apply(&[
            "--agent",
            "db1",
            "--dm-device",
            "data",
            "--read-delay",
            "20ms",
            "--write-delay",
            "100ms",
            "--flush-delay",
            "500ms",
            "--duration",
            "2m",
        ])
        .expect("request");
        assert_eq!(
            r.spec,
            FaultSpec::Dm {
                device: "data".into(),
                dm: DmFaultSpec::Delay {
                    read_ms: 20,
                    write_ms: 100,
                    flush_ms: Some(500)
                }
            }
        );
        let r = apply(&[
            "--agent",
            "db1",
            "--dm-device",
            "data",
            "--write-delay",
            "1s",
            "--duration",
            "1m",
        ])
        .expect("request");
        assert!(matches!(
            r.spec,
            FaultSpec::Dm {
                dm: DmFaultSpec::Delay {
                    read_ms: 0,
                    write_ms: 1000,
                    flush_ms: None
                },
                ..
            }
        ));
        let r = apply(&[
            "--agent",
            "db1",
            "--dm-device",
            "data",
            "--error-writes",
            "--duration",
            "1m",
        ])
        .expect("request");
        assert_eq!(
            r.spec,
            FaultSpec::Dm {
                device: "data".into(),
                dm: DmFaultSpec::Flakey {
                    up_s: 0,
                    down_s: 60,
                    mode: FlakeyMode::ErrorWrites
                }
            }
        );
        let r = apply(&[
            "--agent",
            "db1",
            "--dm-device",
            "data",
            "--drop-writes",
            "--flakey-up",
            "10s",
            "--flakey-down",
            "5s",
            "--duration",
            "1m",
        ])
        .expect("request");
        assert!(matches!(
            r.spec,
            FaultSpec::Dm {
                dm: DmFaultSpec::Flakey {
                    up_s: 10,
                    down_s: 5,
                    mode: FlakeyMode::DropWrites
                },
                ..
            }
        ));
        assert!(
            apply(&["--read-delay", "10ms"]).is_err(),
            "--read-delay needs --dm-device"
        );
        assert!(
            apply(&["--dm-device", "d", "--error-writes", "--write-delay", "1ms"]).is_err(),
            "a delay and a flakey table at once"
        );
        assert!(apply(&["--dm-device", "d", "--interface", "eth0"]).is_err());
    }

    #[test]
    fn rates_in_tc_units_are_bytes_per_second() {
        for (text, bytes) in [
            ("100mbit", 12_500_000),
            ("1gbit", 125_000_000),
            ("500kbit", 62_500),
            ("8", 1),
            ("8bit", 1),
            ("1mibit", 131_072),
            ("10mbps", 10_000_000),
            ("1kibps", 1024),
            ("2.5Mbit", 312_500),
        ] {
            assert_eq!(parse_tc_rate(text), Ok(bytes), "{text}");
        }
        for bad in ["", "fast", "100mb", "7bit", "-5mbit", "1e3mbit"] {
            assert!(parse_tc_rate(bad).is_err(), "{bad:?}");
        }
        let r = apply(&[
            "--agent",
            "a",
            "--interface",
            "eth0",
            "--rate",
            "100mbit",
            "--duration",
            "1m",
        ])
        .expect("request");
        let FaultSpec::Netem { netem, .. } = &r.spec else {
            panic!("netem")
        };
        assert_eq!(netem.rate_bytes_per_sec, Some(12_500_000));
        assert!(
            apply(&["--interface", "eth0", "--rate", "1mbit", "--rate-bytes-per-sec", "5"]).is_err(),
            "one rate flag"
        );
    }

    #[test]
    fn netem_flags_make_a_request() {
        let cli = crate::cli::Cli::try_parse_from([
            "graydar",
            "fault",
            "apply",
            "--agent",
            "a1",
            "--agent",
            "a2",
            "--interface",
            "eth0",
            "--netem-delay",
            "100ms",
            "--loss",
            "10%",
            "--duration",
            "60s",
            "--lease",
            "5s",
            "--dry-run",
        ])
        .expect("parse");
        let crate::cli::Cmd::Fault {
            cmd: FaultCmd::Apply(a),
        } = cli.cmd
        else {
            panic!("not fault apply");
        };
        let r = a.request().expect("request");
        assert_eq!(r.targets.agents, ["a1", "a2"]);
        assert_eq!(r.duration_seconds, 60);
        assert_eq!(r.lease_seconds, Some(5));
        assert!(r.dry_run);
        let FaultSpec::Netem { interface, netem, .. } = &r.spec else {
            panic!("not netem");
        };
        assert_eq!(interface, "eth0");
        assert_eq!(netem.delay_ms, 100.0);
        assert_eq!(
            netem.loss,
            Some(Loss::Random {
                percent: 10.0,
                correlation: 0.0
            })
        );
        let cli = crate::cli::Cli::try_parse_from([
            "graydar",
            "fault",
            "apply",
            "--selector",
            "rack=r1",
            "--blackhole",
            "10.9.0.0/16",
        ])
        .expect("parse");
        let crate::cli::Cmd::Fault {
            cmd: FaultCmd::Apply(a),
        } = cli.cmd
        else {
            panic!("not fault apply");
        };
        assert!(a.request().expect_err("no duration").to_string().contains("--duration"));
        // --route-flap with its two periods (5 s / 30 s by default).
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "graydar",
                "fault",
                "apply",
                "--agent",
                "r1",
                "--route-flap",
                "10.9.0.0/16",
            ];
            argv.extend_from_slice(extra);
            argv.extend_from_slice(&["--duration", "5m"]);
            let cli = crate::cli::Cli::try_parse_from(argv).expect("parse");
            let crate::cli::Cmd::Fault {
                cmd: FaultCmd::Apply(a),
            } = cli.cmd
            else {
                panic!("not fault apply");
            };
            a.request().expect("request").spec
        };
        assert_eq!(
            parse(&[]),
            FaultSpec::RouteFlap {
                prefix: "10.9.0.0/16".into(),
                table: None,
                down_seconds: 5,
                up_seconds: 30
            }
        );
        assert!(matches!(
            parse(&["--flap-down", "2s", "--flap-up", "1m"]),
            FaultSpec::RouteFlap {
                down_seconds: 2,
                up_seconds: 60,
                ..
            }
        ));
        assert!(
            crate::cli::Cli::try_parse_from(["graydar", "fault", "apply", "--flap-down", "2s"]).is_err(),
            "--flap-down needs --route-flap"
        );
        // --route-detour with its gateway and source.
        let detour = |extra: &[&str]| {
            let mut argv = vec![
                "graydar",
                "fault",
                "apply",
                "--agent",
                "b",
                "--route-detour",
                "10.206.1.2/32",
            ];
            argv.extend_from_slice(extra);
            argv.extend_from_slice(&["--duration", "1m"]);
            crate::cli::Cli::try_parse_from(argv).map(|cli| match cli.cmd {
                crate::cli::Cmd::Fault {
                    cmd: FaultCmd::Apply(a),
                } => a.request().expect("request").spec,
                _ => panic!("not fault apply"),
            })
        };
        assert_eq!(
            detour(&["--via", "10.206.4.1", "--src", "10.206.2.2"]).expect("parse"),
            FaultSpec::RouteDetour {
                prefix: "10.206.1.2/32".into(),
                via: "10.206.4.1".into(),
                src: Some("10.206.2.2".into()),
                table: None,
            }
        );
        assert!(detour(&[]).is_err(), "--route-detour needs --via");
        assert!(detour(&["--via", "10.0.0.1", "--blackhole", "10.9.0.0/16"]).is_err());
        assert!(
            crate::cli::Cli::try_parse_from(["graydar", "fault", "apply", "--via", "10.0.0.1"]).is_err(),
            "--via needs --route-detour"
        );
    }
}
