//! `vigil config-reference`: the configuration reference of `docs/configuration.md`, generated
//! from the config types' doc comments and defaults (through their JSON Schema), so the docs
//! cannot drift from the code; and the set of key paths, which the tests compare with
//! `examples/vigil.toml`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::config::Config;

/// The line before the generated reference in `docs/configuration.md`.
pub const BEGIN: &str =
    "<!-- BEGIN GENERATED CONFIG REFERENCE: do not edit; regenerate with `vigil config-reference` -->";
/// The line after it.
pub const END: &str = "<!-- END GENERATED CONFIG REFERENCE -->";

/// One documented key.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// Dotted path, `[]` for array entries: `cameras[].source.path`.
    pub path: String,
    /// The default, as written in TOML; `None` when the key is required or has none.
    pub default: Option<String>,
    /// Whether the key must be given.
    pub required: bool,
    /// What it means (the doc comment), with the allowed values of an enum.
    pub meaning: String,
    /// For keys of one kind of a tagged enum (`source`): that kind.
    pub kind: Option<String>,
}

/// Every key of the daemon config, in section order, nested tables flattened.
pub fn keys() -> Vec<Key> {
    let schema = schemars::schema_for!(Config);
    let root = schema.as_value();
    let mut out = vec![];
    walk(root, root, "", None, &mut out);
    out
}

/// Every key path (for comparison with the example config).
pub fn paths() -> BTreeSet<String> {
    keys().into_iter().map(|k| k.path).collect()
}

/// The reference as Markdown: one table per top-level section, between [`BEGIN`] and [`END`].
pub fn markdown() -> String {
    let mut out = format!("{BEGIN}\n");
    let mut section = None;
    let section_of = |k: &Key| {
        let top = k.path.split(['.', '[']).next().unwrap_or_default().to_owned();
        if k.path.contains(['.', '[']) { top } else { String::new() }
    };
    // Top-level keys first, then one table per section, in name order.
    let mut all = keys();
    all.sort_by_key(section_of);
    for k in all {
        let top = section_of(&k);
        if section.as_ref() != Some(&top) {
            let title = match top.as_str() {
                "" => "Top level".to_owned(),
                "cameras" => "`[[cameras]]`".to_owned(),
                t => format!("`[{t}]`"),
            };
            out.push_str(&format!("\n### {title}\n\n| key | default | meaning |\n| --- | --- | --- |\n"));
            section = Some(top);
        }
        let default = match (&k.default, k.required) {
            (_, true) => "(required)".to_owned(),
            (Some(d), _) => format!("`{d}`"),
            (None, _) => "none".to_owned(),
        };
        let meaning = match &k.kind {
            Some(kind) => format!("(`type = \"{kind}\"`) {}", k.meaning),
            None => k.meaning.clone(),
        };
        out.push_str(&format!("| `{}` | {} | {} |\n", k.path, cell(&default), cell(&meaning)));
    }
    out.push('\n');
    out.push_str(END);
    out.push('\n');
    out
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Follows a `$ref`, and takes the non-null side of an `Option`.
fn resolve<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default();
        return resolve(root, &root["$defs"][name]);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = v.get(key).and_then(Value::as_array) {
            let real: Vec<&Value> = options.iter().filter(|o| o.get("type") != Some(&"null".into())).collect();
            if real.len() == 1 && options.len() == 2 {
                return resolve(root, real[0]);
            }
        }
    }
    v
}

