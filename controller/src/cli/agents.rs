//! `graydar agents`.

use graydar_common::api::AgentInfo;
use graydar_common::client::Client;

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
