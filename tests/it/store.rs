//! Tests of `cortexflow::store`: schema JSON ↔ Arrow, Parquet / IPC round trips, atomic writes
//! that leave nothing behind on failure, and a read-back from Python (pyarrow and polars) via
//! `scripts/check_parquet.py`.
//!
//! The Python test needs pyarrow and polars: it uses `$CORTEXFLOW_PYTHON`, else
//! `<crate>/.venv/bin/python` if it exists, else `python3`, and fails (does not skip) when they
//! are missing: run `make setup`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, UInt16Array, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use cortexflow::store::{
    read_arrow_ipc, read_parquet, write_arrow_ipc_atomic, write_parquet_atomic, write_table_parquet, TableSchema,
    BUILTIN_TABLES, SCHEMA_KEY, SIZES_KEY, VERSION_KEY,
};
use cortexflow::Error;

const D_MODEL: i32 = 4;

fn sizes() -> HashMap<String, i32> {
    HashMap::from([("d_model".to_string(), D_MODEL)])
}

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A column of `rows` values of `data_type`; every second value is null when `nullable`
/// (so floats exercise nulls), distinct values otherwise.
fn tiny_column(data_type: &DataType, nullable: bool, rows: usize) -> ArrayRef {
    let valid = |i: usize| !nullable || i % 2 == 1;
    match data_type {
        DataType::Utf8 => Arc::new(StringArray::from_iter(
            (0..rows).map(|i| valid(i).then(|| format!("w{i}é"))),
        )),
        DataType::Boolean => Arc::new(BooleanArray::from_iter(
            (0..rows).map(|i| valid(i).then_some(i % 3 == 0)),
        )),
        DataType::UInt16 => Arc::new(UInt16Array::from_iter(
            (0..rows).map(|i| valid(i).then_some(i as u16 + 1)),
        )),
        DataType::UInt32 => Arc::new(UInt32Array::from_iter(
            (0..rows).map(|i| valid(i).then_some(i as u32 * 7)),
        )),
        DataType::UInt64 => Arc::new(UInt64Array::from_iter(
            (0..rows).map(|i| valid(i).then_some(u64::MAX - i as u64)),
        )),
        DataType::Int32 => Arc::new(Int32Array::from_iter(
            (0..rows).map(|i| valid(i).then_some(-(i as i32))),
        )),
        DataType::Int64 => Arc::new(Int64Array::from_iter(
            (0..rows).map(|i| valid(i).then_some(i as i64 - 5)),
        )),
        DataType::Float32 => Arc::new(Float32Array::from_iter(
            (0..rows).map(|i| valid(i).then_some(i as f32 * 0.5 + 0.25)),
        )),
        DataType::Float64 => Arc::new(Float64Array::from_iter(
            (0..rows).map(|i| valid(i).then_some(i as f64 * 1.5 + 0.125)),
        )),
        DataType::FixedSizeList(item, size) => {
            let values = tiny_column(item.data_type(), false, rows * *size as usize);
            let nulls = nullable.then(|| (0..rows).map(valid).collect());
            Arc::new(FixedSizeListArray::new(item.clone(), *size, values, nulls))
        }
        other => panic!("tiny_column: no generator for {other}"),
    }
}

fn tiny_batch(schema: &SchemaRef, rows: usize) -> RecordBatch {
    let columns = schema
        .fields()
        .iter()
        .map(|f| tiny_column(f.data_type(), f.is_nullable(), rows))
        .collect();
    RecordBatch::try_new(schema.clone(), columns).expect("tiny batch matches its schema")
}

/// Names of the entries in `dir`, sorted.
fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn words_schema() -> SchemaRef {
    Arc::new(TableSchema::builtin("words").unwrap().to_arrow(&sizes()).unwrap())
}

/// `schema` with column `name` replaced by `field`.
fn replace_field(schema: &Schema, name: &str, field: Field) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == name {
                field.clone()
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Schema::new(fields)
}

