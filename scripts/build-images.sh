#!/usr/bin/env bash
# build-images.sh builds, without any container registry, the images that the
# integration suite (integration/) and the compose smoke test
# (scripts/compose-smoke.sh) run:
#
#   tokenkeeper:dev             FROM scratch around a static binary built on
#                               this host (Dockerfile.prebuilt), user 65532
#   tokenkeeper/redis:debian    Debian's redis-server (and redis-cli) with the
#                               libraries ldd lists, docker-imported; the same
#                               binary runs Sentinel (`redis-server FILE
#                               --sentinel`, as Debian's redis-sentinel does) and
#                               Cluster nodes (`--cluster-enabled yes`); a
#                               POSIX shell (Debian's dash, /bin/sh) lets a
#                               container write the config file Sentinel
#                               rewrites, as with the official image
#   tokenkeeper/haproxy:debian  Debian's haproxy the same way; its config goes
#                               to /usr/local/etc/haproxy/haproxy.cfg as in the
#                               official image
#   tokenkeeper/latencyproxy:dev
#                               FROM scratch around integration/latencyproxy, a
#                               TCP proxy the suite slows Redis down with
#   tokenkeeper/jaeger:1.75.0   only when named (`jaeger`): FROM scratch around
#                               a slim Jaeger v2 (an OpenTelemetry Collector
#                               distribution) built from Jaeger v1.75.0's own
#                               packages: OTLP in, the batch processor, spans
#                               in memory, the query API (deploy/jaeger: the
#                               module's source from the Go module proxy, with
#                               our main and a memory-only storage extension
#                               in place of upstream's). About 800 packages
#                               instead of the full program's 2,300. The
#                               profile `tracing` of docker-compose.yml runs
#                               it; the official image of that release, with
#                               every component and the UI, is
#                               jaegertracing/jaeger:2.12.0.
#
# Elsewhere, with a registry, the official images do the same job
# (redis:7-alpine, haproxy:2.9-alpine) and `docker compose build` builds the
# app from the multi-stage Dockerfile.
#
# Usage: scripts/build-images.sh [-f|--force] [app|redis|haproxy|latencyproxy|jaeger]...
#   With no names, builds the first four. The app and proxy images are rebuilt
#   every time (the Go build cache and Docker's layer cache make that quick).
#   The Redis and HAProxy images are skipped when they exist and were made
#   from the Debian package version installed now, unless forced (--force or
#   FORCE=1); so is the Jaeger image when it was built from JAEGER_VERSION and
#   the files of deploy/jaeger as they are now.
#
# Needs: docker, go, and for the Debian images the
# packages redis-server and haproxy (apt-get install -y redis-server haproxy).
#
# Environment: TOKENKEEPER_IMAGE (default tokenkeeper:dev) names the app image,
# LATENCYPROXY_IMAGE (default tokenkeeper/latencyproxy:dev) the proxy's,
# JAEGER_IMAGE (default tokenkeeper/jaeger:1.75.0) Jaeger's, from the module
# github.com/jaegertracing/jaeger at JAEGER_VERSION (default v1.75.0; the
# changes of deploy/jaeger are made for that release and the build stops if
# they do not apply to another);
# BUILD_DIR (default .build) holds the binary and, while they are imported,
# the staged root filesystems. VERSION and COMMIT (default: from git, see
# stamp below) are stamped into the app's binary (`tokenkeeper version`) and
# its image's OCI labels.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

