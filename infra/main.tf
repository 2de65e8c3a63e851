# The three Lambda functions, their logs, the failure queue and the event bus.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  functions = toset(["sftp-ingest", "ecm-export", "backup-snapshot"])

  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.region
  partition  = data.aws_partition.current.partition

  # Relative to this module, not to wherever terraform is run from.
  artifacts_dir = coalesce(var.artifacts_dir, "${path.module}/../target/lambda")

  # The customer-managed key: the caller's, or one this module creates.
  kms_key_arn = var.kms_key_arn != null ? var.kms_key_arn : aws_kms_key.this[0].arn

  # Per-route least privilege: each function may read only the SFTP secrets
  # that its own routes name (`sftp_secret`), looked up in sftp_secret_arns.
  export_routes_list = try(var.export_routes.routes, [])
  sftp_secret_names = {
    "sftp-ingest" = distinct([for r in values(var.ingest_routes) : try(jsondecode(r.route_json).sftp_secret, "")])
    "ecm-export" = distinct(concat(
      flatten([for r in local.export_routes_list : [for d in try(r.destinations, []) : try(d.sftp_secret, "")]]),
      var.export_sftp_secret_names,
    ))
    "backup-snapshot" = distinct([for b in values(var.backup_schedules) : try(jsondecode(b.config_json).sftp_secret, "")])
  }
  sftp_secrets = {
    for fn, names in local.sftp_secret_names :
    fn => { for n in names : n => var.sftp_secret_arns[n] if contains(keys(var.sftp_secret_arns), n) }
  }
  unknown_sftp_secrets = {
    for fn, names in local.sftp_secret_names :
    fn => [for n in names : n if !contains(keys(var.sftp_secret_arns), n)]
  }
  secret_arns = {
    "sftp-ingest"     = concat([var.ecm_secret_arn], values(local.sftp_secrets["sftp-ingest"]))
    "ecm-export"      = concat([var.ecm_secret_arn, var.webhook_secret_arn], values(local.sftp_secrets["ecm-export"]))
    "backup-snapshot" = concat([var.ecm_secret_arn], values(local.sftp_secrets["backup-snapshot"]))
  }

  # Export routes live in SSM Parameter Store (one parameter per route, no
  # 4 KB environment limit), either written here from var.export_routes or
  # kept elsewhere under var.export_routes_ssm_path.
  export_routes_path = coalesce(var.export_routes_ssm_path, "/${var.name_prefix}/export-routes/")

  common_env = {
    RUST_LOG               = var.log_level
    XECM_ECM_SECRET_ID     = var.ecm_secret_arn
    XECM_EVENT_BUS         = aws_cloudwatch_event_bus.this.name
    XECM_FAILURE_QUEUE_URL = aws_sqs_queue.failed.id
  }

  function_env = {
    "sftp-ingest" = merge(local.common_env, {
      # Routes name SFTP secrets by a short name; this maps it to the ARN.
      XECM_SFTP_SECRETS = jsonencode(local.sftp_secrets["sftp-ingest"])
    })
    "ecm-export" = merge(local.common_env, {
      XECM_SFTP_SECRETS           = jsonencode(local.sftp_secrets["ecm-export"])
      XECM_WEBHOOK_SECRET_ID      = var.webhook_secret_arn
      XECM_EXPORT_ROUTES_SSM_PATH = local.export_routes_path
    })
    "backup-snapshot" = merge(local.common_env, {
      XECM_SFTP_SECRETS = jsonencode(local.sftp_secrets["backup-snapshot"])
    })
  }
}

resource "aws_cloudwatch_event_bus" "this" {
  name               = var.name_prefix
  kms_key_identifier = local.kms_key_arn
  tags               = var.tags
}

resource "aws_cloudwatch_log_group" "fn" {
  for_each = local.functions

  #checkov:skip=CKV_AWS_338:Retention is the log_retention_days variable (default 365); audit events are kept in the bus archive and the audit log group as well.
  name              = "/aws/lambda/${var.name_prefix}-${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = local.kms_key_arn
  tags              = var.tags
}

# Failed invocations, with their event, so nothing is lost:
# - the function itself sends a record here for a permanent failure (bad
#   event, bad configuration, refused input) and answers the invocation as
#   handled, so Lambda does not retry it;
# - a transient failure is returned as an error; Lambda retries an async
#   invocation twice (event invoke config below) and then its on-failure
#   destination sends Lambda's record here;
# - Scheduler and the continuation rule send what they could not deliver.
# The functions have no dead_letter_config: with the on-failure destination
# as well, every exhausted invocation would arrive here twice.
resource "aws_sqs_queue" "failed" {
  name                              = "${var.name_prefix}-failed-invocations"
  message_retention_seconds         = 1209600
  kms_master_key_id                 = local.kms_key_arn
  kms_data_key_reuse_period_seconds = 300
  tags                              = var.tags
}

