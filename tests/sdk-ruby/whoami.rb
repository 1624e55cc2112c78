# STS GetCallerIdentity with the AWS SDK for Ruby's default credential chain: inside a
# test pod the only source it finds is the instance metadata service
# (Aws::InstanceProfileCredentials, IMDSv2 first). Debian's aws-sdk-core 3.168 carries
# Aws::STS itself and ignores AWS_ENDPOINT_URL_STS, so the STS address comes from
# PODIAM_TEST_STS_ENDPOINT, set on the client.
require "aws-sdk-core"
require "json"

endpoint = ENV.fetch("PODIAM_TEST_STS_ENDPOINT") { abort "whoami: PODIAM_TEST_STS_ENDPOINT is not set" }
identity = Aws::STS::Client.new(endpoint: endpoint).get_caller_identity # region from AWS_REGION
puts JSON.generate({ Arn: identity.arn, Account: identity.account, UserId: identity.user_id })
