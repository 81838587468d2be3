//! The configuration reader on files written here.

use super::*;

/// The smallest gateway a file needs: `g` on loopback port 25.
const GATEWAY: &str = "[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n";

/// A file of [`GATEWAY`] then `lines` (its own tables, or the gateway's
/// keys and `[gateways.shaping]`): line numbers in problems count from
/// `GATEWAY`'s first line.
fn with_gateway(lines: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("{GATEWAY}{lines}"))
}

#[test]
fn embedded_default_is_valid_and_loopback_only() {
    let config = Config::embedded_default();
    assert_eq!(config.server.listen, "127.0.0.1:2525".parse().unwrap());
    assert!(config.server.listen.ip().is_loopback());
    assert_eq!(config.gateways[0].address, "127.0.0.1:25");
    assert_eq!(config.server.max_message_size, 25 << 20);
}

#[test]
fn lists_every_problem_with_its_key_path() {
    let error = Config::parse(
        r#"
        [server]
        listen = "nowhere"
        max_message_size = "25MB"
        client_auth_failures = "0/min"
        colour = "blue"
        [spool]
        dir = "/tmp/x"
        [[gateways]]
        name = "a"
        address = "gw.example.com"
        retry_initial = "soon"
        [[gateways]]
        name = "a"
        address = "127.0.0.1:25"
        max_connections = 0
        "#,
    )
    .unwrap_err();
    let text = error.to_string();
    for expected in [
        "server.listen: \"nowhere\" is not valid; accepted: an IP address and port",
        "server.max_message_size: \"25MB\" is not valid; accepted: a whole number with a unit B, KiB",
        "server.client_auth_failures: \"0/min\" is not valid; accepted: a whole number from 1 to 1000000 per s, min, h or day",
        "server.colour: unknown key",
        "gateways[0].address: \"gw.example.com\" is not valid; accepted: host:port",
        "gateways[0].retry_initial: \"soon\" is not valid",
        "gateways[1].name: \"a\" is used by an earlier entry",
        "gateways[1].max_connections: 0 is out of range; accepted: a whole number from 1 to 1000",
        "gateways: with several gateways, mark the one for unmatched senders with default = true",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(error.problems.len(), 9, "{text}");
}

#[test]
fn wrong_types_and_missing_keys_are_explained() {
    let error = Config::parse(
        r#"
        [server]
        max_recipients = "many"
        allowed_networks = "10.0.0.0/8"
        [[gateways]]
        default = "yes"
        "#,
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("server.max_recipients: expected a whole number"),
        "{text}"
    );
    assert!(
        text.contains("server.allowed_networks: expected a list"),
        "{text}"
    );
    assert!(text.contains("gateways[0].name: required"), "{text}");
    assert!(text.contains("gateways[0].address: required"), "{text}");
    assert!(
        text.contains("gateways[0].default: expected true or false"),
        "{text}"
    );
}

#[test]
fn volume_floors_and_seeds_per_horizon() {
    let config = Config::parse(
        r#"
        [[gateways]]
        name = "g"
        address = "127.0.0.1:25"
        [gateways.shaping]
        initial_rate = ["30/min", "2000/day"]
        min_rate = ["1/s", "60/h", "300/day"]
        [[apps]]
        name = "news"
        senders = ["news.example.com"]
        class = "bulk"
        "#,
    )
    .unwrap();
    let shaping = &config.gateways[0].shaping;
    assert_eq!((shaping.initial_rate, shaping.min_rate), (0.5, 1.0));
    assert_eq!(shaping.initial_volume, [None, Some(2_000)]);
    assert_eq!(shaping.min_volume, [Some(60), Some(300)]);
    assert_eq!(config.apps[0].class, AppClass::Bulk);
    // One rate is the minute only: hours and days are not budgeted.
    let config = with_gateway("[gateways.shaping]\nmin_rate = \"10/min\"\n").unwrap();
    assert_eq!(config.gateways[0].shaping.min_volume, [None, None]);
    let config = with_gateway("[gateways.shaping]\nmin_rate = \"100/h\"\n").unwrap();
    let shaping = &config.gateways[0].shaping;
    assert_eq!(
        shaping.min_volume,
        [None, None],
        "one rate: the minute floor"
    );
    assert!((shaping.min_rate - 100.0 / 3_600.0).abs() < 1e-12);
    let error = Config::parse(
        r#"
        [[gateways]]
        name = "g"
        address = "127.0.0.1:25"
        [gateways.shaping]
        initial_rate = ["200/h"]
        min_rate = ["10/min", "1/min", "0.5/h", "300/week"]
        [[apps]]
        name = "news"
        senders = ["news.example.com"]
        class = "newsletter"
        "#,
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "gateways[0].shaping.min_rate: names the minute twice",
        "gateways[0].shaping.min_rate[2]: \"0.5/h\" is not valid; accepted: a rate such as",
        "gateways[0].shaping.min_rate[3]: \"300/week\" is not valid",
        "gateways[0].shaping.initial_rate: names a 1h volume but min_rate has no 1h floor",
        "apps[0].class: \"newsletter\" is not valid; accepted: \"transactional\" or \"bulk\"",
    ] {
        assert!(error.contains(expected), "{expected}\nnot in\n{error}");
    }
}

#[test]
fn dsn_is_off_unless_an_app_asks_for_it() {
    let config = Config::parse(
        r#"
        [[gateways]]
        name = "g"
        address = "127.0.0.1:25"
        [[apps]]
        name = "alerts"
        senders = ["alerts.example.com"]
        dsn = true
        [[apps]]
        name = "quiet"
        senders = ["quiet.example.com"]
        "#,
    )
    .unwrap();
    assert!(config.apps[0].dsn);
    assert!(!config.apps[1].dsn);
    let error =
        Config::parse("[[apps]]\nname = \"a\"\nsenders = [\"a.example.com\"]\ndsn = \"yes\"\n")
            .unwrap_err()
            .to_string();
    assert!(error.contains("apps[0].dsn"), "{error}");
}

#[test]
fn alignment_and_unsubscribe_have_safe_defaults_and_clear_errors() {
    let config = Config::parse(
        r#"
        [server]
        dns_resolver = "127.0.0.1:5353"
        [[gateways]]
        name = "g"
        address = "127.0.0.1:25"
        [[gateways]]
        name = "strict"
        address = "127.0.0.1:26"
        default = true
        alignment = "enforce"
        [[apps]]
        name = "news"
        senders = ["news.example.com"]
        class = "bulk"
        [[apps]]
        name = "letters"
        senders = ["letters.example.com"]
        class = "bulk"
        unsubscribe = "require"
        "#,
    )
    .unwrap();
    assert_eq!(config.gateways[0].alignment, AlignmentMode::Warn);
    assert_eq!(config.gateways[1].alignment, AlignmentMode::Enforce);
    assert_eq!(config.apps[0].unsubscribe, UnsubscribeMode::Warn);
    assert_eq!(config.apps[1].unsubscribe, UnsubscribeMode::Require);
    assert_eq!(
        config.server.dns_resolver,
        Some("127.0.0.1:5353".parse().unwrap())
    );
    assert_eq!(Config::embedded_default().server.dns_resolver, None);
    let error = Config::parse(
        r#"
        [server]
        dns_resolver = "localhost"
        [[gateways]]
        name = "g"
        address = "127.0.0.1:25"
        alignment = "strict"
        [[apps]]
        name = "billing"
        senders = ["billing.example.com"]
        unsubscribe = "require"
        [[apps]]
        name = "news"
        senders = ["news.example.com"]
        class = "bulk"
        unsubscribe = "always"
        "#,
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "line 3: server.dns_resolver: \"localhost\" is not valid; accepted: an IP address and port",
        "line 7: gateways[0].alignment: \"strict\" is not valid; accepted: \"enforce\", \"warn\" or \"off\"",
        "apps[0].unsubscribe: applies to bulk mail only: set class = \"bulk\" too, or remove it",
        "apps[1].unsubscribe: \"always\" is not valid; accepted: \"require\", \"warn\" or \"off\"",
    ] {
        assert!(error.contains(expected), "{expected}\nnot in\n{error}");
    }
}

#[test]
fn shaping_and_apps() {
    let config = Config::parse(
        r#"
        [[gateways]]
        name = "exchange"
        address = "127.0.0.1:587"
        [gateways.shaping]
        initial_rate = "20/min"
        headroom = 1.5
        warmup = "1.5x/day"
        limits = ["30/min", "10000/day"]
        count = "recipients"
        [[apps]]
        name = "billing"
        networks = ["10.1.0.0/16"]
        priority = 3
        [[apps]]
        name = "auth"
        senders = ["auth.example.com"]
        "#,
    )
    .unwrap();
    let shaping = &config.gateways[0].shaping;
    assert_eq!(shaping.initial_rate, 20.0 / 60.0);
    assert_eq!(
        (shaping.headroom, shaping.warmup, shaping.burst),
        (1.5, 1.5, 5)
    );
    assert_eq!(
        shaping.limits,
        vec![
            Limit {
                count: 30,
                window: Duration::from_secs(60)
            },
            Limit {
                count: 10_000,
                window: Duration::from_secs(86_400)
            },
        ]
    );
    assert_eq!(shaping.count, CountUnit::Recipients);
    assert_eq!(config.apps.len(), 2);
    assert_eq!(config.apps[0].priority, 3);

    let error = Config::parse(
        r#"
        [[gateways]]
        name = "g"
        address = "127.0.0.1:25"
        [gateways.shaping]
        min_rate = "100/min"
        max_rate = "10/min"
        headroom = 0.5
        warmup = "0.5x/day"
        limits = ["30/fortnight"]
        count = "bytes"
        rate = "1/s"
        [[apps]]
        name = "x"
        "#,
    )
    .unwrap_err();
    let text = error.to_string();
    for expected in [
        "gateways[0].shaping.min_rate: must not be above max_rate",
        "gateways[0].shaping.headroom: 0.5 is out of range; accepted: a number from 1 to 100",
        "gateways[0].shaping.warmup: \"0.5x/day\" is not valid; accepted: a factor above 1",
        "gateways[0].shaping.limits[0]: \"30/fortnight\" is not valid",
        "gateways[0].shaping.count: \"bytes\" is not valid; accepted: \"messages\" or \"recipients\"",
        "gateways[0].shaping.rate: unknown key",
        "apps[0].networks: an app needs a user, networks or senders",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn two_apps_cannot_log_in_as_one_user() {
    let hash = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let error = with_gateway(&format!(
        "[[apps]]\nname = \"a\"\nuser = \"u\"\npassword_hash = \"{hash}\"\n\
         [[apps]]\nname = \"b\"\nnetworks = [\"10.0.0.0/8\"]\n\
         [[apps]]\nname = \"c\"\nuser = \"u\"\npassword_hash = \"{hash}\"\n"
    ))
    .unwrap_err();
    assert_eq!(
        error.problems,
        vec!["line 13: apps[2].user: \"u\" is used by an earlier entry; users must be unique"]
    );
}

#[test]
fn gateway_logins_need_a_secret_source_and_tls() {
    let error = Config::parse(
        r#"
        [[gateways]]
        name = "a"
        address = "smtp.example.com:25"
        tls = "none"
        auth_user = "app@example.com"
        auth_password_env = "PASSWORD"
        [[gateways]]
        name = "b"
        address = "127.0.0.1:25"
        default = true
        auth_user = "app@example.com"
        "#,
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("gateways[0].auth_user: the gateway password would go in plain text"),
        "{text}"
    );
    assert!(
        text.contains(
            "gateways[1].auth_user: needs exactly one of auth_password_env and auth_password_file"
        ),
        "{text}"
    );
    let config = Config::parse(
        "[[gateways]]\nname = \"local\"\naddress = \"[::1]:25\"\ntls = \"none\"\nauth_user = \"u\"\nauth_password_file = \"/run/secret\"\n",
    )
    .unwrap();
    assert!(
        config.gateways[0].is_loopback(),
        "a loopback gateway may take a plain login"
    );
    assert_eq!(config.gateways[0].host(), "::1");
}

#[test]
fn xoauth2_logins_take_one_token_source() {
    let config = Config::parse(
        r#"
        [[gateways]]
        name = "file"
        address = "smtp.office365.com:587"
        default = true
        tls = "required"
        auth_user = "app@example.com"
        auth_mechanism = "xoauth2"
        oauth_token_file = "/run/token"
        [[gateways]]
        name = "grant"
        address = "smtp.office365.com:587"
        tls = "required"
        auth_user = "app@example.com"
        auth_mechanism = "xoauth2"
        oauth_token_url = "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token"
        oauth_client_id = "11111111-2222-3333-4444-555555555555"
        oauth_client_secret_file = "/run/client-secret"
        "#,
    )
    .unwrap();
    let mechanism = |index: usize| config.gateways[index].auth.clone().unwrap().mechanism;
    assert_eq!(
        mechanism(0),
        AuthMechanism::XOAuth2(TokenSource::File("/run/token".into()))
    );
    let AuthMechanism::XOAuth2(TokenSource::ClientCredentials(grant)) = mechanism(1) else {
        panic!("the client-credentials grant: {:?}", mechanism(1));
    };
    assert_eq!(grant.scope, EXCHANGE_ONLINE_SCOPE, "the default scope");
    assert_eq!(grant.token_url.host, "login.microsoftonline.com");
    assert_eq!(grant.token_url.port, 443);
    assert_eq!(grant.token_url.path, "/contoso.example/oauth2/v2.0/token");
    assert_eq!(grant.ca_file, None);

    let error = Config::parse(
        r#"
        [[gateways]]
        name = "none"
        address = "smtp.example.com:587"
        default = true
        tls = "required"
        auth_user = "app@example.com"
        auth_mechanism = "xoauth2"
        [[gateways]]
        name = "both"
        address = "smtp.example.com:587"
        tls = "required"
        auth_user = "app@example.com"
        auth_mechanism = "xoauth2"
        oauth_token_file = "/run/token"
        oauth_token_url = "https://login.example.com/token"
        [[gateways]]
        name = "nouser"
        address = "smtp.example.com:587"
        tls = "required"
        auth_mechanism = "xoauth2"
        oauth_token_file = "/run/token"
        [[gateways]]
        name = "halfgrant"
        address = "smtp.example.com:587"
        tls = "required"
        auth_user = "app@example.com"
        auth_mechanism = "xoauth2"
        oauth_token_url = "https://login.example.com/token"
        oauth_client_id = "id"
        [[gateways]]
        name = "mixed"
        address = "smtp.example.com:587"
        tls = "required"
        auth_user = "app@example.com"
        auth_mechanism = "xoauth2"
        auth_password_env = "PASSWORD"
        oauth_token_file = "/run/token"
        oauth_scope = "x"
        [[gateways]]
        name = "plaintext"
        address = "smtp.example.com:587"
        tls = "none"
        auth_user = "app@example.com"
        auth_mechanism = "xoauth2"
        oauth_token_file = "/run/token"
        [[gateways]]
        name = "stray"
        address = "smtp.example.com:587"
        tls = "required"
        auth_user = "app@example.com"
        auth_password_env = "PASSWORD"
        oauth_token_file = "/run/token"
        [[gateways]]
        name = "http"
        address = "smtp.example.com:587"
        tls = "required"
        auth_user = "app@example.com"
        auth_mechanism = "oauth"
        oauth_token_url = "http://login.example.com/token"
        "#,
    )
    .unwrap_err();
    let text = error.to_string();
    for expected in [
        "gateways[0].auth_mechanism: \"xoauth2\" needs exactly one token source",
        "gateways[1].auth_mechanism: \"xoauth2\" needs exactly one token source",
        "gateways[2].auth_user: required with auth_mechanism = \"xoauth2\"",
        "gateways[3].oauth_token_url: needs oauth_client_id and oauth_client_secret_file",
        "gateways[4].auth_password_env: not with auth_mechanism = \"xoauth2\"",
        "gateways[4].oauth_scope: only with oauth_token_url",
        "gateways[5].auth_user: the gateway OAuth token would go in plain text",
        "gateways[6].oauth_token_file: only with auth_mechanism = \"xoauth2\"",
        "gateways[7].auth_mechanism: \"oauth\" is not valid; accepted: \"password\" (AUTH PLAIN or LOGIN) or \"xoauth2\"",
        "gateways[7].oauth_token_url: \"http://login.example.com/token\" is not valid; accepted: an https URL",
    ] {
        assert!(text.contains(expected), "{expected}\n{text}");
    }
}

#[test]
fn https_urls_are_taken_apart() {
    let url = HttpsUrl::parse("https://[::1]:8443/t/oauth2/v2.0/token?x=1").unwrap();
    assert_eq!(
        (url.host.as_str(), url.port, url.path.as_str()),
        ("::1", 8443, "/t/oauth2/v2.0/token?x=1")
    );
    assert_eq!(
        url.to_string(),
        "https://[::1]:8443/t/oauth2/v2.0/token?x=1"
    );
    let url = HttpsUrl::parse("https://login.example.com").unwrap();
    assert_eq!((url.port, url.path.as_str()), (443, "/"));
    assert_eq!(url.authority(), "login.example.com:443");
    for bad in [
        "http://login.example.com/token",
        "https://user:pw@login.example.com/token",
        "https://login.example.com:0/token",
        "https://login.example.com:x/token",
        "https://[login]/token",
        "https:///token",
        "https://login.example.com/a b",
        "https://login.example.com/token#frag",
    ] {
        assert_eq!(HttpsUrl::parse(bad), None, "{bad}");
    }
}

#[test]
fn a_gateway_may_name_its_sending_ip() {
    let config = Config::parse(
        "[[gateways]]\nname = \"billing\"\naddress = \"127.0.0.1:25\"\nsending_ip = \"192.0.2.25\"\n",
    )
    .unwrap();
    assert_eq!(
        config.gateways[0].sending_ip,
        Some("192.0.2.25".parse().unwrap())
    );
}

#[test]
fn rates_keep_the_period_the_file_writes_them_in() {
    let period = |shaping: &str| {
        with_gateway(&format!("[gateways.shaping]\n{shaping}"))
            .unwrap()
            .gateways[0]
            .rate_period
    };
    assert_eq!(period(""), units::Period::Minute, "the defaults' /min");
    assert_eq!(period("initial_rate = \"2/s\"\n"), units::Period::Second);
    assert_eq!(
        period("min_rate = \"100/h\"\nmax_rate = \"1/s\"\n"),
        units::Period::Hour
    );
    assert_eq!(period("max_rate = \"50000/day\"\n"), units::Period::Day);
}

#[test]
fn reports_bad_toml_syntax_at_its_line_and_column() {
    let error =
        Config::parse("[server]\nlisten = \"127.0.0.1:2525\"\nhostname = = \"x\"\n").unwrap_err();
    assert_eq!(error.problems.len(), 1);
    assert!(
        error.problems[0].starts_with("line 3, column 12: server.hostname: not valid TOML: "),
        "{error}"
    );
    let error = Config::parse("[server\nlisten = 1").unwrap_err();
    assert!(
        error.problems[0].starts_with("line 1, column 8: not valid TOML: "),
        "{error}"
    );
}

#[test]
fn every_problem_names_the_line_of_its_key_or_table() {
    let error = Config::parse(concat!(
        "[server]\n",
        "listen = \"nowhere\"\n",
        "allowed_networks = [\"127.0.0.0/8\", \"bad\"]\n",
        "\n",
        "[[gateways]]\n",
        "name = \"a\"\n",
        "\n",
        "[[gateways]]\n",
        "name = \"b\"\n",
        "address = \"127.0.0.1:25\"\n",
        "[gateways.shaping]\n",
        "min_rate = \"fast\"\n",
        "colour = \"blue\"\n",
    ))
    .unwrap_err();
    let at: Vec<&str> = error
        .problems
        .iter()
        .map(|problem| problem.split(": ").take(2).last().unwrap())
        .collect();
    let lines: Vec<&str> = error
        .problems
        .iter()
        .map(|problem| problem.split(": ").next().unwrap())
        .collect();
    let expected = [
        ("line 2", "server.listen"),
        ("line 3", "server.allowed_networks[1]"),
        // A missing key: the line of its table's header.
        ("line 5", "gateways[0].address"),
        ("line 12", "gateways[1].shaping.min_rate"),
        ("line 13", "gateways[1].shaping.colour"),
        ("line 5", "gateways"),
    ];
    for (line, path) in expected {
        let found = at.iter().position(|p| *p == path);
        assert_eq!(
            found.map(|index| lines[index]),
            Some(line),
            "{path} in:\n{error}"
        );
    }
    assert_eq!(error.problems.len(), expected.len(), "{error}");
}

#[test]
fn held_mail_leaves_before_it_expires() {
    let gateway = with_gateway;
    // The default max_queue_delay (4d) under the default max_age (5d);
    // a short max_age shortens it to four fifths of it.
    let config = gateway("").unwrap();
    assert_eq!(
        config.gateways[0].shaping.max_queue_delay,
        Duration::from_secs(4 * 86_400)
    );
    let config = gateway("max_age = \"1d\"").unwrap();
    assert_eq!(
        config.gateways[0].shaping.max_queue_delay,
        Duration::from_secs(86_400).mul_f64(0.8)
    );
    // Said outright, a wait past the lifetime is a contradiction.
    let error = gateway("[gateways.shaping]\nmax_queue_delay = \"7d\"").unwrap_err();
    assert!(
        error.to_string().contains(
            "gateways[0].shaping.max_queue_delay: must be shorter than the gateway's max_age"
        ),
        "{error}"
    );
    assert!(gateway("max_age = \"8d\"\n[gateways.shaping]\nmax_queue_delay = \"7d\"").is_ok());
    let app = |lines: &str| {
        with_gateway(&format!(
            "[[apps]]\nname = \"a\"\nsenders = [\"a.test\"]\n{lines}"
        ))
    };
    let error = app("max_queue_delay = \"2d\"\nexpire_after = \"1d\"").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("apps[0].max_queue_delay: must be shorter than expire_after"),
        "{error}"
    );
    let error = app("notify_delay = \"1d\"\nexpire_after = \"1d\"").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("apps[0].notify_delay: must be shorter than expire_after"),
        "{error}"
    );
    let config = app("expire_after = \"2d\"\nnotify_delay = \"4h\"").unwrap();
    assert_eq!(
        config.apps[0].expire_after,
        Some(Duration::from_secs(2 * 86_400))
    );
    assert_eq!(
        config.apps[0].notify_delay,
        Some(Duration::from_secs(4 * 3_600))
    );
    assert_eq!(config.apps[0].max_queue_delay, None);
}

#[test]
fn unknown_sections_are_errors() {
    let error = Config::parse(
        "[[gateways]]\nname = \"a\"\naddress = \"127.0.0.1:25\"\n[servr]\nlisten = \"x\"\n",
    )
    .unwrap_err();
    assert_eq!(error.problems.len(), 1);
    assert!(error.problems[0].starts_with(
        "line 4: servr: unknown key; accepted here: server, spool, http, cluster, gateways"
    ));
}

#[test]
fn a_duplicate_key_or_a_number_too_large_names_the_key() {
    let duplicate = Config::parse("[server]\nmax_errors = 5\nmax_errors = 6\n").unwrap_err();
    assert_eq!(
        duplicate.problems,
        vec!["line 3, column 1: server.max_errors: not valid TOML: duplicate key"]
    );
    let huge =
        Config::parse("[[gateways]]\nname = \"g\"\nmax_connections = 99999999999999999999\n")
            .unwrap_err();
    assert!(
        huge.problems[0].starts_with(
            "line 3, column 19: gateways.max_connections: not valid TOML: a whole number too large"
        ),
        "{huge:?}"
    );
}

#[test]
fn an_invalid_password_hash_is_said_once() {
    let problems = with_gateway(
        "[[apps]]\nname = \"portal\"\nuser = \"portal\"\npassword_hash = \"not-a-hash\"\n",
    )
    .unwrap_err()
    .problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("apps[0].password_hash"),
        "{problems:?}"
    );
    assert!(!problems[0].contains("go together"), "{problems:?}");
}

