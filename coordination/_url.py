"""URL parsing and typed options, shared by every backend."""

from __future__ import annotations

import os
import socket
import ssl
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from ._names import validate_identity, validate_name
from .exceptions import InvalidName, InvalidURL

__all__ = [
    "AUTH_OPTIONS",
    "COMMON_OPTIONS",
    "TLS_OPTIONS",
    "certificate_refusal",
    "client_certificate",
    "credentials",
    "Option",
    "ParsedURL",
    "default_identity",
    "parse_url",
    "resolve_options",
    "ssl_context",
    "tls_enabled",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Option:
    """One typed option a backend accepts in the URL query or as a keyword argument.

    ``type`` is ``int``, ``float``, ``bool`` or ``str``. ``minimum`` bounds numbers.
    ``secret`` options are never shown in ``repr()`` or error messages. ``check`` may
    reject a converted value by returning a message (or ``None`` to accept). An option
    with ``renamed_to`` is an old name kept for one release: its value goes to the new
    name, with a ``DeprecationWarning``.
    """

    type: type
    default: Any
    doc: str
    minimum: float | None = None
    secret: bool = False
    check: Callable[[Any], str | None] | None = None
    renamed_to: str | None = None


COMMON_OPTIONS: Mapping[str, Option] = {
    "ttl": Option(float, 10.0, "Session time to live in seconds.", minimum=0.1),
    "timeout": Option(float, 10.0, "Timeout of one backend request in seconds.", minimum=0.01),
    "identity": Option(
        str,
        None,
        "Holder identity recorded with locks and sessions (default: hostname:pid).",
        check=lambda v: _identity_problem(v),
    ),
}


TLS_OPTIONS: Mapping[str, Option] = {
    "tls": Option(bool, False, "Use TLS, verified with the system's CA certificates unless ``ca_file``."),
    "ca_file": Option(str, None, "PEM file of the CA certificates that verify the servers; turns TLS on."),
    "cert_file": Option(str, None, "PEM file of the client certificate; turns TLS on."),
    "key_file": Option(str, None, "PEM file of the client certificate's private key."),
    "server_name": Option(str, None, "Name the servers' certificates must carry (default: the host)."),
    "tls_verify": Option(bool, True, "Verify the server's certificate and host name."),
}
"""The TLS options, one set of names for every backend; each backend takes those it supports."""

AUTH_OPTIONS: Mapping[str, Option] = {
    "user": Option(str, None, "User name to authenticate as (also the URL's user part)."),
    "password": Option(str, None, "Password of ``user`` (also the URL's password part).", secret=True),
}
"""User and password, for the backends that authenticate users (see :func:`credentials`)."""


def credentials(url: ParsedURL, settings: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The user and password from the ``user``/``password`` options, else the URL's user
    part; InvalidURL for a password without a user."""
    user, password = settings["user"], settings["password"]
    if user is None:
        user = url.username
        if password is None:
            password = url.password
    if password is not None and user is None:
        raise InvalidURL("a password needs a user: give the 'user' option, or user:password@ in the URL")
    return user, password


def tls_enabled(settings: Mapping[str, Any]) -> bool:
    """Whether the TLS options turn TLS on: ``tls``, or a ``ca_file`` or ``cert_file``."""
    return bool(settings.get("tls") or settings.get("ca_file") or settings.get("cert_file"))


def ssl_context(settings: Mapping[str, Any]) -> ssl.SSLContext | None:
    """The client's TLS context from the :data:`TLS_OPTIONS` a backend takes (None: no TLS).

    It verifies the server's certificate against ``ca_file`` (else the system's CAs) and its
    host name, unless ``tls_verify`` is false, and presents ``cert_file``/``key_file``.
    InvalidURL names the option whose file cannot be used.
    """
    cert_file, key_file = settings.get("cert_file"), settings.get("key_file")
    if key_file and not cert_file:
        raise InvalidURL("option 'key_file' needs 'cert_file' too")
    if not tls_enabled(settings):
        return None
    try:
        context = ssl.create_default_context(cafile=settings.get("ca_file"))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidURL(f"option 'ca_file': cannot load {settings.get('ca_file')!r}: {exc}") from exc
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidURL(
                f"options 'cert_file', 'key_file': cannot load the client certificate: {exc}"
            ) from exc
    if not settings.get("tls_verify", True):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


_CERTIFICATE_ALERTS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",  # no client certificate (TLS 1.3)
        "TLSV1_ALERT_UNKNOWN_CA",  # signed by a CA the server does not trust
        "SSLV3_ALERT_BAD_CERTIFICATE",  # refused (TLS 1.2 also for none given)
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)
"""The TLS alerts (as OpenSSL names them when it receives one) by which a server refuses the
client's certificate. The client sends no other certificate, so each means the server refused
this one; the client's own refusal of the server's certificate is an SSLCertVerificationError
(``CERTIFICATE_VERIFY_FAILED``), which is not among them."""


def certificate_refusal(exc: BaseException) -> str | None:
    """If ``exc`` (or what it wraps: causes, contexts, aiohttp's ``os_error``) is the TLS alert
    by which the server refused the client certificate, what the alert said (``"its alert
    'certificate required' (TLSV13_ALERT_CERTIFICATE_REQUIRED)"``), for a PermissionDenied;
    else ``None`` (the error stays what it was, Unavailable as a rule)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        # getattr: aiohttp's ClientConnector*Error are SSLErrors without SSLError's attributes.
        reason = getattr(error, "reason", None) if isinstance(error, ssl.SSLError) else None
        if reason in _CERTIFICATE_ALERTS:
            said = str(reason).partition("_ALERT_")[2].lower().replace("_", " ")
            return f"its alert '{said}' ({reason})"
        wrapped = getattr(error, "os_error", None)
        pending += [error.__cause__, error.__context__]
        if isinstance(wrapped, BaseException):
            pending.append(wrapped)
    return None


def client_certificate(settings: Mapping[str, Any]) -> str:
    """Which client certificate the TLS options present, for the message of a refusal."""
    cert_file = settings.get("cert_file")
    return (
        f"the client certificate {cert_file!r}"
        if cert_file
        else "no client certificate: the 'cert_file' option is not set"
    )


def _identity_problem(value: str) -> str | None:
    try:
        validate_identity(value)
    except InvalidName as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class ParsedURL:
    """A coordination URL, split into its parts (no option is interpreted here)."""

    scheme: str
    hosts: tuple[tuple[str, int | None], ...]
    namespace: str
    query: Mapping[str, str] = field(default_factory=dict)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def host_strings(self, default_port: int) -> list[str]:
        """The hosts as ``host:port`` strings, filling in ``default_port``."""
        out = []
        for host, port in self.hosts:
            shown = f"[{host}]" if ":" in host else host
            out.append(f"{shown}:{port if port is not None else default_port}")
        return out


def parse_url(url: str) -> ParsedURL:
    """Split ``scheme://[user[:password]@]host[:port][,host[:port]...][/namespace][?query]``."""
    if not isinstance(url, str):
        raise InvalidURL(f"URL must be a str, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise InvalidURL(f"URL {_redact(url)!r} has no scheme; expected e.g. 'etcd://127.0.0.1:2379'")
    scheme = scheme.lower()
    if not scheme.replace("+", "").replace("-", "").isalnum():
        raise InvalidURL(f"URL scheme {scheme!r} is not valid")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise InvalidURL(f"URL {_redact(url)!r} has a fragment ('#...'); remove it")
    rest, _, query_string = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    hosts = tuple(_parse_host(h, url) for h in netloc.split(",")) if netloc else ()
    namespace = unquote(path.strip("/")) if slash else ""
    if namespace:
        try:
            validate_name(namespace, what="namespace (URL path)")
        except InvalidName as exc:
            raise InvalidURL(str(exc)) from None
    query: dict[str, str] = {}
    if query_string:
        try:
            pairs = parse_qsl(query_string, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise InvalidURL(
                f"URL query {_redact_query(query_string)!r} is malformed; expected name=value&..."
            ) from None
        for key, value in pairs:
            if key in query:
                raise InvalidURL(f"URL option {key!r} is given twice")
            query[key] = value
    return ParsedURL(scheme, hosts, namespace, query, username, password)


def _parse_host(text: str, url: str) -> tuple[str, int | None]:
    if not text:
        raise InvalidURL(f"URL {_redact(url)!r} has an empty host in its host list")
    if text.startswith("["):
        host, bracket, port_text = text[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise InvalidURL(f"URL host {text!r} is malformed")
        port_text = port_text[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise InvalidURL(f"URL host {text!r} has no host name")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidURL(f"URL host {text!r} has an invalid port {port_text!r}")
    return host, int(port_text)


def _redact(url: str) -> str:
    """``url`` with any password and every option's value replaced by ``***``, for error
    messages (an option may be a secret: a password or a token)."""
    scheme, sep, rest = url.partition("://") if "://" in url else ("", "", url)
    rest, question, query = rest.partition("?")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        userinfo, _, hosts = authority.rpartition("@")
        authority = f"{userinfo.partition(':')[0]}:***@{hosts}"
    return f"{scheme}{sep}{authority}{slash}{tail}{question}{_redact_query(query)}"


def _redact_query(query: str) -> str:
    """``name=value&...`` with every value replaced by ``***``."""
    return "&".join(f"{part.partition('=')[0]}=***" if "=" in part else part for part in query.split("&"))


def resolve_options(
    declared: Mapping[str, Option], query: Mapping[str, str], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Typed option values: defaults, then the URL query, then keyword ``overrides``.

    Raises :class:`InvalidURL` naming the option for an unknown name, a value that does
    not convert, or one out of range.
    """
    values: dict[str, Any] = {name: opt.default for name, opt in declared.items() if not opt.renamed_to}
    given: dict[str, str] = {}  # the option's name (new) -> the name it was given as
    for source, items in (("URL option", query), ("option", overrides)):
        for name, raw in items.items():
            option = declared.get(name)
            if option is None:
                known = ", ".join(sorted(n for n, o in declared.items() if not o.renamed_to))
                raise InvalidURL(f"unknown {source} {name!r}; known options: {known}")
            target = option.renamed_to or name
            if option.renamed_to:
                warnings.warn(
                    f"option {name!r} is now called {target!r}; the old name goes in the next release",
                    DeprecationWarning,
                    stacklevel=4,
                )
                option = declared[target]
            earlier = given.get(target)
            if earlier is not None and earlier != name and source == "URL option":
                raise InvalidURL(f"options {earlier!r} and {name!r} are one option: give one")
            given[target] = name
            values[target] = _convert(
                name, option, raw, from_text=isinstance(raw, str) and source == "URL option"
            )
    return values


def _convert(name: str, option: Option, raw: Any, *, from_text: bool) -> Any:
    shown = "***" if option.secret else repr(raw)
    kind = option.type
    value: Any
    if from_text and kind is not str:
        text = raw.strip().lower()
        try:
            if kind is bool:
                if text not in _TRUE | _FALSE:
                    raise ValueError(text)
                value = text in _TRUE
            else:
                value = kind(text)
        except ValueError:
            raise InvalidURL(f"option {name!r} must be {_type_name(kind)}, got {shown}") from None
    else:
        ok = isinstance(raw, kind) and not (kind is not bool and isinstance(raw, bool))
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            ok, raw = True, float(raw)
        if not ok:
            raise InvalidURL(f"option {name!r} must be {_type_name(kind)}, got {shown}")
        value = raw
    if option.minimum is not None and value < option.minimum:
        raise InvalidURL(f"option {name!r} must be at least {option.minimum:g}, got {shown}")
    if kind is float and value != value:  # NaN
        raise InvalidURL(f"option {name!r} must be a number, got {shown}")
    if option.check is not None:
        problem = option.check(value)
        if problem:
            raise InvalidURL(f"option {name!r}: {problem}")
    return value


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "a boolean (true/false)", str: "a string"}.get(
        kind, kind.__name__
    )


def default_identity() -> str:
    """``hostname:pid``, the identity used when none is given."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]
