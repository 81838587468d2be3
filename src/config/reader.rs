//! A TOML table reader that keeps going after a problem.
//!
//! Each accessor takes a key out of the table, falls back to the default when the
//! key is absent, and records a problem (and still returns the default) when the
//! value is wrong, so one pass finds every mistake. [`Section::finish`] reports
//! the keys nobody asked for, with the keys that are accepted there. Each
//! problem carries the line of its key in the file ([`Lines`]), or of the
//! nearest table that holds it when the key is missing.

use std::collections::HashMap;
use std::time::Duration;

use toml::{Table, Value};

use super::{ConfigError, units};

/// Where each key path (`server.listen`, `gateways[1].shaping.min_rate`,
/// `server.allowed_networks[2]`) starts in the text, as a line number.
#[derive(Debug, Default)]
pub struct Lines {
    by_path: HashMap<String, usize>,
}

impl Lines {
    /// The lines of every key and array item in `text`, from toml's spans;
    /// empty when the text does not parse (that error has its own position).
    pub fn of(text: &str) -> Lines {
        let mut lines = Lines::default();
        if let Ok(root) = toml::de::DeTable::parse(text) {
            lines.walk_table(text, "", root.get_ref());
        }
        lines
    }

    fn walk_table(&mut self, text: &str, path: &str, table: &toml::de::DeTable<'_>) {
        for (key, value) in table {
            let path = if path.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{path}.{}", key.get_ref())
            };
            // The first mention wins: a table's header, not a later sub-table's.
            self.by_path
                .entry(path.clone())
                .or_insert_with(|| position(text, key.span().start).0);
            self.walk_value(text, &path, value);
        }
    }

    fn walk_value(&mut self, text: &str, path: &str, value: &toml::Spanned<toml::de::DeValue<'_>>) {
        match value.get_ref() {
            toml::de::DeValue::Table(table) => self.walk_table(text, path, table),
            toml::de::DeValue::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let path = format!("{path}[{index}]");
                    self.by_path
                        .entry(path.clone())
                        .or_insert_with(|| position(text, item.span().start).0);
                    self.walk_value(text, &path, item);
                }
            }
            _ => {}
        }
    }

    /// The line of `path`, or of the nearest enclosing key or table that
    /// is in the file (a missing key is reported at its table).
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.by_path.get(path) {
                return Some(*line);
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    // An error span may start inside a character; never panic on it.
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The key path of the `key = value` line holding `offset`, under the last
/// `[table]` or `[[table]]` header before it (`server.max_errors`), for a
/// TOML syntax error that names a line but no key.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let (line, _) = position(text, offset);
    let lines: Vec<&str> = text.lines().collect();
    let key = lines.get(line - 1)?.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
        return None;
    }
    let table = lines[..line - 1].iter().rev().find_map(|earlier| {
        let earlier = earlier.trim();
        earlier
            .starts_with('[')
            .then(|| earlier.trim_matches(['[', ']']).trim().to_string())
    });
    Some(match table {
        Some(table) if !table.is_empty() => format!("{table}.{key}"),
        _ => key.to_string(),
    })
}

/// The problems collected so far, as `line N: key.path: explanation` lines.
#[derive(Debug, Default)]
pub struct Problems {
    found: Vec<String>,
    lines: Lines,
}

impl Problems {
    pub fn new(lines: Lines) -> Problems {
        Problems {
            found: Vec::new(),
            lines,
        }
    }

    pub fn push(&mut self, path: &str, message: &str) {
        self.found.push(match self.lines.line(path) {
            Some(line) => format!("line {line}: {path}: {message}"),
            None => format!("{path}: {message}"),
        });
    }

    pub fn into_result<T>(self, read: T) -> Result<T, ConfigError> {
        if self.found.is_empty() {
            Ok(read)
        } else {
            Err(ConfigError {
                problems: self.found,
            })
        }
    }
}

/// One table of the file, e.g. `server` or `gateways[1]`.
pub struct Section<'p> {
    path: String,
    table: Table,
    known: Vec<&'static str>,
    problems: &'p mut Problems,
}

