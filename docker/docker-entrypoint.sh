#!/usr/bin/env bash
# Starts what SERVICE and MODE say: the schema upgrade, then the consumers.
# With arguments, runs them instead (e.g. `docker compose run --rm worker image-grouping report`).
set -euo pipefail

if [ "$#" -gt 0 ]; then
  exec "$@"
fi

: "${SERVICE:=recognition}" "${MODE:=oneshot}" "${DRY_RUN:=false}"
# Set but empty means "no options": only an unset RECOGNIZER_ARGS takes the default.
: "${RECOGNIZER_ARGS=--recluster}"

consume_args=(--service "$SERVICE" --mode "$MODE")
# RECOGNIZER_ARGS is a list of options, as in the original service: split it on purpose.
read -r -a recognizer_args <<< "$RECOGNIZER_ARGS"
consume_args+=("${recognizer_args[@]}")

case "${DRY_RUN,,}" in
  1 | true | yes | on)
    consume_args+=(--dry-run)
    echo "DRY_RUN: the schema is left as it is; nothing is written or published" >&2
    ;;
  *)
    image-grouping migrate
    ;;
esac

exec image-grouping consume "${consume_args[@]}"
