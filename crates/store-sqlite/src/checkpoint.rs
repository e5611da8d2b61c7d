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

impl Checkpointer {
    pub(crate) fn start(path: &Path) -> StoreResult<Checkpointer> {
        let conn = schema::open_checkpointer(path)?;
        // One pending signal is enough: a checkpoint covers all commits before it.
        let (wake, wakes) = sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while wakes.recv().is_ok() {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
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
