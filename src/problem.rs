//! A problem found in a config, the error that lists them, and the value checks that several
//! components' validation shares (ids, topic filters, loopback hosts).

use std::path::PathBuf;

/// One problem found in a config, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `cameras[0].bundle`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A config that could not be loaded or is invalid: every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config{}: {} problem(s):\n{}", if path.as_os_str().is_empty() { String::new() } else { format!(" {}", path.display()) }, problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// The config file.
    pub path: PathBuf,
    /// Every problem, in key order.
    pub problems: Vec<Problem>,
}

/// Collects problems under a key prefix, so that a component checks its own keys without
/// knowing where it sits in the file (`cameras[2].source`).
#[derive(Debug, Default)]
pub struct Problems {
    found: Vec<Problem>,
}

impl Problems {
    /// A problem at `key` (already the full dotted key).
    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.found.push(Problem { key: key.into(), message: message.into() });
    }

    /// A problem at `<prefix>.<leaf>` (or `leaf` alone when `prefix` is empty).
    pub fn at(&mut self, prefix: &str, leaf: &str, message: impl Into<String>) {
        let key = if prefix.is_empty() { leaf.to_owned() } else { format!("{prefix}.{leaf}") };
        self.add(key, message);
    }

    /// Every problem, in the order found.
    pub fn into_vec(self) -> Vec<Problem> {
        self.found
    }
}

/// An id used in topics, alerts and file names: letters, digits, `-`, `_`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A valid MQTT topic filter (levels, `+` alone in a level, `#` alone and last).
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "+" => true,
        "#" => i == levels.len() - 1,
        other => !other.contains('+') && !other.contains('#'),
    })
}

/// Whether `host` is this machine (plain TCP to it never leaves the machine).
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
