//! Checks of the deployment files against each other and against the real binaries.
//!
//! No Docker engine is available where these run, so nothing here starts a container: compose.yaml is validated by
//! `docker-compose config`, read as YAML for its invariants, and its commands and variables are checked against the
//! `--help` of the binaries the workspace builds (`cargo build --workspace --bins` first).
//!
//! Layout: the tests, grouped by file; then the compose model (`Compose`, `Service`); then the contract check, whose
//! `--help` reader is shared with the Nomad jobs' tests (`deploy_checks`, src/lib.rs); then small helpers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deploy_checks::{
    assert_mentions, assert_no_problems, command_contract_problems, flag_value, run_command,
    HelpText, OUR_BINARIES,
};
use serde_norway::{Mapping, Value};

/// The compose file, relative to the workspace root.
const COMPOSE_FILE: &str = "compose.yaml";
/// Compose's variables file, read from the compose file's folder; it names the project.
const COMPOSE_ENV_FILE: &str = ".env";
/// The compose project, and so the prefix of its containers, network and volumes.
const PROJECT_NAME: &str = "nomadwave";
/// The image build, relative to the workspace root.
const DOCKERFILE: &str = "Dockerfile";
/// What the image build leaves out, relative to the workspace root.
const DOCKERIGNORE: &str = ".dockerignore";
/// The broker config compose mounts, relative to the workspace root.
const MOSQUITTO_CONFIG: &str = "deploy/mosquitto/mosquitto.conf";
/// Where the eclipse-mosquitto image reads its config.
const MOSQUITTO_CONFIG_IN_CONTAINER: &str = "/mosquitto/config/mosquitto.conf";
/// The script the Dockerfile builds its dependency layer with, relative to the workspace root.
const SKELETON_SCRIPT: &str = "deploy/docker/cargo-skeleton.sh";

/// The image every service of ours runs, built from [`DOCKERFILE`].
const OUR_IMAGE: &str = "nomadwave-ingest:local";

/// Services that may run without a health check, and why.
///
/// Each must say `healthcheck: {disable: true}`, have a restart policy, and have no service depending on it.
const SERVICES_WITHOUT_HEALTHCHECK: [(&str, &str); 1] = [(
    "edge-sim",
    "the simulated Pi swarm is a load generator without an HTTP endpoint",
)];

/// The only restart policy used: every service is long-running and comes back after a crash or a reboot.
const RESTART_POLICY: &str = "unless-stopped";

/// The conditions compose accepts in a `depends_on` entry.
const DEPENDENCY_CONDITIONS: [&str; 3] = [
    "service_started",
    "service_healthy",
    "service_completed_successfully",
];

/// The first mosquitto release that treats `max_queued_messages 0` as unlimited again.
///
/// 2.0.16 broke it (fixed in 2.0.17, upstream #2879) and 2.0.21 broke it again (fixed in 2.0.22, upstream #3244).
const MOSQUITTO_MIN_VERSION: [u32; 3] = [2, 0, 22];

// --- compose.yaml: validity and invariants -------------------------------------------------------------------------

