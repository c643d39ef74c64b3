"""PII as datatrove blocks: emails, payment cards, US SSNs, IP addresses and phone numbers, found, then redacted
(PIIRedactor) or their documents dropped (PIIFilter).

Every kind is a pattern that finds candidates and a check that sees the match in its text and rejects what only
looks like PII. datatrove's patterns for emails and IPv4 (its PIIFormatter) find more than addresses in technical
text: `cargo add rand@0.8.5`, `git@github.com:org/repo.git`, `q@k.transpose(...)`, OIDs like 1.3.6.1.4.1 and
four-part versions read as addresses; the checks below are what makes them precise. tests/test_pii.py measures
precision and recall on a labelled set of technical and personal text.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.formatters.pii import PIIFormatter, public_ip_validator
from datatrove.pipeline.writers import JsonlWriter

# datatrove's own email and IPv4 patterns (its PIIFormatter), the IPv4 one kept from matching inside a longer
# dotted number; phone, credit-card, IPv6 and SSN patterns are ours.
_DATATROVE_PII = PIIFormatter()
EMAIL = _DATATROVE_PII.emails_replacer.regex
IPV4 = re.compile(r"(?<![\d.])" + _DATATROVE_PII.ip_replacer.regex.pattern + r"(?!\.?\d)")
IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:)[0-9A-Fa-f:][0-9A-Fa-f:.]{1,43}[0-9A-Fa-f](?![\w:])"
)
CREDIT_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
SSN = re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])")
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,8}(?:[ .-]\d{1,8}){1,5}(?!\w|[.-]\d)"
)

# Checked in this order (emails first, phones last), so that a redacted card number is not then read as a phone.
PII_KINDS = ("email", "credit_card", "ssn", "ip", "phone")
DEFAULT_PII_KINDS = ("email", "credit_card", "ip", "phone")  # US social security numbers are opt-in
PLACEHOLDERS = {
    "email": "<EMAIL>",
    "credit_card": "<CREDIT_CARD>",
    "ssn": "<SSN>",
    "ip": "<IP_ADDRESS>",
    "phone": "<PHONE_NUMBER>",
}


@functools.cache
def top_level_domains() -> frozenset[str]:
    """The ICANN top-level domains of the public suffix list snapshot inside tldextract's wheel (no network),
    with internationalised ones also in their ASCII (xn--) form."""
    import pkgutil

    from tldextract.suffix_list import extract_tlds_from_suffix_list

    public, _ = extract_tlds_from_suffix_list(pkgutil.get_data("tldextract", ".tld_set_snapshot").decode())
    tlds = {suffix for suffix in public if "." not in suffix and not suffix.startswith(("!", "*"))}
    return frozenset(tlds | {tld.encode("idna").decode() for tld in tlds if not tld.isascii()})


MESSAGE_ID_HEADER = re.compile(r"(?im)^(?:message-id|in-reply-to|references):[^\n]*\Z")
URL_PASSWORD = re.compile(r"://[^\s/@]*:\Z")


def _email(match: re.Match) -> bool:
    """A mail address: its domain ends in a real top-level domain, and it is not part of code, a URL or a message
    ID. Rejected: versions (`rand@0.8.5`, `@types/node@18.11.9`), local names (`pi@box.local`), attributes and calls
    in code (`x@w.T`, `A@B.mT`, `w@x.to(device)`), the user of a URL (`ssh://git@host/`, `postgres://u:pw@host`),
    git remotes (`git@github.com:org/repo.git`) and message IDs in mail headers."""
    local, domain = match.group(0).rsplit("@", 1)
    if not domain.startswith("["):  # user@[192.0.2.1] names a host by address: no top-level domain to check
        tld = domain.rsplit(".", 1)[-1]
        if tld.lower() not in top_level_domains() or not (tld.islower() or tld.isupper()):
            return False
    # `git` is the account every user of GitHub, GitLab, Bitbucket... connects as over ssh: it names no one,
    # and the org/repo after it is a public project. Other user@host:path targets name a login and stay PII.
    if local.lower() == "git":
        return False
    text, start = match.string, match.start()
    if text[match.end() : match.end() + 1] in ("(", "["):
        return False
    before = text[max(0, start - 200) : start]
    if before.endswith("/") or URL_PASSWORD.search(before):
        return False
    return not MESSAGE_ID_HEADER.search(before)


def luhn_valid(digits: str) -> bool:
    """The checksum every payment card number carries: double every second digit from the right."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match) -> bool:
    digits = re.sub(r"\D", "", match.group(0))
    separators = set(re.findall(r"[ -]", match.group(0)))
    return 13 <= len(digits) <= 19 and len(separators) <= 1 and luhn_valid(digits)


def _ssn(match: re.Match) -> bool:
    """The numbers the US Social Security Administration issues: area 001-899 except 666, group and serial
    not all zeros."""
    area, group, serial = match.group(0).split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


