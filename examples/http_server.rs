//! A prefork HTTP server: a Django view in Rust.
//!
//! The master binds the listening socket before forking, so every child
//! inherits it; each child's worker threads accept on it, and each request
//! runs a query on the thread's own lazy connection. The fleet has the
//! master's supervision: `kill -HUP` replaces the children one at a time
//! without refusing a connection, `kill -TERM` lets in-flight requests
//! finish.
//!
//! ```sh
//! cargo run --example http_server -- 127.0.0.1:8080 --procs 2 --threads 4
//! curl http://127.0.0.1:8080/
//! ```
//!
//! Uses `DATABASE_URL` if set, otherwise a throwaway cluster. Port 0 picks
//! a free port; the address is printed on standard output.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use fork_safe::cluster::TempCluster;
use fork_safe::prefork::{App, BoxError, ChildInfo, Prefork, Worker};
use fork_safe::{Database, MaxAge};

struct HttpApp {
    listener: TcpListener,
}

impl App for HttpApp {
    type Child = ();

    fn init_child(&self, _: &ChildInfo) -> Result<(), BoxError> {
        Ok(())
    }

    fn run_worker(&self, _: &(), worker: &Worker) {
        while !worker.stopping() {
            // Wait for a connection at most 200 ms, so a stop is noticed.
            let mut fd = libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut fd, 1, 200) } <= 0 {
                continue;
            }
            // Non-blocking: another worker (or child) may have taken it.
            let Ok((stream, _)) = self.listener.accept() else {
                continue;
            };
            worker.job("http request", || {
                if let Err(e) = serve(stream, worker) {
                    log::debug!("request failed: {e}");
                }
            });
        }
    }
}

fn serve(stream: TcpStream, worker: &Worker) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let (status, body) = match fork_safe::with_client(|c| {
        let row = c.query_one(
            "SELECT pg_backend_pid(), current_setting('application_name'), now()::text",
            &[],
        )?;
        Ok((
            row.get::<_, i32>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
        ))
    }) {
        Ok((backend, name, now)) => (
            "200 OK",
            format!(
                "path {path}\nchild {} thread {} pid {}\nbackend {backend} as {name}\nserver time {now}\n",
                worker.child_index(),
                worker.index(),
                std::process::id()
            ),
        ),
        Err(e) => ("503 Service Unavailable", format!("database error: {e}\n")),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn main() {
    if let Err(e) = run() {
        eprintln!("http_server: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let mut procs = 2;
    let mut threads = 4;
    while let Some(flag) = args.next() {
        let value: usize = args.next().ok_or("missing value")?.parse()?;
        match flag.as_str() {
            "--procs" => procs = value,
            "--threads" => threads = value,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let (_cluster, url) = match std::env::var("DATABASE_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let cluster = TempCluster::start()?;
            let url = cluster.connection_string();
            (Some(cluster), url)
        }
    };
    fork_safe::configure([Database::new("default", &url)?
        .max_age(MaxAge::After(Duration::from_secs(300)))
        .health_checks(true)])?;

    // Bound before forking: the children inherit the socket.
    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    Prefork::new()
        .procs(procs)
        .threads(threads)
        .name("http_server")
        .graceful_timeout(Duration::from_secs(10))
        .run(HttpApp { listener })?;
    Ok(())
}
