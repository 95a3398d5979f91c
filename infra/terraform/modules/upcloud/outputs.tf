output "cluster_id" {
  description = "The Kubernetes cluster (fetch its kubeconfig with upcloud_kubernetes_cluster data or upctl)."
  value       = upcloud_kubernetes_cluster.remails.id
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
