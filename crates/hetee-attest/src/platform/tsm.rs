//! Intel TDX and AMD SEV-SNP guests through Linux's configfs-tsm report interface.
//!
//! The kernel (6.7+, `CONFIG_TSM_REPORTS`) exposes `/sys/kernel/config/tsm/report`. Making a
//! directory there creates a report entry with these attributes:
//! - `inblob` (write): the 64 bytes of report data;
//! - `outblob` (read): the TDX quote (via the host's quote generation service) or the raw SNP
//!   attestation report;
//! - `auxblob` (read, SNP only): AMD's certificate table (VCEK, ASK, ARK) if the host
//!   provisioned certificates — it becomes the evidence's collateral;
//! - `provider` (read): `tdx_guest` or `sev_guest`;
//! - `generation` (read): counts writes to the entry. It is read after writing `inblob` and again
//!   after reading `outblob`; if it moved, another writer raced us and the request is retried.
//!   The report data inside the returned report is checked too.
//!
//! The platform learns its own measurement by asking for a report over zero report data when it
//! opens (parsed with [`crate::layout`]). Sealing: neither platform gives one here — TDX has no
//! sealing key at all, and the SNP derived key needs the `/dev/sev-guest` `SNP_GET_DERIVED_KEY`
//! ioctl, which this crate (`#![forbid(unsafe_code)]`, no `sev` dependency in the enclave build)
//! does not issue; [`Platform::sealing_key`] returns an error that says so.
//!
//! The root directory and the entry name are configurable, so tests run against a fake
//! directory: files that a real configfs creates on `mkdir` may already exist.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::evidence::{Evidence, Measurement, PlatformKind};
use crate::platform::Platform;

/// Where the kernel mounts configfs-tsm reports.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";
/// How often a request is retried when the entry's generation moved.
const ATTEMPTS: usize = 3;

/// What one configfs-tsm request returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsmReport {
    /// The `provider` attribute (`tdx_guest`, `sev_guest`).
    pub provider: String,
    /// The quote or report (`outblob`).
    pub outblob: Vec<u8>,
    /// The auxiliary blob (`auxblob`), empty if absent.
    pub auxblob: Vec<u8>,
    /// The generation the report was produced at.
    pub generation: u64,
}

/// A TDX or SEV-SNP guest, attested through configfs-tsm.
#[derive(Debug)]
pub struct TsmPlatform {
    root: PathBuf,
    /// A fixed entry name, or `None` for a fresh `hetee-<pid>-<n>` per request.
    entry: Option<String>,
    kind: PlatformKind,
    measurement: Measurement,
    lock: Mutex<()>,
}

static NEXT_ENTRY: AtomicU64 = AtomicU64::new(0);

fn platform_err(msg: String) -> Error {
    Error::Platform(msg)
}

fn read_trimmed(path: &Path) -> Result<String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| platform_err(format!("configfs-tsm: cannot read {}: {e}", path.display())))?;
    Ok(s.trim().to_owned())
}

fn read_generation(entry: &Path) -> Result<u64> {
    let p = entry.join("generation");
    let s = read_trimmed(&p)?;
    s.parse().map_err(|_| {
        platform_err(format!(
            "configfs-tsm: {} holds {s:?}, not a number",
            p.display()
        ))
    })
}

/// Removes an entry directory this process created (configfs entries are removed with rmdir).
struct EntryGuard(Option<PathBuf>);

impl Drop for EntryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Maps a provider name to the evidence kind.
fn kind_of(provider: &str) -> Result<PlatformKind> {
    match provider {
        "tdx_guest" => Ok(PlatformKind::TdxDcap),
        "sev_guest" => Ok(PlatformKind::SevSnp),
        other => Err(platform_err(format!(
            "configfs-tsm provider {other:?} is not supported (known: tdx_guest, sev_guest)"
        ))),
    }
}

/// Turns a report into evidence of `kind`.
fn to_evidence(kind: PlatformKind, r: TsmReport) -> Result<Evidence> {
    match kind {
        PlatformKind::TdxDcap => Evidence::from_tdx_quote(r.outblob, Vec::new()),
        PlatformKind::SevSnp => Evidence::from_snp_report(r.outblob, r.auxblob),
        other => Err(platform_err(format!(
            "configfs-tsm cannot produce {other} evidence"
        ))),
    }
}

impl TsmPlatform {
    /// Opens the kernel's configfs-tsm at [`TSM_REPORT_ROOT`].
    pub fn open() -> Result<Self> {
        Self::open_at(TSM_REPORT_ROOT, None)
    }

    /// Opens configfs-tsm at `root`. With `entry`, every request uses that entry directory
    /// (created if missing, kept afterwards); without, each request makes and removes a fresh
    /// `hetee-<pid>-<n>` entry. Asks for a report over zero report data to learn the provider
    /// and the measurement.
    pub fn open_at(root: impl Into<PathBuf>, entry: Option<&str>) -> Result<Self> {
        let root = root.into();
        if !root.is_dir() {
            return Err(platform_err(format!(
                "configfs-tsm: {} is not a directory; run inside a TDX or SEV-SNP guest with \
                 Linux 6.7+ (CONFIG_TSM_REPORTS, tdx_guest or sev_guest module) and configfs \
                 mounted at /sys/kernel/config",
                root.display()
            )));
        }
        let mut p = Self {
            root,
            entry: entry.map(str::to_owned),
            kind: PlatformKind::Sim, // replaced below
            measurement: Measurement([0; 32]),
            lock: Mutex::new(()),
        };
        let r = p.request(&[0; 64], &mut || {})?;
        p.kind = kind_of(&r.provider)?;
        let ev = to_evidence(p.kind, r)?;
        p.measurement = ev.measurement;
        Ok(p)
    }

