//! SQL over record batches for the maintenance commands: a `WHERE` predicate (`price < 0 AND
//! venue = 'X'`) and `SET` assignments (`spread = best_ask - best_bid`), parsed by DataFusion's
//! SQL parser, planned against the data's schema (unknown columns and type errors are found
//! here, before anything is read or written), coerced, and evaluated as DataFusion physical
//! expressions. Nothing here parses or evaluates SQL by hand.
//!
//! DataFusion's newest release is built on arrow 59 and the product on arrow 60: the columns an
//! expression reads cross over as Arrow IPC (a copy of those columns only), and its result
//! comes back the same way. Only the binaries that run maintenance link this crate.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow59::datatypes::{DataType as DataType59, SchemaRef as SchemaRef59};
use compaction::model::rewrite::RewriteSpec;
use compaction::ports::rows::{RowChange, RowChanges, RowSelection};
use datafusion_common::config::ConfigOptions;
use datafusion_common::stats::Precision;
use datafusion_common::tree_node::TreeNode;
use datafusion_common::ScalarValue;
use datafusion_common::{DFSchema, TableReference};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::planner::ContextProvider;
use datafusion_expr::simplify::SimplifyContext;
use datafusion_expr::{
    AggregateUDF, Expr, ExprSchemable, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF,
};
use datafusion_expr_common::interval_arithmetic::Interval;
use datafusion_optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion_optimizer::simplify_expressions::ExprSimplifier;
use datafusion_physical_expr::analysis::{analyze, AnalysisContext, ExprBoundaries};
use datafusion_physical_expr::expressions::Column;
use datafusion_physical_expr::{create_physical_expr, PhysicalExpr};
use datafusion_sql::planner::{PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::Parser;
use datafusion_sql::sqlparser::tokenizer::Token;

/// What went wrong with an expression, and where.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{what} {sql:?} is not valid SQL: {message}")]
    Parse {
        what: &'static str,
        sql: String,
        message: String,
    },
    #[error("{what} {sql:?}: {message}")]
    Plan {
        what: &'static str,
        sql: String,
        message: String,
    },
    #[error("evaluating {sql:?}: {message}")]
    Eval { sql: String, message: String },
}

/// Planning needs a catalog; expressions here name columns of one schema and DataFusion's
/// standard scalar functions (no tables, no aggregates).
struct NoCatalog {
    options: ConfigOptions,
    functions: std::collections::HashMap<String, Arc<ScalarUDF>>,
}

impl NoCatalog {
    fn new() -> Self {
        let mut functions = std::collections::HashMap::new();
        for f in datafusion_functions::all_default_functions() {
            for alias in f.aliases() {
                functions.insert(alias.clone(), Arc::clone(&f));
            }
            functions.insert(f.name().to_string(), f);
        }
        Self {
            options: ConfigOptions::default(),
            functions,
        }
    }
}

impl ContextProvider for NoCatalog {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion_common::Result<Arc<dyn TableSource>> {
        datafusion_common::plan_err!("no table {name} here: name the columns of the data")
    }
    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.functions.get(name).cloned()
    }
    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }
    fn get_aggregate_meta(&self, _name: &str) -> Option<Arc<AggregateUDF>> {
        None
    }
    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }
    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType59> {
        None
    }
    fn options(&self) -> &ConfigOptions {
        &self.options
    }
    fn udf_names(&self) -> Vec<String> {
        self.functions.keys().cloned().collect()
    }
    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn udaf_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// An expression planned against a schema: what it reads and how it computes.
struct Planned {
    sql: String,
    /// Indices of the columns it reads, in the data's schema.
    columns: Vec<usize>,
    /// The schema of those columns (arrow 59), which the physical expression indexes.
    input: SchemaRef59,
    physical: Arc<dyn PhysicalExpr>,
    data_type: DataType59,
}

