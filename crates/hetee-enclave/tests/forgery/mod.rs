//! The honest side and the host's forgeries shared by the attack suites
//! (`attacks.rs`, `input_attacks.rs`): queries in flight, bystanders that
//! must still be served, and the forger that crafts stage results.
#![allow(dead_code)]

use std::sync::Arc;

use crate::common::*;
use fhe::bfv::{BfvParameters, Ciphertext, Encoding, Plaintext, PublicKey};
use fhe_traits::{DeserializeParametrized, FheEncoder, FheEncrypter};
use hetee_attest::Measurement;
use hetee_enclave::keys::{KeySet, Sealer};
use hetee_enclave::messages::{
    input_digest, AllowList, ClientMessage, ModelId, ModelTerms, QueryPlan, SessionId,
};
use hetee_enclave::step::{step, StepOutput, INTEGRITY_FAILURE};
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response, Schedule};
use hetee_he::codec::{ciphertext_from_bytes, ciphertext_to_bytes, encoded_len};
use hetee_he::eval::output_level;
use hetee_model::ir::{Layer, Model};
use hetee_model::reference::{finish_stage, linear};
use hetee_model::QuantModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// --- The honest side -----------------------------------------------------

/// A data provider's query in flight, as the host drives it.
pub struct Flight {
    pub dp: DataProvider,
    /// The images of the query.
    pub images: Vec<Vec<f32>>,
    /// The ciphertexts the next stage is evaluated on.
    pub input: Vec<Vec<u8>>,
    /// The next stage.
    pub stage: usize,
}

/// Hello, encryption of `images` (one query) and StartQuery.
pub fn start(e: &Enclave, keys: &Keys, model_id: ModelId, images: &[Vec<f32>]) -> Flight {
    let mut dp = hello(e, keys, model_id).unwrap();
    let input = encrypt_images(&dp, keys, images);
    let payload = seal_msg(
        &mut dp.channel.tx,
        &ClientMessage::Query {
            query_id: dp.query_id,
            input_digest: input_digest(&input),
            images: images.len() as u32,
            seed: zeroize::Zeroizing::new(dp.seed),
        },
    );
    match e.handle(Request::StartQuery {
        session: dp.channel.session,
        model_id,
        payload,
        input: input.clone(),
    }) {
        Response::QueryStarted { input: None, .. } => {}
        other => panic!("StartQuery: {}", short(&other)),
    }
    Flight {
        dp,
        images: images.to_vec(),
        input,
        stage: 0,
    }
}

/// A thin query: the images go over the channel, the enclave encrypts them.
pub fn start_thin_flight(
    e: &Enclave,
    keys: &Keys,
    model_id: ModelId,
    images: &[Vec<f32>],
) -> Flight {
    let (dp, input) = crate::common::start_thin(e, keys, model_id, images).unwrap();
    Flight {
        dp,
        images: images.to_vec(),
        input,
        stage: 0,
    }
}

/// The data provider packs and encrypts a batch of images.
pub fn encrypt_images(dp: &DataProvider, keys: &Keys, images: &[Vec<f32>]) -> Vec<Vec<u8>> {
    let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
    dp.encrypt_images(&keys.public_key, &refs)
}

impl Flight {
    pub fn session(&self) -> SessionId {
        self.dp.channel.session
    }

    /// The honest result of the next stage.
    pub fn honest(&self, host: &HostModel) -> Vec<Vec<u8>> {
        host.evaluate(self.stage, &self.input)
    }

    /// Sends the honest result of a stage that is not the last.
    pub fn advance(&mut self, e: &Enclave, host: &HostModel) {
        let ciphertexts = self.honest(host);
        match e.handle(Request::StageResult {
            session: self.session(),
            stage: self.stage as u32,
            ciphertexts,
        }) {
            Response::NextInput { stage, ciphertexts } if stage as usize == self.stage + 1 => {
                self.input = ciphertexts;
                self.stage += 1;
            }
            other => panic!("honest stage {}: {}", self.stage, short(&other)),
        }
    }

