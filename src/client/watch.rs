//! `callstore watch`: follows the call feed of a running server and prints one JSON line per
//! message (`callstore.v1.WatchCallsResponse` in the proto3 JSON mapping).
//!
//! The stream is resumed by itself when it breaks for a reason that may pass (a lost
//! connection, a server shutting down or restarting, a consumer that was too slow): from the
//! cursor of the last message received, heartbeats included, so nothing is skipped and nothing
//! printed twice. A snapshot broken before its SNAPSHOT_COMPLETE cannot be resumed part-way
//! (its messages have no cursor) and is started again. Reconnections wait 100 ms, doubling up
//! to 5 s, and are told on stderr.
//!
//! Exit status: 0 after Ctrl-C (or SIGTERM), `--max-events`, or once the reader of stdout has
//! gone; 1 when the server refuses the request or the stream for good (a bad cursor or filter,
//! an expired cursor, no permission) or stdout cannot be written; 2 when the command line cannot
//! be used.

use std::io::{self, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::client::{CallerMetadata, ConnectionArgs, code_name};
use crate::error::ERROR_DOMAIN;
use crate::proto::watch_service_client::WatchServiceClient;
use crate::proto::{
    CallEventKind, CallView, WatchCallsRequest, WatchCallsResponse, WatchFilter,
    watch_calls_request::Start,
};

/// Exit status when the command line cannot be used (as clap's own usage errors).
const USAGE_ERROR: u8 = 2;

/// First wait before a reconnection.
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Longest wait between reconnections.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Bounds of `--heartbeat-interval`, as the server accepts them.
const HEARTBEAT_MIN: Duration = Duration::from_millis(100);
const HEARTBEAT_MAX: Duration = Duration::from_secs(3600);

/// Follows the call feed of a callstore server.
#[derive(Debug, Args)]
#[command(
    after_help = "Each message is one JSON line on stdout: a callstore.v1.WatchCallsResponse \
                  in the proto3 JSON mapping (kind, cursor, call, callId, callVersion, ...), \
                  heartbeats included. Without --from or --snapshot the feed starts now. A \
                  broken stream is resumed from the cursor of the last line printed; each \
                  reconnection is told on stderr. Ctrl-C ends the command with status 0; a \
                  request the server refuses ends it with status 1."
)]
pub struct WatchArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Only calls of this task (server id); repeat for any of several tasks.
    #[arg(long = "task", value_name = "ID")]
    pub tasks: Vec<String>,
    /// Resume after this cursor (of any line printed before, heartbeats included).
    #[arg(long, value_name = "CURSOR", conflicts_with = "snapshot")]
    pub from: Option<String>,
    /// First every current matching call (SNAPSHOT lines), then SNAPSHOT_COMPLETE, then the
    /// changes from there on.
    #[arg(long)]
    pub snapshot: bool,
    /// How much of each call to print.
    #[arg(long, value_enum, default_value = "basic")]
    pub view: View,
    /// How long the stream may stay silent before the server sends a heartbeat (100ms to 1h;
    /// the server's default when unset).
    #[arg(long, value_name = "DURATION", value_parser = parse_heartbeat_interval)]
    pub heartbeat_interval: Option<Duration>,
    /// Exit (status 0) after this many messages other than heartbeats.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_events: Option<u64>,
}

/// How much of each call the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum View {
    /// The record's own fields, with tag and level ids.
    Basic,
    /// The record with its tags (and their groups) and its level embedded.
    Full,
}

impl View {
    fn call_view(self) -> CallView {
        match self {
            Self::Basic => CallView::Basic,
            Self::Full => CallView::Full,
        }
    }
}

/// A duration the server accepts as a heartbeat interval.
fn parse_heartbeat_interval(text: &str) -> Result<Duration, String> {
    let interval = crate::cli::parse_duration(text)?;
    if !(HEARTBEAT_MIN..=HEARTBEAT_MAX).contains(&interval) {
        return Err("must be from 100ms to 1h".to_owned());
    }
    Ok(interval)
}

