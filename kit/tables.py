"""Fixed-width text tables, the one layout `kit status` and `kit merge` print.

    print(text_table(["model", "eval_loss"], [["base", "2.0000"], ["merged", "1.5000"]], right={1}))

Columns are as wide as their widest cell, two spaces apart; numbers read best
right-aligned (`right` names those columns). Trailing spaces are trimmed.
"""

from __future__ import annotations


def text_table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    """The header line, then one line per row."""
    table = [list(header)] + [list(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return [
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in table
    ]
