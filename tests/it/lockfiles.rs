//! The lock files builds are told to use: the README installs with
//! `cargo install --locked --path .` (without `--locked`, cargo install
//! ignores Cargo.lock and builds with whatever versions are newest), and
//! scripts/fuzz.sh builds fuzz/ with `--locked` (it used to rewrite the
//! tracked fuzz/Cargo.lock). `--locked` fails on a lock file that is out of
//! date, so each must be current.

use std::collections::BTreeSet;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Asks cargo whether the lock file of `manifest` resolves it with nothing
/// to change; the error text otherwise.
fn lock_is_current(manifest: &str) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    // Offline first: the index cache the main build filled is enough, and
    // no test should need the network when it can do without.
    let check = |offline: bool| {
        let mut command = Command::new(&cargo);
        command
            .args(["update", "--workspace", "--locked", "--manifest-path"])
            .arg(format!("{ROOT}/{manifest}"));
        if offline {
            command.arg("--offline");
        }
        command.output().expect("run cargo")
    };
    let stale = |output: &std::process::Output| {
        String::from_utf8_lossy(&output.stderr).contains("because --locked was passed")
    };
    let mut output = check(true);
    if !output.status.success() && !stale(&output) {
        output = check(false);
    }
    match output.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

#[test]
fn the_install_command_uses_cargo_lock_and_it_is_current() {
    let mut documents = vec![format!("{ROOT}/README.md")];
    for folder in ["deploy", "docs", "config", "scripts"] {
        let mut stack = vec![std::path::PathBuf::from(format!("{ROOT}/{folder}"))];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else {
                documents.push(path.display().to_string());
            }
        }
    }
    let mut installs = 0;
    for document in &documents {
        let Ok(text) = std::fs::read_to_string(document) else {
            continue; // not text (an image)
        };
        for line in text
            .lines()
            .filter(|line| line.contains("cargo install --"))
        {
            installs += 1;
            assert!(line.contains("--locked"), "{document}: {line}");
        }
    }
    assert!(installs > 0, "the README says how to install");
    if let Err(error) = lock_is_current("Cargo.toml") {
        panic!("`cargo install --locked` would fail: Cargo.lock is out of date\n{error}");
    }
}

/// What `cargo build --locked` in fuzz/ needs: fuzz/Cargo.lock resolves the
/// fuzz crate as it is, with nothing to add (a dependency added to the crate
/// must be added there too), and every package it shares with Cargo.lock at
/// the same version, so the fuzzers test what ships.
#[test]
fn the_fuzz_lock_file_is_current_and_pins_the_shipped_versions() {
    let refresh = "refresh it: cp Cargo.lock fuzz/Cargo.lock && \
                   cargo update --workspace --manifest-path fuzz/Cargo.toml";
    if let Err(error) = lock_is_current("fuzz/Cargo.toml") {
        panic!("fuzz/Cargo.lock is out of date; {refresh}\n{error}");
    }
    let packages = |path: &str| -> BTreeSet<(String, String)> {
        let text = std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap();
        let lock: toml::Table = toml::from_str(&text).unwrap();
        lock["package"]
            .as_array()
            .unwrap()
            .iter()
            .map(|package| {
                let field = |key: &str| package[key].as_str().unwrap().to_string();
                (field("name"), field("version"))
            })
            .collect()
    };
    let shipped = packages("Cargo.lock");
    let shipped_names: BTreeSet<&String> = shipped.iter().map(|(name, _)| name).collect();
    let differing: Vec<_> = packages("fuzz/Cargo.lock")
        .into_iter()
        .filter(|package| shipped_names.contains(&package.0) && !shipped.contains(package))
        .collect();
    assert!(
        differing.is_empty(),
        "fuzz/Cargo.lock pins other versions than Cargo.lock: {differing:?}; {refresh}"
    );
}
