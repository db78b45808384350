//! Model owners over the attested protocol: only the key set's owner
//! registers, an upload is registered once, the owner manages its model
//! (and nobody else can), and allow lists decide who says hello.
mod common;

use std::sync::Arc;

use common::session_fixtures::*;
use common::*;
use hetee_attest::StaticKeypair;
use hetee_enclave::budget;
use hetee_enclave::messages::{AllowList, ClientMessage, ModelTerms, OutputPolicy};
use hetee_enclave::{Enclave, EnclaveConfig, Schedule};

// The budget is enforced only with the counting allocator installed.
#[global_allocator]
static METER: budget::Meter = budget::Meter;

// --- Owners: registration and management ---------------------------------

const UNLISTED: &str = "this client key is not on the model's allow list";

/// Replaces the local-mode test (local mode is gone): registering is the
/// key set owner's alone. Another key, even one that owns a key set of its
/// own in the same enclave, is refused and nothing is stored.
#[test]
fn only_the_key_set_owner_registers_models() {
    let _g = shared();
    let mut s = Setup::new();
    let mallory = Arc::new(StaticKeypair::generate().unwrap());
    let own = create_keys_for(&s.enclave, &s.host.schedule.he, mallory.clone());
    let before = s.status();
    assert_eq!(counts(&before), (2, 1, 0));

    // A new upload under the victim's key set (batch 2: other commitment).
    let host2 = HostModel::new(
        &s.q,
        &Schedule::compile(&s.q, 2).unwrap(),
        &s.keys.public_key,
    );
    let msg = register_message(&s.keys, &host2);
    let anonymous = StaticKeypair::generate().unwrap();
    for (name, who) in [("a fresh key", &anonymous), ("another owner", &*mallory)] {
        let err = connect_as(
            &s.enclave,
            s.keys.key_id,
            &s.keys.evidence,
            &s.keys.identity.channel_public_key,
            Some(who),
            &msg,
        )
        .err()
        .unwrap_or_else(|| panic!("{name} registered a model under another's key set"));
        assert!(err.contains(NOT_OWNER), "{name}: {err}");
        assert_eq!(counts(&s.status()), counts(&before), "{name}");
    }
    // Nor through a channel to a key set it owns.
    let err = connect(&s.enclave, &own, &msg)
        .err()
        .expect("registered under another key set than the channel's");
    assert!(err.contains("another key set than its channel"), "{err}");
    assert_eq!(counts(&s.status()), counts(&before));

    // The owner can.
    let reg = register(&s.enclave, &s.keys, &host2);
    assert_ne!(reg.model_id, s.model_id());
    assert_eq!(s.status().models, before.models + 1);
}

/// One registration per upload (key set + commitment): the owner cannot
/// change a registered model's terms or schedule by registering it again.
#[test]
fn an_upload_is_registered_once() {
    let _g = shared();
    let mut s = Setup::new();
    let id = s.model_id();
    let again = [
        register_message(&s.keys, &s.host),
        register_message_with(&s.keys, &s.host, OutputPolicy::Label, Some(1)),
        registration(
            &s.keys,
            s.host.commitment(),
            Schedule::compile(&s.q, 2).unwrap(),
            &s.host.plain_weights,
            ModelTerms::default(),
        ),
    ];
    for msg in &again {
        let err = connect(&s.enclave, &s.keys, msg)
            .err()
            .expect("an upload was registered twice");
        assert!(
            err.contains("this upload is already registered; a model's secrets never change"),
            "{err}"
        );
    }
    assert_eq!(counts(&s.status()), (1, 1, 0));
    // The model keeps its terms: all logits, no budget.
    let r = report(&s.enclave, &s.keys, id);
    assert_eq!(r.terms, ModelTerms::default());
    let x = s.x.clone();
    for _ in 0..2 {
        assert_eq!(bits(&s.query(&x).unwrap()), bits(&reference(&s.q, &x)));
    }
}

