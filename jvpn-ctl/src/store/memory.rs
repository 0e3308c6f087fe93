//! A [`SessionStore`] in a `HashMap`, for unit tests and the deterministic
//! simulation. Same semantics as the durable backends (revisions, conflicts, batch
//! atomicity), nothing survives the process.

use std::collections::HashMap;

use super::{Revision, SessionStore, StoreError, Write, check_batch};

#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    records: HashMap<u64, (Revision, Vec<u8>)>,
    /// The revision of the last batch; survives deletes so revisions only grow.
    revision: Revision,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl SessionStore for MemoryStore {
    fn describe(&self) -> String {
        "the in-memory store".into()
    }

    fn list(&self) -> Result<Vec<(u64, Revision, Vec<u8>)>, StoreError> {
        Ok(self
            .records
            .iter()
            .map(|(&id, (rev, v))| (id, *rev, v.clone()))
            .collect())
    }

    fn get(&self, id: u64) -> Result<Option<(Revision, Vec<u8>)>, StoreError> {
        Ok(self.records.get(&id).cloned())
    }

    fn apply(&mut self, batch: &[Write]) -> Result<Vec<Revision>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Everything is checked before anything is written: that is the atomicity.
        check_batch(batch, |id| Ok(self.records.get(&id).map_or(0, |r| r.0)))?;
        let rev = self.revision + 1;
        let mut out = Vec::with_capacity(batch.len());
        for w in batch {
            match w {
                Write::Put { id, value, .. } => {
                    self.records.insert(*id, (rev, value.clone()));
                    out.push(rev);
                }
                Write::Delete { id, .. } => {
                    self.records.remove(id);
                    out.push(0);
                }
            }
        }
        self.revision = rev;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_passes_the_contract() {
        super::super::contract::contract(&mut MemoryStore::new());
    }
}
