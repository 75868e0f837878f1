//! `callstore ingest`: the real binary, run as a user would, against the real server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use prost_reflect::{DescriptorPool, DynamicMessage};
use tokio::process::Command;

use callstore::proto::{CallRecord, Speaker, Turn};

use crate::helpers::{DEADLINE, spawn_app};

const TENANT: &str = "acme";
const HANGUP_PUSH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/hangup_push.json"
);

/// A directory of its own under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "callstore-cli-ingest-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).expect("creates the temporary directory");
        Self(path)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("writes the file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `callstore <subcommand> --server <server> --tenant <tenant>`, the client environment
/// variables cleared, output piped, killed when dropped.
pub(crate) fn client_command(subcommand: &str, server: &str, tenant: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_callstore"));
    command
        .arg(subcommand)
        .args(["--server", server, "--tenant", tenant])
        .env_remove("CALLSTORE_SERVER")
        .env_remove("CALLSTORE_TENANT")
        .env_remove("CALLSTORE_API_KEY")
        .env("CALLSTORE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `callstore ingest --server <server> --tenant acme <args>` to its end.
async fn ingest(server: &str, args: &[&str], stdin: Stdio) -> Output {
    let mut command = client_command("ingest", server, TENANT);
    command.args(args).stdin(stdin);
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("callstore ingest ends in time")
        .expect("callstore ingest runs")
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("UTF-8 stderr")
}

/// Text result lines by their first column (the record's source).
fn lines_by_source(stdout: &str) -> HashMap<String, Vec<String>> {
    stdout
        .lines()
        .map(|line| {
            let columns: Vec<String> = line.split('\t').map(str::to_owned).collect();
            (columns[0].clone(), columns)
        })
        .collect()
}

/// A record as `callstore.v1.CallRecord` JSON, through the descriptor set and prost-reflect.
fn to_json_line(record: &CallRecord) -> String {
    let pool = DescriptorPool::decode(callstore::startup::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let descriptor = pool
        .get_message_by_name("callstore.v1.CallRecord")
        .expect("CallRecord is described");
    let mut message = DynamicMessage::new(descriptor);
    message.transcode_from(record).expect("transcodes");
    serde_json::to_string(&message).expect("serializes")
}

/// Two good records (one written by hand in the documented format), a blank line, one that
/// fails validation and one that is not JSON.
fn native_file(directory: &TempDir) -> PathBuf {
    let by_hand = r#"{"sourceCallId":"cli-1","callee":"13800000001","dialTime":"2025-04-14T02:19:13Z","outcome":"CALL_OUTCOME_ANSWERED","durationMs":"61000","customFields":{"ext1":"88"},"turns":[{"sequence":1,"speaker":"SPEAKER_ROBOT","text":"您好"},{"sequence":2,"speaker":"SPEAKER_CUSTOMER","text":"你好"}]}"#;
    let transcoded = to_json_line(&CallRecord {
        source_call_id: "cli-2".to_owned(),
        callee: "13800000002".to_owned(),
        dial_time: Some(prost_types::Timestamp {
            seconds: 1_744_597_153,
            nanos: 0,
        }),
        turns: vec![Turn {
            sequence: 1,
            speaker: Speaker::Robot as i32,
            text: "您好".to_owned(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let bad_callee =
        r#"{"sourceCallId":"cli-4","callee":"not a number","dialTime":"2025-04-14T02:19:13Z"}"#;
    let broken = r#"{"sourceCallId": "cli-5", "callee":"#;
    directory.write(
        "calls.jsonl",
        &format!("{by_hand}\n{transcoded}\n\n{bad_callee}\n{broken}\n"),
    )
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

#[tokio::test]
async fn a_native_file_is_streamed_with_one_result_line_per_record() {
    let app = spawn_app().await;
    let directory = TempDir::new();
    let file = native_file(&directory);
    let file = path_text(&file);

    let output = ingest(&app.endpoint(), &[file], Stdio::null()).await;
    let stdout = stdout_of(&output);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let sources: Vec<&str> = stdout
        .lines()
        .map(|line| line.split('\t').next().unwrap_or_default())
        .collect();
    assert_eq!(
        sources,
        [1, 2, 4, 5].map(|line| format!("{file}:{line}")),
        "one line per record, in file order:\n{stdout}"
    );
    let lines = lines_by_source(&stdout);

    let first = &lines[&format!("{file}:1")];
    assert_eq!(first[1], "CREATED", "{first:?}");
    uuid::Uuid::parse_str(&first[2]).expect("the server id");
    assert_eq!(first[3], "cli-1");
    assert_eq!(first[4], "1");
    assert_eq!(lines[&format!("{file}:2")][1], "CREATED");

    let rejected = &lines[&format!("{file}:4")];
    assert_eq!(rejected[1], "REJECTED", "{rejected:?}");
    assert!(
        rejected[5].starts_with("INVALID_ARGUMENT: "),
        "{rejected:?}"
    );
    assert!(
        rejected[6..]
            .iter()
            .any(|violation| violation.starts_with("call.callee: must be a phone number")),
        "{rejected:?}"
    );
    let invalid = &lines[&format!("{file}:5")];
    assert_eq!(invalid[1], "INVALID", "{invalid:?}");
    assert!(invalid[5].contains("EOF"), "the JSON error: {invalid:?}");

    assert!(
        stderr.contains("4 record(s): 2 created, 0 updated, 0 unchanged, 1 rejected, 1 invalid"),
        "{stderr}"
    );

    let pool = app.pool().await;
    let stored: Vec<(String, Option<i64>, Option<String>, i32)> = sqlx::query_as(
        "SELECT source_call_id, duration_ms, custom_fields->>'ext1', turn_count FROM calls
         WHERE tenant_id = $1 ORDER BY source_call_id",
    )
    .bind(TENANT)
    .fetch_all(&pool)
    .await
    .expect("the stored calls");
    assert_eq!(
        stored,
        [
            ("cli-1".to_owned(), Some(61_000), Some("88".to_owned()), 2),
            ("cli-2".to_owned(), None, None, 1),
        ]
    );

    // The same file again: nothing changes, and the results say so, here as JSON.
    let again = ingest(&app.endpoint(), &["--output", "json", file], Stdio::null()).await;
    let stdout = stdout_of(&again);
    assert_eq!(again.status.code(), Some(1), "{stdout}");
    let results: HashMap<String, serde_json::Value> = stdout
        .lines()
        .map(|line| {
            let result: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            (
                result["source"].as_str().expect("source").to_owned(),
                result,
            )
        })
        .collect();
    assert_eq!(results.len(), 4, "{stdout}");
    for line in [1, 2] {
        let result = &results[&format!("{file}:{line}")];
        assert_eq!(result["outcome"], "UNCHANGED", "{result}");
        assert_eq!(result["version"], 1, "{result}");
        assert_eq!(result["source_id"], format!("cli-{line}"), "{result}");
    }
    let rejected = &results[&format!("{file}:4")];
    assert_eq!(rejected["outcome"], "REJECTED");
    assert_eq!(rejected["violations"][0]["field"], "call.callee");
    let invalid = &results[&format!("{file}:5")];
    assert_eq!(invalid["outcome"], "INVALID");
    assert_eq!(invalid["index"], serde_json::Value::Null);
    assert!(invalid["error"].as_str().expect("an error").contains("EOF"));

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE tenant_id = $1")
        .bind(TENANT)
        .fetch_one(&pool)
        .await
        .expect("counts");
    assert_eq!(count, 2);
}

#[tokio::test]
async fn a_vendor_payload_is_read_from_stdin() {
    let app = spawn_app().await;
    let fixture = std::fs::File::open(HANGUP_PUSH).expect("the fixture");
    let output = ingest(
        &app.endpoint(),
        &["--format", "hangup-push", "-"],
        Stdio::from(fixture),
    )
    .await;
    let stdout = stdout_of(&output);
    assert!(output.status.success(), "{stdout}\n{}", stderr_of(&output));
    let lines = lines_by_source(&stdout);
    let call = &lines["<stdin>#calls[0]"];
    assert_eq!(call[1], "CREATED", "{call:?}");
    assert_eq!(call[3], "db57f262-18d6-11f0-88c8-2f2b0aba51d7");
    assert_eq!(call[4], "1");
    assert!(
        lines.values().all(|columns| columns[1] == "CREATED"),
        "{stdout}"
    );

    let pool = app.pool().await;
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM calls WHERE tenant_id = $1 AND source_call_id = $2",
    )
    .bind(TENANT)
    .bind(&call[3])
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn a_malformed_vendor_payload_fails_its_file_on_stderr() {
    let app = spawn_app().await;
    let directory = TempDir::new();
    let file = directory.write("broken_push.json", "{not json");
    let file = path_text(&file);

    let output = ingest(
        &app.endpoint(),
        &["--format", "hangup-push", file],
        Stdio::null(),
    )
    .await;
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stdout_of(&output), "", "no records");
    assert!(
        stderr.contains(&format!("{file}: INVALID_ARGUMENT")),
        "{stderr}"
    );
    assert!(stderr.contains("hangup_push payload"), "{stderr}");
    assert!(stderr.contains("1 of 1 file(s) failed"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_server_fails_each_file() {
    // A port that nothing listens on any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let address = listener.local_addr().expect("an address");
    drop(listener);

    let output = ingest(
        &format!("http://{address}"),
        &["--format", "hangup-push", HANGUP_PUSH],
        Stdio::null(),
    )
    .await;
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{HANGUP_PUSH}: UNAVAILABLE")),
        "{stderr}"
    );
}
