//! The commit wake-up: a dedicated connection LISTENing for the NOTIFY each
//! write sends at commit, so followers on every instance learn of commits
//! made through any instance. It is a hint only; the change log stays the
//! source of truth, so a notification lost while reconnecting loses nothing
//! (the listener re-reads the revision after each (re)connect).

use futures::StreamExt;
use offer_domain::Revision;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Config, NoTls};

/// Raises the published revision; it never goes backwards (notifications
/// of one commit can race the local send of the same revision).
pub(crate) fn publish(tx: &watch::Sender<Revision>, revision: Revision) {
    tx.send_if_modified(|current| {
        if revision > *current {
            *current = revision;
            true
        } else {
            false
        }
    });
}

/// Runs until `stop` fires (or its sender is dropped), reconnecting with a
/// capped backoff whenever the connection fails.
pub(crate) async fn listen(
    config: Config,
    channel: String,
    commits: watch::Sender<Revision>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            r = listen_once(&config, &channel, &commits) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "PostgreSQL LISTEN connection lost; reconnecting");
                } else {
                    backoff = Duration::from_millis(100);
                }
            }
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    config: &Config,
    channel: &str,
    commits: &watch::Sender<Revision>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut conn) = config.connect(NoTls).await?;
    let (note_tx, mut note_rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection delivers notifications only while polled for messages,
    // which also drives the client's own queries.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if note_tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN connection ended");
                    break;
                }
            }
        }
    });
    let result = async {
        client.batch_execute(&format!("LISTEN {channel}")).await?;
        // Catch up after LISTEN: commits between our last notification and
        // now were missed while (re)connecting.
        let head: i64 = client
            .query_one("SELECT revision FROM meta", &[])
            .await?
            .try_get(0)?;
        publish(commits, head);
        while let Some(payload) = note_rx.recv().await {
            match payload.parse::<Revision>() {
                Ok(r) => publish(commits, r),
                Err(_) => tracing::debug!(payload, "ignoring a foreign notification"),
            }
        }
        Ok(())
    }
    .await;
    driver.abort();
    result
}
