//! Noise XK channel: handshake binding, tampering, replay, reordering, chunking, framing.

use hetee_attest::channel::{
    client_connect, enclave_accept, ClientHandshake, EnclaveHandshake, StaticKeypair, Transport,
    CHUNK_PLAINTEXT, MAX_NOISE_MESSAGE,
};
use hetee_attest::evidence::{measure, report_data, SimPlatform};
use hetee_attest::{Error, FrameCodec};

fn prologue() -> [u8; 32] {
    let k = [4u8; 32];
    SimPlatform::dev()
        .issue(measure(b"e", b"c"), false, report_data(&k, &[0; 32], b""))
        .hash()
        .unwrap()
}

/// Runs the three handshake steps; returns (client, enclave) transports.
fn pair(enclave: &StaticKeypair, client_pro: &[u8], enclave_pro: &[u8]) -> (Transport, Transport) {
    let (c, m1) = ClientHandshake::new(enclave.public(), client_pro).unwrap();
    let (e, m2) = EnclaveHandshake::respond(enclave, enclave_pro, &m1).unwrap();
    let (ct, m3) = c.finish(&m2).unwrap();
    let et = e.finish(&m3).unwrap();
    (ct, et)
}

#[test]
fn handshake_and_both_directions() {
    let key = StaticKeypair::generate().unwrap();
    let client_key = StaticKeypair::generate().unwrap();
    let p = prologue();
    let (c, m1) = ClientHandshake::with_client_key(&client_key, key.public(), &p).unwrap();
    assert_eq!(m1.len(), 48);
    let (e, m2) = EnclaveHandshake::respond(&key, &p, &m1).unwrap();
    let (mut ct, m3) = c.finish(&m2).unwrap();
    let mut et = e.finish(&m3).unwrap();
    assert_eq!(ct.handshake_hash(), et.handshake_hash());
    assert_eq!(ct.remote_static(), Some(key.public()));
    assert_eq!(et.remote_static(), Some(client_key.public()));

    for msg in [&b"model secrets"[..], b"", b"x"] {
        let sealed = ct.seal(msg).unwrap();
        assert_eq!(&et.open(&sealed).unwrap()[..], msg);
        let back = et.seal(msg).unwrap();
        assert_eq!(&ct.open(&back).unwrap()[..], msg);
    }
    // Debug output never shows key material.
    assert!(!format!("{key:?}").contains("private"));
}

#[test]
fn wrong_enclave_key_fails() {
    let real = StaticKeypair::generate().unwrap();
    let other = StaticKeypair::generate().unwrap();
    let p = prologue();
    // The client believes the enclave key is `other` (e.g. from another enclave's evidence).
    let (_c, m1) = ClientHandshake::new(other.public(), &p).unwrap();
    let err = EnclaveHandshake::respond(&real, &p, &m1).unwrap_err();
    assert!(matches!(err, Error::Handshake { .. }), "{err}");
}

