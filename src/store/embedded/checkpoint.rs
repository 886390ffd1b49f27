//! Keeping the WAL short beside the writer. The writer never checkpoints inside a commit
//! (`wal_autocheckpoint=0`); a checkpointer thread on its own connection copies committed WAL
//! pages into the database file after commits (`PASSIVE`: it never waits for the writer or the
//! readers, and they never wait for it), and the writer finishes a checkpoint itself only when
//! the WAL has grown past `WAL_FRAMES_LIMIT` (measured: +37% acked appends/s, BENCHMARKS.md).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::sqlite_unavailable;

/// Least time between two checkpoints of the checkpointer thread.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// WAL length (frames of one page) past which the writer finishes a checkpoint itself: 4 MiB
/// of 4 KiB pages.
const WAL_FRAMES_LIMIT: i64 = 1024;

/// Opens the checkpointer's connection on the file the writer created.
pub(super) fn open(file: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// The writer's link to the checkpointer: woken after each commit, stopped when the writer
/// stops (at close, or when every store handle is dropped).
pub(super) struct Checkpoints {
    /// Holds one wake-up; `None` once stopped.
    wake: Option<SyncSender<()>>,
    wal: Arc<Wal>,
    thread: Option<JoinHandle<()>>,
}

/// The WAL as the last checkpoint found it.
#[derive(Default)]
struct Wal {
    /// Frames in the WAL.
    frames: AtomicI64,
    /// Whether a commit has asked for a checkpoint that has not started yet: the writer sends
    /// a wake-up only when it sets this, so a run of commits wakes the checkpointer once, not
    /// once per commit (each wake-up is a context switch of a thread that would only note it).
    asked: AtomicBool,
    /// Whether a warned-about failure has not cleared yet (logged when it starts and when it
    /// clears, not at every checkpoint).
    failing: AtomicBool,
}

impl Checkpoints {
    /// Starts the checkpointer thread on `conn`.
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        let (wake, woken) = mpsc::sync_channel(1);
        let wal = Arc::new(Wal::default());
        let thread = {
            let wal = wal.clone();
            std::thread::Builder::new()
                .name("embedded-checkpoint".into())
                .spawn(move || {
                    super::apply::background(super::apply::CHECKPOINT_NICE);
                    run_checkpointer(&conn, &woken, &wal)
                })?
        };
        Ok(Self {
            wake: Some(wake),
            wal,
            thread: Some(thread),
        })
    }

    /// After a commit of the writer (on `conn`).
    pub(super) fn committed(&self, conn: &Connection) {
        if let Some(wake) = &self.wake {
            // Asked already (or the channel full): the checkpoint not yet started covers this
            // commit too.
            if !self.wal.asked.swap(true, Ordering::Relaxed) {
                let _ = wake.try_send(());
            }
        }
        // SQLite restarts the WAL from its start only when a write begins after a checkpoint
        // copied all of it; under steady writes the checkpointer is always a few commits
        // behind, so the WAL would grow without end. Past the limit the writer copies the rest
        // itself (little: the checkpointer did most of it).
        if self.wal.frames.load(Ordering::Relaxed) > WAL_FRAMES_LIMIT {
            checkpoint(conn, &self.wal);
        }
    }

    /// Stops the checkpointer thread and waits until it has.
    pub(super) fn stop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies committed WAL pages into the database file after a commit, at most once per
/// `CHECKPOINT_INTERVAL`: each checkpoint costs an fsync of the database file, and at low
/// rates (many small commits) one per commit would double the fsyncs. The commits during a
/// checkpoint or the pause wake it once more, with one wake-up (`Wal::asked`). Returns when
/// the writer drops its end.
fn run_checkpointer(conn: &Connection, woken: &mpsc::Receiver<()>, wal: &Wal) {
    let mut pending = woken.recv().is_ok();
    while pending {
        // Cleared before the checkpoint: a commit after this point asks again.
        wal.asked.store(false, Ordering::Relaxed);
        checkpoint(conn, wal);
        let until = Instant::now() + CHECKPOINT_INTERVAL;
        pending = false;
        loop {
            match woken.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(()) => pending = true,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if !pending {
            pending = woken.recv().is_ok();
        }
    }
}

/// One `PASSIVE` checkpoint; records the WAL's length in frames.
///
/// A failure that makes the storage unavailable (a full disk, an I/O error) fails the writer's
/// next commit too, and the writer reports it, once for the whole condition (`batch::Failing`);
/// the checkpointer then stays quiet (debug), so that one condition is one log line. Other
/// failures are warned about when they start and when they clear.
fn checkpoint(conn: &Connection, wal: &Wal) {
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
        Ok(log) => {
            wal.frames.store(log, Ordering::Relaxed);
            if wal.failing.swap(false, Ordering::Relaxed) {
                tracing::info!("embedded store checkpoints again");
            }
        }
        Err(e) if sqlite_unavailable(&e) => {
            tracing::debug!(error = %e, "embedded store checkpoint failed: storage unavailable");
        }
        Err(e) => {
            // At info: the committed data is safe in the WAL, which only grows until a
            // checkpoint succeeds; what refuses writes (a full disk) is the writer's error,
            // logged once by the writer.
            if !wal.failing.swap(true, Ordering::Relaxed) {
                tracing::info!(error = %e, "embedded store checkpoint failed (retried after the next commits)");
            }
        }
    }
}