#[test]
fn compose_file_is_valid_for_docker_compose() {
    let output = run_docker_compose_config(&workspace_file(COMPOSE_FILE));
    assert!(
        output.status.success(),
        "`docker-compose -f {COMPOSE_FILE} config -q` failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn compose_project_is_named_nomadwave() {
    // docker-compose 1.29 refuses a top-level `name:` in compose.yaml, so the name comes from `.env`, which
    // docker-compose and `docker compose` both read from the compose file's folder.
    let project_name = read_workspace_file(COMPOSE_ENV_FILE)
        .lines()
        .find_map(|line| line.trim().strip_prefix("COMPOSE_PROJECT_NAME="))
        .map(str::to_string);
    assert_eq!(
        project_name.as_deref(),
        Some(PROJECT_NAME),
        "{COMPOSE_ENV_FILE} must set COMPOSE_PROJECT_NAME={PROJECT_NAME}"
    );
}

#[test]
fn every_service_has_a_health_check_or_a_documented_reason() {
    let compose = Compose::load(&workspace_file(COMPOSE_FILE));
    let mut problems = Vec::new();
    for service in compose.services.values() {
        let exemption = SERVICES_WITHOUT_HEALTHCHECK
            .iter()
            .find(|(name, _)| *name == service.name);
        match (service.healthcheck(), exemption) {
            (Healthcheck::Test(_), None) => {}
            (Healthcheck::Test(_), Some(_)) => problems.push(format!(
                "`{}` has a health check now: remove it from SERVICES_WITHOUT_HEALTHCHECK",
                service.name
            )),
            (Healthcheck::Disabled, Some(_)) => {
                let dependents = compose.dependents_of(&service.name);
                if !dependents.is_empty() {
                    problems.push(format!(
                        "`{}` has no health check, yet {dependents:?} depend on it",
                        service.name
                    ));
                }
            }
            (Healthcheck::Disabled, None) => problems.push(format!(
                "`{}` disables its health check: give it one, or list it in SERVICES_WITHOUT_HEALTHCHECK with the reason",
                service.name
            )),
            (Healthcheck::Absent, _) => problems.push(format!(
                "`{}` has no `healthcheck:` (say `disable: true` and list it in SERVICES_WITHOUT_HEALTHCHECK if it truly cannot have one)",
                service.name
            )),
        }
        if service.string("restart") != Some(RESTART_POLICY) {
            problems.push(format!(
                "`{}` has restart policy {:?}, expected `{RESTART_POLICY}`",
                service.name,
                service.string("restart")
            ));
        }
    }
    assert_no_problems("health checks and restart policies", &problems);
}

#[test]
fn our_health_checks_probe_the_address_the_service_listens_on() {
    let compose = Compose::load(&workspace_file(COMPOSE_FILE));
    let dockerfile = read_workspace_file(DOCKERFILE);
    let mut problems = Vec::new();
    for service in compose.services.values() {
        if service.our_binary().is_none() {
            continue;
        }
        let Healthcheck::Test(test) = service.healthcheck() else {
            continue;
        };
        if test.first().map(String::as_str) != Some("CMD") {
            problems.push(format!(
                "`{}`: write the health check as [\"CMD\", program, args…]",
                service.name
            ));
            continue;
        }
        let program = test.get(1).map(String::as_str).unwrap_or_default();
        if !dockerfile
            .lines()
            .any(|line| line.contains("apt-get install") && line.contains(program))
        {
            problems.push(format!(
                "`{}`: the health check runs `{program}`, which {DOCKERFILE} does not install",
                service.name
            ));
        }
        let listen = service
            .environment()
            .get("HTTP_LISTEN")
            .cloned()
            .flatten()
            .or_else(|| flag_value(&service.command_words(), "--listen"));
        let Some(listen) = listen else {
            problems.push(format!(
                "`{}`: a health check but no HTTP_LISTEN or --listen to probe",
                service.name
            ));
            continue;
        };
        let port = listen.rsplit(':').next().unwrap_or_default();
        if !test
            .iter()
            .any(|word| word.contains(&format!("127.0.0.1:{port}/")))
        {
            problems.push(format!(
                "`{}` listens on {listen}, but its health check probes {test:?}",
                service.name
            ));
        }
    }
    assert_no_problems("health checks of our services", &problems);
}

#[test]
fn every_dependency_waits_on_a_condition() {
    let compose = Compose::load(&workspace_file(COMPOSE_FILE));
    let mut problems = Vec::new();
    for service in compose.services.values() {
        for dependency in service.dependencies() {
            let Some(target) = compose.services.get(&dependency.service) else {
                problems.push(format!(
                    "`{}` depends on `{}`, which is not a service",
                    service.name, dependency.service
                ));
                continue;
            };
            match dependency.condition.as_deref() {
                None => problems.push(format!(
                    "`{}` depends on `{}` without a condition (use the long form with `condition:`)",
                    service.name, dependency.service
                )),
                Some(condition) if !DEPENDENCY_CONDITIONS.contains(&condition) => {
                    problems.push(format!(
                        "`{}` waits for `{}` with unknown condition `{condition}`",
                        service.name, dependency.service
                    ))
                }
                Some("service_healthy") if !matches!(target.healthcheck(), Healthcheck::Test(_)) => {
                    problems.push(format!(
                        "`{}` waits for `{}` to be healthy, but it has no health check",
                        service.name, dependency.service
                    ))
                }
                Some(_) => {}
            }
        }
    }
    assert_no_problems("depends_on", &problems);
}

#[test]
fn every_image_is_pinned() {
    let compose = Compose::load(&workspace_file(COMPOSE_FILE));
    let mut problems = Vec::new();
    for service in compose.services.values() {
        match service.string("image") {
            None => problems.push(format!(
                "`{}` names no image (ours must be tagged {OUR_IMAGE})",
                service.name
            )),
            Some(image) => {
                if let Err(problem) = check_image_pinned(image) {
                    problems.push(format!("`{}`: {problem}", service.name));
                }
            }
        }
    }
    assert_no_problems("image pins", &problems);
}

#[test]
fn our_services_run_the_image_built_from_the_dockerfile() {
    let compose = Compose::load(&workspace_file(COMPOSE_FILE));
    let mut problems = Vec::new();
    for service in compose.services.values() {
        let is_ours = service.our_binary().is_some();
        let runs_our_image = service.string("image") == Some(OUR_IMAGE);
        let builds = service.value("build").is_some();
        if runs_our_image || builds {
            let Some(first_word) = service.command_words().first().cloned() else {
                problems.push(format!(
                    "`{}` runs our image without a command (the image has no entrypoint)",
                    service.name
                ));
                continue;
            };
            if !is_ours {
                problems.push(format!(
                    "`{}` runs `{first_word}`, which the image does not ship ({OUR_BINARIES:?})",
                    service.name
                ));
            }
        }
        if !is_ours {
            continue;
        }
        if !runs_our_image {
            problems.push(format!(
                "`{}` runs {:?}, expected image {OUR_IMAGE}",
                service.name,
                service.string("image")
            ));
        }
        let context = service.value("build").and_then(|build| match build {
            Value::String(context) => Some((context.clone(), None)),
            Value::Mapping(build) => Some((
                text_of(build.get("context")).unwrap_or_default(),
                text_of(build.get("dockerfile")),
            )),
            _ => None,
        });
        match context {
            Some((context, dockerfile))
                if context == "." && dockerfile.as_deref().unwrap_or(DOCKERFILE) == DOCKERFILE => {}
            other => problems.push(format!(
                "`{}` must build from context `.` and {DOCKERFILE}, found {other:?}",
                service.name
            )),
        }
        if !matches!(service.command(), CommandLine::List(_)) {
            problems.push(format!(
                "`{}`: write `command:` as a list; compose splits a string at spaces (`--sites Tathra,Port Kembla` would break)",
                service.name
            ));
        }
    }
    assert_no_problems("our services", &problems);
}

#[test]
fn secrets_come_from_files_that_exist() {
    let compose = Compose::load(&workspace_file(COMPOSE_FILE));
    let mut problems = Vec::new();
    for service in compose.services.values() {
        for secret in service.secrets() {
            let Some(declaration) = compose.secrets.get(&secret) else {
                problems.push(format!(
                    "`{}` uses secret `{secret}`, which is not declared under `secrets:`",
                    service.name
                ));
                continue;
            };
            let Some(file) = text_of(declaration.get("file")) else {
                problems.push(format!("secret `{secret}` names no `file:`"));
                continue;
            };
            let path = workspace_root().join(&file);
            match std::fs::read_to_string(&path) {
                Err(err) => problems.push(format!(
                    "secret `{secret}`: cannot read {}: {err}",
                    path.display()
                )),
                Ok(text) => {
                    let lines: Vec<&str> = text.lines().collect();
                    if lines.len() != 1 || lines[0].trim().is_empty() || lines[0].contains('#') {
                        problems.push(format!(
                            "secret `{secret}`: {} must hold the value alone on one line, without comments",
                            path.display()
                        ));
                    }
                }
            }
        }
    }
    for service in compose.services.values() {
        let mounted = service.secrets();
        for (name, value) in service.environment() {
            let Some(secret) = value
                .as_deref()
                .and_then(|value| value.strip_prefix("/run/secrets/"))
            else {
                continue;
            };
            if !mounted.iter().any(|mounted| mounted == secret) {
                problems.push(format!(
                    "`{}`: {name} reads /run/secrets/{secret}, but the service does not list secret `{secret}`",
                    service.name
                ));
            }
        }
    }
    assert_no_problems("secrets", &problems);
}

// --- compose.yaml: the contract with the binaries ------------------------------------------------------------------

#[test]
fn compose_flags_and_variables_are_in_the_binaries_help() {
    let compose = Compose::load(&workspace_file(COMPOSE_FILE));
    let problems = contract_problems(&compose);
    assert_no_problems(
        "compose.yaml against the binaries' --help (build them with `cargo build --workspace --bins`)",
        &problems,
    );
}

#[test]
fn contract_check_catches_unknown_flags_variables_and_values() {
    let folder = tempfile::tempdir().expect("a temporary folder can be created");
    let sink_only = |change: &dyn Fn(&mut Mapping)| -> Compose {
        let mut document = load_yaml(&workspace_file(COMPOSE_FILE));
        let services = document
            .get_mut("services")
            .and_then(Value::as_mapping_mut)
            .expect("compose.yaml has a services mapping");
        services.retain(|name, _| name.as_str() == Some("sink"));
        let sink = services
            .get_mut("sink")
            .and_then(Value::as_mapping_mut)
            .expect("compose.yaml has a `sink` service");
        change(sink);
        let path = folder.path().join("compose.yaml");
        let text = serde_norway::to_string(&document).expect("a YAML value serializes");
        std::fs::write(&path, text).expect("the temporary compose file can be written");
        Compose::load(&path)
    };

    let unchanged = contract_problems(&sink_only(&|_| {}));
    assert!(
        unchanged.is_empty(),
        "the unchanged sink service should pass: {unchanged:#?}"
    );

    let unknown_flag = contract_problems(&sink_only(&|sink| {
        push_command_word(sink, "--no-such-flag");
    }));
    assert_mentions(
        &unknown_flag,
        "`--no-such-flag` is not a flag of `sink-clickhouse run`",
    );

    let unknown_variable = contract_problems(&sink_only(&|sink| {
        set_variable(sink, "SINK_NO_SUCH_SETTING", "1");
    }));
    assert_mentions(
        &unknown_variable,
        "`SINK_NO_SUCH_SETTING` is read by neither",
    );

    let bad_value = contract_problems(&sink_only(&|sink| {
        set_variable(sink, "LOG_FORMAT", "yaml");
    }));
    assert_mentions(&bad_value, "does not parse");

    let flag_and_variable = contract_problems(&sink_only(&|sink| {
        push_command_word(sink, "--consumer=sink-a");
        set_variable(sink, "SINK_CONSUMER", "sink-b");
    }));
    assert_mentions(&flag_and_variable, "does not parse");

    let unknown_subcommand = contract_problems(&sink_only(&|sink| {
        sink.insert(
            "command".into(),
            Value::Sequence(vec!["sink-clickhouse".into(), "serve".into()]),
        );
    }));
    assert_mentions(&unknown_subcommand, "`sink-clickhouse serve --help` failed");
}

/// Our compose services and the Nomad job each one mirrors.
const SERVICE_JOBS: [(&str, &str); 5] = [
    ("sink", "jobs/sink-clickhouse.nomad.hcl"),
    ("ingest-wave", "jobs/ingest-wave.nomad.hcl"),
    ("ingest-wx", "jobs/ingest-wx.nomad.hcl"),
    ("ingest-carbon", "jobs/ingest-carbon.nomad.hcl"),
    ("bridge", "jobs/ingest-wave-bridge.nomad.hcl"),
];

#[test]
fn memory_limits_match_the_nomad_jobs() {
    let compose = Compose::load(&workspace_file(COMPOSE_FILE));
    let mut problems = Vec::new();
    for (name, job) in SERVICE_JOBS {
        let Some(service) = compose.services.get(name) else {
            problems.push(format!("no service `{name}`"));
            continue;
        };
        let job_memory = job_memory_mib(&read_workspace_file(job));
        let limit = service
            .value("mem_limit")
            .or_else(|| {
                service
                    .value("deploy")
                    .and_then(|deploy| deploy.get("resources"))
                    .and_then(|resources| resources.get("limits"))
                    .and_then(|limits| limits.get("memory"))
            })
            .and_then(scalar_text);
        match (limit.as_deref().and_then(memory_mib), job_memory) {
            (_, None) => problems.push(format!("{job}: no `resources {{ memory = … }}`")),
            (None, _) => problems.push(format!(
                "`{name}` has no memory limit (`mem_limit`, as {job} reserves {job_memory:?} MiB), found {limit:?}"
            )),
            (Some(limit), Some(memory)) if limit != memory => problems.push(format!(
                "`{name}` is limited to {limit} MiB, but {job} reserves {memory} MiB"
            )),
            _ => {}
        }
    }
    assert_eq!(memory_mib("512m"), Some(512));
    assert_eq!(memory_mib("1g"), Some(1024));
    assert_eq!(memory_mib("128M"), Some(128));
    assert_no_problems("compose memory limits against the Nomad jobs", &problems);
}

/// `resources { memory = N }` of a job's task, in MiB as Nomad counts it.
fn job_memory_mib(text: &str) -> Option<u64> {
    let body: hcl::Body = hcl::parse(text).ok()?;
    fn find(body: &hcl::Body) -> Option<u64> {
        for block in body.blocks() {
            if block.identifier() == "resources" {
                return block
                    .body()
                    .attributes()
                    .find(|attribute| attribute.key() == "memory")
                    .and_then(|attribute| match attribute.expr() {
                        hcl::Expression::Number(number) => number.as_u64(),
                        _ => None,
                    });
            }
            if let Some(found) = find(block.body()) {
                return Some(found);
            }
        }
        None
    }
    find(&body)
}

/// A compose memory size (`512m`, `1g`, `128M`) in MiB.
fn memory_mib(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let text = text.strip_suffix('b').unwrap_or(&text);
    let (digits, factor) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 1.0 / 1024.0),
        'm' => (&text[..text.len() - 1], 1.0),
        'g' => (&text[..text.len() - 1], 1024.0),
        _ => (text, 1.0 / (1024.0 * 1024.0)),
    };
    let mib = digits.parse::<f64>().ok()? * factor;
    (mib.fract() == 0.0).then_some(mib as u64)
}