fn invalid_message(result: cortexflow::Result<()>) -> String {
    match result {
        Err(Error::Invalid(message)) => message,
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

#[test]
fn schema_files_equal_embedded_builtins() {
    for name in BUILTIN_TABLES {
        let from_file = TableSchema::load(name).unwrap();
        let builtin = TableSchema::builtin(name).unwrap();
        assert_eq!(
            from_file, builtin,
            "data-schemas/{name}.json differs from the embedded copy"
        );
        assert_eq!(builtin.table, *name);
    }
    // Every schema file in data-schemas/ is embedded (a new table must be added to BUILTINS).
    let files: Vec<String> = dir_entries(&TableSchema::source_dir())
        .into_iter()
        .filter_map(|f| f.strip_suffix(".json").map(str::to_string))
        .collect();
    let mut builtins: Vec<String> = BUILTIN_TABLES.iter().map(|s| s.to_string()).collect();
    builtins.sort();
    assert_eq!(files, builtins, "data-schemas/*.json vs BUILTIN_TABLES");
    assert!(TableSchema::builtin("nope").unwrap_err().to_string().contains("words"));
}

#[test]
fn builtin_schemas_have_the_declared_columns() {
    let words = TableSchema::builtin("words").unwrap();
    let names: Vec<&str> = words.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "story",
            "language",
            "word_index",
            "word",
            "onset_s",
            "offset_s",
            "n_tokens",
            "first_token",
            "surprisal_bits",
            "entropy_bits"
        ]
    );
    let arrow = words.to_arrow(&HashMap::new()).unwrap();
    assert_eq!(
        arrow.field_with_name("onset_s").unwrap().data_type(),
        &DataType::Float64
    );
    assert!(arrow.field_with_name("onset_s").unwrap().is_nullable());
    assert_eq!(
        arrow
            .field_with_name("onset_s")
            .unwrap()
            .metadata()
            .get("unit")
            .map(String::as_str),
        Some("s")
    );
    assert_eq!(
        arrow.field_with_name("surprisal_bits").unwrap().data_type(),
        &DataType::Float32
    );
    assert!(!arrow.field_with_name("word_index").unwrap().is_nullable());
    assert_eq!(arrow.metadata().get(SCHEMA_KEY).map(String::as_str), Some("words"));

    let activations = TableSchema::builtin("activations").unwrap();
    assert_eq!(activations.symbolic_sizes(), ["d_model"]);
    let arrow = activations.to_arrow(&sizes()).unwrap();
    assert_eq!(arrow.field_with_name("layer").unwrap().data_type(), &DataType::UInt16);
    match arrow.field_with_name("activation").unwrap().data_type() {
        DataType::FixedSizeList(item, size) => {
            assert_eq!(*size, D_MODEL);
            assert_eq!(item.data_type(), &DataType::Float32);
        }
        other => panic!("activation: expected FixedSizeList, found {other}"),
    }
    // A missing symbolic size is named in the error.
    let err = activations.to_arrow(&HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("d_model") && err.contains("activation"), "{err}");
}

