"""
The manual's "Importer les paramètres de proxy": which proxy this machine
would use to reach e-PMSI, and where that setting came from, so a person can
copy it into the workstation's settings instead of asking IT.

Where settings are looked for, first match wins:

 1. a PAC file the person names (C{pac=}), evaluated with C{pypac};
 2. the environment, with Python's own rules (L{urllib.request}): for an
    C{https://} target only C{https_proxy}/C{HTTPS_PROXY} counts (lower case
    wins, an empty lower-case variable cancels the upper-case one);
    C{HTTP_PROXY} and C{ALL_PROXY} are I{not} used, as in urllib, but are
    mentioned when nothing else is found. C{NO_PROXY} is applied with
    L{urllib.request.proxy_bypass_environment};
 3. the system: on Windows the registry's Internet Settings (C{AutoConfigURL}
    first, then the manual proxy and its C{ProxyOverride} exclusions), on
    macOS the network settings.

Proxies are reported as C{http://host:port}. A proxy written without a port
gets port 80, the port Python's own HTTP clients (urllib, urllib3) use for an
C{http://} proxy; the source text says it was assumed. Only plain HTTP
proxies (C{CONNECT}) are supported: SOCKS proxies and proxies reached over TLS
are reported as unsupported, never silently replaced by "direct".

Nothing here touches the network: a PAC file is read from a local path or a
C{file://} URL; an C{http(s)://} PAC URL is reported, not downloaded.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from epop.addressing import host_port
from epop.epmsi.origin import DEFAULT_EPMSI_URL
from epop.messages import Text, system_reason

__all__ = [
    "PAC_INSTALL_HINT",
    "ProxyDiscovery",
    "discover_proxy",
]

#: What to tell a person when a PAC file needs the optional dependency.
PAC_INSTALL_HINT = "pip install 'epop[pac]'"

_DEFAULT_PROXY_PORT = 80
_WINDOWS_LABEL = Text("Windows registry (Internet Settings)")
_MACOS_LABEL = Text("macOS network settings")
_INTERNET_SETTINGS_KEY = r"Software\Microsoft\Windows\CurrentVersion\Internet Settings"

# Documented and present on every platform, but typeshed declares it only on some.
_proxy_bypass_environment: Callable[[str, Mapping[str, str]], bool] = (
    urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
)


@dataclass(frozen=True)
class ProxyDiscovery:
    """
    The proxy this machine would use for C{url}, and why.

    @ivar proxy: C{http://host:port}, never with a password; C{None} when
        the target would be reached directly, or when L{unresolved}.
    @ivar user: the user name the setting carried, if any (its password is
        dropped: it belongs in the settings' C{proxy-password}).
    @ivar found_in: where the answer came from, for people (L{source} in English).
    @ivar bypassed: a proxy is configured but excludes the target
        (C{NO_PROXY}, registry C{ProxyOverride}, macOS exceptions).
    @ivar unresolved: a setting exists but could not be used (unsupported
        kind of proxy, PAC file not evaluable): the answer is unknown, which
        is not the same as "direct".
    @ivar url: the target the question was asked for.
    """

    proxy: str | None
    user: str | None
    found_in: Text
    bypassed: bool = False
    unresolved: bool = False
    url: str = DEFAULT_EPMSI_URL

    @property
    def direct(self) -> bool:
        """True when the target would be reached without a proxy, for sure."""
        return self.proxy is None and not self.unresolved

    @property
    def source(self) -> str:
        """Where the answer came from, in English."""
        return str(self.found_in)

    def describe(self, language: str = "en") -> str:
        """One or two plain sentences for the person who asked."""
        return self.text().render(language)

    def text(self) -> Text:
        """L{describe}'s sentences, to be rendered in the reader's language."""
        source = self.found_in
        if self.proxy is not None:
            if self.user:
                return Text(
                    "This machine would reach {url} through the proxy {proxy} as user {user} (from {source}).",
                    url=self.url, proxy=self.proxy, user=self.user, source=source,
                )
            return Text(
                "This machine would reach {url} through the proxy {proxy} (from {source}).",
                url=self.url, proxy=self.proxy, source=source,
            )
        if self.unresolved:
            return Text(
                "Could not tell which proxy this machine would use for {url}: {source}.",
                url=self.url, source=source,
            )
        if self.bypassed:
            return Text(
                "A proxy is configured, but {source}: this machine would reach {url} directly.",
                url=self.url, source=source,
            )
        if source.template == _NOTHING_FOUND.template:
            return Text(
                "No proxy setting found on this machine: {target} would be reached directly.",
                target=_target_label(self.url),
            )
        if source.template == _NOTHING_FOUND_BUT.template:
            return Text(
                "No proxy setting found on this machine: {target} would be reached directly. Note: {note}.",
                target=_target_label(self.url), note=source.params["note"],
            )
        return Text("This machine would reach {url} directly (from {source}).", url=self.url, source=source)


def discover_proxy(
    url: str = DEFAULT_EPMSI_URL,
    *,
    environ: Mapping[str, str] | None = None,
    pac: str | None = None,
    platform: str | None = None,
) -> ProxyDiscovery:
    """
    Find the proxy this machine would use for C{url} (e-PMSI by default).

    @param environ: the environment to read; C{os.environ} by default.
    @param pac: a PAC file to evaluate instead of everything else: a local
        path or a C{file://} URL (an C{http(s)://} URL is reported, not
        fetched).
    @param platform: C{sys.platform} by default; the system settings are
        read only on C{win32} and C{darwin}, so tests pass C{"linux"}.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if pac is not None:
        return _from_pac(url, host, pac, pac)
    env = os.environ if environ is None else environ
    proxies = _environment_proxies(env)
    found = _from_environment(url, proxies)
    if found is not None:
        return found
    system = _system_settings(sys.platform if platform is None else platform)
    if system is not None:
        found = _from_system(url, system)
        if found is not None:
            return found
    return ProxyDiscovery(None, None, _nothing_found(proxies), url=url)


# -- environment ---------------------------------------------------------------


def _environment_proxies(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """
    C{urllib.request.getproxies_environment} for any mapping: scheme ->
    (variable name, value), so the source can name the variable.
    """
    proxies: dict[str, tuple[str, str]] = {}
    # Two passes, as urllib: any case first, then lower-case "_proxy" wins.
    for name, value in environ.items():
        lowered = name.lower()
        if value and lowered[-6:] == "_proxy":
            proxies[lowered[:-6]] = (name, value)
    # CVE-2016-1000110: under CGI, HTTP_PROXY may come from a request header.
    if "REQUEST_METHOD" in environ:
        proxies.pop("http", None)
    for name, value in environ.items():
        if name[-6:] == "_proxy":
            scheme = name.lower()[:-6]
            if value:
                proxies[scheme] = (name, value)
            else:
                proxies.pop(scheme, None)
    return proxies


def _from_environment(url: str, proxies: Mapping[str, tuple[str, str]]) -> ProxyDiscovery | None:
    """The environment's answer, or C{None} if it names no proxy for C{url}."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in proxies:
        return None
    name, value = proxies[scheme]
    no_proxy = proxies.get("no")
    plain = {key: text for key, (_, text) in proxies.items()}
    if no_proxy is not None and _proxy_bypass_environment(_request_host(url), plain):
        return ProxyDiscovery(
            None,
            None,
            Text("environment variable {name} excludes {target}", name=no_proxy[0], target=_target_label(url)),
            bypassed=True,
            url=url,
        )
    return _from_proxy_url(url, value, Text("environment variable {name}", name=name))


_NOTHING_FOUND = Text("nothing found")
_NOTHING_FOUND_BUT = Text("nothing found ({note})")


def _nothing_found(proxies: Mapping[str, tuple[str, str]]) -> Text:
    """The "nothing found" source, naming variables Python's rules ignore for https."""
    ignored = sorted(name for key, (name, _) in proxies.items() if key in ("http", "all"))
    if not ignored:
        return _NOTHING_FOUND
    if len(ignored) == 1:
        note = Text(
            "{variable} is set, but like Python's urllib, e-POP only reads HTTPS_PROXY for https:// addresses",
            variable=ignored[0],
        )
    else:
        note = Text(
            "{first} and {second} are set, but like Python's urllib, e-POP only reads HTTPS_PROXY "
            "for https:// addresses",
            first=ignored[0], second=ignored[1],
        )
    return Text(_NOTHING_FOUND_BUT.template, note=note)


def _request_host(url: str) -> str:
    """The host as urllib passes it to its bypass checks: with a port if written."""
    netloc = urlsplit(url).netloc
    return netloc.rpartition("@")[2].lower()


def _target_label(url: str) -> str:
    """People call the default target "e-PMSI"; other targets by host name."""
    host = urlsplit(url).hostname or url
    return "e-PMSI" if host == urlsplit(DEFAULT_EPMSI_URL).hostname else host


# -- proxy URLs ----------------------------------------------------------------


def _from_proxy_url(
    url: str, value: str, source: Text, *, tls_means_http: bool = False
) -> ProxyDiscovery:
    """
    Normalize one proxy setting to C{http://host:port}, keeping the user name
    and dropping any password; unsupported kinds are reported, not guessed.

    @param tls_means_http: the setting's C{https://} prefix only says which
        traffic the proxy is for (old urllib parsing of the Windows registry).
    """
    value = value.strip()
    text = value if "://" in value else "http://" + value
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return _unresolved(
            url, Text("{source}: {proxy} is not a valid proxy address", source=source, proxy=_redacted(value))
        )
    scheme = parts.scheme.lower()
    if scheme == "https" and tls_means_http:
        scheme = "http"
    if scheme != "http":
        return _unresolved(url, Text("{source}: {why}", source=source, why=_unsupported(scheme, _redacted(value))))
    host = parts.hostname
    if not host:
        return _unresolved(url, Text("{source}: {proxy} has no host name", source=source, proxy=_redacted(value)))
    if port is None:
        port = _DEFAULT_PROXY_PORT
        source = Text("{source}; no port given, port {port} assumed", source=source, port=port)
    user = unquote(parts.username) if parts.username else None
    return ProxyDiscovery(f"http://{host_port(host, port)}", user, source, url=url)


def _unsupported(scheme: str, shown: str) -> Text:
    """Why a proxy kind cannot be used, and what would work instead."""
    if scheme.startswith("socks"):
        kind = Text("a SOCKS proxy")
    elif scheme == "https":
        kind = Text("a proxy reached over TLS (https://)")
    else:
        kind = Text("a {scheme}:// proxy", scheme=scheme)
    advice: Text | str = ""
    if scheme == "https":
        plain = "http://" + shown.split("://", 1)[1]
        advice = Text("; if this proxy speaks plain HTTP, write it as {plain}", plain=plain)
    return Text(
        "{proxy} is {kind}, which e-POP does not support (only http:// proxies){advice}",
        proxy=shown, kind=kind, advice=advice,
    )


def _redacted(value: str) -> str:
    """A proxy setting fit to show: any password replaced."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "", value
    userinfo, at, hostport = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    return f"{scheme}{sep}{rest}"


def _unresolved(url: str, source: Text) -> ProxyDiscovery:
    return ProxyDiscovery(None, None, source, unresolved=True, url=url)


# -- PAC files -----------------------------------------------------------------


def _from_pac(url: str, host: str, pac: str, where: Text | str) -> ProxyDiscovery:
    """
    Evaluate a local PAC file; report why when that is not possible.

    @param where: the PAC's location for people, with who named it if not
        the person.
    """
    label = Text("PAC file {where}", where=where)
    path = _pac_path(pac)
    if path is None:
        return _unresolved(
            url,
            Text("a PAC file is configured ({where}) but it is not a local file, and "
                 "e-POP does not download PAC files: save a copy and name that file", where=where),
        )
    try:
        from pypac.parser import PACFile  # type: ignore[import-untyped]
    except ImportError:
        return _unresolved(
            url,
            Text("a PAC file is configured ({where}) but pypac is not installed: {hint}",
                 where=where, hint=PAC_INSTALL_HINT),
        )
    try:
        script = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as e:
        return _unresolved(url, Text("{label} cannot be read: {why}", label=label, why=system_reason(e)))
    try:
        answer = PACFile(script).find_proxy_for_url(url, host)
    except Exception as e:  # noqa: BLE001 -- dukpy's and pypac's errors share no base
        # pypac's own words ("Malformed PAC file") are English: only the script's error is kept.
        detail = getattr(e, "original_exc", None) or e
        return _unresolved(
            url,
            Text("{label} could not be evaluated: {why}", label=label,
                 why=Text("its script has an error ({detail})", detail=" ".join(str(detail).split()))),
        )
    return _from_pac_answer(url, answer, label)


def _pac_path(pac: str) -> Path | None:
    """The local file a PAC location names, or C{None} for a remote URL."""
    parts = urlsplit(pac)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    if len(scheme) <= 1:  # a plain path, or a Windows drive letter
        return Path(pac)
    return None


def _from_pac_answer(url: str, answer: object, label: Text) -> ProxyDiscovery:
    """
    Read C{FindProxyForURL}'s answer: the first C{PROXY}/C{HTTP} or C{DIRECT}
    entry wins; entries e-POP cannot use are skipped but reported if nothing
    usable follows.
    """
    if not isinstance(answer, str) or not answer.strip():
        return _unresolved(
            url, Text("{label} gave no answer for {url} (expected PROXY host:port or DIRECT)", label=label, url=url)
        )
    for entry in answer.split(";"):
        words = entry.split()
        if not words:
            continue
        keyword = words[0].upper()
        if keyword == "DIRECT" and len(words) == 1:
            return ProxyDiscovery(None, None, Text("{label}, which answers DIRECT", label=label), url=url)
        if keyword in ("PROXY", "HTTP") and len(words) == 2:
            found = _from_proxy_url(url, "http://" + words[1], label)
            if not found.unresolved:
                return found
    return _unresolved(
        url,
        Text("{label} answers {answer}: e-POP only supports PROXY host:port (plain HTTP proxies) and DIRECT",
             label=label, answer=repr(answer.strip())),
    )


# -- system settings -----------------------------------------------------------


@dataclass(frozen=True)
class _SystemSettings:
    """One operating system's proxy settings, as urllib reads them."""

    label: Text
    proxies: Mapping[str, str]
    bypass: Callable[[str], bool]
    pac: str | None = None
    tls_means_http: bool = False


def _system_settings(platform: str) -> _SystemSettings | None:
    """The OS's proxy settings, on the systems where urllib can read them."""
    names = {
        "win32": ("getproxies_registry", "proxy_bypass_registry"),
        "darwin": ("getproxies_macosx_sysconf", "proxy_bypass_macosx_sysconf"),
    }.get(platform)
    if names is None:
        return None
    getproxies = getattr(urllib.request, names[0], None)
    bypass: Callable[[str], object] | None = getattr(urllib.request, names[1], None)
    if getproxies is None or bypass is None:  # asked for another OS than this one
        return None
    proxies = getproxies()
    if platform == "darwin":
        return _SystemSettings(_MACOS_LABEL, proxies, _as_bool(bypass))
    return _SystemSettings(
        _WINDOWS_LABEL,
        proxies,
        _as_bool(bypass),
        pac=_windows_autoconfig_url(),
        # WinINet proxies always speak HTTP; "https=" only selects traffic.
        tls_means_http=True,
    )


def _as_bool(check: Callable[[str], object]) -> Callable[[str], bool]:
    """urllib's registry check answers 0 or 1."""
    return lambda host: bool(check(host))


def _windows_autoconfig_url() -> str | None:
    """The registry's "Use setup script" address, which urllib does not read."""
    if sys.platform != "win32":
        return None
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_CURRENT_USER, _INTERNET_SETTINGS_KEY) as key:
            value = winreg.QueryValueEx(key, "AutoConfigURL")[0]
    except OSError:
        return None
    return str(value).strip() or None


def _from_system(url: str, system: _SystemSettings) -> ProxyDiscovery | None:
    """The OS's answer: its PAC file first (as WinINet), then its manual proxy."""
    scheme = urlsplit(url).scheme.lower()
    manual = system.proxies.get(scheme)
    if system.pac:
        where = Text("{pac}, named in {settings}", pac=system.pac, settings=system.label)
        found = _from_pac(url, urlsplit(url).hostname or "", system.pac, where)
        if found.unresolved and manual:
            return _unresolved(
                url,
                Text("{source}; {settings} also names the proxy {proxy}",
                     source=found.found_in, settings=system.label, proxy=_redacted(manual)),
            )
        return found
    if not manual:
        return None
    if system.bypass(_request_host(url)):
        return ProxyDiscovery(
            None,
            None,
            Text("the exclusions in {settings} cover {target}", settings=system.label, target=_target_label(url)),
            bypassed=True,
            url=url,
        )
    return _from_proxy_url(url, manual, system.label, tls_means_http=system.tls_means_http)
