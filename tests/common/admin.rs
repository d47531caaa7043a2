//! Reading a running engine's admin server: one HTTP GET, and values out of
//! the Prometheus text it serves.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Where a live engine's admin server listens, once it does.
pub fn addr(stats: &winback::runtime::RunStats) -> SocketAddr {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(a) = stats.admin_addr.get() {
            return *a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the admin server never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `GET path` on the admin server: the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("admin server");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// The values of the samples of `name` whose labels include all of `labels`.
fn samples<'a>(
    metrics: &'a str,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = f64> + 'a {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, want)| rest.contains(&format!("{k}=\"{want}\""))))
            .then(|| v.parse::<f64>().ok())?
        })
}

/// The value of the first sample of `name` with `labels` (others may be present).
pub fn value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(metrics, name, labels).next()
}

/// The sum of every sample of `name` with `labels`.
pub fn sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(metrics, name, labels).sum()
}
