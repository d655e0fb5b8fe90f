# Multi-stage build: compile with the full toolchain, ship a small non-root image.
#   docker build -t access-bot .        (the production image leaves the sandbox out)
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake perl && rm -rf /var/lib/apt/lists/*
# Dependencies first, against stub sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/bench.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --no-default-features --bin access-bot \
    && rm -rf src
COPY src src
COPY templates templates
COPY bot.toml bot.toml
# Newer than the stub build, so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --no-default-features --bin access-bot

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/access-bot --create-home access-bot
COPY --from=build /src/target/release/access-bot /usr/local/bin/access-bot
# bot.toml says `templates_dir = "templates"`, taken from the configuration
# file's folder: /etc/access-bot/templates. Mount your own bot.toml over it
# (Kubernetes: a ConfigMap) and keep the templates beside it, or name an
# absolute templates_dir.
COPY templates /etc/access-bot/templates
COPY bot.toml /etc/access-bot/bot.toml
ENV ACCESS_BOT_CONFIG=/etc/access-bot/bot.toml \
    ACCESS_BOT_OPS_LISTEN=0.0.0.0:9090
# Numeric, so that Kubernetes can verify runAsNonRoot.
USER 10001:10001
# The state database (state_db = "access-bot.db") lives in the working directory: mount a volume here.
WORKDIR /var/lib/access-bot
# 8080: the webhook ([webhook] listen), 9090: /healthz, /readyz, /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["access-bot", "--log-format", "json"]
CMD ["run"]
