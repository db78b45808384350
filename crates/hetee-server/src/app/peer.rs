//! `POST /v1/peer/share`: the relay by which a joining replica obtains the
//! cluster's sealing key from this replica's enclave. The host passes the
//! offer on and the share back; the enclave decides (same measurement, same
//! platform kind, evidence binding the offered key).

use hetee_proto::{Request, Response};
use tracing::info;

use super::{ApiError, ApiResult, App};
use crate::peer::{OfferBody, ShareBody};

impl App {
    /// Hands a joining enclave's offer (binary body, [`OfferBody`]) to this enclave; its share.
    pub fn share_sealing_key(&self, body: &[u8]) -> ApiResult<ShareBody> {
        let offer = OfferBody::decode(body).map_err(ApiError::bad)?;
        let req = Request::ShareSealingKey {
            peer_key: offer.channel_public_key,
            peer_evidence: offer.evidence,
        };
        match self.enclave.call_retry(req)? {
            Response::SealingKeyShared { message, evidence } => {
                info!("shared the cluster's sealing key with a joining enclave");
                Ok(ShareBody::new(&message, &evidence))
            }
            _ => Err(ApiError::conflict(
                "unexpected answer of the enclave to ShareSealingKey",
            )),
        }
    }
}
