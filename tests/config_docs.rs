//! The configuration reference cannot drift from the code: `docs/configuration.md` holds
//! exactly what the config types' doc comments generate, and `examples/vigil.toml` names
//! every key (set, or commented out) and no key that does not exist.

use std::collections::BTreeSet;
use std::path::Path;

use vigil::commands::config_reference::{BEGIN, END, markdown, paths};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_reference_in_the_docs_is_the_one_generated_from_the_config_types() {
    let path = root().join("docs/configuration.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (start, end) = (text.find(BEGIN).expect("the BEGIN marker"), text.find(END).expect("the END marker"));
    let current = &text[start..end + END.len() + 1];
    let generated = markdown();
    if current != generated && std::env::var_os("VIGIL_BLESS").is_some() {
        std::fs::write(&path, text.replace(current, &generated)).unwrap();
        return;
    }
    assert!(
        current == generated,
        "{} differs from the config's doc comments: rerun this test with VIGIL_BLESS=1 to regenerate it (or paste `vigil config-reference`)",
        path.display()
    );
}

/// Every key path the example names, set or commented out (`# key = value`, `# [section]`).
fn example_paths(text: &str) -> BTreeSet<String> {
    let uncommented: String = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            match t.strip_prefix('#').map(str::trim_start) {
                Some(rest)
                    if rest.starts_with('[')
                        || rest.split_once('=').is_some_and(|(k, _)| {
                            !k.trim().is_empty() && k.trim().chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        }) =>
                {
                    rest.to_owned()
                }
                _ => l.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let value: toml::Table = toml::from_str(&uncommented).expect("the example, its commented keys included, is TOML");
    let mut out = BTreeSet::new();
    flatten(&toml::Value::Table(value), "", &mut out);
    out
}

fn flatten(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    let join = |k: &str| if prefix.is_empty() { k.to_owned() } else { format!("{prefix}.{k}") };
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten(v, &join(k), out);
            }
        }
        toml::Value::Array(a) if a.first().is_some_and(|e| e.is_table()) => {
            for e in a {
                flatten(e, &format!("{prefix}[]"), out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn the_example_config_names_every_key_and_only_keys_that_exist() {
    let text = std::fs::read_to_string(root().join("examples/vigil.toml")).unwrap();
    let named = example_paths(&text);
    let known = paths();
    let unknown: Vec<_> = named.difference(&known).collect();
    assert!(unknown.is_empty(), "examples/vigil.toml names keys the config does not have: {unknown:?}");
    let missing: Vec<_> = known.difference(&named).collect();
    assert!(
        missing.is_empty(),
        "examples/vigil.toml does not mention these keys (add them, commented out if need be): {missing:?}"
    );
}
