//! The command line as an operator meets it: check-config, --help, a
//! clear refusal to run on a bad configuration, and the queue command's
//! options wherever they are typed.

use std::process::{Command, Output};

use crate::support::Harness;

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
fn the_deployment_examples_carry_valid_configs() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "config/exchange-online.toml",
        "config/exchange-online-hve.toml",
        "deploy/systemd/smtp-shaper.toml",
        "deploy/docker/smtp-shaper.toml",
    ] {
        let path = format!("{root}/{file}");
        // The secrets they name exist where they run, not here.
        let output = shaper(&["check-config", "--file-only", "--config", &path]);
        assert!(output.status.success(), "{file}: {}", text(&output.stderr));
    }
    let here = shaper(&[
        "check-config",
        "--config",
        &format!("{root}/config/exchange-online.toml"),
    ]);
    assert!(
        text(&here.stderr).contains("smtp-shaper-entra-client-secret"),
        "without --file-only, the missing secret is said: {here:?}"
    );
    // The Kubernetes ConfigMap's smtp-shaper.toml (a YAML block scalar).
    let manifest = std::fs::read_to_string(format!(
        "{root}/deploy/kubernetes/app-with-smtp-shaper.yaml"
    ))
    .unwrap();
    let block: String = manifest
        .split("smtp-shaper.toml: |\n")
        .nth(1)
        .expect("the ConfigMap holds smtp-shaper.toml")
        .lines()
        .take_while(|line| line.is_empty() || line.starts_with("    "))
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    assert!(block.contains("[[gateways]]"), "{block}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("configmap.toml");
    std::fs::write(&path, &block).unwrap();
    let output = shaper(&[
        "check-config",
        "--file-only",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "ConfigMap: {}",
        text(&output.stderr)
    );
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
    // Each at the line of its key (a missing key: its table's header).
    for (line, key) in [
        (2, "server.listen"),
        (3, "server.max_message_size"),
        (4, "server.typo"),
        (5, "gateways[0].address"),
    ] {
        assert!(
            stderr.contains(&format!("  line {line}: {key}: ")),
            "{stderr}"
        );
    }
}

#[test]
fn check_config_places_a_toml_syntax_error_at_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:2525\"\nhostname = = \"x\"\n",
    )
    .unwrap();
    let output = shaper(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("1 problem(s):\n  line 3, column 12: server.hostname: not valid TOML: "),
        "{stderr}"
    );
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
fn hash_password_prints_a_hash_that_verifies_with_a_new_salt_each_time() {
    use argon2::{PasswordHash, PasswordVerifier};
    use std::io::Write;
    let hash = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
            .arg("hash-password")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"app password\n")
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        text(&output.stdout).trim().to_string()
    };
    let (first, second) = (hash(), hash());
    let salts: Vec<String> = [&first, &second]
        .into_iter()
        .map(|hash| {
            let parsed = PasswordHash::new(hash).unwrap();
            argon2::Argon2::default()
                .verify_password(b"app password", &parsed)
                .unwrap();
            assert!(
                argon2::Argon2::default()
                    .verify_password(b"app passwore", &parsed)
                    .is_err()
            );
            let salt = parsed.salt.unwrap().to_string();
            // 16 random bytes, 22 characters of unpadded base64.
            assert_eq!(salt.len(), 22, "{hash}");
            salt
        })
        .collect();
    assert_ne!(salts[0], salts[1]);
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check-config", "--help"],
        &["learn", "--help"],
        &["simulate", "--help"],
    ] {
        let output = shaper(args);
        assert!(output.status.success(), "{args:?}");
        assert!(
            text(&output.stdout).contains("Usage: smtp-shaper"),
            "{args:?}"
        );
    }
    assert!(text(&shaper(&["run", "--help"]).stdout).contains("--config"));
    let learn = text(&shaper(&["learn", "--help"]).stdout);
    for flag in [
        "--postfix-log",
        "--exchange-trace",
        "--csv",
        "--gateway",
        "--replace",
    ] {
        assert!(learn.contains(flag), "{flag}: {learn}");
    }
    assert!(text(&shaper(&["simulate", "--help"]).stdout).contains("--history"));
}

