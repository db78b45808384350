//! Large payloads beside the stream, through memory both processes map.
//!
//! A stage's ciphertexts are hundreds of kilobytes to megabytes. Through a
//! pipe, each of them is copied into the kernel and out again: measured on
//! a 2-core AMD EPYC VM, a 430 KB stage result took 0.16 ms to write and
//! about as long to read, where a `memcpy` of it takes 0.02 ms. So the host
//! may map a file of [`Layout::slots`] slots beside the enclave's stream.
//! Each slot has a request area and a response area of
//! [`Layout::slot_bytes`] each; the request areas lie end to end, then the
//! response areas, so that a *run* of consecutive slots is one range on
//! either side:
//!
//! - a call that owns the run of slots `i..i + k` (`k` = [`Layout::run`] of
//!   its payload's length: a stacked or batched stage result may be many
//!   megabytes) writes its request payload (the request id, then the
//!   message in `postcard`, as [`crate::wire`] frames it) at the start of
//!   slot `i`'s request area and sends only a [`SlotRef`] frame of kind
//!   [`KIND_REQUEST_SHARED`];
//! - the enclave copies the payload out, once, before it parses anything,
//!   and answers in the response areas of the same run (the run the
//!   request's length names) with a frame of kind [`KIND_RESPONSE_SHARED`],
//!   or inline when the answer does not fit them;
//! - the host reads the answer out and frees the run.
//!
//! A slot belongs to one call from the request until its answer is read,
//! so concurrent calls never share an area. Payloads larger than the
//! region's side, and calls that find no free run long enough, travel
//! inline in the stream.
//!
//! The mapped memory is the host's, like the pipe: the enclave treats it
//! as untrusted input. It reads a request area once, into its own memory,
//! with bounds checked against the layout it mapped (never a reference
//! into the mapping), and it writes there only what it would write to the
//! stream. A host that scribbles over an area while the enclave copies it
//! gets what it would get by sending those bytes.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::MmapRaw;

use crate::wire::codec;

/// Frame kind of a request whose payload is in a slot's request area.
pub const KIND_REQUEST_SHARED: u8 = 0x12;
/// Frame kind of a response whose payload is in a slot's response area.
pub const KIND_RESPONSE_SHARED: u8 = 0x13;

/// Bytes of a [`SlotRef`] frame's payload.
pub const SLOT_REF_BYTES: usize = 16;

/// Failures mapping or using the shared region.
#[derive(Debug, thiserror::Error)]
pub enum SharedMemoryError {
    /// The region's file could not be created, opened, sized or mapped.
    #[error("shared memory {path}: {source}")]
    Io {
        /// The region's file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A layout out of bounds, or a file of another size than its layout.
    #[error("shared memory layout: {0}")]
    Layout(String),
    /// A reference past the region's side, or to a slot that does not exist.
    #[error("shared memory reference out of bounds: slot {slot}, {len} bytes")]
    OutOfBounds {
        /// The slot named.
        slot: u32,
        /// The length named.
        len: u32,
    },
}

/// How the region is cut into slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Slots (calls that may use the region at once).
    pub slots: u32,
    /// Bytes of each slot's request area, and of its response area.
    pub slot_bytes: u32,
}

impl Layout {
    /// The host's default: 8 slots of 3 MiB each way (48 MiB, reserved in
    /// `/dev/shm` when the region is made; a container's default `/dev/shm`
    /// of 64 MiB holds it). A latency query's largest stage result, across
    /// the bundled models, is 2.3 MB (one slot); a stack of 16 MNIST
    /// queries sends 4.8 MB (a run of two), a 64-image batch 18 MB (six).
    pub const DEFAULT: Layout = Layout {
        slots: 8,
        slot_bytes: 3 << 20,
    };

    /// Most slots a layout may have.
    pub const MAX_SLOTS: u32 = 256;
    /// Largest area a layout may have (the stream's own frame limit).
    pub const MAX_SLOT_BYTES: u32 = 64 << 20;

