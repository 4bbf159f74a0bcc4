"""Per-tenant state: credential records, tokens, and the policies over them."""
