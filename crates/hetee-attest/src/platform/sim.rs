//! The simulated TEE as seen from inside the enclave.
//!
//! Measurement: [`crate::measure`] of the enclave's own executable and its measured config, taken
//! by the enclave itself (a real TEE's loader does this in hardware). Evidence: signed with the
//! published development root ([`crate::evidence::DEV_ROOT_SECRET`]). Sealing key: HKDF of a
//! published root and the measurement. **Nothing here is secret**: the simulation keeps the
//! protocol's structure, and clients refuse its evidence unless `--allow-sim` is given.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::evidence::{Evidence, Measurement, PlatformKind, SimPlatform};
use crate::platform::Platform;

/// Root of the simulated sealing keys. **Not a secret**, published like the evidence root.
pub const SIM_SEALING_ROOT: [u8; 32] = *b"hetee-sim-sealing:NOT-A-SECRET!!";

/// The simulated platform for one enclave measurement.
pub struct SimTee {
    signer: SimPlatform,
    measurement: Measurement,
    /// Stands for the CPU's sealing secret: blobs sealed on one simulated
    /// "CPU" open only on the same one (zero for the default).
    cpu: [u8; 32],
}

impl SimTee {
    /// The simulated platform of an enclave whose measurement is `measurement` (in-process
    /// enclaves and tests, where there is no separate binary to measure).
    pub fn new(measurement: Measurement) -> Self {
        SimTee {
            signer: SimPlatform::dev(),
            measurement,
            cpu: [0; 32],
        }
    }

    /// The same on another simulated CPU: its sealing key differs (as on a
    /// real TEE, where a sealed blob opens only on the CPU that sealed it).
    pub fn on_cpu(measurement: Measurement, cpu: [u8; 32]) -> Self {
        SimTee {
            cpu,
            ..Self::new(measurement)
        }
    }

    /// Measures the running executable with `config`, as a loader would before starting it.
    pub fn measure_self(config: &[u8]) -> Result<Self> {
        let exe = std::env::current_exe().map_err(|e| {
            Error::Platform(format!("sim: cannot locate the enclave executable: {e}"))
        })?;
        let binary = std::fs::read(&exe).map_err(|e| {
            Error::Platform(format!(
                "sim: cannot read the enclave executable {} to measure it: {e}",
                exe.display()
            ))
        })?;
        Ok(Self::new(crate::measure(&binary, config)))
    }
}

impl Platform for SimTee {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Sim
    }

    fn measurement(&self) -> Measurement {
        self.measurement
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence> {
        Ok(self.signer.issue(self.measurement, false, *report_data))
    }

    fn sealing_key(&self) -> Result<Zeroizing<[u8; 32]>> {
        let mut ikm = SIM_SEALING_ROOT.to_vec();
        if self.cpu != [0; 32] {
            ikm.extend_from_slice(&self.cpu);
        }
        let hk = Hkdf::<Sha256>::new(Some(self.measurement.as_bytes()), &ikm);
        let mut key = Zeroizing::new([0u8; 32]);
        hk.expand(b"hetee/sim-sealing-key/v1", &mut key[..])
            .map_err(|e| Error::Crypto(format!("HKDF expand: {e}")))?;
        Ok(key)
    }
}
