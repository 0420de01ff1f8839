//! The text form of a transaction, as etcdctl's `txn` reads it: three blocks separated by empty
//! lines (compares, success ops, failure ops), one item per line.
//!
//! ```text
//! mod("key1") > "0"                compares: value|version|create|mod|lease("key") op "operand"
//! value("key2") = "hello"          op: = != > <
//!                                  (empty line)
//! put key1 "new value"             success ops: put KEY VALUE, get KEY [END], del KEY [END],
//! get key2                         with --prefix / --from-key / --prev-kv as etcdctl takes them
//!                                  (empty line)
//! get key1                         failure ops
//! ```
//!
//! Words are split like a shell does: double or single quotes group, backslash escapes inside
//! double quotes. Must never: accept a line it does not fully understand (the error names the
//! line and what was expected).

use crate::client::Compare;
use crate::client::CompareOp;
use crate::client::DeleteOptions;
use crate::client::GetOptions;
use crate::client::Op;
use crate::client::PutOptions;
use crate::client::Txn;

/// Splits a line into words, honouring quotes.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => current.push('\n'),
                            Some('t') => current.push('\t'),
                            Some(other) => current.push(other),
                            None => return Err(format!("unfinished escape in {line:?}")),
                        },
                        Some(other) => current.push(other),
                        None => return Err(format!("unclosed double quote in {line:?}")),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(other) => current.push(other),
                        None => return Err(format!("unclosed single quote in {line:?}")),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

/// Parses one compare line: `target("key") op "operand"`.
pub fn parse_compare(line: &str) -> Result<Compare, String> {
    let expected = "expected target(\"key\") op \"value\", with target one of value, version, \
                    create, mod, lease and op one of = != > <";
    let open = line
        .find('(')
        .ok_or_else(|| format!("{line:?}: {expected}"))?;
    let close = line
        .rfind(')')
        .filter(|close| *close > open)
        .ok_or_else(|| format!("{line:?}: {expected}"))?;
    let target = line[..open].trim().to_ascii_lowercase();
    let key = match split_words(&line[open + 1..close])?.as_slice() {
        [key] => key.clone(),
        _ => return Err(format!("{line:?}: the key must be one (quoted) word")),
    };
    let rest = split_words(&line[close + 1..])?;
    let [op, operand] = rest.as_slice() else {
        return Err(format!("{line:?}: {expected}"));
    };
    let op = match op.as_str() {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        ">" => CompareOp::Greater,
        "<" => CompareOp::Less,
        other => {
            return Err(format!(
                "{line:?}: unknown comparison {other:?}; {expected}"
            ));
        }
    };
    let number = |what: &str| {
        operand
            .parse::<i64>()
            .map_err(|_| format!("{line:?}: {what} compares with a whole number, not {operand:?}"))
    };
    Ok(match target.as_str() {
        "value" | "val" => Compare::value(key, op, operand.clone()),
        "version" | "ver" => Compare::version(key, op, number("version")?),
        "create" | "c" => Compare::create_revision(key, op, number("create")?),
        "mod" | "m" => Compare::mod_revision(key, op, number("mod")?),
        "lease" | "lease_id" => Compare::lease(key, op, number("lease")?),
        other => return Err(format!("{line:?}: unknown target {other:?}; {expected}")),
    })
}

/// Parses one op line: `put KEY VALUE [--prev-kv]`, `get KEY [END] [--prefix|--from-key]
/// [--keys-only] [--count-only] [--limit N] [--rev N]`, `del KEY [END] [--prefix|--from-key]
/// [--prev-kv]`.
pub fn parse_op(line: &str) -> Result<Op, String> {
    let words = split_words(line)?;
    let Some((verb, rest)) = words.split_first() else {
        return Err("an empty op".to_string());
    };
    let mut positional = Vec::new();
    let mut flags = Vec::new();
    let mut iter = rest.iter();
    while let Some(word) = iter.next() {
        if let Some(flag) = word.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (flag.to_string(), None),
            };
            let value = match name.as_str() {
                "limit" | "rev" => match inline {
                    Some(value) => Some(value),
                    None => Some(
                        iter.next()
                            .ok_or_else(|| format!("{line:?}: --{name} needs a number"))?
                            .clone(),
                    ),
                },
                _ => inline,
            };
            flags.push((name, value));
        } else {
            positional.push(word.clone());
        }
    }
    let number = |name: &str, value: &Option<String>| -> Result<i64, String> {
        value
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|_| format!("{line:?}: --{name} needs a whole number"))
    };
    match verb.as_str() {
        "put" => {
            let [key, value] = positional.as_slice() else {
                return Err(format!("{line:?}: expected put KEY VALUE"));
            };
            let mut options = PutOptions::new();
            for (name, _) in &flags {
                match name.as_str() {
                    "prev-kv" => options = options.prev_kv(),
                    other => return Err(format!("{line:?}: put does not take --{other}")),
                }
            }
            Ok(Op::put(key.clone(), value.clone(), options))
        }
        "get" => {
            let (key, end) = key_and_end(line, "get", &positional)?;
            let mut options = GetOptions::new();
            if let Some(end) = end {
                options = options.range_end(end);
            }
            for (name, value) in &flags {
                options = match name.as_str() {
                    "prefix" => options.prefix(),
                    "from-key" => options.from_key(),
                    "keys-only" => options.keys_only(),
                    "count-only" => options.count_only(),
                    "limit" => options.limit(number(name, value)?),
                    "rev" => options.revision(number(name, value)?),
                    other => return Err(format!("{line:?}: get does not take --{other}")),
                };
            }
            Ok(Op::get(key, options))
        }
        "del" | "delete" => {
            let (key, end) = key_and_end(line, "del", &positional)?;
            let mut options = DeleteOptions::new();
            if let Some(end) = end {
                options = options.range_end(end);
            }
            for (name, _) in &flags {
                options = match name.as_str() {
                    "prefix" => options.prefix(),
                    "from-key" => options.from_key(),
                    "prev-kv" => options.prev_kv(),
                    other => return Err(format!("{line:?}: del does not take --{other}")),
                };
            }
            Ok(Op::delete(key, options))
        }
        other => Err(format!(
            "{line:?}: unknown op {other:?}; expected put, get or del"
        )),
    }
}

