# The transfer history and the alarms.
#
# - Every event on the bus (source xecm-sftp) is kept in an archive (replay)
#   and, through the audit rule, in a log group (search, metric filters).
# - Alarms go to var.alarm_sns_topic_arn (none when null): function errors
#   and throttles, permanent failures the functions answered as handled,
#   messages waiting in the failure queue, and the rates of `Transfer Failed`
#   and `Export Rejected` events.

locals {
  alarm_actions     = var.alarm_sns_topic_arn == null ? [] : [var.alarm_sns_topic_arn]
  audit_log_group   = "/aws/events/${var.name_prefix}-audit"
  metrics_namespace = "xecm-sftp/${var.name_prefix}"
  audit_rates = {
    "transfer-failed" = { detail_type = "Transfer Failed", threshold = var.alarm_transfer_failed_per_hour }
    "export-rejected" = { detail_type = "Export Rejected", threshold = var.alarm_export_rejected_per_hour }
  }
}

resource "aws_cloudwatch_event_archive" "history" {
  name               = "${var.name_prefix}-history"
  description        = "xecm-sftp transfer history (every event from source xecm-sftp)"
  event_source_arn   = aws_cloudwatch_event_bus.this.arn
  retention_days     = var.event_archive_retention_days
  kms_key_identifier = local.kms_key_arn
  event_pattern      = jsonencode({ source = ["xecm-sftp"] })
}

resource "aws_cloudwatch_log_group" "audit" {
  #checkov:skip=CKV_AWS_338:Retention is the audit_log_retention_days variable (default 400 days); the archive keeps the events as well.
  name              = local.audit_log_group
  retention_in_days = var.audit_log_retention_days
  kms_key_id        = local.kms_key_arn
  tags              = var.tags
}

resource "aws_cloudwatch_event_rule" "audit" {
  name           = "${var.name_prefix}-audit"
  description    = "Keep every xecm-sftp audit event in ${local.audit_log_group}."
  event_bus_name = aws_cloudwatch_event_bus.this.name
  event_pattern  = jsonencode({ source = ["xecm-sftp"] })
  tags           = var.tags
}

resource "aws_cloudwatch_event_target" "audit" {
  rule           = aws_cloudwatch_event_rule.audit.name
  event_bus_name = aws_cloudwatch_event_bus.this.name
  arn            = aws_cloudwatch_log_group.audit.arn
}

# EventBridge writes to a log group through the group's resource policy
# (an account has at most 10 such policies per region).
data "aws_iam_policy_document" "audit_logs" {
  statement {
    sid       = "EventBridgeAuditEvents"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.audit.arn}:*"]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com", "delivery.logs.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.audit.arn]
    }
  }
}

resource "aws_cloudwatch_log_resource_policy" "audit" {
  policy_name     = "${var.name_prefix}-audit-events"
  policy_document = data.aws_iam_policy_document.audit_logs.json
}

resource "aws_cloudwatch_log_metric_filter" "audit_rate" {
  for_each = local.audit_rates

  name           = "${var.name_prefix}-${each.key}"
  log_group_name = aws_cloudwatch_log_group.audit.name
  pattern        = "{ $.detail-type = \"${each.value.detail_type}\" }"

  metric_transformation {
    name          = each.value.detail_type
    namespace     = local.metrics_namespace
    value         = "1"
    default_value = "0"
  }
}

resource "aws_cloudwatch_metric_alarm" "audit_rate" {
  for_each = local.audit_rates

  alarm_name          = "${var.name_prefix}-${each.key}-rate"
  alarm_description   = "More than ${each.value.threshold} '${each.value.detail_type}' events in an hour (see ${local.audit_log_group})."
  namespace           = local.metrics_namespace
  metric_name         = each.value.detail_type
  statistic           = "Sum"
  period              = 3600
  evaluation_periods  = 1
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags

  depends_on = [aws_cloudwatch_log_metric_filter.audit_rate]
}

# A permanent failure is answered as handled (no Lambda retry), so Lambda's
# Errors metric does not count it; the runtime logs it with
# `"handled_failure": true` and this filter counts it.
resource "aws_cloudwatch_log_metric_filter" "handled_failure" {
  for_each = local.functions

  name           = "${var.name_prefix}-${each.key}-handled-failures"
  log_group_name = aws_cloudwatch_log_group.fn[each.key].name
  pattern        = "{ $.fields.handled_failure IS TRUE }"

  metric_transformation {
    name          = "HandledFailures-${each.key}"
    namespace     = local.metrics_namespace
    value         = "1"
    default_value = "0"
  }
}

locals {
  function_alarms = merge([
    for fn in local.functions : {
      "${fn}-errors"    = { fn = fn, namespace = "AWS/Lambda", metric = "Errors", what = "invocations failed transiently (Lambda retries them)" }
      "${fn}-throttles" = { fn = fn, namespace = "AWS/Lambda", metric = "Throttles", what = "invocations were throttled" }
    }
  ]...)
}

resource "aws_cloudwatch_metric_alarm" "function" {
  for_each = local.function_alarms

  alarm_name          = "${var.name_prefix}-${each.key}"
  alarm_description   = "${var.name_prefix}-${each.value.fn}: ${each.value.what}."
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  dimensions          = { FunctionName = aws_lambda_function.fn[each.value.fn].function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "handled_failure" {
  for_each = local.functions

  alarm_name          = "${var.name_prefix}-${each.key}-permanent-failures"
  alarm_description   = "${var.name_prefix}-${each.key} answered a permanent failure (its record is in the failure queue)."
  namespace           = local.metrics_namespace
  metric_name         = "HandledFailures-${each.key}"
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags

  depends_on = [aws_cloudwatch_log_metric_filter.handled_failure]
}

resource "aws_cloudwatch_metric_alarm" "failed_queue" {
  alarm_name          = "${var.name_prefix}-failed-invocations-waiting"
  alarm_description   = "Failed invocations are waiting in ${aws_sqs_queue.failed.name} (inspect, fix, redrive)."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.failed.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}
