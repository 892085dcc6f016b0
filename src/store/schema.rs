//! Table schemas: one JSON file per output table in `data-schemas/`, also embedded in the binary.
//!
//! Input: a JSON document of the form
//!
//! ```json
//! {"table": "words", "description": "…",
//!  "columns": [{"name": "onset_s", "type": "f64", "nullable": true, "unit": "s", "description": "…"},
//!              {"name": "activation", "type": "fixed_size_list<f32>", "list_size": "d_model",
//!               "nullable": false, "unit": null, "description": "…"}]}
//! ```
//!
//! Output: a [`TableSchema`], which resolves to an Arrow [`Schema`] once the symbolic list sizes
//! (such as `d_model`) are known ([`TableSchema::to_arrow`]), and which checks that a batch's
//! schema is the declared one ([`TableSchema::check`]) with messages that name the table, the
//! column, and the expected and found type or nullability.
//!
//! Column types: `utf8`, `bool`, `u16`, `u32`, `u64`, `i32`, `i64`, `f32`, `f64`, and
//! `fixed_size_list<T>` with `T` one of those, which also needs `"list_size"`: a positive number or
//! a symbolic name given at run time.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Schema-level Arrow metadata key holding the table name (also written to Parquet key-value
/// metadata by the writers in [`crate::store::parquet_io`]).
pub const SCHEMA_KEY: &str = "cortexflow.schema";
/// Field-level Arrow metadata key holding a column's description.
pub const FIELD_DESCRIPTION_KEY: &str = "description";
/// Field-level Arrow metadata key holding a column's unit (absent when the column has none).
pub const FIELD_UNIT_KEY: &str = "unit";

/// Names and JSON texts of the schemas embedded in the binary (`data-schemas/*.json` at build time).
const BUILTINS: &[(&str, &str)] = &[
    ("words", include_str!("../../data-schemas/words.json")),
    ("activations", include_str!("../../data-schemas/activations.json")),
    ("fits", include_str!("../../data-schemas/fits.json")),
    ("feature_labels", include_str!("../../data-schemas/feature_labels.json")),
    ("feature_sets", include_str!("../../data-schemas/feature_sets.json")),
    (
        "feature_region_weights",
        include_str!("../../data-schemas/feature_region_weights.json"),
    ),
    ("baselines", include_str!("../../data-schemas/baselines.json")),
    (
        "topography_observed",
        include_str!("../../data-schemas/topography_observed.json"),
    ),
    ("summary", include_str!("../../data-schemas/summary.json")),
    ("sae_quality", include_str!("../../data-schemas/sae_quality.json")),
    ("ridge_cv", include_str!("../../data-schemas/ridge_cv.json")),
    (
        "voxelwise_voxels",
        include_str!("../../data-schemas/voxelwise_voxels.json"),
    ),
    (
        "voxelwise_voxel_folds",
        include_str!("../../data-schemas/voxelwise_voxel_folds.json"),
    ),
    (
        "voxelwise_story_folds",
        include_str!("../../data-schemas/voxelwise_story_folds.json"),
    ),
    (
        "voxelwise_regions",
        include_str!("../../data-schemas/voxelwise_regions.json"),
    ),
    (
        "voxelwise_region_summary",
        include_str!("../../data-schemas/voxelwise_region_summary.json"),
    ),
    (
        "reading_comparison",
        include_str!("../../data-schemas/reading_comparison.json"),
    ),
    ("reading_fixed", include_str!("../../data-schemas/reading_fixed.json")),
    ("reading_random", include_str!("../../data-schemas/reading_random.json")),
    ("reading_words", include_str!("../../data-schemas/reading_words.json")),
    (
        "reading_features",
        include_str!("../../data-schemas/reading_features.json"),
    ),
    (
        "feature_examples",
        include_str!("../../data-schemas/feature_examples.json"),
    ),
    ("sae_codes", include_str!("../../data-schemas/sae_codes.json")),
    ("sae_train_log", include_str!("../../data-schemas/sae_train_log.json")),
    (
        "explanation_scores",
        include_str!("../../data-schemas/explanation_scores.json"),
    ),
    (
        "topography_tests",
        include_str!("../../data-schemas/topography_tests.json"),
    ),
    (
        "topography_stats",
        include_str!("../../data-schemas/topography_stats.json"),
    ),
    (
        "variance_partition",
        include_str!("../../data-schemas/variance_partition.json"),
    ),
    (
        "variance_partition_summary",
        include_str!("../../data-schemas/variance_partition_summary.json"),
    ),
    (
        "prediction_error",
        include_str!("../../data-schemas/prediction_error.json"),
    ),
    ("changes", include_str!("../../data-schemas/changes.json")),
    ("seeds", include_str!("../../data-schemas/seeds.json")),
    ("languages", include_str!("../../data-schemas/languages.json")),
    (
        "language_layers",
        include_str!("../../data-schemas/language_layers.json"),
    ),
    (
        "category_proportions",
        include_str!("../../data-schemas/category_proportions.json"),
    ),
];

