//! `cargo xtask install`: Debian server packages and cargo-nextest.

use std::process::{Command, Stdio};

use anyhow::Context;

use crate::shell;

/// Debian packages the tests and the local services need.
///
/// `docker-compose` is there to validate `compose.yaml` with `docker-compose config`; Docker itself is not used.
/// `prometheus` is there for `promtool`, which checks and unit-tests the alert rules in `ops/prometheus/`; its own
/// server is not started.
pub const DEBIAN_PACKAGES: [&str; 6] = [
    "nats-server",
    "mosquitto",
    "clickhouse-server",
    "clickhouse-client",
    "docker-compose",
    "prometheus",
];

/// Installs the missing Debian packages with one `apt-get update` and one `apt-get install`, then cargo-nextest.
///
/// Package post-install scripts try to start system services; where that is denied (containers) they still
/// leave the package installed, and we run our own server processes anyway.
///
/// # Errors
///
/// Fails when dpkg-query, apt-get or `cargo install` cannot run or fail, or a package is still missing afterwards.
pub fn install() -> anyhow::Result<()> {
    install_debian_packages()?;
    install_nextest()
}

fn install_debian_packages() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for package in DEBIAN_PACKAGES {
        if !is_installed(package)? {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        outln!(
            "install: Debian packages already installed: {}",
            DEBIAN_PACKAGES.join(" ")
        );
        return Ok(());
    }

    outln!(
        "install: installing missing Debian packages: {}",
        missing.join(" ")
    );
    shell::run_checked(&mut shell::privileged("apt-get", &["update"], &[]))
        .context("apt-get update failed")?;
    let mut install_args = vec!["install", "-y", "--no-install-recommends"];
    install_args.extend(missing.iter().copied());
    let status = shell::run_status(&mut shell::privileged(
        "apt-get",
        &install_args,
        &[("DEBIAN_FRONTEND", "noninteractive")],
    ))?;

    let mut still_missing = Vec::new();
    for package in &missing {
        if !is_installed(package)? {
            still_missing.push(*package);
        }
    }
    if !still_missing.is_empty() {
        anyhow::bail!(
            "apt-get install exited with {status} and these packages are still not installed: {}",
            still_missing.join(" ")
        );
    }
    if !status.success() {
        // A post-install script that may not start its service makes apt-get fail although dpkg installed everything.
        outln!(
            "install: apt-get exited with {status}, but every package is installed; carrying on"
        );
    }
    outln!("install: installed {}", missing.join(" "));
    Ok(())
}

/// Whether dpkg reports `package` as fully installed; an unknown package counts as not installed.
fn is_installed(package: &str) -> anyhow::Result<bool> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .context("cannot run dpkg-query: this task needs a Debian-based system")?;
    let status = String::from_utf8_lossy(&output.stdout);
    Ok(output.status.success() && status.trim() == "install ok installed")
}

fn install_nextest() -> anyhow::Result<()> {
    let probe = shell::cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run `cargo nextest --version`")?;
    if probe.success() {
        outln!("install: cargo-nextest already installed");
        return Ok(());
    }
    outln!("install: installing cargo-nextest from crates.io (this compiles it, a few minutes)");
    shell::run_checked(shell::cargo().args(["install", "cargo-nextest", "--locked"]))
        .context("cannot install cargo-nextest")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_itself_is_installed() {
        assert!(is_installed("dpkg").expect("dpkg-query runs"));
    }

    #[test]
    fn unknown_package_is_not_installed() {
        assert!(!is_installed("nomadwave-no-such-package").expect("dpkg-query runs"));
    }
}
