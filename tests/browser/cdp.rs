//! A minimal Chrome DevTools Protocol (CDP) client that drives the system's
//! headless Chromium for integration tests.
//!
//! Hand-written on purpose: `chromiumoxide` and `headless_chrome` compile the
//! whole generated CDP protocol (thousands of types, minutes of build time on
//! a 2-core machine) and can download browsers, while these tests need about
//! six methods. This module speaks raw JSON over one WebSocket
//! (`tokio-tungstenite`) with `serde_json` values.
//!
//! Design: one browser-level WebSocket; pages are attached with
//! `flatten: true`, so every message carries its `sessionId`. A reader task
//! answers requests by `id` (a oneshot per request) and routes events by
//! `sessionId` to the owning page's log. Dedicated workers (nested ones too)
//! are auto-attached to their page's session, paused until `Runtime` is
//! enabled in them, so their console messages and uncaught exceptions from
//! the first line on land in the page's log too.
//!
//! Chromium is `/usr/bin/chromium` or `$CHROMIUM`; nothing is ever
//! downloaded. Each [`Browser`] has its own process and profile directory, so
//! parallel tests don't share anything.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::netns::NetNs;

/// How long one CDP request may take before the driver panics.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long Chromium may take to print its DevTools endpoint.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a page may take to fire its load event.
const LOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// How many of Chromium's last stderr lines are kept for panic messages.
const STDERR_TAIL: usize = 200;

/// A headless Chromium process and the DevTools connection to it.
///
/// Dropping it kills the process and removes its profile directory.
pub(crate) struct Browser {
    conn: Arc<Conn>,
    tasks: [JoinHandle<()>; 2],
    /// Dropped after `tasks` are aborted (fields drop after `Drop::drop`).
    _process: Process,
}

impl Browser {
    /// Starts Chromium with a fresh profile and connects to it; panics with
    /// the reason (and Chromium's stderr) if that fails.
    pub(crate) async fn launch() -> Browser {
        Browser::launch_with(None).await
    }

    /// Like [`launch`](Self::launch), with Chromium inside `netns` (its
    /// network is the namespace's; DevTools is reached from inside it).
    #[allow(dead_code)] // benches/browser.rs includes this file and uses no namespace
    pub(crate) async fn launch_in(netns: &NetNs) -> Browser {
        Browser::launch_with(Some(netns)).await
    }

