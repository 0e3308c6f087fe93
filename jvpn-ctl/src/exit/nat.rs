//! Egress for the clients (`[nat]`): the exit masquerades the tunnel prefixes out of
//! one interface and lets them be forwarded, so a client's traffic reaches the
//! internet with the exit's address as its source and the replies come back.
//!
//! The rules are one nftables table of the exit's own, `inet jvpn_<tun>`, written by
//! Debian's `nft` tool in one transaction (`nft -f -`): the table is created, emptied
//! and filled together, so a start is idempotent (a table left by a crashed exit is
//! replaced, never doubled) and a failure leaves nothing half-installed. The stop
//! deletes the table. The `nft` tool rather than netlink: one text script that an
//! operator can read (`nft list table inet jvpn_<tun>`) and no hand-written netlink
//! encoding of nftables expressions; it runs twice per exit lifetime.
//!
//! `net.ipv4.ip_forward` is set to 1 while the exit runs and put back at stop if the
//! exit changed it. What it was is kept in the table's comment, so the start after a
//! crash (which finds forwarding on and the old table there) still knows. The table's forward chain accepts the tunnel's traffic; a host
//! firewall whose own forward chain drops it still wins (nftables needs every base
//! chain to accept): see docs/exit-io.md.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `[nat]` of the exit's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatConfig {
    /// Where the clients' traffic leaves for the internet, e.g. `eth0`.
    pub out_interface: String,
    /// Source prefixes to masquerade; default: the prefix of `tun_addr`.
    #[serde(default)]
    pub prefixes: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("nat.out_interface: no interface {0:?} here")]
    NoInterface(String),
    #[error(
        "[nat] needs the `nft` tool (Debian: apt-get install nftables; `cargo xtask test` installs it): {0}"
    )]
    NoNft(std::io::Error),
    #[error("nft refused the [nat] rules: {0}")]
    Nft(String),
    #[error("net.ipv4.ip_forward: {0}")]
    Forwarding(std::io::Error),
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The installed rules; [`Nat::remove`] (or the drop) takes them away.
pub struct Nat {
    table: String,
    /// `ip_forward` before the exit set it, if it was not 1.
    forward_was: Option<String>,
    removed: bool,
}

/// The table's name for the exit on TUN `tun` (one table per exit instance).
pub fn table_name(tun: &str) -> String {
    let safe: String = tun
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("jvpn_{safe}")
}

/// The table's comment: `net.ipv4.ip_forward` as it was before the first exit set it.
const FORWARD_WAS: &str = "jvpn: ip_forward was ";

/// The nft script: the table made empty and filled in one transaction.
pub fn script(table: &str, tun: &str, out: &str, prefixes: &[IpNet], forward_was: &str) -> String {
    let mut rules_nat = String::new();
    let mut rules_fwd = String::new();
    for p in prefixes {
        let fam = if p.addr().is_ipv4() { "ip" } else { "ip6" };
        rules_nat += &format!("    {fam} saddr {p} oifname \"{out}\" masquerade\n");
        rules_fwd += &format!("    iifname \"{tun}\" oifname \"{out}\" {fam} saddr {p} accept\n");
    }
    format!(
        "add table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \x20 comment \"{FORWARD_WAS}{forward_was}\"\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         {rules_nat}\
         \x20 }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         {rules_fwd}\
         \x20   iifname \"{out}\" oifname \"{tun}\" ct state established,related accept\n\
         \x20 }}\n\
         }}\n"
    )
}

fn nft(script: &str) -> Result<(), NatError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NatError::NoNft)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NatError::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NatError::Nft(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NatError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// What the comment of an existing table says forwarding was, if there is one.
fn left_behind(table: &str) -> Option<String> {
    let out = Command::new("nft")
        .args(["list", "table", "inet", table])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find(FORWARD_WAS)? + FORWARD_WAS.len();
    let v: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!v.is_empty()).then_some(v)
}

impl Nat {
    /// Installs the rules for `prefixes` (the tunnel's) leaving through
    /// `cfg.out_interface`. The interface is checked first: on an error nothing is
    /// installed and `ip_forward` is as it was.
    pub fn install(cfg: &NatConfig, tun: &str, prefixes: &[IpNet]) -> Result<Self, NatError> {
        if nix::net::if_::if_nametoindex(cfg.out_interface.as_str()).is_err() {
            return Err(NatError::NoInterface(cfg.out_interface.clone()));
        }
        let table = table_name(tun);
        // A table left by a crashed exit knows what forwarding was before it.
        let before = match left_behind(&table) {
            Some(v) => v,
            None => std::fs::read_to_string(IP_FORWARD)
                .map_err(NatError::Forwarding)?
                .trim()
                .to_owned(),
        };
        nft(&script(&table, tun, &cfg.out_interface, prefixes, &before))?;
        let forward_was = (before != "1").then_some(before);
        if forward_was.is_some()
            && let Err(e) = std::fs::write(IP_FORWARD, "1")
        {
            let _ = nft(&format!("delete table inet {table}\n"));
            return Err(NatError::Forwarding(e));
        }
        tracing::info!(
            table = %format!("inet {table}"),
            out = %cfg.out_interface,
            prefixes = %prefixes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            "egress NAT installed (masquerade, forwarding on)"
        );
        Ok(Self {
            table,
            forward_was,
            removed: false,
        })
    }

    /// Deletes the table and puts `ip_forward` back if the exit changed it.
    pub fn remove(mut self) {
        self.take_down();
    }

    fn take_down(&mut self) {
        if std::mem::replace(&mut self.removed, true) {
            return;
        }
        if let Err(e) = nft(&format!("delete table inet {}\n", self.table)) {
            tracing::warn!(error = %e, "removing the egress NAT table failed");
        }
        if let Some(v) = &self.forward_was
            && let Err(e) = std::fs::write(IP_FORWARD, v)
        {
            tracing::warn!(error = %e, "restoring net.ipv4.ip_forward failed");
        }
        tracing::info!(table = %format!("inet {}", self.table), "egress NAT removed");
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        self.take_down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_replaces_the_table_in_one_transaction() {
        let s = script(
            "jvpn_x",
            "jvpn-exit0",
            "eth0",
            &["10.99.0.0/22".parse().unwrap()],
            "0",
        );
        assert!(s.starts_with("add table inet jvpn_x\ndelete table inet jvpn_x\n"));
        assert!(s.contains("comment \"jvpn: ip_forward was 0\""));
        assert!(s.contains("ip saddr 10.99.0.0/22 oifname \"eth0\" masquerade"));
        assert!(s.contains("iifname \"jvpn-exit0\" oifname \"eth0\" ip saddr 10.99.0.0/22 accept"));
        assert_eq!(table_name("jvpn-exit0"), "jvpn_jvpn_exit0");
    }
}
