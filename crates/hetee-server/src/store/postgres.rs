//! The PostgreSQL store (`hetee serve --store postgres://user@host:port/db`), which several
//! `hetee serve` replicas can share.
//!
//! Tables (see [`MIGRATIONS`]): `keysets`, `models` (metadata and the weights' length),
//! `weight_chunks` (the encrypted weights in rows of [`CHUNK_BYTES`], reassembled in order),
//! `jobs` and `model_states` (the newest sealed state of each model with its version), plus
//! `schema_version`. Migrations run in order at open, each at most once, in one transaction
//! under an advisory lock, so replicas starting together do not race.
//!
//! Every write is one transaction: a model's metadata and all its weight chunks become visible
//! together or not at all, whatever happens to the server or the connection in between.
//! [`Store::put_state`] is a single conditional upsert (`… WHERE version < new`), so of two
//! replicas writing the same version exactly one wins.
//!
//! Connections: a small pool of [`postgres::Client`]s. A call that finds the database
//! unreachable, or loses its connection, fails with [`StoreError::Unavailable`] (HTTP 503) and
//! drops the connection; the next call connects again. A pooled connection that died while
//! idle is replaced at once (the call is retried once on a new connection). The client speaks plain TCP (no TLS):
//! use it on loopback or a private network.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use postgres::{Client, Config, NoTls, Transaction};

use super::{StateRecord, Store, StoreError, StoreInfo, StoreUsage};

mod errors;
mod schema;
pub mod testing;
use errors::{map_pg_err, Fail};
pub(crate) use errors::{with_causes, without_credentials};
pub use schema::MIGRATIONS;

/// Bytes per row of `weight_chunks`.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Idle connections kept for reuse.
const POOL_SIZE: usize = 8;
/// How long connecting may take before the call fails as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL store. `Send + Sync`; share it via `Arc`.
pub struct PgStore {
    config: Config,
    location: String,
    idle: Mutex<Vec<Client>>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location)
            .finish()
    }
}

/// The DSN's host, port and database, without user or password (for messages).
fn describe(config: &Config) -> String {
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .next()
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default database)");
    format!("postgres://{host}:{port}/{db}")
}

impl PgStore {
    /// Connects to the database at `dsn` (a `postgres://` URL or `key=value` string) and applies
    /// the migrations it lacks.
    ///
    /// Errors: [`StoreError::BadSpec`] (unparsable DSN), [`StoreError::Unavailable`] (cannot
    /// connect), [`StoreError::SchemaTooNew`], [`StoreError::Io`].
    pub fn open(dsn: &str) -> Result<PgStore, StoreError> {
        Self::open_config(parse_dsn(dsn)?)
    }

