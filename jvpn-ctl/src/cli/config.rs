//! `jvpn-ctl config check [--role gateway|exit|client] FILE`: a configuration file read
//! and checked by its daemon's own code — the parser and validation behind `jvpn-ctl
//! gateway|exit|client --config FILE` — without starting anything: nothing is bound,
//! created or written. Without `--role` the file's keys tell the role.
//!
//! The files a configuration names (identity, peers, link key, the event log's
//! directory) are looked at as well. One that does not exist is a warning, since the
//! check may run on a build host; one that exists is read by the daemon's own loader,
//! and a bad one is an error, as it would stop the daemon.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail};
use jvpn_ctl::{client::ClientConfig, exit, gateway::GatewayConfig, proto};
use serde::de::DeserializeOwned;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Parse and validate FILE with its daemon's own code and print `FILE: a valid ROLE
    /// configuration`, or fail with the error that names the key. Referenced files
    /// that do not exist (identity, peers, link key) are warnings.
    Check {
        /// The daemon FILE is for [default: told by its keys]
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// The configuration file (TOML).
        file: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Gateway,
    Exit,
    Client,
}

impl Role {
    const ALL: [Role; 3] = [Role::Gateway, Role::Exit, Role::Client];

    fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Exit => "exit",
            Role::Client => "client",
        }
    }

    /// The top-level keys its configuration file has, as its parser knows them.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Role::Gateway => field_names::<GatewayConfig>(),
            Role::Exit => field_names::<exit::ConfigFile>(),
            Role::Client => field_names::<ClientConfig>(),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub fn run(command: Command) -> anyhow::Result<()> {
    let Command::Check { role, file } = command;
    let report = check(&file, role)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", report.summary(&file));
    Ok(())
}

/// What a successful check found.
#[derive(Debug)]
struct Report {
    role: Role,
    /// The keys that told the role, when `--role` was not given.
    told_by: Option<Vec<String>>,
    warnings: Vec<String>,
}

impl Report {
    fn summary(&self, path: &Path) -> String {
        let mut line = format!("{}: a valid {} configuration", path.display(), self.role);
        if let Some(keys) = &self.told_by {
            let mut shown = keys.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            if keys.len() > 3 {
                shown.push_str(", ...");
            }
            line.push_str(&format!(" (role assumed from its keys: {shown})"));
        }
        line
    }
}

