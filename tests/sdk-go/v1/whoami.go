// STS GetCallerIdentity with the AWS SDK for Go v1's default credential chain: inside a
// test pod the only source it finds is the instance metadata service (EC2 role
// credentials, IMDSv2 first). This version ignores AWS_ENDPOINT_URL_STS, so the STS
// address comes from PODIAM_TEST_STS_ENDPOINT and is set on the STS client alone (on
// the session it would also redirect the metadata client).
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/sts"
)

func main() {
	endpoint := os.Getenv("PODIAM_TEST_STS_ENDPOINT")
	if endpoint == "" {
		fmt.Fprintln(os.Stderr, "whoami: PODIAM_TEST_STS_ENDPOINT is not set")
		os.Exit(2)
	}
	sess, err := session.NewSession() // region from AWS_REGION
	if err != nil {
		fmt.Fprintln(os.Stderr, "whoami: session:", err)
		os.Exit(1)
	}
	client := sts.New(sess, &aws.Config{Endpoint: aws.String(endpoint)})
	out, err := client.GetCallerIdentity(&sts.GetCallerIdentityInput{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "whoami: GetCallerIdentity:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(map[string]string{
		"Arn": aws.StringValue(out.Arn), "Account": aws.StringValue(out.Account), "UserId": aws.StringValue(out.UserId),
	}); err != nil {
		os.Exit(1)
	}
}
