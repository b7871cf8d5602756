"""The SSH door: ``ssh LOGIN@ROUTE@clawgate`` signs in through the browser, then relays.

Users reach an upstream sshd through clawgate: their own key proves who is at the
keyboard, a browser approval (through the integrator's `Gate`) decides whether they
may, and clawgate logs in upstream with a short-lived certificate from its User CA.
See proxy/ssh/_door.py for the sign-in, step by step.
"""

from proxy.ssh._ca import CERT_LIFETIME, CLOCK_SKEW, CertExtensions, UserCA, init_ca
from proxy.ssh._door import SshDoor, split_username
from proxy.ssh._hostkeys import read_host_key
from proxy.ssh._types import (
    Attempt,
    Gate,
    Grant,
    Refusal,
    SshConnection,
    SshRoute,
    SshSetupError,
    SshStats,
)

__all__ = [
    "CERT_LIFETIME",
    "CLOCK_SKEW",
    "Attempt",
    "CertExtensions",
    "Gate",
    "Grant",
    "Refusal",
    "SshConnection",
    "SshDoor",
    "SshRoute",
    "SshSetupError",
    "SshStats",
    "UserCA",
    "init_ca",
    "read_host_key",
    "split_username",
]
