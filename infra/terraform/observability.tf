# Scraping, alerts and the dashboard (infra/observability/). Every role serves /metrics on
# REMAILS_METRICS_LISTEN (port 9464); the pods must listen on 0.0.0.0 for Prometheus to reach
# them (common_env: REMAILS_METRICS_LISTEN = "0.0.0.0:9464").
#
# The Service below carries prometheus.io/scrape, port and path, which the usual
# `kubernetes-service-endpoints` scrape job reads. With the Prometheus Operator, load the rules
# of infra/observability/alerts.yaml as a PrometheusRule (docs/operations.md): its CRDs are not
# part of this module, whose every manifest is checked against the CRD schemas it ships with.
# The Grafana dashboard goes into a ConfigMap labelled for Grafana's dashboard sidecar.

locals {
  metrics_labels = merge(local.labels, { "remails.eu/metrics" = "true" })
}

# Headless: Prometheus scrapes every pod behind it (edge, sender and API pods alike).
resource "kubernetes_service_v1" "metrics" {
  metadata {
    name      = "remails-metrics"
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
    labels    = local.metrics_labels
    annotations = {
      "prometheus.io/scrape" = "true"
      "prometheus.io/port"   = tostring(var.metrics_port)
      "prometheus.io/path"   = "/metrics"
    }
  }
  spec {
    cluster_ip = "None"
    selector   = local.labels
    port {
      name        = "metrics"
      port        = var.metrics_port
      target_port = var.metrics_port
    }
  }
}

resource "kubernetes_config_map_v1" "dashboard" {
  metadata {
    name      = "remails-dashboard"
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
    labels    = merge(local.labels, { grafana_dashboard = "1" })
  }
  data = {
    "remails.json" = file("${path.module}/../observability/grafana-dashboard.json")
  }
}
