//! CSV exports of the usage and log listings: the JSON twins' rows (each cell is the JSON
//! field's value, so money is the same decimal string) plus the names behind the ids, streamed
//! from the database as they are read, UTF-8 with a BOM (so spreadsheet programs read the
//! Chinese names right), quoted as RFC 4180 says.

use std::borrow::Cow;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::store::usage::ExportNames;
use crate::store::StoreError;

/// The columns of `/logs.csv`: the fields of `/logs`' rows, each id followed by its name.
pub const LOG_COLUMNS: &[&str] = &[
    "id",
    "request_id",
    "created_at",
    "user_id",
    "username",
    "api_key_id",
    "key_name",
    "account_id",
    "account_name",
    "user_package_id",
    "model",
    "endpoint",
    "stream",
    "status",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost",
    "billing_status",
    "latency_ms",
    "ttfb_ms",
    "error",
];

/// The columns of `/usage/daily.csv`: the fields of `/usage/daily`'s rows and the names.
pub const DAILY_COLUMNS: &[&str] = &[
    "day",
    "user_id",
    "username",
    "api_key_id",
    "key_name",
    "account_id",
    "account_name",
    "model",
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost",
];

/// Rows written into one body chunk at most (whatever is ready, so a slow query still
/// streams row by row).
const ROWS_PER_CHUNK: usize = 64;

/// A row as its JSON twin serialises it, with the names added.
pub fn json_row<T: Serialize>(row: &T, names: &ExportNames) -> Value {
    let mut v = serde_json::to_value(row).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        for (k, name) in [
            ("username", &names.username),
            ("key_name", &names.key_name),
            ("account_name", &names.account_name),
        ] {
            m.insert(k.into(), name.clone().map_or(Value::Null, Value::String));
        }
    }
    v
}

/// A JSON value as a cell: null is empty, a string as it is, numbers and booleans as JSON
/// writes them.
fn cell(v: Option<&Value>) -> Cow<'_, str> {
    match v {
        None | Some(Value::Null) => Cow::Borrowed(""),
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(other) => Cow::Owned(other.to_string()),
    }
}

/// Append one field, quoted when it holds a comma, a quote or a line break (quotes doubled).
/// A text that a spreadsheet would run as a formula (`=`, `+`, `-`, `@` first, and not a
/// number) gets a leading `'`, so a user or model name cannot smuggle a formula into the
/// operator's spreadsheet.
fn push_field(out: &mut String, v: &str) {
    let formula = v.starts_with(['=', '+', '-', '@']) && v.parse::<f64>().is_err();
    let quote = formula || v.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    if v.contains('"') {
        out.push_str(&v.replace('"', "\"\""));
    } else {
        out.push_str(v);
    }
    if quote {
        out.push('"');
    }
}

fn push_line<'a>(out: &mut String, fields: impl Iterator<Item = Cow<'a, str>>) {
    for (i, f) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_field(out, &f);
    }
    out.push_str("\r\n");
}

/// A `text/csv` download: a BOM and the header line, then one line per row as the rows
/// arrive. A database error mid-way aborts the body (the client sees a cut download, never
/// a silently short file).
pub fn response<T, F>(
    filename: &'static str,
    columns: &'static [&'static str],
    rows: mpsc::Receiver<crate::store::Result<T>>,
    to_json: F,
) -> Response
where
    T: Send + 'static,
    F: Fn(&T) -> Value + Send + 'static,
{
    let mut head = String::from("\u{feff}");
    push_line(&mut head, columns.iter().map(|c| Cow::Borrowed(*c)));
    let lines = ReceiverStream::new(rows)
        .ready_chunks(ROWS_PER_CHUNK)
        .map(move |batch| {
            let mut out = String::new();
            for row in batch {
                let v = to_json(&row?);
                push_line(&mut out, columns.iter().map(|c| cell(v.get(*c))));
            }
            Ok::<_, StoreError>(Bytes::from(out))
        })
        .inspect(|r| {
            if let Err(e) = r {
                tracing::error!(error = %e, "CSV export failed mid-way");
            }
        });
    let body = futures_util::stream::once(async move { Ok(Bytes::from(head)) }).chain(lines);
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(fields: &[&str]) -> String {
        let mut out = String::new();
        push_line(&mut out, fields.iter().map(|f| Cow::Borrowed(*f)));
        out
    }

    #[test]
    fn fields_are_quoted_as_rfc_4180_says() {
        let cases = [
            (vec!["a", "b"], "a,b\r\n"),
            (vec!["a,b", "c"], "\"a,b\",c\r\n"),
            (vec!["say \"hi\""], "\"say \"\"hi\"\"\"\r\n"),
            (vec!["two\nlines", ""], "\"two\nlines\",\r\n"),
            (vec!["张三", "-0.5"], "张三,-0.5\r\n"),
            (vec!["=SUM(A1)", "@x"], "\"'=SUM(A1)\",\"'@x\"\r\n"),
        ];
        for (fields, want) in cases {
            assert_eq!(line(&fields), want, "{fields:?}");
        }
    }
}