#[test]
fn the_demo_holds_the_burst_whole_and_loses_nothing() {
    // Ten times faster than a person would watch it (and over before
    // another test's `smtp-shaper run` gives up waiting for port 9325).
    let output = shaper(&["demo", "--time-scale", "0.1"]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    let summary = stdout
        .split("smtp-shaper demo: summary")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary in:\n{stdout}"));
    let row = |app: &str| -> Vec<u64> { summary_row(summary, app) };
    // app, messages, accepted, lost, delivered, held, p50, p99
    let (messages, accepted, lost, delivered, held) = (0, 1, 2, 3, 4);
    let newsletter = row("newsletter");
    let alerts = row("alerts");
    for app in [&newsletter, &alerts] {
        // The apps send each message once: none was refused, none lost.
        assert_eq!(app[lost], 0, "{summary}");
        assert_eq!(app[messages], app[accepted], "{summary}");
        // What was accepted was delivered or is still in the spool.
        assert_eq!(app[accepted], app[delivered] + app[held], "{summary}");
    }
    assert!(
        summary.contains("lost 0: nothing was refused (the service counted 0 deferrals)"),
        "{summary}"
    );
    assert!(
        summary.contains("the burst: 400 of 400 accepted at once"),
        "{summary}"
    );
    // More than the hour lets the bulk app send: part of it left during
    // the run, the rest is held for the budget, as its 250 said.
    assert!(newsletter[messages] > 400, "{summary}");
    assert!(
        newsletter[delivered] > 0 && newsletter[held] > 0,
        "{summary}"
    );
    assert!(
        summary.contains(" held wait for room for bulk mail in the hour budget"),
        "{summary}"
    );
    let longest = summary
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("250 2.0.0 Ok: queued as "))
        .unwrap_or_else(|| panic!("no 250 with a wait in:\n{summary}"));
    assert!(
        longest.contains("; leaves in about ") && longest.ends_with("(hourly volume budget)"),
        "{longest}"
    );
    // The transactional app is never held behind the burst.
    assert_eq!(alerts[held], 0, "{summary}");
    assert!(alerts[delivered] > 0, "{summary}");
    assert!(summary.contains("alerts were never held"), "{summary}");
    // Piped: the metrics address comes first, progress lines have the
    // per-app counts and the budgets.
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.contains("/metrics"), "{stdout}");
    let progress: Vec<&str> = stdout.lines().filter(|l| l.starts_with("t=")).collect();
    assert!(!progress.is_empty(), "{stdout}");
    for line in progress {
        assert!(
            line.contains("| newsletter: ")
                && line.contains("| alerts: ")
                && line.contains(" lost")
                && line.contains("hour budget "),
            "{line}"
        );
    }
}

/// `smtp-shaper ARGS` as a user types it in `cwd` (the binary on PATH):
/// waits until it has started and returns it with its log so far. The
/// ports of the embedded default and the example config may be taken a
/// moment by another test's demo (9325): a few tries, never a timing
/// assertion.
fn start_as_typed(cwd: &std::path::Path, args: &[&str]) -> (std::process::Child, String) {
    let log = cwd.join("run.log");
    for _ in 0..20 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        loop {
            let logged = std::fs::read_to_string(&log).unwrap();
            if logged.contains("smtp-shaper started") {
                return (child, logged);
            }
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    logged.contains("Address already in use"),
                    "`smtp-shaper {}` failed ({status}):\n{logged}",
                    args.join(" ")
                );
                std::thread::sleep(std::time::Duration::from_millis(500));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    panic!("the ports of `smtp-shaper {}` stayed busy", args.join(" "));
}

/// SIGTERM, as Ctrl-C would stop it; it must exit 0.
fn stop(mut child: std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// The spool folder a started service logged, under `cwd` when relative.
fn logged_spool(cwd: &std::path::Path, logged: &str) -> std::path::PathBuf {
    let spool = logged
        .split(" spool=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no spool in:\n{logged}"));
    cwd.join(spool)
}

