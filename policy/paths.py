"""Request path normalization, done once before routing and policy.

Routes and ``http_path`` criteria compare strings, so every request path is first brought to one
canonical spelling. The same normalized path must then be what is forwarded upstream, so the
policy and the upstream application always see the same resource. Anything whose meaning could
differ between us and the upstream (encoded slashes, backslashes, control characters, broken
escapes) is refused instead of guessed at.

Rules, in order:

1. The path must start with ``/`` and contain only printable ASCII. A raw backslash, space,
   ``?`` or ``#`` is refused; ``"<>[]^`{|}`` are percent-encoded.
2. Every ``%XX`` escape must have two hex digits. Escapes of unreserved characters
   (``A-Z a-z 0-9 - . _ ~``) are decoded; all other escapes are kept, with upper-case hex.
   ``%2F`` (slash), ``%5C`` (backslash), ``%00``-``%1F`` and ``%7F`` are refused.
3. Empty segments are dropped (``//a///b`` -> ``/a/b``), ``.`` segments are removed and ``..``
   removes the previous segment; ``..`` above the root is refused. A segment that is ``.`` or
   ``..`` followed by ``;`` parameters (``..;x``) is refused because some servers treat it as
   ``..``.
4. A trailing slash is kept, and a path ending in a ``.`` or ``..`` segment ends with ``/``.

Case is preserved: ``/Admin`` and ``/admin`` are different paths.
"""

from __future__ import annotations

__all__ = ["UnsafePathError", "normalize_path"]


class UnsafePathError(ValueError):
    """The raw path cannot be normalized without guessing; the request gets a 400."""


_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters RFC 3986 allows raw in a path besides unreserved ones (sub-delims, ":", "@").
_RAW_OK = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
# Printable characters that are not allowed raw but carry no path meaning; some clients send
# them unescaped, so they are escaped rather than refused.
_ESCAPE = frozenset('"<>[]^`{|}')
_FORBIDDEN_DECODED = frozenset(range(0x20)) | {0x7F, ord("/"), ord("\\")}


def _decode(raw: str) -> str:
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        ch = raw[i]
        if ch == "%":
            hex2 = raw[i + 1 : i + 3]
            if len(hex2) != 2 or not (hex2[0] in _HEX and hex2[1] in _HEX):
                raise UnsafePathError(f"invalid percent-escape at offset {i}")
            byte = int(hex2, 16)
            if byte in _FORBIDDEN_DECODED:
                raise UnsafePathError(f"forbidden escaped character %{hex2.upper()}")
            decoded = chr(byte)
            out.append(decoded if decoded in _UNRESERVED else "%" + hex2.upper())
            i += 3
            continue
        if ch in _RAW_OK:
            out.append(ch)
        elif ch in _ESCAPE:
            out.append(f"%{ord(ch):02X}")
        elif ch == "\\":
            raise UnsafePathError("backslash in path")
        else:
            raise UnsafePathError(f"character {ch!r} not allowed in a path")
        i += 1
    return "".join(out)


def normalize_path(raw: str) -> str:
    """Return the canonical form of a raw (still percent-encoded, query-less) request path.

    Raises :class:`UnsafePathError` when the path cannot be normalized safely. The function is
    idempotent: ``normalize_path(normalize_path(p)) == normalize_path(p)``.
    """
    if not raw.startswith("/"):
        raise UnsafePathError("path must start with '/'")
    decoded = _decode(raw)
    parts = decoded.split("/")
    stack: list[str] = []
    trailing = False
    for seg in parts[1:]:
        trailing = False
        if seg == "":
            trailing = True
            continue
        if seg == ".":
            trailing = True
            continue
        if seg == "..":
            if not stack:
                raise UnsafePathError("'..' above the root")
            stack.pop()
            trailing = True
            continue
        if seg.split(";", 1)[0] in (".", ".."):
            raise UnsafePathError("dot segment with parameters")
        stack.append(seg)
    if not stack:
        return "/"
    return "/" + "/".join(stack) + ("/" if trailing else "")