// --- Dockerfile ----------------------------------------------------------------------------------------------------

#[test]
fn dockerfile_ships_every_binary_from_pinned_images() {
    let dockerfile = read_workspace_file(DOCKERFILE);
    let instructions = dockerfile_instructions(&dockerfile);
    let mut problems = Vec::new();
    let mut stages = BTreeSet::new();
    for (instruction, arguments) in &instructions {
        match instruction.as_str() {
            "FROM" => {
                let words: Vec<&str> = arguments.split_whitespace().collect();
                let image = words.first().copied().unwrap_or_default();
                if !stages.contains(image) {
                    if let Err(problem) = check_image_pinned(image) {
                        problems.push(format!("FROM {arguments}: {problem}"));
                    }
                }
                if let [_, as_word, stage] = words.as_slice() {
                    if as_word.eq_ignore_ascii_case("as") {
                        stages.insert(stage.to_string());
                    }
                }
            }
            "ENTRYPOINT" => problems.push(format!(
                "ENTRYPOINT {arguments}: every service names its binary in `command:`, so the image has no entrypoint"
            )),
            _ => {}
        }
    }
    for binary in OUR_BINARIES {
        let expected = format!("/src/target/release/{binary} /usr/local/bin/{binary}");
        if !instructions
            .iter()
            .any(|(instruction, arguments)| instruction == "COPY" && arguments.ends_with(&expected))
        {
            problems.push(format!("no `COPY --from=builder {expected}`"));
        }
        if !dockerfile.contains(&format!("-p {binary}")) {
            problems.push(format!(
                "the build does not name package `{binary}` (-p {binary})"
            ));
        }
    }
    // The dependency layer compiles stub sources; the real ones copied later can look older to cargo (COPY keeps
    // their times), which would ship the stubs' empty `main` unless every source is touched before the last build.
    let sources_copied = instructions
        .iter()
        .rposition(|(instruction, arguments)| instruction == "COPY" && arguments == ". .");
    let touched_then_built = sources_copied
        .and_then(|copy_idx| instructions.get(copy_idx + 1))
        .is_some_and(|(instruction, arguments)| {
            instruction == "RUN"
                && arguments.contains("-exec touch")
                && arguments.contains("cargo build")
        });
    if !touched_then_built {
        problems.push(
            "the last `COPY . .` must be followed by a RUN that touches every source, then builds"
                .to_string(),
        );
    }
    if !dockerfile.contains("cargo build --release --locked --bins") {
        problems.push("the build must run `cargo build --release --locked --bins`".to_string());
    }
    match instructions
        .iter()
        .rev()
        .find(|(instruction, _)| instruction == "USER")
    {
        Some((_, user)) => {
            // Numeric, so checks that cannot read the image's /etc/passwd (Kubernetes' runAsNonRoot) see non-root.
            let ids: Vec<&str> = user.split(':').collect();
            let numeric = ids.len() <= 2
                && ids
                    .iter()
                    .all(|id| !id.is_empty() && id.chars().all(|digit| digit.is_ascii_digit()));
            if !numeric || ids.iter().any(|id| id.parse::<u32>() == Ok(0)) {
                problems.push(format!(
                    "the runtime stage must run as a numeric non-root USER UID:GID, found {user:?}"
                ));
            } else if !dockerfile.contains(&format!("--uid {}", ids[0])) {
                problems.push(format!(
                    "USER {user}: no user is created with `--uid {}`",
                    ids[0]
                ));
            }
        }
        None => problems.push("the runtime stage must run as a non-root USER".to_string()),
    }
    assert_no_problems(DOCKERFILE, &problems);
}

