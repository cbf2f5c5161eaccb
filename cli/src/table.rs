//! Text tables, and the server's `meta.k8s.io/v1` Table (the printer columns of a kind).
//!
//! Output looks like kubectl's: upper-case headers, left-aligned cells, columns three spaces
//! apart, `<none>` for a missing value. `-o wide` adds the columns of priority above zero; `-A`
//! adds a NAMESPACE column taken from each row's object metadata, as kubectl does.

use serde::Deserialize;
use serde_json::Value;

/// The gap between columns.
const GAP: usize = 3;

/// What a cell without a value shows.
pub const NONE: &str = "<none>";

/// Lines of aligned columns. Widths are fixed by the rows given to [`Columns::fit`]; rows
/// printed later (a watch) are padded to the same widths and only grow a column they overflow.
#[derive(Clone, Debug, Default)]
pub struct Columns {
    widths: Vec<usize>,
}

impl Columns {
    /// Widths that fit `rows` (the header included, if it is one of them).
    pub fn fit(rows: &[Vec<String>]) -> Columns {
        let mut widths: Vec<usize> = Vec::new();
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                let width = cell.chars().count();
                match widths.get_mut(i) {
                    Some(w) => *w = (*w).max(width),
                    None => widths.push(width),
                }
            }
        }
        Columns { widths }
    }

    /// One line (without the newline); the last cell is not padded.
    pub fn line(&self, row: &[String]) -> String {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let width = self.widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.chars().count()) + GAP;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        line
    }
}

/// `headers` and `rows` as aligned lines, each ending in a newline.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut all: Vec<Vec<String>> = vec![headers.iter().map(|h| h.to_string()).collect()];
    all.extend(rows.iter().cloned());
    let columns = Columns::fit(&all);
    all.iter()
        .map(|row| format!("{}\n", columns.line(row)))
        .collect()
}

