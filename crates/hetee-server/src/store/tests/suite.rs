//! The behaviour every [`Store`] implementation must have, as functions over a [`Backend`].

use std::sync::{Arc, Barrier};

use super::Backend;
use crate::store::{StateRecord, Store, StoreError};

fn kv(k: &str, v: &[u8]) -> (String, Vec<u8>) {
    (k.to_string(), v.to_vec())
}

fn st(id: &str, version: u64, sealed: &[u8]) -> StateRecord {
    StateRecord {
        model_id: id.into(),
        version,
        sealed: sealed.to_vec(),
    }
}

pub(super) fn every_record_round_trips_and_persists(b: &impl Backend) {
    {
        let s = b.open();
        assert_eq!(s.keyset("k1").unwrap(), None);
        assert!(s.models().unwrap().is_empty() && s.jobs().unwrap().is_empty());
        assert!(s.keysets().unwrap().is_empty() && s.states().unwrap().is_empty());
        assert_eq!(s.usage().unwrap().models, 0);
        s.put_keyset("k1", b"keys-1").unwrap();
        s.put_keyset("k2", b"keys-2").unwrap();
        s.put_keyset("k1", b"keys-1b").unwrap();
        s.put_model("m1", b"meta", b"weights").unwrap();
        s.put_model("m2", b"meta2", b"w2").unwrap();
        s.put_model("m3", b"registered", &[]).unwrap();
        assert_eq!(s.model_weights("m2").unwrap().as_deref(), Some(&b"w2"[..]));
        s.set_model_meta("m1", b"meta-v2").unwrap();
        s.put_job("j1", br#"{"state":"done"}"#).unwrap();
        assert!(s.put_state("m1", 1, b"state-1").unwrap());
        assert!(s.delete_model("m2").unwrap());
        assert!(!s.delete_model("m2").unwrap());
    }
    let s = b.open();
    assert_eq!(s.keyset("k1").unwrap().as_deref(), Some(&b"keys-1b"[..]));
    let keysets = vec![kv("k1", b"keys-1b"), kv("k2", b"keys-2")];
    assert_eq!(s.keysets().unwrap(), keysets);
    assert_eq!(
        s.model_meta("m1").unwrap().as_deref(),
        Some(&b"meta-v2"[..])
    );
    assert_eq!(
        s.model_weights("m1").unwrap().as_deref(),
        Some(&b"weights"[..])
    );
    // A model stored with no weights has empty weights, not missing ones.
    assert_eq!(s.model_weights("m3").unwrap(), Some(Vec::new()));
    assert_eq!(
        s.models().unwrap(),
        vec![kv("m1", b"meta-v2"), kv("m3", b"registered")]
    );
    assert_eq!(s.model_meta("m2").unwrap(), None);
    assert_eq!(s.model_weights("m2").unwrap(), None);
    assert_eq!(
        s.job("j1").unwrap().as_deref(),
        Some(&br#"{"state":"done"}"#[..])
    );
    assert_eq!(s.jobs().unwrap(), vec![kv("j1", br#"{"state":"done"}"#)]);
    assert_eq!(s.state("m1").unwrap(), Some(st("m1", 1, b"state-1")));
    assert_eq!(s.state_versions().unwrap(), vec![("m1".to_string(), 1)]);
    assert_eq!(s.model_ids().unwrap(), vec!["m1", "m3"]);
    assert_eq!(s.state("m3").unwrap(), None);
    let u = s.usage().unwrap();
    assert_eq!((u.models, u.keysets, u.jobs), (2, 2, 1));
    // Several job records at once (the job log writes them in batches).
    let batch = vec![kv("j2", b"{}"), kv("j3", b"[]"), kv("j1", b"null")];
    s.put_jobs(&batch).unwrap();
    drop(s);
    let s = b.open();
    assert_eq!(
        s.jobs().unwrap(),
        vec![kv("j1", b"null"), kv("j2", b"{}"), kv("j3", b"[]")]
    );
    assert!(u.file_bytes > 0);
}

pub(super) fn updating_missing_model_meta_is_not_found(b: &impl Backend) {
    let s = b.open();
    let err = s.set_model_meta("nope", b"m").unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_eq!(
        (err.http_status(), err.to_string()),
        (404, "model nope not found".into())
    );
    assert_eq!(s.model_meta("nope").unwrap(), None);
    s.put_job("j", b"{}").unwrap(); // the failed update left no lock behind
}

/// Weights of a few MiB, not a multiple of any chunk size, every byte position distinct.
fn big_weights(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect()
}

pub(super) fn large_weights_round_trip_in_chunks(b: &impl Backend) {
    let s = b.open();
    let w = big_weights((3 << 20) + 12_345);
    s.put_model("big", b"meta", &w).unwrap();
    drop(s);
    let s = b.open();
    let back = s.model_weights("big").unwrap().unwrap();
    assert!(back == w, "the weights came back different");
}

pub(super) fn replacing_a_model_leaves_no_stale_weights(b: &impl Backend) {
    let s = b.open();
    s.put_model("m", b"meta-1", &big_weights(5 << 20)).unwrap();
    s.put_model("m", b"meta-2", b"short").unwrap();
    assert_eq!(
        s.model_weights("m").unwrap().as_deref(),
        Some(&b"short"[..])
    );
    assert_eq!(s.model_meta("m").unwrap().as_deref(), Some(&b"meta-2"[..]));
    assert!(s.delete_model("m").unwrap());
    assert_eq!(s.model_weights("m").unwrap(), None);
    // Deleting frees the chunks: a new model of that id starts empty.
    s.put_model("m", b"meta-3", &[]).unwrap();
    assert_eq!(s.model_weights("m").unwrap(), Some(Vec::new()));
}

pub(super) fn the_store_is_shared_across_threads(b: &impl Backend) {
    fn send_sync<T: Send + Sync + ?Sized>() {}
    send_sync::<dyn Store>();
    let s = b.open();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let id = format!("j{t}-{i}");
                    s.put_job(&id, id.as_bytes()).unwrap();
                    assert_eq!(s.job(&id).unwrap(), Some(id.into_bytes()));
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(s.usage().unwrap().jobs, 40);
}

pub(super) fn the_newest_model_state_wins_whatever_the_order_of_writes(b: &impl Backend) {
    let s = b.open();
    assert!(s.put_state("m", 2, b"two").unwrap());
    // An older version arriving late (concurrent queries) is not stored.
    assert!(!s.put_state("m", 1, b"one").unwrap());
    assert!(!s.put_state("m", 2, b"two again").unwrap());
    assert_eq!(s.states().unwrap(), vec![st("m", 2, b"two")]);
    assert!(s.put_state("m", 3, b"three").unwrap());
    assert!(s.put_state("other", 1, b"x").unwrap());
    assert_eq!(
        s.states().unwrap(),
        vec![st("m", 3, b"three"), st("other", 1, b"x")]
    );
    drop(s);
    let s = b.open();
    assert_eq!(s.states().unwrap().len(), 2);
    assert_eq!(s.state("m").unwrap(), Some(st("m", 3, b"three")));
}

/// Two replicas that start from the same state and change it produce the same next version:
/// exactly one of them may store it (the other's change, e.g. spending the last query of a
/// budget, must be refused).
pub(super) fn of_concurrent_writers_of_one_state_version_exactly_one_wins(b: &impl Backend) {
    let s = b.open();
    assert!(s.put_state("m", 7, b"base").unwrap());
    for round in 8..14u64 {
        let n = 6;
        let barrier = Arc::new(Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|t| {
                let (s, barrier) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let sealed = format!("writer {t}");
                    (t, s.put_state("m", round, sealed.as_bytes()).unwrap())
                })
            })
            .collect();
        let won: Vec<usize> = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|(_, won)| *won)
            .map(|(t, _)| t)
            .collect();
        assert_eq!(won.len(), 1, "round {round}: winners {won:?}");
        let held = s.state("m").unwrap().unwrap();
        assert_eq!(held.version, round);
        assert_eq!(held.sealed, format!("writer {}", won[0]).into_bytes());
    }
}

pub(super) fn info_and_ping_describe_the_store(b: &impl Backend) {
    let s = b.open();
    s.ping().unwrap();
    let info = s.info();
    assert!(
        ["redb", "postgres"].contains(&info.kind.as_str()),
        "{info:?}"
    );
    assert!(!info.location.is_empty());
    assert!(!info.location.contains('@'), "no credentials: {info:?}");
}
