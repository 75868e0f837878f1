//! `callstore ingest`: loads files into a running server and prints one result line per record.
//!
//! Native files are JSON lines, one `callstore.v1.CallRecord` per line in the proto3 JSON
//! mapping, streamed over `IngestCallStream`: a blocking reader parses line by line into a
//! bounded queue, so a file of any size is sent without being held in memory, and the
//! acknowledgements are read while the records are still being sent. A vendor file is one
//! payload, sent whole with `IngestVendorPayload`.
//!
//! Exit status: 0 when every record was stored; 1 when any was rejected or unreadable, or a
//! file failed as a whole (printed on stderr); 2 when the command line cannot be used.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::client::{CallerMetadata, ConnectionArgs, code_name};
use crate::proto::ingest_service_client::IngestServiceClient;
use crate::proto::{
    CallRecord, IngestCallStreamRequest, IngestItemResult, IngestOutcome,
    IngestVendorPayloadRequest, PayloadFormat,
};

/// Name of the standard input in result lines (`<stdin>:3`, `<stdin>#calls[0]`).
const STDIN_LABEL: &str = "<stdin>";

/// Parsed lines waiting to be sent, and records waiting for the request stream.
const QUEUE: usize = 256;

/// Native files at least this big get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 1 << 20;

/// Vendor runs of at least this many files get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_FILES: usize = 10;

/// Exit status when the command line cannot be used (as clap's own usage errors).
const USAGE_ERROR: u8 = 2;

/// Loads files of call records into a callstore server.
#[derive(Debug, Args)]
#[command(
    after_help = "Each record gets one line on stdout: its source (FILE:LINE for native \
                  files; FILE#calls[i], FILE#task_number[i], ... for the items of vendor \
                  payloads), its outcome (CREATED, UPDATED, UNCHANGED, REJECTED, or INVALID for \
                  a line that is not a CallRecord), server id, source id and version, then for \
                  failures the error and each field violation. The exit status is 0 only when \
                  every record was stored."
)]
pub struct IngestArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Format of the files: native JSON lines of CallRecord, or a vendor payload per file.
    #[arg(long, value_enum, default_value = "native")]
    pub format: InputFormat,
    /// Vendor formats: the producing system, part of the idempotency key (default: the
    /// format's name).
    #[arg(long)]
    pub source_system: Option<String>,
    /// Vendor formats: IANA time zone of dates without a zone (default: the server's).
    #[arg(long)]
    pub time_zone: Option<String>,
    /// Vendor formats: the task of payloads that do not name it (task API number lists).
    #[arg(long)]
    pub source_task_id: Option<String>,
    /// Form of the result lines on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Files to load; `-` reads standard input.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

/// What the files hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// JSON lines, each one callstore.v1.CallRecord in the proto3 JSON mapping.
    Native,
    /// Task API call detail (`record` with its turns, task and tags) or call brief.
    #[value(alias = "task-api-record")]
    TaskApi,
    /// Task API call list of a task (`query_done_task_phones`).
    TaskApiCallList,
    /// Task API numbers of a task with their attempts.
    #[value(alias = "task-api-task-numbers")]
    TaskApiNumbers,
    /// Hangup push document (one call).
    HangupPush,
    /// Huawei CEC outbound result callback (a JSON list of results).
    HuaweiResult,
    /// Huawei CEC quality-inspection result of one call.
    HuaweiQc,
}

impl InputFormat {
    /// The vendor payload format, or `None` for native records.
    pub fn payload_format(self) -> Option<PayloadFormat> {
        match self {
            Self::Native => None,
            Self::TaskApi => Some(PayloadFormat::TaskApiRecord),
            Self::TaskApiCallList => Some(PayloadFormat::TaskApiCallList),
            Self::TaskApiNumbers => Some(PayloadFormat::TaskApiTaskNumbers),
            Self::HangupPush => Some(PayloadFormat::HangupPush),
            Self::HuaweiResult => Some(PayloadFormat::HuaweiResult),
            Self::HuaweiQc => Some(PayloadFormat::HuaweiQc),
        }
    }
}

/// Form of the result lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tab-separated columns.
    Text,
    /// One JSON object per line: source, index, outcome, id, source_id, version, code, error,
    /// violations.
    Json,
}

