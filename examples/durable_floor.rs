//! What a durable write costs on this machine's disk (issue 16): the floor under the embedded
//! store's commit, measured without the service.
//!
//! `cargo run --release --example durable_floor -- [dir] [ops]` (defaults: `./data-floor`, 4000)
//!
//! For each way of making a small record durable it prints the wall time per operation
//! (p50, p99) and the process's user and kernel CPU per operation (`/proc/self/stat`, in clock
//! ticks of 10 ms, so a run needs a few thousand operations):
//! - a 300-byte `pwrite` + `fsync` / `fdatasync` appended to a file, and into a preallocated
//!   (zero-filled) one, where an append changes no metadata;
//! - the same write with `O_DSYNC`, and a 4 KiB `O_DIRECT|O_DSYNC` write;
//! - SQLite (the bundled library the store links, WAL) committing 1, 2, 4 or 8 messages in one
//!   transaction with `synchronous=FULL` (one fsync per commit, as the store does), on the
//!   store's shape of table (`AUTOINCREMENT` seq, unique message id, `(room, seq)` index, the
//!   room's `lastMessage` upsert), per message; and one message with `synchronous=NORMAL` (no
//!   fsync: what SQLite costs above the flush).
//!
//! BENCHMARKS.md, "The durable write: what a flush costs", has the figures.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, params};

/// Linux x86-64 values (the `libc` crate is not a dependency).
const O_DIRECT: i32 = 0o40000;
const O_DSYNC: i32 = 0o10000;
/// `sysconf(_SC_CLK_TCK)` on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// User and kernel CPU of this process so far, in microseconds.
fn cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses): state is field 3; utime and
    // stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields[i - 3].parse::<f64>().expect("ticks") * 1e6 / TICKS_PER_SECOND;
    (ticks(14), ticks(15))
}

struct Run {
    started: (f64, f64),
    wall_us: Vec<f64>,
}

impl Run {
    fn start() -> Self {
        Self {
            started: cpu(),
            wall_us: Vec::new(),
        }
    }

    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.wall_us.push(t.elapsed().as_secs_f64() * 1e6);
        out
    }

    /// Prints the figures per `units` (operations, or messages).
    fn report(mut self, name: &str, units: usize) {
        let (user, sys) = cpu();
        self.wall_us.sort_by(f64::total_cmp);
        let at = |q: f64| self.wall_us[((self.wall_us.len() - 1) as f64 * q) as usize];
        println!(
            "| {name} | {:.0} | {:.0} | {:.1} | {:.1} |",
            at(0.5),
            at(0.99),
            (user - self.started.0) / units as f64,
            (sys - self.started.1) / units as f64,
        );
    }
}

fn fresh(path: &Path) -> File {
    let _ = std::fs::remove_file(path);
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .expect("create")
}

fn preallocate(path: &Path, bytes: usize) {
    let mut f = fresh(path);
    f.write_all(&vec![0u8; bytes]).expect("fill");
    f.sync_all().expect("sync");
}

