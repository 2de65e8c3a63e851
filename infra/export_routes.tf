# Export routes for ecm-export, in SSM Parameter Store under one path: one
# parameter per route plus one for the export history, so the configuration
# grows by routes without meeting Lambda's 4 KB environment limit (each
# parameter may hold up to 8 KB; Intelligent-Tiering picks the tier). The
# function reads the path once per cold start.
#
# With export_routes_ssm_path set, the parameters are kept elsewhere (another
# pipeline writes them) and nothing is written here.

locals {
  manage_export_routes = var.export_routes_ssm_path == null && length(local.export_routes_list) > 0
}

resource "aws_ssm_parameter" "export_history" {
  count = local.manage_export_routes ? 1 : 0

  #checkov:skip=CKV2_AWS_34:Routes are configuration, not secrets (they name secrets by their id); String keeps them readable in the console.
  name        = "${local.export_routes_path}export_history"
  description = "xecm-sftp export history category (ecm-export)"
  type        = "String"
  tier        = "Intelligent-Tiering"
  value       = jsonencode({ export_history = var.export_routes.export_history })
  tags        = var.tags
}

resource "aws_ssm_parameter" "export_route" {
  for_each = local.manage_export_routes ? { for r in local.export_routes_list : r.name => r } : {}

  #checkov:skip=CKV2_AWS_34:Routes are configuration, not secrets (they name secrets by their id); String keeps them readable in the console.
  name        = "${local.export_routes_path}routes/${each.key}"
  description = "xecm-sftp export route ${each.key} (ecm-export)"
  type        = "String"
  tier        = "Intelligent-Tiering"
  value       = jsonencode({ routes = [each.value] })
  tags        = var.tags
}
