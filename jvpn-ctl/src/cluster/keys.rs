//! The cluster's key names, and reading them back.

/// Keys under one root.
#[derive(Clone, Debug)]
pub struct Keys {
    root: String,
}

/// What a key under the root is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Node(u16),
    Owner(u64),
    Record(u64),
}

impl Keys {
    pub fn new(root: &str) -> Self {
        let mut root = root.to_owned();
        if !root.ends_with('/') {
            root.push('/');
        }
        Self { root }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// Where the session store's records live: the prefix an
    /// [`crate::store::EtcdStore`] of the same cluster uses.
    pub fn sessions(&self) -> String {
        format!("{}sessions/", self.root)
    }

    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }

    pub fn node(&self, node: u16) -> String {
        format!("{}nodes/{node}", self.root)
    }

    pub fn owner(&self, id: u64) -> String {
        format!("{}sessions/{id:016x}/owner", self.root)
    }

    pub fn record(&self, id: u64) -> String {
        format!("{}sessions/{id:016x}/record", self.root)
    }

    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let rest = std::str::from_utf8(key.strip_prefix(self.root.as_bytes())?).ok()?;
        if let Some(n) = rest.strip_prefix("nodes/") {
            let canonical = !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n == "0" || !n.starts_with('0'));
            return canonical.then(|| n.parse().ok()).flatten().map(Key::Node);
        }
        let rest = rest.strip_prefix("sessions/")?;
        let (hex, kind) = rest.split_once('/')?;
        let lower_hex = hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !lower_hex {
            return None;
        }
        let id = u64::from_str_radix(hex, 16).ok()?;
        match kind {
            "owner" => Some(Key::Owner(id)),
            "record" => Some(Key::Record(id)),
            _ => None,
        }
    }
}

/// The owner key's value: the node number in decimal.
pub fn owner_value(node: u16) -> String {
    node.to_string()
}

pub fn parse_owner_value(v: &[u8]) -> Option<u16> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_not_keys() {
        let k = Keys::new("/jvpn/v1");
        assert_eq!(k.record(0xab), "/jvpn/v1/sessions/00000000000000ab/record");
        assert_eq!(k.sessions(), "/jvpn/v1/sessions/");
        for key in [
            Key::Node(0),
            Key::Node(7),
            Key::Owner(1),
            Key::Record(u64::MAX),
        ] {
            let name = match key {
                Key::Node(n) => k.node(n),
                Key::Owner(id) => k.owner(id),
                Key::Record(id) => k.record(id),
            };
            assert_eq!(k.parse(name.as_bytes()), Some(key), "{name}");
        }
        for stranger in [
            "/jvpn/v1/nodes/",
            "/jvpn/v1/nodes/07",
            "/jvpn/v1/nodes/70000",
            "/jvpn/v1/sessions/00000000000000AB/record",
            "/jvpn/v1/sessions/ab/record",
            "/jvpn/v1/sessions/00000000000000ab/other",
            "/jvpn/v2/sessions/00000000000000ab/record",
        ] {
            assert_eq!(k.parse(stranger.as_bytes()), None, "{stranger}");
        }
        assert_eq!(parse_owner_value(owner_value(513).as_bytes()), Some(513));
        assert_eq!(parse_owner_value(b"x"), None);
    }
}
