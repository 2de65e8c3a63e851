# The export sweep: nothing approved is left behind. One EventBridge Scheduler
# schedule per export route invokes ecm-export with a `sweep` event
# (events/export-sweep.json); the function delivers approved versions that no
# callback delivered (a callback lost, or refused while the function was
# down) and reports them in an `Export Sweep Completed` event. A run that
# reaches its document budget or its deadline puts an `Export Sweep
# Continued` event on the bus, whose detail is the next run's event; the rule
# below invokes the function with it.

variable "export_sweeps" {
  description = "Scheduled sweeps of export routes, keyed by a short name: the export route, a schedule expression, optional root folder ids (default: the route's approval.ancestor_id) and documents per run."
  type = map(object({
    route               = string
    schedule_expression = string
    roots               = optional(list(number))
    max_documents       = optional(number, 500)
    enabled             = optional(bool, true)
  }))
  default = {}

  validation {
    condition     = alltrue([for s in values(var.export_sweeps) : s.max_documents >= 1 && s.max_documents <= 10000])
    error_message = "export_sweeps[*].max_documents must be between 1 and 10000."
  }
}

resource "aws_scheduler_schedule" "export_sweep" {
  for_each = var.export_sweeps

  name                         = "${var.name_prefix}-export-sweep-${each.key}"
  group_name                   = aws_scheduler_schedule_group.this.name
  schedule_expression          = each.value.schedule_expression
  schedule_expression_timezone = var.schedule_timezone
  state                        = each.value.enabled ? "ENABLED" : "DISABLED"
  kms_key_arn                  = var.kms_key_arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_lambda_function.fn["ecm-export"].arn
    role_arn = aws_iam_role.scheduler.arn
    input = jsonencode(merge(
      {
        action        = "sweep"
        route         = each.value.route
        max_documents = each.value.max_documents
      },
      each.value.roots == null ? {} : { roots = each.value.roots },
    ))

    retry_policy {
      maximum_event_age_in_seconds = 3600
      maximum_retry_attempts       = 3
    }

    dead_letter_config {
      arn = aws_sqs_queue.failed.arn
    }
  }
}

# The scheduler role may invoke ecm-export too, and only it (in addition to
# what iam.tf grants for the other schedules).
data "aws_iam_policy_document" "scheduler_export_sweep" {
  statement {
    sid       = "InvokeExportSweep"
    actions   = ["lambda:InvokeFunction"]
    resources = [aws_lambda_function.fn["ecm-export"].arn]
  }
}

resource "aws_iam_role_policy" "scheduler_export_sweep" {
  count = length(var.export_sweeps) > 0 ? 1 : 0

  name   = "${var.name_prefix}-scheduler-export-sweep"
  role   = aws_iam_role.scheduler.id
  policy = data.aws_iam_policy_document.scheduler_export_sweep.json
}

resource "aws_cloudwatch_event_rule" "export_sweep_continued" {
  count = length(var.export_sweeps) > 0 ? 1 : 0

  name           = "${var.name_prefix}-export-sweep-continued"
  description    = "Continue an export sweep that reached its document budget or deadline."
  event_bus_name = aws_cloudwatch_event_bus.this.name
  event_pattern = jsonencode({
    source        = ["xecm-sftp"]
    "detail-type" = ["Export Sweep Continued"]
  })
  tags = var.tags
}

# No dead-letter queue of its own: the failure queue's policy (continuation.tf)
# admits one rule, and a lost continuation costs only time, since the next
# scheduled run walks the route's scope from the start again.
resource "aws_cloudwatch_event_target" "export_sweep_continued" {
  count = length(var.export_sweeps) > 0 ? 1 : 0

  rule           = aws_cloudwatch_event_rule.export_sweep_continued[0].name
  event_bus_name = aws_cloudwatch_event_bus.this.name
  arn            = aws_lambda_function.fn["ecm-export"].arn

  retry_policy {
    maximum_event_age_in_seconds = 3600
    maximum_retry_attempts       = 3
  }
}

resource "aws_lambda_permission" "export_sweep_continued" {
  count = length(var.export_sweeps) > 0 ? 1 : 0

  statement_id  = "AllowExportSweepContinuation"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.fn["ecm-export"].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.export_sweep_continued[0].arn
}