    /// Checks the bounds: 1 to [`Self::MAX_SLOTS`] slots, areas of 4 KiB
    /// to [`Self::MAX_SLOT_BYTES`].
    pub fn check(&self) -> Result<(), SharedMemoryError> {
        if self.slots == 0 || self.slots > Self::MAX_SLOTS {
            return Err(SharedMemoryError::Layout(format!(
                "{} slots; between 1 and {} are allowed",
                self.slots,
                Self::MAX_SLOTS
            )));
        }
        if self.slot_bytes < 4096 || self.slot_bytes > Self::MAX_SLOT_BYTES {
            return Err(SharedMemoryError::Layout(format!(
                "slots of {} bytes; between 4096 and {} are allowed",
                self.slot_bytes,
                Self::MAX_SLOT_BYTES
            )));
        }
        Ok(())
    }

    /// Bytes of the whole region.
    pub fn region_bytes(&self) -> u64 {
        2 * u64::from(self.slots) * u64::from(self.slot_bytes)
    }

    /// Slots a payload of `len` bytes takes: at least one.
    pub fn run(&self, len: usize) -> u32 {
        let slots = len.div_ceil(self.slot_bytes as usize).max(1);
        u32::try_from(slots).unwrap_or(u32::MAX)
    }

    /// Where `len` bytes of `side` starting at `slot` start, if they fit in
    /// the run of `run` slots from `slot` and that run in the layout.
    fn area(&self, slot: u32, run: u32, side: Side, len: usize) -> Option<usize> {
        let end = slot.checked_add(run)?;
        if run == 0 || end > self.slots || len > run as usize * self.slot_bytes as usize {
            return None;
        }
        let index = side as usize * self.slots as usize + slot as usize;
        Some(index * self.slot_bytes as usize)
    }
}

/// Which area of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Written by the host, read by the enclave.
    Request = 0,
    /// Written by the enclave, read by the host.
    Response = 1,
}

/// What a shared frame carries: the request id, the slot and the payload's
/// length (little-endian `u64`, `u32`, `u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRef {
    /// The request's id (also the payload's first 8 bytes).
    pub id: u64,
    /// The slot.
    pub slot: u32,
    /// Bytes of the payload at the start of the slot's area (running on
    /// into the next slots' when it is longer than one).
    pub len: u32,
}

impl SlotRef {
    /// The frame payload.
    pub fn encode(&self) -> [u8; SLOT_REF_BYTES] {
        let mut b = [0u8; SLOT_REF_BYTES];
        b[..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..12].copy_from_slice(&self.slot.to_le_bytes());
        b[12..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes a frame payload; `None` unless it is exactly
    /// [`SLOT_REF_BYTES`] long.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; SLOT_REF_BYTES] = b.try_into().ok()?;
        let (id, rest) = b.split_first_chunk::<8>()?;
        let (slot, len) = rest.split_first_chunk::<4>()?;
        Some(SlotRef {
            id: u64::from_le_bytes(*id),
            slot: u32::from_le_bytes(*slot),
            len: u32::from_le_bytes(len.try_into().ok()?),
        })
    }
}

/// Sizes `file` to `len` bytes with its memory reserved up front: a sparse
/// file in a `tmpfs` that fills up would kill whichever process touched a
/// page too many (`SIGBUS`). A full `/dev/shm` is an error here instead, and
/// the host keeps to the stream.
#[cfg(target_os = "linux")]
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: a descriptor this process owns; no memory is passed.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

#[cfg(not(target_os = "linux"))]
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    file.set_len(len)
}

/// The mapped region.
pub struct Region {
    map: MmapRaw,
    layout: Layout,
}

