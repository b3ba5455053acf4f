#!/usr/bin/env bash
# Fetch the S3A connector (infra/spark/s3a-connector.lock) into the jar cache, checking each
# jar's SHA-256. Idempotent: a jar already cached with the right checksum is not fetched again.
#   MUSIC_RECS_JARS_DIR  the cache (default ${XDG_CACHE_HOME:-~/.cache}/music_recs/jars)
#   MAVEN_REPO_URL       a Maven repository or mirror (default Maven Central)
set -euo pipefail
LOCK="$(cd "$(dirname "${BASH_SOURCE[0]}")/../spark" && pwd)/s3a-connector.lock"
DEST="${MUSIC_RECS_JARS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/music_recs/jars}"
REPO="${MAVEN_REPO_URL:-https://repo1.maven.org/maven2}"
mkdir -p "$DEST"

fetched=0
while IFS=$'\t' read -r group artifact version sum; do
  case "$group" in ''|'#'*) continue ;; esac
  jar="$artifact-$version.jar"
  if [ -f "$DEST/$jar" ] && [ "$(sha256sum "$DEST/$jar" | cut -c1-64)" = "$sum" ]; then
    continue
  fi
  url="$REPO/${group//.//}/$artifact/$version/$jar"
  if ! err=$(curl -fsSL --retry 3 --connect-timeout 20 -o "$DEST/$jar.part" "$url" 2>&1); then
    rm -f "$DEST/$jar.part"
    echo "setup: could not fetch $group:$artifact:$version, part of the S3A connector ($url: ${err##*curl: }); allow access to Maven Central, set MAVEN_REPO_URL to a mirror, or copy the jars listed in $LOCK into $DEST" >&2
    exit 1
  fi
  got=$(sha256sum "$DEST/$jar.part" | cut -c1-64)
  if [ "$got" != "$sum" ]; then
    rm -f "$DEST/$jar.part"
    echo "setup: $group:$artifact:$version from $url has SHA-256 $got, not the $sum pinned in $LOCK; not installed (a corrupt download or a tampered mirror)" >&2
    exit 1
  fi
  mv "$DEST/$jar.part" "$DEST/$jar"
  fetched=$((fetched + 1))
done < "$LOCK"
if [ "$fetched" -gt 0 ]; then echo "==> S3A connector: fetched $fetched jar(s) into $DEST"; else echo "==> S3A connector up to date ($DEST)"; fi
