//! How a client reaches the host: the HTTP API of `hetee serve` ([`Api`]),
//! or a host in this process (the in-process harness). The client code is
//! the same either way; the host only relays sealed messages and computes
//! on ciphertexts. Ciphertexts travel as binary bodies
//! ([`hetee_proto::bodies`]), everything else as JSON.

use anyhow::Result;
use hetee_proto::api::{
    CreateKeys, FinishSession, KeysInfo, ModelCreated, ModelInfo, OpenSession, QueryDone, Sealed,
    SessionOpened,
};
use hetee_proto::bodies::{QueryBody, UploadBody, OCTET_STREAM};

use crate::http::Api;
use crate::public_meta::PublicMeta;

/// The host's API as a client sees it.
pub trait Relay: Send + Sync {
    /// `POST /v1/keys`: a key set owned by `req.owner`, with its evidence.
    fn create_keys(&self, req: &CreateKeys) -> Result<KeysInfo>;
    /// `GET /v1/models/{id}`: a registered model and its attested key set.
    fn model(&self, model_id: &str) -> Result<ModelInfo>;
    /// `POST /v1/models`: stores encrypted weights.
    fn upload(&self, req: &UploadBody) -> Result<ModelCreated>;
    /// `POST /v1/sessions`: relays Noise message 1.
    fn open_session(&self, req: &OpenSession) -> Result<SessionOpened>;
    /// `POST /v1/sessions/{id}/finish`: relays message 3 and the first message.
    fn finish_session(&self, session: &str, req: &FinishSession) -> Result<Sealed>;
    /// `POST /v1/sessions/{id}/query`: runs the query.
    fn query(&self, session: &str, req: &QueryBody) -> Result<QueryDone>;
    /// `DELETE /v1/sessions/{id}` (best effort).
    fn close_session(&self, session: &str);
    /// `GET /v1/models/{id}`: the model's public metadata. Default: none (a
    /// host that keeps none).
    fn public_meta(&self, model_id: &str) -> Result<PublicMeta> {
        let _ = model_id;
        Ok(PublicMeta::default())
    }
    /// `POST /v1/models?preprocess=…&output_shape=…`: stores encrypted
    /// weights with the model's public metadata. Default: [`Relay::upload`],
    /// refusing metadata it cannot keep.
    fn upload_with_meta(&self, req: &UploadBody, meta: &PublicMeta) -> Result<ModelCreated> {
        if !meta.is_empty() {
            anyhow::bail!("this host keeps no public model metadata");
        }
        self.upload(req)
    }
}

impl Relay for Api {
    fn create_keys(&self, req: &CreateKeys) -> Result<KeysInfo> {
        self.post("/v1/keys", req)
    }
    fn model(&self, model_id: &str) -> Result<ModelInfo> {
        self.get(&format!("/v1/models/{model_id}"))
    }
    fn upload(&self, req: &UploadBody) -> Result<ModelCreated> {
        self.post_bytes("/v1/models", OCTET_STREAM, &req.encode())
    }
    fn open_session(&self, req: &OpenSession) -> Result<SessionOpened> {
        self.post("/v1/sessions", req)
    }
    fn finish_session(&self, session: &str, req: &FinishSession) -> Result<Sealed> {
        self.post(&format!("/v1/sessions/{session}/finish"), req)
    }
    fn query(&self, session: &str, req: &QueryBody) -> Result<QueryDone> {
        self.post_bytes(
            &format!("/v1/sessions/{session}/query"),
            OCTET_STREAM,
            &req.encode(),
        )
    }
    fn close_session(&self, session: &str) {
        let _ = self.delete(&format!("/v1/sessions/{session}"));
    }
    fn public_meta(&self, model_id: &str) -> Result<PublicMeta> {
        self.get(&format!("/v1/models/{model_id}"))
    }
    fn upload_with_meta(&self, req: &UploadBody, meta: &PublicMeta) -> Result<ModelCreated> {
        self.post_bytes(
            &format!("/v1/models{}", meta.query_string()),
            OCTET_STREAM,
            &req.encode(),
        )
    }
}
