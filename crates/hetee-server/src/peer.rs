//! The bodies of the peer relay (`POST /v1/peer/share`), by which a joining
//! replica's host carries its enclave's offer to a running replica and brings
//! back that enclave's share of the cluster's sealing key. The hosts only
//! relay these bytes: every check is in the enclaves
//! (`hetee_enclave::peer`).

use hetee_proto::api::{b64, unb64};
use serde::{Deserialize, Serialize};

/// The relay's path on a running replica.
pub const SHARE_PATH: &str = "/v1/peer/share";

/// Largest evidence an offer may carry, bytes (real quotes are a few KiB).
pub const MAX_EVIDENCE: usize = 64 << 10;

/// A joining enclave's offer (`Response::PeerOffer`), as the binary request
/// body: the 32-byte channel key, then the evidence bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferBody {
    /// The joining enclave's channel key.
    pub channel_public_key: [u8; 32],
    /// Its evidence binding the key.
    pub evidence: Vec<u8>,
}

impl OfferBody {
    /// The binary body.
    pub fn encode(&self) -> Vec<u8> {
        [&self.channel_public_key[..], &self.evidence[..]].concat()
    }

    /// Parses a binary body; the error says what is wrong with it.
    pub fn decode(body: &[u8]) -> Result<Self, String> {
        if body.len() <= 32 {
            return Err(format!(
                "a peer offer is a 32-byte channel key followed by evidence; got {} bytes",
                body.len()
            ));
        }
        if body.len() - 32 > MAX_EVIDENCE {
            return Err(format!(
                "a peer offer's evidence is at most {MAX_EVIDENCE} bytes; got {}",
                body.len() - 32
            ));
        }
        let mut channel_public_key = [0u8; 32];
        channel_public_key.copy_from_slice(&body[..32]);
        Ok(OfferBody {
            channel_public_key,
            evidence: body[32..].to_vec(),
        })
    }
}

/// A member enclave's share (`Response::SealingKeyShared`), as the JSON
/// answer: both fields base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareBody {
    /// The one-way Noise message carrying the key to the offered channel key.
    pub message: String,
    /// The sharing enclave's evidence over the message.
    pub evidence: String,
}

impl ShareBody {
    /// The JSON body of a share.
    pub fn new(message: &[u8], evidence: &[u8]) -> Self {
        ShareBody {
            message: b64(message),
            evidence: b64(evidence),
        }
    }

    /// The share's bytes: (message, evidence).
    pub fn bytes(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        Ok((
            unb64(&self.message, "message")?,
            unb64(&self.evidence, "evidence")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_round_trips_and_short_or_huge_bodies_are_refused() {
        let o = OfferBody {
            channel_public_key: [7; 32],
            evidence: vec![1, 2, 3],
        };
        assert_eq!(OfferBody::decode(&o.encode()).unwrap(), o);
        assert!(OfferBody::decode(&[0; 32]).unwrap_err().contains("32-byte"));
        let huge = vec![0; 32 + MAX_EVIDENCE + 1];
        assert!(OfferBody::decode(&huge).unwrap_err().contains("at most"));
        let s = ShareBody::new(b"m", b"e");
        assert_eq!(s.bytes().unwrap(), (b"m".to_vec(), b"e".to_vec()));
        let bad = ShareBody {
            message: "!".into(),
            evidence: String::new(),
        };
        assert!(bad.bytes().unwrap_err().contains("message"));
    }
}
