//! The invariants of ARCHITECTURE.md that a test can check by reading the workspace: which
//! crates talk to ClickHouse, which install signal handlers, that `schema` does no I/O, and
//! that every module the sink and the runtime declare is on the codemap.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The workspace members, from the root manifest's `members = [...]` line.
fn members() -> Vec<String> {
    let manifest = read(&workspace().join("Cargo.toml"));
    let line = manifest
        .lines()
        .find(|line| line.starts_with("members"))
        .unwrap_or_else(|| panic!("no members line in Cargo.toml"));
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Names of the `[dependencies]` of `crate_dir` (not dev- or build-dependencies).
fn dependencies(crate_dir: &str) -> Vec<String> {
    let manifest = read(&workspace().join(crate_dir).join("Cargo.toml"));
    let mut in_dependencies = false;
    let mut names = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies {
            if let Some((name, _)) = line.split_once('=') {
                // `name = "1"`, `name.workspace = true`, `name = { path = … }`
                let name = name.trim().split('.').next().unwrap_or_default();
                names.push(name.trim_matches('"').to_owned());
            }
        }
    }
    names
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn only_the_sink_and_the_bench_talk_to_clickhouse() {
    let users: Vec<String> = members()
        .into_iter()
        .filter(|member| dependencies(member).iter().any(|name| name == "clickhouse"))
        .collect();
    assert_eq!(
        users,
        ["sink-clickhouse", "bench"],
        "crates depending on `clickhouse`"
    );
}

#[test]
fn only_runtime_xtask_and_bench_install_signal_handlers() {
    let mut offenders = Vec::new();
    for member in members() {
        let mut files = Vec::new();
        rust_files(&workspace().join(&member).join("src"), &mut files);
        for file in files {
            let text = read(&file);
            let installs = ["tokio::signal", "signal_hook", "ctrlc::"]
                .iter()
                .any(|needle| text.contains(needle));
            let allowed =
                file.ends_with("runtime/src/shutdown.rs") || member == "xtask" || member == "bench";
            if installs && !allowed {
                offenders.push(file.display().to_string());
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "signal handlers outside runtime::shutdown (and the dev tools): {offenders:?}"
    );
}

#[test]
fn schema_does_no_io() {
    let io: Vec<String> = dependencies("schema")
        .into_iter()
        .filter(|name| {
            ["tokio", "async-nats", "reqwest", "clickhouse", "rumqttc"].contains(&name.as_str())
        })
        .collect();
    assert!(io.is_empty(), "schema depends on I/O crates: {io:?}");
}

#[test]
fn every_sink_and_runtime_module_is_on_the_codemap() {
    let architecture = read(&workspace().join("ARCHITECTURE.md"));
    for crate_dir in ["sink-clickhouse", "runtime"] {
        let lib = read(&workspace().join(crate_dir).join("src/lib.rs"));
        for line in lib.lines() {
            let Some(module) = line
                .strip_prefix("pub mod ")
                .and_then(|rest| rest.strip_suffix(';'))
            else {
                continue;
            };
            assert!(
                architecture.contains(&format!("`{module}`")),
                "{crate_dir}::{module} is not on ARCHITECTURE.md's codemap"
            );
            assert!(
                lib.contains(&format!("[`{module}`]")),
                "{crate_dir}/src/lib.rs does not list its module {module} in its layout comment"
            );
        }
    }
}
