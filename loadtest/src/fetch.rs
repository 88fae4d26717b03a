//! A checked GET: the body is hashed as it streams (a 400 MiB blob never
//! sits in memory) and compared with the digest it must have.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use sha2::{Digest as _, Sha256};

/// Longest response head accepted.
const MAX_HEAD: usize = 64 << 10;

/// GETs `path` from `base` (`http://HOST:PORT`) with extra header lines
/// and fails unless the answer is a 200 whose body hashes to `digest`;
/// returns its `Cache-Status` header, if any.
pub fn get_checked(base: &str, path: &str, headers: &[&str], digest: &str) -> anyhow::Result<Option<String>> {
    let host = base.strip_prefix("http://").context("only http:// bases")?;
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;

    let mut buf = vec![0u8; 256 << 10];
    let mut head = Vec::new();
    let body_start = loop {
        let n = stream.read(&mut buf)?;
        ensure!(n > 0, "{base}{path}: connection closed before the response head");
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        ensure!(head.len() < MAX_HEAD, "{base}{path}: response head too long");
    };
    let text = String::from_utf8_lossy(&head[..body_start]).into_owned();
    let status = text.split_whitespace().nth(1).unwrap_or_default();
    let header = |name: &str| {
        text.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    };
    if status != "200" {
        bail!("{base}{path}: answered {status}");
    }
    ensure!(
        header("transfer-encoding").is_none(),
        "{base}{path}: a chunked body (blobs and manifests have a length)"
    );
    let mut hasher = Sha256::new();
    hasher.update(&head[body_start..]);
    let mut size = (head.len() - body_start) as u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    if let Some(length) = header("content-length") {
        ensure!(
            length.parse::<u64>().ok() == Some(size),
            "{base}{path}: content-length {length}, got {size} bytes"
        );
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    ensure!(
        got == digest,
        "{base}{path}: body hashes to {got}, expected {digest}"
    );
    Ok(header("cache-status"))
}
