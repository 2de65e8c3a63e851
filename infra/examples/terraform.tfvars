# Replace the account id (123456789012), the region and the secret suffixes
# (-AbCdEf) with the ARNs that `aws secretsmanager create-secret` printed
# (README, step 1).
region = "eu-central-1"

ecm_secret_arn     = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:xecm/ecm-AbCdEf"
webhook_secret_arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:xecm/webhook-AbCdEf"

# Every sftp_secret named in routes/, backups/ and export-routes.json.
sftp_secret_arns = {
  "xecm/sftp/partner" = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:xecm/sftp/partner-AbCdEf"
}

# alarm_sns_topic_arn = "arn:aws:sns:eu-central-1:123456789012:ops-alerts"

tags = {
  Environment = "test"
}
