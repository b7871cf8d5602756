"""clawgate policy: route matching and the allow-list language. Pure; no I/O, no aiohttp."""
