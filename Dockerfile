# The tagstream image: `tagstream worker` (default) and `tagstream api`, both configured only
# through TAGSTREAM_* environment variables (streams/platform/settings.py). Used by docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies first, in their own layer, so a code change does not reinstall them: install the
# project with empty packages, then drop it and keep its dependencies.
COPY pyproject.toml README.md ./
RUN mkdir schemas taggers streams \
    && touch schemas/__init__.py taggers/__init__.py streams/__init__.py \
    && pip install . \
    && pip uninstall -y tagstream \
    && rm -rf schemas taggers streams build *.egg-info

COPY schemas ./schemas
COPY taggers ./taggers
COPY streams ./streams
RUN pip install --no-deps . && rm -rf build *.egg-info

# The engine's hot modules compiled with mypyc into the installed package (taggers/compiled.py);
# the compiler leaves the image once they are built.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && python -m streams.tools.engine_build \
    && python -c 'import sys, taggers; sys.exit(taggers.ENGINE_BUILD != "mypyc")' \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

# Not root; a home for Faust's local table state (TAGSTREAM_DATA_DIR).
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/tagstream tagstream
USER tagstream
WORKDIR /var/lib/tagstream

CMD ["tagstream", "worker"]