fn description(v: &Value) -> String {
    v.get("description").and_then(Value::as_str).unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The values of a string enum with their docs, if `v` is one.
fn enum_values(root: &Value, v: &Value) -> Option<String> {
    let v = resolve(root, v);
    if let Some(values) = v.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values.iter().filter_map(Value::as_str).map(|s| format!("`{s}`")).collect();
        return (!names.is_empty()).then(|| names.join(", "));
    }
    let options = v.get("oneOf").and_then(Value::as_array)?;
    let mut names = vec![];
    for o in options {
        let o = resolve(root, o);
        let value = o.get("const").or_else(|| o.get("enum").and_then(|e| e.get(0))).and_then(Value::as_str)?;
        let doc = description(o);
        names.push(if doc.is_empty() {
            format!("`{value}`")
        } else {
            format!("`{value}` ({})", doc.trim_end_matches('.'))
        });
    }
    Some(names.join(", "))
}

fn toml_value(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(format!("\"{s}\"")),
        Value::Array(a) => Some(format!("[{}]", a.iter().filter_map(toml_value).collect::<Vec<_>>().join(", "))),
        other => Some(other.to_string()),
    }
}

/// Whether `v` is a table of keys (rather than a value).
fn is_table(root: &Value, v: &Value) -> bool {
    let v = resolve(root, v);
    v.get("properties").is_some() || v.get("oneOf").and_then(Value::as_array).is_some_and(|o| tagged(root, o))
}

/// Whether `options` are the kinds of an internally tagged enum (each a table with a `type`).
fn tagged(root: &Value, options: &[Value]) -> bool {
    options.iter().all(|o| resolve_variant(root, o).1.is_some())
}

/// A tagged variant's table and its `type` value.
fn resolve_variant<'a>(root: &'a Value, o: &'a Value) -> (&'a Value, Option<String>) {
    let kind = o
        .get("properties")
        .and_then(|p| p.get("type"))
        .and_then(|t| t.get("const").or_else(|| t.get("enum").and_then(|e| e.get(0))))
        .and_then(Value::as_str)
        .map(str::to_owned);
    (resolve(root, o), kind)
}

fn walk(root: &Value, table: &Value, prefix: &str, kind: Option<&str>, out: &mut Vec<Key>) {
    let table = resolve(root, table);
    if let Some(options) = table.get("oneOf").and_then(Value::as_array)
        && tagged(root, options)
    {
        let kinds: Vec<String> = options.iter().filter_map(|o| resolve_variant(root, o).1).collect();
        out.push(Key {
            path: format!("{prefix}.type"),
            default: None,
            required: true,
            meaning: format!("the kind of {}: {}", prefix.rsplit('.').next().unwrap_or(prefix), kinds.join(", ")),
            kind: None,
        });
        for o in options {
            let (variant, name) = resolve_variant(root, o);
            walk(root, variant, prefix, name.as_deref(), out);
        }
        return;
    }
    let required: BTreeSet<&str> = table
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = table.get("properties").and_then(Value::as_object) else { return };
    for (name, prop) in props {
        if name == "type" && kind.is_some() {
            continue;
        }
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let target = resolve(root, prop);
        let items = target.get("items");
        if target.get("type") == Some(&"array".into())
            && let Some(items) = items
            && is_table(root, items)
        {
            walk(root, items, &format!("{path}[]"), None, out);
            continue;
        }
        if is_table(root, prop) {
            walk(root, prop, &path, None, out);
            continue;
        }
        let mut meaning = description(prop);
        if meaning.is_empty() {
            meaning = description(target);
        }
        if let Some(values) = enum_values(root, prop) {
            meaning = format!("{meaning} One of: {values}.").trim().to_owned();
        }
        out.push(Key {
            path,
            default: prop.get("default").and_then(toml_value),
            required: required.contains(name.as_str()),
            meaning,
            kind: kind.map(str::to_owned),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_meaning_and_the_known_ones_are_there() {
        let keys = keys();
        for k in &keys {
            assert!(!k.meaning.is_empty(), "{} has no doc comment", k.path);
        }
        let paths = paths();
        for p in ["device_id", "mqtt.tls.ca_file", "cameras[].source.path", "cameras[].source.topic", "alerts.cooldown"]
        {
            assert!(paths.contains(p), "{p} missing from {paths:?}");
        }
    }
}
