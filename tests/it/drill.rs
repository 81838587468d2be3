//! Reliability drill (issue "sender hygiene and hardening", item 8): many
//! messages while the proxy is SIGKILLed five times and the gateway flaps,
//! then a spool on a tiny file system that fills up. It prints accepted,
//! delivered, lost (must be 0), duplicates, and the replies applications saw
//! when the disk was full (must be 4xx).
//!
//! `cargo test` runs it small (DRILL_MESSAGES, default 2,000);
//! `scripts/drill.sh` runs the full 20,000 in release mode.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{self, Client, Sink, eventually, free_address, spawn, write_config_with};

fn body(tag: &str) -> Vec<u8> {
    format!("Subject: {tag}\r\nMessage-ID: <{tag}@drill.test>\r\n\r\ndrill {tag}\r\n").into_bytes()
}

fn tag_of(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .find_map(|line| line.strip_prefix("Subject: "))
        .map(str::to_string)
}

/// Offers one message; the final reply code, or None when the connection
/// broke (the proxy was killed).
async fn offer(client: &mut Client, tag: &str) -> Option<u16> {
    let envelope = b"MAIL FROM:<drill@example.com>\r\nRCPT TO:<rcpt@example.org>\r\nDATA\r\n";
    client.try_send_raw(envelope).await.then_some(())?;
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(client.reply().await?.code);
    }
    if codes != [250, 250, 354] {
        client.try_send_raw(b"RSET\r\n").await.then_some(())?;
        client.reply().await?;
        return Some(codes.into_iter().find(|code| *code != 250).unwrap_or(0));
    }
    client
        .try_send_raw(&support::stuff(&body(tag)))
        .await
        .then_some(())?;
    Some(client.reply().await?.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_kills_flaps_and_a_full_disk_lose_nothing() {
    let messages: usize = std::env::var("DRILL_MESSAGES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(2_000);
    let dir = tempfile::tempdir().unwrap();
    let gateway = free_address();
    let listen = free_address();
    let config = write_config_with(dir.path(), listen, gateway, "");
    // What every sink that ever played the gateway received.
    let mut sink = Sink::start_on(gateway).await;
    let mut inboxes = vec![sink.received.clone()];

    let accepted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let next: Arc<Mutex<usize>> = Arc::default();
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (accepted, next) = (accepted.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            let mut pending: Option<String> = None;
            loop {
                let tag = match pending.take() {
                    Some(tag) => tag,
                    None => {
                        let mut next = next.lock().unwrap();
                        if *next >= messages {
                            return;
                        }
                        *next += 1;
                        format!("m{}", *next)
                    }
                };
                // Connect (the proxy may be down), then offer until 250.
                let Some(mut client) = Client::try_ready(listen).await else {
                    pending = Some(tag);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let mut tag = tag;
                loop {
                    match offer(&mut client, &tag).await {
                        Some(250) => {
                            accepted.lock().unwrap().insert(tag);
                            let mut next = next.lock().unwrap();
                            if *next >= messages {
                                return;
                            }
                            *next += 1;
                            tag = format!("m{}", *next);
                        }
                        // A 4xx: an application retries the same message.
                        Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        None => {
                            pending = Some(tag);
                            break;
                        }
                    }
                }
            }
        }));
    }

    // Five SIGKILLs of the proxy, the gateway flapping in between.
    let mut process = spawn(&config, listen).await;
    for round in 0..5 {
        let target = messages * (round + 1) / 6;
        eventually("the load to progress", || {
            accepted.lock().unwrap().len() >= target
        })
        .await;
        process.kill();
        if round % 2 == 0 {
            // The gateway goes away while the proxy is down, and comes back later.
            sink.stop();
            process = spawn(&config, listen).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            sink = Sink::start_on(gateway).await;
            inboxes.push(sink.received.clone());
        } else {
            process = spawn(&config, listen).await;
        }
    }
    let started = std::time::Instant::now();
    for sender in senders {
        sender.await.unwrap();
    }
    let sent = std::time::Instant::now();
    let accepted = accepted.lock().unwrap().clone();
    let received = || -> Vec<String> {
        inboxes
            .iter()
            .flat_map(|inbox| inbox.lock().unwrap().clone())
            .filter_map(|message| tag_of(&message.data))
            .collect()
    };
    // Wait while deliveries progress (up to 10 minutes in all).
    let (mut last, mut still) = (0, 0);
    for _ in 0..6_000 {
        let got: HashSet<String> = received().into_iter().collect();
        if got.is_superset(&accepted) {
            break;
        }
        if got.len() == last {
            still += 1;
            if still > 300 {
                break;
            }
        } else {
            (last, still) = (got.len(), 0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "drill: after the last kill, sending took {:.1}s more and delivering the rest {:.1}s",
        (sent - started).as_secs_f64(),
        sent.elapsed().as_secs_f64()
    );
    if let Ok(path) = std::env::var("DRILL_LOG") {
        let _ = std::fs::copy(dir.path().join("smtp-shaper.log"), path);
    }
    let all = received();
    let unique: HashSet<&String> = all.iter().collect();
    let lost = accepted.iter().filter(|tag| !unique.contains(tag)).count();
    println!(
        "drill: {messages} offered, {} accepted (250), {} delivered, lost {lost}, duplicates {}",
        accepted.len(),
        unique.len(),
        all.len() - unique.len()
    );
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|tag| !unique.contains(tag))
        .take(10)
        .collect();
    assert_eq!(lost, 0, "missing, e.g.: {missing:?}");
    assert_eq!(
        accepted.len(),
        messages,
        "every message was accepted in the end"
    );
    process.kill();
    drop(process);

    full_disk().await;
}

/// A spool on a 2 MiB tmpfs with the gateway down: applications must see
/// 250 or 4xx, never anything else, and the disk fills.
async fn full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    // Mount as root, or through passwordless sudo; owned by us either way.
    let (uid, gid) = current_ids();
    let options = format!("size=2m,uid={uid},gid={gid},mode=0700");
    let mount = |program: &str, prefix: &[&str]| {
        std::process::Command::new(program)
            .args(prefix)
            .args(["mount", "-t", "tmpfs", "-o", &options, "drill-tmpfs"])
            .arg(&spool)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    let sudo = if mount("env", &[]) {
        false
    } else if mount("sudo", &["-n"]) {
        true
    } else {
        let why = "the full-disk part: mounting a tmpfs needs root or passwordless sudo";
        // scripts/drill.sh shows the `drill:` lines.
        println!("drill: SKIPPED {why}");
        support::skipped(why);
        return;
    };
    struct Unmount(std::path::PathBuf, bool);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let mut command = std::process::Command::new(if self.1 { "sudo" } else { "umount" });
            if self.1 {
                command.args(["-n", "umount"]);
            }
            let _ = command.arg(&self.0).status();
        }
    }
    let _unmount = Unmount(spool.clone(), sudo);
    let listen = free_address();
    let gateway = free_address();
    let config_path = dir.path().join("full.toml");
    let toml = support::test_config_toml(&listen.to_string(), &spool, gateway).replace(
        &format!("dir = \"{}\"", spool.display()),
        &format!("dir = \"{}\"\nsegment_size = \"64KiB\"", spool.display()),
    );
    std::fs::write(&config_path, toml).unwrap();
    let process = spawn(&config_path, listen).await;
    let mut client = Client::ready(listen).await;
    let big = "x".repeat(998) + "\r\n";
    let body = format!("Subject: full\r\n\r\n{}", big.repeat(64));
    let mut replies: BTreeMap<u16, usize> = BTreeMap::new();
    let mut texts: HashMap<u16, String> = HashMap::new();
    for _ in 0..200 {
        let reply = client
            .send_message("drill@example.com", &["a@example.org"], body.as_bytes())
            .await;
        *replies.entry(reply.code).or_default() += 1;
        texts.entry(reply.code).or_insert(reply.text);
        if reply.code != 250 && replies.get(&reply.code) > Some(&20) {
            break;
        }
    }
    println!("drill: replies with a full disk: {replies:?} {texts:?}");
    assert!(
        replies
            .keys()
            .all(|code| *code == 250 || (400..500).contains(code)),
        "{replies:?}"
    );
    assert!(
        replies.keys().any(|code| (400..500).contains(code)),
        "the disk filled: {replies:?}"
    );
    drop(process);
}

/// This process's user and group ids, from `id` (no libc needed).
fn current_ids() -> (String, String) {
    let id = |flag: &str| {
        std::process::Command::new("id")
            .arg(flag)
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
            .unwrap_or_else(|_| "0".into())
    };
    (id("-u"), id("-g"))
}
