variable "name_prefix" {
  description = "Prefix of every resource name (functions, roles, bus, queues)."
  type        = string
  default     = "xecm-sftp"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name_prefix))
    error_message = "name_prefix must be 2-31 characters of lowercase letters, digits and '-', starting with a letter."
  }
}

variable "artifacts_dir" {
  description = "Directory holding the zips built by `cargo lambda build --release --arm64 --output-format zip` (one `<function>/bootstrap.zip` per function)."
  type        = string
  default     = "../target/lambda"
}

variable "ecm_secret_arn" {
  description = "ARN of the Secrets Manager secret with the Content Server connection: {\"base_url\",\"base_path\",\"username\",\"password\"}."
  type        = string
}

variable "sftp_secret_arns" {
  description = "SFTP secrets the functions may read, by the name routes use in `sftp_secret`: {\"host\",\"port\",\"username\",\"host_key_sha256\":[...],\"private_key\"|\"password\",\"root\",\"client\":\"ssh2\"|\"russh\",...}."
  type        = map(string)
}

variable "webhook_secret_arn" {
  description = "ARN of the secret with the webhook HMAC keys: {\"hmac_keys\":[\"current\",\"previous\"]}."
  type        = string
}

variable "ingest_routes" {
  description = "Inbound routes: one EventBridge Scheduler schedule each, whose input is {\"route\": <route>} (see events/ingest-scheduled.json)."
  type = map(object({
    schedule_expression = string
    route               = any
    enabled             = optional(bool, true)
  }))
  default = {}
}

variable "export_routes" {
  description = "Outbound export configuration passed to ecm-export as the XECM_EXPORT_ROUTES environment variable (JSON; see events/ and README)."
  type        = any
  default     = {}
}

variable "backup_schedules" {
  description = "Backup snapshots: one schedule each, whose input is {\"backup\": <config>} (see events/backup-scheduled.json)."
  type = map(object({
    schedule_expression = string
    config              = any
    enabled             = optional(bool, true)
  }))
  default = {}
}

variable "schedule_timezone" {
  description = "Time zone of the schedule expressions (IANA name)."
  type        = string
  default     = "UTC"
}

variable "memory_mb" {
  description = "Memory per function in MB. Streaming keeps the working set small; more memory also buys more CPU for SSH crypto."
  type        = map(number)
  default = {
    "sftp-ingest"     = 1024
    "ecm-export"      = 1024
    "backup-snapshot" = 1024
  }
}

variable "timeout_seconds" {
  description = "Timeout per function in seconds. Flows stop claiming work before the deadline; ingest leases must be longer than this."
  type        = map(number)
  default = {
    "sftp-ingest"     = 900
    "ecm-export"      = 300
    "backup-snapshot" = 900
  }
}

variable "reserved_concurrency" {
  description = "Reserved concurrency per function (-1 for none). Caps parallel sessions against partner SFTP servers and the Content Server."
  type        = map(number)
  default = {
    "sftp-ingest"     = 10
    "ecm-export"      = 10
    "backup-snapshot" = 2
  }
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention for the functions' log groups."
  type        = number
  default     = 365
}

variable "kms_key_arn" {
  description = "Optional customer-managed KMS key for environment variables, logs, the failure queue and the event bus. Null uses AWS-managed keys."
  type        = string
  default     = null
}

variable "vpc_subnet_ids" {
  description = "Optional subnets (with a NAT route to partners and the Content Server) to run the functions in. Empty runs outside a VPC."
  type        = list(string)
  default     = []
}

variable "vpc_security_group_ids" {
  description = "Security groups for the functions when vpc_subnet_ids is set."
  type        = list(string)
  default     = []
}

variable "log_level" {
  description = "RUST_LOG filter for the functions."
  type        = string
  default     = "info"
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
