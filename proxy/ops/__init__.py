"""Operating the proxy: admin page, metrics, access log, logging setup."""
