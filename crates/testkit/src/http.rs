//! Loopback ports and a minimal blocking HTTP/1.1 probe.
//!
//! The probe is a few lines over `TcpStream` rather than an HTTP client: it
//! must work from plain `#[test]`s and from inside a tokio runtime (where
//! starting another runtime to drive reqwest would panic).

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream, ToSocketAddrs as _};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Ports this test process has handed out already. The kernel may hand the
/// same ephemeral port to two `bind(0)` calls once the first listener is
/// closed; two servers of one test must not both get it.
static ISSUED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback TCP port that was free a moment ago (bind 127.0.0.1:0, read the
/// port, close). Never returns the same port twice within one test process.
pub fn free_port() -> u16 {
    let mut issued = ISSUED.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding 127.0.0.1:0 must work on any test machine");
        if issued.insert(port) {
            return port;
        }
    }
}

/// A free loopback port below the kernel's ephemeral range. The kernel never
/// hands such a port to a `bind(0)` or an outgoing connection, so a server
/// can stop and bind it again (a cluster member restarting on the address
/// its peers know) without anything else taking it meanwhile.
pub fn stable_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(10_000).max(1024);
    let span = u32::from(ephemeral_low - low);
    // Spread test processes over the range; `ISSUED` keeps one process's
    // ports apart.
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    let mut issued = ISSUED.lock().unwrap_or_else(PoisonError::into_inner);
    for step in 0..span {
        let port = low + ((seed.wrapping_add(step) % span) as u16);
        if !issued.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            issued.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{ephemeral_low}");
}

/// Polls `url` (plain `http://` only) until the server sends any HTTP
/// response, whatever its status. Errors with the last failure on timeout.
pub fn wait_for_http(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match get(url, Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(err.context(format!("no http answer from {url} within {timeout:?}")));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one `GET` and returns the status code after reading the whole
/// response (`Connection: close`).
pub(crate) fn get(url: &str, timeout: Duration) -> anyhow::Result<u16> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("only http:// urls are supported, got {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {authority}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: a server that reads one segment and closes must see it all.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    let read = stream.read_to_end(&mut response);
    // A reset after the status line still counts as an answer.
    if let (Err(e), None) = (read, parse_status(&response)) {
        return Err(anyhow::Error::new(e).context(format!("reading the answer of {url}")));
    }
    parse_status(&response).with_context(|| {
        let head = String::from_utf8_lossy(&response[..response.len().min(80)]).into_owned();
        format!("{url} answered something that is not http: {head:?}")
    })
}

fn parse_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Fails unless `url` answers with the `expected` status, for readiness checks
/// that need more than "something listens".
pub(crate) fn expect_status(url: &str, expected: u16, timeout: Duration) -> anyhow::Result<()> {
    let status = get(url, timeout)?;
    if status != expected {
        bail!("{url} answered {status}, expected {expected}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() -> anyhow::Result<()> {
        let ports: BTreeSet<u16> = (0..20).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 20);
        for port in ports.iter().take(3) {
            TcpListener::bind(("127.0.0.1", *port))?;
        }
        Ok(())
    }

    #[test]
    fn waits_for_a_server_that_starts_late() -> anyhow::Result<()> {
        let port = free_port();
        let server = thread::spawn(move || -> anyhow::Result<()> {
            thread::sleep(Duration::from_millis(300));
            let listener = TcpListener::bind(("127.0.0.1", port))?;
            let (mut conn, _) = listener.accept()?;
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf)?;
                anyhow::ensure!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")?;
            Ok(())
        });
        wait_for_http(&format!("http://127.0.0.1:{port}/ready"), Duration::from_secs(5))?;
        server.join().map_err(|_| anyhow::anyhow!("server panicked"))??;
        Ok(())
    }

    #[test]
    fn times_out_without_a_server() {
        let port = free_port();
        let err = wait_for_http(&format!("http://127.0.0.1:{port}/"), Duration::from_millis(200));
        assert!(err.is_err());
        assert!(wait_for_http("https://127.0.0.1:1/", Duration::ZERO).is_err());
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 404 Not Found\r\n\r\n"), Some(404));
        assert_eq!(parse_status(b"HTTP/1.0 200\r\n"), Some(200));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
