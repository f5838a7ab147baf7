"""Connect to a CVAT server through the real ``cvat-sdk`` client, with bounded network behaviour.

Why this layer exists:

- cvat-sdk's strict server-version check fails against CVAT servers still common in the field
  (2.2x): its ``About`` model cannot parse their ``/api/server/about``. We try the strict check
  first and fall back to ``allow_unsupported_server`` with a warning that names both versions.
- The SDK has no default request timeout and polls background requests (task creation, dataset
  export) forever. We give every request a timeout, retry 5xx/timeouts/connection errors a
  bounded number of times with exponential backoff (idempotent methods only, so a retried POST
  cannot create a second task), and give polling a deadline.
- SDK and urllib3 exceptions become :class:`CvatError` subclasses with one readable sentence,
  which the CLI prints without a traceback. Secrets never appear in them.
"""
from __future__ import annotations

import json
import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import urllib3
from cvat_sdk.api_client import exceptions as api_exc
from cvat_sdk.api_client import models
from cvat_sdk.core.client import AccessTokenCredentials, Client, Config
from cvat_sdk.core.exceptions import (BackgroundRequestException, CvatSdkException,
                                      IncompatibleVersionException)
from cvat_sdk.version import VERSION as SDK_VERSION

from data.errors import UserError
from cvat_bridge.settings import CvatSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES = (500, 502, 503, 504)
# Methods whose repetition cannot create a second object on the server.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class CvatError(UserError):
    """Any failure talking to CVAT, as one readable sentence."""


class CvatUnavailable(CvatError):
    """The server cannot be reached (down, refused, DNS) or kept timing out."""


class CvatAuthError(CvatError):
    """401/403 or a rejected login."""


class CvatTimeout(CvatError):
    """A request or a background operation did not finish in time."""


class CvatServerError(CvatError):
    """5xx after the retries, a failed background request, or an unexpected answer."""


class CvatNotFound(CvatError):
    """A task/project/job id the server does not know."""


class _TimeoutPoolManager(urllib3.PoolManager):
    """A PoolManager that applies a default timeout when the SDK passes none.

    cvat-sdk forwards ``timeout=None`` explicitly, which urllib3 reads as "wait forever", so
    a pool-level default alone would be ignored.
    """

    def __init__(self, *args: Any, default_timeout: urllib3.Timeout, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._default_timeout = default_timeout

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any):  # type: ignore[override]
        if kw.get("timeout") is None:
            kw["timeout"] = self._default_timeout
        return super().urlopen(method, url, redirect=redirect, **kw)


class BridgeClient(Client):
    """The SDK client with a deadline on background-request polling.

    Everything else is cvat-sdk's own code; only ``wait_for_completion`` (which loops until the
    server says finished/failed) gains ``operation_timeout_s``.
    """

    operation_timeout_s: float = 600.0

    def wait_for_completion(self, rq_id: str, *, status_check_period: float | None = None,
                            log_prefix: str | None = None):  # type: ignore[override]
        period = self.config.status_check_period if status_check_period is None else status_check_period
        deadline = time.monotonic() + self.operation_timeout_s
        finished = models.RequestStatus.allowed_values[("value",)]["FINISHED"]
        failed = models.RequestStatus.allowed_values[("value",)]["FAILED"]
        while True:
            request, response = self.api_client.requests_api.retrieve(rq_id)
            status, message = request.status.value, request.message
            self.logger.info("%s status: %s (message=%s)",
                             log_prefix or f"{request.operation.type} operation", status, message)
            if status == finished:
                return request, response
            if status == failed:
                raise BackgroundRequestException(message)
            if time.monotonic() + period > deadline:
                raise CvatTimeout(
                    f"CVAT background request {rq_id!r} did not finish within "
                    f"{self.operation_timeout_s:g} s (last status: {status}"
                    f"{', ' + message if message else ''}); try again later or raise the timeout")
            time.sleep(period)


def _install_network_policy(client: Client, settings: CvatSettings) -> None:
    """Swap the SDK's pool manager for one with our timeout and retry policy."""
    retry = urllib3.Retry(
        total=settings.retries, connect=settings.retries, read=settings.retries,
        status=settings.retries, other=0, backoff_factor=settings.backoff_s,
        status_forcelist=RETRY_STATUSES, allowed_methods=IDEMPOTENT_METHODS,
        raise_on_status=False, respect_retry_after_header=False,
    )
    rest = client.api_client.rest_client
    old = rest.pool_manager
    kwargs = dict(old.connection_pool_kw)
    kwargs.pop("retries", None)
    kwargs.pop("timeout", None)
    rest.pool_manager = _TimeoutPoolManager(
        num_pools=4, retries=retry,
        default_timeout=urllib3.Timeout(connect=settings.timeout_s, read=settings.timeout_s),
        **kwargs)
    old.clear()


