//! The `smtp-shaper` command line: parse arguments, load the configuration,
//! run the service. Everything else lives in the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use smtp_shaper::Service;
use smtp_shaper::config::Config;

#[derive(Parser)]
#[command(
    name = "smtp-shaper",
    version,
    about = "SMTP proxy sidecar that relays application mail to your gateways, durably"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (without --config: an embedded default on 127.0.0.1:2525
    /// that relays to 127.0.0.1:25 and spools to ./smtp-shaper-spool)
    Run {
        /// TOML configuration file
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Watch a burst get smoothed: runs the proxy on loopback in front of an
    /// in-process gateway, with two apps sending (one bursts), and shows
    /// demand, ceiling, sent, queued and deferred live; no set-up needed
    Demo {
        /// Shrink every duration (and speed up every rate) by this factor,
        /// e.g. 0.2 runs five times faster
        #[arg(long, default_value_t = 1.0, value_parser = parse_time_scale)]
        time_scale: f64,
    },
    /// Look at and act on a running service's queue, through its admin API
    /// (`[http] listen`; loopback, or the bearer token in admin_token_file)
    Queue {
        /// The service's configuration file (its [http] listen and
        /// admin_token_file); without it, 127.0.0.1:9325 and no token
        // global: accepted after the action too (`queue list --http X`), where
        // a user types it.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The HTTP endpoint, overriding the config's
        #[arg(long, global = true)]
        http: Option<std::net::SocketAddr>,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Validate a configuration file and explain every problem in it,
    /// including what `run` would fail on (files it loads, listeners on
    /// one address); without --config, the embedded default
    CheckConfig {
        /// TOML configuration file
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Check the file alone, not the files it names nor the listeners
        /// (for a file checked away from the machine it runs on)
        #[arg(long)]
        file_only: bool,
    },
    /// Print the embedded default configuration (what `run` uses without
    /// --config), a starting file: `smtp-shaper config --default >
    /// smtp-shaper.toml`
    Config {
        /// The embedded default
        #[arg(long, required = true)]
        default: bool,
    },
    /// Explain a sender domain's SPF, DMARC and DKIM for a gateway's sending
    /// IP (relay rule 4); exit 0 when all is well, 1 when something is not
    CheckDns {
        /// The sender domain (repeat for several)
        #[arg(long, short, required = true)]
        domain: Vec<String>,
        /// The public IP address the gateway sends from
        #[arg(long, short)]
        gateway_ip: std::net::IpAddr,
        /// A DKIM selector to look up (repeatable)
        #[arg(long)]
        dkim_selector: Vec<String>,
        /// The DNS resolver to ask (default: every nameserver of /etc/resolv.conf,
        /// in turn: the next one when one does not answer within 2 s or answers
        /// SERVFAIL or REFUSED, two rounds)
        #[arg(long)]
        resolver: Option<std::net::SocketAddr>,
        /// Use these records instead of DNS (lines `name TYPE value`), e.g. to
        /// try a zone before publishing it
        #[arg(long)]
        records: Option<PathBuf>,
    },
    /// Learn a gateway's volume history from what it sent itself (its own
    /// log) and write it into its saved shaping state, so the next start
    /// (or a running service after SIGHUP) shapes from the real history
    #[command(group(clap::ArgGroup::new("sources").required(true).multiple(true)))]
    Learn {
        /// TOML configuration file (the gateway's shaping and spool.dir)
        #[arg(long, short)]
        config: PathBuf,
        /// The gateway whose history this is
        #[arg(long, short)]
        gateway: String,
        /// A Postfix maillog (repeatable: rotated logs, .gz too)
        #[arg(long, group = "sources")]
        postfix_log: Vec<PathBuf>,
        /// An Exchange message trace CSV (Get-MessageTrace | Export-Csv, or a
        /// historical search report; repeatable)
        #[arg(long, group = "sources")]
        exchange_trace: Vec<PathBuf>,
        /// A CSV of messages sent: timestamp,recipients (or simulate's
        /// timestamp,app,recipients); Unix seconds or RFC 3339 (repeatable)
        #[arg(long, group = "sources")]
        csv: Vec<PathBuf>,
        /// Write even when the saved history has sends after the log's last
        /// entry (the log's counts up to its end; the saved ones after it)
        #[arg(long)]
        replace: bool,
    },
    /// Read a password from standard input (one line) and print its argon2id
    /// hash, for an app's `password_hash`
    HashPassword,
    /// Replay a traffic trace through a gateway's shaping in virtual time;
    /// print delays, deferrals and peak send rates, and draw them
    Simulate {
        /// TOML configuration file (its [gateways.shaping] and [[apps]])
        #[arg(long, short)]
        config: PathBuf,
        /// CSV trace, one message per row: timestamp (seconds),app,recipients
        /// (and a fourth column, the recipients' domain, for what each
        /// receiver sees)
        #[arg(long, short)]
        trace: PathBuf,
        /// Write an SVG chart of demand, ceiling, sent and queue depth here
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Gateway to replay through (default: the default gateway)
        #[arg(long, short)]
        gateway: Option<String>,
        /// How long an app waits before offering a deferred message again
        #[arg(long, default_value = "10m", value_parser = parse_duration_arg)]
        retry_after: std::time::Duration,
        /// Write one CSV row per message sent here: time,app,recipients,delay,held
        /// (trace seconds; delay from its first offer to its sending, deferrals
        /// included; held from its acceptance: the report's delay and held),
        /// and receiver when the trace names domains
        #[arg(long)]
        sent_log: Option<PathBuf>,
        /// CSV of domain,mx rows (one per MX host): a trace domain no
        /// receiver names is the receiver of its MX hosts (without it,
        /// simulate resolves by the domain's name only; no DNS)
        #[arg(long)]
        mx_map: Option<PathBuf>,
        /// Spread the trace over this many sidecars sharing one budget, as
        /// in cluster mode (what the gateway sees should not change)
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
        nodes: u16,
        /// Start from this history, ending where the trace begins: a Postfix
        /// log, an Exchange message trace or a CSV, as `learn` reads them
        /// (the kind found from the file; repeatable)
        #[arg(long)]
        history: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Queued messages, oldest first, a page at a time
    List {
        /// Only this gateway's
        #[arg(long, short)]
        gateway: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One message: envelope, headers, every attempt with the gateway's reply
    Show { id: String },
    /// Deliver a message waiting for its retry now (or all with --all)
    Retry {
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Stop delivering to a gateway (mail is still accepted and queued)
    Hold { gateway: String },
    /// Resume delivering to a held gateway
    Release { gateway: String },
    /// End a pause the gateway asked for (throttling, a used-up quota) on
    /// purpose, e.g. once its limit was raised; a throttling cut stays and
    /// recovers within backoff_recovery. `retry` does not end such a pause
    Unpause { gateway: String },
    /// Remove a queued message for good
    Delete { id: String },
    /// The dead-letter files, oldest first, a page at a time
    Dead {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Queue a dead letter again for its failed recipients
    Requeue { name: String },
}

/// Which page of a listing (`queue list`, `queue dead`) to show.
#[derive(clap::Args)]
struct PageArgs {
    /// Start after this entry (the last one of the previous page)
    #[arg(long)]
    after: Option<String>,
    /// Entries on the page
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
}

impl PageArgs {
    /// The page as query parameters, each prefixed by `separator`.
    fn query(&self, separator: char) -> String {
        use smtp_shaper::telemetry::client::encode;
        let mut query = format!("{separator}limit={}", self.limit);
        if let Some(after) = &self.after {
            query.push_str(&format!("&after={}", encode(after)));
        }
        query
    }
}

fn parse_time_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(scale) if (0.01..=10.0).contains(&scale) => Ok(scale),
        _ => Err("a number from 0.01 to 10".into()),
    }
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    smtp_shaper::config::units::parse_duration(text)
        .ok_or_else(|| smtp_shaper::config::units::DURATION_FORMS.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config, file_only } => check_config(config.as_deref(), file_only),
        Command::Config { .. } => {
            // A closed pipe (`config --default | head`) is not a failure.
            let _ = write!(
                std::io::stdout(),
                "{}",
                smtp_shaper::config::EMBEDDED_DEFAULT
            );
            ExitCode::SUCCESS
        }
        Command::Simulate {
            config,
            trace,
            out,
            gateway,
            retry_after,
            sent_log,
            mx_map,
            nodes,
            history,
        } => simulate(
            &config,
            &trace,
            Outputs {
                chart: out.as_deref(),
                sent_log: sent_log.as_deref(),
            },
            gateway.as_deref(),
            (&history, mx_map.as_deref()),
            smtp_shaper::simulate::Options {
                retry_after: retry_after.as_secs_f64(),
                nodes: usize::from(nodes),
                ..Default::default()
            },
        ),
        Command::Learn {
            config,
            gateway,
            postfix_log,
            exchange_trace,
            csv,
            replace,
        } => learn(
            &config,
            &gateway,
            [postfix_log, exchange_trace, csv],
            replace,
        ),
        Command::HashPassword => hash_password(),
        Command::Demo { time_scale } => demo(time_scale),
        Command::Queue {
            config,
            http,
            action,
        } => queue(config.as_deref(), http, action),
        Command::CheckDns {
            domain,
            gateway_ip,
            dkim_selector,
            resolver,
            records,
        } => check_dns(
            &domain,
            gateway_ip,
            &dkim_selector,
            resolver,
            records.as_deref(),
        ),
        Command::Run { config: path } => serve(path),
    }
}

/// `check-config`: every problem of the file (the embedded default without
/// one), what `run` would fail on, or that it is valid.
fn check_config(path: Option<&Path>, file_only: bool) -> ExitCode {
    let (name, loaded) = match path {
        Some(path) => (path.display().to_string(), Config::load(path)),
        None => (
            "the embedded default".to_string(),
            Ok(Config::embedded_default()),
        ),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{name}: {} problem(s):\n{error}", error.problems.len());
            return ExitCode::FAILURE;
        }
    };
    let problems = if file_only {
        Vec::new()
    } else {
        smtp_shaper::Service::cannot_start(&config)
    };
    if !problems.is_empty() {
        eprintln!(
            "{name}: {} problem(s) run would fail on:\n{}",
            problems.len(),
            problems.join("\n")
        );
        return ExitCode::FAILURE;
    }
    // Valid, but worth a look before it runs: said, exit 0.
    for warning in smtp_shaper::Service::warnings(&config) {
        eprintln!("{name}: warning: {warning}");
    }
    println!("{name}: configuration is valid");
    ExitCode::SUCCESS
}

/// `learn`: a gateway's volume history from its own logs, into its saved
/// shaping state.
fn learn(config_path: &Path, gateway: &str, files: [Vec<PathBuf>; 3], replace: bool) -> ExitCode {
    use smtp_shaper::history::{Format, Input, Zone, learn};
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}: invalid configuration:\n{error}", config_path.display());
            return ExitCode::FAILURE;
        }
    };
    let inputs: Vec<Input> = [Format::PostfixLog, Format::ExchangeTrace, Format::Csv]
        .into_iter()
        .zip(files)
        .flat_map(|(format, paths)| paths.into_iter().map(move |path| Input { format, path }))
        .collect();
    let request = learn::Request {
        config: &config,
        config_path,
        gateway,
        inputs: &inputs,
        replace,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64());
    match learn::learn(&request, &Zone::system(), now) {
        Ok(report) => {
            // A closed pipe (`learn ... | head`) is not a failure.
            let _ = write!(std::io::stdout(), "{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("smtp-shaper learn: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `run`: the service on the file's configuration (the embedded default
/// without one), until SIGTERM or SIGINT.
fn serve(path: Option<PathBuf>) -> ExitCode {
    let config = match &path {
        Some(path) => Config::load(path),
        None => Ok(Config::embedded_default()),
    };
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            let name = path.as_deref().unwrap_or(Path::new("embedded default"));
            eprintln!("{}: invalid configuration:\n{error}", name.display());
            return ExitCode::FAILURE;
        }
    };
    smtp_shaper::telemetry::logging::init(config.server.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.worker_threads)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(config, path));
    // The spool is closed by now; a start-up DNS check still waiting
    // on an unreachable resolver must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

fn queue(
    config: Option<&Path>,
    http: Option<std::net::SocketAddr>,
    action: QueueAction,
) -> ExitCode {
    let config = match config.map(Config::load).transpose() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("invalid configuration:\n{error}");
            return ExitCode::from(2);
        }
    };
    let address = http
        .or_else(|| config.as_ref().and_then(|config| config.http.listen))
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 9325)));
    let token = match config.as_ref().map(|config| config.http.admin_token()) {
        Some(Ok(token)) => token,
        Some(Err(error)) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
        None => None,
    };
    // What the user typed goes into the path encoded: an id with `/`, `?`
    // or a space must name one message, not another route.
    use smtp_shaper::telemetry::client::encode;
    let (method, path) = match &action {
        QueueAction::List {
            gateway: None,
            page,
        } => ("GET", format!("/admin/queue{}", page.query('?'))),
        QueueAction::List {
            gateway: Some(g),
            page,
        } => (
            "GET",
            format!("/admin/queue?gateway={}{}", encode(g), page.query('&')),
        ),
        QueueAction::Show { id } => ("GET", format!("/admin/queue/{}", encode(id))),
        QueueAction::Retry { id: Some(id), .. } => {
            ("POST", format!("/admin/queue/{}/retry", encode(id)))
        }
        QueueAction::Retry { id: None, .. } => ("POST", "/admin/queue/retry".to_string()),
        QueueAction::Hold { gateway } => {
            ("POST", format!("/admin/gateways/{}/hold", encode(gateway)))
        }
        QueueAction::Release { gateway } => (
            "POST",
            format!("/admin/gateways/{}/release", encode(gateway)),
        ),
        QueueAction::Unpause { gateway } => (
            "POST",
            format!("/admin/gateways/{}/unpause", encode(gateway)),
        ),
        QueueAction::Delete { id } => ("DELETE", format!("/admin/queue/{}", encode(id))),
        QueueAction::Dead { page } => ("GET", format!("/admin/dead{}", page.query('?'))),
        QueueAction::Requeue { name } => ("POST", format!("/admin/dead/{}/requeue", encode(name))),
    };
    match smtp_shaper::telemetry::client::request(
        address,
        method,
        &path,
        "text/plain",
        token.as_deref(),
    ) {
        Ok(answer) if answer.status == 200 => {
            print!("{}", answer.body);
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            eprintln!("{} (HTTP {})", answer.body.trim_end(), answer.status);
            ExitCode::FAILURE
        }
        // Reached, but what came back was not a usable answer (not HTTP,
        // or over the size bound): saying "cannot reach" would mislead.
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            eprintln!("unusable answer from the admin API at http://{address}: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("cannot reach smtp-shaper's admin API at http://{address}: {error}");
            ExitCode::from(2)
        }
    }
}

