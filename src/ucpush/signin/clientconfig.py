"""Client configuration: UC service parameters checked, merged and rendered as XML in the style
of Jabber's ``jabber-config.xml``::

    <?xml version='1.0' encoding='utf-8'?>
    <config version="1.0"><Phone><LocalPushSSIDList>Ward4;Ward5</LocalPushSSIDList></Phone></config>

A parameter key is ``Section.Name`` (``Policies.EnableTelephony``) or a bare name; bare names
go to their known section (``LocalPushSSIDList`` → ``Phone``), others to ``Client``. The UC
services of a profile are merged in profile order: a later service overrides an earlier one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from xml.etree import ElementTree

LOCAL_PUSH_SSIDS = "LocalPushSSIDList"
MAX_SSIDS = 10
_KNOWN_SECTIONS = {LOCAL_PUSH_SSIDS: "Phone"}
_DEFAULT_SECTION = "Client"
# XML element names we are willing to emit: no namespaces, no "xml" prefix games.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
# 802.11 allows 32-byte SSIDs; the client configuration allows only letters and digits.
_SSID = re.compile(r"[A-Za-z0-9]{1,32}")
_MAX_VALUE = 4096
# Characters XML 1.0 cannot carry at all, even escaped.
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class ConfigError(ValueError):
    """A parameter is invalid; the message names it and says why."""


def parse_ssid_list(value: str) -> list[str]:
    """``LocalPushSSIDList``: at most 10 alphanumeric SSIDs separated by ``;`` ("" = none)."""
    if value == "":
        return []
    ssids = value.split(";")
    if len(ssids) > MAX_SSIDS:
        raise ConfigError(f"{LOCAL_PUSH_SSIDS}: at most {MAX_SSIDS} SSIDs, got {len(ssids)}")
    for position, ssid in enumerate(ssids, 1):
        if not ssid:
            raise ConfigError(f"{LOCAL_PUSH_SSIDS}: SSID {position} is empty")
        if not _SSID.fullmatch(ssid):
            raise ConfigError(
                f"{LOCAL_PUSH_SSIDS}: SSID {position} must be 1-32 letters and digits "
                "(A-Z, a-z, 0-9), separated by ';'"
            )
    if len(set(ssids)) != len(ssids):
        raise ConfigError(f"{LOCAL_PUSH_SSIDS}: an SSID is listed twice")
    return ssids


def split_key(key: str) -> tuple[str, str]:
    section, dot, name = key.rpartition(".")
    if not dot:
        section = _KNOWN_SECTIONS.get(name, _DEFAULT_SECTION)
    if not _NAME.fullmatch(section) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"parameter {key[:80]!r}: use Section.Name or Name, letters, digits, '_' and '-'"
        )
    return section, name


def validate_params(params: Mapping[str, str]) -> dict[str, str]:
    """Check every key and value; return the parameters unchanged."""
    for key, value in params.items():
        _, name = split_key(key)
        if len(value) > _MAX_VALUE:
            raise ConfigError(f"parameter {key}: value longer than {_MAX_VALUE} characters")
        if _XML_ILLEGAL.search(value):
            raise ConfigError(f"parameter {key}: value has control characters")
        if name == LOCAL_PUSH_SSIDS:
            parse_ssid_list(value)
    return dict(params)


def merge(services: Iterable[Mapping[str, str]]) -> dict[tuple[str, str], str]:
    """(section, name) → value; later mappings override earlier ones."""
    merged: dict[tuple[str, str], str] = {}
    for params in services:
        for key, value in params.items():
            merged[split_key(key)] = value
    return merged


def provisioned_ssids(merged: Mapping[tuple[str, str], str]) -> list[str]:
    return parse_ssid_list(merged.get(("Phone", LOCAL_PUSH_SSIDS), ""))


def render_xml(merged: Mapping[tuple[str, str], str]) -> str:
    root = ElementTree.Element("config", version="1.0")
    sections: dict[str, ElementTree.Element] = {}
    for (section, name), value in merged.items():
        parent = sections.get(section)
        if parent is None:
            parent = sections[section] = ElementTree.SubElement(root, section)
        ElementTree.SubElement(parent, name).text = value
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)
