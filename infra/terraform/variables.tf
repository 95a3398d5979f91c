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

variable "tls_certificate" {
  description = "PEM certificate chain for the SMTP edge."
  type        = string
  sensitive   = true
}

variable "tls_private_key" {
  description = "PEM private key for the SMTP edge."
  type        = string
  sensitive   = true
}

variable "broker_class" {
  description = "Knative Broker class: Kafka (default, durable) or MTChannelBasedBroker."
  type        = string
  default     = "Kafka"
  validation {
    condition     = contains(["Kafka", "KafkaNamespaced", "MTChannelBasedBroker", "RabbitMQBroker"], var.broker_class)
    error_message = "broker_class must be Kafka, KafkaNamespaced, MTChannelBasedBroker or RabbitMQBroker."
  }
}

variable "smtp_ports" {
  description = "Load balancer ports: submission and relay with STARTTLS, and implicit TLS."
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

variable "hot_path_min_scale" {
  description = "min-scale of validate, quota, route and retry (0 scales to zero; 1 keeps latency low)."
  type        = number
  default     = 0
}

variable "load_balancer_annotations" {
  description = "Annotations for the SMTP LoadBalancer Service (for UpCloud: TCP mode and PROXY protocol v2)."
  type        = map(string)
  default     = {}
}

variable "sender_port" {
  description = "Host port where each sender node takes its message.routed events."
  type        = number
  default     = 8090
}
