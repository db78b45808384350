//! The enclave config. It is measured together with the binary, so it is
//! part of the enclave's identity: changing the budget changes the
//! measurement clients pin.

use crate::ProtoError;

/// Default memory budget (MiB).
pub const DEFAULT_MEMORY_BUDGET_MIB: u64 = 1024;

/// What the enclave is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnclaveConfig {
    /// Memory budget in MiB, enforced with the counting allocator.
    pub memory_budget_mib: u64,
}

impl Default for EnclaveConfig {
    fn default() -> Self {
        EnclaveConfig {
            memory_budget_mib: DEFAULT_MEMORY_BUDGET_MIB,
        }
    }
}

impl EnclaveConfig {
    /// The canonical bytes (what is measured).
    pub fn to_bytes(&self) -> Vec<u8> {
        format!(
            "hetee-enclave v2\ntransport=stdio\nmemory_budget_mib={}\n",
            self.memory_budget_mib
        )
        .into_bytes()
    }

    /// Parses [`EnclaveConfig::to_bytes`]; anything else is refused.
    pub fn from_bytes(b: &[u8]) -> Result<Self, ProtoError> {
        let bad = || ProtoError::Protocol("malformed enclave config".into());
        let s = std::str::from_utf8(b).map_err(|_| bad())?;
        let mib = s
            .strip_prefix("hetee-enclave v2\ntransport=stdio\nmemory_budget_mib=")
            .and_then(|r| r.strip_suffix('\n'))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|&n| (16..=1 << 20).contains(&n))
            .ok_or_else(bad)?;
        let c = EnclaveConfig {
            memory_budget_mib: mib,
        };
        if c.to_bytes() != b {
            return Err(bad());
        }
        Ok(c)
    }

    /// The budget in bytes.
    pub fn budget_bytes(&self) -> usize {
        (self.memory_budget_mib as usize).saturating_mul(1 << 20)
    }
}
