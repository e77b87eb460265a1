//! Malformed, unknown-version and out-of-range messages go to the dead-letter stream.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;

use crate::{wait_for_metric, Pipeline};

#[test]
fn bad_messages_are_dead_lettered_with_reason_and_counted() {
    let pipeline = Pipeline::start("dead-letters");
    let sink = pipeline.spawn_sink(&["--flush-interval", "200ms"]);
    let report = pipeline.publish(&[
        "--kind",
        "wave",
        "--count",
        "3000",
        "--malformed-fraction",
        "0.01",
    ]);
    assert_eq!(report["malformed"], 30);
    assert_eq!(
        pipeline.wait_for_rows("wave_observations", 3000, Duration::from_secs(60)),
        3000
    );

    for reason in [
        "malformed_json",
        "unsupported_schema_version",
        "out_of_range",
    ] {
        let counted = wait_for_metric(
            &sink,
            "nomadwave_dead_letters_total",
            &format!("reason=\"{reason}\""),
            10.0,
        );
        assert_eq!(counted, 10.0, "dead letters counted for {reason}");
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reasons = runtime.block_on(async {
        let client = async_nats::connect(pipeline.nats.url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let stream = jetstream.get_stream("DEADLETTER").await.unwrap();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
            .await
            .unwrap();
        let mut messages = consumer.fetch().max_messages(100).messages().await.unwrap();
        let mut reasons: HashMap<String, u32> = HashMap::new();
        while let Some(message) = messages.next().await {
            let message = message.unwrap();
            let headers = message.headers.clone().expect("dead letters carry headers");
            let reason = headers
                .get(schema::dead_letter::REASON)
                .unwrap()
                .to_string();
            assert_eq!(
                headers
                    .get(schema::dead_letter::SOURCE_STREAM)
                    .unwrap()
                    .as_str(),
                "WAVE"
            );
            assert!(headers.get(schema::dead_letter::SOURCE_SEQUENCE).is_some());
            assert!(!headers
                .get(schema::dead_letter::DETAIL)
                .unwrap()
                .as_str()
                .is_empty());
            assert!(!message.payload.is_empty(), "the original payload is kept");
            *reasons.entry(reason).or_default() += 1;
        }
        reasons
    });
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons.values().all(|count| *count == 10), "{reasons:?}");
    drop(sink);
}
