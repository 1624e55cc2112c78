// An application in a pod: STS GetCallerIdentity in a loop with the AWS SDK for Go v2's
// default credential chain (config.LoadDefaultConfig), for os.Args[1] seconds after one
// warm-up call. Prints one JSON line, as boto3_loop.py. Debian's 1.17 ignores
// AWS_ENDPOINT_URL_STS: the STS address comes from PODIAM_TEST_STS_ENDPOINT through the STS
// client's EndpointResolver, as in tests/sdk-go/v2/whoami.go. Built by scripts/setup.
//
// moto answers every call with "Connection: close", and Go's net/http then sometimes closes
// the connection under the response body (aws/aws-sdk-go-v2#1825: "deserialization failed,
// ... use of closed network connection"). Go v1 retries that error as a connection reset
// (aws/request/connection_reset_error.go); this v2 (1.17) does not, so the loop's retryer
// adds it, retried at once, as an application running into it would.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func fail(what string, err error) {
	fmt.Fprintln(os.Stderr, "loop:", what, err)
	os.Exit(1)
}

func main() {
	seconds, err := strconv.ParseFloat(os.Args[1], 64)
	if err != nil {
		fail("seconds:", err)
	}
	endpoint := os.Getenv("PODIAM_TEST_STS_ENDPOINT")
	if endpoint == "" {
		fail("PODIAM_TEST_STS_ENDPOINT is not set", nil)
	}
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx) // region from AWS_REGION
	if err != nil {
		fail("config:", err)
	}
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.EndpointResolver = sts.EndpointResolverFromURL(endpoint)
		o.Retryer = retry.NewStandard(func(r *retry.StandardOptions) {
			r.Retryables = append(r.Retryables, retry.IsErrorRetryableFunc(func(err error) aws.Ternary {
				if errors.Is(err, net.ErrClosed) {
					return aws.TrueTernary
				}
				return aws.UnknownTernary
			}))
			// At once, as net/http retries a request on a connection the server had closed:
			// the standard retryer's backoff (up to 1 s) would count as the call's latency.
			jitter := retry.NewExponentialJitterBackoff(r.MaxBackoff)
			r.Backoff = retry.BackoffDelayerFunc(func(attempt int, err error) (time.Duration, error) {
				if errors.Is(err, net.ErrClosed) {
					return 0, nil
				}
				return jitter.BackoffDelay(attempt, err)
			})
		})
	})
	// Warm-up: credentials resolved.
	if _, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); err != nil {
		fail("GetCallerIdentity:", err)
	}
	var latencies []time.Duration
	started := time.Now() // monotonic
	end := started.Add(time.Duration(seconds * float64(time.Second)))
	for now := time.Now(); now.Before(end); now = time.Now() {
		if _, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); err != nil {
			fail("GetCallerIdentity:", err)
		}
		latencies = append(latencies, time.Since(now))
	}
	elapsed := time.Since(started).Seconds()
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	n := len(latencies)
	if n == 0 {
		fail("no call within the run", nil)
	}
	p99 := int(float64(n) * 0.99)
	if p99 > n-1 {
		p99 = n - 1
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	if err := json.NewEncoder(os.Stdout).Encode(map[string]float64{
		"calls": float64(n), "seconds": elapsed, "p50_ms": ms(latencies[n/2]), "p99_ms": ms(latencies[p99]),
	}); err != nil {
		os.Exit(1)
	}
}
