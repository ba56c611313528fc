//! `graydar agents`.

use clap::Subcommand;
use graydar_common::api::AgentInfo;
use graydar_common::client::Client;
use graydar_common::url::encode_segment;

use super::CliError;
use super::output::{Output, show, table};

pub fn agents_table(agents: &[AgentInfo]) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.hostname.clone(),
                a.state.to_string(),
                a.last_seen.to_string(),
                a.firing_findings.to_string(),
                a.kernel_version.clone(),
                a.addresses.join(","),
            ]
        })
        .collect();
    table(
        &["HOSTNAME", "STATE", "LAST SEEN", "FIRING", "KERNEL", "ADDRESSES"],
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