resource "aws_lambda_function" "fn" {
  for_each = local.functions

  #checkov:skip=CKV_AWS_272:Code signing needs a Signer profile per organisation; enable it where one exists.
  #checkov:skip=CKV_AWS_117:VPC placement is optional (vpc_subnet_ids); partners' SFTP servers are usually on the internet.
  #checkov:skip=CKV_AWS_116:Failed async invocations go to the on-failure destination (aws_lambda_function_event_invoke_config); a DLQ as well would deliver each failure twice.
  #checkov:skip=CKV_AWS_115:Reserved concurrency is the reserved_concurrency variable; the default (-1, unreserved) fits a fresh account's concurrency quota of 10.
  function_name = "${var.name_prefix}-${each.key}"
  description   = "xecm-sftp ${each.key}"
  role          = aws_iam_role.fn[each.key].arn

  filename         = "${local.artifacts_dir}/${each.key}/bootstrap.zip"
  source_code_hash = filebase64sha256("${local.artifacts_dir}/${each.key}/bootstrap.zip")
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = ["arm64"]

  memory_size                    = var.memory_mb[each.key]
  timeout                        = var.timeout_seconds[each.key]
  reserved_concurrent_executions = var.reserved_concurrency[each.key]
  kms_key_arn                    = local.kms_key_arn

  environment {
    variables = local.function_env[each.key]
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

  lifecycle {
    precondition {
      condition     = length(local.unknown_sftp_secrets[each.key]) == 0
      error_message = "Routes of ${each.key} name SFTP secrets that sftp_secret_arns does not map to an ARN: ${join(", ", local.unknown_sftp_secrets[each.key])}. Add them to sftp_secret_arns (the function may read only the secrets listed there)."
    }
  }

  depends_on = [aws_iam_role_policy.fn]
}

# What Lambda does with an asynchronous invocation (schedules, the
# continuation rule, console "Event" invokes) that returns an error. Only
# transient failures are returned as errors (errorType `Transient.*`): the
# runtime answers a permanent failure (`Permanent.*`) as handled, after
# sending its record to the failure queue, so Lambda never runs it again.
# A transient error is retried twice (Lambda waits about 1 and then 2
# minutes), then Lambda's own record goes to the failure queue.
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

# A public Function URL needs a resource-based permission for anyone to call
# it (without it every webhook gets 403). Kept in state here rather than
# relying on the statement the provider adds untracked on creation.
resource "aws_lambda_permission" "export_webhook_url" {
  #checkov:skip=CKV_AWS_301:Public by design, limited to the Function URL (function_url_auth_type NONE); every request is HMAC-verified by the function.
  statement_id           = "AllowPublicWebhookFunctionUrl"
  action                 = "lambda:InvokeFunctionUrl"
  function_name          = aws_lambda_function.fn["ecm-export"].function_name
  principal              = "*"
  function_url_auth_type = "NONE"
}

# Since October 2025, AWS also requires `lambda:InvokeFunction` for function
# URLs created after that date, limited by the condition
# `lambda:InvokedViaFunctionUrl = true`. aws_lambda_permission of provider
# 6.25 cannot set that condition, and the same permission without it would
# let any AWS account invoke ecm-export directly (manual resends and package
# exports, bypassing the HMAC). So the statement is added with the AWS CLI
# (v2.31 or later) at apply time; it is idempotent and removed with the
# function. Set manage_webhook_invoke_permission = false to add it yourself.
resource "terraform_data" "export_webhook_invoke_permission" {
  count = var.manage_webhook_invoke_permission ? 1 : 0

  triggers_replace = [aws_lambda_function.fn["ecm-export"].arn, aws_lambda_function_url.export_webhook.function_url]

  provisioner "local-exec" {
    interpreter = ["/bin/sh", "-c"]
    command     = <<-EOT
      set -e
      aws lambda remove-permission --region "$REGION" --function-name "$FUNCTION" \
        --statement-id AllowPublicWebhookInvokeViaUrl >/dev/null 2>&1 || true
      aws lambda add-permission --region "$REGION" --function-name "$FUNCTION" \
        --statement-id AllowPublicWebhookInvokeViaUrl --action lambda:InvokeFunction \
        --principal '*' --invoked-via-function-url >/dev/null
    EOT
    environment = {
      REGION   = local.region
      FUNCTION = aws_lambda_function.fn["ecm-export"].function_name
    }
  }
}