/// Runs `callstore watch` until Ctrl-C, `--max-events`, or an error that retrying cannot cure.
pub async fn run(args: WatchArgs) -> ExitCode {
    let mut watcher = match Watcher::new(&args) {
        Ok(watcher) => watcher,
        Err(message) => {
            eprint(&message);
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let stop = CancellationToken::new();
    if let Err(error) = stop_on_signals(stop.clone()) {
        eprint(&format!("cannot install the signal handlers: {error}"));
        return ExitCode::FAILURE;
    }
    match watcher.watch(&stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprint(&message);
            ExitCode::FAILURE
        }
    }
}

/// Cancels `stop` on the first SIGINT or SIGTERM.
fn stop_on_signals(stop: CancellationToken) -> io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        stop.cancel();
    });
    Ok(())
}

fn eprint(message: &str) {
    let _ = writeln!(io::stderr(), "callstore watch: {message}");
}

type Client = WatchServiceClient<InterceptedService<Channel, CallerMetadata>>;

/// Holds the stream open, reconnecting as long as the failures may pass.
struct Watcher {
    client: Client,
    /// The request without its start, which changes as the stream moves on.
    filter: WatchFilter,
    view: CallView,
    heartbeat_interval: Option<Duration>,
    position: Position,
    /// `callstore.v1.WatchCallsResponse`, for the JSON lines.
    response: MessageDescriptor,
    max_events: Option<u64>,
    /// Messages other than heartbeats printed so far.
    events: u64,
    backoff: Backoff,
}

impl Watcher {
    fn new(args: &WatchArgs) -> Result<Self, String> {
        let (endpoint, metadata) = args.connection.endpoint()?;
        let endpoint = endpoint
            // A connection that died silently (no reset ever arrives) is noticed and replaced.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let client = WatchServiceClient::with_interceptor(endpoint.connect_lazy(), metadata);
        let position = match (&args.from, args.snapshot) {
            (Some(cursor), _) => Position::After(cursor.clone()),
            (None, true) => Position::Snapshot,
            (None, false) => Position::Now,
        };
        Ok(Self {
            client,
            filter: WatchFilter {
                task_ids: args.tasks.clone(),
                ..Default::default()
            },
            view: args.view.call_view(),
            heartbeat_interval: args.heartbeat_interval,
            position,
            response: response_descriptor()?,
            max_events: args.max_events,
            events: 0,
            backoff: Backoff::new(),
        })
    }

    fn request(&self) -> WatchCallsRequest {
        WatchCallsRequest {
            filter: Some(self.filter.clone()),
            start: Some(self.position.start()),
            view: self.view as i32,
            heartbeat_interval: self
                .heartbeat_interval
                .map(|interval| prost_types::Duration {
                    seconds: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
                    // Below one billion, so it fits.
                    nanos: i32::try_from(interval.subsec_nanos()).unwrap_or(0),
                }),
        }
    }

