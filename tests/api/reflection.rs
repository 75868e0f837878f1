use std::collections::BTreeSet;

use prost::Message as _;
use prost_types::FileDescriptorProto;

use crate::helpers::{TestApp, spawn_app};

const CALLSTORE_SERVICES: [&str; 4] = [
    "callstore.v1.IngestService",
    "callstore.v1.QualityService",
    "callstore.v1.QueryService",
    "callstore.v1.WatchService",
];

mod v1 {
    pub use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    pub use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    pub use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    pub use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
}

mod v1alpha {
    pub use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    pub use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    pub use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    pub use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, ServerReflectionResponse};
}

async fn ask_v1(app: &TestApp, request: v1::MessageRequest) -> v1::MessageResponse {
    let mut client = v1::ServerReflectionClient::new(app.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection v1 answers")
        .into_inner();
    let response: v1::ServerReflectionResponse = responses
        .message()
        .await
        .expect("reflection v1 streams")
        .expect("one response");
    response.message_response.expect("a message response")
}

async fn ask_v1alpha(app: &TestApp, request: v1alpha::MessageRequest) -> v1alpha::MessageResponse {
    let mut client = v1alpha::ServerReflectionClient::new(app.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection v1alpha answers")
        .into_inner();
    let response: v1alpha::ServerReflectionResponse = responses
        .message()
        .await
        .expect("reflection v1alpha streams")
        .expect("one response");
    response.message_response.expect("a message response")
}

fn expected_services() -> BTreeSet<String> {
    CALLSTORE_SERVICES
        .into_iter()
        .chain([
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ])
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_every_service() {
    let app = spawn_app().await;

    let v1::MessageResponse::ListServicesResponse(listed) =
        ask_v1(&app, v1::MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a list of services");
    };
    let v1_names: BTreeSet<String> = listed
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert_eq!(v1_names, expected_services());

    let v1alpha::MessageResponse::ListServicesResponse(listed) =
        ask_v1alpha(&app, v1alpha::MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a list of services");
    };
    let v1alpha_names: BTreeSet<String> = listed
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert_eq!(v1alpha_names, expected_services());

    app.shutdown().await.expect("clean shutdown");
}

/// grpcurl describes a symbol by fetching the file that defines it and every file it imports.
#[tokio::test]
async fn reflection_describes_callstore_types_and_error_details() {
    let app = spawn_app().await;

    for symbol in [
        "callstore.v1.CallRecord",
        "callstore.v1.QueryService",
        "google.rpc.BadRequest",
        "grpc.health.v1.Health",
    ] {
        let response = ask_v1alpha(
            &app,
            v1alpha::MessageRequest::FileContainingSymbol(symbol.to_owned()),
        )
        .await;
        let v1alpha::MessageResponse::FileDescriptorResponse(files) = response else {
            panic!("expected the file of {symbol}, got {response:?}");
        };
        let files: Vec<FileDescriptorProto> = files
            .file_descriptor_proto
            .iter()
            .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()).expect("a file descriptor"))
            .collect();
        let (package, name) = symbol.rsplit_once('.').expect("qualified symbol");
        let defines = files.iter().any(|file| {
            file.package() == package
                && (file
                    .message_type
                    .iter()
                    .any(|message| message.name() == name)
                    || file.service.iter().any(|service| service.name() == name))
        });
        assert!(defines, "no returned file defines {symbol}");
    }

    // Every import of the call contract can be fetched too (struct, timestamp, …).
    let call_file = ask_v1alpha(
        &app,
        v1alpha::MessageRequest::FileByFilename("callstore/v1/call.proto".to_owned()),
    )
    .await;
    let v1alpha::MessageResponse::FileDescriptorResponse(files) = call_file else {
        panic!("expected call.proto");
    };
    let call = FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .expect("a file descriptor");
    for dependency in call.dependency {
        let response = ask_v1alpha(
            &app,
            v1alpha::MessageRequest::FileByFilename(dependency.clone()),
        )
        .await;
        assert!(
            matches!(
                response,
                v1alpha::MessageResponse::FileDescriptorResponse(_)
            ),
            "{dependency} is not served: {response:?}"
        );
    }

    app.shutdown().await.expect("clean shutdown");
}