#[test]
fn the_demos_closing_hint_runs_as_shown_inside_the_current_folder() {
    let output = shaper(&["demo", "--time-scale", "0.01"]);
    let stdout = text(&output.stdout);
    let hint = stdout
        .lines()
        .find_map(|line| line.split_once("Try it for real: ").map(|(_, hint)| hint))
        .unwrap_or_else(|| panic!("no hint in:\n{stdout}"));
    let command: Vec<&str> = hint
        .split("   (")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(command[0], "smtp-shaper", "{hint}");
    let dir = tempfile::tempdir().unwrap();
    let (child, logged) = start_as_typed(dir.path(), &command[1..]);
    stop(child);
    // Everything it keeps is in the folder it was started in (no
    // /var/spool, so no root needed).
    let spool = logged_spool(dir.path(), &logged);
    assert!(spool.starts_with(dir.path()) && spool.is_dir(), "{logged}");
}

#[test]
fn the_readmes_quick_start_commands_work_as_typed() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .find(|block| {
            block.starts_with("smtp-shaper check-config --config config/smtp-shaper.toml")
        })
        .and_then(|block| block.split("```").next())
        .expect("the quick start's block of commands");
    let lines: Vec<&str> = block
        .lines()
        .map(|line| line.split("  #").next().unwrap().trim())
        .collect();
    let dir = user_folder();
    // The service line first (it runs until stopped), then the rest,
    // `queue list` asking the running one.
    let run = lines
        .iter()
        .find(|line| line.starts_with("smtp-shaper run "))
        .expect("a run line");
    let args: Vec<&str> = run.split_whitespace().skip(1).collect();
    let (service, logged) = start_as_typed(dir.path(), &args);
    assert!(
        logged_spool(dir.path(), &logged).starts_with(dir.path()),
        "{logged}"
    );
    for line in lines.iter().filter(|line| *line != run) {
        let output = as_typed(dir.path(), line);
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        // check-dns answers 1 for a domain that is not set up right (and
        // example.com is not set up for 192.0.2.25): a verdict, not a failure.
        let verdict = line.contains("check-dns") && stdout.starts_with("example.com:\n");
        assert!(
            output.status.success() || verdict,
            "`{line}`: {}\n{stdout}{stderr}",
            output.status
        );
    }
    assert!(dir.path().join("burst.svg").is_file());
    stop(service);
}

/// The numbers of `app`'s row in the demo's summary (seconds without the s).
fn summary_row(summary: &str, app: &str) -> Vec<u64> {
    summary
        .lines()
        .find(|line| line.trim_start().starts_with(app))
        .unwrap_or_else(|| panic!("no {app} row in:\n{summary}"))
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.trim_end_matches('s').parse::<f64>().ok())
        .map(|number| number as u64)
        .collect()
}

