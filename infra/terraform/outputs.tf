output "smtp_endpoint" {
  description = "Where applications submit mail (port 587 with STARTTLS, 465 with TLS); port 25 is the inbound MX."
  value       = try(kubernetes_service_v1.smtp.status[0].load_balancer[0].ingress[0].ip, kubernetes_service_v1.smtp.status[0].load_balancer[0].ingress[0].hostname, null)
}

output "api_url" {
  description = "The HTTP API (OpenAPI at /openapi.json, docs at /docs)."
  value       = try(kubernetes_manifest.api.object.status.url, null)
}
