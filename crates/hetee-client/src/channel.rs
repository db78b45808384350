//! A client's Noise channel to the enclave, relayed by the server: message
//! 1 with `POST /v1/sessions`, message 3 and the first request with
//! `POST /v1/sessions/{id}/finish`.

use anyhow::{anyhow, Context, Result};
use hetee_attest::{ClientHandshake, StaticKeypair, Transport};
use hetee_proto::api::{b64, unb64, FinishSession, OpenSession, Sealed, SessionOpened};
use hetee_proto::messages::{id_hex, ClientMessage, EnclaveMessage, ModelId};
use zeroize::Zeroizing;

use crate::relay::Relay;
use crate::trust::{AttestationRefused, AttestedKeys};

/// An open session: its id on the server and the channel's transport.
pub struct Session {
    /// Session id (hex).
    pub id: String,
    tx: Transport,
}

impl Session {
    /// Handshakes with the attested enclave and sends `first`; returns the
    /// session and the enclave's answer.
    pub fn open(
        api: &dyn Relay,
        keys: &AttestedKeys,
        model_id: Option<&ModelId>,
        first: &ClientMessage,
    ) -> Result<(Self, EnclaveMessage)> {
        Self::open_as(api, keys, model_id, first, None)
    }

    /// [`Session::open`] with a long-term client key, which the enclave
    /// sees (key set ownership, allow lists and query budgets go by client
    /// key); `None`: a throwaway key.
    pub fn open_as(
        api: &dyn Relay,
        keys: &AttestedKeys,
        model_id: Option<&ModelId>,
        first: &ClientMessage,
        client: Option<&StaticKeypair>,
    ) -> Result<(Self, EnclaveMessage)> {
        let (hs, msg1) = match client {
            Some(k) => ClientHandshake::with_client_key(k, &keys.channel_key, &keys.evidence_hash)?,
            None => ClientHandshake::new(&keys.channel_key, &keys.evidence_hash)?,
        };
        let opened: SessionOpened = api.open_session(&OpenSession {
            key_id: id_hex(&keys.key_id),
            model_id: model_id.map(|m| id_hex(m)),
            msg1: b64(&msg1),
        })?;
        let msg2 = unb64(&opened.msg2, "msg2").map_err(|e| anyhow!(e))?;
        // A message 2 that does not complete the handshake with the attested
        // channel key: whoever answered is not the enclave the evidence is for.
        let (tx, msg3) = hs.finish(&msg2).map_err(|e| {
            AttestationRefused(format!(
                "the channel handshake failed: the server's enclave is not the one it attested \
                 (or it restarted; fetch its evidence again): {e}"
            ))
        })?;
        let mut s = Session {
            id: opened.session,
            tx,
        };
        let payload = s.seal(first)?;
        let reply: Sealed = api.finish_session(
            &s.id,
            &FinishSession {
                msg3: b64(&msg3),
                payload: b64(&payload),
            },
        )?;
        let answer = s.open_reply(&reply.payload)?;
        Ok((s, answer))
    }

    /// Seals a message for the enclave.
    pub fn seal(&mut self, m: &ClientMessage) -> Result<Vec<u8>> {
        let plain = Zeroizing::new(postcard::to_allocvec(m)?);
        Ok(self.tx.seal(&plain)?)
    }

    /// Opens the enclave's base64 channel message; a refusal becomes an error.
    pub fn open_reply(&mut self, payload_b64: &str) -> Result<EnclaveMessage> {
        let bytes = unb64(payload_b64, "payload").map_err(|e| anyhow!(e))?;
        let plain = self
            .tx
            .open(&bytes)
            .context("the enclave's answer did not authenticate on the channel")?;
        postcard::from_bytes(&plain).context("the enclave's answer is malformed")
    }
}

/// Loads a client key from `path`, or creates it (mode 0600) if missing.
pub fn load_or_create_key(path: &std::path::Path) -> Result<StaticKeypair> {
    match std::fs::read(path) {
        Ok(b) => {
            let hex = String::from_utf8_lossy(&b);
            let v = hetee_attest::evidence::unhex(hex.trim())
                .map_err(|e| anyhow!("client key {}: {e}", path.display()))?;
            let k: [u8; 32] = v
                .try_into()
                .map_err(|_| anyhow!("client key {} is not 64 hex digits", path.display()))?;
            Ok(StaticKeypair::from_private(&k))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = StaticKeypair::generate()?;
            let hex = Zeroizing::new(hetee_attest::evidence::hex(&k.private_bytes()[..]));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            use std::io::Write;
            opts.open(path)
                .and_then(|mut f| f.write_all(hex.as_bytes()))
                .with_context(|| format!("cannot create client key {}", path.display()))?;
            Ok(k)
        }
        Err(e) => Err(anyhow!("cannot read client key {}: {e}", path.display())),
    }
}