/// Runs `callstore ingest`; the exit status tells whether every record was stored.
pub async fn run(args: IngestArgs) -> ExitCode {
    let mut ingester = match Ingester::new(&args) {
        Ok(ingester) => ingester,
        Err(message) => {
            let _ = writeln!(io::stderr(), "callstore ingest: {message}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let inputs: Vec<Input> = args.files.iter().map(|path| Input::new(path)).collect();
    if args.format.payload_format().is_some() && inputs.len() >= PROGRESS_MIN_FILES {
        ingester.report.start_files_progress(inputs.len());
    }
    for input in &inputs {
        let outcome = match args.format.payload_format() {
            None => ingester.ingest_native(input).await,
            Some(format) => ingester.ingest_vendor(input, format).await,
        };
        if let Err(error) = outcome {
            ingester.report.file_failed(&input.label(), &error);
        }
        ingester.report.file_done();
        if ingester.report.output_broken() {
            break;
        }
    }
    ingester.report.finish()
}

/// The request fields of IngestVendorPayload that come from flags.
#[derive(Debug, Default)]
struct VendorOptions {
    source_system: String,
    time_zone: String,
    source_task_id: String,
}

type Client = IngestServiceClient<InterceptedService<Channel, CallerMetadata>>;

/// Sends the files, one at a time, and reports what the server did with each record.
struct Ingester {
    client: Client,
    /// `callstore.v1.CallRecord`, for reading native JSON lines.
    call_record: MessageDescriptor,
    vendor: VendorOptions,
    report: Report,
}

impl Ingester {
    fn new(args: &IngestArgs) -> Result<Self, String> {
        if args.format == InputFormat::Native
            && (args.source_system.is_some()
                || args.time_zone.is_some()
                || args.source_task_id.is_some())
        {
            return Err(
                "--source-system, --time-zone and --source-task-id apply to vendor formats; \
                 native records carry their own"
                    .to_owned(),
            );
        }
        if args.files.iter().filter(|path| is_stdin(path)).count() > 1 {
            return Err("`-` (standard input) can be given only once".to_owned());
        }
        let (endpoint, metadata) = args.connection.endpoint()?;
        let endpoint = endpoint;
        let client = IngestServiceClient::with_interceptor(endpoint.connect_lazy(), metadata);
        Ok(Self {
            client,
            call_record: call_record_descriptor()?,
            vendor: VendorOptions {
                source_system: args.source_system.clone().unwrap_or_default(),
                time_zone: args.time_zone.clone().unwrap_or_default(),
                source_task_id: args.source_task_id.clone().unwrap_or_default(),
            },
            report: Report::new(args.output, io::stderr().is_terminal()),
        })
    }

    /// Streams a native JSON-lines file and reports each acknowledgement as it arrives.
    async fn ingest_native(&mut self, input: &Input) -> Result<(), FileError> {
        let label = input.label();
        let source = input.open()?;
        let progress = self.report.start_bytes_progress(source.len());

        let (lines_tx, lines_rx) = mpsc::channel(QUEUE);
        let descriptor = self.call_record.clone();
        let reader_progress = progress.clone();
        let reading = tokio::task::spawn_blocking(move || {
            source.read_lines(&descriptor, &lines_tx, reader_progress.as_ref())
        });
        let (requests_tx, requests_rx) = mpsc::channel(QUEUE);
        let (invalid_tx, mut invalid_rx) = mpsc::channel(QUEUE);
        let cancel = CancellationToken::new();
        let pumping = tokio::spawn(pump(
            lines_rx,
            requests_tx,
            invalid_tx,
            label.clone(),
            cancel.clone(),
        ));

        let mut acknowledged = 0u64;
        let mut last_acknowledged = String::new();
        // The status that ended the exchange, and whether the stream had started.
        let mut failure = None;
        let mut held: VecDeque<InvalidLine> = VecDeque::new();
        match self
            .client
            .ingest_call_stream(ReceiverStream::new(requests_rx))
            .await
        {
            Err(status) => failure = Some((status, false)),
            Ok(response) => {
                let mut acks = response.into_inner();
                let mut acks_done = false;
                let mut invalid_done = false;
                while !(acks_done && invalid_done) {
                    tokio::select! {
                        ack = acks.message(), if !acks_done => match ack {
                            Ok(Some(ack)) => {
                                acknowledged += 1;
                                let result = ack.result.unwrap_or_default();
                                let source = if ack.client_token.is_empty() {
                                    format!("{label}#{}", result.index)
                                } else {
                                    ack.client_token
                                };
                                self.report.result(&source, &result);
                                last_acknowledged = source;
                                self.report_invalid(&label, &mut held, acknowledged);
                            }
                            Ok(None) => acks_done = true,
                            Err(status) => {
                                failure = Some((status, true));
                                acks_done = true;
                                // Stops sending: what is left of the file is not stored.
                                cancel.cancel();
                            }
                        },
                        invalid = invalid_rx.recv(), if !invalid_done => match invalid {
                            Some(line) => {
                                held.push_back(line);
                                self.report_invalid(&label, &mut held, acknowledged);
                            }
                            None => invalid_done = true,
                        },
                    }
                }
            }
        }
        // Lines after records that will never be acknowledged are still lines of the file.
        self.report_invalid(&label, &mut held, u64::MAX);
        // Whatever ended the exchange, the pump and then the reader stop: the reader's sends
        // fail once the pump has dropped its queue.
        cancel.cancel();
        let sent = pumping
            .await
            .map_err(|error| FileError::Internal(format!("the sender failed: {error}")))?;
        drop(invalid_rx);
        let read = reading
            .await
            .map_err(|error| FileError::Internal(format!("the reader failed: {error}")))?;
        self.report.stop_progress(progress.as_ref());

        if let Some((status, mid_stream)) = failure {
            return Err(FileError::Rpc {
                status,
                context: mid_stream.then(|| {
                    let last = if last_acknowledged.is_empty() {
                        String::new()
                    } else {
                        format!(" (the last: {last_acknowledged})")
                    };
                    format!(
                        "the stream failed after {acknowledged} of the {sent} records sent were \
                         acknowledged{last}"
                    )
                }),
            });
        }
        read?;
        if acknowledged < sent {
            return Err(FileError::Unacknowledged { sent, acknowledged });
        }
        Ok(())
    }

    /// Reports the held unreadable lines that no unacknowledged record precedes.
    fn report_invalid(&mut self, label: &str, held: &mut VecDeque<InvalidLine>, acknowledged: u64) {
        while let Some(line) = held.pop_front_if(|line| line.records_before <= acknowledged) {
            self.report
                .invalid(&format!("{label}:{}", line.number), &line.error);
        }
    }

    /// Sends a vendor file as one payload and reports each call and other item it carried.
    async fn ingest_vendor(
        &mut self,
        input: &Input,
        format: PayloadFormat,
    ) -> Result<(), FileError> {
        let label = input.label();
        let payload = input.read_all().await?;
        let request = IngestVendorPayloadRequest {
            format: format as i32,
            payload,
            source_system: self.vendor.source_system.clone(),
            time_zone: self.vendor.time_zone.clone(),
            source_task_id: self.vendor.source_task_id.clone(),
        };
        let response = self
            .client
            .ingest_vendor_payload(request)
            .await
            .map_err(|status| FileError::Rpc {
                status,
                context: None,
            })?
            .into_inner();
        for result in &response.calls {
            self.report
                .result(&format!("{label}#calls[{}]", result.index), result);
        }
        for result in &response.other {
            // Each kind of item is counted from 0 on its own, so the kind names it.
            let kind = if result.item_type.is_empty() {
                "other"
            } else {
                result.item_type.as_str()
            };
            self.report
                .result(&format!("{label}#{kind}[{}]", result.index), result);
        }
        Ok(())
    }
}

/// Moves parsed lines on: records into the request stream, unreadable lines to the report.
/// Returns how many records went into the stream.
async fn pump(
    mut lines: mpsc::Receiver<Line>,
    requests: mpsc::Sender<IngestCallStreamRequest>,
    invalid: mpsc::Sender<InvalidLine>,
    label: String,
    cancel: CancellationToken,
) -> u64 {
    let mut sent = 0u64;
    loop {
        let line = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            line = lines.recv() => line,
        };
        let delivered = match line {
            None => break,
            Some(Line::Record { number, record }) => {
                let request = IngestCallStreamRequest {
                    call: Some(*record),
                    client_token: format!("{label}:{number}"),
                };
                let delivered = tokio::select! {
                    biased;
                    () = cancel.cancelled() => false,
                    delivered = requests.send(request) => delivered.is_ok(),
                };
                sent += u64::from(delivered);
                delivered
            }
            Some(Line::Invalid { number, error }) => {
                let line = InvalidLine {
                    number,
                    error,
                    records_before: sent,
                };
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => false,
                    delivered = invalid.send(line) => delivered.is_ok(),
                }
            }
        };
        if !delivered {
            break;
        }
    }
    sent
}

/// A line of a native file that is not a CallRecord, with the number of records sent before
/// it: it is reported once they are acknowledged, so that results come out in file order.
struct InvalidLine {
    number: u64,
    error: String,
    records_before: u64,
}

/// One non-blank line of a native file.
enum Line {
    Record {
        number: u64,
        record: Box<CallRecord>,
    },
    Invalid {
        number: u64,
        error: String,
    },
}

/// The descriptor of `callstore.v1.CallRecord`, from the descriptor set the server also serves.
fn call_record_descriptor() -> Result<MessageDescriptor, String> {
    let pool = DescriptorPool::decode(crate::startup::FILE_DESCRIPTOR_SET)
        .map_err(|error| format!("the built-in descriptor set is unreadable: {error}"))?;
    pool.get_message_by_name("callstore.v1.CallRecord")
        .ok_or_else(|| "the built-in descriptor set lacks callstore.v1.CallRecord".to_owned())
}

/// Parses one line of a native file: `None` when blank, else the record or why it is not one.
pub fn parse_record_line(
    descriptor: &MessageDescriptor,
    bytes: &[u8],
) -> Option<Result<CallRecord, String>> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => return Some(Err(format!("not UTF-8: {error}"))),
    };
    // A byte-order mark may start a file written on Windows.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text = text.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return None;
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = DynamicMessage::deserialize(descriptor.clone(), &mut deserializer)
        .and_then(|message| deserializer.end().map(|()| message));
    Some(match parsed {
        Ok(message) => CallRecord::decode(message.encode_to_vec().as_slice())
            .map_err(|error| format!("not a CallRecord: {error}")),
        Err(error) => Err(format!("not a CallRecord: {error}")),
    })
}

