//! `graydar agents`.

use clap::Subcommand;
use graydar_common::api::{AgentInfo, ClockOffsetInfo};
use graydar_common::client::Client;
use graydar_common::url::encode_segment;

use super::CliError;
use super::output::{Output, show, table};

/// An agent's clock offset (controller minus agent) as `+12ms ±3ms`; `-`
/// before the controller has one.
pub fn clock_text(clock: Option<&ClockOffsetInfo>) -> String {
    match clock {
        Some(c) => format!("{:+.0}ms ±{:.0}ms", c.offset_ms, c.uncertainty_ms.ceil()),
        None => "-".to_owned(),
    }
}

pub fn agents_table(agents: &[AgentInfo]) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.hostname.clone(),
                a.state.to_string(),
                a.last_seen.to_string(),
                a.firing_findings.to_string(),
                clock_text(a.clock.as_ref()),
                a.kernel_version.clone(),
                a.addresses.join(","),
            ]
        })
        .collect();
    table(
        &[
            "HOSTNAME",
            "STATE",
            "LAST SEEN",
            "FIRING",
            "CLOCK",
            "KERNEL",
            "ADDRESSES",
        ],
        &rows,
    )
}

pub fn run(client: &Client, output: Output) -> Result<String, CliError> {
    let l = client.agents()?;
    Ok(show(output, &l, |l| agents_table(&l.agents)))
}

#[derive(Debug, Subcommand)]
pub enum AgentsCmd {
    /// Forget an agent's credential (operator): its calls are refused from
    /// now on and the next enrollment of the hostname with the bootstrap
    /// token gets a new one (a host rebuilt without its state directory).
    ResetCredential { hostname: String },
}

pub fn command(client: &Client, cmd: &AgentsCmd) -> Result<String, CliError> {
    match cmd {
        AgentsCmd::ResetCredential { hostname } => {
            client.delete::<()>(&format!("/api/v1/agents/{}/credential", encode_segment(hostname)))?;
            Ok(format!(
                "credential of {hostname} reset: its agent enrolls again with the bootstrap token\n"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_offsets_show_sign_and_uncertainty() {
        let c = |offset_ms, uncertainty_ms| ClockOffsetInfo {
            offset_ms,
            uncertainty_ms,
            samples: 3,
        };
        assert_eq!(clock_text(Some(&c(250.0, 5.0))), "+250ms ±5ms");
        assert_eq!(clock_text(Some(&c(-1_234.4, 0.5))), "-1234ms ±1ms");
        assert_eq!(clock_text(Some(&c(0.0, 0.0))), "+0ms ±0ms");
        assert_eq!(clock_text(None), "-");
    }
}
