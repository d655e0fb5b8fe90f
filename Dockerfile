# Multi-stage build: compile with the full toolchain, ship a small non-root image.
# docker build -t access-bot .   (the production image leaves the sandbox out)
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake perl && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY templates templates
COPY bot.toml bot.toml
RUN cargo build --release --locked --no-default-features --bin access-bot

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/access-bot --create-home access-bot
COPY --from=build /src/target/release/access-bot /usr/local/bin/access-bot
COPY templates /etc/access-bot/templates
COPY bot.toml /etc/access-bot/bot.toml
USER access-bot
WORKDIR /var/lib/access-bot
EXPOSE 8080
# Secrets come from the environment (see bot.toml); the state database lives in the working directory.
ENTRYPOINT ["access-bot", "--config", "/etc/access-bot/bot.toml", "--log-format", "json"]
CMD ["run"]