/// A file named on the command line, or standard input.
enum Input {
    Stdin,
    File(PathBuf),
}

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

impl Input {
    fn new(path: &Path) -> Self {
        if is_stdin(path) {
            Self::Stdin
        } else {
            Self::File(path.to_owned())
        }
    }

    /// How result lines and errors name the input.
    fn label(&self) -> String {
        match self {
            Self::Stdin => STDIN_LABEL.to_owned(),
            Self::File(path) => path.display().to_string(),
        }
    }

    fn open(&self) -> Result<Source, FileError> {
        match self {
            Self::Stdin => Ok(Source::Stdin),
            Self::File(path) => {
                let file = File::open(path).map_err(FileError::Open)?;
                let size = file.metadata().map_err(FileError::Open)?.len();
                Ok(Source::File { file, size })
            }
        }
    }

    /// The whole input, for a vendor payload (one message, so it is read at once).
    async fn read_all(&self) -> Result<Vec<u8>, FileError> {
        let read = match self {
            Self::Stdin => tokio::task::spawn_blocking(|| {
                let mut payload = Vec::new();
                io::stdin()
                    .lock()
                    .read_to_end(&mut payload)
                    .map(|_| payload)
            })
            .await
            .map_err(|error| FileError::Internal(format!("the reader failed: {error}")))?,
            Self::File(path) => tokio::fs::read(path).await,
        };
        read.map_err(FileError::Open)
    }
}

