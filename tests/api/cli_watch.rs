//! `callstore watch`: the real binary, run as a user would, against the real server (through a
//! TCP proxy of the test's own when the connection must break).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use callstore::proto::{CallEventKind, IngestCallsRequest, IngestOutcome};

use crate::cli_ingest::client_command;
use crate::helpers::{DEADLINE, TestApp, as_tenant, config_for, spawn_app, spawn_app_with, start};
use crate::ingest::native_call;

const TENANT: &str = "acme";

/// `callstore watch --server <server> --tenant acme <args>`, with piped output.
fn watch_command(server: &str, args: &[&str]) -> Command {
    let mut command = client_command("watch", server, TENANT);
    command.args(args).stdin(Stdio::null());
    command
}

/// Runs `callstore watch` to its end; returns its status, stdout lines and stderr.
async fn watch_to_end(server: &str, args: &[&str]) -> (ExitStatus, Vec<Value>, String) {
    let output = tokio::time::timeout(DEADLINE, watch_command(server, args).output())
        .await
        .expect("callstore watch ends in time")
        .expect("callstore watch runs");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 stdout");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8 stderr");
    let lines = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("each stdout line is JSON"))
        .collect();
    (output.status, lines, stderr)
}

/// A running `callstore watch`, read line by line.
struct Watch {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: mpsc::UnboundedReceiver<String>,
    /// Every stderr line so far, for failure messages.
    stderr_seen: Vec<String>,
}

impl Watch {
    fn spawn(server: &str, args: &[&str]) -> Self {
        let mut child = watch_command(server, args)
            .spawn()
            .expect("callstore watch starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let (stderr_tx, stderr_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                if stderr_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdout,
            stderr: stderr_rx,
            stderr_seen: Vec::new(),
        }
    }

    /// The next stdout line, parsed; `None` at the end of stdout.
    async fn next_line(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(DEADLINE, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line on stdout in time; stderr: {:?}", self.stderr()))
            .expect("stdout reads");
        line.map(|line| serde_json::from_str(&line).expect("each stdout line is JSON"))
    }

    /// The next `count` lines other than heartbeats.
    async fn events(&mut self, count: usize) -> Vec<Value> {
        let mut events = Vec::new();
        while events.len() < count {
            let Some(line) = self.next_line().await else {
                panic!(
                    "stdout ended after {} of {count} events; stderr: {:?}",
                    events.len(),
                    self.stderr()
                );
            };
            if line["kind"] != "CALL_EVENT_KIND_HEARTBEAT" {
                events.push(line);
            }
        }
        events
    }

    /// Waits for a stderr line containing `text`.
    async fn stderr_line_with(&mut self, text: &str) -> String {
        let found = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = self.stderr.recv().await {
                self.stderr_seen.push(line.clone());
                if line.contains(text) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "no stderr line with {text:?}; stderr: {:?}",
                self.stderr_seen
            ),
        }
    }

    /// The stderr lines seen so far.
    fn stderr(&mut self) -> Vec<String> {
        while let Ok(line) = self.stderr.try_recv() {
            self.stderr_seen.push(line);
        }
        self.stderr_seen.clone()
    }

    async fn exit_status(&mut self) -> ExitStatus {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("callstore watch exits in time")
            .expect("callstore watch is waited for")
    }
}

/// Stores `count` new calls, `prefix-0`, `prefix-1`, …, in one request.
async fn ingest_calls(app: &TestApp, prefix: &str, count: usize) {
    let calls = (0..count)
        .map(|index| native_call(&format!("{prefix}-{index}"), "13800000000"))
        .collect();
    let response = app
        .ingest_client()
        .await
        .ingest_calls(as_tenant(TENANT, IngestCallsRequest { calls }))
        .await
        .expect("the calls are ingested")
        .into_inner();
    for result in &response.results {
        assert_eq!(result.outcome(), IngestOutcome::Created, "{result:?}");
    }
}