fn demo(time_scale: f64) -> ExitCode {
    // The live view owns the terminal; logs only when asked for (RUST_LOG).
    if std::env::var_os("RUST_LOG").is_some() {
        smtp_shaper::telemetry::logging::init(smtp_shaper::config::LogFormat::Text);
    }
    let options = smtp_shaper::demo::DemoOptions {
        time_scale,
        ..Default::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C ends the demo early, with the summary of what happened so far.
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No handler: never interrupted, rather than at once.
            std::future::pending::<()>().await;
        }
    };
    let result = runtime.block_on(smtp_shaper::demo::run(options, interrupt));
    match result {
        Ok(summary) => {
            // A closed pipe (`demo | head`) is not a failure of the demo.
            let _ = writeln!(std::io::stdout(), "{summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("demo failed: {error}");
            ExitCode::FAILURE
        }
    }
}

fn check_dns(
    domains: &[String],
    gateway_ip: std::net::IpAddr,
    selectors: &[String],
    resolver: Option<std::net::SocketAddr>,
    records: Option<&Path>,
) -> ExitCode {
    use smtp_shaper::dns::{Resolver, SeededResolver, SystemResolver};
    use smtp_shaper::preflight::check_domain;
    let resolver: Box<dyn Resolver> = match (records, resolver) {
        (Some(path), _) => match std::fs::read_to_string(path)
            .map_err(|error| error.to_string())
            .and_then(|text| SeededResolver::parse(&text))
        {
            Ok(seeded) => Box::new(seeded),
            Err(error) => {
                eprintln!("{}: {error}", path.display());
                return ExitCode::from(2);
            }
        },
        (None, Some(server)) => Box::new(SystemResolver::at(server)),
        (None, None) => Box::new(SystemResolver::from_resolv_conf()),
    };
    let mut all_ok = true;
    for domain in domains {
        let report = check_domain(resolver.as_ref(), domain, gateway_ip, selectors);
        all_ok &= report.ok();
        let _ = write!(std::io::stdout(), "{}", report.to_text());
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// While it lives, a terminal on standard input does not echo what is
/// typed (a password); it is put back as it was when dropped. Nothing when
/// standard input is not a terminal (a pipe, a file).
struct HiddenInput(Option<libc::termios>);

impl HiddenInput {
    fn at_terminal() -> HiddenInput {
        // SAFETY: isatty, tcgetattr and tcsetattr on fd 0 with a termios
        // owned here; failures leave the terminal as it was.
        unsafe {
            if libc::isatty(0) != 1 {
                return HiddenInput(None);
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return HiddenInput(None);
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            quiet.c_lflag |= libc::ECHONL;
            if libc::tcsetattr(0, libc::TCSANOW, &quiet) != 0 {
                return HiddenInput(None);
            }
            // After the echo is off: what is typed once this shows is hidden.
            eprint!("password for the app (not shown): ");
            HiddenInput(Some(saved))
        }
    }
}

impl Drop for HiddenInput {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: puts back the settings read in `at_terminal`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
            }
        }
    }
}

