//! `config/smtp-shaper.toml` says it documents every key: each key the
//! configuration reader accepts is shown there (set, or commented out with
//! its default or an example), and each key shown there is accepted.
//!
//! The reader's keys come from the reader itself, as check-config tells a
//! user who misspells one: an unknown key is reported with "accepted here:"
//! and the keys that table accepts. The example, with its commented-out
//! settings switched on, gets an unknown key in every table, so the answer
//! lists every table's keys; no list is kept here by hand.

use std::collections::BTreeSet;

use smtp_shaper::config::Config;

const PROBE: &str = "zz_undocumented_probe";

/// `[server.tls]` or `[[gateways]]` as the path `server.tls`, `gateways`.
fn header(line: &str) -> Option<&str> {
    let inner = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]"));
    inner.or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))
}

/// `key = value` (a line that is TOML on its own, not prose that happens
/// to hold " = ") as `key`.
fn key(line: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(line).ok()?;
    let mut keys = table.keys();
    match (keys.next(), keys.next()) {
        (Some(key), None) if !table[key].is_table() => Some(key.clone()),
        _ => None,
    }
}

/// The example with its commented-out settings switched on (a key already
/// set in the same table stays a comment: it is an alternative form) and
/// the probe in every table; and every key path it documents.
fn switched_on(example: &str) -> (String, BTreeSet<String>) {
    let mut text = format!("{PROBE} = 0\n");
    let mut documented = BTreeSet::new();
    let mut table = String::new();
    let mut set_here = BTreeSet::new();
    for line in example.lines() {
        let bare = line.strip_prefix('#').map_or(line, str::trim_start);
        if let Some(path) = header(bare.trim_end()) {
            table = path.to_string();
            documented.insert(table.clone());
            set_here.clear();
            text.push_str(&format!("{bare}\n{PROBE} = 0\n"));
        } else if let Some(name) = key(bare) {
            documented.insert(format!("{table}.{name}"));
            if set_here.insert(name) {
                text.push_str(bare);
                text.push('\n');
            }
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    (text, documented)
}

/// Every key path the reader said it accepts, array indexes dropped.
fn accepted(problems: &[String]) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for problem in problems {
        let Some((before, list)) = problem.split_once(": unknown key; accepted here: ") else {
            continue;
        };
        // "line 12: gateways[1].shaping.zz_undocumented_probe"
        let path = before.rsplit(": ").next().unwrap();
        let Some(table) = path.strip_suffix(PROBE) else {
            continue;
        };
        let mut table: String = table.trim_end_matches('.').to_string();
        while let (Some(open), Some(close)) = (table.find('['), table.find(']')) {
            table.replace_range(open..=close, "");
        }
        for name in list.split(", ") {
            keys.insert(match table.as_str() {
                "" => name.to_string(),
                table => format!("{table}.{name}"),
            });
        }
    }
    keys
}

#[test]
fn the_example_config_documents_every_key_the_reader_accepts() {
    let root = env!("CARGO_MANIFEST_DIR");
    let example = std::fs::read_to_string(format!("{root}/config/smtp-shaper.toml")).unwrap();
    let (probed, mut documented) = switched_on(&example);
    let problems = Config::parse(&probed)
        .expect_err("the probe is unknown")
        .problems;
    let accepted = accepted(&problems);
    // The top-level tables are documented by their headers; the top level
    // itself has no key of its own.
    documented.retain(|path| !path.starts_with('.'));
    assert!(
        accepted.contains("spool.dir") && accepted.contains("gateways.shaping.max_rate"),
        "the probe found the reader's keys: {accepted:?}\n{problems:#?}"
    );
    let undocumented: Vec<_> = accepted.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "accepted by the reader but not in config/smtp-shaper.toml: {undocumented:?}"
    );
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        unknown.is_empty(),
        "in config/smtp-shaper.toml but not accepted by the reader: {unknown:?}"
    );
}