fn files(dir: &Path, ops: usize) {
    let record = [b'x'; 300];
    let path = dir.join("floor.log");
    for (name, preallocated, data_only) in [
        ("300 B append, fsync", false, false),
        ("300 B append, fdatasync", false, true),
        ("300 B into a preallocated file, fdatasync", true, true),
    ] {
        if preallocated {
            preallocate(&path, ops * record.len());
        }
        let f = if preallocated {
            OpenOptions::new().write(true).open(&path).expect("open")
        } else {
            fresh(&path)
        };
        let mut run = Run::start();
        for i in 0..ops {
            run.time(|| {
                f.write_all_at(&record, (i * record.len()) as u64)
                    .expect("write");
                if data_only {
                    f.sync_data().expect("fdatasync");
                } else {
                    f.sync_all().expect("fsync");
                }
            });
        }
        run.report(name, ops);
    }
    preallocate(&path, ops * 4096);
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(O_DSYNC)
        .open(&path)
        .expect("open O_DSYNC");
    let mut run = Run::start();
    for i in 0..ops {
        run.time(|| {
            f.write_all_at(&record, (i * record.len()) as u64)
                .expect("write")
        });
    }
    run.report("300 B into a preallocated file, O_DSYNC", ops);
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(O_DSYNC | O_DIRECT)
        .open(&path)
        .expect("open O_DIRECT");
    // O_DIRECT wants a buffer aligned to the block: the aligned 4 KiB inside 8 KiB.
    let buf = vec![b'x'; 8192];
    let start = buf.as_ptr().align_offset(4096);
    let block = &buf[start..start + 4096];
    let mut run = Run::start();
    for i in 0..ops {
        run.time(|| f.write_all_at(block, (i * 4096) as u64).expect("write"));
    }
    run.report("4 KiB block, O_DIRECT + O_DSYNC", ops);
}

fn sqlite(dir: &Path, ops: usize) {
    let path = dir.join("floor.db");
    for (per_commit, synchronous) in [
        (1, "FULL"),
        (2, "FULL"),
        (4, "FULL"),
        (8, "FULL"),
        (1, "NORMAL"),
    ] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .expect("WAL");
        conn.pragma_update(None, "synchronous", synchronous)
            .expect("synchronous");
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .expect("autocheckpoint");
        conn.execute_batch(
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                message_id TEXT NOT NULL UNIQUE, room_id TEXT NOT NULL, user_id TEXT NOT NULL,
                message TEXT NOT NULL, timestamp INTEGER NOT NULL);
             CREATE INDEX messages_room_seq ON messages(room_id, seq);
             CREATE TABLE rooms (room_id TEXT PRIMARY KEY, last_content TEXT, last_timestamp INTEGER);",
        )
        .expect("schema");
        let commits = ops / per_commit;
        let mut run = Run::start();
        for c in 0..commits {
            run.time(|| {
                conn.prepare_cached("BEGIN IMMEDIATE").and_then(|mut s| s.execute([])).expect("begin");
                for m in 0..per_commit {
                    let n = c * per_commit + m;
                    // 5,000 rooms visited in a scattered order, as S1's senders are.
                    let room = format!("room-{}", (n * 7919) % 5000);
                    let message = "a 64-byte chat message ........................................";
                    conn.prepare_cached(
                        "INSERT INTO messages (message_id, room_id, user_id, message, timestamp)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut s| s.execute(params![format!("{n:032x}"), room, "user", message, n as i64]))
                    .expect("insert");
                    conn.prepare_cached(
                        "INSERT INTO rooms (room_id, last_content, last_timestamp) VALUES (?1, ?2, ?3)
                         ON CONFLICT(room_id) DO UPDATE SET last_content = excluded.last_content,
                            last_timestamp = excluded.last_timestamp",
                    )
                    .and_then(|mut s| s.execute(params![room, message, n as i64]))
                    .expect("room");
                }
                conn.prepare_cached("COMMIT").and_then(|mut s| s.execute([])).expect("commit");
            });
            // The store's checkpointer keeps the WAL short the same way (PASSIVE).
            if c % 100 == 99 {
                let _: i64 = conn
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(0))
                    .expect("checkpoint");
            }
        }
        run.report(
            &format!("SQLite WAL `{synchronous}`, {per_commit} message(s) per commit (per message; wall per commit)"),
            commits * per_commit,
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "./data-floor".into());
    let ops: usize = args
        .next()
        .map_or(4000, |s| s.parse().expect("ops: a number"));
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("dir");
    println!(
        "| durable write of a small record | wall p50 µs | wall p99 µs | user CPU µs | kernel CPU µs |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    files(dir, ops);
    sqlite(dir, ops);
    for name in ["floor.log", "floor.db", "floor.db-wal", "floor.db-shm"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}
