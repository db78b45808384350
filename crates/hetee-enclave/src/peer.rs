//! A cluster of enclaves with one measurement shares one sealing key, so
//! that any replica opens the key sets, models and states any other sealed
//! (on a real TEE a blob sealed with the platform's key opens only on the
//! CPU that sealed it). The key moves only from enclave to enclave; the
//! hosts relay three messages:
//!
//! 1. the joining enclave's [`Request::PeerOffer`](crate::Request): its
//!    channel key and evidence that binds it;
//! 2. a member's [`Request::ShareSealingKey`](crate::Request): it checks
//!    the offer ([`crate::peer_check`]: same measurement, same platform
//!    kind, the vendor's production verifier on a real TEE, sim only
//!    between sim enclaves), encrypts its sealing key to the offered channel key (one
//!    Noise `N` message) and attests the message with its own evidence;
//! 3. the joiner's [`Request::AdoptSealingKey`](crate::Request): it checks
//!    that evidence the same way, opens the message and seals the adopted
//!    key under its own platform key for its host to keep.
//!
//! A host that forges or swaps any message gets a refusal: it can neither
//! read the key (encrypted to an attested enclave key) nor plant one of its
//! own (the sender's evidence must bind the message).

use hetee_attest::oneway::{open_with, seal_to};
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

use crate::enclave::{read, refuse, write, Enclave};
use crate::messages::Response;
use crate::peer_check::{check_peer_evidence, host_clock, peer_verifiers};
use crate::EnclaveError;

const JOIN: &[u8] = b"hetee/peer-join/v1";
const SHARE: &[u8] = b"hetee/peer-share/v1";
const ADOPTED_LABEL: &str = "hetee/cluster-sealing-key/v1";

/// Report data binding `data` for `domain`.
fn bound(domain: &[u8], data: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(domain);
    h.update(data);
    h.finalize().into()
}

impl Enclave {
    /// The prologue of a share: bound to the measurement.
    fn share_prologue(&self) -> Vec<u8> {
        [SHARE, &self.measurement().0[..]].concat()
    }

    /// Checks a peer's evidence ([`check_peer_evidence`]): authentic, this
    /// enclave's platform kind and measurement, and `want` as report data.
    fn check_peer(&self, evidence: &[u8], want: &[u8; 64]) -> Result<(), EnclaveError> {
        check_peer_evidence(
            &peer_verifiers(),
            self.platform().kind(),
            self.measurement(),
            evidence,
            want,
            host_clock(),
        )
        .map_err(|e| EnclaveError::Protocol(e.to_string()))?;
        Ok(())
    }

    /// Step 1: this enclave's offer to join.
    pub(crate) fn peer_offer(&self) -> Result<Response, EnclaveError> {
        let channel_public_key = *self.channel_key()?.public();
        let evidence = self
            .platform()
            .evidence(&bound(JOIN, &channel_public_key))?
            .encode()?;
        Ok(Response::PeerOffer {
            channel_public_key,
            evidence,
        })
    }

    /// Step 2: hand the sealing key to the enclave that made the offer.
    pub(crate) fn share_sealing_key(
        &self,
        peer_key: &[u8; 32],
        peer_evidence: &[u8],
    ) -> Result<Response, EnclaveError> {
        self.check_peer(peer_evidence, &bound(JOIN, peer_key))?;
        let key = self.sealer()?.secret;
        let message = seal_to(peer_key, &self.share_prologue(), &key[..])?;
        let digest = Sha256::digest(&message);
        let evidence = self.platform().evidence(&bound(SHARE, &digest))?.encode()?;
        Ok(Response::SealingKeyShared { message, evidence })
    }

    fn nothing_sealed_yet(&self) -> Result<(), EnclaveError> {
        if !read(&self.keysets).is_empty() || !read(&self.models).is_empty() {
            return refuse(
                "adopt the cluster's sealing key before any key set or model is created or restored",
            );
        }
        Ok(())
    }

    /// Step 3: adopt the sealing key a peer shared (runs alone).
    pub(crate) fn adopt_sealing_key(
        &self,
        message: &[u8],
        evidence: &[u8],
    ) -> Result<Response, EnclaveError> {
        self.nothing_sealed_yet()?;
        self.check_peer(evidence, &bound(SHARE, &Sha256::digest(message)))?;
        let plain = open_with(self.channel_key()?, &self.share_prologue(), message)?;
        let key: [u8; 32] = plain[..]
            .try_into()
            .map_err(|_| EnclaveError::Protocol("the shared key is malformed".into()))?;
        let key = Zeroizing::new(key);
        let platform_key = self.platform_key()?;
        let sealed =
            hetee_attest::seal::seal(&platform_key, &self.measurement(), ADOPTED_LABEL, &key[..])?;
        *write(&self.adopted_key) = Some(key);
        Ok(Response::SealingKeyAdopted { sealed })
    }

    /// Takes back an adopted key this enclave sealed for itself (runs alone).
    pub(crate) fn restore_sealing_key(&self, sealed: &[u8]) -> Result<Response, EnclaveError> {
        self.nothing_sealed_yet()?;
        let platform_key = self.platform_key()?;
        let plain =
            hetee_attest::seal::unseal(&platform_key, &self.measurement(), ADOPTED_LABEL, sealed)?;
        let key: [u8; 32] = plain[..]
            .try_into()
            .map_err(|_| EnclaveError::Protocol("the sealed key is malformed".into()))?;
        *write(&self.adopted_key) = Some(Zeroizing::new(key));
        Ok(Response::SealingKeyRestored)
    }
}
