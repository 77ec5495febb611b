#!/bin/sh
# The container's entry point.
#   serve (default)  the match service on the data volume ($REFRAIN_INDEX_DIR, default /data/index),
#                    listening on $REFRAIN_HOST (default 0.0.0.0) and $REFRAIN_PORT (default 8000)
#   warm-up          compile numba's kernels into $NUMBA_CACHE_DIR (the image build runs it, so that
#                    a container's warm-up only loads them)
#   anything else    a refrain command, e.g. `keys create --role admin --principal ops` or `tracks list --index ...`
set -eu
export REFRAIN_INDEX_DIR="${REFRAIN_INDEX_DIR:-/data/index}"
command="${1:-serve}"
[ "$#" -gt 0 ] && shift
case "$command" in
    serve)
        exec refrain serve --index "$REFRAIN_INDEX_DIR" --host "${REFRAIN_HOST:-0.0.0.0}" "$@"
        ;;
    warm-up)
        exec python - <<'PYTHON'
import tempfile
from pathlib import Path

from refrain.api import Refrain

with tempfile.TemporaryDirectory() as scratch, Refrain.open(Path(scratch) / "index", create=True) as refrain:
    refrain.warm_up()
print("numba kernels compiled and cached")
PYTHON
        ;;
    *)
        exec refrain "$command" "$@"
        ;;
esac
