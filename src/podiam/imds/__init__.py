"""The EC2 metadata endpoint pods talk to: credentials, iam/info, IMDSv2 tokens, allow-listed proxy."""
