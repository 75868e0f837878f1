use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{TestApp, loopback_port_0, spawn_app_with};

const HANGUP_PUSH: &[u8] = include_bytes!("../fixtures/hangup_push.json");
const HUAWEI_RESULTS: &[u8] = include_bytes!("../fixtures/huawei_campaign_results.json");
const HUAWEI_QC: &[u8] = include_bytes!("../fixtures/huawei_qc_result.json");

async fn spawn_with_webhooks() -> (TestApp, SocketAddr) {
    let app = spawn_app_with(|config| config.webhook_listen_addr = Some(loopback_port_0())).await;
    let webhook = app.webhook.expect("a webhook listener");
    (app, webhook)
}

/// A plain HTTP/1.1 POST, as a vendor sends it; returns the status code and the body.
pub(crate) async fn post(address: SocketAddr, path: &str, body: &[u8]) -> (u16, String) {
    let (status, response) = post_with_head(address, path, body).await;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Like [`post`], returning the whole response (head and body).
pub(crate) async fn post_with_head(address: SocketAddr, path: &str, body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: callstore\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("writes");
    stream.write_all(body).await.expect("writes");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("reads");
    let response = String::from_utf8(response).expect("UTF-8");
    let (head, _) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, response)
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    let pool = app.pool().await;
    sqlx::query_scalar(sql)
        .fetch_one(&pool)
        .await
        .expect("counts")
}

#[tokio::test]
async fn a_hangup_push_webhook_answers_success_once_stored_and_retries_store_nothing_new() {
    let (app, webhook) = spawn_with_webhooks().await;
    for _ in 0..3 {
        let (status, body) = post(webhook, "/hooks/acme/hangup-push", HANGUP_PUSH).await;
        assert_eq!((status, body.as_str()), (200, "SUCCESS"));
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM calls WHERE tenant_id = 'acme'").await,
        1
    );
    assert_eq!(count(&app, "SELECT count(*) FROM feed_events").await, 1);
}

#[tokio::test]
async fn a_huawei_webhook_answers_the_huawei_success_body() {
    let (app, webhook) = spawn_with_webhooks().await;
    let (status, body) = post(webhook, "/hooks/acme/huawei-result", HUAWEI_RESULTS).await;
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"retCode":"0","retMsg":"success"}"#);
    assert_eq!(count(&app, "SELECT count(*) FROM calls").await, 1);
}

#[tokio::test]
async fn webhooks_answer_errors_so_the_vendor_sends_again() {
    let (app, webhook) = spawn_with_webhooks().await;

    let (status, body) = post(webhook, "/hooks/acme/hangup-push", b"{not json").await;
    assert_eq!(status, 400);
    assert_ne!(body, "SUCCESS");
    assert!(body.contains("hangup_push payload: $"), "{body}");

    let (status, _) = post(webhook, "/hooks/acme/fax", HANGUP_PUSH).await;
    assert_eq!(status, 404);

    let (status, _) = post(webhook, "/hooks/-bad/hangup-push", HANGUP_PUSH).await;
    assert_eq!(status, 400);

    // A QC result for a call not stored yet: not acknowledged, so it comes again later.
    let (status, body) = post(webhook, "/hooks/acme/huawei-qc", HUAWEI_QC).await;
    assert_eq!(status, 422);
    let answer: serde_json::Value = serde_json::from_str(&body).expect("a JSON answer");
    assert_eq!(answer["retCode"], "1");

    assert_eq!(count(&app, "SELECT count(*) FROM calls").await, 0);
}
