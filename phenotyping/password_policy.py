"""What a password must not be: the rules of :func:`check_password_strength` (re-exported by :mod:`phenotyping.auth`).

The rules follow the spirit of NIST SP 800-63B section 5.1.1.2: a minimum length, no upper limit or composition
rules, and a refusal of values that are commonly used, repetitive or sequential, or built on context words such as
the username.
"""

from __future__ import annotations

import re
import string

MIN_PASSWORD_LENGTH = 10

#: Our own short list of the passwords (and context words) guessed first. Compared case-insensitively, with
#: whitespace removed and with digits and punctuation stripped from both ends ("Password123!" is "password").
COMMON_PASSWORDS = frozenset("""
password passw0rd p@ssw0rd p@ssword pass passwort motdepasse contrasena wachtwoord letmein welcome welcome1 admin
administrator root qwerty qwertyuiop qwertz qwertzuiop azerty azertyuiop asdfgh asdfghjkl zxcvbnm 1q2w3e4r 1q2w3e4r5t
1qaz2wsx zaq12wsx qazwsx qwe123 123456 1234567 12345678 123456789 1234567890 0987654321 987654321 111111 000000
123123 654321 666666 121212 112233 123321 abc123 abcdef abcdefgh abcdefghij iloveyou monkey dragon master shadow
sunshine princess football baseball basketball soccer hockey superman batman trustno1 whatever freedom hello
hellohello changeme changeit default secret topsecret login guest test testing tester user username computer
internet starwars pokemon charlie michael jennifer jordan hunter killer ninja mustang harley ranger buster thomas
summer winter spring autumn monday friday january december lovely flower cookie chocolate cheese pepper banana
orange purple silver golden diamond samsung google apple access
hospital laboratory research doctor nurse medicine patient clinic science biology haematology hematology
leukocyte leukocytes microscope specimen sample
""".split())

_EDGE = string.digits + string.punctuation + string.whitespace


def _weakness(text: str) -> str | None:
    """Why ``text`` is guessable (a common password, too few different characters, a run such as abcdef), or None."""
    core = re.sub(r"\s+", "", text.lower())
    if core in COMMON_PASSWORDS or core.strip(_EDGE) in COMMON_PASSWORDS:
        return "is one of the most common passwords (digits or punctuation added to it do not help)"
    if len(set(core)) < 5:
        return f"uses only {len(set(core))} different character(s)"
    steps = {ord(b) - ord(a) for a, b in zip(core, core[1:])}
    if steps in ({1}, {-1}):
        return "is a run of consecutive characters (like abcdef or 98765)"
    return None


def _name_parts(username: str, display_name: str) -> list[str]:
    """The lower-cased words of the username and display name worth refusing inside a password (3+ characters)."""
    words = [username.strip().lower(), *re.split(r"[^\w]+", display_name.lower()),
             re.sub(r"[^\w]+", "", display_name.lower())]
    return sorted({w for w in words if len(w) >= 3}, key=len, reverse=True)


def check_password_strength(password: str, *, username: str = "", display_name: str = "") -> None:
    """Refuse passwords that are guessed early: only spaces, shorter than :data:`MIN_PASSWORD_LENGTH`, in
    :data:`COMMON_PASSWORDS` (also with digits or punctuation at either end), of fewer than five different characters
    or a run such as ``abcdefghij``, or built on the username or display name (what is left once they are taken out
    must pass the same rules).

    Raises:
        ValueError: which rule failed and what to type instead (the message never repeats the password).
    """
    instead = "; a passphrase of three or four unrelated words is long and easy to remember"
    if not password.strip():
        raise ValueError(f"the password is empty or only spaces{instead}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters (got {len(password)})"
                         f"{instead}")
    why = _weakness(password)
    if why:
        raise ValueError(f"the password {why}{instead}")
    rest, used = password.lower(), []
    for part in _name_parts(username, display_name):
        if part in rest:
            rest, used = rest.replace(part, " "), [*used, part]
    if used:
        left = rest.strip(_EDGE)
        weak = _weakness(left)
        why = (f"only {len(left)} character(s) are left" if len(left) < MIN_PASSWORD_LENGTH
               else f"what is left {weak}" if weak else None)
        if why:
            names = ", ".join(repr(u) for u in used)
            raise ValueError(f"the password is built on the account's name ({names}): without it {why}; use three "
                             "or four unrelated words that are not your name")
