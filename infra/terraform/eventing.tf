# The Broker, the Triggers that feed each function (filtered on the event catalogue's types),
# the PingSource behind `tick`, and SinkBindings giving the long-lived roles K_SINK.
# The per-IP Triggers for the sender nodes are not here: the ip_manager function keeps them.

locals {
  # function → the event types it consumes (remails/events.py; checked by tests/infra).
  triggers = {
    validate = ["message.received"]
    quota    = ["message.validated"]
    route    = ["message.admitted"]
    retry    = ["delivery.attempted", "tick"]
    webhooks = [
      "message.delivered", "message.deferred", "message.bounced", "message.failed",
      "message.held", "message.rejected", "tick",
    ]
    ip_manager = ["tick"]
    ticker     = ["dev.knative.sources.ping"]
  }
  trigger_list = flatten([
    for function, types in local.triggers : [
      for type in types : { function = function, type = type, name = "${replace(function, "_", "-")}-${replace(type, ".", "-")}" }
    ]
  ])
}

resource "kubernetes_manifest" "broker" {
  manifest = {
    apiVersion = "eventing.knative.dev/v1"
    kind       = "Broker"
    metadata = {
      name        = "default"
      namespace   = kubernetes_namespace_v1.remails.metadata[0].name
      annotations = { "eventing.knative.dev/broker.class" = var.broker_class }
    }
    spec = {
      delivery = {
        retry         = 10
        backoffPolicy = "exponential"
        backoffDelay  = "PT0.5S"
        timeout       = "PT60S"
        deadLetterSink = {
          ref = { apiVersion = "serving.knative.dev/v1", kind = "Service", name = "remails-dead-letter" }
        }
      }
    }
  }
}

resource "kubernetes_manifest" "trigger" {
  for_each = { for t in local.trigger_list : t.name => t }
  manifest = {
    apiVersion = "eventing.knative.dev/v1"
    kind       = "Trigger"
    metadata = {
      name      = each.key
      namespace = kubernetes_namespace_v1.remails.metadata[0].name
      labels    = local.labels
    }
    spec = {
      broker  = "default"
      filters = [{ exact = { type = each.value.type } }]
      subscriber = {
        ref = {
          apiVersion = "serving.knative.dev/v1"
          kind       = "Service"
          name       = "remails-${replace(each.value.function, "_", "-")}"
        }
      }
    }
  }
  depends_on = [kubernetes_manifest.broker, kubernetes_manifest.function]
}

resource "kubernetes_manifest" "ping" {
  manifest = {
    apiVersion = "sources.knative.dev/v1"
    kind       = "PingSource"
    metadata = {
      name      = "remails-tick"
      namespace = kubernetes_namespace_v1.remails.metadata[0].name
    }
    spec = {
      schedule    = "* * * * *"
      contentType = "application/json"
      data        = "{}"
      sink = {
        ref = { apiVersion = "eventing.knative.dev/v1", kind = "Broker", name = "default" }
      }
    }
  }
  depends_on = [kubernetes_manifest.broker]
}

resource "kubernetes_manifest" "sink_binding" {
  for_each = {
    edge      = { apiVersion = "apps/v1", kind = "Deployment", name = "remails-edge" }
    sender    = { apiVersion = "apps/v1", kind = "DaemonSet", name = "remails-sender" }
    functions = { apiVersion = "serving.knative.dev/v1", kind = "Service", selector = { matchLabels = { "remails.eu/needs-sink" = "true" } } }
  }
  manifest = {
    apiVersion = "sources.knative.dev/v1"
    kind       = "SinkBinding"
    metadata = {
      name      = "remails-${each.key}"
      namespace = kubernetes_namespace_v1.remails.metadata[0].name
    }
    spec = {
      subject = each.value
      sink = {
        ref = { apiVersion = "eventing.knative.dev/v1", kind = "Broker", name = "default" }
      }
    }
  }
  depends_on = [kubernetes_manifest.broker]
}
