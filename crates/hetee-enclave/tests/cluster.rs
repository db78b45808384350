//! Replicas on different (simulated) CPUs share one sealing key, moved
//! only from enclave to enclave through their hosts: the joining enclave
//! then opens the first one's sealed key set, model and state and serves
//! its queries exactly. An enclave with another measurement is refused the
//! key, and a host that forges or swaps a message gets a refusal.

mod common;

use common::*;
use hetee_attest::platform::SimTee;
use hetee_attest::Measurement;
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response, Schedule};

fn on_cpu(measurement: [u8; 32], cpu: u8) -> Enclave {
    Enclave::new(
        Box::new(SimTee::on_cpu(Measurement(measurement), [cpu; 32])),
        EnclaveConfig::default(),
    )
}

/// The joiner's offer: (channel key, evidence).
fn offer(e: &Enclave) -> ([u8; 32], Vec<u8>) {
    match e.handle(Request::PeerOffer) {
        Response::PeerOffer {
            channel_public_key,
            evidence,
        } => (channel_public_key, evidence),
        other => panic!("PeerOffer: {}", short(&other)),
    }
}

fn share(member: &Enclave, offer: &([u8; 32], Vec<u8>)) -> Response {
    member.handle(Request::ShareSealingKey {
        peer_key: offer.0,
        peer_evidence: offer.1.clone(),
    })
}

fn adopt(joiner: &Enclave, shared: &Response) -> Response {
    let Response::SealingKeyShared { message, evidence } = shared else {
        panic!("ShareSealingKey: {}", short(shared))
    };
    joiner.handle(Request::AdoptSealingKey {
        message: message.clone(),
        evidence: evidence.clone(),
    })
}

#[test]
fn a_replica_on_another_cpu_joins_and_serves_the_first_ones_model() {
    let (q, x) = tiny_model();
    let schedule = Schedule::compile(&q, 1).unwrap();
    let a = on_cpu(MEASUREMENT, 1);
    let keys = create_keys(&a, &schedule.he);
    let host = HostModel::new(&q, &schedule, &keys.public_key);
    let reg = register(&a, &keys, &host);

    // Without the cluster key, replica B (another CPU) cannot open A's blobs.
    let b = on_cpu(MEASUREMENT, 2);
    let msg = error_of(b.handle(Request::RestoreKeys {
        sealed: keys.sealed.clone(),
    }));
    assert!(msg.contains("unseal"), "{msg}");

    // The join: B offers, A shares, B adopts.
    let b = on_cpu(MEASUREMENT, 2);
    let shared = share(&a, &offer(&b));
    let sealed_for_b = match adopt(&b, &shared) {
        Response::SealingKeyAdopted { sealed } => sealed,
        other => panic!("AdoptSealingKey: {}", short(&other)),
    };
    for r in [
        Request::RestoreKeys {
            sealed: keys.sealed.clone(),
        },
        Request::RestoreModel {
            sealed: reg.sealed.clone(),
        },
        Request::RestoreState {
            sealed: reg.state.sealed.clone(),
        },
    ] {
        let resp = b.handle(r);
        assert!(!matches!(resp, Response::Error { .. }), "{}", short(&resp));
    }
    let keys_b = reattest(&b, &keys);
    assert_eq!(keys_b.public_key, keys.public_key);
    let got = query(&b, &keys_b, &host, reg.model_id, &x).unwrap();
    assert_eq!(got, reference(&q, &x));

    // B restarts on its CPU: its host hands back the key B sealed for itself.
    let b2 = on_cpu(MEASUREMENT, 2);
    assert!(matches!(
        b2.handle(Request::RestoreSealingKey {
            sealed: sealed_for_b.clone()
        }),
        Response::SealingKeyRestored
    ));
    assert!(matches!(
        b2.handle(Request::RestoreKeys {
            sealed: keys.sealed.clone()
        }),
        Response::KeysRestored { .. }
    ));
    // That blob opens on B's CPU only.
    let c = on_cpu(MEASUREMENT, 3);
    let msg = error_of(c.handle(Request::RestoreSealingKey {
        sealed: sealed_for_b,
    }));
    assert!(msg.contains("unseal"), "{msg}");
}

#[test]
fn attack_an_enclave_with_another_measurement_is_refused_the_key() {
    let a = on_cpu(MEASUREMENT, 1);
    let other = on_cpu([9; 32], 1);
    let msg = error_of(share(&a, &offer(&other)));
    assert!(msg.contains("measurement"), "{msg}");
    // Nor does a member adopt a key shared by an enclave of another build.
    let b = on_cpu(MEASUREMENT, 2);
    let from_other = share(&on_cpu([9; 32], 3), &offer(&on_cpu([9; 32], 4)));
    let msg = error_of(adopt(&b, &from_other));
    assert!(msg.contains("evidence"), "{msg}");
}

#[test]
fn attack_the_host_cannot_plant_read_or_redirect_the_key() {
    let a = on_cpu(MEASUREMENT, 1);
    let b = on_cpu(MEASUREMENT, 2);
    let o = offer(&b);
    // The host offers its own key with B's evidence: the evidence binds B's.
    let host_key = hetee_attest::StaticKeypair::generate().unwrap();
    let msg = error_of(a.handle(Request::ShareSealingKey {
        peer_key: *host_key.public(),
        peer_evidence: o.1.clone(),
    }));
    assert!(msg.contains("report data"), "{msg}");
    // The host plants a key of its own, encrypted to B, with A's evidence
    // from a real share: the evidence binds the real message only.
    let Response::SealingKeyShared { evidence, .. } = share(&a, &o) else {
        panic!()
    };
    let planted = hetee_attest::oneway::seal_to(&o.0, b"hetee/peer-share/v1", &[7; 32]).unwrap();
    let msg = error_of(b.handle(Request::AdoptSealingKey {
        message: planted,
        evidence,
    }));
    assert!(msg.contains("report data"), "{msg}");
    // A share made for B does not open in another joiner C.
    let c = on_cpu(MEASUREMENT, 3);
    let _ = offer(&c);
    let msg = error_of(adopt(&c, &share(&a, &o)));
    assert!(msg.contains("one-way"), "{msg}");
    // After a key set exists, adopting is refused (its blobs would not open).
    let b = on_cpu(MEASUREMENT, 2);
    let (q, _) = tiny_model();
    let _ = create_keys(&b, &Schedule::compile(&q, 1).unwrap().he);
    let msg = error_of(adopt(&b, &share(&a, &offer(&b))));
    assert!(msg.contains("before any key set"), "{msg}");
}
