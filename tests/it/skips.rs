//! A skipped test shows in a plain `cargo test` (its own output is captured
//! and dropped when it passes): the test binary lists every skip, with its
//! reason, on stderr when it exits.

use std::process::Command;

use crate::support;

/// Set in the copy of the test binary this test runs, where the test skips.
const PROBE: &str = "SMTP_SHAPER_SKIP_PROBE";

#[test]
fn a_skipped_test_is_listed_with_its_reason_when_the_tests_end() {
    if std::env::var_os(PROBE).is_some() {
        support::skipped("the probe's reason (apt-get install nothing)");
        return;
    }
    // This binary again, running only this test, as `cargo test` runs it:
    // output captured (no --nocapture).
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "skips::a_skipped_test_is_listed_with_its_reason_when_the_tests_end",
        ])
        .env(PROBE, "1")
        .env_remove("SMTP_SHAPER_REQUIRE_TOOLS")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("test result: ok. 1 passed"), "{stdout}");
    assert!(
        stderr.contains(
            "SKIPPED 1 (passed without running what needs it; \
             SMTP_SHAPER_REQUIRE_TOOLS=1 makes a missing tool a failure):\n  \
             skips::a_skipped_test_is_listed_with_its_reason_when_the_tests_end: \
             the probe's reason (apt-get install nothing)\n"
        ),
        "{stderr}"
    );
}
