# The Broker, the Triggers that feed each function (filtered on the event catalogue's types)
# and the PingSource behind `tick`. The objects themselves are built in locals.tf.
# The per-IP Triggers for the sender nodes are not here: the ip_manager function keeps them.

locals {
  # Where every role posts its events (K_SINK), as the Broker reports it once it is ready.
  broker_url = coalesce(try(kubernetes_manifest.broker.object.status.address.url, null), local.broker_ingress_url)
}

resource "kubernetes_manifest" "broker" {
  manifest = local.broker_manifest
  wait {
    fields = { "status.address.url" = "^http" }
  }
  depends_on = [kubernetes_namespace_v1.remails]
}

resource "kubernetes_manifest" "trigger" {
  for_each   = local.trigger_manifests
  manifest   = each.value
  depends_on = [kubernetes_manifest.broker, kubernetes_manifest.function]
}

resource "kubernetes_manifest" "ping" {
  manifest   = local.ping_manifest
  depends_on = [kubernetes_manifest.broker]
}
