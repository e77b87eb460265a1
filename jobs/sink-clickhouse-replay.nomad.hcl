# sink-clickhouse replay: re-read one stream (from a time or a sequence, up to another) into ClickHouse,
# as a parameterized batch job dispatched once per backfill.
#
#   nomad job run -var image_repository=registry.example/nomadwave-ingest -var image_tag=0.1.0 \
#     jobs/sink-clickhouse-replay.nomad.hcl
#   nomad job dispatch -meta stream=WAVE -meta from_time=2026-11-01T00:00:00Z sink-clickhouse-replay
#   nomad job dispatch -meta stream=CARBON -meta from_seq=1 -meta database=nomadwave_backfill \
#     sink-clickhouse-replay
#
# Meta keys: stream (required: WAVE, WEATHER or CARBON); from_seq or from_time, to_seq or to_time,
# database (default: clickhouse_database), subject (a filter inside the stream). Every optional key
# has an empty default in the job's `meta`, so an unset key reaches the binary as an empty variable,
# which it treats as unset. The result is the same as the original ingest: rows already in the
# target table are not written again, so a failed replay is simply dispatched (or retried) again.
# Inserts are paced by replay_max_inserts_per_second so a backfill never floods ClickHouse with parts.
# deploy-checks/tests/jobs.rs checks this file against the binary's --help.

variable "image_repository" {
  type        = string
  description = "Registry path of the image built from the repository's Dockerfile (no tag)."
}

variable "image_tag" {
  type        = string
  description = "Image tag to run: a release version or a commit, never `latest`."
}

variable "datacenters" {
  type        = list(string)
  description = "Datacenters the job may run in."
  default     = ["dc1"]
}

variable "nats_url" {
  type        = string
  description = "NATS server URLs, comma-separated (NATS_URL)."
  default     = "nats://nats.service.consul:4222"
}

variable "clickhouse_url" {
  type        = string
  description = "ClickHouse HTTP endpoint (CLICKHOUSE_URL)."
  default     = "http://clickhouse.service.consul:8123"
}

variable "clickhouse_database" {
  type        = string
  description = "Database holding the event tables (CLICKHOUSE_DATABASE)."
  default     = "nomadwave"
}

variable "clickhouse_user" {
  type        = string
  description = "ClickHouse user the sink writes as (CLICKHOUSE_USER)."
  default     = "nomadwave_sink"
}

variable "clickhouse_password_secret" {
  type        = string
  description = "Vault KV v2 path whose `password` field is the ClickHouse password."
  default     = "kv/data/nomadwave/clickhouse"
}

variable "replay_max_inserts_per_second" {
  type        = number
  description = "Upper bound on the replay's INSERTs per second (--max-inserts-per-second)."
  default     = 2
}

# Nomad 1.10 and later fetch Vault tokens only through workload identity: the task's identity
# (the `identity "vault_default"` block below) logs in to Vault's JWT auth method with this role.
# Nomad 1.10 ignores `vault { policies = ... }` without a word, so the task would get the auth
# method's default role and no secret; see README "Nomad" for clusters still on the token workflow.
variable "vault_role" {
  type        = string
  description = "Vault JWT auth role granting read on clickhouse_password_secret."
  default     = "nomadwave-sink"
}

job "sink-clickhouse-replay" {
  type        = "batch"
  datacenters = var.datacenters

  parameterized {
    payload       = "forbidden"
    meta_required = ["stream"]
    meta_optional = ["from_seq", "from_time", "to_seq", "to_time", "database", "subject"]
  }

  # Defaults of the optional dispatch meta: empty, which the binary reads as unset.
  meta {
    from_seq  = ""
    from_time = ""
    to_seq    = ""
    to_time   = ""
    database  = ""
    subject   = ""
  }

  group "replay" {
    count = 1

    restart {
      attempts = 3
      interval = "30m"
      delay    = "30s"
      mode     = "fail"
    }

    reschedule {
      attempts       = 3
      interval       = "6h"
      delay          = "1m"
      delay_function = "exponential"
      max_delay      = "15m"
      unlimited      = false
    }

    task "replay" {
      driver = "docker"

      config {
        image   = "${var.image_repository}:${var.image_tag}"
        command = "sink-clickhouse"
        args = [
          "replay",
          "--stream", "${NOMAD_META_stream}",
          "--max-inserts-per-second", "${var.replay_max_inserts_per_second}",
        ]
      }

      vault {
        role        = var.vault_role
        change_mode = "restart"
      }

      # The workload identity the template's Vault login presents (audience vault.io, as the
      # auth method's bound_audiences expects); spelled out so no server default is needed.
      identity {
        name = "vault_default"
        aud  = ["vault.io"]
        ttl  = "1h"
      }

      template {
        data        = <<-EOT
          {{- with secret "${var.clickhouse_password_secret}" }}{{ .Data.data.password }}{{ end -}}
        EOT
        destination = "secrets/clickhouse_password"
        change_mode = "restart"
        perms       = "0400"
        # The image runs as nomadwave (uid and gid 10001).
        uid = 10001
        gid = 10001
      }

      env {
        NATS_URL                 = var.nats_url
        CLICKHOUSE_URL           = var.clickhouse_url
        CLICKHOUSE_DATABASE      = var.clickhouse_database
        CLICKHOUSE_USER          = var.clickhouse_user
        CLICKHOUSE_PASSWORD_FILE = "${NOMAD_SECRETS_DIR}/clickhouse_password"
        REPLAY_FROM_SEQ          = "${NOMAD_META_from_seq}"
        REPLAY_FROM_TIME         = "${NOMAD_META_from_time}"
        REPLAY_TO_SEQ            = "${NOMAD_META_to_seq}"
        REPLAY_TO_TIME           = "${NOMAD_META_to_time}"
        REPLAY_DATABASE          = "${NOMAD_META_database}"
        REPLAY_SUBJECT           = "${NOMAD_META_subject}"
        REPLAY_PROGRESS          = "log"
        LOG_FORMAT               = "json"
        RUST_BACKTRACE           = "1"
        # glibc arenas: peak RSS stays flat as volume grows (BENCHMARKS.md, "Memory").
        MALLOC_ARENA_MAX = "2"
      }

      # A replay has no drain: an interrupted one is dispatched again and writes nothing twice. The
      # INSERT in flight gets 25s, within a default client's max_kill_timeout (30s).
      kill_timeout = "25s"

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
