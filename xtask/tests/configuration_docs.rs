//! `docs/configuration.md` matches the built binaries' `--help`: the real `cargo xtask docs
//! --check` on the real binaries, so CI fails when a flag changes without the page.
//!
//! Needs the workspace binaries built (`cargo build --workspace --bins`, which `cargo xtask test`
//! does); a missing binary fails the test, it is never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use test_support::{target_bin, workspace_root, ScratchDir};

/// The binaries the page documents.
const DOCUMENTED_BINARIES: [&str; 5] = [
    "sink-clickhouse",
    "ingest-wave",
    "ingest-wx",
    "ingest-carbon",
    "edge-sim",
];

/// Values set in xtask's environment that must not reach the page.
const LEAK_CANARIES: [(&str, &str); 3] = [
    (
        "NATS_URL",
        "nats://canary-user:canary-secret@leak.invalid:4222",
    ),
    ("CLICKHOUSE_PASSWORD", "canary-clickhouse-password"),
    ("POLL_USER_AGENT", "canary-user-agent"),
];

/// The folder holding the built binaries; panics (naming it) when one is missing.
fn bin_dir() -> PathBuf {
    let mut folder = None;
    for binary in DOCUMENTED_BINARIES {
        let path = target_bin(binary);
        assert!(
            path.is_file(),
            "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`)",
            path.display()
        );
        folder = path.parent().map(Path::to_path_buf);
    }
    folder.expect("DOCUMENTED_BINARIES is not empty")
}

fn docs_check(page: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .args(["docs", "--check", "--bin-dir"])
        .arg(bin_dir())
        .arg("--page")
        .arg(page)
        .envs(LEAK_CANARIES);
    command.output().expect("xtask runs")
}

fn describe(output: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn configuration_page_matches_the_binaries_help() {
    let page = workspace_root().join("docs").join("configuration.md");
    let output = docs_check(&page);
    assert!(
        output.status.success(),
        "docs/configuration.md differs from the binaries' --help; run `cargo xtask docs`\n{}",
        describe(&output)
    );
    let text = std::fs::read_to_string(&page).expect("the page is readable");
    for (variable, value) in LEAK_CANARIES {
        assert!(
            !text.contains(value),
            "the value of {variable} leaked into the page"
        );
    }
    assert!(
        !text.contains("canary"),
        "an environment value leaked into the page"
    );
}

#[test]
fn a_drifted_page_fails_naming_the_command() {
    let scratch = ScratchDir::create("configuration-docs");
    let original = std::fs::read_to_string(workspace_root().join("docs").join("configuration.md"))
        .expect("the page is readable");
    let row = "| `--rate <RATE>` |  | `10` |";
    assert!(
        original.contains(row),
        "the `edge-sim mqtt` --rate row this test edits is gone; pick another row"
    );
    let drifted = scratch.path().join("configuration.md");
    std::fs::write(
        &drifted,
        original.replacen(row, "| `--rate <RATE>` |  | `11` |", 1),
    )
    .expect("the scratch page is writable");

    let output = docs_check(&drifted);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the flags of `edge-sim mqtt` drifted"),
        "{}",
        describe(&output)
    );
    assert!(
        stderr.contains("run `cargo xtask docs`"),
        "{}",
        describe(&output)
    );
    assert!(
        !stderr.contains("sink-clickhouse run"),
        "only the drifted command is named\n{}",
        describe(&output)
    );
}
