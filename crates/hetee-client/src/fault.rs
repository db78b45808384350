//! What a failed request says about the replica that served it, and so
//! whether a client with several servers may try another one:
//! - [`Fault::Transient`]: the replica (or its enclave, or its view of the
//!   shared store) failed; the same request in a new session elsewhere may
//!   succeed, and nothing about the query itself was refused;
//! - [`Fault::Untrusted`]: this replica's enclave or host failed the
//!   client's checks (attestation refused, a result that does not match
//!   the query): never use it again, but another replica may pass;
//! - [`Fault::Fatal`]: the query itself was refused (budget spent, model
//!   locked, key not allowed, bad input): every replica would refuse it.

use crate::http::HttpError;
use crate::trust::AttestationRefused;

/// How a failed attempt is handled (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Retry in a new session, preferably on another replica.
    Transient,
    /// Exclude this replica; retry on another.
    Untrusted,
    /// Give up: no replica would answer otherwise.
    Fatal,
}

/// The 409 a replica answers when another replica stored the model's state
/// first (the query counted nothing; a new session may retry).
const STATE_RACE: &str = "another replica changed this model's state";

/// Messages of the client's own checks that a host (not the query) broke.
const HOST_MISMATCH: [&str; 4] = [
    "the enclave's result does not match the query",
    "the result's signature does not verify",
    "the enclave's plan does not match the attested keys",
    "the enclave's result has the wrong size",
];

/// Messages that mean the enclave restarted or the channel broke under the
/// client (a new session with fresh evidence fixes it).
pub(crate) const CHANNEL_LOST: [&str; 4] = [
    "evidence is not this enclave's",
    "channel handshake failed",
    "protocol: channel",
    // The enclave's own report of a message 1 it cannot decrypt (made for
    // the channel key of the enclave before a restart).
    "Noise handshake failed",
];

/// Classifies the error of one attempt.
pub fn classify(e: &anyhow::Error) -> Fault {
    for cause in e.chain() {
        if cause.downcast_ref::<AttestationRefused>().is_some() {
            return Fault::Untrusted;
        }
        if let Some(h) = cause.downcast_ref::<HttpError>() {
            return match h {
                HttpError::Unreachable { .. } => Fault::Transient,
                HttpError::Status {
                    status, message, ..
                } => match status {
                    408 | 500..=599 => Fault::Transient,
                    409 if message.contains(STATE_RACE) => Fault::Transient,
                    // The session is gone (the replica or its enclave restarted).
                    404 if message.contains("session") => Fault::Transient,
                    _ if CHANNEL_LOST.iter().any(|m| message.contains(m)) => Fault::Transient,
                    _ => Fault::Fatal,
                },
            };
        }
    }
    let text = format!("{e:#}");
    if HOST_MISMATCH.iter().any(|m| text.contains(m)) {
        Fault::Untrusted
    } else if CHANNEL_LOST.iter().any(|m| text.contains(m)) {
        Fault::Transient
    } else {
        Fault::Fatal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, message: &str) -> anyhow::Error {
        HttpError::Status {
            what: "/v1/sessions".into(),
            status,
            message: message.into(),
        }
        .into()
    }

    #[test]
    fn replica_failures_are_retried_and_refusals_are_not() {
        let down = anyhow::Error::from(HttpError::Unreachable {
            what: "/v1/health".into(),
            base: "http://127.0.0.1:1".into(),
            reason: "Connection refused".into(),
        });
        assert_eq!(classify(&down.context("querying")), Fault::Transient);
        assert_eq!(classify(&status(503, "the enclave died")), Fault::Transient);
        assert_eq!(
            classify(&status(409, &format!("{STATE_RACE} at once"))),
            Fault::Transient
        );
        assert_eq!(classify(&status(404, "unknown session")), Fault::Transient);
        assert_eq!(
            classify(&status(
                409,
                "the enclave refused: this client's query budget for the model is spent"
            )),
            Fault::Fatal
        );
        assert_eq!(classify(&status(400, "malformed input")), Fault::Fatal);
        assert_eq!(classify(&status(404, "unknown model")), Fault::Fatal);
        let refused = anyhow::Error::from(AttestationRefused("another measurement".into()));
        assert_eq!(classify(&refused), Fault::Untrusted);
        let forged = anyhow::anyhow!("the result's signature does not verify");
        assert_eq!(classify(&forged), Fault::Untrusted);
        assert_eq!(classify(&anyhow::anyhow!("bad shape")), Fault::Fatal);
    }
}