def _about_raw(client: Client) -> dict[str, Any]:
    _, response = client.api_client.server_api.retrieve_about(_parse_response=False)
    try:
        return json.loads(response.data)
    except (TypeError, ValueError):
        return {}


def _html_text(text: str) -> str:
    """The gist of an HTML error page: its <title> (or <h1>), else its text without tags.

    CVAT answers a 500 with Django's HTML page (trace l); a user should read "Server Error
    (500)", not 145 bytes of markup.
    """
    m = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S) \
        or re.search(r"<h1[^>]*>(.*?)</h1>", text, re.I | re.S)
    found = m.group(1) if m else re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", found).strip()


def describe_api_exception(exc: api_exc.ApiException) -> str:
    """Status plus the server's own words (JSON detail/list, or an HTML page's title)."""
    body = getattr(exc, "body", None)
    text = ""
    if body:
        try:
            data = json.loads(body)
        except (TypeError, ValueError):
            data = body if isinstance(body, str) else body.decode("utf-8", "replace")
            if re.search(r"<\s*(!doctype|html|head|body|title|h1|p)\b", data, re.I):
                data = _html_text(data)
        if isinstance(data, dict):
            parts = []
            for key, value in data.items():
                if isinstance(value, list):
                    value = "; ".join(map(str, value))
                parts.append(value if key == "detail" else f"{key}: {value}")
            text = "; ".join(map(str, parts))
        elif isinstance(data, list):
            text = "; ".join(map(str, data))
        else:
            text = str(data)
    text = re.sub(r"\s+", " ", text).strip()[:300]
    return f"HTTP {exc.status}{' ' + exc.reason if exc.reason else ''}" + (f": {text}" if text else "")


