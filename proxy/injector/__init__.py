"""The sidecar injector: a mutating admission webhook that adds the proxy to annotated pods.

sidecar.py   what gets added (container, volumes) and the JSON Patch that adds it
webhook.py   AdmissionReview v1 handling, the aiohttp app, the reloading TLS certificate
command.py   `genesys-token-proxy inject`: flags, settings and the TLS listener
"""
