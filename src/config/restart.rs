//! The settings a reload cannot change: what is bound or opened when the
//! service starts (listeners, the spool's files, worker threads, the
//! connection to Redis). One table says both which they are and how the
//! running value is kept, so the warning and the behaviour cannot drift
//! apart.

use super::Config;

/// One restart-only setting: its name as an operator writes it, whether a
/// new configuration changes it, and how the running value is put back.
struct RestartOnly {
    name: &'static str,
    changed: fn(&Config, &Config) -> bool,
    keep: fn(&mut Config, &Config),
}

const RESTART_ONLY: &[RestartOnly] = &[
    RestartOnly {
        name: "server.listen",
        changed: |running, new| running.server.listen != new.server.listen,
        keep: |new, running| new.server.listen = running.server.listen,
    },
    RestartOnly {
        name: "server.tls.listen",
        changed: |running, new| tls_listen(running) != tls_listen(new),
        keep: |new, running| {
            if let Some(tls) = &mut new.server.tls {
                tls.listen = tls_listen(running);
            }
        },
    },
    RestartOnly {
        name: "server.worker_threads",
        changed: |running, new| running.server.worker_threads != new.server.worker_threads,
        keep: |new, running| new.server.worker_threads = running.server.worker_threads,
    },
    RestartOnly {
        name: "server.max_connections",
        changed: |running, new| running.server.max_connections != new.server.max_connections,
        keep: |new, running| new.server.max_connections = running.server.max_connections,
    },
    RestartOnly {
        name: "spool.dir",
        changed: |running, new| running.spool.dir != new.spool.dir,
        keep: |new, running| new.spool.dir = running.spool.dir.clone(),
    },
    RestartOnly {
        name: "spool.segment_size",
        changed: |running, new| running.spool.segment_size != new.spool.segment_size,
        keep: |new, running| new.spool.segment_size = running.spool.segment_size,
    },
    RestartOnly {
        name: "http.listen",
        changed: |running, new| running.http.listen != new.http.listen,
        keep: |new, running| new.http.listen = running.http.listen,
    },
    RestartOnly {
        name: "http.admin_token_file",
        changed: |running, new| running.http.admin_token_file != new.http.admin_token_file,
        keep: |new, running| new.http.admin_token_file = running.http.admin_token_file.clone(),
    },
    RestartOnly {
        name: "cluster",
        changed: |running, new| running.cluster != new.cluster,
        keep: |new, running| new.cluster = running.cluster.clone(),
    },
];

fn tls_listen(config: &Config) -> Option<std::net::SocketAddr> {
    config.server.tls.as_ref().and_then(|tls| tls.listen)
}

impl Config {
    /// Makes this (new) configuration keep the `running` value of every
    /// restart-only setting; returns the names of those it changed.
    pub fn keep_restart_only(&mut self, running: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        for setting in RESTART_ONLY {
            if (setting.changed)(running, self) {
                changed.push(setting.name);
                (setting.keep)(self, running);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_what_is_bound_at_start_and_says_so() {
        let running = Config::parse(
            "[server]\nlisten = \"127.0.0.1:2525\"\nworker_threads = 1\n[spool]\ndir = \"a\"\nactive_limit = 100\n[http]\nlisten = \"127.0.0.1:9325\"\n[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n",
        )
        .unwrap();
        let mut new = Config::parse(
            "[server]\nlisten = \"127.0.0.1:2526\"\nworker_threads = 2\n[spool]\ndir = \"b\"\nactive_limit = 200\n[http]\nlisten = \"127.0.0.1:9326\"\n[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:26\"\n",
        )
        .unwrap();
        let changed = new.keep_restart_only(&running);
        assert_eq!(
            changed,
            vec![
                "server.listen",
                "server.worker_threads",
                "spool.dir",
                "http.listen"
            ]
        );
        assert_eq!(new.server.listen, running.server.listen);
        assert_eq!(new.server.worker_threads, 1);
        assert_eq!(new.spool.dir, running.spool.dir);
        assert_eq!(new.http.listen, running.http.listen);
        // What a reload may change, it changes.
        assert_eq!(new.spool.active_limit, 200);
        assert_eq!(new.gateways[0].address, "127.0.0.1:26");
        assert!(new.keep_restart_only(&running).is_empty());
    }
}
