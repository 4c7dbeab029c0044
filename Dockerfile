# batch-agent as a container (sidecar beside a workload). README: "Container sidecar".
#
#   docker build -t batch-agent .
#   docker run -d --name batch-agent \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /mnt/batch:/mnt/batch \
#     -v /etc/batch-agent:/etc/batch-agent:ro \
#     -p 127.0.0.1:8080:8080 batch-agent
#
# BASE: any Debian-like image with Python >= 3.11 and its venv module. Offline tests build
# FROM the debootstrapped localtest/debian-systemd:bookworm (scripts/images.sh) with
# --build-arg BASE=..., since no public image can be pulled there.
#
# Runs as ROOT, on purpose: native tasks run inside this container as other users (auto-user
# accounts made with useradd, a uid switch per task, a cgroup per attempt), which needs root.
# A non-root agent would gain nothing against the host either: whoever holds the mounted
# docker.sock controls the host engine, and so the host. Container-only nodes can tighten
# it at run time (cap_drop / cap_add in compose.yaml); the image does not pretend otherwise.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV VIRTUAL_ENV=/opt/batch-agent \
    PATH=/opt/batch-agent/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BATCH_AGENT_PORT=8080

# Dependencies first, from pyproject.toml alone (a placeholder package), so that a change to
# the agent's code reuses this layer instead of downloading every dependency again.
# Offline builds put wheels (the dependencies and setuptools) at the context's top level and
# pass --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src (tests/infra.py does).
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
COPY pyproject.toml README.md *.whl /src/
RUN python3 -m venv /opt/batch-agent \
 && mkdir /src/agent && touch /src/agent/__init__.py \
 && /opt/batch-agent/bin/pip install --no-cache-dir /src \
 && /opt/batch-agent/bin/pip uninstall -y batch-agent \
 && rm -rf /src

COPY pyproject.toml README.md *.whl /src/
COPY agent /src/agent
RUN /opt/batch-agent/bin/pip install --no-cache-dir --no-deps /src \
 && rm -rf /src \
 && batch-agent --version

# The node root (tasks, state, supervisor) and the agent's config; mount both from the host,
# the node root at the SAME path as on the host so sibling containers' bind mounts resolve.
VOLUME ["/mnt/batch"]
EXPOSE 8080

# Any HTTP answer (an unsigned request gets 401) means the API is up; no answer means it is not.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-I", "-c", "import os,sys,urllib.request as u,urllib.error as e\ntry: u.urlopen('http://127.0.0.1:%s/' % os.environ.get('BATCH_AGENT_PORT', '8080'), timeout=4)\nexcept e.HTTPError: pass\nexcept Exception: sys.exit(1)"]

# SIGTERM stops the agent only; the task supervisor keeps the tasks and their exit codes for
# the next agent (a restarted container). The ENTRYPOINT is the command, so
# `docker run IMAGE run task.json` and `docker run IMAGE --version` work too.
STOPSIGNAL SIGTERM
ENTRYPOINT ["batch-agent"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