/// Names of the tables whose schemas are embedded in the binary.
pub const BUILTIN_TABLES: &[&str] = &[
    "words",
    "activations",
    "fits",
    "feature_labels",
    "feature_sets",
    "feature_region_weights",
    "baselines",
    "topography_observed",
    "summary",
    "sae_quality",
    "ridge_cv",
    "voxelwise_voxels",
    "voxelwise_voxel_folds",
    "voxelwise_story_folds",
    "voxelwise_regions",
    "voxelwise_region_summary",
    "reading_comparison",
    "reading_fixed",
    "reading_random",
    "reading_words",
    "reading_features",
    "feature_examples",
    "sae_codes",
    "sae_train_log",
    "explanation_scores",
    "topography_tests",
    "topography_stats",
    "variance_partition",
    "variance_partition_summary",
    "prediction_error",
    "changes",
    "seeds",
    "languages",
    "language_layers",
    "category_proportions",
];

/// Element type of a column, or of the items of a `fixed_size_list<…>` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarType {
    Utf8,
    Bool,
    U16,
    U32,
    U64,
    I32,
    I64,
    F32,
    F64,
}

impl ScalarType {
    const ALL: [ScalarType; 9] = [
        ScalarType::Utf8,
        ScalarType::Bool,
        ScalarType::U16,
        ScalarType::U32,
        ScalarType::U64,
        ScalarType::I32,
        ScalarType::I64,
        ScalarType::F32,
        ScalarType::F64,
    ];

    /// The name used in the schema JSON (`"f32"`, `"utf8"` …).
    pub fn name(self) -> &'static str {
        match self {
            ScalarType::Utf8 => "utf8",
            ScalarType::Bool => "bool",
            ScalarType::U16 => "u16",
            ScalarType::U32 => "u32",
            ScalarType::U64 => "u64",
            ScalarType::I32 => "i32",
            ScalarType::I64 => "i64",
            ScalarType::F32 => "f32",
            ScalarType::F64 => "f64",
        }
    }

    /// The Arrow type this maps to.
    pub fn to_arrow(self) -> DataType {
        match self {
            ScalarType::Utf8 => DataType::Utf8,
            ScalarType::Bool => DataType::Boolean,
            ScalarType::U16 => DataType::UInt16,
            ScalarType::U32 => DataType::UInt32,
            ScalarType::U64 => DataType::UInt64,
            ScalarType::I32 => DataType::Int32,
            ScalarType::I64 => DataType::Int64,
            ScalarType::F32 => DataType::Float32,
            ScalarType::F64 => DataType::Float64,
        }
    }

    fn from_arrow(data_type: &DataType) -> Option<ScalarType> {
        ScalarType::ALL.into_iter().find(|s| &s.to_arrow() == data_type)
    }
}

/// Type of a column as written in the schema JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ColumnType {
    /// One value per row.
    Scalar(ScalarType),
    /// `fixed_size_list<T>`: a vector of `list_size` values of type `T` per row.
    FixedSizeList(ScalarType),
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Scalar(s) => f.write_str(s.name()),
            ColumnType::FixedSizeList(s) => write!(f, "fixed_size_list<{}>", s.name()),
        }
    }
}

