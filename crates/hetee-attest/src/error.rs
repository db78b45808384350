//! The one error type of this crate.
//!
//! Every message names what went wrong and what to do about it. None of these errors carries
//! secret material: they may be logged and sent back to a peer.

use crate::evidence::PlatformKind;

/// Result alias used throughout `hetee-attest`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while framing, attesting, handshaking or sealing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ----- frame layer -----
    /// The underlying byte stream failed.
    #[error("I/O error on the hetee byte stream: {0}; check that the peer is still running and the connection is up")]
    Io(#[from] std::io::Error),

    /// The peer closed the stream cleanly between two frames.
    #[error(
        "the peer closed the stream at a frame boundary; reconnect if more messages were expected"
    )]
    Closed,

    /// The stream ended in the middle of a frame.
    #[error("the stream ended in the middle of a frame ({what}: got {got} of {expected} bytes); the peer closed the connection early or the message was truncated in transit, resend it")]
    UnexpectedEof {
        /// Which part of the frame was being read.
        what: &'static str,
        /// How many bytes arrived.
        got: usize,
        /// How many bytes the frame announced.
        expected: usize,
    },

    /// A frame did not start with the `HTEE` magic.
    #[error("bad frame magic {found:02x?} (expected \"HTEE\"); the peer does not speak the hetee protocol or the stream is out of sync, reconnect")]
    BadMagic {
        /// The four bytes found where the magic should be.
        found: [u8; 4],
    },

    /// A frame announced a protocol version this build does not speak.
    #[error("unsupported hetee protocol version {found} (this build speaks version {supported}); upgrade the older side so both speak the same version")]
    UnsupportedVersion {
        /// The version in the frame header.
        found: u16,
        /// The version this build speaks.
        supported: u16,
    },

    /// A frame payload was larger than the configured maximum.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes; split the message or raise the limit on both sides (FrameCodec::new)")]
    FrameTooLarge {
        /// The announced or requested payload length.
        len: u64,
        /// The configured maximum.
        max: u32,
    },

    /// A frame of one kind arrived where another kind was expected.
    #[error("unexpected frame kind {found:#04x} (expected {expected:#04x}); the peer is at a different protocol step, restart the session")]
    UnexpectedKind {
        /// The kind that arrived.
        found: u8,
        /// The kind that was expected.
        expected: u8,
    },

    // ----- evidence encoding -----
    /// Evidence bytes are malformed.
    #[error("malformed evidence: {0}; re-fetch the evidence from the host, and check both sides run the same hetee version")]
    MalformedEvidence(String),

    /// A hex string could not be parsed as a measurement.
    #[error("invalid measurement hex: {0}; a measurement is exactly 64 hex digits, as printed by `hetee enclave measure`")]
    BadMeasurementHex(String),

    // ----- verification -----
    /// The evidence's signature or quote did not verify.
    #[error("evidence signature does not verify: {0}; the evidence was forged or altered, or the verifier pins a different root key")]
    BadSignature(String),

    /// A verifier was given evidence of a platform it does not handle.
    #[error("this verifier handles {expected} evidence but got {found} evidence; use the verifier for {found} (or `Verifiers`, which picks by platform)")]
    WrongPlatform {
        /// The platform the verifier handles.
        expected: PlatformKind,
        /// The platform named in the evidence.
        found: PlatformKind,
    },

    /// No verifier is configured for the evidence's platform.
    #[error("no verifier is configured for {0} evidence; configure one (e.g. Verifiers::production(), or set that platform's field of Verifiers)")]
    NoVerifier(PlatformKind),

    /// The evidence came from the simulated platform, and the policy does not allow it.
    #[error("evidence is from the simulated platform, which protects nothing; pass --allow-sim to accept it for testing")]
    SimNotAllowed,

    /// The evidence comes from a debug enclave, and the policy does not allow it.
    #[error("evidence is from a debug enclave, whose memory the host can read; run a production build or pass --allow-debug to accept it for testing")]
    DebugNotAllowed,

    /// The measured code is not the expected code.
    #[error("enclave measurement mismatch: expected {expected}, found {found}; the host runs a different enclave binary or config — rebuild/measure it (`hetee enclave measure`) or update the expected value")]
    MeasurementMismatch {
        /// Hex of the expected measurement.
        expected: String,
        /// Hex of the measurement in the evidence.
        found: String,
    },

    /// The report data does not bind the channel key / HE key the client was given.
    #[error("report data mismatch: the evidence does not bind this channel key and HE public key (expected {expected}, found {found}); the host substituted keys or the evidence belongs to another enclave instance — re-fetch evidence and keys together")]
    ReportDataMismatch {
        /// Hex of the expected report data.
        expected: String,
        /// Hex of the report data in the evidence.
        found: String,
    },

    /// The evidence's plain fields disagree with the signed quote inside it.
    #[error("evidence header disagrees with its signed quote: {0}; the evidence was altered or built wrongly, rebuild it with Evidence::from_dcap_quote")]
    EvidenceMismatch(String),

    /// The platform's TCB status is not accepted.
    #[error("TCB status {status:?} (advisories {advisories:?}) is not accepted; patch the platform's microcode/firmware, or accept the status explicitly with DcapVerifier::accept_tcb_status")]
    TcbNotAccepted {
        /// The TCB status reported by the verification.
        status: String,
        /// Intel security advisory ids that apply.
        advisories: Vec<String>,
    },

    /// The DCAP collateral could not be parsed.
    #[error("DCAP collateral is not valid: {0}; re-fetch it from a PCCS (JSON as produced by dcap-qvl's CollateralClient)")]
    BadCollateral(String),

    /// The SEV-SNP certificates attached to the evidence are missing or not valid.
    #[error("SEV-SNP certificates are not valid: {0}; attach the VCEK (and ASK) as an AMD certificate table, as the kernel's configfs-tsm auxblob or hetee_attest::layout::snp_cert_table gives them")]
    BadCertificates(String),

    // ----- channel -----
    /// A Noise handshake step failed.
    #[error("Noise handshake failed at {step}: {reason}; the enclave static key or the evidence hash (prologue) differ between the sides, or a handshake message was altered — re-verify the evidence and restart the handshake")]
    Handshake {
        /// Which handshake step failed.
        step: &'static str,
        /// What snow or this crate reported.
        reason: String,
    },

    /// A transport message failed to decrypt or was out of order.
    #[error("secure channel message rejected: {0}; it was altered, replayed, reordered or truncated in transit — the session is now closed, open a new channel")]
    ChannelMessage(String),

    /// The channel was used after an earlier failure.
    #[error(
        "secure channel is closed after an earlier failure; open a new channel (new handshake)"
    )]
    ChannelPoisoned,

    /// Key generation or another local cryptographic operation failed.
    #[error("local cryptographic operation failed: {0}")]
    Crypto(String),

    // ----- sealing -----
    /// A sealed blob could not be opened.
    #[error("cannot unseal: {0}; the blob was sealed by a different enclave build (measurement), under another label or platform secret, or it was corrupted — re-create the sealed data")]
    Unseal(String),

    // ----- platform -----
    /// The TEE platform under the enclave could not give what was asked.
    #[error("TEE platform: {0}")]
    Platform(String),
}
