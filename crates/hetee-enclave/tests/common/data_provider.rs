//! The data provider's side of the test client: hello, queries (HE and
//! thin) and the host's relay of their stages.

use super::*;

/// A data provider's session that said hello and got the plan.
pub struct DataProvider {
    pub channel: Channel,
    pub plan: QueryPlan,
    /// The secret seed of this provider's input encryption.
    pub seed: [u8; 32],
    /// The id of this provider's query (a retry reuses it with the seed).
    pub query_id: [u8; 16],
}

/// Hello on a new channel.
pub fn hello(e: &Enclave, keys: &Keys, model_id: ModelId) -> Result<DataProvider, String> {
    hello_as(e, keys, None, model_id)
}

/// Hello on a new channel with a long-term client key.
pub fn hello_as(
    e: &Enclave,
    keys: &Keys,
    client: Option<&StaticKeypair>,
    model_id: ModelId,
) -> Result<DataProvider, String> {
    let opened = connect_as(
        e,
        keys.key_id,
        &keys.evidence,
        &keys.identity.channel_public_key,
        client,
        &ClientMessage::Hello { model_id },
    )?;
    assert!(opened.registered.is_none());
    match opened.reply {
        EnclaveMessage::Plan(plan) => Ok(DataProvider {
            channel: opened.channel,
            plan: *plan,
            seed: rand::random(),
            query_id: rand::random(),
        }),
        other => panic!("expected a plan, got {other:?}"),
    }
}

impl DataProvider {
    /// Packs and encrypts one image under the (attested) public key.
    pub fn encrypt(&self, public_key: &[u8], x: &[f32]) -> Vec<Vec<u8>> {
        self.encrypt_images(public_key, &[x])
    }

    /// Packs and encrypts images with this provider's seed.
    pub fn encrypt_images(&self, public_key: &[u8], xs: &[&[f32]]) -> Vec<Vec<u8>> {
        let par = self.plan.he.build().unwrap();
        let pk = PublicKey::from_bytes(public_key, &par).unwrap();
        let polys = self.plan.pack_input(xs).unwrap();
        hetee_enclave::input_binding::encrypt_input(&pk, &par, &polys, &self.seed).unwrap()
    }

    /// The sealed Query message for these input ciphertexts.
    pub fn query_payload(&mut self, input: &[Vec<u8>]) -> Vec<u8> {
        seal_msg(
            &mut self.channel.tx,
            &ClientMessage::Query {
                query_id: self.query_id,
                input_digest: input_digest(input),
                images: 1,
                seed: zeroize::Zeroizing::new(self.seed),
            },
        )
    }

    /// The sealed ThinQuery message for these images.
    pub fn thin_payload(&mut self, images: &[Vec<f32>]) -> Vec<u8> {
        seal_msg(
            &mut self.channel.tx,
            &ClientMessage::ThinQuery {
                query_id: self.query_id,
                images: zeroize::Zeroizing::new(images.to_vec()),
            },
        )
    }

    /// StartQuery for `model_id` with these inputs.
    pub fn start(&mut self, e: &Enclave, model_id: ModelId, input: &[Vec<u8>]) -> Response {
        let payload = self.query_payload(input);
        e.handle(Request::StartQuery {
            session: self.channel.session,
            model_id,
            payload,
            input: input.to_vec(),
        })
    }

    /// Opens the Finished payload and checks the enclave's signature with
    /// the attested result key.
    pub fn result(&mut self, keys: &Keys, payload: &[u8]) -> QueryResult {
        match open_msg(&mut self.channel.tx, payload) {
            EnclaveMessage::Result { result, signature } => {
                let key = VerifyingKey::from_bytes(&keys.identity.signing_public_key).unwrap();
                let sig = Signature::from_slice(&signature).unwrap();
                key.verify(&result.signed_message(), &sig)
                    .expect("the result's signature does not verify");
                result
            }
            other => panic!("expected a result, got {other:?}"),
        }
    }
}

