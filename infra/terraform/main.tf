# Remails on Kubernetes + Knative: the namespace, its secrets and the migration Job.
# Knative Serving and Eventing, cert-manager (and their CRDs) must be installed before
# `terraform apply`: kubernetes_manifest needs the CRDs at plan time (see docs/deploy.md).

# The cluster comes from the environment: KUBE_CONFIG_PATH (or KUBE_HOST and friends), so no
# credential is written in the configuration.
provider "kubernetes" {}

resource "kubernetes_namespace_v1" "remails" {
  metadata {
    name = var.namespace
    # The sender runs on the host network, which only the privileged level admits; every
    # other pod is warned and audited against restricted.
    labels = merge(local.labels, {
      "pod-security.kubernetes.io/enforce" = "privileged"
      "pod-security.kubernetes.io/warn"    = "restricted"
      "pod-security.kubernetes.io/audit"   = "restricted"
    })
  }
}

resource "kubernetes_secret_v1" "remails" {
  metadata {
    name      = local.secret_name
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
  }
  data = {
    REMAILS_DATABASE_URL = var.database_url
    REMAILS_SECRET_KEY   = var.master_key
  }
}

# The SMTP certificate: cert-manager writes it into the Secret local.tls_secret.
resource "kubernetes_manifest" "certificate" {
  manifest = local.certificate_manifest
}

resource "kubernetes_job_v1" "migrate" {
  #checkov:skip=CKV_K8S_14:the image is the variable var.image; README.md requires pinning it by digest
  #checkov:skip=CKV_K8S_43:the image is the variable var.image; README.md requires pinning it by digest
  #checkov:skip=CKV_K8S_35:settings are read from the environment (pydantic-settings); the values come from a Secret, never the manifest
  metadata {
    name      = "remails-migrate"
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
    labels    = local.labels
  }
  spec {
    backoff_limit = 4
    template {
      metadata { labels = local.labels }
      spec {
        restart_policy                  = "OnFailure"
        automount_service_account_token = false
        container {
          name              = "migrate"
          image             = var.image
          image_pull_policy = "Always"
          args              = ["migrate", "--json"]
          env_from {
            secret_ref { name = kubernetes_secret_v1.remails.metadata[0].name }
          }
          resources {
            requests = { cpu = "100m", memory = "128Mi" }
            limits   = { cpu = "500m", memory = "256Mi" }
          }
          security_context {
            run_as_non_root            = true
            run_as_user                = 10001
            read_only_root_filesystem  = true
            allow_privilege_escalation = false
            capabilities { drop = ["ALL"] }
          }
          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
        }
        volume {
          name = "tmp"
          empty_dir {}
        }
      }
    }
  }
  wait_for_completion = true
  timeouts { create = "5m" }
}
