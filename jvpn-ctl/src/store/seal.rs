//! Records hold session keys, so they are sealed at rest: ChaCha20-Poly1305 under a
//! store key kept in its own file beside the store.
//!
//! Sealed record: `b"JVS1" ‖ nonce[12] ‖ ciphertext ‖ tag[16]`, the AAD being
//! `b"JVS1" ‖ id (u64 BE)`, so a record copied under another id does not open.

use std::{
    fs::{self, File},
    io::Read,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use ring::{
    aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};

use super::StoreError;

const MAGIC: &[u8; 4] = b"JVS1";
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + NONCE_LEN;
/// 64 hex characters and a newline.
const KEY_FILE_LEN: usize = 65;

/// The key that seals the store's records. No `Debug` that would print it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// A key given as bytes (the simulation's; a gateway loads its key file).
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

impl StoreKey {
    /// Loads the key file, or creates it with a fresh random key if there is none;
    /// `true` when it was created. The file appears complete or not at all (written
    /// aside, then linked into place), so a crash while creating it never leaves a
    /// half-written key for the next start to refuse.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), StoreError> {
        match fs::symlink_metadata(path) {
            Ok(_) => return Ok((Self::load(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("reading key file {}", path.display()), e)),
        }
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .expect("the system RNG works");
        match write_new(path, &key) {
            Ok(()) => Ok((Self(key), true)),
            // Another process created it first: use theirs.
            Err(StoreError::Io { cause, .. })
                if cause.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok((Self::load(path)?, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Loads an existing key file; refuses one that others may read, since anyone
    /// who reads it can open every session record.
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        let what = || format!("reading key file {}", path.display());
        let mut f = File::open(path).map_err(|e| io_err(what(), e))?;
        let meta = f.metadata().map_err(|e| io_err(what(), e))?;
        if !meta.is_file() {
            return Err(StoreError::BadKey {
                path: path.to_owned(),
                detail: "not a regular file".into(),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        // One byte more than a valid file, to tell a long file from a valid one
        // without reading an arbitrarily large one.
        let mut buf = Vec::with_capacity(KEY_FILE_LEN + 1);
        Read::take(&mut f, KEY_FILE_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| io_err(what(), e))?;
        parse_key_file(&buf)
            .map(Self)
            .map_err(|detail| StoreError::BadKey {
                path: path.to_owned(),
                detail,
            })
    }
}

fn parse_key_file(buf: &[u8]) -> Result<[u8; 32], String> {
    if buf.len() != KEY_FILE_LEN {
        return Err(format!("{} bytes, expected {KEY_FILE_LEN}", buf.len()));
    }
    if buf[64] != b'\n' {
        return Err("no newline after the 64th character".into());
    }
    let hex = &buf[..64];
    if let Some(p) = hex
        .iter()
        .position(|c| !matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(format!("character {} is not lowercase hex", p + 1));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex, &mut key).map_err(|e| e.to_string())?;
    Ok(key)
}

/// Writes the key to a temporary file (0600 from the start: it is never readable by
/// others, not even briefly), fsyncs it, then hard-links it to `path`, which fails
/// with `AlreadyExists` rather than replacing a key another process just created.
/// The directory is fsynced so the key survives a crash once this returns, before
/// any record is sealed with it.
fn write_new(path: &Path, key: &[u8; 32]) -> Result<(), StoreError> {
    let what = || format!("creating key file {}", path.display());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if path.file_name().is_none() {
        return Err(StoreError::BadKey {
            path: path.to_owned(),
            detail: "the path has no file name".into(),
        });
    }
    let tmp = crate::proto::files::tmp_path(path);
    let mut text = hex::encode(key).into_bytes();
    text.push(b'\n');
    let result = crate::proto::files::write_private(&tmp, &text)
        .and_then(|()| fs::hard_link(&tmp, path))
        .and_then(|()| File::open(&dir)?.sync_all());
    let _ = fs::remove_file(&tmp);
    result.map_err(|e| io_err(what(), e))
}

fn io_err(what: String, cause: std::io::Error) -> StoreError {
    StoreError::Io { what, cause }
}

/// Seals and opens records under one [`StoreKey`].
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(key: &StoreKey) -> Self {
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key.0).expect("a 32-byte key");
        Self {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        }
    }

    /// Seals `plain` as the record of session `id`. The nonce is random: 96 bits
    /// keep the chance of a repeat negligible for far more writes than a store key
    /// sees (the usual bound is 2^32 messages per key), and no counter has to
    /// survive a crash.
    pub fn seal(&self, id: u64, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system RNG works");
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(id)),
                &mut out[HEADER_LEN..],
            )
            .expect("a record far below ChaCha20-Poly1305's size limit");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens the record of session `id`; anything that does not authenticate as
    /// sealed by this key for this id is [`StoreError::Unsealed`].
    pub fn open(&self, id: u64, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let bad = || StoreError::Unsealed { id };
        if sealed.len() < HEADER_LEN + TAG_LEN || &sealed[..MAGIC.len()] != MAGIC {
            return Err(bad());
        }
        let nonce: [u8; NONCE_LEN] = sealed[MAGIC.len()..HEADER_LEN]
            .try_into()
            .expect("NONCE_LEN bytes");
        let mut buf = sealed[HEADER_LEN..].to_vec();
        let n = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(id)),
                &mut buf,
            )
            .map_err(|_| bad())?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

fn aad(id: u64) -> [u8; 12] {
    let mut a = [0u8; 12];
    a[..4].copy_from_slice(MAGIC);
    a[4..].copy_from_slice(&id.to_be_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::super::contract::TestDir;
    use super::*;

    fn unsealed(r: Result<Vec<u8>, StoreError>, id: u64) {
        match r {
            Err(StoreError::Unsealed { id: i }) => assert_eq!(i, id),
            other => panic!("expected Unsealed {{ id: {id} }}, got {other:?}"),
        }
    }

    #[test]
    fn seal_round_trips_and_rejects_what_it_did_not_seal() {
        let s = Sealer::new(&StoreKey([7; 32]));
        let plain = b"session 42: keys and binding".to_vec();
        let sealed = s.seal(42, &plain);
        assert_eq!(&sealed[..4], b"JVS1");
        assert_eq!(sealed.len(), 4 + 12 + plain.len() + 16);
        assert_eq!(s.open(42, &sealed).unwrap(), plain);
        // Random nonces: sealing twice gives two different records.
        assert_ne!(s.seal(42, &plain), sealed);
        assert_eq!(s.open(1, &s.seal(1, b"")).unwrap(), b"");

        // Another key.
        unsealed(Sealer::new(&StoreKey([8; 32])).open(42, &sealed), 42);
        // Moved to another id.
        unsealed(s.open(43, &sealed), 43);
        // Every flipped bit, in the header, the ciphertext and the tag.
        for i in 0..sealed.len() * 8 {
            let mut t = sealed.clone();
            t[i / 8] ^= 1 << (i % 8);
            unsealed(s.open(42, &t), 42);
        }
        // Truncated anywhere, down to nothing.
        for n in 0..sealed.len() {
            unsealed(s.open(42, &sealed[..n]), 42);
        }
        // Extended.
        let mut long = sealed.clone();
        long.push(0);
        unsealed(s.open(42, &long), 42);
    }

    #[test]
    fn key_file_is_created_0600_and_reloads_equal() {
        let dir = TestDir::new("key");
        let path = dir.path().join("store.key");
        let (k1, created) = StoreKey::load_or_create(&path).unwrap();
        assert!(created);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert!(
            text[..64]
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        );
        // No temporary left beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let (k2, created) = StoreKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1, k2);
        assert_eq!(StoreKey::load(&path).unwrap(), k1);
        // What one sealed the other opens.
        let sealed = Sealer::new(&k1).seal(5, b"x");
        assert_eq!(Sealer::new(&k2).open(5, &sealed).unwrap(), b"x");
        assert_ne!(format!("{k1:?}"), format!("{:?}", k1.0));
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = TestDir::new("key-mode");
        let path = dir.path().join("store.key");
        StoreKey::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = StoreKey::load(&path).unwrap_err();
        assert!(
            matches!(e, StoreError::KeyPermissions { mode: 0o644, .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
        // load_or_create must not replace it either.
        assert!(matches!(
            StoreKey::load_or_create(&path),
            Err(StoreError::KeyPermissions { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            StoreKey::load(&path),
            Err(StoreError::KeyPermissions { mode: 0o640, .. })
        ));
    }

    #[test]
    fn a_malformed_key_file_is_refused_naming_it() {
        let dir = TestDir::new("key-bad");
        let path = dir.path().join("store.key");
        let good = "0123456789abcdef".repeat(4);
        for bad in [
            String::new(),
            good.clone(),                         // no newline
            format!("{}\n", &good[..63]),         // short
            format!("{good}\n\n"),                // long
            format!("{}\n", good.to_uppercase()), // not lowercase
            format!("{}g\n", &good[..63]),        // not hex
            format!("{good} "),                   // no newline, a space
        ] {
            let _ = fs::remove_file(&path);
            fs::write(&path, &bad).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            match StoreKey::load_or_create(&path) {
                Err(e @ StoreError::BadKey { .. }) => {
                    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
                }
                other => panic!("{bad:?}: expected BadKey, got {other:?}"),
            }
        }
        fs::write(&path, format!("{good}\n")).unwrap();
        let k = StoreKey::load(&path).unwrap();
        assert_eq!(hex::encode(k.0), good);
    }
}