/// An opened input, read on a blocking thread.
enum Source {
    Stdin,
    File { file: File, size: u64 },
}

impl Source {
    /// Size in bytes, when known.
    fn len(&self) -> Option<u64> {
        match self {
            Self::Stdin => None,
            Self::File { size, .. } => Some(*size),
        }
    }

    fn read_lines(
        self,
        descriptor: &MessageDescriptor,
        lines: &mpsc::Sender<Line>,
        progress: Option<&ProgressBar>,
    ) -> Result<(), FileError> {
        match self {
            Self::Stdin => read_lines(io::stdin().lock(), descriptor, lines, progress),
            Self::File { file, .. } => read_lines(
                BufReader::with_capacity(256 * 1024, file),
                descriptor,
                lines,
                progress,
            ),
        }
    }
}

/// Reads and parses lines until the end, a read error, or the queue's receiver is gone.
fn read_lines(
    mut reader: impl BufRead,
    descriptor: &MessageDescriptor,
    lines: &mpsc::Sender<Line>,
    progress: Option<&ProgressBar>,
) -> Result<(), FileError> {
    let mut buffer = Vec::new();
    let mut number = 0u64;
    loop {
        buffer.clear();
        let read = reader
            .read_until(b'\n', &mut buffer)
            .map_err(|error| FileError::Read {
                line: number + 1,
                error,
            })?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        if let Some(progress) = progress {
            progress.inc(read as u64);
        }
        let line = match parse_record_line(descriptor, &buffer) {
            None => continue,
            Some(Ok(record)) => Line::Record {
                number,
                record: Box::new(record),
            },
            Some(Err(error)) => Line::Invalid { number, error },
        };
        if lines.blocking_send(line).is_err() {
            // The exchange ended (failed or cancelled): nothing more is sent.
            return Ok(());
        }
    }
}

