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
  description = "SQS queue holding async invocations that failed after all retries."
  value       = aws_sqs_queue.failed.id
}
