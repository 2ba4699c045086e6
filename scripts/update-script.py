#!/usr/bin/env python3
"""Assembles the update script to this version from the same definitions a fresh install runs.

    scripts/update-script.py INSTALL_SQL [--check]

INSTALL_SQL is this version's install script as pgrx generated it (cargo pgrx install puts it
in PostgreSQL's share/extension directory). The update script is sql/updates/FROM--TO.sql
(only what a fresh install does differently: moves, table and data changes), then every
function, aggregate, view, comment, grant and DO block of the install script, functions,
aggregates and views as CREATE OR REPLACE, so that a definition exists once, in sql/ or
src/. Left out: tables, indexes, sequences, triggers, policies, schemas and data, which the
per-version part handles, and statements whose leading comment says "Install only".
Writes sql/event_store--FROM--TO.sql, or with --check fails when that file is not current:
when its statements are not those assembled now, in any order (pgrx orders independent
definitions differently from build to build; tests/upgrade.rs runs the file as committed).
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FROM, TO = "0.2.0", "0.3.0"


def statements(sql):
    """Top-level statements with their leading comments: `;` ends one outside quotes,
    comments, dollar quotes and SQL-standard BEGIN ATOMIC ... END bodies (whose CASE ... END
    are counted so that their END does not end the body)."""
    out, start, i, n = [], 0, 0, len(sql)
    atomic, case_depth = False, 0
    word = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            i = sql.find("\n", i)
            i = n if i < 0 else i + 1
        elif sql.startswith("/*", i):
            i = sql.index("*/", i) + 2
        elif c == "'":
            i += 1
            while True:
                j = sql.index("'", i)
                if sql.startswith("''", j):
                    i = j + 2
                else:
                    i = j + 1
                    break
        elif c == '"':
            i = sql.index('"', i + 1) + 1
        elif c == "$" and re.match(r"\$[A-Za-z_]*\$", sql[i:]):
            tag = re.match(r"\$[A-Za-z_]*\$", sql[i:]).group(0)
            i = sql.index(tag, i + len(tag)) + len(tag)
        elif c.isalpha() or c == "_":
            w = word.match(sql, i).group(0)
            up = w.upper()
            if up == "ATOMIC" and re.search(r"BEGIN\s+$", sql[start:i], re.I):
                atomic, case_depth = True, 0
            elif atomic and up == "CASE":
                case_depth += 1
            elif atomic and up == "END":
                if case_depth:
                    case_depth -= 1
                else:
                    atomic = False
            i += len(w)
        elif c == ";" and not atomic:
            out.append(sql[start : i + 1])
            start = i = i + 1
        else:
            i += 1
    return out


KEEP = re.compile(r"(CREATE\s+(FUNCTION|AGGREGATE|VIEW)|COMMENT\s+ON|GRANT|REVOKE|DO)\b", re.I)


def body(stmt):
    """The statement without its leading comments and blank lines."""
    lines = stmt.lstrip("\n").split("\n")
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith(("--", "/*"))):
        lines.pop(0)
    return "\n".join(lines).strip()


def definitions(install_sql):
    """The install script's statements that the update runs again, in its order."""
    out = []
    for stmt in statements(install_sql):
        text = body(stmt)
        if not KEEP.match(text) or "install only" in stmt.lower():
            continue
        out.append(re.sub(r"^CREATE\s+(FUNCTION|AGGREGATE|VIEW)\b", r"CREATE OR REPLACE \1", text, flags=re.I))
    return out


def head():
    return (ROOT / "sql" / "updates" / f"{FROM}--{TO}.sql").read_text().rstrip("\n") + "\n\n"


def main():
    wanted = definitions(Path(sys.argv[1]).read_text())
    target = ROOT / "sql" / f"event_store--{FROM}--{TO}.sql"
    if "--check" in sys.argv[2:]:
        text = target.read_text() if target.exists() else ""
        if not text.startswith(head()) or sorted(s.strip() for s in statements(text[len(head()):])) != sorted(wanted):
            sys.exit(f"{target.relative_to(ROOT)} is not current: run scripts/update-script.py {sys.argv[1]}")
        return
    target.write_text(head() + "\n".join(wanted) + "\n")


if __name__ == "__main__":
    main()
