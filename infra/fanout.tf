# SQS fan-out of ingest routes (docs/fanout.md). A route with `fan_out` set
# in var.ingest_routes gets its own work queue: its scheduled run (the
# poller) lists, checks readiness and claims, then sends one message per
# claimed file here; the same sftp-ingest function, triggered by this queue,
# streams, places and finishes each file.
#
# - One queue per route, so the event source mapping's maximum concurrency
#   bounds the sessions against that partner's server: at most
#   max_concurrency x (route parallelism + 1) worker sessions, plus the
#   poller's (a FIFO queue, one message group per route, processes one
#   batch at a time).
# - The visibility timeout is longer than the function's timeout (a worker
#   still running never sees its message again), six times by default.
# - A message the worker could not finish after `max_receives` receives has
#   its file moved to failed/ with the reason by the worker itself; the DLQ
#   (redrive after dlq_max_receive_count, which must be larger) catches only
#   what the worker could not handle at all (an unreadable body, an SFTP
#   server unreachable at every receive). Both alarm.

locals {
  fan_out_routes = { for k, r in var.ingest_routes : k => r.fan_out if r.fan_out != null }

  fan_out_queue_names = {
    for k, f in local.fan_out_routes : k => "${var.name_prefix}-ingest-${k}${f.fifo ? ".fifo" : ""}"
  }
  fan_out_dlq_names = {
    for k, f in local.fan_out_routes : k => "${var.name_prefix}-ingest-${k}-dlq${f.fifo ? ".fifo" : ""}"
  }

  # The schedule's input: the route as configured, plus the queue this
  # module created for it (the poller sends there).
  ingest_route_inputs = {
    for k, r in var.ingest_routes : k => merge(jsondecode(r.route_json), {
      for f in(r.fan_out == null ? [] : [r.fan_out]) : "fan_out" => {
        queue_url    = aws_sqs_queue.fan_out[k].url
        max_receives = f.max_receives
        max_backlog  = f.max_backlog
      }
    })
  }

  ingest_timeout = var.timeout_seconds["sftp-ingest"]
}

resource "aws_sqs_queue" "fan_out_dlq" {
  for_each = local.fan_out_routes

  name                              = local.fan_out_dlq_names[each.key]
  fifo_queue                        = each.value.fifo
  message_retention_seconds         = 1209600
  kms_master_key_id                 = local.kms_key_arn
  kms_data_key_reuse_period_seconds = 300
  tags                              = var.tags
}

resource "aws_sqs_queue" "fan_out" {
  for_each = local.fan_out_routes

  name                              = local.fan_out_queue_names[each.key]
  fifo_queue                        = each.value.fifo
  visibility_timeout_seconds        = coalesce(each.value.visibility_timeout_seconds, min(43200, 6 * local.ingest_timeout))
  message_retention_seconds         = 1209600
  receive_wait_time_seconds         = 20
  kms_master_key_id                 = local.kms_key_arn
  kms_data_key_reuse_period_seconds = 300
  tags                              = var.tags

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.fan_out_dlq[each.key].arn
    maxReceiveCount     = each.value.dlq_max_receive_count
  })

  lifecycle {
    precondition {
      condition     = coalesce(each.value.visibility_timeout_seconds, min(43200, 6 * local.ingest_timeout)) > local.ingest_timeout
      error_message = "ingest_routes[\"${each.key}\"].fan_out.visibility_timeout_seconds must be longer than the sftp-ingest timeout (${local.ingest_timeout} s): a worker still running would see its message delivered again."
    }
    precondition {
      condition     = each.value.dlq_max_receive_count > each.value.max_receives
      error_message = "ingest_routes[\"${each.key}\"].fan_out.dlq_max_receive_count must be larger than max_receives: the worker moves a file that keeps failing to failed/ at max_receives, before the message would go to the DLQ."
    }
  }
}

# Only the route's own work queue may move messages into its DLQ.
resource "aws_sqs_queue_redrive_allow_policy" "fan_out_dlq" {
  for_each = local.fan_out_routes

  queue_url = aws_sqs_queue.fan_out_dlq[each.key].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.fan_out[each.key].arn]
  })
}

resource "aws_lambda_event_source_mapping" "fan_out" {
  for_each = local.fan_out_routes

  event_source_arn        = aws_sqs_queue.fan_out[each.key].arn
  function_name           = aws_lambda_function.fn["sftp-ingest"].arn
  batch_size              = each.value.batch_size
  function_response_types = ["ReportBatchItemFailures"]
  enabled                 = var.ingest_routes[each.key].enabled

  # Standard queues only: a FIFO queue's concurrency is its message groups.
  dynamic "scaling_config" {
    for_each = each.value.fifo ? [] : [1]
    content {
      maximum_concurrency = each.value.max_concurrency
    }
  }

  tags = var.tags

  depends_on = [aws_iam_role_policy.fan_out]
}

# sftp-ingest sends to its routes' work queues (as the poller) and receives
# from them (the event source mapping uses the function's role).
data "aws_iam_policy_document" "fan_out" {
  count = length(local.fan_out_routes) > 0 ? 1 : 0

  statement {
    sid       = "FanOutSend"
    actions   = ["sqs:SendMessage"]
    resources = [for q in aws_sqs_queue.fan_out : q.arn]
  }

  statement {
    sid = "FanOutReceive"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
    ]
    resources = [for q in aws_sqs_queue.fan_out : q.arn]
  }
}

resource "aws_iam_role_policy" "fan_out" {
  count = length(local.fan_out_routes) > 0 ? 1 : 0

  name   = "${var.name_prefix}-sftp-ingest-fan-out"
  role   = aws_iam_role.fn["sftp-ingest"].id
  policy = data.aws_iam_policy_document.fan_out[0].json
}

resource "aws_cloudwatch_metric_alarm" "fan_out_dlq_depth" {
  for_each = local.fan_out_routes

  alarm_name          = "${var.name_prefix}-ingest-${each.key}-dlq-depth"
  alarm_description   = "Work messages of route ${each.key} are in ${aws_sqs_queue.fan_out_dlq[each.key].name}: the worker could not handle them (see its log), their files wait in .inflight/ until the poller takes the claims over. Fix, then redrive."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.fan_out_dlq[each.key].name }
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

resource "aws_cloudwatch_metric_alarm" "fan_out_oldest_message" {
  for_each = local.fan_out_routes

  alarm_name          = "${var.name_prefix}-ingest-${each.key}-oldest-message"
  alarm_description   = "The oldest work message of route ${each.key} is older than ${each.value.oldest_message_alarm_seconds} s: the workers fall behind (raise max_concurrency if the partner's server allows) or keep failing. Keep it below the route's lease_secs, after which the poller takes the claims over."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.fan_out[each.key].name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = each.value.oldest_message_alarm_seconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

output "fan_out_queue_urls" {
  description = "Work queues of the fan-out ingest routes, by route key (their DLQs: fan_out_dlq_urls)."
  value       = { for k, q in aws_sqs_queue.fan_out : k => q.url }
}

output "fan_out_dlq_urls" {
  description = "Dead-letter queues of the fan-out ingest routes, by route key."
  value       = { for k, q in aws_sqs_queue.fan_out_dlq : k => q.url }
}