fn check(path: &Path, role: Option<Role>) -> anyhow::Result<Report> {
    // A file that cannot be read is that, not an invalid configuration.
    std::fs::metadata(path).map_err(|e| anyhow!("reading {}: {e}", path.display()))?;
    let (role, told_by) = match role {
        Some(role) => (role, None),
        None => {
            let (role, keys) = detect(path)?;
            (role, Some(keys))
        }
    };
    let invalid = |e: &dyn fmt::Display| {
        // The parsers' messages start with the file when they come from the TOML
        // reader; say it once.
        let msg = e.to_string();
        let prefix = format!("{}: ", path.display());
        let detail = msg.strip_prefix(&prefix).unwrap_or(&msg);
        anyhow!(
            "{}: not a valid {role} configuration{}: {detail}",
            path.display(),
            if told_by.is_some() {
                " (role assumed from its keys; --role to choose)"
            } else {
                ""
            }
        )
    };
    let mut warnings = Vec::new();
    // What fails the daemon at start, after its configuration was accepted.
    let file_error = |key: &str, e: &dyn fmt::Display| {
        anyhow!(
            "{}: {key}: {e} (the {role} would not start)",
            path.display()
        )
    };
    match role {
        Role::Gateway => {
            // As `jvpn-ctl gateway --config FILE` (cli/gateway.rs: load, validate).
            let c = GatewayConfig::load(path).map_err(|e| invalid(&e))?;
            c.validate().map_err(|e| invalid(&e))?;
            if readable(
                &mut warnings,
                "identity",
                &c.identity,
                "the gateway does not start without it: `jvpn-ctl keygen --out FILE`",
            ) {
                proto::identity::load(&c.identity).map_err(|e| file_error("identity", &e))?;
            }
            if readable(
                &mut warnings,
                "peers",
                &c.peers,
                "every client is refused until keys are added: `jvpn-ctl peers --peers \
                 FILE add KEY`",
            ) {
                let peers = proto::Peers::load(&c.peers).map_err(|e| file_error("peers", &e))?;
                if peers.is_empty() {
                    warnings.push(format!(
                        "peers: {} lists no client keys: every client is refused (add \
                         some with `jvpn-ctl peers add`)",
                        c.peers.display()
                    ));
                }
            }
            if readable(
                &mut warnings,
                "exit.link_key",
                &c.exit.link_key,
                "the gateway does not start without it; the exit's link_key_file holds \
                 the same key",
            ) {
                proto::load_link_key(&c.exit.link_key)
                    .map_err(|e| file_error("exit.link_key", &e))?;
            }
            if let Some(w) = log_dir("event_log", c.event_log.as_deref(), role) {
                warnings.push(w);
            }
        }
        Role::Exit => {
            // As `jvpn-ctl exit --config FILE` (cli/exit.rs: load, resolve). resolve()
            // checks every value before it reads the link key, so a link-key error
            // means the rest is valid.
            let file = exit::ConfigFile::load(path).map_err(|e| invalid(&e))?;
            let key = file.link_key_file.clone();
            if file.nat.is_some() && find_program("nft").is_none() {
                warnings.push(
                    "nat: the `nft` tool is not installed here (with [nat] the exit does not \
                     start without it: apt-get install nftables)"
                        .into(),
                );
            }
            match (file.resolve(), key) {
                (Ok(_), _) => {}
                (Err(exit::ConfigError::LinkKey(e)), Some(key)) => {
                    if readable(
                        &mut warnings,
                        "link_key_file",
                        &key,
                        "the exit does not start without it; the gateway's exit.link_key \
                         holds the same key",
                    ) {
                        return Err(file_error("link_key_file", &e));
                    }
                }
                (Err(e), _) => return Err(invalid(&e)),
            }
        }
        Role::Client => {
            // As `jvpn-ctl client --config FILE` (cli/client.rs: load, validate).
            let c = ClientConfig::load(path).map_err(|e| invalid(&e))?;
            c.validate().map_err(|e| invalid(&e))?;
            if readable(
                &mut warnings,
                "identity",
                &c.identity,
                "the agent does not start without it: `jvpn-ctl keygen --out FILE`",
            ) {
                proto::identity::load(&c.identity).map_err(|e| file_error("identity", &e))?;
            }
            if let Some(w) = log_dir("event_log", c.event_log.as_deref(), role) {
                warnings.push(w);
            }
        }
    }
    Ok(Report {
        role,
        told_by,
        warnings,
    })
}

