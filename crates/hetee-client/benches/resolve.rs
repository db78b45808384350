//! What naming the server costs each request: ureq's default resolver with
//! the client's timeout set (a thread per request around the system
//! lookup) against [`CachingResolver`] (an IP literal parsed in place, a
//! host name looked up once per TTL), for a server named by its address
//! and by a name from `/etc/hosts`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use hetee_client::resolver::CachingResolver;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, Resolver};
use ureq::unversioned::transport::NextTimeout;
use ureq::Timeout;

fn resolve(c: &mut Criterion) {
    let uri: Uri = "http://127.0.0.1:8080/v1/sessions/00/query"
        .parse()
        .expect("a URI");
    let named: Uri = "http://localhost:8080/v1/sessions/00/query"
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
    let default = DefaultResolver::default();
    let caching = CachingResolver::default();
    for (group, uri) in [("resolve_ip_literal", uri), ("resolve_localhost", named)] {
        let mut g = c.benchmark_group(group);
        g.bench_function("ureq_default", |b| {
            b.iter(|| default.resolve(&uri, &config, timeout).expect("resolves"))
        });
        g.bench_function("caching", |b| {
            b.iter(|| caching.resolve(&uri, &config, timeout).expect("resolves"))
        });
        g.finish();
    }
}

criterion_group!(benches, resolve);
criterion_main!(benches);