#[test]
fn schema_json_is_validated() {
    let origin = Path::new("test.json");
    let parse = |json: &str| TableSchema::from_json_str(json, origin);
    let ok = r#"{"table": "t", "description": "d", "columns": [
        {"name": "v", "type": "fixed_size_list<f32>", "list_size": 3, "nullable": false, "unit": null, "description": "x"}]}"#;
    let table = parse(ok).unwrap();
    let arrow = table.to_arrow(&HashMap::new()).unwrap();
    assert!(matches!(arrow.field(0).data_type(), DataType::FixedSizeList(_, 3)));
    // Round trip through serde keeps the schema.
    let again = parse(&serde_json::to_string(&table).unwrap()).unwrap();
    assert_eq!(again, table);

    let cases = [
        (
            r#"{"table": "t", "description": "d", "extra": 1, "columns": []}"#,
            "extra",
        ),
        (
            r#"{"table": "t", "description": "d", "columns": [{"name": "a", "type": "f16", "nullable": true, "description": ""}]}"#,
            "f16",
        ),
        (
            r#"{"table": "t", "description": "d", "columns": [{"name": "a", "type": "f32", "nullable": true, "description": "", "units": "s"}]}"#,
            "units",
        ),
        (
            r#"{"table": "t", "description": "d", "columns": [{"name": "a", "type": "fixed_size_list<f32>", "nullable": true, "description": ""}]}"#,
            "list_size",
        ),
        (
            r#"{"table": "t", "description": "d", "columns": [{"name": "a", "type": "u32", "list_size": 4, "nullable": true, "description": ""}]}"#,
            "list_size",
        ),
        (
            r#"{"table": "t", "description": "d", "columns": [{"name": "a", "type": "u32", "nullable": true, "description": ""}, {"name": "a", "type": "u32", "nullable": true, "description": ""}]}"#,
            "twice",
        ),
        (
            r#"{"table": "t", "description": "d", "columns": []}"#,
            "at least one column",
        ),
    ];
    for (json, needle) in cases {
        let err = parse(json).expect_err(json).to_string();
        assert!(
            err.contains(needle) && err.contains("test.json"),
            "error `{err}` should mention `{needle}`"
        );
    }
}

#[test]
fn check_names_column_expected_and_found() {
    let table = TableSchema::builtin("words").unwrap();
    let good = words_schema();
    table.check(&good, &sizes()).unwrap();
    // Field metadata does not matter.
    let plain = Schema::new(
        good.fields()
            .iter()
            .map(|f| f.as_ref().clone().with_metadata(HashMap::<String, String>::new()))
            .collect::<Vec<_>>(),
    );
    table.check(&plain, &sizes()).unwrap();

    let wrong_type = replace_field(&good, "onset_s", Field::new("onset_s", DataType::Float32, true));
    let msg = invalid_message(table.check(&wrong_type, &sizes()));
    assert!(
        msg.contains("`onset_s`") && msg.contains("f64") && msg.contains("found f32"),
        "{msg}"
    );
    assert!(msg.contains("`words`"), "{msg}");

    let wrong_null = replace_field(&good, "word_index", Field::new("word_index", DataType::UInt32, true));
    let msg = invalid_message(table.check(&wrong_null, &sizes()));
    assert!(
        msg.contains("`word_index`") && msg.contains("expected not null, found nullable"),
        "{msg}"
    );

    let missing = Schema::new(
        good.fields()
            .iter()
            .filter(|f| f.name() != "word")
            .map(|f| f.as_ref().clone())
            .collect::<Vec<_>>(),
    );
    let msg = invalid_message(table.check(&missing, &sizes()));
    assert!(msg.contains("`word`: missing"), "{msg}");

    let mut extra_fields: Vec<Field> = good.fields().iter().map(|f| f.as_ref().clone()).collect();
    extra_fields.push(Field::new("bogus", DataType::Int64, false));
    let msg = invalid_message(table.check(&Schema::new(extra_fields), &sizes()));
    assert!(msg.contains("`bogus`: not in the schema"), "{msg}");

    let mut swapped: Vec<Field> = good.fields().iter().map(|f| f.as_ref().clone()).collect();
    swapped.swap(0, 1);
    let msg = invalid_message(table.check(&Schema::new(swapped), &sizes()));
    assert!(msg.contains("wrong order"), "{msg}");

    // Fixed-size lists: the size is checked, the item field's name is not.
    let activations = TableSchema::builtin("activations").unwrap();
    let good = activations.to_arrow(&sizes()).unwrap();
    let renamed_item = DataType::FixedSizeList(Arc::new(Field::new("element", DataType::Float32, false)), D_MODEL);
    activations
        .check(
            &replace_field(&good, "activation", Field::new("activation", renamed_item, false)),
            &sizes(),
        )
        .unwrap();
    let wrong_size = DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, true)), 3);
    let msg = invalid_message(activations.check(
        &replace_field(&good, "activation", Field::new("activation", wrong_size, false)),
        &sizes(),
    ));
    assert!(
        msg.contains("`activation`") && msg.contains("d_model=4") && msg.contains("[3]"),
        "{msg}"
    );
}