VERSION_BEFORE = re.compile(r"(?i)(?:version\W{0,3}|\bv)\Z")


def _ipv4(match: re.Match, public_only: bool) -> bool:
    """datatrove's check (a valid address, public unless told otherwise); a four-part version is not an address
    (`version 1.2.3.4`, `AssemblyVersion("4.8.0.0")`, `v1.2.3.4`)."""
    if VERSION_BEFORE.search(match.string[max(0, match.start() - 20) : match.start()]):
        return False
    return public_ip_validator(match.group(0), public_only)


def _ipv6(match: re.Match, public_only: bool) -> bool:
    try:
        address = ipaddress.ip_address(match.group(0))
    except ValueError:
        return False
    return address.version == 6 and (address.is_global or not public_only)


NORTH_AMERICAN = ([3, 3, 4], [1, 3, 3, 4])  # 555-123-4567, 1 555 123 4567


def _phone(match: re.Match) -> bool:
    """Shaped like a phone number: 9-15 digits, and a `+`/`(` prefix, the North American 3-3-4 groups, or a trunk
    prefix (a first group of 2-5 digits starting with 0, not all zeros: 030 1234 5678, 03-5841-1234). Lists of numbers
    (`512 1024 2048`), CVE ids (2021-44228), build numbers and coordinates have none of these."""
    text = match.group(0)
    groups = re.findall(r"\d+", text)
    if not 9 <= sum(map(len, groups)) <= 15:
        return False
    if text.startswith(("+", "(")):
        return True
    if [len(group) for group in groups] in NORTH_AMERICAN:
        return True
    return 2 <= len(groups[0]) <= 5 and groups[0].startswith("0") and groups[0].strip("0") != ""


class PIIScanner:
    """Finds emails, payment card numbers, US social security numbers, IP addresses and phone numbers, and
    redacts them. Only public IP addresses count by default: private ones identify no one."""

    def __init__(self, kinds: list[str], public_ips_only: bool = True):
        unknown = set(kinds) - set(PII_KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {', '.join(PII_KINDS)}")
        self.kinds = [kind for kind in PII_KINDS if kind in kinds]
        ip_checks = [(IPV4, functools.partial(_ipv4, public_only=public_ips_only)),
                     (IPV6, functools.partial(_ipv6, public_only=public_ips_only))]  # fmt: skip
        checks = {"email": [(EMAIL, _email)], "credit_card": [(CREDIT_CARD, _card)], "ssn": [(SSN, _ssn)],
                  "ip": ip_checks, "phone": [(PHONE, _phone)]}  # fmt: skip
        self.passes = [(kind, pattern, check) for kind in self.kinds for pattern, check in checks[kind]]

    def scan(self, text: str) -> tuple[str, list[tuple[str, str]]]:
        """The text with each PII match replaced by its placeholder, and the (kind, matched text) replaced."""
        found: list[tuple[str, str]] = []
        for kind, pattern, check in self.passes:

            def replace(match: re.Match, kind=kind, check=check) -> str:
                if not check(match):
                    return match.group(0)
                found.append((kind, match.group(0)))
                return PLACEHOLDERS[kind]

            text = pattern.sub(replace, text)
        return text, found

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """The text with PII replaced by placeholders, and the number of matches per kind."""
        text, found = self.scan(text)
        return text, dict(Counter(kind for kind, _ in found))

    def find(self, text: str) -> list[tuple[str, str]]:
        """(kind, matched text) of every PII match, in the order the kinds are checked."""
        return self.scan(text)[1]


class PIIRedactor(BaseFormatter):
    """Replaces PII by placeholders (`<EMAIL>`, `<IP_ADDRESS>`, `<PHONE_NUMBER>`, `<CREDIT_CARD>`, `<SSN>`)."""

    name = "📞 PII redaction"

    def __init__(self, kinds: list[str], public_ips_only: bool = True):
        super().__init__()
        self.scanner = PIIScanner(kinds, public_ips_only)

    def format(self, text: str) -> str:
        text, counts = self.scanner.redact(text)
        for kind, count in counts.items():
            self.stat_update(f"redacted_{kind}", value=count)
        if counts:
            self.stat_update("documents_redacted")
        return text


class PIIFilter(BaseFilter):
    """Drops every document that contains PII (the `--pii drop` policy)."""

    name = "📞 PII filter"

    def __init__(
        self, kinds: list[str], public_ips_only: bool = True, exclusion_writer: JsonlWriter | None = None
    ):
        super().__init__(exclusion_writer)
        self.scanner = PIIScanner(kinds, public_ips_only)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        _, counts = self.scanner.redact(doc.text)
        if counts:
            return False, "contains_" + "_and_".join(sorted(counts))
        return True
