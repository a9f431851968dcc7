//! sluice in the bench's own process: `App::bind` from a YAML string or a loaded config,
//! `App::run` spawned on the calling runtime, and a bounded stop. Shared by the loadtest,
//! adaptive and deferred benches (`#[path = "../support/proxy.rs"]`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice::app::App;
use sluice::config::Config;
use sluice::runtime::Shared;
use sluice::shutdown::Shutdown;
use tokio::task::JoinHandle;

/// How long a stop waits for sluice to drain before it lets the task go.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// A running sluice.
pub(crate) struct Proxy {
    /// The proxy's listener (127.0.0.1, the port the config asked for or a free one).
    pub(crate) addr: SocketAddr,
    /// The runtime state, to read what sluice decided (e.g. the cap in force).
    pub(crate) shared: Arc<Shared>,
    shutdown: Shutdown,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts sluice from `yaml`; `name` is the file name its errors are reported under.
    pub(crate) async fn from_yaml(yaml: &str, name: &str) -> Result<Proxy, String> {
        let config = sluice::config::from_yaml(yaml, Path::new(name)).map_err(|e| e.to_string())?;
        Proxy::start(config).await
    }

    /// Starts sluice from a loaded config, on the calling runtime.
    pub(crate) async fn start(config: Config) -> Result<Proxy, String> {
        let app = App::bind(config)
            .await
            .map_err(|e| format!("sluice cannot start: {e}"))?;
        let (addr, shutdown, shared) = (app.http_addr(), app.shutdown_handle(), app.shared());
        let task = tokio::spawn(app.run());
        Ok(Proxy {
            addr,
            shared,
            shutdown,
            task,
        })
    }

    /// `http://addr{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Tells sluice to drain and waits for it, for at most [`STOP_LIMIT`].
    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(STOP_LIMIT, self.task).await;
    }
}