#[test]
fn dockerfile_dependency_skeleton_resolves_with_the_lockfile() {
    let folder = tempfile::tempdir().expect("a temporary folder can be created");
    let skeleton = folder.path().join("skeleton");
    let output = run_command(
        Command::new("sh")
            .arg(workspace_file(SKELETON_SCRIPT))
            .arg(workspace_root())
            .arg(&skeleton),
    );
    assert!(
        output.status.success(),
        "{SKELETON_SCRIPT} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let skeleton_members = workspace_members(&skeleton);
    let real_members = workspace_members(&workspace_root());
    assert_eq!(
        skeleton_members, real_members,
        "the skeleton the Dockerfile builds dependencies from must hold the same workspace members"
    );
}

#[test]
fn dockerignore_keeps_build_output_and_secrets_out() {
    let patterns: BTreeSet<String> = read_workspace_file(DOCKERIGNORE)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    for required in ["target", ".data", ".git", "deploy/secrets"] {
        assert!(
            patterns.contains(required),
            "{DOCKERIGNORE} must exclude `{required}`; it has {patterns:?}"
        );
    }
}

// --- mosquitto ----------------------------------------------------------------------------------------------------

#[test]
fn mosquitto_config_keeps_persistent_sessions_and_their_queues() {
    let settings = mosquitto_settings(&read_workspace_file(MOSQUITTO_CONFIG));
    let mut problems = Vec::new();
    for (option, expected) in [
        ("persistence", "true"),
        ("persistence_location", "/mosquitto/data/"),
        ("max_queued_messages", "0"),
        ("max_queued_bytes", "0"),
        ("autosave_on_changes", "false"),
        ("allow_anonymous", "true"),
        ("listener", "1883"),
    ] {
        let found = settings.get(option).map(String::as_str);
        if found != Some(expected) {
            problems.push(format!("`{option}` is {found:?}, expected `{expected}`"));
        }
    }
    match settings
        .get("autosave_interval")
        .map(|seconds| seconds.parse::<u32>())
    {
        Some(Ok(seconds)) if (1..=60).contains(&seconds) => {}
        other => problems.push(format!(
            "`autosave_interval` should be a short time in seconds (1-60), found {other:?}"
        )),
    }
    for option in ["persistent_client_expiration", "max_inflight_messages"] {
        if !settings.contains_key(option) {
            problems.push(format!("`{option}` is not set"));
        }
    }
    assert_no_problems(MOSQUITTO_CONFIG, &problems);
}

#[test]
fn compose_mounts_the_mosquitto_config_and_persists_its_data() {
    let compose = Compose::load(&workspace_file(COMPOSE_FILE));
    let mosquitto = compose
        .services
        .values()
        .find(|service| {
            service
                .string("image")
                .is_some_and(|image| image.starts_with("eclipse-mosquitto:"))
        })
        .expect("compose.yaml runs an eclipse-mosquitto service");
    let mounts = mosquitto.volume_mounts();

    let config_mount = mounts
        .iter()
        .find(|mount| mount.target == MOSQUITTO_CONFIG_IN_CONTAINER)
        .unwrap_or_else(|| {
            panic!(
                "`{}` mounts nothing at {MOSQUITTO_CONFIG_IN_CONTAINER}",
                mosquitto.name
            )
        });
    assert_eq!(
        normalize_relative(&config_mount.source),
        MOSQUITTO_CONFIG,
        "the mounted config must be the checked one"
    );
    assert_eq!(
        config_mount.mode.as_deref(),
        Some("ro"),
        "mount the config read-only"
    );

    let settings = mosquitto_settings(&read_workspace_file(MOSQUITTO_CONFIG));
    let data_folder = settings
        .get("persistence_location")
        .map(|location| location.trim_end_matches('/').to_string())
        .expect("the config sets persistence_location");
    let data_mount = mounts
        .iter()
        .find(|mount| mount.target == data_folder)
        .unwrap_or_else(|| panic!("`{}` keeps {data_folder} on no volume: the queues would not survive a new container", mosquitto.name));
    assert!(
        compose.volumes.contains(&data_mount.source),
        "`{}` must be a named volume declared under `volumes:`",
        data_mount.source
    );

    let image = mosquitto.string("image").unwrap_or_default();
    let version = image_version(image);
    assert!(
        version.as_ref().is_some_and(|version| version.as_slice() >= MOSQUITTO_MIN_VERSION.as_slice()),
        "{image}: `max_queued_messages 0` needs mosquitto {MOSQUITTO_MIN_VERSION:?} or later; pin a full version that is at least that"
    );
}

#[test]
fn real_mosquitto_accepts_the_config() {
    // The listener and the data folder are test-support's own (a free loopback port, a temporary folder); every other
    // option of the file is handed to the real broker, which refuses to start on an unknown option or a bad value.
    let extra_config: String = read_workspace_file(MOSQUITTO_CONFIG)
        .lines()
        .filter(|line| {
            let option = line.split_whitespace().next().unwrap_or_default();
            !matches!(option, "listener" | "persistence_location" | "log_dest")
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let broker =
        test_support::MosquittoServer::start_with_config("deploy-checks-mosquitto", &extra_config);
    assert!(test_support::probe::tcp_accepts(broker.port()));
}

#[test]
fn mosquitto_sends_the_bridge_as_many_messages_as_it_works_on() {
    let compose = Compose::load(&workspace_file(COMPOSE_FILE));
    let bridge = compose
        .services
        .values()
        .find(|service| {
            service
                .command_words()
                .starts_with(&["ingest-wave".to_string(), "bridge".to_string()])
        })
        .expect("compose.yaml runs `ingest-wave bridge`");
    let help = HelpText::of(
        &test_support::target_bin("ingest-wave"),
        &["bridge".to_string()],
    )
    .unwrap_or_else(|problem| panic!("{problem}"));
    let bridge_in_flight: u32 = setting_of(&help, bridge, "--in-flight")
        .and_then(|value| value.parse().ok())
        .expect("the bridge's --in-flight has a numeric value or default");
    let settings = mosquitto_settings(&read_workspace_file(MOSQUITTO_CONFIG));
    let window: u32 = settings
        .get("max_inflight_messages")
        .and_then(|value| value.parse().ok())
        .expect("the mosquitto config sets a numeric max_inflight_messages");
    assert!(
        window == 0 || window >= bridge_in_flight,
        "mosquitto's max_inflight_messages {window} caps the bridge below its --in-flight {bridge_in_flight}"
    );
}

// --- the compose model ---------------------------------------------------------------------------------------------

/// A compose file, read as YAML with its `<<` merge keys applied.
struct Compose {
    services: BTreeMap<String, Service>,
    secrets: BTreeMap<String, Mapping>,
    volumes: BTreeSet<String>,
}

/// One service of a [`Compose`] file.
struct Service {
    name: String,
    definition: Mapping,
}

/// A service's `command:`.
enum CommandLine {
    Absent,
    /// Compose splits it at spaces, shell-style.
    Text(String),
    List(Vec<String>),
}

/// A service's `healthcheck:`.
enum Healthcheck {
    Absent,
    Disabled,
    Test(Vec<String>),
}

/// One `depends_on` entry.
struct Dependency {
    service: String,
    condition: Option<String>,
}

/// One short-syntax `volumes:` entry, `SOURCE:TARGET[:MODE]`.
struct VolumeMount {
    source: String,
    target: String,
    mode: Option<String>,
}

impl Compose {
    fn load(path: &Path) -> Compose {
        let document = load_yaml(path);
        let services = document
            .get("services")
            .and_then(Value::as_mapping)
            .unwrap_or_else(|| panic!("{} has no `services:` mapping", path.display()))
            .iter()
            .map(|(name, definition)| {
                let name = name
                    .as_str()
                    .expect("service names are strings")
                    .to_string();
                let definition = definition
                    .as_mapping()
                    .unwrap_or_else(|| panic!("service `{name}` is not a mapping"))
                    .clone();
                (name.clone(), Service { name, definition })
            })
            .collect();
        let secrets = mapping_entries(document.get("secrets"))
            .into_iter()
            .map(|(name, value)| (name, value.as_mapping().cloned().unwrap_or_default()))
            .collect();
        let volumes = mapping_entries(document.get("volumes"))
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        Compose {
            services,
            secrets,
            volumes,
        }
    }

    fn dependents_of(&self, name: &str) -> Vec<String> {
        self.services
            .values()
            .filter(|service| {
                service
                    .dependencies()
                    .iter()
                    .any(|dependency| dependency.service == name)
            })
            .map(|service| service.name.clone())
            .collect()
    }
}

impl Service {
    fn value(&self, key: &str) -> Option<&Value> {
        self.definition.get(key)
    }

    fn string(&self, key: &str) -> Option<&str> {
        self.value(key).and_then(Value::as_str)
    }

    fn command(&self) -> CommandLine {
        match self.value("command") {
            None | Some(Value::Null) => CommandLine::Absent,
            Some(Value::String(text)) => CommandLine::Text(text.clone()),
            Some(Value::Sequence(words)) => CommandLine::List(
                words
                    .iter()
                    .map(|word| scalar_text(word).unwrap_or_default())
                    .collect(),
            ),
            Some(other) => panic!(
                "service `{}` has a command that is neither text nor a list: {other:?}",
                self.name
            ),
        }
    }

    /// The command's words; a text command split at whitespace, which is close enough for finding the binary.
    fn command_words(&self) -> Vec<String> {
        match self.command() {
            CommandLine::Absent => Vec::new(),
            CommandLine::Text(text) => text.split_whitespace().map(str::to_string).collect(),
            CommandLine::List(words) => words,
        }
    }

    /// The binary of ours the command starts with, if any.
    fn our_binary(&self) -> Option<&'static str> {
        let first_word = self.command_words().into_iter().next()?;
        OUR_BINARIES
            .into_iter()
            .find(|binary| *binary == first_word)
    }

    /// `environment:` in either form; `None` for a variable passed through from the host without a value.
    fn environment(&self) -> BTreeMap<String, Option<String>> {
        match self.value("environment") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Mapping(variables)) => variables
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str()
                            .expect("variable names are strings")
                            .to_string(),
                        scalar_text(value),
                    )
                })
                .collect(),
            Some(Value::Sequence(entries)) => entries
                .iter()
                .filter_map(Value::as_str)
                .map(|entry| match entry.split_once('=') {
                    Some((name, value)) => (name.to_string(), Some(value.to_string())),
                    None => (entry.to_string(), None),
                })
                .collect(),
            Some(other) => panic!(
                "service `{}` has an unreadable environment: {other:?}",
                self.name
            ),
        }
    }

    fn healthcheck(&self) -> Healthcheck {
        let Some(healthcheck) = self.value("healthcheck").and_then(Value::as_mapping) else {
            return Healthcheck::Absent;
        };
        if healthcheck.get("disable").and_then(Value::as_bool) == Some(true) {
            return Healthcheck::Disabled;
        }
        match healthcheck.get("test") {
            Some(Value::Sequence(words)) => {
                let words: Vec<String> = words
                    .iter()
                    .map(|word| scalar_text(word).unwrap_or_default())
                    .collect();
                if words.first().map(String::as_str) == Some("NONE") {
                    Healthcheck::Disabled
                } else {
                    Healthcheck::Test(words)
                }
            }
            Some(Value::String(text)) => {
                Healthcheck::Test(vec!["CMD-SHELL".to_string(), text.clone()])
            }
            _ => Healthcheck::Absent,
        }
    }

    fn dependencies(&self) -> Vec<Dependency> {
        match self.value("depends_on") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(names)) => names
                .iter()
                .filter_map(Value::as_str)
                .map(|name| Dependency {
                    service: name.to_string(),
                    condition: None,
                })
                .collect(),
            Some(Value::Mapping(entries)) => entries
                .iter()
                .map(|(name, options)| Dependency {
                    service: name.as_str().unwrap_or_default().to_string(),
                    condition: text_of(
                        options
                            .as_mapping()
                            .and_then(|options| options.get("condition")),
                    ),
                })
                .collect(),
            Some(other) => panic!(
                "service `{}` has an unreadable depends_on: {other:?}",
                self.name
            ),
        }
    }

    fn secrets(&self) -> Vec<String> {
        match self.value("secrets") {
            Some(Value::Sequence(entries)) => entries
                .iter()
                .filter_map(|entry| match entry {
                    Value::String(name) => Some(name.clone()),
                    Value::Mapping(long_form) => text_of(long_form.get("source")),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn volume_mounts(&self) -> Vec<VolumeMount> {
        let Some(Value::Sequence(entries)) = self.value("volumes") else {
            return Vec::new();
        };
        entries
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|entry| {
                let mut parts = entry.splitn(3, ':');
                Some(VolumeMount {
                    source: parts.next()?.to_string(),
                    target: parts.next()?.to_string(),
                    mode: parts.next().map(str::to_string),
                })
            })
            .collect()
    }
}

// --- the contract check: compose against --help --------------------------------------------------------------------

/// Everything in `compose` that the binaries would not accept, one line per problem, for every service of ours.
///
/// For each service whose command starts with one of [`OUR_BINARIES`]:
/// - the subcommand exists (`BINARY SUBCOMMAND --help` succeeds);
/// - every `--flag` of the command is listed by the subcommand's `--help`;
/// - every variable of `environment:` appears as `[env: NAME=` (or `[env: NAME]` for hidden values) in the
///   binary's or the subcommand's `--help`, unless it is one of [`deploy_checks::RUNTIME_VARIABLES`];
/// - the whole command line parses, with each variable passed as its flag: this catches invalid values and a setting
///   given both as a flag and as a variable (clap refuses the flag twice; compose would silently let the flag win).
fn contract_problems(compose: &Compose) -> Vec<String> {
    let mut problems = Vec::new();
    for service in compose.services.values() {
        let Some(binary) = service.our_binary() else {
            continue;
        };
        for problem in service_contract_problems(service, binary) {
            problems.push(format!("service `{}`: {problem}", service.name));
        }
    }
    problems
}

fn service_contract_problems(service: &Service, binary: &str) -> Vec<String> {
    let CommandLine::List(command) = service.command() else {
        return vec!["write `command:` as a list".to_string()];
    };
    let Some(subcommand) = command.get(1).filter(|word| !word.starts_with('-')) else {
        return vec![format!(
            "the command must be `{binary} SUBCOMMAND [FLAGS…]`, found {command:?}"
        )];
    };
    let subcommand_flags = &command[2..];
    command_contract_problems(
        &test_support::target_bin(binary),
        binary,
        subcommand,
        subcommand_flags,
        &service.environment(),
    )
}

/// The value `service` gives `flag`: in its command, else through the flag's variable, else the default.
fn setting_of(help: &HelpText, service: &Service, flag: &str) -> Option<String> {
    if let Some(value) = flag_value(&service.command_words(), flag) {
        return Some(value);
    }
    let environment = service.environment();
    let from_variable = help
        .variables
        .iter()
        .filter(|(_, reader)| reader.as_ref().is_some_and(|reader| reader.name == flag))
        .find_map(|(name, _)| environment.get(name).cloned().flatten());
    from_variable.or_else(|| help.defaults.get(flag).cloned())
}

// --- helpers -------------------------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    test_support::workspace_root()
}

fn workspace_file(relative: &str) -> PathBuf {
    workspace_root().join(relative)
}

fn read_workspace_file(relative: &str) -> String {
    let path = workspace_file(relative);
    match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) => panic!("cannot read {}: {err}", path.display()),
    }
}

