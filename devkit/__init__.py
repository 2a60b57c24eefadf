"""Developer tooling around the product: a local Kafka broker, the synthetic event
generator and the end-to-end demo. Nothing in `streams/`, `sinks/` or `schemas/`
imports from here except the CLI, which exposes `generate` and `demo` as commands."""
