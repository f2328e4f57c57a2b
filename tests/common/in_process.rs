//! The in-process server: for tests that only speak the protocol, the server runs in the test
//! binary itself, asked where it bound rather than read from a log.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, PoisonError, mpsc};

use sockit::server::Settings;
use sockit::{Secret, Server, ServerConfig};
use tempfile::TempDir;

use super::{Bound, PATIENCE, ServerAccess, ServiceBound, new_secret};

impl Bound {
    /// What a running [`Server`] says it bound.
    fn of(server: &Server) -> Bound {
        let services = server.service_addrs().into_iter().map(|bound| ServiceBound {
            service: bound.service.to_owned(),
            transport: bound.transport.to_string(),
            addr: bound.addr,
        });
        Bound {
            listen: server.local_addrs().iter().map(ToString::to_string).collect(),
            services: services.collect(),
            metrics: server.metrics_addr(),
        }
    }
}

/// A [`Server`] running in this process, on a runtime of its own (so that neither a blocking
/// test nor a single-threaded test runtime can stall it), with its own secret, config
/// directory and file root. Dropped, it stops at once; a panic on any of its threads fails the
/// test that drove it.
pub struct InProcessServer {
    access: ServerAccess,
    /// The file root, in a temporary directory of its own.
    pub root: PathBuf,
    _root_parent: TempDir,
    runtime: Option<tokio::runtime::Runtime>,
    /// Its threads' name, by which its panics are told from the test's own.
    threads: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: mpsc::Receiver<()>,
}

impl InProcessServer {
    /// The defaults, on `127.0.0.1:0`, without the UDP time service (its fixed port would be
    /// fought over) and with a temporary file root; then `settings`, in the TOML of
    /// `sockit serve --config` (`quota = 1000000`, `time_listen = "127.0.0.1:0"`).
    pub fn start(settings: &str) -> InProcessServer {
        let (dir, secret_file) = new_secret();
        let root_parent = tempfile::tempdir().unwrap();
        let root = root_parent.path().join("root");
        let mut config = ServerConfig::new(Secret::load(&secret_file).unwrap());
        let root_setting = toml::Value::String(root.to_str().unwrap().to_owned());
        apply_settings(
            &mut config,
            &format!("listen = [\"127.0.0.1:0\"]\ntime_listen = \"off\"\nroot = {root_setting}"),
        );
        apply_settings(&mut config, settings);
        let plaintext = config.plaintext;

        record_server_panics();
        static SERVERS: AtomicUsize = AtomicUsize::new(0);
        let threads = format!("test-server-{}", SERVERS.fetch_add(1, Ordering::Relaxed));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(&threads)
            .enable_all()
            .build()
            .unwrap();
        let (announce, announced) = mpsc::channel();
        let (stop, stop_requested) = tokio::sync::oneshot::channel::<()>();
        let (report_stopped, stopped) = mpsc::channel();
        runtime.spawn(async move {
            let server = match Server::bind(config).await {
                Ok(server) => server,
                Err(error) => return drop(announce.send(Err(error))),
            };
            let _ = announce.send(Ok(Bound::of(&server)));
            server.run(async { drop(stop_requested.await) }).await;
            let _ = report_stopped.send(());
        });
        let bound = announced
            .recv_timeout(PATIENCE)
            .expect("the server binds in time")
            .unwrap_or_else(|error| panic!("the server cannot start: {error}"));
        InProcessServer {
            access: ServerAccess::new(dir, secret_file, plaintext, bound),
            root,
            _root_parent: root_parent,
            runtime: Some(runtime),
            threads,
            stop: Some(stop),
            stopped,
        }
    }

    /// Shuts the server down gracefully, as SIGTERM does, and asserts it finished in time.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.stopped
            .recv_timeout(PATIENCE)
            .expect("the server stops gracefully in time");
    }

    /// What panicked on the server's threads.
    pub fn panics(&self) -> Vec<String> {
        let panics = PANICS.lock().unwrap_or_else(PoisonError::into_inner);
        panics
            .iter()
            .filter(|(thread, _)| *thread == self.threads)
            .map(|(_, panic)| panic.clone())
            .collect()
    }

    pub fn assert_no_panics(&self) {
        let panics = self.panics();
        assert!(panics.is_empty(), "the server panicked: {panics:#?}");
    }
}

impl std::ops::Deref for InProcessServer {
    type Target = ServerAccess;

    fn deref(&self) -> &ServerAccess {
        &self.access
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        if !std::thread::panicking() {
            self.assert_no_panics();
        }
    }
}

/// Applies `settings`, the TOML of `sockit serve --config`, to `config`: the same keys as the
/// flags, which every test can name without knowing how the library spells them.
fn apply_settings(config: &mut ServerConfig, settings: &str) {
    let file: Settings =
        toml::from_str(settings).unwrap_or_else(|e| panic!("bad test settings `{settings}`: {e}"));
    file.apply(config);
}

/// Panics on in-process servers' threads, with the thread's name.
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Records each panic on a server's thread in [`PANICS`], then reports it as usual. A panic
/// in a server task ends that task only, so without this a test could pass over one.
fn record_server_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(name) = std::thread::current().name()
                && name.starts_with("test-server-")
            {
                let mut panics = PANICS.lock().unwrap_or_else(PoisonError::into_inner);
                panics.push((name.to_owned(), info.to_string()));
            }
            report(info);
        }));
    });
}
