//! Connecting, registering, and reconnecting with backoff when the runtime goes away.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::{Empty, RUNTIME_SERVICE, RegisterPluginRequest};
use crate::error::Error;
use crate::plugin::{Plugin, PluginService, Progress};
use crate::session::Session;
use crate::wire::{MAX_FRAME_OUT, PLUGIN_CONN, RUNTIME_CONN};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// The runtime's NRI socket (containerd's default is `/var/run/nri/nri.sock`).
    pub socket: PathBuf,
    /// Plugin name shown by the runtime (and used in `required_plugins`).
    pub name: String,
    /// Two digits; orders plugins (lower runs first).
    pub index: String,
    /// How long to wait for the runtime to answer RegisterPlugin.
    pub registration_timeout: Duration,
    /// First delay before reconnecting; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Largest mux frame payload we send (the runtime reads 4 KiB at a time).
    pub max_frame: usize,
}

impl Options {
    pub fn new(
        socket: impl Into<PathBuf>,
        name: impl Into<String>,
        index: impl Into<String>,
    ) -> Self {
        Options {
            socket: socket.into(),
            name: name.into(),
            index: index.into(),
            registration_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_frame: MAX_FRAME_OUT,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        let idx_ok = self.index.len() == 2 && self.index.bytes().all(|b| b.is_ascii_digit());
        if !idx_ok {
            return Err(Error::Options(format!(
                "plugin index {:?} must be two digits, e.g. \"10\"",
                self.index
            )));
        }
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !name_ok {
            return Err(Error::Options(format!(
                "plugin name {:?} must be 1-63 characters of letters, digits, '-', '_' or '.'",
                self.name
            )));
        }
        if self.max_frame == 0 || self.max_frame > MAX_FRAME_OUT {
            return Err(Error::Options(format!(
                "max_frame must be within 1..={MAX_FRAME_OUT}"
            )));
        }
        Ok(())
    }
}

/// Connection state, observable through [`Runner::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Disconnected,
    /// Registered, configured and synchronized with the named runtime.
    Ready {
        runtime: String,
        version: String,
        connection: u64,
    },
}

/// Runs a [`Plugin`] against a runtime: connected through the NRI socket (reconnecting when
/// the runtime goes away), or through the connection the runtime passed when it started the
/// plugin itself ([`Runner::launched`]; then once, without reconnecting).
pub struct Runner<P> {
    opts: Options,
    plugin: Arc<P>,
    state: watch::Sender<State>,
    /// The runtime's connection of a pre-registered plugin, taken by `run`.
    launched: std::sync::Mutex<Option<std::os::unix::net::UnixStream>>,
}

impl<P: Plugin> Runner<P> {
    pub fn new(opts: Options, plugin: Arc<P>) -> Result<Self, Error> {
        opts.validate()?;
        if plugin.events().is_empty() {
            return Err(Error::Options(
                "the plugin subscribes to no events (0 would mean all)".into(),
            ));
        }
        Ok(Runner {
            opts,
            plugin,
            state: watch::channel(State::Disconnected).0,
            launched: std::sync::Mutex::new(None),
        })
    }

    /// A plugin the runtime started from its plugin dir, connected through `stream` (see
    /// [`crate::LaunchVars`]). `opts.socket` and the backoff are unused: [`Runner::run`]
    /// serves this one connection and returns when it closes, because the runtime owns the
    /// plugin's lifetime and starts it again itself.
    pub fn launched(
        opts: Options,
        plugin: Arc<P>,
        stream: std::os::unix::net::UnixStream,
    ) -> Result<Self, Error> {
        let r = Self::new(opts, plugin)?;
        *r.launched.lock().expect("launched lock") = Some(stream);
        Ok(r)
    }

    /// Whether this runner serves a connection the runtime passed (pre-registered plugin).
    pub fn is_launched(&self) -> bool {
        self.launched.lock().expect("launched lock").is_some()
    }