fn hash_password() -> ExitCode {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use ring::rand::{SecureRandom, SystemRandom};
    let mut password = String::new();
    let read = {
        // At a terminal: a prompt, and the password not shown as typed.
        let _hidden = HiddenInput::at_terminal();
        std::io::stdin().read_line(&mut password)
    };
    if let Err(error) = read {
        eprintln!("cannot read the password from standard input: {error}");
        return ExitCode::FAILURE;
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!(
            "empty password; type it on standard input, e.g. `smtp-shaper hash-password < secret.txt`"
        );
        return ExitCode::FAILURE;
    }
    let mut random = [0u8; 16];
    if SystemRandom::new().fill(&mut random).is_err() {
        eprintln!("the system gave no random bytes for a salt");
        return ExitCode::FAILURE;
    }
    let salt = SaltString::encode_b64(&random).expect("16 bytes make a valid salt");
    match argon2::Argon2::default().hash_password(password.as_bytes(), &salt) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cannot hash: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Where `simulate` writes besides the report.
struct Outputs<'a> {
    chart: Option<&'a Path>,
    sent_log: Option<&'a Path>,
}

fn simulate(
    config_path: &Path,
    trace_path: &Path,
    outputs: Outputs<'_>,
    gateway: Option<&str>,
    (history, mx_map): (&[PathBuf], Option<&Path>),
    mut options: smtp_shaper::simulate::Options,
) -> ExitCode {
    use smtp_shaper::simulate::{parse_mx_map, parse_trace, render_svg, replay};
    if let Some(path) = mx_map {
        match std::fs::read_to_string(path)
            .map_err(|error| error.to_string())
            .and_then(|text| parse_mx_map(&text))
        {
            Ok(map) => options.mx = map,
            Err(error) => {
                eprintln!("{}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if !history.is_empty() {
        match read_history(history) {
            Ok(history) => options.history = Some(history),
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}: invalid configuration:\n{error}", config_path.display());
            return ExitCode::FAILURE;
        }
    };
    let index = match gateway {
        Some(name) => match config.gateways.iter().position(|g| g.name == name) {
            Some(index) => index,
            None => {
                let names: Vec<&str> = config.gateways.iter().map(|g| g.name.as_str()).collect();
                eprintln!(
                    "no gateway named {name:?} in {}; configured: {}",
                    config_path.display(),
                    names.join(", ")
                );
                return ExitCode::FAILURE;
            }
        },
        None => config.gateways.iter().position(|g| g.default).unwrap_or(0),
    };
    let trace = match std::fs::read_to_string(trace_path)
        .map_err(|error| error.to_string())
        .and_then(|text| parse_trace(&text))
    {
        Ok(trace) => trace,
        Err(error) => {
            eprintln!("{}: {error}", trace_path.display());
            return ExitCode::FAILURE;
        }
    };
    let report = replay(&config, index, &trace, &options);
    // A closed pipe (`simulate ... | head`) is not a failure.
    let _ = write!(std::io::stdout(), "{}", report.to_text());
    if let Some(path) = outputs.sent_log {
        if let Err(error) = std::fs::write(path, report.sent_log_csv()) {
            eprintln!("cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        println!("sent log written to {}", path.display());
    }
    if let Some(out) = outputs.chart {
        let title = format!(
            "{} through gateway {}",
            trace_path.file_name().map_or_else(
                || trace_path.display().to_string(),
                |name| name.to_string_lossy().into()
            ),
            report.gateway
        );
        if let Err(error) = std::fs::write(out, render_svg(&report, &title)) {
            eprintln!("cannot write {}: {error}", out.display());
            return ExitCode::FAILURE;
        }
        println!("chart written to {}", out.display());
    }
    ExitCode::SUCCESS
}

/// `simulate --history`: each file read as the kind it looks like.
fn read_history(paths: &[PathBuf]) -> Result<smtp_shaper::history::History, String> {
    use smtp_shaper::history::{Format, Input, Zone, first_line, read};
    let mut inputs = Vec::new();
    for path in paths {
        let format = Format::sniff(&first_line(path)?);
        inputs.push(Input {
            format,
            path: path.clone(),
        });
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64());
    let history = read(&inputs, &Zone::system(), now)?;
    if history.counts.counted == 0 {
        return Err(format!(
            "{}: nothing counted in the {} ({} lines read)",
            paths[0].display(),
            history.source,
            history.counts.lines
        ));
    }
    Ok(history)
}

async fn run(config: Config, path: Option<PathBuf>) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    // Before the start: the listener is bound before the spool's queue is
    // read back (seconds with a long queue), and a SIGHUP or SIGTERM then
    // would otherwise kill the process by its default action. Caught now,
    // it is acted on once the service runs.
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let service = match Service::start(config).await {
        Ok(service) => service,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                let source = path.as_ref().map_or_else(
                    || "the embedded default".to_string(),
                    |path| path.display().to_string(),
                );
                tracing::info!(config = %source, "SIGHUP: reloading the configuration");
                let config = match &path {
                    Some(path) => Config::load(path),
                    None => Ok(Config::embedded_default()),
                };
                match config {
                    Ok(config) => {
                        let _ = service.reload(config).await;
                    }
                    Err(error) => service.reload_refused(&error.to_string()),
                }
            }
        }
    }
    tracing::info!(
        "stop signal received: no new connections; finishing sessions and deliveries in flight (a second signal stops waiting for the sessions)"
    );
    let now = service.stop_now();
    let stopping = service.shutdown();
    tokio::pin!(stopping);
    let second = async {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    tokio::select! {
        _ = &mut stopping => {}
        _ = second => {
            tracing::warn!("second stop signal: sessions in flight are told 421 and closed now");
            now.now();
            stopping.await;
        }
    }
    ExitCode::SUCCESS
}