    /// Advances to `stage`.
    pub fn advance_to(&mut self, e: &Enclave, host: &HostModel, stage: usize) {
        while self.stage < stage {
            self.advance(e, host);
        }
    }

    /// Runs the remaining stages honestly: the data provider's logits must
    /// be the reference's, bit for bit.
    pub fn finish(mut self, e: &Enclave, keys: &Keys, host: &HostModel, q: &QuantModel) {
        let last = host.schedule.stages.len() - 1;
        self.advance_to(e, host, last);
        let r = e.handle(Request::StageResult {
            session: self.session(),
            stage: last as u32,
            ciphertexts: self.honest(host),
        });
        let Response::Finished { payload } = r else {
            panic!("an honest session failed: {}", short(&r))
        };
        close(e, self.session());
        let result = self.dp.result(keys, &payload);
        assert_eq!(result.images as usize, self.images.len());
        let want: Vec<f32> = self.images.iter().flat_map(|x| reference(q, x)).collect();
        assert_eq!(
            bits(&result.logits),
            bits(&want),
            "an honest session got other logits than the reference"
        );
    }

    /// Sends `forged` as the result of the next stage. The enclave must
    /// refuse it (nothing released) and close the session: the honest result
    /// sent afterwards finds no session. Returns the refusal's text.
    pub fn attack(self, e: &Enclave, host: &HostModel, forged: Vec<Vec<u8>>) -> String {
        let stage = self.stage;
        self.attack_as(e, host, stage, forged)
    }

    /// Same, labelled as stage `stage`.
    pub fn attack_as(
        self,
        e: &Enclave,
        host: &HostModel,
        stage: usize,
        forged: Vec<Vec<u8>>,
    ) -> String {
        let honest = self.honest(host);
        let msg = refused(e.handle(Request::StageResult {
            session: self.session(),
            stage: stage as u32,
            ciphertexts: forged,
        }));
        assert_closed(e, self.session(), self.stage, honest);
        msg
    }

    /// [`Flight::attack`], refused by the integrity check.
    pub fn attack_integrity(self, e: &Enclave, host: &HostModel, forged: Vec<Vec<u8>>) {
        let msg = self.attack(e, host, forged);
        assert_eq!(msg, INTEGRITY_FAILURE);
    }
}

/// (2): the response to an attack is an error, never a release.
pub fn refused(r: Response) -> String {
    match r {
        Response::Error { message, .. } => message,
        other => panic!("the enclave accepted the attack: {}", short(&other)),
    }
}

/// (2) for a refusal other than the integrity check: it says `what`, and
/// every number in it is one of `public` (numbers the host already knew).
pub fn refused_publicly(msg: &str, what: &str, public: &[usize]) {
    assert!(msg.contains(what), "{msg:?} does not say {what:?}");
    assert_ne!(msg, INTEGRITY_FAILURE);
    assert!(msg.len() < 300, "a long refusal: {msg:?}");
    for n in msg
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
    {
        let n: usize = n.parse().unwrap();
        assert!(
            public.contains(&n),
            "the refusal {msg:?} carries {n}, which the host did not know"
        );
    }
}

/// (1): a correct stage result for `session` finds no session.
pub fn assert_closed(e: &Enclave, session: SessionId, stage: usize, honest: Vec<Vec<u8>>) {
    let msg = error_of(e.handle(Request::StageResult {
        session,
        stage: stage as u32,
        ciphertexts: honest,
    }));
    assert!(msg.contains("unknown or closed session"), "{msg}");
}

/// An honest query left mid-query (its first stage done) before an attack.
pub fn bystander(s: &mut Setup, x: &[f32]) -> Flight {
    let id = s.model_id();
    let mut f = start(&s.enclave, &s.keys, id, &[x.to_vec()]);
    f.advance(&s.enclave, &s.host);
    f
}

/// (3): the bystander (the only session left open) finishes, and a new
/// query succeeds; no session is left open.
pub fn others_still_served(s: &mut Setup, by: Flight) {
    assert_eq!(s.status().sessions, 1, "sessions left open");
    by.finish(&s.enclave, &s.keys, &s.host, &s.q);
    let x = s.x.clone();
    let got = s.query(&x).unwrap();
    assert_eq!(bits(&got), bits(&reference(&s.q, &x)));
    assert_eq!(s.status().sessions, 0);
}

