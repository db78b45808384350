//! Replicas of `hetee serve` sharing one PostgreSQL store (`HETEE_TEST_PG`, one schema per
//! test; `None` without it, a failure instead with `HETEE_REQUIRE_PG`), and the owner's and data
//! provider's commands against several of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hetee_server::store::postgres::testing::{test_dsn, TestSchema};
use hetee_server::store::{PgStore, Store};

use super::{describe, hetee, measurement, public_key_hex, upload_as, Server, BIN};

/// A fresh schema in the test database, migrated, and the DSN `hetee serve --store` takes.
pub fn shared_store(test: &str) -> Option<(TestSchema, String)> {
    let dsn = test_dsn(test)?;
    let schema = TestSchema::new(&dsn);
    drop(PgStore::open_in_schema(&schema.dsn, &schema.name).expect("create the schema"));
    let store = schema.dsn_with_search_path();
    Some((schema, store))
}

/// A replica on the shared store, with its own data dir (`dir/id`, which keeps its replica id)
/// and enclave. Starting it again with the same `id` restarts the same replica.
pub fn replica(dir: &Path, store: &str, id: &str) -> Server {
    Server::start_with_args(&dir.join(id), &["--store", store, "--replica-id", id])
}

/// Two replicas (`r1`, `r2`) on `store`, and `model` uploaded through `r1`
/// by a new owner for queries of one image under a query budget of
/// `budget`: the replicas, the model id, and a new data provider's key
/// (its path and public key).
pub fn two_replicas_with_budget(
    d: &Path,
    store: &str,
    model: &str,
    budget: usize,
) -> (Server, Server, String, PathBuf, String) {
    let r1 = replica(d, store, "r1");
    let r2 = replica(d, store, "r2");
    let id = upload_as(
        &r1.addr,
        &measurement(),
        model,
        &d.join("owner.key"),
        &["--max-batch", "1", "--query-budget", &budget.to_string()],
    );
    let key = d.join("client.key");
    let client = public_key_hex(&key);
    (r1, r2, id, key, client)
}

/// Comma-separated addresses, as `--server` takes several.
pub fn addrs(servers: &[&Server]) -> String {
    let v: Vec<&str> = servers.iter().map(|s| s.addr.as_str()).collect();
    v.join(",")
}

/// The `hetee infer` command of `x` into `y` through `servers` (comma separated), with extra
/// flags, not started: for runs that something must happen during.
pub fn infer_command(
    servers: &str,
    m: &str,
    id: &str,
    x: &Path,
    y: &Path,
    extra: &[&str],
) -> Command {
    let mut c = Command::new(BIN);
    c.args(["infer", "--server", servers, "--model-id", id, "--input"])
        .arg(x)
        .arg("--output")
        .arg(y)
        .args(["--expect-measurement", m, "--allow-sim"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// `hetee model status --json` of model `id` as the owner in `key`, through `servers`.
pub fn model_status(servers: &str, m: &str, id: &str, key: &Path) -> serde_json::Value {
    let out: Output = hetee(&[
        "model",
        "status",
        "--json",
        "--model-id",
        id,
        "--server",
        servers,
        "--expect-measurement",
        m,
        "--allow-sim",
        "--client-key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// Queries the client key `client` (hex) has spent, as a status report lists them.
pub fn spent_by(status: &serde_json::Value, client: &str) -> u64 {
    status["spent"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["client"] == client)
        .and_then(|e| e["queries"].as_u64())
        .unwrap_or(0)
}

/// The version of model `id`'s state as the shared store holds it now (every stored budget
/// spend or owner change raises it by one).
pub fn stored_state_version(schema: &TestSchema, id: &str) -> u64 {
    let store = PgStore::open_in_schema(&schema.dsn, &schema.name).expect("open the schema");
    store
        .state(id)
        .expect("read the model state")
        .map_or(0, |s| s.version)
}