app_image=${TOKENKEEPER_IMAGE:-tokenkeeper:dev}
redis_image=tokenkeeper/redis:debian
haproxy_image=tokenkeeper/haproxy:debian
latencyproxy_image=${LATENCYPROXY_IMAGE:-tokenkeeper/latencyproxy:dev}
jaeger_version=${JAEGER_VERSION:-v1.75.0}
jaeger_image=${JAEGER_IMAGE:-tokenkeeper/jaeger:${jaeger_version#v}}
build_dir=${BUILD_DIR:-$repo/.build}
force=${FORCE:-0}
nonroot_uid=65532

# stamp: the version (git describe without its "v"; 0.0.0-dev+SHORT-SHA with
# no release tag; "dev" outside a git checkout), the commit ("-dirty" with
# uncommitted changes) and the commit's date (the image's created label, so
# that rebuilding one commit gives the same labels) of this build.
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
	version=${VERSION:-$(git -C "$repo" describe --tags --match 'v[0-9]*' --dirty 2>/dev/null ||
		echo "0.0.0-dev+$(git -C "$repo" rev-parse --short HEAD)")}
	commit=${COMMIT:-$(git -C "$repo" rev-parse HEAD)$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo -dirty)}
	created=${CREATED:-$(TZ=UTC git -C "$repo" log -1 --date=iso-strict-local --format=%cd)}
else
	version=${VERSION:-dev} commit=${COMMIT:-unknown} created=${CREATED:-}
fi
version=${version#v}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-images: %s\n' "$*" >&2; exit 1; }

targets=()
for arg in "$@"; do
	case $arg in
	-f | --force) force=1 ;;
	app | redis | haproxy | latencyproxy | jaeger) targets+=("$arg") ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument $arg (try --help)" ;;
	esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=(app redis haproxy latencyproxy)

command -v docker >/dev/null || die "docker is not installed"
docker version --format '{{.Server.Version}}' >/dev/null || die "the Docker engine does not answer"

# debian_version PACKAGE prints the installed version of a Debian package, or
# fails with the command that installs it.
debian_version() {
	local v
	v=$(dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null || true)
	[[ $v == "install ok installed "* ]] ||
		die "Debian package $1 is not installed: apt-get install -y $1"
	printf '%s\n' "${v#install ok installed }"
}

# image_label IMAGE prints the org.tokenkeeper.debian-package label of IMAGE,
# or nothing when the image does not exist.
image_label() {
	docker image inspect -f '{{ index .Config.Labels "org.tokenkeeper.debian-package" }}' "$1" 2>/dev/null || true
}

# drop_replaced IMAGE OLD-ID removes the image IMAGE was before a rebuild, when
# the tag moved and no container uses the old one.
drop_replaced() {
	if [[ -n $2 && $2 != "$(image_id "$1")" ]]; then
		docker rmi "$2" >/dev/null 2>&1 || true
	fi
}

# image_id IMAGE prints the id of IMAGE, or nothing.
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

# new_rootfs DIR makes a minimal root filesystem: a nonroot user (65532), /tmp,
# and name resolution through files then DNS.
new_rootfs() {
	local root=$1
	rm -rf "$root"
	mkdir -p "$root"/{etc,tmp,usr/local/bin,usr/local/sbin}
	chmod 1777 "$root/tmp"
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n' \
		"$nonroot_uid" "$nonroot_uid" >"$root/etc/passwd"
	printf 'root:x:0:\nnonroot:x:%d:\n' "$nonroot_uid" >"$root/etc/group"
	printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
}