/// The role whose keys the file has: a key of one role only tells it (`interfaces`:
/// a gateway, `[[transport]]`: a client, `tun_addr`: an exit). Shared keys
/// (`identity`, `mtu`, ...) tell nothing.
fn detect(path: &Path) -> anyhow::Result<(Role, Vec<String>)> {
    let table: toml::Table = jvpn_ctl::toml_file::load(path)?;
    let only = |role: Role| -> Vec<String> {
        table
            .keys()
            .filter(|k| {
                Role::ALL
                    .iter()
                    .all(|r| r.keys().contains(&k.as_str()) == (*r == role))
            })
            .cloned()
            .collect()
    };
    let told: Vec<(Role, Vec<String>)> = Role::ALL
        .into_iter()
        .map(|r| (r, only(r)))
        .filter(|(_, keys)| !keys.is_empty())
        .collect();
    match told.as_slice() {
        [(role, keys)] => Ok((*role, keys.clone())),
        [] => bail!(
            "{}: cannot tell which daemon it is for (none of its keys is only a gateway's, \
             an exit's or a client's): pass --role gateway, --role exit or --role client",
            path.display()
        ),
        several => bail!(
            "{}: has keys of more than one role ({}): pass --role gateway, --role exit or \
             --role client",
            path.display(),
            several
                .iter()
                .map(|(r, keys)| format!("{r}: {}", keys.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// Whether a file the configuration names can be read (then the daemon's loader
/// checks it); if not, a warning says why (`without`: what its absence means).
fn readable(warnings: &mut Vec<String>, key: &str, path: &Path, without: &str) -> bool {
    let warning = if path.is_relative() {
        format!(
            "{key}: {} is a relative path, taken from the daemon's working directory (/ \
             under systemd); not checked",
            path.display()
        )
    } else {
        match std::fs::File::open(path) {
            Ok(_) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("{key}: {} does not exist ({without})", path.display())
            }
            Err(e) => format!(
                "{key}: {} cannot be read by this user ({e}); not checked",
                path.display()
            ),
        }
    };
    warnings.push(warning);
    false
}

/// An executable `name` on PATH or in the sbin directories, which a daemon's PATH has
/// and a user's often lacks.
fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The event log is created at start, but not its directory.
fn log_dir(key: &str, log: Option<&Path>, role: Role) -> Option<String> {
    let dir = log?.parent().filter(|d| !d.as_os_str().is_empty())?;
    (dir.is_absolute() && !dir.exists()).then(|| {
        format!(
            "{key}: the directory {} does not exist (the {role} does not start without it; \
             the systemd unit's LogsDirectory=jvpn creates /var/log/jvpn)",
            dir.display()
        )
    })
}

/// The keys `T` reads at its top level. serde's derive hands a struct's field names
/// (as written in the file: renames applied) to `deserialize_struct`; this
/// deserializer keeps them and stops there.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};

    struct Names<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Names<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Self::Error::custom("field names taken"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut names));
    names
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use jvpn_ctl::{
        client::HealthConfig,
        gateway::config::{ClusterConfig, ExitConfig, LimitsConfig, PoolConfig, StoreConfig},
        session::Policy,
    };

    use super::*;

    /// A directory removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "jvpn-config-check-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../scripts/examples/{name}.toml"))
    }

    fn err(path: &Path, role: Option<Role>) -> String {
        format!("{:#}", check(path, role).unwrap_err())
    }

    const GATEWAY: &str = "interfaces = [\"eth0\"]\nidentity = \"/nonexistent/gw.key\"\n\
                           peers = \"/nonexistent/peers\"\n\
                           [exit]\ndata = \"10.0.0.2:51821\"\nlink = \"10.0.0.2:51822\"\n\
                           link_key = \"/nonexistent/link.key\"\n[pool]\ncidr = \"10.99.0.0/24\"\n";
    const KEY: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";

    #[test]
    fn the_parsers_name_their_keys() {
        let g = Role::Gateway.keys();
        for k in [
            "interfaces",
            "identity",
            "exit",
            "pool",
            "policy",
            "limits",
            "cluster",
        ] {
            assert!(g.contains(&k), "{k}: {g:?}");
        }
        let e = Role::Exit.keys();
        for k in [
            "listen",
            "link_listen",
            "link_key_file",
            "tun_addr",
            "mtu",
            "nat",
        ] {
            assert!(e.contains(&k), "{k}: {e:?}");
        }
        let c = Role::Client.keys();
        for k in [
            "identity",
            "gateway_public_key",
            "transport",
            "health",
            "routes",
        ] {
            assert!(c.contains(&k), "{k}: {c:?}");
        }
        assert!(!c.contains(&"transports"), "the name in the file: {c:?}");
    }

    #[test]
    fn the_examples_are_valid_and_tell_their_role() {
        for role in Role::ALL {
            let path = example(role.name());
            let told = check(&path, None).unwrap();
            assert_eq!(told.role, role, "{}", path.display());
            assert!(told.told_by.as_ref().is_some_and(|k| !k.is_empty()));
            let summary = told.summary(&path);
            let first = &told.told_by.as_ref().unwrap()[0];
            assert!(
                summary.starts_with(&format!(
                    "{}: a valid {role} configuration (role assumed from its keys: {first}",
                    path.display()
                )),
                "{summary}"
            );
            let given = check(&path, Some(role)).unwrap();
            assert!(given.told_by.is_none());
            assert_eq!(
                given.summary(&path),
                format!("{}: a valid {role} configuration", path.display())
            );
            // Their key files are under /etc/jvpn, absent here: warnings, not errors
            // (and so is a missing `nft`, for the exit's [nat]).
            assert!(
                given
                    .warnings
                    .iter()
                    .all(|w| w.contains("/etc/jvpn/") || w.starts_with("nat: ")),
                "{:?}",
                given.warnings
            );
            // As another role, each is refused by that role's parser.
            for other in Role::ALL.into_iter().filter(|r| *r != role) {
                let e = err(&path, Some(other));
                assert!(
                    e.contains(&format!("not a valid {other} configuration: ")),
                    "{e}"
                );
            }
        }
    }

    /// `# key = value` in an example is the key's default: uncommenting every such
    /// line leaves the configuration as it was.
    #[test]
    fn the_examples_show_the_defaults() {
        fn uncommented(text: &str) -> (String, usize) {
            let mut n = 0;
            let out = text
                .lines()
                .map(|l| match l.strip_prefix("# ") {
                    Some(kv)
                        if kv.split_once(" = ").is_some_and(|(k, _)| {
                            !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        }) =>
                    {
                        n += 1;
                        kv.to_string()
                    }
                    _ => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            (out, n)
        }
        let read = |role: &str| std::fs::read_to_string(example(role)).unwrap();

        let text = read("gateway");
        let (all, n) = uncommented(&text);
        assert!(n >= 35, "{n} default lines");
        assert_eq!(
            GatewayConfig::parse(&all).unwrap(),
            GatewayConfig::parse(&text).unwrap()
        );

        let text = read("client");
        let (all, n) = uncommented(&text);
        assert!(n >= 15, "{n} default lines");
        assert_eq!(
            ClientConfig::parse(&all).unwrap(),
            ClientConfig::parse(&text).unwrap()
        );

        let dir = TempDir::new();
        let key = dir.write("link.key", &"ab".repeat(32));
        let text = read("exit").replace("/etc/jvpn/link.key", key.to_str().unwrap());
        let (all, n) = uncommented(&text);
        assert_eq!(n, 3);
        let resolve = |t: &str| exit::ConfigFile::parse(t).unwrap().resolve().unwrap();
        assert!(resolve(&all) == resolve(&text));
    }

    /// Every key the parsers read is in the example of its role (set, or commented).
    #[test]
    fn the_examples_mention_every_key() {
        let retired = ["max_loss_pct", "max_rtt_ms", "max_jitter_ms"];
        for (role, tables) in [
            (
                "gateway",
                vec![
                    ("", field_names::<GatewayConfig>()),
                    ("exit", field_names::<ExitConfig>()),
                    ("pool", field_names::<PoolConfig>()),
                    ("policy", field_names::<Policy>()),
                    ("limits", field_names::<LimitsConfig>()),
                    ("store", field_names::<StoreConfig>()),
                    ("cluster", field_names::<ClusterConfig>()),
                ],
            ),
            (
                "exit",
                vec![
                    ("", field_names::<exit::ConfigFile>()),
                    ("nat", field_names::<exit::nat::NatConfig>()),
                ],
            ),
            (
                "client",
                vec![
                    ("", field_names::<ClientConfig>()),
                    ("health", field_names::<HealthConfig>()),
                    (
                        "transport",
                        field_names::<jvpn_ctl::client::TransportConfig>(),
                    ),
                ],
            ),
        ] {
            let text = std::fs::read_to_string(example(role)).unwrap();
            for (table, keys) in tables {
                assert!(!keys.is_empty(), "{role} {table}");
                for key in keys
                    .iter()
                    .filter(|k| table != "policy" || !retired.contains(k))
                {
                    let set = text.lines().any(|l| {
                        let l = l.trim_start_matches('#').trim_start();
                        l.starts_with(&format!("{key} = "))
                            || l.starts_with(&format!("[{key}]"))
                            || l.starts_with(&format!("[[{key}]]"))
                    });
                    assert!(set, "{role}.toml does not mention {table}.{key}");
                }
            }
        }
    }

    #[test]
    fn programs_are_found_in_sbin_too() {
        assert!(find_program("sh").is_some());
        assert!(find_program("jvpn-no-such-program").is_none());
    }

    #[test]
    fn a_file_that_tells_no_role_or_several_asks_for_one() {
        let dir = TempDir::new();
        let p = dir.write("shared.toml", "identity = \"/k\"\nmtu = 1400\n");
        let e = err(&p, None);
        assert!(e.contains("cannot tell which daemon"), "{e}");
        assert!(
            e.contains("--role gateway, --role exit or --role client"),
            "{e}"
        );
        let p = dir.write(
            "mixed.toml",
            "interfaces = [\"eth0\"]\ntun_addr = \"10.99.0.1/24\"\n[[transport]]\nname = \"x\"\n",
        );
        let e = err(&p, None);
        assert!(
            e.contains("gateway: interfaces; exit: tun_addr; client: transport"),
            "{e}"
        );
        assert!(e.contains("pass --role"), "{e}");
        let p = dir.write("broken.toml", "interfaces = [\n");
        let e = err(&p, None);
        assert!(e.starts_with(&format!("{}: ", p.display())), "{e}");
        let e = err(&dir.0.join("absent.toml"), None);
        assert!(
            e.starts_with("reading ") && e.contains("absent.toml"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let dir = TempDir::new();
        let p = dir.write("g.toml", &GATEWAY.replace("/24", "/31"));
        let e = err(&p, None);
        assert_eq!(
            e,
            format!(
                "{}: not a valid gateway configuration (role assumed from its keys; --role \
                 to choose): pool.cidr: needs at least a /30",
                p.display()
            )
        );
        let p = dir.write("g.toml", &format!("colour = 1\n{GATEWAY}"));
        let e = err(&p, Some(Role::Gateway));
        assert!(
            e.starts_with(&format!(
                "{}: not a valid gateway configuration: TOML parse error",
                p.display()
            )) && e.contains("colour"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let p = dir.write(
            "e.toml",
            "link_listen = \"10.0.0.2:51822\"\nlink_key_file = \"/k\"\ntun_addr = \"10.99.0.1/24\"\n",
        );
        let e = err(&p, None);
        assert!(
            e.ends_with("listen: missing (set it in the config file or with --listen)"),
            "{e}"
        );
        let p = dir.write(
            "c.toml",
            &format!("identity = \"/k\"\ngateway_public_key = \"{KEY}\"\ntransport = []\n"),
        );
        let e = err(&p, None);
        assert!(
            e.ends_with("transport: at least one [[transport]] is needed"),
            "{e}"
        );
    }

    #[test]
    fn referenced_files_missing_are_warnings_and_bad_ones_errors() {
        let dir = TempDir::new();
        let d = dir.0.display();
        let state = dir.0.join("state");
        let text = GATEWAY.replace("/nonexistent", &d.to_string());
        let text = format!(
            "state_dir = \"{}\"\nevent_log = \"{d}/log/events.jsonl\"\n{text}",
            state.display()
        );
        let p = dir.write("g.toml", &text);
        let r = check(&p, Some(Role::Gateway)).unwrap();
        assert_eq!(r.warnings.len(), 4, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with(&format!("identity: {d}/gw.key does not exist")));
        assert!(r.warnings[1].starts_with(&format!("peers: {d}/peers does not exist")));
        assert!(r.warnings[2].starts_with(&format!("exit.link_key: {d}/link.key does not exist")));
        assert!(
            r.warnings[3].starts_with(&format!("event_log: the directory {d}/log does not exist"))
        );
        assert!(!state.exists(), "the check creates nothing");

        // Present and good: no warnings; an empty peers file is one.
        proto::identity::generate(&dir.0.join("gw.key"), false).unwrap();
        dir.write("link.key", &"ab".repeat(32));
        dir.write("peers", "");
        std::fs::create_dir(dir.0.join("log")).unwrap();
        let r = check(&p, Some(Role::Gateway)).unwrap();
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].contains("lists no client keys"),
            "{:?}",
            r.warnings
        );
        dir.write("peers", &format!("{KEY} alice\n"));
        assert!(check(&p, Some(Role::Gateway)).unwrap().warnings.is_empty());

        // Present and bad: the daemon's loader's error.
        dir.write("link.key", "abc");
        let e = err(&p, Some(Role::Gateway));
        assert!(
            e.starts_with(&format!(
                "{}: exit.link_key: {d}/link.key: link key must be 64 hex",
                p.display()
            )) && e.ends_with("(the gateway would not start)"),
            "{e}"
        );
        dir.write("gw.key", "not a key");
        let e = err(&p, Some(Role::Gateway));
        assert!(
            e.contains(": identity: ") && e.contains("jvpn-ctl keygen"),
            "{e}"
        );

        // The exit reads its link key as it does at start.
        let exit = |key: &str| {
            format!(
                "listen = \"10.0.0.2:51821\"\nlink_listen = \"10.0.0.2:51822\"\n\
                 link_key_file = \"{key}\"\ntun_addr = \"10.99.0.1/24\"\n"
            )
        };
        let p = dir.write("e.toml", &exit(&format!("{d}/absent.key")));
        let r = check(&p, None).unwrap();
        assert_eq!(r.role, Role::Exit);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].starts_with(&format!("link_key_file: {d}/absent.key does not exist"))
        );
        let p = dir.write("e.toml", &exit(&format!("{d}/link.key")));
        let e = err(&p, None);
        assert!(e.contains("link_key_file: ") && e.contains("64 hex"), "{e}");
        dir.write("link.key", &"ab".repeat(32));
        assert!(check(&p, None).unwrap().warnings.is_empty());
        let p = dir.write("e.toml", &exit("link.key"));
        let r = check(&p, None).unwrap();
        assert!(
            r.warnings[0].contains("is a relative path"),
            "{:?}",
            r.warnings
        );
    }
}
