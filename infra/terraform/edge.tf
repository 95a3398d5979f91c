# The SMTP edge: a Deployment of at least two replicas spread over nodes (more under load,
# by CPU), behind a LoadBalancer that passes the client address with PROXY protocol.

resource "kubernetes_deployment_v1" "edge" {
  #checkov:skip=CKV_K8S_14:the image is the variable var.image; README.md requires pinning it by digest
  #checkov:skip=CKV_K8S_43:the image is the variable var.image; README.md requires pinning it by digest
  #checkov:skip=CKV_K8S_35:settings are read from the environment (pydantic-settings); the values come from a Secret, never the manifest
  metadata {
    name      = "remails-edge"
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
    labels    = merge(local.labels, { "app.kubernetes.io/name" = "remails-edge" })
  }
  spec {
    replicas = var.edge_replicas
    selector {
      match_labels = { "app.kubernetes.io/name" = "remails-edge" }
    }
    template {
      metadata {
        labels = merge(local.labels, { "app.kubernetes.io/name" = "remails-edge" })
      }
      spec {
        automount_service_account_token  = false
        termination_grace_period_seconds = 120 # sessions in DATA finish before the pod goes
        affinity {
          pod_anti_affinity {
            preferred_during_scheduling_ignored_during_execution {
              weight = 100
              pod_affinity_term {
                topology_key = "kubernetes.io/hostname"
                label_selector {
                  match_labels = { "app.kubernetes.io/name" = "remails-edge" }
                }
              }
            }
          }
        }
        container {
          name              = "edge"
          image             = var.image
          image_pull_policy = "Always"
          args              = ["serve", "edge"]
          dynamic "env" {
            for_each = merge(local.common_env, {
              REMAILS_SMTP_SUBMISSION_LISTEN = "0.0.0.0:2587"
              REMAILS_SMTP_TLS_LISTEN        = "0.0.0.0:2465"
              REMAILS_SMTP_MX_LISTEN         = "0.0.0.0:2525"
              REMAILS_PROXY_PROTOCOL         = tostring(local.proxy_protocol)
              REMAILS_PROXY_TRUSTED_NETWORKS = join(",", var.proxy_trusted_networks)
              REMAILS_TLS_CERT               = "/tls/tls.crt"
              REMAILS_TLS_KEY                = "/tls/tls.key"
              K_SINK                         = local.broker_url
            })
            content {
              name  = env.key
              value = env.value
            }
          }
          env_from {
            secret_ref { name = kubernetes_secret_v1.remails.metadata[0].name }
          }
          port {
            name           = "submission"
            container_port = 2587
          }
          port {
            name           = "smtps"
            container_port = 2465
          }
          port {
            name           = "mx"
            container_port = 2525
          }
          readiness_probe {
            tcp_socket { port = 2587 }
            period_seconds = 5
          }
          liveness_probe {
            tcp_socket { port = 2587 }
            period_seconds = 20
          }
          resources {
            requests = { cpu = "250m", memory = "256Mi" }
            limits   = { cpu = "2", memory = "1Gi" }
          }
          security_context {
            seccomp_profile { type = "RuntimeDefault" }
            run_as_non_root            = true
            run_as_user                = 10001
            read_only_root_filesystem  = true
            allow_privilege_escalation = false
            capabilities { drop = ["ALL"] }
          }
          volume_mount {
            name       = "tls"
            mount_path = "/tls"
            read_only  = true
          }
          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
        }
        volume {
          name = "tls"
          # Mounted whole (no sub_path), so the kubelet updates the files when cert-manager
          # renews the Secret.
          secret { secret_name = local.tls_secret }
        }
        volume {
          name = "tmp"
          empty_dir {}
        }
      }
    }
  }
  lifecycle {
    ignore_changes = [spec[0].replicas] # the HPA owns it
  }
  depends_on = [kubernetes_job_v1.migrate, kubernetes_manifest.certificate]
}

resource "kubernetes_horizontal_pod_autoscaler_v2" "edge" {
  metadata {
    name      = "remails-edge"
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
  }
  spec {
    min_replicas = var.edge_replicas
    max_replicas = var.edge_max_replicas
    scale_target_ref {
      api_version = "apps/v1"
      kind        = "Deployment"
      name        = kubernetes_deployment_v1.edge.metadata[0].name
    }
    metric {
      type = "Resource"
      resource {
        name = "cpu"
        target {
          type                = "Utilization"
          average_utilization = 70
        }
      }
    }
  }
}

resource "kubernetes_pod_disruption_budget_v1" "edge" {
  metadata {
    name      = "remails-edge"
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
  }
  spec {
    min_available = 1
    selector {
      match_labels = { "app.kubernetes.io/name" = "remails-edge" }
    }
  }
}

resource "kubernetes_service_v1" "smtp" {
  metadata {
    name        = "remails-smtp"
    namespace   = kubernetes_namespace_v1.remails.metadata[0].name
    annotations = local.load_balancer_annotations
  }
  spec {
    type                    = "LoadBalancer"
    external_traffic_policy = "Local"
    selector                = { "app.kubernetes.io/name" = "remails-edge" }
    port {
      name        = "smtp" # the inbound MX: bounces, complaints, DMARC reports (docs/receiving.md)
      port        = var.smtp_ports.smtp
      target_port = 2525
    }
    port {
      name        = "submission"
      port        = var.smtp_ports.submission
      target_port = 2587
    }
    port {
      name        = "smtps"
      port        = var.smtp_ports.smtps
      target_port = 2465
    }
  }
}
