//! Bad configuration: one line naming the setting, a non-zero exit, no panic.

use test_support::free_port;

use crate::Pipeline;

fn check(pipeline: &Pipeline, args: &[&str], code: i32, names: &str) {
    let (exit, _stdout, stderr) = pipeline.run_binary("sink-clickhouse", args);
    assert_eq!(exit, code, "exit code for {args:?}; stderr: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line for {args:?}: {stderr}");
    assert!(
        lines[0].contains(names),
        "{args:?}: '{}' should name {names}",
        lines[0]
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_configuration_gives_one_line_naming_the_setting() {
    let pipeline = Pipeline::start("bad-config");
    let unused = format!("nats://127.0.0.1:{}", free_port());
    check(
        &pipeline,
        &["run", "--nats-url", "localhost:4222"],
        64,
        "--nats-url/NATS_URL",
    );
    check(
        &pipeline,
        &["run", "--nats-url", &unused],
        1,
        "--nats-url/NATS_URL",
    );
    check(
        &pipeline,
        &["run", "--clickhouse-url", "ftp://x"],
        64,
        "--clickhouse-url/CLICKHOUSE_URL",
    );
    check(
        &pipeline,
        &[
            "run",
            "--clickhouse-url",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
        1,
        "CLICKHOUSE_URL",
    );
    check(
        &pipeline,
        &["run", "--nats-user", "ingest"],
        64,
        "--nats-password/NATS_PASSWORD",
    );
    check(
        &pipeline,
        &["run", "--ack-wait", "1s"],
        64,
        "--ack-wait/SINK_ACK_WAIT",
    );
    check(
        &pipeline,
        &["migrate", "--clickhouse-database", "bad-name"],
        64,
        "--clickhouse-database/CLICKHOUSE_DATABASE",
    );
}
