//! The shared conformance suite against the gRPC pair: a `GrpcStore` client
//! talking to the service on 127.0.0.1, over a memory and a SQLite backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use offer_store::SharedStore;
use std::sync::Arc;
use store_client::GrpcStore;
use store_conformance::Fixture;
use store_service::ServiceConfig;
use tokio::sync::oneshot;

/// Keeps the server (and whatever the backend needs) alive for one test.
struct Server {
    stop: Option<oneshot::Sender<()>>,
    _keep: Box<dyn std::any::Any + Send>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn over_grpc(store: SharedStore, keep: impl std::any::Any + Send) -> Fixture {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(store_service::serve(
        store,
        ServiceConfig::default(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let client = GrpcStore::connect(&addr.to_string())
        .await
        .expect("connect");
    Fixture::with_guard(
        Arc::new(client),
        Server {
            stop: Some(stop),
            _keep: Box::new(keep),
        },
    )
}

mod memory {
    use super::*;

    store_conformance::conformance_suite!(|| async {
        over_grpc(Arc::new(store_memory::MemoryStore::new()), ()).await
    });
}

mod sqlite {
    use super::*;

    store_conformance::conformance_suite!(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_sqlite::SqliteStore::open(dir.path().join("store.db"))
            .await
            .expect("open sqlite");
        over_grpc(Arc::new(store), dir).await
    });
}