#[test]
fn ctrl_c_ends_the_demo_with_the_summary_so_far() {
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(env!("CARGO_BIN_EXE_smtp-shaper"))
        .args(["demo", "--time-scale", "0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // Once it reports progress, interrupt it as Ctrl-C would.
    let mut seen = String::new();
    while !seen.lines().any(|line| line.starts_with("t=")) {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "ended early: {seen}"
        );
        seen.push_str(&line);
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    stdout.read_to_string(&mut seen).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{seen}");
    let summary = seen
        .split("smtp-shaper demo: summary so far (stopped at t = ")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary so far in:\n{seen}"));
    let alerts = summary_row(summary, "alerts");
    assert_eq!(alerts.len(), 7, "{summary}");
    assert!(summary.contains("when you stopped it"), "{summary}");
    // No end-of-run accounting for a run cut short.
    assert!(!summary.contains(" = delivered "), "{summary}");
}

/// `shaper` off the async runtime, so the service in the test keeps serving.
/// `smtp-shaper queue --http HTTP WORDS...`, as an operator types it.
fn queue_at(http: &str, words: &[&str]) -> impl std::future::Future<Output = Output> + use<> {
    let mut args = vec!["queue".to_string(), "--http".into(), http.to_string()];
    args.extend(words.iter().map(|w| w.to_string()));
    shaper_async(args)
}

async fn shaper_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        shaper(&args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_commands_options_go_before_or_after_the_action() {
    let h = Harness::start().await;
    let http = h.service.http_address().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("admin.toml");
    std::fs::write(&config, format!("[http]\nlisten = \"{http}\"\n[[gateways]]\nname = \"primary\"\naddress = \"127.0.0.1:25\"\n")).unwrap();
    let config = config.to_str().unwrap().to_string();
    for args in [
        vec!["queue", "list", "--http", &http],
        vec!["queue", "--http", &http, "list"],
        vec!["queue", "list", "--gateway", "primary", "--http", &http],
        vec!["queue", "list", "--config", &config],
        vec!["queue", "dead", "-c", &config],
    ] {
        let output = shaper_async(args.iter().map(|a| a.to_string()).collect()).await;
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
    let held = shaper_async(
        ["queue", "hold", "primary", "--http", &http]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert_eq!(
        text(&held.stdout),
        "gateway primary held\n",
        "{}",
        text(&held.stderr)
    );
    let listed = shaper_async(
        ["queue", "list", "--http", &http]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert_eq!(text(&listed.stdout), "queue is empty\n");
    h.shutdown().await;
}

#[test]
fn the_service_and_the_queue_command_refuse_the_same_short_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "fifteen-chars-x\n").unwrap();
    let config = dir.path().join("smtp-shaper.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[spool]\ndir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n[[gateways]]\nname = \"primary\"\naddress = \"127.0.0.1:25\"\n",
            dir.path().join("spool").display(),
            token.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let refusal = "the token must be at least 16 characters";
    let run = shaper(&["run", "--config", config]);
    assert_eq!(run.status.code(), Some(1));
    assert!(text(&run.stderr).contains(refusal), "{}", text(&run.stderr));
    let queue = shaper(&["queue", "list", "--config", config]);
    assert_eq!(queue.status.code(), Some(2));
    assert!(
        text(&queue.stderr).contains(refusal),
        "{}",
        text(&queue.stderr)
    );

    // One character more, and the queue command goes on to ask the service
    // (which is not running here).
    std::fs::write(&token, "sixteen-chars-xx\n").unwrap();
    let queue = shaper(&["queue", "list", "--config", config]);
    assert_eq!(queue.status.code(), Some(2));
    assert!(
        text(&queue.stderr).contains("cannot reach smtp-shaper's admin API"),
        "{}",
        text(&queue.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_id_reaches_the_admin_api_as_one_name() {
    let h = Harness::start().await;
    let http = h.service.http_address().unwrap().to_string();
    let queue = |words: &[&str]| queue_at(&http, words);
    assert!(queue(&["hold", "primary"]).await.status.success());
    let mut client = h.client().await;
    let id = client
        .accepted(
            "app@example.com",
            &["kept@example.org"],
            b"Subject: kept\r\n\r\nhi\r\n",
        )
        .await;
    // Unencoded, `ID?x` was a query on ID's path: it deleted ID.
    let typo = format!("{id}?x");
    let refused = queue(&["delete", &typo]).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains(&format!("no queued message {typo} ")) && stderr.contains("(HTTP 404)"),
        "{stderr}"
    );
    let shown = queue(&["show", &id]).await;
    assert!(text(&shown.stdout).contains("Subject: kept"), "{shown:?}");
    // A space and a slash: one name, not a broken request line or a route.
    let odd = queue(&["show", "a b/retry"]).await;
    assert!(
        text(&odd.stderr).contains("no queued message a b/retry "),
        "{odd:?}"
    );
    let dead = queue(&["requeue", "x/../y z.eml"]).await;
    assert!(
        text(&dead.stderr).contains("no dead letter x/../y z.eml"),
        "{dead:?}"
    );
    client.command("QUIT").await;
    h.shutdown().await;
}

#[test]
fn the_queue_command_tells_a_peer_that_is_not_the_admin_api_from_no_peer() {
    use std::io::{Read, Write};
    // Something else on the port: an SMTP server, say.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let _ = stream.write_all(b"220 mail.example.com ESMTP\r\n");
    });
    let output = shaper(&["queue", "list", "--http", &address]);
    peer.join().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "unusable answer from the admin API at http://{address}"
        )),
        "{stderr}"
    );
}

/// The README's "Putting smtp-shaper in front of a gateway that already
/// sends": its commands work as typed in a user's folder, and what it shows
/// of their output is what they print (dates and what depends on the day
/// `learn` runs aside).
#[test]
fn the_readmes_learn_commands_work_as_typed_and_print_what_it_shows() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let section = readme
        .split("### Putting smtp-shaper in front of a gateway that already sends")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the section");
    let blocks: Vec<&str> = section
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|block| block.trim_start_matches("sh").trim_start_matches('\n'))
        .collect();
    let commands: Vec<&str> = blocks
        .iter()
        .find(|block| {
            block.starts_with("smtp-shaper simulate --config traces/existing-gateway.toml")
        })
        .expect("the commands")
        .lines()
        .map(|line| line.split("  #").next().unwrap().trim())
        .collect();
    let mut shown = blocks.iter().filter(|block| {
        block.starts_with("held in the queue")
            || block.starts_with("history:")
            || block.starts_with("gateway \"apps\"")
    });
    let dir = user_folder();
    let mut checked = 0;
    for command in &commands {
        let output = as_typed(dir.path(), command);
        let stdout = text(&output.stdout);
        assert!(
            output.status.success(),
            "`{command}`: {stdout}{}",
            text(&output.stderr)
        );
        if !command.starts_with("smtp-shaper ") {
            continue;
        }
        let shown = shown.next().expect("its output shown");
        for line in shown.lines() {
            if ["  span", "  allowance", "  baseline"]
                .iter()
                .any(|dated| line.starts_with(dated))
            {
                continue;
            }
            let line = line.split(" from 20").next().unwrap();
            assert!(
                stdout.contains(line),
                "`{command}` does not print {line:?}:\n{stdout}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 3, "{commands:?}");
    assert!(
        dir.path()
            .join("smtp-shaper-spool/shaping/apps.toml")
            .is_file()
    );
}

/// `queue hold` is saved with the shaping state: a restart keeps the
/// gateway held until `queue release`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_hold_outlasts_a_restart() {
    use crate::support::{Client, Sink, eventually, fetch, start, test_config};
    let sink = Sink::start().await;
    let spool = tempfile::tempdir().unwrap();
    let service = start(test_config(spool.path(), sink.address)).await;
    let http = service.http_address().unwrap().to_string();
    let held = shaper_async(
        ["queue", "hold", "primary", "--http", &http]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(held.status.success(), "{held:?}");
    service.shutdown().await;

    let service = start(test_config(spool.path(), sink.address)).await;
    let http = service.http_address().unwrap();
    let status = fetch(http, "GET", "/status", None).await.body;
    assert!(status.contains("\"held\":true"), "{status}");
    let mut client = Client::ready(service.smtp_address()).await;
    client
        .accepted(
            "app@example.com",
            &["kept@example.org"],
            b"Subject: k\r\n\r\nk\r\n",
        )
        .await;
    let listed = fetch(http, "GET", "/admin/queue", None).await.body;
    assert_eq!(listed.lines().count(), 1, "held, not delivered: {listed}");
    let released = shaper_async(
        ["queue", "release", "primary", "--http", &http.to_string()]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(released.status.success(), "{released:?}");
    eventually("delivered once released", || sink.count() == 1).await;
    client.command("QUIT").await;
    service.shutdown().await;
}

/// A retry does not end a pause the gateway asked for, and says so; `queue
/// unpause` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_says_a_throttling_pause_holds_and_unpause_ends_it() {
    let h = Harness::with(|config| {
        config.gateways[0].shaping.backoff_pause = std::time::Duration::from_secs(3_600);
    })
    .await;
    h.sink
        .behavior
        .lock()
        .unwrap()
        .data_replies
        .push_back("451 4.7.500 Server busy. Please try again later".into());
    let http = h.service.http_address().unwrap().to_string();
    let queue = |words: &[&str]| queue_at(&http, words);
    let mut client = h.client().await;
    client
        .accepted(
            "app@example.com",
            &["later@example.org"],
            b"Subject: l\r\n\r\nl\r\n",
        )
        .await;
    crate::support::eventually("the gateway throttled", || {
        h.service.shaping("primary").unwrap().model.paused_for > 3_000.0
    })
    .await;
    let retried = queue(&["retry", "--all"]).await;
    assert!(retried.status.success(), "{retried:?}");
    let said = text(&retried.stdout);
    assert!(
        said.contains("gateway primary asked us to wait")
            && said.contains("smtp-shaper queue unpause primary"),
        "{said}"
    );
    assert_eq!(h.sink.count(), 0);
    let unpaused = queue(&["unpause", "primary"]).await;
    assert!(unpaused.status.success(), "{unpaused:?}");
    assert!(
        text(&unpaused.stdout).contains("gateway primary: ended its pause"),
        "{unpaused:?}"
    );
    crate::support::eventually("delivered once unpaused", || h.sink.count() == 1).await;
    let again = queue(&["unpause", "primary"]).await;
    assert!(
        text(&again.stdout).contains("gateway primary was not paused"),
        "{again:?}"
    );
    client.command("QUIT").await;
    h.shutdown().await;
}

/// A segment keeps its space until all its messages are finished: a
/// segment_size near the free space is worth a warning, not a refusal.
#[test]
fn check_config_warns_of_a_segment_size_the_disk_cannot_hold_a_few_of() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shaper.toml");
    std::fs::write(
        &config,
        format!(
            "[spool]\ndir = \"{}\"\nsegment_size = \"100000GiB\"\n[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let output = shaper(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(
            "warning: spool.segment_size (102400000 MiB) is more than a quarter of the free space"
        ),
        "{stderr}"
    );
    assert!(text(&output.stdout).contains("configuration is valid"));
}

/// check-config loads what run would fail on; without --config it checks
/// the embedded default, which `config --default` prints.
#[test]
fn check_config_catches_what_run_would_fail_on_and_knows_the_embedded_default() {
    let default = shaper(&["check-config"]);
    assert!(default.status.success(), "{default:?}");
    assert!(
        text(&default.stdout).contains("the embedded default: configuration is valid"),
        "{default:?}"
    );
    let printed = shaper(&["config", "--default"]);
    assert!(printed.status.success());
    assert_eq!(
        text(&printed.stdout),
        smtp_shaper::config::EMBEDDED_DEFAULT,
        "the embedded default, as is"
    );

    let dir = tempfile::tempdir().unwrap();
    let spool_file = dir.path().join("spool-is-a-file");
    std::fs::write(&spool_file, "not a folder").unwrap();
    let config = dir.path().join("shaper.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:2600\"\n[server.tls]\ncertificate = \"{0}/missing.pem\"\nkey = \"{0}/missing.key\"\n[spool]\ndir = \"{1}\"\n[http]\nlisten = \"127.0.0.1:2600\"\n[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n",
            dir.path().display(),
            spool_file.display()
        ),
    )
    .unwrap();
    let checked = shaper(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(checked.status.code(), Some(1), "{checked:?}");
    let said = text(&checked.stderr);
    assert!(said.contains("3 problem(s) run would fail on"), "{said}");
    assert!(
        said.contains("server.tls: ") && said.contains("missing.pem"),
        "{said}"
    );
    assert!(
        said.contains("spool.dir: ") && said.contains("is a file"),
        "{said}"
    );
    assert!(
        said.contains("http.listen: 127.0.0.1:2600 is also server.listen"),
        "{said}"
    );
    // run names the file it refuses.
    std::fs::write(&config, "[server]\nlisten = 5\n").unwrap();
    let run = shaper(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).starts_with(&format!("{}: invalid configuration:", config.display())),
        "{}",
        text(&run.stderr)
    );
}

/// At a terminal, hash-password prompts and does not show the password
/// typed (a pseudo-terminal from util-linux's `script`, which echoes what
/// the terminal would).
#[test]
fn hash_password_at_a_terminal_prompts_and_hides_the_password() {
    use std::io::{BufRead, Read, Write};
    let found = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        crate::support::skip_without("script", "apt-get install bsdutils");
        return;
    }
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!(
            "{} hash-password",
            env!("CARGO_BIN_EXE_smtp-shaper")
        ))
        .arg("/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run script");
    // No prompt would leave the read below waiting: end it after a while.
    let pid = child.id().to_string();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .is_err()
        {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    });
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // Wait for the prompt: the echo is off once it shows.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("(not shown): ") {
        let mut byte = [0u8; 1];
        assert_eq!(stdout.read(&mut byte).unwrap(), 1, "no prompt: {seen:?}");
        seen.push(byte[0]);
    }
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"topsecret\n")
        .unwrap();
    let mut rest = String::new();
    for line in stdout.by_ref().lines() {
        let line = line.unwrap();
        rest.push_str(&line);
        rest.push('\n');
        if line.contains("$argon2id$") {
            break;
        }
    }
    let _ = child.wait();
    let _ = done.send(());
    let _ = watchdog.join();
    let shown = format!("{}{rest}", String::from_utf8_lossy(&seen));
    assert!(shown.contains("$argon2id$"), "{shown}");
    assert!(
        !shown.contains("topsecret"),
        "the password was shown: {shown}"
    );
}