/// The feed as the database holds it: (call id, call version, kind name) in feed order.
async fn feed(app: &TestApp) -> Vec<(String, i64, String)> {
    let rows: Vec<(uuid::Uuid, i64, i16)> = sqlx::query_as(
        "SELECT call_id, call_version, kind FROM feed_events WHERE tenant_id = $1
         ORDER BY tx_id, id",
    )
    .bind(TENANT)
    .fetch_all(&app.pool().await)
    .await
    .expect("reads the feed");
    rows.into_iter()
        .map(|(call_id, version, kind)| {
            let kind = CallEventKind::try_from(i32::from(kind)).expect("a known kind");
            (call_id.to_string(), version, kind.as_str_name().to_owned())
        })
        .collect()
}

/// An event line as (call id, call version, kind name).
fn event_of(line: &Value) -> (String, i64, String) {
    let version = match &line["callVersion"] {
        Value::String(text) => text.parse().expect("an int64 string"),
        Value::Null => 0,
        other => panic!("callVersion {other}"),
    };
    (
        line["callId"].as_str().unwrap_or_default().to_owned(),
        version,
        line["kind"].as_str().expect("a kind").to_owned(),
    )
}

/// The cursor where the feed is now: the SNAPSHOT_COMPLETE of a snapshot of no calls, taken
/// with the CLI itself.
async fn cursor_of_an_empty_feed(app: &TestApp) -> String {
    let (status, lines, stderr) =
        watch_to_end(&app.endpoint(), &["--snapshot", "--max-events", "1"]).await;
    assert!(status.success(), "{status}: {stderr}");
    let complete = lines
        .iter()
        .find(|line| line["kind"] != "CALL_EVENT_KIND_HEARTBEAT")
        .expect("a line");
    assert_eq!(
        complete["kind"], "CALL_EVENT_KIND_SNAPSHOT_COMPLETE",
        "{lines:?}"
    );
    let cursor = complete["cursor"].as_str().expect("a cursor").to_owned();
    assert!(!cursor.is_empty());
    cursor
}

/// A TCP proxy between the CLI and the server whose connections the test can cut.
struct Proxy {
    address: SocketAddr,
    shared: Arc<ProxyShared>,
    accepting: tokio::task::JoinHandle<()>,
}

struct ProxyShared {
    /// Where new connections go.
    upstream: Mutex<SocketAddr>,
    /// Cancelled to cut every connection open now.
    cut: Mutex<CancellationToken>,
    /// While set, new connections are closed at once.
    paused: AtomicBool,
    /// Connections forwarded to the server.
    connections: AtomicUsize,
    /// Bytes the next connection forwards from the server before it is cut.
    next_downstream_limit: Mutex<Option<usize>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy listens");
        let address = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(ProxyShared {
            upstream: Mutex::new(upstream),
            cut: Mutex::new(CancellationToken::new()),
            paused: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            next_downstream_limit: Mutex::new(None),
        });
        let accepting = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if shared.paused.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let upstream = *shared.upstream.lock().expect("not poisoned");
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let cut = shared.cut.lock().expect("not poisoned").clone();
                    let limit = shared
                        .next_downstream_limit
                        .lock()
                        .expect("not poisoned")
                        .take();
                    tokio::spawn(forward(client, server, cut, limit));
                }
            }
        });
        Self {
            address,
            shared,
            accepting,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Cuts every open connection and closes new ones until [`Proxy::resume`].
    fn cut_and_pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
        let mut cut = self.shared.cut.lock().expect("not poisoned");
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Sends new connections to another server.
    fn redirect(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().expect("not poisoned") = upstream;
    }

    fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
    }

    /// Makes the next connection break after the server sent it `bytes` bytes.
    fn cut_next_connection_after(&self, bytes: usize) {
        *self
            .shared
            .next_downstream_limit
            .lock()
            .expect("not poisoned") = Some(bytes);
    }

    fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.shared.cut.lock().expect("not poisoned").cancel();
    }
}