fn key_and_end(
    line: &str,
    verb: &str,
    words: &[String],
) -> Result<(String, Option<String>), String> {
    match words {
        [key] => Ok((key.clone(), None)),
        [key, end] => Ok((key.clone(), Some(end.clone()))),
        _ => Err(format!("{line:?}: expected {verb} KEY [RANGE_END]")),
    }
}

/// Parses a whole script: compares, empty line, success ops, empty line, failure ops.
pub fn parse_script(text: &str) -> Result<Txn, String> {
    let mut blocks: [Vec<&str>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut block = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            block += 1;
            if block > 2 {
                // Trailing empty lines after the failure block are harmless.
                if blocks_after_end(text) {
                    break;
                }
                return Err("more than three blocks: compares, success ops, failure ops".into());
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        blocks[block].push(line);
    }
    let compares = blocks[0]
        .iter()
        .map(|line| parse_compare(line))
        .collect::<Result<Vec<_>, _>>()?;
    let success = blocks[1]
        .iter()
        .map(|line| parse_op(line))
        .collect::<Result<Vec<_>, _>>()?;
    let failure = blocks[2]
        .iter()
        .map(|line| parse_op(line))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Txn::new().when(compares).and_then(success).or_else(failure))
}

/// Whether everything after the third separating empty line is blank.
fn blocks_after_end(text: &str) -> bool {
    let mut empties = 0;
    for line in text.lines() {
        if line.trim().is_empty() {
            empties += 1;
        } else if empties > 2 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell_with_quotes_and_escapes() {
        assert_eq!(
            split_words(r#"put k "a b \"c\"" 'd e'"#).expect("valid"),
            vec!["put", "k", "a b \"c\"", "d e"]
        );
        assert!(split_words(r#"put k "open"#).is_err());
    }

    #[test]
    fn compares_and_ops_parse_the_etcdctl_forms() {
        assert_eq!(
            parse_compare(r#"mod("key1") > "0""#).expect("valid"),
            Compare::mod_revision("key1", CompareOp::Greater, 0)
        );
        assert_eq!(
            parse_compare(r#"value("k") != "v w""#).expect("valid"),
            Compare::value("k", CompareOp::NotEqual, "v w")
        );
        assert_eq!(
            parse_op(r#"put key1 "over wrote""#).expect("valid"),
            Op::put("key1", "over wrote", PutOptions::new())
        );
        assert_eq!(
            parse_op("get a --prefix --limit 2").expect("valid"),
            Op::get("a", GetOptions::new().prefix().limit(2))
        );
        assert_eq!(
            parse_op("del a z --prev-kv").expect("valid"),
            Op::delete("a", DeleteOptions::new().range_end("z").prev_kv())
        );
    }

    #[test]
    fn a_line_that_is_not_understood_is_an_error_naming_it() {
        for bad in [
            r#"size("k") = "1""#,
            r#"value("k") ~ "1""#,
            r#"version("k") = "one""#,
            "value k = v",
        ] {
            let error = parse_compare(bad).expect_err("refused");
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
        for bad in ["put k", "get", "get a --rev", "frob k", "put k v --prefix"] {
            assert!(parse_op(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_script_has_compares_success_and_failure_blocks() {
        let txn =
            parse_script("value(\"k\") = \"1\"\n\nput k 2\nget k\n\nget k\n\n").expect("valid");
        let expected = Txn::new()
            .when([Compare::value("k", CompareOp::Equal, "1")])
            .and_then([
                Op::put("k", "2", PutOptions::new()),
                Op::get("k", GetOptions::new()),
            ])
            .or_else([Op::get("k", GetOptions::new())]);
        assert_eq!(txn, expected);
        assert!(parse_script("\n\n\nput k v\n").is_err(), "a fourth block");
    }
}
