# The three Lambda functions, their logs, the failure queue and the event bus.

locals {
  functions = toset(["sftp-ingest", "ecm-export", "backup-snapshot"])

  secret_arns = distinct(concat(
    [var.ecm_secret_arn, var.webhook_secret_arn],
    values(var.sftp_secret_arns),
  ))

  common_env = {
    RUST_LOG           = var.log_level
    XECM_ECM_SECRET_ID = var.ecm_secret_arn
    XECM_EVENT_BUS     = aws_cloudwatch_event_bus.this.name
    # Routes name SFTP secrets by a short name; this maps it to the ARN.
    XECM_SFTP_SECRETS = jsonencode(var.sftp_secret_arns)
  }

  function_env = {
    "sftp-ingest" = local.common_env
    "ecm-export" = merge(local.common_env, {
      XECM_WEBHOOK_SECRET_ID = var.webhook_secret_arn
      XECM_EXPORT_ROUTES     = jsonencode(var.export_routes)
    })
    "backup-snapshot" = local.common_env
  }
}

resource "aws_cloudwatch_event_bus" "this" {
  name               = var.name_prefix
  kms_key_identifier = var.kms_key_arn
  tags               = var.tags
}

resource "aws_cloudwatch_log_group" "fn" {
  for_each = local.functions

  name              = "/aws/lambda/${var.name_prefix}-${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

# Async invocations (schedules, webhook-triggered retries) that still fail
# after Lambda's retries land here with their event, so nothing is lost.
resource "aws_sqs_queue" "failed" {
  name                      = "${var.name_prefix}-failed-invocations"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = var.kms_key_arn == null ? true : null
  kms_master_key_id         = var.kms_key_arn
  tags                      = var.tags
}

resource "aws_lambda_function" "fn" {
  for_each = local.functions

  #checkov:skip=CKV_AWS_272:Code signing needs a Signer profile per organisation; enable it where one exists.
  #checkov:skip=CKV_AWS_117:VPC placement is optional (vpc_subnet_ids); partners' SFTP servers are usually on the internet.
  function_name = "${var.name_prefix}-${each.key}"
  description   = "xecm-sftp ${each.key}"
  role          = aws_iam_role.fn[each.key].arn

  filename         = "${var.artifacts_dir}/${each.key}/bootstrap.zip"
  source_code_hash = filebase64sha256("${var.artifacts_dir}/${each.key}/bootstrap.zip")
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = ["arm64"]

  memory_size                    = var.memory_mb[each.key]
  timeout                        = var.timeout_seconds[each.key]
  reserved_concurrent_executions = var.reserved_concurrency[each.key]
  kms_key_arn                    = var.kms_key_arn

  environment {
    variables = local.function_env[each.key]
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.failed.arn
  }

  tracing_config {
    mode = "Active"
  }

  dynamic "vpc_config" {
    for_each = length(var.vpc_subnet_ids) > 0 ? [1] : []
    content {
      subnet_ids         = var.vpc_subnet_ids
      security_group_ids = var.vpc_security_group_ids
    }
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.fn[each.key].name
  }

  tags = var.tags
}

# Transient failures are reported as errors (Lambda retries them); permanent
# ones are answered without an error, so two retries are enough here.
resource "aws_lambda_function_event_invoke_config" "fn" {
  for_each = local.functions

  function_name                = aws_lambda_function.fn[each.key].function_name
  maximum_retry_attempts       = 2
  maximum_event_age_in_seconds = 3600

  destination_config {
    on_failure {
      destination = aws_sqs_queue.failed.arn
    }
  }
}

# The ECM approval webhook. Authentication is the HMAC signature that the
# function verifies before it reads the body (timestamp window, constant-time
# compare, two keys during rotation), so the URL itself is public.
resource "aws_lambda_function_url" "export_webhook" {
  #checkov:skip=CKV_AWS_258:The caller is the Content Server, which cannot sign AWS SigV4; requests are authenticated by HMAC in the function.
  function_name      = aws_lambda_function.fn["ecm-export"].function_name
  authorization_type = "NONE"
  invoke_mode        = "BUFFERED"
}
