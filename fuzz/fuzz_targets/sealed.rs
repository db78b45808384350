//! Sealed blobs the host hands back to the enclave.
//!
//! The first input byte picks the mode, the rest is the payload:
//! - 0: `seal::unseal` of arbitrary bytes (the host's view: forged blobs);
//! - 1 / 2: `RestoreKeys` / `RestoreModel` of arbitrary blobs through
//!   `Enclave::handle` on an Init'ed enclave;
//! - 3 / 4: the payload is the *plaintext*: it is sealed with the enclave's
//!   secret and measurement (as if the sealing key had leaked) and restored.
//!   This reaches the `postcard` decoding of the snapshots, the schedule
//!   validation and `fhe`'s `SecretKey`/`PublicKey` deserializers. A key set
//!   that restores is then used to encrypt and decrypt (what a query does).
//!
//! Nothing may panic.
#![no_main]

use hetee_attest::seal::{seal, unseal};
use hetee_attest::Measurement;
use hetee_enclave::keys::Sealer;
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response};
use libfuzzer_sys::fuzz_target;

const SECRET: [u8; 32] = [1; 32];
const MEASUREMENT: Measurement = Measurement([2; 32]);

fn enclave() -> Enclave {
    let mut e = Enclave::new();
    let r = e.handle(Request::Init {
        measurement: MEASUREMENT.0,
        platform_secret: SECRET,
        config: EnclaveConfig::default().to_bytes(),
    });
    assert!(matches!(r, Response::Ready), "Init refused: {r:?}");
    e
}

/// Uses a restored key set the way a query does: encrypt, decrypt.
fn use_keys(payload: &[u8]) {
    let sealer = Sealer {
        secret: &SECRET,
        measurement: &MEASUREMENT,
    };
    let Ok(blob) = seal(&SECRET, &MEASUREMENT, "keys-v1", payload) else {
        return;
    };
    let Ok(ks) = sealer.restore_keys(&blob) else {
        return;
    };
    let poly: Vec<i64> = (0..ks.par.degree() as i64).map(|i| i % 5 - 2).collect();
    let Ok(cts) = hetee_enclave::step::encrypt_all(&ks, &[poly]) else {
        return;
    };
    for b in &cts {
        if let Ok(ct) = hetee_he::codec::ciphertext_from_bytes(b, &ks.par, 2) {
            let _ = hetee_enclave::step::decrypt(&ks.sk, &ct, ks.par.plaintext());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => {
            let _ = unseal(&SECRET, &MEASUREMENT, "keys-v1", payload);
            let _ = unseal(&SECRET, &MEASUREMENT, "model-v2", payload);
        }
        1 => {
            let _ = enclave().handle(Request::RestoreKeys {
                sealed: payload.to_vec(),
            });
        }
        2 => {
            let _ = enclave().handle(Request::RestoreModel {
                sealed: payload.to_vec(),
            });
        }
        3 => {
            let sealed = seal(&SECRET, &MEASUREMENT, "keys-v1", payload).expect("seal");
            let _ = enclave().handle(Request::RestoreKeys { sealed });
            use_keys(payload);
        }
        _ => {
            let sealed = seal(&SECRET, &MEASUREMENT, "model-v2", payload).expect("seal");
            let _ = enclave().handle(Request::RestoreModel { sealed });
        }
    }
});