/// Failed checks after which the models of the forgery tests lock: high, so
/// that every forgery meets the check itself. The lock has tests of its own.
pub const LENIENT: u32 = 1_000_000;

/// The tiny model, one image per query, locking only after [`LENIENT`]
/// failed checks.
pub fn lenient() -> Setup {
    batch_setup(1)
}

/// The tiny model compiled for `batch` images per query (several output
/// ciphertexts per stage from batch 256 on), locking only after
/// [`LENIENT`] failed checks.
pub fn batch_setup(batch: usize) -> Setup {
    let (q, x) = tiny_model();
    let schedule = Schedule::compile(&q, batch).unwrap();
    let enclave = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&enclave, &schedule.he);
    let host = HostModel::new(&q, &schedule, &keys.public_key);
    let terms = ModelTerms {
        lock_after: LENIENT,
        ..ModelTerms::default()
    };
    let msg = register_message_terms(&keys, &host, terms, AllowList::Open);
    let registered = register_with(&enclave, &keys, &msg);
    Setup {
        enclave,
        q,
        x,
        keys,
        host,
        registered,
    }
}

/// `n` different inputs of the tiny model.
pub fn images(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..20).map(|_| rng.random_range(0.0..1.0)).collect())
        .collect()
}

/// The tiny model's architecture with other weights.
pub fn tiny_variant() -> QuantModel {
    let w = |n: usize, s: usize| {
        (0..n)
            .map(|i| (((i * 17 + s) % 19) as f32 - 9.0) / 25.0)
            .collect::<Vec<_>>()
    };
    let m = Model {
        input_shape: vec![20],
        layers: vec![
            Layer::Dense {
                weight: w(8 * 20, 5),
                bias: w(8, 6),
                out_features: 8,
                in_features: 20,
            },
            Layer::Relu,
            Layer::Dense {
                weight: w(3 * 8, 7),
                bias: w(3, 8),
                out_features: 3,
                in_features: 8,
            },
        ],
        node_names: vec!["fc1".into(), "relu".into(), "fc2".into()],
        inputs: Vec::new(),
    };
    let calib: Vec<f32> = (0..5 * 20).map(|i| (i % 7) as f32 / 7.0).collect();
    hetee_model::quantize(&m, &calib).unwrap()
}

// --- The host's forgeries ------------------------------------------------

/// What a host can do to stage results with the public key alone.
pub struct Forger {
    pub par: Arc<BfvParameters>,
    pub pk: PublicKey,
    /// The level of stage results.
    pub level: usize,
}

impl Forger {
    pub fn new(host: &HostModel, public_key: &[u8]) -> Self {
        let par = host.par.clone();
        Forger {
            pk: PublicKey::from_bytes(public_key, &par).unwrap(),
            level: output_level(&par),
            par,
        }
    }

    pub fn degree(&self) -> usize {
        self.par.degree()
    }

    /// Bytes per coefficient of the first prime of a stage result.
    pub fn first_width(&self) -> usize {
        let q = self.par.context_at_level(self.level).unwrap().moduli()[0];
        (64 - q.leading_zeros() as usize).div_ceil(8)
    }

    pub fn parse(&self, b: &[u8]) -> Ciphertext {
        ciphertext_from_bytes(b, &self.par, 3).unwrap()
    }

    /// A public-key encryption of `poly` in the form of a stage result:
    /// switched down to the output level, with a zero third polynomial.
    pub fn encrypt(&self, poly: &[i64]) -> Ciphertext {
        let pt = Plaintext::try_encode(poly, Encoding::poly(), &self.par).unwrap();
        let mut ct: Ciphertext = self.pk.try_encrypt(&pt, &mut rand::rng()).unwrap();
        ct.switch_to_level(self.level).unwrap();
        // The zero polynomial of the output level's context.
        let mut zero = ct[1].clone();
        zero -= &ct[1];
        Ciphertext::new(vec![ct[0].clone(), ct[1].clone(), zero], &self.par).unwrap()
    }

