"""autocert in a running clawgate: the settings turned into an ACME client
(proxy/autocert/), the hosts it keeps certificates for, and their expiry as metrics.

The TLS listener's context serves each host's ACME certificate through SNI once one is
held (``Autocert.install``); until then, and for any name without one, it serves the
certificate it started with (certificate_file, else self-signed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import structlog

from proxy import metrics
from proxy.autocert import (
    LETS_ENCRYPT,
    LETS_ENCRYPT_STAGING,
    Autocert,
    AutocertConfig,
)
from proxy.runtime import Runtime
from proxy.settings import Settings
from proxy.snapshot import Snapshot, side_file

log = structlog.get_logger("clawgate.autocert")

_METRICS_EVERY = 30.0


def autocert_config(settings: Settings, source: str) -> AutocertConfig:
    """What the ``autocert_*`` keys ask for (paths relative to the config file)."""
    if settings.autocert_ca is not None:
        directory = settings.autocert_ca
    else:
        directory = LETS_ENCRYPT_STAGING if settings.autocert_use_staging else LETS_ENCRYPT
    state = side_file(source, settings.autocert_path())
    assert state is not None
    mac = settings.autocert_eab_mac_key
    return AutocertConfig(
        directory_url=directory,
        state_dir=state,
        email=settings.autocert_email,
        trusted_ca=side_file(source, settings.autocert_trusted_ca),
        eab_key_id=settings.autocert_eab_key_id,
        eab_mac_key=mac.get_secret_value() if mac is not None else None,
        # HTTP-01 needs the plain-HTTP listener (port 80 as the CA sees it).
        http01=settings.http_redirect_addr is not None,
        tls_alpn01=True,
    )


def autocert_hosts(snapshot: Snapshot) -> list[str]:
    """Every route host (the ACME client refuses, with a log line, what it cannot do)."""
    return sorted({route.matcher.host for route in snapshot.routes if route.matcher.host})


def start_autocert(runtime: Runtime, context: ssl.SSLContext) -> Autocert:
    settings = runtime.snapshot.settings
    config = autocert_config(settings, runtime.snapshot.source)
    # Workers share autocert_dir (its file locks); replicas also share the store's lock.
    autocert = Autocert(config, lock=runtime.store.lock)
    autocert.install(context)
    log.info(
        "autocert_enabled",
        directory=config.directory_url,
        state_dir=str(config.state_dir),
        hosts=autocert_hosts(runtime.snapshot),
        challenges=[
            name
            for name, on in (("tls-alpn-01", config.tls_alpn01), ("http-01", config.http01))
            if on
        ],
    )
    return autocert


async def report_expiry(autocert: Autocert, every: float = _METRICS_EVERY) -> None:
    """``clawgate_certificate_expiry_seconds`` and ``clawgate_autocert_failing`` by
    host, kept current."""
    while True:
        now = dt.datetime.now(dt.UTC)
        for status in autocert.status():
            failing = 1 if status.last_error is not None else 0
            metrics.AUTOCERT_FAILING.labels(host=status.host).set(failing)
            if status.not_after is not None:
                left = (status.not_after - now).total_seconds()
                metrics.CERTIFICATE_EXPIRY.labels(host=status.host).set(left)
        await asyncio.sleep(every)