#[test]
fn different_prologue_fails() {
    let key = StaticKeypair::generate().unwrap();
    let p = prologue();
    let mut q = p;
    q[0] ^= 1;
    let (_c, m1) = ClientHandshake::new(key.public(), &p).unwrap();
    let err = EnclaveHandshake::respond(&key, &q, &m1).unwrap_err();
    assert!(matches!(err, Error::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("prologue"));
}

#[test]
fn tampered_handshake_messages_fail() {
    let key = StaticKeypair::generate().unwrap();
    let p = prologue();
    let (c, m1) = ClientHandshake::new(key.public(), &p).unwrap();
    let (e, m2) = EnclaveHandshake::respond(&key, &p, &m1).unwrap();
    let mut bad2 = m2.clone();
    bad2[40] ^= 1;
    assert!(c.finish(&bad2).is_err());

    let (c, m1) = ClientHandshake::new(key.public(), &p).unwrap();
    let (e2, m2) = EnclaveHandshake::respond(&key, &p, &m1).unwrap();
    let (_t, m3) = c.finish(&m2).unwrap();
    let mut bad3 = m3.clone();
    bad3[10] ^= 1;
    assert!(e2.finish(&bad3).is_err());
    // A message 3 from another handshake does not fit either.
    assert!(e.finish(&m3).is_err());
    // Oversized and empty messages are errors, not panics.
    assert!(EnclaveHandshake::respond(&key, &p, &vec![0; MAX_NOISE_MESSAGE + 1]).is_err());
    assert!(EnclaveHandshake::respond(&key, &p, &[]).is_err());
}

#[test]
fn tampered_message_fails_and_poisons() {
    let key = StaticKeypair::generate().unwrap();
    let (mut c, mut e) = pair(&key, &prologue(), &prologue());
    let mut m = c.seal(b"hello enclave").unwrap();
    m[3] ^= 0x80;
    assert!(matches!(e.open(&m), Err(Error::ChannelMessage(_))));
    let next = c.seal(b"next").unwrap();
    assert!(matches!(e.open(&next), Err(Error::ChannelPoisoned)));
    assert!(matches!(e.seal(b"x"), Err(Error::ChannelPoisoned)));
}

#[test]
fn replay_fails() {
    let key = StaticKeypair::generate().unwrap();
    let (mut c, mut e) = pair(&key, &prologue(), &prologue());
    let m = c.seal(b"run layer 3").unwrap();
    assert_eq!(&e.open(&m).unwrap()[..], b"run layer 3");
    let err = e.open(&m).unwrap_err();
    assert!(matches!(err, Error::ChannelMessage(_)), "{err}");
    assert!(err.to_string().contains("replayed"));
}

#[test]
fn reorder_fails() {
    let key = StaticKeypair::generate().unwrap();
    let (mut c, mut e) = pair(&key, &prologue(), &prologue());
    let _first = c.seal(b"first").unwrap();
    let second = c.seal(b"second").unwrap();
    assert!(e.open(&second).is_err());
}

#[test]
fn messages_to_the_other_direction_fail() {
    let key = StaticKeypair::generate().unwrap();
    let (mut c, _e) = pair(&key, &prologue(), &prologue());
    // A client cannot be fed its own message back (reflection).
    let m = c.seal(b"mirror").unwrap();
    assert!(c.open(&m).is_err());
}

#[test]
fn messages_of_any_length_are_chunked() {
    let key = StaticKeypair::generate().unwrap();
    let (mut c, mut e) = pair(&key, &prologue(), &prologue());
    // Short ones too: their scratch buffers are sized to the message.
    for len in [
        0,
        1,
        300,
        CHUNK_PLAINTEXT - 1,
        CHUNK_PLAINTEXT,
        CHUNK_PLAINTEXT + 1,
        2 * CHUNK_PLAINTEXT,
        3 * CHUNK_PLAINTEXT + 12345,
    ] {
        let pt: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        let ct = c.seal(&pt).unwrap();
        let chunks = len.div_ceil(CHUNK_PLAINTEXT).max(1);
        assert_eq!(ct.len(), len + chunks * 17, "len {len}");
        assert_eq!(&e.open(&ct).unwrap()[..], &pt[..], "len {len}");
    }
}

#[test]
fn truncated_or_spliced_chunked_messages_fail() {
    let key = StaticKeypair::generate().unwrap();
    let pt = vec![7u8; 2 * CHUNK_PLAINTEXT + 10];

    // Dropping the last chunk: the remaining chunks decrypt, but the final flag is missing.
    let (mut c, mut e) = pair(&key, &prologue(), &prologue());
    let ct = c.seal(&pt).unwrap();
    let err = e.open(&ct[..2 * MAX_NOISE_MESSAGE]).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");

    // Cutting inside a chunk.
    let (mut c, mut e) = pair(&key, &prologue(), &prologue());
    let ct = c.seal(&pt).unwrap();
    assert!(e.open(&ct[..ct.len() - 1]).is_err());

    // Appending a later message to an earlier one.
    let (mut c, mut e) = pair(&key, &prologue(), &prologue());
    let mut a = c.seal(b"short").unwrap();
    a.resize(MAX_NOISE_MESSAGE, 0); // cannot pad: the chunk no longer authenticates
    assert!(e.open(&a).is_err());

    // Swapping two chunks.
    let (mut c, mut e) = pair(&key, &prologue(), &prologue());
    let ct = c.seal(&pt).unwrap();
    let mut swapped = ct[MAX_NOISE_MESSAGE..2 * MAX_NOISE_MESSAGE].to_vec();
    swapped.extend_from_slice(&ct[..MAX_NOISE_MESSAGE]);
    swapped.extend_from_slice(&ct[2 * MAX_NOISE_MESSAGE..]);
    assert!(e.open(&swapped).is_err());

    // Empty input.
    let (_c, mut e) = pair(&key, &prologue(), &prologue());
    assert!(e.open(&[]).is_err());
}

#[cfg(unix)]
#[test]
fn over_the_frame_layer() {
    use std::os::unix::net::UnixStream;
    let key = StaticKeypair::generate().unwrap();
    let public = *key.public();
    let p = prologue();
    let codec = FrameCodec::new(1 << 20);
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let enclave = std::thread::spawn(move || {
        let mut t = enclave_accept(&mut b, &codec, &key, &p).unwrap();
        let req = t.recv(&codec, &mut b).unwrap();
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(&req);
        t.send(&codec, &mut b, &reply).unwrap();
        // Too large for the codec: refused before encrypting, so the channel stays usable.
        let err = t.send(&codec, &mut b, &vec![0; 1 << 20]).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { .. }));
        t.send(&codec, &mut b, b"bye").unwrap();
    });
    let mut t = client_connect(&mut a, &codec, &public, &p).unwrap();
    let big = vec![0xabu8; 200_000];
    t.send(&codec, &mut a, &big).unwrap();
    let reply = t.recv(&codec, &mut a).unwrap();
    assert_eq!(&reply[..5], b"echo:");
    assert_eq!(&reply[5..], &big[..]);
    assert_eq!(&t.recv(&codec, &mut a).unwrap()[..], b"bye");
    enclave.join().unwrap();
    // The enclave side closed: a clean EOF at a frame boundary.
    assert!(matches!(t.recv(&codec, &mut a), Err(Error::Closed)));
}

