use crate::datapath::DatapathError;

/// Everything that can go wrong in the generator and the sink. Each variant names the
/// thing at fault, so the CLI can print it as one line.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("interface `{0}` does not exist")]
    NoSuchInterface(String),

    #[error("invalid CPU list `{list}`: {detail}")]
    BadCpuList { list: String, detail: String },

    #[error("CPU {cpu} is not available to this process (allowed: {allowed})")]
    CpuUnavailable { cpu: usize, allowed: String },

    #[error(
        "payload of {size} bytes is too small for a jvpn DATA packet (at least {min}: header and tag)"
    )]
    PayloadTooSmall { size: usize, min: usize },

    #[error(
        "payload of {size} bytes makes a {ip_len}-byte IP packet, over the MTU of `{iface}` ({mtu})"
    )]
    PayloadTooLarge {
        size: usize,
        ip_len: usize,
        iface: String,
        mtu: u32,
    },

    #[error(
        "frames of {len} bytes are too long for the kernel's live-frames mode (at most {max}: one page less the kernel's headroom)"
    )]
    FrameTooLong { len: usize, max: usize },

    #[error("source {src} and destination {dst} are not of the same address family")]
    FamilyMismatch {
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
    },

    #[error(
        "no destination MAC: pass --dst-mac, or add a neighbour entry for {dst} on `{iface}` (ip neigh replace {dst} lladdr MAC dev {iface})"
    )]
    NoDstMac {
        dst: std::net::IpAddr,
        iface: String,
    },

    #[error("invalid sessions: {0}")]
    BadSessions(String),

    #[error("batch size {0} is outside 1..=256 (the kernel's limit)")]
    BadBatch(u32),

    #[error("map `{0}` is missing from the XDP object")]
    MissingMap(&'static str),
    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Datapath(#[from] DatapathError),

    #[error("map `{name}`: {cause}")]
    Map {
        name: &'static str,
        cause: aya::maps::MapError,
    },

    #[error("attaching `{program}` to `{iface}` in native mode failed: {cause}")]
    Attach {
        program: &'static str,
        iface: String,
        cause: aya::programs::ProgramError,
    },

    #[error("BPF_PROG_TEST_RUN (live frames) on `{iface}` failed: {cause}")]
    TestRun {
        iface: String,
        cause: std::io::Error,
    },

    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
}