# add_elf ROOT SRC DEST copies the program SRC (symlinks followed) to DEST in
# ROOT, with every shared library ldd lists at the path the loader looks for.
add_elf() {
	local root=$1 src=$2 dest=$3 lib
	install -D -m 0755 "$(readlink -f "$src")" "$root$dest"
	while read -r lib; do
		[[ -e $root$lib ]] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
	done < <(ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
}

# import_rootfs ROOT IMAGE CHANGE... tars ROOT (numeric owners, sorted, fixed
# mtimes) into `docker import` with the Dockerfile instructions CHANGE.
import_rootfs() {
	local root=$1 image=$2 change args=()
	shift 2
	for change in "$@"; do args+=(--change "$change"); done
	tar --numeric-owner --sort=name --mtime=@0 -C "$root" -cf - . |
		docker import "${args[@]}" --message "built by scripts/build-images.sh" - "$image" >/dev/null
	rm -rf "$root"
}

# wait_log CONTAINER TEXT SECONDS waits until the log of CONTAINER shows TEXT.
wait_log() {
	local i
	for ((i = 0; i < $3 * 10; i++)); do
		docker logs "$1" 2>&1 | grep -q "$2" && return 0
		sleep 0.1
	done
	docker logs "$1" >&2 || true
	return 1
}

# go_static PACKAGE BINARY [MODULE_DIR] builds PACKAGE (of the module in
# MODULE_DIR, default the repository's) into BINARY, an absolute path,
# static (CGO_ENABLED=0), as FROM scratch needs. LDFLAGS adds linker flags.
go_static() {
	command -v go >/dev/null || die "go is not installed"
	log "go build (CGO_ENABLED=0, static) ${3:-.}/$1 -> $2"
	mkdir -p "$(dirname "$2")"
	(cd "${3:-.}" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w ${LDFLAGS:-}" -o "$2" "$1")
	if ldd "$2" >/dev/null 2>&1; then
		die "$2 is dynamically linked; FROM scratch needs a static binary"
	fi
}

build_app() {
	local ctx=$build_dir/app old
	LDFLAGS="-X main.version=$version -X main.commit=$commit" go_static ./cmd/tokenkeeper "$ctx/tokenkeeper"
	log "docker build -f Dockerfile.prebuilt -t $app_image (context: $ctx, the binary only; version $version)"
	old=$(image_id "$app_image")
	docker build --quiet -f Dockerfile.prebuilt -t "$app_image" \
		--build-arg "VERSION=$version" --build-arg "COMMIT=$commit" \
		--build-arg "CREATED=$created" "$ctx" >/dev/null
	drop_replaced "$app_image" "$old"
}

build_latencyproxy() {
	local ctx=$build_dir/latencyproxy old
	go_static ./latencyproxy "$ctx/latencyproxy" integration
	log "docker build -f integration/latencyproxy/Dockerfile -t $latencyproxy_image (context: $ctx, the binary only)"
	old=$(image_id "$latencyproxy_image")
	docker build --quiet -f integration/latencyproxy/Dockerfile -t "$latencyproxy_image" "$ctx" >/dev/null
	drop_replaced "$latencyproxy_image" "$old"
}

build_redis() {
	local version label root=$build_dir/rootfs-redis cid old
	version=$(debian_version redis-server)
	# The suffix names the recipe: an image from an older one is rebuilt.
	label="redis-server=$version+sh"
	if [[ $force != 1 && $(image_label "$redis_image") == "$label" ]]; then
		log "$redis_image exists (from $label): skipped (--force rebuilds)"
		return
	fi
	log "$redis_image from Debian's $label"
	new_rootfs "$root"
	add_elf "$root" /usr/bin/redis-server /usr/local/bin/redis-server
	add_elf "$root" /usr/bin/redis-cli /usr/local/bin/redis-cli
	# Sentinel needs a writable config file that exists before it starts (it
	# rewrites it with what it learns); a shell writes it, as in
	# docker-compose.yml's sentinel profile and the container suite.
	add_elf "$root" /usr/bin/dash /bin/sh
	mkdir -p "$root/data"
	if [[ $EUID -eq 0 ]]; then
		chown "$nonroot_uid:$nonroot_uid" "$root/data"
	else
		chmod 1777 "$root/data"
	fi
	# Debian's redis-server keeps protected mode on (the official image turns it
	# off at build time), which refuses clients from other containers: the
	# entrypoint turns it off. Arguments given to `docker run` are appended, as
	# with the official image's entrypoint: `docker run IMAGE --loglevel debug`.
	old=$(image_id "$redis_image")
	import_rootfs "$root" "$redis_image" \
		"LABEL org.tokenkeeper.debian-package=\"$label\"" \
		"ENV PATH=/usr/local/bin:/usr/bin:/bin" \
		"USER $nonroot_uid:$nonroot_uid" \
		"WORKDIR /data" \
		"EXPOSE 6379" \
		'ENTRYPOINT ["/usr/local/bin/redis-server", "--protected-mode", "no"]' \
		'CMD []'
	log "checking $redis_image: starts, says it is ready, answers PING"
	cid=$(docker run -d --rm "$redis_image")
	if ! wait_log "$cid" "Ready to accept connections" 20 ||
		[[ $(docker exec "$cid" redis-cli ping 2>&1) != PONG ]]; then
		docker rm -f "$cid" >/dev/null
		die "$redis_image does not work"
	fi
	docker rm -f "$cid" >/dev/null
	log "checking $redis_image: a Sentinel from a config its shell writes, a Cluster node"
	cid=$(docker run -d --rm --entrypoint sh "$redis_image" -c \
		'printf "sentinel monitor m 127.0.0.1 6379 1\n" >/data/sentinel.conf && exec redis-server /data/sentinel.conf --sentinel')
	if ! wait_log "$cid" "Sentinel ID is" 20 ||
		[[ $(docker exec "$cid" redis-cli -p 26379 sentinel get-master-addr-by-name m 2>&1 | xargs) != "127.0.0.1 6379" ]]; then
		docker rm -f "$cid" >/dev/null
		die "$redis_image does not run Sentinel"
	fi
	docker rm -f "$cid" >/dev/null
	cid=$(docker run -d --rm "$redis_image" --cluster-enabled yes)
	if ! wait_log "$cid" "Ready to accept connections" 20 ||
		! docker exec "$cid" redis-cli cluster info 2>&1 | grep -q '^cluster_state:'; then
		docker rm -f "$cid" >/dev/null
		die "$redis_image does not run a Cluster node"
	fi
	docker rm -f "$cid" >/dev/null
	drop_replaced "$redis_image" "$old"
}

build_haproxy() {
	local version label root=$build_dir/rootfs-haproxy old
	version=$(debian_version haproxy)
	label="haproxy=$version"
	if [[ $force != 1 && $(image_label "$haproxy_image") == "$label" ]]; then
		log "$haproxy_image exists (from $label): skipped (--force rebuilds)"
		return
	fi
	log "$haproxy_image from Debian's $label"
	new_rootfs "$root"
	add_elf "$root" /usr/sbin/haproxy /usr/local/sbin/haproxy
	mkdir -p "$root/usr/local/etc/haproxy" "$root/var/lib/haproxy"
	[[ $EUID -ne 0 ]] || chown "$nonroot_uid:$nonroot_uid" "$root/var/lib/haproxy"
	# As the official image: master-worker mode, logs in the foreground, the
	# config at /usr/local/etc/haproxy/haproxy.cfg (mount yours there). Unlike
	# it, the stop signal stays SIGTERM (docker import cannot set STOPSIGNAL):
	# HAProxy stops at once instead of draining connections.
	old=$(image_id "$haproxy_image")
	import_rootfs "$root" "$haproxy_image" \
		"LABEL org.tokenkeeper.debian-package=\"$label\"" \
		"ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/bin:/bin" \
		"USER $nonroot_uid:$nonroot_uid" \
		"WORKDIR /var/lib/haproxy" \
		'ENTRYPOINT ["/usr/local/sbin/haproxy", "-W", "-db"]' \
		'CMD ["-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
	log "checking $haproxy_image: haproxy -c on deploy/haproxy/haproxy.cfg"
	docker run --rm -v "$repo/deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" \
		"$haproxy_image" -c -f /usr/local/etc/haproxy/haproxy.cfg >/dev/null ||
		die "$haproxy_image rejects deploy/haproxy/haproxy.cfg"
	drop_replaced "$haproxy_image" "$old"
}

# trim_query_flags cuts from Jaeger's cmd/query/app/flags.go the method
# BuildQueryServiceOptions and its type InitArchiveStorageFn, which only
# Jaeger v1's programs call, and the four imports only they use: through
# the v1 storage factory they link every storage backend. It fails when
# the file no longer has that shape (another JAEGER_VERSION), rather than
# build a different program.
trim_query_flags() {
	local f=$1
	grep -q '^func (qOpts \*QueryOptions) BuildQueryServiceOptions(' "$f" ||
		die "$f: no BuildQueryServiceOptions to cut (JAEGER_VERSION $jaeger_version)"
	sed -i \
		-e '/^type InitArchiveStorageFn /d' \
		-e '/^\/\/ BuildQueryServiceOptions /d' \
		-e '/^func (qOpts \*QueryOptions) BuildQueryServiceOptions(/,/^}$/d' \
		-e '\#^\t"github.com/jaegertracing/jaeger/cmd/query/app/querysvc"$#d' \
		-e '\#^\tv2querysvc "github.com/jaegertracing/jaeger/cmd/query/app/querysvc/v2/querysvc"$#d' \
		-e '\#^\tstorage "github.com/jaegertracing/jaeger/internal/storage/v1/factory"$#d' \
		-e '\#^\t"github.com/jaegertracing/jaeger/internal/storage/v2/v1adapter"$#d' \
		"$f"
	gofmt -w "$f"
	! grep -q 'BuildQueryServiceOptions\|InitArchiveStorageFn\|storage/v1/factory' "$f" ||
		die "$f: could not cut the v1 storage factory (JAEGER_VERSION $jaeger_version)"
}

# build_jaeger builds a slim Jaeger v2 and wraps it as the official image is
# wrapped: listening on every interface (JAEGER_LISTEN_HOST), OTLP on 4317 and
# 4318, the query API on 16686 (gRPC 16685). Jaeger's components live under
# its module's internal directories, which no other module may import, so
# the build takes the module's source from the Go module proxy (go mod
# download), lays deploy/jaeger/_overlay over it (our main.go for cmd/jaeger,
# and jaeger_storage with the memory backend only), cuts from the query
# service's flags the one function that links the v1 storage factory, and
# through it every backend (trim_query_flags), and builds ./cmd/jaeger inside it
# with the module's own go.mod and go.sum. See deploy/jaeger/README.md.
build_jaeger() {
	local src=$build_dir/jaeger-src root=$build_dir/rootfs-jaeger mod=github.com/jaegertracing/jaeger
	local recipe label dir cid old
	recipe=$(cd deploy/jaeger && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum)
	label="$mod/cmd/jaeger@$jaeger_version slim ${recipe:0:12}"
	if [[ $force != 1 && $(image_label "$jaeger_image") == "$label" ]]; then
		log "$jaeger_image exists (from $label): skipped (--force rebuilds)"
		return
	fi
	log "$jaeger_image from $label (deploy/jaeger over $mod@$jaeger_version)"
	dir=$(cd / && go mod download -json "$mod@$jaeger_version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[[ -n $dir && -d $dir ]] || die "go mod download $mod@$jaeger_version failed"
	rm -rf "$src"
	mkdir -p "$build_dir"
	cp -R "$dir" "$src"
	chmod -R u+w "$src"
	cp -R deploy/jaeger/_overlay/. "$src/"
	trim_query_flags "$src/cmd/query/app/flags.go"
	LDFLAGS="-X $mod/internal/version.latestVersion=$jaeger_version" \
		go_static ./cmd/jaeger "$build_dir/jaeger" "$src"
	rm -rf "$src"
	new_rootfs "$root"
	install -D -m 0755 "$build_dir/jaeger" "$root/usr/local/bin/jaeger"
	old=$(image_id "$jaeger_image")
	import_rootfs "$root" "$jaeger_image" \
		"LABEL org.tokenkeeper.debian-package=\"$label\"" \
		"ENV JAEGER_LISTEN_HOST=0.0.0.0" \
		"USER $nonroot_uid:$nonroot_uid" \
		"EXPOSE 4317 4318 16685 16686" \
		'ENTRYPOINT ["/usr/local/bin/jaeger"]'
	log "checking $jaeger_image: starts and says it is ready"
	cid=$(docker run -d --rm "$jaeger_image")
	if ! wait_log "$cid" "Everything is ready" 60; then
		docker rm -f "$cid" >/dev/null
		die "$jaeger_image does not start"
	fi
	docker rm -f "$cid" >/dev/null
	drop_replaced "$jaeger_image" "$old"
}

for t in "${targets[@]}"; do
	"build_$t"
done

log "images:"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' |
	awk -v a="$app_image" -v r="$redis_image" -v h="$haproxy_image" -v l="$latencyproxy_image" -v j="$jaeger_image" \
		'$1 == a || $1 == r || $1 == h || $1 == l || $1 == j { printf "    %-28s %s\n", $1, $2 }' >&2

cat <<EOF
# Use the local images (integration suite, compose, smoke test):
export TOKENKEEPER_IMAGE=$app_image
export REDIS_IMAGE=$redis_image
export HAPROXY_IMAGE=$haproxy_image
export LATENCYPROXY_IMAGE=$latencyproxy_image
export JAEGER_IMAGE=$jaeger_image
EOF