fn load_yaml(path: &Path) -> Value {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => panic!("cannot read {}: {err}", path.display()),
    };
    let mut document: Value = match serde_norway::from_str(&text) {
        Ok(document) => document,
        Err(err) => panic!("{} is not valid YAML: {err}", path.display()),
    };
    if let Err(err) = document.apply_merge() {
        panic!(
            "{}: cannot apply its `<<` merge keys: {err}",
            path.display()
        );
    }
    document
}

fn mapping_entries(value: Option<&Value>) -> Vec<(String, Value)> {
    value
        .and_then(Value::as_mapping)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|(name, value)| Some((name.as_str()?.to_string(), value.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// A YAML scalar as compose reads it: strings, numbers and booleans all become text.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn text_of(value: Option<&Value>) -> Option<String> {
    value.and_then(scalar_text)
}

fn push_command_word(service: &mut Mapping, word: &str) {
    let Some(Value::Sequence(command)) = service.get_mut("command") else {
        panic!("the sink's command is a list");
    };
    command.push(word.into());
}

fn set_variable(service: &mut Mapping, name: &str, value: &str) {
    let Some(Value::Mapping(environment)) = service.get_mut("environment") else {
        panic!("the sink's environment is a mapping");
    };
    environment.insert(name.into(), value.into());
}

/// Whether an image reference names a tag other than `latest` (or a digest).
fn check_image_pinned(image: &str) -> Result<(), String> {
    if image.contains("@sha256:") {
        return Ok(());
    }
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    match last_segment.split_once(':') {
        None => Err(format!("`{image}` has no tag, so it means `latest`")),
        Some((_, "latest")) => Err(format!("`{image}` is not pinned: `latest` moves")),
        Some((_, "")) => Err(format!("`{image}` has an empty tag")),
        Some(_) => Ok(()),
    }
}

/// The numeric version of an image tag: `[2, 0, 22]` for `eclipse-mosquitto:2.0.22`, `None` when it is not numeric.
fn image_version(image: &str) -> Option<Vec<u32>> {
    let (_, tag) = image.rsplit('/').next()?.split_once(':')?;
    tag.split('.').map(|part| part.parse().ok()).collect()
}

/// The Dockerfile's instructions with continuation lines joined: (`FROM`, `rust:1.95 AS builder`).
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(continued) => {
                pending.push_str(continued);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                let instruction = std::mem::take(&mut pending);
                if let Some((keyword, arguments)) = instruction.split_once(char::is_whitespace) {
                    instructions.push((keyword.to_ascii_uppercase(), arguments.trim().to_string()));
                }
            }
        }
    }
    instructions
}

