#!/usr/bin/env python3
"""Assembles the update scripts to this version from the same definitions a fresh install runs.

    scripts/update-script.py INSTALL_SQL [--check]

INSTALL_SQL is this version's install script as pgrx generated it (cargo pgrx install puts it
in PostgreSQL's share/extension directory). As TimescaleDB does, every older version gets one
script straight to this version (the version in Cargo.toml): sql/event_store--OLD--CURRENT.sql
is the per-version parts sql/updates/A--B.sql from OLD to CURRENT, in order, then every
function, aggregate, view, trigger, comment, grant and DO block of the install script,
functions, aggregates and views as CREATE OR REPLACE, triggers as CREATE OR REPLACE TRIGGER,
so that a definition exists once, in sql/ or src/.

A per-version part holds only what the definitions cannot redo: tables, indexes, sequences,
policies, data, moves, the drops of functions whose signature changed, and privileges taken
away. It runs before any definition of the new version exists, so it must not call one;
triggers are definitions, so a table's trigger is created after the function it calls.
Left out of the definitions: those, and statements whose leading comment says "Install only".

Writes the scripts, or with --check fails when one is not current (its statements are not
those assembled now, in any order: pgrx orders independent definitions differently from build
to build; tests/upgrade.rs runs the files as committed) or when sql/ holds an update script
this one does not write (PostgreSQL would still find a path through it).
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


KEEP = re.compile(r"(CREATE\s+(FUNCTION|AGGREGATE|VIEW|TRIGGER)|COMMENT\s+ON|GRANT|REVOKE|DO)\b", re.I)


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
        out.append(re.sub(r"^CREATE\s+(FUNCTION|AGGREGATE|VIEW|TRIGGER)\b", r"CREATE OR REPLACE \1", text, flags=re.I))
    return out


def current_version():
    return re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)


def chains(current):
    """For every version with a per-version part, the parts from it to the current version."""
    step = {}
    for f in sorted((ROOT / "sql" / "updates").glob("*--*.sql")):
        old, new = f.stem.split("--")
        if old in step:
            sys.exit(f"two updates from {old}: {step[old].name} and {f.name}")
        step[old] = f
    out = {}
    for old in step:
        parts, v = [], old
        while v != current:
            if v not in step or len(parts) > len(step):
                sys.exit(f"no chain of sql/updates/ files from {old} to {current}")
            parts.append(step[v])
            v = step[v].stem.split("--")[1]
        out[old] = parts
    return out


# First, before any other lock: every transaction of the projection worker starts with a
# share lock on this table (src/projections/worker.rs), so the update waits for the one in
# progress and the next waits for the update, neither holding a table the other needs next.
LOCK = """
-- Waits for the projection worker's transaction in progress and holds back its next.
DO $$
BEGIN
    IF pg_catalog.to_regclass('_event_store.es_projection_state') IS NOT NULL THEN
        LOCK TABLE _event_store.es_projection_state IN ACCESS EXCLUSIVE MODE;
    ELSE -- before 0.3.0
        LOCK TABLE @extschema@.es_projection_state IN ACCESS EXCLUSIVE MODE;
    END IF;
END $$;
"""


def head(old, current, parts):
    """The per-version parts, before the definitions."""
    text = (f"-- event_store {old} -> {current}, assembled by scripts/update-script.py: edit the sources,\n"
            "-- sql/updates/ and the definitions in sql/ and src/, not this file.\n" + LOCK)
    for f in parts:
        text += f"\n-- {f.relative_to(ROOT)}\n" + f.read_text().rstrip("\n") + "\n"
    return text + "\n-- The definitions of the install script.\n"


def main():
    install = sys.argv[1]
    wanted = definitions(Path(install).read_text())
    current = current_version()
    scripts = {}
    for old, parts in chains(current).items():
        scripts[ROOT / "sql" / f"event_store--{old}--{current}.sql"] = head(old, current, parts)
    if "--check" in sys.argv[2:]:
        for target, first in scripts.items():
            text = target.read_text() if target.exists() else ""
            if not text.startswith(first) or sorted(s.strip() for s in statements(text[len(first):])) != sorted(wanted):
                sys.exit(f"{target.relative_to(ROOT)} is not current: run scripts/update-script.py {install}")
        for stale in set((ROOT / "sql").glob("event_store--*--*.sql")) - set(scripts):
            sys.exit(f"{stale.relative_to(ROOT)} is not written by scripts/update-script.py: git rm it")
        return
    for target, first in scripts.items():
        target.write_text(first + "\n".join(wanted) + "\n")


if __name__ == "__main__":
    main()
