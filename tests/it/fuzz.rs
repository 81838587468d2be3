//! A bounded fuzz run of the targets in fuzz/ (scripts/fuzz.sh) when
//! SMTP_SHAPER_FUZZ_SECONDS is set (CI sets it); otherwise it says SKIPPED.
//! Building the instrumented targets takes a minute or two. (The fuzz
//! crate's lock file, which the script builds with `--locked`, is checked on
//! every run in `lockfiles`.)

use std::process::Command;

#[test]
fn fuzz_targets_survive_a_bounded_run() {
    let Ok(seconds) = std::env::var("SMTP_SHAPER_FUZZ_SECONDS") else {
        crate::support::skipped("set SMTP_SHAPER_FUZZ_SECONDS=10 to fuzz each target for 10 s");
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let lock_file = format!("{root}/fuzz/Cargo.lock");
    let lock_before = std::fs::read(&lock_file).unwrap();
    let output = Command::new(format!("{root}/scripts/fuzz.sh"))
        .env("FUZZ_SECONDS", seconds)
        .env("CARGO_TARGET_DIR", format!("{root}/target/fuzz"))
        .output()
        .expect("run scripts/fuzz.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("no crash").count(), 3, "{stdout}");
    // It builds with --locked: the tracked lock file is as it was (the
    // script once rewrote it).
    let lock_after = std::fs::read(&lock_file).unwrap();
    assert!(
        lock_after == lock_before,
        "scripts/fuzz.sh changed fuzz/Cargo.lock"
    );
}
