"""Many rows per statement (the SQLite writer's batches) write what executemany would."""

import sqlite3

from calltrackd.store.sqlite import _execute_rows


def test_rows_in_chunks_equal_executemany() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER, seen REAL)")
    rows = [(f"k{i % 140}", i, float(i)) for i in range(150)]  # 10 keys twice: later wins
    _execute_rows(conn, "INSERT OR REPLACE INTO t VALUES {values}", 3, rows)
    got = dict(conn.execute("SELECT k, v FROM t").fetchall())
    assert got == {k: v for k, v, _ in rows}
    assert len(got) == 140

    touches = [(f"k{i}", 1000.0 + i, 7) for i in range(0, 140, 3)] + [("nobody", 1.0, 1)]
    _execute_rows(conn, "UPDATE t SET seen = max(t.seen, u.column2), v = u.column3"
                        " FROM (VALUES {values}) AS u WHERE t.k = u.column1", 3, touches)
    assert conn.execute("SELECT seen, v FROM t WHERE k = 'k3'").fetchone() == (1003.0, 7)
    assert conn.execute("SELECT seen, v FROM t WHERE k = 'k4'").fetchone() == (144.0, 144)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (140,)  # no row for nobody

    _execute_rows(conn, "DELETE FROM t WHERE k IN (VALUES {values})", 1,
                  [(f"k{i}",) for i in range(100)])
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (40,)
    _execute_rows(conn, "DELETE FROM t WHERE k IN (VALUES {values})", 1, [])
