//! Requests written byte for byte on a socket: HTTP clients normalize `..`
//! and friends away, which would hide what a server does with them.

use std::time::Duration;

/// Sends one request with the path exactly as given (HTTP clients normalize
/// `..` and friends away, which would hide what the server does with them)
/// and returns the status and body.
pub fn raw_request(host: &str, method: &str, path: &str) -> (u16, Vec<u8>) {
    let response = raw_request_with(host, method, path, &[]);
    (response.status, response.body)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..end]).unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 2 + size + 2..];
    }
    out
}

/// A response read off a raw socket.
pub struct RawResponse {
    pub status: u16,
    /// Status line and header lines, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The value of header `name`, if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The spec error code of a `{"errors":[{"code":…}]}` body.
    pub fn error_code(&self) -> Option<String> {
        let body: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        Some(body["errors"][0]["code"].as_str()?.to_owned())
    }
}

/// Like [`raw_request`], with extra header lines given as bytes (so they can
/// be huge or not ASCII). A server may answer and close before it has read
/// the whole request, as hyper does for oversized headers: a failed write
/// is ignored and whatever answer arrived is read.
pub fn raw_request_with(host: &str, method: &str, path: &str, headers: &[(&str, &[u8])]) -> RawResponse {
    use std::io::{Read, Write};
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: ").as_bytes());
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"Content-Length: 0\r\nConnection: close\r\n\r\n");
    let mut stream = std::net::TcpStream::connect(host).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let _ = stream.write_all(&request);
    let mut response = Vec::new();
    let mut buf = [0u8; 64 << 10];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head to {method} {path}: {response:?}"));
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = response[split + 4..].to_vec();
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(&body) } else { body };
    RawResponse { status, head, body }
}
