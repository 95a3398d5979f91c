output "cluster_id" {
  description = "The Kubernetes cluster."
  value       = upcloud_kubernetes_cluster.remails.id
}

output "kubeconfig" {
  description = "Credentials for kubectl and the root module's kubernetes provider (KUBE_CONFIG_PATH)."
  value       = data.upcloud_kubernetes_cluster.remails.kubeconfig
  sensitive   = true
}

output "database_url" {
  description = "PostgreSQL URL for the root module's database_url."
  value       = upcloud_managed_database_postgresql.remails.service_uri
  sensitive   = true
}

output "outbound_ips" {
  description = "The floating IPs, for the root module's outbound_ips."
  value       = upcloud_floating_ip_address.outbound[*].ip_address
}

output "network_cidr" {
  description = "The cluster's private network, where the load balancer connects from (root module's proxy_trusted_networks)."
  value       = var.network_cidr
}
