"""The one table writer: Markdown, aligned text and CSV from the same rows and columns."""

import csv as csvlib
import io

from alexnet import tables


def test_one_table_writer_for_markdown_text_and_csv():
    rows = [{"name": "alexnet", "acc": 0.91234, "ms": 12.0}, {"name": "lenet", "acc": 0.8, "note": "slow"}]
    cols = [
        tables.Column("name", left=True),
        tables.Column("acc", "test acc", "{:.3f}"),
        tables.Column("ms"),
        tables.Column("note", fmt=str.upper, left=True),
        tables.Column("unused"),
    ]
    cols = tables.present(cols, rows)
    assert tables.markdown(rows, cols).splitlines() == [
        "| name | test acc | ms | note |",
        "|---|---:|---:|---|",
        "| alexnet | 0.912 | 12.0 |  |",
        "| lenet | 0.800 |  | SLOW |",
    ]
    assert tables.text(rows, cols).splitlines() == [
        "name     test acc    ms  note",
        "alexnet     0.912  12.0",
        "lenet       0.800        SLOW",
    ]
    parsed = list(csvlib.DictReader(io.StringIO(tables.csv(rows, cols))))
    assert parsed[0] == {"name": "alexnet", "acc": "0.91234", "ms": "12", "note": ""}  # raw values, not formatted
