"""Response headers and request checks of the dashboard: a strict CSP with a nonce per response,
no caching of pages that show personal data, same-origin checks for every state-changing request,
and the session cookie's flags."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

__all__ = ["LOOPBACK", "cookie_flags", "cross_site", "csp", "new_nonce", "security_headers"]

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def csp(nonce: str) -> str:
    """Nothing runs but our own script carrying this response's nonce; no inline style, no framing."""
    return ("default-src 'none'; "
            f"script-src 'nonce-{nonce}'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def security_headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp(nonce),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


def cookie_flags(host: str | None, scheme: str, path: str) -> dict[str, Any]:
    """HttpOnly and SameSite=Lax always; Secure unless served over plain HTTP on loopback."""
    secure = scheme == "https" or (host or "") not in LOOPBACK
    return {"httponly": True, "samesite": "lax", "secure": secure, "path": path or "/"}


def cross_site(headers: Any, host_header: str | None) -> bool:
    """Whether a request comes from another site: the browser says so (Sec-Fetch-Site), or its
    Origin is not this server. Requests without either (old clients, curl) still need the CSRF token."""
    site = headers.get("sec-fetch-site")
    if site and site not in ("same-origin", "none"):
        return True
    origin = headers.get("origin")
    if origin == "null":
        return True
    # The host only: behind a TLS-terminating proxy the browser's scheme is not the one we see.
    return bool(origin) and urlsplit(origin).netloc != (host_header or "")
