variable "namespace" {
  description = "Kubernetes namespace for every Remails object."
  type        = string
  default     = "remails"
}

variable "image" {
  description = "The Remails container image (built from the Containerfile), pinned by tag or digest."
  type        = string
}

variable "database_url" {
  description = "PostgreSQL URL (for instance the UpCloud module's output)."
  type        = string
  sensitive   = true
}

variable "master_key" {
  description = "Base64 of 32 random bytes: the master key that seals DKIM keys and webhook secrets."
  type        = string
  sensitive   = true
}

variable "hostname" {
  description = "Our name in SMTP banners and EHLO (should match the outbound IPs' reverse DNS)."
  type        = string
}

variable "system_project_id" {
  description = "The operator's project that notifications are mailed from (REMAILS_SYSTEM_PROJECT_ID). Empty: notifications are only recorded."
  type        = string
  default     = ""
}

variable "system_from" {
  description = "The sender of notification mail, on a verified domain of the system project (REMAILS_SYSTEM_FROM)."
  type        = string
  default     = ""
}

variable "public_url" {
  description = "Where users reach the dashboard (e.g. https://mail.example.eu): the base of the links in password-reset and invitation mails (REMAILS_PUBLIC_URL). Empty: the API's listening address."
  type        = string
  default     = ""
}

variable "submission_hostname" {
  description = "The name applications submit to (the SMTP load balancer's address); in the certificate beside var.hostname. Empty: var.hostname only."
  type        = string
  default     = ""
}

variable "certificate_issuer" {
  description = "The cert-manager Issuer or ClusterIssuer that signs the SMTP certificate for var.hostname."
  type        = object({ kind = string, name = string })
  default     = { kind = "ClusterIssuer", name = "letsencrypt" }
  validation {
    condition     = contains(["Issuer", "ClusterIssuer"], var.certificate_issuer.kind)
    error_message = "certificate_issuer.kind must be Issuer or ClusterIssuer."
  }
}

variable "broker_class" {
  description = "Knative Broker class: Kafka (durable; needs Kafka and the Kafka Broker) or MTChannelBasedBroker (with the in-memory channel: best-effort, loses events on restart, not for production)."
  type        = string
  default     = "Kafka"
  validation {
    # RabbitMQBroker cannot evaluate the Triggers' `filters`.
    condition     = contains(["Kafka", "MTChannelBasedBroker"], var.broker_class)
    error_message = "broker_class must be Kafka or MTChannelBasedBroker."
  }
}

variable "kafka_broker_config" {
  description = "The ConfigMap of the Kafka Broker (bootstrap servers, partitions, replication), as installed with it."
  type        = object({ name = string, namespace = string })
  default     = { name = "kafka-broker-config", namespace = "knative-eventing" }
}

variable "smtp_ports" {
  description = "Load balancer ports: the inbound MX (smtp), submission with STARTTLS, and implicit TLS."
  type        = object({ smtp = number, submission = number, smtps = number })
  default     = { smtp = 25, submission = 587, smtps = 465 }
}

variable "outbound_ips" {
  description = "Every outbound IP (egress source). Each sender node keeps the ones it can bind."
  type        = list(string)
}

variable "edge_replicas" {
  description = "SMTP edge replicas (at least 2)."
  type        = number
  default     = 2
  validation {
    condition     = contains(range(2, 101), var.edge_replicas)
    error_message = "Run between 2 and 100 edge replicas."
  }
}

variable "edge_max_replicas" {
  description = "Upper bound of the edge's CPU autoscaler."
  type        = number
  default     = 10
}

variable "function_max_scale" {
  description = "max-scale of every Knative Service: each pod holds a pool of database connections, so pods × pool must fit the database's connection limit."
  type        = number
  default     = 5
  validation {
    condition     = contains(range(1, 101), var.function_max_scale)
    error_message = "function_max_scale must be between 1 and 100."
  }
}

variable "hot_path_min_scale" {
  description = "min-scale of validate, quota, route and retry (0 scales to zero; 1 keeps latency low)."
  type        = number
  default     = 0
}

variable "load_balancer" {
  description = "upcloud: the Service carries UpCloud's TCP-mode, PROXY-v2 load balancer configuration and the edge expects PROXY protocol; other: plain annotations, var.proxy_protocol decides."
  type        = string
  default     = "upcloud"
  validation {
    condition     = contains(["upcloud", "other"], var.load_balancer)
    error_message = "load_balancer must be upcloud or other."
  }
}

variable "proxy_protocol" {
  description = "With load_balancer = other: whether the load balancer sends PROXY protocol (the edge then requires it)."
  type        = bool
  default     = false
}

variable "proxy_trusted_networks" {
  description = "CIDRs the load balancer connects from, the only peers whose PROXY header the edge accepts: on UpCloud the cluster's private network (modules/upcloud's network_cidr output)."
  type        = list(string)
  default     = ["10.100.0.0/24"]
}

variable "http_trusted_proxies" {
  description = "CIDRs of the hops in front of the HTTP API whose X-Forwarded-For is believed (REMAILS_HTTP_TRUSTED_PROXIES): the queue-proxy on loopback, then the ingress and activator pods. Narrow it to the cluster's pod network where you know it; the browser's address the audit log and the sign-in throttle see is the last one before these."
  type        = list(string)
  default     = ["127.0.0.1/32", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
}

variable "load_balancer_annotations" {
  description = "Extra annotations for the SMTP LoadBalancer Service (merged over the UpCloud configuration)."
  type        = map(string)
  default     = {}
}

variable "sender_port" {
  description = "Host port where each sender node takes its message.routed events."
  type        = number
  default     = 8090
}

variable "knative_namespaces" {
  description = "Namespaces of Knative's data path (broker, activator, networking layer): the only sources admitted to the functions' pods."
  type        = list(string)
  default     = ["knative-eventing", "knative-serving", "kourier-system"]
}

variable "floating_ip_alias" {
  description = "Run, beside each sender, the loop that configures the floating IPs attached to its node on the node's interface (UpCloud leaves that to the OS). Turn off where the node image does it."
  type        = bool
  default     = true
}

variable "monitoring_namespace" {
  description = "The namespace Prometheus runs in: its pods may scrape the functions' metrics port."
  type        = string
  default     = "monitoring"
}

variable "metrics_port" {
  description = "The port every role serves /metrics on (REMAILS_METRICS_LISTEN)."
  type        = number
  default     = 9464
}
