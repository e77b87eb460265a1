# ingest-carbon run: Electricity Maps carbon intensity per zone → CARBON events.
#
#   nomad job run -var image_repository=registry.example/nomadwave-ingest -var image_tag=0.1.0 \
#     -var 'electricitymaps_zones=AU-NSW,AU-VIC' jobs/ingest-carbon.nomad.hcl
#
# The API token comes from Vault (KV v2, field `token`) through a template rendered into the task's
# secrets/ folder; it travels only in the auth-token header and appears in no log line.
#
# Polls every target on its own interval, publishes each new or revised record with its event id as
# Nats-Msg-Id and keeps a cursor per site in the JetStream KV bucket nomadwave_poll_cursors, so a
# restart (or the canary of an update polling alongside) neither loses nor republishes.
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

# Declared in every job (the pollers do not use it) so one var file serves them all: Nomad refuses
# a var file that sets a variable the job does not declare.
variable "clickhouse_url" {
  type        = string
  description = "ClickHouse HTTP endpoint (CLICKHOUSE_URL); used by the sink jobs only."
  default     = "http://clickhouse.service.consul:8123"
}

variable "electricitymaps_zones" {
  type        = string
  description = "Zone codes, comma-separated (ELECTRICITYMAPS_ZONES)."
  default     = "AU-NSW"
}

variable "poll_interval" {
  type        = string
  description = "How often each zone is polled (POLL_INTERVAL)."
  default     = "15m"
}

variable "electricitymaps_token_secret" {
  type        = string
  description = "Vault KV v2 path whose `token` field is the Electricity Maps API token."
  default     = "kv/data/nomadwave/electricitymaps"
}

# Nomad 1.10 and later fetch Vault tokens only through workload identity: the task's identity
# (the `identity "vault_default"` block below) logs in to Vault's JWT auth method with this role.
# Nomad 1.10 ignores `vault { policies = ... }` without a word, so the task would get the auth
# method's default role and no secret; see README "Nomad" for clusters still on the token workflow.
variable "vault_role" {
  type        = string
  description = "Vault JWT auth role granting read on electricitymaps_token_secret."
  default     = "nomadwave-ingest-carbon"
}

job "ingest-carbon" {
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

  group "poller" {
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
      name     = "nomadwave-ingest-carbon"
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

      # Fails while NATS is disconnected, a site has had no success within POLL_READY_MAX_AGE, or the
      # upstream refused the last request (4xx other than 429). Readiness follows a third party's
      # upstream, so it does not judge deployments (on_update = "ignore"): an upstream outage would
      # otherwise fail, and auto-revert, every rollout. The canary must still pass /healthz.
      check {
        name      = "ready"
        type      = "http"
        path      = "/readyz"
        interval  = "10s"
        timeout   = "3s"
        on_update = "ignore"
      }
    }

    task "ingest-carbon" {
      driver = "docker"

      config {
        image   = "${var.image_repository}:${var.image_tag}"
        command = "ingest-carbon"
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
          {{- with secret "${var.electricitymaps_token_secret}" }}{{ .Data.data.token }}{{ end -}}
        EOT
        destination = "secrets/electricitymaps_token"
        change_mode = "restart"
        perms       = "0400"
        # The image runs as nomadwave (uid and gid 10001).
        uid = 10001
        gid = 10001
      }

      env {
        NATS_URL                   = var.nats_url
        ELECTRICITYMAPS_ZONES      = var.electricitymaps_zones
        ELECTRICITYMAPS_TOKEN_FILE = "${NOMAD_SECRETS_DIR}/electricitymaps_token"
        POLL_INTERVAL              = var.poll_interval
        HTTP_LISTEN                = "0.0.0.0:9464"
        LOG_FORMAT                 = "json"
        RUST_BACKTRACE             = "1"
      }

      # A poller finishes the publishes it has started before it exits.
      kill_timeout = "20s"

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
