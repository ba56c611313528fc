//! A throwaway PostgreSQL cluster for the tests of the PostgreSQL store and
//! of several controllers on one database (the controller's tests include
//! this file by path): `initdb` in a temp dir, the server started with
//! `pg_ctl`, listening only on a Unix socket in that dir; [`PgCluster`]'s drop stops it (immediate mode) and
//! removes the dir. Real PostgreSQL, never a mock.
//!
//! The server binaries come from `GRAYDAR_PG_BIN` or the newest
//! `/usr/lib/postgresql/<version>/bin` (Debian's `postgresql` package,
//! installed by `cargo xtask setup`). `initdb` refuses to run as root: as
//! root, the cluster runs as the `postgres` user (`runuser`), otherwise as
//! the current user. Anything missing fails the test with what to install.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The cluster's superuser (trust authentication on its socket only).
const USER: &str = "graydar";

pub struct PgCluster {
    bin: PathBuf,
    /// Run the server's programs as `postgres` (we are root).
    as_postgres: bool,
    dir: tempfile::TempDir,
}

/// `GRAYDAR_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin` with an `initdb`.
fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GRAYDAR_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "the PostgreSQL store's tests need the PostgreSQL server (initdb, pg_ctl) and found none \
             in /usr/lib/postgresql/*/bin: run `cargo xtask setup` (Debian's postgresql), or set GRAYDAR_PG_BIN"
        ),
    }
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run `id -u`");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

impl PgCluster {
    /// Creates and starts a cluster; panics with the server's log when it
    /// cannot.
    pub fn start() -> PgCluster {
        let bin = server_bin();
        let as_postgres = is_root();
        // As root: in /tmp, which the `postgres` user can reach (TMPDIR may not be).
        let parent = if as_postgres {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("graydar-pg-")
            .tempdir_in(&parent)
            .expect("temp dir for the PostgreSQL cluster");
        let cluster = PgCluster { bin, as_postgres, dir };
        if as_postgres {
            must(
                Command::new("chown").arg("postgres:").arg(cluster.dir()),
                "chown the cluster dir",
            );
        }
        let data = cluster.data();
        must(
            cluster
                .server_cmd("initdb")
                .arg("-D")
                .arg(&data)
                .arg(format!("--username={USER}"))
                .args([
                    "--auth=trust",
                    "--no-sync",
                    "--no-instructions",
                    "--encoding=UTF8",
                    "--no-locale",
                ]),
            "initdb",
        );
        cluster.resume();
        cluster
    }

    /// Starts the server of this cluster (again); panics with its log when
    /// it cannot.
    pub fn resume(&self) {
        // Only the socket in the cluster's dir; durability off (a throwaway).
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off",
            self.dir().display()
        );
        let start = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", "60", "-o", options.as_str(), "start"])
            .output();
        if !matches!(&start, Ok(out) if out.status.success()) {
            panic!(
                "pg_ctl start in {} failed ({})\nserver log:\n{}",
                self.dir().display(),
                describe(&start),
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
        }
    }

    /// Stops the server (`fast`: every session is cut, what was committed
    /// is kept; `immediate` would lose the last commits of this throwaway
    /// cluster, which runs with `synchronous_commit=off`);
    /// [`PgCluster::resume`] starts it again.
    #[allow(
        dead_code,
        reason = "not every test crate that includes this file pauses its cluster"
    )]
    pub fn pause(&self) {
        must(
            self.server_cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
        );
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// The server's processes now: the postmaster (first line of its
    /// `postmaster.pid`) and its children (benchmarks pin them and count
    /// their CPU).
    #[allow(dead_code, reason = "only the benchmarks look at the server's processes")]
    pub fn server_pids(&self) -> Vec<u32> {
        let Some(main) = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        else {
            return Vec::new();
        };
        let mut pids = vec![main];
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(e.path().join("stat")).ok().and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()))
            });
            if ppid == Some(main) {
                pids.push(pid);
            }
        }
        pids
    }

    fn log(&self) -> PathBuf {
        self.dir().join("server.log")
    }

    /// One of the server's programs, as the user that owns the cluster.
    fn server_cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// The URL of the database `db` of this cluster (its Unix socket).
    pub fn url(&self, db: &str) -> String {
        format!("postgres:///{db}?host={}&user={USER}", self.dir().display())
    }

    /// The URL of the cluster's default database (`postgres`).
    pub fn default_url(&self) -> String {
        self.url("postgres")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let out = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            // The temp dir goes anyway; say which server may still run.
            eprintln!(
                "stopping the test PostgreSQL cluster in {} failed: {}",
                self.dir().display(),
                describe(&out)
            );
        }
    }
}

/// Runs `cmd`; panics with its output unless it succeeds.
fn must(cmd: &mut Command, what: &str) {
    let out = cmd.output();
    if !matches!(&out, Ok(o) if o.status.success()) {
        panic!("{what} failed: {}", describe(&out));
    }
}

fn describe(out: &std::io::Result<Output>) -> String {
    match out {
        Ok(o) => format!(
            "{}: {}{}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim(),
            String::from_utf8_lossy(&o.stdout).trim()
        ),
        Err(e) => format!("cannot run it: {e}"),
    }
}
