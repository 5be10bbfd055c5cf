// Package integration runs the tokenkeeper fleet in containers and breaks it:
// real Redis, the fake RDP upstream and several replicas of the project's own
// image, each on its own Docker networks, with lifetimes compressed to
// seconds. Every scenario reads the token from every replica throughout and
// then checks the invariants of docs/architecture.md against the fake upstream's
// record of the tokens it issued:
//
//  1. one token: once a newer token was served anywhere, no replica serves an
//     older one for longer than pub/sub takes;
//  2. never expired: every token served was issued by the upstream and was
//     answered before its expiry minus the serve margin;
//  3. one fetch: the upstream issued one token per cycle, each served, none
//     early (a disrupted scenario names how many extra it tolerates);
//  4. no stale writer: scenario-specific (a frozen leader's write is fenced);
//  5. keeps serving: no request fails outside the windows a scenario names;
//  6. never backwards (the failover scenarios): no replica answers a token
//     issued before one it already answered, nor a lower
//     X-Tokenkeeper-Generation.
//
// The failover scenarios run Redis as Sentinel (a master, two replicas,
// three sentinels) or Cluster (six nodes) from the same image, and kill,
// partition or migrate what holds the token.
//
// The tests need a Docker engine and the images named by TOKENKEEPER_IMAGE
// (default tokenkeeper:dev), REDIS_IMAGE (default redis:7-alpine) and
// LATENCYPROXY_IMAGE (default tokenkeeper/latencyproxy:dev: the TCP proxy in
// latencyproxy/ that makes Redis answer slowly, where netem is missing);
// scripts/build-images.sh builds them without a registry. They run with
//
//	go test -tags integration -count=1 -v -timeout 20m ./integration/
//
// Without a Docker engine they skip, except under CI=true where they fail.
// Measured figures are logged as lines starting with FIGURE.
package integration