impl<'p> Section<'p> {
    pub fn new(path: String, table: Table, problems: &'p mut Problems) -> Self {
        Section {
            path,
            table,
            known: Vec::new(),
            problems,
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// True when the table has no keys left to read (e.g. an absent section).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Whether `key` is present (not yet read).
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    pub fn problem(&mut self, key: &str, message: &str) {
        let path = self.key_path(key);
        self.problems.push(&path, message);
    }

    fn take(&mut self, key: &'static str) -> Option<Value> {
        self.known.push(key);
        self.table.remove(key)
    }

    /// A sub-table such as `[server]`; absent means empty (all defaults).
    /// The table under `key` when it is there (an optional section such as
    /// `[cluster]`); the key is known either way.
    pub fn optional_section(&mut self, key: &'static str) -> Option<Table> {
        if self.has(key) {
            Some(self.section(key))
        } else {
            self.known.push(key);
            None
        }
    }

    pub fn section(&mut self, key: &'static str) -> Table {
        match self.take(key) {
            None => Table::new(),
            Some(Value::Table(table)) => table,
            Some(_) => {
                self.problem(key, &format!("expected a table [{key}]"));
                Table::new()
            }
        }
    }

    /// A sub-table such as `[gateways.shaping]`, read as a section of its own
    /// (its problems carry the full key path).
    pub fn subsection(&mut self, key: &'static str) -> Section<'_> {
        let table = self.section(key);
        let path = self.key_path(key);
        Section::new(path, table, self.problems)
    }

    /// An array of tables such as `[[gateways]]`.
    pub fn array_of_sections(&mut self, key: &'static str) -> Vec<Table> {
        match self.take(key) {
            None => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_table) => items
                .into_iter()
                .filter_map(|item| match item {
                    Value::Table(table) => Some(table),
                    _ => None,
                })
                .collect(),
            Some(_) => {
                self.problem(key, &format!("expected one or more [[{key}]] tables"));
                Vec::new()
            }
        }
    }

    /// A string value turned into `T` by `parse`; `default` is parsed the same way.
    pub fn parsed<T>(
        &mut self,
        key: &'static str,
        default: &str,
        accepted: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> T {
        let value = self.take(key);
        value
            .and_then(|value| self.string(key, value, accepted, &parse))
            .unwrap_or_else(|| parse(default).expect("defaults are valid"))
    }

    /// A duration such as `"30s"` or `"5m"`.
    pub fn duration(&mut self, key: &'static str, default: &str) -> Duration {
        self.parsed(key, default, units::DURATION_FORMS, units::parse_duration)
    }

    /// A duration that may be left out (`None`).
    pub fn optional_duration(&mut self, key: &'static str) -> Option<Duration> {
        self.optional(key, units::DURATION_FORMS, units::parse_duration)
    }

    /// A string value that may be left out: absent or `""` is `None`.
    pub fn optional<T>(
        &mut self,
        key: &'static str,
        accepted: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let value = self.take(key)?;
        if value.as_str() == Some("") {
            return None;
        }
        self.string(key, value, accepted, &parse)
    }

    /// A string value that has no default; its absence is a problem.
    pub fn required<T: Default>(
        &mut self,
        key: &'static str,
        accepted: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> T {
        match self.take(key) {
            None => {
                self.problem(key, &format!("required; accepted: {accepted}"));
                T::default()
            }
            Some(value) => self
                .string(key, value, accepted, &parse)
                .unwrap_or_default(),
        }
    }

    /// Parses a present value that must be a string; records why it is not.
    fn string<T>(
        &mut self,
        key: &str,
        value: Value,
        accepted: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let Value::String(text) = value else {
            self.problem(
                key,
                &format!(
                    "expected a string, found {}; accepted: {accepted}",
                    value.type_str()
                ),
            );
            return None;
        };
        let parsed = parse(&text);
        if parsed.is_none() {
            self.problem(
                key,
                &format!("\"{text}\" is not valid; accepted: {accepted}"),
            );
        }
        parsed
    }

    /// A whole number within `min..=max`.
    pub fn integer<T: TryFrom<i64> + Copy>(
        &mut self,
        key: &'static str,
        default: T,
        min: i64,
        max: i64,
    ) -> T {
        let accepted = format!("a whole number from {min} to {max}");
        match self.take(key) {
            None => default,
            Some(Value::Integer(n)) if (min..=max).contains(&n) => {
                T::try_from(n).unwrap_or(default)
            }
            Some(Value::Integer(n)) => {
                self.problem(key, &format!("{n} is out of range; accepted: {accepted}"));
                default
            }
            Some(other) => {
                self.problem(
                    key,
                    &format!("expected {accepted}, found {}", other.type_str()),
                );
                default
            }
        }
    }

    /// A number (integer or float) within `min..=max`.
    pub fn number(&mut self, key: &'static str, default: f64, min: f64, max: f64) -> f64 {
        let accepted = format!("a number from {min} to {max}");
        let value = match self.take(key) {
            None => return default,
            Some(Value::Float(value)) => value,
            Some(Value::Integer(value)) => value as f64,
            Some(other) => {
                self.problem(
                    key,
                    &format!("expected {accepted}, found {}", other.type_str()),
                );
                return default;
            }
        };
        if (min..=max).contains(&value) {
            value
        } else {
            self.problem(
                key,
                &format!("{value} is out of range; accepted: {accepted}"),
            );
            default
        }
    }

    /// `true` or `false`.
    pub fn boolean(&mut self, key: &'static str, default: bool) -> bool {
        match self.take(key) {
            None => default,
            Some(Value::Boolean(value)) => value,
            Some(other) => {
                self.problem(
                    key,
                    &format!("expected true or false, found {}", other.type_str()),
                );
                default
            }
        }
    }

    /// A list of strings, each turned into `T` by `parse`.
    pub fn list<T>(
        &mut self,
        key: &'static str,
        default: &[&str],
        accepted: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Vec<T> {
        let fallback = || {
            default
                .iter()
                .map(|item| parse(item).expect("defaults are valid"))
                .collect()
        };
        let items = match self.take(key) {
            None => return fallback(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.problem(
                    key,
                    &format!(
                        "expected a list, found {}; accepted: {accepted}",
                        other.type_str()
                    ),
                );
                return fallback();
            }
        };
        let mut parsed = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match item.as_str().and_then(&parse) {
                Some(value) => parsed.push(value),
                None => self.problem(
                    &format!("{key}[{index}]"),
                    &format!("{item} is not valid; accepted: {accepted}"),
                ),
            }
        }
        parsed
    }

    /// True when `key` holds a list (`min_rate = ["10/min", "60/h"]`).
    pub fn is_list(&self, key: &str) -> bool {
        matches!(self.table.get(key), Some(Value::Array(_)))
    }

    /// Reports every key left in the table, naming the accepted ones.
    pub fn finish(mut self) {
        let mut unknown: Vec<String> = self.table.keys().cloned().collect();
        unknown.sort();
        let accepted = self.known.join(", ");
        for key in unknown {
            self.problem(&key, &format!("unknown key; accepted here: {accepted}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(position(text, 0), (1, 1));
        assert_eq!(position(text, 6), (2, 1));
        // After "bé = " (é is two bytes): column 6.
        assert_eq!(position(text, 12), (2, 6));
        // Inside é: the character's own column, no panic.
        assert_eq!(position(text, 8), (2, 2));
        assert_eq!(position(text, 999), (3, 1));
    }
}
