"""A GNU info manual (the Python docs' ``python3.11.info``) cut into documents: ``info_documents``.

An info file is a tree of nodes (manual -> chapter -> section -> ...; each node names its parent
in its ``Up:`` field). A *document* is a node at depth 3 (``Top``
is depth 0, a manual such as "The Python Standard Library" depth 1, a chapter such as "Text
Processing Services" depth 2, a module page such as "string — Common string operations" depth 3)
together with all its descendants; a node at depth 1 or 2 is a document holding its own text only.
Each node's text drops its ``File: ... Node: ...`` header line and its ``* Menu:`` block (a table
of contents; footnotes after it are kept). Left out: ``Top`` (the table of contents) and the two
index manuals ``Index`` and ``Python Module Index`` (lists of references, not prose), and the info
tag table. A document's text is its nodes' texts joined, separated by a blank line.
"""

from __future__ import annotations

import re
from pathlib import Path

from serpent_ssm.data.errors import DataFormatError

__all__ = ["INFO_NAME", "info_documents"]

INFO_NAME = "python3.11.info"
# python-docs: info nodes left out, and the depth whose subtrees become documents
_INFO_SKIP = ("Top", "Index", "Python Module Index")
_DOC_DEPTH = 3
_NODE_HEADER = re.compile(r"File: [^,\n]*,\s+Node: (?P<node>[^,\n]*)(?P<rest>[^\n]*)\n")
_UP = re.compile(r",\s+Up: (?P<up>[^,\n]*)")
_FOOTNOTES = "\n   ---------- Footnotes ----------\n"


def info_documents(text: str, path: str | Path = INFO_NAME) -> list[dict]:
    """Cut a GNU info file into documents (see the module docstring): a list, in file order, of
    ``{"manual", "node", "ancestors", "text"}``; ``ancestors`` runs from the manual down."""
    nodes = []  # (name, up, body)
    for chunk in text.split("\x1f\n")[1:]:
        m = _NODE_HEADER.match(chunk)
        if m is None:  # the tag table, the local variables
            continue
        up = _UP.search(m.group("rest"))
        body = chunk[m.end() :]
        start = body.find("* Menu:\n")
        if start == 0 or (start > 0 and body[start - 1] == "\n"):
            foot = body.find(_FOOTNOTES, start)
            body = body[:start] + (body[foot + 1 :] if foot >= 0 else "")
        nodes.append((m.group("node").strip(), up.group("up").strip() if up else None, body.strip("\n")))
    if not nodes:
        raise DataFormatError(path, "expected GNU info nodes (\\x1f then 'File: ..., Node: ...'), found none")
    parent = {n: u for n, u, _ in nodes}
    docs: list[dict] = []
    by_root: dict[str, dict] = {}
    for name, _, body in nodes:
        chain = [name]  # name, parent, ..., Top
        while chain[-1] != "Top":
            up = parent.get(chain[-1])
            if up is None or up in chain or up not in parent:
                raise DataFormatError(path, f"node {chain[-1]!r} does not lead up to Top (Up: {up!r})")
            chain.append(up)
        chain.reverse()  # Top, manual, chapter, ...
        if name in _INFO_SKIP or chain[1] in _INFO_SKIP:
            continue
        root = chain[min(_DOC_DEPTH, len(chain) - 1)]
        if root not in by_root:
            by_root[root] = {
                "manual": chain[1],
                "node": root,
                "ancestors": chain[1 : chain.index(root)],
                "parts": [],
            }
            docs.append(by_root[root])
        if body:
            by_root[root]["parts"].append(body)
    for d in docs:
        d["text"] = "\n\n".join(d.pop("parts")) + "\n"
    return docs