    /// Streams until stopped or done (`Ok`), or until a failure that retrying cannot cure.
    async fn watch(&mut self, stop: &CancellationToken) -> Result<(), String> {
        loop {
            let status = match self.stream(stop).await? {
                Ended::Done => return Ok(()),
                Ended::Failed(status) => status,
            };
            if !retryable(&status) {
                return Err(self.explain(&status));
            }
            let resumed = self.position.after_failure(&status);
            let delay = self.backoff.next_delay();
            eprint(&format!(
                "{}; {} in {}",
                describe_break(&status),
                resumed.describe(),
                format_delay(delay)
            ));
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One stream, from the current position until it ends.
    async fn stream(&mut self, stop: &CancellationToken) -> Result<Ended, String> {
        let request = self.request();
        let opened = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(Ended::Done),
            opened = self.client.watch_calls(request) => opened,
        };
        let mut messages = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => return Ok(Ended::Failed(status)),
        };
        loop {
            let message = tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(Ended::Done),
                message = messages.message() => message,
            };
            let message = match message {
                Ok(Some(message)) => message,
                // A watch has no end: one that ends without an error was cut short somewhere.
                Ok(None) => {
                    return Ok(Ended::Failed(tonic::Status::unavailable(
                        "the server ended the stream without a status",
                    )));
                }
                Err(status) => return Ok(Ended::Failed(status)),
            };
            if !self.print(&message)? {
                return Ok(Ended::Done);
            }
            self.backoff.reset();
            self.position.advance(&message);
            if message.kind() != CallEventKind::Heartbeat {
                self.events += 1;
                if self.max_events.is_some_and(|max| self.events >= max) {
                    return Ok(Ended::Done);
                }
            }
        }
    }

    /// Prints one message as a JSON line and flushes it, so that a pipe sees it at once.
    /// `false` when the reader of stdout has gone (`watch | head -n 5`): nothing more to do.
    fn print(&self, message: &WatchCallsResponse) -> Result<bool, String> {
        let line = json_line(&self.response, message)?;
        let mut stdout = io::stdout().lock();
        match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            Err(error) => Err(format!("cannot write to stdout: {error}")),
        }
    }

    /// Why the command ends on `status`, in terms of its flags.
    fn explain(&self, status: &tonic::Status) -> String {
        let error_info = status.get_details_error_info();
        if status.code() == Code::FailedPrecondition
            && error_info
                .as_ref()
                .is_some_and(|info| info.reason == "CURSOR_EXPIRED")
        {
            let cursor = match &self.position {
                Position::After(cursor) => format!(" {cursor}"),
                _ => String::new(),
            };
            return format!(
                "the cursor{cursor} has expired (the events after it are no longer kept): start \
                 again with --snapshot ({})",
                describe_status(status)
            );
        }
        let mut message = format!("the server refused the watch: {}", describe_status(status));
        if let Some(bad_request) = status.get_details_bad_request() {
            for violation in bad_request.field_violations {
                let flag = self.flag_of(&violation.field);
                message.push_str(&format!("\n  {flag}: {}", violation.description));
            }
        }
        message
    }

    /// The command-line flag (and value) behind a request field the server names.
    fn flag_of(&self, field: &str) -> String {
        if field == "from_cursor" || field == "start.from_cursor" {
            return match &self.position {
                Position::After(cursor) => format!("--from {cursor}"),
                _ => "--from".to_owned(),
            };
        }
        if let Some(index) = field
            .strip_prefix("filter.task_ids[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|index| index.parse::<usize>().ok())
            && let Some(task) = self.filter.task_ids.get(index)
        {
            return format!("--task {task}");
        }
        match field {
            "heartbeat_interval" => "--heartbeat-interval".to_owned(),
            "view" => "--view".to_owned(),
            "metadata.x-tenant-id" => "--tenant".to_owned(),
            other => other.to_owned(),
        }
    }
}

/// How a stream ended.
enum Ended {
    /// Stopped by a signal, or `--max-events` reached.
    Done,
    Failed(tonic::Status),
}

/// Where the next stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    /// From now: nothing with a cursor has been received yet.
    Now,
    /// A snapshot whose SNAPSHOT_COMPLETE has not been received.
    Snapshot,
    /// After this cursor.
    After(String),
}

/// What a reconnection resumes from, for the message on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resumption {
    Cursor(String),
    /// The server's cursor of the broken stream (nothing with a cursor had been received).
    ServerCursor(String),
    SnapshotAgain,
    NowAgain,
}

impl Resumption {
    fn describe(&self) -> String {
        match self {
            Self::Cursor(cursor) => format!("resuming after cursor {cursor}"),
            Self::ServerCursor(cursor) => {
                format!("resuming after the server's last cursor {cursor}")
            }
            Self::SnapshotAgain => "the snapshot broke before SNAPSHOT_COMPLETE and cannot be \
                                    resumed part-way: starting it again (its calls will be \
                                    printed again)"
                .to_owned(),
            Self::NowAgain => "no cursor was received yet: starting from now again (changes \
                               made in between are missed)"
                .to_owned(),
        }
    }
}

impl Position {
    fn start(&self) -> Start {
        match self {
            Self::Now => Start::FromNow(true),
            Self::Snapshot => Start::Snapshot(true),
            Self::After(cursor) => Start::FromCursor(cursor.clone()),
        }
    }