/// mosquitto.conf's options, the last occurrence winning; comments and blank lines skipped.
fn mosquitto_settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (option, value) = line.split_once(char::is_whitespace)?;
            Some((option.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// `./deploy/x` and `deploy/x` alike.
fn normalize_relative(path: &str) -> String {
    path.trim_start_matches("./").to_string()
}

/// The manifest paths of a workspace's members, relative to its root, from `cargo metadata` with the lockfile as is.
///
/// Only the host platform is resolved, so crates for other platforms need not be downloaded.
fn workspace_members(root: &Path) -> BTreeSet<String> {
    let host = host_triple();
    let output = run_command(
        Command::new(cargo_program())
            .current_dir(root)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--locked",
                "--filter-platform",
            ])
            .arg(&host),
    );
    assert!(
        output.status.success(),
        "`cargo metadata --locked` failed in {} ({}): {}",
        root.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .expect("cargo metadata lists workspace_members")
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    let workspace_root = metadata["workspace_root"]
        .as_str()
        .expect("cargo metadata names the workspace_root");
    metadata["packages"]
        .as_array()
        .expect("cargo metadata lists packages")
        .iter()
        .filter(|package| {
            package["id"]
                .as_str()
                .is_some_and(|id| members.contains(id))
        })
        .filter_map(|package| package["manifest_path"].as_str())
        .map(|manifest| {
            manifest
                .trim_start_matches(workspace_root)
                .trim_start_matches('/')
                .to_string()
        })
        .collect()
}

fn cargo_program() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

fn host_triple() -> String {
    let output = run_command(Command::new("rustc").arg("-vV"));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("`rustc -vV` names the host triple")
        .to_string()
}

/// `docker-compose -f FILE config -q`, failing the test with the install hint when docker-compose is missing.
fn run_docker_compose_config(compose_file: &Path) -> Output {
    let mut command = Command::new("docker-compose");
    command
        .arg("-f")
        .arg(compose_file)
        .args(["config", "-q"])
        .current_dir(workspace_root());
    match command.output() {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "`docker-compose` is not installed: install the Debian package with `apt-get install -y docker-compose` \
             (`cargo xtask test` does); this check never skips"
        ),
        Err(err) => panic!("cannot run docker-compose: {err}"),
    }
}
