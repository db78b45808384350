//! What naming the server costs each request: ureq's default resolver with
//! the client's timeout set (a thread per request around the system
//! lookup) against [`LiteralResolver`] (an IP literal parsed in place), for
//! a server named by its address.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use hetee_client::literal_resolver::LiteralResolver;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, Resolver};
use ureq::unversioned::transport::NextTimeout;
use ureq::Timeout;

fn resolve(c: &mut Criterion) {
    let uri: Uri = "http://127.0.0.1:8080/v1/sessions/00/query"
        .parse()
        .expect("a URI");
    let config = Config::default();
    // The client's global timeout, as each request sees it.
    let timeout = NextTimeout {
        after: Duration::from_secs(900).into(),
        reason: Timeout::Global,
        per_read: None,
        per_write: None,
    };
    let mut g = c.benchmark_group("resolve_ip_literal");
    let default = DefaultResolver::default();
    g.bench_function("ureq_default", |b| {
        b.iter(|| default.resolve(&uri, &config, timeout).expect("resolves"))
    });
    let literal = LiteralResolver::default();
    g.bench_function("literal", |b| {
        b.iter(|| literal.resolve(&uri, &config, timeout).expect("resolves"))
    });
    g.finish();
}

criterion_group!(benches, resolve);
criterion_main!(benches);
