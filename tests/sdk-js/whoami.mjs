// STS GetCallerIdentity with the AWS SDK for JavaScript v3's default credential chain:
// inside a test pod the only source it finds is the instance metadata service (IMDSv2).
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";

const client = new STSClient({});
const identity = await client.send(new GetCallerIdentityCommand({}));
console.log(JSON.stringify({ Arn: identity.Arn, Account: identity.Account, UserId: identity.UserId }));
