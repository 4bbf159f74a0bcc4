"""The app-facing listener: guards, forwarding, the local token endpoint."""
