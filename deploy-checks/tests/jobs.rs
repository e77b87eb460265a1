//! Checks of the Nomad job specs in `jobs/` against Nomad's rules, our invariants and the real binaries.
//!
//! Nomad is not installable where these run, so each file is parsed as HCL2 (`hcl-rs`) and evaluated the way
//! `nomad job run` would: `var.NAME` takes the variable's default (or a sample for a variable without one), and
//! Nomad's runtime interpolations (`${NOMAD_ALLOC_INDEX}`, `${node.unique.name}`, `${attr.cpu.arch}`,
//! `${NOMAD_META_stream}`) are left in the strings, as Nomad leaves them for the client to fill in.
//! Then:
//! - invariants of every job: the image comes from the variables (never a literal tag), every task has a driver, a
//!   `config` and cpu/memory resources, every `service` has checks on /healthz and /readyz and the scrape tags,
//!   service jobs update through a canary with auto-revert, secrets come from Vault templates under `secrets/`, read
//!   through workload identity (`vault { role = var.vault_role }` and `identity "vault_default"`, never `policies`);
//! - invariants of the special jobs: the bridge is a system job on arm64 Pis, the partitioned sink runs
//!   `var.partitions` allocations that each take their partition from NOMAD_ALLOC_INDEX, the replay is a batch job
//!   dispatched with a `stream`;
//! - the contract with the binaries (shared with compose.yaml's check, `deploy_checks::command_contract_problems`):
//!   every flag and variable a task passes is in the real `--help`, and the whole command line parses once Nomad's
//!   runtime values are filled in with samples (for the replay: with three sample dispatches);
//! - a deliberately broken copy of a job fails these checks.
//!
//! Build the binaries first: `cargo build --workspace --bins`.
//!
//! Layout: the tests; the job model (`JobFile`, loading and evaluation); the checks; small helpers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use deploy_checks::{assert_mentions, assert_no_problems, OUR_BINARIES};
use hcl::eval::{Context, Evaluate};
use hcl::{Block, Body, Expression};

/// The job specs, relative to the workspace root.
const JOBS_DIR: &str = "jobs";
/// How a job spec's file name ends.
const JOB_SUFFIX: &str = ".nomad.hcl";

/// Every job spec: its file, its scheduler type, and the command its one task runs.
const EXPECTED_JOBS: [ExpectedJob; 7] = [
    ExpectedJob {
        file: "ingest-wave.nomad.hcl",
        kind: "service",
        command: ["ingest-wave", "run"],
    },
    ExpectedJob {
        file: "ingest-wx.nomad.hcl",
        kind: "service",
        command: ["ingest-wx", "run"],
    },
    ExpectedJob {
        file: "ingest-carbon.nomad.hcl",
        kind: "service",
        command: ["ingest-carbon", "run"],
    },
    ExpectedJob {
        file: "sink-clickhouse.nomad.hcl",
        kind: "service",
        command: ["sink-clickhouse", "run"],
    },
    ExpectedJob {
        file: "ingest-wave-bridge.nomad.hcl",
        kind: "system",
        command: ["ingest-wave", "bridge"],
    },
    ExpectedJob {
        file: "sink-clickhouse-partitioned.nomad.hcl",
        kind: "service",
        command: ["sink-clickhouse", "run"],
    },
    ExpectedJob {
        file: "sink-clickhouse-replay.nomad.hcl",
        kind: "batch",
        command: ["sink-clickhouse", "replay"],
    },
];

const BRIDGE_JOB: &str = "ingest-wave-bridge.nomad.hcl";
/// The pollers: their readiness follows third-party upstreams.
const POLLER_JOBS: [&str; 3] = [
    "ingest-wave.nomad.hcl",
    "ingest-wx.nomad.hcl",
    "ingest-carbon.nomad.hcl",
];
const PARTITIONED_JOB: &str = "sink-clickhouse-partitioned.nomad.hcl";
const REPLAY_JOB: &str = "sink-clickhouse-replay.nomad.hcl";

/// Variables every job declares, so that one var file serves them all (Nomad refuses a var file that sets a variable
/// the job does not declare).
const COMMON_VARIABLES: [&str; 5] = [
    "image_repository",
    "image_tag",
    "datacenters",
    "nats_url",
    "clickhouse_url",
];

/// The only way a task names its image: both parts from variables, so no tag is ever written into a job.
const IMAGE_EXPRESSION: &str = "${var.image_repository}:${var.image_tag}";

/// Values for variables that have no default (the operator must give them), used to evaluate the jobs here.
const REQUIRED_VARIABLE_SAMPLES: [(&str, &str); 2] = [
    ("image_repository", "registry.example/nomadwave-ingest"),
    ("image_tag", "0.1.0"),
];

/// Nomad's runtime interpolations the jobs may use, each with a sample value for the command-line check.
///
/// Nomad fills these in on the client (node attributes also in constraints); `NOMAD_META_<key>` of the job's `meta`
/// and of a parameterized job's dispatch meta are allowed as well. Anything else is a typo Nomad would leave in the
/// string verbatim.
const NOMAD_RUNTIME_VARIABLES: [(&str, &str); 6] = [
    ("NOMAD_ALLOC_INDEX", "0"),
    ("NOMAD_SECRETS_DIR", "/secrets"),
    ("node.unique.name", "pi-07"),
    ("node.class", "pi"),
    ("attr.cpu.arch", "arm64"),
    ("attr.unique.network.ip-address", "192.0.2.10"),
];

/// Sample dispatches of the replay job for the command-line check: stream only, a sequence range into another
/// database, a time range.
const REPLAY_DISPATCHES: [&[(&str, &str)]; 3] = [
    &[("stream", "WAVE")],
    &[
        ("stream", "CARBON"),
        ("from_seq", "1"),
        ("to_seq", "5000"),
        ("database", "nomadwave_backfill"),
        ("subject", "nomadwave.carbon.AU-NSW"),
    ],
    &[
        ("stream", "WEATHER"),
        ("from_time", "2026-11-01T00:00:00Z"),
        ("to_time", "2026-11-02T00:00:00Z"),
    ],
];

/// The replay's optional dispatch meta, each read by the binary from a variable.
const REPLAY_OPTIONAL_META: [&str; 6] = [
    "from_seq",
    "from_time",
    "to_seq",
    "to_time",
    "database",
    "subject",
];

/// The workload identity Nomad presents to Vault's JWT auth method for the default Vault cluster.
const VAULT_IDENTITY: &str = "vault_default";
/// The audience that identity must carry (Nomad's documented default, matched by the auth role's bound_audiences).
const VAULT_AUDIENCE: &str = "vault.io";

/// A Nomad client's default `max_kill_timeout`: a task's longer `kill_timeout` is cut to this, then SIGKILL follows.
const MAX_KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// Nomad's `kill_timeout` when a task sets none.
const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// What a drain must leave of the kill timeout: the NATS flush, the lease release and the exit after the drain ends.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);
/// The flag whose `--help` entry names a binary's drain-timeout variable.
const DRAIN_TIMEOUT_FLAG: &str = "--drain-timeout";

/// Where Nomad mounts a task's `secrets/` folder inside a Docker container.
const SECRETS_IN_CONTAINER: &str = "/secrets/";

