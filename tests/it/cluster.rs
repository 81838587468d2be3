//! Cluster mode over real loopback TCP with a real Redis (Debian's
//! `redis-server`, started here on a free port): three smtp-shaper nodes in
//! front of one sink share one gateway budget, each receiver's included;
//! losing Redis neither floods the gateway nor stops the mail; a throttling
//! reply one node hears slows the others at their next decision.
//!
//! Rates are high enough to keep the tests short. The rate bound allows a
//! couple of messages for delivery jitter (a grant is counted on Redis's
//! clock, the sink sees the message a little later); the volume bound is an
//! exact count.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use smtp_shaper::Service;
use smtp_shaper::config::Config;

use crate::support::{
    self, Client, Redis, Sink, eventually, eventually_async, fetch, free_address, most_in_window,
};

const APP: &str = "app@example.com";

/// A node's configuration: the sink as gateway "primary", `shaping` lines,
/// and the cluster section naming `node`.
fn node_config(spool: &Path, sink: SocketAddr, redis: u16, node: &str, shaping: &str) -> Config {
    Config::parse(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        hostname = "shaper-{node}.test"
        shutdown_grace = "5s"
        [spool]
        dir = "{}"
        [http]
        listen = "127.0.0.1:0"
        [[gateways]]
        name = "primary"
        address = "{sink}"
        retry_initial = "100ms"
        retry_max = "400ms"
        [gateways.shaping]
        {shaping}
        [cluster]
        redis = "redis://127.0.0.1:{redis}/0"
        node = "{node}"
        expected_nodes = 3
        timeout = "200ms"
        "#,
        spool.display()
    ))
    .expect("valid node config")
}

struct Node {
    service: Service,
    _spool: tempfile::TempDir,
}

async fn start_nodes(sink: &Sink, redis: u16, shaping: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let spool = tempfile::tempdir().unwrap();
        let config = node_config(spool.path(), sink.address, redis, name, shaping);
        nodes.push(Node {
            service: Service::start(config).await.expect("node starts"),
            _spool: spool,
        });
    }
    nodes
}

/// The value of `series` in a node's /metrics.
async fn metric(node: &Node, series: &str) -> Option<f64> {
    support::scrape(node.service.http_address().unwrap(), series).await
}

async fn all_connected(nodes: &[Node], connected: f64) {
    let series = "smtp_shaper_cluster_connected{gateway=\"primary\"}";
    eventually_async("every node's cluster_connected to flip", || async {
        for node in nodes {
            if metric(node, series).await != Some(connected) {
                return false;
            }
        }
        true
    })
    .await;
}

/// Sends `count` messages to `node`, numbered from `first` (the subject),
/// and asserts each is accepted.
async fn send(node: &Node, first: usize, count: usize) {
    for chunk in (first..first + count).collect::<Vec<_>>().chunks(20) {
        let mut client = Client::ready(node.service.smtp_address()).await;
        for n in chunk {
            let body = format!("Subject: message {n}\r\n\r\nhello\r\n");
            let reply = client
                .offer(APP, "someone@example.org", body.as_bytes())
                .await;
            assert_eq!(reply.code, 250, "message {n}: {reply:?}");
        }
    }
}

/// The subjects the sink received: each accepted message exactly once.
fn subjects(sink: &Sink) -> Vec<String> {
    let mut subjects: Vec<String> = sink
        .messages()
        .iter()
        .map(|message| {
            let text = String::from_utf8_lossy(&message.data).into_owned();
            text.lines()
                .find_map(|line| line.strip_prefix("Subject: ").map(str::to_string))
                .expect("a subject")
        })
        .collect();
    subjects.sort();
    subjects
}

