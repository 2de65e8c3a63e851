//! An emulator of the OpenText Content Server (Extended ECM) REST API subset
//! that xecm-sftp uses, so integrations can be developed and tested without a
//! Content Server. Written from the wire facts in `shared/otcs-api.md` and
//! pyxecm's source; it shares no code with our own client on purpose.
//!
//! Embed it with [`start`]; the `otcs-emulator` binary is a thin wrapper.

mod api;
mod callback;
mod content;
mod error;
mod html;
mod model;
pub mod seed;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::Error;
pub use seed::Seed;

/// The HMAC key for approval callbacks; never printed.
#[derive(Clone)]
pub struct CallbackKey(pub String);

impl std::fmt::Debug for CallbackKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackKey(<redacted>)")
    }
}

/// Where approvals are reported.
#[derive(Debug, Clone)]
pub struct CallbackConfig {
    pub url: String,
    pub key: CallbackKey,
    /// Attempts per callback before giving up.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per attempt.
    pub initial_backoff: Duration,
}

impl CallbackConfig {
    pub fn new(url: impl Into<String>, key: impl Into<String>) -> Self {
        CallbackConfig {
            url: url.into(),
            key: CallbackKey(key.into()),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Port 0 picks a free port.
    pub listen: SocketAddr,
    pub allow_non_loopback: bool,
    /// `None` uses the built-in seed.
    pub seed: Option<Seed>,
    /// Persist state and content here; `None` keeps state in memory and
    /// content in a temporary directory removed on shutdown.
    pub data_dir: Option<PathBuf>,
    pub ticket_idle: Duration,
    pub callback: Option<CallbackConfig>,
    /// `/__emulator/...` fault injection and ticket expiry.
    pub test_controls: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            allow_non_loopback: false,
            seed: None,
            data_dir: None,
            ticket_idle: Duration::from_secs(30 * 60),
            callback: None,
            test_controls: true,
        }
    }
}

/// A running emulator; stops on [`RunningEmulator::shutdown`] or on drop.
pub struct RunningEmulator {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _state: Arc<state::AppState>,
}

impl RunningEmulator {
    /// `http://ADDR:PORT`, without a base path.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for in-flight requests to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts the emulator on `config.listen` and returns once it accepts
/// connections.
pub async fn start(config: EmulatorConfig) -> Result<RunningEmulator, Error> {
    if !config.listen.ip().is_loopback() && !config.allow_non_loopback {
        return Err(Error::NonLoopback(config.listen));
    }
    let seed = match config.seed.clone() {
        Some(s) => s,
        None => Seed::builtin().map_err(|e| Error::Seed(e.to_string()))?,
    };
    let callbacks = match &config.callback {
        Some(c) => Some(callback::spawn(c.clone())?),
        None => None,
    };
    let state = Arc::new(state::AppState::open(
        seed,
        config.data_dir.clone(),
        config.ticket_idle,
        callbacks,
        config.test_controls,
    )?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    let app = api::router(state.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stop_rx.await;
        });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "emulator server stopped with an error");
        }
    });
    tracing::info!(%addr, "otcs-emulator listening");
    Ok(RunningEmulator {
        addr,
        stop: Some(stop_tx),
        task: Some(task),
        _state: state,
    })
}
