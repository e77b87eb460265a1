//! Tests of the deployment files; this library is deliberately empty.
//!
//! Docker is not available where the tests run, so `tests/compose.rs` checks what can be checked
//! without it:
//! - `compose.yaml` is valid for `docker-compose config`;
//! - its invariants: health checks, dependency conditions, pinned images, our services built from
//!   `Dockerfile`;
//! - its contract with the binaries: every flag and environment variable a service sets is one the
//!   binary's `--help` lists, and the whole command line parses;
//! - `Dockerfile` ships every binary compose runs, and its dependency skeleton resolves with the
//!   lockfile;
//! - `deploy/mosquitto/mosquitto.conf` keeps persistent sessions and their queues, is the file
//!   compose mounts, and is accepted by a real mosquitto.
