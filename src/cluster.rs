//! Throwaway PostgreSQL clusters: `initdb` into a private directory, a
//! `postgres` server on a private Unix socket, everything removed on drop.
//!
//! For tests, benchmarks and a default database when none is configured.
//! The server binaries are found on `PATH`, then under
//! `/usr/lib/postgresql/*/bin` (newest version first). PostgreSQL refuses to
//! run as root; as root the cluster runs as the `postgres` system user (or
//! the user given to [`Builder::os_user`]) in directories it owns.
//!
//! The server is the creating thread's child process with a parent-death
//! signal: if the creating **thread** ends, or the process is killed, the
//! server shuts down instead of lingering. Create clusters on a thread that
//! outlives them (normally the main thread).

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};

/// Why a cluster could not be created or started.
#[derive(Debug)]
pub struct ClusterError(String);

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

fn err(message: impl Into<String>) -> ClusterError {
    ClusterError(message.into())
}

/// Settings for a [`TempCluster`].
#[derive(Debug, Clone, Default)]
pub struct Builder {
    settings: Vec<(String, String)>,
    os_user: Option<String>,
    durable: bool,
    /// The server's certificate chain and key, PEM.
    tls: Option<(String, String)>,
}

impl Builder {
    /// Defaults: `fsync` off, 100 connections, Unix socket only.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// A server setting, passed as `-c name=value`.
    pub fn setting(mut self, name: &str, value: &str) -> Builder {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Shorthand for the `max_connections` setting.
    pub fn max_connections(self, n: u32) -> Builder {
        self.setting("max_connections", &n.to_string())
    }

    /// Keep PostgreSQL's default durability (`fsync` on) instead of turning
    /// it off for speed. For benchmarks that must match a real server.
    pub fn durable(mut self, durable: bool) -> Builder {
        self.durable = durable;
        self
    }

    /// Also serve TLS on `127.0.0.1` (a free port, see
    /// [`TempCluster::tcp_connection_string`]) with this certificate chain
    /// and private key, both PEM. The Unix socket stays (PostgreSQL never
    /// encrypts one). Default: Unix socket only.
    pub fn tls(mut self, cert_chain_pem: &str, key_pem: &str) -> Builder {
        self.tls = Some((cert_chain_pem.to_owned(), key_pem.to_owned()));
        self
    }

    /// The operating-system user to run the server as when running as root.
    /// Default: `postgres`.
    pub fn os_user(mut self, user: &str) -> Builder {
        self.os_user = Some(user.to_owned());
        self
    }

    /// Creates and starts the cluster; waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// If the server binaries are missing, the system user does not exist
    /// (as root), or `initdb` or the server fail; the message includes the
    /// tail of their output.
    pub fn start(self) -> Result<TempCluster, ClusterError> {
        let bin = find_bindir()?;
        let owner = owner(self.os_user.as_deref())?;
        let dir = make_private_dir(owner.as_ref())?;
        let port = if self.tls.is_some() {
            free_tcp_port()?
        } else {
            PORT
        };
        let mut cluster = TempCluster {
            bin,
            dir,
            owner,
            settings: self.settings,
            durable: self.durable,
            port,
            tcp: self.tls.is_some(),
            server: None,
            owner_pid: std::process::id(),
        };
        if let Some((cert, key)) = &self.tls {
            cluster.install_tls(cert, key)?;
        }
        cluster.initdb()?;
        cluster.start_server()?;
        Ok(cluster)
    }
}

/// A running throwaway cluster; stopped and deleted on drop by the process
/// that started it (a forked child's drop leaves it alone).
#[derive(Debug)]
pub struct TempCluster {
    bin: PathBuf,
    dir: PathBuf,
    owner: Option<User>,
    settings: Vec<(String, String)>,
    durable: bool,
    /// The server's port (its Unix socket's name too).
    port: u16,
    /// It also listens on 127.0.0.1, with TLS.
    tcp: bool,
    server: Option<Child>,
    /// Only this process stops and removes the cluster: a forked child's
    /// copy is inert.
    owner_pid: u32,
}

/// A TCP port free on 127.0.0.1 a moment ago (the kernel's pick).
fn free_tcp_port() -> Result<u16, ClusterError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| err(format!("finding a free port: {e}")))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| err(format!("finding a free port: {e}")))
}