/// Copies both ways until either side closes, the cut, or `limit` bytes came from the server;
/// then drops both sockets.
async fn forward(
    client: TcpStream,
    server: TcpStream,
    cut: CancellationToken,
    limit: Option<usize>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut buffer = vec![0; 16 * 1024];
        loop {
            match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => {
                    if server_write.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let downstream = async {
        let mut buffer = vec![0; 16 * 1024];
        let mut left = limit.unwrap_or(usize::MAX);
        while left > 0 {
            match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => {
                    let forwarded = read.min(left);
                    if client_write.write_all(&buffer[..forwarded]).await.is_err() {
                        return;
                    }
                    left -= forwarded;
                }
            }
        }
    };
    tokio::select! {
        () = cut.cancelled() => {}
        () = upstream => {}
        () = downstream => {}
    }
}

#[tokio::test]
async fn watch_prints_a_snapshot_then_snapshot_complete_as_json_lines() {
    let app = spawn_app().await;
    ingest_calls(&app, "snap", 3).await;
    let stored: HashSet<String> =
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM calls WHERE tenant_id = $1")
            .bind(TENANT)
            .fetch_all(&app.pool().await)
            .await
            .expect("reads the calls")
            .into_iter()
            .map(|id| id.to_string())
            .collect();
    assert_eq!(stored.len(), 3);

    let (status, lines, stderr) = watch_to_end(
        &app.endpoint(),
        &["--snapshot", "--max-events", "4", "--view", "full"],
    )
    .await;
    assert!(status.success(), "{status}: {stderr}");
    let events: Vec<&Value> = lines
        .iter()
        .filter(|line| line["kind"] != "CALL_EVENT_KIND_HEARTBEAT")
        .collect();
    assert_eq!(events.len(), 4, "{lines:?}");
    let mut snapshot = HashSet::new();
    for line in &events[..3] {
        assert_eq!(line["kind"], "CALL_EVENT_KIND_SNAPSHOT", "{line}");
        let call_id = line["callId"].as_str().expect("a call id");
        assert_eq!(line["call"]["id"], call_id, "the record is the call's");
        assert_eq!(line["call"]["tenantId"], TENANT, "{line}");
        assert!(
            line["call"]["sourceCallId"]
                .as_str()
                .is_some_and(|id| id.starts_with("snap-")),
            "{line}"
        );
        // SNAPSHOT messages cannot be resumed from.
        assert!(
            line.get("cursor").is_none_or(|cursor| cursor == ""),
            "{line}"
        );
        assert!(snapshot.insert(call_id.to_owned()), "{call_id} twice");
    }
    assert_eq!(snapshot, stored);
    let complete = events[3];
    assert_eq!(complete["kind"], "CALL_EVENT_KIND_SNAPSHOT_COMPLETE");
    assert!(
        complete["cursor"]
            .as_str()
            .is_some_and(|cursor| !cursor.is_empty()),
        "{complete}"
    );
    assert!(complete.get("call").is_none(), "{complete}");
    assert!(
        !stderr.contains("reconnect") && !stderr.contains("broke"),
        "{stderr}"
    );
}

#[tokio::test]
async fn watch_resumes_by_itself_from_its_last_cursor_after_the_connection_breaks() {
    let app = spawn_app().await;
    let proxy = Proxy::start(app.address).await;
    let cursor = cursor_of_an_empty_feed(&app).await;

    ingest_calls(&app, "before", 5).await;
    let mut watch = Watch::spawn(
        &proxy.endpoint(),
        &["--from", &cursor, "--max-events", "10"],
    );
    let mut printed = watch.events(5).await;

    // The connection breaks mid-stream; while it is down, more calls are stored. Resuming
    // from now instead of the last cursor would miss them (and the test would time out).
    proxy.cut_and_pause();
    let reconnect = watch.stderr_line_with("resuming after cursor").await;
    let last_cursor = printed[4]["cursor"].as_str().expect("a cursor");
    assert!(reconnect.contains(last_cursor), "{reconnect}");
    ingest_calls(&app, "during", 5).await;
    proxy.resume();

    printed.extend(watch.events(5).await);
    let status = watch.exit_status().await;
    assert!(status.success(), "{status}: {:?}", watch.stderr());
    assert!(
        watch.next_line().await.is_none(),
        "nothing after --max-events"
    );
    assert!(proxy.connections() >= 2, "the CLI connected again");

    let printed: Vec<_> = printed.iter().map(event_of).collect();
    let expected = feed(&app).await;
    assert_eq!(expected.len(), 10);
    assert_eq!(
        printed, expected,
        "every event once, in feed order, none lost across the break"
    );
}

#[tokio::test]
async fn watch_moves_to_another_replica_when_its_server_shuts_down() {
    let first = spawn_app().await;
    let second = start(config_for(&first.database, |_| {})).await;
    second
        .wait_for_readiness(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let proxy = Proxy::start(first.address).await;
    let cursor = cursor_of_an_empty_feed(&first).await;
    ingest_calls(&first, "first", 3).await;
    let mut watch = Watch::spawn(&proxy.endpoint(), &["--from", &cursor, "--max-events", "6"]);
    let mut printed = watch.events(3).await;

    // The server ends the stream with UNAVAILABLE (SHUTTING_DOWN); the same address now leads
    // to another server of the same database, where the cursor is just as good.
    proxy.redirect(second.address);
    first
        .shutdown()
        .await
        .expect("the first server stops cleanly");
    let reconnect = watch.stderr_line_with("SHUTTING_DOWN").await;
    assert!(reconnect.contains("UNAVAILABLE"), "{reconnect}");
    ingest_calls(&second, "second", 3).await;

    printed.extend(watch.events(3).await);
    let status = watch.exit_status().await;
    assert!(status.success(), "{status}: {:?}", watch.stderr());
    let printed: Vec<_> = printed.iter().map(event_of).collect();
    assert_eq!(printed, feed(&second).await);
}

#[tokio::test]
async fn the_cursor_of_an_idle_feed_can_be_resumed_from() {
    // What `watch --snapshot` resumes from when its stream breaks before anything changed.
    let app = spawn_app().await;
    let cursor = cursor_of_an_empty_feed(&app).await;
    let mut watch = Watch::spawn(
        &app.endpoint(),
        &[
            "--from",
            &cursor,
            "--max-events",
            "1",
            "--heartbeat-interval",
            "100ms",
        ],
    );
    // Nothing is written until the stream is up: a heartbeat shows it was accepted.
    let Some(first) = watch.next_line().await else {
        panic!("the cursor was refused: {:?}", watch.stderr());
    };
    assert_eq!(first["kind"], "CALL_EVENT_KIND_HEARTBEAT", "{first}");
    ingest_calls(&app, "later", 1).await;
    let events = watch.events(1).await;
    assert_eq!(events[0]["kind"], "CALL_EVENT_KIND_CALL_CREATED");
    let status = watch.exit_status().await;
    assert!(status.success(), "{status}: {:?}", watch.stderr());
}

#[tokio::test]
async fn a_snapshot_broken_before_snapshot_complete_is_started_again() {
    let app = spawn_app().await;
    const CALLS: usize = 200;
    ingest_calls(&app, "big", CALLS).await;
    let proxy = Proxy::start(app.address).await;
    // Far less than the snapshot (each call is hundreds of bytes) but past the handshake.
    proxy.cut_next_connection_after(16 * 1024);

    let mut watch = Watch::spawn(&proxy.endpoint(), &["--snapshot"]);
    let mut snapshot_lines = Vec::new();
    let complete = loop {
        let Some(line) = watch.next_line().await else {
            panic!("stdout ended; stderr: {:?}", watch.stderr());
        };
        match line["kind"].as_str() {
            Some("CALL_EVENT_KIND_SNAPSHOT") => snapshot_lines.push(line),
            Some("CALL_EVENT_KIND_SNAPSHOT_COMPLETE") => break line,
            Some("CALL_EVENT_KIND_HEARTBEAT") => {}
            other => panic!("unexpected {other:?} before SNAPSHOT_COMPLETE"),
        }
    };
    watch.stderr_line_with("starting it again").await;
    assert!(
        complete["cursor"]
            .as_str()
            .is_some_and(|cursor| !cursor.is_empty()),
        "{complete}"
    );
    // The second, whole snapshot is the last CALLS lines: every call once.
    assert!(
        snapshot_lines.len() > CALLS,
        "part of the first snapshot was printed before the break ({} lines)",
        snapshot_lines.len()
    );
    let whole: HashSet<&str> = snapshot_lines[snapshot_lines.len() - CALLS..]
        .iter()
        .map(|line| line["callId"].as_str().expect("a call id"))
        .collect();
    assert_eq!(whole.len(), CALLS);
    assert_eq!(proxy.connections(), 2);
}

#[tokio::test]
async fn a_malformed_cursor_ends_watch_with_status_1_naming_it() {
    let app = spawn_app().await;
    let (status, lines, stderr) = watch_to_end(&app.endpoint(), &["--from", "not-a-cursor"]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(lines.is_empty(), "{lines:?}");
    assert!(stderr.contains("--from not-a-cursor"), "{stderr}");
    assert!(stderr.contains("INVALID_ARGUMENT"), "{stderr}");
    assert!(!stderr.contains("resuming"), "not retried: {stderr}");
}

#[tokio::test]
async fn a_task_that_is_not_an_id_ends_watch_with_status_1_naming_it() {
    let app = spawn_app().await;
    let (status, _, stderr) = watch_to_end(&app.endpoint(), &["--task", "no-such-task"]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--task no-such-task"), "{stderr}");
}

#[tokio::test]
async fn an_expired_cursor_ends_watch_with_status_1_and_advises_a_snapshot() {
    let app = spawn_app_with(|config| {
        config.watch.retention = std::time::Duration::from_millis(1);
        config.watch.prune_interval = std::time::Duration::from_millis(50);
    })
    .await;
    let cursor = cursor_of_an_empty_feed(&app).await;
    ingest_calls(&app, "old", 1).await;
    // Waits for the pruner to drop the event after the cursor.
    let pool = app.pool().await;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(20));
    tokio::time::timeout(DEADLINE, async {
        loop {
            poll.tick().await;
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM feed_events")
                .fetch_one(&pool)
                .await
                .expect("counts the feed");
            if left == 0 {
                return;
            }
        }
    })
    .await
    .expect("the event is pruned in time");

    let (status, _, stderr) = watch_to_end(&app.endpoint(), &["--from", &cursor]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--snapshot"), "{stderr}");
    assert!(stderr.contains(&cursor), "{stderr}");
}

#[tokio::test]
async fn ctrl_c_ends_watch_with_status_0() {
    let app = spawn_app().await;
    let mut watch = Watch::spawn(&app.endpoint(), &["--heartbeat-interval", "100ms"]);
    // A heartbeat shows the stream is up (and the signal handler installed).
    let heartbeat = watch.next_line().await.expect("a line");
    assert_eq!(heartbeat["kind"], "CALL_EVENT_KIND_HEARTBEAT");
    let pid = watch.child.id().expect("still running");
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0, "SIGINT is sent");
    let status = watch.exit_status().await;
    assert_eq!(status.code(), Some(0), "{:?}", watch.stderr());
}

#[tokio::test]
async fn watch_ends_with_status_0_once_its_reader_has_gone() {
    let app = spawn_app().await;
    let mut child = watch_command(&app.endpoint(), &["--heartbeat-interval", "100ms"])
        .stderr(Stdio::null())
        .spawn()
        .expect("callstore watch starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let first = tokio::time::timeout(DEADLINE, stdout.next_line())
        .await
        .expect("a line in time")
        .expect("stdout reads")
        .expect("a line");
    assert!(first.contains("CALL_EVENT_KIND_HEARTBEAT"), "{first}");
    // As `callstore watch | head -n 1` does: the next heartbeat finds no reader.
    drop(stdout);
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("callstore watch exits in time")
        .expect("callstore watch is waited for");
    assert_eq!(status.code(), Some(0));
}
