# One customer-managed key for everything this module encrypts: function
# environments, log groups, the failure queue, the event bus and its archive,
# the schedules. Pass kms_key_arn to use your own key instead; its key policy
# then needs the same grants as the one below (see README, KMS):
# - the account root (IAM policies of the roles decide, as usual);
# - CloudWatch Logs (logs.<region>.amazonaws.com) for the log groups, limited
#   by the log-group ARN in the encryption context;
# - EventBridge (events.amazonaws.com) for the bus, its archive and the
#   continuation rule's dead letters into the encrypted failure queue.
# Lambda, Scheduler and SQS use the key through the roles' own kms
# permissions (iam.tf).

resource "aws_kms_key" "this" {
  count = var.kms_key_arn == null ? 1 : 0

  description             = "xecm-sftp (${var.name_prefix}): functions, logs, failure queue, event bus, schedules"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = var.tags
}

resource "aws_kms_alias" "this" {
  count = var.kms_key_arn == null ? 1 : 0

  name          = "alias/${var.name_prefix}"
  target_key_id = aws_kms_key.this[0].key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:A key policy's resource "*" is the key itself; the account statement is the standard root delegation to IAM.
  #checkov:skip=CKV_AWS_356:A key policy's resource "*" is the key itself, the only resource a key policy can name.
  #checkov:skip=CKV_AWS_109:The root statement delegates key administration to the account's IAM policies, as AWS's default key policy does.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogs"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values = [
        "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws/lambda/${var.name_prefix}-*",
        "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws/events/${var.name_prefix}*",
      ]
    }
  }

  statement {
    sid       = "EventBridge"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}
