//! Long-term Ed25519 identities and the gateway's peers file (its allow-list).
//!
//! Identities are PKCS#8 v2 documents because that is what `ring` generates and
//! parses with the public key included (so a file can be checked for consistency).
//! The peers file is edited both by hand and by `jvpn-ctl peers`, so edits through
//! [`Peers`] keep every other line (comments, blank lines) exactly as it was.

use std::{
    collections::HashSet,
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair as _},
};

use super::{ProtoError, files};

/// Creates a new identity at `path` (mode 0600) and returns it. An existing file is
/// only replaced if `force`.
pub fn generate(path: &Path, force: bool) -> Result<Ed25519KeyPair, ProtoError> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| ProtoError::Rng)?;
    let mut opts = OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ProtoError::key_file(path, "already exists; refusing to overwrite an identity")
        } else {
            ProtoError::io(path, e)
        }
    })?;
    // A replaced file keeps its old mode unless told otherwise.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| f.write_all(doc.as_ref()))
        .and_then(|()| f.sync_all())
        .map_err(|e| ProtoError::io(path, e))?;
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| ProtoError::Rng)
}

/// Reads an identity; warns if the file is readable by group or others.
pub fn load(path: &Path) -> Result<Ed25519KeyPair, ProtoError> {
    files::read_secret(path, |bytes| {
        Ed25519KeyPair::from_pkcs8(bytes).map_err(|e| {
            ProtoError::key_file(
                path,
                format!(
                    "not an Ed25519 PKCS#8 v2 identity ({e}); create one with `jvpn-ctl keygen`"
                ),
            )
        })
    })
}

pub fn public_key(identity: &Ed25519KeyPair) -> [u8; 32] {
    let mut k = [0u8; 32];
    k.copy_from_slice(identity.public_key().as_ref());
    k
}

/// The public key as 64 lowercase hex characters (the peers-file and CLI format).
pub fn public_hex(identity: &Ed25519KeyPair) -> String {
    hex::encode(identity.public_key().as_ref())
}

/// Parses 64 hex characters (surrounding whitespace ignored).
pub fn parse_public(s: &str) -> Result<[u8; 32], ProtoError> {
    let s = s.trim();
    if s.len() != 64 {
        return Err(ProtoError::BadKey(
            "a public key is 64 hex characters (see `jvpn-ctl pubkey`)",
        ));
    }
    let mut k = [0u8; 32];
    hex::decode_to_slice(s, &mut k).map_err(|_| ProtoError::BadKey("not hexadecimal"))?;
    Ok(k)
}

/// One allowed client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub key: [u8; 32],
    pub name: Option<String>,
}

impl Peer {
    pub fn key_hex(&self) -> String {
        hex::encode(self.key)
    }
}

#[derive(Clone, Debug)]
struct Line {
    /// The text as read (or as generated for added peers), written back unchanged.
    raw: String,
    peer: Option<Peer>,
}

/// The peers file: one key per line (64 hex), optional one-word name after whitespace,
/// `#` comments, blank lines.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    lines: Vec<Line>,
    keys: HashSet<[u8; 32]>,
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err("a peer name is one word without '#'");
    }
    if parse_public(name).is_ok() {
        return Err("a peer name must not look like a key");
    }
    Ok(())
}

