// An application in a pod: STS GetCallerIdentity in a loop with the AWS SDK for JavaScript
// v3's default credential chain, for argv[2] seconds after one warm-up call. Prints one
// JSON line. CommonJS, so that NODE_PATH can point at tests/sdk-js/node_modules.
"use strict";
const { STSClient, GetCallerIdentityCommand } = require("@aws-sdk/client-sts");

async function main() {
  const seconds = Number(process.argv[2]);
  const client = new STSClient({});
  await client.send(new GetCallerIdentityCommand({})); // warm-up: credentials, connection
  const latencies = [];
  const started = performance.now();
  const end = started + seconds * 1000;
  for (let now = performance.now(); now < end; now = performance.now()) {
    await client.send(new GetCallerIdentityCommand({}));
    latencies.push(performance.now() - now);
  }
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  console.log(JSON.stringify({
    calls: latencies.length, seconds: elapsed,
    p50_ms: latencies[Math.floor(latencies.length / 2)],
    p99_ms: latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * 0.99))],
  }));
}

main().catch((e) => { console.error(e); process.exit(1); });
