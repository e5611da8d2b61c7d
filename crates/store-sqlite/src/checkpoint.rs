//! WAL checkpoints off the write path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the
//! threshold, so the caller of a large write waited for the WAL to be
//! copied into the database and synced a second time. Here the writer only
//! signals after each commit, and one thread with its own connection runs
//! `PASSIVE` checkpoints, which never block readers or the writer. Signals
//! coalesce: a checkpoint covers every commit before it.

use crate::schema;
use offer_domain::{StoreError, StoreResult};
use std::path::Path;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

pub(crate) struct Checkpointer {
    wake: SyncSender<()>,
    thread: JoinHandle<()>,
}

/// WAL frames (pages) past which a checkpoint also restarts the WAL.
///
/// SQLite rewinds the WAL to its start only when a write begins after a
/// checkpoint has copied all of it. Under back-to-back writes (a bulk load)
/// a `PASSIVE` checkpoint never catches up, so the WAL grew without bound
/// (5.6 GB while loading 800 000 offers) and every page read of the writer
/// searched a longer WAL index and read from the WAL file: loading slowed
/// down as it went. 65 536 frames are 256 MiB at the default page size:
/// well above one 100 000-offer overwrite, so those rarely wait.
const RESTART_FRAMES: i64 = 65_536;

/// A `PASSIVE` checkpoint, then, if the WAL has grown past
/// `restart_frames` ([`RESTART_FRAMES`]), a `RESTART` one: it waits (busy timeout) for the
/// current writer, copies the few frames committed meanwhile and makes
/// the next write start the WAL over. It blocks writers only while it
/// copies those frames.
fn checkpoint(conn: &rusqlite::Connection, restart_frames: i64) -> rusqlite::Result<()> {
    let wal_frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    if wal_frames > restart_frames {
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
    }
    Ok(())
}

impl Checkpointer {
    pub(crate) fn start(path: &Path) -> StoreResult<Checkpointer> {
        let conn = schema::open_checkpointer(path)?;
        // One pending signal is enough: a checkpoint covers all commits before it.
        let (wake, wakes) = sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while wakes.recv().is_ok() {
                    if let Err(e) = checkpoint(&conn, RESTART_FRAMES) {
                        // The next commit retries; the WAL only grows meanwhile.
                        tracing::warn!(error = %e, "SQLite WAL checkpoint failed");
                    }
                }
                // The writer, closing last, checkpoints what is left.
                drop(conn);
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the SQLite checkpoint thread: {e}"))
            })?;
        Ok(Checkpointer { wake, thread })
    }

    /// Asks for a checkpoint after a commit; never blocks.
    pub(crate) fn wake(&self) {
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
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

    /// A checkpoint past the threshold leaves the WAL to start over: the
    /// next commit is written at its beginning rather than appended.
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
        checkpoint(&ckpt, 100).unwrap();
        writer
            .execute("INSERT INTO t VALUES (zeroblob(10))", [])
            .unwrap();
        assert!(wal_frames() < 10);
    }
}
