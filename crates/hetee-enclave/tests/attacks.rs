//! The malicious host. Every test here plays a host that deviates from the
//! protocol (substitutes, replays, reorders, drops, truncates, scales, mixes
//! sessions or models, crafts chosen plaintexts, swaps inputs) and checks
//! three things:
//!
//! 1. the attacked session ends: the attack gets `Response::Error`, and the
//!    correct request sent afterwards for that session gets "unknown or
//!    closed session";
//! 2. nothing is released: no `Finished`, `Logits` or `NextInput` for the
//!    attacked step, an integrity failure is exactly `INTEGRITY_FAILURE`
//!    (fixed text), and any other refusal carries only numbers the host
//!    already knew (stage, counts, sizes);
//! 3. the enclave still serves others: an honest session opened before the
//!    attack (and left mid-query) and a new one opened after it both end
//!    with logits equal to `run_quantized`, bit for bit.
//!
//! The models of the forgery tests lock only after [`LENIENT`] failed
//! checks, so that each forgery meets the check itself; with the default
//! threshold of 1 the first failed check locks the model (tested in
//! `ownership_attacks.rs`). Before any forgery is refused, [`Unchecked`]
//! shows what it decrypts to without the check.

mod common;

use std::sync::Arc;

use common::*;
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
use hetee_model::quant::StageOutput;
use hetee_model::reference::{finish_stage, linear};
use hetee_model::QuantModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// --- The honest side -----------------------------------------------------

/// A data provider's query in flight, as the host drives it.
struct Flight {
    dp: DataProvider,
    /// The images of the query.
    images: Vec<Vec<f32>>,
    /// The ciphertexts the next stage is evaluated on.
    input: Vec<Vec<u8>>,
    /// The next stage.
    stage: usize,
}

