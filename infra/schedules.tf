# EventBridge Scheduler: one schedule per inbound route and per backup, in
# this deployment's schedule group (so the names need no prefix and stay
# within Scheduler's 64 characters; variables.tf checks the keys).

resource "aws_scheduler_schedule_group" "this" {
  name = var.name_prefix
  tags = var.tags
}

resource "aws_scheduler_schedule" "ingest" {
  for_each = var.ingest_routes

  name                         = "ingest-${each.key}"
  group_name                   = aws_scheduler_schedule_group.this.name
  schedule_expression          = each.value.schedule_expression
  schedule_expression_timezone = var.schedule_timezone
  state                        = each.value.enabled ? "ENABLED" : "DISABLED"
  kms_key_arn                  = local.kms_key_arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_lambda_function.fn["sftp-ingest"].arn
    role_arn = aws_iam_role.scheduler.arn
    input    = jsonencode({ route = local.ingest_route_inputs[each.key] })

    retry_policy {
      maximum_event_age_in_seconds = 3600
      maximum_retry_attempts       = 3
    }

    dead_letter_config {
      arn = aws_sqs_queue.failed.arn
    }
  }
}

resource "aws_scheduler_schedule" "backup" {
  for_each = var.backup_schedules

  name                         = "backup-${each.key}"
  group_name                   = aws_scheduler_schedule_group.this.name
  schedule_expression          = each.value.schedule_expression
  schedule_expression_timezone = var.schedule_timezone
  state                        = each.value.enabled ? "ENABLED" : "DISABLED"
  kms_key_arn                  = local.kms_key_arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_lambda_function.fn["backup-snapshot"].arn
    role_arn = aws_iam_role.scheduler.arn
    input    = jsonencode({ backup = jsondecode(each.value.config_json) })

    retry_policy {
      maximum_event_age_in_seconds = 3600
      maximum_retry_attempts       = 3
    }

    dead_letter_config {
      arn = aws_sqs_queue.failed.arn
    }
  }
}
