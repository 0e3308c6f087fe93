//! One error type for the whole protocol layer.
//!
//! The controller counts and logs refusals by kind (malformed vs. unauthenticated vs.
//! replayed), so each failure class is its own variant; file errors carry the path
//! because the operator has to know which file to fix.

use std::path::PathBuf;

use jvpn_common::wire::HeaderError;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("truncated message: {got} bytes, at least {need} needed")]
    Truncated { need: usize, got: usize },
    #[error("bad message length: {got} bytes, expected {expected}")]
    BadLength { expected: usize, got: usize },
    #[error("bad header: {}", describe_header(*.0))]
    Header(HeaderError),
    #[error("unexpected message type {got:#04x} (expected {expected})")]
    WrongType { expected: &'static str, got: u8 },
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("bad reattach label: {0}")]
    BadLabel(&'static str),
    #[error("unknown address family {0} (expected 4 or 6)")]
    UnknownFamily(u8),
    #[error("signature verification failed")]
    BadSignature,
    #[error("MAC verification failed")]
    BadMac,
    #[error("authenticated decryption failed (wrong key or corrupted packet)")]
    Decrypt,
    #[error("replayed or stale counter {0}")]
    Replay(u64),
    #[error("invalid public key: {0}")]
    BadKey(&'static str),
    #[error("X25519 key agreement failed")]
    KeyAgreement,
    #[error("system random number generator failed")]
    Rng,
    #[error("handshake already completed")]
    HandshakeDone,
    #[error("{}: {problem}", path.display())]
    KeyFile { path: PathBuf, problem: String },
    #[error("{}:{line}: {problem}", path.display())]
    PeersFile {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("invalid peer name: {0}")]
    BadName(&'static str),
    #[error("peer {0} is already listed")]
    PeerExists(String),
    #[error("no peer with key or name {0}")]
    PeerNotFound(String),
    /// `error` rather than `source`: the message already includes it, and a source
    /// would make `{:#}` print it twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl From<HeaderError> for ProtoError {
    fn from(e: HeaderError) -> Self {
        ProtoError::Header(e)
    }
}

fn describe_header(e: HeaderError) -> &'static str {
    match e {
        HeaderError::Truncated => "shorter than the header (or a DATA packet without a tag)",
        HeaderError::BadVersion => "unsupported protocol version",
        HeaderError::UnknownType => "unknown message type",
        HeaderError::BadSessionId => "session id not allowed for this message type",
    }
}

impl ProtoError {
    pub(crate) fn io(path: &std::path::Path, error: std::io::Error) -> Self {
        ProtoError::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn key_file(path: &std::path::Path, problem: impl Into<String>) -> Self {
        ProtoError::KeyFile {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}
