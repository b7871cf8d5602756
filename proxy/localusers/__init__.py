"""Local users: names and bcrypt password hashes in an Apache ``.htpasswd`` file, for
sign-in without an identity provider (a lab, a break-glass account).

Public surface:

- :func:`load_htpasswd`: the file's users by name, or :class:`PasswordFileError` naming
  ``path:LINE``, the user and what is wrong, for every defect at once. bcrypt only
  (``$2y$``, ``$2b$``, ``$2a$``, cost 10..15); weaker hashes are refused, with how to
  re-create the entry (``htpasswd -B -C 12`` or ``clawgate passwd add``).
- :func:`save_htpasswd`: write users back, atomically and 0600, in the ``$2y$`` form
  ``htpasswd -B`` writes, so Apache and nginx read the same file.
- :func:`hash_password`: a new bcrypt hash for the file.
- :class:`LocalUser`: a name and its hash; ``subject`` is ``local:<name>``, ``email``
  the name when it is an address.
- :class:`Verifier`: checks a name and password in one bcrypt run, known user or not,
  so timing does not tell which names exist. Blocking: run it in a thread.
- :class:`Throttle`: growing delays after failed attempts, per IP and per user.

``clawgate passwd`` (proxy/cli_passwd.py) edits the file.
"""

from proxy.localusers._file import (
    LocalUser,
    PasswordFileError,
    hash_password,
    load_htpasswd,
    save_htpasswd,
)
from proxy.localusers._throttle import Throttle
from proxy.localusers._verify import Verifier

__all__ = [
    "LocalUser",
    "PasswordFileError",
    "Throttle",
    "Verifier",
    "hash_password",
    "load_htpasswd",
    "save_htpasswd",
]
