#!/usr/bin/env bash
# release.sh builds a tokenkeeper release into dist/ (git-ignored):
#
#   dist/tokenkeeper-VERSION-linux-amd64     static binaries (CGO_ENABLED=0,
#   dist/tokenkeeper-VERSION-linux-arm64     -trimpath, -s -w), version and
#                                            commit stamped (tokenkeeper version)
#   dist/tokenkeeper-image-VERSION-linux-amd64.tar.gz
#                                            the image (docker save), built from
#                                            the amd64 binary with
#                                            Dockerfile.prebuilt, OCI labels set
#   dist/SHA256SUMS                          SHA-256 of each file above
#
# and tags the image IMAGE:VERSION (default tokenkeeper/tokenkeeper:VERSION)
# in the local Docker engine. Nothing is pushed or published.
#
# Usage: scripts/release.sh [--no-image] [VERSION]
#   VERSION, e.g. 0.1.0 (a leading v is dropped): default from git describe
#   (0.0.0-dev+SHORT-SHA without a release tag). A release version (X.Y.Z,
#   with no pre-release part) must be the chart's appVersion, have its own
#   section in CHANGELOG.md, and be built from a clean work tree.
#   --no-image skips the image (machines without Docker).
#
# Environment: IMAGE (default tokenkeeper/tokenkeeper), DIST (default dist),
# COMMIT (default the HEAD commit), CREATED (default the commit's date).
# `make release` runs this script; `make release VERSION=0.1.0` passes one.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'release: %s\n' "$*" >&2; exit 1; }

with_image=1
version=${VERSION:-}
for arg in "$@"; do
	case $arg in
	--no-image) with_image=0 ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
		exit 0
		;;
	-*) die "unknown flag $arg (try --help)" ;;
	*) version=$arg ;;
	esac
done

command -v go >/dev/null || die "go is not installed"
command -v git >/dev/null || die "git is not installed"
command -v sha256sum >/dev/null || die "sha256sum is not installed (coreutils)"

dirty=
git diff --quiet HEAD 2>/dev/null || dirty=-dirty
if [[ -z $version ]]; then
	version=$(git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null ||
		echo "0.0.0-dev+$(git rev-parse --short HEAD)")
fi
version=${version#v}
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$ ]] ||
	die "version $version is not semantic (X.Y.Z, optionally -pre or +build)"
commit=${COMMIT:-$(git rev-parse HEAD)$dirty}
created=${CREATED:-$(TZ=UTC git log -1 --date=iso-strict-local --format=%cd)}
image=${IMAGE:-tokenkeeper/tokenkeeper}
tag=${version//+/-} # Docker tags have no "+"
dist=${DIST:-dist}

# A release proper: the chart deploys it, the changelog tells it, and the
# tree is what the tag will point at.
if [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
	app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' deploy/helm/tokenkeeper/Chart.yaml)
	[[ $app_version == "$version" ]] ||
		die "deploy/helm/tokenkeeper/Chart.yaml has appVersion $app_version, not $version: bump it (and the chart's version), regenerate deploy/kubernetes/tokenkeeper.yaml (make manifests), then release"
	grep -q "^## \[$version\]" CHANGELOG.md ||
		die "CHANGELOG.md has no \"## [$version]\" section: move Unreleased there first"
	[[ -z $dirty ]] || die "the work tree has uncommitted changes: a release is built from a commit"
else
	log "version $version is not a release (X.Y.Z): the chart, changelog and clean-tree checks are skipped"
fi

log "release $version (commit $commit) into $dist/"
mkdir -p "$dist"
rm -f "$dist"/tokenkeeper-"$version"-* "$dist"/tokenkeeper-image-"$version"-* "$dist/SHA256SUMS"

ldflags="-s -w -X main.version=$version -X main.commit=$commit"
for arch in amd64 arm64; do
	out=$dist/tokenkeeper-$version-linux-$arch
	log "go build linux/$arch -> $out"
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags="$ldflags" -o "$out" ./cmd/tokenkeeper
	# The stamp is in the binary, whatever its architecture (-trimpath keeps
	# -ldflags out of go version -m: look for the strings themselves).
	grep -qaF -- "$version" "$out" && grep -qaF -- "$commit" "$out" ||
		die "$out does not carry the version $version and the commit $commit"
	go version -m "$out" | grep -q "GOARCH=$arch" || die "$out is not built for $arch"
	go version -m "$out" | grep -q "CGO_ENABLED=0" || die "$out is not static"
done
if [[ $(go env GOHOSTOS)/$(go env GOHOSTARCH) == linux/amd64 ]]; then
	got=$("$dist/tokenkeeper-$version-linux-amd64" version | head -1)
	[[ $got == "tokenkeeper $version" ]] || die "the amd64 binary says \"$got\", not \"tokenkeeper $version\""
fi

if ((with_image)); then
	command -v docker >/dev/null || die "docker is not installed (or pass --no-image)"
	ctx=$(mktemp -d)
	trap 'rm -rf "$ctx"' EXIT
	cp "$dist/tokenkeeper-$version-linux-amd64" "$ctx/tokenkeeper"
	log "docker build -f Dockerfile.prebuilt -t $image:$tag (linux/amd64)"
	docker build --quiet -f Dockerfile.prebuilt -t "$image:$tag" \
		--build-arg "VERSION=$version" --build-arg "COMMIT=$commit" --build-arg "CREATED=$created" \
		"$ctx" >/dev/null
	label=$(docker image inspect -f '{{ index .Config.Labels "org.opencontainers.image.version" }}' "$image:$tag")
	[[ $label == "$version" ]] || die "the image's version label is \"$label\", not $version"
	log "docker save $image:$tag -> $dist/tokenkeeper-image-$version-linux-amd64.tar.gz"
	docker save "$image:$tag" | gzip -n >"$dist/tokenkeeper-image-$version-linux-amd64.tar.gz"
fi

log "checksums -> $dist/SHA256SUMS"
files=(tokenkeeper-"$version"-linux-amd64 tokenkeeper-"$version"-linux-arm64)
((with_image)) && files+=(tokenkeeper-image-"$version"-linux-amd64.tar.gz)
(cd "$dist" && sha256sum "${files[@]}" >SHA256SUMS)
cat "$dist/SHA256SUMS" >&2

log "done: $dist/ holds $version; verify with (cd $dist && sha256sum -c SHA256SUMS)"
if [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
	cat >&2 <<EOF
    To publish (nothing above did):
      git tag v$version && git push origin v$version
      docker push $image:$tag
    A multi-architecture image needs BuildKit and a registry:
      docker buildx build --platform linux/amd64,linux/arm64 --build-arg VERSION=$version \\
        --build-arg COMMIT=$commit --build-arg CREATED=$created -t $image:$tag --push .
EOF
fi
