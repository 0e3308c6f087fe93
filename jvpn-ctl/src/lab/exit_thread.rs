//! The exit, in this process, on a runtime of its own inside a lab namespace: the
//! same [`Exit`] as `jvpn-ctl exit`, with its counters readable while it runs (the
//! daemon has no control socket), which is what tests and the cluster lab count
//! fencing by. Stopped and joined on drop; its TUN device goes with it.

use std::{
    io::{Error, Result},
    sync::{Arc, mpsc},
    thread,
    time::Duration,
};

use crate::exit::{Config, Counters, CountersSnapshot, Exit};

pub struct ExitThread {
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<std::result::Result<CountersSnapshot, String>>>,
}

impl ExitThread {
    /// Binds the exit inside the namespace `netns` and serves until stopped; returns
    /// once its sockets and TUN device exist.
    pub fn start(netns: &str, config: Config) -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let netns = netns.to_owned();
        let thread = thread::Builder::new()
            .name("lab-exit".into())
            .spawn(move || {
                super::netns::run_in(&netns, move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(async move {
                        let exit = match Exit::bind(config).await {
                            Ok(e) => e,
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.to_string()));
                                return Err(e.to_string());
                            }
                        };
                        let _ = ready_tx.send(Ok(exit.counters()));
                        exit.run(async {
                            let _ = stop_rx.await;
                        })
                        .await
                        .map_err(|e| e.to_string())
                    })
                })
            })?;
        let counters = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| Error::other("the exit did not start within 10 s"))?
            .map_err(|e| Error::other(format!("the exit failed to start: {e}")))?;
        Ok(Self {
            counters,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    /// Waits until `pred` holds for the counters (packets are handled
    /// asynchronously); the error shows them.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&CountersSnapshot) -> bool,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + within;
        while !pred(&self.counters()) {
            if std::time::Instant::now() > deadline {
                return Err(Error::other(format!(
                    "timed out after {within:?} waiting for {what}: {}",
                    self.counters()
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops it: its last counters, or how its run failed.
    pub fn stop(&mut self) -> Result<CountersSnapshot> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| Error::other("the exit thread panicked"))?
                .map_err(Error::other),
            None => Err(Error::other("the exit was stopped already")),
        }
    }
}

impl Drop for ExitThread {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
