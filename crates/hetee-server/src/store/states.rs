//! Models' sealed states (lock, incidents, budgets, allow list): the newest
//! version of each, kept so that a restarted enclave gets it back.

use redb::ReadableTable;

use super::{Store, StoreError, STATES};

impl Store {
    /// Stores a model's sealed state unless the store already holds a newer
    /// version of it (concurrent queries may finish in any order). Returns
    /// whether it was stored.
    pub fn put_state(
        &self,
        model_id: &str,
        version: u64,
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        self.write(
            || format!("storing the state of model {model_id}"),
            |txn| {
                let mut table = txn.open_table(STATES)?;
                let held = table
                    .get(model_id)?
                    .and_then(|v| v.value().get(..8).map(|b| b.to_vec()))
                    .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                    .map(u64::from_le_bytes);
                if held.is_some_and(|h| h >= version) {
                    return Ok(false);
                }
                let mut value = version.to_le_bytes().to_vec();
                value.extend_from_slice(sealed);
                table.insert(model_id, value.as_slice())?;
                Ok(true)
            },
        )
    }

    /// Every stored model state: model id, version and sealed blob.
    pub fn states(&self) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        Ok(self
            .list(STATES, "model state")?
            .into_iter()
            .filter_map(|(k, v)| {
                let version = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
                Some((k, version, v[8..].to_vec()))
            })
            .collect())
    }
}
