//! Keeping the WAL short beside the writer. The writer never checkpoints inside a commit
//! (`wal_autocheckpoint=0`); a checkpointer task on its own connection copies committed WAL
//! pages into the database file after commits, and the writer finishes a checkpoint itself
//! only when the WAL has grown past `WAL_FRAMES_LIMIT` (measured: +37% acked appends/s,
//! BENCHMARKS.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use sqlx::sqlite::SqliteConnection;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Least time between two checkpoints of the checkpointer task.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// WAL length (frames of one page) past which the writer finishes a checkpoint itself: 4 MiB
/// of 4 KiB pages.
const WAL_FRAMES_LIMIT: i64 = 1024;

/// The writer's link to the checkpointer: woken after each commit, stopped when the writer
/// stops (at close, or when every store handle is dropped).
pub(super) struct Checkpoints {
    committed: Arc<Notify>,
    wal: Arc<Wal>,
    task: JoinHandle<()>,
}

/// The WAL as the last checkpoint found it.
#[derive(Default)]
struct Wal {
    /// Frames in the WAL.
    frames: AtomicI64,
    /// Whether the last checkpoint failed (logged when it starts and when it clears: a full
    /// disk fails every one).
    failing: AtomicBool,
}

impl Checkpoints {
    /// Starts the checkpointer task on `conn`.
    pub(super) fn start(conn: SqliteConnection) -> Self {
        let committed = Arc::new(Notify::new());
        let wal = Arc::new(Wal::default());
        let task = tokio::spawn(run_checkpointer(conn, committed.clone(), wal.clone()));
        Self {
            committed,
            wal,
            task,
        }
    }

    /// After a commit of the writer (on `conn`).
    pub(super) async fn committed(&self, conn: &mut SqliteConnection) {
        self.committed.notify_one();
        // SQLite restarts the WAL from its start only when a write begins after a checkpoint
        // copied all of it; under steady writes the checkpointer is always a few commits
        // behind, so the WAL would grow without end. Past the limit the writer copies the rest
        // itself (little: the checkpointer did most of it).
        if self.wal.frames.load(Ordering::Relaxed) > WAL_FRAMES_LIMIT {
            checkpoint(conn, &self.wal).await;
        }
    }

    /// Stops the checkpointer task and waits until it has.
    pub(super) async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies committed WAL pages into the database file (`PASSIVE`: never blocks the writer or
/// readers) after a commit, at most once per `CHECKPOINT_INTERVAL`: each checkpoint costs an
/// fsync of the database file, and at low rates (many small commits) one per commit would
/// double the fsyncs. Commits during a checkpoint or the pause wake it once more.
async fn run_checkpointer(mut conn: SqliteConnection, committed: Arc<Notify>, wal: Arc<Wal>) {
    loop {
        committed.notified().await;
        checkpoint(&mut conn, &wal).await;
        tokio::time::sleep(CHECKPOINT_INTERVAL).await;
    }
}

/// One `PASSIVE` checkpoint; records the WAL's length in frames.
async fn checkpoint(conn: &mut SqliteConnection, wal: &Wal) {
    match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(conn)
        .await
    {
        Ok((_, log, _)) => {
            wal.frames.store(log, Ordering::Relaxed);
            if wal.failing.swap(false, Ordering::Relaxed) {
                tracing::info!("embedded store checkpoints again");
            }
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
