"""The TLS context a worker verifies the API with (and presents its client certificate from).

Built once per worker process from the settings (`OAKSEND_CA_BUNDLE`, `OAKSEND_TLS_TRUST`,
`OAKSEND_CLIENT_CERT`, `OAKSEND_CLIENT_KEY`) and handed to httpx as its `verify`.
"""

from __future__ import annotations

import os
import ssl
from typing import Literal

from oaksend.errors import ConfigError

__all__ = ["TlsTrust", "tls_context"]

TlsTrust = Literal["certifi", "system"]


def tls_context(*, ca_bundle: str | None = None, trust: TlsTrust = "certifi", client_cert: str | None = None,
                client_key: str | None = None) -> ssl.SSLContext:
    """The context; ConfigError (naming the file's role, never a key's content) when unusable.

    - `ca_bundle` (PEM certificates): the only trust anchors, whatever else is set;
    - else `trust` "system": the operating system's store (`ssl.create_default_context()`);
    - else "certifi", what httpx trusts with `trust_env`: the SSL_CERT_FILE or SSL_CERT_DIR
      of the environment when set, else certifi's bundle.
    """
    if trust not in ("certifi", "system"):
        raise ConfigError(f"TLS trust must be 'certifi' or 'system', not {trust!r}")
    try:
        if ca_bundle:
            context = ssl.create_default_context(cafile=ca_bundle)
        elif trust == "system":
            context = ssl.create_default_context()
        elif os.environ.get("SSL_CERT_FILE"):
            context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        elif os.environ.get("SSL_CERT_DIR"):
            context = ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
        else:
            import certifi

            context = ssl.create_default_context(cafile=certifi.where())
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"the CA certificates cannot be loaded ({type(exc).__name__}: {exc})") from None
    if client_key and not client_cert:
        raise ConfigError("a client key needs its client certificate")
    if client_cert:
        try:
            context.load_cert_chain(client_cert, client_key or None)
        except (OSError, ssl.SSLError) as exc:  # never the key's content: OpenSSL names the problem
            raise ConfigError(f"the client certificate or key cannot be loaded ({type(exc).__name__})") from None
    return context
