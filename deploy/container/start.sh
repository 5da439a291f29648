#!/bin/sh
# The container's command: a one-node Ray, Serve's proxy on 0.0.0.0:$PORT, and the app (serve run) on $MODEL_DIR.
set -e
ray start --head --disable-usage-stats --include-dashboard=false --num-cpus="${NUM_CPUS:-$(nproc)}" >/dev/null
serve start --http-host 0.0.0.0 --http-port "${PORT}" >/dev/null
exec serve run --address auto serve_app:app model_dir="${MODEL_DIR}" quantize="${QUANTIZE:-false}" ${RUNTIME:+runtime="$RUNTIME"}
