//! One [`Api`] shared by many concurrent sessions reuses its connections:
//! a query does not pay a new TCP connection (and fresh buffers) because
//! more than a handful of sessions are active at once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use hetee_client::http::Api;

/// Answers every request on `stream` with `{}` once `together` requests
/// (on all connections) are in, as a stack of thin queries is answered,
/// keeping the connection open until the client closes it.
fn serve_connection(stream: TcpStream, together: &Barrier) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut stream = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        // The request line and headers, up to the empty line.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        together.wait();
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn concurrent_sessions_on_one_api_reuse_their_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    const CLIENTS: usize = 12;
    const QUERIES: usize = 6;
    {
        let accepted = accepted.clone();
        let together = Arc::new(Barrier::new(CLIENTS));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                accepted.fetch_add(1, Ordering::SeqCst);
                let together = together.clone();
                std::thread::spawn(move || serve_connection(stream, &together));
            }
        });
    }
    let api = Api::new(&addr.to_string()).expect("api");
    let start = Barrier::new(CLIENTS);
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            let (api, start) = (api.clone(), &start);
            s.spawn(move || {
                start.wait();
                for _ in 0..QUERIES {
                    let v: serde_json::Value = api
                        .post_bytes("/q", "application/octet-stream", &[7u8; 100])
                        .expect("answer");
                    assert_eq!(v, serde_json::json!({}));
                    // The client reads its result before its next query.
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
    });
    let n = accepted.load(Ordering::SeqCst);
    // At most one connection per concurrent client; a pool that keeps
    // fewer idle connections than there are clients opens one for most
    // queries (up to CLIENTS * QUERIES).
    assert!(
        n <= CLIENTS,
        "{n} connections for {CLIENTS} concurrent clients of {QUERIES} queries each"
    );
}
