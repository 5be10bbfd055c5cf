#!/usr/bin/env bash
# compose-smoke.sh brings docker-compose.yml up under a unique project name and
# checks the fleet's promises through HAProxy, as a client sees them:
#
#   1. 200 reads through the load balancer: all 200 OK, one token, every
#      replica answers (X-Tokenkeeper-Instance). Then 100 wrong keys from
#      one client, 20 at a time: they are slowed (delayed 401s, or 429 past
#      the failures allowed to wait), and the right key from the same client
#      still reads (200).
#   2. The leader's container is SIGKILLed while a client keeps reading: no
#      request fails (HAProxy retries on another replica); a new leader takes
#      over; HAProxy marks the dead replica down.
#   3. --scale tokenkeeper=5: HAProxy finds the new replicas through DNS and
#      all five answer with the same token.
#   4. A forced refresh (admin API): every replica switches to the new token
#      within SMOKE_SWITCH_LIMIT_MS.
#   5. The fake RDP issued two tokens in all: the first and the forced one.
#
# With a profile (sentinel or cluster) the replicas use that replicated Redis
# (deploy/compose/PROFILE.env) and step 2 kills the Redis master that holds
# the token instead of the leader, step 3 is left out: no read fails while
# Redis fails over, and the forced refresh afterwards reaches every replica;
# the failover may cost one upstream fetch more (3 tokens at most).
#
# With the profile tracing the replicas send their spans to the profile's
# Jaeger (deploy/compose/tracing.env) and the steps are the default ones; at
# the end, Jaeger's query API (/api/traces) must hold a trace with the new
# leader's refresh (after the kill) and, under it, its upstream calls (POST
# auth_v2, POST liveness) and its fenced write in Redis; the trace's spans
# and their attributes are printed.
#
# It prints the figures (requests, failures, failover, mark-down and switch
# times, upstream calls) and exits non-zero on any broken promise. `down -v`
# runs at the end, always, also on failure or interrupt.
#
# Usage: scripts/compose-smoke.sh [sentinel|cluster|tracing]
#   Needs docker, docker-compose (or `docker compose`), curl, python3, and the
#   images: by default the local ones of scripts/build-images.sh
#   (TOKENKEEPER_IMAGE=tokenkeeper:dev, REDIS_IMAGE=tokenkeeper/redis:debian,
#   HAPROXY_IMAGE=tokenkeeper/haproxy:debian, and for tracing
#   JAEGER_IMAGE=tokenkeeper/jaeger:1.75.0); set those variables to use
#   others, e.g. the official redis:7-alpine, haproxy:2.9-alpine and
#   jaegertracing/jaeger:2.12.0.
#
# Environment:
#   COMPOSE                 compose command (default: docker-compose if
#                           installed, else "docker compose")
#   SMOKE_PROJECT           compose project name (default tksmoke<time><pid>,
#                           unique per run; COMPOSE_PROJECT_NAME is ignored so
#                           that a stack of yours is never taken down)
#   SMOKE_SWITCH_LIMIT_MS   longest accepted time, after the refresh answered,
#                           for every replica to serve the new token (default
#                           100: the design's promise for pub/sub)
#   SMOKE_TRACE_SCREENSHOT with the profile tracing, a file for a screenshot
#                           (headless Chromium) of the trace found, drawn
#                           from Jaeger's query API
#   SMOKE_KEEP=1            leave the stack running (for debugging; then run
#                           `docker-compose -p <project> down -v`)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

profile=${1:-}
case $profile in
"" | sentinel | cluster | tracing) ;;
*)
	printf 'compose-smoke: unknown profile %s (sentinel, cluster or tracing)\n' "$profile" >&2
	exit 2
	;;
esac

# --- settings ------------------------------------------------------------------
tokenkeeper_image=${TOKENKEEPER_IMAGE:-tokenkeeper:dev}
redis_image=${REDIS_IMAGE:-tokenkeeper/redis:debian}
haproxy_image=${HAPROXY_IMAGE:-tokenkeeper/haproxy:debian}
jaeger_image=${JAEGER_IMAGE:-tokenkeeper/jaeger:1.75.0}
# Every other variable of docker-compose.yml takes the stack's default (fake
# RDP, demo keys, default timings), whatever the shell says; a local .env is
# ignored too (see compose below).
while read -r v; do
	unset "$v"
done < <(grep -o '[$]{[A-Z_][A-Z0-9_]*' docker-compose.yml | cut -c3- | sort -u)
export COMPOSE_PROJECT_NAME=${SMOKE_PROJECT:-tksmoke$(date +%s)$$}
export TOKENKEEPER_IMAGE=$tokenkeeper_image REDIS_IMAGE=$redis_image HAPROXY_IMAGE=$haproxy_image
export JAEGER_IMAGE=$jaeger_image
# redis_profile is the replicated Redis a profile runs, if any.
redis_profile=
[[ $profile == tracing ]] || redis_profile=$profile
# The stack keeps the catalog of deploy/catalog/tokens.yaml: the liveness
# token and an oauth2 token, partner.
export TOKENKEEPER_CONFIG=/etc/tokenkeeper/tokens.yaml
# A profile's replicas speak to its Redis: the settings of deploy/compose/.
profile_args=()
if [[ -n $profile ]]; then
	profile_args=(--profile "$profile")
	while IFS='=' read -r k v; do
		[[ $k =~ ^[A-Z_][A-Z0-9_]*$ ]] && export "$k=$v"
	done <"deploy/compose/$profile.env"