impl FromStr for ColumnType {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let scalar = |name: &str| ScalarType::ALL.into_iter().find(|s| s.name() == name);
        let parsed = match text.strip_prefix("fixed_size_list<").and_then(|t| t.strip_suffix('>')) {
            Some(inner) => scalar(inner.trim()).map(ColumnType::FixedSizeList),
            None => scalar(text).map(ColumnType::Scalar),
        };
        parsed.ok_or_else(|| {
            let names: Vec<&str> = ScalarType::ALL.iter().map(|s| s.name()).collect();
            format!(
                "unknown column type `{text}`; expected one of {} or fixed_size_list<T> with T one of those",
                names.join(", ")
            )
        })
    }
}

impl TryFrom<String> for ColumnType {
    type Error = String;
    fn try_from(text: String) -> std::result::Result<Self, String> {
        text.parse()
    }
}

impl From<ColumnType> for String {
    fn from(column_type: ColumnType) -> String {
        column_type.to_string()
    }
}

/// Length of a `fixed_size_list<…>` column: a number, or a name resolved at run time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a positive integer or a symbolic size name such as \"d_model\""
)]
pub enum ListSize {
    Fixed(i32),
    Symbolic(String),
}

impl fmt::Display for ListSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListSize::Fixed(n) => write!(f, "{n}"),
            ListSize::Symbolic(name) => f.write_str(name),
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSchema {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Required for `fixed_size_list<…>` columns, forbidden otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_size: Option<ListSize>,
    pub nullable: bool,
    /// Physical unit (`"s"`, `"bits"` …); `null` for identifiers, counts of things and labels.
    #[serde(default)]
    pub unit: Option<String>,
    pub description: String,
}

impl ColumnSchema {
    /// The column's Arrow type, with symbolic list sizes looked up in `sizes`.
    /// `table` is only used in error messages.
    pub fn arrow_type(&self, table: &str, sizes: &HashMap<String, i32>) -> Result<DataType> {
        match self.column_type {
            ColumnType::Scalar(s) => Ok(s.to_arrow()),
            ColumnType::FixedSizeList(item) => {
                let size = match &self.list_size {
                    Some(ListSize::Fixed(n)) => *n,
                    Some(ListSize::Symbolic(name)) => *sizes.get(name).ok_or_else(|| {
                        let mut known: Vec<&String> = sizes.keys().collect();
                        known.sort();
                        Error::Invalid(format!(
                            "table `{table}`, column `{}`: list size `{name}` was not given \
                             (sizes given: {known:?}); pass it, e.g. {{\"{name}\": 768}}",
                            self.name
                        ))
                    })?,
                    None => {
                        return Err(Error::Invalid(format!(
                            "table `{table}`, column `{}`: type {} needs a `list_size`",
                            self.name, self.column_type
                        )))
                    }
                };
                if size <= 0 {
                    return Err(Error::Invalid(format!(
                        "table `{table}`, column `{}`: list size {} = {size}, expected a positive \
                         number",
                        self.name,
                        self.list_size.as_ref().map(|s| s.to_string()).unwrap_or_default()
                    )));
                }
                Ok(DataType::FixedSizeList(list_item_field(item), size))
            }
        }
    }

    /// The column's Arrow field, carrying `description` and `unit` as field metadata.
    pub fn arrow_field(&self, table: &str, sizes: &HashMap<String, i32>) -> Result<Field> {
        let mut metadata = HashMap::new();
        metadata.insert(FIELD_DESCRIPTION_KEY.to_string(), self.description.clone());
        if let Some(unit) = &self.unit {
            metadata.insert(FIELD_UNIT_KEY.to_string(), unit.clone());
        }
        Ok(Field::new(&self.name, self.arrow_type(table, sizes)?, self.nullable).with_metadata(metadata))
    }