/// Why a whole file was not (entirely) ingested.
#[derive(Debug)]
enum FileError {
    Open(io::Error),
    Read {
        line: u64,
        error: io::Error,
    },
    Rpc {
        status: tonic::Status,
        context: Option<String>,
    },
    Unacknowledged {
        sent: u64,
        acknowledged: u64,
    },
    Internal(String),
}

impl fmt::Display for FileError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(error) => write!(formatter, "cannot read: {error}"),
            Self::Read { line, error } => write!(formatter, "cannot read line {line}: {error}"),
            Self::Rpc { status, context } => {
                if let Some(context) = context {
                    write!(formatter, "{context}: ")?;
                }
                // Transport errors nest causes that repeat each other; each is told once.
                let mut text = status.message().to_owned();
                let mut source = std::error::Error::source(status);
                while let Some(cause) = source {
                    let cause_text = cause.to_string();
                    if !text.contains(&cause_text) {
                        text.push_str(": ");
                        text.push_str(&cause_text);
                    }
                    source = cause.source();
                }
                write!(formatter, "{}: {text}", code_name(status.code()))
            }
            Self::Unacknowledged { sent, acknowledged } => write!(
                formatter,
                "the server ended the stream with {} of {sent} records unacknowledged",
                sent - acknowledged
            ),
            Self::Internal(message) => formatter.write_str(message),
        }
    }
}

