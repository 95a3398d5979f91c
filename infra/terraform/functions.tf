# One Knative Service per function (scale to zero unless min_scale says otherwise, at most
# var.function_max_scale pods), all from the same image, and the management API. The objects
# are built in locals.tf, their Triggers are in eventing.tf.

resource "kubernetes_manifest" "function" {
  for_each   = local.function_manifests
  manifest   = each.value
  depends_on = [kubernetes_job_v1.migrate, kubernetes_service_account_v1.ip_manager]
}

resource "kubernetes_manifest" "api" {
  manifest = local.api_manifest
  wait {
    fields = { "status.url" = "^http" }
  }
  depends_on = [kubernetes_job_v1.migrate]
}

# The ip_manager function keeps one Trigger per outbound IP: it may manage Triggers here.
resource "kubernetes_service_account_v1" "ip_manager" {
  metadata {
    name      = local.ip_manager_account
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

# It reads the nodes (which are Ready, which UpCloud server each is) to place the floating IPs.
resource "kubernetes_cluster_role_v1" "ip_manager" {
  metadata {
    name = "remails-ip-manager-nodes"
  }
  rule {
    api_groups = [""]
    resources  = ["nodes"]
    verbs      = ["get", "list"]
  }
}

resource "kubernetes_cluster_role_binding_v1" "ip_manager" {
  metadata {
    name = "remails-ip-manager-nodes"
  }
  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "ClusterRole"
    name      = kubernetes_cluster_role_v1.ip_manager.metadata[0].name
  }
  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account_v1.ip_manager.metadata[0].name
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
  }
}
