"""The Prometheus exporter: an unprivileged client of the daemon's `stats` op."""

# Loopback only unless told otherwise: the client library's own default is 0.0.0.0.
DEFAULT_LISTEN = "127.0.0.1:9745"
