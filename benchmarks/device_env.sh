# Sourced by the scripts run on a lent GPU machine (device.sh, gpu.sh): atlasreg importable there.
# The machine has PyTorch but no package registry: nibabel travels as a wheel in .whl/ (and any
# other missing package), atlasreg's entry points in atlasreg.egg-info. First: --help prints the
# script's header comment; then the settings both scripts share (OUT must be set).
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^[^#]/s/^# \{0,1\}\(.*\)$/\1/p' "$0" | grep -v '^#!'
    exit 0
fi
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
if ! python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . >/dev/null 2>&1; then
    # no build backend there: the source tree itself, with this checkout's metadata (entry points)
    mkdir -p /tmp/src && ln -sfn "$PWD/plugins" /tmp/src/atlasreg_plugins && cp -r atlasreg.egg-info /tmp/src/ || exit 1
    export PYTHONPATH=/tmp/site:$PWD:/tmp/src
fi
python3 -c "import atlasreg; print([b.name for b in atlasreg.backends() if b.available])" || exit 1
{ nvidia-smi -L; python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"; } | tee "$OUT/env.txt"