impl Peers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `path`; a missing file is an empty list. Errors name the file and line.
    pub fn load(path: &Path) -> Result<Self, ProtoError> {
        match fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::new()),
            Err(e) => Err(ProtoError::io(path, e)),
        }
    }

    /// Parses file contents; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ProtoError> {
        let mut peers = Self::new();
        for (i, raw) in text.lines().enumerate() {
            let err = |problem: String| ProtoError::PeersFile {
                path: path.to_path_buf(),
                line: i + 1,
                problem,
            };
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                peers.lines.push(Line {
                    raw: raw.to_string(),
                    peer: None,
                });
                continue;
            }
            let (key_text, name) = match content.split_once(char::is_whitespace) {
                Some((k, n)) => (k, Some(n.trim())),
                None => (content, None),
            };
            let key = parse_public(key_text).map_err(|e| err(e.to_string()))?;
            if let Some(n) = name {
                check_name(n).map_err(|p| err(format!("{p}: {n:?}")))?;
                if peers.find_name(n).is_some() {
                    return Err(err(format!("duplicate name {n:?}")));
                }
            }
            if !peers.keys.insert(key) {
                return Err(err(format!("duplicate key {key_text}")));
            }
            peers.lines.push(Line {
                raw: raw.to_string(),
                peer: Some(Peer {
                    key,
                    name: name.map(str::to_string),
                }),
            });
        }
        Ok(peers)
    }

    /// Writes the list atomically (temporary file + rename, mode 0600).
    pub fn save(&self, path: &Path) -> Result<(), ProtoError> {
        files::write_atomic(path, self.to_text().as_bytes())
    }

    fn to_text(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            s.push_str(&l.raw);
            s.push('\n');
        }
        s
    }

    fn find_name(&self, name: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| l.peer.as_ref().and_then(|p| p.name.as_deref()) == Some(name))
    }

    /// Appends a peer; refuses a key or name that is already listed.
    pub fn add(&mut self, key: [u8; 32], name: Option<&str>) -> Result<(), ProtoError> {
        let hex = hex::encode(key);
        if self.keys.contains(&key) {
            return Err(ProtoError::PeerExists(hex));
        }
        let raw = match name {
            Some(n) => {
                check_name(n).map_err(ProtoError::BadName)?;
                if self.find_name(n).is_some() {
                    return Err(ProtoError::PeerExists(format!("named {n:?}")));
                }
                format!("{hex} {n}")
            }
            None => hex,
        };
        self.keys.insert(key);
        self.lines.push(Line {
            raw,
            peer: Some(Peer {
                key,
                name: name.map(str::to_string),
            }),
        });
        Ok(())
    }

    /// Removes the peer with this key (64 hex) or name, and returns it.
    pub fn remove(&mut self, key_or_name: &str) -> Result<Peer, ProtoError> {
        let pos = match parse_public(key_or_name) {
            Ok(k) => self
                .lines
                .iter()
                .position(|l| l.peer.as_ref().is_some_and(|p| p.key == k)),
            Err(_) => self.find_name(key_or_name.trim()),
        };
        let Some(pos) = pos else {
            return Err(ProtoError::PeerNotFound(key_or_name.to_string()));
        };
        let peer = self
            .lines
            .remove(pos)
            .peer
            .expect("position matched a peer");
        self.keys.remove(&peer.key);
        Ok(peer)
    }

    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.keys.contains(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.lines.iter().filter_map(|l| l.peer.as_ref())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::files::testdir::TempDir;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn generate_load_and_modes() {
        let dir = TempDir::new("identity");
        let p = dir.path().join("id.key");
        let kp = generate(&p, false).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let hex = public_hex(&kp);
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, hex.to_lowercase());
        assert_eq!(public_hex(&load(&p).unwrap()), hex);
        assert_eq!(parse_public(&hex).unwrap(), public_key(&kp));

        let e = generate(&p, false).unwrap_err().to_string();
        assert!(e.contains("id.key") && e.contains("already exists"), "{e}");
        assert_eq!(public_hex(&load(&p).unwrap()), hex, "not overwritten");

        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&p).is_ok(), "exposed file only warns");
        let kp2 = generate(&p, true).unwrap();
        assert_ne!(public_hex(&kp2), hex);
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(public_hex(&load(&p).unwrap()), public_hex(&kp2));

        fs::write(&p, b"garbage").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("id.key") && e.contains("PKCS#8"), "{e}");
        let e = load(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let e = generate(&dir.path().join("no/such/dir"), false).unwrap_err();
        assert!(e.to_string().contains("no/such/dir"), "{e}");
    }

    #[test]
    fn parse_public_rejects() {
        assert!(parse_public(&"ab".repeat(32)).is_ok());
        assert!(parse_public(&format!(" {}\n", "AB".repeat(32))).is_ok());
        for bad in [
            "",
            "ab",
            &"ab".repeat(31),
            &"ab".repeat(33),
            &"zz".repeat(32),
        ] {
            assert!(parse_public(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peers_file() {
        let dir = TempDir::new("peers");
        let p = dir.path().join("peers");
        let mut peers = Peers::load(&p).unwrap();
        assert!(peers.is_empty());
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let text = format!(
            "# allowed clients\n\n{}   alice # laptop\n{}\n",
            hex::encode(a),
            hex::encode(b)
        );
        fs::write(&p, &text).unwrap();
        peers = Peers::load(&p).unwrap();
        assert_eq!(peers.len(), 2);
        assert!(peers.contains(&a) && peers.contains(&b) && !peers.contains(&c));
        let names: Vec<_> = peers.iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, [Some("alice".to_string()), None]);

        assert!(matches!(peers.add(a, None), Err(ProtoError::PeerExists(_))));
        assert!(matches!(
            peers.add(c, Some("alice")),
            Err(ProtoError::PeerExists(_))
        ));
        assert!(peers.add(c, Some("two words")).is_err());
        peers.add(c, Some("carol")).unwrap();
        peers.save(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let saved = fs::read_to_string(&p).unwrap();
        assert!(saved.starts_with(&text), "hand-written lines kept: {saved}");

        let mut peers = Peers::load(&p).unwrap();
        assert_eq!(peers.remove("alice").unwrap().key, a);
        assert_eq!(peers.remove(&hex::encode(b)).unwrap().name, None);
        assert!(matches!(
            peers.remove("alice"),
            Err(ProtoError::PeerNotFound(_))
        ));
        peers.save(&p).unwrap();
        let peers = Peers::load(&p).unwrap();
        assert_eq!(
            peers.iter().cloned().collect::<Vec<_>>(),
            [Peer {
                key: c,
                name: Some("carol".into())
            }]
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left");
    }

    #[test]
    fn peers_errors_name_file_and_line() {
        let p = Path::new("/etc/jvpn/peers");
        let k = "ab".repeat(32);
        for (text, line, needle) in [
            (format!("# x\n{k}\nnot-a-key\n"), 3, "64 hex"),
            (format!("{k}\n{k} again\n"), 2, "duplicate key"),
            (
                format!("{k} a\n{} a\n", "cd".repeat(32)),
                2,
                "duplicate name",
            ),
            (format!("{k} two words\n"), 1, "one word"),
        ] {
            let e = Peers::parse(&text, p).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("/etc/jvpn/peers:{line}: ")) && e.contains(needle),
                "{e}"
            );
        }
    }
}
