# Backups longer than one invocation chain themselves: backup-snapshot puts a
# `Snapshot Continuation` event on the bus and this rule invokes it again.
#
# The contract, kept in one place on each side (the function's
# `DetailType::SnapshotContinuation` and `domain::backup::continuation_detail`):
# source `xecm-sftp`, detail-type `Snapshot Continuation`, and a detail that
# is itself the function's `continue` event
#   {"action":"continue","backup":{...},"snapshot_id":"YYYYMMDDTHHMMSSZ"}
# (or, for a verify or restore that reached its deadline, that manual event
# with `"resume":"<job>"`), so the target passes `$.detail` and the function
# receives exactly that
# (it also accepts the whole event and takes its detail). Pattern and input
# path are checked by tests/tests/backup_function.rs against the event the
# real binary published on the bus.

resource "aws_cloudwatch_event_rule" "snapshot_continuation" {
  name           = "${var.name_prefix}-snapshot-continuation"
  description    = "Continue a backup snapshot that reached its invocation deadline."
  event_bus_name = aws_cloudwatch_event_bus.this.name
  event_pattern = jsonencode({
    source        = ["xecm-sftp"]
    "detail-type" = ["Snapshot Continuation"]
  })
  tags = var.tags
}

resource "aws_cloudwatch_event_target" "snapshot_continuation" {
  rule           = aws_cloudwatch_event_rule.snapshot_continuation.name
  event_bus_name = aws_cloudwatch_event_bus.this.name
  arn            = aws_lambda_function.fn["backup-snapshot"].arn
  # The detail is the `continue` event itself.
  input_path = "$.detail"

  dead_letter_config {
    arn = aws_sqs_queue.failed.arn
  }
}

resource "aws_lambda_permission" "snapshot_continuation" {
  statement_id  = "AllowSnapshotContinuation"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.fn["backup-snapshot"].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.snapshot_continuation.arn
}

# EventBridge delivers dead letters for the continuation rule with its own
# service principal, limited to this rule.
data "aws_iam_policy_document" "failed_queue" {
  statement {
    sid       = "ContinuationRuleDeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.failed.arn]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.snapshot_continuation.arn]
    }
  }
}

resource "aws_sqs_queue_policy" "failed" {
  queue_url = aws_sqs_queue.failed.id
  policy    = data.aws_iam_policy_document.failed_queue.json
}
