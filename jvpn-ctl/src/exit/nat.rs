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
//! Forwarding (`net.ipv4.ip_forward`, and `net.ipv6.conf.all.forwarding` for an IPv6
//! prefix) is set to 1 while the exit runs and put back at stop if the exit changed
//! it. What it was is kept in the table's comment, so the start after a crash (which
//! finds forwarding on and the old table there) still knows. The table's forward
//! chain accepts the tunnel's traffic; a host firewall whose own forward chain drops
//! it still wins (nftables needs every base chain to accept): see docs/exit-io.md.

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
    #[error("{0}: {1}")]
    Forwarding(&'static str, std::io::Error),
}

/// A forwarding switch the exit turns on for one family: its sysctl, and the words
/// that record its old value in the table's comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Switch {
    sysctl: &'static str,
    marker: &'static str,
}

const FORWARD_V4: Switch = Switch {
    sysctl: "/proc/sys/net/ipv4/ip_forward",
    marker: "jvpn: ip_forward was ",
};
const FORWARD_V6: Switch = Switch {
    sysctl: "/proc/sys/net/ipv6/conf/all/forwarding",
    marker: "ipv6 forwarding was ",
};

/// The installed rules; [`Nat::remove`] (or the drop) takes them away.
pub struct Nat {
    table: String,
    /// Forwarding switches the exit turned on, with what they were.
    restore: Vec<(Switch, String)>,
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

/// The nft script: the table made empty and filled in one transaction. `comment`
/// records what forwarding was before the first exit set it.
pub fn script(table: &str, tun: &str, out: &str, prefixes: &[IpNet], comment: &str) -> String {
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
         \x20 comment \"{comment}\"\n\
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

/// An existing table of that name, as `nft list` shows it (a crashed exit's).
fn left_behind(table: &str) -> Option<String> {
    let out = Command::new("nft")
        .args(["list", "table", "inet", table])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a table's text says `sw` was before the first exit set it.
fn recorded(text: &str, sw: Switch) -> Option<String> {
    let at = text.find(sw.marker)? + sw.marker.len();
    let v: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!v.is_empty()).then_some(v)
}

/// The switches `prefixes` need: one per family among them.
fn switches(prefixes: &[IpNet]) -> Vec<Switch> {
    [FORWARD_V4, FORWARD_V6]
        .into_iter()
        .filter(|sw| {
            let v6 = *sw == FORWARD_V6;
            prefixes.iter().any(|p| p.addr().is_ipv6() == v6)
        })
        .collect()
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
        let old = left_behind(&table);
        let needed = switches(prefixes);
        // A crashed exit's switch this one does not need (it had an IPv6 prefix, this
        // one has none) is put back now: nobody would later.
        for sw in [FORWARD_V4, FORWARD_V6]
            .into_iter()
            .filter(|sw| !needed.contains(sw))
        {
            if let Some(v) = old.as_deref().and_then(|t| recorded(t, sw))
                && v != "1"
            {
                std::fs::write(sw.sysctl, &v).map_err(|e| NatError::Forwarding(sw.sysctl, e))?;
                tracing::info!(sysctl = sw.sysctl, value = %v, "forwarding put back as a crashed exit found it");
            }
        }
        let mut before = Vec::new();
        for sw in needed {
            let v = match old.as_deref().and_then(|t| recorded(t, sw)) {
                Some(v) => v,
                None => std::fs::read_to_string(sw.sysctl)
                    .map_err(|e| NatError::Forwarding(sw.sysctl, e))?
                    .trim()
                    .to_owned(),
            };
            before.push((sw, v));
        }
        let comment: Vec<String> = before
            .iter()
            .map(|(sw, v)| format!("{}{v}", sw.marker))
            .collect();
        nft(&script(
            &table,
            tun,
            &cfg.out_interface,
            prefixes,
            &comment.join("; "),
        ))?;
        let mut me = Self {
            table,
            restore: Vec::new(),
            removed: false,
        };
        for (sw, v) in before.into_iter().filter(|(_, v)| v != "1") {
            if let Err(e) = std::fs::write(sw.sysctl, "1") {
                // The drop deletes the table and puts back what was switched so far.
                return Err(NatError::Forwarding(sw.sysctl, e));
            }
            me.restore.push((sw, v));
        }
        tracing::info!(
            table = %format!("inet {}", me.table),
            out = %cfg.out_interface,
            prefixes = %prefixes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            "egress NAT installed (masquerade, forwarding on)"
        );
        Ok(me)
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
        for (sw, v) in &self.restore {
            if let Err(e) = std::fs::write(sw.sysctl, v) {
                tracing::warn!(error = %e, sysctl = sw.sysctl, "restoring forwarding failed");
            }
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
            "jvpn: ip_forward was 0",
        );
        assert!(s.starts_with("add table inet jvpn_x\ndelete table inet jvpn_x\n"));
        assert!(s.contains("comment \"jvpn: ip_forward was 0\""));
        assert!(s.contains("ip saddr 10.99.0.0/22 oifname \"eth0\" masquerade"));
        assert!(s.contains("iifname \"jvpn-exit0\" oifname \"eth0\" ip saddr 10.99.0.0/22 accept"));
        assert_eq!(table_name("jvpn-exit0"), "jvpn_jvpn_exit0");
    }

    /// Each family's forwarding switch is recorded in the comment and read back from
    /// it; a table of an exit before IPv6 (no IPv6 words) reads as "not recorded".
    #[test]
    fn forwarding_per_family_is_recorded_in_the_comment() {
        let both: Vec<IpNet> = vec![
            "10.99.0.0/22".parse().unwrap(),
            "fd00:99::/64".parse().unwrap(),
        ];
        assert_eq!(switches(&both), vec![FORWARD_V4, FORWARD_V6]);
        assert_eq!(switches(&both[..1]), vec![FORWARD_V4]);
        assert_eq!(switches(&both[1..]), vec![FORWARD_V6]);
        let s = script(
            "t",
            "tun",
            "eth0",
            &both,
            "jvpn: ip_forward was 0; ipv6 forwarding was 1",
        );
        assert!(s.contains("ip6 saddr fd00:99::/64 oifname \"eth0\" masquerade"));
        assert_eq!(recorded(&s, FORWARD_V4).as_deref(), Some("0"));
        assert_eq!(recorded(&s, FORWARD_V6).as_deref(), Some("1"));
        let old = "comment \"jvpn: ip_forward was 0\"";
        assert_eq!(recorded(old, FORWARD_V4).as_deref(), Some("0"));
        assert_eq!(recorded(old, FORWARD_V6), None);
    }
}
