//! A TCP relay in front of a server, for fault injection, named as such:
//! refusing and cutting the connections of chosen processes (a network
//! partition between cluster members, who all talk over loopback), and
//! adding latency or cutting connections mid-stream (a slow, flaky S3).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;

/// Decides from the connecting process's id (when it could be found)
/// whether a connection is refused.
pub type Gate = Box<dyn Fn(Option<u32>) -> bool + Send + Sync>;

/// Bytes a connection marked to be dropped relays before it is cut.
const DROP_AFTER: u64 = 64 << 10;

pub struct TcpRelay {
    port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    target: SocketAddr,
    gate: Mutex<Option<Gate>>,
    connections: Mutex<BTreeMap<u64, Connection>>,
    next_id: AtomicU64,
    latency_ms: AtomicU64,
    /// Every n-th connection is cut after [`DROP_AFTER`] bytes (0: none).
    drop_every: AtomicU64,
    stopped: AtomicBool,
}

struct Connection {
    source: Option<u32>,
    streams: [TcpStream; 2],
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, BTreeMap<u64, Connection>> {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refused(&self, source: Option<u32>) -> bool {
        let gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        gate.as_ref().is_some_and(|gate| gate(source))
    }
}

impl TcpRelay {
    /// Relays 127.0.0.1:<a free port> to `target` (`host:port`).
    pub fn start(target: &str) -> anyhow::Result<TcpRelay> {
        let target: SocketAddr = target.parse().with_context(|| format!("relay target {target}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the relay")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            target,
            gate: Mutex::new(None),
            connections: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            latency_ms: AtomicU64::new(0),
            drop_every: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        thread::spawn(move || accept_loop(&listener, &accepting));
        Ok(TcpRelay { port, shared })
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Refuses new connections for which `gate` says so, from now on; see
    /// [`TcpRelay::enforce`] for those already open.
    pub fn set_gate(&self, gate: Gate) {
        *self.shared.gate.lock().unwrap_or_else(PoisonError::into_inner) = Some(gate);
    }

    /// Cuts every open connection the gate now refuses (its state changed).
    pub fn enforce(&self) {
        let mut connections = self.shared.connections();
        connections.retain(|_, c| {
            let refused = self.shared.refused(c.source);
            if refused {
                c.streams.iter().for_each(|s| {
                    let _ = s.shutdown(Shutdown::Both);
                });
            }
            !refused
        });
    }

    /// Each chunk waits this long before it is passed on, both ways.
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.shared.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Every `n`th new connection is cut mid-stream, after 64 KiB (0: none).
    pub fn set_drop_every(&self, n: u64) {
        self.shared.drop_every.store(n, Ordering::Relaxed);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for connection in self.shared.connections().values() {
            connection.streams.iter().for_each(|s| {
                let _ = s.shutdown(Shutdown::Both);
            });
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let Ok(client) = client else { continue };
        let source = client
            .peer_addr()
            .ok()
            .and_then(|peer| socket_owner(peer, listener));
        if shared.refused(source) {
            continue; // dropped: the client sees its connection closed
        }
        let Ok(server) = TcpStream::connect(shared.target) else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let every = shared.drop_every.load(Ordering::Relaxed);
        let doomed = every > 0 && (id + 1).is_multiple_of(every);
        let clones = || -> std::io::Result<_> {
            let stored = [client.try_clone()?, server.try_clone()?];
            Ok((stored, client.try_clone()?, server.try_clone()?))
        };
        let Ok((stored, client_out, server_out)) = clones() else {
            continue;
        };
        shared.connections().insert(
            id,
            Connection {
                source,
                streams: stored,
            },
        );
        for (from, to) in [(client, server_out), (server, client_out)] {
            let shared = Arc::clone(shared);
            thread::spawn(move || pump(from, to, id, doomed, &shared));
        }
    }
}

/// Copies one direction until either side closes, then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream, id: u64, doomed: bool, shared: &Shared) {
    let mut buf = vec![0u8; 64 << 10];
    let mut relayed = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let latency = shared.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            thread::sleep(Duration::from_millis(latency));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        relayed += n as u64;
        if doomed && relayed >= DROP_AFTER {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    shared.connections().remove(&id);
}

/// The process that owns the client end of a loopback connection to
/// `listener`: its socket's inode from /proc/net/tcp, then the process with
/// that inode among its file descriptors. `None` when it is gone or hidden.
fn socket_owner(peer: SocketAddr, listener: &TcpListener) -> Option<u32> {
    let relay_port = listener.local_addr().ok()?.port();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        (port_of(local) == Some(peer.port()) && port_of(remote) == Some(relay_port))
            .then(|| inode.to_string())
    })?;
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == wanted.as_str()))
            .then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> (String, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let handle = thread::spawn(move || {
            for conn in listener.incoming().take(8).flatten() {
                thread::spawn(move || {
                    let mut conn = conn;
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, handle)
    }

    fn round_trip(addr: &str) -> std::io::Result<Vec<u8>> {
        let mut conn = TcpStream::connect(addr)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf)?;
        Ok(buf.to_vec())
    }

    #[test]
    fn relays_then_refuses_this_process_then_relays_again() {
        let (target, _server) = echo_server();
        let relay = TcpRelay::start(&target).expect("relay");
        assert_eq!(round_trip(&relay.addr()).expect("relayed"), b"ping");

        let mut open = TcpStream::connect(relay.addr()).expect("connect");
        open.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).expect("echo");

        let me = std::process::id();
        let cut = Arc::new(AtomicBool::new(true));
        let gate_cut = Arc::clone(&cut);
        relay.set_gate(Box::new(move |pid| {
            gate_cut.load(Ordering::Relaxed) && pid == Some(me)
        }));
        relay.enforce();
        assert_eq!(open.read(&mut buf).unwrap_or(0), 0, "the open connection is cut");
        assert!(round_trip(&relay.addr()).is_err(), "new connections are refused");

        cut.store(false, Ordering::Relaxed);
        assert_eq!(round_trip(&relay.addr()).expect("healed"), b"ping");
    }
}