fi
reader_key=demo-reader-5c8f2a9e1b7d4c3f6a0e9b2d
admin_key=demo-admin-3e7b1d9f5a2c8e4b0d6f1a7c
lock_ttl_s=10
switch_limit_ms=${SMOKE_SWITCH_LIMIT_MS:-100}
reads=200
# A Redis profile's smoke is about the Redis failover: fewer plain reads.
[[ -z $redis_profile ]] || reads=50

if [[ -n ${COMPOSE:-} ]]; then
	read -r -a compose_cmd <<<"$COMPOSE"
elif command -v docker-compose >/dev/null; then
	compose_cmd=(docker-compose)
else
	compose_cmd=(docker compose)
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tksmoke.XXXXXX")
: >"$tmp/empty.env"

log() { printf '==> %s\n' "$*" >&2; }
failures=()
# broken MESSAGE records a broken promise; the run goes on and fails at the end.
broken() {
	printf 'BROKEN: %s\n' "$*" >&2
	failures+=("$*")
}
die() {
	printf 'compose-smoke: %s\n' "$*" >&2
	exit 1
}
# compose runs the compose command for this project, ignoring any local .env.
compose() { "${compose_cmd[@]}" --env-file "$tmp/empty.env" "${profile_args[@]}" "$@"; }
# now_ms prints the wall clock in milliseconds, without a fork.
now_ms() {
	local t=${EPOCHREALTIME/[.,]/}
	printf '%s\n' "${t:0:-3}"
}

reader_pid=
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n $reader_pid ]]; then
		kill "$reader_pid" 2>/dev/null || true
		wait "$reader_pid" 2>/dev/null || true
	fi
	if [[ $rc -ne 0 ]]; then
		log "failed (exit $rc); last logs:"
		compose logs --no-color --tail=40 >&2 2>&1 || true
	fi
	if [[ ${SMOKE_KEEP:-0} == 1 ]]; then
		log "SMOKE_KEEP=1: stack $COMPOSE_PROJECT_NAME left running"
	else
		log "${compose_cmd[*]} down -v --remove-orphans"
		compose down -v --remove-orphans -t 5 >&2 2>&1 || true
	fi
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- preflight -------------------------------------------------------------------
for c in docker curl python3; do
	command -v "$c" >/dev/null || die "$c is not installed"
done
"${compose_cmd[@]}" version >/dev/null 2>&1 || die "${compose_cmd[*]} does not run"
images=("$TOKENKEEPER_IMAGE" "$REDIS_IMAGE" "$HAPROXY_IMAGE")
[[ $profile != tracing ]] || images+=("$JAEGER_IMAGE")
for img in "${images[@]}"; do
	docker image inspect "$img" >/dev/null 2>&1 ||
		die "image $img is missing: run scripts/build-images.sh (no registry) or pull it"
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export TOKENKEEPER_BIND=127.0.0.1 TOKENKEEPER_PORT=$port
export JAEGER_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
lb=http://127.0.0.1:$port

