//! Shared helpers of the deployment-file tests; the tests themselves live in `tests/`.
//!
//! No Docker engine and no Nomad agent are available where the tests run, so the tests check what can be checked
//! without them:
//! - `tests/compose.rs`: `compose.yaml` is valid for `docker-compose config`; its invariants (health checks,
//!   dependency conditions, pinned images, our services built from `Dockerfile`); `Dockerfile` ships every binary
//!   compose runs and its dependency skeleton resolves with the lockfile; `deploy/mosquitto/mosquitto.conf` keeps
//!   persistent sessions and their queues, is the file compose mounts, and is accepted by a real mosquitto;
//! - `tests/jobs.rs`: the Nomad job specs in `jobs/` parse as HCL2 and keep their invariants (canary updates,
//!   checks, resources, pinned images, Vault templates, the bridge's constraints, the partitioned sink's count, the
//!   replay's dispatch meta);
//! - `tests/ops.rs`: the Grafana dashboard and the Prometheus alert rules in `ops/` parse, the rules pass
//!   `promtool check rules` and the outage scenarios of `ops/prometheus/tests.yml` (`promtool test rules`), and every
//!   metric they use is served by a running binary.
//!
//! What both compose.yaml and the jobs share is here: their contract with the binaries. Every flag and environment
//! variable a deployment file gives a binary must be one the binary's `--help` lists, and the whole command line
//! must parse ([`command_contract_problems`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

/// The binaries the image ships in `/usr/local/bin`; a command that starts with one of them is ours.
pub const OUR_BINARIES: [&str; 5] = [
    "sink-clickhouse",
    "ingest-wave",
    "ingest-wx",
    "ingest-carbon",
    "edge-sim",
];

/// Variables our services may set although no `--help` names them, because the Rust runtime reads them, not clap.
///
/// `RUST_LOG` is not here: it is the `--log-filter` flag's variable and so appears in `--help`.
pub const RUNTIME_VARIABLES: [(&str, &str); 2] = [
    (
        "RUST_BACKTRACE",
        "read by the standard library when a thread panics",
    ),
    (
        "MALLOC_ARENA_MAX",
        "read by glibc's allocator: fewer per-thread arenas keep the sink's peak RSS flat",
    ),
];

// --- the contract check: a command line and its variables against --help -----------------------------------------