    pub fn state(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// Serves until `shutdown` is cancelled, reconnecting with exponential backoff. A
    /// [launched](Runner::launched) plugin returns as soon as its one connection closes.
    pub async fn run(&self, shutdown: CancellationToken) {
        let launched = self.launched.lock().expect("launched lock").take();
        if let Some(std_stream) = launched {
            let r = match std_stream
                .set_nonblocking(true)
                .and_then(|()| UnixStream::from_std(std_stream))
            {
                Ok(stream) => self.serve(stream, &shutdown, 1, "inherited", true).await,
                Err(e) => Err(Error::Io(e)),
            };
            match r {
                Ok(_) if shutdown.is_cancelled() => {}
                Ok(_) => tracing::info!(
                    "the runtime closed the connection it started this plugin with; exiting (the runtime starts it again)"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "the connection the runtime started this plugin with failed; exiting")
                }
            }
            self.state.send_replace(State::Disconnected);
            return;
        }
        let mut delay = self.opts.backoff_initial;
        let mut connection = 0u64;
        while !shutdown.is_cancelled() {
            connection += 1;
            match self.run_once(&shutdown, connection).await {
                Ok(true) => delay = self.opts.backoff_initial,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, socket = %self.opts.socket.display(), retry_in = ?delay, "nri connection failed")
                }
            }
            self.state.send_replace(State::Disconnected);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
            delay = (delay * 2).min(self.opts.backoff_max);
        }
    }

    /// One connection: connect, register, serve until the trunk closes. Returns whether the
    /// runtime got as far as synchronizing (then the backoff restarts from its first delay).
    pub async fn run_once(
        &self,
        shutdown: &CancellationToken,
        connection: u64,
    ) -> Result<bool, Error> {
        let stream = UnixStream::connect(&self.opts.socket)
            .await
            .map_err(|source| Error::Connect {
                path: self.opts.socket.clone(),
                source,
            })?;
        let via = self.opts.socket.display().to_string();
        self.serve(stream, shutdown, connection, &via, false).await
    }

    /// Registers over `stream` and serves until the trunk closes or `shutdown`.
    async fn serve(
        &self,
        stream: UnixStream,
        shutdown: &CancellationToken,
        connection: u64,
        via: &str,
        launched: bool,
    ) -> Result<bool, Error> {
        let (progress_tx, mut progress) = watch::channel(Progress::default());
        let service = Arc::new(PluginService::new(self.plugin.clone(), progress_tx));
        // Serving conn 1 starts inside Session::start, before RegisterPlugin goes out.
        let session = Session::start(
            stream,
            PLUGIN_CONN,
            RUNTIME_CONN,
            service,
            self.opts.max_frame,
        );
        let _close = CloseOnDrop(session.clone());
        let req = RegisterPluginRequest {
            plugin_name: self.opts.name.clone(),
            plugin_idx: self.opts.index.clone(),
            nri_version: String::new(),
        };
        session
            .call::<_, Empty>(
                RUNTIME_SERVICE,
                "RegisterPlugin",
                &req,
                self.opts.registration_timeout,
            )
            .await?;
        tracing::debug!(name = %self.opts.name, index = %self.opts.index, "registered with the nri runtime");

        // The runtime configures and synchronizes us right after registration.
        let ready = tokio::time::timeout(self.opts.registration_timeout, async {
            loop {
                if progress.borrow_and_update().synchronized {
                    return true;
                }
                tokio::select! {
                    r = progress.changed() => if r.is_err() { return false },
                    _ = session.closed() => return false,
                }
            }
        })
        .await;
        match ready {
            Ok(true) => {}
            Ok(false) => return Err(Error::Closed),
            // NRI before 0.7 (containerd 1.7) configures the plugins it starts itself but
            // never synchronizes them: serve without the initial state rather than give up.
            Err(_) if launched && progress.borrow().configured.is_some() => {
                tracing::warn!(
                    waited = ?self.opts.registration_timeout,
                    "the runtime configured this pre-registered plugin but did not synchronize it (containerd 1.7 does not): serving without the runtime's initial state"
                );
            }
            Err(_) => {
                return Err(Error::Timeout {
                    method: "Configure/Synchronize".into(),
                    timeout: self.opts.registration_timeout,
                });
            }
        }
        let (runtime, version) = progress.borrow().configured.clone().unwrap_or_default();
        tracing::info!(%runtime, %version, connection = via, "nri plugin ready");
        self.state.send_replace(State::Ready {
            runtime,
            version,
            connection,
        });

        tokio::select! {
            _ = session.closed() => {
                tracing::info!("nri runtime closed the connection");
                Ok(true)
            }
            _ = shutdown.cancelled() => Ok(true),
        }
    }
}

struct CloseOnDrop(Session);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}
