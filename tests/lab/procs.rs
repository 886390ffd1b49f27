//! The lab's processes: chat-service (the debug binary of this package), redis-server and a
//! PostgreSQL cluster of their own, each a real process with its output in a log file.
//! `Drop` stops a process that is still running (PostgreSQL with a fast shutdown, the others
//! with SIGKILL) and reaps it.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::{Host, Lab, run};
use crate::support::Endpoint;

/// How long a process may take to be ready (the debug binary, migrations, `initdb`).
const START: Duration = Duration::from_secs(30);

pub struct Proc {
    name: String,
    child: Child,
    pub log: PathBuf,
    /// Sent first on drop (then SIGKILL after 10 s); `None`: SIGKILL at once.
    stop_signal: Option<&'static str>,
}

impl Proc {
    /// Starts `cmd` with stderr (and stdout unless `piped_stdout`) appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, piped_stdout: bool) -> Proc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log");
        let stdout = if piped_stdout {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone().expect("log"))
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            name: name.into(),
            child,
            log: log.to_path_buf(),
            stop_signal: None,
        }
    }

    /// Polls `check` (a connection attempt) until it succeeds; fails with the log's tail
    /// after `START`.
    async fn ready<F, Fut>(&self, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + START;
        while !check().await {
            assert!(
                Instant::now() < deadline,
                "{} not ready\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (reaped).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- last lines of {} ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Some(signal) = self.stop_signal {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &self.pid().to_string()])
                .output();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill9();
    }
}

/// A chat-service process, reached by the test at `addr`.
pub struct Service {
    pub proc: Proc,
    endpoint: Endpoint,
}

impl std::ops::Deref for Service {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// The chat-service binary with the settings every lab instance shares (no rate limits: the
/// load is the test's); `cmd` is the binary itself or `ip netns exec <host> <binary>`.
pub fn chat_command(mut cmd: Command, env: &[(&str, &str)]) -> Command {
    cmd.envs([
        ("PORT", "0"),
        ("HOST", "0.0.0.0"),
        ("RUST_LOG", "info"),
        ("RATE_LIMIT_PER_SEC", "0"),
        ("EVENT_RATE_LIMIT_PER_SEC", "0"),
    ])
    .envs(env.iter().copied());
    cmd
}

pub const CHAT_BIN: &str = env!("CARGO_BIN_EXE_chat-service");

impl Service {
    /// Starts `cmd` (see `chat_command`) and waits for its `listening on` line; the test
    /// reaches it at `ip` and the printed port.
    pub async fn start(name: &str, cmd: Command, ip: Ipv4Addr, log: &Path) -> Service {
        let mut proc = Proc::spawn(name, cmd, log, true);
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let port = tokio::time::timeout(
            START,
            tokio::task::spawn_blocking(move || {
                let mut lines = BufReader::new(stdout).lines();
                let port = lines.by_ref().map_while(Result::ok).find_map(|line| {
                    let addr = line.strip_prefix("listening on http://")?;
                    addr.trim().parse::<SocketAddr>().ok().map(|a| a.port())
                });
                // Nothing else is printed on stdout; keep the pipe drained anyway.
                std::thread::spawn(move || lines.for_each(drop));
                port
            }),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
        let Some(port) = port else {
            panic!("{name} did not start\n{}", proc.log_tail());
        };
        Service {
            proc,
            endpoint: Endpoint {
                addr: SocketAddr::from((ip, port)),
            },
        }
    }
}

/// A fresh redis-server (no persistence) in `host`, on port 6379 of its namespace; `reach` is
/// its address from the test. Returns once it answers PING.
pub async fn redis(lab: &Lab, host: &Host, reach: Ipv4Addr) -> Proc {
    let mut cmd = lab.command(host, "redis-server");
    cmd.args([
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
    ])
    .args(["--save", "", "--appendonly", "no"]);
    let proc = Proc::spawn("redis", cmd, &lab.dir.path().join("redis.log"), false);
    let url = format!("redis://{reach}:6379");
    proc.ready(|| {
        let url = url.clone();
        async move {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return false;
            };
            match client.get_multiplexed_async_connection().await {
                Ok(mut c) => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    proc
}

/// The newest installed PostgreSQL's binaries (Debian: `/usr/lib/postgresql/<major>/bin`).
fn pg_bindir() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql")
        .filter_map(|e| {
            let e = e.ok()?;
            let major = e.file_name().to_str()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("a PostgreSQL server binary").1
}

/// A fresh PostgreSQL cluster (`initdb` into the lab's folder, trust auth) in `host`, on port
/// 5432 of its namespace, run as the `postgres` user (it refuses root); `reach` is its address
/// from the test. Returns once it accepts connections.
pub async fn postgres(lab: &Lab, host: &Host, reach: Ipv4Addr) -> Proc {
    let bin = pg_bindir();
    let data = lab.dir.path().join("pg");
    std::fs::create_dir(&data).expect("pg data dir");
    // The postgres user must reach its data folder inside the lab's (root-owned) folder.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod lab dir");
    let data_s = data.to_str().expect("utf-8 path");
    run(&["chown", "postgres:postgres", data_s]);
    let as_postgres = ["--reuid=postgres", "--regid=postgres", "--init-groups"];
    let initdb = bin.join("initdb");
    let out = Command::new("setpriv")
        .args(as_postgres)
        .arg(&initdb)
        .args(["-D", data_s, "-U", "postgres", "-A", "trust", "--no-sync"])
        .args(["--no-instructions", "-E", "UTF8", "--locale", "C"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The instances connect from their own namespaces' addresses.
    let mut hba = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("pg_hba.conf"))
        .expect("pg_hba.conf");
    std::io::Write::write_all(&mut hba, b"host all all 0.0.0.0/0 trust\n").expect("pg_hba.conf");
    let mut cmd = lab.command(host, "setpriv");
    cmd.args(as_postgres)
        .arg(bin.join("postgres"))
        .args(["-D", data_s, "-c", "listen_addresses=*", "-c", "port=5432"])
        .args(["-c", &format!("unix_socket_directories={data_s}")]);
    let mut proc = Proc::spawn("postgres", cmd, &lab.dir.path().join("pg.log"), false);
    proc.stop_signal = Some("INT");
    let url = format!("postgres://postgres@{reach}:5432/postgres");
    proc.ready(|| {
        let url = url.clone();
        async move {
            use sqlx::Connection;
            sqlx::PgConnection::connect(&url).await.is_ok()
        }
    })
    .await;
    proc
}