    /// Human-readable type and nullability, e.g. `f64 (nullable)` or
    /// `fixed_size_list<f32>[d_model=4] (not null)`.
    fn describe(&self, sizes: &HashMap<String, i32>) -> String {
        let nullability = if self.nullable { "nullable" } else { "not null" };
        match (&self.column_type, &self.list_size) {
            (ColumnType::FixedSizeList(_), Some(ListSize::Symbolic(name))) => {
                let size = sizes.get(name).map(|n| n.to_string()).unwrap_or_else(|| "?".into());
                format!("{}[{name}={size}] ({nullability})", self.column_type)
            }
            (ColumnType::FixedSizeList(_), Some(ListSize::Fixed(n))) => {
                format!("{}[{n}] ({nullability})", self.column_type)
            }
            _ => format!("{} ({nullability})", self.column_type),
        }
    }
}

/// The canonical item field of a `fixed_size_list<T>` column: Arrow's conventional `item`,
/// nullable (what `FixedSizeListBuilder`, pyarrow and polars produce by default).
fn list_item_field(item: ScalarType) -> FieldRef {
    Arc::new(Field::new_list_field(item.to_arrow(), true))
}

/// Whether `found` is the type `expected`, ignoring the name, nullability and metadata of a
/// fixed-size list's item field (producers differ there; the values are what matter).
fn same_type(expected: &DataType, found: &DataType) -> bool {
    match (expected, found) {
        (DataType::FixedSizeList(e, en), DataType::FixedSizeList(f, fnum)) => {
            en == fnum && same_type(e.data_type(), f.data_type())
        }
        _ => expected == found,
    }
}

/// A found Arrow type in the schema JSON's vocabulary where possible (`f32`,
/// `fixed_size_list<f32>[4]`), else Arrow's own name.
pub(crate) fn describe_arrow(data_type: &DataType) -> String {
    if let Some(s) = ScalarType::from_arrow(data_type) {
        return s.name().to_string();
    }
    if let DataType::FixedSizeList(item, size) = data_type {
        if let Some(s) = ScalarType::from_arrow(item.data_type()) {
            return format!("fixed_size_list<{}>[{size}]", s.name());
        }
    }
    format!("Arrow {data_type}")
}

/// A table's declared schema, as read from `data-schemas/{table}.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    /// Table name; equals the JSON file's stem.
    pub table: String,
    pub description: String,
    /// Columns in file order.
    pub columns: Vec<ColumnSchema>,
}

