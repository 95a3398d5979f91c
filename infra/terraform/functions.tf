# One Knative Service per function (scale to zero unless min_scale says otherwise), all from
# the same image, and the management API. Their Triggers are in eventing.tf.

locals {
  hot_path = ["validate", "quota", "route", "retry"]
  functions = {
    validate    = { source = "main.py", min_scale = var.hot_path_min_scale }
    quota       = { source = "main.py", min_scale = var.hot_path_min_scale }
    route       = { source = "main.py", min_scale = var.hot_path_min_scale }
    retry       = { source = "main.py", min_scale = var.hot_path_min_scale }
    webhooks    = { source = "main.py", min_scale = 0 }
    ip_manager  = { source = "main.py", min_scale = 0 }
    ticker      = { source = "main.py", min_scale = 0 }
    dead_letter = { source = "main.py", min_scale = 0 }
    send        = { source = "send.py", min_scale = 0 }
  }
  function_env = merge(local.common_env, { REMAILS_BROKER_NAME = "default" })
  container_security = {
    runAsNonRoot             = true
    runAsUser                = 10001
    readOnlyRootFilesystem   = true
    allowPrivilegeEscalation = false
    capabilities             = { drop = ["ALL"] }
  }
}

resource "kubernetes_manifest" "function" {
  for_each = local.functions
  manifest = {
    apiVersion = "serving.knative.dev/v1"
    kind       = "Service"
    metadata = {
      name      = "remails-${replace(each.key, "_", "-")}"
      namespace = kubernetes_namespace_v1.remails.metadata[0].name
      labels    = merge(local.labels, { "remails.eu/needs-sink" = "true", "remails.eu/function" = each.key })
    }
    spec = {
      template = {
        metadata = {
          annotations = {
            "autoscaling.knative.dev/min-scale" = tostring(each.value.min_scale)
            "autoscaling.knative.dev/target"    = "50"
          }
        }
        spec = {
          serviceAccountName = lookup({ ip_manager = kubernetes_service_account_v1.ip_manager.metadata[0].name }, each.key, "default")
          containers = [{
            image   = var.image
            command = ["functions-framework"]
            args    = ["--source", "/app/functions/${each.value.source}", "--target", each.key]
            ports   = [{ containerPort = 8080 }]
            env     = [for k, v in local.function_env : { name = k, value = v }]
            envFrom = [{ secretRef = { name = kubernetes_secret_v1.remails.metadata[0].name } }]
            resources = {
              requests = { cpu = "100m", memory = "192Mi" }
              limits   = { cpu = "1", memory = "512Mi" }
            }
            securityContext = local.container_security
            volumeMounts    = [{ name = "tmp", mountPath = "/tmp" }]
          }]
          volumes = [{ name = "tmp", emptyDir = {} }]
        }
      }
    }
  }
  depends_on = [kubernetes_job_v1.migrate]
}

resource "kubernetes_manifest" "api" {
  manifest = {
    apiVersion = "serving.knative.dev/v1"
    kind       = "Service"
    metadata = {
      name      = "remails-api"
      namespace = kubernetes_namespace_v1.remails.metadata[0].name
      labels    = merge(local.labels, { "remails.eu/needs-sink" = "true" })
    }
    spec = {
      template = {
        metadata = { annotations = { "autoscaling.knative.dev/min-scale" = "1" } }
        spec = {
          containers = [{
            image = var.image
            args  = ["serve", "api"]
            ports = [{ containerPort = 8080 }]
            env = concat(
              [for k, v in local.common_env : { name = k, value = v }],
              [{ name = "REMAILS_HTTP_LISTEN", value = "0.0.0.0:8080" }],
            )
            envFrom        = [{ secretRef = { name = kubernetes_secret_v1.remails.metadata[0].name } }]
            readinessProbe = { httpGet = { path = "/healthz", port = 8080 } }
            resources = {
              requests = { cpu = "100m", memory = "256Mi" }
              limits   = { cpu = "1", memory = "512Mi" }
            }
            securityContext = local.container_security
            volumeMounts    = [{ name = "tmp", mountPath = "/tmp" }]
          }]
          volumes = [{ name = "tmp", emptyDir = {} }]
        }
      }
    }
  }
  wait {
    fields = { "status.url" = "^http" }
  }
  depends_on = [kubernetes_job_v1.migrate]
}

# The ip_manager function keeps one Trigger per outbound IP: it may manage Triggers here.
resource "kubernetes_service_account_v1" "ip_manager" {
  metadata {
    name      = "remails-ip-manager"
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
  }
}

resource "kubernetes_role_v1" "ip_manager" {
  metadata {
    name      = "remails-ip-manager"
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
  }
  rule {
    api_groups = ["eventing.knative.dev"]
    resources  = ["triggers"]
    verbs      = ["get", "list", "create", "patch", "delete"]
  }
}

resource "kubernetes_role_binding_v1" "ip_manager" {
  metadata {
    name      = "remails-ip-manager"
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
  }
  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Role"
    name      = kubernetes_role_v1.ip_manager.metadata[0].name
  }
  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account_v1.ip_manager.metadata[0].name
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
  }
}
