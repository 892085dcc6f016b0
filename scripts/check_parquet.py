#!/usr/bin/env python3
"""Check that a cortexflow Parquet file reads back in Python as its schema JSON declares.

Input:  FILE (a Parquet file) and SCHEMA_JSON (data-schemas/{table}.json), plus the run-time
        sizes of symbolic list columns, e.g. --list-size d_model=768; more pairs with
        --also FILE SCHEMA_JSON (one Python start for many tables).
Output: one line "OK ..." per file on stdout and exit 0; otherwise one line per problem on stderr
        (column, expected, found) and a non-zero exit:
          1  the file does not match the schema
          2  bad command line or unreadable schema JSON
          3  pyarrow or polars is not installed (run `make setup`)
          4  the file cannot be read by pyarrow or polars

The file is read twice, with pyarrow and with polars; both must see the declared column names
(in order), types and row count. Nullability is checked against pyarrow's schema, and columns
declared not null must hold no nulls in either reader.
"""

import argparse
import json
import sys

SCALARS = ("utf8", "bool", "u16", "u32", "u64", "i32", "i64", "f32", "f64")


def fail(code, message):
    print(f"check_parquet: {message}", file=sys.stderr)
    sys.exit(code)


try:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import polars as pl
except ImportError as e:  # pragma: no cover - depends on the environment
    fail(3, f"cannot import pyarrow/polars ({e}); run `make setup` to create .venv with them")


def scalar_types(name):
    """(pyarrow type, polars dtype) for a scalar type name of the schema JSON."""
    return {
        "utf8": (pa.string(), pl.String),
        "bool": (pa.bool_(), pl.Boolean),
        "u16": (pa.uint16(), pl.UInt16),
        "u32": (pa.uint32(), pl.UInt32),
        "u64": (pa.uint64(), pl.UInt64),
        "i32": (pa.int32(), pl.Int32),
        "i64": (pa.int64(), pl.Int64),
        "f32": (pa.float32(), pl.Float32),
        "f64": (pa.float64(), pl.Float64),
    }[name]


def expected_types(column, sizes):
    """(pyarrow type, polars dtype, description) the column should read back as."""
    kind = column["type"]
    if kind in SCALARS:
        arrow_type, polars_type = scalar_types(kind)
        return arrow_type, polars_type, kind
    if kind.startswith("fixed_size_list<") and kind.endswith(">"):
        item = kind[len("fixed_size_list<") : -1].strip()
        if item not in SCALARS:
            fail(2, f"column `{column['name']}`: unknown list item type `{item}`")
        size = column.get("list_size")
        if isinstance(size, str):
            if size not in sizes:
                fail(2, f"column `{column['name']}`: list size `{size}` not given; pass --list-size {size}=N")
            size = sizes[size]
        if not isinstance(size, int) or size <= 0:
            fail(2, f"column `{column['name']}`: list_size must be a positive number, found {size!r}")
        item_arrow, item_polars = scalar_types(item)
        return pa.list_(item_arrow, size), pl.Array(item_polars, size), f"{kind}[{size}]"
    fail(2, f"column `{column['name']}`: unknown type `{kind}`")


def same_arrow_type(expected, found):
    """Type equality that ignores the item field name/nullability of fixed-size lists."""
    if pa.types.is_fixed_size_list(expected):
        return (
            pa.types.is_fixed_size_list(found)
            and found.list_size == expected.list_size
            and found.value_type == expected.value_type
        )
    return expected == found


def parse_sizes(pairs):
    sizes = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value.isdigit() or int(value) <= 0:
            fail(2, f"--list-size expects NAME=POSITIVE_INT, found `{pair}`")
        sizes[name] = int(value)
    return sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", help="Parquet file to check")
    parser.add_argument("schema_json", help="table schema, e.g. data-schemas/words.json")
    parser.add_argument(
        "--list-size",
        action="append",
        default=[],
        metavar="NAME=N",
        help="run-time size of a symbolic list size, e.g. d_model=768 (repeatable)",
    )
    parser.add_argument("--rows", type=int, default=None, help="expected number of rows")
    parser.add_argument(
        "--also",
        action="append",
        nargs=2,
        default=[],
        metavar=("FILE", "SCHEMA_JSON"),
        help="another file and its schema, checked the same way (repeatable)",
    )
    args = parser.parse_args()
    sizes = parse_sizes(args.list_size)
    for file, schema_json in [(args.file, args.schema_json)] + args.also:
        check(file, schema_json, sizes, args.rows)


def check(file, schema_json, sizes, rows):
    try:
        with open(schema_json, encoding="utf-8") as f:
            schema = json.load(f)
        table = schema["table"]
        columns = schema["columns"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(2, f"cannot read schema {schema_json}: {e!r}")

    try:
        arrow_table = pq.read_table(file)
        metadata = pq.read_metadata(file).metadata or {}
    except Exception as e:  # pyarrow raises several types
        fail(4, f"pyarrow cannot read {file}: {e}")
    try:
        frame = pl.read_parquet(file)
    except Exception as e:
        fail(4, f"polars cannot read {file}: {e}")

    problems = []
    where = f"{file} (table `{table}`)"
    expected_names = [c["name"] for c in columns]
    if arrow_table.column_names != expected_names:
        problems.append(f"pyarrow columns: expected {expected_names}, found {arrow_table.column_names}")
    if frame.columns != expected_names:
        problems.append(f"polars columns: expected {expected_names}, found {frame.columns}")

    for column in columns:
        name = column["name"]
        arrow_type, polars_type, described = expected_types(column, sizes)
        if name in arrow_table.column_names:
            field = arrow_table.schema.field(name)
            if not same_arrow_type(arrow_type, field.type):
                problems.append(f"column `{name}`: expected {described} (pyarrow {arrow_type}), pyarrow found {field.type}")
            if field.nullable != column["nullable"]:
                problems.append(
                    f"column `{name}`: expected nullable={column['nullable']}, pyarrow found nullable={field.nullable}"
                )
            nulls = arrow_table.column(name).null_count
            if not column["nullable"] and nulls:
                problems.append(f"column `{name}`: declared not null, pyarrow found {nulls} nulls")
        if name in frame.columns:
            dtype = frame.schema[name]
            if dtype != polars_type:
                problems.append(f"column `{name}`: expected {described} (polars {polars_type}), polars found {dtype}")
            nulls = frame[name].null_count()
            if not column["nullable"] and nulls:
                problems.append(f"column `{name}`: declared not null, polars found {nulls} nulls")

    if rows is not None and arrow_table.num_rows != rows:
        problems.append(f"row count: expected {rows}, found {arrow_table.num_rows}")
    if arrow_table.num_rows != frame.height:
        problems.append(f"row count: pyarrow read {arrow_table.num_rows}, polars read {frame.height}")

    stored_table = metadata.get(b"cortexflow.schema")
    if stored_table is not None and stored_table.decode() != table:
        problems.append(f"metadata cortexflow.schema: expected `{table}`, found `{stored_table.decode()}`")
    version = metadata.get(b"cortexflow.version", b"?").decode()

    if problems:
        for problem in problems:
            print(f"check_parquet: {where}: {problem}", file=sys.stderr)
        fail(1, f"{where}: {len(problems)} problem(s)")

    print(
        f"OK {file}: table `{table}`, {len(columns)} columns, {arrow_table.num_rows} rows "
        f"(cortexflow {version}; pyarrow {pa.__version__}, polars {pl.__version__})"
    )


if __name__ == "__main__":
    main()