/// A user's folder: the repository's `config/` and `traces/`, nothing
/// written into them.
fn user_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for folder in ["config", "traces"] {
        let shipped = format!("{}/{folder}", env!("CARGO_MANIFEST_DIR"));
        std::os::unix::fs::symlink(shipped, dir.path().join(folder)).unwrap();
    }
    dir
}

/// `command` as a user types it in `folder`, with this build's
/// `smtp-shaper` first on the PATH.
fn as_typed(folder: &std::path::Path, command: &str) -> Output {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_smtp-shaper"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .args(["-c", command])
        .current_dir(folder)
        .env("PATH", &path)
        .output()
        .unwrap()
}

/// The README's section under `heading` (a `### ` one), to the next.
fn readme_section(heading: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    readme
        .split(&format!("### {heading}\n"))
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("the section")
        .to_string()
}

/// The README's "What each receiver sees": its command works as typed in a
/// user's folder and prints each receiver's view, Gmail over its floor.
#[test]
fn the_readmes_receiver_command_works_as_typed() {
    let section = readme_section("What each receiver sees");
    let command = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the command");
    let dir = user_folder();
    let output = as_typed(dir.path(), command);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "`{command}`: {stdout}{}",
        text(&output.stderr)
    );
    let views: Vec<&str> = stdout
        .split("what each receiver sees")
        .nth(1)
        .expect("the receivers' section")
        .lines()
        .filter(|line| line.starts_with("google") || line.starts_with("microsoft"))
        .collect();
    assert_eq!(views.len(), 2, "{stdout}");
    assert!(
        views[0].contains("/ 20 "),
        "Gmail judged against its floor: {stdout}"
    );
}

/// The README's table of built-in receivers is the table the code has.
#[test]
fn the_readmes_receiver_table_is_the_built_in_one() {
    use smtp_shaper::policy::receivers::{OTHER, Receivers};
    let section = readme_section("What each receiver sees");
    let list = |cell: &str| -> Vec<String> {
        cell.split(',')
            .map(|item| item.trim().replace("\\*", "*"))
            .filter(|item| !item.is_empty() && item != "everything else")
            .collect()
    };
    let rows: Vec<(String, Vec<String>, Vec<String>)> = section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (
                cells[1].trim_matches('`').to_string(),
                list(cells[2]),
                list(cells[3]),
            )
        })
        .collect();
    let receivers = Receivers::builtin();
    let mut built_in: Vec<(String, Vec<String>, Vec<String>)> = receivers
        .all()
        .iter()
        .map(|receiver| {
            (
                receiver.name.clone(),
                receiver.domains.clone(),
                receiver.mx.clone(),
            )
        })
        .collect();
    built_in.push((OTHER.to_string(), Vec::new(), Vec::new()));
    assert_eq!(rows, built_in);
}