impl TableSchema {
    /// The directory the JSON schemas live in, in the source tree this binary was built from
    /// (`<crate root>/data-schemas`).
    pub fn source_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data-schemas")
    }

    /// Reads `data-schemas/{name}.json` from the source tree ([`TableSchema::source_dir`]).
    /// An installed binary should use [`TableSchema::builtin`], which needs no files.
    pub fn load(name: &str) -> Result<TableSchema> {
        Self::load_from_dir(&Self::source_dir(), name)
    }

    /// Reads `{dir}/{name}.json`; its `"table"` must be `name`.
    pub fn load_from_dir(dir: &Path, name: &str) -> Result<TableSchema> {
        let path = dir.join(format!("{name}.json"));
        let schema = Self::from_path(&path)?;
        if schema.table != name {
            return Err(Error::parse(
                &path,
                "field `table`",
                format!("expected \"{name}\" (the file name), found \"{}\"", schema.table),
            ));
        }
        Ok(schema)
    }

    /// Reads and validates one schema JSON file.
    pub fn from_path(path: &Path) -> Result<TableSchema> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses and validates a schema JSON text; `origin` names it in error messages.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<TableSchema> {
        let schema: TableSchema = serde_json::from_str(text).map_err(|e| {
            // serde_json's message ends with the position, which the location already gives.
            let message = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message).to_string();
            Error::parse(origin, format!("line {}, column {}", e.line(), e.column()), message)
        })?;
        schema
            .validate()
            .map_err(|(location, message)| Error::parse(origin, location, message))?;
        Ok(schema)
    }

    /// The schema of table `name` embedded in the binary at build time.
    pub fn builtin(name: &str) -> Result<TableSchema> {
        let (_, text) = BUILTINS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            Error::Invalid(format!(
                "no built-in schema for table `{name}`; known tables: {}",
                BUILTIN_TABLES.join(", ")
            ))
        })?;
        let origin = PathBuf::from(format!("<built-in data-schemas/{name}.json>"));
        Self::from_json_str(text, &origin)
    }

    /// The column called `name`, if any.
    pub fn column(&self, name: &str) -> Option<&ColumnSchema> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Symbolic list-size names the table needs at run time (e.g. `["d_model"]`), sorted, unique.
    pub fn symbolic_sizes(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .columns
            .iter()
            .filter_map(|c| match &c.list_size {
                Some(ListSize::Symbolic(name)) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Structural checks serde cannot express. Error: (location, message).
    fn validate(&self) -> std::result::Result<(), (String, String)> {
        if self.table.is_empty() || !is_identifier(&self.table) {
            return Err((
                "field `table`".into(),
                format!("expected a name of [a-z0-9_], found \"{}\"", self.table),
            ));
        }
        if self.columns.is_empty() {
            return Err((
                "field `columns`".into(),
                "expected at least one column, found none".into(),
            ));
        }
        for (i, column) in self.columns.iter().enumerate() {
            let location = format!("column {i} (`{}`)", column.name);
            if column.name.is_empty() {
                return Err((location, "column name is empty".into()));
            }
            if self.columns[..i].iter().any(|c| c.name == column.name) {
                return Err((location, "column name appears twice".into()));
            }
            match (&column.column_type, &column.list_size) {
                (ColumnType::FixedSizeList(_), None) => {
                    return Err((
                        location,
                        format!(
                            "type {} needs \"list_size\": a positive number or a symbolic name \
                             such as \"d_model\"",
                            column.column_type
                        ),
                    ))
                }
                (ColumnType::FixedSizeList(_), Some(ListSize::Fixed(n))) if *n <= 0 => {
                    return Err((location, format!("list_size must be positive, found {n}")))
                }
                (ColumnType::FixedSizeList(_), Some(ListSize::Symbolic(name))) if !is_identifier(name) => {
                    return Err((
                        location,
                        format!("symbolic list_size must be a name of [a-z0-9_], found \"{name}\""),
                    ))
                }
                (ColumnType::Scalar(_), Some(size)) => {
                    return Err((
                        location,
                        format!(
                            "list_size ({size}) is only allowed for fixed_size_list<…> columns, \
                             this column's type is {}",
                            column.column_type
                        ),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The Arrow schema, with symbolic list sizes resolved from `sizes` (e.g. `{"d_model": 768}`).
    /// Schema metadata carries [`SCHEMA_KEY`] = table name; field metadata carries each column's
    /// description and unit.
    pub fn to_arrow(&self, sizes: &HashMap<String, i32>) -> Result<Schema> {
        let fields = self
            .columns
            .iter()
            .map(|c| c.arrow_field(&self.table, sizes))
            .collect::<Result<Vec<Field>>>()?;
        let mut metadata = HashMap::new();
        metadata.insert(SCHEMA_KEY.to_string(), self.table.clone());
        Ok(Schema::new_with_metadata(fields, metadata))
    }

    /// Checks that `schema` has exactly this table's columns, in order, with the declared types
    /// and nullability. Metadata and the item field name of fixed-size lists are not compared.
    /// The error lists every mismatch, each naming the column, what was expected and what was
    /// found.
    pub fn check(&self, schema: &Schema, sizes: &HashMap<String, i32>) -> Result<()> {
        let mut problems = Vec::new();
        let mut misplaced = false;
        for (i, column) in self.columns.iter().enumerate() {
            let expected_type = column.arrow_type(&self.table, sizes)?;
            let Some((found_index, found)) = schema.column_with_name(&column.name) else {
                problems.push(format!(
                    "column `{}`: missing (expected {})",
                    column.name,
                    column.describe(sizes)
                ));
                continue;
            };
            if !same_type(&expected_type, found.data_type()) {
                problems.push(format!(
                    "column `{}`: expected type {}, found {}",
                    column.name,
                    column.describe(sizes),
                    describe_arrow(found.data_type())
                ));
            }
            if found.is_nullable() != column.nullable {
                let word = |nullable: bool| if nullable { "nullable" } else { "not null" };
                problems.push(format!(
                    "column `{}`: expected {}, found {}",
                    column.name,
                    word(column.nullable),
                    word(found.is_nullable())
                ));
            }
            if found_index != i {
                misplaced = true;
            }
        }
        for field in schema.fields() {
            if self.column(field.name()).is_none() {
                problems.push(format!(
                    "column `{}`: not in the schema (found {}; the table's columns are {})",
                    field.name(),
                    describe_arrow(field.data_type()),
                    self.columns
                        .iter()
                        .map(|c| format!("`{}`", c.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if misplaced && problems.is_empty() {
            let names = |names: Vec<&str>| names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
            problems.push(format!(
                "columns in the wrong order: expected {}, found {}",
                names(self.columns.iter().map(|c| c.name.as_str()).collect()),
                names(schema.fields().iter().map(|f| f.name().as_str()).collect())
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "table `{}` schema mismatch: {}",
                self.table,
                problems.join("; ")
            )))
        }
    }

    /// Checks `batch` against this table and returns it re-labelled with the canonical schema
    /// `canonical` (from [`TableSchema::to_arrow`] with the same `sizes`): field metadata added,
    /// fixed-size-list item fields renamed to the canonical `item`. Fails if a column declared not
    /// null holds nulls, naming the column and the null count.
    pub fn conform(
        &self,
        batch: &RecordBatch,
        canonical: &SchemaRef,
        sizes: &HashMap<String, i32>,
    ) -> Result<RecordBatch> {
        self.check(&batch.schema(), sizes)?;
        let columns = canonical
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, array)| self.conform_column(field, array))
            .collect::<Result<Vec<ArrayRef>>>()?;
        RecordBatch::try_new(canonical.clone(), columns)
            .map_err(|e| Error::Invalid(format!("table `{}`: {e}", self.table)))
    }

    fn conform_column(&self, field: &Field, array: &ArrayRef) -> Result<ArrayRef> {
        if !field.is_nullable() && array.null_count() > 0 {
            return Err(Error::Invalid(format!(
                "table `{}`, column `{}`: declared not null, found {} null value(s) in {} rows",
                self.table,
                field.name(),
                array.null_count(),
                array.len()
            )));
        }
        match (field.data_type(), array.data_type()) {
            (DataType::FixedSizeList(want, size), DataType::FixedSizeList(have, _)) if want != have => {
                let list = array
                    .as_any()
                    .downcast_ref::<FixedSizeListArray>()
                    .expect("FixedSizeList data type implies FixedSizeListArray");
                let rebuilt =
                    FixedSizeListArray::try_new(want.clone(), *size, list.values().clone(), list.nulls().cloned())
                        .map_err(|e| {
                            Error::Invalid(format!("table `{}`, column `{}`: {e}", self.table, field.name()))
                        })?;
                Ok(Arc::new(rebuilt))
            }
            _ => Ok(array.clone()),
        }
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_is_embedded_under_its_table_name() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data-schemas");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut tables: Vec<String> = BUILTIN_TABLES.iter().map(|s| s.to_string()).collect();
        tables.sort();
        assert_eq!(files, tables, "data-schemas/*.json vs BUILTIN_TABLES");
        assert_eq!(BUILTINS.len(), BUILTIN_TABLES.len());
        for name in BUILTIN_TABLES {
            let s = TableSchema::builtin(name).unwrap();
            assert_eq!(&s.table, name);
            let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            assert_eq!(
                BUILTINS.iter().find(|(n, _)| n == name).unwrap().1,
                text,
                "{name} embedded as is"
            );
        }
    }
}