impl Region {
    /// Creates the region's file in `dir` (a new name, readable by this
    /// user only), sizes it for `layout` and maps it. Returns the region
    /// and the file's path, for the enclave to open; the caller removes
    /// the file once the enclave has mapped it.
    pub fn create(dir: &Path, layout: Layout) -> Result<(Region, PathBuf), SharedMemoryError> {
        layout.check()?;
        let mut tag = [0u8; 8];
        rand::Rng::fill(&mut rand::rng(), &mut tag[..]);
        let path = dir.join(format!(
            "hetee-link-{}-{}",
            std::process::id(),
            u64::from_le_bytes(tag)
        ));
        let io = |source| SharedMemoryError::Io {
            path: path.clone(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(io)?;
        let mapped = reserve(&file, layout.region_bytes()).and_then(|()| MmapRaw::map_raw(&file));
        match mapped {
            Ok(map) => Ok((Region { map, layout }, path)),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(io(e))
            }
        }
    }

    /// Opens and maps the region at `path`, which must be exactly as large
    /// as `layout` says.
    pub fn open(path: &Path, layout: Layout) -> Result<Region, SharedMemoryError> {
        layout.check()?;
        let io = |source| SharedMemoryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len != layout.region_bytes() {
            return Err(SharedMemoryError::Layout(format!(
                "the file holds {len} bytes; {} slots of {} bytes each way need {}",
                layout.slots,
                layout.slot_bytes,
                layout.region_bytes()
            )));
        }
        let map = MmapRaw::map_raw(&file).map_err(io)?;
        if map.len() as u64 != len {
            return Err(SharedMemoryError::Layout("the mapping is short".into()));
        }
        Ok(Region { map, layout })
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Whether `len` bytes fit a run of the region (all of one side, at most).
    pub fn fits(&self, len: usize) -> bool {
        self.layout.run(len) <= self.layout.slots
    }

    /// Copies `bytes` to the start of `side` of `slot`, within the run of
    /// `run` slots from it.
    pub fn write(
        &self,
        slot: u32,
        run: u32,
        side: Side,
        bytes: &[u8],
    ) -> Result<(), SharedMemoryError> {
        let start = self.layout.area(slot, run, side, bytes.len()).ok_or(
            SharedMemoryError::OutOfBounds {
                slot,
                len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            },
        )?;
        // SAFETY: `area` keeps `start + bytes.len()` within the run, and the
        // run within the mapping (`open` and `create` map exactly
        // `region_bytes`). Raw pointers only: no reference into memory the
        // other process writes is ever formed.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(start),
                bytes.len(),
            );
        }
        Ok(())
    }

    /// Encodes a payload of `len` bytes ([`crate::wire::request_len`] or
    /// [`crate::wire::response_len`]: the id, then `msg` in `postcard`)
    /// straight into `side` of the run of `run` slots from `slot`, and
    /// returns the frame that names it ([`KIND_REQUEST_SHARED`] or
    /// [`KIND_RESPONSE_SHARED`]). Each byte is copied once, with no buffer
    /// in between (a frame built first and then copied in allocates a
    /// buffer and copies each byte twice).
    /// `None` when the payload does not fit the run, or does not come out
    /// `len` bytes long.
    pub fn encode_into(
        &self,
        slot: u32,
        run: u32,
        side: Side,
        id: u64,
        msg: &impl serde::Serialize,
        len: usize,
    ) -> Option<Vec<u8>> {
        let start = self.layout.area(slot, run, side, len)?;
        let mut area = AreaWriter {
            region: self,
            start,
            cap: len,
            len: 0,
        };
        postcard::ser_flavors::Flavor::try_extend(&mut area, &id.to_le_bytes()).ok()?;
        let written = postcard::serialize_with_flavor(msg, area).ok()?;
        if written != len {
            return None;
        }
        let kind = match side {
            Side::Request => KIND_REQUEST_SHARED,
            Side::Response => KIND_RESPONSE_SHARED,
        };
        let len = u32::try_from(len).ok()?;
        codec()
            .encode(kind, &SlotRef { id, slot, len }.encode())
            .ok()
    }