    /// Moves past a message received. SNAPSHOT messages have no cursor: until
    /// SNAPSHOT_COMPLETE, a snapshot stays one to start again.
    fn advance(&mut self, message: &WatchCallsResponse) {
        if !message.cursor.is_empty() {
            *self = Self::After(message.cursor.clone());
        }
    }

    /// Decides where to resume after the stream broke with `status`.
    fn after_failure(&mut self, status: &tonic::Status) -> Resumption {
        match self {
            Self::After(cursor) => Resumption::Cursor(cursor.clone()),
            Self::Snapshot => Resumption::SnapshotAgain,
            // The server's cursor is no later than now, so it loses less than starting from now.
            Self::Now => match server_cursor(status) {
                Some(cursor) => {
                    *self = Self::After(cursor.clone());
                    Resumption::ServerCursor(cursor)
                }
                None => Resumption::NowAgain,
            },
        }
    }
}

/// The cursor an UNAVAILABLE end of stream carries in its ErrorInfo.
fn server_cursor(status: &tonic::Status) -> Option<String> {
    let info = status.get_details_error_info()?;
    if info.domain != ERROR_DOMAIN {
        return None;
    }
    info.metadata
        .get("cursor")
        .filter(|cursor| !cursor.is_empty())
        .cloned()
}

