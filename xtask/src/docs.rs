//! `cargo xtask docs`: `docs/configuration.md`, generated from the binaries' own `--help`.
//!
//! The flags' doc comments, `env` names and defaults live in each service's `config.rs`; this
//! runs `<binary> <subcommand> --help` on the built binaries and turns clap's long help into one
//! markdown table per long-running command, so the page cannot drift from the code.
//! `--check` renders the same page in memory and fails, naming the commands whose flags changed,
//! when the checked-in file differs; the `configuration_docs` test runs it against the real
//! binaries, so CI fails on drift.
//!
//! The binaries run with an empty environment (`PATH` only): clap prints `[env: NAME=value]` with
//! the variable's current value unless the flag hides it, and no value of the machine that
//! generates the page may end up in it. The page keeps variable names only, never a value.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context;

use crate::current_servers;
use crate::shell;

/// The documented commands: every long-running command of every service binary, plus `migrate`.
const DOCUMENTED_COMMANDS: [(&str, &str); 10] = [
    ("sink-clickhouse", "run"),
    ("sink-clickhouse", "replay"),
    ("sink-clickhouse", "migrate"),
    ("ingest-wave", "run"),
    ("ingest-wave", "bridge"),
    ("ingest-wx", "run"),
    ("ingest-carbon", "run"),
    ("edge-sim", "publish"),
    ("edge-sim", "mqtt"),
    ("edge-sim", "http"),
];

/// Subcommands deliberately left out: one-shot tools over saved files, and clap's own `help`.
/// A subcommand in neither list fails the run, so a new command cannot go undocumented.
const UNDOCUMENTED_SUBCOMMANDS: [&str; 2] = ["parse", "help"];

/// The page, relative to the workspace root.
const CONFIGURATION_PAGE: &str = "docs/configuration.md";

/// Options of `cargo xtask docs`.
#[derive(Debug, clap::Args)]
pub struct DocsArgs {
    /// Render the page in memory and fail (exit 1) when the file differs, instead of writing it.
    #[arg(long)]
    check: bool,
    /// Folder holding the built binaries; when given, nothing is built. Default: build them, then
    /// use `target/debug` (or `$CARGO_TARGET_DIR/debug`).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// The page to write or check [default: docs/configuration.md in the workspace].
    #[arg(long, value_name = "FILE")]
    page: Option<PathBuf>,
}

