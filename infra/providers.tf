provider "aws" {
  default_tags {
    tags = merge({ Project = "xecm-sftp" }, var.tags)
  }
}
