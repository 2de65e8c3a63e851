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
  description = "Directory holding the zips built by tests/infra/build-lambdas.sh (`cargo lambda build --release --arm64 --output-format zip -p ...`): one `<function>/bootstrap.zip` per function. Null: the repository's target/lambda, found from this module's own path."
  type        = string
  default     = null
}

variable "ecm_secret_arn" {
  description = "ARN of the Secrets Manager secret with the Content Server connection: {\"base_url\",\"base_path\",\"username\",\"password\"}."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z]{2}(-[a-z]+)+-[0-9]:[0-9]{12}:secret:.+$", var.ecm_secret_arn))
    error_message = "ecm_secret_arn must be a full Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>-<suffix>), not a name."
  }
}

variable "sftp_secret_arns" {
  description = "SFTP secrets by the name routes use in `sftp_secret` → secret ARN. Each function may read only the ones its own routes name. Secret: {\"host\",\"port\",\"username\",\"host_key_sha256\":[...],\"private_key\"|\"password\",\"root\",\"client\":\"ssh2\"|\"russh\",...}."
  type        = map(string)

  validation {
    condition     = alltrue([for arn in values(var.sftp_secret_arns) : can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z]{2}(-[a-z]+)+-[0-9]:[0-9]{12}:secret:.+$", arn))])
    error_message = "Every value of sftp_secret_arns must be a full Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>-<suffix>)."
  }
}

variable "webhook_secret_arn" {
  description = "ARN of the secret with the webhook HMAC keys: {\"hmac_keys\":[\"current\",\"previous\"]}."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z]{2}(-[a-z]+)+-[0-9]:[0-9]{12}:secret:.+$", var.webhook_secret_arn))
    error_message = "webhook_secret_arn must be a full Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>-<suffix>), not a name."
  }
}

variable "ingest_routes" {
  description = "Inbound routes: one EventBridge Scheduler schedule each, whose input is {\"route\": <route>} (see events/ingest-scheduled.json). `route_json` is the route as JSON text, e.g. file(\"routes/x.json\"): a JSON string keeps routes of different shapes in one map (with `any`, Terraform would demand one type for all)."
  type = map(object({
    schedule_expression = string
    route_json          = string
    enabled             = optional(bool, true)
    # SQS fan-out (docs/fanout.md, fanout.tf); null: the scheduled run streams every file.
    fan_out = optional(object({
      max_concurrency              = optional(number, 2)
      batch_size                   = optional(number, 5)
      max_receives                 = optional(number, 5)
      max_backlog                  = optional(number)
      dlq_max_receive_count        = optional(number, 10)
      visibility_timeout_seconds   = optional(number)
      oldest_message_alarm_seconds = optional(number, 900)
      fifo                         = optional(bool, false)
    }))
  }))
  default = {}

  validation {
    condition = alltrue([for r in values(var.ingest_routes) : r.fan_out == null || (
      r.fan_out.max_concurrency >= 2 && r.fan_out.max_concurrency <= 1000 &&
      r.fan_out.batch_size >= 1 && r.fan_out.batch_size <= 10 &&
      r.fan_out.max_receives >= 1 && r.fan_out.max_receives <= 100 &&
      r.fan_out.dlq_max_receive_count >= 1 && r.fan_out.dlq_max_receive_count <= 1000
    )])
    error_message = "ingest_routes[*].fan_out: max_concurrency must be 2-1000 (Lambda's range), batch_size 1-10, max_receives 1-100, dlq_max_receive_count 1-1000."
  }

  validation {
    condition     = alltrue([for r in values(var.ingest_routes) : can(jsondecode(r.route_json).name) && can(jsondecode(r.route_json).sftp_secret)])
    error_message = "Every ingest_routes[*].route_json must be a JSON route object with at least \"name\" and \"sftp_secret\" (see events/ingest-scheduled.json)."
  }

  validation {
    condition     = alltrue([for k in keys(var.ingest_routes) : can(regex("^[A-Za-z0-9_.-]{1,57}$", k))])
    error_message = "ingest_routes keys name schedules (ingest-<key>, at most 64 characters): 1-57 letters, digits, '.', '_' or '-'."
  }
}

variable "export_routes" {
  description = "Outbound export configuration ({\"export_history\":…,\"routes\":[…]}, see events/export-routes.json). Written to SSM Parameter Store, one parameter per route under /<name_prefix>/export-routes/, which ecm-export reads once per cold start. Leave empty when export_routes_ssm_path names parameters kept elsewhere."
  type        = any
  default     = {}
}

