variable "name" {
  description = "Name prefix of the UpCloud resources."
  type        = string
  default     = "remails"
}

variable "zone" {
  description = "UpCloud zone, for instance fi-hel1 or de-fra1."
  type        = string
  default     = "de-fra1"
}

variable "network_cidr" {
  description = "Private network of the cluster."
  type        = string
  default     = "10.100.0.0/24"
}

variable "control_plane_ip_filter" {
  description = "Addresses allowed to reach the Kubernetes API."
  type        = list(string)
}

variable "node_count" {
  description = "Worker nodes (each runs one sender)."
  type        = number
  default     = 2
}

variable "node_plan" {
  description = "Worker node plan."
  type        = string
  default     = "2xCPU-4GB"
}

variable "database_plan" {
  description = "Managed PostgreSQL plan."
  type        = string
  default     = "1x1xCPU-2GB-25GB"
}

variable "outbound_ip_count" {
  description = "Floating IPs for outbound mail."
  type        = number
  default     = 2
}
