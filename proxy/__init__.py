"""genesys-token-proxy: a sidecar that injects per-tenant Genesys Cloud tokens."""

__version__ = "0.1.0"