    /// `poly` as a plaintext at the output level.
    pub fn plaintext(&self, poly: &[i64]) -> Plaintext {
        Plaintext::try_encode(poly, Encoding::poly_at_level(self.level), &self.par).unwrap()
    }

    /// A fresh encryption of `poly` as stage-result bytes.
    pub fn encrypted(&self, poly: &[i64]) -> Vec<u8> {
        ciphertext_to_bytes(&self.encrypt(poly))
    }

    /// The noiseless ciphertext `(Δ·poly, 0, 0)`.
    pub fn trivial(&self, poly: &[i64]) -> Vec<u8> {
        let mut zero = self.encrypt(&[]);
        zero -= &zero.clone();
        ciphertext_to_bytes(&(zero + &self.plaintext(poly)))
    }

    /// `ct + Enc(delta)`: decrypts to the honest value plus `delta`.
    pub fn plus(&self, ct: &[u8], delta: &[i64]) -> Vec<u8> {
        ciphertext_to_bytes(&(&self.parse(ct) + &self.encrypt(delta)))
    }

    /// `ct * c` by a plaintext constant.
    pub fn times(&self, ct: &[u8], c: i64) -> Vec<u8> {
        ciphertext_to_bytes(&(&self.parse(ct) * &self.plaintext(&[c])))
    }

    /// `ct + ct`.
    pub fn doubled(&self, ct: &[u8]) -> Vec<u8> {
        let c = self.parse(ct);
        ciphertext_to_bytes(&(&c + &c))
    }

    /// `-ct`.
    pub fn negated(&self, ct: &[u8]) -> Vec<u8> {
        ciphertext_to_bytes(&-&self.parse(ct))
    }

    /// A random polynomial with centred coefficients modulo t.
    pub fn random_poly(&self, rng: &mut impl Rng) -> Vec<i64> {
        let t = self.par.plaintext() as i64;
        (0..self.degree())
            .map(|_| rng.random_range(-(t / 2)..=t / 2))
            .collect()
    }

    /// Bytes of a well-formed stage result with uniformly random coefficients.
    pub fn random_bytes(&self, rng: &mut impl Rng) -> Vec<u8> {
        let ctx = self.par.context_at_level(self.level).unwrap();
        let mut out = b"HCT1".to_vec();
        out.push(ctx.moduli().len() as u8);
        out.push(3);
        for _ in 0..3 {
            for &q in ctx.moduli() {
                let w = (64 - q.leading_zeros() as usize).div_ceil(8);
                for _ in 0..self.degree() {
                    out.extend_from_slice(&rng.random_range(0..q).to_le_bytes()[..w]);
                }
            }
        }
        assert_eq!(out.len(), encoded_len(&self.par, self.level, 3).unwrap());
        out
    }

    /// A data provider's input ciphertext plus a fresh encryption of zero:
    /// the same plaintext under other bytes.
    pub fn rerandomized_input(&self, ct: &[u8]) -> Vec<u8> {
        let c = ciphertext_from_bytes(ct, &self.par, 2).unwrap();
        let pt = Plaintext::try_encode(&[0i64], Encoding::poly(), &self.par).unwrap();
        let zero: Ciphertext = self.pk.try_encrypt(&pt, &mut rand::rng()).unwrap();
        ciphertext_to_bytes(&(&c + &zero))
    }
}

/// Where stage `k`'s linear outputs are read from its decrypted result:
/// `(ciphertext, coefficient)` per output, image by image.
pub fn read_positions(schedule: &Schedule, k: usize) -> Vec<Vec<(usize, usize)>> {
    let n = schedule.he.degree;
    let count = schedule.stages[k].packing.output_count();
    let labels: Vec<Vec<i64>> = (0..count)
        .map(|p| (0..n).map(|i| (p * n + i + 1) as i64).collect())
        .collect();
    schedule
        .unpack_stage_output(k, &labels)
        .unwrap()
        .into_iter()
        .map(|image| {
            image
                .into_iter()
                .map(|l| {
                    assert!(l > 0, "an output is read from no coefficient");
                    let l = l as usize - 1;
                    (l / n, l % n)
                })
                .collect()
        })
        .collect()
}

