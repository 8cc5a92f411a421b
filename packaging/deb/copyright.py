#!/usr/bin/env python3
"""Write the package's debian/copyright (machine-readable format) to stdout.

    python3 packaging/deb/copyright.py SITE_PACKAGES

One paragraph for the launcher and one for every vendored distribution under
``SITE_PACKAGES/*.dist-info``, naming its version, its licence as its own metadata declares it
(``License-Expression``, else ``License`` or the licence classifiers) and the licence files
it ships, which are installed beside it. Standard library only.
"""

from __future__ import annotations

import sys
from email.parser import HeaderParser
from pathlib import Path

HEADER = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: nginx-manager-agent
Comment: The launcher's Python dependencies are vendored, unmodified, from their published
 wheels (pinned in packaging/requirements.lock). Each keeps its own licence; the full texts
 are in the .dist-info directories under /opt/nginx-manager-agent/venv/lib/python3.11/
 site-packages named below.

Files: opt/nginx-manager-agent/venv/lib/python3.11/site-packages/launcher/*
 opt/nginx-manager-agent/venv/lib/python3.11/site-packages/agent/*
 opt/nginx-manager-agent/agent
Copyright: 2025-2026 the nginx-manager-agent authors
License: proprietary
 The nginx-manager-agent project's own code; distributed under the terms its authors set.
"""


def licence(meta: dict[str, str], classifiers: list[str]) -> str:
    for key in ("License-Expression", "License"):
        text = (meta.get(key) or "").strip()
        if text and "\n" not in text and len(text) < 80:
            return text
    named = [c.split("::")[-1].strip() for c in classifiers if c.startswith("License ::")]
    return " or ".join(named) or "see the licence files"


def main(site: Path) -> int:
    out = [HEADER]
    for info in sorted(site.glob("*.dist-info"), key=lambda p: p.name.lower()):
        msg = HeaderParser().parsestr((info / "METADATA").read_text(encoding="utf-8"))
        name, version = msg["Name"], msg["Version"]
        if name == "nginx-manager-agent":
            continue
        files = sorted(p.relative_to(info).as_posix() for p in info.rglob("*")
                       if p.is_file() and ("licen" in p.name.lower() or "copying" in p.name.lower()
                                           or p.parent.name == "licenses"))
        out.append(
            f"Files: opt/nginx-manager-agent/venv/lib/python3.11/site-packages/{info.name}/*\n"
            f"Copyright: the {name} authors\n"
            f"License: {licence(dict(msg.items()), msg.get_all('Classifier') or [])}\n"
            f" {name} {version}, vendored from its wheel. Licence files shipped:\n"
            + "".join(f" {info.name}/{f}\n" for f in files or ["(none in the wheel)"]))
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
