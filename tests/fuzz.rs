//! Property-based fuzzing of everything that decodes untrusted input: the vendor-format parsers,
//! feed cursors, page tokens and API keys. Whatever the input, they answer (an error is fine)
//! and never panic. Random bytes and random JSON reach the parsers' first checks; mutations of
//! the real sample payloads (one value replaced by random JSON, deep inside) reach the rest.
//!
//! `PROPTEST_CASES=20000 cargo test --test fuzz` runs a longer campaign.

use proptest::prelude::*;
use serde_json::Value;

use callstore::api::page::{Fingerprint, decode_token};
use callstore::auth::keys::PresentedKey;
use callstore::domain::TenantId;
use callstore::feed::cursor::{Cursor, Position};
use callstore::ingest::formats::{ParseContext, parser_for};
use callstore::proto::PayloadFormat;

const FORMATS: [(PayloadFormat, &[u8]); 6] = [
    (
        PayloadFormat::TaskApiRecord,
        include_bytes!("fixtures/task_api_record_info.json"),
    ),
    (
        PayloadFormat::TaskApiCallList,
        include_bytes!("fixtures/task_api_done_task_phones.json"),
    ),
    (
        PayloadFormat::TaskApiTaskNumbers,
        include_bytes!("fixtures/task_api_task_numbers.json"),
    ),
    (
        PayloadFormat::HangupPush,
        include_bytes!("fixtures/hangup_push.json"),
    ),
    (
        PayloadFormat::HuaweiResult,
        include_bytes!("fixtures/huawei_campaign_results.json"),
    ),
    (
        PayloadFormat::HuaweiQc,
        include_bytes!("fixtures/huawei_qc_result.json"),
    ),
];

fn context() -> ParseContext {
    ParseContext::new("fuzz", callstore::ingest::formats::DEFAULT_TIME_ZONE)
}

/// Any JSON value, a few levels deep, with the awkward cases parsers meet: huge and negative
/// numbers, floats where integers are expected, empty and non-ASCII strings, nulls.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |number| number.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(Value::String("2025-04-14 10:19:13".to_owned())),
        Just(Value::String("##a#@b#@1#@c##".to_owned())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Replaces the value at the `pick`-th node (in document order) of `value` with `with`.
fn replace_nth(value: &mut Value, pick: &mut usize, with: &Value) -> bool {
    if *pick == 0 {
        *value = with.clone();
        return true;
    }
    *pick -= 1;
    match value {
        Value::Array(items) => items.iter_mut().any(|item| replace_nth(item, pick, with)),
        Value::Object(object) => object
            .values_mut()
            .any(|item| replace_nth(item, pick, with)),
        _ => false,
    }
}

proptest! {
    #[test]
    fn parsers_survive_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for (format, _) in FORMATS {
            let parse = parser_for(format).expect("a parser");
            let _ = parse(&bytes, &context());
        }
    }

    #[test]
    fn parsers_survive_random_json(value in json()) {
        let bytes = serde_json::to_vec(&value).expect("JSON");
        for (format, _) in FORMATS {
            let parse = parser_for(format).expect("a parser");
            let _ = parse(&bytes, &context());
        }
    }

    #[test]
    fn parsers_survive_any_value_of_a_real_payload_replaced(
        format_index in 0..FORMATS.len(),
        pick in 0_usize..400,
        with in json(),
    ) {
        let (format, sample) = FORMATS[format_index];
        let mut value: Value = serde_json::from_slice(sample).expect("the sample is JSON");
        let mut remaining = pick;
        replace_nth(&mut value, &mut remaining, &with);
        let bytes = serde_json::to_vec(&value).expect("JSON");
        let parse = parser_for(format).expect("a parser");
        let _ = parse(&bytes, &context());
    }

    #[test]
    fn cursors_decode_or_refuse(text in ".{0,80}", flip in 0_usize..64, bit in 0_u8..8) {
        let tenant = TenantId::parse("acme").expect("a tenant");
        let _ = Cursor::decode(&text, &tenant);
        // A valid cursor with one bit flipped: refused (checksum) or, at worst, decoded.
        let cursor = Cursor::at(Position { tx: 7_000_123, id: 42 }).encode(&tenant);
        let mut bytes = cursor.into_bytes();
        let index = flip % bytes.len();
        bytes[index] ^= 1 << bit;
        if let Ok(mutated) = String::from_utf8(bytes) {
            let _ = Cursor::decode(&mutated, &tenant);
        }
    }

    #[test]
    fn page_tokens_decode_or_refuse(text in ".{0,200}") {
        let tenant = TenantId::parse("acme").expect("a tenant");
        let fingerprint = Fingerprint::of(&tenant, "ListCalls", &());
        let _ = decode_token::<(i64, String)>(&text, fingerprint, "page_token");
    }

    #[test]
    fn api_keys_parse_or_refuse(text in ".{0,120}", dotted in "csk1\\.[A-Za-z0-9_\\-]{0,12}\\.[0-9a-f]{0,18}\\.[A-Za-z0-9_\\-]{0,45}") {
        let _ = PresentedKey::parse(&text);
        let _ = PresentedKey::parse(&dotted);
    }
}