fn free_port() -> u16 {
    free_address().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_send_like_one_and_every_message_arrives_once() {
    let port = free_port();
    let Some(redis) = Redis::start(port) else {
        return;
    };
    let sink = Sink::start().await;
    // 10 a second with a burst of 5: alone each node would send that much,
    // three nodes thirty a second.
    let shaping = r#"initial_rate = "600/min"
        min_rate = "600/min"
        max_rate = "600/min"
        headroom = 1.0
        burst = 5
        max_queue_delay = "1h""#;
    let nodes = start_nodes(&sink, port, shaping).await;
    all_connected(&nodes, 1.0).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    tokio::join!(send(a, 0, 40), send(b, 100, 40), send(c, 200, 40));
    eventually("all 120 messages to arrive", || sink.count() >= 120).await;

    let mut times: Vec<Instant> = sink.messages().iter().map(|m| m.at).collect();
    times.sort();
    for seconds in [1, 2, 4] {
        let most = most_in_window(&times, Duration::from_secs(seconds));
        assert!(
            most <= 10 * seconds as usize + 5 + 2,
            "{most} messages in {seconds}s: the ceiling is 10/s with a burst of 5"
        );
    }
    let mut expected: Vec<String> = [0, 100, 200]
        .iter()
        .flat_map(|first| (*first..first + 40).map(|n| format!("message {n}")))
        .collect();
    expected.sort();
    assert_eq!(subjects(&sink), expected, "each accepted message once");
    // The decisions were Redis's: the histogram counted them all.
    let decisions = "smtp_shaper_cluster_decision_seconds_count{gateway=\"primary\"}";
    let mut counted = 0.0;
    for node in &nodes {
        counted += metric(node, decisions).await.unwrap_or(0.0);
    }
    assert!(counted >= 120.0, "{counted} decisions");
    assert!(
        !redis
            .cli(&["HGET", "smtp-shaper:{primary}:state", "epoch"])
            .is_empty()
    );
    for node in nodes {
        node.service.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_redis_neither_floods_nor_stops_and_the_hour_rule_holds_over_the_run() {
    let port = free_port();
    let Some(mut redis) = Redis::start(port) else {
        return;
    };
    let sink = Sink::start().await;
    // The hour's budget (100, no history yet) binds long before the minute.
    let shaping = r#"initial_rate = "600/min"
        min_rate = ["600/min", "100/h"]
        max_rate = "600/min"
        headroom = 1.0
        burst = 5
        max_queue_delay = "4d""#;
    let nodes = start_nodes(&sink, port, shaping).await;
    all_connected(&nodes, 1.0).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    tokio::join!(send(a, 0, 50), send(b, 100, 50), send(c, 200, 50));
    eventually("a first part to arrive", || sink.count() >= 30).await;

    redis.stop();
    // Mail is still accepted while Redis is away.
    tokio::join!(send(a, 50, 5), send(b, 150, 5), send(c, 250, 5));
    all_connected(&nodes, 0.0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = sink.count();

    let mut redis = Redis::start(port).expect("redis-server starts again");
    all_connected(&nodes, 1.0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delivered = sink.count();
    assert!(
        delivered <= 100,
        "{delivered} messages in the hour: its allowance is 100, Redis outage or not"
    );
    assert!(during >= 30, "mail kept flowing: {during}");
    // What every node sent went back into the shared count, so the hour is
    // full as Redis sees it too.
    let counted: u64 = redis
        .cli(&["HGET", "smtp-shaper:{primary}:all:3600", "sum"])
        .parse()
        .unwrap_or(0);
    assert!(
        counted >= delivered as u64,
        "Redis counts {counted} of the {delivered} sent this hour"
    );
    // Nothing is lost: what was not sent is still queued on some node.
    let mut queued = 0.0;
    for node in &nodes {
        queued += metric(node, "smtp_shaper_queue_messages{gateway=\"primary\"}")
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(delivered + queued as usize, 165, "delivered plus queued");
    let received = subjects(&sink);
    let mut unique = received.clone();
    unique.dedup();
    assert_eq!(unique, received, "no message twice");
    redis.stop();
    for node in nodes {
        node.service.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttling_reply_one_node_hears_pauses_the_others_at_their_next_decision() {
    let port = free_port();
    let Some(_redis) = Redis::start(port) else {
        return;
    };
    let sink = Sink::start().await;
    sink.behavior
        .lock()
        .unwrap()
        .data_replies
        .push_back("451 4.7.500 Server busy, please try again later (AS1234)".into());
    let shaping = r#"initial_rate = "600/min"
        min_rate = "60/min"
        max_rate = "600/min"
        headroom = 1.0
        burst = 5
        backoff_factor = 0.5
        backoff_pause = "1h"
        max_queue_delay = "4d""#;
    let nodes = start_nodes(&sink, port, shaping).await;
    all_connected(&nodes, 1.0).await;
    send(&nodes[0], 0, 1).await;
    let penalty = "smtp_shaper_backoff_penalty{gateway=\"primary\"}";
    eventually_async("node a to hear the throttling", || async {
        metric(&nodes[0], penalty).await == Some(0.5)
    })
    .await;
    // Node b has not heard from the gateway; its next decision asks the
    // shared state, which holds it and passes the penalty on.
    send(&nodes[1], 100, 1).await;
    eventually_async("node b to take on the penalty", || async {
        metric(&nodes[1], penalty).await == Some(0.5)
    })
    .await;
    let paused = "smtp_shaper_backoff_remaining_seconds{gateway=\"primary\"}";
    assert!(metric(&nodes[1], paused).await.unwrap() > 3_000.0);
    assert_eq!(sink.count(), 0, "nothing went while the gateway is paused");
    for node in nodes {
        node.service.shutdown().await;
    }
}

/// A used-up quota one node hears (Exchange Online's `554 5.2.0`) rests
/// every node until the quota's window resets, without cutting the ceiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_used_up_quota_one_node_hears_rests_the_others() {
    let port = free_port();
    let Some(_redis) = Redis::start(port) else {
        return;
    };
    let sink = Sink::start().await;
    sink.behavior.lock().unwrap().data_replies.push_back(
        "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException".into(),
    );
    let shaping = r#"initial_rate = "600/min"
        min_rate = "60/min"
        max_rate = "600/min"
        limits = ["10000/day"]
        max_queue_delay = "4d""#;
    let nodes = start_nodes(&sink, port, shaping).await;
    all_connected(&nodes, 1.0).await;
    let paused = "smtp_shaper_backoff_remaining_seconds{gateway=\"primary\"}";
    send(&nodes[0], 0, 1).await;
    eventually_async("node a to rest for the quota", || async {
        metric(&nodes[0], paused).await.unwrap_or(0.0) > 80_000.0
    })
    .await;
    send(&nodes[2], 200, 1).await;
    eventually_async("node c to rest too, at its next decision", || async {
        metric(&nodes[2], paused).await.unwrap_or(0.0) > 80_000.0
    })
    .await;
    let penalty = "smtp_shaper_backoff_penalty{gateway=\"primary\"}";
    assert_eq!(
        metric(&nodes[2], penalty).await,
        Some(1.0),
        "a rest, not a cut"
    );
    assert_eq!(sink.count(), 0);
    for node in nodes {
        node.service.shutdown().await;
    }
}

/// A node that joins late (a new replica) allows what the gateway's
/// history allows: the busiest hour another node has seen (here an
/// operator's seed) raises its allowance, not only what it saw itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_late_allows_what_the_others_history_allows() {
    let port = free_port();
    let Some(_redis) = Redis::start(port) else {
        return;
    };
    let sink = Sink::start().await;
    let allowance = "smtp_shaper_volume_allowance{gateway=\"primary\",window=\"1h\"}";
    let mut nodes = Vec::new();
    // b first, alone; then a, which has the history.
    for (name, initial) in [("b", r#""600/min""#), ("a", r#"["600/min", "500/h"]"#)] {
        let spool = tempfile::tempdir().unwrap();
        let shaping = format!(
            "initial_rate = {initial}\nmin_rate = [\"600/min\", \"100/h\"]\nwarmup = \"2x/day\""
        );
        let config = node_config(spool.path(), sink.address, port, name, &shaping);
        nodes.push(Node {
            service: Service::start(config).await.expect("node starts"),
            _spool: spool,
        });
        if name == "b" {
            all_connected(&nodes, 1.0).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(
                metric(&nodes[0], allowance).await,
                Some(100.0),
                "its own floor"
            );
        }
    }
    eventually_async(
        "node b to learn the busiest hour node a has seen",
        || async { metric(&nodes[0], allowance).await == Some(1000.0) },
    )
    .await;
    for node in nodes {
        node.service.shutdown().await;
    }
}

/// `queue hold` holds the gateway on every node, and a hold an operator
/// gives while Redis is away is not undone when Redis comes back: it is
/// written then, and the other nodes hold too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_given_while_redis_is_away_holds_every_node_when_it_is_back() {
    let port = free_port();
    let Some(mut redis) = Redis::start(port) else {
        return;
    };
    let sink = Sink::start().await;
    let nodes = start_nodes(&sink, port, r#"initial_rate = "600/min""#).await;
    all_connected(&nodes, 1.0).await;
    redis.stop();
    all_connected(&nodes, 0.0).await;
    let http = nodes[0].service.http_address().unwrap();
    assert_eq!(
        fetch(http, "POST", "/admin/gateways/primary/hold", None)
            .await
            .status,
        200
    );
    let _redis = Redis::start(port).expect("redis-server starts again");
    all_connected(&nodes, 1.0).await;
    let held = "smtp_shaper_queue_held{gateway=\"primary\"}";
    for node in &nodes {
        eventually_async("every node to hold the gateway", || async {
            metric(node, held).await == Some(1.0)
        })
        .await;
    }
    // Held everywhere: mail is accepted and waits.
    send(&nodes[2], 0, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.count(), 0, "the hold holds");
    assert_eq!(
        metric(&nodes[0], held).await,
        Some(1.0),
        "not undone by a reading"
    );
    for node in nodes {
        node.service.shutdown().await;
    }
}

/// Each receiver's budgets are the gateway's, not each node's: Gmail's
/// hour floor (6 here), with every node offered 5 messages to gmail.com,
/// lets 6 through in all (each node alone would send all 5 of its own,
/// 15), and the rest is held, not refused; mail to Microsoft (within its
/// own floor of 6) and to receivers not budgeted flows meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_hold_a_receiver_to_its_budget_together_and_the_others_flow() {
    let port = free_port();
    let Some(_redis) = Redis::start(port) else {
        return;
    };
    let sink = Sink::start().await;
    let shaping = r#"initial_rate = "600/min"
        min_rate = ["600/min", "1000/h", "10000/day"]
        max_rate = "600/min"
        headroom = 1.0
        burst = 20
        receiver_min_rate = ["6/h", "100/day"]
        max_queue_delay = "2d""#;
    let nodes = start_nodes(&sink, port, shaping).await;
    all_connected(&nodes, 1.0).await;
    let offer = |node: &Node, domain: &'static str, count: usize| {
        let address = node.service.smtp_address();
        async move {
            let mut client = Client::ready(address).await;
            for n in 0..count {
                let body = format!("Subject: {domain} {n}\r\n\r\nhello\r\n");
                let reply = client
                    .offer(APP, &format!("someone@{domain}"), body.as_bytes())
                    .await;
                assert_eq!(reply.code, 250, "held, not refused: {reply:?}");
            }
        }
    };
    for node in &nodes {
        offer(node, "gmail.com", 5).await;
    }
    for node in &nodes {
        offer(node, "outlook.com", 2).await;
        offer(node, "example.org", 5).await;
    }
    let to = |domain: &str| {
        sink.messages()
            .iter()
            .filter(|message| {
                message
                    .recipients
                    .iter()
                    .any(|recipient| recipient.ends_with(domain))
            })
            .count()
    };
    eventually("Microsoft's 6 and the others' 15 to arrive", || {
        to("@outlook.com") == 6 && to("@example.org") == 15
    })
    .await;
    // Long enough for every node to have tried its Gmail mail again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(to("@gmail.com"), 6, "Gmail's hour floor, for all nodes");
    for node in nodes {
        node.service.shutdown().await;
    }
}

/// Nodes a, b and c of a cluster on the Redis at `port`, each linked to
/// `gateway` (the scripts called directly, without a service around them).
pub fn three_links(
    port: u16,
    gateway: &str,
) -> Vec<std::sync::Arc<smtp_shaper::cluster::GatewayLink>> {
    ["a", "b", "c"]
        .iter()
        .map(|node| {
            let cluster =
                smtp_shaper::cluster::Cluster::open(&smtp_shaper::config::ClusterConfig {
                    redis: format!("redis://127.0.0.1:{port}/0"),
                    node: node.to_string(),
                    password_file: None,
                    password_env: None,
                    ca_file: None,
                    expected_nodes: 3,
                    timeout: Duration::from_secs(2),
                })
                .expect("cluster opens");
            cluster.link(gateway)
        })
        .collect()
}

/// The Lua scripts and the in-memory reference the simulator runs
/// (`shaper::store::SharedState`) decide alike: the same random proposals
/// from three nodes (budgets with a bulk share and a cap binding, receivers
/// with budgets of their own, one not enforced yet, the bucket wide open so
/// the decisions do not depend on the clock) get the same grants and the
/// same reasons, and each node hears the same of what the others sent, per
/// receiver too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripts_decide_as_the_reference_the_simulator_runs() {
    use smtp_shaper::shaper::shared::{
        Elsewhere, Proposal, SharedBudget, SharedCap, SharedLimits, SharedReceiver,
    };
    use smtp_shaper::shaper::store::SharedState;
    use smtp_shaper::shaper::{AppClass, Horizon};

    let port = free_port();
    let Some(_redis) = Redis::start(port) else {
        return;
    };
    let links = three_links(port, "reference");
    let mut reference = SharedState::new(3);
    let limits = SharedLimits {
        rate: 1e6,
        burst: 1000,
        budgets: vec![
            SharedBudget {
                horizon: Horizon::Hour,
                allowance: 150,
                bulk_share: 90,
            },
            SharedBudget {
                horizon: Horizon::Day,
                allowance: 400,
                bulk_share: 300,
            },
        ],
        caps: vec![SharedCap {
            window: 86_400,
            limit: 140,
        }],
    };
    let budget = |horizon, allowance, bulk_share| SharedBudget {
        horizon,
        allowance,
        bulk_share,
    };
    let receivers = [
        SharedReceiver {
            name: "google".into(),
            budgets: vec![budget(Horizon::Hour, 20, 12), budget(Horizon::Day, 30, 20)],
            enforced: true,
        },
        SharedReceiver {
            name: "microsoft".into(),
            budgets: vec![budget(Horizon::Hour, 25, 25)],
            enforced: true,
        },
        SharedReceiver {
            name: "yahoo".into(),
            budgets: vec![budget(Horizon::Hour, 5, 5)],
            enforced: false,
        },
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut granted, mut held, mut receiver_held) = (0, 0, 0);
    // Per node: the others' totals at its first reading, then what its
    // readings said since.
    let mut heard: [Option<Elsewhere>; 3] = Default::default();
    for step in 0..200 {
        let node = rng.usize(0..3);
        let proposal = Proposal {
            units: rng.u64(1..=6),
            class: if rng.bool() {
                AppClass::Bulk
            } else {
                AppClass::Transactional
            },
            limits: limits.clone(),
            receiver: rng
                .usize(0..=receivers.len())
                .checked_sub(1)
                .map(|index| receivers[index].clone()),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let expected = reference.acquire(now, node, &proposal);
        let verdict = links[node].acquire(&proposal).await.expect("Redis answers");
        heard[node] = Some(match heard[node].take() {
            None => reference.others(node),
            Some(sum) => sum.plus(&verdict.reading.elsewhere),
        });
        match expected {
            Ok(()) => {
                granted += 1;
                assert!(verdict.granted, "step {step}: {proposal:?} -> {verdict:?}");
            }
            Err(hold) => {
                held += 1;
                receiver_held += usize::from(verdict.holds_the_receiver_only());
                assert!(!verdict.granted, "step {step}: {proposal:?} -> {verdict:?}");
                assert_eq!(verdict.reason, hold.reason, "step {step}: {proposal:?}");
            }
        }
    }
    assert!(granted > 20 && held > 20, "{granted} granted, {held} held");
    assert!(receiver_held > 10, "{receiver_held} held for a receiver");
    for (node, heard) in heard.iter().enumerate() {
        assert_eq!(
            heard.as_ref(),
            Some(&reference.others(node)),
            "node {node} heard what the others sent"
        );
    }
}

/// Heartbeats tell each node what the others have queued, per class, so
/// that transactional mail waits only behind the others' transactional
/// mail. A node of an earlier release (a `:depth` entry and no `:txdepth`
/// one) is still alive, and all its messages count as transactional.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_the_queue_per_class_and_read_an_earlier_release() {
    use smtp_shaper::shaper::ClassCounts;

    let port = free_port();
    let Some(_redis) = Redis::start(port) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}/0");
    let links = three_links(port, "depth");
    let queued = |transactional: usize, bulk: usize| ClassCounts {
        messages: [transactional, bulk],
        units: [transactional as u64 * 2, bulk as u64 * 3],
    };
    let nothing = smtp_shaper::shaper::shared::Busiest::default();
    links[0].heartbeat(queued(3, 5), &nothing).await.unwrap();
    links[1].heartbeat(queued(1, 0), &nothing).await.unwrap();
    // What an earlier release writes: expiry (Redis microseconds),
    // messages, transactional units, bulk units, busiest hour and day.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
    let expiry = seconds * 1_000_000 + micros + 10_000_000;
    let _: () = redis::cmd("HSET")
        .arg("smtp-shaper:{depth}:depth")
        .arg("old")
        .arg(format!("{expiry} 4 2 2 0 0"))
        .query_async(&mut redis)
        .await
        .unwrap();

    let beat = links[2].heartbeat(queued(0, 0), &nothing).await.unwrap();
    assert_eq!(beat.live, 4, "{beat:?}");
    assert_eq!(
        beat.queued_elsewhere,
        ClassCounts {
            messages: [3 + 1 + 4, 5],
            units: [6 + 2 + 2, 15 + 2],
        }
    );
    let beat = links[0].heartbeat(queued(3, 5), &nothing).await.unwrap();
    assert_eq!(
        beat.queued_elsewhere,
        ClassCounts {
            messages: [1 + 4, 0],
            units: [2 + 2, 2],
        },
        "its own queue is not elsewhere"
    );
}

/// `rediss://` with an internal CA (`ca_file`) and a password from a file:
/// the node reaches the shared state and mail goes through it. With a wrong
/// password the node never reaches it, and the mail still goes, on its
/// share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_redis_over_tls_with_a_password_and_without_one_still_sends() {
    let certificate = support::TestCertificate::new();
    let port = free_port();
    let (cert, key) = (
        certificate.certificate.to_str().unwrap(),
        certificate.key.to_str().unwrap(),
    );
    let Some(_redis) = Redis::start_with(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            cert,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "s3cret-for-tests",
        ],
    ) else {
        return;
    };
    let sink = Sink::start().await;
    let series = "smtp_shaper_cluster_connected{gateway=\"primary\"}";
    for (password, reaches) in [("s3cret-for-tests", 1.0), ("wrong", 0.0)] {
        let spool = tempfile::tempdir().unwrap();
        let password_file = spool.path().join("redis-password");
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        let mut config = node_config(
            spool.path(),
            sink.address,
            port,
            "tls",
            "initial_rate = \"600/min\"\nmin_rate = \"600/min\"",
        );
        let cluster = config.cluster.as_mut().unwrap();
        cluster.redis = format!("rediss://localhost:{port}/0");
        cluster.ca_file = Some(certificate.certificate.clone());
        cluster.password_file = Some(password_file);
        let node = Node {
            service: Service::start(config).await.expect("node starts"),
            _spool: spool,
        };
        eventually_async("a heartbeat's verdict", || async {
            metric(&node, series).await.is_some()
        })
        .await;
        // Several heartbeats: the standing holds.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            metric(&node, series).await,
            Some(reaches),
            "password {password}"
        );
        let before = sink.count();
        send(&node, 0, 1).await;
        eventually("the message to arrive", || sink.count() > before).await;
        node.service.shutdown().await;
    }
}

