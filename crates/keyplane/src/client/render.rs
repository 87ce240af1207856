//! The human output of the network commands: tables and `field  value` listings.

use serde_json::Value;

/// A field of a JSON object as one table cell: lists space-separated, absent or null `-`.
pub fn cell(v: &Value, field: &str) -> String {
    match v.get(field) {
        Some(Value::Array(a)) if a.is_empty() => "-".into(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// A plain table: a header and rows, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

/// Objects as a table, one row each, with (header, field) columns.
pub fn rows(items: &[Value], columns: &[(&str, &str)]) -> String {
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| columns.iter().map(|(_, f)| cell(i, f)).collect())
        .collect();
    table(&headers, &rows)
}

/// One object as `field  value` lines, in the given order; nested objects as compact JSON.
pub fn details(v: &Value, fields: &[&str]) -> String {
    let present: Vec<&&str> = fields.iter().filter(|f| v.get(**f).is_some()).collect();
    let width = present.iter().map(|f| f.len()).max().unwrap_or(0);
    present
        .into_iter()
        .map(|f| {
            let value = match v.get(*f) {
                Some(Value::Object(_)) => v[*f].to_string(),
                Some(Value::Array(a)) if a.iter().any(Value::is_object) => v[*f].to_string(),
                _ => cell(v, f),
            };
            format!("{f:<width$}  {value}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn tables_pad_columns() {
        let t = super::table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
    }

    #[test]
    fn cells_and_details() {
        let v = json!({"a": ["x", "y"], "b": null, "c": 3, "d": {"k": 1}, "e": ""});
        assert_eq!(super::cell(&v, "a"), "x y");
        assert_eq!(super::cell(&v, "b"), "-");
        assert_eq!(super::cell(&v, "e"), "-");
        assert_eq!(super::cell(&v, "missing"), "-");
        assert_eq!(
            super::details(&v, &["c", "d", "missing"]),
            "c  3\nd  {\"k\":1}"
        );
    }
}