def _short(exc: BaseException) -> str:
    """'Connection refused' rather than urllib3's long repr with object addresses."""
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] ([^')\]]+)", text)
    return m.group(1) if m else type(exc).__name__


@contextmanager
def translate_errors(host: str, action: str) -> Iterator[None]:
    """Turn SDK/urllib3 exceptions raised while doing ``action`` into CvatError subclasses."""
    try:
        yield
    except CvatError:
        raise
    except api_exc.UnauthorizedException as exc:
        raise CvatAuthError(f"{action}: CVAT at {host} refused the credentials "
                            f"({describe_api_exception(exc)}); check the token or password") from None
    except api_exc.ForbiddenException as exc:
        raise CvatAuthError(f"{action}: the CVAT user may not do this on {host} "
                            f"({describe_api_exception(exc)}); check the role or organisation") from None
    except api_exc.NotFoundException as exc:
        raise CvatNotFound(f"{action}: not found on {host} ({describe_api_exception(exc)})") from None
    except api_exc.ServiceException as exc:
        raise CvatServerError(f"{action}: CVAT server error at {host} "
                              f"({describe_api_exception(exc)}) after retries") from None
    except api_exc.ApiException as exc:
        raise CvatServerError(f"{action}: CVAT rejected the request "
                              f"({describe_api_exception(exc)})") from None
    except BackgroundRequestException as exc:
        raise CvatServerError(f"{action}: the CVAT background request failed: {exc}") from None
    except urllib3.exceptions.NewConnectionError as exc:
        # (a subclass of urllib3's ConnectTimeoutError, so it must come first)
        raise CvatUnavailable(f"{action}: cannot reach CVAT at {host} ({_short(exc)}); is the "
                              "server running and CVAT_HOST right?") from None
    except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise CvatTimeout(f"{action}: CVAT at {host} did not answer in time ({type(exc).__name__})") from None
    except urllib3.exceptions.MaxRetryError as exc:
        reason = exc.reason
        if isinstance(reason, urllib3.exceptions.TimeoutError) \
                and not isinstance(reason, urllib3.exceptions.NewConnectionError):
            raise CvatTimeout(f"{action}: CVAT at {host} did not answer in time, even after "
                              "retries") from None
        raise CvatUnavailable(f"{action}: cannot reach CVAT at {host} "
                              f"({_short(reason) if reason else 'connection failed'}); "
                              "is the server running and CVAT_HOST right?") from None
    except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
        raise CvatUnavailable(f"{action}: connection to CVAT at {host} failed "
                              f"({type(exc).__name__})") from None


def retry_call(fn: Callable[[], T], settings: CvatSettings, what: str) -> T:
    """Repeat an idempotent multi-request operation on 5xx/timeouts, with backoff.

    Single requests are already retried by urllib3; this covers operations such as "start an
    export, poll it, download" where the 5xx comes from a POST urllib3 will not repeat.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except (api_exc.ServiceException, urllib3.exceptions.HTTPError) as exc:
            attempt += 1
            if attempt > settings.retries:
                raise
            delay = settings.backoff_s * (2 ** (attempt - 1))
            log.warning("%s failed (%s); retry %d/%d in %.1f s", what, type(exc).__name__,
                        attempt, settings.retries, delay)
            time.sleep(delay)


@dataclass
class Connection:
    """A logged-in SDK client plus what we learned while connecting."""

    client: BridgeClient
    settings: CvatSettings
    server_version: str
    sdk_version: str
    username: str
    user_id: int | None
    version_relaxed: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.settings.host

    def close(self) -> None:
        try:
            with translate_errors(self.host, "log out"):
                self.client.logout()
        except CvatError:
            pass
        self.client.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# CVAT servers before personal access tokens (2.2x) know only ``Authorization: Token <key>``
# (the ``key`` of a login) and answer ``Bearer`` with 401 whether the key is valid or not
# (trace g); newer servers take personal access tokens as ``Bearer``. cvat-sdk 2.80's
# AccessTokenCredentials always sends Bearer.
BEARER_SINCE = (2, 30)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def _token_login(client: Client, token: str, server_version: str, relaxed: bool) -> Any:
    """Log in with a token in the scheme the server accepts; returns the current user.

    The likely scheme goes first (``Token`` for servers older than 2.30 or whose version could
    not be parsed, ``Bearer`` otherwise); on 401 the other one is tried once.
    """
    version = _version_tuple(server_version)
    old = relaxed and (not version or version < BEARER_SINCE) or (version and version < BEARER_SINCE)
    schemes = ["Token", "Bearer"] if old else ["Bearer", "Token"]
    config = client.api_client.configuration
    last: api_exc.ApiException | None = None
    for scheme in schemes:
        config.access_token = None
        config.api_key.pop("tokenAuth", None)
        if scheme == "Bearer":
            client.login(AccessTokenCredentials(token))
        else:
            config.api_key["tokenAuth"] = token
            config.api_key_prefix["tokenAuth"] = "Token"
        try:
            user = client.users.retrieve_current_user()
        except api_exc.UnauthorizedException as exc:
            last = exc
            continue
        log.debug("token accepted as 'Authorization: %s'", scheme)
        return user
    config.access_token = None
    config.api_key.pop("tokenAuth", None)
    assert last is not None
    raise CvatAuthError(
        f"log in: CVAT at {client.api_map.host} refused the access token with both "
        f"'Authorization: Token' and 'Authorization: Bearer' ({describe_api_exception(last)}); "
        "on CVAT 2.2x the token is the key of a login and dies when that user logs out") from None


def connect(settings: CvatSettings, *, logger: logging.Logger | None = None) -> Connection:
    """Open a logged-in connection: strict version check first, relaxed for older servers."""
    host = settings.host
    warnings_out: list[str] = []
    config = Config(allow_unsupported_server=False,
                    status_check_period=settings.status_check_period_s)
    with translate_errors(host, "connect"):
        try:
            client = BridgeClient(host, logger=logger or log, config=config,
                                  check_server_version=False)
        except (ValueError, CvatSdkException) as exc:  # bad URL / scheme
            raise CvatError(f"bad CVAT host {host!r}: {exc}") from None
        client.operation_timeout_s = settings.operation_timeout_s
        _install_network_policy(client, settings)
        relaxed = False
        try:
            client.check_server_version(fail_if_unsupported=True)
        except (IncompatibleVersionException, api_exc.OpenApiException, TypeError,
                KeyError, ValueError) as exc:
            if isinstance(exc, api_exc.ApiException) and exc.status in (401, 403, 404) \
                    or isinstance(exc, api_exc.ServiceException):
                raise
            relaxed = True
            client.config.allow_unsupported_server = True
            about = _about_raw(client)
            server_version = str(about.get("version", "unknown"))
            why = "its /api/server/about cannot be parsed by this SDK" \
                if not isinstance(exc, IncompatibleVersionException) else "its version is not supported"
            supported = ", ".join(str(v) for v in Client.SUPPORTED_SERVER_VERSIONS)
            msg = (f"CVAT server {server_version} at {host} is outside cvat-sdk {SDK_VERSION}'s "
                   f"supported versions ({supported}): {why}; continuing with the version check "
                   "relaxed (check_server_version=False, allow_unsupported_server=True)")
            warnings_out.append(msg)
            (logger or log).warning(msg)
        else:
            server_version = str(client.get_server_version())

    with translate_errors(host, "log in"):
        if settings.organization:
            client.organization_slug = settings.organization
        if settings.access_token:
            user = _token_login(client, settings.access_token, server_version, relaxed)
        else:
            try:
                client.login((settings.username or "", settings.password or ""))
            except api_exc.ApiException as exc:
                if exc.status == 400:
                    raise CvatAuthError(f"log in: CVAT at {host} rejected user "
                                        f"{settings.username!r} ({describe_api_exception(exc)})"
                                        ) from None
                raise
            user = client.users.retrieve_current_user()
    return Connection(client=client, settings=settings, server_version=server_version,
                      sdk_version=SDK_VERSION, username=str(user.username),
                      user_id=getattr(user, "id", None), version_relaxed=relaxed,
                      warnings=warnings_out)