#[test]
fn the_owner_manages_its_model_and_nobody_else_can() {
    let _g = shared();
    let mut s = Setup::new();
    let id = s.model_id();

    let r = report(&s.enclave, &s.keys, id);
    assert_eq!(r.model_id, id);
    assert_eq!((r.version, r.locked, r.failures), (1, false, 0));
    assert_eq!(r.terms, ModelTerms::default());
    assert_eq!(r.allow, AllowList::Open);
    assert!(r.spent.is_empty() && r.incidents.is_empty());

    // Another key: every management message is refused and changes nothing.
    let mallory = Arc::new(StaticKeypair::generate().unwrap());
    let listed = AllowList::Only(vec![*mallory.public()]);
    let msgs = [
        ClientMessage::ModelStatus { model_id: id },
        ClientMessage::Unlock { model_id: id },
        ClientMessage::SetAllowList {
            model_id: id,
            allow: listed.clone(),
        },
    ];
    for msg in &msgs {
        let err = connect_as(
            &s.enclave,
            s.keys.key_id,
            &s.keys.evidence,
            &s.keys.identity.channel_public_key,
            Some(&mallory),
            msg,
        )
        .err()
        .unwrap_or_else(|| panic!("a non-owner's {msg:?} was accepted"));
        assert!(err.contains(NOT_OWNER), "{err}");
    }
    // Owning another key set does not help either.
    let own = create_keys_for(&s.enclave, &s.host.schedule.he, mallory.clone());
    for msg in &msgs {
        let err = connect(&s.enclave, &own, msg)
            .err()
            .unwrap_or_else(|| panic!("{msg:?} through another key set was accepted"));
        assert!(err.contains("no such model under this key set"), "{err}");
    }
    assert_eq!(s.status().sessions, 0);
    let r = report(&s.enclave, &s.keys, id);
    assert_eq!((r.version, r.locked), (1, false));
    assert_eq!(r.allow, AllowList::Open);

    // The owner's changes each give a new version and sealed state.
    let (r, sealed) = manage(&s.enclave, &s.keys, &ClientMessage::Unlock { model_id: id }).unwrap();
    let sealed = sealed.expect("unlock gives a new sealed state");
    assert_eq!((r.version, sealed.version, sealed.model_id), (2, 2, id));
    assert!(!r.locked);
    let (r, sealed) = manage(
        &s.enclave,
        &s.keys,
        &ClientMessage::SetAllowList {
            model_id: id,
            allow: listed.clone(),
        },
    )
    .unwrap();
    assert_eq!((r.version, sealed.unwrap().version), (3, 3));
    assert_eq!(r.allow, listed);
    assert_eq!(report(&s.enclave, &s.keys, id).allow, listed);

    // An unknown model.
    let err = connect(
        &s.enclave,
        &s.keys,
        &ClientMessage::ModelStatus { model_id: [9; 16] },
    )
    .err()
    .expect("the status of an unknown model");
    assert!(err.contains("no such model under this key set"), "{err}");
    assert_eq!(s.status().sessions, 0);
}

#[test]
fn the_allow_list_refuses_unlisted_keys_at_hello() {
    let _g = shared();
    let alice = StaticKeypair::generate().unwrap();
    let bob = StaticKeypair::generate().unwrap();
    let mut s = Setup::with_terms(
        EnclaveConfig::default(),
        ModelTerms::default(),
        AllowList::Only(vec![*alice.public()]),
    );
    let id = s.model_id();
    let x = s.x.clone();
    for (name, who) in [("bob", Some(&bob)), ("a fresh key", None)] {
        let err = hello_as(&s.enclave, &s.keys, who, id)
            .err()
            .unwrap_or_else(|| panic!("{name} said hello to a model that does not list it"));
        assert!(err.contains(UNLISTED), "{name}: {err}");
        assert_eq!(s.status().sessions, 0);
    }
    let (logits, _) = query_as(&s.enclave, &s.keys, &s.host, id, Some(&alice), &x).unwrap();
    assert_eq!(bits(&logits), bits(&reference(&s.q, &x)));
}

#[test]
fn set_allow_list_takes_effect_for_new_sessions() {
    let _g = shared();
    let mut s = Setup::new();
    let id = s.model_id();
    let x = s.x.clone();
    let alice = StaticKeypair::generate().unwrap();
    let bob = StaticKeypair::generate().unwrap();
    // Bob said hello while the model was open to everyone.
    let mut bob_ready = hello_as(&s.enclave, &s.keys, Some(&bob), id).unwrap();

    let set = |e: &Enclave, keys: &Keys, allow: AllowList| {
        let (r, sealed) = manage(
            e,
            keys,
            &ClientMessage::SetAllowList {
                model_id: id,
                allow: allow.clone(),
            },
        )
        .unwrap();
        assert_eq!(r.allow, allow);
        assert!(sealed.is_some());
    };
    set(
        &mut s.enclave,
        &s.keys,
        AllowList::Only(vec![*alice.public()]),
    );

    let err = hello_as(&s.enclave, &s.keys, Some(&bob), id)
        .err()
        .expect("an unlisted key said hello");
    assert!(err.contains(UNLISTED), "{err}");
    // The session that said hello before is admitted again when its query
    // starts, and closed.
    let input = bob_ready.encrypt(&s.keys.public_key, &x);
    let msg = error_of(bob_ready.start(&s.enclave, id, &input));
    assert!(msg.contains(UNLISTED), "{msg}");
    assert_eq!(s.status().sessions, 0);
    assert!(query_as(&s.enclave, &s.keys, &s.host, id, Some(&alice), &x).is_ok());

    // Open again: bob may query.
    set(&s.enclave, &s.keys, AllowList::Open);
    let (logits, _) = query_as(&s.enclave, &s.keys, &s.host, id, Some(&bob), &x).unwrap();
    assert_eq!(bits(&logits), bits(&reference(&s.q, &x)));
}