struct ExpectedJob {
    file: &'static str,
    kind: &'static str,
    command: [&'static str; 2],
}

// --- tests ---------------------------------------------------------------------------------------------------------

#[test]
fn jobs_folder_holds_exactly_the_expected_jobs() {
    let found: BTreeSet<String> = job_files(&workspace_root().join(JOBS_DIR))
        .iter()
        .filter_map(|path| path.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = EXPECTED_JOBS
        .iter()
        .map(|job| job.file.to_string())
        .collect();
    assert_eq!(
        found, expected,
        "{JOBS_DIR}/ must hold exactly the expected job specs (add a new one to EXPECTED_JOBS with its checks)"
    );
}

#[test]
fn every_job_keeps_the_invariants() {
    let mut problems = Vec::new();
    for expected in &EXPECTED_JOBS {
        match JobFile::load(&job_path(expected.file)) {
            Ok(job) => problems.extend(prefixed(expected.file, invariant_problems(&job))),
            Err(problem) => problems.push(problem),
        }
    }
    assert_no_problems("invariants of the Nomad jobs", &problems);
}

#[test]
fn bridge_is_a_system_job_on_arm64_pis() {
    let job = load_job(BRIDGE_JOB);
    assert_no_problems(BRIDGE_JOB, &bridge_problems(&job));
}

#[test]
fn partitioned_sink_runs_one_allocation_per_partition() {
    let job = load_job(PARTITIONED_JOB);
    assert_no_problems(PARTITIONED_JOB, &partitioned_problems(&job));
}

#[test]
fn replay_is_a_batch_job_dispatched_with_a_stream() {
    let job = load_job(REPLAY_JOB);
    assert_no_problems(REPLAY_JOB, &replay_problems(&job));
}

#[test]
fn every_task_drains_within_its_kill_timeout_on_a_default_client() {
    let mut problems = Vec::new();
    for expected in &EXPECTED_JOBS {
        problems.extend(shutdown_problems(&load_job(expected.file)));
    }
    assert_no_problems(
        "drain timeouts against kill timeouts (build the binaries with `cargo build --workspace --bins`)",
        &problems,
    );
}

#[test]
fn nomad_durations_parse() {
    assert_eq!(nomad_duration("25s"), Some(Duration::from_secs(25)));
    assert_eq!(nomad_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(nomad_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(nomad_duration("2h"), Some(Duration::from_secs(7200)));
    for bad in ["", "25", "s", "25 s", "1.5x"] {
        assert_eq!(nomad_duration(bad), None, "{bad:?}");
    }
}

#[test]
fn every_job_is_nomad_fmt_aligned() {
    let mut problems = Vec::new();
    for expected in &EXPECTED_JOBS {
        problems.extend(prefixed(
            expected.file,
            alignment_problems(&read_file(&job_path(expected.file))),
        ));
    }
    assert_no_problems(
        "`=` alignment as `nomad fmt` writes it (fix it by hand or with `nomad fmt jobs/`)",
        &problems,
    );
}

#[test]
fn alignment_check_follows_nomad_fmt() {
    let aligned = "env {\n  A   = \"1\"\n  BCD = \"${x}\" # note\n  # a comment ends the group\n  LONGER_NAME = \"2\"\n  args = [\n    \"a\",\n  ]\n  data = <<-EOT\n  x = y\n  EOT\n  e    = 1\n}\n";
    assert_eq!(alignment_problems(aligned), Vec::<String>::new());
    let after_comment =
        "env {\n  A = \"1\"\n  # glibc arenas\n  MALLOC_ARENA_MAX         = \"2\"\n}\n";
    assert_mentions(&alignment_problems(after_comment), "line 4");
    let ragged = "env {\n  A  = \"1\"\n  BC   = \"2\"\n}\n";
    assert_mentions(&alignment_problems(ragged), "line 3");
}

#[test]
fn ingest_wave_job_matches_the_binary() {
    assert_contract("ingest-wave.nomad.hcl");
}

#[test]
fn ingest_wx_job_matches_the_binary() {
    assert_contract("ingest-wx.nomad.hcl");
}

#[test]
fn ingest_carbon_job_matches_the_binary() {
    assert_contract("ingest-carbon.nomad.hcl");
}

#[test]
fn sink_job_matches_the_binary() {
    assert_contract("sink-clickhouse.nomad.hcl");
}

#[test]
fn bridge_job_matches_the_binary() {
    assert_contract(BRIDGE_JOB);
}

#[test]
fn partitioned_sink_job_matches_the_binary() {
    assert_contract(PARTITIONED_JOB);
}

#[test]
fn replay_job_matches_the_binary() {
    assert_contract(REPLAY_JOB);
}

#[test]
fn broken_copies_fail_the_checks() {
    let folder = tempfile::tempdir().expect("a temporary folder can be created");
    // Each case: the job to copy, the text to replace (every occurrence; it must occur), its replacement, and what a problem says.
    let cases: [(&str, &str, &str, &str); 26] = [
        (
            "ingest-wave.nomad.hcl",
            r#"args    = ["run"]"#,
            r#"args    = ["run", "--no-such-flag"]"#,
            "`--no-such-flag` is not a flag of `ingest-wave run`",
        ),
        (
            "ingest-wx.nomad.hcl",
            "        LOG_FORMAT ",
            "        NOMADWAVE_NO_SUCH_SETTING = \"1\"\n        LOG_FORMAT ",
            "`NOMADWAVE_NO_SUCH_SETTING` is read by neither",
        ),
        (
            "ingest-wx.nomad.hcl",
            r#"LOG_FORMAT     = "json""#,
            r#"LOG_FORMAT     = "yaml""#,
            "does not parse",
        ),
        (
            "ingest-carbon.nomad.hcl",
            "      resources {\n        cpu    = 100\n        memory = 128\n      }\n",
            "",
            "has no `resources`",
        ),
        (
            "sink-clickhouse.nomad.hcl",
            "      check {\n        name     = \"ready\"\n        type     = \"http\"\n        path     = \"/readyz\"\n        interval = \"10s\"\n        timeout  = \"3s\"\n      }\n",
            "",
            "no `check` on /readyz",
        ),
        (
            "sink-clickhouse.nomad.hcl",
            r#"image   = "${var.image_repository}:${var.image_tag}""#,
            r#"image   = "${var.image_repository}:latest""#,
            "must be exactly",
        ),
        (
            "ingest-wave.nomad.hcl",
            "    canary            = 1\n",
            "",
            "update with a canary",
        ),
        (
            "ingest-wave.nomad.hcl",
            r#"path     = "/healthz""#,
            r#"path     = "/metrics""#,
            "no `check` on /healthz",
        ),
        (
            BRIDGE_JOB,
            r#"attribute = "${attr.cpu.arch}""#,
            r#"attribute = "${attr.kernel.name}""#,
            "attribute = \"${attr.cpu.arch}\" value = \"arm64\"",
        ),
        (
            PARTITIONED_JOB,
            "count = var.partitions",
            "count = 4",
            "`count = var.partitions`",
        ),
        (
            PARTITIONED_JOB,
            r#"SINK_PARTITION           = "${NOMAD_ALLOC_INDEX}""#,
            r#"SINK_PARTITION           = "${NOMAD_ALLOC_IDX}""#,
            "unknown Nomad runtime variable `${NOMAD_ALLOC_IDX}`",
        ),
        (
            REPLAY_JOB,
            r#"meta_required = ["stream"]"#,
            r#"meta_required = []"#,
            "meta_required",
        ),
    (
            "ingest-wx.nomad.hcl",
            "      check {",
            "      probe {",
            "has no `check`",
        ),
        (
            "ingest-carbon.nomad.hcl",
            r#"destination = "secrets/electricitymaps_token""#,
            r#"destination = "local/electricitymaps_token""#,
            "which no `template` of the task renders",
        ),
        (
            "ingest-carbon.nomad.hcl",
            "        role        = var.vault_role\n",
            "",
            "reads Vault, but the task has no `vault { role = var.vault_role }`",
        ),
        (
            "sink-clickhouse.nomad.hcl",
            "        role        = var.vault_role\n",
            "        role        = var.vault_role\n        policies    = [\"nomadwave-sink\"]\n",
            "legacy token workflow",
        ),
        (
            BRIDGE_JOB,
            "        name = \"vault_default\"\n",
            "        name = \"vault_mqtt\"\n",
            "has no `identity { name = \"vault_default\"",
        ),
        (
            REPLAY_JOB,
            "        aud  = [\"vault.io\"]\n",
            "        aud  = [\"nomad.io\"]\n",
            "expected it to include \"vault.io\"",
        ),
        (
            BRIDGE_JOB,
            r#"MQTT_CLIENT_ID       = "nomadwave-bridge-${node.unique.name}""#,
            r#"MQTT_CLIENT_ID       = "nomadwave-bridge""#,
            "make it stable per node",
        ),
        (
            "sink-clickhouse.nomad.hcl",
            r#"kill_timeout = "25s""#,
            r#"kill_timeout = "45s""#,
            "exceeds a default client's max_kill_timeout",
        ),
        (
            PARTITIONED_JOB,
            r#"SINK_DRAIN_TIMEOUT       = "20s""#,
            r#"SINK_DRAIN_TIMEOUT       = "22s""#,
            "the task would be SIGKILLed before its drain ends",
        ),
        (
            BRIDGE_JOB,
            "        BRIDGE_DRAIN_TIMEOUT = \"10s\"\n",
            "",
            "sets no BRIDGE_DRAIN_TIMEOUT",
        ),
        (
            "ingest-wx.nomad.hcl",
            "        on_update = \"ignore\"\n",
            "",
            "a poller's /readyz check follows third-party upstreams",
        ),
        (
            BRIDGE_JOB,
            "      replace    = false\n",
            "      replace    = true\n",
            "must set `replace = false`",
        ),
        (
            BRIDGE_JOB,
            "  node_pool   = var.node_pool\n",
            "",
            "node_pool = var.node_pool",
        ),
        (
            REPLAY_JOB,
            r#"REPLAY_FROM_SEQ          = "${NOMAD_META_from_seq}""#,
            r#"REPLAY_FROM_SEQ          = "${NOMAD_META_from_seq}x""#,
            "should fail at connecting (exit 1)",
        ),
    ];

    for (file, from, to, expected) in cases {
        let original = read_file(&job_path(file));
        assert!(
            original.contains(from),
            "{file} no longer contains {from:?}: update this broken-copy case"
        );
        let path = folder.path().join(file);
        std::fs::write(&path, original.replace(from, to))
            .expect("the temporary job file can be written");
        let job = JobFile::load(&path).unwrap_or_else(|problem| panic!("{problem}"));
        let mut problems = invariant_problems(&job);
        problems.extend(contract_problems(&job));
        assert_mentions(&problems, expected);
    }

    // A copy that no longer parses is reported, not panicked on.
    let path = folder.path().join("unparsable.nomad.hcl");
    std::fs::write(&path, "job \"x\" {\n  type = \n")
        .expect("the temporary job file can be written");
    let problem = JobFile::load(&path)
        .err()
        .expect("a broken file does not load");
    assert!(problem.contains("is not valid HCL"), "{problem}");

    // The unchanged copies pass: the failures above come from the edits alone.
    for expected in &EXPECTED_JOBS {
        let path = folder.path().join(expected.file);
        std::fs::write(&path, read_file(&job_path(expected.file)))
            .expect("the temporary job file can be written");
        let job = JobFile::load(&path).unwrap_or_else(|problem| panic!("{problem}"));
        assert_no_problems(expected.file, &invariant_problems(&job));
    }
}

fn assert_contract(file: &str) {
    let job = load_job(file);
    assert_no_problems(
        &format!("{file} against the binaries' --help (build them with `cargo build --workspace --bins`)"),
        &contract_problems(&job),
    );
}

// --- the job model -------------------------------------------------------------------------------------------------

/// One job spec: its variables, and its `job` block as written and as evaluated.
struct JobFile {
    /// The file name, which says which job it is (see [`EXPECTED_JOBS`]).
    file: String,
    variables: BTreeMap<String, Variable>,
    /// The `job` block as written: for checking expressions such as `count = var.partitions`.
    raw: Block,
    /// The `job` block with `var.*` evaluated and Nomad's runtime interpolations left in the strings.
    job: Block,
}

/// A `variable` block.
struct Variable {
    default: Option<hcl::Value>,
}

/// One task with the group it belongs to, as evaluated and as written.
struct Task<'a> {
    group: &'a Block,
    task: &'a Block,
    raw_task: &'a Block,
}

impl JobFile {
    fn load(path: &Path) -> Result<JobFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let file = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let body: Body =
            hcl::parse(&text).map_err(|err| format!("{file} is not valid HCL: {err}"))?;

        let mut variables = BTreeMap::new();
        for block in body
            .blocks()
            .filter(|block| block.identifier() == "variable")
        {
            let name = first_label(block);
            let default = match attribute(block.body(), "default") {
                None => None,
                Some(expression) => Some(
                    expression
                        .evaluate(&Context::new())
                        .map_err(|err| format!("{file}: variable `{name}`: {err}"))?,
                ),
            };
            variables.insert(name, Variable { default });
        }

        let jobs: Vec<&Block> = body
            .blocks()
            .filter(|block| block.identifier() == "job")
            .collect();
        let [raw] = jobs.as_slice() else {
            return Err(format!(
                "{file} must hold exactly one `job` block, found {}",
                jobs.len()
            ));
        };

        let mut context = Context::new();
        let mut values = hcl::value::Map::new();
        for (name, variable) in &variables {
            let value = match &variable.default {
                Some(value) => value.clone(),
                None => match REQUIRED_VARIABLE_SAMPLES
                    .iter()
                    .find(|(sample, _)| sample == name)
                {
                    Some((_, sample)) => hcl::Value::from(*sample),
                    None => {
                        return Err(format!(
                            "{file}: variable `{name}` has no default and no sample in REQUIRED_VARIABLE_SAMPLES"
                        ))
                    }
                },
            };
            values.insert(name.clone(), value);
        }
        context.declare_var("var", hcl::Value::from(values));
        for (root, value) in runtime_placeholders(&text) {
            context.declare_var(root, value);
        }
        let job = raw
            .evaluate(&context)
            .map_err(|err| format!("{file}: cannot evaluate the job: {err}"))?;
        Ok(JobFile {
            file,
            variables,
            raw: (*raw).clone(),
            job,
        })
    }

    fn kind(&self) -> String {
        attribute(self.job.body(), "type")
            .and_then(text)
            .unwrap_or_else(|| "service".to_string())
    }

    fn groups(&self) -> Vec<&Block> {
        blocks(self.job.body(), "group").collect()
    }

    fn tasks(&self) -> Vec<Task<'_>> {
        let mut tasks = Vec::new();
        for group in self.groups() {
            let raw_group =
                blocks(self.raw.body(), "group").find(|raw| first_label(raw) == first_label(group));
            for task in blocks(group.body(), "task") {
                let raw_task = raw_group
                    .and_then(|raw_group| {
                        blocks(raw_group.body(), "task")
                            .find(|raw| first_label(raw) == first_label(task))
                    })
                    .expect("the evaluated job has the written job's tasks");
                tasks.push(Task {
                    group,
                    task,
                    raw_task,
                });
            }
        }
        tasks
    }

    /// Meta keys a `${NOMAD_META_<key>}` may name: the job's `meta` and a parameterized job's dispatch meta.
    fn meta_keys(&self) -> BTreeSet<String> {
        let mut keys: BTreeSet<String> = blocks(self.job.body(), "meta")
            .flat_map(|meta| meta.body().attributes().map(|attr| attr.key().to_string()))
            .collect();
        if let Some(parameterized) = block(self.job.body(), "parameterized") {
            for list in ["meta_required", "meta_optional"] {
                keys.extend(
                    attribute(parameterized.body(), list)
                        .and_then(texts)
                        .unwrap_or_default(),
                );
            }
        }
        keys
    }

    /// The job's `meta` defaults.
    fn meta_defaults(&self) -> BTreeMap<String, String> {
        blocks(self.job.body(), "meta")
            .flat_map(|meta| {
                meta.body()
                    .attributes()
                    .map(|attr| {
                        (
                            attr.key().to_string(),
                            text(attr.expr()).unwrap_or_default(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Task<'_> {
    fn name(&self) -> String {
        format!(
            "group `{}`, task `{}`",
            first_label(self.group),
            first_label(self.task)
        )
    }

    fn config(&self) -> Option<&Body> {
        block(self.task.body(), "config").map(Block::body)
    }

    /// `config.command` followed by `config.args`.
    fn command(&self) -> Vec<String> {
        let Some(config) = self.config() else {
            return Vec::new();
        };
        let mut words: Vec<String> = attribute(config, "command")
            .and_then(text)
            .into_iter()
            .collect();
        words.extend(
            attribute(config, "args")
                .and_then(texts)
                .unwrap_or_default(),
        );
        words
    }

    /// `config.args` as written, e.g. `${var.partitions}` rather than its value.
    fn raw_args(&self) -> Vec<String> {
        block(self.raw_task.body(), "config")
            .and_then(|config| attribute(config.body(), "args"))
            .map(|args| match args {
                Expression::Array(words) => words.iter().map(written).collect(),
                other => vec![written(other)],
            })
            .unwrap_or_default()
    }

    fn env(&self) -> BTreeMap<String, String> {
        block(self.task.body(), "env")
            .map(|env| {
                env.body()
                    .attributes()
                    .map(|attr| {
                        (
                            attr.key().to_string(),
                            text(attr.expr()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `env` block as written.
    fn raw_env(&self) -> BTreeMap<String, String> {
        block(self.raw_task.body(), "env")
            .map(|env| {
                env.body()
                    .attributes()
                    .map(|attr| (attr.key().to_string(), written(attr.expr())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `service` blocks of the task and of its group.
    fn services(&self) -> Vec<&Block> {
        blocks(self.group.body(), "service")
            .chain(blocks(self.task.body(), "service"))
            .collect()
    }
}

/// For every runtime interpolation in `text` (`${NOMAD_ALLOC_INDEX}`, `${node.unique.name}`), a variable to declare
/// in the evaluation context whose value is the interpolation itself, so evaluating keeps it for Nomad to fill in.
///
/// `$${…}` is HCL's escape of a literal `${`, which Nomad also fills in at run time; it needs no declaration.
fn runtime_placeholders(text: &str) -> BTreeMap<String, hcl::Value> {
    let mut roots: BTreeMap<String, hcl::Value> = BTreeMap::new();
    for reference in interpolations(text, false) {
        let path: Vec<&str> = reference.split('.').collect();
        let Some((root, rest)) = path.split_first() else {
            continue;
        };
        if *root == "var" || !path.iter().all(|part| is_identifier(part)) {
            continue;
        }
        let leaf = hcl::Value::from(format!("${{{reference}}}"));
        let entry = roots
            .entry((*root).to_string())
            .or_insert_with(|| hcl::Value::Object(hcl::value::Map::new()));
        insert_path(entry, rest, leaf);
    }
    roots
}

fn insert_path(target: &mut hcl::Value, path: &[&str], leaf: hcl::Value) {
    let Some((first, rest)) = path.split_first() else {
        *target = leaf;
        return;
    };
    if !matches!(target, hcl::Value::Object(_)) {
        *target = hcl::Value::Object(hcl::value::Map::new());
    }
    if let hcl::Value::Object(map) = target {
        let child = map
            .entry((*first).to_string())
            .or_insert_with(|| hcl::Value::Object(hcl::value::Map::new()));
        insert_path(child, rest, leaf);
    }
}

/// The references inside `${…}` in `text`; with `include_escaped`, also those of `$${…}` (HCL's escape, which an
/// evaluated string shows as `${…}`).
fn interpolations(text: &str, include_escaped: bool) -> Vec<String> {
    let mut found = Vec::new();
    for (start, _) in text.match_indices("${") {
        if !include_escaped && text[..start].ends_with('$') {
            continue;
        }
        let after = &text[start + 2..];
        if let Some(end) = after.find('}') {
            found.push(after[..end].trim().to_string());
        }
    }
    found
}

fn is_identifier(part: &str) -> bool {
    part.starts_with(|character: char| character.is_ascii_alphabetic() || character == '_')
        && part.chars().all(|character| {
            character.is_ascii_alphanumeric() || character == '_' || character == '-'
        })
}

// --- the checks ----------------------------------------------------------------------------------------------------

/// Everything about `job` that breaks our rules, one line per problem: the rules of every job, then those of the
/// special job the file is.
fn invariant_problems(job: &JobFile) -> Vec<String> {
    let mut problems = common_problems(job);
    problems.extend(check_on_update_problems(job));
    match job.file.as_str() {
        BRIDGE_JOB => problems.extend(bridge_problems(job)),
        PARTITIONED_JOB => problems.extend(partitioned_problems(job)),
        REPLAY_JOB => problems.extend(replay_problems(job)),
        _ => {}
    }
    problems
}

fn common_problems(job: &JobFile) -> Vec<String> {
    let mut problems = Vec::new();

    for name in COMMON_VARIABLES {
        if !job.variables.contains_key(name) {
            problems.push(format!(
                "no `variable \"{name}\"` (every job declares {COMMON_VARIABLES:?})"
            ));
        }
    }
    if let Some(Some(default)) = job
        .variables
        .get("image_tag")
        .map(|variable| &variable.default)
    {
        let tag = value_text(default).unwrap_or_default();
        if tag.is_empty() || tag == "latest" {
            problems.push(format!(
                "variable `image_tag` defaults to {tag:?}: give no default, or a pinned release"
            ));
        }
    }
    if let Some(Some(default)) = job
        .variables
        .get("image_repository")
        .map(|variable| &variable.default)
    {
        let repository = value_text(default).unwrap_or_default();
        let last_segment = repository.rsplit('/').next().unwrap_or_default();
        if last_segment.contains(':') || repository.contains('@') {
            problems.push(format!(
                "variable `image_repository` defaults to {repository:?}, which carries a tag: the tag is image_tag's"
            ));
        }
    }

    if let Some(expected) = EXPECTED_JOBS
        .iter()
        .find(|expected| expected.file == job.file)
    {
        if job.kind() != expected.kind {
            problems.push(format!(
                "`type = {:?}`, expected {:?}",
                job.kind(),
                expected.kind
            ));
        }
        let expected_job_name = job.file.trim_end_matches(JOB_SUFFIX);
        if first_label(&job.raw) != expected_job_name {
            problems.push(format!(
                "the job is named {:?}, expected {expected_job_name:?} (the file's name)",
                first_label(&job.raw)
            ));
        }
    }
    if attribute(job.raw.body(), "datacenters")
        .map(written)
        .as_deref()
        != Some("var.datacenters")
    {
        problems.push("`datacenters` must be `var.datacenters`".to_string());
    }

    if job.kind() == "service" {
        problems.extend(service_update_problems(job));
    }

    let groups = job.groups();
    if groups.is_empty() {
        problems.push("no `group`".to_string());
    }
    for group in &groups {
        let group_name = format!("group `{}`", first_label(group));
        if block(group.body(), "restart").is_none() {
            problems.push(format!("{group_name} has no `restart` policy"));
        }
        match (job.kind().as_str(), block(group.body(), "reschedule")) {
            ("system", Some(_)) => problems.push(format!(
                "{group_name}: a system job cannot have a `reschedule` policy (Nomad refuses it)"
            )),
            ("system", None) | (_, Some(_)) => {}
            (_, None) => problems.push(format!("{group_name} has no `reschedule` policy")),
        }
        if blocks(group.body(), "task").next().is_none() {
            problems.push(format!("{group_name} has no `task`"));
        }
    }

    let meta_keys = job.meta_keys();
    for task in job.tasks() {
        for problem in task_problems(job, &task, &meta_keys) {
            problems.push(format!("{}: {problem}", task.name()));
        }
    }

    for constraint in blocks(job.job.body(), "constraint").chain(
        groups
            .iter()
            .flat_map(|group| blocks(group.body(), "constraint")),
    ) {
        let attribute_text = attribute(constraint.body(), "attribute")
            .and_then(text)
            .unwrap_or_default();
        for reference in interpolations(&attribute_text, true) {
            if !(reference.starts_with("node.")
                || reference.starts_with("attr.")
                || reference.starts_with("meta."))
            {
                problems.push(format!(
                    "constraint on `${{{reference}}}`: constraints can use only node attributes and meta"
                ));
            }
        }
    }
    problems
}

/// Which checks judge a deployment: /healthz always does; a poller's /readyz does not (`on_update = "ignore"`),
/// because it follows third-party upstreams, and an upstream outage must not fail (and auto-revert) every rollout.
fn check_on_update_problems(job: &JobFile) -> Vec<String> {
    let mut problems = Vec::new();
    let is_poller = POLLER_JOBS.contains(&job.file.as_str());
    for task in job.tasks() {
        for service in task.services() {
            for check in blocks(service.body(), "check") {
                let path = attribute(check.body(), "path")
                    .and_then(text)
                    .unwrap_or_default();
                let on_update = attribute(check.body(), "on_update").and_then(text);
                match (path.as_str(), on_update.as_deref(), is_poller) {
                    ("/healthz", None | Some("require_healthy"), _) => {}
                    ("/healthz", Some(other), _) => problems.push(format!(
                        "{}: the /healthz check has on_update = {other:?}: liveness must judge deployments",
                        task.name()
                    )),
                    ("/readyz", Some("ignore"), true) => {}
                    ("/readyz", other, true) => problems.push(format!(
                        "{}: a poller's /readyz check follows third-party upstreams: set on_update = \"ignore\" (found {other:?}), or an upstream outage fails every rollout",
                        task.name()
                    )),
                    _ => {}
                }
            }
        }
    }
    problems
}

/// Checks, line by line, what `nomad fmt` (hclwrite) does to `=`: consecutive lines that each hold a whole
/// single-line attribute form a group whose `=` line up one space after the longest name.
///
/// As in hclwrite, a blank line, a comment line, a block line or a multi-line value (`args = [`) ends a group, a
/// heredoc (`data = <<-EOT`) counts as one line of its group, and a trailing comment does not matter.
fn alignment_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // (line number, name width, column of `=`) of the current group.
    let mut group: Vec<(usize, usize, usize)> = Vec::new();
    let mut heredoc_end: Option<String> = None;
    let close_group = |group: &mut Vec<(usize, usize, usize)>, problems: &mut Vec<String>| {
        let widest = group.iter().map(|(_, width, _)| *width).max().unwrap_or(0);
        for (line_number, _, column) in group.iter() {
            if *column != widest + 1 {
                problems.push(format!(
                    "line {line_number}: `=` at column {}, expected {} (aligned with its group, one space after the longest name)",
                    column + 1,
                    widest + 2
                ));
            }
        }
        group.clear();
    };
    for (line_idx, line) in text.lines().enumerate() {
        if let Some(marker) = &heredoc_end {
            if line.trim() == marker {
                heredoc_end = None;
            }
            continue;
        }
        match single_line_attribute(line) {
            Some((width, column, heredoc)) => {
                group.push((line_idx + 1, width, column));
                heredoc_end = heredoc;
            }
            None => close_group(&mut group, &mut problems),
        }
    }
    close_group(&mut group, &mut problems);
    problems
}

/// For a line `NAME = VALUE` whose value is whole on the line (or a heredoc): the width of the indented name, the
/// column of `=`, and the heredoc's end marker.
fn single_line_attribute(line: &str) -> Option<(usize, usize, Option<String>)> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("//") {
        return None;
    }
    let column = line.find('=')?;
    let name = line[..column].trim_end();
    if name.trim().is_empty()
        || !name.trim().chars().all(|character| {
            character.is_ascii_alphanumeric() || character == '_' || character == '-'
        })
    {
        return None;
    }
    let value = line[column + 1..].trim();
    if value.starts_with('=') {
        return None;
    }
    if let Some(marker) = value.strip_prefix("<<") {
        let marker = marker.trim_start_matches('-').trim().to_string();
        return Some((name.len(), column, Some(marker)));
    }
    (bracket_balance(value) == 0).then_some((name.len(), column, None))
}

/// Opening minus closing brackets outside strings and comments.
fn bracket_balance(value: &str) -> i64 {
    let mut balance = 0;
    let mut in_string = false;
    let mut escaped = false;
    for character in value.chars() {
        if in_string {
            match (escaped, character) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match character {
            '"' => in_string = true,
            '#' => break,
            '[' | '{' | '(' => balance += 1,
            ']' | '}' | ')' => balance -= 1,
            _ => {}
        }
    }
    balance
}

fn service_update_problems(job: &JobFile) -> Vec<String> {
    let mut problems = Vec::new();
    for group in job.groups() {
        // A group's `update` overrides the job's, field by field.
        let setting = |key: &str| {
            block(group.body(), "update")
                .and_then(|update| attribute(update.body(), key))
                .or_else(|| {
                    block(job.job.body(), "update").and_then(|update| attribute(update.body(), key))
                })
        };
        let group_name = format!("group `{}`", first_label(group));
        let canary = setting("canary").and_then(number).unwrap_or(0.0);
        if canary < 1.0 {
            problems.push(format!(
                "{group_name}: a service job must update with a canary (`update {{ canary = 1 }}`)"
            ));
        }
        for switch in ["auto_revert", "auto_promote"] {
            if setting(switch).and_then(boolean) != Some(true) {
                problems.push(format!("{group_name}: `update` must set `{switch} = true`"));
            }
        }
        if setting("health_check").and_then(text).as_deref() != Some("checks") {
            problems.push(format!(
                "{group_name}: `update` must judge health by the service checks (`health_check = \"checks\"`)"
            ));
        }
        for duration in ["min_healthy_time", "healthy_deadline"] {
            if setting(duration).and_then(text).is_none() {
                problems.push(format!("{group_name}: `update` sets no `{duration}`"));
            }
        }
    }
    problems
}

fn task_problems(job: &JobFile, task: &Task<'_>, meta_keys: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    match attribute(task.task.body(), "driver")
        .and_then(text)
        .as_deref()
    {
        Some("docker") => {}
        other => problems.push(format!("driver is {other:?}, expected \"docker\"")),
    }
    if task.config().is_none() {
        problems.push("has no `config`".to_string());
    }
    let raw_image = block(task.raw_task.body(), "config")
        .and_then(|config| attribute(config.body(), "image"))
        .map(written);
    match raw_image {
        None => problems.push("has no `config.image`".to_string()),
        Some(image) if image != format!("{IMAGE_EXPRESSION:?}") => problems.push(format!(
            "`image = {image}` must be exactly {IMAGE_EXPRESSION:?}: the tag is pinned by var.image_tag, never written"
        )),
        Some(_) => {}
    }
    let command = task.command();
    match command.first() {
        Some(binary) if OUR_BINARIES.contains(&binary.as_str()) => {}
        other => problems.push(format!(
            "`config.command` is {other:?}, expected one of {OUR_BINARIES:?} (the image has no entrypoint)"
        )),
    }
    if let Some(expected) = EXPECTED_JOBS
        .iter()
        .find(|expected| expected.file == job.file)
    {
        if command.get(..2) != Some(&expected.command.map(str::to_string)[..]) {
            problems.push(format!(
                "runs {command:?}, expected `{} {}`",
                expected.command[0], expected.command[1]
            ));
        }
    }

    match block(task.task.body(), "resources") {
        None => problems.push("has no `resources` (cpu and memory)".to_string()),
        Some(resources) => {
            for key in ["cpu", "memory"] {
                if !attribute(resources.body(), key)
                    .and_then(number)
                    .is_some_and(|amount| amount > 0.0)
                {
                    problems.push(format!("`resources` sets no positive `{key}`"));
                }
            }
        }
    }

    let env = task.env();
    let services = task.services();
    for service in &services {
        problems.extend(service_problems(task, service, &env));
    }
    if job.kind() != "batch" && services.is_empty() {
        problems.push("a long-running task needs a `service` with checks".to_string());
    }

    // Every string of the task may use only Nomad's runtime variables (or the job's meta).
    let mut strings = Vec::new();
    collect_strings(task.task.body(), &mut strings);
    for string in &strings {
        for reference in interpolations(string, true) {
            if runtime_sample(&reference, meta_keys, &BTreeMap::new()).is_none() {
                problems.push(format!(
                    "unknown Nomad runtime variable `${{{reference}}}` (known: {:?} and NOMAD_META_ of {meta_keys:?})",
                    NOMAD_RUNTIME_VARIABLES.map(|(name, _)| name)
                ));
            }
        }
    }

    problems.extend(secret_problems(task, &env));
    problems
}

fn service_problems(
    task: &Task<'_>,
    service: &Block,
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let name = attribute(service.body(), "name")
        .and_then(text)
        .unwrap_or_default();
    let checks: Vec<&Block> = blocks(service.body(), "check").collect();
    if checks.is_empty() {
        problems.push(format!("service `{name}` has no `check`"));
    }
    for path in ["/healthz", "/readyz"] {
        let probed = checks.iter().any(|check| {
            attribute(check.body(), "type").and_then(text).as_deref() == Some("http")
                && attribute(check.body(), "path").and_then(text).as_deref() == Some(path)
        });
        if !probed {
            problems.push(format!(
                "service `{name}` has no `check` on {path} (type \"http\")"
            ));
        }
    }
    let tags = attribute(service.body(), "tags")
        .and_then(texts)
        .unwrap_or_default();
    for tag in ["prometheus.scrape=true", "prometheus.path=/metrics"] {
        if !tags.iter().any(|found| found == tag) {
            problems.push(format!(
                "service `{name}` lacks the tag {tag:?} (Prometheus finds targets by it)"
            ));
        }
    }

    let port_label = attribute(service.body(), "port")
        .and_then(text)
        .unwrap_or_default();
    let port = blocks(task.group.body(), "network")
        .flat_map(|network| blocks(network.body(), "port"))
        .find(|port| first_label(port) == port_label);
    let Some(port) = port else {
        problems.push(format!(
            "service `{name}` uses port {port_label:?}, which the group's `network` does not declare"
        ));
        return problems;
    };
    let in_container = attribute(port.body(), "to")
        .or_else(|| attribute(port.body(), "static"))
        .and_then(number)
        .map(|number| number as u64);
    let exposed = task
        .config()
        .and_then(|config| attribute(config, "ports"))
        .and_then(texts)
        .unwrap_or_default();
    if !exposed.contains(&port_label) {
        problems.push(format!(
            "`config.ports` must list {port_label:?}, the port service `{name}` probes"
        ));
    }
    match (env.get("HTTP_LISTEN"), in_container) {
        (Some(listen), Some(port)) => {
            if listen != &format!("0.0.0.0:{port}") {
                problems.push(format!(
                    "HTTP_LISTEN is {listen:?}, but port {port_label:?} leads to 0.0.0.0:{port} in the container"
                ));
            }
        }
        (None, _) => problems.push(format!(
            "service `{name}` probes port {port_label:?}, but the task sets no HTTP_LISTEN (the default listens on loopback only)"
        )),
        (Some(_), None) => problems.push(format!(
            "port {port_label:?} has no `to`: say where HTTP_LISTEN listens in the container"
        )),
    }
    problems
}

/// `*_FILE` variables under the secrets folder are rendered by a Vault template of the same task.
fn secret_problems(task: &Task<'_>, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    let templates: Vec<&Block> = blocks(task.task.body(), "template").collect();
    let destinations: Vec<String> = templates
        .iter()
        .filter_map(|template| attribute(template.body(), "destination").and_then(text))
        .collect();
    for template in &templates {
        let destination = attribute(template.body(), "destination")
            .and_then(text)
            .unwrap_or_default();
        if !destination.starts_with("secrets/") {
            problems.push(format!(
                "template {destination:?}: render secrets under `secrets/` (in memory, not in the allocation folder)"
            ));
        }
        if attribute(template.body(), "change_mode")
            .and_then(text)
            .as_deref()
            != Some("restart")
        {
            problems.push(format!(
                "template {destination:?}: `change_mode = \"restart\"`, so a rotated secret is read again"
            ));
        }
        let data = attribute(template.body(), "data")
            .and_then(text)
            .unwrap_or_default();
        if data.contains("secret \"") {
            problems.extend(
                vault_problems(task)
                    .into_iter()
                    .map(|problem| format!("template {destination:?} reads Vault, but {problem}")),
            );
        }
    }
    for (name, value) in env {
        if !name.ends_with("_FILE") {
            continue;
        }
        let relative = value
            .strip_prefix("${NOMAD_SECRETS_DIR}/")
            .or_else(|| value.strip_prefix(SECRETS_IN_CONTAINER));
        match relative {
            None => problems.push(format!(
                "{name} = {value:?}: a secret file must come from a template under ${{NOMAD_SECRETS_DIR}}/"
            )),
            Some(relative) => {
                if !destinations.iter().any(|destination| destination == &format!("secrets/{relative}")) {
                    problems.push(format!(
                        "{name} reads secrets/{relative}, which no `template` of the task renders (destinations: {destinations:?})"
                    ));
                }
            }
        }
    }
    problems
}

/// A task that reads Vault logs in through workload identity, the only way Nomad 1.10 and later fetch Vault tokens.
///
/// - `vault { role = var.vault_role }`: the JWT auth role, from a variable so each cluster names its own;
/// - no `policies`: the legacy token workflow's field, which Nomad 1.10 ignores without a word (the task would get
///   the auth method's default role and no secret);
/// - `identity { name = "vault_default" aud = ["vault.io"] ttl = … }`: the identity the login presents, so the job
///   works without a server-side `default_identity`.
fn vault_problems(task: &Task<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(vault) = block(task.task.body(), "vault") else {
        return vec!["the task has no `vault { role = var.vault_role }`".to_string()];
    };
    let raw_role = block(task.raw_task.body(), "vault")
        .and_then(|raw| attribute(raw.body(), "role"))
        .map(written);
    let role = attribute(vault.body(), "role").and_then(text);
    match (raw_role.as_deref(), role.as_deref()) {
        (Some("var.vault_role"), Some(role)) if !role.is_empty() => {}
        (raw, _) => problems.push(format!(
            "the task has no `vault {{ role = var.vault_role }}` (a non-empty role from the variable), found role {raw:?}"
        )),
    }
    if attribute(vault.body(), "policies").is_some() {
        problems.push(
            "`vault { policies = ... }` is the legacy token workflow, which Nomad 1.10 and later ignore silently: use `role`"
                .to_string(),
        );
    }
    let identity = blocks(task.task.body(), "identity").find(|identity| {
        attribute(identity.body(), "name").and_then(text).as_deref() == Some(VAULT_IDENTITY)
    });
    let Some(identity) = identity else {
        problems.push(format!(
            "the task has no `identity {{ name = \"{VAULT_IDENTITY}\" aud = [\"{VAULT_AUDIENCE}\"] ttl = \"1h\" }}` for the Vault login"
        ));
        return problems;
    };
    let audiences = attribute(identity.body(), "aud")
        .and_then(texts)
        .unwrap_or_default();
    if !audiences.iter().any(|audience| audience == VAULT_AUDIENCE) {
        problems.push(format!(
            "identity {VAULT_IDENTITY:?} has aud {audiences:?}, expected it to include {VAULT_AUDIENCE:?}"
        ));
    }
    if attribute(identity.body(), "ttl").and_then(text).is_none() {
        problems.push(format!(
            "identity {VAULT_IDENTITY:?} sets no `ttl`: without one the identity token never expires"
        ));
    }
    problems
}

fn bridge_problems(job: &JobFile) -> Vec<String> {
    let mut problems = Vec::new();
    if job.kind() != "system" {
        problems.push(format!(
            "the bridge must be a system job (one per Pi), found {:?}",
            job.kind()
        ));
    }
    let constraints: Vec<(String, String, String)> = blocks(job.job.body(), "constraint")
        .chain(
            job.groups()
                .into_iter()
                .flat_map(|group| blocks(group.body(), "constraint")),
        )
        .map(|constraint| {
            let field = |key: &str| attribute(constraint.body(), key).and_then(text);
            (
                field("attribute").unwrap_or_default(),
                field("operator").unwrap_or_else(|| "=".to_string()),
                field("value").unwrap_or_default(),
            )
        })
        .collect();
    for (attribute_name, value) in [("${node.class}", "pi"), ("${attr.cpu.arch}", "arm64")] {
        let constrained = constraints.iter().any(|(found, operator, found_value)| {
            found == attribute_name
                && matches!(operator.as_str(), "=" | "==" | "is")
                && found_value == value
        });
        if !constrained {
            problems.push(format!(
                "the bridge needs `constraint {{ attribute = \"{attribute_name}\" value = \"{value}\" }}`; found {constraints:?}"
            ));
        }
    }
    if attribute(job.raw.body(), "node_pool")
        .map(written)
        .as_deref()
        != Some("var.node_pool")
    {
        problems.push("the bridge needs `node_pool = var.node_pool` (the Pis' pool)".to_string());
    }
    for group in job.groups() {
        // The Pis are connected intermittently: a missed heartbeat must not stop or replace the bridge.
        let Some(disconnect) = block(group.body(), "disconnect") else {
            problems.push(format!(
                "group `{}`: the Pis are connected intermittently, so the bridge needs `disconnect {{ lost_after = ... replace = false reconcile = \"keep_original\" }}`",
                first_label(group)
            ));
            continue;
        };
        let setting = |key: &str| attribute(disconnect.body(), key);
        if setting("lost_after")
            .and_then(text)
            .and_then(|after| nomad_duration(&after))
            .is_none()
        {
            problems.push(format!(
                "group `{}`: `disconnect` sets no `lost_after` duration",
                first_label(group)
            ));
        }
        if setting("replace").and_then(boolean) != Some(false) {
            problems.push(format!(
                "group `{}`: `disconnect` must set `replace = false`",
                first_label(group)
            ));
        }
        if setting("reconcile").and_then(text).as_deref() != Some("keep_original") {
            problems.push(format!(
                "group `{}`: `disconnect` must set `reconcile = \"keep_original\"`",
                first_label(group)
            ));
        }
    }
    for task in job.tasks() {
        let env = task.env();
        for required in ["MQTT_URL", "MQTT_USER", "MQTT_PASSWORD_FILE", "NATS_URL"] {
            if !env.contains_key(required) {
                problems.push(format!("{}: sets no {required}", task.name()));
            }
        }
        match env.get("MQTT_CLIENT_ID") {
            Some(id) if id.contains("${node.unique.name}") => {}
            other => problems.push(format!(
                "{}: MQTT_CLIENT_ID is {other:?}; make it stable per node with ${{node.unique.name}}, so each Pi keeps its persistent session",
                task.name()
            )),
        }
    }
    problems
}

fn partitioned_problems(job: &JobFile) -> Vec<String> {
    let mut problems = Vec::new();
    match job.variables.get("partitions") {
        Some(Variable {
            default: Some(default),
        }) if value_text(default)
            .and_then(|count| count.parse::<u32>().ok())
            .is_some_and(|count| count >= 1) => {}
        _ => problems
            .push("declare `variable \"partitions\"` with a default of at least 1".to_string()),
    }
    for raw_group in blocks(job.raw.body(), "group") {
        if attribute(raw_group.body(), "count").map(written).as_deref() != Some("var.partitions") {
            problems.push(format!(
                "group `{}` must run one allocation per partition: `count = var.partitions`",
                first_label(raw_group)
            ));
        }
    }
    for task in job.tasks() {
        let raw_args = task.raw_args();
        let raw_env = task.raw_env();
        let partitions_flag = raw_args
            .iter()
            .position(|word| word == "\"--partitions\"")
            .and_then(|index| raw_args.get(index + 1))
            .map(String::as_str);
        let partitions_ok = partitions_flag == Some("\"${var.partitions}\"")
            || raw_env.get("SINK_PARTITIONS").map(String::as_str) == Some("var.partitions");
        if !partitions_ok {
            problems.push(format!(
                "{}: pass `--partitions ${{var.partitions}}` (or SINK_PARTITIONS = var.partitions); args are {raw_args:?}",
                task.name()
            ));
        }
        let env = task.env();
        let command = task.command();
        let partition_flag = deploy_checks::flag_value(&command, "--partition");
        match (env.get("SINK_PARTITION").cloned(), partition_flag) {
            (Some(value), None) | (None, Some(value)) if value.as_str() == "${NOMAD_ALLOC_INDEX}" => {}
            (None, None) => {
                // The binary falls back to NOMAD_ALLOC_INDEX itself; its --help must say so.
                let documented = std::process::Command::new(test_support::target_bin("sink-clickhouse"))
                    .args(["run", "--help"])
                    .env_clear()
                    .output()
                    .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("NOMAD_ALLOC_INDEX"));
                if !documented {
                    problems.push(format!(
                        "{}: sets no partition, and `sink-clickhouse run --help` does not say it falls back to NOMAD_ALLOC_INDEX",
                        task.name()
                    ));
                }
            }
            (env_value, flag_value) => problems.push(format!(
                "{}: each allocation must take its partition from NOMAD_ALLOC_INDEX (SINK_PARTITION = \"${{NOMAD_ALLOC_INDEX}}\"), found SINK_PARTITION {env_value:?}, --partition {flag_value:?}",
                task.name()
            )),
        }
    }
    problems
}

fn replay_problems(job: &JobFile) -> Vec<String> {
    let mut problems = Vec::new();
    if job.kind() != "batch" {
        problems.push(format!(
            "the replay must be a batch job, found {:?}",
            job.kind()
        ));
    }
    let Some(parameterized) = block(job.job.body(), "parameterized") else {
        problems
            .push("the replay must be `parameterized` (dispatched once per backfill)".to_string());
        return problems;
    };
    let required = attribute(parameterized.body(), "meta_required")
        .and_then(texts)
        .unwrap_or_default();
    if required != ["stream"] {
        problems.push(format!(
            "`meta_required` must be [\"stream\"], found {required:?}"
        ));
    }
    let optional: BTreeSet<String> = attribute(parameterized.body(), "meta_optional")
        .and_then(texts)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let defaults = job.meta_defaults();
    for key in REPLAY_OPTIONAL_META {
        if !optional.contains(key) {
            problems.push(format!("`meta_optional` lacks {key:?}"));
        }
        // Without a default, Nomad leaves `${NOMAD_META_key}` verbatim in the variable when a dispatch omits it.
        if !defaults.contains_key(key) {
            problems.push(format!(
                "optional meta {key:?} has no default in the job's `meta` block (an empty string, which the binary reads as unset)"
            ));
        }
    }
    for task in job.tasks() {
        let command = task.command();
        if deploy_checks::flag_value(&command, "--stream").as_deref()
            != Some("${NOMAD_META_stream}")
        {
            problems.push(format!(
                "{}: the command must pass `--stream ${{NOMAD_META_stream}}`, found {command:?}",
                task.name()
            ));
        }
        let env = task.env();
        let mut passed: BTreeSet<String> = BTreeSet::new();
        for value in env.values().chain(command.iter()) {
            for reference in interpolations(value, true) {
                if let Some(key) = reference.strip_prefix("NOMAD_META_") {
                    passed.insert(key.to_string());
                }
            }
        }
        for key in REPLAY_OPTIONAL_META {
            if !passed.contains(key) {
                problems.push(format!(
                    "{}: optional meta {key:?} reaches the binary nowhere",
                    task.name()
                ));
            }
        }
    }
    problems
}

/// The contract of every task with its binary, once per sample dispatch for a parameterized job.
fn contract_problems(job: &JobFile) -> Vec<String> {
    let meta_keys = job.meta_keys();
    let dispatches: Vec<BTreeMap<String, String>> =
        if block(job.job.body(), "parameterized").is_some() {
            REPLAY_DISPATCHES
                .iter()
                .map(|dispatch| {
                    let mut meta = job.meta_defaults();
                    meta.extend(
                        dispatch
                            .iter()
                            .map(|(key, value)| (key.to_string(), value.to_string())),
                    );
                    meta
                })
                .collect()
        } else {
            vec![job.meta_defaults()]
        };
    let mut problems = shutdown_problems(job);
    for task in job.tasks() {
        for meta in &dispatches {
            let shown = if dispatches.len() > 1 {
                format!("{} (dispatch {meta:?})", task.name())
            } else {
                task.name()
            };
            match task_contract_problems(&task, &meta_keys, meta) {
                Ok(found) => problems.extend(
                    found
                        .into_iter()
                        .map(|problem| format!("{shown}: {problem}")),
                ),
                Err(problem) => problems.push(format!("{shown}: {problem}")),
            }
            if dispatches.len() > 1 {
                if let Err(problem) = dispatch_run_problem(&task, &meta_keys, meta) {
                    problems.push(format!("{shown}: {problem}"));
                }
            }
        }
    }
    prefixed(&job.file, problems)
}

/// Whether every task stops cleanly on a Nomad client with default settings: its `kill_timeout` is at most the
/// client's `max_kill_timeout` (30s), and a task whose binary has a drain timeout sets it explicitly (not relying on
/// the binary's default) with drain + margin ≤ `kill_timeout`, so SIGKILL never lands in the middle of a drain.
///
/// The drain-timeout variable is the one `--help` lists for `--drain-timeout`, so a new binary with a drain is
/// covered without a list here.
fn shutdown_problems(job: &JobFile) -> Vec<String> {
    let mut problems = Vec::new();
    for task in job.tasks() {
        let name = task.name();
        let kill_timeout = match attribute(task.task.body(), "kill_timeout").and_then(text) {
            None => DEFAULT_KILL_TIMEOUT,
            Some(written) => match nomad_duration(&written) {
                Some(duration) => duration,
                None => {
                    problems.push(format!(
                        "{name}: kill_timeout {written:?} is not a duration"
                    ));
                    continue;
                }
            },
        };
        if kill_timeout > MAX_KILL_TIMEOUT {
            problems.push(format!(
                "{name}: kill_timeout {kill_timeout:?} exceeds a default client's max_kill_timeout ({MAX_KILL_TIMEOUT:?}), which cuts it to {MAX_KILL_TIMEOUT:?} and then SIGKILLs"
            ));
        }
        let command = task.command();
        let (Some(binary), Some(subcommand)) = (command.first(), command.get(1)) else {
            continue;
        };
        if !OUR_BINARIES.contains(&binary.as_str()) {
            continue;
        }
        let help = match deploy_checks::HelpText::of(
            &test_support::target_bin(binary),
            std::slice::from_ref(subcommand),
        ) {
            Ok(help) => help,
            Err(problem) => {
                problems.push(format!("{name}: {problem}"));
                continue;
            }
        };
        let drain_variable = help.variables.iter().find_map(|(variable, flag)| {
            flag.as_ref()
                .is_some_and(|flag| flag.name == DRAIN_TIMEOUT_FLAG)
                .then(|| variable.clone())
        });
        let Some(drain_variable) = drain_variable else {
            continue;
        };
        let env = task.env();
        let Some(written) = env.get(&drain_variable) else {
            problems.push(format!(
                "{name}: sets no {drain_variable}: set the drain timeout explicitly (the binary's default is {:?}), so it is seen beside kill_timeout",
                help.defaults.get(DRAIN_TIMEOUT_FLAG)
            ));
            continue;
        };
        let Some(drain) = nomad_duration(written) else {
            problems.push(format!(
                "{name}: {drain_variable} = {written:?} is not a duration"
            ));
            continue;
        };
        if drain + DRAIN_MARGIN > kill_timeout {
            problems.push(format!(
                "{name}: {drain_variable} {drain:?} + {DRAIN_MARGIN:?} margin exceeds kill_timeout {kill_timeout:?}: the task would be SIGKILLed before its drain ends"
            ));
        }
    }
    problems
}

/// A Go duration as Nomad reads it, in the forms the jobs use: `25s`, `1m30s`, `500ms`, `2h`.
fn nomad_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        let amount: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, nanos) = [
            ("ms", 1_000_000_u64),
            ("s", 1_000_000_000),
            ("m", 60_000_000_000),
            ("h", 3_600_000_000_000),
        ]
        .into_iter()
        .find(|(unit, _)| rest.starts_with(unit))?;
        rest = &rest[unit.len()..];
        total += Duration::from_nanos(amount.checked_mul(nanos)?);
    }
    Some(total)
}

fn task_contract_problems(
    task: &Task<'_>,
    meta_keys: &BTreeSet<String>,
    meta: &BTreeMap<String, String>,
) -> Result<Vec<String>, String> {
    let command = task
        .command()
        .iter()
        .map(|word| fill_in(word, meta_keys, meta))
        .collect::<Result<Vec<_>, _>>()?;
    let [binary, subcommand, flags @ ..] = command.as_slice() else {
        return Err(format!(
            "the command must be `BINARY SUBCOMMAND [FLAGS…]`, found {command:?}"
        ));
    };
    if !OUR_BINARIES.contains(&binary.as_str()) {
        return Err(format!(
            "`{binary}` is not one of our binaries {OUR_BINARIES:?}"
        ));
    }
    let mut environment = BTreeMap::new();
    for (name, value) in task.env() {
        let filled = fill_in(&value, meta_keys, meta)?;
        // Optional dispatch meta that a dispatch leaves out arrives empty; the binary reads empty as unset.
        let from_meta = value
            .strip_prefix("${NOMAD_META_")
            .and_then(|rest| rest.strip_suffix('}'))
            .is_some_and(|key| meta_keys.contains(key));
        if filled.is_empty() && from_meta {
            continue;
        }
        environment.insert(name, Some(filled));
    }
    Ok(deploy_checks::command_contract_problems(
        &test_support::target_bin(binary),
        binary,
        subcommand,
        flags,
        &environment,
    ))
}

/// Runs a dispatched task for real, with the environment Nomad would give it (empty optional meta included) and its
/// servers pointed at closed loopback ports: it must get past its configuration and fail at connecting (exit 1),
/// not refuse a value (clap's exit 2) or the configuration (exit 64).
///
/// `--help` stops clap before it reads variables, so this is how a variable's value, such as an empty one, is checked.
fn dispatch_run_problem(
    task: &Task<'_>,
    meta_keys: &BTreeSet<String>,
    meta: &BTreeMap<String, String>,
) -> Result<(), String> {
    let command = task
        .command()
        .iter()
        .map(|word| fill_in(word, meta_keys, meta))
        .collect::<Result<Vec<_>, _>>()?;
    let [binary, arguments @ ..] = command.as_slice() else {
        return Err("the task runs no command".to_string());
    };
    let folder =
        tempfile::tempdir().map_err(|err| format!("cannot create a temporary folder: {err}"))?;
    let secret = folder.path().join("secret");
    std::fs::write(&secret, "not-a-real-secret")
        .map_err(|err| format!("cannot write {}: {err}", secret.display()))?;
    let closed_port = test_support::free_port();
    let mut run = std::process::Command::new(test_support::target_bin(binary));
    run.args(arguments).env_clear();
    for (name, value) in task.env() {
        let value = match name.as_str() {
            "NATS_URL" => format!("nats://127.0.0.1:{closed_port}"),
            "CLICKHOUSE_URL" => format!("http://127.0.0.1:{closed_port}"),
            _ if name.ends_with("_FILE") => secret.display().to_string(),
            _ => fill_in(&value, meta_keys, meta)?,
        };
        run.env(name, value);
    }
    run.env("NATS_CONNECT_TIMEOUT", "2s");
    let output = run
        .output()
        .map_err(|err| format!("cannot run {binary}: {err}"))?;
    match output.status.code() {
        Some(1) => Ok(()),
        other => Err(format!(
            "run as dispatched (servers on a closed port), `{}` should fail at connecting (exit 1), but exited {other:?}: {}",
            command.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// `text` with every runtime interpolation replaced by its sample (or the dispatch's meta value).
fn fill_in(
    text: &str,
    meta_keys: &BTreeSet<String>,
    meta: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut filled = text.to_string();
    for reference in interpolations(text, true) {
        let sample = runtime_sample(&reference, meta_keys, meta)
            .ok_or_else(|| format!("unknown Nomad runtime variable `${{{reference}}}`"))?;
        filled = filled.replace(&format!("${{{reference}}}"), &sample);
    }
    Ok(filled)
}

/// The sample value of a runtime interpolation, `None` when Nomad does not know it.
fn runtime_sample(
    reference: &str,
    meta_keys: &BTreeSet<String>,
    meta: &BTreeMap<String, String>,
) -> Option<String> {
    if let Some(key) = reference.strip_prefix("NOMAD_META_") {
        return meta_keys
            .contains(key)
            .then(|| meta.get(key).cloned().unwrap_or_default());
    }
    NOMAD_RUNTIME_VARIABLES
        .iter()
        .find(|(name, _)| *name == reference)
        .map(|(_, sample)| (*sample).to_string())
}

// --- helpers -------------------------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    test_support::workspace_root()
}

fn job_path(file: &str) -> PathBuf {
    workspace_root().join(JOBS_DIR).join(file)
}

fn load_job(file: &str) -> JobFile {
    JobFile::load(&job_path(file)).unwrap_or_else(|problem| panic!("{problem}"))
}

fn job_files(folder: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(folder)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", folder.display()));
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().ends_with(JOB_SUFFIX))
        })
        .collect();
    files.sort();
    files
}

fn read_file(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

fn prefixed(file: &str, problems: Vec<String>) -> Vec<String> {
    problems
        .into_iter()
        .map(|problem| format!("{file}: {problem}"))
        .collect()
}

fn first_label(block: &Block) -> String {
    block
        .labels()
        .first()
        .map(|label| label.as_str().to_string())
        .unwrap_or_default()
}

fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|attribute| attribute.key() == key)
        .map(|attribute| attribute.expr())
}

fn blocks<'a>(body: &'a Body, identifier: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks()
        .filter(move |block| block.identifier() == identifier)
}

fn block<'a>(body: &'a Body, identifier: &'a str) -> Option<&'a Block> {
    blocks(body, identifier).next()
}

/// An evaluated scalar as text: strings as they are, numbers and booleans printed.
fn text(expression: &Expression) -> Option<String> {
    match expression {
        Expression::String(text) => Some(text.clone()),
        Expression::Number(number) => Some(number.to_string()),
        Expression::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn texts(expression: &Expression) -> Option<Vec<String>> {
    match expression {
        Expression::Array(items) => items.iter().map(text).collect(),
        _ => None,
    }
}

fn number(expression: &Expression) -> Option<f64> {
    match expression {
        Expression::Number(number) => number.as_f64(),
        _ => None,
    }
}

fn boolean(expression: &Expression) -> Option<bool> {
    match expression {
        Expression::Bool(flag) => Some(*flag),
        _ => None,
    }
}

fn value_text(value: &hcl::Value) -> Option<String> {
    match value {
        hcl::Value::String(text) => Some(text.clone()),
        hcl::Value::Number(number) => Some(number.to_string()),
        hcl::Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// An expression as written in HCL: `var.partitions`, `"${var.image_repository}:${var.image_tag}"`.
fn written(expression: &Expression) -> String {
    expression.to_string()
}

/// Every string in `body`, nested blocks, arrays and objects included.
fn collect_strings(body: &Body, strings: &mut Vec<String>) {
    for attribute in body.attributes() {
        collect_expression_strings(attribute.expr(), strings);
    }
    for block in body.blocks() {
        collect_strings(block.body(), strings);
    }
}

fn collect_expression_strings(expression: &Expression, strings: &mut Vec<String>) {
    match expression {
        Expression::String(text) => strings.push(text.clone()),
        Expression::Array(items) => {
            for item in items {
                collect_expression_strings(item, strings);
            }
        }
        Expression::Object(object) => {
            for value in object.values() {
                collect_expression_strings(value, strings);
            }
        }
        _ => {}
    }
}
