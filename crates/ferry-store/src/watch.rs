//! A watch: the stream of changes under a key prefix.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::StoreError;
use crate::types::WatchEvent;

/// How many events a watch buffers before its producer waits for the consumer.
pub(crate) const WATCH_BUFFER: usize = 1024;

/// Changes under a prefix, in revision order (events of one transaction in operation order).
///
/// Ends with `None` when the store goes away; an `Err` item ([`StoreError::Compacted`],
/// [`StoreError::WatchLagged`], a connection error) is the last item. Dropping the watch
/// cancels it. Implements [`futures_core::Stream`] (for axum's server-sent events).
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchEvent, StoreError>>,
    task: JoinHandle<()>,
}

impl Watch {
    /// A watch fed by `task` through `rx`; the task is aborted when the watch is dropped.
    pub(crate) fn new(
        rx: mpsc::Receiver<Result<WatchEvent, StoreError>>,
        task: JoinHandle<()>,
    ) -> Self {
        Self { rx, task }
    }

    /// The next change, or `None` when the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl futures_core::Stream for Watch {
    type Item = Result<WatchEvent, StoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx)
    }
}