fn to_schema59(schema: &SchemaRef) -> Result<SchemaRef59, String> {
    let empty = RecordBatch::new_empty(Arc::clone(schema));
    Ok(batch_to_59(&empty)?.schema())
}

fn batch_to_59(batch: &RecordBatch) -> Result<arrow59::array::RecordBatch, String> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &batch.schema())
            .map_err(|e| e.to_string())?;
        w.write(batch).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    let mut r = arrow59::ipc::reader::StreamReader::try_new(std::io::Cursor::new(buf), None)
        .map_err(|e| e.to_string())?;
    match r.next() {
        Some(b) => b.map_err(|e| e.to_string()),
        None => Ok(arrow59::array::RecordBatch::new_empty(r.schema())),
    }
}

/// The columns of `bounds` that `input` names, with its types, as arrow 59 arrays (`None`:
/// absent or of another type, so no bound).
fn bounds_59(
    input: &SchemaRef59,
    bounds: &RecordBatch,
) -> Result<Vec<Option<arrow59::array::ArrayRef>>, String> {
    let converted = batch_to_59(bounds)?;
    Ok(input
        .fields()
        .iter()
        .map(|f| {
            let column = converted.column_by_name(f.name())?;
            (column.data_type() == f.data_type()).then(|| Arc::clone(column))
        })
        .collect())
}

