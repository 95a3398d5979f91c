# The daily backup: `remails backup DEST`, one age-encrypted file per run, to an S3-compatible
# store kept apart from the cluster. A failed run exits non-zero (the Job shows it) and is
# recorded in the database, which moves remails_backup_last_failure_timestamp_seconds; no good
# backup for 26 h raises RemailsBackupTooOld.
#
# The store's credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally AWS_REGION)
# come from a Secret created by hand, like the UpCloud one, so they stay out of the state.
# The master key is NOT in the backup: keep var.master_key somewhere else as well.

variable "backup_destination" {
  description = "s3://bucket/prefix the daily backup goes to; empty: no backup CronJob."
  type        = string
  default     = ""
}

variable "backup_recipients" {
  description = "age public keys (age1…) the backups are encrypted to."
  type        = list(string)
  default     = []
}

variable "backup_s3_endpoint" {
  description = "The S3-compatible endpoint URL (empty: AWS S3)."
  type        = string
  default     = ""
}

variable "backup_schedule" {
  description = "When the backup runs (cron, UTC)."
  type        = string
  default     = "17 3 * * *"
}

locals {
  backup_credentials_secret = "remails-backup-s3"
  backup_env = {
    REMAILS_BACKUP_RECIPIENTS  = join(",", var.backup_recipients)
    REMAILS_BACKUP_S3_ENDPOINT = var.backup_s3_endpoint # empty: AWS S3
  }
}

resource "kubernetes_cron_job_v1" "backup" {
  #checkov:skip=CKV_K8S_14:the image is the variable var.image; README.md requires pinning it by digest
  #checkov:skip=CKV_K8S_43:the image is the variable var.image; README.md requires pinning it by digest
  #checkov:skip=CKV_K8S_35:settings are read from the environment (pydantic-settings); the values come from Secrets, never the manifest
  count = contains([""], var.backup_destination) ? 0 : 1
  metadata {
    name      = "remails-backup"
    namespace = kubernetes_namespace_v1.remails.metadata[0].name
    labels    = local.labels
  }
  spec {
    schedule                      = var.backup_schedule
    timezone                      = "Etc/UTC"
    concurrency_policy            = "Forbid"
    starting_deadline_seconds     = 3600
    successful_jobs_history_limit = 3
    failed_jobs_history_limit     = 5
    job_template {
      metadata { labels = local.labels }
      spec {
        backoff_limit = 2
        template {
          metadata { labels = local.labels }
          spec {
            restart_policy                  = "OnFailure"
            automount_service_account_token = false
            container {
              name              = "backup"
              image             = var.image
              image_pull_policy = "Always"
              args              = ["backup", var.backup_destination, "--json"]
              env_from {
                secret_ref { name = kubernetes_secret_v1.remails.metadata[0].name }
              }
              env_from {
                secret_ref { name = local.backup_credentials_secret }
              }
              dynamic "env" {
                for_each = local.backup_env
                content {
                  name  = env.key
                  value = env.value
                }
              }
              resources {
                requests = { cpu = "100m", memory = "256Mi" }
                limits   = { cpu = "1", memory = "512Mi" }
              }
              security_context {
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
            volume {
              name = "tmp"
              empty_dir {}
            }
          }
        }
      }
    }
  }
}