# --- helpers ---------------------------------------------------------------------
# get URL KEY [METHOD] makes one request and sets R_CODE (000 when no answer),
# R_TIME (seconds), R_INST (X-Tokenkeeper-Instance or -), R_BODY and R_TOKEN
# (the "token" field of the JSON answer, or -).
get() {
	local out meta
	out=$(curl -s --max-time 10 -X "${3:-GET}" -H "Authorization: Bearer $2" \
		-w '\n%{http_code} %{time_total} %header{x-tokenkeeper-instance}' "$1" 2>/dev/null) || true
	meta=${out##*$'\n'}
	R_BODY=${out%$'\n'*}
	read -r R_CODE R_TIME R_INST <<<"$meta"
	R_CODE=${R_CODE:-000} R_INST=${R_INST:--}
	R_TOKEN=-
	if [[ $R_BODY =~ \"token\"[[:space:]]*:[[:space:]]*\"([^\"]*)\" ]]; then
		R_TOKEN=${BASH_REMATCH[1]}
	fi
}

# json FIELD reads JSON on stdin and prints FIELD (a dotted path), or nothing.
json() {
	python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v if not isinstance(v, (dict, list)) else json.dumps(v))
' "$1" 2>/dev/null || true
}

# replicas prints "container-id hostname ip" for each running tokenkeeper container.
replicas() {
	local id
	for id in $(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
		--filter label=com.docker.compose.service=tokenkeeper); do
		docker inspect -f '{{.Id}} {{.Config.Hostname}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$id"
	done
}

# service_ip SERVICE prints the address of the first container of SERVICE.
service_ip() {
	local id
	id=$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
		--filter "label=com.docker.compose.service=$1" | head -n1)
	[[ -n $id ]] || return 0
	docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$id" | awk '{print $1}'
}

# lb_servers prints "name status address" for each server slot of HAProxy's
# tokenkeeper backend (its stats page, on the container's address).
lb_servers() {
	curl -s --max-time 2 "http://$haproxy_ip:8404/stats;csv" 2>/dev/null | awk -F, '
		NR == 1 { for (i = 1; i <= NF; i++) { h = $i; sub(/^# /, "", h); col[h] = i }; next }
		$1 == "tokenkeeper" && $2 != "BACKEND" {
			s = $(col["status"]); gsub(/ /, "_", s)
			a = $(col["addr"]); if (a == "") a = "-"
			print $2, s, a
		}' || true
}

# wait_lb_up N SECONDS waits until HAProxy has exactly N servers UP.
wait_lb_up() {
	local deadline=$(($(now_ms) + $2 * 1000)) n
	while :; do
		n=$(lb_servers | awk '$2 == "UP"' | wc -l)
		[[ $n -eq $1 ]] && return 0
		if [[ $(now_ms) -gt $deadline ]]; then
			lb_servers >&2
			return 1
		fi
		sleep 0.2
	done
}

# leader prints the leader's instance id from GET /v1/status, or nothing.
leader() {
	get "$lb/v1/status" "$admin_key"
	[[ $R_CODE == 200 ]] || return 0
	printf '%s' "$R_BODY" | json leader
}

# reader OUT STOP reads the token through HAProxy until the file STOP exists,
# one line per request: start-ms code seconds instance token.
reader() {
	local t
	while [[ ! -e $2 ]]; do
		t=$(now_ms)
		get "$lb/v1/tokens/liveness" "$reader_key"
		printf '%s %s %s %s %s\n' "$t" "$R_CODE" "$R_TIME" "$R_INST" "$R_TOKEN" >>"$1"
	done
}

# --- 0. up ---------------------------------------------------------------------
log "project $COMPOSE_PROJECT_NAME: ${compose_cmd[*]} up -d (images $TOKENKEEPER_IMAGE, $REDIS_IMAGE, $HAPROXY_IMAGE; port $port)"
t=$(now_ms)
compose up -d >&2 2>&1 || die "compose up failed"
haproxy_ip=$(service_ip haproxy)
[[ -n $haproxy_ip ]] || die "no haproxy container"
wait_lb_up 3 60 || die "HAProxy does not see 3 replicas UP within 60 s"
startup_ms=$(($(now_ms) - t))
log "stack up and 3 replicas UP in HAProxy after ${startup_ms} ms"

# --- 1. 200 reads --------------------------------------------------------------
log "1. $reads reads through HAProxy"
: >"$tmp/reads.log"
for ((i = 0; i < reads; i++)); do
	get "$lb/v1/tokens/liveness" "$reader_key"
	printf '%s %s %s\n' "$R_CODE" "$R_INST" "$R_TOKEN" >>"$tmp/reads.log"
done
for ((i = 0; i < 50; i++)); do # partner is optional: readiness does not wait for it
	get "$lb/v1/tokens/partner" "$reader_key"
	[[ $R_CODE == 200 ]] && break
	sleep 0.2
done
[[ $R_CODE == 200 && $R_TOKEN != - ]] || broken "the catalog's partner token through HAProxy: $R_CODE, want 200"
log "the catalog's partner token is served through HAProxy too"
ok=$(awk '$1 == 200' "$tmp/reads.log" | wc -l)
tokens=$(awk '$1 == 200 { print $3 }' "$tmp/reads.log" | sort -u | wc -l)
instances=$(awk '$1 == 200 { print $2 }' "$tmp/reads.log" | sort -u | wc -l)
token0=$(awk '$1 == 200 { print $3; exit }' "$tmp/reads.log")
log "   $ok/$reads OK, $tokens distinct token(s), $instances replica(s) answered"
[[ $ok -eq $reads ]] || broken "reads: $((reads - ok)) of $reads failed: $(awk '$1 != 200 { print $1 }' "$tmp/reads.log" | sort | uniq -c | xargs)"
[[ $tokens -eq 1 ]] || broken "reads: $tokens distinct tokens, want 1"
[[ $instances -eq 3 ]] || broken "reads: $instances replicas answered, want 3"
[[ -n $token0 && $token0 != - ]] || die "no token read"

# --- 1b. a client with a wrong key locks nobody out ------------------------------
log "1b. 100 wrong keys from one client, then the right key from that client"
t=$(now_ms)
seq 100 | xargs -P 20 -I{} curl -s -o /dev/null --max-time 10 -w '%{http_code}\n' \
	-H 'Authorization: Bearer wrong-key-{}' "$lb/v1/tokens/liveness" >"$tmp/wrong.log" 2>/dev/null || true
wrong_ms=$(($(now_ms) - t))
get "$lb/v1/tokens/liveness" "$reader_key"
right_code=$R_CODE right_s=$R_TIME
wrong_401=$(grep -c '^401$' "$tmp/wrong.log" || true)
wrong_429=$(grep -c '^429$' "$tmp/wrong.log" || true)
log "   100 wrong keys in ${wrong_ms} ms: $wrong_401 answered 401 (the later ones after a delay), $wrong_429 answered 429 (too many waiting); then the right key: $right_code in ${right_s}s"
[[ $right_code == 200 ]] || broken "the right key after 100 wrong ones from the same client: $right_code, want 200"
[[ $((wrong_401 + wrong_429)) -eq 100 ]] || broken "100 wrong keys: $wrong_401 answered 401 and $wrong_429 answered 429, want all either: $(sort "$tmp/wrong.log" | uniq -c | xargs)"
[[ $wrong_429 -gt 0 || $wrong_ms -ge 1000 ]] || broken "100 wrong keys from one client were not slowed (${wrong_ms} ms, none refused)"

# container_at IP prints the id of the project's container with address IP.
container_at() {
	local id
	for id in $(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"); do
		if docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$id" | grep -qw -- "$1"; then
			echo "$id"
			return
		fi
	done
}

# redis_master prints the address of the Redis master that holds the token:
# the sentinels' master, or the cluster master owning the token's slot.
redis_master() {
	local c
	if [[ $profile == sentinel ]]; then
		c=$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --filter label=com.docker.compose.service=sentinel-1)
		docker exec "$c" redis-cli -p 26379 sentinel get-master-addr-by-name mymaster 2>/dev/null | head -n1
		return
	fi
	c=$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --filter label=com.docker.compose.service=cluster-1)
	local slot
	slot=$(docker exec "$c" redis-cli cluster keyslot 'tokenkeeper:{liveness}:token' 2>/dev/null) || return 0
	docker exec "$c" redis-cli cluster nodes 2>/dev/null | awk -v s="$slot" '
		$3 ~ /master/ && $3 !~ /fail/ {
			for (i = 9; i <= NF; i++) {
				n = split($i, r, "-")
				if ((n == 1 && r[1] == s) || (n == 2 && s >= r[1] && s <= r[2])) { split($2, a, ":"); print a[1]; exit }
			}
		}'
}

kill_reqs=0 kill_fail=0 kill_max=0 scale_reqs=0 scale_fail=0 scale_inst=- scale_ms=- markdown_ms='' failover_ms=''
if [[ -n $redis_profile ]]; then
	# --- 2. kill the Redis master ------------------------------------------------
	log "2. SIGKILL the Redis master ($profile) while a client keeps reading"
	old_master=$(redis_master)
	[[ -n $old_master ]] || die "no Redis master found ($profile)"
	victim=$(container_at "$old_master")
	[[ -n $victim ]] || die "no container has the master's address $old_master"
	log "   master $old_master is container ${victim:0:12}"
	: >"$tmp/kill.log"
	reader "$tmp/kill.log" "$tmp/stop" &
	reader_pid=$!
	sleep 1
	t_kill=$(now_ms)
	docker kill "$victim" >/dev/null
	redis_failover_ms=''
	deadline=$((t_kill + 60000))
	while [[ -z $redis_failover_ms && $(now_ms) -lt $deadline ]]; do
		m=$(redis_master)
		[[ -n $m && $m != "$old_master" ]] && redis_failover_ms=$(($(now_ms) - t_kill))
		sleep 0.2
	done
	# A leader holds the lock on the promoted master within a lock TTL.
	sleep "$lock_ttl_s"
	touch "$tmp/stop"
	wait "$reader_pid" || true
	reader_pid=
	rm -f "$tmp/stop"
	kill_reqs=$(wc -l <"$tmp/kill.log")
	kill_fail=$(awk '$2 != 200' "$tmp/kill.log" | wc -l)
	kill_tokens=$(awk '$2 == 200 { print $5 }' "$tmp/kill.log" | sort -u | wc -l)
	kill_max=$(awk 'BEGIN { m = 0 } $3 > m { m = $3 } END { printf "%d", m * 1000 }' "$tmp/kill.log")
	log "   Redis failed over after ${redis_failover_ms:-?} ms; $kill_reqs requests, $kill_fail failed, slowest ${kill_max} ms, $kill_tokens token(s)"
	[[ -n $redis_failover_ms ]] || broken "redis master kill: no new master 60 s after the kill"
	[[ $kill_fail -eq 0 ]] || broken "redis master kill: $kill_fail of $kill_reqs requests failed: $(awk '$2 != 200 { print $2 }' "$tmp/kill.log" | sort | uniq -c | xargs)"
	[[ $kill_tokens -eq 1 ]] || broken "redis master kill: $kill_tokens distinct tokens served, want 1 (the token is still valid)"
else
# --- 2. kill the leader ----------------------------------------------------------
log "2. SIGKILL the leader while a client keeps reading"
old_leader=
for ((i = 0; i < 50; i++)); do
	old_leader=$(leader)
	[[ -n $old_leader ]] && break
	sleep 0.2
done
[[ -n $old_leader ]] || die "GET /v1/status names no leader: $R_CODE $R_BODY"
victim='' victim_ip=''
while read -r id host ip; do
	if [[ $old_leader == "$host-"* ]]; then
		victim=$id victim_ip=$ip
	fi
done < <(replicas)
[[ -n $victim ]] || die "no tokenkeeper container matches leader $old_leader: $(replicas | awk '{print $2}' | xargs)"
log "   leader $old_leader is container ${victim:0:12} at $victim_ip"

: >"$tmp/kill.log"
reader "$tmp/kill.log" "$tmp/stop" &
reader_pid=$!
sleep 1
t_kill=$(now_ms)
docker kill "$victim" >/dev/null
t_killed=$(now_ms)
markdown_ms='' failover_ms='' new_leader=''
deadline=$((t_kill + 30000))
while [[ -z $markdown_ms || -z $failover_ms ]] && [[ $(now_ms) -lt $deadline ]]; do
	if [[ -z $markdown_ms ]] &&
		! lb_servers | awk -v a="$victim_ip:8080" '$3 == a && $2 ~ /^UP/ { found = 1 } END { exit !found }'; then
		markdown_ms=$(($(now_ms) - t_kill))
	fi
	if [[ -z $failover_ms ]]; then
		l=$(leader)
		if [[ -n $l && $l != "$old_leader" ]]; then
			failover_ms=$(($(now_ms) - t_kill)) new_leader=$l
		fi
	fi
	sleep 0.05
done
# Keep reading a little after the new leader took over.
sleep 2
touch "$tmp/stop"
wait "$reader_pid" || true
reader_pid=
kill_reqs=$(wc -l <"$tmp/kill.log")
kill_fail=$(awk '$2 != 200' "$tmp/kill.log" | wc -l)
kill_after=$(awk -v t="$t_kill" '$1 >= t' "$tmp/kill.log" | wc -l)
kill_tokens=$(awk '$2 == 200 { print $5 }' "$tmp/kill.log" | sort -u | wc -l)
kill_max=$(awk 'BEGIN { m = 0 } $3 > m { m = $3 } END { printf "%d", m * 1000 }' "$tmp/kill.log")
kill_victim=$(awk -v t="$t_killed" -v v="$old_leader" '$1 > t && $4 == v' "$tmp/kill.log" | wc -l)
log "   $kill_reqs requests ($kill_after after the kill), $kill_fail failed, slowest ${kill_max} ms, $kill_tokens token(s)"
log "   HAProxy marked the dead replica down after ${markdown_ms:-?} ms; new leader ${new_leader:-none} after ${failover_ms:-?} ms"
[[ $kill_fail -eq 0 ]] || broken "leader kill: $kill_fail of $kill_reqs requests failed: $(awk '$2 != 200 { print $2 }' "$tmp/kill.log" | sort | uniq -c | xargs)"
[[ $kill_tokens -eq 1 ]] || broken "leader kill: $kill_tokens distinct tokens served, want 1 (the old token is still valid)"
[[ -n $markdown_ms ]] || broken "leader kill: HAProxy still shows the killed replica UP after 30 s"
[[ -n $failover_ms ]] || broken "leader kill: no new leader 30 s after the kill"
[[ -z $failover_ms || $failover_ms -le $((lock_ttl_s * 1000 + 3000)) ]] ||
	broken "leader kill: new leader after $failover_ms ms, want within the lock TTL ($lock_ttl_s s) plus slack"
[[ $kill_victim -eq 0 ]] || broken "leader kill: $kill_victim answers from the killed replica after the kill"

# --- 3. scale to 5 ----------------------------------------------------------------
log "3. ${compose_cmd[*]} up -d --scale tokenkeeper=5"
t=$(now_ms)
compose up -d --scale tokenkeeper=5 >&2 2>&1 || die "compose up --scale failed"
wait_lb_up 5 60 || die "HAProxy does not see 5 replicas UP within 60 s"
scale_ms=$(($(now_ms) - t))
[[ $(replicas | wc -l) -eq 5 ]] || broken "scale: $(replicas | wc -l) tokenkeeper containers run, want 5"
: >"$tmp/scale.log"
for ((i = 0; i < 100; i++)); do
	get "$lb/v1/tokens/liveness" "$reader_key"
	printf '%s %s %s\n' "$R_CODE" "$R_INST" "$R_TOKEN" >>"$tmp/scale.log"
	[[ $(awk '$1 == 200 { print $2 }' "$tmp/scale.log" | sort -u | wc -l) -ge 5 && $i -ge 20 ]] && break
done
scale_reqs=$(wc -l <"$tmp/scale.log")
scale_fail=$(awk '$1 != 200' "$tmp/scale.log" | wc -l)
scale_inst=$(awk '$1 == 200 { print $2 }' "$tmp/scale.log" | sort -u | wc -l)
scale_tokens=$(awk '$1 == 200 { print $3 }' "$tmp/scale.log" | sort -u | wc -l)
log "   5 replicas UP in HAProxy after ${scale_ms} ms; $scale_reqs reads, $scale_fail failed, $scale_inst replicas answered, $scale_tokens token(s)"
[[ $scale_fail -eq 0 ]] || broken "scale: $scale_fail of $scale_reqs reads failed"
[[ $scale_inst -eq 5 ]] || broken "scale: $scale_inst replicas answered, want 5"
[[ $scale_tokens -eq 1 ]] || broken "scale: $scale_tokens distinct tokens, want 1"

fi

# --- 4. forced refresh ----------------------------------------------------------
# Timing matters here (the design promises 100 ms), so one Python thread per
# replica polls it directly (container address, kept-alive connection) while
# the refresh is posted through HAProxy; one curl per poll would measure curl.
log "4. POST /v1/tokens/liveness/refresh through HAProxy while polling every replica directly"
mapfile -t ips < <(replicas | awk '{print $3}')
python3 - "$port" "$reader_key" "$admin_key" "$token0" "${ips[@]}" >"$tmp/refresh.out" <<'PY' || true
import http.client, json, sys, threading, time

port, reader, admin, old, ips = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
seen, go = {}, threading.Event()

def poll(ip):
    conn = http.client.HTTPConnection(ip, 8080, timeout=5)
    go.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            conn.request("GET", "/v1/tokens/liveness", headers={"Authorization": "Bearer " + reader})
            resp = conn.getresponse()
            body = resp.read()
        except OSError:
            conn.close()
            time.sleep(0.01)
            continue
        now = time.monotonic()
        if resp.status == 200:
            token = json.loads(body).get("token")
            if token and token != old:
                seen[ip] = (now, token)
                return
        time.sleep(0.002)

threads = [threading.Thread(target=poll, args=(ip,), daemon=True) for ip in ips]
for t in threads:
    t.start()
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
time.sleep(0.2)  # let the pollers connect
go.set()
t0 = time.monotonic()
conn.request("POST", "/v1/tokens/liveness/refresh", headers={"Authorization": "Bearer " + admin})
resp = conn.getresponse()
body = resp.read().decode(errors="replace")
t1 = time.monotonic()
for t in threads:
    t.join(11)
# Lines: "post CODE MS BODY", then "replica IP MS-AFTER-ANSWER MS-AFTER-REQUEST TOKEN" (- when never).
print("post", resp.status, round((t1 - t0) * 1000), body.replace("\n", " "))
for ip in ips:
    if ip in seen:
        t, token = seen[ip]
        print("replica", ip, max(0, round((t - t1) * 1000)), round((t - t0) * 1000), token)
    else:
        print("replica", ip, "-", "-", "-")
PY
read -r _ post_code post_ms post_body < <(grep '^post ' "$tmp/refresh.out" || echo "post 000 - -")
log "   refresh answered $post_code after ${post_ms} ms: $post_body"
[[ $post_code == 200 ]] || broken "refresh: POST answered $post_code, want 200"
switch_ms=0 switch_req_ms=0 switched=0
while read -r _ ip after_answer after_request _; do
	if [[ $after_answer == - ]]; then
		broken "refresh: replica $ip still serves the old token 10 s after the refresh"
		continue
	fi
	switched=$((switched + 1))
	((after_answer > switch_ms)) && switch_ms=$after_answer
	((after_request > switch_req_ms)) && switch_req_ms=$after_request
done < <(grep '^replica ' "$tmp/refresh.out")
refresh_tokens=$(awk '$1 == "replica" && $5 != "-" { print $5 }' "$tmp/refresh.out" | sort -u | wc -l)
log "   $switched/${#ips[@]} replicas serve the new token: the last ${switch_ms} ms after the answer (${switch_req_ms} ms after the request); $refresh_tokens new token(s)"
[[ $switched -eq ${#ips[@]} ]] || broken "refresh: $switched of ${#ips[@]} replicas switched"
[[ $refresh_tokens -eq 1 ]] || broken "refresh: replicas serve $refresh_tokens different new tokens, want 1"
[[ $switch_ms -le $switch_limit_ms ]] ||
	broken "refresh: the last replica switched $switch_ms ms after the answer, want within $switch_limit_ms ms"

# --- upstream calls ---------------------------------------------------------------
# One fetch per token: the first one and the forced refresh; neither the
# leader's death nor the new replicas may cost another.
fake_ip=$(service_ip fake-rdp)
stats=$(curl -s --max-time 2 "http://$fake_ip:9090/fake/v1/stats" 2>/dev/null || true)
live_calls=$(printf '%s' "$stats" | json liveness_calls)
live_ok=$(printf '%s' "$stats" | json liveness_ok)
auth_calls=$(printf '%s' "$stats" | json auth_calls.v2)
log "fake RDP: ${live_calls:-?} liveness calls (${live_ok:-?} tokens issued), ${auth_calls:-?} auth calls"
if [[ -z $redis_profile ]]; then
	[[ $live_ok == 2 ]] ||
		broken "upstream: ${live_ok:-unknown} liveness tokens issued, want 2 (the first and the forced refresh)"
else
	[[ $live_ok == 2 || $live_ok == 3 ]] ||
		broken "upstream: ${live_ok:-unknown} liveness tokens issued, want 2 (the first and the forced refresh), 3 at most with the failover"
fi

# --- traces (profile tracing) -------------------------------------------------------
# The new leader's forced refresh, as Jaeger's query API returns it: the
# attempt with its upstream calls and its fenced write as children, in a
# trace that also holds the election it won after the kill when it was the
# term's first attempt, and the other replicas' adoptions of the token.
trace_result=-
if [[ $profile == tracing ]]; then
	log "traces: the new leader's refresh in Jaeger (service tokenkeeper)"
	jaeger_ip=$(service_ip jaeger)
	[[ -n $jaeger_ip ]] || die "no jaeger container"
	python3 - "http://$jaeger_ip:16686" "${old_leader:-}" "${t_kill:-0}" "$tmp/trace.html" >"$tmp/traces.out" <<'PY' || true
import html, json, sys, time, urllib.request

# The leader's refresh after the kill: begun after the kill, so by a live
# process (the new leader, or one it handed the token over to since, as
# leadership spreads over the fleet). Its instance name may be the killed
# one's: scaling the stack starts the killed container again, with its
# hostname, and the balancer hands a token to it first, as it leads none.
base, killed, t_kill, page = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def tags(s):
    return {t["key"]: t["value"] for t in s.get("tags", [])}

def find():
    url = base + "/api/traces?service=tokenkeeper&operation=tokenkeeper.refresh&limit=100&lookback=1h"
    with urllib.request.urlopen(url, timeout=5) as r:
        data = json.load(r)["data"] or []
    for tr in data:
        spans = tr["spans"]
        for s in spans:
            t = tags(s)
            if (s["operationName"] != "tokenkeeper.refresh" or t.get("tokenkeeper.instance") in ("", None)
                    or t.get("tokenkeeper.reason") != "requested" or s["startTime"] // 1000 < t_kill):
                continue
            kids = [k["operationName"] for k in spans
                    if any(r["refType"] == "CHILD_OF" and r["spanID"] == s["spanID"] for r in k.get("references", []))]
            if "POST liveness" in kids and "tokenkeeper.store.write" in kids:
                return tr, s, kids
    return None, None, None

deadline = time.monotonic() + 30
tr = None
while time.monotonic() < deadline:
    try:
        tr, attempt, kids = find()
    except (OSError, ValueError, KeyError, TypeError):
        tr = None
    if tr:
        break
    time.sleep(1)
if not tr:
    print("result none")
    sys.exit(0)
print("result", tr["traceID"], " ".join(sorted(set(kids))))
byid = {s["spanID"]: s for s in tr["spans"]}
def depth(s):
    d = 0
    while True:
        ps = [r["spanID"] for r in s.get("references", []) if r["refType"] == "CHILD_OF" and r["spanID"] in byid]
        if not ps:
            return d
        s, d = byid[ps[0]], d + 1
procs = tr.get("processes", {})
def instance(s):
    t = tags(s)
    return t.get("tokenkeeper.instance") or {x["key"]: x["value"] for x in procs.get(s.get("processID"), {}).get("tags", [])}.get("service.instance.id", "")
spans = sorted(tr["spans"], key=lambda s: s["startTime"])
rows = []
for s in spans:
    t = tags(s)
    keep = {k: v for k, v in t.items() if not k.startswith(("otel.", "internal.")) and k != "span.kind"}
    events = [f["fields"][0]["value"] for f in s.get("logs", []) if f.get("fields")]
    print("span", "  " * depth(s) + s["operationName"], f'{s["duration"] / 1000:.1f}ms',
          json.dumps(keep, sort_keys=True), ("events " + ", ".join(events)) if events else "")
    rows.append((s, depth(s), keep, events))
# The trace as a waterfall page (the README's screenshot): Jaeger built from
# the module proxy has no web UI, which is a separate JavaScript build.
# The bars are drawn over the refresh and what follows it; a span that
# began earlier (the election, seconds before) starts at the left edge.
t0 = spans[0]["startTime"]
t1 = max(s["startTime"] + s["duration"] for s in spans)
w0 = attempt["startTime"]
scale = 100 / max(t1 - w0, 1)
out = ['<!doctype html><meta charset="utf-8"><title>trace</title><style>',
       'body{font:13px system-ui,sans-serif;margin:16px;color:#222}h1{font-size:16px;margin:0 0 4px}',
       '.sub{color:#666;margin-bottom:12px}table{border-collapse:collapse;width:100%}',
       'td{padding:3px 6px;border-bottom:1px solid #eee;vertical-align:top;white-space:nowrap}',
       '.bar{position:relative;height:14px;background:#f4f6f8;width:420px}',
       '.bar i{position:absolute;top:0;height:14px;background:#4a90d9;min-width:2px}',
       '.ev{color:#a05a00}.at{color:#555;font-size:11px;white-space:normal}</style>',
       f'<h1>Trace {tr["traceID"]}</h1><div class="sub">as Jaeger\'s query API returns it '
       f'(/api/traces, service tokenkeeper): {len(spans)} spans over {(t1 - t0) / 1000:.1f} ms; '
       f'the bars span the refresh and what follows it ({(t1 - w0) / 1000:.1f} ms)</div><table>'
       '<tr><td><b>span</b></td><td><b>replica</b></td><td><b>start</b></td><td><b>duration</b></td><td></td><td><b>attributes</b></td></tr>']
for s, d, keep, events in rows:
    left = max(s["startTime"] - w0, 0) * scale
    width = max(min(s["startTime"] + s["duration"], t1) - max(s["startTime"], w0), 0) * scale
    at = ", ".join(f"{k}={v}" for k, v in sorted(keep.items()) if k.startswith(("tokenkeeper.", "http.", "db.")) and k not in ("tokenkeeper.token",))
    ev = ("<span class=ev> ◆ " + html.escape(", ".join(events)) + "</span>") if events else ""
    out.append(f'<tr><td style="padding-left:{6 + 18 * d}px">{html.escape(s["operationName"])}{ev}</td>'
               f'<td>{html.escape(instance(s))}</td><td>+{(s["startTime"] - t0) / 1000:.1f} ms</td><td>{s["duration"] / 1000:.2f} ms</td>'
               f'<td><div class=bar><i style="left:{left * 4.2:.1f}px;width:{width * 4.2:.1f}px"></i></div></td>'
               f'<td class=at>{html.escape(at)}</td></tr>')
out.append("</table>")
open(page, "w").write("\n".join(out))
PY
	read -r _ trace_result trace_kids < <(grep '^result ' "$tmp/traces.out" || echo "result none")
	grep '^span ' "$tmp/traces.out" | cut -c6- >&2 || true
	if [[ $trace_result == none ]]; then
		broken "traces: Jaeger holds no trace with a refresh begun after the kill of ${old_leader:-?}, with its upstream and Redis children"
	else
		log "   trace $trace_result: the new leader's refresh, with children $trace_kids"
		# SMOKE_TRACE_SCREENSHOT=FILE: the trace as a waterfall, in headless
		# Chromium (the README's docs/jaeger-trace.png).
		if [[ -n ${SMOKE_TRACE_SCREENSHOT:-} ]]; then
			chromium=$(command -v chromium || command -v chromium-browser || true)
			[[ -n $chromium ]] || die "SMOKE_TRACE_SCREENSHOT needs chromium (apt-get install -y chromium)"
			"$chromium" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
				--no-first-run --user-data-dir="$tmp/chromium" --window-size=1400,600 \
				--screenshot="$SMOKE_TRACE_SCREENSHOT" "file://$tmp/trace.html" >/dev/null 2>&1 ||
				broken "traces: chromium could not take the screenshot"
			log "   screenshot of the trace: $SMOKE_TRACE_SCREENSHOT"
		fi
	fi
fi

# --- figures -----------------------------------------------------------------------
total=$((reads + kill_reqs + scale_reqs))
failed=$((reads - ok + kill_fail + scale_fail))
cat <<EOF

compose smoke test ($COMPOSE_PROJECT_NAME, ${compose_cmd[*]}${profile:+ --profile $profile}, $TOKENKEEPER_IMAGE, $REDIS_IMAGE, $HAPROXY_IMAGE)
  requests through HAProxy        $total ($reads reads, $kill_reqs during the ${redis_profile:+redis master }kill, $scale_reqs after scaling)
  failed requests                 $failed
  100 wrong keys, then the right  ${wrong_ms} ms ($wrong_401 x 401, $wrong_429 x 429); right key $right_code
  replicas seen (3, then 5)       $instances, $scale_inst
$(if [[ -n $redis_profile ]]; then
	printf '  redis master kill: failover   %s ms\n  redis master kill: slowest    %s ms' "${redis_failover_ms:-never}" "$kill_max"
else
	printf '  leader kill: HAProxy mark-down  %s ms\n  leader kill: new leader         %s ms (lock TTL %s s)\n' "${markdown_ms:-never}" "${failover_ms:-never}" "$lock_ttl_s"
	printf '  leader kill: slowest request    %s ms\n  scale to 5: all UP in HAProxy   %s ms' "$kill_max" "$scale_ms"
fi)
  refresh: every replica switched ${switch_ms} ms after the answer (${switch_req_ms} ms after the request)
  upstream liveness calls         ${live_calls:-?} (${live_ok:-?} tokens issued; want 2), auth calls ${auth_calls:-?}
$([[ $profile != tracing ]] || printf '  traces: the new leader'"'"'s refresh  trace %s in Jaeger' "$trace_result")
EOF
if [[ ${#failures[@]} -gt 0 ]]; then
	printf '\nFAILED: %d broken promise(s):\n' "${#failures[@]}"
	printf '  - %s\n' "${failures[@]}"
	exit 1
fi
printf '\nPASS\n'
