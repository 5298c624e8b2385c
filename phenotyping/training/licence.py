"""A data set's licence, as recorded in a model card: detected from a LICENSE file or given, with a copyleft note.

:func:`data_licence` is what ``train`` writes into ``card["training"]``; :func:`detect_licence` names a licence text
by its SPDX-style id and :func:`licence_terms` says what the card notes about it (a note, not legal advice).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

# Licences whose terms require derived works to be shared under the same licence (strong or weak copyleft,
# share-alike), matched against SPDX-style ids.
_COPYLEFT = r"^(A|L)?GPL|^MPL|^EUPL|^ODbL|^CC-BY(-NC)?-SA"
_SPDX_IN_TEXT = (r"\b((?:A|L)?GPL-\d\.\d(?:-only|-or-later)?|Apache-2\.0|MPL-2\.0|EUPL-1\.[12]|BSD-[234]-Clause|"
                 r"MIT|ISC|CC0-1\.0|CC-BY(?:-NC)?(?:-SA|-ND)?-\d\.\d|ODbL-1\.0|Unlicense|PSF-2\.0)(?![\w.-])")
_GNU_FAMILY = {"": "GPL", "AFFERO ": "AGPL", "LESSER ": "LGPL", "LIBRARY ": "LGPL"}


def _gnu_id(kind: str, version: str, suffix: str = "") -> str:
    return f"{_GNU_FAMILY[kind or '']}-{version if '.' in version else version + '.0'}{suffix}"


def detect_licence(text: str) -> str | None:
    """The SPDX-style identifier of a licence text (``"GPL-3.0"``, ``"BSD-3-Clause"``, ``"MIT"``…), or None.

    Recognises an ``SPDX-License-Identifier:`` line, the GNU licences by their title block ("GNU GENERAL PUBLIC
    LICENSE / Version 3, 29 June 2007") or their "either version N … or any later version" notice, Apache, MPL, EUPL,
    PSF, BSD 2/3/4-clause, MIT, ISC, the Unlicense, CC0, the Creative Commons BY family and ODbL. A file that bundles
    several licences (numpy's, scipy's) is identified by the one that comes first. A plain GNU licence text cannot say
    "only" or "or later", so it comes back as e.g. ``GPL-3.0``.
    """
    import re

    up = " ".join(text.split()).upper()
    found: list[tuple[int, str]] = []

    def first(pattern: str, make: Callable[[re.Match[str]], str]) -> None:
        m = re.search(pattern, up)
        if m:
            found.append((m.start(), make(m)))

    m = re.search(r"SPDX-LICENSE-IDENTIFIER:\s*([A-Z0-9.+-]+)", up)
    if m:
        raw = re.search(r"SPDX-License-Identifier:\s*([A-Za-z0-9.+-]+)", text, re.IGNORECASE)
        found.append((m.start(), raw.group(1) if raw else m.group(1)))
    first(r"GNU (AFFERO |LESSER |LIBRARY )?GENERAL PUBLIC LICENSE,? VERSION (\d(?:\.\d)?), (?:\d{1,2} )?[A-Z]+ \d{4}",
          lambda m: _gnu_id(m.group(1), m.group(2)))
    first(r"GNU (AFFERO |LESSER |LIBRARY )?GENERAL PUBLIC LICENSE AS PUBLISHED BY THE FREE SOFTWARE FOUNDATION, "
          r"EITHER VERSION (\d(?:\.\d)?) OF THE LICENSE, OR \(AT YOUR OPTION\) ANY LATER VERSION",
          lambda m: _gnu_id(m.group(1), m.group(2), "-or-later"))
    first(r"APACHE LICENSE,? VERSION (\d\.\d)", lambda m: f"Apache-{m.group(1)}")
    first(r"MOZILLA PUBLIC LICENSE,? VERSION (\d\.\d)", lambda m: f"MPL-{m.group(1)}")
    first(r"EUROPEAN UNION PUBLIC LICEN[CS]E,? V(?:ERSION|\.) ?(\d\.\d)", lambda m: f"EUPL-{m.group(1)}")
    first(r"PYTHON SOFTWARE FOUNDATION LICENSE,? VERSION 2", lambda m: "PSF-2.0")
    first(r"CC0 1\.0 UNIVERSAL", lambda m: "CC0-1.0")
    parts = {"-NONCOMMERCIAL": "-NC", "-SHAREALIKE": "-SA", "-NODERIVATIVES": "-ND", "-NODERIVS": "-ND"}
    if "CREATIVE COMMONS" in up:
        first(r"ATTRIBUTION((?:-NONCOMMERCIAL)?(?:-SHAREALIKE|-NODERIVATIVES|-NODERIVS)?) (\d\.\d)",
              lambda m: f"CC-BY{''.join(parts[p] for p in re.findall(r'-[A-Z]+', m.group(1)))}-{m.group(2)}")
    first(r"OPEN DATABASE LICEN[CS]E", lambda m: "ODbL-1.0")

    def bsd(m: re.Match[str]) -> str:
        window = up[m.start():m.start() + 2000]
        if "ALL ADVERTISING MATERIALS MENTIONING" in window:
            return "BSD-4-Clause"
        if re.search(r"NEITHER THE NAMES? OF|NAMES? OF (ITS|THE|ANY) CONTRIBUTORS MAY NOT", window):
            return "BSD-3-Clause"
        return "BSD-2-Clause"

    first(r"REDISTRIBUTION AND USE IN SOURCE AND BINARY FORMS", bsd)
    first(r"PERMISSION IS HEREBY GRANTED, FREE OF CHARGE, TO ANY PERSON OBTAINING A COPY", lambda m: "MIT")
    first(r"PERMISSION TO USE, COPY, MODIFY, AND(?:/OR)? DISTRIBUTE THIS SOFTWARE FOR ANY PURPOSE", lambda m: "ISC")
    first(r"FREE AND UNENCUMBERED SOFTWARE RELEASED INTO THE PUBLIC DOMAIN", lambda m: "Unlicense")
    return min(found)[1] if found else None


def licence_terms(spdx: str | None) -> dict[str, Any]:
    """What the card states about a data licence: ``{"spdx", "copyleft", "note"}`` (a note, not legal advice)."""
    import re

    copyleft = bool(spdx) and re.match(_COPYLEFT, spdx, re.IGNORECASE) is not None
    note = None
    if copyleft:
        note = (f"The training data are licensed under {spdx}, a copyleft (share-alike) licence. These weights were "
                "trained on those data; whether the licence's terms extend to the weights or to their redistribution "
                "is not settled here: check before sharing them. This is a note, not legal advice.")
    elif spdx and "-NC" in spdx.upper():
        note = (f"The training data are licensed under {spdx}, which restricts commercial use; check whether that "
                "affects these weights before using them commercially. This is a note, not legal advice.")
    return {"spdx": spdx, "copyleft": copyleft, "note": note}


def _licence(manifest: Path) -> tuple[str, str | None]:
    """The data licence for the card: (text, SPDX id or None), from a LICENSE file beside the manifest or above."""
    base = manifest if manifest.is_dir() else manifest.parent
    for d in (base, base.parent):
        for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt", "COPYING"):
            f = d / name
            if f.is_file():
                text = f.read_text(errors="replace")
                spdx = detect_licence(text)
                if spdx is None:
                    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
                    return f"unrecognised licence text starting {first[:60]!r} (from {f}; pass --data-licence)", None
                return f"{spdx} (from {f})", spdx
    return "unknown: no LICENSE file beside the manifest (pass --data-licence)", None


def data_licence(manifest: Path, given: str | None = None) -> tuple[str, dict[str, Any]]:
    """The card's data licence: (text, :func:`licence_terms`), from ``given`` (``--data-licence``) when set, else
    from a LICENSE file beside the manifest or above it."""
    if given:
        import re

        found = re.search(_SPDX_IN_TEXT, given, re.IGNORECASE)
        text, spdx = given, found.group(1) if found else detect_licence(given)
    else:
        text, spdx = _licence(manifest)
    return text, licence_terms(spdx)
