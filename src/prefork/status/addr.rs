//! Where the status endpoint listens, as `--status-addr` gives it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Where the status endpoint listens: a TCP address (`127.0.0.1:9187`,
/// `[::1]:9187`) or a Unix socket path (anything with a `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusAddr {
    /// A TCP address and port.
    Tcp(SocketAddr),
    /// A Unix socket's path.
    Unix(PathBuf),
}

impl FromStr for StatusAddr {
    type Err = String;

    /// # Errors
    ///
    /// Neither a path (with a `/`) nor `IP:PORT`; names are not resolved,
    /// except `localhost`, which is `127.0.0.1`.
    fn from_str(s: &str) -> Result<StatusAddr, String> {
        if s.contains('/') {
            return Ok(StatusAddr::Unix(PathBuf::from(s)));
        }
        let s2 = s
            .strip_prefix("localhost:")
            .map(|port| format!("127.0.0.1:{port}"));
        s2.as_deref()
            .unwrap_or(s)
            .parse()
            .map(StatusAddr::Tcp)
            .map_err(|_| {
                format!("{s:?} is neither IP:PORT (127.0.0.1:9187, [::1]:9187) nor a socket path")
            })
    }
}

impl std::fmt::Display for StatusAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusAddr::Tcp(addr) => write!(f, "http://{addr}"),
            StatusAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}