    async fn launch_with(netns: Option<&NetNs>) -> Browser {
        let exe = std::env::var_os("CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        assert!(
            exe.exists(),
            "Chromium not found at {}: install it (Debian: `apt-get install chromium`) \
             or point $CHROMIUM at a Chromium binary; browser tests never download one",
            exe.display()
        );
        let profile_dir = fresh_profile_dir();
        let mut command = match netns {
            Some(netns) => netns.exec(&exe),
            None => Command::new(&exe),
        };
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // Every tab but the last is in the background: keep their
                // timers and rendering at full speed, as a user's tabs side
                // by side would be.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile_dir.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so that its helpers (zygote, renderers,
            // network service) die with it instead of writing on into the
            // profile we are removing.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // If the test process dies (Ctrl-C, a harness timeout) without
        // dropping the Browser, the kernel kills Chromium: the signal fires
        // when the spawning thread exits, which for a tokio worker thread is
        // at runtime shutdown, after the test's Browser has been dropped.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let spawned = command.spawn();
        // From here on, a panic kills Chromium and removes the profile.
        let mut process = match spawned {
            Ok(child) => Process { child, profile_dir },
            Err(e) => {
                let _ = std::fs::remove_dir_all(&profile_dir);
                panic!("cannot start Chromium {}: {e}", exe.display());
            }
        };

        // A thread drains stderr for the process's whole life, so Chromium
        // never blocks on a full pipe, and hands over the endpoint line.
        let stderr = process.child.stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (endpoint_tx, endpoint_rx) = oneshot::channel();
        let thread_tail = Arc::clone(&tail);
        std::thread::spawn(move || drain_stderr(stderr, &thread_tail, endpoint_tx));

        let endpoint = match tokio::time::timeout(LAUNCH_TIMEOUT, endpoint_rx).await {
            Ok(Ok(url)) => url,
            outcome => {
                let why = match outcome {
                    Ok(Err(_)) => "ended without printing its DevTools endpoint".to_owned(),
                    _ => format!("printed no DevTools endpoint within {LAUNCH_TIMEOUT:?}"),
                };
                let status = process.kill();
                panic!(
                    "Chromium {} {why} ({status}); its stderr:\n{}",
                    exe.display(),
                    lock(&tail).join("\n")
                );
            }
        };
        let connected = match netns {
            Some(netns) => {
                let stream = devtools_stream_in(netns, &endpoint);
                let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
                tokio_tungstenite::client_async(endpoint.as_str(), stream).await
            }
            None => tokio_tungstenite::connect_async(endpoint.as_str()).await,
        };
        let (socket, _) = connected
            .unwrap_or_else(|e| panic!("cannot open Chromium's DevTools socket {endpoint}: {e}"));
        let (mut sink, mut stream) = socket.split();

        let (outgoing, mut outgoing_rx) = mpsc::unbounded_channel::<String>();
        let conn = Arc::new(Conn {
            outgoing,
            next_id: AtomicU64::new(1),
            state: Mutex::new(ConnState {
                pending: Some(HashMap::new()),
                sessions: HashMap::new(),
            }),
        });
        let writer = tokio::spawn(async move {
            while let Some(text) = outgoing_rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        });
        let reader_conn = Arc::clone(&conn);
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message {
                    match serde_json::from_str::<Value>(&text) {
                        Ok(value) => reader_conn.dispatch(value),
                        Err(e) => eprintln!("cdp: unparsable message from Chromium ({e}): {text}"),
                    }
                }
            }
            reader_conn.close();
        });
        Browser {
            conn,
            tasks: [writer, reader],
            _process: process,
        }
    }

    /// Opens a new tab, navigates it to `url` and waits (15 s) for its load
    /// event. Console messages and uncaught exceptions of the page and its
    /// dedicated workers are recorded from before the navigation on. Panics
    /// if the navigation fails (e.g. connection refused) or times out.
    pub(crate) async fn new_page(&self, url: &str) -> Page {
        let conn = &self.conn;
        let target = conn
            .call_ok(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = str_field(&target, "targetId", "Target.createTarget");
        let attached = conn
            .call_ok(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        let session_id = str_field(&attached, "sessionId", "Target.attachToTarget");
        let log = Arc::new(PageLog::default());
        lock(&conn.state)
            .sessions
            .insert(session_id.clone(), Arc::clone(&log));

        let session = Some(session_id.as_str());
        for method in ["Inspector.enable", "Page.enable", "Runtime.enable"] {
            conn.call_ok(session, method, json!({})).await;
        }
        conn.call_ok(
            session,
            "Target.setAutoAttach",
            json!({ "autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true }),
        )
        .await;

        let page = Page {
            conn: Arc::clone(conn),
            target_id,
            session_id,
            log,
        };
        let mut loads = page.log.load.subscribe();
        let navigated = conn
            .call_ok(
                Some(&page.session_id),
                "Page.navigate",
                json!({ "url": url }),
            )
            .await;
        if let Some(error) = navigated.get("errorText").and_then(Value::as_str) {
            panic!("navigating a new page to {url} failed: {error}");
        }
        let loader = str_field(&navigated, "loaderId", "Page.navigate");
        let loaded = loads.wait_for(|state| state.loaded.contains(&loader));
        if tokio::time::timeout(LOAD_TIMEOUT, loaded).await.is_err() {
            panic!(
                "page {url} fired no load event within {LOAD_TIMEOUT:?}\n{}",
                page.log.report()
            );
        }
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The Chromium process and its profile directory: on drop, the process is
/// killed and reaped, then the directory removed.
struct Process {
    child: Child,
    profile_dir: PathBuf,
}

impl Process {
    /// Kills Chromium's process group and reaps Chromium; returns its exit
    /// status as text.
    fn kill(&mut self) -> String {
        if let Ok(group) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: a plain syscall. The group is Chromium's own (it was
            // started with `process_group(0)`), never the test's.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        self.child
            .wait()
            .map_or_else(|e| format!("status unknown: {e}"), |s| s.to_string())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        // Helper processes may still be writing into the profile for a moment.
        for _ in 0..20 {
            match std::fs::remove_dir_all(&self.profile_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => break,
            }
        }
    }
}

/// One tab of a [`Browser`], attached over its own CDP session.
pub(crate) struct Page {
    conn: Arc<Conn>,
    target_id: String,
    session_id: String,
    log: Arc<PageLog>,
}

impl Page {
    /// Evaluates a JS expression (`awaitPromise: true`, `returnByValue:
    /// true`); returns the value as serde_json::Value, Err(String) with the
    /// exception text/description if it threw or rejected.
    ///
    /// `undefined` comes back as `Null`; NaN, ±Infinity, -0 and bigints as
    /// their string form; a DOM node as `{}`. A value that cannot be
    /// returned by value (a cyclic object) is an `Err` too. Panics if Chromium
    /// does not answer within 20 s (e.g. a promise that never settles).
    pub(crate) async fn eval(&self, expression: &str) -> Result<Value, String> {
        let reply = self
            .conn
            .call(
                Some(&self.session_id),
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            )
            .await
            .map_err(|e| format!("Runtime.evaluate failed: {e}"))?;
        if let Some(details) = reply.get("exceptionDetails") {
            return Err(exception_text(details));
        }
        let result = reply.get("result").unwrap_or(&Value::Null);
        let value = result.get("value").or(result.get("unserializableValue"));
        Ok(value.cloned().unwrap_or(Value::Null))
    }

    /// Polls `expression` every 50 ms until it returns JSON `true`, or panics
    /// after `timeout` with the last value and the page's console/exception
    /// log.
    pub(crate) async fn wait_for(&self, expression: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.eval(expression).await;
            if last == Ok(Value::Bool(true)) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "`{expression}` was not true within {timeout:?}; last result: {last:?}\n{}",
                    self.log.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Uncaught exceptions so far (Runtime.exceptionThrown) in the page AND in
    /// its dedicated workers, as text.
    ///
    /// Chromium reports a worker's exception (in the worker only) just when
    /// it stays unhandled: a page whose `Worker` `error` handler calls
    /// `preventDefault()` hides it. A nested worker's exception shows up
    /// twice, the second time as "Uncaught null (at …)" from its parent.
    pub(crate) fn exceptions(&self) -> Vec<String> {
        lock(&self.log.entries).exceptions.clone()
    }

    /// Console messages so far (Runtime.consoleAPICalled) from page and
    /// workers, as "level: text".
    ///
    /// Levels are CDP's (`log`, `warning`, `error`, `info`, `debug`, …); the
    /// arguments are joined by spaces, strings raw, objects by their short
    /// description (`Object`, `Array(2)`).
    pub(crate) fn console(&self) -> Vec<String> {
        lock(&self.log.entries).console.clone()
    }

    /// Closes the tab (Target.closeTarget).
    pub(crate) async fn close(self) {
        self.conn
            .call_ok(
                None,
                "Target.closeTarget",
                json!({ "targetId": self.target_id }),
            )
            .await;
        lock(&self.conn.state)
            .sessions
            .retain(|_, log| !Arc::ptr_eq(log, &self.log));
    }
}

/// What a page and its workers reported, plus the page's load progress.
#[derive(Default)]
struct PageLog {
    entries: Mutex<Entries>,
    load: watch::Sender<LoadState>,
}

/// The text logs of one page.
#[derive(Default)]
struct Entries {
    exceptions: Vec<String>,
    console: Vec<String>,
    /// Driver-side trouble (e.g. a worker that could not be instrumented).
    driver: Vec<String>,
}

/// Which documents of a page's main frame have fired their load event.
#[derive(Default)]
struct LoadState {
    /// The loader of the main frame's current document.
    current: Option<String>,
    /// Loaders whose document fired `Page.loadEventFired`.
    loaded: Vec<String>,
}

impl PageLog {
    /// Everything recorded, for panic messages.
    fn report(&self) -> String {
        let entries = lock(&self.entries);
        let section = |name: &str, lines: &[String]| {
            if lines.is_empty() {
                format!("{name}: (none)\n")
            } else {
                format!("{name}:\n  {}\n", lines.join("\n  "))
            }
        };
        let mut report = section("exceptions", &entries.exceptions);
        report += &section("console", &entries.console);
        if !entries.driver.is_empty() {
            report += &section("driver", &entries.driver);
        }
        report
    }
}

/// The shared half of the connection: request ids, pending replies, sessions.
struct Conn {
    outgoing: mpsc::UnboundedSender<String>,
    next_id: AtomicU64,
    state: Mutex<ConnState>,
}

struct ConnState {
    /// Requests awaiting a reply; `None` once the connection is gone.
    pending: Option<HashMap<u64, Pending>>,
    /// Page and worker sessions, each mapped to its page's log.
    sessions: HashMap<String, Arc<PageLog>>,
}

/// Who gets a reply.
enum Pending {
    /// A caller awaiting it: the result, or the CDP error message.
    Caller(oneshot::Sender<Result<Value, String>>),
    /// Nobody; an error is noted in the page's driver log.
    Background { log: Arc<PageLog>, method: String },
}

impl Conn {
    /// Queues a request and registers `pending` for its reply.
    fn send(&self, session: Option<&str>, method: &str, params: Value, pending: Pending) -> bool {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let mut state = lock(&self.state);
        let Some(pending_map) = state.pending.as_mut() else {
            return false;
        };
        pending_map.insert(id, pending);
        self.outgoing.send(message.to_string()).is_ok()
    }

    /// Sends a request and waits for its reply; `Err` carries a CDP error.
    /// Panics if the connection is gone or no reply comes in 20 s.
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let (tx, rx) = oneshot::channel();
        assert!(
            self.send(session, method, params, Pending::Caller(tx)),
            "cannot send {method}: the connection to Chromium is closed"
        );
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => panic!("the connection to Chromium closed while waiting for {method}"),
            Err(_) => panic!("Chromium did not answer {method} within {REQUEST_TIMEOUT:?}"),
        }
    }

    /// Like [`Conn::call`], but a CDP error panics too.
    async fn call_ok(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.call(session, method, params)
            .await
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// Handles one message from Chromium (runs on the reader task).
    fn dispatch(&self, message: Value) {
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            let pending = lock(&self.state)
                .pending
                .as_mut()
                .and_then(|p| p.remove(&id));
            let reply = match message.get("error") {
                Some(error) => Err(error
                    .get("message")
                    .and_then(Value::as_str)
                    .map_or_else(|| error.to_string(), str::to_owned)),
                None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
            };
            match (pending, reply) {
                (Some(Pending::Caller(tx)), reply) => {
                    let _ = tx.send(reply);
                }
                (Some(Pending::Background { log, method }), Err(e)) => {
                    lock(&log.entries)
                        .driver
                        .push(format!("{method} failed: {e}"));
                }
                _ => {}
            }
            return;
        }
        let (Some(method), Some(session)) = (
            message.get("method").and_then(Value::as_str),
            message.get("sessionId").and_then(Value::as_str),
        ) else {
            return; // Browser-level events: not needed.
        };
        let Some(log) = lock(&self.state).sessions.get(session).cloned() else {
            return;
        };
        let params = message.get("params").unwrap_or(&Value::Null);
        match method {
            "Runtime.exceptionThrown" => {
                let text = exception_text(&params["exceptionDetails"]);
                lock(&log.entries).exceptions.push(text);
            }
            "Runtime.consoleAPICalled" => {
                let level = params["type"].as_str().unwrap_or("log");
                let args = params["args"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let text: Vec<String> = args.iter().map(describe).collect();
                let line = format!("{level}: {}", text.join(" "));
                lock(&log.entries).console.push(line);
            }
            "Inspector.targetCrashed" => {
                let text = "Inspector.targetCrashed: the page's renderer crashed".to_owned();
                lock(&log.entries).exceptions.push(text);
            }
            "Page.frameNavigated" if params["frame"].get("parentId").is_none() => {
                let loader = params["frame"]["loaderId"].as_str().map(str::to_owned);
                log.load.send_modify(|state| state.current = loader);
            }
            "Page.loadEventFired" => log.load.send_modify(|state| {
                if let Some(current) = state.current.clone() {
                    state.loaded.push(current);
                }
            }),
            "Target.attachedToTarget" => self.attached(params, log),
            "Target.detachedFromTarget" => {
                if let Some(child) = params["sessionId"].as_str() {
                    lock(&self.state).sessions.remove(child);
                }
            }
            _ => {}
        }
    }

    /// An auto-attached child of a page (or worker) session: instrument
    /// dedicated workers into the page's log, then let the child run (it
    /// waits for the debugger, so nothing it logs at start-up is missed).
    fn attached(&self, params: &Value, log: Arc<PageLog>) {
        let Some(child) = params["sessionId"].as_str() else {
            return;
        };
        let kind = params["targetInfo"]["type"].as_str().unwrap_or_default();
        let mut methods = vec![];
        if kind == "worker" {
            lock(&self.state)
                .sessions
                .insert(child.to_owned(), Arc::clone(&log));
            methods.push((
                "Target.setAutoAttach",
                json!({ "autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true }),
            ));
            methods.push(("Runtime.enable", json!({})));
        }
        methods.push(("Runtime.runIfWaitingForDebugger", json!({})));
        for (method, params) in methods {
            let pending = Pending::Background {
                log: Arc::clone(&log),
                method: format!("{method} on a {kind} target"),
            };
            self.send(Some(child), method, params, pending);
        }
    }

    /// The connection is gone: fail all waiting callers and any later call.
    fn close(&self) {
        lock(&self.state).pending = None;
    }
}

/// Reads Chromium's stderr until it closes: sends the DevTools endpoint once
/// and keeps the last lines in `tail`.
fn drain_stderr(
    stderr: std::process::ChildStderr,
    tail: &Mutex<Vec<String>>,
    endpoint: oneshot::Sender<String>,
) {
    let mut endpoint = Some(endpoint);
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(url) = line.strip_prefix("DevTools listening on ")
            && let Some(tx) = endpoint.take()
        {
            let _ = tx.send(url.trim().to_owned());
        }
        let mut tail = lock(tail);
        if tail.len() == STDERR_TAIL {
            tail.remove(0);
        }
        tail.push(line);
    }
}

/// A TCP connection to the DevTools `endpoint` (`ws://127.0.0.1:PORT/…`)
/// of a Chromium inside `netns`: made from a thread that entered it.
fn devtools_stream_in(netns: &NetNs, endpoint: &str) -> tokio::net::TcpStream {
    let authority = endpoint
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("unexpected DevTools endpoint {endpoint}"))
        .to_owned();
    let stream = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                netns.enter();
                std::net::TcpStream::connect(&authority)
            })
            .join()
            .expect("the thread entering the namespace")
    })
    .unwrap_or_else(|e| panic!("cannot reach DevTools at {authority} in the namespace: {e}"));
    stream.set_nonblocking(true).expect("non-blocking");
    tokio::net::TcpStream::from_std(stream).expect("a tokio stream")
}

/// A new, empty directory for one browser's profile.
fn fresh_profile_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "deltamesh-chromium-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot create Chromium profile {}: {e}", dir.display()));
    dir
}