#[test]
fn builtin_tables_round_trip_through_parquet_and_python() {
    let dir = tempfile::tempdir().unwrap();
    let mut checks = Vec::new();
    for name in BUILTIN_TABLES {
        let table = TableSchema::builtin(name).unwrap();
        let schema: SchemaRef = Arc::new(table.to_arrow(&sizes()).unwrap());
        let batches = [tiny_batch(&schema, 5), tiny_batch(&schema, 0), tiny_batch(&schema, 3)];
        let path = dir.path().join(format!("{name}.parquet"));
        write_table_parquet(&path, &table, &sizes(), &batches, &[("run".into(), "test".into())]).unwrap();

        let (read_schema, read_batches, metadata) = read_parquet(&path).unwrap();
        table.check(&read_schema, &sizes()).unwrap();
        assert_eq!(
            read_schema.fields(),
            schema.fields(),
            "{name}: schema incl. field metadata"
        );
        let written = arrow::compute::concat_batches(&schema, &batches).unwrap();
        let read = arrow::compute::concat_batches(&Arc::new(read_schema), &read_batches).unwrap();
        assert_eq!(read.num_rows(), 8);
        for (i, (a, b)) in written.columns().iter().zip(read.columns()).enumerate() {
            assert_eq!(a.to_data(), b.to_data(), "{name}: column {i} differs after round trip");
        }
        // Nullable float columns really hold nulls.
        for field in schema.fields().iter().filter(|f| f.is_nullable()) {
            assert!(
                read.column_by_name(field.name()).unwrap().null_count() > 0,
                "{name}.{}",
                field.name()
            );
        }
        assert_eq!(
            metadata.get(VERSION_KEY).map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(metadata.get(SCHEMA_KEY).map(String::as_str), Some(*name));
        assert_eq!(metadata.get("run").map(String::as_str), Some("test"));
        assert!(!metadata.contains_key("ARROW:schema"));
        if table.symbolic_sizes().is_empty() {
            assert!(!metadata.contains_key(SIZES_KEY));
        } else {
            assert_eq!(metadata.get(SIZES_KEY).map(String::as_str), Some(r#"{"d_model":4}"#));
        }

        checks.push((path, TableSchema::source_dir().join(format!("{name}.json"))));
    }
    // every table read back by pyarrow and polars, in one Python process
    let (first, rest) = checks.split_first().unwrap();
    let mut command = python_command(&first.0, &first.1);
    for (p, s) in rest {
        command.arg("--also").arg(p).arg(s);
    }
    let output = command.output().expect("run check_parquet.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "check_parquet.py failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("OK ")).count(),
        BUILTIN_TABLES.len(),
        "{stdout}"
    );
    // Only the outputs remain: no temporary files.
    let mut expected: Vec<String> = BUILTIN_TABLES.iter().map(|n| format!("{n}.parquet")).collect();
    expected.sort();
    assert_eq!(dir_entries(dir.path()), expected);
}

#[test]
fn empty_table_and_plain_writer() {
    let dir = tempfile::tempdir().unwrap();
    let table = TableSchema::builtin("activations").unwrap();
    let path = dir.path().join("empty.parquet");
    write_table_parquet(&path, &table, &sizes(), &[], &[]).unwrap();
    let (schema, batches, _) = read_parquet(&path).unwrap();
    table.check(&schema, &sizes()).unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    python_check(&path, &TableSchema::source_dir().join("activations.json"));

    // The plain writer takes the table name from the batch schema's metadata.
    let schema = words_schema();
    let path = dir.path().join("plain.parquet");
    write_parquet_atomic(&path, &[tiny_batch(&schema, 2)], &[]).unwrap();
    let (_, _, metadata) = read_parquet(&path).unwrap();
    assert_eq!(metadata.get(SCHEMA_KEY).map(String::as_str), Some("words"));
    // … and rejects reserved or conflicting metadata.
    let err = write_parquet_atomic(&path, &[tiny_batch(&schema, 2)], &[(VERSION_KEY.into(), "9".into())]).unwrap_err();
    assert!(err.to_string().contains(VERSION_KEY), "{err}");
    let err = write_parquet_atomic(
        &path,
        &[tiny_batch(&schema, 2)],
        &[(SCHEMA_KEY.into(), "activations".into())],
    )
    .unwrap_err();
    assert!(err.to_string().contains("words"), "{err}");
}

#[test]
fn arrow_ipc_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let table = TableSchema::builtin("activations").unwrap();
    let schema: SchemaRef = Arc::new(table.to_arrow(&sizes()).unwrap());
    let batches = [tiny_batch(&schema, 4), tiny_batch(&schema, 2)];
    let path = dir.path().join("activations.arrow");
    write_arrow_ipc_atomic(&path, &batches, &[("k".into(), "v".into())]).unwrap();
    let (read_schema, read_batches, metadata) = read_arrow_ipc(&path).unwrap();
    table.check(&read_schema, &sizes()).unwrap();
    assert_eq!(read_batches, batches);
    assert_eq!(metadata.get("k").map(String::as_str), Some("v"));
    assert_eq!(metadata.get(SCHEMA_KEY).map(String::as_str), Some("activations"));
    assert_eq!(
        metadata.get(VERSION_KEY).map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(dir_entries(dir.path()), ["activations.arrow"]);
}

#[test]
fn failed_writes_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let schema = words_schema();
    let table = TableSchema::builtin("words").unwrap();
    let good = tiny_batch(&schema, 3);

    // Second batch with another schema: error names the batch and column, no file appears.
    let other_schema = Arc::new(replace_field(
        &schema,
        "onset_s",
        Field::new("onset_s", DataType::Float32, true),
    ));
    let bad = tiny_batch(&other_schema, 2);
    let path = dir.path().join("words.parquet");
    for write in [write_parquet_atomic, write_arrow_ipc_atomic] {
        let err = write(&path, &[good.clone(), bad.clone()], &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("batch 1") && msg.contains("onset_s") && msg.contains("words.parquet"),
            "{msg}"
        );
        assert_eq!(dir_entries(dir.path()), Vec::<String>::new());
    }
    let err = write_table_parquet(&path, &table, &sizes(), &[good.clone(), bad.clone()], &[]).unwrap_err();
    assert!(
        err.to_string().contains("batch 1") && err.to_string().contains("`onset_s`"),
        "{err}"
    );
    assert!(write_parquet_atomic(&path, &[], &[]).is_err());
    assert_eq!(dir_entries(dir.path()), Vec::<String>::new());

    // Nulls in a column declared not null.
    let nullable_story = Arc::new(replace_field(
        &schema,
        "story",
        Field::new("story", DataType::Utf8, true),
    ));
    let mut columns = good.columns().to_vec();
    columns[0] = Arc::new(StringArray::from(vec![Some("a"), None, Some("c")]));
    let with_null = RecordBatch::try_new(nullable_story, columns).unwrap();
    let err = write_table_parquet(&path, &table, &sizes(), &[with_null], &[]).unwrap_err();
    assert!(err.to_string().contains("`story`"), "{err}");
    assert_eq!(dir_entries(dir.path()), Vec::<String>::new());

    // Nonexistent directory.
    let missing = dir.path().join("no/such/dir/words.parquet");
    let err = write_parquet_atomic(&missing, std::slice::from_ref(&good), &[]).unwrap_err();
    assert!(
        matches!(err, Error::Write { .. }) && err.to_string().contains("exist"),
        "{err}"
    );
    assert_eq!(dir_entries(dir.path()), Vec::<String>::new());

    // The target is a directory: the temporary file is written, the rename fails, the
    // temporary file is removed and the directory is untouched.
    let target_dir = dir.path().join("out.parquet");
    std::fs::create_dir(&target_dir).unwrap();
    std::fs::write(target_dir.join("keep"), b"x").unwrap();
    let err = write_parquet_atomic(&target_dir, std::slice::from_ref(&good), &[]).unwrap_err();
    assert!(err.to_string().contains("rename"), "{err}");
    assert_eq!(dir_entries(dir.path()), ["out.parquet"]);
    assert_eq!(dir_entries(&target_dir), ["keep"]);

    // A failed write over an existing file leaves it byte-for-byte unchanged.
    write_parquet_atomic(&path, std::slice::from_ref(&good), &[]).unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(write_parquet_atomic(&path, &[good.clone(), bad.clone()], &[]).is_err());
    assert!(write_table_parquet(&path, &table, &sizes(), &[bad], &[]).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(dir_entries(dir.path()), ["out.parquet", "words.parquet"]);

    // A successful overwrite replaces it.
    write_parquet_atomic(&path, &[tiny_batch(&schema, 7)], &[]).unwrap();
    let (_, batches, _) = read_parquet(&path).unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 7);
    assert_eq!(dir_entries(dir.path()), ["out.parquet", "words.parquet"]);
}

#[test]
fn python_checker_rejects_a_mismatch() {
    // A words file checked against the activations schema must fail with a clear message.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("words.parquet");
    write_parquet_atomic(&path, &[tiny_batch(&words_schema(), 2)], &[]).unwrap();
    let output = python_command(&path, &TableSchema::source_dir().join("activations.json"))
        .output()
        .expect("run python");
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("columns: expected"), "{stderr}");

    // A words file checked against a words schema whose `onset_s` is declared f32 and not null:
    // both readers report the type, pyarrow the nullability.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(TableSchema::source_dir().join("words.json")).unwrap()).unwrap();
    let onset = json["columns"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "onset_s")
        .unwrap();
    onset["type"] = "f32".into();
    onset["nullable"] = false.into();
    let altered = dir.path().join("words_altered.json");
    std::fs::write(&altered, serde_json::to_string(&json).unwrap()).unwrap();
    let output = python_command(&path, &altered).output().expect("run python");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "`onset_s`: expected f32 (pyarrow float), pyarrow found double",
        "polars found Float64",
        "expected nullable=False",
    ] {
        assert!(stderr.contains(needle), "missing `{needle}` in:\n{stderr}");
    }
}

