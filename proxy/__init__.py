"""clawgate: the server half (listeners, sign-in, sessions, forwarding)."""
