# Optional: the cluster, database and outbound IPs on UpCloud (where the original service
# runs). Apply this first, then the root module with its outputs (see ../../README.md).
terraform {
  required_version = ">= 1.6"
  required_providers {
    upcloud = {
      source  = "UpCloudLtd/upcloud"
      version = "~> 5.0"
    }
  }
}

# Credentials from the environment: UPCLOUD_USERNAME and UPCLOUD_PASSWORD (an API sub-account).
provider "upcloud" {}

resource "upcloud_network" "remails" {
  name = "${var.name}-net"
  zone = var.zone
  ip_network {
    address = var.network_cidr
    dhcp    = true
    family  = "IPv4"
  }
  lifecycle {
    ignore_changes = [router] # UKS attaches a router to the cluster's network
  }
}

resource "upcloud_kubernetes_cluster" "remails" {
  name                    = var.name
  zone                    = var.zone
  network                 = upcloud_network.remails.id
  control_plane_ip_filter = var.control_plane_ip_filter
}

data "upcloud_kubernetes_cluster" "remails" {
  id = upcloud_kubernetes_cluster.remails.id
}

resource "upcloud_kubernetes_node_group" "workers" {
  cluster    = upcloud_kubernetes_cluster.remails.id
  name       = "workers"
  node_count = var.node_count
  plan       = var.node_plan
}

resource "upcloud_managed_database_postgresql" "remails" {
  name  = "${var.name}-pg"
  title = "Remails PostgreSQL"
  plan  = var.database_plan
  zone  = var.zone
  properties {
    version       = "16"
    public_access = false
  }
}

# Outbound IPs for the sender nodes, created detached: the ip_manager function attaches each to
# a live node, moves it when that node dies, and sets its reverse DNS to the root module's
# var.hostname (so they are not managed here after creation).
resource "upcloud_floating_ip_address" "outbound" {
  count  = var.outbound_ip_count
  zone   = var.zone
  access = "public"
  family = "IPv4"
  lifecycle {
    ignore_changes = [mac_address] # the ip_manager moves it between nodes
  }
}
