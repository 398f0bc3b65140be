//! The status endpoint, served by the master from its own loop: `GET
//! /metrics` (Prometheus' text format, summed over the fleet), `/status`
//! (one JSON object), `/livez` and `/readyz`.
//!
//! No thread: the master forks, and a thread in it would make every fork
//! unsafe. The listener and each connection are non-blocking descriptors
//! the master polls beside its signalfd, and an answer is built from what
//! the master already holds (its fleet, the scoreboards, the app's cached
//! gauges), so serving never waits on a client or on the database, and
//! supervision never waits on serving.
//!
//! # Scenarios
//!
//! 1. **A request arrives whole.** It is parsed (`http`), answered, and
//!    the connection is closed once the answer is written: one request per
//!    connection, as Prometheus and the probes make them.
//! 2. **A slow client** (slowloris, or a peer that went away). A connection
//!    has [`REQUEST_TIME`] from its accept to the end of its headers, and
//!    as long again to take its answer; then it is closed, whatever it sent.
//! 3. **Huge or endless headers.** Past [`http::MAX_REQUEST`] bytes, or 32
//!    headers, it gets 431 and is closed: a connection never holds more.
//! 4. **Many connections.** At most [`MAX_CONNECTIONS`] are open. One more
//!    is still accepted, and its request answered at once if it came whole
//!    with the connection (as a scraper's does); to make room, the oldest
//!    connection still reading is closed. So clients holding connections
//!    open without a request (slowloris) cannot lock a scraper out, and
//!    the kernel's backlog does not fill. Each poll of the loop accepts at
//!    most [`ACCEPTS_PER_TURN`], so a flood cannot keep the loop from its
//!    children.
//! 5. **A client that never reads its answer.** The answer is written as
//!    far as the socket takes it; the rest waits for the socket to be
//!    writable, within the connection's time.
//! 6. **Fork.** A child closes its copies of the listener and connections
//!    (closing a copy does not touch the master's, and a Unix socket's file
//!    is left to the master, which removes it when it stops).

pub(super) mod addr;
mod http;
mod view;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

pub use addr::StatusAddr;
pub(crate) use view::{ChildView, FleetView, MasterView};

use http::{Parsed, Response};

/// Most connections open at once.
const MAX_CONNECTIONS: usize = 64;

/// Time a connection has to send its request, and again to take its
/// answer.
const REQUEST_TIME: Duration = Duration::from_secs(5);

/// Most connections accepted per turn of the master's loop.
const ACCEPTS_PER_TURN: usize = 16;

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
}

struct Peer {
    stream: Stream,
    deadline: Instant,
    state: State,
}

enum State {
    Reading(Vec<u8>),
    Writing { out: Vec<u8>, at: usize },
}

/// The listener and its connections (see the module doc).
pub(crate) struct StatusServer {
    listener: Listener,
    conns: Vec<Peer>,
}