/// The host runs every stage of a started query; returns the final response
/// (Finished, Logits or the first Error).
pub fn run_stages(
    e: &Enclave,
    host: &HostModel,
    session: SessionId,
    input: Vec<Vec<u8>>,
) -> Response {
    let mut inputs = input;
    for k in 0..host.schedule.stages.len() {
        let ciphertexts = host.evaluate(k, &inputs);
        match e.handle(Request::StageResult {
            session,
            stage: k as u32,
            ciphertexts,
        }) {
            Response::NextInput { stage, ciphertexts } => {
                assert_eq!(stage as usize, k + 1);
                inputs = ciphertexts;
            }
            other => return other,
        }
    }
    panic!("the enclave asked for more stages than the model has")
}

/// The host closes a session (its client is done with it).
pub fn close(e: &Enclave, session: SessionId) {
    assert!(matches!(
        e.handle(Request::CloseSession { session }),
        Response::Closed
    ));
}

/// A whole query by a new data provider in its own session (closed after
/// the result); returns the logits it receives.
pub fn query(
    e: &Enclave,
    keys: &Keys,
    host: &HostModel,
    model_id: ModelId,
    x: &[f32],
) -> Result<Vec<f32>, String> {
    query_as(e, keys, host, model_id, None, x).map(|(logits, _)| logits)
}

/// [`query`] by a data provider with this long-term key (`None`: a fresh
/// one); also returns the sealed state the query's start gave the host.
pub fn query_as(
    e: &Enclave,
    keys: &Keys,
    host: &HostModel,
    model_id: ModelId,
    client: Option<&StaticKeypair>,
    x: &[f32],
) -> Result<(Vec<f32>, Option<hetee_enclave::messages::SealedState>), String> {
    let mut dp = hello_as(e, keys, client, model_id)?;
    let input = dp.encrypt(&keys.public_key, x);
    let state = match dp.start(e, model_id, &input) {
        Response::QueryStarted { input: None, state } => state,
        Response::Error { message, .. } => return Err(message),
        other => panic!("StartQuery: {}", short(&other)),
    };
    assert!(state.as_ref().is_none_or(|s| s.model_id == model_id));
    let digest = input_digest(&input);
    match run_stages(e, host, dp.channel.session, input) {
        Response::Finished { payload } => {
            // The session is ready for another query; this client is done.
            close(e, dp.channel.session);
            let r = dp.result(keys, &payload);
            assert_eq!(r.model_id, model_id);
            assert_eq!(r.commitment, host.commitment());
            assert_eq!(r.input_digest, digest);
            assert_eq!(r.images, 1);
            assert_eq!(r.policy, OutputPolicy::Logits);
            assert_eq!(r.classes as usize, r.logits.len());
            assert!(r.labels.is_empty());
            Ok((r.logits.to_vec(), state))
        }
        Response::Error { message, .. } => Err(message),
        other => panic!("last stage: {}", short(&other)),
    }
}

/// Starts a thin query of `images`: hello, then the images over the
/// channel; returns the session and the stage-0 ciphertexts the enclave made.
pub fn start_thin(
    e: &Enclave,
    keys: &Keys,
    model_id: ModelId,
    images: &[Vec<f32>],
) -> Result<(DataProvider, Vec<Vec<u8>>), String> {
    let mut dp = hello(e, keys, model_id)?;
    let payload = dp.thin_payload(images);
    match e.handle(Request::StartQuery {
        session: dp.channel.session,
        model_id,
        payload,
        input: vec![],
    }) {
        Response::QueryStarted {
            input: Some(cts), ..
        } => Ok((dp, cts)),
        Response::Error { message, .. } => Err(message),
        other => panic!("thin StartQuery: {}", short(&other)),
    }
}

/// One image through a thin query: the input goes over the channel and
/// the enclave encrypts stage 0's input itself.
pub fn query_thin(
    e: &Enclave,
    keys: &Keys,
    host: &HostModel,
    model_id: ModelId,
    x: &[f32],
) -> Result<Vec<f32>, String> {
    let images = vec![x.to_vec()];
    let (mut dp, input) = start_thin(e, keys, model_id, &images)?;
    match run_stages(e, host, dp.channel.session, input) {
        Response::Finished { payload } => {
            close(e, dp.channel.session);
            let r = dp.result(keys, &payload);
            assert_eq!(
                r.input_digest,
                hetee_enclave::messages::thin_input_digest(&images)
            );
            Ok(r.logits.to_vec())
        }
        Response::Error { message, .. } => Err(message),
        other => panic!("last stage: {}", short(&other)),
    }
}
