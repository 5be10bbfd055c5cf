#!/usr/bin/env bash
# compose-tls-smoke.sh brings docker-compose.yml up with docker-compose.tls.yml
# (end-to-end TLS, certificates made at start by scripts/tls-certs.sh) under a
# unique project name and checks, as a client sees it through HAProxy:
#
#   1. HTTPS reads verified against the stack's CA: all 200 OK, one token,
#      several replicas answer (HAProxy reaches them over verified TLS with
#      its own client certificate; their health checks pass over TLS too).
#   2. Plain HTTP to the same port is refused.
#   3. Wrong keys from one client are slowed (401 after a delay) past
#      TOKENKEEPER_AUTH_FAILURES attempts per replica, while the right key,
#      from that client and from another one behind the same HAProxy
#      (X-Forwarded-For), still reads at once.
#   4. The replicas' audit trail names the reader key of each read and never
#      the key itself or a token.
#
# `down -v` runs at the end, always. Images as for scripts/compose-smoke.sh.
#
# Environment: COMPOSE, SMOKE_PROJECT, SMOKE_KEEP=1 as for compose-smoke.sh.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

tokenkeeper_image=${TOKENKEEPER_IMAGE:-tokenkeeper:dev}
redis_image=${REDIS_IMAGE:-tokenkeeper/redis:debian}
haproxy_image=${HAPROXY_IMAGE:-tokenkeeper/haproxy:debian}
# Every other variable of the compose files takes the stack's default.
while read -r v; do
	unset "$v"
done < <(grep -oh '[$]{[A-Z_][A-Z0-9_]*' docker-compose.yml docker-compose.tls.yml | cut -c3- | sort -u)
export COMPOSE_PROJECT_NAME=${SMOKE_PROJECT:-tktls$(date +%s)$$}
export TOKENKEEPER_IMAGE=$tokenkeeper_image REDIS_IMAGE=$redis_image HAPROXY_IMAGE=$haproxy_image
export TOKENKEEPER_AUTH_FAILURES=5
reader_key=demo-reader-5c8f2a9e1b7d4c3f6a0e9b2d

if [[ -n ${COMPOSE:-} ]]; then
	read -r -a compose_cmd <<<"$COMPOSE"
elif command -v docker-compose >/dev/null; then
	compose_cmd=(docker-compose)
else
	compose_cmd=(docker compose)
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tktls.XXXXXX")
chmod 0755 "$tmp"
: >"$tmp/empty.env"
export TOKENKEEPER_TLS_DIR=$tmp/certs

log() { printf '==> %s\n' "$*" >&2; }
failures=()
broken() {
	printf 'BROKEN: %s\n' "$*" >&2
	failures+=("$*")
}
compose() { "${compose_cmd[@]}" --env-file "$tmp/empty.env" -f docker-compose.yml -f docker-compose.tls.yml "$@"; }

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ $rc -ne 0 ]]; then
		log "failed (exit $rc); last logs:"
		compose logs --no-color --tail=40 >&2 2>&1 || true
	fi
	if [[ ${SMOKE_KEEP:-0} == 1 ]]; then
		log "SMOKE_KEEP=1: stack $COMPOSE_PROJECT_NAME left running (certificates in $TOKENKEEPER_TLS_DIR)"
	else
		compose down -v --remove-orphans -t 5 >&2 2>&1 || true
		rm -rf "$tmp"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for c in docker curl openssl python3; do
	command -v "$c" >/dev/null || { echo "compose-tls-smoke: $c is not installed" >&2; exit 1; }
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export TOKENKEEPER_BIND=127.0.0.1 TOKENKEEPER_PORT=$port
lb=https://127.0.0.1:$port

log "certificates into $TOKENKEEPER_TLS_DIR"
bash scripts/tls-certs.sh "$TOKENKEEPER_TLS_DIR"
ca=$TOKENKEEPER_TLS_DIR/ca.pem

log "starting $COMPOSE_PROJECT_NAME with end-to-end TLS"
compose up -d >&2 2>&1

