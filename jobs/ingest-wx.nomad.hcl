# ingest-wx run: Bureau of Meteorology observations (legacy products and v1 API) → WEATHER events.
#
#   nomad job run -var image_repository=registry.example/nomadwave-ingest -var image_tag=0.1.0 \
#     -var 'bom_stations=IDN60901.94768,qvv117' jobs/ingest-wx.nomad.hcl
#
# BOM's data needs permission for redistribution: check its terms before pointing this at it.
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

variable "bom_stations" {
  type        = string
  description = "Stations, comma-separated (BOM_STATIONS): PRODUCT.WMO (IDN60901.94768) or a v1 geohash (qvv117)."
  default     = "IDN60901.94768"
}

variable "poll_interval" {
  type        = string
  description = "How often each station is polled (POLL_INTERVAL)."
  default     = "10m"
}

job "ingest-wx" {
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
      name     = "nomadwave-ingest-wx"
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

    task "ingest-wx" {
      driver = "docker"

      config {
        image   = "${var.image_repository}:${var.image_tag}"
        command = "ingest-wx"
        args    = ["run"]
        ports   = ["http"]
      }

      env {
        NATS_URL       = var.nats_url
        BOM_STATIONS   = var.bom_stations
        POLL_INTERVAL  = var.poll_interval
        HTTP_LISTEN    = "0.0.0.0:9464"
        LOG_FORMAT     = "json"
        RUST_BACKTRACE = "1"
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