/// The honest stage result with `delta` added (by encryption) at the
/// coefficient that holds linear output `out` of image `image`.
pub fn nudged(
    forger: &Forger,
    schedule: &Schedule,
    k: usize,
    honest: &[Vec<u8>],
    image: usize,
    out: usize,
    delta: i64,
) -> Vec<Vec<u8>> {
    let (p, i) = read_positions(schedule, k)[image][out];
    let mut poly = vec![0i64; forger.degree()];
    poly[i] = delta;
    let mut forged = honest.to_vec();
    forged[p] = forger.plus(&honest[p], &poly);
    forged
}

/// The enclave's own stage step without any check (a library function, not
/// reachable through the protocol), on a key set whose secret the test
/// holds: it shows what a forgery decrypts to, so that the refusals below
/// come from the checks and not from malformed input.
pub struct Unchecked {
    pub ks: KeySet,
    pub q: QuantModel,
    pub x: Vec<f32>,
    pub host: HostModel,
    pub forger: Forger,
}

impl Unchecked {
    pub fn new() -> Self {
        let (q, x) = tiny_model();
        let schedule = Schedule::compile(&q, 1).unwrap();
        let sealer = Sealer {
            secret: zeroize::Zeroizing::new([1; 32]),
            measurement: Measurement(MEASUREMENT),
        };
        let (ks, _) = sealer.create_keys(schedule.he.clone(), [0; 32]).unwrap();
        let host = HostModel::new(&q, &schedule, &ks.public_key);
        let forger = Forger::new(&host, &ks.public_key);
        Unchecked {
            ks,
            q,
            x,
            host,
            forger,
        }
    }

    pub fn last(&self) -> usize {
        self.q.stages.len() - 1
    }

    /// The last stage's honest linear outputs, in the clear.
    pub fn honest_acc(&self) -> Vec<i64> {
        let last = self.last();
        let input = (0..last).fold(self.q.input.quantize(&self.x).unwrap(), |v, k| {
            finish_stage(&self.q.stages[k], linear(&self.q.stages[k], &v))
        });
        linear(&self.q.stages[last], &input)
    }

    /// What the last stage releases for linear outputs `acc`.
    pub fn release(&self, acc: Vec<i64>) -> Vec<f32> {
        let tail = &self.q.stages[self.last()];
        tail.dequantize(&finish_stage(tail, acc))
    }

    /// A query whose last-stage result is `forge(honest)`; the logits an
    /// unchecked step releases.
    pub fn run(&mut self, forge: impl Fn(&Forger, &[Vec<u8>]) -> Vec<Vec<u8>>) -> Vec<f32> {
        let schedule = &self.host.schedule;
        let plan = QueryPlan::of([0; 16], [0; 16], [0; 32], schedule).unwrap();
        let packed = plan.pack_input(&[self.x.as_slice()]).unwrap();
        let mut input = encrypt_under(&self.ks.public_key, &self.host.par, &packed);
        let last = self.last();
        let (n, j) = (schedule.stages.len(), schedule.joins.len());
        let mut values: Vec<hetee_model::graph::Values> = (0..schedule.batch)
            .map(|_| hetee_model::graph::Values::new(Vec::new(), n, j))
            .collect();
        for k in 0..last {
            let cts = self.host.evaluate(k, &input);
            match step(&self.ks, schedule, k, &cts, &mut values, None).unwrap() {
                StepOutput::Next(next) => input = next,
                StepOutput::Logits(_) => panic!("logits before the last stage"),
            }
        }
        let forged = forge(&self.forger, &self.host.evaluate(last, &input));
        match step(&self.ks, schedule, last, &forged, &mut values, None).unwrap() {
            StepOutput::Logits(values) => values.to_vec(),
            StepOutput::Next(..) => panic!("no logits at the last stage"),
        }
    }
}