impl StatusServer {
    /// Binds `addr`. A Unix socket path left by a master that is gone is
    /// replaced; one a live master listens on is not.
    ///
    /// # Errors
    ///
    /// The address cannot be bound (in use, no permission).
    pub(crate) fn bind(addr: &StatusAddr) -> io::Result<StatusServer> {
        let listener = match addr {
            StatusAddr::Tcp(addr) => {
                let listener = TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Listener::Tcp(listener)
            }
            StatusAddr::Unix(path) => {
                if UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{} has a live listener", path.display()),
                    ));
                }
                let _ = std::fs::remove_file(path);
                let listener = UnixListener::bind(path)?;
                listener.set_nonblocking(true)?;
                Listener::Unix(listener, path.clone())
            }
        };
        Ok(StatusServer {
            listener,
            conns: Vec::new(),
        })
    }

    /// The descriptors to poll and for what: the listener, then each
    /// connection (readable while it reads, writable while it writes).
    pub(crate) fn interests(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let listener = match &self.listener {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        };
        std::iter::once((listener, PollFlags::POLLIN))
            .chain(self.conns.iter().map(|c| {
                let flags = match c.state {
                    State::Reading(_) => PollFlags::POLLIN,
                    State::Writing { .. } => PollFlags::POLLOUT,
                };
                (c.stream.fd(), flags)
            }))
            .collect()
    }

    /// The earliest connection deadline, for the master's poll timeout.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().map(|c| c.deadline).min()
    }

    /// Handles what poll reported (`ready`: one flag per [`interests`]
    /// entry, in order), answering each complete request from a snapshot
    /// `view` makes, then closes connections that are done or out of time.
    ///
    /// [`interests`]: StatusServer::interests
    pub(crate) fn turn(
        &mut self,
        ready: &[bool],
        now: Instant,
        mut view: impl FnMut() -> FleetView,
    ) {
        let mut answer = |path: &str| answer(path, &mut view);
        for (i, conn) in self.conns.iter_mut().enumerate() {
            if ready.get(i + 1).copied().unwrap_or(false) {
                conn.advance(&mut answer, now);
            }
        }
        if ready.first().copied().unwrap_or(false) {
            self.accept(now, &mut answer);
        }
        self.conns.retain_mut(|c| {
            let done = matches!(&c.state, State::Writing { out, at } if *at >= out.len());
            if done {
                c.discard_input();
            }
            !done && c.deadline > now
        });
    }

    fn accept(&mut self, now: Instant, answer: &mut impl FnMut(&str) -> Response) {
        for _ in 0..ACCEPTS_PER_TURN {
            let accepted = match &self.listener {
                Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            };
            let stream = match accepted {
                Ok(stream) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: none left. Anything else (out of descriptors,
                // a connection reset before accept) is the next turn's.
                Err(_) => return,
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                // Scenario 4: the oldest connection still reading goes.
                let oldest = self
                    .conns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| matches!(c.state, State::Reading(_)))
                    .min_by_key(|(_, c)| c.deadline)
                    .map(|(i, _)| i);
                match oldest {
                    Some(i) => drop(self.conns.swap_remove(i)),
                    None => continue, // all writing: this one is dropped
                }
            }
            let nonblocking = match &stream {
                Stream::Tcp(s) => s.set_nonblocking(true),
                Stream::Unix(s) => s.set_nonblocking(true),
            };
            if nonblocking.is_err() {
                continue;
            }
            let mut conn = Peer {
                stream,
                deadline: now + REQUEST_TIME,
                state: State::Reading(Vec::new()),
            };
            // The request is often there already: answer without waiting
            // for the next poll.
            conn.advance(answer, now);
            self.conns.push(conn);
        }
    }

    /// In a child after the fork: closes its copies, leaving the socket
    /// file to the master.
    pub(crate) fn forget_in_child(mut self) {
        self.conns.clear();
        if let Listener::Unix(_, path) = &mut self.listener {
            // Dropping now closes the descriptor; the empty path keeps Drop
            // from removing the master's socket file.
            *path = PathBuf::new();
        }
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = &self.listener {
            if !path.as_os_str().is_empty() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Peer {
    /// Reads and drops what the client sent past its request (the rest of
    /// an oversized header, say), as far as it is there: a socket closed
    /// with unread input resets the connection, and the client would lose
    /// the answer it was sent.
    fn discard_input(&mut self) {
        let mut chunk = [0u8; 8192];
        for _ in 0..8 {
            match self.stream.read(&mut chunk) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => return,
            }
        }
    }

    /// Reads what the client sent, answers once the request is whole, and
    /// writes as much of the answer as the socket takes.
    fn advance(&mut self, answer: &mut impl FnMut(&str) -> Response, now: Instant) {
        if let State::Reading(buf) = &mut self.state {
            let mut chunk = [0u8; 2048];
            let parsed = loop {
                match self.stream.read(&mut chunk) {
                    // Closed before a whole request: nothing to answer.
                    Ok(0) => {
                        self.deadline = now;
                        return;
                    }
                    Ok(n) => {
                        let room = http::MAX_REQUEST - buf.len();
                        buf.extend_from_slice(&chunk[..n.min(room)]);
                        match http::parse(buf) {
                            Parsed::Partial => continue,
                            done => break done,
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(_) => {
                        self.deadline = now;
                        return;
                    }
                }
            };
            let (response, head) = match parsed {
                Parsed::Request { method, path } => match method.as_str() {
                    "GET" => (answer(&path), false),
                    "HEAD" => (answer(&path), true),
                    _ => (Response::text(405, "only GET and HEAD\n"), false),
                },
                Parsed::Refused(response) => (response, false),
                Parsed::Partial => return,
            };
            self.state = State::Writing {
                out: response.bytes(head),
                at: 0,
            };
            self.deadline = now + REQUEST_TIME;
        }
        if let State::Writing { out, at } = &mut self.state {
            while *at < out.len() {
                match self.stream.write(&out[*at..]) {
                    Ok(0) => break,
                    Ok(n) => *at += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(_) => {
                        self.deadline = now;
                        return;
                    }
                }
            }
        }
    }
}

/// The answer to a GET of `path`, from the master's `view` of the fleet
/// (made only for the paths that have one).
fn answer(path: &str, view: &mut impl FnMut() -> FleetView) -> Response {
    match path {
        "/metrics" => Response {
            code: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: view().metrics(),
        },
        "/status" => Response {
            code: 200,
            content_type: "application/json",
            body: view().status_json(),
        },
        "/livez" => match view().live() {
            Ok(()) => Response::text(200, "ok\n"),
            Err(why) => Response::text(503, format!("{why}\n")),
        },
        "/readyz" => match view().ready() {
            Ok(()) => Response::text(200, "ok\n"),
            Err(why) => Response::text(503, format!("{why}\n")),
        },
        _ => Response::text(404, "not found: try /metrics, /status, /livez or /readyz\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ip_port_or_a_path() {
        assert_eq!(
            "127.0.0.1:9187".parse(),
            Ok(StatusAddr::Tcp("127.0.0.1:9187".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:9187".parse(),
            Ok(StatusAddr::Tcp("[::1]:9187".parse().unwrap()))
        );
        assert_eq!(
            "localhost:80".parse(),
            Ok(StatusAddr::Tcp("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            "/run/prefork.sock".parse(),
            Ok(StatusAddr::Unix("/run/prefork.sock".into()))
        );
        assert!("9187".parse::<StatusAddr>().is_err());
        assert!("example.com:9187".parse::<StatusAddr>().is_err());
    }
}
