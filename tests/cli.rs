//! The command line as an operator meets it: check-config, --help, and a
//! clear refusal to run on a bad configuration.

use std::process::{Command, Output};

fn shaper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
        .args(args)
        .output()
        .expect("run smtp-shaper")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/smtp-shaper.toml");
    let output = shaper(&["check-config", "--config", path]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("configuration is valid"));
}

#[test]
fn check_config_lists_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"localhost\"\nmax_message_size = \"big\"\ntypo = 1\n[[gateways]]\nname = \"a\"\n",
    )
    .unwrap();
    let output = shaper(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("4 problem(s)"), "{stderr}");
    assert!(
        stderr.contains(
            "server.listen: \"localhost\" is not valid; accepted: an IP address and port"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("server.max_message_size: \"big\" is not valid; accepted: a whole number with a unit B, KiB, MiB or GiB"), "{stderr}");
    assert!(
        stderr.contains("server.typo: unknown key; accepted here: listen, hostname"),
        "{stderr}"
    );
    assert!(stderr.contains("gateways[0].address: required"), "{stderr}");
}

#[test]
fn check_config_explains_a_missing_file() {
    let output = shaper(&["check-config", "--config", "/nonexistent/smtp-shaper.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("cannot read /nonexistent/smtp-shaper.toml"));
}

#[test]
fn run_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[spool]\ndir = \"x\"\n").unwrap();
    let output = shaper(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("at least one [[gateways]] entry is required"));
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check-config", "--help"],
    ] {
        let output = shaper(args);
        assert!(output.status.success(), "{args:?}");
        assert!(
            text(&output.stdout).contains("Usage: smtp-shaper"),
            "{args:?}"
        );
    }
    assert!(text(&shaper(&["run", "--help"]).stdout).contains("--config"));
}
