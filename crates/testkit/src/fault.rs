//! Fault injection: an HTTP proxy between the cache under test and a real
//! [`Registry`] that forwards every request unchanged, except those a
//! [`Rule`] matches, which get a [`Fault`] instead: a truncated, corrupted or
//! stalled body, a canned status, a dropped connection, a redirect to another
//! host, or an auth challenge.
//!
//! One thread per connection over `std::net` and one request per connection
//! (`Connection: close` both ways), so a fault never leaves a half-used
//! connection in the client's pool and no async runtime is needed. Requests
//! are the pull API's, without bodies. Body faults act on the bytes after the
//! upstream's response head; registries send blobs and manifests with a
//! `Content-Length`, which is kept, so a cut body is visibly short.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use testkit::{Fault, FaultProxy, Registry, Rule};
//!
//! let registry = Registry::start()?;
//! let proxy = FaultProxy::start(&registry)?;
//! // Point the cache at proxy.url(), then:
//! proxy.set_rules(vec![Rule::new("GET", "/blobs/", Fault::Truncate { after: 100 }).times(1)]);
//! // … the next blob GET is cut after 100 bytes, later ones pass.
//! proxy.clear();
//! # Ok(()) }
//! ```

use std::io::{self, Cursor, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::registry::Registry;

/// Bounds every socket wait that is not a deliberate stall, so a stuck test
/// never leaves threads blocked forever.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 64 << 10;

/// What to answer instead of, or to do to, the upstream's response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward the head (its `Content-Length` kept) and `after` body bytes,
    /// then close.
    Truncate { after: usize },
    /// Forward the response with every body byte inverted: same length,
    /// wrong digest. With `drop_length` the `Content-Length` is left out
    /// too (the body then ends when the connection closes), so the client
    /// learns the size only at the end, as from a chunked upstream.
    Corrupt { drop_length: bool },
    /// Forward the head and `after` body bytes, then send nothing until the
    /// client gives up or `stall` has passed, then close.
    Stall { after: usize, stall: Duration },
    /// Forward the head and `after` body bytes, wait `pause`, then forward
    /// the rest: a download that is surely under way while the test acts.
    Pause { after: usize, pause: Duration },
    /// Read the request and close the connection without answering.
    Close,
    /// Answer this instead of asking the upstream (`Content-Length` added).
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// `307` to the same path on the redirect target, another host
    /// (127.0.0.2) that serves the upstream's answer and records whether
    /// credentials followed the redirect.
    Redirect,
    /// `401` with a Basic challenge, for requests without `Authorization`
    /// only: requests with credentials pass, so their arrival is observable.
    BasicChallenge,
    /// `401` with a Bearer challenge whose realm is this proxy's `/token`,
    /// for requests without a bearer token; answer `/token` with another rule.
    BearerChallenge,
}

impl Fault {
    /// A canned response, e.g. `Fault::respond(429, &[("Retry-After", "7")], "")`.
    pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Fault {
        Fault::Respond {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.into(),
        }
    }

    /// Its name in [`Seen::fault`].
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Truncate { .. } => "truncate",
            Fault::Corrupt { .. } => "corrupt",
            Fault::Stall { .. } => "stall",
            Fault::Pause { .. } => "pause",
            Fault::Close => "close",
            Fault::Respond { .. } => "respond",
            Fault::Redirect => "redirect",
            Fault::BasicChallenge => "basic_challenge",
            Fault::BearerChallenge => "bearer_challenge",
        }
    }

    /// Challenges apply only to requests that lack what they ask for.
    fn applies_to(&self, request: &Request) -> bool {
        let authorization = request.header("authorization");
        match self {
            Fault::BasicChallenge => authorization.is_none(),
            Fault::BearerChallenge => {
                !authorization.is_some_and(|a| a.to_ascii_lowercase().starts_with("bearer "))
            }
            _ => true,
        }
    }
}

/// Applies `fault` to requests with this method whose target (path and
/// query) contains `path_contains`. The first matching rule wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub method: String,
    pub path_contains: String,
    pub fault: Fault,
    /// How many more requests it applies to; `None`: every one.
    pub times: Option<usize>,
}

impl Rule {
    /// A rule that applies every time; limit it with [`Rule::times`].
    pub fn new(method: &str, path_contains: &str, fault: Fault) -> Rule {
        Rule {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            fault,
            times: None,
        }
    }

    pub fn times(self, n: usize) -> Rule {
        Rule {
            times: Some(n),
            ..self
        }
    }
}

