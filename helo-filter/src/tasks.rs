//! The daemon's tasks, each with a name, watched: a task that panics, or a vital one that
//! fails or returns, is reported to the daemon's main loop, which ends the daemon. A daemon
//! missing one of its tasks would look alive while, say, its denials never reach the kernel;
//! exiting lets systemd restart it while the pinned program keeps enforcing.

use std::{
    any::Any,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use log::warn;
use tokio::sync::mpsc;

/// Why a watched task ended.
#[derive(Debug)]
pub enum Ended {
    /// It panicked, with this message.
    Panicked { task: &'static str, message: String },
    /// A vital task returned (with its error, if any).
    Stopped {
        task: &'static str,
        error: Option<anyhow::Error>,
    },
}

/// Spawns watched tasks; clones share the report channel.
#[derive(Clone)]
pub struct Tasks {
    reports: mpsc::UnboundedSender<Ended>,
}

impl Tasks {
    /// The spawner and the receiver of its reports.
    pub fn new() -> (Tasks, mpsc::UnboundedReceiver<Ended>) {
        let (reports, received) = mpsc::unbounded_channel();
        (Tasks { reports }, received)
    }

    /// Runs `future` as a task named `name`; a panic in it is reported.
    pub fn spawn(&self, name: &'static str, future: impl Future<Output = ()> + Send + 'static) {
        self.watch(name, future);
    }

    /// Runs a task the daemon cannot do without: its end, whatever its outcome, is reported.
    pub fn spawn_vital(
        &self,
        name: &'static str,
        future: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let reports = self.reports.clone();
        self.watch(name, async move {
            let error = future.await.err();
            let _ = reports.send(Ended::Stopped { task: name, error });
        });
    }

    fn watch(&self, name: &'static str, future: impl Future<Output = ()> + Send + 'static) {
        let reports = self.reports.clone();
        // The panic is caught in the task itself rather than by a second task awaiting it:
        // one spawn per judged session, not two.
        tokio::spawn(async move {
            if let Err(payload) = (CatchPanic {
                inner: Box::pin(future),
            })
            .await
            {
                let _ = reports.send(Ended::Panicked {
                    task: name,
                    message: panic_message(payload),
                });
            }
        });
    }

    /// Runs `job` every `period` (the first time at once) for the daemon's lifetime; a
    /// failure is logged with the task's name and the next tick tries again.
    pub fn every(
        &self,
        period: Duration,
        name: &'static str,
        mut job: impl FnMut() -> anyhow::Result<()> + Send + 'static,
    ) {
        self.spawn(name, async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                if let Err(e) = job() {
                    warn!("{name}: {e:#}");
                }
            }
        });
    }
}

/// A future that ends with the panic's payload if polling its inner future panics.
struct CatchPanic<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        // Unwind safety: after a panic the inner future is never polled again, only
        // dropped, so no broken invariant of it can be observed.
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_owned(), |s| (*s).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_reported_with_the_task_name() {
        let (tasks, mut ended) = Tasks::new();
        tasks.spawn("doomed", async { panic!("on purpose") });
        match ended.recv().await {
            Some(Ended::Panicked { task, message }) => {
                assert_eq!((task, message.as_str()), ("doomed", "on purpose"));
            }
            other => panic!("expected a panic report, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_vital_task_that_returns_is_reported() {
        let (tasks, mut ended) = Tasks::new();
        tasks.spawn_vital("capture", async { Err(anyhow::anyhow!("ring gone")) });
        match ended.recv().await {
            Some(Ended::Stopped {
                task,
                error: Some(e),
            }) => assert_eq!((task, e.to_string().as_str()), ("capture", "ring gone")),
            other => panic!("expected a stop report, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_task_that_ends_normally_is_not_reported() {
        let (tasks, mut ended) = Tasks::new();
        tasks.spawn("short", async {});
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(ended.try_recv().is_err());
    }
}