/// The whole client path: evidence bytes → policy (binding the channel key) → handshake with the
/// evidence hash as prologue. A host that swaps in its own channel key is caught by the policy.
#[test]
fn attested_channel_end_to_end() {
    use hetee_attest::{Evidence, Policy, SimVerifier};
    let enclave_key = StaticKeypair::generate().unwrap();
    let he_pk_hash = [0x11; 32];
    let params = b"bfv:n=4096";
    let m = measure(b"enclave binary", b"budget=512MiB");
    let ev = SimPlatform::dev().issue(
        m,
        false,
        report_data(enclave_key.public(), &he_pk_hash, params),
    );
    let wire = ev.encode().unwrap();

    // Client side.
    let policy = Policy {
        allow_sim: true,
        ..Policy::new(m)
    };
    let got = Evidence::decode(&wire).unwrap();
    let host_key = StaticKeypair::generate().unwrap();
    let err = policy
        .check_bound(
            &SimVerifier::dev(),
            &got,
            host_key.public(),
            &he_pk_hash,
            params,
            0,
        )
        .unwrap_err();
    assert!(matches!(err, Error::ReportDataMismatch { .. }), "{err}");
    policy
        .check_bound(
            &SimVerifier::dev(),
            &got,
            enclave_key.public(),
            &he_pk_hash,
            params,
            0,
        )
        .unwrap();
    let (c, m1) = ClientHandshake::new(enclave_key.public(), &got.hash().unwrap()).unwrap();

    // Enclave side uses the hash of its own evidence.
    let (e, m2) = EnclaveHandshake::respond(&enclave_key, &ev.hash().unwrap(), &m1).unwrap();
    let (mut ct, m3) = c.finish(&m2).unwrap();
    let mut et = e.finish(&m3).unwrap();
    let q = ct.seal(b"query key").unwrap();
    assert_eq!(&et.open(&q).unwrap()[..], b"query key");
}

#[test]
fn a_saved_private_key_gives_the_same_public_key_and_the_enclave_sees_it() {
    use hetee_attest::{ClientHandshake, EnclaveHandshake, StaticKeypair};
    let client = StaticKeypair::generate().unwrap();
    let again = StaticKeypair::from_private(&client.private_bytes());
    assert_eq!(again.public(), client.public());
    let enclave = StaticKeypair::generate().unwrap();
    let (hs, m1) = ClientHandshake::with_client_key(&again, enclave.public(), b"p").unwrap();
    let (ehs, m2) = EnclaveHandshake::respond(&enclave, b"p", &m1).unwrap();
    let (_tx, m3) = hs.finish(&m2).unwrap();
    let etx = ehs.finish(&m3).unwrap();
    assert_eq!(etx.remote_static(), Some(client.public()));
}