#[test]
fn a_zero_session_timeout_is_refused() {
    for key in ["idle_timeout = \"0s\"", "command_deadline = \"0ms\""] {
        let problems = Config::parse(&format!(
            "[server]\n{key}\n[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n"
        ))
        .unwrap_err()
        .problems;
        assert!(
            problems.iter().any(|p| p.contains("must be longer than 0")),
            "{key}: {problems:?}"
        );
    }
}

#[test]
fn an_app_that_cannot_log_in_is_warned_about() {
    let file = |server: &str| {
        Config::parse(&format!(
            "[server]\n{server}\n[[gateways]]\nname = \"g\"\naddress = \"127.0.0.1:25\"\n[[apps]]\nname = \"portal\"\nuser = \"portal\"\npassword_hash = \"$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$yKBsPW3CNbM1OFNYeNb3+Q\"\n"
        ))
        .unwrap()
    };
    let warnings = file("listen = \"0.0.0.0:2525\"").warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("apps \"portal\" has a user"),
        "{warnings:?}"
    );
    let loopback = file("listen = \"127.0.0.1:2525\"\nplaintext_auth_on_loopback = true");
    assert!(loopback.warnings().is_empty());
}

#[test]
fn a_cluster_section_names_redis_and_the_node() {
    let gateway = GATEWAY;
    assert_eq!(Config::parse(gateway).unwrap().cluster, None);
    let config = Config::parse(&format!(
        "{gateway}[cluster]\nredis = \"rediss://redis:6380/1\"\nexpected_nodes = 3\n"
    ))
    .unwrap();
    let cluster = config.cluster.unwrap();
    assert_eq!(cluster.redis, "rediss://redis:6380/1");
    assert_eq!(cluster.node, host_name(), "the host name by default");
    assert_eq!(cluster.expected_nodes, 3);
    assert_eq!(cluster.timeout, Duration::from_millis(250));
    let problems = Config::parse(&format!(
        "{gateway}[cluster]\nredis = \"redis://:secret@redis:6379/0\"\nnode = \"a b\"\nexpected_nodes = 2\n"
    ))
    .unwrap_err()
    .problems;
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("credentials"), "{problems:?}");
    assert!(problems[1].contains("cluster.node"), "{problems:?}");
    let unsized_cluster = Config::parse(&format!(
        "{gateway}[cluster]\nredis = \"redis://redis:6379/0\"\n"
    ))
    .unwrap_err();
    assert!(
        unsized_cluster.problems[0].contains("cluster.expected_nodes: required"),
        "{unsized_cluster:?}"
    );
    let missing = Config::parse(&format!("{gateway}[cluster]\n")).unwrap_err();
    assert!(
        missing.problems[0].contains("cluster.redis: required"),
        "{missing:?}"
    );
}