/// Hello, encryption of `images` (one query) and StartQuery.
fn start(e: &Enclave, keys: &Keys, model_id: ModelId, images: &[Vec<f32>]) -> Flight {
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
fn start_thin(e: &Enclave, keys: &Keys, model_id: ModelId, images: &[Vec<f32>]) -> Flight {
    let (dp, input) = common::start_thin(e, keys, model_id, images).unwrap();
    Flight {
        dp,
        images: images.to_vec(),
        input,
        stage: 0,
    }
}

/// The data provider packs and encrypts a batch of images.
fn encrypt_images(dp: &DataProvider, keys: &Keys, images: &[Vec<f32>]) -> Vec<Vec<u8>> {
    let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
    dp.encrypt_images(&keys.public_key, &refs)
}

impl Flight {
    fn session(&self) -> SessionId {
        self.dp.channel.session
    }

    /// The honest result of the next stage.
    fn honest(&self, host: &HostModel) -> Vec<Vec<u8>> {
        host.evaluate(self.stage, &self.input)
    }

    /// Sends the honest result of a stage that is not the last.
    fn advance(&mut self, e: &Enclave, host: &HostModel) {
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
    fn advance_to(&mut self, e: &Enclave, host: &HostModel, stage: usize) {
        while self.stage < stage {
            self.advance(e, host);
        }
    }

    /// Runs the remaining stages honestly: the data provider's logits must
    /// be the reference's, bit for bit.
    fn finish(mut self, e: &Enclave, keys: &Keys, host: &HostModel, q: &QuantModel) {
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
    fn attack(self, e: &Enclave, host: &HostModel, forged: Vec<Vec<u8>>) -> String {
        let stage = self.stage;
        self.attack_as(e, host, stage, forged)
    }

    /// Same, labelled as stage `stage`.
    fn attack_as(
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
    fn attack_integrity(self, e: &Enclave, host: &HostModel, forged: Vec<Vec<u8>>) {
        let msg = self.attack(e, host, forged);
        assert_eq!(msg, INTEGRITY_FAILURE);
    }
}

/// (2): the response to an attack is an error, never a release.
fn refused(r: Response) -> String {
    match r {
        Response::Error { message, .. } => message,
        other => panic!("the enclave accepted the attack: {}", short(&other)),
    }
}

/// (2) for a refusal other than the integrity check: it says `what`, and
/// every number in it is one of `public` (numbers the host already knew).
fn refused_publicly(msg: &str, what: &str, public: &[usize]) {
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
fn assert_closed(e: &Enclave, session: SessionId, stage: usize, honest: Vec<Vec<u8>>) {
    let msg = error_of(e.handle(Request::StageResult {
        session,
        stage: stage as u32,
        ciphertexts: honest,
    }));
    assert!(msg.contains("unknown or closed session"), "{msg}");
}

/// An honest query left mid-query (its first stage done) before an attack.
fn bystander(s: &mut Setup, x: &[f32]) -> Flight {
    let id = s.model_id();
    let mut f = start(&s.enclave, &s.keys, id, &[x.to_vec()]);
    f.advance(&s.enclave, &s.host);
    f
}

/// (3): the bystander (the only session left open) finishes, and a new
/// query succeeds; no session is left open.
fn others_still_served(s: &mut Setup, by: Flight) {
    assert_eq!(s.status().sessions, 1, "sessions left open");
    by.finish(&s.enclave, &s.keys, &s.host, &s.q);
    let x = s.x.clone();
    let got = s.query(&x).unwrap();
    assert_eq!(bits(&got), bits(&reference(&s.q, &x)));
    assert_eq!(s.status().sessions, 0);
}

/// Failed checks after which the models of the forgery tests lock: high, so
/// that every forgery meets the check itself. The lock has tests of its own.
const LENIENT: u32 = 1_000_000;

/// The tiny model, one image per query, locking only after [`LENIENT`]
/// failed checks.
fn lenient() -> Setup {
    batch_setup(1)
}

/// The tiny model compiled for `batch` images per query (several output
/// ciphertexts per stage from batch 256 on), locking only after
/// [`LENIENT`] failed checks.
fn batch_setup(batch: usize) -> Setup {
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
fn images(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..20).map(|_| rng.random_range(0.0..1.0)).collect())
        .collect()
}

/// The tiny model's architecture with other weights.
fn tiny_variant() -> QuantModel {
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
struct Forger {
    par: Arc<BfvParameters>,
    pk: PublicKey,
    /// The level of stage results.
    level: usize,
}

impl Forger {
    fn new(host: &HostModel, public_key: &[u8]) -> Self {
        let par = host.par.clone();
        Forger {
            pk: PublicKey::from_bytes(public_key, &par).unwrap(),
            level: output_level(&par),
            par,
        }
    }

    fn degree(&self) -> usize {
        self.par.degree()
    }

    /// Bytes per coefficient of the first prime of a stage result.
    fn first_width(&self) -> usize {
        let q = self.par.context_at_level(self.level).unwrap().moduli()[0];
        (64 - q.leading_zeros() as usize).div_ceil(8)
    }

    fn parse(&self, b: &[u8]) -> Ciphertext {
        ciphertext_from_bytes(b, &self.par, 3).unwrap()
    }

    /// A public-key encryption of `poly` in the form of a stage result:
    /// switched down to the output level, with a zero third polynomial.
    fn encrypt(&self, poly: &[i64]) -> Ciphertext {
        let pt = Plaintext::try_encode(poly, Encoding::poly(), &self.par).unwrap();
        let mut ct: Ciphertext = self.pk.try_encrypt(&pt, &mut rand::rng()).unwrap();
        ct.switch_to_level(self.level).unwrap();
        // The zero polynomial of the output level's context.
        let mut zero = ct[1].clone();
        zero -= &ct[1];
        Ciphertext::new(vec![ct[0].clone(), ct[1].clone(), zero], &self.par).unwrap()
    }

    /// `poly` as a plaintext at the output level.
    fn plaintext(&self, poly: &[i64]) -> Plaintext {
        Plaintext::try_encode(poly, Encoding::poly_at_level(self.level), &self.par).unwrap()
    }

    /// A fresh encryption of `poly` as stage-result bytes.
    fn encrypted(&self, poly: &[i64]) -> Vec<u8> {
        ciphertext_to_bytes(&self.encrypt(poly))
    }

    /// The noiseless ciphertext `(Δ·poly, 0, 0)`.
    fn trivial(&self, poly: &[i64]) -> Vec<u8> {
        let mut zero = self.encrypt(&[]);
        zero -= &zero.clone();
        ciphertext_to_bytes(&(zero + &self.plaintext(poly)))
    }

    /// `ct + Enc(delta)`: decrypts to the honest value plus `delta`.
    fn plus(&self, ct: &[u8], delta: &[i64]) -> Vec<u8> {
        ciphertext_to_bytes(&(&self.parse(ct) + &self.encrypt(delta)))
    }

    /// `ct * c` by a plaintext constant.
    fn times(&self, ct: &[u8], c: i64) -> Vec<u8> {
        ciphertext_to_bytes(&(&self.parse(ct) * &self.plaintext(&[c])))
    }

    /// `ct + ct`.
    fn doubled(&self, ct: &[u8]) -> Vec<u8> {
        let c = self.parse(ct);
        ciphertext_to_bytes(&(&c + &c))
    }

    /// `-ct`.
    fn negated(&self, ct: &[u8]) -> Vec<u8> {
        ciphertext_to_bytes(&-&self.parse(ct))
    }

    /// A random polynomial with centred coefficients modulo t.
    fn random_poly(&self, rng: &mut impl Rng) -> Vec<i64> {
        let t = self.par.plaintext() as i64;
        (0..self.degree())
            .map(|_| rng.random_range(-(t / 2)..=t / 2))
            .collect()
    }

    /// Bytes of a well-formed stage result with uniformly random coefficients.
    fn random_bytes(&self, rng: &mut impl Rng) -> Vec<u8> {
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
    fn rerandomized_input(&self, ct: &[u8]) -> Vec<u8> {
        let c = ciphertext_from_bytes(ct, &self.par, 2).unwrap();
        let pt = Plaintext::try_encode(&[0i64], Encoding::poly(), &self.par).unwrap();
        let zero: Ciphertext = self.pk.try_encrypt(&pt, &mut rand::rng()).unwrap();
        ciphertext_to_bytes(&(&c + &zero))
    }
}

/// Where stage `k`'s linear outputs are read from its decrypted result:
/// `(ciphertext, coefficient)` per output, image by image.
fn read_positions(schedule: &Schedule, k: usize) -> Vec<Vec<(usize, usize)>> {
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
fn nudged(
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
struct Unchecked {
    ks: KeySet,
    q: QuantModel,
    x: Vec<f32>,
    host: HostModel,
    forger: Forger,
}

impl Unchecked {
    fn new() -> Self {
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

    fn last(&self) -> usize {
        self.q.stages.len() - 1
    }

    /// The last stage's honest linear outputs, in the clear.
    fn honest_acc(&self) -> Vec<i64> {
        let last = self.last();
        let input = (0..last).fold(self.q.input.quantize(&self.x).unwrap(), |v, k| {
            finish_stage(&self.q.stages[k], linear(&self.q.stages[k], &v))
        });
        linear(&self.q.stages[last], &input)
    }

    /// What the last stage releases for linear outputs `acc`.
    fn release(&self, acc: Vec<i64>) -> Vec<f32> {
        let tail = &self.q.stages[self.last()];
        tail.dequantize(&finish_stage(tail, acc))
    }

    /// A query whose last-stage result is `forge(honest)`; the logits an
    /// unchecked step releases.
    fn run(&mut self, forge: impl Fn(&Forger, &[Vec<u8>]) -> Vec<Vec<u8>>) -> Vec<f32> {
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

// --- Attacks ---------------------------------------------------------------

#[test]
fn attack_substituted_stage_result() {
    let mut s = lenient();
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let by = bystander(&mut s, &other_input());
    let last = s.host.schedule.stages.len() - 1;
    assert!(last > 0);
    for k in [0, last] {
        let count = s.host.schedule.stages[k].packing.output_count();
        // Fresh encryptions of random polynomials under the public key.
        let mut f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        let forged = (0..count)
            .map(|_| forger.encrypted(&forger.random_poly(&mut rng)))
            .collect();
        f.attack_integrity(&s.enclave, &s.host, forged);
        // Well-formed bytes with random coefficients.
        let mut f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        let forged = (0..count).map(|_| forger.random_bytes(&mut rng)).collect();
        f.attack_integrity(&s.enclave, &s.host, forged);
    }
    others_still_served(&mut s, by);
}

#[test]
fn attack_replayed_stage_result() {
    let mut s = lenient();
    let id = s.model_id();
    let x = s.x.clone();
    let by = bystander(&mut s, &x);
    let last = s.host.schedule.stages.len() - 1;

    // An earlier, finished query on another input: the host keeps its results.
    let mut old = start(&s.enclave, &s.keys, id, &[other_input()]);
    let old_results: Vec<Vec<Vec<u8>>> = (0..=last)
        .map(|k| {
            old.advance_to(&s.enclave, &s.host, k);
            old.honest(&s.host)
        })
        .collect();
    old.finish(&s.enclave, &s.keys, &s.host, &s.q);

    // Replayed into a new query at the same stage.
    let mut xq = other_input();
    xq.reverse();
    for (k, old_result) in old_results.iter().enumerate() {
        let mut f = start(&s.enclave, &s.keys, id, &[xq.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        f.attack_integrity(&s.enclave, &s.host, old_result.clone());
    }

    // Within one query: stage 0's result again after it was accepted.
    let mut f = start(&s.enclave, &s.keys, id, &[xq.clone()]);
    let out0 = f.honest(&s.host);
    f.advance(&s.enclave, &s.host);
    let msg = f.attack_as(&s.enclave, &s.host, 0, out0.clone());
    refused_publicly(&msg, "stage 0 out of order (expected 1)", &[0, 1]);

    // Within one query: stage 0's result again, labelled as stage 1.
    let mut f = start(&s.enclave, &s.keys, id, &[xq.clone()]);
    let out0 = f.honest(&s.host);
    f.advance(&s.enclave, &s.host);
    let msg = f.attack(&s.enclave, &s.host, out0);
    let counts: Vec<usize> = s
        .host
        .schedule
        .stages
        .iter()
        .map(|st| st.packing.output_count())
        .collect();
    if counts[0] == counts[1] {
        assert_eq!(msg, INTEGRITY_FAILURE);
    } else {
        refused_publicly(&msg, "ciphertexts, got", &[1, counts[0], counts[1]]);
    }

    others_still_served(&mut s, by);
}

#[test]
fn attack_reordered_stages() {
    // Stage 1 before stage 0.
    let mut s = lenient();
    let id = s.model_id();
    let by = bystander(&mut s, &other_input());
    let f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
    let out0 = f.honest(&s.host);
    let msg = f.attack_as(&s.enclave, &s.host, 1, out0);
    refused_publicly(&msg, "stage 1 out of order (expected 0)", &[0, 1]);
    others_still_served(&mut s, by);

    // Output ciphertexts swapped within a stage: 256 images per query give
    // two output ciphertexts in each stage, each holding real images.
    let mut s = batch_setup(256);
    let id = s.model_id();
    let counts: Vec<usize> = s
        .host
        .schedule
        .stages
        .iter()
        .map(|st| st.packing.output_count())
        .collect();
    assert!(counts.iter().all(|&c| c >= 2), "{counts:?}");
    let batch = images(256, 7);
    let mut by = start(&s.enclave, &s.keys, id, &batch);
    by.advance(&s.enclave, &s.host);
    for (k, &count) in counts.iter().enumerate() {
        for (a, b) in [(0, 1), (0, count - 1)] {
            let mut f = start(&s.enclave, &s.keys, id, &batch);
            f.advance_to(&s.enclave, &s.host, k);
            let mut forged = f.honest(&s.host);
            forged.swap(a, b);
            f.attack_integrity(&s.enclave, &s.host, forged);
        }
        // All of them rotated.
        let mut f = start(&s.enclave, &s.keys, id, &batch);
        f.advance_to(&s.enclave, &s.host, k);
        let mut forged = f.honest(&s.host);
        forged.rotate_left(1);
        f.attack_integrity(&s.enclave, &s.host, forged);
    }
    assert_eq!(s.status().sessions, 1);
    by.finish(&s.enclave, &s.keys, &s.host, &s.q);
    let f = start(&s.enclave, &s.keys, id, &batch[..3]);
    f.finish(&s.enclave, &s.keys, &s.host, &s.q);
    assert_eq!(s.status().sessions, 0);
}

#[test]
fn attack_dropped_and_truncated() {
    let mut s = batch_setup(256);
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    let batch = images(256, 11);
    let mut by = start(&s.enclave, &s.keys, id, &batch);
    by.advance(&s.enclave, &s.host);
    let len = encoded_len(&s.host.par, forger.level, 3).unwrap();
    type Case = (&'static str, &'static str, fn(&mut Vec<Vec<u8>>, &Forger));
    let cases: [Case; 10] = [
        ("one dropped", "ciphertexts, got", |v, _| {
            v.pop();
        }),
        ("all dropped", "ciphertexts, got", |v, _| v.clear()),
        ("one repeated", "ciphertexts, got", |v, _| {
            v.push(v[0].clone())
        }),
        ("a fresh one appended", "ciphertexts, got", |v, f| {
            v.push(f.encrypted(&[1]))
        }),
        ("truncated by 3 bytes", "bytes, expected", |v, _| {
            let n = v[0].len() - 3;
            v[0].truncate(n)
        }),
        ("truncated to its header", "bytes, expected", |v, _| {
            v[1].truncate(6)
        }),
        ("one byte longer", "bytes, expected", |v, _| v[0].push(0)),
        (
            "degree 1 instead of 2",
            "2 polynomials, expected 3",
            |v, f| {
                let c = f.encrypt(&[1]);
                let two = Ciphertext::new(vec![c[0].clone(), c[1].clone()], &f.par).unwrap();
                v[0] = ciphertext_to_bytes(&two);
            },
        ),
        ("bad magic", "bad magic", |v, _| v[0][0] ^= 0x20),
        (
            "coefficient out of range",
            "out of range for its prime",
            |v, f| {
                // The first coefficient, all ones: above its prime.
                let w = f.first_width();
                v[0][6..6 + w].fill(0xff);
            },
        ),
    ];
    for (k, st) in s.host.schedule.stages.iter().enumerate() {
        let count = st.packing.output_count();
        assert!(count >= 2);
        for (what, says, mutate) in cases {
            let mut f = start(&s.enclave, &s.keys, id, &batch[..1]);
            f.advance_to(&s.enclave, &s.host, k);
            let mut forged = f.honest(&s.host);
            mutate(&mut forged, &forger);
            let given = forged.len();
            let msg = f.attack(&s.enclave, &s.host, forged);
            // Only counts and sizes the host knows.
            let public = if given != count {
                vec![k, count, given]
            } else {
                vec![len, len - 3, len + 1, 6, 2, 3]
            };
            assert!(msg.contains(says), "stage {k}, {what}: {msg}");
            refused_publicly(&msg, says, &public);
        }
        // One byte flipped inside a coefficient: well formed, wrong value.
        let mut f = start(&s.enclave, &s.keys, id, &batch[..1]);
        f.advance_to(&s.enclave, &s.host, k);
        let mut forged = f.honest(&s.host);
        forged[0][6] ^= 1;
        f.attack_integrity(&s.enclave, &s.host, forged);
    }
    assert_eq!(s.status().sessions, 1);
    by.finish(&s.enclave, &s.keys, &s.host, &s.q);
    let f = start(&s.enclave, &s.keys, id, &batch[..2]);
    f.finish(&s.enclave, &s.keys, &s.host, &s.q);
    assert_eq!(s.status().sessions, 0);
}

#[test]
fn attack_scaled_result() {
    let mut s = lenient();
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    let by = bystander(&mut s, &other_input());
    let last = s.host.schedule.stages.len() - 1;
    type Scale = fn(&Forger, &[u8]) -> Vec<u8>;
    let scales: [(&str, i64, Scale); 4] = [
        ("times plaintext 2", 2, |f, c| f.times(c, 2)),
        ("added to itself", 2, |f, c| f.doubled(c)),
        ("negated", -1, |f, c| f.negated(c)),
        ("times -2", -2, |f, c| f.negated(&f.doubled(c))),
    ];
    // What each scaling decrypts to, released by an unchecked enclave.
    let mut u = Unchecked::new();
    let acc = u.honest_acc();
    for (what, c, scale) in scales {
        let got = u.run(|f, h| h.iter().map(|ct| scale(f, ct)).collect());
        let want = u.release(acc.iter().map(|a| a * c).collect());
        assert_eq!(bits(&got), bits(&want), "{what}");
    }
    for k in [0, last] {
        for (what, _, scale) in scales {
            let mut f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
            f.advance_to(&s.enclave, &s.host, k);
            let forged: Vec<Vec<u8>> = f
                .honest(&s.host)
                .iter()
                .map(|c| scale(&forger, c))
                .collect();
            let msg = f.attack(&s.enclave, &s.host, forged);
            assert_eq!(msg, INTEGRITY_FAILURE, "stage {k}, result {what}");
        }
    }
    others_still_served(&mut s, by);
}

#[test]
fn attack_other_sessions_ciphertexts() {
    let mut s = lenient();
    let id = s.model_id();
    let last = s.host.schedule.stages.len() - 1;
    let xa = other_input();
    let mut xb = s.x.clone();
    xb.reverse();
    for k in [0, last] {
        // Two concurrent sessions on the same model, both at stage k.
        let mut a = start(&s.enclave, &s.keys, id, std::slice::from_ref(&xa));
        let mut b = start(&s.enclave, &s.keys, id, std::slice::from_ref(&xb));
        a.advance_to(&s.enclave, &s.host, k);
        b.advance_to(&s.enclave, &s.host, k);
        // A's result for B.
        let from_a = a.honest(&s.host);
        b.attack_integrity(&s.enclave, &s.host, from_a.clone());
        // Another session's honest result with A's added in.
        let mut c = start(&s.enclave, &s.keys, id, &[xb.clone()]);
        c.advance_to(&s.enclave, &s.host, k);
        let forger = Forger::new(&s.host, &s.keys.public_key);
        let mixed = c
            .honest(&s.host)
            .iter()
            .zip(&from_a)
            .map(|(x, y)| {
                let sum = &forger.parse(x) + &forger.parse(y);
                ciphertext_to_bytes(&sum)
            })
            .collect();
        c.attack_integrity(&s.enclave, &s.host, mixed);
        // A, the victim of the mixing, is unaffected.
        a.finish(&s.enclave, &s.keys, &s.host, &s.q);
    }
    let by = bystander(&mut s, &xa);
    others_still_served(&mut s, by);
}

#[test]
fn attack_other_models_ciphertexts() {
    let mut s = lenient();
    let y = s.model_id();
    let last = s.host.schedule.stages.len() - 1;
    // Model X: other weights, same key set.
    let qx = tiny_variant();
    let schedule_x = Schedule::compile(&qx, 1).unwrap();
    assert_eq!(schedule_x.he, s.host.schedule.he);
    let host_x = HostModel::new(&qx, &schedule_x, &s.keys.public_key);
    let x = register(&s.enclave, &s.keys, &host_x).model_id;
    // Model Z: Y's weights under another key set.
    let keys_z = create_keys(&s.enclave, &s.host.schedule.he);
    let host_z = HostModel::new(&s.q, &s.host.schedule, &keys_z.public_key);
    let z = register(&s.enclave, &keys_z, &host_z).model_id;
    assert!(x != y && z != y && x != z);
    // Honest sessions of X and Z, mid-query.
    let mut on_x = start(&s.enclave, &s.keys, x, &[s.x.clone()]);
    on_x.advance(&s.enclave, &host_x);
    let mut on_z = start(&s.enclave, &keys_z, z, &[s.x.clone()]);
    on_z.advance(&s.enclave, &host_z);
    let by = bystander(&mut s, &other_input());

    for k in [0, last] {
        // Y's session, stage k evaluated with X's weights.
        let mut f = start(&s.enclave, &s.keys, y, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        let forged = host_x.evaluate(k, &f.input);
        f.attack_integrity(&s.enclave, &s.host, forged);
        // With Z's weights (another key set).
        let mut f = start(&s.enclave, &s.keys, y, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        let forged = host_z.evaluate(k, &f.input);
        f.attack_integrity(&s.enclave, &s.host, forged);
        // The result of a query of Z (same weights, same input, other keys).
        let mut g = start(&s.enclave, &keys_z, z, &[s.x.clone()]);
        g.advance_to(&s.enclave, &host_z, k);
        let mut f = start(&s.enclave, &s.keys, y, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        f.attack_integrity(&s.enclave, &s.host, g.honest(&host_z));
        g.finish(&s.enclave, &keys_z, &host_z, &s.q);
    }

    // StartQuery naming another model than the session's.
    for other in [x, z] {
        let mut dp = hello(&s.enclave, &s.keys, y).unwrap();
        let input = dp.encrypt(&s.keys.public_key, &s.x);
        let payload = dp.query_payload(&input);
        let msg = refused(s.enclave.handle(Request::StartQuery {
            session: dp.channel.session,
            model_id: other,
            payload: payload.clone(),
            input: input.clone(),
        }));
        refused_publicly(&msg, "another model than the session's", &[]);
        let msg = error_of(s.enclave.handle(Request::StartQuery {
            session: dp.channel.session,
            model_id: y,
            payload,
            input,
        }));
        assert!(msg.contains("unknown or closed session"), "{msg}");
    }

    on_x.finish(&s.enclave, &s.keys, &host_x, &qx);
    on_z.finish(&s.enclave, &keys_z, &host_z, &s.q);
    others_still_served(&mut s, by);
}

#[test]
fn attack_chosen_plaintext_ciphertext() {
    // The forgeries decrypt to what the host chose: an unchecked enclave
    // releases them.
    let mut u = Unchecked::new();
    let acc = u.honest_acc();
    assert_eq!(
        bits(&u.run(|_, h| h.to_vec())),
        bits(&reference(&u.q, &u.x))
    );
    let zero = vec![0i64; u.forger.degree()];
    let want_zero = bits(&u.release(vec![0; acc.len()]));
    let got = u.run(|f, h| h.iter().map(|_| f.encrypted(&zero)).collect());
    assert_eq!(bits(&got), want_zero, "Enc(0) did not decrypt to 0");
    let got = u.run(|f, h| h.iter().map(|_| f.trivial(&zero)).collect());
    assert_eq!(bits(&got), want_zero, "(Δ·0, 0, 0) did not decrypt to 0");
    let last = u.last();
    for j in 0..acc.len() {
        let mut want = acc.clone();
        want[j] += 5;
        let schedule = u.host.schedule.clone();
        let got = u.run(|f, h| nudged(f, &schedule, last, h, 0, j, 5));
        assert_eq!(bits(&got), bits(&u.release(want)), "output {j} + 5");
    }

    // The attested enclave refuses every one of them, at every stage.
    let mut s = lenient();
    let last = s.host.schedule.stages.len() - 1;
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    let by = bystander(&mut s, &other_input());
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for k in [0, last] {
        let count = s.host.schedule.stages[k].packing.output_count();
        let outs = read_positions(&s.host.schedule, k);
        let mut one_hot = zero.clone();
        one_hot[outs[0][0].1] = 1;
        let forgeries: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("Enc(0)", vec![forger.encrypted(&zero); count]),
            ("trivial 0", vec![forger.trivial(&zero); count]),
            ("Enc(one-hot)", vec![forger.encrypted(&one_hot); count]),
            ("trivial one-hot", vec![forger.trivial(&one_hot); count]),
        ];
        for (what, forged) in forgeries {
            let mut f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
            f.advance_to(&s.enclave, &s.host, k);
            let msg = f.attack(&s.enclave, &s.host, forged);
            assert_eq!(msg, INTEGRITY_FAILURE, "stage {k}: {what}");
        }
        // The honest result plus a chosen delta on every output read.
        let mut f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        let mut forged = f.honest(&s.host);
        for (p, ct) in forged.iter_mut().enumerate() {
            let mut delta = zero.clone();
            for &(_, i) in outs.iter().flatten().filter(|&&(pp, _)| pp == p) {
                delta[i] = rng.random_range(-100..=100);
            }
            *ct = forger.plus(ct, &delta);
        }
        f.attack_integrity(&s.enclave, &s.host, forged);
        // The host's own evaluation of the stage on an input it chose (a
        // one-hot image at stage 0, the encrypted stage input of a one-hot
        // activation later).
        let mut f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        let st = &s.host.schedule.stages[k];
        let n_in = st.spec.c * st.spec.h * st.spec.w;
        let mut chosen = vec![0i64; n_in];
        chosen[0] = 1;
        let packed = s.host.schedule.pack_stage_input(k, &[chosen]).unwrap();
        let chosen_input = encrypt_under(&s.keys.public_key, &s.host.par, &packed);
        let forged = s.host.evaluate(k, &chosen_input);
        f.attack_integrity(&s.enclave, &s.host, forged);
    }
    others_still_served(&mut s, by);
}

#[test]
fn attack_single_coefficient_flip_is_always_refused() {
    let mut s = lenient();
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    let by = bystander(&mut s, &other_input());
    let stages = s.host.schedule.stages.len();
    let mut rng = ChaCha8Rng::seed_from_u64(20);
    let xs = images(20, 21);
    for (trial, x) in xs.iter().enumerate() {
        let k = trial % stages;
        let outs = read_positions(&s.host.schedule, k);
        let out = rng.random_range(0..outs[0].len());
        let mut f = start(&s.enclave, &s.keys, id, std::slice::from_ref(x));
        f.advance_to(&s.enclave, &s.host, k);
        let forged = nudged(&forger, &s.host.schedule, k, &f.honest(&s.host), 0, out, 1);
        let msg = f.attack(&s.enclave, &s.host, forged);
        assert_eq!(
            msg, INTEGRITY_FAILURE,
            "trial {trial}: stage {k}, output {out} + 1"
        );
    }
    others_still_served(&mut s, by);
}

#[test]
fn attack_input_swap() {
    let mut s = lenient();
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    let by = bystander(&mut s, &other_input());

    // (a) Input ciphertexts other than those whose digest the data provider
    // sealed: another image, the same image encrypted again, the same
    // ciphertexts re-randomized, one ciphertext more.
    let owner = hello(&s.enclave, &s.keys, id).unwrap();
    let committed = owner.encrypt(&s.keys.public_key, &s.x);
    let swaps: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "another image",
            owner.encrypt(&s.keys.public_key, &other_input()),
        ),
        ("re-encrypted", owner.encrypt(&s.keys.public_key, &s.x)),
        (
            "re-randomized",
            committed
                .iter()
                .map(|c| forger.rerandomized_input(c))
                .collect(),
        ),
        ("one more", {
            let mut v = committed.clone();
            v.push(committed[0].clone());
            v
        }),
        ("none", vec![]),
    ];
    s.enclave.handle(Request::CloseSession {
        session: owner.channel.session,
    });
    for (what, input) in swaps {
        let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
        let payload = dp.query_payload(&committed);
        let msg = refused(s.enclave.handle(Request::StartQuery {
            session: dp.channel.session,
            model_id: id,
            payload: payload.clone(),
            input,
        }));
        refused_publicly(&msg, "the input ciphertexts", &[]);
        let msg = error_of(s.enclave.handle(Request::StartQuery {
            session: dp.channel.session,
            model_id: id,
            payload,
            input: committed.clone(),
        }));
        assert!(msg.contains("unknown or closed session"), "{what}: {msg}");
    }

    // (b) Another session's input with this session's payload.
    let one = start(&s.enclave, &s.keys, id, &[other_input()]);
    let mut two = hello(&s.enclave, &s.keys, id).unwrap();
    let own = two.encrypt(&s.keys.public_key, &s.x);
    let payload = two.query_payload(&own);
    let msg = refused(s.enclave.handle(Request::StartQuery {
        session: two.channel.session,
        model_id: id,
        payload: payload.clone(),
        input: one.input.clone(),
    }));
    refused_publicly(&msg, "the input ciphertexts", &[]);
    let msg = error_of(s.enclave.handle(Request::StartQuery {
        session: two.channel.session,
        model_id: id,
        payload,
        input: own,
    }));
    assert!(msg.contains("unknown or closed session"), "{msg}");

    // (c) Another session's payload and input, replayed into this session.
    let mut one_dp = hello(&s.enclave, &s.keys, id).unwrap();
    let one_input = one_dp.encrypt(&s.keys.public_key, &other_input());
    let one_payload = one_dp.query_payload(&one_input);
    let mut three = hello(&s.enclave, &s.keys, id).unwrap();
    let own = three.encrypt(&s.keys.public_key, &s.x);
    let payload = three.query_payload(&own);
    let msg = refused(s.enclave.handle(Request::StartQuery {
        session: three.channel.session,
        model_id: id,
        payload: one_payload.clone(),
        input: one_input.clone(),
    }));
    refused_publicly(&msg, "channel", &[0]);
    let msg = error_of(s.enclave.handle(Request::StartQuery {
        session: three.channel.session,
        model_id: id,
        payload,
        input: own,
    }));
    assert!(msg.contains("unknown or closed session"), "{msg}");
    // The session whose payload was replayed still works.
    let r = s.enclave.handle(Request::StartQuery {
        session: one_dp.channel.session,
        model_id: id,
        payload: one_payload.clone(),
        input: one_input.clone(),
    });
    assert!(
        matches!(r, Response::QueryStarted { input: None, .. }),
        "{}",
        short(&r)
    );
    let replayed = Flight {
        dp: one_dp,
        images: vec![other_input()],
        input: one_input.clone(),
        stage: 0,
    };

    // (d) That StartQuery replayed into its own, now running, session.
    let msg = refused(s.enclave.handle(Request::StartQuery {
        session: replayed.session(),
        model_id: id,
        payload: one_payload,
        input: one_input,
    }));
    refused_publicly(&msg, "cannot start a query now", &[]);
    let honest = replayed.honest(&s.host);
    assert_closed(&s.enclave, replayed.session(), 0, honest);

    // The session whose input was stolen in (b) is unaffected.
    one.finish(&s.enclave, &s.keys, &s.host, &s.q);
    others_still_served(&mut s, by);
}

#[test]
fn attack_thin_query_tamper() {
    let mut s = lenient();
    let id = s.model_id();
    let by = bystander(&mut s, &other_input());
    let plan = QueryPlan::of(id, s.keys.key_id, *s.keys.owner.public(), &s.host.schedule).unwrap();
    let mut one_hot = vec![0f32; s.x.len()];
    one_hot[3] = 1.0;
    let zeros = vec![0f32; s.x.len()];
    for chosen in [other_input(), one_hot, zeros] {
        let f = start_thin(&s.enclave, &s.keys, id, &[s.x.clone()]);
        // The host's own encryption of an input it chose, in place of the
        // enclave's encryption of the data provider's.
        let own = encrypt_under(
            &s.keys.public_key,
            &s.host.par,
            &plan.pack_input(&[chosen.as_slice()]).unwrap(),
        );
        assert_eq!(own.len(), f.input.len());
        let forged = s.host.evaluate(0, &own);
        f.attack_integrity(&s.enclave, &s.host, forged);
    }
    // An honest thin query still matches the reference.
    let f = start_thin(&s.enclave, &s.keys, id, &[s.x.clone()]);
    f.finish(&s.enclave, &s.keys, &s.host, &s.q);
    others_still_served(&mut s, by);
}

// --- Input replay by a host that is also a client ------------------------

/// The host opens its own data-provider session on `model_id`, binds the
/// digest of `input` (ciphertexts it saw from someone else) and runs the
/// query with `host`. Returns what the enclave released to it, or `None`
/// if the enclave refused (then the session must be closed).
fn spy_query(
    e: &Enclave,
    keys: &Keys,
    model_id: ModelId,
    host: &HostModel,
    input: &[Vec<u8>],
) -> Option<Vec<f32>> {
    let mut spy = hello(e, keys, model_id).unwrap();
    let payload = seal_msg(
        &mut spy.channel.tx,
        &ClientMessage::Query {
            query_id: spy.query_id,
            input_digest: input_digest(input),
            images: 1,
            // The host can only prove its own seed.
            seed: zeroize::Zeroizing::new(spy.seed),
        },
    );
    let r = e.handle(Request::StartQuery {
        session: spy.channel.session,
        model_id,
        payload,
        input: input.to_vec(),
    });
    if let Response::Error { .. } = r {
        let msg = error_of(e.handle(Request::StageResult {
            session: spy.channel.session,
            stage: 0,
            ciphertexts: host.evaluate(0, input),
        }));
        assert!(msg.contains("unknown or closed session"), "{msg}");
        return None;
    }
    assert!(
        matches!(r, Response::QueryStarted { input: None, .. }),
        "{}",
        short(&r)
    );
    let session = spy.channel.session;
    match run_stages(e, host, session, input.to_vec()) {
        Response::Finished { payload } => Some(spy.result(keys, &payload).logits.to_vec()),
        Response::Error { .. } => {
            assert_closed(e, session, 0, host.evaluate(0, input));
            None
        }
        other => panic!("released: {}", short(&other)),
    }
}

/// The host, acting as a data provider of its own (anyone who verifies the
/// public evidence can open a channel), binds the digest of a victim's
/// input ciphertexts in its own session and runs the query: the enclave
/// decrypts the victim's input and seals the victim's result to the host.
/// Re-randomizing the ciphertexts (adding an encryption of zero) changes
/// their digest, so a cache of digests seen would not stop it.
#[test]
fn attack_replayed_input_in_a_host_opened_session() {
    let mut s = lenient();
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    // The victim's query; the host saw its input in StartQuery.
    let mut victim = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
    victim.advance(&s.enclave, &s.host);
    let seen = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
    let stolen = seen.input.clone();
    let rerandomized: Vec<Vec<u8>> = stolen
        .iter()
        .map(|c| forger.rerandomized_input(c))
        .collect();
    assert_ne!(input_digest(&stolen), input_digest(&rerandomized));
    let victims_result = reference(&s.q, &s.x);
    let mut leaks = Vec::new();
    for (what, input) in [("as sent", &stolen), ("re-randomized", &rerandomized)] {
        if let Some(learned) = spy_query(&s.enclave, &s.keys, id, &s.host, input) {
            leaks.push(format!("{what}: {learned:?}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "BUG: the host replayed a data provider's input in its own session and \
         received that provider's result {leaks:?} (the reference on the provider's \
         input: {victims_result:?})"
    );
    seen.finish(&s.enclave, &s.keys, &s.host, &s.q);
    others_still_served(&mut s, victim);
}

/// Worse, before key sets had owners: anyone could register a model under
/// any key set. The host registers
/// a one-stage model with the victim model's first-layer shape and packing
/// (public) whose weights select input values, then replays ciphertexts it
/// saw (a data provider's input, a thin query's enclave-made input, the
/// enclave's encrypted activations of a running query) as the input of a
/// query of its own: the released "logits" are the victim's plaintext.
#[test]
fn attack_replayed_input_through_a_host_registered_model() {
    let mut s = lenient();
    let id = s.model_id();
    // The victim's quantized input and stage-1 input (activations), for
    // comparison only.
    let xq = s.q.input.quantize(&s.x).unwrap();
    let act = finish_stage(&s.q.stages[0], linear(&s.q.stages[0], &xq));

    // What the host sees: a data provider's input, a thin query's input and
    // the encrypted activations of a running query.
    let mut victim = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
    let dp_input = victim.input.clone();
    victim.advance(&s.enclave, &s.host);
    let activations = victim.input.clone();
    let thin = start_thin(&s.enclave, &s.keys, id, &[s.x.clone()]);
    let thin_input = thin.input.clone();

    let sources = [
        ("a data provider's input", 0, &dp_input, &xq),
        ("a thin query's input", 0, &thin_input, &xq),
        ("a running query's activations", 1, &activations, &act),
    ];
    type Spy = Option<(HostModel, ModelId)>;
    let mut spies: Vec<((usize, usize), Spy)> = Vec::new();
    let mut leaks = Vec::new();
    for (what, stage, input, secret) in sources {
        let n = secret.len();
        let m = s.host.schedule.stages[stage].spec.m.min(n);
        let mut recovered = vec![None; n];
        for offset in (0..n).step_by(m).map(|o| o.min(n - m)) {
            if !spies.iter().any(|(key, _)| *key == (stage, offset)) {
                let spy = selection_model(&mut s, stage, offset);
                spies.push(((stage, offset), spy));
            }
            let Some((_, Some((spy_host, spy_id)))) =
                spies.iter().find(|(key, _)| *key == (stage, offset))
            else {
                continue; // the registration was refused
            };
            if let Some(values) = spy_query(&s.enclave, &s.keys, *spy_id, spy_host, input) {
                for (o, v) in values.iter().enumerate() {
                    recovered[offset + o] = Some(v.round() as i64);
                }
            }
        }
        let recovered: Option<Vec<i64>> = recovered.into_iter().collect();
        if let Some(r) = recovered {
            leaks.push(format!("{what}: {r:?} (the secret: {secret:?})"));
        }
    }
    assert!(
        leaks.is_empty(),
        "BUG: the host decrypted, through a model it registered and its own \
         data-provider session, {leaks:#?}"
    );
    thin.finish(&s.enclave, &s.keys, &s.host, &s.q);
    others_still_served(&mut s, victim);
}

/// The host, as a model provider, registers under the victim's key set a
/// one-stage model shaped like the victim's stage `stage` (shape and
/// packing are public) whose output `o` is input `offset + o`, released as
/// logits (scale 1, no bias). `None` if the enclave refuses the registration.
fn selection_model(s: &mut Setup, stage: usize, offset: usize) -> Option<(HostModel, ModelId)> {
    let mut st = s.q.stages[stage].clone();
    let n: usize = st.input_shape.iter().product();
    let m = st.out_channels;
    st.weight = vec![0; m * n];
    for o in 0..m.min(n - offset) {
        st.weight[o * n + offset + o] = 1;
    }
    st.bias = vec![0; m];
    st.post.clear();
    st.output = StageOutput::Logits;
    st.output_shape = st.linear_output_shape();
    st.acc_scale = vec![1.0; m];
    st.nodes = vec!["select".into()];
    st.reads = hetee_model::TensorRef::Input;
    let q = QuantModel {
        input_shape: st.input_shape.to_vec(),
        input: s.q.input.clone(),
        stages: vec![st.clone()],
        joins: Vec::new(),
        output_shape: Vec::new(),
        softmax: false,
    };
    let mut schedule = s.host.schedule.clone();
    let mut layer = schedule.stages.swap_remove(stage);
    layer.tail = hetee_model::quant::QuantStage {
        weight: Vec::new(),
        ..st
    };
    schedule.stages = vec![layer];
    schedule.input_shape = vec![n];
    let host = HostModel::new(&q, &schedule, &s.keys.public_key);
    // The host speaks with a key of its own: it does not hold the owner's.
    let host_key = hetee_attest::StaticKeypair::generate().unwrap();
    let opened = connect_as(
        &s.enclave,
        s.keys.key_id,
        &s.keys.evidence,
        &s.keys.identity.channel_public_key,
        Some(&host_key),
        &register_message(&s.keys, &host),
    )
    .ok()?;
    let id = opened.registered?.model_id;
    Some((host, id))
}
