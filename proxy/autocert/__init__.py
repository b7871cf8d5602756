"""Certificates from an ACME CA (Let's Encrypt, ZeroSSL, a private CA, pebble).

For every host clawgate serves, :class:`Autocert` obtains a certificate through the
TLS-ALPN-01 or HTTP-01 challenge, keeps it in the state directory, serves it through
an SNI callback on the main TLS context and renews it before it expires. Hosts it
cannot get a certificate for (wildcards, IP addresses, single-label names) keep the
self-signed fallback; :func:`refused_hosts` says why. Several processes may share one
state directory: one of them orders, the others wait and load the result, and every
one answers the CA's challenges.

Wiring (see each method): ``install(ssl_context)`` on the main listener's context,
``http01(token)`` behind ``GET /.well-known/acme-challenge/{token}`` on the plain-HTTP
listener, ``run(hosts, wake)`` as a task, ``wake.set()`` after a reload.
"""

from proxy.autocert._config import (
    LETS_ENCRYPT,
    LETS_ENCRYPT_STAGING,
    AutocertConfig,
    AutocertError,
    refused_hosts,
)
from proxy.autocert._manager import Autocert, HostStatus, StoreLock

__all__ = [
    "LETS_ENCRYPT",
    "LETS_ENCRYPT_STAGING",
    "Autocert",
    "AutocertConfig",
    "AutocertError",
    "HostStatus",
    "StoreLock",
    "refused_hosts",
]