    /// The root directory in use.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes `report_data` to a report entry and reads back the report, retrying if the
    /// entry's generation moved in between. `between` runs after the first generation read
    /// (a test seam for the race check).
    fn request(&self, report_data: &[u8; 64], between: &mut dyn FnMut()) -> Result<TsmReport> {
        let _serial = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let name = self.entry.clone().unwrap_or_else(|| {
            format!(
                "hetee-{}-{}",
                std::process::id(),
                NEXT_ENTRY.fetch_add(1, Ordering::Relaxed)
            )
        });
        let dir = self.root.join(&name);
        let _guard = match std::fs::create_dir(&dir) {
            Ok(()) if self.entry.is_none() => EntryGuard(Some(dir.clone())),
            Ok(()) => EntryGuard(None),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => EntryGuard(None),
            Err(e) => {
                return Err(platform_err(format!(
                    "configfs-tsm: cannot create the report entry {}: {e}",
                    dir.display()
                )))
            }
        };
        for _ in 0..ATTEMPTS {
            std::fs::write(dir.join("inblob"), report_data).map_err(|e| {
                platform_err(format!(
                    "configfs-tsm: cannot write the report data to {}: {e}",
                    dir.join("inblob").display()
                ))
            })?;
            let before = read_generation(&dir)?;
            between();
            let outblob = std::fs::read(dir.join("outblob")).map_err(|e| {
                platform_err(format!(
                    "configfs-tsm: cannot read the report from {}: {e}; for TDX the host's quote \
                     generation service must be reachable",
                    dir.join("outblob").display()
                ))
            })?;
            let auxblob = match std::fs::read(dir.join("auxblob")) {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    return Err(platform_err(format!(
                        "configfs-tsm: cannot read {}: {e}",
                        dir.join("auxblob").display()
                    )))
                }
            };
            let after = read_generation(&dir)?;
            if before != after {
                continue;
            }
            return Ok(TsmReport {
                provider: read_trimmed(&dir.join("provider"))?,
                outblob,
                auxblob,
                generation: after,
            });
        }
        Err(platform_err(format!(
            "configfs-tsm: the generation of {} changed during each of {ATTEMPTS} attempts: \
             another process writes to this report entry; give this enclave its own entry",
            dir.display()
        )))
    }

    fn evidence_with(&self, report_data: &[u8; 64], between: &mut dyn FnMut()) -> Result<Evidence> {
        let r = self.request(report_data, between)?;
        let kind = kind_of(&r.provider)?;
        if kind != self.kind {
            return Err(platform_err(format!(
                "configfs-tsm: the provider changed from {} to {kind}",
                self.kind
            )));
        }
        let ev = to_evidence(kind, r)?;
        if &ev.report_data != report_data {
            return Err(platform_err(
                "configfs-tsm: the report carries other report data than was written: another \
                 writer raced us on the same entry; retry"
                    .into(),
            ));
        }
        if ev.measurement != self.measurement {
            return Err(platform_err(format!(
                "configfs-tsm: the report's measurement {} differs from the one at start {}",
                ev.measurement, self.measurement
            )));
        }
        Ok(ev)
    }
}

impl Platform for TsmPlatform {
    fn kind(&self) -> PlatformKind {
        self.kind
    }

    fn measurement(&self) -> Measurement {
        self.measurement
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence> {
        self.evidence_with(report_data, &mut || {})
    }

    fn sealing_key(&self) -> Result<Zeroizing<[u8; 32]>> {
        Err(platform_err(match self.kind {
            PlatformKind::TdxDcap => "TDX has no sealing key: a TD cannot derive a secret bound \
                 to its measurement, so key sets must come from a peer enclave after attestation \
                 (key release) or be recreated on each start"
                .into(),
            _ => "SEV-SNP sealing needs a key derived by the AMD secure processor \
                  (SNP_GET_DERIVED_KEY ioctl on /dev/sev-guest), which this build does not \
                  issue; key sets must come from a peer enclave or be recreated on each start"
                .into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake TDX entry whose quote is the real dcap-qvl sample.
    fn fake(dir: &Path) {
        let e = dir.join("e");
        std::fs::create_dir_all(&e).unwrap();
        std::fs::write(e.join("provider"), "tdx_guest\n").unwrap();
        std::fs::write(e.join("generation"), "1\n").unwrap();
        let quote = include_bytes!("../../tests/data/tdx_quote");
        std::fs::write(e.join("outblob"), quote).unwrap();
    }

    #[test]
    fn generation_race_is_retried_then_refused() {
        let t = tempfile::tempdir().unwrap();
        fake(t.path());
        let p = TsmPlatform::open_at(t.path(), Some("e")).unwrap();
        let rd = crate::layout::tdx_quote_fields(include_bytes!("../../tests/data/tdx_quote"))
            .unwrap()
            .report_data;
        let gen = t.path().join("e/generation");
        // Moves once: the retry succeeds.
        let mut n = 0;
        let ev = p
            .evidence_with(&rd, &mut || {
                n += 1;
                if n == 1 {
                    std::fs::write(&gen, format!("{}\n", 10 + n)).unwrap();
                }
            })
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(ev.report_data, rd);
        // Moves every time: refused with a clear error.
        let mut n = 100;
        let err = p
            .evidence_with(&rd, &mut || {
                n += 1;
                std::fs::write(&gen, format!("{n}\n")).unwrap();
            })
            .unwrap_err();
        assert!(err.to_string().contains("generation"), "{err}");
    }
}