    /// [`PgStore::open`] with every table in the schema `schema` (created if missing), e.g. one
    /// schema per test or per deployment sharing a database. `schema` is a plain identifier.
    pub fn open_in_schema(dsn: &str, schema: &str) -> Result<PgStore, StoreError> {
        let plain = !schema.is_empty()
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !plain {
            return Err(StoreError::BadSpec {
                spec: schema.to_string(),
                reason: "a schema name is lower-case letters, digits and _".into(),
            });
        }
        let mut config = parse_dsn(dsn)?;
        // A plain connection creates the schema; the store's own connections then use it.
        let location = describe(&config);
        // CREATE SCHEMA IF NOT EXISTS races with itself: serialize it.
        let created = config.connect(NoTls).and_then(|mut c| {
            c.batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(hashtext('hetee-schema:{schema}')); \
                 CREATE SCHEMA IF NOT EXISTS {schema}; COMMIT"
            ))
        });
        if let Err(e) = created {
            let what = format!("creating schema {schema}");
            return Err(map_pg_err(&location, Fail::Pg(e), &what));
        }
        config.options(&format!("-c search_path={schema}"));
        Self::open_config(config)
    }

    fn open_config(mut config: Config) -> Result<PgStore, StoreError> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true);
        if config.get_application_name().is_none() {
            config.application_name("hetee-serve");
        }
        let store = PgStore {
            location: describe(&config),
            config,
            idle: Mutex::new(Vec::new()),
        };
        store.with(|| "migrating the store's schema".into(), schema::migrate)?;
        Ok(store)
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on a pooled connection (connecting if none is idle) and maps its errors. A
    /// connection that failed or closed is dropped, so the next call connects again.
    fn with<T, E>(
        &self,
        what: impl Fn() -> String,
        mut f: impl FnMut(&mut Client) -> Result<T, E>,
    ) -> Result<T, StoreError>
    where
        E: Into<Fail>,
    {
        // A pooled connection can have died while idle (a database restart, a network cut)
        // without the client noticing: a lost connection on a reused one is retried once on a
        // new connection. The backend of a dead connection ran nothing of this call.
        let pooled = self.lock_idle().pop().filter(|c| !c.is_closed());
        if let Some(client) = pooled {
            match self.attempt(client, &mut f, &what) {
                Err(StoreError::Unavailable { .. }) => {}
                done => return done,
            }
        }
        let client = self
            .config
            .connect(NoTls)
            .map_err(|e| self.map_err(Fail::Pg(e), &what()))?;
        self.attempt(client, &mut f, &what)
    }

    /// One try of [`PgStore::with`] on `client`, which goes back to the pool unless lost.
    fn attempt<T, E>(
        &self,
        mut client: Client,
        f: &mut impl FnMut(&mut Client) -> Result<T, E>,
        what: &impl Fn() -> String,
    ) -> Result<T, StoreError>
    where
        E: Into<Fail>,
    {
        match f(&mut client).map_err(Into::into) {
            Ok(v) => {
                self.give_back(client);
                Ok(v)
            }
            Err(e) => {
                let err = self.map_err(e, &what());
                if !matches!(err, StoreError::Unavailable { .. }) {
                    self.give_back(client);
                }
                Err(err)
            }
        }
    }

    fn give_back(&self, client: Client) {
        let mut idle = self.lock_idle();
        if !client.is_closed() && idle.len() < POOL_SIZE {
            idle.push(client);
        }
    }

    /// Runs `f` in one transaction, committed if `f` succeeds (rolled back otherwise).
    fn txn<T>(
        &self,
        what: impl Fn() -> String,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        self.with(what, |c| {
            let mut tx = c.transaction()?;
            let v = f(&mut tx)?;
            tx.commit()?;
            Ok::<T, Fail>(v)
        })
    }

    fn map_err(&self, e: Fail, what: &str) -> StoreError {
        map_pg_err(&self.location, e, what)
    }

    fn get(&self, sql: &str, what: String, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(
            || what.clone(),
            |c| {
                let row = c.query_opt(sql, &[&id])?;
                Ok::<_, Fail>(row.map(|r| r.try_get(0)).transpose()?)
            },
        )
    }

    fn list(&self, sql: &str, what: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with(
            || format!("listing {what}"),
            |c| {
                let rows = c.query(sql, &[])?;
                let pairs = rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?)));
                Ok::<_, Fail>(pairs.collect::<Result<_, postgres::Error>>()?)
            },
        )
    }

    fn put(&self, sql: &str, what: String, id: &str, value: &[u8]) -> Result<(), StoreError> {
        self.with(
            || what.clone(),
            |c| c.execute(sql, &[&id, &value]).map(drop),
        )
    }
}

fn parse_dsn(dsn: &str) -> Result<Config, StoreError> {
    dsn.parse::<Config>().map_err(|e| StoreError::BadSpec {
        spec: without_credentials(dsn),
        reason: format!("not a PostgreSQL connection string: {e}"),
    })
}

fn i64_of(v: u64, what: &str) -> Result<i64, Fail> {
    i64::try_from(v).map_err(|_| {
        Fail::Store(StoreError::Io {
            what: what.to_string(),
            reason: format!("{v} does not fit a PostgreSQL bigint"),
        })
    })
}