/// One request the proxy or its redirect target received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// Request target as sent, query included.
    pub path: String,
    /// Whether an `Authorization` header came with it.
    pub authorization: bool,
    /// The fault applied ([`Fault::name`]); `None`: forwarded unchanged.
    pub fault: Option<&'static str>,
    /// Arrived at the redirect target rather than at the proxy.
    pub redirected: bool,
}

/// The running proxy; dropping it stops accepting connections.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    target_addr: SocketAddr,
}

struct Shared {
    /// `host:port` of the registry behind.
    upstream: String,
    proxy_host: String,
    target_host: String,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    stopped: AtomicBool,
}

impl FaultProxy {
    /// Starts the proxy on a free 127.0.0.1 port and its redirect target on
    /// a free 127.0.0.2 port, both in front of `upstream`, with no rules.
    pub fn start(upstream: &Registry) -> anyhow::Result<FaultProxy> {
        Self::in_front_of(&upstream.host())
    }

    fn in_front_of(upstream: &str) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the fault proxy")?;
        // Another loopback address is another host: a different origin.
        let target = TcpListener::bind("127.0.0.2:0").context("binding the redirect target on 127.0.0.2")?;
        let (addr, target_addr) = (listener.local_addr()?, target.local_addr()?);
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            proxy_host: addr.to_string(),
            target_host: target_addr.to_string(),
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        for (listener, redirected) in [(listener, false), (target, true)] {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("fault-proxy-accept".into())
                .spawn(move || accept(&listener, &shared, redirected))
                .context("spawning the accept thread")?;
        }
        Ok(FaultProxy {
            shared,
            addr,
            target_addr,
        })
    }

    /// `http://127.0.0.1:PORT`, the URL to give the client under test.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the rules; requests already answered are not affected.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        *lock(&self.shared.rules) = rules;
    }

    /// Drops every rule: from now on everything is forwarded unchanged.
    pub fn clear(&self) {
        self.set_rules(Vec::new());
    }

    /// Every request received so far, in arrival order. A request is
    /// recorded before it is answered.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// How many requests with this method and a target containing
    /// `path_contains` arrived, at the proxy or its redirect target.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        lock(&self.shared.seen)
            .iter()
            .filter(|s| s.method == method && s.path.contains(path_contains))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loops so they see the flag.
        for addr in [self.addr, self.target_addr] {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>, redirected: bool) {
    for conn in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let shared = Arc::clone(shared);
        // A failed connection thread is what a fault looks like from here
        // (the client hung up on a stalled body); there is no one to tell.
        let _ = thread::Builder::new()
            .name("fault-proxy-conn".into())
            .spawn(move || serve(&shared, conn, redirected));
    }
}

/// A parsed request head.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The repository of a `/v2/<name>/…` target, for a challenge's scope.
    fn repository(&self) -> Option<&str> {
        let rest = self.target.strip_prefix("/v2/")?;
        ["/manifests/", "/blobs/", "/tags/"]
            .iter()
            .find_map(|m| rest.rfind(m).map(|i| &rest[..i]))
    }
}