/// The superuser the clusters are created with.
pub const SUPERUSER: &str = "postgres";
const PORT: u16 = 5432;

impl TempCluster {
    /// A cluster with the default [`Builder`] settings.
    ///
    /// # Errors
    ///
    /// As for [`Builder::start`].
    pub fn start() -> Result<TempCluster, ClusterError> {
        Builder::new().start()
    }

    /// A [`Builder`] for other settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The directory holding the socket (the cluster's private directory).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A libpq connection string for database `postgres` as the superuser.
    pub fn connection_string(&self) -> String {
        self.connection_string_for(SUPERUSER, "postgres")
    }

    /// A libpq connection string for `dbname` as `user`.
    pub fn connection_string_for(&self, user: &str, dbname: &str) -> String {
        format!(
            "host={} port={} user={user} dbname={dbname}",
            self.dir.display(),
            self.port
        )
    }

    /// For a cluster built with [`Builder::tls`]: a connection string over
    /// TCP for database `postgres` as the superuser, to the host name
    /// `localhost` at `127.0.0.1`; add the `sslmode` to test.
    pub fn tcp_connection_string(&self) -> Option<String> {
        self.tcp.then(|| {
            format!(
                "host=localhost hostaddr=127.0.0.1 port={} user={SUPERUSER} dbname=postgres",
                self.port
            )
        })
    }