#[test]
fn a_shaping_table_read_alone_is_read_as_in_a_file_but_for_the_gateway_s_max_age() {
    let lines = "min_rate = [\"10/min\", \"100/h\"]\nburst = 20\n";
    let alone: ShapingConfig = lines.parse().unwrap();
    let in_file = with_gateway(&format!("[gateways.shaping]\n{lines}")).unwrap();
    assert_eq!(alone, in_file.gateways[0].shaping);
    // Longer than the default max_age (5d): only a whole file can say so.
    assert!("max_queue_delay = \"7d\"".parse::<ShapingConfig>().is_ok());
    assert!(with_gateway("[gateways.shaping]\nmax_queue_delay = \"7d\"\n").is_err());
    let problems = "burst = 20\nheadroom = 0.5\nbogus = 1\n"
        .parse::<ShapingConfig>()
        .unwrap_err()
        .problems;
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("line 2: headroom:"), "{problems:?}");
    assert!(problems[1].starts_with("line 3: bogus:"), "{problems:?}");
}

#[test]
fn receivers_are_the_built_in_ones_with_what_the_file_adds_or_overrides() {
    let config = with_gateway(
        "[gateways.shaping]\nmin_rate = [\"10/min\", \"60/h\", \"300/day\"]\n\
         receiver_min_rate = [\"30/h\", \"150/day\"]\n\
         [[receivers]]\nname = \"internal\"\ndomains = [\"Example.COM.\"]\nmx = [\"mx.example.com\"]\n\
         [[receivers]]\nname = \"google\"\nmin_rate = [\"50/h\"]\n\
         [[receivers]]\nname = \"other\"\nmin_rate = [\"1000/day\"]\n",
    )
    .unwrap();
    let names: Vec<&str> = config
        .receivers
        .list
        .iter()
        .map(|receiver| receiver.name.as_str())
        .collect();
    assert_eq!(names, ["internal", "google", "microsoft", "yahoo", "apple"]);
    assert_eq!(config.receivers.list[0].domains, ["example.com"]);
    assert_eq!(config.receivers.list[0].mx, [".mx.example.com"]);
    assert_eq!(
        config.receivers.list[1].domains,
        ["gmail.com", "googlemail.com"],
        "an override keeps what it does not give"
    );
    let rules: Vec<(&str, [Option<u64>; 2])> = config.gateways[0]
        .shaping
        .receivers
        .iter()
        .map(|rule| (rule.name.as_str(), rule.floors))
        .collect();
    assert_eq!(
        rules,
        [
            ("internal", [Some(30), Some(150)]),
            ("google", [Some(50), None]),
            ("microsoft", [Some(30), Some(150)]),
            ("yahoo", [Some(30), Some(150)]),
            ("apple", [Some(30), Some(150)]),
            ("other", [None, Some(1000)]),
        ]
    );
    // The defaults: 20/h and 100/day for the named receivers, none for
    // other; a gateway that budgets no hour or day budgets no receiver.
    let shaping: ShapingConfig = "min_rate = [\"10/min\", \"60/h\", \"300/day\"]"
        .parse()
        .unwrap();
    assert_eq!(shaping.receivers.len(), 4);
    assert!(
        shaping
            .receivers
            .iter()
            .all(|rule| rule.floors == [Some(20), Some(100)])
    );
    let shaping: ShapingConfig = "min_rate = [\"10/min\", \"300/day\"]".parse().unwrap();
    assert!(
        shaping
            .receivers
            .iter()
            .all(|rule| rule.floors == [None, Some(100)])
    );
    let shaping: ShapingConfig = "min_rate = \"10/min\"".parse().unwrap();
    assert!(shaping.receivers.is_empty());
    let shaping: ShapingConfig =
        "min_rate = [\"10/min\", \"60/h\", \"300/day\"]\nreceiver_min_rate = []"
            .parse()
            .unwrap();
    assert!(shaping.receivers.is_empty(), "[] budgets no receiver");
}

#[test]
fn receiver_mistakes_are_explained() {
    let error = with_gateway(
        "[gateways.shaping]\nreceiver_min_rate = [\"20/min\"]\n\
         [[receivers]]\nname = \"lonely\"\n\
         [[receivers]]\nname = \"other\"\ndomains = [\"example.com\"]\n\
         [[receivers]]\nname = \"x\"\ndomains = [\"not a domain\"]\nmin_rate = [\"5/h\", \"6/h\"]\n\
         [[receivers]]\nname = \"x\"\nmx = [\"mx.x.example\"]\n",
    )
    .unwrap_err();
    let text = error.to_string();
    for expected in [
        "gateways[0].shaping.receiver_min_rate[0]: \"20/min\" is not valid; accepted: a list of an hour and a day floor",
        "receivers[0].domains: a new receiver needs domains or mx",
        "receivers[1].name: \"other\" is every domain no receiver claims",
        "receivers[2].domains[0]: \"not a domain\" is not valid",
        "receivers[2].min_rate: names the 1h twice",
        "receivers[3].name: \"x\" is used by an earlier entry",
    ] {
        assert!(text.contains(expected), "{expected}\nin\n{text}");
    }
}
