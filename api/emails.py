"""E-mail address validation and normalisation for contact identities.

Pragmatic syntax check only (no DNS, no quoted local parts, no IP-literal domains):
what real senders accept and what is safe to use as a lookup key. Addresses are
ASCII-only: internationalised domains must arrive in their punycode (``xn--``) form
and non-ASCII local parts (SMTPUTF8) are rejected. The whole address, local part
included, is lower-cased so that one mailbox maps to one contact.
"""

import re
from typing import Final

__all__ = ["InvalidEmail", "normalize_email"]

_MAX_ADDRESS: Final = 254  # RFC 5321 path limit minus the angle brackets
_MAX_LOCAL: Final = 64

_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# Dot-atoms: no leading, trailing or doubled dot.
_LOCAL_RE: Final = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# At least two labels; the top-level one is letters only (so punycode TLDs are refused).
_DOMAIN_RE: Final = re.compile(rf"(?:{_LABEL}\.)+[A-Za-z]{{2,63}}")


class InvalidEmail(ValueError):
    """The text is not an acceptable e-mail address."""


def normalize_email(raw: str) -> str:
    """Trim, validate and lower-case an address; raise ``InvalidEmail`` if unacceptable."""
    if not isinstance(raw, str):
        raise InvalidEmail("email must be a string")
    address = raw.strip()
    if len(address) > _MAX_ADDRESS:
        raise InvalidEmail("email is too long")
    local, at, domain = address.partition("@")
    if not at or "@" in domain:
        raise InvalidEmail("email must contain exactly one @")
    if len(local) > _MAX_LOCAL or not _LOCAL_RE.fullmatch(local):
        raise InvalidEmail("email has an invalid local part")
    if not _DOMAIN_RE.fullmatch(domain):
        raise InvalidEmail("email has an invalid domain")
    return address.lower()