    /// Writes the server's certificate and key where the server (its own
    /// user, as root) can read them, the key private to it, as PostgreSQL
    /// demands.
    fn install_tls(&mut self, cert: &str, key: &str) -> Result<(), ClusterError> {
        let write = |name: &str, text: &str| -> Result<String, ClusterError> {
            let path = self.dir.join(name);
            fs::write(&path, text).map_err(|e| err(format!("writing {path:?}: {e}")))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| err(format!("{path:?}: {e}")))?;
            if let Some(user) = &self.owner {
                nix::unistd::chown(&path, Some(user.uid), Some(user.gid))
                    .map_err(|e| err(format!("{path:?}: {e}")))?;
            }
            Ok(path.display().to_string())
        };
        let cert = write("server.crt", cert)?;
        let key = write("server.key", key)?;
        self.settings.extend([
            ("ssl".to_owned(), "on".to_owned()),
            ("ssl_cert_file".to_owned(), cert),
            ("ssl_key_file".to_owned(), key),
        ]);
        Ok(())
    }

    /// The server's postmaster pid.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// Stops the server with a fast shutdown (open sessions are ended) and
    /// starts it again on the same data.
    ///
    /// # Errors
    ///
    /// If the server does not come back.
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        self.stop_server();
        self.start_server()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.dir)
            .env("LC_ALL", "C")
            .env_remove("PGDATA");
        if let Some(user) = &self.owner {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            cmd.env("HOME", &self.dir).env("USER", &user.name);
        }
        cmd
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        let log = self.dir.join("initdb.log");
        let out = fs::File::create(&log).map_err(|e| err(format!("creating {log:?}: {e}")))?;
        let status = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| err(e.to_string()))?)
            .stderr(out)
            .status()
            .map_err(|e| err(format!("running initdb: {e}")))?;
        if !status.success() {
            return Err(err(format!("initdb failed ({status}): {}", tail(&log))));
        }
        Ok(())
    }

    fn start_server(&mut self) -> Result<(), ClusterError> {
        let log = self.dir.join("server.log");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| err(format!("opening {log:?}: {e}")))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(self.data_dir());
        let listen = if self.tcp { "127.0.0.1" } else { "" };
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), listen.into()),
            (
                "unix_socket_directories".into(),
                self.dir.display().to_string(),
            ),
            ("port".into(), self.port.to_string()),
        ];
        if !self.durable {
            settings.push(("fsync".into(), "off".into()));
            settings.push(("synchronous_commit".into(), "off".into()));
            settings.push(("full_page_writes".into(), "off".into()));
        }
        settings.extend(self.settings.iter().cloned());
        for (name, value) in &settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| err(e.to_string()))?)
            .stderr(out);
        let parent = std::process::id();
        // SAFETY: the closure only calls prctl and getppid, both
        // async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Fast shutdown if our thread dies; runs after the uid
                // switch, which would otherwise clear it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // Closes the race with a parent that died before prctl.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("parent exited before the server started"));
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| err(format!("starting postgres: {e}")))?;
        self.server = Some(child);
        self.wait_ready(&log)
    }

    fn wait_ready(&mut self, log: &Path) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let conn = self.connection_string();
        loop {
            if let Some(server) = self.server.as_mut() {
                if let Ok(Some(status)) = server.try_wait() {
                    self.server = None;
                    return Err(err(format!(
                        "postgres exited during start-up ({status}): {}",
                        tail(log)
                    )));
                }
            }
            match postgres::Client::connect(&conn, postgres::NoTls) {
                Ok(client) => {
                    drop(client);
                    return Ok(());
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    return Err(err(format!(
                        "postgres did not accept connections within 60 s: {e}: {}",
                        tail(log)
                    )));
                }
            }
        }
    }

    fn stop_server(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let pid = Pid::from_raw(server.id() as i32);
        // SIGINT: fast shutdown, ends sessions and checkpoints.
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match server.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = server.kill();
                    let _ = server.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if self.owner_pid != std::process::id() {
            // A forked child's copy: the server and files are the parent's.
            if let Some(server) = self.server.take() {
                std::mem::forget(server);
            }
            return;
        }
        self.stop_server();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// The directory holding `initdb` and `postgres`.
///
/// # Errors
///
/// If neither `PATH` nor `/usr/lib/postgresql/*/bin` has them.
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = std::env::split_paths(&path).find(|d| has_server(d)) {
        // A PATH entry may hold symlinks (/usr/local/bin/initdb ->
        // /usr/lib/postgresql/15/bin/initdb): use the real directory, which
        // has the rest of the installation (pgbench, pg_ctl) too.
        let real = fs::canonicalize(dir.join("initdb"))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|d| has_server(d));
        return Ok(real.unwrap_or(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        err("PostgreSQL server binaries (initdb, postgres) not found on PATH or under \
             /usr/lib/postgresql/*/bin; install the server package (e.g. apt-get install postgresql)")
    })
}

/// The user to run the server as: `None` means the current user.
fn owner(requested: Option<&str>) -> Result<Option<User>, ClusterError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let name = requested.unwrap_or("postgres");
    match User::from_name(name) {
        Ok(Some(user)) => Ok(Some(user)),
        _ => Err(err(format!(
            "PostgreSQL will not run as root and there is no {name:?} system user to run it as \
             (create one, or install the postgresql package which does)"
        ))),
    }
}

fn make_private_dir(owner: Option<&User>) -> Result<PathBuf, ClusterError> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let base = std::env::temp_dir();
    let dir = base.join(format!(
        "fork_safe-pg-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).map_err(|e| err(format!("creating {dir:?}: {e}")))?;
    // World-readable so any local user can reach the socket inside;
    // the data directory below it is private to the server.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| err(format!("chmod {dir:?}: {e}")))?;
    if let Some(user) = owner {
        nix::unistd::chown(&dir, Some(user.uid), Some(user.gid))
            .map_err(|e| err(format!("chown {dir:?} to {}: {e}", user.name)))?;
    }
    Ok(dir)
}