fn array_from_59(array: arrow59::array::ArrayRef) -> Result<ArrayRef, String> {
    let field = arrow59::datatypes::Field::new("v", array.data_type().clone(), true);
    let batch = arrow59::array::RecordBatch::try_new(
        Arc::new(arrow59::datatypes::Schema::new(vec![field])),
        vec![array],
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    {
        let mut w = arrow59::ipc::writer::StreamWriter::try_new(&mut buf, &batch.schema())
            .map_err(|e| e.to_string())?;
        w.write(&batch).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    let mut r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(buf), None)
        .map_err(|e| e.to_string())?;
    let back = r
        .next()
        .ok_or("an expression's result did not come back")?
        .map_err(|e| e.to_string())?;
    Ok(Arc::clone(back.column(0)))
}

/// Fails unless the parser is at the end of the text: one expression (or select list), and
/// nothing after it.
fn nothing_after(parser: &mut Parser, what: &'static str, sql: &str) -> Result<(), SqlError> {
    let rest = parser.peek_token();
    if rest.token != Token::EOF {
        return Err(SqlError::Parse {
            what,
            sql: sql.to_string(),
            message: format!(
                "unexpected {} after the expression; give one expression",
                rest.token
            ),
        });
    }
    Ok(())
}

impl Planned {
    fn new(what: &'static str, sql: &str, schema: &SchemaRef) -> Result<Self, SqlError> {
        let dialect = GenericDialect {};
        let mut parser = Parser::new(&dialect)
            .try_with_sql(sql)
            .map_err(|e| SqlError::Parse {
                what,
                sql: sql.to_string(),
                message: e.to_string(),
            })?;
        let ast = parser.parse_expr().map_err(|e| SqlError::Parse {
            what,
            sql: sql.to_string(),
            message: e.to_string(),
        })?;
        // One expression and nothing after it: `x = 1; DROP TABLE t` stops here.
        nothing_after(&mut parser, what, sql)?;
        Self::from_ast(what, sql, ast, schema)
    }

    /// Plans a parsed expression (`sql`, its text, for messages) against `schema`.
    fn from_ast(
        what: &'static str,
        sql: &str,
        ast: datafusion_sql::sqlparser::ast::Expr,
        schema: &SchemaRef,
    ) -> Result<Self, SqlError> {
        let plan_err = |message: String| SqlError::Plan {
            what,
            sql: sql.to_string(),
            message,
        };
        let full = to_schema59(schema).map_err(plan_err)?;
        let df_schema =
            DFSchema::try_from(Arc::clone(&full)).map_err(|e| plan_err(e.to_string()))?;
        let catalog = NoCatalog::new();
        let planner = SqlToRel::new(&catalog);
        let expr = planner
            .sql_to_expr(ast, &df_schema, &mut PlannerContext::new())
            .map_err(|e| plan_err(e.strip_backtrace()))?;
        let expr: Expr = expr
            .rewrite(&mut TypeCoercionRewriter::new(&df_schema))
            .map_err(|e| plan_err(e.strip_backtrace()))?
            .data;
        // Constants folded, and functions such as coalesce rewritten into what the physical
        // expressions evaluate (as DataFusion's optimizer does before execution).
        let context = SimplifyContext::builder()
            .with_schema(Arc::new(df_schema.clone()))
            .build();
        let expr = ExprSimplifier::new(context)
            .simplify(expr)
            .map_err(|e| plan_err(e.strip_backtrace()))?;
        let data_type = expr
            .get_type(&df_schema)
            .map_err(|e| plan_err(e.strip_backtrace()))?;
        // The physical expression reads only the columns it names, in this order.
        let mut columns: Vec<usize> = expr
            .column_refs()
            .iter()
            .filter_map(|c| full.index_of(&c.name).ok())
            .collect();
        columns.sort_unstable();
        columns.dedup();
        let input = Arc::new(
            full.project(&columns)
                .map_err(|e| plan_err(e.to_string()))?,
        );
        let input_df =
            DFSchema::try_from(Arc::clone(&input)).map_err(|e| plan_err(e.to_string()))?;
        let physical = create_physical_expr(
            &expr,
            &input_df,
            &ExecutionProps::new(),
            &Default::default(),
        )
        .map_err(|e| plan_err(e.strip_backtrace()))?;
        Ok(Self {
            sql: sql.to_string(),
            columns,
            input,
            physical,
            data_type,
        })
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef, SqlError> {
        let eval = |message: String| SqlError::Eval {
            sql: self.sql.clone(),
            message,
        };
        // By name: the batch may hold only some of the schema's columns (a scan reads only
        // the predicate's).
        let indices = self
            .input
            .fields()
            .iter()
            .map(|f| batch.schema().index_of(f.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| eval(e.to_string()))?;
        let projected = batch.project(&indices).map_err(|e| eval(e.to_string()))?;
        let input = batch_to_59(&projected).map_err(eval)?;
        let input = input
            .with_schema(Arc::clone(&self.input))
            .map_err(|e| eval(e.to_string()))?;
        let value = self
            .physical
            .evaluate(&input)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| eval(e.strip_backtrace()))?;
        array_from_59(value).map_err(eval)
    }

    fn column_names(&self, schema: &SchemaRef) -> Vec<String> {
        self.columns
            .iter()
            .map(|&i| schema.field(i).name().clone())
            .collect()
    }
}

/// A `WHERE` predicate over a schema.
pub struct Predicate {
    planned: Planned,
    columns: Vec<String>,
}

impl Predicate {
    /// Parses and plans `sql` against `schema`; an unknown column, a type error, anything but
    /// one boolean expression is an error here.
    pub fn parse(sql: &str, schema: &SchemaRef) -> Result<Self, SqlError> {
        let planned = Planned::new("predicate", sql, schema)?;
        if planned.data_type != DataType59::Boolean && planned.data_type != DataType59::Null {
            return Err(SqlError::Plan {
                what: "predicate",
                sql: sql.to_string(),
                message: format!(
                    "is a {}, not a condition (true or false)",
                    planned.data_type
                ),
            });
        }
        let columns = planned.column_names(schema);
        Ok(Self { planned, columns })
    }

    /// The columns the predicate reads.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    pub fn sql(&self) -> &str {
        &self.planned.sql
    }

    /// For each row of `mins` and `maxes` (lower and upper bounds of the columns they hold, by
    /// name; null or absent: no bound): false when DataFusion's interval analysis proves that
    /// no row within the bounds can satisfy the predicate. Anything it cannot analyse may match.
    pub fn may_match(
        &self,
        mins: &RecordBatch,
        maxes: &RecordBatch,
    ) -> Result<Vec<bool>, SqlError> {
        let eval = |message: String| SqlError::Eval {
            sql: self.planned.sql.clone(),
            message,
        };
        let input = &self.planned.input;
        let lows = bounds_59(input, mins).map_err(eval)?;
        let highs = bounds_59(input, maxes).map_err(eval)?;
        let rows = mins.num_rows().min(maxes.num_rows());
        Ok((0..rows)
            .map(|row| {
                let boundaries = input
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, field)| {
                        let bound = |arrays: &[Option<arrow59::array::ArrayRef>]| {
                            arrays[i]
                                .as_ref()
                                .and_then(|a| ScalarValue::try_from_array(a, row).ok())
                                .or_else(|| ScalarValue::try_from(field.data_type()).ok())
                                .unwrap_or(ScalarValue::Null)
                        };
                        let interval = Interval::try_new(bound(&lows), bound(&highs))
                            .or_else(|_| Interval::make_unbounded(field.data_type()))
                            .ok();
                        ExprBoundaries {
                            column: Column::new(field.name(), i),
                            interval,
                            distinct_count: Precision::Absent,
                        }
                    })
                    .collect::<Vec<_>>();
                if boundaries.iter().any(|b| b.interval.is_none()) {
                    return true;
                }
                let proven_empty = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    analyze(
                        &self.planned.physical,
                        AnalysisContext::new(boundaries),
                        input,
                    )
                }));
                !matches!(proven_empty, Ok(Ok(ctx)) if ctx.selectivity == Some(0.0))
            })
            .collect())
    }

    /// Which rows match: true where the predicate is true (null counts as no match, as in SQL).
    pub fn matches(&self, batch: &RecordBatch) -> Result<BooleanArray, SqlError> {
        let value = self.planned.evaluate(batch)?;
        let mask = value
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .unwrap_or_else(|| BooleanArray::from(vec![None; value.len()]));
        Ok(match mask.nulls() {
            Some(_) => mask.iter().map(|v| Some(v == Some(true))).collect(),
            None => mask,
        })
    }
}

