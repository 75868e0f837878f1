use tonic::Code;

use callstore::proto::quality_service_client::QualityServiceClient;
use callstore::proto::{GetQualityRequest, ListRuleSetsRequest};

use crate::helpers::spawn_app;

#[tokio::test]
async fn rpcs_not_implemented_yet_answer_unimplemented() {
    let app = spawn_app().await;
    let channel = app.channel().await;

    let rule_sets = QualityServiceClient::new(channel.clone())
        .list_rule_sets(ListRuleSetsRequest::default())
        .await
        .expect_err("not implemented yet");
    let quality = QualityServiceClient::new(channel)
        .get_quality(GetQualityRequest::default())
        .await
        .expect_err("not implemented yet");

    for status in [rule_sets, quality] {
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
        assert!(
            status
                .message()
                .to_lowercase()
                .contains("not yet implemented"),
            "the message says so: {status:?}"
        );
    }

    app.shutdown().await.expect("clean shutdown");
}