/// Whether a stream that ended with `status` is worth opening again.
fn retryable(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable
        | Code::Aborted
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Internal => true,
        // Made up by the client from a broken connection (a status the server sent has no
        // source), not refused by the server.
        Code::Unknown | Code::Cancelled => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// Reconnection delays: 100 ms, doubling up to 5 s, back to 100 ms once a message arrives.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(BACKOFF_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

fn format_delay(delay: Duration) -> String {
    if delay < Duration::from_secs(1) {
        format!("{} ms", delay.as_millis())
    } else {
        format!("{:.1} s", delay.as_secs_f64())
    }
}

/// What broke the stream, for the reconnection message.
fn describe_break(status: &tonic::Status) -> String {
    let mut text = format!("the stream broke ({})", describe_status(status));
    if let Some(info) = status.get_details_error_info()
        && !info.reason.is_empty()
    {
        text.push_str(&format!(" [{}]", info.reason));
    }
    text
}

/// A status as `CODE: message: causes`.
fn describe_status(status: &tonic::Status) -> String {
    // Transport errors nest causes that repeat each other; each is told once.
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    format!("{}: {text}", code_name(status.code()))
}

/// The descriptor of `callstore.v1.WatchCallsResponse`, from the descriptor set the server also
/// serves.
fn response_descriptor() -> Result<MessageDescriptor, String> {
    let pool = DescriptorPool::decode(crate::startup::FILE_DESCRIPTOR_SET)
        .map_err(|error| format!("the built-in descriptor set is unreadable: {error}"))?;
    pool.get_message_by_name("callstore.v1.WatchCallsResponse")
        .ok_or_else(|| {
            "the built-in descriptor set lacks callstore.v1.WatchCallsResponse".to_owned()
        })
}

/// One message in the proto3 JSON mapping, on one line.
fn json_line(
    descriptor: &MessageDescriptor,
    message: &WatchCallsResponse,
) -> Result<String, String> {
    let mut dynamic = DynamicMessage::new(descriptor.clone());
    dynamic
        .transcode_from(message)
        .map_err(|error| format!("cannot convert a message to JSON: {error}"))?;
    serde_json::to_string(&dynamic)
        .map_err(|error| format!("cannot write a message as JSON: {error}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use prost::Message as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(extra: &[&str]) -> Result<WatchArgs, clap::Error> {
        let mut argv = vec!["callstore", "watch", "--tenant", "acme"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv)?;
        match cli.command {
            Command::Watch(args) => Ok(args),
            other => panic!("expected watch, got {other:?}"),
        }
    }

    fn message(kind: CallEventKind, cursor: &str) -> WatchCallsResponse {
        WatchCallsResponse {
            kind: kind as i32,
            cursor: cursor.to_owned(),
            ..Default::default()
        }
    }

    /// An UNAVAILABLE end of stream as the server sends it, with its ErrorInfo.
    fn unavailable_with_cursor(cursor: &str) -> tonic::Status {
        tonic::Status::with_error_details(
            Code::Unavailable,
            "shutting down",
            tonic_types::ErrorDetails::with_error_info(
                "SHUTTING_DOWN",
                ERROR_DOMAIN,
                [("cursor".to_owned(), cursor.to_owned())],
            ),
        )
    }

    // A watcher needs a runtime: its channel connects lazily on it.
    #[tokio::test]
    async fn the_start_follows_the_flags() {
        let now = Watcher::new(&parse(&[]).expect("parses")).expect("a watcher");
        assert_eq!(now.request().start, Some(Start::FromNow(true)));
        let snapshot = Watcher::new(&parse(&["--snapshot"]).expect("parses")).expect("a watcher");
        assert_eq!(snapshot.request().start, Some(Start::Snapshot(true)));
        let from = Watcher::new(&parse(&["--from", "abc"]).expect("parses")).expect("a watcher");
        assert_eq!(
            from.request().start,
            Some(Start::FromCursor("abc".to_owned()))
        );
        assert!(parse(&["--from", "abc", "--snapshot"]).is_err());
    }

    #[tokio::test]
    async fn flags_fill_the_request() {
        let args = parse(&[
            "--task",
            "t-1",
            "--task",
            "t-2",
            "--view",
            "full",
            "--heartbeat-interval",
            "1500ms",
            "--max-events",
            "3",
        ])
        .expect("parses");
        assert_eq!(args.max_events, Some(3));
        let request = Watcher::new(&args).expect("a watcher").request();
        assert_eq!(
            request.filter.as_ref().expect("a filter").task_ids,
            ["t-1", "t-2"].map(str::to_owned)
        );
        assert_eq!(request.view(), CallView::Full);
        assert_eq!(
            request.heartbeat_interval,
            Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        let defaults = Watcher::new(&parse(&[]).expect("parses"))
            .expect("a watcher")
            .request();
        assert_eq!(defaults.view(), CallView::Basic);
        assert_eq!(defaults.heartbeat_interval, None);
    }

    #[tokio::test]
    async fn bad_flags_are_usage_errors() {
        assert!(parse(&["--heartbeat-interval", "50ms"]).is_err());
        assert!(parse(&["--heartbeat-interval", "2h"]).is_err());
        assert!(parse(&["--max-events", "0"]).is_err());
        assert!(parse(&["--view", "huge"]).is_err());
        assert!(Cli::try_parse_from(["callstore", "watch", "--tenant", "two words"]).is_err());
        let bad_server = parse(&["--server", "not a url"]).expect("parses");
        assert!(Watcher::new(&bad_server).is_err());
    }

    #[test]
    fn the_position_moves_with_every_cursor_but_not_through_a_snapshot() {
        let mut position = Position::Snapshot;
        position.advance(&message(CallEventKind::Snapshot, ""));
        assert_eq!(position, Position::Snapshot);
        assert_eq!(
            position.after_failure(&unavailable_with_cursor("server")),
            Resumption::SnapshotAgain
        );
        assert_eq!(position.start(), Start::Snapshot(true));

        position.advance(&message(CallEventKind::SnapshotComplete, "c1"));
        assert_eq!(position, Position::After("c1".to_owned()));
        position.advance(&message(CallEventKind::Heartbeat, "c2"));
        position.advance(&message(CallEventKind::CallCreated, "c3"));
        // The cursor of the last message received wins over the server's.
        assert_eq!(
            position.after_failure(&unavailable_with_cursor("server")),
            Resumption::Cursor("c3".to_owned())
        );
        assert_eq!(position.start(), Start::FromCursor("c3".to_owned()));
    }

    #[test]
    fn from_now_resumes_from_the_servers_cursor_when_it_has_none() {
        let mut position = Position::Now;
        assert_eq!(
            position.after_failure(&tonic::Status::unavailable("connection refused")),
            Resumption::NowAgain
        );
        assert_eq!(position.start(), Start::FromNow(true));
        assert_eq!(
            position.after_failure(&unavailable_with_cursor("server")),
            Resumption::ServerCursor("server".to_owned())
        );
        assert_eq!(position.start(), Start::FromCursor("server".to_owned()));
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        for code in [
            Code::Unavailable,
            Code::Aborted,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
        ] {
            assert!(retryable(&tonic::Status::new(code, "x")), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::NotFound,
            Code::Unimplemented,
            Code::Unknown,
            Code::Cancelled,
        ] {
            assert!(!retryable(&tonic::Status::new(code, "x")), "{code:?}");
        }
        // The same codes made up from a broken connection are retried.
        let broken = tonic::Status::from_error(Box::new(io::Error::other("connection closed")));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(retryable(&broken));
    }

    #[test]
    fn backoff_doubles_to_five_seconds_and_resets() {
        let mut backoff = Backoff::new();
        let delays: Vec<u64> = (0..9)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn an_expired_cursor_advises_a_snapshot() {
        let watcher =
            Watcher::new(&parse(&["--from", "old-cursor"]).expect("parses")).expect("a watcher");
        let status = tonic::Status::with_error_details(
            Code::FailedPrecondition,
            "the cursor has expired; re-snapshot",
            tonic_types::ErrorDetails::with_error_info(
                "CURSOR_EXPIRED",
                ERROR_DOMAIN,
                std::collections::HashMap::new(),
            ),
        );
        assert!(!retryable(&status));
        let explained = watcher.explain(&status);
        assert!(explained.contains("old-cursor"), "{explained}");
        assert!(explained.contains("--snapshot"), "{explained}");
    }

    #[tokio::test]
    async fn refused_fields_are_named_by_their_flags() {
        let watcher = Watcher::new(&parse(&["--from", "bad!", "--task", "nope"]).expect("parses"))
            .expect("a watcher");
        let status = tonic::Status::with_error_details(
            Code::InvalidArgument,
            "invalid request",
            tonic_types::ErrorDetails::with_bad_request(vec![
                tonic_types::FieldViolation::new("from_cursor", "is not a cursor"),
                tonic_types::FieldViolation::new("filter.task_ids[0]", "is not a UUID"),
            ]),
        );
        let explained = watcher.explain(&status);
        assert!(explained.starts_with("the server refused the watch: INVALID_ARGUMENT"));
        assert!(
            explained.contains("--from bad!: is not a cursor"),
            "{explained}"
        );
        assert!(
            explained.contains("--task nope: is not a UUID"),
            "{explained}"
        );
    }

    #[test]
    fn messages_print_in_the_proto3_json_mapping() {
        let descriptor = response_descriptor().expect("the descriptor");
        let response = WatchCallsResponse {
            kind: CallEventKind::CallCreated as i32,
            cursor: "abc".to_owned(),
            call: Some(crate::proto::CallRecord {
                id: "0194c2f0-0000-7000-8000-000000000001".to_owned(),
                version: 2,
                ..Default::default()
            }),
            call_id: "0194c2f0-0000-7000-8000-000000000001".to_owned(),
            call_version: 2,
            event_time: Some(prost_types::Timestamp {
                seconds: 1_744_597_153,
                nanos: 0,
            }),
            ..Default::default()
        };
        let line = json_line(&descriptor, &response).expect("JSON");
        assert!(!line.contains('\n'));
        let json: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(json["kind"], "CALL_EVENT_KIND_CALL_CREATED");
        assert_eq!(json["cursor"], "abc");
        assert_eq!(json["callId"], "0194c2f0-0000-7000-8000-000000000001");
        assert_eq!(json["callVersion"], "2");
        assert_eq!(json["eventTime"], "2025-04-14T02:19:13Z");
        assert_eq!(json["call"]["version"], "2");
        // And it reads back as the same message.
        let back = DynamicMessage::deserialize(descriptor, &json).expect("reads back");
        let decoded = WatchCallsResponse::decode(back.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, response);
    }

    #[test]
    fn the_api_key_never_prints() {
        let args = parse(&["--api-key", "s3cret"]).expect("parses");
        assert!(!format!("{args:?}").contains("s3cret"));
    }
}
