use std::path::PathBuf;

/// Everything that can go wrong in the data-plane module. Each variant names the
/// thing (interface, map, path) and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "missing privilege: loading XDP programs needs root, or {missing} (effective capabilities lack it)"
    )]
    NoPrivilege { missing: &'static str },

    #[error("interface `{0}` does not exist")]
    NoSuchInterface(String),

    #[error("attaching XDP to `{iface}` failed: {cause}")]
    Attach {
        iface: String,
        cause: aya::programs::ProgramError,
    },

    #[error("interface `{0}` has no jvpn XDP program attached by this pin directory")]
    NotAttached(String),

    #[error("loading the XDP object failed: {0}")]
    Load(aya::EbpfError),

    #[error("loading program `{name}` failed: {cause}")]
    Program {
        name: &'static str,
        cause: aya::programs::ProgramError,
    },

    #[error("map `{0}` is missing from the XDP object")]
    MissingMap(&'static str),

    #[error("map `{name}`: {cause}")]
    Map {
        name: &'static str,
        cause: aya::maps::MapError,
    },

    #[error(
        "pinned map {path} does not match this build ({detail}); it belongs to another \
         version of jvpn: stop it and remove the pin directory (`jvpn-ctl datapath down --all`)"
    )]
    IncompatiblePin { path: PathBuf, detail: String },

    #[error("bpffs at {path}: {detail}")]
    BpfFs { path: PathBuf, detail: String },

    #[error("pinning {path}: {detail}")]
    Pin { path: PathBuf, detail: String },

    #[error(
        "session {id:#018x} holds statistics slot {slot}, {problem}: the pinned maps are \
         inconsistent; stop jvpn and remove the pin directory (`jvpn-ctl datapath down --all`)"
    )]
    BadStatsSlot {
        id: u64,
        slot: u32,
        problem: &'static str,
    },

    #[error("no room for another session: all {0} are in use (raise max_sessions)")]
    Full(u32),

    #[error("session {0:#018x} already exists")]
    SessionExists(u64),

    #[error("session {0:#018x} does not exist")]
    NoSuchSession(u64),

    #[error("session {0:#018x}: entry rejected ({1})")]
    InvalidEntry(u64, &'static str),

    #[error(
        "session {id:#018x}: read back generation {found} after writing {wrote}; another writer touched the map"
    )]
    GenerationMismatch { id: u64, wrote: u32, found: u32 },

    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
}