impl Store for PgStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            kind: "postgres".into(),
            location: self.location.clone(),
        }
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.with(
            || "reading the store".into(),
            |c| {
                c.query_one("SELECT 1 FROM schema_version LIMIT 1", &[])
                    .map(drop)
            },
        )
    }

    fn put_keyset(&self, key_id: &str, record: &[u8]) -> Result<(), StoreError> {
        let sql = "INSERT INTO keysets (id, record) VALUES ($1, $2) \
                   ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record";
        self.put(sql, format!("storing keyset {key_id}"), key_id, record)
    }

    fn keyset(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sql = "SELECT record FROM keysets WHERE id = $1";
        self.get(sql, format!("reading keyset {key_id}"), key_id)
    }

    fn keysets(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.list("SELECT id, record FROM keysets ORDER BY id", "keysets")
    }

    fn put_model(&self, model_id: &str, meta: &[u8], weights: &[u8]) -> Result<(), StoreError> {
        let what = format!("storing model {model_id}");
        self.txn(
            || what.clone(),
            |tx| {
                let len = i64_of(weights.len() as u64, &what)?;
                tx.execute(
                    "INSERT INTO models (id, meta, weights_len) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET meta = EXCLUDED.meta, \
                     weights_len = EXCLUDED.weights_len",
                    &[&model_id, &meta, &len],
                )?;
                tx.execute(
                    "DELETE FROM weight_chunks WHERE model_id = $1",
                    &[&model_id],
                )?;
                let insert = tx.prepare(
                    "INSERT INTO weight_chunks (model_id, seq, data) VALUES ($1, $2, $3)",
                )?;
                for (seq, chunk) in weights.chunks(CHUNK_BYTES).enumerate() {
                    let seq = i32::try_from(seq).map_err(|_| {
                        Fail::Store(StoreError::Io {
                            what: what.clone(),
                            reason: "more than 2^31 chunks".into(),
                        })
                    })?;
                    tx.execute(&insert, &[&model_id, &seq, &chunk])?;
                }
                Ok(())
            },
        )
    }

    fn set_model_meta(&self, model_id: &str, meta: &[u8]) -> Result<(), StoreError> {
        let n = self.with(
            || format!("updating model {model_id}"),
            |c| {
                c.execute(
                    "UPDATE models SET meta = $2 WHERE id = $1",
                    &[&model_id, &meta],
                )
            },
        )?;
        match n {
            0 => Err(StoreError::NotFound {
                what: format!("model {model_id}"),
            }),
            _ => Ok(()),
        }
    }

    fn model_meta(&self, model_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sql = "SELECT meta FROM models WHERE id = $1";
        self.get(sql, format!("reading model {model_id}"), model_id)
    }

    fn model_weights(&self, model_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let what = format!("reading the weights of model {model_id}");
        self.with(
            || what.clone(),
            |c| {
                // One snapshot for the length and the chunks.
                let mut tx = c
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()?;
                let Some(row) =
                    tx.query_opt("SELECT weights_len FROM models WHERE id = $1", &[&model_id])?
                else {
                    return Ok(None);
                };
                let len: i64 = row.try_get(0)?;
                let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
                let rows = tx.query(
                    "SELECT data FROM weight_chunks WHERE model_id = $1 ORDER BY seq",
                    &[&model_id],
                )?;
                for r in &rows {
                    out.extend_from_slice(r.try_get::<_, &[u8]>(0)?);
                }
                tx.commit()?;
                if i64::try_from(out.len()).ok() != Some(len) {
                    return Err(Fail::Store(StoreError::Corrupt {
                        reason: format!(
                            "the weights of model {model_id} have {} bytes in their chunks, \
                             {len} expected",
                            out.len()
                        ),
                    }));
                }
                Ok(Some(out))
            },
        )
    }

    fn models(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.list("SELECT id, meta FROM models ORDER BY id", "models")
    }

    fn model_ids(&self) -> Result<Vec<String>, StoreError> {
        self.with(
            || "listing models".into(),
            |c| {
                let rows = c.query("SELECT id FROM models ORDER BY id", &[])?;
                let ids = rows.iter().map(|r| r.try_get(0));
                Ok::<_, Fail>(ids.collect::<Result<_, postgres::Error>>()?)
            },
        )
    }

    fn delete_model(&self, model_id: &str) -> Result<bool, StoreError> {
        // The chunks go with the model (ON DELETE CASCADE), in the same statement.
        let n = self.with(
            || format!("deleting model {model_id}"),
            |c| c.execute("DELETE FROM models WHERE id = $1", &[&model_id]),
        )?;
        Ok(n > 0)
    }

    fn put_job(&self, job_id: &str, record: &[u8]) -> Result<(), StoreError> {
        let sql = "INSERT INTO jobs (id, record) VALUES ($1, $2) \
                   ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record";
        self.put(sql, format!("storing job {job_id}"), job_id, record)
    }

    fn job(&self, job_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sql = "SELECT record FROM jobs WHERE id = $1";
        self.get(sql, format!("reading job {job_id}"), job_id)
    }

    fn jobs(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.list("SELECT id, record FROM jobs ORDER BY id", "jobs")
    }

    fn put_state(&self, model_id: &str, version: u64, sealed: &[u8]) -> Result<bool, StoreError> {
        let what = format!("storing the state of model {model_id}");
        let v = i64_of(version, &what).map_err(|e| self.map_err(e, &what))?;
        // Atomic compare-and-set: the conflicting row is locked, and updated only if older.
        let n = self.with(
            || what.clone(),
            |c| {
                c.execute(
                    "INSERT INTO model_states (model_id, version, sealed) VALUES ($1, $2, $3) \
                     ON CONFLICT (model_id) DO UPDATE \
                     SET version = EXCLUDED.version, sealed = EXCLUDED.sealed \
                     WHERE model_states.version < EXCLUDED.version",
                    &[&model_id, &v, &sealed],
                )
            },
        )?;
        Ok(n == 1)
    }

    fn state(&self, model_id: &str) -> Result<Option<StateRecord>, StoreError> {
        self.with(
            || format!("reading the state of model {model_id}"),
            |c| {
                let row = c.query_opt(
                    "SELECT model_id, version, sealed FROM model_states WHERE model_id = $1",
                    &[&model_id],
                )?;
                Ok::<_, Fail>(row.map(|r| state_of(&r)).transpose()?)
            },
        )
    }

    fn states(&self) -> Result<Vec<StateRecord>, StoreError> {
        self.with(
            || "listing model states".into(),
            |c| {
                let rows = c.query(
                    "SELECT model_id, version, sealed FROM model_states ORDER BY model_id",
                    &[],
                )?;
                Ok::<_, Fail>(rows.iter().map(state_of).collect::<Result<_, _>>()?)
            },
        )
    }

    fn state_versions(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with(
            || "listing model state versions".into(),
            |c| {
                let rows = c.query(
                    "SELECT model_id, version FROM model_states ORDER BY model_id",
                    &[],
                )?;
                let pairs = rows
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get::<_, i64>(1)?.max(0) as u64)));
                Ok::<_, Fail>(pairs.collect::<Result<_, postgres::Error>>()?)
            },
        )
    }

    fn usage(&self) -> Result<StoreUsage, StoreError> {
        self.with(
            || "reading the store usage".into(),
            |c| {
                let r = c.query_one(
                    "SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM keysets), \
                     (SELECT count(*) FROM jobs), \
                     (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint \
                      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                      WHERE n.nspname = current_schema() AND c.relkind = 'r')",
                    &[],
                )?;
                let u = |i: usize| r.try_get::<_, i64>(i).map(|n| n.max(0) as u64);
                Ok::<_, Fail>(StoreUsage {
                    models: u(0)?,
                    keysets: u(1)?,
                    jobs: u(2)?,
                    file_bytes: u(3)?,
                })
            },
        )
    }
}

fn state_of(r: &postgres::Row) -> Result<StateRecord, postgres::Error> {
    Ok(StateRecord {
        model_id: r.try_get(0)?,
        version: r.try_get::<_, i64>(1)?.max(0) as u64,
        sealed: r.try_get(2)?,
    })
}
