// An application in a pod: STS GetCallerIdentity in a loop with the AWS SDK for Go v1's
// default credential chain, for os.Args[1] seconds after one warm-up call. Prints one JSON
// line, as boto3_loop.py. This version ignores AWS_ENDPOINT_URL_STS: the STS address comes
// from PODIAM_TEST_STS_ENDPOINT, set on the STS client alone (on the session it would also
// redirect the metadata client), as in tests/sdk-go/v1/whoami.go. Built by scripts/setup.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/sts"
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
	sess, err := session.NewSession() // region from AWS_REGION
	if err != nil {
		fail("session:", err)
	}
	client := sts.New(sess, &aws.Config{Endpoint: aws.String(endpoint)})
	// Warm-up: credentials resolved.
	if _, err := client.GetCallerIdentity(&sts.GetCallerIdentityInput{}); err != nil {
		fail("GetCallerIdentity:", err)
	}
	var latencies []time.Duration
	started := time.Now() // monotonic
	end := started.Add(time.Duration(seconds * float64(time.Second)))
	for now := time.Now(); now.Before(end); now = time.Now() {
		if _, err := client.GetCallerIdentity(&sts.GetCallerIdentityInput{}); err != nil {
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
