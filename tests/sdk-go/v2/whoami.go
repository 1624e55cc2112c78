// STS GetCallerIdentity with the AWS SDK for Go v2's default credential chain
// (config.LoadDefaultConfig): inside a test pod the only source it finds is the instance
// metadata service (IMDSv2). Debian's 1.17 ignores AWS_ENDPOINT_URL_STS, so the STS
// address comes from PODIAM_TEST_STS_ENDPOINT through the STS client's EndpointResolver
// (this version's API; EndpointResolverV2 came later).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func main() {
	endpoint := os.Getenv("PODIAM_TEST_STS_ENDPOINT")
	if endpoint == "" {
		fmt.Fprintln(os.Stderr, "whoami: PODIAM_TEST_STS_ENDPOINT is not set")
		os.Exit(2)
	}
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx) // region from AWS_REGION
	if err != nil {
		fmt.Fprintln(os.Stderr, "whoami: config:", err)
		os.Exit(1)
	}
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.EndpointResolver = sts.EndpointResolverFromURL(endpoint)
	})
	out, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "whoami: GetCallerIdentity:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(map[string]string{
		"Arn": aws.ToString(out.Arn), "Account": aws.ToString(out.Account), "UserId": aws.ToString(out.UserId),
	}); err != nil {
		os.Exit(1)
	}
}