impl FileError {
    /// The field violations of a refused request.
    fn violations(&self) -> Vec<Violation> {
        let Self::Rpc { status, .. } = self else {
            return Vec::new();
        };
        tonic_types::StatusExt::get_details_bad_request(status)
            .map(|bad_request| {
                bad_request
                    .field_violations
                    .into_iter()
                    .map(|violation| Violation {
                        field: violation.field,
                        description: violation.description,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One field violation of a BadRequest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

/// The field violations in the details of a per-item `google.rpc.Status`.
pub fn item_violations(error: &tonic_types::pb::Status) -> Vec<Violation> {
    error
        .details
        .iter()
        .filter(|detail| detail.type_url == tonic_types::BadRequest::TYPE_URL)
        .filter_map(|detail| tonic_types::pb::BadRequest::decode(detail.value.as_slice()).ok())
        .flat_map(|bad_request| bad_request.field_violations)
        .map(|violation| Violation {
            field: violation.field,
            description: violation.description,
        })
        .collect()
}

/// Outcome word of a result line.
const INVALID: &str = "INVALID";

/// One result line, in either output form.
#[derive(Debug, Serialize)]
struct ResultLine<'line> {
    source: &'line str,
    /// Position of the item in the stream, or among the items of its kind in a payload, from 0
    /// (none for unreadable lines).
    index: Option<i32>,
    /// Kind of item (`call`, `task`, `task_number`, `quality_result`, …) when the server says.
    item_type: Option<&'line str>,
    outcome: &'static str,
    id: Option<&'line str>,
    source_id: Option<&'line str>,
    version: Option<i64>,
    code: Option<&'static str>,
    error: Option<&'line str>,
    violations: Vec<Violation>,
}

impl ResultLine<'_> {
    fn text(&self) -> String {
        let mut columns = vec![
            self.source.to_owned(),
            self.outcome.to_owned(),
            self.id.unwrap_or("-").to_owned(),
            self.source_id.unwrap_or("-").to_owned(),
            self.version
                .map_or_else(|| "-".to_owned(), |version| version.to_string()),
        ];
        if let Some(error) = self.error {
            columns.push(match self.code {
                Some(code) => format!("{code}: {error}"),
                None => error.to_owned(),
            });
        }
        for violation in &self.violations {
            columns.push(format!("{}: {}", violation.field, violation.description));
        }
        // Tabs separate columns and a newline ends the record: neither may appear inside one.
        columns
            .iter()
            .map(|column| column.replace(['\t', '\n', '\r'], " "))
            .collect::<Vec<_>>()
            .join("\t")
    }
}

/// Records per outcome, and files that failed.
#[derive(Debug, Default)]
struct Tally {
    created: u64,
    updated: u64,
    unchanged: u64,
    rejected: u64,
    invalid: u64,
    /// Results without a known outcome (a server newer than this client).
    unknown: u64,
    files: u64,
    files_failed: u64,
}

impl Tally {
    fn all_stored(&self) -> bool {
        self.rejected == 0 && self.invalid == 0 && self.unknown == 0 && self.files_failed == 0
    }

    fn summary(&self) -> String {
        let records = self.created
            + self.updated
            + self.unchanged
            + self.rejected
            + self.invalid
            + self.unknown;
        let mut summary = format!(
            "{records} record(s): {} created, {} updated, {} unchanged, {} rejected, {} invalid",
            self.created, self.updated, self.unchanged, self.rejected, self.invalid
        );
        if self.unknown > 0 {
            summary.push_str(&format!(", {} with an unknown outcome", self.unknown));
        }
        if self.files_failed > 0 {
            summary.push_str(&format!(
                "; {} of {} file(s) failed",
                self.files_failed, self.files
            ));
        }
        summary
    }
}

/// Result lines on stdout; errors, progress and the summary on stderr.
struct Report {
    output: OutputFormat,
    stdout: BufWriter<io::Stdout>,
    /// Whether stderr is a terminal (progress bars are drawn only then).
    interactive: bool,
    /// Whether stdout is a terminal too, so that result lines must not cross the bar.
    stdout_is_terminal: bool,
    progress: Option<ProgressBar>,
    tally: Tally,
    /// The first failure to write a result line; nothing more is written after it.
    write_error: Option<io::Error>,
}

impl Report {
    fn new(output: OutputFormat, interactive: bool) -> Self {
        Self {
            output,
            stdout: BufWriter::new(io::stdout()),
            interactive,
            stdout_is_terminal: io::stdout().is_terminal(),
            progress: None,
            tally: Tally::default(),
            write_error: None,
        }
    }

    /// A bar over a native file's bytes (a spinner when the size is unknown), if it is worth one.
    fn start_bytes_progress(&mut self, size: Option<u64>) -> Option<ProgressBar> {
        if !self.interactive || size.is_some_and(|size| size < PROGRESS_MIN_BYTES) {
            return None;
        }
        let bar = match size {
            Some(size) => ProgressBar::new(size).with_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {bytes} read, {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.enable_steady_tick(Duration::from_millis(200));
        self.progress = Some(bar.clone());
        Some(bar)
    }

    /// A bar over the files of a vendor run.
    fn start_files_progress(&mut self, files: usize) {
        if !self.interactive {
            return;
        }
        let bar = ProgressBar::new(files as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} files, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        self.progress = Some(bar);
    }

    fn stop_progress(&mut self, bar: Option<&ProgressBar>) {
        if let Some(bar) = bar {
            bar.finish_and_clear();
            self.progress = None;
        }
    }

    fn file_done(&mut self) {
        self.tally.files += 1;
        if let Some(bar) = &self.progress {
            bar.inc(1);
        }
        self.flush();
    }

    fn output_broken(&self) -> bool {
        self.write_error.is_some()
    }

    /// Reports one item the server answered for.
    fn result(&mut self, source: &str, result: &IngestItemResult) {
        let outcome = IngestOutcome::try_from(result.outcome).unwrap_or_default();
        match outcome {
            IngestOutcome::Created => self.tally.created += 1,
            IngestOutcome::Updated => self.tally.updated += 1,
            IngestOutcome::Unchanged => self.tally.unchanged += 1,
            IngestOutcome::Rejected => self.tally.rejected += 1,
            IngestOutcome::Unspecified => self.tally.unknown += 1,
        }
        let outcome_name = match outcome {
            IngestOutcome::Unspecified => "UNKNOWN",
            known => known
                .as_str_name()
                .strip_prefix("INGEST_OUTCOME_")
                .unwrap_or("UNKNOWN"),
        };
        let error = result.error.as_ref();
        let line = ResultLine {
            source,
            index: Some(result.index),
            item_type: Some(result.item_type.as_str()).filter(|kind| !kind.is_empty()),
            outcome: outcome_name,
            id: Some(result.id.as_str()).filter(|id| !id.is_empty()),
            source_id: Some(result.source_id.as_str()).filter(|id| !id.is_empty()),
            version: Some(result.version).filter(|version| *version > 0),
            code: error.map(|error| code_name(Code::from(error.code))),
            error: error.map(|error| error.message.as_str()),
            violations: error.map(item_violations).unwrap_or_default(),
        };
        self.write_line(&line);
    }

    /// Reports a line of a native file that is not a CallRecord (never sent).
    fn invalid(&mut self, source: &str, error: &str) {
        self.tally.invalid += 1;
        let line = ResultLine {
            source,
            index: None,
            item_type: None,
            outcome: INVALID,
            id: None,
            source_id: None,
            version: None,
            code: None,
            error: Some(error),
            violations: Vec::new(),
        };
        self.write_line(&line);
    }

    fn write_line(&mut self, line: &ResultLine<'_>) {
        if self.write_error.is_some() {
            return;
        }
        let text = match self.output {
            OutputFormat::Text => line.text(),
            OutputFormat::Json => match serde_json::to_string(line) {
                Ok(json) => json,
                Err(error) => {
                    self.write_error = Some(io::Error::other(error));
                    return;
                }
            },
        };
        let stdout = &mut self.stdout;
        let written = match &self.progress {
            // On the same terminal as the bar, lines go out at once, between its redraws.
            Some(bar) if self.stdout_is_terminal => {
                bar.suspend(|| writeln!(stdout, "{text}").and_then(|()| stdout.flush()))
            }
            _ => writeln!(stdout, "{text}"),
        };
        if let Err(error) = written {
            self.write_error = Some(error);
        }
    }

    fn flush(&mut self) {
        if self.write_error.is_none()
            && let Err(error) = self.stdout.flush()
        {
            self.write_error = Some(error);
        }
    }

    /// Reports a file that failed as a whole, on stderr.
    fn file_failed(&mut self, label: &str, error: &FileError) {
        self.tally.files_failed += 1;
        let mut message = format!("callstore ingest: {label}: {error}");
        for violation in error.violations() {
            message.push_str(&format!(
                "\n  {}: {}",
                violation.field, violation.description
            ));
        }
        self.flush();
        self.eprint(&message);
    }

    fn eprint(&self, message: &str) {
        let print = || {
            let _ = writeln!(io::stderr(), "{message}");
        };
        match &self.progress {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// Flushes the results, prints the summary and decides the exit status.
    fn finish(mut self) -> ExitCode {
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
        self.flush();
        if let Some(error) = &self.write_error {
            self.eprint(&format!("callstore ingest: cannot write results: {error}"));
        }
        self.eprint(&format!("callstore ingest: {}", self.tally.summary()));
        if self.tally.all_stored() && self.write_error.is_none() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor() -> MessageDescriptor {
        call_record_descriptor().expect("the descriptor set has CallRecord")
    }

    #[test]
    fn a_json_line_in_the_proto3_mapping_is_a_call_record() {
        let line = br#"{"sourceCallId":"c-1","callee":"13800000000","dialTime":"2025-04-14T02:19:13Z","outcome":"CALL_OUTCOME_ANSWERED","durationMs":"61000","turns":[{"sequence":1,"speaker":"SPEAKER_ROBOT","text":"hi"}],"customFields":{"ext1":"88"}}
"#;
        let record = parse_record_line(&descriptor(), line)
            .expect("not blank")
            .expect("parses");
        assert_eq!(record.source_call_id, "c-1");
        assert_eq!(record.callee, "13800000000");
        assert_eq!(record.dial_time.expect("dial time").seconds, 1_744_597_153);
        assert_eq!(record.outcome(), crate::proto::CallOutcome::Answered);
        assert_eq!(record.duration_ms, Some(61_000));
        assert_eq!(record.turns[0].speaker(), crate::proto::Speaker::Robot);
        assert_eq!(record.custom_fields["ext1"], "88");
    }

    #[test]
    fn proto_field_names_are_accepted_too() {
        let record = parse_record_line(&descriptor(), br#"{"source_call_id":"c-2"}"#)
            .expect("not blank")
            .expect("parses");
        assert_eq!(record.source_call_id, "c-2");
    }

    #[test]
    fn blank_lines_are_skipped_and_bad_lines_explained() {
        assert!(parse_record_line(&descriptor(), b"  \r\n").is_none());
        let broken = parse_record_line(&descriptor(), br#"{"sourceCallId": "#)
            .expect("not blank")
            .expect_err("broken JSON");
        assert!(broken.contains("EOF"), "{broken}");
        let unknown = parse_record_line(&descriptor(), br#"{"nope": 1}"#)
            .expect("not blank")
            .expect_err("unknown field");
        assert!(unknown.contains("nope"), "{unknown}");
        let trailing = parse_record_line(&descriptor(), br#"{} {}"#)
            .expect("not blank")
            .expect_err("two values");
        assert!(trailing.contains("trailing"), "{trailing}");
        assert!(
            parse_record_line(&descriptor(), b"\xff")
                .expect("not blank")
                .is_err()
        );
    }

    #[test]
    fn every_payload_format_has_a_name() {
        for (name, format) in [
            ("task-api", PayloadFormat::TaskApiRecord),
            ("task-api-record", PayloadFormat::TaskApiRecord),
            ("task-api-call-list", PayloadFormat::TaskApiCallList),
            ("task-api-numbers", PayloadFormat::TaskApiTaskNumbers),
            ("task-api-task-numbers", PayloadFormat::TaskApiTaskNumbers),
            ("hangup-push", PayloadFormat::HangupPush),
            ("huawei-result", PayloadFormat::HuaweiResult),
            ("huawei-qc", PayloadFormat::HuaweiQc),
        ] {
            let parsed = InputFormat::from_str(name, false).expect(name);
            assert_eq!(parsed.payload_format(), Some(format), "{name}");
        }
        assert_eq!(
            InputFormat::from_str("native", false)
                .expect("native")
                .payload_format(),
            None
        );
    }

    #[test]
    fn item_errors_show_their_code_message_and_violations() {
        let bad_request = tonic_types::pb::BadRequest {
            field_violations: vec![tonic_types::pb::bad_request::FieldViolation {
                field: "call.callee".to_owned(),
                description: "must be a phone number".to_owned(),
                ..Default::default()
            }],
        };
        let result = IngestItemResult {
            index: 3,
            outcome: IngestOutcome::Rejected as i32,
            source_id: "c-3".to_owned(),
            error: Some(tonic_types::pb::Status {
                code: Code::InvalidArgument as i32,
                message: "invalid call.callee:\tmust be a phone number".to_owned(),
                details: vec![prost_types::Any {
                    type_url: tonic_types::BadRequest::TYPE_URL.to_owned(),
                    value: bad_request.encode_to_vec(),
                }],
            }),
            ..Default::default()
        };
        let error = result.error.as_ref().expect("an error");
        let line = ResultLine {
            source: "calls.jsonl:4",
            index: Some(result.index),
            item_type: None,
            outcome: "REJECTED",
            id: None,
            source_id: Some("c-3"),
            version: None,
            code: Some(code_name(Code::from(error.code))),
            error: Some(error.message.as_str()),
            violations: item_violations(error),
        };
        assert_eq!(
            line.text(),
            "calls.jsonl:4\tREJECTED\t-\tc-3\t-\tINVALID_ARGUMENT: invalid call.callee: must be a \
             phone number\tcall.callee: must be a phone number"
        );
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&line).expect("JSON")).expect("JSON");
        assert_eq!(json["violations"][0]["field"], "call.callee");
        assert_eq!(json["index"], 3);
        assert_eq!(json["id"], serde_json::Value::Null);
    }
}