variable "export_routes_ssm_path" {
  description = "Optional SSM Parameter Store path (starting and ending with '/') holding the export routes, written by something else: every parameter under it is a JSON object with `routes` and/or `export_history`. Null: this module writes var.export_routes under /<name_prefix>/export-routes/."
  type        = string
  default     = null

  validation {
    condition     = var.export_routes_ssm_path == null || can(regex("^/([A-Za-z0-9_.-]+/)+$", var.export_routes_ssm_path))
    error_message = "export_routes_ssm_path must be an SSM path such as /xecm/export-routes/ (starting and ending with '/')."
  }
}

variable "export_sftp_secret_names" {
  description = "Extra SFTP secret names (keys of sftp_secret_arns) that ecm-export may read, for routes kept under export_routes_ssm_path; names used in var.export_routes are added automatically."
  type        = list(string)
  default     = []
}

variable "backup_schedules" {
  description = "Backup snapshots: one schedule each, whose input is {\"backup\": <config>} (see events/backup-scheduled.json). `config_json` is the backup configuration as JSON text, e.g. file(\"backups/x.json\")."
  type = map(object({
    schedule_expression = string
    config_json         = string
    enabled             = optional(bool, true)
  }))
  default = {}

  validation {
    condition     = alltrue([for b in values(var.backup_schedules) : can(jsondecode(b.config_json).name) && can(jsondecode(b.config_json).sftp_secret)])
    error_message = "Every backup_schedules[*].config_json must be a JSON backup object with at least \"name\" and \"sftp_secret\" (see events/backup-scheduled.json)."
  }

  validation {
    condition     = alltrue([for k in keys(var.backup_schedules) : can(regex("^[A-Za-z0-9_.-]{1,57}$", k))])
    error_message = "backup_schedules keys name schedules (backup-<key>, at most 64 characters): 1-57 letters, digits, '.', '_' or '-'."
  }
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
  description = "Reserved concurrency per function (-1 for none). Caps parallel sessions against partner SFTP servers and the Content Server. The default reserves nothing: a fresh account's quota is often 10 concurrent executions and Lambda keeps 100 unreserved, so any reservation fails there. Raise the quota first, then set e.g. 10/10/2."
  type        = map(number)
  default = {
    "sftp-ingest"     = -1
    "ecm-export"      = -1
    "backup-snapshot" = -1
  }
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention for the functions' log groups."
  type        = number
  default     = 365
}

variable "kms_key_arn" {
  description = "Optional customer-managed KMS key for environment variables, logs, the failure queue, the event bus and its archive, and the schedules. Null: this module creates one (kms.tf). Your own key's policy needs the grants kms.tf documents."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z]{2}(-[a-z]+)+-[0-9]:[0-9]{12}:key/[0-9a-f-]{36}$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<uuid>); an alias is not accepted by every service used here."
  }
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

variable "alarm_sns_topic_arn" {
  description = "Optional SNS topic that receives the alarms (and their OK). Null: the alarms exist but notify nobody."
  type        = string
  default     = null

  validation {
    condition     = var.alarm_sns_topic_arn == null || can(regex("^arn:aws[a-z-]*:sns:[a-z]{2}(-[a-z]+)+-[0-9]:[0-9]{12}:[A-Za-z0-9_-]{1,256}(\\.fifo)?$", var.alarm_sns_topic_arn))
    error_message = "alarm_sns_topic_arn must be an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic>)."
  }
}

variable "alarm_transfer_failed_per_hour" {
  description = "Alarm when more `Transfer Failed` events than this arrive in an hour."
  type        = number
  default     = 0
}

variable "alarm_export_rejected_per_hour" {
  description = "Alarm when more `Export Rejected` events than this arrive in an hour."
  type        = number
  default     = 0
}

variable "event_archive_retention_days" {
  description = "How long the bus archive (the transfer history, replayable) keeps events; 0 keeps them forever."
  type        = number
  default     = 400
}

variable "audit_log_retention_days" {
  description = "Retention of the audit log group that receives every xecm-sftp event."
  type        = number
  default     = 400
}

variable "manage_webhook_invoke_permission" {
  description = "Add the `lambda:InvokeFunction` permission (condition lambda:InvokedViaFunctionUrl) that new Function URLs need, with the AWS CLI (v2.31+) at apply time, because the pinned provider cannot express its condition. False: add it yourself (README)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