fn serve(shared: &Shared, mut client: TcpStream, redirected: bool) -> anyhow::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let (head, _) = read_head(&mut client)?;
    let request = parse_request(&head)?;
    // The redirect target only serves and records: it stands for storage.
    let fault = if redirected {
        None
    } else {
        take_fault(shared, &request)
    };
    lock(&shared.seen).push(Seen {
        method: request.method.clone(),
        path: request.target.clone(),
        authorization: request.header("authorization").is_some(),
        fault: fault.as_ref().map(Fault::name),
        redirected,
    });
    let head_only = request.method == "HEAD";
    let unauthorized =
        br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
    match fault {
        Some(Fault::Close) => Ok(()),
        Some(Fault::Respond {
            status,
            headers,
            body,
        }) => respond(&mut client, status, &headers, &body, head_only),
        Some(Fault::Redirect) => {
            let location = format!("http://{}{}", shared.target_host, request.target);
            respond(&mut client, 307, &[("Location".into(), location)], b"", head_only)
        }
        Some(Fault::BasicChallenge) => {
            let challenge = r#"Basic realm="fault-proxy""#.to_owned();
            respond(
                &mut client,
                401,
                &[("WWW-Authenticate".into(), challenge)],
                unauthorized,
                head_only,
            )
        }
        Some(Fault::BearerChallenge) => {
            let mut challenge = format!(
                r#"Bearer realm="http://{}/token",service="fault-proxy""#,
                shared.proxy_host
            );
            if let Some(repo) = request.repository() {
                challenge.push_str(&format!(r#",scope="repository:{repo}:pull""#));
            }
            respond(
                &mut client,
                401,
                &[("WWW-Authenticate".into(), challenge)],
                unauthorized,
                head_only,
            )
        }
        body_fault => forward(shared, &request, &mut client, body_fault.as_ref()),
    }
}

/// The first rule that matches and has budget left, its budget spent by one.
fn take_fault(shared: &Shared, request: &Request) -> Option<Fault> {
    let mut rules = lock(&shared.rules);
    let rule = rules.iter_mut().find(|r| {
        r.method == request.method
            && request.target.contains(&r.path_contains)
            && r.times != Some(0)
            && r.fault.applies_to(request)
    })?;
    if let Some(n) = &mut rule.times {
        *n -= 1;
    }
    Some(rule.fault.clone())
}

/// Sends the request to the registry and relays its answer, applying a
/// body fault on the way.
fn forward(
    shared: &Shared,
    request: &Request,
    client: &mut TcpStream,
    fault: Option<&Fault>,
) -> anyhow::Result<()> {
    let mut upstream =
        TcpStream::connect(&shared.upstream).with_context(|| format!("connecting to {}", shared.upstream))?;
    upstream.set_read_timeout(Some(IO_TIMEOUT))?;
    upstream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut out = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
    for (name, value) in &request.headers {
        if !name.eq_ignore_ascii_case("host") && !name.eq_ignore_ascii_case("connection") {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str(&format!("Host: {}\r\nConnection: close\r\n\r\n", shared.upstream));
    upstream.write_all(out.as_bytes())?;

    let (head, rest) = read_head(&mut upstream)?;
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let mut out = format!("{}\r\n", lines.next().context("empty response head")?);
    let drop_length = fault == Some(&Fault::Corrupt { drop_length: true });
    for line in lines {
        let name = line.split(':').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("connection")
            || (drop_length && name.eq_ignore_ascii_case("content-length"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    client.write_all(out.as_bytes())?;
    relay_body(Cursor::new(rest).chain(upstream), client, fault)?;
    Ok(())
}

/// Copies the body until the upstream closes, or cuts, inverts or stalls it.
fn relay_body(mut from: impl Read, to: &mut TcpStream, fault: Option<&Fault>) -> io::Result<()> {
    let limit = match fault {
        Some(Fault::Truncate { after } | Fault::Stall { after, .. }) => Some(*after),
        _ => None,
    };
    let mut pause = match fault {
        Some(Fault::Pause { after, pause }) => Some((*after, *pause)),
        _ => None,
    };
    let mut sent = 0;
    let mut buf = vec![0u8; 64 << 10];
    while limit.is_none_or(|l| sent < l) {
        // Reads stop at the pause point, so exactly `after` bytes go first.
        let want = pause.map_or(buf.len(), |(after, _)| buf.len().min(after - sent));
        if want == 0 {
            to.flush()?;
            if let Some((_, duration)) = pause.take() {
                thread::sleep(duration);
            }
            continue;
        }
        let n = from.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        let chunk = &mut buf[..n];
        if matches!(fault, Some(Fault::Corrupt { .. })) {
            chunk.iter_mut().for_each(|b| *b = !*b);
        }
        let keep = limit.map_or(n, |l| n.min(l - sent));
        to.write_all(&chunk[..keep])?;
        sent += keep;
    }
    to.flush()?;
    if let Some(Fault::Stall { stall, .. }) = fault {
        // Returns when the client closes (it timed out) or the stall is over.
        to.set_read_timeout(Some(*stall))?;
        let _ = to.read(&mut [0u8; 1]);
    }
    Ok(())
}

fn respond(
    to: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    head_only: bool,
) -> anyhow::Result<()> {
    let mut out = format!("HTTP/1.1 {status} Fault Injected\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    to.write_all(out.as_bytes())?;
    if !head_only {
        to.write_all(body)?;
    }
    to.flush()?;
    Ok(())
}

/// Reads up to the blank line; returns the head and the bytes read past it.
fn read_head(stream: &mut TcpStream) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            let head = String::from_utf8(buf).context("http head is not utf-8")?;
            return Ok((head, rest));
        }
        if buf.len() > MAX_HEAD {
            bail!("http head larger than {MAX_HEAD} bytes");
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the end of the http head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_request(head: &str) -> anyhow::Result<Request> {
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let line = lines.next().context("empty request")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("malformed request line {line:?}");
    };
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"0123456789";

    /// A stand-in registry: answers every connection with `BODY`.
    fn fake_upstream() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = read_head(&mut conn);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", BODY.len());
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(BODY);
            }
        });
        addr
    }

    /// Sends one request; returns the response head and body, both empty
    /// if the connection closed unanswered.
    fn send(addr: &str, method: &str, path: &str, extra: &str) -> (String, Vec<u8>) {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(conn, "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
        let mut out = Vec::new();
        let _ = conn.read_to_end(&mut out);
        match out.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => (
                String::from_utf8_lossy(&out[..end]).into_owned(),
                out[end + 4..].to_vec(),
            ),
            None => (String::from_utf8_lossy(&out).into_owned(), Vec::new()),
        }
    }

    #[test]
    fn forwards_unless_a_rule_with_budget_matches() {
        let proxy = FaultProxy::in_front_of(&fake_upstream()).unwrap();
        let addr = proxy.url().replace("http://", "");
        proxy.set_rules(vec![
            Rule::new("GET", "/blobs/", Fault::Truncate { after: 4 }).times(1),
            Rule::new("GET", "/manifests/", Fault::Corrupt { drop_length: false }),
            Rule::new("GET", "/tags/", Fault::Corrupt { drop_length: true }),
            Rule::new("HEAD", "/", Fault::respond(503, &[("Retry-After", "1")], "down")),
        ]);
        let (head, body) = send(&addr, "GET", "/v2/a/blobs/x", "");
        assert!(head.contains("Content-Length: 10"), "{head}");
        assert_eq!(body, b"0123");
        assert_eq!(send(&addr, "GET", "/v2/a/blobs/x", "").1, BODY);
        let (_, inverted) = send(&addr, "GET", "/v2/a/manifests/t", "");
        assert_eq!(inverted, BODY.iter().map(|b| !b).collect::<Vec<_>>());
        let (head, no_length) = send(&addr, "GET", "/v2/a/tags/list", "");
        assert!(!head.contains("Content-Length"), "{head}");
        assert_eq!(no_length, inverted);
        let (head, body) = send(&addr, "HEAD", "/v2/a/manifests/t", "");
        assert!(
            head.starts_with("HTTP/1.1 503 ") && head.contains("Retry-After: 1"),
            "{head}"
        );
        assert!(body.is_empty(), "a HEAD answer has no body");

        proxy.clear();
        assert_eq!(send(&addr, "GET", "/v2/a/manifests/t", "").1, BODY);
        let faults: Vec<_> = proxy.seen().iter().map(|s| s.fault).collect();
        assert_eq!(
            faults,
            [
                Some("truncate"),
                None,
                Some("corrupt"),
                Some("corrupt"),
                Some("respond"),
                None
            ]
        );
        assert_eq!(proxy.count("GET", "/blobs/"), 2);
    }

    #[test]
    fn challenges_only_requests_without_credentials_and_redirects_elsewhere() {
        let proxy = FaultProxy::in_front_of(&fake_upstream()).unwrap();
        let addr = proxy.url().replace("http://", "");
        proxy.set_rules(vec![
            Rule::new("GET", "/blobs/", Fault::BasicChallenge),
            Rule::new("GET", "/blobs/", Fault::Redirect),
            Rule::new("GET", "/manifests/", Fault::BearerChallenge),
            Rule::new("GET", "/manifests/", Fault::Close),
        ]);
        let (challenged, _) = send(&addr, "GET", "/v2/a/b/blobs/x", "");
        assert!(challenged.starts_with("HTTP/1.1 401 "), "{challenged}");
        assert!(challenged.contains(r#"WWW-Authenticate: Basic realm="fault-proxy""#));

        let (redirect, _) = send(&addr, "GET", "/v2/a/b/blobs/x", "Authorization: Basic eDp5\r\n");
        let location = redirect
            .lines()
            .find_map(|l| l.strip_prefix("Location: http://"))
            .unwrap();
        assert!(location.starts_with("127.0.0.2:"), "{redirect}");
        let (target, path) = location.split_once('/').unwrap();
        assert_eq!(path, "v2/a/b/blobs/x");
        assert_eq!(send(target, "GET", "/v2/a/b/blobs/x", "").1, BODY);

        let (bearer, _) = send(
            &addr,
            "GET",
            "/v2/a/b/manifests/t",
            "Authorization: Basic eDp5\r\n",
        );
        let realm = format!(
            r#"Bearer realm="{}/token",service="fault-proxy",scope="repository:a/b:pull""#,
            proxy.url()
        );
        assert!(bearer.contains(&realm), "{bearer}");
        let closed = send(&addr, "GET", "/v2/a/b/manifests/t", "Authorization: Bearer t\r\n");
        assert_eq!(closed, ("".to_owned(), Vec::new()));

        let seen = proxy.seen();
        assert_eq!(seen.len(), 5);
        assert!(seen[2].redirected && !seen[2].authorization && seen[2].fault.is_none());
        assert!(seen[1].authorization && seen[1].fault == Some("redirect"));
    }
}
