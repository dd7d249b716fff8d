# TEST ONLY: a stand-in for python:3.11-slim-bookworm where no image registry can be reached.
# scripts/docker-e2e builds it on a Debian bookworm root file system it makes with debootstrap and imports;
# docker/Dockerfile then builds on it with --build-arg PYTHON_IMAGE=<this image>. Production images keep
# the default base. The build context is a folder the script fills: host-ca.crt (the CA bundle this
# machine trusts, so pip can verify the package index through this network's proxy) and pip.conf (the
# host's index settings).
ARG ROOTFS
FROM ${ROOTFS}

ARG DEBIAN_FRONTEND=noninteractive
ENV LANG=C.UTF-8

# ca-certificates' own setup (and every later run of update-ca-certificates) adds the host's CAs to
# /etc/ssl/certs/ca-certificates.crt, because they lie in /usr/local/share/ca-certificates first.
COPY host-ca.crt /usr/local/share/ca-certificates/host-ca.crt
COPY pip.conf /etc/pip.conf

# python3.11 from Debian and a virtual environment on PATH, as the official image's `python` and `pip`.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python \
    && /opt/python/bin/python -c "import ssl, sys; assert sys.version_info[:2] == (3, 11), sys.version"

# An imported file system comes without an environment: the whole PATH, as Debian's images set it.
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

CMD ["python3"]