/// The text of a CDP `ExceptionDetails`, e.g. "Uncaught Error: boom\n at …".
/// A thrown non-Error (which has no stack) gets its script location, e.g.
/// "Uncaught null (at blob:…:1:7)": Chromium reports a nested worker's error
/// in its parent worker that way.
fn exception_text(details: &Value) -> String {
    let text = details["text"].as_str().unwrap_or("exception");
    let mut text = match details.get("exception") {
        Some(exception) => format!("{text} {}", describe(exception)),
        None => text.to_owned(),
    };
    let has_stack = details["exception"].get("description").is_some();
    if let (false, Some(url)) = (has_stack, details["url"].as_str()) {
        let line = details["lineNumber"].as_u64().unwrap_or(0) + 1;
        let column = details["columnNumber"].as_u64().unwrap_or(0) + 1;
        text += &format!(" (at {url}:{line}:{column})");
    }
    text
}

/// A short text for a CDP `RemoteObject`: strings raw, other values as JSON,
/// objects by their description.
fn describe(object: &Value) -> String {
    if let Some(value) = object.get("value") {
        return value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
    }
    ["unserializableValue", "description", "type"]
        .iter()
        .find_map(|key| object[key].as_str())
        .unwrap_or("?")
        .to_owned()
}

/// A string field of a CDP result, or a panic naming the method.
fn str_field(result: &Value, field: &str, method: &str) -> String {
    result[field]
        .as_str()
        .unwrap_or_else(|| panic!("{method} returned no {field}: {result}"))
        .to_owned()
}

/// Locks a mutex, ignoring poisoning: the data are logs and maps that stay
/// consistent even if a panicking test thread held the lock.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
