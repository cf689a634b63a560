# atlasreg on the CPU: `docker build -t atlasreg .`, then
#   docker run --rm -v "$PWD":/data atlasreg segment /data/scan.nii.gz -o /data/scan_seg.nii.gz
# (GPU: Dockerfile.cuda). CPU wheels of torch from PyTorch's own index: pip's default index would
# give Linux the CUDA build, several GB that a CPU never uses.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    ATLASREG_CACHE=/opt/atlasreg-cache

RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY . /tmp/atlasreg
# then the built-in atlas built once, into a cache every user of the image can read
RUN pip install "/tmp/atlasreg[all]" && rm -rf /tmp/atlasreg \
    && python -c "from atlasreg.atlases import load_atlas; load_atlas()" && chmod -R a+rX "$ATLASREG_CACHE"

WORKDIR /data
ENTRYPOINT ["atlasreg"]
CMD ["--help"]
