#!/usr/bin/env bash
# Builds the local test platform's tools from the Go module proxy and Maven Central into a cache outside
# the repository: ${MLINFRA_CACHE:-~/.cache/mlinfra}/bin/<tool>-<version>. A tool is rebuilt only when its
# pinned version or its wrapper module changes (the key includes a hash of the wrapper's go.mod/go.sum or
# pom.xml), so a warm run takes seconds. Nothing built here is ever committed.
#
# Usage: e2e/tools/build.sh [kube|etcd|kwok|helm|neo4j|coredns|minio ...]   (no argument: all of them)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${MLINFRA_CACHE:-$HOME/.cache/mlinfra}
bin=$cache/bin
mkdir -p "$bin" "$cache/logs"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# key DIR FILES... -> short content hash of a wrapper's pinned inputs
key() {
  local dir=$1; shift
  local f
  (cd "$dir" && for f in "$@"; do [ ! -f "$f" ] || cat "$f"; done) | sha256sum | cut -c1-10
}

# Runs a command that prints one line per compiled package (go build -v), showing a heartbeat with the
# number of packages compiled so far instead of thousands of lines.
with_progress() {
  local name=$1 logf=$2; shift 2
  "$@" >"$logf" 2>&1 &
  local pid=$! start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null || break
    log "$name: still building, $(( SECONDS - start ))s elapsed, $(wc -l <"$logf") packages compiled"
  done
  if ! wait "$pid"; then
    log "$name: FAILED after $(( SECONDS - start ))s; last lines of $logf:"
    tail -n 30 "$logf" >&2
    return 1
  fi
  log "$name: done in $(( SECONDS - start ))s"
}

# build_go NAME VERSION LDFLAGS PKG:BINARY...
build_go() {
  local name=$1 version=$2 ldflags=$3; shift 3
  local dir=$here/$name k stamp missing=0 spec
  k=$(key "$dir" go.mod go.sum main.go)
  stamp=$bin/.$name-$version-$k
  for spec in "$@"; do [ -x "$bin/${spec#*:}-$version" ] || missing=1; done
  if [ -f "$stamp" ] && [ $missing = 0 ]; then
    log "$name $version: cached"
    return 0
  fi
  log "$name $version: building $(printf '%s ' "${@#*:}")(cold builds take minutes on 2 cores)"
  local out; out=$(mktemp -d "$cache/tmp.$name.XXXXXX")
  local pkgs=()
  for spec in "$@"; do pkgs+=("${spec%%:*}"); done
  (cd "$dir" && with_progress "$name" "$cache/logs/$name.log" \
    go build -v -trimpath -ldflags "-s -w $ldflags" -o "$out/" "${pkgs[@]}")
  for spec in "$@"; do
    local pkg=${spec%%:*} b=${spec#*:} produced
    # go names a binary after the package path's last element, skipping a major-version suffix (/v3).
    produced=$(basename "$pkg")
    [[ $produced =~ ^v[0-9]+$ ]] && produced=$(basename "$(dirname "$pkg")")
    mv "$out/$produced" "$bin/$b-$version"
  done
  rm -rf "$out"
  rm -f "$bin/.$name-$version-"*
  touch "$stamp"
}

# Version stamps: without them /version reports v0.0.0-master and Helm's kubeVersion checks break.
version_ldflags() {
  local v=$1 major minor flags=""
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    flags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  printf '%s' "$flags"
}

build_kube() {
  build_go kube "$KUBERNETES_VERSION" "$(version_ldflags "$KUBERNETES_VERSION")" \
    k8s.io/kubernetes/cmd/kube-apiserver:kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager:kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler:kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl:kubectl \
    k8s.io/kubernetes/cmd/kubelet:kubelet \
    k8s.io/kubernetes/cmd/kube-proxy:kube-proxy
}

build_etcd() {
  build_go etcd "$ETCD_VERSION" "-X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" \
    go.etcd.io/etcd/server/v3:etcd
}

build_kwok() {
  build_go kwok "$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    sigs.k8s.io/kwok/cmd/kwok:kwok
  # kwok >= 0.8 refuses to start without Stage definitions; they ship inside its module.
  local stages=$bin/kwok-stages-$KWOK_VERSION.yaml
  if [ ! -s "$stages" ]; then
    local src
    src=$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
    {
      for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
               volume/fast/pv-bind.yaml volume/fast/pv-delete.yaml volume/fast/pvc-provision.yaml volume/fast/pvc-delete.yaml \
               pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
        printf -- '---\n'; cat "$src/kustomize/stage/$f"
      done
    } >"$stages.tmp"
    mv "$stages.tmp" "$stages"
    log "kwok stages: written to $stages"
  fi
}

build_helm() {
  build_go helm "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    helm.sh/helm/v3/cmd/helm:helm
}

# CoreDNS for the real node's cluster DNS: a main of our own (e2e/tools/coredns) linking only the plugins used.
build_coredns() {
  build_go coredns "$COREDNS_VERSION" "-X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" \
    mlinfra.io/e2e/tools/coredns:coredns
}

# MinIO, the S3 server the backup tests write to. It publishes no tagged module versions, so the pin is a
# pseudo-version of its main branch; without version stamps it reports DEVELOPMENT.GOGET, which it accepts.
build_minio() {
  build_go minio "$MINIO_VERSION" "" github.com/minio/minio:minio
}

build_neo4j() {
  local dir=$here/neo4j k stamp jar
  k=$(key "$dir" pom.xml src/main/java/io/mlinfra/e2e/Neo4jServer.java)
  stamp=$cache/neo4j-$NEO4J_VERSION-$k
  if [ -f "$stamp/classpath" ]; then
    log "neo4j $NEO4J_VERSION: cached"
    return 0
  fi
  log "neo4j $NEO4J_VERSION: building the embedded server with Maven (first run downloads ~150 MB of jars)"
  rm -rf "$cache/neo4j-$NEO4J_VERSION-"*
  mkdir -p "$stamp"
  (cd "$dir" && mvn -q -B -Dneo4j.version="$NEO4J_VERSION" ${MAVEN_REPO_LOCAL:+-Dmaven.repo.local="$MAVEN_REPO_LOCAL"} \
      -DbuildDir="$stamp/target" compile dependency:copy-dependencies \
      -DoutputDirectory="$stamp/target/dependency" >"$cache/logs/neo4j.log" 2>&1) || {
    log "neo4j: FAILED; last lines of $cache/logs/neo4j.log:"; tail -n 30 "$cache/logs/neo4j.log" >&2
    rm -rf "$stamp"; return 1; }
  jar=$stamp/target/classes:$stamp/target/dependency/*
  printf '%s\n' "$jar" >"$stamp/classpath"
  log "neo4j $NEO4J_VERSION: done"
}

tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(etcd kwok helm neo4j kube coredns minio)
for t in "${tools[@]}"; do
  "build_$t"
done
log "all requested tools are in $bin"
