# A complete deployment of xecm-sftp: one inbound route, the export routes,
# one nightly backup. Values that differ per account are in terraform.tfvars;
# the routes are the JSON files beside this one. See ../README.md.

terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.25"
    }
  }
}

# The region comes from var.region here, never from inside the module.
provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ Project = "xecm-sftp" }, var.tags)
  }
}

module "xecm_sftp" {
  source = "../"

  name_prefix         = var.name_prefix
  ecm_secret_arn      = var.ecm_secret_arn
  webhook_secret_arn  = var.webhook_secret_arn
  sftp_secret_arns    = var.sftp_secret_arns
  alarm_sns_topic_arn = var.alarm_sns_topic_arn
  tags                = var.tags

  ingest_routes = {
    acme-supplier-invoices = {
      schedule_expression = "rate(5 minutes)"
      route_json          = file("${path.module}/routes/acme-supplier-invoices.json")
    }
  }

  export_routes = jsondecode(file("${path.module}/export-routes.json"))

  backup_schedules = {
    critical-records = {
      schedule_expression = "cron(0 2 * * ? *)"
      config_json         = file("${path.module}/backups/critical-records.json")
    }
  }
}

variable "region" {
  description = "AWS region to deploy into."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string
  default     = "xecm-sftp"
}

variable "ecm_secret_arn" {
  description = "ARN of the Content Server secret."
  type        = string
}

variable "webhook_secret_arn" {
  description = "ARN of the webhook HMAC key secret."
  type        = string
}

variable "sftp_secret_arns" {
  description = "SFTP secrets by the name the routes use."
  type        = map(string)
}

variable "alarm_sns_topic_arn" {
  description = "SNS topic for the alarms (null: none)."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

output "webhook_url" {
  description = "The approval callback URL to configure in Content Server."
  value       = module.xecm_sftp.webhook_url
}

output "function_arns" {
  description = "The three functions."
  value       = module.xecm_sftp.function_arns
}

output "failed_invocations_queue_url" {
  description = "Failure records."
  value       = module.xecm_sftp.failed_invocations_queue_url
}

output "audit_log_group" {
  description = "Every xecm-sftp event."
  value       = module.xecm_sftp.audit_log_group
}
