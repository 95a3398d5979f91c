# Who may talk to whom inside the cluster. The functions are cluster-local Knative Services;
# requests reach their pods through Knative's data path (the activator, the cluster-local
# gateway) on behalf of the Broker, which sits in the Knative namespaces. Nothing in the
# Remails namespace itself calls a function.

resource "kubernetes_network_policy_v1" "functions" {
  metadata {
    name      = "remails-functions"
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
  }
  spec {
    pod_selector {
      match_expressions {
        key      = "remails.eu/function"
        operator = "Exists"
      }
    }
    policy_types = ["Ingress"]
    ingress {
      dynamic "from" {
        for_each = var.knative_namespaces
        content {
          namespace_selector {
            match_labels = { "kubernetes.io/metadata.name" = from.value }
          }
        }
      }
    }
    # Prometheus, for /metrics only.
    ingress {
      from {
        namespace_selector {
          match_labels = { "kubernetes.io/metadata.name" = var.monitoring_namespace }
        }
      }
      ports {
        port     = var.metrics_port
        protocol = "TCP"
      }
    }
  }
}