/// One `SET column = expression`: the expression is checked to convert to the column's type.
pub struct Assignment {
    pub column: String,
    target: DataType,
    planned: Planned,
}

impl Assignment {
    /// Parses `column = expression` against `schema`.
    pub fn parse(sql: &str, schema: &SchemaRef) -> Result<Self, SqlError> {
        let plan_err = |message: String| SqlError::Plan {
            what: "assignment",
            sql: sql.to_string(),
            message,
        };
        let (column, expression) = sql
            .split_once('=')
            .ok_or_else(|| plan_err("write it as column = expression".into()))?;
        let column = column.trim().trim_matches('"').to_string();
        let index = schema.index_of(&column).map_err(|_| {
            plan_err(format!(
                "no column {column:?} (columns: {})",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let target = schema.field(index).data_type().clone();
        let planned = Planned::new("assignment", expression.trim(), schema)?;
        let target59 = to_schema59(schema)
            .map_err(plan_err)?
            .field(index)
            .data_type()
            .clone();
        if !assignable(&planned.data_type, &target59) {
            return Err(plan_err(format!(
                "gives {}, which cannot be stored in column {column:?} ({target})",
                planned.data_type
            )));
        }
        Ok(Self {
            column,
            target,
            planned,
        })
    }

    /// The new values of the column for every row of `batch`, in the column's type.
    pub fn values(&self, batch: &RecordBatch) -> Result<ArrayRef, SqlError> {
        let values = self.planned.evaluate(batch)?;
        if values.data_type() == &self.target {
            return Ok(values);
        }
        // A value that does not fit (an overflow) is an error, never a silent NULL.
        let options = arrow::compute::CastOptions {
            safe: false,
            ..Default::default()
        };
        arrow::compute::cast_with_options(&values, &self.target, &options).map_err(|e| {
            SqlError::Eval {
                sql: self.planned.sql.clone(),
                message: format!("converting to {}: {e}", self.target),
            }
        })
    }

    /// `batch` with this column set where `mask` is true (`CASE WHEN mask THEN expr ELSE column`).
    pub fn apply(&self, batch: &RecordBatch, mask: &BooleanArray) -> Result<RecordBatch, SqlError> {
        apply_all(std::slice::from_ref(self), batch, mask)
    }
}

/// May a value of type `from` be stored in a column of type `to`, as SQL's assignment
/// conversions allow: the same type, NULL, a number into a number, a time into a time, anything
/// into a string. A string into a number (or a time) is refused: it would fail or become NULL
/// row by row.
fn assignable(from: &DataType59, to: &DataType59) -> bool {
    use DataType59 as T;
    let value = |t: &DataType59| match t {
        T::Dictionary(_, v) => v.as_ref().clone(),
        other => other.clone(),
    };
    let (from, to) = (value(from), value(to));
    let stringy = |t: &DataType59| matches!(t, T::Utf8 | T::LargeUtf8 | T::Utf8View);
    from == to
        || from == T::Null
        || (from.is_numeric() && to.is_numeric())
        || (from.is_temporal() && to.is_temporal())
        || (stringy(&to) && (from.is_primitive() || stringy(&from) || from == T::Boolean))
}

/// `batch` with every assignment applied where `mask` is true, each expression reading the row
/// as it was before any of them (SQL `UPDATE ... SET a = ..., b = ...`).
pub fn apply_all(
    assignments: &[Assignment],
    batch: &RecordBatch,
    mask: &BooleanArray,
) -> Result<RecordBatch, SqlError> {
    let mut columns = batch.columns().to_vec();
    for a in assignments {
        let eval = |message: String| SqlError::Eval {
            sql: a.planned.sql.clone(),
            message,
        };
        let index = batch
            .schema()
            .index_of(&a.column)
            .map_err(|e| eval(e.to_string()))?;
        let new = a.values(batch)?;
        columns[index] = arrow::compute::kernels::zip::zip(mask, &new, batch.column(index))
            .map_err(|e| eval(e.to_string()))?;
    }
    RecordBatch::try_new(batch.schema(), columns).map_err(|e| SqlError::Eval {
        sql: "SET".into(),
        message: e.to_string(),
    })
}

/// A rewrite's predicate and assignments, planned: the [`RowChange`] the library runs.
struct SqlChange {
    predicate: Predicate,
    set: Vec<Assignment>,
}

/// A SQL select list (`*, price * 100 AS cents`, `id, upper(note) AS note`): each item a
/// column kept as it is (`*` keeps every column) or an expression, named by its alias (an
/// expression that is not a column needs one).
pub struct Selection {
    items: Vec<(String, Option<Planned>)>,
}

impl Selection {
    pub fn parse(sql: &str, schema: &SchemaRef) -> Result<Self, SqlError> {
        use datafusion_sql::sqlparser::ast::{Expr as Ast, SelectItem};
        let what = "select list";
        let parse_err = |message: String| SqlError::Parse {
            what,
            sql: sql.to_string(),
            message,
        };
        let plan_err = |message: String| SqlError::Plan {
            what,
            sql: sql.to_string(),
            message,
        };
        let dialect = GenericDialect {};
        let mut parser = Parser::new(&dialect)
            .try_with_sql(sql)
            .map_err(|e| parse_err(e.to_string()))?;
        let list = parser
            .parse_projection()
            .map_err(|e| parse_err(e.to_string()))?;
        nothing_after(&mut parser, what, sql)?;
        let mut items: Vec<(String, Option<Planned>)> = Vec::new();
        for item in list {
            match item {
                SelectItem::Wildcard(options) => {
                    let extra = options.to_string();
                    if !extra.trim().is_empty() {
                        return Err(plan_err(format!(
                            "`*{extra}`: only a plain `*` is understood; list the columns instead"
                        )));
                    }
                    for f in schema.fields() {
                        items.push((f.name().clone(), None));
                    }
                }
                SelectItem::UnnamedExpr(Ast::Identifier(ident)) => {
                    let name = ident.value.clone();
                    schema
                        .index_of(&name)
                        .map_err(|_| plan_err(format!("no column {name:?}")))?;
                    items.push((name, None));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let text = expr.to_string();
                    let planned = Planned::from_ast(what, &text, expr, schema)?;
                    items.push((alias.value.clone(), Some(planned)));
                }
                other => {
                    return Err(plan_err(format!(
                        "{other}: name an expression with AS (e.g. `price * 100 AS cents`)"
                    )))
                }
            }
        }
        for (i, (name, _)) in items.iter().enumerate() {
            if items[..i].iter().any(|(n, _)| n == name) {
                return Err(plan_err(format!(
                    "column {name:?} is selected twice (`*` selects every column: list the columns instead)"
                )));
            }
        }
        if items.is_empty() {
            return Err(plan_err("selects no column".into()));
        }
        Ok(Self { items })
    }

    /// The columns the list reads.
    pub fn read_columns(&self, schema: &SchemaRef) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (name, planned) in &self.items {
            let read = match planned {
                Some(p) => p.input.fields().iter().map(|f| f.name().clone()).collect(),
                None => vec![name.clone()],
            };
            for n in read {
                if !names.contains(&n) && schema.field_with_name(&n).is_ok() {
                    names.push(n);
                }
            }
        }
        names
    }

    /// The selected columns of every row of `batch`.
    pub fn project(&self, batch: &RecordBatch) -> Result<RecordBatch, SqlError> {
        let mut fields = Vec::with_capacity(self.items.len());
        let mut columns = Vec::with_capacity(self.items.len());
        for (name, planned) in &self.items {
            let column = match planned {
                Some(p) => p.evaluate(batch)?,
                None => Arc::clone(batch.column_by_name(name).ok_or_else(|| SqlError::Eval {
                    sql: name.clone(),
                    message: "no such column in this batch".into(),
                })?),
            };
            let nullable = planned.is_some()
                || batch
                    .schema()
                    .field_with_name(name)
                    .map_or(true, |f| f.is_nullable());
            fields.push(arrow::datatypes::Field::new(
                name,
                column.data_type().clone(),
                nullable,
            ));
            columns.push(column);
        }
        RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns).map_err(
            |e| SqlError::Eval {
                sql: "select list".into(),
                message: e.to_string(),
            },
        )
    }
}

struct SqlSelection {
    selection: Selection,
    reads: Vec<String>,
}

impl RowSelection for SqlSelection {
    fn read_columns(&self) -> Vec<String> {
        self.reads.clone()
    }

    fn project(&self, batch: &RecordBatch) -> compaction::Result<RecordBatch> {
        self.selection.project(batch).map_err(expression_error)
    }
}

/// Plans rewrites with DataFusion: the [`RowChanges`] of the `compactor` CLI and of the
/// planner and merger functions built with their `sql` feature.
#[derive(Debug, Default, Clone, Copy)]
pub struct SqlRowChanges;

/// [`SqlRowChanges`], as the port the library's services take.
pub fn row_changes() -> Option<std::sync::Arc<dyn RowChanges>> {
    Some(std::sync::Arc::new(SqlRowChanges))
}

fn expression_error(e: SqlError) -> compaction::Error {
    compaction::Error::Expression(e.to_string())
}

impl RowChanges for SqlRowChanges {
    fn plan(
        &self,
        spec: &RewriteSpec,
        schema: &SchemaRef,
    ) -> compaction::Result<Arc<dyn RowChange>> {
        let predicate = Predicate::parse(&spec.predicate, schema).map_err(expression_error)?;
        let set = spec
            .set
            .iter()
            .map(|s| Assignment::parse(s, schema))
            .collect::<Result<Vec<_>, _>>()
            .map_err(expression_error)?;
        for (i, a) in set.iter().enumerate() {
            if set[..i].iter().any(|b| b.column == a.column) {
                return Err(compaction::Error::Expression(format!(
                    "column {:?} is set twice; set each column once",
                    a.column
                )));
            }
        }
        Ok(Arc::new(SqlChange { predicate, set }))
    }

    fn plan_select(
        &self,
        select: &str,
        schema: &SchemaRef,
    ) -> compaction::Result<Arc<dyn RowSelection>> {
        let selection = Selection::parse(select, schema).map_err(expression_error)?;
        let reads = selection.read_columns(schema);
        Ok(Arc::new(SqlSelection { selection, reads }))
    }
}

impl RowChange for SqlChange {
    fn predicate_columns(&self) -> Vec<String> {
        self.predicate.columns().to_vec()
    }

    fn read_columns(&self) -> Vec<String> {
        let mut names = self.predicate.columns().to_vec();
        for a in &self.set {
            if !names.contains(&a.column) {
                names.push(a.column.clone());
            }
            for f in a.planned.input.fields() {
                if !names.contains(f.name()) {
                    names.push(f.name().clone());
                }
            }
        }
        names
    }

    fn set_columns(&self) -> Vec<String> {
        self.set.iter().map(|a| a.column.clone()).collect()
    }

    fn may_match(&self, mins: &RecordBatch, maxes: &RecordBatch) -> compaction::Result<Vec<bool>> {
        self.predicate
            .may_match(mins, maxes)
            .map_err(expression_error)
    }

    fn matches(&self, batch: &RecordBatch) -> compaction::Result<BooleanArray> {
        self.predicate.matches(batch).map_err(expression_error)
    }

    fn apply(&self, batch: &RecordBatch, mask: &BooleanArray) -> compaction::Result<RecordBatch> {
        apply_all(&self.set, batch, mask).map_err(expression_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("venue", DataType::Utf8, true),
                Field::new("best_bid", DataType::Float64, false),
                Field::new("best_ask", DataType::Float64, false),
                Field::new("qty", DataType::Int32, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(StringArray::from(vec![
                    Some("X"),
                    Some("Y"),
                    None,
                    Some("X"),
                ])),
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])),
                Arc::new(Float64Array::from(vec![1.5, 2.0, 3.25, 5.0])),
                Arc::new(Int32Array::from(vec![Some(10), None, Some(30), Some(40)])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_select_list_keeps_columns_and_computes_named_expressions() {
        let b = batch();
        let sel = Selection::parse(
            "*, best_ask - best_bid AS spread, upper(venue) AS v",
            &b.schema(),
        )
        .unwrap();
        let out = sel.project(&b).unwrap();
        let names: Vec<_> = out
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            ["id", "venue", "best_bid", "best_ask", "qty", "spread", "v"]
        );
        let spread = out
            .column(5)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(spread.values().to_vec(), vec![0.5, 0.0, 0.25, 1.0]);
        let only = Selection::parse("id, qty", &b.schema()).unwrap();
        assert_eq!(only.read_columns(&b.schema()), vec!["id", "qty"]);
        assert_eq!(only.project(&b).unwrap().num_columns(), 2);
        for bad in [
            "id, id",
            "nope",
            "id + 1",
            "*, id AS x FROM t",
            "id; DROP TABLE t",
            "* EXCLUDE (id)",
        ] {
            assert!(
                Selection::parse(bad, &b.schema()).is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn a_predicate_matches_rows_and_null_is_no_match() {
        let b = batch();
        let p = Predicate::parse("venue = 'X' AND qty > 5", &b.schema()).unwrap();
        assert_eq!(p.columns(), ["venue", "qty"]);
        let m = p.matches(&b).unwrap();
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![Some(true), Some(false), Some(false), Some(true)]
        );
        // Int32 against an Int64 literal and a float: coerced.
        let p = Predicate::parse("qty * 2 >= 60.5 OR id IN (2, 3)", &b.schema()).unwrap();
        assert_eq!(
            p.matches(&b).unwrap().iter().collect::<Vec<_>>(),
            vec![Some(false), Some(true), Some(true), Some(true)]
        );
    }

    #[test]
    fn an_assignment_sets_matching_rows_in_the_columns_type() {
        let b = batch();
        let a = Assignment::parse("best_bid = best_ask - 0.5", &b.schema()).unwrap();
        let mask = Predicate::parse("id > 2", &b.schema())
            .unwrap()
            .matches(&b)
            .unwrap();
        let out = a.apply(&b, &mask).unwrap();
        let bid = out
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(bid.values(), &[1.0, 2.0, 2.75, 4.5]);
        // An integer expression into an Int32 column is converted.
        let q = Assignment::parse("qty = id + 100", &b.schema()).unwrap();
        let out = q.apply(&b, &mask).unwrap();
        let qty = out.column(4).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(
            qty.iter().collect::<Vec<_>>(),
            vec![Some(10), None, Some(103), Some(104)]
        );
    }

    #[test]
    fn hostile_and_wrong_expressions_fail_before_any_data_is_read() {
        let s = batch().schema();
        for (sql, says) in [
            ("id = 1; DROP TABLE events", "unexpected ;"),
            ("nope > 1", "nope"),
            ("venue + 1 > 2", "venue"),
            ("id + 1", "not a condition"),
            ("id = ", "not valid SQL"),
            ("id = (SELECT 1 FROM t)", "t"),
        ] {
            let e = Predicate::parse(sql, &s)
                .err()
                .unwrap_or_else(|| panic!("{sql} parsed"));
            assert!(e.to_string().contains(says), "{sql}: {e}");
        }
        let e = Assignment::parse("missing = 1", &s)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no column \"missing\""), "{e}");
        let e = Assignment::parse("venue", &s).err().unwrap().to_string();
        assert!(e.contains("column = expression"), "{e}");
        // A string into a number would fail (or turn NULL) row by row: refused up front.
        let e = Assignment::parse("qty = venue", &s)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot be stored"), "{e}");
        assert!(Assignment::parse("venue = qty", &s).is_ok());
    }

    #[test]
    fn statistics_rule_out_only_what_cannot_match() {
        let s = batch().schema();
        // Two row groups: ids 1..10 and 20..30; venues A..B and X..Z; qty without statistics.
        let bounds = |ids: [i64; 2], venues: [&str; 2]| {
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("id", DataType::Int64, true),
                    Field::new("venue", DataType::Utf8, true),
                ])),
                vec![
                    Arc::new(Int64Array::from(ids.to_vec())),
                    Arc::new(StringArray::from(venues.to_vec())),
                ],
            )
            .unwrap()
        };
        let (mins, maxes) = (bounds([1, 20], ["A", "X"]), bounds([10, 30], ["B", "Z"]));
        let may = |sql: &str| {
            Predicate::parse(sql, &s)
                .unwrap()
                .may_match(&mins, &maxes)
                .unwrap()
        };
        assert_eq!(may("id > 15"), [false, true]);
        assert_eq!(may("id BETWEEN 11 AND 19"), [false, false]);
        assert_eq!(may("id = 5 AND venue = 'Y'"), [false, false]);
        assert_eq!(may("venue = 'Y'"), [false, true]);
        // No statistics, or nothing interval analysis understands: may match.
        assert_eq!(may("qty > 1000"), [true, true]);
        assert_eq!(may("venue IS NULL"), [true, true]);
        assert_eq!(may("id > 15 OR qty IS NULL"), [true, true]);
    }
}
