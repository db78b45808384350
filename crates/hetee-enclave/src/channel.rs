//! A session's channel: the attested identity a client checks, the Noise
//! XK handshake, and the first message on the channel (a data provider's
//! hello, answered here, or an owner's message, handled alone).

use hetee_attest::{EnclaveHandshake, Evidence, Transport};
use hetee_proto::channel::{ClientMessage, EnclaveMessage};
use hetee_proto::host::Response;
use hetee_proto::ids::{he_params_bytes, ClientKey, Identity, KeyId, SessionId};
use zeroize::Zeroizing;

use crate::enclave::{lock, read, refuse, Enclave, Session, MAX_SESSIONS};
use crate::EnclaveError;

/// A finished handshake: a data provider's hello (answered), or an owner's
/// message still to handle alone.
pub(crate) enum Finished {
    Hello(Response),
    Owner {
        key_id: KeyId,
        client: ClientKey,
        msg: ClientMessage,
        tx: Box<Transport>,
    },
}

impl Enclave {
    pub(crate) fn identity(&self, key_id: &KeyId) -> Result<Identity, EnclaveError> {
        let channel_public_key = *self.channel_key()?.public();
        let signing_public_key = self.signing_key().verifying_key().to_bytes();
        let keysets = read(&self.keysets);
        let ks = keysets
            .get(key_id)
            .ok_or_else(|| EnclaveError::Protocol("unknown key set".into()))?;
        Ok(Identity {
            key_id: *key_id,
            measurement: self.measurement().0,
            channel_public_key,
            public_key: ks.public_key.clone(),
            he_params: he_params_bytes(&ks.he),
            signing_public_key,
            owner: ks.owner,
        })
    }

    /// Puts a session (back) in the table.
    pub(crate) fn insert_session(&self, session: SessionId, s: Session) {
        lock(&self.sessions).insert(session, s);
    }

    pub(crate) fn open_channel(
        &self,
        key_id: KeyId,
        evidence: &[u8],
        msg1: &[u8],
    ) -> Result<Response, EnclaveError> {
        let id = self.identity(&key_id)?;
        let ev = Evidence::decode(evidence)?;
        if ev.measurement.0 != id.measurement || ev.report_data != id.report_data() {
            return refuse("the evidence is not this enclave's for this key set");
        }
        let prologue = ev.hash()?;
        let key = self.channel_key()?;
        let (hs, msg2) = EnclaveHandshake::respond(key, &prologue, msg1)?;
        let session: SessionId = rand::random();
        {
            let mut sessions = lock(&self.sessions);
            if sessions.len() >= MAX_SESSIONS && !evict_longest_idle(&mut sessions) {
                return refuse(format!(
                    "{MAX_SESSIONS} sessions are open and none is idle; finish or close some first"
                ));
            }
            sessions.insert(
                session,
                Session::Handshake {
                    hs: Box::new(hs),
                    key_id,
                    idle_since: self.tick(),
                },
            );
        }
        Ok(Response::ChannelOpened { session, msg2 })
    }

    /// The next value of a counter that orders idle sessions: a session
    /// that started waiting earlier has a smaller tick.
    pub(crate) fn tick(&self) -> u64 {
        self.ticks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn take(&self, session: &SessionId) -> Result<Session, EnclaveError> {
        lock(&self.sessions)
            .remove(session)
            .ok_or_else(|| EnclaveError::Protocol("unknown or closed session".into()))
    }

    pub(crate) fn channel_finish(
        &self,
        session: SessionId,
        msg3: &[u8],
        payload: &[u8],
    ) -> Result<Finished, EnclaveError> {
        let Session::Handshake { hs, key_id, .. } = self.take(&session)? else {
            return refuse("the handshake of this session is already finished; session closed");
        };
        let mut tx = hs.finish(msg3)?;
        let client: ClientKey = *tx
            .remote_static()
            .ok_or_else(|| EnclaveError::Protocol("the channel has no client key".into()))?;
        let msg = decode(&tx.open(payload)?)?;
        match msg {
            ClientMessage::Hello { model_id } => {
                let payload = self.hello(key_id, client, model_id, &mut tx)?;
                self.insert_session(
                    session,
                    Session::Ready {
                        tx: Box::new(tx),
                        model_id,
                        client,
                        idle_since: self.tick(),
                    },
                );
                Ok(Finished::Hello(Response::ChannelReply {
                    payload,
                    registered: None,
                    state: None,
                }))
            }
            ClientMessage::Query { .. } | ClientMessage::ThinQuery { .. } => {
                refuse("a query must follow a hello; session closed")
            }
            msg => Ok(Finished::Owner {
                key_id,
                client,
                msg,
                tx: Box::new(tx),
            }),
        }
    }
}

/// Decodes a client message.
pub(crate) fn decode(plain: &[u8]) -> Result<ClientMessage, EnclaveError> {
    postcard::from_bytes(plain)
        .map_err(|e| EnclaveError::Protocol(format!("malformed channel message: {e}")))
}

pub(crate) fn seal(tx: &mut Transport, msg: &EnclaveMessage) -> Result<Vec<u8>, EnclaveError> {
    let plain = Zeroizing::new(
        postcard::to_allocvec(msg)
            .map_err(|e| EnclaveError::Protocol(format!("cannot encode reply: {e}")))?,
    );
    Ok(tx.seal(&plain)?)
}

/// With the session table full, closes the session that has waited longest
/// with nothing in progress (a half-open handshake, or a session between
/// queries), so that new clients are not locked out by idle ones (clients
/// keep sessions between queries). Running and stacked queries are never
/// evicted. Returns whether one was.
fn evict_longest_idle(sessions: &mut std::collections::HashMap<SessionId, Session>) -> bool {
    let oldest = sessions
        .iter()
        .filter_map(|(id, s)| match s {
            Session::Handshake { idle_since, .. } | Session::Ready { idle_since, .. } => {
                Some((*idle_since, *id))
            }
            _ => None,
        })
        .min();
    match oldest {
        Some((_, id)) => {
            sessions.remove(&id);
            true
        }
        None => false,
    }
}
