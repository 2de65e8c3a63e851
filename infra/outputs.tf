output "function_arns" {
  description = "ARNs of the three functions, by name."
  value       = { for k, f in aws_lambda_function.fn : k => f.arn }
}

output "webhook_url" {
  description = "Function URL to configure as the approval callback target in Content Server (POST, HMAC-signed)."
  value       = aws_lambda_function_url.export_webhook.function_url
}

output "event_bus_name" {
  description = "EventBridge bus that receives the transfer audit events (source xecm-sftp)."
  value       = aws_cloudwatch_event_bus.this.name
}

output "failed_invocations_queue_url" {
  description = "SQS queue holding failure records: permanent failures sent by the functions, transient ones after Lambda's retries, undeliverable schedules."
  value       = aws_sqs_queue.failed.id
}

output "audit_log_group" {
  description = "Log group keeping every xecm-sftp event (the audit trail)."
  value       = aws_cloudwatch_log_group.audit.name
}

output "export_routes_ssm_path" {
  description = "SSM Parameter Store path ecm-export loads its routes from."
  value       = local.export_routes_path
}

output "kms_key_arn" {
  description = "The KMS key that encrypts the functions' environment, logs, queue, bus and schedules."
  value       = local.kms_key_arn
}
