"""``clawgate policy explain`` and ``clawgate policy test``."""

from __future__ import annotations

import argparse
from typing import Any


def add_policy_commands(sub: Any) -> None:
    """Filled in by the policy CLI; kept separate so ``cli.py`` stays small."""
    p = sub.add_parser("policy", help="explain or test policy decisions")
    p.set_defaults(func=lambda args: _todo(args))


def _todo(args: argparse.Namespace) -> int:
    print("clawgate policy: not available yet")
    return 2
