//! Errors of the PostgreSQL store: what a driver error means for the caller (unreachable,
//! full, anything else), with its causes and without credentials.

use postgres::error::SqlState;

use crate::store::StoreError;

/// Maps a failure during `what` on the database at `location` to a [`StoreError`].
pub(super) fn map_pg_err(location: &str, e: Fail, what: &str) -> StoreError {
    let e = match e {
        Fail::Store(s) => return s,
        Fail::Pg(e) => e,
    };
    let unavailable = |reason: String| StoreError::Unavailable {
        what: what.to_string(),
        location: location.to_string(),
        reason,
    };
    let Some(db) = e.as_db_error() else {
        return match lost_connection(&e) {
            true => unavailable(with_causes(&e)),
            false => StoreError::Io {
                what: what.to_string(),
                reason: format!("{} on {location}", with_causes(&e)),
            },
        };
    };
    let code = db.code();
    let reason = format!("{} ({})", db.message(), code.code());
    if *code == SqlState::DISK_FULL {
        StoreError::Full {
            what: what.to_string(),
            place: "database server",
            fix: "free space on the PostgreSQL server",
            reason,
        }
    } else if code.code().starts_with("08")
        || code.code().starts_with("57P")
        || *code == SqlState::TOO_MANY_CONNECTIONS
    {
        unavailable(reason)
    } else {
        StoreError::Io {
            what: what.to_string(),
            reason: format!("{reason} on {}", location),
        }
    }
}

/// The error and its causes, e.g. `error connecting to server: Connection refused (os error
/// 111)` (the driver's own message names only the first).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let shown = c.to_string();
        if !out.contains(&shown) {
            out = format!("{out}: {shown}");
        }
        cause = c.source();
    }
    out
}

/// Whether a client-side error means the server did not answer or the connection is gone
/// (refused, lost, timed out), as opposed to a malformed row or a bug.
fn lost_connection(e: &postgres::Error) -> bool {
    let shown = e.to_string();
    e.is_closed()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || shown.starts_with("error connecting to server")
        || shown.starts_with("timeout waiting for server")
        || shown.starts_with("error communicating with the server")
}

/// `spec` without anything up to an `@` (user and password), for messages.
pub(crate) fn without_credentials(spec: &str) -> String {
    match spec.rsplit_once('@') {
        Some((_, rest)) => format!("…@{rest}"),
        None => spec.to_string(),
    }
}

/// A failure inside a call: a database error, or a ready store error (e.g. `NotFound`).
pub(crate) enum Fail {
    Pg(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}
