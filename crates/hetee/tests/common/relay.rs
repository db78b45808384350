//! A replica's API as a test sees it: [`Tapped`] passes every call to the
//! server, except the ones its [`Hooks`] change (to lie about the
//! enclave's keys, to lose an answer, to count calls).

use anyhow::Result;
use hetee::client::http::Api;
use hetee::client::public_meta::PublicMeta;
use hetee::client::relay::Relay;
use hetee_proto::api::{
    CreateKeys, FinishSession, KeysInfo, ModelCreated, ModelInfo, OpenSession, QueryDone, Sealed,
    SessionOpened,
};
use hetee_proto::bodies::{QueryBody, UploadBody};

/// The calls a test may change; by default each goes to the server.
pub trait Hooks: Send + Sync {
    /// `GET /v1/models/{id}`: the model and its attested key set.
    fn model(&self, api: &Api, model_id: &str) -> Result<ModelInfo> {
        api.model(model_id)
    }
    /// `POST /v1/sessions/{id}/query`.
    fn query(&self, api: &Api, session: &str, req: &QueryBody) -> Result<QueryDone> {
        api.query(session, req)
    }
}

/// A server's API with some calls changed by `hooks`.
pub struct Tapped<H> {
    pub api: Api,
    pub hooks: H,
}

impl<H: Hooks> Relay for Tapped<H> {
    fn create_keys(&self, req: &CreateKeys) -> Result<KeysInfo> {
        self.api.create_keys(req)
    }
    fn model(&self, model_id: &str) -> Result<ModelInfo> {
        self.hooks.model(&self.api, model_id)
    }
    fn upload(&self, req: &UploadBody) -> Result<ModelCreated> {
        self.api.upload(req)
    }
    fn open_session(&self, req: &OpenSession) -> Result<SessionOpened> {
        self.api.open_session(req)
    }
    fn finish_session(&self, session: &str, req: &FinishSession) -> Result<Sealed> {
        self.api.finish_session(session, req)
    }
    fn query(&self, session: &str, req: &QueryBody) -> Result<QueryDone> {
        self.hooks.query(&self.api, session, req)
    }
    fn close_session(&self, session: &str) {
        self.api.close_session(session)
    }
    fn public_meta(&self, model_id: &str) -> Result<PublicMeta> {
        self.api.public_meta(model_id)
    }
}
