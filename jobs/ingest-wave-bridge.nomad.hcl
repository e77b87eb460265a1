# ingest-wave bridge on every Raspberry Pi node: the buoys' MQTT readings (and rtl_433 weather
# events) → JetStream.
#
#   nomad job run -var image_repository=registry.example/nomadwave-ingest -var image_tag=0.1.0 \
#     jobs/ingest-wave-bridge.nomad.hcl
#
# A system job: one bridge per client of node class "pi" on arm64 (the image must be built for
# linux/arm64 too). By default each bridge reads the mosquitto running on its own Pi, where that
# Pi's buoys publish; set mqtt_url to use a central broker instead.
# The MQTT client id is stable per node, so the broker keeps the bridge's persistent session (and
# its queued QoS 1 messages) across restarts and updates; a PUBACK goes out only after JetStream
# stored the message's event or dead letter. The password comes from Vault through a template.
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

# `$${…}` leaves the interpolation to Nomad on the client: the address of the node the bridge runs on.
variable "mqtt_url" {
  type        = string
  description = "The broker (MQTT_URL); by default the mosquitto on the bridge's own node."
  default     = "mqtt://$${attr.unique.network.ip-address}:1883"
}

variable "mqtt_user" {
  type        = string
  description = "MQTT user of the bridge (MQTT_USER)."
  default     = "nomadwave-bridge"
}

variable "mqtt_password_secret" {
  type        = string
  description = "Vault KV v2 path whose `password` field is the bridge's MQTT password."
  default     = "kv/data/nomadwave/mqtt"
}

# Nomad 1.10 and later fetch Vault tokens only through workload identity: the task's identity
# (the `identity "vault_default"` block below) logs in to Vault's JWT auth method with this role.
# Nomad 1.10 ignores `vault { policies = ... }` without a word, so the task would get the auth
# method's default role and no secret; see README "Nomad" for clusters still on the token workflow.
variable "node_pool" {
  type        = string
  description = "Node pool of the Pis (Nomad 1.6+); `default` unless the Pis have a pool of their own."
  default     = "default"
}

variable "vault_role" {
  type        = string
  description = "Vault JWT auth role granting read on mqtt_password_secret."
  default     = "nomadwave-bridge"
}

job "ingest-wave-bridge" {
  type        = "system"
  datacenters = var.datacenters
  node_pool   = var.node_pool

  constraint {
    attribute = "${node.class}"
    value     = "pi"
  }

  constraint {
    attribute = "${attr.cpu.arch}"
    value     = "arm64"
  }

  # System jobs have no deployments (no canaries, no auto-revert): nodes are updated one at a time.
  update {
    max_parallel = 1
    stagger      = "30s"
  }

  group "bridge" {
    # The Pis are connected intermittently (Nomad 1.8+): a Pi that misses its heartbeats keeps its
    # bridge running, buffering readings in its local broker, for up to lost_after; it is not
    # replaced elsewhere (a system job belongs to its node), and when the Pi reconnects the
    # allocation that kept running is kept rather than restarted.
    disconnect {
      lost_after = "24h"
      replace    = false
      reconcile  = "keep_original"
    }

    network {
      port "http" {
        to = 9464
      }
    }

    # A system job is not rescheduled elsewhere: it is restarted in place, without limit.
    restart {
      attempts = 10
      interval = "10m"
      delay    = "15s"
      mode     = "delay"
    }

    service {
      name     = "nomadwave-ingest-wave-bridge"
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

      # Fails while either broker (MQTT or NATS) is disconnected.
      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "bridge" {
      driver = "docker"

      config {
        image   = "${var.image_repository}:${var.image_tag}"
        command = "ingest-wave"
        args    = ["bridge"]
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
          {{- with secret "${var.mqtt_password_secret}" }}{{ .Data.data.password }}{{ end -}}
        EOT
        destination = "secrets/mqtt_password"
        change_mode = "restart"
        perms       = "0400"
        # The image runs as nomadwave (uid and gid 10001).
        uid = 10001
        gid = 10001
      }

      env {
        MQTT_URL             = var.mqtt_url
        MQTT_CLIENT_ID       = "nomadwave-bridge-${node.unique.name}"
        MQTT_USER            = var.mqtt_user
        MQTT_PASSWORD_FILE   = "${NOMAD_SECRETS_DIR}/mqtt_password"
        NATS_URL             = var.nats_url
        BRIDGE_DRAIN_TIMEOUT = "10s"
        HTTP_LISTEN          = "0.0.0.0:9464"
        LOG_FORMAT           = "json"
        RUST_BACKTRACE       = "1"
      }

      # In-flight messages finish (BRIDGE_DRAIN_TIMEOUT, 10s above) and their PUBACKs go out before
      # the exit; the margin covers the flush, and 20s stays within a default client's
      # max_kill_timeout (30s).
      kill_timeout = "20s"

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
