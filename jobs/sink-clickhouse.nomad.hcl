# sink-clickhouse run: the WAVE, WEATHER and CARBON streams into ClickHouse, exactly once.
#
#   nomad job run -var image_repository=registry.example/nomadwave-ingest -var image_tag=0.1.0 \
#     jobs/sink-clickhouse.nomad.hcl
#
# One durable consumer per stream ("sink-clickhouse"), acked by one sink at a time: a second
# allocation (the canary of an update) waits as a standby until the old one stops and releases the
# consumer lease, then re-reads what was left un-acked and carries on. For more than one
# instance's throughput use sink-clickhouse-partitioned.nomad.hcl instead, not a higher count here.
# The ClickHouse password comes from Vault (KV v2) through a template; see README "Nomad".
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

# Nomad 1.10 and later fetch Vault tokens only through workload identity: the task's identity
# (the `identity "vault_default"` block below) logs in to Vault's JWT auth method with this role.
# Nomad 1.10 ignores `vault { policies = ... }` without a word, so the task would get the auth
# method's default role and no secret; see README "Nomad" for clusters still on the token workflow.
variable "vault_role" {
  type        = string
  description = "Vault JWT auth role granting read on clickhouse_password_secret."
  default     = "nomadwave-sink"
}

job "sink-clickhouse" {
  type        = "service"
  datacenters = var.datacenters

  update {
    max_parallel      = 1
    canary            = 1
    auto_promote      = true
    auto_revert       = true
    health_check      = "checks"
    min_healthy_time  = "30s"
    healthy_deadline  = "5m"
    progress_deadline = "10m"
  }

  group "sink" {
    count = 1

    network {
      port "http" {
        to = 9464
      }
    }

    restart {
      attempts = 5
      interval = "10m"
      delay    = "15s"
      mode     = "delay"
    }

    reschedule {
      delay          = "30s"
      delay_function = "exponential"
      max_delay      = "10m"
      unlimited      = true
    }

    service {
      name     = "nomadwave-sink-clickhouse"
      provider = "consul"
      port     = "http"
      tags     = ["nomadwave", "prometheus.scrape=true", "prometheus.path=/metrics"]

      check {
        name     = "alive"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "3s"

        check_restart {
          limit = 3
          grace = "60s"
        }
      }

      # Fails while NATS is disconnected or ClickHouse inserts are failing.
      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "sink" {
      driver = "docker"

      config {
        image   = "${var.image_repository}:${var.image_tag}"
        command = "sink-clickhouse"
        args    = ["run"]
        ports   = ["http"]
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
        SINK_DRAIN_TIMEOUT       = "20s"
        HTTP_LISTEN              = "0.0.0.0:9464"
        LOG_FORMAT               = "json"
        RUST_BACKTRACE           = "1"
        # glibc arenas: peak RSS stays flat as volume grows (BENCHMARKS.md, "Memory").
        MALLOC_ARENA_MAX = "2"
      }

      # The drain (SINK_DRAIN_TIMEOUT, 20s above) plus 5s to flush the last acks and release the
      # lease, and within a default client's max_kill_timeout (30s): a longer kill_timeout is cut
      # to 30s by the client, which would SIGKILL the sink in the middle of its drain.
      kill_timeout = "25s"

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