/// Everything in one command of ours that the binary would not accept, one line per problem.
///
/// `executable` is the built `binary`; the command is `binary subcommand subcommand_flags…` with `environment`
/// (`None` for a variable passed through without a value).
/// - the subcommand exists (`BINARY SUBCOMMAND --help` succeeds);
/// - every `--flag` of the command is listed by the subcommand's `--help`;
/// - every variable appears as `[env: NAME=` (or `[env: NAME]` for hidden values) in the binary's or the
///   subcommand's `--help`, unless it is one of [`RUNTIME_VARIABLES`];
/// - the whole command line parses, with each variable passed as its flag: this catches invalid values and a setting
///   given both as a flag and as a variable (clap refuses the flag twice; the deployment would silently let the flag
///   win).
pub fn command_contract_problems(
    executable: &Path,
    binary: &str,
    subcommand: &str,
    subcommand_flags: &[String],
    environment: &BTreeMap<String, Option<String>>,
) -> Vec<String> {
    let binary_help = match HelpText::of(executable, &[]) {
        Ok(help) => help,
        Err(problem) => return vec![problem],
    };
    let subcommand = subcommand.to_string();
    let subcommand_help = match HelpText::of(executable, std::slice::from_ref(&subcommand)) {
        Ok(help) => help,
        Err(problem) => return vec![problem],
    };

    let mut problems = Vec::new();
    for word in subcommand_flags {
        let Some(flag) = flag_of_word(word) else {
            continue;
        };
        if !subcommand_help.flags.contains(flag) {
            problems.push(format!("`{flag}` is not a flag of `{binary} {subcommand}`"));
        }
    }

    let mut binary_arguments = Vec::new();
    let mut subcommand_arguments = Vec::new();
    for (name, value) in environment {
        if RUNTIME_VARIABLES.iter().any(|(allowed, _)| allowed == name) {
            continue;
        }
        let (reader, arguments) = match (
            subcommand_help.variables.get(name),
            binary_help.variables.get(name),
        ) {
            (Some(reader), _) => (reader, &mut subcommand_arguments),
            (None, Some(reader)) => (reader, &mut binary_arguments),
            (None, None) => {
                problems.push(format!(
                    "`{name}` is read by neither `{binary} --help` nor `{binary} {subcommand} --help` (no `[env: {name}=`)"
                ));
                continue;
            }
        };
        if let (Some(flag), Some(value)) = (reader, value) {
            arguments.extend(flag.arguments_for(value));
        }
    }

    let mut argv = binary_arguments;
    argv.push(subcommand.clone());
    argv.extend(subcommand_flags.iter().cloned());
    argv.extend(subcommand_arguments);
    argv.push("--help".to_string());
    let output = run_command(Command::new(executable).args(&argv).env_clear());
    if !output.status.success() {
        problems.push(format!(
            "`{binary} {}` (the command with its variables as flags) does not parse: {}",
            argv.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    problems
}

/// What a `--help` output says about flags and variables.
pub struct HelpText {
    /// Every flag listed, long and short: `--nats-url`, `-h`.
    pub flags: BTreeSet<String>,
    /// Every `[env: NAME…]`, with the flag it belongs to (`None` for a positional argument).
    pub variables: BTreeMap<String, Option<HelpFlag>>,
    /// Every `[default: VALUE]` of a flag, by the flag's name.
    pub defaults: BTreeMap<String, String>,
}

/// A flag as `--help` lists it.
#[derive(Clone)]
pub struct HelpFlag {
    /// The long name (`--nats-url`), else the short one.
    pub name: String,
    /// Whether it takes a value (`--nats-url <NATS_URL>`), unlike a switch.
    pub takes_value: bool,
}

impl HelpFlag {
    /// The words that pass `value` through this flag, as the variable would.
    pub fn arguments_for(&self, value: &str) -> Vec<String> {
        if self.takes_value {
            return vec![format!("{}={value}", self.name)];
        }
        match value.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => vec![self.name.clone()],
            _ => Vec::new(),
        }
    }
}

impl HelpText {
    /// Runs `EXECUTABLE ARGS… --help` with an empty environment, so no variable of the test's own shows up as a value.
    pub fn of(executable: &Path, args: &[String]) -> Result<HelpText, String> {
        let output = run_command(
            Command::new(executable)
                .args(args)
                .arg("--help")
                .env_clear(),
        );
        let name = executable
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let shown = std::iter::once(name.as_str())
            .chain(args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        if !output.status.success() {
            return Err(format!(
                "`{shown} --help` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(HelpText::parse(&String::from_utf8_lossy(&output.stdout)))
    }

    /// Reads clap's help layout: an argument starts on a line beginning with `-` (a flag) or `<` (a positional), and
    /// its `[env: …]` follows on that line or on the description lines after it.
    pub fn parse(text: &str) -> HelpText {
        let mut flags = BTreeSet::new();
        let mut variables = BTreeMap::new();
        let mut defaults = BTreeMap::new();
        let mut current: Option<HelpFlag> = None;
        for line in text.lines() {
            let trimmed = line.trim_start();
            if is_flag_word(trimmed.split_whitespace().next().unwrap_or_default()) {
                let mut names = Vec::new();
                let mut takes_value = false;
                for word in trimmed.split_whitespace() {
                    if is_flag_word(word) {
                        names.push(word.trim_end_matches(',').to_string());
                    } else if word.starts_with('<') || word.starts_with("[<") {
                        takes_value = true;
                    } else {
                        break;
                    }
                }
                flags.extend(names.iter().cloned());
                let name = names
                    .iter()
                    .find(|name| name.starts_with("--"))
                    .or_else(|| names.first())
                    .cloned()
                    .unwrap_or_default();
                current = Some(HelpFlag { name, takes_value });
            } else if trimmed.starts_with('<') {
                current = None;
            }
            let mut rest = line;
            while let Some(start) = rest.find("[env: ") {
                rest = &rest[start + "[env: ".len()..];
                let variable: String = rest
                    .chars()
                    .take_while(|character| character.is_ascii_alphanumeric() || *character == '_')
                    .collect();
                variables.insert(variable, current.clone());
            }
            if let (Some(flag), Some(start)) = (&current, line.find("[default: ")) {
                let value = &line[start + "[default: ".len()..];
                let value = value.split_once(']').map_or(value, |(value, _)| value);
                defaults.insert(flag.name.clone(), value.to_string());
            }
        }
        HelpText {
            flags,
            variables,
            defaults,
        }
    }
}

/// Whether a word of `--help` names a flag (`-h,`, `--nats-url`), unlike a possible value's bullet (`- text:`).
pub fn is_flag_word(word: &str) -> bool {
    let name = word.trim_start_matches('-');
    (1..=2).contains(&(word.len() - name.len()))
        && name.starts_with(|character: char| character.is_ascii_alphanumeric())
}

/// The flag a command word sets: `--sites` of `--sites` or `--sites=a,b`; `None` for a value.
pub fn flag_of_word(word: &str) -> Option<&str> {
    if !word.starts_with('-') || word == "-" || word.parse::<f64>().is_ok() {
        return None;
    }
    Some(word.split_once('=').map_or(word, |(flag, _)| flag))
}

/// The value given to `flag` in a command, as `--flag VALUE` or `--flag=VALUE`.
pub fn flag_value(words: &[String], flag: &str) -> Option<String> {
    words.iter().enumerate().find_map(|(word_idx, word)| {
        if word == flag {
            return words.get(word_idx + 1).cloned();
        }
        word.strip_prefix(flag)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_string)
    })
}

// --- helpers -------------------------------------------------------------------------------------------------------

/// Runs `command` to completion, failing the test when it cannot be started.
pub fn run_command(command: &mut Command) -> Output {
    match command.output() {
        Ok(output) => output,
        Err(err) => panic!("cannot run {command:?}: {err}"),
    }
}

/// Fails the test with every problem, one per line, when there is any.
pub fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s)\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

/// Fails the test unless some problem contains `needle`.
pub fn assert_mentions(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|problem| problem.contains(needle)),
        "expected a problem mentioning {needle:?}, got {problems:#?}"
    );
}
