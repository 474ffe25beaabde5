#!/usr/bin/env bash
# Copies the CRDs from crds/ (the source of truth) into the Helm chart's crds/ folder,
# removing chart copies whose source is gone. With --check it only reports drift and
# exits 1, for CI.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${repo}/crds"
dst="${repo}/charts/webhook-operator/crds"

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

shopt -s nullglob
sources=("${src}"/*.yaml)
if [ "${#sources[@]}" -eq 0 ]; then
  echo "no CRDs found in ${src}" >&2
  exit 1
fi

drift=0
mkdir -p "${dst}"
for file in "${sources[@]}"; do
  target="${dst}/$(basename "${file}")"
  if ! cmp -s "${file}" "${target}"; then
    drift=1
    if "${check}"; then
      echo "out of date: ${target#"${repo}"/}" >&2
    else
      cp "${file}" "${target}"
      echo "copied ${file#"${repo}"/} -> ${target#"${repo}"/}"
    fi
  fi
done
for target in "${dst}"/*.yaml; do
  if [ ! -e "${src}/$(basename "${target}")" ]; then
    drift=1
    if "${check}"; then
      echo "stale: ${target#"${repo}"/} has no source in crds/" >&2
    else
      rm "${target}"
      echo "removed ${target#"${repo}"/}"
    fi
  fi
done

if "${check}" && [ "${drift}" -ne 0 ]; then
  echo "run scripts/sync-chart-crds.sh to update the chart's CRDs" >&2
  exit 1
fi