# reads N KEY [XFF] reads the token N times over HTTPS (one python3 process,
# a new connection each time, as separate clients) and prints one line per
# read: status, instance, Retry-After, token.
reads() {
	python3 - "$lb/v1/tokens/liveness" "$ca" "$@" <<'PY'
import json, ssl, sys, urllib.error, urllib.request
url, ca, n, key = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
xff = sys.argv[5] if len(sys.argv) > 5 else ""
ctx = ssl.create_default_context(cafile=ca)
import time
for _ in range(n):
    start = time.monotonic()
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + key})
    if xff:
        req.add_header("X-Forwarded-For", xff)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            code, h, body = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        code, h, body = e.code, e.headers, e.read()
    except Exception:
        print("000 - - - %.3f" % (time.monotonic() - start))
        continue
    try:
        tok = json.loads(body).get("token", "-")
    except Exception:
        tok = "-"
    print(code, h.get("X-Tokenkeeper-Instance", "-"), h.get("Retry-After", "-"), tok, "%.3f" % (time.monotonic() - start))
PY
}

log "waiting for HTTPS through HAProxy"
deadline=$((SECONDS + 90))
until [[ $(reads 1 "$reader_key" | cut -d' ' -f1) == 200 ]]; do
	((SECONDS < deadline)) || { broken "no 200 over HTTPS within 90s"; exit 1; }
	sleep 1
done

log "1. 60 HTTPS reads"
reads 60 "$reader_key" >"$tmp/reads"
bad=$(awk '$1 != 200' "$tmp/reads" | wc -l)
ntokens=$(awk '$1 == 200 {print $4}' "$tmp/reads" | sort -u | wc -l)
ninst=$(awk '$1 == 200 {print $2}' "$tmp/reads" | sort -u | wc -l)
((bad == 0)) || broken "$bad of 60 HTTPS reads were not 200"
((ntokens == 1)) || broken "$ntokens tokens served, want 1"
((ninst >= 2)) || broken "only $ninst replica(s) answered over TLS, want several"
printf 'FIGURE compose TLS: 60 reads, %d failed, %d replicas answered, %d token(s)\n' "$bad" "$ninst" "$ntokens"

log "2. plain HTTP is refused"
code=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $reader_key" "http://127.0.0.1:$port/v1/tokens/liveness" || true)
[[ $code != 200 ]] || broken "plain HTTP answered 200"

log "3. a guessing client is slowed; the right key is not, from it or another client"
# Each replica counts on its own: HAProxy spreads the guesses, so up to
# (replicas x failures) 401s come at once before the delays start (100 ms,
# doubling). One guess at a time: none is refused, each is slowed.
reads 30 wrong-key 198.51.100.7 >"$tmp/guesses"
bad=$(awk '$1 != 401' "$tmp/guesses" | wc -l)
((bad == 0)) || broken "$bad of 30 wrong keys were not answered 401: $(awk '$1 != 401 {print $1}' "$tmp/guesses" | sort | uniq -c | xargs)"
slowest=$(awk '$5 > m {m = $5} END {print m + 0}' "$tmp/guesses")
awk -v s="$slowest" 'BEGIN {exit !(s >= 0.1)}' || broken "30 wrong keys from one client were never slowed (slowest ${slowest}s)"
printf 'FIGURE compose TLS: 30 wrong keys from one client, the slowest answered after %ss\n' "$slowest"
same=$(reads 1 "$reader_key" 198.51.100.7 | cut -d' ' -f1)
[[ $same == 200 ]] || broken "the right key from the guessing client got $same, want 200"
other=$(reads 1 "$reader_key" 203.0.113.9 | cut -d' ' -f1)
[[ $other == 200 ]] || broken "another client behind the same proxy got $other"

log "4. the audit trail"
logs=$(compose logs --no-color tokenkeeper 2>&1)
grep -q '"log":"audit"' <<<"$logs" || broken "no audit line in the replicas' logs"
grep -q '"caller":"TOKENKEEPER_API_KEYS\[0\]"' <<<"$logs" || broken "no read by TOKENKEEPER_API_KEYS[0] in the audit trail"
grep -q '"client":"203.0.113.9"' <<<"$logs" || broken "the audit trail does not name the forwarded client 203.0.113.9"
for secret in "$reader_key" $(awk '$1 == 200 {print $4}' "$tmp/reads" | sort -u); do
	grep -qF -- "$secret" <<<"$logs" && broken "the logs hold a key or token (${secret:0:4}...)"
done

if ((${#failures[@]})); then
	printf 'compose-tls-smoke: %d broken promise(s)\n' "${#failures[@]}" >&2
	exit 1
fi
log "all TLS promises held"
