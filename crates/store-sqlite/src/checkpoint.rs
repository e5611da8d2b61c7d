//! WAL checkpoints off the write path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the
//! threshold, so the caller of a large write waited for the WAL to be
//! copied into the database and synced a second time. Here the writer only
//! signals after each commit, and one thread with its own connection runs
//! `PASSIVE` checkpoints, which never block readers or the writer. Signals
//! coalesce: a checkpoint covers every commit before it.
//!
//! SQLite rewinds the WAL to its start only when a write begins after a
//! checkpoint has copied all of it, which back-to-back writes never allow:
//! the WAL then grows without bound (5.6 GB while bulk-loading 800 000
//! offers; 4.5 GB in 15 s of concurrent 1 000-offer bulk upserts), and every
//! page read searches a longer WAL index. So past a size the thread marks a
//! restart due, and the writer, between two of its transactions, runs a
//! `RESTART` checkpoint itself: holding the writer it cannot lose the race
//! for the write lock to the next transaction, as the thread did.

use crate::schema;
use offer_domain::{StoreError, StoreResult};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

pub(crate) struct Checkpointer {
    wake: SyncSender<()>,
    thread: JoinHandle<()>,
    restart_due: Arc<AtomicBool>,
}

/// WAL size past which the writer restarts the WAL: well above one
/// 100 000-offer overwrite, so those rarely pay for a restart.
const RESTART_BYTES: i64 = 256 * 1024 * 1024;

/// A `PASSIVE` checkpoint; true if the WAL holds more than
/// `restart_frames` frames, i.e. a restart is due.
fn checkpoint(conn: &rusqlite::Connection, restart_frames: i64) -> rusqlite::Result<bool> {
    let wal_frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    Ok(wal_frames > restart_frames)
}

/// How long a restart waits for readers of older snapshots. Every write
/// waits behind it, and a long read (an archive export) may hold it up for
/// seconds, so it gives up soon; the next checkpoint marks it due again.
const RESTART_WAIT: Duration = Duration::from_millis(100);

/// Run by the writer between transactions: copies the few frames the
/// last `PASSIVE` checkpoint left, waits up to [`RESTART_WAIT`] for readers
/// of older snapshots, and makes the next write start the WAL over (which
/// `journal_size_limit` then truncates).
pub(crate) fn restart(writer: &rusqlite::Connection) {
    let wait = |timeout| {
        if let Err(e) = writer.busy_timeout(timeout) {
            tracing::warn!(error = %e, "cannot set the SQLite busy timeout");
        }
    };
    wait(RESTART_WAIT);
    let done = writer.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0));
    wait(schema::BUSY_TIMEOUT);
    match done {
        Ok(0) => {}
        Ok(_) => tracing::debug!("SQLite WAL restart gave way to a long read; retried later"),
        Err(e) => tracing::warn!(error = %e, "SQLite WAL restart failed"),
    }
}

impl Checkpointer {
    pub(crate) fn start(path: &Path) -> StoreResult<Checkpointer> {
        let conn = schema::open_checkpointer(path)?;
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| StoreError::Unavailable(format!("SQLite page size: {e}")))?;
        let restart_frames = RESTART_BYTES / page_size.max(512);
        let restart_due = Arc::new(AtomicBool::new(false));
        // One pending signal is enough: a checkpoint covers all commits before it.
        let (wake, wakes) = sync_channel::<()>(1);
        let due = Arc::clone(&restart_due);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while wakes.recv().is_ok() {
                    match checkpoint(&conn, restart_frames) {
                        Ok(true) => due.store(true, Ordering::Release),
                        Ok(false) => {}
                        // The next commit retries; the WAL only grows meanwhile.
                        Err(e) => tracing::warn!(error = %e, "SQLite WAL checkpoint failed"),
                    }
                }
                // The writer, closing last, checkpoints what is left.
                drop(conn);
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the SQLite checkpoint thread: {e}"))
            })?;
        Ok(Checkpointer {
            wake,
            thread,
            restart_due,
        })
    }

    /// Asks for a checkpoint after a commit; never blocks.
    pub(crate) fn wake(&self) {
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }

    /// Whether the writer should [`restart`] the WAL now (clears the mark).
    pub(crate) fn take_restart_due(&self) -> bool {
        self.restart_due.swap(false, Ordering::AcqRel)
    }

    /// Stops the thread once its current checkpoint is done and closes its
    /// connection, so the writer can close last.
    pub(crate) fn stop(self) {
        drop(self.wake);
        if self.thread.join().is_err() {
            tracing::warn!("SQLite checkpoint thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the threshold the checkpoint marks a restart due, and the
    /// writer's restart makes the next commit start the WAL over rather
    /// than append, even though the writer commits back to back.
    #[test]
    fn a_wal_past_the_threshold_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let writer = schema::open_writer(&path).unwrap();
        let ckpt = schema::open_checkpointer(&path).unwrap();
        let wal_frames = || -> i64 {
            ckpt.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
                .unwrap()
        };
        writer
            .execute_batch("CREATE TABLE t (x BLOB); BEGIN")
            .unwrap();
        for _ in 0..200 {
            writer
                .execute("INSERT INTO t VALUES (zeroblob(40000))", [])
                .unwrap();
        }
        writer.execute_batch("COMMIT").unwrap();
        assert!(wal_frames() > 200);
        assert!(!checkpoint(&ckpt, 100_000).unwrap(), "below the threshold");
        assert!(checkpoint(&ckpt, 100).unwrap(), "past the threshold");
        restart(&writer);
        writer
            .execute("INSERT INTO t VALUES (zeroblob(10))", [])
            .unwrap();
        assert!(wal_frames() < 10);
    }

    /// A reader holding an old snapshot makes the restart give way within
    /// its short wait (writes queue behind it), and the busy timeout of
    /// ordinary statements is back afterwards.
    #[test]
    fn a_restart_gives_way_to_a_long_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let writer = schema::open_writer(&path).unwrap();
        writer
            .execute_batch("CREATE TABLE t (x BLOB); INSERT INTO t VALUES (1)")
            .unwrap();
        let mut reader = schema::open_reader(&path).unwrap();
        let read = reader.transaction().unwrap();
        let _: i64 = read
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        writer.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let started = std::time::Instant::now();
        restart(&writer);
        let waited = started.elapsed();
        assert!(
            waited >= RESTART_WAIT / 2,
            "it waited for the reader: {waited:?}"
        );
        assert!(waited < schema::BUSY_TIMEOUT / 2, "it gave way: {waited:?}");
        drop(read);
        // Back to the long timeout for the writer's own statements.
        let busy_ms: i64 = writer
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy_ms, schema::BUSY_TIMEOUT.as_millis() as i64);
    }
}