/// Writes or checks the configuration page.
///
/// # Errors
///
/// Fails when a binary is missing or its `--help` cannot be run or parsed, when the page cannot
/// be read or written, and (with `--check`) when the page differs from the binaries.
pub fn run(args: &DocsArgs) -> anyhow::Result<ExitCode> {
    let workspace = current_servers::workspace_root()?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            build_binaries()?;
            default_bin_dir(&workspace)
        }
    };
    let page_path = args
        .page
        .clone()
        .unwrap_or_else(|| workspace.join(CONFIGURATION_PAGE));
    let page = render_page(&collect_sections(&bin_dir)?);
    if args.check {
        let on_disk = std::fs::read_to_string(&page_path)
            .with_context(|| format!("cannot read {}", page_path.display()))?;
        let drift = describe_drift(&page, &on_disk);
        if !drift.is_empty() {
            anyhow::bail!(
                "{} is out of date: {}; run `cargo xtask docs` and commit the result",
                page_path.display(),
                drift.join(", ")
            );
        }
        outln!("docs: {} matches the binaries' --help", page_path.display());
    } else {
        std::fs::write(&page_path, &page)
            .with_context(|| format!("cannot write {}", page_path.display()))?;
        outln!("docs: wrote {}", page_path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the documented binaries, so that the page describes the code as it is.
fn build_binaries() -> anyhow::Result<()> {
    let mut command = shell::cargo();
    command.args(["build", "--bins"]);
    for binary in documented_binaries() {
        command.args(["--package", binary]);
    }
    shell::run_checked(&mut command).context("building the documented binaries failed")
}

/// Where `cargo build` puts debug binaries: `$CARGO_TARGET_DIR/debug` or `<workspace>/target/debug`.
fn default_bin_dir(workspace: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    workspace.join(target).join("debug")
}

/// The binaries, each once, in the order of [`DOCUMENTED_COMMANDS`].
fn documented_binaries() -> Vec<&'static str> {
    let mut binaries: Vec<&'static str> = Vec::new();
    for (binary, _) in DOCUMENTED_COMMANDS {
        if !binaries.contains(&binary) {
            binaries.push(binary);
        }
    }
    binaries
}

/// One `## ` section of the page: a command, or the options every binary takes before it.
#[derive(Debug, Clone, PartialEq)]
struct Section {
    /// The heading without `## `, e.g. `` `sink-clickhouse run` ``.
    title: String,
    /// What the command does, from the first lines of its help.
    about: String,
    flags: Vec<Flag>,
}

/// One flag as clap's help describes it.
#[derive(Debug, Clone, PartialEq)]
struct Flag {
    /// As clap writes it, e.g. `--nats-url <NATS_URL>`.
    usage: String,
    env: Option<EnvVar>,
    /// `[default: …]`, clap's or one the doc comment writes the same way.
    default: Option<String>,
    possible_values: Vec<PossibleValue>,
    /// The help text without the bracketed tags.
    meaning: String,
}

/// The environment variable of a flag: its name only, never a value.
#[derive(Debug, Clone, PartialEq)]
struct EnvVar {
    name: String,
    /// The flag hides the variable's value (`hide_env_values`), as secrets do.
    value_hidden: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct PossibleValue {
    name: String,
    meaning: Option<String>,
}

/// The parsed `--help` of one command.
#[derive(Debug, Clone, PartialEq)]
struct Help {
    about: String,
    flags: Vec<Flag>,
    subcommands: Vec<String>,
}

/// Runs every binary's `--help` and each documented command's, in the page's order.
fn collect_sections(bin_dir: &Path) -> anyhow::Result<Vec<Section>> {
    let mut global_groups: Vec<(Vec<&str>, Vec<Flag>)> = Vec::new();
    let mut command_sections = Vec::new();
    for binary in documented_binaries() {
        let path = bin_dir.join(binary);
        if !path.is_file() {
            anyhow::bail!(
                "{} is missing: build the binaries first (`cargo build --bins`), or leave out --bin-dir",
                path.display()
            );
        }
        let top = parse_help(&help_of(&path, &[])?)
            .with_context(|| format!("cannot parse `{binary} --help`"))?;
        check_subcommands(binary, &top.subcommands)?;
        match global_groups
            .iter_mut()
            .find(|(_, flags)| *flags == top.flags)
        {
            Some((binaries, _)) => binaries.push(binary),
            None => global_groups.push((vec![binary], top.flags)),
        }
        for (_, subcommand) in DOCUMENTED_COMMANDS
            .iter()
            .filter(|(owner, _)| *owner == binary)
        {
            let help = parse_help(&help_of(&path, &[subcommand])?)
                .with_context(|| format!("cannot parse `{binary} {subcommand} --help`"))?;
            command_sections.push(Section {
                title: format!("`{binary} {subcommand}`"),
                about: help.about,
                flags: help.flags,
            });
        }
    }
    let mut sections: Vec<Section> = global_groups
        .into_iter()
        .filter(|(_, flags)| !flags.is_empty())
        .map(|(binaries, flags)| Section {
            title: format!(
                "{} (before the subcommand)",
                binaries
                    .iter()
                    .map(|binary| format!("`{binary}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            about: example_before_subcommand(&binaries),
            flags,
        })
        .collect();
    sections.extend(command_sections);
    Ok(sections)
}

/// The about line of a before-the-subcommand section, with an example from its first binary.
fn example_before_subcommand(binaries: &[&str]) -> String {
    let example = binaries.first().and_then(|binary| {
        DOCUMENTED_COMMANDS
            .iter()
            .find(|(owner, _)| owner == binary)
            .map(|(owner, subcommand)| format!(", as in `{owner} [OPTIONS] {subcommand} …`"))
    });
    format!(
        "Given before the subcommand{}.",
        example.unwrap_or_default()
    )
}

/// Fails when a documented subcommand is gone, or a subcommand is neither documented nor
/// deliberately left out.
fn check_subcommands(binary: &str, subcommands: &[String]) -> anyhow::Result<()> {
    for (_, documented) in DOCUMENTED_COMMANDS
        .iter()
        .filter(|(owner, _)| *owner == binary)
    {
        if !subcommands.iter().any(|listed| listed == documented) {
            anyhow::bail!(
                "`{binary} --help` lists no subcommand `{documented}`; update DOCUMENTED_COMMANDS in xtask/src/docs.rs"
            );
        }
    }
    for listed in subcommands {
        let known = DOCUMENTED_COMMANDS
            .iter()
            .any(|(owner, documented)| *owner == binary && documented == listed)
            || UNDOCUMENTED_SUBCOMMANDS.contains(&listed.as_str());
        if !known {
            anyhow::bail!(
                "`{binary} {listed}` is new: add it to DOCUMENTED_COMMANDS (or UNDOCUMENTED_SUBCOMMANDS) in xtask/src/docs.rs"
            );
        }
    }
    Ok(())
}

/// The long help of `binary [subcommand]`, run with an empty environment so that no variable's
/// value can appear in it.
fn help_of(binary: &Path, subcommand: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new(binary);
    command.args(subcommand).arg("--help").env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    let rendered = format!("{} {} --help", binary.display(), subcommand.join(" "));
    let output = command
        .output()
        .with_context(|| format!("cannot run `{rendered}`"))?;
    if !output.status.success() {
        anyhow::bail!(
            "`{rendered}` failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{rendered}` printed non-UTF-8"))
}

/// Parses clap's help output: both the long layout (help on its own lines, tags on their own
/// lines, a `Possible values:` list) and the compact one (tags at the end of the help line),
/// with any help headings.
fn parse_help(help: &str) -> anyhow::Result<Help> {
    let mut about_lines = Vec::new();
    let mut subcommands = Vec::new();
    let mut flags = Vec::new();
    let mut heading: Option<&str> = None;
    // The current argument's usage and the help lines collected for it so far.
    let mut entry: Option<(String, Vec<String>)> = None;
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent == 0 && !text.is_empty() {
            if let Some((usage, lines)) = entry.take() {
                flags.extend(flag_from(usage, &lines));
            }
            if text.starts_with("Usage:") {
                heading = Some("Usage");
            } else if let Some(name) = text.strip_suffix(':') {
                heading = Some(name);
            } else if heading.is_none() {
                about_lines.push(text.to_owned());
            }
            continue;
        }
        match heading {
            None => {
                if !text.is_empty() {
                    about_lines.push(text.to_owned());
                }
            }
            Some("Usage") => {}
            Some("Commands") => {
                if indent <= 6 && !text.is_empty() {
                    if let Some(name) = text.split_whitespace().next() {
                        subcommands.push(name.to_owned());
                    }
                }
            }
            Some(_) => {
                let starts_argument = indent <= 6
                    && (text.starts_with('-') || text.starts_with('<') || text.starts_with('['));
                if starts_argument {
                    if let Some((usage, lines)) = entry.take() {
                        flags.extend(flag_from(usage, &lines));
                    }
                    // The compact layout puts the help after the usage, two or more spaces on.
                    let (usage, inline_help) = match text.find("  ") {
                        Some(gap) => (&text[..gap], text[gap..].trim()),
                        None => (text, ""),
                    };
                    let lines = if inline_help.is_empty() {
                        Vec::new()
                    } else {
                        vec![inline_help.to_owned()]
                    };
                    entry = Some((usage.to_owned(), lines));
                } else if let Some((_, lines)) = entry.as_mut() {
                    lines.push(text.to_owned());
                } else if !text.is_empty() {
                    anyhow::bail!("help text outside any argument: {line:?}");
                }
            }
        }
    }
    if let Some((usage, lines)) = entry.take() {
        flags.extend(flag_from(usage, &lines));
    }
    Ok(Help {
        about: about_lines.join(" "),
        flags,
        subcommands,
    })
}

/// Turns one argument's usage and help lines into a [`Flag`]; `None` for `--help` and `--version`.
fn flag_from(usage: String, help_lines: &[String]) -> Option<Flag> {
    let long_name = usage
        .split([',', ' '])
        .find(|word| word.starts_with("--"))
        .unwrap_or("");
    if long_name == "--help" || long_name == "--version" {
        return None;
    }
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut possible_values = Vec::new();
    let mut in_possible_values = false;
    for line in help_lines {
        if line.is_empty() {
            in_possible_values = false;
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line == "Possible values:" {
            in_possible_values = true;
            continue;
        }
        if in_possible_values {
            if let Some(value) = line.strip_prefix("- ") {
                possible_values.push(match value.split_once(':') {
                    Some((name, meaning)) => PossibleValue {
                        name: name.trim().to_owned(),
                        meaning: Some(meaning.trim().to_owned()).filter(|m| !m.is_empty()),
                    },
                    None => PossibleValue {
                        name: value.trim().to_owned(),
                        meaning: None,
                    },
                });
                continue;
            }
            in_possible_values = false;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        paragraphs.push(current);
    }
    let mut text = paragraphs.join(" ");
    let mut env = None;
    let mut defaults = Vec::new();
    while let Some((tag, rest)) = split_trailing_tag(&text) {
        if let Some(variable) = tag.strip_prefix("env:") {
            let variable = variable.trim();
            // `NAME=value` when the value is shown, `NAME` when the flag hides it; the value is
            // dropped either way.
            env = Some(match variable.split_once('=') {
                Some((name, _value)) => EnvVar {
                    name: name.to_owned(),
                    value_hidden: false,
                },
                None => EnvVar {
                    name: variable.to_owned(),
                    value_hidden: true,
                },
            });
        } else if let Some(default) = tag.strip_prefix("default:") {
            defaults.insert(0, default.trim().to_owned());
        } else if let Some(values) = tag.strip_prefix("possible values:") {
            if possible_values.is_empty() {
                possible_values = values
                    .split(',')
                    .map(|name| PossibleValue {
                        name: name.trim().to_owned(),
                        meaning: None,
                    })
                    .collect();
            }
        }
        // Aliases are left out: the table names each flag once.
        text = rest;
    }
    Some(Flag {
        usage,
        env,
        default: if defaults.is_empty() {
            None
        } else {
            Some(defaults.join("; "))
        },
        possible_values,
        meaning: text,
    })
}

/// Splits a clap tag such as `[env: NAME=]` off the end of `text`: `(tag contents, text before it)`.
fn split_trailing_tag(text: &str) -> Option<(String, String)> {
    let trimmed = text.trim_end();
    let inner_end = trimmed.strip_suffix(']')?;
    let mut depth = 0usize;
    for (index, character) in inner_end.char_indices().rev() {
        match character {
            ']' => depth += 1,
            '[' if depth > 0 => depth -= 1,
            '[' => {
                let tag = &inner_end[index + 1..];
                let is_clap_tag = [
                    "env:",
                    "default:",
                    "possible values:",
                    "aliases:",
                    "alias:",
                    "short aliases:",
                    "short alias:",
                ]
                .iter()
                .any(|prefix| tag.starts_with(prefix));
                return is_clap_tag
                    .then(|| (tag.to_owned(), inner_end[..index].trim_end().to_owned()));
            }
            _ => {}
        }
    }
    None
}

/// The whole page.
fn render_page(sections: &[Section]) -> String {
    let mut page = String::from(
        "# Configuration\n\
         \n\
         <!-- Generated by `cargo xtask docs` from the binaries' --help. Do not edit by hand. -->\n\
         \n\
         This file is generated from each binary's `--help` by `cargo xtask docs`: do not edit it by hand.\n\
         To change a flag, edit its doc comment, `env` name or default in the service's `config.rs`, then\n\
         regenerate with `cargo xtask docs`. `cargo xtask docs --check` (run by the `configuration_docs`\n\
         test, so by CI) fails when this file and the binaries disagree.\n\
         \n\
         Every flag can also be set through its environment variable; a flag on the command line wins.\n\
         Variables marked *(value hidden)* hold secrets: `--help` and the logs never show their values.\n\
         Durations are humantime strings (`30s`, `10m`, `30days`). The options given before the\n\
         subcommand come first.\n",
    );
    for section in sections {
        page.push('\n');
        page.push_str(&render_section(section));
    }
    page
}

/// One section: `## title`, what the command does, and its flag table.
fn render_section(section: &Section) -> String {
    let mut out = format!("## {}\n\n", section.title);
    if !section.about.is_empty() {
        out.push_str(&table_cell(&section.about));
        out.push_str("\n\n");
    }
    if section.flags.is_empty() {
        out.push_str("No flags.\n");
        return out;
    }
    out.push_str("| Flag | Environment variable | Default | Meaning |\n");
    out.push_str("|---|---|---|---|\n");
    for flag in &section.flags {
        let env = match &flag.env {
            Some(EnvVar {
                name,
                value_hidden: true,
            }) => format!("{} *(value hidden)*", code(name)),
            Some(EnvVar {
                name,
                value_hidden: false,
            }) => code(name),
            None => String::new(),
        };
        let default = flag.default.as_deref().map(code).unwrap_or_default();
        let mut meaning = flag.meaning.clone();
        if !flag.possible_values.is_empty() {
            let values = flag
                .possible_values
                .iter()
                .map(|value| match &value.meaning {
                    Some(value_meaning) => format!("{} ({value_meaning})", code(&value.name)),
                    None => code(&value.name),
                })
                .collect::<Vec<_>>()
                .join(", ");
            if !meaning.is_empty() && !meaning.ends_with('.') {
                meaning.push('.');
            }
            if !meaning.is_empty() {
                meaning.push(' ');
            }
            let _ = write!(meaning, "One of: {values}.");
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            table_cell(&code(&flag.usage)),
            table_cell(&env),
            table_cell(&default),
            table_cell(&meaning)
        );
    }
    out
}

/// `text` as an inline code span, with a longer fence when it holds backticks.
fn code(text: &str) -> String {
    if text.is_empty() {
        return "`\"\"`".to_owned();
    }
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

/// `text` made safe inside a markdown table row.
fn table_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// What differs between the page as generated and as checked in, one phrase per section: empty
/// when they are the same.
fn describe_drift(expected: &str, actual: &str) -> Vec<String> {
    if expected == actual {
        return Vec::new();
    }
    let expected_sections = split_sections(expected);
    let actual_sections = split_sections(actual);
    let mut drift = Vec::new();
    if expected_sections.first() != actual_sections.first() {
        drift.push("the introduction changed".to_owned());
    }
    for (title, body) in expected_sections.iter().skip(1) {
        match actual_sections
            .iter()
            .skip(1)
            .find(|(other, _)| other == title)
        {
            None => drift.push(format!("{title} is missing")),
            // The blank line before the next heading belongs to no section.
            Some((_, other_body)) if other_body.trim_end() != body.trim_end() => {
                drift.push(format!("the flags of {title} drifted"));
            }
            Some(_) => {}
        }
    }
    for (title, _) in actual_sections.iter().skip(1) {
        if !expected_sections
            .iter()
            .skip(1)
            .any(|(other, _)| other == title)
        {
            drift.push(format!("{title} is no longer a documented command"));
        }
    }
    if drift.is_empty() {
        drift.push("the sections are in a different order".to_owned());
    }
    drift
}

/// The page cut at its `## ` headings: the introduction (empty title) first, then each section.
fn split_sections(page: &str) -> Vec<(String, String)> {
    let mut sections = vec![(String::new(), String::new())];
    for line in page.split_inclusive('\n') {
        if let Some(title) = line.strip_prefix("## ") {
            sections.push((title.trim_end().to_owned(), String::new()));
        }
        if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG_HELP: &str = "\
Re-read a stream range

Usage: sink-clickhouse replay [OPTIONS] --stream <STREAM>

Options:
      --stream <STREAM>
          Stream to re-read: WAVE, WEATHER or CARBON
          \n          [env: REPLAY_STREAM=]

      --from-seq <FROM_SEQ>
          First stream sequence [default: the stream's first]
          \n          [env: REPLAY_FROM_SEQ=]

      --progress <PROGRESS>
          Progress display: a bar on a terminal, log lines otherwise

          Possible values:
          - auto: A bar when stderr is a terminal, else log lines
          - bar:  Always a bar
          \n          [env: REPLAY_PROGRESS=]
          [default: auto]

      --nats-password <NATS_PASSWORD>
          Password | for user/password authentication
          \n          [env: NATS_PASSWORD]

  -h, --help
          Print help (see a summary with '-h')
";

    const COMPACT_HELP: &str = "\
Consume the event streams

Usage: sink-clickhouse run [OPTIONS]

Options:
      --nats-url <NATS_URL>
          NATS server URLs [env: NATS_URL=nats://canary@leak.invalid:4222] [default: nats://127.0.0.1:4222]
      --partition <PARTITION>
          The partition [default: $NOMAD_ALLOC_INDEX] [env: SINK_PARTITION=]
  -k, --kind <KIND>  Event kind [possible values: wave, weather]
  -V, --version
          Print version
";

    #[test]
    fn long_help_yields_env_defaults_and_possible_values() {
        let help = parse_help(LONG_HELP).expect("parses");
        assert_eq!(help.about, "Re-read a stream range");
        let names: Vec<&str> = help.flags.iter().map(|flag| flag.usage.as_str()).collect();
        assert_eq!(
            names,
            [
                "--stream <STREAM>",
                "--from-seq <FROM_SEQ>",
                "--progress <PROGRESS>",
                "--nats-password <NATS_PASSWORD>"
            ]
        );
        let stream = &help.flags[0];
        assert_eq!(stream.meaning, "Stream to re-read: WAVE, WEATHER or CARBON");
        assert_eq!(
            stream.env.as_ref().map(|env| env.name.as_str()),
            Some("REPLAY_STREAM")
        );
        assert_eq!(stream.default, None);
        assert_eq!(help.flags[1].default.as_deref(), Some("the stream's first"));
        let progress = &help.flags[2];
        assert_eq!(progress.default.as_deref(), Some("auto"));
        assert_eq!(
            progress.possible_values,
            [
                PossibleValue {
                    name: "auto".into(),
                    meaning: Some("A bar when stderr is a terminal, else log lines".into())
                },
                PossibleValue {
                    name: "bar".into(),
                    meaning: Some("Always a bar".into())
                },
            ]
        );
        let password = help.flags[3].env.as_ref().expect("has an env var");
        assert!(password.value_hidden);
    }

    #[test]
    fn compact_help_yields_the_same_fields_and_never_an_env_value() {
        let help = parse_help(COMPACT_HELP).expect("parses");
        assert_eq!(help.flags.len(), 3, "{:?}", help.flags);
        let url = &help.flags[0];
        assert_eq!(url.meaning, "NATS server URLs");
        assert_eq!(url.default.as_deref(), Some("nats://127.0.0.1:4222"));
        let partition = &help.flags[1];
        assert_eq!(partition.default.as_deref(), Some("$NOMAD_ALLOC_INDEX"));
        assert_eq!(
            partition.env.as_ref().map(|env| env.name.as_str()),
            Some("SINK_PARTITION")
        );
        let kind = &help.flags[2];
        assert_eq!(kind.usage, "-k, --kind <KIND>");
        assert_eq!(kind.meaning, "Event kind");
        assert_eq!(kind.possible_values.len(), 2);

        let page = render_page(&[Section {
            title: "`sink-clickhouse run`".into(),
            about: help.about,
            flags: help.flags,
        }]);
        assert!(!page.contains("canary"), "an env value leaked:\n{page}");
        assert!(page.contains(
            "| `--nats-url <NATS_URL>` | `NATS_URL` | `nats://127.0.0.1:4222` | NATS server URLs |"
        ));
    }

    #[test]
    fn pipes_in_help_are_escaped_and_hidden_values_marked() {
        let help = parse_help(LONG_HELP).expect("parses");
        let section = render_section(&Section {
            title: "`x`".into(),
            about: String::new(),
            flags: help.flags,
        });
        assert!(
            section.contains("`NATS_PASSWORD` *(value hidden)*"),
            "{section}"
        );
        assert!(section.contains("Password \\| for"), "{section}");
        assert!(section.contains("One of: `auto` (A bar when"), "{section}");
    }

    #[test]
    fn subcommands_are_listed() {
        let help = parse_help(
            "About\n\nUsage: edge-sim [OPTIONS] <COMMAND>\n\nCommands:\n  publish  Publish\n  help     Print\n\nOptions:\n  -h, --help\n          Print help\n",
        )
        .expect("parses");
        assert_eq!(help.subcommands, ["publish", "help"]);
        assert!(help.flags.is_empty());
    }

    #[test]
    fn an_unknown_or_missing_subcommand_fails() {
        let listed = |names: &[&str]| {
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>()
        };
        assert!(check_subcommands("ingest-wx", &listed(&["parse", "run", "help"])).is_ok());
        let new = check_subcommands("ingest-wx", &listed(&["parse", "run", "backfill", "help"]))
            .expect_err("a new subcommand fails");
        assert!(
            new.to_string().contains("`ingest-wx backfill` is new"),
            "{new}"
        );
        let gone = check_subcommands("ingest-wx", &listed(&["parse", "help"]))
            .expect_err("a missing subcommand fails");
        assert!(gone.to_string().contains("no subcommand `run`"), "{gone}");
    }

    #[test]
    fn drift_names_the_changed_section() {
        let section = |title: &str, default: &str| Section {
            title: title.into(),
            about: "About".into(),
            flags: vec![Flag {
                usage: "--rate <RATE>".into(),
                env: None,
                default: Some(default.into()),
                possible_values: Vec::new(),
                meaning: "Rate".into(),
            }],
        };
        let checked_in = render_page(&[
            section("`edge-sim mqtt`", "10"),
            section("`edge-sim http`", "1"),
        ]);
        let generated = render_page(&[
            section("`edge-sim mqtt`", "20"),
            section("`edge-sim http`", "1"),
        ]);
        assert!(describe_drift(&checked_in, &checked_in).is_empty());
        assert_eq!(
            describe_drift(&generated, &checked_in),
            ["the flags of `edge-sim mqtt` drifted"]
        );
        let fewer = render_page(&[section("`edge-sim mqtt`", "10")]);
        assert_eq!(
            describe_drift(&checked_in, &fewer),
            ["`edge-sim http` is missing"]
        );
        assert_eq!(
            describe_drift(&fewer, &checked_in),
            ["`edge-sim http` is no longer a documented command"]
        );
    }
}