/// Python interpreter for the read-back: `$CORTEXFLOW_PYTHON`, else the crate's `.venv`, else
/// `python3`. Panics (fails the test) when pyarrow or polars cannot be imported.
fn python() -> PathBuf {
    let python = std::env::var_os("CORTEXFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let venv = crate_root().join(".venv/bin/python");
            if venv.exists() {
                venv
            } else {
                PathBuf::from("python3")
            }
        });
    let probe = Command::new(&python).args(["-c", "import pyarrow, polars"]).output();
    match probe {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} cannot import pyarrow and polars ({}); run `make setup` (creates .venv with them) \
             or set CORTEXFLOW_PYTHON to a Python that has them",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run {}: {e}; run `make setup` or set CORTEXFLOW_PYTHON",
            python.display()
        ),
    }
}

fn python_command(parquet: &Path, schema_json: &Path) -> Command {
    let mut command = Command::new(python());
    command
        .arg(crate_root().join("scripts/check_parquet.py"))
        .arg(parquet)
        .arg(schema_json)
        .arg(format!("--list-size=d_model={D_MODEL}"));
    command
}

fn python_check(parquet: &Path, schema_json: &Path) {
    let output = python_command(parquet, schema_json)
        .output()
        .expect("run check_parquet.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check_parquet.py failed on {}:\n{stdout}{stderr}",
        parquet.display()
    );
    assert!(stdout.starts_with("OK "), "{stdout}");
}