/// A node never assumes fewer nodes than it has seen lately: after three
/// shared the gateway, one restarted while Redis is away runs on a third,
/// though `expected_nodes` says 1 (it is saved with the shaping state).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarted_while_redis_is_away_assumes_the_most_nodes_it_saw() {
    let port = free_port();
    let Some(mut redis) = Redis::start(port) else {
        return;
    };
    let sink = Sink::start().await;
    let shaping = r#"initial_rate = "600/min"
        min_rate = "600/min"
        max_rate = "600/min"
        headroom = 1.0"#;
    let config = |spool: &Path, name: &str| {
        let mut config = node_config(spool, sink.address, port, name, shaping);
        config.cluster.as_mut().unwrap().expected_nodes = 1;
        config
    };
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let spool = tempfile::tempdir().unwrap();
        let service = Service::start(config(spool.path(), name)).await.unwrap();
        nodes.push(Node {
            service,
            _spool: spool,
        });
    }
    all_connected(&nodes, 1.0).await;
    let seen = "smtp_shaper_cluster_nodes{gateway=\"primary\"}";
    eventually_async("node a to see three nodes", || async {
        metric(&nodes[0], seen).await == Some(3.0)
    })
    .await;
    let mut nodes = nodes.into_iter();
    let a = nodes.next().unwrap();
    a.service.shutdown().await;
    for node in nodes {
        node.service.shutdown().await;
    }
    redis.stop();

    let restarted = Service::start(config(a._spool.path(), "a")).await.unwrap();
    let http = restarted.http_address().unwrap();
    let mut status = String::new();
    for _ in 0..600 {
        status = fetch(http, "GET", "/status", None).await.body;
        if status.contains("\"connected\":false") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        status.contains("\"connected\":false") && status.contains("\"share_of\":3"),
        "{status}"
    );
    restarted.shutdown().await;
}