    /// Copies the payload `r` names out of `side` of its slot (and the
    /// slots after it that its length runs into, [`Layout::run`]), once.
    pub fn read(&self, r: &SlotRef, side: Side) -> Result<Vec<u8>, SharedMemoryError> {
        let len = r.len as usize;
        let start = self
            .layout
            .area(r.slot, self.layout.run(len), side, len)
            .ok_or(SharedMemoryError::OutOfBounds {
                slot: r.slot,
                len: r.len,
            })?;
        let mut out = Vec::with_capacity(len);
        // SAFETY: as in `write`, the source range is inside the mapping; the
        // destination has capacity `len`, and its first `len` bytes are
        // initialized by the copy before `set_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(start), out.as_mut_ptr(), len);
            out.set_len(len);
        }
        Ok(out)
    }
}

/// `postcard`'s output into an area of the mapping: each piece is copied
/// in through a raw pointer, within `cap` bytes from `start` (which
/// [`Layout::area`] checked to lie in the mapping).
struct AreaWriter<'r> {
    region: &'r Region,
    start: usize,
    cap: usize,
    len: usize,
}

impl postcard::ser_flavors::Flavor for AreaWriter<'_> {
    type Output = usize;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.try_extend(&[byte])
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self
            .len
            .checked_add(data.len())
            .filter(|&end| end <= self.cap)
            .ok_or(postcard::Error::SerializeBufferFull)?;
        // SAFETY: `start + cap` lies within the mapping (`Layout::area`
        // checked it for the run, and the run for the mapping), and
        // `len + data.len() <= cap`. Raw pointers only, as in `write`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.region.map.as_mut_ptr().add(self.start + self.len),
                data.len(),
            );
        }
        self.len = end;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hetee_attest::frame::HEADER_LEN;

    const SMALL: Layout = Layout {
        slots: 3,
        slot_bytes: 4096,
    };

    #[test]
    fn payloads_cross_between_two_mappings() {
        let dir = tempfile::tempdir().unwrap();
        let (host, path) = Region::create(dir.path(), SMALL).unwrap();
        let enclave = Region::open(&path, SMALL).unwrap();
        std::fs::remove_file(&path).unwrap();
        let request: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        host.write(2, 1, Side::Request, &request).unwrap();
        let r = SlotRef {
            id: 9,
            slot: 2,
            len: 4096,
        };
        assert_eq!(SlotRef::decode(&r.encode()), Some(r));
        assert_eq!(enclave.read(&r, Side::Request).unwrap(), request);
        // The response area is another place: the request is still there.
        enclave.write(2, 1, Side::Response, b"answer").unwrap();
        let a = SlotRef {
            id: 9,
            slot: 2,
            len: 6,
        };
        assert_eq!(host.read(&a, Side::Response).unwrap(), b"answer");
        assert_eq!(enclave.read(&r, Side::Request).unwrap(), request);
    }

    /// A message encoded straight into a run of slots is the payload its
    /// frame would carry inline, and the frame names it; a message that
    /// does not fit the run, or is not the length the caller counted, is
    /// not placed.
    #[test]
    fn a_message_encoded_into_a_run_is_the_payload_of_its_inline_frame() {
        use crate::wire::{decode_request, request_frame, request_len};
        use crate::Request;
        let dir = tempfile::tempdir().unwrap();
        let (host, path) = Region::create(dir.path(), SMALL).unwrap();
        let enclave = Region::open(&path, SMALL).unwrap();
        let req = Request::StageResult {
            session: [3; 16],
            stage: 2,
            ciphertexts: vec![(0..5000u32).map(|i| (i * 11) as u8).collect(), vec![9; 300]],
        };
        let len = request_len(&req).unwrap();
        assert!(len > 4096 && len <= 2 * 4096);
        assert_eq!(host.encode_into(1, 1, Side::Request, 5, &req, len), None);
        assert_eq!(
            host.encode_into(1, 2, Side::Request, 5, &req, len - 1),
            None
        );
        assert_eq!(
            host.encode_into(1, 2, Side::Request, 5, &req, len + 1),
            None
        );
        let named = host.encode_into(1, 2, Side::Request, 5, &req, len).unwrap();
        let (f, _) = codec().decode(&named).unwrap();
        assert_eq!(f.kind, KIND_REQUEST_SHARED);
        let r = SlotRef::decode(&f.payload).unwrap();
        assert_eq!((r.id, r.slot, r.len as usize), (5, 1, len));
        let payload = enclave.read(&r, Side::Request).unwrap();
        let inline = request_frame(5, &req).unwrap();
        assert_eq!(payload, inline[HEADER_LEN..]);
        let Ok(Request::StageResult { ciphertexts, .. }) = decode_request(&payload).1 else {
            panic!("the payload decodes to the request");
        };
        let Request::StageResult {
            ciphertexts: sent, ..
        } = &req
        else {
            unreachable!()
        };
        assert_eq!(&ciphertexts, sent);
    }

    /// A payload longer than a slot runs on into the next slots of its
    /// side, and only of its side: the response areas and the other
    /// slots' requests are where they were.
    #[test]
    fn a_long_payload_takes_a_run_of_slots_on_its_side() {
        let dir = tempfile::tempdir().unwrap();
        let (host, path) = Region::create(dir.path(), SMALL).unwrap();
        let enclave = Region::open(&path, SMALL).unwrap();
        assert_eq!((SMALL.run(0), SMALL.run(4096), SMALL.run(4097)), (1, 1, 2));
        assert!(host.fits(3 * 4096) && !host.fits(3 * 4096 + 1));
        host.write(0, 1, Side::Response, b"slot 0's answer")
            .unwrap();
        host.write(2, 1, Side::Request, b"slot 2's request")
            .unwrap();
        let long: Vec<u8> = (0..8000u32).map(|i| (i * 13) as u8).collect();
        host.write(0, 2, Side::Request, &long).unwrap();
        let r = SlotRef {
            id: 1,
            slot: 0,
            len: 8000,
        };
        assert_eq!(enclave.read(&r, Side::Request).unwrap(), long);
        let answer = SlotRef {
            id: 0,
            slot: 0,
            len: 15,
        };
        assert_eq!(
            enclave.read(&answer, Side::Response).unwrap(),
            b"slot 0's answer"
        );
        let other = SlotRef {
            id: 0,
            slot: 2,
            len: 16,
        };
        assert_eq!(
            enclave.read(&other, Side::Request).unwrap(),
            b"slot 2's request"
        );
        // Not past the run the writer holds, nor past the side.
        assert!(host.write(0, 1, Side::Request, &long).is_err());
        assert!(host.write(2, 2, Side::Request, &[1]).is_err());
        let past = SlotRef {
            id: 1,
            slot: 1,
            len: 8193,
        };
        assert!(enclave.read(&past, Side::Response).is_err());
    }

    #[test]
    fn references_outside_the_region_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (region, _) = Region::create(dir.path(), SMALL).unwrap();
        for (slot, len) in [
            (3, 1),
            (u32::MAX, 1),
            (0, 3 * 4096 + 1),
            (2, 4097),
            (2, u32::MAX),
        ] {
            let r = SlotRef { id: 1, slot, len };
            assert!(matches!(
                region.read(&r, Side::Request),
                Err(SharedMemoryError::OutOfBounds { .. })
            ));
        }
        assert!(region.write(0, 1, Side::Response, &[0; 4097]).is_err());
        assert!(region.write(3, 1, Side::Request, &[0; 1]).is_err());
        assert!(region.write(1, 0, Side::Request, &[]).is_err());
        assert_eq!(SlotRef::decode(&[0; 15]), None);
        assert_eq!(SlotRef::decode(&[0; 17]), None);
    }

    #[test]
    fn a_file_of_another_size_or_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_region, path) = Region::create(dir.path(), SMALL).unwrap();
        let other = Layout { slots: 4, ..SMALL };
        assert!(matches!(
            Region::open(&path, other),
            Err(SharedMemoryError::Layout(_))
        ));
        for bad in [
            Layout { slots: 0, ..SMALL },
            Layout {
                slots: 1,
                slot_bytes: 100,
            },
        ] {
            assert!(Region::create(dir.path(), bad).is_err());
        }
        assert!(Region::open(&dir.path().join("missing"), SMALL).is_err());
    }
}
