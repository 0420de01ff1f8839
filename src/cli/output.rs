//! How the command line prints results: human tables, etcdctl's simple lines, or JSON with
//! stable field names for scripts.
//!
//! # JSON field names (stable: scripts depend on them; add fields, never rename)
//! - header: `{"cluster_id": "<hex>", "member_id": "<hex>", "revision": n, "raft_term": n}`
//! - key-value: `{"key": s, "value": s, "create_revision": n, "mod_revision": n, "version": n,
//!   "lease": n}`; keys and values are UTF-8 text (bytes that are not UTF-8 are replaced by U+FFFD)
//! - get: `{"header", "count", "more", "kvs": [key-value]}`
//! - put: `{"header", "prev_kv": key-value|null}`
//! - del: `{"header", "deleted", "prev_kvs": [key-value]}`
//! - txn: `{"header", "succeeded", "responses": [{"get": get} | {"put": put} | {"delete": del} |
//!   {"txn": txn}]}`
//! - member list: `{"members": [{"id": "<hex>", "name", "peer_urls", "client_urls", "is_learner"}]}`
//! - endpoint status: `[{"endpoint", "id": "<hex>", "name", "role", "raft_term", "raft_index",
//!   "raft_applied_index", "revision", "db_size", "lag", "error": s|null}]`; `role` is one of
//!   `leader`, `follower`, `learner`, `unreachable`; `lag` is the leader's raft index minus the
//!   member's applied index (null when unknown)
//! - endpoint health: `[{"endpoint", "health": bool, "took_ms": n, "error": s|null}]`
//!
//! Must never: print anything but the result on stdout (errors go to stderr).

use serde_json::Value;
use serde_json::json;

use crate::client::DeleteResponse;
use crate::client::GetResponse;
use crate::client::Header;
use crate::client::KeyValue;
use crate::client::OpResponse;
use crate::client::PutResponse;
use crate::client::TxnResponse;

/// `-w`: how results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables for lists (get, member list, endpoint status/health), etcdctl's lines otherwise.
    Table,
    /// etcdctl's default lines (key, then value).
    Simple,
    /// JSON with the documented field names.
    Json,
}

/// A text table with a header row, boxed as etcdctl draws them.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "one cell per column");
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|column| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|row| row[column].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let rule = widths
            .iter()
            .map(|width| "-".repeat(width + 2))
            .collect::<Vec<_>>()
            .join("+");
        let rule = format!("+{rule}+\n");
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| {
                    let pad = width - cell.chars().count();
                    format!(" {cell}{} ", " ".repeat(pad))
                })
                .collect();
            format!("|{}|\n", cells.join("|"))
        };
        let mut out = String::new();
        out.push_str(&rule);
        out.push_str(&line(&self.header));
        out.push_str(&rule);
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out.push_str(&rule);
        out
    }
}

pub fn hex(id: u64) -> String {
    format!("{id:x}")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn header_json(header: &Header) -> Value {
    json!({
        "cluster_id": hex(header.cluster_id),
        "member_id": hex(header.member_id),
        "revision": header.revision,
        "raft_term": header.raft_term,
    })
}

pub fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": text(&kv.key),
        "value": text(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    })
}

pub fn get_json(response: &GetResponse) -> Value {
    json!({
        "header": header_json(&response.header),
        "count": response.count,
        "more": response.more,
        "kvs": response.kvs.iter().map(kv_json).collect::<Vec<_>>(),
    })
}

pub fn put_json(response: &PutResponse) -> Value {
    json!({
        "header": header_json(&response.header),
        "prev_kv": response.prev_kv.as_ref().map(kv_json),
    })
}

pub fn delete_json(response: &DeleteResponse) -> Value {
    json!({
        "header": header_json(&response.header),
        "deleted": response.deleted,
        "prev_kvs": response.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
    })
}

pub fn txn_json(response: &TxnResponse) -> Value {
    let responses: Vec<Value> = response
        .responses
        .iter()
        .map(|op| match op {
            OpResponse::Get(r) => json!({ "get": get_json(r) }),
            OpResponse::Put(r) => json!({ "put": put_json(r) }),
            OpResponse::Delete(r) => json!({ "delete": delete_json(r) }),
            OpResponse::Txn(r) => json!({ "txn": txn_json(r) }),
        })
        .collect();
    json!({
        "header": header_json(&response.header),
        "succeeded": response.succeeded,
        "responses": responses,
    })
}

/// etcdctl's simple form of a read: key line, value line, per key (values only, keys only).
pub fn get_simple(
    response: &GetResponse,
    value_only: bool,
    keys_only: bool,
    count_only: bool,
) -> String {
    if count_only {
        return format!("{}\n", response.count);
    }
    let mut out = String::new();
    for kv in &response.kvs {
        if !value_only {
            out.push_str(&text(&kv.key));
            out.push('\n');
        }
        if !keys_only {
            out.push_str(&text(&kv.value));
            out.push('\n');
        }
    }
    out
}

pub fn get_table(response: &GetResponse, keys_only: bool, count_only: bool) -> String {
    if count_only {
        let mut table = Table::new(&["COUNT", "REVISION"]);
        table.row(vec![
            response.count.to_string(),
            response.header.revision.to_string(),
        ]);
        return table.render();
    }
    let mut table = if keys_only {
        Table::new(&["KEY", "CREATE REVISION", "MOD REVISION", "VERSION"])
    } else {
        Table::new(&["KEY", "VALUE", "CREATE REVISION", "MOD REVISION", "VERSION"])
    };
    for kv in &response.kvs {
        let mut cells = vec![text(&kv.key)];
        if !keys_only {
            cells.push(text(&kv.value));
        }
        cells.extend([
            kv.create_revision.to_string(),
            kv.mod_revision.to_string(),
            kv.version.to_string(),
        ]);
        table.row(cells);
    }
    let mut out = table.render();
    out.push_str(&format!(
        "{} of {} keys at revision {}{}\n",
        response.kvs.len(),
        response.count,
        response.header.revision,
        if response.more { " (more)" } else { "" }
    ));
    out
}

/// etcdctl's simple form of a transaction result: SUCCESS/FAILURE, then each op's result after
/// an empty line.
pub fn txn_simple(response: &TxnResponse) -> String {
    let mut out = String::from(if response.succeeded {
        "SUCCESS\n"
    } else {
        "FAILURE\n"
    });
    for op in &response.responses {
        out.push('\n');
        match op {
            OpResponse::Get(r) => out.push_str(&get_simple(r, false, false, false)),
            OpResponse::Put(r) => {
                out.push_str("OK\n");
                if let Some(prev) = &r.prev_kv {
                    out.push_str(&get_simple_kv(prev));
                }
            }
            OpResponse::Delete(r) => {
                out.push_str(&format!("{}\n", r.deleted));
                for prev in &r.prev_kvs {
                    out.push_str(&get_simple_kv(prev));
                }
            }
            OpResponse::Txn(r) => out.push_str(&txn_simple(r)),
        }
    }
    out
}

fn get_simple_kv(kv: &KeyValue) -> String {
    format!("{}\n{}\n", text(&kv.key), text(&kv.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_every_cell_to_its_column() {
        let mut table = Table::new(&["ID", "NAME"]);
        table.row(vec!["1".into(), "alpha".into()]);
        table.row(vec!["22222".into(), "b".into()]);
        assert_eq!(
            table.render(),
            "+-------+-------+\n\
             | ID    | NAME  |\n\
             +-------+-------+\n\
             | 1     | alpha |\n\
             | 22222 | b     |\n\
             +-------+-------+\n"
        );
    }
}
