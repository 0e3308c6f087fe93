//! What etcd itself holds about a cluster's sessions, read directly rather than
//! through a node: the tests' and the lab's independent check of ownership (who owns
//! each session, at which epoch, and each record's revision).

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{Client, ConnectOptions};

use crate::{
    cluster::{Key, Keys, parse_owner_value},
    store::etcd::{ReadError, describe, read_prefix},
};

/// One session's owner key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerKey {
    pub node: u16,
    /// The key's create revision: the owner's fencing token.
    pub epoch: i64,
    pub lease: i64,
}

#[derive(Clone, Debug, Default)]
pub struct View {
    /// The revision the view was read at (one consistent read).
    pub revision: i64,
    pub owners: BTreeMap<u64, OwnerKey>,
    /// Each record's mod revision.
    pub records: BTreeMap<u64, i64>,
    /// Keys under the sessions prefix that are neither (there should be none).
    pub strays: Vec<String>,
}

/// Reads every session key under `root` (e.g. `/jvpn/v1/`) at one revision, from
/// inside the network namespace `netns` (where etcd is reachable), within `timeout`.
pub fn read(
    netns: &str,
    endpoints: &[String],
    root: &str,
    timeout: Duration,
) -> Result<View, String> {
    super::netns::run_in(netns, || read_here(endpoints, root, timeout))
}

fn read_here(endpoints: &[String], root: &str, timeout: Duration) -> Result<View, String> {
    let keys = Keys::new(root);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let read = async {
        let options = ConnectOptions::new()
            .with_require_leader(true)
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| format!("connecting to {endpoints:?}: {}", describe(&e)))?;
        let (revision, kvs) = read_prefix(&client.kv_client(), &keys.sessions(), 0, timeout)
            .await
            .map_err(|e| match e {
                ReadError::Etcd(e) => format!("reading {}: {}", keys.sessions(), describe(&e)),
                ReadError::PageTimeout => {
                    format!("reading {}: no page within {timeout:?}", keys.sessions())
                }
            })?;
        let mut view = View {
            revision,
            ..View::default()
        };
        for kv in kvs {
            match keys.parse(kv.key()) {
                Some(Key::Owner(id)) => {
                    let node = parse_owner_value(kv.value())
                        .ok_or_else(|| format!("owner of {id:016x}: {:?}", kv.value()))?;
                    view.owners.insert(
                        id,
                        OwnerKey {
                            node,
                            epoch: kv.create_revision(),
                            lease: kv.lease(),
                        },
                    );
                }
                Some(Key::Record(id)) => {
                    view.records.insert(id, kv.mod_revision());
                }
                _ => view
                    .strays
                    .push(String::from_utf8_lossy(kv.key()).into_owned()),
            }
        }
        Ok(view)
    };
    rt.block_on(async {
        tokio::time::timeout(timeout, read)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "etcd ({endpoints:?}) did not answer within {timeout:?}"
                ))
            })
    })
}