/// A `meta.k8s.io/v1` Table as the server sends it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Table {
    #[serde(default)]
    pub column_definitions: Vec<ColumnDefinition>,
    #[serde(default)]
    pub rows: Vec<TableRow>,
    #[serde(default)]
    pub metadata: TableMetadata,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableMetadata {
    #[serde(default)]
    pub resource_version: Option<String>,
    #[serde(default, rename = "continue")]
    pub continue_token: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColumnDefinition {
    pub name: String,
    #[serde(default, rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub format: String,
    #[serde(default)]
    pub priority: i32,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct TableRow {
    #[serde(default)]
    pub cells: Vec<Value>,
    /// PartialObjectMetadata (by default) of the row's object.
    #[serde(default)]
    pub object: Value,
}

impl TableRow {
    pub fn namespace(&self) -> Option<&str> {
        self.object.pointer("/metadata/namespace")?.as_str()
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.object.pointer("/metadata/resourceVersion")?.as_str()
    }
}

/// How a cell value prints.
pub fn cell_text(value: &Value) -> String {
    match value {
        Value::Null => NONE.to_string(),
        Value::String(s) if s.is_empty() => NONE.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Which of a Table's columns print, and how.
#[derive(Clone, Debug)]
pub struct TableView {
    definitions: Vec<ColumnDefinition>,
    /// Indexes into the definitions (and each row's cells).
    shown: Vec<usize>,
    namespace_column: bool,
    /// `instance.corral.dev/` before each name, when several kinds print together.
    name_prefix: Option<String>,
}

impl TableView {
    /// A view of tables with these column definitions. `wide` shows every column.
    pub fn new(
        definitions: &[ColumnDefinition],
        wide: bool,
        namespace_column: bool,
        name_prefix: Option<String>,
    ) -> TableView {
        let shown = definitions
            .iter()
            .enumerate()
            .filter(|(_, c)| wide || c.priority <= 0)
            .map(|(i, _)| i)
            .collect();
        TableView {
            definitions: definitions.to_vec(),
            shown,
            namespace_column,
            name_prefix,
        }
    }

    pub fn headers(&self) -> Vec<String> {
        let mut headers = Vec::new();
        if self.namespace_column {
            headers.push("NAMESPACE".to_string());
        }
        headers.extend(
            self.shown
                .iter()
                .map(|&i| self.definitions[i].name.to_uppercase()),
        );
        headers
    }

    fn is_name_column(&self, index: usize) -> bool {
        match self.definitions.iter().position(|c| c.format == "name") {
            Some(name) => name == index,
            None => index == 0,
        }
    }

    pub fn cells(&self, row: &TableRow) -> Vec<String> {
        let mut cells = Vec::new();
        if self.namespace_column {
            cells.push(row.namespace().unwrap_or("").to_string());
        }
        for &i in &self.shown {
            let text = cell_text(row.cells.get(i).unwrap_or(&Value::Null));
            match &self.name_prefix {
                Some(prefix) if self.is_name_column(i) => cells.push(format!("{prefix}{text}")),
                _ => cells.push(text),
            }
        }
        cells
    }

    /// The header and every row, aligned.
    pub fn render(&self, rows: &[TableRow]) -> (Columns, String) {
        let mut all = vec![self.headers()];
        all.extend(rows.iter().map(|r| self.cells(r)));
        let columns = Columns::fit(&all);
        let text = all
            .iter()
            .map(|row| format!("{}\n", columns.line(row)))
            .collect();
        (columns, text)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn instances_table() -> Table {
        serde_json::from_value(json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "42"},
            "columnDefinitions": [
                {"name": "Name", "type": "string", "format": "name", "priority": 0},
                {"name": "State", "type": "string", "format": "", "priority": 0},
                {"name": "CPUs", "type": "integer", "format": "", "priority": 0},
                {"name": "VMM", "type": "string", "format": "", "priority": 1},
                {"name": "Age", "type": "date", "format": "", "priority": 0},
            ],
            "rows": [
                {"cells": ["web-1", "Running", 2, "web-1-v1", "5m"],
                 "object": {"metadata": {"name": "web-1", "namespace": "default"}}},
                {"cells": ["db", null, 16, null, "10s"],
                 "object": {"metadata": {"name": "db", "namespace": "prod"}}},
            ],
        }))
        .unwrap()
    }

    #[test]
    fn a_table_prints_like_kubectl() {
        let table = instances_table();
        let view = TableView::new(&table.column_definitions, false, false, None);
        let (_, text) = view.render(&table.rows);
        assert_eq!(
            text,
            "NAME    STATE     CPUS   AGE\n\
             web-1   Running   2      5m\n\
             db      <none>    16     10s\n"
        );
    }

    #[test]
    fn wide_adds_priority_columns_and_all_namespaces_adds_a_namespace_column() {
        let table = instances_table();
        let view = TableView::new(&table.column_definitions, true, true, None);
        let (_, text) = view.render(&table.rows);
        assert_eq!(
            text,
            "NAMESPACE   NAME    STATE     CPUS   VMM        AGE\n\
             default     web-1   Running   2      web-1-v1   5m\n\
             prod        db      <none>    16     <none>     10s\n"
        );
    }

    #[test]
    fn several_kinds_prefix_the_name() {
        let table = instances_table();
        let view = TableView::new(
            &table.column_definitions,
            false,
            false,
            Some("instance.corral.dev/".into()),
        );
        assert_eq!(view.cells(&table.rows[1])[0], "instance.corral.dev/db");
    }

    #[test]
    fn later_rows_keep_the_widths_and_overflow_only_their_own_column() {
        let columns = Columns::fit(&[vec!["A".into(), "B".into(), "C".into()]]);
        assert_eq!(
            columns.line(&["long".into(), "x".into(), "y".into()]),
            "long   x   y"
        );
        assert_eq!(
            render(&["A", "BB"], &[vec!["1".into(), "2".into()]]),
            "A   BB\n1   2\n"
        );
    }
}
