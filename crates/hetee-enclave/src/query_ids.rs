//! Idempotent queries: a budgeted model remembers, per client key, the
//! last [`MAX_RECENT_QUERIES`] query ids that spent its budget and the
//! digest of each one's input. A client whose replica died after the spend
//! but before the result arrived retries with the same id and the same
//! input (the same images for a thin query; the same encryption seed, so
//! the same ciphertexts, for an HE query): the retry runs without spending
//! again, on any replica, since the ids live in the sealed model state the
//! replicas share. The result is the one the first attempt would have
//! given, so the client learns nothing it had not paid for. The same id
//! with another input is refused: it would be a free query.
//!
//! The bound: only the last [`MAX_RECENT_QUERIES`] spending ids of each
//! client key are kept (first in, first out; a repeat does not refresh its
//! entry). A retry of an older id is a new query and spends again. At 48
//! bytes an id, a client key costs at most 3 KiB of sealed state; a model
//! at [`crate::state::MAX_TRACKED_CLIENTS`] keys, each with 64 recent ids,
//! would hold 192 MiB (the state is cloned and sealed at every spend).

use std::collections::{BTreeMap, VecDeque};

use hetee_proto::ids::{ClientKey, QueryId};
use serde::{Deserialize, Serialize};

/// Most query ids remembered per client key of a budgeted model.
pub const MAX_RECENT_QUERIES: usize = 64;

/// The refusal of a known query id with another input.
pub const ID_REUSED: &str = "this query id was already spent on another input; a retry must \
                             send the same input (draw a new id for a new query)";

/// A query that spent a budget: its id and the digest of its input (what
/// its result binds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpentQuery {
    /// The client's id of the logical query.
    pub query_id: QueryId,
    /// The input's digest (ciphertexts, or plaintext for a thin query).
    pub input_digest: [u8; 32],
}

/// What a model knows of a query id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not among the client's recent ids: a new query.
    New,
    /// The same id and input as a query that already spent: a retry.
    Repeat,
    /// The same id as a recent query, another input.
    Conflict,
}

/// The recent spending query ids of each client key, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentQueries(BTreeMap<ClientKey, VecDeque<SpentQuery>>);

impl RecentQueries {
    /// What `client`'s recent queries say about `q`.
    pub fn seen(&self, client: &ClientKey, q: &SpentQuery) -> Seen {
        let Some(recent) = self.0.get(client) else {
            return Seen::New;
        };
        match recent.iter().find(|r| r.query_id == q.query_id) {
            None => Seen::New,
            Some(r) if r.input_digest == q.input_digest => Seen::Repeat,
            Some(_) => Seen::Conflict,
        }
    }

    /// Remembers that `q` spent, forgetting `client`'s oldest id beyond
    /// [`MAX_RECENT_QUERIES`].
    pub fn record(&mut self, client: &ClientKey, q: SpentQuery) {
        let recent = self.0.entry(*client).or_default();
        recent.push_back(q);
        while recent.len() > MAX_RECENT_QUERIES {
            recent.pop_front();
        }
    }

    /// How many ids are remembered for `client`.
    pub fn count(&self, client: &ClientKey) -> usize {
        self.0.get(client).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: u8, digest: u8) -> SpentQuery {
        SpentQuery {
            query_id: [id; 16],
            input_digest: [digest; 32],
        }
    }

    #[test]
    fn repeats_conflicts_and_the_bound() {
        let mut r = RecentQueries::default();
        let (a, b) = ([1; 32], [2; 32]);
        assert_eq!(r.seen(&a, &q(1, 1)), Seen::New);
        r.record(&a, q(1, 1));
        assert_eq!(r.seen(&a, &q(1, 1)), Seen::Repeat);
        assert_eq!(r.seen(&a, &q(1, 2)), Seen::Conflict);
        // Ids are per client key.
        assert_eq!(r.seen(&b, &q(1, 1)), Seen::New);
        for i in 2..=MAX_RECENT_QUERIES as u8 {
            r.record(&a, q(i, i));
        }
        assert_eq!(r.count(&a), MAX_RECENT_QUERIES);
        assert_eq!(r.seen(&a, &q(1, 1)), Seen::Repeat);
        // One more evicts the first.
        r.record(&a, q(200, 200));
        assert_eq!(r.count(&a), MAX_RECENT_QUERIES);
        assert_eq!(r.seen(&a, &q(1, 1)), Seen::New);
        assert_eq!(r.seen(&a, &q(2, 2)), Seen::Repeat);
    }
}
