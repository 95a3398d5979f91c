# The sender: one pod per node on the host network, so it can bind the node's outbound IPs.
# It keeps the IPs of var.outbound_ips it can bind, registers them with its URL, and the
# ip_manager function points one Trigger per IP at it.

resource "kubernetes_daemon_set_v1" "sender" {
  #checkov:skip=CKV_K8S_14:the image is the variable var.image; README.md requires pinning it by digest
  #checkov:skip=CKV_K8S_43:the image is the variable var.image; README.md requires pinning it by digest
  #checkov:skip=CKV_K8S_35:settings are read from the environment (pydantic-settings); the values come from a Secret, never the manifest
  metadata {
    name      = "remails-sender"
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
    labels    = merge(local.labels, { "app.kubernetes.io/name" = "remails-sender" })
  }
  spec {
    selector {
      match_labels = { "app.kubernetes.io/name" = "remails-sender" }
    }
    template {
      metadata {
        labels = merge(local.labels, { "app.kubernetes.io/name" = "remails-sender" })
      }
      spec {
        #checkov:skip=CKV_K8S_19:the sender must bind the node's own outbound IPs; that is its whole job
        host_network                     = true
        dns_policy                       = "ClusterFirstWithHostNet"
        automount_service_account_token  = false
        termination_grace_period_seconds = 90
        container {
          name              = "sender"
          image             = var.image
          image_pull_policy = "Always"
          args              = ["serve", "sender"]
          env {
            name = "NODE_NAME"
            value_from {
              field_ref { field_path = "spec.nodeName" }
            }
          }
          env {
            name = "HOST_IP"
            value_from {
              field_ref { field_path = "status.hostIP" }
            }
          }
          # After NODE_NAME and HOST_IP: Kubernetes expands $(VAR) only from earlier entries.
          dynamic "env" {
            for_each = merge(local.common_env, {
              REMAILS_OUTBOUND_IPS_DISCOVER = "true"
              REMAILS_NODE_NAME             = "$(NODE_NAME)"
              REMAILS_NODE_URL              = "http://$(HOST_IP):${var.sender_port}/"
              REMAILS_HTTP_LISTEN           = "$(HOST_IP):${var.sender_port}"
              K_SINK                        = local.broker_url
            })
            content {
              name  = env.key
              value = env.value
            }
          }
          env_from {
            secret_ref { name = kubernetes_secret_v1.remails.metadata[0].name }
          }
          readiness_probe {
            tcp_socket { port = var.sender_port }
            period_seconds = 10
          }
          liveness_probe {
            tcp_socket { port = var.sender_port }
            period_seconds = 30
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
            name       = "tmp"
            mount_path = "/tmp"
          }
        }
        # Puts the floating IPs UpCloud attached to this node on its interface (the OS must).
        dynamic "container" {
          for_each = var.floating_ip_alias ? ["floating-ips"] : []
          content {
            #checkov:skip=CKV_K8S_23:the `ip addr` changes need root in the host network namespace; it holds NET_ADMIN and nothing else
            #checkov:skip=CKV_K8S_40:the `ip addr` changes need root in the host network namespace; it holds NET_ADMIN and nothing else
            name              = container.value
            image             = var.image
            image_pull_policy = "Always"
            command           = ["python", "/app/infra/node/floating_ip_alias.py"]
            env {
              name  = "REMAILS_OUTBOUND_IPS"
              value = join(",", var.outbound_ips)
            }
            resources {
              requests = { cpu = "10m", memory = "32Mi" }
              limits   = { cpu = "100m", memory = "64Mi" }
            }
            security_context {
              seccomp_profile { type = "RuntimeDefault" }
              run_as_user                = 0
              read_only_root_filesystem  = true
              allow_privilege_escalation = false
              capabilities {
                drop = ["ALL"]
                add  = ["NET_ADMIN"]
              }
            }
          }
        }
        volume {
          name = "tmp"
          empty_dir {}
        }
      }
    }
  }
  depends_on = [kubernetes_job_v1.migrate, kubernetes_manifest.broker]
}
