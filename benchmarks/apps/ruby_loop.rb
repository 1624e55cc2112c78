# An application in a pod: STS GetCallerIdentity in a loop with the AWS SDK for Ruby's
# default credential chain, for ARGV[0] seconds after one warm-up call. Prints one JSON
# line, as boto3_loop.py. Debian's aws-sdk-core 3.168 carries Aws::STS and ignores
# AWS_ENDPOINT_URL_STS: the STS address comes from PODIAM_TEST_STS_ENDPOINT, set on the
# client, as in tests/sdk-ruby/whoami.rb.
require "aws-sdk-core"
require "json"

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

seconds = Float(ARGV.fetch(0))
endpoint = ENV.fetch("PODIAM_TEST_STS_ENDPOINT") { abort "loop: PODIAM_TEST_STS_ENDPOINT is not set" }
client = Aws::STS::Client.new(endpoint: endpoint) # region from AWS_REGION
client.get_caller_identity # warm-up: credentials resolved
latencies = []
started = now
finish = started + seconds
while (call = now) < finish
  client.get_caller_identity
  latencies << now - call
end
elapsed = now - started
abort "loop: no call within the run" if latencies.empty?
latencies.sort!
puts JSON.generate({ calls: latencies.size, seconds: elapsed,
                     p50_ms: latencies[latencies.size / 2] * 1000,
                     p99_ms: latencies[[latencies.size - 1, (latencies.size * 0.99).to_i].min] * 1000 })
